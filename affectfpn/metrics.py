"""ABAW2 scoring: CCC, F1 and accuracy, the three challenge scores, and streaming meters.

Every function accepts numpy arrays, torch tensors (any device, with or without grad) or plain
Python sequences, and returns Python floats or float64 numpy arrays. All arithmetic is done in
float64 on the CPU.

Scores follow the ABAW2 rules (Kollias et al., 2021):

* valence/arousal: ``S_VA = (CCC_valence + CCC_arousal) / 2`` with
  ``CCC = 2 s_xy / (s_x^2 + s_y^2 + (mean_x - mean_y)^2)`` (population moments);
* expressions: ``S_EXPR = 0.67 * macro F1 + 0.33 * accuracy`` over the 7 classes;
* action units: ``S_AU = 0.5 * mean binary F1 over the 12 AUs + 0.5 * accuracy``, where the
  accuracy counts every one of the ``N x 12`` entries (not exact match).

Conventions:

* F1, precision and recall use scikit-learn's ``zero_division=0`` rule: a class (or AU) whose
  score would divide by zero scores 0. Macro F1 averages over *all* ``num_classes`` classes, also
  those absent from both predictions and targets (like ``f1_score(average="macro",
  labels=range(num_classes), zero_division=0)``).
* CCC never returns NaN: two constant series score 1.0 when they are equal and 0.0 otherwise; a
  constant series against a varying one scores 0.0. A series whose standard deviation is below
  ``1e-10`` times its mean magnitude counts as constant. No valid sample at all gives 0.0.
* Accuracy over no valid sample is 0.0.
* Masks mark valid labels (``True`` = use this entry). Values under a ``False`` mask are never
  read, so missing-label markers (-5, -1, NaN) may stay there.

Streaming meters (:class:`VAMeter`, :class:`ExpressionMeter`, :class:`AUMeter`,
:class:`MultiTaskMeter`) keep constant-size sufficient statistics (moments in float64 for CCC,
confusion counts for F1), can be merged, saved (``state_dict``) and summed over
``torch.distributed`` processes (``sync``). Their ``compute()`` keys are:

* :class:`VAMeter`: ``score``, ``ccc_valence``, ``ccc_arousal``, ``mse_valence``, ``mse_arousal``;
* :class:`ExpressionMeter`: ``score``, ``macro_f1``, ``accuracy``, ``f1_per_class``,
  ``precision_per_class``, ``recall_per_class`` (lists in class-index order);
* :class:`AUMeter`: ``score``, ``mean_f1``, ``accuracy``, ``f1_per_unit``,
  ``precision_per_unit``, ``recall_per_unit`` (lists in column order).
"""

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple, Self, TypeAlias

import numpy as np
import numpy.typing as npt
import torch

from affectfpn.errors import InputError
from affectfpn.labels import ACTION_UNITS, EXPRESSIONS, TASKS, VA_NAMES

__all__ = [
    "AUMeter",
    "ArrayLike",
    "ExpressionMeter",
    "MultiTaskMeter",
    "PerClassScores",
    "VAMeter",
    "abaw2_au_score",
    "abaw2_expression_score",
    "abaw2_va_score",
    "accuracy",
    "au_accuracy",
    "au_f1_per_unit",
    "au_score",
    "ccc",
    "confusion_matrix",
    "expression_score",
    "f1_per_class",
    "macro_f1",
    "precision_recall_f1_per_class",
    "va_ccc",
    "va_score",
]

logger = logging.getLogger(__name__)

#: Anything the metrics accept as an array: numpy array, torch tensor or nested Python sequence.
ArrayLike: TypeAlias = np.ndarray | torch.Tensor | Sequence[Any]

FloatArray: TypeAlias = npt.NDArray[np.float64]
IntArray: TypeAlias = npt.NDArray[np.int64]
BoolArray: TypeAlias = npt.NDArray[np.bool_]
MetricDict: TypeAlias = dict[str, float | list[float]]

_EXPR_F1_WEIGHT = 0.67
_EXPR_ACC_WEIGHT = 0.33
_AU_F1_WEIGHT = 0.5
_AU_ACC_WEIGHT = 0.5

#: Relative standard deviation below which a series counts as constant in CCC.
_CONST_RTOL = 1e-10
#: Number of moment statistics kept per VA dimension: n, mean_x, mean_y, m2_x, m2_y, c_xy.
_N_MOMENTS = 6


# --------------------------------------------------------------------------------------------
# Input conversion and validation
# --------------------------------------------------------------------------------------------


def _to_numpy(x: object, name: str) -> np.ndarray:
    """Return ``x`` as a numpy array (torch tensors are detached and copied to the CPU)."""
    if isinstance(x, torch.Tensor):
        t = x.detach()
        if t.dtype in (torch.bfloat16, torch.float16):
            t = t.float()
        return np.asarray(t.cpu().numpy())
    if isinstance(x, np.ndarray):
        arr = x
    else:
        try:
            arr = np.asarray(x)
        except (TypeError, ValueError) as exc:
            raise InputError(
                f"{name} must be a numpy array, torch tensor or sequence of numbers, "
                f"got {type(x).__name__}"
            ) from exc
    if arr.dtype.kind not in "biuf":
        raise InputError(
            f"{name} must hold numbers or booleans, got dtype {arr.dtype}; "
            "pass a numeric numpy array or torch tensor"
        )
    return arr


def _check_ndim(arr: np.ndarray, name: str, ndims: tuple[int, ...], expected: str) -> None:
    if arr.ndim not in ndims:
        raise InputError(f"{name} must have shape {expected}, got shape {tuple(arr.shape)}")


def _check_finite(arr: np.ndarray, name: str) -> None:
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise InputError(
            f"{name} contains NaN or infinite values at valid (unmasked) positions; "
            "remove them or mask them out with mask=False"
        )


