"""Calibrated expression probabilities: the expected calibration error, reliability diagrams and
temperature scaling.

A model is *calibrated* when, of the faces it labels with confidence 0.8, about 80 % are right.
Networks trained with cross-entropy are usually overconfident; one scalar fixes most of it
(Guo et al., "On Calibration of Modern Neural Networks", ICML 2017): the expression
probabilities become ``softmax(logits / T)``, with ``T`` chosen to minimise the negative
log-likelihood of held-out labels. Dividing every logit by the same ``T > 0`` never changes
which expression wins, so accuracy and F1 are untouched.

``T`` lives in the model's configuration (:attr:`AffectFPNConfig.expression_temperature`), so a
calibrated model is just a saved model: :class:`~affectfpn.inference.Predictor` and
:func:`~affectfpn.evaluation.evaluate` apply it. :func:`fit_temperature` finds it from
``(logits, labels)`` of one or more validation sets, each weighing the same (so a small
in-the-wild set counts as much as a large lab set); :func:`affectfpn.evaluation.calibrate`
does it for a model and datasets; ``affectfpn calibrate`` on the command line.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from affectfpn.errors import InputError

#: Bins of the expected calibration error and of the reliability diagram (equal width).
ECE_BINS = 15
#: The temperatures :func:`fit_temperature` searches between.
TEMPERATURE_RANGE = (0.05, 20.0)


@dataclass(frozen=True)
class Reliability:
    """Top-class confidence against accuracy, in equal-width confidence bins.

    Attributes:
        edges: ``bins + 1`` bin edges from 0 to 1.
        counts: samples whose top-class confidence falls in each bin.
        confidence: mean top-class confidence per bin (0 for an empty bin).
        accuracy: fraction of correct top-class predictions per bin (0 for an empty bin).
        ece: the expected calibration error: ``sum(counts / N * |accuracy - confidence|)``.
    """

    edges: np.ndarray
    counts: np.ndarray
    confidence: np.ndarray
    accuracy: np.ndarray
    ece: float


def reliability(
    probabilities: np.ndarray | torch.Tensor,
    labels: np.ndarray | torch.Tensor,
    *,
    bins: int = ECE_BINS,
) -> Reliability:
    """Bin the top-class confidence of ``probabilities`` (``N x C``) against ``labels`` (``N``).

    A confidence of exactly 1 falls in the last bin; bins are ``(lo, hi]`` otherwise, the first
    ``[0, hi]``.

    Raises:
        InputError: mismatched shapes, no sample, or ``bins < 1``.
    """
    p = np.asarray(
        probabilities.detach().cpu().numpy()
        if isinstance(probabilities, torch.Tensor)
        else probabilities,
        dtype=np.float64,
    )
    y = np.asarray(
        labels.detach().cpu().numpy() if isinstance(labels, torch.Tensor) else labels,
        dtype=np.int64,
    )
    if p.ndim != 2 or y.shape != (p.shape[0],):
        raise InputError(f"probabilities must be N x C and labels N, got {p.shape} and {y.shape}")
    if p.shape[0] == 0:
        raise InputError("no sample to measure calibration on")
    if bins < 1:
        raise InputError(f"bins must be at least 1, got {bins}")
    confidence = p.max(axis=1)
    correct = (p.argmax(axis=1) == y).astype(np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    index = np.clip(np.ceil(confidence * bins).astype(np.int64) - 1, 0, bins - 1)
    counts = np.bincount(index, minlength=bins).astype(np.int64)
    conf_sum = np.bincount(index, weights=confidence, minlength=bins)
    acc_sum = np.bincount(index, weights=correct, minlength=bins)
    safe = np.maximum(counts, 1)
    conf_mean = np.where(counts > 0, conf_sum / safe, 0.0)
    acc_mean = np.where(counts > 0, acc_sum / safe, 0.0)
    ece = float(np.sum(counts / counts.sum() * np.abs(acc_mean - conf_mean)))
    return Reliability(edges, counts, conf_mean, acc_mean, ece)


def expected_calibration_error(
    probabilities: np.ndarray | torch.Tensor,
    labels: np.ndarray | torch.Tensor,
    *,
    bins: int = ECE_BINS,
) -> float:
    """The expected calibration error of top-class confidence (``bins`` equal-width bins)."""
    return reliability(probabilities, labels, bins=bins).ece


def nll(logits: torch.Tensor, labels: torch.Tensor, temperature: float) -> float:
    """Mean negative log-likelihood of ``labels`` under ``softmax(logits / temperature)``."""
    return float(F.cross_entropy(logits / temperature, labels))


def fit_temperature(
    sets: Sequence[tuple[torch.Tensor, torch.Tensor]],
    *,
    bounds: tuple[float, float] = TEMPERATURE_RANGE,
) -> float:
    """The temperature that minimises the mean over ``sets`` of each set's negative
    log-likelihood (``softmax(logits / T)`` against the labels).

    Each set counts the same, whatever its size. The NLL is convex in ``1 / T``, so a
    golden-section search over ``log T`` finds the minimum to about 1e-6.

    Args:
        sets: ``(logits N x C, labels N)`` pairs (float and integer tensors).
        bounds: the range searched.

    Raises:
        InputError: no set, an empty set, or mismatched shapes.
    """
    if not sets:
        raise InputError("fit_temperature needs at least one (logits, labels) set")
    clean: list[tuple[torch.Tensor, torch.Tensor]] = []
    for logits, labels in sets:
        x = torch.as_tensor(logits).detach().double().cpu()
        y = torch.as_tensor(labels).detach().long().cpu()
        if x.ndim != 2 or y.shape != (x.shape[0],) or x.shape[0] == 0:
            raise InputError(
                f"each set must be logits N x C with labels N (N > 0), got {tuple(x.shape)} "
                f"and {tuple(y.shape)}"
            )
        clean.append((x, y))

    def loss(log_t: float) -> float:
        t = math.exp(log_t)
        return sum(nll(x, y, t) for x, y in clean) / len(clean)

    lo, hi = math.log(bounds[0]), math.log(bounds[1])
    ratio = (math.sqrt(5) - 1) / 2
    a, b = lo, hi
    c, d = b - ratio * (b - a), a + ratio * (b - a)
    fc, fd = loss(c), loss(d)
    for _ in range(80):
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - ratio * (b - a)
            fc = loss(c)
        else:
            a, c, fc = c, d, fd
            d = a + ratio * (b - a)
            fd = loss(d)
    return float(math.exp((a + b) / 2))


def plot_reliability(
    diagram: Reliability, path: Any, *, title: str = "Reliability (top-class confidence)"
) -> None:
    """Write a reliability diagram (PNG, needs matplotlib: ``pip install 'affectfpn[plot]'``)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise InputError(
            "a reliability diagram needs matplotlib: pip install 'affectfpn[plot]'"
        ) from None
    centers = (diagram.edges[:-1] + diagram.edges[1:]) / 2
    width = diagram.edges[1] - diagram.edges[0]
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    filled = diagram.counts > 0
    ax.bar(
        centers[filled],
        diagram.accuracy[filled],
        width=width * 0.95,
        color="tab:blue",
        edgecolor="black",
        label="accuracy",
    )
    ax.plot([0, 1], [0, 1], "--", color="grey", label="perfect calibration")
    ax.plot(
        centers[filled],
        diagram.confidence[filled],
        "_",
        color="tab:red",
        ms=12,
        mew=2,
        label="mean confidence",
    )
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.set_title(
        f"{title}\nECE {diagram.ece:.3f}, {int(diagram.counts.sum())} samples",
        fontsize=8,
        wrap=True,
    )
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
