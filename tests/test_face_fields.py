"""The per-face fields are declared once (``FACE_FIELDS``) and every consumer derives from it.

The consumers are the predictor (``_finish``), ``FacePrediction.to_dict`` / ``from_dict`` /
``tasks``, the tables (``table_columns``, ``to_rows``, ``write_csv``, ``to_pandas``, the video
CSV), the video's ``VideoResult`` and smoothing. A hypothetical extra field (head pose), declared
only in this file, shows up in all of those that hold faces of any class.
"""

import dataclasses
import io
import sys
from collections.abc import Mapping
from typing import Any

import numpy as np
import pytest

import affectfpn.inference.predictor as predictor_module
import affectfpn.inference.results as results
import affectfpn.inference.tables as tables
import affectfpn.video.result as video_result
import affectfpn.video.smooth as video_smooth
from affectfpn.inference.results import (
    FACE_FIELDS,
    ActionUnits,
    Column,
    Expression,
    FaceField,
    FacePrediction,
    ImagePrediction,
    LabelNames,
    ValenceArousal,
)
from affectfpn.labels import ACTION_UNITS, EXPRESSIONS, TASKS
from affectfpn.video import smooth_frames
from affectfpn.video.result import Collector, VideoResult
from affectfpn.video.types import FramePrediction, VideoInfo

POSE_NAMES = ("yaw", "pitch", "roll")


@dataclasses.dataclass(frozen=True)
class HeadPose:
    """A hypothetical new output: head rotation in degrees."""

    yaw: float
    pitch: float
    roll: float

    def to_dict(self) -> dict[str, float]:
        return {"yaw": self.yaw, "pitch": self.pitch, "roll": self.roll}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "HeadPose":
        return cls(**{name: float(data[name]) for name in POSE_NAMES})


class PoseField(FaceField[HeadPose]):
    """Its declaration: the one place that says how the pose is read, tabled and smoothed."""

    name = "pose"
    task = "pose"
    output = "pose"
    result_type = HeadPose

    def names(self, labels: LabelNames) -> tuple[str, ...]:
        return POSE_NAMES

    def columns(self, names: tuple[str, ...]) -> list[Column]:
        return [Column(f"pose_{name}", "float") for name in names]

    def cells(self, value: HeadPose, names: tuple[str, ...], where: str) -> dict[str, object]:
        return {f"pose_{name}": getattr(value, name) for name in names}

    def value_names(self, value: HeadPose) -> tuple[str, ...]:
        return POSE_NAMES

    def lookup(self, value: HeadPose, names: tuple[str, ...]) -> list[float]:
        return [getattr(value, name) for name in names]

    def from_numbers(
        self, numbers: np.ndarray, names: tuple[str, ...], threshold: float
    ) -> HeadPose:
        yaw, pitch, roll = np.clip(numbers, -180.0, 180.0).tolist()
        return HeadPose(yaw, pitch, roll)

    def from_model(self, row: list[float], names: tuple[str, ...], threshold: float) -> HeadPose:
        return HeadPose(*row)


@dataclasses.dataclass(frozen=True, kw_only=True)
class PoseFace(FacePrediction):
    """A face with the new attribute (the one line ``FacePrediction`` itself would gain)."""

    pose: HeadPose | None = None


@pytest.fixture
def pose_field(monkeypatch: pytest.MonkeyPatch) -> PoseField:
    """Declare the pose field for the test: in FACE_FIELDS, wherever a module bound it."""
    field = PoseField()
    extended = (*FACE_FIELDS, field)
    patched = [
        module
        for module in list(sys.modules.values())
        if getattr(module, "FACE_FIELDS", None) is FACE_FIELDS
    ]
    assert {results, tables, predictor_module, video_result, video_smooth} <= set(patched)
    for module in patched:
        monkeypatch.setattr(module, "FACE_FIELDS", extended)
    return field


def _face(face_id: int, yaw: float) -> PoseFace:
    return PoseFace(
        face_id=face_id,
        box=(1.0, 2.0, 11.0, 12.0),
        score=0.9,
        va=ValenceArousal(0.1, -0.2),
        expression=Expression.from_probabilities(np.full(7, 1 / 7), EXPRESSIONS),
        aus=ActionUnits.from_probabilities(np.linspace(0, 1, 12), ACTION_UNITS),
        pose=HeadPose(yaw, 5.0, -3.0),
    )


def _frame(index: int, *faces: FacePrediction) -> FramePrediction:
    return FramePrediction(
        source=f"v.mp4#frame={index}",
        width=32,
        height=32,
        faces=faces,
        labels=LabelNames(),
        index=index,
        timestamp=index / 10,
    )


POSE_COLUMNS = ["pose_yaw", "pose_pitch", "pose_roll"]
ALL_TASKS = (*TASKS, "pose")


