"""The table (CSV, pandas) form of predictions: one row per face, columns from the face fields.

:func:`to_rows`, :func:`write_csv` (and :class:`CsvWriter`, for rows added one prediction at a
time) and :func:`to_pandas` make the one table of the package; the video's CSV
(``affectfpn.video.write_video_csv``) is the same table with :data:`FRAME_COLUMNS` first.
The columns of the face's model outputs come from the per-face fields
(:data:`affectfpn.inference.results.FACE_FIELDS`): each field gives its own columns and cells,
in the fields' order, so a field is declared in one place and every table follows. The names
are also importable from :mod:`affectfpn.inference.results`, where they used to live.


Table form
----------
:func:`to_rows` and :func:`write_csv` give one row per face, with column names in the spirit of
OpenFace 2.0 so that existing analysis scripts need few changes. An image in which no face was
found still gives one row, with ``face_id`` -1, ``success`` 0 and every other cell empty, so that
the table has at least one row per input (as OpenFace writes ``success`` 0 for frames where
tracking failed). Columns, in order:

==================  ========================================================================
Column              Meaning
==================  ========================================================================
``source``          Where the image came from (file path, ``"video.mp4#frame=12"``, ...), as
                    given by :attr:`ImagePrediction.source`.
``face_id``         Index of the face in the image (0, 1, ...), or its track id in a video;
                    -1 on the row of an image without faces.
``success``         1 if this row is a face, 0 if no face was found in the image.
``confidence``      Face detection score (usually in [0, 1]); empty in crop mode (no detector)
                    and on a no-face row.
``x1`` ``y1``       Top-left corner of the face box, in pixels of the source image.
``x2`` ``y2``       Bottom-right corner of the face box, in pixels of the source image (in crop
                    mode the box is the whole image: 0, 0, width, height).
``valence``         Valence in [-1, 1] (negative = unpleasant, positive = pleasant).
``arousal``         Arousal in [-1, 1] (negative = calm, positive = excited).
``expression``      Name of the most probable expression (e.g. ``Happiness``).
``expr_<Name>``     Probability of each expression, one column per name in label order, e.g.
                    ``expr_Neutral``, ``expr_Anger``, ... ``expr_Surprise``; they sum to 1.
``AU<NN>_p``        Probability in [0, 1] that each action unit is present, one column per AU,
                    with OpenFace's zero-padded names: ``AU01_p``, ``AU02_p``, ``AU04_p``, ...
                    ``AU26_p``. These are occurrence probabilities, not OpenFace's 0-5
                    intensities (``AU<NN>_r``), hence the different suffix.
``AU<NN>_c``        1 if the AU is active (probability >= the threshold, 0.5 by default), else
                    0; same meaning as OpenFace's ``_c`` (presence) columns.
==================  ========================================================================

As in OpenFace, all ``_p`` columns come first, then all ``_c`` columns. A column group whose task
the model lacks (``valence``/``arousal``; ``expression``/``expr_*``; ``AU*``) is kept but left
empty, so that tables from different models line up; pass ``tasks=`` to leave the group out
instead. :func:`table_columns` returns the column list. Library AU names stay ``"AU1"``,
``"AU2"``...; :func:`openface_au_name` maps them to the column stems (``"AU1"`` -> ``"AU01"``).

:func:`write_csv` (and :class:`CsvWriter`, for rows added one prediction at a time) writes a
header line, then the rows, comma-separated, with floats at a fixed number of decimals (6 by
default) and empty cells for missing values; landmarks are not part of the table (they are in
``to_dict()``). The ``expr_*`` and AU columns are those of the first prediction's ``labels``
(the model's names), or the library's ``EXPRESSIONS`` and ``ACTION_UNITS`` for predictions built
by hand; ``expressions=`` and ``action_units=`` choose them explicitly.

Each column has a kind (:class:`~affectfpn.inference.results.Column`): text (``source``,
``expression``), integer (``frame``, ``face_id``, ``success``, ``AU<NN>_c``) or float (the
rest); :func:`to_pandas` gives them pandas' ``string``, nullable ``Int64`` and ``float64``.
"""

import csv
import io
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple, TextIO

from affectfpn.errors import InputError
from affectfpn.inference.results import (
    FACE_FIELDS,
    Column,
    FaceField,
    ImagePrediction,
    LabelNames,
    _check_names,
    _to_int,
)
from affectfpn.labels import ACTION_UNITS, EXPRESSIONS, TASKS

__all__ = [
    "BASE_COLUMNS",
    "FRAME_COLUMNS",
    "CsvWriter",
    "frame_cells",
    "table_columns",
    "to_pandas",
    "to_rows",
    "write_csv",
]

