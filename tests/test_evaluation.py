"""Tests of affectfpn.evaluation: evaluate() on tiny image folders, CSVs and Aff-Wild2 trees.

The expected figures are computed here from the model's own outputs on the same images, with the
preprocessing and the metric formulas written out by hand, so the tests check the whole pipeline
(reading, label order, batching, normalisation, accumulation), not just that numbers come out.
"""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from _fake_data import write_affwild2_tree, write_image, write_image_folder
from PIL import Image
from torch.utils.data import Subset

from affectfpn import AffectFPN, AffectFPNConfig
from affectfpn.errors import InputError
from affectfpn.evaluation import EvaluationReport, build_eval_dataset, evaluate
from affectfpn.preprocess import eval_transform
from affectfpn.recipes.datasets import AffWild2MultiTask, ImageFolderExpressions

# Written out by hand (not taken from the library): Aff-Wild2 class indices of the folder names.
FOLDER_CLASS = {"angry": 1, "happy": 4, "sad": 5}
SIZE = 48


def tiny_model(tasks: tuple[str, ...] = ("expression",)) -> AffectFPN:
    config = AffectFPNConfig(
        backbone="resnet18", fpn_width=16, input_size=(SIZE, SIZE), tasks=tasks
    )
    return AffectFPN(config).eval()


def load_by_hand(paths: list[Path], model: AffectFPN) -> torch.Tensor:
    """RGB images scaled to 0..1 and normalised with the model's mean/std, without the library."""
    arrays = []
    for p in paths:
        with Image.open(p) as im:
            rgb = np.asarray(im.convert("RGB"), np.float32) / 255.0
        assert rgb.shape == (SIZE, SIZE, 3)  # written at the model's size: no resize needed
        arrays.append(rgb)
    x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)
    mean = torch.tensor(model.config.mean).view(1, 3, 1, 1)
    std = torch.tensor(model.config.std).view(1, 3, 1, 1)
    return (x - mean) / std


def spread_heads(model: AffectFPN, x: torch.Tensor) -> None:
    """Large random head weights, centred on the mean feature of ``x``, so that the predictions
    differ from image to image (a fresh head predicts nearly the same for every noise image)."""
    with torch.no_grad():
        features = model.features(x).mean(dim=0)
        for head in model.heads.values():
            assert isinstance(head, torch.nn.Linear)
            torch.nn.init.normal_(head.weight, std=1.0)
            head.bias.copy_(-(head.weight @ features))


def hand_confusion(pred: np.ndarray, true: np.ndarray) -> list[list[int]]:
    cm = [[0] * 7 for _ in range(7)]
    for p, t in zip(pred.tolist(), true.tolist(), strict=True):
        cm[t][p] += 1
    return cm


def hand_ccc(x: np.ndarray, y: np.ndarray) -> float:
    x, y = x.astype(np.float64), y.astype(np.float64)
    cov = ((x - x.mean()) * (y - y.mean())).mean()
    return float(2 * cov / (x.var() + y.var() + (x.mean() - y.mean()) ** 2))


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("folder") / "test"
    write_image_folder(root, {"angry": 4, "happy": 4, "sad": 4}, image_size=SIZE, grey=True)
    return root


def folder_files(root: Path) -> list[Path]:
    return sorted(root.glob("*/*.jpg"))


@pytest.fixture(scope="module")
def expr_model(folder: Path) -> AffectFPN:
    model = tiny_model()
    spread_heads(model, load_by_hand(folder_files(folder), model))
    return model


def expected_expression(model: AffectFPN, files: list[Path]) -> tuple[np.ndarray, np.ndarray]:
    """(predicted class, true class) per file, computed directly."""
    with torch.no_grad():
        logits = model(load_by_hand(files, model)).expression
    assert logits is not None
    true = np.array([FOLDER_CLASS[f.parent.name] for f in files])
    return logits.argmax(dim=1).numpy(), true


# --------------------------------------------------------------------------------------------
# Image folders
# --------------------------------------------------------------------------------------------


