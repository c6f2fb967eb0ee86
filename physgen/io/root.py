"""ROOT TTrees through uproot: flat branches → feature columns, jagged → padded + mask.

Flat branches become ``x`` ``[N, F]``. Jagged branches (``Muon_Px``, ...) become
``x`` ``[N, P, F]`` padded with zeros to ``max_length`` entries, with
``mask`` ``[N, P]`` marking the real ones; longer lists are clipped (the schema's
``meta["n_clipped"]`` counts the events that lost entries). Flat branches can
ride along as conditions with ``cond_branches``.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import awkward as ak
import numpy as np
import uproot

from physgen.data.container import Data, Kind, Schema
from physgen.errors import (
    DataFileError,
    FileFormatError,
    InvalidDataError,
    MissingKeyError,
    PhysgenError,
)
from physgen.io._common import InvalidContentError, atomic_path, check_values

__all__ = ["count_entries", "read_root", "iter_root", "write_root"]

log = logging.getLogger(__name__)

#: the most memory padding jagged lists may take without ``max_length`` (bytes)
PADDING_LIMIT = 2 * 2**30


SCHEMA_KEY = "physgen_schema"
"""A ``TObjString`` physgen writes next to a tree: JSON of the tree's schema and which branches hold what."""


@dataclass(frozen=True)
class _Field:
    """What a branch (TTree) or top-level field (RNTuple) holds per event."""

    layout: Literal["scalar", "array", "jagged", "other"]
    width: int = 1  # values per event of a scalar or fixed-size array
    typename: str = ""


class _Source:
    """A TTree or an RNTuple, read through uproot with one interface."""

    def __init__(self, path: str | Path, obj: Any, name: str, is_ntuple: bool):
        self.path, self.obj, self.name, self.is_ntuple = path, obj, name, is_ntuple
        self.num_entries = int(obj.num_entries)
        self.fields = self._ntuple_fields() if is_ntuple else {b: self._branch_field(obj[b]) for b in obj.keys()}

    @staticmethod
    def _branch_field(branch: Any) -> _Field:
        interp = branch.interpretation
        if isinstance(interp, uproot.interpretation.jagged.AsJagged):
            numeric = isinstance(interp.content, uproot.interpretation.numerical.AsDtype)
            return _Field("jagged" if numeric else "other", 1, branch.typename)
        if not isinstance(interp, uproot.interpretation.numerical.AsDtype):
            return _Field("other", 1, branch.typename)
        shape = tuple(getattr(interp, "inner_shape", ()) or ())
        return _Field("array" if shape else "scalar", int(np.prod(shape)) if shape else 1, branch.typename)

    def _ntuple_fields(self) -> dict[str, _Field]:
        if self.num_entries == 0:
            return {k: _Field("other") for k in self.obj.keys()}
        try:
            first = self.obj.arrays(entry_stop=1)
        except Exception as exc:
            raise FileFormatError(f"cannot read the RNTuple (truncated or corrupt?): {exc}", file=self.path, key=self.name) from exc
        out = {}
        for k in first.fields:
            layout = first[k].layout
            kind: Literal["scalar", "array", "jagged", "other"] = "other"
            width = 1
            if isinstance(layout, ak.contents.NumpyArray) and layout.data.dtype.kind in "biuf":
                kind, width = ("array", int(np.prod(layout.data.shape[1:]))) if layout.data.ndim > 1 else ("scalar", 1)
            elif isinstance(layout, ak.contents.RegularArray) and isinstance(layout.content, ak.contents.NumpyArray):
                kind, width = "array", int(layout.size)
            elif isinstance(layout, ak.contents.ListOffsetArray | ak.contents.ListArray) and isinstance(layout.content, ak.contents.NumpyArray):
                kind = "jagged"
            out[k] = _Field(kind, width, str(first[k].type.content))
        return out

    def iterate(self, names: list[str], step: int) -> Iterator[Any]:
        return self.obj.iterate(names, step_size=step, library="ak")  # TTrees and RNTuples alike


