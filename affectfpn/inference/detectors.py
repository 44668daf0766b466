"""Face detection: the :class:`FaceDetector` protocol, YuNet, a Haar cascade fallback.

Every detector takes an RGB ``uint8`` image and returns :class:`Detection` objects sorted by score,
best first; an image without a face gives an empty list. Any object with a matching ``detect``
method plugs in (see :class:`FaceDetector`).

YuNet weights: ``YuNetDetector(model_path=...)`` uses a local ONNX file; without one it uses the
file named by the environment variable ``AFFECTFPN_YUNET``, else the YuNet file embedded in the
package (MIT licence; provenance in ``affectfpn/inference/yunet/README.md``; its SHA-256 is checked
before first use), so detection needs no network. Another version, the Hub's
``face_detection_yunet_2023mar.onnx`` of ``opencv/face_detection_yunet`` at the pinned revision
``YUNET_REVISION``, is an opt-in download: :func:`download_yunet`, ``detector="yunet-hub"``.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import cv2
import numpy as np

from affectfpn.errors import (
    UNSET,
    AffectFPNError,
    ConfigError,
    Hint,
    InputError,
    OfflineError,
    WeightsError,
)
from affectfpn.io import array_to_rgb

__all__ = [
    "YUNET_ENV",
    "YUNET_FILENAME",
    "YUNET_REPO_ID",
    "YUNET_REVISION",
    "YUNET_SHA256",
    "Detection",
    "FaceDetector",
    "HaarDetector",
    "ShrinkingDetector",
    "YuNetDetector",
    "default_yunet",
    "download_yunet",
    "embedded_yunet",
    "get_detector",
]

logger = logging.getLogger(__name__)

#: Hugging Face Hub repository holding YuNet (OpenCV Zoo mirror, MIT licence).
YUNET_REPO_ID = "opencv/face_detection_yunet"
#: The ONNX file used from that repository.
YUNET_FILENAME = "face_detection_yunet_2023mar.onnx"
#: Pinned commit of ``YUNET_REPO_ID``; the file is never taken from a moving branch.
YUNET_REVISION = "3cc26e7f1014a5ee5d74a42acee58bafc9d0a310"
#: SHA-256 of ``YUNET_FILENAME`` at ``YUNET_REVISION`` (232,589 bytes), checked after download.
YUNET_SHA256 = "8f2383e4dd3cfbb4553ea8718107fc0423210dc964f9f4280604804ed2552fa4"
#: Environment variable naming a local YuNet ONNX file, used when no ``model_path`` is given.
YUNET_ENV = "AFFECTFPN_YUNET"
#: The YuNet file shipped inside the package (``affectfpn/inference/yunet/``), and its SHA-256.
EMBEDDED_YUNET_FILENAME = "face_detection_yunet.onnx"
EMBEDDED_YUNET_SHA256 = "ebafce4e3c118d6554634be5c27ab333b4c047a9a8c3faf1d7cf93101c22f0f0"

_MIN_CV2 = (4, 8)
_HAAR_FILENAME = "haarcascade_frontalface_default.xml"
_DETECTOR_NAMES = ("auto", "yunet", "yunet-hub", "haar")
_verified_downloads: set[str] = set()


# --------------------------------------------------------------------------- results


@dataclass(frozen=True, eq=False)
class Detection:
    """One detected face.

    Attributes:
        box: ``(x1, y1, x2, y2)`` in pixels of the image given to ``detect`` (x to the right,
            y down), ``x1 <= x2`` and ``y1 <= y2``.
        score: confidence, higher is better; the built-in detectors give values in (0, 1].
        landmarks: ``5 x 2`` float32 ``(x, y)`` points in YuNet's order, or ``None``: the
            subject's right eye, left eye, nose tip, right mouth corner, left mouth corner. For a
            frontal upright face the subject's right eye and mouth corner are on the image's
            *left* (smaller x). The array is read-only.
    """

    box: tuple[float, float, float, float]
    score: float
    landmarks: np.ndarray | None = None

    def __post_init__(self) -> None:
        try:
            box = tuple(float(v) for v in self.box)
        except (TypeError, ValueError) as exc:
            raise InputError(
                f"Detection.box must be 4 numbers (x1, y1, x2, y2), got {self.box!r}"
            ) from exc
        if len(box) != 4 or not all(math.isfinite(v) for v in box):
            raise InputError(f"Detection.box must be 4 finite numbers (x1, y1, x2, y2), got {box}")
        if box[2] < box[0] or box[3] < box[1]:
            raise InputError(f"Detection.box needs x1 <= x2 and y1 <= y2, got {box}")
        try:
            score = float(self.score)
        except (TypeError, ValueError) as exc:
            raise InputError(f"Detection.score must be a number, got {self.score!r}") from exc
        if not math.isfinite(score):
            raise InputError(f"Detection.score must be finite, got {score}")
        landmarks = self.landmarks
        if landmarks is not None:
            landmarks = np.array(landmarks, dtype=np.float32)
            if landmarks.shape != (5, 2) or not np.isfinite(landmarks).all():
                raise InputError(
                    "Detection.landmarks must be a finite 5 x 2 array (right eye, left eye, nose "
                    f"tip, right mouth corner, left mouth corner), got shape {landmarks.shape}"
                )
            landmarks.setflags(write=False)
        object.__setattr__(self, "box", box)
        object.__setattr__(self, "score", score)
        object.__setattr__(self, "landmarks", landmarks)

    @property
    def width(self) -> float:
        """Box width in pixels."""
        return self.box[2] - self.box[0]

    @property
    def height(self) -> float:
        """Box height in pixels."""
        return self.box[3] - self.box[1]

    @property
    def center(self) -> tuple[float, float]:
        """Box centre ``(x, y)``."""
        return ((self.box[0] + self.box[2]) / 2, (self.box[1] + self.box[3]) / 2)

    def to_dict(self) -> dict[str, Any]:
        """Plain-Python form (lists and floats), e.g. for JSON."""
        return {
            "box": list(self.box),
            "score": self.score,
            "landmarks": None if self.landmarks is None else self.landmarks.tolist(),
        }

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Detection):
            return NotImplemented
        if self.box != other.box or self.score != other.score:
            return False
        if self.landmarks is None or other.landmarks is None:
            return self.landmarks is None and other.landmarks is None
        return bool(np.array_equal(self.landmarks, other.landmarks))

    def __hash__(self) -> int:
        return hash((self.box, self.score))


@runtime_checkable
class FaceDetector(Protocol):
    """Anything with ``detect(rgb) -> list[Detection]`` is a face detector.

    ``rgb`` is an ``H x W x 3`` ``uint8`` RGB array; the result is sorted by score, best first,
    and is empty when there is no face.
    """

    def detect(self, rgb: np.ndarray) -> list[Detection]:
        """Find the faces in ``rgb``."""
        ...


@runtime_checkable
class ShrinkingDetector(FaceDetector, Protocol):
    """A detector that shrinks large images itself, and says by how much beforehand.

    The Predictor then decodes a large JPEG at (up to) that fraction of its size straight away,
    and passes what remains of the factor to ``detect``. :class:`YuNetDetector` is one.
    """

    def scale_for(self, width: int, height: int) -> float:
        """The factor (<= 1) by which an image of this size is shrunk before detection."""
        ...

    def detect(self, rgb: np.ndarray, *, shrink: float | None = None) -> list[Detection]:
        """Find the faces in ``rgb``, shrunk by ``shrink`` (default ``scale_for`` its size)."""
        ...


# --------------------------------------------------------------------------- helpers


def _cv2_version() -> tuple[int, int]:
    match = re.match(r"(\d+)\.(\d+)", cv2.__version__)
    if match is None:
        return (0, 0)
    return (int(match.group(1)), int(match.group(2)))


def _require_cv2_for_yunet() -> None:
    if _cv2_version() < _MIN_CV2 or not hasattr(cv2, "FaceDetectorYN"):
        raise AffectFPNError(
            f"YuNet needs OpenCV >= {_MIN_CV2[0]}.{_MIN_CV2[1]} with cv2.FaceDetectorYN, found "
            f"OpenCV {cv2.__version__}: pip install -U 'opencv-python>=4.8' (or use "
            "detector='haar')"
        )


_log_level_lock = threading.Lock()


@contextmanager
def _quiet_opencv() -> Iterator[None]:
    """Hide OpenCV's warnings for the duration (OpenCV 5 warns on every YuNet load that its new
    graph engine ignores the compute target: nothing a user can act on). Errors still show."""
    logging_api = getattr(getattr(cv2, "utils", None), "logging", None)
    if logging_api is None:
        yield
        return
    with _log_level_lock:
        previous = logging_api.getLogLevel()
        logging_api.setLogLevel(min(previous, logging_api.LOG_LEVEL_ERROR))
        try:
            yield
        finally:
            logging_api.setLogLevel(previous)


def _as_rgb(image: np.ndarray) -> np.ndarray:
    """Accept RGB uint8 as is, anything else :func:`array_to_rgb` accepts after conversion."""
    if (
        isinstance(image, np.ndarray)
        and image.dtype == np.uint8
        and image.ndim == 3
        and image.shape[2] == 3
        and image.size > 0
    ):
        return image
    return array_to_rgb(image, source="<detector input>")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


#: How to name another YuNet file, for error messages: pass ``detector=`` a file.
_YUNET_FIX = Hint(
    "detector",
    "path/to/face_detection_yunet.onnx",
    f"to use a copy you trust, or set {YUNET_ENV}=<path>",
)


def _verify_download(path: Path) -> Path:
    key = str(path)
    if key not in _verified_downloads:
        actual = _sha256(path)
        if actual != YUNET_SHA256:
            raise WeightsError(
                f"{path}: SHA-256 {actual} does not match the pinned YuNet file "
                f"({YUNET_REPO_ID}@{YUNET_REVISION}, {YUNET_SHA256}); delete the file to "
                "download it again",
                hint=_YUNET_FIX,
            )
        _verified_downloads.add(key)
    return path


def embedded_yunet() -> Path:
    """The YuNet file shipped inside the package, after checking its SHA-256 (once a process).

    Raises:
        WeightsError: the file is missing or altered (reinstall affectfpn).
    """
    from importlib import resources

    path = Path(str(resources.files("affectfpn") / "inference" / "yunet" / EMBEDDED_YUNET_FILENAME))
    key = str(path)
    if key not in _verified_downloads:
        if not path.is_file():
            raise WeightsError(
                f"the embedded YuNet detector {path} is missing: reinstall affectfpn",
                hint=_YUNET_FIX,
            )
        actual = _sha256(path)
        if actual != EMBEDDED_YUNET_SHA256:
            raise WeightsError(
                f"the embedded YuNet detector {path} has SHA-256 {actual}, expected "
                f"{EMBEDDED_YUNET_SHA256}: the installation is damaged; reinstall affectfpn",
                hint=_YUNET_FIX,
            )
        _verified_downloads.add(key)
    return path


def _env_yunet() -> Path | None:
    """The file named by ``AFFECTFPN_YUNET``, or ``None`` when the variable is unset."""
    env = os.environ.get(YUNET_ENV, "").strip()
    if not env:
        return None
    path = Path(env).expanduser()
    if not path.is_file():
        raise WeightsError(
            f"{YUNET_ENV}={env!r} names no file; point it at a YuNet .onnx file or unset it"
        )
    return path


def default_yunet() -> Path:
    """The YuNet file used when none is named: ``AFFECTFPN_YUNET``, else the embedded one."""
    return _env_yunet() or embedded_yunet()


def _local_yunet() -> Path | None:
    """The Hub's YuNet available without network: ``AFFECTFPN_YUNET``, else the Hub cache."""
    env = _env_yunet()
    if env is not None:
        return env
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(YUNET_REPO_ID, YUNET_FILENAME, revision=YUNET_REVISION)
    if isinstance(cached, str):
        return _verify_download(Path(cached))
    return None


