"""Typed results of ``model.predict(...)`` and their table (CSV) form.

A prediction is plain, immutable data: every class below is a frozen dataclass whose fields are
checked in ``__post_init__``, so an object that exists is valid. Results never draw or write
themselves; :func:`affectfpn.inference.draw.draw`, :func:`to_rows` and :func:`write_csv` are
functions beside them.

* :class:`ValenceArousal` -- valence and arousal, each a finite float in [-1, 1].
* :class:`Expression` -- the predicted expression label and the probability of every expression
  (non-negative, summing to 1); the label is the most probable one.
* :class:`ActionUnits` -- the probability that each action unit (AU) is present, in [0, 1] (an
  occurrence probability, not an intensity), and the AUs called active (probability >= threshold).
* :class:`FacePrediction` -- one face: where it is and what the model says about it. A task the
  model does not have gives ``None``.
* :class:`ImagePrediction` -- one image (or video frame) and its faces, in order; ``len()``,
  indexing and iteration go over the faces. An image with no face has ``faces == ()``. Its
  ``labels`` (:class:`LabelNames`) name the expressions and action units of the model that made
  it, so that tables get the model's columns even for an image without faces.

Every class has ``to_dict()`` (only builtins: ``json.dumps`` accepts it) and ``from_dict()``
(its inverse). Results can be pickled and compared with ``==``.

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
"""

import csv
import io
import math
import os
import re
import types
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO, TypeVar, overload

import numpy as np

from affectfpn.errors import InputError
from affectfpn.labels import ACTION_UNITS, EXPRESSIONS, TASKS

__all__ = [
    "ActionUnits",
    "CsvWriter",
    "Expression",
    "FacePrediction",
    "ImagePrediction",
    "LabelNames",
    "ValenceArousal",
    "openface_au_name",
    "table_columns",
    "to_pandas",
    "to_rows",
    "write_csv",
]

#: Allowed difference between 1 and the sum of expression probabilities.
_SUM_TOLERANCE = 1e-4

_AU_NAME = re.compile(r"^AU(\d+)$")

#: Columns present in every table, in order.
_BASE_COLUMNS: tuple[str, ...] = (
    "source",
    "face_id",
    "success",
    "confidence",
    "x1",
    "y1",
    "x2",
    "y2",
)


# --------------------------------------------------------------------------------------------
# validation helpers
# --------------------------------------------------------------------------------------------


def _to_float(value: object, what: str) -> float:
    """Return ``value`` as a finite builtin float, or raise :class:`InputError` naming ``what``."""
    if isinstance(value, (bool, str, bytes)):
        raise InputError(f"{what} must be a number, got {value!r}")
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise InputError(f"{what} must be a number, got {value!r}") from None
    if not math.isfinite(number):
        raise InputError(f"{what} must be finite, got {number!r}")
    return number


def _to_int(value: object, what: str) -> int:
    """Return ``value`` as a builtin int (bools and floats refused)."""
    if isinstance(value, bool):
        raise InputError(f"{what} must be an integer, got {value!r}")
    try:
        return int(value.__index__())  # type: ignore[attr-defined]
    except (AttributeError, TypeError):
        raise InputError(f"{what} must be an integer, got {value!r}") from None


def _to_probability_dict(
    probabilities: object, what: str, *, upper_bound: bool
) -> dict[str, float]:
    """Copy a name -> probability mapping into a dict of builtin floats, checking each value."""
    if not isinstance(probabilities, Mapping):
        raise InputError(
            f"{what} must be a mapping from name to probability, got {type(probabilities).__name__}"
        )
    if len(probabilities) == 0:
        raise InputError(f"{what} is empty: give at least one name with its probability")
    out: dict[str, float] = {}
    for name, value in probabilities.items():
        if not isinstance(name, str) or not name:
            raise InputError(f"{what} has a key {name!r}; keys must be non-empty strings")
        p = _to_float(value, f"{what}[{name!r}]")
        if p < 0.0 or (upper_bound and p > 1.0):
            bounds = "[0, 1]" if upper_bound else ">= 0"
            raise InputError(
                f"{what}[{name!r}] = {p!r} is not a probability ({bounds}); "
                "pass probabilities (sigmoid/softmax of the logits), not logits"
            )
        out[name] = p
    return out


