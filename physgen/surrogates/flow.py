"""Conditional normalising flows on nflows: RealNVP, spline couplings and masked autoregressive splines.

    z = f(y; c),  log p(y | c) = log N(z; 0, I) + log |det ∂f/∂y|

``f`` alternates affine coupling layers (a residual network of the untouched half
and the condition gives scale and shift of the other half) with invertible
linear maps (an LU-parametrised matrix, or a fixed random permutation).

Two traps of nflows 0.14 (its last release) are avoided here:

* its ``AffineCouplingTransform`` uses ``scale = sigmoid(u + 2) + 1e-3``, which can
  never exceed ≈1.001, so a RealNVP built from it can only contract and cannot
  fit a distribution wider than its base; :class:`ExpAffineCoupling` uses
  ``scale = exp(s)`` with a soft-clamped ``s = clamp · tanh(u / clamp)``;
* its ``LULinear`` inverts with ``torch.triangular_solve`` (deprecated, slated for
  removal) and ``NaiveLinear`` with ``torch.solve`` (gone); :class:`LULinearSolve`
  uses ``torch.linalg.solve_triangular``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Literal

import numpy as np
import torch
from nflows.nn.nets import ResidualNet
from nflows.transforms import (
    AffineCouplingTransform,
    CompositeTransform,
    LULinear,
    MaskedPiecewiseRationalQuadraticAutoregressiveTransform,
    Permutation,
    PiecewiseRationalQuadraticCouplingTransform,
    RandomPermutation,
    Transform,
)
from nflows.utils import torchutils
from torch.nn import functional as F

from physgen.errors import ConfigError
from physgen.options import option
from physgen.surrogates._common import cached_until_changed
from physgen.surrogates.base import Capabilities, Surrogate, SurrogateOptions
from physgen.surrogates.structure import FeatureStructure

__all__ = [
    "AutoregressiveSpline", "FlowOptions", "FlowSurrogate", "ExpAffineCoupling", "LULinearSolve", "SplineCoupling", "point_mass_bounds",
    "point_mass_floor", "cached_sampling_plan", "realnvp", "rq_spline_forward", "rq_spline_inverse", "sample_inverse", "sampling_plan",
    "sample_feature_major", "spread_point_masses", "standard_normal_log_prob",
]

#: rows per pass of :func:`sample_feature_major` on a CPU: a block's state (6,480 features × 512 rows)
#: stays near the cache; 512 beat 256, 1,024 and 2,000 on both calorimeter data sets
FLOW_CPU_SAMPLE_BLOCK = 512

COUPLINGS = ("affine", "spline", "autoregressive")


@dataclasses.dataclass(frozen=True)
class FlowOptions(SurrogateOptions):
    """Options of the conditional normalising flow (``create("flow", ...)``)."""

    n_layers: int = option(8, "coupling layers (each followed by a mixing map)", ge=1)
    hidden: int = option(256, "width of each coupling's network (nflows ResidualNet)", ge=1)
    n_blocks: int = option(2, "residual blocks per coupling network", ge=1)
    mixing: Literal["permutation", "lu"] = option("permutation", "between couplings: a fixed random permutation (fast, cannot amplify) or a learned LU-parametrised linear map")
    clamp: float = option(2.0, "soft bound on |log scale| per affine coupling (2: up to e² stretch per layer)", gt=0)
    dropout: float = option(0.0, "dropout in the coupling networks", ge=0, lt=1)
    coupling: Literal["affine", "spline", "autoregressive"] = option(
        "affine", "RealNVP affine couplings, rational-quadratic spline couplings, or masked autoregressive splines (CaloFlow's; slow to sample in high dimension)",
    )
    bins: int = option(8, "knots of the spline couplings", ge=1)
    tail_bound: float = option(6.0, "the splines cover [−tail_bound, tail_bound]; identity outside", gt=0)
    floor_noise: float = option(0.0, "width (standardised units) over which training spreads each column's point mass at its minimum (empty voxels); 0: off", ge=0)
    temperature: float = option(1.0, "scale of the base noise when sampling (below 1: fewer outliers, less diversity)", gt=0, le=10)


class ExpAffineCoupling(AffineCouplingTransform):
    """Affine coupling with ``scale = exp(clamp · tanh(u / clamp))``: can stretch and contract."""

    def __init__(self, mask: torch.Tensor, transform_net_create_fn: Any, clamp: float = 3.0):
        super().__init__(mask, transform_net_create_fn)
        self.clamp = float(clamp)

    def _log_scale_and_shift(self, params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raw = params[:, self.num_transform_features :, ...]
        shift = params[:, : self.num_transform_features, ...]
        return self.clamp * torch.tanh(raw / self.clamp), shift

    def _scale_and_shift(self, transform_params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        log_scale, shift = self._log_scale_and_shift(transform_params)
        return torch.exp(log_scale), shift

    def _coupling_transform_forward(self, inputs: torch.Tensor, transform_params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        log_scale, shift = self._log_scale_and_shift(transform_params)
        return inputs * torch.exp(log_scale) + shift, torchutils.sum_except_batch(log_scale, num_batch_dims=1)

    def _coupling_transform_inverse(self, inputs: torch.Tensor, transform_params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        log_scale, shift = self._log_scale_and_shift(transform_params)
        return (inputs - shift) * torch.exp(-log_scale), -torchutils.sum_except_batch(log_scale, num_batch_dims=1)


class AutoregressiveSpline(MaskedPiecewiseRationalQuadraticAutoregressiveTransform):
    """nflows' masked autoregressive rational-quadratic spline (CaloFlow's flow I), inverted without the D-fold work.

    nflows inverts an autoregressive transform by running the whole network and
    the splines of all D features D times. Here step ``i`` computes only what
    becomes computable at it: a MADE hidden unit of degree ``d`` depends on the
    first ``d`` features alone, so its value is final from step ``d`` on. With
    the hidden units sorted by degree, step ``i`` runs the trunk for the units of
    degree ``i`` (about H / (D − 1) of them), the output rows of feature ``i``
    from the units of degree ≤ ``i``, and feature ``i``'s spline: the same map (a
    test checks it against nflows' own inverse) for about 1/D of the network's work.
    The state is kept feature-major (``[units, batch]``), so every slice is a run of rows.
    """

    def _elementwise_forward(self, inputs: torch.Tensor, autoregressive_params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """nflows' forward splines (the training direction) by :func:`rq_spline_forward`, bins first."""
        if self.tails != "linear":
            return super()._elementwise_forward(inputs, autoregressive_params)
        n, d = inputs.shape
        m = self._output_dim_multiplier()
        # [3K − 1, B, D]; nflows' MADE has no hidden_features, so nflows does not rescale the widths and heights
        params = autoregressive_params.view(n, d, m).permute(2, 0, 1)
        outputs, lad = rq_spline_forward(inputs, params.contiguous(), self.tail_bound, self.min_bin_width, self.min_bin_height, self.min_derivative)
        return outputs, lad.sum(1)

    def inverse(
        self, inputs: torch.Tensor, context: torch.Tensor | None = None, logdet: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(outputs, log|det|)``; with ``logdet=False`` (sampling) the second is ``None`` and not computed."""
        made = self.autoregressive_net
        blocks = list(made.blocks)
        degrees = made.initial_layer.degrees
        if (self.training or not made.use_residual_blocks or any(b.use_batch_norm for b in blocks)
                or any(not torch.equal(lin.degrees, degrees) for b in blocks for lin in b.linear_layers)):
            return super().inverse(inputs, context)  # nflows' generic path (dropout, batch norm, other masks)
        n, d = inputs.shape
        if n == 1 and not logdet and made.activation is F.silu:  # sampling one shower (realnvp's MADEs use SiLU)
            return self._inverse_one(inputs, context), None
        m, act = self._output_dim_multiplier(), made.activation
        p = self._sorted_made()
        ends, order = p["ends"], p["order"]
        pre = p["b0"][:, None]
        if context is not None:
            pre = pre + act(made.context_layer(context)).t()[order]
        trunk = []
        for b, (w1, b1, _, _, w2, b2) in zip(blocks, p["blocks"], strict=True):
            b1 = b1[:, None] if context is None else b1[:, None] + b.context_layer(context).t()[order]
            trunk.append((w1, b1, w2, b2[:, None]))
        w0, wf, bf = p["w0"], p["wf"], p["bf"][:, None]
        hidden = len(pre)
        h = [inputs.new_zeros(hidden, n) for _ in range(len(trunk) + 1)]  # the trunk's layers, feature-major
        acts = [(inputs.new_zeros(hidden, n), inputs.new_zeros(hidden, n)) for _ in trunk]
        y, out = inputs.t(), inputs.new_zeros(d, n)
        logabsdet = inputs.new_zeros(n) if logdet else None
        for i in range(d):
            lo, hi = ends[i - 1] if i else 0, ends[i]
            if hi > lo:  # the units of degree i: inputs 0 .. i − 1 are known now
                r = slice(lo, hi)
                h[0][r] = torch.addmm(pre[r], w0[r, :i], out[:i])
                for k, (w1, b1, w2, b2) in enumerate(trunk):
                    a, t = acts[k]
                    a[r] = act(h[k][r])
                    t[r] = act(torch.addmm(b1[r], w1[r, :hi], a[:hi]))
                    h[k + 1][r] = h[k][r] + torch.addmm(b2[r], w2[r, :hi], t[:hi])
            params = torch.addmm(bf[i * m : (i + 1) * m], wf[i * m : (i + 1) * m, :hi], h[-1][:hi])  # [m, B]
            out[i], lad = rq_spline_inverse(
                y[i], params, self.tail_bound, self.min_bin_width, self.min_bin_height, self.min_derivative, logdet,
            )
            if logabsdet is not None:
                logabsdet = logabsdet + lad
        return out.t(), logabsdet

    def _sorted_made(self) -> dict[str, Any]:
        """The MADE's masked weights with its hidden units sorted by degree, so that each degree is a run of rows.

        ``order``: the units' permutation; ``ends[i]``: the number of units of degree ≤ ``i``;
        ``wc``/``bc`` and each block's: its context layer, sorted (None without one). Computed
        from the parameters (gradients flow).
        """
        made = self.autoregressive_net
        degrees = made.initial_layer.degrees
        order = torch.argsort(degrees, stable=True)
        d = int(made.final_layer.mask.shape[0] // self._output_dim_multiplier())

        def masked(layer: Any, cols: bool = True) -> torch.Tensor:
            w = (layer.weight * layer.mask)[order]
            return w[:, order] if cols else w

        def context(layer: Any) -> tuple[torch.Tensor | None, torch.Tensor | None]:
            return (None, None) if layer is None else (layer.weight[order], layer.bias[order])

        wc, bc = context(getattr(made, "context_layer", None))
        return {
            "order": order, "ends": torch.cumsum(torch.bincount(degrees, minlength=d), 0).tolist(),
            "w0": masked(made.initial_layer, cols=False), "b0": made.initial_layer.bias[order], "wc": wc, "bc": bc,
            "blocks": [
                (masked(l0), l0.bias[order], *context(getattr(b, "context_layer", None)), masked(l1), l1.bias[order])
                for b in made.blocks for l0, l1 in [b.linear_layers]
            ],
            "wf": (made.final_layer.weight * made.final_layer.mask)[:, order], "bf": made.final_layer.bias,
        }

    def _numpy_plan(self) -> dict[str, Any]:
        """:meth:`_sorted_made` as float64 numpy arrays for :meth:`_inverse_one`, kept until a parameter changes (storage or version)."""
        def np64(t: Any) -> Any:
            return t.detach().double().cpu().numpy() if isinstance(t, torch.Tensor) else t

        def build() -> dict[str, Any]:
            with torch.no_grad():
                return {k: [tuple(np64(t) for t in blk) for blk in v] if k == "blocks" else np64(v) for k, v in self._sorted_made().items()}

        return cached_until_changed(self, "_one_plan", self.autoregressive_net.parameters(), build)

    def _inverse_one(self, inputs: torch.Tensor, context: torch.Tensor | None) -> torch.Tensor:
        """:meth:`inverse` of one row without log|det|, on float64 numpy vectors.

        The same steps as the batched path, each spline on Python floats
        (:func:`rq_spline_inverse_scalar`). A step's torch calls on ``[k, 1]`` tensors cost
        about 90 µs of per-call overhead, numpy's on small vectors a few µs: the first stage's
        48 (PbWO4) or 90 (W/Si) steps were most of the time to sample one shower.
        """
        p = self._numpy_plan()
        m = self._output_dim_multiplier()
        y = inputs.detach().double().cpu().numpy()[0]
        d = len(y)

        def silu(v: np.ndarray) -> np.ndarray:
            return v / (1.0 + np.exp(-v))

        c = None if context is None else context.detach().double().cpu().numpy()[0]
        pre = p["b0"] if c is None or p["wc"] is None else p["b0"] + silu(p["wc"] @ c + p["bc"])
        blocks = [(w1, b1 if c is None or wc is None else b1 + wc @ c + bc, w2, b2) for w1, b1, wc, bc, w2, b2 in p["blocks"]]
        hidden = len(pre)
        h = [np.zeros(hidden) for _ in range(len(blocks) + 1)]
        acts = [(np.zeros(hidden), np.zeros(hidden)) for _ in blocks]
        out = np.zeros(d)
        wf, bf, ends = p["wf"], p["bf"], p["ends"]
        for i in range(d):
            lo, hi = ends[i - 1] if i else 0, ends[i]
            if hi > lo:
                h[0][lo:hi] = pre[lo:hi] + p["w0"][lo:hi, :i] @ out[:i]
                for k, (w1, b1, w2, b2) in enumerate(blocks):
                    a, t = acts[k]
                    a[lo:hi] = silu(h[k][lo:hi])
                    t[lo:hi] = silu(b1[lo:hi] + w1[lo:hi, :hi] @ a[:hi])
                    h[k + 1][lo:hi] = h[k][lo:hi] + b2[lo:hi] + w2[lo:hi, :hi] @ t[:hi]
            params = bf[i * m : (i + 1) * m] + wf[i * m : (i + 1) * m, :hi] @ h[-1][:hi]
            out[i] = rq_spline_inverse_scalar(
                float(y[i]), params.tolist(), self.tail_bound, self.min_bin_width, self.min_bin_height, self.min_derivative,
            )
        return torch.from_numpy(out)[None].to(device=inputs.device, dtype=inputs.dtype)


def rq_spline_inverse_scalar(y: float, params: list[float], bound: float, min_width: float, min_height: float, min_derivative: float) -> float:
    """:func:`rq_spline_inverse` of one value on Python floats (float64): the inverse of a single shower's spline.

    ``params``: K unnormalised widths, K heights and K − 1 inner derivatives. The same
    steps as nflows' ``unconstrained_rational_quadratic_spline(inverse=True)`` with linear
    tails; tests check it against the tensor version and against nflows.
    """
    if not -bound <= y <= bound:
        return y  # identity tails (a NaN too, as the tensor version's where)
    k = (len(params) + 1) // 3

    def knots(raw: list[float], minimum: float) -> list[float]:
        top = max(raw)
        e = [math.exp(v - top) for v in raw]
        total = sum(e)
        out, acc = [-bound], 0.0
        for v in e[:-1]:
            acc += minimum + (1 - minimum * k) * v / total
            out.append(2 * bound * acc - bound)
        out.append(bound)
        return out

    xs, ys = knots(params[:k], min_width), knots(params[k : 2 * k], min_height)
    b = max(0, min(k - 1, sum(1 for v in ys[:k] if y >= v) - 1))  # the bin: knots 0..K-1 at or below y
    inner = params[2 * k + b - 1] if b > 0 else None
    after = params[2 * k + b] if b < k - 1 else None
    d0 = 1.0 if inner is None else min_derivative + (inner if inner > 20 else math.log1p(math.exp(inner)))
    d1 = 1.0 if after is None else min_derivative + (after if after > 20 else math.log1p(math.exp(after)))
    x0, w, y0, hgt = xs[b], xs[b + 1] - xs[b], ys[b], ys[b + 1] - ys[b]
    delta = hgt / w
    dy, s = y - y0, d0 + d1 - 2 * delta
    a, bq, c = dy * s + hgt * (delta - d0), hgt * d0 - dy * s, -delta * dy
    root = (2 * c) / (-bq - math.sqrt(max(bq * bq - 4 * a * c, 0.0)))
    return root * w + x0


def _rq_bin(
    v: torch.Tensor, axis: int, params: torch.Tensor, bound: float, min_width: float, min_height: float, min_derivative: float,
) -> tuple[torch.Tensor, ...]:
    """The spline bin of each value ``v`` (inside ±``bound``), found on the x knots (``axis`` 0: forward) or y (1: inverse).

    Returns its lower knot ``(x0, y0)``, its width and height and the derivatives at its
    two ends, each shaped like ``v``. Knots, sizes and derivatives as nflows computes them
    (``params`` bins first, see :func:`rq_spline_inverse`), without in-place steps, so
    autograd can run through them.
    """
    k = (params.shape[0] + 1) // 3
    rest = params.shape[1:]
    flat = (0, 0) * len(rest)  # F.pad's widths for the trailing (batch) axes
    raw = params[: 2 * k].reshape(2, k, *rest)  # widths, heights
    mins = min_width if min_width == min_height else params.new_tensor([min_width, min_height]).view(2, 1, *[1] * len(rest))
    sizes = mins + (1 - mins * k) * torch.softmax(raw, dim=1)
    ends = sizes.new_full((2, 1, *rest), bound)
    cum = torch.cat([-ends, torch.cumsum(sizes[:, :-1], dim=1) * (2 * bound) - bound, ends], 1)  # [2, K + 1, ...]; the ends exact
    sizes = cum[:, 1:] - cum[:, :-1]
    edge = math.log(math.expm1(1 - min_derivative))
    derivs = F.softplus(F.pad(params[2 * k :], (*flat, 1, 1), value=edge)) + min_derivative  # [K + 1, ...]
    # the bin: knots 0..K-1 at or below v (knot 0 is -bound <= v, and v < knot K + 1e-6 as nflows' searchsorted)
    idx = ((v[None] >= cum[axis, :k]).sum(0, keepdim=True) - 1).clamp_min(0)  # 0 for a NaN, as nflows
    (x0, y0), (w, hgt) = cum.gather(1, idx.expand(2, 1, *rest))[:, 0], sizes.gather(1, idx.expand(2, 1, *rest))[:, 0]
    d0, d1 = derivs.gather(0, torch.cat([idx, idx + 1]))
    return x0, y0, w, hgt, d0, d1


def rq_spline_inverse(
    y: torch.Tensor, params: torch.Tensor, bound: float, min_width: float, min_height: float, min_derivative: float,
    logdet: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """nflows' ``unconstrained_rational_quadratic_spline(inverse=True)`` (linear tails), bins first.

    ``params`` is ``[3K − 1, *y.shape]``: K unnormalised widths, K heights and
    K − 1 inner derivatives, the bins along the first axis. nflows keeps them on
    the last, where torch's softmax over a handful of bins runs 20x slower, and
    selects the points inside the tail bound with boolean indexing (copies); here
    every point is computed and those outside keep the identity. Widths and heights
    go through the softmax and cumulative sum together, and each gather fetches a pair:
    the autoregressive first stage calls this once per layer energy and step, so its
    cost is the number of tensor operations. Returns ``(x, log|dx/dy|)``, both shaped
    like ``y`` (``None`` for the second with ``logdet=False``); tests check both against nflows.
    """
    inside = (y >= -bound) & (y <= bound)
    yc = y.clamp(-bound, bound)
    x0, y0, w, hgt, d0, d1 = _rq_bin(yc, 1, params, bound, min_width, min_height, min_derivative)
    delta = hgt / w
    dy, s = yc - y0, d0 + d1 - 2 * delta
    a, b, c = dy * s + hgt * (delta - d0), hgt * d0 - dy * s, -delta * dy
    root = (2 * c) / (-b - torch.sqrt((b * b - 4 * a * c).clamp_min(0)))
    x = torch.where(inside, root * w + x0, y)
    if not logdet:
        return x, None
    t = root * (1 - root)
    lad = torch.log(delta.pow(2) * (d1 * root.pow(2) + 2 * delta * t + d0 * (1 - root).pow(2))) - 2 * torch.log(delta + s * t)
    return x, torch.where(inside, -lad, torch.zeros_like(lad))


def rq_spline_forward(
    x: torch.Tensor, params: torch.Tensor, bound: float, min_width: float, min_height: float, min_derivative: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """nflows' ``unconstrained_rational_quadratic_spline(inverse=False)`` (linear tails), bins first.

    The training direction of :func:`rq_spline_inverse`, with the same layout
    (``params`` ``[3K − 1, *x.shape]``) and the same reasons. nflows selects the points
    inside the tail bound by boolean indexing, whose ``nonzero`` makes a GPU wait for
    the host at every call, and takes some 940 tensor operations a layer for the
    forward and backward passes; every point is computed here (those outside on the
    clamped value, then replaced by the identity), which leaves no data-dependent
    shapes and half the operations (472). Returns ``(y, log|dy/dx|)``, both shaped
    like ``x``; tests check both, and the gradients, against nflows.
    """
    inside = (x >= -bound) & (x <= bound)
    xc = x.clamp(-bound, bound)
    x0, y0, w, hgt, d0, d1 = _rq_bin(xc, 0, params, bound, min_width, min_height, min_derivative)
    delta = hgt / w
    theta = (xc - x0) / w
    t = theta * (1 - theta)
    den = delta + (d0 + d1 - 2 * delta) * t
    y = y0 + hgt * (delta * theta.pow(2) + d0 * t) / den
    lad = torch.log(delta.pow(2) * (d1 * theta.pow(2) + 2 * delta * t + d0 * (1 - theta).pow(2))) - 2 * torch.log(den)
    return torch.where(inside, y, x), torch.where(inside, lad, torch.zeros_like(lad))


class SplineCoupling(PiecewiseRationalQuadraticCouplingTransform):
    """nflows' rational-quadratic spline coupling (linear tails), inverted with :func:`rq_spline_inverse`.

    The forward map and the parameters are nflows' own; only the inverse (the
    sampling direction) runs with the bins on the first axis: only about 10 % faster,
    as the spline's work per voxel, not its layout, is most of the cost.
    """

    def _coupling_transform_inverse(self, inputs: torch.Tensor, transform_params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.tails != "linear" or inputs.dim() != 2:
            return super()._coupling_transform_inverse(inputs, transform_params)
        b, d = inputs.shape
        params = transform_params.reshape(b, d, -1).permute(2, 0, 1)  # [3K − 1, B, D]
        k = self.num_bins
        scale = 1 / math.sqrt(self.transform_net.hidden_features) if hasattr(self.transform_net, "hidden_features") else 1.0
        params = torch.cat([params[: 2 * k] * scale, params[2 * k :]])
        x, lad = rq_spline_inverse(inputs, params, self.tail_bound, self.min_bin_width, self.min_bin_height, self.min_derivative)
        return x, lad.sum(1)


class LULinearSolve(LULinear):
    """nflows' ``LULinear`` inverted with ``torch.linalg.solve_triangular`` (on the weights' device)."""

    def inverse_no_cache(self, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        lower, upper = self._create_lower_upper()
        out = (inputs - self.bias).t()
        out = torch.linalg.solve_triangular(lower, out, upper=False, unitriangular=True)
        out = torch.linalg.solve_triangular(upper, out, upper=True)
        return out.t(), -self.logabsdet() * inputs.new_ones(inputs.shape[0])

    def weight_inverse(self) -> torch.Tensor:
        lower, upper = self._create_lower_upper()
        eye = torch.eye(self.features, dtype=lower.dtype, device=lower.device)
        lower_inv = torch.linalg.solve_triangular(lower, eye, upper=False, unitriangular=True)
        return torch.linalg.solve_triangular(upper, lower_inv, upper=True)


def realnvp(
    dim: int,
    cond_dim: int,
    n_layers: int = 8,
    hidden: int = 256,
    n_blocks: int = 2,
    mixing: str = "permutation",
    clamp: float = 2.0,
    dropout: float = 0.0,
    coupling: str = "affine",
    bins: int = 8,
    tail_bound: float = 6.0,
) -> CompositeTransform:
    """A conditional coupling flow ``y → z`` from nflows transforms.

    ``coupling="affine"`` is RealNVP (:class:`ExpAffineCoupling`);
    ``coupling="spline"`` uses nflows' rational-quadratic spline couplings
    (``bins`` knots on ``[-tail_bound, tail_bound]``, identity outside), the
    transforms of CaloFlow, which bend one-dimensional marginals an affine map
    cannot. A fixed generator makes the random permutations and masks part of
    the architecture, so save/load and every rank of a DDP run build the same flow.
    """
    if coupling not in COUPLINGS:
        raise ConfigError(f"coupling must be one of {', '.join(map(repr, COUPLINGS))}; got {coupling!r}", key="coupling")
    if mixing not in ("lu", "permutation"):
        raise ConfigError(f"mixing must be 'lu' or 'permutation'; got {mixing!r}", key="mixing")
    gen_state = torch.random.get_rng_state()
    torch.manual_seed(12345)
    try:
        layers: list[Transform] = []
        for i in range(n_layers):
            if dim == 1:
                mask = torch.ones(1)
            else:
                mask = torch.zeros(dim)
                mask[i % 2 :: 2] = 1  # alternate which half is transformed

            def net(n_in: int, n_out: int) -> ResidualNet:
                return ResidualNet(
                    n_in, n_out, hidden_features=hidden, context_features=cond_dim or None,
                    num_blocks=n_blocks, activation=F.silu, dropout_probability=dropout,
                )

            if coupling == "affine":
                layers.append(ExpAffineCoupling(mask, net, clamp=clamp))
            elif coupling == "autoregressive":
                layers.append(AutoregressiveSpline(
                    dim, hidden, context_features=cond_dim or None, num_bins=bins, tails="linear",
                    tail_bound=tail_bound, num_blocks=n_blocks, activation=F.silu, dropout_probability=dropout,
                ))
            else:
                layers.append(SplineCoupling(
                    mask, net, num_bins=bins, tails="linear", tail_bound=tail_bound,
                    apply_unconditional_transform=dim == 1,
                ))
            if dim > 1:
                layers.append(LULinearSolve(dim, identity_init=True) if mixing == "lu" else RandomPermutation(dim))
    finally:
        torch.random.set_rng_state(gen_state)
    return CompositeTransform(layers)


SamplingPlan = tuple[list[tuple[ExpAffineCoupling, torch.Tensor]], torch.Tensor]


def sampling_plan(transform: CompositeTransform) -> SamplingPlan | None:
    """The gathers that run a RealNVP's inverse feature-major, or None where it does not apply.

    Applies to :func:`realnvp`'s affine flows with permutation mixing (couplings and
    permutations alternating, nflows ``ResidualNet`` conditioners without batch norm).
    nflows' inverse gathers both halves of every coupling's input and scatters them
    back, then permutes: five copies of the state per layer, each along the slow
    (feature) axis. Here each permutation is folded with the next coupling's split into
    one row gather of a ``[features, batch]`` state, whose halves are then contiguous.
    Returns ``[(coupling, gather), ...]`` in inverse order and the final gather.
    """
    layers = list(transform._transforms)
    if not layers or len(layers) % 2:
        return None
    pairs = list(zip(layers[0::2], layers[1::2], strict=True))
    for coupling, perm in pairs:
        if type(coupling) is not ExpAffineCoupling:
            return None
        net = coupling.transform_net
        if (type(coupling) is not ExpAffineCoupling or not isinstance(perm, Permutation) or perm._dim != 1
                or coupling.unconditional_transform is not None or not isinstance(net, ResidualNet)
                or any(b.use_batch_norm for b in net.blocks)):
            return None
    layout = torch.arange(pairs[0][0].features, device=pairs[0][0].identity_features.device)  # row j holds feature layout[j]
    steps = []
    for coupling, perm in reversed(pairs):
        order = torch.cat([coupling.identity_features, coupling.transform_features])
        steps.append((coupling, torch.argsort(layout)[perm._inverse_permutation[order]]))
        layout = order
    return steps, torch.argsort(layout)


def cached_sampling_plan(transform: CompositeTransform) -> SamplingPlan | None:
    """:func:`sampling_plan`, kept on ``transform`` until one of its buffers (the permutations and
    coupling masks) changes storage or version: its argsorts were a third of the time to sample one event."""
    return cached_until_changed(transform, "_sampling_plan", transform.buffers(), lambda: sampling_plan(transform))


class _NetWeights:
    """A coupling's nflows ``ResidualNet`` weights in one dtype, split and contiguous, for :func:`sample_feature_major`."""

    def __init__(self, net: ResidualNet, n_in: int, dtype: torch.dtype):
        def cast(t: torch.Tensor) -> torch.Tensor:
            return t.detach().to(dtype).contiguous()

        w0 = net.initial_layer.weight
        self.w_in, self.w_context, self.b0 = cast(w0[:, :n_in]), cast(w0[:, n_in:]), cast(net.initial_layer.bias[:, None])
        self.blocks = [
            (block.activation, cast(l1.weight), cast(l1.bias[:, None]), cast(l2.weight), cast(l2.bias[:, None]),
             None if getattr(block, "context_layer", None) is None else (cast(block.context_layer.weight), cast(block.context_layer.bias[:, None])))
            for block in net.blocks for l1, l2 in [block.linear_layers]
        ]
        self.w_out, self.b_out = cast(net.final_layer.weight), cast(net.final_layer.bias[:, None])

    @classmethod
    def cached(cls, coupling: ExpAffineCoupling, dtype: torch.dtype) -> _NetWeights:
        """``coupling``'s weights in ``dtype``, kept on the coupling until a parameter changes.

        Casting 7.7 M conditioner weights to bf16 took several ms, most of the time to
        sample one event (:func:`~physgen.surrogates._common.cached_until_changed`).
        """
        net = coupling.transform_net
        return cached_until_changed(
            coupling, "_sampling_weights", net.parameters(), lambda: cls(net, coupling.num_identity_features, dtype), dtype,
        )

    def __call__(self, x: torch.Tensor, context_t: torch.Tensor | None, out: torch.Tensor | None = None) -> torch.Tensor:
        """nflows ``ResidualNet.forward`` (eval mode) on ``x`` ``[in, B]`` and ``context_t`` ``[C, B]``; returns ``[out, B]``."""
        h = torch.addmm(self.b0 if context_t is None else torch.addmm(self.b0, self.w_context, context_t), self.w_in, x)
        for act, w1, b1, w2, b2, glu in self.blocks:
            t = torch.addmm(b2, w2, act(torch.addmm(b1, w1, act(h))))
            if glu is not None and context_t is not None:  # nflows' GLU: t · σ(context layer)
                t = t * torch.sigmoid(torch.addmm(glu[1], glu[0], context_t))
            h = h + t
        return torch.addmm(self.b_out, self.w_out, h, out=out) if out is not None else torch.addmm(self.b_out, self.w_out, h)


