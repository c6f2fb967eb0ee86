"""Conditional Wasserstein GAN with gradient penalty (Gulrajani et al. 2017).

Critic: maximise E[D(y, c)] − E[D(G(z, c), c)] − λ E[(‖∇ D(ŷ, c)‖ − 1)²] with ŷ
on straight lines between real and generated points; generator: maximise
E[D(G(z, c), c)]. ``n_critic`` critic steps per generator step (2 by default; the paper's 5
starves the generator at CPU budgets of minutes, see below), Adam with
β = (0.5, 0.9) and lr 1e-4 (the paper's usual settings), no batch
normalisation in the critic (it would break the per-sample gradient penalty).
An EMA of the weights (decay 0.999, on by default) is what samples come from.

GAN training is where users lose days, so the history carries the critic and
generator losses, the gradient penalty and the Wasserstein estimate
E[D(real)] − E[D(fake)] (also on the validation split, as ``val_loss``), and
the shared loop stops with :class:`~physgen.surrogates.TrainingDivergedError`,
saving nothing, on a NaN/inf or a critic loss 1000× its first-epoch size.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from torch import nn

from physgen.data import Data
from physgen.data.transforms import LayerFractions, Pipeline, _Layers
from physgen.errors import InvalidDataError
from physgen.surrogates._nets import mlp
from physgen.surrogates.base import (
    EMPTY_TOL,
    Capabilities,
    Surrogate,
    energy_column,
    fit_voxel_marginals,
    fold_hit,
)

__all__ = ["WGANSurrogate"]


class _LeakyReLU(nn.LeakyReLU):
    def __init__(self) -> None:
        super().__init__(0.2)


class WGANSurrogate(Surrogate):
    """Conditional WGAN-GP on flat (preprocessed) vectors.

    Args:
        noise_dim: dimension of the generator's Gaussian input.
        hidden, layers: generator MLP; ``critic_hidden``/``critic_layers`` for the critic.
        n_critic: critic steps per generator step. 2 by default: with the paper's 5, the
            W/Si WGAN made about 185 generator steps in its 2.5 minutes, and its voxels'
            model-space spread was 0.19 of Geant4's (0.31 with 2, about 350 steps);
            on PbWO4 (5 minutes) 2 took it from 17 features worse than the Gaussian
            by > 2σ to none.
        gp_weight: λ of the gradient penalty.
        lr_critic, lr_generator: Adam learning rates (β = (0.5, 0.9)); the loop's ``lr`` is ignored.
        shower_moments: also show the critic each layer's energy-weighted x, y and r
            centroid and width, computed (differentiably) from the voxel fractions;
            ``None`` (the default): wherever the data allow it (calorimeter showers
            with a geometry and the two-stage pipeline). As CaloGAN gave its
            discriminator sparsity and energy sums: a critic on 768 logit
            fractions barely sees the first moments of sparse early layers, where
            a plain WGAN's centroids came out biased.
        empty_mass: the generator also gives each voxel a hit logit, and each voxel a
            learned noise scale: a voxel is exactly empty with probability 1 − π (drawn
            with logistic noise, passed straight through: exact 0/1 forward, the
            sigmoid's slope backward), else the generator's value plus Gaussian noise,
            as the VAE's ``empty_mass``. The hit logits and values start at per-voxel
            fits, in log E_inc, to the training data (a logistic regression and a line),
            the noise scales at the hits' residual spread. ``None`` (the default): on for
            two-stage calorimeter showers whose pipeline ends with logit → standardise.
            On W/Si (90 % of voxels empty, 2.5 minutes) a plain generator made the outer
            voxels hit in a third of showers with small values, where Geant4 hits them in
            2-8 % with large ones: radial widths half Geant4's, AUC 0.906, 197 of 363
            features worse than the Gaussian by > 2σ; with it AUC 0.595 and 3.
        layer_scatter: with ``empty_mass``, one N(0, 1) draw per shower and layer shifts
            all of the layer's hit logits by a learned ``hit_scatter`` (logit units). Hits
            drawn independently per voxel made a layer's hit count scatter too little at
            high energy (W/Si sparsity at 40-100 GeV: 0.035 against Geant4's 0.057): in
            Geant4 a shower's voxels are hit together. The spread starts at the excess of
            the data's hit-count variance over the independent fits' (moment matching),
            and the fitted logits are stretched to keep each voxel's occupancy.
            ``None`` (the default): on with ``empty_mass`` and a geometry.
        fold_hits: with ``empty_mass``, a hit's value plus noise is folded at the empty value
            (``empty + |value + noise − empty|``), in training and in sampling, so a drawn hit
            never lands below it, where the inverse preprocessing makes it an empty voxel
            (6 % of the W/Si WGAN's hits in layers 9-13 at 40-100 GeV were lost that way).
            ``None`` (the default): on with ``empty_mass``.
        one_hit_per_layer: with ``empty_mass``, a layer whose voxels drew no hit when sampling
            gets one, at a voxel drawn in proportion to the hit probabilities: in 9 % of the
            W/Si WGAN's showers at 10-30 GeV, layer 30 had energy from the first stage and no
            hit, and its energy went to one fixed voxel
            (:func:`~physgen.surrogates.base.one_hit_per_layer_`). Training draws hits without
            it: with the extra hit in ``generate`` too (it carries no gradient), the generator
            left the deep layers to it (one voxel each; W/Si AUC 0.764, against 0.538 with the
            extra hit at sampling only, one model each). ``None`` (the default): on with
            ``empty_mass`` and a geometry.
        hit_calibration, hit_pool: with ``empty_mass``, after training each voxel's hit logits are shifted
            by a line in log E_inc fitted so the model draws the training showers' hits
            (:meth:`~physgen.surrogates.Surrogate.calibrate_hits`; ``hit_pool`` says whether
            the voxels of an azimuthal orbit share one line). The W/Si WGAN drew 8-10 % too few
            hits in layers 5-12 at 40-100 GeV, which the readout's cuts cannot add back; with
            it, on 10,000 held-out showers, no feature is worse than the Gaussian beyond 2σ
            (was sparsity_10 and width_x_44), and calo_wsi turns it on. On PbWO4 it made the
            WGAN worse (AUC 0.856 → 0.894, four features worse beyond 2σ, the first layer's
            centroids and the radial widths of layers 12-14), so it is off by default.
    """

    family = "wgan"
    capabilities = Capabilities(conditional=True, gradient_trained=True)
    train_defaults: ClassVar[dict[str, Any]] = {"ema_decay": 0.999, "divergence_factor": 1e3, "grad_clip": None}
    checkpoint_defaults: ClassVar[dict[str, Any]] = {  # models saved before an option existed
        "shower_moments": False, "empty_mass": False, "layer_scatter": False, "fold_hits": False, "one_hit_per_layer": False,
        "hit_calibration": False,
    }
    ddp_find_unused_parameters = True  # critic steps leave the generator unused, and vice versa

    def __init__(
        self,
        noise_dim: int = 64,
        hidden: int = 512,
        layers: int = 3,
        critic_hidden: int = 512,
        critic_layers: int = 3,
        n_critic: int = 2,
        gp_weight: float = 10.0,
        lr_critic: float = 1e-4,
        lr_generator: float = 1e-4,
        shower_moments: bool | None = None,
        empty_mass: bool | None = None,
        layer_scatter: bool | None = None,
        fold_hits: bool | None = None,
        one_hit_per_layer: bool | None = None,
        **config: Any,
    ):
        if n_critic < 1 or gp_weight < 0:
            raise InvalidDataError(f"n_critic must be ≥ 1 and gp_weight ≥ 0; got {n_critic}, {gp_weight}")
        super().__init__(
            noise_dim=int(noise_dim), hidden=int(hidden), layers=int(layers), critic_hidden=int(critic_hidden),
            critic_layers=int(critic_layers), n_critic=int(n_critic), gp_weight=float(gp_weight),
            lr_critic=float(lr_critic), lr_generator=float(lr_generator), shower_moments=shower_moments,
            empty_mass=None if empty_mass is None else bool(empty_mass),
            layer_scatter=None if layer_scatter is None else bool(layer_scatter),
            fold_hits=None if fold_hits is None else bool(fold_hits),
            one_hit_per_layer=None if one_hit_per_layer is None else bool(one_hit_per_layer), **config,
        )

    def build(self, dim: int, cond_dim: int) -> None:
        c = self.config
        self.setup_empty_mass(dim)
        self.generator = mlp(c["noise_dim"] + cond_dim, dim * (2 if c["empty_mass"] else 1), c["hidden"], c["layers"], nn.SiLU)
        if c["empty_mass"]:
            self.log_noise = nn.Parameter(torch.zeros(dim))
            self.cond_slope = nn.Parameter(torch.zeros(2 * dim))  # per output, times the first condition column
        layers = self.voxel_layers(dim) if c["empty_mass"] else None
        if c.get("layer_scatter") and layers is None:
            raise InvalidDataError("layer_scatter needs empty_mass and calorimeter showers with a geometry")
        c["layer_scatter"] = bool(layers is not None if c.get("layer_scatter") is None else c["layer_scatter"])
        self.scatter_runs: _Layers | None = None  # the layers as runs of voxels, to shift in place (sampling)
        if c["layer_scatter"]:
            assert layers is not None
            self.register_buffer("_hit_layer", layers)
            self.hit_scatter = nn.Parameter(torch.zeros(int(layers.max()) + 1))  # per layer, logit units
            counts = torch.bincount(layers, minlength=len(self.hit_scatter))
            if bool((layers[1:] >= layers[:-1]).all()) and bool((counts > 0).all()):  # every layer one run, in order
                self.scatter_runs = _Layers(counts.tolist())
        n_moments = self._build_moments(dim)
        self.critic = mlp(dim + n_moments + cond_dim, 1, c["critic_hidden"], c["critic_layers"], _LeakyReLU)
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))

    def prepare(self, data: Data, preprocessing: Pipeline | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        y, c = super().prepare(data, preprocessing)
        if self.config["empty_mass"]:
            ys, cs, _ = self.split_stages(y, c) if self.has_energy_stage else (y, c, None)
            self._init_marginals(ys, cs)
        return y, c

    @torch.no_grad()
    def _init_marginals(self, y: torch.Tensor, cond: torch.Tensor | None) -> None:
        """Start the generator at each voxel's occupancy and hit-value mean and spread, as functions of the energy.

        Per voxel, a logistic regression of hit on the first condition column (log E_inc,
        standardised) gives the hit logit's intercept and slope, and a least-squares line
        through the hits the value's; the residual spread of the hits is the noise scale.
        The critic alone moved W/Si's 6,480 hit rates from ½ towards Geant4's (~0.1) too
        slowly for a few hundred generator steps, and a start at the energy-averaged
        occupancy left showers at 40-100 GeV with 30 % too few hits. The adversarial
        game is left the correlations.
        """
        dim = y.shape[1]
        x = energy_column(cond, len(y)).double()
        intercept, slope, a, b, log_noise = fit_voxel_marginals(y, self._empty, x)
        if self.config.get("layer_scatter"):
            self._init_layer_scatter(y, x, a, b)
        last = self.generator[-1]
        last.bias[:dim] = intercept
        last.bias[dim:] = a
        self.cond_slope.copy_(torch.cat([slope, b]))
        self.log_noise.copy_(log_noise)

    def _scatter_hits(self, hit_logit: torch.Tensor, generator: torch.Generator | None, in_place: bool = False) -> torch.Tensor:
        """With ``layer_scatter``: one N(0, 1) draw per shower and layer shifts all its voxels' hit logits.

        ``in_place``: a float32 ``hit_logit`` the caller owns is shifted in place, layer block by layer block.
        """
        if not self.config.get("layer_scatter"):
            return hit_logit
        u = torch.randn(hit_logit.shape[0], len(self.hit_scatter), generator=generator, device=hit_logit.device)
        shift = u * self.hit_scatter
        if in_place and hit_logit.dtype == torch.float32 and self.scatter_runs is not None:
            return self.scatter_runs.add_(hit_logit, shift)
        return hit_logit + shift[:, self._hit_layer]

    @torch.no_grad()
    def _init_layer_scatter(self, y: torch.Tensor, x: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
        """Set each layer's shared logit spread from the excess scatter of its hit count over independent hits.

        With hit probabilities p from the per-voxel fits, independent hits give a layer
        count of mean Σp and variance β = Σp(1 − p). A shared shift s·u of the logits
        adds about β²s² to it, so s² = mean((n − Σp)² − β) / mean(β²). The logits are
        then stretched by √(1 + πs²/8), which keeps each voxel's occupancy (the probit
        approximation of E_u σ(η + su)).
        """
        layer = self._hit_layer
        hit = y > self._empty + EMPTY_TOL
        for ell in range(len(self.hit_scatter)):
            cols = (layer == ell).nonzero()[:, 0]
            p = torch.sigmoid(a[cols].double() + b[cols].double() * x)
            n, mean, beta = hit[:, cols].double().sum(1), p.sum(1), (p * (1 - p)).sum(1)
            s2 = float((((n - mean) ** 2 - beta).mean() / (beta**2).mean().clamp_min(1e-12)).clamp_min(0))
            self.hit_scatter[ell] = math.sqrt(s2)
            stretch = math.sqrt(1 + math.pi * s2 / 8)
            a[cols], b[cols] = a[cols] * stretch, b[cols] * stretch

    def _generator_out(self, z: torch.Tensor, cond: torch.Tensor | None, in_place: bool = False) -> torch.Tensor:
        """The generator's output; with ``empty_mass``, plus per-output lines in the first condition column.

        ``in_place`` (sampling, no gradients): float32, the lines added in place.
        """
        out = self.generator(self._cat(z, cond))
        if self.config.get("empty_mass") and cond is not None and cond.shape[1]:
            if in_place:
                return out.float().addr_(cond[:, 0].float(), self.cond_slope)
            out = out + cond[:, :1] * self.cond_slope
        return out.float() if in_place else out

    def _build_moments(self, dim: int) -> int:
        """Set up the shower-moment features; returns how many the critic gets (0: none)."""
        wanted = self.config.get("shower_moments")
        layer = self.voxel_layers(dim)
        steps = [] if self.preprocessing is None else self.preprocessing.x_transforms
        fractions = [t for t in steps if isinstance(t, LayerFractions)]
        tail = self.logit_standardise_tail()
        usable = (
            layer is not None and len(fractions) == 1 and fractions[0].n_voxels == dim
            and self.dims.get("energy_dim", 0) > 0 and tail is not None
        )
        if wanted and not usable:
            raise InvalidDataError(
                "shower_moments needs calorimeter showers with a geometry, the two-stage pipeline "
                "(layer fractions, then logit and standardise last) and the voxel count of the geometry"
            )
        self.config["shower_moments"] = bool(usable if wanted is None else wanted)
        if not self.config["shower_moments"]:
            return 0
        assert layer is not None and tail is not None and self.schema is not None
        logit, std = tail
        mean, sd = std._params()
        xs, ys, rs = (torch.as_tensor(v, dtype=torch.float32) for v in self.schema.geometry.voxel_centres())
        scale = float(rs.max()) or 1.0
        coords = torch.stack([xs, ys, rs]) / scale  # [3, V], within [-1, 1]
        n_layers = int(layer.max()) + 1
        onehot = torch.zeros(dim, n_layers).index_put_((torch.arange(dim), layer), torch.tensor(1.0))
        self.register_buffer("_m_mean", mean[:dim].float())
        self.register_buffer("_m_sd", sd[:dim].float())
        self.register_buffer("_m_coords", coords)
        self.register_buffer("_m_layers", onehot)
        self._m_alpha, self._m_scale = logit.alpha, logit.scale
        return 6 * n_layers

    def shower_moments(self, y: torch.Tensor) -> torch.Tensor:
        """Per-layer energy-weighted centroid and width in x, y, r ``[B, 6L]`` of model-space voxel fractions."""
        u = torch.sigmoid(y * self._m_sd + self._m_mean)
        f = ((u - self._m_alpha) / (1 - 2 * self._m_alpha)).clamp_min(0) * self._m_scale  # Logit.inverse: share of its layer
        # softened denominators: an empty layer (total 0) must not give the critic huge slopes
        total = f @ self._m_layers + 0.1  # [B, L]; about 1.1 for a layer with energy
        feats = []
        for coord in self._m_coords:
            first = (f * coord) @ self._m_layers / total
            second = (f * coord * coord) @ self._m_layers / total
            feats += [first, torch.sqrt((second - first * first).clamp_min(0) + 1e-3)]
        return torch.cat(feats, 1)

    def _cat(self, a: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        return torch.cat([a, cond], 1) if cond is not None and self.dims.get("cond_dim") else a

    def generate(self, z: torch.Tensor, cond: torch.Tensor | None, generator: torch.Generator | None = None) -> torch.Tensor:
        out = self._generator_out(z, cond)
        if not self.config.get("empty_mass"):
            return out
        value, hit_logit = out.chunk(2, dim=1)
        value = value + torch.randn(value.shape, generator=generator, device=value.device) * self.log_noise.exp()
        if self.config.get("fold_hits"):
            value = fold_hit(value, self._empty)
        hit_logit = self._scatter_hits(hit_logit, generator)
        u = torch.rand(value.shape, generator=generator, device=value.device).clamp(1e-6, 1 - 1e-6)
        logits = hit_logit.float() + torch.log(u) - torch.log1p(-u)  # logistic noise: P(> 0) = sigmoid(hit_logit)
        soft = torch.sigmoid(logits)
        hit = (logits > 0).float() + soft - soft.detach()  # straight through: exact 0/1, the sigmoid's slope
        return self._empty + hit * (value - self._empty)

    def score(self, y: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        if self.config.get("shower_moments"):
            y = torch.cat([y, self.shower_moments(y)], 1)
        return self.critic(self._cat(y, cond))[:, 0]

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None, part: str = "critic") -> tuple[torch.Tensor, dict[str, float]]:
        """The critic loss (``part="critic"``) or the generator loss (``part="generator"``) of a batch."""
        z = torch.randn(len(x), self.config["noise_dim"], device=x.device)
        if part == "generator":
            return -self.score(self.generate(z, cond), cond).mean(), {}
        with torch.no_grad():
            fake = self.generate(z, cond)
        real_score, fake_score = self.score(x, cond), self.score(fake, cond)
        eps = torch.rand(len(x), 1, device=x.device)
        mix = (eps * x + (1 - eps) * fake).requires_grad_(True)
        grad = torch.autograd.grad(self.score(mix, cond).sum(), mix, create_graph=True)[0]
        gp = ((grad.norm(dim=1) - 1) ** 2).mean()
        w = real_score.mean() - fake_score.mean()
        return -w + self.config["gp_weight"] * gp, {"wasserstein": float(w.detach()), "gp": float(gp.detach())}

    def generator_parameters(self) -> list[nn.Parameter]:
        """The generator's weights and, with ``empty_mass``, the voxels' noise scales and condition slopes."""
        extra = [self.log_noise, self.cond_slope] if self.config.get("empty_mass") else []
        return [*self.generator.parameters(), *extra, *([self.hit_scatter] if self.config.get("layer_scatter") else [])]

    def configure_optimizers(self, cfg: Any) -> list[torch.optim.Optimizer]:
        c = self.config
        return [
            torch.optim.Adam(self.critic.parameters(), lr=c["lr_critic"], betas=(0.5, 0.9)),
            torch.optim.Adam(self.generator_parameters(), lr=c["lr_generator"], betas=(0.5, 0.9)),
        ]

    def train_batch(self, model: nn.Module, x: torch.Tensor, cond: torch.Tensor | None, optimizers: list[torch.optim.Optimizer], ctx: Any) -> dict[str, float]:
        critic_opt, gen_opt = optimizers
        critic_opt.zero_grad(set_to_none=True)
        with ctx.autocast():
            critic_loss, logs = model(x, cond, "critic")
        ctx.step(critic_loss, critic_opt, self.critic.parameters())
        self.steps += 1
        out = {"loss": float(critic_loss.detach()), "critic_loss": float(critic_loss.detach()), **logs}
        if int(self.steps) % self.config["n_critic"] == 0:
            gen_opt.zero_grad(set_to_none=True)
            with ctx.autocast():
                gen_loss, _ = model(x, cond, "generator")
            ctx.step(gen_loss, gen_opt, self.generator_parameters())
            out["generator_loss"] = float(gen_loss.detach())
        return out

    def validation_loss(self, x: torch.Tensor, cond: torch.Tensor | None, batch_size: int = 4096) -> float:
        """Sliced Wasserstein-1 (64 fixed directions) between validation data and samples at its conditions.

        The critic's own Wasserstein estimate grows while the critic learns, so it
        cannot tell whether the generator improves; this critic-free distance can.
        """
        was_training = self.training
        self.eval()
        gen = torch.Generator(device=x.device).manual_seed(0)
        with torch.no_grad():
            fake = torch.cat([
                self.generate(torch.randn(len(x[s : s + batch_size]), self.config["noise_dim"], generator=gen, device=x.device),
                              None if cond is None else cond[s : s + batch_size], gen)
                for s in range(0, len(x), batch_size)
            ])
            dirs = torch.randn(x.shape[1], 64, generator=gen, device=x.device)
            dirs = dirs / dirs.norm(dim=0, keepdim=True)
            a, b = (x @ dirs).sort(0).values, (fake @ dirs).sort(0).values
        self.train(was_training)
        return float((a - b).abs().mean())

    def sample_model(self, n: int, cond: torch.Tensor | None, generator: torch.Generator) -> torch.Tensor:
        return self.sample_in_blocks(self._sample_block, n, cond, generator)

    def _sample_block(self, n: int, cond: torch.Tensor | None, generator: torch.Generator) -> torch.Tensor:
        if not self.config.get("empty_mass"):
            z = torch.randn(n, self.config["noise_dim"], generator=generator, device=self._device())
            return self.generate(z, cond, generator)
        # generate's distribution without the straight-through bookkeeping, plus one_hit_per_layer's hit
        return self.sample_empty_mass(n, cond, generator)

    def empty_mass_out(self, n: int, cond: torch.Tensor | None, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        z = torch.randn(n, self.config["noise_dim"], generator=generator, device=self._device())
        value, hit_logit = self._generator_out(z, cond, in_place=not torch.is_grad_enabled()).chunk(2, dim=1)
        return value, self._scatter_hits(hit_logit, generator, in_place=not torch.is_grad_enabled()), self.log_noise.exp()