def download_yunet() -> Path:
    """Return the local path of the Hub's pinned YuNet file, downloading it once if needed.

    An opt-in: detection uses the embedded YuNet unless told otherwise (``detector="yunet-hub"``
    uses this file). ``AFFECTFPN_YUNET`` wins when set. The download goes to the
    ``huggingface_hub`` cache and its SHA-256 is checked.

    Raises:
        OfflineError: no network (or offline mode) and nothing cached.
        WeightsError: the repository, revision or file is gone, or the checksum differs.
    """
    local = _local_yunet()
    if local is not None:
        return local
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    where = f"{YUNET_FILENAME} from the Hugging Face Hub repo {YUNET_REPO_ID}@{YUNET_REVISION}"
    fix = "download it once while online (download_yunet())"
    hint = (Hint("detector", "yunet", "for the embedded YuNet (the default)"), _YUNET_FIX)
    from affectfpn._network import hub_unreachable

    reason = hub_unreachable()
    if reason is not None:
        raise OfflineError(
            f"cannot download {where}: {reason} and it is not cached; {fix}", hint=hint
        )
    try:
        path = hf_hub_download(
            YUNET_REPO_ID, YUNET_FILENAME, revision=YUNET_REVISION, library_name="affectfpn"
        )
    except LocalEntryNotFoundError as exc:  # network failure or HF_HUB_OFFLINE, nothing cached
        raise OfflineError(
            f"cannot download {where}: offline and not cached; {fix}", hint=hint
        ) from exc
    except (RepositoryNotFoundError, RevisionNotFoundError, EntryNotFoundError) as exc:
        raise WeightsError(f"cannot download {where}: {exc}; {fix}", hint=hint) from exc
    except Exception as exc:  # connection resets, proxies, timeouts, HTTP 5xx
        raise OfflineError(
            f"cannot download {where} ({type(exc).__name__}: {exc}); {fix}", hint=hint
        ) from exc
    return _verify_download(Path(path))


