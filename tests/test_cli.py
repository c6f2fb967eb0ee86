"""The physgen command line: every subcommand on small data, kill-and-resume, bad input."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import pytest
import torch
import uproot
from safetensors.torch import load_file

import physgen
from physgen.cli import main
from physgen.errors import FileFormatError

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def _physgen(*args: str, check: bool = True, timeout: int = 300) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, "-m", "physgen.cli", *args], capture_output=True, text=True, env=ENV, timeout=timeout)
    if check and r.returncode != 0:
        raise AssertionError(f"physgen {' '.join(args)} failed:\n{r.stderr[-3000:]}")
    return r


@pytest.fixture(scope="module")
def small_h5(tmp_path_factory, ) -> Path:
    path = tmp_path_factory.mktemp("data") / "small.h5"
    physgen.write(physgen.load_default()[:400], path)
    return path


def test_info_on_embedded_sample(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "calochallenge" in out and "2000" in out and "24 layers" in out and "Geant4 CPU" in out


def test_info_json_on_root(capsys, hzz_path):
    assert main(["info", str(hzz_path), "--branches", "Muon_Px,Muon_Py", "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["format"] == "root" and s["event_shape"] == [4, 2] and s["list_length"]["max"] == 4


def test_train_sample_evaluate_calorimeter(tmp_path, small_h5):
    run = tmp_path / "run"
    r = _physgen("train", "gaussian", str(small_h5), "--out", str(run))
    assert "trained gaussian on 400 events" in r.stdout
    out = tmp_path / "gen.h5"
    _physgen("sample", str(run), "--energies", "5000,50000", "--n", "6", "--out", str(out))
    with h5py.File(out) as h5:  # the CaloChallenge layout, as the official evaluator reads it
        assert h5["showers"].shape == (6, 768)
        assert h5["incident_energies"][:, 0].tolist() == [5000.0, 50000.0] * 3
    bf16 = tmp_path / "gen_bf16.h5"
    _physgen("sample", str(run), "--energies", "5000,50000", "--n", "6", "--precision", "bf16", "--out", str(bf16))
    fp32, low = physgen.read(out).x, physgen.read(bf16).x
    assert low.shape == fp32.shape and torch.allclose(low.sum(1), fp32.sum(1), rtol=0.05)
    out2 = tmp_path / "gen_like.h5"
    _physgen("sample", str(run / "model"), "--cond", str(small_h5), "--out", str(out2))
    assert physgen.read(out2).x.shape == (400, 768)
    ev = tmp_path / "eval"
    r = _physgen("evaluate", str(small_h5), str(out2), "--out", str(ev), "--no-classifier")
    report = json.loads((ev / "metrics.json").read_text())
    assert report["summary"]["fpd"]["floor"] is not None and "mean separation power" in r.stdout
    assert (ev / "plots" / "feature_E_ratio.png").stat().st_size > 1000
    assert (ev / "plots" / "mean_showers.png").exists() and (ev / "plots" / "profiles.pdf").read_bytes()[:5] == b"%PDF-"
    page = (ev / "report.html").read_text()  # one page with the summary and every plot, images embedded
    assert "truth-vs-truth floor" in page and page.count('<img src="data:image/png;base64,') == len(list((ev / "plots").glob("*.png")))


def test_train_and_sample_events_to_root(tmp_path, zmumu_path):
    run = tmp_path / "z"
    _physgen("train", "gaussian", str(zmumu_path), "--branches", "E1,px1,py1,pz1,E2,px2,py2,pz2", "--units", "GeV", "--out", str(run))
    out = tmp_path / "gen.root"
    r = _physgen("sample", str(run), "--n", "500", "--out", str(out))
    assert "root format" in r.stdout
    t = uproot.open(out)["events"]
    assert t.num_entries == 500 and set(t.keys()) == {"E1", "px1", "py1", "pz1", "E2", "px2", "py2", "pz2"}


def _latest(run: Path) -> str:
    p = run / "run" / "LATEST"
    return p.read_text().strip() if p.exists() else ""


def test_train_kill_and_resume_ends_like_an_uninterrupted_run(tmp_path, small_h5):
    args = ["flow", str(small_h5), "--epochs", "5", "--batch-size", "100", "--config", "n_layers=2", "hidden=32", "n_blocks=1"]
    _physgen("train", *args, "--out", str(tmp_path / "straight"))
    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "physgen.cli", "train", *args, "--out", str(killed)], env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and _latest(killed) < "epoch-000002":
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (killed / "model").exists() and _latest(killed) >= "epoch-000002"
    _physgen("train", *args, "--out", str(killed), "--resume")
    a, b = (load_file(str(d / "model" / "weights.safetensors")) for d in (tmp_path / "straight", killed))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert len(json.loads((killed / "history.json").read_text())) == 5


def test_bench_writes_results_report_and_leaderboard(tmp_path, small_h5):
    suite = tmp_path / "tiny.toml"
    suite.write_text(f"""
