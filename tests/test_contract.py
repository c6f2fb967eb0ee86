"""One contract over every registered family, bare on event data and inside the calorimeter's shower model.

Each family lists a small, fast configuration in FAST; a family without one fails here on
purpose, so nothing joins the registry untested.
"""

from __future__ import annotations

import contextlib
import json

import pytest
import torch

import physgen
from physgen.calorimeter import ShowerModel
from physgen.data import Data, Pipeline, Schema
from physgen.errors import CheckpointError, ConfigError, InvalidDataError, UnknownNameError
from physgen.surrogates import Surrogate, available, create, get, load
from physgen.training.devices import native_bf16

# family -> (options, fit settings) small enough for CI
FAST: dict[str, tuple[dict, dict]] = {
    "gaussian": ({}, {}),
    "flow": ({"n_layers": 4, "hidden": 64, "n_blocks": 1}, {"epochs": 4, "batch_size": 128, "lr": 1e-3}),
    "diffusion": ({"hidden": 128, "n_blocks": 2, "steps": 8}, {"epochs": 4, "batch_size": 128, "lr": 1e-3}),
    "vae": ({"latent": 16, "hidden": 128, "layers": 2, "kl_warmup_steps": 20}, {"epochs": 6, "batch_size": 128, "lr": 1e-3}),
    "wgan": ({"hidden": 128, "critic_hidden": 128, "layers": 2, "critic_layers": 2, "n_critic": 2}, {"epochs": 6, "batch_size": 128}),
    "rbm": ({"alpha": 1.0}, {"epochs": 30, "batch_size": 500, "lr": 0.03}),
    "complex_rbm": ({"alpha": 1.0}, {"epochs": 30, "batch_size": 500, "lr": 0.03}),
    "density_rbm": ({"alpha": 1.0, "aux_alpha": 0.5}, {"epochs": 30, "batch_size": 500, "lr": 0.03}),
}
FAMILIES = [f for f in available() if f != "shower"]
LEARNED = ["flow", "diffusion", "vae", "wgan"]
# the shower model around every family that models tensors, two-stage (the default) and one-stage
SHOWERS = ["gaussian", *LEARNED, *(f"{f}/one_stage" for f in LEARNED)]
EVENTS = [f for f in FAMILIES if "event" in get(f).data_kinds]
SPINS = [f for f in FAMILIES if "spins" in get(f).data_kinds]
ZMUMU = ["E1", "px1", "py1", "pz1"]


def make_shower(name: str) -> ShowerModel:
    family = name.split("/")[0]
    options = {**FAST[family][0], **({"two_stage": False} if name.endswith("/one_stage") else {})}
    return ShowerModel(family, **options)


@pytest.fixture(scope="module")
def spin_measurements():
    from physgen.quantum import ground_state, sample_measurements, tfim

    return sample_measurements(ground_state(tfim(6))[1], 3000, seed=0)


@pytest.fixture(scope="module")
def small_showers():
    return physgen.load_default()[:1000]


@pytest.fixture(scope="module")
def dimuons(zmumu_path):
    return physgen.read(zmumu_path, branches=ZMUMU, units="GeV")[:1200]


@pytest.fixture(scope="module")
def fitted_showers(small_showers):
    models = {}
    for name in SHOWERS:
        model = make_shower(name)
        model.fit(small_showers, progress=False, **FAST[name.split("/")[0]][1])
        models[name] = model
    return models


@pytest.fixture(scope="module")
def fitted_events(dimuons, spin_measurements):
    models = {}
    for name in FAMILIES:
        model = create(name, **FAST[name][0])
        model.fit(spin_measurements if name in SPINS else dimuons, progress=False, **FAST[name][1])
        models[name] = model
    return models


def test_every_family_has_a_fast_configuration():
    assert set(FAMILIES) <= set(FAST), f"add {set(FAMILIES) - set(FAST)} to FAST"


@pytest.mark.parametrize("name", FAMILIES)
def test_every_family_rejects_unknown_and_bad_options(name):
    key = next(iter(get(name).Options.names()))
    with pytest.raises(ConfigError, match=f"did you mean '{key}'"):
        create(name, **{key + "x": 1})
    with pytest.raises(ConfigError, match="unknown option 'no_such_option'"):
        create(name, no_such_option=1)
    with pytest.raises(ConfigError, match="sample_precision"):
        create(name, sample_precision="half")


