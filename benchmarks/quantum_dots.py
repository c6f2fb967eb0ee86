"""Quantum dots by variational Monte Carlo with a Gaussian–binary RBM (same 2-core machine).

    python benchmarks/quantum_dots.py

Two particles in a two-dimensional harmonic trap, ω = 1, atomic units:

* without interaction the exact energy is P·D·ω/2 = 2;
* with Coulomb repulsion Taut's closed form is E = 3 (J. Phys. A 27, 1045 (1994)); in three
  dimensions at ω = ½ it is E = 2 (Phys. Rev. A 48, 3561 (1993)).

Each run: 2 hidden units, 512 walkers, 8 moves an iteration, 200 SR iterations (lr 0.05,
λ = 0.01), then 4,096 moves for the final energy, whose error is from automated blocking.
The RBM alone against the RBM × Padé–Jastrow (the cusp), and Metropolis against importance
sampling. Writes benchmarks/results/quantum_dots.json.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, write_result  # noqa: E402

from physgen.quantum import HarmonicTrap, optimise_dot, taut_energy  # noqa: E402


def run(label: str, trap: HarmonicTrap, exact: float, **kw) -> dict:
    result = optimise_dot(trap, hidden=2, iterations=200, walkers=512, steps_per_iteration=8, final_steps=4096, exact_energy=exact, seed=0, **kw)
    final = result.history[-1]
    row = {
        "task": label,
        "particles": trap.particles, "dims": trap.dims, "omega": trap.omega, "interacting": trap.interacting,
        "jastrow": kw.get("jastrow", False), "sampler": kw.get("sampler", "importance"),
        "energy": result.energy, "error": result.errors[-1], "exact_energy": exact,
        "relative_error": result.relative_error, "variance": final["variance"], "acceptance": final["acceptance"],
        "parameters": result.model.n_parameters(), "seconds": result.seconds,
    }
    print(f"{label}: E = {row['energy']:.5f} ± {row['error']:.5f} (exact {exact}), relative error {row['relative_error']:.2e}, {row['seconds']:.1f} s")
    return row


def main() -> None:
    torch.set_num_threads(2)
    free = HarmonicTrap(2, 2, 1.0, interacting=False)
    omega2, e2 = taut_energy(2)
    omega3, e3 = taut_energy(3)
    coulomb2, coulomb3 = HarmonicTrap(2, 2, omega2, interacting=True), HarmonicTrap(2, 3, omega3, interacting=True)
    results = [
        run("P=2 D=2 ω=1 no interaction, Metropolis", free, free.non_interacting_energy, sampler="metropolis"),
        run("P=2 D=2 ω=1 no interaction, importance sampling", free, free.non_interacting_energy, sampler="importance"),
        run("P=2 D=2 ω=1 Coulomb, RBM alone", coulomb2, e2),
        run("P=2 D=2 ω=1 Coulomb, RBM × Padé–Jastrow, Metropolis", coulomb2, e2, jastrow=True, sampler="metropolis"),
        run("P=2 D=2 ω=1 Coulomb, RBM × Padé–Jastrow, importance sampling", coulomb2, e2, jastrow=True),
        run("P=2 D=3 ω=1/2 Coulomb, RBM × Padé–Jastrow, importance sampling", coulomb3, e3, jastrow=True),
    ]
    payload = {"benchmark": "quantum_dots", "machine": machine(), "results": results,
               "reference": {"course_script_relative_error": 0.09, "note": "the course's own RBM script ends about 9 % above E = 3"}}
    print(f"wrote {write_result('quantum_dots', payload)}")


if __name__ == "__main__":
    main()
