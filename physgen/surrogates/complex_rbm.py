"""Complex RBM wave function learned from measurements in Pauli bases (QuCumber's complex wavefunction).

Two binary RBMs share the visible spins: the amplitude RBM λ and the phase RBM μ,

    ψ(σ) = √(p_λ(σ)) · exp(−i F_μ(σ) / 2),   p_λ(σ) = e^{−F_λ(σ)} / Z_λ,
    F(σ) = −b·σ − Σⱼ softplus(cⱼ + Wⱼ·σ)                      (each RBM's free energy)

A measurement is a bit string with the Pauli basis of every qubit (the condition of
the sample: 0 = Z, 1 = X, 2 = Y). Its probability is |⟨outcome|U_b|ψ⟩|², with U the
single-qubit rotation into that basis (Z: 𝟙; X: H = [[1, 1], [1, −1]]/√2;
Y: K = [[1, −i], [1, i]]/√2, whose rows are the bras of the +1 and −1 eigenstates).
Training maximises the exact likelihood: ψ is enumerated over all 2ⁿ configurations
(n ≤ 20) and rotated once per distinct basis in a batch, so there is no sampling noise
in the gradient. Data without conditions are σᶻ measurements (every qubit in Z), which
fix the amplitudes but leave the phases undetermined.

Sampling draws outcomes exactly in the basis given as the condition (Z everywhere
when unconditional); ``log_prob`` is the exact log-probability of an outcome in its basis.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from physgen.data import Data, Pipeline
from physgen.errors import InvalidDataError
from physgen.io.spins import PAULI  # the basis letters in the order of their codes
from physgen.options import option
from physgen.surrogates.base import Capabilities, Surrogate, SurrogateOptions
from physgen.surrogates.rbm import MAX_EXACT_SPINS
from physgen.surrogates.structure import FeatureStructure

__all__ = ["ComplexRBMOptions", "ComplexRBMSurrogate", "PAULI", "PauliMeasurementRBM", "rotate", "rotate_columns"]



def _rotations() -> torch.Tensor:
    s = 1 / math.sqrt(2)
    eye = torch.eye(2, dtype=torch.complex128)
    h = torch.tensor([[s, s], [s, -s]], dtype=torch.complex128)
    k = torch.tensor([[s, -1j * s], [s, 1j * s]], dtype=torch.complex128)
    return torch.stack([eye, h, k])


_U = _rotations()


def rotate(psi: torch.Tensor, basis: torch.Tensor | list[int] | tuple[int, ...]) -> torch.Tensor:
    """The amplitudes ⟨outcome|U_b|ψ⟩ of a state ``psi`` ``[2ⁿ]`` in the Pauli ``basis`` (one code per qubit, 0/1/2 = Z/X/Y)."""
    codes = [int(c) for c in basis]
    n = len(codes)
    out = psi.to(torch.complex128).reshape([2] * n)
    for i, c in enumerate(codes):
        if c:
            out = torch.movedim(torch.tensordot(_U[c], out, dims=([1], [i])), 0, i)
    return out.reshape(-1)


# rotated amplitudes held at once when scoring many bases: B × 2ⁿ × K complex numbers (64 MiB)
_ROTATION_CHUNK = 1 << 22


def rotate_columns(amplitudes: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """``amplitudes`` ``[2ⁿ, K]`` rotated into each of ``B`` Pauli bases (``codes`` ``[B, n]``): ``[B, 2ⁿ, K]``.

    One batched 2 × 2 product per qubit for all bases together (the column-wise form of :func:`rotate`).
    """
    n_bases, n = codes.shape
    k = amplitudes.shape[1]
    out = amplitudes.to(torch.complex128).expand(n_bases, -1, -1).reshape([n_bases] + [2] * n + [k])
    u = _U.to(amplitudes.device)
    for i in range(n):
        if not bool((codes[:, i] != 0).any()):
            continue
        moved = torch.movedim(out, 1 + i, 1)
        shape = moved.shape
        moved = torch.bmm(u[codes[:, i]], moved.reshape(n_bases, 2, -1)).reshape(shape)
        out = torch.movedim(moved, 1, 1 + i)
    return out.reshape(n_bases, 2**n, k)


def _configs(n: int) -> torch.Tensor:
    k = torch.arange(2**n)
    return ((k[:, None] >> torch.arange(n - 1, -1, -1)) & 1).to(torch.float64)


def _index(x: torch.Tensor) -> torch.Tensor:
    n = x.shape[1]
    return (x.round().long() * (1 << torch.arange(n - 1, -1, -1, device=x.device))).sum(1)


def _distinct_bases(codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The distinct rows of ``codes`` ``[N, n]`` (0/1/2) and each row's position among them.

    Rows are keyed as base-3 integers, so this is a one-dimensional ``unique`` (``unique(dim=0)``
    sorts rows and cost more than the whole likelihood of a 9,000-measurement data set).
    """
    powers = 3 ** torch.arange(codes.shape[1], device=codes.device, dtype=torch.long)
    keys, inverse = torch.unique(codes @ powers, return_inverse=True)
    return (keys[:, None] // powers) % 3, inverse


@dataclasses.dataclass(frozen=True)
class ComplexRBMOptions(SurrogateOptions):
    """Options of the complex RBM wave function (``create("complex_rbm", ...)``)."""

    alpha: float = option(1.0, "hidden units per qubit, in each of the amplitude and phase RBMs", gt=0)
    init_std: float = option(0.1, "standard deviation of the initial weights", gt=0)


class PauliMeasurementRBM(Surrogate):
    """The part shared by the RBM states learned from Pauli-basis measurements.

    A subclass supplies :meth:`amplitudes`, a matrix Ψ ``[2ⁿ, K]`` with ‖Ψ‖ = 1 whose Gram
    matrix ΨΨ† is the state (K = 1: a pure state ψ; K > 1: a purified mixed state); the
    probability of outcome x in basis b is then Σₖ |(U_b Ψ)ₓₖ|², the exact likelihood.
    """

    options: Any
    capabilities = Capabilities(exact_density=True, conditional=True, gradient_trained=True)
    data_kinds = ("spins",)
    max_qubits: ClassVar[int] = MAX_EXACT_SPINS

    def default_preprocessing(self, data: Data) -> Pipeline:
        return Pipeline()

    def build(self, dim: int, cond_dim: int, structure: FeatureStructure | None = None) -> None:
        if dim > self.max_qubits:
            raise InvalidDataError(f"the {self.family} family enumerates all 2ⁿ configurations, n ≤ {self.max_qubits}; got n = {dim}")
        if cond_dim not in (0, dim):
            raise InvalidDataError(f"the {self.family} family's conditions are the measurement basis of each qubit, [N, {dim}] codes 0/1/2 = Z/X/Y; got {cond_dim} columns")
        o = self.options
        n_hidden = max(1, round(o.alpha * dim))
        self.resolved.update(n_hidden=n_hidden)
        for part in ("amp", "phase"):  # the global generator, seeded by the training loop before build()
            setattr(self, f"{part}_w", nn.Parameter(torch.randn(n_hidden, dim) * o.init_std))
            setattr(self, f"{part}_b", nn.Parameter(torch.zeros(dim)))
            setattr(self, f"{part}_c", nn.Parameter(torch.zeros(n_hidden)))
        self.capabilities = Capabilities(exact_density=True, conditional=cond_dim > 0, gradient_trained=True)

    @property
    def n_visible(self) -> int:
        return int(self.amp_b.shape[0])

    def _free_energy(self, part: str, v: torch.Tensor) -> torch.Tensor:
        w, b, c = (getattr(self, f"{part}_{k}").double() for k in "wbc")
        return -(v @ b) - F.softplus(v @ w.T + c).sum(1)

    def amplitudes(self) -> torch.Tensor:
        """Ψ ``[2ⁿ, K]`` (basis order, complex128, ‖Ψ‖ = 1, differentiable); the state is ΨΨ†."""
        raise NotImplementedError

    def _basis_probabilities(self, codes: torch.Tensor) -> torch.Tensor:
        """Outcome probabilities ``[B, 2ⁿ]`` in each of the Pauli bases ``codes`` ``[B, n]``."""
        psi = self.amplitudes()
        chunk = max(1, _ROTATION_CHUNK // psi.numel())
        return torch.cat([(rotate_columns(psi, codes[i : i + chunk]).abs() ** 2).sum(2) for i in range(0, len(codes), chunk)])

    def _log_probs(self, x: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        """log p(x | b) per row of outcomes ``x`` measured in bases ``cond`` (None: Z everywhere)."""
        if cond is None:
            bases, inverse = torch.zeros(1, x.shape[1], dtype=torch.long, device=x.device), torch.zeros(len(x), dtype=torch.long, device=x.device)
        else:
            bases, inverse = _distinct_bases(cond.round().long())
        return torch.log(self._basis_probabilities(bases)[inverse, _index(x)] + 1e-300)

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None) -> tuple[torch.Tensor, dict[str, float]]:
        return (-self._log_probs(x, cond).mean() / x.shape[1]).float(), {}

    def log_prob_model(self, x: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        return self._log_probs(x, cond).float()

    def sample_model(self, n: int, cond: torch.Tensor | None, generator: torch.Generator) -> torch.Tensor:
        configs = _configs(self.n_visible).to(self.amp_b.device)
        codes = torch.zeros(n, self.n_visible, dtype=torch.long, device=configs.device) if cond is None else cond.round().long()
        bases, inverse = _distinct_bases(codes)
        probs = self._basis_probabilities(bases)
        out = torch.empty(n, self.n_visible, device=configs.device)
        for k in range(len(bases)):
            rows = (inverse == k).nonzero()[:, 0]
            out[rows] = configs[torch.multinomial(probs[k], len(rows), replacement=True, generator=generator)].float()
        return out

    def postprocess(self, x: torch.Tensor) -> torch.Tensor:
        return x.round()


class ComplexRBMSurrogate(PauliMeasurementRBM):
    """Amplitude and phase RBMs trained on Pauli-basis measurements by exact likelihood (options: :class:`ComplexRBMOptions`)."""

    family = "complex_rbm"
    Options = ComplexRBMOptions
    options: ComplexRBMOptions
    # full-batch exact likelihood for a fixed number of epochs: early stopping on the small validation
    # split of a tomography data set stopped at F ≈ 0.993 where training on reached 0.9987 (docs/guide/quantum.md)
    train_defaults: ClassVar[dict[str, Any]] = {"grad_clip": None, "epochs": 1000, "batch_size": 10_000, "lr": 0.02, "schedule": "constant"}

    def psi(self) -> torch.Tensor:
        """The normalised amplitudes ψ(σ) over all 2ⁿ configurations (basis order), complex128, differentiable."""
        v = _configs(self.n_visible).to(self.amp_b.device)
        f_amp = self._free_energy("amp", v)
        log_p = -f_amp - torch.logsumexp(-f_amp, 0)
        return torch.polar(torch.exp(0.5 * log_p), -0.5 * self._free_energy("phase", v))

    def amplitudes(self) -> torch.Tensor:
        return self.psi()[:, None]

    def wavefunction(self) -> np.ndarray:
        """ψ as a numpy complex128 vector (normalised), for the metrics of :mod:`physgen.quantum`."""
        with torch.no_grad():
            return self.psi().cpu().numpy()
