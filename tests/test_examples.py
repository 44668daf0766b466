"""Run every script in ``examples/`` as a user would, in a process of its own; check its output.

Each example runs once, on a tiny model saved to a temporary folder (``--model``: the default
model it would otherwise load lands later), with a local YuNet file as the face detector and
small inputs (a few photos, every 40th frame of a short video, two training steps), so the whole
file stays around two minutes on one shared core. The children run torch on one thread, forked
from one warm interpreter (tests/_warm.py) so that each skips the start-up of torch and OpenCV.
"""

import csv
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from _warm import RUNNER
from hubserver import LocalHub
from PIL import Image
from safetensors.torch import load_file

from affectfpn import EXPRESSIONS, AffectFPN, AffectFPNConfig
from affectfpn.inference import table_columns

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
#: Every example script and the test that runs it (a new script needs a test).
EXPECTED_EXAMPLES = {
    "quickstart.py",
    "folder_to_csv.py",
    "video_to_csv.py",
    "finetune_folder.py",
    "publish_to_hub.py",
}
TIMEOUT_S = 300


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small three-task model saved as a model folder (what ``--model`` takes)."""
    torch.manual_seed(0)
    config = AffectFPNConfig(backbone="resnet18", fpn_width=16, input_size=(64, 64))
    folder = tmp_path_factory.mktemp("tiny-model")
    AffectFPN(config).eval().save_pretrained(folder)
    return folder


def run_example(
    script: str,
    *args: str | os.PathLike[str],
    cwd: Path,
    shared: Path | None = None,
    env: dict[str, str] | None = None,
) -> str:
    """Run ``examples/<script>`` with ``args`` in ``cwd``; return its stdout (it must succeed)."""
    child_env = dict(os.environ if env is None else env)
    child_env.update({"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "MPLBACKEND": "Agg"})
    if shared is not None:
        child_env["AFFECTFPN_SHARED"] = str(shared)
    proc = RUNNER.run(EXAMPLES / script, args, cwd=cwd, env=child_env, timeout=TIMEOUT_S)
    assert proc.returncode == 0, (
        f"{script} exited with {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    )
    return proc.stdout


def read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        return list(reader.fieldnames or []), list(reader)


def test_every_example_is_tested_and_documented() -> None:
    scripts = {p.name for p in EXAMPLES.glob("*.py") if not p.name.startswith("_")}
    assert scripts == EXPECTED_EXAMPLES
    for name in scripts:
        text = (EXAMPLES / name).read_text(encoding="utf-8")
        # A module docstring that says how to run the script, and the --model option.
        assert text.startswith('"""'), name
        docstring = text[3 : text.index('"""', 3)]
        assert f"python examples/{name}" in docstring, name
        options = set(re.findall(r'add_argument\(\s*"(--[\w-]+)"', text))
        assert "--model" in options, name
        # Every option the docstring's commands use exists.
        for line in docstring.splitlines():
            if f"python examples/{name}" in line:
                used = set(re.findall(r"(--[\w-]+)", line))
                assert used <= options, f"{name}: {sorted(used - options)} in {line.strip()!r}"


@pytest.mark.shared
def test_quickstart_prints_every_face_of_the_default_photo(
    tiny_model_dir: Path, shared_dir: Path, yunet_path: Path, tmp_path: Path
) -> None:
    # No --image: the default photo comes from $AFFECTFPN_SHARED.
    out = run_example(
        "quickstart.py",
        "--model",
        tiny_model_dir,
        "--detector",
        yunet_path,
        cwd=tmp_path,
        shared=shared_dir,
    )
    lines = out.strip().splitlines()
    assert lines[0].startswith(str(shared_dir / "data" / "samples" / "single_face.jpg"))
    assert "1 face(s), image 572x562" in lines[0]
    assert len(lines) == 2
    face = lines[1]
    assert face.startswith("face 0  ")
    assert any(f"  {name} (" in face for name in EXPRESSIONS)
    valence = float(face.split("valence ")[1].split()[0])
    arousal = float(face.split("arousal ")[1].split()[0])
    assert -1.0 <= valence <= 1.0
    assert -1.0 <= arousal <= 1.0
    assert "active AUs: " in face


