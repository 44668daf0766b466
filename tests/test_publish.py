"""Publishing a trained folder: figures measured, card and registry entry written."""

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from _fake_data import write_image_folder

from affectfpn import AffectFPN, AffectFPNConfig
from affectfpn.labels import ACTION_UNITS
from affectfpn.recipes.datasets import ImageFolderExpressions, LabelTable
from affectfpn.recipes.publish import main, publish

UNITS = ("AU1", "AU12")


@pytest.fixture
def trained(tmp_path: Path) -> tuple[Path, Path, Path]:
    model = AffectFPN(
        AffectFPNConfig(
            backbone="resnet18",
            fpn_width=8,
            input_size=(32, 32),
            tasks=("expression", "au"),
            action_units=UNITS,
        )
    )
    source = model.save_pretrained(tmp_path / "best")
    folder = tmp_path / "faces"
    write_image_folder(folder, {"happy": 4, "neutral": 4}, image_size=32)
    keys = ImageFolderExpressions(folder).keys
    au = np.zeros((len(keys), len(ACTION_UNITS)), np.float32)
    mask = np.zeros_like(au, dtype=bool)
    for i, key in enumerate(keys):
        for unit in UNITS:
            au[i, ACTION_UNITS.index(unit)] = 0.9 if key.startswith("happy") else 0.1
            mask[i, ACTION_UNITS.index(unit)] = True
    table = tmp_path / "teacher.csv"
    LabelTable.from_arrays(keys, au=au, au_mask=mask).save(table)
    return source, folder, table


def test_publish_scores_the_aus_against_the_teacher(
    trained: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    source, folder, table = trained
    info = publish(
        source,
        name="tiny-mt",
        out=tmp_path / "out",
        evals=[("faces", str(folder), None)],
        au_teachers=[("faces-teacher", str(folder), str(table), None)],
        half=False,
        throughput_seconds=0.2,
    )
    figures = info["metrics"]["faces-teacher"]
    for unit in UNITS:
        assert 0.0 <= figures[f"{unit}_auc_vs_teacher"] <= 1.0
        assert 0.0 <= figures[f"{unit}_agreement_vs_teacher"] <= 1.0
    assert "AU4_auc_vs_teacher" not in figures  # only the units the model predicts
    assert info["extra"]["eval_samples"]["faces-teacher"] == 8
    written = tmp_path / "out" / "tiny-mt"
    on_disk = json.loads((written / "model_info.json").read_text())
    assert on_disk["metrics"] == info["metrics"]
    assert on_disk["action_units"] == list(UNITS)
    weights = (written / "model.safetensors").read_bytes()
    assert hashlib.sha256(weights).hexdigest() == on_disk["sha256"]
    report = json.loads((written / "evaluation.json").read_text())["faces-teacher"]
    assert 0.0 <= report["student_active"]["AU12"]["Happiness"] <= 1.0


def test_publish_command_checks_the_teacher_argument(
    trained: tuple[Path, Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source, folder, _ = trained
    with pytest.raises(SystemExit):
        main([str(source), "--name", "x", "--eval", f"f={folder}", "--au-teacher", "nolabel"])
    assert "LABEL=FOLDER::TABLE" in capsys.readouterr().err
