"""Density matrices from informationally complete Pauli measurements: physgen's density RBM next to QuCumber's.

    python benchmarks/quantum_density.py [--peer-data DIR]

* QuCumber's tutorial-3 protocol: the 2-qubit W state (|01⟩ + |10⟩)/√2 depolarised with p = 0.5,
  ρ = (1 − p)|W⟩⟨W| + p 𝟙/4, measured in all 9 products of X, Y and Z; 100 measurements in each
  (the tutorial's data set) and 1,000 in each (its larger one). Three training seeds, the family's defaults.
* the same protocol on 4 qubits: the W state depolarised with p = 0.2, 100 measurements in each of the 81 bases.

Beside each, the baselines the same data give without a model: linear inversion (physgen.quantum.linear_inversion)
and the full-rank maximum-likelihood estimate ρ = TT†/Tr(TT†) (T any complex matrix, L-BFGS on the exact
likelihood), the best a model with no prior can do. ``--peer-data DIR`` writes each data set as QuCumber reads it
(DIR/<task>/train.txt, train_bases.txt, rho_real.txt, rho_imag.txt, bases.txt) for
benchmarks/peers/run_qucumber.py; its output lines, collected in benchmarks/results/qucumber_density.json,
are put beside physgen's figures. Writes benchmarks/results/quantum_density.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, machine, write_qucumber_files, write_result  # noqa: E402

import physgen  # noqa: E402
from physgen.quantum import (  # noqa: E402
    fidelity,
    linear_inversion,
    pauli_bases,
    sample_pauli_measurements,
    tomography_report,
)
from physgen.surrogates import create  # noqa: E402
from physgen.surrogates.complex_rbm import _distinct_bases, _index, rotate_columns  # noqa: E402


def depolarised_w(n: int, p: float) -> np.ndarray:
    w = np.zeros(2**n, dtype=np.complex128)
    w[[1 << k for k in range(n)]] = 1 / np.sqrt(n)
    return (1 - p) * np.outer(w, w.conj()) + p * np.eye(2**n) / 2**n


def maximum_likelihood(data: physgen.Data) -> np.ndarray:
    """The full-rank maximum-likelihood density matrix of the measurements (no prior: every ρ ≥ 0 allowed)."""
    n = data.x.shape[1]
    bases, inverse = _distinct_bases(data.cond.round().long())
    idx = _index(data.x)
    torch.manual_seed(0)
    t = torch.nn.Parameter(torch.randn(2**n, 2**n, dtype=torch.complex128))
    opt = torch.optim.LBFGS([t], max_iter=1000, line_search_fn="strong_wolfe", tolerance_grad=1e-10, tolerance_change=1e-14)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        probs = (rotate_columns(t / torch.linalg.norm(t), bases).abs() ** 2).sum(2)
        loss = -torch.log(probs[inverse, idx] + 1e-300).mean()
        loss.backward()
        return loss

    for _ in range(3):
        opt.step(closure)
    m = (t / torch.linalg.norm(t)).detach().numpy()
    return m @ m.conj().T


def run(task: str, rho: np.ndarray, n_per_basis: int, seeds: list[int], peer_dir: Path | None) -> dict:
    n = int(np.log2(len(rho)))
    bases = pauli_bases(n)
    data = sample_pauli_measurements(rho, bases, n_per_basis, seed=0)
    if peer_dir is not None:
        write_qucumber_files(peer_dir / task, data, bases, rho)
    runs = []
    for seed in seeds:
        model = create("density_rbm")
        t0 = time.perf_counter()
        model.fit(data, progress=False, seed=seed)
        seconds = time.perf_counter() - t0
        report = tomography_report(model, rho, data)
        fitted = model.density_matrix()
        runs.append({"seed": seed, "seconds": seconds, "epochs": len(model.history), "purity": float(np.real(np.trace(fitted @ fitted))), **report})
        print(f"{task} seed {seed}: fidelity {report['fidelity']:.4f} (linear inversion {report['linear_inversion_fidelity']:.4f}), {seconds:.1f} s")
    peers = {}
    peer_file = RESULTS / "qucumber_density.json"
    if peer_file.exists():
        peers = json.loads(peer_file.read_text()).get(task, {})
    t0 = time.perf_counter()
    ml = maximum_likelihood(data)
    return {"task": task, "qubits": n, "bases": len(bases), "measurements": len(data), "exact_purity": float(np.real(np.trace(rho @ rho))),
            "runs": runs, "fidelity_median": float(np.median([r["fidelity"] for r in runs])),
            "baselines": {"linear_inversion": fidelity(rho, linear_inversion(data)), "maximum_likelihood": fidelity(rho, ml),
                          "maximum_likelihood_seconds": time.perf_counter() - t0},
            "reference": {"qucumber": peers}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--peer-data", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(2)
    results = [
        run("tutorial3_100", depolarised_w(2, 0.5), 100, [0, 1, 2], args.peer_data),
        run("tutorial3_1000", depolarised_w(2, 0.5), 1000, [0, 1, 2], args.peer_data),
        run("w4_100", depolarised_w(4, 0.2), 100, [0, 1, 2], args.peer_data),
    ]
    print(f"wrote {write_result('quantum_density', {'benchmark': 'quantum_density', 'machine': machine(), 'results': results})}")


if __name__ == "__main__":
    main()
