"""Corpus jobs (affectfpn.corpus): inputs, ledger, resume after SIGKILL, sharding, bad input."""

import math
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from PIL import Image, ImageOps

from affectfpn.corpus import (
    LEADING_COLUMNS,
    CorpusJob,
    JobError,
    list_inputs,
    read_corpus,
    run_corpus,
    shard,
)
from affectfpn.errors import InputError
from affectfpn.inference.results import table_columns

pytest.importorskip("pandas")
pytest.importorskip("pyarrow")

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples" / "images"
MODEL = "fer2013-fast-resnet18half"


def _make_corpus(folder: Path, photos: int = 10) -> Path:
    """Photos with faces (the examples, mirrored and shrunk into variants), a faceless photo, an
    unreadable file and a short video."""
    folder.mkdir(parents=True, exist_ok=True)
    sources = [Image.open(p).convert("RGB") for p in sorted(EXAMPLES.glob("*.jpg"))]
    for i in range(photos):
        image = sources[i % len(sources)]
        scale = 0.5 + 0.05 * i
        image = image.resize((int(image.width * scale), int(image.height * scale)))
        if i % 3 == 1:
            image = ImageOps.mirror(image)
        image.save(folder / f"photo_{i:02d}.jpg", quality=90)
    Image.fromarray(np.full((64, 64, 3), 128, np.uint8)).save(folder / "blank.png")
    (folder / "broken.jpg").write_bytes(b"not a jpeg at all")
    frame = cv2.resize(cv2.imread(str(EXAMPLES / "single_face.jpg")), (160, 120))
    fourcc = cv2.VideoWriter.fourcc(*"MJPG")
    writer = cv2.VideoWriter(str(folder / "clip.avi"), fourcc, 5, (160, 120))
    for i in range(4):
        writer.write(np.roll(frame, 3 * i, axis=1))
    writer.release()
    return folder


def _row_set(table: Any) -> set[tuple[object, ...]]:
    """The rows as a set of tuples, floats rounded to 5 decimals (the batches of two runs may
    differ, and so may the last bits of a convolution), missing values as None."""

    def cell(value: object) -> object:
        if value is None or value is getattr(__import__("pandas"), "NA", object()):
            return None
        if isinstance(value, float | np.floating):
            return None if math.isnan(value) else round(float(value), 5)
        if isinstance(value, np.integer):
            return int(value)
        return value

    columns = sorted(table.columns)
    rows = {tuple(cell(v) for v in row) for row in table[columns].astype(object).itertuples(False)}
    assert len(rows) == len(table), "duplicate rows"
    return rows


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _make_corpus(tmp_path_factory.mktemp("corpus") / "in")


