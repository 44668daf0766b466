"""Tests of the teacher-student pipeline (affectfpn.recipes.teacher_student).

The shipped recipe ``recipes/abaw2-teacher-student.toml`` runs end to end, once per module, on
tiny Aff-Wild2, ExpW and AffectNet trees written by ``_fake_data`` (ResNet-18, FPN width 8,
32x32 faces, one epoch per stage). The other tests inspect what that run wrote, or work on a
clone of its output folder. One test per flaw of the reference code (DESIGN.md) checks that the
flaw is absent: each would fail if the flaw were present.
"""

import csv
import json
import math
import os
import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from _fake_data import (
    FakeAffWild2,
    FakeExpW,
    write_affectnet_tree,
    write_affwild2_tree,
    write_expw_tree,
)

import affectfpn.recipes.trainer as trainer_module
from affectfpn import AffectFPN
from affectfpn.errors import ConfigError, DatasetError
from affectfpn.labels import TASKS
from affectfpn.metrics import MultiTaskMeter
from affectfpn.models.affectfpn import AffectFPNOutput
from affectfpn.preprocess import eval_transform, normalize
from affectfpn.recipes.datasets import AffWild2MultiTask, LabelTable
from affectfpn.recipes.losses import multitask_loss
from affectfpn.recipes.recipe import Recipe, load_recipe, run_recipe
from affectfpn.recipes.teacher_student import TeacherStudent, run_teacher_student

REPO_ROOT = Path(__file__).resolve().parents[1]
RECIPE = REPO_ROOT / "recipes" / "abaw2-teacher-student.toml"
SIZE = 32

#: Shrinks the paper's recipe to a test: tiny model, CPU, one epoch per stage.
TINY = [
    "model.backbone='resnet18'",
    "model.fpn_width=8",
    f"model.input_size=[{SIZE}, {SIZE}]",
    "model.backbone_weights='none'",
    "model.trainable_layers=1",
    "train.device='cpu'",
    "train.num_workers=0",
    "train.progress=false",
    "train.channels_last=false",
    "teachers.train.epochs=1",
    "teachers.train.batch_size=8",
    "teachers.train.lr=0.01",
    "student.train.epochs=1",
    "student.train.batch_size=8",
    "pseudo.batch_size=16",
]


@dataclass
class Run:
    """The module's pipeline run and what it was made from."""

    env: dict[str, str]
    output_dir: Path
    affwild2: FakeAffWild2
    expw: FakeExpW
    summary: dict[str, Any]
    batches: list[dict[str, Any]] = field(default_factory=list)

    def recipe(self, *overrides: str, output_dir: Path | None = None) -> Recipe:
        out = output_dir or self.output_dir
        with pytest.MonkeyPatch.context() as mp:
            for k, v in self.env.items():
                mp.setenv(k, v)
            return load_recipe(RECIPE, [*TINY, f"output_dir='{out}'", *overrides])

    def stage_batches(self, tasks: tuple[str, ...]) -> list[dict[str, Any]]:
        return [b for b in self.batches if b["tasks"] == tasks]


def write_trees(root: Path) -> tuple[dict[str, str], FakeAffWild2, FakeExpW]:
    affwild2 = write_affwild2_tree(root / "Aff-Wild2", image_size=SIZE)
    expw = write_expw_tree(root / "ExpW", image_size=SIZE)
    write_affectnet_tree(root / "AffectNet", image_size=SIZE)
    env = {
        "ABAW2_ROOT": str(root / "Aff-Wild2"),
        "EXPW_ROOT": str(root / "ExpW"),
        "AFFECTNET_ROOT": str(root / "AffectNet"),
        "AFFECTNET_IMAGES": "images",
        "AFFECTNET_CSV": "training.csv",
    }
    return env, affwild2, expw


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    """The whole pipeline, from the shipped recipe, once; every loss input is recorded."""
    root = tmp_path_factory.mktemp("ts")
    env, affwild2, expw = write_trees(root / "data")
    batches: list[dict[str, Any]] = []

    def spy(output: AffectFPNOutput, batch: dict[str, Any], **kwargs: Any) -> Any:
        tasks = tuple(t for t in TASKS if getattr(output, t) is not None)
        record = {k: v.detach().clone() if torch.is_tensor(v) else v for k, v in batch.items()}
        batches.append({"tasks": tasks, **record})
        return multitask_loss(output, batch, **kwargs)

    result = Run(env, root / "run", affwild2, expw, {}, batches)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(trainer_module, "multitask_loss", spy)
        result.summary = run_recipe(result.recipe())
    return result


