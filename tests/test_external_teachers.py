"""Tests of the external teachers (affectfpn.recipes.teachers: MediaPipe runner, blendshape
scores, the blendshape -> AU mapping and its calibration, OpenFace, label CSVs), the standalone
blendshapes.py script, ``affectfpn teachers`` and the old ``external_teachers`` names.

CI has no mediapipe: the launcher is tested with a fake interpreter that writes what the real
script would. ``AFFECTFPN_MEDIAPIPE_PYTHON`` (a Python with mediapipe==1.2.3) enables one real
run on ``../shared``.
"""

import csv
import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from _fake_data import write_image, write_image_folder
from PIL import Image

from affectfpn.errors import ConfigError, DatasetError
from affectfpn.labels import ACTION_UNITS, EXPRESSIONS
from affectfpn.recipes import blendshapes as bs
from affectfpn.recipes import teachers as et
from affectfpn.recipes.datasets import ImageFolderExpressions, LabelTable, WithPseudoLabels
from affectfpn.recipes.teachers import calibration, mediapipe_runner

AU = {name: j for j, name in enumerate(ACTION_UNITS)}
EX = {name: j for j, name in enumerate(EXPRESSIONS)}


def _scores(rows: dict[str, dict[str, float] | None]) -> et.BlendshapeScores:
    """BlendshapeScores with the given shapes set (others 0); ``None``: no face found."""
    keys = list(rows)
    found = np.array([rows[k] is not None for k in keys])
    table = np.zeros((len(keys), len(bs.BLENDSHAPE_NAMES)), np.float32)
    for i, k in enumerate(keys):
        values = rows[k]
        if values is None:
            table[i] = np.nan
            continue
        for name, v in values.items():
            table[i, bs.BLENDSHAPE_NAMES.index(name)] = v
    return et.BlendshapeScores(keys, found, table)


def _write_scores_csv(path: Path, rows: dict[str, dict[str, float] | None]) -> None:
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(bs.CSV_COLUMNS)
        for key, values in rows.items():
            if values is None:
                writer.writerow([key, 0, ""] + [""] * len(bs.BLENDSHAPE_NAMES))
            else:
                cells = [values.get(n, 0.0) for n in bs.BLENDSHAPE_NAMES]
                writer.writerow([key, 1, "", *cells])


# ----------------------------------------------------------------------------- mapping
def test_mapping_combines_and_calibrates() -> None:
    m = et.AUMapping("AU12", ("mouthSmileLeft", "mouthSmileRight"), slope=2.0, intercept=-1.0)
    s = _scores({"a": {"mouthSmileLeft": 0.2, "mouthSmileRight": 0.6}})
    raw = m.raw(s)
    assert raw[0] == pytest.approx(0.4)
    expected = 1 / (1 + math.exp(-(2.0 * math.log(0.4 / 0.6) - 1.0)))
    assert m.probability(raw)[0] == pytest.approx(expected, rel=1e-5)
    m_max = et.AUMapping("AU12", ("mouthSmileLeft", "mouthSmileRight"), combine="max")
    assert m_max.raw(s)[0] == pytest.approx(0.6)
    # slope 1, intercept 0 is the identity; the clip keeps 0 and 1 finite
    ident = et.AUMapping("AU1", ("browInnerUp",))
    p = ident.probability(np.array([0.0, 0.3, 1.0], np.float32))
    assert p[1] == pytest.approx(0.3, rel=1e-5)
    assert 0 < p[0] < 1e-5
    assert 1 - 1e-5 < p[2] <= 1


def test_mapping_rejects_bad_entries() -> None:
    with pytest.raises(ConfigError, match="AU9"):
        et.AUMapping("AU9", ("noseSneerLeft",))
    with pytest.raises(ConfigError, match="unknown blendshape"):
        et.AUMapping("AU12", ("smile",))
    with pytest.raises(ConfigError, match="slope"):
        et.AUMapping("AU12", ("mouthSmileLeft",), slope=-1.0)
    with pytest.raises(ConfigError, match="twice"):
        et.mapping_by_au([et.AUMapping("AU1", ("browInnerUp",))] * 2)


