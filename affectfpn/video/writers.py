"""Outputs of video prediction: CSV table, ABAW2 submission files, annotated video, VA plot.

Each writer is a small *sink* (``add(frame)`` then ``close()``), so that one pass over a video
can feed several outputs (:func:`affectfpn.video.analyze_video`); the public functions in
:mod:`affectfpn.video` loop one sink over an iterator. Nothing here keeps more than one frame.
"""

import csv
import logging
import math
import os
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, TextIO

import cv2
import numpy as np

from affectfpn.errors import AffectFPNError, InputError, MissingExtraError, require_extra
from affectfpn.inference.draw import draw
from affectfpn.inference.results import ImagePrediction
from affectfpn.inference.tables import FRAME_COLUMNS, CsvWriter, frame_cells, table_columns
from affectfpn.labels import ACTION_UNITS, EXPRESSIONS, TASKS
from affectfpn.video.result import VideoResult, main_face
from affectfpn.video.types import FramePrediction

__all__ = [
    "ABAW2_DEFAULTS",
    "ABAW2_HEADERS",
    "ABAW2_TASK_DIRS",
    "VIDEO_CODECS",
    "AbawSink",
    "CsvSink",
    "VideoEncoding",
    "VideoSink",
    "frame_of",
    "plot_timeline",
    "plot_va",
    "video_encoding",
    "video_table_columns",
]

logger = logging.getLogger(__name__)

#: Header line of each ABAW2 task file (the Aff-Wild2 annotation headers).
ABAW2_HEADERS: dict[str, str] = {
    "va": "valence,arousal",
    "expression": ",".join(EXPRESSIONS),
    "au": ",".join(ACTION_UNITS),
}
#: Sub-folder of ``out_dir`` per task, named like the Aff-Wild2 annotation folders.
ABAW2_TASK_DIRS: dict[str, str] = {"va": "VA_Set", "expression": "EXPR_Set", "au": "AU_Set"}
#: Row written for frames before the first face: VA 0,0; expression 0 (Neutral); no AU active.
ABAW2_DEFAULTS: dict[str, str] = {
    "va": "0,0",
    "expression": "0",
    "au": ",".join("0" for _ in ACTION_UNITS),
}
_VIDEO_COLUMNS = tuple(column.name for column in FRAME_COLUMNS)
_BAD_NAME = re.compile(r"[\\/\x00]")


def frame_of(item: object) -> FramePrediction:
    """The :class:`FramePrediction` of an item: a frame, or a ``(frame, image)`` pair."""
    if isinstance(item, tuple) and len(item) == 2:
        item = item[0]
    if not isinstance(item, FramePrediction):
        raise InputError(
            f"expected FramePrediction objects (or (frame, image) pairs) from predict_video, got "
            f"{type(item).__name__}"
        )
    return item


def video_table_columns(
    expressions: Sequence[str] = EXPRESSIONS,
    action_units: Sequence[str] = ACTION_UNITS,
    tasks: Sequence[str] = TASKS,
) -> list[str]:
    """Columns of :func:`~affectfpn.video.write_video_csv`: ``frame``, ``timestamp``, then
    :func:`~affectfpn.inference.table_columns`."""
    return [*_VIDEO_COLUMNS, *table_columns(expressions, action_units, tasks)]


class CsvSink(CsvWriter):
    """Write one CSV row per (frame, face), and one ``success`` 0 row per frame without faces:
    the :class:`~affectfpn.inference.CsvWriter` table with ``frame`` and ``timestamp`` first."""

    leading_columns = _VIDEO_COLUMNS

    def leading_values(self, prediction: ImagePrediction) -> dict[str, object]:
        cells = frame_cells(frame_of(prediction))
        assert cells is not None  # a FramePrediction has an index and a timestamp
        return cells