#: Columns present in every table, in order; the face fields' columns follow.
BASE_COLUMNS: tuple[Column, ...] = (
    Column("source", "str"),
    Column("face_id", "int"),
    Column("success", "int"),
    Column("confidence", "float"),
    Column("x1", "float"),
    Column("y1", "float"),
    Column("x2", "float"),
    Column("y2", "float"),
)
#: Columns a video's table has before :data:`BASE_COLUMNS` (see :func:`frame_cells`).
FRAME_COLUMNS: tuple[Column, ...] = (Column("frame", "int"), Column("timestamp", "float"))
#: pandas dtype of each column kind.
_PANDAS_DTYPES: dict[str, str] = {"str": "string", "int": "Int64", "float": "float64"}
_BOX_COLUMNS = ("x1", "y1", "x2", "y2")


def _check_tasks(tasks: Sequence[str]) -> tuple[str, ...]:
    chosen = _check_names(tasks, "tasks")
    known = tuple(spec.task for spec in FACE_FIELDS)
    unknown = [task for task in chosen if task not in known]
    if unknown:
        raise InputError(f"unknown task(s) {unknown}; tasks must be among {known}")
    return chosen


#: The library's own names, for predictions that carry none.
_LIBRARY_LABELS = LabelNames()


class _Layout(NamedTuple):
    """The columns of one table, and the face fields (with their numbers' names) behind them."""

    fields: tuple[tuple[FaceField[Any], tuple[str, ...]], ...]
    columns: tuple[Column, ...]

    @property
    def names(self) -> list[str]:
        return [column.name for column in self.columns]


def _layout(labels: LabelNames, tasks: tuple[str, ...]) -> _Layout:
    """The table of a model with these label names, for the chosen tasks (in field order)."""
    fields = tuple((spec, spec.names(labels)) for spec in FACE_FIELDS if spec.task in tasks)
    columns = list(BASE_COLUMNS)
    for spec, names in fields:
        columns += spec.columns(names)
    layout = _Layout(fields, tuple(columns))
    header = layout.names
    if len(set(header)) != len(header):
        raise InputError(
            f"the label names (expressions {labels.expressions}, action units "
            f"{labels.action_units}) give repeated columns: {header}"
        )
    return layout


def table_columns(
    expressions: Sequence[str] = EXPRESSIONS,
    action_units: Sequence[str] = ACTION_UNITS,
    tasks: Sequence[str] = TASKS,
) -> list[str]:
    """Return the ordered column names of :func:`to_rows` / :func:`write_csv`.

    Args:
        expressions: Expression names, one ``expr_<Name>`` column each (label order).
        action_units: Library AU names (``"AU1"``, ...), giving ``AU01_p`` ... then ``AU01_c`` ...
        tasks: Which task column groups to include (a subset of ``TASKS``); the columns always
            keep the order of the module docstring, whatever the order of ``tasks``.

    Returns:
        ``source, face_id, success, confidence, x1, y1, x2, y2``, then ``valence, arousal`` (task
        "va"), ``expression, expr_<Name>...`` (task "expression"), ``AU<NN>_p...,
        AU<NN>_c...`` (task "au").

    Raises:
        InputError: If a task is unknown, names repeat, or an AU name is not ``AU<number>``.
    """
    chosen = _check_tasks(tasks)
    labels = LabelNames(
        _check_names(expressions, "expressions"), _check_names(action_units, "action_units")
    )
    return _layout(labels, chosen).names


def _iter_images(
    predictions: ImagePrediction | Iterable[ImagePrediction],
) -> Iterator[ImagePrediction]:
    """Check the argument now, then iterate lazily over its images."""
    if isinstance(predictions, ImagePrediction):
        return iter((predictions,))
    if isinstance(predictions, (str, bytes, Mapping)) or not isinstance(predictions, Iterable):
        raise InputError(
            "predictions must be an ImagePrediction or an iterable of them, "
            f"got {type(predictions).__name__}"
        )

    def generate() -> Iterator[ImagePrediction]:
        for i, pred in enumerate(predictions):
            if not isinstance(pred, ImagePrediction):
                raise InputError(
                    f"predictions[{i}] is a {type(pred).__name__}, not an ImagePrediction"
                )
            yield pred

    return generate()


def _image_rows(pred: ImagePrediction, layout: _Layout) -> Iterator[dict[str, object]]:
    """Yield the rows of one image (one per face, or one no-face row)."""
    empty: dict[str, object] = dict.fromkeys(layout.names)
    if not pred.faces:
        row = dict(empty)
        row.update(source=pred.source, face_id=-1, success=0)
        yield row
        return
    for face in pred.faces:
        where = f"face {face.face_id} of {pred.source!r}"
        row = dict(empty)
        row.update(source=pred.source, face_id=face.face_id, success=1, confidence=face.score)
        if face.box is not None:
            row.update(zip(_BOX_COLUMNS, face.box, strict=True))
        for spec, names in layout.fields:
            value = getattr(face, spec.name)
            if value is not None:
                row.update(spec.cells(value, names, where))
        yield row


