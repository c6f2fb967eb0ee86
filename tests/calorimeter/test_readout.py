"""The read-out calibration: cuts fitted to a model's samples, the layers kept, and the hit-value map."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from physgen.calorimeter import (
    ReadoutCalibration,
    ShowerModel,
    azimuthal_orbits,
    calorimeter_pipeline,
)
from physgen.errors import ConfigError, InvalidDataError


def test_readout_threshold_cuts_the_chosen_quantile_of_real_deposits(showers):
    t = ReadoutCalibration(quantile=0.005).fit_threshold(showers.x)
    nonzero = showers.x[showers.x > 0].double()
    # the cut sits where 0.5 % of Geant4's own non-zero deposits lie below it
    assert abs(float((nonzero < t.threshold).double().mean()) - 0.005) < 1e-4
    assert 1e-3 < t.threshold < 1.0  # MeV: far below a MIP's deposit in a 9 mm PbWO4 layer (~10 MeV)
    back = t.apply(showers.x, None)
    assert bool((back[showers.x < t.threshold] == 0).all())
    assert torch.equal(back[showers.x >= t.threshold], showers.x[showers.x >= t.threshold].double())
    q = ReadoutCalibration.from_dict(json.loads(json.dumps(t.to_dict())))
    assert q.threshold == t.threshold and not q.calibrated
    with pytest.raises(InvalidDataError, match="quantile must be in"):
        ReadoutCalibration(quantile=1.5)


def _occupancy_data(n=4000, v=6, seed=0):
    """Training showers whose hit probability depends on the voxel and on the incident energy."""
    g = torch.Generator().manual_seed(seed)
    e = torch.exp(torch.rand(n, 1, generator=g, dtype=torch.float64) * np.log(100.0)) * 1000  # 1–100 GeV, log-uniform
    p_hit = torch.linspace(0.2, 0.95, v, dtype=torch.float64)[None, :] * (0.5 + 0.5 * torch.log(e / 1000) / np.log(100.0))
    x = (torch.rand(n, v, generator=g, dtype=torch.float64) < p_hit) * torch.rand(n, v, generator=g, dtype=torch.float64) * 10
    x[:, -1] = 0  # a voxel Geant4 never hits
    return x, e


def test_readout_calibration_reproduces_the_training_occupancy_per_voxel_and_energy_bin():
    x, e = _occupancy_data()
    # a model that smears every zero: every voxel gets a continuous deposit, small ones where the data had none
    g = torch.Generator().manual_seed(1)
    gen = torch.where(x > 0, x, 0.5 * torch.rand(x.shape, generator=g, dtype=torch.float64))
    t = ReadoutCalibration(threshold=0.01).calibrate(x, e, gen, e, bins=4)
    assert len(t.edges) == 3 and t.voxel_thresholds.shape == (4, 6)
    assert bool((t.voxel_thresholds >= 0.01).all())  # never below the global cut
    back = t.apply(gen, e)
    bins = torch.bucketize(torch.log(e[:, 0]), torch.tensor(t.edges, dtype=torch.float64), right=True)
    for b in range(4):
        real, cut = (x[bins == b] > 0).double().mean(0), (back[bins == b] > 0).double().mean(0)
        # a quantile of ~1,000 samples: occupancy matched to the sample's granularity
        assert float((real - cut).abs().max()) <= 2.0 / int((bins == b).sum()), (b, real, cut)
    assert bool((back[:, -1] == 0).all())  # never hit in training → always empty
    # a single global threshold cannot do this: the occupancy differs per voxel and per energy
    glob = ReadoutCalibration(threshold=float(torch.quantile(gen[x == 0], 0.5))).apply(gen, e)
    assert float(((glob > 0).double().mean(0) - (x > 0).double().mean(0)).abs().max()) > 0.05


def test_readout_cut_keeps_each_layers_energy_and_round_trips_through_json():
    x, e = _occupancy_data(v=8)
    g = torch.Generator().manual_seed(2)
    gen = torch.where(x > 0, x, 0.5 * torch.rand(x.shape, generator=g, dtype=torch.float64))
    t = ReadoutCalibration(threshold=0.01, layer_sizes=[4, 0, 4]).calibrate(x, e, gen, e, bins=3)
    assert t.layer_thresholds.shape == (3, 2)
    back = t.apply(gen, e)
    bins = torch.bucketize(torch.log(e[:, 0]), torch.tensor(t.edges, dtype=torch.float64), right=True)
    for layer, sl in enumerate((slice(0, 4), slice(4, 8))):
        before, after = gen[:, sl].sum(1), back[:, sl].sum(1)
        read = before >= t.layer_thresholds[bins, layer]
        # a layer read out keeps its energy and at least one voxel; one not read out is empty
        torch.testing.assert_close(after[read], before[read], rtol=1e-12, atol=0)
        assert bool(((back[read, sl] > 0).sum(1) >= 1).all()) and bool((after[~read] == 0).all())
        # a voxel below its cut survives only as the largest of a layer its cuts would have emptied
        thresholds = t.voxel_thresholds[bins][:, sl]
        below = (gen[:, sl] < thresholds) & (back[:, sl] > 0)
        rescued = below.any(1)
        assert bool((below.sum(1) <= 1).all()) and bool(((gen[:, sl] >= thresholds) & read[:, None]).sum(1)[rescued].eq(0).all())
        assert torch.equal(gen[rescued, sl].argmax(1), below[rescued].double().argmax(1))
    s = ReadoutCalibration.from_dict(json.loads(json.dumps(t.to_dict())))
    assert torch.equal(s.apply(gen, e), back)
    # a calibration saved before the layer thresholds existed cuts voxels only, as it did
    old = t.to_dict()
    del old["layer_thresholds"]
    old_cut = ReadoutCalibration.from_dict(old).apply(gen, e)
    assert bool((old_cut[gen < t.voxel_thresholds[bins]] == 0).all())
    with pytest.raises(InvalidDataError, match="one row per energy bin"):
        ReadoutCalibration(edges=[0.0], voxel_thresholds=[[1.0, 2.0]])
    with pytest.raises(InvalidDataError, match="equal V"):
        t.calibrate(x, e, gen[:, :3], e)
    with pytest.raises(InvalidDataError, match="add up to"):
        ReadoutCalibration(layer_sizes=[4, 4]).fit_threshold(torch.ones(3, 9))


def test_readout_calibration_reproduces_each_layers_share_of_empty_showers():
    """A model that spreads small energies into layers Geant4 leaves empty: the layer cuts restore the empty share per energy bin."""
    g = torch.Generator().manual_seed(3)
    n, size = 6000, 5
    e = torch.exp(torch.rand(n, 1, generator=g, dtype=torch.float64) * np.log(100.0)) * 1000
    reach = torch.log10(e / 1000)  # showers reach deeper at high energy: layer k is non-empty up to a random depth
    depth = reach * 2 + torch.rand(n, 1, generator=g, dtype=torch.float64) * 2
    layer_on = torch.arange(4, dtype=torch.float64)[None, :] < depth  # [n, 4]
    # Geant4: a layer with energy has it in one voxel; the model spreads the same energy evenly over all five,
    # and leaves tiny deposits in the layers Geant4 keeps empty
    energy = (1 + 9 * torch.rand(n, 4, generator=g, dtype=torch.float64)) * layer_on
    one_hot = torch.nn.functional.one_hot(torch.randint(0, size, (n, 4), generator=g), size).double()
    x = (energy[:, :, None] * one_hot).reshape(n, 4 * size)
    gen = (energy[:, :, None] / size + 1e-3 * torch.rand(n, 4, size, generator=g, dtype=torch.float64)).reshape(n, 4 * size)
    t = ReadoutCalibration(threshold=1e-4, layer_sizes=[size] * 4).calibrate(x, e, gen, e, bins=4)
    back = t.apply(gen, e)
    bins = torch.bucketize(torch.log(e[:, 0]), torch.tensor(t.edges, dtype=torch.float64), right=True)
    layer = lambda v: v.reshape(n, 4, size).sum(-1) > 0  # noqa: E731
    for b in range(4):
        real, got = layer(x)[bins == b].double().mean(0), layer(back)[bins == b].double().mean(0)
        assert float((real - got).abs().max()) <= 2.0 / int((bins == b).sum())
    assert 0.1 < float(layer(x).double().mean()) < 0.9  # empty layers are common here, at every depth but the first
    read, e_gen = layer(back), gen.reshape(n, 4, size).sum(-1)
    torch.testing.assert_close(back.reshape(n, 4, size).sum(-1), torch.where(read, e_gen, 0.0), rtol=1e-12, atol=0)  # all or nothing
    # the layers read out are those the model gave real energy, and the tiny deposits are gone
    assert float((read & (energy == 0)).double().mean()) < 0.01 and bool((back[back > 0] > 1e-2).all())
    # voxel cuts alone match each voxel's occupancy, but empty most of the layers Geant4 reads out
    voxels_only = ReadoutCalibration(threshold=1e-4).calibrate(x, e, gen, e, bins=4).apply(gen, e)
    assert float(layer(voxels_only).double().mean() - layer(x).double().mean()) < -0.2


def test_fit_calibrates_the_readout_so_samples_have_geant4s_hit_occupancy(showers):
    train, test = showers.split((0.5, 0.5), seed=0)

    def layer_occupancy(x):
        return (x > 0).double().reshape(len(x), 24, 32).mean((0, 2))

    real = layer_occupancy(test.x)
    off = ShowerModel("gaussian", readout_bins=0)
    off.fit(train, seed=0)
    on = ShowerModel("gaussian")  # readout_bins=4, the default
    on.fit(train, seed=0)
    cut = on.readout
    assert isinstance(cut, ReadoutCalibration) and cut.voxel_thresholds.shape == (4, 768)
    assert off.readout.voxel_thresholds is None
    d_off = layer_occupancy(off.sample(test.cond, seed=1).x) - real
    d_on = layer_occupancy(on.sample(test.cond, seed=1).x) - real
    # the Gaussian smears Geant4's empty voxels into hits: 3–10 % too many in layers 0–20 …
    assert float(d_off[:21].min()) > 0.02
    # … which the per-voxel cut takes back to the held-out data's occupancy (train/test differ by ~0.01)
    assert float(d_on[:21].abs().max()) < 0.025
    assert float(d_on.abs().mean()) < 0.5 * float(d_off.abs().mean())
    # the cut energy stays in its layer: E_tot is unchanged by the calibration
    e_off = off.sample(test.cond, seed=1).x.sum(1).mean()
    e_on = on.sample(test.cond, seed=1).x.sum(1).mean()
    assert abs(float(e_on / e_off) - 1) < 1e-3
    with pytest.raises(ConfigError, match="'readout_bins' must be ≥ 0"):
        ShowerModel("gaussian", readout_bins=-1)
    with pytest.raises(ConfigError, match="'readout_events' must be ≥ 1"):
        ShowerModel("diffusion", readout_events=0)
    # the model's own samples, before the read-out: smeared empties, the same layer energies
    raw = on.sample(test.cond, seed=1, calibrated=False).x
    assert float(layer_occupancy(raw)[:21].min() - real[:21].max()) > -1.0 and float((layer_occupancy(raw) - real)[:21].min()) > 0.02


def _value_data(n=4000, seed=4):
    """2 layers x 4 angles x 2 radii (angle-major). Geant4's outer-ring hits are rare and sizeable; the model's are
    as frequent but 20x smaller (a continuous model's smeared zeros), and it leaves tiny deposits in empty voxels."""
    g = torch.Generator().manual_seed(seed)
    e = torch.exp(torch.rand(n, 1, generator=g, dtype=torch.float64) * np.log(100.0)) * 1000
    rings = torch.tensor([layer * 2 + r for layer in range(2) for _ in range(4) for r in range(2)])
    outer = rings % 2 == 1
    p_hit = torch.where(outer, 0.3, 0.9).double()
    scale = e / 1000
    x = torch.where(torch.rand(n, 16, generator=g, dtype=torch.float64) < p_hit,
                    torch.exp(torch.randn(n, 16, generator=g, dtype=torch.float64)) * torch.where(outer, 0.5, 2.0) * scale, 0.0)
    gen = torch.where(torch.rand(n, 16, generator=g, dtype=torch.float64) < p_hit,
                      torch.exp(0.5 * torch.randn(n, 16, generator=g, dtype=torch.float64)) * torch.where(outer, 0.025, 2.0) * scale,
                      1e-4 * torch.rand(n, 16, generator=g, dtype=torch.float64))
    return x, e, gen, rings


def _log_shares_of_ring(v, rings, ring):
    shares = (v.reshape(len(v), 2, 8) / v.reshape(len(v), 2, 8).sum(-1, keepdim=True)).reshape(len(v), 16)
    cols = rings == ring
    return shares[:, cols][v[:, cols] > 0].log().numpy()


def test_value_calibration_gives_each_rings_hits_geant4s_layer_shares_keeping_hits_and_layer_energies():
    from scipy.stats import ks_2samp

    x, e, gen, rings = _value_data()
    cuts = ReadoutCalibration(threshold=1e-6, layer_sizes=[8, 8]).calibrate(x, e, gen, e, bins=2)
    t = ReadoutCalibration(threshold=1e-6, layer_sizes=[8, 8]).calibrate(x, e, gen, e, bins=2, values=True, rings=rings, knots=33)
    assert t.value_knots.shape == (2, 4, 2, 33)
    plain, mapped = cuts.apply(gen, e), t.apply(gen, e)
    # the cuts are the same, so are the hits and every layer's energy: only the hits' values move
    assert torch.equal(plain > 0, mapped > 0)
    torch.testing.assert_close(mapped.reshape(-1, 2, 8).sum(-1), plain.reshape(-1, 2, 8).sum(-1), rtol=1e-12, atol=0)
    for ring in range(4):
        before = ks_2samp(_log_shares_of_ring(x, rings, ring), _log_shares_of_ring(plain, rings, ring)).statistic
        after = ks_2samp(_log_shares_of_ring(x, rings, ring), _log_shares_of_ring(mapped, rings, ring)).statistic
        # outer rings: 0.87 before, inner 0.24 (their shares are too large); 0.03-0.04 after, which is what is
        # left of the map's exactness once each layer is rescaled to its energy
        assert before > 0.2 and after < 0.06, (ring, before, after)
    # saved and loaded as JSON, the map is the same
    s = ReadoutCalibration.from_dict(json.loads(json.dumps(t.to_dict())))
    assert torch.equal(s.apply(gen, e), mapped)
    # a refit without values drops the map
    assert ReadoutCalibration(threshold=1e-6, layer_sizes=[8, 8], rings=rings.tolist()).calibrate(x, e, gen, e, bins=2).value_knots is None


def test_value_calibration_of_a_model_that_draws_geant4s_showers_is_the_identity():
    x, e, _, rings = _value_data()
    cuts = ReadoutCalibration(threshold=1e-6, layer_sizes=[8, 8]).calibrate(x, e, x, e, bins=2)
    t = ReadoutCalibration(threshold=1e-6, layer_sizes=[8, 8], rings=rings.tolist()).calibrate(x, e, x, e, bins=2, values=True)
    # the same showers on both sides: every map's knots coincide, and the values come back to the map's float32
    # rounding (samples leave a surrogate as float32)
    torch.testing.assert_close(t.value_knots[:, :, 0], t.value_knots[:, :, 1], rtol=0, atol=0)
    torch.testing.assert_close(t.apply(x, e), cuts.apply(x, e), rtol=1e-5, atol=0)


def test_value_calibration_rejects_what_it_cannot_map():
    x, e, gen, rings = _value_data(n=400)
    with pytest.raises(InvalidDataError, match="rings"):
        ReadoutCalibration(layer_sizes=[8, 8]).calibrate(x, e, gen, e, bins=2, values=True)
    with pytest.raises(InvalidDataError, match="layer_sizes"):
        ReadoutCalibration().calibrate(x, e, gen, e, bins=2, values=True, rings=rings)
    with pytest.raises(InvalidDataError, match="ring ids"):
        ReadoutCalibration(layer_sizes=[8, 8]).calibrate(x, e, gen, e, bins=2, values=True, rings=rings[:5])
    with pytest.raises(InvalidDataError, match="knots"):
        ReadoutCalibration(layer_sizes=[8, 8]).calibrate(x, e, gen, e, bins=2, values=True, rings=rings, knots=1)
    t = ReadoutCalibration(layer_sizes=[8, 8]).calibrate(x, e, gen, e, bins=2, values=True, rings=rings, knots=5)
    state = t.to_dict()
    # a ring with too few hits in a bin keeps its values: in 10 showers the outer rings have about 12 (< min_hits 20)
    few = ReadoutCalibration(layer_sizes=[8, 8]).calibrate(x[:10], e[:10], gen[:10], e[:10], bins=1, values=True, rings=rings)
    same = (few.value_knots[0, :, 0] == few.value_knots[0, :, 1]).all(-1)
    assert same.tolist() == [False, True, False, True]
    bad = {**state, "value_knots": np.asarray(state["value_knots"])[:, :3].tolist()}
    with pytest.raises(InvalidDataError, match="rings, 2, K"):
        ReadoutCalibration.from_dict(bad)
    decreasing = np.asarray(state["value_knots"])
    decreasing[..., 0, :] = decreasing[..., 0, ::-1]
    with pytest.raises(InvalidDataError, match="non-decreasing"):
        ReadoutCalibration.from_dict({**state, "value_knots": decreasing.tolist()})
    with pytest.raises(InvalidDataError, match="value_knots needs rings"):
        ReadoutCalibration.from_dict({**state, "rings": None})


def test_value_calibration_gives_a_ring_short_of_hits_in_a_bin_its_map_over_all_bins():
    """A ring with too few hits in an energy bin takes the map fitted on all bins, not the identity.

    In 4,000 showers and 2 bins the outer rings hold about 2,400 hits a bin and the inner ones 7,200: with
    min_hits 3,000 only the inner rings have a map per bin, and the outer rings' are fitted on both bins together.
    """
    from scipy.stats import ks_2samp

    x, e, gen, rings = _value_data()
    kw = dict(bins=2, values=True, rings=rings, knots=33, min_hits=3000)
    pooled = ReadoutCalibration(threshold=1e-6, layer_sizes=[8, 8]).calibrate(x, e, gen, e, **kw)
    alone = ReadoutCalibration(threshold=1e-6, layer_sizes=[8, 8]).calibrate(x, e, gen, e, pool_bins=False, **kw)
    k, k0 = pooled.value_knots, alone.value_knots
    for ring in (1, 3):  # outer: the same map in both bins, not the identity; without pooling, the identity
        assert torch.equal(k[0, ring], k[1, ring]) and not torch.equal(k[0, ring, 0], k[0, ring, 1])
        assert torch.equal(k0[0, ring, 0], k0[0, ring, 1]) and torch.equal(k0[1, ring, 0], k0[1, ring, 1])
    for ring in (0, 2):  # inner: their own map per bin either way
        assert torch.equal(k[:, ring], k0[:, ring]) and not torch.equal(k[0, ring], k[1, ring])
    mapped, kept = pooled.apply(gen, e), alone.apply(gen, e)
    assert torch.equal(mapped > 0, kept > 0)
    for ring in (1, 3):
        before = ks_2samp(_log_shares_of_ring(x, rings, ring), _log_shares_of_ring(kept, rings, ring)).statistic
        after = ks_2samp(_log_shares_of_ring(x, rings, ring), _log_shares_of_ring(mapped, rings, ring)).statistic
        assert before > 0.5 and after < 0.06, (ring, before, after)


def test_readout_cuts_without_the_floor_give_a_voxel_of_too_small_values_geant4s_occupancy():
    """floor=False lets a per-voxel cut go below the global threshold: a voxel whose sampled values all sit
    under it is read out as often as in Geant4 instead of never."""
    x, e = _occupancy_data()
    g = torch.Generator().manual_seed(1)
    gen = torch.where(x > 0, x, 0.5 * torch.rand(x.shape, generator=g, dtype=torch.float64))
    gen[:, 0] = 0.005 * torch.rand(len(x), generator=g, dtype=torch.float64)  # voxel 0: every value under the 0.01 cut
    floored = ReadoutCalibration(threshold=0.01).calibrate(x, e, gen, e, bins=4)
    free = ReadoutCalibration(threshold=0.01).calibrate(x, e, gen, e, bins=4, floor=False)
    assert bool((floored.voxel_thresholds >= 0.01).all()) and bool((free.voxel_thresholds[:, 0] < 0.01).all())
    assert torch.equal(floored.voxel_thresholds[:, 1:-1], free.voxel_thresholds[:, 1:-1])  # the others were above it anyway
    bins = torch.bucketize(torch.log(e[:, 0]), torch.tensor(free.edges, dtype=torch.float64), right=True)
    a, b = floored.apply(gen, e), free.apply(gen, e)
    assert bool((a[:, 0] == 0).all())
    for k in range(4):
        real, cut = float((x[bins == k, 0] > 0).double().mean()), float((b[bins == k, 0] > 0).double().mean())
        assert real > 0.05 and abs(real - cut) <= 2.0 / int((bins == k).sum()), (k, real, cut)
    assert bool((b[:, -1] == 0).all())  # a voxel Geant4 never hit stays empty without the floor too


def test_value_calibration_gives_a_surrogates_hits_the_held_out_showers_layer_shares(showers, tmp_path):
    """The Gaussian on the embedded Geant4 showers: the map, fitted on the training half, brings the read-out hits'
    shares of their layers to the held-out half's in nearly every ring, and changes no hit and no layer energy."""
    from scipy.stats import ks_2samp

    from physgen.surrogates import load

    train, test = showers.split((0.5, 0.5), seed=0)
    off = ShowerModel("gaussian")
    off.fit(train, seed=0)
    on = ShowerModel("gaussian", value_calibration=True)
    on.fit(train, seed=0)
    a, b = off.sample(test.cond, seed=1).x.double(), on.sample(test.cond, seed=1).x.double()
    assert torch.equal(a > 0, b > 0)
    torch.testing.assert_close(b.reshape(-1, 24, 32).sum(-1), a.reshape(-1, 24, 32).sum(-1), rtol=1e-5, atol=1e-3)
    rings = azimuthal_orbits(showers.geometry, 768)  # the rings the map pooled: 24 layers x 8 radial bins
    assert int(rings.max()) + 1 == 192 and torch.equal(rings.reshape(24, 4, 8)[:, 0], rings.reshape(24, 4, 8)[:, 3])

    def log_shares(v, ring):
        layer = v.reshape(len(v), 24, 32)
        shares = (layer / layer.sum(-1, keepdim=True).clamp_min(1e-300)).reshape(len(v), 768)[:, rings == ring]
        return shares[v[:, rings == ring] > 0].log().numpy()

    ks = np.array([[ks_2samp(log_shares(test.x.double(), r), log_shares(v, r)).statistic for v in (a, b)] for r in range(192)])
    # measured: mean KS distance 0.129 without the map, 0.036 with it; 184 of 192 rings closer
    assert ks[:, 1].mean() < 0.4 * ks[:, 0].mean() and (ks[:, 1] < ks[:, 0]).mean() > 0.9, ks.mean(0)
    on.save(tmp_path / "g")
    torch.testing.assert_close(load(tmp_path / "g").sample(test.cond, seed=1).x.double(), b, rtol=0, atol=0)
    with pytest.raises(ConfigError, match="'value_calibration' must be true or false"):
        ShowerModel("gaussian", value_calibration="yes")
    with pytest.raises(ConfigError, match="readout_bins ≥ 1"):
        ShowerModel("gaussian", value_calibration=True, readout_bins=0)


def test_pipeline_inverse_runs_in_place_only_on_its_own_copy(showers):
    """Standardise and the E_inc scaling invert in place once a block is the pipeline's own float64 copy;
    a caller's float64 tensor is never written, and both paths give the same showers."""
    sizes = [la.n_voxels for la in showers.geometry.layers]
    p = calorimeter_pipeline(sizes, alpha=1e-3).fit(showers.x, showers.cond)
    cut = ReadoutCalibration(quantile=0.005, layer_sizes=sizes).fit_threshold(showers.x)
    y, _ = p.forward(showers.x, showers.cond)
    y = y + 0.1 * torch.randn(y.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    y32 = y.float()
    y64 = y32.double()  # the same values, but the caller's float64 tensor: no copy, so no in-place step on it
    keep = y64.clone()
    a, b = p.inverse(y32, showers.cond, then=cut.apply), p.inverse(y64, showers.cond, then=cut.apply)
    assert torch.equal(y64, keep) and torch.equal(y32, keep.float())
    torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    assert float(a.sum()) > 0


def test_value_calibration_maps_each_voxel_alone_without_the_azimuthal_symmetry(showers, monkeypatch):
    import physgen.calorimeter.shower as shower

    model = ShowerModel("gaussian", value_calibration=True)
    monkeypatch.setattr(shower, "azimuthal_orbits", lambda geometry, dim: None)  # as for a geometry without the symmetry
    model.fit(showers[:1000], seed=0)
    cut = model.readout
    assert cut.value_knots.shape[:2] == (4, 768) and torch.equal(cut.rings, torch.arange(768))
    # 250 showers a bin: a voxel hit in most of them gets its own map, one hit in fewer than 20 keeps its values
    hits = (showers[:1000].x > 0).sum(0)
    mapped = (cut.value_knots[:, :, 0] != cut.value_knots[:, :, 1]).any(-1).any(0)
    assert bool(mapped[hits >= 400].all()) and not bool(mapped[hits < 20].any())


def test_inverse_in_row_blocks_equals_the_whole_batch_at_once(showers, monkeypatch):
    """Pipeline.inverse runs in cache-sized row blocks; every transform is row-wise, so nothing may change."""
    import physgen.data.transforms as tr

    sizes = [la.n_voxels for la in showers.geometry.layers]
    p = calorimeter_pipeline(sizes, alpha=1e-3, noise=1e-2).fit(showers.x, showers.cond)
    cut = ReadoutCalibration(quantile=0.005, layer_sizes=sizes).fit_threshold(showers.x)
    g = torch.Generator().manual_seed(0)
    y, _ = p.forward(showers.x, showers.cond)
    y = y + 0.3 * torch.randn(y.shape, generator=g, dtype=torch.float64)  # a "model's" samples: smeared zeros
    cut.calibrate(showers.x, showers.cond, p.inverse(y, showers.cond), showers.cond, bins=3)
    monkeypatch.setattr(tr, "INVERSE_BLOCK", 10**9)
    whole = p.inverse(y, showers.cond, then=cut.apply)
    monkeypatch.setattr(tr, "INVERSE_BLOCK", 777 * 792)  # 777-row blocks: 2000 rows end in a partial block
    blocks = p.inverse(y, showers.cond, then=cut.apply)
    assert whole.dtype == blocks.dtype == torch.float32 and whole.shape == (2000, 768)
    assert bool((whole == 0).any()) and bool((whole > 0).any())
    assert torch.equal(blocks, whole)
    # a two-stage model's voxels and layer energies, handed over unjoined (float32, as sampling does), joined block by block
    parts = (y[:, :768].float(), y[:, 768:].float())
    joined = p.inverse(torch.cat(parts, 1), showers.cond, then=cut.apply)
    assert torch.equal(p.inverse(parts, showers.cond, then=cut.apply), joined)
    monkeypatch.setattr(tr, "INVERSE_BLOCK", 10**9)
    assert torch.equal(p.inverse(parts, showers.cond, then=cut.apply), joined)
