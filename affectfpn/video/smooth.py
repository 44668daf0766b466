"""Temporal smoothing of per-track predictions (valence/arousal, expression and AU probabilities).

What is smoothed is every face field of :data:`~affectfpn.inference.results.FACE_FIELDS`: a
face's numbers (:meth:`~affectfpn.inference.results.FaceField.vector`) are averaged with those of
the same track in other frames where the field has the same layout (names, AU threshold), and
brought back into range by the field (:meth:`~affectfpn.inference.results.FaceField.rebuild`).

Public as :func:`affectfpn.video.smooth_frames`; :func:`smooth_pairs` is the same on
``(frame, payload)`` pairs, so that ``predict_video(return_frames=True)`` keeps each image with
its frame through the lookahead buffer.
"""

import math
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import replace
from typing import TypeVar

import numpy as np

from affectfpn.errors import ConfigError, InputError
from affectfpn.inference.results import FACE_FIELDS, FacePrediction
from affectfpn.video.types import FramePrediction

__all__ = ["SMOOTHING", "check_smoothing", "smooth_pairs"]

#: Values of the ``smoothing=`` option (besides ``None``).
SMOOTHING: tuple[str, ...] = ("ema", "centered")

_P = TypeVar("_P")
# EMA states of tracks unseen for this many processed frames are dropped (ids never return
# after the tracker ends a track, so this only bounds memory on endless streams).
_STATE_TTL = 1000


def check_smoothing(smoothing: str | None, alpha: float, window: int) -> None:
    """Validate the smoothing options (raises :class:`ConfigError`)."""
    if smoothing is not None and smoothing not in SMOOTHING:
        raise ConfigError(
            "is not valid; use None, 'ema' or 'centered'", option="smoothing", value=smoothing
        )
    if (
        isinstance(alpha, bool)
        or not isinstance(alpha, (int, float))
        or not math.isfinite(alpha)
        or not 0.0 < alpha <= 1.0
    ):
        raise ConfigError(f"alpha must be in (0, 1] (1 = no smoothing), got {alpha!r}")
    if isinstance(window, bool) or not isinstance(window, int) or window < 1 or window % 2 == 0:
        raise ConfigError(f"window must be an odd integer >= 1 (frames), got {window!r}")


def _vector(face: FacePrediction) -> np.ndarray:
    """A face's smoothable numbers: those of each face field it has, in field order."""
    parts: list[float] = []
    for spec in FACE_FIELDS:
        value = getattr(face, spec.name)
        if value is not None:
            parts += spec.vector(value)
    return np.asarray(parts, dtype=np.float64)


def _rebuild(face: FacePrediction, values: np.ndarray) -> FacePrediction:
    """``face`` with its fields' numbers replaced by ``values`` (the layout of :func:`_vector`)."""
    offset = 0
    fields: dict[str, object] = {}
    for spec in FACE_FIELDS:
        value = getattr(face, spec.name)
        if value is not None:
            size = len(spec.value_names(value))
            fields[spec.name] = spec.rebuild(value, values[offset : offset + size])
            offset += size
    return replace(face, **fields)  # type: ignore[arg-type]


def _layout(face: FacePrediction) -> tuple[object, ...]:
    """What a face's vector is made of; faces of one track must agree to be averaged."""
    return tuple(
        None if (value := getattr(face, spec.name)) is None else spec.layout(value)
        for spec in FACE_FIELDS
    )


def _check_frame(item: object) -> FramePrediction:
    if not isinstance(item, FramePrediction):
        raise InputError(f"smoothing needs FramePrediction objects, got {type(item).__name__}")
    return item


def _ema(
    pairs: Iterable[tuple[FramePrediction, _P]], alpha: float
) -> Iterator[tuple[FramePrediction, _P]]:
    states: dict[int, tuple[np.ndarray, tuple[object, ...], int]] = {}
    for position, (item, payload) in enumerate(pairs):
        frame = _check_frame(item)
        faces = []
        for face in frame.faces:
            values, layout = _vector(face), _layout(face)
            state = states.get(face.face_id)
            if state is not None and state[1] == layout:
                values = alpha * values + (1.0 - alpha) * state[0]
            states[face.face_id] = (values, layout, position)
            faces.append(_rebuild(face, values))
        if position % _STATE_TTL == 0:
            for track_id in [k for k, s in states.items() if position - s[2] > _STATE_TTL]:
                del states[track_id]
        yield replace(frame, faces=tuple(faces)), payload


def _centered(
    pairs: Iterable[tuple[FramePrediction, _P]], window: int
) -> Iterator[tuple[FramePrediction, _P]]:
    half = window // 2
    # Raw frames of the window around the next frame to emit, with their faces' vectors.
    buffer: deque[tuple[FramePrediction, _P, dict[int, tuple[np.ndarray, tuple[object, ...]]]]]
    buffer = deque()
    emitted = 0  # position of the next frame to emit
    received = 0

    def emit(center: int) -> tuple[FramePrediction, _P]:
        # buffer[0] has position received - len(buffer)
        first = received - len(buffer)
        frame, payload, vectors = buffer[center - first]
        faces = []
        for face in frame.faces:
            own, layout = vectors[face.face_id]
            total, count = np.zeros_like(own), 0
            for pos in range(max(first, center - half), min(received, center + half + 1)):
                other = buffer[pos - first][2].get(face.face_id)
                if other is not None and other[1] == layout:
                    total += other[0]
                    count += 1
            faces.append(_rebuild(face, total / count))
        return replace(frame, faces=tuple(faces)), payload

    for item, payload in pairs:
        frame = _check_frame(item)
        vectors = {face.face_id: (_vector(face), _layout(face)) for face in frame.faces}
        buffer.append((frame, payload, vectors))
        received += 1
        while emitted + half < received:  # the window right of `emitted` is complete
            yield emit(emitted)
            emitted += 1
            while received - len(buffer) < emitted - half:  # no longer in any window
                buffer.popleft()
    while emitted < received:
        yield emit(emitted)
        emitted += 1


def smooth_pairs(
    pairs: Iterable[tuple[FramePrediction, _P]],
    smoothing: str | None,
    *,
    alpha: float = 0.3,
    window: int = 5,
) -> Iterator[tuple[FramePrediction, _P]]:
    """Smooth ``(frame, payload)`` pairs per track; the payload travels with its frame."""
    check_smoothing(smoothing, alpha, window)
    if smoothing is None:
        return iter(pairs)
    if smoothing == "ema":
        return _ema(pairs, float(alpha))
    return _centered(pairs, window)