def _as_mask(mask: ArrayLike | None, shape: tuple[int, ...], name: str = "mask") -> BoolArray:
    """Return a boolean mask of ``shape``; a 1-D mask ``[N]`` broadcasts over extra columns."""
    if mask is None:
        return np.ones(shape, dtype=bool)
    m = _to_numpy(mask, name)
    if m.dtype != np.bool_:
        if not np.isin(m, (0, 1)).all():
            raise InputError(f"{name} must be boolean (or hold only 0 and 1), got other values")
        m = m.astype(bool)
    if m.shape == shape:
        return m
    if len(shape) == 2 and m.shape == shape[:1]:
        return np.broadcast_to(m[:, None], shape)
    allowed = f"{shape}" if len(shape) == 1 else f"{shape} or {shape[:1]}"
    raise InputError(f"{name} must have shape {allowed}, got shape {tuple(m.shape)}")


def _int_labels(arr: np.ndarray, mask: BoolArray, name: str) -> IntArray:
    """Class indices as int64; float arrays must hold whole numbers at valid positions."""
    if arr.dtype.kind == "f":
        valid = arr[mask]
        _check_finite(valid, name)
        if not np.array_equal(valid, np.round(valid)):
            raise InputError(
                f"{name} must hold integer class indices, got fractional values; "
                "for scores or probabilities take argmax over the class axis first"
            )
        arr = np.where(mask, arr, 0.0)
    return arr.astype(np.int64)


def _label_pair(
    pred: ArrayLike,
    target: ArrayLike,
    mask: ArrayLike | None,
    names: tuple[str, str],
    num_classes: int | None = None,
) -> tuple[IntArray, IntArray, BoolArray]:
    """Validated ``(pred, target, mask)`` class indices ``[N]``.

    With ``num_classes`` given, ``pred`` may also be class scores ``[N, num_classes]`` (logits or
    probabilities), reduced by argmax.
    """
    pn, tn = names
    p = _to_numpy(pred, pn)
    t = _to_numpy(target, tn)
    if num_classes is not None and p.ndim == 2:
        if p.shape[1] != num_classes:
            raise InputError(
                f"{pn} has {p.shape[1]} class scores per sample, expected num_classes="
                f"{num_classes} (shape [N, {num_classes}])"
            )
    elif num_classes is not None:
        _check_ndim(p, pn, (1,), f"[N] (class indices) or [N, {num_classes}] (class scores)")
    else:
        _check_ndim(p, pn, (1,), "[N] (class indices)")
    _check_ndim(t, tn, (1,), "[N] (class indices)")
    _same_length(p, t, pn, tn)
    m = _as_mask(mask, (p.shape[0],))
    if p.ndim == 2:
        _check_finite(p[m], pn)
        p_labels = np.argmax(p, axis=1).astype(np.int64) if p.shape[0] else np.zeros(0, np.int64)
    else:
        p_labels = _int_labels(p, m, pn)
    return p_labels, _int_labels(t, m, tn), m


def _check_label_range(labels: IntArray, num_classes: int, name: str) -> None:
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise InputError(
            f"{name} holds class indices outside 0..{num_classes - 1} "
            f"(min {labels.min()}, max {labels.max()}); mask out missing labels with mask=False"
        )


def _check_num_classes(num_classes: int, name: str = "num_classes") -> int:
    if isinstance(num_classes, bool) or not isinstance(num_classes, int | np.integer):
        raise InputError(f"{name} must be a positive int, got {num_classes!r}")
    if num_classes < 1:
        raise InputError(f"{name} must be a positive int, got {num_classes}")
    return int(num_classes)


def _same_length(a: np.ndarray, b: np.ndarray, name_a: str, name_b: str) -> None:
    if a.shape[0] != b.shape[0]:
        raise InputError(
            f"{name_b} has {b.shape[0]} samples but {name_a} has {a.shape[0]}; "
            "both must describe the same samples"
        )


def _binary(x: ArrayLike, name: str, num_units: int | None = None) -> np.ndarray:
    """A ``[N, K]`` array of 0/1 values (bool, int or float)."""
    arr = _to_numpy(x, name)
    expected = "[N, K]" if num_units is None else f"[N, {num_units}]"
    _check_ndim(arr, name, (2,), expected)
    if num_units is not None and arr.shape[1] != num_units:
        raise InputError(f"{name} must have shape {expected}, got shape {tuple(arr.shape)}")
    return arr


def _check_binary_values(values: np.ndarray, name: str) -> None:
    if values.dtype != np.bool_ and not np.isin(values, (0, 1)).all():
        raise InputError(
            f"{name} must hold only 0/1 (or booleans) at valid positions; binarise "
            "probabilities first (e.g. probs > 0.5) or use AUMeter, which thresholds them"
        )


# --------------------------------------------------------------------------------------------
# CCC from float64 moments
# --------------------------------------------------------------------------------------------


def _moments(x: FloatArray, y: FloatArray) -> FloatArray:
    """``[n, mean_x, mean_y, m2_x, m2_y, c_xy]`` of two 1-D float64 series (two-pass, centred)."""
    n = x.shape[0]
    if n == 0:
        return np.zeros(_N_MOMENTS, dtype=np.float64)
    mx = float(x.mean())
    my = float(y.mean())
    dx = x - mx
    dy = y - my
    return np.array([n, mx, my, float(dx @ dx), float(dy @ dy), float(dx @ dy)], dtype=np.float64)


def _merge_moments(a: FloatArray, b: FloatArray) -> FloatArray:
    """Combine two moment vectors (Chan, Golub and LeVeque's pairwise update)."""
    na, nb = float(a[0]), float(b[0])
    if nb == 0:
        return a.copy()
    if na == 0:
        return b.copy()
    n = na + nb
    dx = float(b[1] - a[1])
    dy = float(b[2] - a[2])
    f = na * nb / n
    return np.array(
        [
            n,
            a[1] + dx * nb / n,
            a[2] + dy * nb / n,
            a[3] + b[3] + dx * dx * f,
            a[4] + b[4] + dy * dy * f,
            a[5] + b[5] + dx * dy * f,
        ],
        dtype=np.float64,
    )


