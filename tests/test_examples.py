"""The examples run, and what they write is readable by the original tools."""

import subprocess
import sys
from pathlib import Path

import h5py

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_gaussian_baseline_example(tmp_path):
    r = subprocess.run(
        [sys.executable, str(EXAMPLES / "gaussian_baseline.py"), str(tmp_path)], capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0, r.stderr
    assert "faster" in r.stdout
    with h5py.File(tmp_path / "gaussian_samples.h5") as h5:
        assert h5["showers"].shape == (400, 768) and h5["incident_energies"].shape == (400, 1)
    assert (tmp_path / "model" / "weights.safetensors").exists()
