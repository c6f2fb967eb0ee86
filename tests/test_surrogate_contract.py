"""One contract over every registered surrogate: the five families inherit it as they land.

Each family lists a small, fast configuration in FAST; a family without one
fails here on purpose, so nothing joins the registry untested.
"""

from __future__ import annotations

import pytest
import torch

import physgen
from physgen.errors import CheckpointError, InvalidDataError, UnknownNameError
from physgen.surrogates import Surrogate, available, create, get, load

# family -> (constructor config, fit config) small enough for CI
FAST: dict[str, tuple[dict, dict]] = {
    "gaussian": ({}, {}),
    "flow": ({"n_layers": 4, "hidden": 64, "n_blocks": 1}, {"epochs": 4, "batch_size": 128, "lr": 1e-3}),
    "diffusion": ({"hidden": 128, "n_blocks": 2, "steps": 8}, {"epochs": 4, "batch_size": 128, "lr": 1e-3}),
    "vae": ({"latent": 16, "hidden": 128, "layers": 2, "kl_warmup_steps": 20}, {"epochs": 6, "batch_size": 128, "lr": 1e-3}),
    "wgan": ({"hidden": 128, "critic_hidden": 128, "layers": 2, "critic_layers": 2, "n_critic": 2}, {"epochs": 6, "batch_size": 128}),
    "rbm": ({"alpha": 1.0}, {"epochs": 30, "batch_size": 500, "lr": 0.03}),
}
# learned families run CaloFlow's two stages on showers by default; each also as one model
ONE_STAGE = [f"{f}/one_stage" for f in ("flow", "diffusion", "vae", "wgan")]
FAST.update({v: ({**FAST[v.split("/")[0]][0], "two_stage": False}, FAST[v.split("/")[0]][1]) for v in ONE_STAGE})

FAMILIES = available()
CALO = [f for f in FAMILIES if "calorimeter" in get(f).data_kinds] + [v for v in ONE_STAGE if v.split("/")[0] in FAMILIES]
EVENTS = [f for f in FAMILIES if "event" in get(f).data_kinds]
SPINS = [f for f in FAMILIES if "spins" in get(f).data_kinds]


@pytest.fixture(scope="module")
def spin_measurements():
    from physgen.quantum import ground_state, sample_measurements, tfim

    return sample_measurements(ground_state(tfim(6))[1], 3000, seed=0)


@pytest.fixture(scope="module")
def small_showers():
    return physgen.load_default()[:1000]


@pytest.fixture(scope="module")
def fitted(small_showers, spin_measurements):
    models = {}
    for name in [*FAMILIES, *ONE_STAGE]:
        if name not in FAST or name.split("/")[0] not in FAMILIES:
            continue
        ctor, fit = FAST[name]
        model = create(name.split("/")[0], **ctor)
        model.fit(small_showers if name in CALO else spin_measurements, progress=False, **fit)
        models[name] = model
    return models


def test_every_family_has_a_fast_configuration():
    assert set(FAMILIES) <= set(FAST), f"add {set(FAMILIES) - set(FAST)} to FAST"


@pytest.mark.parametrize("name", sorted(set(FAMILIES) | set(CALO)))
def test_training_reduces_the_loss(fitted, name):
    hist = fitted[name].history
    assert hist[-1]["val_loss"] < hist[0]["val_loss"], hist
    assert all(torch.isfinite(torch.tensor(h["val_loss"])) for h in hist)


@pytest.mark.parametrize("name", CALO)
def test_shapes_dtype_device_and_physical_values(fitted, name):
    model = fitted[name]
    cond = torch.full((7, 1), 20_000.0)
    out = model.sample(cond, seed=0)
    assert isinstance(out, physgen.Data)
    assert out.x.shape == (7, 768) and out.x.dtype == torch.float32 and out.x.device.type == "cpu"
    assert torch.equal(out.cond, cond)
    assert bool(torch.isfinite(out.x).all()) and bool((out.x >= 0).all())
    assert out.schema.geometry == physgen.load_default().geometry


