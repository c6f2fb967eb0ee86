"""Generation speed of trained surrogates against Geant4, re-timed without retraining.

A suite run (``physgen bench SUITE --out RUN``) saves every trained model under
``RUN/models/DATASET__LABEL``. This reloads them, rebuilds the suite's held-out
split, and times ``sample`` exactly as the suite does (one CPU thread; batch 1,
100 and 10,000 at held-out conditions; Geant4's CPU time per event from the
data, overall and per energy decade). Use it to measure a change to the
sampling code on the same trained models, without the hour a suite's training
takes; the quality is unchanged when the sampling maps are.

    python benchmarks/generation_speed.py benchmarks/suites/calo_pbwo4.toml runs/calo_pbwo4 \
        --out generation_speed_pbwo4
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from physgen.bench import geant4_ratio, generation_timing, load_dataset, load_suite
from physgen.surrogates import load

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, matmul_gflops, write_result  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("suite", help="the suite file the run was made with (for its data sets and split)")
    ap.add_argument("run", help="the suite run's output folder (holds models/DATASET__LABEL)")
    ap.add_argument("--out", required=True, help="result name: writes benchmarks/results/OUT.json")
    args = ap.parse_args()
    suite = load_suite(args.suite)
    base = Path(suite["_path"]).parent if "_path" in suite else None
    seed = int(suite.get("seed", 0))
    rows = []
    for ds in suite["datasets"]:
        data = load_dataset(ds, base)
        _, test = data.split(tuple(ds.get("split", [0.7, 0.3])), seed=seed)
        for spec in suite["surrogates"]:
            label = spec.get("label", spec["family"])
            path = Path(args.run) / "models" / f"{ds['name']}__{label}"
            if not path.exists():
                continue
            model = load(path)
            timing = generation_timing(model, test)
            row = {
                "dataset": ds["name"], "label": label, "family": spec["family"],
                "sample_precision": model.options.sample_precision,
                "timing": timing,
                "geant4": {b: geant4_ratio(test, t["seconds_per_event"]) for b, t in timing.items() if b.startswith("batch_")},
            }
            rows.append(row)
            g = row["geant4"]["batch_10000"] or {}
            print(json.dumps({
                "model": f"{ds['name']}__{label}",
                "us_per_event": {b: round(t["seconds_per_event"] * 1e6, 1) for b, t in timing.items() if b.startswith("batch_")},
                "x_geant4_batch_10000": {k: round(v["speedup"], 1) for k, v in g.items()},
            }), flush=True)
    path = write_result(args.out, {
        "suite": suite.get("name"), "run": str(args.run), "machine": machine(), "matmul_gflops": matmul_gflops(),
        "protocol": "one CPU thread; sample() at held-out conditions, batch 1 (20 calls), 100 (5) and 10,000 (1) after a warm-up call",
        "rows": rows,
    })
    print(path)


if __name__ == "__main__":
    main()
