"""One training loop for every gradient-trained family.

Each family supplies its loss (``Surrogate.forward``) and, if it needs more
than one optimiser (a GAN), its own ``train_step``; the loop supplies the
rest: device, mixed precision, gradient clipping, validation split and early
stopping, a learning-rate schedule, a tqdm progress bar with loss and
throughput, a history, seeds, periodic checkpoints, resume, an EMA of the
weights, and DistributedDataParallel under ``torchrun``. A family with a closed
form (the Gaussian) solves instead of looping, after the same split and preparation.

Reproducibility: every random draw of epoch ``e`` (shuffling, noise in the
loss) is seeded from ``(seed, e)``, and checkpoints are taken at epoch
boundaries with optimiser, scheduler, EMA and early-stopping state, so a run
killed at any point and resumed from its last checkpoint ends with the same
weights as an uninterrupted run (on CPU, same thread count).
"""

from __future__ import annotations

import collections
import contextlib
import logging
import math
import os
import statistics
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from physgen.data import Data, Dequantise, Pipeline
from physgen.data.rows import PermutedRows, Rows, epoch_indices, init_rows
from physgen.errors import ConfigError, TrainingDivergedError
from physgen.training import checkpoint as ckpt
from physgen.training.config import TrainConfig
from physgen.training.devices import autocast_dtype, resolve_device
from physgen.training.optim import clip_and_step, set_lr

if TYPE_CHECKING:
    from physgen.surrogates.base import Surrogate

__all__ = ["MAX_EPOCHS_ENV", "TrainContext", "calibration_events", "capped", "prefetch", "train", "training_source"]

log = logging.getLogger(__name__)


#: environment variable that caps every run's epochs (a smoke test of a whole script, suite or pipeline)
MAX_EPOCHS_ENV = "PHYSGEN_MAX_EPOCHS"


def _epoch_cap() -> int | None:
    value = os.environ.get(MAX_EPOCHS_ENV)
    if not value:
        return None
    try:
        cap = int(value)
    except ValueError:
        cap = 0
    if cap < 1:
        raise ConfigError(f"{MAX_EPOCHS_ENV} must be a positive integer; got {value!r}", where="environment", key=MAX_EPOCHS_ENV)
    return cap


def capped(cfg: TrainConfig) -> TrainConfig:
    """``cfg`` with its epochs capped at ``$PHYSGEN_MAX_EPOCHS`` where that is set (CI runs the docs' examples so; a ``steps`` budget is capped at as many epochs)."""
    cap = _epoch_cap()
    return cfg if cap is None or cfg.epochs <= cap else cfg.replace(where="train", epochs=cap)


#: batches whose median |loss| the divergence check compares with, and how many it needs first
MEDIAN_WINDOW, MEDIAN_MIN = 200, 20


def _check_divergence(model: Any, cfg: TrainConfig, state: dict[str, Any], recent: collections.deque[float], loss: float, epoch: int) -> None:
    """Raise :class:`TrainingDivergedError` (and mark ``model``) on a NaN/inf loss or one that exploded.

    Exploded: above ``divergence_factor`` times the first batch's magnitude, or above
    ``divergence_median_factor`` times the running median of the last batches' magnitudes (both at
    least 1). The model is marked ``diverged``, so it refuses to be saved or sampled until refitted.
    """
    where = f"at epoch {epoch + 1}, step {state['step']}"
    name = getattr(model, "name", model.family)
    message = None
    if not math.isfinite(loss):
        message = (f"{name}: training loss became {loss} {where}; lower lr, enable grad_clip, or check the data; "
                   "no checkpoint of the diverged model was written")
    elif abs(loss) > cfg.divergence_factor * state["loss_scale0"]:
        message = (f"{name}: training loss exploded to {loss:.3g} (first batch {state['loss_scale0']:.3g}) {where}; "
                   "lower lr or raise divergence_factor; nothing was saved")
    elif cfg.divergence_median_factor is not None and len(recent) >= MEDIAN_MIN:
        median = max(statistics.median(recent), 1.0)
        if abs(loss) > cfg.divergence_median_factor * median:
            message = (f"{name}: training loss jumped to {loss:.3g}, {abs(loss) / median:.3g}x the median of the last "
                       f"{len(recent)} batches {where}; lower lr or raise divergence_median_factor; nothing was saved")
    if message is not None:
        model.diverged = message
        raise TrainingDivergedError(message)
    recent.append(abs(loss))


def _epoch_seed(seed: int, epoch: int) -> int:
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1, dtype=np.uint64)[0] % (2**62))


