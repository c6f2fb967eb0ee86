"""The common tensors (:class:`Data`, :class:`Schema`), calorimeter geometry and invertible preprocessing."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from physgen.data.container import Data, Kind, Schema
from physgen.data.geometry import CalorimeterGeometry, Layer, official_binning, read_binning_xml
from physgen.data.groups import FeatureGroups
from physgen.data.transforms import (
    Dequantise,
    LayerFractions,
    Log,
    LogCondition,
    Logit,
    NormaliseByIncidentEnergy,
    Pipeline,
    Standardise,
    Transform,
)

__all__ = [
    "Data",
    "Schema",
    "Kind",
    "FeatureGroups",
    "CalorimeterGeometry",
    "Layer",
    "read_binning_xml",
    "official_binning",
    "Pipeline",
    "Transform",
    "NormaliseByIncidentEnergy",
    "LayerFractions",
    "Logit",
    "Log",
    "Standardise",
    "Dequantise",
    "LogCondition",
    "default_path",
]

DEFAULT_NAME = "pbwo4_gamma_2k.h5"


def default_path() -> Path:
    """Path of the embedded default sample: 2,000 Geant4 photon showers in PbWO4 (768 voxels).

    See ``datasets/pbwo4_gamma_2k.md`` for its card.
    """
    return Path(str(resources.files("physgen.data") / "embedded" / DEFAULT_NAME))
