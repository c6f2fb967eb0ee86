"""Every code block of the README and the documentation runs, so no example can break silently.

Per page, ``python`` blocks run in order in one namespace and ``bash`` blocks line by line, in a
fresh folder holding the files the pages name (``showers.h5``, ``held_out.h5``, ``events.root``),
with ``PHYSGEN_MAX_EPOCHS=1`` so every training is one epoch. ``pip install`` and ``python -m pytest``
lines are what CI itself runs: they must appear in ``.ci/run``. ``toml`` blocks that describe a
suite are loaded and checked as one. ``text`` blocks are output, tables or commands for a GPU or the
project's large data sets, and are not code. The site itself must build with ``mkdocs build --strict``.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)
RUNNABLE = {"python", "bash", "toml"}


def blocks(page: Path) -> list[tuple[str, str]]:
    return [(lang, body) for lang, body in FENCE.findall(page.read_text())]


def test_every_block_names_its_language():
    bare = [str(p.relative_to(ROOT)) for p in PAGES for lang, _ in blocks(p) if not lang]
    assert not bare, f"code blocks without a language (python, bash, toml or text): {bare}"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, zmumu_path):
    import physgen

    d = tmp_path_factory.mktemp("docs")
    showers = physgen.load_default()
    train, held = showers.split((0.7, 0.3), seed=0)
    physgen.write(train, d / "showers.h5")
    physgen.write(held, d / "held_out.h5")
    shutil.copy(zmumu_path, d / "events.root")
    return d


def _lines(body: str) -> list[str]:
    out, current = [], ""
    for raw in body.splitlines():
        line = raw.split(" #")[0].rstrip() if not raw.lstrip().startswith("#") else ""
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        current += line
        if current.strip():
            out.append(current.strip())
        current = ""
    return out


# what a page may ask pip to install: PyTorch's CPU wheel (first, pinned) and this project, with its extras
PIP_TARGETS = {"torch==2.13.0", ".", "-e .", '-e ".[test]"', '".[test]"', '-e ".[docs]"'}


def _check_ci_line(part: str) -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    if part.startswith("python -m pytest"):
        runs = [line.split() for line in ci.splitlines() if line.startswith("python -m pytest")]
        assert any(set(part.split()) <= set(words) for words in runs), f".ci/run must run the README's test command {part!r}"
        return
    target = part.removeprefix("pip install").strip()
    assert target in PIP_TARGETS, f"{part!r}: the docs install only torch==2.13.0 and physgen itself"
    assert "pip install -q --no-cache-dir torch==2.13.0" in ci and '-e ".[test]"' in ci, ".ci/run installs what the README does"
    assert ci.index("torch==2.13.0") < ci.index('-e ".[test]"'), ".ci/run installs torch first, as the README says"


def _run_bash(body: str, cwd: Path, env: dict[str, str]) -> None:
    for line in _lines(body):
        for part in (p.strip() for p in line.split("&&")):
            if part.startswith("pip install") or part.startswith("python -m pytest"):
                _check_ci_line(part)
                continue
            words = shlex.split(part)
            if words[0] == "physgen":
                words = [sys.executable, "-m", "physgen.cli", *words[1:]]
            elif words[0] == "python":
                words = [sys.executable, *words[1:]]
            r = subprocess.run(words, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
            assert r.returncode == 0, f"{part}\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"


@pytest.mark.parametrize("page", [p for p in PAGES if any(lang in RUNNABLE for lang, _ in blocks(p))], ids=lambda p: str(p.relative_to(ROOT)))
def test_the_pages_code_runs(page, workdir, tmp_path, monkeypatch):
    for f in workdir.iterdir():
        shutil.copy(f, tmp_path / f.name)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PHYSGEN_MAX_EPOCHS", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    module = types.ModuleType(f"docs_{page.stem}")  # a real module, as a user's script would be (dataclasses look it up)
    monkeypatch.setitem(sys.modules, module.__name__, module)
    for lang, body in blocks(page):
        if lang == "python":
            code = compile(body, f"{page.name}:python", "exec", dont_inherit=True)  # not this file's __future__ flags
            exec(code, module.__dict__)  # noqa: S102 - the documentation's own examples
        elif lang == "bash":
            _run_bash(body, tmp_path, env)
        elif lang == "toml" and "[[surrogates]]" in body:
            from physgen.bench import load_suite

            (tmp_path / "suite.toml").write_text(body)
            load_suite(tmp_path / "suite.toml")


def test_the_readme_is_for_users():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 200
    for page in PAGES:
        assert not re.search(r"\bsession \d+|\bsessions? \d+[-–]\d+", page.read_text(), re.I), page


def test_the_results_are_generated_from_the_committed_files():
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "results_page.py"), "--check"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_the_site_builds_strictly(tmp_path):
    pytest.importorskip("mkdocs", reason="the docs extra: pip install -e '.[docs]'")
    r = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert (tmp_path / "site" / "reference" / "api" / "index.html").exists()


def test_every_docs_path_named_in_the_project_exists():
    named = re.compile(r"\bdocs/[\w/.-]+\.md\b")
    files = [*(ROOT / "physgen").rglob("*.py"), *(ROOT / "physgen").rglob("*.toml"), *(ROOT / "benchmarks").rglob("*.py"),
             *(ROOT / "benchmarks").rglob("*.sh"), *(ROOT / "benchmarks").rglob("*.toml"), *PAGES]
    missing = {f"{f.relative_to(ROOT)}: {m}" for f in files for m in named.findall(f.read_text()) if not (ROOT / m).exists()}
    assert not missing, sorted(missing)