def clone(run: Run, dst: Path) -> Path:
    """Copy the run's output folder (weights hard-linked: the pipeline only ever replaces them)."""

    def copy(src: str, dest: str) -> None:
        if src.endswith((".pt", ".safetensors")):
            os.link(src, dest)
        else:
            shutil.copy2(src, dest)

    shutil.copytree(run.output_dir, dst, copy_function=copy)
    return dst


def labels_by_key(dataset: Any) -> dict[str, dict[str, Any]]:
    arrays = dataset.label_arrays()
    out = {}
    for i, key in enumerate(dataset.keys):
        row = {
            "va": arrays.va[i].tolist(),
            "va_mask": bool(arrays.va_mask[i]),
            "expression": int(arrays.expression[i]),
            "expression_mask": bool(arrays.expression_mask[i]),
            "au": arrays.au[i].tolist(),
            "au_mask": arrays.au_mask[i].tolist(),
        }
        if arrays.expression_soft is not None:
            row["expression_soft"] = arrays.expression_soft[i].tolist()
        out[key] = row
    return out


def mtimes(folder: Path) -> dict[str, int]:
    return {
        str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()
    }


# --------------------------------------------------------------------------------- end to end
def test_pipeline_runs_end_to_end_from_the_shipped_recipe(run: Run) -> None:
    out = run.output_dir
    assert run.summary["stages"] == ["teachers", "pseudo", "student", "evaluate"]
    # Bounded work (not seconds, which a loaded machine makes flaky): each training stage ran
    # its one epoch, at most once over each sample, and nothing else computed a training loss.
    ts_work = TeacherStudent(run.recipe())
    stages = {(task,): ts_work.teacher_data(task)[0] for task in TASKS}
    stages[TASKS] = ts_work.student_data()[0]
    for tasks, train in stages.items():
        batches = run.stage_batches(tasks)
        keys = [k for b in batches for k in b["key"]]
        assert keys, f"stage {tasks} trained on nothing"
        assert len(keys) == len(set(keys)), f"stage {tasks} saw a sample twice in one epoch"
        assert len(batches) <= math.ceil(len(train) / 8), tasks  # batch_size 8 (TINY)
    assert sum(len(run.stage_batches(t)) for t in stages) == len(run.batches)
    for task in TASKS:
        folder = out / "teachers" / task
        assert json.loads((folder / "done.json").read_text())["epochs"] == 1
        assert torch.load(folder / "last.pt", weights_only=True)["epoch"] == 1
        teacher = AffectFPN.from_pretrained(folder / "best")
        assert teacher.config.tasks == (task,), "a teacher is a single-task model"
        assert len((folder / "metrics.jsonl").read_text().splitlines()) == 1
        table = LabelTable.load(out / "pseudo" / f"{task}.csv")
        assert table.counts()[task] == len(table) == 21, "every training frame is labelled"
    ts = TeacherStudent(run.recipe())
    target = ts.target_data()
    assert set(LabelTable.load(out / "pseudo" / "au.csv")) == set(target.keys)  # type: ignore[attr-defined]
    assert (out / "student" / "best" / "model.safetensors").is_file()
    # the exported folder: Hub-ready, loads strictly, and its card holds the measured metrics
    for name in ("config.json", "model.safetensors", "README.md"):
        assert (out / "export" / name).is_file()
    model = AffectFPN.from_pretrained(out / "export")
    assert model.config.tasks == TASKS
    evaluation = json.loads((out / "evaluation.json").read_text())
    card = (out / "export" / "README.md").read_text()
    for key in ("va/score", "expression/score", "au/score", "overall/score"):
        assert f"| affwild2 validation | {key} | {evaluation['scores'][key]:.4f} |" in card
    # the figures are the exported model's on the validation split, measured again here
    val = AffWild2MultiTask(run.env["ABAW2_ROOT"], "validation")
    meter = MultiTaskMeter(au_from_logits=True)
    transform = eval_transform(model.config)
    with torch.inference_mode():
        for i in range(len(val)):
            sample = val[i]
            image = transform(val.load_image(i)).unsqueeze(0)
            out_i = model(normalize(image, model.config))
            meter.update(
                out_i, {k: v.unsqueeze(0) for k, v in sample.items() if k != "key" and k != "image"}
            )
    for task, values in meter.compute().items():
        assert evaluation["metrics"][task]["score"] == pytest.approx(values["score"], abs=1e-6)
    assert evaluation["samples"] == len(val) == 7


