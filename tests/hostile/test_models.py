"""Hostile checkpoints and training runs: tampered files, diverging losses, crashes, races and locks."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import physgen
from physgen.calorimeter import ShowerModel
from physgen.errors import CheckpointError, InvalidDataError, TrainingDivergedError
from physgen.surrogates import create, load
from physgen.training import checkpoint as ckpt
from tests.hostile.conftest import run_cli


def _copy(model: Path, tmp_path: Path) -> Path:
    shutil.copytree(model, tmp_path / "m")
    return tmp_path / "m"


def _edit_config(path: Path, edit) -> None:
    cfg = json.loads((path / "config.json").read_text())
    edit(cfg)
    (path / "config.json").write_text(json.dumps(cfg))


@pytest.mark.parametrize(
    ("tamper", "message"),
    [
        (lambda m: _edit_config(m, lambda c: c["preprocessing"]["x"][-1]["mean"].__setitem__(3, float("nan"))), r"not valid JSON of finite numbers"),
        (lambda m: _edit_config(m, lambda c: c["preprocessing"]["x"][-1]["std"].__setitem__(0, float("inf"))), r"not valid JSON of finite numbers"),
        (lambda m: _edit_config(m, lambda c: c.__setitem__("format_version", 1)), r"format version 1, from physgen before typed options; re-train"),
        (lambda m: _edit_config(m, lambda c: c.__setitem__("format_version", "2")), r"no integer format_version"),
        (lambda m: _edit_config(m, lambda c: c.__setitem__("class", "os:system")), r"does not import on a checkpoint's word"),
        (lambda m: _edit_config(m, lambda c: c.__delitem__("preprocessing")), r"lacks 'preprocessing'"),
        (lambda m: _edit_config(m, lambda c: c["options"].__setitem__("latnet", 4)), r"did you mean 'latent'"),
        (lambda m: (m / "config.json").write_text("[1, 2]"), r"holds no JSON object"),
        (lambda m: (m / "weights.safetensors").unlink(), r"no weights.safetensors"),
        (lambda m: (m / "weights.safetensors").write_bytes(b"\x00" * 100), r"cannot read weights.safetensors"),
        (lambda m: _nan_weight(m), r"holds NaN or inf in"),
        (lambda m: _drop_weight(m), r"weights do not match the model"),
        (lambda m: _symlink_config(m), r"config.json is not a regular file"),
        (lambda m: _huge_config(m), r"config.json is larger than 256 MB"),
    ],
)
def test_a_tampered_checkpoint_is_refused(shower_model, tmp_path, capsys, tamper, message):
    m = _copy(shower_model, tmp_path)
    tamper(m)
    with pytest.raises(CheckpointError, match=message):
        load(m)
    out = tmp_path / "x.h5"
    run_cli(["sample", m, "--energies", "5000", "--n", "3", "--out", out], capsys, message, absent=[out])


def _nan_weight(m: Path) -> None:
    w = load_file(str(m / "weights.safetensors"))
    key = next(k for k, v in w.items() if v.is_floating_point() and v.numel() > 1)
    w[key][0] = float("nan")
    save_file(w, str(m / "weights.safetensors"))


def _drop_weight(m: Path) -> None:
    w = load_file(str(m / "weights.safetensors"))
    w.pop(next(iter(w)))
    save_file(w, str(m / "weights.safetensors"))


def _symlink_config(m: Path) -> None:
    (m / "config.json").unlink()
    os.symlink("/dev/zero", m / "config.json")


def _huge_config(m: Path) -> None:
    with open(m / "config.json", "r+b") as fh:  # sparse: no disk used
        fh.truncate(300 * 2**20)


def test_the_diffusion_is_caught_diverging_and_nothing_is_saved_or_sampled(showers, tmp_path):
    model = ShowerModel("diffusion", hidden=32, n_blocks=1, steps=3)
    with pytest.raises(TrainingDivergedError, match=r"shower\(diffusion\): training loss (exploded|jumped|became)"):
        model.fit(showers[:600], epochs=3, lr=10.0, batch_size=64, progress=False, checkpoint_dir=tmp_path / "run")
    assert not (tmp_path / "run" / "LATEST").exists()
    with pytest.raises(CheckpointError, match=r"cannot save an unfitted or diverged shower\(diffusion\) surrogate \(shower\(diffusion\): training loss"):
        model.save(tmp_path / "m")
    with pytest.raises(InvalidDataError, match=r"training diverged"):
        model.sample(showers.cond[:5], seed=0)
    assert not (tmp_path / "m").exists()


def test_a_running_median_catches_a_loss_that_jumps_late(tmp_path):
    """A loss that behaves for 30 batches and then jumps 10,000-fold stops training (the first batch's scale would not)."""
    from physgen.training import TrainConfig
    from physgen.training.loop import _check_divergence

    model = create("gaussian")
    cfg = TrainConfig(divergence_factor=1e9)
    state, recent = {"step": 30, "loss_scale0": 1.0}, __import__("collections").deque(maxlen=200)
    for loss in np.linspace(3.0, 2.0, 30):
        _check_divergence(model, cfg, state, recent, float(loss), 0)
    with pytest.raises(TrainingDivergedError, match=r"jumped to 2e\+04, .*x the median of the last 30 batches"):
        _check_divergence(model, cfg, state, recent, 2e4, 1)
    assert model.diverged
    quiet = TrainConfig(divergence_factor=1e9, divergence_median_factor=None)
    _check_divergence(create("gaussian"), quiet, state, recent, 2e4, 1)


def test_non_finite_weights_are_never_saved(tmp_path, zmumu_path):
    model = create("gaussian")
    model.fit(physgen.read(zmumu_path, branches=["E1", "px1"], units="GeV"))
    with torch.no_grad():
        model.coef[0, 0] = float("nan")
    with pytest.raises(CheckpointError, match=r"not saved: coef hold NaN or inf"):
        model.save(tmp_path / "m")
    with pytest.raises(InvalidDataError, match=r"produced non-finite samples"):
        model.sample(n=10, seed=0)
    assert not (tmp_path / "m").exists() and not list(tmp_path.glob(".m.physgen-tmp-*"))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_sampling_refuses_non_finite_conditions(shower_model, bad):
    model = load(shower_model)
    with pytest.raises(InvalidDataError, match=r"conditions must be finite; row 1 holds"):
        model.sample(torch.tensor([[5000.0], [bad]]), seed=0)


def test_sampling_refuses_conditions_of_the_wrong_width(shower_model):
    with pytest.raises(InvalidDataError, match=r"conditions must be \[B, 1\] in physics units; got shape \(3, 2\)"):
        load(shower_model).sample(torch.ones(3, 2), seed=0)


def test_a_save_replaces_a_checkpoint_without_a_moment_of_absence(shower_model, tmp_path):
    """Saving over an existing model while another thread reads it: the reader never finds it missing or half written."""
    model = load(shower_model)
    target = tmp_path / "model"
    model.save(target)
    stop, problems = threading.Event(), []

    def watch() -> None:
        while not stop.is_set():
            try:
                ckpt.read_config(target)
            except CheckpointError as exc:
                problems.append(str(exc))

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        for _ in range(15):
            model.save(target)
    finally:
        stop.set()
        watcher.join()
    assert not problems, problems[:3]
    assert not list(tmp_path.glob(".model.physgen-tmp-*"))


def test_without_an_atomic_exchange_the_old_checkpoint_is_put_back_on_failure(shower_model, tmp_path, monkeypatch):
    model = load(shower_model)
    target = tmp_path / "model"
    model.save(target)
    before = (target / "weights.safetensors").read_bytes()
    monkeypatch.setattr(ckpt, "_exchange", lambda a, b: False)
    real_rename, calls = os.rename, []

    def fail_second(src, dst):
        calls.append((src, dst))
        if len(calls) == 2:  # the new checkpoint's rename into place, after the old one moved aside
            raise OSError(28, "No space left on device")
        return real_rename(src, dst)

    monkeypatch.setattr(os, "rename", fail_second)
    with pytest.raises(CheckpointError, match=r"not written .*No space left on device.*previous one, if any, is unchanged"):
        model.save(target)
    monkeypatch.undo()
    assert (target / "weights.safetensors").read_bytes() == before
    assert not list(tmp_path.glob(".model.physgen-tmp-*"))


def test_temporaries_of_a_killed_writer_are_removed_by_the_next_write(shower_model, tmp_path):
    model = load(shower_model)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout.strip()
    (tmp_path / f".model.physgen-tmp-{dead}-abcd1234").mkdir()
    (tmp_path / f".x.h5.physgen-tmp-{dead}-abcd1234").write_bytes(b"\x00" * 1000)
    model.save(tmp_path / "model")
    physgen.write(model.sample(torch.full((3, 1), 5000.0), seed=0), tmp_path / "x.h5")
    assert not list(tmp_path.glob(".*physgen-tmp-*"))


def test_two_processes_saving_one_model_directory_do_not_collide(shower_model, tmp_path):
    code = (
        "import sys; from physgen.surrogates import load\n"
        f"m = load({str(shower_model)!r})\n"
        f"for _ in range(25): m.save({str(tmp_path / 'model')!r})\n"
    )
    procs = [subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE, text=True) for _ in range(2)]
    errors = [p.communicate(timeout=300)[1] for p in procs]
    assert all(p.returncode == 0 for p in procs), errors
    load(tmp_path / "model")


