"""Fast simulation in production: generate events chunk by chunk into one file, in one process or on Dask.

:func:`generate` reads the conditions (a ROOT or HDF5 file's columns, energies, or arrays) one
chunk at a time, samples each chunk with the seed :func:`~physgen.surrogates.chunk_seed` ``(seed,
index)``, and appends it with any pass-through columns (event IDs) to the output, whose suffix
picks the format. Memory holds one chunk, whatever the total.

With ``workers`` (or ``scheduler``), the chunks run as tasks on a ``dask.distributed`` cluster: a
``LocalCluster`` of ``workers`` processes, or an existing scheduler (which dask-jobqueue or
dask-kubernetes may have started on SLURM or Kubernetes). Each task writes a shard to
``OUT.parts/``; when all are done they are merged, in order, into ``OUT`` and the shards removed.
The output is the same bit for bit whatever the number of workers; a re-run after a failure skips
the shards already written. Dask is an optional extra: ``pip install "physgen[dask]"``.

Example:
    >>> from physgen.calorimeter import ShowerModel
    >>> from physgen.io import load_default
    >>> import tempfile, pathlib
    >>> model = ShowerModel("gaussian"); _ = model.fit(load_default())
    >>> out = pathlib.Path(tempfile.mkdtemp()) / "showers.h5"
    >>> generate(model, out, energies=["10 GeV", "50 GeV"], n=5000, chunk_size=2000).rows
    5000
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from physgen.distributed import Chunk, GenerateResult, note, run_sharded, sample_chunk
from physgen.errors import InvalidDataError
from physgen.surrogates import Surrogate, load

__all__ = ["GenerateResult", "generate"]

log = logging.getLogger(__name__)


def _positive(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise InvalidDataError(f"{name} must be a whole number ≥ 1; got {value!r}")
    return int(value)


def _energies(model: Surrogate, energies: Sequence[Any]) -> np.ndarray:
    """Energies as numbers (the model's unit) or quantities (``"5 GeV"``), in the model's unit of condition 0."""
    from physgen.units import to_unit

    if model.dims.get("cond_dim", 0) != 1:
        raise InvalidDataError(f"energies= fits a model with one condition (the incident energy); this one takes {model.dims.get('cond_dim', 0)}: "
                               "give the conditions as a file or an array")
    unit = model.schema.cond_units[0] if model.schema is not None and model.schema.cond_units else ""
    values = np.array([to_unit(e, unit) for e in energies], dtype=np.float64)
    if not len(values):
        raise InvalidDataError("energies= is empty")
    return values


def _plan(model: Surrogate, chunk_size: int, *, cond: Any, n: int | None, energies: Sequence[Any] | None, cond_file: str | Path | None,
          columns: Sequence[str] | None, keep: Sequence[str], cond_units: Sequence[str] | None, tree: str | None) -> tuple[int, Iterator[Chunk]]:
    """The number of events and the chunks' conditions and pass-through columns, read lazily."""
    from physgen.io.stream import count_rows, iter_columns
    from physgen.surrogates._common import conditions
    from physgen.units import column_units, convert

    sources = sum(x is not None for x in (cond, energies, cond_file))
    if sources > 1:
        raise InvalidDataError("give the conditions one way: cond=, energies= or cond_file=")
    if keep and cond_file is None:
        raise InvalidDataError("keep= names columns of cond_file= to carry into the output; there is no cond_file")
    if not model.is_conditional:
        if sources:
            raise InvalidDataError(f"this {model.family} surrogate is unconditional: give n, not conditions")
        if n is None:
            raise InvalidDataError(f"this {model.family} surrogate is unconditional: give n (number of events)")
        total = _positive("n", n)
        return total, (Chunk(i, None, min(chunk_size, total - s), {}) for i, s in enumerate(range(0, total, chunk_size)))
    if not sources:
        raise InvalidDataError(f"this {model.family} surrogate is conditional: give cond=, energies= or cond_file=")
    if energies is not None:
        values = _energies(model, energies)
        total = _positive("n", n) if n is not None else len(values)

        def cycle() -> Iterator[Chunk]:
            for i, s in enumerate(range(0, total, chunk_size)):
                rows = min(chunk_size, total - s)
                yield Chunk(i, values[np.arange(s, s + rows) % len(values)][:, None], rows, {})

        return total, cycle()
    if cond is not None:
        array, total = conditions(model, cond, n)
        assert array is not None
        return total, (Chunk(i, array[s : s + chunk_size].numpy(), len(array[s : s + chunk_size]), {}) for i, s in enumerate(range(0, total, chunk_size)))
    width = model.dims["cond_dim"]
    names = list(columns) if columns else list(model.schema.cond_names if model.schema is not None else ())
    if len(names) != width:
        raise InvalidDataError(f"the model takes {width} condition column(s); name them (columns=, --cond-branches); got {names}")
    model_units = column_units(model.schema.cond_units if model.schema is not None else (), width)
    file_units = list(cond_units) if cond_units else model_units
    if len(file_units) != width:
        raise InvalidDataError(f"cond_units needs one unit per condition column ({width}); got {list(file_units)}")
    available = count_rows(cond_file, names[0], tree)  # type: ignore[arg-type]
    total = _positive("n", n) if n is not None else available
    if total > available or available < 1:
        raise InvalidDataError(f"{str(cond_file)!r} holds {available} events; asked for {total}")
    scale = np.array([convert(1.0, f, m) if f and m else 1.0 for f, m in zip(file_units, model_units, strict=True)])

    def read() -> Iterator[Chunk]:
        columns_ = [*names, *(k for k in keep if k not in names)]
        for i, chunk in enumerate(iter_columns(cond_file, columns_, chunk_size=chunk_size, tree=tree, stop=total)):  # type: ignore[arg-type]
            c = np.stack([chunk[k].astype(np.float64) for k in names], axis=1) * scale
            yield Chunk(i, c, len(c), {k: chunk[k] for k in keep})

    return total, read()


def generate(model: Surrogate | str | Path, out: str | Path, *, cond: Any = None, n: int | None = None, energies: Sequence[Any] | None = None,
             cond_file: str | Path | None = None, columns: Sequence[str] | None = None, keep: Sequence[str] = (), cond_units: Sequence[str] | None = None,
             tree: str | None = None, out_tree: str | None = None, format: str | None = None, chunk_size: int = 10_000, seed: int = 0,
             batch_size: int = 10_000, precision: str | None = None, strict: bool = False, compression: str | None = "gzip",
             workers: int | None = None, scheduler: str | None = None, threads_per_worker: int = 1, progress: bool | None = None) -> GenerateResult:
    """Generate events into ``out``, ``chunk_size`` at a time, optionally on a Dask cluster.

    The conditions come one way: ``cond`` (an array ``[B, C]``); ``energies`` (numbers in the model's unit or
    quantities such as ``"10 GeV"``) repeated up to ``n`` events; or the columns of ``cond_file`` (its first ``n``
    rows). An unconditional model takes ``n`` alone.

    Args:
        model: a fitted surrogate, a saved model's directory or ``"zoo:NAME"`` (workers load it from disk; a surrogate is saved for them).
        out: the output file; its suffix picks the format (``.h5``, ``.root``, ``.txt``). Nothing appears there until it is complete.
        cond: conditions ``[B, C]`` in the model's units.
        n: the number of events (default: one per condition).
        energies: incident energies, cycled up to ``n``.
        cond_file: a ROOT or HDF5 file whose columns hold the conditions.
        columns: ``cond_file``'s condition columns (default: the model's ``cond_names``).
        keep: more columns of ``cond_file`` (event IDs) written beside each event, in their own dtype.
        cond_units: the units of ``columns`` (default: the model's), converted to the model's.
        tree: the ROOT tree of ``cond_file``.
        out_tree: the output tree's name (default: ``cond_file``'s tree, else the training data's, else ``events``).
        format: force a format (it must agree with the suffix).
        chunk_size: events per chunk (memory and task size); chunk ``i`` is drawn with ``chunk_seed(seed, i)``.
        seed: the run's seed.
        batch_size: rows per forward pass, as in :meth:`~physgen.surrogates.Surrogate.sample`.
        precision: the networks' precision, as in :meth:`~physgen.surrogates.Surrogate.sample`.
        strict: conditions outside the training range raise instead of warning.
        compression: HDF5 ``"gzip"``, ``"lzf"`` or ``None``.
        workers: run on a Dask ``LocalCluster`` of this many processes.
        scheduler: run on the Dask scheduler at this address instead.
        threads_per_worker: torch threads a task uses (fixed, so results do not depend on where a task runs).
        progress: a tqdm bar (default: when stderr is a terminal).
    """
    from physgen.io.layout import _check_compression
    from physgen.io.stream import open_writer, output_format

    chunk_size = _positive("chunk_size", chunk_size)
    if workers is not None:
        _positive("workers", workers)
    _positive("threads_per_worker", threads_per_worker)
    _check_compression(compression)
    if isinstance(model, str) and model.startswith("zoo:"):
        from physgen import zoo

        model = zoo.path(model)
    model_dir = Path(model) if isinstance(model, (str, Path)) else None
    surrogate = load(str(model_dir)) if model_dir is not None else model
    if not isinstance(surrogate, Surrogate):
        raise InvalidDataError(f"model must be a fitted surrogate, a saved model's folder or 'zoo:NAME'; got {type(model).__name__}")
    out = Path(out)
    fmt = output_format(out, surrogate.schema, format)  # type: ignore[arg-type]
    if out_tree is None and cond_file is not None and fmt == "root":
        from physgen.io._common import sniff

        if sniff(cond_file) == "root":
            from physgen.io.root import _open_tree

            f, src = _open_tree(cond_file, tree)
            with f:
                out_tree = src.name
    total, chunks = _plan(surrogate, chunk_size, cond=cond, n=n, energies=energies, cond_file=cond_file, columns=columns, keep=keep,
                          cond_units=cond_units, tree=tree)
    options = {"batch_size": batch_size, "precision": precision, "strict": strict}
    n_chunks = -(-total // chunk_size)
    bar = _progress(total, progress)
    notes: list[str] = []
    try:
        if workers is None and scheduler is None:
            with open_writer(out, surrogate.schema, format=fmt, tree=out_tree, compression=compression) as writer:  # type: ignore[arg-type]
                for chunk in chunks:
                    data, caught = sample_chunk(surrogate, chunk, seed, options)
                    note(notes, caught)
                    writer.append(data, chunk.extra)
                    bar.update(chunk.rows)
            return GenerateResult(out, fmt, writer.rows, n_chunks, warnings=notes)
        return run_sharded(surrogate, model_dir, out, fmt, chunks, n_chunks, total, seed=seed, options=options, out_tree=out_tree,
                           compression=compression, workers=workers, scheduler=scheduler, threads=threads_per_worker, bar=bar,
                           job=_job_key(surrogate, model_dir, total, chunk_size, seed, options, cond=cond, energies=energies,
                                        cond_file=cond_file, columns=columns, keep=keep, cond_units=cond_units, tree=tree, n=n))
    finally:
        bar.close()


def _progress(total: int, progress: bool | None) -> Any:
    import sys

    from tqdm.auto import tqdm

    disable = not sys.stderr.isatty() if progress is None else not progress
    return tqdm(total=total, unit="event", disable=disable, desc="generating")


def _job_key(model: Surrogate, model_dir: Path | None, total: int, chunk_size: int, seed: int, options: dict[str, Any], **source: Any) -> str:
    """A digest of everything that decides the output, so a re-run only reuses shards of the same job."""
    h = hashlib.sha256()
    if model_dir is not None:
        for name in sorted(p.name for p in model_dir.iterdir() if p.is_file()):
            h.update(name.encode())
            h.update((model_dir / name).read_bytes())
    else:
        for k, v in sorted(model.state_dict().items()):
            h.update(k.encode())
            h.update(v.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes() if v.numel() else b"")
        h.update(json.dumps(model.checkpoint_config(), sort_keys=True, default=str).encode())
    cond_file = source.get("cond_file")
    if cond_file is not None:
        stat = os.stat(cond_file)
        source["cond_file"] = [os.path.abspath(cond_file), stat.st_size, stat.st_mtime_ns]
    if source.get("cond") is not None:
        source["cond"] = hashlib.sha256(np.ascontiguousarray(torch.as_tensor(source["cond"]).numpy()).tobytes()).hexdigest()
    h.update(json.dumps({"total": total, "chunk_size": chunk_size, "seed": seed, "options": options, **source}, sort_keys=True, default=str).encode())
    return h.hexdigest()
