"""Facial affect in videos: per-frame predictions with face tracks, smoothing, tables and plots.

:func:`predict_video` streams a video (a file, a stream URL, or an open ``cv2.VideoCapture`` such
as a webcam) through a :class:`~affectfpn.inference.Predictor` and yields one
:class:`FramePrediction` per processed frame, in order. Frames are decoded one at a time and the
faces of consecutive frames share the model's batches, so memory does not grow with the length
of the video; nothing is collected unless asked (:func:`analyze_video`, :class:`VideoResult`).

Per frame
---------
Every processed frame gives a :class:`FramePrediction` -- an
:class:`~affectfpn.inference.ImagePrediction` with the frame's ``index`` and ``timestamp`` --
also when no face is found (``faces == ()``), so that outputs line up with the video. Each face's
``face_id`` is a track id from :class:`FaceTracker`: the same person keeps the same id while in
view. Limits of that tracker: faces that cross may swap ids, a face moving more than about its
size between processed frames gets a new id, and a face that leaves the view (or is not detected)
for more than ``max_missed`` processed frames comes back with a new id (no re-identification).

Frame selection
---------------
``every_n`` keeps every n-th frame; ``target_fps`` keeps about that many frames per second of
video time (exclusive with ``every_n``); ``start`` / ``end`` are **frame indices** (``end``
exclusive, as in ``range``; for seconds pass ``int(seconds * stream.info.fps)``). Frame indices
are 0-based in decoding order and keep counting through skipped frames. Timestamps are the
container's presentation times (``CAP_PROP_POS_MSEC``) while they increase, else
``index / fps`` (wall-clock time for a live source without fps); they never decrease.

Smoothing
---------
Off by default. Per track, on valence/arousal, expression probabilities and AU probabilities
(labels and active AUs are recomputed; boxes are not smoothed):

* ``smoothing="ema"``: exponential moving average ``s_t = alpha * x_t + (1 - alpha) * s_(t-1)``,
  causal (the output at a frame depends only on frames up to it), for live use.
* ``smoothing="centered"``: the mean over a centred window of ``window`` processed frames (odd),
  over the frames of that window where the track is present. It looks ``window // 2`` frames
  ahead, so output lags input by that many frames; it still streams (a buffer of ``window``
  frames).

Outputs
-------
* :func:`write_video_csv` -- one row per (frame, face), one ``success`` 0 row per frame without a
  face (OpenFace 2.0's convention). Columns: ``frame`` (index), ``timestamp`` (seconds), then
  those of :func:`affectfpn.inference.table_columns`: ``source`` (``"video#frame=N"``),
  ``face_id`` (track id; -1 on a no-face row), ``success``, ``confidence`` (detection score),
  ``x1 y1 x2 y2`` (box, pixels), ``valence arousal``, ``expression`` (label) and
  ``expr_<Name>`` (probabilities), ``AU<NN>_p`` (probabilities) and ``AU<NN>_c`` (0/1).
* :func:`write_abaw2` -- the ABAW2 submission format: per task a file
  ``<out_dir>/{VA_Set,EXPR_Set,AU_Set}/<video_name>.txt`` with the Aff-Wild2 header and one line
  per video frame (line k + 2 is frame k): ``valence,arousal``; the expression's class index
  (0 Neutral ... 6 Surprise); the 12 AUs as 0/1. One face per frame: the largest box (on ties
  the higher detection score). Frames without a face, and frames skipped by ``every_n`` /
  ``target_fps``, repeat the previous line; before the first face: ``0,0`` / ``0`` (Neutral) /
  all AUs 0.
* :func:`write_annotated_video` -- boxes, expression, VA and active AUs drawn on each frame
  (:func:`affectfpn.inference.draw`), encoded as H.264 MP4 or VP9 WebM through PyAV (the
  ``video`` extra; browsers play both), else MPEG-4 Part 2 through ``cv2.VideoWriter``
  (:func:`video_encoding` decides). The predictions never hold images: ask
  ``predict_video(..., return_frames=True)`` for ``(frame, rgb)`` pairs.
* :func:`plot_timeline` -- one face's expressions, active AUs (and valence/arousal) over time;
  :func:`plot_va` -- valence and arousal of every face (both need the ``plot`` extra).

Example:
    >>> from affectfpn import AffectFPN
    >>> from affectfpn.video import predict_video, write_video_csv
    >>> model = AffectFPN.from_pretrained()                                 # doctest: +SKIP
    >>> frames = predict_video(model, "clip.mp4", every_n=2, smoothing="ema")  # doctest: +SKIP
    >>> write_video_csv(frames, "clip.csv")                                 # doctest: +SKIP
"""

