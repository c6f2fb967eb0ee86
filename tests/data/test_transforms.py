"""Preprocessing is invertible on real showers, zeros included, and saves as JSON."""

import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from physgen.calorimeter import calorimeter_pipeline
from physgen.data import (
    Dequantise,
    LayerFractions,
    Logit,
    NormaliseByIncidentEnergy,
    Pipeline,
    Standardise,
)
from physgen.errors import InvalidDataError, UnknownNameError


def _close(back, x):
    # 1e-5 relative on every voxel; zeros must come back as (numerically) zero
    err = (back.double() - x.double()).abs()
    assert bool((err <= 1e-5 * x.double().abs() + 1e-9).all()), float(err.max())


@pytest.mark.parametrize("layers", [False, True])
def test_calorimeter_pipeline_inverts_real_showers(showers, layers):
    sizes = [la.n_voxels for la in showers.geometry.layers] if layers else None
    p = calorimeter_pipeline(sizes).fit(showers.x, showers.cond)
    assert bool((showers.x == 0).any())  # the sample has empty voxels
    y, c = p.forward(showers.x, showers.cond)
    assert y.shape == (2000, 768 + (24 if layers else 0)) == (2000, p.output_dim(768))
    assert abs(float(y.mean())) < 1e-3 and abs(float(y.std()) - 1) < 1e-2
    assert abs(float(c.mean())) < 1e-5
    _close(p.inverse(y, showers.cond), showers.x)


def test_float32_model_space_costs_only_sub_alpha_precision(showers):
    # a network works in float32: voxels above alpha * E_inc keep 1e-5 relative,
    # and empty voxels come back below 1e-6 * E_inc (far below any readout threshold)
    p = calorimeter_pipeline().fit(showers.x, showers.cond)
    back = p.inverse(p.forward_x(showers.x, showers.cond).float(), showers.cond).double()
    x, e = showers.x.double(), showers.cond.double()
    big = x > 1e-6 * e
    assert bool(((back - x).abs()[big] <= 1e-5 * x[big]).all())
    assert bool(((back - x).abs() <= 1e-6 * e).all())


def test_pipeline_json_round_trip(showers):
    p = calorimeter_pipeline([32] * 24, noise=1e-2).fit(showers.x, showers.cond)
    q = Pipeline.from_dict(json.loads(json.dumps(p.to_dict())))
    y1, c1 = p.forward(showers.x[:50], showers.cond[:50])
    y2, c2 = q.forward(showers.x[:50], showers.cond[:50])
    assert torch.equal(y1, y2) and torch.equal(c1, c2)


def test_layer_fractions_closed_form():
    t = LayerFractions([2, 1], layer_energy="absolute")
    x = torch.tensor([[1.0, 3.0, 0.0]])
    y = t.forward(x, None)
    torch.testing.assert_close(y, torch.tensor([[0.25, 0.75, 0.0, 4.0, 0.0]], dtype=torch.float64))
    torch.testing.assert_close(t.inverse(y, None), x.double())


@given(st.lists(st.integers(1, 4), min_size=1, max_size=8))
@settings(max_examples=40, deadline=None)
def test_layer_sums_and_broadcast_match_a_loop_over_layers(sizes):
    # runs of equal sizes take the reshape path, single layers the slice path
    from physgen.data import FeatureGroups

    layers = FeatureGroups(sizes)
    x = torch.rand(5, sum(sizes), dtype=torch.float64)
    edges = np.cumsum([0, *sizes])
    want = torch.stack([x[:, a:b].sum(1) for a, b in zip(edges[:-1], edges[1:], strict=True)], 1)
    torch.testing.assert_close(layers.sums(x), want)
    e = torch.rand(5, len(sizes), dtype=torch.float64)
    torch.testing.assert_close(layers.per_voxel(e), torch.cat([e[:, i : i + 1].expand(5, s) for i, s in enumerate(sizes)], 1))


