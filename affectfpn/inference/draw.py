"""Draw an :class:`~affectfpn.inference.results.ImagePrediction` on its image.

Results never draw themselves; :func:`draw` is a function beside them. It returns a new RGB image
with, for each face, its box, a label block (expression and probability, valence and arousal, the
active action units) on a dark background, and the landmarks as small dots.
"""

import os
from collections.abc import Sequence

import cv2
import numpy as np
from PIL import Image, ImageOps

from affectfpn.errors import InputError
from affectfpn.inference.results import FacePrediction, ImagePrediction

__all__ = ["draw", "label_layout"]

#: Colours (RGB) given to faces by ``face_id`` when no colour is passed; a track keeps its colour.
_PALETTE: tuple[tuple[int, int, int], ...] = (
    (0, 200, 83),
    (41, 121, 255),
    (255, 145, 0),
    (213, 0, 249),
    (0, 184, 212),
    (255, 23, 68),
    (174, 234, 0),
    (255, 214, 0),
)

_FONT = cv2.FONT_HERSHEY_SIMPLEX
_TEXT_COLOR = (255, 255, 255)
_BACKGROUND = (20, 20, 20)
_BACKGROUND_ALPHA = 0.75
_LANDMARK_COLOR = (255, 60, 60)

ImageLike = np.ndarray | Image.Image | str | os.PathLike[str]


def _pil_to_rgb(image: Image.Image) -> np.ndarray:
    """Upright (EXIF orientation applied, as ``predict`` loads images) RGB copy of a PIL image."""
    try:
        upright = ImageOps.exif_transpose(image)
    except Exception:  # a broken EXIF block: draw on the image as stored
        upright = image
    return np.array(upright.convert("RGB"), dtype=np.uint8, order="C")


def _to_rgb_array(image: ImageLike) -> np.ndarray:
    """Return a new, writable, contiguous H x W x 3 uint8 RGB copy of ``image``."""
    if isinstance(image, (str, os.PathLike)):
        # The same safe loader as predict: format allow-list, pixel limit, EXIF orientation.
        from affectfpn.io import load_image

        return np.array(load_image(image).rgb, dtype=np.uint8, order="C", copy=True)
    if isinstance(image, Image.Image):
        return _pil_to_rgb(image)
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise InputError(
                f"image array must be H x W x 3 uint8 RGB, got shape {image.shape} and dtype "
                f"{image.dtype}; convert it (e.g. PIL.Image.fromarray(a).convert('RGB'))"
            )
        return np.array(image, dtype=np.uint8, order="C", copy=True)
    raise InputError(
        f"image must be an RGB numpy array, a PIL image or a path, got {type(image).__name__}"
    )


def _face_lines(
    face: FacePrediction, show_id: bool, show_aus: bool, max_width: int, font_scale: float, th: int
) -> list[str]:
    """The text lines of one face's label block; the AU list wraps to fit ``max_width``."""
    lines: list[str] = []
    first = f"#{face.face_id}" if show_id else ""
    if face.expression is not None:
        first = f"{first} {face.expression.label} {face.expression.score:.2f}".strip()
    if first:
        lines.append(first)
    if face.va is not None:
        lines.append(f"V {face.va.valence:+.2f} A {face.va.arousal:+.2f}")
    if show_aus and face.aus is not None:
        words = list(face.aus.active) or ["no active AU"]
        line = ""
        for word in words:
            candidate = f"{line} {word}".strip()
            width = cv2.getTextSize(candidate, _FONT, font_scale, th)[0][0]
            if width > max_width and line:
                lines.append(line)
                line = word
            else:
                line = candidate
        lines.append(line)
    return lines


def _blend_rect(canvas: np.ndarray, x1: int, y1: int, x2: int, y2: int) -> None:
    """Darken ``canvas[y1:y2, x1:x2]`` towards the background colour, in place."""
    region = canvas[y1:y2, x1:x2]
    if region.size == 0:
        return
    background = np.array(_BACKGROUND, dtype=np.float32)
    blended = region.astype(np.float32) * (1.0 - _BACKGROUND_ALPHA) + background * _BACKGROUND_ALPHA
    region[...] = np.clip(blended + 0.5, 0, 255).astype(np.uint8)


Rect = tuple[int, int, int, int]


def _fit_font(
    lines: Sequence[str], font_scale: float, text_thickness: int, width: int, height: int
) -> tuple[float, int, list[tuple[tuple[int, int], int]]]:
    """Shrink the font until the block fits the image: the scale, thickness and line sizes."""
    scale = font_scale
    while True:
        sizes: list[tuple[tuple[int, int], int]] = []
        for line in lines:
            (w, h), base = cv2.getTextSize(line, _FONT, scale, text_thickness)
            sizes.append(((int(w), int(h)), int(base)))
        pad = max(2, round(4 * scale))
        line_h = max(h + base for (_, h), base in sizes) + pad
        block_w = max(w for (w, _), _ in sizes) + 2 * pad
        block_h = line_h * len(lines) + pad
        if (block_w <= width and block_h <= height) or scale <= 0.2:
            return scale, text_thickness, sizes
        scale *= 0.85
        text_thickness = min(text_thickness, max(1, round(scale * 1.6)))


