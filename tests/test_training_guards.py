"""Training refuses what cannot train, and one recipe with one seed is one run.

Each test here failed before its fix (see the commit that added it).
"""

import logging
import os
from pathlib import Path

import pytest
import torch
from _fake_data import write_image, write_image_folder

from affectfpn.errors import AffectFPNError, ConfigError, InputError
from affectfpn.recipes.recipe import load_recipe, main, recipe_from_dict, run_recipe
from affectfpn.recipes.trainer import format_epoch, remove_stale_temporaries

SIZE = 32


def tiny_recipe(faces: Path, out: Path, **train: object) -> dict:
    settings = {
        "epochs": 1,
        "batch_size": 4,
        "num_workers": 0,
        "device": "cpu",
        "progress": False,
        "amp": "off",
        "seed": 3,
        **train,
    }
    return {
        "name": "tiny",
        "output_dir": str(out),
        "model": {
            "backbone": "resnet18",
            "fpn_width": 8,
            "input_size": [SIZE, SIZE],
            "tasks": ["expression"],
        },
        "data": {
            "train": [{"type": "imagefolder", "root": str(faces / "train")}],
            "val": [{"type": "imagefolder", "root": str(faces / "val")}],
        },
        "augment": {"flip": True, "erasing": 0.25},
        "train": settings,
    }


@pytest.fixture
def faces(tmp_path: Path) -> Path:
    root = tmp_path / "faces"
    write_image_folder(root / "train", {"happy": 4, "sad": 4}, image_size=SIZE)
    write_image_folder(root / "val", {"happy": 2, "sad": 2}, image_size=SIZE)
    return root


def test_two_fresh_runs_of_one_recipe_give_identical_weights(faces: Path, tmp_path: Path) -> None:
    states = []
    for run in ("a", "b"):
        torch.manual_seed(int.from_bytes(os.urandom(4), "little"))  # whatever came before
        run_recipe(recipe_from_dict(tiny_recipe(faces, tmp_path / run)))
        states.append(torch.load(tmp_path / run / "last.pt", weights_only=True)["model"])
    a, b = states
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert different == []


def test_a_label_csv_with_misspelt_columns_is_refused(faces: Path, tmp_path: Path) -> None:
    for k in range(4):
        write_image(tmp_path / "csvfaces" / f"f{k}.png", image_size=SIZE, seed=k)
    table = tmp_path / "csvfaces" / "labels.csv"
    rows = "".join(f"f{k}.png,happy,0.1,0.2,1\n" for k in range(4))
    table.write_text("path,emotion,val,aro,au_1\n" + rows)
    data = tiny_recipe(faces, tmp_path / "run")
    data["data"]["train"] = [{"type": "csv", "csv_path": str(table)}]
    with pytest.raises((ConfigError, InputError)) as info:
        run_recipe(recipe_from_dict(data))
    message = str(info.value)
    assert "labels.csv" in message or "label" in message
    assert "expression" in message
    assert not (tmp_path / "run" / "done.json").exists()


def test_a_training_set_with_only_invalid_labels_is_refused(faces: Path, tmp_path: Path) -> None:
    for k in range(4):
        write_image(tmp_path / "csvfaces" / f"f{k}.png", image_size=SIZE, seed=k)
    table = tmp_path / "csvfaces" / "labels.csv"
    table.write_text("path,expression\n" + "".join(f"f{k}.png,-1\n" for k in range(4)))
    data = tiny_recipe(faces, tmp_path / "run")
    data["data"]["train"] = [{"type": "csv", "csv_path": str(table)}]
    with pytest.raises(ConfigError, match=r"train split .* no label for the model's tasks"):
        run_recipe(recipe_from_dict(data))


