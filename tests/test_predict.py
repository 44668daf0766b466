"""Tests of prediction (affectfpn.inference.predictor) with a tiny random-weight model."""

import io
import logging
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from affectfpn import AffectFPN, AffectFPNConfig
from affectfpn.errors import ConfigError, InputError
from affectfpn.inference import (
    Detection,
    ImagePrediction,
    Predictor,
    align_face,
    load_image,
    predict,
    predict_iter,
)
from affectfpn.preprocess import normalize, resize_face

TOL = 1e-5


@pytest.fixture(scope="module")
def model() -> AffectFPN:
    torch.manual_seed(0)
    config = AffectFPNConfig(backbone="resnet18", fpn_width=16, input_size=(64, 64))
    return AffectFPN(config).eval()


def _values(results: ImagePrediction | list[ImagePrediction]) -> np.ndarray:
    """Every number predicted for every face (VA, expression and AU probabilities), one row each."""
    images = [results] if isinstance(results, ImagePrediction) else results
    rows = []
    for image in images:
        for face in image:
            row: list[float] = []
            if face.va is not None:
                row += list(face.va)
            if face.expression is not None:
                row += list(face.expression.probabilities.values())
            if face.aus is not None:
                row += list(face.aus.probabilities.values())
            rows.append(row)
    return np.array(rows, dtype=np.float64) if rows else np.zeros((0, 0))


def _random_images(n: int, size: tuple[int, int] = (40, 32), seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (*size, 3), dtype=np.uint8) for _ in range(n)]


# --------------------------------------------------------------------------- real photos


@pytest.mark.shared
def test_detect_mode_finds_every_face_in_real_photos(
    model: AffectFPN, samples_dir: Path, yunet_path: Path
) -> None:
    names = [
        "multi_face.jpg",
        "single_face.jpg",
        "free-mountain-vector-01.jpg",
        "Image_with_alpha.png",
        "BWPictureHuman.jpg",
    ]
    paths = [samples_dir / name for name in names]
    results = predict(model, paths, detector=str(yunet_path), progress=False)
    assert isinstance(results, list)
    assert [r.source for r in results] == [str(p) for p in paths]
    counts = dict(zip(names, (len(r) for r in results), strict=True))
    assert counts["multi_face.jpg"] == 5
    assert counts["single_face.jpg"] == 1
    assert counts["free-mountain-vector-01.jpg"] == 0  # no face: an empty result, no exception
    assert counts["Image_with_alpha.png"] >= 1
    assert counts["BWPictureHuman.jpg"] == 1
    for path, result in zip(paths, results, strict=True):
        with Image.open(path) as image:
            assert (result.width, result.height) == image.size
        assert [f.face_id for f in result] == list(range(len(result)))
        scores = [f.score for f in result]
        assert scores == sorted(scores, reverse=True)
        for face in result:
            assert face.box is not None
            assert face.landmarks is not None
            x1, y1, x2, y2 = face.box
            assert 0 <= x1 < x2 <= result.width
            assert 0 <= y1 < y2 <= result.height
            assert len(face.landmarks) == 5
            assert face.va is not None
            assert face.expression is not None
            assert face.aus is not None
            assert all(-1.0 <= v <= 1.0 for v in face.va)
            assert abs(sum(face.expression.probabilities.values()) - 1.0) < 1e-4
            assert face.aus.names == model.config.action_units
            assert face.expression.names == model.config.expressions
    # the five faces of the group photo are five different faces
    boxes = {face.box for face in results[0]}
    assert len(boxes) == 5