def test_an_extra_field_gets_columns_rows_csv_and_pandas(pose_field: PoseField) -> None:
    columns = tables.table_columns(tasks=ALL_TASKS)
    assert columns[-3:] == POSE_COLUMNS
    assert columns[:-3] == tables.table_columns()  # the existing columns keep their order
    assert tables.table_columns(tasks=("pose",))[-3:] == POSE_COLUMNS
    assert not set(POSE_COLUMNS) & set(tables.table_columns(tasks=TASKS))

    image = ImagePrediction("a.jpg", 32, 32, (_face(0, 20.0),))
    (row,) = tables.to_rows(image, tasks=ALL_TASKS)
    assert [row[c] for c in POSE_COLUMNS] == [20.0, 5.0, -3.0]

    buffer = io.StringIO()
    tables.write_csv([image], buffer, tasks=ALL_TASKS, precision=1)
    header, line = buffer.getvalue().splitlines()
    assert header.split(",")[-3:] == POSE_COLUMNS
    assert line.split(",")[-3:] == ["20.0", "5.0", "-3.0"]

    pytest.importorskip("pandas")
    table = tables.to_pandas([_frame(0, _face(0, 20.0))], tasks=ALL_TASKS)
    assert list(table.columns[-3:]) == POSE_COLUMNS
    assert all(str(table[c].dtype) == "float64" for c in POSE_COLUMNS)
    assert list(table.columns[:2]) == ["frame", "timestamp"]


def test_an_extra_field_is_serialised_and_a_task(pose_field: PoseField) -> None:
    face = _face(3, -40.0)
    data = face.to_dict()
    assert data["pose"] == {"yaw": -40.0, "pitch": 5.0, "roll": -3.0}
    assert list(data)[-1] == "pose"
    assert PoseFace.from_dict(data) == face
    assert face.tasks == ALL_TASKS
    with pytest.raises(results.InputError, match="pose must be a HeadPose"):
        PoseFace(pose="left")  # type: ignore[arg-type]


def test_an_extra_field_is_smoothed_over_video_frames(pose_field: PoseField) -> None:
    frames = [_frame(0, _face(0, 0.0)), _frame(1, _face(0, 90.0)), _frame(2, _face(0, 30.0))]
    ema = list(smooth_frames(frames, "ema", alpha=0.5))
    assert [frame.faces[0].pose.yaw for frame in ema] == [0.0, 45.0, 37.5]  # type: ignore[attr-defined]
    centered = list(smooth_frames(frames, "centered", window=3))
    assert centered[1].faces[0].pose.yaw == pytest.approx(40.0)  # type: ignore[attr-defined]
    # the other fields are smoothed as before, beside it
    va = centered[1].faces[0].va
    assert va is not None
    assert va.as_tuple() == pytest.approx((0.1, -0.2))


def test_every_field_has_its_place_in_every_consumer() -> None:
    """What a new field needs besides its declaration, and that the declarations agree."""
    assert tuple(spec.task for spec in FACE_FIELDS) == TASKS
    face_attributes = {f.name for f in dataclasses.fields(FacePrediction)}
    video_arrays = {f.name for f in dataclasses.fields(VideoResult)}
    pending = set(predictor_module._Pending.__dataclass_fields__)
    from affectfpn.models.affectfpn import AffectFPNOutput

    for spec in FACE_FIELDS:
        assert spec.name in face_attributes, spec.name
        assert spec.name in pending, spec.name  # the predictor's per-face rows
        assert spec.task in video_arrays, spec.task
        assert spec.output in AffectFPNOutput._fields, spec.output
    names = [spec.name for spec in FACE_FIELDS]
    assert len(set(names)) == len(names)


def test_every_field_round_trips_through_every_consumer() -> None:
    """Each declared field, alone, reaches the table, to_dict, the VideoResult and smoothing."""
    full = FacePrediction(
        face_id=0,
        box=(0.0, 0.0, 4.0, 4.0),
        va=ValenceArousal(0.5, -0.5),
        expression=Expression.from_probabilities([0.1, 0, 0, 0, 0.9, 0, 0], EXPRESSIONS),
        aus=ActionUnits.from_probabilities(np.linspace(0, 1, 12), ACTION_UNITS, 0.25),
    )
    labels = LabelNames()
    for spec in FACE_FIELDS:
        value = getattr(full, spec.name)
        others: dict[str, Any] = {o.name: None for o in FACE_FIELDS if o is not spec}
        face = dataclasses.replace(full, **others)
        assert face.tasks == (spec.task,)
        names = spec.names(labels)
        columns = [column.name for column in spec.columns(names)]
        (row,) = tables.to_rows(ImagePrediction("x", 4, 4, (face,)))
        assert all(row[c] is not None for c in columns), spec.name
        others_columns = set(tables.table_columns()) - set(columns)
        assert all(row[c] is None for c in others_columns - {c.name for c in tables.BASE_COLUMNS})
        assert FacePrediction.from_dict(face.to_dict()) == face

        collector = Collector(VideoInfo("v", 10.0, 2, 4, 4), EXPRESSIONS, ACTION_UNITS, 0.25)
        collector.add(_frame(0, face))
        result = collector.result()
        assert getattr(result, spec.task).shape == (1, len(names))
        (back,) = next(result.frames()).faces
        assert getattr(back, spec.name) == spec.from_numbers(
            np.asarray(spec.lookup(value, names), dtype=np.float32), names, 0.25
        )
        frames = [_frame(0, face), _frame(1, face)]
        smoothed = list(smooth_frames(frames, "ema", alpha=0.5))[1].faces[0]
        np.testing.assert_allclose(
            spec.vector(getattr(smoothed, spec.name)), spec.vector(value), atol=1e-12
        )
