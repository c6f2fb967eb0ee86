"""Interchangeable generative surrogates behind one :class:`Surrogate` interface.

>>> from physgen.surrogates import create
>>> import torch
>>> from physgen.data import Data, Schema
>>> events = Data(torch.randn(500, 3), Schema(kind="event", feature_names=("a", "b", "c")))
>>> model = create("gaussian")
>>> _ = model.fit(events)
>>> model.sample(n=4, seed=0).x.shape
torch.Size([4, 3])
"""

from physgen.errors import TrainingDivergedError
from physgen.surrogates._common import chunk_seed
from physgen.surrogates.base import Capabilities, Surrogate, SurrogateOptions
from physgen.surrogates.registry import allow_module, available, create, get, load, register
from physgen.surrogates.structure import FeatureStructure
from physgen.training.config import TrainConfig

__all__ = [
    "Capabilities", "FeatureStructure", "Surrogate", "SurrogateOptions", "TrainConfig", "TrainingDivergedError", "allow_module",
    "available", "chunk_seed", "create", "get", "load", "register",
]