def test_default_mapping_is_explicit_and_documented() -> None:
    by_au = et.mapping_by_au()
    # every mapped unit has weak labels to be measured against, and AU24 has no shape
    assert set(by_au) <= set(et.EXPRESSION_IMPLIED_AUS)
    assert "AU24" not in by_au
    assert by_au["AU12"].blendshapes == ("mouthSmileLeft", "mouthSmileRight")
    assert by_au["AU12"].kept
    assert by_au["AU12"].slope > 0
    kept = et.kept_units()
    assert kept == [au for au in ACTION_UNITS if au in kept]  # ACTION_UNITS order
    assert "AU6" not in kept  # the cheek-raise shape is flat on FER2013
    doc = Path(__file__).resolve().parents[1] / "docs" / "action-units.md"
    text = doc.read_text(encoding="utf-8")
    for m in et.BLENDSHAPE_AU_MAP:
        assert m.au in text
        assert all(b in text for b in m.blendshapes)


def test_unfound_faces_and_unmapped_units_are_masked() -> None:
    s = _scores(
        {
            "smile": {"mouthSmileLeft": 0.9, "mouthSmileRight": 0.9},
            "none": None,
            "still": {},
        }
    )
    probs, mask = et.au_probabilities(s, units=["AU12", "AU26"])
    assert mask[0].tolist() == [j in (AU["AU12"], AU["AU26"]) for j in range(12)]
    assert not mask[1].any()  # no face: no label at all, not "absent"
    assert mask[2, AU["AU12"]]
    assert probs[2, AU["AU12"]] < probs[0, AU["AU12"]]
    assert probs[0, AU["AU12"]] > 0.5
    assert (probs[~mask] == 0).all()
    # default units: the kept ones only; AU24 (no blendshape) and AU6 (not kept) stay masked
    _, mask = et.au_probabilities(s)
    assert mask[0].tolist() == [au in et.kept_units() for au in ACTION_UNITS]
    assert not mask[:, AU["AU24"]].any()
    assert not mask[:, AU["AU6"]].any()
    with pytest.raises(ConfigError, match="AU24"):
        et.au_probabilities(s, units=["AU24"])


# ----------------------------------------------------------------------------- blendshape CSV
def test_read_blendshape_csv_and_errors(tmp_path: Path) -> None:
    path = tmp_path / "scores.csv"
    _write_scores_csv(path, {"happy/a.jpg": {"jawOpen": 0.25}, "sad/b.jpg": None})
    s = et.read_blendshape_csv(path)
    assert s.keys == ["happy/a.jpg", "sad/b.jpg"]
    assert s.found.tolist() == [True, False]
    assert s.column("jawOpen")[0] == pytest.approx(0.25)
    assert np.isnan(s.scores[1]).all()
    assert s.found_rate == 0.5

    text = path.read_text(encoding="utf-8").splitlines()
    bad = tmp_path / "bad.csv"
    bad.write_text("\n".join([text[0], text[1].replace(",0.25,", ",1.5,")]) + "\n")
    with pytest.raises(DatasetError, match=r"bad\.csv:2: .*outside"):
        et.read_blendshape_csv(bad)
    bad.write_text("\n".join([text[0], text[1], text[1]]) + "\n")
    with pytest.raises(DatasetError, match="already on line 2"):
        et.read_blendshape_csv(bad)
    bad.write_text("key,face_found\nx,1\n")
    with pytest.raises(DatasetError, match="missing column"):
        et.read_blendshape_csv(bad)


