"""The chunks of :func:`physgen.generate.generate`, and running them on a ``dask.distributed`` cluster.

A :class:`Chunk` is a slice of the conditions with its index; :func:`sample_chunk` draws it with the seed
``chunk_seed(seed, index)``, in one process or in a Dask task (:func:`shard_task`). Tasks write their chunk to ``OUT.parts/part-NNNNNN.h5`` (atomically: a shard that exists is complete)
beside a ``job.json`` digest of the model, the conditions, the seed and the chunking. A re-run of the
same job skips the shards present; a different job at the same path starts afresh. When every shard is
there they are merged, in chunk order, into ``OUT`` (which appears only then) and the directory removed.
"""

from __future__ import annotations

import functools
import json
import logging
import shutil
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from physgen.data.container import Data
from physgen.errors import ConditionRangeWarning, ConfigError, DataFileError
from physgen.surrogates import Surrogate, chunk_seed, load

__all__ = ["Chunk", "GenerateResult", "note", "run_sharded", "sample_chunk", "shard_directory", "shard_task"]

log = logging.getLogger(__name__)


@dataclass
class GenerateResult:
    """What :func:`generate` wrote: the file, its format, the events, and the chunks (``resumed``: shards found done)."""

    path: Path
    format: str
    rows: int
    chunks: int
    workers: int = 0
    resumed: int = 0
    warnings: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Chunk:
    index: int
    cond: np.ndarray | None
    rows: int
    extra: dict[str, np.ndarray]


def sample_chunk(model: Surrogate, chunk: Chunk, seed: int, options: dict[str, Any]) -> tuple[Data, list[str]]:
    """Chunk ``chunk.index`` sampled with ``chunk_seed(seed, index)``, and the range warnings it raised (prefixed with the chunk)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConditionRangeWarning)
        data = model.sample(None if chunk.cond is None else torch.as_tensor(chunk.cond, dtype=torch.float32),
                            None if chunk.cond is not None else chunk.rows, seed=chunk_seed(seed, chunk.index), **options)
    return data, [f"chunk {chunk.index}: {w.message}" for w in caught if issubclass(w.category, ConditionRangeWarning)]


def note(notes: list[str], caught: list[str]) -> None:
    """Warn once per condition (the first chunk that strays says so), and keep the warnings for the result."""
    def condition(message: str) -> str:  # "chunk 3: 10 of 100 values of condition 'E' lie outside ..." → "condition 'E'"
        return message.split(" values of ", 1)[-1].split(" lie outside", 1)[0]

    for message in caught:
        if condition(message) not in {condition(m) for m in notes}:
            notes.append(message)
            warnings.warn(message, ConditionRangeWarning, stacklevel=4)


def _worker_model(model_dir: str) -> Surrogate:
    """The model a worker process keeps between tasks, reloaded when the folder's config changes (a new job at the same path)."""
    return _cached_model(model_dir, (Path(model_dir) / "config.json").stat().st_mtime_ns)


@functools.lru_cache(maxsize=4)
def _cached_model(model_dir: str, stamp: int) -> Surrogate:
    return load(model_dir)


def shard_task(model_dir: str, chunk: Chunk, seed: int, options: dict[str, Any], shard: str, threads: int) -> tuple[int, int, list[str]]:
    """One chunk on a worker: sample it (``threads`` torch threads) and write it to ``shard`` atomically."""
    from physgen.io.layout import write_layout

    torch.set_num_threads(threads)
    model = _worker_model(model_dir)
    data, caught = sample_chunk(model, chunk, seed, options)
    layout: dict[str, np.ndarray] = {"x": data.x.numpy()}
    if data.cond is not None:
        layout["cond"] = data.cond.numpy()
    layout.update({f"extra/{k}": v for k, v in chunk.extra.items()})
    write_layout(shard, layout, data.schema, compression=None)
    return chunk.index, len(data), caught


#: tasks in flight per worker thread: enough to keep workers busy, few enough to bound the driver's memory
IN_FLIGHT = 2


def _distributed() -> Any:
    try:
        import distributed
    except ImportError as exc:
        raise ConfigError("generating on workers needs Dask: pip install 'physgen[dask]'", key="workers") from exc
    return distributed


def shard_directory(out: Path) -> Path:
    """Where the shards of ``out`` are written: ``OUT.parts`` beside it."""
    return out.with_name(out.name + ".parts")


