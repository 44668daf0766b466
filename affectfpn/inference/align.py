"""Face alignment: cut a detected face out of an image at a fixed size.

With 5 landmarks (:attr:`Detection.landmarks`), :func:`align_face` finds the least-squares
similarity transform (rotation, uniform scale, translation; no shear or reflection) that maps
them onto a canonical 5-point template, and warps the image with it, so eyes, nose and mouth land
at the same place in every face. Without landmarks it falls back to :func:`crop_box`, a square
crop around the box.

The template is the widely used 112 x 112 five-point template of ArcFace-style face recognition
(eye centres at y = 51.6, nose tip at y = 71.7, mouth corners at y = 92.3). That template crops
tightly: the forehead and chin fall partly outside, which suits identity but loses expression
cues (brows, jaw). ``margin`` pads the template square by that fraction of its side on each side
before scaling it to the output size; the default ``DEFAULT_ALIGN_MARGIN`` = 0.1 keeps the whole
face, forehead to chin, with a little context (the face spans about 1 / 1.2 of the crop). Use
``margin=0`` for the plain ArcFace crop.

For a non-square output the template square fills the shorter side and is centred along the
longer one, so faces are never stretched. Pixels beyond the image border repeat the edge
(``BORDER_REPLICATE``). Strong downscales are pre-filtered with area averaging to avoid aliasing.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import cv2
import numpy as np

from affectfpn.config import DEFAULT_ALIGN_MARGIN
from affectfpn.errors import InputError
from affectfpn.inference.detectors import Detection
from affectfpn.io import array_to_rgb
from affectfpn.preprocess import DEFAULT_BOX_MARGIN, face_box_region

__all__ = [
    "ARCFACE_TEMPLATE_112",
    "DEFAULT_ALIGN_MARGIN",
    "DEFAULT_BOX_MARGIN",
    "align_face",
    "alignment_scale",
    "alignment_transform",
    "crop_box",
    "face_template",
    "similarity_transform",
    "warp_face",
]

#: The 5-point template of ArcFace-style alignment, ``(x, y)`` in a 112 x 112 crop, in YuNet's
#: landmark order: subject's right eye, left eye, nose tip, right mouth corner, left mouth corner.
ARCFACE_TEMPLATE_112: np.ndarray = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ],
    dtype=np.float64,
)
ARCFACE_TEMPLATE_112.setflags(write=False)


# Warps that shrink more than this are pre-filtered with cv2.INTER_AREA.
_PREFILTER_BELOW = 0.5


def _check_size(output_size: Sequence[int]) -> tuple[int, int]:
    try:
        height, width = (int(v) for v in output_size)
    except (TypeError, ValueError) as exc:
        raise InputError(f"output_size must be (height, width), got {output_size!r}") from exc
    if height < 1 or width < 1:
        raise InputError(f"output_size must be positive (height, width), got {output_size!r}")
    return height, width


def _check_margin(margin: float, name: str) -> float:
    value = float(margin)
    if not math.isfinite(value) or value <= -0.5:
        raise InputError(f"{name} must be a finite number > -0.5, got {margin!r}")
    return value


def face_template(
    output_size: Sequence[int], *, margin: float = DEFAULT_ALIGN_MARGIN, shift: float = 0.0
) -> np.ndarray:
    """The 5 template points for an output of ``output_size`` = ``(height, width)``.

    Args:
        output_size: ``(height, width)`` of the aligned face.
        margin: border around the ArcFace template square, as a fraction of its side, on each
            side (0: the plain ArcFace crop; negative values zoom in).
        shift: the points moved down by this fraction of the height (negative: up).

    Returns:
        ``5 x 2`` float64 ``(x, y)`` points in output pixel coordinates.
    """
    height, width = _check_size(output_size)
    margin = _check_margin(margin, "margin")
    shift = float(shift)
    if not (math.isfinite(shift) and -0.5 < shift < 0.5):
        raise InputError(f"shift must be a number between -0.5 and 0.5, got {shift!r}")
    side = min(height, width)
    unit = (ARCFACE_TEMPLATE_112 + 112.0 * margin) / (112.0 * (1.0 + 2.0 * margin))
    return unit * side + np.array([(width - side) / 2.0, (height - side) / 2.0 + shift * height])


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity transform mapping points ``src`` onto ``dst``.

    Finds rotation, uniform scale and translation (no reflection, no shear) minimising
    ``sum |M @ [x, y, 1] - dst|^2``, in closed form (points as complex numbers,
    ``z_dst = a * z_src + b``).

    Args:
        src: ``N x 2`` points, N >= 2, not all equal.
        dst: ``N x 2`` target points.

    Returns:
        ``2 x 3`` float64 matrix ``[[s cos t, -s sin t, tx], [s sin t, s cos t, ty]]``, usable
        with ``cv2.warpAffine``.
    """
    src_pts = np.asarray(src, dtype=np.float64)
    dst_pts = np.asarray(dst, dtype=np.float64)
    if src_pts.ndim != 2 or src_pts.shape[1] != 2 or src_pts.shape != dst_pts.shape:
        raise InputError(
            f"similarity_transform needs two N x 2 point arrays of equal shape, got "
            f"{src_pts.shape} and {dst_pts.shape}"
        )
    if src_pts.shape[0] < 2 or not (np.isfinite(src_pts).all() and np.isfinite(dst_pts).all()):
        raise InputError("similarity_transform needs at least 2 finite point pairs")
    zs = src_pts[:, 0] + 1j * src_pts[:, 1]
    zd = dst_pts[:, 0] + 1j * dst_pts[:, 1]
    cs, cd = zs - zs.mean(), zd - zd.mean()
    energy = float(np.sum(np.abs(cs) ** 2))
    if energy <= 1e-12 * max(1.0, float(np.max(np.abs(zs))) ** 2):
        raise InputError("similarity_transform: the source points all coincide")
    a = complex(np.sum(np.conj(cs) * cd) / energy)
    b = complex(zd.mean() - a * zs.mean())
    return np.array([[a.real, -a.imag, b.real], [a.imag, a.real, b.imag]], dtype=np.float64)


