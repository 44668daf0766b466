"""Tests of drawing predictions on images."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from affectfpn.errors import InputError
from affectfpn.inference.draw import draw
from affectfpn.inference.results import (
    ActionUnits,
    Expression,
    FacePrediction,
    ImagePrediction,
    ValenceArousal,
)
from affectfpn.labels import ACTION_UNITS, EXPRESSIONS

WIDTH, HEIGHT = 200, 160
BOX = (60, 70, 140, 150)


def make_image() -> np.ndarray:
    """A smooth gradient so that drawn pixels stand out and the input is easy to compare."""
    y, x = np.mgrid[0:HEIGHT, 0:WIDTH]
    rgb = np.stack([x * 255 // WIDTH, y * 255 // HEIGHT, np.full_like(x, 128)], axis=-1)
    return rgb.astype(np.uint8)


def make_face(face_id: int = 0, box: tuple[float, float, float, float] = BOX) -> FacePrediction:
    x1, y1, x2, y2 = box
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    return FacePrediction(
        face_id=face_id,
        box=box,
        score=0.9,
        landmarks=(
            (cx - 10, cy - 8),
            (cx + 10, cy - 8),
            (cx, cy),
            (cx - 8, cy + 10),
            (cx + 8, cy + 10),
        ),
        va=ValenceArousal(0.42, -0.1),
        expression=Expression.from_probabilities(
            [0.05, 0.02, 0.03, 0.1, 0.6, 0.15, 0.05], EXPRESSIONS
        ),
        aus=ActionUnits.from_probabilities([0.9, 0.1] * 6, ACTION_UNITS),
    )


def make_prediction(*faces: FacePrediction) -> ImagePrediction:
    return ImagePrediction("test.png", WIDTH, HEIGHT, faces)


def changed(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Mask of pixels that differ between two images."""
    return np.any(a != b, axis=-1)


def test_draw_returns_new_array_and_leaves_input_untouched() -> None:
    image = make_image()
    before = image.copy()
    out = draw(image, make_prediction(make_face()))
    assert out.shape == image.shape
    assert out.dtype == np.uint8
    assert not np.shares_memory(out, image)
    np.testing.assert_array_equal(image, before)
    assert changed(out, image).any()


