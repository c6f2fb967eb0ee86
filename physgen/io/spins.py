"""Spin measurements as plain text: one row of 0/1 per measured σᶻ configuration.

This is the format the tomography literature (QuCumber's examples among them)
uses; rows may be written with or without spaces between the digits.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from physgen.data.container import Data, Schema
from physgen.errors import InvalidDataError
from physgen.io._common import InvalidContentError, atomic_path

__all__ = ["read_spins", "write_spins"]


def read_spins(path: str | Path) -> Data:
    """Read 0/1 rows into ``Data(kind="spins")`` with ``x`` ``[N, n_spins]``."""
    rows = []
    width = None
    with open(path) as fh:
        for lineno, line in enumerate(fh, start=1):
            bits = line.replace(" ", "").replace("\t", "").strip()
            if not bits:
                continue
            if set(bits) - {"0", "1"}:
                raise InvalidContentError(f"expected only 0/1 digits; got {line.strip()[:40]!r}", file=path, key=f"line {lineno}")
            if width is None:
                width = len(bits)
            elif len(bits) != width:
                raise InvalidContentError(
                    f"expected {width} spins per row (as in the first row); got {len(bits)}", file=path, key=f"line {lineno}"
                )
            rows.append(np.frombuffer(bits.encode(), dtype=np.uint8) - ord("0"))
    if not rows:
        raise InvalidContentError("no spin rows in the file", file=path)
    x = np.stack(rows).astype(np.float32)
    return Data(x, Schema(kind="spins", units="", source_format="spins"))


def write_spins(data: Data, path: str | Path) -> Path:
    """Write spins as 0/1 rows separated by spaces, atomically."""
    if data.schema.kind != "spins" or data.x.ndim != 2:
        raise InvalidDataError(f"write_spins needs spin data [N, n_spins]; got {data!r}")
    path = Path(path)
    with atomic_path(path) as tmp:
        np.savetxt(tmp, data.x.numpy().astype(np.int8), fmt="%d", delimiter=" ")
    return path
