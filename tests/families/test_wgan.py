"""The conditional WGAN-GP: its point masses and their start, group scatter, summaries, divergence, and real physics."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

import physgen
from physgen.calorimeter import ShowerModel
from physgen.errors import ConfigError
from physgen.metrics import event_features, high_level_features
from physgen.metrics.histograms import separation_power
from physgen.surrogates import TrainingDivergedError, create

SMALL = {"hidden": 32, "critic_hidden": 32, "layers": 1, "critic_layers": 1}
ZMUMU = ["E1", "px1", "py1", "pz1", "E2", "px2", "py2", "pz2"]


@pytest.mark.parametrize("family", ["vae", "wgan"])
def test_one_per_group_is_on_for_showers_and_holds_one_hit_per_layer(showers, family):
    small = {"latent": 4, "hidden": 32, "layers": 1} if family == "vae" else SMALL
    model = ShowerModel(family, **small)
    model.prepare(showers)
    fam = model.inner
    assert fam.options.one_per_group is True and fam.groups.sizes == [32] * 24
    # hit logits of −14: a voxel is hit once in a million draws, yet every layer holds exactly one hit
    out = torch.cat([torch.full((768,), 3.0), torch.full((768,), -14.0)])
    with torch.no_grad():
        if family == "vae":
            fam.decode = lambda h, c: out.expand(len(h), -1)
        else:
            fam.generator[-1].weight.zero_()
            fam.generator[-1].bias.copy_(out)
            fam.group_spread.zero_()
        cond = torch.zeros(500, fam.dims["cond_dim"])
        y = fam.sample_model(500, cond, torch.Generator().manual_seed(0))
        if family == "wgan":  # training draws hits without it: nearly no layer has one
            trained = fam.generate(torch.randn(500, fam.options.noise_dim), cond, torch.Generator().manual_seed(1))
            assert float((trained > fam.floor).double().mean()) < 1e-4
    assert bool(((y > fam.floor).reshape(500, 24, 32).sum(-1) == 1).all())
    with pytest.raises(ConfigError, match="'one_per_group' needs point_mass"):
        ShowerModel(family, **small, point_mass=False, one_per_group=True)


@pytest.mark.parametrize("family", ["vae", "wgan"])
def test_fold_needs_point_mass(family):
    with pytest.raises(ConfigError, match="'fold' needs point_mass"):
        ShowerModel(family, point_mass=False, fold=True)


def test_wgan_point_mass_starts_at_the_voxels_marginals(showers):
    from scipy.optimize import minimize

    wgan = ShowerModel("wgan", **SMALL)
    ym, cm = wgan.prepare(showers)
    fam = wgan.inner
    assert fam.options.point_mass is True
    ys, cs, _ = wgan.split_stages(ym, cm)
    y, x = ys.double().numpy(), cs[:, 0].double().numpy()  # the first condition column: log E_inc, standardised
    hit = showers.x.numpy() > 0  # Geant4's hits are exactly the values above the stored floor
    bias = fam.generator[-1].bias.detach().double().numpy()
    slope = fam.cond_slope.detach().double().numpy()
    # with group_scatter the hit logits are stretched by √(1 + πs²/8) for their layer's spread s
    stretch = np.sqrt(1 + np.pi * fam.group_spread.detach().double().numpy()[fam.group_index.numpy()] ** 2 / 8)
    occ = hit.mean(0)
    for v in np.flatnonzero((occ > 0.05) & (occ < 0.95))[::97]:
        # hit logit a + b x: a logistic regression with the slope's ridge of 1, solved by scipy
        def nll(p, v=v):
            eta = p[0] + p[1] * x
            return float(np.sum(np.logaddexp(0, eta) - hit[:, v] * eta) + 0.5 * p[1] ** 2)

        a, b = minimize(nll, [0.0, 0.0], method="BFGS", options={"gtol": 1e-8}).x
        np.testing.assert_allclose([bias[768 + v], slope[768 + v]], [a * stretch[v], b * stretch[v]], atol=2e-3)
        # hit value: the least-squares line through the hits (same ridge), and their residual spread
        xh, yh = x[hit[:, v]], y[hit[:, v], v]
        m = np.sum((xh - xh.mean()) * (yh - yh.mean())) / (np.sum((xh - xh.mean()) ** 2) + 1.0)
        c = yh.mean() - m * xh.mean()
        np.testing.assert_allclose([bias[v], slope[v]], [c, m], atol=1e-4)
        spread = np.sqrt(np.sum((yh - c - m * xh) ** 2) / (len(yh) - 2))
        np.testing.assert_allclose(float(fam.log_noise[v].detach()), np.log(spread), atol=1e-4)
    # so the untrained generator already hits each voxel about as often as Geant4 does
    with torch.no_grad():
        fake = fam.sample_model(len(y), cs, torch.Generator().manual_seed(0))
    fake_hit = (fake > fam.floor + 1e-6).numpy()
    # a generator starting at π = ½ would be off by |½ − occupancy|; this one by a tenth of that or less,
    # and at the highest energies too (where a start at the energy-averaged occupancy made too few hits)
    assert np.abs(fake_hit.mean(0) - occ).mean() < 0.1 * np.abs(0.5 - occ).mean()
    top = x > np.quantile(x, 0.8)
    assert abs(fake_hit[top].mean() - hit[top].mean()) < 0.1 * abs(hit[top].mean() - hit.mean())


def test_wgan_group_scatter_recovers_a_shared_logit_shift(showers):
    """Hits drawn with one N(0, 1) shift s·u per shower and layer: the start finds s and undoes the fits' attenuation."""
    wgan = ShowerModel("wgan", **SMALL)
    wgan.prepare(showers)
    fam = wgan.inner
    assert fam.options.group_scatter is True  # on in the calorimeter preset, with a geometry
    n_layers, dim, n = len(fam.group_spread), len(fam.floor), 20_000
    g = torch.Generator().manual_seed(0)
    s_true = torch.linspace(0.2, 0.8, n_layers, dtype=torch.float64)
    a = torch.rand(dim, generator=g, dtype=torch.float64) * 3 - 2  # occupancies of about 0.1 to 0.7
    b = torch.rand(dim, generator=g, dtype=torch.float64)
    x = torch.randn(n, 1, generator=g, dtype=torch.float64)
    u = torch.randn(n, n_layers, generator=g, dtype=torch.float64)
    hit = torch.rand(n, dim, generator=g, dtype=torch.float64) < torch.sigmoid(a + b * x + (u * s_true)[:, fam.group_index])
    y = torch.where(hit, fam.floor + 1.0, fam.floor)
    # what a logistic regression of each voxel alone finds: the probit-attenuated logits
    shrink = (1 + math.pi * s_true[fam.group_index] ** 2 / 8) ** -0.5
    a_fit, b_fit = (a * shrink).float(), (b * shrink).float()
    fam._init_group_scatter(y, x, a_fit, b_fit)
    torch.testing.assert_close(fam.group_spread.detach().double(), s_true, atol=0.06, rtol=0.1)
    torch.testing.assert_close(a_fit.double(), a, atol=0.08, rtol=0.05)  # stretched back
    torch.testing.assert_close(b_fit.double(), b, atol=0.08, rtol=0.05)
    # without a shared shift the excess is zero: no scatter is added
    hit0 = torch.rand(n, dim, generator=g, dtype=torch.float64) < torch.sigmoid(a + b * x)
    fam._init_group_scatter(torch.where(hit0, fam.floor + 1.0, fam.floor), x, a.float(), b.float())
    assert float(fam.group_spread.detach().max()) < 0.1
    # sampling shifts a float32 copy in place, layer block by layer block: the same numbers as the indexed shift
    with torch.no_grad():
        fam.group_spread.copy_(torch.linspace(0.2, 0.8, n_layers))
        logits = torch.randn(64, dim, generator=g)
        shifted = fam._scatter(logits, torch.Generator().manual_seed(4))
        in_place = fam._scatter(logits.clone(), torch.Generator().manual_seed(4), in_place=True)
    assert fam.scatter_groups is not None and float((shifted - logits).abs().min()) > 0
    torch.testing.assert_close(in_place, shifted, atol=0, rtol=0)
    with pytest.raises(ConfigError, match="'group_scatter' needs point_mass"):
        ShowerModel("wgan", **SMALL, point_mass=False, group_scatter=True)