@pytest.mark.parametrize("name", LEARNED)
def test_the_shower_model_rejects_unknown_options_of_either_part(name):
    with pytest.raises(ConfigError, match="did you mean 'value_calibration'"):
        ShowerModel(name, value_calibraton=True)
    with pytest.raises(ConfigError, match="unknown option"):
        ShowerModel(name, definitely_not_an_option=3)


def test_options_are_typed_and_ranged():
    with pytest.raises(ConfigError, match="did you mean 'temperature'"):
        create("flow", temprature=1.3)
    with pytest.raises(ConfigError, match="'n_layers' must be an integer; got 2.5"):
        create("flow", n_layers=2.5)
    with pytest.raises(ConfigError, match="'hidden' must be ≥ 1; got -5"):
        create("vae", hidden=-5)
    with pytest.raises(ConfigError, match="'beta' must be a finite number"):
        create("vae", beta=float("nan"))
    with pytest.raises(ConfigError, match="'likelihood' must be one of"):
        create("vae", likelihood="poisson")
    with pytest.raises(ConfigError, match="'fold' needs point_mass"):
        create("vae", fold=True)
    assert create("flow", n_layers=3.0).options.n_layers == 3  # an integral float is an integer


@pytest.mark.parametrize("name", [*SHOWERS])
def test_training_reduces_the_loss(fitted_showers, name):
    hist = fitted_showers[name].history
    assert hist[-1]["val_loss"] < hist[0]["val_loss"], hist
    assert all(torch.isfinite(torch.tensor(h["val_loss"])) for h in hist)


@pytest.mark.parametrize("name", FAMILIES)
def test_training_on_events_reduces_the_loss(fitted_events, name):
    hist = fitted_events[name].history
    assert hist[-1]["val_loss"] < hist[0]["val_loss"], hist


@pytest.mark.parametrize("name", SHOWERS)
def test_shapes_dtype_device_and_physical_values(fitted_showers, name):
    model = fitted_showers[name]
    cond = torch.full((7, 1), 20_000.0)
    out = model.sample(cond, seed=0)
    assert isinstance(out, physgen.Data)
    assert out.x.shape == (7, 768) and out.x.dtype == torch.float32 and out.x.device.type == "cpu"
    assert torch.equal(out.cond, cond)
    assert bool(torch.isfinite(out.x).all()) and bool((out.x >= 0).all())
    assert out.schema.geometry == physgen.load_default().geometry


@pytest.mark.parametrize("name", SHOWERS)
def test_seeded_sampling_is_reproducible(fitted_showers, name):
    model = fitted_showers[name]
    cond = torch.full((50, 1), 8_000.0)
    a, b, c = (model.sample(cond, seed=s).x for s in (3, 3, 4))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


@pytest.mark.parametrize("name", SHOWERS)
def test_batched_sampling_has_the_same_distribution(fitted_showers, name):
    model = fitted_showers[name]
    cond = torch.full((2000, 1), 30_000.0)
    one = model.sample(cond, seed=1, batch_size=2000).x.sum(1)
    many = model.sample(cond, seed=2, batch_size=300).x.sum(1)
    assert abs(float(one.mean() - many.mean())) < 5 * float(one.std()) / 2000**0.5 * 2**0.5


@pytest.mark.parametrize("name", SHOWERS)
def test_save_load_gives_identical_samples_for_the_shower_model(fitted_showers, name, tmp_path):
    model = fitted_showers[name]
    model.save(tmp_path / "m")
    back = load(str(tmp_path / "m"))
    assert type(back) is ShowerModel and type(back.inner) is type(model.inner) and back.dims == model.dims
    cond = torch.logspace(3, 5, 20)[:, None]
    assert torch.equal(back.sample(cond, seed=11).x, model.sample(cond, seed=11).x)
    assert torch.equal(back.sample(cond, seed=11, calibrated=False).x, model.sample(cond, seed=11, calibrated=False).x)
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["options"]["family"] == name.split("/")[0]  # what was asked for, apart from what was resolved
    assert "two_stage" not in config["options"] or name.endswith("one_stage")
    assert config["resolved"]["two_stage"] is (not name.endswith("one_stage") and name != "gaussian")


