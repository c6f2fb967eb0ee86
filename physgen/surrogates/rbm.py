"""Binary restricted Boltzmann machine: a generator of spin configurations.

    E(v, h) = −b·v − c·h − hᵀ W v,   p(v) = Σ_h e^{−E(v,h)} / Z = e^{−F(v)} / Z
    F(v)    = −b·v − Σⱼ softplus(cⱼ + Wⱼ·v)        (the free energy)

Trained on measured configurations (quantum-state tomography of a positive
wave function ψ(v) = √p(v)) by maximum likelihood. The gradient is
⟨∂F⟩_data − ⟨∂F⟩_model; the model average comes from

* ``gradient="exact"``: the exact log Z by enumerating all 2ⁿ configurations
  (n ≤ 20), so the loss is the exact negative log-likelihood per spin;
* ``gradient="cd"``: contrastive divergence, k Gibbs steps started at the data;
* ``gradient="pcd"``: persistent CD, chains carried across batches (and checkpoints).

Sampling is exact (multinomial over the 2ⁿ probabilities) for n ≤ 20, else
block-Gibbs chains with burn-in and thinning. ``log_prob`` is exact for
n ≤ 20 (capabilities say so) and the unnormalised −F(v) beyond.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from physgen.data import Data, Pipeline
from physgen.errors import ConfigError, InvalidDataError
from physgen.options import option
from physgen.surrogates.base import Capabilities, Surrogate, SurrogateOptions
from physgen.surrogates.structure import FeatureStructure

__all__ = ["RBMOptions", "RBMSurrogate", "MAX_EXACT_SPINS"]

MAX_EXACT_SPINS = 20


def _all_configs(n: int, device: torch.device) -> torch.Tensor:
    k = torch.arange(2**n, device=device)
    return ((k[:, None] >> torch.arange(n - 1, -1, -1, device=device)) & 1).to(torch.float32)


@dataclasses.dataclass(frozen=True)
class RBMOptions(SurrogateOptions):
    """Options of the binary restricted Boltzmann machine (``create("rbm", ...)``)."""

    n_hidden: int | None = option(None, "hidden units (None: alpha × visible)", ge=1)
    alpha: float = option(1.0, "hidden-unit density when n_hidden is not given", gt=0)
    gradient: Literal["exact", "cd", "pcd"] | None = option(None, "exact log Z (n ≤ 20), contrastive divergence or persistent CD (None: exact where possible, else pcd)")
    k: int = option(10, "Gibbs steps per gradient estimate (CD/PCD)", ge=1)
    n_chains: int = option(256, "persistent chains (PCD)", ge=1)
    burn_in: int = option(500, "Gibbs sweeps before sampling (n > 20)", ge=0)
    thin: int = option(10, "Gibbs sweeps between samples (n > 20)", ge=1)
    init_std: float = option(0.1, "standard deviation of the initial weights", gt=0)


class RBMSurrogate(Surrogate):
    """Binary–binary RBM with exact or contrastive-divergence training (options: :class:`RBMOptions`)."""

    family = "rbm"
    Options = RBMOptions
    options: RBMOptions
    capabilities = Capabilities(exact_density=True, conditional=False, gradient_trained=True)
    data_kinds = ("spins",)
    # full-batch exact-likelihood training with the epoch chosen on the validation split:
    # F ≥ 0.995 on QuCumber's TFIM N = 10 tutorial protocol without tuning (docs/guide/quantum.md)
    train_defaults: ClassVar[dict[str, Any]] = {"grad_clip": None, "epochs": 1500, "batch_size": 10_000, "lr": 0.03, "schedule": "constant", "patience": 100}

    def default_preprocessing(self, data: Data) -> Pipeline:
        return Pipeline()

    def build(self, dim: int, cond_dim: int, structure: FeatureStructure | None = None) -> None:
        if cond_dim:
            raise InvalidDataError("the RBM is unconditional; read spin data without conditions")
        o = self.options
        n_hidden = int(o.n_hidden or max(1, round(o.alpha * dim)))
        gradient = o.gradient or ("exact" if dim <= MAX_EXACT_SPINS else "pcd")
        if gradient == "exact" and dim > MAX_EXACT_SPINS:
            raise ConfigError(f"gradient='exact' enumerates 2ⁿ states, n ≤ {MAX_EXACT_SPINS}; got n = {dim}; use 'pcd'", where=self.family, key="gradient")
        self.resolved.update(n_hidden=n_hidden, gradient=gradient)
        # the global generator, which the training loop seeds before build(), like every family
        self.W = nn.Parameter(torch.randn(n_hidden, dim) * o.init_std)
        self.b = nn.Parameter(torch.zeros(dim))
        self.c = nn.Parameter(torch.zeros(n_hidden))
        self.register_buffer("chains", torch.bernoulli(torch.full((o.n_chains, dim), 0.5)))
        self.capabilities = Capabilities(exact_density=dim <= MAX_EXACT_SPINS, unnormalised_density=dim > MAX_EXACT_SPINS, conditional=False)

    @property
    def n_visible(self) -> int:
        return int(self.b.shape[0])

    # -- energies and exact normalisation ------------------------------------------------
    def free_energy(self, v: torch.Tensor) -> torch.Tensor:
        """F(v) per row; p(v) ∝ e^{−F(v)}."""
        return -(v @ self.b) - F.softplus(v @ self.W.T + self.c).sum(1)

    def log_z(self) -> torch.Tensor:
        """Exact log Z by enumeration (n ≤ 20), differentiable."""
        n = self.n_visible
        self._check_exact("the exact log Z")
        chunk = 1 << 16
        parts = [torch.logsumexp(-self.free_energy(_all_configs(n, self.b.device)[s : s + chunk]), 0) for s in range(0, 2**n, chunk)]
        return torch.logsumexp(torch.stack(parts), 0)

    def log_probabilities(self) -> torch.Tensor:
        """log p(v) of all 2ⁿ configurations in basis order (n ≤ 20)."""
        self._check_exact("the probabilities of all configurations")
        return -self.free_energy(_all_configs(self.n_visible, self.b.device)) - self.log_z()

    def _check_exact(self, what: str) -> None:
        n = self.n_visible
        if n > MAX_EXACT_SPINS:
            gib = 2.0**n * 4 * n / 2**30  # the float32 configurations alone
            raise InvalidDataError(
                f"{what} enumerates all 2ⁿ configurations, n ≤ {MAX_EXACT_SPINS}; this RBM has n = {n} "
                f"({gib:,.0f} GiB for the configurations alone); judge it from samples instead (rbm.sample, zz_correlations_from_samples)"
            )

    def wavefunction(self) -> np.ndarray:
        """ψ(v) = √p(v) over all 2ⁿ configurations (basis order), normalised."""
        with torch.no_grad():
            return torch.exp(0.5 * self.log_probabilities()).double().cpu().numpy()

    # -- Gibbs sampling ---------------------------------------------------------------------
    def gibbs(self, v: torch.Tensor, steps: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``steps`` block-Gibbs sweeps v → h → v."""
        for _ in range(steps):
            h = torch.bernoulli(torch.sigmoid(v @ self.W.T + self.c), generator=generator)
            v = torch.bernoulli(torch.sigmoid(h @ self.W + self.b), generator=generator)
        return v

    # -- the family's hooks -----------------------------------------------------------------
    def forward(self, x: torch.Tensor, cond: torch.Tensor | None) -> tuple[torch.Tensor, dict[str, float]]:
        n = x.shape[1]
        mode = self.resolved["gradient"]
        if mode == "exact":
            return (self.free_energy(x).mean() + self.log_z()) / n, {}
        with torch.no_grad():
            if mode == "cd":
                model_v = self.gibbs(x, self.options.k)
            else:
                model_v = self.gibbs(self.chains, self.options.k)
                if self.training:
                    self.chains.copy_(model_v)
        # its gradient is the (P)CD estimate ⟨∂F⟩_data − ⟨∂F⟩_model
        return (self.free_energy(x).mean() - self.free_energy(model_v).mean()) / n, {}

    @torch.no_grad()
    def validation_loss(self, x: torch.Tensor, cond: torch.Tensor | None, batch_size: int = 4096) -> float:
        """Exact negative log-likelihood per spin (n ≤ 20), else the mean free energy per spin."""
        f = float(self.free_energy(x).mean())
        if self.n_visible <= MAX_EXACT_SPINS:
            f += float(self.log_z())
        return f / x.shape[1]

    def log_prob_model(self, x: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        lp = -self.free_energy(x)
        return lp - self.log_z() if self.n_visible <= MAX_EXACT_SPINS else lp

    def sample_model(self, n: int, cond: torch.Tensor | None, generator: torch.Generator) -> torch.Tensor:
        if self.n_visible <= MAX_EXACT_SPINS:
            probs = torch.exp(self.log_probabilities())
            idx = torch.multinomial(probs, n, replacement=True, generator=generator)
            return _all_configs(self.n_visible, self.b.device)[idx]
        v = torch.bernoulli(torch.full((n, self.n_visible), 0.5, device=self.b.device), generator=generator)
        v = self.gibbs(v, self.options.burn_in, generator)
        return self.gibbs(v, self.options.thin, generator)

    def postprocess(self, x: torch.Tensor) -> torch.Tensor:
        return x.round()
