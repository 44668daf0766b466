"""The multi-task feature-pyramid model of He et al. (ABAW2 2021) and its baselines."""

import itertools
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, overload

import torch
from torch import nn

from affectfpn.config import AffectFPNConfig
from affectfpn.errors import ConfigError, InputError
from affectfpn.models._backbones import Backbone, load_backbone_weights
from affectfpn.models._fpn import FeaturePyramid

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from affectfpn.inference.predictor import ImageInput, ManyInputs, PredictOptions
    from affectfpn.inference.results import ImagePrediction

logger = logging.getLogger(__name__)


class AffectFPNOutput(NamedTuple):
    """What :class:`AffectFPN` returns: one tensor per task, ``None`` for a task it lacks.

    Attributes:
        va: ``N x 2`` valence and arousal, squashed into [-1, 1] by tanh.
        expression: ``N x 7`` expression logits (softmax gives probabilities).
        au: ``N x 12`` action-unit logits (sigmoid gives probabilities).
    """

    va: torch.Tensor | None
    expression: torch.Tensor | None
    au: torch.Tensor | None


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
        if x.dim() != 4 or x.shape[1] != 3:
            raise InputError(
                f"AffectFPN expects a normalised N x 3 x H x W tensor, got shape {tuple(x.shape)}"
            )
        if self.config.test_time_flip and not self.training:
            # one pass over the faces and their mirror images, then the mean of the two
            n = x.shape[0]
            both = self._heads(torch.cat([x, x.flip(3)]))
            return AffectFPNOutput(*(None if t is None else (t[:n] + t[n:]) / 2 for t in both))
        return self._heads(x)

    def _heads(self, x: torch.Tensor) -> AffectFPNOutput:
        z = self.dropout(self.features(x))
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
