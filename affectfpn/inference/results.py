"""Typed results of ``model.predict(...)``, and the per-face fields they are made of.

A prediction is plain, immutable data: every class below is a frozen dataclass whose fields are
checked in ``__post_init__``, so an object that exists is valid. Results never draw or write
themselves; :func:`affectfpn.inference.draw.draw` and the table functions of
:mod:`affectfpn.inference.tables` (:func:`to_rows`, :func:`write_csv`, :class:`CsvWriter`,
:func:`to_pandas`, :func:`table_columns`; also importable from here) are beside them.

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

Per-face fields
---------------
:data:`FACE_FIELDS` declares, once, each output of the model for a face (``va``,
``expression``, ``aus``): the :class:`FaceField` of each says which model output it is read
from and how it is activated, which table columns it gives, how a video smooths it and how it
is serialised. The predictor (its batch step and its results), ``FacePrediction.to_dict`` /
``from_dict``, the tables, the video's ``VideoResult`` and its smoothing all derive their
handling of the fields from it.
"""

import math
import re
import types
from abc import ABC, abstractmethod
from collections.abc import Hashable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, Literal, NamedTuple, TypeVar, overload

import numpy as np

from affectfpn.errors import InputError
from affectfpn.labels import ACTION_UNITS, EXPRESSIONS, TASKS, VA_NAMES

if TYPE_CHECKING:  # the table functions live in tables.py, which imports this module
    import torch

    from affectfpn.inference.tables import CsvWriter, table_columns, to_pandas, to_rows, write_csv

