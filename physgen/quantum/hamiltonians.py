"""Spin-1/2 chains: sparse Hamiltonians, exact diagonalisation, exact observables.

Basis convention (used everywhere in :mod:`physgen.quantum`): a configuration is
a bit string x ∈ {0, 1}ⁿ with σᶻᵢ = 1 − 2xᵢ (x = 0 is spin up); basis state
index k = Σᵢ xᵢ 2^(n−1−i), so site 0 is the most significant bit.

* transverse-field Ising: H = −J Σ⟨ij⟩ σᶻᵢσᶻⱼ − h Σᵢ σˣᵢ
* XXZ: H = Σ⟨ij⟩ [J_xy (σˣᵢσˣⱼ + σʸᵢσʸⱼ) + J_z σᶻᵢσᶻⱼ]  (Heisenberg: J_xy = J_z = J)

``periodic`` adds the bond (n−1, 0). Ground states come from
``scipy.sparse.linalg.eigsh`` (Lanczos), fine up to ~20 spins.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from scipy.sparse.linalg import eigsh

from physgen.errors import InvalidDataError

__all__ = [
    "SpinChain",
    "tfim",
    "xxz",
    "heisenberg",
    "ground_state",
    "configurations",
    "sigma_z",
]

MAX_SPINS_ED = 24


def configurations(n: int) -> np.ndarray:
    """All 2ⁿ bit strings ``[2ⁿ, n]`` (uint8) in basis-index order."""
    k = np.arange(2**n, dtype=np.int64)
    return ((k[:, None] >> np.arange(n - 1, -1, -1)) & 1).astype(np.uint8)


def sigma_z(bits: np.ndarray) -> np.ndarray:
    """σᶻ = 1 − 2x for bit strings x."""
    return 1.0 - 2.0 * np.asarray(bits, dtype=np.float64)


@dataclass(frozen=True)
class SpinChain:
    """A spin-1/2 chain Hamiltonian: its parameters, bonds and sparse matrix.

    Attributes:
        kind: ``"tfim"`` or ``"xxz"``.
        n: number of spins.
        periodic: whether the bond (n−1, 0) is present.
        params: ``{"J": ..., "h": ...}`` (TFIM) or ``{"Jxy": ..., "Jz": ...}`` (XXZ).
    """

    kind: str
    n: int
    periodic: bool
    params: dict[str, float]

    @property
    def bonds(self) -> list[tuple[int, int]]:
        bonds = [(i, i + 1) for i in range(self.n - 1)]
        if self.periodic and self.n > 2:
            bonds.append((self.n - 1, 0))
        return bonds

    def diagonal(self, bits: np.ndarray) -> np.ndarray:
        """The σᶻσᶻ part of H for each configuration ``[B, n]`` → ``[B]``."""
        s = sigma_z(bits)
        zz = sum(s[:, i] * s[:, j] for i, j in self.bonds)
        if self.kind == "tfim":
            return -self.params["J"] * zz
        return self.params["Jz"] * zz

    def off_diagonal(self, bits: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        """The off-diagonal part as (flipped configurations ``[B, n]``, matrix elements ``[B]``) pairs.

        TFIM: one single spin flip per site, element −h. XXZ: one pair flip per
        bond with antiparallel spins, element 2 J_xy (σˣσˣ + σʸσʸ swaps ↑↓).
        """
        bits = np.asarray(bits, dtype=np.uint8)
        out = []
        if self.kind == "tfim":
            for i in range(self.n):
                flipped = bits.copy()
                flipped[:, i] ^= 1
                out.append((flipped, np.full(len(bits), -self.params["h"])))
        else:
            for i, j in self.bonds:
                flipped = bits.copy()
                flipped[:, i] ^= 1
                flipped[:, j] ^= 1
                anti = bits[:, i] != bits[:, j]
                out.append((flipped, np.where(anti, 2.0 * self.params["Jxy"], 0.0)))
        return out

    def sector(self, n_up: int) -> np.ndarray:
        """Basis indices (sorted) of the configurations with ``n_up`` spins up: an Sᶻ sector."""
        bits = configurations(self.n)
        return np.flatnonzero((1 - bits.astype(np.int64)).sum(1) == n_up)

    def matrix(self, n_up: int | None = None) -> sp.csr_matrix:
        """The Hamiltonian as a sparse CSR matrix (float64): 2ⁿ × 2ⁿ, or restricted to the
        sector with ``n_up`` spins up (XXZ conserves Sᶻ; the TFIM does not)."""
        if self.n > MAX_SPINS_ED:
            raise InvalidDataError(f"exact matrices are built up to {MAX_SPINS_ED} spins; got n = {self.n}")
        if n_up is not None and self.kind != "xxz":
            raise InvalidDataError("only the XXZ chain conserves Sᶻ; the TFIM has no magnetisation sectors")
        weights = 1 << np.arange(self.n - 1, -1, -1)
        if n_up is None:
            states = np.arange(2**self.n)
        else:
            states = self.sector(n_up)
        bits = ((states[:, None] >> np.arange(self.n - 1, -1, -1)) & 1).astype(np.uint8)
        index = np.arange(len(states))
        rows, cols, vals = [index], [index], [self.diagonal(bits)]
        for flipped, element in self.off_diagonal(bits):
            keep = element != 0
            target = (flipped[keep].astype(np.int64) * weights).sum(1)
            rows.append(index[keep])
            cols.append(target if n_up is None else np.searchsorted(states, target))
            vals.append(element[keep])
        dim = len(states)
        return sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(dim, dim))

    def describe(self) -> str:
        bc = "periodic" if self.periodic else "open"
        p = ", ".join(f"{k}={v:g}" for k, v in self.params.items())
        return f"{self.kind.upper()} chain, n={self.n}, {bc}, {p}"


def tfim(n: int, J: float = 1.0, h: float = 1.0, periodic: bool = False) -> SpinChain:
    """Transverse-field Ising chain H = −J Σ σᶻσᶻ − h Σ σˣ."""
    _check_n(n)
    return SpinChain("tfim", int(n), bool(periodic), _finite(J=J, h=h))


def xxz(n: int, Jxy: float = 1.0, Jz: float = 1.0, periodic: bool = False) -> SpinChain:
    """XXZ chain H = Σ [J_xy (σˣσˣ + σʸσʸ) + J_z σᶻσᶻ]."""
    _check_n(n)
    return SpinChain("xxz", int(n), bool(periodic), _finite(Jxy=Jxy, Jz=Jz))


def heisenberg(n: int, J: float = 1.0, periodic: bool = True) -> SpinChain:
    """Heisenberg chain H = J Σ σ⃗ᵢ·σ⃗ⱼ (XXZ with J_xy = J_z = J)."""
    return xxz(n, J, J, periodic)


def _finite(**couplings: float) -> dict[str, float]:
    out = {k: float(v) for k, v in couplings.items()}
    bad = [f"{k} = {v}" for k, v in out.items() if not np.isfinite(v)]
    if bad:
        raise InvalidDataError(f"couplings must be finite numbers; got {', '.join(bad)}")
    return out


def _check_n(n: int) -> None:
    if n < 2:
        raise InvalidDataError(f"a chain needs at least 2 spins; got n = {n}")


def ground_state(chain: SpinChain, tol: float = 1e-12, n_up: int | None = None) -> tuple[float, np.ndarray]:
    """(E₀, ψ₀) by Lanczos; ψ₀ normalised, with the sign fixed so its largest component is positive.

    With ``n_up`` (XXZ only) the search is restricted to that Sᶻ sector and ψ₀ is
    given in the sector's basis (``chain.sector(n_up)`` lists its states): the
    Heisenberg ring's singlet ground state lives at n_up = n/2.
    """
    h = chain.matrix(n_up)
    v0 = np.ones(h.shape[0]) / np.sqrt(h.shape[0])
    values, vectors = eigsh(h, k=1, which="SA", tol=tol, v0=v0)
    psi = vectors[:, 0]
    psi = psi * np.sign(psi[np.argmax(np.abs(psi))])
    return float(values[0]), psi / np.linalg.norm(psi)
