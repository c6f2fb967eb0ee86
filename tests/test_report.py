"""The benchmark report renders in a real browser: screenshot non-blank, every image loads."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

import physgen
from physgen.bench import run_suite
from physgen.report import leaderboard_text, write_report

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--hide-scrollbars"]


@pytest.fixture(scope="module")
def bench_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bench")
    data = out / "small.h5"
    physgen.write(physgen.load_default()[:400], data)
    suite = {
        "name": "render-test",
        "datasets": [{"name": "small", "source": str(data), "split": [0.5, 0.5]}],
        "surrogates": [{"family": "gaussian"}, {"family": "flow", "config": {"n_layers": 2, "hidden": 16, "n_blocks": 1}, "train": {"epochs": 2}}],
        "metrics": {"classifier_epochs": 2},
    }
    payload = run_suite(suite, out, keep_samples=True)
    write_report(payload, out)
    return out


def test_report_files_and_leaderboard(bench_dir):
    import base64

    page = (bench_dir / "report.html").read_text()
    imgs = re.findall(r'<img src="([^"]+)"', page)
    assert len(imgs) >= 15
    for src in imgs:  # every image is embedded: the page shows them wherever it is moved
        assert src.startswith("data:image/png;base64,") and base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    payload = json.loads((bench_dir / "results.json").read_text())
    plots = [bench_dir / p for p in payload["plots"]["small"]]
    for p in plots:  # figures for slides also as vector graphics, linked from the page
        if not p.stem.startswith("all_"):
            assert p.with_suffix(".pdf").read_bytes()[:5] == b"%PDF-" and f'href="{p.with_suffix(".pdf").relative_to(bench_dir)}"' in page
    # every high-level feature has a page: the groups of the pages cover them all
    from physgen.metrics import high_level_features
    from physgen.report import feature_groups

    names = list(high_level_features(physgen.load_default()[:50]))
    groups = feature_groups(names)
    assert sorted(n for g in groups.values() for n in g) == sorted(names)
    assert {f"all_{p.rstrip('_') or 'other'}" for p in groups} <= {p.stem for p in plots}
    assert {"energy_ranges", "feature_E_ratio", "profiles", "voxel_spectrum", "mean_showers"} <= {p.stem for p in plots}
    md = (bench_dir / "report.md").read_text()
    assert "| dataset | surrogate | AUC (floor)" in md and "Floors are truth vs truth" in md


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (apt-get install chromium)")
def test_report_renders_in_headless_chromium(bench_dir, tmp_path):
    moved = tmp_path / "elsewhere" / "report.html"  # the page alone, away from its plots: every image still loads
    moved.parent.mkdir()
    shutil.copy(bench_dir / "report.html", moved)
    page = moved.resolve().as_uri()
    profile = ["--user-data-dir=" + str(tmp_path / "profile")]
    dom = subprocess.run([CHROMIUM, *FLAGS, *profile, "--virtual-time-budget=5000", "--dump-dom", page],
                         capture_output=True, text=True, timeout=120)
    title = re.search(r"<title>(.*?)</title>", dom.stdout)
    assert title is not None, dom.stderr[-2000:]
    ok, total = map(int, re.search(r"images ok: (\d+)/(\d+)", title.group(1)).groups())
    assert total >= 15 and ok == total
    shot = tmp_path / "shot.png"
    subprocess.run([CHROMIUM, *FLAGS, *profile, "--window-size=1280,2400", f"--screenshot={shot}", page],
                   capture_output=True, timeout=120, check=True)
    import matplotlib.image

    pixels = matplotlib.image.imread(shot)
    assert pixels.shape[0] >= 1000
    assert float(np.std(pixels[..., :3])) > 0.05  # not a blank page


def test_histogram_panels_show_fractions_errors_and_off_scale_ratios():
    from physgen.report import HistogramPanel

    edges = np.array([0.0, 1.0, 2.0, 3.0, 4.0])
    ref = np.array([0.5] * 50 + [1.5] * 30 + [2.5] * 20)  # 50 / 30 / 20 / 0
    gen = np.array([0.5] * 10 + [1.5] * 29 + [2.5] * 20 + [3.5] * 1 + [9.0] * 0)  # 10 / 29 / 20 / 1 of 60
    p = HistogramPanel(edges, {"ref": ref, "gen": gen}, "ref")
    np.testing.assert_allclose(p.fractions["ref"], [0.5, 0.3, 0.2, 0.0])
    np.testing.assert_allclose(p.errors["ref"], np.sqrt([50, 30, 20, 0]) / 100)
    np.testing.assert_allclose(p.fractions["gen"], np.array([10, 29, 20, 1]) / 60)
    r = np.array([10 / 60 / 0.5, 29 / 60 / 0.3, 20 / 60 / 0.2])
    np.testing.assert_allclose(p.ratios["gen"][:3], r)
    np.testing.assert_allclose(p.ratio_errors["gen"][:3], r * np.sqrt(1 / np.array([10, 29, 20]) + 1 / np.array([50, 30, 20])))
    assert p.ratios["gen"][3] == np.inf  # entries where the reference has none: an arrow up
    assert p.below["gen"].tolist() == [0] and p.above["gen"].tolist() == [1, 2, 3]  # 0.33 below 0.5; 1.61, 1.67 and ∞ above 1.5
    np.testing.assert_allclose(p.ref_band[:3], 1 / np.sqrt([50, 30, 20]))
    assert not p.log_y
    wide = HistogramPanel(edges, {"ref": np.array([0.5] * 999 + [3.5]), "gen": gen}, "ref")
    assert wide.log_y  # fractions over three decades: a log axis
    clipped = HistogramPanel(edges, {"ref": np.array([-5.0, 0.5, 9.0]), "gen": gen}, "ref")
    assert clipped.counts["ref"].tolist() == [2, 0, 0, 1]  # the end bins hold what lies beyond them


def test_leaderboard_text_lists_every_surrogate(bench_dir):
    import json

    payload = json.loads((bench_dir / "results.json").read_text())
    text = leaderboard_text(payload)
    assert "gaussian" in text and "flow" in text and "× Geant4 per core" in text


def test_baseline_comparison_separates_losses_beyond_the_bootstrap_errors():
    from physgen.bench import compare_to_baseline
    from physgen.report.pages import _significance

    def result(family, sp):
        feats = {f: {"separation_power": {"value": v, "error": e}} for f, (v, e) in sp.items()}
        return {"dataset": "d", "family": family, "label": family, "evaluation": {"features": feats, "summary": {}}}

    base = result("gaussian", {"a": (0.10, 0.01), "b": (0.010, 0.003), "c": (0.05, 0.004)})
    # a: better; b: worse by 0.001 (far inside σ = 0.0042); c: worse by 0.02 (> 2σ = 0.0113)
    mine = result("flow", {"a": (0.05, 0.01), "b": (0.011, 0.003), "c": (0.07, 0.004)})
    payload = {"results": [base, mine]}
    compare_to_baseline(payload)
    v = mine["vs_gaussian"]
    assert v["worse_than_gaussian"] == ["b", "c"] and v["significantly_worse_than_gaussian"] == ["c"]
    assert not v["beats_on_every_feature"] and not v["no_feature_significantly_worse"]
    assert "vs_gaussian" not in base
    assert _significance(v) == "; by more than 2σ on 1: c"
    mine["evaluation"]["features"]["c"]["separation_power"]["value"] = 0.055  # now within 2σ
    compare_to_baseline(payload)
    assert mine["vs_gaussian"]["no_feature_significantly_worse"] and _significance(mine["vs_gaussian"]) == "; none by more than 2σ"


def test_baseline_comparison_names_losses_where_both_sit_at_the_truth_floor():
    from physgen.bench import compare_to_baseline
    from physgen.report.pages import _significance

    def result(family, sp):
        feats = {f: {"separation_power": {"value": v, "error": 0.001, "floor": fl, "floor_error": 0.001}} for f, (v, fl) in sp.items()}
        return {"dataset": "d", "family": family, "label": family, "evaluation": {"features": feats, "summary": {}}}

    # 2σ combined with the floor: 2·√2·0.001 = 0.00283
    base = result("gaussian", {"a": (0.0060, 0.0060), "b": (0.0080, 0.0060), "c": (0.020, 0.005), "e": (0.05, 0.005)})
    # a: both at the floor (0.0065 - 0.0060 < 0.00283); b: the Gaussian at the floor, the surrogate 0.004 above it;
    # c: neither at the floor; e: better
    mine = result("vae", {"a": (0.0065, 0.0060), "b": (0.0100, 0.0060), "c": (0.021, 0.005), "e": (0.01, 0.005)})
    payload = {"results": [base, mine]}
    compare_to_baseline(payload)
    v = mine["vs_gaussian"]
    assert v["worse_than_gaussian"] == ["a", "b", "c"] and v["both_at_floor"] == ["a"]
    assert not v["beats_or_ties_at_floor_on_every_feature"]
    assert _significance(v) == "; none by more than 2σ; both within 2σ of the truth-vs-truth floor on 1 (not at the floor: b, c)"
    for f in ("b", "c"):
        mine["evaluation"]["features"][f]["separation_power"]["value"] = 0.001  # now better
    compare_to_baseline(payload)
    assert mine["vs_gaussian"]["beats_or_ties_at_floor_on_every_feature"] and not mine["vs_gaussian"]["beats_on_every_feature"]
    assert _significance(mine["vs_gaussian"]).endswith("floor on 1 (all of them)")
    # older result files have no floors: nothing counts as at the floor
    for f in mine["evaluation"]["features"].values():
        del f["separation_power"]["floor"]
    compare_to_baseline(payload)
    assert mine["vs_gaussian"]["both_at_floor"] == [] and not mine["vs_gaussian"]["beats_or_ties_at_floor_on_every_feature"]


def test_merging_a_partial_rerun_compares_against_the_committed_gaussian():
    mod = _bench_script("merge_results", None)

    def result(family, sp, auc=0.9):
        feats = {f: {"separation_power": {"value": v, "error": 0.001}} for f, v in sp.items()}
        summary = {"classifier_auc": {"value": auc, "error": 0.01}}
        return {"dataset": "d", "family": family, "label": family, "evaluation": {"features": feats, "summary": summary}}

    meta = {"started": "t", "seconds": 1.0, "machine": {}, "matmul_gflops": 1.0}
    old = {"suite": "s", **meta, "results": [result("gaussian", {"a": 0.10, "b": 0.10}), result("flow", {"a": 0.05, "b": 0.2}),
                                            result("wgan", {"a": 0.5, "b": 0.5})]}
    # the re-run's own Gaussian is far better on a; the comparison must still use the committed one
    new = {"suite": "s", **{**meta, "started": "t2"}, "results": [result("gaussian", {"a": 0.01, "b": 0.10}, auc=0.6),
                                                                   result("wgan", {"a": 0.05, "b": 0.05})]}
    payload, warnings = mod.merge(old, new, ["wgan"])
    labels = [r["label"] for r in payload["results"]]
    assert labels == ["gaussian", "flow", "wgan"]  # committed order kept, the Gaussian not replaced
    wgan = payload["results"][2]
    assert wgan["evaluation"]["features"]["a"]["separation_power"]["value"] == 0.05  # the re-run's entry
    assert wgan["vs_gaussian"]["worse_than_gaussian"] == []  # 0.05 < 0.10 (the re-run's Gaussian had 0.01)
    assert payload["results"][1]["vs_gaussian"]["significantly_worse_than_gaussian"] == ["b"]
    assert payload["merged"][-1]["labels"] == ["wgan"] and payload["merged"][-1]["started"] == "t2"
    assert len(warnings) == 1 and "0.600" in warnings[0]  # the two Gaussians disagree by > 3σ
    assert "merged" not in old and "vs_gaussian" not in old["results"][2]  # the inputs are left alone
    with pytest.raises(SystemExit, match="no entry labelled"):
        mod.merge(old, new, ["vae"])
    with pytest.raises(SystemExit, match="suite mismatch"):
        mod.merge(old, {**new, "suite": "other"}, ["wgan"])
    # another suite file's run on the same data: its entry replaces the committed one under the committed label
    data = {"d": {"n_events": 6000, "voxel_occupancy": 0.1}}
    variant = {**new, "suite": "other", "data": data, "results": [result("wgan", {"a": 0.04, "b": 0.04}) | {"label": "wgan_small"}]}
    payload, _ = mod.merge({**old, "data": data}, variant, ["wgan_small=wgan"])
    assert [r["label"] for r in payload["results"]] == ["gaussian", "flow", "wgan"]
    assert payload["results"][2]["evaluation"]["features"]["a"]["separation_power"]["value"] == 0.04
    assert payload["merged"][-1]["labels"] == ["wgan"] and payload["merged"][-1]["suite"] == "other"
    with pytest.raises(SystemExit, match="differs between them"):
        mod.merge({**old, "data": {"d": {"n_events": 5000, "voxel_occupancy": 0.1}}}, variant, ["wgan_small=wgan"])


def _bench_script(name, tmp_path, monkeypatch=None):
    """A ``benchmarks/`` script loaded as a module; with ``monkeypatch`` its results go to ``tmp_path``."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    if monkeypatch is not None:

        def write(file, text):
            (tmp_path / file).write_text(text)
            return tmp_path / file

        writer = mod
        monkeypatch.setattr(writer, "write_result", lambda out, payload: write(f"{out}.json", json.dumps(payload, default=str)))
        monkeypatch.setattr(writer, "write_markdown", lambda out, text: write(f"{out}.md", text))
    return mod


