"""NetKet's RBM + stochastic reconfiguration on the periodic TFIM, timed (run in a scratch venv with ``pip install netket``).

    /tmp/nk/bin/python benchmarks/peers/netket_tfim.py N [ITERATIONS]

The settings of physgen's row in benchmarks/quantum.py: H = −Σ σᶻσᶻ − Σ σˣ on a periodic chain of N spins,
an RBM with α = 1 (real parameters), 1,024 Metropolis samples (single flips) per iteration, SR with
diagonal shift 0.01 and step 0.05, 300 iterations; the final energy from 16,384 samples. The sampler keeps
NetKet's defaults (a sweep of N moves per sample, 5 samples discarded per chain each iteration; physgen's
persistent chains make 2 sweeps between iterations). Prints one JSON line: the seconds of the optimisation
(JIT compilation included) and the final energy with its error.
"""

from __future__ import annotations

import json
import sys
import time

import netket as nk


def main(n: int, iterations: int = 300) -> None:
    graph = nk.graph.Chain(n, pbc=True)
    hilbert = nk.hilbert.Spin(s=0.5, N=graph.n_nodes)
    hamiltonian = nk.operator.Ising(hilbert, graph=graph, h=1.0, J=-1.0)  # NetKet: −h Σ σˣ + J Σ σᶻσᶻ
    model = nk.models.RBM(alpha=1, param_dtype=float)
    sampler = nk.sampler.MetropolisLocal(hilbert, n_chains=1024)
    state = nk.vqs.MCState(sampler, model, n_samples=1024, seed=0, sampler_seed=0)
    driver = nk.VMC(hamiltonian, nk.optimizer.Sgd(learning_rate=0.05), variational_state=state, preconditioner=nk.optimizer.SR(diag_shift=0.01))
    t0 = time.perf_counter()
    driver.run(n_iter=iterations, show_progress=False)
    seconds = time.perf_counter() - t0
    state.n_samples = 16384
    energy = state.expect(hamiltonian)
    print(json.dumps({"peer": "netket", "version": nk.__version__, "n": n, "iterations": iterations, "seconds": seconds,
                      "energy": float(energy.mean.real), "error": float(energy.error_of_mean)}))


if __name__ == "__main__":
    main(int(sys.argv[1]), *(int(a) for a in sys.argv[2:]))