@pytest.fixture(scope="module")
def reference(corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One uninterrupted single-process run over ``corpus``."""
    out = tmp_path_factory.mktemp("reference") / "out"
    summary = run_corpus(corpus, out, model=MODEL, part_size=3, progress=False)
    assert summary.processed == summary.inputs == 13
    return out


# ------------------------------------------------------------------------------------ inputs
def test_inputs_from_folder_list_csv_and_glob_are_sorted_once(tmp_path: Path) -> None:
    for name in ("b.jpg", "a.png", "c.mp4", "notes.md", ".hidden.jpg"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "d.jpg").write_bytes(b"x")
    listing = tmp_path / "files.txt"
    listing.write_text("# a comment\nb.jpg\n\nsub/d.jpg\nmissing.jpg\n")
    table = tmp_path / "files.csv"
    table.write_text("label,path\nx,a.png\ny,b.jpg\n")
    folder = [i.path for i in list_inputs(tmp_path)]
    assert folder == [str(tmp_path / n) for n in ("a.png", "b.jpg", "c.mp4")]
    assert [i.kind for i in list_inputs(tmp_path)] == ["image", "image", "video"]
    assert len(list_inputs(tmp_path, recursive=True)) == 4
    assert [i.path for i in list_inputs(listing)] == [
        str(tmp_path / n) for n in ("b.jpg", "missing.jpg", "sub/d.jpg")
    ]
    both = list_inputs([table, listing, str(tmp_path / "*.jpg")])
    assert [i.path for i in both] == sorted({i.path for i in both})
    assert len(both) == 4  # a.png, b.jpg (three times named), missing.jpg, sub/d.jpg
    with pytest.raises(InputError, match="no such file or folder"):
        list_inputs(tmp_path / "nope")
    (tmp_path / "bad.csv").write_text("a,b\n1,2\n")
    with pytest.raises(InputError, match="no column of paths"):
        list_inputs(tmp_path / "bad.csv")


def test_shards_are_disjoint_and_cover_the_corpus(tmp_path: Path) -> None:
    for i in range(11):
        (tmp_path / f"{i}.jpg").write_bytes(b"x")
    inputs = list_inputs(tmp_path)
    shares = [shard(inputs, rank, 3) for rank in range(3)]
    flat = [i for share in shares for i in share]
    assert sorted(flat) == sorted(inputs)
    assert len(flat) == len(set(flat))


# ------------------------------------------------------------------------------------ job
def test_job_rows_errors_and_columns(reference: Path, corpus: Path) -> None:
    rows = read_corpus(reference)
    errors = read_corpus(reference, errors=True)
    from affectfpn.models import AffectFPN

    config = AffectFPN.from_pretrained(MODEL).config
    columns = table_columns(config.expressions, config.action_units)
    assert list(rows.columns) == [*LEADING_COLUMNS, *columns]
    assert set(errors["input"]) == {str(corpus / "broken.jpg")}
    assert "broken.jpg" in errors["error"].iloc[0]
    assert set(rows["input"]) == {i.path for i in list_inputs(corpus)} - {
        str(corpus / "broken.jpg")
    }
    assert (rows["model"] == MODEL).all()
    video = rows[rows["kind"] == "video"]
    assert sorted(set(video["frame"].astype(int))) == [0, 1, 2, 3]
    assert video["success"].sum() >= 1  # the face is found in the video
    blank = rows[rows["input"] == str(corpus / "blank.png")]
    assert list(blank["success"]) == [0]
    assert rows[rows["kind"] == "image"]["success"].sum() >= 10  # faces in the photos


def test_resume_after_sigkill_gives_the_same_rows(
    corpus: Path, reference: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    seed = random.randrange(10**6)
    rng = random.Random(seed)
    script = (
        "from affectfpn.corpus import run_corpus\n"
        f"run_corpus({str(corpus)!r}, {str(out)!r}, model={MODEL!r}, part_size=1, progress=False)\n"
    )
    process = subprocess.Popen([sys.executable, "-c", script])
    try:
        ledger = out / "_ledger" / "rank-00000.jsonl"
        deadline = time.monotonic() + 120
        while not ledger.exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 1.0))  # a random moment after the first commit
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait()
    before = len(read_corpus(out)["input"].unique())
    summary = run_corpus(corpus, out, model=MODEL, part_size=3, progress=False, resume=True)
    assert summary.done_before + summary.processed == 13, f"seed {seed}"
    assert _row_set(read_corpus(out)) == _row_set(read_corpus(reference)), f"seed {seed}"
    assert len(read_corpus(out, errors=True)) == 1
    # Only committed parts are on disk after the resume: the folder reads the same as a dataset.
    import pandas as pd

    assert len(pd.read_parquet(out / "rows")) == len(read_corpus(reference)), (seed, before)


def test_a_torn_ledger_line_and_an_orphan_part_are_not_commits(
    corpus: Path, reference: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    shutil.copytree(reference, out)
    ledger = out / "_ledger" / "rank-00000.jsonl"
    lines = ledger.read_bytes().splitlines(keepends=True)
    ledger.write_bytes(b"".join(lines[:-1]) + lines[-1][:-7])  # the last line cut short
    summary = run_corpus(corpus, out, model=MODEL, part_size=3, progress=False, resume=True)
    assert summary.processed >= 1
    assert _row_set(read_corpus(out)) == _row_set(read_corpus(reference))
    assert ledger.read_bytes().endswith(b"\n")
    import pandas as pd

    # The part of the cut line was deleted (an orphan), then written again: no duplicate.
    assert len(pd.read_parquet(out / "rows")) == len(read_corpus(reference))


def test_resume_with_other_options_or_model_is_refused_naming_them(
    corpus: Path, reference: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    shutil.copytree(reference, out)
    with pytest.raises(JobError, match=r"au_threshold=0\.7 \(the job has 0\.5\)"):
        run_corpus(corpus, out, model=MODEL, resume=True, au_threshold=0.7, progress=False)
    with pytest.raises(
        JobError, match=r"\(the job has 'fer2013-fast-resnet18half'\).*weights_sha256"
    ):
        run_corpus(corpus, out, resume=True, progress=False)  # the default model
    with pytest.raises(JobError, match="already holds a job with 13 finished input"):
        run_corpus(corpus, out, model=MODEL, progress=False)  # no resume
    done = run_corpus(corpus, out, model=MODEL, resume=True, batch_size=7, progress=False)
    assert done.processed == 0  # the batch size may change
    assert done.done_before == 13


def test_unwritable_output_stops_with_a_clear_error_and_keeps_the_parts(
    corpus: Path, reference: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import affectfpn.corpus.job as job

    real = job.atomic_write
    calls = {"n": 0}

    def full_disk(path: Any, write: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] > 3:  # job.json and the first commit's two parts fit; then a full disk
            raise OSError(28, "No space left on device")
        return real(path, write, **kwargs)

    monkeypatch.setattr(job, "atomic_write", full_disk)
    out = tmp_path / "out"
    with pytest.raises(JobError, match=r"No space left on device.*committed before.*resume=True"):
        run_corpus(corpus, out, model=MODEL, part_size=3, progress=False)
    # The first commit (blank.png, broken.jpg, clip.avi) is whole and readable.
    assert set(read_corpus(out)["input"]) == {str(corpus / "blank.png"), str(corpus / "clip.avi")}
    assert list(read_corpus(out, errors=True)["input"]) == [str(corpus / "broken.jpg")]
    monkeypatch.setattr(job, "atomic_write", real)
    run_corpus(corpus, out, model=MODEL, part_size=3, progress=False, resume=True)
    assert _row_set(read_corpus(out)) == _row_set(read_corpus(reference))

    def denied(self: Path, *args: Any, **kwargs: Any) -> None:
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "mkdir", denied)
    with pytest.raises(JobError, match=r"readonly.*Permission denied"):
        CorpusJob(corpus, tmp_path / "readonly", model=MODEL, progress=False).run()


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes anywhere")
def test_read_only_folder_is_a_clear_error(corpus: Path, tmp_path: Path) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        with pytest.raises(JobError, match="Permission denied"):
            run_corpus(corpus, folder / "out", model=MODEL, progress=False)
    finally:
        folder.chmod(0o755)


def test_csv_parts_have_the_parquet_rows(corpus: Path, reference: Path, tmp_path: Path) -> None:
    import pandas as pd

    out = tmp_path / "out"
    run_corpus(corpus, out, model=MODEL, part_size=5, progress=False, output_format="csv")
    assert sorted(p.suffix for p in (out / "rows").iterdir()) == [".csv"] * 3
    csv_rows = read_corpus(out)
    parquet_rows = read_corpus(reference)
    assert list(csv_rows.columns) == list(parquet_rows.columns)
    keys = ["input", "frame", "face_id"]
    csv_rows = csv_rows.astype(parquet_rows.dtypes.to_dict()).sort_values(keys, ignore_index=True)
    parquet_rows = parquet_rows.sort_values(keys, ignore_index=True)
    floats = [c for c in parquet_rows.columns if pd.api.types.is_float_dtype(parquet_rows[c])]
    others = [c for c in parquet_rows.columns if c not in floats]
    pd.testing.assert_frame_equal(csv_rows[others], parquet_rows[others])
    # The CSV's floats have 6 decimals.
    np.testing.assert_allclose(csv_rows[floats], parquet_rows[floats], atol=1e-6, rtol=0)


def test_video_without_frames_is_an_error_row_and_the_rest_goes_on(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(EXAMPLES / "single_face.jpg", folder / "a.jpg")
    (folder / "empty.mp4").write_bytes(b"\x00" * 2048)
    listing = tmp_path / "list.txt"
    listing.write_text("in/a.jpg\nin/empty.mp4\nin/gone.jpg\n")
    out = tmp_path / "out"
    summary = run_corpus(listing, out, model=MODEL, progress=False)
    assert summary.failed == 2
    errors = read_corpus(out, errors=True).set_index("input")["error"]
    assert "empty.mp4" in errors[str(folder / "empty.mp4")]
    assert "no such file" in errors[str(folder / "gone.jpg")]
    assert set(read_corpus(out)["input"]) == {str(folder / "a.jpg")}


def test_command_line_runs_resumes_and_refuses(
    corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from affectfpn.cli import main

    out = tmp_path / "out"
    args = ["corpus", str(corpus), "--out", str(out), "-m", MODEL, "-q"]
    assert main(args) == 4  # one unreadable input, listed in OUT/errors
    assert main([*args, "--resume"]) == 0
    capsys.readouterr()
    assert main([*args, "--resume", "--au-threshold", "0.6"]) == 1
    err = capsys.readouterr().err
    assert "--au-threshold 0.6 (the job has 0.5)" in err  # the flag, not the parameter


def _torchrun(corpus: Path, out: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        "2",
        "--master-port",
        str(random.randrange(29600, 29900)),
        "-m",
        "affectfpn",
        "corpus",
        str(corpus),
        "--out",
        str(out),
        "-m",
        MODEL,
        "--part-size",
        "2",
        "--device",
        "cpu",
        "-q",
    ]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)


def test_torchrun_two_processes_give_the_single_process_rows(
    corpus: Path, reference: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    done = _torchrun(corpus, out)
    assert done.returncode in (0, 1), done.stderr[-2000:]  # torchrun reports a rank's 4 as 1
    ledgers = sorted(p.name for p in (out / "_ledger").iterdir())
    assert ledgers == ["rank-00000.jsonl", "rank-00001.jsonl"]
    assert {p.name[:11] for p in (out / "rows").iterdir()} == {"part-r00000", "part-r00001"}
    assert _row_set(read_corpus(out)) == _row_set(read_corpus(reference))
    assert len(read_corpus(out, errors=True)) == 1


def test_an_empty_folder_names_the_fix_in_each_words(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from affectfpn.cli import main
    from affectfpn.errors import InputError

    (tmp_path / "sub").mkdir()
    with pytest.raises(InputError, match=r"pass recursive=True to search sub-folders"):
        list_inputs(tmp_path)
    assert main(["corpus", str(tmp_path), "--out", str(tmp_path / "out"), "-q"]) == 1
    assert "pass -r (--recursive) to search sub-folders" in capsys.readouterr().err