class AbawSink:
    """Write ABAW2 submission files: one per task, a header, then one line per video frame."""

    def __init__(
        self,
        out_dir: str | os.PathLike[str],
        video_name: str,
        *,
        tasks: Sequence[str] = TASKS,
        precision: int = 6,
    ) -> None:
        if not isinstance(video_name, str) or not video_name or _BAD_NAME.search(video_name):
            raise InputError(
                f"video_name={video_name!r} must be a non-empty file name without slashes, "
                "e.g. '4-30-1920x1080' (the Aff-Wild2 video name)"
            )
        if isinstance(tasks, str):
            tasks = (tasks,)
        unknown = [task for task in tasks if task not in ABAW2_HEADERS]
        if unknown or not tasks or len(set(tasks)) != len(tasks):
            raise InputError(f"tasks={tuple(tasks)!r} must be distinct names among {TASKS}")
        if isinstance(precision, bool) or not isinstance(precision, int) or precision < 0:
            raise InputError(f"precision must be an integer >= 0, got {precision!r}")
        self.tasks = tuple(task for task in TASKS if task in tasks)
        self._precision = precision
        self.paths: dict[str, Path] = {}
        self._files: dict[str, TextIO] = {}
        root = Path(out_dir).expanduser()
        try:
            for task in self.tasks:
                folder = root / ABAW2_TASK_DIRS[task]
                folder.mkdir(parents=True, exist_ok=True)
                path = folder / f"{video_name}.txt"
                handle = open(path, "w", encoding="utf-8", newline="\n")  # noqa: SIM115
                handle.write(ABAW2_HEADERS[task] + "\n")
                self.paths[task] = path
                self._files[task] = handle
        except OSError as error:
            self.close()
            raise InputError(f"cannot write ABAW2 files under {root}: {error}") from None
        self._last: dict[str, str] = dict(ABAW2_DEFAULTS)
        self.lines = 0  # rows written per file (the next frame index to write)

    def _lines(self, frame: FramePrediction) -> dict[str, str]:
        face = main_face(frame.faces)
        if face is None:
            return self._last
        lines: dict[str, str] = {}
        where = f"face {face.face_id} of {frame.source!r}"
        p = self._precision
        if "va" in self.tasks:
            if face.va is None:
                raise InputError(f"{where} has no valence/arousal: leave 'va' out of tasks")
            lines["va"] = f"{face.va.valence:.{p}f},{face.va.arousal:.{p}f}"
        if "expression" in self.tasks:
            if face.expression is None:
                raise InputError(f"{where} has no expression: leave 'expression' out of tasks")
            label = face.expression.label
            if label not in EXPRESSIONS:
                raise InputError(
                    f"{where}: expression {label!r} is not an ABAW2 class {EXPRESSIONS}; the "
                    "model's expression names must be the Aff-Wild2 ones"
                )
            lines["expression"] = str(EXPRESSIONS.index(label))
        if "au" in self.tasks:
            if face.aus is None:
                raise InputError(f"{where} has no action units: leave 'au' out of tasks")
            missing = [name for name in ACTION_UNITS if name not in face.aus.probabilities]
            if missing:
                raise InputError(f"{where} lacks the ABAW2 action unit(s) {missing}")
            active = set(face.aus.active)
            lines["au"] = ",".join("1" if name in active else "0" for name in ACTION_UNITS)
        return lines

    def _write(self, lines: Mapping[str, str], count: int) -> None:
        for task in self.tasks:
            self._files[task].write((lines[task] + "\n") * count)
        self.lines += count

    def add(self, frame: FramePrediction) -> None:
        """Write the lines up to and including ``frame.index``."""
        if frame.index < self.lines:
            raise InputError(
                f"frame {frame.index} comes after frame {self.lines - 1}: ABAW2 files need the "
                "frames in increasing order, each once"
            )
        # Frames skipped before this one (every_n, target_fps, start) repeat the last lines.
        self._write(self._last, frame.index - self.lines)
        lines = self._lines(frame)
        self._write(lines, 1)
        self._last = dict(lines)

    def pad(self, num_frames: int) -> None:
        """Repeat the last lines up to ``num_frames`` lines (frames after the last processed)."""
        if num_frames > self.lines:
            self._write(self._last, num_frames - self.lines)

    def close(self) -> None:
        """Close the files."""
        for handle in self._files.values():
            handle.close()
        self._files = {}