def _labels(
    first: ImagePrediction | None,
    expressions: Sequence[str] | None,
    action_units: Sequence[str] | None,
) -> LabelNames:
    """The label names of a table: those given, else the first prediction's, else the library's."""
    labels = _LIBRARY_LABELS
    if first is not None and first.labels is not None:
        labels = first.labels
    if expressions is None and action_units is None:
        return labels
    return LabelNames(
        labels.expressions if expressions is None else _check_names(expressions, "expressions"),
        labels.action_units if action_units is None else _check_names(action_units, "action_units"),
    )


def frame_cells(frame: object) -> dict[str, object] | None:
    """The :data:`FRAME_COLUMNS` cells of a video frame (an object with an integer ``index`` and
    a numeric ``timestamp``, such as ``FramePrediction``), or ``None`` for another image."""
    index, timestamp = getattr(frame, "index", None), getattr(frame, "timestamp", None)
    if isinstance(index, int) and isinstance(timestamp, float | int):
        return {"frame": index, "timestamp": float(timestamp)}
    return None


def to_rows(
    predictions: ImagePrediction | Iterable[ImagePrediction],
    *,
    expressions: Sequence[str] | None = None,
    action_units: Sequence[str] | None = None,
    tasks: Sequence[str] = TASKS,
) -> list[dict[str, object]]:
    """Turn predictions into table rows: one per face, one ``success`` 0 row per faceless image.

    Args:
        predictions: One :class:`ImagePrediction` or an iterable of them (e.g. video frames).
        expressions: Expression names for the ``expr_<Name>`` columns; default: the first
            prediction's ``labels`` (the model's names), else the library's.
        action_units: Library AU names for the ``AU<NN>_p`` / ``AU<NN>_c`` columns; default as
            for ``expressions``.
        tasks: Task column groups to include; see :func:`table_columns`.

    Returns:
        A list of dicts whose keys are :func:`table_columns` in order. Values are builtins:
        ``str`` (source, expression), ``int`` (face_id, success, ``_c``), ``float`` or ``None``
        (an empty cell: the model lacks the task, or no face was found).

    Raises:
        InputError: If a face lacks one of the given expression or AU names, or see
            :func:`table_columns`.
    """
    images = list(_iter_images(predictions))
    labels = _labels(images[0] if images else None, expressions, action_units)
    layout = _layout(labels, _check_tasks(tasks))
    return [row for image in images for row in _image_rows(image, layout)]


def to_pandas(
    predictions: ImagePrediction | Iterable[ImagePrediction],
    *,
    expressions: Sequence[str] | None = None,
    action_units: Sequence[str] | None = None,
    tasks: Sequence[str] = TASKS,
) -> Any:
    """The table of :func:`to_rows` as a pandas DataFrame: the CSV's columns, one row per face.

    Video frames (``FramePrediction``) add ``frame`` and ``timestamp`` first, as the video CSV
    does. Integer columns (``face_id``, ``success``, ``AU<NN>_c``) are pandas' nullable
    ``Int64``; an empty cell (a task the model lacks, an image without a face) is missing
    (``<NA>`` / NaN). Needs pandas: ``pip install 'affectfpn[pandas]'``.
    """
    try:
        import pandas as pd
    except ImportError:
        from affectfpn.errors import MissingExtraError

        raise MissingExtraError(
            "to_pandas needs pandas: pip install 'affectfpn[pandas]' (or pip install pandas)"
        ) from None
    images = list(_iter_images(predictions))
    labels = _labels(images[0] if images else None, expressions, action_units)
    layout = _layout(labels, _check_tasks(tasks))
    leads = [frame_cells(image) for image in images]
    frames = bool(images) and all(lead is not None for lead in leads)
    rows: list[dict[str, object]] = []
    for image, lead in zip(images, leads, strict=True):
        for row in _image_rows(image, layout):
            rows.append({**lead, **row} if frames and lead is not None else row)
    columns = [*(FRAME_COLUMNS if frames else ()), *layout.columns]
    table = pd.DataFrame.from_records(rows, columns=[column.name for column in columns])
    for column in columns:
        table[column.name] = table[column.name].astype(_PANDAS_DTYPES[column.kind])
    return table


def _format_cell(value: object, precision: int) -> object:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.{precision}f}"
    return value


