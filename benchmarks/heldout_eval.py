"""Judge a suite's trained surrogates on showers the suite never used: more held-out data, smaller floors.

The W/Si suite trains on 4,200 showers and tests on 1,800 (two halves of 900 for the
floors); at that size a feature's separation power scatters by about 0.008, so a
surrogate and the Gaussian that both sit at the truth-vs-truth floor "beat" each
other by chance. The W/Si file holds 18,000 showers; this script reloads the suite's
saved models (``RUN/models/DATASET__LABEL``), draws one shower per condition of a
range of events the suite never touched, and runs the suite's evaluation (every
metric next to its floor, the comparison with the Gaussian) on them::

    python benchmarks/heldout_eval.py benchmarks/suites/calo_wsi.toml runs/calo_wsi \\
        --events 8000:18000 --out calo_wsi_heldout

Several run folders may be given: a label's model is taken from the last one that has
it (the order of ``merge_results.py``). Writes ``benchmarks/results/OUT.{json,md}``.

``--calochallenge 2`` adds the CaloChallenge evaluator's protocol (``cls-low``, ``cls-high``,
its FPD and KPD) for each model, with the classifiers' truth-vs-truth floor from two halves
of the held-out showers.

``--events test`` judges on the suite's own test split instead (its split and seed, as
``physgen bench`` drew it): for models whose calibration was re-fitted after the suite ran
(``recalibrate.py``, which fits on the training split only), at the suite's statistics.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from physgen.bench import compare_to_baseline, load_dataset, load_suite
from physgen.errors import PhysgenError
from physgen.metrics import evaluate
from physgen.metrics.calochallenge import DATASETS, ClassifierProtocol, calochallenge_evaluate
from physgen.surrogates import load

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, write_markdown, write_result  # noqa: E402


def _events(text: str) -> slice | str:
    if text == "test":
        return text
    try:
        start, stop = (int(v) for v in text.split(":"))
    except ValueError as exc:
        raise SystemExit(f"--events takes START:STOP (e.g. 8000:18000); got {text!r}") from exc
    if not 0 <= start < stop:
        raise SystemExit(f"--events needs 0 <= START < STOP; got {text!r}")
    return slice(start, stop)


def _width(payload: dict) -> int:
    return next(r["calochallenge"]["protocol"]["n_hidden"] for r in payload["results"] if "calochallenge" in r)


def markdown(payload: dict) -> str:
    lines = [
        f"# Held-out evaluation of suite `{payload['suite']}`",
        "",
        (f"The suite's own test split ({payload['n_events']} showers), judged after the suite ran"
         if payload["events"] == "test" else
         f"Events {payload['events']} of each data set ({payload['n_events']} showers; the suite used at most the first "
         f"{payload['suite_events']})") + ", one generated shower per condition. Floors: two halves of these showers.",
        "",
        "| dataset | surrogate | AUC (floor) | FPD (floor) | mean sep. power (floor) | beats the Gaussian on | worse beyond 2σ |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in payload["results"]:
        s, v = r["evaluation"]["summary"], r.get("vs_gaussian")
        auc, fpd = s["classifier_auc"], s["fpd"]
        beats = f"{v['features'] - len(v['worse_than_gaussian'])} of {v['features']}" if v else "–"
        sig = (", ".join(v["significantly_worse_than_gaussian"]) or "none") if v else "–"
        lines.append(
            f"| {r['dataset']} | {r['label']} | {auc['value']:.3f} ± {auc['error']:.3f} ({auc['floor']:.3f}) "
            f"| {fpd['value']:.3g} ({fpd['floor']:.3g}) | {r['evaluation']['mean_separation_power']:.4f} "
            f"({r['evaluation']['mean_separation_power_floor']:.4f}) | {beats} | {sig} |"
        )
    lines.append("")
    if any("calochallenge" in r for r in payload["results"]):
        lines += [
            f"The CaloChallenge evaluator's protocol (its classifier, {_width(payload)} wide, its split and isotonic calibration; "
            "floors: two halves of the held-out showers):",
            "",
            "| dataset | surrogate | cls-low AUC (floor) | cls-high AUC (floor) | cls-low JSD | FPD (evaluator) | KPD (evaluator) |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in payload["results"]:
            c = r.get("calochallenge")
            if c is None:
                continue
            floor = payload["calochallenge_floor"][r["dataset"]]
            cls = [f"{c[m]['auc']['value']:.3f} ± {c[m]['auc']['error']:.3f} ({floor[m]['auc']['value']:.3f})" for m in ("cls-low", "cls-high")]
            lines.append(f"| {r['dataset']} | {r['label']} | {cls[0]} | {cls[1]} | {c['cls-low']['jsd']['value']:.4f} "
                         f"| {c['fpd']['value']:.4g} ± {c['fpd']['error']:.2g} | {c['kpd']['value']:.3g} ± {c['kpd']['error']:.2g} |")
        lines.append("")
    for r in payload["results"]:
        v = r.get("vs_gaussian")
        if v and v["worse_than_gaussian"]:
            floor = v.get("both_at_floor") or []
            lines.append(f"- {r['label']} not better than the Gaussian on: {', '.join(v['worse_than_gaussian'])}"
                         + (f" (both within 2σ of the truth-vs-truth floor on: {', '.join(floor)})" if floor else ""))
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("suite", help="the suite file the models were trained with")
    ap.add_argument("runs", nargs="+", type=Path, help="suite run folders (holding models/DATASET__LABEL)")
    ap.add_argument("--events", required=True, type=_events, help="START:STOP, the events of each data file to judge on, or 'test' (the suite's test split)")
    ap.add_argument("--out", required=True, help="result name: writes benchmarks/results/OUT.{json,md}")
    ap.add_argument("--calochallenge", choices=list(DATASETS), help="also the CaloChallenge evaluator's protocol for this data set")
    ap.add_argument("--cls-epochs", type=int, default=ClassifierProtocol.epochs, help="its classifiers' epochs (the evaluator's: 50)")
    ap.add_argument("--cls-hidden", type=int, default=ClassifierProtocol.n_hidden, help="its classifiers' width (the evaluator's: 2048)")
    args = ap.parse_args(argv)
    if min(args.cls_epochs, args.cls_hidden) < 1:
        raise SystemExit(f"--cls-epochs and --cls-hidden must be at least 1; got {args.cls_epochs} and {args.cls_hidden}")
    protocol = ClassifierProtocol(epochs=args.cls_epochs, n_hidden=args.cls_hidden)
    floors: dict[str, Any] = {}
    suite = load_suite(args.suite)
    base = Path(suite["_path"]).parent
    seed, metrics = int(suite.get("seed", 0)), dict(suite.get("metrics", {}))
    results, used = [], 0
    t0 = time.perf_counter()
    for ds in suite["datasets"]:
        data = load_dataset({k: v for k, v in ds.items() if k != "max_events"}, base)
        used = max(used, int(ds.get("max_events") or len(data)))
        if args.events == "test":  # the suite's own test split (run_one's split of its first max_events)
            held = data[:used].split(tuple(ds.get("split", [0.7, 0.3])), seed=seed)[1]
        else:
            if args.events.start < used:
                raise SystemExit(f"{ds['name']}: events from {args.events.start} overlap the suite's first {used}, which it trained and tested on")
            held = data[args.events]
            if len(held) < args.events.stop - args.events.start:
                raise SystemExit(f"{ds['name']}: the file has {len(data)} events, fewer than --events asks for")
        if args.calochallenge:
            half = len(held) // 2  # the classifiers' floor: two halves of the held-out showers, as the suite's floors
            try:
                floors[ds["name"]] = calochallenge_evaluate(held[:half], held[half:2 * half], args.calochallenge,
                                                            modes=("cls-low", "cls-high"), protocol=protocol, seed=seed)
            except PhysgenError as exc:
                raise SystemExit(f"{ds['name']}: {exc}") from None
        for spec in suite["surrogates"]:
            label = spec.get("label", spec["family"])
            paths = [run / "models" / f"{ds['name']}__{label}" for run in args.runs]
            found = [p for p in paths if p.exists()]
            if not found:
                print(f"{ds['name']} / {label}: no saved model in {', '.join(map(str, args.runs))}; skipped", file=sys.stderr)
                continue
            cc = (args.calochallenge, protocol) if args.calochallenge else None
            results.append(judge(load(found[-1]), held, seed, metrics, calochallenge=cc, dataset=ds["name"], family=spec["family"],
                                 label=label, model=str(found[-1])))
    payload = {
        "suite": suite.get("name"), "suite_file": str(args.suite), "runs": [str(r) for r in args.runs],
        "events": args.events if args.events == "test" else f"{args.events.start}:{args.events.stop}", "n_events": len(held),
        "suite_events": used, "machine": machine(), "seconds": time.perf_counter() - t0, "results": results,
    }
    if floors:
        payload["calochallenge_floor"] = floors
    finish(args.out, payload)
    return 0


def judge(surrogate: Any, held: Any, seed: int, metrics: dict, calochallenge: tuple[str, ClassifierProtocol] | None = None,
          **entry: Any) -> dict:
    """One result row: ``surrogate`` sampled at ``held``'s conditions (or as many), judged by the suite's evaluation
    (and by the CaloChallenge evaluator's protocol for ``calochallenge = (dataset, protocol)``)."""
    generated = surrogate.sample(held.cond, seed=seed) if surrogate.is_conditional else surrogate.sample(n=len(held), seed=seed)
    report = evaluate(held, generated, seed=seed, **metrics)
    s = report["summary"]["classifier_auc"]
    line = {"model": f"{entry['dataset']}__{entry['label']}", "auc": round(s["value"], 3), "floor": round(s["floor"], 3),
            "mean_separation_power": round(report["mean_separation_power"], 4)}
    row = {**entry, "evaluation": report}
    if calochallenge is not None:
        row["calochallenge"] = cc = calochallenge_evaluate(held, generated, calochallenge[0], protocol=calochallenge[1], seed=seed)
        line |= {"cls-low": round(cc["cls-low"]["auc"]["value"], 3), "cls-high": round(cc["cls-high"]["auc"]["value"], 3)}
    print(json.dumps(line), flush=True)
    return row


def finish(out: str, payload: dict, title: str = "Held-out evaluation") -> None:
    """Compare every row with the Gaussian and write ``benchmarks/results/OUT.{json,md}``."""
    compare_to_baseline(payload)
    json_path = write_result(out, payload)
    print(f"wrote {json_path} and {write_markdown(out, markdown(payload).replace('# Held-out evaluation', '# ' + title))}")


if __name__ == "__main__":
    sys.exit(main())
