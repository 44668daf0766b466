"""A check that a box was drawn around a face, robust to JPEG/video re-encoding."""

from collections.abc import Sequence

import cv2
import numpy as np


def outline_changed(
    image: np.ndarray, original: np.ndarray, box: Sequence[float], threshold: int = 60
) -> float:
    """Fraction of the pixels on ``box``'s outline that changed by more than ``threshold``.

    ``image`` and ``original`` are H x W x 3 uint8 arrays of the same picture, ``box`` is
    ``(x1, y1, x2, y2)`` in pixels. Each pixel's change is the largest over its channels and its
    3x3 neighbourhood (compression smears a 1-pixel line). Re-encoding a frame or a JPEG with
    nothing drawn changes almost no pixel by more than 60 (fraction near 0); a drawn box outline
    changes nearly all of them (near 1).
    """
    diff = np.abs(image.astype(np.int16) - original.astype(np.int16)).max(axis=2)
    diff = cv2.dilate(diff.astype(np.uint8), np.ones((3, 3), np.uint8))
    height, width = diff.shape
    x1, y1, x2, y2 = (round(float(v)) for v in box)
    x1, x2 = (min(max(x, 0), width - 1) for x in (x1, x2))
    y1, y2 = (min(max(y, 0), height - 1) for y in (y1, y2))
    ring = np.concatenate([diff[y1, x1:x2], diff[y2, x1:x2], diff[y1:y2, x1], diff[y1:y2, x2]])
    return float((ring > threshold).mean())
