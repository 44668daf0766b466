"""The architecture configuration of an :class:`~affectfpn.AffectFPN` model.

One flat, validated dataclass. It is what ``config.json`` holds next to the weights, so it must
stay JSON-friendly (tuples become lists on disk and are turned back into tuples on load).
"""

import dataclasses
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from affectfpn.errors import ConfigError
from affectfpn.labels import ACTION_UNITS, EXPRESSIONS, TASKS

#: Backbones the model can be built on, with the channels of their C2..C5 outputs.
BACKBONE_CHANNELS: dict[str, tuple[int, int, int, int]] = {
    "resnet18": (64, 128, 256, 512),
    "resnet18_half": (32, 64, 128, 256),
    "resnet34": (64, 128, 256, 512),
    "resnet50": (256, 512, 1024, 2048),
    "resnet101": (256, 512, 1024, 2048),
    "mobilenet_v2": (24, 32, 96, 1280),
    "mobilenet_v3_large": (24, 40, 112, 960),
}

NECKS: tuple[str, ...] = ("fpn", "none")

#: ImageNet statistics (RGB, on the 0..1 scale): the default normalisation.
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

#: Upper bounds of the size fields. A ``config.json`` may come from anywhere, and the model is
#: built from it before its weights are read: without a bound, one number could make that build
#: try to allocate terabytes (a crash, or the machine's memory). Each bound is far above any
#: sensible model (the paper: width 256, 112-128 px input, 12 action units).
#: Border around the five-point face template of inference's alignment, as a fraction of its
#: side on each side (``AffectFPNConfig.align_margin`` of a model that sets none).
DEFAULT_ALIGN_MARGIN = 0.1
MAX_FPN_WIDTH = 2048
MAX_INPUT_SIDE = 1024
MAX_ACTION_UNITS = 512

#: Where an expression temperature may lie (the fixed one and the per-face one alike).
TEMPERATURE_LIMITS: tuple[float, float] = (0.05, 20.0)


def stored_temperature(value: float) -> float:
    """A fitted temperature as a config stores it: rounded to 4 decimals and kept inside the
    open interval of :data:`TEMPERATURE_LIMITS` (a fit may end at a bound of its search)."""
    low, high = TEMPERATURE_LIMITS
    return min(max(round(float(value), 4), low + 1e-4), high - 1e-4)


#: Version of the on-disk ``config.json`` layout written by :meth:`AffectFPNConfig.to_dict`.
CONFIG_FORMAT_VERSION = 1


