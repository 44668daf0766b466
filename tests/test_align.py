"""Tests of face alignment (affectfpn.inference.align)."""

import math
from pathlib import Path

import cv2
import numpy as np
import pytest

from affectfpn.errors import InputError
from affectfpn.inference.align import (
    ARCFACE_TEMPLATE_112,
    DEFAULT_ALIGN_MARGIN,
    align_face,
    alignment_scale,
    alignment_transform,
    crop_box,
    face_template,
    similarity_transform,
    warp_face,
)
from affectfpn.inference.detectors import Detection, YuNetDetector
from affectfpn.io import load_image

COLOURS = np.array(
    [[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0], [255, 0, 255]], dtype=np.uint8
)


def _similarity(angle_deg: float, scale: float, tx: float, ty: float) -> np.ndarray:
    a = math.radians(angle_deg)
    c, s = scale * math.cos(a), scale * math.sin(a)
    return np.array([[c, -s, tx], [s, c, ty]])


def _apply(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    return points @ matrix[:, :2].T + matrix[:, 2]


def _blob_image(points: np.ndarray, radius: int, size: tuple[int, int] = (600, 600)) -> np.ndarray:
    image = np.full((*size, 3), 40, np.uint8)
    for (x, y), colour in zip(points, COLOURS, strict=True):
        cv2.circle(image, (round(x), round(y)), radius, tuple(int(c) for c in colour), -1)
    return image


def _centroids(image: np.ndarray) -> np.ndarray:
    out = []
    for colour in COLOURS.astype(int):
        distance = np.abs(image.astype(int) - colour).sum(axis=2)
        weight = np.clip(1.0 - distance / 150.0, 0.0, None)
        assert weight.sum() > 0, f"colour {colour} missing from the aligned face"
        ys, xs = np.indices(weight.shape)
        out.append([(xs * weight).sum() / weight.sum(), (ys * weight).sum() / weight.sum()])
    return np.array(out)


def test_similarity_transform_recovers_a_known_transform() -> None:
    rng = np.random.default_rng(0)
    src = rng.uniform(0, 200, size=(5, 2))
    truth = _similarity(angle_deg=-33.0, scale=1.7, tx=12.5, ty=-40.0)
    estimated = similarity_transform(src, _apply(truth, src))
    np.testing.assert_allclose(estimated, truth, atol=1e-9)


def test_similarity_transform_is_least_squares_and_never_reflects() -> None:
    rng = np.random.default_rng(1)
    src = rng.uniform(-50, 50, size=(5, 2))
    truth = _similarity(10.0, 0.8, 3.0, 4.0)
    dst = _apply(truth, src) + rng.normal(0, 0.5, size=(5, 2))
    fitted = similarity_transform(src, dst)
    residual = np.sum((_apply(fitted, src) - dst) ** 2)
    for delta in np.eye(6) * 1e-3:  # any small change of the parameters fits worse
        a, b, tx, ty = (
            np.array([fitted[0, 0], fitted[1, 0], fitted[0, 2], fitted[1, 2]]) + delta[:4]
        )
        moved = np.array([[a, -b, tx], [b, a, ty]])
        assert np.sum((_apply(moved, src) - dst) ** 2) >= residual
    mirrored = src * [-1, 1]
    assert np.linalg.det(similarity_transform(src, mirrored)[:, :2]) >= 0


def test_similarity_transform_rejects_degenerate_points() -> None:
    with pytest.raises(InputError, match="coincide"):
        similarity_transform(np.ones((5, 2)), np.zeros((5, 2)))
    with pytest.raises(InputError, match="N x 2"):
        similarity_transform(np.ones((5, 2)), np.zeros((4, 2)))


def test_template_scaling_and_margin() -> None:
    np.testing.assert_allclose(face_template((112, 112), margin=0), ARCFACE_TEMPLATE_112)
    np.testing.assert_allclose(face_template((224, 224), margin=0), 2 * ARCFACE_TEMPLATE_112)
    padded = face_template((112, 112), margin=0.25)
    centre = np.array([56.0, 56.0])
    np.testing.assert_allclose(padded - centre, (ARCFACE_TEMPLATE_112 - centre) / 1.5)
    wide = face_template((100, 140), margin=0)  # centred along the longer side, not stretched
    np.testing.assert_allclose(wide, ARCFACE_TEMPLATE_112 * 100 / 112 + [20, 0])


@pytest.mark.parametrize(
    ("angle", "scale", "radius"),
    [(25.0, 2.0, 5), (-15.0, 6.0, 14)],  # the second one shrinks 6x: pre-filtered path
)
def test_aligned_landmarks_land_on_the_template(angle: float, scale: float, radius: int) -> None:
    size = (112, 112)
    template = face_template(size)
    to_image = _similarity(angle, scale, 300.0, 280.0)
    template_centred = template - 56.0
    landmarks = _apply(to_image, template_centred)
    image = _blob_image(landmarks, radius, size=(900, 900))
    det = Detection(box=(0, 0, 899, 899), score=1.0, landmarks=landmarks)

    expected = np.asarray(cv2.invertAffineTransform(to_image), dtype=np.float64)
    expected[:, 2] += 56.0
    np.testing.assert_allclose(alignment_transform(det, size), expected, atol=1e-6)

    aligned = align_face(image, det, size)
    assert aligned.shape == (112, 112, 3)
    assert aligned.dtype == np.uint8
    assert aligned.flags.c_contiguous
    np.testing.assert_allclose(_centroids(aligned), template, atol=0.6)


def test_replicated_border_outside_the_image() -> None:
    image = np.zeros((50, 50, 3), np.uint8)
    image[:, :, 0] = np.arange(50, dtype=np.uint8)[None, :] * 5  # red grows to the right
    out = crop_box(image, (0, 0, 20, 20), (40, 40), margin=1.0)  # crop reaches x, y < 0
    assert out.shape == (40, 40, 3)
    np.testing.assert_array_equal(out[:, :5, 0], 0)  # left of the image: column 0 repeated
    assert out[20, 30, 0] > out[20, 15, 0] > 0


def test_crop_box_identity_and_non_square() -> None:
    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, size=(200, 200, 3), dtype=np.uint8)
    np.testing.assert_array_equal(
        crop_box(image, (50, 60, 150, 160), (100, 100), margin=0), image[60:160, 50:150]
    )
    wide = crop_box(image, (50, 60, 150, 160), (100, 150), margin=0)  # widened, same scale
    np.testing.assert_array_equal(wide, image[60:160, 25:175])