def _open_tree(path: str | Path, tree: str | None) -> tuple[Any, _Source]:
    try:
        f = uproot.open(path)
        classes = f.classnames()
    except Exception as exc:  # uproot raises several types for broken files
        raise FileFormatError(f"cannot open as ROOT (truncated or corrupt?): {exc}", file=path) from exc
    trees = sorted({k.split(";")[0] for k, c in classes.items() if c in ("TTree", "TNtuple")})
    ntuples = sorted({k.split(";")[0] for k, c in classes.items() if "RNTuple" in c})
    both = sorted(trees + ntuples)
    if tree is None:
        if len(both) != 1:
            f.close()
            if not both:
                objects = ", ".join(f"{k.split(';')[0]} ({c})" for k, c in classes.items()) or "none"
                raise FileFormatError(f"holds no TTree or RNTuple (objects: {objects})", file=path)
            raise DataFileError(f"holds {len(both)} trees ({', '.join(both)}); name one with tree=", file=path, key="tree")
        tree = both[0]
    if tree not in both:
        f.close()
        raise MissingKeyError(file=path, key=tree, available=both, what="TTree or RNTuple")
    try:
        return f, _Source(path, f[tree], tree, tree in ntuples)
    except PhysgenError:
        f.close()
        raise
    except Exception as exc:
        f.close()
        raise FileFormatError(f"cannot read {'RNTuple' if tree in ntuples else 'TTree'} (truncated or corrupt?): {exc}", file=path, key=tree) from exc


def count_entries(path: str | Path, tree: str | None = None) -> int:
    """Entries of the file's tree (or ``tree``), from its metadata."""
    f, src = _open_tree(path, tree)
    with f:
        return src.num_entries


def _stored_schema(f: Any, path: str | Path, tree: str) -> dict[str, Any] | None:
    """The schema physgen wrote beside ``tree``, if it did."""
    key = f"{tree}_{SCHEMA_KEY}"
    if key not in {k.split(";")[0] for k in f.keys()}:
        return None
    try:
        stored = json.loads(str(f[key]))
        return {"x_branch": str(stored["x_branch"]), "cond_branches": [str(c) for c in stored["cond_branches"]],
                "schema": Schema.from_dict(stored["schema"])}
    except Exception as exc:
        raise FileFormatError(f"the stored {key} is not valid ({exc}); pass branches= to read the tree", file=path, key=key) from exc


def _columns(src: _Source, branches: Sequence[str]) -> list[str]:
    """Feature names: a branch's own, or ``name[i]`` for each value of a fixed-size array branch."""
    out = []
    for b in branches:
        fld = src.fields[b]
        out += [b] if fld.layout != "array" else [f"{b}[{i}]" for i in range(fld.width)]
    return out


def _resolve(path: str | Path, src: _Source, branches: Sequence[str] | None, cond_branches: Sequence[str]) -> tuple[list[str], bool]:
    names = list(src.fields)
    if branches is None:
        branches = [b for b in names if src.fields[b].layout in ("scalar", "array") and b not in cond_branches]
    for b in list(branches) + list(cond_branches):
        if b not in names:
            raise MissingKeyError(file=path, key=b, available=names, what="branch")
        if src.fields[b].layout == "other":
            what = "RNTuple field" if src.is_ntuple else "branch"
            raise InvalidContentError(f"expected a numeric {what} (a number, a fixed-size array of numbers or a list of numbers); "
                                      f"its type is {src.fields[b].typename}", file=path, key=b)
    if not branches:
        raise InvalidContentError("no numeric flat branches to read; name some with branches=", file=path)
    jagged = [src.fields[b].layout == "jagged" for b in branches]
    if any(jagged) and not all(jagged):
        flat = [b for b, j in zip(branches, jagged, strict=True) if not j]
        raise InvalidDataError(
            f"file {str(path)!r}: branches mix flat {flat} and jagged ones; read them separately or pass "
            "the flat ones as cond_branches"
        )
    for b in cond_branches:
        if src.fields[b].layout != "scalar":
            raise InvalidContentError("condition branches must hold one value per event", file=path, key=b)
    return list(branches), all(jagged)