def _box_transform(box: Sequence[float], output_size: tuple[int, int], margin: float) -> np.ndarray:
    height, width = output_size
    try:  # the crop region training uses too (affectfpn.preprocess)
        left, top, crop_w, _ = face_box_region(box, margin, aspect=width / height)
    except ValueError as exc:
        raise InputError(f"crop_box needs a box with positive size, got {tuple(box)}") from exc
    scale = width / crop_w
    # Pixel i covers [i, i + 1); warpAffine works on pixel indices (centres), hence the 0.5s.
    return np.array(
        [
            [scale, 0.0, scale * (0.5 - left) - 0.5],
            [0.0, scale, scale * (0.5 - top) - 0.5],
        ]
    )


def alignment_transform(
    detection: Detection,
    output_size: Sequence[int],
    *,
    margin: float = DEFAULT_ALIGN_MARGIN,
    box_margin: float = DEFAULT_BOX_MARGIN,
    shift: float = 0.0,
) -> np.ndarray:
    """The ``2 x 3`` matrix :func:`align_face` warps with (image pixels to output pixels).

    Landmarks are mapped onto :func:`face_template`; a detection without landmarks gets the
    box crop of :func:`crop_box`. Invert it with ``cv2.invertAffineTransform`` to map output
    points back into the image.
    """
    size = _check_size(output_size)
    if detection.landmarks is not None:
        template = face_template(size, margin=margin, shift=shift)
        return similarity_transform(detection.landmarks, template)
    return _box_transform(detection.box, size, _check_margin(box_margin, "box_margin"))