def test_crop_box_downscale_is_antialiased() -> None:
    stripes = np.zeros((400, 400, 3), np.uint8)
    stripes[:, ::2] = 255  # 1-pixel stripes alias badly under plain bilinear sampling
    out = crop_box(stripes, (0, 0, 400, 400), (37, 37), margin=0)
    assert np.abs(out.astype(int) - 128).max() <= 16  # unfiltered bilinear: up to 127


def test_no_landmarks_means_box_crop() -> None:
    rng = np.random.default_rng(4)
    image = rng.integers(0, 256, size=(120, 160, 3), dtype=np.uint8)
    det = Detection(box=(40, 30, 90, 100), score=0.9)
    np.testing.assert_array_equal(
        align_face(image, det, (64, 64), box_margin=0.3),
        crop_box(image, det.box, (64, 64), margin=0.3),
    )
    grey = image[:, :, 0]
    np.testing.assert_array_equal(
        align_face(grey, det, (64, 64)), align_face(np.dstack([grey] * 3), det, (64, 64))
    )


def _ramp(size: int) -> np.ndarray:
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float64)
    return np.stack([xs * 0.6, ys * 0.6, (xs + ys) * 0.2], -1)


def test_a_reduced_image_aligns_like_the_full_one() -> None:
    # A smooth ramp, and the same ramp averaged over 4 x 4 blocks (what libjpeg's 1/4 scaled
    # decoding gives): pixel j of the reduced image covers full pixels 4j .. 4j + 3.
    ramp = _ramp(400)
    full = ramp.round().astype(np.uint8)
    reduced = ramp.reshape(100, 4, 100, 4, 3).mean(axis=(1, 3)).round().astype(np.uint8)
    template = face_template((48, 48))
    matrix = _similarity(15.0, 5.0, 90.0, 60.0)  # output -> image: a face of about 240 px
    points = template @ matrix[:, :2].T + matrix[:, 2]
    box = (*points.min(axis=0), *points.max(axis=0))
    landmarked = Detection(box=box, score=1.0, landmarks=points)
    for detection in (landmarked, Detection((60.0, 50.0, 330.0, 340.0), 1.0)):
        assert alignment_scale(alignment_transform(detection, (48, 48))) < 0.25  # shrunk > 4x
        expected = align_face(full, detection, (48, 48)).astype(int)
        got = align_face(reduced, detection, (48, 48), reduction=4).astype(int)
        # Same pixels up to rounding; a reduced image read as if pixel j covered 4j .. 4j + 4
        # (no half-block offset) is off by 1.5 full pixels, about 0.9 grey levels here.
        assert np.abs(got - expected).mean() < 0.4
        np.testing.assert_array_equal(
            align_face(full, detection, (48, 48), reduction=1), expected.astype(np.uint8)
        )
    with pytest.raises(InputError, match="reduction"):
        align_face(reduced, landmarked, (48, 48), reduction=0)


