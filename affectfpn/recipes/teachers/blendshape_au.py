"""The blendshape -> action-unit mapping: :data:`BLENDSHAPE_AU_MAP` and the tables it gives.

MediaPipe's blendshapes are ARKit-style movement coefficients, not FACS action units: each
:class:`AUMapping` reads one unit from one or a few shapes, and calibrates the combined score
into a probability. The mapping was chosen and calibrated on FER2013 ``train`` against the AUs
its expression labels imply (:data:`~affectfpn.recipes.teachers.calibration.EXPRESSION_IMPLIED_AUS`,
:func:`~affectfpn.recipes.teachers.calibration.fit_calibration`) and measured on ``val``
(``docs/action-units.md``). :func:`blendshape_table` turns blendshape scores into the
:class:`~affectfpn.recipes.datasets.LabelTable` the teacher-student pipeline consumes: a unit
that is not labelled, and every unit of a face that was not found, is masked.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from affectfpn.data.common import NUM_AUS
from affectfpn.data.pseudo import LabelTable
from affectfpn.errors import ConfigError
from affectfpn.labels import ACTION_UNITS
from affectfpn.recipes.blendshapes import BLENDSHAPE_NAMES
from affectfpn.recipes.teachers.blendshape_scores import BlendshapeScores, read_blendshape_csv

__all__ = [
    "BLENDSHAPE_AU_MAP",
    "CLIP_EPS",
    "AUMapping",
    "au_probabilities",
    "blendshape_table",
    "kept_units",
    "mapping_by_au",
]

#: Blendshape scores are clipped to [CLIP_EPS, 1 - CLIP_EPS] before their logit is taken.
CLIP_EPS = 1e-6


@dataclass(frozen=True)
class AUMapping:
    """How one action unit is read from blendshapes.

    ``raw = combine(blendshapes)`` (``"mean"`` of the listed shapes, usually the left and right
    one, or ``"max"``), then ``p = sigmoid(slope * logit(raw) + intercept)`` with ``raw``
    clipped to [1e-6, 1 - 1e-6]. ``kept``: whether the unit measured something on FER2013
    ``val`` (see ``docs/action-units.md``); units not kept are never labelled by default.
    """

    au: str
    blendshapes: tuple[str, ...]
    combine: str = "mean"
    slope: float = 1.0
    intercept: float = 0.0
    kept: bool = True
    note: str = ""

    def __post_init__(self) -> None:
        if self.au not in ACTION_UNITS:
            raise ConfigError(f"{self.au!r} is not one of {list(ACTION_UNITS)}")
        unknown = [b for b in self.blendshapes if b not in BLENDSHAPE_NAMES]
        if not self.blendshapes or unknown:
            raise ConfigError(f"{self.au}: unknown blendshape(s) {unknown or '(none)'}")
        if self.combine not in ("mean", "max"):
            raise ConfigError(f"{self.au}: combine must be 'mean' or 'max', got {self.combine!r}")
        if not (math.isfinite(self.slope) and self.slope > 0 and math.isfinite(self.intercept)):
            raise ConfigError(f"{self.au}: the calibration needs a positive finite slope")

    def raw(self, scores: BlendshapeScores | np.ndarray) -> np.ndarray:
        """float32 [N]: the combined blendshape score (NaN where no face was found)."""
        table = scores.scores if isinstance(scores, BlendshapeScores) else np.asarray(scores)
        cols = table[:, [BLENDSHAPE_NAMES.index(b) for b in self.blendshapes]]
        out = cols.mean(axis=1) if self.combine == "mean" else cols.max(axis=1)
        return out.astype(np.float32)

    def probability(self, raw: np.ndarray) -> np.ndarray:
        """float32 [N]: the calibrated probability of a combined score (NaN stays NaN)."""
        x = np.clip(np.asarray(raw, np.float64), CLIP_EPS, 1 - CLIP_EPS)
        z = self.slope * np.log(x / (1 - x)) + self.intercept
        return (1 / (1 + np.exp(-z))).astype(np.float32)


#: The blendshape -> AU mapping. Shapes were chosen by their FACS meaning and checked on
#: FER2013 ``train``; the calibration (slope, intercept) is a class-balanced logistic fit on
#: ``train`` faces against the expression-implied labels of
#: :data:`~affectfpn.recipes.teachers.calibration.EXPRESSION_IMPLIED_AUS`
#: (:func:`~affectfpn.recipes.teachers.calibration.fit_calibration`), so p = 0.5 where the score
#: is equally likely under "implied present" and "implied absent". ``kept``: ROC AUC >= 0.75 on
#: ``val`` against those labels (AU1, AU2, AU12, AU26); the weak units stay in the table,
#: measured, and can be asked for with ``units=``. AU24 has no blendshape counterpart and is
#: always masked.
BLENDSHAPE_AU_MAP: tuple[AUMapping, ...] = (
    AUMapping(
        "AU1", ("browInnerUp",), slope=0.4624, intercept=0.8722,
        note="inner brow raiser; val AUC 0.80",
    ),
    AUMapping(
        "AU2", ("browOuterUpLeft", "browOuterUpRight"), slope=0.6035, intercept=0.6713,
        note="outer brow raiser; val AUC 0.78",
    ),
    AUMapping(
        "AU4", ("browDownLeft", "browDownRight"), slope=0.2257, intercept=0.8374, kept=False,
        note="brow lowerer; weak: val AUC 0.67",
    ),
    AUMapping(
        "AU6", ("cheekSquintLeft", "cheekSquintRight"), slope=1.0928, intercept=14.6214,
        kept=False, note="cheek raiser; flat: the shape stays below 1e-4 on FER2013",
    ),
    AUMapping(
        "AU7", ("eyeSquintLeft", "eyeSquintRight"), slope=0.6679, intercept=0.8519, kept=False,
        note="lid tightener; weak: val AUC 0.72",
    ),
    AUMapping(
        "AU10", ("mouthUpperUpLeft", "mouthUpperUpRight"), slope=0.2269, intercept=1.3891,
        kept=False, note="upper lip raiser; weak: val AUC 0.66",
    ),
    AUMapping(
        "AU12", ("mouthSmileLeft", "mouthSmileRight"), slope=0.4586, intercept=1.4108,
        note="lip corner puller; val AUC 0.91",
    ),
    AUMapping(
        "AU15", ("mouthFrownLeft", "mouthFrownRight"), slope=0.1208, intercept=0.7064,
        kept=False, note="lip corner depressor; val AUC 0.59",
    ),
    AUMapping(
        "AU23", ("mouthPressLeft", "mouthPressRight"), slope=1.0, intercept=0.0, kept=False,
        note="lip tightener; inverted: val AUC 0.43, left uncalibrated",
    ),
    AUMapping(
        "AU25", ("jawOpen", "mouthLowerDownLeft", "mouthLowerDownRight"), slope=0.4231,
        intercept=1.5524, kept=False, note="lips part; weak: val AUC 0.73",
    ),
    AUMapping(
        "AU26", ("jawOpen",), slope=0.6993, intercept=2.0933,
        note="jaw drop; val AUC 0.88",
    ),
)  # fmt: skip


def mapping_by_au(mapping: Iterable[AUMapping] = BLENDSHAPE_AU_MAP) -> dict[str, AUMapping]:
    """``{AU name: AUMapping}``; raises :class:`ConfigError` on an AU listed twice."""
    out: dict[str, AUMapping] = {}
    for m in mapping:
        if m.au in out:
            raise ConfigError(f"{m.au} is mapped twice")
        out[m.au] = m
    return out


def kept_units(mapping: Iterable[AUMapping] = BLENDSHAPE_AU_MAP) -> list[str]:
    """The AUs a mapping labels by default (``kept``), in ACTION_UNITS order."""
    kept = {m.au for m in mapping if m.kept}
    return [au for au in ACTION_UNITS if au in kept]


def au_probabilities(
    scores: BlendshapeScores,
    mapping: Iterable[AUMapping] = BLENDSHAPE_AU_MAP,
    units: Sequence[str] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """``(probs float32 [N, 12], mask bool [N, 12])`` in ACTION_UNITS order.

    ``units``: the AUs to label (default: the mapping's kept ones); the mask is False for every
    other unit and for every unit of a face that was not found.

    Raises:
        ConfigError: a unit that is not in the mapping.
    """
    table = mapping_by_au(mapping)
    units = kept_units(table.values()) if units is None else list(units)
    unmapped = [u for u in units if u not in table]
    if unmapped:
        raise ConfigError(f"no blendshape mapping for {unmapped}; mapped: {sorted(table)}")
    n = len(scores)
    probs = np.zeros((n, NUM_AUS), np.float32)
    mask = np.zeros((n, NUM_AUS), bool)
    for au in units:
        j = ACTION_UNITS.index(au)
        p = table[au].probability(table[au].raw(scores))
        ok = scores.found & np.isfinite(p)
        probs[ok, j], mask[ok, j] = p[ok], True
    return probs, mask


def blendshape_table(
    scores: BlendshapeScores | str | os.PathLike[str],
    *,
    mapping: Iterable[AUMapping] = BLENDSHAPE_AU_MAP,
    units: Sequence[str] | None = None,
    key_prefix: str = "",
    drop_unfound: bool = False,
) -> LabelTable:
    """A soft-AU :class:`LabelTable` from blendshape scores (or their CSV).

    Args:
        scores: :class:`BlendshapeScores` or the path of a ``blendshapes.py`` CSV.
        mapping: the blendshape -> AU mapping.
        units: the AUs to label (default: the mapping's kept ones); others are masked.
        key_prefix: prepended to every key (e.g. ``"fer2013:"`` when the recipe's training
            data is a named part of a mixed dataset).
        drop_unfound: leave out images without a face instead of keeping them with no label.
    """
    if not isinstance(scores, BlendshapeScores):
        scores = read_blendshape_csv(scores)
    probs, mask = au_probabilities(scores, mapping, units)
    keys = [f"{key_prefix}{k}" for k in scores.keys]
    if drop_unfound:
        rows = np.flatnonzero(scores.found)
        keys, probs, mask = [keys[i] for i in rows], probs[rows], mask[rows]
    return LabelTable.from_arrays(keys, au=probs, au_mask=mask)
