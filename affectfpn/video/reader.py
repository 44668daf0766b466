"""Read the selected frames of a video with OpenCV, one at a time (never the whole video).

:class:`VideoReader` opens a path (or takes an open ``cv2.VideoCapture``), then yields
:class:`Frame` records for the frames picked by ``every_n`` / ``target_fps`` / ``start`` /
``end``. Every frame is *grabbed* (demuxed and decoded) so that indices and timestamps stay
exact; only the selected ones are *retrieved* (converted to a BGR array), which is most of the
saving when frames are skipped.
"""

import logging
import math
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import cv2
import numpy as np

from affectfpn.errors import ConfigError, InputError
from affectfpn.video.types import VideoInfo

__all__ = ["CaptureLike", "Frame", "VideoReader", "is_capture"]

logger = logging.getLogger(__name__)

_CAPTURE_METHODS = ("grab", "retrieve", "get", "isOpened")
# Larger "fps" values are backend placeholders (some streams report 1000 or 90000).
_MAX_FPS = 500.0
# Grid tolerance of target_fps sampling, in seconds.
_EPS = 1e-6


@runtime_checkable
class CaptureLike(Protocol):
    """What :class:`VideoReader` uses of an OpenCV ``VideoCapture`` (any such object works)."""

    def grab(self) -> bool: ...

    def retrieve(self) -> tuple[bool, Any]: ...

    def get(self, prop: int) -> float: ...

    def isOpened(self) -> bool: ...


@dataclass
class Frame:
    """One selected frame: its index, its time in seconds and the decoded BGR image."""

    index: int
    timestamp: float
    bgr: np.ndarray


def is_capture(obj: object) -> bool:
    """Whether ``obj`` is (or behaves as) an OpenCV ``VideoCapture``."""
    if isinstance(obj, cv2.VideoCapture):
        return True
    return all(callable(getattr(obj, name, None)) for name in _CAPTURE_METHODS)


