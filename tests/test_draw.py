"""Tests of drawing predictions on images."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from affectfpn.errors import InputError
from affectfpn.inference.draw import draw, label_layout
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


def outside(diff: np.ndarray, *rects: tuple[int, int, int, int], margin: int = 2) -> np.ndarray:
    """``diff`` with the given rectangles (grown by ``margin``) cleared."""
    rest = diff.copy()
    for x1, y1, x2, y2 in rects:
        rest[max(0, y1 - margin) : y2 + margin, max(0, x1 - margin) : x2 + margin] = False
    return rest


def test_draw_marks_the_box_edges_and_landmarks() -> None:
    image = make_image()
    prediction = make_prediction(make_face())
    out = draw(image, prediction, color=(255, 0, 255))
    diff = changed(out, image)
    x1, y1, x2, y2 = BOX
    # the box outline: its left and right edges are changed along most of their height
    assert diff[y1 + 5 : y2 - 5, x1].mean() > 0.9
    assert diff[y1 + 5 : y2 - 5, x2].mean() > 0.9
    # the outline is drawn in the requested colour
    assert tuple(out[(y1 + y2) // 2, x1]) == (255, 0, 255)
    # the nose landmark (box centre) is a dot
    assert diff[(y1 + y2) // 2, (x1 + x2) // 2]
    # outside the box and the label block, nothing changes (whatever the font's metrics)
    (label,) = label_layout(prediction)
    assert label is not None
    assert not outside(diff, BOX, label).any()
    assert diff[label[1] : label[3], label[0] : label[2]].mean() > 0.5


def test_draw_label_is_inside_image_and_next_to_the_face() -> None:
    image = make_image()
    prediction = make_prediction(make_face())
    out = draw(image, prediction)
    diff = changed(out, image)
    x1, y1, x2, _ = BOX
    (label,) = label_layout(prediction)
    assert label is not None
    lx1, ly1, lx2, ly2 = label
    assert 0 <= lx1 < lx2 <= WIDTH
    assert 0 <= ly1 < ly2 <= HEIGHT
    # right above the box (there is room there), overlapping its columns
    assert ly2 == y1
    assert lx1 < x2
    assert lx2 > x1
    # starting at the box's left edge, unless the block would then leave the image: then it
    # ends at the image's right edge
    assert lx1 == x1 if x1 + (lx2 - lx1) <= WIDTH else lx2 == WIDTH
    # the pixels drawn above the box are those of the block
    assert not outside(diff[:y1], label, margin=0).any()
    rows = np.nonzero(diff[:y1].any(axis=1))[0]
    assert rows.max() == y1 - 1
    # ... on a dark background: the block is darker than what it covers
    block = (slice(ly1, ly2), slice(lx1 + 3, lx2))
    assert np.median(out[block].astype(float)) < np.median(image[block].astype(float))


@pytest.mark.parametrize("x1", [0, 20, 60, 120, 150])
def test_draw_label_stays_in_image_and_touches_its_box(x1: int) -> None:
    box = (x1, 70, x1 + 50, 130)
    prediction = make_prediction(make_face(box=box))
    (label,) = label_layout(prediction)
    assert label is not None
    lx1, ly1, lx2, ly2 = label
    assert 0 <= lx1 < lx2 <= WIDTH
    assert 0 <= ly1 < ly2 <= HEIGHT
    assert ly2 == box[1]  # above the box
    assert lx1 < box[2]
    assert lx2 > box[0]
    # flush with one of the box's vertical edges, or with one side of the image
    assert lx1 == box[0] or lx2 == box[2] or lx1 == 0 or lx2 == WIDTH


def test_draw_labels_of_neighbouring_faces_do_not_overlap() -> None:
    # a row of five faces side by side, as in a group photo: each label is wider than its face
    width, height = 420, 260
    boxes = [(10 + 80 * i, 110, 80 + 80 * i, 180) for i in range(5)]
    faces = [make_face(i, box=box) for i, box in enumerate(boxes)]
    prediction = ImagePrediction("group.png", width, height, tuple(faces))
    labels = label_layout(prediction)
    assert all(label is not None for label in labels)
    rects = [label for label in labels if label is not None]
    for i, a in enumerate(rects):
        assert 0 <= a[0] < a[2] <= width
        assert 0 <= a[1] < a[3] <= height
        for b in rects[i + 1 :]:
            overlap_w = min(a[2], b[2]) - max(a[0], b[0])
            overlap_h = min(a[3], b[3]) - max(a[1], b[1])
            assert overlap_w <= 0 or overlap_h <= 0, (a, b)
        for box in boxes:  # and no label covers a face
            assert min(a[2], box[2]) <= max(a[0], box[0]) or min(a[3], box[3]) <= max(a[1], box[1])
    # the drawing follows the layout: every label block is darkened
    image = np.full((height, width, 3), 230, dtype=np.uint8)
    out = draw(image, prediction)
    for x1, y1, x2, y2 in rects:
        assert np.median(out[y1:y2, x1 + 3 : x2]) < 200


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
