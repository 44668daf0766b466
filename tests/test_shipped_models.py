"""The models the registry ships, judged on real data: what users get from ``from_pretrained()``.

Every test is parametrised over ``list_models()``, so a model added to the registry (a folder
under ``affectfpn/weights`` written by ``affectfpn publish ... --out affectfpn/weights``) is
covered by the next run of this file, which is part of the default suite (``-m "not slow"``,
CI) and should be run whenever a model is published:

- its accuracy on a fixed, class-stratified subset of FER2013 ``test`` (every 5th face of each
  class folder: 721 of 3,589) through the user's path (``predict(..., faces="crop")``), within
  a stated tolerance of the figure on its model card (``model_info.json``);
- its probabilities equal an independent computation (the face read with Pillow, normalised by
  hand, one forward pass), so that a regression in preprocessing fails even where accuracy would
  move only a little;
- the labelled sample photos (``../shared/data/samples``): the expressions a person would agree
  with, as far as each model gets them right today (see ``KNOWN_MISSES``);
- ONNX export parity, in particular with ``test_time_flip=True`` (the default model's setting);
- what it did when it was published (``tests/data/shipped_models.json``, written by
  ``tests/data/record_shipped.py``): accuracy and macro F1 on the FER2013 subset and on a fixed
  subset of lfw-expressions ``test`` (in-the-wild news photos) to within 0.005, each action
  unit's ROC AUC against the teacher's table (``tests/data/fer2013_test_subset_au_teacher.csv``)
  to within 0.005 (and 0.02 of the card), and golden logits (and per-face temperatures) of four
  faces to 1e-4, so that a bug in the backbone, the pyramid or a head fails even where the
  by-hand oracle (which runs the library's own modules) moves with it.

Tests that need ``../shared`` skip without it (tests/conftest.py). Hub models (``source="hub"``)
need the network and are skipped here.
"""

import csv
import dataclasses
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from affectfpn import AffectFPN, AffectFPNConfig, ModelInfo, list_models
from affectfpn.data import expression_from_name
from affectfpn.export import OUTPUT_NAMES, TEMPERATURE_OUTPUT, OnnxRunner, export_onnx
from affectfpn.labels import EXPRESSIONS

#: The model outputs whose values on four fixed faces are recorded (the per-face temperature
#: only for a model with a calibrator).
GOLDEN_OUTPUTS = ("va", "expression", "au", "expression_temperature")
#: Every STEP-th file (sorted by name) of each class folder: a fixed, stratified subset.
STEP = 5
#: The same for lfw-expressions ``test`` (1,077 faces): every 3rd, 362 faces.
LFW_STEP = 3
DATA = Path(__file__).resolve().parent / "data"
#: What each shipped model did when it was published (tests/data/record_shipped.py).
RECORD = DATA / "shipped_models.json"
#: The AU teacher's labels of the FER2013 subset (MediaPipe blendshapes, docs/action-units.md).
AU_TEACHER_TABLE = DATA / "fer2013_test_subset_au_teacher.csv"
#: How far a recorded subset figure may move (a neutral-logit shift of 0.3 moves accuracy on
#: the lfw subset by more than this).
RECORD_TOLERANCE = 0.005
FER_TEST_SIZE = 3589
#: Allowed distance between the subset's accuracy and the card's full-test figure. The subset is
#: a sample of n = 721 of the N = 3,589 test faces: its accuracy has a standard error of
#: sqrt(p (1 - p) / n * (N - n) / (N - 1)) = 0.0158 at p = 0.658 (the default model's card), so
#: 3 standard errors are 0.047. Measured: 0.6838 on the subset against 0.6581 on the card.
ACCURACY_TOLERANCE = 0.05