def _to_data(
    path: str | Path,
    arrays: Mapping[str, Any],
    branches: list[str],
    cond_branches: Sequence[str],
    jagged: bool,
    max_length: int | None,
    schema_base: dict[str, Any],
) -> Data:
    meta = dict(schema_base.pop("meta"))
    mask = None
    if jagged:
        counts = [np.asarray(ak.num(arrays[b], axis=1)) for b in branches]
        for b, c in zip(branches[1:], counts[1:], strict=True):
            if not np.array_equal(c, counts[0]):
                raise InvalidContentError(
                    f"list lengths differ from those of {branches[0]!r}; jagged branches read together "
                    "must belong to the same collection",
                    file=path,
                    key=b,
                )
        longest = max(int(counts[0].max(initial=0)), 1)
        if max_length is None and len(counts[0]) * longest * len(branches) * 4 > PADDING_LIMIT:
            raise InvalidContentError(
                f"its longest list has {longest:,} entries: padding every event to it would take "
                f"{len(counts[0]) * longest * len(branches) * 4 / 2**30:.1f} GiB; pass max_length= to clip the lists "
                "(the schema counts the events clipped)", file=path, key=branches[0],
            )
        length = int(max_length) if max_length is not None else longest
        cols = []
        for b in branches:
            padded = ak.fill_none(ak.pad_none(arrays[b], length, axis=1, clip=True), 0)
            col = np.asarray(ak.to_numpy(padded), dtype=np.float32)
            check_values(col, file=path, key=b)
            cols.append(col)
        x = np.stack(cols, axis=-1)
        mask = np.arange(length)[None, :] < counts[0][:, None]
        meta.update(max_length=length, n_clipped=int((counts[0] > length).sum()))
        if meta["n_clipped"]:
            log.warning("%s: max_length=%d clipped the lists of %d of %d events (longest: %d)", path, length, meta["n_clipped"], len(counts[0]), longest)
    else:
        cols = []
        for b in branches:
            col = np.asarray(arrays[b], dtype=np.float32).reshape(len(arrays[b]), -1)  # a fixed-size array: its values as columns
            check_values(col, file=path, key=b)
            cols.append(col)
        x = np.concatenate(cols, axis=1)
    cond = None
    if cond_branches:
        cond = np.stack([np.asarray(arrays[b], dtype=np.float32) for b in cond_branches], axis=1)
        check_values(cond, file=path, key=",".join(cond_branches))
    schema = Schema(**schema_base, meta=meta)
    try:
        return Data(x, schema, cond=cond, mask=mask)
    except InvalidDataError as exc:
        raise InvalidContentError(str(exc), file=path, key=branches[0]) from exc


def iter_root(
    path: str | Path,
    *,
    tree: str | None = None,
    branches: Sequence[str] | None = None,
    cond_branches: Sequence[str] = (),
    max_length: int | None = None,
    kind: Kind = "event",
    units: str | Sequence[str] = "",
    cond_units: Sequence[str] = (),
    chunk_size: int = 100_000,
) -> Iterator[Data]:
    """Stream a TTree as ``Data`` chunks through ``uproot``'s ``iterate``.

    Args:
        path: the ROOT file.
        tree: TTree name; may be omitted when the file holds exactly one.
        branches: the feature branches, all flat or all jagged (default: every numeric flat branch).
        cond_branches: flat branches to use as conditions.
        max_length: entries kept per list for jagged branches (default: the longest list in
            each chunk, so pass it when streaming to get equal shapes).
        kind, units, cond_units: schema fields.
        chunk_size: entries per chunk.
    """
    if max_length is not None and max_length < 1:
        raise InvalidDataError(f"max_length must be ≥ 1; got {max_length}")
    f, src = _open_tree(path, tree)
    try:
        stored = _stored_schema(f, path, src.name) if branches is None and not cond_branches else None
        if stored is not None:
            names, cond_names, jagged = [stored["x_branch"]], stored["cond_branches"], False
            for b in names + cond_names:
                if b not in src.fields:
                    raise MissingKeyError(file=path, key=b, available=list(src.fields), what="branch (named by the stored schema)")
            sch = stored["schema"]
            base = {"kind": sch.kind, "feature_names": sch.feature_names, "units": sch.units, "cond_names": sch.cond_names,
                    "cond_units": sch.cond_units, "geometry": sch.geometry, "source_format": "root",
                    "meta": {**sch.meta, "tree": src.name, "jagged": False}}
        else:
            names, jagged = _resolve(path, src, branches, tuple(cond_branches))
            cond_names = list(cond_branches)
            base = {
                "kind": kind,
                "feature_names": tuple(names) if jagged else tuple(_columns(src, names)),
                "units": units if isinstance(units, str) else tuple(units),
                "cond_names": tuple(cond_names),
                "cond_units": tuple(cond_units),
                "source_format": "root",
                "meta": {"tree": src.name, "jagged": jagged, **({"rntuple": True} if src.is_ntuple else {})},
            }
        if src.num_entries == 0:
            raise InvalidContentError("the tree holds no entries", file=path, key=src.name)
        chunks = src.iterate(names + cond_names, chunk_size)
        while True:
            try:
                arrays = next(chunks)
            except StopIteration:
                break
            except Exception as exc:  # truncated baskets, bad compression (zlib.error), uproot's deserialisation errors
                raise FileFormatError(f"cannot read the branches (truncated or corrupt?): {type(exc).__name__}: {exc}", file=path, key=src.name) from exc
            fields = {b: arrays[b] for b in names + cond_names}
            yield _to_data(path, fields, names, cond_names, jagged, max_length, dict(base))
    finally:
        f.close()


def read_root(path: str | Path, **kwargs: Any) -> Data:
    """Read a TTree whole; see :func:`iter_root` for the arguments."""
    parts = list(iter_root(path, chunk_size=1 << 62, **kwargs))
    return parts[0]


