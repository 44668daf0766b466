"""Training datasets for affectfpn: the datasets of :mod:`affectfpn.data`, under the name the
training recipes have always used (``from affectfpn.recipes.datasets import AffWild2`` and
``from affectfpn.data import AffWild2`` give the same class).

See :mod:`affectfpn.data` for the sample dict every dataset returns.
"""

from affectfpn import data as _data
from affectfpn.data import *  # noqa: F403  (every public name of affectfpn.data, and only those)

__all__ = list(_data.__all__)
