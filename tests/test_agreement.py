"""Tests of affectfpn.recipes.agreement (a student's AU outputs against its teacher's table)
and of ``affectfpn teachers agreement``."""

import dataclasses
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
import torch
from _fake_data import write_image_folder
from PIL import Image

from affectfpn.cli import main as cli_main
from affectfpn.errors import ConfigError, DatasetError
from affectfpn.labels import ACTION_UNITS, EXPRESSIONS
from affectfpn.recipes import agreement
from affectfpn.recipes.datasets import LabelTable
from affectfpn.recipes.teachers.calibration import roc_auc

if TYPE_CHECKING:
    from affectfpn import AffectFPN

AU = {name: j for j, name in enumerate(ACTION_UNITS)}
EX = {name: j for j, name in enumerate(EXPRESSIONS)}


# ----------------------------------------------------------------------------- student vs teacher
#: The student's units in an order unlike ACTION_UNITS (AU12 is column 0 of the model but
#: column 6 of a table), plus AU4, which the teacher never labels.
STUDENT_UNITS = ("AU12", "AU1", "AU4", "AU26", "AU2")
#: Expression classes in another order than EXPRESSIONS.
STUDENT_EXPRESSIONS = tuple(reversed(EXPRESSIONS))
#: Unequal classes: a constant prediction read as the wrong class scores differently.
FOLDER = {"happy": 5, "neutral": 3, "surprise": 2}
#: key -> (AU logits in the model's order, predicted class, true class), EXPRESSIONS indices.
ByHand = dict[str, tuple[np.ndarray, int, int]]
Student = tuple["AffectFPN", Path, ByHand]


def _student_by_hand(model: "AffectFPN", root: Path) -> ByHand:
    """key -> (AU logits in the model's order, predicted class, true class), one image at a
    time through the model's eval transform, in eval mode (so with test-time flip)."""
    from affectfpn.preprocess import eval_transform, normalize

    transform = eval_transform(model.config)
    out: ByHand = {}
    model.eval()
    with torch.no_grad():
        for folder in sorted(p for p in root.iterdir() if p.is_dir()):
            true = EX[
                {"happy": "Happiness", "neutral": "Neutral", "surprise": "Surprise"}[folder.name]
            ]
            for path in sorted(folder.iterdir()):
                image = transform(Image.open(path).convert("RGB"))[None]
                o = model(normalize(image, model.config))
                assert o.au is not None
                assert o.expression is not None
                pred = EXPRESSIONS.index(STUDENT_EXPRESSIONS[int(o.expression[0].argmax())])
                out[f"{folder.name}/{path.name}"] = (o.au[0].numpy().astype(np.float64), pred, true)
    return out


@pytest.fixture
def student(tmp_path: Path) -> Student:
    """A tiny test-time-flip student on a generated folder, its AU head set so that every unit
    is active on about half the faces and no logit is near 0; with its outputs by hand."""
    from affectfpn import AffectFPN
    from affectfpn.config import AffectFPNConfig

    root = tmp_path / "test"
    write_image_folder(root, FOLDER, image_size=20)
    config = AffectFPNConfig(
        backbone="resnet18",
        fpn_width=8,
        input_size=(32, 32),
        tasks=("expression", "au"),
        expressions=STUDENT_EXPRESSIONS,
        action_units=STUDENT_UNITS,
        test_time_flip=True,
    )
    model = AffectFPN(config)
    head = model.heads["au"]
    with torch.no_grad():
        logits = np.stack([v[0] for v in _student_by_hand(model, root).values()])
        # 0 between the 5th and 6th of 10 faces (half active), then far from the threshold
        head.bias.sub_(torch.as_tensor(np.median(logits, axis=0), dtype=torch.float32))
        head.weight.mul_(1e4)
        head.bias.mul_(1e4)
    by_hand = _student_by_hand(model, root)
    logits = np.stack([v[0] for v in by_hand.values()])
    assert np.abs(logits).min() > 0.1
    assert ((logits > 0).sum(axis=0) == 5).all()
    model.train()
    return model, root, by_hand


