"""The registry of named pretrained models.

Each :class:`ModelInfo` says where the weights live (inside the package, or a Hub repo at a pinned
revision) and carries what a user needs to trust them: preprocessing, labels, parameter count,
measured metrics with the data they were measured on, licence and the recipe that produced them.
"""

import dataclasses
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from affectfpn.errors import ConfigError, WeightsError

_SHA1 = re.compile(r"^[0-9a-f]{40}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class ModelInfo:
    """Metadata of one registered model.

    Attributes:
        name: Registry name, passed to ``AffectFPN.from_pretrained(name)``.
        description: One line on what the model is.
        source: ``"package"`` (weights inside the installed package) or ``"hub"``.
        location: For ``"package"``, the folder under ``affectfpn/weights``; for ``"hub"``, the
            repo id.
        revision: For ``"hub"``, the pinned 40-hex commit.
        sha256: For ``"package"``, the sha256 of ``model.safetensors``, checked before use.
        tasks: Tasks the model predicts.
        backbone: Backbone name; ``neck``: ``"fpn"`` or ``"none"``.
        input_size: ``(height, width)`` of its face crops; ``mean``/``std``: normalisation.
        expressions, action_units: Label names in output order.
        num_params: Number of parameters.
        metrics: ``{dataset/split: {metric: value}}`` as measured.
        license: Licence of the weights; ``datasets``: what they were trained on.
        recipe: The recipe file that reproduces them.
        paper: Where the architecture comes from.
    """

    name: str
    description: str
    source: Literal["package", "hub"]
    location: str
    tasks: tuple[str, ...]
    backbone: str
    neck: str
    input_size: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    expressions: tuple[str, ...]
    action_units: tuple[str, ...]
    num_params: int
    metrics: Mapping[str, Mapping[str, float]]
    license: str
    datasets: tuple[str, ...]
    recipe: str
    revision: str | None = None
    sha256: str | None = None
    paper: str = "He et al., Feature Pyramid Network for Multi-task Affective Analysis, ABAW2 2021"
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.source not in ("package", "hub"):
            raise ConfigError(f"model {self.name!r}: source must be 'package' or 'hub'")
        if self.source == "hub" and (self.revision is None or not _SHA1.match(self.revision)):
            raise ConfigError(f"model {self.name!r}: a Hub model needs a pinned 40-hex revision")
        if self.source == "package" and (self.sha256 is None or not _SHA256.match(self.sha256)):
            raise ConfigError(f"model {self.name!r}: an embedded model needs its sha256")
        if not self.tasks:
            raise ConfigError(f"model {self.name!r}: no tasks")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        out = dataclasses.asdict(self)
        out["metrics"] = {k: dict(v) for k, v in self.metrics.items()}
        return out


_REGISTRY: dict[str, ModelInfo] = {}
_DEFAULT: list[str] = []


def register_model(info: ModelInfo, *, default: bool = False, overwrite: bool = False) -> None:
    """Add ``info`` to the registry (optionally as the default of ``from_pretrained()``)."""
    _ensure_builtin()
    if info.name in _REGISTRY and not overwrite:
        raise ConfigError(f"a model named {info.name!r} is already registered")
    _REGISTRY[info.name] = info
    if default:
        _DEFAULT[:] = [info.name]


def unregister_model(name: str) -> None:
    """Remove a model from the registry (mainly for tests)."""
    _ensure_builtin()
    _REGISTRY.pop(name, None)
    if _DEFAULT and _DEFAULT[0] == name:
        _DEFAULT.clear()


def list_models() -> list[ModelInfo]:
    """All registered models, the default first."""
    _ensure_builtin()
    names = sorted(_REGISTRY, key=lambda n: (n not in _DEFAULT, n))
    return [_REGISTRY[n] for n in names]


def model_names() -> list[str]:
    """Names of the registered models."""
    return [m.name for m in list_models()]


def get_model_info(name: str) -> ModelInfo:
    """The :class:`ModelInfo` registered under ``name``."""
    _ensure_builtin()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise WeightsError(
            f"no registered model named {name!r}; available: {', '.join(model_names()) or 'none'}"
        ) from None


def default_model_name() -> str:
    """The name ``AffectFPN.from_pretrained()`` loads when given no argument."""
    _ensure_builtin()
    if not _DEFAULT:
        raise WeightsError(
            "no default model is registered in this affectfpn build: "
            "pass a model name, folder or Hub repo id to from_pretrained"
        )
    return _DEFAULT[0]


def package_weights_dir(info: ModelInfo) -> Path:
    """Folder of an embedded model's files inside the installed package."""
    if info.source != "package":
        raise WeightsError(f"model {info.name!r} is not embedded in the package")
    root = Path(str(resources.files("affectfpn") / "weights"))
    return root / info.location


# The models that ship inside the package: each is a folder ``affectfpn/weights/<name>/`` holding
# ``config.json``, ``model.safetensors``, the model card ``README.md`` and ``model_info.json``: the
# registry entry, written by ``affectfpn publish ... --out affectfpn/weights`` (from a source
# checkout) from measured figures (never by hand). Its ``sha256`` is checked before the weights are
# used.
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


_BUILTIN_LOADED: list[bool] = []


def _ensure_builtin() -> None:
    """Register the models embedded in the package, once, on first use of the registry."""
    if _BUILTIN_LOADED:
        return
    _BUILTIN_LOADED.append(True)
    for info, is_default in embedded_models():
        if info.name not in _REGISTRY:
            register_model(info, default=is_default and not _DEFAULT)
