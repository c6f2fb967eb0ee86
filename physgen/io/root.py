"""ROOT TTrees through uproot: flat branches → feature columns, jagged → padded + mask.

Flat branches become ``x`` ``[N, F]``. Jagged branches (``Muon_Px``, ...) become
``x`` ``[N, P, F]`` padded with zeros to ``max_length`` entries, with
``mask`` ``[N, P]`` marking the real ones; longer lists are clipped (the schema's
``meta["n_clipped"]`` counts the events that lost entries). Flat branches can
ride along as conditions with ``cond_branches``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import awkward as ak
import numpy as np
import uproot

from physgen.data.container import Data, Kind, Schema
from physgen.errors import DataFileError, FileFormatError, InvalidDataError, MissingKeyError
from physgen.io._common import InvalidContentError, atomic_path, check_values

__all__ = ["read_root", "iter_root", "write_root"]

#: the most memory padding jagged lists may take without ``max_length`` (bytes)
PADDING_LIMIT = 2 * 2**30


def _open_tree(path: str | Path, tree: str | None) -> tuple[Any, Any, str]:
    try:
        f = uproot.open(path)
        classes = f.classnames()
    except Exception as exc:  # uproot raises several types for broken files
        raise FileFormatError(f"cannot open as ROOT (truncated or corrupt?): {exc}", file=path) from exc
    trees = sorted({k.split(";")[0] for k, c in classes.items() if c in ("TTree", "TNtuple")})
    ntuples = sorted({k.split(";")[0] for k, c in classes.items() if "RNTuple" in c})
    if tree is None:
        if len(trees) != 1:
            f.close()
            if not trees and ntuples:
                raise FileFormatError(
                    f"holds RNTuple(s) {', '.join(ntuples)} and no TTree; physgen reads TTrees (write one with "
                    "uproot.recreate(...).mktree, or ROOT's RDataFrame Snapshot to a TTree)", file=path, key=ntuples[0],
                )
            raise MissingKeyError(file=path, key="<tree>", available=trees, what="single TTree (name one with tree=)")
        tree = trees[0]
    if tree not in trees:
        f.close()
        raise MissingKeyError(file=path, key=tree, available=trees, what="TTree")
    try:
        return f, f[tree], tree
    except Exception as exc:
        f.close()
        raise FileFormatError(f"cannot read TTree (truncated or corrupt?): {exc}", file=path, key=tree) from exc


def _is_jagged(branch: Any) -> bool:
    return isinstance(branch.interpretation, uproot.interpretation.jagged.AsJagged)


def _numeric(branch: Any) -> bool:
    interp = branch.interpretation
    inner = interp.content if isinstance(interp, uproot.interpretation.jagged.AsJagged) else interp
    return isinstance(inner, uproot.interpretation.numerical.AsDtype)


def _width(branch: Any) -> int:
    """Values per event of a flat branch: 1 for a scalar, k for a fixed-size array ``float[k]``."""
    if _is_jagged(branch):
        return 1
    return int(np.prod(getattr(branch.interpretation, "inner_shape", ()) or (1,)))


def _columns(t: Any, branches: Sequence[str]) -> list[str]:
    """Feature names: a branch's own, or ``name[i]`` for each value of a fixed-size array branch."""
    out = []
    for b in branches:
        w = _width(t[b])
        out += [b] if w == 1 and not getattr(t[b].interpretation, "inner_shape", ()) else [f"{b}[{i}]" for i in range(w)]
    return out


def _resolve(
    path: str | Path, t: Any, branches: Sequence[str] | None, cond_branches: Sequence[str]
) -> tuple[list[str], bool]:
    names = list(t.keys())
    if branches is None:
        branches = [b for b in names if _numeric(t[b]) and not _is_jagged(t[b]) and b not in cond_branches]
    for b in list(branches) + list(cond_branches):
        if b not in names:
            raise MissingKeyError(file=path, key=b, available=names, what="branch")
        if not _numeric(t[b]):
            raise InvalidContentError(
                f"expected a numeric branch; its type is {t[b].typename}", file=path, key=b
            )
    if not branches:
        raise InvalidContentError("no numeric flat branches to read; name some with branches=", file=path)
    jagged = [_is_jagged(t[b]) for b in branches]
    if any(jagged) and not all(jagged):
        flat = [b for b, j in zip(branches, jagged, strict=True) if not j]
        raise InvalidDataError(
            f"file {str(path)!r}: branches mix flat {flat} and jagged ones; read them separately or pass "
            "the flat ones as cond_branches"
        )
    for b in cond_branches:
        if _is_jagged(t[b]) or _width(t[b]) != 1:
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
    f, t, tree_name = _open_tree(path, tree)
    try:
        names, jagged = _resolve(path, t, branches, tuple(cond_branches))
        base = {
            "kind": kind,
            "feature_names": tuple(names) if jagged else tuple(_columns(t, names)),
            "units": units if isinstance(units, str) else tuple(units),
            "cond_names": tuple(cond_branches),
            "cond_units": tuple(cond_units),
            "source_format": "root",
            "meta": {"tree": tree_name, "jagged": jagged},
        }
        if t.num_entries == 0:
            raise InvalidContentError("the tree holds no entries", file=path, key=tree_name)
        chunks = t.iterate(names + list(cond_branches), step_size=chunk_size, library="ak")
        while True:
            try:
                arrays = next(chunks)
            except StopIteration:
                break
            except Exception as exc:  # truncated baskets, bad compression (zlib.error), uproot's deserialisation errors
                raise FileFormatError(f"cannot read the branches (truncated or corrupt?): {type(exc).__name__}: {exc}", file=path, key=tree_name) from exc
            fields = {b: arrays[b] for b in names + list(cond_branches)}
            yield _to_data(path, fields, names, cond_branches, jagged, max_length, dict(base))
    finally:
        f.close()


def read_root(path: str | Path, **kwargs: Any) -> Data:
    """Read a TTree whole; see :func:`iter_root` for the arguments."""
    parts = list(iter_root(path, chunk_size=1 << 62, **kwargs))
    return parts[0]


def write_root(data: Data, path: str | Path, *, tree: str | None = None) -> Path:
    """Write ``data`` as a TTree of float32 branches, atomically.

    Flat data gives one branch per feature; padded lists give jagged branches
    (``Muon_Px``, ...) with a counter branch (``nMuon``) as ROOT writes them,
    so :func:`read_root` and ROOT itself read the lists back without padding.
    """
    names = data.schema.feature_names or tuple(f"x{i}" for i in range(data.x.shape[-1]))
    tree = tree or str(data.schema.meta.get("tree", "events"))
    x = data.x.numpy()
    branches: dict[str, Any] = {}
    if data.mask is not None:
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
        branches.update({n: x[:, i] for i, n in enumerate(names)})
    if data.cond is not None:
        cnames = data.schema.cond_names or tuple(f"cond{i}" for i in range(data.cond.shape[1]))
        branches.update({n: data.cond[:, i].numpy() for i, n in enumerate(cnames)})
    path = Path(path)
    with atomic_path(path, needed=int(x.nbytes // 2)) as tmp:
        try:
            with uproot.recreate(tmp) as f:
                f.mktree(tree, {k: (v.type if isinstance(v, ak.Array) else v.dtype) for k, v in branches.items()})
                f[tree].extend(branches)
        except OSError:
            raise
        except Exception as exc:  # uproot's own errors for names or types it cannot write
            raise DataFileError(f"cannot write as a ROOT TTree ({exc}); nothing was written", file=path) from exc
    return path
