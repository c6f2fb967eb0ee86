"""The hit calibration: a logistic regression against scipy, pooled per azimuthal ring, and what it gives back."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from physgen.calorimeter import HitCalibration, ShowerModel, azimuthal_orbits
from physgen.calorimeter.hits import fit_hit_shift
from physgen.data import Data, Schema
from physgen.errors import ConfigError, InvalidDataError
from physgen.surrogates import load

SMALL = {"vae": {"latent": 4, "hidden": 32, "layers": 1}, "wgan": {"hidden": 32, "critic_hidden": 32, "layers": 1, "critic_layers": 1}}


def test_fit_hit_shift_is_the_logistic_regression_with_the_models_logits_as_offset():
    """Against scipy's minimiser of the same penalised likelihood, the score equations, and the truth."""
    from scipy.optimize import minimize

    g = torch.Generator().manual_seed(0)
    n, v = 20_000, 4
    x = torch.randn(n, 1, generator=g, dtype=torch.float64)
    logits = torch.randn(n, v, generator=g, dtype=torch.float64) * 1.5 - 1  # a model's drawn logits
    a_true, b_true = torch.tensor([-1.0, 0.0, 0.5, 2.0], dtype=torch.float64), torch.tensor([0.8, -0.3, 0.0, 1.2], dtype=torch.float64)
    hit = torch.rand(n, v, generator=g, dtype=torch.float64) < torch.sigmoid(logits + a_true + b_true * x)
    a, b = fit_hit_shift(hit, x.float(), logits.float())
    eta = logits + a.double() + b.double() * x
    torch.testing.assert_close(torch.sigmoid(eta).sum(0), hit.double().sum(0), rtol=1e-4, atol=0.5)  # occupancy
    torch.testing.assert_close((x * torch.sigmoid(eta)).sum(0), (x * hit).sum(0), rtol=1e-3, atol=2.0)  # its energy trend
    xs, hs, ls = x[:, 0].numpy(), hit.numpy(), logits.float().double().numpy()
    for k in range(v):
        def nll(p, k=k):
            e = ls[:, k] + p[0] + p[1] * xs
            return float(np.sum(np.logaddexp(0, e) - hs[:, k] * e) + 0.5 * p[1] ** 2)  # ridge 1 on the slope
        ref = minimize(nll, np.zeros(2), method="BFGS", options={"gtol": 1e-8}).x
        np.testing.assert_allclose([float(a[k]), float(b[k])], ref, atol=2e-4)
    torch.testing.assert_close(a.double(), a_true, atol=0.06, rtol=0)  # and the truth, within a few standard errors
    torch.testing.assert_close(b.double(), b_true, atol=0.06, rtol=0)


def test_fit_hit_shift_pools_the_voxels_of_a_group_into_one_regression():
    from scipy.optimize import minimize

    g = torch.Generator().manual_seed(1)
    n = 8000
    x = torch.randn(n, 1, generator=g, dtype=torch.float64)
    logits = torch.randn(n, 5, generator=g, dtype=torch.float64) - 1
    groups = torch.tensor([0, 0, 1, 1, 1])
    line = torch.tensor([[-0.5, 1.0], [0.8, -0.4]], dtype=torch.float64)[groups]
    hit = torch.rand(n, 5, generator=g, dtype=torch.float64) < torch.sigmoid(logits + line[:, 0] + line[:, 1] * x)
    a, b = fit_hit_shift(hit, x.float(), logits.float(), groups=groups)
    assert bool((a[:2] == a[0]).all() and (a[2:] == a[2]).all() and (b[2:] == b[2]).all())  # one line per group
    xs, hs, ls = x[:, 0].numpy(), hit.numpy(), logits.float().double().numpy()
    for cols in ([0, 1], [2, 3, 4]):  # scipy on the group's voxels stacked as one column
        def nll(p, cols=cols):
            e = ls[:, cols] + p[0] + p[1] * xs[:, None]
            return float(np.sum(np.logaddexp(0, e) - hs[:, cols] * e) + 0.5 * p[1] ** 2)
        ref = minimize(nll, np.zeros(2), method="BFGS", options={"gtol": 1e-8}).x
        np.testing.assert_allclose([float(a[cols[0]]), float(b[cols[0]])], ref, atol=2e-4)
    with pytest.raises(InvalidDataError, match="one id per voxel"):
        fit_hit_shift(hit, x.float(), logits.float(), groups=groups[:3])


