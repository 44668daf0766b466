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

One temperature cannot serve data on which the model is miscalibrated in opposite directions
(overconfident on one dataset, underconfident on another). A *per-face* temperature can:
:func:`fit_adaptive_temperature` fits ``log T(x) = w . standardize(z(x)) + b`` on the model's
pooled feature vector ``z`` (the model's own picture of the face, which tells the kinds of
faces apart), again by the negative log-likelihood with each set weighing the same and an L2
penalty on ``w``. The result, :class:`AdaptiveTemperature`, goes into the model as its
``calibrator`` (``AffectFPNConfig.adaptive_temperature``); a positive temperature per face still
never changes which expression wins.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from affectfpn.config import TEMPERATURE_LIMITS
from affectfpn.errors import InputError

logger = logging.getLogger(__name__)

#: Bins of the expected calibration error and of the reliability diagram (equal width).
ECE_BINS = 15
#: The temperatures :func:`fit_temperature` searches between (and the widest clamp range of a
#: per-face temperature).
TEMPERATURE_RANGE = TEMPERATURE_LIMITS
#: The L2 penalty on the weights of a per-face temperature (:func:`fit_adaptive_temperature`),
#: chosen among 1e-3, 1e-2 and 1e-1 by 5-fold cross-validated ECE on the default model's two
#: validation sets (docs/evaluation.md).
ADAPTIVE_L2 = 1e-3
#: Below this many labelled faces per feature, :func:`fit_adaptive_temperature` warns that the
#: per-face temperature may overfit (the default model's: 4,458 faces, 512 features).
ADAPTIVE_MIN_FACES_PER_FEATURE = 4


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


def _scaled(logits: torch.Tensor, temperature: float | torch.Tensor) -> torch.Tensor:
    """``logits / temperature``: one temperature, or one per face (``N`` or ``N x 1``)."""
    if isinstance(temperature, torch.Tensor):
        temperature = temperature.reshape(-1, 1).to(logits.dtype)
    return logits / temperature


def probabilities(logits: torch.Tensor, temperature: float | torch.Tensor) -> torch.Tensor:
    """``softmax(logits / temperature)``, with one temperature or one per face."""
    return _scaled(logits, temperature).softmax(1)


def nll(logits: torch.Tensor, labels: torch.Tensor, temperature: float | torch.Tensor) -> float:
    """Mean negative log-likelihood of ``labels`` under ``softmax(logits / temperature)`` (one
    temperature, or one per face)."""
    return float(F.cross_entropy(_scaled(logits, temperature), labels))


def ece_changes(report: Mapping[str, Mapping[str, float]]) -> str:
    """``"name before -> after, ..."``: the expected calibration errors of a calibration report
    (:func:`affectfpn.evaluation.calibrate`), for a log line."""
    return ", ".join(
        f"{name} {r['ece_before']:.3f} -> {r['ece_after']:.3f}" for name, r in report.items()
    )


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


@dataclass(frozen=True)
class AdaptiveTemperature:
    """A fitted per-face temperature: ``T = exp(clamp(weight . z + bias, log low, log high))``
    for a pooled feature vector ``z`` (the standardisation already folded into ``weight`` and
    ``bias``).

    Attributes:
        weight: ``D`` float64 weights over the features.
        bias: the log-temperature's intercept.
        temperature_range: ``(low, high)``: the least and greatest temperature it gave the faces
            it was fitted on (within :data:`TEMPERATURE_RANGE`), its clamp.
        single_temperature: the best single temperature on the same sets
            (:func:`fit_temperature`): the model's ``expression_temperature``, for readers
            that ignore the per-face one.
    """

    weight: torch.Tensor
    bias: float
    temperature_range: tuple[float, float]
    single_temperature: float

    def __call__(self, features: torch.Tensor) -> torch.Tensor:
        """The temperatures (``N``, float64) of ``N x D`` pooled features."""
        z = _features(features, self.weight.shape[0], "features")
        low, high = self.temperature_range
        return (z @ self.weight + self.bias).clamp(math.log(low), math.log(high)).exp()


def _features(features: Any, dim: int | None, what: str) -> torch.Tensor:
    z = torch.as_tensor(features).detach().double().cpu()
    if z.ndim != 2 or (dim is not None and z.shape[1] != dim):
        want = "N x D" if dim is None else f"N x {dim}"
        raise InputError(f"{what} must be {want} pooled features, got shape {tuple(z.shape)}")
    if not torch.isfinite(z).all():
        raise InputError(f"{what} hold NaN or infinite values")
    return z


