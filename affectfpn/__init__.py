"""affectfpn: multi-task facial affect analysis with feature pyramid networks.

Valence/arousal, 7 basic expressions and 12 action units from faces in images and video, after
He et al., "Feature Pyramid Network for Multi-task Affective Analysis" (ABAW2 2021).

Example:
    >>> from affectfpn import AffectFPN
    >>> model = AffectFPN.from_pretrained()              # doctest: +SKIP
    >>> model.predict("photo.jpg").faces[0].expression   # doctest: +SKIP
"""

from affectfpn._version import __version__
from affectfpn.config import AffectFPNConfig
from affectfpn.errors import (
    AffectFPNError,
    ConfigError,
    DatasetError,
    InputError,
    MissingExtraError,
    OfflineError,
    WeightsError,
)
from affectfpn.labels import ACTION_UNITS, EXPRESSIONS
from affectfpn.models import AffectFPN, AffectFPNOutput
from affectfpn.registry import ModelInfo, get_model_info, list_models

__all__ = [
    "ACTION_UNITS",
    "EXPRESSIONS",
    "AffectFPN",
    "AffectFPNConfig",
    "AffectFPNError",
    "AffectFPNOutput",
    "ConfigError",
    "DatasetError",
    "InputError",
    "MissingExtraError",
    "ModelInfo",
    "OfflineError",
    "WeightsError",
    "__version__",
    "get_model_info",
    "list_models",
]
