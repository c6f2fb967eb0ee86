"""Streaming I/O for generation: condition columns read chunk by chunk, events appended chunk by chunk.

:func:`open_writer` gives an :class:`EventWriter` whose memory is one chunk whatever the total: HDF5
formats grow resizable, chunked, compressed datasets; ROOT grows a TTree with uproot's ``extend``;
spins append text rows. The file appears at its path only when the writer closes, so a failed run
leaves nothing there. :func:`output_format` picks the format from the path's suffix.
:func:`iter_columns` streams named columns (conditions, event IDs) of a ROOT or HDF5 file.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from physgen.data.container import Data, Schema
from physgen.errors import (
    ConfigError,
    DataFileError,
    InvalidDataError,
    MissingKeyError,
    PhysgenError,
)
from physgen.io._common import (
    InvalidContentError,
    check_values,
    chunk_bounds,
    remove_stale_temporaries,
    sniff,
    temporary_name,
)

__all__ = ["SUFFIXES", "EventWriter", "iter_columns", "open_writer", "output_format"]

#: output suffixes and the file family each means
SUFFIXES = {".h5": "hdf5", ".hdf5": "hdf5", ".hdf": "hdf5", ".root": "root", ".txt": "spins"}
_HDF5_FORMATS = ("calochallenge", "calogan", "hdf5")


def _family(fmt: str) -> str:
    return "hdf5" if fmt in _HDF5_FORMATS else fmt


def output_format(path: str | Path, schema: Schema, format: str | None = None) -> str:
    """The format to write ``path`` in: its suffix decides the family (HDF5, ROOT, text), the data its flavour.

    ``.h5``/``.hdf5`` take the format the model's data came from when that is HDF5 (CaloChallenge,
    CaloGAN), else CaloChallenge for polar showers and generic HDF5 for the rest; ``.root`` a TTree;
    ``.txt`` spin rows. A ``format`` that contradicts the suffix is a :class:`ConfigError`; another
    suffix gets the format the data came from, else HDF5 (text for spins).
    """
    from physgen.io import FORMATS, _check_format

    suffix = Path(path).suffix.lower()
    family = SUFFIXES.get(suffix)
    if format is not None:
        _check_format(format)
        if family is not None and _family(format) != family:
            raise ConfigError(f"{str(path)!r} ends in {suffix!r}, a {family.upper() if family != 'spins' else 'text'} file, but the format "
                              f"asked for is {format!r}; change the suffix or the format", key="format")
        return format
    if family is None and schema.source_format in FORMATS:  # a suffix that says nothing: the data's own format
        return str(schema.source_format)
    if family is None:
        family = "spins" if schema.kind == "spins" else "hdf5"
    if (family == "spins") != (schema.kind == "spins"):
        raise ConfigError(f"{str(path)!r}: text files ({suffix}) hold spin samples; {schema.kind} data go to .h5 or .root"
                          if family == "spins" else f"{str(path)!r}: spin samples go to a .txt file", key="format")
    if family != "hdf5":
        return family
    if schema.source_format in _HDF5_FORMATS:
        return str(schema.source_format)
    if schema.kind == "calorimeter" and schema.geometry is not None and schema.geometry.kind == "polar":
        return "calochallenge"
    return "hdf5"


class EventWriter:
    """Write ``Data`` chunk by chunk (:meth:`append`) into one file, renamed onto ``path`` by :meth:`close`.

    Use it as a context manager: an exception inside the block removes the temporary file and
    leaves ``path`` untouched. ``extra`` columns (event IDs, any per-event numbers) are written
    beside the events with their own dtype: top-level HDF5 datasets, or ROOT branches.
    """

    def __init__(self, path: str | Path, format: str, *, tree: str | None = None, compression: str | None = "gzip"):
        self.path, self.format, self.tree, self.compression = Path(path), format, tree, compression
        self.rows = 0
        self._sink: Any = None
        self._extra: tuple[str, ...] | None = None
        if not self.path.parent.is_dir():
            raise DataFileError("the output directory does not exist", file=self.path.parent)
        if self.path.is_dir():
            raise DataFileError("is a directory; expected a file name to write", file=self.path)

    def __enter__(self) -> EventWriter:
        return self

    def __exit__(self, kind: Any, exc: Any, tb: Any) -> None:
        if kind is None:
            self.close()
        else:
            self.abort()

    def append(self, data: Data, extra: Mapping[str, np.ndarray] | None = None) -> None:
        """Add ``data`` (and ``extra`` columns, one value per event, the same names every chunk)."""
        extra = {k: np.asarray(v) for k, v in (extra or {}).items()}
        if any(v.shape[:1] != (len(data),) for v in extra.values()):
            raise InvalidDataError(f"extra columns need one value per event ({len(data)}); got { {k: v.shape for k, v in extra.items()} }")
        if self._extra is None:
            self._extra = tuple(extra)
        elif tuple(extra) != self._extra:
            raise InvalidDataError(f"every chunk must carry the extra columns {list(self._extra)}; got {list(extra)}")
        if self._sink is None:
            self._sink = self._open(data.schema)
        columns, stored = self._layout(data, extra)
        if stored is not None:  # ROOT showers: the schema record write_root also stores beside the tree
            self._sink.stored = stored
        self._sink.append(columns)
        self.rows += len(data)

    def _layout(self, data: Data, extra: Mapping[str, np.ndarray]) -> tuple[dict[str, Any], dict[str, Any] | None]:
        from physgen.io.calochallenge import calochallenge_layout
        from physgen.io.calogan import calogan_layout
        from physgen.io.hdf5 import hdf5_layout
        from physgen.io.root import root_branches

        stored = None
        if self.format == "root":
            branches, stored = root_branches(data)
        elif self.format == "spins":
            branches = {"x": data.x.numpy()}
        else:
            branches = {"calochallenge": calochallenge_layout, "calogan": calogan_layout, "hdf5": hdf5_layout}[self.format](data)
        clash = sorted(set(branches) & set(extra))
        if clash:
            raise InvalidDataError(f"extra columns {clash} would overwrite the events' own {'branches' if self.format == 'root' else 'datasets'}; rename them")
        return {**branches, **extra}, stored

    def _open(self, schema: Schema) -> Any:
        if self.format == "root":
            return _RootSink(self.path, self.tree or str(schema.meta.get("tree", "events")))
        if self.format == "spins":
            return _TextSink(self.path)
        from physgen.io.calochallenge import SHOWER_KEY
        from physgen.io.layout import HDF5Appender

        dtypes = {SHOWER_KEY: np.float64} if self.format == "calochallenge" else {}
        return HDF5Appender(self.path, schema, dtypes=dtypes, compression=self.compression)

    def close(self) -> Path:
        """Finish the file and rename it onto ``path``; a writer that got no events is an error."""
        if self._sink is None:
            raise InvalidDataError(f"no events were written to {str(self.path)!r}; nothing was created")
        try:
            return self._sink.close()
        except PhysgenError:
            self._sink.abort()
            raise
        except OSError as exc:
            self._sink.abort()
            raise DataFileError(f"cannot finish the file ({exc}); nothing was written", file=self.path) from exc

    def abort(self) -> None:
        """Drop what was written; ``path`` keeps whatever it held before."""
        if self._sink is not None:
            self._sink.abort()


class _RootSink:
    """A TTree grown with uproot's ``extend``, one basket per branch and chunk, in a temporary file."""

    def __init__(self, path: Path, tree: str):
        import uproot

        self.path, self.tree = path, tree
        remove_stale_temporaries(path)
        self.tmp = temporary_name(path)
        self.file = uproot.recreate(self.tmp)
        self.stored: dict[str, Any] | None = None

    def append(self, branches: dict[str, Any]) -> None:
        from physgen.io._common import check_free_space
        from physgen.io.root import branch_types

        check_free_space(self.path, sum(int(getattr(v, "nbytes", 0)) for v in branches.values()) // 2)
        try:
            if self.tree not in self.file:
                self.file.mktree(self.tree, branch_types(branches))
            self.file[self.tree].extend(branches)
        except OSError:
            raise
        except Exception as exc:  # uproot's own errors for names or types it cannot write
            raise DataFileError(f"cannot write as a ROOT TTree ({exc}); nothing was written", file=self.path, key=self.tree) from exc

    def close(self) -> Path:
        import json

        from physgen.io.root import SCHEMA_KEY

        if self.stored is not None:
            self.file[f"{self.tree}_{SCHEMA_KEY}"] = json.dumps(self.stored)
        self.file.close()
        os.replace(self.tmp, self.path)
        return self.path

    def abort(self) -> None:
        with contextlib.suppress(Exception):
            self.file.close()
        with contextlib.suppress(FileNotFoundError):
            self.tmp.unlink()


class _TextSink:
    """Spin rows (0/1 separated by spaces) appended to a temporary text file."""

    def __init__(self, path: Path):
        remove_stale_temporaries(path)
        self.path, self.tmp = path, temporary_name(path)
        self.fh = open(self.tmp, "w")  # noqa: SIM115 (closed by close/abort)

    def append(self, columns: dict[str, Any]) -> None:
        if len(columns) != 1:
            raise InvalidDataError(f"spin text files hold the spins only; got extra columns {sorted(set(columns) - {'x'})}")
        np.savetxt(self.fh, columns["x"].astype(np.int8), fmt="%d", delimiter=" ")

    def close(self) -> Path:
        self.fh.close()
        os.replace(self.tmp, self.path)
        return self.path

    def abort(self) -> None:
        self.fh.close()
        with contextlib.suppress(FileNotFoundError):
            self.tmp.unlink()


def open_writer(path: str | Path, schema: Schema, *, format: str | None = None, tree: str | None = None,
                compression: str | None = "gzip") -> EventWriter:
    """An :class:`EventWriter` for ``path`` in :func:`output_format` ``(path, schema, format)``.

    Args:
        path: the output file; it appears only when the writer closes.
        schema: the events' schema (the model's).
        format: force a format (it must agree with the suffix).
        tree: ROOT: the TTree's name (default: the one the model's data came from, else ``events``).
        compression: HDF5: ``"gzip"`` (default), ``"lzf"`` (faster, h5py-only) or ``None``.
    """
    from physgen.io.layout import _check_compression

    _check_compression(compression)
    return EventWriter(path, output_format(path, schema, format), tree=tree, compression=compression)


#: CaloChallenge's dataset for the condition physgen calls ``incident_energy``
_ALIASES = {"incident_energy": "incident_energies"}


def iter_columns(path: str | Path, columns: Sequence[str], *, chunk_size: int = 10_000, tree: str | None = None,
                 start: int = 0, stop: int | None = None) -> Iterator[dict[str, np.ndarray]]:
    """Stream ``columns`` (one value per event; ROOT branches or HDF5 datasets) in chunks of ``chunk_size`` rows.

    Each chunk maps a column to its values, in the file's dtype. A name absent from the file is a
    :class:`~physgen.errors.MissingKeyError` listing what the file holds; a list-valued branch, a
    dataset of another length or a NaN in a float column is an :class:`InvalidContentError`.
    ``incident_energy`` also finds a CaloChallenge file's ``incident_energies``.
    """
    if not columns:
        raise InvalidDataError("name at least one column to read")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise InvalidDataError(f"chunk_size must be a whole number ≥ 1; got {chunk_size!r}")
    if sniff(path) == "root":
        yield from _root_columns(path, columns, chunk_size, tree, start, stop)
    else:
        yield from _hdf5_columns(path, columns, chunk_size, start, stop)


def _checked(values: np.ndarray, path: str | Path, key: str) -> np.ndarray:
    if values.dtype.kind == "f":
        check_values(values, file=path, key=key)
    elif values.dtype.kind not in "biu":
        raise InvalidContentError(f"expected numbers; got dtype {values.dtype}", file=path, key=key)
    return values


def _root_columns(path: str | Path, columns: Sequence[str], chunk_size: int, tree: str | None, start: int, stop: int | None) -> Iterator[dict[str, np.ndarray]]:
    from physgen.io.root import _open_tree

    f, src = _open_tree(path, tree)
    with f:
        for name in columns:
            if name not in src.fields:
                raise MissingKeyError(file=path, key=name, available=list(src.fields), what="branch")
            if src.fields[name].layout != "scalar":
                raise InvalidContentError(f"expected one number per event; the branch holds {src.fields[name].typename}", file=path, key=name)
        stop = src.num_entries if stop is None else min(stop, src.num_entries)
        try:
            for arrays in src.obj.iterate(list(columns), step_size=chunk_size, entry_start=start, entry_stop=stop, library="np"):
                yield {name: _checked(np.asarray(arrays[name]), path, name) for name in columns}
        except PhysgenError:
            raise
        except Exception as exc:
            raise DataFileError(f"cannot read the branches (truncated or corrupt?): {type(exc).__name__}: {exc}", file=path, key=src.name) from exc


def _hdf5_columns(path: str | Path, columns: Sequence[str], chunk_size: int, start: int, stop: int | None) -> Iterator[dict[str, np.ndarray]]:
    from physgen.io.hdf5 import dataset_paths, get_dataset, open_hdf5, read_rows

    with open_hdf5(path) as h5:
        held = dataset_paths(h5)
        keys = {}
        for name in columns:
            key = name if name in held or name not in _ALIASES else _ALIASES[name]
            if key not in held:
                raise MissingKeyError(file=path, key=name, available=held, what="dataset")
            keys[name] = key
        sets = {name: get_dataset(h5, key, path) for name, key in keys.items()}
        n = {ds.shape[0] if ds.ndim else 0 for ds in sets.values()}
        if len(n) != 1:
            raise InvalidContentError(f"the columns have different lengths: { {k: ds.shape for k, ds in sets.items()} }", file=path, key=",".join(columns))
        total = n.pop()
        for name, ds in sets.items():
            if ds.ndim not in (1, 2) or ds.ndim == 2 and ds.shape[1] != 1:
                raise InvalidContentError(f"expected one number per event, shape ({total},) or ({total}, 1); got {ds.shape}", file=path, key=keys[name])
        stop = total if stop is None else min(stop, total)
        for a, b in chunk_bounds(max(stop - start, 0), chunk_size):
            yield {name: _checked(read_rows(ds, start + a, start + b, path, keys[name]).reshape(-1), path, keys[name]) for name, ds in sets.items()}


def count_rows(path: str | Path, column: str, tree: str | None = None) -> int:
    """Rows of ``column`` in ``path`` from the file's metadata (ROOT entries or the HDF5 dataset's length)."""
    if sniff(path) == "root":
        from physgen.io.root import count_entries

        return count_entries(path, tree)
    from physgen.io.hdf5 import dataset_paths, get_dataset, open_hdf5

    with open_hdf5(path) as h5:
        key = column if column in dataset_paths(h5) or column not in _ALIASES else _ALIASES[column]
        return int(get_dataset(h5, key, path).shape[0])
