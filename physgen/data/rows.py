"""Training sets read a batch at a time: in memory, or permuted views of each event that are never stored.

The training loop asks a :class:`Rows` for its events by index, a batch at a time, and
fits the preprocessing on a streamed pass over it (:meth:`Rows.chunks`). A
:class:`PermutedRows` is ``copies`` versions of every event of a :class:`Data`, each with
its features permuted (a calorimeter's rotations and mirrors about its axis,
:mod:`physgen.calorimeter.symmetry`): row ``j · N + i`` is event ``i`` under its ``j``-th
permutation, gathered when a batch asks for it. Augmenting ``k``-fold then costs the
memory of one batch, not ``k`` copies of the training set. A :class:`PermutedStream` does the
same for a set read block by block from a file (:class:`~physgen.io.rows.FileRows`), whose
events have no fixed place in an epoch: each epoch reads it ``copies`` times, the first time as
it is and each further time with every event under a permutation drawn at random.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from physgen.data.container import Data
from physgen.data.transforms import Pipeline
from physgen.errors import InvalidDataError

__all__ = ["INIT_VALUES", "PermutedRows", "PermutedStream", "Rows", "epoch_indices", "fit_on_rows", "init_rows"]

#: values per chunk of a streamed pass (a [chunk, features] float64 block and its gather index: about 64 MB each)
CHUNK_VALUES = 1 << 23
#: values of a streamed or augmented training set that data-dependent initialisation sees (256 MB as float32)
INIT_VALUES = 1 << 26


def init_rows(n: int, width: int) -> int:
    """How many of ``n`` training rows of ``width`` values a family's initialisation (and a streamed run's calibrations) fit on.

    Up to ``INIT_VALUES`` values, and at least 1,024 rows: 10,356 W/Si showers, 1,657 on the
    dataset-3 geometry, whose calibrations hold a few float64 copies of them and of as many samples.
    """
    return min(n, max(1024, INIT_VALUES // max(1, width)))


def epoch_indices(n: int, batch_size: int, seed: int, epoch: int, rank: int = 0, world: int = 1) -> Iterator[np.ndarray]:
    """Row indices of epoch ``epoch``'s batches for rank ``rank`` of ``world``: a permutation seeded by ``(seed, epoch)``, equal shares per rank."""
    perm = np.random.default_rng([seed, epoch]).permutation(n)
    if world > 1:  # equal shares so ranks stay in lockstep
        perm = perm[: (n // world) * world][rank::world]
    local_bs = max(1, batch_size // world)
    for start in range(0, len(perm), local_bs):
        yield perm[start : start + local_bs]


def fit_on_rows(pipeline: Pipeline, rows: Rows) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Fit ``pipeline`` on ``rows``; the training tensors in model space (float32).

    Events in memory (a plain :class:`Rows`): fitted on all of them at once, and all of them
    returned. A set read batch by batch (augmented versions, a file): fitted on a streamed pass,
    and the tensors are :func:`init_rows` of them drawn at random, what a family's
    data-dependent initialisation sees. Training-only steps (dequantisation noise) apply, drawn
    from the seeded global generator.
    """
    if type(rows) is Rows:
        pipeline.fit(rows.data.x, rows.data.cond)
        y, c = pipeline.train(True).forward(rows.data.x, rows.data.cond)
        pipeline.train(False)
        return y.float(), None if c is None else c.float()
    pipeline.fit_stream(rows.fit_chunks)
    x, cond = rows.subset(init_rows(len(rows), rows.width), seed=0)
    step = rows.chunk_rows()  # float64 a chunk at a time, kept as float32
    ys, cs = [], []
    for s in range(0, len(x), step):
        yb, cb = pipeline.train(True).forward(x[s : s + step], None if cond is None else cond[s : s + step])
        ys.append(yb.float())
        cs.append(cb)
    pipeline.train(False)
    return torch.cat(ys), None if cond is None else torch.cat(cs).float()  # type: ignore[arg-type]


class Rows:
    """A training set the loop reads by row index: here, the events of ``data`` as they are.

    Args:
        data: the events (physics units).
    """

    def __init__(self, data: Data):
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    @property
    def width(self) -> int:
        """Values per event."""
        return max(1, self.data.x[:1].numel())

    def take(self, idx: np.ndarray | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(x, cond)`` of rows ``idx`` (physics units; ``cond`` None for unconditional data)."""
        idx = torch.as_tensor(idx, dtype=torch.long)
        return self.data.x[idx], None if self.data.cond is None else self.data.cond[idx]

    def batches(self, batch_size: int, seed: int, epoch: int, rank: int = 0, world: int = 1) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
        """Epoch ``epoch``'s batches for rank ``rank`` of ``world`` (:func:`epoch_indices`), as ``(x, cond)``."""
        for idx in epoch_indices(len(self), batch_size, seed, epoch, rank, world):
            yield self.take(idx)

    def cond_range(self) -> list[list[float]] | None:
        """Per condition column, ``[min, max]`` over every row (None for unconditional data)."""
        cond = self.data.cond
        return None if cond is None else torch.stack([cond.amin(0), cond.amax(0)], 1).tolist()

    def chunk_rows(self) -> int:
        """Rows per chunk of :meth:`chunks`: about ``CHUNK_VALUES`` values."""
        return max(1, CHUNK_VALUES // self.width)

    def chunks(self, rows: int | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
        """Every row once, in order, ``rows`` (default :meth:`chunk_rows`) at a time."""
        rows = rows or self.chunk_rows()
        for start in range(0, len(self), rows):
            yield self.take(np.arange(start, min(start + rows, len(self))))

    def fit_chunks(self) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
        """The rows a streamed fit of the preprocessing sees, chunk by chunk: all of them (:meth:`chunks`)."""
        return self.chunks()

    def subset(self, n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``n`` rows drawn without replacement (all of them, in order, when ``n ≥ len``)."""
        if n >= len(self):
            return self.take(np.arange(len(self)))
        return self.take(np.sort(np.random.default_rng(seed).choice(len(self), n, replace=False)))

    def sample(self, n: int, seed: int = 0) -> Data:
        """:meth:`subset` as a :class:`Data` of this set's schema."""
        x, cond = self.subset(n, seed)
        return Data(x, self.data.schema, cond=cond, validate=False)

    def holdout(self, fraction: float, seed: int = 0) -> tuple[Rows, Data | None]:
        """(the training rows, the validation events): a random ``fraction`` of the events held out."""
        if fraction <= 0:
            return self, None
        train, val = self.data.split((1 - fraction, fraction), seed=seed)
        return Rows(train), val


class PermutedRows(Rows):
    """``copies`` permuted versions of each event of ``data``, gathered batch by batch.

    Args:
        data: the events (``x`` ``[N, F]``, physics units).
        permutations: ``[G, F]`` feature gather indices (``x[:, permutations[g]]`` is version ``g``).
        chosen: ``[N, copies]`` which permutation each event's ``j``-th version uses (column 0
            is usually the identity: the event itself).

    Row ``j · N + i`` is ``data.x[i, permutations[chosen[i, j]]]``; conditions and masks are the event's.
    """

    def __init__(self, data: Data, permutations: torch.Tensor, chosen: np.ndarray):
        super().__init__(data)
        if data.x.ndim != 2:
            raise InvalidDataError(f"permuted rows need events of one feature axis; got x of shape {tuple(data.x.shape)}")
        permutations = torch.as_tensor(permutations, dtype=torch.long)
        if permutations.ndim != 2 or permutations.shape[1] != data.x.shape[1]:
            raise InvalidDataError(f"permutations must be [G, {data.x.shape[1]}]; got {tuple(permutations.shape)}")
        chosen = np.asarray(chosen)
        if chosen.ndim != 2 or chosen.shape[0] != len(data) or chosen.min(initial=0) < 0 or chosen.max(initial=0) >= len(permutations):
            raise InvalidDataError(f"chosen must be [{len(data)}, copies] with entries in [0, {len(permutations)}); got shape {chosen.shape}")
        self.permutations = permutations
        self.chosen = torch.as_tensor(chosen, dtype=torch.long)
        self.copies = int(chosen.shape[1])

    def __len__(self) -> int:
        return len(self.data) * self.copies

    def take(self, idx: np.ndarray | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        idx = torch.as_tensor(idx, dtype=torch.long)
        n = len(self.data)
        event, version = idx % n, idx // n
        index = self.permutations[self.chosen[event, version]]
        x = self.data.x[event].gather(1, index)
        return x, None if self.data.cond is None else self.data.cond[event]

    def materialise(self) -> Data:
        """All rows as one :class:`Data` (``copies`` times the memory: for small sets and tests)."""
        x, _ = self.take(np.arange(len(self)))
        d = self.data
        cond = None if d.cond is None else d.cond.repeat(self.copies, 1)
        mask = None if d.mask is None else d.mask.repeat((self.copies,) + (1,) * (d.mask.ndim - 1))
        return Data(x, d.schema, cond=cond, mask=mask, aux={k: np.tile(v, self.copies) for k, v in d.aux.items()}, validate=False)


class PermutedStream(Rows):
    """``copies`` passes an epoch over a streamed set: the first as read, the others with each event permuted at random.

    Args:
        source: the streamed training set (its ``batches`` shuffle by block and buffer).
        permutations: ``[G, F]`` feature gather indices; row 0 must be the identity.
        copies: passes over ``source`` per epoch (the ``augment`` of in-memory training).
        seed: seeds the draws with the epoch and the pass.

    Pass ``j ≥ 1`` of epoch ``e`` reads ``source``'s batches of its epoch ``e · copies + j`` (another order of
    blocks) and gives each event one of permutations ``1 … G−1``, drawn uniformly. Unlike :class:`PermutedRows`,
    an event's versions within an epoch are drawn independently, so two may coincide. The preprocessing fits
    on the same mixture: each event of a fitting pass is itself with probability ``1 / copies``, else permuted.
    """

    def __init__(self, source: Rows, permutations: torch.Tensor, copies: int, seed: int = 0):
        super().__init__(source.data)
        permutations = torch.as_tensor(permutations, dtype=torch.long)
        if permutations.ndim != 2 or permutations.shape[1] != source.width or len(permutations) < 2:
            raise InvalidDataError(f"permutations must be [G ≥ 2, {source.width}]; got {tuple(permutations.shape)}")
        if not torch.equal(permutations[0], torch.arange(source.width)):
            raise InvalidDataError("the first permutation must be the identity (pass 0 reads the events as they are)")
        self.source, self.permutations, self.copies, self.seed = source, permutations, int(copies), int(seed)

    def __len__(self) -> int:
        return len(self.source) * self.copies

    @property
    def width(self) -> int:
        return self.source.width

    def _permuted(self, x: torch.Tensor, rng: np.random.Generator, p_identity: float = 0.0) -> torch.Tensor:
        chosen = torch.as_tensor(rng.integers(1, len(self.permutations), len(x)))
        if p_identity > 0:
            chosen[torch.as_tensor(rng.random(len(x)) < p_identity)] = 0
        return x.gather(1, self.permutations[chosen])

    def batches(self, batch_size: int, seed: int, epoch: int, rank: int = 0, world: int = 1) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
        for j in range(self.copies):
            rng = np.random.default_rng([self.seed, seed, epoch, j, rank])
            for x, cond in self.source.batches(batch_size, seed, epoch * self.copies + j, rank, world):
                yield (x if j == 0 else self._permuted(x, rng)), cond

    def fit_chunks(self) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
        rng = np.random.default_rng([self.seed, 3])
        for x, cond in self.source.fit_chunks():
            yield self._permuted(x, rng, p_identity=1 / self.copies), cond

    def take(self, idx: np.ndarray | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        raise InvalidDataError("a permuted stream is read by batches (or fit_chunks), not by row index")

    def subset(self, n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``n`` events of the source as they are (initialisation and calibrations)."""
        return self.source.subset(n, seed)

    def sample(self, n: int, seed: int = 0) -> Data:
        return self.source.sample(n, seed)

    def cond_range(self) -> list[list[float]] | None:
        return self.source.cond_range()

    def holdout(self, fraction: float, seed: int = 0) -> tuple[Rows, Data | None]:
        raise InvalidDataError("hold out events before permuting: PermutedStream(source.holdout(...)[0], ...)")
