"""HDF5 files from a *layout*, ``{dataset path: array}``: written whole, or appended chunk by chunk.

Each HDF5 format (CaloChallenge, CaloGAN, generic) states what it writes as a layout function of a
:class:`~physgen.data.Data`; :func:`write_layout` writes one layout atomically, :class:`HDF5Appender`
writes many (one per generated chunk) into resizable datasets, so memory holds one chunk.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from physgen.data.container import Schema
from physgen.errors import ConfigError, DataFileError
from physgen.io._common import (
    check_free_space,
    remove_stale_temporaries,
    temporary_name,
    write_hdf5_image,
)

__all__ = ["COMPRESSIONS", "HDF5Appender", "write_layout"]

#: HDF5 compression filters physgen writes with: gzip (portable, the default), lzf (faster, h5py-only), none
COMPRESSIONS = ("gzip", "lzf", None)
#: bytes per HDF5 chunk of a large dataset: big enough for the filters, small enough for h5py's chunk cache
CHUNK_BYTES = 1 << 20
#: rows per write: h5py converts dtypes (float32 → float64) one block at a time, not for the whole chunk
WRITE_ROWS = 1000


def _check_compression(compression: str | None) -> None:
    if compression not in COMPRESSIONS:
        raise ConfigError(f"compression must be one of {COMPRESSIONS}; got {compression!r}", key="compression")


def _options(arr: np.ndarray, compression: str | None) -> dict[str, Any]:
    """Compress arrays with many values per row (showers, layers), leave small columns plain."""
    per_row = int(np.prod(arr.shape[1:], dtype=np.int64)) if arr.ndim > 1 else 1
    return {"compression": compression, "shuffle": True} if compression and per_row > 8 else {}


def _chunks(arr: np.ndarray, dtype: np.dtype, rows: int | None = None) -> tuple[int, ...]:
    """About :data:`CHUNK_BYTES` of rows (at most ``rows``, where the dataset cannot grow)."""
    row = max(1, int(np.prod(arr.shape[1:], dtype=np.int64)) * dtype.itemsize)
    return (max(1, min(CHUNK_BYTES // row, 100_000, rows or 100_000)), *arr.shape[1:])


def write_layout(path: str | Path, layout: Mapping[str, np.ndarray], schema: Schema, *, dtypes: Mapping[str, Any] | None = None,
                 compression: str | None = "gzip") -> Path:
    """Write ``layout`` to ``path`` atomically, with ``schema`` as the ``physgen_schema`` attribute."""
    _check_compression(compression)

    def build(h5: Any) -> None:
        for key, arr in layout.items():
            dtype = np.dtype((dtypes or {}).get(key, arr.dtype))
            ds = h5.create_dataset(key, shape=arr.shape, dtype=dtype, chunks=_chunks(arr, dtype, len(arr)) if arr.size else None,
                                   **(_options(arr, compression) if arr.size else {}))
            for i in range(0, len(arr), WRITE_ROWS):  # h5py widens each block: no float64 copy of the whole array
                ds[i : i + WRITE_ROWS] = arr[i : i + WRITE_ROWS]
        h5.attrs["physgen_schema"] = json.dumps(schema.to_dict())

    return write_hdf5_image(path, build)


class HDF5Appender:
    """Append layouts to resizable datasets of an HDF5 file that appears at ``path`` only on :meth:`close`.

    Until then it is a hidden temporary beside ``path``; :meth:`abort` (or an exception inside a ``with``
    block) removes it, so a failed run leaves nothing at ``path``. Free space is checked before each chunk.
    """

    def __init__(self, path: str | Path, schema: Schema, *, dtypes: Mapping[str, Any] | None = None, compression: str | None = "gzip",
                 attrs: Mapping[str, Any] | None = None):
        import h5py

        _check_compression(compression)
        self.path = Path(path)
        if not self.path.parent.is_dir():
            raise DataFileError("the output directory does not exist", file=self.path.parent)
        if self.path.is_dir():
            raise DataFileError("is a directory; expected a file name to write", file=self.path)
        remove_stale_temporaries(self.path)
        self.tmp = temporary_name(self.path)
        self.schema, self.dtypes, self.compression = schema, dict(dtypes or {}), compression
        self.rows = 0
        try:
            self.raw = _GuardedFile(open(self.tmp, "w+b"))  # noqa: SIM115 (closed by close/abort)
            self.h5 = h5py.File(self.raw, "w")
        except OSError as exc:
            raise DataFileError(f"cannot create the file ({exc})", file=self.path) from exc
        self.h5.attrs["physgen_schema"] = json.dumps(schema.to_dict())
        for key, value in (attrs or {}).items():
            self.h5.attrs[key] = value

    def append(self, layout: Mapping[str, np.ndarray]) -> None:
        """Add one chunk: the same dataset paths, shapes (after the first axis) and row counts each time."""
        n = {len(a) for a in layout.values()}
        if len(n) != 1:
            raise DataFileError(f"a chunk's datasets disagree on their rows: { {k: len(a) for k, a in layout.items()} }", file=self.path)
        rows = n.pop()
        check_free_space(self.path, sum(int(a.nbytes) for a in layout.values()) // 2)
        for key, arr in layout.items():
            dtype = np.dtype(self.dtypes.get(key, arr.dtype))
            if key not in self.h5:
                if self.rows:
                    raise DataFileError(f"dataset {key!r} appears in a later chunk only", file=self.path)
                self.h5.create_dataset(key, shape=(0, *arr.shape[1:]), maxshape=(None, *arr.shape[1:]), dtype=dtype,
                                       chunks=_chunks(arr, dtype), **_options(arr, self.compression))
            ds = self.h5[key]
            if ds.shape[1:] != arr.shape[1:]:
                raise DataFileError(f"a chunk of shape {arr.shape} does not continue {ds.shape}", file=self.path, key=key)
            ds.resize(self.rows + rows, axis=0)
            for i in range(0, rows, WRITE_ROWS):
                ds[self.rows + i : self.rows + min(i + WRITE_ROWS, rows)] = arr[i : i + WRITE_ROWS]
        self.rows += rows
        self.h5.flush()
        self._check()

    def _check(self) -> None:
        if self.raw.error is not None:
            self.abort()
            raise DataFileError(f"cannot write ({self.raw.error.strerror or self.raw.error}); nothing was written", file=self.path)

    def close(self) -> Path:
        """Finish the file and rename it onto ``path``."""
        self.h5.close()
        self._check()
        self.raw.close()
        os.replace(self.tmp, self.path)
        return self.path

    def abort(self) -> None:
        """Drop the temporary file; ``path`` is left as it was."""
        with contextlib.suppress(Exception):
            self.h5.close()
        with contextlib.suppress(Exception):
            self.raw.close()
        with contextlib.suppress(FileNotFoundError):
            self.tmp.unlink()


class _GuardedFile:
    """The file object h5py writes through (its ``fileobj`` driver). A failed write (a full disk, a file-size limit) is
    recorded and later writes dropped, instead of failing inside HDF5, which then crashes the interpreter when the file
    closes; the appender checks :attr:`error` after each chunk and removes the file."""

    def __init__(self, fh: Any):
        self.fh, self.error = fh, None

    def write(self, data: Any) -> int:
        if self.error is None:
            try:
                return self.fh.write(data)
            except OSError as exc:
                self.error = exc
        return len(memoryview(data))

    def truncate(self, size: int | None = None) -> int:
        if self.error is None:
            try:
                return self.fh.truncate(size)
            except OSError as exc:
                self.error = exc
        return size or 0

    def flush(self) -> None:
        if self.error is None:
            try:
                self.fh.flush()
            except OSError as exc:
                self.error = exc

    def __getattr__(self, name: str) -> Any:  # read, readinto, seek, tell, close
        return getattr(self.fh, name)
