"""The surrogates on a CUDA device: training, sampling, checkpoints and the suite's timing there.

Skipped where there is no CUDA device (CI). ``PHYSGEN_TEST_DEVICE=cpu`` runs the same
checks on the CPU, to try them where no GPU is at hand. Each family trains on real
Geant4 W/Si showers with the W/Si suite's settings (azimuthal copies, hit bits, the
hit and value maps, bf16 sampling), so every path that moves tensors between the
device and the host is exercised.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from physgen.bench import model_device, run_one
from physgen.calorimeter import ShowerModel
from physgen.io import read
from physgen.surrogates import load

DEVICE = os.environ.get("PHYSGEN_TEST_DEVICE", "cuda")

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(DEVICE.startswith("cuda") and not torch.cuda.is_available(), reason="needs a CUDA device"),
]

# the W/Si suite's settings (benchmarks/suites/calo_wsi.toml), at small widths
FAMILIES = {
    "gaussian": ({}, {}),
    "flow": (
        {"n_layers": 2, "hidden": 32, "n_blocks": 1, "temperature": 1.3, "sample_precision": "bf16", "value_calibration": True},
        {"augment": 4, "patience": 10},
    ),
    "diffusion": (
        {"hidden": 64, "n_blocks": 1, "steps": 6, "sampler": "euler", "sample_precision": "bf16", "standardise_min_std": 1.0,
         "analog_bits": True, "value_calibration": True},
        {"augment": 4},
    ),
    "vae": (
        {"latent": 8, "hidden": 64, "layers": 1, "kl_warmup_steps": 10, "sample_precision": "bf16", "hit_calibration": True,
         "value_calibration": True},
        {"augment": 4},
    ),
    "wgan": (
        {"hidden": 64, "critic_hidden": 64, "sample_precision": "bf16", "hit_calibration": True, "energy_steps": 8,
         "value_calibration": True},
        {"augment": 4},
    ),
}


@pytest.fixture(scope="module")
def wsi_small(wsi_path):
    data = read(wsi_path, stop=600)
    return data.split((0.5, 0.5), seed=0)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_family_trains_samples_and_round_trips_on_the_device(family, wsi_small, tmp_path):
    train, test = wsi_small
    config, train_cfg = FAMILIES[family]
    model = ShowerModel(family, **config)
    hist = model.fit(train, epochs=2, batch_size=64, device=DEVICE, progress=False, seed=0, **train_cfg)
    assert all(np.isfinite(h["loss"]) for h in hist if "loss" in h)
    assert model_device(model).type == torch.device(DEVICE).type
    cond = test.cond[:200]
    a = model.sample(cond, seed=3)
    b = model.sample(cond, seed=3)
    # samples come back to the host, in physics units, one per condition, reproducible by seed
    assert a.x.device.type == "cpu" and a.x.shape == (200, train.x.shape[1])
    assert torch.isfinite(a.x).all() and (a.x >= 0).all()
    torch.testing.assert_close(a.x, b.x)
    assert not torch.equal(a.x, model.sample(cond, seed=4).x)
    # a checkpoint written from the device loads on the host and back onto the device, unchanged
    model.save(tmp_path / family)
    back = load(tmp_path / family)
    host = {k: v.cpu() for k, v in model.state_dict().items()}
    assert host.keys() == back.state_dict().keys()
    for k, v in back.state_dict().items():
        torch.testing.assert_close(v, host[k], msg=k)
    back.to(DEVICE)
    torch.testing.assert_close(back.sample(cond, seed=3).x, a.x)


@pytest.mark.parametrize("family", ["gaussian", "flow"])
def test_exact_log_likelihood_is_the_same_on_the_device_and_the_host(family, wsi_small):
    train, test = wsi_small
    config, train_cfg = FAMILIES[family]
    model = ShowerModel(family, **config)
    model.fit(train, epochs=1, batch_size=64, device=DEVICE, progress=False, seed=0, **train_cfg)
    on_device = model.log_prob(test[:100]).double()
    model.to("cpu")
    on_host = model.log_prob(test[:100]).double()
    assert torch.isfinite(on_host).all()
    # fp32 sums over 6,480 voxels: agree to a few parts in 10⁵ of the magnitude
    torch.testing.assert_close(on_device, on_host, rtol=1e-4, atol=1e-3 * float(on_host.abs().mean()))


def test_the_suite_times_generation_on_the_device_it_trained_on(wsi_path):
    data = read(wsi_path, stop=600)
    spec = {"family": "vae", "config": FAMILIES["vae"][0], "train": {"epochs": 1, "batch_size": 64, "device": DEVICE}}
    result, test, generated = run_one({"name": "wsi_small", "split": [0.5, 0.5]}, data, spec, 0, 1.0, {"classifier": False})
    timing = result["generate"]["timing"]
    assert timing["device"].split(":")[0] == torch.device(DEVICE).type
    assert all(timing[f"batch_{b}"]["seconds_per_event"] > 0 for b in (1, 100, 10_000))
    assert result["geant4"]["batch_10000"]["all"]["speedup"] > 0
    assert len(generated) == len(test) == 300