class CsvWriter:
    """Write predictions as CSV rows as they come: the one writer of every table.

    The header is written with the first prediction (whose ``labels`` give the columns unless
    ``expressions`` / ``action_units`` are given), or at :meth:`close` when there was none.
    Use it as a context manager, or call :meth:`close`.

    Args:
        path_or_file: A path (created or overwritten, UTF-8) or an open text file (open it with
            ``newline=""``, as the csv module asks); an open file is not closed.
        expressions: Expression names of the ``expr_<Name>`` columns; see :func:`to_rows`.
        action_units: AU names of the AU columns; see :func:`to_rows`.
        tasks: Task column groups to include; see :func:`table_columns`.
        precision: Number of decimals for floats (>= 0).

    Attributes:
        rows: Rows written so far (not counting the header).
        columns: The header, once written (``None`` before).

    Raises:
        InputError: A bad argument, or see :func:`to_rows`.
    """

    #: Columns written before those of :func:`table_columns` (none here; the video's writer
    #: adds ``frame`` and ``timestamp``), with their values from :meth:`leading_values`.
    leading_columns: tuple[str, ...] = ()

    def __init__(
        self,
        path_or_file: str | os.PathLike[str] | TextIO,
        *,
        expressions: Sequence[str] | None = None,
        action_units: Sequence[str] | None = None,
        tasks: Sequence[str] = TASKS,
        precision: int = 6,
    ) -> None:
        precision = _to_int(precision, "precision")
        if precision < 0:
            raise InputError(f"precision must be >= 0, got {precision}")
        self._precision = precision
        self._tasks = _check_tasks(tasks)
        self._given = (
            None if expressions is None else _check_names(expressions, "expressions"),
            None if action_units is None else _check_names(action_units, "action_units"),
        )
        self._layout: _Layout | None = None
        self.columns: list[str] | None = None
        self.rows = 0
        self._owned: TextIO | None = None
        if isinstance(path_or_file, (str, os.PathLike)):
            self._owned = open(path_or_file, "w", newline="", encoding="utf-8")  # noqa: SIM115
            handle: TextIO = self._owned
        elif isinstance(path_or_file, io.IOBase) or callable(getattr(path_or_file, "write", None)):
            handle = path_or_file
        else:
            raise InputError(
                "path_or_file must be a path or an open text file, got "
                f"{type(path_or_file).__name__}"
            )
        self._writer = csv.writer(handle)

    def leading_values(self, prediction: ImagePrediction) -> dict[str, object]:
        """The values of :attr:`leading_columns` for one prediction."""
        return {}

    def _header(self, first: ImagePrediction | None) -> _Layout:
        if self._layout is None:
            self._layout = _layout(_labels(first, *self._given), self._tasks)
            self.columns = [*self.leading_columns, *self._layout.names]
            self._writer.writerow(self.columns)
        return self._layout

    def add(self, prediction: ImagePrediction) -> int:
        """Write the rows of one prediction (one per face, or one no-face row); their number."""
        if not isinstance(prediction, ImagePrediction):
            raise InputError(
                f"CsvWriter.add takes an ImagePrediction, got {type(prediction).__name__}"
            )
        layout = self._header(prediction)
        columns = self.columns
        assert columns is not None
        leading = self.leading_values(prediction)
        count = 0
        for row in _image_rows(prediction, layout):
            row.update(leading)
            self._writer.writerow([_format_cell(row[c], self._precision) for c in columns])
            count += 1
        self.rows += count
        return count

    def close(self) -> None:
        """Write the header if nothing was added, and close the file if it was opened here."""
        try:
            self._header(None)
        finally:
            if self._owned is not None:
                self._owned.close()
                self._owned = None

    def __enter__(self) -> "CsvWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def write_csv(
    predictions: ImagePrediction | Iterable[ImagePrediction],
    path_or_file: str | os.PathLike[str] | TextIO,
    *,
    expressions: Sequence[str] | None = None,
    action_units: Sequence[str] | None = None,
    tasks: Sequence[str] = TASKS,
    precision: int = 6,
) -> int:
    """Write predictions as a CSV table (header, then :func:`to_rows`' rows).

    Rows are written as they are produced, so a generator of video frames is never held in
    memory at once. Floats are written with ``precision`` decimals, missing values as empty cells.

    Args:
        predictions: One :class:`ImagePrediction` or an iterable of them.
        path_or_file: A path (the file is created or overwritten, UTF-8) or an open text file
            (open it with ``newline=""``, as the csv module asks); an open file is not closed.
        expressions: Expression names for the ``expr_<Name>`` columns; default: the first
            prediction's ``labels`` (the model's names), else the library's.
        action_units: Library AU names for the AU columns; default as for ``expressions``.
        tasks: Task column groups to include; see :func:`table_columns`.
        precision: Number of decimals for floats (>= 0).

    Returns:
        The number of rows written (not counting the header).

    Raises:
        InputError: See :func:`to_rows`; also if ``precision`` is negative.
    """
    images = _iter_images(predictions)
    with CsvWriter(
        path_or_file,
        expressions=expressions,
        action_units=action_units,
        tasks=tasks,
        precision=precision,
    ) as writer:
        for image in images:
            writer.add(image)
    return writer.rows