#: The sample photos whose file names carry their expression (``su`` surprise, ``hao`` happy
#: with an open mouth, ``anc`` anger with a closed mouth, ``di`` disgust).
PHOTOS = {
    "0-f1-su-ph.jpg": "Surprise",
    "0-f15-hao-ph.jpg": "Happiness",
    "15-f13-anc-ph.jpg": "Anger",
    "45-m7-di-ph.jpg": "Disgust",
}
#: What a shipped model gets wrong today, and what it says instead (measured with the shared
#: YuNet detector). A miss must still be a negative expression; a model that gets one of these
#: right fails the test until the entry is removed (so the table stays true). A new model has no
#: entry: it must get every photo right, or its misses are recorded here when it is published.
KNOWN_MISSES: dict[str, dict[str, str]] = {
    # Anger is its third choice (0.10) and Disgust not in its top three: FER2013 has few
    # disgust faces (436 of 28,709) and its anger faces mostly show open mouths.
    "fer2013-resnet18-fpn": {"15-f13-anc-ph.jpg": "Sadness", "45-m7-di-ph.jpg": "Sadness"},
    # Fine-tuned from the model above, it keeps misreading both as negative (anger face: Fear
    # 0.39, Sadness 0.34, Anger 0.19; disgust face: Neutral 0.30 just above Sadness 0.26, Fear
    # 0.22 and Anger 0.21, the negative expressions 0.70 together; the stage before its soups
    # said Sadness 0.30 over Neutral 0.28 there).
    "fer2013-multitask-resnet18-fpn": {
        "15-f13-anc-ph.jpg": "Fear",
        "45-m7-di-ph.jpg": "Neutral",
    },
    # Distilled from the default, it learnt its misses too (Anger third at 0.11; for the
    # disgust face Anger third at 0.06).
    "fer2013-fast-resnet18half": {
        "15-f13-anc-ph.jpg": "Sadness",
        "45-m7-di-ph.jpg": "Sadness",
    },
    # Trained on news photos too, it reads more faces as neutral: the anger face as Sadness
    # 0.37 (Fear 0.24, Anger 0.22; negative 0.84), the closed-mouth disgust face as Neutral
    # 0.62 (negative 0.38: below the 0.6 of the other misses, see NEGATIVE_FLOOR). With its
    # per-face temperature (issue #25) the same labels, the disgust face Neutral 0.68 (negative
    # 0.32: this face gets a temperature below the single one, 1.089); with the re-selected,
    # less penalised calibrator (L2 0.001) Neutral 0.76 (negative 0.24): the network's logits
    # are unchanged (golden logits), only this face's temperature fell further.
    "fer2013-lfw-multitask-resnet18-fpn": {
        "15-f13-anc-ph.jpg": "Sadness",
        "45-m7-di-ph.jpg": "Neutral",
    },
}
#: How negative a miss must still read (the negative expressions' total probability): 0.6,
#: except where a model was published reading a posed face as less negative (measured then,
#: less 0.05); a model that moves further towards neutral there fails.
NEGATIVE_FLOOR: dict[tuple[str, str], float] = {
    ("fer2013-lfw-multitask-resnet18-fpn", "45-m7-di-ph.jpg"): 0.19,
}
NEGATIVE = {"Anger", "Disgust", "Fear", "Sadness"}


def _param(info: ModelInfo, *, needs: str | None = None) -> object:
    marks = []
    if info.source != "package":
        marks.append(pytest.mark.skip(reason=f"{info.name} is a Hub model: needs the network"))
    elif needs == "expression" and "expression" not in info.tasks:
        marks.append(pytest.mark.skip(reason=f"{info.name} does not predict expressions"))
    elif needs == "fer2013-test" and needs not in info.metrics:
        marks.append(
            pytest.mark.skip(
                reason=f"{info.name}'s card has no fer2013-test figure: {sorted(info.metrics)}"
            )
        )
    return pytest.param(info.name, id=info.name, marks=marks)


MODELS = list_models()


@pytest.fixture(scope="module")
def loaded() -> dict[str, AffectFPN]:
    """Shipped models by name, loaded once (in eval mode, as ``from_pretrained`` returns them)."""
    return {}


def _model(loaded: dict[str, AffectFPN], name: str) -> AffectFPN:
    if name not in loaded:
        loaded[name] = AffectFPN.from_pretrained(name)
    return loaded[name]


