"""Training from a file read block by block: every event once an epoch, disjoint ranks, the same preprocessing."""

import numpy as np
import pytest
import torch
from scipy import stats

import physgen
from physgen.calorimeter import ShowerModel
from physgen.errors import ConfigError, InvalidDataError
from physgen.io.rows import FileRows


@pytest.fixture(scope="module")
def shower_file(tmp_path_factory, showers):
    path = tmp_path_factory.mktemp("stream") / "showers.h5"
    physgen.write(showers[:700], path)
    return path


def _rows_as_set(x: torch.Tensor) -> list[bytes]:
    return sorted(r.numpy().tobytes() for r in x)


def test_an_epoch_reads_every_event_once_in_a_seeded_shuffled_order(shower_file, showers):
    rows = FileRows(shower_file, block_rows=50, buffer_values=120 * 768)
    assert len(rows) == 700 and len(rows.blocks) == 14
    whole = showers[:700]
    idx = [699, 5, 120, 0, 6]
    x, c = rows.take(idx)
    assert torch.equal(x, whole.x[idx]) and torch.equal(c, whole.cond[idx])
    epoch0 = list(rows.batches(64, seed=3, epoch=0))
    x0 = torch.cat([x for x, _ in epoch0])
    c0 = torch.cat([c for _, c in epoch0])
    assert [len(x) for x, _ in epoch0][:-1] == [64] * (len(epoch0) - 1)  # full batches, the last one partial
    assert _rows_as_set(x0) == _rows_as_set(whole.x)  # every event once
    # conditions travel with their showers
    energy = {r.numpy().tobytes(): float(e) for r, e in zip(whole.x, whole.cond[:, 0], strict=True)}
    assert all(energy[r.numpy().tobytes()] == float(e) for r, e in zip(x0, c0[:, 0], strict=True))
    again = torch.cat([x for x, _ in rows.batches(64, seed=3, epoch=0)])
    other = torch.cat([x for x, _ in rows.batches(64, seed=3, epoch=1)])
    assert torch.equal(x0, again) and not torch.equal(x0, other)
    # shuffled beyond the file's order: the first batch mixes events of several blocks
    position = {r.numpy().tobytes(): i for i, r in enumerate(whole.x)}
    first_blocks = {position[r.numpy().tobytes()] // 50 for r in epoch0[0][0]}
    assert len(first_blocks) >= 2


def test_ranks_read_disjoint_equal_shares(shower_file):
    rows = FileRows(shower_file, block_rows=64)
    shares = [torch.cat([x for x, _ in rows.batches(100, seed=0, epoch=2, rank=r, world=3)]) for r in range(3)]
    assert [len(s) for s in shares] == [233, 233, 233]  # 700 // 3 each: the ranks stay in step
    everything = _rows_as_set(torch.cat(shares))
    assert len(set(everything)) == len(everything) == 699


def test_a_model_fits_a_file_without_reading_it_whole(shower_file, showers):
    data = showers[:700]
    model = ShowerModel("vae", latent=4, hidden=16, layers=1)
    hist = model.fit(shower_file, steps=12, batch_size=64, val_fraction=0.2, progress=False, seed=1)
    assert hist[-1]["stopped_by"] == "steps"
    assert np.isfinite(hist[-1]["val_loss"])
    # the preprocessing is the streamed fit over the training blocks, which equals the fit on those events at once
    train_rows, _ = FileRows(shower_file).holdout(0.2, seed=1)
    held_in = train_rows.read_blocks(train_rows.blocks)
    assert len(held_in) < 700
    direct = model.default_preprocessing(data).fit(held_in.x, held_in.cond)
    for a, b in zip(model.preprocessing.to_dict()["x"], direct.to_dict()["x"], strict=True):
        for key in ("mean", "std", "scale"):
            if key in a:
                np.testing.assert_allclose(a[key], b[key], rtol=1e-10, atol=1e-12)
    # the condition range is the whole training part's, not the initialisation sample's
    e = held_in.cond[:, 0]
    assert model.cond_range == [[float(e.min()), float(e.max())]]
    out = model.sample(data.cond[:5], seed=0)
    assert out.x.shape == (5, 768) and bool(torch.isfinite(out.x).all())


def test_a_streamed_file_is_augmented_by_reading_it_again_rotated(shower_file, showers):
    """augment=k on a file: k passes an epoch, the first the file's events, the others each event under a drawn non-identity rotation or mirror."""
    from physgen.calorimeter import azimuthal_rows
    from physgen.data.rows import PermutedStream

    source = FileRows(shower_file, block_rows=50)
    rows = azimuthal_rows(source, 3, seed=0)
    assert isinstance(rows, PermutedStream) and len(rows) == 3 * 700
    perms = rows.permutations.numpy()
    inverse = np.argsort(perms, axis=1)
    assert len(perms) == 8  # 4 rotations of the PbWO4 readout, each with and without the mirror
    events = showers[:700].x.numpy()
    where = {r.tobytes(): i for i, r in enumerate(events)}
    passes = [[], [], []]
    for j, (x, _) in enumerate(rows.batches(128, seed=1, epoch=0)):
        passes[min(2, j // 6)].append(x.numpy())  # 700 events: 6 batches of at most 128 a pass
    first = np.concatenate(passes[0])
    assert sorted(where[r.tobytes()] for r in first) == list(range(700))
    used = np.zeros(8, dtype=int)
    for later in (np.concatenate(passes[1]), np.concatenate(passes[2])):
        assert len(later) == 700
        for row in later:  # the group elements that map some event of the file to this row
            elements = [g for g in range(8) if row[inverse[g]].tobytes() in where]
            assert elements
            if len(elements) == 1:  # (a shower symmetric under some element matches several)
                used[elements[0]] += 1
    assert used[0] == 0 and used.sum() > 1300 and stats.chisquare(used[1:]).pvalue > 1e-3  # uniform among the 7 others
    with pytest.raises(InvalidDataError, match="first permutation must be the identity"):
        PermutedStream(source, rows.permutations[1:], 2)
    with pytest.raises(InvalidDataError, match="read by batches"):
        rows.take(np.arange(3))
    # trained end to end: epochs of 3 passes, a step budget, finite losses
    model = ShowerModel("vae", latent=4, hidden=16, layers=1)
    hist = model.fit(shower_file, steps=30, batch_size=128, augment=3, val_fraction=0.2, progress=False)
    assert hist[-1]["stopped_by"] == "steps" and np.isfinite(hist[-1]["loss"])


def test_streaming_refuses_what_it_cannot_do(shower_file, zmumu_path):
    with pytest.raises(ConfigError, match="augment copies must be in"):
        ShowerModel("vae", latent=4, hidden=16, layers=1).fit(shower_file, steps=2, augment=9, progress=False)
    with pytest.raises(ConfigError, match="read it into memory"):
        FileRows(zmumu_path)
    with pytest.raises(ConfigError, match="holds out every one"):
        FileRows(shower_file, block_rows=700).holdout(0.1)


def test_a_large_file_fits_its_preprocessing_on_random_blocks_within_the_budget(shower_file, showers):
    rows = FileRows(shower_file, block_rows=50, fit_values=200 * 768)
    seen = torch.cat([x for x, _ in rows.fit_chunks()])
    assert len(seen) == 200  # four blocks of 50
    position = {r.numpy().tobytes(): i // 50 for i, r in enumerate(showers[:700].x)}
    blocks = sorted({position[r.numpy().tobytes()] for r in seen})
    assert len(blocks) == 4 and blocks != [0, 1, 2, 3]  # drawn at random, not the file's head
    assert len(list(FileRows(shower_file, block_rows=50).fit_chunks())) == 14  # under the budget: every block


def test_initialisation_and_calibration_samples_are_bounded_in_values_not_rows():
    """Dataset-3 showers (40,500 voxels) get 1,657 rows (2²⁶ values), not a fixed row count that outgrows memory."""
    from physgen.data.rows import INIT_VALUES, init_rows

    assert init_rows(100_000, 40_500) == INIT_VALUES // 40_500 == 1657
    assert init_rows(100_000, 6480) == 10_356  # W/Si: 2²⁶ values
    assert init_rows(100_000, 200_000) == 1024  # at least 1,024 rows, however wide
    assert init_rows(500, 40_500) == 500
