"""The hit calibration: a shift of a family's point-mass logits, fitted so the model draws the training showers' hits."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import torch

from physgen.data import Data
from physgen.errors import ConfigError, InvalidDataError
from physgen.surrogates._common import in_blocks
from physgen.surrogates.point_mass import TOLERANCE, covariate, logistic_lines
from physgen.training.devices import autocast_dtype

if TYPE_CHECKING:
    from physgen.calorimeter.shower import ShowerModel

__all__ = ["HitCalibration", "fit_hit_shift"]


class HitCalibration:
    """Per voxel (or per ring of voxels), a line a + b·x in x = log E_inc (standardised) added to the family's hit logits.

    The read-out's cuts can only remove hits; this puts back those a family draws too rarely.
    :meth:`fit` draws the family's hit logits at (up to ``events`` of) the training conditions,
    the layer energies included, and fits the lines so that the shifted logits give the
    training showers' hits (:func:`fit_hit_shift`). It needs a family whose point masses
    have logits: the VAE and the WGAN with ``point_mass``, the diffusion with ``analog_bits``
    (their ``logit_shift`` holds the lines, saved with the weights).

    Args:
        pool: ``"azimuthal"``: the voxels of an orbit of the azimuthal rotations and mirrors
            share one line (the default where the geometry has that symmetry: fitted per
            voxel, the lines took up the training sample's occupancy noise); ``"voxel"``: one
            line per voxel.
        events: at most this many training showers are used.
    """

    def __init__(self, pool: Literal["azimuthal", "voxel"] | None = None, events: int = 20_000):
        self.pool, self.events = pool, events

    @torch.no_grad()
    def fit(self, model: ShowerModel, data: Data, seed: int = 0) -> str:
        """Fit the lines into ``model``'s family; returns the pooling used (``"azimuthal"`` or ``"voxel"``)."""
        from physgen.calorimeter.symmetry import azimuthal_orbits

        inner = model.inner
        if model.preprocessing is None or model.is_conditional and data.cond is None:
            raise InvalidDataError("the hit calibration needs a fitted shower model and showers with their incident energies")
        n = len(data)
        idx = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[: self.events] if n > self.events else torch.arange(n)
        y, cond = model.preprocessing.forward(data.x[idx], None if data.cond is None else data.cond[idx])
        y, cond = y.float(), None if cond is None else cond.float()
        if model.two_stage:
            y, cond, _ = model.split_stages(y, cond)
        device = model.device()
        dtype = autocast_dtype(model.options.sample_precision, device, name="sample_precision")
        generator = torch.Generator(device=device).manual_seed(seed)
        was_training = model.training
        model.eval()
        try:
            with torch.autocast(device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
                logits = in_blocks(
                    lambda k, c, g: inner.point_mass_logits(k, c, g).float(), len(y), None if cond is None else cond.to(device), generator, device,
                ).cpu()
        finally:
            model.train(was_training)
        hit = y > inner.floor.cpu() + TOLERANCE
        orbits = azimuthal_orbits(model.schema.geometry if model.schema is not None else None, y.shape[1])
        if self.pool == "azimuthal" and orbits is None:
            raise ConfigError("hit_pool='azimuthal' needs showers on a polar geometry with more than one angular bin", where="shower", key="hit_pool")
        pool = self.pool or ("azimuthal" if orbits is not None else "voxel")
        a, b = fit_hit_shift(hit, covariate(cond, len(y)), logits, groups=orbits if pool == "azimuthal" else None)
        inner.logit_shift.copy_(torch.stack([a, b]).to(inner.logit_shift.device))
        return pool


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
        a, b = logistic_lines(
            hit[:, v0:v1].double(), x, zero, zero.clone(), offset=logits[:, v0:v1].double(), steps=12, groups=local,
        )
        a_out[v0:v1], b_out[v0:v1] = a[local].float(), b[local].float()
    return a_out, b_out
