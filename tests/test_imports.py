"""The package's shape: no import cycle, each layer imports only the ones below it, a narrow base class.

The graph is built from the source (every ``import``, at module level or inside a function;
those under ``if TYPE_CHECKING:`` are annotations only), as sbi's circular-import test
guards its package; a lazy import inside a function that points upwards counts too.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "physgen"
MODULES = {
    ".".join(p.relative_to(ROOT.parent).with_suffix("").parts).removesuffix(".__init__"): p for p in ROOT.rglob("*.py")
}
# lowest first; a module may import its own layer and the ones before it (docs/ARCHITECTURE.md)
LAYERS = [
    ("physgen.errors", "physgen.units"), ("physgen.options",), ("physgen.data",), ("physgen.io", "physgen.zoo"), ("physgen.metrics",),
    ("physgen.training",), ("physgen.surrogates",), ("physgen.calorimeter", "physgen.quantum", "physgen.distributed"),
    ("physgen.bench", "physgen.report", "physgen.reference", "physgen.generate"), ("physgen.cli",),
]
FAMILIES = {f"physgen.surrogates.{f}" for f in ("gaussian", "vae", "wgan", "flow", "diffusion", "rbm")}


def _type_checking(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def _imports(path: Path, name: str) -> set[str]:
    """The physgen modules ``name`` imports (resolved to modules where a name is a submodule)."""
    tree = ast.parse(path.read_text())
    skip = {id(n) for node in ast.walk(tree) if _type_checking(node) for n in ast.walk(node)}
    out: set[str] = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
        else:
            continue
        for t in targets:
            if t.startswith("physgen"):
                while t not in MODULES and "." in t:
                    t = t.rpartition(".")[0]
                out.add(t)
    return out


GRAPH = {name: _imports(path, name) - {name} for name, path in MODULES.items()}


def _with_parents(name: str, importer: str) -> set[str]:
    """``name`` and the packages importing it initialises, less those the importer sits in (already initialising)."""
    parts, own = name.split("."), set()
    for i in range(1, len(importer.split("."))):
        own.add(".".join(importer.split(".")[:i]))
    return {".".join(parts[:i]) for i in range(1, len(parts) + 1)} - own


def test_no_import_cycle():
    edges = {m: (set().union(*(_with_parents(t, m) for t in ts)) & set(MODULES)) - {m} if ts else set() for m, ts in GRAPH.items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for n in sorted(edges[m]):
            if state.get(n) == 1:
                cycle = stack[stack.index(n):] + [n]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if n not in state:
                visit(n)
        stack.pop()
        state[m] = 2

    for m in sorted(MODULES):
        if m not in state:
            visit(m)


def _layer(name: str) -> int:
    for i, prefixes in enumerate(LAYERS):
        if any(name == p or name.startswith(p + ".") for p in prefixes):
            return i
    return -1  # physgen itself (the top-level package re-exports)


@pytest.mark.parametrize("name", sorted(m for m in MODULES if m != "physgen"))
def test_each_module_imports_only_its_own_layer_and_below(name):
    upward = [t for t in GRAPH[name] if t != "physgen" and _layer(t) > _layer(name)]
    assert not upward, f"{name} (layer {_layer(name)}) imports {upward}"


def test_families_know_no_calorimeter_and_the_base_class_is_narrow():
    base = MODULES["physgen.surrogates.base"]
    assert len(base.read_text().splitlines()) <= 300
    assert not GRAPH["physgen.surrogates.base"] & FAMILIES
    for name in [*FAMILIES, "physgen.surrogates.base", "physgen.surrogates.point_mass", "physgen.surrogates.structure"]:
        assert not any(t.startswith("physgen.calorimeter") for t in GRAPH[name]), name
        text = MODULES[name].read_text().lower()
        for word in ("read-out", "readout", "azimuthal", "incident energy"):
            assert word not in text, f"{name} speaks of {word!r}"


def test_importing_physgen_imports_no_family_and_no_optional_dependency():
    code = (
        "import sys, physgen, physgen.surrogates, physgen.calorimeter\n"
        "loaded = [m for m in sys.modules if m.startswith('physgen.surrogates.') or m in ('matplotlib', 'mplhep', 'dask', 'distributed')]\n"
        "print(','.join(sorted(loaded)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip().split(",")
    assert not [m for m in out if m in FAMILIES - {"physgen.surrogates.flow"} or m in ("matplotlib", "mplhep", "dask", "distributed")], out
