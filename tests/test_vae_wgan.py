"""Conditional VAE and WGAN-GP: closed forms, a known likelihood, divergence, and real physics."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

import physgen
from physgen.data import Data, Pipeline, Schema
from physgen.errors import InvalidDataError
from physgen.metrics import event_features, high_level_features
from physgen.metrics.histograms import separation_power
from physgen.surrogates import TrainingDivergedError, create, load
from physgen.surrogates.vae import gaussian_kl

ZMUMU = ["E1", "px1", "py1", "pz1", "E2", "px2", "py2", "pz2"]


def test_kl_matches_torch_distributions():
    torch.manual_seed(0)
    mu, logvar = torch.randn(6, 4), torch.randn(6, 4)
    q = torch.distributions.Normal(mu, (0.5 * logvar).exp())
    p = torch.distributions.Normal(torch.zeros(4), torch.ones(4))
    torch.testing.assert_close(gaussian_kl(mu, logvar), torch.distributions.kl_divergence(q, p).sum(-1))
    assert float(gaussian_kl(torch.zeros(1, 3), torch.zeros(1, 3))) == 0.0


def test_elbo_bounds_the_exact_likelihood_of_a_linear_gaussian_model():
    # probabilistic PCA: y = W h + b + ε, h ~ N(0, I₂), ε ~ N(0, 0.3² I₅): log p(y) = N(y; b, W Wᵀ + 0.09 I)
    rng = np.random.default_rng(0)
    w = rng.normal(size=(5, 2))
    b = rng.normal(size=5)
    cov = w @ w.T + 0.09 * np.eye(5)
    y = rng.multivariate_normal(b, cov, size=6000)
    data = Data(y, Schema(kind="event", feature_names=tuple(f"y{i}" for i in range(5))))
    vae = create("vae", latent=2, hidden=64, layers=2, kl_warmup_steps=200)
    vae.fit(data, preprocessing=Pipeline(), epochs=40, batch_size=200, lr=3e-3, progress=False, seed=0)
    test = rng.multivariate_normal(b, cov, size=3000)
    sign, logdet = np.linalg.slogdet(cov)
    diff = test - b
    exact = -0.5 * (np.einsum("ij,jk,ik->i", diff, np.linalg.inv(cov), diff) + logdet + 5 * math.log(2 * math.pi))
    td = Data(test, data.schema)
    torch.manual_seed(1)
    elbo = vae.log_prob(td).numpy()
    iw = vae.log_prob_iw(td, k=64).numpy()
    # bounds hold on average (stochastic estimates: a few standard errors of slack)
    se = exact.std() / math.sqrt(len(exact))
    assert elbo.mean() <= exact.mean() + 3 * se
    assert iw.mean() <= exact.mean() + 3 * se
    assert iw.mean() >= elbo.mean()  # the importance-weighted bound is tighter
    # and the model is good: within 0.15 nats per dimension of the truth
    assert (exact.mean() - iw.mean()) / 5 < 0.15


def test_vae_history_reports_active_latent_dimensions(showers):
    vae = create("vae", latent=8, hidden=64, layers=1, kl_warmup_steps=4)  # 4 batches per epoch
    hist = vae.fit(showers[:400], epochs=3, batch_size=100, progress=False)
    assert all(0 <= h["active_dims"] <= 8 for h in hist)
    assert hist[-1]["beta"] == 1.0 and hist[0]["kl"] >= 0


def test_vae_empty_mass_is_a_hit_probability_times_a_gaussian(showers):
    vae = create("vae", latent=4, hidden=32, layers=1)
    vae.prepare(showers)
    assert vae.config["empty_mass"] is True  # on by default for two-stage showers (logit, then standardise)
    one_stage = create("vae", latent=4, hidden=32, layers=1, two_stage=False)
    one_stage.prepare(showers[:200])
    assert one_stage.config["empty_mass"] is False  # off without the layer energies (docs/surrogates.md)
    y, _ = vae.preprocessing.forward(showers.x[:64], showers.cond[:64])
    y = y[:, :768].float()
    empty = showers.x[:64] == 0
    assert 0.05 < float(empty.float().mean()) < 0.95
    # Geant4's empty voxels sit exactly on the stored empty value, and hits above it
    torch.testing.assert_close(y[empty], vae._empty.expand_as(y)[empty])
    assert bool((y[~empty] > vae._empty.expand_as(y)[~empty] + 1e-6).all())
    torch.manual_seed(0)
    out = torch.randn(64, 2 * 768)
    with torch.no_grad():
        vae.log_sigma.normal_(0, 0.3)
    mean, logit = out[:, :768], out[:, 768:]
    bern = torch.distributions.Bernoulli(logits=logit).log_prob((~empty).float())
    assert vae.config["fold_hits"] is True  # on with empty_mass: hits follow a folded normal above the empty value
    sigma = vae.log_sigma.detach().exp()
    # scipy's folded normal: e + |N(m, s²) − e| has foldnorm(c = |m − e|/s, loc = e, scale = s)
    folded = stats.foldnorm.logpdf(y.double().numpy(), ((mean - vae._empty) / sigma).abs().double().numpy(), loc=vae._empty.double().numpy(), scale=sigma.double().numpy())
    torch.testing.assert_close(vae._log_lik(y, out), (bern + torch.where(empty, 0.0, torch.from_numpy(folded).float())).sum(1))
    vae.config["fold_hits"] = False  # the plain Gaussian of models saved before the option
    gauss = torch.distributions.Normal(mean, sigma).log_prob(y)
    torch.testing.assert_close(vae._log_lik(y, out), (bern + torch.where(empty, 0.0, gauss)).sum(1))


def test_folded_hits_are_never_lost_and_follow_the_folded_normal():
    """A hit drawn near the empty value stays a hit; its value is e + |m + sε − e| (scipy's foldnorm), not below e."""
    from physgen.surrogates.base import draw_empty_mass, folded_normal_log_prob

    n, empty = 40_000, torch.tensor([-1.5, 0.0, 2.0])
    mean = empty + torch.tensor([-0.3, 0.0, 0.5])  # at, below and above the empty value: folding matters
    sigma = torch.tensor([0.4, 1.0, 0.5])
    rate = torch.tensor([0.3, 0.6, 0.9])
    for fold in (False, True):
        y = draw_empty_mass(mean.expand(n, 3), torch.logit(rate).expand(n, 3), sigma, empty, torch.Generator().manual_seed(0), fold=fold)
        hit = y > empty
        below = (y < empty).float().mean(0)
        if not fold:  # the plain Gaussian leaves Φ((e − m)/s) of the hits below the empty value
            expected = rate * torch.distributions.Normal(0, 1).cdf((empty - mean) / sigma)
            assert float((below - expected).abs().max()) < 5 * math.sqrt(0.25 / n)
            continue
        assert float(below.max()) == 0.0
        assert float(((hit.float().mean(0)) - rate).abs().max()) < 5 * math.sqrt(0.25 / n)  # every drawn hit kept
        for j in range(3):
            c = abs(float((mean[j] - empty[j]) / sigma[j]))  # scipy's c ≥ 0: folding N(m) or N(2e − m) is the same
            assert stats.kstest(y[hit[:, j], j].numpy(), stats.foldnorm(c, loc=float(empty[j]), scale=float(sigma[j])).cdf).pvalue > 1e-3
    # the log-density integrates to 1 over the hits' side
    grid = torch.linspace(0, 12, 200_001, dtype=torch.float64)
    dens = folded_normal_log_prob(grid, torch.tensor(0.3, dtype=torch.float64), torch.tensor(0.0, dtype=torch.float64).log1p(), torch.tensor(0.0, dtype=torch.float64)).exp()
    assert abs(float(torch.trapezoid(dens, grid)) - 1) < 1e-6


def test_vae_empty_mass_samples_hits_at_the_decoders_rate(showers, monkeypatch):
    vae = create("vae", latent=4, hidden=32, layers=1)
    vae.prepare(showers)
    rate = torch.linspace(0.05, 0.95, 768)
    mean = torch.full((768,), 3.0)  # far above every empty value: a hit never lands on it by chance
    monkeypatch.setattr(vae, "decode", lambda h, c: torch.cat([mean, torch.logit(rate)]).expand(len(h), -1))
    with torch.no_grad():
        vae.log_sigma.fill_(math.log(0.1))
        y = vae.sample_model(20_000, None, torch.Generator().manual_seed(0))
    empty = y == vae._empty
    hit_rate = 1 - empty.float().mean(0)
    assert float((hit_rate - rate).abs().max()) < 5 * math.sqrt(0.25 / 20_000)  # binomial errors
    hits = y[~empty] - mean.expand_as(y)[~empty]
    assert abs(float(hits.std()) - 0.1) < 0.005 and abs(float(hits.mean())) < 0.005  # hits carry the Gaussian
    # the hit calibration's shift, added in place to the decoder's (here expanded) logits: rate σ(logit(p) + a)
    vae.config["hit_calibration"] = True
    vae.register_buffer("_hit_shift", torch.stack([torch.full((768,), 0.7), torch.zeros(768)]))
    with torch.no_grad():
        y = vae.sample_model(20_000, None, torch.Generator().manual_seed(0))
    shifted = torch.sigmoid(torch.logit(rate) + 0.7)
    assert float(((y != vae._empty).float().mean(0) - shifted).abs().max()) < 5 * math.sqrt(0.25 / 20_000)


@pytest.mark.parametrize(
    "family, config, option",
    [
        ("vae", {"latent": 4, "hidden": 32, "layers": 1}, "empty_mass"),
        ("wgan", {"hidden": 32, "critic_hidden": 32, "layers": 1, "critic_layers": 1}, "shower_moments"),
        ("wgan", {"hidden": 32, "critic_hidden": 32, "layers": 1, "critic_layers": 1}, "empty_mass"),
        ("wgan", {"hidden": 32, "critic_hidden": 32, "layers": 1, "critic_layers": 1}, "layer_scatter"),
        ("vae", {"latent": 4, "hidden": 32, "layers": 1}, "fold_hits"),
        ("wgan", {"hidden": 32, "critic_hidden": 32, "layers": 1, "critic_layers": 1}, "fold_hits"),
        ("vae", {"latent": 4, "hidden": 32, "layers": 1}, "one_hit_per_layer"),
        ("wgan", {"hidden": 32, "critic_hidden": 32, "layers": 1, "critic_layers": 1}, "one_hit_per_layer"),
        ("vae", {"latent": 4, "hidden": 32, "layers": 1}, "hit_calibration"),
        ("wgan", {"hidden": 32, "critic_hidden": 32, "layers": 1, "critic_layers": 1}, "hit_calibration"),
    ],
)
def test_checkpoint_saved_before_an_option_existed_loads_as_it_was_trained(tmp_path, showers, family, config, option):
    import json

    model = create(family, **config, **{option: False})
    model.fit(showers[:300], epochs=1, batch_size=100, progress=False)
    model.save(tmp_path / "m")
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    del cfg["hyperparameters"][option]  # as written before the option existed
    (tmp_path / "m" / "config.json").write_text(json.dumps(cfg))
    back = load(tmp_path / "m")
    assert back.config[option] is False
    torch.testing.assert_close(back.sample(showers.cond[:50], seed=3).x, model.sample(showers.cond[:50], seed=3).x)


@pytest.mark.parametrize("family", ["vae", "wgan"])
def test_empty_mass_needs_logit_then_standardise(showers, family):
    with pytest.raises(InvalidDataError, match="empty_mass needs"):
        create(family, empty_mass=True).fit(showers[:200], preprocessing=Pipeline(), epochs=1, progress=False)


def test_a_layer_without_hits_gets_one_where_hits_are_likely():
    """one_hit_per_layer_: hitless layers get one hit, at a voxel drawn ∝ the hit probabilities; other layers are untouched."""
    from physgen.data.transforms import _Layers
    from physgen.surrogates.base import one_hit_per_layer_

    layers = _Layers([4, 4, 6])
    prob = torch.tensor([0.01, 0.02, 0.03, 0.04, 0.5, 0.5, 0.5, 0.5, 0.001, 0.002, 0.003, 0.004, 0.005, 0.085])
    n = 30_000
    g = torch.Generator().manual_seed(0)
    hit = torch.rand(n, 14, generator=g) < prob
    before = hit.clone()
    one_hit_per_layer_(hit, prob.expand(n, -1), layers, torch.Generator().manual_seed(1))
    counts = torch.stack([hit[:, :4].sum(1), hit[:, 4:8].sum(1), hit[:, 8:].sum(1)], 1)
    assert bool((counts >= 1).all())
    had = torch.stack([before[:, :4].any(1), before[:, 4:8].any(1), before[:, 8:].any(1)], 1)
    for k, sl in enumerate((slice(0, 4), slice(4, 8), slice(8, 14))):
        assert torch.equal(hit[had[:, k], sl], before[had[:, k], sl])  # layers with a hit keep theirs
        forced = hit[~had[:, k], sl]
        assert bool((forced.sum(1) == 1).all())
        observed = forced.sum(0).double().numpy()
        if observed.sum() > 100:  # the chosen voxel follows the probabilities
            share = prob[sl].double().numpy()
            expected = share / share.sum() * observed.sum()
            assert stats.chisquare(observed, expected).pvalue > 1e-3


@pytest.mark.parametrize("family", ["vae", "wgan"])
def test_one_hit_per_layer_is_on_for_showers_and_needs_a_geometry(showers, family):
    small = {"latent": 4, "hidden": 32, "layers": 1} if family == "vae" else {"hidden": 32, "critic_hidden": 32, "layers": 1, "critic_layers": 1}
    model = create(family, **small)
    model.prepare(showers)
    assert model.config["one_hit_per_layer"] is True and model.hit_layers.sizes == [32] * 24
    # hit logits of −14: a voxel is hit once in a million draws, yet every layer holds exactly one hit
    out = torch.cat([torch.full((768,), 3.0), torch.full((768,), -14.0)])
    with torch.no_grad():
        if family == "vae":
            model.decode = lambda h, c: out.expand(len(h), -1)
        else:
            model.generator[-1].weight.zero_()
            model.generator[-1].bias.copy_(out)
            model.hit_scatter.zero_()
        cond = torch.zeros(500, model.dims["cond_dim"])
        y = model.sample_model(500, cond, torch.Generator().manual_seed(0))
        if family == "wgan":  # training draws hits without it (docs/surrogates.md): nearly no layer has one
            trained = model.generate(torch.randn(500, model.config["noise_dim"]), cond, torch.Generator().manual_seed(1))
            assert float((trained > model._empty).double().mean()) < 1e-4
    assert bool(((y > model._empty).reshape(500, 24, 32).sum(-1) == 1).all())
    with pytest.raises(InvalidDataError, match="one_hit_per_layer needs empty_mass"):
        create(family, **small, empty_mass=False, one_hit_per_layer=True).fit(showers[:200], epochs=1, progress=False)


@pytest.mark.parametrize("family", ["vae", "wgan"])
def test_fold_hits_needs_empty_mass(showers, family):
    with pytest.raises(InvalidDataError, match="fold_hits .* needs empty_mass"):
        create(family, empty_mass=False, fold_hits=True).fit(showers[:200], epochs=1, progress=False)


def test_wgan_empty_mass_starts_at_the_voxels_marginals(showers):
    from scipy.optimize import minimize

    wgan = create("wgan", hidden=32, critic_hidden=32, layers=1, critic_layers=1)
    ym, cm = wgan.prepare(showers)
    assert wgan.config["empty_mass"] is True  # on by default for two-stage showers (logit, then standardise)
    ys, cs, _ = wgan.split_stages(ym, cm)
    y, x = ys.double().numpy(), cs[:, 0].double().numpy()  # the first condition column: log E_inc, standardised
    hit = showers.x.numpy() > 0  # Geant4's hits are exactly the values above the stored empty value
    bias = wgan.generator[-1].bias.detach().double().numpy()
    slope = wgan.cond_slope.detach().double().numpy()
    # with layer_scatter the hit logits are stretched by √(1 + πs²/8) for their layer's spread s
    stretch = np.sqrt(1 + np.pi * wgan.hit_scatter.detach().double().numpy()[wgan._hit_layer.numpy()] ** 2 / 8)
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
        np.testing.assert_allclose(float(wgan.log_noise[v].detach()), np.log(spread), atol=1e-4)
    # so the untrained generator already hits each voxel about as often as Geant4 does
    with torch.no_grad():
        fake = wgan.sample_model(len(y), cs, torch.Generator().manual_seed(0))
    fake_hit = (fake > wgan._empty + 1e-6).numpy()
    # a generator starting at π = ½ would be off by |½ − occupancy|; this one by a tenth of that or less,
    # and at the highest energies too (where a start at the energy-averaged occupancy made too few hits)
    assert np.abs(fake_hit.mean(0) - occ).mean() < 0.1 * np.abs(0.5 - occ).mean()
    top = x > np.quantile(x, 0.8)
    assert abs(fake_hit[top].mean() - hit[top].mean()) < 0.1 * abs(hit[top].mean() - hit.mean())


def test_wgan_layer_scatter_recovers_a_shared_logit_shift(showers):
    """Hits drawn with one N(0, 1) shift s·u per shower and layer: the start finds s and undoes the fits' attenuation."""
    wgan = create("wgan", hidden=32, critic_hidden=32, layers=1, critic_layers=1)
    wgan.prepare(showers)
    assert wgan.config["layer_scatter"] is True  # on by default with empty_mass and a geometry
    n_layers, dim, n = len(wgan.hit_scatter), len(wgan._empty), 20_000
    g = torch.Generator().manual_seed(0)
    s_true = torch.linspace(0.2, 0.8, n_layers, dtype=torch.float64)
    a = torch.rand(dim, generator=g, dtype=torch.float64) * 3 - 2  # occupancies of about 0.1 to 0.7
    b = torch.rand(dim, generator=g, dtype=torch.float64)
    x = torch.randn(n, 1, generator=g, dtype=torch.float64)
    u = torch.randn(n, n_layers, generator=g, dtype=torch.float64)
    hit = torch.rand(n, dim, generator=g, dtype=torch.float64) < torch.sigmoid(a + b * x + (u * s_true)[:, wgan._hit_layer])
    y = torch.where(hit, wgan._empty + 1.0, wgan._empty)
    # what a logistic regression of each voxel alone finds: the probit-attenuated logits
    shrink = (1 + math.pi * s_true[wgan._hit_layer] ** 2 / 8) ** -0.5
    a_fit, b_fit = (a * shrink).float(), (b * shrink).float()
    wgan._init_layer_scatter(y, x, a_fit, b_fit)
    torch.testing.assert_close(wgan.hit_scatter.detach().double(), s_true, atol=0.06, rtol=0.1)
    torch.testing.assert_close(a_fit.double(), a, atol=0.08, rtol=0.05)  # stretched back
    torch.testing.assert_close(b_fit.double(), b, atol=0.08, rtol=0.05)
    # without a shared shift the excess is zero: no scatter is added
    hit0 = torch.rand(n, dim, generator=g, dtype=torch.float64) < torch.sigmoid(a + b * x)
    wgan._init_layer_scatter(torch.where(hit0, wgan._empty + 1.0, wgan._empty), x, a.float(), b.float())
    assert float(wgan.hit_scatter.detach().max()) < 0.1
    # sampling shifts a float32 copy in place, layer block by layer block: the same numbers as the indexed shift
    with torch.no_grad():
        wgan.hit_scatter.copy_(torch.linspace(0.2, 0.8, n_layers))
        logits = torch.randn(64, dim, generator=g)
        shifted = wgan._scatter_hits(logits, torch.Generator().manual_seed(4))
        in_place = wgan._scatter_hits(logits.clone(), torch.Generator().manual_seed(4), in_place=True)
    assert wgan.scatter_runs is not None and float((shifted - logits).abs().min()) > 0
    torch.testing.assert_close(in_place, shifted, atol=0, rtol=0)
    with pytest.raises(InvalidDataError, match="layer_scatter needs empty_mass"):
        create("wgan", hidden=32, critic_hidden=32, empty_mass=False, layer_scatter=True).fit(showers[:200], epochs=1, progress=False)


def test_wgan_empty_mass_trains_and_samples_the_same_distribution(showers):
    """generate() (straight-through hits, for training) and sample_model() (hits first) agree, and the hit logits get gradients."""
    # without one_hit_per_layer, which only sampling applies (tested below)
    wgan = create("wgan", hidden=32, critic_hidden=32, layers=1, critic_layers=1, one_hit_per_layer=False)
    wgan.prepare(showers)
    rate = torch.linspace(0.05, 0.95, 768)
    value = torch.full((768,), 3.0)  # far above every empty value
    with torch.no_grad():
        last = wgan.generator[-1]
        last.weight.zero_()
        last.bias.copy_(torch.cat([value, torch.logit(rate)]))
        wgan.log_noise.fill_(math.log(0.1))
        wgan.hit_scatter.fill_(0.7)  # each layer's logits shifted by 0.7·u, u ~ N(0, 1) per shower
    # the hit rate is then E_u σ(logit(rate) + 0.7 u): Gauss-Hermite quadrature
    nodes, weights = np.polynomial.hermite_e.hermegauss(40)
    rate = torch.from_numpy((weights / weights.sum() * (1 / (1 + np.exp(-(np.log(rate.numpy() / (1 - rate.numpy()))[:, None] + 0.7 * nodes))))).sum(1)).float()
    cond = torch.zeros(20_000, wgan.dims["cond_dim"])
    z = torch.randn(20_000, wgan.config["noise_dim"], generator=torch.Generator().manual_seed(1))
    trained = wgan.generate(z, cond, torch.Generator().manual_seed(2))
    with torch.no_grad():
        sampled = wgan.sample_model(20_000, cond, torch.Generator().manual_seed(3))
    for y in (trained.detach(), sampled):
        empty = y == wgan._empty
        assert float(((1 - empty.float().mean(0)) - rate).abs().max()) < 5 * math.sqrt(0.25 / 20_000)  # binomial errors
        hits = y[~empty] - value.expand_as(y)[~empty]
        assert abs(float(hits.std()) - 0.1) < 0.005 and abs(float(hits.mean())) < 0.005
    trained.sum().backward()
    grad = last.bias.grad[768:]
    assert bool((grad > 0).all())  # more hits at values above empty: the output sum grows with every hit logit
    # values at the empty value: folded in training and in sampling alike, so no drawn hit is lost below it
    assert wgan.config["fold_hits"] is True
    with torch.no_grad():
        last.bias[:768] = wgan._empty
        wgan.log_noise.fill_(math.log(0.5))
        trained = wgan.generate(z, cond, torch.Generator().manual_seed(2))
        sampled = wgan.sample_model(20_000, cond, torch.Generator().manual_seed(3))
    for y in (trained, sampled):
        assert not bool((y < wgan._empty).any())
        assert float(((y > wgan._empty).float().mean(0) - rate).abs().max()) < 5 * math.sqrt(0.25 / 20_000)
        hits = (y - wgan._empty)[y > wgan._empty]
        assert stats.kstest(hits.numpy(), stats.halfnorm(scale=0.5).cdf).pvalue > 1e-3  # |N(0, 0.5²)|


def test_fit_hit_shift_is_the_logistic_regression_with_the_models_logits_as_offset():
    """Against scipy's minimiser of the same penalised likelihood, the score equations, and the truth."""
    from scipy.optimize import minimize

    from physgen.surrogates.base import fit_hit_shift

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

    from physgen.surrogates.base import fit_hit_shift

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
    from physgen.surrogates.base import fit_hit_shift

    model = create("vae", latent=4, hidden=32, layers=1)
    model.prepare(showers)
    geometry = showers.schema.geometry
    orbits = model.azimuthal_orbits(768)
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
    with pytest.raises(InvalidDataError, match="hit_pool must be"):
        create("vae", hit_pool="ring").prepare(showers)
    flat = Data(showers.x, Schema(kind="calorimeter", feature_names=showers.schema.feature_names), cond=showers.cond)
    with pytest.raises(InvalidDataError, match="hit_pool='azimuthal' needs"):
        create("vae", hit_pool="azimuthal").prepare(flat)


def _drawn_hits(model, data, copies=8):
    """Mean hits per shower and layer ``[N, L]`` of ``copies`` pre-readout draws at each of ``data``'s conditions and
    layer energies, the data's hits per layer, and the energy column.

    Several draws per condition: the WGAN's shared per-layer logit scatter (about 1 logit unit on PbWO4) makes
    one draw's mean count over 1,500 showers scatter by 5 % in layer 0."""
    y, c = model.preprocessing.forward(data.x, data.cond)
    ys, cs, _ = model.split_stages(y.float(), c.float())
    with torch.no_grad():
        drawn = model.sample_model(copies * len(ys), cs.repeat(copies, 1), torch.Generator().manual_seed(5))
    layer = model.voxel_layers(ys.shape[1])
    per_layer = lambda h: torch.zeros(len(h), int(layer.max()) + 1).index_add_(1, layer, h.float())  # noqa: E731
    mean_drawn = per_layer(drawn > model._empty + 1e-6).view(copies, len(ys), -1).mean(0)
    return mean_drawn, per_layer(ys > model._empty + 1e-6), cs[:, 0]


@pytest.mark.parametrize(
    "family, config",
    [("vae", {"latent": 4, "hidden": 32, "layers": 1}), ("wgan", {"hidden": 32, "critic_hidden": 32, "layers": 1, "critic_layers": 1})],
)
def test_hit_calibration_gives_back_the_hits_a_model_draws_too_rarely(showers, monkeypatch, family, config):
    """A model whose hit logits are 1.5 too low per unit of log E_inc draws far too few hits; the calibration restores Geant4's counts."""
    train = showers[:1500]
    default = create(family, **config)
    default.prepare(train)
    assert default.config["empty_mass"] is True and default.config["hit_calibration"] is False  # off by default for empty_mass
    model = create(family, **config, hit_calibration=True)
    model.fit(train, epochs=2, batch_size=250, progress=False, seed=0)
    assert model.config["hit_calibration"] is True
    before = model._hit_shift.clone()
    dim = model.dims["dim"]
    if family == "wgan":
        with torch.no_grad():
            model.cond_slope[dim:] -= 1.5  # the hit logits' slope in the first condition column (standardised log E_inc)
    else:
        decode = model.decode
        monkeypatch.setattr(model, "decode", lambda h, c: decode(h, c) - 1.5 * torch.cat([torch.zeros(dim), torch.ones(dim)]) * c[:, :1])
    model.calibrate_hits(train)
    # the same draws (same seed), logits lower by exactly 1.5·x: the fitted slope rises by 1.5, less a little
    # that the slope's ridge (1, against a Fisher information of tens to hundreds here) keeps back
    y, _ = model.preprocessing.forward(train.x, train.cond)
    common = (y[:, :dim] > model._empty + 1e-6).double().mean(0).sub(0.5).abs() < 0.3
    shift = (model._hit_shift[1] - before[1])[common]
    assert int(common.sum()) > 50 and abs(float(shift.median()) - 1.5) < 0.03 and float((shift - 1.5).abs().max()) < 0.1, shift
    drawn, real, x = _drawn_hits(model, train)
    for part in (x < x.median(), x >= x.median()):  # low and high energies alike
        ratio = drawn[part].sum(1).mean() / real[part].sum(1).mean()
        assert abs(float(ratio) - 1) < 0.03, float(ratio)
    per_layer = drawn.mean(0) / real.mean(0).clamp_min(1e-9)
    busy = real.mean(0) > 5  # layers with a few hits a shower
    assert float((per_layer[busy] - 1).abs().max()) < 0.05
    with torch.no_grad():
        model._hit_shift.zero_()
    drawn0, _, _ = _drawn_hits(model, train)
    hi = x >= x.median()
    assert float(drawn0[hi].sum(1).mean() / real[hi].sum(1).mean()) < 0.95  # without it the sabotage shows (PbWO4's hits near saturation)


def test_recalibrate_turns_the_hit_calibration_on_for_an_older_model(tmp_path, showers):
    model = create("wgan", hidden=32, critic_hidden=32, layers=1, critic_layers=1, hit_calibration=False)
    model.fit(showers[:600], epochs=1, batch_size=100, progress=False)
    assert not hasattr(model, "_hit_shift")
    model.recalibrate(showers[:600], hit_calibration=True)
    assert model.config["hit_calibration"] is True and float(model._hit_shift.abs().sum()) > 0
    model.save(tmp_path / "m")
    back = load(tmp_path / "m")
    torch.testing.assert_close(back._hit_shift, model._hit_shift)
    torch.testing.assert_close(back.sample(showers.cond[:50], seed=3).x, model.sample(showers.cond[:50], seed=3).x)
    model.recalibrate(showers[:600], hit_calibration=False)
    assert model.config["hit_calibration"] is False and not hasattr(model, "_hit_shift")
    # the readout's hit-value map, likewise: on for a model fitted without it, and saved with it
    cut = model.preprocessing.x_transforms[0]
    assert model.config.get("value_calibration", False) is False and cut.value_knots is None
    model.recalibrate(showers[:600], value_calibration=True)
    assert cut.value_knots is not None and cut.value_knots.shape[:2] == (4, 24 * 8)
    model.save(tmp_path / "v")
    torch.testing.assert_close(load(tmp_path / "v").sample(showers.cond[:50], seed=3).x, model.sample(showers.cond[:50], seed=3).x)
    model.recalibrate(showers[:600], value_calibration=False)
    assert cut.value_knots is None
    with pytest.raises(InvalidDataError, match="value_calibration must be true or false"):
        model.recalibrate(showers[:600], value_calibration=1)
    # the cuts' floor at the global threshold: on by default, off on request, and saved
    floored = cut.voxel_thresholds.clone()
    assert bool((floored >= cut.threshold).all())
    model.recalibrate(showers[:600], readout_floor=False)
    assert model.config["readout_floor"] is False and bool((cut.voxel_thresholds < cut.threshold).any())
    model.save(tmp_path / "f")
    back = load(tmp_path / "f")
    assert back.config["readout_floor"] is False and torch.equal(back.preprocessing.x_transforms[0].voxel_thresholds, cut.voxel_thresholds)
    with pytest.raises(InvalidDataError, match="readout_floor must be true or false"):
        model.recalibrate(showers[:600], readout_floor="no")
    plain = create("wgan", hidden=32, critic_hidden=32, layers=1, critic_layers=1, empty_mass=False)
    plain.fit(showers[:300], epochs=1, batch_size=100, progress=False)
    with pytest.raises(InvalidDataError, match="neither empty_mass nor hit_bits"):
        plain.recalibrate(showers[:300], hit_calibration=True)
    with pytest.raises(InvalidDataError, match="hit_calibration shifts a family.s hit logits: it needs empty_mass"):
        create("vae", empty_mass=False, hit_calibration=True).fit(showers[:200], epochs=1, progress=False)
    with pytest.raises(InvalidDataError, match="not fitted"):
        create("vae").recalibrate(showers[:200])


def test_wgan_divergence_is_detected_and_nothing_saved(tmp_path, showers):
    wgan = create("wgan", hidden=64, critic_hidden=64, layers=2, critic_layers=2, lr_critic=50.0, lr_generator=50.0, n_critic=1)
    with pytest.raises(TrainingDivergedError, match="nothing was saved|no checkpoint"):
        wgan.fit(showers[:600], epochs=20, batch_size=100, progress=False, checkpoint_dir=tmp_path / "run")
    assert not (tmp_path / "run" / "LATEST").exists()


def test_wgan_logs_gan_diagnostics(showers):
    wgan = create("wgan", hidden=64, critic_hidden=64, layers=2, critic_layers=2, n_critic=2)
    hist = wgan.fit(showers[:400], epochs=2, batch_size=100, progress=False)
    for key in ("critic_loss", "generator_loss", "wasserstein", "gp", "val_loss"):
        assert key in hist[-1] and math.isfinite(hist[-1][key])


def test_wgan_critic_sees_the_showers_layer_centroids(showers):
    """The critic's shower-moment inputs are the evaluator's layer centroids (scaled, softened denominator)."""
    wgan = create("wgan", hidden=32, critic_hidden=32, layers=1, critic_layers=1)
    wgan.prepare(showers)
    assert wgan.config["shower_moments"] is True  # on by default for two-stage showers with a geometry
    y, _ = wgan.preprocessing.forward(showers.x, showers.cond)
    moments = wgan.shower_moments(y[:, :768].float()).double()  # [N, 6 L]: (EC, width) for x, y, r
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
    with pytest.raises(InvalidDataError, match="shower_moments needs"):
        create("wgan", shower_moments=True, two_stage=False).prepare(showers[:100])


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
        assert not model.adds_noise  # on events the decoder mean keeps the correlations the mass rests on
    position, height = _z_peak(model.sample(n=2304, seed=0))
    assert 84 <= position <= 98 and height > 3.5, (position, height)


def test_vae_quality_on_a_small_real_sample(showers):
    train, test = showers.split((0.75, 0.25), seed=0)
    vae = create("vae", latent=16, hidden=256, layers=2, kl_warmup_steps=200)
    vae.fit(train, epochs=30, batch_size=128, lr=1e-3, progress=False, seed=0)
    fr, fg = high_level_features(test), high_level_features(vae.sample(test.cond, seed=0))
    assert abs(fg["E_ratio"].mean() - fr["E_ratio"].mean()) < 0.05
    assert abs(fg["shower_depth"].mean() - fr["shower_depth"].mean()) < 1.0
    # on showers the likelihood's noise and the empty voxels' point mass are on by default:
    # hits drawn at the decoder mean alone are too smooth. Same model, cuts re-fitted, mean
    # separation power over the high-level features
    assert vae.adds_noise and vae.config["empty_mass"]

    def mean_separation(f):
        return float(np.mean([separation_power(fr[k], f[k]).value for k in fr]))

    with_noise = mean_separation(fg)
    vae.config["sample_noise"] = False
    vae.calibrate_readout(train, seed=0)
    mean_only = mean_separation(high_level_features(vae.sample(test.cond, seed=0)))
    assert with_noise < 0.1 and with_noise < mean_only, (with_noise, mean_only)  # measured 0.079 against 0.092
    # (without empty_mass: 0.068 against 0.151; on the full sets empty_mass wins, see docs/surrogates.md)


def test_wgan_quality_on_a_small_real_sample(showers):
    """On 1,125 embedded showers the WGAN beats the Gaussian baseline's mean separation power."""
    train, test = showers.split((0.75, 0.25), seed=0)
    wgan = create("wgan", hidden=256, critic_hidden=256, gp_weight=1.0, lr_critic=2e-4, lr_generator=2e-4)
    wgan.fit(train, epochs=40, batch_size=64, progress=False, seed=0)
    assert wgan.config["empty_mass"]
    gauss = create("gaussian")
    gauss.fit(train, seed=0)
    fr = high_level_features(test)

    def mean_separation(model):
        f = high_level_features(model.sample(test.cond, seed=0))
        return float(np.mean([separation_power(fr[k], f[k]).value for k in fr])), f

    sep, fg = mean_separation(wgan)
    sep_gauss, _ = mean_separation(gauss)
    assert abs(fg["E_ratio"].mean() - fr["E_ratio"].mean()) < 0.05
    assert sep < sep_gauss, (sep, sep_gauss)  # measured 0.062 against 0.073 (40 epochs, about 20 s)

