"""Tests of face detection (affectfpn.inference.detectors) on the real sample photos."""

import hashlib
import math
import pickle
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest
from hubserver import LocalHub, set_hf_offline

from affectfpn.errors import AffectFPNError, ConfigError, InputError, OfflineError, WeightsError
from affectfpn.inference import detectors
from affectfpn.inference.detectors import (
    YUNET_ENV,
    YUNET_FILENAME,
    YUNET_REPO_ID,
    Detection,
    FaceDetector,
    HaarDetector,
    YuNetDetector,
    download_yunet,
    get_detector,
)
from affectfpn.io import load_image


@pytest.fixture(autouse=True)
def _no_yunet_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(YUNET_ENV, raising=False)


@pytest.fixture(scope="module")
def yunet(yunet_path: Path) -> YuNetDetector:
    return YuNetDetector(yunet_path)


def _rgb(samples_dir: Path, name: str) -> np.ndarray:
    return load_image(samples_dir / name).rgb


def _haar_available() -> bool:
    try:
        HaarDetector()
    except AffectFPNError:
        return False
    return True


# --------------------------------------------------------------------------- YuNet on real photos


@pytest.mark.shared
@pytest.mark.parametrize(
    ("name", "faces"),
    [
        ("multi_face.jpg", 5),
        ("single_face.jpg", 1),
        ("free-mountain-vector-01.jpg", 0),
        ("BWPictureHuman.jpg", 1),
        ("Image_with_alpha.png", 1),
    ],
)
def test_yunet_counts_faces_in_samples(
    yunet: YuNetDetector, samples_dir: Path, name: str, faces: int
) -> None:
    rgb = _rgb(samples_dir, name)
    assert rgb.ndim == 3
    assert rgb.shape[2] == 3
    found = yunet.detect(rgb)
    assert len(found) == faces
    height, width = rgb.shape[:2]
    scores = [d.score for d in found]
    assert scores == sorted(scores, reverse=True)
    for det in found:
        assert 0.6 <= det.score <= 1.0
        x1, y1, x2, y2 = det.box
        assert 0 <= x1 < x2 <= width
        assert 0 <= y1 < y2 <= height
        assert det.landmarks is not None
        # landmarks lie in (or very near) their own box
        slack = 0.2 * max(det.width, det.height)
        assert (det.landmarks[:, 0] > x1 - slack).all()
        assert (det.landmarks[:, 0] < x2 + slack).all()
        assert (det.landmarks[:, 1] > y1 - slack).all()
        assert (det.landmarks[:, 1] < y2 + slack).all()


@pytest.mark.shared
def test_large_photo_needs_downscaling(yunet_path: Path, samples_dir: Path) -> None:
    rgb = _rgb(samples_dir, "BWPictureHuman.jpg")
    assert max(rgb.shape) > 2000
    assert YuNetDetector(yunet_path, max_side=None, min_face=None).detect(rgb) == []
    found = YuNetDetector(yunet_path, max_side=640).detect(rgb)
    assert len(found) == 1
    assert found[0].width > 100  # mapped back to the full-size photo, not the 640 px copy


def test_scale_from_the_smallest_face_and_the_longest_side(yunet_path: Path) -> None:
    default = YuNetDetector(yunet_path)
    assert default.min_face == 32.0
    assert default.scale_for(640, 360) == detectors.YUNET_MIN_FACE / 32  # a quarter of the pixels
    assert default.scale_for(2560, 1912) == 640 / 2560  # the longest side decides
    assert YuNetDetector(yunet_path, min_face=8).scale_for(640, 360) == 1.0  # never upscaled
    assert YuNetDetector(yunet_path, min_face=None).scale_for(640, 360) == 1.0
    assert YuNetDetector(yunet_path, min_face=64).scale_for(640, 360) == 0.25
    for bad in (0, -3, "32", True):
        with pytest.raises(ConfigError, match="min_face must be a positive number"):
            YuNetDetector(yunet_path, min_face=bad)  # type: ignore[arg-type]
    assert "min_face=32.0" in repr(default)
    # get_detector passes min_face to the YuNet it builds, and refuses it for Haar
    built = detectors.get_detector(str(yunet_path), min_face=20)
    assert isinstance(built, YuNetDetector)
    assert built.min_face == 20.0
    assert getattr(detectors.get_detector("yunet", min_face=None), "min_face", "?") is None
    with pytest.raises(ConfigError, match="min_face applies to the YuNet detector"):
        detectors.get_detector("haar", min_face=20)


