"""The calorimeter shower model: any family, composed with CaloFlow's two stages and the calorimeter's calibrations.

A shower is generated as CaloFlow and CaloDiffusion do, in two steps:

1. the **first stage**, a masked autoregressive spline flow
   (:class:`~physgen.surrogates.flow.FlowSurrogate`), models the layer energies given the
   incident energy (as CaloFlow's u-variables: the total, then each layer's share of what is left);
2. the **second stage**, any family, models each layer's voxel fractions given the incident
   energy and the layer energies. It is told the voxels' structure
   (:class:`~physgen.surrogates.structure.FeatureStructure`): their empty (floor) values, the
   layers as groups, and per-layer moments a critic may use.

Around them: the preprocessing (:func:`~physgen.calorimeter.preprocessing.calorimeter_pipeline`),
augmentation by the azimuthal symmetry (:mod:`physgen.calorimeter.symmetry`), and two
calibrations fitted after training, each a separate object with its own ``fit``: the hit
calibration (:class:`~physgen.calorimeter.hits.HitCalibration`) and the read-out
(:class:`~physgen.calorimeter.readout.ReadoutCalibration`). Settings that belong to a data set
live in presets (:mod:`physgen.calorimeter.presets`).

Example:
    >>> import physgen
    >>> from physgen.calorimeter import ShowerModel
    >>> showers = physgen.load_default()[:300]
    >>> model = ShowerModel("vae", latent=8, hidden=32, layers=1)
    >>> _ = model.fit(showers, epochs=1, progress=False)
    >>> model.sample(showers.cond[:2], seed=0).x.shape
    torch.Size([2, 768])
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from physgen.calorimeter.hits import HitCalibration
from physgen.calorimeter.moments import ShowerMoments
from physgen.calorimeter.preprocessing import calorimeter_pipeline
from physgen.calorimeter.presets import load_preset
from physgen.calorimeter.readout import ReadoutCalibration
from physgen.calorimeter.symmetry import azimuthal_orbits, azimuthal_rows
from physgen.data import Data, FeatureGroups, LayerFractions, Logit, Pipeline, Schema, Standardise
from physgen.data.rows import Rows
from physgen.errors import ConfigError, InvalidDataError
from physgen.options import Options, option
from physgen.surrogates._common import check_data
from physgen.surrogates.base import Capabilities, Surrogate, SurrogateOptions
from physgen.surrogates.flow import (
    FlowOptions,
    FlowSurrogate,
    point_mass_bounds,
    spread_point_masses,
)
from physgen.surrogates.registry import checkpoint_class, get
from physgen.surrogates.structure import FeatureStructure
from physgen.training import TrainConfig, TrainContext
from physgen.training.optim import adam

__all__ = ["ENERGY_FLOW_DEFAULTS", "ShowerModel", "ShowerOptions"]

#: the first stage's size (``energy_flow={...}`` overrides any of it)
ENERGY_FLOW_DEFAULTS: dict[str, Any] = {"n_layers": 2, "hidden": 64, "n_blocks": 1, "coupling": "autoregressive", "bins": 8}
_ENERGY_FLOW_KEYS = ("n_layers", "hidden", "n_blocks", "mixing", "clamp", "dropout", "coupling", "bins", "tail_bound")


@dataclasses.dataclass(frozen=True)
class ShowerOptions(SurrogateOptions):
    """Options of the calorimeter shower model (``ShowerModel(family, **options)``); the family's own options go alongside."""

    two_stage: bool | None = option(None, "model the layer energies first, then the voxels given them (None: wherever the showers have a geometry)")
    energy_flow: dict[str, Any] = option(ENERGY_FLOW_DEFAULTS, "the first stage's flow: n_layers, hidden, n_blocks, coupling, bins, mixing, clamp, dropout, tail_bound")
    energy_steps: int = option(1, "first-stage optimiser steps per family step (the presets give slow families more)", ge=1)
    energy_lr: float = option(1e-3, "Adam learning rate of the first stage", gt=0)
    energy_point_mass_noise: float = option(0.5, "width (standardised units) over which the first stage's training spreads the point masses of empty layers", ge=0)
    logit_alpha: float = option(1e-3, "α of the logit of the voxel fractions", gt=0, lt=0.5)
    standardise_min_std: float = option(0.2, "floor of the voxels' standard deviations in logit units (a wider floor keeps rare hits' values in range)", ge=0)
    dequantise_mev: float | None = option(None, "add U(0, this) MeV to training voxels, and cut samples below it (None: off)", gt=0)
    readout_quantile: float | None = option(0.005, "global read-out threshold: this quantile of the training showers' non-zero voxel energies (None: no read-out)", ge=0, lt=1)
    readout_bins: int = option(4, "incident-energy bins of the per-voxel read-out cuts fitted after training (0: the global threshold only)", ge=0)
    readout_events: int = option(20_000, "at most this many training showers fit the calibrations", ge=1)
    readout_floor: bool = option(True, "keep each per-voxel read-out cut at or above the global threshold")
    value_calibration: bool = option(False, "after the cuts, map each ring's read-out hit values to the training showers' (needs readout_bins ≥ 1)")
    hit_calibration: bool = option(False, "shift the family's hit logits so it draws the training showers' hits (families with point-mass logits)")
    hit_pool: Literal["azimuthal", "voxel"] | None = option(None, "the hit calibration's lines: one per azimuthal ring or per voxel (None: per ring where the geometry has the symmetry)")

    def check(self, where: str) -> None:
        for key in self.energy_flow:
            if key not in _ENERGY_FLOW_KEYS:
                raise ConfigError.unknown(f"{where}.energy_flow", key, _ENERGY_FLOW_KEYS)
        FlowOptions.from_dict({**ENERGY_FLOW_DEFAULTS, **self.energy_flow}, where=f"{where}.energy_flow")
        if self.value_calibration and self.readout_bins == 0:
            raise ConfigError("value_calibration maps hit values per incident-energy bin of the read-out: it needs readout_bins ≥ 1", where=where, key="value_calibration")