import logging
import math
import os
import sys
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from types import TracebackType
from typing import Any, Generic, Literal, TextIO, TypeVar, cast, overload

import cv2
import numpy as np
from torch import nn
from tqdm import tqdm
from typing_extensions import Unpack

from affectfpn.errors import ConfigError, InputError
from affectfpn.inference.predictor import PredictOptions, Predictor
from affectfpn.labels import TASKS
from affectfpn.video.reader import CaptureLike, VideoReader
from affectfpn.video.result import Collector, VideoResult, main_face
from affectfpn.video.smooth import SMOOTHING, check_smoothing, smooth_pairs
from affectfpn.video.tracker import FaceTracker
from affectfpn.video.types import FramePrediction, VideoInfo
from affectfpn.video.writers import (
    ABAW2_DEFAULTS,
    ABAW2_HEADERS,
    ABAW2_TASK_DIRS,
    VIDEO_CODECS,
    AbawSink,
    CsvSink,
    VideoEncoding,
    VideoSink,
    frame_of,
    iterate,
    plot_timeline,
    plot_va,
    video_encoding,
    video_table_columns,
)

__all__ = [
    "ABAW2_DEFAULTS",
    "ABAW2_HEADERS",
    "ABAW2_TASK_DIRS",
    "SMOOTHING",
    "VIDEO_CODECS",
    "VIDEO_DEFAULTS",
    "CaptureLike",
    "FaceTracker",
    "FramePrediction",
    "VideoEncoding",
    "VideoInfo",
    "VideoOptions",
    "VideoResult",
    "VideoStream",
    "analyze_video",
    "main_face",
    "plot_timeline",
    "plot_va",
    "predict_video",
    "smooth_frames",
    "video_encoding",
    "video_table_columns",
    "write_abaw2",
    "write_annotated_video",
    "write_video_csv",
]

logger = logging.getLogger(__name__)

_T = TypeVar("_T")
#: Frame rate of an annotated video when neither the source nor the options give one.
_FALLBACK_FPS = 25.0


class VideoOptions(PredictOptions, total=False):
    """The keyword options of :func:`predict_video` and :func:`analyze_video`.

    Those of :class:`~affectfpn.inference.Predictor` (``faces``, ``detector``, ``batch_size``,
    ``device``, ... as in :class:`~affectfpn.inference.predictor.PredictOptions`), used to build
    one when a model is given, plus the video's own; ``progress`` is the video's bar.
    """

    every_n: int
    target_fps: float | None
    start: int | None
    end: int | None
    smoothing: str | None
    alpha: float
    window: int
    track_iou: float
    max_missed: int


#: The video's own options and their defaults (the rest of VideoOptions go to the Predictor).
VIDEO_DEFAULTS: dict[str, Any] = {
    "every_n": 1,
    "target_fps": None,
    "start": None,
    "end": None,
    "smoothing": None,
    "alpha": 0.3,
    "window": 5,
    "track_iou": 0.3,
    "max_missed": 10,
    "progress": None,
}


