"""Training on a file larger than memory: its events read block by block, shuffled, never all at once.

:class:`FileRows` is a training set (:class:`~physgen.data.rows.Rows`) backed by an HDF5 file
(CaloChallenge or generic). ``model.fit(FileRows(path))`` (or ``model.fit(path)``) streams it:

- **shuffling**: each epoch visits the file's blocks of ``block_rows`` consecutive events in a
  random order (seeded by the run's seed and the epoch) and shuffles the events of a buffer of
  ``buffer_values`` values (several blocks) before cutting batches. A batch mixes events of the
  buffer's blocks only; how much that costs against a full shuffle is measured in the docs
  (``docs/notes/streamed-training.md``).
- **preprocessing**: fitted on a streamed pass (:meth:`~physgen.data.Pipeline.fit_stream`) over the
  training blocks, or over ``fit_values`` values of them drawn at random where there are more;
  data-dependent initialisation and the post-fit calibrations see a random sample of blocks.
- **validation**: ``val_fraction`` of the blocks, chosen at random, are held out; at most
  ``VALIDATION_VALUES`` values of them are read for the validation loss.
- **distributed**: under ``torchrun`` each rank reads its own, disjoint share of each epoch's
  blocks (equal in events, so the ranks stay in step).

Memory is a buffer and a batch, whatever the file's size.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from physgen.data.container import Data
from physgen.data.rows import Rows
from physgen.errors import ConfigError
from physgen.io._common import InvalidContentError

__all__ = ["VALIDATION_VALUES", "FileRows"]

#: values of the held-out blocks read for the validation loss (256 MB as float32)
VALIDATION_VALUES = 1 << 26
_STREAMED_FORMATS = ("calochallenge", "hdf5")


class FileRows(Rows):
    """An HDF5 file's events as a training set read block by block.

    Args:
        path: a CaloChallenge or generic HDF5 file.
        block_rows: events per block, the unit of reading and of the epoch's shuffle (default:
            about 2²² values a block, 64 to 4,096 events, and at least 32 blocks in the file).
        buffer_values: values shuffled together before batches are cut (default 2²⁷: 512 MB as float32).
        fit_values: the preprocessing fits on every training event up to this many values (default 2³⁰: 165,000
            W/Si showers, 26,500 on the dataset-3 geometry), else on that many values of blocks drawn at random.
        format: the file's format (detected when omitted).
        **read_options: the reader's options (``binning=`` for CaloChallenge; ``x_key=``, ``cond_key=``, ... for generic HDF5).

    Raises:
        ConfigError: a format that is not read by row ranges (ROOT, CaloGAN, text) or a bad size.
        DataFileError, MissingKeyError, InvalidContentError: what reading the file raises.
    """

    def __init__(self, path: str | Path, *, block_rows: int | None = None, buffer_values: int = 1 << 27, fit_values: int = 1 << 30,
                 format: str | None = None, blocks: Sequence[tuple[int, int]] | None = None, **read_options: Any):
        from physgen.io import _check_format, _check_options, detect_format

        self.path = Path(path)
        fmt = format or detect_format(self.path)
        _check_format(fmt)
        if fmt not in _STREAMED_FORMATS:
            raise ConfigError(f"training streams {', '.join(_STREAMED_FORMATS)} files by row ranges; {str(self.path)!r} is {fmt}: "
                              "read it into memory (physgen.read) or write it as HDF5 (physgen.write)", where="train", key="data")
        _check_options(fmt, read_options, self.path)
        self.format, self.read_options = fmt, dict(read_options)
        first = self._read(0, 1)
        self.schema = first.schema
        self.data = first  # the schema's carrier (one event); never the file's events
        self.n_file = self._count()
        if block_rows is not None and block_rows < 1:
            raise ConfigError(f"block_rows must be ≥ 1; got {block_rows}", where="FileRows", key="block_rows")
        if buffer_values < 1:
            raise ConfigError(f"buffer_values must be ≥ 1; got {buffer_values}", where="FileRows", key="buffer_values")
        # about 2**22 values a block (64 to 4,096 events), and at least 32 blocks in a small file
        self.block_rows = block_rows or max(1, min(4096, max(64, (1 << 22) // self.width), math.ceil(self.n_file / 32)))
        self.buffer_values, self.fit_values = buffer_values, fit_values
        self.blocks = list(blocks) if blocks is not None else [(a, min(a + self.block_rows, self.n_file)) for a in range(0, self.n_file, self.block_rows)]
        self._n = sum(b - a for a, b in self.blocks)

    # -- reading ----------------------------------------------------------------------------
    def _read(self, start: int, stop: int) -> Data:
        from physgen.io import iter_chunks

        chunk = next(iter(iter_chunks(self.path, chunk_size=max(1, stop - start), format=self.format, start=start, stop=stop,
                                      **self.read_options)), None)
        if chunk is None:
            raise InvalidContentError(f"no events in rows {start}:{stop}", file=self.path, key=None)
        return chunk

    def _count(self) -> int:
        from physgen.io.calochallenge import SHOWER_KEY
        from physgen.io.hdf5 import get_dataset, open_hdf5

        key = SHOWER_KEY if self.format == "calochallenge" else self.read_options["x_key"]
        with open_hdf5(self.path) as h5:
            return int(get_dataset(h5, key, self.path).shape[0])

    def _cond_column(self) -> np.ndarray | None:
        """Every training event's conditions, read from their own dataset (a few numbers an event)."""
        from physgen.io.calochallenge import COND_KEY, ENERGY_KEY
        from physgen.io.hdf5 import get_dataset, open_hdf5

        if self.format == "calochallenge":
            key = ENERGY_KEY
            with open_hdf5(self.path) as h5:
                key = COND_KEY if COND_KEY in h5 else ENERGY_KEY
        else:
            key = self.read_options.get("cond_key")
            if not key:
                return None
        with open_hdf5(self.path) as h5:
            ds = get_dataset(h5, key, self.path)
            return np.concatenate([np.asarray(ds[a:b], dtype=np.float64).reshape(b - a, -1) for a, b in self.blocks])

    def __len__(self) -> int:
        return self._n

    def read_blocks(self, blocks: Sequence[tuple[int, int]]) -> Data:
        """The events of ``blocks`` (``(start, stop)`` row ranges of the file), in that order."""
        return Data.concat([self._read(a, b) for a, b in blocks])

    def take(self, idx: np.ndarray | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Rows ``idx`` of this set (its blocks in order), read block by block."""
        idx = np.asarray(idx, dtype=np.int64)
        offsets = np.cumsum([0] + [b - a for a, b in self.blocks])
        which = np.searchsorted(offsets, idx, side="right") - 1
        xs: list[torch.Tensor] = []
        cs: list[torch.Tensor] = []
        order = np.argsort(which, kind="stable")
        for k in np.unique(which):
            a, _ = self.blocks[k]
            rows = idx[which == k] - offsets[k]
            d = self._read(a + int(rows.min()), a + int(rows.max()) + 1)
            sel = torch.as_tensor(rows - rows.min())
            xs.append(d.x[sel])
            if d.cond is not None:
                cs.append(d.cond[sel])
        back = torch.as_tensor(np.argsort(order, kind="stable"))
        x = torch.cat(xs)[back]
        return x, (torch.cat(cs)[back] if cs else None)

    def chunks(self, rows: int | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
        for a, b in self.blocks:
            d = self._read(a, b)
            yield d.x, d.cond

    def fit_chunks(self) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
        """The blocks the preprocessing fits on: all of them up to ``fit_values`` values, else that many values of blocks drawn at random."""
        budget = max(1, self.fit_values // self.width)
        if len(self) <= budget:
            yield from self.chunks()
            return
        order = np.random.default_rng([len(self), 2]).permutation(len(self.blocks))
        for k in sorted(order[: max(1, budget // self.block_rows)]):
            a, b = self.blocks[k]
            d = self._read(a, b)
            yield d.x, d.cond

    def subset(self, n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor | None]:
        d = self.sample(n, seed)
        return d.x, d.cond

    def sample(self, n: int, seed: int = 0) -> Data:
        """``n`` events (or all, if fewer) from blocks drawn at random: for initialisation and calibrations."""
        order = np.random.default_rng(seed).permutation(len(self.blocks))
        chosen, total = [], 0
        for k in order:
            if total >= n:
                break
            chosen.append(self.blocks[k])
            total += self.blocks[k][1] - self.blocks[k][0]
        data = self.read_blocks(sorted(chosen))
        return data[:n] if len(data) > n else data

    def cond_range(self) -> list[list[float]] | None:
        cond = self._cond_column()
        return None if cond is None else np.stack([cond.min(0), cond.max(0)], 1).tolist()

    # -- training ---------------------------------------------------------------------------
    def holdout(self, fraction: float, seed: int = 0) -> tuple[FileRows, Data | None]:
        """(the training blocks, the validation events): ``fraction`` of the blocks at random, at most ``VALIDATION_VALUES`` values read."""
        if fraction <= 0:
            return self, None
        n_val = max(1, math.ceil(fraction * len(self.blocks)))
        if n_val >= len(self.blocks):
            raise ConfigError(f"val_fraction={fraction} holds out every one of the file's {len(self.blocks)} blocks of {self.block_rows} events; "
                              "lower it or the block size", where="train", key="val_fraction")
        order = np.random.default_rng([seed, 1]).permutation(len(self.blocks))
        val_blocks = sorted(self.blocks[k] for k in order[:n_val])
        train_blocks = [self.blocks[k] for k in sorted(order[n_val:])]
        rest = FileRows(self.path, block_rows=self.block_rows, buffer_values=self.buffer_values, fit_values=self.fit_values, format=self.format,
                        blocks=train_blocks, **self.read_options)
        budget, kept = max(1, VALIDATION_VALUES // self.width), []
        for a, b in val_blocks:
            if budget <= 0:
                break
            kept.append((a, min(b, a + budget)))
            budget -= kept[-1][1] - a
        return rest, self.read_blocks(kept)

    def batches(self, batch_size: int, seed: int, epoch: int, rank: int = 0, world: int = 1) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
        """Epoch ``epoch``'s batches for rank ``rank``: blocks in a seeded random order, events shuffled within a buffer."""
        rng = np.random.default_rng([seed, epoch, rank])
        order = np.random.default_rng([seed, epoch]).permutation(len(self.blocks))
        share = len(self) // world
        first, last = rank * share, (rank + 1) * share  # this rank's events of the epoch's sequence of blocks
        pieces, pos = [], 0
        for k in order:
            a, b = self.blocks[k]
            lo, hi = max(first, pos), min(last, pos + b - a)
            if lo < hi:
                pieces.append((a + lo - pos, a + hi - pos))
            pos += b - a
        local_bs = max(1, batch_size // world)
        buffer_rows = max(local_bs, self.buffer_values // self.width)
        xs: list[torch.Tensor] = []
        cs: list[torch.Tensor] = []
        held = 0

        def cut(final: bool) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
            nonlocal xs, cs, held
            x = torch.cat(xs)
            c = torch.cat(cs) if cs else None
            perm = torch.as_tensor(rng.permutation(len(x)))
            x, c = x[perm], None if c is None else c[perm]
            stop = len(x) if final else (len(x) // local_bs) * local_bs
            for s in range(0, stop, local_bs):
                yield x[s : s + local_bs], None if c is None else c[s : s + local_bs]
            xs, cs = ([x[stop:]], [] if c is None else [c[stop:]]) if stop < len(x) else ([], [])
            held = len(x) - stop

        for a, b in pieces:
            d = self._read(a, b)
            xs.append(d.x)
            if d.cond is not None:
                cs.append(d.cond)
            held += b - a
            if held >= buffer_rows:
                yield from cut(final=False)
        if held:
            yield from cut(final=True)
