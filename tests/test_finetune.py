"""Fine-tuning as a product: the start is scored and kept when nothing beats it, what the data
does not teach is held by distillation, datasets weigh what they are told, several validation
sets are scored apart, a recipe's data is checked before a run, and a new valence/arousal head
trains from a CSV on the default model."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from _fake_data import write_image, write_image_folder
from test_trainer import SIZE, SyntheticFaces, tiny_model, tiny_settings

from affectfpn import AffectFPN
from affectfpn.cli import main as cli_main
from affectfpn.data import MixedDataset
from affectfpn.errors import ConfigError
from affectfpn.models.affectfpn import AffectFPNOutput
from affectfpn.recipes.augment import BatchAugment
from affectfpn.recipes.losses import distill_loss, multitask_loss
from affectfpn.recipes.recipe import load_recipe, run_recipe
from affectfpn.recipes.stage import check_data
from affectfpn.recipes.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]


class Separable(SyntheticFaces):
    """Faces whose brightness tells their expression (Neutral dark, Happiness bright): easy to
    learn, so training on them improves a model, and training on them with the labels swapped
    makes it worse."""

    def __init__(self, n: int, *, offset: int = 0, swap: bool = False) -> None:
        super().__init__(n, offset=offset)
        self.swap = swap

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = super().__getitem__(index)
        bright = (int(index) + self.offset) % 2 == 1
        noise = torch.randint(0, 40, sample["image"].shape, dtype=torch.uint8)
        sample["image"] = noise + (200 if bright else 10)
        sample["expression"] = torch.tensor(4 if bright != self.swap else 0)
        sample["expression_mask"] = torch.tensor(True)
        return sample


def state_of(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# ------------------------------------------------------------------------ the start is epoch 0
def test_a_start_that_no_epoch_beats_is_kept(tmp_path: Path) -> None:
    """Validated on the labels, trained on wrong ones at a high rate: every epoch is worse than
    the start, so best/ must hold the start itself and the summary must say epoch 0."""
    val = Separable(16, offset=500)
    model = tiny_model(tasks=("expression",), trainable_layers=5, head_dropout=0.0)
    # make the start good on the validation set: a few steps on the right labels
    Trainer(
        model,
        Separable(32),
        settings=tiny_settings(epochs=4, lr=0.05, epoch_fraction=1.0, warmup_epochs=0),
        output_dir=tmp_path / "prep",
    ).fit()
    start = state_of(model)
    trainer = Trainer(
        model,
        Separable(32, swap=True),
        val_set=val,
        settings=tiny_settings(
            epochs=3,
            lr=0.05,
            epoch_fraction=1.0,
            warmup_epochs=0,
            score_start=True,
            select_metric="expression/accuracy",
        ),
        output_dir=tmp_path / "run",
        augment=BatchAugment(),
    )
    summary = trainer.fit()
    history = summary["history"]
    assert history[0]["epoch"] == 0
    assert history[0]["start"] is True
    start_score = history[0]["val_score"]
    assert start_score > 0.9  # the start knows the task ...
    assert all(r["val_score"] < start_score for r in history[1:]), history
    assert summary["best_epoch"] == 0
    best = AffectFPN.from_pretrained(tmp_path / "run" / "best")
    for k, v in best.state_dict().items():
        torch.testing.assert_close(v, start[k], msg=k)
    done = json.loads((tmp_path / "run" / "done.json").read_text())
    assert done["best_epoch"] == 0
    rows = list(csv.DictReader((tmp_path / "run" / "metrics.csv").open()))
    assert [r["epoch"] for r in rows] == ["0", "1", "2", "3"]


def test_an_epoch_that_beats_the_start_replaces_it(tmp_path: Path) -> None:
    trainer = Trainer(
        tiny_model(tasks=("expression",), trainable_layers=5, head_dropout=0.0),
        Separable(32),
        val_set=Separable(16, offset=500),
        settings=tiny_settings(
            epochs=4,
            lr=0.05,
            epoch_fraction=1.0,
            warmup_epochs=0,
            score_start=True,
            select_metric="expression/accuracy",
        ),
        output_dir=tmp_path / "run",
    )
    summary = trainer.fit()
    assert summary["best_epoch"] >= 1
    assert summary["best_score"] > summary["history"][0]["val_score"]


# ------------------------------------------------------------------------ calibrated at the end
def _trained_on_separable(tmp_path: Path, **changes: Any) -> tuple[Trainer, dict[str, Any]]:
    trainer = Trainer(
        tiny_model(tasks=("expression",), trainable_layers=5, head_dropout=0.0),
        Separable(32),
        val_set=Separable(24, offset=500),
        settings=tiny_settings(
            epochs=3, lr=0.05, epoch_fraction=1.0, warmup_epochs=0, score_start=True, **changes
        ),
        output_dir=tmp_path / "run",
    )
    return trainer, trainer.fit()


def test_calibrate_fits_best_s_temperature_on_the_validation_data(tmp_path: Path) -> None:
    """A separable task learned in a few steps leaves the logits far from calibrated (T = 1):
    best/ must come out with the NLL-optimal temperature of the val split, reported in
    done.json and the summary, its weights unchanged."""
    from affectfpn.calibration import fit_temperature
    from affectfpn.evaluation import calibration_data

    trainer, summary = _trained_on_separable(tmp_path, calibrate=True)
    best = AffectFPN.from_pretrained(tmp_path / "run" / "best")
    done = json.loads((tmp_path / "run" / "done.json").read_text())
    calibration = done["calibration"]
    assert summary["calibration"] == calibration
    temperature = calibration["temperature"]
    assert best.config.expression_temperature == pytest.approx(temperature, abs=1e-4)
    assert abs(temperature - 1.0) > 0.05, temperature  # fitted, not the start's
    report = calibration["sets"]["val"]
    assert report["samples"] == 24
    assert report["nll_after"] <= report["nll_before"] + 1e-9
    # the same fit, by hand, on the saved weights
    data = calibration_data(best, Separable(24, offset=500))
    assert fit_temperature([(data.logits, data.labels)]) == pytest.approx(temperature, rel=1e-3)
    # a finished run resumed does not fit again, and keeps the record
    again = trainer.fit()
    assert again["calibration"] == calibration


def test_without_calibrate_best_keeps_its_temperature(tmp_path: Path) -> None:
    _, summary = _trained_on_separable(tmp_path, calibrate=False)
    best = AffectFPN.from_pretrained(tmp_path / "run" / "best")
    assert best.config.expression_temperature == 1.0
    assert "calibration" not in summary
    assert "calibration" not in json.loads((tmp_path / "run" / "done.json").read_text())


def test_calibrate_must_be_a_boolean() -> None:
    with pytest.raises(ConfigError, match=r"train\.calibrate must be true or false"):
        tiny_settings(calibrate="yes")


def test_a_recipe_with_init_scores_its_start_and_one_without_does_not(tmp_path: Path) -> None:
    folder = tmp_path / "faces"
    for split in ("train", "val"):
        write_image_folder(folder / split, {"happy": 3, "neutral": 3}, image_size=SIZE)
    start = tmp_path / "start"
    tiny_model(tasks=("expression",)).save_pretrained(start)
    common = [
        f"data.train=[{{type='imagefolder', root='{folder / 'train'}'}}]",
        f"data.val=[{{type='imagefolder', root='{folder / 'val'}'}}]",
        "train.epochs=1",
        "train.batch_size=4",
        "train.device=cpu",
        "train.num_workers=0",
        "train.progress=false",
        "train.amp=off",
        "train.channels_last=false",
        "train.replay_synthetic=4",  # the defaults' replay, made small
        "train.replay_iterations=2",
    ]
    tuned = run_recipe(
        load_recipe(
            ROOT / "recipes" / "finetune-custom.toml",
            [*common, f"model.init={start}", f"output_dir={tmp_path / 'a'}"],
        )
    )
    assert tuned["history"][0]["epoch"] == 0
    fresh = tmp_path / "fresh.toml"
    fresh.write_text(
        f"""
