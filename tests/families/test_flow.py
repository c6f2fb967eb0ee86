"""The normalising flow: closed forms, the nflows traps fixed, floors, and real physics."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from nflows.nn.nets import ResidualNet
from nflows.transforms import AffineCouplingTransform, Permutation
from nflows.transforms.autoregressive import (
    AutoregressiveTransform,
    MaskedPiecewiseRationalQuadraticAutoregressiveTransform,
)

import physgen
from physgen.calorimeter import ShowerModel
from physgen.data import Data, Pipeline, Schema
from physgen.errors import ConfigError
from physgen.metrics import event_features, high_level_features, separation_power
from physgen.surrogates import create
from physgen.surrogates.flow import (
    AutoregressiveSpline,
    ExpAffineCoupling,
    LULinearSolve,
    SplineCoupling,
    cached_sampling_plan,
    point_mass_floor,
    realnvp,
    rq_spline_forward,
    rq_spline_inverse,
    rq_spline_inverse_scalar,
    sample_feature_major,
    sample_inverse,
    sampling_plan,
)

ZMUMU = ["E1", "px1", "py1", "pz1", "E2", "px2", "py2", "pz2"]


def _net(n_in, n_out):
    return ResidualNet(n_in, n_out, hidden_features=8, num_blocks=1)


def test_nflows_coupling_can_only_contract_ours_can_stretch():
    mask = torch.tensor([1.0, 0.0])
    torch.manual_seed(0)
    theirs, ours = AffineCouplingTransform(mask, _net), ExpAffineCoupling(mask, _net, clamp=3.0)
    big = torch.full((4, 2), 50.0)
    scale_theirs, _ = theirs._scale_and_shift(big)
    scale_ours, _ = ours._scale_and_shift(big)
    assert float(scale_theirs.max()) <= 1.001 + 1e-6
    assert float(scale_ours.max()) == pytest.approx(math.exp(3.0), rel=1e-4)
    ours.requires_grad_(False)
    x = torch.randn(16, 2)
    y, logdet = ours(x)
    back, logdet_inv = ours.inverse(y)
    torch.testing.assert_close(back, x, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(logdet, -logdet_inv)


def test_lu_linear_inverts_without_deprecated_solvers():
    torch.manual_seed(1)
    lu = LULinearSolve(5, identity_init=False).requires_grad_(False)
    x = torch.randn(7, 5)
    y, logdet = lu(x)
    back, logdet_inv = lu.inverse(y)
    torch.testing.assert_close(back, x, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(lu.weight_inverse() @ lu.weight(), torch.eye(5), atol=1e-5, rtol=0)
    assert float(logdet[0]) == pytest.approx(float(torch.linalg.slogdet(lu.weight())[1]), abs=1e-5)


@pytest.mark.parametrize(("cond_dim", "n_blocks", "hidden"), [(2, 1, 16), (0, 2, 13)])
def test_autoregressive_spline_inverse_is_nflows_inverse_done_cheaper(monkeypatch, cond_dim, n_blocks, hidden):
    """The first stage's unit-by-degree inverse equals nflows' own (D full passes) and undoes forward."""
    torch.manual_seed(0)
    flow = realnvp(6, cond_dim, n_layers=2, hidden=hidden, n_blocks=n_blocks, coupling="autoregressive", tail_bound=3.0)
    with torch.no_grad():
        for p in flow.parameters():  # away from the identity initialisation: bent splines, real dependence
            p.add_(0.3 * torch.randn_like(p))
    flow.double().eval()  # float64: the spline's quadratic root is then exact enough for a tight round trip
    z = 2 * torch.randn(400, 6, dtype=torch.float64)  # some beyond the tail bound
    c = torch.randn(400, cond_dim, dtype=torch.float64) if cond_dim else None
    nflows_inverse, generic_calls = AutoregressiveTransform.inverse, []
    monkeypatch.setattr(AutoregressiveTransform, "inverse", lambda *a, **k: generic_calls.append(1) or nflows_inverse(*a, **k))
    with torch.no_grad():
        x, logdet = flow.inverse(z, context=c)
        assert torch.equal(sample_inverse(flow, z, c), x)  # the sampling path: the same map without log|det|
        assert not generic_calls  # both ran the unit-by-degree inverse, not nflows' fallback
        ref, ref_logdet = z, torch.zeros(400, dtype=torch.float64)
        for t in reversed(list(flow._transforms)):
            ref, part = nflows_inverse(t, ref, c) if isinstance(t, AutoregressiveSpline) else t.inverse(ref)
            ref_logdet = ref_logdet + part
        z_back, forward_logdet = flow(x, context=c)
    assert float((x - z).abs().mean()) > 0.05  # the map is not the identity
    torch.testing.assert_close(x, ref, atol=1e-10, rtol=1e-10)
    # one row at a time (sampling one shower) takes the numpy path: the same map
    with torch.no_grad():
        for j in range(5):
            one = sample_inverse(flow, z[j : j + 1], None if c is None else c[j : j + 1])
            torch.testing.assert_close(one, x[j : j + 1], atol=1e-10, rtol=1e-10)
        # its weights are cached until a parameter changes
        next(flow.parameters()).add_(0.1)
        moved = flow.inverse(z[:2], context=None if c is None else c[:2])[0]
        assert not torch.allclose(moved, x[:2])
        torch.testing.assert_close(sample_inverse(flow, z[1:2], None if c is None else c[1:2]), moved[1:2], atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(logdet, ref_logdet, atol=1e-9, rtol=1e-10)
    torch.testing.assert_close(z_back, z, atol=1e-7, rtol=1e-7)
    torch.testing.assert_close(forward_logdet, -logdet, atol=1e-7, rtol=1e-7)


@pytest.mark.parametrize("cond_dim", [2, 0])
def test_autoregressive_spline_forward_is_nflows_forward_with_its_gradients(cond_dim):
    """The training direction: outputs, log|det| and every gradient as nflows' masked spline, tails included."""
    torch.manual_seed(2)
    flow = realnvp(6, cond_dim, n_layers=2, hidden=16, n_blocks=1, coupling="autoregressive", tail_bound=3.0).double()
    with torch.no_grad():
        for p in flow.parameters():  # bent splines, steep bins
            p.add_(0.5 * torch.randn_like(p))
    x = 2.5 * torch.randn(500, 6, dtype=torch.float64)  # about a quarter beyond the tail bound
    x[0, 0] = 3.0  # on the bound: the last bin, as nflows' searchsorted puts it
    c = torch.randn(500, cond_dim, dtype=torch.float64) if cond_dim else None
    nflows_forward = MaskedPiecewiseRationalQuadraticAutoregressiveTransform._elementwise_forward

    def run(ours: bool) -> tuple[torch.Tensor, ...]:
        flow.zero_grad()
        xi = x.clone().requires_grad_(True)
        h, total = xi, 0.0
        for t in flow._transforms:
            if isinstance(t, AutoregressiveSpline):
                params = t.autoregressive_net(h, c)
                h, lad = t._elementwise_forward(h, params) if ours else nflows_forward(t, h, params)
            else:
                h, lad = t(h)
            total = total + lad
        (h.pow(2).sum() + 3 * total.sum()).backward()
        return h.detach(), total.detach(), xi.grad, *[p.grad.clone() for p in flow.parameters()]

    ours, ref = run(True), run(False)
    assert int((x.abs() > 3).sum()) > 500 and float((ours[0] - x).abs().mean()) > 0.05
    for a, b in zip(ours[:2], ref[:2], strict=True):  # the map and log|det|: float64 rounding of another order
        torch.testing.assert_close(a, b, atol=1e-11, rtol=1e-11)
    # the gradients pass through ∂log|det|/∂x, which jumps at the knots: a point within rounding of a knot may
    # take the other side's value there (seen: one of 3,000 input gradients at 1e-8 relative; the rest ≤ 1e-10)
    for a, b in zip(ours[2:], ref[2:], strict=True):
        torch.testing.assert_close(a, b, atol=1e-9, rtol=1e-6)
    # the flow's own forward takes this path (the round trip with its inverse: the test above, on gentler splines)
    with torch.no_grad():
        z, logdet = flow(x, context=c)
    torch.testing.assert_close(z, ours[0], atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(logdet, ours[1], atol=1e-12, rtol=1e-12)


def test_forward_spline_keeps_nan_and_the_identity_outside_the_bound():
    torch.manual_seed(3)
    params = torch.randn(23, 4, 5, dtype=torch.float64)
    x = torch.tensor([[-7.0, -3.0, 0.5, 3.0, float("nan")]] * 4, dtype=torch.float64)
    y, lad = rq_spline_forward(x, params, 3.0, 1e-3, 1e-3, 1e-3)
    assert y[0, 0] == -7.0 and lad[0, 0] == 0.0 and math.isnan(float(y[0, 4])) and lad[0, 4] == 0.0
    torch.testing.assert_close(y[:, 1], x[:, 1], atol=1e-12, rtol=0)  # the bound maps to itself
    torch.testing.assert_close(y[:, 3], x[:, 3], atol=1e-12, rtol=0)


def test_one_showers_spline_on_python_floats_is_the_tensor_spline():
    """The batch-1 path (:func:`rq_spline_inverse_scalar`) is the same map as :func:`rq_spline_inverse`, tails and NaN included."""
    torch.manual_seed(1)
    k, n = 8, 3000
    params = 2 * torch.randn(3 * k - 1, n, dtype=torch.float64)
    params[:, :20] *= 8  # steep bins and derivatives past softplus's linear threshold (20)
    y = 8 * torch.rand(n, dtype=torch.float64) - 4  # a quarter beyond the tail bound 3
    y[-1] = float("nan")
    ref, _ = rq_spline_inverse(y, params, 3.0, 1e-3, 1e-3, 1e-3, False)
    got = torch.tensor([rq_spline_inverse_scalar(float(y[j]), params[:, j].tolist(), 3.0, 1e-3, 1e-3, 1e-3) for j in range(n)], dtype=torch.float64)
    assert int((y.abs() > 3).sum()) > 500 and math.isnan(float(got[-1]))
    torch.testing.assert_close(got[:-1], ref[:-1], atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("cond_dim", [2, 0])
def test_one_shower_of_the_autoregressive_first_stage_is_nflows_inverse(cond_dim):
    """Sampling a single shower takes the Python-float spline; the map is still nflows' inverse."""
    torch.manual_seed(2)
    flow = realnvp(6, cond_dim, n_layers=2, hidden=13, n_blocks=1, coupling="autoregressive", tail_bound=3.0)
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(0.3 * torch.randn_like(p))
    flow.double().eval()
    z = 2 * torch.randn(40, 6, dtype=torch.float64)
    c = torch.randn(40, cond_dim, dtype=torch.float64) if cond_dim else None
    with torch.no_grad():
        batch, _ = flow.inverse(z, context=c)  # the tensor spline (checked against nflows above)
        single = torch.cat([sample_inverse(flow, z[j : j + 1], None if c is None else c[j : j + 1]) for j in range(40)])
    assert float((batch - z).abs().mean()) > 0.05
    torch.testing.assert_close(single, batch, atol=1e-10, rtol=1e-10)


def test_spline_coupling_inverse_is_nflows_inverse_with_bins_first(monkeypatch):
    """SplineCoupling's bins-first inverse equals nflows' own and undoes the (nflows) forward map."""
    from nflows.transforms.coupling import PiecewiseCouplingTransform

    torch.manual_seed(0)
    flow = realnvp(6, 2, n_layers=3, hidden=16, n_blocks=1, coupling="spline", tail_bound=3.0)
    assert sum(isinstance(t, SplineCoupling) for t in flow._transforms) == 3
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(0.3 * torch.randn_like(p))
    flow.double()
    z, c = 2 * torch.randn(400, 6, dtype=torch.float64), torch.randn(400, 2, dtype=torch.float64)  # some beyond the tail bound
    with torch.no_grad():
        x, logdet = flow.inverse(z, context=c)
        z_back, forward_logdet = flow(x, context=c)
        monkeypatch.setattr(SplineCoupling, "_coupling_transform_inverse", PiecewiseCouplingTransform._coupling_transform_inverse)
        ref, ref_logdet = flow.inverse(z, context=c)
    assert float((x - z).abs().mean()) > 0.05
    torch.testing.assert_close(x, ref, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(logdet, ref_logdet, atol=1e-9, rtol=1e-10)
    torch.testing.assert_close(z_back, z, atol=1e-7, rtol=1e-7)
    torch.testing.assert_close(forward_logdet, -logdet, atol=1e-7, rtol=1e-7)


def test_cast_sampling_weights_are_kept_until_a_parameter_changes():
    """The bf16 conditioner weights are cast once and reused; any in-place update of the flow's weights is seen."""
    torch.manual_seed(0)
    flow = realnvp(6, 2, n_layers=3, hidden=16, n_blocks=1)
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(0.3 * torch.randn_like(p))
    flow.eval()
    plan = sampling_plan(flow)
    z, c = torch.randn(50, 6), torch.randn(50, 2)

    def draw() -> torch.Tensor:
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            return sample_feature_major(plan, z, c, block=32)

    first = draw()
    kept = [coupling.__dict__["_sampling_weights"][1] for coupling, _ in plan[0]]
    assert torch.equal(draw(), first)
    assert [coupling.__dict__["_sampling_weights"][1] for coupling, _ in plan[0]] == kept  # reused, not re-cast
    original = {k: v.clone() for k, v in flow.state_dict().items()}
    fresh = realnvp(6, 2, n_layers=3, hidden=16, n_blocks=1).eval()
    fresh.load_state_dict(flow.state_dict())
    with torch.no_grad():
        plan[0][1][0].transform_net.final_layer.weight.mul_(1.5)  # an in-place update, as an optimiser step
        fresh_plan = sampling_plan(fresh)
        fresh_plan[0][1][0].transform_net.final_layer.weight.mul_(1.5)
    changed = draw()
    assert not torch.equal(changed, first)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(changed, sample_feature_major(fresh_plan, z, c, block=32))  # as a flow that never cached
    flow.load_state_dict(original)  # copy_ into the parameters, as loading a checkpoint: re-cast
    assert torch.equal(draw(), first)
    # the plan itself (its gathers) is kept on the flow until a permutation or mask buffer changes
    kept_plan = cached_sampling_plan(flow)
    assert cached_sampling_plan(flow) is kept_plan and all(torch.equal(a[1], b[1]) for a, b in zip(kept_plan[0], plan[0], strict=True))
    perm = next(t for t in flow._transforms if isinstance(t, Permutation))
    with torch.no_grad():
        perm._permutation.copy_(perm._permutation.flip(0))  # in place, as load_state_dict would
    new_plan = cached_sampling_plan(flow)
    assert new_plan is not kept_plan and any(not torch.equal(a[1], b[1]) for a, b in zip(new_plan[0], kept_plan[0], strict=True))
    assert all(torch.equal(a[1], b[1]) for a, b in zip(new_plan[0], sampling_plan(flow)[0], strict=True))


@pytest.mark.parametrize(("dim", "cond_dim", "n_blocks"), [(7, 2, 2), (8, 0, 1)])
def test_feature_major_sampling_is_nflows_inverse(dim, cond_dim, n_blocks):
    """The sampling path (permutations folded into the coupling splits) is nflows' inverse, block by block."""
    torch.manual_seed(0)
    flow = realnvp(dim, cond_dim, n_layers=5, hidden=16, n_blocks=n_blocks, dropout=0.2)
    with torch.no_grad():
        for p in flow.parameters():  # away from the zero-initialised residual blocks
            p.add_(0.3 * torch.randn_like(p))
    flow.double().eval()
    z = torch.randn(300, dim, dtype=torch.float64)
    c = torch.randn(300, cond_dim, dtype=torch.float64) if cond_dim else None
    plan = sampling_plan(flow)
    assert plan is not None
    with torch.no_grad():
        ref, _ = flow.inverse(z, context=c)
        x = sample_feature_major(plan, z, c, block=128)  # 128, 128, 44: blocks and a remainder
        back, _ = flow(x, context=c)
    assert float((ref - z).abs().mean()) > 0.1  # not the identity
    torch.testing.assert_close(x, ref, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(back, z, atol=1e-8, rtol=1e-8)  # five layers of up to e² stretch on float64 rounding
    # drawing its own noise, block by block, it skips the first gather: the noise it drew, put back in
    # the input's feature order, is a z that gives the same samples
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        drawn = sample_feature_major(plan, None, c, block=128, n=300, generator=g, temperature=0.7)
    g.manual_seed(3)
    first = plan[0][0][1]
    z_drawn = torch.cat([torch.randn(dim, k, generator=g, dtype=torch.float64)[torch.argsort(first)].t() for k in (128, 128, 44)]) * 0.7
    with torch.no_grad():
        torch.testing.assert_close(drawn, sample_feature_major(plan, z_drawn, c, block=128), atol=1e-12, rtol=1e-12)
    # under bf16 autocast the networks run in bf16 (weights cast once), the state in float64: close to the exact map
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        x_bf16 = sample_feature_major(plan, z, c, block=128)
    assert x_bf16.dtype == torch.float64
    assert 0 < float((x_bf16 - ref).abs().max()) < 0.1 * float(ref.abs().max())
    # flows it does not cover keep nflows' path: LU mixing, spline couplings
    assert sampling_plan(realnvp(dim, cond_dim, n_layers=2, mixing="lu")) is None
    assert sampling_plan(realnvp(dim, cond_dim, n_layers=2, coupling="spline")) is None


def test_flow_fits_a_gaussian_that_needs_stretching_to_the_exact_likelihood():
    # N(0, 25 I) in 2-D with no preprocessing: a contract-only RealNVP cannot reach it
    rng = np.random.default_rng(0)
    x = rng.normal(0, 5.0, size=(4000, 2))
    data = Data(x, Schema(kind="event", feature_names=("a", "b")))
    flow = create("flow", n_layers=4, hidden=32, n_blocks=1, mixing="permutation")
    flow.fit(data, preprocessing=Pipeline(), epochs=60, batch_size=256, lr=3e-3, progress=False, seed=0)
    sample = flow.sample(n=4000, seed=1).x
    assert float(sample.std()) == pytest.approx(5.0, rel=0.06)
    # log_prob is the exact density: on fresh points it matches N(0, 25 I) point by point
    fresh = rng.normal(0, 5.0, size=(2000, 2))
    true = (-0.5 * (fresh**2).sum(1) / 25 - math.log(2 * math.pi * 25)) / 2  # per dimension
    learned = flow.log_prob(Data(fresh, data.schema)).numpy() / 2
    assert abs(learned.mean() - true.mean()) < 0.02
    assert np.abs(learned - true).mean() < 0.05
    # its expectation, -(½ ln(2π·25) + ½) per dimension, is what the validation loss approaches
    assert flow.history[-1]["val_loss"] == pytest.approx(0.5 * math.log(2 * math.pi * 25) + 0.5, abs=0.06)
    # the sampling temperature scales the base noise: a flow that learned N(0, 25) gives N(0, 25 T²)
    flow.options = flow.options.replace(temperature=0.5)
    cooled = flow.sample(n=4000, seed=1).x
    assert float(cooled.std()) == pytest.approx(2.5, rel=0.06)
    assert float(cooled.std() / sample.std()) == pytest.approx(0.5, rel=0.03)
    for bad in (0.0, -1.0, 11.0):
        with pytest.raises(ConfigError, match="temperature"):
            create("flow", temperature=bad)


def test_floor_dequantisation_spreads_only_the_point_mass():
    y = torch.tensor([[-1.0, 0.3], [-1.0, 0.1], [0.5, -0.2], [2.0, 0.7]])
    floor = point_mass_floor(y, min_fraction=0.4)
    assert floor[0] == -1.0 and floor[1] == -math.inf  # column 1's minimum is one row, not a point mass
    flow = create("flow", floor_noise=0.5)
    flow._floor = floor
    torch.manual_seed(0)
    x = y.repeat(500, 1)
    out = flow._dequantise_floor(x)
    on_floor = x[:, 0] == -1.0
    torch.testing.assert_close(out[~on_floor], x[~on_floor])
    torch.testing.assert_close(out[:, 1], x[:, 1])
    spread = out[on_floor, 0]
    assert float(spread.min()) >= -1.5 and float(spread.max()) <= -1.0
    assert float(spread.mean()) == pytest.approx(-1.25, abs=0.02)  # uniform on [floor − 0.5, floor]
    with pytest.raises(ConfigError, match="floor_noise"):
        create("flow", floor_noise=-0.1)


def test_floor_noise_is_on_for_showers_only(showers):
    shower_flow = ShowerModel("flow", n_layers=2, hidden=16, n_blocks=1)
    shower_flow.fit(showers[:200], epochs=1, progress=False)
    assert shower_flow.inner.options.floor_noise == 0.5  # the calorimeter preset
    # an event column whose lowest value is common (a charge, a multiplicity) is not an empty voxel
    q = np.repeat([-1.0, 1.0], 100)
    events = Data(np.stack([q, np.linspace(0, 1, 200)], 1), Schema(kind="event", feature_names=("q", "x")))
    event_flow = create("flow", n_layers=2, hidden=16, n_blocks=1)
    event_flow.fit(events, epochs=1, progress=False)
    assert bool(torch.isfinite(event_flow._floor).any())  # q has a point mass on its minimum ...
    assert event_flow.options.floor_noise == 0.0
    x = torch.zeros(5, 2) + event_flow._floor.clamp_min(-10)
    torch.testing.assert_close(event_flow._dequantise_floor(x), x)  # ... which stays put


def test_flow_with_floor_noise_keeps_the_point_mass_weight():
    # column a: 40 % exactly at 0 (empty voxels), 60 % N(2, 0.5²); column b: N(0, 1)
    rng = np.random.default_rng(0)
    n = 4000
    a = np.where(rng.random(n) < 0.4, 0.0, rng.normal(2.0, 0.5, n))
    data = Data(np.stack([a, rng.normal(0, 1, n)], 1), Schema(kind="event", feature_names=("a", "b")))
    flow = create("flow", n_layers=6, hidden=32, n_blocks=1, floor_noise=0.5)
    flow.fit(data, preprocessing=Pipeline(), epochs=100, batch_size=256, lr=3e-3, progress=False, seed=0)
    sample = flow.sample(n=8000, seed=1).x.numpy()
    empty = sample[:, 0] < 0.25
    assert empty.mean() == pytest.approx(0.4, abs=0.03)  # the spread mass maps back to the floor
    assert np.quantile(sample[empty, 0], 0.01) > -1.0  # and stays near [−0.5, 0]
    assert sample[~empty, 0].mean() == pytest.approx(2.0, abs=0.1)


def test_flow_is_invertible_on_showers(showers):
    flow = ShowerModel("flow", n_layers=2, hidden=32, n_blocks=1)
    flow.fit(showers[:300], epochs=1, progress=False)
    y, c = flow.preprocessing.forward(showers.x[:20], showers.cond[:20])
    ys, cs, ye = flow.split_stages(y.float(), c.float())  # both stages: voxels | (E_inc, layers), layers | E_inc
    for transform, part, context in ((flow.inner.transform, ys, cs), (flow.layer_energy.transform, ye, c.float())):
        z, _ = transform(part, context=context)
        back, _ = transform.inverse(z, context=context)
        torch.testing.assert_close(back, part, atol=2e-3, rtol=1e-3)


@pytest.fixture(scope="module")
def dimuons(zmumu_path):
    return physgen.read(zmumu_path, branches=ZMUMU, units="GeV")


def _z_window(data):
    m = event_features(data)["m_pair"]
    return float(((m > 81) & (m < 101)).mean())


def test_flow_dimuon_mass_shows_the_z_peak(dimuons):
    real = _z_window(dimuons)
    assert real > 0.7  # the CMS events: most dimuon masses sit in the Z window
    flow = create("flow", n_layers=6, hidden=128, n_blocks=2)
    flow.fit(dimuons, epochs=60, batch_size=128, lr=2e-3, progress=False, seed=0)
    gen = flow.sample(n=2304, seed=0)
    gauss = create("gaussian")
    gauss.fit(dimuons)
    # the Gaussian's mass has no peak; the flow's has
    assert _z_window(gen) > 2 * _z_window(gauss.sample(n=2304, seed=0))
    assert _z_window(gen) > 0.35


@pytest.mark.slow  # ~35 s; CI trains the flow to quality on the dimuon Z peak instead
def test_flow_quality_on_a_small_real_sample(showers):
    # loose: catches regressions (a broken preprocessing, scale trap, conditioning) in seconds
    train, test = showers.split((0.75, 0.25), seed=0)
    flow = ShowerModel("flow", n_layers=6, hidden=128, n_blocks=1)
    flow.fit(train, epochs=25, batch_size=128, lr=1e-3, progress=False, seed=0)
    gen = flow.sample(test.cond, seed=0)
    fr, fg = high_level_features(test), high_level_features(gen)
    assert abs(fg["E_ratio"].mean() - fr["E_ratio"].mean()) < 0.05
    assert separation_power(fr["shower_depth"], fg["shower_depth"], bins=30).value < 0.25