# --------------------------------------------------------------------------- YuNet


#: The smallest face (shorter box side, in pixels at the network's input) that YuNet finds
#: reliably: its finest anchors are 10-16 pixels on a stride-8 map.
YUNET_MIN_FACE = 16.0
#: The smallest face (pixels of the input image) that YuNetDetector keeps findable by default.
DEFAULT_MIN_FACE = 32.0


class YuNetDetector:
    """YuNet face detector (OpenCV ``FaceDetectorYN``), with 5 landmarks per face.

    Images are downscaled (area interpolation) before detection, and boxes and landmarks are
    mapped back to the input's pixels: to at most ``max_side`` pixels on the longer side (YuNet
    misses large faces in big photos at full size), and further so that a face of ``min_face``
    pixels still measures :data:`YUNET_MIN_FACE` pixels at the network's input, the smallest
    face YuNet finds reliably. The network's cost grows with the pixels it sees, so the default
    ``min_face=32`` runs it on a quarter of the pixels of a frame: faces smaller than about 32
    pixels (in the input image) may be missed, and are too small for the expression models'
    48-pixel crops anyway. Pass ``min_face=None`` to detect at full size (up to ``max_side``).
    Detection is serialised with a lock, since the OpenCV object is resized per image; one
    instance may be shared by threads.

    Args:
        model_path: a local YuNet ``.onnx`` file. ``None``: ``$AFFECTFPN_YUNET``, else the YuNet
            file embedded in the package (no network; the Hub's pinned version is
            ``YuNetDetector(download_yunet())``).
        score_threshold: drop faces scoring lower (0..1).
        nms_threshold: IoU above which overlapping boxes are merged (0..1).
        top_k: keep at most this many candidates before non-maximum suppression.
        max_side: longest image side fed to the network; ``None``: no such limit.
        min_face: the smallest face (shorter box side, in input pixels) to keep findable; the
            image is downscaled as far as that allows. ``None``: no downscaling for it.

    Raises:
        AffectFPNError: OpenCV older than 4.8.
        ConfigError: an argument out of range.
        WeightsError: the model file is missing or OpenCV cannot load it.
    """

    def __init__(
        self,
        model_path: str | os.PathLike[str] | None = None,
        *,
        score_threshold: float = 0.6,
        nms_threshold: float = 0.3,
        top_k: int = 5000,
        max_side: int | None = 640,
        min_face: float | None = DEFAULT_MIN_FACE,
    ) -> None:
        _require_cv2_for_yunet()
        if not 0.0 <= score_threshold <= 1.0:
            raise ConfigError(f"score_threshold must be in [0, 1], got {score_threshold}")
        if not 0.0 < nms_threshold <= 1.0:
            raise ConfigError(f"nms_threshold must be in (0, 1], got {nms_threshold}")
        if top_k < 1:
            raise ConfigError(f"top_k must be >= 1, got {top_k}")
        if max_side is not None and max_side < 32:
            raise ConfigError(f"max_side must be >= 32 pixels or None, got {max_side}")
        if min_face is not None and not (
            isinstance(min_face, int | float) and not isinstance(min_face, bool) and min_face > 0
        ):
            raise ConfigError(
                f"must be a positive number of pixels or None, got {min_face!r}", option="min_face"
            )
        if model_path is not None:
            path = Path(model_path).expanduser()
            if not path.is_file():
                raise WeightsError(
                    f"{path}: no such YuNet model file",
                    hint=Hint(
                        "model_path",
                        UNSET,
                        "the path of a YuNet .onnx file (e.g. face_detection_yunet_2023mar.onnx), "
                        "or None for the embedded one",
                    ),
                )
        else:
            path = default_yunet()
        self.model_path = path
        self.score_threshold = float(score_threshold)
        self.nms_threshold = float(nms_threshold)
        self.top_k = int(top_k)
        self.max_side = max_side
        self.min_face = None if min_face is None else float(min_face)
        self._lock = threading.Lock()
        self._net = self._load()
        logger.info("YuNet face detector loaded from %s", path)

    def _load(self) -> Any:
        try:
            with _quiet_opencv():
                return cv2.FaceDetectorYN.create(
                    str(self.model_path),
                    "",
                    (320, 320),
                    self.score_threshold,
                    self.nms_threshold,
                    self.top_k,
                )
        except cv2.error as exc:
            raise WeightsError(
                f"{self.model_path}: OpenCV {cv2.__version__} cannot load this file as a YuNet "
                f"model ({str(exc).strip()}); pass a YuNet .onnx file such as {YUNET_FILENAME}"
            ) from exc

    def __getstate__(self) -> dict[str, Any]:
        # The OpenCV object and the lock cannot be pickled: rebuilt from the file on unpickling
        # (e.g. in DataLoader workers).
        return {k: v for k, v in self.__dict__.items() if k not in ("_net", "_lock")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()
        self._net = self._load()

    def __repr__(self) -> str:
        return (
            f"YuNetDetector(model_path={str(self.model_path)!r}, "
            f"score_threshold={self.score_threshold}, nms_threshold={self.nms_threshold}, "
            f"top_k={self.top_k}, max_side={self.max_side}, min_face={self.min_face})"
        )

    def scale_for(self, width: int, height: int) -> float:
        """The factor (<= 1) by which an image of this size is shrunk before detection."""
        factor = 1.0
        if self.max_side is not None and max(width, height) > self.max_side:
            factor = self.max_side / max(width, height)
        if self.min_face is not None:
            factor = min(factor, YUNET_MIN_FACE / self.min_face)
        return factor

    def detect(self, rgb: np.ndarray, *, shrink: float | None = None) -> list[Detection]:
        """Detect faces.

        Args:
            rgb: ``H x W x 3`` ``uint8`` RGB image (grey, RGBA and other arrays that
                :func:`~affectfpn.io.array_to_rgb` accepts are converted).
            shrink: the factor (<= 1) by which to shrink ``rgb`` for the network; default
                :meth:`scale_for` of its size. A caller that already holds the image reduced
                (e.g. a JPEG decoded at 1/4 of its size) passes what is left of the full
                image's factor, so that ``min_face`` keeps counting full-size pixels.

        Returns:
            Detections in ``rgb``'s pixel coordinates, best score first; boxes are clipped to
            the image.
        """
        image = _as_rgb(rgb)
        height, width = image.shape[:2]
        net_w, net_h = width, height
        if shrink is None:
            factor = self.scale_for(width, height)
        elif not (0.0 < shrink <= 1.0):
            raise InputError(f"YuNetDetector.detect: shrink must be in (0, 1], got {shrink!r}")
        else:
            factor = shrink
        covered_w, covered_h = width, height  # the part of the image the network sees
        if factor < 1.0:
            net_w = max(1, round(width * factor))
            net_h = max(1, round(height * factor))
            image, covered_w, covered_h = _area_shrink(image, net_w, net_h)
        bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
        with self._lock:
            self._net.setInputSize((net_w, net_h))
            _, faces = self._net.detect(bgr)
        if faces is None or len(faces) == 0:
            return []
        sx, sy = covered_w / net_w, covered_h / net_h
        detections = []
        for row in np.asarray(faces, dtype=np.float64):
            x, y, w, h = row[0:4]
            x1 = min(max(x * sx, 0.0), float(width))
            y1 = min(max(y * sy, 0.0), float(height))
            x2 = min(max((x + w) * sx, 0.0), float(width))
            y2 = min(max((y + h) * sy, 0.0), float(height))
            if x2 <= x1 or y2 <= y1:
                continue
            landmarks = row[4:14].reshape(5, 2) * (sx, sy)
            detections.append(
                Detection(box=(x1, y1, x2, y2), score=float(row[14]), landmarks=landmarks)
            )
        detections.sort(key=lambda d: d.score, reverse=True)
        return detections


def _area_shrink(image: np.ndarray, width: int, height: int) -> tuple[np.ndarray, int, int]:
    """``image`` shrunk to ``width x height`` by area averaging.

    OpenCV averages whole ``k x k`` blocks several times faster than it resamples by a
    fractional factor (4.5 against 8.2 ms from 1524 x 1036 to 640 x 435 on one core), so a large
    shrink first averages whole blocks, then resamples the rest (a factor between 1/2 and 1).
    The image's last ``< k`` columns and rows are dropped for the block step: returned are the
    result and the width and height of the part of ``image`` it covers.
    """
    full_h, full_w = image.shape[:2]
    k = min(full_w // width, full_h // height)
    if k < 2:
        return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA), full_w, full_h
    covered_w, covered_h = full_w - full_w % k, full_h - full_h % k
    blocks = cv2.resize(
        image[:covered_h, :covered_w],
        (covered_w // k, covered_h // k),
        interpolation=cv2.INTER_AREA,
    )
    if blocks.shape[:2] != (height, width):
        blocks = cv2.resize(blocks, (width, height), interpolation=cv2.INTER_AREA)
    return blocks, covered_w, covered_h


# --------------------------------------------------------------------------- Haar


def _cascade_class() -> Any:
    cls = getattr(cv2, "CascadeClassifier", None)
    if cls is None:
        raise AffectFPNError(
            f"this OpenCV build ({cv2.__version__}) has no Haar cascades (cv2.CascadeClassifier "
            "is gone from OpenCV 5); use the YuNet detector, or install 'opencv-python<5' for Haar"
        )
    return cls


def _default_cascade() -> Path:
    data = getattr(cv2, "data", None)
    folder = getattr(data, "haarcascades", None)
    if not folder or not Path(folder, _HAAR_FILENAME).is_file():
        raise AffectFPNError(
            f"this OpenCV build ({cv2.__version__}) ships no {_HAAR_FILENAME} "
            "(cv2.data.haarcascades)",
            hint=Hint("cascade_path", UNSET, "a copy of it, or use the YuNet detector"),
        )
    return Path(folder, _HAAR_FILENAME)


class HaarDetector:
    """OpenCV Haar cascade frontal-face detector: the fallback when YuNet is unavailable.

    It finds upright frontal faces only and gives no landmarks (alignment falls back to a box
    crop). Scores come from ``detectMultiScale3(..., outputRejectLevels=True)``: the level
    weight ``w`` of each face (the margin of the cascade's last stage) squashed by the logistic
    function, ``1 / (1 + exp(-w))``; where OpenCV returns no weights the score is 1.0.

    Args:
        scale_factor: image pyramid step (> 1).
        min_neighbors: overlapping candidates needed to keep a face (higher: fewer false faces).
        min_size: smallest face ``(width, height)`` in pixels.
        cascade_path: cascade XML file; default ``cv2.data.haarcascades`` +
            ``haarcascade_frontalface_default.xml``.

    Raises:
        AffectFPNError: the installed OpenCV has no Haar support (OpenCV 5 dropped
            ``cv2.CascadeClassifier``), has no cascade file and none was given, or the file does
            not load.
    """

    def __init__(
        self,
        scale_factor: float = 1.1,
        min_neighbors: int = 5,
        min_size: tuple[int, int] = (30, 30),
        *,
        cascade_path: str | os.PathLike[str] | None = None,
    ) -> None:
        if scale_factor <= 1.0:
            raise ConfigError(f"scale_factor must be > 1, got {scale_factor}")
        if min_neighbors < 0:
            raise ConfigError(f"min_neighbors must be >= 0, got {min_neighbors}")
        cascade_class = _cascade_class()
        path = _default_cascade() if cascade_path is None else Path(cascade_path).expanduser()
        cascade = cascade_class(str(path)) if path.is_file() else None
        if cascade is None or cascade.empty():
            raise AffectFPNError(
                f"{path}: cannot load the Haar cascade",
                hint=Hint("cascade_path", UNSET, f"an OpenCV cascade XML such as {_HAAR_FILENAME}"),
            )
        self.cascade_path = path
        self.scale_factor = float(scale_factor)
        self.min_neighbors = int(min_neighbors)
        self.min_size = (int(min_size[0]), int(min_size[1]))
        self._cascade = cascade
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k not in ("_cascade", "_lock")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()
        self._cascade = _cascade_class()(str(self.cascade_path))

    def __repr__(self) -> str:
        return (
            f"HaarDetector(scale_factor={self.scale_factor}, min_neighbors={self.min_neighbors}, "
            f"min_size={self.min_size}, cascade_path={str(self.cascade_path)!r})"
        )

    def detect(self, rgb: np.ndarray) -> list[Detection]:
        """Detect faces (see the class docs for the score); landmarks are ``None``."""
        image = _as_rgb(rgb)
        grey = cv2.equalizeHist(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY))
        with self._lock:
            result = self._cascade.detectMultiScale3(
                grey,
                scaleFactor=self.scale_factor,
                minNeighbors=self.min_neighbors,
                minSize=self.min_size,
                outputRejectLevels=True,
            )
        rects, _levels, weights = result
        rects = np.asarray(rects, dtype=np.float64).reshape(-1, 4)
        weights = np.asarray(weights, dtype=np.float64).reshape(-1)
        detections = []
        for i, (x, y, w, h) in enumerate(rects):
            score = 1.0 / (1.0 + math.exp(-weights[i])) if i < len(weights) else 1.0
            detections.append(Detection(box=(x, y, x + w, y + h), score=score))
        detections.sort(key=lambda d: d.score, reverse=True)
        return detections


# --------------------------------------------------------------------------- factory


def get_detector(
    spec: object = "auto", *, min_face: float | None = DEFAULT_MIN_FACE
) -> FaceDetector:
    """Build a face detector from a name, a model path, or return a detector object as is.

    Args:
        spec: ``"yunet"`` (``$AFFECTFPN_YUNET``, else the embedded YuNet), ``"yunet-hub"`` (the
            Hub's pinned YuNet, downloaded once), ``"haar"`` (OpenCV cascade), ``"auto"`` (YuNet
            as ``"yunet"``; the Haar cascade only where this OpenCV cannot run YuNet; the choice
            is logged), a path ending in ``.onnx`` (YuNet from that file), or any object with a
            ``detect(rgb) -> list[Detection]`` method.
        min_face: the YuNet detector's ``min_face`` (a name or a file that builds one);
            another value than the default is refused for ``"haar"``.

    Raises:
        ConfigError: ``spec`` is none of these, or ``min_face`` with the Haar cascade.
        OfflineError / WeightsError / AffectFPNError: the chosen detector cannot be built.
    """
    if isinstance(spec, (str, os.PathLike)):
        text = os.fsdecode(os.fspath(spec))
        key = text.strip().lower()
        if key == "yunet":
            return YuNetDetector(min_face=min_face)
        if key == "yunet-hub":
            return YuNetDetector(download_yunet(), min_face=min_face)
        if key == "haar":
            if min_face != DEFAULT_MIN_FACE:
                raise ConfigError(
                    "applies to the YuNet detector, not to {detector}",
                    option="min_face",
                    params={"detector": text},
                )
            return HaarDetector()
        if key == "auto":
            return _auto_detector(min_face)
        if key.endswith(".onnx"):
            return YuNetDetector(text, min_face=min_face)
    elif not isinstance(spec, type) and isinstance(spec, FaceDetector):
        return spec
    names = ", ".join(repr(n) for n in _DETECTOR_NAMES)
    raise ConfigError(
        f"unknown face detector {spec!r}; use one of {names}, a path to a YuNet .onnx file, "
        "or an object with a detect(rgb) -> list[Detection] method"
    )


def _auto_detector(min_face: float | None = DEFAULT_MIN_FACE) -> FaceDetector:
    try:
        detector = YuNetDetector(min_face=min_face)
    except AffectFPNError as yunet_error:  # old OpenCV, a damaged file
        try:
            haar = HaarDetector()
        except AffectFPNError as haar_error:
            raise type(yunet_error)(
                f"{yunet_error} (the Haar fallback is unavailable too: {haar_error})"
            ) from yunet_error
        logger.warning("face detector: Haar cascade, since YuNet is unavailable (%s)", yunet_error)
        return haar
    logger.info("face detector: YuNet from %s", detector.model_path)
    return detector