@pytest.mark.shared
def test_same_image_in_every_input_form_gives_the_same_prediction(
    model: AffectFPN, samples_dir: Path, yunet_path: Path
) -> None:
    path = samples_dir / "single_face.jpg"
    rgb = load_image(path).rgb
    forms: dict[str, object] = {
        "path": path,
        "str": str(path),
        "pil": Image.open(path),
        "array": rgb,
        "bgr array": np.ascontiguousarray(rgb[..., ::-1]),
        "uint8 tensor": torch.from_numpy(rgb).permute(2, 0, 1),
        "float tensor": torch.from_numpy(rgb).permute(2, 0, 1).float() / 255.0,
        "bytes": path.read_bytes(),
        "file": io.BytesIO(path.read_bytes()),
    }
    # A JPEG named by its path or given as bytes is decoded at half size (YuNet would shrink
    # this 572 x 562 photo by half anyway, see test_large_jpegs_are_decoded_reduced); the
    # other forms hold the full-size pixels. Each group agrees exactly, the two nearly.
    encoded = ("path", "str", "bytes")
    reference = predict(model, path, detector=str(yunet_path))
    decoded_reference = predict(model, rgb, detector=str(yunet_path))
    assert isinstance(reference, ImagePrediction)  # a single input gives a single result
    assert isinstance(decoded_reference, ImagePrediction)
    assert len(reference) == len(decoded_reference) == 1
    assert np.allclose(reference[0].box, decoded_reference[0].box, atol=2.0)
    np.testing.assert_allclose(_values(reference), _values(decoded_reference), atol=0.05)
    for kind, value in forms.items():
        result = predict(model, value, detector=str(yunet_path), bgr=kind == "bgr array")
        assert isinstance(result, ImagePrediction), kind
        assert len(result) == 1, kind
        expected = reference if kind in encoded else decoded_reference
        assert np.allclose(result[0].box, expected[0].box, atol=1e-3), kind
        np.testing.assert_allclose(_values(result), _values(expected), atol=TOL, err_msg=kind)
    # without bgr=True a BGR array is read as RGB: the colours, and so the outputs, differ
    swapped = predict(model, np.ascontiguousarray(rgb[..., ::-1]), detector=str(yunet_path))
    assert isinstance(swapped, ImagePrediction)
    assert len(swapped) == 0 or not np.allclose(_values(swapped), _values(reference), atol=TOL)


@pytest.mark.shared
def test_batches_across_images_equal_one_by_one(
    model: AffectFPN, samples_dir: Path, yunet_path: Path
) -> None:
    names = ["multi_face.jpg", "single_face.jpg", "free-mountain-vector-01.jpg", "0-f1-su-ph.jpg"]
    names.append("15-f13-anc-ph.jpg")
    paths = [samples_dir / n for n in names]
    one_by_one = predict(model, paths, detector=str(yunet_path), batch_size=1, num_workers=0)
    batched = predict(model, paths, detector=str(yunet_path), batch_size=7, num_workers=2)
    assert isinstance(one_by_one, list)
    assert isinstance(batched, list)
    assert [r.source for r in batched] == [str(p) for p in paths]
    assert [len(r) for r in batched] == [len(r) for r in one_by_one]
    assert sum(len(r) for r in batched) > 7  # faces of several images shared a batch
    np.testing.assert_allclose(_values(batched), _values(one_by_one), atol=TOL)
    for a, b in zip(batched, one_by_one, strict=True):
        assert [f.box for f in a] == [f.box for f in b]
    # and equal to separate calls, one image at a time
    for path, result in zip(paths, batched, strict=True):
        single = predict(model, path, detector=str(yunet_path))
        np.testing.assert_allclose(_values(single), _values(result), atol=TOL)


@pytest.mark.shared
def test_shared_predictor_in_threads_equals_sequential(
    model: AffectFPN, samples_dir: Path, yunet_path: Path
) -> None:
    predictor = Predictor(model, detector=str(yunet_path), batch_size=4, num_workers=1)
    inputs = [samples_dir / "single_face.jpg", samples_dir / "multi_face.jpg"]
    expected = predictor.predict(inputs)
    barrier = threading.Barrier(4)
    outcomes: list[object] = [None] * 4

    def work(i: int) -> None:
        barrier.wait()
        try:
            outcomes[i] = (
                predictor.predict(inputs)
                if i % 2
                else predict(model, inputs, detector=predictor.detector, batch_size=4)
            )
        except Exception as exc:  # reported below
            outcomes[i] = exc

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for outcome in outcomes:
        assert isinstance(outcome, list), outcome
        assert [len(r) for r in outcome] == [1, 5]
        np.testing.assert_allclose(_values(outcome), _values(expected), atol=1e-6)


