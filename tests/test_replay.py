"""Synthetic replay: images inverted from a start's BatchNorm statistics, made once per run, and a
fine-tuning run that distils the start on them holds the start's outputs there."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from test_finetune import Separable
from test_trainer import SyntheticFaces, tiny_model, tiny_settings

from affectfpn.errors import ConfigError
from affectfpn.preprocess import normalize
from affectfpn.recipes import replay
from affectfpn.recipes.trainer import Trainer, TrainSettings


@pytest.fixture(autouse=True)
def _own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test its own replay cache."""
    monkeypatch.setenv("AFFECTFPN_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _count_syntheses(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """A list that grows by one each time replay images are made."""
    made: list[int] = []
    real = replay.synthesize

    def counting(*args: Any, **kwargs: Any) -> torch.Tensor:
        made.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(replay, "synthesize", counting)
    return made


def _pretrained(tmp_path: Path) -> Any:
    """A tiny model whose BatchNorm statistics come from training (not the 0/1 of a new one)."""
    model = tiny_model(tasks=("expression", "au"), trainable_layers=5, head_dropout=0.0)
    Trainer(
        model,
        SyntheticFaces(16, offset=300),
        settings=tiny_settings(epochs=1, epoch_fraction=1.0),
        output_dir=tmp_path / "start",
    ).fit()
    return model.eval()


def _bn_mismatch(model: Any, images: torch.Tensor) -> float:
    """Sum over BatchNorm layers of how far a batch's statistics are from the running ones."""
    total: list[float] = []

    def hook(module: Any, inputs: tuple[torch.Tensor, ...], _out: Any) -> None:
        x = inputs[0]
        total.append(
            float((x.mean((0, 2, 3)) - module.running_mean).norm())
            + float((x.var((0, 2, 3), unbiased=False) - module.running_var).norm())
        )

    handles = [m.register_forward_hook(hook) for m in replay._norm_layers(model)]
    with torch.no_grad():
        model(normalize(images.float() / 255, model.config))
    for h in handles:
        h.remove()
    return sum(total)


def test_synthesized_images_match_the_start_s_statistics_and_leave_it_unchanged(
    tmp_path: Path,
) -> None:
    model = _pretrained(tmp_path)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    images = replay.synthesize(model, 8, iterations=40, seed=1, batch_size=8)
    assert images.shape == (8, 3, *model.config.input_size)
    assert images.dtype == torch.uint8
    assert torch.equal(images[:, 0], images[:, 1])
    assert torch.equal(images[:, 0], images[:, 2])
    # what the optimisation starts from: the same smooth noise, before any step
    noise = replay.synthesize(model, 8, iterations=1, seed=1, batch_size=8)
    assert _bn_mismatch(model, images) < 0.7 * _bn_mismatch(model, noise)
    assert not model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.requires_grad for p in model.parameters())  # as they were
    again = replay.synthesize(model, 8, iterations=40, seed=1, batch_size=8)
    other = replay.synthesize(model, 8, iterations=40, seed=2, batch_size=8)
    assert torch.equal(images, again)
    assert not torch.equal(images, other)
    colour = replay.synthesize(model, 2, iterations=2, grey=False, seed=1)
    assert not torch.equal(colour[:, 0], colour[:, 1])


def test_synthesize_rejects_bad_counts_and_a_model_without_batchnorm() -> None:
    model = tiny_model(tasks=("expression",))
    with pytest.raises(ConfigError, match="count"):
        replay.synthesize(model, 0)
    with pytest.raises(ConfigError, match="iterations"):
        replay.synthesize(model, 2, iterations=0)
    for _name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, torch.nn.BatchNorm2d):
                setattr(module, child_name, torch.nn.Identity())
    with pytest.raises(ConfigError, match=r"BatchNorm.*replay_synthetic = 0"):
        replay.synthesize(model, 2)


