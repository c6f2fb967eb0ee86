"""Adapters: read any supported file into :class:`~physgen.data.Data`, and write back.

The format is detected from the file's content (HDF5 and ROOT signatures, then
the dataset names inside an HDF5 file), not from its extension:

==================  =====================================================
``calochallenge``   HDF5 with ``incident_energies`` and ``showers``
``calogan``         HDF5 with ``layer_0``, ``layer_1``, ``layer_2``, ``energy``
``hdf5``            any other HDF5; name the datasets with ``x_key``/``cond_key``
``root``            ROOT TTree through uproot (flat or jagged branches)
``spins``           plain text, one 0/1 row per measured spin configuration
==================  =====================================================
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from physgen.data.container import Data
from physgen.errors import ConfigError, FileFormatError, UnknownNameError
from physgen.io._common import InvalidContentError, atomic_path, sniff
from physgen.io.calochallenge import iter_calochallenge, read_calochallenge, write_calochallenge
from physgen.io.calogan import iter_calogan, read_calogan, write_calogan
from physgen.io.hdf5 import (
    dataset_paths,
    get_dataset,
    iter_hdf5,
    open_hdf5,
    read_hdf5,
    visit_safely,
    write_hdf5,
)
from physgen.io.root import iter_root, read_root, write_root
from physgen.io.spins import read_spins, write_spins
from physgen.io.stream import EventWriter, iter_columns, open_writer, output_format

__all__ = [
    "FORMATS",
    "detect_format",
    "read",
    "iter_chunks",
    "write",
    "read_calochallenge",
    "iter_calochallenge",
    "write_calochallenge",
    "read_calogan",
    "iter_calogan",
    "write_calogan",
    "read_hdf5",
    "iter_hdf5",
    "write_hdf5",
    "read_root",
    "iter_root",
    "write_root",
    "read_spins",
    "write_spins",
    "InvalidContentError",
    "atomic_path",
    "load_default",
    "describe",
    "EventWriter",
    "open_writer",
    "output_format",
    "iter_columns",
]

FORMATS = ("calochallenge", "calogan", "hdf5", "root", "spins")


def detect_format(path: str | Path) -> str:
    """One of :data:`FORMATS`, from the file's content.

    Raises:
        FileFormatError: empty, truncated or unsupported files.
    """
    family = sniff(path)
    if family == "root":
        return "root"
    if family == "text":
        return "spins"
    from physgen.io.calochallenge import is_calochallenge
    from physgen.io.calogan import is_calogan

    with open_hdf5(path) as h5:
        if visit_safely(path, lambda: is_calochallenge(h5)):
            return "calochallenge"
        if visit_safely(path, lambda: is_calogan(h5)):
            return "calogan"
        if not dataset_paths(h5):
            raise FileFormatError("the HDF5 file holds no datasets", file=path)
    return "hdf5"


def _check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise UnknownNameError("format", fmt, FORMATS)


def read(path: str | Path, format: str | None = None, **kwargs: Any) -> Data:
    """Read a file into :class:`Data`.

    Args:
        path: the file.
        format: one of :data:`FORMATS`; detected from the content when omitted.
        **kwargs: passed to the format's reader (``binning=`` for CaloChallenge,
            ``x_key=``/``cond_key=`` for generic HDF5, ``tree=``/``branches=``/
            ``max_length=`` for ROOT).

    Example:
        >>> load_default().x.shape[1]
        768
    """
    fmt = format or detect_format(path)
    _check_format(fmt)
    _check_options(fmt, kwargs, path)
    if fmt == "calochallenge":
        return read_calochallenge(path, **kwargs)
    if fmt == "calogan":
        return read_calogan(path, **kwargs)
    if fmt == "root":
        return read_root(path, **kwargs)
    if fmt == "spins":
        return read_spins(path, **kwargs)
    if "x_key" not in kwargs:
        with open_hdf5(path) as h5:
            keys = dataset_paths(h5)
        raise FileFormatError(
            f"generic HDF5 layout; name the datasets with x_key= (and cond_key=); it holds {keys}", file=path
        )
    return read_hdf5(path, **kwargs)


def iter_chunks(path: str | Path, chunk_size: int = 10_000, format: str | None = None, **kwargs: Any) -> Iterator[Data]:
    """Stream a file as ``Data`` chunks of at most ``chunk_size`` events (for files larger than memory)."""
    fmt = format or detect_format(path)
    _check_format(fmt)
    _check_options(fmt, kwargs, path)
    if fmt == "calochallenge":
        return iter_calochallenge(path, chunk_size=chunk_size, **kwargs)
    if fmt == "calogan":
        return iter_calogan(path, chunk_size=chunk_size, **kwargs)
    if fmt == "root":
        return iter_root(path, chunk_size=chunk_size, **kwargs)
    if fmt == "spins":
        return read_spins(path, **kwargs).iter_batches(chunk_size)
    return iter_hdf5(path, chunk_size=chunk_size, **kwargs)


_READERS = {"calochallenge": iter_calochallenge, "calogan": iter_calogan, "root": iter_root, "spins": read_spins, "hdf5": iter_hdf5}


def _check_options(fmt: str, kwargs: dict[str, Any], path: str | Path) -> None:
    """Reader options meant for another format fail with the valid ones named, not a TypeError."""
    import inspect

    valid = [n for n, p in inspect.signature(_READERS[fmt]).parameters.items() if n not in ("path", "chunk_size") and p.kind != p.VAR_KEYWORD]
    for key in kwargs:
        if key not in valid:
            raise ConfigError.unknown(f"reading {str(path)!r} as {fmt}", key, valid)


def describe(path: str | Path, format: str | None = None, max_events: int = 2_000, **kwargs: Any) -> dict[str, Any]:
    """What a file holds (``physgen info``), from its metadata and its first ``max_events`` events only.

    The number of events comes from the file's metadata, so a file far larger than memory (or one
    declaring an absurd size) is described without being read.
    """
    fmt = format or detect_format(path)
    _check_format(fmt)
    _check_options(fmt, kwargs, path)
    total = _count_events(path, fmt, kwargs)
    if fmt == "hdf5" and "x_key" not in kwargs:
        return read(path, format=fmt, **kwargs).summary()  # raises, naming the datasets
    first = next(iter(iter_chunks(path, chunk_size=max_events, format=fmt, **kwargs)))
    summary = first.summary()
    summary["n_events"] = total
    if total > len(first):
        summary["summarised_events"] = len(first)
    return summary


def _count_events(path: str | Path, fmt: str, kwargs: dict[str, Any]) -> int:
    if fmt in ("calochallenge", "calogan", "hdf5"):
        key = {"calochallenge": "showers", "calogan": "energy"}.get(fmt, kwargs.get("x_key"))
        if key is None:
            return 0
        with open_hdf5(path) as h5:
            ds = get_dataset(h5, key, path)
            return int(ds.shape[0]) if ds.ndim else 0
    if fmt == "root":
        from physgen.io.root import count_entries

        return count_entries(path, kwargs.get("tree"))
    return len(read_spins(path))


def write(data: Data, path: str | Path, format: str | None = None, **kwargs: Any) -> Path:
    """Write ``data`` to ``path`` in the format its suffix names (:func:`~physgen.io.stream.output_format`).

    ``.root`` writes a ROOT TTree, ``.h5``/``.hdf5`` the HDF5 format the data came from (else
    CaloChallenge for polar showers, generic HDF5 for the rest), ``.txt`` spin rows; another suffix
    keeps the data's own format. A ``format`` that contradicts the suffix raises :class:`ConfigError`.
    Writes are atomic: a temporary file renamed on success.
    """
    from physgen.io.stream import output_format

    fmt = output_format(path, data.schema, format)
    writer = {
        "calochallenge": write_calochallenge,
        "calogan": write_calogan,
        "hdf5": write_hdf5,
        "root": write_root,
        "spins": write_spins,
    }[fmt]
    return writer(data, path, **kwargs)


def load_default() -> Data:
    """The embedded default sample as :class:`~physgen.data.Data`: 2,000 Geant4 photon showers in PbWO4 (768 voxels, MeV).

    The incident energy is in ``cond`` (MeV); ``aux["geant4_cpu_s"]`` holds Geant4's CPU time
    per event on the machine that simulated it (``datasets/pbwo4_gamma_2k.md`` is its card).
    """
    from physgen.data import default_path

    return read_calochallenge(default_path())
