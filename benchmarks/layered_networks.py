"""The VAE's dense and layer-structured networks side by side: weights, training step, sampling time.

For each geometry given, builds the W/Si suite's VAE (the ``wsi_electron`` preset) twice,
``network="dense"`` and ``network="layered"``, trains each for ``--steps`` optimiser steps
(batch 128, augmentation off) on ``--events`` showers, then times ``sample`` at batch 1,000
on the conditions of as many showers (one CPU thread throughout, as ``physgen bench`` times
generation). Quality is not measured here: that takes a suite's training budget (the
``vae_layered`` entry of ``calo_wsi.toml`` and ``heldout_eval.py``)::

    python benchmarks/layered_networks.py --ds3 ds3_synthetic_100k.h5 --out layered_networks

The W/Si showers come from the shared data; ``--ds3`` adds a dataset-3-geometry file
(``dataset3_synthetic.py``). Writes ``benchmarks/results/OUT.json`` (and prints each row).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

import physgen
from physgen.bench import geant4_ratio, generation_timing
from physgen.calorimeter import ShowerModel

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SHARED_DATA, machine, write_result  # noqa: E402


def measure(path: Path, network: str, events: int, steps: int) -> dict:
    data = physgen.read(path, stop=2 * events)
    train, test = data[:events], data[events:]
    model = ShowerModel("vae", preset="wsi_electron", network=network)
    history = model.fit(train, steps=steps, batch_size=128, val_fraction=0.0, progress=False, seed=0)
    trained = [h for h in history if h.get("samples")]
    rate = sum(h["samples"] for h in trained) / sum(h["time_s"] for h in trained)
    timing = generation_timing(model, test, batches=(1000,))
    assert model.inner is not None
    row = {
        "file": path.name, "voxels": int(data.x.shape[1]), "network": network, "grid": list(model.structure(int(data.x.shape[1])).grid or ()),
        "parameters": sum(p.numel() for p in model.inner.parameters()), "steps": steps,
        "ms_per_step": 128 / rate * 1e3, "ms_per_shower_sampled": timing["batch_1000"]["seconds_per_event"] * 1e3,
    }
    geant4 = geant4_ratio(test, timing["batch_1000"]["seconds_per_event"])
    if geant4 is not None and "synthetic" not in path.name:  # a synthetic set's Geant4 times are its source showers'
        row["geant4_speedup"] = geant4["all"]["speedup"]
    print(row, flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ds3", type=Path, help="a dataset-3-geometry file (dataset3_synthetic.py) to measure as well")
    ap.add_argument("--events", type=int, default=1000, help="showers to train on, and as many to sample (default 1000)")
    ap.add_argument("--steps", type=int, default=30, help="optimiser steps timed (default 30)")
    ap.add_argument("--out", required=True, help="result name: writes benchmarks/results/OUT.json")
    args = ap.parse_args()
    torch.set_num_threads(1)
    files = [SHARED_DATA / "wsi_electron_1-100GeV.h5", *([args.ds3] if args.ds3 else [])]
    rows = [measure(path, network, args.events, args.steps) for path in files for network in ("dense", "layered")]
    write_result(args.out, {"machine": machine(), "threads": 1, "batch_size": 128, "rows": rows})


if __name__ == "__main__":
    main()
