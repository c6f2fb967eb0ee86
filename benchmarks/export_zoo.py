"""Ship a suite's trained model in ``physgen/zoo/NAME`` and measure its model card on held-out showers.

The exported weights are the trained ones; with ``--bf16`` the large matrices (≥ 65,536 values) are stored
in bfloat16 (half the size) and every other tensor in float32, and the card then holds the held-out
metrics of both the float32 original and the export, so the change can be seen to be within errors.
The card: training data and its provenance, the energy range, held-out FPD, KPD and classifier AUC
next to their truth-vs-truth floors, µs per shower and the speed-up against Geant4 at 1–10 GeV on one
thread of the CPU named, a self-check the tests reproduce (mean and spread of E_tot/E_inc at two
energies), the weights' size and the licence::

    PHYSGEN_DATA=../shared/data python benchmarks/export_zoo.py runs/calo_pbwo4_vae/models/pbwo4_20k__vae \\
        --name pbwo4-photon-vae --suite benchmarks/suites/calo_pbwo4.toml --events test
    PHYSGEN_DATA=../shared/data python benchmarks/export_zoo.py runs/calo_wsi/models/wsi_6k__vae \\
        --name wsi-electron-vae --suite benchmarks/suites/calo_wsi.toml --events 8000:18000 --bf16
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import torch

from physgen.bench import load_dataset, load_suite
from physgen.metrics import evaluate
from physgen.surrogates import load
from physgen.zoo import ZOO

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine  # noqa: E402

#: tensors with at least this many values are stored in bf16 under --bf16
BF16_MIN_VALUES = 65_536
#: the self-check: showers per energy and the energies (GeV), drawn with seed 0
CHECK_N, CHECK_SEED = 2_000, 0


def export(source: Path, target: Path, bf16: bool) -> dict[str, Any]:
    """Copy the checkpoint's config and write its weights (the large ones in bf16 if asked), atomically."""
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(source / "weights.safetensors"))
    if bf16:
        tensors = {k: v.to(torch.bfloat16) if v.dtype == torch.float32 and v.numel() >= BF16_MIN_VALUES else v for k, v in tensors.items()}
    tmp = target.with_name(f".{target.name}.export-tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    shutil.copy(source / "config.json", tmp / "config.json")
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp / "weights.safetensors"))
    if target.exists():
        shutil.rmtree(target)
    os.replace(tmp, target)
    n_bf16 = sum(v.numel() for v in tensors.values() if v.dtype == torch.bfloat16)
    return {"dtype": "bf16 (matrices) + fp32" if bf16 else "fp32", "values": sum(v.numel() for v in tensors.values()),
            "values_bf16": n_bf16}


def held_out(suite_path: str, events: str) -> Any:
    """The suite, its data set, the file's size, the training split and the held-out showers."""
    from physgen.bench import resolve_source
    from physgen.io import read

    suite = load_suite(suite_path)
    ds = suite["datasets"][0]
    base = Path(suite["_path"]).parent if "_path" in suite else None
    data = load_dataset(ds, base)
    train, test = data.split(tuple(ds.get("split", [0.7, 0.3])), seed=int(suite.get("seed", 0)))
    whole = read(resolve_source(ds["source"], base))
    if events == "test":
        return suite, ds, len(whole), train, test
    start, stop = (int(v) for v in events.split(":"))
    if start < len(data):
        raise SystemExit(f"--events {events} overlaps the suite's {len(data)} showers")
    return suite, ds, len(whole), train, whole[start:stop]


def update_config(target: Path, train: Any) -> None:
    """Bring a model saved by an earlier physgen up to date: the training range (from the suite's training split)
    and ``sample_precision="auto"`` where the presets then set bf16 (emulated, 3x slower, on AVX2-only CPUs)."""
    path = target / "config.json"
    config = json.loads(path.read_text())
    if config.get("cond_range") is None:
        config["cond_range"] = [[float(a), float(b)] for a, b in zip(train.cond.amin(0).tolist(), train.cond.amax(0).tolist(), strict=True)]
    for options in (config.get("resolved", {}).get("family_options"), config.get("resolved", {}).get("shower"),
                    config.get("inner", {}).get("options"), config.get("options")):
        if isinstance(options, dict) and options.get("sample_precision") == "bf16":
            options["sample_precision"] = "auto"
    path.write_text(json.dumps(config))