@pytest.mark.parametrize("name", FAMILIES)
def test_save_load_gives_identical_samples_for_every_family(fitted_events, name, dimuons, tmp_path):
    model = fitted_events[name]
    model.save(tmp_path / "m")
    back = load(str(tmp_path / "m"))
    assert type(back) is type(model) and back.options == model.options and back.resolved == model.resolved
    assert torch.equal(back.sample(n=50, seed=11).x, model.sample(n=50, seed=11).x)
    assert type(model).load(tmp_path / "m").family == name


@pytest.mark.parametrize("name", FAMILIES)
def test_gradients_reach_every_parameter(fitted_events, dimuons, spin_measurements, name):
    model = fitted_events[name]
    data = spin_measurements if name in SPINS else dimuons
    y, c = model.preprocessing.forward(data.x[:64], data.cond[:64] if data.cond is not None else None)
    y = y.float()
    model.train()
    model.zero_grad()
    if name == "wgan":  # two losses, each reaching its own network
        model(y, None, "critic")[0].backward()
        model(y, None, "generator")[0].backward()
    else:
        model(y, None)[0].backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not bool(p.grad.abs().sum() > 0))]
    model.eval()
    assert not missing, missing


@pytest.mark.parametrize("name", ["flow", "gaussian", "vae", "rbm"])
def test_train_and_eval_modes_give_the_same_log_prob(fitted_events, dimuons, spin_measurements, name):
    model = fitted_events[name]
    data = spin_measurements if name in SPINS else dimuons
    y, _ = model.preprocessing.forward(data.x[:100], None)
    out = []
    for training in (True, False):
        model.train(training)
        torch.manual_seed(0)  # the VAE's bound draws its posterior noise
        with torch.no_grad():
            out.append(model.log_prob_model(y.float(), None))
    model.eval()
    torch.testing.assert_close(out[0], out[1])


@pytest.mark.parametrize("coupling", ["affine", "spline", "autoregressive"])
@pytest.mark.parametrize("mixing", ["permutation", "lu"])
def test_flow_log_determinant_is_autograds_jacobian(coupling, mixing):
    """The whole flow's log|det ∂z/∂y| against the Jacobian autograd builds, on a small dimension."""
    torch.manual_seed(0)
    flow = create("flow", n_layers=3, hidden=16, n_blocks=1, coupling=coupling, mixing=mixing)
    flow.setup(5, 2)
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(0.1 * torch.randn_like(p))  # away from the identity initialisation, still well conditioned
    flow.double()
    y, c = torch.randn(4, 5, dtype=torch.float64), torch.randn(4, 2, dtype=torch.float64)
    _, logdet = flow.transform(y, context=c)
    for i in range(4):
        jac = torch.autograd.functional.jacobian(lambda v, i=i: flow.transform(v[None], context=c[i : i + 1])[0][0], y[i])
        torch.testing.assert_close(logdet[i], torch.linalg.slogdet(jac).logabsdet, rtol=1e-6, atol=1e-6)