def _tiny_run(tmp_path, families):
    """A two-epoch suite on the embedded showers' first 1,200 and its saved models: (suite file, run folder, models, training split)."""
    from physgen.calorimeter import ShowerModel

    suite = tmp_path / "tiny.toml"
    suite.write_text(
        'name = "tiny"\nseed = 0\n[metrics]\nclassifier_epochs = 2\n[[datasets]]\nname = "pb"\nsource = "embedded"\nmax_events = 1200\n'
        + "".join(f'[[surrogates]]\nfamily = "{family}"\n' for family in families)
    )
    train = physgen.load_default()[:1200].split((0.7, 0.3), seed=0)[0]
    models = {}
    for family, config in families.items():
        models[family] = ShowerModel(family, **config)
        models[family].fit(train, epochs=1, progress=False)
        models[family].save(tmp_path / "run" / "models" / f"pb__{family}")
    return suite, tmp_path / "run", models, train


def test_heldout_evaluation_judges_saved_models_on_events_the_suite_never_used(tmp_path, monkeypatch):
    mod = _bench_script("heldout_eval", tmp_path, monkeypatch)
    suite, run, _, _ = _tiny_run(tmp_path, {"gaussian": {}, "vae": {"latent": 4, "hidden": 32, "layers": 1}})
    with pytest.raises(SystemExit, match="overlap the suite's first 1200"):
        mod.main([str(suite), str(run), "--events", "1000:2000", "--out", "h"])
    with pytest.raises(SystemExit, match="START:STOP"):
        mod.main([str(suite), str(run), "--events", "1200", "--out", "h"])
    assert mod.main([str(suite), str(run), "--events", "1200:2000", "--out", "h"]) == 0
    payload = json.loads((tmp_path / "h.json").read_text())
    assert [r["label"] for r in payload["results"]] == ["gaussian", "vae"] and payload["n_events"] == 800
    ev = payload["results"][0]["evaluation"]
    assert ev["n_reference"] == ev["n_test"] == 400  # two halves of the 800 held-out showers
    assert "vs_gaussian" in payload["results"][1] and "| pb | vae |" in (tmp_path / "h.md").read_text()


