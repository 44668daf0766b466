"""Tests of the typed prediction results and their table (CSV) form."""

import csv
import dataclasses
import io
import json
import math
import pickle
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from affectfpn.errors import AffectFPNError, InputError
from affectfpn.inference.results import (
    ActionUnits,
    CsvWriter,
    Expression,
    FacePrediction,
    ImagePrediction,
    LabelNames,
    ValenceArousal,
    openface_au_name,
    table_columns,
    to_rows,
    write_csv,
)
from affectfpn.labels import ACTION_UNITS, EXPRESSIONS, TASKS

EXPR_PROBS = [0.05, 0.02, 0.03, 0.1, 0.6, 0.15, 0.05]
AU_PROBS = [0.1, 0.5, 0.49, 0.9, 0.0, 1.0, 0.7, 0.3, 0.2, 0.51, 0.6, 0.05]
OPENFACE_AUS = [
    "AU01",
    "AU02",
    "AU04",
    "AU06",
    "AU07",
    "AU10",
    "AU12",
    "AU15",
    "AU23",
    "AU24",
    "AU25",
    "AU26",
]


def make_face(face_id: int = 0, *, tasks: tuple[str, ...] = TASKS) -> FacePrediction:
    return FacePrediction(
        face_id=face_id,
        box=(10.5, 20.25, 110.0, 140.75),
        score=0.97,
        landmarks=((40.0, 60.0), (80.0, 60.0), (60.0, 90.0), (45.0, 115.0), (75.0, 115.0)),
        va=ValenceArousal(0.42, -0.1) if "va" in tasks else None,
        expression=(
            Expression.from_probabilities(EXPR_PROBS, EXPRESSIONS)
            if "expression" in tasks
            else None
        ),
        aus=ActionUnits.from_probabilities(AU_PROBS, ACTION_UNITS) if "au" in tasks else None,
    )


def make_image(n_faces: int = 2, source: str = "photo.jpg") -> ImagePrediction:
    return ImagePrediction(
        source=source,
        width=320,
        height=240,
        faces=tuple(make_face(i) for i in range(n_faces)),
    )


# ----------------------------------------------------------------------------- ValenceArousal


def test_valence_arousal_converts_numpy_and_iterates() -> None:
    va = ValenceArousal(np.float32(0.5), np.float64(-1.0))  # type: ignore[arg-type]
    assert type(va.valence) is float
    assert type(va.arousal) is float
    assert va.as_tuple() == (0.5, -1.0)
    v, a = va
    assert (v, a) == (0.5, -1.0)
    assert va.to_dict() == {"valence": 0.5, "arousal": -1.0}


@pytest.mark.parametrize(
    ("valence", "arousal"),
    [(1.01, 0.0), (0.0, -1.5), (float("nan"), 0.0), (0.0, float("inf")), ("0.5", 0.0)],
)
def test_valence_arousal_rejects_bad_values(valence: object, arousal: object) -> None:
    with pytest.raises(InputError, match=r"valence|arousal"):
        ValenceArousal(valence, arousal)  # type: ignore[arg-type]


def test_valence_arousal_is_frozen() -> None:
    va = ValenceArousal(0.1, 0.2)
    with pytest.raises(dataclasses.FrozenInstanceError):
        va.valence = 0.3  # type: ignore[misc]


def test_errors_are_library_and_value_errors() -> None:
    with pytest.raises(AffectFPNError):
        ValenceArousal(2.0, 0.0)
    with pytest.raises(ValueError, match="valence"):
        ValenceArousal(2.0, 0.0)


# ----------------------------------------------------------------------------- Expression


def test_expression_from_probabilities_round_trip() -> None:
    expr = Expression.from_probabilities(np.asarray(EXPR_PROBS, dtype=np.float32), EXPRESSIONS)
    assert expr.label == "Happiness"
    assert tuple(expr.probabilities) == EXPRESSIONS
    assert expr.names == EXPRESSIONS
    back = np.array([expr.probabilities[name] for name in EXPRESSIONS])
    np.testing.assert_allclose(back, EXPR_PROBS, rtol=0, atol=1e-7)
    assert expr.score == pytest.approx(0.6)
    again = Expression.from_probabilities(back, EXPRESSIONS)
    assert again == expr


