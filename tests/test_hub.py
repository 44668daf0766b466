"""Saving and loading: local folders, strict loading, model cards, and a local Hugging Face Hub."""

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from hubserver import LocalHub, set_hf_offline
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from affectfpn import (
    AffectFPN,
    AffectFPNConfig,
    ConfigError,
    ModelInfo,
    OfflineError,
    WeightsError,
)
from affectfpn._version import __version__
from affectfpn.labels import EXPRESSIONS
from affectfpn.models import registry

FILES = ("config.json", "model.safetensors")


def _small(**changes: object) -> AffectFPNConfig:
    values: dict[str, object] = {
        "backbone": "mobilenet_v2",
        "fpn_width": 16,
        "input_size": (64, 64),
    }
    values.update(changes)
    return AffectFPNConfig(**values)  # type: ignore[arg-type]


def _outputs(model: AffectFPN, seed: int = 7) -> list[torch.Tensor | None]:
    h, w = model.config.input_size
    x = torch.randn(2, 3, h, w, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return list(model.eval()(x))


def _assert_same_outputs(a: AffectFPN, b: AffectFPN) -> None:
    for p, q in zip(_outputs(a), _outputs(b), strict=True):
        if p is None or q is None:
            assert p is None
            assert q is None
        else:
            assert torch.equal(p, q)


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> tuple[AffectFPN, Path]:
    """A small model and the folder it was saved to (tests copy the folder before changing it)."""
    torch.manual_seed(3)
    model = AffectFPN(_small(tasks=("va", "au"))).eval()
    folder = model.save_pretrained(tmp_path_factory.mktemp("saved") / "small")
    return model, folder


@pytest.fixture
def folder(saved: tuple[AffectFPN, Path], tmp_path: Path) -> Path:
    """A private copy of the saved folder."""
    return Path(shutil.copytree(saved[1], tmp_path / "model"))


def _upload(hub: LocalHub, repo_id: str, source: Path) -> str:
    return hub.add_files(repo_id, {name: (source / name).read_bytes() for name in FILES})


# ----------------------------------------------------------------------------- saving
def test_save_pretrained_writes_config_weights_and_card(tmp_path: Path) -> None:
    model = AffectFPN(_small(tasks=("va", "expression"))).eval()
    card = {
        "name": "tiny-affect",
        "description": "A test model.",
        "license": "mit",
        "datasets": ["fer2013"],
        "metrics": {"fer2013/test": {"accuracy": 0.61234, "f1_macro": 0.5}},
        "recipe": "recipes/tiny.yaml",
    }
    out = model.save_pretrained(tmp_path / "out", model_card=card)
    assert out == tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == [
        "README.md",
        "config.json",
        "model.safetensors",
    ]

    config = json.loads((out / "config.json").read_text(encoding="utf-8"))
    assert config == model.config.to_dict()
    with safe_open(str(out / "model.safetensors"), framework="pt") as f:
        assert set(f.keys()) == set(model.state_dict())
        assert f.metadata()["affectfpn_version"] == __version__

    text = (out / "README.md").read_text(encoding="utf-8")
    front = text.split("---")[1]
    assert "library_name: affectfpn" in front
    assert "license: mit" in front
    assert "- task-va" in front
    assert "- task-expression" in front
    assert "- task-au" not in front
    assert "- fer2013" in front
    assert "# tiny-affect" in text
    assert "va, expression" in text
    assert f"{model.num_params():,}" in text
    assert "| fer2013/test | accuracy | 0.6123 |" in text
    assert "| fer2013/test | f1_macro | 0.5000 |" in text
    assert "recipes/tiny.yaml" in text
    assert ", ".join(EXPRESSIONS) in text
    assert "[-1, 1]" in text  # the VA range is documented for a VA model
    assert "Action units" not in text  # no AU head, no AU list


def test_card_without_metrics_has_no_evaluation_table(tmp_path: Path) -> None:
    model = AffectFPN(_small(tasks=("au",)))
    text = (model.save_pretrained(tmp_path) / "README.md").read_text(encoding="utf-8")
    assert "## Evaluation" not in text
    assert "AU1, AU2, AU4" in text
    assert "- task-au" in text


def test_saving_twice_overwrites_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    AffectFPN(_small()).save_pretrained(tmp_path)
    model = AffectFPN(_small(fpn_width=8))
    model.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "README.md",
        "config.json",
        "model.safetensors",
    ]
    assert AffectFPNConfig.load(tmp_path / "config.json").fpn_width == 8


def test_pickle_serialisation_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="safetensors"):
        AffectFPN(_small()).save_pretrained(tmp_path, safe_serialization=False)


