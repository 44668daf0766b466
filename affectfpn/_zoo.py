"""Old home of the embedded models (now :mod:`affectfpn.models.registry`), kept until
``recipes/publish.py`` imports the new one."""

from affectfpn.models.registry import INFO_NAME

__all__ = ["INFO_NAME"]
