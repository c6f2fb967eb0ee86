"""Helpers every adapter shares: format sniffing, atomic writes, content checks."""

from __future__ import annotations

import contextlib
import os
import struct
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from physgen.errors import DataFileError, FileFormatError, InvalidDataError

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


class InvalidContentError(DataFileError, InvalidDataError):
    """Values in a file that physgen cannot accept (NaN, negative energies, wrong shape)."""


def sniff(path: str | Path) -> str:
    """``"hdf5"``, ``"root"`` or ``"text"`` from the file's first bytes, not its extension.

    Raises:
        DataFileError: the file does not exist or cannot be opened.
        FileFormatError: the file is empty or in no supported format.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        with path.open("rb") as fh:
            head = fh.read(8)
            if size == 0:
                raise FileFormatError("file is empty (0 bytes); expected HDF5 or ROOT data", file=path)
            # ROOT: "root" then the big-endian file format version (e.g. 62406, or
            # 1062406 for large files); text that merely starts with "root" fails this
            if head.startswith(b"root") and len(head) == 8 and 0 < struct.unpack(">i", head[4:])[0] < 2_000_000:
                return "root"
            # HDF5 allows a user block: the signature may sit at 0, 512, 1024, 2048, ...
            offset = 0
            while offset < size:
                fh.seek(offset)
                if fh.read(8) == HDF5_SIGNATURE:
                    return "hdf5"
                offset = 512 if offset == 0 else offset * 2
            fh.seek(0)
            sample = fh.read(4096)
    except FileNotFoundError as exc:
        raise DataFileError("no such file", file=path) from exc
    except IsADirectoryError as exc:
        raise DataFileError("is a directory, expected a data file", file=path) from exc
    except PermissionError as exc:
        raise DataFileError("permission denied", file=path) from exc
    stripped = sample.replace(b"\r", b"").replace(b"\n", b"").replace(b" ", b"")
    if stripped and set(stripped) <= set(b"01"):
        return "text"
    raise FileFormatError(
        f"neither HDF5 nor ROOT nor 0/1 text (first bytes {head!r}); supported: CaloChallenge, "
        "CaloGAN and generic HDF5, ROOT TTrees, spin samples as text",
        file=path,
    )


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only on success.

    A failed write leaves neither a partial ``path`` nor the temporary file.
    """
    path = Path(path)
    if path.parent and not path.parent.exists():
        raise DataFileError("the output directory does not exist", file=path.parent)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def check_values(
    arr: np.ndarray, *, file: str | Path, key: str, nonnegative: bool = False, positive: bool = False
) -> None:
    """Raise :class:`InvalidContentError` for non-finite or (if asked) negative values."""
    if arr.dtype.kind not in "biuf":
        raise InvalidContentError(f"expected a numeric array; got dtype {arr.dtype}", file=file, key=key)
    if arr.dtype.kind != "f":
        bad_finite = np.zeros(arr.shape, dtype=bool)
    else:
        bad_finite = ~np.isfinite(arr)
    if bad_finite.any():
        idx = tuple(int(i) for i in np.argwhere(bad_finite)[0])
        raise InvalidContentError(
            f"expected finite values; found {int(bad_finite.sum())} NaN/inf, first at index {idx} "
            f"({arr[idx]})",
            file=file,
            key=key,
        )
    if positive and (arr <= 0).any():
        idx = tuple(int(i) for i in np.argwhere(arr <= 0)[0])
        raise InvalidContentError(f"expected values > 0; found {arr[idx]} at index {idx}", file=file, key=key)
    if nonnegative and (arr < 0).any():
        idx = tuple(int(i) for i in np.argwhere(arr < 0)[0])
        raise InvalidContentError(
            f"expected energies ≥ 0; found {int((arr < 0).sum())} negative value(s), first {arr[idx]:.6g} "
            f"at index {idx}",
            file=file,
            key=key,
        )


def chunk_bounds(n: int, chunk_size: int) -> Iterator[tuple[int, int]]:
    if chunk_size < 1:
        raise InvalidDataError(f"chunk_size must be ≥ 1; got {chunk_size}")
    for start in range(0, n, chunk_size):
        yield start, min(start + chunk_size, n)