def _resolve(cls: type[Options], preset: dict[str, Any], user: dict[str, Any], where: str, can: Callable[[str], bool] | None = None) -> tuple[Options, list[str]]:
    """``cls``'s options from a preset's values and the user's: a preset value applies where it can, the user's always apply (or fail)."""
    chosen = {**preset, **user}
    dropped = []
    if can is not None:
        for key, needs in cls.requirements().items():
            if chosen.get(key) and not all(can(n) for n in needs) and key not in user:
                chosen.pop(key)
                dropped.append(key)
    while True:
        try:
            return cls.from_dict(chosen, where=where), dropped
        except ConfigError as exc:
            if exc.key in chosen and exc.key in preset and exc.key not in user:
                chosen.pop(exc.key)
                dropped.append(exc.key)
                continue
            raise


class ShowerModel(Surrogate):
    """A calorimeter shower surrogate: ``family`` as the second stage of CaloFlow's two-stage design.

    Args:
        family: the family that models the voxels (a registered name, ``"module:Class"``, or a class).
        preset: a data set's settings (:func:`~physgen.calorimeter.presets.available_presets`, or a
            TOML path); the ``default`` preset always applies first.
        **options: shower-model options (:class:`ShowerOptions`) and the family's options, side by
            side; yours override the presets'.
    """

    family = "shower"
    Options = ShowerOptions
    options: ShowerOptions
    data_kinds = ("calorimeter",)

    def __init__(self, family: str | type[Surrogate] = "flow", *, preset: str | None = None, **options: Any):
        family_cls = get(family) if isinstance(family, str) else family
        if not (isinstance(family_cls, type) and issubclass(family_cls, Surrogate)) or issubclass(family_cls, ShowerModel):
            raise ConfigError(f"family must be a surrogate family; got {family!r}", where="shower", key="family")
        name = family_cls.family
        if "calorimeter" not in family_cls.data_kinds and "event" not in family_cls.data_kinds:
            raise ConfigError(f"the {name} family models {', '.join(family_cls.data_kinds)} data, not calorimeter showers", where="shower", key="family")
        where = f"shower({name})"
        shower_keys, family_keys = set(ShowerOptions.names()), set(family_cls.Options.names())
        for key in options:
            if key not in shower_keys | family_keys:
                raise ConfigError.unknown(where, key, shower_keys | family_keys, family_cls.Options.renamed)
        presets = [load_preset("default").get(name, {})] + ([load_preset(preset).get(name, {})] if preset is not None else [])
        merged = {k: v for p in presets for k, v in p.items()}
        for key in merged:
            if key not in shower_keys | family_keys:
                raise ConfigError.unknown(f"preset {preset or 'default'} [{name}]", key, shower_keys | family_keys)
        shower_preset = {k: v for k, v in merged.items() if k in shower_keys}
        shower_user = {k: v for k, v in options.items() if k in shower_keys}
        shower, _ = _resolve(ShowerOptions, shower_preset, shower_user, where)
        super().__init__(**shower.to_dict())
        self.user_options = {"family": family if isinstance(family, str) else f"{family_cls.__module__}:{family_cls.__qualname__}", "preset": preset,
                             **{k: v for k, v in self.Options.from_dict(shower_user, where=where).to_dict().items() if k in shower_user}}
        self.family_cls = family_cls
        self.capabilities = Capabilities(**{**dataclasses.asdict(family_cls.capabilities), "conditional": True})
        self.train_defaults = dict(family_cls.train_defaults)
        # the family's options: the presets' where they apply, the user's always; hit_calibration needs the family's logit shift
        self._family_preset = {k: v for k, v in merged.items() if k in family_keys}
        self._family_user = {k: v for k, v in options.items() if k in family_keys}
        self.user_options.update(self._family_user)
        if shower.hit_calibration:
            target = self._family_user if "hit_calibration" in shower_user else self._family_preset
            target.setdefault("logit_shift", True)
        self._family_options(None)  # bad family options fail here, before any data is read
        self.inner: Surrogate | None = None
        self.layer_energy: FlowSurrogate | None = None
        self.readout: ReadoutCalibration | None = None

    def _family_options(self, structure: FeatureStructure | None) -> dict[str, Any]:
        """The family's options, resolved against what ``structure`` provides (None: not known yet)."""
        can = None if structure is None else structure.provides
        try:
            opts, dropped = _resolve(self.family_cls.Options, self._family_preset, self._family_user, f"shower({self.family_cls.family})", can)
        except ConfigError as exc:
            if exc.key == "logit_shift" and self.options.hit_calibration:
                raise ConfigError(
                    f"hit_calibration shifts a family's hit logits: the {self.family_cls.family} family needs point_mass (vae, wgan) or analog_bits (diffusion)",
                    where="shower", key="hit_calibration",
                ) from exc
            raise
        if "logit_shift" in dropped and self.options.hit_calibration:
            self.options = dataclasses.replace(self.options, hit_calibration=False)
        self.resolved["dropped_preset_options"] = dropped
        return {k: v for k, v in opts.to_dict().items() if k in self._family_preset or k in self._family_user}

    # -- the data and the two stages --------------------------------------------------------
    @property
    def name(self) -> str:  # type: ignore[override]
        return f"shower({self.family_cls.family})"

    @property
    def two_stage(self) -> bool:
        return self.dims.get("energy_dim", 0) > 0

    @property
    def ddp_find_unused_parameters(self) -> bool:  # type: ignore[override]
        return bool(getattr(self.inner, "ddp_find_unused_parameters", False))

    def default_preprocessing(self, data: Data) -> Pipeline:
        """CaloFlow's split: layer energies set the total, fractions shape each layer (:func:`calorimeter_pipeline`)."""
        o = self.options
        return calorimeter_pipeline(self._layer_sizes(data.schema), alpha=o.logit_alpha, noise=o.dequantise_mev, min_std=o.standardise_min_std,
                                    cond_units=data.schema.cond_units)

    @staticmethod
    def _layer_sizes(schema: Schema | None) -> list[int] | None:
        geo = None if schema is None else schema.geometry
        return None if geo is None else [la.n_voxels for la in geo.layers]

    def prepare(self, data: Data, preprocessing: Pipeline | None = None, rows: Rows | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Fit the preprocessing and the read-out's global threshold on ``data``, build both stages, return model-space tensors.

        With ``rows`` (the augmented training set), the preprocessing fits on a streamed pass over them
        and the tensors are an initialisation sample (:meth:`Surrogate.fit_preprocessing`); the read-out's
        threshold, a quantile of voxel energies that rotations do not change, fits on ``data``.
        """
        check_data(self, data, preprocessing)
        if data.cond is None:
            raise InvalidDataError("the shower model needs each shower's incident energy (cond [N, ≥1], MeV)")
        o = self.options
        self.readout = None
        if o.readout_quantile is not None:
            self.readout = ReadoutCalibration(quantile=o.readout_quantile, layer_sizes=self._layer_sizes(data.schema)).fit_threshold(data.x)
        y, c = self.fit_preprocessing(data, preprocessing, rows)
        n_energy = self._energy_dim(c)
        self.resolved["two_stage"] = n_energy > 0
        self.dims = {"event_dim": int(data.x.shape[1]), "dim": int(y.shape[1]), "cond_dim": 0 if c is None else int(c.shape[1]), "energy_dim": n_energy}
        self._build(None)
        if n_energy:
            self._energy_bounds = point_mass_bounds(y[:, -n_energy:])
            ys, cs, _ = self.split_stages(y, c)
        else:
            ys, cs = y, c
        assert self.inner is not None
        self.inner.initialise(ys, cs)
        return y, c

    def _energy_dim(self, cond: torch.Tensor | None) -> int:
        """Layer-energy features of the first stage (0 for a one-stage model)."""
        wanted = self.options.two_stage
        assert self.preprocessing is not None
        stages = [t for t in self.preprocessing.x_transforms if isinstance(t, LayerFractions)]
        if wanted is False:
            return 0
        if cond is None or not stages:
            if wanted is None:
                return 0
            raise ConfigError(
                "two_stage needs showers with a geometry (the preprocessing's LayerFractions step splits the layer energies off) "
                "and their incident energies", where="shower", key="two_stage",
            )
        return len(stages[-1].layer_sizes)

    def _logit_standardise_tail(self) -> tuple[Logit, Standardise] | None:
        steps = [] if self.preprocessing is None else self.preprocessing.x_transforms
        tail = steps[-2:]
        if len(tail) == 2 and isinstance(tail[0], Logit) and isinstance(tail[1], Standardise):
            return tail[0], tail[1]
        return None

    def structure(self, n_voxels: int) -> FeatureStructure:
        """What the second stage is told about its ``n_voxels`` features: floors, layers, moments, grid (where they apply)."""
        tail = self._logit_standardise_tail()
        geometry = None if self.schema is None else self.schema.geometry
        floor = groups = summaries = grid = None
        if tail is not None and self.two_stage:  # the empty value; offered with the first stage, which gives each layer's energy
            logit, std = tail
            width = len(std.params()[0])
            floor = std.forward(logit.forward(torch.zeros(1, width), None), None)[0, :n_voxels].float()
        if geometry is not None and geometry.n_voxels == n_voxels:
            groups = FeatureGroups([la.n_voxels for la in geometry.layers if la.n_voxels])
            fractions = [] if self.preprocessing is None else [t for t in self.preprocessing.x_transforms if isinstance(t, LayerFractions)]
            if tail is not None and self.two_stage and len(fractions) == 1 and fractions[0].n_voxels == n_voxels:
                summaries = ShowerMoments(geometry, tail[0], tail[1], n_voxels)
            shapes = {(la.n_alpha, la.n_r) for la in geometry.layers}
            if geometry.kind == "polar" and len(shapes) == 1:
                grid = (geometry.n_layers, *shapes.pop())
        return FeatureStructure(floor=floor, groups=groups, summaries=summaries, grid=grid)

    def _build(self, inner_options: dict[str, Any] | None) -> None:
        n = self.dims["energy_dim"]
        n_voxels, cond_dim = self.dims["dim"] - n, self.dims["cond_dim"]
        structure = self.structure(n_voxels)
        if inner_options is None:
            inner_options = self._family_options(structure)
        self.resolved["family_options"] = inner_options
        if self.options.hit_pool == "azimuthal" and azimuthal_orbits(None if self.schema is None else self.schema.geometry, n_voxels) is None:
            raise ConfigError("hit_pool='azimuthal' needs showers on a polar geometry with more than one angular bin", where="shower", key="hit_pool")
        self.inner = self.family_cls(**inner_options)
        self.inner.setup(n_voxels, cond_dim + n, structure)
        self.layer_energy = None
        if n:
            self.layer_energy = FlowSurrogate(**{**ENERGY_FLOW_DEFAULTS, **self.options.energy_flow})
            self.layer_energy.setup(n, cond_dim)

    def split_stages(self, y: torch.Tensor, cond: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Model-space ``y`` → (voxel part, its condition: ``cond`` + layer energies, layer energies)."""
        n = self.dims["energy_dim"]
        assert cond is not None
        ye = y[:, -n:]
        return y[:, :-n], torch.cat([cond, ye], 1), ye

    def spread_energy_point_masses(self, ye: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """The first stage's training input: each layer variable's point masses spread outside its range.

        A layer without energy has a share of exactly 0 (and the one before it exactly 1): point
        masses a continuous flow smears into a continuum of tiny layer energies, which the read-out
        then empties. Spread uniformly over ``energy_point_mass_noise`` standardised units beyond
        the ends, they are a block the flow can fit, and its samples beyond an end map back to an
        exact 0 or 1.
        """
        width = self.options.energy_point_mass_noise
        bounds = getattr(self, "_energy_bounds", None)
        if not width or bounds is None:
            return ye
        return spread_point_masses(ye, bounds[0], bounds[1], width, generator)

    # -- training ---------------------------------------------------------------------------
    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """The family's loss (what DDP wraps)."""
        assert self.inner is not None
        return self.inner(*args, **kwargs)

    def training_rows(self, data: Data | Rows, copies: int, seed: int = 0) -> Rows:
        """``data`` and ``copies − 1`` rotated or mirrored versions of each shower, gathered per batch (:func:`~physgen.calorimeter.symmetry.azimuthal_rows`)."""
        return azimuthal_rows(data, copies, seed=seed)

    def solve(
        self, y: torch.Tensor, c: torch.Tensor | None, y_val: torch.Tensor | None, c_val: torch.Tensor | None,
    ) -> list[dict[str, Any]] | None:
        """The family's closed form, where it has one (a one-stage model only: the first stage is trained)."""
        assert self.inner is not None
        if self.layer_energy is None:
            return self.inner.solve(y, c, y_val, c_val)
        if self.inner.capabilities.closed_form:
            raise ConfigError(f"the {self.inner.family} family's closed form fits one joint model; set two_stage=false "
                              "(or a gradient solver) for it", where="shower", key="two_stage")
        return None

    def configure_optimizers(self, cfg: TrainConfig) -> list[torch.optim.Optimizer]:
        """The family's optimisers, plus one Adam for the first stage."""
        assert self.inner is not None
        opts = self.inner.configure_optimizers(cfg)
        if self.layer_energy is not None:
            opts.append(adam(self.layer_energy.parameters(), lr=self.options.energy_lr, compiled=cfg.compile))
        return opts

    def train_step(
        self, model: nn.Module, y: torch.Tensor, cond: torch.Tensor | None, optimizers: list[torch.optim.Optimizer], ctx: TrainContext,
    ) -> dict[str, float]:
        """One step of the family and, with two stages, ``energy_steps`` of the first stage."""
        assert self.inner is not None
        if self.layer_energy is None:
            return self.inner.train_step(model, y, cond, optimizers, ctx)
        ys, cs, ye = self.split_stages(y, cond)
        logs = self.inner.train_step(model, ys, cs, optimizers[:-1], ctx)
        opt = optimizers[-1]
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        energy_nll = ctx.compiled("energy_nll", self.energy_nll)
        params = list(self.layer_energy.parameters())
        for _ in range(self.options.energy_steps):
            opt.zero_grad(set_to_none=True)
            nll = energy_nll(ye, cond)
            nll.backward()
            if distributed:  # the first stage runs outside DDP's forward: average its gradients by hand
                world = torch.distributed.get_world_size()
                for p in params:
                    if p.grad is not None:
                        torch.distributed.all_reduce(p.grad)
                        p.grad /= world
            ctx.update(opt, params)
        logs["energy_nll"] = float(nll.detach())
        logs["loss"] = logs["loss"] + logs["energy_nll"]
        return logs

    def energy_nll(self, ye: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        """The first stage's training loss: NLL per layer variable of a batch, its point masses spread."""
        assert self.layer_energy is not None
        return -self.layer_energy.log_prob_model(self.spread_energy_point_masses(ye), cond).mean() / ye.shape[1]

    @torch.no_grad()
    def validation_metrics(self, y: torch.Tensor, cond: torch.Tensor | None) -> dict[str, float]:
        """``val_loss`` (the family's plus the first stage's NLL per layer variable) and ``val_energy_nll``, the latter alone."""
        assert self.inner is not None
        if self.layer_energy is None:
            return {"val_loss": self.inner.validation_loss(y, cond)}
        ys, cs, ye = self.split_stages(y, cond)
        was_training = self.training
        self.eval()
        # the spread point masses with the same draws every epoch: without them the density at a point mass grows without bound
        ye = self.spread_energy_point_masses(ye, torch.Generator(device=ye.device).manual_seed(0))
        assert cond is not None
        nll = -float(torch.cat([
            self.layer_energy.log_prob_model(ye[s : s + 4096], cond[s : s + 4096]) for s in range(0, len(ye), 4096)
        ]).mean()) / ye.shape[1]
        self.train(was_training)
        return {"val_loss": self.inner.validation_loss(ys, cs) + nll, "val_energy_nll": nll}

    def ddp_ignored_names(self) -> list[str]:
        """Parameters and buffers DDP must leave alone: the first stage's, whose gradients are reduced by hand."""
        return [n for n, _ in [*self.named_parameters(), *self.named_buffers()] if n.startswith("layer_energy.")]

    def after_fit(self, data: Data, seed: int = 0) -> None:
        self.recalibrate(data, seed=seed)

    def recalibrate(
        self, data: Data, seed: int = 0, hit_calibration: bool | None = None, value_calibration: bool | None = None,
        readout_floor: bool | None = None,
    ) -> None:
        """Fit the calibrations ``fit`` ends with again, on ``data`` (the training showers, physics units).

        The hit calibration (where on), then the read-out. ``hit_calibration``, ``value_calibration``
        and ``readout_floor`` switch those settings first (None keeps the model's).
        """
        self._require_fitted()
        assert self.inner is not None
        changes = {k: v for k, v in (("value_calibration", value_calibration), ("readout_floor", readout_floor)) if v is not None}
        if changes:
            self.options = self.options.replace(where="shower", **changes)
        if hit_calibration is not None:
            self._switch_hit_calibration(hit_calibration)
        if self.options.hit_calibration:
            self.resolved["hit_pool"] = HitCalibration(self.options.hit_pool, self.options.readout_events).fit(self, data, seed=seed)
        self.calibrate_readout(data, seed=seed)

    def _switch_hit_calibration(self, on: bool) -> None:
        inner = self.inner
        assert inner is not None
        has_logits = bool(getattr(inner.options, "point_mass", False) or getattr(inner.options, "analog_bits", False))
        if on and not has_logits:
            raise ConfigError("hit_calibration shifts a family's hit logits: this model has neither point_mass nor analog_bits", where="shower", key="hit_calibration")
        if on != inner.options.logit_shift:  # type: ignore[attr-defined]
            inner.options = inner.options.replace(where=inner.family, logit_shift=on)
            inner.user_options["logit_shift"] = on
            if on:
                inner.register_buffer("logit_shift", torch.zeros(2, inner.dims["dim"], device=inner.device()))
            else:
                del inner.logit_shift
        self.options = self.options.replace(where="shower", hit_calibration=on)

    def calibrate_readout(self, data: Data, seed: int = 0) -> bool:
        """Fit the read-out's per-voxel cuts (and, with ``value_calibration``, its value map) to ``data``; whether one was fitted."""
        o = self.options
        if self.readout is None or o.readout_bins == 0 or data.x.ndim != 2 or data.cond is None:
            return False
        n = len(data)
        idx = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[: o.readout_events] if n > o.readout_events else torch.arange(n)
        cond = data.cond[idx]
        generated = self.sample(cond, seed=seed, calibrated=False).x
        rings = None
        if o.value_calibration:
            geometry = None if self.schema is None else self.schema.geometry
            if geometry is None:
                raise InvalidDataError("value_calibration maps hit values per ring of the calorimeter: these showers have no geometry")
            rings = azimuthal_orbits(geometry, data.x.shape[1])
            rings = torch.arange(data.x.shape[1]) if rings is None else rings
        self.readout.calibrate(data.x[idx], cond, generated, cond, bins=o.readout_bins, values=o.value_calibration, rings=rings, floor=o.readout_floor)
        return True

    # -- sampling ---------------------------------------------------------------------------
    def sample_model(self, n: int, cond: torch.Tensor | None, generator: torch.Generator) -> torch.Tensor | tuple[torch.Tensor, ...]:
        """Layer energies first (outside autocast: the splines stay float32), then the family: ``(voxels, layer energies)``."""
        assert self.inner is not None
        if self.layer_energy is None:
            return self.inner.sample_model(n, cond, generator)
        assert cond is not None
        with torch.autocast(cond.device.type, enabled=False):
            ye = self.layer_energy.sample_model(n, cond, generator)
        y = self.inner.sample_model(n, torch.cat([cond, ye], 1), generator).float()
        return y, ye

    def log_prob_model(self, y: torch.Tensor, cond: torch.Tensor | None, **kwargs: Any) -> torch.Tensor:
        """log p(voxels | c, layer energies) + log p(layer energies | c)."""
        assert self.inner is not None
        if self.layer_energy is None:
            return self.inner.log_prob_model(y, cond, **kwargs)
        ys, cs, ye = self.split_stages(y, cond)
        return self.inner.log_prob_model(ys, cs, **kwargs) + self.layer_energy.log_prob_model(ye, cond)

    def output_step(self, calibrated: bool) -> Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor] | None:
        return self.readout.apply if calibrated and self.readout is not None else None

    def postprocess(self, x: torch.Tensor) -> torch.Tensor:
        return x.clamp_min_(0)  # in place: x is the inverse's fresh output

    # -- persistence ------------------------------------------------------------------------
    @classmethod
    def from_checkpoint(cls, config: dict[str, Any], directory: str | Path) -> Surrogate:
        family = config.get("options", {}).get("family")
        if isinstance(family, str) and ":" in family:
            checkpoint_class({"class": family}, directory)  # the inner family's module, imported only where allowed
        return super().from_checkpoint(config, directory)

    def checkpoint_config(self) -> dict[str, Any]:
        assert self.inner is not None
        config = super().checkpoint_config()
        self.resolved["shower"] = self.options.to_dict()
        config["resolved"] = self.resolved
        config["inner"] = {"family": self.inner.family, "options": self.inner.user_options}
        config["readout"] = None if self.readout is None else self.readout.to_dict()
        return config

    def restore(self, config: dict[str, Any], build: bool = True) -> None:
        super().restore(config, build=False)
        self.options = ShowerOptions.from_dict(self.resolved.get("shower", {}), where="shower")
        self.readout = None if config.get("readout") is None else ReadoutCalibration.from_dict(config["readout"])
        self._build(dict(config["inner"]["options"]))

    def extra_repr(self) -> str:
        return f"family={self.family_cls.family!r}, two_stage={self.two_stage}, dims={self.dims}"