def test_wgan_point_mass_trains_and_samples_the_same_distribution(showers):
    """generate() (straight-through hits, for training) and sample_model() (hits first) agree, and the hit logits get gradients."""
    wgan = ShowerModel("wgan", **SMALL, one_per_group=False)  # one_per_group only applies to sampling (tested above)
    wgan.prepare(showers)
    fam = wgan.inner
    rate = torch.linspace(0.05, 0.95, 768)
    value = torch.full((768,), 3.0)  # far above every floor
    with torch.no_grad():
        last = fam.generator[-1]
        last.weight.zero_()
        last.bias.copy_(torch.cat([value, torch.logit(rate)]))
        fam.log_noise.fill_(math.log(0.1))
        fam.group_spread.fill_(0.7)  # each layer's logits shifted by 0.7·u, u ~ N(0, 1) per shower
    # the hit rate is then E_u σ(logit(rate) + 0.7 u): Gauss-Hermite quadrature
    nodes, weights = np.polynomial.hermite_e.hermegauss(40)
    rate = torch.from_numpy((weights / weights.sum() * (1 / (1 + np.exp(-(np.log(rate.numpy() / (1 - rate.numpy()))[:, None] + 0.7 * nodes))))).sum(1)).float()
    cond = torch.zeros(20_000, fam.dims["cond_dim"])
    z = torch.randn(20_000, fam.options.noise_dim, generator=torch.Generator().manual_seed(1))
    trained = fam.generate(z, cond, torch.Generator().manual_seed(2))
    with torch.no_grad():
        sampled = fam.sample_model(20_000, cond, torch.Generator().manual_seed(3))
    for y in (trained.detach(), sampled):
        empty = y == fam.floor
        assert float(((1 - empty.float().mean(0)) - rate).abs().max()) < 5 * math.sqrt(0.25 / 20_000)  # binomial errors
        hits = y[~empty] - value.expand_as(y)[~empty]
        assert abs(float(hits.std()) - 0.1) < 0.005 and abs(float(hits.mean())) < 0.005
    trained.sum().backward()
    grad = last.bias.grad[768:]
    assert bool((grad > 0).all())  # more hits at values above the floor: the output sum grows with every hit logit
    # values at the floor: folded in training and in sampling alike, so no drawn hit is lost below it
    assert fam.options.fold is True
    with torch.no_grad():
        last.bias[:768] = fam.floor
        fam.log_noise.fill_(math.log(0.5))
        trained = fam.generate(z, cond, torch.Generator().manual_seed(2))
        sampled = fam.sample_model(20_000, cond, torch.Generator().manual_seed(3))
    for y in (trained, sampled):
        assert not bool((y < fam.floor).any())
        assert float(((y > fam.floor).float().mean(0) - rate).abs().max()) < 5 * math.sqrt(0.25 / 20_000)
        hits = (y - fam.floor)[y > fam.floor]
        assert stats.kstest(hits.numpy(), stats.halfnorm(scale=0.5).cdf).pvalue > 1e-3  # |N(0, 0.5²)|