def test_step_ops_splits_a_step_into_the_family_and_its_first_stage_steps(showers):
    """The first stage's share grows by its step count; the family's own networks do not."""
    mod = _bench_script("step_ops", None)
    data = showers[:400]
    config = {"latent": 4, "hidden": 32, "layers": 1}
    one = mod.step_profile({"family": "vae", "config": {**config, "energy_steps": 1}}, data, 64, steps=2)
    three = mod.step_profile({"family": "vae", "config": {**config, "energy_steps": 3}}, data, 64, steps=2)
    assert one["energy_steps"] == 1 and three["energy_steps"] == 3
    assert one["ops_family"] == three["ops_family"] > 0
    # the same first-stage step, three times: its operations, not the family's, triple
    assert three["ops_per_first_stage_step"] == pytest.approx(one["ops_first_stage"], rel=0.02)
    assert three["ops_step"] - one["ops_step"] == pytest.approx(2 * one["ops_first_stage"], rel=0.02)
    assert one["cpu_ms_per_step"] > 0


def test_step_ops_names_the_nearest_mode_for_a_typo():
    import sys

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "step_ops.py"
    r = subprocess.run([sys.executable, str(script), "suite.toml", "--modes", "eager,compiled", "--out", "x"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "unknown mode 'compiled'; did you mean 'compile'?" in r.stderr




def test_heldout_evaluation_adds_the_calochallenge_protocol_with_its_floor(tmp_path, monkeypatch):
    from physgen.calorimeter import ShowerModel
    from tests.test_calochallenge import _showers

    mod = _bench_script("heldout_eval", tmp_path, monkeypatch)
    physgen.write(_showers("1-photons", 600, seed=4), tmp_path / "photons.h5")
    suite = tmp_path / "cc.toml"
    suite.write_text('name = "cc"\nseed = 0\n[metrics]\nclassifier_epochs = 2\n[[datasets]]\nname = "ph"\nsource = "photons.h5"\n'
                     'max_events = 200\n[[surrogates]]\nfamily = "gaussian"\n')
    model = ShowerModel("gaussian")
    model.fit(physgen.read(tmp_path / "photons.h5", stop=200), progress=False)
    model.save(tmp_path / "run" / "models" / "ph__gaussian")
    args = [str(suite), str(tmp_path / "run"), "--events", "200:600", "--out", "cc"]
    with pytest.raises(SystemExit, match="6480 voxels"):  # the wrong data set named: its voxel count, before any training
        mod.main([*args, "--calochallenge", "2"])
    assert mod.main([*args, "--calochallenge", "1-photons", "--cls-epochs", "2", "--cls-hidden", "32"]) == 0
    payload = json.loads((tmp_path / "cc.json").read_text())
    floor, row = payload["calochallenge_floor"]["ph"], payload["results"][0]["calochallenge"]
    assert floor["n_compared"] == 200 and row["n_compared"] == 400  # the floor: two halves of the 400 held-out showers
    assert row["cls-low"]["auc"]["n_evaluated"] == 160 and "fpd" in row and "fpd" not in floor
    assert 0.0 <= row["cls-high"]["auc"]["value"] <= 1.0 and row["protocol"]["n_hidden"] == 32
    assert "32 wide" in (md := (tmp_path / "cc.md").read_text()) and "| ph | gaussian |" in md.split("cls-low AUC")[1]
