"""A synthetic set on the CaloChallenge dataset-3 geometry, for memory and speed at that size (not fidelity).

Dataset 3 has 45 layers × 50 angular × 18 radial bins (40,500 voxels; 100,000 showers are 16 GB
as float32). There are no dataset-3 Geant4 showers on this machine, so this script makes showers
of that geometry from the W/Si Geant4 showers (dataset-2 binning: 45 × 16 × 9 = 6,480 voxels):

- each W/Si shower is first rotated or mirrored by a random element of its azimuthal symmetry
  group, so the 100,000 showers made from 18,000 are distinct;
- each dataset-2 voxel's energy is then split over the dataset-3 voxels it covers.
  Radially, every dataset-2 bin is two dataset-3 bins (the edges nest); the split follows an
  energy density per unit area that falls exponentially in r inside the bin, with the slope of
  the mean shower's density between this bin and the next (per layer; the last bin uses the one
  before it). Angularly, 16 bins do not nest in 50: the energy is shared by the overlap of the
  angular intervals (density uniform in α, as it is on average for a symmetric shower).
  Energy is conserved voxel by voxel (each column of the split matrix sums to 1).

The showers keep their incident energies and Geant4 CPU times. They are a scale test: a model
trained on them is judged for memory and speed only; their fine structure is interpolated, not
simulated. ::

    python benchmarks/dataset3_synthetic.py OUT.h5 --n 100000

Writes a CaloChallenge file (uncompressed, written chunk by chunk: memory is one chunk).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SHARED_DATA  # noqa: E402


def _interval_overlap(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """[len(a)-1, len(b)-1] lengths of the overlaps of the intervals between consecutive edges ``a`` and ``b``."""
    lo = np.maximum(a[:-1, None], b[None, :-1])
    hi = np.minimum(a[1:, None], b[None, 1:])
    return np.clip(hi - lo, 0, None)


def split_matrix(source, target, mean_shower: np.ndarray) -> torch.Tensor:
    """Sparse [target voxels, source voxels] matrix: each source voxel's energy over the target voxels it covers."""
    rows, cols, vals = [], [], []
    for layer, (ls, lt) in enumerate(zip(source.layers, target.layers, strict=True)):
        rs, rt = np.asarray(ls.r_edges), np.asarray(lt.r_edges)
        s0, t0 = source.layer_slice(layer).start, target.layer_slice(layer).start
        # radial: the share of each source bin's energy in each target bin under an exponential density in r
        area = np.pi * np.diff(rs**2)
        per_bin = mean_shower[source.layer_slice(layer)].reshape(ls.n_alpha, ls.n_r).sum(0)
        density = np.maximum(per_bin / area, 1e-12)
        radial = np.zeros((lt.n_r, ls.n_r))
        for i in range(ls.n_r):
            j = i + 1 if i + 1 < ls.n_r else i - 1
            centre = 0.5 * (rs[i] + rs[i + 1])
            slope = np.log(density[j] / density[i]) / (0.5 * (rs[j] + rs[j + 1]) - centre)  # d ln ρ / dr
            r = np.linspace(rs[i], rs[i + 1], 201)
            w = np.exp(slope * (r - centre)) * r  # energy per dr: density × circumference
            for k in range(lt.n_r):
                inside = (r >= rt[k]) & (r <= rt[k + 1])
                if inside.sum() > 1:
                    radial[k, i] = np.trapezoid(w[inside], r[inside])
            radial[:, i] /= radial[:, i].sum()
        # angular: overlap of the bins' intervals, as fractions of the source bin
        angular = _interval_overlap(np.linspace(0, 1, lt.n_alpha + 1), np.linspace(0, 1, ls.n_alpha + 1)) * ls.n_alpha
        block = np.kron(angular, radial)  # voxel index = alpha * n_r + r, in both geometries
        t, s = np.nonzero(block)
        rows.append(t + t0)
        cols.append(s + s0)
        vals.append(block[t, s])
    index = torch.as_tensor(np.stack([np.concatenate(rows), np.concatenate(cols)]))
    return torch.sparse_coo_tensor(index, torch.as_tensor(np.concatenate(vals), dtype=torch.float32), (target.n_voxels, source.n_voxels)).coalesce()


def main() -> None:
    import physgen
    from physgen.calorimeter import azimuthal_rows
    from physgen.data import Data, official_binning
    from physgen.io import open_writer

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--source", type=Path, default=SHARED_DATA / "wsi_electron_1-100GeV.h5")
    parser.add_argument("--chunk", type=int, default=2_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    t0 = time.perf_counter()
    showers = physgen.read(args.source)
    source, target = showers.geometry, official_binning(40_500)
    matrix = split_matrix(source, target, showers.x.double().mean(0).numpy())
    group = 2 * source.azimuthal_order
    rows = azimuthal_rows(showers, group, seed=args.seed)  # every rotation and mirror of every shower, gathered on demand
    pick = np.random.default_rng(args.seed).choice(len(rows), args.n, replace=args.n > len(rows))
    schema = dataclasses.replace(showers.schema, geometry=target)
    with open_writer(args.out, schema, compression=None) as writer:
        for start in range(0, args.n, args.chunk):
            idx = pick[start : start + args.chunk]
            x, cond = rows.take(idx)
            fine = torch.sparse.mm(matrix, x.T).T.contiguous()
            event = idx % len(showers)
            aux = {k: v[event] for k, v in showers.aux.items()}
            writer.append(Data(fine, schema, cond=cond, aux=aux, validate=False))
            print(f"{min(start + args.chunk, args.n)} / {args.n} showers, {time.perf_counter() - t0:.0f} s", flush=True)


if __name__ == "__main__":
    main()