def _info(name: str) -> ModelInfo:
    return next(m for m in MODELS if m.name == name)


def fer_subset(root: Path, step: int = STEP) -> list[tuple[Path, str]]:
    """(image, expression) for every ``step``-th file of each class folder of ``root`` (FER2013
    ``test`` by default)."""
    subset = []
    for folder in sorted(os.listdir(root)):  # angry, disgust, ...: the library's synonyms
        index = expression_from_name(folder)
        assert index is not None, f"unknown class folder {folder!r}"
        names = sorted(os.listdir(root / folder))
        subset += [(root / folder / name, EXPRESSIONS[index]) for name in names[::step]]
    return subset


def lfw_subset(root: Path) -> list[tuple[Path, str]]:
    """Every LFW_STEP-th face of each class folder of lfw-expressions ``test``."""
    return fer_subset(root, LFW_STEP)


def _labels(model: AffectFPN, subset: list[tuple[Path, str]]) -> list[str]:
    predictions = model.predict([path for path, _ in subset], faces="crop", batch_size=64)
    assert isinstance(predictions, list)
    return [p.faces[0].expression.label for p in predictions]  # type: ignore[union-attr]


def subset_figures(model: AffectFPN, subset: list[tuple[Path, str]]) -> dict[str, float]:
    """Accuracy and macro F1 (over the classes present in the subset) of ``predict``."""
    predicted = _labels(model, subset)
    truth = [e for _, e in subset]
    accuracy = float(np.mean([a == b for a, b in zip(predicted, truth, strict=True)]))
    f1s = []
    for c in sorted(set(truth)):
        tp = sum(a == b == c for a, b in zip(predicted, truth, strict=True))
        fp = sum(a == c != b for a, b in zip(predicted, truth, strict=True))
        fn = sum(b == c != a for a, b in zip(predicted, truth, strict=True))
        f1s.append(2 * tp / max(2 * tp + fp + fn, 1))
    neutral = [a == "Neutral" for a, b in zip(predicted, truth, strict=True) if b == "Neutral"]
    return {
        "accuracy": round(accuracy, 5),
        "macro_f1": round(float(np.mean(f1s)), 5),
        "neutral_recall": round(float(np.mean(neutral)), 5),
    }


def teacher_aucs(model: AffectFPN, subset: list[tuple[Path, str]]) -> dict[str, float]:
    """Each AU's ROC AUC of the model's probabilities against the teacher's labels (a unit is
    active for the teacher where its probability is >= 0.5)."""
    from sklearn.metrics import roc_auc_score

    with AU_TEACHER_TABLE.open(newline="") as f:
        table = {row["key"]: row for row in csv.DictReader(f)}
    paths = [p for p, _ in subset if f"{p.parent.name}/{p.name}" in table]
    predictions = model.predict(paths, faces="crop", batch_size=64)
    out = {}
    for unit in model.config.action_units:
        scores, labels = [], []
        for path, prediction in zip(paths, predictions, strict=True):  # type: ignore[arg-type]
            cell = table[f"{path.parent.name}/{path.name}"].get(unit, "")
            if cell == "":
                continue
            labels.append(float(cell) >= 0.5)  # active for the teacher, as on the card
            scores.append(prediction.faces[0].aus.probabilities[unit])
        out[unit] = round(float(roc_auc_score(labels, scores)), 5)
    return out


def golden_inputs(size: tuple[int, int]) -> np.ndarray:
    """Four uint8 faces (N x 3 x H x W): the repository's sample photo resized by Pillow, and
    three seeded noise faces."""
    photo = Path(__file__).resolve().parents[1] / "examples" / "images" / "single_face.jpg"
    face = Image.open(photo).convert("RGB").resize(size[::-1], Image.Resampling.BILINEAR)
    rng = np.random.default_rng(1234)
    noise = rng.integers(0, 256, (3, *size, 3), dtype=np.uint8)
    faces = np.concatenate([np.asarray(face)[None], noise])
    return np.ascontiguousarray(faces.transpose(0, 3, 1, 2))


