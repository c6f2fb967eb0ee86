"""Azimuthal symmetry: the voxel permutations, the augmented training set, and the data it rests on."""

import math

import numpy as np
import pytest
import torch
from scipy import stats

import physgen
from physgen.calorimeter import ShowerModel, azimuthal_copies
from physgen.data import CalorimeterGeometry, Data, Layer, Schema, official_binning
from physgen.data.rows import PermutedRows
from physgen.errors import ConfigError, GeometryError, InvalidDataError


def _centroid(e: np.ndarray, geo: CalorimeterGeometry, layer: int) -> tuple[float, float]:
    x, y, _ = geo.voxel_centres()
    s = geo.layer_slice(layer)
    w = e[s] / e[s].sum()
    return float((w * x[s]).sum()), float((w * y[s]).sum())


def test_orders_follow_the_angular_binnings():
    assert official_binning(6480).azimuthal_order == 16
    assert official_binning(368).azimuthal_order == 10  # dataset 1 photons: 10 bins in layers 1–2, 1 elsewhere
    mixed = CalorimeterGeometry(layers=(Layer((0.0, 5.0), 10), Layer((0.0, 5.0), 16), Layer((0.0, 5.0), 1)))
    assert mixed.azimuthal_order == 2  # only the half turn maps both binnings onto themselves
    assert CalorimeterGeometry(layers=(Layer((0.0, 5.0), 1),)).azimuthal_order == 1
    with pytest.raises(GeometryError, match="polar"):
        _ = CalorimeterGeometry(layers=(Layer(shape=(3, 4)),), kind="cartesian").azimuthal_order


@pytest.mark.parametrize("n_alpha", [4, 16])
def test_rotations_and_mirrors_move_the_centroid_as_in_the_plane(n_alpha):
    geo = CalorimeterGeometry.polar([0.0, 4.0, 9.0, 20.0], n_alpha, 3)
    e = np.random.default_rng(0).exponential(size=geo.n_voxels)
    x0, y0 = _centroid(e, geo, 1)
    for steps in range(n_alpha):
        theta = 2 * math.pi * steps / n_alpha
        p = geo.azimuthal_permutation(steps)
        x1, y1 = _centroid(e[p], geo, 1)
        assert math.isclose(x1, x0 * math.cos(theta) - y0 * math.sin(theta), abs_tol=1e-12)
        assert math.isclose(y1, x0 * math.sin(theta) + y0 * math.cos(theta), abs_tol=1e-12)
        # mirrored α → −α first, then rotated
        xm, ym = _centroid(e[geo.azimuthal_permutation(steps, reflect=True)], geo, 1)
        assert math.isclose(xm, x0 * math.cos(theta) + y0 * math.sin(theta), abs_tol=1e-12)
        assert math.isclose(ym, x0 * math.sin(theta) - y0 * math.cos(theta), abs_tol=1e-12)
        # a permutation within layers and radial bins: layer energies and radial profiles kept
        assert sorted(p.tolist()) == list(range(geo.n_voxels))
        assert np.array_equal(geo.layer_index()[p], geo.layer_index())
        assert np.array_equal(geo.voxel_centres()[2][p], geo.voxel_centres()[2])
    # one step applied n_alpha times is the identity
    q = np.arange(geo.n_voxels)
    for _ in range(n_alpha):
        q = q[geo.azimuthal_permutation(1)]
    assert np.array_equal(q, np.arange(geo.n_voxels))


def test_copies_are_distinct_members_of_each_showers_orbit(showers):
    data = showers[:50]
    geo = data.geometry
    aug = azimuthal_copies(data, 8, seed=3)
    assert len(aug) == 400
    assert torch.equal(aug.x[:50], data.x)
    assert torch.equal(aug.cond, data.cond.repeat(8, 1))
    orbit = [data.x[:, torch.from_numpy(geo.azimuthal_permutation(k % 4, k >= 4))] for k in range(8)]
    for i in range(50):
        copies = aug.x[i::50]
        # each copy is one of the 8 images of shower i, and all 8 are there (none repeated)
        matches = [[k for k in range(8) if torch.equal(c, orbit[k][i])] for c in copies]
        assert sorted(m[0] for m in matches) == list(range(8))
    # layer energies are untouched by the symmetry
    layer = torch.from_numpy(geo.layer_index())
    per_layer = torch.zeros(400, geo.n_layers).index_add_(1, layer, aug.x)
    assert torch.allclose(per_layer, torch.zeros(50, geo.n_layers).index_add_(1, layer, data.x).repeat(8, 1))


