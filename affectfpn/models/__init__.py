"""Model definitions."""

from affectfpn.models.affectfpn import AffectFPN, AffectFPNOutput

__all__ = ["AffectFPN", "AffectFPNOutput"]
