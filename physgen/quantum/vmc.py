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

A positive RBM can only represent a ground state without signs, so a chain is
first made stoquastic (non-positive off-diagonal elements) by a diagonal gauge
U = (−1)^{Σ_{i∈A} xᵢ}: Marshall's sign rule (A = the even sites) for the
antiferromagnetic XXZ/Heisenberg chain, and A = every site for a TFIM with a
negative field. H' = U H U has the same energies, and ``state_vector`` undoes U.
Marshall's rule is exact only where the bonds are bipartite: an odd periodic ring
(or an odd periodic lattice) is frustrated, and :func:`sign_rule` refuses it rather
than return a wrong energy.

Each SR step checks that the energy, the local energies and the update are
finite. A step that is not goes back to the previous parameters and retries with
the diagonal shift λ ten times larger (recorded in the history), up to
``MAX_DIAG_SHIFT``; beyond that :class:`~physgen.errors.TrainingDivergedError`
names the iteration and the settings to change.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch

from physgen.data import Data, Schema
from physgen.errors import CheckpointError, ConfigError, InvalidDataError, TrainingDivergedError
from physgen.quantum.hamiltonians import SpinChain, configurations, sector_states

__all__ = ["RBMWavefunction", "VMCResult", "marshall_signs", "optimise_ground_state", "sign_rule", "state_vector", "sr_update"]

MAX_EXACT = 20
MAX_DIAG_SHIFT = 10.0


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
        self.n_up: int | None = None  # the Sᶻ sector the model was optimised in (None: the full space)
        self.chain: SpinChain | None = None  # the Hamiltonian it was optimised for (set by optimise_ground_state)
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

    # -- one interface with the surrogates: sample, save, load ---------------------------------
    @torch.no_grad()
    def sample(self, n: int, seed: int = 0, burn_in: int = 50) -> Data:
        """``n`` configurations drawn from |ψ|², as ``Data(kind="spins")`` with x ``[n, N]`` bits (0: σᶻ = +1),
        the convention of every surrogate's ``sample``.

        Exact draws from the enumerated |ψ|² up to 20 spins (within ``n_up``'s sector when set); beyond,
        one sample from each of ``n`` Metropolis chains after ``burn_in`` sweeps (needs ``chain``).
        """
        if n < 1:
            raise InvalidDataError(f"asked for {n} samples; expected at least 1")
        gen = torch.Generator().manual_seed(int(seed))
        if self.n <= MAX_EXACT:
            states = np.arange(2**self.n) if self.n_up is None else sector_states(self.n, self.n_up)
            bits = ((states[:, None] >> np.arange(self.n - 1, -1, -1)) & 1).astype(np.float32)
            lp = 2 * self.log_psi(torch.from_numpy(1.0 - 2.0 * bits.astype(np.float64)))
            x = torch.from_numpy(bits)[torch.multinomial(torch.exp(lp - lp.max()), n, replacement=True, generator=gen)]
        else:
            if self.chain is None:
                raise InvalidDataError(f"sampling {self.n} spins needs Metropolis moves, and this wave function has no chain; set model.chain")
            mc = _Metropolis(self.chain, n, int(seed))
            s, _ = mc.sweep(self, burn_in)
            x = ((1 - s) / 2).float()
        return Data(x, Schema(kind="spins", feature_names=tuple(f"s{i}" for i in range(self.n)), source_format="spins"))

    def save(self, directory: str | Path) -> Path:
        """Save the weights (safetensors) and what rebuilds the model (JSON), atomically, like a surrogate's checkpoint."""
        from physgen import __version__
        from physgen.data import Pipeline
        from physgen.training import checkpoint as ckpt

        config = {
            "family": "rbm_wavefunction", "class": f"{type(self).__module__}:{type(self).__qualname__}", "physgen_version": __version__,
            "options": {"n": self.n, "alpha": self.alpha, "translation_invariant": self.symmetric}, "dims": {"n": self.n},
            "schema": Schema(kind="spins").to_dict(), "preprocessing": Pipeline().to_dict(), "n_up": self.n_up,
            "chain": None if self.chain is None else self.chain.to_dict(),
        }
        return ckpt.write_checkpoint(directory, self, config)

    @classmethod
    def load(cls, directory: str | Path) -> RBMWavefunction:
        """A wave function :meth:`save` wrote; :class:`~physgen.errors.CheckpointError` for anything else."""
        from physgen.training import checkpoint as ckpt

        config = ckpt.read_config(directory)
        if config.get("family") != "rbm_wavefunction":
            raise CheckpointError(f"checkpoint {str(directory)!r} holds a {config.get('family')!r} surrogate, not an RBM wave function; "
                                  "physgen.surrogates.load(directory) loads surrogates")
        o = config["options"]
        model = cls(int(o["n"]), int(o["alpha"]), bool(o["translation_invariant"]))
        model.n_up = config.get("n_up")
        chain = config.get("chain")
        model.chain = None if chain is None else SpinChain.from_dict(chain)
        ckpt.load_weights(model, directory, config)
        return model

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