# --------------------------------------------------------------------------------- reference flaws
def test_flaw_a_student_train_and_validation_never_overlap(run: Run, tmp_path: Path) -> None:
    ts = TeacherStudent(run.recipe())
    train, val = ts.student_data()
    train_keys, val_keys = set(train.keys), set(val.keys)  # type: ignore[attr-defined]
    assert train_keys
    assert val_keys
    assert not train_keys & val_keys
    assert not {k.split("/")[0] for k in train_keys} & {k.split("/")[0] for k in val_keys}
    trained_on = {k for b in run.stage_batches(TASKS) for k in b["key"]}
    assert trained_on
    assert trained_on <= train_keys
    # a recipe whose student data overlap is refused before anything trains
    bad = run.recipe(
        "student.data.val={ type = 'affwild2-multitask', root = '${ABAW2_ROOT}', split = 'train' }",
        output_dir=clone(run, tmp_path / "clone"),
    )
    with pytest.raises(DatasetError, match="overlaps the validation data"):
        TeacherStudent(bad).run(["student"])
    assert not list((tmp_path / "clone").glob("student.stale*")), "nothing was moved or trained"


def test_flaw_b_invalid_va_frames_never_become_targets(run: Run) -> None:
    ts = TeacherStudent(run.recipe())
    invalid = {
        f"{v}/{f:05d}"
        for v in run.affwild2.videos("va", "train")
        for f in run.affwild2.invalid_rows["va"]
    }
    assert invalid
    # the VA teacher's data leaves them out (and holds only valid VA)
    teacher_train, _ = ts.teacher_data("va")
    keys = teacher_train.keys  # type: ignore[attr-defined]
    assert not {k.split(":", 1)[1] for k in keys if k.startswith("0-affwild2:")} & invalid
    assert np.abs(teacher_train.label_arrays().va).max() <= 1  # type: ignore[attr-defined]
    for b in run.stage_batches(("va",)):
        assert b["va_mask"].all()
        assert (b["va"].abs() <= 1).all()
    # in the student's data they carry the VA teacher's (clipped) label, never the -5 marker
    train, _ = ts.student_data()
    labels = labels_by_key(train)
    table = LabelTable.load(ts.table_path("va"))
    for key in invalid:
        assert labels[key]["va_mask"]
        assert labels[key]["va"] == pytest.approx(table[key]["va"].tolist())
        assert max(abs(v) for v in labels[key]["va"]) <= 0.99 + 1e-6
    for b in run.stage_batches(TASKS):
        assert (b["va"][b["va_mask"]].abs() <= 1).all()
        assert not (b["va"] == -5).any()


def test_flaw_c_pseudo_tables_are_joined_by_key(run: Run, tmp_path: Path) -> None:
    before = labels_by_key(TeacherStudent(run.recipe()).student_data()[0])
    out = clone(run, tmp_path / "clone")
    for seed, task in enumerate(TASKS):  # shuffle the rows of every table file
        path = out / "pseudo" / f"{task}.csv"
        with open(path, newline="") as f:
            header, *rows = list(csv.reader(f))
        shuffled = rows[::-1]
        random.Random(seed).shuffle(shuffled)
        assert [r[0] for r in shuffled] != [r[0] for r in rows]
        if task == "va":
            # the teacher's values differ between frames: a join by position would move them
            assert any(a[1:] != b[1:] for a, b in zip(rows, shuffled, strict=True))
        path.unlink()
        with open(path, "w", newline="") as f:
            csv.writer(f).writerows([header, *shuffled])
    after = labels_by_key(TeacherStudent(run.recipe(output_dir=out)).student_data()[0])
    assert after == before