def test_wgan_divergence_is_detected_and_nothing_saved(tmp_path, showers):
    wgan = ShowerModel("wgan", hidden=64, critic_hidden=64, layers=2, critic_layers=2, lr_critic=50.0, lr_generator=50.0, n_critic=1)
    with pytest.raises(TrainingDivergedError, match="nothing was saved|no checkpoint"):
        wgan.fit(showers[:600], epochs=20, batch_size=100, progress=False, checkpoint_dir=tmp_path / "run")
    assert not (tmp_path / "run" / "LATEST").exists()


def test_wgan_honours_the_training_learning_rate():
    """Without lr_critic/lr_generator the WGAN takes the training lr (1e-4 unless given)."""
    from physgen.training import TrainConfig

    wgan = create("wgan", **SMALL)
    wgan.setup(4, 0)
    default = TrainConfig.from_dict(wgan.train_defaults)
    assert [o.param_groups[0]["lr"] for o in wgan.configure_optimizers(default)] == [1e-4, 1e-4]
    asked = TrainConfig.from_dict({**wgan.train_defaults, "lr": 3e-3})
    assert [o.param_groups[0]["lr"] for o in wgan.configure_optimizers(asked)] == [3e-3, 3e-3]
    own = create("wgan", **SMALL, lr_critic=2e-4)
    own.setup(4, 0)
    assert [o.param_groups[0]["lr"] for o in own.configure_optimizers(asked)] == [2e-4, 3e-3]


