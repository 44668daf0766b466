"""Masked multi-task losses (paper, section 3.2): MSE for VA, cross-entropy for expressions,
binary cross-entropy for action units, summed with task weights.

A sample without a label for a task contributes nothing to that task's loss. Each task's loss is
averaged over the labels present in the batch; a task with no label in the batch adds an exact
zero that still reaches its head, so every parameter takes part in every backward pass (as
DistributedDataParallel requires).
"""

from collections.abc import Mapping

import torch
import torch.nn.functional as F

from affectfpn.models.affectfpn import AffectFPNOutput


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp(min=1.0)


def multitask_loss(
    output: AffectFPNOutput,
    batch: Mapping[str, torch.Tensor],
    *,
    weights: Mapping[str, float] | None = None,
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The weighted sum of the per-task losses, and each task's (unweighted) loss.

    Args:
        output: The model's output.
        batch: A collated batch of training samples (``va``/``va_mask``,
            ``expression``/``expression_mask`` with an optional ``expression_soft`` probability
            target, ``au``/``au_mask``).
        weights: Task weights (``a``, ``b``, ``c`` of the paper); missing tasks weigh 1.
        label_smoothing: Label smoothing of the hard expression targets.
    """
    weights = dict(weights or {})
    parts: dict[str, torch.Tensor] = {}
    if output.va is not None:
        va = output.va.float()
        err = (va - batch["va"].to(va.dtype)).pow(2).mean(dim=1)
        parts["va"] = _masked_mean(err, batch["va_mask"])
    if output.expression is not None:
        logits = output.expression.float()
        soft = batch.get("expression_soft")
        if soft is not None:
            ce = torch.sum(-soft.to(logits.dtype) * F.log_softmax(logits, dim=1), dim=1)
        else:
            ce = F.cross_entropy(
                logits,
                batch["expression"].long(),
                reduction="none",
                label_smoothing=label_smoothing,
            )
        parts["expression"] = _masked_mean(ce, batch["expression_mask"])
    if output.au is not None:
        logits = output.au.float()
        bce = F.binary_cross_entropy_with_logits(
            logits, batch["au"].to(logits.dtype), reduction="none"
        )
        parts["au"] = _masked_mean(bce, batch["au_mask"])
    if not parts:
        raise ValueError("the model output has no task to train")
    terms = [weights.get(task, 1.0) * loss for task, loss in parts.items()]
    total = terms[0]
    for term in terms[1:]:
        total = total + term
    return total, parts
