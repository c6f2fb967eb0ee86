"""The registry of surrogate families: name → class, open to models from other packages.

A family is found by its registered name (``"flow"``), or by ``"module:Class"``. Three ways
to add one:

* :func:`register` (also as a class decorator) in your own code;
* an entry point in the group ``physgen.surrogates`` of an installed package
  (``[project.entry-points."physgen.surrogates"] mymodel = "mypkg.models:MyModel"``),
  which makes it appear in :func:`available` without importing it first;
* ``"mypkg.models:MyModel"`` wherever a family name is accepted (``create``, suites, the CLI).

Loading a checkpoint imports a class only from physgen itself, from a registered class's
module, an installed entry point's, or a module allowed with :func:`allow_module`: a
checkpoint cannot make physgen import arbitrary code.

>>> from physgen.surrogates import available
>>> "gaussian" in available()
True
"""

from __future__ import annotations

import importlib
import os
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from physgen.errors import CheckpointError, UnknownNameError
from physgen.surrogates.base import Surrogate
from physgen.training import checkpoint as ckpt

__all__ = ["allow_module", "available", "checkpoint_class", "create", "get", "load", "register"]

ENTRY_POINT_GROUP = "physgen.surrogates"

# name -> "module:Class" (imported on first use, so importing physgen does not import every family) or the class
_FAMILIES: dict[str, Any] = {
    "gaussian": "physgen.surrogates.gaussian:GaussianSurrogate",
    "flow": "physgen.surrogates.flow:FlowSurrogate",
    "diffusion": "physgen.surrogates.diffusion:DiffusionSurrogate",
    "vae": "physgen.surrogates.vae:VAESurrogate",
    "wgan": "physgen.surrogates.wgan:WGANSurrogate",
    "rbm": "physgen.surrogates.rbm:RBMSurrogate",
    "complex_rbm": "physgen.surrogates.complex_rbm:ComplexRBMSurrogate",
    "density_rbm": "physgen.surrogates.density_rbm:DensityRBMSurrogate",
    "shower": "physgen.calorimeter.shower:ShowerModel",
}
_ALLOWED_MODULES: set[str] = set()
_entry_points_loaded = False


def _load_entry_points() -> None:
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        _FAMILIES.setdefault(ep.name, ep.value)


def register(name: str, cls: type[Surrogate] | None = None) -> Any:
    """Register ``cls`` as family ``name``; as ``@register("name")`` it decorates the class.

    Raises:
        ValueError: ``name`` is taken by another class, or ``cls`` is not a Surrogate subclass.
    """
    def add(c: type[Surrogate]) -> type[Surrogate]:
        if not (isinstance(c, type) and issubclass(c, Surrogate)):
            raise TypeError(f"register({name!r}, ...) needs a Surrogate subclass; got {c!r}")
        current = _FAMILIES.get(name)
        if current is not None and current is not c and current != f"{c.__module__}:{c.__qualname__}":
            raise ValueError(f"surrogate name {name!r} is already registered ({current}); choose another name")
        _FAMILIES[name] = c
        if not c.family:
            c.family = name
        return c

    return add if cls is None else add(cls)


def allow_module(module: str) -> None:
    """Let :func:`checkpoint_class` import classes from ``module`` (and its submodules) when loading checkpoints.

    The environment variable ``PHYSGEN_ALLOW_MODULES`` (comma-separated) does the same.
    """
    _ALLOWED_MODULES.add(module)


def available() -> list[str]:
    """Names of the registered surrogate families (built-in, registered and from entry points)."""
    _load_entry_points()
    return sorted(_FAMILIES)


def _import(spec: str, what: str) -> type[Surrogate]:
    module, _, qualname = spec.partition(":")
    try:
        obj: Any = importlib.import_module(module)
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise UnknownNameError("surrogate", spec, _FAMILIES) from exc
    if not (isinstance(obj, type) and issubclass(obj, Surrogate)):
        raise UnknownNameError("surrogate", f"{spec} ({what} is not a physgen Surrogate subclass)", _FAMILIES)
    return obj


def get(name: str) -> type[Surrogate]:
    """The class registered as ``name``, or named by ``"module:Class"``; an unknown name lists the valid ones."""
    _load_entry_points()
    if name not in _FAMILIES:
        if ":" in name:
            return _import(name, name)
        raise UnknownNameError("surrogate", name, _FAMILIES)
    entry = _FAMILIES[name]
    if isinstance(entry, str):
        entry = _FAMILIES[name] = _import(entry, name)
    return entry


def create(name: str, **options: Any) -> Surrogate:
    """A new, unfitted surrogate of family ``name`` with ``options``.

    Example:
        >>> from physgen.surrogates import create
        >>> create("gaussian", degree=2).family
        'gaussian'
    """
    return get(name)(**options)


def _allowed(module: str) -> bool:
    allowed = _ALLOWED_MODULES | {m.strip() for m in os.environ.get("PHYSGEN_ALLOW_MODULES", "").split(",") if m.strip()}
    registered = {v.split(":")[0] if isinstance(v, str) else v.__module__ for v in _FAMILIES.values()}
    return module == "physgen" or module.startswith("physgen.") or module in registered or any(
        module == m or module.startswith(m + ".") for m in allowed
    )


def checkpoint_class(config: dict[str, Any], directory: str | Path) -> type[Surrogate]:
    """The class a checkpoint's ``config`` names, imported only from an allowed module (see :func:`allow_module`)."""
    _load_entry_points()
    spec = config.get("class")
    family = config.get("family")
    if not isinstance(spec, str) or ":" not in spec:
        if isinstance(family, str) and family in _FAMILIES:
            return get(family)
        raise CheckpointError(f"checkpoint {str(directory)!r}: names no known surrogate class (family {family!r}); valid: {', '.join(available())}")
    for name, entry in _FAMILIES.items():  # a registered class or an installed entry point's, by the name it was saved under
        if (entry if isinstance(entry, str) else f"{entry.__module__}:{entry.__qualname__}") == spec:
            return get(name)
    module = spec.partition(":")[0]
    if not _allowed(module):
        raise CheckpointError(
            f"checkpoint {str(directory)!r} was made by {spec}, from a module physgen does not import on a checkpoint's word; "
            f"import it yourself, register the class, or call physgen.surrogates.allow_module({module!r})"
        )
    try:
        return _import(spec, spec)
    except UnknownNameError as exc:
        raise CheckpointError(f"checkpoint {str(directory)!r}: {exc}") from exc


def load(directory: str | Path) -> Surrogate:
    """Load any saved surrogate; its class comes from the checkpoint (imported only from an allowed module).

    ``"zoo:NAME"`` loads a model shipped with physgen (:mod:`physgen.zoo`).

    Raises:
        CheckpointError: incomplete directory, unknown or disallowed class, newer format, invalid options, bad weights.
        UnknownNameError: a ``zoo:`` name that is not shipped (the message lists those that are).
    """
    if isinstance(directory, str) and directory.startswith("zoo:"):
        from physgen import zoo

        directory = zoo.path(directory)
    config = ckpt.read_config(directory)
    return checkpoint_class(config, directory).from_checkpoint(config, directory)
