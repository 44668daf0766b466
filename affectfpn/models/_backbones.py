"""Backbones that return the C2..C5 feature maps (strides 4, 8, 16, 32) of torchvision models."""

import functools
import itertools
import logging
import socket
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import nn
from torch.nn import functional as F
from torchvision.ops.misc import FrozenBatchNorm2d as _TorchvisionFrozenBatchNorm2d

from affectfpn.config import BACKBONE_CHANNELS
from affectfpn.errors import OfflineError, WeightsError

logger = logging.getLogger(__name__)

# For each MobileNet, the index of the last block of features[] at strides 4, 8, 16 and 32.
_MOBILENET_STAGE_ENDS: dict[str, tuple[int, int, int, int]] = {
    "mobilenet_v2": (3, 6, 13, 18),
    "mobilenet_v3_large": (3, 6, 12, 16),
}


class FrozenBatchNorm2d(_TorchvisionFrozenBatchNorm2d):
    """torchvision's frozen BatchNorm (same buffers, same state dict), run as one fused kernel.

    torchvision's version computes the scale and shift and applies them as separate multiply
    and add kernels on every call; ``F.batch_norm`` in inference mode does the same arithmetic
    in one pass over the map. The outputs agree up to float rounding.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(
            x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps
        )


#: Backbones of this package's own (no torchvision classifier, no ImageNet weights): name ->
#: the ResNet-18 layout (two BasicBlocks per stage) at these stage widths.
NARROW_RESNETS: dict[str, tuple[int, int, int, int]] = {"resnet18_half": (32, 64, 128, 256)}


def _narrow_resnet(
    widths: tuple[int, int, int, int], norm_layer: Callable[..., nn.Module]
) -> list[nn.Module]:
    """ResNet-18's stem and four stages at other widths (``resnet18_half``: half of each).

    The same blocks and strides as torchvision's ``resnet18`` (7x7/2 convolution, 3x3/2 max
    pool, two BasicBlocks per stage, strides 1, 2, 2, 2), so C2..C5 keep strides 4..32; a
    quarter of the multiply-adds at half width. Initialised as torchvision initialises ResNets.
    """
    from torchvision.models.resnet import BasicBlock, conv1x1

    stem = nn.Sequential(
        nn.Conv2d(3, widths[0], kernel_size=7, stride=2, padding=3, bias=False),
        norm_layer(widths[0]),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
    )
    stages: list[nn.Module] = [stem]
    inplanes = widths[0]
    for i, width in enumerate(widths):
        stride = 1 if i == 0 else 2
        downsample = None
        if stride != 1 or inplanes != width:
            downsample = nn.Sequential(conv1x1(inplanes, width, stride), norm_layer(width))
        stages.append(
            nn.Sequential(
                BasicBlock(inplanes, width, stride, downsample, norm_layer=norm_layer),
                BasicBlock(width, width, norm_layer=norm_layer),
            )
        )
        inplanes = width
    for stage in stages:
        for m in stage.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
    return stages


class Backbone(nn.Module):
    """A torchvision classifier cut into five stages: a stem and the blocks ending at C2..C5.

    ``forward`` returns ``[C2, C3, C4, C5]``; ``out_channels`` gives their channel counts.
    """

    out_channels: tuple[int, int, int, int]

    def __init__(self, name: str, *, frozen_bn: bool = False, trainable_layers: int = 5) -> None:
        super().__init__()
        if name not in BACKBONE_CHANNELS:
            raise ValueError(f"unknown backbone {name!r}")
        self.name = name
        self.out_channels = BACKBONE_CHANNELS[name]
        norm_layer: Callable[..., nn.Module] = FrozenBatchNorm2d if frozen_bn else nn.BatchNorm2d
        if name == "mobilenet_v3_large":
            # torchvision builds this model with BatchNorm eps=0.001, momentum=0.01.
            norm_layer = (
                functools.partial(FrozenBatchNorm2d, eps=0.001)
                if frozen_bn
                else functools.partial(nn.BatchNorm2d, eps=0.001, momentum=0.01)
            )
        stages: list[nn.Module]
        if name in NARROW_RESNETS:
            stages = _narrow_resnet(NARROW_RESNETS[name], norm_layer)
        elif name.startswith("resnet"):
            net = getattr(torchvision.models, name)(weights=None, norm_layer=norm_layer)
            stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
            stages = [stem, net.layer1, net.layer2, net.layer3, net.layer4]
        else:
            net = getattr(torchvision.models, name)(weights=None, norm_layer=norm_layer)
            ends = _MOBILENET_STAGE_ENDS[name]
            feats = list(net.features)
            # The stem is the first conv; C2's stage holds the rest up to stride 4.
            bounds = [0, 1, ends[0] + 1, ends[1] + 1, ends[2] + 1, ends[3] + 1]
            stages = [nn.Sequential(*feats[a:b]) for a, b in itertools.pairwise(bounds)]
        self.stages = nn.ModuleList(stages)
        self.set_trainable_layers(trainable_layers)

    def set_trainable_layers(self, trainable_layers: int) -> None:
        """Let only the top ``trainable_layers`` stages (C5 first, stem last) learn."""
        first_trainable = len(self.stages) - trainable_layers
        for i, stage in enumerate(self.stages):
            for p in stage.parameters():
                p.requires_grad_(i >= first_trainable)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stages[0](x)
        features = []
        for stage in self.stages[1:]:
            x = stage(x)
            features.append(x)
        return features

    # ------------------------------------------------------------------ ImageNet initialisation
    def torchvision_key_map(self) -> dict[str, str]:
        """Map this backbone's parameter/buffer names to the torchvision classifier's names."""
        mapping: dict[str, str] = {}
        if self.name.startswith("resnet"):
            stem_names = {"0": "conv1", "1": "bn1"}
            for key in self.state_dict():
                parts = key.split(".")  # stages.<i>.<rest>
                i, rest = int(parts[1]), parts[2:]
                if i == 0:
                    mapping[key] = ".".join([stem_names[rest[0]], *rest[1:]])
                else:
                    mapping[key] = ".".join([f"layer{i}", *rest])
        else:
            ends = _MOBILENET_STAGE_ENDS[self.name]
            bounds = [0, 1, ends[0] + 1, ends[1] + 1, ends[2] + 1, ends[3] + 1]
            for key in self.state_dict():
                parts = key.split(".")
                i, j, rest = int(parts[1]), int(parts[2]), parts[3:]
                mapping[key] = ".".join(["features", str(bounds[i] + j), *rest])
        return mapping

    def load_torchvision_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Load a torchvision classifier's state dict (the classifier head is ignored)."""
        mapping = self.torchvision_key_map()
        own = self.state_dict()
        missing = [
            k
            for k, src in mapping.items()
            if src not in state and not k.endswith("num_batches_tracked")
        ]
        if missing:
            raise WeightsError(
                f"backbone weights for {self.name} lack {len(missing)} tensors, e.g. "
                f"{[mapping[k] for k in missing[:5]]}: are they torchvision {self.name} weights?"
            )
        wanted = set(mapping.values())
        unexpected = [
            k
            for k in state
            if k not in wanted
            and not k.startswith(("fc.", "classifier."))
            and not k.endswith("num_batches_tracked")
        ]
        if unexpected:
            raise WeightsError(
                f"backbone weights hold {len(unexpected)} tensors that torchvision's {self.name} "
                f"lacks, e.g. {unexpected[:5]}: are they weights of another model?"
            )
        new = {k: state[src] for k, src in mapping.items() if src in state}
        for k, v in new.items():
            if v.shape != own[k].shape:
                raise WeightsError(
                    f"backbone tensor {mapping[k]} has shape {tuple(v.shape)}, "
                    f"expected {tuple(own[k].shape)}"
                )
        # num_batches_tracked may be absent from old checkpoints; everything else is checked above.
        self.load_state_dict(new, strict=False)