# ---------------------------------------------------------------------------- loading
def test_round_trip_gives_identical_outputs(tiny_config: AffectFPNConfig, tmp_path: Path) -> None:
    model = AffectFPN(tiny_config)
    model.train()
    with torch.no_grad():
        model(torch.randn(2, 3, 64, 64) * 2 + 1)  # a train-mode pass moves the BN statistics
    model.eval()
    assert model.backbone.stages[0][1].running_mean.abs().sum() > 0
    model.save_pretrained(tmp_path)
    loaded = AffectFPN.from_pretrained(tmp_path)
    assert not loaded.training
    assert type(loaded.config) is AffectFPNConfig
    assert loaded.config == tiny_config
    own = model.state_dict()
    for key, value in loaded.state_dict().items():
        assert torch.equal(value, own[key]), key
    _assert_same_outputs(model, loaded)
    _assert_same_outputs(model, AffectFPN.from_pretrained(str(tmp_path)))  # str works too


def test_from_pretrained_places_the_model_on_a_device(folder: Path) -> None:
    model = AffectFPN.from_pretrained(folder, device="cpu")
    assert {p.device.type for p in model.parameters()} == {"cpu"}
    with pytest.raises(ConfigError, match="not understood"):
        AffectFPN.from_pretrained(folder, device="quantum:0")


def test_unknown_config_keys_survive_a_load_and_save(folder: Path, tmp_path: Path) -> None:
    data = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    data["added_in_a_later_release"] = {"x": 1}
    (folder / "config.json").write_text(json.dumps(data), encoding="utf-8")
    model = AffectFPN.from_pretrained(folder)
    model.save_pretrained(tmp_path / "again")
    again = json.loads((tmp_path / "again" / "config.json").read_text(encoding="utf-8"))
    assert again["added_in_a_later_release"] == {"x": 1}


def _rewrite_weights(folder: Path, change: str) -> str:
    """Alter model.safetensors; returns the tensor name the error must mention."""
    state = load_file(str(folder / "model.safetensors"))
    if change == "drop":
        name = "heads.au.bias"
        del state[name]
    elif change == "extra":
        name = "heads.gaze.weight"
        state[name] = torch.zeros(2, 64)
    elif change == "shape":
        name = "heads.au.weight"
        state[name] = torch.zeros(5, 64)
    else:  # "nan"
        name = "neck.lateral.0.weight"
        state[name] = torch.full_like(state[name], float("nan"))
    save_file(state, str(folder / "model.safetensors"))
    return name


@pytest.mark.parametrize(
    ("change", "what"),
    [
        ("drop", "missing tensors"),
        ("extra", "unexpected tensors"),
        ("shape", "wrong shape"),
        ("nan", "NaN"),
    ],
)
def test_strict_loading_names_the_bad_tensors(folder: Path, change: str, what: str) -> None:
    name = _rewrite_weights(folder, change)
    with pytest.raises(WeightsError, match=what) as info:
        AffectFPN.from_pretrained(folder)
    assert name in str(info.value)
    assert str(folder) in str(info.value)


def test_truncated_weights_are_a_weights_error(folder: Path) -> None:
    path = folder / "model.safetensors"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(WeightsError, match=r"model\.safetensors") as info:
        AffectFPN.from_pretrained(folder)
    assert "truncated" in str(info.value)


def test_garbage_weights_are_a_weights_error(folder: Path) -> None:
    (folder / "model.safetensors").write_bytes(b"\x00" * 16)
    with pytest.raises(WeightsError, match="not a readable safetensors file"):
        AffectFPN.from_pretrained(folder)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("backbone", "resnet9000"),
        ("expressions", ["Neutral", "Anger", "Disgust", "Fear", "Happiness", "Sadness"]),
        ("fpn_width", "16"),
        ("tasks", ["va", "gaze"]),
        ("input_size", [64]),
    ],
)
def test_invalid_config_json_names_the_field(folder: Path, field: str, value: object) -> None:
    data = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    data[field] = value
    (folder / "config.json").write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(ConfigError, match=f"'{field}'") as info:
        AffectFPN.from_pretrained(folder)
    assert "config.json" in str(info.value)


def test_config_json_that_is_not_json(folder: Path) -> None:
    (folder / "config.json").write_text("{'backbone': resnet18", encoding="utf-8")
    with pytest.raises(ConfigError, match="not valid JSON") as info:
        AffectFPN.from_pretrained(folder)
    assert str(folder / "config.json") in str(info.value)