def test_alignment_scale_is_output_pixels_per_image_pixel() -> None:
    box = alignment_transform(Detection((0, 0, 100, 100), 1.0), (50, 50), box_margin=0)
    assert alignment_scale(box) == pytest.approx(0.5)
    template = face_template((64, 64))
    big = template * 3.0 + 7.0  # the template three times as large
    detection = Detection(box=(0, 0, 200, 200), score=1.0, landmarks=big)
    matrix = alignment_transform(detection, (64, 64))
    assert alignment_scale(matrix) == pytest.approx(1 / 3, rel=1e-6)
    # warp_face with that matrix is align_face
    image = np.random.default_rng(2).integers(0, 256, (220, 220, 3), dtype=np.uint8)
    np.testing.assert_array_equal(
        warp_face(image, matrix, (64, 64)), align_face(image, detection, (64, 64))
    )


@pytest.mark.parametrize("size", [(0, 10), (10,), "ab", (-1, -1)])
def test_bad_output_sizes(size: object) -> None:
    det = Detection(box=(0, 0, 5, 5), score=1.0)
    with pytest.raises(InputError, match="output_size"):
        align_face(np.zeros((8, 8, 3), np.uint8), det, size)  # type: ignore[arg-type]


def test_zero_size_box_is_refused() -> None:
    with pytest.raises(InputError, match="positive size"):
        crop_box(np.zeros((8, 8, 3), np.uint8), (3, 3, 3, 3), (16, 16))


@pytest.mark.shared
def test_real_face_is_aligned_onto_the_template(samples_dir: Path, yunet_path: Path) -> None:
    detector = YuNetDetector(yunet_path)
    rgb = load_image(samples_dir / "0-f15-hao-ph.jpg").rgb
    (face,) = detector.detect(rgb)
    aligned = align_face(rgb, face, (224, 224), margin=0.3)
    again = detector.detect(aligned)  # detect on the aligned crop: landmarks sit on the template
    assert len(again) == 1
    assert again[0].landmarks is not None
    error = np.linalg.norm(again[0].landmarks - face_template((224, 224), margin=0.3), axis=1)
    assert error.max() < 8.0  # pixels, at 224 px; YuNet's own landmark noise is a few pixels
    assert DEFAULT_ALIGN_MARGIN > 0  # the default keeps more than the tight ArcFace crop


def test_template_shift_moves_the_face_and_margin_zooms() -> None:
    base = face_template((48, 48))
    moved = face_template((48, 48), shift=-0.06)
    np.testing.assert_allclose(moved - base, [[0.0, -0.06 * 48]] * 5)
    zoomed = face_template((48, 48), margin=-0.05)
    # a negative margin spreads the points apart around the crop's centre (the face looks larger)
    assert np.ptp(zoomed[:, 0]) > np.ptp(base[:, 0])
    for bad in (0.5, -0.7, float("nan")):
        with pytest.raises(InputError, match="shift must be"):
            face_template((48, 48), shift=bad)
    # align_face places the landmarks where the shifted template says
    points = np.array([[30.0, 40.0], [60.0, 40.0], [45.0, 55.0], [33.0, 70.0], [57.0, 70.0]])
    detection = Detection(box=(20.0, 20.0, 70.0, 80.0), score=1.0, landmarks=points)
    matrix = alignment_transform(detection, (48, 48), margin=-0.05, shift=-0.06)
    mapped = points @ matrix[:, :2].T + matrix[:, 2]
    target = face_template((48, 48), margin=-0.05, shift=-0.06)
    assert np.abs(mapped - target).max() < 3.0  # least squares onto the template


def test_crop_box_at_half_scale_samples_pixel_centres() -> None:
    """On a linear ramp, output pixel j at scale 0.5 covers source pixels 2j and 2j + 1, so its
    value is the ramp at x = 2j + 0.5 (pixel i spans [i, i + 1)). Dropping the half-pixel terms
    of the box transform shifts every value by half a source pixel."""
    ramp = np.tile((2 * np.arange(128)).astype(np.uint8), (128, 1))
    image = np.dstack([ramp] * 3)
    out = crop_box(image, (0, 0, 128, 128), (64, 64), margin=0).astype(float)
    expected = 2 * (2 * np.arange(64) + 0.5)  # 4j + 1
    inner = slice(2, 62)  # away from the repeated edge
    np.testing.assert_allclose(out[10, inner, 0], expected[inner], atol=0.5)