def test_flaw_d_faces_of_one_expw_image_stay_distinct_samples(run: Run) -> None:
    ts = TeacherStudent(run.recipe())
    train, _ = ts.teacher_data("expression")
    keys = train.keys  # type: ignore[attr-defined]
    expw = [i for i, k in enumerate(keys) if k.startswith("1-expw:")]
    assert len(expw) == len(run.expw.faces) == 6
    last_image = run.expw.faces[-1].image
    faces = [i for i in expw if keys[i].startswith(f"1-expw:{last_image}#")]
    assert sorted(keys[i] for i in faces) == [f"1-expw:{last_image}#{j}" for j in range(3)]
    images = [train[i]["image"] for i in faces]
    for a in range(3):
        for b in range(a + 1, 3):
            assert not torch.equal(images[a], images[b]), "each face is its own crop"
    written = {(f.image, f.face_id): f.label for f in run.expw.faces}
    expw_to_ours = [1, 2, 3, 4, 5, 6, 0]  # angry, disgust, fear, happy, sad, surprise, neutral
    for i in faces:
        face_id = int(keys[i].rsplit("#", 1)[1])
        assert train[i]["expression"].item() == expw_to_ours[written[(last_image, face_id)]]


def test_flaw_e_validation_frames_get_no_teacher_label(run: Run, tmp_path: Path) -> None:
    ts = TeacherStudent(run.recipe())
    raw_val = AffWild2MultiTask(run.env["ABAW2_ROOT"], "validation")
    val_videos = {k.split("/")[0] for k in raw_val.keys}
    for task in TASKS:
        table = LabelTable.load(ts.table_path(task))
        assert not {k.split("/")[0] for k in table} & val_videos
    # the student's validation data holds the annotations' labels, untouched
    _, val = ts.student_data()
    assert labels_by_key(val) == labels_by_key(raw_val)
    assert not labels_by_key(val)["video10_1/00002"]["va_mask"], "an invalid frame stays unlabelled"
    # a table that does hold a validation frame is refused
    out = clone(run, tmp_path / "clone")
    path = out / "pseudo" / "va.csv"
    with open(path, "a", newline="") as f:
        csv.writer(f).writerow(["video10_1/00001", "0.5", "0.5"] + [""] * 13)
    assert "video10_1/00001" in LabelTable.load(path)
    with pytest.raises(DatasetError, match="not training samples"):
        TeacherStudent(run.recipe(output_dir=out)).student_data()
    # and a target that is the validation split is never labelled
    bad = run.recipe(
        "student.data.train={ type = 'affwild2-multitask', root = '${ABAW2_ROOT}', "
        "split = 'validation' }",
        output_dir=out,
    )
    before = mtimes(out / "pseudo")
    with pytest.raises(DatasetError, match="overlaps the validation data"):
        TeacherStudent(bad).run(["pseudo"])
    assert mtimes(out / "pseudo") == before


# --------------------------------------------------------------------------------- behaviour
def test_real_label_wins_over_the_teacher(run: Run) -> None:
    ts = TeacherStudent(run.recipe())
    train, _ = ts.student_data()
    unified = labels_by_key(train)
    real = labels_by_key(ts.target_data())
    tables = {task: LabelTable.load(ts.table_path(task)) for task in TASKS}
    disagreements = 0
    filled = 0
    for key, labels in unified.items():
        assert labels["va_mask"]
        assert labels["expression_mask"]
        assert all(labels["au_mask"])
        if real[key]["va_mask"]:
            assert labels["va"] == real[key]["va"]
            disagreements += labels["va"] != pytest.approx(tables["va"][key]["va"].tolist())
        else:
            filled += 1
            assert labels["va"] == pytest.approx(tables["va"][key]["va"].tolist())
        if real[key]["expression_mask"]:
            assert labels["expression"] == real[key]["expression"]
            disagreements += labels["expression"] != int(tables["expression"][key]["expression"])
        else:
            filled += 1
            assert labels["expression"] == int(tables["expression"][key]["expression"])
        for j in range(12):
            source = real[key] if real[key]["au_mask"][j] else None
            want = source["au"][j] if source else float(tables["au"][key]["au"][j])
            filled += source is None
            assert labels["au"][j] == want
    assert disagreements > 0, (
        "teachers and real labels must differ somewhere for this to mean anything"
    )
    assert filled > 0


