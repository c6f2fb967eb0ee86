"""Spin-1/2 chains: sparse Hamiltonians, exact diagonalisation, exact observables.

Basis convention (used everywhere in :mod:`physgen.quantum`): a configuration is
a bit string x ∈ {0, 1}ⁿ with σᶻᵢ = 1 − 2xᵢ (x = 0 is spin up); basis state
index k = Σᵢ xᵢ 2^(n−1−i), so site 0 is the most significant bit.

* transverse-field Ising: H = −J Σ⟨ij⟩ σᶻᵢσᶻⱼ − h Σᵢ σˣᵢ
* XXZ: H = Σ⟨ij⟩ [J_xy (σˣᵢσˣⱼ + σʸᵢσʸⱼ) + J_z σᶻᵢσᶻⱼ]  (Heisenberg: J_xy = J_z = J)

``periodic`` adds the bond (n−1, 0). Every constructor also takes a lattice shape
``(Lx, Ly)`` instead of n: the square lattice of Lx·Ly sites, site (x, y) at index
y·Lx + x, with nearest-neighbour bonds (wrapping around when periodic). Ground states come from
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
    "square_bonds",
]

MAX_SPINS_ED = 24


def configurations(n: int) -> np.ndarray:
    """All 2ⁿ bit strings ``[2ⁿ, n]`` (uint8) in basis-index order."""
    k = np.arange(2**n, dtype=np.int64)
    return ((k[:, None] >> np.arange(n - 1, -1, -1)) & 1).astype(np.uint8)


def sector_states(n: int, n_up: int) -> np.ndarray:
    """Basis indices (sorted) of the n-spin configurations with ``n_up`` spins up (x = 0): an Sᶻ sector."""
    return np.flatnonzero((1 - configurations(n).astype(np.int64)).sum(1) == n_up)


def sigma_z(bits: np.ndarray) -> np.ndarray:
    """σᶻ = 1 − 2x for bit strings x."""
    return 1.0 - 2.0 * np.asarray(bits, dtype=np.float64)


@dataclass(frozen=True)
class SpinChain:
    """A spin-1/2 chain Hamiltonian: its parameters, bonds and sparse matrix.

    Attributes:
        kind: ``"tfim"`` or ``"xxz"``.
        n: number of spins.
        periodic: whether the bond (n−1, 0) is present (on a lattice: the wrap-around bonds).
        params: ``{"J": ..., "h": ...}`` (TFIM) or ``{"Jxy": ..., "Jz": ...}`` (XXZ).
        lattice: ``(Lx, Ly)`` for a square lattice, None for a chain.
    """

    kind: str
    n: int
    periodic: bool
    params: dict[str, float]
    lattice: tuple[int, int] | None = None

    @property
    def bonds(self) -> list[tuple[int, int]]:
        if self.lattice is not None:
            return square_bonds(*self.lattice, periodic=self.periodic)
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
        return sector_states(self.n, n_up)

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
        where = "chain, n=" + str(self.n) if self.lattice is None else f"{self.lattice[0]}×{self.lattice[1]} square lattice"
        return f"{self.kind.upper()} {where}, {bc}, {p}"

    def to_dict(self) -> dict:
        """A JSON-ready description that :meth:`from_dict` rebuilds."""
        return {"kind": self.kind, "n": self.n, "periodic": self.periodic, "params": dict(self.params), "lattice": None if self.lattice is None else list(self.lattice)}

    @classmethod
    def from_dict(cls, d: dict) -> SpinChain:
        lattice = d.get("lattice")
        return cls(str(d["kind"]), int(d["n"]), bool(d["periodic"]), {k: float(v) for k, v in d["params"].items()}, None if lattice is None else (int(lattice[0]), int(lattice[1])))


def square_bonds(lx: int, ly: int, periodic: bool = True) -> list[tuple[int, int]]:
    """Nearest-neighbour bonds of an lx × ly square lattice (site (x, y) = y·lx + x), each once."""
    bonds: set[tuple[int, int]] = set()
    for y in range(ly):
        for x in range(lx):
            for nx, ny in ((x + 1, y), (x, y + 1)):
                if (nx >= lx or ny >= ly) and not periodic:
                    continue
                a, b = y * lx + x, (ny % ly) * lx + nx % lx
                if a != b:
                    bonds.add((min(a, b), max(a, b)))
    return sorted(bonds)


def tfim(n: int | tuple[int, int], J: float = 1.0, h: float = 1.0, periodic: bool = False) -> SpinChain:
    """Transverse-field Ising model H = −J Σ σᶻσᶻ − h Σ σˣ on a chain of n sites or an (Lx, Ly) square lattice."""
    n, lattice = _sites(n)
    return SpinChain("tfim", n, bool(periodic), _finite(J=J, h=h), lattice)


def xxz(n: int | tuple[int, int], Jxy: float = 1.0, Jz: float = 1.0, periodic: bool = False) -> SpinChain:
    """XXZ model H = Σ [J_xy (σˣσˣ + σʸσʸ) + J_z σᶻσᶻ] on a chain of n sites or an (Lx, Ly) square lattice."""
    n, lattice = _sites(n)
    return SpinChain("xxz", n, bool(periodic), _finite(Jxy=Jxy, Jz=Jz), lattice)


def heisenberg(n: int | tuple[int, int], J: float = 1.0, periodic: bool = True) -> SpinChain:
    """Heisenberg model H = J Σ σ⃗ᵢ·σ⃗ⱼ (XXZ with J_xy = J_z = J) on a chain or an (Lx, Ly) square lattice."""
    return xxz(n, J, J, periodic)


def _sites(n: int | tuple[int, int]) -> tuple[int, tuple[int, int] | None]:
    if isinstance(n, (tuple, list)):
        if len(n) != 2 or any(int(v) != v or v < 2 for v in n):
            raise InvalidDataError(f"a square lattice is (Lx, Ly) with both ≥ 2; got {tuple(n)}")
        return int(n[0]) * int(n[1]), (int(n[0]), int(n[1]))
    _check_n(n)
    return int(n), None


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
