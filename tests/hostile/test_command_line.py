"""Hostile command lines: each exits with status 2, one line naming what was wrong, and writes nothing."""

from __future__ import annotations

import pytest

from tests.hostile.conftest import run_cli


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--energies", "nan", "--n", "20"], r"--energies must be finite and > 0"),
        (["--energies", "inf", "--n", "20"], r"--energies must be finite and > 0"),
        (["--energies", "-5000", "--n", "20"], r"--energies must be finite and > 0"),
        (["--energies", "5 GeVs"], r"unknown unit 'GeVs'.*Did you mean 'GeV'"),
        (["--energies", "5deg"], r"cannot convert 5.0 deg \(an angle\) to MeV \(an energy\)"),
        (["--energies", "5 MeV", "--strict"], r"outside the range the .* model was trained on, .*did you mean 5 GeV.*\(strict\)"),
        (["--energies", "5000", "--chunk-size", "0"], r"argument --chunk-size: expected a positive integer; got 0"),
        (["--energies", "5000", "--workers", "0"], r"argument --workers: expected a positive integer; got 0"),
        (["--energies", "5000", "--out-format", "root"], r"ends in '.h5', a HDF5 file, but the format asked for is 'root'"),
        (["--energies", "5000", "--n", "0"], r"argument --n: expected a positive integer; got 0"),
        (["--energies", "5000", "--n", "-3"], r"argument --n: expected a positive integer; got -3"),
        (["--energies", "5000", "--batch-size", "0"], r"argument --batch-size: expected a positive integer"),
        (["--energies", "5000", "--precision", "fp16"], r"sample_precision='fp16' needs a CUDA device"),
        (["--energies", "5000", "--out-format", "parquet"], r"unknown format 'parquet'"),
        ([], r"this surrogate is conditional: give --cond FILE or --energies"),
    ],
)
def test_sampling_refuses_bad_conditions_and_counts(shower_model, tmp_path, capsys, extra, message):
    out = tmp_path / "x.h5"
    run_cli(["sample", shower_model, "--out", out, *extra], capsys, message, absent=[out])


def test_sampling_with_a_condition_file_that_holds_none(event_model, shower_model, tmp_path, capsys, zmumu_path):
    out = tmp_path / "x.h5"
    run_cli(["sample", shower_model, "--cond", zmumu_path, "--out", out], capsys, r"key 'incident_energy': no branch 'incident_energy'", absent=[out])
    run_cli(["sample", shower_model, "--cond", zmumu_path, "--cond-branches", "E1", "--keep", "evt", "--out", out], capsys,
            r"no branch 'evt' in this file; did you mean .*'Event'", absent=[out])
    run_cli(["sample", shower_model, "--cond", zmumu_path, "--cond-branches", "E1,E2", "--out", out], capsys,
            r"the model takes 1 condition column\(s\)", absent=[out])
    run_cli(["sample", event_model, "--out", out], capsys, r"unconditional: give --n", absent=[out])


def test_sampling_into_a_missing_directory(shower_model, tmp_path, capsys):
    out = tmp_path / "nowhere" / "x.h5"
    run_cli(["sample", shower_model, "--energies", "5000", "--out", out], capsys, r"the output directory does not exist", absent=[out])


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--config", "n_layer=2"], r"unknown option 'n_layer'; did you mean 'n_layers'"),
        (["--config", "hiden=16"], r"unknown option 'hiden'; did you mean 'hidden'"),
        (["--config", "hidden=-5"], r"'hidden' must be ≥ 1; got -5"),
        (["--config", "n_layers=2.5"], r"'n_layers' must be an integer; got 2.5"),
        (["--config", "temperature=0"], r"'temperature' must be > 0"),
        (["--config", "noequals"], r"--config options are KEY=VALUE"),
        (["--lr", "nan"], r"'lr' must be a finite number"),
        (["--lr", "-1"], r"'lr' must be > 0"),
        (["--epochs", "0"], r"'epochs' must be ≥ 1"),
        (["--batch-size", "0"], r"'batch_size' must be ≥ 1"),
        (["--patience", "-1"], r"'patience' must be ≥ 1"),
        (["--time-budget-s", "-5"], r"'time_budget_s' must be > 0"),
        (["--checkpoint-every", "0"], r"'checkpoint_every' must be ≥ 1"),
        (["--val-fraction", "1.5"], r"'val_fraction' must be < 1"),
        (["--train", "augmnt=8"], r"unknown option 'augmnt'; did you mean 'augment'"),
        (["--train", "augment=99"], r"augment copies must be in \[1, 8\]"),
        (["--preset", "wsi"], r"unknown preset 'wsi'"),
        (["--device", "gpu0"], r"'device' must be 'cpu', 'cuda', 'cuda:N' or 'auto'"),
    ],
)
def test_training_refuses_bad_options(showers_file, tmp_path, capsys, extra, message):
    out = tmp_path / "run"
    run_cli(["train", "flow", showers_file, "--out", out, "--epochs", "1", *extra], capsys, message, absent=[out / "model"])


def test_training_refuses_an_unknown_family_before_reading(tmp_path, capsys):
    run_cli(["train", "flw", tmp_path / "missing.h5", "--out", tmp_path / "run"], capsys, r"unknown surrogate 'flw'.*Did you mean 'flow'")


def test_training_refuses_an_output_that_is_a_file(showers_file, tmp_path, capsys):
    out = tmp_path / "taken.txt"
    out.write_text("mine")
    run_cli(["train", "gaussian", showers_file, "--out", out], capsys, r"--out names an existing file")
    assert out.read_text() == "mine"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["info", "{tmp}/missing.h5"], r"no such file"),
        (["info", "{tmp}"], r"is a directory"),
        (["evaluate", "{data}", "{tmp}/missing.h5", "--out", "{tmp}/eval"], r"no such file"),
        (["sample", "{tmp}", "--n", "3", "--out", "{tmp}/x.h5"], r"no config.json"),
        (["options", "transformer"], r"unknown surrogate 'transformer'"),
        (["bench", "nosuch"], r"unknown suite 'nosuch'"),
        (["frobnicate"], r"invalid choice: 'frobnicate'"),
        (["train"], r"the following arguments are required"),
    ],
)
def test_other_commands_refuse_bad_arguments_in_one_line(args, message, tmp_path, capsys, showers_file):
    run_cli([a.format(tmp=tmp_path, data=showers_file) for a in args], capsys, message)


def test_evaluating_two_files_of_different_shapes(showers_file, tmp_path, capsys):
    (tmp_path / "spins.txt").write_text("0101\n1100\n" * 30)
    run_cli(["evaluate", showers_file, tmp_path / "spins.txt", "--out", tmp_path / "e"], capsys,
            r"real and generated event shapes differ", absent=[tmp_path / "e" / "metrics.json"])


def test_reader_options_meant_for_another_format(showers_file, tmp_path, capsys):
    run_cli(["info", showers_file, "--branches", "E1"], capsys, r"as calochallenge: unknown option 'branches'.*valid: binning, start, stop")
