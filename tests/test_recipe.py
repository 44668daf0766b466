"""Tests of recipe files (affectfpn.recipes.recipe): loading, ${VAR} expansion, overrides,
checks that name the setting at fault, dataset building, fine-tuning, and the shipped recipes.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _fake_data import (
    write_affectnet_tree,
    write_affwild2_tree,
    write_expw_tree,
    write_image_folder,
)

from affectfpn import AffectFPN, AffectFPNConfig
from affectfpn.errors import ConfigError
from affectfpn.recipes.datasets import ImageFolderExpressions, MixedDataset
from affectfpn.recipes.recipe import (
    build_datasets,
    load_recipe,
    main,
    model_from_recipe,
    recipe_from_dict,
    run_recipe,
)
from affectfpn.recipes.teacher_student import TeacherStudent
from affectfpn.recipes.trainer import TrainSettings

REPO_ROOT = Path(__file__).resolve().parents[1]
RECIPES = REPO_ROOT / "recipes"
SIZE = 32


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


MINIMAL = """
name = "tiny"
output_dir = "${RUNS:-runs}/tiny"

[model]
backbone = "resnet18"
fpn_width = 8
input_size = [32, 32]
tasks = ["expression"]

[data]
train = [{ type = "imagefolder", root = "${FACES}/train" }]

