"""The training loop's settings, as typed options."""

from __future__ import annotations

import dataclasses
from typing import Literal

from physgen.errors import ConfigError
from physgen.options import Options, option

__all__ = ["TrainConfig"]


@dataclasses.dataclass(frozen=True)
class TrainConfig(Options):
    """Settings of the shared training loop (``model.fit(data, **settings)``, a suite's ``train`` table)."""

    epochs: int = option(50, "passes over the training split", ge=1)
    steps: int | None = option(None, "train for this many optimiser steps instead, whatever the epochs (the last epoch may be partial): the same model for the same seed on any machine", ge=1)
    batch_size: int = option(256, "global batch size (split across ranks under torchrun)", ge=1)
    lr: float = option(1e-3, "Adam(W) learning rate (the WGAN's default is 1e-4, for critic and generator)", gt=0)
    weight_decay: float = option(0.0, "AdamW weight decay (0: plain Adam)", ge=0)
    schedule: Literal["cosine", "constant"] = option("cosine", "learning-rate schedule: cosine to 0 over the run (after the warm-up), or constant")
    warmup_epochs: int = option(0, "epochs of linear learning-rate warm-up", ge=0)
    grad_clip: float | None = option(5.0, "clip the global gradient norm to this (None: off)", gt=0)
    val_fraction: float = option(0.1, "share of the data held out for validation and early stopping (0: none)", ge=0, lt=1)
    augment: int = option(1, "train on this many copies of each event under the data's symmetry (calorimeter showers: azimuthal rotations and mirrors; 1: off)", ge=1)
    patience: int | None = option(None, "stop after this many epochs without a better validation loss and restore the best weights (None: train every epoch)", ge=1)
    device: str = option("auto", "'cpu', 'cuda', 'cuda:N' or 'auto' (a CUDA device where there is one)")
    precision: Literal["fp32", "bf16", "fp16"] = option("fp32", "autocast precision of training ('fp16' on CUDA only, with loss scaling)")
    seed: int = option(0, "seeds initialisation, shuffling and every random draw of training", ge=0)
    ema_decay: float | None = option(None, "keep an exponential moving average of the weights with this decay, validate and end with it (None: off)", gt=0, lt=1)
    checkpoint_dir: str | None = option(None, "write resumable epoch-NNNNNN checkpoints and LATEST here (None: none)")
    checkpoint_every: int = option(1, "epochs between checkpoints", ge=1)
    resume: bool = option(False, "continue from checkpoint_dir's latest checkpoint if there is one")
    time_budget_s: float | None = option(None, "stop cleanly after this much wall time, a cap that makes the result depend on the machine's speed where it cuts the run short; without steps the cosine schedule anneals over it too (None: no cap)", gt=0)
    divergence_factor: float = option(1e6, "stop with TrainingDivergedError when a batch's loss exceeds this multiple of the first batch's", gt=1)
    divergence_median_factor: float | None = option(1e3, "stop with TrainingDivergedError when a batch's loss exceeds this multiple of the median of the last 200 (None: off)", gt=1)
    progress: bool | None = option(None, "show a tqdm progress bar (None: only on a terminal)")
    compile: bool = option(False, "compile each training step (its losses and its update) with torch.compile: a fraction of the operations a step, which a GPU's step time follows; the first steps wait for the compiler; a CPU needs a C++ compiler, a GPU Triton")

    def check(self, where: str) -> None:
        if self.resume and self.checkpoint_dir is None:
            raise ConfigError("resume=True needs checkpoint_dir", where=where, key="resume")
        if self.device != "auto":
            import torch

            try:
                torch.device(self.device)
            except RuntimeError as exc:
                raise ConfigError(f"option 'device' must be 'cpu', 'cuda', 'cuda:N' or 'auto'; got {self.device!r}", where=where, key="device") from exc
