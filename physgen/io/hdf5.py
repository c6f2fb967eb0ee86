"""Generic HDF5: the user names the datasets holding ``x`` and ``cond``.

Also the HDF5 helpers the CaloChallenge and CaloGAN adapters share.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from physgen.data.container import Data, Kind, Schema
from physgen.errors import FileFormatError, InvalidDataError, MissingKeyError
from physgen.io._common import (
    InvalidContentError,
    check_fits_in_memory,
    check_values,
    chunk_bounds,
)

__all__ = ["read_hdf5", "write_hdf5", "iter_hdf5", "open_hdf5", "dataset_paths"]


def open_hdf5(path: str | Path) -> h5py.File:
    """Open read-only; a truncated or corrupt file becomes :class:`FileFormatError`."""
    try:
        return h5py.File(path, "r")
    except (OSError, RuntimeError, ValueError) as exc:
        raise FileFormatError(f"cannot open as HDF5 (truncated or corrupt?): {exc}", file=path) from exc


def visit_safely(path: str | Path, action: Any) -> Any:
    """``action()`` on an open file, with h5py's errors on corrupt metadata turned into :class:`FileFormatError`."""
    try:
        return action()
    except (OSError, RuntimeError, KeyError) as exc:
        raise FileFormatError(f"cannot read the file's structure (corrupt metadata?): {exc}", file=path) from exc


def dataset_paths(h5: h5py.File) -> list[str]:
    """Every dataset's path inside the file, e.g. ``["aux/geant4_cpu_s", "showers"]``."""
    found: list[str] = []
    visit_safely(h5.filename, lambda: h5.visititems(lambda name, obj: found.append(name) if isinstance(obj, h5py.Dataset) else None))
    return found


def get_dataset(h5: h5py.File, key: str, path: str | Path) -> h5py.Dataset:
    obj = visit_safely(path, lambda: h5.get(key))
    if not isinstance(obj, h5py.Dataset):
        raise MissingKeyError(file=path, key=key, available=dataset_paths(h5))
    return obj


def read_rows(ds: h5py.Dataset, start: int, stop: int, path: str | Path, key: str) -> np.ndarray:
    """Rows ``start:stop`` converted to float32 during the read (no float64 copy)."""
    if ds.dtype.kind not in "biuf":
        raise InvalidContentError(f"expected a numeric dataset; got dtype {ds.dtype}", file=path, key=key)
    check_fits_in_memory((stop - start) * int(np.prod(ds.shape[1:], dtype=np.int64)) * 4, file=path, key=key)
    try:
        return ds.astype(np.float32)[start:stop]
    except (OSError, RuntimeError) as exc:  # chunks past the end of a truncated file, corrupt chunk indices
        raise FileFormatError(f"cannot read rows {start}:{stop} (truncated or corrupt?): {exc}", file=path, key=key) from exc


def _n_rows(ds: h5py.Dataset, path: str | Path, key: str) -> int:
    """Events in a dataset, after checking it is a numeric array with ≥ 1 row."""
    if ds.dtype.kind not in "biuf":
        raise InvalidContentError(f"expected a numeric dataset; got dtype {ds.dtype}", file=path, key=key)
    if ds.ndim == 0:
        raise InvalidContentError("expected an array with one row per event; got a scalar", file=path, key=key)
    if ds.shape[0] == 0:
        raise InvalidContentError("the dataset holds no events (0 rows)", file=path, key=key)
    return int(ds.shape[0])


def iter_hdf5(
    path: str | Path,
    x_key: str,
    cond_key: str | None = None,
    *,
    kind: Kind = "event",
    chunk_size: int = 10_000,
    feature_names: tuple[str, ...] | None = None,
    units: str = "",
    start: int = 0,
    stop: int | None = None,
) -> Iterator[Data]:
    """Stream a generic HDF5 file as ``Data`` chunks of ``chunk_size`` rows (of rows ``start:stop`` only, if given)."""
    with open_hdf5(path) as h5:
        xds = get_dataset(h5, x_key, path)
        n = _n_rows(xds, path, x_key)
        cds = get_dataset(h5, cond_key, path) if cond_key else None
        if cds is not None and cds.shape[:1] != (n,):
            raise InvalidContentError(
                f"expected {n} rows to match {x_key!r}; got shape {cds.shape}", file=path, key=cond_key
            )
        schema = Schema(
            kind=kind,
            feature_names=feature_names,
            units=units,
            cond_names=(cond_key,) if cond_key and (cds is None or cds.ndim == 1 or cds.shape[1] == 1) else (),
            source_format="hdf5",
            meta={"x_key": x_key, "cond_key": cond_key},
        )
        first, last = max(0, start), n if stop is None else min(stop, n)
        for a, b in chunk_bounds(max(0, last - first), chunk_size):
            x = read_rows(xds, first + a, first + b, path, x_key)
            if x.ndim == 1:
                x = x[:, None]
            check_values(x, file=path, key=x_key, nonnegative=(kind == "calorimeter"))
            cond = None
            if cds is not None:
                cond = read_rows(cds, first + a, first + b, path, cond_key)  # type: ignore[arg-type]
                check_values(cond, file=path, key=cond_key)  # type: ignore[arg-type]
            yield _build(path, x_key, x, schema, cond)


def read_hdf5(path: str | Path, x_key: str, cond_key: str | None = None, **kwargs: Any) -> Data:
    """Read a generic HDF5 file whole. See :func:`iter_hdf5` for the arguments."""
    parts = list(iter_hdf5(path, x_key, cond_key, chunk_size=1 << 62, **kwargs))
    return parts[0]


def _build(path: str | Path, key: str, x: np.ndarray, schema: Schema, cond: Any = None, **kw: Any) -> Data:
    try:
        return Data(x, schema, cond=cond, **kw)
    except InvalidDataError as exc:
        raise InvalidContentError(str(exc), file=path, key=key) from exc


def hdf5_layout(data: Data, x_key: str = "x", cond_key: str = "cond") -> dict[str, np.ndarray]:
    """Generic HDF5: ``x`` (and ``cond`` [N, C], ``mask``) as float32, ``aux`` arrays in the ``aux`` group."""
    out = {x_key: data.x.numpy()}
    if data.cond is not None:
        out[cond_key] = data.cond.numpy()
    if data.mask is not None:
        out["mask"] = data.mask.numpy()
    out.update({f"aux/{k}": v for k, v in data.aux.items()})
    return out


def write_hdf5(data: Data, path: str | Path, x_key: str = "x", cond_key: str = "cond") -> Path:
    """Write :func:`hdf5_layout` atomically, ``x`` compressed."""
    from physgen.io.layout import write_layout

    return write_layout(path, hdf5_layout(data, x_key, cond_key), data.schema)
