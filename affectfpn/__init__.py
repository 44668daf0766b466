"""affectfpn: multi-task facial affect analysis with feature pyramid networks.

Valence/arousal, 7 basic expressions and 12 action units from faces in images and video, after
He et al., "Feature Pyramid Network for Multi-task Affective Analysis" (ABAW2 2021).

Example:
    >>> from affectfpn import AffectFPN
    >>> model = AffectFPN.from_pretrained()              # doctest: +SKIP
    >>> model.predict("photo.jpg").faces[0].expression   # doctest: +SKIP

Names are imported on first use, so ``import affectfpn.metrics`` does not pay for torchvision.
"""

import importlib
from typing import TYPE_CHECKING, Any

from affectfpn._version import __version__
from affectfpn.errors import (
    AffectFPNError,
    ConfigError,
    DatasetError,
    InferenceError,
    InputError,
    MissingExtraError,
    OfflineError,
    WeightsError,
)
from affectfpn.labels import ACTION_UNITS, EXPRESSIONS

if TYPE_CHECKING:
    from affectfpn.analysis import layer_contributions, plot_layer_contributions
    from affectfpn.config import AffectFPNConfig
    from affectfpn.evaluation import EvaluationReport, evaluate
    from affectfpn.export import OnnxRunner, export_onnx
    from affectfpn.inference import (
        ActionUnits,
        Expression,
        FacePrediction,
        ImagePrediction,
        Predictor,
        ValenceArousal,
        predict,
        predict_iter,
        to_rows,
        write_csv,
    )
    from affectfpn.inference.draw import draw
    from affectfpn.models import AffectFPN, AffectFPNOutput
    from affectfpn.models.registry import ModelInfo, get_model_info, list_models
    from affectfpn.video import FramePrediction, analyze_video, predict_video

_LAZY: dict[str, str] = {
    "AffectFPN": "affectfpn.models",
    "AffectFPNOutput": "affectfpn.models",
    "AffectFPNConfig": "affectfpn.config",
    "ModelInfo": "affectfpn.models.registry",
    "get_model_info": "affectfpn.models.registry",
    "list_models": "affectfpn.models.registry",
    "ActionUnits": "affectfpn.inference",
    "Expression": "affectfpn.inference",
    "FacePrediction": "affectfpn.inference",
    "ImagePrediction": "affectfpn.inference",
    "Predictor": "affectfpn.inference",
    "ValenceArousal": "affectfpn.inference",
    "draw": "affectfpn.inference",
    "predict": "affectfpn.inference",
    "predict_iter": "affectfpn.inference",
    "to_rows": "affectfpn.inference",
    "write_csv": "affectfpn.inference",
    "EvaluationReport": "affectfpn.evaluation",
    "evaluate": "affectfpn.evaluation",
    "layer_contributions": "affectfpn.analysis",
    "plot_layer_contributions": "affectfpn.analysis",
    "FramePrediction": "affectfpn.video",
    "analyze_video": "affectfpn.video",
    "predict_video": "affectfpn.video",
    "OnnxRunner": "affectfpn.export",
    "export_onnx": "affectfpn.export",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'affectfpn' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "ACTION_UNITS",
    "EXPRESSIONS",
    "ActionUnits",
    "AffectFPN",
    "AffectFPNConfig",
    "AffectFPNError",
    "AffectFPNOutput",
    "ConfigError",
    "DatasetError",
    "EvaluationReport",
    "Expression",
    "FacePrediction",
    "FramePrediction",
    "ImagePrediction",
    "InferenceError",
    "InputError",
    "MissingExtraError",
    "ModelInfo",
    "OfflineError",
    "OnnxRunner",
    "Predictor",
    "ValenceArousal",
    "WeightsError",
    "__version__",
    "analyze_video",
    "draw",
    "evaluate",
    "export_onnx",
    "get_model_info",
    "layer_contributions",
    "list_models",
    "plot_layer_contributions",
    "predict",
    "predict_iter",
    "predict_video",
    "to_rows",
    "write_csv",
]