def _warp(rgb: np.ndarray, matrix: np.ndarray, output_size: tuple[int, int]) -> np.ndarray:
    out_h, out_w = output_size
    img_h, img_w = rgb.shape[:2]
    scale = alignment_scale(matrix)
    if 0 < scale < _PREFILTER_BELOW:
        # Shrink only the part of the image the output sees, by area averaging, then warp that.
        inverse = cv2.invertAffineTransform(matrix)
        corners = np.array([[0, 0, 1], [out_w, 0, 1], [0, out_h, 1], [out_w, out_h, 1]], float)
        footprint = corners @ inverse.T
        x0 = max(math.floor(footprint[:, 0].min()) - 2, 0)
        y0 = max(math.floor(footprint[:, 1].min()) - 2, 0)
        x1 = min(math.ceil(footprint[:, 0].max()) + 2, img_w)
        y1 = min(math.ceil(footprint[:, 1].max()) + 2, img_h)
        if x1 - x0 >= 2 and y1 - y0 >= 2:
            small_w = max(1, round((x1 - x0) * scale))
            small_h = max(1, round((y1 - y0) * scale))
            small = cv2.resize(rgb[y0:y1, x0:x1], (small_w, small_h), interpolation=cv2.INTER_AREA)
            kx, ky = small_w / (x1 - x0), small_h / (y1 - y0)
            # Index in `small` -> index in `rgb` (resize maps pixel centres).
            back = np.array(
                [[1.0 / kx, 0.0, 0.5 / kx - 0.5 + x0], [0.0, 1.0 / ky, 0.5 / ky - 0.5 + y0]]
            )
            matrix = np.hstack(
                [matrix[:, :2] @ back[:, :2], (matrix[:, :2] @ back[:, 2] + matrix[:, 2])[:, None]]
            )
            rgb = small
    warped = cv2.warpAffine(
        rgb, matrix, (out_w, out_h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
    )
    return np.ascontiguousarray(warped, dtype=np.uint8)


def _as_rgb(rgb: np.ndarray) -> np.ndarray:
    if (
        isinstance(rgb, np.ndarray)
        and rgb.dtype == np.uint8
        and rgb.ndim == 3
        and rgb.shape[2] == 3
        and rgb.size > 0
    ):
        return rgb
    return array_to_rgb(rgb, source="<align input>")


def crop_box(
    rgb: np.ndarray,
    box: Sequence[float],
    output_size: Sequence[int],
    *,
    margin: float = DEFAULT_BOX_MARGIN,
) -> np.ndarray:
    """Square crop around a box, resized to ``output_size``.

    The crop is centred on the box, with side ``max(box width, box height) * (1 + margin)``
    (widened or heightened to the output's aspect ratio). Parts beyond the image border repeat
    the edge pixels.

    Args:
        rgb: ``H x W x 3`` ``uint8`` RGB image.
        box: ``(x1, y1, x2, y2)`` in pixels.
        output_size: ``(height, width)`` of the result.
        margin: relative growth of the crop side over the box's longer side.

    Returns:
        ``height x width x 3`` ``uint8`` RGB array.
    """
    size = _check_size(output_size)
    matrix = _box_transform(box, size, _check_margin(margin, "margin"))
    return _warp(_as_rgb(rgb), matrix, size)


def align_face(
    rgb: np.ndarray,
    detection: Detection,
    output_size: Sequence[int] = (112, 112),
    *,
    margin: float = DEFAULT_ALIGN_MARGIN,
    box_margin: float = DEFAULT_BOX_MARGIN,
    reduction: int = 1,
    shift: float = 0.0,
) -> np.ndarray:
    """Cut out one face, aligned on its landmarks when it has them.

    Args:
        rgb: ``H x W x 3`` ``uint8`` RGB image the detection refers to.
        detection: the face; with landmarks the face is rotated upright and scaled onto the
            template, without them it is a box crop (:func:`crop_box`).
        output_size: ``(height, width)`` of the result, e.g. the model's ``input_size``.
        margin: border around the template (see the module docs).
        box_margin: crop growth used when there are no landmarks.
        reduction: ``rgb`` is the image the detection refers to shrunk by this whole factor
            (e.g. a JPEG decoded at 1/4 of its size, :attr:`affectfpn.io.LoadedImage.reduction`):
            its pixel ``j`` covers pixels ``reduction * j`` to ``reduction * j + reduction - 1``.
        shift: the template moved down by this fraction of the output height (see
            :func:`face_template`); a model's ``config.align_shift``.

    Returns:
        ``height x width x 3`` ``uint8`` RGB array.
    """
    size = _check_size(output_size)
    matrix = alignment_transform(detection, size, margin=margin, box_margin=box_margin, shift=shift)
    return warp_face(rgb, matrix, size, reduction=reduction)


def warp_face(
    rgb: np.ndarray, matrix: np.ndarray, output_size: Sequence[int], *, reduction: int = 1
) -> np.ndarray:
    """Warp with an :func:`alignment_transform` matrix: what :func:`align_face` does with it.

    ``reduction`` as for :func:`align_face`: ``rgb`` is the image the matrix refers to, shrunk
    by that whole factor.
    """
    size = _check_size(output_size)
    if reduction != 1:
        if not isinstance(reduction, int) or reduction < 1:
            raise InputError(
                f"align_face: reduction must be a whole number >= 1, got {reduction!r}"
            )
        # Full-size pixel index = reduction * j + (reduction - 1) / 2 (pixel centres).
        offset = (reduction - 1) / 2.0
        translation = matrix[:, 2] + matrix[:, :2].sum(axis=1) * offset
        matrix = np.hstack([matrix[:, :2] * reduction, translation[:, None]])
    return _warp(_as_rgb(rgb), matrix, size)


def alignment_scale(matrix: np.ndarray) -> float:
    """Output pixels per image pixel of an :func:`alignment_transform` matrix (< 1: shrinking)."""
    return math.sqrt(abs(float(np.linalg.det(matrix[:, :2]))))
