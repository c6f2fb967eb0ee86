"""Interchangeable generative surrogates behind one :class:`Surrogate` interface.

>>> import physgen
>>> from physgen.surrogates import create
>>> model = create("gaussian")
>>> _ = model.fit(physgen.load_default())
>>> model.sample([[10_000.0], [50_000.0]], seed=0).x.shape
torch.Size([2, 768])
"""

from physgen.surrogates.base import Capabilities, Surrogate
from physgen.surrogates.registry import available, create, get
from physgen.surrogates.training import TrainConfig, TrainingDivergedError

__all__ = ["Surrogate", "Capabilities", "available", "create", "get", "load", "TrainConfig", "TrainingDivergedError"]


def load(directory: str) -> Surrogate:
    """Load any saved surrogate; the family comes from its config."""
    return Surrogate.load(directory)
