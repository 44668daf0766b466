"""The ``affectfpn`` command line, driven in-process through ``affectfpn.cli.main``.

Every command runs on a tiny model saved in a temporary folder (``--model DIR``), so nothing
depends on a registered default model; one subprocess test checks the installed entry point.
"""

import csv
import hashlib
import io
import json
import runpy
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
import torch
from _drawn import outline_changed
from hubserver import LocalHub, set_hf_offline
from PIL import Image

from affectfpn import AffectFPN, AffectFPNConfig, ModelInfo
from affectfpn.cli import EXIT_ERROR, EXIT_INTERNAL, EXIT_OK, EXIT_USAGE, main
from affectfpn.inference import detectors
from affectfpn.inference.results import table_columns
from affectfpn.models import registry


def _commands() -> tuple[str, ...]:
    """Every subcommand the parser registers (a new one is tested without editing this file)."""
    from affectfpn.cli.app import build_parser

    actions = build_parser()._subparsers._group_actions  # type: ignore[union-attr]
    return tuple(name for action in actions for name in action.choices)


COMMANDS = _commands()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny three-task model (ResNet-18, FPN width 16, 64 px) saved with save_pretrained."""
    torch.manual_seed(0)
    model = AffectFPN(AffectFPNConfig(backbone="resnet18", fpn_width=16, input_size=(64, 64)))
    return model.save_pretrained(tmp_path_factory.mktemp("cli") / "tiny")


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _assert_one_error_line(err: str, *fragments: str) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("affectfpn: error: ")
    for fragment in fragments:
        assert fragment in lines[0]


def _csv_rows(text: str) -> tuple[list[str], list[dict[str, str]]]:
    reader = csv.DictReader(io.StringIO(text))
    rows = list(reader)
    assert reader.fieldnames is not None
    return list(reader.fieldnames), rows


def _write_images(folder: Path, count: int, size: tuple[int, int] = (40, 30)) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    paths = []
    for i in range(count):
        path = folder / f"face{i}.png"
        Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


# ----------------------------------------------------------------------------- help, entry
@pytest.mark.parametrize("command", COMMANDS)
def test_every_subcommand_help_shows_an_example(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = _run(capsys, command, "--help")
    assert code == EXIT_OK
    assert err == ""
    assert f"usage: affectfpn {command}" in out
    examples = out.split("examples:", 1)
    assert len(examples) == 2, out
    assert f"affectfpn {command}" in examples[1]


def test_the_package_docstring_lists_every_command() -> None:
    import affectfpn.cli

    listed = {
        line.split()[1]
        for line in (affectfpn.cli.__doc__ or "").splitlines()
        if line.strip().startswith("affectfpn ") and len(line.split()) > 1
    }
    assert set(COMMANDS) <= listed, set(COMMANDS) - listed


def test_top_level_help_lists_commands_and_version(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, "--help")
    assert code == EXIT_OK
    for command in COMMANDS:
        assert command in out
    code, out, _ = _run(capsys, "--version")
    assert code == EXIT_OK
    from affectfpn import __version__

    assert out.startswith(f"affectfpn {__version__}")


def test_python_dash_m_runs_the_cli(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sys, "argv", ["affectfpn", "models", "--json"])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_module("affectfpn", run_name="__main__")
    assert exit_info.value.code == EXIT_OK
    assert isinstance(json.loads(capsys.readouterr().out), list)


def test_installed_entry_point_help() -> None:
    script = Path(sys.executable).with_name("affectfpn")
    if not script.is_file():
        found = shutil.which("affectfpn")
        if found is None:
            pytest.skip("the affectfpn entry point is not installed (pip install -e .)")
        script = Path(found)
    proc = subprocess.run(
        [str(script), "--help"], capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert "usage: affectfpn" in proc.stdout
    for command in COMMANDS:
        assert command in proc.stdout


# ----------------------------------------------------------------------------- predict
@pytest.mark.shared
def test_predict_csv_has_the_documented_columns_and_one_row_per_face(
    model_dir: Path, samples_dir: Path, yunet_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    single, multi = samples_dir / "single_face.jpg", samples_dir / "multi_face.jpg"
    code, out, err = _run(
        capsys,
        "predict",
        str(single),
        str(multi),
        "--model",
        str(model_dir),
        "--detector",
        str(yunet_path),
        "--format",
        "csv",
        "--quiet",
    )
    assert code == EXIT_OK, err
    assert err == ""  # --quiet: only results
    columns, rows = _csv_rows(out)
    assert columns == table_columns()
    assert [r["source"] for r in rows] == [str(single)] + [str(multi)] * 5
    assert [int(r["face_id"]) for r in rows] == [0, 0, 1, 2, 3, 4]
    assert all(r["success"] == "1" for r in rows)
    for row in rows:
        assert -1.0 <= float(row["valence"]) <= 1.0
        assert 0.0 < float(row["confidence"]) <= 1.0
        probabilities = [float(row[c]) for c in columns if c.startswith("expr_")]
        assert sum(probabilities) == pytest.approx(1.0, abs=1e-4)
        assert row["expression"] == columns[
            columns.index("expr_Neutral") + int(np.argmax(probabilities))
        ].removeprefix("expr_")


@pytest.mark.shared
def test_predict_json_to_file_with_annotated_images(
    model_dir: Path,
    samples_dir: Path,
    yunet_path: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    output, annotated = tmp_path / "out" / "faces.json", tmp_path / "annotated"
    sources = [samples_dir / "single_face.jpg", samples_dir / "multi_face.jpg"]
    code, out, err = _run(
        capsys,
        "predict",
        *map(str, sources),
        "--model",
        str(model_dir),
        "--detector",
        str(yunet_path),
        "--output",
        str(output),  # .json: the format follows the suffix
        "--annotate",
        str(annotated),
    )
    assert code == EXIT_OK, err
    assert out == ""
    data = json.loads(output.read_text(encoding="utf-8"))
    assert [d["source"] for d in data] == [str(s) for s in sources]
    assert [len(d["faces"]) for d in data] == [1, 5]
    assert set(data[1]["faces"][0]) >= {"box", "score", "va", "expression", "aus"}
    for source, result in zip(sources, data, strict=True):
        drawn = np.asarray(Image.open(annotated / source.name).convert("RGB"))
        original = np.asarray(Image.open(source).convert("RGB"))
        assert drawn.shape == original.shape
        # Every face's box was drawn: its outline changed (a JPEG re-save alone changes pixels
        # too, by 1.6 grey levels on average, so "not equal" proved nothing).
        for face in result["faces"]:
            assert outline_changed(drawn, original, face["box"]) > 0.8, (source.name, face["box"])
    assert not list(output.parent.glob(".*.tmp"))


@pytest.mark.shared
def test_predict_table_marks_images_without_faces(
    model_dir: Path, samples_dir: Path, yunet_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = _run(
        capsys,
        "predict",
        str(samples_dir / "single_face.jpg"),
        str(samples_dir / "free-mountain-vector-01.jpg"),
        "--model",
        str(model_dir),
        "--detector",
        str(yunet_path),
        "--format",
        "table",
    )
    assert code == EXIT_OK, err
    lines = out.splitlines()
    assert lines[0].split()[:5] == ["source", "face", "score", "valence", "arousal"]
    assert len(lines) == 3
    assert "single_face.jpg" in lines[1]
    assert "free-mountain-vector-01.jpg" in lines[2]
    assert "(no face)" in lines[2]
    # Aligned: every row starts its "face" column at the same offset.
    offset = lines[0].index("face")
    assert lines[1][offset - 1] == " "


def test_predict_crop_mode_on_a_folder(
    model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    paths = _write_images(tmp_path / "crops", 3)
    code, out, err = _run(
        capsys, "predict", str(tmp_path / "crops"), "--model", str(model_dir), "--faces", "crop"
    )
    assert code == EXIT_OK, err
    _, rows = _csv_rows(out)  # stdout is not a terminal here: CSV by default
    assert [r["source"] for r in rows] == [str(p) for p in paths]
    for row in rows:
        assert row["face_id"] == "0"
        assert row["confidence"] == ""  # no detector in crop mode
        assert (float(row["x2"]), float(row["y2"])) == (40.0, 30.0)  # the whole image


def test_predict_wrong_path_is_one_clear_error(
    model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "missing.jpg"
    code, out, err = _run(capsys, "predict", str(missing), "--model", str(model_dir))
    assert code == EXIT_ERROR
    assert out == ""
    _assert_one_error_line(err, str(missing), "no such file")


def test_predict_non_image_file_is_one_clear_error(
    model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fake = tmp_path / "notes.jpg"
    fake.write_text("not an image\n", encoding="utf-8")
    output = tmp_path / "table.csv"
    code, out, err = _run(
        capsys,
        "predict",
        str(fake),
        "--model",
        str(model_dir),
        "--faces",
        "crop",
        "--output",
        str(output),
    )
    assert code == EXIT_ERROR
    assert out == ""
    _assert_one_error_line(err, str(fake), "not an image")
    assert not output.exists()  # no half-written table
    assert list(tmp_path.glob(".*.tmp")) == []


def test_unknown_model_name_is_one_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (image,) = _write_images(tmp_path, 1)
    code, out, err = _run(capsys, "predict", str(image), "--model", "no-such-model")
    assert code == EXIT_ERROR
    assert out == ""
    _assert_one_error_line(err, "'no-such-model'", "not a registered model")


def test_no_default_model_gives_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(registry, "_DEFAULT", [])
    (image,) = _write_images(tmp_path, 1)
    code, out, err = _run(capsys, "predict", str(image), "--faces", "crop")
    assert code == EXIT_ERROR
    assert out == ""
    _assert_one_error_line(err, "no default model", "--model")


def test_usage_errors_exit_2_with_one_line(
    model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = _run(capsys, "predict")
    assert code == EXIT_USAGE
    _assert_one_error_line(err, "IMAGE", "affectfpn predict --help")
    code, _, err = _run(capsys, "predict", "x.jpg", "--format", "xml")
    assert code == EXIT_USAGE
    _assert_one_error_line(err, "xml")
    code, _, err = _run(capsys, "export", "--model", str(model_dir))
    assert code == EXIT_USAGE
    _assert_one_error_line(err, "--onnx", "--folder")
    code, _, err = _run(capsys, "no-such-command")
    assert code == EXIT_USAGE
    _assert_one_error_line(err, "no-such-command")


def test_internal_errors_hide_the_traceback_unless_verbose(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from affectfpn.cli import models

    def broken(args: object) -> int:
        raise RuntimeError("boom")

    monkeypatch.setattr(models, "run", broken)
    code, _, err = _run(capsys, "models")
    assert code == EXIT_INTERNAL
    _assert_one_error_line(err, "internal error", "RuntimeError: boom", "--verbose")
    code, _, err = _run(capsys, "models", "--verbose")
    assert code == EXIT_INTERNAL
    assert "Traceback (most recent call last)" in err
    assert err.strip().splitlines()[-1].startswith("affectfpn: error: internal error")


# ----------------------------------------------------------------------------- video
def _synthetic_video(path: Path, frames: int = 12, fps: float = 10.0) -> Path:
    """An MJPG .avi of ``frames`` 64 x 48 frames whose brightness changes every frame."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), fps, (64, 48))
    assert writer.isOpened()
    for i in range(frames):
        frame = np.full((48, 64, 3), 10 + 20 * i, dtype=np.uint8)
        frame[10:30, 20:44] = 255 - 20 * i
        writer.write(frame)
    writer.release()
    return path