#: The ``codec=`` names of annotated videos; any other four-character code goes to OpenCV as
#: a FourCC (``"MJPG"`` for ``.avi``).
VIDEO_CODECS: tuple[str, ...] = ("auto", "h264", "vp9", "mp4v")
# PyAV's encoder of each codec, the file extensions that can hold it, and its settings.
_PYAV_ENCODERS = {"h264": "libx264", "vp9": "libvpx-vp9"}
_CONTAINERS = {"h264": (".mp4", ".m4v", ".mov", ".mkv"), "vp9": (".webm", ".mkv", ".mp4")}
_ENCODER_OPTIONS = {
    "h264": {"crf": "23", "preset": "fast"},
    "vp9": {"crf": "32", "b": "0", "deadline": "good", "cpu-used": "5", "row-mt": "1"},
}
_FASTSTART = (".mp4", ".m4v", ".mov")  # the index (moov) before the data: plays while loading
_CODEC_LABELS = {"h264": "H.264", "vp9": "VP9", "mp4v": "MPEG-4 Part 2 (mp4v)"}
_VIDEO_EXTRA = "pip install 'affectfpn[video]'"


@dataclass(frozen=True)
class VideoEncoding:
    """How an annotated video is encoded: what :func:`video_encoding` decided.

    Attributes:
        codec: ``"h264"``, ``"vp9"``, ``"mp4v"``, or the FourCC given to OpenCV.
        backend: ``"pyav"`` (H.264 / VP9, yuv420p, the ``video`` extra) or ``"opencv"``
            (``cv2.VideoWriter``).
    """

    codec: str
    backend: str

    @property
    def browser_playable(self) -> bool:
        """Whether web browsers play the file (H.264 or VP9, yuv420p)."""
        return self.backend == "pyav"

    def __str__(self) -> str:
        label = _CODEC_LABELS.get(self.codec, f"FourCC {self.codec!r}")
        return f"{label} via {'PyAV' if self.backend == 'pyav' else 'OpenCV'}"


def _pyav_problem(codec: str, where: Path) -> AffectFPNError | None:
    """Why PyAV cannot encode ``codec`` into ``where`` here (``None``: it can)."""
    import importlib.util

    if importlib.util.find_spec("av") is None:
        return MissingExtraError(
            f"{where}: codec {codec!r} needs PyAV (the optional package 'av'): {_VIDEO_EXTRA}"
        )
    import av

    try:
        av.codec.Codec(_PYAV_ENCODERS[codec], "w")
    except ValueError:  # UnknownCodecError
        return AffectFPNError(
            f"{where}: this PyAV build has no {_PYAV_ENCODERS[codec]} encoder for codec "
            f"{codec!r}; install PyAV's own wheel (pip install --force-reinstall av) or choose "
            "another codec"
        )
    return None


def video_encoding(path: str | os.PathLike[str], codec: str = "auto") -> VideoEncoding:
    """Decide the codec and the library of an annotated video, before any frame is drawn.

    ``"auto"`` picks by the extension: ``.webm`` gets VP9; ``.avi`` gets ``mp4v`` through
    OpenCV; any other (``.mp4``, ``.mov``, ``.mkv``, ...) gets H.264 through PyAV when the
    ``video`` extra is installed, else ``mp4v`` through OpenCV with a warning (browsers do not
    play ``mp4v``). ``"h264"`` and ``"vp9"`` always need PyAV; ``"mp4v"`` or another FourCC
    (e.g. ``"MJPG"``) uses ``cv2.VideoWriter``.

    Args:
        path: The output file (its extension decides the container).
        codec: One of :data:`VIDEO_CODECS`, or a four-character OpenCV FourCC.

    Returns:
        The :class:`VideoEncoding`.

    Raises:
        MissingExtraError: ``h264``/``vp9`` (or ``.webm``) without PyAV installed.
        InputError: An unknown codec, or one the file's extension cannot hold (H.264 in WebM).
        AffectFPNError: The installed PyAV has no encoder for the codec.
    """
    if not isinstance(codec, str):
        raise InputError(f"codec must be one of {', '.join(VIDEO_CODECS)}, got {codec!r}")
    where = Path(os.fspath(path))
    suffix = where.suffix.lower()
    name = codec.lower() if codec.lower() in VIDEO_CODECS else codec
    if name == "auto":
        if suffix == ".webm":
            name = "vp9"
        elif suffix == ".avi":
            name = "mp4v"
        elif _pyav_problem("h264", where) is None:
            name = "h264"
        else:
            logger.warning(
                "%s: written as MPEG-4 Part 2 (mp4v) through OpenCV, which web browsers do not "
                "play; for H.264: %s",
                where,
                _VIDEO_EXTRA,
            )
            name = "mp4v"
    if name in _PYAV_ENCODERS:
        if suffix not in _CONTAINERS[name]:
            hint = " (or choose codec 'vp9' for WebM)" if suffix == ".webm" else ""
            raise InputError(
                f"{where}: {_CODEC_LABELS[name]} video goes in a {' / '.join(_CONTAINERS[name])} "
                f"file, not {f'a {suffix} file' if suffix else 'a file without an extension'}; "
                f"name it e.g. {where.with_suffix(_CONTAINERS[name][0]).name}{hint}"
            )
        problem = _pyav_problem(name, where)
        if problem is not None:
            raise problem
        return VideoEncoding(name, "pyav")
    if len(name) != 4:
        raise InputError(
            f"codec={codec!r} is not one of {', '.join(VIDEO_CODECS)} (nor a four-character "
            "OpenCV FourCC such as 'MJPG')"
        )
    if suffix == ".webm":
        raise InputError(
            f"{where}: a .webm file holds VP9 video, not {codec!r}; use codec 'vp9' (or 'auto') "
            "or a .mp4 / .avi file"
        )
    return VideoEncoding(name, "opencv")


