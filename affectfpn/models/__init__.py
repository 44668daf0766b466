"""The model and what belongs to it: the network (:mod:`affectfpn.models.affectfpn`), saving and
loading weights on disk and on the Hugging Face Hub (:mod:`affectfpn.models.hub`) and the registry
of named pretrained models (:mod:`affectfpn.models.registry`).

``AffectFPN`` and ``AffectFPNOutput`` are imported on first use, so that the registry can be read
without importing torch.
"""

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from affectfpn.models.affectfpn import AffectFPN, AffectFPNOutput

__all__ = ["AffectFPN", "AffectFPNOutput"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from affectfpn.models import affectfpn

        return getattr(affectfpn, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
