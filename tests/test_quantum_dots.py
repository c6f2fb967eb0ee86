"""Quantum dots: the Gaussian–binary RBM's local energy against autograd, closed-form energies, blocking against AR(1)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from physgen.errors import ConfigError, InvalidDataError
from physgen.metrics import blocking
from physgen.quantum import GaussianBinaryRBM, HarmonicTrap, dot_energy, optimise_dot, taut_energy


def _randomised(model: GaussianBinaryRBM, seed: int = 3) -> GaussianBinaryRBM:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in (model.a, model.b, model.w):
            p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64) * 0.5)
        if model.jastrow:
            model.beta.fill_(0.7)
    return model


@pytest.mark.parametrize("trap, jastrow", [(HarmonicTrap(2, 2, 1.0, True), True), (HarmonicTrap(3, 3, 0.5, True), True), (HarmonicTrap(2, 1, 2.0, False), False)])
def test_local_energy_and_log_derivatives_match_autograd(trap, jastrow):
    model = _randomised(GaussianBinaryRBM(trap, hidden=3, jastrow=jastrow, sigma=0.8))
    x = torch.randn(5, trap.particles * trap.dims, generator=torch.Generator().manual_seed(1), dtype=torch.float64, requires_grad=True)
    log_psi = model.log_psi(x)
    (grad,) = torch.autograd.grad(log_psi.sum(), x, create_graph=True)
    lap = sum(torch.autograd.grad(grad[:, k].sum(), x, retain_graph=True)[0][:, k] for k in range(x.shape[1]))
    pos = x.reshape(5, trap.particles, trap.dims)
    coulomb = sum(1 / (pos[:, p] - pos[:, q]).norm(dim=1) for p in range(trap.particles) for q in range(p + 1, trap.particles)) if trap.interacting else 0
    expected = -0.5 * (lap + (grad**2).sum(1)) + 0.5 * trap.omega**2 * (x**2).sum(1) + coulomb
    torch.testing.assert_close(model.local_energy(x.detach()), expected.detach(), rtol=1e-10, atol=1e-10)
    rows = [torch.cat([g.reshape(-1) for g in torch.autograd.grad(log_psi[i], [model.a, model.b, model.w, model.beta], retain_graph=True, allow_unused=True) if g is not None]) for i in range(5)]
    torch.testing.assert_close(model.log_derivatives(x.detach()), torch.stack(rows), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("particles, dims, omega", [(2, 2, 1.0), (3, 3, 0.5), (1, 1, 2.0)])
def test_the_gaussian_is_the_exact_non_interacting_ground_state(particles, dims, omega):
    # a = W = 0 and σ² = 1/ω: ψ is the product of lowest oscillator orbitals, E_L = P·D·ω/2 everywhere
    trap = HarmonicTrap(particles, dims, omega, interacting=False)
    model = GaussianBinaryRBM(trap, hidden=2, init_std=0.0)
    x = torch.randn(100, particles * dims, dtype=torch.float64)
    torch.testing.assert_close(model.local_energy(x), torch.full((100,), particles * dims * omega / 2, dtype=torch.float64))
    assert trap.non_interacting_energy == particles * dims * omega / 2


@pytest.mark.parametrize("sampler", ["metropolis", "importance"])
def test_vmc_finds_the_non_interacting_energy_from_random_weights(sampler):
    result = optimise_dot(HarmonicTrap(2, 2, 1.0, interacting=False), hidden=2, sampler=sampler, iterations=100, walkers=128, final_steps=1024)
    assert result.energies[0] > 2.0 + 1e-4  # it starts away from the ground state
    assert result.energy == pytest.approx(2.0, abs=1e-4)
    assert result.history[-1]["variance"] < 1e-5


def test_two_interacting_electrons_reach_tauts_exact_energy():
    omega, exact = taut_energy(2)
    trap = HarmonicTrap(2, 2, omega, interacting=True)
    result = optimise_dot(trap, hidden=2, jastrow=True, iterations=120, walkers=256, final_steps=2048, exact_energy=exact)
    # variational: never below the exact energy beyond the statistical error
    assert result.energy > exact - 4 * result.errors[-1]
    assert result.relative_error < 1e-3
    # without the Jastrow factor the RBM misses the cusp and stays a few per cent high
    plain = optimise_dot(trap, hidden=2, iterations=60, walkers=256, final_steps=1024)
    assert plain.energy > exact * 1.01


def test_metropolis_and_importance_sampling_agree_on_a_fixed_wave_function():
    model = _randomised(GaussianBinaryRBM(HarmonicTrap(2, 2, 1.0, True), hidden=2, jastrow=True), seed=5)
    with torch.no_grad():
        for p in (model.a, model.b, model.w):
            p.mul_(0.3)
    m = dot_energy(model, "metropolis", walkers=256, steps=2048, seed=1)
    i = dot_energy(model, "importance", walkers=256, steps=2048, seed=2)
    assert abs(m["energy"] - i["energy"]) < 4 * math.hypot(m["error"], i["error"])
    assert 0.2 < m["acceptance"] < 1 and 0.2 < i["acceptance"] < 1


def test_blocking_matches_the_closed_form_error_of_an_ar1_series():
    # x_t = ρ x_{t−1} + ε_t: var(mean) → σ_x² (1 + ρ) / (N (1 − ρ)), σ_x² = 1 / (1 − ρ²)
    rho, n = 0.9, 2**17
    eps = np.random.default_rng(0).normal(size=n)
    x = np.empty(n)
    x[0] = eps[0] / math.sqrt(1 - rho**2)
    for t in range(1, n):
        x[t] = rho * x[t - 1] + eps[t]
    exact = math.sqrt((1 + rho) / ((1 - rho) * (1 - rho**2) * n))
    result = blocking(x)
    assert result.error == pytest.approx(exact, rel=0.15)
    assert result.error > 3 * x.std() / math.sqrt(n)  # the naive error is √19 too small
    iid = blocking(eps)
    assert iid.error == pytest.approx(1 / math.sqrt(n), rel=0.1) and iid.extra["level"] <= 2


def test_bad_input_is_named():
    with pytest.raises(ConfigError, match="did you mean 'importance'"):
        optimise_dot(HarmonicTrap(), sampler="importnce")
    with pytest.raises(InvalidDataError, match="omega"):
        HarmonicTrap(omega=-1.0)
    with pytest.raises(InvalidDataError, match="1–3 dimensions"):
        HarmonicTrap(dims=4)
    with pytest.raises(InvalidDataError, match="one particle"):
        GaussianBinaryRBM(HarmonicTrap(particles=1), jastrow=True)
    with pytest.raises(InvalidDataError, match="at least 16"):
        blocking(np.ones(8))
    with pytest.raises(InvalidDataError, match="not finite"):
        blocking(np.r_[np.ones(31), np.nan])
