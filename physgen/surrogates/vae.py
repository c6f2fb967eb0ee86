"""Conditional variational autoencoder.

    q(h | y, c) = N(μ_φ(y, c), diag σ²_φ(y, c))      (encoder)
    p(y | h, c) = N(m_θ(h, c), diag s²)              (decoder; s learned per feature, or fixed)
    p(h)        = N(0, I)

trained on the negative ELBO per dimension,
−ELBO = E_q[−log p(y | h, c)] + β_t KL(q ‖ p), with the reparameterisation
h = μ + σ ε and the analytic KL ½ Σ (μ² + σ² − 1 − log σ²). β_t ramps linearly
from 0 to β over ``kl_warmup_steps`` (KL warm-up against posterior collapse).

Likelihood choice: a Gaussian with a *learned* per-feature variance (the
default) suits the standardised logit space the preprocessing produces, and
lets the model say how noisy each voxel is instead of imposing one scale; a
fixed σ (``likelihood="fixed"``, ``fixed_sigma``) is the classic choice.
Sampling draws h ~ p(h) and returns the decoder mean m(h, c), plus, with
``sample_noise``, the likelihood's independent per-feature noise (the model's full
distribution). By default (``sample_noise=None``) the noise is on for calorimeter
showers and off for event data, as measured:

* showers: the decoder mean is too smooth (its shower widths and centroids scatter
  too little), and the noise's spurious small deposits are what the occupancy-
  calibrated readout cut removes. On calo_pbwo4 (one trained model, cuts re-fitted
  per setting, 6,000 held-out showers, before ``empty_mass``) the noise took the mean
  separation power from 0.059 to 0.027 and the features worse than the Gaussian by
  > 2σ from 82 to 1;
* events: the noise breaks the correlations physics quantities rest on: on the CMS
  dimuon events the fraction of generated pairs in the Z window (81–101 GeV) is
  0.40 from the mean and 0.15 with the noise.

Empty voxels (``empty_mass``, on by default for two-stage calorimeter showers
whose pipeline ends with logit then standardise): an empty voxel maps to one exact
model-space value (its floor), and on W/Si 90 % of all voxels are empty. A
Gaussian can only smear that point mass, so the decoder also gives each voxel a
hit probability π = σ(ℓ):

    p(y_j | h, c) = (1 − π_j)              if y_j is the empty value,
                    π_j · N(y_j; m_j, s_j²)  otherwise,

and samples draw hit or empty first, then a hit's value. With ``fold_hits`` (on with
``empty_mass``) the hit's Gaussian is folded at the empty value e, a proper density on
the hits' side, N(y; m_j, s_j²) + N(y; 2e − m_j, s_j²) for y > e: a plain Gaussian put
some drawn hits below e, which the inverse preprocessing turns into empty voxels
(6 % of the W/Si VAE's hits in layers 9-13 at 40-100 GeV). Without ``empty_mass``, a sparse
voxel's samples are a Gaussian around a value between empty and hit, and the
occupancy-calibrated readout cut keeps only the smallest deposits of its upper
tail; with it, hits get hit-sized values. With ``empty_mass`` the ELBO is a
density with respect to a point mass at each voxel's empty value plus Lebesgue
measure, so its values are not comparable with the other families' densities.

``log_prob`` is the ELBO, a lower bound on log p(y | c) (capabilities say
``density_bound``); :meth:`VAESurrogate.log_prob_iw` gives the importance-weighted
bound with K samples (Burda et al. 2016), which tightens as K grows. The
history reports the active latent dimensions, Cov_y(E_q[h]) > 0.01 per
dimension (Burda et al.'s definition), so a collapsed posterior is visible.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from physgen.data import Data
from physgen.errors import InvalidDataError
from physgen.surrogates._nets import mlp
from physgen.surrogates.base import (
    EMPTY_TOL,
    Capabilities,
    Surrogate,
    folded_normal_log_prob,
)

__all__ = ["VAESurrogate", "gaussian_kl"]


def gaussian_kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(μ, diag e^logvar) ‖ N(0, I)) per row: ½ Σ (μ² + e^logvar − 1 − logvar)."""
    return 0.5 * (mu * mu + logvar.exp() - 1 - logvar).sum(-1)


