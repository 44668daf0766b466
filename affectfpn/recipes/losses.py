"""Masked multi-task losses (paper, section 3.2): MSE for VA, cross-entropy for expressions,
binary cross-entropy for action units, summed with task weights.

A sample without a label for a task contributes nothing to that task's loss: values under a
False mask are replaced by zeros *before* any arithmetic (so a stray marker such as -5, -1 or NaN
can neither enter the loss nor poison its gradient) and the per-sample losses are selected with
the mask, not multiplied by it. Each task's loss is averaged over the labels present in the
batch; a task with no label in the batch adds an exact zero that still reaches its head (with a
zero gradient), so every parameter takes part in every backward pass (as
DistributedDataParallel requires).

A batch may carry ``"weight"`` (one float per sample, from a
:class:`~affectfpn.data.MixedDataset` with part weights): each task's loss is then the weighted
mean over its labelled samples, so a part weighted 0.5 counts half as much per face.

:func:`distill_loss` is the forgetting guard of fine-tuning ("learning without forgetting",
Li & Hoiem 2016): the model being trained is held to a frozen copy of its starting point on the
tasks the new data does not teach (or, with a small weight, on those it does).
"""

from collections.abc import Mapping

import torch
import torch.nn.functional as F

from affectfpn.models.affectfpn import AffectFPNOutput


def _masked_mean(
    values: torch.Tensor, mask: torch.Tensor, weight: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean of ``values`` where ``mask`` holds (weighted by the per-sample ``weight`` when
    given); exactly 0 (still in the graph) where none does."""
    mask = mask.to(device=values.device, dtype=torch.bool)
    zero = torch.zeros((), dtype=values.dtype, device=values.device)
    if weight is None:
        picked = torch.where(mask, values, zero)
        return picked.sum() / mask.sum().clamp(min=1).to(values.dtype)
    w = weight.to(device=values.device, dtype=values.dtype)
    while w.dim() < values.dim():
        w = w.unsqueeze(-1)
    w = torch.where(mask, w.expand_as(values), zero)
    picked = torch.where(mask, values, zero) * w
    total = w.sum()
    return picked.sum() / torch.where(total > 0, total, torch.ones_like(total))


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
    sample_weight = batch.get("weight")
    parts: dict[str, torch.Tensor] = {}
    if output.va is not None:
        va = output.va.float()
        mask = batch["va_mask"].to(va.device).bool()
        target = _clean(batch["va"].to(va.device), mask, va.dtype)
        err = (va - target).pow(2).mean(dim=1)
        parts["va"] = _masked_mean(err, mask, sample_weight)
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
        parts["expression"] = _masked_mean(ce, mask, sample_weight)
    if output.au is not None:
        logits = output.au.float()
        mask = batch["au_mask"].to(logits.device).bool()
        target = _clean(batch["au"].to(logits.device), mask, logits.dtype)
        bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
        parts["au"] = _masked_mean(bce, mask, sample_weight)
    if not parts:
        raise ValueError("the model output has no task to train")
    terms = [weights.get(task, 1.0) * loss for task, loss in parts.items()]
    total = terms[0]
    for term in terms[1:]:
        total = total + term
    return total, parts


def distill_loss(
    output: AffectFPNOutput,
    teacher: AffectFPNOutput,
    *,
    weights: Mapping[str, float],
    temperature: float = 2.0,
    au_index: tuple[list[int], list[int]] | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """How far the model's outputs moved from a frozen teacher's on the same images.

    Args:
        output: The model's output.
        teacher: The teacher's output on the same batch (computed without gradients).
        weights: ``{task: weight}`` for the tasks to hold; a task with weight 0 is left out.
        temperature: Softening of the expression distributions (the KL divergence is scaled by
            ``temperature ** 2`` so that its gradients keep their size, as in Hinton et al.).
        au_index: ``(student_columns, teacher_columns)`` of the action units both models have;
            ``None``: the same units in the same order.

    Returns:
        ``(total, parts)``: the weighted sum, and ``{task: loss}`` for every task held.
    """
    parts: dict[str, torch.Tensor] = {}
    if weights.get("expression", 0) and output.expression is not None:
        if teacher.expression is None:
            raise ValueError("the teacher has no expression head to distill from")
        t = float(temperature)
        student = F.log_softmax(output.expression.float() / t, dim=1)
        target = F.softmax(teacher.expression.float() / t, dim=1)
        parts["expression"] = F.kl_div(student, target, reduction="batchmean") * t * t
    if weights.get("au", 0) and output.au is not None:
        if teacher.au is None:
            raise ValueError("the teacher has no action-unit head to distill from")
        s_au, t_au = output.au.float(), teacher.au.float()
        if au_index is not None:
            s_au, t_au = s_au[:, au_index[0]], t_au[:, au_index[1]]
        parts["au"] = F.binary_cross_entropy_with_logits(s_au, torch.sigmoid(t_au))
    if weights.get("va", 0) and output.va is not None:
        if teacher.va is None:
            raise ValueError("the teacher has no valence/arousal head to distill from")
        parts["va"] = (output.va.float() - teacher.va.float()).pow(2).mean()
    if not parts:
        raise ValueError(f"nothing to distill: weights {dict(weights)} name no task of the model")
    terms = [weights[task] * loss for task, loss in parts.items()]
    total = terms[0]
    for term in terms[1:]:
        total = total + term
    return total, parts