def test_expression_top_k_orders_by_probability() -> None:
    expr = Expression.from_probabilities(EXPR_PROBS, EXPRESSIONS)
    assert [name for name, _ in expr.top(3)] == ["Happiness", "Sadness", "Fear"]
    assert expr.top()[0] == ("Happiness", pytest.approx(0.6))
    assert len(expr.top(100)) == 7
    with pytest.raises(InputError, match="k"):
        expr.top(0)


def test_expression_ties_pick_first_name() -> None:
    expr = Expression.from_probabilities([0.5, 0.5], ["A", "B"])
    assert expr.label == "A"
    assert Expression("B", {"A": 0.5, "B": 0.5}).label == "B"


def test_expression_probabilities_are_read_only_copies() -> None:
    source = dict(zip(EXPRESSIONS, EXPR_PROBS, strict=True))
    expr = Expression("Happiness", source)
    source["Happiness"] = 0.0
    assert expr.probabilities["Happiness"] == 0.6
    with pytest.raises(TypeError):
        expr.probabilities["Happiness"] = 0.1  # type: ignore[index]


@pytest.mark.parametrize(
    ("label", "probabilities", "match"),
    [
        ("A", {"A": 0.6, "B": 0.3}, "sum to"),
        ("A", {"A": 1.2, "B": -0.2}, "not a probability"),
        ("B", {"A": 0.7, "B": 0.3}, "not the most probable"),
        ("C", {"A": 0.7, "B": 0.3}, "not one of the names"),
        ("A", {"A": float("nan"), "B": 0.3}, "finite"),
        ("A", {}, "empty"),
    ],
)
def test_expression_validation(label: str, probabilities: dict[str, float], match: str) -> None:
    with pytest.raises(InputError, match=match):
        Expression(label, probabilities)


def test_expression_accepts_small_rounding_error_only() -> None:
    Expression("A", {"A": 0.70004, "B": 0.3})
    with pytest.raises(InputError, match="sum to"):
        Expression("A", {"A": 0.7002, "B": 0.3})


def test_expression_from_logits_is_refused() -> None:
    with pytest.raises(InputError, match="logits"):
        Expression.from_probabilities([2.0, -1.0, 0.5], ["A", "B", "C"])


@pytest.mark.parametrize(
    ("probs", "names", "match"),
    [
        ([0.5, 0.5], ["A", "B", "C"], "2 probabilities for 3 names"),
        ([[0.5, 0.5]], ["A", "B"], "1-D"),
        ([0.5, 0.5], ["A", "A"], "unique"),
    ],
)
def test_from_probabilities_checks_shape_and_names(
    probs: object, names: list[str], match: str
) -> None:
    with pytest.raises(InputError, match=match):
        Expression.from_probabilities(probs, names)  # type: ignore[arg-type]
    with pytest.raises(InputError, match=match):
        ActionUnits.from_probabilities(probs, names)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- ActionUnits


def test_action_units_active_obeys_threshold_inclusively() -> None:
    aus = ActionUnits.from_probabilities(AU_PROBS, ACTION_UNITS)
    expected = tuple(n for n, p in zip(ACTION_UNITS, AU_PROBS, strict=True) if p >= 0.5)
    assert aus.active == expected
    assert "AU2" in aus.active  # exactly 0.5 counts as active
    assert "AU4" not in aus.active  # 0.49 does not
    assert aus.names == ACTION_UNITS
    strict = ActionUnits.from_probabilities(AU_PROBS, ACTION_UNITS, threshold=0.7)
    assert strict.active == ("AU6", "AU10", "AU12")
    assert ActionUnits.from_probabilities(AU_PROBS, ACTION_UNITS, threshold=0.0).active == (
        ACTION_UNITS
    )


def test_action_units_active_is_computed_not_passed() -> None:
    with pytest.raises(TypeError):
        ActionUnits({"AU1": 0.2}, active=("AU1",))  # type: ignore[call-arg]