name = "fresh"
output_dir = "{tmp_path / "b"}"
[model]
backbone = "resnet18"
fpn_width = 8
input_size = [{SIZE}, {SIZE}]
tasks = ["expression"]
[data]
train = [{{ type = "imagefolder", root = "{folder / "train"}" }}]
val = [{{ type = "imagefolder", root = "{folder / "val"}" }}]
[train]
epochs = 1
batch_size = 4
device = "cpu"
num_workers = 0
progress = false
"""
    )
    summary = run_recipe(load_recipe(fresh))
    assert [r["epoch"] for r in summary["history"]] == [1]


# ------------------------------------------------------------------------ holding the start
def _output(expression: torch.Tensor | None, au: torch.Tensor | None) -> AffectFPNOutput:
    return AffectFPNOutput(None, expression, au)


def test_distill_loss_is_zero_at_the_start_and_grows_with_the_distance() -> None:
    torch.manual_seed(0)
    expr, au = torch.randn(8, 7), torch.randn(8, 4)
    same, parts = distill_loss(
        _output(expr, au), _output(expr, au), weights={"expression": 1.0, "au": 1.0}
    )
    # the AU term is the BCE against its own sigmoid: its minimum is the entropy, not 0
    entropy = torch.nn.functional.binary_cross_entropy_with_logits(au, au.sigmoid())
    torch.testing.assert_close(parts["expression"], torch.tensor(0.0), atol=1e-6, rtol=0)
    torch.testing.assert_close(parts["au"], entropy)
    near, _ = distill_loss(
        _output(expr + 0.1 * torch.randn(8, 7), au + 0.1),
        _output(expr, au),
        weights={"expression": 1.0, "au": 1.0},
    )
    far, _ = distill_loss(
        _output(expr + 2 * torch.randn(8, 7), au + 2.0),
        _output(expr, au),
        weights={"expression": 1.0, "au": 1.0},
    )
    assert same < near < far
    # shared units matched by name: student (AU1, AU2, AU12) against teacher (AU12, AU1)
    student = torch.tensor([[1.0, 5.0, -2.0]])
    teacher = torch.tensor([[-2.0, 1.0]])
    loss, _ = distill_loss(
        _output(None, student),
        _output(None, teacher),
        weights={"au": 1.0},
        au_index=([0, 2], [1, 0]),
    )
    expected = torch.nn.functional.binary_cross_entropy_with_logits(
        torch.tensor([[1.0, -2.0]]), torch.tensor([[1.0, -2.0]]).sigmoid()
    )
    torch.testing.assert_close(loss, expected)


def _au_drift(tmp_path: Path, name: str, **changes: Any) -> float:
    """How far the AU outputs move when a model is trained on expression labels only."""
    model = tiny_model(tasks=("expression", "au"), trainable_layers=5, head_dropout=0.0)
    # a pretrained start (its BatchNorm statistics fit the faces): the same for every call
    Trainer(
        model,
        SyntheticFaces(24, offset=200),
        settings=tiny_settings(epochs=2, epoch_fraction=1.0),
        output_dir=tmp_path / f"{name}-start",
    ).fit()
    probe = torch.stack([SyntheticFaces(16, offset=900)[i]["image"] for i in range(16)])
    from affectfpn.preprocess import normalize

    x = normalize(probe, model.config)
    model.eval()
    with torch.no_grad():
        before = model(x).au.sigmoid()

    class ExpressionOnly(SyntheticFaces):
        def __getitem__(self, index: int) -> dict[str, Any]:
            sample = super().__getitem__(index)
            sample["au_mask"] = torch.zeros(12, dtype=torch.bool)
            return sample

    Trainer(
        model,
        ExpressionOnly(24),
        settings=tiny_settings(epochs=4, lr=0.05, epoch_fraction=1.0, warmup_epochs=0, **changes),
        output_dir=tmp_path / name,
    ).fit()
    model.eval()
    with torch.no_grad():
        after = model(x).au.sigmoid()
    return float((after - before).abs().mean())


def test_distilling_from_the_start_holds_the_heads_the_data_does_not_teach(
    tmp_path: Path,
) -> None:
    free = _au_drift(tmp_path, "free")
    held = _au_drift(tmp_path, "held", distill_start={"au": 1.0})
    assert free > 0.01  # training the shared layers moves the untaught head ...
    assert held < 0.5 * free  # ... and distillation keeps it near the start


def test_distill_start_leaves_out_tasks_the_start_lacks(tmp_path: Path) -> None:
    start = tiny_model(tasks=("expression",))
    trainer = Trainer(
        tiny_model(tasks=("expression", "au")),
        SyntheticFaces(8),
        settings=tiny_settings(distill_start={"au": 1.0, "expression": 0.5}),
        output_dir=tmp_path,
        teacher=start,
    )
    assert trainer._distill_weights == {"expression": 0.5}
    only_au = Trainer(
        tiny_model(tasks=("expression", "au")),
        SyntheticFaces(8),
        settings=tiny_settings(distill_start={"au": 1.0}),
        output_dir=tmp_path,
        teacher=start,
    )
    assert only_au.teacher is None
    with pytest.raises(ConfigError, match="unknown task"):
        tiny_settings(distill_start={"valence": 1.0})


def test_backbone_lr_scale_zero_freezes_the_backbone_only(tmp_path: Path) -> None:
    model = tiny_model(tasks=("expression",), trainable_layers=5, head_dropout=0.0)
    start = state_of(model)
    Trainer(
        model,
        SyntheticFaces(12),
        settings=tiny_settings(epochs=1, backbone_lr_scale=0.0, weight_decay=0.0),
        output_dir=tmp_path,
    ).fit()
    now = model.state_dict()
    moved = {k for k in start if not torch.equal(start[k], now[k]) and "running" not in k}
    moved = {k for k in moved if not k.endswith("num_batches_tracked")}
    assert moved
    assert all(not k.startswith("backbone.") for k in moved), sorted(moved)[:5]


# ------------------------------------------------------------------------ weights and val sets
def test_a_part_weighted_zero_adds_nothing_to_the_loss() -> None:
    a, b = SyntheticFaces(4), SyntheticFaces(4, offset=50)
    mixed = MixedDataset([a, b], names=["a", "b"], weights=[1.0, 0.0])
    batch = torch.utils.data.default_collate([mixed[i] for i in range(8)])
    assert batch["weight"].tolist() == [1.0] * 4 + [0.0] * 4
    torch.manual_seed(0)
    out = AffectFPNOutput(torch.randn(8, 2).tanh(), torch.randn(8, 7), torch.randn(8, 12))
    total, _ = multitask_loss(out, batch)
    only_a = {k: v[:4] for k, v in batch.items() if isinstance(v, torch.Tensor)}
    only_a.pop("weight")
    expected, _ = multitask_loss(AffectFPNOutput(*(t[:4] for t in out[:3])), only_a)
    torch.testing.assert_close(total, expected)
    with pytest.raises(ConfigError, match="weights"):
        MixedDataset([a, b], names=["a", "b"], weights=[1.0, -1.0])


def test_named_validation_sets_are_scored_apart_and_averaged(tmp_path: Path) -> None:
    trainer = Trainer(
        tiny_model(tasks=("expression",)),
        SyntheticFaces(8),
        val_set={"one": SyntheticFaces(8, offset=100), "two": SyntheticFaces(5, offset=300)},
        settings=tiny_settings(epochs=1, select_metric="expression/accuracy", score_start=True),
        output_dir=tmp_path,
    )
    summary = trainer.fit()
    for record in summary["history"]:
        one = record["val"]["one"]["expression"]["accuracy"]
        two = record["val"]["two"]["expression"]["accuracy"]
        assert record["val_score"] == pytest.approx((one + two) / 2)
    card = (tmp_path / "best" / "README.md").read_text()
    assert "one/expression/accuracy" in card


# ------------------------------------------------------------------------ checking the data
def test_check_names_every_missing_or_unlabelled_dataset(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    (empty / "happy").mkdir(parents=True)
    good = tmp_path / "good"
    write_image_folder(good, {"happy": 2, "sad": 1})
    data = {
        "train": [{"type": "imagefolder", "root": str(tmp_path / "nowhere")}],
        "val": [{"type": "imagefolder", "root": str(empty)}],
    }
    with pytest.raises(ConfigError) as err:
        check_data(data, source="r.toml")
    message = str(err.value)
    assert "nowhere" in message
    assert "empty" in message
    lines = check_data({"train": {"type": "imagefolder", "root": str(good)}}, source="r.toml")
    assert lines == ["train: imagefolder with 3 samples; labels: expression 3"]


def test_train_check_fails_on_missing_finetune_data(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.setenv("FINETUNE_DATA", str(tmp_path / "nonexistent"))
    code = cli_main(["train", str(ROOT / "recipes" / "finetune-custom.toml"), "--check"])
    assert code != 0
    assert "nonexistent/train" in capsys.readouterr().err
    for split in ("train", "val"):
        write_image_folder(tmp_path / "ok" / split, {"neutral": 2, "happy": 2})
    monkeypatch.setenv("FINETUNE_DATA", str(tmp_path / "ok"))
    assert cli_main(["train", str(ROOT / "recipes" / "finetune-custom.toml"), "--check"]) == 0
    assert "labels: expression 4" in capsys.readouterr().out


# ------------------------------------------------------------------------ a VA head from a CSV
def test_a_valence_arousal_head_fine_tunes_from_a_csv_on_the_default(tmp_path: Path) -> None:
    """A new VA head on the embedded default, from a user's CSV: the default's expression and
    AU heads are kept, the VA head learns, and predict() reports valence/arousal per face."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(24):
        name = f"img{i:02d}.png"
        write_image(tmp_path / "faces" / name, image_size=48, seed=i, grey=True)
        v, a = rng.uniform(-0.8, 0.8, 2)
        rows.append({"path": name, "valence": f"{v:.3f}", "arousal": f"{a:.3f}"})
    for split, part in (("train", rows[:16]), ("val", rows[16:])):
        with (tmp_path / "faces" / f"{split}.csv").open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["path", "valence", "arousal"])
            writer.writeheader()
            writer.writerows(part)
    default = AffectFPN.from_pretrained()
    recipe = load_recipe(
        ROOT / "recipes" / "finetune-custom.toml",
        [
            f"output_dir={tmp_path / 'run'}",
            "model.add_tasks=['va']",
            f"data.train=[{{type='csv', csv_path='{tmp_path / 'faces' / 'train.csv'}'}}]",
            f"data.val=[{{type='csv', csv_path='{tmp_path / 'faces' / 'val.csv'}'}}]",
            "train.epochs=2",
            "train.batch_size=8",
            "train.device=cpu",
            "train.progress=false",
            "train.replay_synthetic=4",
            "train.replay_iterations=2",
        ],
    )
    summary = run_recipe(recipe)
    assert summary["history"][0]["epoch"] == 0
    last = AffectFPN.from_pretrained(tmp_path / "run" / "best")
    assert last.config.tasks == ("va", "expression", "au")
    assert last.config.action_units == default.config.action_units
    result = last.predict(tmp_path / "faces" / "img00.png", faces="crop")
    face = result.faces[0]
    assert face.va is not None
    assert -1 <= face.va.valence <= 1
    assert -1 <= face.va.arousal <= 1
    assert face.expression is not None
    assert face.aus is not None