def _split_options(
    function: str, model_or_predictor: nn.Module | Predictor, options: dict[str, Any]
) -> tuple[dict[str, Any], Predictor | None]:
    """The video's options (defaults filled in), and the Predictor when one was given.

    A model gets a Predictor built from the remaining options at the call site (after the video
    was opened, so that a wrong path fails before a detector is loaded).
    """
    unknown = sorted(set(options) - set(VideoOptions.__optional_keys__))
    if unknown:
        raise ConfigError(
            f"{function}() got unknown option(s) {', '.join(map(repr, unknown))}; the options "
            f"are {', '.join(sorted(VideoOptions.__optional_keys__))}"
        )
    video = {key: options.get(key, default) for key, default in VIDEO_DEFAULTS.items()}
    for_predictor = {k: v for k, v in options.items() if k not in VIDEO_DEFAULTS}
    if isinstance(model_or_predictor, Predictor):
        if for_predictor:
            raise ConfigError(
                f"{', '.join(sorted(for_predictor))} given with a Predictor: set them on the "
                "Predictor instead (Predictor(model, faces=..., detector=..., batch_size=...))"
            )
        return video, model_or_predictor
    video["predictor_options"] = for_predictor
    return video, None


#: What ``source=`` accepts: a path or URL, an OpenCV capture, or an object with its methods.
VideoSource = str | os.PathLike[str] | cv2.VideoCapture | CaptureLike


class VideoStream(Generic[_T]):
    """The iterator :func:`predict_video` returns, with what is known about the video.

    Iterate over it once (it is its own iterator). Use it as a context manager, or call
    :meth:`close`, to release the video and stop the loader threads before the end.

    Attributes:
        info: The :class:`VideoInfo` (fps, declared frame count, size), known before the first
            frame.
        expressions: The model's expression names.
        action_units: The model's AU names.
        tasks: The model's tasks.
    """

    def __init__(
        self,
        items: Iterator[_T],
        reader: VideoReader,
        predictor: Predictor,
        pipeline: Iterator[object] | None = None,
    ) -> None:
        self._items = items
        self._pipeline = pipeline
        self._reader = reader
        self.info: VideoInfo = reader.info
        config = predictor.config
        self.expressions: tuple[str, ...] = tuple(config.expressions)
        self.action_units: tuple[str, ...] = tuple(config.action_units)
        self.tasks: tuple[str, ...] = tuple(config.tasks)
        self.au_threshold: float = float(predictor.au_threshold)

    def __iter__(self) -> "VideoStream[_T]":
        return self

    def __next__(self) -> _T:
        return next(self._items)

    @property
    def frames_read(self) -> int:
        """Frames decoded so far, selected or not."""
        return self._reader.frames_read

    @property
    def last_index(self) -> int:
        """Index of the last frame decoded so far (-1 before the first)."""
        return self._reader.last_index

    def close(self) -> None:
        """Stop: release the video (if opened from a path) and the prediction pipeline."""
        for part in (self._items, self._pipeline):
            close = getattr(part, "close", None)
            if close is not None:
                close()
        self._reader.close()

    def __enter__(self) -> "VideoStream[_T]":
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"VideoStream({self.info!r})"


# --------------------------------------------------------------------------------- pipeline


def _make_predictor(
    model_or_predictor: nn.Module | Predictor, given: Predictor | None, options: dict[str, Any]
) -> Predictor:
    if given is not None:
        return given
    assert not isinstance(model_or_predictor, Predictor)
    return Predictor(model_or_predictor, **{**options, "progress": False})


def _planned_frames(reader: VideoReader) -> int | None:
    """How many frames will be processed, when the frame count is known (for progress)."""
    count = reader.info.frame_count
    if count is None:
        return None
    stop = count if reader.end is None else min(reader.end, count)
    span = max(0, stop - reader.start)
    if reader.target_fps is None:
        return math.ceil(span / reader.every_n)
    if reader.info.fps is None:
        return None
    return math.ceil(span / reader.info.fps * min(reader.target_fps, reader.info.fps))


