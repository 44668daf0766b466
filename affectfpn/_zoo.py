"""The models that ship with affectfpn (see :mod:`affectfpn.registry`).

An entry is added here only for weights that were trained and measured; its metrics are the
figures the recipe printed on the named data.
"""

from affectfpn.registry import ModelInfo

#: ``(info, is_default)`` for every built-in model.
BUILTIN_MODELS: list[tuple[ModelInfo, bool]] = []
