"""The registry of named pretrained models: :mod:`affectfpn.models.registry`, under the name the
documentation has always used (``from affectfpn.registry import ModelInfo`` still works)."""

from affectfpn.models.registry import (
    ModelInfo,
    default_model_name,
    get_model_info,
    list_models,
    model_names,
    package_weights_dir,
    register_model,
    unregister_model,
)

__all__ = [
    "ModelInfo",
    "default_model_name",
    "get_model_info",
    "list_models",
    "model_names",
    "package_weights_dir",
    "register_model",
    "unregister_model",
]
