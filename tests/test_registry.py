"""The registry of named models: the schema of every entry, and how entries are resolved.

`check_model_info` is the one schema check (STYLE habit 4): every registered entry must pass it,
and a temporary embedded entry proves it runs and catches what it should, while the package has
no built-in entries.
"""

import hashlib
import json
import math
import re
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
import torch
from hubserver import LocalHub

from affectfpn import (
    AffectFPN,
    AffectFPNConfig,
    ConfigError,
    ModelInfo,
    OfflineError,
    WeightsError,
    get_model_info,
    list_models,
)
from affectfpn.config import BACKBONE_CHANNELS, NECKS
from affectfpn.labels import EXPRESSIONS, TASKS
from affectfpn.models import registry
from affectfpn.models.hub import download
from affectfpn.models.registry import embedded_models

REPO_ROOT = Path(__file__).resolve().parents[1]
RECIPES = REPO_ROOT / "recipes"
HEX40 = re.compile(r"^[0-9a-f]{40}$")
HEX64 = re.compile(r"^[0-9a-f]{64}$")
#: Metric names (lower case) that are errors, not scores: non-negative and unbounded above.
ERROR_METRICS = ("mse", "mae", "rmse", "loss")


def _is_str_tuple(value: object) -> bool:
    return isinstance(value, tuple) and all(isinstance(v, str) and v for v in value)


def check_model_info(info: ModelInfo, *, recipes_root: Path = RECIPES) -> bool:
    """Assert that ``info`` is a complete, truthful registry entry.

    Returns whether ``num_params`` was verified against a built model (a Hub entry that is not in
    the local cache cannot be verified offline).
    """
    who = f"registry entry {info.name!r}"
    assert isinstance(info, ModelInfo)
    for name in ("name", "description", "location", "license", "recipe", "paper"):
        value = getattr(info, name)
        assert isinstance(value, str), f"{who}: {name} must be a str"
        assert value.strip(), f"{who}: {name} is empty"
    assert info.source in ("package", "hub"), who
    assert _is_str_tuple(info.tasks), f"{who}: tasks must be a tuple of names"
    assert info.tasks, f"{who}: no tasks"
    assert set(info.tasks) <= set(TASKS), f"{who}: unknown tasks {info.tasks}"
    assert len(set(info.tasks)) == len(info.tasks), f"{who}: duplicate tasks"
    assert info.backbone in BACKBONE_CHANNELS, who
    assert info.neck in NECKS, who
    assert isinstance(info.input_size, tuple), who
    assert len(info.input_size) == 2, who
    assert all(isinstance(v, int) and not isinstance(v, bool) for v in info.input_size), who
    assert all(16 <= v <= 1024 for v in info.input_size), f"{who}: input size {info.input_size}"
    for name in ("mean", "std"):
        values = getattr(info, name)
        assert isinstance(values, tuple), f"{who}: {name}"
        assert len(values) == 3, f"{who}: {name}"
        assert all(isinstance(v, float) and 0 <= v <= 1 for v in values), f"{who}: {name}"
    assert all(v > 0 for v in info.std), who
    assert _is_str_tuple(info.expressions), who
    assert len(info.expressions) == len(EXPRESSIONS), f"{who}: expression count"
    assert len(set(info.expressions)) == len(info.expressions), who
    assert _is_str_tuple(info.action_units), who
    assert info.action_units, f"{who}: no action units"
    assert len(set(info.action_units)) == len(info.action_units), who
    assert isinstance(info.num_params, int), who
    assert info.num_params > 0, who
    assert isinstance(info.datasets, tuple), who
    assert info.datasets, f"{who}: the data it was trained on must be named"
    assert all(isinstance(d, str) and d for d in info.datasets), who

    # Measured metrics: {data: {metric: value}} with values in a sane range.
    assert isinstance(info.metrics, Mapping), who
    assert info.metrics, f"{who}: an entry needs measured metrics"
    for data, values in info.metrics.items():
        assert isinstance(data, str), f"{who}: metrics key {data!r}"
        assert data, f"{who}: metrics key {data!r}"
        assert isinstance(values, Mapping), f"{who}: metrics[{data!r}]"
        assert values, f"{who}: metrics[{data!r}]"
        for metric, value in values.items():
            assert isinstance(metric, str), f"{who}: metric {metric!r}"
            assert metric, f"{who}: metric {metric!r}"
            where = f"{who}: {data}/{metric} = {value!r}"
            assert isinstance(value, float | int), where
            assert not isinstance(value, bool), where
            assert math.isfinite(value), where
            if any(e in metric.lower() for e in ERROR_METRICS):
                assert value >= 0, where
            else:
                assert -1 <= value <= 1, where

    # The recipe that reproduces the weights.
    recipe = Path(info.recipe)
    path = recipes_root.parent / recipe if recipe.parts[0] == "recipes" else recipes_root / recipe
    assert not recipe.is_absolute(), f"{who}: recipe must be a path relative to recipes/"
    if recipes_root.is_dir():
        inside = path.resolve().is_relative_to(recipes_root.resolve())
        assert inside, f"{who}: recipe {info.recipe} is outside {recipes_root}"
        assert path.is_file(), f"{who}: recipe {info.recipe} not found under {recipes_root}"

    # Where the weights are, pinned.
    if info.source == "hub":
        assert re.match(r"^[\w.-]+/[\w.-]+$", info.location), f"{who}: repo id {info.location}"
        assert isinstance(info.revision, str), f"{who}: Hub entries need a pinned revision"
        assert HEX40.match(info.revision), f"{who}: revision {info.revision!r} is not pinned"
        try:
            folder = download(info.location, revision=info.revision, local_files_only=True)
        except OfflineError:
            return False
    else:
        assert isinstance(info.sha256, str), f"{who}: embedded entries need a sha256"
        assert HEX64.match(info.sha256), f"{who}: sha256 {info.sha256!r}"
        folder = registry.package_weights_dir(info)
        weights = folder / "model.safetensors"
        assert (folder / "config.json").is_file(), f"{who}: {folder}/config.json missing"
        assert weights.is_file(), f"{who}: {weights} missing"
        assert hashlib.sha256(weights.read_bytes()).hexdigest() == info.sha256, f"{who}: sha256"

    # The metadata says what the weights are, and num_params is true.
    config = AffectFPNConfig.load(folder / "config.json")
    for name in ("tasks", "backbone", "neck", "input_size", "mean", "std"):
        assert getattr(config, name) == getattr(info, name), f"{who}: {name} differs from config"
    assert config.expressions == info.expressions, f"{who}: expressions differ from config"
    assert config.action_units == info.action_units, f"{who}: action units differ from config"
    model = AffectFPN.from_pretrained(info.name)
    counted = sum(p.numel() for p in model.parameters())
    assert counted == info.num_params, f"{who}: num_params {info.num_params} != {counted}"
    assert model.config == config
    return True


