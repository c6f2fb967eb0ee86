"""Conditional variational autoencoder.

    q(h | y, c) = N(μ_φ(y, c), diag σ²_φ(y, c))      (encoder)
    p(y | h, c) = N(m_θ(h, c), diag s²)              (decoder; s learned per feature, or fixed)
    p(h)        = N(0, I)

trained on the negative ELBO per dimension, −ELBO = E_q[−log p(y | h, c)] + β_t KL(q ‖ p),
with the reparameterisation h = μ + σ ε and the analytic KL ½ Σ (μ² + σ² − 1 − log σ²).
β_t ramps linearly from 0 to β over ``kl_warmup_steps`` (KL warm-up against posterior
collapse). The history reports the active latent dimensions (Cov_y(E_q[h]) > 0.01, Burda
et al.'s definition), so a collapsed posterior is visible.

The likelihood's per-feature variance is learned by default (``likelihood="fixed"`` for the
classic fixed σ). Sampling draws h ~ p(h) and returns the decoder mean, plus, with
``sample_noise``, the likelihood's independent per-feature noise.

With ``point_mass`` (features with an exact floor value, such as empty voxels; needs the
floor from a wrapper) the decoder also gives each feature a probability π = σ(ℓ) of being
above its floor:

    p(y_j | h, c) = (1 − π_j)                 if y_j is at its floor,
                    π_j · N(y_j; m_j, s_j²)    otherwise,

and samples draw "above the floor" first, then a value. With ``fold`` the Gaussian of a
value is folded at the floor e, N(y; m, s²) + N(y; 2e − m, s²) on y > e, so no drawn value
falls below it. The ELBO is then a density with respect to a point mass at each floor plus
Lebesgue measure, not comparable with other families' densities.

``log_prob`` is the ELBO, a lower bound on log p(y | c) (capabilities: ``density_bound``);
``log_prob(data, k=K)`` gives the importance-weighted bound with K samples (Burda et al.
2016), which tightens as K grows.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from physgen.errors import ConfigError
from physgen.options import option
from physgen.surrogates import point_mass
from physgen.surrogates._common import in_blocks, mlp
from physgen.surrogates.base import Capabilities, Surrogate, SurrogateOptions
from physgen.surrogates.layered import LayeredDecoder, LayeredEncoder
from physgen.surrogates.structure import FeatureStructure, require

__all__ = ["VAEOptions", "VAESurrogate", "gaussian_kl"]


@dataclasses.dataclass(frozen=True)
class VAEOptions(SurrogateOptions):
    """Options of the conditional VAE (``create("vae", ...)``)."""

    renamed = {"empty_mass": "point_mass", "fold_hits": "fold", "one_hit_per_layer": "one_per_group"}

    latent: int = option(32, "latent dimensions", ge=1)
    network: Literal["dense", "layered"] = option("dense", "encoder and decoder: MLPs over all features, or layer-structured networks whose weights do not grow with the number of layers times their size (needs a grid: showers whose layers share one polar binning)")
    hidden: int = option(512, "width of the encoder and decoder MLPs (dense)", ge=1)
    layers: int = option(3, "hidden layers of the encoder and of the decoder (dense)", ge=1)
    layer_width: int = option(64, "width of each layer's code (layered)", ge=1)
    channels: int = option(8, "convolution channels over each layer's (angle, radius) map (layered)", ge=1)
    beta: float = option(1.0, "weight of the KL term (1: the ELBO)", ge=0)
    kl_warmup_steps: int = option(2000, "optimiser steps over which the KL weight ramps up from 0 (0: no warm-up)", ge=0)
    likelihood: Literal["learned", "fixed"] = option("learned", "the decoder's Gaussian: a learned variance per feature, or a fixed σ")
    fixed_sigma: float = option(0.3, "σ of the fixed likelihood", gt=0)
    sample_noise: bool = option(False, "add the likelihood's per-feature noise when sampling (the decoder mean alone is too smooth for showers)")
    point_mass: bool = option(False, "model each feature's probability of sitting exactly at its floor (empty voxels)", needs="floor")
    fold: bool = option(False, "fold a value's Gaussian at the floor, so no drawn value falls below it (needs point_mass)", needs="floor")
    one_per_group: bool = option(False, "give each group of features (layer) that drew no value above its floor one, where it is likeliest (needs point_mass)", needs=("floor", "groups"))
    logit_shift: bool = option(False, "keep a per-feature shift of the point-mass logits, linear in the first condition, for a calibration to fit after training (needs point_mass)", needs="floor")

    def check(self, where: str) -> None:
        for name in ("fold", "one_per_group", "logit_shift"):
            if getattr(self, name) and not self.point_mass:
                raise ConfigError(f"option {name!r} needs point_mass", where=where, key=name)


def gaussian_kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(μ, diag e^logvar) ‖ N(0, I)) per row: ½ Σ (μ² + e^logvar − 1 − logvar)."""
    return 0.5 * (mu * mu + logvar.exp() - 1 - logvar).sum(-1)