def sample_feature_major(
    plan: SamplingPlan,
    z: torch.Tensor | None,
    context: torch.Tensor | None,
    block: int,
    *,
    n: int | None = None,
    generator: torch.Generator | None = None,
    temperature: float = 1.0,
) -> torch.Tensor:
    """The flow's inverse ``z → y`` (no log-determinant), ``block`` rows at a time, from :func:`sampling_plan`.

    The same map as nflows' inverse (a test compares them). With ``z=None`` it draws
    ``n`` rows of base noise (times ``temperature``) itself, block by block and
    feature-major: the first layer's gather would only permute i.i.d. normals, so it
    is skipped. The state stays in the flow's dtype (float32); under autocast the
    networks run in the autocast dtype, their weights cast once per call.

    Every large tensor is one of a few buffers reused from block to block, and the
    result is written into one preallocated ``[n, features]`` tensor: fresh 6–13 MB
    tensors cost their page faults on every block, and autocast's casts and mixed-dtype
    updates made such tensors several times per layer (a quarter of the sampling time).
    """
    steps, final = plan
    features = int(final.numel())
    if z is not None:
        n, device, dtype = z.shape[0], z.device, z.dtype
    elif n is None:
        raise ValueError("sample_feature_major needs z or n")
    else:
        device, dtype = final.device, next(steps[0][0].parameters()).dtype
    net_dtype = torch.get_autocast_dtype(device.type) if torch.is_autocast_enabled(device.type) else dtype
    out = torch.empty(n, features, device=device, dtype=dtype)
    with torch.autocast(device.type, enabled=False):
        weights = [_NetWeights.cached(c, net_dtype) for c, _ in steps]
        buffers: dict[str, torch.Tensor] = {}
        for s in range(0, n, block):
            rows = min(block, n - s)
            if not buffers or buffers["a"].shape[1] != rows:
                buffers = {"a": torch.empty(features, rows, device=device, dtype=dtype),
                           "b": torch.empty(features, rows, device=device, dtype=dtype),
                           "params": torch.empty(2 * max(c.num_transform_features for c, _ in steps), rows, device=device, dtype=net_dtype)}
                if net_dtype != dtype:
                    buffers["x"] = torch.empty(max(c.num_identity_features for c, _ in steps), rows, device=device, dtype=net_dtype)
                    buffers["params32"] = torch.empty_like(buffers["params"], dtype=dtype)
            state, spare = buffers["a"], buffers["b"]
            context_t = None if context is None else context[s : s + rows].t().to(net_dtype)
            for i, ((coupling, gather), net) in enumerate(zip(steps, weights, strict=True)):
                if i == 0 and z is None:
                    torch.randn(features, rows, generator=generator, device=device, dtype=dtype, out=state)
                    if temperature != 1.0:
                        state.mul_(temperature)
                else:
                    torch.index_select(z[s : s + rows].t() if i == 0 else state, 0, gather, out=spare)
                    state, spare = spare, state
                n_id, n_tr = coupling.num_identity_features, coupling.num_transform_features
                x = state[:n_id] if net_dtype == dtype else buffers["x"][:n_id].copy_(state[:n_id])
                params = net(x, context_t, out=buffers["params"][: 2 * n_tr])
                # 1 / exp(c · tanh(u / c)) = exp(c − 2c · σ(2u / c)): σ is several times cheaper than tanh on a CPU
                c = coupling.clamp
                params[n_tr:].mul_(2.0 / c).sigmoid_().mul_(-2.0 * c).add_(c).exp_()
                if net_dtype != dtype:
                    params = buffers["params32"][: 2 * n_tr].copy_(params)
                state[n_id:].sub_(params[:n_tr]).mul_(params[n_tr:])  # (y − shift) / scale
            torch.index_select(state, 0, final, out=spare)
            out[s : s + rows].copy_(spare.t())
            buffers["a"], buffers["b"] = state, spare
    return out


