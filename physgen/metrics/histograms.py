"""Histogram comparisons: the CaloChallenge separation power and the two-sample chi² test."""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.stats import chi2 as chi2_dist

from physgen.errors import InvalidDataError
from physgen.metrics.distances import MetricResult, as_2d

__all__ = ["shared_bins", "separation_power", "chi2_two_sample"]


def shared_bins(a: Any, b: Any, bins: int = 50, quantile: float = 1e-3, log: bool = False) -> np.ndarray:
    """Common bin edges for two samples: ``bins`` equal-width bins over the pooled
    [quantile, 1 − quantile] range (log-spaced if ``log``); values outside go to the end bins.
    """
    pool = np.concatenate([as_2d(a, "a")[:, 0], as_2d(b, "b")[:, 0]])
    if log:
        pool = pool[pool > 0]
        if pool.size == 0:
            raise InvalidDataError("log binning needs positive values")
    lo, hi = np.quantile(pool, [quantile, 1 - quantile])
    if hi <= lo:
        lo, hi = float(pool.min()), float(pool.max())
    if hi <= lo:
        hi = lo + 1.0
    return np.geomspace(lo, hi, bins + 1) if log else np.linspace(lo, hi, bins + 1)


def _counts(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    return np.histogram(np.clip(values, edges[0], edges[-1]), bins=edges)[0].astype(np.float64)


def separation_power(a: Any, b: Any, bins: int | np.ndarray = 50, n_bootstrap: int = 20, seed: int = 0) -> MetricResult:
    """½ Σᵢ (h₁ᵢ − h₂ᵢ)² / (h₁ᵢ + h₂ᵢ) on unit-normalised histograms, as the CaloChallenge evaluator.

    0 for identical histograms, 1 for disjoint ones. The error is the bootstrap spread.
    """
    x, y = as_2d(a, "a")[:, 0], as_2d(b, "b")[:, 0]
    edges = shared_bins(x, y, bins) if np.isscalar(bins) else np.asarray(bins, dtype=np.float64)

    n_bins = len(edges) - 1
    # bin of every value once (np.histogram's bins: [e_i, e_i+1), the last one closed; outside: the end bins)
    bx, by = (np.clip(np.searchsorted(edges, np.clip(u, edges[0], edges[-1]), side="right") - 1, 0, n_bins - 1) for u in (x, y))

    def sp(cx: np.ndarray, cy: np.ndarray) -> np.ndarray:
        """Separation power of count rows ``[B, bins]``."""
        h1, h2 = cx / cx.sum(1, keepdims=True), cy / cy.sum(1, keepdims=True)
        s = h1 + h2
        terms = np.divide((h1 - h2) ** 2, s, out=np.zeros_like(s), where=s > 0)
        return 0.5 * terms.sum(1)

    def counts(idx: np.ndarray) -> np.ndarray:
        rows = idx.shape[0]
        return np.bincount((idx + n_bins * np.arange(rows)[:, None]).ravel(), minlength=rows * n_bins).reshape(rows, n_bins).astype(np.float64)

    value = float(sp(counts(bx[None]), counts(by[None]))[0])
    error = float("nan")
    if n_bootstrap > 1:
        rng = np.random.default_rng(seed)
        draws = [(rng.integers(0, len(x), len(x)), rng.integers(0, len(y), len(y))) for _ in range(n_bootstrap)]
        boots = sp(counts(np.stack([bx[i] for i, _ in draws])), counts(np.stack([by[j] for _, j in draws])))
        error = float(np.std(boots, ddof=1))
    return MetricResult(value, error, {"bins": len(edges) - 1})


def chi2_two_sample(a: Any, b: Any, bins: int | np.ndarray = 50) -> MetricResult:
    """Chi² test that two unweighted histograms come from one distribution (ROOT's Chi2Test "UU").

    With totals N₁, N₂ and counts n₁ᵢ, n₂ᵢ:
    χ² = Σᵢ (N₂ n₁ᵢ − N₁ n₂ᵢ)² / (N₁ N₂ (n₁ᵢ + n₂ᵢ)) over bins with entries,
    ndf = (bins with entries) − 1 (Gagunashvili 2006). ``value`` is χ²/ndf; the
    p-value and χ², ndf are in ``extra``; no error (it is a test statistic).
    """
    x, y = as_2d(a, "a")[:, 0], as_2d(b, "b")[:, 0]
    edges = shared_bins(x, y, bins) if np.isscalar(bins) else np.asarray(bins, dtype=np.float64)
    n1, n2 = _counts(x, edges), _counts(y, edges)
    t1, t2 = n1.sum(), n2.sum()
    used = (n1 + n2) > 0
    ndf = int(used.sum()) - 1
    if ndf < 1:
        return MetricResult(0.0, float("nan"), {"chi2": 0.0, "ndf": 0, "p_value": 1.0})
    chi2 = float(((t2 * n1[used] - t1 * n2[used]) ** 2 / (n1[used] + n2[used])).sum() / (t1 * t2))
    return MetricResult(chi2 / ndf, float("nan"), {"chi2": chi2, "ndf": ndf, "p_value": float(chi2_dist.sf(chi2, ndf))})
