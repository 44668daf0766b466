"""Compact, column-wise collection of a video's predictions: :class:`VideoResult`.

Public through :mod:`affectfpn.video`.
"""

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from affectfpn.errors import InputError
from affectfpn.inference.results import FACE_FIELDS, FaceField, FacePrediction, LabelNames
from affectfpn.video.types import FramePrediction, VideoInfo

__all__ = ["VideoResult", "main_face"]

#: Position of the first face field's numbers in a collected row (after the box and score).
_FIELDS_START = 5


def main_face(faces: Sequence[FacePrediction]) -> FacePrediction | None:
    """The face one-face outputs (ABAW2 files, the default plot) follow in a frame.

    The face with the largest box; on equal areas the higher detection score, then the smaller
    ``face_id``. ``None`` for a frame without faces.
    """
    best: FacePrediction | None = None
    best_key: tuple[float, float, int] | None = None
    for face in faces:
        area = (
            0.0 if face.box is None else (face.box[2] - face.box[0]) * (face.box[3] - face.box[1])
        )
        key = (area, -np.inf if face.score is None else face.score, -face.face_id)
        if best_key is None or key > best_key:
            best, best_key = face, key
    return best


@dataclass(frozen=True, eq=False, init=False)
class VideoResult:
    """Every prediction of a video, as numpy arrays (about 100 bytes per face and frame).

    Frame arrays have one entry per *processed* frame (``F``), face arrays one row per face
    (``R``, all frames' faces in order). Missing values (a task the model lacks, no detection
    score in crop mode) are ``NaN``; landmarks are not kept.

    Attributes:
        info: The video's :class:`~affectfpn.video.VideoInfo`.
        expressions: Expression names (columns of ``expression``).
        action_units: AU names (columns of ``au``).
        au_threshold: Probability from which an AU counts as active.
        frame_index: ``(F,)`` int64 frame indices.
        timestamp: ``(F,)`` float64 seconds.
        width: Frame width in pixels (0 if no frame was processed).
        height: Frame height in pixels.
        face_frame: ``(R,)`` int64, for each face row the position of its frame in the frame
            arrays (``frame_index[face_frame]`` are the faces' frame indices).
        face_id: ``(R,)`` int64 track ids.
        box: ``(R, 4)`` float32 ``x1, y1, x2, y2``.
        score: ``(R,)`` float32 detection scores.
        va: ``(R, 2)`` float32 valence, arousal.
        expression: ``(R, len(expressions))`` float32 probabilities.
        au: ``(R, len(action_units))`` float32 probabilities.
        outputs: The arrays of the face fields by name: ``{"va": va, "expression": expression,
            "au": au}``.

    Each face field of :data:`~affectfpn.inference.results.FACE_FIELDS` has its ``(R, k)``
    float32 array, one column per number, in :attr:`outputs` under the field's task, which is
    also its attribute name (``result.va`` is ``result.outputs["va"]``). The constructor takes
    them as keyword arguments of those names.
    """

    info: VideoInfo
    expressions: tuple[str, ...]
    action_units: tuple[str, ...]
    au_threshold: float
    frame_index: np.ndarray
    timestamp: np.ndarray
    width: int
    height: int
    face_frame: np.ndarray
    face_id: np.ndarray
    box: np.ndarray
    score: np.ndarray
    outputs: Mapping[str, np.ndarray]

    def __init__(
        self,
        info: VideoInfo,
        expressions: tuple[str, ...],
        action_units: tuple[str, ...],
        au_threshold: float,
        frame_index: np.ndarray,
        timestamp: np.ndarray,
        width: int,
        height: int,
        face_frame: np.ndarray,
        face_id: np.ndarray,
        box: np.ndarray,
        score: np.ndarray,
        outputs: Mapping[str, np.ndarray] | None = None,
        **arrays: np.ndarray,
    ) -> None:
        """Keep the arrays.

        The face fields' arrays come as keyword arguments named after their tasks (``va=``,
        ``expression=``, ``au=``), or as the mapping ``outputs`` (the keyword arguments replace
        its entries, as ``dataclasses.replace(result, va=...)`` does).

        Raises:
            InputError: If a face field's array is missing or an argument names none.
        """
        outputs = {**(outputs or {}), **arrays}
        tasks = [spec.task for spec in FACE_FIELDS]
        missing = [task for task in tasks if task not in outputs]
        unknown = [name for name in outputs if name not in tasks]
        if missing or unknown:
            raise InputError(
                "VideoResult: "
                + (f"missing {', '.join(missing)}" if missing else "")
                + ("; " if missing and unknown else "")
                + (f"unknown {', '.join(unknown)}" if unknown else "")
                + f"; pass one array per face field, named after it ({', '.join(tasks)})"
            )
        values = {
            "info": info,
            "expressions": expressions,
            "action_units": action_units,
            "au_threshold": au_threshold,
            "frame_index": frame_index,
            "timestamp": timestamp,
            "width": width,
            "height": height,
            "face_frame": face_frame,
            "face_id": face_id,
            "box": box,
            "score": score,
            "outputs": {task: outputs[task] for task in tasks},
        }
        for name, value in values.items():
            object.__setattr__(self, name, value)  # a frozen dataclass

    def __getattr__(self, name: str) -> np.ndarray:
        # Only names that are not regular attributes come here: a face field's array.
        outputs = self.__dict__.get("outputs")  # read directly: unpickling has none yet
        if outputs is not None and name in outputs:
            return outputs[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __dir__(self) -> list[str]:
        return [*super().__dir__(), *self.__dict__.get("outputs", ())]

    def __len__(self) -> int:
        return int(self.frame_index.shape[0])

    def __repr__(self) -> str:
        return (
            f"VideoResult(source={self.info.source!r}, frames={len(self)}, "
            f"faces={self.face_id.shape[0]}, tracks={list(self.track_ids)})"
        )

    @property
    def labels(self) -> LabelNames:
        """The label names of the model (:attr:`expressions`, :attr:`action_units`)."""
        return LabelNames(self.expressions, self.action_units)

    @property
    def num_faces(self) -> np.ndarray:
        """``(F,)`` number of faces in each processed frame."""
        return np.bincount(self.face_frame, minlength=len(self)).astype(np.int64)

    @property
    def track_ids(self) -> tuple[int, ...]:
        """Every track id, in increasing order."""
        return tuple(int(i) for i in np.unique(self.face_id))

    def valence_arousal(self, face_id: int | None = None) -> np.ndarray:
        """``(F, 2)`` valence and arousal per frame, ``NaN`` where the face is absent.

        Args:
            face_id: A track id; ``None``: in each frame the face of :func:`main_face`
                (largest box).
        """
        out = np.full((len(self), 2), np.nan, dtype=np.float64)
        if face_id is not None:
            rows = np.flatnonzero(self.face_id == face_id)
        else:
            area = (self.box[:, 2] - self.box[:, 0]) * (self.box[:, 3] - self.box[:, 1])
            score = np.nan_to_num(self.score, nan=-np.inf)
            # Sort so the chosen row of each frame comes last, then keep the last per frame.
            order = np.lexsort((-self.face_id, score, area, self.face_frame))
            frames = self.face_frame[order]
            last = np.ones(order.shape[0], dtype=bool)
            last[:-1] = frames[1:] != frames[:-1]
            rows = order[last]
        out[self.face_frame[rows]] = self.va[rows]
        return out

    def to_pandas(self) -> Any:
        """The video's table as a pandas DataFrame: the columns of its CSV (``frame``,
        ``timestamp``, then those of :func:`~affectfpn.inference.to_rows`), one row per face
        and frame. Needs pandas (``pip install 'affectfpn[pandas]'``)."""
        from affectfpn.inference.results import to_pandas

        return to_pandas(list(self.frames()))

    def frames(self) -> Iterator[FramePrediction]:
        """Rebuild the :class:`FramePrediction` objects (without landmarks), e.g. to write them
        with :func:`~affectfpn.video.write_video_csv`."""
        starts = np.searchsorted(self.face_frame, np.arange(len(self) + 1))
        width, height = max(self.width, 1), max(self.height, 1)
        labels = self.labels
        fields = [(spec, spec.names(labels), self.outputs[spec.task]) for spec in FACE_FIELDS]
        for pos in range(len(self)):
            faces = []
            for row in range(int(starts[pos]), int(starts[pos + 1])):
                faces.append(self._face(row, fields))
            index = int(self.frame_index[pos])
            yield FramePrediction(
                source=f"{self.info.source}#frame={index}",
                width=width,
                height=height,
                faces=tuple(faces),
                labels=labels,
                index=index,
                timestamp=float(self.timestamp[pos]),
            )

    def _face(
        self, row: int, fields: list[tuple[FaceField[Any], tuple[str, ...], np.ndarray]]
    ) -> FacePrediction:
        """The face of one row; ``fields``: each face field, its names and its array."""
        score = float(self.score[row])
        values = {}
        for spec, names, array in fields:
            numbers = array[row]
            missing = numbers.size == 0 or bool(np.isnan(numbers).any())
            values[spec.name] = (
                None if missing else spec.from_numbers(numbers, names, self.au_threshold)
            )
        return FacePrediction(
            box=tuple(float(v) for v in self.box[row]),  # type: ignore[arg-type]
            score=None if np.isnan(score) else score,
            face_id=int(self.face_id[row]),
            **values,
        )


class Collector:
    """Build a :class:`VideoResult` frame by frame."""

    def __init__(
        self,
        info: VideoInfo,
        expressions: Sequence[str],
        action_units: Sequence[str],
        au_threshold: float,
    ) -> None:
        self.info = info
        self.expressions = tuple(expressions)
        self.action_units = tuple(action_units)
        self.au_threshold = au_threshold
        self._index: list[int] = []
        self._time: list[float] = []
        self._face_frame: list[int] = []
        self._face_id: list[int] = []
        labels = LabelNames(self.expressions, self.action_units)
        # The face fields, their names and their columns in a row after the box and score.
        self._fields: list[tuple[FaceField[Any], tuple[str, ...], slice]] = []
        start = _FIELDS_START
        for spec in FACE_FIELDS:
            names = spec.names(labels)
            self._fields.append((spec, names, slice(start, start + len(names))))
            start += len(names)
        self._width = start
        self._rows: list[np.ndarray] = []  # box, score, then the face fields as one float32 row
        self._size = (0, 0)

    def add(self, frame: FramePrediction) -> None:
        """Append one frame."""
        pos = len(self._index)
        self._index.append(frame.index)
        self._time.append(frame.timestamp)
        if self._size == (0, 0):
            self._size = (frame.width, frame.height)
        for face in frame.faces:
            row = np.full(self._width, np.nan, dtype=np.float32)
            if face.box is not None:
                row[0:4] = face.box
            if face.score is not None:
                row[4] = face.score
            for spec, names, columns in self._fields:
                value = getattr(face, spec.name)
                if value is not None:
                    row[columns] = self._lookup(spec, value, names)
            if face.aus is not None:
                self.au_threshold = face.aus.threshold
            self._face_frame.append(pos)
            self._face_id.append(face.face_id)
            self._rows.append(row)

    @staticmethod
    def _lookup(spec: FaceField[Any], value: object, names: tuple[str, ...]) -> list[float]:
        try:
            return spec.lookup(value, names)
        except KeyError:
            raise InputError(
                f"a face's labels {spec.value_names(value)} differ from {names}; collect with the "
                "model's label names"
            ) from None

    def result(self) -> VideoResult:
        """The collected :class:`VideoResult`."""
        table = np.stack(self._rows) if self._rows else np.zeros((0, self._width), dtype=np.float32)
        arrays = {spec.task: table[:, columns].copy() for spec, _, columns in self._fields}
        return VideoResult(
            info=self.info,
            expressions=self.expressions,
            action_units=self.action_units,
            au_threshold=self.au_threshold,
            frame_index=np.asarray(self._index, dtype=np.int64),
            timestamp=np.asarray(self._time, dtype=np.float64),
            width=self._size[0],
            height=self._size[1],
            face_frame=np.asarray(self._face_frame, dtype=np.int64),
            face_id=np.asarray(self._face_id, dtype=np.int64),
            box=table[:, 0:4].copy(),
            score=table[:, 4].copy(),
            outputs=arrays,
        )