def _record(name: str) -> dict[str, object]:
    records = json.loads(RECORD.read_text(encoding="utf-8"))
    assert name in records, f"{name} has no record: run tests/data/record_shipped.py"
    return records[name]  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def fer_test(shared_dir: Path) -> list[tuple[Path, str]]:
    root = shared_dir / "data" / "fer2013" / "test"
    if not root.is_dir():
        pytest.skip(f"FER2013 test split not found at {root}")
    subset = fer_subset(root)
    # the split is the one the cards were measured on, and the subset keeps its class balance
    assert {expression for _, expression in subset} == set(EXPRESSIONS)
    total = sum(len(os.listdir(root / folder)) for folder in os.listdir(root))
    assert total == FER_TEST_SIZE
    assert len(subset) == 721
    return subset


def _by_hand(model: AffectFPN, rgb: np.ndarray) -> np.ndarray:
    """Expression probabilities computed without the library's preprocessing: one face at the
    model's input size, scaled to [0, 1], normalised with the config's mean and std, and with
    ``test_time_flip`` the mean of the logits of two single passes (the face and its mirror),
    divided by the config's ``expression_temperature``, or for a model with a calibrator by
    ``exp(w . z + b)`` clamped to its range, ``z`` the (mean of the two) pooled features."""
    config = model.config
    assert rgb.shape == (*config.input_size, 3)
    x = torch.from_numpy(rgb.astype(np.float32) / 255.0).permute(2, 0, 1)
    mean = torch.tensor(config.mean).view(3, 1, 1)
    std = torch.tensor(config.std).view(3, 1, 1)
    x = ((x - mean) / std).unsqueeze(0)
    single = AffectFPN(dataclasses.replace(config, test_time_flip=False))
    single.load_state_dict(model.state_dict())
    with torch.inference_mode():
        logits = single.eval()(x).expression
        assert logits is not None
        features = single.features(x)
        if config.test_time_flip:
            mirrored = single(x.flip(3)).expression
            assert mirrored is not None
            logits = (logits + mirrored) / 2
            features = (features + single.features(x.flip(3))) / 2
    # the calibrated probabilities: softmax(logits / T), T from the config or per face
    temperature = torch.tensor(config.expression_temperature, dtype=torch.float64)
    if config.adaptive_temperature:
        state = model.state_dict()
        weight = state["calibrator.weight"].double()[0]
        log_t = features[0].double() @ weight + state["calibrator.bias"].double()[0]
        low, high = config.adaptive_temperature_range
        temperature = log_t.clamp(math.log(low), math.log(high)).exp()
    return torch.softmax(logits[0].double() / temperature, dim=0).numpy()


def _probabilities(prediction: object) -> np.ndarray:
    (face,) = prediction.faces  # type: ignore[attr-defined]
    return np.array([face.expression.probabilities[name] for name in EXPRESSIONS])


# --------------------------------------------------------------------------- FER2013 accuracy
@pytest.mark.shared
@pytest.mark.parametrize("name", [_param(m, needs="fer2013-test") for m in MODELS])
def test_accuracy_on_a_stratified_fer2013_test_subset_matches_the_card(
    loaded: dict[str, AffectFPN], fer_test: list[tuple[Path, str]], name: str
) -> None:
    model = _model(loaded, name)
    card = _info(name).metrics["fer2013-test"]["accuracy"]
    predictions = model.predict([path for path, _ in fer_test], faces="crop", batch_size=64)
    assert isinstance(predictions, list)
    assert len(predictions) == len(fer_test)
    predicted = [p.faces[0].expression.label for p in predictions]  # type: ignore[union-attr]
    truth = [expression for _, expression in fer_test]
    accuracy = float(np.mean([a == b for a, b in zip(predicted, truth, strict=True)]))
    n = len(fer_test)
    sigma = math.sqrt(card * (1 - card) / n * (FER_TEST_SIZE - n) / (FER_TEST_SIZE - 1))
    assert 3 * sigma <= ACCURACY_TOLERANCE + 0.005, "the tolerance is about 3 standard errors"
    assert abs(accuracy - card) <= ACCURACY_TOLERANCE, (
        f"{name}: {accuracy:.4f} on {n} FER2013 test faces, card says {card:.4f}"
    )
    # and no class is given up: every class is predicted for some of its faces
    for expression in set(truth) - {"Disgust"}:  # 11 disgust faces in the subset
        hits = sum(a == b == expression for a, b in zip(predicted, truth, strict=True))
        assert hits > 0, f"{name} never predicts {expression} correctly"


