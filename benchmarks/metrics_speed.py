"""Metric timings and memory peaks on 50k × 50k showers of the 768-voxel Geant4 PbWO4 set.

    python benchmarks/metrics_speed.py [--n 50000] [--jetnet-python PATH]

Both samples are drawn (with replacement, seeded) from the 20,000 showers of
../shared/data/pbwo4_gamma_1-100GeV.h5. Each metric runs in a fresh process;
its memory peak is the process's peak resident set while the metric runs
(Linux's VmHWM, reset through /proc/self/clear_refs once the inputs are ready)
minus the resident set at that moment. The yardstick is this machine's dense float32/float64 matmul
rate, measured in the same run. With --jetnet-python (a Python where jetnet
imports), jetnet's fpd/kpd run on the same feature arrays for a side-by-side time.

Writes benchmarks/results/metrics_speed.json.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, SHARED_DATA, machine, matmul_gflops, write_result  # noqa: E402


def _load(n: int, seed: int):
    import physgen

    full = physgen.read(SHARED_DATA / "pbwo4_gamma_1-100GeV.h5")
    rng = np.random.default_rng(seed)
    return full[rng.integers(0, len(full), n)], full[rng.integers(0, len(full), n)]


def _features(a, b):
    from physgen.metrics import high_level_features

    fa, fb = high_level_features(a), high_level_features(b)
    names = list(fa)
    return np.stack([fa[k] for k in names], 1), np.stack([fb[k] for k in names], 1), names


def _rss_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _reset_peak() -> float:
    """Reset the peak-RSS counter; return the current RSS (MB)."""
    Path("/proc/self/clear_refs").write_text("5")
    return _rss_mb("VmRSS")


def _job(task: str, n: int, queue: mp.Queue) -> None:
    torch.set_num_threads(2)
    a, b = _load(n, seed=1)
    from physgen import metrics as M

    base = _reset_peak()

    t0 = time.perf_counter()
    out: dict = {}
    if task == "high_level_features":
        _features(a, b)
    else:
        fa, fb, names = _features(a, b)
        base = _reset_peak()
        t0 = time.perf_counter()
        if task == "w1_and_separation_per_feature":
            for i in range(fa.shape[1]):
                M.wasserstein1(fa[:, i], fb[:, i], n_bootstrap=0)
                M.separation_power(fa[:, i], fb[:, i], n_bootstrap=0)
            out["n_features"] = fa.shape[1]
        elif task == "fpd_features":
            r = M.fpd(fa, fb)
            out.update(value=r.value, error=r.error)
        elif task == "kpd_features":
            r = M.kpd(fa, fb)
            out.update(value=r.value, error=r.error)
        elif task == "mmd_features_full":
            mean, std = fa.mean(0), fa.std(0) + 1e-12
            r = M.mmd2((fa - mean) / std, (fb - mean) / std, n_batches=0, dtype=torch.float32)
            out.update(value=r.value, kernel_evals=3 * n * n)
        elif task == "mmd_voxels_full":
            r = M.mmd2(a.x, b.x, n_batches=0, dtype=torch.float32)
            out.update(value=r.value, kernel_evals=3 * n * n, dim=a.x.shape[1])
        elif task == "sliced_w1_voxels":
            r = M.sliced_wasserstein(a.x.numpy(), b.x.numpy(), n_projections=128)
            out.update(value=r.value)
        elif task == "classifier_voxels":
            e_a, e_b = a.cond.numpy(), b.cond.numpy()
            xa = np.concatenate([a.x.numpy() / e_a, np.log10(e_a)], 1)
            xb = np.concatenate([b.x.numpy() / e_b, np.log10(e_b)], 1)
            r = M.classifier_two_sample(xa, xb, epochs=10)
            out.update(auc=r["auc"].value)
    out["seconds"] = time.perf_counter() - t0
    out["peak_rss_increase_mb"] = _rss_mb("VmHWM") - base
    queue.put(out)


def _jetnet(python: str, n: int) -> dict:
    a, b = _load(n, seed=1)
    fa, fb, _ = _features(a, b)
    with tempfile.TemporaryDirectory() as tmp:
        np.save(f"{tmp}/a.npy", fa)
        np.save(f"{tmp}/b.npy", fb)
        code = (
            "import json,time,numpy as np,warnings;warnings.simplefilter('ignore');"
            "from jetnet.evaluation import gen_metrics as g;"
            f"a=np.load('{tmp}/a.npy');b=np.load('{tmp}/b.npy');"
            "t=time.perf_counter();f=g.fpd(a,b);tf=time.perf_counter()-t;"
            "t=time.perf_counter();k=g.kpd(a,b);tk=time.perf_counter()-t;"
            "print(json.dumps({'fpd':[float(f[0]),float(f[1])],'fpd_seconds':tf,'kpd':[float(k[0]),float(k[1])],'kpd_seconds':tk}))"
        )
        r = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=3000)
        if r.returncode != 0:
            return {"error": r.stderr[-500:]}
        return json.loads(r.stdout.strip().splitlines()[-1])


TASKS = [
    "high_level_features",
    "w1_and_separation_per_feature",
    "fpd_features",
    "kpd_features",
    "mmd_features_full",
    "sliced_w1_voxels",
    "classifier_voxels",
    "mmd_voxels_full",
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=50_000)
    ap.add_argument("--tasks", default=",".join(TASKS))
    ap.add_argument("--jetnet-python", default=None)
    args = ap.parse_args()
    torch.set_num_threads(2)
    gf32, gf64 = matmul_gflops(dtype=torch.float32), matmul_gflops(dtype=torch.float64)
    # a run of some tasks updates the committed file instead of replacing it
    previous = RESULTS / "metrics_speed.json"
    results: dict = json.loads(previous.read_text()).get("results", {}) if previous.exists() and args.tasks != ",".join(TASKS) else {}
    ctx = mp.get_context("spawn")
    for task in args.tasks.split(","):
        q = ctx.Queue()
        p = ctx.Process(target=_job, args=(task, args.n, q))
        p.start()
        res = q.get()
        p.join()
        if "kernel_evals" in res:
            d = res.get("dim", 195)
            # each Gaussian kernel value costs ~2·d flops in the a·bᵀ product
            res["fraction_of_matmul_peak"] = 2 * d * res["kernel_evals"] / res["seconds"] / 1e9 / gf32
        results[task] = res
        print(f"{task:32s} {res['seconds']:8.2f} s  peak +{res['peak_rss_increase_mb']:.0f} MB", flush=True)
    payload = {
        "benchmark": "metrics_speed",
        "data": "pbwo4_gamma_1-100GeV.h5 (Geant4), 768 voxels; 195 high-level features",
        "n_per_sample": args.n,
        "machine": machine(),
        "matmul_gflops_float32": gf32,
        "matmul_gflops_float64": gf64,
        "results": results,
    }
    if args.jetnet_python and ("fpd_features" in args.tasks or "kpd_features" in args.tasks):
        jn = _jetnet(args.jetnet_python, args.n)
        payload["jetnet"] = jn
        if "fpd_seconds" in jn:
            payload["speedup_vs_jetnet"] = {
                "fpd": jn["fpd_seconds"] / results["fpd_features"]["seconds"] if "fpd_features" in results else None,
                "kpd": jn["kpd_seconds"] / results["kpd_features"]["seconds"] if "kpd_features" in results else None,
            }
        print("jetnet", jn)
    print(f"wrote {write_result('metrics_speed', payload)}")


if __name__ == "__main__":
    main()
