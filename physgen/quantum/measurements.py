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
]


def bits_to_index(bits: np.ndarray) -> np.ndarray:
    """Basis indices of bit strings ``[B, n]`` (site 0 most significant)."""
    bits = np.asarray(bits).astype(np.int64)
    return (bits * (1 << np.arange(bits.shape[1] - 1, -1, -1))).sum(1)


def sample_measurements(psi: np.ndarray, n_samples: int, seed: int = 0) -> Data:
    """``n_samples`` σᶻ configurations drawn from |ψ|², as ``Data(kind="spins")`` with x ``[N, n]`` of 0/1."""
    psi = np.asarray(psi)
    n = int(round(np.log2(len(psi))))
    if 2**n != len(psi):
        raise InvalidDataError(f"a state of n spins has 2ⁿ amplitudes; got {len(psi)}")
    p = np.abs(psi) ** 2
    p = p / p.sum()
    idx = np.random.default_rng(seed).choice(len(p), size=n_samples, p=p)
    bits = configurations(n)[idx]
    return Data(bits.astype(np.float32), Schema(kind="spins", feature_names=tuple(f"s{i}" for i in range(n)), source_format="spins"))


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
    """|⟨ψ|φ⟩|² (QuCumber's fidelity)."""
    return overlap(psi, phi) ** 2


def kl_divergence(psi_exact: np.ndarray, psi_model: np.ndarray) -> float:
    """KL(|ψ_exact|² ‖ |ψ_model|²) of the σᶻ measurement distributions, in nats."""
    p, q = np.abs(_unit(psi_exact)) ** 2, np.abs(_unit(psi_model)) ** 2
    keep = p > 0
    with np.errstate(divide="ignore"):
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
    """Overlap, fidelity and KL of a fitted RBM's wavefunction against an exact positive state (and the histogram baseline).

    ``model`` is a fitted :class:`~physgen.surrogates.rbm.RBMSurrogate` (its ``wavefunction()``);
    with ``samples`` the report adds the fidelity of their plain histogram, which every
    reconstruction must beat.
    """
    psi = model.wavefunction()  # InvalidDataError beyond MAX_EXACT_SPINS, before any allocation
    if len(np.asarray(psi_exact)) != len(psi):
        raise InvalidDataError(f"the exact state has {len(np.asarray(psi_exact))} amplitudes and the model {len(psi)}; they describe different numbers of spins")
    out = {"overlap": overlap(psi_exact, psi), "fidelity": fidelity(psi_exact, psi), "kl": kl_divergence(psi_exact, psi)}
    if samples is not None:
        hist = histogram_state(samples, len(np.asarray(psi_exact)).bit_length() - 1)
        out.update(histogram_fidelity=fidelity(psi_exact, hist), histogram_overlap=overlap(psi_exact, hist))
    return out
