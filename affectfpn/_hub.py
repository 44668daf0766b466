"""Old home of :mod:`affectfpn.models.hub`, kept until ``recipes/publish.py`` imports that."""

from affectfpn.models.hub import WEIGHTS_NAME

__all__ = ["WEIGHTS_NAME"]