def test_draw_marks_the_box_edges_and_landmarks() -> None:
    image = make_image()
    out = draw(image, make_prediction(make_face()), color=(255, 0, 255))
    diff = changed(out, image)
    x1, y1, x2, y2 = BOX
    # the box outline: its left and right edges are changed along most of their height
    assert diff[y1 + 5 : y2 - 5, x1].mean() > 0.9
    assert diff[y1 + 5 : y2 - 5, x2].mean() > 0.9
    # the outline is drawn in the requested colour
    assert tuple(out[(y1 + y2) // 2, x1]) == (255, 0, 255)
    # the nose landmark (box centre) is a dot
    assert diff[(y1 + y2) // 2, (x1 + x2) // 2]
    # away from the box and its label block (above the box), nothing changes
    assert not diff[:, : x1 - 1].any()
    assert not diff[y2 + 2 :, :].any()
    assert not diff[y1 + 2 :, x2 + 2 :].any()


def test_draw_label_is_inside_image_and_near_the_face() -> None:
    image = make_image()
    out = draw(image, make_prediction(make_face()))
    diff = changed(out, image)
    x1, y1, _, _ = BOX
    # the label block sits right above the box (it fits there), starting at its left edge
    above = diff[:y1, :]
    assert above.any()
    rows = np.nonzero(above.any(axis=1))[0]
    assert rows.max() == y1 - 1
    assert not diff[:y1, :x1].any()
    # ... on a dark background: the block is darker than what it covers
    label = out[:y1][above]
    assert np.median(label.astype(float)) < np.median(image[:y1][above].astype(float))


def test_draw_without_aus_draws_less() -> None:
    image = make_image()
    prediction = make_prediction(make_face())
    with_aus = changed(draw(image, prediction), image).sum()
    without = changed(draw(image, prediction, show_aus=False), image).sum()
    assert without < with_aus


def test_draw_zero_faces_returns_unchanged_copy() -> None:
    image = make_image()
    out = draw(image, make_prediction())
    np.testing.assert_array_equal(out, image)
    assert out is not image
    assert not np.shares_memory(out, image)


def test_draw_accepts_pil_and_path(tmp_path: Path) -> None:
    image = make_image()
    prediction = make_prediction(make_face())
    expected = draw(image, prediction)
    pil = Image.fromarray(image)
    np.testing.assert_array_equal(draw(pil, prediction), expected)
    np.testing.assert_array_equal(draw(pil.convert("RGBA"), prediction), expected)
    path = tmp_path / "image.png"
    pil.save(path)
    np.testing.assert_array_equal(draw(path, prediction), expected)
    np.testing.assert_array_equal(draw(str(path), prediction), expected)


def test_draw_keeps_text_inside_for_crop_mode_and_edge_boxes() -> None:
    # crop mode: the box is the whole (small) image; an edge box reaches past the border
    crop = np.full((48, 48, 3), 200, dtype=np.uint8)
    face = FacePrediction(
        box=(0, 0, 48, 48),
        va=ValenceArousal(-0.5, 0.25),
        expression=Expression.from_probabilities([1, 0, 0, 0, 0, 0, 0], EXPRESSIONS),
    )
    out = draw(crop, ImagePrediction("crop.png", 48, 48, (face,)))
    assert out.shape == crop.shape
    assert changed(out, crop).any()

    image = make_image()
    edge = make_face(0, box=(-30.0, -20.0, 60.0, 50.0))
    far = make_face(1, box=(170.0, 120.0, 260.0, 220.0))
    out = draw(image, make_prediction(edge, far))
    assert out.shape == image.shape
    assert changed(out, image)[:, :30].any()
    assert changed(out, image)[130:, 180:].any()


def test_draw_handles_partial_predictions() -> None:
    image = make_image()
    only_box = FacePrediction(box=BOX)
    out = draw(image, make_prediction(only_box))
    diff = changed(out, image)
    assert diff[BOX[1] + 5 : BOX[3] - 5, BOX[0]].all()
    assert not diff[: BOX[1] - 3].any()  # no label block above: nothing to say


def test_draw_rejects_wrong_inputs() -> None:
    image = make_image()
    prediction = make_prediction(make_face())
    with pytest.raises(InputError, match="was made on a 200x160"):
        draw(image[:100], prediction)
    with pytest.raises(InputError, match="uint8"):
        draw(image.astype(np.float32), prediction)
    with pytest.raises(InputError, match="H x W x 3"):
        draw(image[..., 0], prediction)
    with pytest.raises(InputError, match="ImagePrediction"):
        draw(image, make_face())  # type: ignore[arg-type]
    with pytest.raises(InputError, match=r"/nonexistent/image\.png: no such file"):
        draw("/nonexistent/image.png", prediction)


def test_draw_applies_exif_orientation_like_predict(tmp_path: Path) -> None:
    # stored 200 x 160, EXIF orientation 6 ("rotate 90 clockwise to view"): upright 160 x 200
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "rotated.png"
    Image.fromarray(make_image()).save(path, exif=exif)
    upright = ImagePrediction("rotated.png", HEIGHT, WIDTH, (make_face(0, (20, 30, 100, 120)),))
    out = draw(path, upright)
    assert out.shape == (WIDTH, HEIGHT, 3)
    with Image.open(path) as opened:
        assert opened.size == (WIDTH, HEIGHT)  # the file itself is stored sideways
        stored = ImagePrediction("rotated.png", WIDTH, HEIGHT, ())
        with pytest.raises(InputError, match="was made on a 200x160"):
            draw(opened, stored)
