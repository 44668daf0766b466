"""The multi-task feature-pyramid model of He et al. (ABAW2 2021) and its baselines."""

import itertools
import logging
import math
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, overload

import torch
from torch import nn
from torch.nn import functional as F

from affectfpn.config import AffectFPNConfig, stored_temperature
from affectfpn.errors import ConfigError, InputError
from affectfpn.models._backbones import Backbone, load_backbone_weights
from affectfpn.models._fpn import FeaturePyramid

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from affectfpn.calibration import AdaptiveTemperature
    from affectfpn.inference.predictor import ImageInput, ManyInputs, PredictOptions
    from affectfpn.inference.results import ImagePrediction

logger = logging.getLogger(__name__)


class AffectFPNOutput(NamedTuple):
    """What :class:`AffectFPN` returns: one tensor per task, ``None`` for a task it lacks.

    Attributes:
        va: ``N x 2`` valence and arousal, squashed into [-1, 1] by tanh.
        expression: ``N x 7`` expression logits (softmax gives probabilities).
        au: ``N x 12`` action-unit logits (sigmoid gives probabilities).
        expression_temperature: ``N x 1`` per-face expression temperatures of a model with a
            calibrator (``config.adaptive_temperature``): its calibrated probabilities are
            ``softmax(expression / expression_temperature)``. ``None`` without one (the
            config's ``expression_temperature`` applies then). The logits stay raw either way.
    """

    va: torch.Tensor | None
    expression: torch.Tensor | None
    au: torch.Tensor | None
    expression_temperature: torch.Tensor | None = None


