"""Predict affect for faces in images: :func:`predict`, :func:`predict_iter`, :class:`Predictor`.

The pipeline, per input image:

1. decode it to RGB ``uint8`` (:func:`~affectfpn.io.load_image`: paths, bytes, PIL
   images, numpy arrays, torch tensors, ...);
2. ``faces="detect"``: find every face with a detector and align each one at the model's
   ``config.input_size`` (:func:`~affectfpn.inference.align.align_face`: on the 5 landmarks when
   the detector gives them, a square box crop otherwise). ``faces="crop"``: the image already is
   a face crop and is resized as a whole (:func:`affectfpn.preprocess.resize_face`, as in
   training);
3. the aligned faces of several images are stacked into batches of ``batch_size`` faces, moved
   to the device as ``uint8`` and normalised there (:func:`affectfpn.preprocess.normalize`);
4. the model's outputs become typed results: valence/arousal (already tanh'd, clamped to
   [-1, 1]), expression probabilities (softmax) and action-unit probabilities (sigmoid, active
   when >= ``au_threshold``), one :class:`~affectfpn.inference.results.FacePrediction` per face
   and one :class:`~affectfpn.inference.results.ImagePrediction` per image, in input order.

Steps 1-2 run in a small thread pool (OpenCV and Pillow release the GIL) that prepares the next
images while the model computes; a bounded window of images in flight keeps memory constant, so
a generator of any length can be streamed through :func:`predict_iter`.
"""

from __future__ import annotations

import glob
import itertools
import logging
import os
import sys
import threading
import weakref
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TypedDict, TypeVar, overload

import numpy as np
import torch
from PIL import Image
from torch import nn
from tqdm import tqdm
from typing_extensions import Unpack

from affectfpn._device import amp_dtype, amp_mode, autocast, resolve_device
from affectfpn.config import AffectFPNConfig
from affectfpn.errors import ConfigError, InferenceError, InputError
from affectfpn.inference.align import alignment_scale, alignment_transform, warp_face
from affectfpn.inference.detectors import (
    Detection,
    FaceDetector,
    HaarDetector,
    ShrinkingDetector,
    YuNetDetector,
    get_detector,
)
from affectfpn.inference.results import (
    FACE_FIELDS,
    FacePrediction,
    ImagePrediction,
    LabelNames,
    _trusted,
)
from affectfpn.io import (
    LoadedImage,
    has_glob_chars,
    is_image_path,
    iter_sources,
    list_images,
    load_image,
)
from affectfpn.preprocess import normalize, resize_face

__all__ = ["FACE_MODES", "ON_ERROR", "FaceCrops", "Predictor", "predict", "predict_iter"]

logger = logging.getLogger(__name__)

#: Values of the ``faces=`` option.
FACE_MODES: tuple[str, ...] = ("detect", "crop")
#: A face is cut from a JPEG decoded at a reduced size (for the detector) only where that image
#: still has at least 1 / this many times the crop's pixels per side, so that the warp shrinks
#: it by area averaging (align's prefilter) and the reduced decode's own filter, sharper than
#: the training resize, does not show in the crop; else the full image is decoded. At 1.0 (the
#: reduced image merely not smaller than the crop) lfw-expressions val photos (192 px JPEGs,
#: decoded at half size) read 0.801 through predict, against 0.870 at this value and 0.869 from
#: the full image.
_REDUCED_WARP_LIMIT = 0.5
#: Values of the ``on_error=`` option.
ON_ERROR: tuple[str, ...] = ("raise", "skip")

#: Each model's BatchNorm-folded copy and the signature of the tensors it was folded from.
_FUSED: weakref.WeakKeyDictionary[nn.Module, tuple[tuple[Any, ...], nn.Module]] = (
    weakref.WeakKeyDictionary()
)

# Serialises the one-time preparation of a model (device move, channels_last) across threads.
_MODEL_LOCK = threading.Lock()

_T = TypeVar("_T")
_R = TypeVar("_R")


# --------------------------------------------------------------------------- internal records


@dataclass(slots=True)
class _Prepared:
    """One decoded image, reduced to what the model needs: its aligned faces."""

    source: str
    width: int
    height: int
    crops: np.ndarray  # k x H x W x 3 uint8, k = number of faces (0 allowed)
    detections: list[Detection] | None  # None in crop mode


@dataclass(frozen=True, slots=True)
class FaceCrops:
    """The faces of one input as the model sees them (:meth:`Predictor.face_crops`).

    Attributes:
        source: The input's name (a path's string, ``"<array 0>"``, ...).
        width: The image's full width in pixels.
        height: The image's full height in pixels.
        crops: ``k x H x W x 3`` ``uint8`` RGB faces at the model's ``input_size``, aligned as
            ``predict`` aligns them (``k = 0`` for an image without a face).
        boxes: ``k`` face boxes ``(x1, y1, x2, y2)`` in the full image's pixels, best detector
            score first (crop mode: the whole image).
        scores: The ``k`` detector scores (crop mode: ``None``).
    """

    source: str
    width: int
    height: int
    crops: np.ndarray
    boxes: tuple[tuple[float, float, float, float], ...]
    scores: tuple[float | None, ...]