def _teacher_table(keys: list[str], probs: dict[str, dict[str, float | None]]) -> LabelTable:
    """A table of the given keys (in that order) with AU probabilities; None: masked."""
    au = np.zeros((len(keys), len(ACTION_UNITS)), np.float32)
    mask = np.zeros_like(au, bool)
    for i, k in enumerate(keys):
        for unit, p in probs.get(k, {}).items():
            if p is not None:
                au[i, AU[unit]], mask[i, AU[unit]] = p, True
    return LabelTable.from_arrays(keys, au=au, au_mask=mask)


def test_student_agreement_matches_a_computation_by_hand(student: Student, tmp_path: Path) -> None:
    """Per-unit AUC / agreement / rates, activity per expression and expression accuracy, with
    a table in another key order, a key missing, masked cells and a teacher p of exactly 0.5."""
    model, root, by_hand = student
    keys = list(by_hand)
    rng = np.random.default_rng(3)
    teacher_units = ("AU1", "AU2", "AU12", "AU26")
    probs: dict[str, dict[str, float | None]] = {
        k: {u: float(rng.uniform()) for u in teacher_units} for k in keys
    }
    probs[keys[0]]["AU12"] = 0.5  # active: p >= 0.5
    probs[keys[1]] = dict.fromkeys(teacher_units)  # the teacher found no face
    probs[keys[2]]["AU26"] = None  # one masked unit
    table_keys = [k for k in reversed(keys) if k != keys[3]]  # another order, one key missing
    table = _teacher_table(table_keys, probs)

    result = agreement.student_agreement(model, root, table, batch_size=3)

    assert model.training  # the mode is restored
    assert result["num_faces"] == 10
    assert result["in_table"] == 9
    assert result["excluded"] == 0
    assert result["test_time_flip"] is True
    assert result["units"] == list(STUDENT_UNITS)
    assert set(result["au"]) == set(teacher_units)  # AU4: predicted, never labelled
    assert set(result["student_active"]) == set(STUDENT_UNITS)
    for unit in teacher_units:
        j = STUDENT_UNITS.index(unit)
        labelled = [k for k in keys if k != keys[3] and probs[k][unit] is not None]
        logit = np.array([by_hand[k][0][j] for k in labelled])
        s = 1 / (1 + np.exp(-logit))
        t = np.array([probs[k][unit] for k in labelled], np.float64) >= 0.5
        r = result["au"][unit]
        assert r["n"] == len(labelled)
        assert r["teacher_positive"] == int(t.sum())
        assert r["teacher_positive_rate"] == pytest.approx(t.mean())
        assert r["student_positive_rate"] == pytest.approx((s >= 0.5).mean())
        assert r["agreement"] == pytest.approx(((s >= 0.5) == t).mean())
        # ranked by logit: the probabilities of far-apart logits tie at 0 or 1
        assert r["auc"] == pytest.approx(roc_auc(logit, t))
        assert len(np.unique(logit)) == len(logit)
    assert result["au"]["AU12"]["teacher_positive"] >= 1
    for unit in STUDENT_UNITS:
        j = STUDENT_UNITS.index(unit)
        for folder, name in (("happy", "Happiness"), ("neutral", "Neutral")):
            faces = [k for k in keys if k.startswith(f"{folder}/")]
            active = np.mean([by_hand[k][0][j] > 0 for k in faces])
            assert result["student_active"][unit][name] == pytest.approx(active)
        assert math.isnan(result["student_active"][unit]["Anger"])  # no angry faces
    assert result["expression_counts"]["Happiness"] == 5
    expected = np.mean([pred == true for _, pred, true in by_hand.values()])
    assert result["expression"]["accuracy"] == pytest.approx(expected)
    assert result["expression"]["n"] == 10