def _is_constant(var: float, mean: float) -> bool:
    return var <= (_CONST_RTOL * abs(mean)) ** 2


def _ccc_from_moments(m: FloatArray) -> float:
    n = float(m[0])
    if n <= 0:
        return 0.0
    mx, my = float(m[1]), float(m[2])
    vx = max(float(m[3]) / n, 0.0)
    vy = max(float(m[4]) / n, 0.0)
    cxy = float(m[5]) / n
    const_x = _is_constant(vx, mx)
    const_y = _is_constant(vy, my)
    if const_x or const_y:
        same_mean = abs(mx - my) <= _CONST_RTOL * max(abs(mx), abs(my))
        return 1.0 if (const_x and const_y and same_mean) else 0.0
    value = 2.0 * cxy / (vx + vy + (mx - my) ** 2)
    return float(min(max(value, -1.0), 1.0))


def _mse_from_moments(m: FloatArray) -> float:
    n = float(m[0])
    if n <= 0:
        return 0.0
    mse = (m[3] + m[4] - 2.0 * m[5]) / n + (m[1] - m[2]) ** 2
    return max(float(mse), 0.0)


def _va_arrays(
    pred: ArrayLike, target: ArrayLike, mask: ArrayLike | None
) -> tuple[np.ndarray, np.ndarray, BoolArray]:
    p = _to_numpy(pred, "pred")
    t = _to_numpy(target, "target")
    _check_ndim(p, "pred", (2,), "[N, 2] (valence, arousal)")
    if p.shape[1] != 2:
        raise InputError(f"pred must have shape [N, 2] (valence, arousal), got {tuple(p.shape)}")
    if t.shape != p.shape:
        raise InputError(
            f"target must have the shape of pred {tuple(p.shape)} ([N, 2]), got {tuple(t.shape)}"
        )
    m = _as_mask(mask, p.shape)
    return p, t, m


def _va_moments(pred: ArrayLike, target: ArrayLike, mask: ArrayLike | None) -> FloatArray:
    """Moments ``[2, 6]`` (valence row, arousal row) of one batch."""
    p, t, m = _va_arrays(pred, target, mask)
    out = np.zeros((2, _N_MOMENTS), dtype=np.float64)
    for d in range(2):
        x = p[:, d][m[:, d]].astype(np.float64)
        y = t[:, d][m[:, d]].astype(np.float64)
        _check_finite(x, "pred")
        _check_finite(y, "target")
        out[d] = _moments(x, y)
    return out


# --------------------------------------------------------------------------------------------
# Count-based helpers
# --------------------------------------------------------------------------------------------


def _safe_div(num: np.ndarray, den: np.ndarray) -> FloatArray:
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    out = np.zeros(np.broadcast(num, den).shape, dtype=np.float64)
    np.divide(num, den, out=out, where=den > 0)
    return out