@pytest.mark.shared
def test_folder_to_csv_writes_a_row_per_face(
    tiny_model_dir: Path, samples_dir: Path, yunet_path: Path, tmp_path: Path
) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("single_face.jpg", "multi_face.jpg", "free-mountain-vector-01.jpg"):
        (photos / name).write_bytes((samples_dir / name).read_bytes())
    (photos / "broken.jpg").write_bytes(b"not an image")  # skipped with a warning
    output = tmp_path / "out" / "faces.csv"
    output.parent.mkdir()

    out = run_example(
        "folder_to_csv.py",
        "--model",
        tiny_model_dir,
        "--input",
        photos,
        "--output",
        output,
        "--detector",
        yunet_path,
        cwd=tmp_path,
    )
    assert f"3 image(s), 6 face(s): 7 row(s) written to {output}" in out

    header, rows = read_csv(output)
    assert header == table_columns()
    by_image: dict[str, list[dict[str, str]]] = {}
    for row in rows:
        by_image.setdefault(Path(row["source"]).name, []).append(row)
    assert sorted(by_image) == ["free-mountain-vector-01.jpg", "multi_face.jpg", "single_face.jpg"]
    assert [r["face_id"] for r in by_image["multi_face.jpg"]] == ["0", "1", "2", "3", "4"]
    assert [(r["face_id"], r["success"]) for r in by_image["single_face.jpg"]] == [("0", "1")]
    (no_face,) = by_image["free-mountain-vector-01.jpg"]
    assert (no_face["face_id"], no_face["success"], no_face["valence"]) == ("-1", "0", "")
    for row in rows:
        if row["success"] != "1":
            continue
        assert -1 <= float(row["valence"]) <= 1
        assert -1 <= float(row["arousal"]) <= 1
        probabilities = [float(row[f"expr_{name}"]) for name in EXPRESSIONS]
        assert sum(probabilities) == pytest.approx(1.0, abs=1e-4)
        assert row["expression"] == EXPRESSIONS[int(np.argmax(probabilities))]
        assert float(row["x2"]) > float(row["x1"])
        assert float(row["y2"]) > float(row["y1"])


@pytest.mark.shared
def test_video_to_csv_writes_selected_frames_and_a_plot(
    tiny_model_dir: Path, samples_dir: Path, yunet_path: Path, tmp_path: Path
) -> None:
    table, plot = tmp_path / "video.csv", tmp_path / "va.png"
    out = run_example(
        "video_to_csv.py",
        "--model",
        tiny_model_dir,
        "--video",
        samples_dir / "face_noface.mov",  # 169 frames: a face, then none
        "--every-n",
        "40",
        "--output",
        table,
        "--plot",
        plot,
        "--detector",
        yunet_path,
        cwd=tmp_path,
    )
    assert "5 frame(s) processed (every 40)" in out

    header, rows = read_csv(table)
    assert header[:2] == ["frame", "timestamp"]
    assert header[2:] == table_columns()
    frames = [int(r["frame"]) for r in rows]
    assert sorted(set(frames)) == [0, 40, 80, 120, 160]
    times = [float(r["timestamp"]) for r in rows]
    assert times == sorted(times)
    assert times[0] == 0.0
    with_face = {int(r["frame"]) for r in rows if r["success"] == "1"}
    without = {int(r["frame"]) for r in rows if r["success"] == "0"}
    assert 0 in with_face
    assert 160 in without
    assert f"{len(with_face)} with a face" in out
    assert {r["face_id"] for r in rows if r["success"] == "1"} == {"0"}  # one track

    assert f"plot: {plot}" in out
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(plot) as image:
        assert min(image.size) > 100


@pytest.mark.shared
def _posed_folders(samples_dir: Path, root: Path, size: int | None) -> Path:
    """The four posed sample photos in expression class folders, twice (b: mirrored), for
    train and val; resized to ``size`` px (face crops) or left whole (photos)."""
    photos = {
        "surprise": "0-f1-su-ph.jpg",
        "happy": "0-f15-hao-ph.jpg",
        "angry": "15-f13-anc-ph.jpg",
        "disgust": "45-m7-di-ph.jpg",
    }
    for split in ("train", "val"):
        for label, name in photos.items():
            folder = root / split / label
            folder.mkdir(parents=True)
            with Image.open(samples_dir / name) as image:
                picture = image.convert("RGB")
            if size is not None:
                picture = picture.resize((size, size))
            picture.save(folder / "a.jpg")
            picture.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(folder / "b.jpg")
    return root