def sign_rule(chain: SpinChain) -> np.ndarray | None:
    """The sites A of the gauge U = (−1)^{Σ_{i∈A} xᵢ} that makes ``chain`` stoquastic, or None if it already is.

    For the antiferromagnetic XXZ model A is one sublattice of a two-colouring of the bonds
    (Marshall's rule: even sites of a chain, the checkerboard of a square lattice).

    Raises:
        InvalidDataError: for an antiferromagnetic XXZ model whose bonds are not bipartite (an odd
            ring, an odd periodic lattice), which is frustrated: no sign rule is exact there, and a
            positive wave function cannot represent its ground state.
    """
    if chain.kind == "tfim":
        return np.ones(chain.n, dtype=bool) if chain.params["h"] < 0 else None
    if chain.params["Jxy"] <= 0:
        return None
    colour = _two_colouring(chain.n, chain.bonds)
    if colour is None:
        raise InvalidDataError(
            f"{chain.describe()}: Marshall's sign rule is exact only on bipartite lattices, and these bonds "
            "are not (an odd ring or an odd periodic lattice); a positive RBM cannot represent this frustrated "
            "ground state. Use an even ring, an open chain, or exact diagonalisation (ground_state)"
        )
    return colour == 0


def _two_colouring(n: int, bonds: list[tuple[int, int]]) -> np.ndarray | None:
    """0/1 per site with every bond joining different colours, or None if there is none."""
    neighbours: list[list[int]] = [[] for _ in range(n)]
    for i, j in bonds:
        neighbours[i].append(j)
        neighbours[j].append(i)
    colour = np.full(n, -1)
    for start in range(n):
        if colour[start] >= 0:
            continue
        colour[start], stack = 0, [start]
        while stack:
            i = stack.pop()
            for j in neighbours[i]:
                if colour[j] < 0:
                    colour[j] = 1 - colour[i]
                    stack.append(j)
                elif colour[j] == colour[i]:
                    return None
    return colour


def _gauge_signs(bits: np.ndarray, sites: np.ndarray) -> np.ndarray:
    return np.where(np.asarray(bits, dtype=np.int64)[:, sites].sum(1) % 2 == 0, 1.0, -1.0)


def _stoquastic_matrix(chain: SpinChain, sites: np.ndarray | None) -> sp.csr_matrix:
    h = chain.matrix()
    if sites is not None:
        u = sp.diags(_gauge_signs(configurations(chain.n), sites))
        h = (u @ h @ u).tocsr()
    return h


# rows of flipped configurations scored in one call of log_psi by the local energies
_LOCAL_ENERGY_ROWS = 1 << 16


def _local_energies(model: RBMWavefunction, chain: SpinChain, s: torch.Tensor, log_psi: torch.Tensor, sites: np.ndarray | None) -> torch.Tensor:
    """E_loc(σ) = Σ_σ' H'(σ, σ') ψ(σ')/ψ(σ) for sampled σ (±1), H' = U H U in the gauge of ``sites``.

    The connected configurations of every term are scored together (a few calls of ``log_psi`` on
    stacked rows rather than one per term).
    """
    bits = ((1 - s) / 2).to(torch.uint8).numpy()
    e = torch.from_numpy(chain.diagonal(bits))
    terms = [(flipped, element) for flipped, element in chain.off_diagonal(bits) if (element != 0).any()]
    if not terms:
        return e
    elements = np.stack([element for _, element in terms])  # [m, B]
    if sites is not None:
        gauge = _gauge_signs(bits, sites)
        elements = elements * gauge[None] * np.stack([_gauge_signs(flipped, sites) for flipped, _ in terms])
    s_new = torch.from_numpy(1.0 - 2.0 * np.concatenate([flipped for flipped, _ in terms]).astype(np.float64))
    log_new = torch.cat([model.log_psi(s_new[i : i + _LOCAL_ENERGY_ROWS]) for i in range(0, len(s_new), _LOCAL_ENERGY_ROWS)])
    ratio = torch.exp(log_new.reshape(len(terms), -1) - log_psi[None])
    el = torch.from_numpy(elements)
    return e + torch.where(el != 0, el * ratio, torch.zeros_like(ratio)).sum(0)