def test_wgan_logs_gan_diagnostics(showers):
    wgan = ShowerModel("wgan", hidden=64, critic_hidden=64, layers=2, critic_layers=2, n_critic=2)
    hist = wgan.fit(showers[:400], epochs=2, batch_size=100, progress=False)
    for key in ("critic_loss", "generator_loss", "wasserstein", "gp", "val_loss"):
        assert key in hist[-1] and math.isfinite(hist[-1][key])


def test_wgan_critic_sees_the_showers_layer_centroids(showers):
    """The critic's summaries are the evaluator's layer centroids (scaled, softened denominator)."""
    wgan = ShowerModel("wgan", **SMALL)
    wgan.prepare(showers)
    assert wgan.inner.options.summaries is True  # on in the calorimeter preset for two-stage showers with a geometry
    y, _ = wgan.preprocessing.forward(showers.x, showers.cond)
    moments = wgan.inner.summaries(y[:, :768].float()).double()  # [N, 6 L]: (EC, width) for x, y, r
    hlf = high_level_features(showers)
    scale = float(np.max(showers.geometry.voxel_centres()[2]))
    e_layer = showers.x.double().reshape(len(showers), 24, 32).sum(2)
    for name, block in (("x", 0), ("y", 2), ("r", 4)):
        for ell in (0, 5, 12, 23):
            hit = e_layer[:, ell] > 0
            want = torch.as_tensor(hlf[f"EC_{name}_{ell}"])[hit] / scale / 1.1  # Σ share = 1, plus 0.1
            got = moments[:, block * 24 + ell][hit]
            torch.testing.assert_close(got, want, atol=2e-4, rtol=2e-3)
    assert float(moments[:, 4 * 24 + 0].std()) > 0.01  # real spread to compare, not constants
    with pytest.raises(ConfigError, match="'summaries' needs the features' summaries"):
        ShowerModel("wgan", summaries=True, two_stage=False).prepare(showers[:100])