@pytest.mark.shared
def test_model_predict_method(model: AffectFPN, samples_dir: Path, yunet_path: Path) -> None:
    path = samples_dir / "single_face.jpg"
    result = model.predict(path, detector=str(yunet_path))
    assert isinstance(result, ImagePrediction)
    direct = predict(model, path, detector=str(yunet_path))
    assert isinstance(direct, ImagePrediction)
    np.testing.assert_allclose(_values(result), _values(direct), atol=TOL)
    many = model.predict([path], detector=str(yunet_path))
    assert isinstance(many, list)
    assert len(many) == 1


# --------------------------------------------------------------------------- crop mode


def test_crop_mode_directory_matches_manual_preprocessing(model: AffectFPN, tmp_path: Path) -> None:
    images = _random_images(3, size=(48, 40))
    for i, rgb in enumerate(images):
        Image.fromarray(rgb).save(tmp_path / f"crop_{i}.png")
    (tmp_path / "notes.txt").write_text("not an image")
    results = predict(model, tmp_path, faces="crop", batch_size=2)
    assert isinstance(results, list)
    assert [Path(r.source).name for r in results] == ["crop_0.png", "crop_1.png", "crop_2.png"]
    for result in results:
        assert len(result) == 1
        face = result[0]
        assert face.box == (0.0, 0.0, 40.0, 48.0)
        assert face.score is None
        assert face.landmarks is None
        assert face.face_id == 0
    # the same numbers as the library's preprocessing followed by the model
    batch = torch.stack(
        [
            torch.from_numpy(np.array(resize_face(Image.fromarray(rgb), (64, 64)))).permute(2, 0, 1)
            for rgb in images
        ]
    )
    with torch.inference_mode():
        out = model(normalize(batch, model.config))
    assert out.va is not None
    assert out.expression is not None
    assert out.au is not None
    manual = torch.cat([out.va, out.expression.softmax(1), out.au.sigmoid()], dim=1).numpy()
    np.testing.assert_allclose(_values(results), manual, atol=TOL)
    # a 4-D tensor is a batch: one result per image, equal to the files' results
    stacked = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2)
    from_tensor = predict(model, stacked, faces="crop")
    assert isinstance(from_tensor, list)
    assert len(from_tensor) == 3
    np.testing.assert_allclose(_values(from_tensor), manual, atol=TOL)


def test_single_task_model_leaves_other_tasks_none() -> None:
    config = AffectFPNConfig(
        backbone="resnet18", fpn_width=16, input_size=(64, 64), tasks=("expression",)
    )
    expression_only = AffectFPN(config).eval()
    result = predict(expression_only, _random_images(1)[0], faces="crop")
    assert isinstance(result, ImagePrediction)
    face = result[0]
    assert face.va is None
    assert face.aus is None
    assert face.expression is not None
    assert face.tasks == ("expression",)


def test_model_in_training_mode_predicts_as_in_eval_mode_and_stays_in_training() -> None:
    config = AffectFPNConfig(backbone="resnet18", fpn_width=16, input_size=(64, 64))
    net = AffectFPN(config).eval()
    images = _random_images(3, seed=3)
    expected = predict(net, images, faces="crop")
    net.train()
    got = predict(net, images, faces="crop")
    assert net.training
    np.testing.assert_allclose(_values(got), _values(expected), atol=TOL)


def test_mixed_precision_stays_close_to_float32(model: AffectFPN) -> None:
    # amp="on" on the CPU runs the autocast path that CUDA uses by default (here bfloat16)
    images = _random_images(2, seed=5)
    exact = predict(model, images, faces="crop")
    mixed = predict(model, images, faces="crop", amp="on")
    np.testing.assert_allclose(_values(mixed), _values(exact), atol=0.02)
    assert predict(model, [], faces="crop") == []


def test_au_threshold_is_honoured(model: AffectFPN) -> None:
    image = _random_images(1, seed=1)[0]
    base = predict(model, image, faces="crop")
    assert isinstance(base, ImagePrediction)
    assert base[0].aus is not None
    probs = dict(base[0].aus.probabilities)
    assert base[0].aus.threshold == 0.5
    assert base[0].aus.active == tuple(n for n, p in probs.items() if p >= 0.5)
    threshold = float(np.median(list(probs.values())))
    result = predict(model, image, faces="crop", au_threshold=threshold)
    assert isinstance(result, ImagePrediction)
    assert result[0].aus is not None
    active = result[0].aus.active
    assert result[0].aus.threshold == threshold
    assert active == tuple(n for n, p in probs.items() if p >= threshold)
    assert 0 < len(active) < len(probs)
    with pytest.raises(ConfigError, match="au_threshold"):
        predict(model, image, faces="crop", au_threshold=1.5)