def sr_update(o: torch.Tensor, p: torch.Tensor, e_loc: torch.Tensor, diag_shift: float) -> tuple[float, float, torch.Tensor]:
    """One stochastic-reconfiguration step from log-derivatives ``o`` ``[B, P]`` and local energies under weights ``p``.

    Returns (energy, energy variance, δ) with δ = (S + λ𝟙)⁻¹ F; the parameters move by −η δ.
    With fewer samples than parameters the same δ comes from the B × B system
    Oᶜᵀ(Oᶜ Oᶜᵀ + λ𝟙)⁻¹ ε (the push-through identity on √p-weighted rows), so no
    P × P matrix is formed.
    """
    energy = float((p * e_loc).sum())
    var = float((p * (e_loc - energy) ** 2).sum())
    oc = (o - p @ o) * p.sqrt()[:, None]  # √p-weighted centred rows: S = ocᵀoc, F = ocᵀ ε
    eps = p.sqrt() * (e_loc - energy)
    b, n_par = oc.shape
    if b < n_par:
        t = oc @ oc.T
        t.diagonal().add_(diag_shift)
        factor, info = torch.linalg.cholesky_ex(t)  # positive definite for any shift > 0: half the cost of a general solve
        solved = torch.cholesky_solve(eps[:, None], factor)[:, 0] if int(info) == 0 else torch.linalg.solve(t, eps)
        delta = oc.T @ solved
    else:
        s_mat = oc.T @ oc
        s_mat.diagonal().add_(diag_shift)
        delta = torch.linalg.solve(s_mat, oc.T @ eps)
    return energy, var, delta


