"""Put the entries of a partial suite re-run (``bench --only``) into a committed suite result.

Re-running one family of a 40-minute suite should not re-draw every other
family's time-budgeted training. Run the family with the Gaussian baseline, then
merge only the family's entries; the comparisons with the Gaussian are redone
against the committed Gaussian, and the new run's Gaussian is checked against it
(same split and seed, so its figures should agree to their errors)::

    python -m physgen.cli bench benchmarks/suites/calo_wsi.toml --out runs/calo_wsi_wgan --only gaussian,wgan
    python benchmarks/merge_results.py calo_wsi runs/calo_wsi_wgan/results.json --labels wgan

writes ``benchmarks/results/calo_wsi.{json,md}``; the JSON's ``merged`` list says
which entries came from which run.

A run of another suite file can be merged when it read the same data (its ``data``
summary of every merged data set equals the committed one: same file, events,
energies and occupancy) with ``--labels NEW=OLD``, which replaces the committed
entry ``OLD`` by the re-run's ``NEW`` under the committed label: a variant tried in
its own suite file and then adopted (a narrower W/Si flow)::

    python benchmarks/merge_results.py calo_wsi runs/wsi_flow128/results.json --labels flow_h128=flow

``--refresh`` (without a re-run) redoes the comparisons of a committed result with the
current code and rewrites its markdown: how results written by older code read today.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
from pathlib import Path

from physgen.bench import compare_to_baseline
from physgen.report import write_report

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, write_markdown, write_result  # noqa: E402


def _key(r: dict) -> tuple[str, str]:
    return r["dataset"], r["label"]


def merge(old: dict, new: dict, labels: list[str]) -> tuple[dict, list[str]]:
    """``old`` with its entries labelled ``labels`` replaced by ``new``'s; returns (payload, warnings).

    A label ``NEW=OLD`` takes the re-run's entry ``NEW`` and files it as ``OLD``.
    """
    rename = dict(lab.split("=", 1) if "=" in lab else (lab, lab) for lab in labels)
    picked = {_key(r): r for r in new["results"] if r["label"] in rename}
    missing = [lab for lab in rename if not any(k[1] == lab for k in picked)]
    if missing:
        raise SystemExit(f"the re-run has no entry labelled {missing}")
    if old.get("suite") != new.get("suite"):
        for dataset, _ in picked:
            if old.get("data", {}).get(dataset) is None or old["data"][dataset] != new.get("data", {}).get(dataset):
                raise SystemExit(
                    f"suite mismatch: committed {old.get('suite')!r}, re-run {new.get('suite')!r}, and data set {dataset!r} "
                    "differs between them (only a run of another suite file on the same data can be merged)"
                )
    fresh = {(d, rename[lab]): {**r, "label": rename[lab]} for (d, lab), r in picked.items()}
    warnings = []
    old_g = {r["dataset"]: r for r in old["results"] if r["family"] == "gaussian" and "error" not in r}
    for r in new["results"]:
        g = old_g.get(r["dataset"])
        if r["family"] != "gaussian" or "error" in r or g is None:
            continue
        a, b = r["evaluation"]["summary"]["classifier_auc"], g["evaluation"]["summary"]["classifier_auc"]
        if abs(a["value"] - b["value"]) > 3 * math.hypot(a.get("error") or 0, b.get("error") or 0):
            warnings.append(f"{r['dataset']}: the re-run's Gaussian AUC {a['value']:.3f} differs from the committed {b['value']:.3f} by > 3σ")
    results = []
    for r in old["results"]:
        results.append(dict(fresh.pop(_key(r), r)))
    results += list(fresh.values())  # entries the committed run did not have
    for r in results:
        r.pop("vs_gaussian", None)  # redone below, against the committed Gaussian
    payload = {**old, "results": results}
    payload["merged"] = [*old.get("merged", []), {
        "labels": [rename[lab] for lab in rename], "suite": new.get("suite"), "started": new["started"], "seconds": new["seconds"],
        "machine": new["machine"], "matmul_gflops": new["matmul_gflops"],
    }]
    compare_to_baseline(payload)
    return payload, warnings


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("suite", help="name of the committed result, e.g. calo_wsi (benchmarks/results/NAME.json)")
    ap.add_argument("rerun", type=Path, nargs="?", help="results.json of the partial re-run")
    ap.add_argument("--labels", help="comma-separated labels to take from the re-run")
    ap.add_argument("--refresh", action="store_true", help="no re-run: redo the comparisons and the markdown of the committed result")
    args = ap.parse_args(argv)
    old = json.loads((RESULTS / f"{args.suite}.json").read_text())
    if args.refresh:
        if args.rerun is not None or args.labels:
            ap.error("--refresh takes no re-run and no --labels")
        payload = old
        compare_to_baseline(payload)
    else:
        if args.rerun is None or not args.labels:
            ap.error("a re-run's results.json and --labels are needed (or --refresh)")
        new = json.loads(args.rerun.read_text())
        payload, warnings = merge(old, new, [s for s in args.labels.split(",") if s])
        for w in warnings:
            print("warning:", w, file=sys.stderr)
    write_result(args.suite, payload)
    with tempfile.TemporaryDirectory() as tmp:
        md = write_report(payload, tmp)["markdown"].read_text()
    md += "\n" + "".join(
        f"Entries {', '.join(m['labels'])} re-run {m['started']} ({m['seconds']:.0f} s, matmul {m['matmul_gflops']:.0f} GFLOP/s"
        + (f", suite {m['suite']}" if m.get("suite") and m["suite"] != payload.get("suite") else "") + ") "
        "and merged with `benchmarks/merge_results.py`.\n"
        for m in payload.get("merged", [])
    ) + ("The comparisons with the Gaussian use the first run's Gaussian.\n" if payload.get("merged") else "")
    print(f"wrote {RESULTS / (args.suite + '.json')} and {write_markdown(args.suite, md)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
