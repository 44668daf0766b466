"""After training: average checkpoints, re-estimate BatchNorm statistics, shift expression logits.

Three cheap steps that need no gradient, each measured on the validation split before use:

* :func:`average_models` averages the weights of models of one architecture, typically two
  checkpoints of one lineage (a model and a model fine-tuned from it): a weight average
  ("model soup") often lands in a flatter, better region than either end point.
* :func:`recalibrate_batchnorm` replaces every BatchNorm layer's running statistics by their
  exact mean over un-augmented training faces, seen as inference sees them (eval mode, so a
  model with ``test_time_flip`` contributes each face and its mirror image). Averaged weights
  need this (their statistics are no one's), and training statistics, gathered on augmented
  faces (erasing, colour jitter) with a moving average, differ from those of clean faces anyway.
* :func:`offset_expression_logits` adds a constant per expression to the head's bias: a
  post-hoc logit adjustment that trades a little of the strong classes' recall for a weak one's.

Command line::

    python -m affectfpn.recipes.soup MODEL [MODEL ...] --out DIR \\
        [--bn-data FOLDER] [--bn-samples 8192] [--offset Fear=0.3 --offset Disgust=0.4]

A MODEL is a registered name, a folder, a Hub repo id, or a ``last.pt`` checkpoint of this
package's :class:`~affectfpn.recipes.trainer.Trainer` (read with ``torch.load(weights_only=True)``,
as resuming reads it). ``--bn-data`` is an image-class folder (FER2013's layout) or anything
:func:`affectfpn.evaluation.build_eval_dataset` reads.
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from affectfpn.config import AffectFPNConfig
from affectfpn.errors import ConfigError
from affectfpn.models.affectfpn import AffectFPN
from affectfpn.preprocess import normalize

__all__ = [
    "average_models",
    "load_model_or_checkpoint",
    "main",
    "offset_expression_logits",
    "recalibrate_batchnorm",
]

logger = logging.getLogger(__name__)


#: What models must share to be averaged (the result takes the rest of the first one's config:
#: inference settings such as test_time_flip and the face framing, training-only fields).
_SAME_FIELDS = (
    "backbone", "neck", "fpn_width", "extra_level", "tasks", "input_size", "mean", "std",
    "expressions", "action_units",
)  # fmt: skip


def average_models(
    models: Sequence[AffectFPN], weights: Sequence[float] | None = None
) -> AffectFPN:
    """A new model whose floating-point tensors are the (weighted) mean of ``models``'.

    Integer buffers (BatchNorm's ``num_batches_tracked``) are the first model's. Every model
    must have the same configuration.

    Raises:
        ConfigError: no model, different configurations, or weights that are not positive or
            do not match the models.
    """
    if not models:
        raise ConfigError("average_models needs at least one model")
    first = models[0]
    for i, model in enumerate(models[1:], start=1):
        differ = [k for k in _SAME_FIELDS if getattr(model.config, k) != getattr(first.config, k)]
        if differ:
            raise ConfigError(
                f"model {i} differs from model 0 in {', '.join(differ)}; only models of one "
                "architecture, input and labels can be averaged"
            )
    if weights is None:
        weights = [1.0] * len(models)
    if len(weights) != len(models) or any(not w > 0 for w in weights):
        raise ConfigError(f"weights must be {len(models)} positive numbers, got {list(weights)}")
    total = float(sum(weights))
    states = [m.state_dict() for m in models]
    averaged = {}
    for key, value in states[0].items():
        if value.is_floating_point():
            mean = torch.stack(
                [
                    (w / total) * s[key].detach().to(torch.float64)
                    for w, s in zip(weights, states, strict=True)
                ]
            ).sum(0)
            averaged[key] = mean.to(value.dtype)
        else:
            averaged[key] = value.clone()
    result = copy.deepcopy(first)
    result.load_state_dict(averaged)
    return result.eval()


def _batchnorms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@torch.no_grad()
def recalibrate_batchnorm(
    model: AffectFPN,
    data: Dataset[dict[str, Any]],
    *,
    samples: int | None = 8192,
    batch_size: int = 128,
    seed: int = 0,
    device: str | torch.device | None = None,
) -> int:
    """Set every BatchNorm layer's running statistics to their mean over ``data``'s faces.

    ``data`` yields samples with a ``uint8`` ``image`` (``3 x H x W`` at the model's input
    size), as :func:`affectfpn.evaluation.build_eval_dataset` gives them: no augmentation. The
    model runs in eval mode except for its BatchNorm layers, which average the statistics of
    every batch (``momentum=None``) over ``samples`` faces drawn at random with ``seed`` (all
    of them when ``None`` or more than there are). With batches of one size (as with the
    defaults) the running mean is then the exact mean over the faces, and the running variance
    the mean of the batches' variances. Frozen BatchNorm layers (``FrozenBatchNorm2d``) are not
    BatchNorm modules and keep their statistics. The model runs on ``device`` (default: where
    it is) and is left there, in eval mode.

    Returns:
        The number of faces seen.

    Raises:
        ConfigError: the model has no BatchNorm layer, or ``data`` is empty.
    """
    layers = _batchnorms(model)
    if not layers:
        raise ConfigError("the model has no BatchNorm layer whose statistics could be set")
    count = len(data)  # type: ignore[arg-type]
    if count == 0:
        raise ConfigError("recalibrate_batchnorm got an empty dataset")
    if samples is not None and samples < count:
        order = np.random.default_rng(seed).permutation(count)[:samples]
        data = Subset(data, [int(i) for i in order])
    first = next(model.parameters())
    target = first.device if device is None else torch.device(device)
    model.to(target).eval()
    saved = [(layer, layer.momentum) for layer in layers]
    seen = 0
    try:
        for layer in layers:
            layer.reset_running_stats()
            layer.momentum = None  # cumulative: the plain mean over every batch
            layer.train()
        for batch in DataLoader(data, batch_size=batch_size, shuffle=False):
            images = batch["image"].to(target)
            model(normalize(images, model.config))
            seen += int(images.shape[0])
    finally:
        for layer, momentum in saved:
            layer.momentum = momentum
            layer.eval()
    return seen


def offset_expression_logits(model: AffectFPN, offsets: Mapping[str, float]) -> None:
    """Add ``offsets[name]`` to the expression head's bias for each named expression.

    Names are the model's expression names (``config.expressions``), matched without regard
    to case. The change is part of the weights: it is saved with them and needs no code.

    Raises:
        ConfigError: the model has no expression head, or a name is not one of its expressions.
    """
    head = model.heads["expression"] if "expression" in model.heads else None  # noqa: SIM401
    if not isinstance(head, nn.Linear) or head.bias is None:
        raise ConfigError("offset_expression_logits needs a model with an expression head")
    names = {name.lower(): i for i, name in enumerate(model.config.expressions)}
    with torch.no_grad():
        for name, offset in offsets.items():
            index = names.get(name.lower())
            if index is None:
                raise ConfigError(
                    f"unknown expression {name!r}; the model's are "
                    f"{', '.join(model.config.expressions)}"
                )
            head.bias[index] += float(offset)


def load_model_or_checkpoint(source: str) -> AffectFPN:
    """A model from a name, folder or repo id, or from a Trainer's ``last.pt`` checkpoint."""
    path = Path(source).expanduser()
    if path.is_file() and path.suffix == ".pt":
        from affectfpn.recipes.trainer import read_checkpoint  # read as resuming reads it

        state = read_checkpoint(path)
        config = json.loads(state["config"])
        model = AffectFPN(AffectFPNConfig.from_dict(config, source=f"{source} (config)"))
        model.load_state_dict(state["model"])
        return model.eval()
    return AffectFPN.from_pretrained(source)


def main(argv: list[str] | None = None) -> int:
    """``python -m affectfpn.recipes.soup``: an alias of ``affectfpn soup``."""
    from affectfpn._alias import run_command

    return run_command("soup", argv)


if __name__ == "__main__":
    from affectfpn._alias import exec_command

    raise SystemExit(exec_command("soup"))