def test_gaussian_log_prob_is_scipys_multivariate_normal(fitted_events, dimuons):
    from scipy import stats

    model = fitted_events["gaussian"]
    y, _ = model.preprocessing.forward(dimuons.x[:50], None)
    with torch.no_grad():
        mean = model.coef[0].double()
        cov = (model.scale_tril() @ model.scale_tril().T).double()
        ours = model.log_prob_model(y.float(), None).double()
    torch.testing.assert_close(ours, torch.from_numpy(stats.multivariate_normal(mean.numpy(), cov.numpy()).logpdf(y.numpy())), rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("name", SHOWERS)
def test_log_prob_where_claimed(fitted_showers, small_showers, name):
    model = fitted_showers[name]
    if model.capabilities.has_log_prob:
        lp = model.log_prob(small_showers[:20])
        assert lp.shape == (20,) and bool(torch.isfinite(lp).all())
    else:
        with pytest.raises(InvalidDataError, match="no log_prob"):
            model.log_prob(small_showers[:20])


@pytest.mark.parametrize("name", SHOWERS)
def test_condition_is_respected(fitted_showers, name):
    # 10x the incident energy must carry ~10x the deposited energy (PbWO4 is ~98 % contained)
    model = fitted_showers[name]
    low = model.sample(torch.full((1000, 1), 5_000.0), seed=5).x.sum(1).mean()
    high = model.sample(torch.full((1000, 1), 50_000.0), seed=6).x.sum(1).mean()
    assert 8.0 < float(high / low) < 12.5
    assert 0.7 < float(low / 5_000.0) < 1.4


@pytest.mark.parametrize("name", EVENTS)
def test_unconditional_event_data(fitted_events, name):
    model = fitted_events[name]
    out = model.sample(n=300, seed=0)
    assert out.x.shape == (300, 4) and out.cond is None
    with pytest.raises(InvalidDataError, match="unconditional: pass n"):
        model.sample(seed=0)


@pytest.mark.parametrize("name", LEARNED)
def test_a_bare_family_refuses_showers_and_points_to_the_shower_model(name, small_showers):
    with pytest.raises(InvalidDataError, match="physgen.calorimeter.ShowerModel"):
        create(name).fit(small_showers[:50], epochs=1, progress=False)
    # with a preprocessing of its own, a bare family may model showers as plain tensors
    model = create("gaussian")
    model.fit(small_showers[:300], preprocessing=Pipeline())
    assert model.sample(small_showers.cond[:3], seed=0).x.shape == (3, 768)


@pytest.mark.parametrize("name", SPINS)
def test_spin_families(fitted_events, spin_measurements, name, tmp_path):
    model = fitted_events[name]
    out = model.sample(n=500, seed=3)
    assert out.x.shape == (500, 6) and out.schema.kind == "spins"
    assert bool(((out.x == 0) | (out.x == 1)).all())
    assert torch.equal(out.x, model.sample(n=500, seed=3).x) and not torch.equal(out.x, model.sample(n=500, seed=4).x)
    lp = model.log_prob(spin_measurements[:50])
    assert lp.shape == (50,) and bool(torch.isfinite(lp).all()) and bool((lp <= 0).all())
    with pytest.raises(InvalidDataError, match="models spins data"):
        create(name).fit(physgen.load_default()[:50])
    with pytest.raises(ConfigError, match="not calorimeter showers"):
        ShowerModel(name)


def test_registry_and_checkpoint_errors(tmp_path, fitted_events):
    with pytest.raises(UnknownNameError, match="valid: .*gaussian"):
        create("gausian")
    model = fitted_events["gaussian"]
    model.save(tmp_path / "m")
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    (tmp_path / "m" / "config.json").write_text(json.dumps({**cfg, "format_version": 99}))
    with pytest.raises(CheckpointError, match="format version 99, newer"):
        load(tmp_path / "m")
    (tmp_path / "m" / "config.json").write_text(json.dumps({**cfg, "class": "os:system"}))
    with pytest.raises(CheckpointError, match="does not import on a checkpoint's word"):
        load(tmp_path / "m")
    (tmp_path / "m" / "config.json").write_text(json.dumps({**cfg, "class": "physgen.errors:ConfigError"}))
    with pytest.raises(CheckpointError, match="not a physgen Surrogate subclass"):
        load(tmp_path / "m")
    (tmp_path / "m" / "config.json").write_text(json.dumps({**cfg, "options": {**cfg["options"], "degre": 1}}))
    with pytest.raises(CheckpointError, match="did you mean 'degree'"):
        load(tmp_path / "m")
    with pytest.raises(CheckpointError, match="no config.json"):
        load(tmp_path)
    with pytest.raises(CheckpointError, match="physgen.surrogates.load"):
        Surrogate.load(tmp_path / "m")
    with pytest.raises(InvalidDataError, match="not fitted"):
        create("gaussian").sample(torch.ones(2, 1))


def test_checkpoint_has_no_pickle_and_loads_with_weights_only(fitted_events, tmp_path):
    fitted_events["gaussian"].save(tmp_path / "m", training_state={"history": [{"epoch": 1, "loss": 0.5}]})
    files = sorted(p.name for p in (tmp_path / "m").iterdir())
    assert files == ["config.json", "training_state.pt", "weights.safetensors"]

    class Evil:  # a state file holding a pickled object is refused, not executed
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"history": Evil()}, tmp_path / "m" / "training_state.pt")
    with pytest.raises(CheckpointError, match="safely"):
        load(tmp_path / "m")