def sample_inverse(transform: CompositeTransform, z: torch.Tensor, context: torch.Tensor | None) -> torch.Tensor:
    """``transform``'s inverse ``z → y`` without the log-determinant that sampling does not use."""
    x = z
    for t in reversed(list(transform._transforms)):
        x, _ = t.inverse(x, context, logdet=False) if isinstance(t, AutoregressiveSpline) else t.inverse(x, context)
    return x


def point_mass_floor(y: torch.Tensor, min_fraction: float = 0.005) -> torch.Tensor:
    """Per column, the minimum where at least ``min_fraction`` of the rows sit exactly on it, else −inf.

    Empty voxels all map to one model-space value (the logit of α): a point mass
    at the bottom of the column's range. Columns without one get −inf, so
    :meth:`FlowSurrogate._dequantise_floor` leaves them alone.
    """
    return point_mass_bounds(y, min_fraction)[0]


def point_mass_bounds(y: torch.Tensor, min_fraction: float = 0.005) -> tuple[torch.Tensor, torch.Tensor]:
    """Per column, (the minimum, the maximum) where at least ``min_fraction`` of the rows sit exactly on it, else ∓inf."""
    low, high = y.min(0).values, y.max(0).values
    share_low, share_high = (y <= low).float().mean(0), (y >= high).float().mean(0)
    return (
        torch.where(share_low >= min_fraction, low, torch.full_like(low, -math.inf)),
        torch.where(share_high >= min_fraction, high, torch.full_like(high, math.inf)),
    )


