"""A model from another package, named as ``module:Class`` or found through its entry point, runs
wherever a built-in family does: a suite next to the built-ins, ``physgen train``, ``load``. Its
checkpoint imports the class only from a module the user allowed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import physgen
from physgen.cli import main

# a tiny external family, written against the documented interface alone (docs/tutorials/your-model.md)
MODELS = '''
import dataclasses

import torch
from torch import nn

from physgen.options import option
from physgen.surrogates import Surrogate, SurrogateOptions


@dataclasses.dataclass(frozen=True)
class TinyOptions(SurrogateOptions):
    hidden: int = option(16, "hidden units", ge=1)


class Tiny(Surrogate):
    """A conditional Gaussian whose mean and width a small network predicts."""

    family = "tiny"
    Options = TinyOptions

    def build(self, dim, cond_dim, structure=None):
        self.net = nn.Sequential(nn.Linear(max(cond_dim, 1), self.options.hidden), nn.ReLU(), nn.Linear(self.options.hidden, 2 * dim))

    def _params(self, n, cond):
        c = cond if cond is not None else torch.zeros(n, 1)
        mu, log_sigma = self.net(c).chunk(2, dim=1)
        return mu, log_sigma.clamp(-5, 3)

    def forward(self, x, cond):
        mu, log_sigma = self._params(len(x), cond)
        return (0.5 * ((x - mu) / log_sigma.exp()) ** 2 + log_sigma).mean(), {}

    def sample_model(self, n, cond, generator):
        mu, log_sigma = self._params(n, cond)
        return mu + log_sigma.exp() * torch.randn(mu.shape, generator=generator)
'''


@pytest.fixture()
def package(tmp_path, monkeypatch) -> Path:
    """``extpkg`` importable from ``tmp_path/site``, with an installed distribution declaring the entry point."""
    site = tmp_path / "site"
    (site / "extpkg").mkdir(parents=True)
    (site / "extpkg" / "__init__.py").write_text("")
    (site / "extpkg" / "models.py").write_text(MODELS)
    dist = site / "extpkg-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: extpkg\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[physgen.surrogates]\ntiny = extpkg.models:Tiny\n")
    monkeypatch.syspath_prepend(str(site))
    return site


def _python(code: str, site: Path, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    """``code`` in a fresh interpreter that sees ``site`` (nothing registered, nothing imported yet)."""
    full = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(Path(__file__).resolve().parents[1])])}
    full.pop("PHYSGEN_ALLOW_MODULES", None)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=full | env, cwd=cwd, timeout=300)


def test_a_suite_runs_an_external_model_next_to_the_built_ins(package, tmp_path):
    physgen.write(physgen.load_default()[:400], tmp_path / "showers.h5")
    (tmp_path / "suite.toml").write_text(textwrap.dedent("""
        name = "external"
        seed = 0
        [metrics]
        classifier_epochs = 2
        [[datasets]]
        name = "pb"
        source = "showers.h5"
        split = [0.5, 0.5]
        [[surrogates]]
        family = "gaussian"
        [[surrogates]]
        family = "extpkg.models:Tiny"
        label = "tiny"
        config = { hidden = 8 }
        train = { epochs = 2 }
    """))
    assert main(["bench", str(tmp_path / "suite.toml"), "--out", str(tmp_path / "run"), "-q"]) == 0
    payload = json.loads((tmp_path / "run" / "results.json").read_text())
    rows = {r["label"]: r for r in payload["results"]}
    assert set(rows) == {"gaussian", "tiny"} and "error" not in rows["tiny"]
    auc = rows["tiny"]["evaluation"]["summary"]["classifier_auc"]
    assert auc["floor"] < 0.6 < auc["value"] <= 1.0  # two epochs of a Gaussian: told apart from Geant4, judged like the built-ins
    assert "vs_gaussian" in rows["tiny"] and (tmp_path / "run" / "report.html").exists()
    # a typo in an external model's option names the nearest valid one, before anything trains
    bad = (tmp_path / "suite.toml").read_text().replace("hidden = 8", "hiden = 8")
    (tmp_path / "bad.toml").write_text(bad)
    assert main(["bench", str(tmp_path / "bad.toml"), "--out", str(tmp_path / "bad"), "-q"]) == 2


def test_train_names_an_external_class_and_load_imports_it_only_when_allowed(package, tmp_path, zmumu_path):
    out = tmp_path / "run"
    assert main(["train", "extpkg.models:Tiny", str(zmumu_path), "--branches", "E1,px1,py1,pz1", "--epochs", "2", "--out", str(out), "-q"]) == 0
    saved = json.loads((out / "model" / "config.json").read_text())
    assert saved["class"] == "extpkg.models:Tiny"
    load = f"from physgen.surrogates import load; print(load({str(out / 'model')!r}).sample(n=3, seed=0).x.shape)"
    # extpkg is importable, and declares no entry point here: a checkpoint's word alone does not make physgen import it
    (package / "extpkg-0.1.dist-info" / "entry_points.txt").unlink()
    refused = _python(load, package, tmp_path)
    assert refused.returncode == 1 and "CheckpointError" in refused.stderr and "allow_module('extpkg.models')" in refused.stderr
    allowed = _python(load, package, tmp_path, PHYSGEN_ALLOW_MODULES="extpkg")
    assert allowed.returncode == 0 and "torch.Size([3, 4])" in allowed.stdout, allowed.stderr
    allowed = _python("import physgen.surrogates; physgen.surrogates.allow_module('extpkg'); " + load, package, tmp_path)
    assert allowed.returncode == 0 and "torch.Size([3, 4])" in allowed.stdout, allowed.stderr


def test_an_entry_point_makes_a_family_available_by_name(package, tmp_path, zmumu_path):
    train = _python(f"""
        import physgen
        from physgen.surrogates import available, create
        assert "tiny" in available(), available()
        model = create("tiny", hidden=4)
        model.fit(physgen.read({str(zmumu_path)!r}, branches=["E1", "px1"]), epochs=1, progress=False)
        model.save("m")
    """, package, tmp_path)
    assert train.returncode == 0, train.stderr
    # a fresh process: the installed entry point vouches for the module, no allow-list needed
    loaded = _python("from physgen.surrogates import load; print(type(load('m')).__module__)", package, tmp_path)
    assert loaded.returncode == 0 and loaded.stdout.strip() == "extpkg.models", loaded.stderr


def test_a_shower_model_around_an_external_family_keeps_its_name_and_the_allow_list(package, tmp_path):
    from physgen.calorimeter import ShowerModel

    model = ShowerModel("extpkg.models:Tiny", hidden=4)
    model.fit(physgen.load_default()[:200], epochs=1, progress=False)
    model.save(tmp_path / "m")
    assert json.loads((tmp_path / "m" / "config.json").read_text())["options"]["family"] == "extpkg.models:Tiny"
    (package / "extpkg-0.1.dist-info" / "entry_points.txt").unlink()
    load = "from physgen.surrogates import load; print(load('m').sample(__import__('torch').full((2, 1), 5e3), seed=0).x.shape)"
    refused = _python(load, package, tmp_path)
    assert refused.returncode == 1 and "allow_module('extpkg.models')" in refused.stderr
    allowed = _python(load, package, tmp_path, PHYSGEN_ALLOW_MODULES="extpkg")
    assert allowed.returncode == 0 and "torch.Size([2, 768])" in allowed.stdout, allowed.stderr
