"""physgen's quick classifier two-sample test: can a small MLP tell real from generated?

A classifier is trained to separate the two samples; on a held-out split its ROC AUC
(0.5: indistinguishable, 1: perfectly separable) and JSD = ln 2 − BCE (in nats; 0:
indistinguishable, ln 2: separable) are reported. It is smaller and faster than the
CaloChallenge evaluator's (``physgen.metrics.calochallenge``), whose protocol gives numbers
comparable with published ones.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from scipy.stats import rankdata
from torch import nn

from physgen.metrics.distances import MetricResult, _pair

__all__ = ["classifier_two_sample", "roc_auc"]


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC from the Mann–Whitney U statistic (ties get average ranks)."""
    labels = np.asarray(labels).astype(bool)
    ranks = rankdata(scores)
    n_pos, n_neg = labels.sum(), (~labels).sum()
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def classifier_two_sample(
    real: Any,
    generated: Any,
    hidden: tuple[int, ...] = (128, 128),
    epochs: int = 40,
    batch_size: int = 256,
    lr: float = 1e-3,
    patience: int = 5,
    seed: int = 0,
    n_bootstrap: int = 50,
    device: str = "cpu",
) -> dict[str, MetricResult]:
    """Train an MLP on 60 % / select the epoch on 20 % / score the last 20 % of balanced samples.

    Features are standardised with the training split's statistics. Returns
    ``{"auc": ..., "jsd": ...}``, errors from a bootstrap of the test split.
    """
    x, y = _pair(real, generated)
    rng = np.random.default_rng(seed)
    n = min(len(x), len(y))
    x, y = x[rng.permutation(len(x))[:n]], y[rng.permutation(len(y))[:n]]
    feats = np.concatenate([x, y]).astype(np.float32)
    labels = np.concatenate([np.ones(n), np.zeros(n)]).astype(np.float32)
    order = rng.permutation(2 * n)
    feats, labels = feats[order], labels[order]
    a, b = int(0.6 * 2 * n), int(0.8 * 2 * n)
    mean, std = feats[:a].mean(0), feats[:a].std(0) + 1e-8
    feats = (feats - mean) / std
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    width = feats.shape[1]
    for h in hidden:
        layers += [nn.Linear(width, h), nn.LeakyReLU(0.2)]
        width = h
    net = nn.Sequential(*layers, nn.Linear(width, 1)).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    loss_fn = nn.BCEWithLogitsLoss()
    t = {k: torch.as_tensor(v, device=device) for k, v in {"xtr": feats[:a], "ytr": labels[:a], "xva": feats[a:b], "yva": labels[a:b], "xte": feats[b:], "yte": labels[b:]}.items()}
    best, best_state, bad = float("inf"), None, 0
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        net.train()
        perm = torch.randperm(a, generator=gen)
        for s in range(0, a, batch_size):
            idx = perm[s : s + batch_size]
            opt.zero_grad()
            loss_fn(net(t["xtr"][idx])[:, 0], t["ytr"][idx]).backward()
            opt.step()
        net.eval()
        with torch.no_grad():
            val = float(loss_fn(net(t["xva"])[:, 0], t["yva"]))
        if val < best - 1e-6:
            best, best_state, bad = val, {k: v.clone() for k, v in net.state_dict().items()}, 0
        else:
            bad += 1
            if bad >= patience:
                break
    if best_state is not None:
        net.load_state_dict(best_state)
    with torch.no_grad():
        logits = net(t["xte"])[:, 0].cpu().numpy().astype(np.float64)
    yte = labels[b:].astype(np.float64)

    def scores(idx: np.ndarray) -> tuple[float, float]:
        lg, lb = logits[idx], yte[idx]
        bce = float(np.mean(np.logaddexp(0, lg) - lb * lg))
        return roc_auc(lb, lg), float(np.log(2) - bce)

    auc, jsd = scores(np.arange(len(yte)))
    boots = np.array([scores(rng.integers(0, len(yte), len(yte))) for _ in range(n_bootstrap)])
    return {
        "auc": MetricResult(auc, float(boots[:, 0].std(ddof=1)), {"n_test": len(yte)}),
        "jsd": MetricResult(jsd, float(boots[:, 1].std(ddof=1)), {"unit": "nats"}),
    }
