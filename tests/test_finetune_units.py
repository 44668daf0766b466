"""Fine-tuning on your own action units: units a user's CSV labels that the start lacks become
new outputs of its AU head (the start's units keep their weights, by name), are learnt from the
labels, and are reported by --check; units affectfpn cannot learn are named, not dropped in
silence."""

from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from _fake_data import write_image
from test_trainer import SIZE, tiny_model

from affectfpn import AffectFPN
from affectfpn.cli import main as cli_main
from affectfpn.data import LabelCSV
from affectfpn.errors import ConfigError
from affectfpn.recipes.finetune import finetune, finetune_recipe, new_action_units
from affectfpn.recipes.recipe import recipe_from_dict
from affectfpn.recipes.stage import add_action_units, model_from_recipe


def _start(
    units: tuple[str, ...] = ("AU1", "AU12"), tasks: tuple[str, ...] = ("expression", "au")
) -> AffectFPN:
    model = tiny_model(tasks=tasks, trainable_layers=5, head_dropout=0.0)
    if "au" in tasks:
        torch.manual_seed(1)
        model = AffectFPN(model.config.replace(action_units=units))
    return model.eval()


def _pairs_ranked(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC: the share of (positive, negative) pairs whose scores rank the positive first."""
    pos, neg = scores[labels >= 0.5], scores[labels < 0.5]
    return float((pos[:, None] > neg[None, :]).mean())


def _au(model: AffectFPN, x: torch.Tensor) -> dict[str, torch.Tensor]:
    with torch.inference_mode():
        out = model.eval()(x).au
    assert out is not None
    return {u: out[:, i] for i, u in enumerate(model.config.action_units)}


# ---------------------------------------------------------------------------- the AU head grows
def test_new_units_are_added_after_the_start_s_which_keep_their_outputs() -> None:
    start = _start()
    grown = add_action_units(start, ["AU4", "AU12", "AU25"], start="tiny")
    assert grown.config.action_units == ("AU1", "AU12", "AU4", "AU25")
    x = torch.rand(3, 3, SIZE, SIZE)
    before, after = _au(start, x), _au(grown, x)
    for unit in ("AU1", "AU12"):
        torch.testing.assert_close(after[unit], before[unit])
    # every tensor outside the AU head is the start's
    own, theirs = grown.state_dict(), start.state_dict()
    for key, value in theirs.items():
        if not key.startswith("heads.au"):
            torch.testing.assert_close(own[key], value, msg=key)
    assert add_action_units(start, ["AU12"]) is start  # nothing new: the model itself


def test_a_start_without_an_au_head_gets_one_with_the_new_units() -> None:
    start = _start(tasks=("expression",))
    grown = add_action_units(start, ["AU4", "AU6"])
    assert grown.config.tasks == ("expression", "au")
    assert grown.config.action_units == ("AU4", "AU6")
    x = torch.rand(2, 3, SIZE, SIZE)
    with torch.inference_mode():
        torch.testing.assert_close(grown(x).expression, start(x).expression)


def test_a_recipe_that_reorders_the_units_keeps_each_unit_s_weights(tmp_path: Path) -> None:
    """[model] action_units with init: the AU head's rows follow the unit names, not their
    positions (a head of the same size in another order must not swap what it predicts)."""
    start = _start(("AU1", "AU12"))
    start.save_pretrained(tmp_path / "start")
    recipe = recipe_from_dict(
        {
            "name": "reorder",
            "kind": "train",
            "output_dir": str(tmp_path / "run"),
            "model": {"init": str(tmp_path / "start"), "action_units": ["AU12", "AU1"]},
            "data": {"train": []},
        }
    )
    model = model_from_recipe(recipe)
    assert model.config.action_units == ("AU12", "AU1")
    x = torch.rand(2, 3, SIZE, SIZE)
    before, after = _au(start, x), _au(model, x)
    for unit in ("AU1", "AU12"):
        torch.testing.assert_close(after[unit], before[unit])


@pytest.mark.parametrize(
    ("value", "message"),
    [("all", "must be"), (["AU5"], "not action units affectfpn learns"), ([4], "must be")],
)
def test_bad_add_action_units_is_a_config_error(
    tmp_path: Path, value: object, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        recipe_from_dict(
            {
                "name": "bad",
                "kind": "train",
                "output_dir": str(tmp_path),
                "model": {"init": "x", "add_action_units": value},
                "data": {"train": []},
            }
        )


def test_add_action_units_needs_a_pretrained_start(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="needs \\[model\\] init"):
        recipe_from_dict(
            {
                "name": "fresh",
                "kind": "train",
                "output_dir": str(tmp_path),
                "model": {"add_action_units": ["AU4"]},
                "data": {"train": []},
            }
        )


# ------------------------------------------------------------------- learnt from a user's CSV
def _au4_faces(folder: Path, n: int, *, offset: int, columns: tuple[str, ...]) -> Path:
    """``n`` faces whose brightness is their AU4 label (bright: 1), AU12 labelled at random:
    a unit the tiny start has never seen, which a model can learn in a few steps."""
    rng = np.random.default_rng(offset)
    rows = []
    for i in range(n):
        bright = i % 2 == 1
        name = f"face{offset + i:03d}.png"
        level = 200 if bright else 40
        write_image(folder / name, image_size=SIZE, fill=(level, level, level), seed=offset + i)
        row = {"path": name, "AU4": str(int(bright)), "AU12": str(int(rng.integers(0, 2)))}
        rows.append({k: v for k, v in row.items() if k in ("path", *columns)})
    path = folder / f"labels{offset}.csv"
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["path", *columns])
        writer.writeheader()
        writer.writerows(rows)
    return path


def _finetune_tiny(train: Path, val: Path | None, tmp_path: Path, **changes: Any) -> dict[str, Any]:
    """Fine-tune the tiny start saved in ``tmp_path / "start"`` into ``tmp_path / "run"``:
    CPU, no replay, one batch of 8 per step."""
    settings: dict[str, Any] = {
        "batch_size": 8,
        "replay_synthetic": 0,
        "device": "cpu",
        "num_workers": 0,
        "progress": False,
        **changes,
    }
    return finetune(train, val, init=tmp_path / "start", output_dir=tmp_path / "run", **settings)


def test_fine_tuning_learns_a_unit_the_start_lacks(tmp_path: Path) -> None:
    start = _start()
    start.save_pretrained(tmp_path / "start")
    columns = ("AU4", "AU12")
    train = _au4_faces(tmp_path / "faces", 32, offset=0, columns=columns)
    val = _au4_faces(tmp_path / "faces", 16, offset=100, columns=columns)
    summary = _finetune_tiny(
        train, val, tmp_path, epochs=4, lr=0.05, backbone_lr_scale=1.0, warmup_epochs=0
    )
    assert summary["best_epoch"] >= 1
    model = AffectFPN.from_pretrained(tmp_path / "run" / "best")
    assert model.config.action_units == ("AU1", "AU12", "AU4")
    # held-out faces: the new unit's probability ranks bright above dark
    test = LabelCSV(_au4_faces(tmp_path / "faces", 16, offset=200, columns=columns))
    paths = [str(tmp_path / "faces" / key) for key in test.keys]
    labels = test.label_arrays().au[:, 2]  # AU4's column among the 12
    scores = []
    for result in model.predict(paths, faces="crop"):
        aus = result.faces[0].aus
        assert aus is not None
        scores.append(aus.probabilities["AU4"])
    assert _pairs_ranked(np.array(labels), np.array(scores)) >= 0.95


def test_no_new_units_leaves_the_head_as_it_was(tmp_path: Path) -> None:
    start = _start()
    start.save_pretrained(tmp_path / "start")
    train = _au4_faces(tmp_path / "faces", 8, offset=0, columns=("AU4", "AU12"))
    _finetune_tiny(train, None, tmp_path, add_action_units=(), epochs=1, calibrate=False)
    assert AffectFPN.from_pretrained(tmp_path / "run" / "best").config.action_units == (
        "AU1",
        "AU12",
    )


def test_check_names_the_new_units(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    start = _start()
    start.save_pretrained(tmp_path / "start")
    train = _au4_faces(tmp_path / "faces", 4, offset=0, columns=("AU4", "AU12"))
    args = ["finetune", str(train), "--model", str(tmp_path / "start"), "--check"]
    assert cli_main(args) == 0
    out = capsys.readouterr().out
    assert "labels: au 4 (AU4, AU12)" in out
    assert "new action units: AU4 " in out
    assert cli_main([*args, "--no-new-units"]) == 0
    assert "new action units" not in capsys.readouterr().out
    recipe = finetune_recipe(train, None, init=tmp_path / "start")
    assert new_action_units(recipe) == (str(tmp_path / "start"), ["AU4"])


def test_columns_of_units_affectfpn_cannot_learn_are_named(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write_image(tmp_path / "a.png", image_size=SIZE)
    (tmp_path / "labels.csv").write_text("path,AU4,AU05,AU9_c,AU12_r\na.png,1,0,1,2.5\n")
    with caplog.at_level(logging.WARNING):
        dataset = LabelCSV(tmp_path / "labels.csv")
    assert dataset.label_arrays().au_mask[0].sum() == 1  # AU4 only
    warned = [r.getMessage() for r in caplog.records if "does not learn" in r.getMessage()]
    assert len(warned) == 1
    assert "AU05, AU9_c" in warned[0]
    assert "AU12_r" not in warned[0]  # an intensity column is not a unit's label


def test_a_resumed_run_grows_the_same_head_and_loads_its_checkpoint(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The units are read from the data again on resume: last.pt loads into the same head."""
    start = _start()
    start.save_pretrained(tmp_path / "start")
    train = _au4_faces(tmp_path / "faces", 8, offset=0, columns=("AU4",))
    val = _au4_faces(tmp_path / "faces", 8, offset=100, columns=("AU4",))

    def run() -> dict[str, object]:
        return _finetune_tiny(train, val, tmp_path, epochs=2)

    first = run()
    with caplog.at_level(logging.INFO):
        second = run()
    assert any("resumed from" in r.getMessage() for r in caplog.records)
    assert second["best_epoch"] == first["best_epoch"]
    model = AffectFPN.from_pretrained(tmp_path / "run" / "best")
    assert model.config.action_units == ("AU1", "AU12", "AU4")
