"""Write docs/results.md and the README's results table from the committed results (nothing typed by hand).

    python benchmarks/results_page.py           # rewrite both
    python benchmarks/results_page.py --check   # exit 1 if either differs from what the results give

Every figure names the file it comes from; a test runs ``--check``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
README = ROOT / "README.md"
PAGE = ROOT / "docs" / "results.md"
START, END = "<!-- results:start (benchmarks/results_page.py writes this table) -->", "<!-- results:end -->"
FAMILIES = ["gaussian", "flow", "diffusion", "vae", "wgan"]
NAMES = {"gaussian": "Gaussian (baseline)", "flow": "flow", "diffusion": "diffusion", "vae": "VAE", "wgan": "WGAN",
         "vae_layered": "VAE, layered networks"}


def _load(name: str) -> dict[str, Any]:
    return json.loads((RESULTS / f"{name}.json").read_text())


def _by_label(payload: dict[str, Any], key: str = "results") -> dict[str, dict[str, Any]]:
    return {r["label"]: r for r in payload[key] if "error" not in r}


def _auc(r: dict[str, Any]) -> str:
    a = r["evaluation"]["summary"]["classifier_auc"]
    return f"{a['value']:.3f} ± {a['error']:.3f}" if a.get("error") else f"{a['value']:.3f}"


def _speedup(row: dict[str, Any], band: str = "1-10GeV") -> float:
    return row["geant4"]["batch_10000"][band]["speedup"]


def calorimeter_table() -> tuple[str, dict[str, Any]]:
    wsi, pbwo4 = _by_label(_load("calo_wsi_heldout")), _by_label(_load("calo_pbwo4"))
    speed_wsi = _by_label(_load("generation_speed_wsi"), "rows")
    speed_pb = _by_label(_load("generation_speed_pbwo4"), "rows")
    speed_pb["flow"] = _by_label(_load("generation_speed_pbwo4_flow_small"), "rows")["flow_h128"]  # the suite's 128-wide flow
    lines = [
        "| family | W/Si cls-low | W/Si cls-high | W/Si AUC | W/Si FPD | PbWO4 AUC | PbWO4 FPD | × Geant4 at 1–10 GeV (W/Si / PbWO4) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for f in FAMILIES:
        w, p = wsi[f], pbwo4[f]
        cls = [f"{w['calochallenge'][m]['auc']['value']:.3f} ± {w['calochallenge'][m]['auc']['error']:.3f}" for m in ("cls-low", "cls-high")]
        lines.append(
            f"| {NAMES[f]} | {cls[0]} | {cls[1]} | {_auc(w)} | {w['evaluation']['summary']['fpd']['value']:.3g} | {_auc(p)} "
            f"| {p['evaluation']['summary']['fpd']['value']:.3g} | {_speedup(speed_wsi[f]):.0f} / {_speedup(speed_pb[f]):.0f} |"
        )
    cc_floor = _load("calo_wsi_heldout")["calochallenge_floor"][wsi["gaussian"]["dataset"]]
    floors = {
        "wsi_low": cc_floor["cls-low"]["auc"]["value"], "wsi_high": cc_floor["cls-high"]["auc"]["value"],
        "wsi_auc": wsi["gaussian"]["evaluation"]["summary"]["classifier_auc"]["floor"], "wsi_fpd": wsi["gaussian"]["evaluation"]["summary"]["fpd"]["floor"],
        "pb_auc": pbwo4["gaussian"]["evaluation"]["summary"]["classifier_auc"]["floor"], "pb_fpd": pbwo4["gaussian"]["evaluation"]["summary"]["fpd"]["floor"],
        "n_wsi": _load("calo_wsi_heldout")["n_events"],
    }
    return "\n".join(lines), floors


def readme_block() -> str:
    table, fl = calorimeter_table()
    return "\n".join([
        START,
        table,
        "",
        f"Classifier AUC (0.5: indistinguishable from Geant4) and FPD on held-out Geant4 showers, next to their truth-vs-truth "
        f"floors: W/Si {fl['wsi_auc']:.3f} and {fl['wsi_fpd']:.3g} ({fl['n_wsi']:,} showers no run trained or chose on), PbWO4 "
        f"{fl['pb_auc']:.3f} and {fl['pb_fpd']:.3g}. cls-low and cls-high: the CaloChallenge evaluator's classifier protocol "
        f"on the same W/Si showers (floors {fl['wsi_low']:.3f} and {fl['wsi_high']:.3f}). Speed: one CPU core, batch 10,000, "
        "against Geant4's CPU time per event for the same energies. Sources: `benchmarks/results/` ([results](docs/results.md)).",
        END,
    ])


def evaluator_section() -> list[str]:
    """The CaloChallenge evaluator's protocol on the W/Si models (``calo_wsi_heldout.json``)."""
    ev = _load("calo_wsi_heldout")
    rows = [r for r in ev["results"] if "calochallenge" in r]
    floor = ev["calochallenge_floor"][rows[0]["dataset"]]
    p = rows[0]["calochallenge"]["protocol"]
    out = [
        "",
        "### Under the CaloChallenge evaluator's protocol",
        "",
        f"`calo_wsi_heldout.json`: the same models on the same {ev['n_events']:,} held-out showers with `heldout_eval.py --calochallenge 2`:",
        f"the evaluator's classifier ({p['n_hidden']} wide, to fit a CPU; the evaluator's default is 2048), split",
        f"{' / '.join(f'{x:g}' for x in p['split'])} and isotonic calibration, its FPD and KPD; physgen's quick classifier beside them.",
        "`vae_layered` is the VAE with layer-structured networks ([layered networks](notes/layered-networks.md)).",
        "Floors: two halves of the held-out showers.",
        "",
        "| family | cls-low AUC (floor) | cls-high AUC (floor) | cls-low JSD | FPD (evaluator) | KPD (evaluator) | quick classifier AUC (floor) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        c = r["calochallenge"]
        cls = [f"{c[m]['auc']['value']:.3f} ± {c[m]['auc']['error']:.3f} ({floor[m]['auc']['value']:.3f})" for m in ("cls-low", "cls-high")]
        q = r["evaluation"]["summary"]["classifier_auc"]
        out.append(f"| {NAMES[r['label']]} | {cls[0]} | {cls[1]} | {c['cls-low']['jsd']['value']:.4f} | {c['fpd']['value']:.3g} "
                   f"| {c['kpd']['value']:.2g} | {_auc(r)} ({q['floor']:.3f}) |")
    return out


def page() -> str:
    table, fl = calorimeter_table()
    dimuon, spins, quantum = _by_label(_load("dimuon")), _load("spins"), _load("quantum")
    dots, cplx, dens = _load("quantum_dots"), _load("quantum_complex"), _load("quantum_density")
    gpu = _by_label(_load("calo_wsi_gpu"))
    metrics = _load("metrics_speed")
    out = [
        "# Results",
        "",
        "Generated by `python benchmarks/results_page.py` from the committed files in `benchmarks/results/`;",
        "`benchmarks/run_all.sh` re-makes them. Floors are truth vs truth: two disjoint halves of the held-out",
        "data, what a perfect surrogate would reach. All timings are on one core of this project's 2-core CPU",
        "machine unless a device is named.",
        "",
        "## Calorimeter showers",
        "",
        "Each learned family with its suite's settings (the `wsi_electron` and `pbwo4_gamma` presets). W/Si: models of",
        f"`calo_wsi.json` judged on {fl['n_wsi']:,} showers the suite never used (`calo_wsi_heldout.json`); PbWO4: the test split",
        "of `calo_pbwo4.json`. Speed: `generation_speed_wsi.json`, `generation_speed_pbwo4.json` (the flow:",
        "`generation_speed_pbwo4_flow_small.json`).",
        "",
        table,
        "",
        f"Floors: W/Si AUC {fl['wsi_auc']:.3f}, FPD {fl['wsi_fpd']:.3g}; PbWO4 AUC {fl['pb_auc']:.3f}, FPD {fl['pb_fpd']:.3g}.",
        "",
        "Against the Gaussian baseline, feature by feature (separation power; worse beyond 2σ counts):",
        "",
        "| family | W/Si: better than the Gaussian on | W/Si: worse beyond 2σ | PbWO4: better on | PbWO4: worse beyond 2σ |",
        "|---|---|---|---|---|",
    ]
    wsi, pbwo4 = _by_label(_load("calo_wsi_heldout")), _by_label(_load("calo_pbwo4"))
    for f in FAMILIES[1:]:
        vw, vp = wsi[f]["vs_gaussian"], pbwo4[f]["vs_gaussian"]
        out.append(
            f"| {NAMES[f]} | {vw['features'] - len(vw['worse_than_gaussian'])} of {vw['features']} | {len(vw['significantly_worse_than_gaussian'])} "
            f"| {vp['features'] - len(vp['worse_than_gaussian'])} of {vp['features']} | {len(vp['significantly_worse_than_gaussian'])} |"
        )
    out += evaluator_section()
    out += [
        "",
        "## On a GPU",
        "",
        "`calo_wsi_gpu.json`: the W/Si suite with short budgets on an NVIDIA H200, judged on the suite's 1,800 test showers.",
        "",
        "| family | trained s | AUC | showers/s trained | fraction of the card's fp32 matmul rate | µs a shower (batch 10,000) |",
        "|---|---|---|---|---|---|",
    ]
    for f in FAMILIES[1:]:
        r = gpu[f]
        t = r["train"]
        out.append(
            f"| {NAMES[f]} | {t['seconds']:.0f} | {_auc(r)} | {t['samples_per_s']:.0f} | {100 * t['fraction_of_matmul_flops']:.2f} % "
            f"| {1e6 * r['generate']['timing']['batch_10000']['seconds_per_event']:.0f} |"
        )
    out += [
        "",
        "## Real CMS dimuon events",
        "",
        "`dimuon.json`: 2,304 events of `uproot-Zmumu.root` (scikit-hep-testdata), the two muons' E, px, py, pz.",
        "",
        "| family | AUC (floor) | mean separation power (floor) |",
        "|---|---|---|",
    ]
    for f in FAMILIES:
        r = dimuon[f]
        a = r["evaluation"]["summary"]["classifier_auc"]
        out.append(f"| {NAMES[f]} | {a['value']:.3f} ({a['floor']:.3f}) | {r['evaluation']['mean_separation_power']:.4f} "
                   f"({r['evaluation']['mean_separation_power_floor']:.4f}) |")
    q = spins["results"][0]["quantum"]
    out += [
        "",
        "## Quantum states",
        "",
        f"`spins.json`: tomography of the TFIM ground state (N = 10) from 10,000 σᶻ measurements: fidelity {q['fidelity']:.4f}, "
        f"KL {q['kl']:.4f} (the samples' own histogram: {q['histogram_fidelity']:.4f}). `quantum.json` against QuCumber and NetKet"
        " (their figures measured on the same machine):",
        "",
        "| task | physgen | reference |",
        "|---|---|---|",
    ]
    for r in quantum["results"]:
        ref = r.get("reference", {})
        if "fidelity" in r:
            qc = ref.get("qucumber", {})
            out.append(f"| {r['task']} | fidelity {r['fidelity']:.4f} in {r['seconds']:.1f} s | QuCumber {qc.get('fidelity')} in {qc.get('seconds')} s |")
        elif "relative_error" in r:
            nk = (ref or {}).get("netket", {})
            nk = nk[0] if isinstance(nk, list) else nk  # the run of the same length
            peer = "—" if not nk else f"NetKet {nk['relative_error']} in {nk['seconds']} s" if "relative_error" in nk else f"NetKet: {nk['seconds']} s"
            out.append(f"| {r['task']} | relative error {r['relative_error']:.2g} in {r['seconds']:.1f} s | {peer} |")
    out += [
        "",
        "`quantum_complex.json`: complex wave functions from measurements in Pauli bases (QuCumber's tutorial-2 protocol: all Z, then"
        " X and Y on one qubit at a time), physgen's `complex_rbm` with its defaults next to QuCumber 1.3.3 with its tutorial's settings"
        " on the same files (`qucumber_complex.json`; KL averaged over the bases):",
        "",
        "| data | physgen fidelity | KL | seconds | QuCumber fidelity | KL | epochs | seconds |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in cplx["results"]:
        fids = ", ".join(f"{run['fidelity']:.4f}" for run in r["runs"])
        kls = ", ".join(f"{run['basis_kl']:.4f}" for run in r["runs"])
        secs = ", ".join(f"{run['seconds']:.0f}" for run in r["runs"])
        qc = r["reference"].get("qucumber", {})
        data = f"{r['qubits']} qubits, {r['bases']} bases, {r['measurements']:,} measurements ({r['task']})"
        out.append(f"| {data} | {fids} | {kls} | {secs} | {qc.get('fidelity', float('nan')):.4f} | {qc.get('kl', float('nan')):.4f} | {qc.get('epochs')} | {qc.get('seconds', float('nan')):.0f} |")
    out += [
        "",
        "`quantum_density.json`: mixed states from measurements in all 3ⁿ Pauli bases (QuCumber's tutorial-3 protocol: the W state"
        " depolarised), physgen's `density_rbm` with its defaults (three training seeds) beside the estimates the same data give"
        " without a model (linear inversion; the full-rank maximum likelihood) and QuCumber 1.3.3 with its tutorial's settings on the"
        " same files (`qucumber_density.json`); Uhlmann fidelity squared, QuCumber's definition:",
        "",
        "| data | physgen fidelity | seconds | linear inversion | maximum likelihood | QuCumber fidelity | epochs | seconds |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in dens["results"]:
        fids = ", ".join(f"{run['fidelity']:.4f}" for run in r["runs"])
        secs = ", ".join(f"{run['seconds']:.0f}" for run in r["runs"])
        qc = r["reference"].get("qucumber", {})
        b = r["baselines"]
        data = f"{r['qubits']} qubits, {r['bases']} bases, {r['measurements']:,} measurements ({r['task']})"
        if qc.get("finished", True):
            peer = f"{qc.get('fidelity', float('nan')):.4f} | {qc.get('epochs', '—')} | {qc.get('seconds', float('nan')):.0f}"
        else:
            peer = f"— | {qc['epochs']} not finished | > {qc['timeout_seconds']:,}"
        out.append(f"| {data} | {fids} | {secs} | {b['linear_inversion']:.4f} | {b['maximum_likelihood']:.4f} | {peer} |")
    out += [
        "",
        "`quantum_dots.json`: two particles in a harmonic trap by variational Monte Carlo with a Gaussian–binary RBM"
        " (errors from automated blocking; exact: P·D·ω/2 without interaction, Taut's closed forms with it):",
        "",
        "| system | wave function | sampler | energy | exact | relative error | seconds |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in dots["results"]:
        system = r["task"].split(",")[0]
        wf = "RBM × Padé–Jastrow" if r["jastrow"] else "RBM"
        out.append(f"| {system} | {wf} | {r['sampler']} | {r['energy']:.5f} ± {r['error']:.1g} | {r['exact_energy']:g} | {r['relative_error']:.1e} | {r['seconds']:.1f} |")
    res = metrics["results"]
    out += [
        "",
        "## Metrics",
        "",
        f"`metrics_speed.json`: {metrics['n_per_sample']:,} × {metrics['n_per_sample']:,} Geant4 showers (768 voxels, 195 features): "
        f"FPD in {res['fpd_features']['seconds']:.0f} s, KPD in {res['kpd_features']['seconds']:.1f} s, "
        f"high-level features in {res['high_level_features']['seconds']:.0f} s"
        + f"; jetnet 0.2.5's FPD and KPD give the same values {metrics['speedup_vs_jetnet']['fpd']:.1f}× and "
        f"{metrics['speedup_vs_jetnet']['kpd']:.1f}× slower.",
        "",
    ]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="only compare; exit 1 where a file differs")
    args = ap.parse_args(argv)
    readme = README.read_text()
    if START not in readme or END not in readme:
        print(f"README.md lacks the markers {START!r} … {END!r}", file=sys.stderr)
        return 1
    new_readme = readme[: readme.index(START)] + readme_block() + readme[readme.index(END) + len(END):]
    new_page = page()
    if args.check:
        stale = [str(p.relative_to(ROOT)) for p, text in ((README, new_readme), (PAGE, new_page)) if p.read_text() != text]
        if stale:
            print(f"stale: {', '.join(stale)}; run python benchmarks/results_page.py", file=sys.stderr)
            return 1
        return 0
    README.write_text(new_readme)
    PAGE.write_text(new_page)
    return 0


if __name__ == "__main__":
    sys.exit(main())
