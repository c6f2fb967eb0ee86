"""Checkpoint directories: safetensors weights + JSON config + resumable training state.

Layout of a saved surrogate::

    model/
      config.json           class, options (as passed and as resolved), preprocessing, schema, physgen version
      weights.safetensors   the module's tensors (no pickle)
      training_state.pt     optional: optimiser/EMA/history, read with weights_only=True

Nothing here unpickles arbitrary objects: weights go through safetensors and training state
through ``torch.load(..., weights_only=True)``. A directory is written under a temporary name
(``.NAME.physgen-tmp-PID-XXXX``) and swapped into place with one atomic exchange, so a reader
sees the old checkpoint or the new one, never half of one and never none; temporary directories
a killed writer left behind are removed by the next write. Non-finite weights are refused on
the way out and on the way in, and a config is read only from a regular file of bounded size.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from physgen.errors import CheckpointError
from physgen.io._common import _pid_alive, remove_stale_temporaries, temporary_name

__all__ = [
    "FORMAT_VERSION", "RunLock", "latest_checkpoint", "load_weights", "point_latest", "read_config", "read_training_state", "write_checkpoint",
]

#: Bumped whenever the layout changes incompatibly; loading a newer one fails clearly.
#: 2: typed options (what the user passed) apart from what was resolved from the data; calorimeter models as ShowerModel.
FORMAT_VERSION = 2
CONFIG = "config.json"
WEIGHTS = "weights.safetensors"
STATE = "training_state.pt"
#: the largest config.json read (a W/Si shower model's, with its read-out calibration, is about 3 MB)
MAX_CONFIG_BYTES = 256 * 2**20
_EPOCH = re.compile(r"^epoch-\d{6}$")


_RENAME_EXCHANGE = 2
_libc: Any = None


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two existing paths (Linux ``renameat2(RENAME_EXCHANGE)``); False where unsupported."""
    global _libc
    if not hasattr(os, "sched_getaffinity"):  # not Linux
        return False
    try:
        if _libc is None:
            _libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = _libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd = -100
    if renameat2(at_fdcwd, os.fsencode(str(a)), at_fdcwd, os.fsencode(str(b)), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def _swap_into_place(tmp: Path, directory: Path) -> None:
    """Put the complete directory ``tmp`` at ``directory``; an existing one is replaced without a moment of absence."""
    for _ in range(8):  # another writer may create or replace it meanwhile
        if not directory.exists():
            try:
                os.rename(tmp, directory)
                return
            except OSError as exc:
                if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                    raise
                continue
        if _exchange(tmp, directory):
            shutil.rmtree(tmp, ignore_errors=True)  # now the old checkpoint
            return
        old = temporary_name(directory)  # no atomic exchange here: keep the old one until the new one is in place
        os.rename(directory, old)
        try:
            os.rename(tmp, directory)
        except OSError:
            os.rename(old, directory)
            raise
        shutil.rmtree(old, ignore_errors=True)
        return
    raise CheckpointError(f"checkpoint {str(directory)!r}: another process kept replacing it; nothing was written")


def _non_finite(tensors: dict[str, torch.Tensor]) -> list[str]:
    return [k for k, t in tensors.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]


def write_checkpoint(directory: str | Path, module: torch.nn.Module, config: dict[str, Any], training_state: dict[str, Any] | None = None) -> Path:
    """Write a complete checkpoint directory atomically (replacing an existing one).

    Raises:
        CheckpointError: non-finite weights (nothing is written), or the write failed (disk full,
            permissions); then neither a partial checkpoint nor a temporary directory remains.
    """
    directory = Path(directory)
    state = {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}
    bad = _non_finite(state)
    if bad:
        raise CheckpointError(f"checkpoint {str(directory)!r}: not saved: {', '.join(bad[:5])} hold NaN or inf (did training diverge?)")
    try:
        directory.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(directory)
        tmp = temporary_name(directory)
        tmp.mkdir()
    except OSError as exc:
        raise CheckpointError(f"checkpoint {str(directory)!r}: cannot write here ({exc.strerror or exc})") from exc
    try:
        save_file(_dedupe(state), str(tmp / WEIGHTS))
        if training_state is not None:
            torch.save(training_state, tmp / STATE)
        (tmp / CONFIG).write_text(json.dumps({"format_version": FORMAT_VERSION, **config}, indent=1, allow_nan=False))
        _swap_into_place(tmp, directory)
    except CheckpointError:
        raise
    except Exception as exc:  # ENOSPC, safetensors' own SafetensorError, NaN in the config
        raise CheckpointError(f"checkpoint {str(directory)!r}: not written ({exc}); the previous one, if any, is unchanged") from exc
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return directory


def _dedupe(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """safetensors refuses tensors sharing memory: give each its own storage."""
    seen: dict[int, str] = {}
    out = {}
    for k, v in state.items():
        ptr = v.untyped_storage().data_ptr() if v.numel() else -1
        out[k] = v.clone() if ptr in seen and ptr != -1 else v
        seen.setdefault(ptr, k)
    return out


def _reject_constant(token: str) -> float:
    raise ValueError(f"{token} is not a finite number")


def read_config(directory: str | Path) -> dict[str, Any]:
    """The checkpoint's JSON config, after checking it is complete, finite and not from a newer physgen."""
    directory = Path(directory)
    path = directory / CONFIG
    if not directory.is_dir():
        raise CheckpointError(f"checkpoint {str(directory)!r}: not a directory")
    if not path.exists():
        raise CheckpointError(f"checkpoint {str(directory)!r}: no {CONFIG} (incomplete or not a physgen checkpoint)")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(directory)!r}: {CONFIG} is not a regular file")
    try:
        with path.open("rb") as fh:
            raw = fh.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise CheckpointError(f"checkpoint {str(directory)!r}: cannot read {CONFIG} ({exc})") from exc
    if len(raw) > MAX_CONFIG_BYTES:
        raise CheckpointError(f"checkpoint {str(directory)!r}: {CONFIG} is larger than {MAX_CONFIG_BYTES // 2**20} MB; not a physgen config")
    try:
        config = json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, json.JSONDecodeError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {str(directory)!r}: {CONFIG} is not valid JSON of finite numbers ({exc})") from exc
    if not isinstance(config, dict):
        raise CheckpointError(f"checkpoint {str(directory)!r}: {CONFIG} holds no JSON object")
    version = config.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool):
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
    for key in ("options", "dims", "schema", "preprocessing"):
        if key not in config:
            raise CheckpointError(f"checkpoint {str(directory)!r}: {CONFIG} lacks {key!r}")
    if not (directory / WEIGHTS).is_file():
        raise CheckpointError(f"checkpoint {str(directory)!r}: no {WEIGHTS}")
    return config


