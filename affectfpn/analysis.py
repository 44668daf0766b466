"""Which pyramid levels each task head relies on (the paper's figure 4).

Every task head of :class:`~affectfpn.AffectFPN` is one linear layer over the concatenation of
the pooled pyramid levels (P2..P5, plus P6 with ``extra_level``, or only C5 without a neck), so
the head's weight matrix splits into one block of columns per level. :func:`layer_contributions`
measures how much weight each block carries; :func:`plot_layer_contributions` draws it.
"""

import logging
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING

import torch
from torch import nn

from affectfpn.errors import InputError, require_extra
from affectfpn.models.affectfpn import AffectFPN

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["layer_contributions", "plot_layer_contributions"]

logger = logging.getLogger(__name__)

_TASK_TITLES = {"va": "Valence/arousal", "expression": "Expression", "au": "Action units"}


def layer_contributions(model: AffectFPN) -> dict[str, dict[str, float]]:
    """The share of each pooled pyramid level in each task head.

    For a task whose head has weights ``W`` (``K x D``: K outputs over the ``D`` pooled
    features) and a level ``l`` whose features are the columns ``S_l`` (``w_l = |S_l|`` of
    them; see :attr:`AffectFPN.level_slices`)::

        raw[l]   = sum(|W[k, j]| for k in 0..K-1, j in S_l) * (w_l / D)
        share[l] = raw[l] / sum(raw[m] for every level m)

    that is, the summed absolute head weight on the level's slice of the features times the
    slice's relative size, normalised so the shares of a task sum to 1. The bias is ignored. All
    levels of an :class:`AffectFPN` have the same width, so ``w_l / D = 1 / L`` is a constant and
    a share is simply the level's fraction of the head's total absolute weight: a head with equal
    weights everywhere gives every level ``1 / L``.

    The shares read weights only, not the size of the features they multiply, so they compare
    levels fairly only when the pooled features of the levels have similar scales.

    Args:
        model: the model (any number of levels: 4, 5 with ``extra_level``, 1 with
            ``neck="none"``, where the single level ``"C5"`` gets share 1.0).

    Returns:
        ``{task: {level: share}}``, tasks in the model's order, levels in concatenation order
        (``P2``, ``P3``, ...). A head whose weights are all zero gets share 0.0 for every level
        (and a warning is logged).

    Raises:
        InputError: ``model`` is not an AffectFPN, or a head does not match the feature size.
    """
    config = getattr(model, "config", None)
    heads = getattr(model, "heads", None)
    if config is None or not isinstance(heads, nn.ModuleDict):
        raise InputError(
            f"layer_contributions needs an AffectFPN model (with .config, .heads and "
            f".level_slices), got {type(model).__name__}"
        )
    dim = int(config.feature_dim)
    slices = model.level_slices
    out: dict[str, dict[str, float]] = {}
    for task in config.tasks:
        head = heads[task]
        if not isinstance(head, nn.Linear) or head.in_features != dim:
            raise InputError(
                f"head {task!r} must be an nn.Linear over the {dim} pooled features, got {head}"
            )
        weight = head.weight.detach().to(device="cpu", dtype=torch.float64).abs()
        raw = {}
        for level, s in slices.items():
            width = len(range(dim)[s])
            raw[level] = float(weight[:, s].sum()) * width / dim
        total = sum(raw.values())
        if total <= 0.0:
            logger.warning("head %r has only zero weights: every level gets share 0.0", task)
            out[task] = dict.fromkeys(raw, 0.0)
        else:
            out[task] = {level: value / total for level, value in raw.items()}
    return out


def plot_layer_contributions(
    contributions: Mapping[str, Mapping[str, float]],
    path: str | os.PathLike[str] | None = None,
    ax: "Axes | None" = None,
) -> "Figure":
    """Draw :func:`layer_contributions` as a grouped bar chart: one group per task, one bar per
    pyramid level, with each bar's share written above it.

    Needs matplotlib (``pip install 'affectfpn[plot]'``). No pyplot state is touched when ``ax``
    is not given: the figure is a standalone :class:`matplotlib.figure.Figure`.

    Args:
        contributions: ``{task: {level: share}}``.
        path: also save the figure there (the format follows the suffix: ``.png``, ``.pdf``,
            ``.svg``...).
        ax: draw into these axes instead of a new figure.

    Returns:
        The figure drawn on.

    Raises:
        MissingExtraError: matplotlib is not installed.
        InputError: ``contributions`` is empty or not a mapping of mappings of numbers.
    """
    if not isinstance(contributions, Mapping) or not contributions:
        raise InputError(
            "contributions must be a non-empty {task: {level: share}} dict, as returned by "
            "layer_contributions(model)"
        )
    levels: list[str] = []
    for task, shares in contributions.items():
        if not isinstance(shares, Mapping) or not all(
            isinstance(v, int | float) for v in shares.values()
        ):
            raise InputError(f"contributions[{task!r}] must map level names to numbers")
        levels += [str(level) for level in shares if str(level) not in levels]
    require_extra("matplotlib", "plot")
    from matplotlib.figure import Figure

    tasks = list(contributions)
    if ax is None:
        fig = Figure(figsize=(max(4.5, 2.0 + 1.5 * len(tasks)), 3.4), layout="constrained")
        ax = fig.add_subplot()
    else:
        owner = ax.figure  # a Figure, or a SubFigure inside one
        fig = owner if isinstance(owner, Figure) else owner.figure
    group = 0.8
    width = group / len(levels)
    highest = 0.0
    for i, level in enumerate(levels):
        values = [float(contributions[t].get(level, 0.0)) for t in tasks]
        highest = max(highest, *values)
        xs = [x - group / 2 + (i + 0.5) * width for x in range(len(tasks))]
        bars = ax.bar(xs, values, width * 0.95, label=level)
        ax.bar_label(bars, fmt="%.2f", fontsize=7, padding=1)
    ax.set_xticks(range(len(tasks)))
    ax.set_xticklabels([_TASK_TITLES.get(t, t) for t in tasks])
    ax.set_ylabel("share of absolute head weight")
    ax.set_ylim(0.0, min(1.0, highest) * 1.15 + 0.02)
    ax.set_title("Contribution of each pyramid level to each task head", fontsize=10)
    ax.legend(
        title="level", fontsize=8, title_fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0)
    )
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    if path is not None:
        fig.savefig(os.fspath(path), dpi=150)
    return fig