@dataclass(frozen=True)
class AffectFPNConfig:
    """Architecture and preprocessing of a model.

    Args:
        backbone: One of ``resnet18``, ``resnet34``, ``resnet50``, ``resnet101``,
            ``mobilenet_v2``, ``mobilenet_v3_large``.
        neck: ``"fpn"`` (the paper's F3R: a feature pyramid whose every level is pooled) or
            ``"none"`` (the paper's plain-classifier baselines: global pooling of the last stage).
        fpn_width: Channels of every pyramid level (at most ``MAX_FPN_WIDTH``, 2048).
        extra_level: Add the authors' extra max-pooled level (5 pooled levels instead of 4).
        tasks: Any non-empty subset of ``("va", "expression", "au")``; one task makes a
            single-task model (a teacher).
        input_size: ``(height, width)`` of the face crops the model expects (16 to
            ``MAX_INPUT_SIDE``, 1024, pixels each).
        mean: Per-channel RGB mean (0..1 scale) subtracted before the model.
        std: Per-channel RGB standard deviation (0..1 scale).
        expressions: Expression names in class-index order.
        action_units: Action-unit names in output order (1 to ``MAX_ACTION_UNITS``, 512).
        head_dropout: Dropout probability before the task heads.
        frozen_bn: Replace BatchNorm in the backbone by frozen (fixed-statistics) BatchNorm, as
            the authors did when starting from ImageNet weights.
        trainable_layers: How many backbone stages, counted from the top (C5 down to the stem),
            receive gradients: 0 freezes the backbone, 5 trains all of it.
        test_time_flip: In eval mode, run every face and its mirror image and average the
            outputs (valence/arousal and the expression and AU logits): slightly more accurate,
            twice the compute. Training is unaffected.
        align_margin: How inference frames a face it aligns on five landmarks: the border
            around the ArcFace template, as a fraction of its side on each side (0.1 shows the
            whole head; negative values zoom in). See
            :func:`affectfpn.inference.align.face_template`.
        align_shift: The template moved down by this fraction of the crop's height (negative:
            up, so that the face sits higher in the crop). Together with ``align_margin`` it
            frames a detected face as the faces of the model's training data were framed; the
            FER2013 models use the values that scored best on FER2013's own faces (PublicTest).
        expression_temperature: Expression probabilities are ``softmax(logits / T)``: a
            temperature fitted on validation data (``affectfpn calibrate``) makes a model's
            confidence match how often it is right; it never changes which expression wins.
            The model's own outputs (and exported ONNX graphs) stay raw logits. With
            ``adaptive_temperature`` the per-face temperature replaces it; it then stays the
            best single temperature, for readers that ignore the per-face output.
        adaptive_temperature: The model carries a calibrator (``calibrator``, a frozen
            ``feature_dim -> 1`` linear map fitted by ``affectfpn calibrate --adaptive``): each
            face gets its own expression temperature ``T(x) = exp(w . z + b)`` from its pooled
            feature vector ``z`` (under ``test_time_flip`` the mean of the face's and its
            mirror image's), returned as the model output ``expression_temperature``. Needs
            the expression task.
        adaptive_temperature_range: ``[low, high]``: the per-face temperature is clamped to it
            (the calibrator writes the range of the temperatures it gave its validation faces,
            so that an unusual face cannot get an extreme one); within 0.05 to 20.
    """

    backbone: str = "resnet18"
    neck: str = "fpn"
    fpn_width: int = 256
    extra_level: bool = False
    tasks: tuple[str, ...] = TASKS
    input_size: tuple[int, int] = (112, 112)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    expressions: tuple[str, ...] = EXPRESSIONS
    action_units: tuple[str, ...] = ACTION_UNITS
    head_dropout: float = 0.0
    frozen_bn: bool = False
    trainable_layers: int = 5
    test_time_flip: bool = False
    align_margin: float = DEFAULT_ALIGN_MARGIN
    align_shift: float = 0.0
    expression_temperature: float = 1.0
    adaptive_temperature: bool = False
    adaptive_temperature_range: tuple[float, float] = TEMPERATURE_LIMITS
    model_type: ClassVar[str] = "affectfpn"
    _extra: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Normalise JSON lists into tuples, then validate every field.
        for name in (
            "tasks",
            "input_size",
            "mean",
            "std",
            "expressions",
            "action_units",
            "adaptive_temperature_range",
        ):
            value = getattr(self, name)
            if isinstance(value, str) or not hasattr(value, "__iter__"):
                raise ConfigError(f"config field {name!r} must be a list, got {value!r}")
            object.__setattr__(self, name, tuple(value))
        if not isinstance(self.backbone, str) or self.backbone not in BACKBONE_CHANNELS:
            raise ConfigError(
                f"config field 'backbone': unknown backbone {self.backbone!r}; "
                f"choose one of {sorted(BACKBONE_CHANNELS)}"
            )
        if not isinstance(self.neck, str) or self.neck not in NECKS:
            raise ConfigError(f"config field 'neck': {self.neck!r} is not one of {list(NECKS)}")
        _check_int("fpn_width", self.fpn_width, low=1, high=MAX_FPN_WIDTH)
        _check_int("trainable_layers", self.trainable_layers, low=0, high=5)
        for name in ("extra_level", "frozen_bn", "test_time_flip", "adaptive_temperature"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"config field {name!r} must be true or false")
        for name, low, high in (
            ("align_margin", -0.5, 2.0),
            ("align_shift", -0.5, 0.5),
            ("expression_temperature", *TEMPERATURE_LIMITS),
        ):
            value = getattr(self, name)
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not math.isfinite(value)
                or not low < value < high
            ):
                raise ConfigError(
                    f"config field {name!r} must be a number between {low} and {high}, "
                    f"got {value!r}"
                )
            object.__setattr__(self, name, float(value))
        if not self.tasks:
            raise ConfigError(f"config field 'tasks' must name at least one of {list(TASKS)}")
        unknown = [t for t in self.tasks if not isinstance(t, str) or t not in TASKS]
        if unknown or len(set(self.tasks)) != len(self.tasks):
            raise ConfigError(
                f"config field 'tasks': {list(self.tasks)} must be distinct names "
                f"from {list(TASKS)}"
            )
        # Keep tasks in canonical order so that equal task sets give equal configs.
        object.__setattr__(self, "tasks", tuple(t for t in TASKS if t in self.tasks))
        if len(self.input_size) != 2:
            raise ConfigError("config field 'input_size' must be [height, width]")
        for v in self.input_size:
            _check_int("input_size", v, low=16, high=MAX_INPUT_SIDE)
        for name in ("mean", "std"):
            values = getattr(self, name)
            if len(values) != 3 or not all(
                isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
                for v in values
            ):
                raise ConfigError(f"config field {name!r} must be 3 finite numbers (RGB)")
            object.__setattr__(self, name, tuple(float(v) for v in values))
        if any(s <= 0 for s in self.std):
            raise ConfigError("config field 'std' must be positive")
        for name, count in (("expressions", len(EXPRESSIONS)), ("action_units", None)):
            labels = getattr(self, name)
            if not all(isinstance(x, str) and x for x in labels):
                raise ConfigError(f"config field {name!r} must be a list of non-empty names")
            if len(set(labels)) != len(labels):
                raise ConfigError(f"config field {name!r} has duplicate names: {list(labels)}")
            if count is not None and len(labels) != count:
                raise ConfigError(
                    f"config field {name!r} must have {count} names, got {len(labels)}"
                )
        if not self.action_units:
            raise ConfigError("config field 'action_units' must not be empty")
        if len(self.action_units) > MAX_ACTION_UNITS:
            raise ConfigError(
                f"config field 'action_units' has {len(self.action_units)} names, more than "
                f"{MAX_ACTION_UNITS}"
            )
        if not isinstance(self.head_dropout, int | float) or not 0 <= self.head_dropout < 1:
            raise ConfigError("config field 'head_dropout' must be a number in [0, 1)")
        low, high = TEMPERATURE_LIMITS
        span = self.adaptive_temperature_range
        if (
            len(span) != 2
            or not all(
                isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
                for v in span
            )
            or not low <= span[0] <= span[1] <= high
        ):
            raise ConfigError(
                f"config field 'adaptive_temperature_range' must be [low, high] with "
                f"{low} <= low <= high <= {high}, got {list(span)!r}"
            )
        object.__setattr__(self, "adaptive_temperature_range", tuple(float(v) for v in span))
        if self.adaptive_temperature and "expression" not in self.tasks:
            raise ConfigError(
                "config field 'adaptive_temperature' needs the expression task "
                f"(tasks are {list(self.tasks)}): set it to false"
            )

    # ----------------------------------------------------------------------------- derived
    @property
    def num_levels(self) -> int:
        """Number of pooled feature levels that feed the heads."""
        if self.neck == "none":
            return 1
        return 5 if self.extra_level else 4

    @property
    def feature_dim(self) -> int:
        """Length of the pooled feature vector that feeds the heads."""
        if self.neck == "none":
            return BACKBONE_CHANNELS[self.backbone][-1]
        return self.num_levels * self.fpn_width

    @property
    def level_names(self) -> tuple[str, ...]:
        """Names of the pooled levels, in the order they are concatenated."""
        if self.neck == "none":
            return ("C5",)
        names = ("P2", "P3", "P4", "P5")
        return (*names, "P6") if self.extra_level else names

    # ----------------------------------------------------------------------------- presets
    @classmethod
    def paper(cls, **overrides: Any) -> "AffectFPNConfig":
        """The paper's F3R: ResNet-50, a 4-level FPN of width 256, 128 px input, frozen BN and
        3 trainable stages (the authors' settings when starting from ImageNet weights)."""
        values: dict[str, Any] = {
            "backbone": "resnet50",
            "neck": "fpn",
            "fpn_width": 256,
            "input_size": (128, 128),
            "frozen_bn": True,
            "trainable_layers": 3,
        }
        values.update(overrides)
        return cls(**values)

    def replace(self, **changes: Any) -> "AffectFPNConfig":
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    # ----------------------------------------------------------------------------- JSON
    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict: the fields plus ``model_type`` and ``format_version``."""
        out: dict[str, Any] = {
            "model_type": self.model_type,
            "format_version": CONFIG_FORMAT_VERSION,
        }
        for f in dataclasses.fields(self):
            if f.name.startswith("_"):
                continue
            value = getattr(self, f.name)
            out[f.name] = list(value) if isinstance(value, tuple) else value
        out.update(self._extra)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str = "config") -> "AffectFPNConfig":
        """Build from a dict such as a parsed ``config.json``.

        Unknown keys written by a newer affectfpn are kept (and written back) but ignored, so that
        older releases still load newer files; a missing field takes its default; a malformed
        field is a :class:`~affectfpn.errors.ConfigError` naming it and ``source``.
        """
        if not isinstance(data, Mapping):
            raise ConfigError(f"{source}: expected a JSON object, got {type(data).__name__}")
        model_type = data.get("model_type", cls.model_type)
        if model_type != cls.model_type:
            raise ConfigError(f"{source}: model_type {model_type!r} is not {cls.model_type!r}")
        version = data.get("format_version", CONFIG_FORMAT_VERSION)
        if not isinstance(version, int) or version > CONFIG_FORMAT_VERSION:
            raise ConfigError(
                f"{source}: format_version {version!r} is newer than this affectfpn understands "
                f"({CONFIG_FORMAT_VERSION}); upgrade: pip install -U affectfpn"
            )
        names = {f.name for f in dataclasses.fields(cls) if not f.name.startswith("_")}
        kwargs = {k: v for k, v in data.items() if k in names}
        extra = {
            k: v
            for k, v in data.items()
            if k not in names and k not in ("model_type", "format_version")
        }
        try:
            return cls(**kwargs, _extra=extra)
        except ConfigError as err:
            raise ConfigError(f"{source}: {err}") from None
        except TypeError as err:  # wrong value types that the checks above did not catch
            raise ConfigError(f"{source}: {err}") from None

    def save(self, path: str | Path) -> None:
        """Write ``config.json`` to ``path``."""
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> "AffectFPNConfig":
        """Read a ``config.json`` file."""
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"{path}: no such config file") from None
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ConfigError(f"{path}: not valid JSON ({err})") from None
        return cls.from_dict(data, source=str(path))


def _check_int(name: str, value: Any, *, low: int, high: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"config field {name!r} must be an integer, got {value!r}")
    if value < low or (high is not None and value > high):
        bound = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ConfigError(f"config field {name!r} must be {bound}, got {value}")
