"""Two-sample distances: MMD² (blocked), KPD and FPD (Kansal et al. 2023), Wasserstein-1.

Every function takes arrays or tensors ``[N, D]`` (``[N]`` for 1-D ones) and
returns a :class:`MetricResult` (value and uncertainty).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from scipy.optimize import curve_fit
from scipy.stats import iqr, wasserstein_distance

from physgen.errors import InvalidDataError

__all__ = [
    "MetricResult",
    "mmd2",
    "median_bandwidth",
    "kpd",
    "fpd",
    "frechet_distance",
    "wasserstein1",
    "sliced_wasserstein",
]


@dataclass
class MetricResult:
    """A metric's value with its uncertainty (and optional details), JSON-serialisable via ``to_dict``."""

    value: float
    error: float = float("nan")
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"value": _num(self.value), "error": _num(self.error), **self.extra}

    def __float__(self) -> float:
        return float(self.value)


def _num(v: float) -> float | None:
    v = float(v)
    return None if math.isnan(v) else v


def as_2d(a: Any, name: str) -> np.ndarray:
    """A float64 ``[N, D]`` array (``[N]`` becomes ``[N, 1]``), checked finite and non-empty."""
    arr = a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)
    arr = arr.astype(np.float64, copy=False)
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2 or arr.shape[0] < 2:
        raise InvalidDataError(f"{name} must be [N ≥ 2, D]; got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise InvalidDataError(f"{name} holds NaN/inf values")
    return arr


def _pair(x: Any, y: Any) -> tuple[np.ndarray, np.ndarray]:
    x, y = as_2d(x, "x"), as_2d(y, "y")
    if x.shape[1] != y.shape[1]:
        raise InvalidDataError(f"x and y must have the same number of features; got {x.shape[1]} and {y.shape[1]}")
    return x, y


# -- MMD ----------------------------------------------------------------------------------


def median_bandwidth(x: Any, y: Any, max_points: int = 1000, seed: int = 0) -> float:
    """Gretton's median heuristic: the median pairwise distance of the pooled samples (≤ ``max_points`` each)."""
    x, y = _pair(x, y)
    rng = np.random.default_rng(seed)
    pool = np.concatenate([x[rng.permutation(len(x))[:max_points]], y[rng.permutation(len(y))[:max_points]]])
    sq = (pool * pool).sum(1)
    d2 = np.clip(sq[:, None] + sq[None, :] - 2 * pool @ pool.T, 0, None)  # no [P, P, D] temporary
    med = float(np.sqrt(np.median(d2[np.triu_indices(len(pool), k=1)])))
    return med if med > 0 else 1.0


def _kernel(a: torch.Tensor, b: torch.Tensor, kernel: str, sigmas: Sequence[float], degree: int, d: int) -> torch.Tensor:
    if kernel == "polynomial":
        return (a @ b.T / d + 1.0) ** degree
    d2 = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * a @ b.T
    d2 = d2.clamp_min(0)
    return sum(torch.exp(-d2 / (2 * s * s)) for s in sigmas)  # type: ignore[return-value]


def _block_sums(a: torch.Tensor, b: torch.Tensor, same: bool, block: int, **kw: Any) -> tuple[float, float]:
    """(sum of all k(a_i, b_j), sum of the diagonal when a is b), in float64, block by block."""
    total, diag = 0.0, 0.0
    for i in range(0, len(a), block):
        ai = a[i : i + block]
        for j in range(i if same else 0, len(b), block):
            k = _kernel(ai, b[j : j + block], **kw)
            s = float(k.sum(dtype=torch.float64))
            if same and j == i:
                diag += float(torch.diagonal(k).sum(dtype=torch.float64))
                total += s
            elif same:
                total += 2 * s  # the mirrored block below the diagonal
            else:
                total += s
    return total, diag


def mmd2(
    x: Any,
    y: Any,
    kernel: Literal["gaussian", "multiscale", "polynomial"] = "gaussian",
    bandwidth: float | Literal["median"] = "median",
    unbiased: bool = True,
    degree: int = 4,
    scales: Sequence[float] = (0.25, 0.5, 1.0, 2.0, 4.0),
    block_size: int = 4096,
    n_batches: int = 5,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float64,
    seed: int = 0,
) -> MetricResult:
    """Squared maximum mean discrepancy between samples ``x`` ``[m, D]`` and ``y`` ``[n, D]``.

    The kernel matrices are summed block by block (``block_size`` rows at a time),
    so 10⁵ × 10⁵ pairs never exist in memory at once; on CUDA pass ``device="cuda"``.

    Args:
        kernel: ``"gaussian"`` exp(−‖x−y‖²/2σ²); ``"multiscale"`` the sum of Gaussians with
            σ · ``scales``; ``"polynomial"`` (x·y/D + 1)^degree.
        bandwidth: σ, or ``"median"`` for the median heuristic.
        unbiased: the U-statistic (diagonal terms excluded) or the biased V-statistic.
        n_batches: the error is the spread of MMD² over this many disjoint sub-samples,
            divided by √n_batches (0: no error).

    Returns:
        MMD² with its uncertainty; ``extra["bandwidth"]`` holds σ where used.
    """
    xn, yn = _pair(x, y)
    m, n = len(xn), len(yn)
    if unbiased and (m < 2 or n < 2):
        raise InvalidDataError("the unbiased MMD² needs at least 2 samples on each side")
    sigma = median_bandwidth(xn, yn, seed=seed) if bandwidth == "median" else float(bandwidth)
    sigmas = [sigma * s for s in scales] if kernel == "multiscale" else [sigma]
    kw = {"kernel": kernel, "sigmas": sigmas, "degree": degree, "d": xn.shape[1]}
    xt = torch.as_tensor(xn, dtype=dtype, device=device)
    yt = torch.as_tensor(yn, dtype=dtype, device=device)

    def estimate(a: torch.Tensor, b: torch.Tensor) -> float:
        saa, daa = _block_sums(a, a, True, block_size, **kw)
        sbb, dbb = _block_sums(b, b, True, block_size, **kw)
        sab, _ = _block_sums(a, b, False, block_size, **kw)
        p, q = len(a), len(b)
        if unbiased:
            return (saa - daa) / (p * (p - 1)) + (sbb - dbb) / (q * (q - 1)) - 2 * sab / (p * q)
        return saa / p**2 + sbb / q**2 - 2 * sab / (p * q)

    value = estimate(xt, yt)
    error = float("nan")
    if n_batches > 1 and min(m, n) >= 4 * n_batches:
        gen = torch.Generator().manual_seed(seed)
        px, py = torch.randperm(m, generator=gen), torch.randperm(n, generator=gen)
        parts = [estimate(xt[px[i::n_batches]], yt[py[i::n_batches]]) for i in range(n_batches)]
        error = float(np.std(parts, ddof=1) / math.sqrt(n_batches))
    extra = {"bandwidth": sigma} if kernel != "polynomial" else {"degree": degree}
    return MetricResult(value, error, extra)


# -- KPD and FPD (jetnet's definitions) ---------------------------------------------------


def _normalise_by_real(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    maxes = np.max(np.abs(x), axis=0)
    maxes[maxes == 0] = 1.0
    return x / maxes, y / maxes


def kpd(
    real: Any, generated: Any, num_batches: int = 10, batch_size: int = 5000, normalise: bool = True, seed: int = 42
) -> MetricResult:
    """Kernel physics distance (Kansal et al. 2023, as in jetnet 0.2).

    The unbiased MMD² with the polynomial kernel (x·y/D + 1)⁴ on ``num_batches``
    batches of ``batch_size`` rows drawn with replacement (batch ``i`` seeded
    ``seed + 1000 i``), features divided by the real sample's max |x|.

    Returns:
        the median over batches, with half the 16–84 % inter-quantile range as error.
    """
    x, y = _pair(real, generated)
    if normalise:
        x, y = _normalise_by_real(x, y)
    d = x.shape[1]

    def kernel_sum(p: torch.Tensor, q: torch.Tensor, same: bool) -> float:
        # (p·q/d + 1)⁴ as two in-place squarings (a generic power is several times slower), float64
        k = torch.addmm(torch.ones(1, dtype=p.dtype), p, q.T, alpha=1.0 / d)
        k.square_().square_()
        total = float(k.sum())
        return total - float(torch.diagonal(k).sum()) if same else total

    vals = []
    for i in range(num_batches):
        rng = np.random.default_rng(seed + i * 1000)
        a = torch.from_numpy(x[rng.choice(len(x), size=batch_size)])
        b = torch.from_numpy(y[rng.choice(len(y), size=batch_size)])
        mm = len(a)
        vals.append(kernel_sum(a, a, True) / (mm * (mm - 1)) + kernel_sum(b, b, True) / (mm * (mm - 1)) - 2 * kernel_sum(a, b, False) / (mm * mm))
    return MetricResult(float(np.median(vals)), float(iqr(vals, rng=(16.275, 83.725)) / 2), {"batches": num_batches, "batch_size": batch_size})


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """‖μ₁ − μ₂‖² + Tr(Σ₁ + Σ₂ − 2 (Σ₁Σ₂)^½).

    Tr (Σ₁Σ₂)^½ is the sum of the square roots of the eigenvalues of the
    symmetric matrix Σ₁^½ Σ₂ Σ₁^½ (same spectrum as Σ₁Σ₂), which is exact,
    real by construction and faster than a general matrix square root.
    """
    mu1, mu2 = np.atleast_1d(mu1), np.atleast_1d(mu2)
    sigma1, sigma2 = np.atleast_2d(sigma1), np.atleast_2d(sigma2)
    w, v = np.linalg.eigh(sigma1)
    root1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    inner = np.linalg.eigvalsh(root1 @ sigma2 @ root1)
    tr_covmean = np.sqrt(np.clip(inner, 0, None)).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * tr_covmean)


def fpd(
    real: Any,
    generated: Any,
    min_samples: int = 20_000,
    max_samples: int = 50_000,
    num_batches: int = 20,
    num_points: int = 10,
    normalise: bool = True,
    seed: int = 42,
) -> MetricResult:
    """Fréchet physics distance (Kansal et al. 2023, as in jetnet 0.2).

    The Fréchet distance is measured at ``num_points`` batch sizes N evenly spaced
    in 1/N between ``min_samples`` and ``max_samples`` (``num_batches`` draws with
    replacement each), and a straight line in 1/N is fitted; its intercept is the
    value at infinite sample size, with the fit's uncertainty as error. Features
    are divided by the real sample's max |x|.
    """
    x, y = _pair(real, generated)
    if normalise:
        x, y = _normalise_by_real(x, y)
    if not 0 < min_samples < max_samples:
        raise InvalidDataError(f"need 0 < min_samples < max_samples; got {min_samples}, {max_samples}")
    batches = (1 / np.linspace(1.0 / min_samples, 1.0 / max_samples, num_points)).astype("int32")
    rng = np.random.default_rng(seed)
    vals = []
    for size in batches:
        points = []
        for _ in range(num_batches):
            a, b = x[rng.choice(len(x), size=size)], y[rng.choice(len(y), size=size)]
            points.append(frechet_distance(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False)))
        vals.append(np.mean(points))
    params, covs = curve_fit(lambda t, c0, c1: c0 + c1 * t, 1 / batches, vals, bounds=([0, 0], [np.inf, np.inf]))
    return MetricResult(float(params[0]), float(np.sqrt(np.diag(covs)[0])), {"batch_sizes": [int(b) for b in batches]})


