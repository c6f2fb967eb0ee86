"""Re-fit a suite's saved models' calibrations on their training showers, optionally turning the hit or value calibration or the cuts' floor on or off, or re-binning them in energy.

Models saved before ``hit_calibration`` existed (or with it off) sample as they always
did; this script reloads them (``RUN/models/DATASET__LABEL``), re-draws the suite's
training split (its seed and split), runs :meth:`Surrogate.recalibrate` and saves the
result under ``OUT/models``, where ``heldout_eval.py`` can judge it next to the
original::

    python benchmarks/recalibrate.py benchmarks/suites/calo_wsi.toml runs/calo_wsi \\
        --labels vae,wgan --hit-calibration on --out runs/calo_wsi_hitcal

The Gaussian (the baseline every comparison needs) is linked into ``OUT`` unchanged.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from physgen.bench import _load, load_suite
from physgen.surrogates import load


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("suite", help="the suite file the models were trained with")
    ap.add_argument("run", type=Path, help="the suite run folder (holding models/DATASET__LABEL)")
    ap.add_argument("--labels", required=True, help="comma-separated surrogate labels to recalibrate")
    ap.add_argument("--hit-calibration", choices=("on", "off", "keep"), default="keep")
    ap.add_argument("--value-calibration", choices=("on", "off", "keep"), default="keep", help="the readout's hit-value map (see ReadoutThreshold)")
    ap.add_argument("--readout-floor", choices=("on", "off", "keep"), default="keep", help="floor the per-voxel cuts at the global threshold (see ReadoutThreshold.calibrate)")
    ap.add_argument("--hit-pool", choices=("voxel", "azimuthal"), help="one hit-shift line per voxel or per azimuthal orbit (default: the model's setting)")
    ap.add_argument("--readout-bins", type=int, help="incident-energy bins of the read-out calibration (default: the model's setting, 4 unless set)")
    ap.add_argument("--out", required=True, type=Path, help="run folder to save the recalibrated models in")
    args = ap.parse_args(argv)
    suite = load_suite(args.suite)
    base = Path(suite["_path"]).parent
    seed = int(suite.get("seed", 0))
    labels = [s.strip() for s in args.labels.split(",") if s.strip()]
    switch = {"on": True, "off": False, "keep": None}
    hit, values, floor = switch[args.hit_calibration], switch[args.value_calibration], switch[args.readout_floor]
    for ds in suite["datasets"]:
        train, _ = _load(ds, base).split(tuple(ds.get("split", [0.7, 0.3])), seed=seed)  # run_one's split
        gaussian = args.run / "models" / f"{ds['name']}__gaussian"
        link = args.out / "models" / gaussian.name
        if gaussian.exists() and not link.exists():
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(gaussian.resolve())
        for label in labels:
            path = args.run / "models" / f"{ds['name']}__{label}"
            if not path.exists():
                raise SystemExit(f"{path}: no saved model")
            model = load(path)
            if args.hit_pool:
                model.config["hit_pool"] = args.hit_pool
            if args.readout_bins is not None:
                model.config["readout_bins"] = args.readout_bins
            t0 = time.perf_counter()
            model.recalibrate(train, seed=seed, hit_calibration=hit, value_calibration=values, readout_floor=floor)
            model.save(args.out / "models" / path.name)
            print(f"{path} -> {args.out / 'models' / path.name}: recalibrated in {time.perf_counter() - t0:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
