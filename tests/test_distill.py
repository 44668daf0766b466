"""Knowledge distillation: the teachers' soft-label table and the student's blended targets."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from _fake_data import write_image_folder

from affectfpn import AffectFPN, AffectFPNConfig
from affectfpn.cli import main as cli_main
from affectfpn.errors import ConfigError, DatasetError
from affectfpn.evaluation import build_eval_dataset, model_outputs
from affectfpn.labels import ACTION_UNITS, EXPRESSIONS
from affectfpn.recipes import distill
from affectfpn.recipes.datasets import ImageFolderExpressions, LabelTable, WithPseudoLabels
from affectfpn.recipes.losses import multitask_loss
from affectfpn.recipes.stage import build_dataset

CLASSES = {"angry": 2, "happy": 3, "neutral": 2}


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "faces"
    write_image_folder(root, CLASSES, image_size=20)
    return root


def _model(seed: int, *, tasks: tuple[str, ...] = ("expression",)) -> AffectFPN:
    torch.manual_seed(seed)
    config = AffectFPNConfig(
        backbone="resnet18_half", neck="none", tasks=tasks, input_size=(24, 24)
    )
    return AffectFPN(config).eval()


def _probs(model: AffectFPN, root: Path) -> dict[str, np.ndarray]:
    out = {}
    for batch, o in model_outputs(model, build_eval_dataset(root, model.config), batch_size=3):
        assert o.expression is not None
        p = torch.softmax(o.expression.float(), 1).numpy()
        out.update({str(k): p[i] for i, k in enumerate(batch["key"])})
    return out


def test_table_is_the_mean_of_the_teachers_probabilities(folder: Path) -> None:
    a, b = _model(1), _model(2)
    table = distill.soft_expression_table([a, b], folder, progress=False)
    pa, pb = _probs(a, folder), _probs(b, folder)
    assert sorted(table.key_list) == sorted(pa)
    assert len(table) == sum(CLASSES.values())
    assert table.has_soft_expression
    for key in table.key_list:
        soft = table[key]["expression_soft"].numpy()
        np.testing.assert_allclose(soft, (pa[key] + pb[key]) / 2, atol=1e-5)
        assert int(table[key]["expression"]) == int(soft.argmax())
    # The models are back in eval mode on their device, and the table differs from one teacher's.
    assert not a.training
    assert not all(np.allclose(pa[k], pb[k], atol=1e-3) for k in pa)


def test_temperature_softens(folder: Path) -> None:
    model = _model(3)
    with torch.no_grad():  # make the teacher confident, so that softening shows
        model.heads["expression"].weight.mul_(50)
    sharp = distill.soft_expression_table([model], folder, progress=False)
    soft = distill.soft_expression_table([model], folder, temperature=4.0, progress=False)
    max_sharp = sharp.labels.expression_soft.max(axis=1)  # type: ignore[union-attr]
    max_soft = soft.labels.expression_soft.max(axis=1)  # type: ignore[union-attr]
    assert (max_soft < max_sharp).all()


def test_bad_teachers_are_refused(folder: Path) -> None:
    with pytest.raises(ConfigError, match="at least one teacher"):
        distill.soft_expression_table([], folder)
    with pytest.raises(ConfigError, match="no expression head"):
        distill.soft_expression_table([_model(0, tasks=("va",))], folder)
    with pytest.raises(ConfigError, match="temperature"):
        distill.soft_expression_table([_model(0)], folder, temperature=0.0)


def test_blended_targets_and_their_loss(folder: Path, tmp_path: Path) -> None:
    data = ImageFolderExpressions(folder, image_size=(24, 24))
    table = distill.soft_expression_table([_model(4)], folder, progress=False)
    w = 0.7
    student = WithPseudoLabels(data, table, distill_weight=w)
    assert student.distilled == len(data)
    for i in range(len(data)):
        sample, real = student[i], data[i]
        onehot = np.eye(len(EXPRESSIONS), dtype=np.float32)[int(real["expression"])]
        want = (1 - w) * onehot + w * table[str(real["key"])]["expression_soft"].numpy()
        np.testing.assert_allclose(sample["expression_soft"].numpy(), want, atol=1e-6)
        assert int(sample["expression"]) == int(real["expression"])  # the real label is kept
    # Cross-entropy against the blend = (1 - w) x hard loss + w x distillation loss.
    batch = torch.utils.data.default_collate([student[i] for i in range(len(student))])
    logits = torch.randn(len(student), len(EXPRESSIONS))
    output = type(_model(0)(torch.zeros(1, 3, 24, 24)))(va=None, expression=logits, au=None)
    total, _ = multitask_loss(output, batch)
    log_p = torch.log_softmax(logits, 1)
    hard = -log_p[torch.arange(len(student)), batch["expression"]].mean()
    teacher = torch.stack([table[str(k)]["expression_soft"] for k in batch["key"]])
    kd = -(teacher * log_p).sum(1).mean()
    torch.testing.assert_close(total, (1 - w) * hard + w * kd)


def test_distill_weight_is_checked(folder: Path, tmp_path: Path) -> None:
    data = ImageFolderExpressions(folder, image_size=(24, 24))
    soft = distill.soft_expression_table([_model(5)], folder, progress=False)
    hard = LabelTable.from_arrays(data.keys, expression=np.zeros(len(data), dtype=np.int64))
    for bad in (0, 1.5, -0.1, True, "0.5"):
        with pytest.raises(ConfigError, match=r"distill_weight must be a number in \(0, 1\]"):
            WithPseudoLabels(data, soft, distill_weight=bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="needs a table of soft expression labels"):
        WithPseudoLabels(data, hard, distill_weight=0.5)
    # Without a weight nothing is blended: real labels stay one-hot.
    plain = WithPseudoLabels(data, soft)
    assert plain.distilled == 0
    assert plain[0]["expression_soft"].max() == 1.0

    # In a recipe's dataset spec.
    spec = {"type": "imagefolder", "root": str(folder), "image_size": [24, 24]}
    with pytest.raises(ConfigError, match="distill_weight needs pseudo_labels"):
        build_dataset({**spec, "distill_weight": 0.5}, transform=None, source="[data] train")
    soft.save(tmp_path / "soft.csv")
    built = build_dataset(
        {**spec, "pseudo_labels": str(tmp_path / "soft.csv"), "distill_weight": 0.5},
        transform=None,
        source="[data] train",
    )
    assert isinstance(built, WithPseudoLabels)
    assert built.distilled == len(data)
    with pytest.raises(ConfigError, match=r"\[data\] train: distill_weight must be"):
        build_dataset(
            {**spec, "pseudo_labels": str(tmp_path / "soft.csv"), "distill_weight": 2},
            transform=None,
            source="[data] train",
        )


def test_a_dataset_joins_several_pseudo_label_tables(folder: Path, tmp_path: Path) -> None:
    data = ImageFolderExpressions(folder, image_size=(24, 24))
    soft = distill.soft_expression_table([_model(5)], folder, progress=False)
    au = LabelTable.from_arrays(
        data.keys,
        au=np.full((len(data), len(ACTION_UNITS)), 0.75, dtype=np.float32),
    )
    soft.save(tmp_path / "soft.csv")
    au.save(tmp_path / "au.csv")
    spec = {"type": "imagefolder", "root": str(folder), "image_size": [24, 24]}
    both = build_dataset(
        {
            **spec,
            "pseudo_labels": [str(tmp_path / "soft.csv"), str(tmp_path / "au.csv")],
            "distill_weight": 0.5,
        },
        transform=None,
        source="[data] train",
    )
    assert isinstance(both, WithPseudoLabels)
    assert both.distilled == len(data)  # the soft expressions of the first table
    sample = both[0]
    assert bool(sample["au_mask"].all())  # and the AU labels of the second
    assert float(sample["au"][0]) == pytest.approx(0.75)
    for bad in ([], 3, [str(tmp_path / "missing.csv")]):
        with pytest.raises(ConfigError, match="pseudo_labels"):
            build_dataset({**spec, "pseudo_labels": bad}, transform=None, source="[data] train")


def test_command_line(folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    teacher = tmp_path / "teacher"
    _model(6).save_pretrained(teacher)
    out = tmp_path / "distill" / "table.csv"
    code = cli_main(
        ["distill", "--teacher", str(teacher), "--teacher", str(teacher), "--data", str(folder),
         "--out", str(out), "--batch-size", "4"]
    )  # fmt: skip
    assert code == 0
    assert "wrote 7 soft labels of 2 teacher(s)" in capsys.readouterr().out
    table = LabelTable.load(out)
    direct = distill.soft_expression_table([teacher], folder, progress=False)
    assert table.key_list == direct.key_list
    assert table.labels.expression_soft is not None
    assert direct.labels.expression_soft is not None
    np.testing.assert_allclose(
        table.labels.expression_soft, direct.labels.expression_soft, atol=1e-6
    )
    assert cli_main(["distill", "--teacher", str(tmp_path / "nothing"), "--data", str(folder),
                     "--out", str(out)]) == 1  # fmt: skip
    err = capsys.readouterr().err
    assert "error:" in err
    assert "Traceback" not in err
    # the old entry point is an alias of the command (in a child process: no import circle)
    alias = subprocess.run(
        [sys.executable, "-m", "affectfpn.recipes.distill", "--teacher", str(teacher),
         "--data", str(folder), "--out", str(tmp_path / "alias.csv"), "--batch-size", "4"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert alias.returncode == 0, alias.stderr
    assert LabelTable.load(tmp_path / "alias.csv").key_list == table.key_list


def test_teachers_must_see_the_same_files(
    folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    other = tmp_path / "other"
    write_image_folder(other, {"angry": 1}, image_size=20)
    real = distill.build_eval_dataset
    seen: list[object] = []

    def second_teacher_reads_other_files(spec, config):  # type: ignore[no-untyped-def]
        seen.append(spec)
        return real(spec if len(seen) == 1 else other, config)

    monkeypatch.setattr(distill, "build_eval_dataset", second_teacher_reads_other_files)
    with pytest.raises(DatasetError, match="saw other keys"):
        distill.soft_expression_table([_model(7), _model(8)], folder, progress=False)
