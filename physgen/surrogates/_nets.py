"""Small network builders the families share."""

from __future__ import annotations

from torch import nn


def mlp(n_in: int, n_out: int, hidden: int, layers: int, activation: type[nn.Module] = nn.SiLU) -> nn.Sequential:
    """``layers`` hidden layers of width ``hidden`` with ``activation``, then a linear output."""
    mods: list[nn.Module] = []
    width = n_in
    for _ in range(layers):
        mods += [nn.Linear(width, hidden), activation()]
        width = hidden
    mods.append(nn.Linear(width, n_out))
    return nn.Sequential(*mods)
