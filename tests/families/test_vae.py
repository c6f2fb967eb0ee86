"""The conditional VAE: closed forms, a known likelihood, its point masses, and real physics."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from physgen.calorimeter import ShowerModel
from physgen.data import Data, FeatureGroups, Pipeline, Schema
from physgen.errors import ConfigError
from physgen.metrics import high_level_features
from physgen.metrics.histograms import separation_power
from physgen.surrogates import create, point_mass
from physgen.surrogates.structure import FeatureStructure
from physgen.surrogates.vae import gaussian_kl


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
    iw = vae.log_prob(td, k=64).numpy()
    # bounds hold on average (stochastic estimates: a few standard errors of slack)
    se = exact.std() / math.sqrt(len(exact))
    assert elbo.mean() <= exact.mean() + 3 * se
    assert iw.mean() <= exact.mean() + 3 * se
    assert iw.mean() >= elbo.mean()  # the importance-weighted bound is tighter
    # and the model is good: within 0.15 nats per dimension of the truth
    assert (exact.mean() - iw.mean()) / 5 < 0.15
    with pytest.raises(ConfigError, match="k .importance samples. must be a positive integer"):
        vae.log_prob(td, k=0)


def test_vae_history_reports_active_latent_dimensions(showers):
    vae = ShowerModel("vae", latent=8, hidden=64, layers=1, kl_warmup_steps=4)  # 4 batches per epoch
    hist = vae.fit(showers[:400], epochs=3, batch_size=100, progress=False)
    assert all(0 <= h["active_dims"] <= 8 for h in hist)
    assert hist[-1]["beta"] == 1.0 and hist[0]["kl"] >= 0


def test_vae_point_mass_is_a_hit_probability_times_a_gaussian(showers):
    vae = ShowerModel("vae", latent=4, hidden=32, layers=1)
    vae.prepare(showers)
    fam = vae.inner
    assert fam.options.point_mass is True  # on in the calorimeter preset, for two-stage showers
    one_stage = ShowerModel("vae", latent=4, hidden=32, layers=1, two_stage=False)
    one_stage.prepare(showers[:200])
    assert one_stage.inner.options.point_mass is False  # the floor is offered with the layer energies only
    assert "point_mass" in one_stage.resolved["dropped_preset_options"]
    y, _ = vae.preprocessing.forward(showers.x[:64], showers.cond[:64])
    y = y[:, :768].float()
    empty = showers.x[:64] == 0
    assert 0.05 < float(empty.float().mean()) < 0.95
    # Geant4's empty voxels sit exactly on the stored floor, and hits above it
    torch.testing.assert_close(y[empty], fam.floor.expand_as(y)[empty])
    assert bool((y[~empty] > fam.floor.expand_as(y)[~empty] + 1e-6).all())
    torch.manual_seed(0)
    out = torch.randn(64, 2 * 768)
    with torch.no_grad():
        fam.log_sigma.normal_(0, 0.3)
    mean, logit = out[:, :768], out[:, 768:]
    bern = torch.distributions.Bernoulli(logits=logit).log_prob((~empty).float())
    assert fam.options.fold is True  # hits follow a folded normal above the floor
    sigma = fam.log_sigma.detach().exp()
    # scipy's folded normal: e + |N(m, s²) − e| has foldnorm(c = |m − e|/s, loc = e, scale = s)
    folded = stats.foldnorm.logpdf(
        y.double().numpy(), ((mean - fam.floor) / sigma).abs().double().numpy(), loc=fam.floor.double().numpy(), scale=sigma.double().numpy(),
    )
    torch.testing.assert_close(fam._log_lik(y, out), (bern + torch.where(empty, 0.0, torch.from_numpy(folded).float())).sum(1))
    fam.options = fam.options.replace(fold=False)  # the plain Gaussian
    gauss = torch.distributions.Normal(mean, sigma).log_prob(y)
    torch.testing.assert_close(fam._log_lik(y, out), (bern + torch.where(empty, 0.0, gauss)).sum(1))


def test_folded_hits_are_never_lost_and_follow_the_folded_normal():
    """A hit drawn near the floor stays a hit; its value is e + |m + sε − e| (scipy's foldnorm), not below e."""
    n, empty = 40_000, torch.tensor([-1.5, 0.0, 2.0])
    mean = empty + torch.tensor([-0.3, 0.0, 0.5])  # at, below and above the floor: folding matters
    sigma = torch.tensor([0.4, 1.0, 0.5])
    rate = torch.tensor([0.3, 0.6, 0.9])
    for fold in (False, True):
        y = point_mass.draw(mean.expand(n, 3), torch.logit(rate).expand(n, 3), sigma, empty, torch.Generator().manual_seed(0), fold_at_floor=fold)
        hit = y > empty
        below = (y < empty).float().mean(0)
        if not fold:  # the plain Gaussian leaves Φ((e − m)/s) of the hits below the floor
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
    zero = torch.tensor(0.0, dtype=torch.float64)
    dens = point_mass.folded_normal_log_prob(grid, torch.tensor(0.3, dtype=torch.float64), zero.log1p(), zero).exp()
    assert abs(float(torch.trapezoid(dens, grid)) - 1) < 1e-6


def test_vae_point_mass_samples_hits_at_the_decoders_rate(showers, monkeypatch):
    vae = ShowerModel("vae", latent=4, hidden=32, layers=1)
    vae.prepare(showers)
    fam = vae.inner
    rate = torch.linspace(0.05, 0.95, 768)
    mean = torch.full((768,), 3.0)  # far above every floor: a hit never lands on it by chance
    monkeypatch.setattr(fam, "decode", lambda h, c: torch.cat([mean, torch.logit(rate)]).expand(len(h), -1))
    with torch.no_grad():
        fam.log_sigma.fill_(math.log(0.1))
        y = fam.sample_model(20_000, None, torch.Generator().manual_seed(0))
    empty = y == fam.floor
    hit_rate = 1 - empty.float().mean(0)
    assert float((hit_rate - rate).abs().max()) < 5 * math.sqrt(0.25 / 20_000)  # binomial errors
    hits = y[~empty] - mean.expand_as(y)[~empty]
    assert abs(float(hits.std()) - 0.1) < 0.005 and abs(float(hits.mean())) < 0.005  # hits carry the Gaussian
    # the fitted logit shift, added in place to the decoder's (here expanded) logits: rate σ(logit(p) + a)
    fam.options = fam.options.replace(logit_shift=True)
    fam.register_buffer("logit_shift", torch.stack([torch.full((768,), 0.7), torch.zeros(768)]))
    with torch.no_grad():
        y = fam.sample_model(20_000, None, torch.Generator().manual_seed(0))
    shifted = torch.sigmoid(torch.logit(rate) + 0.7)
    assert float(((y != fam.floor).float().mean(0) - shifted).abs().max()) < 5 * math.sqrt(0.25 / 20_000)


def test_point_mass_needs_a_floor_that_only_a_wrapper_supplies():
    with pytest.raises(ConfigError, match="'point_mass' needs the features' floor.*ShowerModel"):
        create("vae", point_mass=True).setup(10, 1)
    vae = create("vae", point_mass=True, one_per_group=True, latent=2, hidden=8, layers=1)
    with pytest.raises(ConfigError, match="'one_per_group' needs the features' groups"):
        vae.setup(10, 1, FeatureStructure(floor=torch.zeros(10)))
    vae.setup(10, 1, FeatureStructure(floor=torch.zeros(10), groups=FeatureGroups([4, 6])))
    assert vae.groups.sizes == [4, 6] and torch.equal(vae.floor, torch.zeros(10))


def test_a_group_without_hits_gets_one_where_hits_are_likely():
    """one_per_group_: hitless groups get one hit, at a feature drawn ∝ the hit probabilities; other groups are untouched."""
    groups = FeatureGroups([4, 4, 6])
    prob = torch.tensor([0.01, 0.02, 0.03, 0.04, 0.5, 0.5, 0.5, 0.5, 0.001, 0.002, 0.003, 0.004, 0.005, 0.085])
    n = 30_000
    g = torch.Generator().manual_seed(0)
    hit = torch.rand(n, 14, generator=g) < prob
    before = hit.clone()
    point_mass.one_per_group_(hit, prob.expand(n, -1), groups, torch.Generator().manual_seed(1))
    counts = torch.stack([hit[:, :4].sum(1), hit[:, 4:8].sum(1), hit[:, 8:].sum(1)], 1)
    assert bool((counts >= 1).all())
    had = torch.stack([before[:, :4].any(1), before[:, 4:8].any(1), before[:, 8:].any(1)], 1)
    for k, sl in enumerate((slice(0, 4), slice(4, 8), slice(8, 14))):
        assert torch.equal(hit[had[:, k], sl], before[had[:, k], sl])  # groups with a hit keep theirs
        forced = hit[~had[:, k], sl]
        assert bool((forced.sum(1) == 1).all())
        observed = forced.sum(0).double().numpy()
        if observed.sum() > 100:  # the chosen feature follows the probabilities
            share = prob[sl].double().numpy()
            expected = share / share.sum() * observed.sum()
            assert stats.chisquare(observed, expected).pvalue > 1e-3


def test_vae_quality_on_a_small_real_sample(showers):
    train, test = showers.split((0.75, 0.25), seed=0)
    vae = ShowerModel("vae", latent=16, hidden=256, layers=2, kl_warmup_steps=200)
    vae.fit(train, epochs=30, batch_size=128, lr=1e-3, progress=False, seed=0)
    fr, fg = high_level_features(test), high_level_features(vae.sample(test.cond, seed=0))
    assert abs(fg["E_ratio"].mean() - fr["E_ratio"].mean()) < 0.05
    assert abs(fg["shower_depth"].mean() - fr["shower_depth"].mean()) < 1.0
    # on showers the likelihood's noise and the empty voxels' point mass are on (the calorimeter preset):
    # hits drawn at the decoder mean alone are too smooth. Same model, cuts re-fitted, mean separation power
    assert vae.inner.options.sample_noise and vae.inner.options.point_mass

    def mean_separation(f):
        return float(np.mean([separation_power(fr[k], f[k]).value for k in fr]))

    with_noise = mean_separation(fg)
    vae.inner.options = vae.inner.options.replace(sample_noise=False)
    vae.calibrate_readout(train, seed=0)
    mean_only = mean_separation(high_level_features(vae.sample(test.cond, seed=0)))
    assert with_noise < 0.1 and with_noise < mean_only, (with_noise, mean_only)  # measured 0.079 against 0.092


def test_periodic_convolution_is_a_circularly_padded_one():
    """PeriodicConv against torch's own circular padding (angle) and zero padding (radius), at strides 1 and 2."""
    from physgen.surrogates.layered import PeriodicConv

    x = torch.randn(5, 3, 16, 9, generator=torch.Generator().manual_seed(0))
    for stride in (1, 2):
        conv = PeriodicConv(3, 4, stride=stride)
        expected = torch.nn.functional.conv2d(torch.nn.functional.pad(x, (0, 0, 1, 1), mode="circular"), conv.conv.weight, conv.conv.bias, stride=stride, padding=(0, 1))
        torch.testing.assert_close(conv(x), expected, rtol=1e-5, atol=1e-5)
        # a rotation by two angular bins rotates the output by 2 / stride bins
        torch.testing.assert_close(conv(x.roll(2, 2)), conv(x).roll(2 // stride, 2), rtol=1e-5, atol=1e-5)


def test_layered_networks_read_and_write_the_calorimeters_voxel_order(showers):
    """The layered VAE's maps are the geometry's angular bins: rotating a shower (the geometry's own voxel permutation)
    rotates the encoder's first maps, and rotating the decoder's last maps rotates its voxels the same way."""
    geometry = showers.geometry
    vae = ShowerModel("vae", network="layered", latent=4, layer_width=8, channels=4)
    vae.prepare(showers[:200])
    fam = vae.inner
    assert fam.encoder.grid == (24, 4, 8) == vae.structure(768).grid
    rotate = torch.as_tensor(geometry.azimuthal_permutation(2))  # two of the 4 angular bins: one at half resolution
    y = torch.randn(6, 768, generator=torch.Generator().manual_seed(1))
    seen = []
    hook = fam.encoder.conv1.register_forward_hook(lambda mod, args, out: seen.append(out))
    cond = torch.zeros(6, fam.dims["cond_dim"])
    fam.encoder(y, cond)
    fam.encoder(y[:, rotate], cond)
    hook.remove()
    torch.testing.assert_close(seen[1], seen[0].roll(1, 2), rtol=1e-5, atol=1e-5)
    h = torch.randn(6, fam.decoder.to_codes[0].in_features, generator=torch.Generator().manual_seed(2))
    plain = fam.decoder(h) - fam.decoder.bias.flatten()
    hook = fam.decoder.conv2.register_forward_hook(lambda mod, args, out: out.roll(1, 2))
    rolled = fam.decoder(h) - fam.decoder.bias.flatten()
    hook.remove()
    for k in range(2):  # the means, then the hit logits
        block = slice(k * 768, (k + 1) * 768)
        torch.testing.assert_close(rolled[:, block], plain[:, block][:, rotate], rtol=1e-5, atol=1e-5)


def test_layered_vae_needs_a_grid_and_learns_real_showers(showers):
    with pytest.raises(ConfigError, match="'network' needs the features' grid"):
        create("vae", network="layered").setup(10, 1)
    with pytest.raises(ConfigError, match="layered"):
        create("vae", network="layerd")
    with pytest.raises(ConfigError, match=r"a grid of 10 features; got \(2, 2, 3\)"):
        create("vae", network="layered").setup(10, 1, FeatureStructure(grid=(2, 2, 3)))
    train, test = showers.split((0.75, 0.25), seed=0)
    vae = ShowerModel("vae", network="layered", latent=16, kl_warmup_steps=200)
    dense = ShowerModel("vae", latent=16, kl_warmup_steps=200)
    dense.prepare(train)
    vae.fit(train, epochs=30, batch_size=128, lr=1e-3, progress=False, seed=0)
    assert sum(p.numel() for p in vae.inner.parameters()) < sum(p.numel() for p in dense.inner.parameters()) / 2
    fr, fg = high_level_features(test), high_level_features(vae.sample(test.cond, seed=0))
    assert abs(fg["E_ratio"].mean() - fr["E_ratio"].mean()) < 0.05
    assert abs(fg["shower_depth"].mean() - fr["shower_depth"].mean()) < 1.0
    assert float(np.mean([separation_power(fr[k], fg[k]).value for k in fr])) < 0.1
