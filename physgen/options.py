"""Typed options: every setting a component accepts, with its type, default, range and one line of docs.

Each surrogate family, the calorimeter's shower model and the training loop declare their
options as a frozen dataclass deriving from :class:`Options`, each field made with
:func:`option`. :meth:`Options.from_dict` is the one door user settings come through: an
unknown key raises :class:`~physgen.errors.ConfigError` naming the nearest valid ones, a
value of the wrong type or outside its range raises it too, and nothing is silently
converted (``n_layers=2.5`` is refused, not truncated). The options reference in the
documentation is generated from these declarations (``python -m physgen.options``).

Example:
    >>> from dataclasses import dataclass
    >>> @dataclass(frozen=True)
    ... class Net(Options):
    ...     width: int = option(64, "hidden units", ge=1)
    >>> Net.from_dict({"width": 32}, where="net").width
    32
    >>> Net.from_dict({"widht": 32}, where="net")
    Traceback (most recent call last):
    ...
    physgen.errors.ConfigError: net: unknown option 'widht'; did you mean 'width'? (valid: width)
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping
from typing import Any, ClassVar, Literal, TypeVar

from physgen.errors import ConfigError

__all__ = ["Options", "option", "options_reference"]

T = TypeVar("T", bound="Options")


def option(
    default: Any,
    doc: str,
    *,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    needs: str | tuple[str, ...] | None = None,
) -> Any:
    """A dataclass field of an :class:`Options` class: its default, one line of docs and its range.

    ``needs`` names what the option requires from the data's structure (e.g. ``"groups"``;
    see :class:`~physgen.surrogates.structure.FeatureStructure`), so a wrapper that cannot
    supply it can switch a preset's default off instead of failing.
    """
    meta = {"doc": doc, "ge": ge, "gt": gt, "le": le, "lt": lt, "needs": (needs,) if isinstance(needs, str) else tuple(needs or ())}
    if isinstance(default, dict | list):
        frozen = dict(default) if isinstance(default, dict) else list(default)
        return dataclasses.field(default_factory=lambda: type(frozen)(frozen), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (types.UnionType, typing.Union):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if tp is type(None):
        return "None"
    if isinstance(tp, type) and issubclass(tp, Options):
        return "table"
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, where: str, key: str) -> Any:
    """``value`` as type ``tp``, or a :class:`ConfigError` saying what was expected."""
    origin = typing.get_origin(tp)
    if origin in (types.UnionType, typing.Union):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where, key)
            except ConfigError as exc:
                errors.append(exc)
        if len(errors) == 1:
            raise errors[0]
        raise ConfigError(f"option {key!r} must be {_type_name(tp)}; got {value!r}", where=where, key=key)
    if origin is Literal:
        if value not in typing.get_args(tp) or isinstance(value, bool) != any(isinstance(a, bool) for a in typing.get_args(tp)):
            raise ConfigError(f"option {key!r} must be one of {_type_name(tp)}; got {value!r}", where=where, key=key)
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"option {key!r} must be true or false; got {value!r}", where=where, key=key)
        return value
    if tp is int:
        if isinstance(value, float) and math.isfinite(value) and value.is_integer():
            return int(value)
        if not isinstance(value, int) or isinstance(value, bool):
            raise ConfigError(f"option {key!r} must be an integer; got {value!r}", where=where, key=key)
        return value
    if tp is float:
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise ConfigError(f"option {key!r} must be a number; got {value!r}", where=where, key=key)
        if not math.isfinite(value):
            raise ConfigError(f"option {key!r} must be a finite number; got {value!r}", where=where, key=key)
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"option {key!r} must be a string; got {value!r}", where=where, key=key)
        return value
    if isinstance(tp, type) and issubclass(tp, Options):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise ConfigError(f"option {key!r} must be a table of options; got {value!r}", where=where, key=key)
        return tp.from_dict(value, where=f"{where}.{key}")
    if origin is dict or tp is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"option {key!r} must be a table; got {value!r}", where=where, key=key)
        return dict(value)
    return value


def _check_range(value: Any, meta: Mapping[str, Any], where: str, key: str) -> None:
    if not isinstance(value, int | float) or isinstance(value, bool):
        return
    for name, test, text in (
        ("ge", lambda v, b: v >= b, "≥"), ("gt", lambda v, b: v > b, ">"), ("le", lambda v, b: v <= b, "≤"), ("lt", lambda v, b: v < b, "<"),
    ):
        bound = meta.get(name)
        if bound is not None and not test(value, bound):
            raise ConfigError(f"option {key!r} must be {text} {bound:g}; got {value!r}", where=where, key=key)


@dataclasses.dataclass(frozen=True)
class Options:
    """Base of every options dataclass: validation from plain dicts, and back."""

    #: old names of options that were renamed (old → new), for a clear error and for loading old checkpoints
    renamed: ClassVar[dict[str, str]] = {}

    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_dict(cls: type[T], values: Mapping[str, Any] | None = None, where: str = "options") -> T:
        """Validated options from a plain mapping (TOML, JSON, keyword arguments).

        Raises:
            ConfigError: an unknown key (with the nearest valid ones), a wrong type, or a value out of range.
        """
        values = dict(values or {})
        valid = cls.names()
        for key in values:
            if key not in valid:
                raise ConfigError.unknown(where, key, valid, cls.renamed)
        hints = typing.get_type_hints(cls)
        out = {}
        for f in dataclasses.fields(cls):
            if f.name not in values:
                continue
            value = _coerce(values[f.name], hints[f.name], where, f.name)
            _check_range(value, f.metadata, where, f.name)
            out[f.name] = value
        obj = cls(**out)
        obj.check(where)
        return obj

    def check(self, where: str) -> None:
        """Checks between options (after each one passed its own); raise :class:`ConfigError`."""

    def replace(self: T, where: str = "options", **changes: Any) -> T:
        """A copy with ``changes``, validated like :meth:`from_dict`."""
        return type(self).from_dict({**self.to_dict(), **changes}, where=where)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable values (nested options as tables)."""
        return {f.name: (v.to_dict() if isinstance(v := getattr(self, f.name), Options) else v) for f in dataclasses.fields(self)}

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        return cls().to_dict()

    @classmethod
    def requirements(cls) -> dict[str, tuple[str, ...]]:
        """Options that need something of the data's structure: name → what (see :func:`option`)."""
        return {f.name: f.metadata["needs"] for f in dataclasses.fields(cls) if f.metadata.get("needs")}

    @classmethod
    def reference(cls) -> list[dict[str, str]]:
        """One row per option: name, type, default and doc (for the generated options reference)."""
        hints = typing.get_type_hints(cls)
        rows = []
        for f in dataclasses.fields(cls):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
            if isinstance(default, Options):
                default = default.to_dict()
            bounds = [f"{t} {f.metadata[k]:g}" for k, t in (("ge", "≥"), ("gt", ">"), ("le", "≤"), ("lt", "<")) if f.metadata.get(k) is not None]
            rows.append({
                "name": f.name, "type": _type_name(hints[f.name]) + (f" ({', '.join(bounds)})" if bounds else ""),
                "default": repr(default), "doc": f.metadata.get("doc", ""),
            })
        return rows


def options_reference(sections: Mapping[str, type[Options]]) -> str:
    """Markdown tables of options, one section per component."""
    out = []
    for title, cls in sections.items():
        out += [f"## {title}", "", (cls.__doc__ or "").strip().splitlines()[0], "", "| option | type | default | what it does |", "|---|---|---|---|"]
        for row in cls.reference():
            doc = row["doc"].replace("|", "\\|")
            out.append(f"| `{row['name']}` | {row['type'].replace('|', '&#124;')} | `{row['default']}` | {doc} |")
        out.append("")
    return "\n".join(out)
