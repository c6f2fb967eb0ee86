"""Conditional Wasserstein GAN with gradient penalty (Gulrajani et al. 2017).

Critic: maximise E[D(y, c)] − E[D(G(z, c), c)] − λ E[(‖∇ D(ŷ, c)‖ − 1)²] with ŷ on
straight lines between real and generated points; generator: maximise E[D(G(z, c), c)].
``n_critic`` critic steps per generator step (2 by default: the paper's 5 starves the
generator at CPU budgets of minutes), Adam with β = (0.5, 0.9) and lr 1e-4 (the paper's
usual settings; ``lr_critic``/``lr_generator`` or the training ``lr`` change it), no batch
normalisation in the critic (it would break the per-sample gradient penalty). An EMA of
the weights (decay 0.999, on by default) is what samples come from.

GAN training is where users lose days, so the history carries the critic and generator
losses, the gradient penalty and the Wasserstein estimate E[D(real)] − E[D(fake)], the
validation loss is a critic-free sliced Wasserstein distance, and the shared loop stops
with :class:`~physgen.errors.TrainingDivergedError`, saving nothing, on a NaN/inf or a
critic loss 1000× its first-batch size.

With ``point_mass`` (features with an exact floor, such as empty voxels) the generator
also gives each feature a logit of being above its floor and a learned noise scale: a
feature is exactly at its floor with probability 1 − π (drawn with logistic noise, passed
straight through: exact 0/1 forward, the sigmoid's slope backward), else the generator's
value plus Gaussian noise. The logits and values start at per-feature fits to the training
data (:func:`~physgen.surrogates.point_mass.fit_feature_lines`); the adversarial game is left
the correlations. ``group_scatter`` adds one N(0, 1) draw per event and group that shifts
all the group's logits by a learned spread, so a group's features are above their floor
together (as a shower's voxels are); ``summaries`` shows the critic summary statistics a
wrapper supplies (a shower's per-layer centroids and widths).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar

import torch
from torch import nn

from physgen.errors import ConfigError
from physgen.options import option
from physgen.surrogates import point_mass
from physgen.surrogates._common import in_blocks, mlp
from physgen.surrogates.base import Capabilities, Surrogate, SurrogateOptions
from physgen.surrogates.structure import FeatureStructure, require
from physgen.training.optim import adam

__all__ = ["WGANOptions", "WGANSurrogate"]


@dataclasses.dataclass(frozen=True)
class WGANOptions(SurrogateOptions):
    """Options of the conditional WGAN-GP (``create("wgan", ...)``)."""

    renamed = {
        "empty_mass": "point_mass", "fold_hits": "fold", "one_hit_per_layer": "one_per_group", "layer_scatter": "group_scatter",
        "shower_moments": "summaries",
    }

    noise_dim: int = option(64, "dimension of the generator's Gaussian input", ge=1)
    hidden: int = option(512, "width of the generator MLP", ge=1)
    layers: int = option(3, "hidden layers of the generator", ge=1)
    critic_hidden: int = option(512, "width of the critic MLP", ge=1)
    critic_layers: int = option(3, "hidden layers of the critic", ge=1)
    n_critic: int = option(2, "critic steps per generator step", ge=1)
    gp_weight: float = option(10.0, "λ of the gradient penalty", ge=0)
    lr_critic: float | None = option(None, "the critic's Adam learning rate (None: the training lr, 1e-4 unless set)", gt=0)
    lr_generator: float | None = option(None, "the generator's Adam learning rate (None: the training lr, 1e-4 unless set)", gt=0)
    summaries: bool = option(False, "also show the critic the summary statistics a wrapper supplies (a shower's per-layer centroids and widths)", needs="summaries")
    point_mass: bool = option(False, "give each feature a learned probability of sitting exactly at its floor (empty voxels)", needs="floor")
    group_scatter: bool = option(False, "shift all logits of a group (layer) by one shared learned random draw per event (needs point_mass)", needs=("floor", "groups"))
    fold: bool = option(False, "fold a value plus noise at the floor, so no drawn value falls below it (needs point_mass)", needs="floor")
    one_per_group: bool = option(False, "when sampling, give each group (layer) that drew no value above its floor one, where it is likeliest (needs point_mass)", needs=("floor", "groups"))
    logit_shift: bool = option(False, "keep a per-feature shift of the point-mass logits, linear in the first condition, for a calibration to fit after training (needs point_mass)", needs="floor")

    def check(self, where: str) -> None:
        for name in ("group_scatter", "fold", "one_per_group", "logit_shift"):
            if getattr(self, name) and not self.point_mass:
                raise ConfigError(f"option {name!r} needs point_mass", where=where, key=name)


class _LeakyReLU(nn.LeakyReLU):
    def __init__(self) -> None:
        super().__init__(0.2)


class WGANSurrogate(Surrogate):
    """Conditional WGAN-GP on flat (preprocessed) vectors (options: :class:`WGANOptions`)."""

    family = "wgan"
    Options = WGANOptions
    options: WGANOptions
    capabilities = Capabilities(conditional=True, gradient_trained=True)
    train_defaults: ClassVar[dict[str, Any]] = {"ema_decay": 0.999, "divergence_factor": 1e3, "grad_clip": None, "lr": 1e-4}
    ddp_find_unused_parameters = True  # critic steps leave the generator unused, and vice versa

    def build(self, dim: int, cond_dim: int, structure: FeatureStructure | None = None) -> None:
        o = self.options
        point_mass.build_buffers(self, dim, structure)
        self.generator = mlp(o.noise_dim + cond_dim, dim * (2 if o.point_mass else 1), o.hidden, o.layers, nn.SiLU)
        if o.point_mass:
            self.log_noise = nn.Parameter(torch.zeros(dim))
            self.cond_slope = nn.Parameter(torch.zeros(2 * dim))  # per output, times the first condition column
        self.scatter_groups = None
        if o.group_scatter:
            self.scatter_groups = require(structure, "groups", "group_scatter", self.family)
            assert structure is not None
            self.register_buffer("group_index", structure.group_index(), persistent=False)
            self.group_spread = nn.Parameter(torch.zeros(len(self.scatter_groups)))  # per group, logit units
        n_summaries = 0
        if o.summaries:
            self.summaries = require(structure, "summaries", "summaries", self.family)
            n_summaries = int(self.summaries.n_features)
        self.critic = mlp(dim + n_summaries + cond_dim, 1, o.critic_hidden, o.critic_layers, _LeakyReLU)
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def initialise(self, y: torch.Tensor, cond: torch.Tensor | None) -> None:
        """With ``point_mass``: start the generator at each feature's occupancy and value, as lines in the first condition.

        Per feature, a logistic regression of "above the floor" on the covariate gives the
        logit's intercept and slope, a least-squares line through the values above the floor
        the value's, and their residual spread the noise scale. From a flat start the critic
        moved a sparse detector's occupancies (~0.1) from ½ too slowly for a few hundred
        generator steps.
        """
        if not self.options.point_mass:
            return
        dim = y.shape[1]
        x = point_mass.covariate(cond, len(y)).double()
        intercept, slope, a, b, log_noise = point_mass.fit_feature_lines(y, self.floor, x)
        if self.options.group_scatter:
            self._init_group_scatter(y, x, a, b)
        last = self.generator[-1]
        last.bias[:dim] = intercept
        last.bias[dim:] = a
        self.cond_slope.copy_(torch.cat([slope, b]))
        self.log_noise.copy_(log_noise)

    def _scatter(self, hit_logit: torch.Tensor, generator: torch.Generator | None, in_place: bool = False) -> torch.Tensor:
        """With ``group_scatter``: one N(0, 1) draw per event and group shifts all its features' logits.

        ``in_place``: a float32 ``hit_logit`` the caller owns is shifted in place, group block by group block.
        """
        if not self.options.group_scatter:
            return hit_logit
        u = torch.randn(hit_logit.shape[0], len(self.group_spread), generator=generator, device=hit_logit.device)
        shift = u * self.group_spread
        if in_place and hit_logit.dtype == torch.float32 and self.scatter_groups is not None:
            return self.scatter_groups.add_(hit_logit, shift)
        return hit_logit + shift[:, self.group_index]

    @torch.no_grad()
    def _init_group_scatter(self, y: torch.Tensor, x: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
        """Set each group's shared logit spread from the excess scatter of its hit count over independent hits.

        With probabilities p from the per-feature fits, independent hits give a group count
        of mean Σp and variance β = Σp(1 − p). A shared shift s·u of the logits adds about
        β²s² to it, so s² = mean((n − Σp)² − β) / mean(β²). The logits are then stretched by
        √(1 + πs²/8), which keeps each feature's occupancy (the probit approximation of E_u σ(η + su)).
        """
        group = self.group_index
        hit = y > self.floor + point_mass.TOLERANCE
        for g in range(len(self.group_spread)):
            cols = (group == g).nonzero()[:, 0]
            p = torch.sigmoid(a[cols].double() + b[cols].double() * x)
            n, mean, beta = hit[:, cols].double().sum(1), p.sum(1), (p * (1 - p)).sum(1)
            s2 = float((((n - mean) ** 2 - beta).mean() / (beta**2).mean().clamp_min(1e-12)).clamp_min(0))
            self.group_spread[g] = math.sqrt(s2)
            stretch = math.sqrt(1 + math.pi * s2 / 8)
            a[cols], b[cols] = a[cols] * stretch, b[cols] * stretch

    def _generator_out(self, z: torch.Tensor, cond: torch.Tensor | None, in_place: bool = False) -> torch.Tensor:
        """The generator's output; with ``point_mass``, plus per-output lines in the first condition column.

        ``in_place`` (sampling, no gradients): float32, the lines added in place.
        """
        out = self.generator(self._cat(z, cond))
        if self.options.point_mass and cond is not None and cond.shape[1]:
            if in_place:
                return out.float().addr_(cond[:, 0].float(), self.cond_slope)
            out = out + cond[:, :1] * self.cond_slope
        return out.float() if in_place else out

    def _cat(self, a: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        return torch.cat([a, cond], 1) if cond is not None and self.dims.get("cond_dim") else a

    def generate(self, z: torch.Tensor, cond: torch.Tensor | None, generator: torch.Generator | None = None) -> torch.Tensor:
        """Generated model-space features for noise ``z``, differentiable (training and validation)."""
        out = self._generator_out(z, cond)
        if not self.options.point_mass:
            return out
        value, hit_logit = out.chunk(2, dim=1)
        value = value + torch.randn(value.shape, generator=generator, device=value.device) * self.log_noise.exp()
        if self.options.fold:
            value = point_mass.fold(value, self.floor)
        hit_logit = self._scatter(hit_logit, generator)
        u = torch.rand(value.shape, generator=generator, device=value.device).clamp(1e-6, 1 - 1e-6)
        logits = hit_logit.float() + torch.log(u) - torch.log1p(-u)  # logistic noise: P(> 0) = sigmoid(hit_logit)
        soft = torch.sigmoid(logits)
        hit = (logits > 0).float() + soft - soft.detach()  # straight through: exact 0/1, the sigmoid's slope
        return self.floor + hit * (value - self.floor)

    def score(self, y: torch.Tensor, cond: torch.Tensor | None, params: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """The critic's score of each row (with ``params``: the critic evaluated with those weights instead of its own)."""
        if self.options.summaries:
            y = torch.cat([y, self.summaries(y)], 1)
        inputs = self._cat(y, cond)
        return (self.critic(inputs) if params is None else torch.func.functional_call(self.critic, params, (inputs,)))[:, 0]

    def gradient_penalty(self, mix: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        """WGAN-GP's penalty E[(‖∇ₓ critic(x)‖ − 1)²] at the rows ``mix``, differentiable in the critic's weights.

        Eager, by ``torch.autograd.grad(create_graph=True)``; under ``torch.compile``, which cannot
        differentiate that graph again, by ``torch.func.grad`` of the critic called with its weights as
        inputs, which it traces (the same values: a test compares both and their gradients).
        """
        if torch.compiler.is_compiling():
            params = dict(self.critic.named_parameters())
            grad = torch.func.grad(lambda p, m: self.score(m, cond, p).sum(), argnums=1)(params, mix)
        else:
            mix = mix.detach().requires_grad_(True)
            grad = torch.autograd.grad(self.score(mix, cond).sum(), mix, create_graph=True)[0]
        return ((grad.norm(dim=1) - 1) ** 2).mean()

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None, part: str = "critic") -> tuple[torch.Tensor, dict[str, float]]:
        """The critic loss (``part="critic"``) or the generator loss (``part="generator"``) of a batch."""
        z = torch.randn(len(x), self.options.noise_dim, device=x.device)
        if part == "generator":
            return -self.score(self.generate(z, cond), cond).mean(), {}
        with torch.no_grad():
            fake = self.generate(z, cond)
        real_score, fake_score = self.score(x, cond), self.score(fake, cond)
        eps = torch.rand(len(x), 1, device=x.device)
        gp = self.gradient_penalty(eps * x + (1 - eps) * fake, cond)
        w = real_score.mean() - fake_score.mean()
        return -w + self.options.gp_weight * gp, {"wasserstein": w.detach(), "gp": gp.detach()}

    def generator_parameters(self) -> list[nn.Parameter]:
        """The generator's weights and, with ``point_mass``, the features' noise scales, condition slopes and group spreads."""
        extra = [self.log_noise, self.cond_slope] if self.options.point_mass else []
        return [*self.generator.parameters(), *extra, *([self.group_spread] if self.options.group_scatter else [])]

    def configure_optimizers(self, cfg: Any) -> list[torch.optim.Optimizer]:
        o = self.options
        return [
            adam(self.critic.parameters(), lr=o.lr_critic or cfg.lr, betas=(0.5, 0.9), compiled=cfg.compile),
            adam(self.generator_parameters(), lr=o.lr_generator or cfg.lr, betas=(0.5, 0.9), compiled=cfg.compile),
        ]

    def train_step(self, model: nn.Module, x: torch.Tensor, cond: torch.Tensor | None, optimizers: list[torch.optim.Optimizer], ctx: Any) -> dict[str, float]:
        critic_opt, gen_opt = optimizers
        critic_opt.zero_grad(set_to_none=True)
        with ctx.autocast():
            critic_loss, logs = ctx.compiled("critic_loss", model)(x, cond, "critic")
        ctx.step(critic_loss, critic_opt, self.critic.parameters())
        self.steps += 1
        out = {"loss": float(critic_loss.detach()), "critic_loss": float(critic_loss.detach()), **{k: float(v) for k, v in logs.items()}}
        if int(self.steps) % self.options.n_critic == 0:
            gen_opt.zero_grad(set_to_none=True)
            with ctx.autocast():
                gen_loss, _ = ctx.compiled("generator_loss", model)(x, cond, "generator")
            ctx.step(gen_loss, gen_opt, self.generator_parameters())
            out["generator_loss"] = float(gen_loss.detach())
        return out

    def validation_loss(self, x: torch.Tensor, cond: torch.Tensor | None, batch_size: int = 4096) -> float:
        """Sliced Wasserstein-1 (64 fixed directions) between validation data and samples at its conditions.

        The critic's own Wasserstein estimate grows while the critic learns, so it cannot tell
        whether the generator improves; this critic-free distance can.
        """
        was_training = self.training
        self.eval()
        gen = torch.Generator(device=x.device).manual_seed(0)
        with torch.no_grad():
            fake = torch.cat([
                self.generate(torch.randn(len(x[s : s + batch_size]), self.options.noise_dim, generator=gen, device=x.device),
                              None if cond is None else cond[s : s + batch_size], gen)
                for s in range(0, len(x), batch_size)
            ])
            dirs = torch.randn(x.shape[1], 64, generator=gen, device=x.device)
            dirs = dirs / dirs.norm(dim=0, keepdim=True)
            a, b = (x @ dirs).sort(0).values, (fake @ dirs).sort(0).values
        self.train(was_training)
        return float((a - b).abs().mean())

    def sample_model(self, n: int, cond: torch.Tensor | None, generator: torch.Generator) -> torch.Tensor:
        return in_blocks(self._sample_block, n, cond, generator, self.device())

    def _sample_block(self, n: int, cond: torch.Tensor | None, generator: torch.Generator) -> torch.Tensor:
        o = self.options
        if not o.point_mass:
            z = torch.randn(n, o.noise_dim, generator=generator, device=self.device())
            return self.generate(z, cond, generator)
        # generate's distribution without the straight-through bookkeeping, plus one_per_group's hit
        shift = self.logit_shift if o.logit_shift else None
        return point_mass.draw_shifted(self.point_mass_out(n, cond, generator), self.floor, generator, cond, shift, o.fold, self.groups)

    def point_mass_out(self, n: int, cond: torch.Tensor | None, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """With ``point_mass``: one draw's values, logits of being above the floor (before any shift) and noise scales."""
        z = torch.randn(n, self.options.noise_dim, generator=generator, device=self.device())
        value, hit_logit = self._generator_out(z, cond, in_place=not torch.is_grad_enabled()).chunk(2, dim=1)
        return value, self._scatter(hit_logit, generator, in_place=not torch.is_grad_enabled()), self.log_noise.exp()

    def point_mass_logits(self, n: int, cond: torch.Tensor | None, generator: torch.Generator) -> torch.Tensor:
        """One draw's logits of being above the floor ``[n, D]``, before the fitted shift (what a calibration fits to)."""
        return self.point_mass_out(n, cond, generator)[1]
