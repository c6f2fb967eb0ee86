"""Typed options: validation, the nearest valid name, what is saved, and the generated reference."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Literal

import pytest

from physgen.errors import ConfigError
from physgen.options import Options, option

DOCS = Path(__file__).resolve().parents[1] / "docs" / "reference" / "options.md"


@dataclasses.dataclass(frozen=True)
class Inner(Options):
    """A nested table."""

    width: int = option(8, "width", ge=1)


@dataclasses.dataclass(frozen=True)
class Example(Options):
    """An example component."""

    renamed = {"old_name": "steps"}

    steps: int = option(10, "steps", ge=1)
    rate: float = option(0.5, "a rate", gt=0, le=1)
    mode: Literal["a", "b"] = option("a", "a choice")
    flag: bool = option(False, "a switch")
    maybe: float | None = option(None, "optional", ge=0)
    inner: Inner = option(Inner(), "a nested table")


def test_valid_values_are_taken_and_integral_floats_are_integers():
    o = Example.from_dict({"steps": 3.0, "rate": 1, "mode": "b", "flag": True, "maybe": 2, "inner": {"width": 4}}, where="ex")
    assert (o.steps, o.rate, o.mode, o.flag, o.maybe, o.inner.width) == (3, 1.0, "b", True, 2.0, 4)
    assert isinstance(o.rate, float) and isinstance(o.steps, int)
    assert o.to_dict() == {"steps": 3, "rate": 1.0, "mode": "b", "flag": True, "maybe": 2.0, "inner": {"width": 4}}
    assert Example.from_dict(o.to_dict()) == o  # what is saved loads back to the same options


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"stpes": 3}, "ex: unknown option 'stpes'; did you mean 'steps'"),
        ({"old_name": 3}, "option 'old_name' is now called 'steps'"),
        ({"steps": 2.5}, "'steps' must be an integer; got 2.5"),
        ({"steps": True}, "'steps' must be an integer; got True"),
        ({"steps": "3"}, "'steps' must be an integer"),
        ({"steps": 0}, "'steps' must be ≥ 1; got 0"),
        ({"rate": 0}, "'rate' must be > 0"),
        ({"rate": 1.5}, "'rate' must be ≤ 1"),
        ({"rate": float("nan")}, "'rate' must be a finite number"),
        ({"rate": float("inf")}, "'rate' must be a finite number"),
        ({"mode": "c"}, "'mode' must be one of 'a' | 'b'; got 'c'"),
        ({"flag": 1}, "'flag' must be true or false; got 1"),
        ({"flag": "yes"}, "'flag' must be true or false"),
        ({"maybe": -1}, "'maybe' must be ≥ 0"),
        ({"maybe": "x"}, "'maybe' must be a number"),
        ({"inner": {"widht": 2}}, "ex.inner: unknown option 'widht'; did you mean 'width'"),
        ({"inner": 3}, "'inner' must be a table of options"),
    ],
)
def test_bad_values_name_the_option_and_what_was_expected(values, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace("?", r"\?").replace("|", r"\|")) as info:
        Example.from_dict(values, where="ex")
    assert info.value.key in (*values, "width", "widht")


def test_an_unknown_key_carries_the_nearest_names():
    with pytest.raises(ConfigError) as info:
        Example.from_dict({"rat": 1}, where="ex")
    assert info.value.nearest == ["rate"] and info.value.where == "ex" and info.value.key == "rat"
    assert isinstance(info.value, ValueError)  # generic handlers keep working


def test_replace_validates_like_from_dict():
    o = Example()
    assert o.replace(steps=4).steps == 4
    with pytest.raises(ConfigError, match="'steps' must be ≥ 1"):
        o.replace(steps=-4)


def test_the_reference_lists_each_option_with_type_default_and_doc():
    rows = {r["name"]: r for r in Example.reference()}
    assert rows["rate"] == {"name": "rate", "type": "float (> 0, ≤ 1)", "default": "0.5", "doc": "a rate"}
    assert rows["maybe"]["type"] == "float or None (≥ 0)" and rows["inner"]["default"] == "{'width': 8}"


def test_the_options_reference_page_is_generated_from_the_code():
    from physgen.reference import options_markdown

    assert DOCS.read_text() == options_markdown() + "\n", "regenerate: python -m physgen.cli options --markdown > docs/reference/options.md"
    for heading in ("## Training", "## Calorimeter shower model", "## Family `flow`", "## Family `vae`", "## Family `rbm`"):
        assert heading in DOCS.read_text()
