"""Publishing a trained folder: figures measured, card and registry entry written; the
``affectfpn publish`` command and its old spelling ``python -m affectfpn.recipes.publish``."""

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from _fake_data import write_image_folder

from affectfpn import AffectFPN, AffectFPNConfig
from affectfpn.cli import EXIT_ERROR, EXIT_OK, EXIT_USAGE
from affectfpn.cli import main as cli_main
from affectfpn.labels import ACTION_UNITS
from affectfpn.recipes import publish as publish_module
from affectfpn.recipes.datasets import ImageFolderExpressions, LabelTable
from affectfpn.recipes.publish import publish

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


def _command(folder: Path, *extra: str) -> list[str]:
    """``affectfpn publish`` arguments for the fixture's model, fast (float32, no half check)."""
    return ["--name", "tiny", "--eval", f"faces={folder}", "--full-precision", *extra]


@pytest.fixture
def quick_throughput(monkeypatch: pytest.MonkeyPatch) -> None:
    """The command measures images/s for 10 s: 0.1 s is enough here."""
    measure = publish_module.measure_throughput
    monkeypatch.setattr(
        publish_module,
        "measure_throughput",
        lambda model, **kw: measure(model, **{**kw, "seconds": 0.1}),
    )


def test_publish_command_writes_the_model_folder(
    trained: tuple[Path, Path, Path],
    tmp_path: Path,
    quick_throughput: None,
    capsys: pytest.CaptureFixture[str],
) -> None:
    source, folder, table = trained
    card = tmp_path / "card.json"
    card.write_text(json.dumps({"description": "a tiny model", "license": "mit"}))
    out = tmp_path / "out"
    teacher = f"faces-teacher={folder}::{table}"
    argv = _command(folder, "--out", str(out), "--card", str(card), "--au-teacher", teacher)
    code = cli_main(["publish", str(source), *argv])
    captured = capsys.readouterr()
    assert code == EXIT_OK, captured.err
    written = out / "tiny"
    info = json.loads((written / "model_info.json").read_text())
    assert json.loads(captured.out) == info["metrics"]
    assert 0.0 <= info["metrics"]["faces"]["accuracy"] <= 1.0
    assert 0.0 <= info["metrics"]["faces-teacher"]["AU12_auc_vs_teacher"] <= 1.0
    assert info["description"] == "a tiny model"
    assert info["extra"]["precision"] == "float32"
    assert info["default"] is False
    assert (written / "README.md").is_file()
    assert f"published tiny to {written}" in captured.err


def test_publish_command_writes_into_the_current_directory_by_default(
    trained: tuple[Path, Path, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    quick_throughput: None,
    capsys: pytest.CaptureFixture[str],
) -> None:
    source, folder, _ = trained
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    code = cli_main(["publish", str(source), *_command(folder)])
    assert code == EXIT_OK, capsys.readouterr().err
    assert (here / "tiny" / "model_info.json").is_file()
    assert sorted(p.name for p in here.iterdir()) == ["tiny"]


def test_the_old_main_runs_the_command_and_returns_its_status(tmp_path: Path) -> None:
    """``affectfpn.recipes.publish.main(argv)`` runs ``affectfpn publish argv`` in a child."""
    assert publish_module.main(["--help"]) == EXIT_OK
    missing = [str(tmp_path / "missing")]
    code = publish_module.main(missing)
    assert code != EXIT_OK
    assert code == cli_main(["publish", *missing])


def test_python_dash_m_recipes_publish_is_the_publish_command() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "affectfpn.recipes.publish", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == EXIT_OK, done.stderr
    assert done.stdout.startswith("usage: affectfpn publish")
    assert "--out affectfpn/weights" in done.stdout


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        (["--au-teacher", "nolabel"], "LABEL=FOLDER::TABLE"),
        (["--eval", "nolabel"], "LABEL=PATH[::EXCLUDE]"),
    ],
)
def test_publish_command_checks_its_arguments(
    trained: tuple[Path, Path, Path],
    tmp_path: Path,
    capfd: pytest.CaptureFixture[str],
    extra: list[str],
    fragment: str,
) -> None:
    source, folder, _ = trained
    argv = [str(source), *_command(folder, "--out", str(tmp_path / "out"), *extra)]
    for run in (lambda: cli_main(["publish", *argv]), lambda: publish_module.main(argv)):
        code = run()
        err = capfd.readouterr().err  # the old main's child writes to the file descriptors
        assert code == EXIT_USAGE
        lines = [line for line in err.splitlines() if line.strip()]
        assert len(lines) == 1, err
        assert lines[0].startswith("affectfpn: error: ")
        assert fragment in lines[0]
        assert "see 'affectfpn publish --help'" in lines[0]
    assert not (tmp_path / "out").exists()


def test_publish_command_needs_an_evaluation(
    trained: tuple[Path, Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source, _, _ = trained
    code = cli_main(["publish", str(source), "--name", "x", "--out", str(tmp_path / "out")])
    assert code == EXIT_USAGE
    assert "at least one --eval" in capsys.readouterr().err


def test_publish_command_reports_a_bad_card_in_one_line(
    trained: tuple[Path, Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source, folder, _ = trained
    card = tmp_path / "card.json"
    card.write_text("{not json")
    for path, fragment in ((card, "not valid JSON"), (tmp_path / "missing.json", "no such file")):
        code = cli_main(["publish", str(source), *_command(folder, "--card", str(path))])
        err = capsys.readouterr().err
        assert code == EXIT_ERROR
        assert err.startswith("affectfpn: error: --card ")
        assert fragment in err
