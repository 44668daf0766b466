"""The models that ship inside the package (see :mod:`affectfpn.registry`).

Each embedded model is a folder ``affectfpn/weights/<name>/`` holding ``config.json``,
``model.safetensors``, the model card ``README.md`` and ``model_info.json``: the registry entry,
written by ``python -m affectfpn.recipes.publish`` from measured figures (never by hand). Its
``sha256`` is checked before the weights are used.
"""

import json
import logging
from importlib import resources
from pathlib import Path

from affectfpn.errors import ConfigError
from affectfpn.registry import ModelInfo

logger = logging.getLogger(__name__)

INFO_NAME = "model_info.json"


def model_info_from_dict(data: dict[str, object], *, source: str) -> tuple[ModelInfo, bool]:
    """Parse a ``model_info.json`` mapping into a :class:`ModelInfo` and its default flag."""
    values = dict(data)
    is_default = bool(values.pop("default", False))
    for key in ("tasks", "input_size", "mean", "std", "expressions", "action_units", "datasets"):
        if key in values and isinstance(values[key], list):
            values[key] = tuple(values[key])  # type: ignore[arg-type]
    try:
        return ModelInfo(**values), is_default  # type: ignore[arg-type]
    except TypeError as err:
        raise ConfigError(f"{source}: {err}") from None


def embedded_models() -> list[tuple[ModelInfo, bool]]:
    """``(info, is_default)`` for every model folder under ``affectfpn/weights``."""
    root = Path(str(resources.files("affectfpn") / "weights"))
    found: list[tuple[ModelInfo, bool]] = []
    if not root.is_dir():
        return found
    for info_path in sorted(root.glob(f"*/{INFO_NAME}")):
        data = json.loads(info_path.read_text(encoding="utf-8"))
        found.append(model_info_from_dict(data, source=str(info_path)))
    return found
