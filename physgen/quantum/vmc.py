"""Variational ground states with an RBM wave function (Carleo & Troyer 2017).

    log ψ(σ) = Σᵢ aᵢσᵢ + Σⱼ log cosh(bⱼ + Σᵢ Wⱼᵢσᵢ),   σᵢ = ±1

optimised by stochastic reconfiguration (the natural gradient of the energy):
θ ← θ − η (S + λ𝟙)⁻¹ F, with S the covariance of the log-derivatives O = ∂ log ψ
and F the covariance of O with the local energy E_loc(σ) = (Hψ)(σ)/ψ(σ), both
under |ψ|². For small chains the expectations are exact sums over all 2ⁿ
configurations — exact sampling, no Monte Carlo noise; otherwise they come from
persistent Metropolis chains (single spin flips for the TFIM, neighbour
exchanges conserving Sᶻ for the XXZ chain) and each energy carries σ/√N.

``translation_invariant=True`` shares the weights across translations of a
periodic chain (α feature filters, each applied at every shift), which cuts the
parameters from n + αn + αn² to 1 + α + αn.

The Heisenberg antiferromagnet is made positive by Marshall's sign rule: with
U = (−1)^{N↑ on even sites}, H' = U H U has non-positive off-diagonal elements,
so its ground state is positive and a real RBM can represent it; energies are
unchanged.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp
import torch

from physgen.errors import InvalidDataError
from physgen.quantum.hamiltonians import SpinChain, configurations

__all__ = ["RBMWavefunction", "VMCResult", "marshall_signs", "optimise_ground_state"]

MAX_EXACT = 20


def marshall_signs(n: int) -> np.ndarray:
    """(−1)^(number of up spins on even sites) for every basis configuration (n ≤ 24)."""
    bits = configurations(n)
    up_even = (1 - bits[:, ::2].astype(np.int64)).sum(1)
    return np.where(up_even % 2 == 0, 1.0, -1.0)


class RBMWavefunction(torch.nn.Module):
    """A real, positive RBM amplitude over σ ∈ {±1}ⁿ (float64)."""

    def __init__(self, n: int, alpha: int = 1, translation_invariant: bool = False, seed: int = 0, init_std: float = 0.01):
        super().__init__()
        self.n, self.alpha, self.symmetric = int(n), int(alpha), bool(translation_invariant)
        gen = torch.Generator().manual_seed(seed)
        if self.symmetric:
            self.a = torch.nn.Parameter(torch.zeros(1, dtype=torch.float64))
            self.b = torch.nn.Parameter(torch.zeros(self.alpha, dtype=torch.float64))
            self.w = torch.nn.Parameter(torch.randn(self.alpha, n, generator=gen, dtype=torch.float64) * init_std)
            shifts = (torch.arange(n)[None, :] + torch.arange(n)[:, None]) % n  # [t, i] -> site (i + t) mod n
            self.register_buffer("shifts", shifts)
        else:
            self.a = torch.nn.Parameter(torch.zeros(n, dtype=torch.float64))
            self.b = torch.nn.Parameter(torch.zeros(self.alpha * n, dtype=torch.float64))
            self.w = torch.nn.Parameter(torch.randn(self.alpha * n, n, generator=gen, dtype=torch.float64) * init_std)

    def n_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def _theta(self, s: torch.Tensor) -> torch.Tensor:
        if self.symmetric:
            rolled = s[:, self.shifts]  # [B, t, i]
            return torch.einsum("bti,fi->bft", rolled, self.w) + self.b[None, :, None]  # [B, α, n]
        return s @ self.w.T + self.b

    def log_psi(self, s: torch.Tensor) -> torch.Tensor:
        """log ψ(σ) per row of ``s`` ``[B, n]`` (σ = ±1)."""
        theta = self._theta(s)
        lc = _log_cosh(theta)
        hidden = lc.sum((1, 2)) if self.symmetric else lc.sum(1)
        return (s.sum(1) * self.a[0] if self.symmetric else s @ self.a) + hidden

    def log_derivatives(self, s: torch.Tensor) -> torch.Tensor:
        """O_k(σ) = ∂ log ψ / ∂θ_k, ``[B, n_parameters]`` in parameter order (a, b, w)."""
        t = torch.tanh(self._theta(s))
        if self.symmetric:
            o_a = s.sum(1, keepdim=True)
            o_b = t.sum(2)
            o_w = torch.einsum("bft,bti->bfi", t, s[:, self.shifts]).reshape(len(s), -1)
        else:
            o_a, o_b = s, t
            o_w = (t[:, :, None] * s[:, None, :]).reshape(len(s), -1)
        return torch.cat([o_a, o_b, o_w], dim=1)

    def flat_parameters(self) -> torch.Tensor:
        return torch.cat([p.detach().reshape(-1) for p in (self.a, self.b, self.w)])

    def add_to_parameters(self, delta: torch.Tensor) -> None:
        with torch.no_grad():
            offset = 0
            for p in (self.a, self.b, self.w):
                p.add_(delta[offset : offset + p.numel()].reshape(p.shape))
                offset += p.numel()


def _log_cosh(x: torch.Tensor) -> torch.Tensor:
    ax = x.abs()
    return ax + torch.log1p(torch.exp(-2 * ax)) - math.log(2)


@dataclass
class VMCResult:
    """Energies per iteration (with their statistical error) and the final state."""

    energies: list[float]
    errors: list[float]
    variances: list[float]
    seconds: float
    exact_energy: float | None
    model: RBMWavefunction
    history: list[dict[str, float]] = field(default_factory=list)

    @property
    def energy(self) -> float:
        return self.energies[-1]

    @property
    def relative_error(self) -> float | None:
        return None if self.exact_energy is None else abs((self.energy - self.exact_energy) / self.exact_energy)


def _stoquastic_matrix(chain: SpinChain) -> sp.csr_matrix:
    h = chain.matrix()
    if chain.kind == "xxz" and chain.params["Jxy"] > 0:
        u = sp.diags(marshall_signs(chain.n))
        h = (u @ h @ u).tocsr()
    return h


def _local_energies(model: RBMWavefunction, chain: SpinChain, s: torch.Tensor, log_psi: torch.Tensor) -> torch.Tensor:
    """E_loc(σ) = Σ_σ' H'(σ, σ') ψ(σ')/ψ(σ) for sampled σ (±1), in the Marshall-rotated basis for Heisenberg."""
    bits = ((1 - s) / 2).to(torch.uint8).numpy()
    e = torch.from_numpy(chain.diagonal(bits))
    marshall = chain.kind == "xxz" and chain.params["Jxy"] > 0
    for flipped, element in chain.off_diagonal(bits):
        keep = element != 0
        if not keep.any():
            continue
        el = torch.from_numpy(element)
        if marshall:  # U H U flips the sign of the exchange terms on a bipartite chain
            el = -el
        s_new = torch.from_numpy(1.0 - 2.0 * flipped.astype(np.float64))
        ratio = torch.exp(model.log_psi(s_new) - log_psi)
        e = e + torch.where(torch.from_numpy(keep), el * ratio, torch.zeros_like(ratio))
    return e


class _Metropolis:
    """Persistent Metropolis chains over σ ∈ {±1}ⁿ: single flips (TFIM) or neighbour exchanges (XXZ, conserving Sᶻ)."""

    def __init__(self, chain: SpinChain, n_chains: int, seed: int):
        self.chain, self.gen = chain, torch.Generator().manual_seed(seed)
        n = chain.n
        if chain.kind == "xxz":  # start in the Sᶻ = 0 sector
            base = torch.tensor([1.0, -1.0] * (n // 2) + [1.0] * (n % 2))
            self.state = torch.stack([base[torch.randperm(n, generator=self.gen)] for _ in range(n_chains)]).double()
        else:
            self.state = (2 * torch.randint(0, 2, (n_chains, n), generator=self.gen) - 1).double()
        self.bonds = torch.tensor(chain.bonds)

    def sweep(self, model: RBMWavefunction, sweeps: int) -> tuple[torch.Tensor, float]:
        s, c, n = self.state, len(self.state), self.chain.n
        log_psi = model.log_psi(s)
        accepted = 0
        rows = torch.arange(c)
        for _ in range(sweeps * n):
            prop = s.clone()
            if self.chain.kind == "xxz":
                bond = self.bonds[torch.randint(0, len(self.bonds), (c,), generator=self.gen)]
                i, j = bond[:, 0], bond[:, 1]
                si, sj = prop[rows, i].clone(), prop[rows, j].clone()
                prop[rows, i], prop[rows, j] = sj, si
            else:
                i = torch.randint(0, n, (c,), generator=self.gen)
                prop[rows, i] = -prop[rows, i]
            log_new = model.log_psi(prop)
            accept = torch.rand(c, generator=self.gen, dtype=torch.float64) < torch.exp(2 * (log_new - log_psi))
            s = torch.where(accept[:, None], prop, s)
            log_psi = torch.where(accept, log_new, log_psi)
            accepted += int(accept.sum())
        self.state = s
        return s, accepted / (sweeps * n * c)


def optimise_ground_state(
    chain: SpinChain,
    alpha: int = 1,
    iterations: int = 300,
    lr: float = 0.05,
    diag_shift: float = 1e-3,
    translation_invariant: bool = False,
    seed: int = 0,
    exact_energy: float | None = None,
    callback: Callable[[int, dict[str, float]], None] | None = None,
    time_budget_s: float | None = None,
    sampler: str = "auto",
    n_samples: int = 1024,
    sweeps: int = 2,
    final_samples: int = 16384,
) -> VMCResult:
    """Minimise ⟨H⟩ over an RBM wave function by stochastic reconfiguration.

    Args:
        chain: the Hamiltonian.
        alpha: hidden-unit density (filters per site when translation-invariant).
        iterations: SR steps.
        lr: the step size η.
        diag_shift: the shift λ of S + λ𝟙.
        translation_invariant: share weights across translations (periodic chains).
        exact_energy: if given, relative errors are recorded in the history.
        time_budget_s: stop once this much wall time has passed.
        sampler: ``"exact"`` (sums over all 2ⁿ configurations, n ≤ 20), ``"metropolis"``
            (``n_samples`` persistent chains, ``sweeps`` sweeps between iterations), or
            ``"auto"`` (exact up to 14 spins).
        final_samples: Metropolis samples for the final energy estimate.

    Returns:
        a :class:`VMCResult`: energies with their statistical errors (0 with exact
        sums; σ/√N from the chains otherwise) and the energy variance per iteration.
    """
    if sampler == "auto":
        sampler = "exact" if chain.n <= 14 else "metropolis"
    if sampler not in ("exact", "metropolis"):
        raise InvalidDataError(f"sampler must be 'exact', 'metropolis' or 'auto'; got {sampler!r}")
    if sampler == "exact" and chain.n > MAX_EXACT:
        raise InvalidDataError(f"exact-expectation VMC enumerates 2ⁿ states, n ≤ {MAX_EXACT}; got n = {chain.n}; use sampler='metropolis'")
    if translation_invariant and not chain.periodic:
        raise InvalidDataError("translation_invariant needs a periodic chain")
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        model = RBMWavefunction(chain.n, alpha, translation_invariant, seed)
        energies, errors, variances, history = [], [], [], []
        t0 = time.perf_counter()
        eye = torch.eye(model.n_parameters(), dtype=torch.float64)
        if sampler == "exact":
            h = _stoquastic_matrix(chain)
            s_all = torch.from_numpy(1.0 - 2.0 * configurations(chain.n).astype(np.float64))
        else:
            mc = _Metropolis(chain, n_samples, seed)
            with torch.no_grad():
                mc.sweep(model, 20)  # burn-in
        for it in range(iterations):
            with torch.no_grad():
                if sampler == "exact":
                    log_psi = model.log_psi(s_all)
                    psi = torch.exp(log_psi - log_psi.max())
                    p = psi**2 / (psi**2).sum()
                    e_loc = torch.from_numpy(h @ psi.numpy()) / psi
                    samples, err = s_all, 0.0
                else:
                    samples, _ = mc.sweep(model, sweeps)
                    log_psi = model.log_psi(samples)
                    p = torch.full((len(samples),), 1.0 / len(samples))
                    e_loc = _local_energies(model, chain, samples, log_psi)
                energy = float((p * e_loc).sum())
                var = float((p * (e_loc - energy) ** 2).sum())
                if sampler != "exact":
                    err = math.sqrt(var / len(samples))
                o = model.log_derivatives(samples)
                oc = o - p @ o
                s_mat = oc.T @ (p[:, None] * oc)
                force = oc.T @ (p * (e_loc - energy))
                delta = torch.linalg.solve(s_mat + diag_shift * eye, force)
                model.add_to_parameters(-lr * delta)
            energies.append(energy)
            errors.append(err)
            variances.append(var)
            rec = {"iteration": it + 1, "energy": energy, "error": err, "variance": var, "seconds": time.perf_counter() - t0}
            if exact_energy is not None:
                rec["relative_error"] = abs((energy - exact_energy) / exact_energy)
            history.append(rec)
            if callback is not None:
                callback(it + 1, rec)
            if time_budget_s is not None and time.perf_counter() - t0 > time_budget_s:
                break
        # the energy of the final parameters
        with torch.no_grad():
            if sampler == "exact":
                log_psi = model.log_psi(s_all)
                psi = torch.exp(log_psi - log_psi.max())
                energies.append(float(psi @ torch.from_numpy(h @ psi.numpy()) / (psi @ psi)))
                errors.append(0.0)
            else:
                e_all = []
                for _ in range(max(1, final_samples // n_samples)):
                    samples, _ = mc.sweep(model, sweeps)
                    e_all.append(_local_energies(model, chain, samples, model.log_psi(samples)))
                e_cat = torch.cat(e_all)
                energies.append(float(e_cat.mean()))
                errors.append(float(e_cat.std() / math.sqrt(len(e_cat))))
        return VMCResult(energies, errors, variances, time.perf_counter() - t0, exact_energy, model, history)
    finally:
        torch.set_default_dtype(previous)


def state_vector(model: RBMWavefunction, chain: SpinChain) -> np.ndarray:
    """The normalised amplitudes of ``model`` over all basis states, in the original (not Marshall-rotated) basis."""
    s = torch.from_numpy(1.0 - 2.0 * configurations(chain.n).astype(np.float64))
    with torch.no_grad():
        lp = model.log_psi(s).numpy()
    psi = np.exp(lp - lp.max())
    if chain.kind == "xxz" and chain.params["Jxy"] > 0:
        psi = psi * marshall_signs(chain.n)
    return psi / np.linalg.norm(psi)



