"""The CaloChallenge evaluator's protocol: features, classifier inputs, calibration and AUC.

The features are checked against an independent implementation written here line by line
from the evaluator's ``XMLHandler.py``, ``HighLevelFeatures.py`` and ``evaluate.py``
(CaloChallenge/homepage, ``code/``), on the official binnings shipped with physgen; the
isotonic calibration and the AUC against scikit-learn, which the evaluator uses.
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
import torch

import physgen
from physgen.cli import main
from physgen.data import Data, Schema
from physgen.data.geometry import official_binning
from physgen.errors import InvalidDataError, UnknownNameError
from physgen.metrics.calochallenge import (
    DATASETS,
    ClassifierProtocol,
    calochallenge_evaluate,
    classifier_inputs,
    evaluator_classifier,
    evaluator_features,
    isotonic_calibration,
)
from physgen.metrics.classifier import roc_auc

XML = {"1-photons": "binning_dataset_1_photons.xml", "1-pions": "binning_dataset_1_pions.xml", "2": "binning_dataset_2.xml"}


class EvaluatorHLF:
    """The evaluator's XMLHandler + HighLevelFeatures, re-written from its source for this test."""

    def __init__(self, particle: str, filename: Path):
        root = ET.parse(filename).getroot()
        r_edges, a_bins = [], []
        self.alpha_layers = []
        for p in root:
            if p.attrib["name"] != particle:
                continue
            for layer in p:
                r_edges.append([float(s) for s in layer.attrib["r_edges"].split(",")])
                a_bins.append(int(layer.attrib["n_bin_alpha"]))
                if a_bins[-1] > 1:
                    self.alpha_layers.append(int(layer.attrib["id"]))
        self.bin_edges = [0]
        self.eta, self.phi, self.relevant = [], [], []
        for i, (edges, na) in enumerate(zip(r_edges, a_bins, strict=True)):
            n_r = len(edges) - 1
            self.bin_edges.append(self.bin_edges[-1] + n_r * na)
            if n_r > 0:
                self.relevant.append(i)
            mids = [edges[k] + (edges[k + 1] - edges[k]) / 2 for k in range(n_r)]
            a_edges = np.linspace(-math.pi, math.pi, na + 1)
            a_mid = [a_edges[k] + (a_edges[k + 1] - a_edges[k]) / 2 for k in range(na)]
            r_list = [mids[i0] for j0 in range(na) for i0 in range(n_r)]
            a_list = [a_mid[j0] for j0 in range(na) for i0 in range(n_r)]
            self.eta.append(np.asarray(r_list) * np.cos(a_list))
            self.phi.append(np.asarray(r_list) * np.sin(a_list))
        self.r_centres = {}
        for ell in self.relevant:
            edges = r_edges[ell]
            self.r_centres[ell] = np.array(a_bins[ell] * [(edges[k] + edges[k + 1]) * 0.5 for k in range(len(edges) - 1)])

    def features(self, data: np.ndarray) -> dict[str, np.ndarray]:
        out = {"E_tot": data.sum(axis=-1)}
        for ell in self.relevant:
            layer = data[:, self.bin_edges[ell] : self.bin_edges[ell + 1]]
            out[f"E_layer_{ell}"] = layer.sum(axis=-1)
            out[f"sparsity_{ell}"] = 1.0 - (layer > 0).mean(axis=-1)
        for ell in self.relevant:
            e = data[:, self.bin_edges[ell] : self.bin_edges[ell + 1]]
            r = self.r_centres[ell]
            r_ec = (r * e).sum(axis=-1) / (e.sum(axis=-1) + 1e-16)
            out[f"EC_r_{ell}"] = r_ec
            out[f"width_r_{ell}"] = np.sqrt(((r * r * e).sum(axis=-1) / (e.sum(axis=-1) + 1e-16) - r_ec**2).clip(min=0.0))
            if ell in self.alpha_layers:
                for name, c in (("eta", self.eta[ell]), ("phi", self.phi[ell])):
                    ec = (c * e).sum(axis=-1) / (e.sum(axis=-1) + 1e-16)
                    out[f"EC_{name}_{ell}"] = ec
                    out[f"width_{name}_{ell}"] = np.sqrt(((c * c * e).sum(axis=-1) / (e.sum(axis=-1) + 1e-16) - ec**2).clip(min=0.0))
        return out

    def high_input(self, data: np.ndarray, e_inc: np.ndarray) -> np.ndarray:
        f = self.features(data)
        cols = [np.log10(e_inc)]
        cols += [np.log10(np.stack([f[f"E_layer_{ell}"] for ell in self.relevant], 1) + 1e-8)]
        for name in ("EC_eta", "EC_phi", "width_eta", "width_phi"):
            cols.append(np.stack([f[f"{name}_{ell}"] for ell in self.alpha_layers], 1) / 1e2)
        cols.append(np.log10(f["E_tot"].reshape(-1, 1) + 1e-8))
        cols.append(np.stack([f[f"sparsity_{ell}"] for ell in self.relevant], 1))
        cols.append(np.stack([f[f"EC_r_{ell}"] for ell in self.relevant], 1) / 1e2)
        cols.append(np.stack([f[f"width_r_{ell}"] for ell in self.relevant], 1) / 1e2)
        return np.concatenate(cols, axis=1)


