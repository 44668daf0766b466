"""A recipe whose datasets take labels from a teacher's table, and a model of some of the AUs."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from _fake_data import write_image_folder

from affectfpn import AffectFPN
from affectfpn.errors import ConfigError
from affectfpn.labels import ACTION_UNITS
from affectfpn.recipes.datasets import LabelTable
from affectfpn.recipes.recipe import build_datasets, recipe_from_dict, run_recipe

SIZE = 32
UNITS = ["AU1", "AU2", "AU12", "AU26"]


def table_for(root: Path, out: Path, *, value: float) -> Path:
    """A teacher's table: every key of the folder, soft values for UNITS only, others masked."""
    keys = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.jpg"))
    au = np.zeros((len(keys), len(ACTION_UNITS)), np.float32)
    mask = np.zeros_like(au, dtype=bool)
    for unit in UNITS:
        au[:, ACTION_UNITS.index(unit)] = value
        mask[:, ACTION_UNITS.index(unit)] = True
    mask[0] = False  # a face the teacher did not find: no AU label at all
    LabelTable.from_arrays(keys, au=au, au_mask=mask).save(out)
    return out


def recipe(tmp_path: Path, **model: object) -> dict:
    faces = tmp_path / "faces"
    write_image_folder(faces / "train", {"happy": 4, "sad": 4}, image_size=SIZE)
    write_image_folder(faces / "val", {"happy": 2, "sad": 2}, image_size=SIZE)
    train_table = table_for(faces / "train", tmp_path / "train.csv", value=0.9)
    val_table = table_for(faces / "val", tmp_path / "val.csv", value=0.2)
    return {
        "name": "mt",
        "output_dir": str(tmp_path / "run"),
        "model": {
            "backbone": "resnet18",
            "fpn_width": 8,
            "input_size": [SIZE, SIZE],
            "tasks": ["expression", "au"],
            "action_units": UNITS,
            **model,
        },
        "data": {
            "train": [
                {
                    "type": "imagefolder",
                    "root": str(faces / "train"),
                    "pseudo_labels": str(train_table),
                }
            ],
            "val": [
                {"type": "imagefolder", "root": str(faces / "val"), "pseudo_labels": str(val_table)}
            ],
        },
        "train": {
            "epochs": 1,
            "batch_size": 4,
            "num_workers": 0,
            "device": "cpu",
            "progress": False,
            "amp": "off",
            "lr": 0.01,
        },
    }


def test_pseudo_labels_fill_a_dataset_by_key(tmp_path: Path) -> None:
    data = recipe(tmp_path)
    dataset = build_datasets(data["data"]["train"], transform=None, source="test")
    assert dataset is not None
    counts = dataset.counts()  # type: ignore[attr-defined]
    assert counts["expression"] == 8  # the folder's own labels stay
    assert counts["au"] == 7  # one face without a teacher label
    sample = dataset[1]
    au, mask = np.asarray(sample["au"]), np.asarray(sample["au_mask"])
    assert mask.sum() == len(UNITS)
    assert np.allclose(au[mask], 0.9)


def test_missing_pseudo_label_table_is_a_clear_error(tmp_path: Path) -> None:
    data = recipe(tmp_path)
    data["data"]["train"][0]["pseudo_labels"] = str(tmp_path / "nope.csv")
    with pytest.raises(ConfigError, match=r"pseudo_labels .*nope\.csv.* is no file"):
        run_recipe(recipe_from_dict(data))


def test_a_model_of_four_units_trains_and_scores_on_those_units(tmp_path: Path) -> None:
    summary = run_recipe(recipe_from_dict(recipe(tmp_path)))
    (record,) = summary["history"]
    au = record["val"]["au"]
    assert len(au["f1_per_unit"]) == len(UNITS)
    # the teacher's val labels are all 0.2 (absent at 0.5): scored as decisions, not refused
    assert au["accuracy"] >= 0.0
    assert np.isfinite(record["train_au"])
    model = AffectFPN.from_pretrained(tmp_path / "run" / "best")
    assert model.config.action_units == tuple(UNITS)
    out = model.eval()(torch.rand(2, 3, SIZE, SIZE))
    assert out.au is not None
    assert out.au.shape == (2, len(UNITS))
    card = json.loads((tmp_path / "run" / "best" / "config.json").read_text())
    assert card["action_units"] == UNITS


def test_a_unit_no_dataset_labels_is_refused(tmp_path: Path) -> None:
    data = recipe(tmp_path, action_units=["AU1", "AU99"])
    with pytest.raises(ConfigError, match="AU99"):
        run_recipe(recipe_from_dict(data))
