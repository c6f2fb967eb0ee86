"""Per-data-set settings of the shower model, as TOML presets (``physgen/calorimeter/presets/*.toml``).

A preset holds one table per family (``[vae]``, ``[flow]``, ...) of shower-model and family
options. ``default`` applies to every shower model; a data set's preset (``wsi_electron``,
``pbwo4_gamma``, or a path to your own file) goes on top, and your options on top of that.
"""

from __future__ import annotations

import tomllib
from functools import cache
from pathlib import Path
from typing import Any

from physgen.errors import ConfigError, DataFileError, UnknownNameError

__all__ = ["PRESETS_DIR", "available_presets", "load_preset"]

PRESETS_DIR = Path(__file__).parent / "presets"


def available_presets() -> list[str]:
    """Names of the presets shipped with physgen."""
    return sorted(p.stem for p in PRESETS_DIR.glob("*.toml"))


@cache
def _read(path: str) -> dict[str, Any]:
    try:
        data = tomllib.loads(Path(path).read_text())
    except FileNotFoundError as exc:
        raise DataFileError("no such preset file", file=path) from exc
    except tomllib.TOMLDecodeError as exc:
        raise DataFileError(f"not a valid TOML preset ({exc})", file=path) from exc
    for family, table in data.items():
        if not isinstance(table, dict):
            raise ConfigError(f"preset {path!r}: {family!r} must be a table of options per family ([{family}])", where="preset", key=family)
    return data


def load_preset(name: str | Path) -> dict[str, dict[str, Any]]:
    """The preset ``name`` (a shipped name, or a path to a TOML file): family → options.

    Raises:
        UnknownNameError: a name that is neither shipped nor a file.
    """
    path = Path(name)
    if path.suffix != ".toml":
        path = PRESETS_DIR / f"{name}.toml"
        if not path.exists():
            raise UnknownNameError("preset", str(name), available_presets())
    return {k: dict(v) for k, v in _read(str(path)).items()}
