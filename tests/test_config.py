"""AffectFPNConfig: validation of every field, JSON round trip, forward compatibility, presets."""

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from affectfpn import AffectFPNConfig, ConfigError
from affectfpn.config import (
    BACKBONE_CHANNELS,
    CONFIG_FORMAT_VERSION,
    IMAGENET_MEAN,
    IMAGENET_STD,
)
from affectfpn.labels import ACTION_UNITS, EXPRESSIONS, TASKS

# (field, bad value, why) -- every one must raise ConfigError naming the field.
INVALID_FIELDS: list[tuple[str, Any, str]] = [
    ("backbone", "resnet9000", "unknown backbone"),
    ("backbone", "", "empty backbone"),
    ("backbone", 50, "backbone not a string"),
    ("neck", "bifpn", "unknown neck"),
    ("neck", None, "neck not a string"),
    ("fpn_width", 0, "width below 1"),
    ("fpn_width", -8, "negative width"),
    ("fpn_width", 32.0, "width a float"),
    ("fpn_width", "32", "width a string"),
    ("fpn_width", True, "width a bool"),
    ("extra_level", 1, "extra_level an int"),
    ("extra_level", "yes", "extra_level a string"),
    ("frozen_bn", 0, "frozen_bn an int"),
    ("frozen_bn", None, "frozen_bn None"),
    ("trainable_layers", -1, "trainable_layers below 0"),
    ("trainable_layers", 6, "trainable_layers above 5"),
    ("trainable_layers", 2.5, "trainable_layers a float"),
    ("tasks", (), "no task"),
    ("tasks", ("va", "gaze"), "unknown task"),
    ("tasks", ("va", "va"), "duplicate task"),
    ("tasks", "va", "tasks a bare string"),
    ("tasks", None, "tasks None"),
    ("tasks", 3, "tasks a number"),
    ("input_size", (64,), "one number"),
    ("input_size", (64, 64, 3), "three numbers"),
    ("input_size", (8, 64), "height below 16"),
    ("input_size", (64, 0), "width zero"),
    ("input_size", (64.0, 64), "float size"),
    ("input_size", ("64", "64"), "string size"),
    ("input_size", 64, "a single int"),
    ("input_size", "64x64", "a string"),
    ("mean", (0.5, 0.5), "two means"),
    ("mean", (0.5, 0.5, 0.5, 0.5), "four means"),
    ("mean", (0.5, float("nan"), 0.5), "NaN mean"),
    ("mean", (0.5, "a", 0.5), "string in mean"),
    ("std", (0.2, 0.2), "two stds"),
    ("std", (0.2, 0.0, 0.2), "zero std"),
    ("std", (0.2, -0.1, 0.2), "negative std"),
    ("std", (0.2, float("inf"), 0.2), "infinite std"),
    ("expressions", EXPRESSIONS[:6], "6 expressions"),
    ("expressions", (*EXPRESSIONS, "Contempt"), "8 expressions"),
    ("expressions", (*EXPRESSIONS[:6], "Neutral"), "duplicate expression"),
    ("expressions", (*EXPRESSIONS[:6], ""), "empty expression name"),
    ("expressions", (*EXPRESSIONS[:6], 7), "expression not a string"),
    ("expressions", "Neutral", "expressions a bare string"),
    ("action_units", (), "no action unit"),
    ("action_units", ("AU1", "AU1"), "duplicate action unit"),
    ("action_units", ("AU1", ""), "empty action unit name"),
    ("action_units", ("AU1", 2), "action unit not a string"),
    ("head_dropout", 1.0, "dropout 1"),
    ("head_dropout", -0.1, "negative dropout"),
    ("head_dropout", "0.1", "dropout a string"),
    ("head_dropout", None, "dropout None"),
]

