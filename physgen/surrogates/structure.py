"""What a wrapper can tell a family about the features it models.

A family models tensors. Where the features have structure that a plain tensor does not
show, a wrapper (the calorimeter's shower model) describes it with a
:class:`FeatureStructure`, and options that need it (declared with ``needs=`` in the
family's options) use it:

* ``floor``: each feature's exact value at its point mass (an empty voxel after the
  calorimeter's preprocessing), for families that model "at the floor or not" explicitly;
* ``groups``: the features as consecutive groups (a calorimeter's layers);
* ``summaries``: a differentiable map ``[B, D] → [B, S]`` to statistics a critic may also see
  (a shower's per-layer centroids and widths);
* ``grid``: the features as ``(layers, angle, radius)`` maps in that order, periodic in angle
  (a calorimeter whose layers share one polar binning), for layer-structured networks.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn

from physgen.data.groups import FeatureGroups
from physgen.errors import ConfigError

__all__ = ["FeatureStructure", "require"]


@dataclasses.dataclass
class FeatureStructure:
    """Facts about the ``D`` model-space features beyond their values (every field optional).

    Attributes:
        floor: ``[D]`` each feature's value at its point mass.
        groups: the features as runs of consecutive groups.
        summaries: a module mapping ``[B, D]`` model-space features to ``[B, S]`` summary statistics.
        grid: ``(L, A, R)`` with ``L·A·R = D``: feature ``l·A·R + a·R + r`` sits in layer ``l``, angular bin ``a``
            (periodic) and radial bin ``r``.
    """

    floor: torch.Tensor | None = None
    groups: FeatureGroups | None = None
    summaries: nn.Module | None = None
    grid: tuple[int, int, int] | None = None

    def provides(self, need: str) -> bool:
        """Whether this structure has what an option ``needs`` (``"floor"``, ``"groups"``, ``"summaries"``, ``"grid"``)."""
        return getattr(self, need, None) is not None

    def group_index(self) -> torch.Tensor | None:
        """Each feature's group id ``[D]`` (None without groups)."""
        if self.groups is None:
            return None
        return torch.repeat_interleave(torch.arange(len(self.groups.sizes)), torch.tensor(self.groups.sizes))


def require(structure: FeatureStructure | None, need: str, option_name: str, family: str) -> Any:
    """``structure``'s ``need`` for the option ``option_name``, or a :class:`ConfigError` saying who can supply it."""
    value = None if structure is None else getattr(structure, need)
    if value is None:
        raise ConfigError(
            f"option {option_name!r} needs the features' {need}, which only a wrapper that knows them supplies "
            "(calorimeter showers: physgen.calorimeter.ShowerModel)", where=family, key=option_name,
        )
    return value
