"""Helpers the benchmark scripts share: paths, machine facts, the matmul yardstick, atomic results."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from physgen.bench import machine_info as machine
from physgen.bench import matmul_gflops

__all__ = ["SHARED_DATA", "RESULTS", "machine", "matmul_gflops", "write_qucumber_files", "write_result", "write_markdown"]

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
RESULTS = Path(__file__).resolve().parent / "results"


def write_result(name: str, payload: dict[str, Any]) -> Path:
    """Write ``benchmarks/results/NAME.json`` atomically."""
    from physgen.report import write_json

    RESULTS.mkdir(parents=True, exist_ok=True)
    return write_json(RESULTS / f"{name}.json", payload)


def write_markdown(name: str, text: str) -> Path:
    """Write ``benchmarks/results/NAME.md`` atomically."""
    from physgen.io._common import atomic_path

    RESULTS.mkdir(parents=True, exist_ok=True)
    target = RESULTS / f"{name}.md"
    with atomic_path(target) as tmp:
        tmp.write_text(text)
    return target


def write_qucumber_files(directory: Path, data: Any, bases: list[str], state: Any) -> None:
    """The files benchmarks/peers/run_qucumber.py reads: measurements with their bases, the list of bases, and the
    exact state (``psi.txt`` for a wave function, ``rho_real.txt`` and ``rho_imag.txt`` for a density matrix)."""
    import numpy as np

    import physgen

    directory.mkdir(parents=True, exist_ok=True)
    physgen.write(data, directory / "train.txt")  # also train_bases.txt
    state = np.asarray(state)
    if state.ndim == 2:
        np.savetxt(directory / "rho_real.txt", state.real)
        np.savetxt(directory / "rho_imag.txt", state.imag)
    else:
        np.savetxt(directory / "psi.txt", np.stack([state.real, state.imag], 1))
    (directory / "bases.txt").write_text("\n".join(" ".join(b) for b in bases) + "\n")