@pytest.mark.shared
@pytest.mark.parametrize("name", [_param(m, needs="expression") for m in MODELS])
def test_probabilities_equal_a_forward_pass_by_hand(
    loaded: dict[str, AffectFPN],
    fer_test: list[tuple[Path, str]],
    samples_dir: Path,
    tmp_path: Path,
    name: str,
) -> None:
    model = _model(loaded, name)
    size = model.config.input_size
    faces: list[tuple[Path, np.ndarray]] = []
    # one grey FER2013 face per class, at the model's input size
    for path, _ in fer_test[:: len(fer_test) // 7][:7]:
        rgb = np.asarray(Image.open(path).convert("RGB"))
        if rgb.shape[:2] != size:
            rgb = np.asarray(Image.fromarray(rgb).resize(size[::-1], Image.Resampling.BILINEAR))
            path = tmp_path / f"{path.stem}.png"
            Image.fromarray(rgb).save(path)
        faces.append((path, rgb))
    # colour faces, where a channel-order mistake shows (not on grey faces): the sample photos
    # shrunk by Pillow to the input size and saved losslessly, and as they are (512 x 512), which
    # the library must resize as documented (Pillow's bilinear, antialiased: affectfpn.preprocess)
    for photo in PHOTOS:
        full = Image.open(samples_dir / photo).convert("RGB")
        small = full.resize(size[::-1], Image.Resampling.BOX)
        path = tmp_path / f"{Path(photo).stem}.png"
        small.save(path)
        faces.append((path, np.asarray(small)))
        resized = full.resize(size[::-1], Image.Resampling.BILINEAR, reducing_gap=None)
        faces.append((samples_dir / photo, np.asarray(resized)))
    predictions = model.predict([path for path, _ in faces], faces="crop")
    assert isinstance(predictions, list)
    for (path, rgb), prediction in zip(faces, predictions, strict=True):
        np.testing.assert_allclose(
            _probabilities(prediction), _by_hand(model, rgb), atol=1e-5, err_msg=str(path)
        )


# --------------------------------------------------------------------------- sample photos
@pytest.mark.shared
@pytest.mark.parametrize("photo", sorted(PHOTOS))
@pytest.mark.parametrize("name", [_param(m, needs="expression") for m in MODELS])
def test_labelled_sample_photos(
    loaded: dict[str, AffectFPN], samples_dir: Path, yunet_path: Path, name: str, photo: str
) -> None:
    model = _model(loaded, name)
    prediction = model.predict(samples_dir / photo, detector=str(yunet_path))
    assert len(prediction.faces) == 1, "one face in each labelled photo"  # type: ignore[union-attr]
    label = prediction.faces[0].expression.label  # type: ignore[union-attr]
    expected = PHOTOS[photo]
    miss = KNOWN_MISSES.get(name, {}).get(photo)
    if miss is None:
        assert label == expected, f"{name} says {label} for the {expected} face in {photo}"
        return
    assert label != expected, (
        f"{name} now gets {photo} right ({expected}): remove it from KNOWN_MISSES"
    )
    # A miss must still read the face as negative: the negative expressions together, not
    # just the top label (on these posed faces the top two are often within 0.05).
    probabilities = prediction.faces[0].expression.probabilities  # type: ignore[union-attr]
    negative = sum(p for label_name, p in probabilities.items() if label_name in NEGATIVE)
    floor = NEGATIVE_FLOOR.get((name, photo), 0.6)
    assert negative >= floor, (
        f"{name} gives the {expected} face in {photo} {negative:.2f} negative (floor {floor})"
    )
    assert label == miss, f"{name} said {miss} for {photo} when published, now {label}"


def _au12_models() -> list[object]:
    return [
        _param(m)
        for m in MODELS
        if "au" in m.tasks and "AU12" in m.action_units and "fer2013-test" in m.metrics
    ]


@pytest.mark.shared
@pytest.mark.parametrize("name", _au12_models())
def test_au12_is_active_on_smiles_and_rarely_on_neutral_faces(
    loaded: dict[str, AffectFPN], fer_test: list[tuple[Path, str]], samples_dir: Path, name: str
) -> None:
    """The issue's floors for a smile AU: active on >= 70 % of happy faces of FER2013 test and
    on <= 20 % of its neutral ones (here on the stratified subset), and on the smiling face of
    single_face.jpg."""
    model = _model(loaded, name)
    faces = [(path, e) for path, e in fer_test if e in ("Happiness", "Neutral")]
    predictions = model.predict([path for path, _ in faces], faces="crop", batch_size=64)
    active = {"Happiness": [], "Neutral": []}  # type: dict[str, list[bool]]
    for prediction, (_, expression) in zip(predictions, faces, strict=True):
        aus = prediction.faces[0].aus
        assert aus is not None
        active[expression].append("AU12" in aus.active)
    happy, neutral = np.mean(active["Happiness"]), np.mean(active["Neutral"])
    assert happy >= 0.70, f"{name}: AU12 active on {happy:.2f} of happy faces"
    assert neutral <= 0.20, f"{name}: AU12 active on {neutral:.2f} of neutral faces"
    smile = model.predict(samples_dir / "single_face.jpg")
    assert len(smile.faces) == 1
    assert smile.faces[0].aus is not None
    assert "AU12" in smile.faces[0].aus.active


# --------------------------------------------------------------------------- ONNX parity
def _onnx_parity(model: AffectFPN, path: Path, faces: np.ndarray) -> dict[str, np.ndarray]:
    """Export ``model`` to ``path``; check ONNX Runtime against PyTorch; return PyTorch's."""
    runner = OnnxRunner(export_onnx(model, path), num_threads=1)
    batch = torch.from_numpy(runner.preprocess(faces))
    with torch.inference_mode():
        out = model.eval()(batch)
    expected = {
        OUTPUT_NAMES[task]: getattr(out, task).numpy()
        for task in ("va", "expression", "au")
        if getattr(out, task) is not None
    }
    if out.expression_temperature is not None:  # a model with a calibrator
        expected[TEMPERATURE_OUTPUT] = out.expression_temperature.numpy()
    got = runner(faces)
    assert set(got) == set(expected)
    for key, value in expected.items():
        np.testing.assert_allclose(got[key], value, atol=1e-4, rtol=0, err_msg=key)
    return expected


def _faces(n: int, size: tuple[int, int], seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, *size, 3), dtype=np.uint8)


