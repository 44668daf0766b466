"""Tests of the training loop (affectfpn.recipes.trainer) and the masked losses, on the CPU.

Tiny models (ResNet-18, FPN width 8, 32x32 faces, only the pyramid and heads trainable unless a
test needs more) and a dozen synthetic samples keep every training run to a second or two. The
crash tests run the trainer in a child process (forked, so that it trains exactly what the
in-process reference trains without paying for the imports again) and kill it; the distributed
test launches two fresh CPU processes with ``torch.distributed.run`` (gloo), whose script
imports the helpers below from this file.
"""

import csv
import io
import itertools
import json
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from _fake_data import write_affwild2_tree, write_image_folder
from torch.utils.data import Dataset

import affectfpn.recipes.trainer as trainer_module
from affectfpn import AffectFPN, AffectFPNConfig
from affectfpn.errors import AffectFPNError, ConfigError
from affectfpn.labels import TASKS
from affectfpn.models.affectfpn import AffectFPNOutput
from affectfpn.recipes.augment import BatchAugment
from affectfpn.recipes.datasets import AffWild2MultiTask
from affectfpn.recipes.losses import multitask_loss
from affectfpn.recipes.recipe import Recipe, load_recipe, train_from_recipe
from affectfpn.recipes.trainer import (
    EpochFractionSampler,
    Trainer,
    TrainSettings,
    training_finished,
)

TESTS_DIR = Path(__file__).resolve().parent
REPO_ROOT = TESTS_DIR.parent
SIZE = 32


# --------------------------------------------------------------------------------- helpers
class SyntheticFaces(Dataset[dict[str, Any]]):
    """``n`` deterministic samples (noise images, labels with some masked out).

    Args:
        n: number of samples.
        offset: added to the index to seed pixels and labels (another set of samples).
        on_get: called with every index read (to log what training reads).
        pause_at: on this call number (1-based), create ``marker`` and sleep for a minute (a
            process to be killed mid-epoch).
        marker: the file ``pause_at`` creates.
    """

    def __init__(
        self,
        n: int,
        *,
        offset: int = 0,
        on_get: Callable[[int], None] | None = None,
        pause_at: int | None = None,
        marker: str | None = None,
    ) -> None:
        self.n = n
        self.offset = offset
        self.on_get = on_get
        self.pause_at = pause_at
        self.marker = marker
        self.calls = 0
        self.keys = [f"s{offset + i:04d}" for i in range(n)]

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> dict[str, Any]:
        self.calls += 1
        if self.pause_at is not None and self.calls == self.pause_at:
            assert self.marker is not None
            Path(self.marker).write_text(str(index))
            time.sleep(60)
        if self.on_get is not None:
            self.on_get(int(index))
        i = int(index) + self.offset
        rng = np.random.default_rng(1000 + i)
        au_mask = rng.random(12) > 0.2
        return {
            "image": torch.from_numpy(rng.integers(0, 256, (3, SIZE, SIZE), dtype=np.uint8)),
            "key": self.keys[int(index)],
            "va": torch.from_numpy(rng.uniform(-1, 1, 2).astype(np.float32)),
            "va_mask": torch.tensor(i % 3 != 0),
            "expression": torch.tensor(i % 7, dtype=torch.int64),
            "expression_mask": torch.tensor(i % 4 != 1),
            "au": torch.from_numpy((rng.random(12) > 0.5).astype(np.float32) * au_mask),
            "au_mask": torch.from_numpy(au_mask),
        }


def tiny_model(
    tasks: tuple[str, ...] = TASKS, trainable_layers: int = 0, head_dropout: float = 0.1
) -> AffectFPN:
    """A tiny model whose weights depend only on its arguments."""
    torch.manual_seed(0)
    config = AffectFPNConfig(
        backbone="resnet18",
        fpn_width=8,
        input_size=(SIZE, SIZE),
        tasks=tasks,
        trainable_layers=trainable_layers,
        head_dropout=head_dropout,
    )
    return AffectFPN(config)


def tiny_settings(**changes: Any) -> TrainSettings:
    """Small, CPU-only settings: cosine schedule with warm-up, half the data per epoch."""
    values: dict[str, Any] = {
        "epochs": 3,
        "batch_size": 4,
        "lr": 1e-2,
        "warmup_epochs": 1,
        "epoch_fraction": 0.5,
        "device": "cpu",
        "num_workers": 0,
        "progress": False,
        "channels_last": False,
        "amp": "off",
        "seed": 0,
    }
    values.update(changes)
    return TrainSettings(**values)


TRAIN_N, VAL_N = 12, 4


def reference_trainer(
    output_dir: str | Path, *, train_set: Dataset[dict[str, Any]] | None = None, **changes: Any
) -> Trainer:
    """The trainer every resume test compares against (and the child scripts rebuild)."""
    return Trainer(
        tiny_model(),
        train_set if train_set is not None else SyntheticFaces(TRAIN_N),
        val_set=SyntheticFaces(VAL_N, offset=500),
        settings=tiny_settings(**changes),
        output_dir=output_dir,
        augment=BatchAugment(),
    )