def test_recursive_layer_energies_are_calo_flow_u_variables():
    # layers of 1, 2, 1 voxels with energies 2, 3 (1 + 2), 5: total 10
    t = LayerFractions([1, 2, 1])
    x = torch.tensor([[2.0, 1.0, 2.0, 5.0]])
    y = t.forward(x, None)
    # fractions 1, 1/3, 2/3, 1; u0 = 10, u1 = 2/10, u2 = 3/8
    torch.testing.assert_close(y, torch.tensor([[1.0, 1 / 3, 2 / 3, 1.0, 10.0, 0.2, 0.375]], dtype=torch.float64))
    torch.testing.assert_close(t.inverse(y, None), x.double())
    # any u in range gives layers that add up to the total exactly
    u = torch.tensor([[1.0, 0.5, 0.5, 0.5, 7.0, 0.9, 0.3]], dtype=torch.float64)
    assert float(t.inverse(u, None).sum()) == pytest.approx(7.0)


def test_logit_closed_form():
    t = Logit(alpha=0.1)
    y = t.forward(torch.tensor([[0.5, 0.0]]), None)
    # u = 0.1 + 0.8 * 0.5 = 0.5 -> 0; u = 0.1 -> log(1/9)
    torch.testing.assert_close(y, torch.tensor([[0.0, np.log(1 / 9)]], dtype=torch.float64))


def test_dequantise_adds_noise_only_when_training():
    t = Dequantise(noise=1e-2, threshold=1e-2)
    p = Pipeline(x=[t])
    x = torch.zeros(4, 3)
    assert torch.equal(p.forward_x(x), x)
    noisy = p.train().forward_x(x)
    assert bool((noisy > 0).all()) and bool((noisy < 1e-2).all())
    assert torch.equal(p.inverse(noisy), x)


@settings(max_examples=50, deadline=None)
@given(
    st.lists(st.floats(min_value=0, max_value=1e5, allow_nan=False), min_size=6, max_size=6),
    st.floats(min_value=1.0, max_value=1e6),
)
def test_inverse_of_forward_property(values, energy):
    x = torch.tensor([values], dtype=torch.float32)
    cond = torch.tensor([[energy]], dtype=torch.float32)
    scale = max(float(x.sum()), 1.0)
    p = Pipeline(x=[NormaliseByIncidentEnergy(scale=scale / energy), LayerFractions([4, 2]), Logit(1e-6), Standardise(mean=[0.0] * 8, std=[2.0] * 8)])
    _close(p.inverse(p.forward_x(x, cond), cond), x)


def test_unfitted_and_unknown_transforms_fail_clearly():
    with pytest.raises(InvalidDataError, match="fitted"):
        Standardise().forward(torch.zeros(2, 2), None)
    with pytest.raises(UnknownNameError, match="valid: .*logit"):
        Pipeline.from_dict({"x": [{"name": "logitt"}]})
    with pytest.raises(InvalidDataError, match="incident energy"):
        NormaliseByIncidentEnergy().forward(torch.zeros(2, 2), None)


def test_standardise_floors_the_width_of_columns_training_hardly_moves():
    # columns: never moved, moved by one row in 1,000 (std 5·√(1e-3·(1−1e-3)) = 0.158), wide
    torch.manual_seed(0)
    x = torch.zeros(1000, 3, dtype=torch.float64)
    x[0, 1] = 5.0
    x[:, 2] = 3 + 2 * torch.randn(1000, dtype=torch.float64)
    plain, floored = Standardise().fit(x, None), Standardise(min_std=0.2).fit(x, None)
    assert float(plain.std[0]) == 1e-8  # the old behaviour: a held-out 5 lands at 5e8
    assert float(plain.std[1]) == pytest.approx(5 * (1e-3 * (1 - 1e-3)) ** 0.5, rel=1e-9)
    assert floored.std[:2].tolist() == [0.2, 0.2]
    assert float(floored.std[2]) == float(plain.std[2]) == pytest.approx(float(x[:, 2].std(unbiased=False)), rel=1e-12)
    held_out = torch.tensor([[5.0, 5.0, 3.0]], dtype=torch.float64)
    y = floored.forward(held_out, None)
    assert float(y[0, 0]) == pytest.approx(25.0) and float(y[0, 1]) == pytest.approx((5 - 5e-3) / 0.2)
    assert torch.allclose(floored.inverse(y, None), held_out, rtol=0, atol=1e-12)
    # the floor is saved; states saved before it existed load with their stored widths
    again = Standardise(**json.loads(json.dumps(floored.state())))
    assert again.min_std == 0.2 and torch.equal(again.std, floored.std)
    old = {k: v for k, v in plain.state().items() if k != "min_std"}
    assert torch.equal(Standardise(**old).forward(held_out, None), plain.forward(held_out, None))
    with pytest.raises(InvalidDataError, match="min_std"):
        Standardise(min_std=-0.1)


