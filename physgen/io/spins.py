"""Spin measurements as plain text: one row of 0/1 per measured configuration.

This is the format the tomography literature (QuCumber's examples among them)
uses; rows may be written with or without spaces between the digits. Measurements
in other Pauli bases come with a second file of the same number of rows naming the
basis of each qubit (``Z X Z ...``, QuCumber's ``*_bases.txt``); it becomes the
condition of each sample, coded 0/1/2 = Z/X/Y, with ``cond_names`` ``basis_0 ...``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from physgen.data.container import Data, Schema
from physgen.errors import DataFileError, InvalidDataError
from physgen.io._common import InvalidContentError, atomic_path

__all__ = ["read_spins", "write_spins", "bases_path", "PAULI"]

#: the Pauli basis letters in the order of their codes (a sample's condition: 0 = Z, 1 = X, 2 = Y)
PAULI = "ZXY"


def bases_path(path: str | Path) -> Path:
    """Where :func:`write_spins` puts the bases of ``path``'s rows: ``NAME_bases.SUFFIX`` beside it."""
    path = Path(path)
    return path.with_name(f"{path.stem}_bases{path.suffix}")


def read_spins(path: str | Path, bases: str | Path | None = None) -> Data:
    """Read 0/1 rows into ``Data(kind="spins")`` with ``x`` ``[N, n_spins]``; with ``bases``, that file's Pauli letters as ``cond``."""
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
    if bases is None:
        return Data(x, Schema(kind="spins", units="", source_format="spins"))
    cond = _read_bases(bases, x.shape[1])
    if len(cond) != len(x):
        raise InvalidContentError(f"{len(cond)} rows of bases for the {len(x)} measurements of {str(path)!r}; expected one row per measurement", file=bases)
    names = tuple(f"basis_{i}" for i in range(x.shape[1]))
    return Data(x, Schema(kind="spins", units="", source_format="spins", cond_names=names), cond=cond)


def _read_bases(path: str | Path, width: int) -> np.ndarray:
    if not Path(path).is_file():
        raise DataFileError("the bases file does not exist; expected one row of X/Y/Z letters per measurement", file=path)
    rows = []
    with open(path) as fh:
        for lineno, line in enumerate(fh, start=1):
            letters = line.replace(" ", "").replace("\t", "").strip().upper()
            if not letters:
                continue
            if set(letters) - set(PAULI):
                raise InvalidContentError(f"expected one Pauli basis letter (X, Y or Z) per qubit; got {line.strip()[:40]!r}", file=path, key=f"line {lineno}")
            if len(letters) != width:
                raise InvalidContentError(f"expected {width} basis letters per row, one per qubit of the measurements; got {len(letters)}", file=path, key=f"line {lineno}")
            rows.append([PAULI.index(c) for c in letters])
    return np.asarray(rows, dtype=np.float32).reshape(-1, width)


def write_spins(data: Data, path: str | Path, bases: str | Path | None = None) -> Path:
    """Write spins as 0/1 rows separated by spaces, atomically; measurement bases (``cond``) go to ``bases``
    (default :func:`bases_path`) as rows of letters."""
    if data.schema.kind != "spins" or data.x.ndim != 2:
        raise InvalidDataError(f"write_spins needs spin data [N, n_spins]; got {data!r}")
    path = Path(path)
    if data.cond is not None:
        codes = data.cond.numpy()
        if codes.shape != data.x.shape or not np.isin(codes, (0, 1, 2)).all():
            raise InvalidDataError(f"the conditions of spin data are measurement bases, [N, {data.x.shape[1]}] codes 0/1/2 = Z/X/Y; got {tuple(codes.shape)}")
        with atomic_path(bases_path(path) if bases is None else Path(bases)) as tmp:
            np.savetxt(tmp, np.asarray(list(PAULI))[codes.astype(np.int64)], fmt="%s", delimiter=" ")
    with atomic_path(path) as tmp:
        np.savetxt(tmp, data.x.numpy().astype(np.int8), fmt="%d", delimiter=" ")
    return path