class VAESurrogate(Surrogate):
    """Conditional VAE with a diagonal Gaussian posterior (options: :class:`VAEOptions`)."""

    family = "vae"
    Options = VAEOptions
    options: VAEOptions
    capabilities = Capabilities(density_bound=True, conditional=True, gradient_trained=True)

    def build(self, dim: int, cond_dim: int, structure: FeatureStructure | None = None) -> None:
        o = self.options
        point_mass.build_buffers(self, dim, structure)
        outputs = 2 if o.point_mass else 1
        if o.network == "layered":
            grid = require(structure, "grid", "network", self.family)
            if math.prod(grid) != dim:
                raise ConfigError(f"network='layered' needs a grid of {dim} features; got {tuple(grid)} ({math.prod(grid)})", where=self.family, key="network")
            self.encoder = LayeredEncoder(grid, cond_dim, 2 * o.latent, o.layer_width, o.channels)
            self.decoder = LayeredDecoder(grid, o.latent + cond_dim, outputs, o.layer_width, o.channels)
        else:
            self.encoder = mlp(dim + cond_dim, 2 * o.latent, o.hidden, o.layers)
            self.decoder = mlp(o.latent + cond_dim, dim * outputs, o.hidden, o.layers)
        self.log_sigma = nn.Parameter(torch.zeros(dim), requires_grad=o.likelihood == "learned")
        if o.likelihood == "fixed":
            with torch.no_grad():
                self.log_sigma.fill_(math.log(o.fixed_sigma))
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))

    def _cat(self, a: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        return torch.cat([a, cond], 1) if cond is not None and self.dims.get("cond_dim") else a

    def encode(self, y: torch.Tensor, cond: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        if self.options.network == "layered":
            mu, logvar = self.encoder(y, cond if self.dims.get("cond_dim") else None).chunk(2, dim=1)
        else:
            mu, logvar = self.encoder(self._cat(y, cond)).chunk(2, dim=1)
        return mu, logvar.clamp(-12, 8)

    def decode(self, h: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        """The decoder's output: the Gaussian means, then (with ``point_mass``) the logits of being above the floor."""
        return self.decoder(self._cat(h, cond))

    def _log_lik(self, y: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        log_sigma = self.log_sigma
        mean, hit_logit = out.chunk(2, dim=1) if self.options.point_mass else (out, None)
        if hit_logit is not None and self.options.fold:
            gauss = point_mass.folded_normal_log_prob(y, mean, log_sigma, self.floor)
        else:
            gauss = -0.5 * ((y - mean) / log_sigma.exp()) ** 2 - log_sigma - 0.5 * math.log(2 * math.pi)
        if hit_logit is None:
            return gauss.sum(-1)
        empty = y <= self.floor + point_mass.TOLERANCE
        return torch.where(empty, F.logsigmoid(-hit_logit), F.logsigmoid(hit_logit) + gauss).sum(-1)

    def beta_now(self) -> torch.Tensor:
        """The KL weight at this step (a tensor: a compiled loss reads the step counter without a recompilation a step)."""
        warm, beta = self.options.kl_warmup_steps, self.options.beta
        return beta * ((self.steps.double() / warm).clamp(max=1.0) if warm > 0 else torch.ones((), dtype=torch.float64, device=self.steps.device))

    def elbo(self, y: torch.Tensor, cond: torch.Tensor | None, beta: float | torch.Tensor = 1.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-row (ELBO with KL weight ``beta``, reconstruction log-likelihood, KL)."""
        mu, logvar = self.encode(y, cond)
        h = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
        rec = self._log_lik(y, self.decode(h, cond))
        kl = gaussian_kl(mu, logvar)
        return rec - beta * kl, rec, kl

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None) -> tuple[torch.Tensor, dict[str, float]]:
        beta = self.beta_now() if self.training else self.options.beta
        elbo, rec, kl = self.elbo(x, cond, beta)
        if self.training:
            self.steps += 1
        with torch.no_grad():
            mu, _ = self.encode(x, cond)
            active = (mu.var(0) > 0.01).sum().float() if len(x) > 1 else x.new_full((), math.nan)
        d = x.shape[1]
        # the logs stay tensors (the loop reads them): a compiled loss does not stop at each float()
        logs = {"kl": kl.mean().detach() / d, "rec_nll": -rec.mean().detach() / d, "beta": torch.as_tensor(beta), "active_dims": active}
        return -elbo.mean() / d, logs

    def log_prob_model(self, x: torch.Tensor, cond: torch.Tensor | None, k: int = 1) -> torch.Tensor:
        """The ELBO (β = 1) of each row, or with ``k`` > 1 the importance-weighted bound log (1/K) Σₖ p(y, hₖ | c) / q(hₖ | y, c)."""
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ConfigError(f"k (importance samples) must be a positive integer; got {k!r}", where=self.family, key="k")
        if k == 1:
            return self.elbo(x, cond, 1.0)[0]
        mu, logvar = self.encode(x, cond)
        std = (0.5 * logvar).exp()
        terms = []
        for _ in range(k):
            eps = torch.randn_like(mu)
            h = mu + eps * std
            log_q = (-0.5 * eps**2 - 0.5 * logvar - 0.5 * math.log(2 * math.pi)).sum(1)
            log_p_h = (-0.5 * h**2 - 0.5 * math.log(2 * math.pi)).sum(1)
            terms.append(self._log_lik(x, self.decode(h, cond)) + log_p_h - log_q)
        return torch.logsumexp(torch.stack(terms), 0) - math.log(k)

    def sample_model(self, n: int, cond: torch.Tensor | None, generator: torch.Generator) -> torch.Tensor:
        return in_blocks(self._sample_block, n, cond, generator, self.device())

    def _sample_block(self, n: int, cond: torch.Tensor | None, generator: torch.Generator) -> torch.Tensor:
        o = self.options
        if o.point_mass:
            shift = self.logit_shift if o.logit_shift else None
            return point_mass.draw_shifted(self.point_mass_out(n, cond, generator), self.floor, generator, cond, shift, o.fold, self.groups)
        out = self.decode(torch.randn(n, o.latent, generator=generator, device=self.device()), cond)
        return out + torch.randn(out.shape, generator=generator, device=out.device) * self.log_sigma.exp() if o.sample_noise else out

    def point_mass_out(self, n: int, cond: torch.Tensor | None, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """With ``point_mass``: one draw's means, logits of being above the floor (before any shift) and noise scale, ``[n, D]`` each."""
        h = torch.randn(n, self.options.latent, generator=generator, device=self.device())
        mean, hit_logit = self.decode(h, cond).chunk(2, dim=1)
        return mean, hit_logit, self.log_sigma.exp() if self.options.sample_noise else None

    def point_mass_logits(self, n: int, cond: torch.Tensor | None, generator: torch.Generator) -> torch.Tensor:
        """One draw's logits of being above the floor ``[n, D]``, before the fitted shift (what a calibration fits to)."""
        return self.point_mass_out(n, cond, generator)[1]