def test_config_of_another_architecture_is_a_weights_error(folder: Path) -> None:
    data = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    data["fpn_width"] = 8
    (folder / "config.json").write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(WeightsError, match="do not match the config"):
        AffectFPN.from_pretrained(folder)


@pytest.mark.parametrize("missing", FILES)
def test_missing_file_in_folder(folder: Path, missing: str) -> None:
    (folder / missing).unlink()
    with pytest.raises(WeightsError, match=re.escape(f"{missing} is missing")):
        AffectFPN.from_pretrained(folder)


@pytest.mark.parametrize("name", FILES)
def test_a_file_instead_of_the_folder(folder: Path, name: str) -> None:
    with pytest.raises(WeightsError, match="is a file: pass the folder"):
        AffectFPN.from_pretrained(folder / name)


def test_unknown_name_lists_the_registered_models(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    monkeypatch.setattr(registry, "_DEFAULT", list(registry._DEFAULT))
    registry.register_model(
        ModelInfo(
            name="listed-model",
            description="d",
            source="hub",
            location="org/listed",
            tasks=("va",),
            backbone="resnet18",
            neck="fpn",
            input_size=(64, 64),
            mean=(0.5, 0.5, 0.5),
            std=(0.5, 0.5, 0.5),
            expressions=EXPRESSIONS,
            action_units=("AU1",),
            num_params=1,
            metrics={},
            license="mit",
            datasets=(),
            recipe="recipes/x.yaml",
            revision="0" * 40,
        )
    )
    with pytest.raises(WeightsError, match="not a registered model") as info:
        AffectFPN.from_pretrained("no-such-model")
    assert "listed-model" in str(info.value)
    assert "Hub repo id" in str(info.value)


# ---------------------------------------------------------------------------- the Hub
def test_download_caches_and_loads_offline_with_no_request(
    local_hub: LocalHub,
    saved: tuple[AffectFPN, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    model, source = saved
    sha = _upload(local_hub, "user/tiny", source)
    loaded = AffectFPN.from_pretrained("user/tiny")
    _assert_same_outputs(model, loaded)
    snapshot = tmp_path / "hf_home" / "hub" / "models--user--tiny" / "snapshots" / sha
    assert sorted(p.name for p in snapshot.iterdir()) == sorted(FILES)
    assert local_hub.request_count > 0

    before = local_hub.request_count
    set_hf_offline(monkeypatch, True)
    _assert_same_outputs(model, AffectFPN.from_pretrained("user/tiny"))
    set_hf_offline(monkeypatch, False)
    _assert_same_outputs(model, AffectFPN.from_pretrained("user/tiny", local_files_only=True))
    assert local_hub.request_count == before, local_hub.requests[before:]


def test_explicit_cache_dir_is_used(
    local_hub: LocalHub, saved: tuple[AffectFPN, Path], tmp_path: Path
) -> None:
    _upload(local_hub, "user/tiny", saved[1])
    AffectFPN.from_pretrained("user/tiny", cache_dir=tmp_path / "my_cache")
    assert (tmp_path / "my_cache" / "models--user--tiny").is_dir()
    assert not (tmp_path / "hf_home" / "hub" / "models--user--tiny").exists()


def test_uncached_repo_offline_is_an_offline_error(
    local_hub: LocalHub, saved: tuple[AffectFPN, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    _upload(local_hub, "user/never-downloaded", saved[1])
    set_hf_offline(monkeypatch, True)
    before = local_hub.request_count
    with pytest.raises(OfflineError) as info:
        AffectFPN.from_pretrained("user/never-downloaded")
    message = str(info.value)
    assert "user/never-downloaded" in message
    assert "run once online" in message
    assert "local folder" in message
    # Offline means offline: no request, and not even a connection was tried (so no waiting).
    assert local_hub.request_count == before
    assert local_hub.connect_attempts == 0


# huggingface_hub's own budget when the Hub refuses connections: the first metadata request,
# then http_backoff's first try and its 5 retries (see the docstring of tests/hubserver.py).
HF_CONNECT_BUDGET = 7


def test_hub_outage_with_nothing_cached_fails_after_bounded_attempts(
    local_hub: LocalHub, saved: tuple[AffectFPN, Path]
) -> None:
    _upload(local_hub, "user/tiny", saved[1])
    local_hub.set_down(True, mode="refuse")
    with pytest.raises(WeightsError, match="user/tiny"):
        AffectFPN.from_pretrained("user/tiny")
    assert local_hub.request_count == 0
    # Bounded work: one download's worth of attempts (config.json), not one per file or a loop.
    assert 1 <= local_hub.connect_attempts <= HF_CONNECT_BUDGET


def test_hub_outage_with_nothing_cached_fails_without_a_retry_loop(
    local_hub: LocalHub, saved: tuple[AffectFPN, Path]
) -> None:
    _upload(local_hub, "user/tiny", saved[1])
    local_hub.set_down(True, mode="refuse")
    with pytest.raises(WeightsError, match="user/tiny"):
        AffectFPN.from_pretrained("user/tiny")
    assert local_hub.connect_attempts <= 1


def test_pinned_revision_loads_the_older_weights(
    local_hub: LocalHub, saved: tuple[AffectFPN, Path], tmp_path: Path
) -> None:
    old_model, old_folder = saved
    old_sha = _upload(local_hub, "user/evolving", old_folder)
    torch.manual_seed(11)
    new_model = AffectFPN(_small(tasks=("va", "au"))).eval()
    new_sha = _upload(local_hub, "user/evolving", new_model.save_pretrained(tmp_path / "new"))
    assert new_sha != old_sha

    _assert_same_outputs(new_model, AffectFPN.from_pretrained("user/evolving"))
    pinned = AffectFPN.from_pretrained("user/evolving", revision=old_sha)
    _assert_same_outputs(old_model, pinned)
    assert not torch.equal(_outputs(pinned)[0], _outputs(new_model)[0])  # type: ignore[arg-type]


def test_missing_repo_is_a_weights_error(local_hub: LocalHub) -> None:
    with pytest.raises(WeightsError, match="not found") as info:
        AffectFPN.from_pretrained("user/does-not-exist")
    assert not isinstance(info.value, OfflineError)
    assert "user/does-not-exist" in str(info.value)


def test_missing_revision_is_a_weights_error(
    local_hub: LocalHub, saved: tuple[AffectFPN, Path]
) -> None:
    _upload(local_hub, "user/tiny", saved[1])
    with pytest.raises(WeightsError, match="no revision") as info:
        AffectFPN.from_pretrained("user/tiny", revision="v9.9")
    assert not isinstance(info.value, OfflineError)


def test_repo_without_weights_is_a_weights_error(
    local_hub: LocalHub, saved: tuple[AffectFPN, Path]
) -> None:
    local_hub.add_file("user/config-only", "config.json", (saved[1] / "config.json").read_bytes())
    with pytest.raises(WeightsError, match=r"has no model\.safetensors"):
        AffectFPN.from_pretrained("user/config-only")


@pytest.mark.filterwarnings("ignore:Use 'content=:DeprecationWarning")
def test_push_to_hub_then_load(local_hub: LocalHub) -> None:
    config = _small(extra_level=True)
    model = AffectFPN(config).eval()
    commit = model.push_to_hub(
        "user/pushed",
        model_card={"name": "pushed", "metrics": {"fer2013/test": {"accuracy": 0.5}}},
    )
    assert re.fullmatch(r"[0-9a-f]{40}", commit)
    assert commit == local_hub.commit_sha("user/pushed")
    files = local_hub.files("user/pushed")
    assert set(files) >= {"config.json", "model.safetensors", "README.md"}
    assert json.loads(files["config.json"]) == config.to_dict()
    assert "| fer2013/test | accuracy | 0.5000 |" in files["README.md"].decode()
    loaded = AffectFPN.from_pretrained("user/pushed")
    assert loaded.config == config
    _assert_same_outputs(model, loaded)


def test_push_to_hub_failure_is_a_weights_error(local_hub: LocalHub) -> None:
    local_hub.set_down(True, mode="refuse")
    with pytest.raises(WeightsError, match="user/pushed"):
        AffectFPN(_small()).push_to_hub("user/pushed")


@pytest.mark.filterwarnings("ignore:Use 'content=:DeprecationWarning")
@pytest.mark.parametrize("private", [True, False])
def test_push_to_hub_passes_private_and_the_token(local_hub: LocalHub, private: bool) -> None:
    repo = f"user/pushed-{'private' if private else 'public'}"
    AffectFPN(_small()).push_to_hub(repo, private=private, token="hf_test_token_123")
    assert local_hub.is_private(repo) is private
    creates = [i for i, r in enumerate(local_hub.requests) if r == "POST /api/repos/create"]
    assert len(creates) == 1
    # every API request of the push (create, preupload, commit) carried the given token (the
    # LFS upload goes to the storage URL the server handed out, which needs none)
    api = [t for r, t in zip(local_hub.requests, local_hub.tokens, strict=True) if "/api/" in r]
    assert any("/commit/" in r for r in local_hub.requests)
    assert len(api) > 1
    assert set(api) == {"hf_test_token_123"}
