"""The shared loop: SIGKILL + resume reproduces an uninterrupted run; torchrun DDP matches one process."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import physgen
from physgen.calorimeter import ShowerModel
from physgen.errors import ConfigError
from physgen.surrogates import TrainingDivergedError, create

JOB = Path(__file__).with_name("train_job.py")


def _run(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, str(JOB), *args], capture_output=True, text=True, env=env, check=check, timeout=300)


def _weights(directory: Path) -> dict[str, torch.Tensor]:
    return load_file(str(directory / "weights.safetensors"))


def test_sigkill_and_resume_ends_with_identical_weights(tmp_path):
    straight, crashed = tmp_path / "straight", tmp_path / "crashed"
    _run(str(straight), "--epochs", "6")
    killed = _run(str(crashed), "--epochs", "6", "--kill-after", "3", check=False)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert not (crashed / "final").exists()
    assert (crashed / "run" / "LATEST").read_text().strip() == "epoch-000003"
    _run(str(crashed), "--epochs", "6", "--resume")
    a, b = _weights(straight / "final"), _weights(crashed / "final")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    ra, rb = (json.loads((d / "result.json").read_text()) for d in (straight, crashed))
    assert ra["val_loss"] == rb["val_loss"] and rb["epochs"] == 6


def test_a_streamed_run_resumes_to_the_same_weights_and_shares_its_file_between_ranks(tmp_path):
    """Training from a file: SIGKILL-and-resume ends where an uninterrupted run does; two torchrun ranks read disjoint halves."""
    path = tmp_path / "showers.h5"
    physgen.write(physgen.load_default()[:800], path)
    straight, crashed, ddp = tmp_path / "straight", tmp_path / "crashed", tmp_path / "ddp"
    _run(str(straight), "--epochs", "4", "--stream", str(path))
    killed = _run(str(crashed), "--epochs", "4", "--kill-after", "2", "--stream", str(path), check=False)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    _run(str(crashed), "--epochs", "4", "--resume", "--stream", str(path))
    a, b = _weights(straight / "final"), _weights(crashed / "final")
    for k in a:
        assert torch.equal(a[k], b[k]), k
    _torchrun(ddp, "--epochs", "4", "--no-checkpoints", "--stream", str(path))
    rs, rd = (json.loads((d / "result.json").read_text()) for d in (straight, ddp))
    assert rd["world"] == 2 and math.isclose(rd["val_loss"], rs["val_loss"], rel_tol=0.03), (rs, rd)
    assert rd["val_loss"] < 1.35  # trained: the untrained identity Gaussian is at 1.45 a dimension


def _torchrun(out: Path, *args: str) -> subprocess.CompletedProcess:
    """``tests/train_job.py OUT ARGS`` on two gloo ranks under torchrun; asserts it succeeded."""
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).with_name("torchrun"))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", "PHYSGEN_DIST_BACKEND": "gloo"}
    r = subprocess.run([torchrun, "--standalone", "--nproc_per_node=2", str(JOB), str(out), *args],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return r


def test_torchrun_two_processes_match_single_process_quality(tmp_path):
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    _run(str(single), "--epochs", "6", "--no-checkpoints")
    _torchrun(ddp, "--epochs", "6", "--no-checkpoints")
    rs, rd = (json.loads((d / "result.json").read_text()) for d in (single, ddp))
    assert rd["world"] == 2
    # same global batch, gradients averaged across ranks: same quality to within 2 %
    assert math.isclose(rd["val_loss"], rs["val_loss"], rel_tol=0.02), (rs, rd)
    # and far better than the untrained model (identity Gaussian: 1.45 per dimension)
    assert rd["val_loss"] < 1.35


def test_compiled_training_under_torchrun_takes_the_single_process_steps(tmp_path):
    """``compile=True`` on DDP ranks (torch.compile of the DistributedDataParallel module): the eager single-process result."""
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    _run(str(single), "--epochs", "3", "--no-checkpoints")
    _torchrun(ddp, "--epochs", "3", "--no-checkpoints", "--compile")
    rs, rd = (json.loads((d / "result.json").read_text()) for d in (single, ddp))
    assert rd["world"] == 2 and rd["epochs"] == 3
    assert math.isclose(rd["val_loss"], rs["val_loss"], rel_tol=1e-4), (rs, rd)
    assert rd["val_loss"] < 1.35  # trained: the untrained identity Gaussian is at 1.45 a dimension


def test_early_stopping_restores_the_best_weights():
    data = physgen.load_default()[:600]
    model = ShowerModel("gaussian", solver="gradient")
    # a constant, too-large learning rate makes validation loss wander; patience stops it
    hist = model.fit(data, epochs=40, lr=0.05, schedule="constant", patience=2, progress=False, seed=1)
    assert len(hist) < 40
    best = min(h["val_loss"] for h in hist)
    val = data.split((0.9, 0.1), seed=1)[1]
    y, c = model.preprocessing.forward(val.x, val.cond)
    assert math.isclose(model.validation_metrics(y.float(), c.float())["val_loss"], best, rel_tol=1e-5)


def test_divergence_stops_without_saving(tmp_path):
    data = physgen.load_default()[:400]
    model = ShowerModel("gaussian", solver="gradient")
    with pytest.raises(TrainingDivergedError, match="lower lr"):
        model.fit(data, epochs=5, lr=1e4, grad_clip=None, schedule="constant", progress=False, checkpoint_dir=tmp_path / "run")
    assert not (tmp_path / "run" / "LATEST").exists()


def test_bad_training_settings_are_rejected():
    data = physgen.load_default()[:100]
    with pytest.raises(ConfigError, match="fp16"):
        ShowerModel("gaussian", solver="gradient").fit(data, epochs=1, precision="fp16", device="cpu")
    with pytest.raises(ConfigError, match="resume=True needs checkpoint_dir"):
        ShowerModel("gaussian", solver="gradient").fit(data, resume=True)
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA device"):
            ShowerModel("gaussian", solver="gradient").fit(data, device="cuda")
        with pytest.raises(ConfigError, match="no CUDA device"):
            ShowerModel("gaussian").fit(data, device="cuda")  # the closed form honours the device too


@pytest.mark.filterwarnings("ignore:.*PyTorch emulates it:RuntimeWarning")  # bf16 on purpose, on any CPU
def test_bf16_autocast_trains_on_cpu():
    data = physgen.load_default()[:400]
    hist = ShowerModel("gaussian", solver="gradient").fit(data, epochs=3, precision="bf16", progress=False)
    assert hist[-1]["val_loss"] < hist[0]["val_loss"]


def test_gaussian_scale_factor_is_cached_only_while_the_parameter_is_unchanged():
    """The sampling cache of L = tril(raw, -1) + diag(exp(diag raw)) follows every in-place update."""
    model = create("gaussian", solver="gradient")
    model.build(5, 0)
    with torch.no_grad():
        model.scale_tril_raw.copy_(torch.randn(5, 5))
    raw = model.scale_tril_raw.detach().clone()
    expected = torch.tril(raw, -1) + torch.diag(raw.diagonal().exp())
    with torch.no_grad():
        first = model.scale_tril()
        torch.testing.assert_close(first, expected, rtol=0, atol=0)
        assert model.scale_tril() is first  # kept while the parameter is unchanged
        model.scale_tril_raw.mul_(2)  # an optimiser step or load_state_dict changes it in place
        torch.testing.assert_close(model.scale_tril(), torch.tril(2 * raw, -1) + torch.diag((2 * raw).diagonal().exp()))
    # with autograd on it is rebuilt every call, and gradients reach the raw diagonal through exp
    model.scale_tril().sum().backward()
    grad = model.scale_tril_raw.grad
    torch.testing.assert_close(grad, torch.tril(torch.ones(5, 5), -1) + torch.diag((2 * raw).diagonal().exp()))


def test_training_options_are_typed_and_name_the_nearest(showers):
    model = ShowerModel("gaussian", solver="gradient")
    with pytest.raises(ConfigError, match="did you mean 'epochs'"):
        model.fit(showers[:50], epoch=3)
    for bad, message in (
        ({"epochs": 0}, "'epochs' must be ≥ 1"), ({"batch_size": 0}, "'batch_size' must be ≥ 1"), ({"lr": 0.0}, "'lr' must be > 0"),
        ({"lr": -1.0}, "'lr' must be > 0"), ({"lr": float("nan")}, "'lr' must be a finite number"), ({"patience": -1}, "'patience' must be ≥ 1"),
        ({"time_budget_s": -5.0}, "'time_budget_s' must be > 0"), ({"checkpoint_every": 0}, "'checkpoint_every' must be ≥ 1"),
        ({"epochs": 2.5}, "'epochs' must be an integer"), ({"schedule": "linear"}, "'schedule' must be one of"),
        ({"val_fraction": 1.0}, "'val_fraction' must be < 1"), ({"device": "gpu0"}, "'device' must be"),
    ):
        with pytest.raises(ConfigError, match=message):
            model.fit(showers[:50], **bad)


def test_an_environment_variable_caps_every_runs_epochs(monkeypatch, showers):
    """``PHYSGEN_MAX_EPOCHS`` turns any script or suite into a smoke test (how CI runs the documentation's examples)."""
    monkeypatch.setenv("PHYSGEN_MAX_EPOCHS", "2")
    hist = ShowerModel("gaussian", solver="gradient").fit(showers[:200], epochs=50, progress=False)
    assert len(hist) == 2
    monkeypatch.setenv("PHYSGEN_MAX_EPOCHS", "zero")
    with pytest.raises(ConfigError, match="PHYSGEN_MAX_EPOCHS must be a positive integer; got 'zero'"):
        ShowerModel("gaussian", solver="gradient").fit(showers[:200], epochs=5, progress=False)


def test_a_budget_in_steps_gives_the_same_model_however_fast_the_machine(showers):
    """``steps`` ends training after exactly that many optimiser steps, annealing over them; the history says what stopped it."""
    data = showers[:300]  # 270 training showers: 5 batches of 64 an epoch (the last one 14)
    hist = ShowerModel("gaussian", solver="gradient").fit(data, steps=12, batch_size=64, lr=1e-2, progress=False, seed=1)
    assert [h["samples"] for h in hist] == [270, 270, 128]  # 5 + 5 + 2 steps; the last epoch is partial
    assert hist[-1]["stopped_by"] == "steps" and all("stopped_by" not in h for h in hist[:-1])
    # the cosine schedule reached its end at the 12th step: lr factor ½(1 + cos(π · 11/12))
    assert math.isclose(hist[-1]["lr"], 1e-2 * 0.5 * (1 + math.cos(math.pi * 11 / 12)), rel_tol=1e-9)
    again = ShowerModel("gaussian", solver="gradient")
    assert [h["loss"] for h in again.fit(data, steps=12, batch_size=64, lr=1e-2, progress=False, seed=1)] == [h["loss"] for h in hist]
    ended = ShowerModel("gaussian", solver="gradient").fit(data, epochs=2, batch_size=64, progress=False)
    assert ended[-1]["stopped_by"] == "epochs"
    capped = ShowerModel("gaussian", solver="gradient").fit(data, steps=1000, batch_size=64, time_budget_s=1e-9, progress=False)
    assert len(capped) == 1 and capped[0]["stopped_by"] == "time_budget" and capped[0]["samples"] == 64


def test_a_wall_time_cap_on_a_budget_in_steps_only_cuts_it_short():
    """With ``steps``, ``time_budget_s`` does not bend the schedule (the run stays the same on a slow machine); alone, it anneals it."""
    from physgen.training import TrainConfig
    from physgen.training.loop import _lr_factor

    by_steps = _lr_factor(TrainConfig(steps=100), 30, 100, 10)
    assert math.isclose(by_steps, 0.5 * (1 + math.cos(math.pi * 0.3)), rel_tol=1e-12)
    for elapsed in (0.0, 50.0, 99.0):  # the cap's clock is ahead of the steps: the schedule does not follow it
        assert _lr_factor(TrainConfig(steps=100, time_budget_s=100.0), 30, 100, 10, elapsed_s=elapsed) == by_steps
    timed = _lr_factor(TrainConfig(epochs=10, time_budget_s=100.0), 30, 100, 10, elapsed_s=50.0)
    assert math.isclose(timed, 0.5 * (1 + math.cos(math.pi * 0.5)), rel_tol=1e-12)


def test_the_epoch_cap_of_a_smoke_run_also_caps_a_budget_in_steps(monkeypatch, showers):
    monkeypatch.setenv("PHYSGEN_MAX_EPOCHS", "1")
    hist = ShowerModel("gaussian", solver="gradient").fit(showers[:300], steps=100, batch_size=64, progress=False)
    assert len(hist) == 1 and hist[0]["samples"] == 270 and hist[0]["stopped_by"] == "epochs"


def _aten_ops(fn) -> int:
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    return sum(e.count for e in prof.key_averages() if e.key.startswith("aten::"))


def test_compiled_training_takes_the_eager_steps_in_fewer_operations():
    """``compile=True``: step for step the losses of eager training (a flow's loss draws no noise), in a fraction of the operations."""
    from physgen.data import Data, Schema
    from physgen.training import TrainConfig, TrainContext

    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 16, generator=g) @ torch.randn(16, 16, generator=g)
    data = Data(x, Schema(kind="event"))  # 270 training events: 5 batches of 54, so one graph serves every step
    settings = {"steps": 10, "batch_size": 54, "lr": 1e-3, "progress": False, "seed": 0}
    hist = {}
    for compiled in (False, True):
        model = create("flow", n_layers=2, hidden=32, n_blocks=1)
        hist[compiled] = [h["loss"] for h in model.fit(data, compile=compiled, **settings)]
    assert len(hist[True]) == 2
    assert hist[True] == pytest.approx(hist[False], rel=1e-4)

    y, c = model.prepare(data[:54])
    ctx = TrainContext(TrainConfig(compile=True), torch.device("cpu"), model)
    loss = ctx.compiled("loss", model)
    loss(y, c)[0].backward()  # compiles, outside the count
    eager = _aten_ops(lambda: model(y, c)[0].backward())
    fused = _aten_ops(lambda: loss(y, c)[0].backward())
    assert fused < eager / 3, (fused, eager)


def test_compile_without_a_compiler_is_refused_before_training(monkeypatch, showers):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(ConfigError, match="C\\+\\+ compiler") as err:
        ShowerModel("gaussian", solver="gradient").fit(showers[:100], epochs=1, compile=True, progress=False)
    assert err.value.key == "compile"
