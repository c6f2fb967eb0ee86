"""The standard error of the mean of a correlated series, by automated blocking.

Successive Monte Carlo samples are correlated, so σ/√N underestimates the error
of their mean. Blocking (Flyvbjerg & Petersen, J. Chem. Phys. 91, 461 (1989))
averages neighbouring pairs repeatedly; once the blocks are longer than the
correlation time, the naive variance of the blocked series is the right one.
The level is chosen automatically by Jonsson's test (Phys. Rev. E 98, 043304
(2018)): the first level from which the remaining lag-1 autocorrelations are
consistent with zero at 99 % (a χ² test), the method of the computational
physics course's VMC codes.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import chi2

from physgen.errors import InvalidDataError
from physgen.metrics.distances import MetricResult

__all__ = ["blocking"]


def blocking(series: np.ndarray) -> MetricResult:
    """Mean of ``series`` with its standard error from automated blocking.

    The series is cut to its first 2ᵈ values (d = ⌊log₂ N⌋, at least 16 values).

    >>> import numpy as np
    >>> r = blocking(np.random.default_rng(0).normal(size=2**14))
    >>> round(r.error * 2**7, 1)    # uncorrelated: σ/√N = 1/128
    1.0
    """
    x = np.asarray(series, dtype=np.float64).ravel()
    if len(x) < 16:
        raise InvalidDataError(f"blocking needs at least 16 values; got {len(x)}")
    if not np.isfinite(x).all():
        raise InvalidDataError(f"blocking: {int((~np.isfinite(x)).sum())} of {len(x)} values are not finite")
    d = int(np.log2(len(x)))
    x = x[: 2**d]
    mu = x.mean()
    s, gamma = np.zeros(d), np.zeros(d)
    for i in range(d):
        n = len(x)
        gamma[i] = np.sum((x[:-1] - mu) * (x[1:] - mu)) / n
        s[i] = x.var()
        x = 0.5 * (x[0::2] + x[1::2])
    if not (s > 0).all():  # a constant series (an exact eigenstate): no error
        return MetricResult(float(mu), 0.0, {"level": 0, "n": 2**d})
    # M_k = Σ_{j ≥ k} n_j (γ_j / s_j)², n_j = 2^{d−j}: χ² with d − k degrees of freedom if no correlation is left
    m = np.cumsum(((gamma / s) ** 2 * 2.0 ** np.arange(d, 0, -1))[::-1])[::-1]
    k = next((k for k in range(d) if m[k] < chi2.ppf(0.99, d - k)), d - 1)
    return MetricResult(float(mu), float(np.sqrt(s[k] / 2 ** (d - k))), {"level": k, "n": 2**d})
