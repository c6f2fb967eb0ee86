"""Complex wave functions from Pauli-basis measurements: physgen's complex RBM next to QuCumber's.

    python benchmarks/quantum_complex.py [--peer-data DIR]

* QuCumber's tutorial-2 protocol: its two-qubit state (α = 0.2861 + 0.0539i, β = 0.3687 − 0.3023i,
  γ = −0.1672 − 0.3529i, δ = −0.5659 − 0.4639i), 200 measurements in each of the bases
  ZZ, XZ, ZX, YZ, ZY; three training seeds, the family's default settings.
* the same protocol on 10 qubits (21 bases, 500 measurements each) for a complex state: the TFIM
  N = 10 ground state after a global rotation exp(−iπ/8 Σ σˣ).

``--peer-data DIR`` writes each data set as QuCumber reads it (DIR/<task>/train.txt,
train_bases.txt, psi.txt, bases.txt) for benchmarks/peers/run_qucumber.py; its output lines,
collected in benchmarks/results/qucumber_complex.json, are put beside physgen's figures.
Writes benchmarks/results/quantum_complex.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch
from scipy.sparse.linalg import expm_multiply

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, machine, write_qucumber_files, write_result  # noqa: E402

from physgen.quantum import (  # noqa: E402
    fidelity,
    ground_state,
    local_bases,
    sample_pauli_measurements,
    tfim,
    tomography_report,
)
from physgen.surrogates import create  # noqa: E402

TUTORIAL2 = np.array([0.2861 + 0.0539j, 0.3687 - 0.3023j, -0.1672 - 0.3529j, -0.5659 - 0.4639j])


def rotated_tfim(n: int) -> np.ndarray:
    _, psi0 = ground_state(tfim(n))
    sx, eye = sp.csr_matrix([[0.0, 1.0], [1.0, 0.0]]), sp.identity(2, format="csr")
    total = sp.csr_matrix((2**n, 2**n))
    for i in range(n):
        term = sp.identity(1, format="csr")
        for j in range(n):
            term = sp.kron(term, sx if j == i else eye, format="csr")
        total = total + term
    return expm_multiply(-1j * np.pi / 8 * total, psi0.astype(np.complex128))


def run(task: str, psi: np.ndarray, n_per_basis: int, seeds: list[int], peer_dir: Path | None) -> dict:
    n = int(np.log2(len(psi)))
    bases = local_bases(n)
    data = sample_pauli_measurements(psi, bases, n_per_basis, seed=0)
    if peer_dir is not None:
        write_qucumber_files(peer_dir / task, data, bases, psi)
    runs = []
    for seed in seeds:
        model = create("complex_rbm")
        t0 = time.perf_counter()
        reached: list[float] = []

        def first_fidelity(epoch: int, record: dict, model=model, reached=reached, t0=t0) -> None:
            # the time to reach the tutorial's fidelity; the check itself is excluded from the clock
            if not reached:
                t = time.perf_counter()
                if fidelity(psi, model.wavefunction()) >= 0.993:
                    reached.append(t - t0)

        model.fit(data, progress=False, seed=seed, on_epoch_end=first_fidelity)
        seconds = time.perf_counter() - t0
        report = tomography_report(model, psi, data)
        runs.append({"seed": seed, "seconds": seconds, "epochs": len(model.history), "seconds_to_0.993": reached[0] if reached else None, **report})
        print(f"{task} seed {seed}: fidelity {report['fidelity']:.4f}, KL over bases {report['basis_kl']:.4f}, {seconds:.1f} s")
    peers = {}
    peer_file = RESULTS / "qucumber_complex.json"
    if peer_file.exists():
        peers = json.loads(peer_file.read_text()).get(task, {})
    return {"task": task, "qubits": n, "bases": len(bases), "measurements": len(data), "runs": runs,
            "fidelity_median": float(np.median([r["fidelity"] for r in runs])), "reference": {"qucumber": peers}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--peer-data", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(2)
    results = [
        run("tutorial2", TUTORIAL2 / np.linalg.norm(TUTORIAL2), 200, [0, 1, 2], args.peer_data),
        run("tfim10_rotated", rotated_tfim(10), 500, [0], args.peer_data),
    ]
    print(f"wrote {write_result('quantum_complex', {'benchmark': 'quantum_complex', 'machine': machine(), 'results': results})}")


if __name__ == "__main__":
    main()