name = "tiny"
[metrics]
classifier_epochs = 3
[[datasets]]
name = "small"
source = "{small_h5}"
split = [0.5, 0.5]
[[surrogates]]
family = "gaussian"
[[surrogates]]
family = "flow"
config = {{ n_layers = 2, hidden = 32, n_blocks = 1 }}
train = {{ epochs = 2, batch_size = 100 }}
""")
    out = tmp_path / "bench"
    r = _physgen("bench", str(suite), "--out", str(out))
    assert "AUC (floor)" in r.stdout and "gaussian" in r.stdout and "flow" in r.stdout
    payload = json.loads((out / "results.json").read_text())
    assert payload["machine"]["torch"] == torch.__version__ and len(payload["results"]) == 2
    flow = payload["results"][1]
    assert flow["geant4"]["batch_100"]["all"]["speedup"] > 1
    assert "vs_gaussian" in flow
    html = (out / "report.html").read_text()
    assert html.count("<img") == len(payload["plots"]["small"]) >= 10
    assert "| surrogate |" in (out / "report.md").read_text().replace("| dataset | surrogate |", "| surrogate |")


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "flw", "x.h5", "--out", "o"], "unknown surrogate 'flw'; valid: complex_rbm, density_rbm, diffusion, flow, gaussian"),
        (["info", "missing.h5"], "no such file"),
        (["bench", "nosuch"], "unknown suite 'nosuch'; valid: quick"),
        (["sample", "nowhere", "--n", "3", "--out", "x.h5"], "not a directory"),
    ],
)
def test_bad_arguments_are_one_clear_line(tmp_path, args, message):
    r = subprocess.run([sys.executable, "-m", "physgen.cli", *args], capture_output=True, text=True, env=ENV, cwd=tmp_path)
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and message in r.stderr and "Traceback" not in r.stderr


def test_bad_config_option_is_one_line(tmp_path, small_h5):
    r = _physgen("train", "flow", str(small_h5), "--out", str(tmp_path / "o"), "--config", "n_layers", check=False)
    assert r.returncode == 2 and "KEY=VALUE" in r.stderr and r.stderr.count("\n") == 1


def test_bad_file_is_one_line_not_a_traceback(tmp_path):
    bad = tmp_path / "x.h5"
    bad.write_text("garbage")
    r = subprocess.run([sys.executable, "-m", "physgen.cli", "info", str(bad)], capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and "neither HDF5 nor ROOT" in r.stderr and "Traceback" not in r.stderr


def test_debug_shows_the_exception(tmp_path):
    bad = tmp_path / "x.h5"
    bad.write_text("garbage")
    with pytest.raises(FileFormatError):
        main(["--debug", "info", str(bad)])


@pytest.mark.parametrize(("flags", "shown"), [([], {"info"}), (["-q"], set()), (["--verbose"], {"info", "debug"})])
def test_library_messages_reach_stderr_at_the_level_asked(tmp_path, small_h5, capsys, flags, shown):
    """The library logs (``physgen.*``); the command line shows INFO by default, only warnings with -q, DEBUG with -v."""
    rc = main(["train", "vae", str(small_h5), "--out", str(tmp_path / "run"), "--epochs", "5", "--time-budget-s", "0.001",
               "--config", "latent=2", "hidden=8", "layers=1", *flags])
    assert rc == 0
    captured = capsys.readouterr()
    info = [ln for ln in captured.err.splitlines() if ln.startswith("physgen: shower(vae): stopped after epoch 1 of 5")]
    debug = [ln for ln in captured.err.splitlines() if ln.startswith("physgen: debug: shower(vae): epoch 1: loss")]
    assert bool(info) == ("info" in shown) and bool(debug) == ("debug" in shown), captured.err
    assert "trained vae on 400 events" in captured.out  # the command's result is output, whatever the flags
    assert not logging.getLogger("physgen").handlers[1:], "the command line leaves no handler behind"


def test_train_a_complex_rbm_from_qucumber_style_files(tmp_path):
    import numpy as np

    from physgen.quantum import local_bases, sample_pauli_measurements

    psi = np.array([0.2861 + 0.0539j, 0.3687 - 0.3023j, -0.1672 - 0.3529j, -0.5659 - 0.4639j])
    physgen.write(sample_pauli_measurements(psi / np.linalg.norm(psi), local_bases(2), 100, seed=0), tmp_path / "train.txt")
    out = _physgen("info", str(tmp_path / "train.txt"), "--bases", str(tmp_path / "train_bases.txt"))
    assert "basis_0" in out.stdout
    _physgen("train", "complex_rbm", str(tmp_path / "train.txt"), "--bases", str(tmp_path / "train_bases.txt"), "--out", str(tmp_path / "cx"), "--epochs", "3")
    model = physgen.surrogates.load(tmp_path / "cx" / "model")
    assert model.is_conditional and model.dims["cond_dim"] == 2
    out = _physgen("train", "complex_rbm", str(tmp_path / "train.txt"), "--bases", str(tmp_path / "missing.txt"), "--out", str(tmp_path / "cx2"), check=False)
    assert out.returncode != 0 and "missing.txt" in out.stderr and "bases file does not exist" in out.stderr


def test_train_streams_a_file_for_a_budget_of_steps(tmp_path, small_h5, capsys):
    out = tmp_path / "streamed"
    args = ["train", "vae", str(small_h5), "--stream", "--steps", "7", "--batch-size", "64", "--config", "latent=4", "hidden=16", "layers=1"]
    assert main([*args, "--out", str(out), "-q"]) == 0
    history = json.loads((out / "history.json").read_text())
    assert history[-1]["stopped_by"] == "steps" and len(history) == 2  # 360 training showers: 6 steps, then 1
    assert "on 400 events" in capsys.readouterr().out
    model = physgen.surrogates.load(out / "model")
    assert model.sample(physgen.load_default()[:3].cond, seed=0).x.shape == (3, 768)
