"""The feature pyramid neck: top-down path with lateral connections (Lin et al., 2017)."""

import torch
import torch.nn.functional as F
from torch import nn


class FeaturePyramid(nn.Module):
    """Turn backbone maps C2..C5 into pyramid levels P2..P5 (and optionally P6).

    Each level above the lowest is upsampled to the size of the level below (so odd input sizes
    work) and added to that level's 1x1 lateral projection; a 3x3 convolution then smooths every
    merged map. With ``extra_level`` a P6 is taken from P5 by a stride-2 max-pool, as in the
    authors' code.
    """

    def __init__(self, in_channels: tuple[int, ...], width: int, *, extra_level: bool) -> None:
        super().__init__()
        self.lateral = nn.ModuleList(nn.Conv2d(c, width, kernel_size=1) for c in in_channels)
        self.smooth = nn.ModuleList(
            nn.Conv2d(width, width, kernel_size=3, padding=1) for _ in in_channels
        )
        self.extra_level = extra_level
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_uniform_(m.weight, a=1)
                nn.init.zeros_(m.bias)  # type: ignore[arg-type]

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        top = self.lateral[-1](features[-1])
        outputs = [self.smooth[-1](top)]
        for i in range(len(features) - 2, -1, -1):
            lateral = self.lateral[i](features[i])
            top = lateral + F.interpolate(top, size=lateral.shape[-2:], mode="nearest")
            outputs.insert(0, self.smooth[i](top))
        if self.extra_level:
            outputs.append(F.max_pool2d(outputs[-1], kernel_size=1, stride=2))
        return outputs
