"""Shared fixtures: the real data physgen is tested on."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
PBWO4 = SHARED_DATA / "pbwo4_gamma_1-100GeV.h5"
WSI = SHARED_DATA / "wsi_electron_1-100GeV.h5"
REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference" / "calochallenge"


def _skhep(name: str) -> Path:
    skhep_testdata = pytest.importorskip("skhep_testdata")
    return Path(skhep_testdata.data_path(name))


@pytest.fixture(scope="session")
def zmumu_path() -> Path:
    """Real CMS dimuon events (2,304) from scikit-hep-testdata 0.3.0."""
    return _skhep("uproot-Zmumu.root")


@pytest.fixture(scope="session")
def hzz_path() -> Path:
    """Simulated H→ZZ events with jagged muon/electron/jet lists."""
    return _skhep("uproot-HZZ.root")


@pytest.fixture(scope="session")
def pbwo4_path() -> Path:
    if not PBWO4.exists():
        pytest.skip(f"{PBWO4} not present")
    return PBWO4


@pytest.fixture(scope="session")
def wsi_path() -> Path:
    if not WSI.exists():
        pytest.skip(f"{WSI} not present")
    return WSI


@pytest.fixture(scope="session")
def showers():
    """The embedded Geant4 PbWO4 sample (2,000 photon showers, 768 voxels)."""
    from physgen.io import load_default

    return load_default()


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the groups
def pytest_collection_modifyitems(config, items):
    """Under ``pytest -n``: a module's tests share a worker (its module fixtures are built once), the
    documentation pages, each minutes of work, spread over the workers."""
    for item in items:
        if not item.get_closest_marker("xdist_group"):
            path = item.path.relative_to(config.rootpath).as_posix()
            item.add_marker(pytest.mark.xdist_group(item.nodeid if path == "tests/test_docs.py" else path))


def pytest_configure(config):
    # each worker gets its share of the cores, and so do the commands it starts (OpenMP threads spin
    # while they wait: more threads than cores burn the time the other worker needs)
    workers = os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if workers:
        import torch

        share = max(1, (os.cpu_count() or 1) // int(workers))
        os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(share)
        torch.set_num_threads(share)
