"""The EDM diffusion: the denoiser's limits, the in-place Euler steps, analog bits, and a bimodal target."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

import physgen
from physgen.calorimeter import HitCalibration, ShowerModel, azimuthal_orbits
from physgen.data import Data, Schema
from physgen.errors import ConfigError
from physgen.surrogates import create


def test_edm_denoiser_limits_and_schedule():
    diff = create("diffusion", hidden=16, n_blocks=1, emb=8, steps=10, sampler="heun")
    diff.setup(3, 0)
    y = torch.randn(5, 3)
    # σ → 0: c_skip → 1, c_out → 0, the denoiser returns its input
    torch.testing.assert_close(diff.denoise(y, torch.full((5,), 1e-6), None), y, atol=1e-5, rtol=0)
    sig = diff.sigma_schedule(10)
    assert sig[0] == pytest.approx(80.0) and sig[-2] == pytest.approx(0.002) and sig[-1] == 0
    assert bool((sig[1:] < sig[:-1]).all())
    assert diff.evaluations_per_sample() == 19
    assert create("diffusion", steps=10).evaluations_per_sample() == 10  # the default sampler is Euler


def test_analog_bits_encode_the_voxels_exactly_and_fill_empties_from_the_hits(showers):
    model = ShowerModel("diffusion", hidden=16, n_blocks=1, emb=8, analog_bits=True, hit_calibration=False)  # the plain cut at 0
    y, c = model.prepare(showers[:600])
    diff = model.inner
    dim = diff.dims["dim"]
    ys = y[:, :dim]
    empty = diff.floor
    hit = ys > empty + 1e-6
    assert 0.2 < float(hit.float().mean()) < 0.9  # PbWO4 showers: a share of voxels empty, exactly at their value
    assert bool((ys[~hit] == empty.expand_as(ys)[~hit]).all())
    # an empty voxel's value is drawn about the line through its hits in log E_inc (scipy's least squares;
    # ours puts a ridge of 1 on the slope, against a spread of x of about n_hit) with the hits' residual spread
    x = c[:, 0].double().numpy()
    for j in (0, 5, 100, 400, 767):
        h = hit[:, j].numpy()
        fit = stats.linregress(x[h], ys[h, j].double().numpy())
        resid = ys[h, j].double().numpy() - fit.intercept - fit.slope * x[h]
        assert float(diff.fill_slope[j]) == pytest.approx(fit.slope, rel=0.02, abs=1e-3)
        assert float(diff.fill_intercept[j]) == pytest.approx(fit.intercept, rel=0.02, abs=1e-3)
        assert float(diff.fill_std[j]) == pytest.approx(np.sqrt((resid**2).sum() / (h.sum() - 2)), rel=0.02)
    u = diff.encode_bits(ys, c, torch.Generator().manual_seed(0))
    assert u.shape == (len(ys), 2 * dim)
    values, bits = u.chunk(2, dim=1)
    assert bool((bits == torch.where(hit, 1.0, -1.0)).all())
    assert torch.equal(values[hit], ys[hit])
    # empties: standardised about their line, they are N(0, 1)
    z = ((values - diff.fill_intercept - diff.fill_slope * c[:, :1]) / diff.fill_std)[~hit]
    assert abs(float(z.mean())) < 0.02 and abs(float(z.std()) - 1) < 0.02
    # decoding gives back the voxels exactly (showers whose every layer has a hit: an empty layer gets one, tested below)
    full = hit.reshape(len(ys), 24, 32).any(-1).all(1)
    assert int(full.sum()) > 100
    assert torch.equal(diff.decode_bits(u[full], torch.Generator().manual_seed(1)), ys[full])


def _denoiser_giving(diff, target):
    """A network ``F`` with which EDM's denoiser D = c_skip·y + c_out·F(c_in·y) is ``target`` at every noise level."""
    sd = diff.options.sigma_data

    def net(x_in, c_noise, cond):
        sigma = torch.exp(4 * c_noise.double())[:, None]
        norm = torch.sqrt(sigma**2 + sd**2)
        y = x_in.double() * norm  # x_in = c_in · y
        return ((target.double() - sd**2 / norm**2 * y) / (sigma * sd / norm)).float()

    return net


def test_euler_steps_in_place_are_the_textbook_steps(showers):
    """The folded update α·x + β·F is x + (σ' − σ)(x − D)/σ with EDM's D, step by step (float32, to its rounding)."""
    model = ShowerModel("diffusion", hidden=16, n_blocks=1, emb=8, steps=5)
    model.prepare(showers[:300])
    diff = model.inner
    with torch.no_grad():
        for p in diff.net.parameters():  # away from the zero-initialised output layer
            p.add_(0.3 * torch.randn_like(p))
    diff.eval()
    n, c = 40, torch.randn(40, diff.dims["cond_dim"])
    sigmas = diff.sigma_schedule(5).float()
    with torch.no_grad():
        got = diff._integrate(n, c, torch.Generator().manual_seed(0))
        x = torch.randn(n, diff.dims["dim"], generator=torch.Generator().manual_seed(0)) * sigmas[0]
        for s, s_next in zip(sigmas[:-1], sigmas[1:], strict=True):
            x = x + (s_next - s) * (x - diff.denoise(x, s.expand(n), c)) / s
    torch.testing.assert_close(got, x, atol=1e-4, rtol=1e-4)
    assert float(x.std()) > 0.1  # not a trivial map


