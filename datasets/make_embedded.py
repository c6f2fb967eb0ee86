"""Recipe: cut the embedded default sample out of the project's Geant4 PbWO4 photon file.

    python datasets/make_embedded.py ../shared/data/pbwo4_gamma_1-100GeV.h5

Takes a seeded random subset of events (the source energies are log-uniform,
so the subset is too), copies `incident_energies`, `showers` and the `aux`
group (Geant4 CPU time per event, geometry attributes) bit for bit, and writes
`physgen/data/embedded/pbwo4_gamma_2k.h5` plus the binning XML beside it.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import h5py
import numpy as np

OUT = Path(__file__).resolve().parents[1] / "physgen" / "data" / "embedded"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("source", type=Path)
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=2024)
    args = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    target = OUT / "pbwo4_gamma_2k.h5"
    with h5py.File(args.source, "r") as src:
        n_total = src["showers"].shape[0]
        rows = np.sort(np.random.default_rng(args.seed).choice(n_total, size=args.n, replace=False))
        with h5py.File(target, "w") as dst:
            opts = {"compression": "gzip", "compression_opts": 9, "shuffle": True}
            dst.create_dataset("incident_energies", data=src["incident_energies"][rows], **opts)
            dst.create_dataset("showers", data=src["showers"][rows], chunks=(250, 768), **opts)
            aux = dst.create_group("aux")
            for key, ds in src["aux"].items():
                aux.create_dataset(key, data=ds[rows])
            for key, value in src["aux"].attrs.items():
                aux.attrs[key] = value
            aux.attrs["source_file"] = args.source.name
            aux.attrs["source_rows_seed"] = args.seed
    shutil.copy(args.source.parent / "binning_pbwo4_gamma.xml", OUT / "binning_pbwo4_gamma.xml")
    print(f"wrote {target} ({target.stat().st_size / 1e6:.1f} MB, {args.n} of {n_total} events)")


if __name__ == "__main__":
    main()
