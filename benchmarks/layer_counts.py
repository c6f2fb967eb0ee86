"""How a suite's W/Si models share a layer's hits among showers, and what a per-layer hit-count map would change.

The read-out's per-voxel cuts give each voxel Geant4's occupancy and its layer threshold gives
each layer Geant4's read-out rate, but neither sets how many hits a read-out layer has: the
VAE and the WGAN put layer 44's hits one to a shower (session 22). This script reloads a
suite's saved models (``RUN/models/DATASET__LABEL``) and, on the showers ``--events``:

1. counts one layer's hits per energy range: Geant4's, the model's as read out, and the model's
   pre-cut values above the global threshold (the table in docs/surrogates.md);
2. with ``--count-map``, tries a hit-count map that physgen does not have: per energy bin
   of the read-out and layer, a randomised quantile map from the model's hit counts in read-out
   layers to Geant4's, fitted on the suite's training split. A layer gets more hits from its
   largest cut voxels (each the value of the layer's smallest hit) or loses its smallest, and
   is rescaled to its energy, so layer energies and read-out decisions do not change. The
   samples before and after are judged as ``heldout_eval.py`` judges (against the Gaussian).

    python benchmarks/layer_counts.py benchmarks/suites/calo_wsi.toml runs/calo_wsi --labels vae,wgan \\
        --events 6000:8000 --count-map --out layer_counts_wsi_select

Writes ``benchmarks/results/OUT.json`` (and prints each row).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch

from physgen.bench import _compare_to_baseline, _load, load_suite
from physgen.data.transforms import ReadoutThreshold
from physgen.metrics import evaluate
from physgen.surrogates import load

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, write_result  # noqa: E402
from heldout_eval import _events  # noqa: E402

RANGES_GEV = [(1, 10), (10, 20), (20, 32), (32, 50), (50, 70), (70, 100.001)]


def layer_counts(x: torch.Tensor, layer_sizes: list[int]) -> torch.Tensor:
    """Hits (non-zero voxels) per shower and layer ``[N, L]``."""
    return torch.stack([(part > 0).sum(1) for part in torch.split(x, layer_sizes, dim=1)], 1)


def energy_bins(cut: ReadoutThreshold, cond: torch.Tensor) -> torch.Tensor:
    """Each shower's incident-energy bin of the read-out's calibration (as its inverse bins them)."""
    assert cut.edges is not None
    return torch.bucketize(cut._bin_key(cond, len(cond)), torch.tensor(cut.edges, dtype=torch.float64), right=True)


def count_cdfs(counts: torch.Tensor, bins: torch.Tensor, n_bins: int, max_count: int) -> torch.Tensor:
    """``[bins, L, max_count + 1]``: P(count ≤ k | count ≥ 1) per energy bin and layer (all zero where a layer is never hit)."""
    out = torch.zeros(n_bins, counts.shape[1], max_count + 1, dtype=torch.float64)
    for b in range(n_bins):
        cb = counts[bins == b].long()
        h = torch.zeros(counts.shape[1], max_count + 1, dtype=torch.float64)
        h.scatter_add_(1, cb.T, torch.ones(cb.shape[1], len(cb), dtype=torch.float64))
        h[:, 0] = 0
        out[b] = h.cumsum(1) / h.sum(1, keepdim=True).clamp_min(1)
    return out


def map_counts(
    post: torch.Tensor, pre: torch.Tensor, bins: torch.Tensor, model_cdf: torch.Tensor, geant4_cdf: torch.Tensor,
    layer_size: int, generator: torch.Generator,
) -> torch.Tensor:
    """The read-out samples ``post`` with each read-out layer's hit count sent through the quantile map (layers of equal size)."""
    n = len(post)
    x = post.reshape(n, -1, layer_size).clone()
    p = pre.reshape(n, -1, layer_size)
    layers = torch.arange(x.shape[1])[None]
    m = (x > 0).sum(2)
    lo = model_cdf[bins[:, None], layers, (m - 1).clamp_min(0)]
    hi = model_cdf[bins[:, None], layers, m]
    u = lo + torch.rand(m.shape, generator=generator, dtype=torch.float64) * (hi - lo)
    target = geant4_cdf[bins]
    k = torch.searchsorted(target.contiguous(), u[..., None].contiguous()).squeeze(-1).clamp(1, layer_size)
    known = (target[..., -1] > 0) & (model_cdf[bins][..., -1] > 0)
    k = torch.where((m > 0) & known, k, m)
    energy = x.sum(2)
    smallest = torch.where(x > 0, x, torch.full_like(x, math.inf)).min(2).values
    # the hits first (largest first), then the cut voxels by their pre-cut value
    priority = torch.where(x > 0, x + x.amax() + 1, p.clamp_min(0) / (p.amax() + 1))
    rank = priority.argsort(2, descending=True).argsort(2)
    keep = rank < k[..., None]
    x = torch.where(keep, torch.where(x > 0, x, smallest[..., None].expand_as(x)), torch.zeros_like(x))
    total = x.sum(2)
    x = x * torch.where(total > 0, energy / total.clamp_min(1e-300), torch.ones_like(total))[..., None]
    return x.reshape(n, -1)


