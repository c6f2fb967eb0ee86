"""The honest floor: a conditional multivariate Gaussian in the preprocessed space.

    y | c  ~  N( Bᵀ φ(c),  L Lᵀ ),   φ(c) = (1, c, c², …, c^degree)

with ``c`` the standardised conditions (for showers, the log of their energy) and ``L``
lower-triangular. With ``solver="closed_form"`` (the default) it is the
maximum-likelihood fit: least squares for ``B`` and the residual covariance
``S`` for ``L Lᵀ``, shrunk towards its diagonal, ``(1 − λ) S + λ diag(S)``,
with λ chosen by the likelihood of the validation split (a full covariance of
hundreds of voxels from a few thousand showers overfits otherwise). With ``solver="gradient"`` the same
likelihood is minimised by the shared training loop (the loop's test subject).
Every learned surrogate must beat this on every high-level feature.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Literal

import torch
from torch import nn

from physgen.options import option
from physgen.surrogates.base import Capabilities, Surrogate, SurrogateOptions
from physgen.surrogates.structure import FeatureStructure

__all__ = ["GaussianOptions", "GaussianSurrogate"]


@dataclasses.dataclass(frozen=True)
class GaussianOptions(SurrogateOptions):
    """Options of the Gaussian baseline (``create("gaussian", ...)``)."""

    degree: int = option(2, "polynomial degree of the mean in each condition (0: an unconditional mean)", ge=0)
    solver: Literal["closed_form", "gradient"] = option("closed_form", "exact maximum likelihood, or the shared training loop")
    shrinkage: float | None = option(None, "λ of the covariance's shrinkage towards its diagonal (None: chosen on the validation split)", ge=0, le=1)
    ridge: float = option(1e-4, "added to the covariance diagonal (the features are standardised, so ~1 is the scale)", ge=0)


class GaussianSurrogate(Surrogate):
    """Multivariate Gaussian, mean polynomial in the conditions, one full covariance (options: :class:`GaussianOptions`)."""

    family = "gaussian"
    Options = GaussianOptions
    options: GaussianOptions
    capabilities = Capabilities(exact_density=True, conditional=True, gradient_trained=True)

    SHRINKAGE_GRID = (0.0, 0.01, 0.03, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0)

    def __init__(self, **options: Any):
        super().__init__(**options)
        closed = self.options.solver == "closed_form"
        self.capabilities = Capabilities(exact_density=True, conditional=True, gradient_trained=not closed, closed_form=closed)

    def _features(self, cond: torch.Tensor | None, n: int) -> torch.Tensor:
        ones = torch.ones(n, 1, dtype=self.coef.dtype, device=self.coef.device)
        if cond is None or self.dims["cond_dim"] == 0:
            return ones
        c = cond.to(self.coef.dtype)
        return torch.cat([ones] + [c**k for k in range(1, self.options.degree + 1)], dim=1)

    def build(self, dim: int, cond_dim: int, structure: FeatureStructure | None = None) -> None:
        n_feat = 1 + (cond_dim * self.options.degree if cond_dim else 0)
        self.coef = nn.Parameter(torch.zeros(n_feat, dim))
        # L = tril(raw, -1) + diag(exp(raw_diag)); starts at the identity
        self.scale_tril_raw = nn.Parameter(torch.zeros(dim, dim))
    def scale_tril(self) -> torch.Tensor:
        """``L = tril(raw, −1) + diag(exp(diag raw))``, built in one pass over the matrix.

        Outside autograd (sampling, evaluation) it is kept until the parameter changes:
        for W/Si's 6,480 dimensions rebuilding it cost more than a whole batch-1 sample.
        """
        raw = self.scale_tril_raw
        key = (raw._version, raw.data_ptr(), raw.device, raw.dtype)
        cached = getattr(self, "_tril_cache", None)
        if cached is not None and cached[0] == key and not torch.is_grad_enabled():
            return cached[1]
        L = raw.tril(-1)
        L.diagonal().copy_(raw.diagonal().exp())
        if not torch.is_grad_enabled():
            self._tril_cache = (key, L)
        return L

    def log_prob_model(self, x: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        L = self.scale_tril()
        resid = x - self._features(cond, len(x)) @ self.coef
        z = torch.linalg.solve_triangular(L, resid.T, upper=False).T
        log_det = torch.diagonal(self.scale_tril_raw).sum()
        return -0.5 * (z**2).sum(1) - log_det - 0.5 * x.shape[1] * math.log(2 * math.pi)

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None) -> tuple[torch.Tensor, dict[str, float]]:
        nll = -self.log_prob_model(x, cond).mean() / x.shape[1]
        return nll, {}

    def sample_model(self, n: int, cond: torch.Tensor | None, generator: torch.Generator) -> torch.Tensor:
        z = torch.randn(n, self.dims["dim"], generator=generator, device=self.coef.device, dtype=self.coef.dtype)
        return self._features(cond, n) @ self.coef + z @ self.scale_tril().T

    def _set(self, coef: torch.Tensor, sample_cov: torch.Tensor, lam: float) -> None:
        cov = (1 - lam) * sample_cov + lam * torch.diag_embed(torch.diagonal(sample_cov))
        cov = cov + self.options.ridge * torch.eye(len(cov), dtype=cov.dtype)
        L = torch.linalg.cholesky(cov)
        with torch.no_grad():
            self.coef.copy_(coef.float())
            self.scale_tril_raw.copy_((torch.tril(L, -1) + torch.diag_embed(torch.log(torch.diagonal(L)))).float())

    def solve(
        self, y: torch.Tensor, c: torch.Tensor | None, y_val: torch.Tensor | None, c_val: torch.Tensor | None,
    ) -> list[dict[str, Any]] | None:
        """Exact MLE (``solver="closed_form"``), in float64 on the CPU; None with ``solver="gradient"`` (the loop trains it).

        The shrinkage is chosen by the likelihood of the validation split (the training data
        without one). The history records the per-dimension negative log-likelihood on it
        before (identity Gaussian) and after the fit.
        """
        if self.options.solver == "gradient":
            return None
        yv, cv = (y, c) if y_val is None else (y_val, c_val)
        before = self.validation_loss(yv, cv)
        y64 = y.double()
        phi = self._features(c, len(y)).double()
        coef = torch.linalg.lstsq(phi, y64).solution
        resid = y64 - phi @ coef
        sample_cov = resid.T @ resid / len(y64)
        grid = self.SHRINKAGE_GRID if self.options.shrinkage is None else (self.options.shrinkage,)
        best: tuple[float, float] | None = None
        for lam in grid:
            self._set(coef, sample_cov, lam)
            score = self.validation_loss(yv, cv)
            if best is None or score < best[0]:
                best = (score, lam)
        assert best is not None
        self._set(coef, sample_cov, best[1])
        self.resolved["shrinkage"] = best[1]
        after = self.validation_loss(yv, cv)
        return [
            {"epoch": 0, "val_loss": before},
            {"epoch": 1, "loss": self.validation_loss(y, c), "val_loss": after, "shrinkage": best[1]},
        ]