def load_weights(module: torch.nn.Module, directory: str | Path, config: dict[str, Any] | None = None) -> None:
    """Load safetensors weights into ``module``: every tensor must match by name and shape, and be finite."""
    path = Path(directory) / WEIGHTS
    try:
        tensors = load_file(str(path))
    except Exception as exc:  # safetensors raises its own error types for corrupt files
        raise CheckpointError(f"checkpoint {str(directory)!r}: cannot read {WEIGHTS}: {exc}") from exc
    bad = _non_finite(tensors)
    if bad:
        raise CheckpointError(f"checkpoint {str(directory)!r}: {WEIGHTS} holds NaN or inf in {', '.join(bad[:5])}")
    expected = module.state_dict()
    missing, unexpected = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
    shapes = [k for k in set(expected) & set(tensors) if tuple(expected[k].shape) != tuple(tensors[k].shape)]
    if missing or unexpected or shapes:
        raise CheckpointError(
            f"checkpoint {str(directory)!r}: weights do not match the model "
            f"(missing {missing[:5]}, unexpected {unexpected[:5]}, other shapes {sorted(shapes)[:5]})"
        )
    module.load_state_dict(tensors, strict=True)


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
    """The newest complete ``epoch-NNNNNN`` checkpoint in a training run directory (``LATEST`` names one of its own)."""
    run_dir = Path(run_dir)
    pointer = run_dir / "LATEST"
    if pointer.is_file() and pointer.stat().st_size < 256:
        name = pointer.read_text().strip()
        candidate = run_dir / name
        if _EPOCH.match(name) and candidate.is_dir() and not candidate.is_symlink() and (candidate / CONFIG).is_file():
            return candidate
    found = sorted(p for p in run_dir.glob("epoch-*") if _EPOCH.match(p.name) and not p.is_symlink() and (p / CONFIG).is_file())
    return found[-1] if found else None


def point_latest(run_dir: str | Path, name: str, keep: int = 2) -> None:
    """Atomically point ``LATEST`` at ``name`` and prune all but the ``keep`` newest checkpoints."""
    run_dir = Path(run_dir)
    tmp = temporary_name(run_dir / "LATEST")
    tmp.write_text(name + "\n")
    os.replace(tmp, run_dir / "LATEST")
    for old in sorted(p for p in run_dir.glob("epoch-*") if _EPOCH.match(p.name))[:-keep]:
        with contextlib.suppress(OSError):
            shutil.rmtree(old)


class RunLock:
    """An exclusive lock on a training run directory: a ``LOCK`` file holding the writer's PID.

    A second writer is refused with :class:`CheckpointError` while the first lives; a lock whose
    process is gone is taken over.
    """

    def __init__(self, run_dir: str | Path):
        self.path = Path(run_dir) / "LOCK"

    def __enter__(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                try:
                    pid = int(self.path.read_text().strip() or "0")
                except (OSError, ValueError):
                    pid = 0
                if pid and pid != os.getpid() and _pid_alive(pid):
                    raise CheckpointError(
                        f"run directory {str(self.path.parent)!r} is in use by process {pid}; wait for it, or choose another --out"
                    ) from None
                with contextlib.suppress(FileNotFoundError):
                    self.path.unlink()
                continue
            with os.fdopen(fd, "w") as fh:
                fh.write(str(os.getpid()))
            return self
        raise CheckpointError(f"run directory {str(self.path.parent)!r}: cannot take its lock")

    def __exit__(self, *exc: Any) -> None:
        with contextlib.suppress(FileNotFoundError):
            if self.path.read_text().strip() == str(os.getpid()):
                self.path.unlink()