def test_a_second_trainer_on_one_run_directory_is_refused(showers, tmp_path):
    lock_holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        run = tmp_path / "run"
        run.mkdir()
        (run / "LOCK").write_text(str(lock_holder.pid))
        with pytest.raises(CheckpointError, match=rf"is in use by process {lock_holder.pid}"):
            ShowerModel("gaussian", solver="gradient").fit(showers[:200], epochs=1, progress=False, checkpoint_dir=run)
    finally:
        lock_holder.kill()
        lock_holder.wait()
    ShowerModel("gaussian", solver="gradient").fit(showers[:200], epochs=1, progress=False, checkpoint_dir=run)  # a dead holder's lock is taken over
    assert not (run / "LOCK").exists()


def test_latest_never_points_outside_its_run_directory(showers, tmp_path):
    run = tmp_path / "run"
    ShowerModel("gaussian", solver="gradient").fit(showers[:200], epochs=2, progress=False, checkpoint_dir=run)
    outside = tmp_path / "elsewhere"
    shutil.copytree(run / "epoch-000002", outside)
    (run / "LATEST").write_text("../elsewhere\n")
    assert ckpt.latest_checkpoint(run) == run / "epoch-000002"
    (run / "epoch-000001").mkdir(exist_ok=True)
    os.symlink(outside, run / "epoch-000009")
    assert ckpt.latest_checkpoint(run) == run / "epoch-000002"