class _FixedDetector:
    """Gives two landmark-free faces, the better one last (a detector need not sort)."""

    def detect(self, rgb: np.ndarray) -> list[Detection]:
        return [Detection(box=(0, 0, 20, 20), score=0.3), Detection(box=(10, 8, 40, 38), score=0.9)]


def test_custom_detector_faces_are_numbered_by_score(model: AffectFPN) -> None:
    result = predict(model, _random_images(1, size=(50, 60))[0], detector=_FixedDetector())
    assert isinstance(result, ImagePrediction)
    assert [f.face_id for f in result] == [0, 1]
    assert [f.score for f in result] == [0.9, 0.3]
    assert result[0].box == (10.0, 8.0, 40.0, 38.0)
    assert result[0].landmarks is None


# --------------------------------------------------------------------------- errors


def test_invalid_options_raise_config_error(model: AffectFPN) -> None:
    image = _random_images(1)[0]
    with pytest.raises(ConfigError, match="faces"):
        predict(model, image, faces="boxes")
    with pytest.raises(ConfigError, match="on_error"):
        predict(model, image, faces="crop", on_error="ignore")
    with pytest.raises(ConfigError, match="batch_size"):
        predict(model, image, faces="crop", batch_size=0)
    with pytest.raises(ConfigError, match="detector"):
        predict(model, image, detector="nonsense")


def test_corrupt_file_raises_input_error_naming_it(
    model: AffectFPN, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    good = []
    for i, rgb in enumerate(_random_images(2)):
        good.append(tmp_path / f"good_{i}.png")
        Image.fromarray(rgb).save(good[-1])
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff this is not a JPEG")
    with pytest.raises(InputError, match=r"broken\.jpg"):
        predict(model, bad, faces="crop")
    with pytest.raises(InputError, match=r"broken\.jpg"):
        predict(model, [good[0], bad, good[1]], faces="crop")
    # results before the bad input are delivered before the error
    stream = predict_iter(model, [good[0], bad, good[1]], faces="crop", num_workers=0)
    first = next(stream)
    assert first.source == str(good[0])
    with pytest.raises(InputError, match=r"broken\.jpg"):
        next(stream)
    # skip: a warning names the file and the other inputs keep their results
    with caplog.at_level(logging.WARNING, logger="affectfpn"):
        results = predict(model, [good[0], bad, good[1]], faces="crop", on_error="skip")
    assert isinstance(results, list)
    assert [r.source for r in results] == [str(good[0]), str(good[1])]
    assert any("broken.jpg" in record.getMessage() for record in caplog.records)


# --------------------------------------------------------------------------- streaming, progress


def test_generator_input_is_streamed_lazily() -> None:
    # a 32 px model: 300 forward passes of the 64 px one would take most of this file's time
    config = AffectFPNConfig(backbone="resnet18", fpn_width=8, input_size=(32, 32))
    model = AffectFPN(config).eval()
    produced = 0
    rng = np.random.default_rng(7)

    def frames() -> Iterator[np.ndarray]:
        nonlocal produced
        for _ in range(300):
            produced += 1
            yield rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)

    batch_size = 16
    received = 0
    max_lag = 0
    produced_at_first = None
    for result in predict_iter(model, frames(), faces="crop", batch_size=batch_size, num_workers=1):
        assert result.source == f"<array {received}>"  # input order
        received += 1
        if produced_at_first is None:
            produced_at_first = produced
        max_lag = max(max_lag, produced - received)
    assert received == 300
    assert produced_at_first is not None
    assert produced_at_first < 300
    assert max_lag <= 3 * batch_size  # a bounded window of inputs in flight
    # stopping early stops reading the input and ends the loader threads
    produced = 0
    stream = predict_iter(model, frames(), faces="crop", batch_size=2, num_workers=2)
    next(stream)
    stream.close()
    stopped_at = produced
    assert stopped_at < 20
    assert not any(t.name.startswith("affectfpn-load") for t in threading.enumerate())