def state_of(model: AffectFPN) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"tensors differ: {different[:5]}"


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("AFFECTFPN_TRAIN_FENCE", None)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), str(TESTS_DIR)])
    env["OMP_NUM_THREADS"] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    return env


CHILD_PRELUDE = f"""
import os, sys, signal, io, json, time
sys.path[:0] = [{str(TESTS_DIR)!r}, {str(REPO_ROOT)!r}]
import torch
torch.set_num_threads(1)
from test_trainer import reference_trainer, SyntheticFaces, TRAIN_N
"""


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One uninterrupted 3-epoch run: its final weights (and after each epoch), history, folder."""
    out = tmp_path_factory.mktemp("reference")
    trainer = reference_trainer(out)
    per_epoch: list[dict[str, torch.Tensor]] = []
    save = trainer.save_checkpoint

    def save_and_record() -> None:
        per_epoch.append(state_of(trainer.model))
        save()

    trainer.save_checkpoint = save_and_record  # type: ignore[method-assign]
    summary = trainer.fit()
    return {"state": state_of(trainer.model), "epochs": per_epoch, "summary": summary, "dir": out}


# --------------------------------------------------------------------------------- losses
def _batch(n: int = 4) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    return {
        "va": torch.rand(n, 2, generator=g) * 2 - 1,
        "va_mask": torch.tensor([True, False, True, False])[:n],
        "expression": torch.tensor([1, 2, 3, 4])[:n],
        "expression_mask": torch.ones(n, dtype=torch.bool),
        "au": (torch.rand(n, 12, generator=g) > 0.5).float(),
        "au_mask": torch.rand(n, 12, generator=g) > 0.3,
    }


def test_masked_loss_is_the_mean_over_present_labels_only() -> None:
    g = torch.Generator().manual_seed(1)
    out = AffectFPNOutput(
        va=torch.rand(4, 2, generator=g) * 2 - 1,
        expression=torch.randn(4, 7, generator=g),
        au=torch.randn(4, 12, generator=g),
    )
    batch = _batch()
    batch["expression_mask"] = torch.tensor([True, True, False, True])
    # masked-out entries hold invalid markers: they must not change anything
    poisoned = dict(batch)
    poisoned["va"] = torch.where(batch["va_mask"][:, None], batch["va"], torch.tensor(-5.0))
    poisoned["expression"] = torch.where(batch["expression_mask"], batch["expression"], -1)
    poisoned["au"] = torch.where(batch["au_mask"], batch["au"], torch.tensor(float("nan")))
    _, parts = multitask_loss(out, poisoned)

    rows = batch["va_mask"]
    want_va = ((out.va[rows] - batch["va"][rows]) ** 2).mean()
    keep = batch["expression_mask"]
    want_ex = torch.nn.functional.cross_entropy(out.expression[keep], batch["expression"][keep])
    m = batch["au_mask"]
    want_au = torch.nn.functional.binary_cross_entropy_with_logits(out.au[m], batch["au"][m])
    torch.testing.assert_close(parts["va"], want_va)
    torch.testing.assert_close(parts["expression"], want_ex)
    torch.testing.assert_close(parts["au"], want_au)


def test_task_without_labels_gives_exact_zero_loss_and_zero_head_gradient() -> None:
    model = tiny_model(trainable_layers=1, head_dropout=0.0).train()
    x = torch.randn(4, 3, SIZE, SIZE)
    batch = _batch()
    batch["expression_mask"] = torch.zeros(4, dtype=torch.bool)
    batch["expression"] = torch.full((4,), -1)  # invalid markers behind a False mask
    out = model(x)
    total, parts = multitask_loss(out, batch)
    assert parts["expression"].item() == 0.0
    assert torch.equal(total, parts["va"] + parts["au"])
    total.backward()
    head = model.heads["expression"]
    # the graph reaches the head (DDP needs every parameter used) with an exact zero gradient
    assert head.weight.grad is not None
    assert head.bias.grad is not None
    assert torch.count_nonzero(head.weight.grad) == 0
    assert torch.count_nonzero(head.bias.grad) == 0
    for task in ("va", "au"):
        grad = model.heads[task].weight.grad
        assert grad is not None
        assert torch.count_nonzero(grad) > 0
    layer4 = [
        p for n, p in model.named_parameters() if n.startswith("backbone") and p.requires_grad
    ]
    assert layer4
    assert all(p.grad is not None for p in layer4)


def test_task_weights_scale_the_total_and_a_zero_weight_stops_the_head() -> None:
    model = tiny_model(head_dropout=0.0).train()
    out = model(torch.randn(4, 3, SIZE, SIZE))
    weights = {"va": 2.0, "expression": 0.0, "au": 0.5}
    total, parts = multitask_loss(out, _batch(), weights=weights)
    torch.testing.assert_close(
        total, 2.0 * parts["va"] + 0.0 * parts["expression"] + 0.5 * parts["au"]
    )
    assert parts["expression"].item() > 0
    total.backward()
    assert torch.count_nonzero(model.heads["expression"].weight.grad) == 0
    assert torch.count_nonzero(model.heads["va"].weight.grad) > 0


def test_task_weights_and_other_settings_are_checked() -> None:
    with pytest.raises(ConfigError, match="expr"):
        TrainSettings(task_weights={"expr": 1.0})
    with pytest.raises(ConfigError, match=r"task_weights\.au"):
        TrainSettings(task_weights={"au": -1.0})
    with pytest.raises(ConfigError, match="optimizer"):
        TrainSettings(optimizer="rmsprop")
    with pytest.raises(ConfigError, match="epoch_fraction"):
        TrainSettings(epoch_fraction=0.0)
    with pytest.raises(ConfigError, match=r"unknown setting.*'epoch'"):
        TrainSettings.from_dict({"epoch": 3})


def test_invalid_label_markers_never_reach_the_loss(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = write_affwild2_tree(tmp_path / "aff", image_size=SIZE)
    data = AffWild2MultiTask(tmp_path / "aff", "train", image_size=(SIZE, SIZE))
    seen: list[dict[str, Any]] = []

    def spy(output: AffectFPNOutput, batch: dict[str, Any], **kwargs: Any) -> Any:
        seen.append({k: v.detach().clone() if torch.is_tensor(v) else v for k, v in batch.items()})
        return multitask_loss(output, batch, **kwargs)

    monkeypatch.setattr(trainer_module, "multitask_loss", spy)
    trainer = Trainer(
        tiny_model(head_dropout=0.0),
        data,
        settings=tiny_settings(epochs=1, epoch_fraction=1.0, batch_size=8),
        output_dir=tmp_path / "run",
    )
    trainer.fit()
    keys = [k for b in seen for k in b["key"]]
    assert sorted(keys) == sorted(data.keys)
    assert len(keys) == len(data)
    for b in seen:
        va, vm = b["va"], b["va_mask"]
        assert (va[vm].abs() <= 1).all()
        assert (b["expression"][b["expression_mask"]] >= 0).all()
        assert (b["expression"][b["expression_mask"]] < 7).all()
        assert set(b["au"][b["au_mask"]].unique().tolist()) <= {0.0, 1.0}
        for name in ("va", "expression", "au"):  # markers are not even kept behind a False mask
            assert not (b[name] == -5).any()
            assert not (b[name] == -1).any()
        for i, key in enumerate(b["key"]):
            va_label = fake.labels["va"].get(key)
            assert bool(vm[i]) == (va_label is not None), key
            if va_label is not None:
                assert va[i].tolist() == pytest.approx(va_label, abs=1e-6)
            ex_label = fake.labels["expression"].get(key)
            assert bool(b["expression_mask"][i]) == (ex_label is not None), key
            au_label = fake.labels["au"].get(key)
            want = [False] * 12 if au_label is None else [v is not None for v in au_label]
            assert b["au_mask"][i].tolist() == want, key
    invalid = {f"{v}/{f:05d}" for v in fake.videos("va", "train") for f in (2, 5, 6)}
    assert invalid & set(keys), "the fake tree's invalid VA frames must be among the samples"


# --------------------------------------------------------------------------------- sampler
def test_epoch_fraction_draws_a_fresh_quarter_each_epoch() -> None:
    sampler = EpochFractionSampler(100, fraction=0.25, seed=7)
    subsets = []
    for epoch in range(4):
        sampler.set_epoch(epoch)
        drawn = list(sampler)
        assert len(drawn) == len(sampler) == 25
        assert len(set(drawn)) == 25
        assert all(0 <= i < 100 for i in drawn)
        subsets.append(frozenset(drawn))
    assert len(set(subsets)) == 4, "every epoch draws another subset"
    again = EpochFractionSampler(100, fraction=0.25, seed=7)
    again.set_epoch(2)
    sampler.set_epoch(2)
    assert list(again) == list(sampler), "same seed and epoch, same subset in the same order"
    other = EpochFractionSampler(100, fraction=0.25, seed=8)
    other.set_epoch(2)
    assert set(other) != set(sampler)


def test_epoch_fraction_split_across_ranks_without_overlap() -> None:
    ranks = [EpochFractionSampler(30, fraction=0.5, seed=1, rank=r, world_size=2) for r in (0, 1)]
    for s in ranks:
        s.set_epoch(3)
    a, b = list(ranks[0]), list(ranks[1])
    assert len(a) == len(b) == len(ranks[0]) == 7  # 15 drawn, trimmed to 14
    assert not set(a) & set(b)
    assert set(a) | set(b) == set(ranks[0].epoch_indices())
    with pytest.raises(ConfigError, match="fewer than"):
        EpochFractionSampler(1, world_size=2)


# --------------------------------------------------------------------------------- optimiser
def test_optimiser_and_schedule_come_from_the_settings(tmp_path: Path) -> None:
    settings = tiny_settings(
        optimizer="sgd",
        lr=0.1,
        momentum=0.8,
        nesterov=False,
        weight_decay=1e-3,
        schedule="cosine",
        warmup_epochs=1,
        min_lr_ratio=0.1,
        epochs=4,
        epoch_fraction=1.0,
        batch_size=4,
    )
    trainer = Trainer(tiny_model(), SyntheticFaces(TRAIN_N), settings=settings, output_dir=tmp_path)
    opt = trainer.optimizer
    assert isinstance(opt, torch.optim.SGD)
    assert [g["weight_decay"] for g in opt.param_groups] == [1e-3, 0.0]
    assert all(g["momentum"] == 0.8 and g["nesterov"] is False for g in opt.param_groups)
    decayed = {id(p) for p in opt.param_groups[0]["params"]}
    assert all(p.ndim > 1 for p in opt.param_groups[0]["params"])
    assert not any(
        id(p) in decayed for n, p in trainer.model.named_parameters() if n.endswith("bias")
    )
    steps = trainer.steps_per_epoch
    assert steps == 3
    factors = [trainer._lr_factor(i) for i in range(4 * steps)]
    assert factors[:3] == pytest.approx([1 / 3, 2 / 3, 1.0])  # linear warm-up over one epoch
    assert factors[3] == pytest.approx(1.0)
    assert factors[-1] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * 8 / 9)))
    assert all(a >= b for a, b in itertools.pairwise(factors[3:]))
    adamw = Trainer(
        tiny_model(),
        SyntheticFaces(4),
        settings=tiny_settings(optimizer="adamw"),
        output_dir=tmp_path,
    )
    assert isinstance(adamw.optimizer, torch.optim.AdamW)
    step = Trainer(
        tiny_model(),
        SyntheticFaces(4),
        settings=tiny_settings(schedule="step", warmup_epochs=0, epochs=3, epoch_fraction=1.0),
        output_dir=tmp_path,
    )
    assert [step._lr_factor(i) for i in (0, 1, 2)] == pytest.approx([1.0, 0.1, 0.01])


def test_non_finite_loss_stops_training(tmp_path: Path) -> None:
    model = tiny_model()
    with torch.no_grad():
        model.heads["va"].bias.fill_(float("nan"))
    trainer = Trainer(
        model, SyntheticFaces(4), settings=tiny_settings(epochs=1), output_dir=tmp_path
    )
    with pytest.raises(AffectFPNError, match="loss became nan"):
        trainer.fit()
    assert not (tmp_path / "last.pt").exists()


# --------------------------------------------------------------------------------- determinism
def test_training_is_seeded_and_deterministic(tmp_path: Path, reference: dict[str, Any]) -> None:
    again = reference_trainer(tmp_path / "again")
    again.fit(stop_after_epoch=1)
    assert_same_state(state_of(again.model), reference["epochs"][0])
    other = reference_trainer(tmp_path / "other", seed=1)
    other.fit(stop_after_epoch=1)
    head = "heads.va.weight"
    assert not torch.equal(other.model.state_dict()[head], reference["epochs"][0][head])


def test_resume_after_stopping_matches_an_uninterrupted_run(
    tmp_path: Path, reference: dict[str, Any]
) -> None:
    first = reference_trainer(tmp_path)
    summary = first.fit(stop_after_epoch=1)
    assert summary["finished"] is False
    assert len(summary["history"]) == 1
    assert torch.load(tmp_path / "last.pt", weights_only=True)["epoch"] == 1
    assert not (tmp_path / "done.json").exists()
    assert training_finished(tmp_path, 1), "last.pt holds one epoch"
    assert not training_finished(tmp_path, 3)
    resumed = reference_trainer(tmp_path)  # a new process would start from fresh weights
    summary = resumed.fit()
    assert summary["finished"] is True
    assert_same_state(state_of(resumed.model), reference["state"])
    assert summary["best_epoch"] == reference["summary"]["best_epoch"]
    assert [r["epoch"] for r in read_jsonl(tmp_path / "metrics.jsonl")] == [1, 2, 3]
    assert json.loads((tmp_path / "done.json").read_text())["epochs"] == 3
    (tmp_path / "last.pt").unlink()
    assert training_finished(tmp_path, 3), "done.json alone says so"


def test_resume_with_more_epochs_continues_exactly(tmp_path: Path) -> None:
    # The recipe: train k epochs, then a new Trainer with epochs=N resumes. Exact only
    # with a schedule that does not span the run (constant), which is what this checks.
    constant: dict[str, Any] = {"schedule": "constant", "warmup_epochs": 0, "epochs": 2}
    whole = reference_trainer(tmp_path / "whole", **constant)
    whole.fit()
    short = reference_trainer(tmp_path / "part", **{**constant, "epochs": 1})
    assert short.fit()["finished"] is True
    longer = reference_trainer(tmp_path / "part", **constant)
    summary = longer.fit()
    assert [r["epoch"] for r in summary["history"]] == [1, 2]
    assert_same_state(state_of(longer.model), state_of(whole.model))


def test_cosine_restarts_schedule(tmp_path: Path) -> None:
    def factors(**changes: Any) -> list[float]:
        settings = tiny_settings(epoch_fraction=1.0, batch_size=4, **changes)
        trainer = Trainer(
            tiny_model(), SyntheticFaces(TRAIN_N), settings=settings, output_dir=tmp_path
        )
        assert trainer.steps_per_epoch == 3
        return [trainer._lr_factor(i) for i in range(settings.epochs * 3)]

    cosine = factors(epochs=2)
    restarts = factors(epochs=5, schedule="cosine_restarts", cycles=[2, 3])
    assert restarts[:6] == cosine  # the first cycle is the 2-epoch cosine run, warm-up included
    assert restarts[6] == 1.0  # the restart begins at the full rate, without warm-up
    assert restarts[6:] == pytest.approx(factors(epochs=3, warmup_epochs=0))
    assert all(a > b for a, b in itertools.pairwise(restarts[6:]))
    # the rate after the last step (what the run would continue with) is the cycle's end
    ends = Trainer(
        tiny_model(),
        SyntheticFaces(TRAIN_N),
        settings=tiny_settings(
            epoch_fraction=1.0, epochs=5, schedule="cosine_restarts", cycles=[2, 3]
        ),
        output_dir=tmp_path,
    )
    assert ends._lr_factor(15) == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ConfigError, match=r"add up to 4 epochs but train\.epochs is 5"):
        tiny_settings(epochs=5, schedule="cosine_restarts", cycles=[2, 2])
    with pytest.raises(ConfigError, match=r"train\.cycles must list"):
        tiny_settings(epochs=2, schedule="cosine_restarts")
    with pytest.raises(ConfigError, match="only used with schedule = 'cosine_restarts'"):
        tiny_settings(epochs=2, cycles=[2])
    with pytest.raises(ConfigError, match="is not one of cosine, cosine_restarts"):
        tiny_settings(schedule="linear")


def test_finished_cosine_run_extended_by_a_restart_matches_the_whole_run(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A cosine run that finished, resumed with a restart cycle appended, must train exactly as
    # the two-cycle schedule from scratch: same rates for the steps taken, the restart's full
    # rate from the first new step (not the finished run's final rate of 0).
    restarts: dict[str, Any] = {"schedule": "cosine_restarts", "cycles": [1, 2], "epochs": 3}
    whole = reference_trainer(tmp_path / "whole", **restarts)
    whole.fit()
    assert reference_trainer(tmp_path / "part", epochs=1).fit()["finished"] is True
    extended = reference_trainer(tmp_path / "part", **restarts)
    with caplog.at_level("INFO", logger="affectfpn.recipes.trainer"):
        summary = extended.fit()
    assert [r["epoch"] for r in summary["history"]] == [1, 2, 3]
    assert "repeats the saved one" in caplog.text
    assert "will not match" not in caplog.text
    assert_same_state(state_of(extended.model), state_of(whole.model))
    # a change that alters the steps already taken is still reported
    caplog.clear()
    other = reference_trainer(
        tmp_path / "part", schedule="cosine_restarts", cycles=[2, 2], epochs=4
    )
    with caplog.at_level("WARNING", logger="affectfpn.recipes.trainer"):
        other.load_checkpoint()
    assert "will not match an uninterrupted one" in caplog.text


FER_RECIPE = REPO_ROOT / "recipes" / "fer2013.toml"
FER_FOLDERS = ("angry", "disgust", "fear", "happy", "neutral", "sad", "surprise")


def _shipped_recipe(data: Path, amp: str) -> Recipe:
    """recipes/fer2013.toml (the shipped model's recipe) at a tiny size: every setting it has
    (channels_last, cache = true, label smoothing, SGDR with warm-up, augmentation, head dropout,
    test-time flip, select_metric) except the model width, input size, epochs, batch size and
    learning rate; plus loader workers, which the recipe leaves at 0."""
    overrides = [
        "model.fpn_width=8",
        f"model.input_size=[{SIZE}, {SIZE}]",
        f"data.train=[{{ type = 'imagefolder', root = '{data / 'train'}', cache = true }}]",
        f"data.val=[{{ type = 'imagefolder', root = '{data / 'val'}', cache = true }}]",
        "train.epochs=3",
        "train.cycles=[2, 1]",
        "train.batch_size=8",
        "train.lr=0.005",  # 0.05 diverges on 28 noise images under bf16
        "train.num_workers=2",
        "train.device='cpu'",
        "train.progress=false",
        f"train.amp='{amp}'",
    ]
    return load_recipe(FER_RECIPE, overrides)


@pytest.mark.parametrize("amp", ["auto", "bf16"])  # the recipe's (off on a CPU); bf16 autocast
def test_resume_with_the_shipped_recipe_settings_is_exact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, amp: str
) -> None:
    data = tmp_path / "fer2013"
    write_image_folder(data / "train", dict.fromkeys(FER_FOLDERS, 4), image_size=48)
    write_image_folder(data / "val", dict.fromkeys(FER_FOLDERS, 2), image_size=48, seed=7)
    recipe = _shipped_recipe(data, amp)
    settings = TrainSettings.from_dict(recipe.table("train"))
    assert settings.channels_last is True
    assert settings.label_smoothing == pytest.approx(0.1)
    assert settings.schedule == "cosine_restarts"
    assert settings.num_workers == 2
    assert all(spec["cache"] is True for spec in recipe.table("data")["train"])
    assert recipe.table("model")["test_time_flip"] is True

    whole = train_from_recipe(recipe, output_dir=tmp_path / "whole")
    assert whole["finished"] is True
    real_fit = Trainer.fit
    monkeypatch.setattr(Trainer, "fit", lambda self, **kw: real_fit(self, **kw, stop_after_epoch=1))
    part = train_from_recipe(recipe, output_dir=tmp_path / "part")  # stops inside cycle 1
    assert part["finished"] is False
    monkeypatch.setattr(Trainer, "fit", real_fit)
    resumed = train_from_recipe(recipe, output_dir=tmp_path / "part")  # a fresh model and loader
    assert resumed["finished"] is True

    a = torch.load(tmp_path / "whole" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "part" / "last.pt", weights_only=True)
    assert_same_state(b["model"], a["model"])
    losses = [
        [r["train_loss"] for r in read_jsonl(d / "metrics.jsonl")]
        for d in (tmp_path / "whole", tmp_path / "part")
    ]
    assert losses[0] == losses[1]
    assert resumed["best_epoch"] == whole["best_epoch"]


def _train_until_paused(out: str, marker: str) -> None:
    """Child process: the reference run, pausing inside epoch 2 (after one optimiser step)."""
    per_epoch = TRAIN_N // 2  # epoch_fraction 0.5
    data = SyntheticFaces(TRAIN_N, pause_at=per_epoch + 6, marker=marker)  # 2nd batch of epoch 2
    reference_trainer(out, train_set=data).fit()


def _train_dying_in_checkpoint(out: str, marker: str) -> None:
    """Child process: the reference run, killed halfway through writing epoch 2's checkpoint."""
    real_save = torch.save
    calls = []

    def dying_save(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
        calls.append(1)
        if len(calls) < 2:
            real_save(obj, f, *args, **kwargs)
            return
        buffer = io.BytesIO()
        real_save(obj, buffer)
        data = buffer.getvalue()
        f.write(data[: len(data) // 2])  # half of the checkpoint reaches the disk...
        f.flush()
        os.fsync(f.fileno())
        Path(marker).write_text(f"{f.name} {len(data)}")
        os.kill(os.getpid(), signal.SIGKILL)  # ...and the process dies

    torch.save = dying_save
    reference_trainer(out).fit()


def _child(target: Callable[[str, str], None], *args: str) -> Any:
    """Start ``target`` in a child process (forked: the test process's imports are reused)."""
    proc = multiprocessing.get_context("fork").Process(target=target, args=args, daemon=True)
    proc.start()
    return proc


def test_sigkill_mid_epoch_then_resume_matches(tmp_path: Path, reference: dict[str, Any]) -> None:
    out, marker = tmp_path / "run", tmp_path / "in-epoch-2"
    proc = _child(_train_until_paused, str(out), str(marker))
    try:
        deadline = time.monotonic() + 120
        while not marker.exists():
            assert proc.is_alive(), f"the child exited with {proc.exitcode} before epoch 2"
            assert time.monotonic() < deadline, "the child never reached epoch 2"
            time.sleep(0.02)
        assert torch.load(out / "last.pt", weights_only=True)["epoch"] == 1
        proc.kill()  # SIGKILL, in the middle of epoch 2
        proc.join(30)
    finally:
        if proc.is_alive():
            proc.kill()
    assert proc.exitcode == -signal.SIGKILL
    resumed = reference_trainer(out)
    resumed.fit()
    assert_same_state(state_of(resumed.model), reference["state"])
    assert [r["epoch"] for r in read_jsonl(out / "metrics.jsonl")] == [1, 2, 3]


def test_kill_while_writing_a_checkpoint_leaves_the_previous_one(
    tmp_path: Path, reference: dict[str, Any]
) -> None:
    out, marker = tmp_path / "run", tmp_path / "partial-write"
    proc = _child(_train_dying_in_checkpoint, str(out), str(marker))
    proc.join(180)
    if proc.is_alive():
        proc.kill()
        pytest.fail("the child did not die while writing its checkpoint")
    assert proc.exitcode == -signal.SIGKILL
    partial_name, full_size = marker.read_text().split()
    partial = Path(partial_name)
    assert partial.parent == out
    assert partial.name != "last.pt"
    assert 0 < partial.stat().st_size < int(full_size)
    with pytest.raises(RuntimeError, match="zip archive"):  # the half-written file is broken...
        torch.load(partial, weights_only=True)
    state = torch.load(out / "last.pt", weights_only=True)  # ...but last.pt is whole
    assert state["epoch"] == 1
    assert_same_state(state["model"], reference["epochs"][0])
    resumed = reference_trainer(out)
    resumed.fit()
    assert not partial.exists(), "the stale temporary file is cleaned up"
    assert_same_state(state_of(resumed.model), reference["state"])


# --------------------------------------------------------------------------------- outputs
def test_best_checkpoint_is_the_best_validation_epoch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    scores = iter([0.2, 0.7, 0.4])
    states: list[dict[str, torch.Tensor]] = []

    def scripted(self: Trainer, dataset: Any) -> dict[str, Any]:
        states.append(state_of(self.model))
        accuracy = next(scores)
        return {"expression": {"score": 1 - accuracy, "accuracy": accuracy, "macro_f1": 0.0}}

    monkeypatch.setattr(Trainer, "evaluate", scripted)
    trainer = reference_trainer(tmp_path, select_metric="expression/accuracy")
    summary = trainer.fit()
    assert summary["best_epoch"] == 2  # the second epoch, counted from 1 as in the logs
    assert summary["best_score"] == pytest.approx(0.7)
    best = AffectFPN.from_pretrained(tmp_path / "best")
    assert_same_state(state_of(best), states[1])
    assert not torch.equal(states[1]["heads.va.weight"], states[2]["heads.va.weight"])
    card = (tmp_path / "best" / "README.md").read_text()
    assert "expression/accuracy | 0.7000" in card
    records = read_jsonl(tmp_path / "metrics.jsonl")
    assert [r["val_score"] for r in records] == pytest.approx([0.2, 0.7, 0.4])


def test_metrics_files_have_one_row_per_epoch(tmp_path: Path) -> None:
    trainer = reference_trainer(tmp_path, epochs=2)
    trainer.fit(stop_after_epoch=1)
    # an epoch interrupted after its log line but before its checkpoint left an extra row
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"epoch": 2, "train_loss": 123.0}) + "\n")
    reference_trainer(tmp_path, epochs=2).fit()
    records = read_jsonl(tmp_path / "metrics.jsonl")
    assert [r["epoch"] for r in records] == [1, 2]
    assert all(r["train_loss"] != 123.0 for r in records)
    with open(tmp_path / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    for row, record in zip(rows, records, strict=True):
        assert float(row["train_loss"]) == pytest.approx(record["train_loss"])
        assert float(row["val/expression/accuracy"]) == pytest.approx(
            record["val"]["expression"]["accuracy"]
        )
        assert float(row["val_score"]) == pytest.approx(record["val_score"])
        assert json.loads(row["val/au/f1_per_unit"]) == pytest.approx(
            record["val"]["au"]["f1_per_unit"]
        )


# --------------------------------------------------------------------------------- distributed
def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow  # two fresh Python processes importing torch, under torchrun: ~11 s
@pytest.mark.parametrize("replay", [0, 4], ids=["plain", "replay"])
def test_two_cpu_processes_train_together_under_torchrun(tmp_path: Path, replay: int) -> None:
    """With replay too: the extra images join the batch's one forward pass, which DDP needs."""
    out, logs = tmp_path / "run", tmp_path / "logs"
    logs.mkdir()
    script = tmp_path / "ddp_child.py"
    script.write_text(
        CHILD_PRELUDE
        + textwrap.dedent(
            f"""
            import hashlib
            import torch.distributed as dist
            import affectfpn.recipes.trainer as tm
            from affectfpn import AffectFPN
            rank = int(os.environ["RANK"])
            seen, writes, epoch = [], [], [-1]
            real_epoch = tm.Trainer.train_one_epoch
            def train_one_epoch(self, e):
                epoch[0] = e
                return real_epoch(self, e)
            tm.Trainer.train_one_epoch = train_one_epoch
            real_save = torch.save
            def save(obj, f, *args, **kwargs):
                writes.append("last.pt")
                return real_save(obj, f, *args, **kwargs)
            torch.save = save
            real_pretrained = AffectFPN.save_pretrained
            def save_pretrained(self, *args, **kwargs):
                writes.append("best")
                return real_pretrained(self, *args, **kwargs)
            AffectFPN.save_pretrained = save_pretrained
            data = SyntheticFaces(16, on_get=lambda i: seen.append([epoch[0], i]))
            trainer = reference_trainer(
                {str(out)!r}, train_set=data, epochs=2, batch_size=2,
                replay_synthetic={replay}, replay_iterations=2,
            )
            summary = trainer.fit()
            digest = hashlib.sha256()
            for value in trainer.model.state_dict().values():
                digest.update(value.detach().cpu().contiguous().numpy().tobytes())
            record = {{
                "world": trainer.dist.world_size,
                "seen": seen,
                "writes": writes,
                "digest": digest.hexdigest(),
                "val_scores": [r.get("val_score") for r in summary["history"]],
            }}
            with open(os.path.join({str(logs)!r}, f"rank{{rank}}.json"), "w") as f:
                json.dump(record, f)
            dist.destroy_process_group()
            """
        )
    )
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes",
        "1",
        "--nproc_per_node",
        "2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(_free_port()),
        str(script),
    ]
    proc = subprocess.run(
        cmd, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=300
    )
    assert proc.returncode == 0, proc.stdout.decode()[-4000:]
    ranks = [json.loads((logs / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world"] for r in ranks] == [2, 2]
    for epoch in (0, 1):
        per_rank = [[i for e, i in r["seen"] if e == epoch] for r in ranks]
        assert all(len(p) == len(set(p)) == 4 for p in per_rank), per_rank
        assert not set(per_rank[0]) & set(per_rank[1]), "a sample was seen by both ranks"
        sampler = EpochFractionSampler(16, fraction=0.5, seed=0)
        sampler.set_epoch(epoch)
        assert set(per_rank[0]) | set(per_rank[1]) == set(sampler.epoch_indices())
    assert ranks[1]["writes"] == [], "only rank 0 writes files"
    assert ranks[0]["writes"].count("last.pt") == 2
    assert "best" in ranks[0]["writes"]
    assert ranks[0]["digest"] == ranks[1]["digest"], "the ranks' weights stayed in sync"
    assert ranks[0]["val_scores"] == ranks[1]["val_scores"], "validation metrics are merged"
    assert torch.load(out / "last.pt", weights_only=True)["epoch"] == 2
    assert [r["epoch"] for r in read_jsonl(out / "metrics.jsonl")] == [1, 2]
    replayed = ["train_replay_expression" in r for r in read_jsonl(out / "metrics.jsonl")]
    assert replayed == [bool(replay)] * 2
    assert (out / "replay.safetensors").is_file() == bool(replay)


def _torch_rates(scheduler_of: Callable[[torch.optim.Optimizer], Any], steps: int) -> list[float]:
    """The learning rates torch's own scheduler gives an optimiser with lr 1, step by step."""
    import warnings

    optimiser = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # SequentialLR's internal step(0) may warn
        scheduler = scheduler_of(optimiser)
        rates = []
        for _ in range(steps):
            rates.append(optimiser.param_groups[0]["lr"])
            optimiser.step()
            scheduler.step()
    return rates


def test_lr_factors_are_those_of_torchs_schedulers_where_torch_has_them() -> None:
    # The factors are a closed form of the step (see lr_factor: a run resumes, or is extended by
    # restarts of other lengths, from any step); where torch.optim.lr_scheduler has the same
    # schedule, they must agree with it.
    from torch.optim import lr_scheduler

    from affectfpn.recipes.trainer import TrainSettings, lr_factor

    per_epoch = 10
    warm = TrainSettings(epochs=5, warmup_epochs=1.0, min_lr_ratio=0.01)
    expected = _torch_rates(
        lambda opt: lr_scheduler.SequentialLR(
            opt,
            [
                lr_scheduler.LinearLR(opt, start_factor=1 / per_epoch, total_iters=per_epoch - 1),
                lr_scheduler.CosineAnnealingLR(opt, T_max=4 * per_epoch, eta_min=0.01),
            ],
            milestones=[per_epoch],
        ),
        5 * per_epoch,
    )
    ours = [lr_factor(warm, per_epoch, step) for step in range(5 * per_epoch)]
    np.testing.assert_allclose(ours, expected, atol=1e-9)
    # SGDR with cycles of one length is torch's CosineAnnealingWarmRestarts
    sgdr = TrainSettings(epochs=6, schedule="cosine_restarts", cycles=(3, 3), min_lr_ratio=0.0)
    expected = _torch_rates(
        lambda opt: lr_scheduler.CosineAnnealingWarmRestarts(opt, T_0=3 * per_epoch), 60
    )
    ours = [lr_factor(sgdr, per_epoch, step) for step in range(60)]
    np.testing.assert_allclose(ours, expected, atol=1e-9)
    # the "step" schedule is MultiStepLR at a third and two thirds of the run
    step = TrainSettings(epochs=3, schedule="step")
    expected = _torch_rates(lambda opt: lr_scheduler.MultiStepLR(opt, [10, 20], gamma=0.1), 30)
    ours = [lr_factor(step, per_epoch, i) for i in range(30)]
    np.testing.assert_allclose(ours, expected, atol=1e-12)