def _pipeline(
    reader: VideoReader,
    predictor: Predictor,
    tracker: FaceTracker,
    keep_images: bool,
    progress: bool | None,
) -> Iterator[tuple[FramePrediction, np.ndarray | None]]:
    name = reader.info.source
    show = sys.stderr.isatty() if progress is None else bool(progress)
    bar = tqdm(total=_planned_frames(reader), unit="frame", desc=name[-40:], disable=not show)
    # Frames handed to the predictor and not yet back: (source label, index, time, image).
    in_flight: deque[tuple[str, int, float, np.ndarray | None]] = deque()

    def feed() -> Iterator[tuple[str, np.ndarray]]:
        for frame in reader:
            rgb = cv2.cvtColor(frame.bgr, cv2.COLOR_BGR2RGB)
            label = f"{name}#frame={frame.index}"
            in_flight.append((label, frame.index, frame.timestamp, rgb if keep_images else None))
            yield label, (frame.bgr if predictor.bgr else rgb)

    results = predictor.predict_named(feed(), progress=False)
    try:
        for image in results:
            while in_flight and in_flight[0][0] != image.source:  # dropped by on_error="skip"
                in_flight.popleft()
            label, index, timestamp, rgb = in_flight.popleft()
            boxes = [
                face.box if face.box is not None else (0.0, 0.0, image.width, image.height)
                for face in image.faces
            ]
            ids = tracker.update(boxes, [face.landmarks for face in image.faces])
            tracked = sorted(
                (
                    replace(face, face_id=track)
                    for face, track in zip(image.faces, ids, strict=True)
                ),
                key=lambda face: face.face_id,
            )
            bar.update(1)
            yield (
                FramePrediction(
                    source=label,
                    width=image.width,
                    height=image.height,
                    faces=tuple(tracked),
                    labels=image.labels,
                    index=index,
                    timestamp=timestamp,
                ),
                rgb,
            )
    finally:
        close = getattr(results, "close", None)
        if close is not None:
            close()
        reader.close()
        bar.close()


def _frames_only(pairs: Iterator[tuple[FramePrediction, Any]]) -> Iterator[FramePrediction]:
    try:
        for frame, _ in pairs:
            yield frame
    finally:
        close = getattr(pairs, "close", None)
        if close is not None:
            close()


@overload
def predict_video(
    model_or_predictor: nn.Module | Predictor,
    source: VideoSource,
    *,
    tracker: FaceTracker | None = ...,
    return_frames: Literal[False] = ...,
    **options: Unpack[VideoOptions],
) -> VideoStream[FramePrediction]: ...


@overload
def predict_video(
    model_or_predictor: nn.Module | Predictor,
    source: VideoSource,
    *,
    tracker: FaceTracker | None = ...,
    return_frames: Literal[True],
    **options: Unpack[VideoOptions],
) -> VideoStream[tuple[FramePrediction, np.ndarray]]: ...