def test_progress_bar_can_be_forced_on_or_off(
    model: AffectFPN, capsys: pytest.CaptureFixture[str]
) -> None:
    images = _random_images(3)
    predict(model, images, faces="crop", progress=False)
    assert "img" not in capsys.readouterr().err
    predict(model, images, faces="crop", progress=True)
    assert "3/3" in capsys.readouterr().err


def test_compile_model_runs_every_batch_through_torch_compile(
    model: AffectFPN, monkeypatch: pytest.MonkeyPatch
) -> None:
    # torch.compile itself is torch's to test (and takes minutes on a CPU): here a stand-in
    # records how it is asked and what runs through it.
    calls: list[dict[str, object]] = []
    batches: list[int] = []

    def fake_compile(module: torch.nn.Module, **kwargs: object) -> object:
        calls.append({"module": module, **kwargs})

        def run(x: torch.Tensor) -> object:
            batches.append(int(x.shape[0]))
            return module(x)

        return run

    monkeypatch.setattr(torch, "compile", fake_compile)
    images = _random_images(5)
    plain = predict(model, images, faces="crop", batch_size=2)
    assert calls == []
    assert batches == []
    compiled = predict(model, images, faces="crop", batch_size=2, compile_model=True)
    assert calls == [{"module": model, "dynamic": True}]
    assert batches == [2, 2, 1]
    np.testing.assert_allclose(_values(compiled), _values(plain), atol=TOL)
    with pytest.raises(ConfigError, match="compile_model must be True or False"):
        predict(model, images, faces="crop", compile_model="yes")  # type: ignore[arg-type]


# ------------------------------------------------------------------ results of the model's own
class _TwoFaces:
    """Two faces per image, with scores and landmarks, wherever it is."""

    def detect(self, image: np.ndarray) -> list[Detection]:
        h, w = image.shape[:2]
        points = np.array([[10, 12], [20, 12], [15, 18], [11, 24], [19, 24]], dtype=np.float32)
        return [
            Detection(box=(2.0, 3.0, w / 2, h / 2), score=0.91, landmarks=points),
            Detection(box=(w / 2, h / 2, w - 1.0, h - 1.0), score=0.55, landmarks=None),
        ]


@pytest.mark.parametrize("threshold", [0.3, 0.5])
def test_predicted_results_equal_checked_ones(model: AffectFPN, threshold: float) -> None:
    """The predictor builds its results without the user-input checks: they must be the same
    objects (equal, same hash, same types of values) as the checked constructors build."""
    images = _random_images(3, size=(70, 90))
    for faces, detector in (("crop", "auto"), ("detect", _TwoFaces())):
        results = predict(
            model,
            images,
            faces=faces,
            detector=detector,
            au_threshold=threshold,  # type: ignore[arg-type]
        )
        for image in results:
            rebuilt = ImagePrediction.from_dict(image.to_dict())
            assert rebuilt == image
            assert hash(rebuilt.faces[0].expression) == hash(image.faces[0].expression)
            for face, checked in zip(image, rebuilt, strict=True):
                assert face.aus is not None
                assert checked.aus is not None
                assert face.aus.active == checked.aus.active
                assert face.aus.threshold == threshold
                assert all(type(v) is float for v in face.aus.probabilities.values())
                assert face.expression is not None
                assert face.expression.label == max(
                    face.expression.probabilities, key=face.expression.probabilities.__getitem__
                )
                assert abs(sum(face.expression.probabilities.values()) - 1) < 1e-4
                assert face.va is not None
                assert all(-1 <= v <= 1 for v in face.va)
                assert face.box is not None
                assert all(type(v) is float for v in face.box)


