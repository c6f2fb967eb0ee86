"""Conditional Wasserstein GAN with gradient penalty (Gulrajani et al. 2017).

Critic: maximise E[D(y, c)] − E[D(G(z, c), c)] − λ E[(‖∇ D(ŷ, c)‖ − 1)²] with ŷ
on straight lines between real and generated points; generator: maximise
E[D(G(z, c), c)]. ``n_critic`` critic steps per generator step, Adam with
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

from typing import Any, ClassVar

import torch
from torch import nn

from physgen.errors import InvalidDataError
from physgen.surrogates._nets import mlp
from physgen.surrogates.base import Capabilities, Surrogate

__all__ = ["WGANSurrogate"]


class _LeakyReLU(nn.LeakyReLU):
    def __init__(self) -> None:
        super().__init__(0.2)


class WGANSurrogate(Surrogate):
    """Conditional WGAN-GP on flat (preprocessed) vectors.

    Args:
        noise_dim: dimension of the generator's Gaussian input.
        hidden, layers: generator MLP; ``critic_hidden``/``critic_layers`` for the critic.
        n_critic: critic steps per generator step.
        gp_weight: λ of the gradient penalty.
        lr_critic, lr_generator: Adam learning rates (β = (0.5, 0.9)); the loop's ``lr`` is ignored.
    """

    family = "wgan"
    capabilities = Capabilities(conditional=True, gradient_trained=True)
    train_defaults: ClassVar[dict[str, Any]] = {"ema_decay": 0.999, "divergence_factor": 1e3, "grad_clip": None}
    ddp_find_unused_parameters = True  # critic steps leave the generator unused, and vice versa

    def __init__(
        self,
        noise_dim: int = 64,
        hidden: int = 512,
        layers: int = 3,
        critic_hidden: int = 512,
        critic_layers: int = 3,
        n_critic: int = 5,
        gp_weight: float = 10.0,
        lr_critic: float = 1e-4,
        lr_generator: float = 1e-4,
        **config: Any,
    ):
        if n_critic < 1 or gp_weight < 0:
            raise InvalidDataError(f"n_critic must be ≥ 1 and gp_weight ≥ 0; got {n_critic}, {gp_weight}")
        super().__init__(
            noise_dim=int(noise_dim), hidden=int(hidden), layers=int(layers), critic_hidden=int(critic_hidden),
            critic_layers=int(critic_layers), n_critic=int(n_critic), gp_weight=float(gp_weight),
            lr_critic=float(lr_critic), lr_generator=float(lr_generator), **config,
        )

    def build(self, dim: int, cond_dim: int) -> None:
        c = self.config
        self.generator = mlp(c["noise_dim"] + cond_dim, dim, c["hidden"], c["layers"], nn.SiLU)
        self.critic = mlp(dim + cond_dim, 1, c["critic_hidden"], c["critic_layers"], _LeakyReLU)
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))

    def _cat(self, a: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        return torch.cat([a, cond], 1) if cond is not None and self.dims.get("cond_dim") else a

    def generate(self, z: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        return self.generator(self._cat(z, cond))

    def score(self, y: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
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

    def configure_optimizers(self, cfg: Any) -> list[torch.optim.Optimizer]:
        c = self.config
        return [
            torch.optim.Adam(self.critic.parameters(), lr=c["lr_critic"], betas=(0.5, 0.9)),
            torch.optim.Adam(self.generator.parameters(), lr=c["lr_generator"], betas=(0.5, 0.9)),
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
            ctx.step(gen_loss, gen_opt, self.generator.parameters())
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
                              None if cond is None else cond[s : s + batch_size])
                for s in range(0, len(x), batch_size)
            ])
            dirs = torch.randn(x.shape[1], 64, generator=gen, device=x.device)
            dirs = dirs / dirs.norm(dim=0, keepdim=True)
            a, b = (x @ dirs).sort(0).values, (fake @ dirs).sort(0).values
        self.train(was_training)
        return float((a - b).abs().mean())

    def sample_model(self, n: int, cond: torch.Tensor | None, generator: torch.Generator) -> torch.Tensor:
        z = torch.randn(n, self.config["noise_dim"], generator=generator, device=self._device())
        return self.generate(z, cond)