def test_a_task_without_labels_in_one_split_is_warned_about(
    faces: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = tiny_recipe(faces, tmp_path / "run")
    data["model"]["tasks"] = ["expression", "au"]
    with caplog.at_level(logging.WARNING, logger="affectfpn"):
        run_recipe(recipe_from_dict(data))
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("train split" in m and "no au label" in m for m in warned), warned
    assert any("val split" in m and "no au label" in m for m in warned), warned


def test_an_empty_validation_split_is_refused(faces: Path, tmp_path: Path) -> None:
    table = tmp_path / "val.csv"
    table.write_text("path,expression\n")  # a header and no row
    data = tiny_recipe(faces, tmp_path / "run")
    data["data"]["val"] = [{"type": "csv", "csv_path": str(table)}]
    with pytest.raises(AffectFPNError, match=r"(?i)val.*(no sample|no row|empty)"):
        run_recipe(recipe_from_dict(data))
    assert not (tmp_path / "run" / "done.json").exists()


def test_best_epoch_is_counted_from_one_everywhere(faces: Path, tmp_path: Path) -> None:
    import json

    summary = run_recipe(recipe_from_dict(tiny_recipe(faces, tmp_path / "run", epochs=2)))
    history = summary["history"]
    scores = {r["epoch"]: r["val_score"] for r in history}
    assert summary["best_epoch"] in scores
    assert scores[summary["best_epoch"]] == max(scores.values())
    done = json.loads((tmp_path / "run" / "done.json").read_text())
    assert done["best_epoch"] == summary["best_epoch"]


def test_temporaries_left_by_a_killed_run_are_removed(faces: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    left = [
        out / "best" / ".model.safetensors.abc123.tmp",
        out / "pseudo" / ".expression.4242.tmp.csv",
        out / ".last.pt.4242.tmp",
    ]
    for path in left:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"partial")
    keep = out / "pseudo" / "expression.csv"
    keep.write_text("key\n")
    remove_stale_temporaries(out)
    assert [p for p in left if p.exists()] == []
    assert keep.exists()
    # and a run starting in that folder removes them too
    left[0].write_bytes(b"partial")
    run_recipe(recipe_from_dict(tiny_recipe(faces, out)))
    assert not left[0].exists()


def test_an_image_error_in_a_loader_worker_shows_its_own_message(
    faces: Path, tmp_path: Path
) -> None:
    broken = faces / "train" / "happy" / "img_000.jpg"
    broken.write_bytes(b"not an image at all")
    data = tiny_recipe(faces, tmp_path / "run", num_workers=1)
    with pytest.raises(AffectFPNError) as info:
        run_recipe(recipe_from_dict(data))
    message = str(info.value)
    assert "img_000.jpg" in message
    assert "Traceback" not in message
    assert "DataLoader worker" not in message


def test_check_and_run_parse_overrides_the_same_way(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    recipes = Path(__file__).resolve().parents[1] / "recipes"
    monkeypatch.setenv("FINETUNE_DATA", str(tmp_path))
    bad = ["--set", "model.tasks=expression,au", "--check"]
    with pytest.raises(ConfigError, match="'tasks' must be a list, got 'expression,au'"):
        load_recipe(recipes / "finetune-custom.toml", ["model.tasks=expression,au"])
    assert main([str(recipes / "finetune-custom.toml"), *bad]) != 0
    good = ["--set", "model.tasks=['expression', 'au']", "--check"]
    assert main([str(recipes / "finetune-custom.toml"), *good]) != 0  # --check opens the data
    from _fake_data import write_image_folder

    for split in ("train", "val"):
        write_image_folder(tmp_path / split, {"happy": 1, "sad": 1})
    assert main([str(recipes / "finetune-custom.toml"), *good]) == 0


def test_finetune_recipe_defaults_to_a_model_that_exists_and_the_machines_cores(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from affectfpn import list_models
    from affectfpn.recipes.trainer import TrainSettings, resolve_workers

    recipes = Path(__file__).resolve().parents[1] / "recipes"
    monkeypatch.delenv("AFFECTFPN_INIT", raising=False)
    monkeypatch.setenv("FINETUNE_DATA", str(tmp_path))
    recipe = load_recipe(recipes / "finetune-custom.toml")
    assert recipe.table("model")["init"] in [info.name for info in list_models()]
    workers = TrainSettings.from_dict(recipe.table("train")).num_workers
    assert resolve_workers(workers) <= len(os.sched_getaffinity(0))
    assert resolve_workers(workers) >= 1


def test_epoch_log_lines_are_readable() -> None:
    record = {
        "epoch": 3,
        "lr": 0.0421,
        "train_samples": 28709,
        "train_seconds": 101.3,
        "images_per_second": 283.4,
        "train_loss": 1.20341,
        "train_expression": 1.20341,
        "val": {"expression": {"accuracy": 0.5912, "f1": 0.5, "score": 0.53, "confusion": [[1]]}},
        "val_score": 0.5912,
    }
    line = format_epoch(record, 26, "expression/accuracy")
    assert line.startswith("epoch 3/26")
    assert "loss 1.2034" in line
    assert "val expression/accuracy 0.5912" in line
    assert line.endswith("101 s, 283.4 img/s")
    assert "{" not in line
    assert "[[" not in line


def test_a_diverged_model_is_named_as_such_at_validation(faces: Path, tmp_path: Path) -> None:
    from affectfpn.preprocess import eval_transform
    from affectfpn.recipes.datasets import ImageFolderExpressions
    from affectfpn.recipes.recipe import model_from_recipe
    from affectfpn.recipes.trainer import Trainer, TrainSettings

    recipe = recipe_from_dict(tiny_recipe(faces, tmp_path / "run"))
    model = model_from_recipe(recipe)
    with torch.no_grad():
        model.heads["expression"].bias.fill_(float("nan"))
    val = ImageFolderExpressions(faces / "val", transform=eval_transform(model.config))
    settings = TrainSettings.from_dict(recipe.table("train"))
    trainer = Trainer(model, val, val_set=val, settings=settings, output_dir=tmp_path / "run")
    with pytest.raises(AffectFPNError, match=r"outputs are not finite .* lower train\.lr"):
        trainer.evaluate(val)