def test_student_agreement_is_perfect_against_itself_and_nil_against_its_opposite(
    student: Student,
) -> None:
    """A teacher that says what the student says, unit by unit and key by key: agreement and
    AUC 1; the opposite teacher: 0. A join by position or a unit read from the wrong column
    breaks both."""
    model, root, by_hand = student
    keys = list(by_hand)
    shuffled = [keys[i] for i in np.random.default_rng(0).permutation(len(keys))]
    units = ("AU1", "AU2", "AU12", "AU26")
    same = {
        k: {u: 0.9 if by_hand[k][0][STUDENT_UNITS.index(u)] > 0 else 0.1 for u in units}
        for k in keys
    }
    opposite = {k: {u: 1.0 - p for u, p in v.items()} for k, v in same.items()}
    right = agreement.student_agreement(model, root, _teacher_table(shuffled, same), batch_size=4)
    wrong = agreement.student_agreement(
        model, root, _teacher_table(shuffled, opposite), batch_size=4
    )
    for unit in units:
        assert right["au"][unit]["agreement"] == 1.0
        assert right["au"][unit]["auc"] == 1.0
        assert right["au"][unit]["teacher_positive_rate"] == 0.5
        assert wrong["au"][unit]["agreement"] == 0.0
        assert wrong["au"][unit]["auc"] == 0.0


def test_student_agreement_uses_the_models_test_time_flip(student: Student) -> None:
    """The probabilities are those of the model in eval mode with its own flip: the same
    student without the flip gives other numbers."""
    from affectfpn import AffectFPN

    model, root, by_hand = student
    keys = list(by_hand)
    probs = {k: {"AU12": 0.9 if by_hand[k][0][0] > 0 else 0.1} for k in keys}
    table = _teacher_table(keys, probs)
    assert agreement.student_agreement(model, root, table)["au"]["AU12"]["agreement"] == 1.0
    plain = AffectFPN(dataclasses.replace(model.config, test_time_flip=False))
    plain.load_state_dict(model.state_dict())
    result = agreement.student_agreement(plain, root, table)
    assert result["test_time_flip"] is False
    assert result["au"]["AU12"]["agreement"] < 1.0


def test_student_agreement_exclude(student: Student, tmp_path: Path) -> None:
    """FER2013's overlap list form: paths relative to the folder's parent."""
    model, root, by_hand = student
    table = _teacher_table(list(by_hand), {k: {"AU12": 0.9} for k in by_hand})
    listing = tmp_path / "overlap.txt"
    listing.write_text("test/happy/img_000.jpg\ntest/neutral/img_001.jpg\nval/happy/x.jpg\n")
    result = agreement.student_agreement(model, root, table, exclude=listing)
    assert result["num_faces"] == 8
    assert result["excluded"] == 2
    assert result["expression_counts"]["Happiness"] == 4
    assert result["expression_counts"]["Neutral"] == 2
    assert result["au"]["AU12"]["n"] == 8
    as_list = agreement.student_agreement(model, root, table, exclude=["happy/img_000.jpg"])
    assert as_list["num_faces"] == 9


def test_student_agreement_errors(student: Student, tmp_path: Path) -> None:
    from affectfpn import AffectFPN
    from affectfpn.config import AffectFPNConfig

    model, root, by_hand = student
    table = _teacher_table(list(by_hand), {k: {"AU12": 0.9} for k in by_hand})
    prefixed = _teacher_table([f"0-imagefolder:{k}" for k in by_hand], {})
    with pytest.raises(DatasetError, match="prefix"):
        agreement.student_agreement(model, root, prefixed)
    no_au = AffectFPN(
        AffectFPNConfig(
            backbone="resnet18", fpn_width=8, input_size=(32, 32), tasks=("expression",)
        )
    )
    with pytest.raises(ConfigError, match="no AU head"):
        agreement.student_agreement(no_au, root, table)
    with pytest.raises(ConfigError, match="batch_size"):
        agreement.student_agreement(model, root, table, batch_size=0)


