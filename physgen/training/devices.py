"""Devices and precisions, for training and for sampling."""

from __future__ import annotations

from typing import Any

import torch

from physgen.errors import ConfigError

__all__ = ["AUTOCAST_DTYPES", "autocast_dtype", "resolve_device"]

#: precision names → autocast dtypes (None: plain fp32), for training and for sampling
AUTOCAST_DTYPES: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def autocast_dtype(precision: Any, device: torch.device | None = None, name: str = "precision") -> torch.dtype | None:
    """The autocast dtype for ``precision`` ("fp32", "bf16", "fp16"); fp16 needs a CUDA ``device``.

    Raises:
        ConfigError: an unknown name (``name`` says which setting), or fp16 off CUDA.
    """
    if not isinstance(precision, str) or precision not in AUTOCAST_DTYPES:
        raise ConfigError(f"{name} must be 'fp32', 'bf16' or 'fp16'; got {precision!r}", key=name)
    if precision == "fp16" and device is not None and device.type != "cuda":
        raise ConfigError(f"{name}='fp16' needs a CUDA device; use 'bf16' or 'fp32' on CPU", key=name)
    return AUTOCAST_DTYPES[precision]


def resolve_device(device: str) -> torch.device:
    """``"auto"`` → CUDA where there is one, else the CPU; a CUDA device asked for on a machine without one fails at once."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} asked for, but this machine has no CUDA device; use device='cpu'", key="device")
    return dev
