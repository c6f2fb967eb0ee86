"""The compiled update step: torch's Adam(W) and gradient clipping, fused by torch.compile, take torch's own steps."""

from __future__ import annotations

import warnings

import pytest
import torch

from physgen.training.optim import adam, clip_and_step, set_lr


def _params(seed: int) -> list[torch.nn.Parameter]:
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(*s, generator=g)) for s in ((7, 5), (5,), (3, 2, 4))]


def _loss(params: list[torch.nn.Parameter], step: int) -> torch.Tensor:
    return sum(((p - 0.1 * step) ** 2).sum() * 3 + p.sin().sum() for p in params)


def test_the_compiled_update_takes_the_steps_of_torchs_adam_and_clipping():
    """Clipping to norm 1 (it acts: the gradients' norm is larger) and Adam(W) under a changing learning rate."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch.jit.script", category=DeprecationWarning)
        step = torch.compile(clip_and_step, dynamic=False)
    for weight_decay, reference in ((0.0, torch.optim.Adam), (0.01, torch.optim.AdamW)):
        ours, theirs = _params(0), _params(0)
        opt = adam(ours, lr=0.05, betas=(0.5, 0.9), weight_decay=weight_decay, compiled=True)
        ref = reference(theirs, lr=0.05, betas=(0.5, 0.9), weight_decay=weight_decay)
        assert isinstance(opt, reference) and isinstance(opt.param_groups[0]["lr"], torch.Tensor)
        for i in range(12):
            lr = 0.05 * (1 - i / 12)
            set_lr(opt.param_groups[0], lr)
            set_lr(ref.param_groups[0], lr)
            versions = [p._version for p in ours]
            for o, ps in ((opt, ours), (ref, theirs)):
                o.zero_grad(set_to_none=True)
                _loss(ps, i).backward()
            norm = float(torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in theirs])))
            assert norm > 1.0
            step(opt, ours, 1.0)
            torch.nn.utils.clip_grad_norm_(theirs, 1.0)
            ref.step()
            # the weights' version counters move: caches keyed on them see the update
            assert all(p._version > v for p, v in zip(ours, versions, strict=True))
        assert float(opt.param_groups[0]["lr"]) == pytest.approx(ref.param_groups[0]["lr"], rel=1e-6)
        for a, b in zip(ours, theirs, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_set_lr_replaces_a_number_and_fills_a_tensor_in_place():
    group = {"lr": 0.1}
    set_lr(group, 0.2)
    assert group["lr"] == 0.2
    lr = torch.tensor(0.1)
    group = {"lr": lr}
    set_lr(group, 0.3)
    assert group["lr"] is lr and float(lr) == torch.tensor(0.3).item()