def test_saved_images_are_reused_only_for_the_same_start_and_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = tiny_model(tasks=("expression",))
    made = _count_syntheses(monkeypatch)
    path = tmp_path / "run" / "replay.safetensors"
    first = replay.load_or_synthesize(path, model, 3, iterations=2)
    assert torch.equal(replay.load_or_synthesize(path, model, 3, iterations=2), first)
    assert len(made) == 1
    # another run from the same start with the same settings: from the cache, into its folder
    other_run = tmp_path / "other" / "replay.safetensors"
    assert torch.equal(replay.load_or_synthesize(other_run, model, 3, iterations=2), first)
    assert other_run.is_file()
    assert len(made) == 1
    replay.load_or_synthesize(path, model, 3, iterations=3)  # other settings: made again
    assert len(made) == 2
    with torch.no_grad():
        next(model.parameters()).add_(1.0)  # another start: made again
    replay.load_or_synthesize(path, model, 3, iterations=3)
    assert len(made) == 3
    path.write_bytes(b"torn")  # an unreadable file is not an error: the cache's copy
    assert replay.load_or_synthesize(path, model, 3, iterations=3).shape[0] == 3
    assert len(made) == 3
    for cached in replay.cache_dir().iterdir():
        cached.write_bytes(b"torn")  # ... and with no good copy anywhere, made again
    path.write_bytes(b"torn")
    assert replay.load_or_synthesize(path, model, 3, iterations=3).shape[0] == 3
    assert len(made) == 4


def test_the_cache_follows_affectfpn_cache_then_xdg(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert replay.cache_dir() == tmp_path / "cache" / "replay"
    monkeypatch.delenv("AFFECTFPN_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert replay.cache_dir() == tmp_path / "xdg" / "affectfpn" / "replay"


def _drift_on_replay_images(tmp_path: Path, name: str, **changes: Any) -> float:
    """Fine-tune a pretrained start on other faces; how far its expression probabilities moved
    on the images replay makes from that start (made here, so with or without replay)."""
    model = _pretrained(tmp_path / name)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    probe = replay.synthesize(model, 8, iterations=20, seed=0)
    settings = tiny_settings(
        epochs=3,
        lr=0.002,
        epoch_fraction=1.0,
        warmup_epochs=0,
        replay_synthetic=8,
        replay_iterations=20,
        **changes,
    )
    trainer = Trainer(model, Separable(16), settings=settings, output_dir=tmp_path / name / "ft")
    assert trainer.fit()["finished"]
    if trainer._replay_images is not None:  # the run made the same images from the same start
        assert torch.equal(trainer._replay_images, probe)
    x = normalize(probe.float() / 255, model.config)
    model.eval()
    with torch.no_grad():
        after = model(x).expression.softmax(1)
        model.load_state_dict(start)
        before = model(x).expression.softmax(1)
    return float((after - before).abs().sum(1).mean())


def test_replay_holds_the_start_on_its_images_and_is_saved_in_the_run(tmp_path: Path) -> None:
    free = _drift_on_replay_images(tmp_path, "free", replay_weight=0.0)
    held = _drift_on_replay_images(tmp_path, "held", replay_weight=5.0)
    assert (tmp_path / "held" / "ft" / "replay.safetensors").is_file()
    assert not (tmp_path / "free" / "ft" / "replay.safetensors").exists()
    assert free > 0.05  # fine-tuning moves the start's outputs on these images ...
    assert held < 0.5 * free  # ... and replay keeps them near the start


def test_a_resumed_run_reuses_its_replay_images(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = tiny_model(tasks=("expression",), trainable_layers=5)
    settings = tiny_settings(epochs=2, replay_synthetic=4, replay_iterations=2)
    Trainer(model, Separable(8), settings=settings, output_dir=tmp_path).fit(stop_after_epoch=1)
    made = _count_syntheses(monkeypatch)
    model = tiny_model(tasks=("expression",), trainable_layers=5)
    summary = Trainer(model, Separable(8), settings=settings, output_dir=tmp_path).fit()
    assert summary["finished"]
    assert made == []
    assert all("train_replay_expression" in r for r in summary["history"] if "lr" in r)


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"replay_synthetic": -1}, "replay_synthetic"),
        ({"replay_synthetic": 2.5}, "replay_synthetic"),
        ({"replay_iterations": 0}, "replay_iterations"),
        ({"replay_weight": float("nan")}, "replay_weight"),
        ({"replay_grey": "yes"}, "replay_grey"),
    ],
)
def test_bad_replay_settings_are_config_errors(changes: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        TrainSettings(**changes)
