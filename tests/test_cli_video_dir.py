"""``affectfpn video DIR`` (every video of a folder) and ``affectfpn video --codec``.

A folder run finishes like ``affectfpn predict DIR``: each video gets its own outputs, named
after it; a video that cannot be read is skipped, leaves no output, is listed in errors.csv in
the first output folder, one line says how many failed, and the exit status is 4. Runs on a tiny
model saved in a temporary folder, on small synthetic videos (no ../shared needed).
"""

import csv
import io
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from affectfpn import AffectFPN, AffectFPNConfig
from affectfpn.cli import EXIT_ERROR, EXIT_OK, EXIT_USAGE, main
from affectfpn.cli.video import CODECS
from affectfpn.video import VIDEO_CODECS

EXIT_PARTIAL = 4


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny three-task model (ResNet-18, FPN width 16, 64 px) with the ABAW2 labels."""
    torch.manual_seed(0)
    model = AffectFPN(AffectFPNConfig(backbone="resnet18", fpn_width=16, input_size=(64, 64)))
    return model.save_pretrained(tmp_path_factory.mktemp("cli-video") / "tiny")


def _video(path: Path, frames: int) -> Path:
    """An MJPG .avi of ``frames`` 64 x 48 frames whose brightness changes every frame."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), 10.0, (64, 48))
    assert writer.isOpened()
    for i in range(frames):
        writer.write(np.full((48, 64, 3), 10 + 20 * i, dtype=np.uint8))
    writer.release()
    return path


def _decoded(path: Path) -> int:
    capture = cv2.VideoCapture(str(path))
    count = 0
    while capture.grab():
        count += 1
    capture.release()
    return count


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _rows(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(path.read_text(encoding="utf-8"))))