class _Metropolis:
    """Persistent Metropolis chains over σ ∈ {±1}ⁿ: single flips (TFIM) or neighbour exchanges (XXZ, conserving Sᶻ)."""

    def __init__(self, chain: SpinChain, n_chains: int, seed: int):
        self.chain, self.gen = chain, torch.Generator().manual_seed(seed)
        n = chain.n
        self.n_up = None
        if chain.kind == "xxz":  # start in the Sᶻ = 0 sector (½ for odd n); exchanges keep it
            base = torch.tensor([1.0, -1.0] * (n // 2) + [1.0] * (n % 2))
            self.n_up = n // 2 + n % 2
            self.state = torch.stack([base[torch.randperm(n, generator=self.gen)] for _ in range(n_chains)]).double()
        else:
            self.state = (2 * torch.randint(0, 2, (n_chains, n), generator=self.gen) - 1).double()
        self.bonds = torch.tensor(chain.bonds)

    def sweep(self, model: RBMWavefunction, sweeps: int) -> tuple[torch.Tensor, float]:
        """``sweeps`` × n moves of every chain; returns the states and the acceptance rate."""
        return self._sweep_full(model, sweeps) if model.symmetric else self._sweep_incremental(model, sweeps)

    def _sweep_full(self, model: RBMWavefunction, sweeps: int) -> tuple[torch.Tensor, float]:
        s, c, n = self.state, len(self.state), self.chain.n
        log_psi = model.log_psi(s)
        accepted = 0
        rows = torch.arange(c)
        for _ in range(sweeps * n):
            prop, _ = self._propose(s, rows)
            log_new = model.log_psi(prop)
            accept = torch.rand(c, generator=self.gen, dtype=torch.float64) < torch.exp(2 * (log_new - log_psi))
            s = torch.where(accept[:, None], prop, s)
            log_psi = torch.where(accept, log_new, log_psi)
            accepted += int(accept.sum())
        self.state = s
        return s, accepted / (sweeps * n * c)

    def _propose(self, s: torch.Tensor, rows: torch.Tensor) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
        """A move per chain and the (site, change of σ) pairs it makes."""
        prop = s.clone()
        if self.chain.kind == "xxz":
            bond = self.bonds[torch.randint(0, len(self.bonds), (len(s),), generator=self.gen)]
            i, j = bond[:, 0], bond[:, 1]
            si, sj = prop[rows, i].clone(), prop[rows, j].clone()
            prop[rows, i], prop[rows, j] = sj, si
            return prop, [(i, sj - si), (j, si - sj)]
        i = torch.randint(0, self.chain.n, (len(s),), generator=self.gen)
        prop[rows, i] = -prop[rows, i]
        return prop, [(i, -2 * s[rows, i])]

    def _sweep_incremental(self, model: RBMWavefunction, sweeps: int) -> tuple[torch.Tensor, float]:
        """The sweep of a dense RBM with θ = Wσ + b carried along: a move changes one or two σᵢ, so θ
        changes by one or two columns of W instead of being recomputed (n times fewer operations)."""
        s, c, n = self.state, len(self.state), self.chain.n
        wt, a = model.w.T, model.a  # [n, H], [n]
        theta = model._theta(s)
        linear, hidden = s @ a, _log_cosh(theta).sum(1)
        accepted = 0
        rows = torch.arange(c)
        for _ in range(sweeps * n):
            prop, changes = self._propose(s, rows)
            theta_new, linear_new = theta, linear
            for site, ds in changes:
                theta_new = theta_new + ds[:, None] * wt[site]
                linear_new = linear_new + ds * a[site]
            hidden_new = _log_cosh(theta_new).sum(1)
            log_ratio = linear_new + hidden_new - linear - hidden
            accept = torch.rand(c, generator=self.gen, dtype=torch.float64) < torch.exp(2 * log_ratio)
            s = torch.where(accept[:, None], prop, s)
            theta = torch.where(accept[:, None], theta_new, theta)
            linear = torch.where(accept, linear_new, linear)
            hidden = torch.where(accept, hidden_new, hidden)
            accepted += int(accept.sum())
        self.state = s
        return s, accepted / (sweeps * n * c)


def optimise_ground_state(
    chain: SpinChain,
    alpha: int = 1,
    iterations: int = 300,
    lr: float = 0.05,
    diag_shift: float = 0.01,
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
        diag_shift: the shift λ of S + λ𝟙; raised tenfold automatically (up to
            ``MAX_DIAG_SHIFT``) after a step that gives a non-finite energy.
        translation_invariant: share weights across translations (periodic chains).
        seed: seeds the initial weights and the Metropolis chains.
        exact_energy: if given, relative errors are recorded in the history.
        callback: called with (iteration, record) after every step.
        time_budget_s: stop once this much wall time has passed.
        sampler: ``"exact"`` (sums over all 2ⁿ configurations, n ≤ 20), ``"metropolis"``
            (``n_samples`` persistent chains, ``sweeps`` sweeps between iterations), or
            ``"auto"`` (exact up to 14 spins).
        n_samples: Metropolis chains, one sample each per iteration.
        sweeps: Metropolis sweeps (n moves per chain) between iterations.
        final_samples: Metropolis samples for the final energy estimate.

    Returns:
        a :class:`VMCResult`: energies with their statistical errors (0 with exact
        sums; σ/√N from the chains otherwise) and the energy variance per iteration.
        With Sᶻ-conserving Metropolis moves (XXZ) the model lives in one Sᶻ sector,
        recorded as ``model.n_up``.

    Raises:
        ConfigError: an unknown sampler, with the nearest valid name.
        InvalidDataError: an exact sampler beyond 20 spins, or a frustrated chain (:func:`sign_rule`).
        TrainingDivergedError: the energy stayed non-finite with λ at ``MAX_DIAG_SHIFT``.
    """
    if sampler == "auto":
        sampler = "exact" if chain.n <= 14 else "metropolis"
    if sampler not in ("exact", "metropolis"):
        raise ConfigError.unknown("optimise_ground_state", str(sampler), ("exact", "metropolis", "auto"), what="sampler")
    if sampler == "exact" and chain.n > MAX_EXACT:
        raise InvalidDataError(f"exact-expectation VMC enumerates 2ⁿ states, n ≤ {MAX_EXACT}; got n = {chain.n}; use sampler='metropolis'")
    if translation_invariant and (not chain.periodic or chain.lattice is not None):
        raise InvalidDataError("translation_invariant shares weights along a periodic chain; this is " + chain.describe())
    sites = sign_rule(chain)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        model = RBMWavefunction(chain.n, alpha, translation_invariant, seed)
        model.chain = chain
        energies, errors, variances, history = [], [], [], []
        t0 = time.perf_counter()
        if sampler == "exact":
            h = _stoquastic_matrix(chain, sites)
            s_all = torch.from_numpy(1.0 - 2.0 * configurations(chain.n).astype(np.float64))
        else:
            mc = _Metropolis(chain, n_samples, seed)
            model.n_up = mc.n_up
            with torch.no_grad():
                mc.sweep(model, 20)  # burn-in
        shift, it = float(diag_shift), 0
        saved = (model.flat_parameters(), None if sampler == "exact" else mc.state.clone())
        while it < iterations:
            with torch.no_grad():
                if sampler == "exact":
                    log_psi = model.log_psi(s_all)
                    psi = torch.exp(log_psi - log_psi.max())
                    p = psi**2 / (psi**2).sum()
                    e_loc = torch.from_numpy(h @ psi.numpy()) / psi
                    samples = s_all
                else:
                    samples, _ = mc.sweep(model, sweeps)
                    log_psi = model.log_psi(samples)
                    p = torch.full((len(samples),), 1.0 / len(samples))
                    e_loc = _local_energies(model, chain, samples, log_psi, sites)
                energy, var, delta = sr_update(model.log_derivatives(samples), p, e_loc, shift) if torch.isfinite(e_loc).all() else (math.nan, math.nan, None)
                if delta is None or not (math.isfinite(energy) and bool(torch.isfinite(delta).all())):
                    shift = _raise_shift(shift, it + 1, lr, energy)
                    model.add_to_parameters(saved[0] - model.flat_parameters())
                    if saved[1] is not None:
                        mc.state = saved[1].clone()
                    if it > 0:  # redo the previous step, now with the larger shift
                        it -= 1
                        for rows in (energies, errors, variances, history):
                            rows.pop()
                    continue
                saved = (model.flat_parameters(), None if sampler == "exact" else mc.state.clone())
                model.add_to_parameters(-lr * delta)
            err = 0.0 if sampler == "exact" else math.sqrt(var / len(samples))
            energies.append(energy)
            errors.append(err)
            variances.append(var)
            rec = {"iteration": it + 1, "energy": energy, "error": err, "variance": var, "diag_shift": shift, "seconds": time.perf_counter() - t0}
            if exact_energy is not None:
                rec["relative_error"] = abs((energy - exact_energy) / exact_energy)
            history.append(rec)
            if callback is not None:
                callback(it + 1, rec)
            it += 1
            if time_budget_s is not None and time.perf_counter() - t0 > time_budget_s:
                break
        # the energy of the final parameters
        with torch.no_grad():
            if sampler == "exact":
                log_psi = model.log_psi(s_all)
                psi = torch.exp(log_psi - log_psi.max())
                final, final_err = float(psi @ torch.from_numpy(h @ psi.numpy()) / (psi @ psi)), 0.0
            else:
                e_all = []
                for _ in range(max(1, final_samples // n_samples)):
                    samples, _ = mc.sweep(model, sweeps)
                    e_all.append(_local_energies(model, chain, samples, model.log_psi(samples), sites))
                e_cat = torch.cat(e_all)
                final, final_err = float(e_cat.mean()), float(e_cat.std() / math.sqrt(len(e_cat)))
        if not math.isfinite(final):
            raise TrainingDivergedError(f"VMC on the {chain.describe()}: the final energy is not finite; lower lr (now {lr:g}) or raise diag_shift (now {shift:g})")
        energies.append(final)
        errors.append(final_err)
        return VMCResult(energies, errors, variances, time.perf_counter() - t0, exact_energy, model, history)
    finally:
        torch.set_default_dtype(previous)


def _raise_shift(shift: float, iteration: int, lr: float, energy: float) -> float:
    """The next diagonal shift after a non-finite step, or TrainingDivergedError past ``MAX_DIAG_SHIFT``."""
    if shift * 10 > MAX_DIAG_SHIFT * (1 + 1e-9):
        raise TrainingDivergedError(
            f"VMC iteration {iteration}: the energy or the SR update is not finite (energy {energy}) even with "
            f"diag_shift {shift:g}; lower lr (now {lr:g}) or use more samples (n_samples)"
        )
    return shift * 10


def state_vector(model: RBMWavefunction, chain: SpinChain) -> np.ndarray:
    """The normalised amplitudes of ``model`` in the original (not sign-rotated) basis.

    Over all 2ⁿ basis states, or, for a model restricted to one Sᶻ sector
    (``model.n_up`` set by Metropolis VMC on an XXZ chain), over that sector's states
    in ``chain.sector(n_up)`` order — the basis of ``ground_state(chain, n_up=…)``.
    """
    if chain.n > MAX_EXACT:
        raise InvalidDataError(f"state_vector enumerates the basis, n ≤ {MAX_EXACT}; got n = {chain.n}")
    states = np.arange(2**chain.n) if model.n_up is None else chain.sector(model.n_up)
    bits = ((states[:, None] >> np.arange(chain.n - 1, -1, -1)) & 1).astype(np.uint8)
    s = torch.from_numpy(1.0 - 2.0 * bits.astype(np.float64))
    with torch.no_grad():
        lp = model.log_psi(s).numpy()
    psi = np.exp(lp - lp.max())
    sites = sign_rule(chain)
    if sites is not None:
        psi = psi * _gauge_signs(bits, sites)
    return psi / np.linalg.norm(psi)