def _prf_from_counts(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> "PerClassScores":
    return PerClassScores(
        precision=_safe_div(tp, tp + fp),
        recall=_safe_div(tp, tp + fn),
        f1=_safe_div(2 * tp, 2 * tp + fp + fn),
    )


def _prf_from_confusion(cm: IntArray) -> "PerClassScores":
    tp = np.diag(cm)
    return _prf_from_counts(tp, cm.sum(axis=0) - tp, cm.sum(axis=1) - tp)


def _accuracy_from_confusion(cm: IntArray) -> float:
    total = int(cm.sum())
    return float(np.trace(cm)) / total if total else 0.0


def _confusion(
    pred_labels: IntArray,
    target_labels: IntArray,
    mask: BoolArray,
    num_classes: int,
    names: tuple[str, str] = ("pred_labels", "target_labels"),
) -> IntArray:
    p = pred_labels[mask]
    t = target_labels[mask]
    _check_label_range(t, num_classes, names[1])
    _check_label_range(p, num_classes, names[0])
    counts = np.bincount(t * num_classes + p, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes).astype(np.int64)


def _au_counts(pred: np.ndarray, target: np.ndarray, mask: BoolArray) -> IntArray:
    """Per-unit ``[K, 4]`` counts: true positives, false positives, false negatives, true negs."""
    p_pos = pred.astype(bool)
    t_pos = target.astype(bool)
    tp = (p_pos & t_pos & mask).sum(axis=0)
    fp = (p_pos & ~t_pos & mask).sum(axis=0)
    fn = (~p_pos & t_pos & mask).sum(axis=0)
    tn = (~p_pos & ~t_pos & mask).sum(axis=0)
    return np.stack([tp, fp, fn, tn], axis=1).astype(np.int64)


def _au_binary_counts(
    pred_binary: ArrayLike, target_binary: ArrayLike, mask: ArrayLike | None
) -> IntArray:
    p = _binary(pred_binary, "pred_binary")
    t = _binary(target_binary, "target_binary")
    if t.shape != p.shape:
        raise InputError(
            f"target_binary must have the shape of pred_binary {tuple(p.shape)}, "
            f"got {tuple(t.shape)}"
        )
    m = _as_mask(mask, p.shape)
    _check_binary_values(p[m], "pred_binary")
    _check_binary_values(t[m], "target_binary")
    return _au_counts(p, t, m)


def _au_metrics_from_counts(counts: IntArray) -> tuple["PerClassScores", float]:
    tp, fp, fn, tn = counts[:, 0], counts[:, 1], counts[:, 2], counts[:, 3]
    total = int(counts.sum())
    acc = float((tp + tn).sum()) / total if total else 0.0
    return _prf_from_counts(tp, fp, fn), acc


# --------------------------------------------------------------------------------------------
# Public one-shot functions
# --------------------------------------------------------------------------------------------


class PerClassScores(NamedTuple):
    """Per-class (or per-unit) precision, recall and F1, each a float64 array."""

    precision: FloatArray
    recall: FloatArray
    f1: FloatArray


def ccc(pred: ArrayLike, target: ArrayLike, mask: ArrayLike | None = None) -> float:
    """Concordance correlation coefficient of two 1-D series (ABAW definition).

    ``CCC = 2 s_xy / (s_x^2 + s_y^2 + (mean_x - mean_y)^2)`` with population (1/N) moments,
    computed in float64. Never NaN: see the module notes on constant series.

    Args:
        pred: predictions, shape ``[N]``.
        target: ground truth, shape ``[N]``.
        mask: optional boolean ``[N]``; ``False`` entries are ignored.

    Returns:
        The CCC in ``[-1, 1]``.

    Raises:
        InputError: on a shape mismatch or NaN/inf at a valid position.
    """
    x = _to_numpy(pred, "pred")
    y = _to_numpy(target, "target")
    _check_ndim(x, "pred", (1,), "[N]")
    _check_ndim(y, "target", (1,), "[N]")
    _same_length(x, y, "pred", "target")
    m = _as_mask(mask, x.shape)
    xs = x[m].astype(np.float64)
    ys = y[m].astype(np.float64)
    _check_finite(xs, "pred")
    _check_finite(ys, "target")
    return _ccc_from_moments(_moments(xs, ys))


def va_ccc(
    pred: ArrayLike, target: ArrayLike, mask: ArrayLike | None = None
) -> tuple[float, float]:
    """CCC of valence and of arousal.

    Args:
        pred: predictions ``[N, 2]`` (valence, arousal).
        target: ground truth ``[N, 2]``.
        mask: optional boolean ``[N]`` (per sample) or ``[N, 2]`` (per value).

    Returns:
        ``(ccc_valence, ccc_arousal)``.
    """
    mom = _va_moments(pred, target, mask)
    return _ccc_from_moments(mom[0]), _ccc_from_moments(mom[1])


def va_score(pred: ArrayLike, target: ArrayLike, mask: ArrayLike | None = None) -> float:
    """ABAW2 valence-arousal score: the mean of the valence CCC and the arousal CCC.

    Args:
        pred: predictions ``[N, 2]`` (valence, arousal).
        target: ground truth ``[N, 2]``.
        mask: optional boolean ``[N]`` (per sample) or ``[N, 2]`` (per value).

    Returns:
        ``(CCC_valence + CCC_arousal) / 2``; use :func:`va_ccc` for the two parts.
    """
    return abaw2_va_score(*va_ccc(pred, target, mask))


def confusion_matrix(
    pred_labels: ArrayLike,
    target_labels: ArrayLike,
    num_classes: int,
    mask: ArrayLike | None = None,
) -> IntArray:
    """Confusion counts, rows = true class, columns = predicted class (scikit-learn layout).

    Args:
        pred_labels: predicted class indices ``[N]``.
        target_labels: true class indices ``[N]``.
        num_classes: number of classes ``C``.
        mask: optional boolean ``[N]``; ``False`` samples are ignored.

    Returns:
        int64 array ``[C, C]``.

    Raises:
        InputError: on a bad shape or a class index outside ``0..C-1`` at a valid position.
    """
    c = _check_num_classes(num_classes)
    p, t, m = _label_pair(pred_labels, target_labels, mask, ("pred_labels", "target_labels"))
    return _confusion(p, t, m, c)


def accuracy(
    pred_labels: ArrayLike, target_labels: ArrayLike, mask: ArrayLike | None = None
) -> float:
    """Fraction of valid samples whose predicted class equals the true class (0.0 if none).

    Args:
        pred_labels: predicted class indices ``[N]``.
        target_labels: true class indices ``[N]``.
        mask: optional boolean ``[N]``; ``False`` samples are ignored.
    """
    p, t, m = _label_pair(pred_labels, target_labels, mask, ("pred_labels", "target_labels"))
    total = int(m.sum())
    return float((p[m] == t[m]).sum()) / total if total else 0.0


def precision_recall_f1_per_class(
    pred_labels: ArrayLike,
    target_labels: ArrayLike,
    num_classes: int,
    mask: ArrayLike | None = None,
) -> PerClassScores:
    """Per-class precision, recall and F1 with ``zero_division=0``.

    Args:
        pred_labels: predicted class indices ``[N]``.
        target_labels: true class indices ``[N]``.
        num_classes: number of classes ``C``.
        mask: optional boolean ``[N]``; ``False`` samples are ignored.

    Returns:
        :class:`PerClassScores` of three float64 arrays ``[C]``.
    """
    return _prf_from_confusion(confusion_matrix(pred_labels, target_labels, num_classes, mask))


def f1_per_class(
    pred_labels: ArrayLike,
    target_labels: ArrayLike,
    num_classes: int,
    mask: ArrayLike | None = None,
) -> FloatArray:
    """Per-class F1 ``[C]`` (``zero_division=0``); see :func:`precision_recall_f1_per_class`."""
    return precision_recall_f1_per_class(pred_labels, target_labels, num_classes, mask).f1


def macro_f1(
    pred_labels: ArrayLike,
    target_labels: ArrayLike,
    num_classes: int,
    mask: ArrayLike | None = None,
) -> float:
    """Unweighted mean of the per-class F1 over all ``num_classes`` classes.

    Classes absent from both predictions and targets count as F1 = 0, exactly like
    ``sklearn.metrics.f1_score(average="macro", labels=range(num_classes), zero_division=0)``.
    """
    return float(f1_per_class(pred_labels, target_labels, num_classes, mask).mean())


def au_f1_per_unit(
    pred_binary: ArrayLike, target_binary: ArrayLike, mask: ArrayLike | None = None
) -> FloatArray:
    """Binary F1 of each action-unit column (``zero_division=0``).

    Args:
        pred_binary: predicted 0/1 (or bool) ``[N, K]``.
        target_binary: true 0/1 (or bool) ``[N, K]``.
        mask: optional boolean ``[N, K]`` (per entry) or ``[N]`` (per sample).

    Returns:
        float64 array ``[K]``.
    """
    counts = _au_binary_counts(pred_binary, target_binary, mask)
    return _au_metrics_from_counts(counts)[0].f1


def au_accuracy(
    pred_binary: ArrayLike, target_binary: ArrayLike, mask: ArrayLike | None = None
) -> float:
    """Element-wise accuracy over all valid entries of ``[N, K]`` 0/1 arrays (0.0 if none)."""
    counts = _au_binary_counts(pred_binary, target_binary, mask)
    return _au_metrics_from_counts(counts)[1]


def abaw2_va_score(ccc_valence: float, ccc_arousal: float) -> float:
    """``(ccc_valence + ccc_arousal) / 2``."""
    return (float(ccc_valence) + float(ccc_arousal)) / 2.0


def abaw2_expression_score(f1: float, accuracy: float) -> float:
    """``0.67 * f1 + 0.33 * accuracy`` (ABAW2 expression leaderboard; any common scale)."""
    return _EXPR_F1_WEIGHT * float(f1) + _EXPR_ACC_WEIGHT * float(accuracy)


def abaw2_au_score(mean_f1: float, accuracy: float) -> float:
    """``0.5 * mean_f1 + 0.5 * accuracy`` (ABAW2 action-unit leaderboard; any common scale)."""
    return _AU_F1_WEIGHT * float(mean_f1) + _AU_ACC_WEIGHT * float(accuracy)


def expression_score(
    pred: ArrayLike,
    target: ArrayLike,
    mask: ArrayLike | None = None,
    num_classes: int = len(EXPRESSIONS),
) -> float:
    """ABAW2 expression score ``0.67 * macro F1 + 0.33 * accuracy``.

    Args:
        pred: predicted class indices ``[N]`` or class scores (logits or probabilities)
            ``[N, C]``, reduced by argmax.
        target: true class indices ``[N]``.
        mask: optional boolean ``[N]``; ``False`` samples are ignored.
        num_classes: number of classes ``C`` (7 for Aff-Wild2).
    """
    c = _check_num_classes(num_classes)
    p, t, m = _label_pair(pred, target, mask, ("pred", "target"), c)
    cm = _confusion(p, t, m, c, ("pred", "target"))
    f1 = float(_prf_from_confusion(cm).f1.mean())
    return abaw2_expression_score(f1, _accuracy_from_confusion(cm))


def au_score(
    pred_binary: ArrayLike, target_binary: ArrayLike, mask: ArrayLike | None = None
) -> float:
    """ABAW2 action-unit score ``0.5 * mean per-AU F1 + 0.5 * element-wise accuracy``.

    Args:
        pred_binary: predicted 0/1 (or bool) ``[N, K]``; threshold probabilities first, or use
            :class:`AUMeter`.
        target_binary: true 0/1 (or bool) ``[N, K]``.
        mask: optional boolean ``[N, K]`` (per entry) or ``[N]`` (per sample).
    """
    prf, acc = _au_metrics_from_counts(_au_binary_counts(pred_binary, target_binary, mask))
    return abaw2_au_score(float(prf.f1.mean()), acc)


# --------------------------------------------------------------------------------------------
# torch.distributed helpers
# --------------------------------------------------------------------------------------------


def _dist_world(group: Any) -> int:
    """World size of ``group`` when torch.distributed is initialised, else 1."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return 1
    return int(dist.get_world_size(group))


def _collective_device(group: Any) -> torch.device:
    import torch.distributed as dist

    backend = str(dist.get_backend(group)).lower()
    if "gloo" in backend or "mpi" in backend or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", torch.cuda.current_device())


def _all_reduce_sum(counts: IntArray, group: Any) -> IntArray:
    import torch.distributed as dist

    t = torch.from_numpy(np.ascontiguousarray(counts)).to(_collective_device(group))
    dist.all_reduce(t, op=dist.ReduceOp.SUM, group=group)
    return np.asarray(t.cpu().numpy(), dtype=np.int64)


def _all_gather(stats: FloatArray, group: Any) -> list[FloatArray]:
    import torch.distributed as dist

    device = _collective_device(group)
    t = torch.from_numpy(np.ascontiguousarray(stats)).to(device)
    parts = [torch.empty_like(t) for _ in range(dist.get_world_size(group))]
    dist.all_gather(parts, t, group=group)
    return [np.asarray(p.cpu().numpy(), dtype=np.float64) for p in parts]


def _state_tensor(state: Mapping[str, Any], key: str, shape: tuple[int, ...]) -> np.ndarray:
    if key not in state:
        raise InputError(f"state_dict lacks the key {key!r}; pass the output of state_dict()")
    arr = _to_numpy(state[key], f"state_dict[{key!r}]")
    if arr.shape != shape:
        raise InputError(
            f"state_dict[{key!r}] has shape {tuple(arr.shape)}, this meter expects {shape}; "
            "was it saved from a meter with another configuration?"
        )
    return arr


# --------------------------------------------------------------------------------------------
# Streaming meters
# --------------------------------------------------------------------------------------------


class _Meter:
    """Common behaviour of the streaming meters."""

    _synced: bool = False

    def _check_same(self, other: object) -> None:
        if type(other) is not type(self):
            raise InputError(
                f"other must be a {type(self).__name__} to merge, got {type(other).__name__}"
            )

    def _warn_if_synced(self) -> None:
        if self._synced:
            logger.warning(
                "%s.sync() called again without reset(): counts from other processes are "
                "now included twice",
                type(self).__name__,
            )
        self._synced = True


class VAMeter(_Meter):
    """Streaming CCC of valence and arousal (ABAW2 VA score).

    Keeps, per dimension, the count, the two means and the centred sums of squares and of cross
    products in float64 (merged with Chan et al.'s pairwise formulas), so memory is constant and
    merging is exact up to rounding.

    ``update(pred, target, mask=None)``: ``pred`` and ``target`` are ``[N, 2]`` (valence,
    arousal, already in the model's output range); ``mask`` is boolean ``[N]`` or ``[N, 2]``.

    ``compute()`` keys: ``score`` (mean of the two CCCs), ``ccc_valence``, ``ccc_arousal``,
    ``mse_valence``, ``mse_arousal``.
    """

    def __init__(self) -> None:
        self._moments = np.zeros((2, _N_MOMENTS), dtype=np.float64)

    def __repr__(self) -> str:
        return f"VAMeter(count={self.count})"

    @property
    def count(self) -> tuple[int, int]:
        """Valid (valence, arousal) values seen so far."""
        return int(self._moments[0, 0]), int(self._moments[1, 0])

    def update(self, pred: ArrayLike, target: ArrayLike, mask: ArrayLike | None = None) -> None:
        """Add a batch: ``pred``/``target`` ``[N, 2]``, ``mask`` boolean ``[N]`` or ``[N, 2]``."""
        batch = _va_moments(pred, target, mask)
        for d in range(2):
            self._moments[d] = _merge_moments(self._moments[d], batch[d])

    def compute(self) -> MetricDict:
        """Return ``score``, ``ccc_valence``, ``ccc_arousal``, ``mse_valence``, ``mse_arousal``."""
        cv = _ccc_from_moments(self._moments[0])
        ca = _ccc_from_moments(self._moments[1])
        out: MetricDict = {"score": abaw2_va_score(cv, ca)}
        out[f"ccc_{VA_NAMES[0]}"] = cv
        out[f"ccc_{VA_NAMES[1]}"] = ca
        out[f"mse_{VA_NAMES[0]}"] = _mse_from_moments(self._moments[0])
        out[f"mse_{VA_NAMES[1]}"] = _mse_from_moments(self._moments[1])
        return out

    def reset(self) -> None:
        """Forget everything seen so far."""
        self._moments[:] = 0.0
        self._synced = False

    def merge(self, other: "VAMeter") -> Self:
        """Add the statistics of ``other`` to this meter (in place) and return this meter."""
        self._check_same(other)
        for d in range(2):
            self._moments[d] = _merge_moments(self._moments[d], other._moments[d])
        return self

    def state_dict(self) -> dict[str, Any]:
        """Statistics as ``{"moments": float64 tensor [2, 6]}`` (columns: n, mean_pred,
        mean_target, centred sum of squares of pred and of target, centred cross product)."""
        return {"moments": torch.from_numpy(self._moments.copy())}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Replace the statistics with those of :meth:`state_dict`."""
        self._moments = _state_tensor(state, "moments", (2, _N_MOMENTS)).astype(np.float64)

    def sync(self, group: Any = None) -> Self:
        """Combine the statistics of all processes of ``group`` (in place; no-op when
        torch.distributed is not initialised). Call once on every process, after the last
        :meth:`update`; every process then holds the same totals."""
        if _dist_world(group) <= 1:
            return self
        self._warn_if_synced()
        parts = _all_gather(self._moments, group)
        total = np.zeros_like(self._moments)
        for part in parts:
            for d in range(2):
                total[d] = _merge_moments(total[d], part[d])
        self._moments = total
        return self


class ExpressionMeter(_Meter):
    """Streaming confusion matrix for the ABAW2 expression score.

    ``update(pred, target, mask=None)``: ``pred`` is class scores ``[N, C]`` (logits or
    probabilities; the argmax is taken, so either works) or predicted class indices ``[N]``;
    ``target`` is class indices ``[N]``; ``mask`` is boolean ``[N]``.

    ``compute()`` keys: ``score`` (0.67 * macro F1 + 0.33 * accuracy), ``macro_f1``,
    ``accuracy``, ``f1_per_class``, ``precision_per_class``, ``recall_per_class`` (lists of
    ``num_classes`` floats in class-index order, :data:`affectfpn.labels.EXPRESSIONS` for 7).

    Args:
        num_classes: number of classes ``C``.
    """

    def __init__(self, num_classes: int = len(EXPRESSIONS)) -> None:
        self.num_classes = _check_num_classes(num_classes)
        self._confusion = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)

    def __repr__(self) -> str:
        return f"ExpressionMeter(num_classes={self.num_classes}, count={self.count})"

    @property
    def count(self) -> int:
        """Valid samples seen so far."""
        return int(self._confusion.sum())

    @property
    def confusion(self) -> IntArray:
        """A copy of the confusion counts ``[C, C]`` (rows true class, columns prediction)."""
        return self._confusion.copy()

    def update(self, pred: ArrayLike, target: ArrayLike, mask: ArrayLike | None = None) -> None:
        """Add a batch: ``pred`` scores ``[N, C]`` or labels ``[N]``, ``target`` labels ``[N]``."""
        p, t, m = _label_pair(pred, target, mask, ("pred", "target"), self.num_classes)
        self._confusion += _confusion(p, t, m, self.num_classes, ("pred", "target"))

    def compute(self) -> MetricDict:
        """Return ``score``, ``macro_f1``, ``accuracy`` and per-class lists."""
        prf = _prf_from_confusion(self._confusion)
        f1 = float(prf.f1.mean())
        acc = _accuracy_from_confusion(self._confusion)
        return {
            "score": abaw2_expression_score(f1, acc),
            "macro_f1": f1,
            "accuracy": acc,
            "f1_per_class": prf.f1.tolist(),
            "precision_per_class": prf.precision.tolist(),
            "recall_per_class": prf.recall.tolist(),
        }

    def reset(self) -> None:
        """Forget everything seen so far."""
        self._confusion[:] = 0
        self._synced = False

    def merge(self, other: "ExpressionMeter") -> Self:
        """Add the counts of ``other`` to this meter (in place) and return this meter."""
        self._check_same(other)
        if other.num_classes != self.num_classes:
            raise InputError(
                f"other has num_classes={other.num_classes}, this meter {self.num_classes}"
            )
        self._confusion += other._confusion
        return self

    def state_dict(self) -> dict[str, Any]:
        """Counts as ``{"confusion": int64 tensor [C, C]}``."""
        return {"confusion": torch.from_numpy(self._confusion.copy())}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Replace the counts with those of :meth:`state_dict`."""
        shape = (self.num_classes, self.num_classes)
        self._confusion = _state_tensor(state, "confusion", shape).astype(np.int64)

    def sync(self, group: Any = None) -> Self:
        """Sum the counts of all processes of ``group`` (in place; no-op when torch.distributed
        is not initialised). Call once on every process, after the last :meth:`update`."""
        if _dist_world(group) <= 1:
            return self
        self._warn_if_synced()
        self._confusion = _all_reduce_sum(self._confusion, group)
        return self


class AUMeter(_Meter):
    """Streaming per-AU counts for the ABAW2 action-unit score.

    ``update(pred, target, mask=None)``: ``pred`` is ``[N, K]`` probabilities in ``[0, 1]``
    (default) or logits when the meter was built with ``from_logits=True``; a unit is predicted
    present when its probability is at or above ``threshold`` (as in ``predict``). ``target``
    is 0/1 (or bool) ``[N, K]``; ``mask`` is boolean ``[N, K]`` (per entry) or ``[N]`` (per sample).

    ``compute()`` keys: ``score`` (0.5 * mean F1 + 0.5 * accuracy), ``mean_f1``, ``accuracy``
    (over all valid ``N x K`` entries), ``f1_per_unit``, ``precision_per_unit``,
    ``recall_per_unit`` (lists of ``K`` floats in column order,
    :data:`affectfpn.labels.ACTION_UNITS` for 12).

    Args:
        num_units: number of AU columns ``K``.
        threshold: probability at or above which a unit counts as present, in ``(0, 1)``.
        from_logits: ``pred`` holds logits (as the model's ``.au`` output) instead of
            probabilities. With the default ``False``, values outside ``[0, 1]`` raise
            :class:`~affectfpn.errors.InputError`.
    """

    def __init__(
        self,
        num_units: int = len(ACTION_UNITS),
        threshold: float = 0.5,
        *,
        from_logits: bool = False,
    ) -> None:
        self.num_units = _check_num_classes(num_units, "num_units")
        if not (isinstance(threshold, int | float) and 0.0 < float(threshold) < 1.0):
            raise InputError(f"threshold must be a probability in (0, 1), got {threshold!r}")
        self.threshold = float(threshold)
        self.from_logits = bool(from_logits)
        self._counts = np.zeros((self.num_units, 4), dtype=np.int64)

    def __repr__(self) -> str:
        return (
            f"AUMeter(num_units={self.num_units}, threshold={self.threshold}, "
            f"from_logits={self.from_logits}, count={self.count})"
        )

    @property
    def count(self) -> int:
        """Valid ``(sample, unit)`` entries seen so far."""
        return int(self._counts.sum())

    @property
    def counts(self) -> IntArray:
        """A copy of the per-unit counts ``[K, 4]``: TP, FP, FN, TN."""
        return self._counts.copy()

    def update(self, pred: ArrayLike, target: ArrayLike, mask: ArrayLike | None = None) -> None:
        """Add a batch: ``pred`` probabilities (or logits) ``[N, K]``, ``target`` 0/1 ``[N, K]``."""
        p = _binary(pred, "pred", self.num_units)
        t = _binary(target, "target", self.num_units)
        if t.shape != p.shape:
            raise InputError(
                f"target must have the shape of pred {tuple(p.shape)}, got {tuple(t.shape)}"
            )
        m = _as_mask(mask, p.shape)
        valid = p[m]
        if valid.dtype.kind == "f":
            _check_finite(valid, "pred")
        if self.from_logits:
            cut = math.log(self.threshold) - math.log1p(-self.threshold)
            positive = p.astype(np.float64) >= cut
        else:
            if valid.size and (valid.min() < 0 or valid.max() > 1):
                raise InputError(
                    "pred holds values outside [0, 1], so they are not probabilities; "
                    "for logits build the meter with from_logits=True"
                )
            positive = p.astype(np.float64) >= self.threshold
        _check_binary_values(t[m], "target")
        self._counts += _au_counts(positive, t, m)

    def compute(self) -> MetricDict:
        """Return ``score``, ``mean_f1``, ``accuracy`` and per-unit lists."""
        prf, acc = _au_metrics_from_counts(self._counts)
        f1 = float(prf.f1.mean())
        return {
            "score": abaw2_au_score(f1, acc),
            "mean_f1": f1,
            "accuracy": acc,
            "f1_per_unit": prf.f1.tolist(),
            "precision_per_unit": prf.precision.tolist(),
            "recall_per_unit": prf.recall.tolist(),
        }

    def reset(self) -> None:
        """Forget everything seen so far."""
        self._counts[:] = 0
        self._synced = False

    def merge(self, other: "AUMeter") -> Self:
        """Add the counts of ``other`` to this meter (in place) and return this meter."""
        self._check_same(other)
        if other.num_units != self.num_units:
            raise InputError(f"other has num_units={other.num_units}, this meter {self.num_units}")
        self._counts += other._counts
        return self

    def state_dict(self) -> dict[str, Any]:
        """Counts as ``{"counts": int64 tensor [K, 4]}`` (TP, FP, FN, TN per unit)."""
        return {"counts": torch.from_numpy(self._counts.copy())}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Replace the counts with those of :meth:`state_dict`."""
        self._counts = _state_tensor(state, "counts", (self.num_units, 4)).astype(np.int64)

    def sync(self, group: Any = None) -> Self:
        """Sum the counts of all processes of ``group`` (in place; no-op when torch.distributed
        is not initialised). Call once on every process, after the last :meth:`update`."""
        if _dist_world(group) <= 1:
            return self
        self._warn_if_synced()
        self._counts = _all_reduce_sum(self._counts, group)
        return self


_AnyMeter: TypeAlias = VAMeter | ExpressionMeter | AUMeter


class MultiTaskMeter:
    """The three ABAW2 meters together, keyed by task name (``"va"``, ``"expression"``, ``"au"``).

    ``update(pred, target, mask=None)`` takes per-task predictions and targets:

    * ``pred``: a mapping ``{task: array or None}`` or any object with attributes ``va``,
      ``expression``, ``au`` (such as the model's ``AffectFPNOutput``); a task whose prediction
      is ``None`` or absent is skipped for this batch.
    * ``target``: a mapping ``{task: array}``, such as a collated training batch.
    * ``mask``: a mapping ``{task: boolean array}``; for a task it does not name, the mask is
      ``target[f"{task}_mask"]`` when present (the training-sample convention), else all valid.

    Each task's arrays follow its meter: :class:`VAMeter`, :class:`ExpressionMeter`,
    :class:`AUMeter` (probabilities unless ``au_from_logits=True``; the model's ``.au`` output
    is logits).

    ``compute()`` returns ``{task: that meter's compute()}``; :meth:`compute_flat` returns
    ``{"va/score": ..., "expression/macro_f1": ...}``.

    Args:
        tasks: which tasks to score, a subset of :data:`affectfpn.labels.TASKS`.
        num_classes: expression classes.
        num_units: action units.
        au_threshold: probability threshold for AU presence.
        au_from_logits: the AU predictions are logits.
    """

    def __init__(
        self,
        tasks: Sequence[str] = TASKS,
        *,
        num_classes: int = len(EXPRESSIONS),
        num_units: int = len(ACTION_UNITS),
        au_threshold: float = 0.5,
        au_from_logits: bool = False,
    ) -> None:
        if isinstance(tasks, str):
            tasks = (tasks,)
        unknown = [t for t in tasks if t not in TASKS]
        if unknown or not tasks:
            raise InputError(f"tasks must be a non-empty subset of {TASKS}, got {tuple(tasks)}")
        self.meters: dict[str, _AnyMeter] = {}
        for task in TASKS:
            if task not in tasks:
                continue
            if task == "va":
                self.meters[task] = VAMeter()
            elif task == "expression":
                self.meters[task] = ExpressionMeter(num_classes)
            else:
                self.meters[task] = AUMeter(num_units, au_threshold, from_logits=au_from_logits)

    def __repr__(self) -> str:
        return f"MultiTaskMeter({', '.join(repr(m) for m in self.meters.values())})"

    @property
    def tasks(self) -> tuple[str, ...]:
        """The scored tasks, in :data:`affectfpn.labels.TASKS` order."""
        return tuple(self.meters)

    def __getitem__(self, task: str) -> _AnyMeter:
        try:
            return self.meters[task]
        except KeyError:
            raise InputError(f"task {task!r} is not scored by this meter {self.tasks}") from None

    def update(
        self,
        pred: Mapping[str, Any] | object,
        target: Mapping[str, Any],
        mask: Mapping[str, Any] | None = None,
    ) -> None:
        """Add a batch; see the class docstring for the accepted inputs."""
        if isinstance(pred, Mapping):
            bad = [k for k in pred if k not in TASKS]
            if bad:
                raise InputError(f"pred has unknown task keys {bad}; use names from {TASKS}")
        for task, meter in self.meters.items():
            p = pred.get(task) if isinstance(pred, Mapping) else getattr(pred, task, None)
            if p is None:
                continue
            if task not in target:
                raise InputError(
                    f"target[{task!r}] is missing but pred has a {task!r} prediction; "
                    "pass the labels or drop the prediction"
                )
            m = None
            if mask is not None and task in mask:
                m = mask[task]
            elif f"{task}_mask" in target:
                m = target[f"{task}_mask"]
            meter.update(p, target[task], m)

    def compute(self) -> dict[str, MetricDict]:
        """Return ``{task: meter.compute()}`` for every scored task."""
        return {task: meter.compute() for task, meter in self.meters.items()}

    def compute_flat(self, sep: str = "/") -> MetricDict:
        """Return one flat dict with keys ``f"{task}{sep}{key}"``, e.g. ``"au/mean_f1"``."""
        return {
            f"{task}{sep}{key}": value
            for task, values in self.compute().items()
            for key, value in values.items()
        }

    def reset(self) -> None:
        """Reset every task meter."""
        for meter in self.meters.values():
            meter.reset()

    def merge(self, other: "MultiTaskMeter") -> Self:
        """Merge ``other`` task by task (both must score the same tasks); return this meter."""
        if not isinstance(other, MultiTaskMeter) or other.tasks != self.tasks:
            raise InputError(
                f"other must be a MultiTaskMeter scoring the tasks {self.tasks}, got {other!r}"
            )
        for task, meter in self.meters.items():
            meter.merge(other.meters[task])  # type: ignore[arg-type]
        return self

    def state_dict(self) -> dict[str, Any]:
        """``{task: that meter's state_dict()}``."""
        return {task: meter.state_dict() for task, meter in self.meters.items()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Load the output of :meth:`state_dict`; it must cover exactly the same tasks."""
        if set(state) != set(self.meters):
            raise InputError(
                f"state_dict covers the tasks {sorted(state)}, this meter {list(self.tasks)}"
            )
        for task, meter in self.meters.items():
            meter.load_state_dict(state[task])

    def sync(self, group: Any = None) -> Self:
        """Sync every task meter across the processes of ``group``; see :meth:`VAMeter.sync`."""
        for meter in self.meters.values():
            meter.sync(group)
        return self