def range_table(x: torch.Tensor, e_gev: torch.Tensor, layer: int, layer_sizes: list[int]) -> list[dict[str, Any]]:
    """Per energy range: mean hits in ``layer`` and the shares of showers with 0, 1 and ≥ 2 of them."""
    c = layer_counts(x, layer_sizes)[:, layer].double()
    rows = []
    for lo, hi in RANGES_GEV:
        sel = (e_gev >= lo) & (e_gev < hi)
        cs = c[sel]
        rows.append({
            "gev": [lo, round(hi)], "showers": int(sel.sum()), "mean_hits": float(cs.mean()),
            "share_0": float((cs == 0).double().mean()), "share_1": float((cs == 1).double().mean()),
            "share_2_or_more": float((cs >= 2).double().mean()),
        })
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("suite")
    ap.add_argument("run", type=Path)
    ap.add_argument("--labels", required=True, help="comma-separated surrogate labels")
    ap.add_argument("--events", required=True, type=_events, help="START:STOP of the data file (after the suite's events)")
    ap.add_argument("--layer", type=int, default=44)
    ap.add_argument("--count-map", action="store_true", help="also judge the samples with the hit-count map")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    suite = load_suite(args.suite)
    ds = suite["datasets"][0]
    data = _load({k: v for k, v in ds.items() if k != "max_events"}, Path(suite["_path"]).parent)
    used = int(ds.get("max_events") or len(data))
    if args.events == "test" or args.events.start < used:
        raise SystemExit(f"--events must lie after the suite's first {used} events")
    held, seed, metrics = data[args.events], int(suite.get("seed", 0)), dict(suite.get("metrics", {}))
    train = data[:used].split(tuple(ds.get("split", [0.7, 0.3])), seed=seed)[0]
    e_gev = held.cond[:, 0].double() / 1000  # MeV
    t0 = time.perf_counter()
    tables: dict[str, Any] = {}
    results: list[dict[str, Any]] = []
    sizes: list[int] = []
    for label in ["gaussian", *args.labels.split(",")]:
        model = load(args.run / "models" / f"{ds['name']}__{label}")
        cut = next(t for t in model.preprocessing.x_transforms if isinstance(t, ReadoutThreshold))
        assert cut.layer_sizes is not None
        sizes = cut.layer_sizes
        post = model.sample(held.cond, seed=seed)
        if label == "gaussian":
            tables["geant4"] = range_table(held.x.double(), e_gev, args.layer, sizes)
        cut.active = False
        try:
            pre = model.sample(held.cond, seed=seed).x.double()
        finally:
            cut.active = True
        above = (pre >= cut.threshold).double()
        tables[label] = range_table(post.x.double(), e_gev, args.layer, sizes)
        for row, (lo, hi) in zip(tables[label], RANGES_GEV, strict=True):
            sel = (e_gev >= lo) & (e_gev < hi)
            row["pre_cut_hits_above_global_threshold"] = float(layer_counts(above[sel], sizes)[:, args.layer].double().mean())
            if cut.voxel_thresholds is not None:  # the layer's per-voxel cuts that sit at their floor, the global threshold
                at_floor = cut.voxel_thresholds[energy_bins(cut, held.cond[sel])] <= cut.threshold
                row["voxel_cuts_at_floor"] = float(torch.split(at_floor.double(), sizes, dim=1)[args.layer].mean())
        samples = [(label, post)]
        if args.count_map and label != "gaussian":
            if len(set(sizes)) != 1:
                raise SystemExit("the count-map probe needs layers of equal size")
            n_bins = len(cut.edges or []) + 1
            tb = energy_bins(cut, train.cond)
            g_cdf = count_cdfs(layer_counts(train.x, sizes), tb, n_bins, sizes[0])
            m_cdf = count_cdfs(layer_counts(model.sample(train.cond, seed=seed).x, sizes), tb, n_bins, sizes[0])
            mapped = map_counts(post.x.double(), pre, energy_bins(cut, held.cond), m_cdf, g_cdf, sizes[0], torch.Generator().manual_seed(seed))
            samples.append((f"{label}_count_map", post.with_x(mapped.to(post.x.dtype))))
            tables[f"{label}_count_map"] = range_table(mapped, e_gev, args.layer, sizes)
        for name, generated in samples:
            results.append({"dataset": ds["name"], "family": "gaussian" if name == "gaussian" else "probe", "label": name,
                            "evaluation": evaluate(held, generated, seed=seed, **metrics)})
    payload = {"suite": suite.get("name"), "run": str(args.run), "events": f"{args.events.start}:{args.events.stop}",
               "layer": args.layer, "machine": machine(), "results": results}
    _compare_to_baseline(payload)
    gauss = results[0]["evaluation"]["features"]
    for r in results:
        s, f, v = r["evaluation"]["summary"], r["evaluation"]["features"], r.get("vs_gaussian")
        r["sigma_vs_gaussian"] = {
            name: (f[name]["separation_power"]["value"] - gauss[name]["separation_power"]["value"])
            / math.hypot(f[name]["separation_power"]["error"], gauss[name]["separation_power"]["error"])
            for name in (f"width_x_{args.layer}", f"width_r_{args.layer}", f"EC_r_{args.layer}", f"sparsity_{args.layer}")
        }
        print(f"{r['label']}: AUC {s['classifier_auc']['value']:.3f} ± {s['classifier_auc']['error']:.3f}, FPD {s['fpd']['value']:.3f}, "
              f"mean sep. power {r['evaluation']['mean_separation_power']:.4f}"
              + (f", not better than the Gaussian on {v['worse_than_gaussian']}, beyond 2σ on {v['significantly_worse_than_gaussian']}" if v else "")
              + ", σ vs Gaussian " + ", ".join(f"{k} {z:+.1f}" for k, z in r["sigma_vs_gaussian"].items()), flush=True)
        r["evaluation"] = {k: r["evaluation"][k] for k in ("summary", "mean_separation_power", "mean_separation_power_floor")}
    payload["layer_hits"] = tables
    payload["seconds"] = time.perf_counter() - t0
    for name, rows in tables.items():
        top = rows[-1]
        print(f"{name}: layer {args.layer} at 70-100 GeV: mean {top['mean_hits']:.2f}, shares 0/1/≥2 "
              f"{top['share_0']:.2f}/{top['share_1']:.2f}/{top['share_2_or_more']:.3f}")
    print(f"wrote {write_result(args.out, payload)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