# -- Wasserstein ----------------------------------------------------------------------------


def _w1_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """W1 between the empirical distributions of each row pair ``a[k]``, ``b[k]``: ∫₀¹ |F_a⁻¹(t) − F_b⁻¹(t)| dt.

    The quantile functions are steps at t = i/n and j/m; on the merged steps (exact, in integers
    over n·m) both are constant, so every row is one gather of the sorted rows.
    """
    n, m = a.shape[1], b.shape[1]
    steps = np.union1d(np.arange(n + 1) * m, np.arange(m + 1) * n)
    width = np.diff(steps) / (n * m)
    qa = np.sort(a, axis=1)[:, steps[:-1] // m]
    qb = np.sort(b, axis=1)[:, steps[:-1] // n]
    return (np.abs(qa - qb) * width).sum(1)


def wasserstein1(x: Any, y: Any, n_bootstrap: int = 20, seed: int = 0) -> MetricResult:
    """1-D Wasserstein-1 distance (``scipy.stats.wasserstein_distance``) with a bootstrap error."""
    a, b = as_2d(x, "x")[:, 0], as_2d(y, "y")[:, 0]
    value = float(wasserstein_distance(a, b))
    error = float("nan")
    if n_bootstrap > 1:
        rng = np.random.default_rng(seed)
        draws = [(rng.integers(0, len(a), len(a)), rng.integers(0, len(b), len(b))) for _ in range(n_bootstrap)]
        boots = _w1_rows(np.stack([a[i] for i, _ in draws]), np.stack([b[j] for _, j in draws]))
        error = float(np.std(boots, ddof=1))
    return MetricResult(value, error)


def sliced_wasserstein(x: Any, y: Any, n_projections: int = 128, seed: int = 0) -> MetricResult:
    """Mean 1-D Wasserstein-1 over random unit directions (fixed ``seed``); error: spread / √n."""
    a, b = _pair(x, y)
    rng = np.random.default_rng(seed)
    dirs = rng.normal(size=(a.shape[1], n_projections))
    dirs /= np.linalg.norm(dirs, axis=0, keepdims=True)
    pa, pb = a @ dirs, b @ dirs
    w = np.array([wasserstein_distance(pa[:, k], pb[:, k]) for k in range(n_projections)])
    return MetricResult(float(w.mean()), float(w.std(ddof=1) / math.sqrt(n_projections)), {"n_projections": n_projections})