def test_analog_bits_sampler_ends_on_the_denoisers_bits(showers, monkeypatch):
    """The ODE's last Euler step lands on the denoiser's output: bits > 0 are hits (values folded at the empty value)."""
    model = ShowerModel("diffusion", hidden=16, n_blocks=1, emb=8, steps=4, analog_bits=True, hit_calibration=False)  # the plain cut
    model.prepare(showers[:300])
    diff = model.inner
    dim, empty = diff.dims["dim"], diff.floor
    target_bits = torch.where(torch.arange(dim) % 3 == 0, 0.7, -0.4)  # a hit in every third voxel: each layer has hits
    target_values = empty + torch.where(torch.arange(dim) % 2 == 0, 1.5, -0.25)  # half of them below the empty value
    monkeypatch.setattr(diff.net, "forward", _denoiser_giving(diff, torch.cat([target_values, target_bits])))
    with torch.no_grad():
        y = diff.sample_model(50, torch.zeros(50, diff.dims["cond_dim"]), torch.Generator().manual_seed(0))
    hit = target_bits > 0
    assert y.shape == (50, dim)
    assert bool((y[:, ~hit] == empty[~hit]).all())  # exactly empty
    torch.testing.assert_close(y[:, hit], (empty + (target_values - empty).abs())[hit].expand(50, -1))
    # bit_threshold moves the cut: at -0.5 the bits of -0.4 are hits too
    diff.options = diff.options.replace(bit_threshold=-0.5)
    with torch.no_grad():
        y = diff.sample_model(50, torch.zeros(50, diff.dims["cond_dim"]), torch.Generator().manual_seed(0))
    torch.testing.assert_close(y, (empty + (target_values - empty).abs()).expand(50, -1))
    diff.options = diff.options.replace(bit_threshold=0.0)
    with pytest.raises(ConfigError, match="bit_threshold"):
        create("diffusion", analog_bits=True, bit_threshold=1.0)
    # a layer whose bits are all ≤ 0 gets one hit
    monkeypatch.setattr(diff.net, "forward", _denoiser_giving(diff, torch.cat([target_values, torch.full((dim,), -1.0)])))
    with torch.no_grad():
        y = diff.sample_model(50, torch.zeros(50, diff.dims["cond_dim"]), torch.Generator().manual_seed(0))
    assert bool(((y > empty).reshape(50, 24, 32).sum(-1) == 1).all())


def test_analog_bits_with_hit_calibration_draw_hits_from_the_bits_as_logits(showers, monkeypatch):
    """P(hit) = σ(8·(bit − bit_threshold) + a + b·x); calibrate_hits fits a, b per ring so the hits match the data's."""
    from physgen.surrogates.diffusion import BIT_LOGIT_SCALE as HIT_BIT_SCALE

    train = showers[:1500]
    model = ShowerModel("diffusion", hidden=16, n_blocks=1, emb=8, steps=2, analog_bits=True, bit_threshold=-0.1)
    model.prepare(train)
    diff = model.inner
    assert model.options.hit_calibration is True and diff.options.logit_shift  # the preset's, with analog bits
    diff.groups = None  # no extra hit for a hitless layer (one_per_group_): the rates alone
    dim, empty = diff.dims["dim"], diff.floor
    bits = torch.linspace(-0.6, 0.4, dim)
    monkeypatch.setattr(diff.net, "forward", _denoiser_giving(diff, torch.cat([empty + 1.0, bits])))
    n = 20_000
    with torch.no_grad():
        diff.logit_shift[0].fill_(0.5)
        diff.logit_shift[1].fill_(-0.25)
        cond = torch.zeros(n, diff.dims["cond_dim"])
        cond[:, 0] = 2.0  # x = 2: shift 0.5 − 0.25·2 = 0
        y = diff.sample_model(n, cond, torch.Generator().manual_seed(0))
    rate = torch.sigmoid(HIT_BIT_SCALE * (bits + 0.1))
    assert float(((y > empty).float().mean(0) - rate).abs().max()) < 5 * math.sqrt(0.25 / n)  # binomial errors
    cond[:, 0] = 0.0  # x = 0: shift 0.5
    with torch.no_grad():
        y = diff.sample_model(n, cond, torch.Generator().manual_seed(0))
    rate = torch.sigmoid(HIT_BIT_SCALE * (bits + 0.1) + 0.5)
    assert float(((y > empty).float().mean(0) - rate).abs().max()) < 5 * math.sqrt(0.25 / n)
    # the calibration: constant bits, so the fitted line alone must give each ring Geant4's hits, at every energy
    assert HitCalibration().fit(model, train) == "azimuthal"
    yt, ct = model.preprocessing.forward(train.x, train.cond)
    ys, cs, _ = model.split_stages(yt.float(), ct.float())
    with torch.no_grad():
        drawn = diff.sample_model(8 * len(ys), cs.repeat(8, 1), torch.Generator().manual_seed(1))
    orbits = azimuthal_orbits(train.geometry, dim)
    rings = lambda h: torch.zeros(len(h), int(orbits.max()) + 1).index_add_(1, orbits, h.float())  # noqa: E731
    real, gen, x = rings(ys > empty + 1e-6), rings(drawn > empty + 1e-6).view(8, len(ys), -1).mean(0), cs[:, 0]
    for part in (x < x.median(), x >= x.median()):
        busy = real[part].mean(0) > 1
        torch.testing.assert_close(gen[part].mean(0)[busy], real[part].mean(0)[busy], rtol=0.06, atol=0)


