"""The calorimeter's preprocessing: CaloFlow's recipe from voxel energies to a model's space."""

from __future__ import annotations

from collections.abc import Sequence

from physgen.data.transforms import (
    Dequantise,
    LayerFractions,
    LogCondition,
    Logit,
    NormaliseByIncidentEnergy,
    Pipeline,
    Standardise,
    Transform,
)

__all__ = ["calorimeter_pipeline"]


def calorimeter_pipeline(
    layer_sizes: Sequence[int] | None = None,
    alpha: float = 1e-6,
    noise: float | None = None,
    min_std: float = 0.2,
    cond_units: Sequence[str] = (),
) -> Pipeline:
    """The CaloFlow-style preprocessing for showers conditioned on their incident energy.

    ``x``: (dequantisation with U(0, ``noise``) MeV and a ``noise`` MeV threshold on the way
    back, if given) → / E_inc → (layer fractions and CaloFlow's u-variables, if
    ``layer_sizes``) → logit → standardise (widths floored at ``min_std`` logit units, so a
    voxel that hardly any training shower hits does not blow up); ``cond``: log E_inc →
    standardise. With more conditions, ``cond_units`` says which are energies: only those (and
    column 0, the incident energy) are logged, so a signed condition such as an angle is welcome. The read-out calibration (:class:`~physgen.calorimeter.readout.ReadoutCalibration`)
    is not a step of it: it is fitted to the model's samples after training.
    """
    xt: list[Transform] = []
    if noise:
        xt.append(Dequantise(noise=noise, threshold=noise))
    xt.append(NormaliseByIncidentEnergy())
    if layer_sizes is not None:
        xt.append(LayerFractions(layer_sizes))
    xt += [Logit(alpha=alpha), Standardise(min_std=min_std)]
    columns = None
    if len(cond_units) > 1:
        from physgen.units import is_energy

        columns = [i for i, unit in enumerate(cond_units) if i == 0 or is_energy(unit)]
    return Pipeline(x=xt, cond=[LogCondition(columns=columns), Standardise()])
