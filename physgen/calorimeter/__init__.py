"""Calorimeter showers: the shower model that wraps any family, its calibrations, symmetry and presets.

>>> from physgen.calorimeter import ShowerModel, available_presets
>>> "wsi_electron" in available_presets()
True
"""

from physgen.calorimeter.hits import HitCalibration
from physgen.calorimeter.moments import ShowerMoments
from physgen.calorimeter.preprocessing import calorimeter_pipeline
from physgen.calorimeter.presets import available_presets, load_preset
from physgen.calorimeter.readout import ReadoutCalibration
from physgen.calorimeter.shower import ShowerModel, ShowerOptions
from physgen.calorimeter.symmetry import azimuthal_copies, azimuthal_orbits, azimuthal_rows

__all__ = [
    "HitCalibration", "ReadoutCalibration", "ShowerModel", "ShowerMoments", "ShowerOptions", "available_presets", "azimuthal_copies", "azimuthal_rows",
    "azimuthal_orbits", "calorimeter_pipeline", "load_preset",
]