@pytest.mark.parametrize(
    ("probabilities", "threshold", "match"),
    [
        ({"AU1": 1.1}, 0.5, "not a probability"),
        ({"AU1": -0.1}, 0.5, "not a probability"),
        ({"AU1": float("nan")}, 0.5, "finite"),
        ({"AU1": 0.2}, 1.5, "threshold"),
        ({"AU1": 0.2}, float("nan"), "threshold"),
    ],
)
def test_action_units_validation(
    probabilities: dict[str, float], threshold: float, match: str
) -> None:
    with pytest.raises(InputError, match=match):
        ActionUnits(probabilities, threshold)


def test_action_units_from_probabilities_round_trip() -> None:
    aus = ActionUnits.from_probabilities(np.asarray(AU_PROBS, dtype=np.float64), ACTION_UNITS)
    assert list(aus.probabilities.values()) == AU_PROBS
    assert ActionUnits.from_probabilities(list(aus.probabilities.values()), aus.names) == aus


def test_openface_au_name() -> None:
    assert [openface_au_name(n) for n in ACTION_UNITS] == OPENFACE_AUS
    assert openface_au_name("AU01") == "AU01"
    assert openface_au_name("AU45") == "AU45"
    with pytest.raises(InputError, match="AU<number>"):
        openface_au_name("Smile")


# ----------------------------------------------------------------------------- faces and images


def test_face_prediction_converts_arrays_to_tuples() -> None:
    # numpy inputs work at run time; the annotations name the stored (builtin) types
    face = FacePrediction(
        box=np.array([1, 2, 3, 4], dtype=np.int32),  # type: ignore[arg-type]
        score=np.float32(0.5),  # type: ignore[arg-type]
        landmarks=np.arange(10, dtype=np.float32).reshape(5, 2),  # type: ignore[arg-type]
        face_id=np.int64(3),  # type: ignore[arg-type]
    )
    assert face.box == (1.0, 2.0, 3.0, 4.0)
    assert all(type(v) is float for v in face.box)
    assert face.landmarks == ((0.0, 1.0), (2.0, 3.0), (4.0, 5.0), (6.0, 7.0), (8.0, 9.0))
    assert type(face.face_id) is int
    assert face.tasks == ()
    assert make_face(tasks=("va", "au")).tasks == ("va", "au")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"box": (10, 10, 5, 20)}, "x2 < x1"),
        ({"box": (0, 0, 1)}, "x1, y1, x2, y2"),
        ({"box": (0, 0, float("nan"), 1)}, "finite"),
        ({"score": float("inf")}, "score"),
        ({"landmarks": ((1, 2, 3),)}, "landmarks"),
        ({"face_id": -1}, "face_id"),
        ({"face_id": 1.0}, "face_id"),
        ({"va": (0.1, 0.2)}, "ValenceArousal"),
        ({"expression": "Happiness"}, "Expression"),
    ],
)
def test_face_prediction_validation(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(InputError, match=match):
        FacePrediction(**kwargs)  # type: ignore[arg-type]


def test_image_prediction_sequence_protocol() -> None:
    faces = [make_face(0), make_face(1), make_face(5)]
    image = ImagePrediction("a.jpg", 320, 240, faces)  # type: ignore[arg-type]
    assert isinstance(image.faces, tuple)
    assert len(image) == 3
    assert image[2].face_id == 5
    assert image[-1] is image.faces[-1]
    assert image[1:] == (faces[1], faces[2])
    assert [face.face_id for face in image] == [0, 1, 5]
    assert len(ImagePrediction("b.jpg", 10, 10)) == 0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"width": 0}, "width"),
        ({"height": -3}, "height"),
        ({"source": 5}, "source"),
        ({"faces": (make_face(0), make_face(0))}, "unique"),
        ({"faces": ("face",)}, "FacePrediction"),
    ],
)
def test_image_prediction_validation(kwargs: dict[str, object], match: str) -> None:
    arguments: dict[str, object] = {"source": "a.jpg", "width": 10, "height": 10}
    arguments.update(kwargs)
    with pytest.raises(InputError, match=match):
        ImagePrediction(**arguments)  # type: ignore[arg-type]


