"""Helpers every adapter shares: format sniffing, atomic writes, content checks."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import struct
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from physgen.errors import DataFileError, FileFormatError, InvalidDataError

log = logging.getLogger(__name__)

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


#: the mark in the names of temporary files and directories physgen writes before renaming them into place
TMP_MARK = ".physgen-tmp-"


def temporary_name(path: Path) -> Path:
    """A hidden temporary name beside ``path`` that says who made it: ``.NAME.physgen-tmp-PID-XXXXXXXX``."""
    return path.with_name(f".{path.name}{TMP_MARK}{os.getpid()}-{uuid.uuid4().hex[:8]}")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(path: Path) -> None:
    """Delete the temporary files or directories a killed writer of ``path`` left (its process is gone)."""
    prefix = f".{path.name}{TMP_MARK}"
    for leftover in path.parent.glob(f"{prefix}*"):
        pid = leftover.name[len(prefix):].split("-")[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
            log.info("removing %s, left by a killed writer (process %s)", leftover, pid)
            if leftover.is_dir() and not leftover.is_symlink():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    leftover.unlink()


def check_free_space(path: Path, needed: int) -> None:
    """:class:`DataFileError` when the file system of ``path`` has less than ``needed`` bytes free (plus a margin)."""
    if needed <= 0:
        return
    free = shutil.disk_usage(path.parent if not path.is_dir() else path).free
    if free < needed + (1 << 20):
        raise DataFileError(f"not enough disk space: {needed / 2**20:.1f} MB to write, {free / 2**20:.1f} MB free; nothing was written", file=path)


@contextlib.contextmanager
def atomic_path(path: str | Path, needed: int = 0) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only on success.

    A failed write (a full disk included) raises :class:`DataFileError` naming ``path`` and leaves
    neither a partial ``path`` nor the temporary file; an existing ``path`` is kept. ``needed``
    bytes are checked against the free space first. Temporaries a killed writer left are removed.
    """
    path = Path(path)
    if path.parent and not path.parent.exists():
        raise DataFileError("the output directory does not exist", file=path.parent)
    if path.is_dir():
        raise DataFileError("is a directory; expected a file name to write", file=path)
    remove_stale_temporaries(path)
    check_free_space(path, needed)
    tmp = temporary_name(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except DataFileError:
        raise
    except OSError as exc:
        raise DataFileError(f"cannot write ({exc.strerror or exc}); nothing was written", file=path) from exc
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def write_hdf5_image(path: str | Path, build: Any) -> Path:
    """Write an HDF5 file atomically: ``build(h5)`` fills an in-memory file, whose bytes then go to disk.

    h5py writing straight to a full disk raises and then crashes the interpreter when the file is
    closed (an upstream bug); building the file in memory and writing its bytes with Python's own
    I/O turns a full disk into a clean :class:`DataFileError`.
    """
    import io

    import h5py

    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as h5:
        build(h5)
    image = buffer.getbuffer()
    path = Path(path)
    with atomic_path(path, needed=len(image)) as tmp, open(tmp, "wb") as fh:
        fh.write(image)
    return path


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


def available_memory() -> int | None:
    """Bytes of memory this machine can still give (Linux's MemAvailable), or None where unknown."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def check_fits_in_memory(nbytes: int, *, file: str | Path, key: str) -> None:
    """:class:`DataFileError` before reading ``nbytes`` that this machine's free memory cannot hold."""
    free = available_memory()
    if free is not None and nbytes > 0.8 * free:
        raise DataFileError(
            f"reading it whole needs {nbytes / 2**30:.1f} GiB, more than this machine's {free / 2**30:.1f} GiB free; "
            "stream it with physgen.io.iter_chunks (or read part of it with start=/stop=)",
            file=file, key=key,
        )