def predict_video(
    model_or_predictor: nn.Module | Predictor,
    source: VideoSource,
    *,
    tracker: FaceTracker | None = None,
    return_frames: bool = False,
    **options: Unpack[VideoOptions],
) -> VideoStream[FramePrediction] | VideoStream[tuple[FramePrediction, np.ndarray]]:
    """Predict affect for every face in the frames of a video, streaming, one result per frame.

    Frames are decoded one by one and handed to the predictor as a stream; the faces of
    consecutive frames share batches of ``batch_size``, so results come batch by batch (use
    ``batch_size=1`` for the lowest latency on a live camera). Memory stays constant whatever
    the video's length.

    Args:
        model_or_predictor: An :class:`~affectfpn.AffectFPN` in eval mode, or a
            :class:`~affectfpn.inference.Predictor`, which holds the prediction options.
        source: A video file path, a stream URL, or an open ``cv2.VideoCapture`` (a camera:
            ``cv2.VideoCapture(0)``; read from its current position and left open). The frame
            count may be unknown.
        tracker: A :class:`FaceTracker` to use instead of a new one (``track_iou`` and
            ``max_missed`` are then ignored); its state carries over between calls.
        return_frames: Yield ``(frame_prediction, rgb)`` pairs, ``rgb`` the H x W x 3 uint8
            frame, e.g. for :func:`write_annotated_video`. Frames in flight (up to about one
            batch, plus the smoothing window) are then held in memory.
        **options: With a model, the options of :class:`~affectfpn.inference.Predictor`
            (``faces="crop"`` when each frame already is one face, ``detector``,
            ``batch_size``, ``device``, ...), which build the Predictor; with a Predictor,
            none of them (set them on it). And the video's own (:class:`VideoOptions`):

            - ``every_n``: process every n-th frame (1: all);
            - ``target_fps``: process about this many frames per second of video time instead
              (every frame of a slower video); exclusive with ``every_n > 1``;
            - ``start``: index of the first frame to process (default 0);
            - ``end``: index one past the last frame to process (default: to the end);
            - ``smoothing``: ``None`` (default), ``"ema"`` (causal) or ``"centered"`` (a
              window with lookahead); per track, see the module documentation;
            - ``alpha``: EMA weight of the newest frame, in (0, 1] (default 0.3);
            - ``window``: centred window, in processed frames, odd (default 5);
            - ``track_iou``: smallest box IoU for a face to continue a track (default 0.3);
            - ``max_missed``: processed frames a track may go unseen before it ends
              (default 10);
            - ``progress``: a tqdm bar on stderr; ``None``: when stderr is a terminal.

    Returns:
        A :class:`VideoStream` of :class:`FramePrediction` (or of pairs), in frame order, one
        per processed frame, faces sorted by track id.

    Raises:
        InputError: The video cannot be opened (at the call), or no frame of it can be decoded
            (when iterating).
        ConfigError: An option is invalid or unknown, or a prediction option is given with a
            Predictor.
    """
    video, given = _split_options("predict_video", model_or_predictor, dict(options))
    check_smoothing(video["smoothing"], video["alpha"], video["window"])
    if tracker is None:
        tracker = FaceTracker(iou_threshold=video["track_iou"], max_missed=video["max_missed"])
    elif not isinstance(tracker, FaceTracker):
        raise ConfigError(f"tracker must be a FaceTracker, got {type(tracker).__name__}")
    # The video first: a wrong path fails fast, before a detector is loaded.
    reader = VideoReader(
        source,
        every_n=video["every_n"],
        target_fps=video["target_fps"],
        start=video["start"],
        end=video["end"],
    )
    try:
        predictor = _make_predictor(model_or_predictor, given, video.get("predictor_options", {}))
    except BaseException:
        reader.close()
        raise
    pipeline = _pipeline(reader, predictor, tracker, return_frames, video["progress"])
    pairs = smooth_pairs(pipeline, video["smoothing"], alpha=video["alpha"], window=video["window"])
    if return_frames:
        with_images = cast(Iterator[tuple[FramePrediction, np.ndarray]], pairs)
        return VideoStream(with_images, reader, predictor, pipeline)
    return VideoStream(_frames_only(pairs), reader, predictor, pipeline)


def smooth_frames(
    frames: Iterable[FramePrediction],
    smoothing: str = "ema",
    *,
    alpha: float = 0.3,
    window: int = 5,
) -> Iterator[FramePrediction]:
    """Smooth already predicted frames per track (what ``predict_video(smoothing=...)`` does).

    Args:
        frames: :class:`FramePrediction` objects in frame order, faces identified by track id.
        smoothing: ``"ema"`` (causal) or ``"centered"`` (lookahead of ``window // 2`` frames).
        alpha: EMA weight of the newest frame, in (0, 1].
        window: Centred window length in frames (odd).

    Returns:
        The frames with smoothed valence/arousal, expression and AU probabilities (labels and
        active AUs recomputed), lazily, one per input frame.
    """
    if smoothing not in SMOOTHING:
        raise ConfigError(
            "is not valid; use 'ema' or 'centered'", option="smoothing", value=smoothing
        )
    pairs = ((frame, None) for frame in iterate(frames, "smooth_frames"))
    return (frame for frame, _ in smooth_pairs(pairs, smoothing, alpha=alpha, window=window))  # type: ignore[arg-type]


# --------------------------------------------------------------------------------- writers