def test_to_dict_is_json_and_round_trips() -> None:
    image = make_image(2)
    data = image.to_dict()
    text = json.dumps(data)
    loaded = json.loads(text)
    assert loaded == data  # only builtins: nothing lost through JSON
    face = loaded["faces"][1]
    assert face["face_id"] == 1
    assert face["box"] == [10.5, 20.25, 110.0, 140.75]
    assert face["va"] == {"valence": 0.42, "arousal": -0.1}
    assert face["expression"]["label"] == "Happiness"
    assert face["expression"]["probabilities"]["Sadness"] == pytest.approx(0.15)
    assert face["aus"]["active"] == ["AU2", "AU6", "AU10", "AU12", "AU24", "AU25"]
    assert face["landmarks"][2] == [60.0, 90.0]
    assert ImagePrediction.from_dict(loaded) == image


def test_to_dict_keeps_missing_tasks_as_none() -> None:
    face = make_face(tasks=("expression",))
    data = json.loads(json.dumps(face.to_dict()))
    assert data["va"] is None
    assert data["aus"] is None
    assert data["expression"]["label"] == "Happiness"
    assert FacePrediction.from_dict(data) == face


def test_results_pickle_and_hash() -> None:
    image = make_image(2)
    restored = pickle.loads(pickle.dumps(image))
    assert restored == image
    assert hash(restored) == hash(image)
    assert restored[0].expression is not None
    assert restored[0].expression.probabilities["Happiness"] == pytest.approx(0.6)


# ----------------------------------------------------------------------------- table form


def expected_columns() -> list[str]:
    return (
        ["source", "face_id", "success", "confidence", "x1", "y1", "x2", "y2"]
        + ["valence", "arousal", "expression"]
        + [f"expr_{name}" for name in EXPRESSIONS]
        + [f"{au}_p" for au in OPENFACE_AUS]
        + [f"{au}_c" for au in OPENFACE_AUS]
    )


def test_table_columns_order_and_task_selection() -> None:
    assert table_columns() == expected_columns()
    assert "expr_Happiness" in table_columns()
    only_va = table_columns(tasks=("va",))
    assert only_va == expected_columns()[:10]
    no_expr = table_columns(tasks=("au", "va"))  # order of tasks does not matter
    assert no_expr == [c for c in expected_columns() if not c.startswith("expr")]
    with pytest.raises(InputError, match="unknown task"):
        table_columns(tasks=("pose",))
    with pytest.raises(InputError, match="repeated"):
        table_columns(action_units=("AU1", "AU01"))


def test_to_rows_one_row_per_face_with_values() -> None:
    rows = to_rows(make_image(2))
    assert len(rows) == 2
    for face_id, row in enumerate(rows):
        assert list(row) == expected_columns()
        assert row["source"] == "photo.jpg"
        assert row["face_id"] == face_id
        assert row["success"] == 1
        assert row["confidence"] == pytest.approx(0.97)
        assert (row["x1"], row["y1"], row["x2"], row["y2"]) == (10.5, 20.25, 110.0, 140.75)
        assert (row["valence"], row["arousal"]) == (0.42, -0.1)
        assert row["expression"] == "Happiness"
        assert [row[f"expr_{n}"] for n in EXPRESSIONS] == pytest.approx(EXPR_PROBS)
        assert [row[f"{au}_p"] for au in OPENFACE_AUS] == pytest.approx(AU_PROBS)
        assert [row[f"{au}_c"] for au in OPENFACE_AUS] == [int(p >= 0.5) for p in AU_PROBS]


def test_to_rows_no_face_row_and_many_images() -> None:
    images = [make_image(2, "a.jpg"), make_image(0, "b.jpg"), make_image(1, "c.jpg")]
    rows = to_rows(iter(images))
    assert [(r["source"], r["face_id"], r["success"]) for r in rows] == [
        ("a.jpg", 0, 1),
        ("a.jpg", 1, 1),
        ("b.jpg", -1, 0),
        ("c.jpg", 0, 1),
    ]
    empty = rows[2]
    assert list(empty) == expected_columns()
    assert all(empty[c] is None for c in expected_columns()[3:])
    assert images[1].to_rows() == [empty]