@pytest.mark.parametrize("name", SHOWERS)
def test_bf16_sampling_stays_close_to_fp32(fitted_showers, name):
    """``precision='bf16'`` runs the family's networks under autocast; same draws, same showers to bf16's precision."""
    model = fitted_showers[name]
    cond = model.preprocessing.forward_cond(torch.logspace(3, 5, 200)[:, None]).float()

    def draw(dtype):
        model.eval()
        with torch.no_grad(), torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            out = model.sample_model(200, cond, torch.Generator().manual_seed(5))
        return torch.cat([p.float() for p in out], 1) if isinstance(out, tuple) else out.float()

    fp32, bf16 = draw(None), draw(torch.bfloat16)
    assert bf16.dtype == torch.float32 and bf16.shape == fp32.shape
    scale = fp32.std()
    point_masses = getattr(model.inner.options, "point_mass", False)
    if point_masses:
        # hits are drawn first (the same uniforms in both) and the Gaussian noise only for hits, so a hit
        # that bf16's rounding flips shifts the noise of the voxels after it: compare hits and averages
        dim = len(model.inner.floor)
        hit32, hit16 = fp32[:, :dim] != model.inner.floor, bf16[:, :dim] != model.inner.floor
        assert float((hit32 != hit16).float().mean()) < 0.01
        assert float((bf16[:, :dim] - fp32[:, :dim]).abs().max()) > 0  # bf16 really ran
        torch.testing.assert_close(bf16[:, :dim].mean(), fp32[:, :dim].mean(), atol=0.02 * float(scale), rtol=0)
        fp32, bf16 = fp32[:, dim:], bf16[:, dim:]  # the first stage's layer energies (float32 in both): the same draws
    diff = (bf16 - fp32).abs()
    if name != "gaussian" and not point_masses:  # bf16 really ran, within its precision
        assert float(diff.max()) > 0
    assert float(diff.mean()) < 0.02 * float(scale), (float(diff.mean()), float(scale))
    emulated = not native_bf16(torch.device("cpu"))  # an explicit bf16 where the CPU only emulates it warns
    with pytest.warns(RuntimeWarning, match="emulates it") if emulated else contextlib.nullcontext():
        x = model.sample(torch.full((20, 1), 5_000.0), seed=0, precision="bf16").x
    assert bool(torch.isfinite(x).all()) and bool((x >= 0).all())
    with pytest.raises(ConfigError, match="sample_precision"):
        model.sample(torch.full((2, 1), 5_000.0), precision="int8")
    with pytest.raises(ConfigError, match="CUDA"):
        model.sample(torch.full((2, 1), 5_000.0), precision="fp16")


def test_a_family_built_outside_physgen_runs_through_the_same_contract(dimuons, tmp_path):
    """A family written against the documented interface alone: fit, sample, save, load."""
    import dataclasses

    from torch import nn

    from physgen.options import option
    from physgen.surrogates import SurrogateOptions, register

    @dataclasses.dataclass(frozen=True)
    class ShiftOptions(SurrogateOptions):
        scale: float = option(1.0, "width of the base noise", gt=0)

    class Shift(Surrogate):
        family = "test_shift"
        Options = ShiftOptions

        def build(self, dim, cond_dim, structure=None):
            self.mean = nn.Parameter(torch.zeros(dim))

        def forward(self, x, cond):
            return ((x - self.mean) ** 2).mean(), {}

        def sample_model(self, n, cond, generator):
            return self.mean + self.options.scale * torch.randn(n, len(self.mean), generator=generator)

    register("test_shift", Shift)
    model = create("test_shift", scale=0.5)
    model.fit(dimuons, epochs=3, progress=False)
    model.save(tmp_path / "m")
    assert torch.equal(load(tmp_path / "m").sample(n=5, seed=0).x, model.sample(n=5, seed=0).x)
    with pytest.raises(ConfigError, match="did you mean 'scale'"):
        create("test_shift", scael=2)
    events = Data(torch.randn(200, 3), Schema(kind="event"))
    assert create("test_shift").fit(events, epochs=1, progress=False)