def test_analog_bits_need_the_floor_of_a_two_stage_shower_model(showers):
    with pytest.raises(ConfigError, match="'analog_bits' needs the features' floor"):
        ShowerModel("diffusion", hidden=16, n_blocks=1, analog_bits=True, two_stage=False).fit(showers[:200], epochs=1, progress=False)
    with pytest.raises(ConfigError, match="'analog_bits' needs the features' floor"):
        create("diffusion", analog_bits=True).setup(4, 1)


def test_analog_bits_diffusion_round_trips_a_checkpoint(tmp_path, showers):
    diff = ShowerModel("diffusion", hidden=16, n_blocks=1, emb=8, steps=3, analog_bits=True)
    diff.fit(showers[:300], epochs=1, batch_size=100, progress=False)
    diff.save(tmp_path / "m")
    back = physgen.surrogates.load(tmp_path / "m")
    assert back.inner.options.analog_bits is True
    torch.testing.assert_close(back.inner.fill_std, diff.inner.fill_std)
    torch.testing.assert_close(back.sample(showers.cond[:50], seed=3).x, diff.sample(showers.cond[:50], seed=3).x)


@pytest.mark.filterwarnings("ignore:.*PyTorch emulates it:RuntimeWarning")  # bf16 on purpose, on any CPU
def test_diffusion_keeps_its_bf16_weights_between_calls_and_samples_the_same(showers, monkeypatch):
    """bf16 sampling reuses one cast copy of the network: the same showers as autocast's own per-call cast,
    and a parameter update makes a new copy."""
    from physgen.surrogates.diffusion import DiffusionSurrogate

    model = ShowerModel("diffusion", hidden=32, n_blocks=2, emb=8, steps=4, analog_bits=True, sample_precision="bf16")
    model.fit(showers[:300], epochs=1, batch_size=100, progress=False)
    diff = model.inner
    with torch.no_grad():
        for p in diff.net.parameters():  # away from the zero-initialised output layer: a network that does something
            p.add_(0.05 * torch.randn_like(p))
    cond = showers.cond[:20]
    first = model.sample(cond, seed=3).x
    copy_net = diff.__dict__["_sampling_net"][1]
    assert next(copy_net.inp.parameters()).dtype == torch.bfloat16 and copy_net.blocks[0].norm.weight.dtype == torch.float32
    assert torch.equal(model.sample(cond, seed=3).x, first) and diff.__dict__["_sampling_net"][1] is copy_net  # reused
    assert "_sampling_net" not in str(list(diff.state_dict()))
    monkeypatch.setattr(DiffusionSurrogate, "_cast_net", lambda self, dtype: self.net)  # autocast casting every call
    assert torch.equal(model.sample(cond, seed=3).x, first)
    monkeypatch.undo()
    with torch.no_grad():
        diff.net.inp.weight.mul_(1.5)  # in place, as an optimiser step
    moved = model.sample(cond, seed=3).x
    assert diff.__dict__["_sampling_net"][1] is not copy_net and not torch.equal(moved, first)
    monkeypatch.setattr(DiffusionSurrogate, "_cast_net", lambda self, dtype: self.net)
    assert torch.equal(model.sample(cond, seed=3).x, moved)


def test_diffusion_learns_a_bimodal_distribution():
    # a mixture a Gaussian cannot represent: ±2 with σ 0.3
    rng = np.random.default_rng(2)
    x = rng.choice([-2.0, 2.0], size=(4000, 1)) + rng.normal(0, 0.3, size=(4000, 1))
    data = Data(np.concatenate([x, rng.normal(size=(4000, 1))], 1), Schema(kind="event", feature_names=("a", "b")))
    diff = create("diffusion", hidden=64, n_blocks=2, emb=32, steps=18)
    diff.fit(data, epochs=40, batch_size=256, lr=2e-3, progress=False, seed=0)
    s = diff.sample(n=3000, seed=0).x[:, 0].numpy()
    near = np.abs(np.abs(s) - 2.0) < 0.6
    assert near.mean() > 0.85
    assert 0.4 < (s > 0).mean() < 0.6
