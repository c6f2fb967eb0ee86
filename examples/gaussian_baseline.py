"""Train the Gaussian baseline on the embedded Geant4 showers and write samples as CaloChallenge HDF5.

    python examples/gaussian_baseline.py [OUT_DIR]

Writes OUT_DIR/model (a checkpoint) and OUT_DIR/gaussian_samples.h5, one generated
shower for each incident energy of the held-out Geant4 showers, readable by the
CaloChallenge evaluator (h5py: `incident_energies`, `showers`).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import physgen
from physgen.calorimeter import ShowerModel


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    showers = physgen.load_default()
    train, test = showers.split((0.8, 0.2), seed=0)
    model = ShowerModel("gaussian")
    history = model.fit(train)
    print(f"validation NLL per dim: {history[0]['val_loss']:.3f} -> {history[-1]['val_loss']:.3f}")
    model.save(out / "model")

    t0 = time.perf_counter()
    generated = model.sample(test.cond, seed=0)
    per_shower = (time.perf_counter() - t0) / len(generated)
    geant4 = test.aux["geant4_cpu_s"].mean()
    physgen.write(generated, out / "gaussian_samples.h5")

    ratio_real = (test.x.sum(1) / test.cond[:, 0]).mean()
    ratio_gen = (generated.x.sum(1) / generated.cond[:, 0]).mean()
    print(f"E_tot/E_inc: Geant4 {ratio_real:.3f}, Gaussian {ratio_gen:.3f}")
    print(f"generation {1e6 * per_shower:.0f} µs/shower vs Geant4 {1e3 * geant4:.1f} ms/event: {geant4 / per_shower:.0f}x faster")
    print(f"wrote {out / 'gaussian_samples.h5'}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("runs/gaussian_example"))