def test_to_rows_missing_tasks_give_empty_cells() -> None:
    image = ImagePrediction("crop.png", 112, 112, (make_face(tasks=("va",)),))
    (row,) = to_rows(image)
    assert row["valence"] == 0.42
    assert row["expression"] is None
    assert all(row[f"expr_{n}"] is None for n in EXPRESSIONS)
    assert all(row[f"{au}_p"] is None and row[f"{au}_c"] is None for au in OPENFACE_AUS)
    (narrow,) = to_rows(image, tasks=("va",))
    assert list(narrow) == expected_columns()[:10]


def test_to_rows_crop_mode_has_empty_confidence() -> None:
    face = FacePrediction(box=(0, 0, 112, 112), va=ValenceArousal(0.0, 0.0))
    (row,) = to_rows(ImagePrediction("crop.png", 112, 112, (face,)))
    assert row["confidence"] is None
    assert (row["x1"], row["y1"], row["x2"], row["y2"]) == (0.0, 0.0, 112.0, 112.0)


def test_to_rows_custom_label_names() -> None:
    names = ("Calm", "Joy")
    face = FacePrediction(expression=Expression.from_probabilities([0.2, 0.8], names))
    image = ImagePrediction("x.jpg", 8, 8, (face,))
    (row,) = to_rows(image, expressions=names, tasks=("expression",))
    assert row["expr_Joy"] == pytest.approx(0.8)
    assert row["expression"] == "Joy"
    with pytest.raises(InputError, match=r"expressions=model\.config\.expressions"):
        to_rows(image)  # default names do not match this model's


def test_tables_take_the_columns_from_the_labels_the_results_carry() -> None:
    names = ("Calm", "Joy")
    labels = LabelNames(expressions=names, action_units=("AU12",))
    face = FacePrediction(
        expression=Expression.from_probabilities([0.2, 0.8], names),
        aus=ActionUnits.from_probabilities([0.7], ("AU12",)),
    )
    faceless = ImagePrediction("first.jpg", 8, 8, labels=labels)
    image = ImagePrediction("x.jpg", 8, 8, (face,), labels=labels)
    # the first image has no face: its labels still give the model's columns
    rows = to_rows([faceless, image])
    assert [c for c in rows[0] if c.startswith(("expr_", "AU"))] == [
        "expr_Calm",
        "expr_Joy",
        "AU12_p",
        "AU12_c",
    ]
    assert rows[1]["expr_Joy"] == pytest.approx(0.8)
    assert rows[1]["AU12_c"] == 1
    buffer = io.StringIO(newline="")
    assert write_csv([faceless, image], buffer) == 2
    columns, _ = read_back(buffer.getvalue())
    assert columns == list(rows[0])
    # labels are not part of equality nor of to_dict (the JSON format is unchanged)
    assert image == ImagePrediction("x.jpg", 8, 8, (face,))
    assert "labels" not in image.to_dict()
    assert ImagePrediction.from_dict(image.to_dict()).labels is None
    with pytest.raises(InputError, match="labels must be a LabelNames"):
        ImagePrediction("x.jpg", 8, 8, labels=("Calm", "Joy"))  # type: ignore[arg-type]
    with pytest.raises(InputError, match="repeated"):
        LabelNames(expressions=("Joy", "Joy"))


def test_csv_writer_streams_and_writes_a_header_even_for_nothing(tmp_path: Path) -> None:
    path = tmp_path / "empty.csv"
    with CsvWriter(path) as writer:
        pass
    assert path.read_text(encoding="utf-8").splitlines() == [",".join(expected_columns())]
    assert writer.rows == 0
    buffer = io.StringIO(newline="")
    writer = CsvWriter(buffer, tasks=("va",), precision=2)
    assert writer.columns is None  # the header waits for the first prediction's labels
    assert writer.add(make_image(2)) == 2
    assert writer.add(make_image(0, "b.jpg")) == 1
    writer.close()
    assert not buffer.closed  # an open file is the caller's
    columns, cells = read_back(buffer.getvalue())
    assert columns == expected_columns()[:10]
    assert [c["valence"] for c in cells] == ["0.42", "0.42", ""]
    assert writer.rows == 3
    with pytest.raises(InputError, match=r"CsvWriter\.add takes an ImagePrediction"):
        CsvWriter(io.StringIO()).add(make_face())  # type: ignore[arg-type]
    with pytest.raises(InputError, match="precision"):
        CsvWriter(io.StringIO(), precision=-1)