def metrics(model: Any, test: Any) -> dict[str, Any]:
    report = evaluate(test, model.sample(test.cond, seed=1), seed=0)
    out = {}
    for key in ("fpd", "kpd", "classifier_auc"):
        e = report["summary"][key]
        out[key] = {k: e.get(k) for k in ("value", "error", "floor", "floor_error")}
    return out


def speed(model: Any, test: Any) -> dict[str, Any]:
    """One thread, batch 10,000 at the held-out showers' 1–10 GeV conditions, against Geant4's CPU time for them."""
    energy = test.cond[:, 0] / 1000
    sel = (energy >= 1) & (energy < 10)
    cond = test.cond[sel]
    cond = cond[torch.arange(10_000) % len(cond)]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model.sample(cond[:500], seed=0)
        t0 = time.perf_counter()
        model.sample(cond, seed=0, batch_size=10_000)
        per = (time.perf_counter() - t0) / len(cond)
    finally:
        torch.set_num_threads(threads)
    geant4 = float(test.aux["geant4_cpu_s"][sel.numpy()].mean())
    return {"energies": "1-10 GeV", "batch_size": 10_000, "threads": 1, "us_per_shower": round(per * 1e6, 1),
            "geant4_us_per_shower": round(geant4 * 1e6), "speedup_vs_geant4": round(geant4 / per, 1),
            "geant4_timed_on": "one core of the 2-core machine that simulated the data (data README)", **_cpu()}


def _cpu() -> dict[str, Any]:
    m = machine()
    return {"cpu": m.get("cpu"), "capability": m.get("capability"), "native_bf16": m.get("native_bf16"), "precision": "auto"}


def self_check(model: Any, energies_gev: list[float]) -> list[dict[str, Any]]:
    """Mean and spread of E_tot/E_inc for CHECK_N showers at each energy (seed CHECK_SEED): the tests redraw them."""
    rows = []
    for e in energies_gev:
        x = model.sample(torch.full((CHECK_N, 1), e * 1000.0), seed=CHECK_SEED).x
        ratio = x.sum(1) / (e * 1000.0)
        rows.append({"energy_gev": e, "n": CHECK_N, "seed": CHECK_SEED, "etot_over_einc_mean": round(float(ratio.mean()), 5),
                     "etot_over_einc_std": round(float(ratio.std()), 5)})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", help="the trained model's folder (RUN/models/DATASET__LABEL)")
    ap.add_argument("--name", required=True, help="the shipped name, e.g. wsi-electron-vae")
    ap.add_argument("--suite", required=True, help="the suite the model was trained with (its data set and split)")
    ap.add_argument("--events", default="test", help="held-out showers: 'test' (the suite's split) or START:STOP of the file")
    ap.add_argument("--bf16", action="store_true", help="store the large matrices in bf16")
    ap.add_argument("--description", default="", help="one line for `physgen models`")
    ap.add_argument("--check-energies", default="2,20", help="GeV values of the self-check")
    args = ap.parse_args()
    source, target = Path(args.model), ZOO / args.name
    suite, ds, n_file, train, test = held_out(args.suite, args.events)
    original = load(source)
    original.options = dataclasses.replace(original.options, sample_precision="auto")  # compared as shipped
    original.inner.options = dataclasses.replace(original.inner.options, sample_precision="auto")
    weights = export(source, target, args.bf16)
    update_config(target, train)
    shipped = load(target)
    energy = [round(v / 1000, 3) for v in shipped.cond_range[0]] if shipped.cond_range else None
    train_info = next((s.get("train", {}) for s in suite["surrogates"] if s.get("family") == original.inner.family), {})
    data_readme = Path(os.environ.get("PHYSGEN_DATA", "../shared/data")) / "README.md"
    card = {
        "name": args.name,
        "description": args.description,
        "family": original.inner.family,
        "particle": shipped.schema.meta.get("particle"),
        "geometry": {"layers": shipped.schema.geometry.n_layers, "voxels": shipped.schema.geometry.n_voxels},
        "training": {"suite": Path(args.suite).name, "data": ds["source"], "events_in_file": n_file, "split": ds.get("split"),
                     "settings": train_info, "epochs": len(original.history) or None,
                     "provenance": "Geant4 11.4.p01 full simulation made for physgen (an electromagnetic physics list without "
                                   f"data tables; see {data_readme.name} of the data folder), log-uniform incident energies 1-100 GeV"},
        "energy_range_gev": energy,
        "held_out": {"events": args.events, "n": len(test), "metrics": metrics(shipped, test)},
        "speed": speed(shipped, test),
        "self_check": self_check(shipped, [float(v) for v in args.check_energies.split(",")]),
        "weights": {**weights, "megabytes": round(sum(f.stat().st_size for f in target.iterdir()) / 2**20, 1)},
        "licence": "BSD-3-Clause (as physgen); the training showers were simulated for this project",
    }
    if args.bf16:
        card["held_out"]["metrics_fp32_original"] = metrics(original, test)
    (target / "card.json").write_text(json.dumps(card, indent=1) + "\n")
    (target / "card.md").write_text(card_markdown(card))
    print(json.dumps(card, indent=1))