def test_pseudo_labels_follow_the_configured_rules(run: Run, tmp_path: Path) -> None:
    ts = TeacherStudent(run.recipe())
    target = ts.target_data()
    teachers = {t: AffectFPN.from_pretrained(ts.teacher_dir(t) / "best") for t in TASKS}
    keys = target.keys  # type: ignore[attr-defined]
    images = torch.stack([target[i]["image"] for i in range(len(keys))])
    with torch.inference_mode():
        raw = {t: getattr(m(normalize(images, m.config)), t) for t, m in teachers.items()}
    tables = {task: LabelTable.load(ts.table_path(task)) for task in TASKS}
    for i, key in enumerate(keys):
        va = tables["va"][key]["va"]
        torch.testing.assert_close(va, raw["va"][i].clamp(-0.99, 0.99), atol=1e-6, rtol=0)
        assert tables["expression"][key]["expression"].item() == int(raw["expression"][i].argmax())
        want = (torch.sigmoid(raw["au"][i]) > 0.5).float()
        assert torch.equal(tables["au"][key]["au"], want), "hard AU: probability > 0.5"
    # soft labels, on request: probabilities for expressions and action units
    out = clone(run, tmp_path / "clone")
    soft = TeacherStudent(
        run.recipe("pseudo.expression='soft'", "pseudo.au='soft'", output_dir=out)
    )
    summary = soft.run(["pseudo"])
    assert "reused" not in summary["pseudo"], "other settings make other labels"
    expression = LabelTable.load(soft.table_path("expression"))
    au = LabelTable.load(soft.table_path("au"))
    assert expression.has_soft_expression
    for i, key in enumerate(keys):
        probs = expression[key]["expression_soft"]
        torch.testing.assert_close(probs, torch.softmax(raw["expression"][i], 0), atol=1e-6, rtol=0)
        torch.testing.assert_close(au[key]["au"], torch.sigmoid(raw["au"][i]), atol=1e-6, rtol=0)
    train, _ = soft.student_data()
    sample = train[0]
    assert sample["expression_soft"].sum().item() == pytest.approx(1.0)


def test_stages_run_alone_and_reuse_finished_outputs(
    run: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = clone(run, tmp_path / "clone")
    before = mtimes(out)
    built = []
    real_init = trainer_module.Trainer.__init__

    def counting_init(self: Any, *args: Any, **kwargs: Any) -> None:
        built.append(kwargs.get("output_dir"))
        real_init(self, *args, **kwargs)

    monkeypatch.setattr(trainer_module.Trainer, "__init__", counting_init)
    summary = run_teacher_student(run.recipe(output_dir=out), stages=["teachers"])
    assert all(summary["teachers"][t]["reused"] for t in TASKS)
    summary = run_teacher_student(run.recipe(output_dir=out), stages=["pseudo", "student"])
    assert summary["pseudo"]["reused"]
    assert summary["student"]["reused"]
    assert built == [], "nothing was trained again"
    after = mtimes(out)
    changed = {k for k in before if after.get(k) != before[k]}
    assert changed <= {"recipe.json"}, changed
    # one more epoch for the AU teacher: only it trains (resuming), then the labels and the
    # student that depend on it are made again
    more = run.recipe("teachers.au.train.epochs=2", output_dir=out)
    summary = run_teacher_student(more, stages=["teachers", "pseudo", "student"])
    assert [Path(str(p)).name for p in built] == ["au", "student"]
    assert summary["teachers"]["va"]["reused"]
    assert summary["teachers"]["expression"]["reused"]
    assert torch.load(out / "teachers" / "au" / "last.pt", weights_only=True)["epoch"] == 2
    assert len((out / "teachers" / "au" / "metrics.jsonl").read_text().splitlines()) == 2
    after = mtimes(out)
    assert after["teachers/va/last.pt"] == before["teachers/va/last.pt"]
    assert after["pseudo/au.csv"] != before["pseudo/au.csv"]
    assert "reused" not in summary["student"]
    assert list(out.glob("student.stale-*")), "the student of the old labels was kept aside"


def test_a_stage_alone_needs_the_stages_before_it(run: Run, tmp_path: Path) -> None:
    recipe = run.recipe(output_dir=tmp_path / "fresh")
    with pytest.raises(ConfigError, match="run the 'teachers' stage first"):
        run_teacher_student(recipe, stages=["pseudo"])
    with pytest.raises(ConfigError, match="run the 'pseudo' stage first"):
        run_teacher_student(recipe, stages=["student"])
    with pytest.raises(ConfigError, match="run the 'student' stage first"):
        run_teacher_student(recipe, stages=["evaluate"])
    with pytest.raises(ConfigError, match="must be names from"):
        run_teacher_student(recipe, stages=["teacher"])