def write_video_csv(
    frames: Iterable[FramePrediction] | Iterable[tuple[FramePrediction, np.ndarray]],
    path_or_file: str | os.PathLike[str] | TextIO,
    *,
    expressions: Sequence[str] | None = None,
    action_units: Sequence[str] | None = None,
    tasks: Sequence[str] = TASKS,
    precision: int = 6,
) -> int:
    """Write frames as a CSV table, row by row as they come (the video is never held).

    One row per (frame, face); a frame without a face gives one row with ``success`` 0 and
    ``face_id`` -1, so every processed frame has at least one row. Columns: see the module
    documentation and :func:`video_table_columns`.

    Args:
        frames: What :func:`predict_video` yields (frames, or ``(frame, image)`` pairs).
        path_or_file: Output path (overwritten, UTF-8) or an open text file (``newline=""``).
        expressions: Expression names of the ``expr_*`` columns; default: the model's (the
            frames carry them), else the library's ``EXPRESSIONS``.
        action_units: AU names of the AU columns; default as for ``expressions``.
        tasks: Column groups to include (a subset of ``("va", "expression", "au")``).
        precision: Decimals of floats.

    Returns:
        The number of rows written (header excluded).
    """
    if isinstance(frames, VideoStream):  # known before the first frame, even with no frame
        expressions = frames.expressions if expressions is None else expressions
        action_units = frames.action_units if action_units is None else action_units
    items = iterate(frames, "write_video_csv")
    sink = CsvSink(
        path_or_file,
        expressions=expressions,
        action_units=action_units,
        tasks=tasks,
        precision=precision,
    )
    try:
        for item in items:
            sink.add(frame_of(item))
    finally:
        sink.close()
    return sink.rows


def write_abaw2(
    frames: Iterable[FramePrediction] | Iterable[tuple[FramePrediction, np.ndarray]],
    out_dir: str | os.PathLike[str],
    video_name: str,
    *,
    tasks: Sequence[str] = TASKS,
    num_frames: int | None = None,
    precision: int = 6,
) -> dict[str, Path]:
    """Write ABAW2 (Aff-Wild2 challenge) submission files for one video.

    Per task, ``<out_dir>/<VA_Set|EXPR_Set|AU_Set>/<video_name>.txt``: the header
    (:data:`ABAW2_HEADERS`), then one line per video frame from frame 0 (line k + 2 is frame k):
    ``valence,arousal`` / the expression class index (0 Neutral, 1 Anger, 2 Disgust, 3 Fear,
    4 Happiness, 5 Sadness, 6 Surprise) / the 12 AUs as 0/1 (active = probability >= the
    predictor's ``au_threshold``). With several faces, the largest box of the frame is written
    (:func:`main_face`). A frame without faces, or skipped by ``every_n`` / ``target_fps``,
    repeats the previous line; lines before the first face are :data:`ABAW2_DEFAULTS` (VA 0,
    Neutral, no AU).

    Args:
        frames: What :func:`predict_video` yields, in frame order.
        out_dir: Folder of the task folders (created).
        video_name: The video's name, used as the file name (Aff-Wild2 names, no extension).
        tasks: Which task files to write (their order does not matter).
        num_frames: Pad with repeated lines up to this many lines (the video's frame count). By
            default, up to the last frame decoded when ``frames`` is a :class:`VideoStream`
            (frames after the last processed one), else up to the last frame given.
        precision: Decimals of valence and arousal.

    Returns:
        ``{task: path}`` of the written files.

    Raises:
        InputError: A face lacks a requested task or an ABAW2 label, frames are out of order,
            or a file cannot be written.
    """
    items = iterate(frames, "write_abaw2")
    sink = AbawSink(out_dir, video_name, tasks=tasks, precision=precision)
    try:
        for item in items:
            sink.add(frame_of(item))
        if num_frames is not None:
            sink.pad(int(num_frames))
        elif isinstance(frames, VideoStream):
            sink.pad(frames.last_index + 1)
    finally:
        sink.close()
    return dict(sink.paths)