def test_predictor_follows_weight_changes(model: AffectFPN) -> None:
    """The Predictor runs a BatchNorm-folded copy: it must be rebuilt when the model changes."""
    images = _random_images(4, size=(64, 64))
    predictor = Predictor(model, faces="crop")
    before = _values(predictor.predict(images))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    try:
        with torch.no_grad():  # as an optimiser step does
            model.heads["expression"].bias.add_(torch.arange(7.0))
            model.backbone.stages[1][0].bn1.running_mean.add_(0.5)
        after = _values(predictor.predict(images))
        fresh = _values(Predictor(model, faces="crop").predict(images))
        np.testing.assert_allclose(after, fresh, atol=TOL)
        assert np.abs(after - before).max() > 1e-3
        model.load_state_dict(state)
        np.testing.assert_allclose(_values(predictor.predict(images)), before, atol=TOL)
    finally:
        model.load_state_dict(state)


def test_the_folded_model_is_looked_up_once_per_call(
    model: AffectFPN, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Checking whether the weights changed costs 0.2 ms: once per call, not once per batch.
    calls: list[int] = []
    real = Predictor._inference_model

    def counted(self: Predictor) -> torch.nn.Module:
        calls.append(1)
        return real(self)

    monkeypatch.setattr(Predictor, "_inference_model", counted)
    predictor = Predictor(model, faces="crop", batch_size=2)
    results = predictor.predict(_random_images(7, size=(64, 64)))  # 4 batches
    assert len(results) == 7
    assert len(calls) == 1
    assert list(predictor.predict_iter([])) == []
    assert len(calls) == 1  # no batch, no lookup


def test_module_tensors_are_every_parameter_and_buffer(model: AffectFPN) -> None:
    from affectfpn.inference.predictor import _module_tensors

    shared = torch.nn.Linear(2, 2, bias=False)  # no bias: a None entry to skip
    odd = torch.nn.Sequential(shared, torch.nn.BatchNorm1d(2), shared)
    odd.register_module("missing", None)
    for module in (model, odd):
        got = _module_tensors(module)
        assert all(isinstance(t, torch.Tensor) for t in got)
        expected = {id(t) for t in [*module.parameters(), *module.buffers()]}
        assert {id(t) for t in got} == expected
        assert [id(t) for t in _module_tensors(module)] == [id(t) for t in got]  # fixed order


# --------------------------------------------------------------------------- reduced decoding


def _iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


@pytest.mark.shared
def test_large_jpegs_are_decoded_reduced(
    model: AffectFPN, samples_dir: Path, yunet_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import affectfpn.inference.predictor as predictor_module

    loaded: list[tuple[int, tuple[int, int]]] = []
    real = predictor_module.load_image

    def spy(*args: object, **kwargs: object) -> object:
        image = real(*args, **kwargs)  # type: ignore[arg-type]
        loaded.append((image.reduction, image.rgb.shape[:2]))
        return image

    monkeypatch.setattr(predictor_module, "load_image", spy)
    path = samples_dir / "BWPictureHuman.jpg"  # 2560 x 1912: YuNet looks at it at 640 x 478
    result = predict(model, path, detector=str(yunet_path))
    assert loaded == [(4, (478, 640))]
    assert isinstance(result, ImagePrediction)
    assert (result.width, result.height) == (2560, 1912)  # sizes and boxes of the full photo
    full = predict(model, load_image(path).rgb, detector=str(yunet_path))
    assert isinstance(full, ImagePrediction)
    assert len(result) == len(full) == 1
    assert _iou(result[0].box, full[0].box) > 0.95
    assert result[0].landmarks is not None
    assert full[0].landmarks is not None
    assert np.abs(np.subtract(result[0].landmarks, full[0].landmarks)).max() < 4.0
    np.testing.assert_allclose(_values(result), _values(full), atol=0.05)


class _QuarterDetector:
    """Says it shrinks images by 4, and finds a large and a small face (reduced pixels)."""

    def __init__(self) -> None:
        self.shrinks: list[float | None] = []

    def scale_for(self, width: int, height: int) -> float:
        return 0.25

    def detect(self, rgb: np.ndarray, *, shrink: float | None = None) -> list[Detection]:
        self.shrinks.append(shrink)
        return [
            Detection(box=(10, 12, 90, 92), score=0.9),  # 320 px at full size
            Detection(box=(40, 40, 44, 44), score=0.5),  # 16 px at full size
        ]


def test_small_faces_are_cut_from_the_full_image(model: AffectFPN) -> None:
    from affectfpn.inference.predictor import _Prepared

    rng = np.random.default_rng(7)
    ys, xs = np.mgrid[0:400, 0:400]
    rgb = np.stack([xs * 0.6, ys * 0.6, (xs + ys) * 0.3], -1) + rng.normal(0, 2, (400, 400, 3))
    data = io.BytesIO()
    Image.fromarray(rgb.clip(0, 255).astype(np.uint8)).save(data, "JPEG", quality=95)
    detector = _QuarterDetector()
    predictor = Predictor(model, detector=detector, num_workers=0)
    prepared = predictor._prepare(("photo", data.getvalue()))
    assert isinstance(prepared, _Prepared)
    assert detector.shrinks == [1.0]  # reduced by 4 already: nothing left to shrink
    assert (prepared.width, prepared.height) == (400, 400)
    assert prepared.detections is not None
    big, small = prepared.detections
    assert big.box == (40.0, 48.0, 360.0, 368.0)  # in full-size pixels
    assert small.box == (160.0, 160.0, 176.0, 176.0)
    full = load_image(data.getvalue()).rgb
    size = model.config.input_size
    # the small face would be enlarged from the reduced image: it is cut from the full one
    np.testing.assert_array_equal(prepared.crops[1], align_face(full, small, size))
    # the large one is shrunk either way: cut from the reduced image, nearly the same pixels
    assert np.abs(prepared.crops[0].astype(int) - align_face(full, big, size)).mean() < 2.0
    # an array input is never reduced: the detector shrinks it itself
    detector.shrinks.clear()
    predictor._prepare(("array", full))
    assert detector.shrinks == [None]


class _MidFaceDetector(_QuarterDetector):
    """Shrinks by 4 and finds one face that the reduced image holds in 1 to 2 times the crop's
    pixels per side: where the reduced decode's own filter would reach the crop."""

    def detect(self, rgb: np.ndarray, *, shrink: float | None = None) -> list[Detection]:
        self.shrinks.append(shrink)
        return [Detection(box=(15, 15, 81, 81), score=0.9)]  # 264 px at full size


def test_a_face_the_reduced_image_barely_holds_is_cut_from_the_full_image(
    model: AffectFPN,
) -> None:
    """A JPEG decoded at a reduced size for the detector: a face cut from it without area
    averaging carries the decoder's own, sharper shrink (on lfw-expressions val photos, 192 px
    JPEGs at half size, the default read 0.801 against 0.870): it is cut from the full image."""
    from affectfpn.inference.align import alignment_scale, alignment_transform
    from affectfpn.inference.predictor import _Prepared

    rng = np.random.default_rng(3)
    rgb = rng.integers(0, 256, (400, 400, 3), dtype=np.uint8)
    data = io.BytesIO()
    Image.fromarray(rgb).save(data, "JPEG", quality=95)
    predictor = Predictor(model, detector=_MidFaceDetector(), num_workers=0)
    prepared = predictor._prepare(("photo", data.getvalue()))
    assert isinstance(prepared, _Prepared)
    assert prepared.detections is not None
    (face,) = prepared.detections
    size = model.config.input_size
    config = model.config
    matrix = alignment_transform(face, size, margin=config.align_margin, shift=config.align_shift)
    assert 0.5 < alignment_scale(matrix) * 4 <= 1.0  # the case under test
    full = load_image(data.getvalue()).rgb
    expected = align_face(full, face, size, margin=config.align_margin, shift=config.align_shift)
    np.testing.assert_array_equal(prepared.crops[0], expected)


def test_encoded_photos_get_a_loader_thread_per_core(
    model: AffectFPN, monkeypatch: pytest.MonkeyPatch
) -> None:
    import affectfpn.inference.predictor as predictor_module

    used: list[int] = []
    real = predictor_module._prefetch

    def spy(items: object, fn: object, workers: int, depth: int) -> object:
        used.append(workers)
        return real(items, fn, workers, depth)  # type: ignore[arg-type]

    monkeypatch.setattr(predictor_module, "_prefetch", spy)
    monkeypatch.setattr(predictor_module, "_available_cores", lambda: 3)
    torch_threads = torch.get_num_threads()
    image = _random_images(1, size=(50, 60))[0]
    encoded = io.BytesIO()
    Image.fromarray(image).save(encoded, "PNG")
    default = Predictor(model, detector=_FixedDetector())
    default.predict([encoded.getvalue()])
    default.predict([image])
    assert used == [3, max(0, 3 - torch_threads)]
    used.clear()
    Predictor(model, detector=_FixedDetector(), num_workers=1).predict([encoded.getvalue()])
    Predictor(model, faces="crop").predict([encoded.getvalue()])  # crops: the model dominates
    assert used == [1, max(0, 3 - torch_threads)]


def test_results_carry_the_model_label_names_into_tables() -> None:
    from affectfpn.inference import LabelNames, write_csv

    torch.manual_seed(0)
    names = ("calm", "angry", "disgusted", "afraid", "happy", "sad", "surprised")
    config = AffectFPNConfig(
        backbone="resnet18",
        fpn_width=16,
        input_size=(32, 32),
        expressions=names,
        action_units=("AU6", "AU12"),
    )
    model = AffectFPN(config).eval()
    images = _random_images(2, size=(32, 32))
    results = predict(model, images, faces="crop")
    assert isinstance(results, list)
    assert all(r.labels == LabelNames(names, ("AU6", "AU12")) for r in results)
    buffer = io.StringIO(newline="")
    assert write_csv(results, buffer) == 2  # no names passed: the model's come with the results
    header = buffer.getvalue().splitlines()[0].split(",")
    assert [c for c in header if c.startswith("expr_")] == [f"expr_{n}" for n in names]
    assert [c for c in header if c.endswith("_p")] == ["AU06_p", "AU12_p"]


def test_faces_are_framed_as_the_model_config_says() -> None:
    from affectfpn.inference.predictor import _Prepared

    points = np.array([[30.0, 40.0], [60.0, 40.0], [45.0, 55.0], [33.0, 70.0], [57.0, 70.0]])

    class _Landmarked:
        def detect(self, rgb: np.ndarray) -> list[Detection]:
            return [Detection(box=(20.0, 20.0, 70.0, 85.0), score=0.9, landmarks=points)]

    image = _random_images(1, size=(100, 90))[0]
    for margin, shift in ((0.1, 0.0), (-0.05, -0.06)):
        config = AffectFPNConfig(
            backbone="resnet18",
            fpn_width=8,
            input_size=(48, 48),
            align_margin=margin,
            align_shift=shift,
        )
        predictor = Predictor(AffectFPN(config).eval(), detector=_Landmarked(), num_workers=0)
        prepared = predictor._prepare(("x", image))
        assert isinstance(prepared, _Prepared)
        (detection,) = _Landmarked().detect(image)
        expected = align_face(image, detection, (48, 48), margin=margin, shift=shift)
        np.testing.assert_array_equal(prepared.crops[0], expected)


def test_one_amp_vocabulary_for_predict_evaluate_and_training() -> None:
    """auto | on | off | bf16 | fp16 everywhere, "auto" decided only by _device.amp_dtype;
    prediction's older True/False/None still mean on/off/auto."""
    import torch

    from affectfpn._device import AMP_MODES, amp_dtype
    from affectfpn.errors import ConfigError
    from affectfpn.inference import Predictor
    from affectfpn.recipes.trainer import TrainSettings

    model = AffectFPN(AffectFPNConfig(fpn_width=8, input_size=(32, 32)))
    cpu = torch.device("cpu")
    for mode in AMP_MODES:
        predictor = Predictor(model, faces="crop", device="cpu", amp=mode)
        assert predictor.amp_dtype == amp_dtype(cpu, mode)
        assert TrainSettings(amp=mode).amp == mode
    assert Predictor(model, faces="crop", device="cpu", amp=True).amp_dtype == torch.bfloat16
    assert Predictor(model, faces="crop", device="cpu", amp=None).amp_dtype is None
    assert amp_dtype(cpu, "auto") is None
    assert amp_dtype(cpu, "fp16") == torch.float16
    for bad in ("yes", 1):
        with pytest.raises(ConfigError, match="auto, on, off, bf16, fp16"):
            Predictor(model, faces="crop", device="cpu", amp=bad)
        with pytest.raises(ConfigError):
            TrainSettings(amp=bad)