def test_agreement_command(
    student: Student, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``affectfpn teachers agreement`` loads a saved model and writes the function's result."""
    model, root, by_hand = student
    folder = model.save_pretrained(tmp_path / "model")
    keys = list(by_hand)
    probs = {k: {u: 0.9 if i % 2 else 0.2 for u in ("AU1", "AU12")} for i, k in enumerate(keys)}
    table_path = tmp_path / "teacher.csv"
    _teacher_table(keys, probs).save(table_path)
    listing = tmp_path / "overlap.txt"
    listing.write_text("test/surprise/img_001.jpg\n")
    out = tmp_path / "agreement.json"
    argv = ["teachers", "agreement", "--model", str(folder), "--root", str(root),
            "--table", str(table_path)]  # fmt: skip
    assert cli_main([*argv, "--exclude", str(listing), "--json", str(out), "-q"]) == 0
    printed = capsys.readouterr().out
    assert "| AU12 |" in printed
    assert "9 faces (1 excluded)" in printed
    written = json.loads(out.read_text())
    direct = agreement.student_agreement(model, root, table_path, exclude=listing)
    assert written["num_faces"] == 9
    assert written["model"] == str(folder)
    assert set(written["au"]) == {"AU1", "AU12"}
    for unit in ("AU1", "AU12"):
        for name in ("n", "auc", "agreement", "teacher_positive_rate", "student_positive_rate"):
            assert written["au"][unit][name] == pytest.approx(direct["au"][unit][name])
    assert written["student_active"]["AU4"]["Anger"] is None  # NaN: no angry face
    assert written["expression"]["accuracy"] == pytest.approx(direct["expression"]["accuracy"])


def test_student_agreement_runs_on_the_evaluation_path(
    student: Student, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``device="auto"`` works (the package's device choice), and the model runs through
    :func:`affectfpn.evaluation.model_outputs` with the caller's device, AMP and batch size."""
    from affectfpn import evaluation

    model, root, by_hand = student
    probs = {k: {"AU12": 0.9 if by_hand[k][0][0] > 0 else 0.1} for k in by_hand}
    table = _teacher_table(list(by_hand), probs)
    seen: list[dict[str, object]] = []
    real = evaluation.model_outputs

    def spy(*args: object, **kwargs: object) -> object:
        seen.append(kwargs)
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(evaluation, "model_outputs", spy)
    auto = agreement.student_agreement(model, root, table, device="auto", batch_size=3)
    cpu = agreement.student_agreement(model, root, table, device="cpu", amp="off")
    assert auto["au"] == cpu["au"]
    assert auto["au"]["AU12"]["agreement"] == 1.0
    used = [(k["device"], k["amp"], k["batch_size"]) for k in seen]
    assert used == [("auto", "auto", 3), ("cpu", "off", 256)]
    assert model.training
    with pytest.raises(ConfigError, match="amp 'half'"):
        agreement.student_agreement(model, root, table, amp="half")
    with pytest.raises(ConfigError, match="device 'tpu'"):
        agreement.student_agreement(model, root, table, device="tpu")
    with pytest.raises(DatasetError, match="no image"):
        agreement.student_agreement(model, root, table, exclude=list(by_hand))


def test_agreement_command_fails_in_one_line(
    student: Student, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model, root, by_hand = student
    folder = model.save_pretrained(tmp_path / "model")
    table = tmp_path / "teacher.csv"
    _teacher_table(list(by_hand), {k: {"AU12": 0.9} for k in by_hand}).save(table)
    base = ["teachers", "agreement", "--model", str(folder), "--root", str(root)]
    cases = [
        ([*base, "--table", str(tmp_path / "none.csv")], 1, "none.csv"),
        ([*base, "--table", str(table), "--device", "tpu"], 1, "tpu"),
        ([*base, "--table", str(table), "--amp", "half"], 1, "half"),
        ([*base, "--table", str(table), "--threshold", "1.5"], 2, "--threshold"),
        (base, 2, "--table"),
    ]
    for argv, code, message in cases:
        assert cli_main(argv) == code, argv
        err = capsys.readouterr().err
        assert err.startswith("affectfpn: error:"), err
        assert message in err, err
        assert "Traceback" not in err
        assert len(err.strip().splitlines()) == 1, err
