"""The optimisers the families build, and their update step under ``torch.compile``.

With ``compile`` the loop compiles gradient clipping and the optimiser's step into one
function (:func:`clip_and_step`), whose per-tensor updates become a few generated kernels.
Without it, the families train with torch's Adam as it comes: torch's fused Adam would cut the
operations too, but on a CPU it updates the parameters without moving their version counters,
which the caches keyed on the weights (``physgen.surrogates._common.cached_until_changed``) rely on.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

__all__ = ["adam", "clip_and_step", "set_lr"]


def adam(
    params: Iterable[torch.nn.Parameter], lr: float, betas: tuple[float, float] = (0.9, 0.999), weight_decay: float = 0.0,
    compiled: bool = False,
) -> torch.optim.Optimizer:
    """Adam (AdamW with ``weight_decay``); ``compiled``: set up for :func:`clip_and_step` under ``torch.compile``.

    A compiled step needs the learning rate as a tensor (the schedule changes it in place,
    :func:`set_lr`, without a recompilation); on a GPU also torch's multi-tensor update with
    the state on the device (``capturable``).
    """
    params = list(params)
    cls = torch.optim.AdamW if weight_decay else torch.optim.Adam
    extra = {"weight_decay": weight_decay} if weight_decay else {}
    if compiled and params:
        # capturable (the state on the device) where torch supports it: a CPU step that runs eagerly stays valid
        gpu = params[0].device.type != "cpu"
        return cls(params, lr=torch.tensor(lr, device=params[0].device), betas=betas, foreach=gpu, capturable=gpu, **extra)
    return cls(params, lr=lr, betas=betas, **extra)


def set_lr(group: dict, value: float) -> None:
    """Set a parameter group's learning rate: in place where it is a tensor (a compiled step reads it), else replaced."""
    if isinstance(group["lr"], torch.Tensor):
        group["lr"].fill_(value)
    else:
        group["lr"] = value


def clip_and_step(optimizer: torch.optim.Optimizer, params: list[torch.Tensor], max_norm: float | None) -> None:
    """Scale the gradients to a global norm of at most ``max_norm`` (``clip_grad_norm_``'s rule), then step.

    Written for ``torch.compile``: the norms and the scaling are plain tensor operations
    it fuses (torch's foreach norm runs tensor by tensor on a CPU).
    """
    grads = [p.grad for p in params if p.grad is not None]
    if max_norm is not None and grads:
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
        torch._foreach_mul_(grads, (max_norm / (norm + 1e-6)).clamp(max=1.0))
    optimizer.step()

