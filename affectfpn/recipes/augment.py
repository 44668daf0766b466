"""Training augmentation applied to whole batches on the training device.

Per-sample PIL or tensor transforms cost milliseconds per small face on a CPU core, which on a
small machine rivals the model's own cost, and on a GPU leaves the device waiting for the data
loader. :class:`BatchAugment` does the same kind of augmentation for a whole batch at once: one
random affine warp per sample (a resized crop keeping most of the face, a horizontal flip, a small
rotation) through a single ``grid_sample``, brightness and contrast jitter, and random erasing of
a patch. All randomness comes from a ``torch.Generator`` the trainer seeds per epoch, so runs
repeat exactly.
"""

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from affectfpn.errors import ConfigError


@dataclass(frozen=True)
class BatchAugment:
    """Random augmentation of a float ``N x C x H x W`` batch with values in [0, 1].

    Args:
        scale: Range of the crop's area as a fraction of the image (1 = no crop).
        ratio: Range of the crop's aspect ratio (width / height).
        rotation: Largest rotation in degrees (uniform in +-rotation).
        flip: Flip half of the samples horizontally.
        color_jitter: Brightness and contrast factors are drawn from ``1 +- color_jitter``.
        erasing: Probability of blanking one random patch (2-15 % of the area) per sample.
        translate: Largest shift of the crop centre, as a fraction of the image size, on top of
            the shift that the crop's size allows.
    """

    scale: tuple[float, float] = (0.8, 1.0)
    ratio: tuple[float, float] = (0.9, 1.1)
    rotation: float = 10.0
    flip: bool = True
    color_jitter: float = 0.3
    erasing: float = 0.25
    translate: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "scale", tuple(float(v) for v in self.scale))
        object.__setattr__(self, "ratio", tuple(float(v) for v in self.ratio))
        lo, hi = self.scale
        if not 0 < lo <= hi <= 1:
            raise ConfigError(f"augment.scale must satisfy 0 < low <= high <= 1, got {self.scale}")
        if not 0 < self.ratio[0] <= self.ratio[1]:
            raise ConfigError(f"augment.ratio must be positive and ordered, got {self.ratio}")
        if not 0 <= self.rotation <= 180:
            raise ConfigError("augment.rotation must be in [0, 180] degrees")
        if not 0 <= self.color_jitter < 1:
            raise ConfigError("augment.color_jitter must be in [0, 1)")
        if not 0 <= self.erasing <= 1:
            raise ConfigError("augment.erasing must be a probability")
        if not 0 <= self.translate <= 0.5:
            raise ConfigError("augment.translate must be in [0, 0.5]")

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Augment ``x`` (float, values in [0, 1]); returns a new tensor of the same shape."""
        n = x.shape[0]
        if n == 0:
            return x

        def rand(*shape: int) -> torch.Tensor:
            return torch.rand(*shape, generator=generator).to(x.device)

        # --- geometry: one affine map per sample, output grid -> input coordinates
        lo, hi = self.scale
        area = lo + (hi - lo) * rand(n)
        log_r = math.log(self.ratio[0]) + (
            math.log(self.ratio[1]) - math.log(self.ratio[0])
        ) * rand(n)
        aspect = log_r.exp()
        sx = (area * aspect).sqrt().clamp(max=1.0)
        sy = (area / aspect).sqrt().clamp(max=1.0)
        tx = (1 - sx) * (2 * rand(n) - 1) + self.translate * (2 * rand(n) - 1)
        ty = (1 - sy) * (2 * rand(n) - 1) + self.translate * (2 * rand(n) - 1)
        angle = math.radians(self.rotation) * (2 * rand(n) - 1)
        sign = (
            torch.where(rand(n) < 0.5, -1.0, 1.0) if self.flip else torch.ones(n, device=x.device)
        )
        cos, sin = angle.cos(), angle.sin()
        theta = torch.stack(
            [
                torch.stack([cos * sx * sign, -sin * sy, tx], dim=1),
                torch.stack([sin * sx * sign, cos * sy, ty], dim=1),
            ],
            dim=1,
        ).to(x.dtype)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        out = F.grid_sample(
            x, grid, mode="bilinear", padding_mode="reflection", align_corners=False
        )

        # --- photometric: brightness, then contrast around each image's mean
        if self.color_jitter > 0:
            j = self.color_jitter
            brightness = (1 + j * (2 * rand(n) - 1)).view(n, 1, 1, 1).to(x.dtype)
            contrast = (1 + j * (2 * rand(n) - 1)).view(n, 1, 1, 1).to(x.dtype)
            out = out * brightness
            mean = out.mean(dim=(1, 2, 3), keepdim=True)
            out = ((out - mean) * contrast + mean).clamp(0, 1)

        # --- random erasing of one rectangle per chosen sample
        if self.erasing > 0:
            h, w = x.shape[-2:]
            chosen = rand(n) < self.erasing
            frac = 0.02 + 0.13 * rand(n)
            er_aspect = (math.log(0.3) + (math.log(3.3) - math.log(0.3)) * rand(n)).exp()
            eh = (frac / er_aspect).sqrt().clamp(max=1.0) * h
            ew = (frac * er_aspect).sqrt().clamp(max=1.0) * w
            y0 = (h - eh) * rand(n)
            x0 = (w - ew) * rand(n)
            ys = torch.arange(h, device=x.device).view(1, h, 1)
            xs = torch.arange(w, device=x.device).view(1, 1, w)
            box = (
                (ys >= y0.view(n, 1, 1))
                & (ys < (y0 + eh).view(n, 1, 1))
                & (xs >= x0.view(n, 1, 1))
                & (xs < (x0 + ew).view(n, 1, 1))
                & chosen.view(n, 1, 1)
            )
            out = out.masked_fill(box.unsqueeze(1), 0.0)
        return out