# ------------------------------------------------------------------------------ fixtures
@pytest.fixture(autouse=True)
def _isolated_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test sees the built-in registry, and its changes are undone afterwards."""
    # register the embedded models first: registered lazily inside the patched copies, they
    # would vanish with them, and a later test file would find no default
    registry._ensure_builtin()
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    monkeypatch.setattr(registry, "_DEFAULT", list(registry._DEFAULT))


@dataclass
class Embedded:
    """A temporary embedded model: its entry, the model it was saved from, and its folders."""

    info: ModelInfo
    model: AffectFPN
    weights_root: Path
    recipes_root: Path

    @property
    def folder(self) -> Path:
        return self.weights_root / self.info.location


def _tiny_config() -> AffectFPNConfig:
    return AffectFPNConfig(
        backbone="mobilenet_v2", fpn_width=16, input_size=(64, 64), tasks=("va", "expression")
    )


@pytest.fixture(scope="module")
def _saved_tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[AffectFPN, Path]:
    """A tiny model and the folder it was saved to (shared; tests copy the folder)."""
    model = AffectFPN(_tiny_config()).eval()
    folder = tmp_path_factory.mktemp("saved") / "tiny"
    model.save_pretrained(folder)
    return model, folder


@pytest.fixture
def embedded(
    _saved_tiny: tuple[AffectFPN, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Embedded:
    """A tiny model saved as an embedded entry under ``tmp_path`` and registered."""
    model, saved = _saved_tiny
    weights_root = tmp_path / "weights"
    shutil.copytree(saved, weights_root / "tiny-test")
    recipes_root = tmp_path / "recipes"
    recipes_root.mkdir()
    (recipes_root / "tiny.yaml").write_text("model: {backbone: mobilenet_v2}\n", encoding="utf-8")
    digest = hashlib.sha256((weights_root / "tiny-test" / "model.safetensors").read_bytes())
    config = model.config
    info = ModelInfo(
        name="tiny-test",
        description="A randomly initialised tiny model for the registry tests.",
        source="package",
        location="tiny-test",
        tasks=config.tasks,
        backbone=config.backbone,
        neck=config.neck,
        input_size=config.input_size,
        mean=config.mean,
        std=config.std,
        expressions=config.expressions,
        action_units=config.action_units,
        num_params=sum(p.numel() for p in model.parameters()),
        metrics={"fer2013/test": {"accuracy": 0.25, "f1_macro": 0.1}, "affwild2/val": {"mse": 1.5}},
        license="apache-2.0",
        datasets=("fer2013",),
        recipe="recipes/tiny.yaml",
        sha256=digest.hexdigest(),
    )

    def package_weights_dir(entry: ModelInfo) -> Path:
        if entry.source != "package":
            raise WeightsError(f"model {entry.name!r} is not embedded in the package")
        return weights_root / entry.location

    monkeypatch.setattr(registry, "package_weights_dir", package_weights_dir)
    registry.register_model(info)
    return Embedded(info, model, weights_root, recipes_root)


def _same_outputs(a: AffectFPN, b: AffectFPN, size: tuple[int, int] = (64, 64)) -> bool:
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        out_a, out_b = a.eval()(x), b.eval()(x)
    return all(
        (p is None and q is None) or (p is not None and q is not None and torch.equal(p, q))
        for p, q in zip(out_a, out_b, strict=True)
    )


# --------------------------------------------------------------------------- the walk
def test_every_registered_model_follows_the_schema() -> None:
    models = list_models()
    assert [m.name for m in models] == registry.model_names()
    assert sorted(m.name for m in models) == sorted(info.name for info, _ in embedded_models())
    assert len({m.name for m in models}) == len(models)
    defaults = [info.name for info, is_default in embedded_models() if is_default]
    assert len(defaults) <= 1, "at most one built-in default"
    if defaults:
        assert models[0].name == defaults[0]
    unverified = [m.name for m in models if not check_model_info(m)]
    if unverified:
        pytest.skip(f"num_params not verified for {unverified}: not in the Hub cache (offline)")


def test_schema_check_passes_on_a_temporary_embedded_entry(embedded: Embedded) -> None:
    assert embedded.info in list_models()
    assert get_model_info("tiny-test") is embedded.info
    assert check_model_info(embedded.info, recipes_root=embedded.recipes_root)


def test_entries_serialise_to_json(embedded: Embedded) -> None:
    data = json.loads(json.dumps(embedded.info.to_dict()))
    assert data["name"] == "tiny-test"
    assert data["metrics"] == {
        "fer2013/test": {"accuracy": 0.25, "f1_macro": 0.1},
        "affwild2/val": {"mse": 1.5},
    }
    assert data["sha256"] == embedded.info.sha256


@pytest.mark.parametrize(
    ("changes", "why"),
    [
        ({"num_params": 12345}, "num_params"),
        ({"metrics": {"fer2013/test": {"accuracy": 1.7}}}, "accuracy"),
        ({"metrics": {"fer2013/test": {"accuracy": float("nan")}}}, "accuracy"),
        ({"metrics": {"fer2013/test": {"accuracy": "high"}}}, "accuracy"),
        ({"metrics": {"fer2013/test": 0.5}}, "metrics"),
        ({"metrics": {}}, "metrics"),
        ({"tasks": ("va", "gaze")}, "tasks"),
        ({"tasks": ("va", "au")}, "tasks"),
        ({"backbone": "resnet18"}, "backbone"),
        ({"input_size": (112, 112)}, "input_size"),
        ({"mean": (0.5, 0.5, 0.5)}, "mean"),
        ({"expressions": EXPRESSIONS[:6]}, "expression count"),
        ({"license": ""}, "license"),
        ({"recipe": ""}, "recipe"),
        ({"recipe": "recipes/absent.yaml"}, "not found"),
        ({"recipe": "../outside.yaml"}, "is outside"),
        ({"datasets": ()}, "trained on"),
        ({"sha256": "0" * 64}, "sha256"),
        ({"location": "absent-folder"}, "missing"),
    ],
)
def test_schema_check_catches_a_bad_entry(
    embedded: Embedded, changes: dict[str, object], why: str
) -> None:
    (embedded.recipes_root.parent / "outside.yaml").write_text("x: 1\n", encoding="utf-8")
    bad = replace(embedded.info, **changes)  # type: ignore[arg-type]
    with pytest.raises(AssertionError, match=why):
        check_model_info(bad, recipes_root=embedded.recipes_root)


# ------------------------------------------------------------------------- resolution
def test_embedded_entry_loads_by_name(embedded: Embedded) -> None:
    model = AffectFPN.from_pretrained("tiny-test")
    assert not model.training
    assert model.config == embedded.model.config
    assert _same_outputs(model, embedded.model)


def test_sha256_mismatch_is_a_weights_error_asking_to_reinstall(embedded: Embedded) -> None:
    weights = embedded.folder / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01  # still a readable file, but not the registered one
    weights.write_bytes(bytes(data))
    with pytest.raises(WeightsError, match="reinstall") as info:
        AffectFPN.from_pretrained("tiny-test")
    assert "sha256" in str(info.value)
    assert "tiny-test" in str(info.value)


def test_missing_embedded_weights_ask_to_reinstall(embedded: Embedded) -> None:
    (embedded.folder / "model.safetensors").unlink()
    with pytest.raises(WeightsError, match="reinstall"):
        AffectFPN.from_pretrained("tiny-test")


def test_default_model_is_what_from_pretrained_loads(embedded: Embedded) -> None:
    registry.register_model(replace(embedded.info, name="tiny-default"), default=True)
    assert registry.default_model_name() == "tiny-default"
    assert list_models()[0].name == "tiny-default"
    model = AffectFPN.from_pretrained()
    assert _same_outputs(model, embedded.model)


def test_no_default_registered_is_a_clear_weights_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry, "_DEFAULT", [])
    with pytest.raises(WeightsError, match="no default model") as info:
        AffectFPN.from_pretrained()
    assert "pass a model name, folder or Hub repo id" in str(info.value)


def test_unregistering_the_default_clears_it(embedded: Embedded) -> None:
    registry.register_model(embedded.info, default=True, overwrite=True)
    registry.unregister_model("tiny-test")
    assert "tiny-test" not in registry.model_names()
    with pytest.raises(WeightsError, match="no default model"):
        registry.default_model_name()


def test_register_refuses_a_duplicate_name(embedded: Embedded) -> None:
    with pytest.raises(ConfigError, match="already registered"):
        registry.register_model(embedded.info)
    changed = replace(embedded.info, description="changed")
    registry.register_model(changed, overwrite=True)
    assert get_model_info("tiny-test").description == "changed"


def test_unknown_name_lists_the_available_models(embedded: Embedded) -> None:
    with pytest.raises(WeightsError, match="tiny-test"):
        get_model_info("no-such-model")


def test_package_weights_dir_is_inside_the_package() -> None:
    import affectfpn

    embedded_info = _info(source="package", location="tiny", revision=None, sha256="0" * 64)
    expected = Path(affectfpn.__file__).parent / "weights" / "tiny"
    assert registry.package_weights_dir(embedded_info) == expected
    with pytest.raises(WeightsError, match="not embedded"):
        registry.package_weights_dir(_info())


# -------------------------------------------------------------------- ModelInfo checks
def _info(**changes: object) -> ModelInfo:
    values: dict[str, object] = {
        "name": "m",
        "description": "d",
        "source": "hub",
        "location": "org/model",
        "tasks": ("va",),
        "backbone": "resnet18",
        "neck": "fpn",
        "input_size": (112, 112),
        "mean": (0.5, 0.5, 0.5),
        "std": (0.5, 0.5, 0.5),
        "expressions": EXPRESSIONS,
        "action_units": ("AU1",),
        "num_params": 1,
        "metrics": {"x": {"ccc": 0.5}},
        "license": "mit",
        "datasets": ("x",),
        "recipe": "recipes/x.yaml",
        "revision": "0123456789abcdef0123456789abcdef01234567",
    }
    values.update(changes)
    return ModelInfo(**values)  # type: ignore[arg-type]


def test_model_info_accepts_a_pinned_hub_entry() -> None:
    assert _info().revision == "0123456789abcdef0123456789abcdef01234567"


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"revision": None}, "pinned"),
        ({"revision": "main"}, "pinned"),
        ({"revision": "v1.0"}, "pinned"),
        ({"revision": "0123456789abcdef"}, "pinned"),
        ({"revision": "0123456789ABCDEF0123456789ABCDEF01234567"}, "pinned"),
        ({"source": "package", "sha256": None}, "sha256"),
        ({"source": "package", "sha256": "abc"}, "sha256"),
        ({"source": "url"}, "source"),
        ({"tasks": ()}, "tasks"),
    ],
)
def test_model_info_rejects_an_unpinned_entry(changes: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        _info(**changes)


# --------------------------------------------------------------------- Hub entries
def test_hub_entry_loads_its_pinned_revision(
    local_hub: LocalHub, embedded: Embedded, tmp_path: Path
) -> None:
    folder = embedded.folder
    files = {name: (folder / name).read_bytes() for name in ("config.json", "model.safetensors")}
    pinned = local_hub.add_files("affectfpn/tiny", files)
    torch.manual_seed(1)  # other weights than the pinned ones
    newer = AffectFPN(_tiny_config())
    newer.save_pretrained(tmp_path / "newer")
    local_hub.add_files(
        "affectfpn/tiny",
        {n: (tmp_path / "newer" / n).read_bytes() for n in ("config.json", "model.safetensors")},
    )
    info = replace(
        embedded.info,
        name="tiny-hub",
        source="hub",
        location="affectfpn/tiny",
        revision=pinned,
        sha256=None,
    )
    registry.register_model(info)
    model = AffectFPN.from_pretrained("tiny-hub")
    assert _same_outputs(model, embedded.model)
    assert not _same_outputs(model, newer)
    assert check_model_info(info, recipes_root=embedded.recipes_root)  # cached now: verified