def spread_point_masses(
    x: torch.Tensor, floor: torch.Tensor, ceiling: torch.Tensor | None, width: float, generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Spread values at or below ``floor`` uniformly over ``[floor − width, floor]``, at or above ``ceiling`` over ``[ceiling, ceiling + width]``.

    Uniform dequantisation of point masses at the edges of a column's range, outside
    it: a continuous density can fit the block, and every sample it draws beyond the
    edge maps back (through the inverse logit's clamp) to the exact edge value.
    Columns with an infinite bound are left alone.
    """
    floor = floor.to(x.device, x.dtype)
    u = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    out = torch.where(x <= floor, floor - width * u, x)
    if ceiling is None:
        return out
    ceiling = ceiling.to(x.device, x.dtype)
    return torch.where(x >= ceiling, ceiling + width * u, out)


def standard_normal_log_prob(z: torch.Tensor) -> torch.Tensor:
    """``log N(z; 0, I)`` per row."""
    return -0.5 * (z * z).sum(1) - 0.5 * z.shape[1] * math.log(2 * math.pi)


class FlowSurrogate(Surrogate):
    """Conditional normalising flow with an exact ``log_prob`` (options: :class:`FlowOptions`).

    ``floor_noise`` spreads each column's point mass at its minimum (where at least 0.5 % of
    the training rows sit, as empty voxels do) uniformly below it, drawn afresh every batch;
    samples that land below map back to the minimum. ``temperature`` cools the sampler; a
    calibration fitted to samples (a shower model's) must be refitted after changing it.
    """

    family = "flow"
    Options = FlowOptions
    options: FlowOptions
    capabilities = Capabilities(exact_density=True, conditional=True, gradient_trained=True)

    def __init__(self, **options: Any):
        super().__init__(**options)
        self._floor: torch.Tensor | None = None

    def initialise(self, y: torch.Tensor, cond: torch.Tensor | None) -> None:
        self._floor = point_mass_floor(y)

    def _dequantise_floor(self, x: torch.Tensor) -> torch.Tensor:
        """Spread each dimension's point mass at its floor uniformly over ``[floor − floor_noise, floor]``."""
        w = self.options.floor_noise
        if not w or self._floor is None:
            return x
        return spread_point_masses(x, self._floor, None, w)

    def build(self, dim: int, cond_dim: int, structure: FeatureStructure | None = None) -> None:
        o = self.options
        self.transform = realnvp(
            dim, cond_dim, n_layers=o.n_layers, hidden=o.hidden, n_blocks=o.n_blocks, mixing=o.mixing, clamp=o.clamp,
            dropout=o.dropout, coupling=o.coupling, bins=o.bins, tail_bound=o.tail_bound,
        )

    def _context(self, cond: torch.Tensor | None) -> torch.Tensor | None:
        return cond if self.dims.get("cond_dim", 0) else None

    def log_prob_model(self, x: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        z, logabsdet = self.transform(x, context=self._context(cond))
        return standard_normal_log_prob(z) + logabsdet

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None) -> tuple[torch.Tensor, dict[str, float]]:
        return -self.log_prob_model(self._dequantise_floor(x), cond).mean() / x.shape[1], {}

    def sample_model(self, n: int, cond: torch.Tensor | None, generator: torch.Generator) -> torch.Tensor:
        temperature = self.options.temperature
        plan = None if self.training else cached_sampling_plan(self.transform)
        if plan is not None:
            block = FLOW_CPU_SAMPLE_BLOCK if self.device().type == "cpu" else n
            return sample_feature_major(plan, None, self._context(cond), block, n=n, generator=generator, temperature=temperature)
        z = torch.randn(n, self.dims["dim"], generator=generator, device=self.device())
        if temperature != 1.0:
            z = z * temperature
        return sample_inverse(self.transform, z, self._context(cond))
