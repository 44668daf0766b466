"""The one registry of dataset kinds: the ``type`` names a recipe's ``[data]`` tables use, and
the dataset table a path stands for (``affectfpn evaluate PATH``, ``affectfpn finetune TRAIN
VAL``, ``affectfpn calibrate --val PATH``).

* :func:`dataset_types`: ``{type name: dataset class}``;
* :func:`spec_for_path`: a folder of expression class folders, a label ``.csv`` or an Aff-Wild2
  root, as the dataset table of that kind.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from affectfpn.errors import InputError


def dataset_types() -> dict[str, Any]:
    """The dataset ``type`` names (of recipes' ``[data]`` tables) and their classes."""
    from affectfpn.data.affwild2 import AffWild2, AffWild2MultiTask
    from affectfpn.data.images import AffectNet, ExpW, ImageFolderExpressions, LabelCSV

    return {
        "imagefolder": ImageFolderExpressions,
        "csv": LabelCSV,
        "affwild2": AffWild2,
        "affwild2-multitask": AffWild2MultiTask,
        "affectnet": AffectNet,
        "expw": ExpW,
    }


def is_affwild2_root(path: Path) -> bool:
    """A folder with ``annotations/`` and ``cropped_aligned/``: Aff-Wild2's ABAW2 layout."""
    return (path / "annotations").is_dir() and (path / "cropped_aligned").is_dir()


def spec_for_path(path: str | os.PathLike[str], *, what: str = "dataset") -> dict[str, Any]:
    """The dataset table for a path, recognised from what it is:

    * a folder with ``annotations/`` and ``cropped_aligned/``: Aff-Wild2, its validation split
      (``{"type": "affwild2-multitask", "root": ..., "split": "validation"}``; the caller
      chooses the tasks);
    * a ``.csv`` file: a label table (``{"type": "csv", "csv_path": ...}``);
    * any other folder: expression class folders (``{"type": "imagefolder", "root": ...}``).

    Raises:
        InputError: a path that does not exist, a file that is not a ``.csv``, or a folder with
            ``annotations/`` but no ``cropped_aligned/`` (naming ``what``).
    """
    p = Path(path).expanduser()
    text = os.fspath(p)
    if p.is_dir() and is_affwild2_root(p):
        return {"type": "affwild2-multitask", "root": text, "split": "validation"}
    if p.is_file() and p.suffix.lower() == ".csv":
        return {"type": "csv", "csv_path": text}
    if p.is_dir() and (p / "annotations").is_dir():
        raise InputError(
            f"{what} {text!r} has annotations/ but no cropped_aligned/ image folder, so it is "
            "not read as Aff-Wild2; for other image folders build the dataset yourself: "
            "AffWild2MultiTask(root, 'validation', images=..., transform=eval_transform(config))"
        )
    if p.is_dir():
        return {"type": "imagefolder", "root": text}
    if p.exists():
        raise InputError(
            f"{what} {text!r} is a file but not a .csv; pass a folder of expression class "
            "folders, an Aff-Wild2 root or a label CSV"
        )
    raise InputError(f"{what} {text!r} does not exist; check the path")
