"""The per-face fields are declared once (``FACE_FIELDS``) and every consumer derives from it.

The consumers are the predictor (its batch step ``_run_batch`` and ``_finish``),
``FacePrediction.to_dict`` / ``from_dict`` / ``tasks``, the tables (``table_columns``,
``to_rows``, ``write_csv``, ``to_pandas``, the video CSV), the video's ``VideoResult`` (its
arrays, its collector, ``frames()``) and smoothing. A hypothetical extra field (head pose),
declared only in this file, shows up in all of them: only ``FacePrediction``'s attribute is
simulated, by a subclass (the one line the class itself would gain).
"""

import dataclasses
import io
import pickle
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import cv2
import numpy as np
import pytest
import torch

import affectfpn.inference.predictor as predictor_module
import affectfpn.inference.results as results
import affectfpn.inference.tables as tables
import affectfpn.video.result as video_result
import affectfpn.video.smooth as video_smooth
from affectfpn import AffectFPN, AffectFPNConfig, predict
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
from affectfpn.models.affectfpn import AffectFPNOutput
from affectfpn.preprocess import normalize
from affectfpn.video import analyze_video, predict_video, smooth_frames
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

    def activate(self, output: torch.Tensor, temperature: float) -> torch.Tensor:
        return output.float().tanh() * 90.0  # degrees in [-90, 90]

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


@pytest.fixture
def pose_faces(monkeypatch: pytest.MonkeyPatch, pose_field: PoseField) -> None:
    """Faces built from the fields' values have the pose attribute (as ``FacePrediction`` would,
    with its one new line): the classes the predictor and ``VideoResult.frames`` build."""
    for module in (predictor_module, video_result):
        monkeypatch.setattr(module, "FacePrediction", PoseFace)


class PoseOutput(NamedTuple):
    """The model's outputs with the new one (``AffectFPNOutput`` would gain the line)."""

    va: torch.Tensor | None
    expression: torch.Tensor | None
    au: torch.Tensor | None
    expression_temperature: torch.Tensor | None
    pose: torch.Tensor | None


class PoseModel(AffectFPN):
    """A model with a pose output: ``N x 3``, the mean of each normalised input channel."""

    def forward(self, x: torch.Tensor) -> PoseOutput:  # type: ignore[override]
        return PoseOutput(*super().forward(x), pose=x.float().mean(dim=(2, 3)))


SIZE = 32


@pytest.fixture(scope="module")
def pose_model() -> PoseModel:
    torch.manual_seed(0)
    return PoseModel(AffectFPNConfig(fpn_width=8, input_size=(SIZE, SIZE))).eval()


def _solid(value: int) -> np.ndarray:
    """An RGB image of one colour (every crop of it has the same channel means)."""
    image = np.empty((SIZE, SIZE, 3), dtype=np.uint8)
    image[:] = (value, 255 - value, value // 2)
    return image


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


def test_an_extra_field_flows_through_the_batch_step(
    pose_faces: None, pose_model: PoseModel
) -> None:
    values = [0, 60, 120, 180, 240]
    images = [_solid(v) for v in values]
    # batches of 2: the rows of each batch reach their own faces
    results = predict(pose_model, images, faces="crop", batch_size=2, num_workers=0)
    field = PoseField()
    expected = field.activate(
        normalize(torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2), pose_model.config).mean(
            dim=(2, 3)
        ),
        1.0,
    )
    for result, want in zip(results, expected.tolist(), strict=True):
        (face,) = result.faces
        assert isinstance(face, PoseFace)
        assert face.pose is not None
        assert face.pose.to_dict() == pytest.approx(
            dict(zip(POSE_NAMES, want, strict=True)), abs=1e-4
        )
        assert face.tasks == ALL_TASKS
    # the existing fields come out as from a model without the new output (whose pose is None)
    plain = AffectFPN(pose_model.config).eval()
    plain.load_state_dict(pose_model.state_dict())
    for result, other in zip(
        results, predict(plain, images, faces="crop", batch_size=2, num_workers=0), strict=True
    ):
        assert other.faces[0].pose is None  # type: ignore[attr-defined]
        for spec in FACE_FIELDS[:-1]:  # (the fixture added the pose at the end)
            assert getattr(result.faces[0], spec.name) == getattr(other.faces[0], spec.name)