def load_backbone_weights(backbone: Backbone, weights: str | Path) -> None:
    """Initialise ``backbone`` from ``"imagenet"`` (torchvision's weights) or a local file.

    A local file may be ``.safetensors`` or a PyTorch state dict, read with
    ``torch.load(weights_only=True)`` (no code is executed).
    """
    if isinstance(weights, str) and weights.lower() == "imagenet":
        if backbone.name in NARROW_RESNETS:
            raise WeightsError(
                f"no ImageNet weights exist for {backbone.name} (a backbone of affectfpn's own): "
                "train it from scratch (backbone_weights=None) or pass a file of its own weights"
            )
        state = _download_imagenet(backbone.name)
    else:
        path = Path(weights)
        if not path.is_file():
            raise WeightsError(
                f"backbone weights {str(weights)!r}: not 'imagenet' and not an existing file"
            )
        if path.suffix == ".safetensors":
            from safetensors import SafetensorError
            from safetensors.torch import load_file

            try:
                state = load_file(str(path))
            except (SafetensorError, OSError) as err:
                raise WeightsError(f"{path}: not a readable safetensors file ({err})") from None
        else:
            try:
                state = torch.load(path, map_location="cpu", weights_only=True)
            except Exception as err:
                raise WeightsError(f"{path}: cannot read backbone weights ({err})") from None
        if (
            isinstance(state, dict)
            and "state_dict" in state
            and isinstance(state["state_dict"], dict)
        ):
            state = state["state_dict"]
    backbone.load_torchvision_state_dict(state)
    logger.info("initialised %s backbone from %s", backbone.name, weights)


def _download_imagenet(name: str) -> dict[str, torch.Tensor]:
    enum: Any = torchvision.models.get_model_weights(name)
    weights = enum.DEFAULT
    url: str = weights.url
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(urllib.parse.urlparse(url).path).name
    if not cached.is_file():
        host = urllib.parse.urlparse(url).hostname or ""
        try:
            socket.create_connection((host, 443), timeout=10).close()
        except OSError:
            raise OfflineError(
                f"cannot download ImageNet weights for {name} from {host} (no network). "
                f"Fix: copy {Path(url).name} into {cached.parent}, pass a local file as "
                "backbone_weights=..., or start from scratch with backbone_weights=None"
            ) from None
    state: dict[str, torch.Tensor] = weights.get_state_dict(progress=False, check_hash=True)
    return state
