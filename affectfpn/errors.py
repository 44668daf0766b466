"""Exceptions raised by affectfpn.

Every error a user can act on is an :class:`AffectFPNError`; the message names the input at fault
and says how to fix it.
"""


class AffectFPNError(Exception):
    """Base class of every error raised on purpose by affectfpn."""


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