def write_annotated_video(
    frames_with_images: Iterable[tuple[FramePrediction, np.ndarray]],
    path: str | os.PathLike[str],
    fps: float,
    *,
    codec: str = "auto",
    show_aus: bool = True,
    show_time: bool = True,
) -> int:
    """Write a video of the frames with their predictions drawn on them.

    Each frame gets its faces' boxes (a colour per track), expression, valence/arousal and
    active AUs (:func:`affectfpn.inference.draw`), and with ``show_time`` the frame index and
    time in a corner.

    Args:
        frames_with_images: ``(frame, rgb)`` pairs: ``predict_video(..., return_frames=True)``.
        path: Output file: ``.mp4`` (H.264), ``.webm`` (VP9), ``.mov`` / ``.mkv``, or ``.avi``
            (OpenCV).
        fps: Frame rate of the output: the source's fps divided by ``every_n`` plays in real
            time (``VideoStream.info.fps``).
        codec: ``"auto"`` (by the extension; H.264 for ``.mp4`` when PyAV is installed, else
            ``mp4v`` with a warning), ``"h264"`` or ``"vp9"`` (PyAV: ``pip install
            'affectfpn[video]'``), ``"mp4v"`` or another FourCC of ``cv2.VideoWriter``; see
            :func:`video_encoding`.
        show_aus: List active AUs under each face.
        show_time: Stamp frame index and time.

    Returns:
        The number of frames written (0: no file is created).

    Raises:
        InputError: An item is not a pair, frame sizes change, or the codec is unknown or does
            not fit the file's extension (H.264 in ``.webm``).
        MissingExtraError: ``h264`` / ``vp9`` / ``.webm`` without PyAV installed.
        AffectFPNError: The library cannot encode with this codec here.
    """
    items = iterate(frames_with_images, "write_annotated_video")
    sink = VideoSink(path, fps, codec=codec, show_aus=show_aus, show_time=show_time)
    try:
        for item in items:
            if not isinstance(item, tuple) or len(item) != 2:
                raise InputError(
                    "write_annotated_video needs (frame, rgb) pairs: use "
                    "predict_video(..., return_frames=True)"
                )
            sink.add(frame_of(item), item[1])
    finally:
        sink.close()
    return sink.frames


# --------------------------------------------------------------------------------- one pass


@overload
def analyze_video(
    model_or_predictor: nn.Module | Predictor,
    source: VideoSource,
    *,
    csv_path: str | os.PathLike[str] | None = ...,
    abaw_dir: str | os.PathLike[str] | None = ...,
    abaw_tasks: Sequence[str] | None = ...,
    video_name: str | None = ...,
    annotated_path: str | os.PathLike[str] | None = ...,
    annotated_codec: str | VideoEncoding = ...,
    plot_path: str | os.PathLike[str] | None = ...,
    collect: Literal[True] = ...,
    **options: Unpack[VideoOptions],
) -> VideoResult: ...


@overload
def analyze_video(
    model_or_predictor: nn.Module | Predictor,
    source: VideoSource,
    *,
    csv_path: str | os.PathLike[str] | None = ...,
    abaw_dir: str | os.PathLike[str] | None = ...,
    abaw_tasks: Sequence[str] | None = ...,
    video_name: str | None = ...,
    annotated_path: str | os.PathLike[str] | None = ...,
    annotated_codec: str | VideoEncoding = ...,
    plot_path: str | os.PathLike[str] | None = ...,
    collect: Literal[False],
    **options: Unpack[VideoOptions],
) -> None: ...


