"""Labels a dataset already has, as a pseudo-label table: :func:`label_csv_table` reads a recipe
label CSV and :func:`table_from_dataset` any affectfpn dataset, by the dataset's own keys.

The table is written with :meth:`LabelTable.save <affectfpn.recipes.datasets.LabelTable.save>`
(``.csv`` or ``.json``) and read back with ``LabelTable.load``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from affectfpn.data.pseudo import LabelTable, dataset_keys, dataset_label_arrays
from affectfpn.errors import ConfigError

__all__ = ["label_csv_table", "table_from_dataset"]


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
    from affectfpn.data import LabelCSV

    return table_from_dataset(LabelCSV(csv_path, root), tasks=tasks)