@pytest.mark.parametrize("suffix", [".csv", ".json"])
def test_blendshape_table_round_trip(tmp_path: Path, suffix: str) -> None:
    scores = tmp_path / "scores.csv"
    rows: dict[str, dict[str, float] | None] = {
        "happy/a.jpg": {"mouthSmileLeft": 0.8, "mouthSmileRight": 0.7, "jawOpen": 0.3},
        "neutral/b.jpg": {"mouthSmileLeft": 0.01, "mouthSmileRight": 0.02},
        "fear/c.jpg": None,
    }
    _write_scores_csv(scores, rows)
    table = et.blendshape_table(scores, key_prefix="fer:")
    assert table.key_list == ["fer:happy/a.jpg", "fer:neutral/b.jpg", "fer:fear/c.jpg"]
    probs, mask = et.au_probabilities(et.read_blendshape_csv(scores))
    out = tmp_path / f"table{suffix}"
    table.save(out)
    back = LabelTable.load(out)
    assert back.key_list == table.key_list
    np.testing.assert_array_equal(back.labels.au_mask, mask)
    np.testing.assert_allclose(back.labels.au, probs, rtol=1e-6)
    assert not back.labels.au_mask[2].any()
    assert not back.labels.expression_mask.any()
    assert not back.labels.va_mask.any()
    if suffix == ".csv":
        header, first = out.read_text(encoding="utf-8").splitlines()[:2]
        cells = dict(zip(header.split(","), first.split(","), strict=True))
        assert cells["AU24"] == ""
        assert cells["AU6"] == ""
        assert float(cells["AU12"]) > 0.5

    dropped = et.blendshape_table(scores, drop_unfound=True)
    assert dropped.key_list == ["happy/a.jpg", "neutral/b.jpg"]


def test_table_fills_only_measured_units_of_an_image_folder(tmp_path: Path) -> None:
    """The teacher's keys match ImageFolderExpressions' keys; masked units stay unlabelled."""
    root = tmp_path / "fer"
    write_image_folder(root, {"happy": 2, "neutral": 1})
    data = ImageFolderExpressions(root)
    assert [k for k, _ in bs.walk_images(root)] == data.keys
    scores = tmp_path / "scores.csv"
    rows: dict[str, dict[str, float] | None] = {
        data.keys[0]: {"mouthSmileLeft": 0.9, "mouthSmileRight": 0.9},
        data.keys[1]: None,
        data.keys[2]: {},
    }
    _write_scores_csv(scores, rows)
    filled = WithPseudoLabels(data, et.blendshape_table(scores))
    masks = filled.label_arrays().au_mask
    kept = [au in et.kept_units() for au in ACTION_UNITS]
    assert masks[0].tolist() == kept
    assert not masks[1].any()
    assert masks[2].tolist() == kept
    assert filled.label_arrays().expression_mask.all()  # the real labels stay
    sample = filled[0]
    assert sample["au"][AU["AU12"]] > 0.5
    assert not sample["au_mask"][AU["AU24"]]


# ----------------------------------------------------------------------------- measuring
def test_roc_auc_matches_sklearn() -> None:
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 300)
    s = np.round(rng.random(300) + 0.5 * y, 1)  # many ties
    assert et.roc_auc(s, y) == pytest.approx(metrics.roc_auc_score(y, s))
    assert et.roc_auc(np.arange(4.0), np.array([0, 0, 1, 1])) == 1.0
    assert et.roc_auc(np.ones(4), np.array([0, 1, 0, 1])) == 0.5
    assert math.isnan(et.roc_auc(np.arange(3.0), np.ones(3)))


def test_implied_labels() -> None:
    e = np.array([EX["Happiness"], EX["Neutral"], EX["Sadness"], -1])
    np.testing.assert_array_equal(et.implied_labels("AU12", e)[:3], [1, 0, 0])
    assert np.isnan(et.implied_labels("AU12", e)[3])
    au1 = et.implied_labels("AU1", np.array([EX["Surprise"], EX["Fear"], EX["Anger"]]))
    assert au1[0] == 1
    assert np.isnan(au1[1])  # fear raises the inner brows too: it says nothing of AU1
    assert au1[2] == 0


