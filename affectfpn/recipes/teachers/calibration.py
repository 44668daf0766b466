"""Calibrating and measuring the blendshape -> AU mapping against expression-implied labels.

No open data set here has AU labels, so the mapping is fitted and measured against weak labels:
the AUs that FER2013's expression labels imply (:data:`EXPRESSION_IMPLIED_AUS`, after the EMFACS
prototypes). :func:`fit_calibration` refits each unit's (slope, intercept) on training faces;
:func:`evaluate_mapping` gives each unit's ROC AUC (:func:`roc_auc`) and active shares on other
faces; :func:`format_evaluation` prints them as a Markdown table.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from affectfpn.data.pseudo import dataset_keys, dataset_label_arrays
from affectfpn.errors import ConfigError
from affectfpn.labels import EXPRESSIONS
from affectfpn.recipes.teachers.blendshape_au import (
    BLENDSHAPE_AU_MAP,
    CLIP_EPS,
    AUMapping,
    mapping_by_au,
)
from affectfpn.recipes.teachers.blendshape_scores import BlendshapeScores

__all__ = [
    "EXPRESSION_IMPLIED_AUS",
    "evaluate_mapping",
    "fit_calibration",
    "folder_expressions",
    "format_evaluation",
    "implied_labels",
    "roc_auc",
]

#: For each AU, the FER2013 expressions that imply it (positives) and those that imply its
#: absence (negatives), after the EMFACS prototypes; other expressions are left out of its
#: measurement. Weak labels: an angry face need not lower its brows in every photo.
EXPRESSION_IMPLIED_AUS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "AU1": (("Surprise",), ("Neutral", "Happiness", "Anger", "Disgust")),
    "AU2": (("Surprise",), ("Neutral", "Happiness", "Anger", "Disgust", "Sadness")),
    "AU4": (("Anger",), ("Neutral", "Happiness", "Surprise")),
    "AU6": (("Happiness",), ("Neutral", "Surprise", "Anger", "Fear")),
    "AU7": (("Anger",), ("Neutral", "Surprise")),
    "AU10": (("Disgust",), ("Neutral", "Surprise", "Sadness", "Fear")),
    "AU12": (("Happiness",), ("Neutral", "Anger", "Disgust", "Fear", "Sadness", "Surprise")),
    "AU15": (("Sadness",), ("Neutral", "Happiness", "Surprise", "Anger")),
    "AU23": (("Anger",), ("Neutral", "Happiness", "Surprise")),
    "AU24": (("Anger",), ("Neutral", "Happiness", "Surprise")),
    "AU25": (("Surprise", "Fear"), ("Neutral", "Sadness")),
    "AU26": (("Surprise",), ("Neutral", "Sadness")),
}


def implied_labels(au: str, expressions: np.ndarray) -> np.ndarray:
    """float32 [N]: 1 where the expression implies ``au``, 0 where it implies its absence, NaN
    where it says nothing (or the expression index is negative: no label)."""
    if au not in EXPRESSION_IMPLIED_AUS:
        raise ConfigError(f"no expression-implied labels for {au}")
    pos, neg = EXPRESSION_IMPLIED_AUS[au]
    e = np.asarray(expressions, np.int64)
    out = np.full(e.shape, np.nan, np.float32)
    out[np.isin(e, [EXPRESSIONS.index(x) for x in pos])] = 1.0
    out[np.isin(e, [EXPRESSIONS.index(x) for x in neg])] = 0.0
    return out


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve (ties count half); NaN without both classes."""
    s = np.asarray(scores, np.float64)
    y = np.asarray(labels).astype(bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return math.nan
    order = np.argsort(s, kind="mergesort")
    sorted_s = s[order]
    ranks = np.empty(len(s), np.float64)
    # average 1-based ranks over runs of equal scores
    starts = np.flatnonzero(np.r_[True, sorted_s[1:] != sorted_s[:-1]])
    ends = np.r_[starts[1:], len(s)]
    for a, b in zip(starts, ends, strict=True):
        ranks[order[a:b]] = (a + 1 + b) / 2
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _logistic_fit(x: np.ndarray, y: np.ndarray, iterations: int = 50) -> tuple[float, float]:
    """Class-balanced 1-D logistic regression (Newton), tiny L2; returns (slope, intercept)."""
    w = np.where(y > 0.5, 0.5 / max(y.sum(), 1), 0.5 / max((1 - y).sum(), 1))
    theta = np.zeros(2)
    design = np.stack([x, np.ones_like(x)], axis=1)
    for _ in range(iterations):
        p = 1 / (1 + np.exp(-(design @ theta)))
        grad = design.T @ (w * (p - y)) + 1e-6 * theta
        hess = (design * (w * p * (1 - p))[:, None]).T @ design + 1e-6 * np.eye(2)
        step = np.linalg.solve(hess, grad)
        theta -= step
        if np.abs(step).max() < 1e-10:
            break
    return float(theta[0]), float(theta[1])


def fit_calibration(
    scores: BlendshapeScores,
    expressions: np.ndarray,
    mapping: Iterable[AUMapping] = BLENDSHAPE_AU_MAP,
) -> tuple[AUMapping, ...]:
    """Refit every unit's (slope, intercept) on these faces' expression-implied labels.

    Use training images only. A unit whose fitted slope is not positive keeps its old
    calibration. ``expressions``: int [N] in EXPRESSIONS order, -1 for none.
    """
    out = []
    for m in mapping:
        y = implied_labels(m.au, expressions)
        raw = m.raw(scores)
        ok = scores.found & np.isfinite(y) & np.isfinite(raw)
        if ok.sum() < 2 or len(np.unique(y[ok])) < 2:
            out.append(m)
            continue
        x = np.clip(raw[ok].astype(np.float64), CLIP_EPS, 1 - CLIP_EPS)
        slope, intercept = _logistic_fit(np.log(x / (1 - x)), y[ok].astype(np.float64))
        out.append(dataclasses.replace(m, slope=slope, intercept=intercept) if slope > 0 else m)
    return tuple(out)


def evaluate_mapping(
    scores: BlendshapeScores,
    expressions: np.ndarray,
    mapping: Iterable[AUMapping] = BLENDSHAPE_AU_MAP,
) -> dict[str, dict[str, float]]:
    """Per mapped AU, on the faces found: ROC AUC of the score against the expression-implied
    labels, the numbers of positives and negatives, and the share of positives / negatives
    with probability >= 0.5 (``active_pos`` / ``active_neg``), plus the score's 99th
    percentile (``p99``: a shape that never moves is flat)."""
    result: dict[str, dict[str, float]] = {}
    for m in mapping:
        y = implied_labels(m.au, expressions)
        raw = m.raw(scores)
        ok = scores.found & np.isfinite(y)
        prob = m.probability(raw[ok])
        yy = y[ok] > 0.5
        found_raw = raw[scores.found]
        result[m.au] = {
            "auc": roc_auc(raw[ok], yy),
            "n_pos": int(yy.sum()),
            "n_neg": int((~yy).sum()),
            "active_pos": float((prob[yy] >= 0.5).mean()) if yy.any() else math.nan,
            "active_neg": float((prob[~yy] >= 0.5).mean()) if (~yy).any() else math.nan,
            "p99": float(np.percentile(found_raw, 99)) if found_raw.size else math.nan,
        }
    return result


def folder_expressions(keys: Sequence[str], root: str | os.PathLike[str]) -> np.ndarray:
    """int64 [N]: the expression label (EXPRESSIONS index) of each key in the image folder
    ``root`` (class folders, read by :class:`~affectfpn.recipes.datasets.ImageFolderExpressions`);
    -1 for a key that is not in the folder or has no label."""
    from affectfpn.data import ImageFolderExpressions

    data = ImageFolderExpressions(root)
    labels = dataset_label_arrays(data)
    pos = {k: i for i, k in enumerate(dataset_keys(data))}
    out = np.full(len(keys), -1, np.int64)
    for i, k in enumerate(keys):
        j = pos.get(k)
        if j is not None and labels.expression_mask[j]:
            out[i] = labels.expression[j]
    return out


def format_evaluation(
    result: Mapping[str, Mapping[str, float]], mapping: Iterable[AUMapping]
) -> str:
    """A Markdown table of :func:`evaluate_mapping`'s result."""
    by_au = mapping_by_au(mapping)
    lines = [
        "| AU | blendshapes | implied by | vs | AUC | active pos | active neg | p99 | kept |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for au, r in result.items():
        m = by_au[au]
        pos, neg = EXPRESSION_IMPLIED_AUS[au]
        lines.append(
            f"| {au} | {' + '.join(m.blendshapes)} ({m.combine}) | {', '.join(pos)} "
            f"({r['n_pos']}) | {', '.join(neg)} ({r['n_neg']}) | {r['auc']:.3f} | "
            f"{r['active_pos']:.2f} | {r['active_neg']:.2f} | {r['p99']:.2g} | "
            f"{'yes' if m.kept else 'no'} |"
        )
    return "\n".join(lines)