def _limited(code: str, limit: int) -> subprocess.CompletedProcess:
    """Run ``code`` with the file-size limit ``limit`` bytes: writes beyond it fail as on a full disk (EFBIG)."""
    pre = (
        "import resource, signal, sys\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        f"resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))\n"
    )
    return subprocess.run([sys.executable, "-c", pre + code], capture_output=True, text=True, timeout=600)


def test_a_full_disk_during_an_hdf5_write_is_a_clean_error(shower_model, tmp_path):
    """h5py crashes the interpreter when its file system fills; physgen builds the file in memory and writes its bytes."""
    out = tmp_path / "x.h5"
    r = _limited(f"from physgen.cli import main; sys.exit(main(['sample', {str(shower_model)!r}, '--energies', '5000', '--n', '20000', "
                 f"'--out', {str(out)!r}]))", 2_000_000)
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    line = r.stderr.strip().splitlines()[-1]
    assert line.startswith("physgen: error:") and "x.h5" in line and "nothing was written" in line, line
    assert not out.exists() and not list(tmp_path.glob(".x.h5.physgen-tmp-*"))


def test_a_full_disk_during_a_root_write_and_a_checkpoint_is_a_clean_error(shower_model, tmp_path):
    code = (
        "import torch; from physgen.errors import PhysgenError; import physgen; from physgen.surrogates import load\n"
        f"m = load({str(shower_model)!r}); s = m.sample(torch.full((20000, 1), 5000.0), seed=0)\n"
        "for action in (lambda: physgen.write(s, " + repr(str(tmp_path / "x.root")) + ", format='root'), lambda: m.save(" + repr(str(tmp_path / "m")) + ")):\n"
        "    try: action()\n"
        "    except PhysgenError as exc: print(type(exc).__name__, '|', exc)\n"
    )
    r = _limited(code, 150_000)
    assert r.returncode == 0, r.stderr[-2000:]
    lines = r.stdout.strip().splitlines()
    assert lines[0].startswith("DataFileError |") and "x.root" in lines[0], lines
    assert lines[1].startswith("CheckpointError |") and "not written" in lines[1], lines
    assert not (tmp_path / "x.root").exists() and not (tmp_path / "m").exists()
    assert not list(tmp_path.glob(".*physgen-tmp-*"))