_ELEMENT = re.compile(r"^(?P<name>.+)\[(?P<i>\d+)\]$")


def _array_groups(names: Sequence[str]) -> list[tuple[str, int, int]] | None:
    """``(branch, first column, width)`` runs of ``name[0] … name[k-1]``, or None if a name breaks the pattern."""
    out: list[tuple[str, int, int]] = []
    i = 0
    while i < len(names):
        m = _ELEMENT.match(names[i])
        if m is None or m["i"] != "0":
            out.append((names[i], i, 0))
            i += 1
            continue
        j = i
        while j < len(names) and (mm := _ELEMENT.match(names[j])) is not None and mm["name"] == m["name"] and int(mm["i"]) == j - i:
            j += 1
        out.append((m["name"], i, j - i))
        i = j
    return out


def root_branches(data: Data) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The branches :func:`write_root` writes for ``data``, and the schema record it stores beside calorimeter showers."""
    x = data.x.numpy()
    branches: dict[str, Any] = {}
    stored: dict[str, Any] | None = None
    if data.schema.kind == "calorimeter":
        if x.ndim != 2:
            raise InvalidDataError(f"ROOT writer needs showers as x [N, n_voxels]; got x {tuple(x.shape)}")
        branches["showers"] = np.ascontiguousarray(x)
        stored = {"x_branch": "showers", "cond_branches": [], "schema": data.schema.to_dict()}
    elif data.mask is not None:
        names = data.schema.feature_names or tuple(f"x{i}" for i in range(data.x.shape[-1]))
        counts = data.mask.sum(1).numpy()
        lists = {n: ak.unflatten(x[:, :, i][data.mask.numpy()], counts) for i, n in enumerate(names)}
        prefixes = {n.split("_", 1)[0] for n in names}
        if len(prefixes) == 1 and all("_" in n for n in names):
            prefix = prefixes.pop()
            branches[prefix] = ak.zip({n.split("_", 1)[1]: v for n, v in lists.items()})
        else:
            branches.update(lists)
    else:
        if x.ndim != 2:
            raise InvalidDataError(f"ROOT writer needs x [N, F] or a mask for lists; got x {tuple(x.shape)}")
        names = data.schema.feature_names or tuple(f"x{i}" for i in range(data.x.shape[-1]))
        for name, first, width in _array_groups(names) or []:
            branches[name] = np.ascontiguousarray(x[:, first : first + width]) if width else x[:, first]
    if data.cond is not None:
        cnames = data.schema.cond_names or tuple(f"cond{i}" for i in range(data.cond.shape[1]))
        branches.update({n: data.cond[:, i].numpy() for i, n in enumerate(cnames)})
        if stored is not None:
            stored["cond_branches"] = list(cnames)
    return branches, stored


def branch_types(branches: Mapping[str, Any]) -> dict[str, Any]:
    """uproot ``mktree`` types of ``branches``: fixed-size arrays keep their shape, awkward arrays their type."""
    return {k: (v.type if isinstance(v, ak.Array) else np.dtype((v.dtype, v.shape[1:]))) for k, v in branches.items()}


def write_root(data: Data, path: str | Path, *, tree: str | None = None) -> Path:
    """Write ``data`` as a TTree of float32 branches, atomically.

    Calorimeter showers become one fixed-size array branch ``showers`` (``float[n_voxels]``) beside
    the condition branches (``incident_energy``), and the schema (geometry, names, units) is stored
    as a ``TObjString`` ``TREE_physgen_schema``, so that :func:`read_root` gives back the same
    ``Data``; plain uproot reads ``tree["showers"].array()`` as ``[N, n_voxels]``. Columns named
    ``name[0]`` … ``name[k-1]`` (read from an array branch) are written back as one array branch.
    Other flat data gives one branch per feature; padded lists give jagged branches (``Muon_Px``,
    ...) with a counter branch (``nMuon``) as ROOT writes them. The tree keeps the name it was read
    from (``events`` for data from elsewhere) unless ``tree`` is given.
    """
    tree = tree or str(data.schema.meta.get("tree", "events"))
    branches, stored = root_branches(data)
    path = Path(path)
    with atomic_path(path, needed=int(data.x.numpy().nbytes // 2)) as tmp:
        try:
            with uproot.recreate(tmp) as f:
                f.mktree(tree, branch_types(branches))
                f[tree].extend(branches)
                if stored is not None:
                    f[f"{tree}_{SCHEMA_KEY}"] = json.dumps(stored)
        except OSError:
            raise
        except Exception as exc:  # uproot's own errors for names or types it cannot write
            raise DataFileError(f"cannot write as a ROOT TTree ({exc}); nothing was written", file=path) from exc
    return path
