"""Masked multi-task losses (paper, section 3.2): MSE for VA, cross-entropy for expressions,
binary cross-entropy for action units, summed with task weights.

A sample without a label for a task contributes nothing to that task's loss: values under a
False mask are replaced by zeros *before* any arithmetic (so a stray marker such as -5, -1 or NaN
can neither enter the loss nor poison its gradient) and the per-sample losses are selected with
the mask, not multiplied by it. Each task's loss is averaged over the labels present in the
batch; a task with no label in the batch adds an exact zero that still reaches its head (with a
zero gradient), so every parameter takes part in every backward pass (as
DistributedDataParallel requires).
"""

from collections.abc import Mapping

import torch
import torch.nn.functional as F

from affectfpn.models.affectfpn import AffectFPNOutput


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` where ``mask`` holds; exactly 0 (still in the graph) where none does."""
    mask = mask.to(device=values.device, dtype=torch.bool)
    picked = torch.where(mask, values, torch.zeros((), dtype=values.dtype, device=values.device))
    return picked.sum() / mask.sum().clamp(min=1).to(values.dtype)


def _clean(target: torch.Tensor, mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``target`` as ``dtype`` with every masked-out entry set to 0."""
    target = target.to(device=mask.device)
    while mask.dim() < target.dim():
        mask = mask.unsqueeze(-1)
    zero = torch.zeros((), dtype=dtype, device=target.device)
    return torch.where(mask.to(torch.bool), target.to(dtype), zero)


def multitask_loss(
    output: AffectFPNOutput,
    batch: Mapping[str, torch.Tensor],
    *,
    weights: Mapping[str, float] | None = None,
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The weighted sum of the per-task losses, and each task's (unweighted) loss.

    Args:
        output: The model's output; a task whose output is ``None`` has no loss.
        batch: A collated batch of training samples (``va``/``va_mask``,
            ``expression``/``expression_mask`` with an optional ``expression_soft`` probability
            target, ``au``/``au_mask``).
        weights: Task weights (``a``, ``b``, ``c`` of the paper); missing tasks weigh 1.
        label_smoothing: Label smoothing of the hard expression targets.

    Returns:
        ``(total, parts)``: the weighted sum, and ``{task: loss}`` for every task of the model.
    """
    weights = dict(weights or {})
    parts: dict[str, torch.Tensor] = {}
    if output.va is not None:
        va = output.va.float()
        mask = batch["va_mask"].to(va.device).bool()
        target = _clean(batch["va"].to(va.device), mask, va.dtype)
        err = (va - target).pow(2).mean(dim=1)
        parts["va"] = _masked_mean(err, mask)
    if output.expression is not None:
        logits = output.expression.float()
        mask = batch["expression_mask"].to(logits.device).bool()
        soft = batch.get("expression_soft")
        if soft is not None:
            probs = _clean(soft.to(logits.device), mask, logits.dtype)
            ce = torch.sum(-probs * F.log_softmax(logits, dim=1), dim=1)
        else:
            target = _clean(batch["expression"].to(logits.device), mask, torch.long)
            ce = F.cross_entropy(logits, target, reduction="none", label_smoothing=label_smoothing)
        parts["expression"] = _masked_mean(ce, mask)
    if output.au is not None:
        logits = output.au.float()
        mask = batch["au_mask"].to(logits.device).bool()
        target = _clean(batch["au"].to(logits.device), mask, logits.dtype)
        bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
        parts["au"] = _masked_mean(bce, mask)
    if not parts:
        raise ValueError("the model output has no task to train")
    terms = [weights.get(task, 1.0) * loss for task, loss in parts.items()]
    total = terms[0]
    for term in terms[1:]:
        total = total + term
    return total, parts
