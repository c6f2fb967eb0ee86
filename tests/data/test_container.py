import numpy as np
import pytest
import torch

from physgen.data import Data, Schema
from physgen.errors import InvalidDataError

EV = Schema(kind="event", feature_names=("a", "b"))


def test_split_is_deterministic_disjoint_and_complete(showers):
    a = showers.split((0.7, 0.2, 0.1), seed=3)
    b = showers.split((0.7, 0.2, 0.1), seed=3)
    c = showers.split((0.7, 0.2, 0.1), seed=4)
    assert [len(p) for p in a] == [1400, 400, 200]
    for p, q in zip(a, b, strict=True):
        assert torch.equal(p.x, q.x)
    assert not torch.equal(a[0].x, c[0].x)
    # disjoint and complete: the incident energies (all distinct) partition the sample
    energies = np.concatenate([p.cond[:, 0].numpy() for p in a])
    assert sorted(energies.tolist()) == sorted(showers.cond[:, 0].numpy().tolist())
    # aux travels with its rows
    np.testing.assert_array_equal(a[1].aux["geant4_cpu_s"].shape, (400,))


def test_slicing_and_batches_keep_rows_together(showers):
    sub = showers[10:20]
    assert len(sub) == 10 and torch.equal(sub.cond, showers.cond[10:20])
    assert torch.equal(showers[[3, 1]].x[1], showers.x[1])
    assert torch.equal(showers[5].x[0], showers.x[5])
    batches = list(showers.iter_batches(300))
    assert [len(b) for b in batches] == [300] * 6 + [200]
    assert torch.equal(Data.concat(batches).x, showers.x)


def test_dataloader_yields_x_and_cond(showers):
    xb, cb = next(iter(showers.dataloader(batch_size=64, seed=1)))
    assert xb.shape == (64, 768) and cb.shape == (64, 1)
    xb2, _ = next(iter(showers.dataloader(batch_size=64, seed=1)))
    assert torch.equal(xb, xb2)
    unconditional = Data(np.zeros((5, 2)), EV)
    xu, cu = next(iter(unconditional.dataloader(batch_size=5)))
    assert cu.shape == (5, 0)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"x": np.zeros(3)}, "≥ 2 dims"),
        ({"x": np.zeros((0, 2))}, "no events"),
        ({"x": np.zeros((3, 2)), "cond": np.zeros((4, 1))}, "N = 3"),
        ({"x": np.array([[np.nan, 1.0]])}, "finite"),
        ({"x": np.zeros((2, 3))}, "schema names 2"),
        ({"x": np.zeros((2, 2)), "mask": np.ones((2, 3), bool)}, "x must be \\[N, P, F\\]"),
        ({"x": np.array([["a", "b"]])}, "numeric"),
    ],
)
def test_validation_says_what_was_expected(kwargs, message):
    with pytest.raises(InvalidDataError, match=message):
        Data(schema=EV, **kwargs)


def test_calorimeter_energies_must_be_nonnegative(showers):
    x = showers.x[:3].clone()
    x[1, 7] = -1.0
    with pytest.raises(InvalidDataError, match="≥ 0.*-1"):
        Data(x, showers.schema, cond=showers.cond[:3])


def test_spins_must_be_binary():
    with pytest.raises(InvalidDataError, match="0 or 1"):
        Data(np.array([[0, 1, 2]]), Schema(kind="spins"))


def test_schema_json_round_trip(showers):
    d = showers.schema.to_dict()
    assert Schema.from_dict(d) == showers.schema
