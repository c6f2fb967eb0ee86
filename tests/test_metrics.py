"""Metrics against closed forms, scipy, brute force, and the physics of real data."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import scipy.linalg
import torch
from scipy.stats import chi2_contingency, kstest, wasserstein_distance

import physgen
from physgen.data import CalorimeterGeometry, Data, Layer, Schema
from physgen.metrics import (
    chi2_two_sample,
    classifier_two_sample,
    evaluate,
    event_features,
    fpd,
    frechet_distance,
    high_level_features,
    invariant_mass,
    kpd,
    mmd2,
    roc_auc,
    separation_power,
    sliced_wasserstein,
    wasserstein1,
)


def _brute_mmd2(x, y, k, unbiased=True):
    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    m, n = len(x), len(y)
    if unbiased:
        return (kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (n * (n - 1)) - 2 * kxy.mean()
    return kxx.mean() + kyy.mean() - 2 * kxy.mean()


def _gauss(sigma):
    return lambda a, b: np.exp(-((a[:, None, :] - b[None, :, :]) ** 2).sum(-1) / (2 * sigma**2))


@pytest.mark.parametrize("block", [7, 64, 4096])
@pytest.mark.parametrize("unbiased", [True, False])
def test_blocked_mmd_equals_the_full_matrix(block, unbiased):
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(150, 4)), rng.normal(0.3, 1.2, size=(101, 4))
    got = mmd2(x, y, bandwidth=1.7, unbiased=unbiased, block_size=block, n_batches=0).value
    assert got == pytest.approx(_brute_mmd2(x, y, _gauss(1.7), unbiased), rel=1e-12, abs=1e-14)
    poly = mmd2(x, y, kernel="polynomial", unbiased=unbiased, block_size=block, n_batches=0).value
    assert poly == pytest.approx(_brute_mmd2(x, y, lambda a, b: (a @ b.T / 4 + 1) ** 4, unbiased), rel=1e-12)
    multi = mmd2(x, y, kernel="multiscale", bandwidth=1.0, scales=(0.5, 2.0), unbiased=unbiased, block_size=block, n_batches=0).value
    both = lambda a, b: _gauss(0.5)(a, b) + _gauss(2.0)(a, b)  # noqa: E731
    assert multi == pytest.approx(_brute_mmd2(x, y, both, unbiased), rel=1e-12)


def test_mmd_of_two_gaussians_matches_the_closed_form():
    # X ~ N(0, s²I), Y ~ N(Δ, s²I), Gaussian kernel σ in d dims:
    # MMD² = 2 (σ²/(σ²+2s²))^(d/2) (1 − exp(−|Δ|² / (2(σ²+2s²))))
    d, s, sigma = 3, 1.0, 2.0
    delta = np.array([1.0, 0.5, 0.0])
    rng = np.random.default_rng(1)
    x, y = rng.normal(0, s, (4000, d)), delta + rng.normal(0, s, (4000, d))
    c = sigma**2 + 2 * s**2
    exact = 2 * (sigma**2 / c) ** (d / 2) * (1 - math.exp(-(delta @ delta) / (2 * c)))
    res = mmd2(x, y, bandwidth=sigma, block_size=1000)
    assert abs(res.value - exact) < 4 * res.error + 1e-3, (res, exact)
    same = mmd2(x, rng.normal(0, s, (4000, d)), bandwidth=sigma)
    assert abs(same.value) < 4 * same.error + 1e-4


def test_kpd_matches_an_independent_computation():
    # jetnet's kpd cannot be imported here (its 'wasserstein' dependency is built for NumPy 1);
    # recompute its definition step by step: batch i drawn with default_rng(seed + 1000 i)
    rng = np.random.default_rng(2)
    x, y = rng.exponential(size=(3000, 5)), rng.exponential(1.1, size=(2500, 5))
    res = kpd(x, y, num_batches=6, batch_size=400, seed=3)
    maxes = np.abs(x).max(0)
    xs, ys = x / maxes, y / maxes
    vals = []
    for i in range(6):
        r = np.random.default_rng(3 + 1000 * i)
        a, b = xs[r.choice(len(xs), size=400)], ys[r.choice(len(ys), size=400)]
        vals.append(mmd2(a, b, kernel="polynomial", degree=4, n_batches=0).value)
    assert res.value == pytest.approx(np.median(vals), rel=1e-10)
    q16, q84 = np.percentile(vals, [16.275, 83.725])
    assert res.error == pytest.approx((q84 - q16) / 2, rel=1e-10)


def test_frechet_distance_against_sqrtm_and_closed_form():
    rng = np.random.default_rng(4)
    for d in (1, 3, 12):
        a, b = rng.normal(size=(d, d)), rng.normal(size=(d, d))
        s1, s2 = a @ a.T + 0.1 * np.eye(d), b @ b.T + 0.1 * np.eye(d)
        mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
        ref = (mu1 - mu2) @ (mu1 - mu2) + np.trace(s1 + s2 - 2 * scipy.linalg.sqrtm(s1 @ s2).real)
        assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(ref, rel=1e-8)
    # diagonal covariances: Σ (√a − √b)²
    va, vb = np.array([1.0, 4.0, 9.0]), np.array([4.0, 4.0, 1.0])
    assert frechet_distance(np.zeros(3), np.diag(va), np.zeros(3), np.diag(vb)) == pytest.approx(((np.sqrt(va) - np.sqrt(vb)) ** 2).sum())


def test_fpd_extrapolates_to_the_true_distance():
    rng = np.random.default_rng(5)
    mu = np.array([0.3, -0.2, 0.1, 0.0])
    x, y = rng.normal(size=(20000, 4)), mu + rng.normal(size=(20000, 4))
    res = fpd(x, y, min_samples=2000, max_samples=5000, normalise=False, seed=1)
    assert abs(res.value - mu @ mu) < max(5 * res.error, 0.01), res
    null = fpd(x, rng.normal(size=(20000, 4)), min_samples=2000, max_samples=5000, normalise=False)
    assert null.value < 0.005


def test_wasserstein_equals_scipy_and_closed_forms():
    rng = np.random.default_rng(6)
    a, b = rng.normal(size=1000), rng.gamma(2.0, size=700)
    assert abs(wasserstein1(a, b, n_bootstrap=0).value - wasserstein_distance(a, b)) < 1e-9
    assert wasserstein1(a, a + 0.75, n_bootstrap=0).value == pytest.approx(0.75, abs=1e-12)
    # N(0,1) vs N(δ,1): W1 = δ
    big = wasserstein1(rng.normal(size=200000), 0.4 + rng.normal(size=200000))
    assert abs(big.value - 0.4) < 0.01 and big.error < 0.01
    # the bootstrap error: the spread of scipy's W1 over the same resamples (ties included)
    a, b = np.round(a, 1), np.round(b, 1)
    draw = np.random.default_rng(5)
    boots = []
    for _ in range(20):
        i, j = draw.integers(0, len(a), len(a)), draw.integers(0, len(b), len(b))
        boots.append(wasserstein_distance(a[i], b[j]))
    assert wasserstein1(a, b, n_bootstrap=20, seed=5).error == pytest.approx(np.std(boots, ddof=1), rel=1e-12)


def test_sliced_wasserstein_is_seeded_and_sees_shifts():
    rng = np.random.default_rng(7)
    x = rng.normal(size=(3000, 6))
    y = x + np.array([1.0, 0, 0, 0, 0, 0])
    a, b = sliced_wasserstein(x, y, seed=3), sliced_wasserstein(x, y, seed=3)
    assert a.value == b.value
    # a shift δ e1 projected on a random unit direction u moves by δ|u1|; E|u1| in 6-D = Γ(3)/(√π Γ(3.5))
    expected = math.gamma(3) / (math.sqrt(math.pi) * math.gamma(3.5))
    assert abs(a.value - expected) < 4 * a.error


def test_chi2_is_pearson_homogeneity_and_uniform_under_the_null():
    rng = np.random.default_rng(8)
    a, b = rng.normal(size=5000), rng.normal(size=3000)
    res = chi2_two_sample(a, b, bins=20)
    from physgen.metrics import shared_bins

    edges = shared_bins(a, b, 20)
    table = np.stack([np.histogram(np.clip(v, edges[0], edges[-1]), edges)[0] for v in (a, b)])
    stat, p, dof, _ = chi2_contingency(table, correction=False)
    assert res.extra["chi2"] == pytest.approx(stat, rel=1e-10) and res.extra["ndf"] == dof
    assert res.extra["p_value"] == pytest.approx(p, rel=1e-8)
    pvals = [chi2_two_sample(rng.exponential(size=800), rng.exponential(size=500), bins=15).extra["p_value"] for _ in range(300)]
    assert kstest(pvals, "uniform").pvalue > 0.01
    assert chi2_two_sample(a, b + 0.3, bins=20).extra["p_value"] < 1e-6


def test_separation_power_limits():
    rng = np.random.default_rng(9)
    a = rng.uniform(0, 1, 4000)
    assert separation_power(a, a, bins=10).value == 0.0
    assert separation_power(a, a + 2.0, bins=np.linspace(0, 3, 31)).value == pytest.approx(1.0)
    # two flat histograms on [0,1] and [0.5,1.5] sharing 10 bins of width 0.1 on [0, 1.5]:
    # h1 = 0.1 on 10 bins, h2 = 0.1 on 10 bins, overlap 5 -> ½ (5·0.1 + 5·0.1) = 0.5
    edges = np.linspace(0, 1.5, 16)
    grid = (np.arange(10000) + 0.5) / 10000
    assert separation_power(grid, grid + 0.5, bins=edges, n_bootstrap=0).value == pytest.approx(0.5, abs=1e-3)
    # value and bootstrap error against numpy's histograms over the same resamples, values on the edges included
    x, y = np.round(rng.exponential(size=900), 1), np.round(rng.exponential(1.2, size=600), 1)
    edges = np.linspace(0, 3, 31)

    def sp(u, v):
        h1, h2 = (np.histogram(np.clip(w, 0, 3), edges)[0] / len(w) for w in (u, v))
        s = h1 + h2
        return 0.5 * ((h1 - h2)[s > 0] ** 2 / s[s > 0]).sum()

    draw = np.random.default_rng(2)
    boots = [sp(x[draw.integers(0, len(x), len(x))], y[draw.integers(0, len(y), len(y))]) for _ in range(20)]
    res = separation_power(x, y, bins=edges, n_bootstrap=20, seed=2)
    assert res.value == pytest.approx(sp(x, y), rel=1e-12) and res.error == pytest.approx(np.std(boots, ddof=1), rel=1e-12)


def test_roc_auc_against_pair_counting_and_classifier_limits():
    rng = np.random.default_rng(10)
    labels, scores = rng.integers(0, 2, 300), rng.normal(size=300).round(1)
    pos, neg = scores[labels == 1], scores[labels == 0]
    brute = ((pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()) / (len(pos) * len(neg))
    assert roc_auc(labels, scores) == pytest.approx(brute)
    same = classifier_two_sample(rng.normal(size=(3000, 3)), rng.normal(size=(3000, 3)), epochs=10)
    assert abs(same["auc"].value - 0.5) < 0.05 and abs(same["jsd"].value) < 0.02
    apart = classifier_two_sample(rng.normal(size=(3000, 3)), 2 + rng.normal(size=(3000, 3)), epochs=10)
    assert apart["auc"].value > 0.95 and apart["jsd"].value > 0.4


def _toy_calo():
    # layer 0: 2 alpha x 2 r (r centres 1, 3 mm; alpha centres -pi/2, +pi/2); layer 1: one r bin (centre 5)
    geo = CalorimeterGeometry(layers=(Layer(r_edges=(0.0, 2.0, 4.0), n_alpha=2), Layer(r_edges=(0.0, 10.0), n_alpha=1)))
    x = np.array([[1.0, 0.0, 0.0, 3.0, 2.0], [0.0, 0.0, 0.0, 0.0, 4.0]])
    return Data(x, Schema(kind="calorimeter", geometry=geo, cond_names=("incident_energy",)), cond=[[10.0], [8.0]])


def test_high_level_features_by_hand():
    f = high_level_features(_toy_calo())
    np.testing.assert_allclose(f["E_ratio"], [0.6, 0.5])
    np.testing.assert_allclose(f["E_layer_0"], [4.0, 0.0])
    # event 0, layer 0: 1 MeV at (r=1, y=-1), 3 MeV at (r=3, y=+3): EC_y = (−1 + 9)/4 = 2
    assert f["EC_y_0"][0] == pytest.approx(2.0)
    assert f["EC_x_0"][0] == pytest.approx(0.0, abs=1e-12)
    # width_y = sqrt((1·1 + 3·9)/4 − 2²) = sqrt(3)
    assert f["width_y_0"][0] == pytest.approx(math.sqrt(3))
    assert f["EC_r_0"][0] == pytest.approx(2.5) and f["width_r_0"][0] == pytest.approx(math.sqrt(7 - 6.25))
    # sparsity as the evaluator defines it: the fraction of a layer's voxels without energy
    assert f["sparsity_0"][0] == pytest.approx(0.5) and f["sparsity_1"][1] == 0.0 and f["sparsity_0"][1] == 1.0
    # an empty layer: centre and width 0, as the evaluator's +1e-16 gives
    assert f["EC_y_0"][1] == 0.0 and f["width_y_0"][1] == 0.0
    assert "EC_x_1" not in f and f["EC_r_1"][0] == pytest.approx(5.0)
    assert f["shower_depth"][0] == pytest.approx(2 / 6) and f["shower_depth"][1] == pytest.approx(1.0)


def test_high_level_features_of_real_showers(showers):
    f = high_level_features(showers)
    # Geant4 PbWO4 README: E_tot/E_inc = 0.979 ± 0.011
    assert f["E_ratio"].mean() == pytest.approx(0.979, abs=0.003)
    # the shower maximum moves deeper with energy (ln E): compare 1-3 GeV with 30-100 GeV
    e = showers.cond[:, 0].numpy()
    assert f["shower_depth"][e > 30e3].mean() > f["shower_depth"][e < 3e3].mean() + 1.5
    # azimuthal symmetry: x/y centres of energy average to ~0 in an alpha-binned layer
    assert abs(f["EC_x_5"].mean()) < 0.2 and abs(f["EC_y_5"].mean()) < 0.2


def test_invariant_mass_reproduces_the_cms_file(zmumu_path):
    events = physgen.read(zmumu_path, branches=["E1", "px1", "py1", "pz1", "E2", "px2", "py2", "pz2", "M"])
    import uproot

    t = uproot.open(zmumu_path)["events"].arrays(["E1", "E2", "px1", "px2", "py1", "py2", "pz1", "pz2", "M"], library="np")
    m = invariant_mass(t["E1"] + t["E2"], t["px1"] + t["px2"], t["py1"] + t["py2"], t["pz1"] + t["pz2"])
    np.testing.assert_allclose(m, t["M"], rtol=1e-7)
    feats = event_features(events)
    # from the float32 columns physgen holds, the mass agrees to float32 precision
    np.testing.assert_allclose(feats["m_pair"], t["M"], rtol=2e-3)
    # the Z peak: most events near 91 GeV
    assert 85 < np.median(feats["m_pair"]) < 95


def test_evaluate_report_and_floor(showers):
    real, other = showers[:1000], showers[1000:]
    # "generated" = more real showers at other energies: should sit at the floor
    good = evaluate(real, other, classifier=False)
    json.dumps(good)
    assert good["summary"]["fpd"]["floor"] >= 0
    assert good["mean_separation_power"] < 3 * good["mean_separation_power_floor"] + 0.01
    # a surrogate that loses 10 % of the energy is caught
    bad_x = other.x * 0.9
    bad = evaluate(real, other.with_x(bad_x), classifier=False)
    assert bad["features"]["E_ratio"]["separation_power"]["value"] > 10 * bad["features"]["E_ratio"]["separation_power"]["floor"]
    mmd = bad["summary"]["mmd_features"]
    assert mmd["value"] > mmd["floor"] + 10 * (mmd["error"] + mmd["floor_error"])
    assert bad["summary"]["sliced_w1"]["value"] > 3 * bad["summary"]["sliced_w1"]["floor"]
    # 195 features from 500 events: FPD is bias-dominated, and the report says so
    assert "warning" in bad["summary"]["fpd"]


def test_evaluate_with_classifier_on_events(zmumu_path):
    events = physgen.read(zmumu_path, branches=["E1", "px1", "py1", "pz1", "E2", "px2", "py2", "pz2"], units="GeV")
    shuffled = events.x.clone()
    shuffled[:, 4:] = shuffled[torch.randperm(len(shuffled), generator=torch.Generator().manual_seed(0)), 4:]
    report = evaluate(events, events.with_x(shuffled), classifier=True, classifier_epochs=15)
    # independent muons keep every marginal but destroy the Z peak
    m = report["features"]["m_pair"]["separation_power"]
    assert m["value"] > 5 * m["floor"]
    assert report["features"]["E1"]["separation_power"]["value"] < 0.05
    assert report["summary"]["classifier_auc"]["value"] > report["summary"]["classifier_auc"]["floor"] + 0.05