class VAESurrogate(Surrogate):
    """Conditional VAE with a diagonal Gaussian posterior.

    Args:
        latent: latent dimensions.
        hidden, layers: width and depth of the encoder and decoder MLPs.
        beta: weight of the KL term (1: the ELBO).
        kl_warmup_steps: optimiser steps over which β ramps from 0 (0: no warm-up).
        likelihood: ``"learned"`` (per-feature variance) or ``"fixed"``.
        fixed_sigma: σ of the fixed likelihood.
        sample_noise: also add the likelihood's independent per-feature noise when sampling;
            None (default): on for calorimeter showers, off for events (see the module docstring).
        empty_mass: give each feature a hit probability next to its Gaussian (see the module
            docstring); None (default): on for two-stage calorimeter showers whose pipeline
            ends with logit, then standardise.
        fold_hits: with ``empty_mass``, a hit's Gaussian is folded at the empty value: the
            likelihood of a hit is N(y; m, s²) + N(y; 2e − m, s²) on y > e, and samples are
            e + |m + sε − e| (see the module docstring); None (default): on with ``empty_mass``.
        one_hit_per_layer: with ``empty_mass``, a layer whose voxels drew no hit when sampling
            gets one, at a voxel drawn in proportion to the hit probabilities, so a layer the
            first stage gives energy has a voxel to hold it (:func:`~physgen.surrogates.base.one_hit_per_layer_`);
            None (default): on with ``empty_mass`` and a geometry.
        hit_calibration, hit_pool: with ``empty_mass``, shift the hit logits after training so the
            model draws the training showers' hits, as the WGAN's (see there and
            :meth:`~physgen.surrogates.Surrogate.calibrate_hits`); off by default (on W/Si and
            PbWO4 the VAE moved within its errors: held-out AUC 0.563 → 0.551, 0.639 → 0.641).
    """

    family = "vae"
    energy_steps = 2  # first-stage steps per (slower) family step
    capabilities = Capabilities(density_bound=True, conditional=True, gradient_trained=True)
    checkpoint_defaults: ClassVar[dict[str, Any]] = {  # models saved before an option existed
        "empty_mass": False, "fold_hits": False, "one_hit_per_layer": False, "hit_calibration": False,
    }

    def __init__(
        self,
        latent: int = 32,
        hidden: int = 512,
        layers: int = 3,
        beta: float = 1.0,
        kl_warmup_steps: int = 2000,
        likelihood: str = "learned",
        fixed_sigma: float = 0.3,
        sample_noise: bool | None = None,
        empty_mass: bool | None = None,
        fold_hits: bool | None = None,
        one_hit_per_layer: bool | None = None,
        **config: Any,
    ):
        if likelihood not in ("learned", "fixed"):
            raise InvalidDataError(f"likelihood must be 'learned' or 'fixed'; got {likelihood!r}")
        if latent < 1 or beta < 0:
            raise InvalidDataError(f"latent must be ≥ 1 and beta ≥ 0; got {latent}, {beta}")
        super().__init__(
            latent=int(latent), hidden=int(hidden), layers=int(layers), beta=float(beta), kl_warmup_steps=int(kl_warmup_steps),
            likelihood=likelihood, fixed_sigma=float(fixed_sigma), sample_noise=None if sample_noise is None else bool(sample_noise),
            empty_mass=None if empty_mass is None else bool(empty_mass),
            fold_hits=None if fold_hits is None else bool(fold_hits),
            one_hit_per_layer=None if one_hit_per_layer is None else bool(one_hit_per_layer), **config,
        )

    def build(self, dim: int, cond_dim: int) -> None:
        c = self.config
        self.setup_empty_mass(dim)
        self.encoder = mlp(dim + cond_dim, 2 * c["latent"], c["hidden"], c["layers"])
        self.decoder = mlp(c["latent"] + cond_dim, dim * (2 if c["empty_mass"] else 1), c["hidden"], c["layers"])
        self.log_sigma = nn.Parameter(torch.zeros(dim), requires_grad=c["likelihood"] == "learned")
        if c["likelihood"] == "fixed":
            with torch.no_grad():
                self.log_sigma.fill_(math.log(c["fixed_sigma"]))
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))

    def _cat(self, a: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        return torch.cat([a, cond], 1) if cond is not None and self.dims.get("cond_dim") else a

    def encode(self, y: torch.Tensor, cond: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.encoder(self._cat(y, cond)).chunk(2, dim=1)
        return mu, logvar.clamp(-12, 8)

    def decode(self, h: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        """The decoder's output: the Gaussian means, then (with ``empty_mass``) the hit logits."""
        return self.decoder(self._cat(h, cond))

    def _log_lik(self, y: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        log_sigma = self.log_sigma
        mean, hit_logit = out.chunk(2, dim=1) if self.config.get("empty_mass") else (out, None)
        if hit_logit is not None and self.config.get("fold_hits"):
            gauss = folded_normal_log_prob(y, mean, log_sigma, self._empty)
        else:
            gauss = -0.5 * ((y - mean) / log_sigma.exp()) ** 2 - log_sigma - 0.5 * math.log(2 * math.pi)
        if hit_logit is None:
            return gauss.sum(-1)
        empty = y <= self._empty + EMPTY_TOL
        return torch.where(empty, F.logsigmoid(-hit_logit), F.logsigmoid(hit_logit) + gauss).sum(-1)

    def beta_now(self) -> float:
        warm = self.config["kl_warmup_steps"]
        return self.config["beta"] * (min(1.0, float(self.steps) / warm) if warm > 0 else 1.0)

    def elbo(self, y: torch.Tensor, cond: torch.Tensor | None, beta: float = 1.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-row (ELBO with KL weight ``beta``, reconstruction log-likelihood, KL)."""
        mu, logvar = self.encode(y, cond)
        h = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
        rec = self._log_lik(y, self.decode(h, cond))
        kl = gaussian_kl(mu, logvar)
        return rec - beta * kl, rec, kl

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None) -> tuple[torch.Tensor, dict[str, float]]:
        beta = self.beta_now() if self.training else self.config["beta"]
        elbo, rec, kl = self.elbo(x, cond, beta)
        if self.training:
            self.steps += 1
        with torch.no_grad():
            mu, _ = self.encode(x, cond)
            active = float((mu.var(0) > 0.01).sum()) if len(x) > 1 else float("nan")
        d = x.shape[1]
        return -elbo.mean() / d, {"kl": float(kl.mean().detach()) / d, "rec_nll": float(-rec.mean().detach()) / d, "beta": beta, "active_dims": active}

    def log_prob_model(self, x: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        """The ELBO (β = 1) of each row: a lower bound on log p(y | c)."""
        return self.elbo(x, cond, 1.0)[0]

    @torch.no_grad()
    def log_prob_iw(self, data: Data, k: int = 100) -> torch.Tensor:
        """Importance-weighted bound log (1/K) Σₖ p(y, hₖ | c) / q(hₖ | y, c) per event (model space)."""
        if self.preprocessing is None:
            raise InvalidDataError("vae surrogate is not fitted")
        y, c = self.preprocessing.forward(data.x, data.cond)
        y, c = y.float().to(self._device()), None if c is None else c.float().to(self._device())
        self.eval()
        first_stage = 0.0
        if self.has_energy_stage:
            assert c is not None
            first_stage = self.energy_log_prob(y[:, -self.dims["energy_dim"] :], c)
            y, c, _ = self.split_stages(y, c)
        mu, logvar = self.encode(y, c)
        std = (0.5 * logvar).exp()
        terms = []
        for _ in range(k):
            eps = torch.randn_like(mu)
            h = mu + eps * std
            log_q = (-0.5 * eps**2 - 0.5 * logvar - 0.5 * math.log(2 * math.pi)).sum(1)
            log_p_h = (-0.5 * h**2 - 0.5 * math.log(2 * math.pi)).sum(1)
            terms.append(self._log_lik(y, self.decode(h, c)) + log_p_h - log_q)
        return (torch.logsumexp(torch.stack(terms), 0) - math.log(k) + first_stage).cpu()

    @property
    def adds_noise(self) -> bool:
        """Whether sampling adds the likelihood's noise (``sample_noise``, or by data kind when None)."""
        noise = self.config.get("sample_noise")
        if noise is None:
            return self.schema is not None and self.schema.kind == "calorimeter"
        return bool(noise)

    def sample_model(self, n: int, cond: torch.Tensor | None, generator: torch.Generator) -> torch.Tensor:
        return self.sample_in_blocks(self._sample_block, n, cond, generator)

    def _sample_block(self, n: int, cond: torch.Tensor | None, generator: torch.Generator) -> torch.Tensor:
        if self.config.get("empty_mass"):
            return self.sample_empty_mass(n, cond, generator)
        out = self.decode(torch.randn(n, self.config["latent"], generator=generator, device=self._device()), cond)
        return out + torch.randn(out.shape, generator=generator, device=out.device) * self.log_sigma.exp() if self.adds_noise else out

    def empty_mass_out(self, n: int, cond: torch.Tensor | None, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        h = torch.randn(n, self.config["latent"], generator=generator, device=self._device())
        mean, hit_logit = self.decode(h, cond).chunk(2, dim=1)
        return mean, hit_logit, self.log_sigma.exp() if self.adds_noise else None