def test_width_floor_leaves_the_pbwo4_showers_alone(showers):
    # every PbWO4 column's logit spread is well above 0.2: the default pipeline is unchanged there
    sizes = [la.n_voxels for la in showers.geometry.layers]
    a = calorimeter_pipeline(sizes, alpha=1e-3).fit(showers.x, showers.cond)
    b = calorimeter_pipeline(sizes, alpha=1e-3, min_std=0.0).fit(showers.x, showers.cond)
    assert float(b.x_transforms[-1].std.min()) > 0.2
    assert torch.equal(a.forward_x(showers.x, showers.cond), b.forward_x(showers.x, showers.cond))


def test_width_floor_keeps_held_out_wsi_showers_in_range(wsi_path):
    # W/Si (6,480 voxels): some outer voxels are hit by no shower of a small training split;
    # without the floor a held-out shower that hits one lands ~1e8 standard deviations out
    from physgen.io import read

    d = read(wsi_path, stop=1500)
    sizes = [la.n_voxels for la in d.geometry.layers]
    train, test = d.split((0.7, 0.3), seed=0)
    never = (train.x == 0).all(0) & (test.x > 0).any(0)
    assert int(never.sum()) > 0
    for min_std, bound in [(0.0, None), (0.2, 50.0)]:
        p = calorimeter_pipeline(sizes, alpha=1e-3, min_std=min_std).fit(train.x, train.cond)
        worst = float(p.forward_x(test.x, test.cond).abs().max())
        if bound is None:
            assert worst > 1e6
        else:
            assert worst < bound
            assert float(p.forward_x(train.x, train.cond).abs().max()) < bound


@pytest.mark.parametrize("rows", [1, 37, 250, 10_000])
def test_a_streamed_fit_equals_the_fit_on_all_rows(showers, rows):
    """Chunks of any size (one row, uneven, one chunk) fit the same logit scale and moments as the whole set."""
    data = showers[:500]
    layers = [la.n_voxels for la in data.geometry.layers]
    whole = calorimeter_pipeline(layers).fit(data.x, data.cond)
    streamed = calorimeter_pipeline(layers).fit_stream(
        lambda: ((data.x[s : s + rows], data.cond[s : s + rows]) for s in range(0, len(data), rows))
    )
    a, b = whole.to_dict(), streamed.to_dict()
    assert a["x"][2]["scale"] == b["x"][2]["scale"]  # the logit's: a maximum
    for part, i in (("x", 3), ("cond", 1)):
        for key in ("mean", "std"):
            np.testing.assert_allclose(b[part][i][key], a[part][i][key], rtol=1e-12, atol=1e-12)
    # and the numbers are numpy's: population moments of the logit-space values
    z = Pipeline(whole.x_transforms[:3]).forward_x(data.x, data.cond).numpy()
    np.testing.assert_allclose(b["x"][3]["std"], np.maximum(z.std(0), 0.2), rtol=1e-10)


def test_a_streamed_fit_with_no_rows_is_an_error():
    with pytest.raises(InvalidDataError, match="no rows"):
        Pipeline(x=[Standardise()]).fit_stream(lambda: iter(()))