def test_to_rows_rejects_wrong_input() -> None:
    with pytest.raises(InputError, match="ImagePrediction"):
        to_rows(make_face())  # type: ignore[arg-type]
    with pytest.raises(InputError, match=r"predictions\[1\]"):
        to_rows([make_image(1), "b.jpg"])  # type: ignore[list-item]


def read_back(text: str) -> tuple[list[str], list[dict[str, str]]]:
    reader = csv.DictReader(io.StringIO(text, newline=""))
    return list(reader.fieldnames or []), list(reader)


def assert_cells_match(row: dict[str, object], cells: dict[str, str], precision: int) -> None:
    assert set(cells) == set(row)
    for column, value in row.items():
        cell = cells[column]
        if value is None:
            assert cell == "", column
        elif isinstance(value, float):
            assert "e" not in cell.lower(), column  # fixed notation
            assert len(cell.split(".")[1]) == precision, column
            assert math.isclose(float(cell), value, abs_tol=0.5 * 10**-precision), column
        else:
            assert cell == str(value), column


def test_write_csv_to_open_file_reads_back() -> None:
    images = [make_image(2, "dir/a, with comma.jpg"), make_image(0, "b.jpg")]
    buffer = io.StringIO(newline="")
    count = write_csv(images, buffer)
    assert count == 3
    columns, cells = read_back(buffer.getvalue())
    assert columns == expected_columns()
    rows = to_rows(images)
    assert len(cells) == len(rows)
    for row, cell_row in zip(rows, cells, strict=True):
        assert_cells_match(row, cell_row, precision=6)
    assert cells[0]["source"] == "dir/a, with comma.jpg"


def test_write_csv_to_path_with_precision_and_tasks(tmp_path: Path) -> None:
    path = tmp_path / "out.csv"
    image = ImagePrediction("c.jpg", 64, 64, (make_face(0, tasks=("va", "au")),))
    assert write_csv(image, path, precision=3, tasks=("va", "au")) == 1
    text = path.read_text(encoding="utf-8")
    columns, cells = read_back(text)
    assert columns == table_columns(tasks=("va", "au"))
    assert_cells_match(to_rows(image, tasks=("va", "au"))[0], cells[0], precision=3)
    assert cells[0]["AU02_p"] == "0.500"
    assert cells[0]["AU02_c"] == "1"
    with pytest.raises(InputError, match="precision"):
        write_csv(image, path, precision=-1)


def test_write_csv_streams_a_generator() -> None:
    def frames() -> Iterator[ImagePrediction]:  # a video: frames come one at a time
        for i in range(4):
            yield make_image(i % 2, f"video.mp4#frame={i}")

    buffer = io.StringIO(newline="")
    assert write_csv(frames(), buffer) == 4  # frames 0, 2 have no face; 1, 3 have one
    _, cells = read_back(buffer.getvalue())
    assert [c["success"] for c in cells] == ["0", "1", "0", "1"]
    assert [c["face_id"] for c in cells] == ["-1", "0", "-1", "0"]


def test_expression_and_action_units_print_as_a_person_reads_them() -> None:
    from affectfpn.inference.results import ActionUnits, Expression

    expression = Expression.from_probabilities([0.1, 0, 0, 0, 0.9, 0, 0], EXPRESSIONS)
    assert str(expression) == "Happiness 0.90"
    aus = ActionUnits.from_probabilities([0.2, 0.7, 0.9], ("AU1", "AU12", "AU26"))
    assert str(aus) == "AU12 AU26"
    assert str(ActionUnits.from_probabilities([0.1], ("AU1",))) == "no active AU"