class _OpenCVEncoder:
    """``cv2.VideoWriter`` with a FourCC: RGB frames in."""

    def __init__(self, path: Path, fps: float, fourcc: str, size: tuple[int, int]) -> None:
        self._writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*fourcc), fps, size)
        if not self._writer.isOpened():
            raise AffectFPNError(
                f"{path}: OpenCV cannot write a video with codec {fourcc!r} here; try another "
                f"codec ('h264' or 'vp9' with {_VIDEO_EXTRA}, 'mp4v' for .mp4, 'MJPG' for .avi) "
                "or file extension"
            )

    def write(self, rgb: np.ndarray) -> None:
        self._writer.write(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))

    def close(self) -> None:
        self._writer.release()


class _PyAVEncoder:
    """H.264 or VP9 in yuv420p through PyAV (FFmpeg): what browsers play. Odd frame sizes are
    padded by one row / column (yuv420p needs even sizes); MP4 files get their index first."""

    def __init__(self, path: Path, fps: float, codec: str, size: tuple[int, int]) -> None:
        import av

        self._av = av
        self._path = path
        width, height = size
        self._pad = ((0, height % 2), (0, width % 2), (0, 0))
        self._stream: Any = None  # PyAV's stream (typed loosely: av's stubs vary by release)
        self._container: Any = None
        options = {"movflags": "+faststart"} if path.suffix.lower() in _FASTSTART else {}
        try:
            self._container = av.open(str(path), mode="w", options=options)
            try:
                self._stream = self._container.add_stream(
                    _PYAV_ENCODERS[codec],
                    rate=Fraction(fps).limit_denominator(1001),
                    options=dict(_ENCODER_OPTIONS[codec]),
                )
                self._stream.width = width + width % 2
                self._stream.height = height + height % 2
                self._stream.pix_fmt = "yuv420p"
            except BaseException:
                self._container.close()
                raise
        except (av.error.FFmpegError, OSError, ValueError) as error:
            raise AffectFPNError(
                f"{path}: PyAV cannot write {_CODEC_LABELS[codec]} video here: {error}"
            ) from None
        self._count = 0

    def _mux(self, frame: Any) -> None:
        try:
            self._container.mux(self._stream.encode(frame))
        except (self._av.error.FFmpegError, OSError, ValueError) as error:
            raise AffectFPNError(f"{self._path}: encoding failed: {error}") from None

    def write(self, rgb: np.ndarray) -> None:
        if any(after for _, after in self._pad[:2]):
            rgb = np.pad(rgb, self._pad, mode="edge")
        frame = self._av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
        frame.pts = self._count
        self._mux(frame)
        self._count += 1

    def close(self) -> None:
        try:
            self._mux(None)  # flush the encoder
        finally:
            self._container.close()


