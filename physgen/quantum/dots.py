"""Quantum dots: particles in a harmonic trap with a Gaussian–binary RBM wave function.

The Hamiltonian, in atomic units (ħ = m = e = 1), for P particles in D dimensions:

    H = Σ_p [−½∇²_p + ½ω² r_p²] + Σ_{p<q} 1/|r_p − r_q|     (the last term if interacting)

The trial wave function is the marginal of a Gaussian–binary RBM over its hidden
units (Carleo & Troyer's ansatz for continuous coordinates, the one of the
computational physics course this project grew from), with X the P·D coordinates:

    ψ(X) = exp(−Σ_k (X_k − a_k)² / 2σ²) · Π_j [1 + exp(b_j + Σ_k X_k W_kj / σ²)] · e^{J(X)}

and an optional Padé–Jastrow factor J = Σ_{p<q} c r_pq / (1 + β r_pq) whose c is
fixed by the electron–electron cusp condition (c = 1/(D − 1) for two electrons of
opposite spin) and β is variational. The RBM's factors are smooth in X, so without J
the wave function cannot have the cusp at r_pq = 0 and the interacting energy stays
a few per cent high; with it the two-electron energy reaches Taut's exact value.

Energies are variational Monte Carlo averages of the local energy
E_L = Hψ/ψ, computed analytically, over walkers moved by Metropolis (a uniform
step) or importance sampling (Langevin drift F = 2∇ log ψ with the Fokker–Planck
Green's function in the acceptance); the parameters follow stochastic
reconfiguration (:func:`~physgen.quantum.vmc.sr_update`). Errors come from
automated blocking of the walker-averaged series (:func:`physgen.metrics.blocking`).

The ansatz is symmetric under exchange: for P = 2 it is the spatial part of the
singlet ground state; for more particles it describes bosons, not electrons.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from physgen.errors import ConfigError, InvalidDataError, TrainingDivergedError
from physgen.metrics.blocking import blocking
from physgen.quantum.vmc import VMCResult, sr_update

__all__ = ["HarmonicTrap", "GaussianBinaryRBM", "optimise_dot", "dot_energy", "taut_energy"]


def taut_energy(dims: int = 2) -> tuple[float, float]:
    """(ω, E) of a trap where two interacting electrons have a closed-form ground state (Taut).

    D = 2: ω = 1, E = 3 (M. Taut, J. Phys. A 27, 1045 (1994));
    D = 3: ω = ½, E = 2 (M. Taut, Phys. Rev. A 48, 3561 (1993)).
    """
    if dims == 2:
        return 1.0, 3.0
    if dims == 3:
        return 0.5, 2.0
    raise InvalidDataError(f"Taut's closed forms are for D = 2 or 3; got D = {dims}")


@dataclass(frozen=True)
class HarmonicTrap:
    """P particles in a D-dimensional isotropic harmonic trap of frequency ω, with or without Coulomb repulsion."""

    particles: int = 2
    dims: int = 2
    omega: float = 1.0
    interacting: bool = True

    def __post_init__(self) -> None:
        if self.particles < 1 or self.dims < 1 or self.dims > 3:
            raise InvalidDataError(f"a trap needs ≥ 1 particle in 1–3 dimensions; got P = {self.particles}, D = {self.dims}")
        if not (math.isfinite(self.omega) and self.omega > 0):
            raise InvalidDataError(f"the trap frequency must be a positive number; got omega = {self.omega}")

    @property
    def non_interacting_energy(self) -> float:
        """P·D·ω/2, the exact ground-state energy without repulsion (all particles in the lowest orbital)."""
        return self.particles * self.dims * self.omega / 2


class GaussianBinaryRBM(torch.nn.Module):
    """ψ(X) of a Gaussian–binary RBM (``hidden`` units), optionally times a Padé–Jastrow factor (float64)."""

    def __init__(self, trap: HarmonicTrap, hidden: int = 2, jastrow: bool = False, sigma: float | None = None, seed: int = 0, init_std: float = 0.01):
        super().__init__()
        if hidden < 1:
            raise InvalidDataError(f"hidden must be ≥ 1; got {hidden}")
        if jastrow and trap.particles < 2:
            raise InvalidDataError("a Jastrow factor correlates pairs; the trap has one particle")
        self.trap, self.hidden, self.jastrow = trap, int(hidden), bool(jastrow)
        self.sigma2 = (1.0 / trap.omega) if sigma is None else float(sigma) ** 2
        m = trap.particles * trap.dims
        gen = torch.Generator().manual_seed(seed)
        self.a = torch.nn.Parameter(torch.randn(m, generator=gen, dtype=torch.float64) * init_std)
        self.b = torch.nn.Parameter(torch.randn(self.hidden, generator=gen, dtype=torch.float64) * init_std)
        self.w = torch.nn.Parameter(torch.randn(m, self.hidden, generator=gen, dtype=torch.float64) * init_std)
        self.beta = torch.nn.Parameter(torch.ones(1 if jastrow else 0, dtype=torch.float64))
        self.cusp = 1.0 / (trap.dims - 1) if trap.dims > 1 else 0.5
        pairs = [(p, q) for p in range(trap.particles) for q in range(p + 1, trap.particles)]
        self.register_buffer("pairs", torch.tensor(pairs, dtype=torch.long).reshape(-1, 2))

    def _params(self) -> tuple[torch.Tensor, ...]:
        return (self.a, self.b, self.w, self.beta)

    def n_parameters(self) -> int:
        return sum(p.numel() for p in self._params())

    def flat_parameters(self) -> torch.Tensor:
        return torch.cat([p.detach().reshape(-1) for p in self._params()])

    def add_to_parameters(self, delta: torch.Tensor) -> None:
        with torch.no_grad():
            offset = 0
            for p in self._params():
                p.add_(delta[offset : offset + p.numel()].reshape(p.shape))
                offset += p.numel()

    def _pair_geometry(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Separation vectors r_p − r_q ``[B, pairs, D]`` and distances ``[B, pairs]``."""
        pos = x.reshape(len(x), self.trap.particles, self.trap.dims)
        d = pos[:, self.pairs[:, 0]] - pos[:, self.pairs[:, 1]]
        return d, d.norm(dim=2)

    def log_psi(self, x: torch.Tensor) -> torch.Tensor:
        """log ψ per row of the coordinates ``x`` ``[B, P·D]``."""
        v = self.b + x @ self.w / self.sigma2
        out = -((x - self.a) ** 2).sum(1) / (2 * self.sigma2) + torch.nn.functional.softplus(v).sum(1)
        if self.jastrow:
            _, r = self._pair_geometry(x)
            out = out + (self.cusp * r / (1 + self.beta * r)).sum(1)
        return out

    def derivatives(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(∇ log ψ ``[B, P·D]``, ∇² log ψ summed over coordinates ``[B]``), analytically."""
        s = torch.sigmoid(self.b + x @ self.w / self.sigma2)
        grad = -(x - self.a) / self.sigma2 + s @ self.w.T / self.sigma2
        lap = -x.shape[1] / self.sigma2 + ((s * (1 - s)) @ (self.w**2).T).sum(1) / self.sigma2**2
        if self.jastrow:
            d, r = self._pair_geometry(x)
            den = 1 + self.beta * r
            du = self.cusp / den**2  # u′(r)
            d2u = -2 * self.cusp * self.beta / den**3  # u″(r)
            force = (du / r)[:, :, None] * d  # ∇_p u for the pair's first particle, −∇_q u for the second
            g = torch.zeros(len(x), self.trap.particles, self.trap.dims, dtype=x.dtype)
            g.index_add_(1, self.pairs[:, 0], force)
            g.index_add_(1, self.pairs[:, 1], -force)
            grad = grad + g.reshape(len(x), -1)
            lap = lap + 2 * (d2u + (self.trap.dims - 1) * du / r).sum(1)
        return grad, lap

    def local_energy(self, x: torch.Tensor) -> torch.Tensor:
        """E_L(X) = (Hψ)(X)/ψ(X) ``[B]``."""
        grad, lap = self.derivatives(x)
        e = -0.5 * (lap + (grad**2).sum(1)) + 0.5 * self.trap.omega**2 * (x**2).sum(1)
        if self.trap.interacting and self.trap.particles > 1:
            e = e + (1 / self._pair_geometry(x)[1]).sum(1)
        return e

    def log_derivatives(self, x: torch.Tensor) -> torch.Tensor:
        """O_k = ∂ log ψ / ∂θ_k ``[B, n_parameters]`` in the order (a, b, W, β)."""
        s = torch.sigmoid(self.b + x @ self.w / self.sigma2)
        parts = [(x - self.a) / self.sigma2, s, (x[:, :, None] * s[:, None, :]).reshape(len(x), -1) / self.sigma2]
        if self.jastrow:
            _, r = self._pair_geometry(x)
            parts.append((-self.cusp * r**2 / (1 + self.beta * r) ** 2).sum(1, keepdim=True))
        return torch.cat(parts, dim=1)


class _Walkers:
    """Persistent walkers sampling |ψ|²: brute-force Metropolis or Langevin importance sampling."""

    def __init__(self, model: GaussianBinaryRBM, n: int, sampler: str, step: float, seed: int):
        self.model, self.sampler, self.step = model, sampler, float(step)
        self.gen = torch.Generator().manual_seed(seed)
        m = model.trap.particles * model.trap.dims
        self.x = torch.randn(n, m, generator=self.gen, dtype=torch.float64) * math.sqrt(model.sigma2 / 2)
        self.accepted = self.proposed = 0

    def move(self) -> torch.Tensor:
        model, x = self.model, self.x
        log_psi = model.log_psi(x)
        if self.sampler == "metropolis":
            prop = x + self.step * (torch.rand(x.shape, generator=self.gen, dtype=x.dtype) - 0.5)
            log_ratio = 2 * (model.log_psi(prop) - log_psi)
        else:  # Langevin: y = x + D F(x) Δt + √Δt ξ with D = ½, F = 2∇ log ψ
            dt = self.step
            f_x = 2 * model.derivatives(x)[0]
            prop = x + 0.5 * f_x * dt + math.sqrt(dt) * torch.randn(x.shape, generator=self.gen, dtype=x.dtype)
            f_y = 2 * model.derivatives(prop)[0]
            # log G(x|y) − log G(y|x), G(y|x) = exp(−(y − x − D Δt F(x))² / 4DΔt)
            g_ratio = (((prop - x - 0.5 * dt * f_x) ** 2).sum(1) - ((x - prop - 0.5 * dt * f_y) ** 2).sum(1)) / (2 * dt)
            log_ratio = 2 * (model.log_psi(prop) - log_psi) + g_ratio
        accept = torch.log(torch.rand(len(x), generator=self.gen, dtype=x.dtype)) < log_ratio
        self.x = torch.where(accept[:, None], prop, x)
        self.accepted += int(accept.sum())
        self.proposed += len(x)
        return self.x


def _check_sampler(sampler: str, step: float | None) -> float:
    if sampler not in ("metropolis", "importance"):
        raise ConfigError.unknown("quantum dot", str(sampler), ("metropolis", "importance"), what="sampler")
    step = (1.0 if sampler == "metropolis" else 0.05) if step is None else float(step)
    if not step > 0:
        raise InvalidDataError(f"step must be > 0; got {step}")
    return step


def dot_energy(
    model: GaussianBinaryRBM,
    sampler: Literal["metropolis", "importance"] = "importance",
    walkers: int = 256,
    steps: int = 2**12,
    burn_in: int = 500,
    step: float | None = None,
    seed: int = 0,
) -> dict[str, float]:
    """⟨E⟩ of ``model`` with its blocking error, ⟨E²⟩ − ⟨E⟩² and the acceptance rate.

    ``walkers`` independent walkers move ``steps`` times after ``burn_in`` moves; the
    walker-averaged local energy at each step is one entry of the blocked series.
    ``step`` is the Metropolis box width (default 1) or the Langevin time step Δt
    (default 0.05).
    """
    step = _check_sampler(sampler, step)
    with torch.no_grad():
        w = _Walkers(model, walkers, sampler, step, seed)
        for _ in range(burn_in):
            w.move()
        w.accepted = w.proposed = 0
        series, sq = np.empty(steps), np.empty(steps)
        for t in range(steps):
            e = model.local_energy(w.move())
            series[t], sq[t] = float(e.mean()), float((e**2).mean())
    result = blocking(series)
    return {"energy": result.value, "error": result.error, "variance": float(sq.mean() - series.mean() ** 2),
            "acceptance": w.accepted / w.proposed, "samples": walkers * steps, "blocking_level": result.extra["level"]}


def optimise_dot(
    trap: HarmonicTrap,
    hidden: int = 2,
    jastrow: bool = False,
    sampler: Literal["metropolis", "importance"] = "importance",
    iterations: int = 200,
    lr: float = 0.05,
    diag_shift: float = 0.01,
    walkers: int = 512,
    steps_per_iteration: int = 8,
    step: float | None = None,
    sigma: float | None = None,
    seed: int = 0,
    final_steps: int = 2**12,
    exact_energy: float | None = None,
    callback: Callable[[int, dict[str, float]], None] | None = None,
) -> VMCResult:
    """Minimise ⟨H⟩ of a quantum dot over a Gaussian–binary RBM (optionally × Padé–Jastrow) by stochastic reconfiguration.

    Args:
        trap: the particles, dimensions, frequency and interaction.
        hidden: hidden units of the RBM.
        jastrow: multiply by the cusp-exact Padé–Jastrow factor (β variational).
        sampler: ``"metropolis"`` (uniform steps) or ``"importance"`` (Langevin drift).
        iterations: SR steps.
        lr: the SR step size η.
        diag_shift: the shift λ of S + λ𝟙.
        walkers: persistent walkers; each iteration uses their positions at
            ``steps_per_iteration`` successive moves.
        step: Metropolis box width (default 1) or Langevin Δt (default 0.05).
        sigma: the Gaussian width σ (default 1/√ω, exact without interaction).
        seed: seeds the initial weights and the walkers.
        final_steps: moves of the final energy estimate, whose error is from blocking.
        exact_energy: if given, relative errors are recorded in the history.
        callback: called with (iteration, record) after every step.

    Returns:
        a :class:`~physgen.quantum.vmc.VMCResult`; its last energy and error are the final
        blocked estimate, and ``history[-1]`` holds the acceptance rate.

    Raises:
        TrainingDivergedError: a non-finite local energy or update, naming the iteration.
    """
    step = _check_sampler(sampler, step)
    model = GaussianBinaryRBM(trap, hidden, jastrow, sigma, seed)
    energies: list[float] = []
    errors: list[float] = []
    variances: list[float] = []
    history: list[dict[str, float]] = []
    t0 = time.perf_counter()
    with torch.no_grad():
        w = _Walkers(model, walkers, sampler, step, seed)
        for _ in range(200):  # burn-in
            w.move()
        for it in range(iterations):
            xs = torch.cat([w.move().clone() for _ in range(steps_per_iteration)])
            e_loc = model.local_energy(xs)
            p = torch.full((len(xs),), 1.0 / len(xs), dtype=torch.float64)
            energy, var, delta = sr_update(model.log_derivatives(xs), p, e_loc, diag_shift)
            if not (math.isfinite(energy) and bool(torch.isfinite(delta).all())):
                raise TrainingDivergedError(f"quantum-dot VMC iteration {it + 1}: the local energy or the SR update is not finite; lower lr (now {lr:g}) or raise diag_shift (now {diag_shift:g})")
            model.add_to_parameters(-lr * delta)
            if jastrow:  # β ≤ 0 would put a pole at r = −1/β
                model.beta.data.clamp_(min=1e-3)
            err = math.sqrt(var / len(xs))
            energies.append(energy)
            errors.append(err)
            variances.append(var)
            rec = {"iteration": it + 1, "energy": energy, "error": err, "variance": var, "seconds": time.perf_counter() - t0}
            if exact_energy is not None:
                rec["relative_error"] = abs((energy - exact_energy) / exact_energy)
            history.append(rec)
            if callback is not None:
                callback(it + 1, rec)
    final = dot_energy(model, sampler, walkers=walkers, steps=final_steps, step=step, seed=seed + 1)
    energies.append(final["energy"])
    errors.append(final["error"])
    history.append({"iteration": iterations, "final": 1.0, **final, "seconds": time.perf_counter() - t0})
    return VMCResult(energies, errors, variances, time.perf_counter() - t0, exact_energy, model, history)
