"""Fixtures of the hostile-input corpus: small trained models and a CLI runner that checks the contract.

The contract for every bad input: a typed physgen error (or, on the command line, exit status 2
with one line ``physgen: error: ...`` on stderr), a message naming what was wrong, and nothing
left at the output path.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import pytest

import physgen
from physgen.calorimeter import ShowerModel
from physgen.cli import main
from physgen.surrogates import create


@pytest.fixture(scope="package")
def shower_model(tmp_path_factory) -> Path:
    """A small two-stage VAE shower model trained for one epoch on embedded showers, saved."""
    d = tmp_path_factory.mktemp("hostile_models")
    model = ShowerModel("vae", latent=4, hidden=16, layers=1)
    model.fit(physgen.load_default()[:300], epochs=1, progress=False)
    model.save(d / "vae")
    return d / "vae"


@pytest.fixture(scope="package")
def event_model(tmp_path_factory, zmumu_path) -> Path:
    """The Gaussian on CMS dimuon events, saved (unconditional)."""
    d = tmp_path_factory.mktemp("hostile_events")
    model = create("gaussian")
    model.fit(physgen.read(zmumu_path, branches=["E1", "px1"], units="GeV"))
    model.save(d / "gauss")
    return d / "gauss"


@pytest.fixture(scope="package")
def showers_file(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("hostile_data")
    physgen.write(physgen.load_default()[:400], d / "showers.h5")
    return d / "showers.h5"


def run_cli(args: Sequence[str], capsys: pytest.CaptureFixture, message: str, absent: Sequence[Path] = ()) -> None:
    """``physgen ARGS`` must exit 2 with one line matching ``message`` on stderr, and leave nothing at ``absent``."""
    try:
        rc = main([str(a) for a in args])
    except SystemExit as exc:  # argparse's own errors
        rc = exc.code
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith(("epoch", " "))]
    assert rc == 2, (rc, err)
    assert len(lines) == 1 and lines[0].startswith("physgen: error:"), err
    assert re.search(message, lines[0]), (message, lines[0])
    for path in absent:
        assert not Path(path).exists(), f"{path} was left behind"
        assert not list(Path(path).parent.glob(f".{Path(path).name}.physgen-tmp-*")), "a temporary file was left behind"