@pytest.mark.parametrize("name", CALO)
def test_seeded_sampling_is_reproducible(fitted, name):
    model = fitted[name]
    cond = torch.full((50, 1), 8_000.0)
    a, b, c = (model.sample(cond, seed=s).x for s in (3, 3, 4))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


@pytest.mark.parametrize("name", CALO)
def test_batched_sampling_has_the_same_distribution(fitted, name):
    model = fitted[name]
    cond = torch.full((2000, 1), 30_000.0)
    one = model.sample(cond, seed=1, batch_size=2000).x.sum(1)
    many = model.sample(cond, seed=2, batch_size=300).x.sum(1)
    assert abs(float(one.mean() - many.mean())) < 5 * float(one.std()) / 2000**0.5 * 2**0.5


@pytest.mark.parametrize("name", CALO)
def test_save_load_gives_identical_samples(fitted, name, tmp_path):
    model = fitted[name]
    model.save(tmp_path / "m")
    back = load(str(tmp_path / "m"))
    assert type(back) is type(model) and back.dims == model.dims
    cond = torch.logspace(3, 5, 20)[:, None]
    assert torch.equal(back.sample(cond, seed=11).x, model.sample(cond, seed=11).x)
    assert type(model).load(tmp_path / "m").family == name.split("/")[0]


@pytest.mark.parametrize("name", CALO)
def test_log_prob_where_claimed(fitted, small_showers, name):
    model = fitted[name]
    if model.capabilities.has_log_prob:
        lp = model.log_prob(small_showers[:20])
        assert lp.shape == (20,) and bool(torch.isfinite(lp).all())
    else:
        with pytest.raises(InvalidDataError, match="no log_prob"):
            model.log_prob(small_showers[:20])


@pytest.mark.parametrize("name", CALO)
def test_condition_is_respected(fitted, name):
    # 10x the incident energy must carry ~10x the deposited energy (PbWO4 is ~98 % contained)
    model = fitted[name]
    low = model.sample(torch.full((1000, 1), 5_000.0), seed=5).x.sum(1).mean()
    high = model.sample(torch.full((1000, 1), 50_000.0), seed=6).x.sum(1).mean()
    assert 8.0 < float(high / low) < 12.5
    assert 0.7 < float(low / 5_000.0) < 1.4


@pytest.mark.parametrize("name", EVENTS)
def test_unconditional_event_data(name, zmumu_path):
    events = physgen.read(zmumu_path, branches=["E1", "px1", "py1", "pz1"], units="GeV")
    ctor, fit = FAST[name]
    model = create(name, **ctor)
    model.fit(events[:1200], progress=False, **fit)
    out = model.sample(n=300, seed=0)
    assert out.x.shape == (300, 4) and out.cond is None
    with pytest.raises(InvalidDataError, match="unconditional: pass n"):
        model.sample(seed=0)


@pytest.mark.parametrize("name", SPINS)
def test_spin_families(fitted, spin_measurements, name, tmp_path):
    model = fitted[name]
    out = model.sample(n=500, seed=3)
    assert out.x.shape == (500, 6) and out.schema.kind == "spins"
    assert bool(((out.x == 0) | (out.x == 1)).all())
    assert torch.equal(out.x, model.sample(n=500, seed=3).x) and not torch.equal(out.x, model.sample(n=500, seed=4).x)
    model.save(tmp_path / "m")
    assert torch.equal(load(str(tmp_path / "m")).sample(n=200, seed=1).x, model.sample(n=200, seed=1).x)
    lp = model.log_prob(spin_measurements[:50])
    assert lp.shape == (50,) and bool(torch.isfinite(lp).all()) and bool((lp <= 0).all())
    with pytest.raises(InvalidDataError, match="models spins data"):
        create(name).fit(physgen.load_default()[:50])


