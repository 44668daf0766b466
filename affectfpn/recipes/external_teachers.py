"""Pseudo labels from teachers outside affectfpn: MediaPipe blendshapes, OpenFace 2.0, label CSVs.

Every converter returns a :class:`~affectfpn.recipes.datasets.LabelTable`, the table the
teacher-student pipeline consumes: soft AU probabilities with a per-unit mask. A unit the teacher
does not measure, and every unit of a face the teacher did not find, is masked (no label), never
"absent".

* **MediaPipe blendshapes** (:func:`run_blendshape_teacher`, :func:`blendshape_table`): the Face
  Landmarker's 52 blendshape scores, written by ``affectfpn/recipes/blendshapes.py`` run in a
  separate Python environment that has ``mediapipe`` (affectfpn itself never imports it), and
  turned into AU probabilities by the explicit mapping :data:`BLENDSHAPE_AU_MAP`.
  Blendshapes are ARKit-style movement coefficients, not FACS action units: the mapping was
  chosen and calibrated on FER2013 ``train`` against the AUs its expression labels imply
  (:data:`EXPRESSION_IMPLIED_AUS`) and measured on ``val`` (``docs/action-units.md``).
* **OpenFace 2.0** (:func:`openface_table`): the ``AUxx_c`` presence columns of a
  FeatureExtraction CSV, keyed ``<video>/<frame:05d>`` like Aff-Wild2 frames.
* **Any labelled dataset or label CSV** the recipes read (:func:`table_from_dataset`,
  :func:`label_csv_table`): its AU labels and masks as they are, by the dataset's own keys.

Command line (``python -m affectfpn.recipes.external_teachers --help``)::

    python -m affectfpn.recipes.external_teachers blendshapes --root ../shared/data/fer2013/val \\
        --out runs/au-pseudo/blendshapes-val.csv --python .mpvenv/bin/python
    python -m affectfpn.recipes.external_teachers table \\
        --scores runs/au-pseudo/blendshapes-val.csv --out runs/au-pseudo/val.csv
    python -m affectfpn.recipes.external_teachers evaluate \\
        --scores runs/au-pseudo/blendshapes-val.csv --root ../shared/data/fer2013/val
    python -m affectfpn.recipes.external_teachers agreement --model runs/mt-s0/best \\
        --root ../shared/data/fer2013/test --table runs/au-pseudo/test.csv

A student trained on these tables is measured against its teacher with
:func:`student_agreement` (the ``agreement`` command).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import math
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from affectfpn.data.common import NUM_AUS, csv_with_header, where
from affectfpn.data.pseudo import LabelTable, dataset_keys, dataset_label_arrays
from affectfpn.errors import ConfigError, DatasetError
from affectfpn.labels import ACTION_UNITS, EXPRESSIONS
from affectfpn.recipes.blendshapes import BLENDSHAPE_NAMES, CSV_COLUMNS, DEFAULT_PAD, DEFAULT_SIZE

if TYPE_CHECKING:
    from affectfpn.models.affectfpn import AffectFPN

#: The standalone script that runs MediaPipe (in an environment that has it).
BLENDSHAPE_SCRIPT = Path(__file__).with_name("blendshapes.py")

#: Default location of the Face Landmarker bundle: ``../shared`` next to the repository (or
#: ``$AFFECTFPN_SHARED``).
DEFAULT_LANDMARKER = "models/mediapipe/face_landmarker.task"

_EPS = 1e-6


# ==============================================================================================
# Running the MediaPipe teacher
# ==============================================================================================


def _default_model() -> str:
    shared = os.environ.get("AFFECTFPN_SHARED")
    base = Path(shared) if shared else Path(__file__).resolve().parents[2].parent / "shared"
    return os.fspath(base / DEFAULT_LANDMARKER)


def run_blendshape_teacher(
    out: str | os.PathLike[str],
    *,
    root: str | os.PathLike[str] | None = None,
    dataset: Any = None,
    files: Mapping[str, str | os.PathLike[str]] | None = None,
    python_executable: str | os.PathLike[str] = sys.executable,
    model: str | os.PathLike[str] | None = None,
    size: int = DEFAULT_SIZE,
    pad: float = DEFAULT_PAD,
    workers: int = 1,
    timeout: float | None = None,
) -> Path:
    """Score face images with MediaPipe's Face Landmarker in a subprocess; returns ``out``.

    The images and their keys come from exactly one of:

    * ``root``: an image folder of class folders, read as
      :class:`~affectfpn.recipes.datasets.ImageFolderExpressions` reads it (FER2013's
      ``train``/``val``/``test``), so the keys are the ones a recipe's ``imagefolder`` dataset
      gives (``"angry/PublicTest_123.jpg"``);
    * ``dataset``: any affectfpn image dataset (``keys`` and ``image_path(i)``);
    * ``files``: ``{key: image path}``.

    ``python_executable`` must have ``mediapipe`` (e.g. ``.mpvenv/bin/python``, see
    ``docs/action-units.md``); it runs ``affectfpn/recipes/blendshapes.py`` by path. The CSV
    columns are :data:`~affectfpn.recipes.blendshapes.CSV_COLUMNS`.

    Raises:
        ConfigError: not exactly one source, or a missing model file.
        RuntimeError: the subprocess failed (its last output lines are in the message).
    """
    if sum(x is not None for x in (root, dataset, files)) != 1:
        raise ConfigError("give exactly one of root=, dataset= or files=")
    if root is not None:
        from affectfpn.recipes.datasets import ImageFolderExpressions

        dataset = ImageFolderExpressions(root)
    if dataset is not None:
        keys = dataset_keys(dataset)
        items = [(k, os.fspath(dataset.image_path(i))) for i, k in enumerate(keys)]
    else:
        assert files is not None
        items = [(str(k), os.fspath(v)) for k, v in files.items()]
    if not items:
        raise ConfigError("no images to score")
    model_path = os.fspath(model) if model is not None else _default_model()
    if not os.path.isfile(model_path):
        raise ConfigError(
            f"Face Landmarker model {model_path!r} not found (pass model=, or set "
            "AFFECTFPN_SHARED to the shared folder)"
        )
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="affectfpn-blendshapes-") as tmp:
        listing = Path(tmp) / "images.csv"
        with open(listing, "w", encoding="utf-8", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["key", "path"])
            writer.writerows((k, os.path.abspath(p)) for k, p in items)
        command = [
            os.fspath(python_executable),
            os.fspath(BLENDSHAPE_SCRIPT),
            "--model", model_path,
            "--list", os.fspath(listing),
            "--out", os.fspath(out),
            "--size", str(int(size)),
            "--pad", repr(float(pad)),
            "--workers", str(int(workers)),
        ]  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        tail = "\n".join((done.stderr or done.stdout or "").strip().splitlines()[-15:])
        raise RuntimeError(
            f"the blendshape teacher failed (exit {done.returncode}) running "
            f"{python_executable}; does it have mediapipe==1.2.3?\n{tail}"
        )
    if not out.is_file():
        raise RuntimeError(f"the blendshape teacher exited without writing {out}")
    return out


@dataclass(frozen=True)
class BlendshapeScores:
    """Blendshape scores of N images: ``keys``, ``found`` bool [N], ``scores`` float32 [N, 52]
    (NaN where no face was found), columns in :data:`BLENDSHAPE_NAMES` order."""

    keys: list[str]
    found: np.ndarray
    scores: np.ndarray

    def __len__(self) -> int:
        return len(self.keys)

    def column(self, name: str) -> np.ndarray:
        """float32 [N]: one blendshape (NaN where no face was found)."""
        return self.scores[:, BLENDSHAPE_NAMES.index(name)]

    @property
    def found_rate(self) -> float:
        """The share of images with a face."""
        return float(self.found.mean()) if len(self.keys) else 0.0


def read_blendshape_csv(path: str | os.PathLike[str]) -> BlendshapeScores:
    """Read a CSV written by ``blendshapes.py`` (:func:`run_blendshape_teacher`).

    Raises:
        DatasetError: a missing column, a repeated key, or a score outside [0, 1] (file and
            line named).
    """
    rows, header_line, names = csv_with_header(path, empty="empty blendshape CSV")
    missing = [c for c in CSV_COLUMNS if c not in names]
    if missing:
        raise DatasetError(f"{where(path, header_line)}: missing column(s) {missing}")
    c_key, c_found = names.index("key"), names.index("face_found")
    cols = [names.index(n) for n in BLENDSHAPE_NAMES]
    keys: list[str] = []
    found: list[bool] = []
    values: list[list[float]] = []
    seen: dict[str, int] = {}
    for line, cells in rows:
        if len(cells) != len(names):
            raise DatasetError(f"{where(path, line)}: {len(cells)} cells, expected {len(names)}")
        key = cells[c_key].strip()
        if not key:
            raise DatasetError(f"{where(path, line)}: empty key")
        if key in seen:
            raise DatasetError(f"{where(path, line)}: key {key!r} already on line {seen[key]}")
        seen[key] = line
        flag = cells[c_found].strip()
        if flag not in ("0", "1"):
            raise DatasetError(f"{where(path, line)}: face_found must be 0 or 1, got {flag!r}")
        row = [math.nan] * len(cols)
        if flag == "1":
            try:
                row = [float(cells[c]) for c in cols]
            except ValueError as exc:
                raise DatasetError(f"{where(path, line)}: {exc}") from exc
            if not all(0.0 <= v <= 1.0 for v in row):
                raise DatasetError(f"{where(path, line)}: a blendshape score outside [0, 1]")
        keys.append(key)
        found.append(flag == "1")
        values.append(row)
    scores = np.array(values, np.float32).reshape(len(keys), len(BLENDSHAPE_NAMES))
    return BlendshapeScores(keys, np.array(found, bool), scores)


# ==============================================================================================
# The blendshape -> AU mapping
# ==============================================================================================


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
        x = np.clip(np.asarray(raw, np.float64), _EPS, 1 - _EPS)
        z = self.slope * np.log(x / (1 - x)) + self.intercept
        return (1 / (1 + np.exp(-z))).astype(np.float32)


#: The blendshape -> AU mapping. Shapes were chosen by their FACS meaning and checked on
#: FER2013 ``train``; the calibration (slope, intercept) is a class-balanced logistic fit on
#: ``train`` faces against the expression-implied labels of :data:`EXPRESSION_IMPLIED_AUS`
#: (:func:`fit_calibration`), so p = 0.5 where the score is equally likely under "implied
#: present" and "implied absent". ``kept``: ROC AUC >= 0.75 on ``val`` against those labels
#: (AU1, AU2, AU12, AU26); the weak units stay in the table, measured, and can be asked for
#: with ``units=``. AU24 has no blendshape counterpart and is always masked.
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


# ----------------------------------------------------------------------------------------------
# Weak labels, AUC and calibration
# ----------------------------------------------------------------------------------------------


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
        x = np.clip(raw[ok].astype(np.float64), _EPS, 1 - _EPS)
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


# ==============================================================================================
# OpenFace 2.0 and existing label CSVs
# ==============================================================================================

_OPENFACE_AU = re.compile(r"^AU(\d+)_c$")


def openface_table(
    csv_path: str | os.PathLike[str],
    *,
    video: str | None = None,
    key_format: str = "{video}/{frame:05d}",
    min_confidence: float = 0.0,
) -> LabelTable:
    """A hard-AU :class:`LabelTable` from an OpenFace 2.0 FeatureExtraction CSV.

    The ``AUxx_c`` presence columns (0/1) give the labels of the ACTION_UNITS OpenFace has;
    AU24, which OpenFace 2.0 does not output, and the intensity columns (``AUxx_r``) are not
    used: AU24 stays masked. A frame with ``success`` 0 or ``confidence`` below
    ``min_confidence`` is kept with every unit masked.

    Keys: ``key_format`` with ``{video}`` (default: the CSV's file name without ``.csv``, as
    OpenFace names it after the video), ``{frame}`` (OpenFace's 1-based ``frame`` column, which
    matches Aff-Wild2's 1-based ``cropped_aligned/<video>/<frame:05d>.jpg``) and ``{face_id}``
    (the ``face_id`` column of multi-face output, 0 when absent). The default gives Aff-Wild2's
    ``"<video>/<frame:05d>"`` keys; a file with several faces per frame needs ``{face_id}`` in
    the format.

    Raises:
        DatasetError: a missing ``frame`` column, no AU column, a repeated key or a bad cell.
    """
    path = Path(csv_path)
    rows, header_line, names = csv_with_header(path, empty="empty OpenFace CSV")
    if "frame" not in names:
        raise DatasetError(f"{where(path, header_line)}: no 'frame' column: not OpenFace output")
    c_frame = names.index("frame")
    c_success = names.index("success") if "success" in names else None
    c_conf = names.index("confidence") if "confidence" in names else None
    c_face = names.index("face_id") if "face_id" in names else None
    au_cols: dict[int, int] = {}
    for c, name in enumerate(names):
        m = _OPENFACE_AU.match(name)
        if m and f"AU{int(m.group(1))}" in ACTION_UNITS:
            au_cols[ACTION_UNITS.index(f"AU{int(m.group(1))}")] = c
    if not au_cols:
        raise DatasetError(f"{where(path, header_line)}: no AUxx_c column of {list(ACTION_UNITS)}")
    video = video if video is not None else path.stem

    keys: list[str] = []
    au_rows: list[np.ndarray] = []
    mask_rows: list[np.ndarray] = []
    seen: dict[str, int] = {}
    for line, cells in rows:
        if len(cells) != len(names):
            raise DatasetError(f"{where(path, line)}: {len(cells)} cells, expected {len(names)}")
        try:
            frame = int(float(cells[c_frame]))
            face_id = int(float(cells[c_face])) if c_face is not None else 0
            ok = c_success is None or float(cells[c_success]) > 0.5
            if c_conf is not None and float(cells[c_conf]) < min_confidence:
                ok = False
            values = {j: float(cells[c]) for j, c in au_cols.items()}
        except ValueError as exc:
            raise DatasetError(f"{where(path, line)}: {exc}") from exc
        try:
            key = key_format.format(video=video, frame=frame, face_id=face_id)
        except (KeyError, IndexError, ValueError) as exc:
            raise ConfigError(f"key_format {key_format!r}: {exc}") from exc
        if key in seen:
            raise DatasetError(
                f"{where(path, line)}: key {key!r} already on line {seen[key]}"
                + ("; add {face_id} to key_format" if c_face is not None else "")
            )
        seen[key] = line
        au = np.zeros(NUM_AUS, np.float32)
        mask = np.zeros(NUM_AUS, bool)
        if ok:
            for j, v in values.items():
                if v not in (0.0, 1.0):
                    raise DatasetError(
                        f"{where(path, line)}: {names[au_cols[j]]} must be 0 or 1, got {v}"
                    )
                au[j], mask[j] = v, True
        keys.append(key)
        au_rows.append(au)
        mask_rows.append(mask)
    au_arr = np.array(au_rows, np.float32).reshape(-1, NUM_AUS)
    mask_arr = np.array(mask_rows, bool).reshape(-1, NUM_AUS)
    return LabelTable.from_arrays(keys, au=au_arr, au_mask=mask_arr)


def table_from_dataset(dataset: Any, *, tasks: Sequence[str] = ("au",)) -> LabelTable:
    """The labels of any affectfpn dataset as a :class:`LabelTable`, by the dataset's keys.

    Reuses the dataset readers the recipes use (``LabelCSV``, ``AffectNet``, ``AffWild2``,
    ``ImageFolderExpressions``, ...). ``tasks``: the tasks to keep (``"va"``, ``"expression"``,
    ``"au"``); the others are left out (masked).
    """
    unknown = sorted(set(tasks) - {"va", "expression", "au"})
    if unknown:
        raise ConfigError(f"unknown task(s) {unknown}")
    labels = dataset_label_arrays(dataset)
    kwargs: dict[str, Any] = {}
    if "va" in tasks:
        kwargs.update(va=labels.va, va_mask=labels.va_mask)
    if "expression" in tasks:
        if labels.expression_soft is not None:
            kwargs.update(
                expression_probs=labels.expression_soft, expression_mask=labels.expression_mask
            )
        else:
            kwargs.update(expression=labels.expression, expression_mask=labels.expression_mask)
    if "au" in tasks:
        kwargs.update(au=labels.au, au_mask=labels.au_mask)
    return LabelTable.from_arrays(dataset_keys(dataset), **kwargs)


def label_csv_table(
    csv_path: str | os.PathLike[str],
    root: str | os.PathLike[str] | None = None,
    *,
    tasks: Sequence[str] = ("au",),
) -> LabelTable:
    """A :class:`LabelTable` from a recipe label CSV (``type = "csv"``, read by
    :class:`~affectfpn.recipes.datasets.LabelCSV`: ``path`` plus ``AU1``/``AU01``/``AU01_c``
    columns, etc.); keys are the paths as written. Rows whose image is missing are left out."""
    from affectfpn.recipes.datasets import LabelCSV

    return table_from_dataset(LabelCSV(csv_path, root), tasks=tasks)


# ==============================================================================================
# Measuring a student against its teacher
# ==============================================================================================


def student_agreement(
    model: AffectFPN,
    root: str | os.PathLike[str],
    table: LabelTable | str | os.PathLike[str],
    *,
    exclude: str | os.PathLike[str] | Sequence[str] | None = None,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    threshold: float = 0.5,
) -> dict[str, Any]:
    """How well a student's AU outputs agree with the teacher's pseudo labels on an image folder.

    The images of ``root`` (class folders, read by
    :class:`~affectfpn.recipes.datasets.ImageFolderExpressions`: FER2013's ``test``) go through
    the model's own evaluation transform (:func:`affectfpn.preprocess.eval_transform`, the face
    crop resized to ``config.input_size``) and the model in eval mode under
    ``torch.inference_mode()``, so a ``config.test_time_flip`` model averages each face with its
    mirror image as it does at inference. The student's AU probability is the sigmoid of its
    logit; a unit is **active** where it is ``>= threshold``, and so is the teacher's.

    Args:
        model: an :class:`~affectfpn.AffectFPN` with an ``"au"`` head.
        root: the image folder; its keys (``"happy/PrivateTest_123.jpg"``) are the table's.
        table: the teacher's :class:`LabelTable` (or its ``.csv`` / ``.json``), joined by key;
            a masked cell (the teacher found no face, or does not measure the unit) and a key
            that is not in the table are left out of that unit's agreement.
        exclude: relative paths (or a text file of them, e.g. FER2013's
            ``overlap_with_train.txt``) to leave out, relative to ``root`` or to its parent.
        batch_size: images per forward pass.
        device: where the model runs (it is moved back, and its mode restored, afterwards).
        threshold: the probability at which a unit counts as active, for both.

    Returns:
        A dict of plain numbers (NaN where undefined; the command writes JSON null)::

            {"root", "num_faces", "excluded", "in_table", "threshold", "test_time_flip",
             "units": [AUs the model predicts],
             "expression_counts": {expression: faces},
             "au": {AU: {"n", "teacher_positive", "teacher_positive_rate",
                         "student_positive_rate", "auc", "agreement"}},   # teacher-labelled units
             "student_active": {AU: {expression: share of all its faces with p >= threshold}},
             "teacher_active": {AU: {expression: share of its teacher-labelled faces}},
             "expression": {"accuracy", "macro_f1", "score", "n"},   # S_EXPR = score
             "seconds"}

        ``expression`` is scored as ``affectfpn evaluate`` scores it, against the folder's
        labels, on the same faces; it is ``None`` for a model without an expression head or
        whose classes are not the seven EXPRESSIONS.

        ``au[...]["auc"]``: ROC AUC (:func:`roc_auc`) of the student's probability against the
        teacher's decision, NaN when the teacher's decisions are all one way; ``agreement``: the
        share of those faces where both decisions match. Units the teacher never labels here
        have no ``au`` entry. Shares of a class without faces are NaN.

    Raises:
        ConfigError: a model without an AU head, or a bad argument.
        DatasetError: a table that shares no key with the folder (check ``--key-prefix``).
    """
    import time

    from torch.utils.data import DataLoader

    from affectfpn.preprocess import eval_transform, normalize
    from affectfpn.recipes.datasets import ImageFolderExpressions, read_path_list

    config = model.config
    if "au" not in config.tasks:
        raise ConfigError(f"the model has no AU head (tasks {list(config.tasks)})")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
    if not 0.0 < float(threshold) < 1.0:
        raise ConfigError(f"threshold must be in (0, 1), got {threshold!r}")
    teacher = table if isinstance(table, LabelTable) else LabelTable.load(table)
    excluded: list[str] | None = None
    if isinstance(exclude, str | os.PathLike):
        excluded = read_path_list(exclude)
    elif exclude is not None:
        excluded = [str(p) for p in exclude]
    data = ImageFolderExpressions(root, exclude=excluded, transform=eval_transform(config))

    units = list(config.action_units)
    model_cols = [j for j, u in enumerate(units) if u in ACTION_UNITS]
    units = [units[j] for j in model_cols]
    table_cols = [ACTION_UNITS.index(u) for u in units]
    expr_order: list[int] | None = None
    if "expression" in config.tasks and set(config.expressions) == set(EXPRESSIONS):
        expr_order = [config.expressions.index(n) for n in EXPRESSIONS]

    keys: list[str] = []
    logits: list[np.ndarray] = []
    predicted: list[np.ndarray] = []
    dev = torch.device(device)
    first = next(model.parameters(), None)
    home = first.device if first is not None else torch.device("cpu")
    was_training = model.training
    start = time.perf_counter()
    loader = DataLoader(data, batch_size=batch_size, shuffle=False, num_workers=0)
    try:
        model.to(dev).eval()
        with torch.inference_mode():
            for batch in loader:
                out = model(normalize(batch["image"].to(dev), config))
                assert out.au is not None
                logits.append(out.au.float()[:, model_cols].cpu().numpy())
                if expr_order is not None and out.expression is not None:
                    expr_logits = out.expression.float()[:, expr_order]
                    predicted.append(expr_logits.argmax(dim=1).cpu().numpy())
                keys.extend(str(k) for k in batch["key"])
    finally:
        model.to(home)
        model.train(was_training)
    seconds = time.perf_counter() - start

    n = len(keys)
    # the AUC ranks the logits: the same order as the probabilities, without float32's ties
    # at 0 and 1 (a sigmoid saturates beyond |logit| ~ 17)
    logit = np.concatenate(logits).astype(np.float64).reshape(n, len(units))
    student = 1 / (1 + np.exp(-np.clip(logit, -500, 500)))
    labels = data.label_arrays()
    by_key = {k: i for i, k in enumerate(data.keys)}
    rows = np.array([by_key[k] for k in keys], np.int64)
    expression = labels.expression[rows]
    has_expression = labels.expression_mask[rows]
    t_rows = [teacher.position(k) for k in keys]
    in_table = np.array([r is not None for r in t_rows], bool)
    if not in_table.any():
        raise DatasetError(
            f"none of the {n} keys of {os.fspath(root)!r} (e.g. {keys[0]!r}) is in the label "
            f"table (e.g. {teacher.key_list[:1]!r}); were the keys written with a prefix?"
        )
    t_index = np.array([-1 if r is None else r for r in t_rows], np.int64)
    t_au = np.zeros((n, len(units)), np.float64)
    t_mask = np.zeros((n, len(units)), bool)
    found = t_index >= 0
    t_au[found] = teacher.labels.au[t_index[found]][:, table_cols]
    t_mask[found] = teacher.labels.au_mask[t_index[found]][:, table_cols]

    cut = float(threshold)
    s_on, t_on = student >= cut, t_au >= cut
    classes = {name: has_expression & (expression == c) for c, name in enumerate(EXPRESSIONS)}

    def share(on: np.ndarray, where: np.ndarray) -> float:
        return float(on[where].mean()) if where.any() else math.nan

    au: dict[str, dict[str, float]] = {}
    student_active: dict[str, dict[str, float]] = {}
    teacher_active: dict[str, dict[str, float]] = {}
    for j, unit in enumerate(units):
        m = t_mask[:, j]
        student_active[unit] = {e: share(s_on[:, j], rows_) for e, rows_ in classes.items()}
        if not m.any():
            continue
        teacher_active[unit] = {e: share(t_on[:, j], rows_ & m) for e, rows_ in classes.items()}
        au[unit] = {
            "n": int(m.sum()),
            "teacher_positive": int(t_on[m, j].sum()),
            "teacher_positive_rate": share(t_on[:, j], m),
            "student_positive_rate": share(s_on[:, j], m),
            "auc": roc_auc(logit[m, j], t_on[m, j]),
            "agreement": share(s_on[:, j] == t_on[:, j], m),
        }

    expression_result: dict[str, float] | None = None
    if predicted:
        from affectfpn.metrics import ExpressionMeter

        meter = ExpressionMeter()
        meter.update(np.concatenate(predicted), expression, has_expression)
        scores = meter.compute()
        expression_result = {
            name: float(value)
            for name in ("accuracy", "macro_f1", "score")
            if isinstance(value := scores[name], float | int)
        }
        expression_result["n"] = int(has_expression.sum())
    return {
        "root": os.fspath(root),
        "num_faces": n,
        "excluded": int(data.n_excluded),
        "in_table": int(in_table.sum()),
        "threshold": cut,
        "test_time_flip": bool(config.test_time_flip),
        "units": units,
        "expression_counts": {e: int(rows_.sum()) for e, rows_ in classes.items()},
        "au": au,
        "student_active": student_active,
        "teacher_active": teacher_active,
        "expression": expression_result,
        "seconds": seconds,
    }


def format_agreement(result: Mapping[str, Any]) -> str:
    """Markdown tables of :func:`student_agreement`'s result."""
    lines = [
        f"{result['num_faces']} faces ({result['excluded']} excluded), "
        f"{result['in_table']} in the teacher's table; active: p >= {result['threshold']}"
        + (", test-time flip" if result["test_time_flip"] else ""),
        "",
        "| AU | faces labelled | teacher positive | student positive | AUC | agreement |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for unit, r in result["au"].items():
        lines.append(
            f"| {unit} | {r['n']} | {r['teacher_positive_rate']:.3f} | "
            f"{r['student_positive_rate']:.3f} | {r['auc']:.3f} | {r['agreement']:.3f} |"
        )
    counts = result["expression_counts"]
    lines += [
        "",
        "Student AU active (p >= threshold) per expression, share of all faces "
        "(teacher's share of the faces it labelled in brackets):",
        "",
        "| AU | " + " | ".join(f"{e} ({counts[e]})" for e in EXPRESSIONS) + " |",
        "| --- |" + " --- |" * len(EXPRESSIONS),
    ]
    for unit, per_class in result["student_active"].items():
        teacher = result["teacher_active"].get(unit, {})
        cells = [
            f"{per_class[e]:.2f}" + (f" ({teacher[e]:.2f})" if e in teacher else "")
            for e in EXPRESSIONS
        ]
        lines.append(f"| {unit} | " + " | ".join(cells) + " |")
    expr = result["expression"]
    if expr is not None:
        lines += [
            "",
            f"Expression accuracy {expr['accuracy']:.4f}, macro F1 {expr['macro_f1']:.4f}, "
            f"S_EXPR {expr['score']:.4f} ({expr['n']} faces)",
        ]
    lines.append(f"({result['seconds']:.1f} s)")
    return "\n".join(lines)


# ==============================================================================================
# Command line
# ==============================================================================================


def _expressions_for(keys: Sequence[str], root: str) -> np.ndarray:
    from affectfpn.recipes.datasets import ImageFolderExpressions

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


def _json_ready(value: Any) -> Any:
    """``value`` with NaN floats as ``None`` (strict JSON)."""
    if isinstance(value, float):
        return None if math.isnan(value) else value
    if isinstance(value, Mapping):
        return {k: _json_ready(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_ready(v) for v in value]
    return value


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m affectfpn.recipes.external_teachers``: run, convert and measure teachers."""
    parser = argparse.ArgumentParser(prog="python -m affectfpn.recipes.external_teachers")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("blendshapes", help="score an image folder with MediaPipe (subprocess)")
    p.add_argument("--root", required=True, help="image folder of class folders")
    p.add_argument("--out", required=True, help="blendshape CSV to write")
    p.add_argument("--python", default=sys.executable, help="a Python that has mediapipe")
    p.add_argument("--model", default=None, help="face_landmarker.task (default: ../shared)")
    p.add_argument("--workers", type=int, default=1)

    p = sub.add_parser("table", help="blendshape CSV -> LabelTable (.csv or .json)")
    p.add_argument("--scores", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--units", nargs="*", default=None, help="AUs to label (default: kept ones)")
    p.add_argument("--key-prefix", default="")

    p = sub.add_parser("openface", help="OpenFace 2.0 CSV -> LabelTable")
    p.add_argument("--csv", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--video", default=None)
    p.add_argument("--key-format", default="{video}/{frame:05d}")
    p.add_argument("--min-confidence", type=float, default=0.0)

    for name, text in (
        ("evaluate", "AUC of each mapped AU against expression-implied labels"),
        ("fit", "fit the calibration on training images; prints the fitted mapping"),
    ):
        p = sub.add_parser(name, help=text)
        p.add_argument("--scores", required=True)
        p.add_argument("--root", required=True, help="the image folder the scores came from")

    p = sub.add_parser("agreement", help="a student's AU outputs against the teacher's table")
    p.add_argument("--model", required=True, help="model folder, registered name or Hub id")
    p.add_argument("--root", required=True, help="image folder of class folders (FER2013 test)")
    p.add_argument("--table", required=True, help="the teacher's LabelTable for that folder")
    p.add_argument("--exclude", default=None, help="text file of relative paths to leave out")
    p.add_argument("--json", default=None, help="also write the result as JSON here")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threshold", type=float, default=0.5)

    args = parser.parse_args(argv)
    if args.command == "agreement":
        from affectfpn.models.affectfpn import AffectFPN

        student = AffectFPN.from_pretrained(args.model)
        result = student_agreement(
            student,
            args.root,
            args.table,
            exclude=args.exclude,
            batch_size=args.batch_size,
            device=args.device,
            threshold=args.threshold,
        )
        result["model"] = args.model
        result["table"] = args.table
        print(format_agreement(result))
        if args.json is not None:
            out = Path(args.json)
            out.parent.mkdir(parents=True, exist_ok=True)
            with open(out, "w", encoding="utf-8") as f:
                json.dump(_json_ready(result), f, indent=2, allow_nan=False)
                f.write("\n")
    elif args.command == "blendshapes":
        run_blendshape_teacher(
            args.out,
            root=args.root,
            python_executable=args.python,
            model=args.model,
            workers=args.workers,
        )
        s = read_blendshape_csv(args.out)
        print(f"{args.out}: {len(s)} images, face found in {s.found_rate:.1%}")
    elif args.command == "table":
        table = blendshape_table(args.scores, units=args.units, key_prefix=args.key_prefix)
        table.save(args.out)
        print(f"{args.out}: {table.labels_summary()}")
    elif args.command == "openface":
        table = openface_table(
            args.csv,
            video=args.video,
            key_format=args.key_format,
            min_confidence=args.min_confidence,
        )
        table.save(args.out)
        print(f"{args.out}: {table.labels_summary()}")
    else:
        scores = read_blendshape_csv(args.scores)
        expressions = _expressions_for(scores.keys, args.root)
        if args.command == "fit":
            for m in fit_calibration(scores, expressions):
                print(f"{m.au}: slope={m.slope:.4f}, intercept={m.intercept:.4f}")
        else:
            print(f"face found: {scores.found_rate:.2%} of {len(scores)}")
            print(format_evaluation(evaluate_mapping(scores, expressions), BLENDSHAPE_AU_MAP))
    return 0


if __name__ == "__main__":
    sys.exit(main())
