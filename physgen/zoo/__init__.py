"""Trained models shipped inside physgen: ``physgen.surrogates.load("zoo:NAME")`` loads one offline.

Each model is a checkpoint folder ``physgen/zoo/NAME/`` (``config.json``, ``weights.safetensors``) with a
model card, ``card.json``: what it was trained on and where those showers came from, the energy range,
the held-out metrics next to their truth-vs-truth floors, the speed against Geant4 on a named CPU, the
licence. ``benchmarks/export_zoo.py`` writes them from a suite's trained model and measures the card.

Example:
    >>> from physgen import zoo
    >>> "pbwo4-photon-vae" in zoo.available()
    True
    >>> from physgen.surrogates import load
    >>> model = load("zoo:pbwo4-photon-vae")
    >>> model.sample(["20 GeV"], seed=0).x.shape
    torch.Size([1, 768])
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from physgen.errors import CheckpointError, UnknownNameError

__all__ = ["PREFIX", "ZOO", "available", "card", "path"]

#: the folder the shipped models live in
ZOO = Path(__file__).resolve().parent
#: ``physgen.surrogates.load("zoo:NAME")`` loads a shipped model
PREFIX = "zoo:"


def available() -> list[str]:
    """The names of the shipped models."""
    return sorted(p.name for p in ZOO.iterdir() if (p / "card.json").is_file())


def path(name: str) -> Path:
    """The checkpoint folder of shipped model ``name``; :class:`UnknownNameError` lists the known ones."""
    name = name.removeprefix(PREFIX)
    if name not in available():
        raise UnknownNameError("shipped model", name, available())
    return ZOO / name


def card(name: str) -> dict[str, Any]:
    """The model card of ``name`` (``card.json``)."""
    p = path(name) / "card.json"
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"the card of shipped model {name!r} ({p}) cannot be read: {exc}") from exc
