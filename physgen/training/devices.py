"""Devices and precisions, for training and for sampling."""

from __future__ import annotations

import functools
import warnings
from typing import Any

import torch

from physgen.errors import ConfigError

__all__ = ["AUTOCAST_DTYPES", "autocast_dtype", "cpu_description", "cpu_flags", "native_bf16", "resolve_device"]

#: precision names → autocast dtypes (None: plain fp32), for training and for sampling
AUTOCAST_DTYPES: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` runs bf16 matrix products natively: CUDA with bf16, or a CPU with AVX512-BF16 or AMX.

    Elsewhere (an AVX2-only CPU) PyTorch emulates bf16: a 2048² matmul ran at 0.3 GFLOP/s against 87.5 in fp32.
    """
    if device.type == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    if device.type != "cpu":
        return False
    return bool({"avx512_bf16", "amx_bf16"} & cpu_flags())


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (Linux's ``/proc/cpuinfo``; empty where unknown)."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def cpu_description() -> dict[str, str]:
    """The CPU model and PyTorch's capability level (``AVX2``, ``AVX512``...) and whether bf16 is native, for benchmark records."""
    import platform

    model = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as fh:
            model = next((line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")), model)
    except OSError:
        pass
    return {"cpu": model, "capability": str(torch.backends.cpu.get_cpu_capability()),
            "native_bf16": str(native_bf16(torch.device("cpu"))).lower()}


def autocast_dtype(precision: Any, device: torch.device | None = None, name: str = "precision") -> torch.dtype | None:
    """The autocast dtype for ``precision`` ("auto", "fp32", "bf16", "fp16"); fp16 needs a CUDA ``device``.

    ``"auto"`` is bf16 where :func:`native_bf16` and fp32 elsewhere; an explicit ``"bf16"`` on a CPU that
    emulates it warns (it is ~3x slower than fp32 there).

    Raises:
        ConfigError: an unknown name (``name`` says which setting), or fp16 off CUDA.
    """
    if not isinstance(precision, str) or precision not in (*AUTOCAST_DTYPES, "auto"):
        raise ConfigError(f"{name} must be 'auto', 'fp32', 'bf16' or 'fp16'; got {precision!r}", key=name)
    device = device if device is not None else torch.device("cpu")
    if precision == "auto":
        return torch.bfloat16 if native_bf16(device) else None
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError(f"{name}='fp16' needs a CUDA device; use 'bf16' or 'fp32' on CPU", key=name)
    if precision == "bf16" and device.type == "cpu" and not native_bf16(device):
        warnings.warn(f"{name}='bf16' on a CPU without AVX512-BF16/AMX: PyTorch emulates it, about 3x slower than fp32; "
                      "'auto' picks fp32 here", RuntimeWarning, stacklevel=3)
    return AUTOCAST_DTYPES[precision]


def resolve_device(device: str) -> torch.device:
    """``"auto"`` → CUDA where there is one, else the CPU; a CUDA device asked for on a machine without one fails at once."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} asked for, but this machine has no CUDA device; use device='cpu'", key="device")
    return dev
