"""The diffusion's quality against its sampling cost: a step scan on one trained model.

Issue #5 asks for the diffusion's smallest good step count. This loads a trained
diffusion surrogate (by default the one `benchmarks/suites/calo_pbwo4_30min.toml`
saves), samples the 6,000 held-out PbWO4 conditions with each sampler and step
count, and records per setting: the classifier AUC (all 6,000 Geant4 showers
against 6,000 generated, a harsher protocol than the suite's 3,000 + 3,000 at
paired conditions), how many of the 195 high-level features it reproduces better
than the Gaussian baseline, the mean separation power, and the cost per shower on
one CPU thread (batch 2,000 and 10,000) as a ratio to Geant4's CPU time per event
(stored in the data) overall and per energy decade. A setting is STEPS:SAMPLER or
STEPS:SAMPLER:PRECISION (fp32 or bf16: the network's matrix products under
bfloat16 autocast). The readout cuts are re-calibrated on the training split for
each setting, since they are fitted to one sampler's output.

    python benchmarks/diffusion_steps.py runs/calo_pbwo4_30min/models/pbwo4_20k__diffusion \
        --out benchmarks/results/diffusion_steps.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from physgen.bench import _load
from physgen.metrics.calorimeter import high_level_features
from physgen.metrics.classifier import classifier_two_sample
from physgen.metrics.evaluate import _classifier_input
from physgen.metrics.histograms import separation_power
from physgen.surrogates import create, load

SETTINGS = "25:heun,15:heun,10:heun,8:euler,12:euler,16:euler,20:euler,30:euler"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", help="a saved diffusion surrogate trained on the calo_pbwo4 split")
    ap.add_argument("--settings", default=SETTINGS, help="comma-separated STEPS:SAMPLER[:PRECISION]")
    ap.add_argument("--out", default="benchmarks/results/diffusion_steps.json")
    args = ap.parse_args()
    torch.set_num_threads(2)
    data = _load({"source": "shared:pbwo4_gamma_1-100GeV.h5", "name": "pbwo4_20k"}, None)
    train, test = data.split((0.7, 0.3), seed=0)  # the suites' split
    model = load(args.model)
    gauss = create("gaussian")
    gauss.fit(train, progress=None, seed=0)
    real = high_level_features(test)
    sp_gauss = {k: separation_power(real[k], v).value for k, v in high_level_features(gauss.sample(test.cond, seed=0)).items()}
    e_inc = test.cond[:, 0].double().numpy()
    g4 = np.asarray(test.aux["geant4_cpu_s"], dtype=np.float64)
    decades = {"all": np.ones_like(e_inc, bool), "1-10GeV": e_inc < 1e4, "10-100GeV": e_inc >= 1e4}
    rows = []
    for item in args.settings.split(","):
        steps, sampler, precision = (item.split(":") + ["fp32"])[:3]
        model.steps = int(steps)
        model.config.update(steps=int(steps), sampler=sampler, sample_precision=precision)
        # the readout cuts are fitted to one sampler's pre-cut output: refit them for this one
        model.calibrate_readout(train, seed=0)
        gen = model.sample(test.cond, seed=0)
        torch.set_num_threads(1)
        per_shower = {}
        for batch in (2000, 10_000):
            cond = test.cond[torch.arange(batch) % len(test)]
            t0 = time.perf_counter()
            model.sample(cond, seed=1, batch_size=batch)
            per_shower[batch] = (time.perf_counter() - t0) / batch
        torch.set_num_threads(2)
        hg = high_level_features(gen)
        sp = {k: separation_power(real[k], hg[k]).value for k in real}
        auc = classifier_two_sample(_classifier_input(test), _classifier_input(gen), epochs=40, n_bootstrap=2)["auc"]
        row = {
            "steps": int(steps), "sampler": sampler, "precision": precision,
            "network_evaluations": 2 * int(steps) - 1 if sampler == "heun" else int(steps),
            "seconds_per_shower_1_thread": per_shower[2000],
            "speedup_vs_geant4": {k: float(g4[m].mean() / per_shower[2000]) for k, m in decades.items()},
            "seconds_per_shower_1_thread_batch_10000": per_shower[10_000],
            "speedup_vs_geant4_batch_10000": {k: float(g4[m].mean() / per_shower[10_000]) for k, m in decades.items()},
            "classifier_auc": auc.value, "classifier_auc_error": auc.error,
            "beats_gaussian_on": int(sum(sp[k] < sp_gauss[k] for k in sp)), "features": len(sp),
            "mean_separation_power": float(np.mean(list(sp.values()))),
            "gaussian_mean_separation_power": float(np.mean(list(sp_gauss.values()))),
        }
        rows.append(row)
        print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}), flush=True)
    out = {
        "model": str(args.model), "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "torch": torch.__version__},
        "protocol": "6,000 held-out Geant4 showers vs 6,000 generated at their conditions; timing on 1 thread, batch 2,000 (speedup_vs_geant4) and 10,000",
        "rows": rows,
    }
    path = Path(args.out)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(out, indent=1))
    tmp.replace(path)


if __name__ == "__main__":
    main()