def test_augmented_training_reads_the_copies_it_never_stores(showers):
    """``augment = k`` gathers each batch's versions: the same preprocessing, batches and losses as training on the stored copies."""
    data = showers[:120]
    settings = dict(epochs=2, batch_size=64, val_fraction=0.0, progress=False, seed=5)
    options = dict(latent=4, hidden=16, layers=1, readout_quantile=None)
    lazy = ShowerModel("vae", **options)
    rows = lazy.training_rows(data, 4, seed=5)
    assert isinstance(rows, PermutedRows) and len(rows) == 480
    copies = azimuthal_copies(data, 4, seed=5)  # the same versions, stored
    assert torch.equal(rows.take(np.arange(480))[0], copies.x)
    hist = lazy.fit(data, augment=4, **settings)
    stored = ShowerModel("vae", **options)
    hist_stored = stored.fit(copies, augment=1, **settings)
    for a, b in zip(lazy.preprocessing.to_dict()["x"], stored.preprocessing.to_dict()["x"], strict=True):
        for key in ("mean", "std", "scale"):
            if key in a:
                np.testing.assert_allclose(a[key], b[key], rtol=1e-12, atol=1e-12)
    idx = np.array([0, 130, 479, 250])
    y_lazy = lazy.preprocessing.forward(*rows.take(idx))[0].float()
    y_stored = stored.preprocessing.forward(copies.x[idx], copies.cond[idx])[0].float()
    assert torch.allclose(y_lazy, y_stored, rtol=1e-6, atol=1e-6)
    for a, b in zip(hist, hist_stored, strict=True):
        assert a["samples"] == b["samples"] == 480
        assert math.isclose(a["loss"], b["loss"], rel_tol=1e-4), (a["loss"], b["loss"])


def test_bad_augmentation_requests_are_rejected(showers):
    with pytest.raises(ConfigError, match=r"\[1, 8\]"):
        azimuthal_copies(showers[:10], 9)
    events = Data(np.ones((5, 3)), Schema(kind="event", feature_names=("a", "b", "c")))
    with pytest.raises(InvalidDataError, match="polar geometry"):
        azimuthal_copies(events, 2)
    assert azimuthal_copies(events, 1) is events  # off: any data passes through
    with pytest.raises(ConfigError, match="'augment' must be ≥ 1"):
        ShowerModel("gaussian", solver="gradient").fit(showers[:100], epochs=1, augment=0, progress=False)


def test_geant4_showers_are_azimuthally_symmetric(showers):
    """The premise, on the embedded Geant4 set: each angular bin holds the same mean energy fraction."""
    x = showers.x.double().reshape(len(showers), 24, 4, 8)
    frac = (x.sum((1, 3)) / x.sum((1, 2, 3))[:, None]).numpy()  # [N, 4] fraction per angular bin
    # the 4 fractions sum to 1, so test 3 of them against 1/4 with their covariance (Hotelling)
    d = frac[:, :3] - 0.25
    mean, cov = d.mean(0), np.cov(d, rowvar=False) / len(d)
    t2 = float(mean @ np.linalg.solve(cov, mean))
    assert stats.chi2.sf(t2, df=3) > 1e-3, t2
    # and a shower's fractions are far from uniform, so the test has power: one bin's spread is ~10 %
    assert frac.std(0).min() > 0.02


@pytest.mark.parametrize("solver", ["gradient", "closed_form"])
def test_training_on_the_whole_orbit_gives_a_symmetric_fit(showers, solver):
    data = showers[:300]
    geo = data.geometry
    perms = [torch.from_numpy(geo.azimuthal_permutation(k % 4, k >= 4)) for k in range(8)]
    for copies, symmetric in ((1, False), (8, True)):
        model = ShowerModel("gaussian", solver=solver)
        model.fit(data, epochs=1, augment=copies, progress=False)
        mean = model.preprocessing.x_transforms[-1].mean[: geo.n_voxels]  # the standardisation: voxel columns, then layer energies
        gap = max(float((mean[p] - mean).abs().max()) for p in perms)
        assert (gap < 1e-9) == symmetric, (copies, gap)


def test_augmented_training_keeps_the_validation_split_real():
    data = physgen.load_default()[:200]
    model = ShowerModel("gaussian", solver="gradient")
    hist = model.fit(data, epochs=1, augment=4, progress=False, seed=2)
    val = data.split((0.9, 0.1), seed=2)[1]
    y, c = model.preprocessing.forward(val.x, val.cond)
    assert math.isclose(model.validation_metrics(y.float(), c.float())["val_loss"], hist[-1]["val_loss"], rel_tol=1e-5)


def test_a_time_budget_ends_a_long_augmented_epoch_early(showers):
    model = ShowerModel("gaussian", solver="gradient")
    hist = model.fit(showers[:400], epochs=3, batch_size=64, augment=8, time_budget_s=1e-9, progress=False)
    # 8 × 360 training showers make 45 batches an epoch; the budget stops after the first
    assert len(hist) == 1 and hist[0]["samples"] == 64
    full = ShowerModel("gaussian", solver="gradient").fit(showers[:400], epochs=1, batch_size=64, augment=8, progress=False)
    assert full[0]["samples"] == 8 * 360


def test_a_bare_family_has_no_symmetry_to_augment_with(zmumu_path):
    from physgen.surrogates import create

    events = physgen.read(zmumu_path, branches=["E1", "px1"], units="GeV")
    with pytest.raises(ConfigError, match="augment=2 needs a symmetry"):
        create("gaussian").fit(events, augment=2)