def test_image_folder_metrics_match_direct_computation(
    folder: Path, expr_model: AffectFPN, tmp_path: Path
) -> None:
    files = folder_files(folder)
    pred, true = expected_expression(expr_model, files)
    assert len(set(pred.tolist())) > 1, "the test model must not predict one class for all"

    out = tmp_path / "reports" / "fer.json"
    report = evaluate(
        expr_model,
        folder,
        batch_size=5,
        progress=False,
        device="cpu",
        output=out,
        model_name="tiny",
        model_revision="abc123",
    )

    m = report.metrics["expression"]
    assert report.num_samples == 12
    assert report.labelled == {"va": 0, "expression": 12, "au": 0}
    assert report.tasks == ("expression",)
    assert m["confusion_matrix"] == hand_confusion(pred, true)
    assert sum(map(sum, m["confusion_matrix"])) == 12
    assert m["accuracy"] == pytest.approx(float((pred == true).mean()))
    assert m["class_names"] == [
        "Neutral",
        "Anger",
        "Disgust",
        "Fear",
        "Happiness",
        "Sadness",
        "Surprise",
    ]
    assert m["support_per_class"] == [0, 4, 0, 0, 4, 4, 0]
    for key in ("precision_per_class", "recall_per_class", "f1_per_class"):
        assert len(m[key]) == 7
    f1 = np.array(m["f1_per_class"])
    assert m["macro_f1"] == pytest.approx(f1.mean())
    assert m["score"] == pytest.approx(0.67 * m["macro_f1"] + 0.33 * m["accuracy"])
    assert report.images_per_second > 0
    assert report.model_name == "tiny"
    assert "test" in report.dataset

    data = json.loads(out.read_text())
    assert data["dataset"]["num_samples"] == 12
    assert data["metrics"]["expression"]["confusion_matrix"] == m["confusion_matrix"]
    assert data["model"]["name"] == "tiny"
    assert data["model"]["config"]["input_size"] == [SIZE, SIZE]
    assert EvaluationReport.load(out).to_dict() == report.to_dict()
    assert data["model"]["revision"] == "abc123"
    assert "accuracy" in report.summary()
    assert "tiny@abc123" in report.summary()


def test_model_is_returned_in_its_mode(folder: Path, expr_model: AffectFPN) -> None:
    expr_model.train()
    try:
        evaluate(expr_model, folder, progress=False, device="cpu")
        assert expr_model.training
    finally:
        expr_model.eval()


@pytest.mark.parametrize("as_object", [False, True])
def test_exclude_drops_files(
    folder: Path, expr_model: AffectFPN, tmp_path: Path, as_object: bool
) -> None:
    listing = tmp_path / "overlap.txt"
    # relative to the root's parent, relative to the root, and one of another split (kept)
    listing.write_text("test/angry/img_000.jpg\nhappy/img_001.jpg\nval/sad/img_002.jpg\n")
    dataset = (
        ImageFolderExpressions(folder, transform=eval_transform(expr_model.config))
        if as_object
        else folder
    )
    report = evaluate(expr_model, dataset, exclude=listing, progress=False, device="cpu")

    kept = [
        f
        for f in folder_files(folder)
        if f.relative_to(folder).as_posix() not in ("angry/img_000.jpg", "happy/img_001.jpg")
    ]
    pred, true = expected_expression(expr_model, kept)
    assert report.num_samples == 10
    assert report.excluded == 2
    assert report.metrics["expression"]["confusion_matrix"] == hand_confusion(pred, true)
    # a list works as well as a file
    report2 = evaluate(
        expr_model, folder, exclude=["sad/img_003.jpg"], progress=False, device="cpu"
    )
    assert report2.num_samples == 11