[train]
epochs = 2
"""


# --------------------------------------------------------------------------------- loading
def test_load_recipe_reads_tables_and_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RUNS", raising=False)
    monkeypatch.setenv("FACES", "/data/faces")
    recipe = load_recipe(write(tmp_path / "tiny.toml", MINIMAL))
    assert recipe.name == "tiny"
    assert recipe.kind == "train"
    assert recipe.output_dir == Path("runs/tiny")
    assert recipe.table("data")["train"] == [{"type": "imagefolder", "root": "/data/faces/train"}]
    assert recipe.table("train") == {"epochs": 2}
    assert recipe.table("augment") == {}
    recipe.table("model")["fpn_width"] = 99  # tables are copies
    assert recipe.table("model")["fpn_width"] == 8
    unnamed = load_recipe(write(tmp_path / "other.toml", MINIMAL.replace('name = "tiny"', "")))
    assert unnamed.name == "other"
    with pytest.raises(ConfigError, match="does not exist"):
        load_recipe(tmp_path / "missing.toml")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_recipe(write(tmp_path / "bad.toml", "[train\nepochs = 1"))


def test_variables_expand_with_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    raw = {
        "name": "x",
        "output_dir": "${RUNS:-runs}/x",
        "data": {"train": [{"type": "csv", "csv_path": "${A}/${B:-b}.csv", "root": "${A}"}]},
        "card": {"description": "${EMPTY:-fallback} ${A}"},
    }
    monkeypatch.setenv("A", "/root/a")
    monkeypatch.delenv("B", raising=False)
    monkeypatch.setenv("EMPTY", "")
    monkeypatch.setenv("RUNS", "/scratch")
    recipe = recipe_from_dict(raw)
    assert recipe.output_dir == Path("/scratch/x")
    spec = recipe.table("data")["train"][0]
    assert spec == {"type": "csv", "csv_path": "/root/a/b.csv", "root": "/root/a"}
    assert recipe.table("card")["description"] == "fallback /root/a"
    monkeypatch.setenv("B", "bee")
    assert recipe_from_dict(raw).table("data")["train"][0]["csv_path"] == "/root/a/bee.csv"
    monkeypatch.delenv("A")
    with pytest.raises(
        ConfigError, match=r"data\.train\[0\]\.csv_path uses \$\{A\}.* A is not set"
    ):
        recipe_from_dict(raw)


def test_set_overrides_change_any_value(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FACES", "/f")
    monkeypatch.setenv("ELSEWHERE", "/other")
    path = write(tmp_path / "tiny.toml", MINIMAL)
    recipe = load_recipe(
        path,
        [
            "train.epochs=5",
            "train.lr=1e-4",
            "train.optimizer=sgd",  # a bare word is a string
            "model.tasks=['va', 'au']",
            "card.license='mit'",  # a new table
            "output_dir=${ELSEWHERE}/run",  # expanded after the override
            "train.task_weights.au=2.0",
        ],
    )
    train = TrainSettings.from_dict(recipe.table("train"))
    assert (train.epochs, train.lr, train.optimizer) == (5, 1e-4, "sgd")
    assert train.task_weights == {"au": 2.0}
    assert recipe.table("model")["tasks"] == ["va", "au"]
    assert recipe.table("card") == {"license": "mit"}
    assert recipe.output_dir == Path("/other/run")
    with pytest.raises(ConfigError, match=r"section\.key=value"):
        load_recipe(path, ["train.epochs"])
    with pytest.raises(ConfigError, match="'epochs' is not a table"):
        load_recipe(path, ["train.epochs.x=1"])


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ("train.epoch=3", "'epoch'"),
        ("model.bakcbone='resnet18'", "'bakcbone'"),
        ("augment.rotate=5.0", "'rotate'"),
        ("card.licence='mit'", "'licence'"),
        ("data.tran=[]", "'tran'"),
        ("trian.epochs=1", "'trian'"),
        ("train.optimizer='rmsprop'", "train.optimizer 'rmsprop'"),
        ("model.backbone='resnet9'", "'resnet9'"),
        ("train.task_weights.expr=1.0", "'expr'"),
    ],
)
def test_unknown_or_bad_settings_are_rejected_by_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, change: str, named: str
) -> None:
    monkeypatch.setenv("FACES", "/f")
    path = write(tmp_path / "tiny.toml", MINIMAL)
    with pytest.raises(ConfigError, match=named) as err:
        load_recipe(path, [change])
    assert str(path) in str(err.value)


def test_bad_dataset_type_is_an_error_naming_it(tmp_path: Path) -> None:
    raw = {"data": {"train": [{"type": "imagefolders", "root": "x"}]}}
    with pytest.raises(ConfigError, match=r"'imagefolders' is not one of \['affectnet'"):
        recipe_from_dict(raw)
    with pytest.raises(ConfigError, match="must be a table"):
        recipe_from_dict({"data": {"train": ["faces/"]}})
    write_image_folder(tmp_path / "faces", {"happy": 1})
    spec = {"type": "imagefolder", "root": str(tmp_path / "faces"), "colour": True}
    with pytest.raises(ConfigError, match=r"bad arguments for a imagefolder dataset.*colour"):
        build_datasets([spec], transform=None, source="test")
    with pytest.raises(ConfigError, match="kind 'distill'"):
        recipe_from_dict({"kind": "distill"})


def test_several_datasets_are_mixed_with_prefixed_keys(tmp_path: Path) -> None:
    write_image_folder(tmp_path / "a", {"happy": 2})
    write_image_folder(tmp_path / "b", {"happy": 1, "sad": 1})
    specs = [
        {"type": "imagefolder", "root": str(tmp_path / "a")},
        {"type": "imagefolder", "root": str(tmp_path / "b")},
    ]
    mixed = build_datasets(specs, transform=None, source="test")
    assert isinstance(mixed, MixedDataset)
    assert mixed.keys == [
        "0-imagefolder:happy/img_000.jpg",
        "0-imagefolder:happy/img_001.jpg",
        "1-imagefolder:happy/img_000.jpg",
        "1-imagefolder:sad/img_000.jpg",
    ]
    single = build_datasets(specs[0], transform=None, source="test")
    assert isinstance(single, ImageFolderExpressions)
    assert build_datasets([], transform=None, source="test") is None


# --------------------------------------------------------------------------------- fine-tuning
def saved_tiny_model(folder: Path, tasks: tuple[str, ...]) -> AffectFPN:
    torch.manual_seed(1)
    config = AffectFPNConfig(
        backbone="resnet18", fpn_width=8, input_size=(SIZE, SIZE), tasks=tasks, trainable_layers=0
    )
    model = AffectFPN(config)
    with torch.no_grad():  # heads unlike a fresh initialisation
        for head in model.heads.values():
            head.bias.fill_(0.5)
    model.save_pretrained(folder)
    return model


def test_finetune_recipe_reinitialises_only_new_heads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    saved = saved_tiny_model(tmp_path / "pretrained", ("va", "expression"))
    monkeypatch.setenv("AFFECTFPN_INIT", str(tmp_path / "pretrained"))
    monkeypatch.setenv("FINETUNE_DATA", str(tmp_path / "faces"))
    recipe = load_recipe(RECIPES / "finetune-custom.toml", ["model.tasks=['expression', 'au']"])
    model = model_from_recipe(recipe)
    assert model.config.tasks == ("expression", "au")
    assert model.config.input_size == (SIZE, SIZE), "the pretrained configuration is kept"
    assert model.training
    old, new = saved.state_dict(), model.state_dict()
    assert not any(k.startswith("heads.va.") for k in new), "a dropped task's head is gone"
    kept = [k for k in new if not k.startswith("heads.au.")]
    assert all(torch.equal(new[k], old[k]) for k in kept)
    assert any(k.startswith("heads.expression.") for k in kept)
    assert torch.equal(new["heads.au.bias"], torch.zeros(12)), "the new head starts afresh"
    assert 0.005 < float(new["heads.au.weight"].std()) < 0.02
    same = load_recipe(RECIPES / "finetune-custom.toml", ["model.tasks=['va', 'expression']"])
    assert all(torch.equal(v, old[k]) for k, v in model_from_recipe(same).state_dict().items())
    with pytest.raises(ConfigError, match="'bakcbone'"):
        model_from_recipe(load_recipe(RECIPES / "finetune-custom.toml", ["model.bakcbone='x'"]))


def test_finetune_recipe_trains_from_the_command_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    saved_tiny_model(tmp_path / "pretrained", ("expression",))
    write_image_folder(tmp_path / "faces" / "train", {"happy": 3, "sad": 3}, image_size=SIZE)
    write_image_folder(tmp_path / "faces" / "val", {"happy": 2, "sad": 2}, image_size=SIZE)
    monkeypatch.setenv("AFFECTFPN_INIT", str(tmp_path / "pretrained"))
    monkeypatch.setenv("FINETUNE_DATA", str(tmp_path / "faces"))
    out = tmp_path / "run"
    code = main(
        [
            str(RECIPES / "finetune-custom.toml"),
            "--set",
            f"output_dir='{out}'",
            "--set",
            "train.epochs=1",
            "--set",
            "train.batch_size=3",
            "--set",
            "train.num_workers=0",
            "--set",
            "train.device='cpu'",
            "--set",
            "train.progress=false",
            "--set",
            "train.replay_synthetic=2",
            "--set",
            "train.replay_iterations=1",
        ]
    )
    assert code == 0
    assert torch.load(out / "last.pt", weights_only=True)["epoch"] == 1
    model = AffectFPN.from_pretrained(out / "best")
    assert model.config.tasks == ("expression",)
    assert json.loads((out / "recipe.json").read_text())["train"]["epochs"] == 1
    assert "finetune-custom" in (out / "best" / "README.md").read_text()
    with pytest.raises(ConfigError, match="teacher-student recipes only"):
        run_recipe(RECIPES / "finetune-custom.toml", stages=["teachers"])


# --------------------------------------------------------------------------------- shipped recipes
def test_shipped_teacher_student_recipe_parses_and_opens_its_data(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("ABAW2_ROOT", "EXPW_ROOT", "AFFECTNET_ROOT"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ConfigError, match="ABAW2_ROOT is not set"):
        load_recipe(RECIPES / "abaw2-teacher-student.toml")
    write_affwild2_tree(tmp_path / "aff", image_size=SIZE)
    write_expw_tree(tmp_path / "expw", image_size=SIZE)
    write_affectnet_tree(tmp_path / "an", image_size=SIZE)
    monkeypatch.setenv("ABAW2_ROOT", str(tmp_path / "aff"))
    monkeypatch.setenv("EXPW_ROOT", str(tmp_path / "expw"))
    monkeypatch.setenv("AFFECTNET_ROOT", str(tmp_path / "an"))
    monkeypatch.setenv("AFFECTNET_IMAGES", "images")
    recipe = load_recipe(RECIPES / "abaw2-teacher-student.toml")
    assert recipe.kind == "teacher-student"
    ts = TeacherStudent(recipe)
    assert ts.teacher_tasks == ("va", "expression", "au")
    # the paper's settings
    config = ts.student_recipe().table("model")
    assert (config["backbone"], config["fpn_width"], config["input_size"]) == (
        "resnet50",
        256,
        [128, 128],
    )
    assert config["backbone_weights"] == "imagenet"
    for task in ts.teacher_tasks:
        teacher = TrainSettings.from_dict(ts.teacher_recipe(task).table("train"))
        assert (teacher.optimizer, teacher.lr, teacher.momentum) == ("sgd", 3e-4, 0.9)
        assert (teacher.weight_decay, teacher.epoch_fraction) == (1e-4, 0.25)
        assert ts.teacher_recipe(task).table("model")["tasks"] == [task]
    student = TrainSettings.from_dict(ts.student_recipe().table("train"))
    assert (student.optimizer, student.lr, student.batch_size) == ("adam", 1e-3, 128)
    assert (student.epochs, student.epoch_fraction) == (20, 0.25)
    # every dataset it names opens on the fake trees
    small = AffectFPNConfig(backbone="resnet18", input_size=(SIZE, SIZE))
    sizes = {}
    for task in ts.teacher_tasks:
        train, val = ts.teacher_data(task, small)
        assert val is not None
        sizes[task] = len(train)  # type: ignore[arg-type]
    assert sizes == {"va": 3 + 8, "expression": 12 + 6 + 7, "au": 8}
    assert len(ts.target_data(small)) == 21  # type: ignore[arg-type]
    assert len(ts.validation_data(small)) == 7  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"\[pseudo\]: unknown setting.*'au_thresh'"):
        load_recipe(RECIPES / "abaw2-teacher-student.toml", ["pseudo.au_thresh=0.5"])
    with pytest.raises(ConfigError, match=r"\[teachers.va\]: unknown setting.*'datta'"):
        load_recipe(RECIPES / "abaw2-teacher-student.toml", ["teachers.va.datta.train=[]"])
    with pytest.raises(ConfigError, match=r"\[student\] \[train\]: unknown setting.*'lrr'"):
        load_recipe(RECIPES / "abaw2-teacher-student.toml", ["student.train.lrr=1.0"])


def test_shipped_fer2013_recipe_parses(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AFFECTFPN_SHARED", str(tmp_path / "shared"))
    monkeypatch.delenv("AFFECTFPN_RUNS", raising=False)
    recipe = load_recipe(RECIPES / "fer2013.toml")
    assert recipe.output_dir == Path("runs/fer2013-resnet18-fpn")
    assert recipe.table("data")["train"][0]["root"] == f"{tmp_path}/shared/data/fer2013/train"
    assert TrainSettings.from_dict(recipe.table("train")).select_metric == "expression/accuracy"


@pytest.mark.parametrize(
    "name", sorted(p.name for p in RECIPES.glob("*.toml") if 'kind = "train"' in p.read_text())
)
def test_every_shipped_training_recipe_parses(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AFFECTFPN_SHARED", str(tmp_path / "shared"))
    monkeypatch.setenv("AFFECTFPN_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("FINETUNE_DATA", str(tmp_path / "mine"))  # finetune-custom.toml's data
    recipe = load_recipe(RECIPES / name)
    settings = TrainSettings.from_dict(recipe.table("train"))
    assert settings.epochs > 0
    assert str(recipe.output_dir).startswith(str(tmp_path / "runs"))
    for spec in recipe.table("data")["train"]:
        tables = spec.get("pseudo_labels", [])
        for table in [tables] if isinstance(tables, str) else tables:
            assert "${" not in table  # every variable expanded
    init = recipe.table("model").get("init")
    assert init is None or "${" not in init


def test_python_dash_m_recipes_recipe_becomes_affectfpn_train(tmp_path: Path) -> None:
    """The old spelling (also ``torchrun -m affectfpn.recipes.recipe``) replaces its own process
    by ``affectfpn train`` rather than waiting on a child, so a launcher's signals reach the
    command: the replaced interpreter never runs its exit handlers."""
    probe = tmp_path / "probe.py"
    probe.write_text(
        "import atexit, runpy, sys\n"
        "atexit.register(lambda: print('the alias process exited on its own'))\n"
        "sys.argv = ['recipe.py', '--help']\n"
        "runpy.run_module('affectfpn.recipes.recipe', run_name='__main__', alter_sys=True)\n",
        encoding="utf-8",
    )
    done = subprocess.run(
        [sys.executable, str(probe)], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: affectfpn train"), done.stdout[:500]
    assert "exited on its own" not in done.stdout