def test_onnx_export_of_a_test_time_flip_model_matches_pytorch(tmp_path: Path) -> None:
    torch.manual_seed(0)
    config = AffectFPNConfig(
        backbone="resnet18", fpn_width=16, input_size=(48, 40), test_time_flip=True
    )
    model = AffectFPN(config).eval()
    faces = _faces(3, (48, 40))
    flipped = _onnx_parity(model, tmp_path / "flip.onnx", faces)
    # The averaging is in the graph: the single pass differs by far more than the tolerance, so
    # an export that dropped the flip would fail the parity above.
    single = AffectFPN(dataclasses.replace(config, test_time_flip=False))
    single.load_state_dict(model.state_dict())
    one_pass = _onnx_parity(single.eval(), tmp_path / "single.onnx", faces)
    for key in flipped:
        assert np.abs(flipped[key] - one_pass[key]).max() > 1e-2, key


@pytest.mark.parametrize("name", [_param(m) for m in MODELS])
def test_onnx_export_of_the_shipped_model_matches_pytorch(
    loaded: dict[str, AffectFPN], tmp_path: Path, name: str
) -> None:
    model = _model(loaded, name)
    _onnx_parity(model, tmp_path / f"{name}.onnx", _faces(4, model.config.input_size, seed=1))


# --------------------------------------------------------------------------- recorded figures
@pytest.fixture(scope="module")
def lfw_test(shared_dir: Path) -> list[tuple[Path, str]]:
    root = shared_dir / "data" / "lfw-expressions" / "test"
    if not root.is_dir():
        pytest.skip(f"lfw-expressions test split not found at {root}")
    subset = lfw_subset(root)
    assert len(subset) == 362
    return subset