def test_finetune_folder_trains_from_the_given_model(
    tiny_model_dir: Path, samples_dir: Path, tmp_path: Path
) -> None:
    data = _posed_folders(samples_dir, tmp_path / "faces", 96)
    output = tmp_path / "run"

    out = run_example(
        "finetune_folder.py",
        "--model",
        tiny_model_dir,
        "--data",
        data,
        "--output",
        output,
        "--epochs",
        "1",
        "--steps",
        "2",
        "--batch-size",
        "4",
        "--replay",
        "0",
        cwd=tmp_path,
    )
    assert "trained 1 epoch(s), 8 faces" in out
    start_score = float(out.split("validation score of the start: ")[1].split()[0])
    best_score = float(out.split("validation score of the best epoch: ")[1].split()[0])
    assert best_score >= start_score  # never worse than the start on the validation faces
    assert f"fine-tuned model: {output / 'best'}" in out
    # the start's heads are all kept, the ones the folders do not label held to it
    assert "reloaded: tasks ['va', 'expression', 'au']" in out

    records = [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [0, 1]  # epoch 0: the start, scored
    assert records[1]["train_samples"] == 8
    config = json.loads((output / "best" / "config.json").read_text())
    assert config["tasks"] == ["va", "expression", "au"]
    assert config["input_size"] == [64, 64]  # the starting model's architecture is kept
    before = load_file(str(tiny_model_dir / "model.safetensors"))
    after = load_file(str(output / "best" / "model.safetensors"))
    assert set(after) == set(before)
    best_epoch = json.loads(out.strip().splitlines()[-1])["best_epoch"]
    key = "heads.expression.weight"
    if best_epoch == 0:  # no epoch beat the start: best/ is the start
        assert torch.equal(before[key], after[key])
    else:  # started from the given weights, and two steps changed them a little
        assert not torch.equal(before[key], after[key])
        assert (before[key] - after[key]).abs().max() < 0.01


def test_finetune_folder_cuts_the_faces_out_of_photos_first(
    tiny_model_dir: Path, samples_dir: Path, tmp_path: Path
) -> None:
    photos = _posed_folders(samples_dir, tmp_path / "photos", None)
    output = tmp_path / "run"
    out = run_example(
        "finetune_folder.py",
        "--model",
        tiny_model_dir,
        "--photos",
        photos,
        "--output",
        output,
        "--epochs",
        "1",
        "--steps",
        "1",
        "--batch-size",
        "4",
        "--replay",
        "0",
        cwd=tmp_path,
    )
    assert f"16 photos, 16 face crops written to {output / 'faces'}" in out
    crop = output / "faces" / "train" / "happy" / "a.png"
    with Image.open(crop) as image:
        assert image.size == (64, 64)  # the start model's input size
    assert "trained 1 epoch(s), 4 faces" in out


def test_publish_to_hub_pushes_and_loads_back_the_pinned_commit(
    tiny_model_dir: Path, local_hub: LocalHub, tmp_path: Path
) -> None:
    # local_hub points huggingface_hub, and the environment the child inherits (HF_ENDPOINT,
    # HF_HOME, HF_HUB_DISABLE_XET), at a local server.
    assert os.environ["HF_ENDPOINT"] == local_hub.endpoint
    repo = "someone/tiny-affect"
    save_dir = tmp_path / "hub-ready"
    out = run_example(
        "publish_to_hub.py",
        "--model",
        tiny_model_dir,
        "--repo-id",
        repo,
        "--save-dir",
        save_dir,
        "--metrics",
        '{"my-test-set": {"accuracy": 0.5}}',
        cwd=tmp_path,
    )
    assert local_hub.repo_exists(repo)
    commit = local_hub.commit_sha(repo)
    assert f"pushed {repo} at commit {commit}" in out
    assert f"loaded {repo}@{commit}: same outputs: True" in out
    # The test's own comparison (the script's printed verdict alone could be wrong): the pinned
    # commit, downloaded here, computes what the model it was made from computes.
    pushed = AffectFPN.from_pretrained(repo, revision=commit).eval()
    original = AffectFPN.from_pretrained(tiny_model_dir).eval()
    assert pushed.config == original.config
    x = torch.rand(3, 3, *original.config.input_size, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        before, after = original(x), pushed(x)
        for name in ("va", "expression", "au"):
            a, b = getattr(before, name), getattr(after, name)
            assert a is not None
            assert b is not None
            assert torch.equal(a, b), name
        # the tiny model has no per-face temperature, before or after the round trip
        assert before.expression_temperature is None
        assert after.expression_temperature is None

    files = local_hub.files(repo)
    assert set(files) >= {"config.json", "model.safetensors", "README.md"}
    assert sorted(p.name for p in save_dir.iterdir()) == [
        "README.md",
        "config.json",
        "model.safetensors",
    ]
    assert files["config.json"] == (tiny_model_dir / "config.json").read_bytes()
    assert "| my-test-set | accuracy | 0.5000 |" in files["README.md"].decode()
    assert files["README.md"] == (save_dir / "README.md").read_bytes()
    assert f'AffectFPN.from_pretrained("{repo}")' in files["README.md"].decode()