def test_fit_calibration_and_evaluation_on_synthetic_faces() -> None:
    rng = np.random.default_rng(1)
    n = 400
    expressions = rng.choice([EX["Happiness"], EX["Neutral"], EX["Sadness"]], n)
    happy = expressions == EX["Happiness"]
    # smile scores: around 0.6 on happy faces, 0.05 elsewhere
    smile = np.where(happy, rng.beta(6, 4, n), rng.beta(1, 19, n))
    rows: dict[str, dict[str, float] | None] = {
        f"k{i}": {"mouthSmileLeft": float(v), "mouthSmileRight": float(v)}
        for i, v in enumerate(smile)
    }
    rows["k0"] = None
    s = _scores(rows)
    start = (et.AUMapping("AU12", ("mouthSmileLeft", "mouthSmileRight"), slope=1.0),)
    fitted = et.fit_calibration(s, expressions, start)[0]
    assert fitted.slope > 0
    assert (fitted.slope, fitted.intercept) != (1.0, 0.0)
    result = et.evaluate_mapping(s, expressions, (fitted,))["AU12"]
    assert result["auc"] > 0.95
    assert result["n_pos"] + result["n_neg"] == n - 1  # the unfound face is left out
    # balanced calibration: p >= 0.5 on most positives and few negatives
    assert result["active_pos"] > 0.9
    assert result["active_neg"] < 0.1
    assert "| AU12 |" in et.format_evaluation({"AU12": result}, (fitted,))


def test_logistic_fit_recovers_parameters() -> None:
    rng = np.random.default_rng(2)
    x = rng.normal(size=20000)
    y = (rng.random(20000) < 1 / (1 + np.exp(-(1.5 * x - 0.5)))).astype(float)
    # balanced weights shift the intercept by the log prior odds
    prior = math.log(y.mean() / (1 - y.mean()))
    slope, intercept = calibration._logistic_fit(x, y)
    assert slope == pytest.approx(1.5, abs=0.1)
    assert intercept + prior == pytest.approx(-0.5, abs=0.1)


# ----------------------------------------------------------------------------- OpenFace
def _openface_csv(path: Path, rows: list[dict[str, float]], extra: str = "") -> None:
    cols = ["frame", "face_id", "timestamp", "confidence", "success", "AU01_r", "AU01_c"]
    cols += ["AU12_r", "AU12_c", "AU28_c", *([extra] if extra else [])]
    lines = [", ".join(cols)]
    for r in rows:
        lines.append(", ".join(str(r.get(c, 0)) for c in cols))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def test_openface_table_keys_masks_and_errors(tmp_path: Path) -> None:
    path = tmp_path / "video7.csv"
    _openface_csv(
        path,
        [
            {"frame": 1, "confidence": 0.98, "success": 1, "AU01_c": 1, "AU12_c": 0},
            {"frame": 2, "confidence": 0.1, "success": 0, "AU01_c": 1, "AU12_c": 1},
            {"frame": 3, "confidence": 0.6, "success": 1, "AU01_c": 0, "AU12_c": 1},
        ],
    )
    table = et.openface_table(path)
    assert table.key_list == ["video7/00001", "video7/00002", "video7/00003"]
    lab = table.labels
    assert lab.au_mask[0].tolist() == [au in ("AU1", "AU12") for au in ACTION_UNITS]
    assert lab.au[0, AU["AU1"]] == 1
    assert lab.au[0, AU["AU12"]] == 0
    assert not lab.au_mask[1].any()  # success 0: no label
    assert not et.openface_table(path, min_confidence=0.7).labels.au_mask[2].any()
    named = et.openface_table(path, video="v", key_format="{video}#{face_id}@{frame}")
    assert named.key_list[0] == "v#0@1"

    _openface_csv(path, [{"frame": 1, "face_id": 0}, {"frame": 1, "face_id": 1}])
    with pytest.raises(DatasetError, match="face_id"):
        et.openface_table(path)
    assert et.openface_table(path, key_format="{video}/{frame:05d}#{face_id}").key_list == [
        "video7/00001#0",
        "video7/00001#1",
    ]
    _openface_csv(path, [{"frame": 1, "success": 1, "AU12_c": 0.5}])
    with pytest.raises(DatasetError, match="0 or 1"):
        et.openface_table(path)
    path.write_text("timestamp, AU12_c\n0, 1\n")
    with pytest.raises(DatasetError, match="frame"):
        et.openface_table(path)


