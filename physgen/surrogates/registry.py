"""The closed registry of surrogate families: name → class, imported lazily.

>>> from physgen.surrogates import available
>>> "gaussian" in available()
True
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from physgen.errors import UnknownNameError

if TYPE_CHECKING:
    from physgen.surrogates.base import Surrogate

__all__ = ["available", "create", "get"]

# name -> "module:Class"; modules are imported on first use so that importing
# physgen does not import every family's dependencies
_FAMILIES: dict[str, str] = {
    "gaussian": "physgen.surrogates.gaussian:GaussianSurrogate",
    "flow": "physgen.surrogates.flow:FlowSurrogate",
    "diffusion": "physgen.surrogates.diffusion:DiffusionSurrogate",
    "vae": "physgen.surrogates.vae:VAESurrogate",
    "wgan": "physgen.surrogates.wgan:WGANSurrogate",
    "rbm": "physgen.surrogates.rbm:RBMSurrogate",
}


def available() -> list[str]:
    """Names of the registered surrogate families."""
    return sorted(_FAMILIES)


def get(name: str) -> type[Surrogate]:
    """The class registered as ``name``; an unknown name lists the valid ones."""
    if name not in _FAMILIES:
        raise UnknownNameError("surrogate", name, _FAMILIES)
    module, cls = _FAMILIES[name].split(":")
    return getattr(importlib.import_module(module), cls)


def create(name: str, **config: Any) -> Surrogate:
    """A new, unfitted surrogate of family ``name`` with hyperparameters ``config``.

    Example:
        >>> from physgen.surrogates import create
        >>> create("gaussian", degree=2).family
        'gaussian'
    """
    return get(name)(**config)
