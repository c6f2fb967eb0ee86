"""Units of conditions: ``"5 GeV"`` → 5000 in a model trained in MeV.

A model records the unit of each condition column (``Schema.cond_units``, e.g. ``("MeV",)``). The
sampling API takes plain numbers in those units, or quantities as text (``"5 GeV"``, ``"30deg"``)
that :func:`to_unit` converts; a unit of another dimension (an angle for an energy) is an error.

Example:
    >>> to_unit("5 GeV", "MeV")
    5000.0
    >>> convert(90.0, "deg", "rad")
    1.5707963267948966
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

from physgen.errors import ConfigError, UnknownNameError

__all__ = ["UNITS", "convert", "dimension", "is_energy", "parse_quantity", "to_unit"]

#: unit → (dimension, value of one unit in the dimension's base unit: MeV, rad, mm)
UNITS: dict[str, tuple[str, float]] = {
    "eV": ("energy", 1e-6), "keV": ("energy", 1e-3), "MeV": ("energy", 1.0), "GeV": ("energy", 1e3), "TeV": ("energy", 1e6),
    "rad": ("angle", 1.0), "mrad": ("angle", 1e-3), "deg": ("angle", math.pi / 180),
    "um": ("length", 1e-3), "mm": ("length", 1.0), "cm": ("length", 10.0), "m": ("length", 1e3),
}

_QUANTITY = re.compile(r"^\s*([-+]?(?:(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|nan|inf(?:inity)?))\s*([A-Za-z]*)\s*$", re.IGNORECASE)


def dimension(unit: str) -> str:
    """``"energy"``, ``"angle"`` or ``"length"``; :class:`UnknownNameError` (naming the nearest) for another unit."""
    if unit not in UNITS:
        raise UnknownNameError("unit", unit, UNITS)
    return UNITS[unit][0]


def is_energy(unit: str) -> bool:
    """Whether ``unit`` is a known energy unit (such conditions must be > 0)."""
    return UNITS.get(unit, ("", 0.0))[0] == "energy"


def convert(value: float, from_unit: str, to_unit: str) -> float:
    """``value`` in ``from_unit`` expressed in ``to_unit``; :class:`ConfigError` across dimensions."""
    if from_unit == to_unit:
        return float(value)
    a, b = dimension(from_unit), dimension(to_unit)
    if a != b:
        raise ConfigError(f"cannot convert {value} {from_unit} (an {a}) to {to_unit} (an {b})", key="unit")
    return float(value) * UNITS[from_unit][1] / UNITS[to_unit][1]


def parse_quantity(text: str) -> tuple[float, str | None]:
    """``"5 GeV"`` → ``(5.0, "GeV")``; ``"5"`` → ``(5.0, None)``; :class:`ConfigError` for anything else."""
    match = _QUANTITY.match(str(text))
    if match is None:
        raise ConfigError(f"expected a number with an optional unit (e.g. '5 GeV', '30deg'); got {text!r}", key="unit")
    value, unit = float(match.group(1)), match.group(2) or None
    if unit is not None:
        dimension(unit)
    return value, unit


def to_unit(value: Any, unit: str) -> float:
    """A plain number (taken to be in ``unit`` already) or a quantity as text, in ``unit``."""
    if isinstance(value, str):
        number, given = parse_quantity(value)
        if given is None:
            return number
        if not unit:
            raise ConfigError(f"{value!r} carries a unit, but the model records none for this condition; give a plain number", key="unit")
        return convert(number, given, unit)
    return float(value)


def column_units(cond_units: Sequence[str], n: int) -> list[str]:
    """One unit per condition column ('' where the model records none)."""
    return list(cond_units) if len(cond_units) == n else [""] * n
