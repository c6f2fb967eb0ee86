"""The honest floor: a conditional multivariate Gaussian in the preprocessed space.

    y | c  ~  N( Bᵀ φ(c),  L Lᵀ ),   φ(c) = (1, c, c², …, c^degree)

with ``c`` the standardised log incident energy (for calorimeters) and ``L``
lower-triangular. With ``solver="closed_form"`` (the default) it is the
maximum-likelihood fit: least squares for ``B`` and the residual covariance
``S`` for ``L Lᵀ``, shrunk towards its diagonal, ``(1 − λ) S + λ diag(S)``,
with λ chosen by the likelihood of the validation split (a full covariance of
hundreds of voxels from a few thousand showers overfits otherwise). With ``solver="gradient"`` the same
likelihood is minimised by the shared training loop (the loop's test subject).
Every learned surrogate must beat this on every high-level feature.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from physgen.data import Data, Pipeline
from physgen.data.augment import azimuthal_copies
from physgen.errors import InvalidDataError
from physgen.surrogates.base import Capabilities, Surrogate

__all__ = ["GaussianSurrogate"]


class GaussianSurrogate(Surrogate):
    """Multivariate Gaussian, mean polynomial in the conditions, one full covariance.

    Args:
        degree: polynomial degree of the mean in each condition (0: unconditional mean).
        solver: ``"closed_form"`` (exact MLE) or ``"gradient"`` (the shared training loop).
        shrinkage: λ above; ``None`` picks it on the validation split from a grid.
        ridge: added to the covariance diagonal (the features are standardised, so ~1 is the scale).
    """

    family = "gaussian"
    capabilities = Capabilities(exact_density=True, conditional=True, gradient_trained=True)
    supports_two_stage = False

    SHRINKAGE_GRID = (0.0, 0.01, 0.03, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0)

    def __init__(
        self, degree: int = 2, solver: str = "closed_form", shrinkage: float | None = None, ridge: float = 1e-4, **config: Any
    ):
        if solver not in ("closed_form", "gradient"):
            raise InvalidDataError(f"solver must be 'closed_form' or 'gradient'; got {solver!r}")
        if degree < 0:
            raise InvalidDataError(f"degree must be ≥ 0; got {degree}")
        if shrinkage is not None and not 0 <= shrinkage <= 1:
            raise InvalidDataError(f"shrinkage must be in [0, 1]; got {shrinkage}")
        if config.get("two_stage"):
            raise InvalidDataError("the gaussian baseline is one joint Gaussian; two_stage is for the learned families")
        super().__init__(degree=int(degree), solver=solver, shrinkage=shrinkage, ridge=float(ridge), **config)

    def _features(self, cond: torch.Tensor | None, n: int) -> torch.Tensor:
        ones = torch.ones(n, 1, dtype=self.coef.dtype, device=self.coef.device)
        if cond is None or self.dims["cond_dim"] == 0:
            return ones
        c = cond.to(self.coef.dtype)
        return torch.cat([ones] + [c**k for k in range(1, self.config["degree"] + 1)], dim=1)

    def build(self, dim: int, cond_dim: int) -> None:
        n_feat = 1 + (cond_dim * self.config["degree"] if cond_dim else 0)
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
        cov = cov + self.config["ridge"] * torch.eye(len(cov), dtype=cov.dtype)
        L = torch.linalg.cholesky(cov)
        with torch.no_grad():
            self.coef.copy_(coef.float())
            self.scale_tril_raw.copy_((torch.tril(L, -1) + torch.diag_embed(torch.log(torch.diagonal(L)))).float())

    def fit(self, data: Data, preprocessing: Pipeline | None = None, **train_config: Any) -> list[dict[str, Any]]:
        """Exact MLE (``closed_form``) or the shared loop (``gradient``).

        Takes the same training options as every family; the closed form uses
        ``val_fraction``, ``augment``, ``seed`` and ``device`` (it solves on the CPU in
        float64, then moves there, so it samples where the other families do) and has no
        epochs or checkpoints to honour.

        The closed form records the per-dimension negative log-likelihood on a
        validation split before (identity Gaussian) and after the fit.
        """
        if self.config["solver"] == "gradient":
            return super().fit(data, preprocessing, **train_config)
        from physgen.surrogates.training import TrainConfig, resolve_device

        # the same options as every family (so typos fail); the closed form uses the split and seed
        cfg = TrainConfig(**{**self.train_defaults, **train_config})
        val_fraction, seed = cfg.val_fraction, cfg.seed
        device = resolve_device(cfg.device)  # before the work: a missing GPU fails at once
        train_data, val_data = data.split((1 - val_fraction, val_fraction), seed=seed) if val_fraction > 0 else (data, data)
        train_data = azimuthal_copies(train_data, cfg.augment, seed=seed)
        y, c = self.prepare(train_data, preprocessing)
        assert self.preprocessing is not None
        yv, cv = (t.float() if t is not None else None for t in self.preprocessing.forward(val_data.x, val_data.cond))
        before = self.validation_loss(yv, cv)
        y64 = y.double()
        phi = self._features(c, len(y)).double()
        coef = torch.linalg.lstsq(phi, y64).solution
        resid = y64 - phi @ coef
        sample_cov = resid.T @ resid / len(y64)
        grid = self.SHRINKAGE_GRID if self.config["shrinkage"] is None else (self.config["shrinkage"],)
        best: tuple[float, float] | None = None
        for lam in grid:
            self._set(coef, sample_cov, lam)
            score = self.validation_loss(yv, cv)
            if best is None or score < best[0]:
                best = (score, lam)
        assert best is not None
        self._set(coef, sample_cov, best[1])
        self.fitted_shrinkage = best[1]
        after = self.validation_loss(yv, cv)
        self.history = [
            {"epoch": 0, "val_loss": before},
            {"epoch": 1, "loss": self.validation_loss(y, c), "val_loss": after, "shrinkage": best[1]},
        ]
        self.eval()
        self.to(device)
        self.calibrate_readout(data, seed=seed)
        return self.history