def test_registry_and_checkpoint_errors(tmp_path, fitted):
    with pytest.raises(UnknownNameError, match="valid: .*gaussian"):
        create("gausian")
    model = fitted["gaussian"]
    model.save(tmp_path / "m")
    import json

    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    (tmp_path / "m" / "config.json").write_text(json.dumps({**cfg, "format_version": 99}))
    with pytest.raises(CheckpointError, match="format version 99, newer"):
        Surrogate.load(tmp_path / "m")
    (tmp_path / "m" / "config.json").write_text(json.dumps({**cfg, "family": "transformer"}))
    with pytest.raises(CheckpointError, match="unknown surrogate 'transformer'"):
        Surrogate.load(tmp_path / "m")
    with pytest.raises(CheckpointError, match="no config.json"):
        Surrogate.load(tmp_path)
    with pytest.raises(InvalidDataError, match="not fitted"):
        create("gaussian").sample(torch.ones(2, 1))


def test_checkpoint_has_no_pickle_and_loads_with_weights_only(fitted, tmp_path):
    fitted["gaussian"].save(tmp_path / "m", training_state={"history": [{"epoch": 1, "loss": 0.5}]})
    files = sorted(p.name for p in (tmp_path / "m").iterdir())
    assert files == ["config.json", "training_state.pt", "weights.safetensors"]
    # a state file holding a pickled object is refused, not executed
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"history": Evil()}, tmp_path / "m" / "training_state.pt")
    with pytest.raises(CheckpointError, match="safely"):
        Surrogate.load(tmp_path / "m")


@pytest.mark.parametrize("name", CALO)
def test_bf16_sampling_stays_close_to_fp32(fitted, name):
    """``precision='bf16'`` runs the family's networks under autocast; same draws, same showers to bf16's precision."""
    model = fitted[name]
    cond = model.preprocessing.forward_cond(torch.logspace(3, 5, 200)[:, None]).float()

    def draw(dtype):
        model.eval()
        with torch.no_grad():
            return model.sample_all(200, cond, torch.Generator().manual_seed(5), dtype)

    fp32, bf16 = draw(None), draw(torch.bfloat16)
    assert bf16.dtype == torch.float32 and bf16.shape == fp32.shape
    scale = fp32.std()
    if model.config.get("empty_mass"):
        # hits are drawn first (the same uniforms in both) and the Gaussian noise only for hits, so a hit
        # that bf16's rounding flips shifts the noise of the voxels after it: compare hits and averages
        dim = model.dims["dim"]
        hit32, hit16 = fp32[:, :dim] != model._empty, bf16[:, :dim] != model._empty  # an empty voxel is exactly that value
        assert float((hit32 != hit16).float().mean()) < 0.01
        assert float((bf16[:, :dim] - fp32[:, :dim]).abs().max()) > 0  # bf16 really ran
        torch.testing.assert_close(bf16[:, :dim].mean(), fp32[:, :dim].mean(), atol=0.02 * float(scale), rtol=0)
        fp32, bf16 = fp32[:, dim:], bf16[:, dim:]  # the first stage's layer energies (float32 in both): the same draws
    diff = (bf16 - fp32).abs()
    if model.family != "gaussian" and not model.config.get("empty_mass"):  # bf16 really ran, within its precision
        assert float(diff.max()) > 0
    assert float(diff.mean()) < 0.02 * float(scale), (float(diff.mean()), float(scale))
    # and through the public API, with the choice validated
    x = model.sample(torch.full((20, 1), 5_000.0), seed=0, precision="bf16").x
    assert bool(torch.isfinite(x).all()) and bool((x >= 0).all())
    with pytest.raises(InvalidDataError, match="sample_precision"):
        model.sample(torch.full((2, 1), 5_000.0), precision="int8")
    with pytest.raises(InvalidDataError, match="CUDA"):
        model.sample(torch.full((2, 1), 5_000.0), precision="fp16")


def test_bad_sample_precision_fails_at_creation():
    with pytest.raises(InvalidDataError, match="sample_precision"):
        create("diffusion", sample_precision="half")