def _overlap(a: Rect, b: Rect) -> int:
    """Area shared by two rectangles (x1, y1, x2, y2), end-exclusive."""
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    return max(0, w) * max(0, h)


def _place_block(
    size: tuple[int, int],
    anchor: Rect,
    image_size: tuple[int, int],
    taken: Sequence[Rect],
    faces: Sequence[Rect],
) -> Rect:
    """Where a ``size`` (w, h) label block goes for the face box ``anchor``.

    Candidates: right above the box, right below it, further above or below (stacked past the
    labels in the way), inside the box's top edge. Horizontally a block starts at the box's left
    edge or ends at its right edge, shifted into the image. The candidate that covers the least of
    the labels already placed, then of the other faces, then lies nearest the box, wins; ties go
    to the earlier candidate (above, left-aligned).
    """
    bw, bh = size
    width, height = image_size
    x1, y1, x2, y2 = anchor
    tops = [y1 - bh, y2]
    for rect in taken:
        tops += [rect[1] - bh, rect[3]]
    tops.append(y1)
    candidates: list[Rect] = []
    for top in tops:
        top = min(max(0, top), max(0, height - bh))
        for left in (x1, x2 - bw):
            left = min(max(0, left), max(0, width - bw))
            rect = (left, top, left + bw, top + bh)
            if rect not in candidates:
                candidates.append(rect)

    def cost(rect: Rect) -> tuple[int, int, int]:
        on_labels = sum(_overlap(rect, other) for other in taken)
        on_faces = sum(_overlap(rect, face) for face in faces)
        gap = max(0, rect[1] - y2, y1 - rect[3]) + max(0, rect[0] - x2, x1 - rect[2])
        return on_labels, on_faces, gap

    return min(candidates, key=cost)  # min keeps the first of equal costs


def _pixel_box(face: FacePrediction, width: int, height: int) -> Rect | None:
    """A face's box in whole pixels inside the image; ``None`` for a face without a box."""
    if face.box is None:
        return None
    x1, y1, x2, y2 = face.box
    return (_pixel(x1, width), _pixel(y1, height), _pixel(x2, width), _pixel(y2, height))


#: One face's label: its rectangle, text lines, line sizes, font scale and text thickness.
_Label = tuple[Rect, list[str], list[tuple[tuple[int, int], int]], float, int]


def _layout(
    prediction: ImagePrediction,
    thickness: int | None,
    font_scale: float | None,
    show_aus: bool,
) -> tuple[list[_Label | None], int]:
    """Each face's label block (``None`` when there is nothing to say) and the line thickness."""
    width, height = prediction.width, prediction.height
    short_side = min(width, height)
    if thickness is None:
        thickness = max(1, round(short_side / 300))
    if thickness < 1:
        raise InputError(f"thickness must be >= 1, got {thickness}")
    if font_scale is None:
        font_scale = max(0.35, short_side / 900)
    if font_scale <= 0:
        raise InputError(f"font_scale must be > 0, got {font_scale}")
    text_thickness = max(1, round(font_scale * 1.6))
    stripe = max(2, thickness)  # a coloured stripe on the left ties the block to its box
    faces = list(prediction)
    boxes = [_pixel_box(face, width, height) for face in faces]

    def area(i: int) -> int:
        box = boxes[i]
        return 0 if box is None else (box[2] - box[0]) * (box[3] - box[1])

    labels: list[_Label | None] = [None] * len(faces)
    taken: list[Rect] = []
    # Larger (nearer) faces first: their labels get the best places.
    for i in sorted(range(len(faces)), key=lambda i: -area(i)):
        lines = _face_lines(
            faces[i], len(faces) > 1, show_aus, max(1, int(width * 0.9)), font_scale, text_thickness
        )
        if not lines:
            continue
        scale, text_th, sizes = _fit_font(
            lines, font_scale, text_thickness, max(1, width - stripe), height
        )
        pad = max(2, round(4 * scale))
        line_h = max(h + base for (_, h), base in sizes) + pad
        size = (max(w for (w, _), _ in sizes) + 2 * pad + stripe, line_h * len(lines) + pad)
        others = [box for j, box in enumerate(boxes) if j != i and box is not None]
        rect = _place_block(size, boxes[i] or (0, 0, 0, 0), (width, height), taken, others)
        taken.append(rect)
        labels[i] = (rect, lines, sizes, scale, text_th)
    return labels, thickness


