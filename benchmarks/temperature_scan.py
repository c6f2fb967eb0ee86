"""Scan a saved flow's sampling temperature: re-calibrate at each, judge on showers the suite never used.

The flow draws its base noise times ``temperature``; the readout's cuts and value map
are fitted on the model's own samples, so each temperature gets its calibration
re-fitted on the suite's training split (:meth:`Surrogate.recalibrate`, as
``recalibrate.py`` does) before it is judged with the suite's evaluation, next to the
Gaussian baseline::

    python benchmarks/temperature_scan.py benchmarks/suites/calo_wsi.toml runs/calo_wsi \\
        --label flow --temperatures 0.85,1.0,1.15,1.3,1.5,1.7,2.0 --events 6000:8000 --out calo_wsi_flow_temperature_select

Writes ``benchmarks/results/OUT.{json,md}`` (one row per temperature, labelled ``LABEL_T<t>``).
Choose on a range of events that neither the suite nor the final judgement uses.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from physgen.bench import _load, load_suite
from physgen.surrogates import load

sys.path.insert(0, str(Path(__file__).resolve().parent))
import heldout_eval  # noqa: E402
from common import machine  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("suite", help="the suite file the model was trained with")
    ap.add_argument("run", type=Path, help="the suite run folder (holding models/DATASET__LABEL and DATASET__gaussian)")
    ap.add_argument("--label", default="flow", help="the flow's label in the suite")
    ap.add_argument("--temperatures", required=True, help="comma-separated temperatures, each in (0, 10]")
    ap.add_argument("--events", required=True, type=heldout_eval._events, help="START:STOP, events of each data file the suite never used")
    ap.add_argument("--out", required=True, help="result name: writes benchmarks/results/OUT.{json,md}")
    args = ap.parse_args(argv)
    try:
        temperatures = [float(t) for t in args.temperatures.split(",") if t.strip()]
    except ValueError as exc:
        raise SystemExit(f"--temperatures takes numbers separated by commas; got {args.temperatures!r}") from exc
    if not temperatures or any(not 0 < t <= 10 for t in temperatures):
        raise SystemExit(f"--temperatures must be in (0, 10]; got {args.temperatures!r}")
    if args.events == "test":
        raise SystemExit("--events test would choose the temperature on the showers that judge it: give START:STOP")
    suite = load_suite(args.suite)
    base = Path(suite["_path"]).parent
    seed, metrics = int(suite.get("seed", 0)), dict(suite.get("metrics", {}))
    results, used, t0 = [], 0, time.perf_counter()
    for ds in suite["datasets"]:
        data = _load({k: v for k, v in ds.items() if k != "max_events"}, base)
        used = max(used, int(ds.get("max_events") or len(data)))
        if args.events.start < used:
            raise SystemExit(f"{ds['name']}: events from {args.events.start} overlap the suite's first {used}, which it trained and tested on")
        held = data[args.events]
        if len(held) < args.events.stop - args.events.start:
            raise SystemExit(f"{ds['name']}: the file has {len(data)} events, fewer than --events asks for")
        train, _ = data[:used].split(tuple(ds.get("split", [0.7, 0.3])), seed=seed)  # run_one's split
        runs = [("gaussian", "gaussian", None), *((args.label, f"{args.label}_T{t:g}", t) for t in temperatures)]
        for label, name, temperature in runs:
            path = args.run / "models" / f"{ds['name']}__{label}"
            if not path.exists():
                raise SystemExit(f"{path}: no saved model")
            model = load(path)
            if temperature is not None:
                if "temperature" not in model.config:
                    raise SystemExit(f"{path}: a {model.family} surrogate has no sampling temperature")
                model.config["temperature"] = temperature
                model.recalibrate(train, seed=seed)
            results.append(heldout_eval.judge(model, held, seed, metrics, dataset=ds["name"], family=model.family, label=name, model=str(path), temperature=temperature))
    payload = {
        "suite": suite.get("name"), "suite_file": str(args.suite), "runs": [str(args.run)],
        "events": f"{args.events.start}:{args.events.stop}", "n_events": len(held), "suite_events": used,
        "temperatures": temperatures, "machine": machine(), "seconds": time.perf_counter() - t0, "results": results,
    }
    heldout_eval.finish(args.out, payload, title="Temperature scan")
    return 0


if __name__ == "__main__":
    sys.exit(main())