@dataclass(slots=True)
class _Failed:
    """An input that could not be read (kept in order, handled by ``on_error``)."""

    source: str
    error: InputError


@dataclass(slots=True)
class _Pending:
    """An image whose faces are (partly) waiting for the model.

    ``rows`` has, per face, one row of numbers per face field of ``FACE_FIELDS`` in its order
    (``None`` for a field whose output the model lacks); empty until the face's batch ran.
    """

    prepared: _Prepared
    rows: list[tuple[list[float] | None, ...]] = field(default_factory=list)
    remaining: int = 0


# --------------------------------------------------------------------------- helpers


def _scaled(detection: Detection, factor: int, full_size: tuple[int, int]) -> Detection:
    """A detection on an image reduced by ``factor``, in the full image's pixels."""
    width, height = full_size
    x1, y1, x2, y2 = detection.box
    box = (
        min(x1 * factor, width),
        min(y1 * factor, height),
        min(x2 * factor, width),
        min(y2 * factor, height),
    )
    landmarks = None if detection.landmarks is None else detection.landmarks * factor
    return Detection(box=box, score=detection.score, landmarks=landmarks)


def _check_choice(name: str, value: object, choices: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise ConfigError(
            f"is not valid; use one of {', '.join(repr(c) for c in choices)}",
            option=name,
            value=value,
        )
    return value


def _check_positive_int(name: str, value: object, *, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"must be an integer >= {low}, got {value!r}", option=name)
    return value


def _available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        return os.cpu_count() or 1


def _default_workers(device: torch.device) -> int:
    """Loader threads by default: at most 4, and only where they have a core of their own.

    With the model on an accelerator the CPU is free while it runs: half the usable cores (at
    least one). On the CPU, torch's own threads already use the cores it was given: only the
    cores left over (``torch.set_num_threads`` below the core count) get loader threads.
    Measured on 2 cores with torch's 2 threads, one loader thread made video 14% slower and
    photos no faster: a loader thread there only interrupts the model's threads.
    """
    cores = _available_cores()
    if device.type != "cpu":
        return min(4, max(1, cores // 2))
    return min(4, max(0, cores - torch.get_num_threads()))


def _model_device(model: nn.Module) -> torch.device:
    for tensor in model.parameters():
        return tensor.device
    for buffer in model.buffers():
        return buffer.device
    return torch.device("cpu")


def _same_device(a: torch.device, b: torch.device) -> bool:
    def norm(d: torch.device) -> tuple[str, int]:
        if d.type == "cuda" and d.index is None:
            return ("cuda", torch.cuda.current_device())
        return (d.type, 0 if d.index is None else d.index)

    return norm(a) == norm(b)


def _module_tensors(model: nn.Module) -> list[torch.Tensor]:
    """Every parameter and buffer of ``model`` and its submodules, in a fixed order.

    What ``[*model.parameters(), *model.buffers()]`` holds (a shared tensor may come twice), at
    a third of the cost: those build a qualified name for every tensor (0.17 ms for a
    ResNet-18 FPN, paid by every ``predict`` call).
    """
    found: list[torch.Tensor | None] = []
    modules: list[nn.Module | None] = [model]
    for module in modules:  # grows while it is walked: every submodule once per reference
        if module is not None:
            found += module._parameters.values()
            found += module._buffers.values()
            modules += module._modules.values()
    return [t for t in found if t is not None]


def _wants_channels_last(device: torch.device) -> bool:
    """Whether convolutions run faster in channels_last on ``device`` (measured: CUDA and CPU)."""
    return device.type in ("cuda", "cpu")


def _is_channels_last(model: nn.Module) -> bool:
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            return module.weight.is_contiguous(memory_format=torch.channels_last)
    return True


def _is_glob(text: str) -> bool:
    return not Path(text).expanduser().exists() and has_glob_chars(text)


def _is_single(inputs: object) -> bool:
    """Whether ``inputs`` is one image (``predict`` then returns one result, not a list)."""
    if isinstance(inputs, (str, os.PathLike)):
        text = os.fsdecode(os.fspath(inputs))
        return not Path(text).expanduser().is_dir() and not _is_glob(text)
    if isinstance(inputs, (bytes, bytearray, memoryview, Image.Image)):
        return True
    if isinstance(inputs, (np.ndarray, torch.Tensor)):
        return inputs.ndim != 4
    return callable(getattr(inputs, "read", None))


def _count_inputs(inputs: object, recursive: bool) -> int | None:
    """How many images ``inputs`` expands to, when that is cheap to know; else ``None``."""
    if isinstance(inputs, (str, os.PathLike)):
        text = os.fsdecode(os.fspath(inputs))
        path = Path(text).expanduser()
        if path.is_dir():
            return len(list_images(path, recursive=recursive))
        if _is_glob(text):
            pattern = os.path.expanduser(text)
            return sum(
                1
                for m in glob.iglob(pattern, recursive=recursive)
                if is_image_path(m) and os.path.isfile(m)
            )
        return 1
    if isinstance(inputs, (np.ndarray, torch.Tensor)):
        return int(inputs.shape[0]) if inputs.ndim == 4 else 1
    if _is_single(inputs):
        return 1
    if isinstance(inputs, (list, tuple)):
        total = 0
        for item in inputs:
            count = _count_inputs(item, recursive)
            if count is None:
                return None
            total += count
        return total
    return None  # generators and other iterables: unknown without consuming them


def _prefetch(
    items: Iterator[_T], fn: Callable[[_T], _R], workers: int, depth: int
) -> Generator[_R, None, None]:
    """``map(fn, items)`` in order, computed ahead by ``workers`` threads, ``depth`` in flight.

    ``items`` is pulled in the calling thread, at most ``depth`` ahead of what was yielded, so
    memory stays bounded for an endless iterator. A single item is processed inline.
    """
    if workers <= 0:
        for item in items:
            yield fn(item)
        return
    head: list[_T] = []
    for item in items:
        head.append(item)
        if len(head) == 2:
            break
    if len(head) < 2:
        for item in head:
            yield fn(item)
        return
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="affectfpn-load") as pool:
        futures: deque[Future[_R]] = deque(pool.submit(fn, item) for item in head)
        try:
            for item in items:
                futures.append(pool.submit(fn, item))
                while len(futures) >= depth:
                    yield futures.popleft().result()
            while futures:
                yield futures.popleft().result()
        finally:
            for future in futures:
                future.cancel()


# --------------------------------------------------------------------------- the predictor


class Predictor:
    """A model, a face detector and prediction options, reusable across calls.

    Build one when predicting many times (e.g. per video frame): the detector is created once.
    :func:`predict` and :meth:`AffectFPN.predict <affectfpn.AffectFPN.predict>` build a
    temporary one per call.

    Args:
        model: An :class:`~affectfpn.AffectFPN` (any ``nn.Module`` with an
            :class:`~affectfpn.AffectFPNConfig` as ``.config`` and the same outputs). Put it in
            eval mode; a model left in training mode is switched to eval mode around each batch
            and back (not thread-safe).
        faces: ``"detect"`` (default: suits ordinary photos) finds every face, aligns it and
            predicts per face; ``"crop"``: every input already is a face crop (Aff-Wild2
            ``cropped_aligned``, AffectNet crops), one prediction per image, no detector; the box
            is the whole image and the score ``None``.
        detector: Only for ``faces="detect"``: ``"auto"`` (YuNet, else the Haar cascade),
            ``"yunet"``, ``"haar"``, the path of a YuNet ``.onnx`` file, or any object with
            ``detect(rgb) -> list[Detection]`` (see :func:`~affectfpn.inference.get_detector`).
        batch_size: Faces per forward pass; faces of several images share a batch.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"mps"`` or ``"auto"``; ``None`` (default)
            keeps the model where it is. A different device moves the model there (once, here).
        au_threshold: An action unit is active when its probability is >= this (0..1).
        bgr: numpy arrays with 3 or 4 channels are in OpenCV's BGR(A) order.
        progress: Show a tqdm progress bar on stderr. ``None`` (default): only when the number
            of images is known, exceeds one batch and stderr is a terminal; ``False``: never.
        num_workers: Threads that decode, detect and align upcoming images while the model runs;
            0 does everything in the calling thread. Default (at most 4): with the model on a
            GPU, half the usable CPU cores. On the CPU, photos to detect faces in that come as
            files or bytes get one thread per usable core: decoding them is single-threaded
            work that would leave cores idle (on 2 cores, +13% on the sample photos). Arrays,
            tensors and video frames, and face crops, get only the cores torch's threads leave
            free (none unless ``torch.set_num_threads`` is below the core count): there a
            loader thread beside torch's slowed video by 5-14%. The first input decides.
        on_error: What to do with an input that cannot be read (corrupt, missing or non-image
            file, bad array): ``"raise"`` (default) raises its
            :class:`~affectfpn.errors.InputError`, which names the input, after the results of
            the inputs before it were yielded; ``"skip"`` logs a warning and yields no result for
            it (results keep their ``source``, so they can be matched to inputs). Mistakes in the
            request itself (an empty directory, a glob matching nothing, an object that is no
            kind of image) always raise, and so does a single input that fails (there is no
            list to leave it out of).
        recursive: Directories are searched recursively (and ``**`` works in glob patterns).
        amp: Mixed precision, one of ``"auto"`` (the default: on CUDA only, bfloat16 where
            supported, else float16), ``"on"``, ``"off"``, ``"bf16"``, ``"fp16"``: the values
            of training and evaluation, decided by :func:`affectfpn._device.amp_dtype`.
            ``None``/``True``/``False`` still mean ``"auto"``/``"on"``/``"off"``.
        compile_model: Run the model through ``torch.compile`` (dynamic batch size). The first
            batch pays the compilation (minutes on a CPU); worth it for long runs.

    Raises:
        ConfigError: An option is invalid, or the device is not available.
        WeightsError / OfflineError: The face detector cannot be loaded.

    Thread safety:
        A Predictor holds no state that changes during a call, so one instance (or one model)
        may serve several threads at once: each call gets its own loader threads, YuNet and Haar
        detectors serialise their own network calls with a lock, and a custom detector is called
        by one thread of a Predictor at a time (a custom detector shared by several Predictors
        must be thread-safe itself). Results equal those of sequential calls. The model must be
        in eval mode for this.

    Example:
        >>> predictor = Predictor(model, detector="yunet", batch_size=64)  # doctest: +SKIP
        >>> for result in predictor.predict_iter("photos/"):                # doctest: +SKIP
        ...     print(result.source, [f.expression.label for f in result])
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        faces: str = "detect",
        detector: str | os.PathLike[str] | FaceDetector = "auto",
        batch_size: int = 64,
        device: str | torch.device | None = None,
        au_threshold: float = 0.5,
        bgr: bool = False,
        progress: bool | None = None,
        num_workers: int | None = None,
        on_error: str = "raise",
        recursive: bool = False,
        amp: str | bool | None = "auto",
        compile_model: bool = False,
    ) -> None:
        config = getattr(model, "config", None)
        if not isinstance(model, nn.Module) or not isinstance(config, AffectFPNConfig):
            raise ConfigError(
                f"predict needs an AffectFPN model (an nn.Module with an AffectFPNConfig as "
                f".config), got {type(model).__name__}; load one with AffectFPN.from_pretrained()"
            )
        self.faces = _check_choice("faces", faces, FACE_MODES)
        self.on_error = _check_choice("on_error", on_error, ON_ERROR)
        #: ``(source, error message)`` of every input skipped (``on_error="skip"``), in order;
        #: cleared when a new prediction run starts.
        self.failures: list[tuple[str, str]] = []
        self.batch_size = _check_positive_int("batch_size", batch_size, low=1)
        if num_workers is not None:
            _check_positive_int("num_workers", num_workers, low=0)
        if isinstance(au_threshold, bool) or not isinstance(au_threshold, (int, float)):
            raise ConfigError(
                f"must be a number in [0, 1], got {au_threshold!r}", option="au_threshold"
            )
        if not 0.0 <= float(au_threshold) <= 1.0:
            raise ConfigError(f"must be in [0, 1], got {au_threshold!r}", option="au_threshold")
        self.au_threshold = float(au_threshold)
        if progress is not None and not isinstance(progress, bool):
            raise ConfigError(f"progress must be True, False or None, got {progress!r}")
        self.progress = progress
        self.bgr = bool(bgr)
        self.recursive = bool(recursive)
        self.model = model
        self.config: AffectFPNConfig = config
        #: The model's label names, carried by every result (the columns of its tables).
        #: softmax temperature of the expression logits (the model's calibration)
        self._temperature = float(config.expression_temperature)
        self.labels = LabelNames(tuple(config.expressions), tuple(config.action_units))
        self._input_size: tuple[int, int] = (int(config.input_size[0]), int(config.input_size[1]))
        self.detector: FaceDetector | None = (
            get_detector(detector) if self.faces == "detect" else None
        )
        # YuNet and Haar lock around their network themselves (and keep their pre- and
        # post-processing parallel); any other detector is called by one loader thread at a time.
        # YuNet shrinks large photos before detection: a JPEG is then decoded at that fraction
        # of its size at once (several times faster than decoding it in full). Decided once
        # here: a Protocol isinstance check costs microseconds per image.
        self._shrinking = self.detector if isinstance(self.detector, ShrinkingDetector) else None
        self._reduce: Callable[[int, int], float] | None = (
            None if self._shrinking is None else self._reduction_allowed
        )
        builtin = isinstance(self.detector, (YuNetDetector, HaarDetector))
        self._detect_lock: AbstractContextManager[Any] = (
            nullcontext() if builtin else threading.Lock()
        )
        self.device = self._prepare_model(device)
        workers = _default_workers(self.device) if num_workers is None else num_workers
        self.num_workers = _check_positive_int("num_workers", workers, low=0)
        #: Loader threads when the inputs are encoded photos (files, bytes) to detect faces in;
        #: ``num_workers`` is the number for everything else (see the docstring).
        self.encoded_num_workers = self.num_workers
        if num_workers is None and self.detector is not None and self.device.type == "cpu":
            self.encoded_num_workers = max(self.num_workers, min(4, _available_cores()))
        self.amp = amp_mode(amp)
        if not isinstance(compile_model, bool):
            raise ConfigError(f"compile_model must be True or False, got {compile_model!r}")
        # compiled lazily: torch.compile only wraps here, the first call compiles
        self._forward: Callable[[torch.Tensor], Any] = (
            torch.compile(self.model, dynamic=True) if compile_model else self.model
        )
        self.amp_dtype: torch.dtype | None = amp_dtype(self.device, self.amp)
        self._channels_last = _wants_channels_last(self.device)
        self._pin = self.device.type == "cuda"
        # An AffectFPN runs as a copy with BatchNorm folded into the convolutions (the same
        # outputs, up to float rounding, with less work), rebuilt whenever the model's weights
        # or statistics change in place (training steps, load_state_dict, .to()): checked when
        # a call (predict, one predict_iter / predict_named iteration) reaches its first batch.
        self._fuse = callable(getattr(model, "fuse_batchnorm", None)) and not compile_model

    def __repr__(self) -> str:
        return (
            f"Predictor(faces={self.faces!r}, detector={self.detector!r}, "
            f"batch_size={self.batch_size}, device={str(self.device)!r}, "
            f"au_threshold={self.au_threshold}, num_workers={self.num_workers}, "
            f"on_error={self.on_error!r})"
        )

    # ----------------------------------------------------------------------- setup

    def _prepare_model(self, device: str | torch.device | None) -> torch.device:
        current = _model_device(self.model)
        target = current if device is None else resolve_device(device)
        with _MODEL_LOCK:
            if not _same_device(current, target):
                logger.info("moving the model from %s to %s for prediction", current, target)
                self.model.to(target)
            if _wants_channels_last(target) and not _is_channels_last(self.model):
                self.model.to(memory_format=torch.channels_last)
        return target

    # ----------------------------------------------------------------------- public API

    def predict(
        self, inputs: object, *, progress: bool | None = None
    ) -> ImagePrediction | list[ImagePrediction]:
        """Predict every face of one input or of many.

        Args:
            inputs: One image (a path, bytes, a binary file object, a PIL image, an ``H x W``,
                ``H x W x 3`` or ``H x W x 4`` numpy array, a ``C x H x W`` tensor) or many: a
                directory (its images, sorted), a glob pattern, an ``N x H x W x C`` array, an
                ``N x C x H x W`` tensor, or any list or iterable of these.
            progress: Overrides the predictor's ``progress`` option for this call.

        Returns:
            One :class:`ImagePrediction` for a single image, else a list, in input order. An
            image without faces has ``faces == ()``.

        Raises:
            InputError: An input cannot be read (the message names it); with
                ``on_error="skip"`` only for a single input or a malformed request.
        """
        if _is_single(inputs):
            results = list(self._run(iter_sources(inputs), progress=False, strict=True))
            return results[0]
        return list(self.predict_iter(inputs, progress=progress))

    __call__ = predict

    def predict_iter(
        self, inputs: object, *, progress: bool | None = None
    ) -> Iterator[ImagePrediction]:
        """Like :meth:`predict`, but yield the results one by one, in input order.

        Inputs are consumed lazily, a bounded number ahead of the results, so a generator of
        any length runs in constant memory. Results arrive batch by batch: use a small
        ``batch_size`` when each result is wanted as soon as its input is given.
        """
        show, total = self._progress_plan(inputs, progress)
        return self._run(iter_sources(inputs, recursive=self.recursive), progress=show, total=total)

    def predict_named(
        self, named_inputs: Iterable[tuple[str, object]], *, progress: bool | None = None
    ) -> Iterator[ImagePrediction]:
        """Predict ``(source, image)`` pairs, naming each result by its ``source``.

        For callers that name their own images, such as a video reader yielding
        ``("clip.mp4#frame=12", frame)``. Each image is a single input as in :meth:`predict`.
        """
        show = bool(progress)
        total = len(named_inputs) if show and isinstance(named_inputs, (list, tuple)) else None
        return self._run(iter(named_inputs), progress=show, total=total)

    def face_crops(self, inputs: object) -> Iterator[FaceCrops]:
        """The faces of each input as the model sees them, without running the model.

        The same decoding, detection and alignment as :meth:`predict`, so a crop written to a
        file and predicted with ``faces="crop"`` gives the prediction ``predict`` gives that
        face in the photo (e.g. to prepare fine-tuning data from your own photos:
        :func:`affectfpn.recipes.crops.crop_faces`). Inputs as for :meth:`predict`; an input
        that cannot be read is handled by ``on_error``.
        """
        named = iter_sources(inputs, recursive=self.recursive)
        workers = self.encoded_num_workers
        prepared_items = _prefetch(named, self._prepare, workers, 2 + 2 * workers)
        self.failures = []
        try:
            for prepared in prepared_items:
                if isinstance(prepared, _Failed):
                    if self.on_error == "raise":
                        raise prepared.error
                    self._skip(prepared)
                    continue
                if prepared.detections is None:
                    boxes: tuple[tuple[float, float, float, float], ...] = (
                        (0.0, 0.0, float(prepared.width), float(prepared.height)),
                    )
                    scores: tuple[float | None, ...] = (None,)
                else:
                    boxes = tuple(d.box for d in prepared.detections)
                    scores = tuple(d.score for d in prepared.detections)
                yield FaceCrops(
                    prepared.source,
                    prepared.width,
                    prepared.height,
                    prepared.crops,
                    boxes,
                    scores,
                )
        finally:
            prepared_items.close()

    # ----------------------------------------------------------------------- pipeline

    def _skip(self, failed: _Failed) -> None:
        """Record an unreadable input (``on_error="skip"``) and say so."""
        message = str(failed.error)
        self.failures.append((failed.source, message))
        # The error itself is the argument: a front end may word it its own way.
        if failed.source in message:  # the message names the input already
            logger.warning("skipped: %s", failed.error)
        else:
            logger.warning("skipped %s: %s", failed.source, failed.error)

    def _progress_plan(self, inputs: object, progress: bool | None) -> tuple[bool, int | None]:
        """Whether to show a progress bar, and its total (``None``: unknown)."""
        choice = self.progress if progress is None else progress
        if choice is False:
            return False, None
        if choice is None and (_is_single(inputs) or not sys.stderr.isatty()):
            return False, None
        total = _count_inputs(inputs, self.recursive)
        if choice is None:
            return total is not None and total > self.batch_size, total
        return True, total

    def _prepare(self, named: tuple[str, object]) -> _Prepared | _Failed:
        """Decode one input and cut out its faces (runs in a loader thread)."""
        source, item = named
        try:
            detector = self.detector
            image = load_image(item, bgr=self.bgr, name=source, reduce=self._reduce)
            rgb = image.rgb
            width, height = image.full_size
            size = self._input_size
            if detector is None:
                if rgb.shape[:2] == size:  # already a crop of the input size
                    crops = rgb[None]
                else:
                    face = resize_face(Image.fromarray(rgb), size)
                    crops = np.asarray(face.convert("RGB"), dtype=np.uint8)[None]
                detections = None
            else:
                detections = self._detect(image)
                crops = np.empty((len(detections), size[0], size[1], 3), dtype=np.uint8)
                full: LoadedImage | None = None
                # framed as the model's training faces were (config.align_margin / _shift)
                margin, shift = self.config.align_margin, self.config.align_shift
                r = image.reduction
                for i, detection in enumerate(detections):
                    matrix = alignment_transform(detection, size, margin=margin, shift=shift)
                    if r > 1 and alignment_scale(matrix) * r > _REDUCED_WARP_LIMIT:
                        # a face the reduced image has too few pixels for (see the limit)
                        full = full or image.full()
                        crops[i] = warp_face(full.rgb, matrix, size)
                    else:
                        crops[i] = warp_face(rgb, matrix, size, reduction=r)
        except InputError as error:
            return _Failed(source, error)
        return _Prepared(source, width, height, crops, detections)

    def _reduction_allowed(self, width: int, height: int) -> float:
        """By how much the detector shrinks an image of this size anyway (``load_image``)."""
        assert self._shrinking is not None
        return 1.0 / self._shrinking.scale_for(width, height)

    def _detect(self, image: LoadedImage) -> list[Detection]:
        """The faces of ``image`` in full-size pixels, best score first."""
        detector = self.detector
        assert detector is not None
        r = image.reduction
        with self._detect_lock:
            if r == 1:
                found = detector.detect(image.rgb)
            else:
                assert self._shrinking is not None
                detector = self._shrinking
                shrink = min(1.0, detector.scale_for(*image.full_size) * r)
                reduced = detector.detect(image.rgb, shrink=shrink)
                found = [_scaled(d, r, image.full_size) for d in reduced]
        return sorted(found, key=lambda d: -d.score)

    def _run(
        self,
        named: Iterator[tuple[str, object]],
        *,
        progress: bool,
        total: int | None = None,
        strict: bool = False,
    ) -> Iterator[ImagePrediction]:
        self.failures = []
        workers = self.num_workers
        if self.encoded_num_workers != workers:
            first = next(named, None)
            if first is not None:
                if isinstance(first[1], (str, os.PathLike, bytes, bytearray, memoryview)):
                    workers = self.encoded_num_workers
                named = itertools.chain([first], named)
        depth = self.batch_size + 2 * workers
        bar = tqdm(total=total, unit="img", desc="affectfpn", disable=not progress)
        pending: deque[_Pending] = deque()
        queue: list[tuple[_Pending, int]] = []  # faces waiting for the model
        prepared_items = _prefetch(named, self._prepare, workers, depth)
        # The model one run uses, looked up at its first batch: checking every batch whether
        # the weights changed cost 0.2 ms (6 us per face of a batch of 32 at 48 px).
        forward: Callable[[torch.Tensor], Any] | None = None

        def run_batch(faces: list[tuple[_Pending, int]]) -> None:
            nonlocal forward
            if faces:
                if forward is None:
                    forward = self._inference_model() if self._fuse else self._forward
                self._run_batch(faces, forward)

        def flush() -> None:
            for start in range(0, len(queue), self.batch_size):
                run_batch(queue[start : start + self.batch_size])
            queue.clear()

        try:
            for prepared in prepared_items:
                if isinstance(prepared, _Failed):
                    if strict or self.on_error == "raise":
                        # Deliver what came before the bad input, then raise.
                        flush()
                        while pending:
                            bar.update(1)
                            yield self._finish(pending.popleft())
                        raise prepared.error
                    self._skip(prepared)
                    continue
                count = len(prepared.crops)
                record = _Pending(prepared, [()] * count, count)
                pending.append(record)
                if count == 1:
                    queue.append((record, 0))
                else:
                    queue.extend((record, i) for i in range(count))
                while len(queue) >= self.batch_size:
                    run_batch(queue[: self.batch_size])
                    del queue[: self.batch_size]
                if len(pending) > self.batch_size:  # many faceless images: do not hold them
                    flush()
                while pending and pending[0].remaining == 0:
                    bar.update(1)
                    yield self._finish(pending.popleft())
            flush()
            while pending:
                bar.update(1)
                yield self._finish(pending.popleft())
        finally:
            prepared_items.close()  # stop the loader threads now, even on an early exit
            bar.close()

    def _autocast(self) -> AbstractContextManager[Any]:
        return autocast(self.device, self.amp_dtype)

    def _run_batch(
        self, faces: list[tuple[_Pending, int]], forward: Callable[[torch.Tensor], Any]
    ) -> None:
        stacked = np.stack([record.prepared.crops[i] for record, i in faces])  # N x H x W x 3
        batch = torch.from_numpy(stacked).permute(0, 3, 1, 2)  # a channels_last view
        # The permuted view already is channels_last: keep that layout where the model runs in it.
        if self._pin:
            batch = batch.pin_memory()
        elif not self._channels_last:
            batch = batch.contiguous()
        batch = batch.to(self.device, non_blocking=self._pin)
        model = self.model
        was_training = model.training
        with torch.inference_mode():
            x = normalize(batch, self.config)
            if self._channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            if was_training:
                model.eval()
            try:
                with self._autocast():
                    out = forward(x)
            finally:
                if was_training:
                    model.train()
            # A NaN never becomes a label: damaged weights (or a model broken by training) are
            # an error naming the inputs, not "Neutral" with NaN probabilities.
            finite = [t for t in out if t is not None]
            if not all(bool(torch.isfinite(t).all()) for t in finite):
                sources = sorted({record.prepared.source for record, _ in faces})
                raise InferenceError(
                    f"the model's outputs are NaN or infinite for {', '.join(sources[:5])}"
                    + (f" and {len(sources) - 5} more" if len(sources) > 5 else "")
                    + ": its weights are damaged or were trained into NaN; load them again, "
                    "or use another model"
                )
            # Each face field's activated output as Python floats per face, as the results hold
            # them (one conversion per field and batch); None where the model lacks the output
            # (None, or absent from outputs that predate the field).
            # The expression temperature: the model's per-face one (a model with a calibrator,
            # N x 1), else the config's.
            per_face = getattr(out, "expression_temperature", None)
            temperature = self._temperature if per_face is None else per_face.float()
            absent: list[None] = [None] * len(faces)
            columns: list[list[list[float]] | list[None]] = []
            for spec in FACE_FIELDS:
                output = getattr(out, spec.output, None)
                columns.append(
                    absent if output is None else spec.activate(output, temperature).cpu().tolist()
                )
        # One tuple per face, a row per field (transposed by zip, cheaper than a loop per face).
        for (record, i), rows in zip(faces, zip(*columns, strict=True), strict=True):
            record.rows[i] = rows
            record.remaining -= 1

    def _inference_model(self) -> nn.Module:
        """The model with BatchNorm folded in, built again when the model's tensors changed.

        The folded copy is kept with the model (weakly), so that ``predict`` called again on the
        same model, which builds a new Predictor each time, does not fold it again.
        """
        model = self.model
        tensors = _module_tensors(model)
        # A tensor's _version counts its in-place changes (optimiser steps, BatchNorm
        # statistics, load_state_dict, copy_); with the tensors' identities and the first one's
        # device and dtype it tells whether the folded copy is still this model.
        first = tensors[0] if tensors else None
        signature = (
            tuple(map(id, tensors)),
            tuple(t._version for t in tensors),
            None if first is None else (first.device, first.dtype),
            self._channels_last,
        )
        cached = _FUSED.get(model)
        if cached is None or cached[0] != signature:
            with torch.inference_mode(False):
                fused = model.fuse_batchnorm()  # type: ignore[operator]
            if self._channels_last:
                fused.to(memory_format=torch.channels_last)
            cached = (signature, fused)
            _FUSED[model] = cached
        return cached[1]

    def _finish(self, record: _Pending) -> ImagePrediction:
        # The model's own outputs are valid by construction (softmax and sigmoid rows, clamped
        # VA, float boxes): the results are built without the checks that guard user input.
        # Each face's rows hold one row per face field, in the order of FACE_FIELDS.
        prepared = record.prepared
        faces = []
        fields = [(spec, spec.names(self.labels)) for spec in FACE_FIELDS]
        for i in range(len(prepared.crops)):
            values = {
                spec.name: None if row is None else spec.from_model(row, names, self.au_threshold)
                for (spec, names), row in zip(fields, record.rows[i], strict=True)
            }
            if prepared.detections is None:
                box = (0.0, 0.0, float(prepared.width), float(prepared.height))
                score: float | None = None
                landmarks = None
            else:
                detection = prepared.detections[i]
                x1, y1, x2, y2 = detection.box
                box = (float(x1), float(y1), float(x2), float(y2))
                score = float(detection.score)
                landmarks = (
                    None
                    if detection.landmarks is None
                    else tuple((float(x), float(y)) for x, y in detection.landmarks.tolist())
                )
            faces.append(
                _trusted(
                    FacePrediction,
                    box=box,
                    score=score,
                    landmarks=landmarks,
                    **values,
                    face_id=i,
                )
            )
        return _trusted(
            ImagePrediction,
            source=prepared.source,
            width=int(prepared.width),
            height=int(prepared.height),
            faces=tuple(faces),
            labels=self.labels,
        )


# --------------------------------------------------------------------------- functions


class PredictOptions(TypedDict, total=False):
    """The keyword options of :func:`predict`, which :func:`predict_iter` takes as well."""

    faces: str
    detector: str | os.PathLike[str] | FaceDetector
    batch_size: int
    device: str | torch.device | None
    au_threshold: float
    bgr: bool
    progress: bool | None
    num_workers: int | None
    on_error: str
    recursive: bool
    amp: str | bool | None
    compile_model: bool


#: One image, as :func:`predict` takes it: a path, bytes, a binary file, a PIL image, an array or
#: a tensor. (A folder, a glob pattern, or an ``N x ...`` array or tensor holds several images
#: and gives a list, although a type checker sees one input.)
ImageInput = str | os.PathLike[str] | bytes | IO[bytes] | Image.Image | np.ndarray | torch.Tensor
#: Several inputs: one result each, in order.
ManyInputs = list[Any] | tuple[Any, ...] | Iterator[Any]


@overload
def predict(
    model: nn.Module, inputs: ImageInput, **options: Unpack[PredictOptions]
) -> ImagePrediction: ...
@overload
def predict(
    model: nn.Module, inputs: ManyInputs, **options: Unpack[PredictOptions]
) -> list[ImagePrediction]: ...
def predict(
    model: nn.Module, inputs: object, **options: Unpack[PredictOptions]
) -> ImagePrediction | list[ImagePrediction]:
    """Predict valence/arousal, expression and action units for every face in the inputs.

    ``faces="detect"`` (the default) suits ordinary photos: every face is found, aligned and
    predicted. For inputs that already are face crops (Aff-Wild2 ``cropped_aligned``, AffectNet)
    pass ``faces="crop"``: one prediction per image, no detector.

    Args:
        model: An :class:`~affectfpn.AffectFPN`, in eval mode.
        inputs: One image (a path, bytes, a binary file object, a PIL image, a numpy array
            ``H x W`` / ``H x W x 3`` / ``H x W x 4``, a tensor ``C x H x W``, uint8 or float in
            [0, 1]) or many: a directory, a glob pattern, an ``N x H x W x C`` array, an
            ``N x C x H x W`` tensor, or any list or iterable of these.
        **options: Those of :class:`Predictor`, which documents them (``faces``,
            ``detector``, ``batch_size``, ``device``, ``au_threshold``, ``bgr``, ``progress``,
            ``num_workers``, ``on_error``, ``recursive``, ``amp``, ``compile_model``): this
            builds one and runs it once. Build a Predictor yourself to reuse it across calls.

    Returns:
        An :class:`ImagePrediction` for a single image, else a list of them in input order.
        Faces of an image have ``face_id`` 0, 1, ... in order of detection score; an image
        without faces gives ``faces == ()``, never an error.

    Raises:
        InputError: An input cannot be read; the message names it.
        ConfigError: An option is invalid.

    Example:
        >>> result = predict(model, "group.jpg")                        # doctest: +SKIP
        >>> [(f.face_id, f.expression.label) for f in result]           # doctest: +SKIP
    """
    return Predictor(model, **options).predict(inputs)


def predict_iter(
    model: nn.Module, inputs: object, **options: Unpack[PredictOptions]
) -> Iterator[ImagePrediction]:
    """Like :func:`predict` (same options), but yield one :class:`ImagePrediction` per image.

    Results come in input order. Inputs are read lazily, a bounded number ahead, so a generator
    of any length streams in constant memory. A single image gives a one-item iterator.
    """
    return Predictor(model, **options).predict_iter(inputs)
