"""The :class:`Surrogate` interface every generative family implements.

Sample-shape convention, for the whole library:

* conditional surrogates: ``sample(cond)`` with ``cond`` of shape ``[B, C]`` in
  physics units (e.g. incident energy in MeV) returns :class:`~physgen.data.Data`
  with ``x`` of shape ``[B, *event_shape]`` — one sample per condition row;
* unconditional surrogates: ``sample(n=B)`` returns ``B`` samples;
* ``seed=`` makes sampling reproducible; sampling runs in batches of
  ``batch_size`` rows, so a million samples never need a million-row forward pass.

Samples are returned in physics units: the preprocessing pipeline is fitted on
the training data, saved with the model, and inverted on the way out.

A family subclasses :class:`Surrogate`, sets ``family`` and ``capabilities``,
and implements :meth:`Surrogate.build` (create its networks once the dimensions
are known), :meth:`Surrogate.forward` (the training loss on a model-space batch)
and :meth:`Surrogate.sample_model` (draw model-space samples). Families with an
exact or bounded density implement :meth:`Surrogate.log_prob_model`.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from physgen.data import Data, Pipeline, Schema, calorimeter_pipeline
from physgen.data.transforms import LayerFractions, Logit, ReadoutThreshold, Standardise, _Layers
from physgen.errors import CheckpointError, InvalidDataError, UnknownNameError
from physgen.surrogates import checkpoint as ckpt
from physgen.surrogates.training import autocast_dtype

if TYPE_CHECKING:
    from physgen.surrogates.training import TrainConfig, TrainContext

__all__ = [
    "Capabilities", "Surrogate", "ENERGY_FLOW_DEFAULTS", "draw_empty_mass", "energy_column", "fit_hit_shift", "fit_voxel_marginals", "fold_hit", "folded_normal_log_prob", "one_hit_per_layer_",
]

#: rows per network call when sampling on a CPU (see :meth:`Surrogate.sample_in_blocks`)
CPU_SAMPLE_BLOCK = 256
#: model-space distance from the empty value below which a voxel counts as empty (``empty_mass``)
EMPTY_TOL = 1e-6


def cached_until_changed(owner: Any, slot: str, tensors: Any, build: Callable[[], Any], *extra: Any) -> Any:
    """``build()``, kept in ``owner.__dict__[slot]`` until one of ``tensors`` changes, or ``extra`` does.

    The key holds each tensor's storage and version counter, which every in-place update
    (an optimiser step, ``load_state_dict``, ``.to()``) moves on. Kept in ``__dict__``, the
    value is not a submodule or buffer: no ``state_dict`` entry, not moved by ``.to()``.
    """
    key = (*extra, tuple((t.data_ptr(), t._version) for t in tensors))
    hit = owner.__dict__.get(slot)
    if hit is not None and hit[0] == key:
        return hit[1]
    value = build()
    owner.__dict__[slot] = (key, value)
    return value


def _flag(name: str, value: Any) -> bool:
    """``value`` if it is a bool, else a typed error naming the setting."""
    if not isinstance(value, bool):
        raise InvalidDataError(f"{name} must be true or false; got {value!r}")
    return value


def draw_empty_mass(
    mean: torch.Tensor, hit_logit: torch.Tensor, sigma: torch.Tensor | None, empty: torch.Tensor, generator: torch.Generator,
    fold: bool = False, layers: _Layers | None = None,
) -> torch.Tensor:
    """Voxels that are exactly ``empty`` with probability 1 − sigmoid(hit_logit), else ``mean`` + N(0, sigma²).

    The sampling side of the VAE's and the WGAN's ``empty_mass``. Hit or empty is
    drawn first, and the Gaussian's noise only where hit (a tenth of W/Si's voxels),
    which saves most of the normal draws. ``sigma`` None: hits sit at ``mean``.
    ``fold``: a hit's value is reflected at the empty value (:func:`fold_hit`), so no hit
    lands below it, where the inverse preprocessing would make it an empty voxel.
    ``layers``: the voxels' layers, for :func:`one_hit_per_layer_`.
    """
    prob = torch.sigmoid(hit_logit.float())
    hit = torch.rand(mean.shape, generator=generator, device=mean.device) < prob
    if layers is not None:
        one_hit_per_layer_(hit, prob, layers, generator)
    # the hits' values are drawn, and folded, on the hits alone (a tenth of W/Si's voxels): the same numbers as
    # where(hit, mean, empty) + noise, then folded over all voxels, at a fraction of the passes
    empty = empty.float()
    rows, cols = hit.nonzero(as_tuple=True)
    hits = mean[rows, cols].float()
    if sigma is not None:
        hits += torch.randn(len(rows), generator=generator, device=mean.device) * sigma[cols].float()
    if fold:
        hits = fold_hit(hits, empty[cols])
    value = empty.expand(mean.shape).clone()
    value[rows, cols] = hits
    return value


def one_hit_per_layer_(hit: torch.Tensor, prob: torch.Tensor, layers: _Layers, generator: torch.Generator | None) -> torch.Tensor:
    """In place: each layer of ``hit`` ``[N, V]`` without a hit gets one, at a voxel drawn with probability ∝ ``prob``.

    A layer the first stage gives energy but whose voxels drew no hit has nowhere to
    put it: its empty voxels' fractions are float32 rounding noise, so the layer's
    energy went to whichever voxel's noise was largest, the same voxel in every such
    shower (voxel 118 of layer 30 in 157 of the W/Si WGAN's 165 such showers at 10-30 GeV,
    9 % of all; the VAE's 1-2 %), and the deep layers' centroids came out biased. Drawn
    in proportion to the hit probabilities, the hit lands where one is most likely
    (given at least one, to first order in the small probabilities). A layer without
    energy stays empty whatever its voxels hold.
    """
    for v0, _l0, count, size in layers.runs:
        block = hit[:, v0 : v0 + count * size].view(len(hit), count, size)
        rows, ls = (~block.any(-1)).nonzero(as_tuple=True)
        if len(rows):
            # inverse CDF (3.4x faster than torch.multinomial here): the first voxel whose cumulative probability reaches u
            cdf = torch.cumsum(prob[:, v0 : v0 + count * size].view(len(hit), count, size)[rows, ls].clamp_min(1e-12), 1)
            u = torch.rand(len(rows), 1, generator=generator, device=hit.device) * cdf[:, -1:]
            block[rows, ls, (cdf < u).sum(1).clamp_max(size - 1)] = True
    return hit


def fold_hit(value: torch.Tensor, empty: torch.Tensor) -> torch.Tensor:
    """``empty + |value − empty|``: a hit's Gaussian folded at the empty value (``fold_hits``).

    Model-space values below the empty value mean a negative energy fraction, which the
    inverse preprocessing clamps to an empty voxel: with a plain Gaussian, about 6 % of
    the W/Si VAE's and WGAN's drawn hits in layers 9-13 at 40-100 GeV were lost that
    way, and the occupancy-calibrated readout cut can only remove hits, never add them.
    Folding keeps every drawn hit a hit; empty voxels (exactly ``empty``) stay empty.
    Values at or above ``empty`` come back bit for bit (``empty + |value − empty|`` would round them).
    """
    return torch.where(value < empty, 2 * empty - value, value)


def energy_column(cond: torch.Tensor | None, n: int) -> torch.Tensor:
    """The first condition column (standardised log E_inc for showers) as ``[N, 1]``; zeros without one."""
    return cond[:, :1] if cond is not None and cond.shape[1] else torch.zeros(n, 1)


def fit_voxel_marginals(y: torch.Tensor, empty: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Per voxel of ``y`` ``[N, V]``, as functions of ``x`` ``[N, 1]`` (log E_inc, standardised), float32:
    (hit-value intercept, slope, hit-logit intercept, slope, log of the hits' residual spread).

    A logistic regression of hit on ``x`` (8 Newton steps, ridge 1 on the slope, so a voxel
    hit only at the highest energies keeps a finite one) and a least-squares line through the
    hits; a voxel with at most two hits gets slope 0 and spread 1, one never hit its empty
    value. The WGAN's generator starts at them; the diffusion's ``hit_bits`` fill empty voxels' values from them.
    """
    step = max(1, 2**22 // max(len(y), 1))  # voxels at a time: [N, step] float64 temporaries of about 32 MB
    x = x.double()
    parts = [_fit_voxel_marginals(y[:, v : v + step].double(), empty[v : v + step].double(), x) for v in range(0, y.shape[1], step)]
    return tuple(torch.cat(t).float() for t in zip(*parts, strict=True))


def _logistic_lines(
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


def fit_hit_shift(
    hit: torch.Tensor, x: torch.Tensor, logits: torch.Tensor, groups: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per voxel, the line a + b·x that, added to a model's drawn hit ``logits`` ``[N, V]``, gives ``hit``'s occupancy.

    The logistic regression of the data's hits ``[N, V]`` on ``x`` ``[N, 1]`` (log E_inc,
    standardised) with the model's logits, drawn at the same conditions, as offset. Its
    score equations say Σ σ(logit + a + b·x) = Σ hit and Σ x·σ(...) = Σ x·hit: the
    shifted model has the data's occupancy, and its energy trend. With ``groups`` ``[V]``
    (e.g. the orbits of the calorimeter's azimuthal symmetry), the voxels of a group share
    one line and the equations hold for the group's summed hits. Returns ``a``, ``b`` ``[V]``.
    """
    v_all = hit.shape[1]
    groups = torch.arange(v_all) if groups is None else torch.as_tensor(groups, dtype=torch.long)
    if groups.shape != (v_all,):
        raise InvalidDataError(f"hit-shift groups: expected one id per voxel ({v_all}); got {tuple(groups.shape)}")
    step = max(1, 2**22 // max(len(hit), 1))
    # chunks of whole groups: a cut where every group id before it is below every id after it
    before = torch.cummax(groups, 0).values
    after = torch.flip(torch.cummin(torch.flip(groups, [0]), 0).values, [0])
    cuts = [0]
    for c in (torch.nonzero(before[:-1] < after[1:])[:, 0] + 1).tolist():
        if c - cuts[-1] >= step:
            cuts.append(c)
    cuts.append(v_all)
    x = x.double()
    a_out, b_out = torch.zeros(v_all), torch.zeros(v_all)
    for v0, v1 in zip(cuts[:-1], cuts[1:], strict=False):
        ids, local = torch.unique(groups[v0:v1], return_inverse=True)
        zero = torch.zeros(len(ids), dtype=torch.float64)
        a, b = _logistic_lines(
            hit[:, v0:v1].double(), x, zero, zero.clone(), offset=logits[:, v0:v1].double(), steps=12, groups=local,
        )
        a_out[v0:v1], b_out[v0:v1] = a[local].float(), b[local].float()
    return a_out, b_out


def _fit_voxel_marginals(y: torch.Tensor, empty: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    hit = (y > empty + EMPTY_TOL).double()
    n_hit = hit.sum(0)
    occupancy = ((n_hit + 0.5) / (len(y) + 1)).clamp(1e-3, 1 - 1e-3)
    a, b = _logistic_lines(hit, x, torch.log(occupancy) - torch.log1p(-occupancy), torch.zeros_like(occupancy))
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


#: width (standardised model units) over which the first stage's training spreads the point masses of
#: empty layers (``energy_point_mass_noise``; :meth:`Surrogate.spread_energy_point_masses`)
ENERGY_POINT_MASS_NOISE = 0.5
#: hyperparameters of every family that checkpoints saved before they existed were trained without
BASE_CHECKPOINT_DEFAULTS: dict[str, Any] = {"energy_point_mass_noise": 0.0}

#: the first stage's size (``energy_flow={...}`` overrides any of it)
ENERGY_FLOW_DEFAULTS: dict[str, Any] = {"n_layers": 2, "hidden": 64, "n_blocks": 1, "coupling": "autoregressive", "bins": 8}


@dataclass(frozen=True)
class Capabilities:
    """What a surrogate can do, so callers need not try-and-catch.

    Attributes:
        exact_density: ``log_prob`` is the exact log-density (flows, Gaussian, small RBMs).
        density_bound: ``log_prob`` is a lower bound (the VAE's ELBO).
        unnormalised_density: ``log_prob`` is known only up to a constant (large RBMs).
        conditional: ``sample`` takes conditions.
        gradient_trained: ``fit`` runs the shared training loop (resume, DDP, AMP).
    """

    exact_density: bool = False
    density_bound: bool = False
    unnormalised_density: bool = False
    conditional: bool = True
    gradient_trained: bool = True

    @property
    def has_log_prob(self) -> bool:
        return self.exact_density or self.density_bound or self.unnormalised_density


class Surrogate(nn.Module):
    """A generative surrogate behind one interface.

    Args:
        **config: family hyperparameters; JSON-serialisable, saved with the model.
    """

    family: ClassVar[str] = ""
    capabilities: ClassVar[Capabilities] = Capabilities()
    #: TrainConfig fields this family changes by default (e.g. diffusion turns on the EMA)
    train_defaults: ClassVar[dict[str, Any]] = {}
    #: hyperparameters a checkpoint saved before they existed was trained without
    #: (a newer default must not change how an older model is rebuilt)
    checkpoint_defaults: ClassVar[dict[str, Any]] = {}
    #: the data kinds this family models
    data_kinds: ClassVar[tuple[str, ...]] = ("calorimeter", "event")
    #: whether ``two_stage`` (a layer-energy flow first) applies; on by default for showers
    supports_two_stage: ClassVar[bool] = True
    #: first-stage steps per family batch: the layer-energy flow is cheap next to a family
    #: step and needs thousands of steps, so slow families give it several per batch
    energy_steps: ClassVar[int] = 1

    def __init__(self, **config: Any):
        super().__init__()
        self.config: dict[str, Any] = dict(config)
        self._readout_settings()  # bad readout settings fail here, not after training
        autocast_dtype(self.config.get("sample_precision", "fp32"), name="sample_precision")
        self.preprocessing: Pipeline | None = None
        self.schema: Schema | None = None
        self.dims: dict[str, int] = {}
        self.history: list[dict[str, Any]] = []

    # -- what a family implements ----------------------------------------------------
    def build(self, dim: int, cond_dim: int) -> None:
        """Create the networks for ``dim`` model-space features and ``cond_dim`` conditions."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None) -> tuple[torch.Tensor, dict[str, float]]:
        """The training loss of a model-space batch ``x`` ``[B, dim]``, ``cond`` ``[B, C]``.

        Returns the scalar loss and extra numbers to log. Being ``forward``, it
        runs through DistributedDataParallel unchanged.
        """
        raise NotImplementedError

    def sample_model(self, n: int, cond: torch.Tensor | None, generator: torch.Generator) -> torch.Tensor:
        """``n`` model-space samples ``[n, dim]`` (``cond`` ``[n, C]`` when conditional)."""
        raise NotImplementedError

    def sample_in_blocks(
        self, draw: Callable[[int, torch.Tensor | None, torch.Generator], torch.Tensor], n: int,
        cond: torch.Tensor | None, generator: torch.Generator,
    ) -> torch.Tensor:
        """``draw(n, cond, generator)`` over blocks of rows whose network outputs and noise stay in a CPU's cache.

        10,000 W/Si showers from the VAE (12,960 decoder outputs each) took 3.5 s in one
        block and 1.8 s in blocks of 256 (bf16). On other devices: one block.
        """
        block = CPU_SAMPLE_BLOCK if self._device().type == "cpu" else n
        if n <= block:
            return draw(n, cond, generator)
        return torch.cat([
            draw(min(block, n - s), None if cond is None else cond[s : s + block], generator) for s in range(0, n, block)
        ])

    def log_prob_model(self, x: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        """Log-density ``[B]`` of model-space ``x`` (only where ``capabilities`` claim one)."""
        raise NotImplementedError

    def configure_optimizers(self, cfg: TrainConfig) -> list[torch.optim.Optimizer]:
        """The optimisers the loop steps (one Adam by default; a GAN returns two)."""
        if cfg.weight_decay:
            return [torch.optim.AdamW(self.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)]
        return [torch.optim.Adam(self.parameters(), lr=cfg.lr)]

    def train_batch(
        self,
        model: nn.Module,
        x: torch.Tensor,
        cond: torch.Tensor | None,
        optimizers: list[torch.optim.Optimizer],
        ctx: TrainContext,
    ) -> dict[str, float]:
        """One optimisation step on a batch; ``model`` is ``self`` or its DDP wrapper (call it, not ``self``)."""
        optimizer = optimizers[0]
        optimizer.zero_grad(set_to_none=True)
        with ctx.autocast():
            loss, logs = model(x, cond)
        ctx.step(loss, optimizer)
        return {"loss": float(loss.detach()), **logs}

    @torch.no_grad()
    def validation_loss(self, x: torch.Tensor, cond: torch.Tensor | None, batch_size: int = 4096) -> float:
        """Mean training loss over model-space validation data, in eval mode."""
        was_training = self.training
        self.eval()
        total = 0.0
        for start in range(0, len(x), batch_size):
            xb = x[start : start + batch_size]
            loss, _ = self(xb, None if cond is None else cond[start : start + batch_size])
            total += float(loss) * len(xb)
        self.train(was_training)
        return total / len(x)

    def default_preprocessing(self, data: Data) -> Pipeline:
        """The pipeline used when ``fit`` is given none: CaloFlow-style for showers, standardisation otherwise."""
        if data.schema.kind == "calorimeter" and data.cond is not None:
            # CaloFlow's split: layer energies set the total, fractions shape each layer
            geo = data.schema.geometry
            sizes = [la.n_voxels for la in geo.layers] if geo is not None else None
            noise = self.config.get("dequantise_mev")
            q = self.config.get("readout_quantile", 0.005)
            return calorimeter_pipeline(
                sizes, alpha=float(self.config.get("logit_alpha", 1e-3)), noise=float(noise) if noise else None,
                threshold_quantile=None if q is None else float(q),
                min_std=float(self.config.get("standardise_min_std", 0.2)),
            )
        if data.schema.kind == "spins":
            return Pipeline()
        return Pipeline(x=[Standardise()], cond=[Standardise()] if data.cond is not None else [])

    # -- shared machinery ------------------------------------------------------------
    @property
    def is_fitted(self) -> bool:
        return self.schema is not None

    def prepare(self, data: Data, preprocessing: Pipeline | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Fit the preprocessing on ``data``, build the networks, return model-space tensors (float32)."""
        if data.schema.kind not in self.data_kinds:
            raise InvalidDataError(f"the {self.family} surrogate models {', '.join(self.data_kinds)} data; got {data.schema.kind!r} data")
        if data.mask is not None or data.x.ndim != 2:
            raise InvalidDataError(
                f"surrogates model flat events [N, D]; got x {tuple(data.x.shape)}"
                + (" with a mask (padded lists): select a fixed number of objects first" if data.mask is not None else "")
            )
        self.preprocessing = preprocessing if preprocessing is not None else self.default_preprocessing(data)
        self.preprocessing.fit(data.x, data.cond)
        # training-only steps (dequantisation noise) apply to the training tensor, drawn once
        # from the global generator the caller seeded
        y, c = self.preprocessing.train(True).forward(data.x, data.cond)
        self.preprocessing.train(False)
        self.schema = data.schema
        n_energy = self._energy_dim(c)
        # with a first stage the family sees the voxel part only, conditioned on the layer energies too
        self.dims = {
            "event_dim": int(data.x.shape[1]), "dim": int(y.shape[1]) - n_energy,
            "cond_dim": (0 if c is None else int(c.shape[1])) + n_energy, "energy_dim": n_energy,
        }
        self.build_all()
        if self.has_energy_stage:
            from physgen.surrogates.flow import point_mass_bounds

            self._energy_bounds = point_mass_bounds(y[:, -n_energy:].float())
        return y.float(), None if c is None else c.float()

    # -- CaloFlow's two stages -------------------------------------------------------
    def _energy_dim(self, cond: torch.Tensor | None) -> int:
        """Layer-energy features the first stage models (0 without ``two_stage``)."""
        wanted = self.config.get("two_stage")  # None: wherever the data allow it
        if wanted is False or not self.supports_two_stage:
            return 0
        assert self.preprocessing is not None
        stages = [t for t in self.preprocessing.x_transforms if isinstance(t, LayerFractions)]
        if cond is None or not stages:
            if wanted is None:
                return 0
            raise InvalidDataError(
                f"two_stage needs conditional calorimeter data whose preprocessing splits layer energies off "
                f"(a LayerFractions step, as in the default pipeline of data with a geometry); the {self.family} "
                f"surrogate got {'no condition' if cond is None else 'no LayerFractions step'}"
            )
        return len(stages[-1].layer_sizes)

    def build_all(self) -> None:
        """Build the family's networks and, with ``two_stage``, the layer-energy flow."""
        self.build(self.dims["dim"], self.dims["cond_dim"])
        n_energy = self.dims.get("energy_dim", 0)
        if n_energy:
            from physgen.surrogates.flow import realnvp

            # CaloFlow's flow I: a masked autoregressive spline flow. On the 24 PbWO4 layer
            # energies it reached a layers-only classifier AUC of 0.56 where six spline
            # couplings stalled at 0.80 (docs/surrogates.md); the size is recorded in the config
            given = dict(self.config.get("energy_flow") or {})
            allowed = set(inspect.signature(realnvp).parameters) - {"dim", "cond_dim"}
            if set(given) - allowed:
                raise InvalidDataError(f"energy_flow: unknown keys {sorted(set(given) - allowed)}; expected some of {sorted(allowed)}")
            steps = self.config.get("energy_steps", self.energy_steps)
            if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
                raise InvalidDataError(f"energy_steps must be a positive integer; got {steps!r}")
            e = {**ENERGY_FLOW_DEFAULTS, **given}
            self.config["energy_flow"] = e
            self.energy = realnvp(n_energy, self.dims["cond_dim"] - n_energy, **e)
            noise = self.config.get("energy_point_mass_noise", ENERGY_POINT_MASS_NOISE)
            if isinstance(noise, bool) or not isinstance(noise, int | float) or not noise >= 0:
                raise InvalidDataError(f"energy_point_mass_noise must be a width ≥ 0 (standardised model units); got {noise!r}")
            self.config["energy_point_mass_noise"] = float(noise)

    @property
    def has_energy_stage(self) -> bool:
        return self.dims.get("energy_dim", 0) > 0

    def logit_standardise_tail(self) -> tuple[Logit, Standardise] | None:
        """The pipeline's last two steps when they are logit, then standardise (the calorimeter pipeline's end)."""
        steps = [] if self.preprocessing is None else self.preprocessing.x_transforms
        tail = steps[-2:]
        if len(tail) == 2 and isinstance(tail[0], Logit) and isinstance(tail[1], Standardise):
            return tail[0], tail[1]
        return None

    def empty_value(self, dim: int) -> torch.Tensor | None:
        """Model-space value of an empty voxel in each of the first ``dim`` columns (None without a logit tail)."""
        tail = self.logit_standardise_tail()
        if tail is None:
            return None
        logit, std = tail
        width = len(std._params()[0])
        return std.forward(logit.forward(torch.zeros(1, width), None), None)[0, :dim].float()

    def voxel_layers(self, dim: int) -> torch.Tensor | None:
        """Each voxel's layer (None without a geometry that covers the ``dim`` voxels)."""
        geometry = getattr(self.schema, "geometry", None) if self.schema is not None else None
        if geometry is None or geometry.n_voxels != dim:
            return None
        return torch.as_tensor(geometry.layer_index()[:dim], dtype=torch.long)

    def voxel_layer_runs(self, dim: int) -> _Layers | None:
        """The voxels' layers as :class:`_Layers` (for :func:`one_hit_per_layer_`); None without a geometry."""
        layers = self.voxel_layers(dim)
        return None if layers is None else _Layers([n for n in torch.bincount(layers).tolist() if n])

    def setup_empty_mass(self, dim: int) -> None:
        """Decide the ``empty_mass`` option (VAE, WGAN) and store each voxel's empty value as ``_empty``.

        ``None`` means on for two-stage calorimeter showers whose pipeline ends with logit,
        then standardise. Only with the first stage: there each layer's energy is given, so
        hits drawn too rarely or too small change the shower's shape, not its energy. A
        one-stage VAE trained briefly (the contract test's 6 epochs) put 0.62 of E_inc into
        5 GeV showers with it. ``fold_hits`` (``None``: on with ``empty_mass``) folds the
        hits' Gaussian at the empty value (:func:`fold_hit`); ``one_hit_per_layer``
        (``None``: on with ``empty_mass`` and a geometry) gives a layer whose voxels drew no
        hit one, at a voxel drawn in proportion to the hit probabilities (:func:`one_hit_per_layer_`).
        """
        wanted = self.config.get("empty_mass")
        empty = self.empty_value(dim)
        if wanted and empty is None:
            raise InvalidDataError("empty_mass needs a pipeline that ends with logit, then standardise")
        two_stage = self.schema is not None and self.schema.kind == "calorimeter" and self.has_energy_stage
        self.config["empty_mass"] = bool(empty is not None and two_stage if wanted is None else wanted)
        if self.config["empty_mass"]:
            self.register_buffer("_empty", empty)
        fold = self.config.get("fold_hits")
        if fold and not self.config["empty_mass"]:
            raise InvalidDataError("fold_hits folds the hits of empty_mass at the empty value: it needs empty_mass")
        self.config["fold_hits"] = bool(self.config["empty_mass"] if fold is None else fold)
        layers = self.voxel_layer_runs(dim)
        one_hit = self.config.get("one_hit_per_layer")
        if one_hit and (not self.config["empty_mass"] or layers is None):
            raise InvalidDataError("one_hit_per_layer needs empty_mass and calorimeter showers with a geometry")
        self.config["one_hit_per_layer"] = bool(self.config["empty_mass"] and layers is not None if one_hit is None else one_hit)
        self.hit_layers = layers if self.config["one_hit_per_layer"] else None
        self.setup_hit_calibration(dim)

    @property
    def has_hit_logits(self) -> bool:
        """Whether the family draws each voxel's hit from a logit: ``empty_mass`` (VAE, WGAN) or ``hit_bits`` (diffusion)."""
        return bool(self.config.get("empty_mass") or self.config.get("hit_bits"))

    def setup_hit_calibration(self, dim: int) -> None:
        """Decide ``hit_calibration`` and ``hit_pool``; make the shift's buffer.

        ``None``: on with the diffusion's ``hit_bits``, off for ``empty_mass`` (VAE, WGAN), where
        it is asked for. On W/Si it took the WGAN's two features worse than the Gaussian
        beyond 2σ away, but on PbWO4 it gave the WGAN four (AUC 0.856 → 0.894); the VAE did
        not change beyond its errors on either.
        """
        calibrate = self.config.get("hit_calibration")
        if calibrate and not self.has_hit_logits:
            raise InvalidDataError("hit_calibration shifts a family's hit logits: it needs empty_mass (VAE, WGAN) or hit_bits (diffusion)")
        self.config["hit_calibration"] = bool(self.config.get("hit_bits") if calibrate is None else calibrate)
        if self.config["hit_calibration"]:
            self.register_buffer("_hit_shift", torch.zeros(2, dim))  # per voxel: a + b·x, fitted by calibrate_hits
        pool = self.config.get("hit_pool")
        if pool not in (None, "voxel", "azimuthal"):
            raise InvalidDataError(f"hit_pool must be 'voxel' or 'azimuthal' (None: azimuthal where the geometry has the symmetry); got {pool!r}")
        if pool == "azimuthal" and self.azimuthal_orbits(dim) is None:
            raise InvalidDataError("hit_pool='azimuthal' needs showers on a polar geometry with more than one angular bin")

    def azimuthal_orbits(self, dim: int) -> torch.Tensor | None:
        """Per voxel, the id (0…G−1, in voxel order) of its orbit under the rotations and mirrors of :mod:`physgen.data.augment`.

        None where the showers have no polar geometry of ``dim`` voxels with more than one rotation.
        """
        geometry = None if self.schema is None else self.schema.geometry
        if geometry is None or geometry.kind != "polar" or geometry.n_voxels != dim or geometry.azimuthal_order < 2:
            return None
        perms = torch.stack([
            torch.as_tensor(geometry.azimuthal_permutation(k, m), dtype=torch.long)
            for k in range(geometry.azimuthal_order) for m in (False, True)
        ])
        return torch.unique(perms.min(0).values, return_inverse=True)[1]  # the orbit's first voxel, relabelled 0…G−1

    def empty_mass_out(self, n: int, cond: torch.Tensor | None, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """With ``empty_mass`` (VAE, WGAN): one draw's hit means, hit logits and noise scale (or None), ``[n, V]`` each.

        The means and logits are fresh tensors: :meth:`sample_empty_mass` shifts the logits in place.
        """
        raise NotImplementedError

    def hit_logits(self, n: int, cond: torch.Tensor | None, generator: torch.Generator) -> torch.Tensor:
        """One draw's hit logits ``[n, V]`` before the hit calibration's shift (what :meth:`calibrate_hits` fits to)."""
        return self.empty_mass_out(n, cond, generator)[1]

    def shift_hit_logits(self, hit_logit: torch.Tensor, cond: torch.Tensor | None, in_place: bool = False) -> torch.Tensor:
        """``hit_logit`` plus the hit calibration's line a + b·x (x: the first condition column); unchanged without one.

        ``in_place``: float32 ``hit_logit`` is shifted in place (a fresh tensor the caller owns).
        """
        if not self.config.get("hit_calibration"):
            return hit_logit
        x = energy_column(cond, len(hit_logit)).to(hit_logit.device)
        if in_place:
            hit_logit = hit_logit.float()
            if 0 in hit_logit.stride():  # an expanded view: rows share memory
                hit_logit = hit_logit.contiguous()
            return hit_logit.add_(self._hit_shift[0]).addr_(x.reshape(-1), self._hit_shift[1])
        return hit_logit.float() + self._hit_shift[0] + x * self._hit_shift[1]

    def sample_empty_mass(self, n: int, cond: torch.Tensor | None, generator: torch.Generator) -> torch.Tensor:
        """``n`` model-space samples of an ``empty_mass`` family: its hit logits, shifted by the hit calibration, then :func:`draw_empty_mass`."""
        mean, hit_logit, sigma = self.empty_mass_out(n, cond, generator)
        hit_logit = self.shift_hit_logits(hit_logit, cond, in_place=True)
        return draw_empty_mass(
            mean, hit_logit, sigma, self._empty, generator, fold=self.config.get("fold_hits", False), layers=self.hit_layers,
        )

    @torch.no_grad()
    def calibrate_hits(self, data: Data, seed: int = 0) -> bool:
        """Fit ``hit_calibration``'s per-voxel logit shift to ``data``'s occupancy; returns whether one was fitted.

        Runs at the end of :meth:`fit`, before :meth:`calibrate_readout`. The model's hit
        logits (:meth:`hit_logits`; the diffusion's are its bits, scaled) are drawn at (up to ``readout_events`` of) the training conditions, the
        layer energies included, and per voxel a line a + b·x in x = log E_inc
        (standardised) is fitted so that the shifted logits give the training showers'
        hits (:func:`fit_hit_shift`). The readout's cuts can only remove hits; this puts
        back those a family draws too rarely (the W/Si WGAN drew 8-10 % too few in layers
        5-12 at 40-100 GeV).

        ``hit_pool``: ``"azimuthal"`` (the default where the showers' geometry is polar with
        more than one rotation) fits one line per orbit of the rotations and mirrors
        (:meth:`azimuthal_orbits`, W/Si's 6,480 voxels: 405 rings), ``"voxel"`` one per voxel.
        Per voxel, the lines took up the training sample's occupancy noise (a 1 % voxel is
        hit about 40 times in 4,200 showers): the W/Si WGAN's held-out AUC went 0.742 →
        0.780, against 0.756 pooled, which relies on the same symmetry as ``augment``.
        """
        if not self.config.get("hit_calibration") or data.x.ndim != 2 or (self.is_conditional and data.cond is None):
            return False
        assert self.preprocessing is not None
        _, events = self._readout_settings()
        n = len(data)
        idx = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:events] if n > events else torch.arange(n)
        y, cond = self.preprocessing.forward(data.x[idx], None if data.cond is None else data.cond[idx])
        y, cond = y.float(), None if cond is None else cond.float()
        if self.has_energy_stage:
            y, cond, _ = self.split_stages(y, cond)
        device = self._device()
        dtype = autocast_dtype(self.config.get("sample_precision", "fp32"), device, name="sample_precision")
        generator = torch.Generator(device=device).manual_seed(seed)
        was_training = self.training
        self.eval()
        try:
            with torch.autocast(device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
                logits = self.sample_in_blocks(
                    lambda k, c, g: self.hit_logits(k, c, g).float(), len(y), None if cond is None else cond.to(device), generator,
                ).cpu()
        finally:
            self.train(was_training)
        hit = y > self._empty.cpu() + EMPTY_TOL
        pool = self.config.get("hit_pool")
        groups = None if pool == "voxel" else self.azimuthal_orbits(y.shape[1])
        a, b = fit_hit_shift(hit, energy_column(cond, len(y)), logits, groups=groups)
        self._hit_shift.copy_(torch.stack([a, b]))
        return True

    def split_stages(self, y: torch.Tensor, cond: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """Model-space ``y`` → (voxel part, its condition: ``cond`` + layer energies, layer energies)."""
        n = self.dims["energy_dim"]
        assert cond is not None
        ye = y[:, -n:]
        return y[:, :-n], torch.cat([cond, ye], 1), ye

    def spread_energy_point_masses(self, ye: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """The first stage's training input: each layer variable's point masses spread outside its range.

        A layer without energy has a share of exactly 0 (and the one before it, the
        last with energy, exactly 1): point masses at the ends of those columns, in up to
        89 % of the W/Si showers for the deepest layers. A continuous flow smears them
        into a continuum of tiny layer energies (the median of the W/Si first stage's
        non-zero layer-35 energies at 10-30 GeV was 2·10⁻⁷ of E_inc, Geant4's 6·10⁻⁴),
        which the readout cut then empties: 81 % of those layers came out empty, 59 % in
        Geant4. Spread uniformly over ``energy_point_mass_noise`` standardised units
        beyond the ends (as the flow's ``floor_noise`` does for empty voxels), they
        are a block the flow can fit, and its samples beyond an end map back to an
        exact 0 or 1 (docs/surrogates.md has the measurements).
        """
        from physgen.surrogates.flow import spread_point_masses

        width = float(self.config.get("energy_point_mass_noise", 0.0))
        bounds = getattr(self, "_energy_bounds", None)
        if not width or bounds is None:
            return ye
        return spread_point_masses(ye, bounds[0], bounds[1], width, generator)

    def energy_log_prob(self, ye: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """Exact log-density ``[B]`` of the first stage (layer energies given the condition)."""
        from physgen.surrogates.flow import standard_normal_log_prob

        z, logabsdet = self.energy(ye, context=cond)
        return standard_normal_log_prob(z) + logabsdet

    def shape_parameters(self) -> list[nn.Parameter]:
        """The family's own parameters (everything but the first stage)."""
        return [p for name, p in self.named_parameters() if not name.startswith("energy.")]

    def all_optimizers(self, cfg: TrainConfig) -> list[torch.optim.Optimizer]:
        """The family's optimisers, plus one Adam for the first stage when there is one."""
        opts = self.configure_optimizers(cfg)
        if self.has_energy_stage:
            opts.append(torch.optim.Adam(self.energy.parameters(), lr=float(self.config.get("energy_lr", 1e-3))))
        return opts

    def train_step(
        self,
        model: nn.Module,
        y: torch.Tensor,
        cond: torch.Tensor | None,
        optimizers: list[torch.optim.Optimizer],
        ctx: TrainContext,
    ) -> dict[str, float]:
        """One step of the family (:meth:`train_batch`) and, with two stages, of the layer-energy flow."""
        if not self.has_energy_stage:
            return self.train_batch(model, y, cond, optimizers, ctx)
        assert cond is not None
        ys, cs, ye = self.split_stages(y, cond)
        logs = self.train_batch(model, ys, cs, optimizers[:-1], ctx)
        opt = optimizers[-1]
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        for _ in range(int(self.config.get("energy_steps", self.energy_steps))):
            opt.zero_grad(set_to_none=True)
            nll = -self.energy_log_prob(self.spread_energy_point_masses(ye), cond).mean() / ye.shape[1]
            nll.backward()
            if distributed:
                # the first stage runs outside DDP's forward: average its gradients by hand
                world = torch.distributed.get_world_size()
                for p in self.energy.parameters():
                    if p.grad is not None:
                        torch.distributed.all_reduce(p.grad)
                        p.grad /= world
            if ctx.cfg.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(list(self.energy.parameters()), ctx.cfg.grad_clip)
            opt.step()
        logs["energy_nll"] = float(nll.detach())
        logs["loss"] = logs["loss"] + logs["energy_nll"]
        return logs

    @torch.no_grad()
    def validation_total(self, y: torch.Tensor, cond: torch.Tensor | None) -> float:
        """The family's validation loss plus, with two stages, the first stage's NLL per feature."""
        return self.validation_parts(y, cond)["val_loss"]

    @torch.no_grad()
    def validation_parts(self, y: torch.Tensor, cond: torch.Tensor | None) -> dict[str, float]:
        """What the training loop records each epoch: ``val_loss`` (:meth:`validation_total`, which
        early stopping watches) and, with two stages, ``val_energy_nll``, the first stage's share of it
        (its NLL per layer variable): whether the first stage still improves, or over-fits, shows there.
        """
        if not self.has_energy_stage:
            return {"val_loss": self.validation_loss(y, cond)}
        ys, cs, ye = self.split_stages(y, cond)
        was_training = self.training
        self.eval()
        # the spread point masses with the same draws every epoch: without them the density at a point mass grows without bound
        ye = self.spread_energy_point_masses(ye, torch.Generator(device=ye.device).manual_seed(0))
        nll = -float(torch.cat([self.energy_log_prob(ye[s : s + 4096], cond[s : s + 4096]) for s in range(0, len(ye), 4096)]).mean()) / ye.shape[1]
        self.train(was_training)
        return {"val_loss": self.validation_loss(ys, cs) + nll, "val_energy_nll": nll}

    def ddp_ignored_names(self) -> list[str]:
        """Parameters and buffers DDP must leave alone: the first stage's, whose gradients are reduced by hand."""
        return [n for n, _ in [*self.named_parameters(), *self.named_buffers()] if n.startswith("energy.")]

    def sample_all(
        self, n: int, cond: torch.Tensor | None, generator: torch.Generator, dtype: torch.dtype | None = None, joined: bool = True
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Model-space samples of the whole event: layer energies first (two stages), then the family.

        ``dtype`` (bfloat16 or float16) runs the family's networks under autocast;
        the state they update and the first stage's splines stay float32. With
        ``joined=False`` a two-stage model returns ``(voxels, layer energies)``
        unjoined (:meth:`Pipeline.inverse` takes both).
        """
        ye = None
        if self.has_energy_stage:
            from physgen.surrogates.flow import sample_inverse

            assert cond is not None
            z = torch.randn(n, self.dims["energy_dim"], generator=generator, device=cond.device)
            ye = sample_inverse(self.energy, z, cond)
            cond = torch.cat([cond, ye], 1)
        with torch.autocast(self._device().type, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            y = self.sample_model(n, cond, generator).float()
        if ye is None:
            return y
        return torch.cat([y, ye], 1) if joined else (y, ye)

    def log_prob_all(self, y: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        """Model-space log-density of whole events: log p(voxels | c, E_layers) + log p(E_layers | c)."""
        if not self.has_energy_stage:
            return self.log_prob_model(y, cond)
        ys, cs, ye = self.split_stages(y, cond)
        assert cond is not None
        return self.log_prob_model(ys, cs) + self.energy_log_prob(ye, cond)

    @property
    def is_conditional(self) -> bool:
        return self.dims.get("cond_dim", 0) > 0

    def fit(self, data: Data, preprocessing: Pipeline | None = None, **train_config: Any) -> list[dict[str, Any]]:
        """Train on ``data`` (physics units); returns the per-epoch history.

        Args:
            data: training data; a validation split is taken from it (``val_fraction``).
            preprocessing: a pipeline to fit instead of :meth:`default_preprocessing`.
            **train_config: fields of :class:`physgen.surrogates.training.TrainConfig`
                (epochs, batch_size, lr, device, precision, checkpoint_dir, resume, ...).
        """
        from physgen.surrogates.training import TrainConfig, train

        history = train(self, data, TrainConfig(**{**self.train_defaults, **train_config}), preprocessing=preprocessing)
        self.recalibrate(data, seed=int(train_config.get("seed", 0)))
        return history

    def recalibrate(
        self, data: Data, seed: int = 0, hit_calibration: bool | None = None, value_calibration: bool | None = None,
        readout_floor: bool | None = None,
    ) -> None:
        """Fit the calibrations :meth:`fit` ends with again, on ``data`` (the training showers, physics units).

        :meth:`calibrate_hits`, then :meth:`calibrate_readout`. ``hit_calibration=True``
        turns the hit calibration on first, for a model saved before it existed (it needs
        ``empty_mass`` or ``hit_bits``); ``False`` turns it off; None keeps the model's setting.
        ``value_calibration`` does the same for the readout's hit-value map, and
        ``readout_floor`` for the floor of the per-voxel cuts at the global threshold.
        """
        if not self.is_fitted:
            raise InvalidDataError(f"{self.family} surrogate is not fitted: call fit(data) or load(dir) first")
        for name, value in (("value_calibration", value_calibration), ("readout_floor", readout_floor)):
            if value is not None:
                self.config[name] = _flag(name, value)
        if hit_calibration is not None:
            if hit_calibration and not self.has_hit_logits:
                raise InvalidDataError("hit_calibration shifts a family's hit logits: this model has neither empty_mass nor hit_bits")
            if hit_calibration and not self.config.get("hit_calibration"):
                self.register_buffer("_hit_shift", torch.zeros(2, self.dims["dim"], device=self._device()))
            elif not hit_calibration and self.config.get("hit_calibration"):
                del self._hit_shift
            self.config["hit_calibration"] = bool(hit_calibration)
        self.calibrate_hits(data, seed=seed)
        self.calibrate_readout(data, seed=seed)

    def _readout_settings(self) -> tuple[int, int]:
        bins = self.config.get("readout_bins", 4)
        events = self.config.get("readout_events", 20_000)
        if isinstance(bins, bool) or not isinstance(bins, int) or bins < 0:
            raise InvalidDataError(f"readout_bins must be an integer ≥ 0 (0: global threshold only); got {bins!r}")
        if isinstance(events, bool) or not isinstance(events, int) or events < 1:
            raise InvalidDataError(f"readout_events must be a positive integer; got {events!r}")
        _flag("readout_floor", self.config.get("readout_floor", True))
        if _flag("value_calibration", self.config.get("value_calibration", False)) and bins == 0:
            raise InvalidDataError("value_calibration maps hit values per incident-energy bin of the readout calibration: it needs readout_bins ≥ 1")
        return bins, events

    def calibrate_readout(self, data: Data, seed: int = 0) -> bool:
        """Fit the readout threshold's per-voxel cuts to ``data``'s occupancy (see :class:`ReadoutThreshold`).

        Runs at the end of :meth:`fit` for pipelines with a readout threshold:
        draws pre-cut samples at (up to ``readout_events``, default 20,000, of)
        the training conditions and fits one threshold per voxel and
        incident-energy bin (``readout_bins``, default 4; 0 keeps the global cut
        only). With ``value_calibration`` (default off) it also fits the map of the
        read-out hits' layer shares to ``data``'s, per energy bin and azimuthal orbit
        (:meth:`azimuthal_orbits`: W/Si's and PbWO4's rings; single voxels without the symmetry). Returns whether a calibration was fitted.
        """
        bins, events = self._readout_settings()
        transforms = self.preprocessing.x_transforms if self.preprocessing is not None else []
        cut = next((t for t in transforms if isinstance(t, ReadoutThreshold)), None)
        if cut is None or bins == 0 or data.x.ndim != 2 or (self.is_conditional and data.cond is None):
            return False
        n = len(data)
        idx = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:events] if n > events else torch.arange(n)
        cond = None if data.cond is None else data.cond[idx]
        cut.active = False
        try:
            generated = self.sample(cond, n=None if self.is_conditional else len(idx), seed=seed).x
        finally:
            cut.active = True
        values = bool(self.config.get("value_calibration", False))
        geometry = self.schema.geometry if self.schema is not None else None
        if values and geometry is None:
            raise InvalidDataError(f"value_calibration maps hit values per ring of the calorimeter: the {self.family} surrogate's data have no geometry")
        rings = None
        if values:  # the rings hit_pool and augment use: a voxel's orbit under the rotations and mirrors, else the voxel alone
            rings = self.azimuthal_orbits(data.x.shape[1])
            rings = torch.arange(data.x.shape[1]) if rings is None else rings
        cut.calibrate(data.x[idx], cond, generated, cond, bins=bins, values=values, rings=rings, floor=self.config.get("readout_floor", True))
        return True

    def _device(self) -> torch.device:
        for p in self.parameters():
            return p.device
        for b in self.buffers():
            return b.device
        return torch.device("cpu")

    @torch.no_grad()
    def sample(
        self,
        cond: torch.Tensor | Data | Any | None = None,
        n: int | None = None,
        *,
        seed: int | None = None,
        batch_size: int = 10_000,
        precision: str | None = None,
    ) -> Data:
        """Draw samples in physics units.

        Args:
            cond: ``[B, C]`` conditions in physics units (or a ``Data`` whose
                ``cond`` to use) for conditional surrogates: one sample per row.
            n: number of samples for unconditional surrogates.
            seed: makes the samples reproducible.
            batch_size: rows per forward pass.
            precision: ``"fp32"``, ``"bf16"`` or ``"fp16"`` (CUDA) for the family's
                networks; default the model's ``sample_precision`` (``"fp32"`` unless set).
                bf16 runs the matrix products at about 2.7x fp32's rate on CPUs with
                AVX512-BF16 or AMX; the readout cuts are fitted at the model's own precision.

        Returns:
            ``Data`` with ``x`` ``[B, *event_shape]`` (float32, physics units) and ``cond``.
        """
        if not self.is_fitted or self.preprocessing is None or self.schema is None:
            raise InvalidDataError(f"{self.family} surrogate is not fitted: call fit(data) or load(dir) first")
        if isinstance(cond, Data):
            cond = cond.cond
        if self.is_conditional:
            if cond is None:
                raise InvalidDataError(f"this {self.family} surrogate is conditional: pass cond [B, {self.dims['cond_dim'] - self.dims.get('energy_dim', 0)}] in physics units")
            cond_t = torch.as_tensor(cond, dtype=torch.float32)
            if cond_t.ndim == 1:
                cond_t = cond_t[:, None]
            if n is not None and n != cond_t.shape[0]:
                raise InvalidDataError(f"n={n} disagrees with the {cond_t.shape[0]} condition rows; give one or the other")
            total = cond_t.shape[0]
        else:
            if n is None:
                raise InvalidDataError(f"this {self.family} surrogate is unconditional: pass n (number of samples)")
            cond_t, total = None, int(n)
        if total < 1:
            raise InvalidDataError(f"asked for {total} samples; expected at least 1")
        precision = self.config.get("sample_precision", "fp32") if precision is None else precision
        dtype = autocast_dtype(precision, self._device(), name="sample_precision")
        generator = torch.Generator(device=self._device())
        generator.manual_seed(int(seed) if seed is not None else int(torch.randint(0, 2**62, (1,)).item()))
        # eval mode for the draw, and back after: only the modules in training mode are switched (a W/Si model's
        # ~100 modules each way cost ~0.6 ms, a fifth of drawing one PbWO4 shower)
        training = [m for m in self.modules() if m.training]
        for m in training:
            m.training = False
        parts = []
        try:
            for start in range(0, total, batch_size):
                stop = min(start + batch_size, total)
                raw = None if cond_t is None else cond_t[start:stop]
                model_cond = None if raw is None else self.preprocessing.forward_cond(raw).float().to(self._device())
                y = self.sample_all(stop - start, model_cond, generator, dtype, joined=False)
                y = [p.float().cpu() for p in y] if isinstance(y, tuple) else y.float().cpu()
                parts.append(self.postprocess(self.preprocessing.inverse(y, raw)))
        finally:
            for m in training:
                m.training = True
        x = parts[0] if len(parts) == 1 else torch.cat(parts)  # one batch: no 260 MB copy (10,000 W/Si showers)
        return Data(x, self.schema, cond=cond_t, validate=False)

    def postprocess(self, x: torch.Tensor) -> torch.Tensor:
        """Physics-unit clean-up of samples (non-negative energies, binary spins)."""
        if self.schema is not None and self.schema.kind == "calorimeter":
            return x.clamp_min_(0)  # in place: x is the inverse's fresh output
        if self.schema is not None and self.schema.kind == "spins":
            return (x > 0.5).float()
        return x

    @torch.no_grad()
    def log_prob(self, data: Data) -> torch.Tensor:
        """Log-density ``[N]`` of ``data`` in the model's (preprocessed) space.

        Exact, a lower bound or unnormalised as :attr:`capabilities` says.
        Densities are per model-space volume: compare surrogates that share a
        preprocessing, or add the pipeline's log-Jacobian yourself.
        """
        if not self.capabilities.has_log_prob:
            raise InvalidDataError(f"the {self.family} surrogate has no log_prob (capabilities: {self.capabilities})")
        if self.preprocessing is None:
            raise InvalidDataError(f"{self.family} surrogate is not fitted")
        y, c = self.preprocessing.forward(data.x, data.cond)
        self.eval()
        return self.log_prob_all(y.float().to(self._device()), None if c is None or not self.is_conditional else c.float().to(self._device())).cpu()

    # -- persistence -----------------------------------------------------------------
    def checkpoint_config(self) -> dict[str, Any]:
        from physgen import __version__

        if self.preprocessing is None or self.schema is None:
            raise CheckpointError(f"cannot save an unfitted {self.family} surrogate")
        return {
            "family": self.family,
            "physgen_version": __version__,
            "hyperparameters": self.config,
            "dims": self.dims,
            "schema": self.schema.to_dict(),
            "preprocessing": self.preprocessing.to_dict(),
            "capabilities": asdict(self.capabilities),
        }

    def save(self, directory: str | Path, training_state: dict[str, Any] | None = None) -> Path:
        """Save weights (safetensors) and config (JSON) to ``directory``, atomically."""
        return ckpt.write_checkpoint(directory, self, self.checkpoint_config(), training_state)

    @classmethod
    def load(cls, directory: str | Path) -> Surrogate:
        """Load a saved surrogate; ``Surrogate.load`` picks the family from the config.

        Raises:
            CheckpointError: incomplete directory, unknown family, newer format, mismatched weights.
        """
        from physgen.surrogates import registry

        config = ckpt.read_config(directory)
        family = config.get("family")
        try:
            family_cls = registry.get(str(family))
        except UnknownNameError as exc:
            raise CheckpointError(f"checkpoint {str(directory)!r}: {exc}") from exc
        if cls is not Surrogate and family_cls is not cls:
            raise CheckpointError(f"checkpoint {str(directory)!r} holds a {family!r} surrogate, not {cls.family!r}")
        hyper = config.get("hyperparameters", {})
        base_defaults = BASE_CHECKPOINT_DEFAULTS if "energy_flow" in hyper else {}  # options of the first stage, where there is one
        model = family_cls(**{**base_defaults, **family_cls.checkpoint_defaults, **hyper})
        model.schema = Schema.from_dict(config["schema"])
        model.preprocessing = Pipeline.from_dict(config["preprocessing"])
        model.dims = {k: int(v) for k, v in config["dims"].items()}
        model.build_all()
        ckpt.load_weights(model, directory)
        state = ckpt.read_training_state(directory)
        if state is not None and "history" in state:
            model.history = list(state["history"])
        model.eval()
        return model

    def extra_repr(self) -> str:
        return f"family={self.family!r}, dims={self.dims}"
