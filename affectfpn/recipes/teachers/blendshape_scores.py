"""The blendshape scores the MediaPipe teacher writes: :class:`BlendshapeScores` and its CSV.

The CSV is the one ``affectfpn/recipes/blendshapes.py`` writes (columns
:data:`~affectfpn.recipes.blendshapes.CSV_COLUMNS`): ``key``, ``face_found``, ``error`` and
the 52 scores in :data:`~affectfpn.recipes.blendshapes.BLENDSHAPE_NAMES` order.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np

from affectfpn.data.common import csv_with_header, where
from affectfpn.errors import DatasetError
from affectfpn.recipes.blendshapes import BLENDSHAPE_NAMES, CSV_COLUMNS

__all__ = ["BlendshapeScores", "read_blendshape_csv"]


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
    """Read a CSV written by ``blendshapes.py``
    (:func:`~affectfpn.recipes.teachers.mediapipe_runner.run_blendshape_teacher`).

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
