"""The one definition of how face crops become model input, shared by inference and training.

A face crop is an RGB image resized to ``config.input_size``; the model sees it as a float tensor
scaled to [0, 1] and normalised with ``config.mean`` and ``config.std``. Inference and training
both resize with :func:`resize_face` and normalise with :func:`normalize`, so a model sees at test
time exactly what it saw in training.

A face given by a box (a detector without landmarks at inference, a dataset's face box in
training: AffectNet, ExpW) is cut out the same way in both: :func:`face_box_region` gives the
square around the box (side ``max(width, height) * (1 + margin)``, ``margin``
:data:`DEFAULT_BOX_MARGIN`), and pixels beyond the image repeat its edge.
:func:`affectfpn.inference.align.crop_box` warps that region to the model's input size;
:func:`crop_face_box` cuts it at the image's own resolution (for training, where augmentation
and :func:`resize_face` follow).
"""

import functools
import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
from PIL import Image

from affectfpn.config import AffectFPNConfig

#: Interpolation used to resize faces (PIL's bilinear with antialiasing when shrinking).
RESIZE = Image.Resampling.BILINEAR
#: Growth of a face box crop: the crop side is ``max(box width, box height) * (1 + margin)``.
DEFAULT_BOX_MARGIN = 0.2


def face_box_region(
    box: Sequence[float], margin: float = DEFAULT_BOX_MARGIN, aspect: float = 1.0
) -> tuple[float, float, float, float]:
    """The crop around a face box: ``(left, top, width, height)`` in pixels (may leave the image).

    The crop is centred on the box ``(x1, y1, x2, y2)``; its shorter side is
    ``max(box width, box height) * (1 + margin)`` and its ``width / height`` is ``aspect`` (1: a
    square). Raises ``ValueError`` for a box without a positive, finite size or a bad margin.
    """
    x1, y1, x2, y2 = (float(v) for v in box)
    if not (math.isfinite(margin) and margin >= 0):
        raise ValueError(f"margin must be a finite number >= 0, got {margin!r}")
    side = max(x2 - x1, y2 - y1) * (1.0 + margin)
    if not math.isfinite(side) or side <= 0:
        raise ValueError(f"a face box needs a positive size, got {tuple(box)}")
    width, height = side * max(1.0, aspect), side * max(1.0, 1.0 / aspect)
    return (x1 + x2) / 2.0 - width / 2.0, (y1 + y2) / 2.0 - height / 2.0, width, height


def crop_face_box(
    image: Image.Image, box: Sequence[float], margin: float = DEFAULT_BOX_MARGIN
) -> Image.Image:
    """The square crop of :func:`face_box_region` at the image's resolution, as an RGB image.

    Whole pixels from ``floor(left)`` to ``ceil(left + width)`` (and the same vertically);
    beyond the image border the edge pixels repeat, as in inference's warp. Raises
    ``ValueError`` when the region does not overlap the image at all.
    """
    left, top, width, height = face_box_region(box, margin)
    x0, y0 = math.floor(left), math.floor(top)
    x1, y1 = math.ceil(left + width), math.ceil(top + height)
    w, h = image.size
    if x1 <= 0 or y1 <= 0 or x0 >= w or y0 >= h:
        raise ValueError(f"face box {tuple(box)} lies outside the {w}x{h} image")
    rgb = np.asarray(image.convert("RGB"))
    inside = rgb[max(y0, 0) : min(y1, h), max(x0, 0) : min(x1, w)]
    pad = ((max(-y0, 0), max(y1 - h, 0)), (max(-x0, 0), max(x1 - w, 0)), (0, 0))
    if any(before or after for before, after in pad):
        inside = np.pad(inside, pad, mode="edge")
    return Image.fromarray(np.ascontiguousarray(inside))


def resize_face(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """Resize an RGB face crop to ``size`` = ``(height, width)``."""
    height, width = size
    if image.size == (width, height):
        return image
    return image.resize((width, height), RESIZE, reducing_gap=None)


def pil_to_tensor(image: Image.Image) -> torch.Tensor:
    """An RGB PIL image as a ``3 x H x W`` uint8 tensor."""
    array = np.asarray(image.convert("RGB"), dtype=np.uint8)
    # Transposed in numpy: a per-sample torch op would pay torch's threading overhead.
    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))


def normalize(
    batch: torch.Tensor, config: AffectFPNConfig, *, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Scale a uint8 (0..255) or float (0..1) ``N x 3 x H x W`` batch and normalise it.

    Runs on whatever device ``batch`` is on, so a uint8 batch can travel to the GPU first and be
    normalised there (four times less to copy). One fused multiply-add per element
    (``x * scale + shift``, with ``scale = 1 / (255 std)`` for uint8); the result keeps the
    batch's memory layout (channels_last stays channels_last).
    """
    scale, shift = _affine(
        tuple(config.mean), tuple(config.std), batch.dtype == torch.uint8, batch.device, dtype
    )
    return torch.addcmul(shift, batch.to(dtype), scale)


@functools.lru_cache(maxsize=32)
def _affine(
    mean: tuple[float, ...],
    std: tuple[float, ...],
    from_uint8: bool,
    device: torch.device,
    dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``scale`` and ``shift`` (1 x 3 x 1 x 1) with ``(x / 255 - mean) / std = x scale + shift``."""
    with torch.inference_mode(False):  # ordinary tensors, usable inside and outside that mode
        m = torch.tensor(mean, dtype=torch.float64)
        s = torch.tensor(std, dtype=torch.float64)
        scale = 1.0 / (s * (255.0 if from_uint8 else 1.0))
        shift = -m / s
        return (
            scale.to(device=device, dtype=dtype).view(1, -1, 1, 1),
            shift.to(device=device, dtype=dtype).view(1, -1, 1, 1),
        )


class FaceToTensor:
    """Resize an RGB face crop to a model's input size and return a uint8 ``3 x H x W`` tensor.

    A class rather than a closure so that data-loader workers can pickle it.
    """

    def __init__(self, size: tuple[int, int]) -> None:
        self.size = (int(size[0]), int(size[1]))

    def __call__(self, image: Image.Image) -> torch.Tensor:
        return pil_to_tensor(resize_face(image.convert("RGB"), self.size))

    def __repr__(self) -> str:
        return f"FaceToTensor(size={self.size})"


def eval_transform(config: AffectFPNConfig) -> Callable[[Image.Image], torch.Tensor]:
    """The evaluation transform: resize to the model's input size, to a uint8 tensor."""
    return FaceToTensor(config.input_size)