@pytest.mark.shared
@pytest.mark.parametrize(
    "name", ["multi_face.jpg", "single_face.jpg", "0-f1-su-ph.jpg", "45-m7-di-ph.jpg"]
)
def test_downscaled_detection_finds_the_same_faces(
    yunet: YuNetDetector, yunet_path: Path, samples_dir: Path, name: str
) -> None:
    """The default (shrunk by min_face) finds the faces of the full-size run, in the same places."""
    rgb = _rgb(samples_dir, name)
    full = YuNetDetector(yunet_path, min_face=None).detect(rgb)
    fast = yunet.detect(rgb)
    assert yunet.scale_for(rgb.shape[1], rgb.shape[0]) <= YuNetDetector(
        yunet_path, min_face=None
    ).scale_for(rgb.shape[1], rgb.shape[0])
    assert len(fast) == len(full) > 0
    for face in full:
        best = max(fast, key=lambda f: _iou(f.box, face.box))
        assert _iou(best.box, face.box) > 0.7  # YuNet's boxes move a little with scale
        assert best.landmarks is not None
        assert face.landmarks is not None
        assert np.abs(best.landmarks - face.landmarks).max() < 0.12 * face.width


def _iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union


@pytest.mark.shared
def test_landmark_order_is_the_documented_one(yunet: YuNetDetector, samples_dir: Path) -> None:
    (face,) = yunet.detect(_rgb(samples_dir, "single_face.jpg"))
    assert face.landmarks is not None
    right_eye, left_eye, nose, right_mouth, left_mouth = face.landmarks
    assert right_eye[0] < nose[0] < left_eye[0]  # subject's right eye on the image's left
    assert right_mouth[0] < left_mouth[0]
    assert max(right_eye[1], left_eye[1]) < nose[1] < min(right_mouth[1], left_mouth[1])


@pytest.mark.shared
def test_boxes_map_back_from_the_downscaled_copy(yunet: YuNetDetector, samples_dir: Path) -> None:
    rgb = _rgb(samples_dir, "single_face.jpg")
    assert max(rgb.shape[:2]) <= 640
    (small,) = yunet.detect(rgb)
    big_rgb = cv2.resize(rgb, None, fx=2.0, fy=2.0, interpolation=cv2.INTER_LINEAR)
    (big,) = yunet.detect(big_rgb)  # downscaled internally to 640 px, mapped back
    tolerance = 0.05 * small.width * 2
    np.testing.assert_allclose(np.array(big.box), 2 * np.array(small.box), atol=tolerance)
    assert big.landmarks is not None
    assert small.landmarks is not None
    np.testing.assert_allclose(big.landmarks, 2 * small.landmarks, atol=tolerance)


@pytest.mark.shared
def test_grey_and_odd_sized_inputs(yunet: YuNetDetector, samples_dir: Path) -> None:
    grey = cv2.cvtColor(_rgb(samples_dir, "single_face.jpg"), cv2.COLOR_RGB2GRAY)
    assert len(yunet.detect(grey)) == 1
    for shape in [(1, 1, 3), (7, 13, 3), (31, 1, 3)]:
        assert yunet.detect(np.zeros(shape, np.uint8)) == []


@pytest.mark.shared
def test_one_detector_is_safe_across_threads(yunet: YuNetDetector, samples_dir: Path) -> None:
    images = [
        _rgb(samples_dir, "single_face.jpg"),
        _rgb(samples_dir, "multi_face.jpg"),
        _rgb(samples_dir, "free-mountain-vector-01.jpg")[::3, ::3],
    ]
    expected = [yunet.detect(img) for img in images]
    results: dict[int, list[list[Detection]]] = {i: [] for i in range(len(images))}
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            for _ in range(3):
                results[i].append(yunet.detect(images[i]))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(images))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for i, runs in results.items():
        assert all(run == expected[i] for run in runs)


@pytest.mark.shared
def test_yunet_survives_pickling(yunet: YuNetDetector, samples_dir: Path) -> None:
    clone = pickle.loads(pickle.dumps(yunet))
    assert clone is not yunet
    assert clone.model_path == yunet.model_path
    assert clone.max_side == yunet.max_side
    rgb = _rgb(samples_dir, "multi_face.jpg")
    assert clone.detect(rgb) == yunet.detect(rgb)