def _close(got: dict[str, float], want: object, what: str) -> None:
    assert isinstance(want, dict)
    for key, value in want.items():
        assert abs(got[key] - value) <= RECORD_TOLERANCE, (
            f"{what} {key}: {got[key]:.4f}, recorded {value:.4f}"
        )


@pytest.mark.shared
@pytest.mark.parametrize("name", [_param(m, needs="expression") for m in MODELS])
def test_fer2013_subset_figures_match_the_record(
    loaded: dict[str, AffectFPN], fer_test: list[tuple[Path, str]], name: str
) -> None:
    figures = subset_figures(_model(loaded, name), fer_test)
    _close(figures, _record(name)["fer2013_subset"], f"{name} FER2013 subset")


@pytest.mark.shared
@pytest.mark.parametrize("name", [_param(m, needs="expression") for m in MODELS])
def test_lfw_subset_figures_match_the_record(
    loaded: dict[str, AffectFPN], lfw_test: list[tuple[Path, str]], name: str
) -> None:
    """In-the-wild news photos: the figures, and the neutral faces read as neutral."""
    figures = subset_figures(_model(loaded, name), lfw_test)
    _close(figures, _record(name)["lfw_subset"], f"{name} lfw-expressions subset")
    info = _info(name)
    if any("lfw-expressions" in d for d in info.datasets):  # trained for photos: keeps floors
        assert figures["accuracy"] >= 0.85
        assert figures["neutral_recall"] >= 0.80


def _au_models() -> list[object]:
    return [_param(m) for m in MODELS if "au" in m.tasks and "fer2013-test-au-teacher" in m.metrics]


@pytest.mark.shared
@pytest.mark.parametrize("name", _au_models())
def test_every_action_unit_agrees_with_the_teacher_as_recorded(
    loaded: dict[str, AffectFPN], fer_test: list[tuple[Path, str]], name: str
) -> None:
    model = _model(loaded, name)
    aucs = teacher_aucs(model, fer_test)
    _close(aucs, _record(name)["fer2013_subset_au_auc"], f"{name} AU AUC vs teacher")
    card = _info(name).metrics["fer2013-test-au-teacher"]
    for unit, auc in aucs.items():
        assert abs(auc - card[f"{unit}_auc_vs_teacher"]) <= 0.02, (unit, auc)


@pytest.mark.parametrize("name", [_param(m) for m in MODELS])
def test_golden_logits(loaded: dict[str, AffectFPN], name: str) -> None:
    """One forward pass of four fixed faces gives the logits recorded at publication."""
    from affectfpn.preprocess import normalize

    model = _model(loaded, name)
    x = normalize(torch.from_numpy(golden_inputs(model.config.input_size)), model.config)
    with torch.inference_mode():
        out = model.eval()(x)
    golden = _record(name)["golden"]
    assert isinstance(golden, dict)
    assert set(golden) == {t for t in GOLDEN_OUTPUTS if getattr(out, t) is not None}
    for task, values in golden.items():
        np.testing.assert_allclose(
            getattr(out, task).numpy(), np.array(values), atol=1e-4, rtol=0, err_msg=task
        )
