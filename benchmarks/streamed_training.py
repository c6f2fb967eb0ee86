"""Training from a file, streamed block by block: its memory, its speed, and what its shuffle costs.

``model.fit(path)`` reads a file's events a block at a time in a shuffled order of blocks,
mixing the events of a buffer of blocks (``physgen.io.rows.FileRows``); ``model.fit(data)``
shuffles events held in memory. Each run here is a fresh process that trains one family of a
suite (its preset and settings, no augmentation unless ``--augment``) for ``--steps`` optimiser steps on events
``--train START:STOP`` of ``--file``, either read into memory first (``memory``) or streamed
(``file``), optionally under an address-space cap (``--cap-gb``: ``RLIMIT_AS``, what ``ulimit -v``
sets), and records peak resident memory, training rate and, with ``--heldout START:STOP``, the
family's validation loss on those events (the same estimator for both modes: the cost of the
coarser shuffle)::

    python benchmarks/streamed_training.py benchmarks/suites/calo_wsi.toml --label vae --steps 1500 \\
        --train 0:5400 --heldout 6000:8000 --out streamed_training_wsi
    python benchmarks/streamed_training.py benchmarks/suites/calo_wsi.toml --label vae --steps 200 \\
        --file ds3.h5 --modes file --cap-gb 12 --out streamed_training_ds3

Writes ``benchmarks/results/OUT.json`` (and prints each row).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, SHARED_DATA, machine, write_result  # noqa: E402


def _range(text: str) -> tuple[int, int]:
    a, b = (int(v) for v in text.split(":"))
    return a, b


def width(path: str) -> int:
    from physgen.io.rows import FileRows

    return FileRows(path).width


def one_run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    import physgen
    from physgen.bench import build_model, load_suite
    from physgen.io.rows import FileRows

    if args.cap_gb:
        cap = int(args.cap_gb * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    torch.set_num_threads(1)
    suite = load_suite(args.suite)
    spec = next(s for s in suite["surrogates"] if s.get("label", s["family"]) == args.label)
    settings = {k: v for k, v in spec.get("train", {}).items() if k not in ("epochs", "steps", "time_budget_s", "patience", "augment")}
    settings.update(steps=args.steps, progress=False, seed=args.seed, val_fraction=0.0, compile=args.compile, augment=args.augment)
    row_extra: dict[str, Any] = {}
    model = build_model(spec, "calorimeter")
    t0 = time.perf_counter()
    if args.one == "memory":
        data = physgen.read(args.train_file)
        history = model.fit(data, **settings)
    else:
        source = FileRows(args.train_file, block_rows=args.block_rows, buffer_values=(args.buffer_rows or 0) * width(args.train_file) or 1 << 27)
        history = model.fit(source, **settings)
        row_extra = {"block_rows": source.block_rows, "buffer_rows": source.buffer_values // source.width}
    seconds = time.perf_counter() - t0
    trained = [h for h in history if h.get("samples")]
    row: dict[str, Any] = {
        "mode": args.one, "label": args.label, "steps": args.steps, "file": Path(args.train_file).name,
        "file_gb": Path(args.train_file).stat().st_size / 2**30, "cap_gb": args.cap_gb,
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, "seconds": seconds,
        "samples_per_s": sum(h["samples"] for h in trained) / sum(h["time_s"] for h in trained), "seed": args.seed,
        "compile": args.compile, "augment": args.augment, **row_extra,
    }
    if args.heldout:
        a, b = _range(args.heldout)
        held = physgen.read(args.file)[a:b]
        y, c = model.preprocessing.forward(held.x, held.cond)  # type: ignore[union-attr]
        row["heldout_loss"] = model.validation_metrics(y.float(), c.float())["val_loss"]
        row["heldout_events"] = f"{a}:{b}"
    if args.sample:
        from physgen.metrics import evaluate

        reference = FileRows(args.train_file).sample(args.sample, seed=1)
        t1 = time.perf_counter()
        out = model.sample(reference.cond, seed=0, batch_size=1000)
        row["sample_s_per_shower"] = (time.perf_counter() - t1) / len(out)
        row["peak_rss_gb_sampled"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        t1 = time.perf_counter()
        report = evaluate(reference, out, seed=0, classifier_epochs=5)
        row["evaluate_s"] = time.perf_counter() - t1
        row["classifier_auc"] = report["summary"]["classifier_auc"]["value"]
        row["peak_rss_gb_evaluated"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("suite")
    parser.add_argument("--label", default="vae")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--file", default=str(SHARED_DATA / "wsi_electron_1-100GeV.h5"))
    parser.add_argument("--train", default=None, help="START:STOP: train on these events of --file (written to a temporary file); default: all")
    parser.add_argument("--heldout", default=None, help="START:STOP: the validation loss on these events of --file")
    parser.add_argument("--sample", type=int, default=0, help="also sample as many showers as this many of the file's (their conditions), time them, evaluate them against those")
    parser.add_argument("--modes", default="memory,file")
    parser.add_argument("--cap-gb", type=float, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--compile", action="store_true", help="train with compile = true (torch.compile)")
    parser.add_argument("--augment", type=int, default=1, help="train with augment = K (default 1: none; streamed: the file read K times an epoch)")
    parser.add_argument("--block-rows", type=int, default=None, help="FileRows' block size (default: its own)")
    parser.add_argument("--buffer-rows", type=int, default=None, help="FileRows' shuffle buffer, in events (default: its own, 2**27 values)")
    parser.add_argument("--out", default=None)
    parser.add_argument("--append", action="store_true", help="add these rows to OUT's")
    parser.add_argument("--one", choices=["memory", "file"], help=argparse.SUPPRESS)
    parser.add_argument("--train-file", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one_run(args)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        train_file = args.file
        if args.train:
            import physgen

            a, b = _range(args.train)
            train_file = str(Path(tmp) / "train.h5")
            physgen.write(physgen.read(args.file)[a:b], train_file)
        rows = []
        for mode in args.modes.split(","):
            cmd = [sys.executable, __file__, args.suite, "--label", args.label, "--steps", str(args.steps), "--file", args.file,
                   "--one", mode, "--train-file", train_file, "--sample", str(args.sample)]
            cmd += ["--heldout", args.heldout] if args.heldout else []
            cmd += ["--cap-gb", str(args.cap_gb)] if args.cap_gb else []
            cmd += ["--seed", str(args.seed)] + (["--block-rows", str(args.block_rows)] if args.block_rows else [])
            cmd += ["--buffer-rows", str(args.buffer_rows)] if args.buffer_rows else []
            cmd += ["--compile"] if args.compile else []
            cmd += ["--augment", str(args.augment)]
            out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
            if out.returncode != 0:
                raise SystemExit(f"{mode} run failed:\n{out.stderr[-3000:]}")
            row = json.loads(out.stdout.strip().splitlines()[-1])
            if args.train:
                row["train_events"] = args.train
            print(row, flush=True)
            rows.append(row)
    if args.out:
        previous = RESULTS / f"{args.out}.json"
        kept: list[dict[str, Any]] = []
        if args.append and previous.exists():
            before = json.loads(previous.read_text())
            # each row keeps the machine it ran on (appended runs may come from another host)
            kept = [{"machine": before["machine"], **r} for r in before["results"]]
        here = machine()
        write_result(args.out, {"suite": args.suite, "label": args.label, "machine": here, "results": kept + [{"machine": here, **r} for r in rows]})


if __name__ == "__main__":
    main()