def test_progress_bar_goes_to_stderr(
    folder: Path,
    expr_model: AffectFPN,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import tqdm

    # show the bar at once (it normally waits 2 s, so short runs print nothing) and redraw it on
    # every update (a fast run would otherwise finish within tqdm's 0.1 s refresh interval)
    real = tqdm.tqdm
    eager = {"delay": 0, "mininterval": 0, "miniters": 1}
    monkeypatch.setattr(tqdm, "tqdm", lambda *a, **k: real(*a, **{**k, **eager}))
    evaluate(expr_model, folder, batch_size=4, device="cpu")
    captured = capsys.readouterr()
    assert "evaluate" in captured.err
    assert "12/12" in captured.err
    assert captured.out == ""
    evaluate(expr_model, folder, batch_size=4, device="cpu", progress=False)
    assert capsys.readouterr().err == ""


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_with_autocast(folder: Path, expr_model: AffectFPN) -> None:
    cpu = evaluate(expr_model, folder, progress=False, device="cpu")
    gpu = evaluate(expr_model, folder, progress=False, device="cuda")
    assert gpu.device.startswith("cuda")
    assert gpu.amp in ("bfloat16", "float16")
    assert gpu.num_samples == 12
    # the model goes back where it was
    assert next(expr_model.parameters()).device.type == "cpu"
    # reduced precision may flip a near tie, not more
    diff = np.abs(
        np.array(gpu.metrics["expression"]["confusion_matrix"])
        - np.array(cpu.metrics["expression"]["confusion_matrix"])
    ).sum()
    assert diff <= 4


def test_dataset_with_wrong_image_size_is_refused(folder: Path, expr_model: AffectFPN) -> None:
    dataset = ImageFolderExpressions(folder, image_size=(32, 32))
    with pytest.raises(InputError, match="eval_transform"):
        evaluate(expr_model, dataset, progress=False, device="cpu")


def test_bad_paths_and_arguments(tmp_path: Path, expr_model: AffectFPN, folder: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        evaluate(expr_model, tmp_path / "nope", progress=False, device="cpu")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(InputError, match="csv"):
        evaluate(expr_model, tmp_path / "notes.txt", progress=False, device="cpu")
    (tmp_path / "aw" / "annotations").mkdir(parents=True)
    with pytest.raises(InputError, match="cropped_aligned"):
        evaluate(expr_model, tmp_path / "aw", progress=False, device="cpu")
    with pytest.raises(InputError, match="batch_size"):
        evaluate(expr_model, folder, batch_size=0, progress=False, device="cpu")
    with pytest.raises(InputError, match="au_threshold"):
        evaluate(expr_model, folder, au_threshold=1.5, progress=False, device="cpu")


# --------------------------------------------------------------------------------------------
# Label CSVs: VA and AU, and tasks the model lacks
# --------------------------------------------------------------------------------------------

AU_COLUMNS = "AU1,AU2,AU4,AU6,AU7,AU10,AU12,AU15,AU23,AU24,AU25,AU26"


def write_csv(
    tmp_path: Path, n: int = 8, *, expression: bool = False
) -> tuple[Path, list[Path], dict[str, np.ndarray]]:
    """Images and a CSV with VA (row 2 invalid: -5), AUs (row 3 unlabelled: -1) and optionally
    expressions; returns the CSV, the image files and the labels as written."""
    rng = np.random.default_rng(1)
    va = rng.uniform(-1, 1, (n, 2)).round(3)
    au = rng.integers(0, 2, (n, 12))
    ex = rng.integers(0, 7, n)
    lines = ["path,valence,arousal," + AU_COLUMNS + (",expression" if expression else "")]
    files = []
    for i in range(n):
        rel = f"faces/f{i}.png"
        write_image(tmp_path / rel, image_size=SIZE, seed=10 + i)
        files.append(tmp_path / rel)
        v = "-5,-5" if i == 2 else f"{va[i, 0]},{va[i, 1]}"
        a = ",".join("-1" for _ in range(12)) if i == 3 else ",".join(map(str, au[i]))
        lines.append(f"{rel},{v},{a}" + (f",{ex[i]}" if expression else ""))
    csv = tmp_path / "labels.csv"
    csv.write_text("\n".join(lines) + "\n")
    return csv, files, {"va": va, "au": au, "expression": ex}


def test_csv_with_va_and_au_labels(tmp_path: Path) -> None:
    csv, files, labels = write_csv(tmp_path)
    model = tiny_model(("va", "expression", "au"))
    x = load_by_hand(files, model)
    spread_heads(model, x)
    with torch.no_grad():
        out = model(x)
    assert out.va is not None
    assert out.au is not None

    report = evaluate(model, csv, batch_size=3, progress=False, device="cpu")

    assert set(report.metrics) == {"va", "au"}
    assert report.labelled == {"va": 7, "expression": 0, "au": 7}
    assert "expression" in report.not_scored  # the model has it, the labels do not
    keep_va = np.arange(8) != 2
    va_pred = out.va.numpy()[keep_va]
    va_true = labels["va"][keep_va]
    m_va = report.metrics["va"]
    assert m_va["ccc_valence"] == pytest.approx(hand_ccc(va_pred[:, 0], va_true[:, 0]), abs=1e-5)
    assert m_va["ccc_arousal"] == pytest.approx(hand_ccc(va_pred[:, 1], va_true[:, 1]), abs=1e-5)
    assert m_va["score"] == pytest.approx((m_va["ccc_valence"] + m_va["ccc_arousal"]) / 2)

    keep_au = np.arange(8) != 3
    au_pred = (torch.sigmoid(out.au).numpy() > 0.5)[keep_au]
    au_true = labels["au"][keep_au].astype(bool)
    assert 0 < au_pred.mean() < 1, "the test model must predict both present and absent AUs"
    m_au = report.metrics["au"]
    assert m_au["accuracy"] == pytest.approx(float((au_pred == au_true).mean()))
    tp = (au_pred & au_true).sum(axis=0)
    fp = (au_pred & ~au_true).sum(axis=0)
    fn = (~au_pred & au_true).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), 0.0)
    assert m_au["f1_per_unit"] == pytest.approx(f1.tolist())
    assert m_au["unit_names"] == AU_COLUMNS.split(",")
    assert m_au["positives_per_unit"] == au_true.sum(axis=0).tolist()

    # a higher AU threshold is applied to the probabilities
    strict = evaluate(model, csv, au_threshold=0.8, progress=False, device="cpu")
    au_strict = (torch.sigmoid(out.au).numpy() > 0.8)[keep_au]
    assert strict.metrics["au"]["accuracy"] == pytest.approx(float((au_strict == au_true).mean()))