def _probabilities_from_array(
    probs: Sequence[float] | np.ndarray, names: Sequence[str], what: str
) -> dict[str, float]:
    """Pair a 1-D array of probabilities with its names (same length, names unique)."""
    if isinstance(names, str):
        raise InputError(f"{what}: names must be a sequence of strings, not one string")
    names = tuple(names)
    try:
        array = np.asarray(probs, dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError(f"{what}: probabilities must be numbers, got {probs!r}") from None
    if array.ndim != 1:
        raise InputError(
            f"{what}: probabilities must be 1-D (one value per name), got shape {array.shape}; "
            "pass one face's row, not a batch"
        )
    if array.shape[0] != len(names):
        raise InputError(
            f"{what}: {array.shape[0]} probabilities for {len(names)} names {names}; "
            "the model's label names must match its outputs"
        )
    if len(set(names)) != len(names):
        raise InputError(f"{what}: names must be unique, got {names}")
    return {str(name): float(p) for name, p in zip(names, array.tolist(), strict=True)}


_T = TypeVar("_T")


def _trusted(cls: type[_T], **fields: Any) -> _T:
    """An instance of a frozen result class from values already in its normal form.

    For the predictor's own outputs only (softmax rows, sigmoid rows, boxes of floats): the
    checks of ``__post_init__`` guard what users build, and cost more than the model's forward
    pass per face for a small model. The fields must be exactly what ``__post_init__`` stores.
    """
    obj = object.__new__(cls)
    obj.__dict__.update(fields)  # what object.__setattr__ per field does, in one call
    return obj


def _require_keys(data: object, keys: Iterable[str], what: str) -> Mapping[str, Any]:
    """Check that ``data`` is a mapping holding ``keys``; used by the ``from_dict`` methods."""
    if not isinstance(data, Mapping):
        raise InputError(f"{what}.from_dict needs a mapping, got {type(data).__name__}")
    missing = [key for key in keys if key not in data]
    if missing:
        raise InputError(f"{what}.from_dict: missing key(s) {missing}; got {sorted(data)}")
    return data


def openface_au_name(name: str) -> str:
    """Map a library AU name to OpenFace's zero-padded form, used for table columns.

    Args:
        name: An action unit name such as ``"AU1"`` or ``"AU26"`` (an already padded name such as
            ``"AU01"`` is returned unchanged).

    Returns:
        The name with at least two digits: ``"AU1"`` -> ``"AU01"``, ``"AU12"`` -> ``"AU12"``.

    Raises:
        InputError: If ``name`` is not ``"AU"`` followed by digits.
    """
    match = _AU_NAME.match(name) if isinstance(name, str) else None
    if match is None:
        raise InputError(
            f"action unit name {name!r} is not of the form 'AU<number>' (e.g. 'AU1'); "
            "rename the model's action units to get OpenFace-style table columns"
        )
    return f"AU{int(match.group(1)):02d}"


# --------------------------------------------------------------------------------------------
# per-task results
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ValenceArousal:
    """Valence and arousal of a face, each in [-1, 1].

    Valence runs from unpleasant (-1) to pleasant (+1), arousal from calm (-1) to excited (+1).
    Iterating gives ``(valence, arousal)``, so ``v, a = va`` works.

    Attributes:
        valence: Valence, a finite float in [-1, 1].
        arousal: Arousal, a finite float in [-1, 1].

    Raises:
        InputError: If a value is not a finite number in [-1, 1].
    """

    valence: float
    arousal: float

    def __post_init__(self) -> None:
        for name in ("valence", "arousal"):
            value = _to_float(getattr(self, name), name)
            if not -1.0 <= value <= 1.0:
                raise InputError(
                    f"{name} = {value!r} is outside [-1, 1]; clip the model output or check "
                    "that it went through tanh"
                )
            object.__setattr__(self, name, value)

    def as_tuple(self) -> tuple[float, float]:
        """Return ``(valence, arousal)``."""
        return (self.valence, self.arousal)

    def __iter__(self) -> Iterator[float]:
        return iter(self.as_tuple())

    def to_dict(self) -> dict[str, float]:
        """Return ``{"valence": ..., "arousal": ...}``."""
        return {"valence": self.valence, "arousal": self.arousal}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ValenceArousal":
        """Rebuild from the output of :meth:`to_dict`."""
        data = _require_keys(data, ("valence", "arousal"), cls.__name__)
        return cls(valence=data["valence"], arousal=data["arousal"])


@dataclass(frozen=True)
class Expression:
    """The predicted expression of a face and the probability of every expression.

    Attributes:
        label: The predicted expression: the name with the highest probability.
        probabilities: Read-only mapping from expression name to probability, in the model's
            label order. Values are non-negative and sum to 1 (within 1e-4).

    Raises:
        InputError: If the probabilities are negative, do not sum to 1, or ``label`` is not among
            them or is not the most probable name.
    """

    label: str
    probabilities: Mapping[str, float]

    def __post_init__(self) -> None:
        probabilities = _to_probability_dict(
            self.probabilities, "expression probabilities", upper_bound=True
        )
        total = math.fsum(probabilities.values())
        if abs(total - 1.0) > _SUM_TOLERANCE:
            raise InputError(
                f"expression probabilities sum to {total:.6g}, not 1; apply softmax to the "
                "logits (or renormalise) before building an Expression"
            )
        if not isinstance(self.label, str) or self.label not in probabilities:
            raise InputError(
                f"expression label {self.label!r} is not one of the names "
                f"{tuple(probabilities)}; give a label that has a probability"
            )
        best = max(probabilities.values())
        if probabilities[self.label] < best:
            argmax = max(probabilities, key=probabilities.__getitem__)
            raise InputError(
                f"expression label {self.label!r} (p={probabilities[self.label]:.4g}) is not the "
                f"most probable name {argmax!r} (p={best:.4g}); use "
                "Expression.from_probabilities to pick the label"
            )
        object.__setattr__(self, "probabilities", types.MappingProxyType(probabilities))

    def __hash__(self) -> int:
        return hash((self.label, tuple(self.probabilities.items())))

    def __str__(self) -> str:
        """The label and its probability, e.g. ``Happiness 0.94``."""
        return f"{self.label} {self.score:.2f}"

    def __reduce__(self) -> tuple[Any, ...]:
        # MappingProxyType cannot be pickled: rebuild from a plain dict.
        return (type(self), (self.label, dict(self.probabilities)))

    @property
    def score(self) -> float:
        """Probability of :attr:`label`."""
        return self.probabilities[self.label]

    @property
    def names(self) -> tuple[str, ...]:
        """Expression names in label order."""
        return tuple(self.probabilities)

    def top(self, k: int = 1) -> list[tuple[str, float]]:
        """Return the ``k`` most probable ``(name, probability)`` pairs, most probable first.

        Ties keep label order. ``k`` larger than the number of expressions returns them all.

        Raises:
            InputError: If ``k`` is not a positive integer.
        """
        k = _to_int(k, "k")
        if k < 1:
            raise InputError(f"k must be >= 1, got {k}")
        ranked = sorted(self.probabilities.items(), key=lambda item: -item[1])
        return ranked[:k]

    def to_dict(self) -> dict[str, Any]:
        """Return ``{"label": str, "probabilities": {name: float}}`` (label order)."""
        return {"label": self.label, "probabilities": dict(self.probabilities)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Expression":
        """Rebuild from the output of :meth:`to_dict`."""
        data = _require_keys(data, ("label", "probabilities"), cls.__name__)
        return cls(label=data["label"], probabilities=data["probabilities"])

    @classmethod
    def from_probabilities(
        cls, probs: Sequence[float] | np.ndarray, names: Sequence[str]
    ) -> "Expression":
        """Build from one face's probability vector and the matching names.

        Args:
            probs: 1-D probabilities (softmax output), one per name.
            names: Expression names in the same order, e.g. ``EXPRESSIONS``.

        Returns:
            An :class:`Expression` whose label is the arg-max (the first one on ties).

        Raises:
            InputError: If the lengths differ, names repeat, or ``probs`` is not a distribution.
        """
        probabilities = _probabilities_from_array(probs, names, "Expression.from_probabilities")
        label = max(probabilities, key=probabilities.__getitem__)
        return cls(label=label, probabilities=probabilities)

    @classmethod
    def _from_model(cls, probs: list[float], names: tuple[str, ...]) -> "Expression":
        """:meth:`from_probabilities` without the checks, for a softmax row of the model."""
        probabilities = dict(zip(names, probs, strict=True))
        label = max(probabilities, key=probabilities.__getitem__)
        return _trusted(cls, label=label, probabilities=types.MappingProxyType(probabilities))


@dataclass(frozen=True)
class ActionUnits:
    """Occurrence probability of each action unit, and the ones called active.

    Attributes:
        probabilities: Read-only mapping from AU name (``"AU1"``, ...) to the probability in
            [0, 1] that the AU is present, in the model's AU order. These are probabilities of
            presence, not intensities.
        threshold: An AU is active when its probability is >= ``threshold`` (in [0, 1]).
        active: Names of the active AUs, in AU order (computed, not passed).

    Raises:
        InputError: If a probability or the threshold is outside [0, 1] or not finite.
    """

    probabilities: Mapping[str, float]
    threshold: float = 0.5
    active: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        probabilities = _to_probability_dict(
            self.probabilities, "action unit probabilities", upper_bound=True
        )
        threshold = _to_float(self.threshold, "threshold")
        if not 0.0 <= threshold <= 1.0:
            raise InputError(f"threshold = {threshold!r} must be in [0, 1]")
        object.__setattr__(self, "probabilities", types.MappingProxyType(probabilities))
        object.__setattr__(self, "threshold", threshold)
        active = tuple(name for name, p in probabilities.items() if p >= threshold)
        object.__setattr__(self, "active", active)

    def __hash__(self) -> int:
        return hash((tuple(self.probabilities.items()), self.threshold))

    def __str__(self) -> str:
        """The active AUs, e.g. ``AU12 AU26``, or ``no active AU``."""
        return " ".join(self.active) or "no active AU"

    def __reduce__(self) -> tuple[Any, ...]:
        # MappingProxyType cannot be pickled: rebuild from a plain dict.
        return (type(self), (dict(self.probabilities), self.threshold))

    @property
    def names(self) -> tuple[str, ...]:
        """AU names in model order."""
        return tuple(self.probabilities)

    def to_dict(self) -> dict[str, Any]:
        """Return ``{"probabilities": {name: float}, "threshold": float, "active": [names]}``."""
        return {
            "probabilities": dict(self.probabilities),
            "threshold": self.threshold,
            "active": list(self.active),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ActionUnits":
        """Rebuild from the output of :meth:`to_dict` (``active`` is recomputed)."""
        data = _require_keys(data, ("probabilities",), cls.__name__)
        return cls(probabilities=data["probabilities"], threshold=data.get("threshold", 0.5))

    @classmethod
    def from_probabilities(
        cls,
        probs: Sequence[float] | np.ndarray,
        names: Sequence[str],
        threshold: float = 0.5,
    ) -> "ActionUnits":
        """Build from one face's probability vector (sigmoid output) and the matching AU names.

        Raises:
            InputError: If the lengths differ, names repeat, or a value is outside [0, 1].
        """
        probabilities = _probabilities_from_array(probs, names, "ActionUnits.from_probabilities")
        return cls(probabilities=probabilities, threshold=threshold)

    @classmethod
    def _from_model(
        cls, probs: list[float], names: tuple[str, ...], threshold: float
    ) -> "ActionUnits":
        """:meth:`from_probabilities` without the checks, for a sigmoid row of the model."""
        probabilities = dict(zip(names, probs, strict=True))
        return _trusted(
            cls,
            probabilities=types.MappingProxyType(probabilities),
            threshold=float(threshold),
            active=tuple(name for name, p in probabilities.items() if p >= threshold),
        )


# --------------------------------------------------------------------------------------------
# faces and images
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class FacePrediction:
    """Everything predicted for one face. Build with keyword arguments.

    Attributes:
        box: ``(x1, y1, x2, y2)`` in pixels of the source image (x2 >= x1, y2 >= y1). A detected
            box may reach past the image border. In crop mode (no detector) the box is the whole
            image, ``(0, 0, width, height)``.
        score: Face detection score (usually in [0, 1]); ``None`` in crop mode.
        landmarks: Facial landmarks as ``((x, y), ...)`` in source-image pixels: YuNet gives 5
            points (right eye, left eye, nose tip, right and left mouth corner, as seen by the
            subject); ``None`` when the detector gives none (crop mode, Haar fallback).
        va: Valence and arousal, or ``None`` if the model has no "va" task.
        expression: Expression, or ``None`` if the model has no "expression" task.
        aus: Action units, or ``None`` if the model has no "au" task.
        face_id: Index of the face in the image (0, 1, ... in detection order), or a track id that
            persists across the frames of a video. Non-negative.

    Raises:
        InputError: If a field has the wrong type or an invalid value.
    """

    box: tuple[float, float, float, float] | None = None
    score: float | None = None
    landmarks: tuple[tuple[float, float], ...] | None = None
    va: ValenceArousal | None = None
    expression: Expression | None = None
    aus: ActionUnits | None = None
    face_id: int = 0

    def __post_init__(self) -> None:
        face_id = _to_int(self.face_id, "face_id")
        if face_id < 0:
            raise InputError(f"face_id must be >= 0, got {face_id} (-1 is kept for no-face rows)")
        object.__setattr__(self, "face_id", face_id)

        if self.box is not None:
            coords = _as_float_tuple(self.box, "box")
            if len(coords) != 4:
                raise InputError(f"box must be (x1, y1, x2, y2), got {len(coords)} values")
            x1, y1, x2, y2 = coords
            if x2 < x1 or y2 < y1:
                raise InputError(
                    f"box {coords} has x2 < x1 or y2 < y1; give corners as (x1, y1, x2, y2), "
                    "not (x, y, width, height)"
                )
            object.__setattr__(self, "box", (x1, y1, x2, y2))

        if self.score is not None:
            object.__setattr__(self, "score", _to_float(self.score, "score"))

        if self.landmarks is not None:
            if isinstance(self.landmarks, (str, bytes)) or not isinstance(
                self.landmarks, (Sequence, np.ndarray)
            ):
                raise InputError(f"landmarks must be a sequence of (x, y), got {self.landmarks!r}")
            points = []
            for i, point in enumerate(self.landmarks):
                xy = _as_float_tuple(point, f"landmarks[{i}]")
                if len(xy) != 2:
                    raise InputError(f"landmarks[{i}] must be (x, y), got {len(xy)} values")
                points.append((xy[0], xy[1]))
            if not points:
                raise InputError("landmarks is empty; pass None when there are no landmarks")
            object.__setattr__(self, "landmarks", tuple(points))

        for name, kind in (
            ("va", ValenceArousal),
            ("expression", Expression),
            ("aus", ActionUnits),
        ):
            value = getattr(self, name)
            if value is not None and not isinstance(value, kind):
                raise InputError(
                    f"{name} must be a {kind.__name__} or None, got {type(value).__name__}"
                )

    @property
    def tasks(self) -> tuple[str, ...]:
        """The tasks this face has results for, in ``TASKS`` order."""
        present = {"va": self.va, "expression": self.expression, "au": self.aus}
        return tuple(task for task in TASKS if present[task] is not None)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict; tuples become lists and missing parts stay ``None``."""
        return {
            "face_id": self.face_id,
            "box": None if self.box is None else list(self.box),
            "score": self.score,
            "landmarks": None if self.landmarks is None else [list(p) for p in self.landmarks],
            "va": None if self.va is None else self.va.to_dict(),
            "expression": None if self.expression is None else self.expression.to_dict(),
            "aus": None if self.aus is None else self.aus.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "FacePrediction":
        """Rebuild from the output of :meth:`to_dict` (absent keys are ``None``)."""
        data = _require_keys(data, ("face_id",), cls.__name__)
        va, expression, aus = data.get("va"), data.get("expression"), data.get("aus")
        return cls(
            face_id=data["face_id"],
            box=data.get("box"),
            score=data.get("score"),
            landmarks=data.get("landmarks"),
            va=None if va is None else ValenceArousal.from_dict(va),
            expression=None if expression is None else Expression.from_dict(expression),
            aus=None if aus is None else ActionUnits.from_dict(aus),
        )


def _as_float_tuple(values: object, what: str) -> tuple[float, ...]:
    """Convert a short sequence or array of numbers to a tuple of finite builtin floats."""
    if isinstance(values, np.ndarray):
        values = values.reshape(-1).tolist()
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise InputError(f"{what} must be a sequence of numbers, got {values!r}")
    return tuple(_to_float(v, f"{what}[{i}]") for i, v in enumerate(values))


@dataclass(frozen=True)
class LabelNames:
    """The expression and action-unit names of a model, in the order of its outputs.

    Every :class:`ImagePrediction` of a model carries them (``labels``), so that tables and
    files get the model's columns without being told (:func:`write_csv`, :class:`CsvWriter`).

    Attributes:
        expressions: Expression names (``config.expressions``).
        action_units: Library AU names, ``"AU1"``, ... (``config.action_units``).
    """

    expressions: tuple[str, ...] = EXPRESSIONS
    action_units: tuple[str, ...] = ACTION_UNITS

    def __post_init__(self) -> None:
        object.__setattr__(self, "expressions", _check_names(self.expressions, "expressions"))
        object.__setattr__(self, "action_units", _check_names(self.action_units, "action_units"))


@dataclass(frozen=True)
class ImagePrediction:
    """The faces found in one image (or video frame), and what was predicted for each.

    ``len(pred)`` is the number of faces, ``pred[i]`` the i-th face and ``for face in pred``
    iterates over them. Note that an image without faces is falsy (``len() == 0``).

    Attributes:
        source: Where the image came from: a file path, ``"video.mp4#frame=12"``, or a
            placeholder such as ``"<array>"`` for in-memory input.
        width: Image width in pixels (> 0).
        height: Image height in pixels (> 0).
        faces: The faces, in detection order (or track order in video); face ids are unique.
        labels: The label names of the model that made the prediction (set by the
            predictor), or ``None`` (built by hand, or read back with :meth:`from_dict`):
            tables then use the library's names. Not part of ``==`` nor of :meth:`to_dict`.

    Raises:
        InputError: If a field has the wrong type, a size is not positive, or face ids repeat.
    """

    source: str
    width: int
    height: int
    faces: tuple[FacePrediction, ...] = ()
    labels: LabelNames | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.source, str):
            raise InputError(
                f"source must be a string, got {type(self.source).__name__}; use str(path)"
            )
        for name in ("width", "height"):
            value = _to_int(getattr(self, name), name)
            if value <= 0:
                raise InputError(f"{name} must be > 0, got {value}")
            object.__setattr__(self, name, value)
        if isinstance(self.faces, FacePrediction) or not isinstance(
            self.faces, (Sequence, Iterator)
        ):
            raise InputError(
                f"faces must be a sequence of FacePrediction, got {type(self.faces).__name__}"
            )
        faces = tuple(self.faces)
        for i, face in enumerate(faces):
            if not isinstance(face, FacePrediction):
                raise InputError(f"faces[{i}] must be a FacePrediction, got {type(face).__name__}")
        ids = [face.face_id for face in faces]
        if len(set(ids)) != len(ids):
            raise InputError(f"face ids must be unique within an image, got {ids}")
        object.__setattr__(self, "faces", faces)
        if self.labels is not None and not isinstance(self.labels, LabelNames):
            raise InputError(
                f"labels must be a LabelNames or None, got {type(self.labels).__name__}"
            )

    def __len__(self) -> int:
        return len(self.faces)

    @overload
    def __getitem__(self, index: int) -> FacePrediction: ...

    @overload
    def __getitem__(self, index: slice) -> tuple[FacePrediction, ...]: ...

    def __getitem__(self, index: int | slice) -> FacePrediction | tuple[FacePrediction, ...]:
        return self.faces[index]

    def __iter__(self) -> Iterator[FacePrediction]:
        return iter(self.faces)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict: ``source``, ``width``, ``height`` and ``faces`` (a list)."""
        return {
            "source": self.source,
            "width": self.width,
            "height": self.height,
            "faces": [face.to_dict() for face in self.faces],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ImagePrediction":
        """Rebuild from the output of :meth:`to_dict`."""
        data = _require_keys(data, ("source", "width", "height"), cls.__name__)
        faces = data.get("faces") or []
        return cls(
            source=data["source"],
            width=data["width"],
            height=data["height"],
            faces=tuple(FacePrediction.from_dict(face) for face in faces),
        )

    def to_rows(
        self,
        *,
        expressions: Sequence[str] | None = None,
        action_units: Sequence[str] | None = None,
        tasks: Sequence[str] = TASKS,
    ) -> list[dict[str, object]]:
        """Return this image's table rows; see :func:`to_rows`."""
        return to_rows(self, expressions=expressions, action_units=action_units, tasks=tasks)


# --------------------------------------------------------------------------------------------
# table form
# --------------------------------------------------------------------------------------------


def _check_names(names: Sequence[str], what: str) -> tuple[str, ...]:
    if isinstance(names, str):
        raise InputError(f"{what} must be a sequence of names, not one string {names!r}")
    out = tuple(names)
    for name in out:
        if not isinstance(name, str) or not name:
            raise InputError(f"{what} must hold non-empty strings, got {name!r}")
    if len(set(out)) != len(out):
        raise InputError(f"{what} has repeated names: {out}")
    return out


def _check_tasks(tasks: Sequence[str]) -> tuple[str, ...]:
    chosen = _check_names(tasks, "tasks")
    unknown = [task for task in chosen if task not in TASKS]
    if unknown:
        raise InputError(f"unknown task(s) {unknown}; tasks must be among {TASKS}")
    return chosen


#: The library's own names, for predictions that carry none.
_LIBRARY_LABELS = LabelNames()


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
    expressions = _check_names(expressions, "expressions")
    action_units = _check_names(action_units, "action_units")
    columns = list(_BASE_COLUMNS)
    if "va" in chosen:
        columns += ["valence", "arousal"]
    if "expression" in chosen:
        columns.append("expression")
        columns += [f"expr_{name}" for name in expressions]
    if "au" in chosen:
        stems = [openface_au_name(name) for name in action_units]
        if len(set(stems)) != len(stems):
            raise InputError(f"action_units {action_units} map to repeated columns {stems}")
        columns += [f"{stem}_p" for stem in stems]
        columns += [f"{stem}_c" for stem in stems]
    if len(set(columns)) != len(columns):
        raise InputError(f"expression names {expressions} give repeated columns: {columns}")
    return columns


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


def _lookup(probabilities: Mapping[str, float], name: str, face: str, what: str) -> float:
    try:
        return probabilities[name]
    except KeyError:
        raise InputError(
            f"{face} has no {what} {name!r} (it has {tuple(probabilities)}); pass the model's "
            f"label names, e.g. expressions=model.config.expressions, "
            f"action_units=model.config.action_units"
        ) from None


def _image_rows(
    pred: ImagePrediction,
    columns: Sequence[str],
    expressions: tuple[str, ...],
    action_units: tuple[str, ...],
    tasks: tuple[str, ...],
) -> Iterator[dict[str, object]]:
    """Yield the rows of one image (one per face, or one no-face row)."""
    empty: dict[str, object] = dict.fromkeys(columns)
    if not pred.faces:
        row = dict(empty)
        row.update(source=pred.source, face_id=-1, success=0)
        yield row
        return
    stems = [openface_au_name(name) for name in action_units] if "au" in tasks else []
    for face in pred.faces:
        where = f"face {face.face_id} of {pred.source!r}"
        row = dict(empty)
        row.update(source=pred.source, face_id=face.face_id, success=1, confidence=face.score)
        if face.box is not None:
            row.update(zip(("x1", "y1", "x2", "y2"), face.box, strict=True))
        if "va" in tasks and face.va is not None:
            row.update(valence=face.va.valence, arousal=face.va.arousal)
        if "expression" in tasks and face.expression is not None:
            probabilities = face.expression.probabilities
            row["expression"] = face.expression.label
            for name in expressions:
                row[f"expr_{name}"] = _lookup(probabilities, name, where, "expression")
        if "au" in tasks and face.aus is not None:
            aus = face.aus
            for name, stem in zip(action_units, stems, strict=True):
                p = _lookup(aus.probabilities, name, where, "action unit")
                row[f"{stem}_p"] = p
                row[f"{stem}_c"] = int(p >= aus.threshold)
        yield row


def _names(
    first: ImagePrediction | None,
    expressions: Sequence[str] | None,
    action_units: Sequence[str] | None,
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The label names of a table: those given, else the first prediction's, else the library's."""
    labels = _LIBRARY_LABELS
    if first is not None and first.labels is not None:
        labels = first.labels
    return (
        labels.expressions if expressions is None else _check_names(expressions, "expressions"),
        labels.action_units if action_units is None else _check_names(action_units, "action_units"),
    )


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
    expr_names, au_names = _names(images[0] if images else None, expressions, action_units)
    columns = table_columns(expr_names, au_names, tasks)
    chosen = _check_tasks(tasks)
    return [
        row for image in images for row in _image_rows(image, columns, expr_names, au_names, chosen)
    ]


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
    expr_names, au_names = _names(images[0] if images else None, expressions, action_units)
    columns = table_columns(expr_names, au_names, tasks)
    chosen = _check_tasks(tasks)
    frames = bool(images) and all(
        isinstance(getattr(image, "index", None), int)
        and isinstance(getattr(image, "timestamp", None), float | int)
        for image in images
    )
    rows: list[dict[str, object]] = []
    for image in images:
        lead = (
            {"frame": image.index, "timestamp": float(image.timestamp)}  # type: ignore[attr-defined]
            if frames
            else {}
        )
        for row in _image_rows(image, columns, expr_names, au_names, chosen):
            rows.append({**lead, **row})
    names = [*(["frame", "timestamp"] if frames else []), *columns]
    table = pd.DataFrame.from_records(rows, columns=names)
    for name in names:
        if name in ("frame", "face_id", "success") or (
            name.startswith("AU") and name.endswith("_c")
        ):
            table[name] = table[name].astype("Int64")
        elif name in ("source", "expression"):
            table[name] = table[name].astype("string")
        else:
            table[name] = table[name].astype("float64")
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
        self._names: tuple[tuple[str, ...], tuple[str, ...]] | None = None
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

    def _header(self, first: ImagePrediction | None) -> list[str]:
        if self.columns is None:
            self._names = _names(first, *self._given)
            self.columns = [*self.leading_columns, *table_columns(*self._names, self._tasks)]
            self._writer.writerow(self.columns)
        return self.columns

    def add(self, prediction: ImagePrediction) -> int:
        """Write the rows of one prediction (one per face, or one no-face row); their number."""
        if not isinstance(prediction, ImagePrediction):
            raise InputError(
                f"CsvWriter.add takes an ImagePrediction, got {type(prediction).__name__}"
            )
        columns = self._header(prediction)
        assert self._names is not None
        leading = self.leading_values(prediction)
        count = 0
        table = columns[len(self.leading_columns) :]
        for row in _image_rows(prediction, table, *self._names, self._tasks):
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