def test_hit_calibration_pools_the_azimuthal_orbits_of_the_geometry(showers):
    """Orbits are the rings (layer, radial bin) of the polar readout; the pooled fit holds per ring, across its chunks."""
    geometry = showers.schema.geometry
    orbits = azimuthal_orbits(geometry, 768)
    layer = torch.as_tensor(geometry.layer_index())
    _, _, r = geometry.voxel_centres()
    ring = torch.unique(layer * 10**8 + torch.round(torch.as_tensor(r) * 1000).long(), return_inverse=True)[1]
    assert bool((torch.unique(ring, return_inverse=True)[1] == orbits).all())  # the same partition, the same order
    assert int(orbits.max()) + 1 == sum(geometry.layers[i].n_r for i in range(geometry.n_layers))
    # score equations per ring, with 20,000 rows (fitted in chunks of about 200 voxels)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(20_000, 1, generator=g)
    logits = torch.randn(20_000, 768, generator=g) - 1
    hit = torch.rand(20_000, 768, generator=g) < torch.sigmoid(logits + 0.3 * x + 0.2)
    a, b = fit_hit_shift(hit, x, logits, groups=orbits)
    p = torch.sigmoid(logits.double() + a.double() + b.double() * x.double())
    per_ring = lambda v: torch.zeros(int(orbits.max()) + 1, dtype=torch.float64).index_add_(0, orbits, v)  # noqa: E731
    torch.testing.assert_close(per_ring(p.sum(0)), per_ring(hit.double().sum(0)), rtol=1e-5, atol=1e-2)
    with pytest.raises(ConfigError, match="'hit_pool' must be one of"):
        ShowerModel("vae", hit_pool="ring")
    flat = Data(showers.x, Schema(kind="calorimeter", feature_names=showers.schema.feature_names), cond=showers.cond)
    with pytest.raises(ConfigError, match="hit_pool='azimuthal' needs"):
        ShowerModel("vae", hit_pool="azimuthal").prepare(flat)


def _drawn_hits(model, data, copies=8):
    """Mean hits per shower and layer ``[N, L]`` of ``copies`` pre-readout draws at each of ``data``'s conditions and
    layer energies, the data's hits per layer, and the energy column.

    Several draws per condition: the WGAN's shared per-layer logit scatter makes one draw's mean count over
    1,500 showers scatter by 5 % in layer 0."""
    y, c = model.preprocessing.forward(data.x, data.cond)
    ys, cs, _ = model.split_stages(y.float(), c.float())
    fam = model.inner
    with torch.no_grad():
        drawn = fam.sample_model(copies * len(ys), cs.repeat(copies, 1), torch.Generator().manual_seed(5))
    layer = torch.as_tensor(data.geometry.layer_index())
    per_layer = lambda h: torch.zeros(len(h), int(layer.max()) + 1).index_add_(1, layer, h.float())  # noqa: E731
    mean_drawn = per_layer(drawn > fam.floor + 1e-6).view(copies, len(ys), -1).mean(0)
    return mean_drawn, per_layer(ys > fam.floor + 1e-6), cs[:, 0]


@pytest.mark.parametrize("family", ["vae", "wgan"])
def test_hit_calibration_gives_back_the_hits_a_model_draws_too_rarely(showers, monkeypatch, family):
    """A model whose hit logits are 1.5 too low per unit of log E_inc draws far too few hits; the calibration restores Geant4's counts."""
    train = showers[:1500]
    default = ShowerModel(family, **SMALL[family])
    default.prepare(train)
    assert default.inner.options.point_mass is True and default.options.hit_calibration is False  # off unless asked for
    model = ShowerModel(family, **SMALL[family], hit_calibration=True)
    model.fit(train, epochs=2, batch_size=250, progress=False, seed=0)
    fam = model.inner
    assert fam.options.logit_shift is True and model.resolved["hit_pool"] == "azimuthal"
    before = fam.logit_shift.clone()
    dim = fam.dims["dim"]
    if family == "wgan":
        with torch.no_grad():
            fam.cond_slope[dim:] -= 1.5  # the hit logits' slope in the first condition column (standardised log E_inc)
    else:
        decode = fam.decode
        monkeypatch.setattr(fam, "decode", lambda h, c: decode(h, c) - 1.5 * torch.cat([torch.zeros(dim), torch.ones(dim)]) * c[:, :1])
    HitCalibration().fit(model, train)
    # the same draws (same seed), logits lower by exactly 1.5·x: the fitted slope rises by 1.5, less a little
    # that the slope's ridge (1, against a Fisher information of tens to hundreds here) keeps back
    y, _ = model.preprocessing.forward(train.x, train.cond)
    common = (y[:, :dim] > fam.floor + 1e-6).double().mean(0).sub(0.5).abs() < 0.3
    shift = (fam.logit_shift[1] - before[1])[common]
    assert int(common.sum()) > 50 and abs(float(shift.median()) - 1.5) < 0.03 and float((shift - 1.5).abs().max()) < 0.1, shift
    drawn, real, x = _drawn_hits(model, train)
    for part in (x < x.median(), x >= x.median()):  # low and high energies alike
        ratio = drawn[part].sum(1).mean() / real[part].sum(1).mean()
        assert abs(float(ratio) - 1) < 0.03, float(ratio)
    per_layer = drawn.mean(0) / real.mean(0).clamp_min(1e-9)
    busy = real.mean(0) > 5  # layers with a few hits a shower
    assert float((per_layer[busy] - 1).abs().max()) < 0.05
    with torch.no_grad():
        fam.logit_shift.zero_()
    drawn0, _, _ = _drawn_hits(model, train)
    hi = x >= x.median()
    assert float(drawn0[hi].sum(1).mean() / real[hi].sum(1).mean()) < 0.95  # without it the sabotage shows


