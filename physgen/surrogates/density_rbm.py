"""Density-matrix RBM: a mixed state learned from Pauli-basis measurements (QuCumber's ``DensityMatrix``).

The latent-space purification of Torlai & Melko (PRL 120, 240503, 2018): the amplitude and
phase RBMs of the complex wave function plus n_aux auxiliary units that are traced out,

    ρ(σ, σ′) = Σₐ Ψ(σ, a) Ψ*(σ′, a),
    Ψ(σ, a) = exp[−½ F_λ(σ) − (i/2) F_μ(σ) + ½ Σₖ aₖ (U_λₖ·σ + dₖ + i U_μₖ·σ)],

whose sum over a gives the paper's neural density operator exp[Γ⁺_λ + iΓ⁻_μ + Π]. The rank of
ρ is at most 2^n_aux. Training maximises the exact likelihood of the measurements:
p(x | b) = ⟨x|U_b ρ U_b†|x⟩ = Σₐ |(U_b Ψ)(x, a)|² / Tr ρ, enumerated over all 2ⁿ × 2^n_aux
entries of Ψ, so there is no sampling noise in the gradient. Without conditions the data are
σᶻ measurements, which fix only the diagonal of ρ; informationally complete data are all 3ⁿ
products of X, Y and Z (:func:`physgen.quantum.pauli_bases`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from physgen.errors import InvalidDataError
from physgen.options import option
from physgen.surrogates.base import SurrogateOptions
from physgen.surrogates.complex_rbm import PauliMeasurementRBM, _configs
from physgen.surrogates.rbm import MAX_EXACT_SPINS
from physgen.surrogates.structure import FeatureStructure

__all__ = ["DensityRBMOptions", "DensityRBMSurrogate", "MAX_DENSITY_QUBITS"]

# ρ has 4ⁿ entries; 10 qubits is 16 MiB of complex128
MAX_DENSITY_QUBITS = 10


@dataclasses.dataclass(frozen=True)
class DensityRBMOptions(SurrogateOptions):
    """Options of the density-matrix RBM (``create("density_rbm", ...)``)."""

    alpha: float = option(1.0, "hidden units per qubit, in each of the amplitude and phase RBMs", gt=0)
    aux_alpha: float = option(1.5, "auxiliary (traced-out) units per qubit; the rank of ρ is at most 2^(aux_alpha·n)", gt=0)
    # weights of order one give the auxiliary columns of Ψ distinct directions from the start; at 0.1 they begin
    # almost equal (a nearly pure ρ) and two of five seeds stopped at F = 0.965 and 0.981 (docs/guide/quantum.md)
    init_std: float = option(1.0, "standard deviation of the initial weights", gt=0)


class DensityRBMSurrogate(PauliMeasurementRBM):
    """A purified RBM density matrix trained on Pauli-basis measurements (options: :class:`DensityRBMOptions`)."""

    family = "density_rbm"
    Options = DensityRBMOptions
    options: DensityRBMOptions
    max_qubits = MAX_DENSITY_QUBITS
    # full batches, exact likelihood, a fixed number of epochs (as complex_rbm); lr and epochs measured on
    # QuCumber's tutorial-3 protocol (docs/guide/quantum.md)
    train_defaults: ClassVar[dict[str, Any]] = {"grad_clip": None, "epochs": 2000, "batch_size": 10_000, "lr": 0.05, "schedule": "constant"}

    def build(self, dim: int, cond_dim: int, structure: FeatureStructure | None = None) -> None:
        super().build(dim, cond_dim, structure)
        n_aux = max(1, round(self.options.aux_alpha * dim))
        if dim + n_aux > MAX_EXACT_SPINS:
            raise InvalidDataError(f"the density_rbm family enumerates 2^(n + n_aux) entries of its purification, n + n_aux ≤ {MAX_EXACT_SPINS}; "
                                   f"got n = {dim}, n_aux = {n_aux} (lower aux_alpha)")
        self.resolved.update(n_aux=n_aux)
        std = self.options.init_std
        self.aux_u_amp = nn.Parameter(torch.randn(n_aux, dim) * std)
        self.aux_u_phase = nn.Parameter(torch.randn(n_aux, dim) * std)
        self.aux_d = nn.Parameter(torch.zeros(n_aux))

    def amplitudes(self) -> torch.Tensor:
        v = _configs(self.n_visible).to(self.amp_b.device)
        a = _configs(int(self.aux_d.shape[0])).to(v.device)
        real = -0.5 * self._free_energy("amp", v)[:, None] + 0.5 * (v @ self.aux_u_amp.double().T + self.aux_d.double()) @ a.T
        imag = -0.5 * self._free_energy("phase", v)[:, None] + 0.5 * (v @ self.aux_u_phase.double().T) @ a.T
        log_norm = 0.5 * torch.logsumexp(2 * real.reshape(-1), 0)
        return torch.polar(torch.exp(real - log_norm), imag)

    def density_matrix(self) -> np.ndarray:
        """ρ ``[2ⁿ, 2ⁿ]`` (Tr ρ = 1, Hermitian, positive semi-definite by construction) as numpy complex128."""
        with torch.no_grad():
            psi = self.amplitudes()
            return (psi @ psi.conj().T).cpu().numpy()