def _metric(m: dict[str, Any], key: str, fmt: str) -> str:
    e = m[key]
    err = f" ± {e['error']:{fmt}}" if e.get("error") is not None else ""
    floor = f"{e['floor']:{fmt}}" if e.get("floor") is not None else "–"
    return f"| {key.replace('_', ' ')} | {e['value']:{fmt}}{err} | {floor} |"


def card_markdown(card: dict[str, Any]) -> str:
    """The card as the Markdown the documentation includes."""
    t, sp, w = card["training"], card["speed"], card["weights"]
    lo, hi = card["energy_range_gev"]
    m = card["held_out"]["metrics"]
    lines = [
        f"### `zoo:{card['name']}`", "", card["description"], "",
        f"- **Model**: {card['family']} in a `ShowerModel`; {card['particle']} showers, {card['geometry']['layers']} layers, "
        f"{card['geometry']['voxels']:,} voxels; incident energies {lo:g}–{hi:g} GeV (MeV in and out).",
        f"- **Training**: suite `{t['suite']}` on `{t['data']}` ({t['events_in_file']:,} showers in the file; split {t['split']}); "
        f"{t['provenance']}.",
        f"- **Weights**: {w['dtype']}, {w['megabytes']} MB.",
        f"- **Speed**: {sp['us_per_shower']:,} µs a shower at {sp['energies']} (batch {sp['batch_size']:,}, one thread of an "
        f"{sp['cpu']}, {sp['capability']}), **{sp['speedup_vs_geant4']:g}× Geant4** ({sp['geant4_us_per_shower']:,} µs, {sp['geant4_timed_on']}).",
        f"- **Licence**: {card['licence']}.", "",
        f"Held-out showers ({card['held_out']['n']:,}, events `{card['held_out']['events']}`), against the truth-vs-truth floor:", "",
        "| metric | value | floor |", "|---|---|---|",
        _metric(m, "classifier_auc", ".3f"), _metric(m, "fpd", ".3g"), _metric(m, "kpd", ".2g"), "",
    ]
    if "metrics_fp32_original" in card["held_out"]:
        o = card["held_out"]["metrics_fp32_original"]
        lines += [f"The float32 original on the same showers: classifier AUC {o['classifier_auc']['value']:.3f} ± "
                  f"{o['classifier_auc']['error']:.3f}, FPD {o['fpd']['value']:.3g}, KPD {o['kpd']['value']:.2g}.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