@pytest.mark.shared
def test_openface_sample_from_shared(samples_dir: Path, tmp_path: Path) -> None:
    path = samples_dir / "OpenFace_Test.csv"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    table = et.openface_table(path)
    with open(path, encoding="utf-8", newline="") as f:
        rows = [{k.strip(): v.strip() for k, v in r.items()} for r in csv.DictReader(f)]
    assert len(table) == len(rows) == 100
    assert table.key_list[0] == "OpenFace_Test/00001"
    lab = table.labels
    has = {"AU1", "AU2", "AU4", "AU6", "AU7", "AU10", "AU12", "AU15", "AU23", "AU25", "AU26"}
    ok = np.array([float(r["success"]) == 1 for r in rows])
    assert lab.au_mask[ok].all(axis=0).tolist() == [au in has for au in ACTION_UNITS]
    assert not lab.au_mask[~ok].any()
    au12 = np.array([float(r["AU12_c"]) for r in rows], np.float32)
    np.testing.assert_array_equal(lab.au[ok, AU["AU12"]], au12[ok])
    table.save(tmp_path / "of.csv")
    back = LabelTable.load(tmp_path / "of.csv")
    np.testing.assert_array_equal(back.labels.au_mask, lab.au_mask)


# ----------------------------------------------------------------------------- label CSVs
def test_label_csv_and_dataset_tables(tmp_path: Path) -> None:
    write_image(tmp_path / "a.jpg")
    write_image(tmp_path / "b.jpg", seed=1)
    (tmp_path / "labels.csv").write_text(
        "path,expression,AU01_c,AU12,AU26\na.jpg,happy,1,0.75,\nb.jpg,,-1,0,1\n"
    )
    table = et.label_csv_table(tmp_path / "labels.csv")
    assert table.key_list == ["a.jpg", "b.jpg"]
    lab = table.labels
    assert lab.au_mask[0].tolist() == [au in ("AU1", "AU12") for au in ACTION_UNITS]
    assert lab.au[0, AU["AU12"]] == pytest.approx(0.75)
    assert lab.au_mask[1].tolist() == [au in ("AU12", "AU26") for au in ACTION_UNITS]
    assert not lab.expression_mask.any()  # tasks=("au",) by default
    both = et.label_csv_table(tmp_path / "labels.csv", tasks=("au", "expression"))
    assert both.labels.expression_mask.tolist() == [True, False]
    assert not et.label_csv_table(
        tmp_path / "labels.csv", tasks=("expression",)
    ).labels.au_mask.any()
    with pytest.raises(ConfigError, match="unknown task"):
        et.label_csv_table(tmp_path / "labels.csv", tasks=("aus",))


# ----------------------------------------------------------------------------- the script
def test_prepare_face_upscales_and_pads() -> None:
    face = Image.fromarray(np.full((48, 48), 10, np.uint8), "L")
    pixels = bs.prepare_face(face, size=256, pad=0.3)
    border = round(0.3 * 256)
    assert pixels.shape == (256 + 2 * border, 256 + 2 * border, 3)
    assert pixels.dtype == np.uint8
    assert (pixels[:border] == 128).all()
    assert (pixels[:, -border:] == 128).all()
    assert (pixels[border + 10 : border + 240, border + 10 : border + 240] == 10).all()
    wide = bs.prepare_face(Image.new("RGB", (100, 50), (0, 255, 0)), size=64, pad=0.0)
    assert wide.shape == (32, 64, 3)
    assert (wide[..., 0] == wide[..., 1]).all()
    with pytest.raises(ValueError, match="size"):
        bs.prepare_face(face, size=4)