@pytest.fixture
def clips(tmp_path: Path) -> Path:
    """Two good videos (one of them twice, under two names with one stem), a broken one, an
    empty one, one that opens but has no frame (its outputs were started) and a text file."""
    folder = tmp_path / "clips"
    folder.mkdir()
    _video(folder / "alpha.avi", 6)
    _video(folder / "beta.avi", 4)
    shutil.copy(folder / "beta.avi", folder / "beta.mkv")  # same stem: beta and beta-2
    (folder / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypisom" + bytes(300))
    (folder / "empty.mov").write_bytes(b"")
    _video(folder / "zero.avi", 0)
    (folder / "notes.txt").write_text("not a video", encoding="utf-8")
    return folder


def test_a_folder_run_finishes_with_one_output_per_good_video(
    model_dir: Path, clips: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    code, stdout, err = _run(
        capsys,
        "video",
        str(clips),
        "--model",
        str(model_dir),
        "--faces",
        "crop",
        "--csv",
        str(out / "tables"),
        "--annotate",
        str(out / "annotated"),
        "--abaw2",
        str(out / "abaw"),
    )
    assert code == EXIT_PARTIAL, err
    assert stdout == ""
    tables = out / "tables"
    assert sorted(p.name for p in tables.iterdir()) == [
        "alpha.csv",
        "beta-2.csv",
        "beta.csv",
        "errors.csv",
    ]
    assert len(_rows(tables / "alpha.csv")) == 6  # crop mode: one row per frame
    assert len(_rows(tables / "beta.csv")) == 4
    assert {r["source"].split("#")[0] for r in _rows(tables / "beta-2.csv")} == {
        str(clips / "beta.mkv")
    }
    annotated = out / "annotated"
    suffix = ".mp4"
    assert sorted(p.name for p in annotated.iterdir()) == [
        f"alpha{suffix}",
        f"beta-2{suffix}",
        f"beta{suffix}",
    ]
    assert _decoded(annotated / "alpha.mp4") == 6
    va_files = sorted(p.name for p in (out / "abaw" / "VA_Set").iterdir())
    assert va_files == ["alpha.txt", "beta-2.txt", "beta.txt"]  # nothing for the failed ones
    failed = _rows(tables / "errors.csv")
    assert [Path(r["source"]).name for r in failed] == ["broken.mp4", "empty.mov", "zero.avi"]
    assert all(r["error"] for r in failed)
    summary = [line for line in err.splitlines() if "could not be read" in line]
    assert len(summary) == 1
    assert "3 of 6 video(s)" in summary[0]
    assert str(tables / "errors.csv") in summary[0]
    assert "Traceback" not in err


def test_on_error_raise_stops_at_the_first_bad_video(
    model_dir: Path, clips: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = _run(
        capsys,
        "video",
        str(clips),
        "--model",
        str(model_dir),
        "--faces",
        "crop",
        "--csv",
        str(tmp_path / "tables"),
        "--on-error",
        "raise",
    )
    assert code == EXIT_ERROR
    errors = [line for line in err.splitlines() if line.startswith("affectfpn: error: ")]
    assert len(errors) == 1
    assert "broken.mp4" in errors[0]
    assert not (tmp_path / "tables" / "errors.csv").exists()
    assert not (tmp_path / "tables" / "broken.csv").exists()


def test_a_folder_of_good_videos_exits_0_and_names_outputs_after_them(
    model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "good"
    folder.mkdir()
    _video(folder / "one.avi", 3)
    _video(folder / "two.avi", 5)
    code, _, err = _run(
        capsys,
        "video",
        str(folder),
        "--model",
        str(model_dir),
        "--faces",
        "crop",
        "--csv",
        str(tmp_path / "tables"),
    )
    assert code == EXIT_OK, err
    assert len(_rows(tmp_path / "tables" / "one.csv")) == 3
    assert len(_rows(tmp_path / "tables" / "two.csv")) == 5
    assert not (tmp_path / "tables" / "errors.csv").exists()


def test_a_single_broken_file_with_on_error_skip_is_listed_and_exits_4(
    model_dir: Path, clips: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "broken.csv"
    code, _, err = _run(
        capsys,
        "video",
        str(clips / "broken.mp4"),
        "--model",
        str(model_dir),
        "--csv",
        str(out),
        "--on-error",
        "skip",
    )
    assert code == EXIT_PARTIAL
    assert f"failed: {clips / 'broken.mp4'}" in err
    assert not out.exists()
    # Without --on-error, one file stops at its error (status 1), as in affectfpn predict.
    code, _, err = _run(
        capsys, "video", str(clips / "broken.mp4"), "--model", str(model_dir), "--csv", str(out)
    )
    assert code == EXIT_ERROR


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        ((), "--csv DIR"),  # a folder has no stdout output
        (("--codec", "vp9"), "--codec vp9"),  # a codec needs --annotate
    ],
)
def test_folder_usage_errors(
    model_dir: Path,
    clips: Path,
    capsys: pytest.CaptureFixture[str],
    extra: tuple[str, ...],
    fragment: str,
) -> None:
    code, _, err = _run(capsys, "video", str(clips), "--model", str(model_dir), *extra)
    assert code == EXIT_USAGE
    assert fragment in err


def test_a_file_where_a_folder_is_needed_and_an_empty_folder_are_clear_errors(
    model_dir: Path, clips: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    taken = tmp_path / "taken.csv"
    taken.write_text("x", encoding="utf-8")
    code, _, err = _run(capsys, "video", str(clips), "--model", str(model_dir), "--csv", str(taken))
    assert code == EXIT_ERROR
    assert "--csv" in err
    assert "names a folder" in err
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = _run(
        capsys, "video", str(empty), "--model", str(model_dir), "--csv", str(tmp_path / "t")
    )
    assert code == EXIT_ERROR
    assert "no video file" in err


# --------------------------------------------------------------------------- --codec


def test_the_cli_codecs_are_the_packages() -> None:
    assert CODECS == VIDEO_CODECS


def test_codec_vp9_writes_webm_and_says_so(
    model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    av = pytest.importorskip("av")
    clip = _video(tmp_path / "clip.avi", 5)
    out = tmp_path / "clip.webm"
    code, _, err = _run(
        capsys,
        "video",
        str(clip),
        "--model",
        str(model_dir),
        "--faces",
        "crop",
        "--annotate",
        str(out),
        "--codec",
        "vp9",
    )
    assert code == EXIT_OK, err
    assert "VP9 via PyAV" in err
    with av.open(str(out)) as container:
        assert container.streams.video[0].codec_context.name == "vp9"
        assert sum(1 for _ in container.decode(video=0)) == 5


def test_codec_that_the_file_cannot_hold_fails_before_the_video_is_read(
    model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("av")
    clip = _video(tmp_path / "clip.avi", 3)
    code, _, err = _run(
        capsys,
        "video",
        str(clip),
        "--model",
        str(model_dir),
        "--annotate",
        str(tmp_path / "clip.webm"),
        "--codec",
        "h264",
    )
    assert code == EXIT_ERROR
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1
    assert "clip.mp4" in lines[0]  # the fix: a file name that holds H.264
    assert not (tmp_path / "clip.webm").exists()
