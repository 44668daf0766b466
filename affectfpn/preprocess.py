"""The one definition of how face crops become model input, shared by inference and training.

A face crop is an RGB image resized to ``config.input_size``; the model sees it as a float tensor
scaled to [0, 1] and normalised with ``config.mean`` and ``config.std``. Inference and training
both resize with :func:`resize_face` and normalise with :func:`normalize`, so a model sees at test
time exactly what it saw in training.
"""

import functools
from collections.abc import Callable

import numpy as np
import torch
from PIL import Image

from affectfpn.config import AffectFPNConfig

#: Interpolation used to resize faces (PIL's bilinear with antialiasing when shrinking).
RESIZE = Image.Resampling.BILINEAR


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