def test_yunet_argument_and_file_errors(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match="no such YuNet model file"):
        YuNetDetector(tmp_path / "missing.onnx")
    junk = tmp_path / "junk.onnx"
    junk.write_text("not a model")
    with pytest.raises(WeightsError, match=r"junk\.onnx"):
        YuNetDetector(junk)
    with pytest.raises(ConfigError, match="score_threshold"):
        YuNetDetector(junk, score_threshold=1.5)
    with pytest.raises(ConfigError, match="max_side"):
        YuNetDetector(junk, max_side=8)


def test_old_opencv_is_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(cv2, "__version__", "4.5.4")
    with pytest.raises(AffectFPNError, match=r"OpenCV >= 4\.8.*4\.5\.4"):
        YuNetDetector(tmp_path / "any.onnx")


# --------------------------------------------------------------------------- weights resolution


@pytest.mark.shared
def test_env_variable_names_the_model(monkeypatch: pytest.MonkeyPatch, yunet_path: Path) -> None:
    monkeypatch.setenv(YUNET_ENV, str(yunet_path))
    assert download_yunet() == yunet_path
    assert YuNetDetector().model_path == yunet_path
    for spec in ("yunet", "auto", "YuNet"):
        detector = get_detector(spec)
        assert isinstance(detector, YuNetDetector)
        assert detector.model_path == yunet_path
    monkeypatch.setenv(YUNET_ENV, str(yunet_path.parent / "nope.onnx"))
    with pytest.raises(WeightsError, match=YUNET_ENV):
        YuNetDetector()


@pytest.fixture
def pinned_hub(local_hub: LocalHub, monkeypatch: pytest.MonkeyPatch, yunet_path: Path) -> LocalHub:
    """The local Hub serving the shared YuNet file as the pinned revision."""
    data = yunet_path.read_bytes()
    commit = local_hub.add_file(YUNET_REPO_ID, YUNET_FILENAME, data)
    monkeypatch.setattr(detectors, "YUNET_REVISION", commit)
    monkeypatch.setattr(detectors, "YUNET_SHA256", hashlib.sha256(data).hexdigest())
    monkeypatch.setattr(detectors, "_verified_downloads", set())
    return local_hub


@pytest.mark.shared
def test_download_from_the_hub_then_offline_from_cache(
    pinned_hub: LocalHub,
    monkeypatch: pytest.MonkeyPatch,
    yunet_path: Path,
) -> None:
    path = download_yunet()
    assert path.read_bytes() == yunet_path.read_bytes()
    assert any(detectors.YUNET_REVISION in r for r in pinned_hub.requests)
    assert len(get_detector("auto").detect(np.zeros((64, 64, 3), np.uint8))) == 0
    set_hf_offline(monkeypatch, True)
    pinned_hub.reset_requests()
    assert download_yunet() == path
    assert isinstance(YuNetDetector(), YuNetDetector)
    assert pinned_hub.request_count == 0