# Bad types that once slipped through the validation or were reported without the field.
INVALID_FIELDS_BUGGY = [
    pytest.param("backbone", ["resnet18"], id="backbone-a_list"),
    pytest.param("backbone", {"name": "resnet18"}, id="backbone-a_dict"),
    pytest.param("mean", (True, 0.5, 0.5), id="mean-a_bool"),
    pytest.param("std", (0.2, True, 0.2), id="std-a_bool"),
]


def _ids(cases: list[tuple[str, Any, str]]) -> list[str]:
    return [f"{name}-{why.replace(' ', '_')}" for name, _, why in cases]


@pytest.mark.parametrize(("name", "value", "why"), INVALID_FIELDS, ids=_ids(INVALID_FIELDS))
def test_invalid_field_raises_config_error_naming_it(name: str, value: Any, why: str) -> None:
    with pytest.raises(ConfigError, match=f"'{name}'"):
        AffectFPNConfig(**{name: value})


@pytest.mark.parametrize(("name", "value", "why"), INVALID_FIELDS, ids=_ids(INVALID_FIELDS))
def test_invalid_field_from_dict_names_field_and_source(name: str, value: Any, why: str) -> None:
    data = AffectFPNConfig().to_dict()
    data[name] = list(value) if isinstance(value, tuple) else value
    with pytest.raises(ConfigError, match=f"'{name}'") as info:
        AffectFPNConfig.from_dict(data, source="dir/config.json")
    assert "dir/config.json" in str(info.value)


@pytest.mark.parametrize(("name", "value"), INVALID_FIELDS_BUGGY)
def test_invalid_type_raises_config_error_naming_it_bugs(name: str, value: Any) -> None:
    with pytest.raises(ConfigError, match=f"'{name}'"):
        AffectFPNConfig(**{name: value})


def test_unhashable_backbone_in_json_names_the_field() -> None:
    with pytest.raises(ConfigError, match="'backbone'"):
        AffectFPNConfig.from_dict({"backbone": ["resnet18"]}, source="config.json")


def test_unknown_backbone_message_lists_the_choices() -> None:
    with pytest.raises(ConfigError) as info:
        AffectFPNConfig(backbone="vgg16")
    for name in BACKBONE_CHANNELS:
        assert name in str(info.value)


def test_defaults_are_valid_and_use_the_label_conventions() -> None:
    config = AffectFPNConfig()
    assert config.tasks == TASKS
    assert config.expressions == EXPRESSIONS
    assert config.action_units == ACTION_UNITS
    assert config.mean == IMAGENET_MEAN
    assert config.std == IMAGENET_STD


@pytest.mark.parametrize("backbone", sorted(BACKBONE_CHANNELS))
@pytest.mark.parametrize("neck", ["fpn", "none"])
def test_every_backbone_and_neck_is_accepted(backbone: str, neck: str) -> None:
    config = AffectFPNConfig(backbone=backbone, neck=neck)
    assert (config.backbone, config.neck) == (backbone, neck)


def test_lists_become_tuples_and_ints_become_floats() -> None:
    config = AffectFPNConfig(
        tasks=["au"],
        input_size=[96, 80],
        mean=[0, 1, 0.5],
        std=[1, 1, 1],
        expressions=list(EXPRESSIONS),
        action_units=["AU12", "AU6"],
    )
    assert config.tasks == ("au",)
    assert config.input_size == (96, 80)
    assert config.mean == (0.0, 1.0, 0.5)
    assert all(isinstance(v, float) for v in (*config.mean, *config.std))
    assert isinstance(config.expressions, tuple)
    assert config.action_units == ("AU12", "AU6")
    hash(config)  # tuples keep the frozen dataclass hashable


def test_custom_action_units_of_any_count_are_allowed() -> None:
    assert len(AffectFPNConfig(action_units=("AU1", "AU2", "AU45")).action_units) == 3


@pytest.mark.parametrize(
    "tasks",
    [("au", "va"), ("expression", "va"), ("au", "expression", "va"), ("au", "va", "expression")],
)
def test_tasks_are_kept_in_canonical_order(tasks: tuple[str, ...]) -> None:
    config = AffectFPNConfig(tasks=tasks)
    assert config.tasks == tuple(t for t in TASKS if t in tasks)
    assert config == AffectFPNConfig(tasks=tuple(sorted(tasks, key=TASKS.index)))


