"""Shared fixtures: the real data physgen is tested on."""

from __future__ import annotations

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
