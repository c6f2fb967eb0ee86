"""Event-level features: the marginals, plus physics quantities the schema allows.

If the features hold two four-vectors named ``E1, px1, py1, pz1`` and ``E2, px2,
py2, pz2`` (the CMS dimuon convention of ``uproot-Zmumu.root``), the pair's
invariant mass ``M`` is added.
"""

from __future__ import annotations

import numpy as np

from physgen.data import Data
from physgen.errors import InvalidDataError

__all__ = ["invariant_mass", "event_features"]

_FOUR = ("E", "px", "py", "pz")


def invariant_mass(e: np.ndarray, px: np.ndarray, py: np.ndarray, pz: np.ndarray) -> np.ndarray:
    """√max(E² − |p|², 0) of (summed) four-momenta, in the units of the inputs."""
    m2 = np.asarray(e, np.float64) ** 2 - (np.asarray(px, np.float64) ** 2 + np.asarray(py, np.float64) ** 2 + np.asarray(pz, np.float64) ** 2)
    return np.sqrt(np.clip(m2, 0, None))


def event_features(data: Data) -> dict[str, np.ndarray]:
    """``{name: float64 [N]}``: every feature column, and ``m_pair`` for two four-vectors."""
    if data.x.ndim != 2 or data.schema.feature_names is None:
        raise InvalidDataError(f"event features need flat named features [N, F]; got {data!r}")
    names = list(data.schema.feature_names)
    x = data.x.double().numpy()
    feats = {n: x[:, i] for i, n in enumerate(names)}
    pairs = [[f"{c}{k}" for c in _FOUR] for k in (1, 2)]
    if all(n in feats for p in pairs for n in p):
        total = [feats[a] + feats[b] for a, b in zip(*pairs, strict=True)]
        feats["m_pair"] = invariant_mass(*total)
    return feats