def test_config_is_frozen() -> None:
    config = AffectFPNConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.backbone = "resnet50"  # type: ignore[misc]


def test_replace_validates_again() -> None:
    config = AffectFPNConfig()
    assert config.replace(fpn_width=64).fpn_width == 64
    with pytest.raises(ConfigError, match="'fpn_width'"):
        config.replace(fpn_width=0)


# ----------------------------------------------------------------------------------- JSON
def _varied_config() -> AffectFPNConfig:
    return AffectFPNConfig(
        backbone="mobilenet_v3_large",
        neck="fpn",
        fpn_width=48,
        extra_level=True,
        tasks=("va", "au"),
        input_size=(96, 80),
        mean=(0.5, 0.4, 0.3),
        std=(0.2, 0.3, 0.25),
        action_units=("AU4", "AU12", "AU25"),
        head_dropout=0.25,
        frozen_bn=True,
        trainable_layers=2,
    )


def test_json_round_trip_through_a_file(tmp_path: Path) -> None:
    config = _varied_config()
    path = tmp_path / "config.json"
    config.save(path)
    data = json.loads(path.read_text(encoding="utf-8"))
    assert data["model_type"] == "affectfpn"
    assert data["format_version"] == CONFIG_FORMAT_VERSION
    assert data["input_size"] == [96, 80]  # plain JSON lists on disk
    assert data["action_units"] == ["AU4", "AU12", "AU25"]
    loaded = AffectFPNConfig.load(path)
    assert loaded == config
    assert loaded.to_dict() == config.to_dict()
    assert isinstance(loaded.input_size, tuple)
    assert isinstance(loaded.tasks, tuple)


def test_to_dict_holds_every_field() -> None:
    config = _varied_config()
    data = config.to_dict()
    for f in dataclasses.fields(config):
        if f.name.startswith("_"):
            assert f.name not in data
            continue
        value = getattr(config, f.name)
        assert data[f.name] == (list(value) if isinstance(value, tuple) else value)
    json.dumps(data)  # JSON-ready


def test_from_dict_keeps_unknown_future_keys() -> None:
    data = _varied_config().to_dict()
    data["attention"] = {"kind": "cbam", "reduction": 16}
    data["pretrained_from"] = "imagenet"
    config = AffectFPNConfig.from_dict(data)
    assert config == _varied_config()  # unknown keys do not change the architecture
    again = config.to_dict()
    assert again["attention"] == {"kind": "cbam", "reduction": 16}
    assert again["pretrained_from"] == "imagenet"
    assert AffectFPNConfig.from_dict(json.loads(json.dumps(again))).to_dict() == again


def test_from_dict_fills_missing_fields_with_defaults() -> None:
    config = AffectFPNConfig.from_dict({"backbone": "resnet34"})
    assert config == AffectFPNConfig(backbone="resnet34")


def test_from_dict_rejects_a_newer_format_version() -> None:
    data = AffectFPNConfig().to_dict()
    data["format_version"] = CONFIG_FORMAT_VERSION + 1
    with pytest.raises(ConfigError, match="format_version") as info:
        AffectFPNConfig.from_dict(data, source="model/config.json")
    assert "upgrade" in str(info.value)
    assert "model/config.json" in str(info.value)


@pytest.mark.parametrize("version", ["1", 1.5, None])
def test_from_dict_rejects_a_malformed_format_version(version: Any) -> None:
    data = AffectFPNConfig().to_dict()
    data["format_version"] = version
    with pytest.raises(ConfigError, match="format_version"):
        AffectFPNConfig.from_dict(data)


def test_from_dict_accepts_an_older_format_version() -> None:
    data = AffectFPNConfig().to_dict()
    data["format_version"] = CONFIG_FORMAT_VERSION - 1
    assert AffectFPNConfig.from_dict(data) == AffectFPNConfig()