@pytest.mark.shared
def test_video_csv_goes_to_stdout_by_default(
    model_dir: Path, samples_dir: Path, yunet_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    video = samples_dir / "WolfgangLanger_Pexels.mp4"
    code, out, err = _run(
        capsys,
        "video",
        str(video),
        "--model",
        str(model_dir),
        "--detector",
        str(yunet_path),
        "--end",
        "9",
        "--every-n",
        "4",
    )
    assert code == EXIT_OK, err
    columns, rows = _csv_rows(out)
    assert columns == ["frame", "timestamp", *table_columns()]
    assert [int(r["frame"]) for r in rows] == [0, 4, 8]
    assert all(r["success"] == "1" and r["face_id"] == "0" for r in rows)  # one tracked face
    times = [float(r["timestamp"]) for r in rows]
    assert times == sorted(times)
    assert times[1] == pytest.approx(4 / 23.976, abs=0.01)


def test_video_writes_csv_abaw2_annotated_video_and_plot(
    model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("matplotlib")
    video = _synthetic_video(tmp_path / "clip.avi")
    out_csv, abaw, annotated, plot = (
        tmp_path / "clip.csv",
        tmp_path / "abaw",
        tmp_path / "annotated.avi",
        tmp_path / "va.png",
    )
    code, out, err = _run(
        capsys,
        "video",
        str(video),
        "--model",
        str(model_dir),
        "--faces",
        "crop",
        "--every-n",
        "2",
        "--csv",
        str(out_csv),
        "--abaw2",
        str(abaw),
        "--annotate",
        str(annotated),
        "--plot",
        str(plot),
    )
    assert code == EXIT_OK, err
    assert out == ""  # everything went to files
    assert "6 frame(s)" in err
    _, rows = _csv_rows(out_csv.read_text(encoding="utf-8"))
    assert [int(r["frame"]) for r in rows] == [0, 2, 4, 6, 8, 10]
    expr_lines = (abaw / "EXPR_Set" / "clip.txt").read_text(encoding="utf-8").splitlines()
    assert expr_lines[0] == "Neutral,Anger,Disgust,Fear,Happiness,Sadness,Surprise"
    assert len(expr_lines) == 1 + 12  # one line per video frame, skipped frames repeated
    assert expr_lines[2] == expr_lines[1]  # frame 1 was skipped: it repeats frame 0
    assert (abaw / "VA_Set" / "clip.txt").is_file()
    assert (abaw / "AU_Set" / "clip.txt").is_file()
    capture = cv2.VideoCapture(str(annotated))
    decoded = 0
    while capture.grab():
        decoded += 1
    capture.release()
    assert decoded == 6
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_video_missing_file_is_one_clear_error(
    model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "missing.mp4"
    code, out, err = _run(capsys, "video", str(missing), "--model", str(model_dir))
    assert code == EXIT_ERROR
    assert out == ""
    _assert_one_error_line(err, str(missing))
    code, _, err = _run(capsys, "video", str(missing), "--every-n", "2", "--target-fps", "5")
    assert code == EXIT_USAGE
    _assert_one_error_line(err, "--every-n", "--target-fps")


# ----------------------------------------------------------------------------- evaluate
def test_evaluate_prints_the_summary_and_writes_the_report(
    model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "test"
    for name in ("happy", "sad", "neutral"):
        _write_images(root / name, 2, size=(48, 48))
    exclude = tmp_path / "overlap.txt"
    exclude.write_text("test/sad/face1.png\n", encoding="utf-8")
    report_path = tmp_path / "report.json"
    code, out, err = _run(
        capsys,
        "evaluate",
        str(root),
        "--model",
        str(model_dir),
        "--exclude",
        str(exclude),
        "--output",
        str(report_path),
        "--batch-size",
        "4",
    )
    assert code == EXIT_OK, err
    report = json.loads(report_path.read_text(encoding="utf-8"))
    assert report["dataset"]["num_samples"] == 5
    assert report["dataset"]["excluded"] == 1
    expression = report["metrics"]["expression"]
    line = next(line for line in out.splitlines() if line.startswith("expression:"))
    assert f"S_EXPR {expression['score']:.4f}" in line
    assert f"accuracy {expression['accuracy']:.4f}" in line
    assert f"macro F1 {expression['macro_f1']:.4f}" in line
    assert "samples:  5 (1 excluded)" in out


def test_evaluate_missing_dataset_is_one_clear_error(
    model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = _run(capsys, "evaluate", str(tmp_path / "nope"), "--model", str(model_dir))
    assert code == EXIT_ERROR
    _assert_one_error_line(err, str(tmp_path / "nope"))


# ----------------------------------------------------------------------------- train
def _recipe(tmp_path: Path) -> Path:
    for name in ("happy", "sad"):
        _write_images(tmp_path / "data" / name, 2, size=(32, 32))
    path = tmp_path / "tiny.toml"
    path.write_text(
        f"""
name = "tiny"
output_dir = "{(tmp_path / "run").as_posix()}"
[model]
backbone = "resnet18"
fpn_width = 8
tasks = ["expression"]
input_size = [32, 32]
[data]
train = [{{ type = "imagefolder", root = "{(tmp_path / "data").as_posix()}" }}]
[train]
epochs = 1
batch_size = 4
amp = "off"
""",
        encoding="utf-8",
    )
    return path


def test_train_check_applies_overrides_and_reports_bad_keys(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    recipe = _recipe(tmp_path)
    other = tmp_path / "elsewhere"
    code, out, err = _run(
        capsys, "train", str(recipe), "--check", "--set", f"output_dir={other.as_posix()}"
    )
    assert code == EXIT_OK, err
    assert "valid train recipe 'tiny'" in out
    assert str(other) in out
    assert not (tmp_path / "run").exists()
    code, out, err = _run(capsys, "train", str(recipe), "--check", "--set", "train.epochz=3")
    assert code == EXIT_ERROR
    _assert_one_error_line(err, "epochz")


def test_train_runs_a_tiny_recipe(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    recipe = _recipe(tmp_path)
    code, out, err = _run(capsys, "train", str(recipe), "--quiet")
    assert code == EXIT_OK, err
    summary = json.loads(out)
    assert summary["finished"] is True
    assert (tmp_path / "run" / "best" / "model.safetensors").is_file()
    assert "epoch" not in err  # --quiet: no progress bar, no info messages


# ----------------------------------------------------------------------------- export
def test_export_onnx_and_hub_folder(
    model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    onnx_path, folder = tmp_path / "tiny.onnx", tmp_path / "hub-ready"
    code, out, err = _run(
        capsys,
        "export",
        "--model",
        str(model_dir),
        "--onnx",
        str(onnx_path),
        "--folder",
        str(folder),
        "--quiet",
    )
    assert code == EXIT_OK, err
    assert str(onnx_path) in out
    proto = onnx.load(str(onnx_path))
    assert [o.name for o in proto.graph.output] == ["va", "expression_logits", "au_logits"]
    meta = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(meta["input_size"]) == [64, 64]
    reloaded = AffectFPN.from_pretrained(folder)
    original = AffectFPN.from_pretrained(model_dir)
    for a, b in zip(reloaded.state_dict().values(), original.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert (folder / "README.md").is_file()


# ----------------------------------------------------------------------------- models
def _fake_info(name: str) -> ModelInfo:
    return ModelInfo(
        name=name,
        description="a test entry",
        source="hub",
        location="org/fake-affect",
        revision="a" * 40,
        tasks=("expression",),
        backbone="resnet18",
        neck="fpn",
        input_size=(64, 64),
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
        expressions=("Neutral", "Anger", "Disgust", "Fear", "Happiness", "Sadness", "Surprise"),
        action_units=(),
        num_params=1_234_567,
        metrics={"fer2013/test": {"accuracy": 0.6543}},
        license="apache-2.0",
        datasets=("fer2013",),
        recipe="recipes/fer2013.toml",
    )


def test_models_lists_the_registry(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = _run(capsys, "models", "--json")
    assert code == EXIT_OK, err
    assert [e["name"] for e in json.loads(out)] == registry.model_names()
    code, out, err = _run(capsys, "models")
    assert code == EXIT_OK, err
    # Every embedded model shows its test accuracy and its compute per face.
    header = out.splitlines()[0].split()
    assert "acc" in header
    assert "GFLOP/face" in header
    for line in out.splitlines()[1:]:
        if line.startswith(("fer2013-resnet18-fpn", "fer2013-multitask")):
            values = [float(v) for v in line.split() if v.replace(".", "", 1).isdigit()]
            assert any(0.6 < v < 0.8 for v in values), line  # accuracy
            assert any(0.1 < v < 1.0 for v in values), line  # GFLOP per face (two passes)

    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    monkeypatch.setattr(registry, "_DEFAULT", [])
    registry.register_model(_fake_info("fake-affect"), default=True)
    code, out, err = _run(capsys, "models")
    assert code == EXIT_OK, err
    row = next(line for line in out.splitlines() if line.startswith("fake-affect"))
    assert "fake-affect *" in row  # the default
    assert "1.2M" in row
    assert "0.654" in row.split()  # the test accuracy column
    assert "fer2013/test: accuracy" not in row  # every metric only with --metrics
    code, out, err = _run(capsys, "models", "--metrics")
    assert code == EXIT_OK, err
    row = next(line for line in out.splitlines() if line.startswith("fake-affect"))
    assert "fer2013/test: accuracy 0.654" in row
    entries = json.loads(_run(capsys, "models", "--json")[1])
    assert entries[0]["name"] == "fake-affect"
    assert entries[0]["default"] is True


# ----------------------------------------------------------------------------- download
def test_download_repo_id_fills_the_cache(
    local_hub: LocalHub,
    model_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    files = {name: (model_dir / name).read_bytes() for name in ("config.json", "model.safetensors")}
    commit = local_hub.add_files("org/tiny", files)
    code, out, err = _run(capsys, "download", "org/tiny", "--no-detector")
    assert code == EXIT_OK, err
    (line,) = [line for line in out.splitlines() if line.startswith("model")]
    weights = Path(line.split()[-1])
    assert weights.is_file()
    assert (tmp_path / "hf_home") in weights.parents
    assert weights.parent.name == commit
    set_hf_offline(monkeypatch, True)
    model = AffectFPN.from_pretrained("org/tiny")
    assert model.revision == commit

    code, _, err = _run(capsys, "download", "org/missing", "--no-detector")
    assert code == EXIT_ERROR
    _assert_one_error_line(err, "org/missing")


@pytest.mark.shared
def test_download_detector_into_the_cache(
    local_hub: LocalHub,
    yunet_path: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    data = yunet_path.read_bytes()
    commit = local_hub.add_file(detectors.YUNET_REPO_ID, detectors.YUNET_FILENAME, data)
    monkeypatch.delenv(detectors.YUNET_ENV, raising=False)
    monkeypatch.setattr(detectors, "YUNET_REVISION", commit)
    monkeypatch.setattr(detectors, "YUNET_SHA256", hashlib.sha256(data).hexdigest())
    code, out, err = _run(capsys, "download", "--detector-only", "--hub-detector")
    assert code == EXIT_OK, err
    (line,) = out.splitlines()[1:]
    path = Path(line.split()[-1])
    assert line.startswith("detector")
    assert (tmp_path / "hf_home") in path.parents
    assert path.read_bytes() == data
    # without --hub-detector: the embedded detector, nothing downloaded
    local_hub.reset_requests()
    code, out, err = _run(capsys, "download", "--detector-only")
    assert code == EXIT_OK, err
    (line,) = out.splitlines()[1:]
    assert "embedded" in line
    assert Path(line.split()[-1]) == detectors.embedded_yunet()
    assert local_hub.request_count == 0


def test_commands_that_need_no_model_do_not_import_torch() -> None:
    """--help, models, models --json and argument errors answer in a fraction of torch's import
    time (benchmarks/cli_startup.py measures it): none of them may import torch or OpenCV."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from affectfpn.cli import main\n"
        "for argv in (['--help'], ['models'], ['models', '--json'], ['predict', '--bogus']):\n"
        "    try:\n"
        "        main(argv)\n"
        "    except SystemExit:\n"
        "        pass\n"
        "print('LOADED', sorted(m for m in ('torch', 'cv2') if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    ).stdout
    assert "LOADED []" in out, out[-500:]


def test_a_folder_run_finishes_lists_its_failures_and_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A user with thousands of files: one damaged file costs one row, not the table. Every
    good result is written, each failed input is listed beside the table, one summary line says
    how many, and the exit status (4) says that something failed."""
    import shutil

    folder = tmp_path / "photos"
    folder.mkdir()
    photo = Path(__file__).resolve().parents[1] / "examples" / "images" / "single_face.jpg"
    shutil.copy(photo, folder / "a.jpg")
    shutil.copy(photo, folder / "c.jpg")
    (folder / "b.jpg").write_bytes(b"")  # empty
    (folder / "d.jpg").write_bytes(photo.read_bytes()[:400])  # truncated
    out = tmp_path / "faces.csv"
    code, _, err = _run(capsys, "predict", str(folder), "-o", str(out))
    assert code == 4, err
    rows = list(csv.DictReader(out.open()))
    assert sorted({Path(r["source"]).name for r in rows}) == ["a.jpg", "c.jpg"]
    failed = list(csv.DictReader((tmp_path / "faces.csv.errors.csv").open()))
    assert [Path(r["source"]).name for r in failed] == ["b.jpg", "d.jpg"]
    assert all(r["error"] for r in failed)
    summary = [line for line in err.splitlines() if "could not be read" in line]
    assert len(summary) == 1
    assert "2 of 4" in summary[0]
    # each warning names the path once
    assert all(line.count("b.jpg") <= 1 for line in err.splitlines())
    # one file that cannot be read stops as before; --on-error raise stops a folder too
    code, _, err = _run(capsys, "predict", str(folder / "b.jpg"))
    assert code == 1
    code, _, err = _run(capsys, "predict", str(folder), "--on-error", "raise", "-o", str(out))
    assert code == 1