def _client(distributed: Any, workers: int | None, scheduler: str | None, threads: int) -> tuple[Any, Any]:
    if scheduler is not None:
        if not isinstance(scheduler, str) or not scheduler.strip():
            raise ConfigError(f"scheduler must be an address such as 'tcp://host:8786'; got {scheduler!r}", key="scheduler")
        try:
            return distributed.Client(scheduler, timeout="10s"), None
        except (OSError, TimeoutError, ValueError) as exc:
            raise ConfigError(f"cannot reach the Dask scheduler at {scheduler!r} ({type(exc).__name__}: {exc}); nothing was written",
                              key="scheduler") from exc
    cluster = distributed.LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None,
                                       silence_logs=logging.ERROR, env={"OMP_NUM_THREADS": str(threads)})
    return distributed.Client(cluster), cluster


def _merge(model: Surrogate, shards: list[Path], out: Path, fmt: str, out_tree: str | None, compression: str | None) -> int:
    import h5py

    from physgen.io.stream import open_writer

    with open_writer(out, model.schema, format=fmt, tree=out_tree, compression=compression) as writer:  # type: ignore[arg-type]
        for shard in shards:
            with h5py.File(shard, "r") as h5:
                x = h5["x"][()]
                cond = h5["cond"][()] if "cond" in h5 else None
                extra = {k: v[()] for k, v in h5["extra"].items()} if "extra" in h5 else {}
            writer.append(Data(x, model.schema, cond=cond, validate=False), extra)  # type: ignore[arg-type]
    return writer.rows


def run_sharded(model: Surrogate, model_dir: Path | None, out: Path, fmt: str, chunks: Iterator[Any], n_chunks: int, total: int, *,
                seed: int, options: dict[str, Any], out_tree: str | None, compression: str | None, workers: int | None,
                scheduler: str | None, threads: int, bar: Any, job: str) -> Any:
    """Run every chunk as a Dask task writing a shard, then merge the shards into ``out``."""
    distributed = _distributed()
    if not out.parent.is_dir():
        raise DataFileError("the output directory does not exist", file=out.parent)
    client, cluster = _client(distributed, workers, scheduler, threads)  # an unreachable scheduler fails before anything is written
    try:
        return _run(client, model, model_dir, out, fmt, chunks, n_chunks, total, seed=seed, options=options, out_tree=out_tree,
                    compression=compression, workers=workers, threads=threads, bar=bar, job=job)
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def _run(client: Any, model: Surrogate, model_dir: Path | None, out: Path, fmt: str, chunks: Iterator[Any], n_chunks: int, total: int, *,
         seed: int, options: dict[str, Any], out_tree: str | None, compression: str | None, workers: int | None, threads: int, bar: Any,
         job: str) -> Any:
    distributed = _distributed()
    parts = shard_directory(out)
    stamp = parts / "job.json"
    if parts.exists() and (not stamp.exists() or json.loads(stamp.read_text()).get("job") != job):
        log.info("%s holds shards of another job; starting afresh", parts)
        shutil.rmtree(parts)
    parts.mkdir(exist_ok=True)
    stamp.write_text(json.dumps({"job": job, "chunks": n_chunks, "events": total}))
    if model_dir is None:  # workers load the model from disk
        model_dir = parts / "model"
        if not (model_dir / "config.json").exists():
            model.save(model_dir)
    shards = [parts / f"part-{i:06d}.h5" for i in range(n_chunks)]
    notes: list[str] = []
    resumed = 0
    n_workers = len(client.scheduler_info().get("workers", {})) or (workers or 1)
    limit = IN_FLIGHT * n_workers
    pending = distributed.as_completed()
    in_flight = 0

    def collect(future: Any) -> None:
        _, rows, caught = future.result()
        note(notes, caught)
        bar.update(rows)

    for chunk in chunks:
        if shards[chunk.index].exists():
            resumed += 1
            bar.update(chunk.rows)
            continue
        pending.add(client.submit(shard_task, str(model_dir), chunk, seed, options, str(shards[chunk.index]), threads,
                                  key=f"physgen-{job[:12]}-{chunk.index}", pure=False))
        in_flight += 1
        while in_flight >= limit:
            collect(next(pending))
            in_flight -= 1
    for future in pending:
        collect(future)
    missing = [s.name for s in shards if not s.exists()]
    if missing:
        raise DataFileError(f"{len(missing)} shard(s) missing after the run ({missing[:3]}...); re-run to finish them", file=parts)
    rows = _merge(model, shards, out, fmt, out_tree, compression)
    shutil.rmtree(parts, ignore_errors=True)
    return GenerateResult(out, fmt, rows, n_chunks, workers=n_workers, resumed=resumed, warnings=notes)