def label_layout(
    prediction: ImagePrediction,
    *,
    thickness: int | None = None,
    font_scale: float | None = None,
    show_aus: bool = True,
) -> list[tuple[int, int, int, int] | None]:
    """Where :func:`draw` puts each face's label block: ``(x1, y1, x2, y2)``, end-exclusive.

    One entry per face of ``prediction``, ``None`` for a face with nothing to say. A block lies
    inside the image next to its face (right above the box where there is room, else below it,
    shifted into the image), and blocks do not cover each other or other faces where the image
    leaves room for that. The arguments are :func:`draw`'s.
    """
    labels, _ = _layout(prediction, thickness, font_scale, show_aus)
    return [label[0] if label is not None else None for label in labels]


def _draw_label(
    canvas: np.ndarray,
    label: _Label,
    color: tuple[int, int, int],
    stripe: int,
) -> None:
    """Draw a label block on a darkened background, with a coloured stripe on its left."""
    (left, top, right, bottom), lines, sizes, scale, text_thickness = label
    height, width = canvas.shape[:2]
    pad = max(2, round(4 * scale))
    line_h = max(h + base for (_, h), base in sizes) + pad
    _blend_rect(canvas, left, top, min(width, right), min(height, bottom))
    canvas[top : min(height, bottom), left : min(width, left + stripe)] = color
    for i, ((_, h), _base) in enumerate(sizes):
        cv2.putText(
            canvas,
            lines[i],
            (left + stripe + pad, top + pad + i * line_h + h),
            _FONT,
            scale,
            _TEXT_COLOR,
            text_thickness,
            cv2.LINE_AA,
        )


def _pixel(value: float, limit: int) -> int:
    """Round a coordinate to a pixel index inside ``[0, limit - 1]``."""
    return int(min(max(round(value), 0), limit - 1))


def draw(
    image: ImageLike,
    prediction: ImagePrediction,
    *,
    thickness: int | None = None,
    font_scale: float | None = None,
    show_aus: bool = True,
    color: tuple[int, int, int] | None = None,
) -> np.ndarray:
    """Draw a prediction on a copy of its image.

    For each face: its box, a label block with the expression and its probability, ``V +0.42 A
    -0.10`` (valence, arousal) and the active AUs, and the landmarks as small dots. Parts the model
    did not predict are left out. The face id is shown when the image has several faces. Sizes
    grow with the image; text stays inside the image, white on a dark background.

    Args:
        image: The image the prediction was made on: an H x W x 3 uint8 RGB array, a PIL image
            (any mode, converted to RGB) or a path that PIL can open. PIL images and files are
            turned upright by their EXIF orientation, as ``predict`` does. Never modified.
        prediction: The prediction for this image; its ``width`` and ``height`` must match.
        thickness: Box line thickness in pixels (default: grows with the image size).
        font_scale: OpenCV font scale of the labels (default: grows with the image size).
        show_aus: Whether to list the active action units.
        color: One RGB colour for every box; default: a colour per ``face_id`` (stable across
            the frames of a video when ids are track ids).

    Returns:
        A new H x W x 3 uint8 RGB array.

    Raises:
        InputError: If the image cannot be read or its size differs from the prediction's.
    """
    if not isinstance(prediction, ImagePrediction):
        raise InputError(f"prediction must be an ImagePrediction, got {type(prediction).__name__}")
    canvas = _to_rgb_array(image)
    height, width = canvas.shape[:2]
    if (width, height) != (prediction.width, prediction.height):
        raise InputError(
            f"the image is {width}x{height} but the prediction was made on a "
            f"{prediction.width}x{prediction.height} image ({prediction.source!r}); draw on the "
            "image that was given to predict"
        )
    if color is not None:
        if len(color) != 3 or not all(isinstance(c, (int, np.integer)) for c in color):
            raise InputError(f"color must be an (R, G, B) tuple of ints, got {color!r}")
        color = (int(color[0]), int(color[1]), int(color[2]))

    placed, thickness = _layout(prediction, thickness, font_scale, show_aus)
    faces = list(prediction)
    for face in faces:  # boxes and landmarks first, so that no outline crosses a label
        face_color = color if color is not None else _PALETTE[face.face_id % len(_PALETTE)]
        box = _pixel_box(face, width, height)
        if box is not None:
            cv2.rectangle(canvas, box[:2], box[2:], face_color, thickness, cv2.LINE_8)
        if face.landmarks is not None:
            radius = max(1, thickness)
            for lx, ly in face.landmarks:
                if 0 <= lx < width and 0 <= ly < height:
                    center = (round(lx), round(ly))
                    cv2.circle(canvas, center, radius + 1, _BACKGROUND, -1, cv2.LINE_AA)
                    cv2.circle(canvas, center, radius, _LANDMARK_COLOR, -1, cv2.LINE_AA)
    for face, item in zip(faces, placed, strict=True):
        if item is None:
            continue
        face_color = color if color is not None else _PALETTE[face.face_id % len(_PALETTE)]
        _draw_label(canvas, item, face_color, max(2, thickness))
    return canvas
