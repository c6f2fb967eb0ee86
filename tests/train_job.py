"""A training job the loop tests run in subprocesses (SIGKILL-and-resume, torchrun).

    python tests/train_job.py OUT [--epochs N] [--kill-after K] [--resume] [--no-checkpoints]
    torchrun --standalone --nproc_per_node=2 tests/train_job.py OUT --no-checkpoints
    ... [--family flow --config '{"two_stage": true}'] [--every-rank] [--stream FILE] [--compile]

Trains a shower model (the gradient-solved Gaussian by default) on the first 800 embedded Geant4 showers and
writes OUT/final (a saved surrogate) and OUT/result.json (final validation loss).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
from pathlib import Path

import torch

import physgen
from physgen.calorimeter import ShowerModel


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out", type=Path)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--kill-after", type=int, default=None)
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--no-checkpoints", action="store_true")
    ap.add_argument("--family", default="gaussian")
    ap.add_argument("--config", default="{}", help="the family's hyperparameters as JSON")
    ap.add_argument("--every-rank", action="store_true", help="each rank saves OUT/final-rank{R}")
    ap.add_argument("--stream", type=Path, default=None, help="train on this HDF5 file, streamed block by block, instead")
    ap.add_argument("--compile", action="store_true", help="train with compile=True")
    args = ap.parse_args()
    torch.set_num_threads(1)  # identical summation order in every process
    data = physgen.load_default()[:800]
    config = json.loads(args.config)
    model = ShowerModel(args.family, solver="gradient", **config) if args.family == "gaussian" else ShowerModel(args.family, **config)

    def maybe_die(epoch: int, record: dict) -> None:
        if args.kill_after is not None and epoch == args.kill_after:
            os.kill(os.getpid(), signal.SIGKILL)  # no cleanup, no atexit: a real crash

    history = model.fit(
        data if args.stream is None else args.stream,
        epochs=args.epochs,
        batch_size=128,
        lr=3e-3,
        seed=7,
        progress=False,
        checkpoint_dir=None if args.no_checkpoints else args.out / "run",
        resume=args.resume,
        on_epoch_end=maybe_die,
        compile=args.compile,
    )
    if args.every_rank:
        model.save(args.out / f"final-rank{os.environ.get('RANK', '0')}")
    if int(os.environ.get("RANK", "0")) == 0:
        model.save(args.out / "final")
        world = int(os.environ.get("WORLD_SIZE", "1"))
        (args.out / "result.json").write_text(json.dumps({"val_loss": history[-1]["val_loss"], "world": world, "epochs": len(history)}))
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