def test_recalibrate_switches_the_calibrations_and_saves_them(tmp_path, showers):
    model = ShowerModel("wgan", **SMALL["wgan"])
    model.fit(showers[:600], epochs=1, batch_size=100, progress=False)
    assert not hasattr(model.inner, "logit_shift")
    model.recalibrate(showers[:600], hit_calibration=True)
    assert model.options.hit_calibration is True and float(model.inner.logit_shift.abs().sum()) > 0
    model.save(tmp_path / "m")
    back = load(tmp_path / "m")
    torch.testing.assert_close(back.inner.logit_shift, model.inner.logit_shift)
    torch.testing.assert_close(back.sample(showers.cond[:50], seed=3).x, model.sample(showers.cond[:50], seed=3).x)
    model.recalibrate(showers[:600], hit_calibration=False)
    assert model.options.hit_calibration is False and not hasattr(model.inner, "logit_shift")
    # the readout's hit-value map, likewise: on for a model fitted without it, and saved with it
    cut = model.readout
    assert model.options.value_calibration is False and cut.value_knots is None
    model.recalibrate(showers[:600], value_calibration=True)
    assert cut.value_knots is not None and cut.value_knots.shape[:2] == (4, 24 * 8)
    model.save(tmp_path / "v")
    torch.testing.assert_close(load(tmp_path / "v").sample(showers.cond[:50], seed=3).x, model.sample(showers.cond[:50], seed=3).x)
    model.recalibrate(showers[:600], value_calibration=False)
    assert cut.value_knots is None
    with pytest.raises(ConfigError, match="'value_calibration' must be true or false"):
        model.recalibrate(showers[:600], value_calibration=1)
    # the cuts' floor at the global threshold: on by default, off on request, and saved
    floored = cut.voxel_thresholds.clone()
    assert bool((floored >= cut.threshold).all())
    model.recalibrate(showers[:600], readout_floor=False)
    assert model.options.readout_floor is False and bool((cut.voxel_thresholds < cut.threshold).any())
    model.save(tmp_path / "f")
    back = load(tmp_path / "f")
    assert back.options.readout_floor is False and torch.equal(back.readout.voxel_thresholds, cut.voxel_thresholds)
    with pytest.raises(ConfigError, match="'readout_floor' must be true or false"):
        model.recalibrate(showers[:600], readout_floor="no")
    plain = ShowerModel("wgan", **SMALL["wgan"], point_mass=False)
    plain.fit(showers[:300], epochs=1, batch_size=100, progress=False)
    with pytest.raises(ConfigError, match="neither point_mass nor analog_bits"):
        plain.recalibrate(showers[:300], hit_calibration=True)
    with pytest.raises(ConfigError, match="hit_calibration shifts a family.s hit logits: the vae family needs point_mass"):
        ShowerModel("vae", point_mass=False, hit_calibration=True)
    with pytest.raises(InvalidDataError, match="not fitted"):
        ShowerModel("vae").recalibrate(showers[:200])


def test_a_presets_hit_calibration_applies_only_where_the_family_has_hit_logits():
    """The diffusion's preset turns the hit calibration on with analog bits; without them it is left out, not an error."""
    plain = ShowerModel("diffusion")
    assert plain.options.hit_calibration is False and "logit_shift" in plain.resolved["dropped_preset_options"]
    bits = ShowerModel("diffusion", analog_bits=True)
    assert bits.options.hit_calibration is True and bits._family_preset["logit_shift"] is True