def fit_adaptive_temperature(
    sets: Sequence[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
    *,
    l2: float = ADAPTIVE_L2,
    max_iter: int = 300,
    single_temperature: float | None = None,
) -> AdaptiveTemperature:
    """Fit a per-face temperature on ``(features, logits, labels)`` of one or more sets.

    The rule (chosen on the default model's validation sets by cross-validated ECE, the worse
    of FER2013 and lfw-expressions, against one global temperature, principal-component
    projections of the features, a dataset-classifier gate, per-predicted-class offsets, other
    objectives and other penalties; see docs/evaluation.md): standardise each feature by the
    mean and standard deviation over all the sets' faces, then minimise the mean over the sets
    of each set's negative log-likelihood of ``softmax(logits / T(x))`` plus ``l2 * |w|^2``
    over ``log T(x) = w . standardize(z) + b``, by L-BFGS from ``T = 1`` (float64). Each set
    counts the same, whatever its size. The returned weights fold the standardisation in; the
    clamp range is the least and greatest temperature of the sets' faces.

    Args:
        sets: ``(features N x D, logits N x C, labels N)`` triples: the model's pooled
            features (:meth:`AffectFPN.forward_features <affectfpn.AffectFPN.forward_features>`),
            its raw expression logits and the labels.
        l2: the penalty on the weights (``>= 0``).
        max_iter: L-BFGS iterations at most.
        single_temperature: the best single temperature on the same sets, when already known
            (else it is fitted here).

    Raises:
        InputError: no set, an empty set, mismatched shapes, sets of different feature
            lengths, non-finite values, or a bad ``l2`` / ``max_iter``.
    """
    if not sets:
        raise InputError(
            "fit_adaptive_temperature needs at least one (features, logits, labels) set"
        )
    if isinstance(l2, bool) or not isinstance(l2, int | float) or not l2 >= 0:
        raise InputError(f"l2 must be a number >= 0, got {l2!r}")
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
        raise InputError(f"max_iter must be a positive integer, got {max_iter!r}")
    clean: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
    dim: int | None = None
    for i, item in enumerate(sets):
        if not isinstance(item, tuple | list) or len(item) != 3:
            raise InputError(f"set {i} must be a (features, logits, labels) triple")
        z = _features(item[0], dim, f"set {i}'s features")
        dim = z.shape[1]
        x = torch.as_tensor(item[1]).detach().double().cpu()
        y = torch.as_tensor(item[2]).detach().long().cpu()
        n = z.shape[0]
        if n == 0 or x.ndim != 2 or x.shape[0] != n or y.shape != (n,):
            raise InputError(
                f"set {i} must be features N x D, logits N x C and labels N (N > 0), got "
                f"{tuple(z.shape)}, {tuple(x.shape)} and {tuple(y.shape)}"
            )
        if not torch.isfinite(x).all():
            raise InputError(f"set {i}'s logits hold NaN or infinite values")
        if y.min() < 0 or y.max() >= x.shape[1]:
            raise InputError(f"set {i}'s labels must be class indices 0..{x.shape[1] - 1}")
        clean.append((z, x, y))
    pooled = torch.cat([z for z, _, _ in clean])
    if pooled.shape[0] < ADAPTIVE_MIN_FACES_PER_FEATURE * pooled.shape[1]:
        logger.warning(
            "a per-face temperature from %d features fitted on only %d labelled faces may "
            "overfit them (the default model's was fitted on 4,458 faces for 512 features); "
            "below %d faces, prefer the single temperature (affectfpn calibrate without "
            "--adaptive)",
            pooled.shape[1],
            pooled.shape[0],
            ADAPTIVE_MIN_FACES_PER_FEATURE * pooled.shape[1],
        )
    mean = pooled.mean(0)
    std = pooled.std(0) + 1e-6 if pooled.shape[0] > 1 else torch.ones_like(mean)
    standard = [((z - mean) / std, x, y) for z, x, y in clean]
    w = torch.zeros(pooled.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimiser = torch.optim.LBFGS([w, b], max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimiser.zero_grad()
        loss = (
            sum(
                (F.cross_entropy(x / torch.exp(p @ w + b).unsqueeze(1), y) for p, x, y in standard),
                torch.zeros((), dtype=torch.float64),
            )
            / len(standard)
            + l2 * (w**2).sum()
        )
        loss.backward()
        return loss

    with torch.enable_grad():
        optimiser.step(closure)
    weight = (w.detach() / std).contiguous()
    bias = float(b.detach() - (w.detach() * mean / std).sum())
    log_t = pooled @ weight + bias
    if not torch.isfinite(log_t).all():
        raise InputError("the per-face temperature did not converge (non-finite values)")
    low = min(max(float(log_t.min().exp()), TEMPERATURE_RANGE[0]), TEMPERATURE_RANGE[1])
    high = max(min(float(log_t.max().exp()), TEMPERATURE_RANGE[1]), low)
    if single_temperature is None:
        single_temperature = fit_temperature([(x, y) for _, x, y in clean])
    return AdaptiveTemperature(weight, bias, (low, high), float(single_temperature))