def _positive_int(name: str, value: object, *, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ConfigError(f"must be an integer >= {low}, got {value!r}", option=name)
    return int(value)


class VideoReader:
    """Open a video and iterate over its selected frames.

    Args:
        source: A video file path, a stream URL (anything with ``://``, opened by OpenCV), or an
            already-open ``cv2.VideoCapture`` (or an object with its ``grab``, ``retrieve``,
            ``get`` and ``isOpened`` methods). A capture given here is read from where it stands
            and left open; a path is opened here and released by :meth:`close`.
        every_n: Keep every n-th frame, counted from the first kept one.
        target_fps: Keep about this many frames per second of video time (the first frame at
            or after each multiple of ``1 / target_fps`` from the first frame); every frame
            when the video is slower. Exclusive with ``every_n > 1``.
        start: Index of the first frame to consider (frames before it are grabbed, not
            converted). ``None``: from the first.
        end: Index one past the last frame to consider (exclusive, as in ``range``); reading
            stops there. ``None``: to the end of the video.

    Raises:
        ConfigError: An option is invalid.
        InputError: The file does not exist or OpenCV cannot open it.
    """

    def __init__(
        self,
        source: object,
        *,
        every_n: int = 1,
        target_fps: float | None = None,
        start: int | None = None,
        end: int | None = None,
    ) -> None:
        self.every_n = _positive_int("every_n", every_n, low=1)
        if target_fps is not None:
            if isinstance(target_fps, bool) or not isinstance(target_fps, (int, float)):
                raise ConfigError(f"must be a number > 0, got {target_fps!r}", option="target_fps")
            if not math.isfinite(target_fps) or target_fps <= 0:
                raise ConfigError(f"must be a number > 0, got {target_fps!r}", option="target_fps")
            if self.every_n != 1:
                raise ConfigError(
                    f"every_n={every_n} and target_fps={target_fps} both pick frames; give one"
                )
        self.target_fps = None if target_fps is None else float(target_fps)
        for name, value in (("start", start), ("end", end)):
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, (int, np.integer))
            ):
                raise ConfigError(
                    "must be a frame index (int) or None; to start at t seconds pass "
                    "int(t * fps) (fps: VideoInfo.fps)",
                    option=name,
                    value=value,
                )
        self.start = 0 if start is None else _positive_int("start", start, low=0)
        self.end = None if end is None else _positive_int("end", end, low=0)
        if self.end is not None and self.end <= self.start:
            raise ConfigError(
                "must be greater than {start}",
                option="end",
                value=end,
                params={"start": self.start},
            )

        self._owns = False
        if isinstance(source, (str, os.PathLike)):
            text = os.fsdecode(os.fspath(source))
            if "://" not in text:
                path = Path(text).expanduser()
                if not path.is_file():
                    raise InputError(f"{text}: no such video file; check the path")
                text_open = str(path)
            else:
                text_open = text
            capture: Any = cv2.VideoCapture(text_open)
            if not capture.isOpened():
                capture.release()
                raise InputError(
                    f"{text}: OpenCV cannot open this video (not a video, or an unsupported "
                    "codec or container); convert it, e.g. ffmpeg -i in.ext -c:v libx264 out.mp4"
                )
            self._owns = True
            name = text
        elif is_capture(source):
            capture = source
            if not capture.isOpened():
                raise InputError(
                    "<capture>: the cv2.VideoCapture is not open (wrong camera index or URL?); "
                    "check cap.isOpened() before passing it"
                )
            name = "<capture>"
        else:
            raise InputError(
                f"<{type(source).__name__}>: a video source must be a file path, a stream URL or "
                "an open cv2.VideoCapture (for a camera: cv2.VideoCapture(0))"
            )
        self._capture = capture
        self._is_path = self._owns and "://" not in name
        fps = _get(capture, cv2.CAP_PROP_FPS)
        count = _get(capture, cv2.CAP_PROP_FRAME_COUNT)
        position = _get(capture, cv2.CAP_PROP_POS_FRAMES)
        self.info = VideoInfo(
            source=name,
            fps=fps if fps is not None and 0 < fps <= _MAX_FPS else None,
            frame_count=int(count) if count is not None and count >= 1 else None,
            width=int(_get(capture, cv2.CAP_PROP_FRAME_WIDTH) or 0),
            height=int(_get(capture, cv2.CAP_PROP_FRAME_HEIGHT) or 0),
        )
        #: Index the next grabbed frame gets: a capture passed in mid-way keeps its numbering.
        self._first_index = int(position) if position is not None and position >= 0 else 0
        #: Number of frames grabbed so far, and the index of the last one (-1: none yet).
        self.frames_read = 0
        self.last_index = -1
        self._closed = False

    # ------------------------------------------------------------------------------ iteration

    def __iter__(self) -> Iterator[Frame]:
        fps = self.info.fps
        index = self._first_index
        previous: float | None = None
        use_msec = True
        wall_start: float | None = None
        next_sample: float | None = None  # target_fps grid
        first_time: float | None = None
        anchor = max(self.start, index)  # every_n counts from the first frame considered
        capture = self._capture
        while not self._closed:
            if self.end is not None and index >= self.end:
                break
            if not capture.grab():
                break
            self.frames_read += 1
            self.last_index = index
            # --- timestamp: the container's time while it increases, else index / fps
            msec = _get(capture, cv2.CAP_PROP_POS_MSEC)
            stamp: float | None = None
            if use_msec and msec is not None and msec >= 0:
                candidate = msec / 1000.0
                if previous is None or candidate > previous:
                    stamp = candidate
            if stamp is None:
                if use_msec:
                    use_msec = False
                    logger.debug(
                        "%s: frame %d has no increasing CAP_PROP_POS_MSEC (%s); timestamps "
                        "from here on are index / fps",
                        self.info.source,
                        index,
                        msec,
                    )
                if fps is not None:
                    stamp = index / fps
                else:
                    now = time.monotonic()
                    wall_start = now if wall_start is None else wall_start
                    stamp = now - wall_start
                if previous is not None and stamp <= previous:
                    stamp = previous + (1.0 / fps if fps is not None else 1e-3)
            previous = stamp
            # --- selection
            if index >= self.start and self._selected(index - anchor, stamp, next_sample):
                if self.target_fps is not None:
                    first_time = stamp if first_time is None else first_time
                    step = math.floor((stamp - first_time) * self.target_fps + _EPS) + 1
                    next_sample = first_time + step / self.target_fps
                ok, bgr = capture.retrieve()
                if not ok or bgr is None:
                    logger.warning(
                        "%s: frame %d could not be decoded; skipped", self.info.source, index
                    )
                else:
                    yield Frame(index=index, timestamp=stamp, bgr=_as_bgr(bgr, self.info.source))
            index += 1
        if self.frames_read == 0 and self._is_path:
            raise InputError(
                f"{self.info.source}: OpenCV opened the file but could not decode any frame; "
                "re-encode it, e.g. ffmpeg -i in.ext -c:v libx264 out.mp4"
            )

    def _selected(self, offset: int, stamp: float, next_sample: float | None) -> bool:
        if self.target_fps is not None:
            return next_sample is None or stamp >= next_sample - _EPS
        return offset % self.every_n == 0

    def close(self) -> None:
        """Release the capture if it was opened here (a capture passed in is left open)."""
        self._closed = True
        if self._owns:
            self._capture.release()


def _get(capture: Any, prop: int) -> float | None:
    """A capture property as a finite float, or ``None``."""
    try:
        value = float(capture.get(prop))
    except (TypeError, ValueError, cv2.error):
        return None
    return value if math.isfinite(value) else None


def _as_bgr(image: np.ndarray, source: str) -> np.ndarray:
    """Frames as H x W x 3 uint8 BGR (grey or BGRA captures are converted)."""
    if image.dtype != np.uint8:
        raise InputError(f"{source}: frames of dtype {image.dtype} are not supported (need uint8)")
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    if image.ndim == 3 and image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    if image.ndim == 3 and image.shape[2] == 3:
        return image
    raise InputError(f"{source}: frames of shape {image.shape} are not images")
