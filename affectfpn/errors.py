"""Exceptions raised by affectfpn.

Every error a user can act on is an :class:`AffectFPNError`; the message names the input at fault
and says how to fix it.

An error about one parameter says which (:attr:`AffectFPNError.option`, its Python name), and a
fix that sets a parameter is a :class:`Hint`: the message names the Python parameters, and a
front end that sets them otherwise (the command line's flags) words the same error its own way
from these fields, without parsing the message.
"""

import enum
from collections.abc import Mapping, Sequence
from typing import NamedTuple


class _Unset(enum.Enum):
    UNSET = "unset"


#: "No value given" for :attr:`AffectFPNError.value` and :attr:`Hint.value`.
UNSET = _Unset.UNSET


class Hint(NamedTuple):
    """A fix that sets a parameter: ``pass <option>=<value> <text>`` in a message.

    Attributes:
        option: The Python parameter to set, e.g. ``"recursive"``.
        value: The value to give it, or :data:`UNSET` (the message then says ``option=``).
        text: What the fix does or what else helps, after the parameter (may be empty).
    """

    option: str
    value: object = UNSET
    text: str = ""

    def __str__(self) -> str:
        setting = f"{self.option}=" if self.value is UNSET else f"{self.option}={self.value!r}"
        return f"pass {setting} {self.text}".rstrip()


class AffectFPNError(Exception):
    """Base class of every error raised on purpose by affectfpn.

    Args:
        message: What is wrong. With ``option``, the rest of the sentence after the parameter
            (``"must be an integer >= 1, got 0"``); the message then begins with it.
        option: The Python parameter at fault (``"batch_size"``), if one is.
        value: Its value, shown as ``option=value`` in the message (omit it to name the
            parameter alone).
        hint: A fix that sets a parameter, written after the message (``"; pass ..."``), or
            several (alternatives, joined by ``", or "``).
        params: Other parameters the message names, with their values: ``message`` then
            holds ``{name}`` for each (``"must be greater than {start}"``), written
            ``name=value`` here (and as a flag by the command line).

    Attributes:
        option: As given (``None``: no one parameter is at fault).
        value: As given, or :data:`UNSET`.
        detail: ``message`` as given, without the parameter and the hint (with the
            ``{name}`` fields of ``params`` unfilled).
        params: As given (empty: none).
        hints: The hints, as a tuple (empty: none).
    """

    def __init__(
        self,
        message: str = "",
        *,
        option: str | None = None,
        value: object = UNSET,
        hint: Hint | Sequence[Hint] | None = None,
        params: Mapping[str, object] | None = None,
    ) -> None:
        self.option = option
        self.value = value
        self.detail = message
        self.params = dict(params or {})
        self.hints: tuple[Hint, ...] = (
            () if hint is None else (hint,) if isinstance(hint, Hint) else tuple(hint)
        )
        text = message
        if self.params:
            text = message.format(**{k: f"{k}={v!r}" for k, v in self.params.items()})
        if option is not None:
            subject = option if value is UNSET else f"{option}={value!r}"
            text = f"{subject} {text}" if text else subject
        if self.hints:
            text = f"{text}; " + ", or ".join(str(h) for h in self.hints)
        super().__init__(text)


class ConfigError(AffectFPNError, ValueError):
    """An invalid model or recipe configuration; the message names the field."""


class WeightsError(AffectFPNError):
    """Weights that cannot be found, downloaded, verified or loaded into the model."""


class OfflineError(WeightsError):
    """Weights are needed from the network, but the network is off and nothing is cached."""


class InputError(AffectFPNError, ValueError):
    """An input (image, array, tensor, file) that cannot be used; the message names it."""


class DatasetError(AffectFPNError):
    """A dataset or annotation file that is malformed; the message names the file and line."""


class InferenceError(AffectFPNError):
    """The model produced NaN or infinite outputs: never reported as a prediction."""


class MissingExtraError(AffectFPNError, ImportError):
    """An optional dependency is missing; the message names the extra to install."""


def require_extra(module: str, extra: str) -> None:
    """Raise :class:`MissingExtraError` unless ``module`` can be imported."""
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise MissingExtraError(
            f"this feature needs the optional package {module!r}: pip install 'affectfpn[{extra}]'"
        )