def _showers(dataset: str, n: int, seed: int, scale: float = 1.0) -> Data:
    """Random showers in a data set's geometry: exponential energies, about half the voxels empty, some below threshold."""
    rng = np.random.default_rng(seed)
    geo = official_binning(DATASETS[dataset].n_voxels)
    e_inc = 10 ** rng.uniform(3, 5, size=(n, 1))
    x = rng.exponential(scale, size=(n, geo.n_voxels)) * (rng.random((n, geo.n_voxels)) < 0.5) * e_inc / 1e3
    x[rng.random(x.shape) < 0.05] = DATASETS[dataset].min_energy_mev * 0.5
    return Data(x.astype(np.float32), Schema(kind="calorimeter", geometry=geo, cond_names=("incident_energy",)), cond=e_inc.astype(np.float32))


@pytest.mark.parametrize("dataset", ["1-photons", "1-pions", "2"])
def test_features_and_inputs_equal_the_evaluators(dataset):
    particle = DATASETS[dataset].particle
    with resources.as_file(resources.files("physgen.data") / "binning" / XML[dataset]) as path:
        hlf = EvaluatorHLF(particle, path)
    data = _showers(dataset, 64, seed=1)
    x = data.x.double().numpy()
    x = np.where(x < DATASETS[dataset].min_energy_mev, 0.0, x)  # evaluate.py zeroes below the readout threshold first
    ours = evaluator_features(x, data.geometry)
    theirs = hlf.features(x)
    assert set(ours) == set(theirs)
    for name, ref in theirs.items():
        np.testing.assert_allclose(ours[name], ref, rtol=1e-12, atol=1e-12, err_msg=name)
    e_inc = data.cond.double().numpy()
    np.testing.assert_allclose(classifier_inputs(data, dataset, "cls-high"), hlf.high_input(x, e_inc), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(classifier_inputs(data, dataset, "cls-low"), np.concatenate([np.log10(e_inc), x / e_inc], 1), rtol=1e-12)


def test_physgens_own_features_agree_with_the_evaluators_on_real_showers(wsi_path):
    """physgen's high_level_features (x/y names) and the evaluator's (eta/phi) on Geant4 W/Si showers."""
    from physgen.metrics import high_level_features

    data = physgen.read(wsi_path, stop=200)
    with resources.as_file(resources.files("physgen.data") / "binning" / XML["2"]) as path:
        theirs = EvaluatorHLF("electron", path).features(data.x.double().numpy())
    ours = high_level_features(data)
    for name, ref in theirs.items():
        mine = name.replace("eta", "x").replace("phi", "y")
        # widths of one-voxel layers are √(E[r²] − E[r]²) of two equal numbers: ~1e-8 mm of cancellation noise
        np.testing.assert_allclose(ours[mine], ref, rtol=1e-9, atol=1e-6, err_msg=name)


def test_isotonic_calibration_and_auc_equal_scikit_learns():
    sklearn_iso = pytest.importorskip("sklearn.isotonic")
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    labels = (rng.random(3000) < 0.5).astype(float)
    scores = np.round(1 / (1 + np.exp(-(labels - 0.5) * 2 - rng.normal(0, 1, 3000))), 3)  # rounded: ties, as sigmoid outputs have
    new = np.concatenate([rng.random(500), [-0.5, 1.5]])  # and points outside the fitted range
    ref = sklearn_iso.IsotonicRegression(out_of_bounds="clip", y_min=1e-6, y_max=1 - 1e-6).fit(scores, labels).predict(new)
    np.testing.assert_allclose(isotonic_calibration(scores, labels)(new), ref, rtol=1e-12, atol=1e-12)
    cal = isotonic_calibration(scores, labels)(scores)
    assert roc_auc(labels, cal) == pytest.approx(roc_auc_score(labels, cal), abs=1e-12)


def test_the_classifier_is_the_evaluators_dnn_and_tells_apart_what_differs():
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(3000, 6)), rng.normal(size=(3000, 6))
    p = ClassifierProtocol(n_hidden=64)  # the evaluator's training, a narrower net to keep the test quick
    same = evaluator_classifier(a, b, protocol=p, seed=0)
    assert abs(same["auc"].value - 0.5) < 3 * same["auc"].error + 0.02
    assert abs(same["jsd"].value) < 3 * same["jsd"].error + 0.02
    shifted = evaluator_classifier(a, b + np.array([1.5, 0, 0, 0, 0, 0]), protocol=p, seed=0)
    # two unit Gaussians 1.5 apart: no classifier beats the likelihood ratio's AUC, Φ(1.5/√2) = 0.856
    auc = shifted["auc"]
    assert 0.80 < auc.value < 0.856 + 3 * auc.error and auc.extra["n_evaluated"] == 1200
    # the evaluator's DNN (its defaults since November 2023): a 2048-wide input layer, two hidden 2048 layers, one logit
    from physgen.metrics.calochallenge import _dnn

    net = _dnn(368 + 1, ClassifierProtocol())
    assert sum(q.numel() for q in net.parameters()) == 369 * 2048 + 2048 + 2 * (2048 * 2048 + 2048) + 2048 + 1
    assert ClassifierProtocol() == ClassifierProtocol(n_layer=2, n_hidden=2048, batch_size=1000, epochs=50, lr=2e-4, dtype=torch.float64)