def test_from_dict_rejects_another_model_type() -> None:
    data = AffectFPNConfig().to_dict()
    data["model_type"] = "bert"
    with pytest.raises(ConfigError, match="model_type"):
        AffectFPNConfig.from_dict(data)


@pytest.mark.parametrize("data", [[1, 2], "resnet18", 3, None])
def test_from_dict_rejects_a_non_object(data: Any) -> None:
    with pytest.raises(ConfigError, match="JSON object"):
        AffectFPNConfig.from_dict(data, source="x/config.json")


def test_load_reports_bad_json_and_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text('{"backbone": "resnet18",', encoding="utf-8")
    with pytest.raises(ConfigError, match="not valid JSON") as info:
        AffectFPNConfig.load(path)
    assert str(path) in str(info.value)
    path.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ConfigError, match="not valid JSON"):
        AffectFPNConfig.load(path)
    with pytest.raises(ConfigError, match="no such config file"):
        AffectFPNConfig.load(tmp_path / "absent.json")


# ---------------------------------------------------------------------------- presets
def test_paper_preset() -> None:
    config = AffectFPNConfig.paper()
    assert config.backbone == "resnet50"
    assert config.neck == "fpn"
    assert config.fpn_width == 256
    assert config.extra_level is False
    assert config.input_size == (128, 128)
    assert config.frozen_bn is True
    assert config.trainable_layers == 3
    assert config.tasks == TASKS
    assert config.mean == IMAGENET_MEAN
    assert config.std == IMAGENET_STD
    assert config.expressions == EXPRESSIONS
    assert config.action_units == ACTION_UNITS


def test_paper_preset_overrides_are_applied_and_validated() -> None:
    config = AffectFPNConfig.paper(extra_level=True, tasks=("expression",))
    assert config.extra_level is True
    assert config.tasks == ("expression",)
    assert config.backbone == "resnet50"
    with pytest.raises(ConfigError, match="'backbone'"):
        AffectFPNConfig.paper(backbone="resnet9000")


def test_feature_dim_of_the_paper_and_of_the_authors_code() -> None:
    paper = AffectFPNConfig.paper()
    assert paper.num_levels == 4
    assert paper.level_names == ("P2", "P3", "P4", "P5")
    assert paper.feature_dim == 4 * 256 == 1024
    authors = AffectFPNConfig.paper(extra_level=True)
    assert authors.num_levels == 5
    assert authors.level_names == ("P2", "P3", "P4", "P5", "P6")
    assert authors.feature_dim == 5 * 256 == 1280


@pytest.mark.parametrize("backbone", sorted(BACKBONE_CHANNELS))
def test_feature_dim_without_a_neck_is_the_last_stage_width(backbone: str) -> None:
    config = AffectFPNConfig(backbone=backbone, neck="none", fpn_width=64, extra_level=True)
    assert config.num_levels == 1
    assert config.level_names == ("C5",)
    assert config.feature_dim == BACKBONE_CHANNELS[backbone][-1]


def test_alignment_framing_fields_round_trip_and_are_checked(tmp_path: Path) -> None:
    config = AffectFPNConfig(align_margin=-0.05, align_shift=-0.06)
    assert (config.align_margin, config.align_shift) == (-0.05, -0.06)
    assert AffectFPNConfig.from_dict(config.to_dict()) == config
    old = config.to_dict()
    del old["align_margin"], old["align_shift"]  # a config.json written before the fields
    assert AffectFPNConfig.from_dict(old).align_margin == 0.1
    assert AffectFPNConfig.from_dict(old).align_shift == 0.0
    for field_name, bad in (
        ("align_margin", -0.5),
        ("align_margin", float("inf")),
        ("align_shift", 0.5),
        ("align_shift", "0.1"),
        ("align_shift", True),
    ):
        with pytest.raises(ConfigError, match=field_name):
            AffectFPNConfig(**{field_name: bad})
