"""Quantum states: spin chains (Hamiltonians, exact diagonalisation, measurements, RBM ground states) and quantum dots.

>>> from physgen.quantum import tfim, ground_state
>>> round(ground_state(tfim(10, J=1.0, h=1.0))[0], 6)
-12.38149
"""

from physgen.quantum.dots import (
    GaussianBinaryRBM,
    HarmonicTrap,
    dot_energy,
    optimise_dot,
    taut_energy,
)
from physgen.quantum.hamiltonians import (
    SpinChain,
    configurations,
    ground_state,
    heisenberg,
    sigma_z,
    square_bonds,
    tfim,
    xxz,
)
from physgen.quantum.measurements import (
    basis_kl,
    fidelity,
    histogram_state,
    kl_divergence,
    linear_inversion,
    local_bases,
    overlap,
    pauli_bases,
    sample_measurements,
    sample_pauli_measurements,
    tomography_report,
    zz_correlations,
    zz_correlations_from_samples,
)
from physgen.quantum.vmc import (
    RBMWavefunction,
    VMCResult,
    marshall_signs,
    optimise_ground_state,
    sign_rule,
    state_vector,
)

__all__ = [
    "SpinChain",
    "tfim",
    "xxz",
    "heisenberg",
    "ground_state",
    "configurations",
    "sigma_z",
    "square_bonds",
    "sample_measurements",
    "histogram_state",
    "overlap",
    "fidelity",
    "kl_divergence",
    "tomography_report",
    "local_bases",
    "pauli_bases",
    "sample_pauli_measurements",
    "basis_kl",
    "linear_inversion",
    "zz_correlations",
    "zz_correlations_from_samples",
    "RBMWavefunction",
    "VMCResult",
    "marshall_signs",
    "optimise_ground_state",
    "sign_rule",
    "state_vector",
    "HarmonicTrap",
    "GaussianBinaryRBM",
    "optimise_dot",
    "dot_energy",
    "taut_energy",
]