@pytest.mark.shared
def test_offline_without_cache_names_the_repo_and_fix(
    pinned_hub: LocalHub,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    set_hf_offline(monkeypatch, True)
    with pytest.raises(OfflineError) as info:
        get_detector("yunet-hub")  # the opt-in Hub version; the default is embedded
    message = str(info.value)
    assert YUNET_REPO_ID in message
    assert "detector='path/to/face_detection_yunet.onnx'" in message
    assert "download_yunet()" in message


@pytest.mark.shared
def test_hub_outage_is_an_offline_error(pinned_hub: LocalHub) -> None:
    pinned_hub.set_down(True, "refuse")
    with pytest.raises(OfflineError, match=YUNET_REPO_ID):
        download_yunet()


@pytest.mark.shared
def test_unreachable_hub_fails_at_once_without_retries(pinned_hub: LocalHub) -> None:
    pinned_hub.set_down(True, "refuse")
    before = pinned_hub.request_count
    with pytest.raises(OfflineError, match="not reachable"):
        download_yunet()
    # One probe (refused connections are counted on the client side), no retry loop, and no
    # HTTP request was even tried.
    assert pinned_hub.connect_attempts == 1
    assert pinned_hub.request_count == before


@pytest.mark.shared
def test_checksum_and_revision_are_enforced(
    pinned_hub: LocalHub,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real_sha = detectors.YUNET_SHA256
    monkeypatch.setattr(detectors, "YUNET_SHA256", "0" * 64)
    with pytest.raises(WeightsError, match="SHA-256"):
        download_yunet()
    # The revision half, with the right checksum, so that only the revision can fail: the file
    # exists on main and at the pinned commit, but not at this one.
    monkeypatch.setattr(detectors, "YUNET_SHA256", real_sha)
    monkeypatch.setattr(detectors, "_verified_downloads", set())
    monkeypatch.setattr(detectors, "YUNET_REVISION", "f" * 40)
    with pytest.raises(
        WeightsError, match=f"(?s){YUNET_REPO_ID}@{'f' * 40}.*Revision Not Found"
    ) as info:
        download_yunet()
    assert not isinstance(info.value, OfflineError)
    assert any("f" * 40 in r for r in pinned_hub.requests)


# --------------------------------------------------------------------------- Haar


def test_haar_finds_the_face_where_opencv_has_cascades_and_explains_where_not() -> None:
    """Never skipped: OpenCV 4.x ships Haar cascades and finds the sample face; OpenCV 5.x (the
    newest allowed) has none, and asking for Haar is a clear error that names YuNet."""
    photo = Path(__file__).resolve().parents[1] / "examples" / "images" / "single_face.jpg"
    major = int(cv2.__version__.split(".")[0])
    if not _haar_available():
        assert major >= 5 or not hasattr(cv2, "CascadeClassifier"), (
            f"OpenCV {cv2.__version__} should have Haar cascades"
        )
        with pytest.raises(AffectFPNError, match=r"Haar|haarcascade") as info:
            HaarDetector()
        assert "YuNet" in str(info.value)
        return
    found = HaarDetector().detect(load_image(photo).rgb)
    assert len(found) >= 1
    assert all(0 < d.score <= 1 for d in found)
    assert all(d.landmarks is None for d in found)


def test_haar_scores_squash_level_weights(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    class FakeCascade:
        def __init__(self, path: str) -> None:
            self.path = path

        def empty(self) -> bool:
            return False

        def detectMultiScale3(self, grey: np.ndarray, **kwargs: object) -> tuple:
            assert grey.ndim == 2
            assert kwargs["outputRejectLevels"] is True
            rects = np.array([[10, 20, 30, 40], [0, 0, 5, 5]])
            return rects, np.array([25, 25]), np.array([-1.0, 2.0])

    monkeypatch.setattr(detectors, "_cascade_class", lambda: FakeCascade)
    xml = tmp_path / "cascade.xml"
    xml.write_text("<opencv_storage/>")
    found = HaarDetector(cascade_path=xml).detect(np.zeros((50, 60, 3), np.uint8))
    assert [d.box for d in found] == [(0.0, 0.0, 5.0, 5.0), (10.0, 20.0, 40.0, 60.0)]
    assert found[0].score == pytest.approx(1 / (1 + math.exp(-2.0)))
    assert found[1].score == pytest.approx(1 / (1 + math.exp(1.0)))
    with pytest.raises(AffectFPNError, match="cannot load"):
        HaarDetector(cascade_path=tmp_path / "missing.xml")


def test_auto_falls_back_to_haar_or_explains(monkeypatch: pytest.MonkeyPatch) -> None:
    def old_opencv() -> None:
        raise AffectFPNError("YuNet needs OpenCV >= 4.8 with cv2.FaceDetectorYN")

    # auto uses the embedded YuNet; Haar only where this OpenCV cannot run YuNet
    monkeypatch.setattr(detectors, "_require_cv2_for_yunet", old_opencv)
    if _haar_available():
        assert isinstance(get_detector("auto"), HaarDetector)
    else:
        with pytest.raises(AffectFPNError, match=r"OpenCV >= 4\.8.*Haar fallback is unavailable"):
            get_detector("auto")


# --------------------------------------------------------------------------- protocol, factory


class _FixedDetector:
    def detect(self, rgb: np.ndarray) -> list[Detection]:
        h, w = rgb.shape[:2]
        return [Detection(box=(0, 0, w, h), score=0.5)]


def test_custom_detector_plugs_in() -> None:
    mine = _FixedDetector()
    assert isinstance(mine, FaceDetector)
    assert get_detector(mine) is mine
    (face,) = get_detector(mine).detect(np.zeros((4, 6, 3), np.uint8))
    assert face.box == (0.0, 0.0, 6.0, 4.0)


@pytest.mark.parametrize("spec", ["retinaface", "", 3, None, _FixedDetector])
def test_unknown_specs_list_the_options(spec: object) -> None:
    with pytest.raises(ConfigError, match="'auto', 'yunet', 'yunet-hub', 'haar'"):
        get_detector(spec)


@pytest.mark.shared
def test_onnx_path_spec(yunet_path: Path) -> None:
    for spec in (yunet_path, str(yunet_path)):
        detector = get_detector(spec)
        assert isinstance(detector, YuNetDetector)
        assert detector.model_path == yunet_path


# --------------------------------------------------------------------------- Detection


def test_detection_validates_and_normalises() -> None:
    marks = np.arange(10, dtype=np.float64).reshape(5, 2)
    det = Detection(box=(1, 2, 3, 4), score=np.float32(0.5), landmarks=marks)  # type: ignore[arg-type]
    assert det.box == (1.0, 2.0, 3.0, 4.0)
    assert isinstance(det.score, float)
    assert det.landmarks is not None
    assert det.landmarks.dtype == np.float32
    assert not det.landmarks.flags.writeable
    marks[0, 0] = 99  # the detection holds its own copy
    assert det.landmarks[0, 0] == 0
    assert det == Detection((1, 2, 3, 4), 0.5, np.arange(10).reshape(5, 2))
    assert det != Detection((1, 2, 3, 4), 0.5, None)
    assert hash(det) == hash(Detection((1, 2, 3, 4), 0.5))
    assert (det.width, det.height, det.center) == (2.0, 2.0, (2.0, 3.0))
    assert det.to_dict()["landmarks"][4] == [8.0, 9.0]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"box": (5, 0, 1, 1), "score": 1.0}, "x1 <= x2"),
        ({"box": (0, 0, 1), "score": 1.0}, "4 finite"),
        ({"box": (0, 0, float("nan"), 1), "score": 1.0}, "4 finite"),
        ({"box": "abcd", "score": 1.0}, "4 numbers"),
        ({"box": (0, 0, 1, 1), "score": float("nan")}, "finite"),
        ({"box": (0, 0, 1, 1), "score": 1.0, "landmarks": np.zeros((4, 2))}, "5 x 2"),
    ],
)
def test_detection_rejects_bad_values(kwargs: dict, message: str) -> None:
    with pytest.raises(InputError, match=message):
        Detection(**kwargs)


