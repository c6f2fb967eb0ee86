"""Hostile suite files: every mistake is refused when the suite is loaded, before any training starts."""

from __future__ import annotations

import pytest

from physgen.bench import SuiteError, load_suite
from tests.hostile.conftest import run_cli

_GOOD = """
name = "hostile"
{top}

[[datasets]]
name = "showers"
source = "{data}"
split = {split}
{dataset}

[[surrogates]]
family = "gaussian"
config = {{ {config} }}
{surrogate}
"""


def _suite(tmp_path, showers_file, *, top="", split="[0.6, 0.4]", dataset="", config="", surrogate=""):
    path = tmp_path / "suite.toml"
    path.write_text(_GOOD.format(top=top, data=showers_file, split=split, dataset=dataset, config=config, surrogate=surrogate))
    return path


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ({"config": "degre = 1"}, r"unknown option 'degre'; did you mean 'degree'"),
        ({"surrogate": "trian = { epochs = 1 }"}, r"unknown key 'trian'.*did you mean 'train'"),
        ({"surrogate": "train = { epoch = 1 }"}, r"unknown option 'epoch'; did you mean 'epochs'"),
        ({"top": "seeed = 3"}, r"unknown key 'seeed'.*did you mean 'seed'"),
        ({"top": "seed = -1"}, r"seed must be an integer ≥ 0"),
        ({"dataset": "max_events = -1500"}, r"max_events must be a positive integer; got -1500"),
        ({"dataset": "max_events = 0"}, r"max_events must be a positive integer; got 0"),
        ({"dataset": "max_event = 100"}, r"unknown key 'max_event'.*did you mean 'max_events'"),
        ({"split": "[0.9, 0.9]"}, r"split must be two fractions .* adding up to at most 1"),
        ({"split": "[0.5]"}, r"split must be two fractions"),
        ({"split": "[0.0, 0.5]"}, r"split must be two fractions in \(0, 1\)"),
        ({"surrogate": 'datasets = ["showrs"]'}, r"no data set 'showrs' in this suite"),
        ({"surrogate": 'preset = "wsi"'}, r"unknown preset 'wsi'"),
    ],
)
def test_a_suite_mistake_is_refused_on_load(tmp_path, showers_file, edit, message):
    path = _suite(tmp_path, showers_file, **edit)
    with pytest.raises(SuiteError, match=message) as info:
        load_suite(path)
    assert str(path) in str(info.value)


def test_the_command_line_refuses_a_bad_suite_with_status_2(tmp_path, showers_file, capsys):
    out = tmp_path / "bench"
    path = _suite(tmp_path, showers_file, split="[0.9, 0.9]")
    run_cli(["bench", path, "--out", out], capsys, r"split must be two fractions", absent=[out])


def test_only_naming_nothing_in_the_suite_is_refused(tmp_path, showers_file, capsys):
    out = tmp_path / "bench"
    path = _suite(tmp_path, showers_file)
    run_cli(["bench", path, "--only", "gausian", "--out", out], capsys, r"unknown family or label 'gausian'.*did you mean 'gaussian'", absent=[out])


def test_a_suite_that_is_not_toml_names_the_file(tmp_path, capsys):
    path = tmp_path / "broken.toml"
    path.write_text("name = \n")
    run_cli(["bench", path, "--out", tmp_path / "bench"], capsys, r"broken\.toml.*not a valid TOML suite", absent=[tmp_path / "bench"])