def test_every_training_setting_says_what_it_changes() -> None:
    """Each TrainSettings field is marked trajectory, selection or run on the field itself; the
    resume warning and the teacher-student fingerprint read those marks."""
    import dataclasses

    from affectfpn.recipes.trainer import SETTING_KINDS, TrainSettings, settings_of_kind

    for f in dataclasses.fields(TrainSettings):
        assert f.metadata.get("kind") in SETTING_KINDS, f.name
    assert {"lr", "seed", "distill_start", "backbone_lr_scale"} <= set(
        settings_of_kind("trajectory")
    )
    assert {"select_metric", "eval_every", "score_start"} <= set(settings_of_kind("selection"))
    assert {"deterministic", "device", "num_workers", "epochs"} <= set(settings_of_kind("run"))


# ------------------------------------------------------------------------ the packaged defaults
def test_the_recipe_file_and_the_package_share_the_fine_tuning_defaults(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """pip users have no recipes/ folder: the measured defaults live in the package
    (affectfpn.recipes.finetune) and the recipe file says the same."""
    from affectfpn.recipes.finetune import FINETUNE_AUGMENT, FINETUNE_TRAIN
    from affectfpn.registry import default_model_name

    monkeypatch.setenv("FINETUNE_DATA", "/data/faces")
    monkeypatch.delenv("AFFECTFPN_INIT", raising=False)
    recipe = load_recipe(ROOT / "recipes" / "finetune-custom.toml")
    assert recipe.table("train") == FINETUNE_TRAIN
    assert recipe.table("augment") == FINETUNE_AUGMENT
    # the embedded default, growing its AU head by the units the data labels
    assert recipe.table("model") == {"init": default_model_name(), "add_action_units": "labelled"}
    from affectfpn.recipes.finetune import finetune_recipe

    assert finetune_recipe("/data/faces/train", None).table("model") == recipe.table("model")


def test_finetune_command_trains_from_folders_and_keeps_the_start_heads(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AFFECTFPN_CACHE", str(tmp_path / "cache"))  # replay images made here
    for split in ("train", "val"):
        write_image_folder(tmp_path / split, {"neutral": 4, "happy": 4}, image_size=48)
    code = cli_main(
        [
            "finetune",
            str(tmp_path / "train"),
            str(tmp_path / "val"),
            "--out",
            str(tmp_path / "run"),
            "--set",
            "epochs=1",
            "--set",
            "batch_size=8",
            "--set",
            "device='cpu'",
            "--set",
            "replay_synthetic=4",
            "--set",
            "replay_iterations=2",
        ]
    )
    assert code == 0
    from safetensors.torch import load_file

    # the defaults replay images of the start (here 4 of them, 48 px grey)
    images = load_file(tmp_path / "run" / "replay.safetensors")["images"]
    assert images.shape == (4, 3, 48, 48)
    assert torch.equal(images[:, 0], images[:, 2])
    captured = capsys.readouterr()
    out = captured.out
    assert "best epoch" in out
    # a training command: what takes the time is said at the default level (minutes of replay)
    assert "synthetic replay: inverting 4 images" in captured.err
    assert "epoch 1/1" in captured.err
    model = AffectFPN.from_pretrained(tmp_path / "run" / "best")
    assert model.config.tasks == ("expression", "au")  # the default's AU head is kept
    # calibrated for these faces: one temperature, the default's per-face calibrator dropped
    assert model.calibrator is None
    assert not model.config.adaptive_temperature
    done = json.loads((tmp_path / "run" / "done.json").read_text())
    temperature = done["calibration"]["temperature"]
    assert model.config.expression_temperature == pytest.approx(temperature, abs=1e-4)
    assert f"calibrated: expression temperature {temperature:.4f}" in out
    rows = list(csv.DictReader((tmp_path / "run" / "metrics.csv").open()))
    assert rows[0]["epoch"] == "0"
    assert cli_main(["finetune", str(tmp_path / "missing"), "--check"]) != 0
    assert "missing" in capsys.readouterr().err


def test_interpolate_start_saves_the_mix_and_trains_on(tmp_path: Path) -> None:
    """interpolate_start = 0.5: best/ holds the mean of the start and the trained weights, while
    the model (and last.pt) keep the trained ones."""
    model = tiny_model(tasks=("expression",), trainable_layers=5, head_dropout=0.0)
    start = state_of(model)
    Trainer(
        model,
        Separable(16),
        settings=tiny_settings(epochs=2, lr=0.05, epoch_fraction=1.0, interpolate_start=0.5),
        output_dir=tmp_path,
    ).fit()
    trained = state_of(model)
    best = AffectFPN.from_pretrained(tmp_path / "best").state_dict()
    moved = 0
    for k, v in trained.items():
        if not v.is_floating_point():
            continue
        torch.testing.assert_close(best[k], (start[k] + v) / 2, msg=k)
        moved += int(not torch.equal(start[k], v))
    assert moved > 10  # training moved the weights, so the mix differs from both
    with pytest.raises(ConfigError, match="interpolate_start"):
        tiny_settings(interpolate_start=0.0)