class VideoSink:
    """Encode annotated frames into a video file: H.264 or VP9 through PyAV (the ``video``
    extra), or ``cv2.VideoWriter`` (``mp4v`` and other FourCCs). ``codec`` is a name for
    :func:`video_encoding`, or what it returned.

    Attributes:
        encoding: The codec and the library that writes it, decided when the sink is made.
        codec: ``encoding.codec``.
        frames: Frames written so far.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        fps: float,
        *,
        codec: "str | VideoEncoding" = "auto",
        show_aus: bool = True,
        show_time: bool = True,
    ) -> None:
        if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not math.isfinite(fps):
            raise InputError(f"fps must be a number > 0, got {fps!r}")
        if fps <= 0:
            raise InputError(f"fps must be a number > 0, got {fps!r}")
        self.path = Path(path).expanduser()
        self.encoding = (
            codec if isinstance(codec, VideoEncoding) else video_encoding(self.path, codec)
        )
        self.fps = float(fps)
        self.codec = self.encoding.codec
        self.show_aus = show_aus
        self.show_time = show_time
        self._writer: _OpenCVEncoder | _PyAVEncoder | None = None
        self._size: tuple[int, int] | None = None
        self.frames = 0
        #: Set when the run that feeds this sink failed: closing then says nothing of an empty
        #: video (the failure is reported where it happened).
        self.aborted = False

    def add(self, frame: FramePrediction, rgb: np.ndarray) -> None:
        """Draw ``frame`` on its image and append it to the video."""
        if not isinstance(rgb, np.ndarray) or rgb.ndim != 3 or rgb.shape[2] != 3:
            raise InputError(
                f"{frame.source}: the image must be an H x W x 3 RGB array; get (frame, image) "
                "pairs from predict_video(..., return_frames=True)"
            )
        canvas = draw(rgb, frame, show_aus=self.show_aus)
        if self.show_time:
            _stamp(canvas, f"#{frame.index}  {frame.timestamp:.2f}s")
        height, width = canvas.shape[:2]
        if self._writer is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            encoder = _PyAVEncoder if self.encoding.backend == "pyav" else _OpenCVEncoder
            self._writer = encoder(self.path, self.fps, self.codec, (width, height))
            logger.info(
                "%s: %s, %dx%d at %g fps", self.path, self.encoding, width, height, self.fps
            )
            self._size = (width, height)
        elif self._size != (width, height):
            raise InputError(
                f"{frame.source} is {width}x{height} but the video started at "
                f"{self._size[0]}x{self._size[1]}; a video file needs one frame size"  # type: ignore[index]
            )
        self._writer.write(canvas)
        self.frames += 1

    def close(self) -> None:
        """Finish the file."""
        if self._writer is not None:
            writer, self._writer = self._writer, None
            writer.close()
        elif self.frames == 0 and not self.aborted:
            logger.warning("%s: no frame to write; no video file was created", self.path)


def _stamp(canvas: np.ndarray, text: str) -> None:
    """Write ``text`` at the bottom-left corner of ``canvas``, white on a dark box."""
    height, width = canvas.shape[:2]
    scale = max(0.35, min(width, height) / 900)
    thickness = max(1, round(scale * 1.6))
    (w, h), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
    pad = max(2, round(4 * scale))
    top = max(0, height - h - base - 2 * pad)
    canvas[top:height, 0 : min(width, w + 2 * pad)] //= 4
    cv2.putText(
        canvas,
        text,
        (pad, height - base - pad),
        cv2.FONT_HERSHEY_SIMPLEX,
        scale,
        (255, 255, 255),
        thickness,
        cv2.LINE_AA,
    )


# --------------------------------------------------------------------------------- plot


def _series_from_csv(path: Path) -> tuple[np.ndarray, dict[int, np.ndarray]]:
    times: list[float] = []
    values: dict[int, dict[int, tuple[float, float]]] = {}
    last_frame: str | None = None
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            needed = {"frame", "timestamp", "face_id", "success", "valence", "arousal"}
            if reader.fieldnames is None or not needed <= set(reader.fieldnames):
                raise InputError(
                    f"{path}: not a video CSV of write_video_csv (needs columns {sorted(needed)})"
                )
            for line, row in enumerate(reader, start=2):
                try:
                    if row["frame"] != last_frame:
                        last_frame = row["frame"]
                        times.append(float(row["timestamp"]))
                    if row["success"] == "1" and row["valence"] and row["arousal"]:
                        va = (float(row["valence"]), float(row["arousal"]))
                        values.setdefault(int(row["face_id"]), {})[len(times) - 1] = va
                except (TypeError, ValueError) as error:
                    raise InputError(f"{path}, line {line}: {error}") from None
    except OSError as error:
        raise InputError(f"cannot read {path}: {error}") from None
    series = {}
    for track, points in values.items():
        array = np.full((len(times), 2), np.nan)
        for pos, va in points.items():
            array[pos] = va
        series[track] = array
    return np.asarray(times, dtype=np.float64), series


def _series_from_frames(frames: Iterable[object]) -> tuple[np.ndarray, dict[int, np.ndarray]]:
    times: list[float] = []
    points: dict[int, list[tuple[int, float, float]]] = {}
    for item in frames:
        frame = frame_of(item)
        pos = len(times)
        times.append(frame.timestamp)
        for face in frame.faces:
            if face.va is not None:
                points.setdefault(face.face_id, []).append((pos, *face.va.as_tuple()))
    series = {}
    for track, entries in points.items():
        array = np.full((len(times), 2), np.nan)
        for pos, v, a in entries:
            array[pos] = (v, a)
        series[track] = array
    return np.asarray(times, dtype=np.float64), series


def plot_va(
    frames_or_csv: Iterable[object] | VideoResult | str | os.PathLike[str],
    path: str | os.PathLike[str],
    *,
    face_id: int | None = None,
    max_tracks: int = 8,
    title: str | None = None,
    dpi: int = 100,
) -> Path:
    """Plot valence and arousal over time (two panels, seconds on the x axis) to an image file.

    Args:
        frames_or_csv: Frames from :func:`~affectfpn.video.predict_video` (or ``(frame, image)``
            pairs), a :class:`~affectfpn.video.VideoResult`, or the path of a CSV written by
            :func:`~affectfpn.video.write_video_csv`.
        path: Output image; the format follows the extension (``.png``, ``.pdf``, ``.svg``...).
        face_id: Plot only this track. ``None``: one line per track, the ``max_tracks`` tracks
            seen in most frames (a face's line breaks where it is not in view).
        max_tracks: Most tracks drawn when ``face_id`` is ``None``.
        title: Figure title (default: the video's name when known).
        dpi: Resolution of raster formats.

    Returns:
        The written path.

    Raises:
        MissingExtraError: matplotlib is not installed (``pip install 'affectfpn[plot]'``).
        InputError: Nothing to plot (no face with valence/arousal, or no such ``face_id``), or
            an unreadable CSV.
    """
    require_extra("matplotlib", "plot")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    name: str | None = None
    if isinstance(frames_or_csv, VideoResult):
        times = frames_or_csv.timestamp
        series = {track: frames_or_csv.valence_arousal(track) for track in frames_or_csv.track_ids}
        name = Path(frames_or_csv.info.source).name
    elif isinstance(frames_or_csv, (str, os.PathLike)):
        times, series = _series_from_csv(Path(frames_or_csv).expanduser())
        name = Path(frames_or_csv).name
    elif isinstance(frames_or_csv, Iterable):
        times, series = _series_from_frames(frames_or_csv)
    else:
        raise InputError(
            f"plot_va needs frames, a VideoResult or a CSV path, got {type(frames_or_csv).__name__}"
        )
    series = {k: v for k, v in series.items() if not np.isnan(v).all()}
    if face_id is not None:
        if face_id not in series:
            raise InputError(
                f"no valence/arousal for face_id {face_id}; tracks with VA: {sorted(series)}"
            )
        series = {face_id: series[face_id]}
    if not series:
        raise InputError(
            "nothing to plot: no frame has a face with valence/arousal (no face found, or the "
            "model has no 'va' task)"
        )
    ranked = sorted(series, key=lambda k: (-int((~np.isnan(series[k][:, 0])).sum()), k))
    shown = sorted(ranked[: max(1, max_tracks)])

    figure = Figure(figsize=(10, 5), dpi=dpi, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(2, 1, sharex=True)
    for axis, column, label in ((axes[0], 0, "valence"), (axes[1], 1, "arousal")):
        for track in shown:
            axis.plot(times, series[track][:, column], linewidth=1.2, label=f"face {track}")
        axis.axhline(0.0, color="0.6", linewidth=0.8)
        axis.set_ylim(-1.05, 1.05)
        axis.set_ylabel(label)
        axis.grid(alpha=0.3)
    axes[1].set_xlabel("time (s)")
    if len(shown) > 1:
        axes[0].legend(loc="upper right", fontsize="small", ncol=min(4, len(shown)))
    figure.suptitle(title if title is not None else (name or "valence and arousal"))
    out = Path(path).expanduser()
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out)
    return out


def plot_timeline(
    result: VideoResult,
    path: str | os.PathLike[str],
    *,
    face_id: int | None = None,
    title: str | None = None,
    dpi: int = 100,
) -> Path:
    """Plot one face's predictions over time, for a model of any tasks: its expression
    probabilities (one line each), the action units active in each frame (a raster), and
    valence/arousal when the model predicts them.

    Args:
        result: A :class:`~affectfpn.video.VideoResult` (``analyze_video``).
        path: Output image; the format follows the extension (``.png``, ``.pdf``, ``.svg``...).
        face_id: The track to plot (default: the track seen in most frames).
        title: Figure title (default: the video's name and the track).
        dpi: Resolution of raster formats.

    Raises:
        MissingExtraError: matplotlib is not installed (``pip install 'affectfpn[plot]'``).
        InputError: no face in the video, or no such ``face_id``.
    """
    require_extra("matplotlib", "plot")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not isinstance(result, VideoResult):
        raise InputError(f"plot_timeline needs a VideoResult, got {type(result).__name__}")
    if result.face_id.size == 0:
        raise InputError(f"nothing to plot: no face was found in {result.info.source}")
    if face_id is None:
        ids, counts = np.unique(result.face_id, return_counts=True)
        face_id = int(ids[np.argmax(counts)])
    rows = np.flatnonzero(result.face_id == face_id)
    if rows.size == 0:
        raise InputError(f"no face_id {face_id}; the tracks are {list(result.track_ids)}")
    times = result.timestamp[result.face_frame[rows]]
    expression = result.expression[rows]
    aus = result.au[rows]
    va = result.va[rows]
    panels = [
        name
        for name, values in (("expression", expression), ("au", aus), ("va", va))
        if values.size and not np.isnan(values).all()
    ]
    if not panels:
        raise InputError(f"face {face_id} has no prediction to plot")
    heights = {"expression": 3.0, "au": 0.4 + 0.35 * max(len(result.action_units), 1), "va": 2.0}
    figure = Figure(
        figsize=(10, 1.2 + sum(heights[p] for p in panels)), dpi=dpi, layout="constrained"
    )
    FigureCanvasAgg(figure)
    axes = figure.subplots(
        len(panels), 1, sharex=True, squeeze=False, height_ratios=[heights[p] for p in panels]
    )[:, 0]
    for axis, panel in zip(axes, panels, strict=True):
        if panel == "expression":
            for column, name in enumerate(result.expressions):
                axis.plot(times, expression[:, column], linewidth=1.2, label=name)
            axis.set_ylim(-0.02, 1.02)
            axis.set_ylabel("probability")
            axis.legend(loc="upper right", fontsize="small", ncol=min(4, len(result.expressions)))
        elif panel == "au":
            active = aus >= result.au_threshold
            for column, _ in enumerate(result.action_units):
                on = times[active[:, column]]
                axis.plot(on, np.full(on.shape, column), "|", markersize=9, color="tab:blue")
            axis.set_yticks(range(len(result.action_units)), list(result.action_units))
            axis.set_ylim(-0.7, len(result.action_units) - 0.3)
            axis.set_ylabel(f"active (p >= {result.au_threshold:g})", fontsize="small")
        else:
            axis.plot(times, va[:, 0], linewidth=1.2, label="valence")
            axis.plot(times, va[:, 1], linewidth=1.2, label="arousal")
            axis.axhline(0.0, color="0.6", linewidth=0.8)
            axis.set_ylim(-1.05, 1.05)
            axis.legend(loc="upper right", fontsize="small")
        axis.grid(alpha=0.3)
    axes[-1].set_xlabel("time (s)")
    name = Path(result.info.source).name
    figure.suptitle(title if title is not None else f"{name}: face {face_id}")
    out = Path(path).expanduser()
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out)
    return out


def iterate(frames: object, what: str) -> Iterator[object]:
    """``iter(frames)``, or an :class:`InputError` naming ``what`` needs."""
    if isinstance(frames, (str, bytes, Mapping)) or not isinstance(frames, Iterable):
        raise InputError(
            f"{what} needs an iterable of frames from predict_video, got {type(frames).__name__}"
        )
    return iter(frames)
