"""Checkpoint directories: safetensors weights + JSON config + resumable training state.

Layout of a saved surrogate::

    model/
      config.json           family, hyperparameters, preprocessing, schema, physgen version
      weights.safetensors   the module's tensors (no pickle)
      training_state.pt     optional: optimiser/scheduler/EMA/history, read with weights_only=True

Nothing here unpickles arbitrary objects: weights go through safetensors and
training state through ``torch.load(..., weights_only=True)``. A directory is
written under a temporary name and renamed into place, so a reader sees either
the old checkpoint or the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_model, save_model

from physgen.errors import CheckpointError

__all__ = ["FORMAT_VERSION", "write_checkpoint", "read_config", "load_weights", "read_training_state"]

#: Bumped whenever the layout changes incompatibly; loading a newer one fails clearly.
#: 2: typed options (what the user passed) apart from what was resolved from the data; calorimeter models as ShowerModel.
FORMAT_VERSION = 2
CONFIG = "config.json"
WEIGHTS = "weights.safetensors"
STATE = "training_state.pt"


def write_checkpoint(
    directory: str | Path,
    module: torch.nn.Module,
    config: dict[str, Any],
    training_state: dict[str, Any] | None = None,
) -> Path:
    """Write a complete checkpoint directory atomically (replacing an existing one)."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = directory.with_name(f".{directory.name}.{uuid.uuid4().hex[:8]}.tmp")
    old = directory.with_name(f".{directory.name}.{uuid.uuid4().hex[:8]}.old")
    try:
        tmp.mkdir()
        save_model(module, str(tmp / WEIGHTS))
        if training_state is not None:
            torch.save(training_state, tmp / STATE)
        (tmp / CONFIG).write_text(json.dumps({"format_version": FORMAT_VERSION, **config}, indent=1))
        if directory.exists():
            os.replace(directory, old)
        os.replace(tmp, directory)
    finally:
        for leftover in (tmp, old):
            if leftover.exists():
                shutil.rmtree(leftover, ignore_errors=True)
    return directory


def read_config(directory: str | Path) -> dict[str, Any]:
    """The checkpoint's JSON config, after checking it is complete and not from a newer physgen."""
    directory = Path(directory)
    path = directory / CONFIG
    if not directory.is_dir():
        raise CheckpointError(f"checkpoint {str(directory)!r}: not a directory")
    if not path.exists():
        raise CheckpointError(f"checkpoint {str(directory)!r}: no {CONFIG} (incomplete or not a physgen checkpoint)")
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"checkpoint {str(directory)!r}: {CONFIG} is not valid JSON ({exc})") from exc
    version = config.get("format_version")
    if not isinstance(version, int):
        raise CheckpointError(f"checkpoint {str(directory)!r}: {CONFIG} has no integer format_version")
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {str(directory)!r} has format version {version}, newer than this physgen "
            f"understands ({FORMAT_VERSION}); upgrade physgen (written by {config.get('physgen_version')})"
        )
    if version < 2:
        raise CheckpointError(
            f"checkpoint {str(directory)!r} has format version {version}, from physgen before typed options; "
            "re-train it with this physgen (its suite or command line still works)"
        )
    if not (directory / WEIGHTS).exists():
        raise CheckpointError(f"checkpoint {str(directory)!r}: no {WEIGHTS}")
    return config


def load_weights(module: torch.nn.Module, directory: str | Path, config: dict[str, Any] | None = None) -> None:
    """Load safetensors weights into ``module``; every tensor must match by name and shape."""
    try:
        missing, unexpected = load_model(module, str(Path(directory) / WEIGHTS), strict=False)
    except Exception as exc:  # safetensors raises its own error types for corrupt files
        raise CheckpointError(f"checkpoint {str(directory)!r}: cannot read {WEIGHTS}: {exc}") from exc
    if missing or unexpected:
        raise CheckpointError(
            f"checkpoint {str(directory)!r}: weights do not match the model "
            f"(missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]})"
        )


def read_training_state(directory: str | Path) -> dict[str, Any] | None:
    """The resumable training state, or ``None``; loaded without unpickling code."""
    path = Path(directory) / STATE
    if not path.exists():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"checkpoint {str(directory)!r}: cannot read {STATE} safely: {exc}") from exc


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest complete ``epoch-NNNNNN`` checkpoint in a training run directory."""
    run_dir = Path(run_dir)
    pointer = run_dir / "LATEST"
    if pointer.exists():
        candidate = run_dir / pointer.read_text().strip()
        if (candidate / CONFIG).exists():
            return candidate
    found = sorted(p for p in run_dir.glob("epoch-*") if (p / CONFIG).exists())
    return found[-1] if found else None


def point_latest(run_dir: str | Path, name: str, keep: int = 2) -> None:
    """Atomically point ``LATEST`` at ``name`` and prune all but the ``keep`` newest checkpoints."""
    run_dir = Path(run_dir)
    tmp = run_dir / f".LATEST.{uuid.uuid4().hex[:8]}"
    tmp.write_text(name + "\n")
    os.replace(tmp, run_dir / "LATEST")
    for old in sorted(run_dir.glob("epoch-*"))[:-keep]:
        with contextlib.suppress(OSError):
            shutil.rmtree(old)