def analyze_video(
    model_or_predictor: nn.Module | Predictor,
    source: VideoSource,
    *,
    csv_path: str | os.PathLike[str] | None = None,
    abaw_dir: str | os.PathLike[str] | None = None,
    abaw_tasks: Sequence[str] | None = None,
    video_name: str | None = None,
    annotated_path: str | os.PathLike[str] | None = None,
    annotated_codec: str | VideoEncoding = "auto",
    plot_path: str | os.PathLike[str] | None = None,
    collect: bool = True,
    **options: Unpack[VideoOptions],
) -> VideoResult | None:
    """Analyse a video in one pass: write the requested outputs, and collect the predictions.

    Runs :func:`predict_video` once and feeds every frame to each requested output as it comes:
    a CSV table (:func:`write_video_csv`), ABAW2 files (:func:`write_abaw2`), an annotated video
    (:func:`write_annotated_video`, at the source's fps divided by ``every_n``, or
    ``target_fps``) and a VA plot (:func:`plot_va`, drawn at the end).

    Args:
        model_or_predictor: A model or a :class:`~affectfpn.inference.Predictor`.
        source: A video path, stream URL or open ``cv2.VideoCapture``.
        csv_path: Where to write the CSV table.
        abaw_dir: Folder of the ABAW2 files.
        abaw_tasks: Their tasks (default: the model's tasks).
        video_name: Their file name (default: the video file's name without extension, or
            ``"video"`` for a capture).
        annotated_path: Where to write the annotated video.
        annotated_codec: Its codec: ``"auto"``, ``"h264"``, ``"vp9"``, ``"mp4v"`` (see
            :func:`write_annotated_video`), or a :class:`VideoEncoding`; checked before the
            video is opened.
        plot_path: Where to save the main face's timeline (:func:`plot_timeline`: expressions,
            active AUs, valence/arousal when the model has them; needs matplotlib; skipped with
            a warning when no face was found).
        collect: Return a :class:`VideoResult` (compact arrays, about 100 bytes per face and
            frame); ``False`` returns ``None`` and keeps nothing (a plot still keeps the
            compact arrays until it is drawn).
        **options: As for :func:`predict_video`: the Predictor's (with a model) and the
            video's own.

    Returns:
        A :class:`VideoResult`, or ``None`` when ``collect`` is ``False``.
    """
    # The codec first: a wrong one (or a missing extra) fails before the video is opened.
    encoding = annotated_codec
    if annotated_path is not None and not isinstance(encoding, VideoEncoding):
        encoding = video_encoding(annotated_path, encoding)
    stream: VideoStream[Any] = predict_video(  # type: ignore[call-overload]
        model_or_predictor, source, return_frames=annotated_path is not None, **options
    )
    info = stream.info
    if video_name is None:
        video_name = "video" if info.source == "<capture>" else Path(info.source).stem or "video"
    sinks: list[CsvSink | AbawSink | VideoSink] = []
    csv_sink = abaw_sink = video_sink = None
    try:
        if csv_path is not None:
            csv_sink = CsvSink(
                csv_path, expressions=stream.expressions, action_units=stream.action_units
            )
            sinks.append(csv_sink)
        if abaw_dir is not None:
            tasks = stream.tasks if abaw_tasks is None else tuple(abaw_tasks)
            abaw_sink = AbawSink(abaw_dir, video_name, tasks=tasks)
            sinks.append(abaw_sink)
        if annotated_path is not None:
            rate = options.get("target_fps")
            if rate is None and info.fps is not None:
                rate = info.fps / options.get("every_n", 1)
            if rate is None:
                logger.warning(
                    "%s: frame rate unknown; the annotated video is written at %g fps",
                    info.source,
                    _FALLBACK_FPS,
                )
                rate = _FALLBACK_FPS
            video_sink = VideoSink(annotated_path, rate, codec=encoding)
            sinks.append(video_sink)
        collector = (
            Collector(info, stream.expressions, stream.action_units, stream.au_threshold)
            if collect or plot_path is not None
            else None
        )
        for item in stream:
            frame, rgb = item if annotated_path is not None else (item, None)
            if csv_sink is not None:
                csv_sink.add(frame)
            if abaw_sink is not None:
                abaw_sink.add(frame)
            if video_sink is not None and rgb is not None:
                video_sink.add(frame, rgb)
            if collector is not None:
                collector.add(frame)
        if abaw_sink is not None:
            abaw_sink.pad(stream.last_index + 1)
    except BaseException:
        if video_sink is not None:
            video_sink.aborted = True
        raise
    finally:
        stream.close()
        for sink in sinks:
            sink.close()
    result = None if collector is None else collector.result()
    if plot_path is not None and result is not None:
        if result.face_id.size == 0:
            logger.warning("%s: no face to plot; %s not written", info.source, plot_path)
        else:
            plot_timeline(result, plot_path)
    return result if collect else None