def test_an_extra_field_has_its_video_result_array(
    pose_faces: None, pose_model: PoseModel, tmp_path: Path
) -> None:
    path = tmp_path / "solid.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), 10.0, (SIZE, SIZE))
    for value in (0, 80, 160, 240):
        writer.write(_solid(value)[:, :, ::-1].copy())
    writer.release()
    options: dict[str, Any] = {"faces": "crop", "batch_size": 3}
    result = analyze_video(pose_model, path, **options)
    frames = list(predict_video(pose_model, path, **options))
    poses = [frame.faces[0].pose.to_dict() for frame in frames]
    assert list(result.outputs) == [*TASKS, "pose"]
    assert result.pose.dtype == np.float32
    assert result.pose.shape == (4, 3)
    assert result.pose is result.outputs["pose"]
    np.testing.assert_allclose(
        result.pose, [[pose[name] for name in POSE_NAMES] for pose in poses], atol=1e-4
    )
    assert len({tuple(row) for row in result.pose.round(2).tolist()}) == 4  # one per frame
    for rebuilt, pose in zip(result.frames(), poses, strict=True):
        face = rebuilt.faces[0]
        assert isinstance(face, PoseFace)
        assert face.pose is not None
        assert face.pose.to_dict() == pytest.approx(pose, abs=1e-4)
    # the other arrays as before
    assert result.va.shape == (4, 2)
    assert result.expression.shape == (4, len(EXPRESSIONS))


def test_video_result_keeps_its_arrays_by_name() -> None:
    collector = Collector(VideoInfo("v", 10.0, 2, 32, 32), EXPRESSIONS, ACTION_UNITS, 0.5)
    collector.add(_frame(0, _face(0, 0.0), _face(1, 1.0)))
    collector.add(_frame(1))
    result = collector.result()
    shapes = {"va": (2, 2), "expression": (2, len(EXPRESSIONS)), "au": (2, len(ACTION_UNITS))}
    for name, shape in shapes.items():
        array = getattr(result, name)
        assert array is result.outputs[name]
        assert array.shape == shape
        assert array.dtype == np.float32
        assert name in dir(result)
    np.testing.assert_allclose(result.va, [[0.1, -0.2], [0.1, -0.2]])
    with pytest.raises(AttributeError, match="pose"):
        result.pose  # noqa: B018
    # the constructor takes them by name, as dataclasses.replace does
    kept = {f.name: getattr(result, f.name) for f in dataclasses.fields(result)}
    del kept["outputs"]
    again = VideoResult(**kept, va=result.va, expression=result.expression, au=result.au)
    assert list(again.outputs) == list(TASKS)
    # (mypy's dataclass plugin knows only the fields; at run time the arrays' names work)
    replaced = dataclasses.replace(result, va=np.zeros((2, 2), dtype=np.float32))  # type: ignore[call-arg]
    assert replaced.va.sum() == 0
    assert replaced.au is result.au
    assert pickle.loads(pickle.dumps(result)).expression.tolist() == result.expression.tolist()
    with pytest.raises(results.InputError, match="missing au"):
        VideoResult(**kept, va=result.va, expression=result.expression)
    with pytest.raises(results.InputError, match="unknown pose"):
        VideoResult(**kept, outputs=result.outputs, pose=result.va)


def test_every_field_has_its_place_in_every_consumer() -> None:
    """What a new field needs besides its declaration, and that the declarations agree."""
    assert tuple(spec.task for spec in FACE_FIELDS) == TASKS
    face_attributes = {f.name for f in dataclasses.fields(FacePrediction)}
    # a field's VideoResult array is an attribute named after its task: no clash
    video_attributes = {f.name for f in dataclasses.fields(VideoResult)} | set(dir(VideoResult))
    for spec in FACE_FIELDS:
        assert spec.name in face_attributes, spec.name
        assert spec.task not in video_attributes, spec.task
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
