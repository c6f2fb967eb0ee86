"""Conditional score-based diffusion with EDM preconditioning (Karras et al. 2022).

The denoiser is ``D(y; σ, c) = c_skip(σ) y + c_out(σ) F(c_in(σ) y, ln σ / 4, c)`` with
``F`` a residual MLP whose blocks are modulated (FiLM) by embeddings of the noise level
and of the condition. Training draws ln σ ~ N(P_mean, P_std²) and minimises
λ(σ) ‖D(y + σ n; σ) − y‖². Sampling integrates the probability-flow ODE from σ_max to 0
on Karras' ρ-schedule with Heun's second-order method (2N − 1 network evaluations for N
steps) or Euler's (N); ``steps`` is a parameter, so the cost of a sample is chosen at
sampling time. An EMA of the weights (decay 0.999) is on by default and the sampler uses
it. No ``log_prob`` (capabilities say so).

With ``analog_bits`` (features with an exact floor, such as empty voxels; Chen et al.'s
analog bits, 2022) each feature y_j becomes two diffused coordinates: a bit b_j = ±1
(above its floor or not) and a value v_j, the feature's value, or at the floor a fresh draw
from the feature's values above it at the event's first condition (a Gaussian about a line
fitted to the training data, :func:`~physgen.surrogates.point_mass.fit_feature_lines`), so
v_j has no point mass. A denoiser that sees the point mass next to rare values blends the
two and draws the values too small; with the bits it does not. A sample is at its floor
where b_j ≤ ``bit_threshold``, else ``e + |v_j − e|`` (folded at the floor e). With
``logit_shift`` the bits are read as logits, ``8·(b − bit_threshold)``, the hits drawn from
them, and a calibration can shift them after training.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from physgen.errors import ConfigError
from physgen.options import option
from physgen.surrogates import point_mass
from physgen.surrogates._common import cached_until_changed, in_blocks
from physgen.surrogates.base import Capabilities, Surrogate, SurrogateOptions
from physgen.surrogates.structure import FeatureStructure, require

__all__ = ["DiffusionOptions", "DiffusionSurrogate", "ResidualMLP"]

#: with ``logit_shift``, a bit b is read as the logit BIT_LOGIT_SCALE·b: bits near ±1 are
#: above the floor or at it for certain (σ(±8) = 0.9997 / 0.0003), those near 0 are drawn
BIT_LOGIT_SCALE = 8.0


@dataclasses.dataclass(frozen=True)
class DiffusionOptions(SurrogateOptions):
    """Options of the EDM diffusion (``create("diffusion", ...)``)."""

    renamed = {"hit_bits": "analog_bits"}

    hidden: int = option(512, "width of the residual MLP", ge=1)
    n_blocks: int = option(4, "residual blocks", ge=1)
    emb: int = option(128, "width of the noise-level and condition embeddings (even)", ge=2)
    dropout: float = option(0.0, "dropout in the residual blocks", ge=0, lt=1)
    steps: int = option(12, "sampler steps (12 Euler steps beat 15 or 25 Heun steps in a scan on PbWO4 showers)", ge=1)
    sampler: Literal["euler", "heun"] = option("euler", "ODE sampler: Euler (N network evaluations) or Heun (2N − 1)")
    sigma_min: float = option(0.002, "EDM's smallest noise level", gt=0)
    sigma_max: float = option(80.0, "EDM's largest noise level", gt=0)
    rho: float = option(7.0, "EDM's ρ of the noise schedule", gt=0)
    sigma_data: float = option(1.0, "EDM's data scale", gt=0)
    p_mean: float = option(-1.2, "mean of ln σ when training")
    p_std: float = option(1.2, "spread of ln σ when training", gt=0)
    analog_bits: bool = option(False, "diffuse each feature as a bit (above its floor or not) and a value (empty voxels)", needs="floor")
    bit_threshold: float = option(0.0, "with analog_bits, a feature is above its floor where its bit exceeds this", gt=-1, lt=1)
    one_per_group: bool = option(False, "with analog_bits, give each group (layer) without a value above its floor one, where its bit is largest", needs=("floor", "groups"))
    logit_shift: bool = option(False, "with analog_bits, read the bits as logits and keep a per-feature shift for a calibration to fit after training", needs="floor")

    def check(self, where: str) -> None:
        for name in ("one_per_group", "logit_shift"):
            if getattr(self, name) and not self.analog_bits:
                raise ConfigError(f"option {name!r} needs analog_bits", where=where, key=name)
        if self.emb % 2:
            raise ConfigError(f"option 'emb' must be even; got {self.emb}", where=where, key="emb")


class _Block(nn.Module):
    def __init__(self, hidden: int, emb: int, dropout: float):
        super().__init__()
        self.norm = nn.LayerNorm(hidden)
        self.film = nn.Linear(emb, 2 * hidden)
        self.net = nn.Sequential(nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(), nn.Dropout(dropout), nn.Linear(hidden, hidden))
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        scale, shift = self.film(emb).chunk(2, dim=1)
        return h + self.net(self.norm(h) * (1 + scale) + shift)


class ResidualMLP(nn.Module):
    """A residual MLP for flat vectors with noise-level and condition embeddings."""

    def __init__(self, dim: int, cond_dim: int, hidden: int = 512, n_blocks: int = 4, emb: int = 128, dropout: float = 0.0):
        super().__init__()
        self.freqs = nn.Parameter(torch.randn(emb // 2) * 4.0, requires_grad=False)  # random Fourier features of ln σ / 4
        self.noise_mlp = nn.Sequential(nn.Linear(emb, emb), nn.SiLU(), nn.Linear(emb, emb))
        self.cond_mlp = nn.Sequential(nn.Linear(cond_dim, emb), nn.SiLU(), nn.Linear(emb, emb)) if cond_dim else None
        self.inp = nn.Linear(dim, hidden)
        self.blocks = nn.ModuleList(_Block(hidden, emb, dropout) for _ in range(n_blocks))
        self.out = nn.Sequential(nn.LayerNorm(hidden), nn.SiLU(), nn.Linear(hidden, dim))
        nn.init.zeros_(self.out[-1].weight)
        nn.init.zeros_(self.out[-1].bias)

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        angles = c_noise[:, None] * self.freqs[None, :] * 2 * math.pi
        emb = self.noise_mlp(torch.cat([angles.sin(), angles.cos()], dim=1))
        if self.cond_mlp is not None and cond is not None:
            emb = emb + self.cond_mlp(cond)
        emb = nn.functional.silu(emb)
        h = self.inp(x)
        for block in self.blocks:
            h = block(h, emb)
        return self.out(h)


class DiffusionSurrogate(Surrogate):
    """EDM-preconditioned conditional diffusion on flat (preprocessed) vectors (options: :class:`DiffusionOptions`)."""

    family = "diffusion"
    Options = DiffusionOptions
    options: DiffusionOptions
    capabilities = Capabilities(conditional=True, gradient_trained=True)
    # its loss starts near 1 and falls: a hundredfold rise is a diverging run (lr 10 gave losses in the thousands)
    train_defaults: ClassVar[dict[str, Any]] = {"ema_decay": 0.999, "divergence_factor": 1e2}

    def __init__(self, **options: Any):
        super().__init__(**options)
        #: sampler steps; change it on a trained model to trade quality for speed
        self.steps = self.options.steps

    def build(self, dim: int, cond_dim: int, structure: FeatureStructure | None = None) -> None:
        o = self.options
        width = dim
        self.groups = require(structure, "groups", "one_per_group", self.family) if o.one_per_group else None
        if o.analog_bits:
            self.register_buffer("floor", require(structure, "floor", "analog_bits", self.family).float().clone())
            # each feature's values above its floor: a line in the first condition and the spread about it (initialise)
            self.register_buffer("fill_intercept", torch.zeros(dim))
            self.register_buffer("fill_slope", torch.zeros(dim))
            self.register_buffer("fill_std", torch.ones(dim))
            width = 2 * dim
        if o.logit_shift:
            self.register_buffer("logit_shift", torch.zeros(2, dim))  # per feature: a + b·x, fitted by a calibration
        self.net = ResidualMLP(width, cond_dim, hidden=o.hidden, n_blocks=o.n_blocks, emb=o.emb, dropout=o.dropout)

    @torch.no_grad()
    def initialise(self, y: torch.Tensor, cond: torch.Tensor | None) -> None:
        if self.options.analog_bits:
            intercept, slope, _, _, log_spread = point_mass.fit_feature_lines(y, self.floor, point_mass.covariate(cond, len(y)))
            self.fill_intercept.copy_(intercept)
            self.fill_slope.copy_(slope)
            self.fill_std.copy_(log_spread.exp())

    def encode_bits(self, y: torch.Tensor, cond: torch.Tensor | None, generator: torch.Generator | None = None) -> torch.Tensor:
        """``analog_bits``: ``[B, D]`` → ``[B, 2D]``: values (one at the floor drawn from the feature's values at this condition), then bits ±1."""
        hit = y > self.floor + point_mass.TOLERANCE
        mean = self.fill_intercept + self.fill_slope * point_mass.covariate(cond, len(y)).to(y.device)
        fill = mean + self.fill_std * torch.randn(y.shape, device=y.device, generator=generator)
        return torch.cat([torch.where(hit, y, fill), hit.to(y.dtype) * 2 - 1], 1)

    def decode_bits(self, u: torch.Tensor, generator: torch.Generator | None = None, cond: torch.Tensor | None = None) -> torch.Tensor:
        """``analog_bits``: ``[B, 2D]`` → features: the floor where the bit is ≤ ``bit_threshold``, else the value folded at it.

        With ``logit_shift`` the bit is read as a logit, ``BIT_LOGIT_SCALE``·(bit − ``bit_threshold``)
        plus the fitted shift at ``cond``, and "above the floor" drawn from it: the same cut for
        bits near ±1, and a draw whose expected count a calibration can fit.
        """
        o = self.options
        value, bit = u.float().chunk(2, dim=1)
        bit = bit - o.bit_threshold
        if o.logit_shift:
            logit = point_mass.shift_logits(BIT_LOGIT_SCALE * bit, self.logit_shift, cond)
            prob = torch.sigmoid(logit)
            hit = torch.rand(prob.shape, generator=generator, device=prob.device) < prob
        else:
            hit, prob = bit > 0, torch.sigmoid(4 * bit)
        if self.groups is not None:  # a group with none above its floor: one where the bit says it is likeliest
            point_mass.one_per_group_(hit, prob, self.groups, generator)
        empty = self.floor.float()
        return torch.where(hit, point_mass.fold(value, empty), empty)

    def point_mass_logits(self, n: int, cond: torch.Tensor | None, generator: torch.Generator) -> torch.Tensor:
        """``analog_bits``: one sampler run's bits as logits, ``BIT_LOGIT_SCALE``·(bit − ``bit_threshold``), before the fitted shift."""
        bit = self._integrate(n, cond, generator, decode=False).float()[:, self.dims["dim"] :]
        return BIT_LOGIT_SCALE * (bit - self.options.bit_threshold)

    def denoise(self, y: torch.Tensor, sigma: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        """EDM's preconditioned denoiser D(y; σ, c); ``sigma`` is ``[B]``."""
        sd = self.options.sigma_data
        s = sigma[:, None]
        c_skip = sd**2 / (s**2 + sd**2)
        c_out = s * sd / torch.sqrt(s**2 + sd**2)
        c_in = 1 / torch.sqrt(s**2 + sd**2)
        return c_skip * y + c_out * self.net(c_in * y, torch.log(sigma) / 4, cond if self.dims.get("cond_dim") else None)

    def _loss(self, x: torch.Tensor, cond: torch.Tensor | None, generator: torch.Generator | None = None) -> torch.Tensor:
        o = self.options
        if o.analog_bits:
            x = self.encode_bits(x, cond, generator)
        ln_sigma = torch.randn(x.shape[0], device=x.device, generator=generator) * o.p_std + o.p_mean
        sigma = ln_sigma.exp()
        noise = torch.randn(x.shape, device=x.device, generator=generator)
        weight = (sigma**2 + o.sigma_data**2) / (sigma * o.sigma_data) ** 2
        err = (self.denoise(x + sigma[:, None] * noise, sigma, cond) - x) ** 2
        return (weight[:, None] * err).mean()

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None) -> tuple[torch.Tensor, dict[str, float]]:
        return self._loss(x, cond), {}

    @torch.no_grad()
    def validation_loss(self, x: torch.Tensor, cond: torch.Tensor | None, batch_size: int = 4096) -> float:
        """The training loss with fixed noise draws, so epochs are compared on equal terms."""
        was_training = self.training
        self.eval()
        gen = torch.Generator(device=x.device).manual_seed(0)
        total = 0.0
        for start in range(0, len(x), batch_size):
            xb = x[start : start + batch_size]
            cb = None if cond is None else cond[start : start + batch_size]
            total += float(self._loss(xb, cb, gen)) * len(xb)
        self.train(was_training)
        return total / len(x)

    def sigma_schedule(self, steps: int) -> torch.Tensor:
        """Karras' ρ-schedule: ``steps`` noise levels from σ_max down to σ_min, then 0."""
        o = self.options
        i = torch.arange(steps, dtype=torch.float64)
        inv = 1 / o.rho
        ramp = i / max(steps - 1, 1)
        sig = (o.sigma_max**inv + ramp * (o.sigma_min**inv - o.sigma_max**inv)) ** o.rho
        return torch.cat([sig, torch.zeros(1, dtype=torch.float64)])

    def sample_model(self, n: int, cond: torch.Tensor | None, generator: torch.Generator) -> torch.Tensor:
        return in_blocks(self._integrate, n, cond, generator, self.device())

    def _integrate(self, n: int, cond: torch.Tensor | None, generator: torch.Generator, decode: bool = True) -> torch.Tensor:
        """The deterministic ODE sampler from noise at ``sigmas[0]`` to noise level 0 (``decode``: hit bits to voxels)."""
        device = self.device()
        sigmas = self.sigma_schedule(self.steps).to(device=device, dtype=torch.float32)
        bits = self.options.analog_bits
        width = self.dims["dim"] * (2 if bits else 1)
        x = torch.randn(n, width, generator=generator, device=device) * sigmas[0]
        heun = self.options.sampler == "heun"
        if not heun:
            return self._integrate_euler(x, sigmas.tolist(), cond, generator, decode)
        for i in range(self.steps):
            s, s_next = sigmas[i], sigmas[i + 1]
            d = (x - self.denoise(x, s.expand(n), cond)) / s
            x_next = x + (s_next - s) * d
            if heun and s_next > 0:
                d2 = (x_next - self.denoise(x_next, s_next.expand(n), cond)) / s_next
                x_next = x + (s_next - s) * 0.5 * (d + d2)
            x = x_next
        return self.decode_bits(x, generator, cond) if bits and decode else x

    def _integrate_euler(
        self, x: torch.Tensor, sigmas: list[float], cond: torch.Tensor | None, generator: torch.Generator, decode: bool,
    ) -> torch.Tensor:
        """Euler's steps, each folded into one update of ``x`` in place (the same map as the Heun loop's Euler branch).

        With D = c_skip·x + c_out·F(c_in·x) and d = (x − D)/σ, the step x + (σ' − σ)·d is
        α·x + β·F with α = 1 + (σ' − σ)(1 − c_skip)/σ and β = −(σ' − σ)·c_out/σ: two passes
        over the state instead of eight fresh [B, 2D] tensors, which on a CPU cost more
        than the network (12,960 values an event with 6,480 features and analog bits).
        """
        n, sd = x.shape[0], self.options.sigma_data
        device = x.device
        net_dtype = torch.get_autocast_dtype(device.type) if torch.is_autocast_enabled(device.type) else x.dtype
        net = self._cast_net(net_dtype) if net_dtype != x.dtype else self.net
        scaled = torch.empty_like(x)
        cast = torch.empty(x.shape, device=device, dtype=net_dtype) if net_dtype != x.dtype else None
        context = cond if self.dims.get("cond_dim") else None
        for s, s_next in zip(sigmas[:-1], sigmas[1:], strict=True):
            c_skip, c_out, c_in = sd**2 / (s**2 + sd**2), s * sd / math.sqrt(s**2 + sd**2), 1 / math.sqrt(s**2 + sd**2)
            torch.mul(x, c_in, out=scaled)  # then rounded once to the autocast dtype, as autocast would
            f = net(scaled if cast is None else cast.copy_(scaled), torch.full((n,), math.log(s) / 4, device=device), context)
            h = s_next - s
            x.mul_(1 + h * (1 - c_skip) / s).add_(f, alpha=-h * c_out / s)
        return self.decode_bits(x, generator, cond) if self.options.analog_bits and decode else x

    def _cast_net(self, dtype: torch.dtype) -> nn.Module:
        """The network with its linear layers' weights in ``dtype``, kept until a parameter changes.

        Autocast casts the float32 weights to ``dtype`` once per ``sample`` call, the same
        rounding as this copy's, so the samples do not change (tested); for a 15 M-weight
        network that cast was a sixth of the time one sample took. The norms keep their
        float32 parameters, which autocast runs in float32
        (:func:`~physgen.surrogates._common.cached_until_changed`).
        """
        def build() -> nn.Module:
            net = copy.deepcopy(self.net).requires_grad_(False).eval()
            for module in net.modules():
                if isinstance(module, nn.Linear):
                    module.to(dtype)
            return net

        return cached_until_changed(self, "_sampling_net", self.net.parameters(), build, dtype)

    def evaluations_per_sample(self) -> int:
        """Network evaluations the sampler spends per sample."""
        return 2 * self.steps - 1 if self.options.sampler == "heun" else self.steps