def test_samples_as_large_as_the_evaluators_are_split_by_its_event_counts():
    """Its counts where the samples hold them (the rest goes to the test part, as np.split does); fractions below."""
    rng = np.random.default_rng(5)
    a, b = rng.normal(size=(130, 2)), rng.normal(size=(130, 2))
    p = ClassifierProtocol(n_hidden=4, epochs=1, split_events=(70, 20, 30))
    assert evaluator_classifier(a, b, protocol=p)["auc"].extra["n_evaluated"] == 2 * 40  # 130 - 70 - 20 per sample
    assert evaluator_classifier(a[:100], b[:100], protocol=p)["auc"].extra["n_evaluated"] == 2 * 20  # 20 % of 100
    assert evaluator_classifier(a[:119], b[:119], protocol=p)["auc"].extra["n_evaluated"] == 2 * 25  # 119 - 71 - 23 (fractions)


def test_bad_input_is_refused_with_the_expected_voxel_count():
    wrong = physgen.load_default()[:50]
    with pytest.raises(InvalidDataError, match=r"data set 2 has 6480 voxels.*the showers have 768"):
        calochallenge_evaluate(wrong, wrong, "2")
    with pytest.raises(UnknownNameError, match="CaloChallenge data set"):
        calochallenge_evaluate(wrong, wrong, "4")
    with pytest.raises(InvalidDataError, match="one shape"):
        evaluator_classifier(np.zeros((10, 3)), np.zeros((9, 3)))


def test_the_command_line_runs_the_protocol_and_refuses_the_wrong_geometry(tmp_path, capsys):
    real, gen = _showers("1-photons", 300, seed=2), _showers("1-photons", 300, seed=3, scale=1.3)
    physgen.write(real, tmp_path / "real.h5")
    physgen.write(gen, tmp_path / "gen.h5")
    rc = main(["evaluate", str(tmp_path / "real.h5"), str(tmp_path / "gen.h5"), "--out", str(tmp_path / "ev"),
               "--no-classifier", "--calochallenge", "1-photons", "--cls-epochs", "3", "--cls-hidden", "64"])
    assert rc == 0
    import json

    cc = json.loads((tmp_path / "ev" / "calochallenge.json").read_text())
    assert cc["dataset"] == "1-photons" and cc["n_compared"] == 300
    assert cc["protocol"] == {"n_layer": 2, "n_hidden": 64, "dropout": 0.0, "batch_size": 1000, "epochs": 3, "lr": 2e-4,
                              "split": [0.6, 0.2, 0.2], "split_events": [80_000, 20_000, 21_000], "dtype": "float64"}
    assert cc["cls-low"]["auc"]["n_evaluated"] == 120 and 0 <= cc["cls-high"]["auc"]["value"] <= 1
    assert cc["fpd"]["value"] > 10 * cc["fpd"]["error"]  # FPD needs no training to see showers 30 % too energetic
    physgen.write(physgen.load_default()[:100], tmp_path / "pbwo4.h5")
    rc = main(["evaluate", str(tmp_path / "pbwo4.h5"), str(tmp_path / "pbwo4.h5"), "--out", str(tmp_path / "ev2"),
               "--no-classifier", "--calochallenge", "2"])
    err = capsys.readouterr().err
    assert rc == 2 and "pbwo4.h5" in err and "6480 voxels" in err and "768" in err
    assert not (tmp_path / "ev2" / "metrics.json").exists()
