"""Operations per training step of a suite's families: why their GPU training is dispatch-bound.

On an NVIDIA H200 (``calo_wsi_gpu.json``) the W/Si families trained at 1.4-2.9x the
2-core CPU's rate and 0.06-0.43 % of the GPU's fp32 matmul rate. A step of batch 128 is
thousands of small operations, and each costs the host a dispatch and the GPU a launch,
whatever its size. This script counts them: it builds each learned family of ``SUITE`` with
its configuration, trains it for a few steps on the CPU (on ``--events`` showers of the
suite's data set, at the suite's batch size) and records, for one step after a warm-up,

- the ATen operations the profiler sees (nested calls included: a proxy for host work),
  for the whole step and for the family's own networks alone (its ``train_step``); the rest
  is the first stage, the layer-energy flow, trained ``energy_steps`` times per step;
- the step's CPU time (median of ``--steps`` steps).

With ``--gpu-result NAME`` (a suite result trained on a GPU), each family's GPU time per step
(batch size / its samples per second) is divided by its operation count: a constant time
per operation means the step's cost is the operations' number, not their arithmetic.

    python benchmarks/step_ops.py benchmarks/suites/calo_wsi_gpu.toml --gpu-result calo_wsi_gpu --out step_ops_wsi

``--modes eager,compile`` measures each family twice: as torch runs it operation by
operation, and with ``train.compile = true`` (``torch.compile``'s fused kernels).

Writes ``benchmarks/results/OUT.json`` (and prints each row).
"""

from __future__ import annotations

import argparse
import difflib
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from physgen.bench import build_model, load_dataset, load_suite

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, machine, write_result  # noqa: E402


def count_ops(fn: Any, *args: Any) -> int:
    """ATen operations ``fn(*args)`` dispatches on the CPU, nested calls included."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn(*args)
    return sum(e.count for e in prof.key_averages() if e.key.startswith("aten::"))


def step_profile(spec: dict[str, Any], data: Any, batch_size: int, steps: int = 12, seed: int = 0, compile: bool = False) -> dict[str, Any]:
    """Train ``family`` for ``steps`` + 2 steps on the CPU; count one step's operations and time the rest.

    The counted step is an extra one after the timed steps (the profiler's overhead stays
    out of the timing), and its family part is counted again on the same batch.
    """
    model = build_model(spec, data.schema.kind)
    cls = type(model)
    timed: list[float] = []
    out: dict[str, Any] = {}

    def step(self: Any, module: Any, y: torch.Tensor, cond: torch.Tensor | None, optimizers: list, ctx: Any) -> dict[str, float]:
        if len(timed) < steps + 2:
            t0 = time.perf_counter()
            logs = cls.train_step(self, module, y, cond, optimizers, ctx)
            timed.append(time.perf_counter() - t0)
            return logs
        if not out:
            out["ops_step"] = count_ops(cls.train_step, self, module, y, cond, optimizers, ctx)
            if getattr(self, "two_stage", False):
                ys, cs, _ = self.split_stages(y, cond)
                out["ops_family"] = count_ops(self.inner.train_step, module, ys, cs, optimizers[:-1], ctx)
                out["energy_steps"] = self.options.energy_steps
            else:
                inner = getattr(self, "inner", self)
                out["ops_family"] = count_ops(type(inner).train_step, inner, module, y, cond, optimizers, ctx)
                out["energy_steps"] = 0
        return cls.train_step(self, module, y, cond, optimizers, ctx)

    model.train_step = step.__get__(model)
    n_train = int(len(data) * 0.9)
    epochs = (steps + 4) * batch_size // max(1, n_train) + 2
    t0 = time.perf_counter()
    model.fit(data, epochs=epochs, batch_size=batch_size, progress=False, seed=seed, val_fraction=0.1, device="cpu", compile=compile)
    out["fit_s"] = time.perf_counter() - t0  # with compile=True: the compiler's time too
    if not out:
        raise SystemExit(f"{spec['family']}: fewer than {steps + 3} steps in {epochs} epochs; use more --events")
    out["ops_first_stage"] = out["ops_step"] - out["ops_family"]
    out["ops_per_first_stage_step"] = out["ops_first_stage"] / out["energy_steps"] if out["energy_steps"] else None
    out["cpu_ms_per_step"] = 1e3 * statistics.median(timed[2:])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("suite", help="suite file (its data set, families, configurations and batch sizes)")
    ap.add_argument("--events", type=int, default=1000, help="showers of the suite's data set to train on (default 1000)")
    ap.add_argument("--steps", type=int, default=12, help="steps timed per family (default 12)")
    ap.add_argument("--modes", default="eager", help="comma-separated: eager (torch's operations one by one), compile (train.compile = true); default eager")
    ap.add_argument("--gpu-result", help="a suite result trained on a GPU (benchmarks/results/NAME.json): time per operation")
    ap.add_argument("--out", required=True, help="result name: writes benchmarks/results/OUT.json")
    args = ap.parse_args()
    modes = args.modes.split(",")
    for mode in modes:
        if mode not in ("eager", "compile"):
            near = difflib.get_close_matches(mode, ["eager", "compile"], n=1)
            ap.error(f"--modes: unknown mode {mode!r}" + (f"; did you mean {near[0]!r}?" if near else "; the modes are eager and compile"))
    suite = load_suite(args.suite)
    base = Path(suite["_path"]).parent if "_path" in suite else None
    ds = suite["datasets"][0]
    data = load_dataset(ds, base)[: args.events]
    gpu: dict[str, dict[str, Any]] = {}
    if args.gpu_result:
        payload = json.loads((RESULTS / f"{args.gpu_result}.json").read_text())
        gpu = {r["label"]: r for r in payload["results"] if "error" not in r}
    torch.manual_seed(0)
    rows = []
    for spec, mode in ((s, m) for s in suite["surrogates"] for m in modes):
        if spec["family"] == "gaussian":
            continue  # a closed form: no training steps
        label = spec.get("label", spec["family"])
        batch_size = int(spec.get("train", {}).get("batch_size", 256))
        row: dict[str, Any] = {"label": label, "family": spec["family"], "batch_size": batch_size, "compile": mode == "compile",
                               **step_profile(spec, data, batch_size, args.steps, compile=mode == "compile")}
        g = gpu.get(label) if mode == "eager" else None  # the GPU result ran eagerly
        if g is not None and g["train"].get("samples_per_s"):
            ms = 1e3 * batch_size / g["train"]["samples_per_s"]
            row["gpu"] = {"device": g["train"].get("device"), "ms_per_step": ms, "us_per_op": 1e3 * ms / row["ops_step"],
                          "fraction_of_matmul_flops": g["train"].get("fraction_of_matmul_flops")}
        rows.append(row)
        print(json.dumps({k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items() if k != "gpu"}
                         | ({"gpu_us_per_op": round(row["gpu"]["us_per_op"], 2)} if "gpu" in row else {})), flush=True)
    path = write_result(args.out, {
        "suite": suite.get("name"), "events": args.events, "machine": machine(), "gpu_result": args.gpu_result,
        "protocol": "CPU training steps at the suite's batch size; ATen ops of one step after the timed ones (torch.profiler, "
                    "nested calls included); ops_family = the family's train_step alone; GPU ms per step = batch size / the GPU result's samples/s",
        "rows": rows,
    })
    print(path)


if __name__ == "__main__":
    main()
