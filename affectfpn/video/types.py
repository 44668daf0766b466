"""Plain data of video prediction: :class:`FramePrediction` and :class:`VideoInfo`.

Public through :mod:`affectfpn.video`; kept here so that the private video modules (reader,
tracker, smoothing, writers) can share them without importing the public module.
"""

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from affectfpn.errors import InputError
from affectfpn.inference.results import FacePrediction, ImagePrediction

__all__ = ["FramePrediction", "VideoInfo"]


@dataclass(frozen=True, kw_only=True)
class FramePrediction(ImagePrediction):
    """The faces of one video frame: an :class:`~affectfpn.inference.ImagePrediction` with the
    frame's index and time.

    Being an ``ImagePrediction``, a frame works wherever one does: ``len(frame)`` is its number
    of faces, ``frame[i]`` / ``for face in frame`` give the faces,
    :func:`~affectfpn.inference.to_rows` and :func:`~affectfpn.inference.draw` accept it. A frame
    where no face was found has ``faces == ()`` (and is falsy); it is still yielded, so results
    line up with the video. It never holds the image (see ``return_frames=True`` of
    :func:`~affectfpn.video.predict_video`). Build with keyword arguments.

    Attributes:
        source: ``"<video>#frame=<index>"``.
        width: Frame width in pixels.
        height: Frame height in pixels.
        faces: The faces, sorted by ``face_id``; each ``face_id`` is a track id that persists
            across frames while the face stays in view (see :class:`~affectfpn.video.FaceTracker`).
        index: 0-based index of the frame in the video (decoding order), also when frames are
            skipped by ``every_n`` / ``target_fps`` / ``start``.
        timestamp: Time of the frame in seconds, non-decreasing along the video: the container's
            presentation time (OpenCV ``CAP_PROP_POS_MSEC``) when it is reliable, else
            ``index / fps``.

    Raises:
        InputError: If a field is invalid (see ``ImagePrediction``; ``index`` must be an integer
            >= 0, ``timestamp`` a finite number).
    """

    index: int
    timestamp: float

    def __post_init__(self) -> None:
        super().__post_init__()
        index = self.index
        if isinstance(index, bool) or not hasattr(index, "__index__"):
            raise InputError(f"frame index must be an integer, got {index!r}")
        index = int(index.__index__())
        if index < 0:
            raise InputError(f"frame index must be >= 0, got {index}")
        try:
            timestamp = float(self.timestamp)
        except (TypeError, ValueError):
            raise InputError(
                f"timestamp must be a number of seconds, got {self.timestamp!r}"
            ) from None
        if isinstance(self.timestamp, bool) or not math.isfinite(timestamp):
            raise InputError(f"timestamp must be a finite number of seconds, got {timestamp!r}")
        object.__setattr__(self, "index", index)
        object.__setattr__(self, "timestamp", timestamp)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict: ``ImagePrediction.to_dict()`` plus ``index`` and
        ``timestamp``."""
        data = super().to_dict()
        data["index"] = self.index
        data["timestamp"] = self.timestamp
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "FramePrediction":
        """Rebuild from the output of :meth:`to_dict`."""
        if not isinstance(data, Mapping):
            raise InputError(f"FramePrediction.from_dict needs a mapping, got {type(data)}")
        missing = [k for k in ("source", "width", "height", "index", "timestamp") if k not in data]
        if missing:
            raise InputError(f"FramePrediction.from_dict: missing key(s) {missing}")
        faces = data.get("faces") or []
        return cls(
            source=data["source"],
            width=data["width"],
            height=data["height"],
            faces=tuple(FacePrediction.from_dict(face) for face in faces),
            index=data["index"],
            timestamp=data["timestamp"],
        )


@dataclass(frozen=True)
class VideoInfo:
    """What OpenCV reports about an opened video, before any frame is processed.

    Attributes:
        source: The video's name in results: the path as given, or ``"<capture>"`` for an
            already-open ``cv2.VideoCapture``.
        fps: Frames per second from the container, or ``None`` when it is unknown (some live
            streams).
        frame_count: Number of frames the container declares, or ``None`` when unknown
            (cameras, streams). A hint only: OpenCV may decode a few frames less (an MP4 edit
            list can hide frames at the start), so results can be fewer.
        width: Frame width in pixels (0 if the backend does not know it before the first frame).
        height: Frame height in pixels (0 if unknown before the first frame).
    """

    source: str
    fps: float | None
    frame_count: int | None
    width: int
    height: int

    @property
    def duration(self) -> float | None:
        """``frame_count / fps`` in seconds, or ``None`` when either is unknown."""
        if self.fps is None or self.frame_count is None:
            return None
        return self.frame_count / self.fps