def test_the_compiled_gradient_penalty_is_the_eager_one(showers):
    """Under torch.compile the penalty goes through torch.func.grad: the same value and the same critic gradients
    as torch.autograd.grad's double backward, with the showers' summaries in the critic's input."""
    wgan = ShowerModel("wgan", **SMALL)
    wgan.prepare(showers)
    fam = wgan.inner
    y, c = wgan.preprocessing.forward(showers.x[:64], showers.cond[:64])
    mix, cond, _ = wgan.split_stages(y.float(), c.float())  # the voxels; the condition and the layer energies
    from physgen.training import TrainConfig, TrainContext

    compiled = TrainContext(TrainConfig(compile=True), torch.device("cpu"), fam).compiled("gp", fam.gradient_penalty)
    results = []
    for penalty in (fam.gradient_penalty, compiled):
        fam.critic.zero_grad(set_to_none=True)
        gp = penalty(mix, cond)
        gp.backward()
        results.append((gp.detach(), [p.grad.clone() for p in fam.critic.parameters() if p.grad is not None]))
    (eager, eager_grads), (fused, fused_grads) = results
    assert float(eager) > 0.01  # a penalty to compare: the critic's input gradients are far from norm 1
    torch.testing.assert_close(fused, eager, rtol=1e-5, atol=1e-7)
    assert len(fused_grads) == len(eager_grads) >= 3
    for a, b in zip(fused_grads, eager_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


@pytest.fixture(scope="module")
def dimuons(zmumu_path):
    return physgen.read(zmumu_path, branches=ZMUMU, units="GeV")


def _z_peak(data):
    """(position of the highest 4 GeV bin in 40–140 GeV, its height over the 40–66/116–140 GeV sidebands)."""
    m = event_features(data)["m_pair"]
    h, e = np.histogram(m, bins=np.arange(40, 142, 4))
    c = 0.5 * (e[1:] + e[:-1])
    side = (h[c < 66].mean() + h[c > 116].mean()) / 2
    return float(c[np.argmax(h)]), float(h.max() / max(side, 1.0))


def test_the_real_events_and_the_gaussian(dimuons):
    position, height = _z_peak(dimuons)
    assert 86 <= position <= 96 and height > 50  # the CMS Z peak
    gauss = create("gaussian")
    gauss.fit(dimuons)
    assert _z_peak(gauss.sample(n=2304, seed=0))[1] < 2.5  # no peak from a Gaussian


@pytest.mark.parametrize(
    "family, config, fit",
    [
        ("vae", {"latent": 8, "hidden": 128, "layers": 2, "kl_warmup_steps": 300}, {"epochs": 80, "lr": 2e-3, "batch_size": 128}),
        pytest.param(
            "wgan",
            {"hidden": 256, "critic_hidden": 256, "layers": 3, "critic_layers": 3, "noise_dim": 16, "lr_critic": 2e-4, "lr_generator": 2e-4, "gp_weight": 1.0},
            {"epochs": 300, "batch_size": 64},
            marks=pytest.mark.slow,  # ~90 s on 2 cores
        ),
    ],
)
def test_dimuon_mass_shows_the_z_peak(dimuons, family, config, fit):
    model = create(family, **config)
    model.fit(dimuons, progress=False, seed=0, **fit)
    if family == "vae":
        assert not model.options.sample_noise  # on events the decoder mean keeps the correlations the mass rests on
    position, height = _z_peak(model.sample(n=2304, seed=0))
    assert 84 <= position <= 98 and height > 3.5, (position, height)


def test_wgan_quality_on_a_small_real_sample(showers):
    """On 1,125 embedded showers the WGAN beats the Gaussian baseline's mean separation power."""
    train, test = showers.split((0.75, 0.25), seed=0)
    wgan = ShowerModel("wgan", hidden=256, critic_hidden=256, gp_weight=1.0, lr_critic=2e-4, lr_generator=2e-4)
    wgan.fit(train, epochs=40, batch_size=64, progress=False, seed=0)
    assert wgan.inner.options.point_mass
    gauss = ShowerModel("gaussian")
    gauss.fit(train, seed=0)
    fr = high_level_features(test)

    def mean_separation(model):
        f = high_level_features(model.sample(test.cond, seed=0))
        return float(np.mean([separation_power(fr[k], f[k]).value for k in fr])), f

    sep, fg = mean_separation(wgan)
    sep_gauss, _ = mean_separation(gauss)
    assert abs(fg["E_ratio"].mean() - fr["E_ratio"].mean()) < 0.05
    assert sep < sep_gauss, (sep, sep_gauss)  # measured 0.062 against 0.073 (40 epochs, about 20 s)
