"""Training: the shared loop (devices, mixed precision, DDP under torchrun, checkpoints, exact resume).

Nothing here knows a surrogate family: the loop calls the hooks of
:class:`~physgen.surrogates.Surrogate` (``prepare``, ``configure_optimizers``,
``train_step``, ``validation_metrics``, ``solve``) and saves through ``save``.
"""

from physgen.errors import TrainingDivergedError
from physgen.training.config import TrainConfig
from physgen.training.devices import autocast_dtype, resolve_device
from physgen.training.loop import TrainContext, train

__all__ = ["TrainConfig", "TrainContext", "TrainingDivergedError", "autocast_dtype", "resolve_device", "train"]