class AffectFPN(nn.Module):
    """A backbone, an optional feature pyramid, global pooling and one linear head per task.

    With ``config.neck == "fpn"`` this is the paper's F3R: every pyramid level is average-pooled to
    a vector and the vectors are concatenated; with ``"none"`` it is the plain classifier baseline
    (the last backbone stage, pooled).

    Args:
        config: The architecture; see :class:`~affectfpn.AffectFPNConfig`.
        backbone_weights: Optional initialisation of the backbone: ``"imagenet"`` (torchvision's
            weights, downloaded once; fails with a clear error when offline) or the path of a
            torchvision state dict (``.safetensors``, or ``.pth`` read with ``weights_only``).

    Example:
        >>> import torch
        >>> from affectfpn import AffectFPN, AffectFPNConfig
        >>> model = AffectFPN(AffectFPNConfig(backbone="resnet18", input_size=(64, 64))).eval()
        >>> out = model(torch.zeros(2, 3, 64, 64))
        >>> tuple(out.va.shape), tuple(out.expression.shape), tuple(out.au.shape)
        ((2, 2), (2, 7), (2, 12))
    """

    def __init__(
        self, config: AffectFPNConfig | None = None, *, backbone_weights: str | Path | None = None
    ) -> None:
        super().__init__()
        config = AffectFPNConfig() if config is None else config
        if not isinstance(config, AffectFPNConfig):
            raise ConfigError(f"AffectFPN expects an AffectFPNConfig, got {type(config).__name__}")
        self.config = config
        #: Where the weights came from (registry name, folder or Hub repo id), set by loading.
        self.name_or_path: str | None = None
        #: The Hub commit the weights came from, when they came from the Hub.
        self.revision: str | None = None
        self.backbone = Backbone(
            config.backbone, frozen_bn=config.frozen_bn, trainable_layers=config.trainable_layers
        )
        self.neck: FeaturePyramid | None = (
            FeaturePyramid(
                self.backbone.out_channels, config.fpn_width, extra_level=config.extra_level
            )
            if config.neck == "fpn"
            else None
        )
        self.dropout = nn.Dropout(config.head_dropout)
        sizes = {"va": 2, "expression": len(config.expressions), "au": len(config.action_units)}
        self.heads = nn.ModuleDict(
            {task: nn.Linear(config.feature_dim, sizes[task]) for task in config.tasks}
        )
        for head in self.heads.values():
            assert isinstance(head, nn.Linear)
            nn.init.normal_(head.weight, std=0.01)
            nn.init.zeros_(head.bias)
        #: The per-face temperature's calibrator (``config.adaptive_temperature``): the log of
        #: the temperature as a linear map of the pooled features, fitted after training
        #: (:func:`affectfpn.calibration.fit_adaptive_temperature`) and never trained: its
        #: parameters take no gradient. ``None`` without one.
        self.calibrator: nn.Linear | None = None
        if config.adaptive_temperature:
            self.calibrator = nn.Linear(config.feature_dim, 1)
            nn.init.zeros_(self.calibrator.weight)  # T = 1 until it is fitted
            nn.init.zeros_(self.calibrator.bias)
            self.calibrator.requires_grad_(False)
        if backbone_weights is not None:
            load_backbone_weights(self.backbone, backbone_weights)

    # ------------------------------------------------------------------------- forward
    def levels(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The feature maps that get pooled: P2..P5(+P6) with an FPN, else only C5."""
        features = self.backbone(x)
        if self.neck is None:
            return [features[-1]]
        return self.neck(features)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The pooled, concatenated feature vector (``N x config.feature_dim``).

        Equal to pooling each map of :meth:`levels`, but the pyramid's smoothed maps are never
        built (see :meth:`FeaturePyramid.pooled`).
        """
        features = self.backbone(x)
        if self.neck is None:
            return features[-1].mean(dim=(2, 3))
        return torch.cat(self.neck.pooled(features), dim=1)

    def forward(self, x: torch.Tensor) -> AffectFPNOutput:
        """Run the model on a normalised ``N x 3 x H x W`` batch."""
        return self.forward_features(x)[0]

    def forward_features(self, x: torch.Tensor) -> tuple[AffectFPNOutput, torch.Tensor]:
        """:meth:`forward`'s outputs and the pooled features its per-face temperature reads
        (``N x config.feature_dim``; under ``test_time_flip`` in eval mode the mean of each
        face's and its mirror image's), from one pass: what a calibrator is fitted on."""
        if x.dim() != 4 or x.shape[1] != 3:
            raise InputError(
                f"AffectFPN expects a normalised N x 3 x H x W tensor, got shape {tuple(x.shape)}"
            )
        if self.config.test_time_flip and not self.training:
            # one pass over the faces and their mirror images, then the mean of the two
            n = x.shape[0]
            z = self.features(torch.cat([x, x.flip(3)]))
            both = self._heads(z)
            pooled = (z[:n] + z[n:]) / 2
            out = AffectFPNOutput(*(None if t is None else (t[:n] + t[n:]) / 2 for t in both))
        else:
            pooled = self.features(x)
            out = self._heads(self.dropout(pooled))
        return out._replace(expression_temperature=self.temperature(pooled)), pooled

    def temperature(self, features: torch.Tensor) -> torch.Tensor | None:
        """The per-face expression temperatures (``N x 1``) for pooled ``features``
        (``N x config.feature_dim``): ``exp(calibrator(features))`` clamped to
        ``config.adaptive_temperature_range``; ``None`` for a model without a calibrator.

        No gradient flows through it, to the calibrator or to the features.
        """
        if self.calibrator is None:
            return None
        low, high = self.config.adaptive_temperature_range
        weight, bias = self.calibrator.weight.detach(), self.calibrator.bias.detach()
        log_t = F.linear(features.detach().to(weight.dtype), weight, bias)
        return log_t.clamp(math.log(low), math.log(high)).exp()

    def set_calibrator(self, fit: "AdaptiveTemperature") -> None:
        """Give the model a per-face expression temperature: ``fit`` (from
        :func:`affectfpn.calibration.fit_adaptive_temperature` on this model's features)
        becomes its ``calibrator``; the config gets ``adaptive_temperature``, the fit's clamp
        range and its single temperature as ``expression_temperature``.

        Raises:
            InputError: a fit over another number of features.
            ConfigError: a model without the expression task.
        """
        weight = torch.as_tensor(fit.weight).detach().reshape(-1)
        if weight.shape[0] != self.config.feature_dim:
            raise InputError(
                f"the calibrator was fitted on {weight.shape[0]} features, this model has "
                f"{self.config.feature_dim}: fit it on this model's forward_features"
            )
        low, high = fit.temperature_range
        self.config = self.config.replace(
            adaptive_temperature=True,
            adaptive_temperature_range=(round(low, 6), round(high, 6)),
            expression_temperature=stored_temperature(fit.single_temperature),
        )
        head = self.heads["expression"]
        assert isinstance(head, nn.Linear)
        calibrator = nn.Linear(self.config.feature_dim, 1)
        calibrator.to(device=head.weight.device, dtype=head.weight.dtype)
        with torch.no_grad():
            calibrator.weight.copy_(weight.reshape(1, -1))
            calibrator.bias.fill_(float(fit.bias))
        self.calibrator = calibrator.requires_grad_(False)

    def drop_calibrator(self) -> bool:
        """Remove the per-face temperature's calibrator (``config.adaptive_temperature``
        becomes false; the config's ``expression_temperature`` stays): a calibrator fitted to
        these weights' features is stale once they are trained further. Returns whether there
        was one."""
        if self.calibrator is None:
            return False
        self.calibrator = None
        self.config = self.config.replace(adaptive_temperature=False)
        return True

    def _heads(self, z: torch.Tensor) -> AffectFPNOutput:
        """The task heads on pooled features ``z`` (no per-face temperature)."""
        va = self.heads["va"](z).tanh() if "va" in self.heads else None
        expression = self.heads["expression"](z) if "expression" in self.heads else None
        au = self.heads["au"](z) if "au" in self.heads else None
        return AffectFPNOutput(va=va, expression=expression, au=au)

    # ------------------------------------------------------------------------- introspection
    @property
    def level_slices(self) -> dict[str, slice]:
        """For each pooled level, its slice of the feature vector that feeds the heads."""
        width = self.config.feature_dim // self.config.num_levels
        return {
            name: slice(i * width, (i + 1) * width)
            for i, name in enumerate(self.config.level_names)
        }

    def num_params(self, *, trainable_only: bool = False) -> int:
        """Number of parameters (optionally only those that receive gradients)."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    def head_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters of the task heads (useful for a separate learning rate)."""
        return self.heads.parameters()

    @property
    def tasks(self) -> tuple[str, ...]:
        """The tasks this model predicts."""
        return self.config.tasks

    def fuse_batchnorm(self) -> "AffectFPN":
        """A copy for inference, with every BatchNorm folded into the convolution before it.

        In eval mode a BatchNorm after a convolution is an affine map per channel, which the
        convolution's weights and bias can absorb: the copy computes the same outputs (up to
        float rounding) with one pass over each map less per block. Folded are the
        (convolution, BatchNorm) pairs of the backbones here: consecutive children of a
        ``Sequential`` (stems, downsampling paths, MobileNet blocks) and ``convN``/``bnN`` pairs
        of ResNet blocks; frozen BatchNorm folds the same way. The copy is in eval mode and does
        not follow later changes of this model; it is not meant for training (its BatchNorm
        statistics are fixed into the weights). The Predictor uses one, rebuilt when the
        weights change.
        """
        import copy

        from torch.nn.utils.fusion import fuse_conv_bn_eval
        from torchvision.ops.misc import FrozenBatchNorm2d

        norms = (nn.BatchNorm2d, FrozenBatchNorm2d)
        fused = copy.deepcopy(self).eval()
        with torch.no_grad():
            for module in list(fused.modules()):
                pairs: list[tuple[str, str]] = []
                if isinstance(module, nn.Sequential):
                    names = [name for name, _ in module.named_children()]
                    pairs += list(itertools.pairwise(names))
                pairs += [(f"conv{i}", f"bn{i}") for i in range(1, 4)]
                for conv_name, norm_name in pairs:
                    conv = getattr(module, conv_name, None)
                    norm = getattr(module, norm_name, None)
                    if isinstance(conv, nn.Conv2d) and isinstance(norm, norms):
                        setattr(module, conv_name, fuse_conv_bn_eval(conv, norm))
                        setattr(module, norm_name, nn.Identity())
        return fused

    # ------------------------------------------------------------------------- weights
    def save_pretrained(
        self,
        save_directory: str | Path,
        *,
        model_card: dict[str, Any] | None = None,
        safe_serialization: bool = True,
        dtype: torch.dtype | None = None,
    ) -> Path:
        """Write ``config.json``, ``model.safetensors`` and a model card ``README.md``.

        Args:
            save_directory: Folder to write (created if needed).
            model_card: Optional metadata for the card: ``name``, ``description``, ``metrics``
                (``{dataset: {metric: value}}``), ``license``, ``datasets``, ``recipe``,
                ``training``, ``limitations``.
            safe_serialization: Must be ``True``: affectfpn writes safetensors only.
            dtype: Store floating-point tensors at this precision (e.g. ``torch.float16`` halves
                the file); they are cast back to the model's precision on loading.
        """
        from affectfpn.models.hub import save_pretrained

        if not safe_serialization:
            raise ConfigError("affectfpn writes safetensors only (safe_serialization=True)")
        return save_pretrained(self, save_directory, model_card=model_card, dtype=dtype)

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | Path | None = None,
        *,
        revision: str | None = None,
        cache_dir: str | Path | None = None,
        local_files_only: bool = False,
        token: str | bool | None = None,
        device: str | torch.device | None = None,
    ) -> "AffectFPN":
        """Load a model: a registered name, a local folder, or a Hub repo id.

        Args:
            name_or_path: ``None`` for the embedded default model; a name from
                :func:`affectfpn.list_models`; a folder holding ``config.json`` and
                ``model.safetensors``; or a Hugging Face Hub repo id such as ``"user/model"``.
            revision: Hub branch, tag or commit (registered models come with a pinned one).
            cache_dir: Hub cache folder (default: huggingface_hub's).
            local_files_only: Use only the Hub cache, never the network (as ``HF_HUB_OFFLINE=1``).
            token: Hub token for private repos.
            device: Where to put the model (``"cpu"``, ``"cuda"``, ``"auto"``...).

        Loading is strict: a missing or unexpected tensor raises
        :class:`~affectfpn.errors.WeightsError` listing them. The model is returned in eval mode.
        """
        from affectfpn.models.hub import load_pretrained

        model = load_pretrained(
            cls,
            name_or_path,
            revision=revision,
            cache_dir=cache_dir,
            local_files_only=local_files_only,
            token=token,
        )
        if device is not None:
            from affectfpn._device import resolve_device

            model.to(resolve_device(device))
        return model.eval()

    def push_to_hub(
        self,
        repo_id: str,
        *,
        model_card: dict[str, Any] | None = None,
        private: bool = False,
        token: str | None = None,
        revision: str | None = None,
        commit_message: str = "Upload affectfpn model",
    ) -> str:
        """Save this model with its card and upload it to a Hub repo; returns the commit id."""
        from affectfpn.models.hub import push_to_hub

        return push_to_hub(
            self,
            repo_id,
            model_card=model_card,
            private=private,
            token=token,
            revision=revision,
            commit_message=commit_message,
        )

    # ------------------------------------------------------------------------- inference
    @overload
    def predict(
        self, inputs: "ImageInput", **options: "Unpack[PredictOptions]"
    ) -> "ImagePrediction": ...
    @overload
    def predict(
        self, inputs: "ManyInputs", **options: "Unpack[PredictOptions]"
    ) -> "list[ImagePrediction]": ...
    def predict(
        self, inputs: Any, **options: "Unpack[PredictOptions]"
    ) -> "ImagePrediction | list[ImagePrediction]":
        """Predict affect for every face in one input (one result) or a list of inputs (a list).

        The options (``faces=``, ``detector=``, ``batch_size=``, ``au_threshold=``, ...) are those
        of :func:`affectfpn.inference.predict`, which documents them.
        """
        from affectfpn.inference.predictor import predict

        return predict(self, inputs, **options)


def gflops_per_face(config: AffectFPNConfig) -> float:
    """Billions of floating-point operations of one face through a model of ``config`` (mirror
    averaging, ``test_time_flip``, counts twice), counted on the meta device: no weights are
    made and nothing is computed."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        model = AffectFPN(config).eval()
        with torch.inference_mode(), FlopCounterMode(display=False) as counter:
            model(torch.zeros(1, 3, *config.input_size))
    return float(counter.get_total_flops() / 1e9)
