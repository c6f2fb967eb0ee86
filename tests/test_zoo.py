"""The shipped models: listed with cards, loaded offline, and sampling as their cards say."""

from __future__ import annotations

import socket

import pytest
import torch

import physgen
from physgen import zoo
from physgen.cli import main
from physgen.errors import UnknownNameError
from physgen.surrogates import load

NAMES = zoo.available()
FIELDS = {"name", "description", "family", "particle", "geometry", "training", "energy_range_gev", "held_out", "speed", "self_check",
          "weights", "licence"}


def test_the_zoo_ships_a_pbwo4_and_a_wsi_model():
    assert {"pbwo4-photon-vae", "wsi-electron-vae"} <= set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_each_card_is_complete_and_its_numbers_hang_together(name):
    card = zoo.card(name)
    assert FIELDS <= set(card), FIELDS - set(card)
    lo, hi = card["energy_range_gev"]
    assert 0.9 < lo < hi < 110  # trained on 1-100 GeV showers
    auc = card["held_out"]["metrics"]["classifier_auc"]
    assert auc["floor"] - 3 * auc["floor_error"] <= auc["value"] < 1.0
    assert card["speed"]["cpu"] and card["speed"]["speedup_vs_geant4"] == pytest.approx(
        card["speed"]["geant4_us_per_shower"] / card["speed"]["us_per_shower"], rel=0.01)
    size = sum(f.stat().st_size for f in zoo.path(name).iterdir()) / 2**20
    assert card["weights"]["megabytes"] == pytest.approx(size, abs=0.1)


@pytest.fixture
def offline(monkeypatch):
    """No network: any connection attempt fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError("a shipped model tried to reach the network")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)


@pytest.mark.parametrize("name", NAMES)
def test_each_model_loads_offline_and_redraws_its_cards_self_check(name, offline):
    model = load(f"zoo:{name}")
    assert model.cond_range is not None and model.schema.cond_units == ("MeV",)
    for row in zoo.card(name)["self_check"]:
        e = row["energy_gev"] * 1000.0
        ratio = model.sample(torch.full((row["n"], 1), e), seed=row["seed"]).x.sum(1) / e
        assert float(ratio.mean()) == pytest.approx(row["etot_over_einc_mean"], rel=2e-3)
        assert float(ratio.std()) == pytest.approx(row["etot_over_einc_std"], rel=2e-2)


@pytest.mark.parametrize("name", NAMES)
def test_each_model_reproduces_its_held_out_kpd(name, pbwo4_path, wsi_path):
    """On 2,000 of the card's held-out showers (the data folder beside the checkout), KPD within the errors."""
    from physgen.metrics import evaluate

    card = zoo.card(name)
    path = wsi_path if "wsi" in name else pbwo4_path
    showers = physgen.read(path)
    events = card["held_out"]["events"]
    if events == "test":
        _, test = showers.split(tuple(card["training"]["split"]), seed=0)
    else:
        start, stop = (int(v) for v in events.split(":"))
        test = showers[start:stop]
    test = test[:2000]
    kpd = evaluate(test, load(f"zoo:{name}").sample(test.cond, seed=1), seed=0, classifier=False)["summary"]["kpd"]
    want = card["held_out"]["metrics"]["kpd"]
    assert abs(kpd["value"] - want["value"]) < 3 * (kpd["error"] + want["error"]) + 2 * kpd["floor"], (kpd, want)


def test_an_unknown_name_lists_the_shipped_ones():
    with pytest.raises(UnknownNameError, match=r"unknown shipped model 'wsi-vae'; valid: .*wsi-electron-vae.*Did you mean"):
        load("zoo:wsi-vae")


def test_the_command_line_lists_and_samples_shipped_models(capsys, tmp_path, offline):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert all(f"zoo:{n}" in out for n in NAMES) and "Geant4" in out
    assert main(["sample", "zoo:pbwo4-photon-vae", "--energies", "20GeV", "--n", "5", "--out", str(tmp_path / "x.h5")]) == 0
    assert physgen.read(tmp_path / "x.h5").x.shape == (5, 768)