def test_script_imports_neither_torch_nor_affectfpn() -> None:
    code = textwrap.dedent(
        f"""
        import importlib.util, sys
        spec = importlib.util.spec_from_file_location("bs", {str(et.BLENDSHAPE_SCRIPT)!r})
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        print(sorted(m for m in ("torch", "cv2", "affectfpn", "mediapipe") if m in sys.modules))
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
    helped = subprocess.run(
        [sys.executable, str(et.BLENDSHAPE_SCRIPT), "--help"], capture_output=True, text=True
    )
    assert helped.returncode == 0
    assert "--workers" in helped.stdout


def test_read_list(tmp_path: Path) -> None:
    (tmp_path / "list.csv").write_text("path,key\nimgs/a.jpg,k1\n/abs/b.jpg,\n")
    rows = bs.read_list(tmp_path / "list.csv", None)
    assert rows == [("k1", str(tmp_path / "imgs/a.jpg")), ("/abs/b.jpg", "/abs/b.jpg")]
    (tmp_path / "list.csv").write_text("path,key\na.jpg,k\nb.jpg,k\n")
    with pytest.raises(ValueError, match="more than once"):
        bs.read_list(tmp_path / "list.csv", None)


_FAKE_PYTHON = """#!{python}
# A stand-in for a Python with mediapipe: checks its arguments, writes a plausible CSV.
import csv, json, sys
args = sys.argv[1:]
assert args[0].endswith("blendshapes.py"), args
opts = dict(zip(args[1::2], args[2::2]))
json.dump(opts, open(opts["--out"] + ".args.json", "w"))
if "FAIL" in open(opts["--model"]).read():
    print("ModuleNotFoundError: No module named 'mediapipe'", file=sys.stderr)
    sys.exit(3)
names = {names!r}
with open(opts["--list"], newline="") as f:
    items = [(r["key"], r["path"]) for r in csv.DictReader(f)]
with open(opts["--out"], "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["key", "face_found", "error", *names])
    for i, (key, path) in enumerate(items):
        open(path, "rb").close()
        if key.startswith("neutral/"):
            w.writerow([key, 0, ""] + [""] * len(names))
        else:
            w.writerow([key, 1, ""] + [0.8 if n.startswith("mouthSmile") else 0.01 for n in names])
"""


def test_launcher_runs_the_script_with_another_python(tmp_path: Path) -> None:
    fake = tmp_path / "fake-python"
    fake.write_text(_FAKE_PYTHON.format(python=sys.executable, names=bs.BLENDSHAPE_NAMES))
    fake.chmod(0o755)
    model = tmp_path / "face_landmarker.task"
    model.write_text("not a model")
    root = tmp_path / "fer" / "val"
    write_image_folder(root, {"happy": 2, "neutral": 1})

    out = et.run_blendshape_teacher(
        tmp_path / "out" / "scores.csv",
        root=root,
        python_executable=fake,
        model=model,
        workers=2,
        size=128,
    )
    args = json.loads(Path(f"{out}.args.json").read_text())
    assert args["--model"] == str(model)
    assert args["--workers"] == "2"
    assert args["--size"] == "128"
    s = et.read_blendshape_csv(out)
    assert s.keys == ImageFolderExpressions(root).keys
    assert s.found.tolist() == [True, True, False]
    table = et.blendshape_table(out)
    assert table.labels.au_mask[:2, AU["AU12"]].all()
    assert not table.labels.au_mask[2].any()

    files = {"x": root / "happy" / "img_000.jpg"}
    assert et.read_blendshape_csv(
        et.run_blendshape_teacher(tmp_path / "f.csv", files=files, python_executable=fake,
                                  model=model)
    ).keys == ["x"]  # fmt: skip

    model.write_text("FAIL")
    with pytest.raises(RuntimeError, match=r"exit 3.*\n.*No module named 'mediapipe'"):
        et.run_blendshape_teacher(tmp_path / "g.csv", files=files, python_executable=fake,
                                  model=model)  # fmt: skip
    with pytest.raises(ConfigError, match="exactly one"):
        et.run_blendshape_teacher(tmp_path / "h.csv", root=root, files=files, model=model)
    with pytest.raises(ConfigError, match="not found"):
        et.run_blendshape_teacher(tmp_path / "h.csv", files=files, model=tmp_path / "missing.task")


@pytest.mark.shared
def test_real_mediapipe_teacher(shared_dir: Path, tmp_path: Path) -> None:
    """Runs only with AFFECTFPN_MEDIAPIPE_PYTHON: a Python that has mediapipe==1.2.3."""
    python = os.environ.get("AFFECTFPN_MEDIAPIPE_PYTHON")
    if not python:
        pytest.skip("set AFFECTFPN_MEDIAPIPE_PYTHON to a Python with mediapipe==1.2.3")
    model = shared_dir / et.DEFAULT_LANDMARKER
    files = {
        "smile": shared_dir / "data" / "samples" / "single_face.jpg",
        "landscape": shared_dir / "data" / "samples" / "free-mountain-vector-01.jpg",
    }
    out = et.run_blendshape_teacher(
        tmp_path / "s.csv", files=files, python_executable=python, model=model
    )
    s = et.read_blendshape_csv(out)
    assert s.found.tolist() == [True, False]
    probs, mask = et.au_probabilities(s)
    assert mask[0, AU["AU12"]]
    assert probs[0, AU["AU12"]] > 0.5
    assert not mask[1].any()


def test_the_standalone_script_reads_the_same_image_endings_as_the_datasets() -> None:
    from affectfpn.data import common as _data_common
    from affectfpn.recipes import blendshapes

    assert blendshapes.IMAGE_EXTENSIONS == _data_common.IMAGE_EXTENSIONS


# ----------------------------------------------------------------------------- MediaPipe set-up
def _fake_python(tmp_path: Path) -> Path:
    fake = tmp_path / "fake-python"
    fake.write_text(_FAKE_PYTHON.format(python=sys.executable, names=bs.BLENDSHAPE_NAMES))
    fake.chmod(0o755)
    return fake


def test_the_landmarker_is_given_or_found_through_the_shared_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No path into the source checkout: without model= and without $AFFECTFPN_SHARED the
    runner says what to pass (even where ../shared beside the checkout has the file)."""
    monkeypatch.delenv("AFFECTFPN_SHARED", raising=False)
    with pytest.raises(ConfigError, match=r"model=.*AFFECTFPN_SHARED"):
        mediapipe_runner.landmarker_path(None)
    image = tmp_path / "a.jpg"
    write_image(image)
    with pytest.raises(ConfigError, match="no Face Landmarker model given"):
        et.run_blendshape_teacher(tmp_path / "s.csv", files={"a": image})
    shared = tmp_path / "shared"
    bundle = shared / et.DEFAULT_LANDMARKER
    bundle.parent.mkdir(parents=True)
    bundle.write_text("not a model")
    monkeypatch.setenv("AFFECTFPN_SHARED", str(shared))
    assert mediapipe_runner.landmarker_path(None) == str(bundle)
    assert mediapipe_runner.landmarker_path(image) == str(image)  # an explicit path wins
    with pytest.raises(ConfigError, match="not found"):
        mediapipe_runner.landmarker_path(tmp_path / "missing.task")


def test_the_mediapipe_python_comes_from_its_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = _fake_python(tmp_path)
    model = tmp_path / "face_landmarker.task"
    model.write_text("not a model")
    files = {"happy/x": tmp_path / "x.jpg"}
    write_image(files["happy/x"])
    monkeypatch.setenv("AFFECTFPN_MEDIAPIPE_PYTHON", str(fake))
    assert mediapipe_runner.mediapipe_python() == str(fake)
    assert mediapipe_runner.mediapipe_python("/other/python") == "/other/python"
    out = et.run_blendshape_teacher(tmp_path / "s.csv", files=files, model=model)
    assert Path(f"{out}.args.json").is_file()  # the fake ran, not this Python
    assert et.read_blendshape_csv(out).found.tolist() == [True]
    monkeypatch.delenv("AFFECTFPN_MEDIAPIPE_PYTHON")
    assert mediapipe_runner.mediapipe_python() == sys.executable


def test_the_old_module_only_re_exports() -> None:
    """``affectfpn.recipes.external_teachers`` keeps its public names, the same objects as in
    their new homes, and holds no logic of its own (only the alias ``main``)."""
    import ast
    import inspect

    from affectfpn.recipes import agreement, external_teachers

    for name in external_teachers.__all__:
        if name == "main":
            continue
        home = agreement if name in agreement.__all__ else et
        assert getattr(external_teachers, name) is getattr(home, name), name
    tree = ast.parse(inspect.getsource(external_teachers))
    functions = [n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.ClassDef)]
    assert functions == ["main"]


# ----------------------------------------------------------------------------- affectfpn teachers
def test_teachers_commands_write_what_the_functions_give(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from affectfpn.cli import main as cli_main

    scores = tmp_path / "scores.csv"
    root = tmp_path / "val"
    write_image_folder(root, {"happy": 2, "neutral": 2})
    keys = ImageFolderExpressions(root).keys
    smile = {"mouthSmileLeft": 0.9, "mouthSmileRight": 0.8, "browInnerUp": 0.2}
    _write_scores_csv(scores, {keys[0]: smile, keys[1]: None, keys[2]: {}, keys[3]: {}})

    out = tmp_path / "table.csv"
    argv = ["teachers", "table", "--scores", str(scores), "--out", str(out)]
    assert cli_main([*argv, "--units", "AU1", "AU12", "--key-prefix", "p:"]) == 0
    assert f"{out}:" in capsys.readouterr().out
    direct = et.blendshape_table(scores, units=["AU1", "AU12"], key_prefix="p:")
    back = LabelTable.load(out)
    assert back.key_list == direct.key_list
    np.testing.assert_array_equal(back.labels.au_mask, direct.labels.au_mask)
    np.testing.assert_allclose(back.labels.au, direct.labels.au, rtol=1e-6)

    assert cli_main(["teachers", "evaluate", "--scores", str(scores), "--root", str(root)]) == 0
    printed = capsys.readouterr().out
    assert "face found: 75.00% of 4" in printed
    assert "| AU12 | mouthSmileLeft + mouthSmileRight (mean) | Happiness (1)" in printed
    assert cli_main(["teachers", "fit", "--scores", str(scores), "--root", str(root)]) == 0
    assert "AU12: slope=" in capsys.readouterr().out

    openface = tmp_path / "clip.csv"
    _openface_csv(openface, [{"frame": 1, "success": 1, "AU12_c": 1}])
    of_out = tmp_path / "of.json"
    assert cli_main(["teachers", "openface", "--csv", str(openface), "--out", str(of_out)]) == 0
    assert LabelTable.load(of_out).key_list == ["clip/00001"]
    capsys.readouterr()


def test_teachers_commands_fail_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """User errors: exit 1 with one line naming the fix; usage errors: exit 2; no traceback."""
    from affectfpn.cli import main as cli_main

    monkeypatch.delenv("AFFECTFPN_SHARED", raising=False)
    root = tmp_path / "val"
    write_image_folder(root, {"happy": 1})
    fake = _fake_python(tmp_path)
    blend = ["teachers", "blendshapes", "--root", str(root), "--out", str(tmp_path / "s.csv"),
             "--python", str(fake)]  # fmt: skip
    cases = [
        (blend, 1, "no Face Landmarker model given"),
        (["teachers", "table", "--scores", str(tmp_path / "none.csv"), "--out", "t.csv"], 1,
         "none.csv"),
        (["teachers"], 2, "required"),
        ([*blend, "--workers", "0"], 2, "teachers blendshapes --help"),
    ]  # fmt: skip
    failing = tmp_path / "failing.task"
    failing.write_text("FAIL")
    cases.append(([*blend, "--model", str(failing)], 1, "No module named 'mediapipe'"))
    for argv, code, message in cases:
        assert cli_main(argv) == code, argv
        err = capsys.readouterr().err
        assert message in err, err
        assert "Traceback" not in err
        assert len(err.strip().splitlines()) == 1, err


def test_the_old_entry_point_is_an_alias_of_the_command(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """``python -m affectfpn.recipes.external_teachers`` runs ``affectfpn teachers`` (in a
    child process): the same output, the main CLI's exit codes and one-line errors."""
    from affectfpn.recipes import external_teachers

    scores = tmp_path / "scores.csv"
    _write_scores_csv(scores, {"happy/a.jpg": {"mouthSmileLeft": 0.9}, "sad/b.jpg": None})
    out = tmp_path / "table.csv"
    module = [sys.executable, "-m", "affectfpn.recipes.external_teachers"]
    done = subprocess.run([*module, "table", "--scores", str(scores), "--out", str(out)],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert LabelTable.load(out).key_list == ["happy/a.jpg", "sad/b.jpg"]
    # main() starts the same child: a user error is exit 1 and one line, not a traceback
    capfd.readouterr()
    missing = ["table", "--scores", str(tmp_path / "none.csv"), "--out", str(out)]
    assert external_teachers.main(missing) == 1
    err = capfd.readouterr().err
    assert err.startswith("affectfpn: error:"), err
    assert "Traceback" not in err