def test_task_the_model_lacks_is_not_reported(tmp_path: Path) -> None:
    csv, _, labels = write_csv(tmp_path, expression=True)
    model = tiny_model(("expression",))
    report = evaluate(model, csv, progress=False, device="cpu")
    assert set(report.metrics) == {"expression"}
    assert report.labelled["va"] == 7
    assert report.labelled["expression"] == 8
    assert "va" in report.not_scored
    assert "au" in report.not_scored
    assert "no va head" in report.not_scored["va"]
    assert (
        report.metrics["expression"]["support_per_class"]
        == np.bincount(labels["expression"], minlength=7).tolist()
    )


def test_csv_exclude_by_key(tmp_path: Path) -> None:
    csv, _, _ = write_csv(tmp_path)
    model = tiny_model(("va",))
    report = evaluate(
        model, csv, exclude=["faces/f0.png", "faces/f1.png"], progress=False, device="cpu"
    )
    assert report.num_samples == 6
    assert report.excluded == 2
    assert report.labelled["va"] == 5  # f2 has no VA label


# --------------------------------------------------------------------------------------------
# Aff-Wild2
# --------------------------------------------------------------------------------------------


def test_affwild2_root_uses_the_validation_split(tmp_path: Path) -> None:
    fake = write_affwild2_tree(tmp_path / "aw")
    config = AffectFPNConfig(backbone="resnet18", fpn_width=16, input_size=(SIZE, SIZE))
    dataset = build_eval_dataset(fake.root, config)
    assert isinstance(dataset, AffWild2MultiTask)
    assert dataset.split == "validation"

    def valid(task: str, key: str) -> bool:
        label = fake.labels[task][key]
        return label is not None and (task != "au" or any(v is not None for v in label))

    expected = {
        k for t in ("va", "expression", "au") for k in fake.keys(t, "validation") if valid(t, k)
    }
    assert set(dataset.keys) == expected

    model = AffectFPN(config).eval()
    report = evaluate(model, fake.root, progress=False, device="cpu")
    assert report.num_samples == len(expected)
    assert set(report.metrics) == {"va", "expression", "au"}
    assert report.labelled["expression"] == sum(
        valid("expression", k) for k in fake.keys("expression", "validation")
    )
    assert "Aff-Wild2 validation" in report.dataset


