"""Peak memory of training on an augmented set: the versions stored, or gathered batch by batch.

``augment = k`` trains on ``k`` rotated or mirrored versions of each shower. Stored as one
``Data`` (``physgen.calorimeter.azimuthal_copies``, what ``fit`` did before it gathered them),
the versions and their float64 preprocessing take ``k`` times the training set's memory;
gathered per batch (``fit(..., augment=k)``), they take one batch. This script trains one
family of a suite both ways, each in a fresh process, on the suite's training split and with
the suite's settings, for ``--steps`` optimiser steps (the training loop alone: not the
calibrations ``fit`` ends with, which see the showers themselves either way), and records each
process's peak resident memory (``ru_maxrss``) and training rate::

    python benchmarks/training_memory.py benchmarks/suites/calo_wsi.toml --label vae --steps 300 --out training_memory_wsi

Writes ``benchmarks/results/OUT.json`` (and prints each row).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SHARED_DATA, machine, write_result  # noqa: E402


def _config(model: Any, settings: dict[str, Any], **more: Any) -> Any:
    from physgen.training import TrainConfig

    return TrainConfig.from_dict({**model.train_defaults, **settings, **more}, where="train")


def one_run(suite: str, label: str, steps: int, mode: str) -> dict[str, Any]:
    """Train ``label`` of ``suite`` for ``steps`` steps with its versions ``mode`` ("stored" or "gathered"); measure."""
    import torch

    from physgen.bench import build_model, load_dataset, load_suite
    from physgen.calorimeter import azimuthal_copies
    from physgen.data.rows import Rows
    from physgen.training import loop

    torch.set_num_threads(1)
    os.environ.setdefault("PHYSGEN_DATA", str(SHARED_DATA))
    spec_suite = load_suite(suite)
    ds = spec_suite["datasets"][0]
    spec = next(s for s in spec_suite["surrogates"] if s.get("label", s["family"]) == label)
    data = load_dataset(ds)
    train, _ = data.split(tuple(ds.get("split", [0.7, 0.3])), seed=spec_suite.get("seed", 0))
    settings = {k: v for k, v in spec.get("train", {}).items() if k not in ("epochs", "steps", "time_budget_s", "patience")}
    copies = int(settings.pop("augment", 1))
    settings.update(steps=steps, progress=False, seed=spec_suite.get("seed", 0))
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    model = build_model(spec, data.schema.kind)
    t0 = time.perf_counter()
    if mode == "stored":
        # the versions the loop would gather, stored where the loop takes them (as augment did before it gathered them)
        model.training_rows = lambda data, k, seed=0: Rows(azimuthal_copies(data, k, seed=seed))
    history = loop.train(model, train, _config(model, settings, augment=copies))
    seconds = time.perf_counter() - t0
    trained = [h for h in history if h.get("samples")]
    return {
        "mode": mode, "label": label, "copies": copies, "n_train": len(train), "steps": steps,
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, "rss_after_reading_gb": rss0 / 2**20,
        "seconds": seconds,
        "samples_per_s": sum(h["samples"] for h in trained) / sum(h["time_s"] for h in trained),
        "final_val_loss": history[-1].get("val_loss"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("suite")
    parser.add_argument("--label", default="vae")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--out", default=None)
    parser.add_argument("--one", choices=["stored", "gathered"], help=argparse.SUPPRESS)  # a child process's run
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one_run(args.suite, args.label, args.steps, args.one)))
        return
    rows = []
    for mode in ("stored", "gathered"):
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        out = subprocess.run([sys.executable, __file__, args.suite, "--label", args.label, "--steps", str(args.steps), "--one", mode],
                             capture_output=True, text=True, env=env, check=True)
        row = json.loads(out.stdout.strip().splitlines()[-1])
        print(row, flush=True)
        rows.append(row)
    if args.out:
        write_result(args.out, {"suite": args.suite, "label": args.label, "steps": args.steps, "machine": machine(), "results": rows})


if __name__ == "__main__":
    main()