class TrainContext:
    """What a family's ``train_step`` needs from the loop: autocast, backward and update, compilation, the config."""

    def __init__(self, cfg: TrainConfig, device: torch.device, module: nn.Module):
        self.cfg, self.device, self.module = cfg, device, module
        self.amp_dtype = autocast_dtype(cfg.precision, device)
        self.scaler = torch.amp.GradScaler("cuda") if cfg.precision == "fp16" else None
        self._compiled: dict[str, Callable[..., Any]] = {}

    def compiled(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        """``fn``, compiled once per run with ``torch.compile`` where the config's ``compile`` asks for it (else ``fn``)."""
        if not self.cfg.compile:
            return fn
        if name not in self._compiled:
            # static shapes: an epoch's last, smaller batch gets a graph of its own (the losses draw noise
            # shaped like the batch, which torch.compile cannot yet trace with a symbolic batch size)
            with warnings.catch_warnings():  # torch's compiler imports its deprecated TorchScript modules
                warnings.filterwarnings("ignore", message=".*torch.jit.script", category=DeprecationWarning)
                self._compiled[name] = torch.compile(fn, dynamic=False)
        return self._compiled[name]

    def autocast(self) -> contextlib.AbstractContextManager:
        """The config's mixed precision (``precision``) for a loss computed inside it."""
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def step(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer, parameters: Any = None) -> None:
        """Backward, clip, step (with loss scaling under fp16)."""
        params = list(parameters) if parameters is not None else [p for g in optimizer.param_groups for p in g["params"]]
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(optimizer)
            if self.cfg.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(params, self.cfg.grad_clip)
            self.scaler.step(optimizer)
            self.scaler.update()
        else:
            loss.backward()
            self.update(optimizer, params)

    def update(self, optimizer: torch.optim.Optimizer, params: list[torch.Tensor]) -> None:
        """Clip the gradients of ``params`` to ``grad_clip`` and step ``optimizer``: compiled into one function with ``compile``.

        Only an optimiser whose learning rates are tensors (``physgen.training.optim.adam(compiled=True)``)
        is compiled; with a plain number, each change of the schedule would recompile.
        """
        if self.cfg.compile and all(isinstance(g["lr"], torch.Tensor) for g in optimizer.param_groups):
            self.compiled(f"update-{id(optimizer)}", clip_and_step)(optimizer, params, self.cfg.grad_clip)
            return
        if self.cfg.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(params, self.cfg.grad_clip)
        optimizer.step()


def check_compiler(device: torch.device) -> None:
    """Raise :class:`ConfigError` where ``compile=True`` cannot work: no C++ compiler for a CPU, no Triton for a GPU."""
    import importlib.util
    import shutil

    if device.type == "cpu" and not any(shutil.which(c) for c in (os.environ.get("CXX", "g++"), "g++", "clang++")):
        raise ConfigError("compile=true on the CPU needs a C++ compiler (g++ or clang++, or $CXX) for torch.compile's "
                          "kernels; install one (Debian: apt install g++) or set compile=false", where="train", key="compile")
    if device.type == "cuda" and importlib.util.find_spec("triton") is None:
        raise ConfigError("compile=true on a CUDA device needs Triton (it comes with torch's CUDA wheels); "
                          "install it or set compile=false", where="train", key="compile")


def _distributed() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's environment, initialising the group once."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, 0
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() and os.environ.get("PHYSGEN_DIST_BACKEND", "") != "gloo" else "gloo"
        dist.init_process_group(backend=backend)
    return dist.get_rank(), world, local


def training_source(data: Data | Rows | str | Path) -> Data | Rows:
    """What :func:`train` takes: ``data`` itself, or a file's path as :class:`~physgen.io.rows.FileRows` (streamed)."""
    if isinstance(data, (str, Path)):
        from physgen.io.rows import FileRows

        return FileRows(data)
    return data


def calibration_events(data: Data | Rows, seed: int = 0) -> Data:
    """The training events post-fit calibrations see: ``data``, or a random sample of a streamed source's blocks."""
    return data.sample(init_rows(len(data), data.width), seed=seed) if isinstance(data, Rows) else data


def prefetch(items: Iterator[Any], depth: int = 2) -> Iterator[Any]:
    """``items``, computed up to ``depth`` ahead in a background thread; its exceptions re-raised here."""
    import queue
    import threading

    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def work() -> None:
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        q.put((item, None), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put((done, None))
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            q.put((done, exc))

    thread = threading.Thread(target=work, daemon=True, name="physgen-prefetch")
    thread.start()
    try:
        while True:
            item, exc = q.get()
            if item is done:
                if exc is not None:
                    raise exc
                return
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # let a blocked producer see the stop
            with contextlib.suppress(queue.Empty):
                q.get_nowait()
            thread.join(timeout=0.05)


def _lr_factor(cfg: TrainConfig, step: int, total: int, steps_per_epoch: int, elapsed_s: float = 0.0) -> float:
    warm = cfg.warmup_epochs * steps_per_epoch
    if warm and step < warm:
        return (step + 1) / warm
    if cfg.schedule == "constant":
        return 1.0
    progress = (step - warm) / max(1, total - warm)
    if cfg.time_budget_s and cfg.steps is None:
        # anneal over whichever runs out first: the epochs or the wall-clock budget; with a budget in steps the
        # wall time only cuts the run short, so a run that ends by its steps is the same on any machine
        progress = max(progress, elapsed_s / cfg.time_budget_s)
    return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def train(
    model: Surrogate, data: Data | Rows, cfg: TrainConfig, preprocessing: Pipeline | None = None,
    on_epoch_end: Callable[[int, dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Train ``model`` on ``data`` with the shared loop (or its closed form); returns (and stores) the history.

    ``data`` in memory is split for validation (``val_fraction``) and augmented (``augment``); a
    streamed source (:class:`~physgen.io.rows.FileRows`) holds out blocks and is read batch by batch,
    ``augment`` times an epoch (:class:`~physgen.data.rows.PermutedStream`).

    ``on_epoch_end(epoch, record)`` is called after each epoch's checkpoint.
    """
    from tqdm.auto import tqdm

    cfg = capped(cfg)
    rank, world, local_rank = _distributed()
    device = resolve_device(cfg.device)  # before the work: a missing GPU fails at once
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", local_rank)
    rows: Rows
    if isinstance(data, Rows):  # a streamed source (a file larger than memory): held-out blocks validate
        if model.capabilities.closed_form:
            raise ConfigError(f"the {model.name} surrogate solves a closed form on every event at once: read the data into memory", where="train", key="data")
        rows, val_data = data.holdout(cfg.val_fraction, seed=cfg.seed)
        rows = model.training_rows(rows, cfg.augment, seed=cfg.seed)  # augment: the file read k times an epoch, permuted after the first
        sample = rows.sample(init_rows(len(rows), rows.width), seed=cfg.seed)
        lazy = True
    else:
        train_data, val_data = (data.split((1 - cfg.val_fraction, cfg.val_fraction), seed=cfg.seed) if cfg.val_fraction > 0 else (data, None))
        rows = model.training_rows(train_data, cfg.augment, seed=cfg.seed)
        if isinstance(rows, PermutedRows) and model.capabilities.closed_form:
            rows = Rows(rows.materialise())  # a closed form solves on every row at once
        # an augmented set is read a batch at a time: its versions of each event are gathered, never stored
        lazy, sample = isinstance(rows, PermutedRows), train_data
    torch.manual_seed(cfg.seed)
    y, c = model.prepare(sample, preprocessing, rows=rows) if lazy else model.prepare(rows.data, preprocessing)
    assert model.preprocessing is not None  # set by prepare
    pipeline = model.preprocessing
    yv = cv = None
    if val_data is not None:
        # the validation split goes through the same training-time preprocessing (e.g. dequantisation),
        # so its loss measures the distribution the model is fitted to
        yv64, cv64 = model.preprocessing.train(True).forward(val_data.x, val_data.cond)
        model.preprocessing.train(False)
        yv, cv = yv64.float(), None if cv64 is None else cv64.float()
    solved = model.solve(y, c, yv, cv)
    if solved is not None:  # a closed form: no loop
        model.history = solved
        model.eval()
        model.to(device)
        return solved
    yv, cv = None if yv is None else yv.to(device), None if cv is None else cv.to(device)
    model.to(device)
    if lazy:
        del y, c  # the initialisation sample; batches are read (or gathered) and preprocessed as they are drawn

        def prepared(epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
            for xb, cb in rows.batches(cfg.batch_size, cfg.seed, epoch, rank, world):
                yb, cb = pipeline.train(True).forward(xb, cb)
                pipeline.train(False)
                yield yb.float(), None if cb is None else cb.float()

        # reading, gathering and preprocessing run a batch ahead in a thread (torch's kernels release the GIL),
        # except where the preprocessing draws noise from the global generator the training step also draws from
        ahead = not any(isinstance(t, Dequantise) for t in pipeline.x_transforms)

        def epoch_batches(epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
            with contextlib.closing(prefetch(prepared(epoch)) if ahead else prepared(epoch)) as batches:
                for yb, cb in batches:
                    yield yb.to(device), None if cb is None else cb.to(device)
    else:
        y, c = y.to(device), None if c is None else c.to(device)

        def epoch_batches(epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
            for idx in epoch_indices(len(y), cfg.batch_size, cfg.seed, epoch, rank, world):
                yield y[idx], None if c is None else c[idx]
    n_rows = len(rows)
    optimizers = model.configure_optimizers(cfg)
    ctx = TrainContext(cfg, device, model)
    steps_per_epoch = math.ceil(((n_rows // world) if world > 1 else n_rows) / max(1, cfg.batch_size // world))
    # the budget: cfg.steps optimiser steps where given (the last epoch partial), else cfg.epochs passes
    n_epochs = cfg.epochs if cfg.steps is None else math.ceil(cfg.steps / steps_per_epoch)
    if cfg.steps is not None and (cap := _epoch_cap()) is not None:
        n_epochs = min(n_epochs, cap)
    total_steps = cfg.steps if cfg.steps is not None else n_epochs * steps_per_epoch
    base_lrs = [[float(g["lr"]) for g in opt.param_groups] for opt in optimizers]
    params = [p for p in model.parameters() if p.requires_grad]
    ema = [p.detach().clone() for p in params] if cfg.ema_decay else None

    state: dict[str, Any] = {"epoch": 0, "step": 0, "best": math.inf, "bad_epochs": 0, "best_weights": None, "loss_scale0": None}
    recent: collections.deque[float] = collections.deque(maxlen=MEDIAN_WINDOW)  # the last batches' |loss|, for the running median
    history: list[dict[str, Any]] = []
    run_dir = Path(cfg.checkpoint_dir) if cfg.checkpoint_dir is not None else None
    # one writer per run directory: a second trainer pointed at it is refused, not silently raced
    lock = ckpt.RunLock(run_dir) if run_dir is not None and rank == 0 else None
    if lock is not None:
        lock.__enter__()
    try:
        if cfg.resume and run_dir is not None and (last := ckpt.latest_checkpoint(run_dir)) is not None:
            ckpt.load_weights(model, last)
            saved = ckpt.read_training_state(last) or {}
            for opt, s in zip(optimizers, saved.get("optimizers", []), strict=False):
                opt.load_state_dict(s)
            if ema is not None and saved.get("ema") is not None:
                for e_t, s_t in zip(ema, saved["ema"], strict=True):
                    e_t.copy_(s_t.to(device))
            history = list(saved.get("history", []))
            state.update({k: saved[k] for k in ("epoch", "step", "best", "bad_epochs", "loss_scale0") if k in saved})
            state["best_weights"] = saved.get("best_weights")
        ddp_model: nn.Module = model
        if world > 1:
            if ignored := model.ddp_ignored_names():
                # DDP's hooks would fire on the first stage's own backward pass; it averages its gradients itself
                nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, ignored)
            ddp_model = nn.parallel.DistributedDataParallel(
                model,
                device_ids=[device.index] if device.type == "cuda" else None,
                find_unused_parameters=bool(getattr(model, "ddp_find_unused_parameters", False)),
            )
        if cfg.compile:
            check_compiler(device)  # the family's train_step compiles what it can through ctx.compiled

        def swap_in_ema() -> list[torch.Tensor] | None:
            if ema is None:
                return None
            backup = [p.detach().clone() for p in params]
            with torch.no_grad():
                for p, e_t in zip(params, ema, strict=True):
                    p.copy_(e_t)
            return backup

        def restore(backup: list[torch.Tensor] | None) -> None:
            if backup is not None:
                with torch.no_grad():
                    for p, b in zip(params, backup, strict=True):
                        p.copy_(b)

        start_time = time.perf_counter()
        # tqdm's disable=None shows the bar only on a terminal
        disable = True if rank != 0 or cfg.progress is False else (None if cfg.progress is None else False)
        bar = tqdm(range(state["epoch"], n_epochs), initial=state["epoch"], total=n_epochs, desc=model.family, disable=disable, unit="epoch")
        for epoch in bar:
            torch.manual_seed(_epoch_seed(cfg.seed, epoch) + rank)  # each rank draws its own noise
            model.train()
            t0 = time.perf_counter()
            sums: dict[str, float] = {}
            n_batches = n_samples = 0
            for xb, cb in epoch_batches(epoch):
                if cfg.steps is not None and state["step"] >= cfg.steps:
                    break
                factor = _lr_factor(cfg, state["step"], total_steps, steps_per_epoch, time.perf_counter() - start_time)
                for opt, lrs in zip(optimizers, base_lrs, strict=True):
                    for g, lr0 in zip(opt.param_groups, lrs, strict=True):
                        set_lr(g, lr0 * factor)
                logs = model.train_step(ddp_model, xb, cb, optimizers, ctx)
                loss_value = logs["loss"]
                if state["loss_scale0"] is None:  # the first batch's loss, from the initial weights
                    state["loss_scale0"] = max(abs(loss_value), 1.0)
                _check_divergence(model, cfg, state, recent, loss_value, epoch)
                if ema is not None:
                    # warm-up (TensorFlow's num_updates rule): early averages do not drag in the initial weights
                    decay = min(cfg.ema_decay, (1 + state["step"]) / (10 + state["step"]))
                    with torch.no_grad():
                        torch._foreach_lerp_(ema, [p.detach() for p in params], 1 - decay)
                for k, v in logs.items():
                    sums[k] = sums.get(k, 0.0) + float(v)
                n_batches += 1
                n_samples += len(xb)
                state["step"] += 1
                if world == 1 and cfg.time_budget_s is not None and time.perf_counter() - start_time > cfg.time_budget_s:
                    break  # long (augmented) epochs end at the budget too; ranks of a DDP run stop together at the epoch's end
            record: dict[str, Any] = {k: v / max(n_batches, 1) for k, v in sums.items()}
            elapsed = time.perf_counter() - t0
            record.update(epoch=epoch + 1, lr=float(optimizers[0].param_groups[0]["lr"]), time_s=elapsed, samples=n_samples * world, samples_per_s=n_samples * world / max(elapsed, 1e-9))
            if yv is not None:
                backup = swap_in_ema()
                record.update(model.validation_metrics(yv, cv))
                if cfg.patience is not None and record["val_loss"] < state["best"]:
                    state["best"], state["bad_epochs"] = record["val_loss"], 0
                    state["best_weights"] = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
                elif cfg.patience is not None:
                    state["bad_epochs"] += 1
                restore(backup)
            history.append(record)
            log.debug("%s: epoch %d: %s", model.name, epoch + 1, ", ".join(f"{k} {v:.4g}" for k, v in record.items() if isinstance(v, float)))
            state["epoch"] = epoch + 1
            bar.set_postfix({k: f"{record[k]:.4g}" for k in ("loss", "val_loss") if k in record} | {"samples/s": f"{record['samples_per_s']:.0f}"})
            reason = None
            if cfg.patience is not None and state["bad_epochs"] >= cfg.patience:
                reason = "patience"
            elif cfg.time_budget_s is not None and time.perf_counter() - start_time > cfg.time_budget_s:
                reason = "time_budget"
            elif cfg.steps is not None and state["step"] >= cfg.steps:
                reason = "steps"
            elif epoch + 1 == n_epochs:
                reason = "epochs"
            stop = reason is not None
            if stop:  # what ended the run: its budget (steps or epochs), early stopping, or the wall-time cap
                record["stopped_by"] = reason
            last = stop
            if run_dir is not None and rank == 0 and ((epoch + 1) % cfg.checkpoint_every == 0 or last):
                name = f"epoch-{epoch + 1:06d}"
                model.history = history
                model.save(run_dir / name, training_state={
                    "optimizers": [opt.state_dict() for opt in optimizers],
                    "ema": None if ema is None else [e_t.detach().cpu() for e_t in ema],
                    "history": history,
                    "train_config": cfg.to_dict(),
                    **{k: state[k] for k in ("epoch", "step", "best", "bad_epochs", "loss_scale0", "best_weights")},
                })
                ckpt.point_latest(run_dir, name)
            if world > 1:
                dist.barrier()
            if on_epoch_end is not None:
                on_epoch_end(epoch + 1, record)
            if reason in ("patience", "time_budget"):
                why = (f"no better validation loss in {cfg.patience} epochs" if reason == "patience"
                       else f"its time budget of {cfg.time_budget_s:.3g} s ran out after {state['step']} of {total_steps} steps")
                log.info("%s: stopped after epoch %d of %d: %s", model.name, epoch + 1, n_epochs, why)
            if stop:
                break
        bar.close()
        if state["best_weights"] is not None:
            model.load_state_dict(state["best_weights"])
        elif ema is not None:
            swap_in_ema()
        model.history = history
        model.eval()
        return history
    finally:
        if lock is not None:
            lock.__exit__(None, None, None)