def test_subset_of_a_dataset(folder: Path, expr_model: AffectFPN) -> None:
    full = ImageFolderExpressions(folder, transform=eval_transform(expr_model.config))
    subset = Subset(full, [0, 5, 9])
    report = evaluate(
        expr_model, subset, exclude=["angry/img_000.jpg"], progress=False, device="cpu"
    )
    assert report.num_samples == 2
    assert report.excluded == 1
    assert "subset" in report.dataset


# --------------------------------------------------------------------------------------------
# FER2013 from ../shared
# --------------------------------------------------------------------------------------------


@pytest.mark.shared
def test_fer2013_test_sample(shared_dir: Path) -> None:
    test_dir = shared_dir / "data" / "fer2013" / "test"
    overlap = shared_dir / "data" / "fer2013" / "overlap_with_train.txt"
    if not test_dir.is_dir() or not overlap.is_file():
        pytest.skip(f"FER2013 test split or overlap list not found under {test_dir.parent}")
    model = tiny_model()
    full = ImageFolderExpressions(test_dir, transform=eval_transform(model.config))
    step = max(1, len(full) // 200)
    subset = Subset(full, list(range(0, len(full), step))[:200])
    # the overlap list, read by hand: lines "test/<class>/<file>" name files of this split
    lines = [ln.strip() for ln in overlap.read_text().splitlines() if ln.strip()]
    in_test = {ln.removeprefix("test/") for ln in lines if ln.startswith("test/")}
    kept = [i for i in subset.indices if full.keys[i] not in in_test]
    assert 0 < len(kept) < 200

    report = evaluate(model, subset, exclude=overlap, progress=False, device="cpu")
    m = report.metrics["expression"]
    assert report.excluded == 200 - len(kept)
    assert report.num_samples == len(kept)
    assert sum(map(sum, m["confusion_matrix"])) == len(kept)
    classes = full.label_arrays().expression[kept]
    assert m["support_per_class"] == np.bincount(classes, minlength=7).tolist()

    cleaned = build_eval_dataset(test_dir, model.config, exclude=overlap)
    n_files = sum(1 for p in test_dir.glob("*/*") if p.is_file())
    assert len(cleaned) == n_files - len({k for k in in_test if (test_dir / k).is_file()})  # type: ignore[arg-type]


def test_several_models_in_one_pass_equal_each_alone(folder: Path, expr_model: AffectFPN) -> None:
    from affectfpn.errors import ConfigError
    from affectfpn.evaluation import model_outputs, models_outputs

    torch.manual_seed(1)
    other = AffectFPN(expr_model.config).train()  # left in training mode by its owner
    data = build_eval_dataset(folder, expr_model.config)
    together = list(models_outputs({"a": expr_model, "b": other}, data, batch_size=4))
    assert other.training  # back in its own mode
    alone = {
        name: list(model_outputs(m, data, batch_size=4))
        for name, m in (("a", expr_model), ("b", other))
    }
    assert len(together) == len(alone["a"]) > 1
    for i, (batch, outputs) in enumerate(together):
        assert list(batch["key"]) == list(alone["a"][i][0]["key"])
        for name in ("a", "b"):
            torch.testing.assert_close(outputs[name].expression, alone[name][i][1].expression)
    assert not torch.allclose(together[0][1]["a"].expression, together[0][1]["b"].expression)
    small = AffectFPN(AffectFPNConfig(backbone="resnet18", fpn_width=8, input_size=(32, 32)))
    with pytest.raises(ConfigError, match="input sizes differ"):
        next(models_outputs({"a": expr_model, "small": small}, data))
    with pytest.raises(ConfigError, match="at least one model"):
        next(models_outputs({}, data))