__all__ = [
    "FACE_FIELDS",
    "ActionUnits",
    "Column",
    "CsvWriter",
    "Expression",
    "FaceField",
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
# the per-face fields: each model output of a face, declared once
# --------------------------------------------------------------------------------------------

#: The type of a table column's cells: text, integer or float (an empty cell is ``None``).
ColumnKind = Literal["str", "int", "float"]


class Column(NamedTuple):
    """One table column: its name and the type of its cells (pandas: string, Int64, float64)."""

    name: str
    kind: ColumnKind


_R = TypeVar("_R")


def _lookup(probabilities: Mapping[str, float], name: str, face: str, what: str) -> float:
    """``probabilities[name]``, or an :class:`InputError` saying which label names to pass."""
    try:
        return probabilities[name]
    except KeyError:
        raise InputError(
            f"{face} has no {what} {name!r} (it has {tuple(probabilities)}); pass the model's "
            f"label names, e.g. expressions=model.config.expressions, "
            f"action_units=model.config.action_units"
        ) from None


class FaceField(ABC, Generic[_R]):
    """One output of the model for a face, declared once for every part that handles it.

    :data:`FACE_FIELDS` lists them; each is an attribute of :class:`FacePrediction` (``None``
    when the model lacks the task) whose result type (:attr:`type`) holds a fixed-length
    vector of named numbers. From this one declaration come the predictor's batch step (the
    model output :attr:`output`, turned into rows by :meth:`activate`) and results
    (:meth:`from_model`), ``FacePrediction.to_dict`` / ``from_dict`` (under :attr:`name`), the
    table's columns and cells (:meth:`columns`, :meth:`cells`, in :data:`FACE_FIELDS` order), the
    arrays of a video's ``VideoResult`` (one per field, named :attr:`task`, :meth:`lookup` /
    :meth:`from_numbers`) and smoothing over video frames (:meth:`vector` / :meth:`rebuild`,
    averaged only across faces of equal :meth:`layout`).

    Adding a field is: its result class, a ``FacePrediction`` attribute of that name, a
    subclass of this class in :data:`FACE_FIELDS` and the model output it reads (:attr:`output`);
    a video's ``VideoResult`` then has its array, named :attr:`task`, by itself.
    """

    #: The :class:`FacePrediction` attribute holding the value, and its key in ``to_dict()``.
    name: str
    #: The task of the model that gives it (one of ``TASKS``); ``tasks=`` of the tables selects
    #: by it, and a video's ``VideoResult`` keeps its numbers in the array of this name.
    task: str
    #: The attribute of the model's outputs (``AffectFPN.forward``) that it is read from.
    output: str
    #: The result class, which has ``to_dict()`` and ``from_dict()``.
    result_type: type[_R]

    @abstractmethod
    def names(self, labels: "LabelNames") -> tuple[str, ...]:
        """The names of the field's numbers for a model with these label names, in order."""

    @abstractmethod
    def columns(self, names: tuple[str, ...]) -> list[Column]:
        """The field's table columns, in order, for the numbers ``names``.

        Raises:
            InputError: If the names do not make valid, distinct column names.
        """

    @abstractmethod
    def cells(self, value: _R, names: tuple[str, ...], where: str) -> dict[str, object]:
        """The field's table cells of one face (keys among :meth:`columns`).

        Raises:
            InputError: If ``value`` lacks one of ``names`` (``where`` names the face).
        """

    @abstractmethod
    def value_names(self, value: _R) -> tuple[str, ...]:
        """The names of the numbers ``value`` holds, in its own order."""

    @abstractmethod
    def lookup(self, value: _R, names: tuple[str, ...]) -> list[float]:
        """The numbers of ``value`` in the order of ``names``; ``KeyError`` for a missing name."""

    def vector(self, value: _R) -> list[float]:
        """The numbers of ``value`` in its own order (those smoothing averages)."""
        return self.lookup(value, self.value_names(value))

    def layout(self, value: _R) -> Hashable:
        """What the numbers of ``value`` mean; two values are averaged only if it is equal."""
        return self.value_names(value)

    @abstractmethod
    def from_numbers(self, numbers: np.ndarray, names: tuple[str, ...], threshold: float) -> _R:
        """A checked value from (stored or averaged) numbers in the order of ``names``, brought
        back into range (clipped; probabilities that must sum to 1 renormalised).

        Args:
            numbers: 1-D numbers, one per name.
            names: Their names.
            threshold: The action-unit threshold, for fields that have one (others ignore it).
        """

    def rebuild(self, value: _R, numbers: np.ndarray) -> _R:
        """``value`` with its numbers replaced by ``numbers`` (in its own order)."""
        return self.from_numbers(numbers, self.value_names(value), 0.5)

    @abstractmethod
    def activate(
        self, output: "torch.Tensor", temperature: "float | torch.Tensor"
    ) -> "torch.Tensor":
        """The model's raw output for a batch (``N x len(names)``) as the numbers of the results
        (clamped, softmax or sigmoid), in float32, on the output's device.

        Args:
            output: The output :attr:`output` of the model for ``N`` faces.
            temperature: The model's softmax temperature, for fields that have one (others
                ignore it): one number, or ``N x 1`` per-face temperatures.
        """

    @abstractmethod
    def from_model(self, row: list[float], names: tuple[str, ...], threshold: float) -> _R:
        """The value of one face from the predictor's row of model outputs (already activated:
        clamped, softmax or sigmoid), built without the checks of user input."""

    def to_dict(self, value: _R) -> Any:
        """The JSON-ready form of ``value`` in ``FacePrediction.to_dict()``."""
        return value.to_dict()  # type: ignore[attr-defined]

    def from_dict(self, data: Any) -> _R:
        """Rebuild a value from :meth:`to_dict`'s output."""
        return self.result_type.from_dict(data)  # type: ignore[attr-defined]


class _VaField(FaceField[ValenceArousal]):
    """Valence and arousal: columns ``valence``, ``arousal``."""

    name = "va"
    task = "va"
    output = "va"
    result_type = ValenceArousal

    def names(self, labels: "LabelNames") -> tuple[str, ...]:
        return VA_NAMES

    def columns(self, names: tuple[str, ...]) -> list[Column]:
        return [Column(name, "float") for name in names]

    def cells(self, value: ValenceArousal, names: tuple[str, ...], where: str) -> dict[str, object]:
        return {"valence": value.valence, "arousal": value.arousal}

    def value_names(self, value: ValenceArousal) -> tuple[str, ...]:
        return VA_NAMES

    def lookup(self, value: ValenceArousal, names: tuple[str, ...]) -> list[float]:
        return [float(getattr(value, name)) for name in names]

    def from_numbers(
        self, numbers: np.ndarray, names: tuple[str, ...], threshold: float
    ) -> ValenceArousal:
        valence, arousal = np.clip(numbers, -1.0, 1.0)
        return ValenceArousal(valence=float(valence), arousal=float(arousal))

    def activate(
        self, output: "torch.Tensor", temperature: "float | torch.Tensor"
    ) -> "torch.Tensor":
        return output.float().clamp(-1.0, 1.0)

    def from_model(
        self, row: list[float], names: tuple[str, ...], threshold: float
    ) -> ValenceArousal:
        return _trusted(ValenceArousal, valence=row[0], arousal=row[1])


class _ExpressionField(FaceField[Expression]):
    """Expressions: columns ``expression`` (the label), then ``expr_<Name>`` per expression."""

    name = "expression"
    task = "expression"
    output = "expression"
    result_type = Expression

    def names(self, labels: "LabelNames") -> tuple[str, ...]:
        return labels.expressions

    def columns(self, names: tuple[str, ...]) -> list[Column]:
        return [Column("expression", "str"), *(Column(f"expr_{name}", "float") for name in names)]

    def cells(self, value: Expression, names: tuple[str, ...], where: str) -> dict[str, object]:
        cells: dict[str, object] = {"expression": value.label}
        probabilities = value.probabilities
        for name in names:
            cells[f"expr_{name}"] = _lookup(probabilities, name, where, "expression")
        return cells

    def value_names(self, value: Expression) -> tuple[str, ...]:
        return tuple(value.probabilities)

    def lookup(self, value: Expression, names: tuple[str, ...]) -> list[float]:
        return [value.probabilities[name] for name in names]

    def from_numbers(
        self, numbers: np.ndarray, names: tuple[str, ...], threshold: float
    ) -> Expression:
        probs = np.clip(numbers, 0.0, None)
        total = probs.sum()
        probs = probs / total if total > 0 else np.full(len(names), 1.0 / len(names))
        return Expression.from_probabilities(probs, names)

    def activate(
        self, output: "torch.Tensor", temperature: "float | torch.Tensor"
    ) -> "torch.Tensor":
        return (output.float() / temperature).softmax(1)

    def from_model(self, row: list[float], names: tuple[str, ...], threshold: float) -> Expression:
        return Expression._from_model(row, names)


class _AuField(FaceField[ActionUnits]):
    """Action units: columns ``AU<NN>_p`` for every AU, then ``AU<NN>_c`` for every AU."""

    name = "aus"
    task = "au"
    output = "au"
    result_type = ActionUnits

    def names(self, labels: "LabelNames") -> tuple[str, ...]:
        return labels.action_units

    def columns(self, names: tuple[str, ...]) -> list[Column]:
        stems = [openface_au_name(name) for name in names]
        if len(set(stems)) != len(stems):
            raise InputError(f"action_units {names} map to repeated columns {stems}")
        return [
            *(Column(f"{stem}_p", "float") for stem in stems),
            *(Column(f"{stem}_c", "int") for stem in stems),
        ]

    def cells(self, value: ActionUnits, names: tuple[str, ...], where: str) -> dict[str, object]:
        cells: dict[str, object] = {}
        for name in names:
            stem = openface_au_name(name)
            p = _lookup(value.probabilities, name, where, "action unit")
            cells[f"{stem}_p"] = p
            cells[f"{stem}_c"] = int(p >= value.threshold)
        return cells

    def value_names(self, value: ActionUnits) -> tuple[str, ...]:
        return tuple(value.probabilities)

    def lookup(self, value: ActionUnits, names: tuple[str, ...]) -> list[float]:
        return [value.probabilities[name] for name in names]

    def layout(self, value: ActionUnits) -> Hashable:
        return (tuple(value.probabilities), value.threshold)

    def from_numbers(
        self, numbers: np.ndarray, names: tuple[str, ...], threshold: float
    ) -> ActionUnits:
        return ActionUnits.from_probabilities(np.clip(numbers, 0.0, 1.0), names, threshold)

    def rebuild(self, value: ActionUnits, numbers: np.ndarray) -> ActionUnits:
        return self.from_numbers(numbers, tuple(value.probabilities), value.threshold)

    def activate(
        self, output: "torch.Tensor", temperature: "float | torch.Tensor"
    ) -> "torch.Tensor":
        return output.float().sigmoid().clamp(0.0, 1.0)

    def from_model(self, row: list[float], names: tuple[str, ...], threshold: float) -> ActionUnits:
        return ActionUnits._from_model(row, names, threshold)


#: The per-face outputs of the model, in table-column (and ``TASKS``) order: the one place that
#: says how each is read, tabled, smoothed and serialised (see :class:`FaceField`).
FACE_FIELDS: tuple[FaceField[Any], ...] = (_VaField(), _ExpressionField(), _AuField())


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

        for spec in FACE_FIELDS:
            value = getattr(self, spec.name)
            if value is not None and not isinstance(value, spec.result_type):
                raise InputError(
                    f"{spec.name} must be a {spec.result_type.__name__} or None, "
                    f"got {type(value).__name__}"
                )

    @property
    def tasks(self) -> tuple[str, ...]:
        """The tasks this face has results for, in ``TASKS`` order."""
        return tuple(spec.task for spec in FACE_FIELDS if getattr(self, spec.name) is not None)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict; tuples become lists and missing parts stay ``None``."""
        out: dict[str, Any] = {
            "face_id": self.face_id,
            "box": None if self.box is None else list(self.box),
            "score": self.score,
            "landmarks": None if self.landmarks is None else [list(p) for p in self.landmarks],
        }
        for spec in FACE_FIELDS:
            value = getattr(self, spec.name)
            out[spec.name] = None if value is None else spec.to_dict(value)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "FacePrediction":
        """Rebuild from the output of :meth:`to_dict` (absent keys are ``None``)."""
        data = _require_keys(data, ("face_id",), cls.__name__)
        values = {}
        for spec in FACE_FIELDS:
            value = data.get(spec.name)
            values[spec.name] = None if value is None else spec.from_dict(value)
        return cls(
            face_id=data["face_id"],
            box=data.get("box"),
            score=data.get("score"),
            landmarks=data.get("landmarks"),
            **values,
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
        """Return this image's table rows; see :func:`~affectfpn.inference.tables.to_rows`."""
        from affectfpn.inference.tables import to_rows

        return to_rows(self, expressions=expressions, action_units=action_units, tasks=tasks)


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


#: Names that moved to :mod:`affectfpn.inference.tables`, still importable from here.
_TABLE_NAMES = frozenset({"CsvWriter", "table_columns", "to_pandas", "to_rows", "write_csv"})


def __getattr__(name: str) -> Any:
    # The table functions import this module, so they are looked up on first use rather than
    # imported here (which would be an import circle).
    if name in _TABLE_NAMES:
        from affectfpn.inference import tables

        return getattr(tables, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
