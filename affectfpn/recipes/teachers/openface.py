"""AU pseudo labels from OpenFace 2.0: :func:`openface_table` reads a FeatureExtraction CSV."""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from affectfpn.data.common import NUM_AUS, csv_with_header, where
from affectfpn.data.pseudo import LabelTable
from affectfpn.errors import ConfigError, DatasetError
from affectfpn.labels import ACTION_UNITS

__all__ = ["openface_table"]

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