def test_shrink_is_checked_and_large_shrinks_keep_the_coordinates(yunet_path: Path) -> None:
    from affectfpn.inference.detectors import ShrinkingDetector, _area_shrink

    detector = YuNetDetector(yunet_path)
    assert isinstance(detector, ShrinkingDetector)
    image = np.zeros((40, 40, 3), np.uint8)
    for bad in (0.0, -0.5, 1.5, float("nan")):
        with pytest.raises(InputError, match="shrink must be in"):
            detector.detect(image, shrink=bad)
    rng = np.random.default_rng(0)
    ys, xs = np.mgrid[0:1036, 0:1524]
    ramp = np.stack([xs / 6, ys / 5, (xs + ys) / 10], -1) + rng.normal(0, 3, (1036, 1524, 3))
    photo = ramp.clip(0, 255).astype(np.uint8)
    direct = cv2.resize(photo, (640, 435), interpolation=cv2.INTER_AREA)
    shrunk, covered_w, covered_h = _area_shrink(photo, 640, 435)
    assert shrunk.shape == direct.shape
    assert (covered_w, covered_h) == (1524, 1036)  # 2 x 2 blocks fit exactly
    assert np.abs(shrunk.astype(int) - direct).mean() < 1.0
    # 1001 x 667 to 250 x 166: 4 x 4 blocks cover 1000 x 664; the ramp stays where it was
    odd = photo[:667, :1001]
    shrunk, covered_w, covered_h = _area_shrink(odd, 250, 166)
    assert (covered_w, covered_h) == (1000, 664)
    assert shrunk.shape == (166, 250, 3)
    centre_x = (np.arange(250) + 0.5) * covered_w / 250  # the column each output pixel averages
    np.testing.assert_allclose(shrunk[:, :, 0].mean(axis=0), centre_x / 6, atol=1.0)


@pytest.mark.shared
def test_a_reduced_photo_with_the_rest_of_the_shrink_finds_the_same_face(
    yunet: YuNetDetector, samples_dir: Path
) -> None:
    path = samples_dir / "BWPictureHuman.jpg"
    full = load_image(path)
    reduced = load_image(path, reduce=lambda w, h: 1 / yunet.scale_for(w, h))
    assert reduced.reduction == 4
    expected = yunet.detect(full.rgb)
    shrink = yunet.scale_for(*reduced.full_size) * reduced.reduction
    found = yunet.detect(reduced.rgb, shrink=shrink)
    assert len(found) == len(expected) == 1
    got = np.array(found[0].box) * 4
    assert np.abs(got - np.array(expected[0].box)).max() < 6.0  # pixels of the 2560 px photo
