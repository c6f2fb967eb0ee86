"""The options reference, generated from the typed option declarations (``physgen options``).

``docs/reference/options.md`` is this module's output; a test fails when the two differ, so the
page can never drift from the code.
"""

from __future__ import annotations

from physgen.calorimeter import ShowerOptions
from physgen.options import Options, options_reference
from physgen.surrogates import available, get
from physgen.training import TrainConfig

__all__ = ["options_markdown", "options_of"]

INTRO = """# Options reference

Every option physgen accepts, generated from the code (`python -m physgen.cli options --markdown`).
An unknown option, a value of the wrong type or one out of range is refused with a
`ConfigError` naming the nearest valid option. Where an option needs something of the data's
structure (the calorimeter's empty voxels, its layers), the shower model supplies it; see
[calorimeter showers](../guide/calorimeter.md).
"""


def options_of(name: str) -> type[Options]:
    """The options class of a family name, ``shower`` (the calorimeter's shower model) or ``train`` (the loop)."""
    if name == "train":
        return TrainConfig
    if name == "shower":
        return ShowerOptions
    return get(name).Options


def options_markdown() -> str:
    """The whole reference page as Markdown."""
    sections: dict[str, type[Options]] = {"Training (`fit(..., **options)`, a suite's `train` table)": TrainConfig}
    sections["Calorimeter shower model (`physgen.calorimeter.ShowerModel`)"] = ShowerOptions
    for name in available():
        cls = get(name)
        if cls.Options is not ShowerOptions and cls.__module__.startswith("physgen."):  # physgen's own families
            sections[f"Family `{name}` (`create(\"{name}\", ...)`)"] = cls.Options
    return INTRO + "\n" + options_reference(sections)
