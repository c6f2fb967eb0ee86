"""Measurement data and the metrics that judge a reconstructed state.

For a positive real wave function ψ(x) = √p(x) (the TFIM ground state in the σᶻ
basis is one), a σᶻ measurement of every spin draws x with probability |ψ(x)|².

Fidelity conventions: :func:`overlap` is |⟨ψ|φ⟩| and :func:`fidelity` is
|⟨ψ|φ⟩|², QuCumber's ``fidelity``; physgen reports both and quotes targets on the
stricter squared one.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from physgen.data import Data, Schema
from physgen.errors import InvalidDataError
from physgen.io.spins import PAULI
from physgen.quantum.hamiltonians import configurations, sigma_z

__all__ = [
    "tomography_report",
    "sample_measurements",
    "histogram_state",
    "overlap",
    "fidelity",
    "kl_divergence",
    "zz_correlations",
    "zz_correlations_from_samples",
    "bits_to_index",
    "local_bases",
    "pauli_bases",
    "sample_pauli_measurements",
    "basis_kl",
    "linear_inversion",
]


def bits_to_index(bits: np.ndarray) -> np.ndarray:
    """Basis indices of bit strings ``[B, n]`` (site 0 most significant)."""
    bits = np.asarray(bits).astype(np.int64)
    return (bits * (1 << np.arange(bits.shape[1] - 1, -1, -1))).sum(1)


def sample_measurements(psi: np.ndarray, n_samples: int, seed: int = 0) -> Data:
    """``n_samples`` σᶻ configurations drawn from |ψ|², as ``Data(kind="spins")`` with x ``[N, n]`` of 0/1."""
    psi = np.asarray(psi)
    n = _n_qubits(psi)
    p = _z_probabilities(psi)
    idx = np.random.default_rng(seed).choice(len(p), size=n_samples, p=p)
    bits = configurations(n)[idx]
    return Data(bits.astype(np.float32), Schema(kind="spins", feature_names=tuple(f"s{i}" for i in range(n)), source_format="spins"))


def pauli_bases(n: int) -> list[str]:
    """All 3ⁿ products of X, Y and Z on n qubits: an informationally complete set, which fixes a density matrix."""
    import itertools

    return ["".join(b) for b in itertools.product("ZXY", repeat=n)]


def local_bases(n: int) -> list[str]:
    """The tomography protocol of QuCumber's complex-wavefunction tutorial for n qubits: Z on every qubit,
    then X, then Y, on one qubit at a time (2n + 1 bases; n = 2 gives ZZ, XZ, ZX, YZ, ZY)."""
    return ["Z" * n] + [("Z" * i) + p + ("Z" * (n - i - 1)) for p in "XY" for i in range(n)]


def _codes(basis: str, n: int) -> list[int]:
    letters = basis.replace(" ", "").upper()
    if len(letters) != n or set(letters) - set(PAULI):
        raise InvalidDataError(f"a basis names one Pauli letter (X, Y, Z) per qubit, {n} here; got {basis!r}")
    return [PAULI.index(c) for c in letters]


def _n_qubits(psi: np.ndarray) -> int:
    n = int(round(np.log2(len(psi))))
    if 2**n != len(psi):
        raise InvalidDataError(f"a state of n spins has 2ⁿ amplitudes; got {len(psi)}")
    return n


def _basis_probabilities(state: np.ndarray, codes: list[int]) -> np.ndarray:
    """Outcome probabilities in a Pauli basis of a state vector or (through its eigenvectors) a density matrix."""
    import torch

    from physgen.surrogates.complex_rbm import rotate

    state = np.asarray(state, dtype=np.complex128)
    if state.ndim == 2:
        weights, vectors = np.linalg.eigh(state / np.trace(state))
        parts = [(w, vectors[:, k]) for k, w in enumerate(weights) if w > 1e-14]
    else:
        parts = [(1.0, state / np.linalg.norm(state))]
    p = sum(w * np.abs(rotate(torch.from_numpy(np.ascontiguousarray(v)), codes).numpy()) ** 2 for w, v in parts)
    return p / p.sum()


def sample_pauli_measurements(psi: np.ndarray, bases: list[str], n_per_basis: int, seed: int = 0) -> Data:
    """``n_per_basis`` outcomes drawn from |⟨outcome|U_b|ψ⟩|² in each basis (``"XZ"``: X on qubit 0, Z on qubit 1);
    ``psi`` may be a density matrix ``[2ⁿ, 2ⁿ]`` (probabilities ⟨outcome|U_b ρ U_b†|outcome⟩).

    Returns ``Data(kind="spins")``: ``x`` the 0/1 outcomes (0: the +1 eigenstate), ``cond`` the basis of each
    qubit coded 0/1/2 = Z/X/Y; ``physgen.write(data, "samples.txt")`` also writes ``samples_bases.txt``.
    """
    n = _n_qubits(np.asarray(psi))
    rng = np.random.default_rng(seed)
    xs, cs = [], []
    for basis in bases:
        codes = _codes(basis, n)
        p = _basis_probabilities(psi, codes)
        xs.append(configurations(n)[rng.choice(len(p), size=n_per_basis, p=p)])
        cs.append(np.tile(np.asarray(codes, dtype=np.float32), (n_per_basis, 1)))
    schema = Schema(kind="spins", feature_names=tuple(f"s{i}" for i in range(n)), source_format="spins", cond_names=tuple(f"basis_{i}" for i in range(n)))
    return Data(np.concatenate(xs).astype(np.float32), schema, cond=np.concatenate(cs))


def basis_kl(psi_exact: np.ndarray, psi_model: np.ndarray, bases: list[str]) -> float:
    """KL(exact ‖ model) of the outcome distributions in each of ``bases``, averaged over them, in nats (QuCumber's KL)."""
    n = _n_qubits(np.asarray(psi_exact))
    total = 0.0
    for basis in bases:
        codes = _codes(basis, n)
        total += _kl(_basis_probabilities(psi_exact, codes), _basis_probabilities(psi_model, codes))
    return total / len(bases)


_PAULI_MATRICES = np.array([np.eye(2), [[0, 1], [1, 0]], [[0, -1j], [1j, 0]], [[1, 0], [0, -1]]], dtype=np.complex128)  # I, X, Y, Z


def linear_inversion(samples: Data, n: int | None = None) -> np.ndarray:
    """The linear-inversion estimate of ρ from Pauli-basis measurements, projected onto the physical states.

    ρ̂ = 2⁻ⁿ Σ_P ⟨P⟩ P over the 4ⁿ Pauli strings, each ⟨P⟩ the mean of Π σ over every measurement
    whose basis matches P where P is not the identity (strings no basis measures count as 0).
    The negative eigenvalues that sampling noise leaves are set to zero and the trace to one.
    This is the baseline a density-matrix reconstruction must beat, as the histogram is for a
    positive wave function. Measurements without bases are σᶻ ones.
    """
    from scipy.linalg import hadamard

    bits = samples.x.numpy().round().astype(np.int64)
    n = bits.shape[1] if n is None else n
    if n > 10:
        raise InvalidDataError(f"linear inversion builds the 4ⁿ Pauli expectations, n ≤ 10; got n = {n}")
    codes = np.zeros_like(bits) if samples.cond is None else samples.cond.numpy().round().astype(np.int64)
    keys = codes @ (3 ** np.arange(n))
    distinct, inverse = np.unique(keys, return_inverse=True)
    counts = np.zeros((len(distinct), 2**n))
    np.add.at(counts, (inverse, bits_to_index(bits)), 1.0)
    sums = counts @ hadamard(2**n)  # Σₓ count(x) Π_{i∈S} (1 − 2xᵢ) for every subset S of the qubits
    subsets = configurations(n).astype(np.int64)  # row S: 1 where qubit i is in S (site 0 first)
    bases = (distinct[:, None] // 3 ** np.arange(n)) % 3  # 0/1/2 = Z/X/Y per qubit
    letters = np.array([3, 1, 2])[bases]  # as indices into I, X, Y, Z
    strings = (subsets[None] * letters[:, None]) @ (4 ** np.arange(n - 1, -1, -1))  # [B, 2ⁿ]: the Pauli string of (basis, S)
    total, seen = np.zeros(4**n), np.zeros(4**n)
    np.add.at(total, strings.ravel(), sums.ravel())
    np.add.at(seen, strings.ravel(), np.repeat(counts.sum(1), 2**n))
    expectations = np.divide(total, seen, out=np.zeros(4**n), where=seen > 0)
    rho = expectations.reshape([4] * n).astype(np.complex128)
    for k in range(n):  # replace string index k by the (row, column) of its Pauli matrix
        rho = np.moveaxis(np.tensordot(_PAULI_MATRICES, rho, axes=([0], [2 * k])), (0, 1), (2 * k, 2 * k + 1))
    rho = rho.transpose(list(range(0, 2 * n, 2)) + list(range(1, 2 * n, 2))).reshape(2**n, 2**n) / 2**n
    weights, vectors = np.linalg.eigh((rho + rho.conj().T) / 2)
    weights = np.clip(weights, 0, None)
    return (vectors * (weights / weights.sum())) @ vectors.conj().T


def histogram_state(samples: Data | np.ndarray, n: int | None = None) -> np.ndarray:
    """The plain histogram estimate ψ(x) = √(count(x) / N) of a positive state."""
    bits = samples.x.numpy() if isinstance(samples, Data) else np.asarray(samples)
    n = bits.shape[1] if n is None else n
    counts = np.bincount(bits_to_index(bits), minlength=2**n).astype(np.float64)
    return np.sqrt(counts / counts.sum())


def _unit(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, dtype=np.complex128 if np.iscomplexobj(v) else np.float64)
    return v / np.linalg.norm(v)


def overlap(psi: np.ndarray, phi: np.ndarray) -> float:
    """|⟨ψ|φ⟩| of two (normalised here) states."""
    return float(abs(np.vdot(_unit(psi), _unit(phi))))


def fidelity(psi: np.ndarray, phi: np.ndarray) -> float:
    """|⟨ψ|φ⟩|² (QuCumber's fidelity); with a density matrix ``[2ⁿ, 2ⁿ]`` on either side, Uhlmann's
    (Tr √(√ρ σ √ρ))², which is ⟨ψ|ρ|ψ⟩ against a pure state."""
    a, b = np.asarray(psi), np.asarray(phi)
    if a.ndim == 1 and b.ndim == 1:
        return overlap(a, b) ** 2
    if a.ndim == 1:
        a, b = b, a
    a = a / np.trace(a)
    if b.ndim == 1:
        b = _unit(b)
        return float(np.real(np.vdot(b, a @ b)))
    root = _psd_sqrt(a)
    inner = root @ (b / np.trace(b)) @ root
    eigenvalues = np.linalg.eigvalsh((inner + inner.conj().T) / 2)
    return float(np.sum(np.sqrt(np.clip(eigenvalues, 0, None))) ** 2)


def _psd_sqrt(m: np.ndarray) -> np.ndarray:
    """The square root of a Hermitian positive semi-definite matrix (rank-deficient ones included)."""
    w, v = np.linalg.eigh((m + m.conj().T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.conj().T


def _z_probabilities(state: np.ndarray) -> np.ndarray:
    state = np.asarray(state)
    p = np.real(np.diag(state)) if state.ndim == 2 else np.abs(state) ** 2
    return p / p.sum()


def kl_divergence(psi_exact: np.ndarray, psi_model: np.ndarray) -> float:
    """KL(exact ‖ model) of the σᶻ measurement distributions, in nats (states or density matrices)."""
    return _kl(_z_probabilities(psi_exact), _z_probabilities(psi_model))


def _kl(p: np.ndarray, q: np.ndarray) -> float:
    keep = p > 0
    return float(np.sum(p[keep] * (np.log(p[keep]) - np.log(np.maximum(q[keep], 1e-300)))))


def zz_correlations(psi: np.ndarray) -> np.ndarray:
    """⟨σᶻᵢ σᶻⱼ⟩ ``[n, n]`` of a state, exactly."""
    n = int(round(np.log2(len(psi))))
    p = np.abs(np.asarray(psi)) ** 2
    p = p / p.sum()
    s = sigma_z(configurations(n))
    return (s * p[:, None]).T @ s


def zz_correlations_from_samples(bits: np.ndarray) -> np.ndarray:
    """⟨σᶻᵢ σᶻⱼ⟩ ``[n, n]`` estimated from measured configurations ``[N, n]``."""
    s = sigma_z(np.asarray(bits))
    return s.T @ s / len(s)


def tomography_report(model: Any, psi_exact: np.ndarray, samples: Data | None = None) -> dict[str, float]:
    """Fidelity and KL of a fitted RBM state against an exact one, beside the baseline the data give without a model.

    ``model`` is a fitted :class:`~physgen.surrogates.rbm.RBMSurrogate`,
    :class:`~physgen.surrogates.complex_rbm.ComplexRBMSurrogate` (its ``wavefunction()``) or
    :class:`~physgen.surrogates.density_rbm.DensityRBMSurrogate` (its ``density_matrix()``);
    ``psi_exact`` is a state vector or a density matrix. With σᶻ ``samples`` the report adds the
    fidelity of their plain histogram, which every reconstruction of a positive state must beat;
    with samples in several Pauli bases it adds ``basis_kl``, the KL averaged over the bases they
    hold, and ``linear_inversion_fidelity``, that of :func:`linear_inversion` from the same data.
    """
    # InvalidDataError beyond the family's size limit, before any allocation
    state = model.density_matrix() if hasattr(model, "density_matrix") else model.wavefunction()
    if len(np.asarray(psi_exact)) != len(state):
        raise InvalidDataError(f"the exact state has {len(np.asarray(psi_exact))} amplitudes and the model {len(state)}; they describe different numbers of spins")
    out = {"fidelity": fidelity(psi_exact, state), "kl": kl_divergence(psi_exact, state)}
    if np.ndim(psi_exact) == 1 and np.ndim(state) == 1:
        out = {"overlap": overlap(psi_exact, state), **out}
    n = len(state).bit_length() - 1
    if samples is not None and samples.cond is not None:
        bases = sorted({"".join(PAULI[int(c)] for c in row) for row in samples.cond.numpy()})
        out.update(basis_kl=basis_kl(psi_exact, state, bases), n_bases=len(bases))
        if n <= 10:
            out.update(linear_inversion_fidelity=fidelity(psi_exact, linear_inversion(samples, n)))
    elif samples is not None:
        hist = histogram_state(samples, n)
        out.update(histogram_fidelity=fidelity(psi_exact, hist), histogram_overlap=overlap(psi_exact, hist))
    return out
