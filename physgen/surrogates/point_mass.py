"""Features with a point mass at a floor value: "at the floor, or a value above it".

After the calorimeter's preprocessing an empty voxel is one exact model-space value (its
floor), and on a sparse detector most voxels sit there. A density that smears that point
mass puts small deposits everywhere; the families that model it explicitly (the VAE's and
the WGAN's ``point_mass``, the diffusion's ``analog_bits``) give each feature a probability
of being above its floor and a value where it is. These are the shared pieces: drawing,
folding a value at the floor, at least one feature above its floor per group, and
per-feature logistic and linear fits against a covariate (the first condition column,
a shower's standardised log energy).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from physgen.data.groups import FeatureGroups
from physgen.surrogates.structure import FeatureStructure, require

__all__ = [
    "TOLERANCE", "build_buffers", "covariate", "draw", "draw_shifted", "fit_feature_lines", "fold", "folded_normal_log_prob", "logistic_lines", "one_per_group_", "shift_logits",
]

#: model-space distance from the floor below which a feature counts as at its point mass
TOLERANCE = 1e-6


def build_buffers(model: Any, dim: int, structure: FeatureStructure | None) -> None:
    """What the options ``one_per_group``, ``point_mass`` and ``logit_shift`` need, on ``model`` (a family's ``build``)."""
    o = model.options
    model.groups = require(structure, "groups", "one_per_group", model.family) if o.one_per_group else None
    if o.point_mass:
        model.register_buffer("floor", require(structure, "floor", "point_mass", model.family).float().clone())
    if o.logit_shift:
        model.register_buffer("logit_shift", torch.zeros(2, dim))  # per feature: a + b·x, fitted by a calibration


def draw(
    mean: torch.Tensor, hit_logit: torch.Tensor, sigma: torch.Tensor | None, empty: torch.Tensor, generator: torch.Generator,
    fold_at_floor: bool = False, groups: FeatureGroups | None = None,
) -> torch.Tensor:
    """Features exactly at ``empty`` (their floor) with probability 1 − sigmoid(hit_logit), else ``mean`` + N(0, sigma²).

    The sampling side of the VAE's and the WGAN's ``point_mass``. Above the floor ("hit") or
    not is drawn first, and the Gaussian's noise only for hits (a tenth of a sparse
    calorimeter's voxels), which saves most of the normal draws. ``sigma`` None: hits sit at
    ``mean``. ``fold_at_floor``: a hit's value is reflected at the floor (:func:`fold`), so no hit lands
    below it. ``groups``: give each group without a hit one (:func:`one_per_group_`).
    """
    prob = torch.sigmoid(hit_logit.float())
    hit = torch.rand(mean.shape, generator=generator, device=mean.device) < prob
    if groups is not None:
        one_per_group_(hit, prob, groups, generator)
    # the hits' values are drawn, and folded, on the hits alone: the same numbers as
    # where(hit, mean, empty) + noise, then folded over all features, at a fraction of the passes
    empty = empty.float()
    rows, cols = hit.nonzero(as_tuple=True)
    hits = mean[rows, cols].float()
    if sigma is not None:
        hits += torch.randn(len(rows), generator=generator, device=mean.device) * sigma[cols].float()
    if fold_at_floor:
        hits = fold(hits, empty[cols])
    value = empty.expand(mean.shape).clone()
    value[rows, cols] = hits
    return value


def one_per_group_(hit: torch.Tensor, prob: torch.Tensor, groups: FeatureGroups, generator: torch.Generator | None) -> torch.Tensor:
    """In place: each group of ``hit`` ``[N, V]`` without a hit gets one, at a feature drawn with probability ∝ ``prob``.

    In a two-stage shower model a layer the first stage gives energy but whose voxels drew
    no hit has nowhere to put it, and the energy lands on whichever voxel's rounding noise
    is largest, the same voxel in every such shower. Drawn in proportion to the hit
    probabilities, the hit lands where one is most likely (given at least one, to first
    order in the small probabilities). The measurements are in the calorimeter design notes.
    """
    for v0, _l0, count, size in groups.runs:
        block = hit[:, v0 : v0 + count * size].view(len(hit), count, size)
        rows, ls = (~block.any(-1)).nonzero(as_tuple=True)
        if len(rows):
            # inverse CDF (about 3x faster than torch.multinomial here): the first voxel whose cumulative probability reaches u
            cdf = torch.cumsum(prob[:, v0 : v0 + count * size].view(len(hit), count, size)[rows, ls].clamp_min(1e-12), 1)
            u = torch.rand(len(rows), 1, generator=generator, device=hit.device) * cdf[:, -1:]
            block[rows, ls, (cdf < u).sum(1).clamp_max(size - 1)] = True
    return hit


def fold(value: torch.Tensor, empty: torch.Tensor) -> torch.Tensor:
    """``empty + |value − empty|``: a hit's Gaussian folded at the floor (the ``fold`` option).

    A value below the floor would come back from the calorimeter's inverse preprocessing
    as an empty voxel (a negative energy fraction, clamped): folding keeps every drawn hit
    a hit; features exactly at the floor stay there. Values at or above ``empty`` come
    back bit for bit (``empty + |value − empty|`` would round them).
    """
    return torch.where(value < empty, 2 * empty - value, value)


def covariate(cond: torch.Tensor | None, n: int) -> torch.Tensor:
    """The covariate of the per-feature fits: the first condition column as ``[N, 1]`` (showers: standardised log E_inc); zeros without one."""
    return cond[:, :1] if cond is not None and cond.shape[1] else torch.zeros(n, 1)


def fit_feature_lines(y: torch.Tensor, empty: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Per feature of ``y`` ``[N, V]``, as lines in the covariate ``x`` ``[N, 1]``, float32:
    (hit-value intercept, slope, hit-logit intercept, slope, log of the hits' residual spread).

    A logistic regression of "above ``empty``" on ``x`` (8 Newton steps, ridge 1 on the slope,
    so a feature hit only at the largest ``x`` keeps a finite one) and a least-squares line
    through the hits; a feature with at most two hits gets slope 0 and spread 1, one never hit
    its floor value. The WGAN's generator starts at them; the diffusion's ``analog_bits`` fill
    the values of features at their floor from them.
    """
    step = max(1, 2**22 // max(len(y), 1))  # voxels at a time: [N, step] float64 temporaries of about 32 MB
    x = x.double()
    parts = [_fit_feature_lines(y[:, v : v + step].double(), empty[v : v + step].double(), x) for v in range(0, y.shape[1], step)]
    return tuple(torch.cat(t).float() for t in zip(*parts, strict=True))


def logistic_lines(
    hit: torch.Tensor, x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, offset: torch.Tensor | None = None, steps: int = 8,
    groups: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per column of ``hit`` ``[N, K]`` (0/1, float64), Newton steps of the logistic regression P(hit) = σ(offset + a + b·x).

    ``x`` ``[N, 1]``; ``a``, ``b`` are the start; ``offset`` ``[N, K]`` (or None) a fixed per-row
    term. With ``groups`` ``[K]`` (ids 0…G−1), the columns of a group share one line (``a``,
    ``b`` ``[G]``), else each column has its own (``[K]``). Ridge 1 on the slope, so a column
    hit only at the highest energies keeps a finite one; both clamped to ±7 (a never-hit
    column ends at −7). Each step is halved until the penalised likelihood does not fall:
    from a poor start (a model's logits as the offset) plain Newton steps overshot and ran to
    the clamps.
    """
    ridge = 1.0
    if groups is None:
        spread, reduce = (lambda v: v), (lambda v: v)
    else:
        spread = lambda v: v[groups]  # noqa: E731
        reduce = lambda v: torch.zeros(len(a), dtype=v.dtype).index_add_(0, groups, v)  # noqa: E731

    def linear(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        eta = spread(a) + spread(b) * x
        return eta if offset is None else offset + eta

    def loss(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        eta = linear(a, b)
        return reduce((torch.nn.functional.softplus(eta) - hit * eta).sum(0)) + 0.5 * ridge * b * b

    current = loss(a, b)
    for _ in range(steps):  # a 2x2 system per line
        p = torch.sigmoid(linear(a, b))
        r, w = hit - p, p * (1 - p)
        g_a, g_b = reduce(r.sum(0)), reduce((r * x).sum(0)) - ridge * b
        h_aa, h_ab, h_bb = reduce(w.sum(0)) + 1e-6, reduce((w * x).sum(0)), reduce((w * x * x).sum(0)) + ridge
        det = h_aa * h_bb - h_ab * h_ab
        da, db = (h_bb * g_a - h_ab * g_b) / det, (h_aa * g_b - h_ab * g_a) / det
        t = torch.ones_like(a)
        for _ in range(12):  # step halving, per line
            trial = loss((a + t * da).clamp(-7, 7), (b + t * db).clamp(-7, 7))
            worse = trial > current + 1e-9 * current.abs()
            if not bool(worse.any()):
                break
            t = torch.where(worse, t / 2, t)
        a, b = (a + t * da).clamp(-7, 7), (b + t * db).clamp(-7, 7)
        current = loss(a, b)
    return a, b


def _fit_feature_lines(y: torch.Tensor, empty: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    hit = (y > empty + TOLERANCE).double()
    n_hit = hit.sum(0)
    occupancy = ((n_hit + 0.5) / (len(y) + 1)).clamp(1e-3, 1 - 1e-3)
    a, b = logistic_lines(hit, x, torch.log(occupancy) - torch.log1p(-occupancy), torch.zeros_like(occupancy))
    ridge = 1.0  # on the hit values' slope too
    # hit values: least squares on x over the hits
    sw = n_hit.clamp_min(1)
    mx, my = (hit * x).sum(0) / sw, (hit * y).sum(0) / sw
    slope = (hit * (x - mx) * (y - my)).sum(0) / ((hit * (x - mx) ** 2).sum(0) + ridge)
    resid = (hit * (y - my - slope * (x - mx)) ** 2).sum(0) / (n_hit - 2).clamp_min(1)
    seen = n_hit > 2
    slope = torch.where(seen, slope, 0.0)
    intercept = torch.where(n_hit > 0, my - slope * mx, empty)
    return intercept, slope, a, b, 0.5 * torch.where(seen, resid, 1.0).clamp_min(1e-4).log()


def folded_normal_log_prob(y: torch.Tensor, mean: torch.Tensor, log_sigma: torch.Tensor, empty: torch.Tensor) -> torch.Tensor:
    """Elementwise log-density on ``y > empty`` of ``empty + |N(mean, σ²) − empty|``: N(y; m, σ²) + N(y; 2·empty − m, σ²)."""
    sigma = log_sigma.exp()
    const = log_sigma + 0.5 * math.log(2 * math.pi)
    return torch.logaddexp(-0.5 * ((y - mean) / sigma) ** 2, -0.5 * ((y + mean - 2 * empty) / sigma) ** 2) - const


def shift_logits(logit: torch.Tensor, shift: torch.Tensor, cond: torch.Tensor | None, in_place: bool = False) -> torch.Tensor:
    """``logit`` ``[N, V]`` plus the fitted per-feature line ``shift[0] + shift[1]·x`` in the covariate ``x`` of ``cond``.

    ``shift`` ``[2, V]`` is a family's ``logit_shift`` buffer, fitted after training by a
    calibration (the calorimeter's hit calibration). ``in_place``: a float32 ``logit`` the
    caller owns is shifted in place.
    """
    x = covariate(cond, len(logit)).to(logit.device)
    if in_place:
        logit = logit.float()
        if 0 in logit.stride():  # an expanded view: rows share memory
            logit = logit.contiguous()
        return logit.add_(shift[0]).addr_(x.reshape(-1), shift[1])
    return logit.float() + shift[0] + x * shift[1]


def draw_shifted(
    out: tuple[torch.Tensor, torch.Tensor, torch.Tensor | None], floor: torch.Tensor, generator: torch.Generator,
    cond: torch.Tensor | None = None, shift: torch.Tensor | None = None, fold_at_floor: bool = False, groups: FeatureGroups | None = None,
) -> torch.Tensor:
    """:func:`draw` from a family's ``(mean, hit logit, sigma)``, the logits first shifted by ``shift`` (if fitted) at ``cond``."""
    mean, hit_logit, sigma = out
    if shift is not None:
        hit_logit = shift_logits(hit_logit, shift, cond, in_place=True)
    return draw(mean, hit_logit, sigma, floor, generator, fold_at_floor=fold_at_floor, groups=groups)
