"""The CaloChallenge 2022 evaluator's protocol, so that physgen's numbers compare with the field's.

The official ``evaluate.py`` (CaloChallenge/homepage, ``code/``) judges a generated file against
Geant4 with

* ``cls-low``: a classifier on the voxels divided by the incident energy, plus log10 E_inc;
* ``cls-high``: the same classifier on the high-level features (below);
* ``fpd``/``kpd``: jetnet's Fréchet and kernel physics distances on the high-level features
  (``min_samples=10000``; ``batch_size=10000``).

Every voxel below the data set's readout threshold (1 MeV for data set 1, 0.5 keV / 0.033 for
data sets 2 and 3) is set to zero first. The classifier is the evaluator's ``DNN``: a 2048-wide
input layer and two 2048-wide hidden layers with LeakyReLU, in float64 (its defaults since
November 2023; ``--cls_n_hidden`` there, ``ClassifierProtocol(n_hidden=...)`` here); Adam at lr
2e-4, batch 1000, 50 epochs on the training events, the epoch of best accuracy on the selection
events kept, and the AUC and JSD measured on the last part after an isotonic calibration fitted
on the selection events. The parts are the evaluator's event counts for the data set (data set
2: 60,000 / 20,000 / 20,000 of each sample) where the samples hold that many, otherwise 60 / 20 /
20 % (the evaluator's split without a data set; its fixed counts leave smaller samples nothing
to test on). Labels: 1 for Geant4, 0 for generated. The JSD is the evaluator's,
normalised to ln 2 (0: indistinguishable, 1: separable).

The high-level features carry the evaluator's names and definitions: ``E_tot``,
``E_layer_{l}``, ``EC_eta_{l}``/``EC_phi_{l}`` (centre of energy in x = r cos α and y = r sin α,
layers binned in α), ``width_eta_{l}``/``width_phi_{l}``, ``EC_r_{l}``/``width_r_{l}`` (every
layer), and ``sparsity_{l}``, the fraction of a layer's voxels *without* energy.

The evaluator shuffles with NumPy's global generator; physgen seeds its own, so a run repeats.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from scipy.optimize import isotonic_regression
from torch import nn

from physgen.data import Data
from physgen.data.geometry import CalorimeterGeometry, official_binning
from physgen.errors import InvalidDataError, UnknownNameError
from physgen.metrics.classifier import roc_auc
from physgen.metrics.distances import MetricResult, fpd, kpd

__all__ = [
    "DATASETS",
    "ClassifierProtocol",
    "calochallenge_evaluate",
    "check_showers",
    "classifier_inputs",
    "evaluator_classifier",
    "evaluator_features",
    "isotonic_calibration",
]


@dataclass(frozen=True)
class _Dataset:
    n_voxels: int
    particle: str
    min_energy_mev: float
    split_events: tuple[int, int, int]


DATASETS: dict[str, _Dataset] = {
    "1-photons": _Dataset(368, "photon", 1.0, (80_000, 20_000, 21_000)),
    "1-pions": _Dataset(533, "pion", 1.0, (80_000, 20_000, 20_800)),
    "2": _Dataset(6480, "electron", 0.5e-3 / 0.033, (60_000, 20_000, 20_000)),
    "3": _Dataset(40500, "electron", 0.5e-3 / 0.033, (60_000, 20_000, 20_000)),
}
"""The four CaloChallenge data sets: voxel count, particle, readout threshold (MeV), and the
evaluator's train / selection / test event counts per sample."""

Mode = Literal["cls-low", "cls-high", "fpd", "kpd"]
MODES: tuple[str, ...] = ("cls-low", "cls-high", "fpd", "kpd")


@dataclass(frozen=True)
class ClassifierProtocol:
    """The evaluator's classifier settings (its ``--cls_*`` options and their defaults)."""

    n_layer: int = 2
    n_hidden: int = 2048
    dropout: float = 0.0
    batch_size: int = 1000
    epochs: int = 50
    lr: float = 2e-4
    split: tuple[float, float, float] = (0.6, 0.2, 0.2)
    #: train / selection / test event counts per sample, used where the samples hold that many (else ``split``)
    split_events: tuple[int, int, int] | None = None
    dtype: torch.dtype = torch.float64

    def to_dict(self) -> dict[str, Any]:
        return {**{f: getattr(self, f) for f in ("n_layer", "n_hidden", "dropout", "batch_size", "epochs", "lr", "split", "split_events")},
                "dtype": str(self.dtype).removeprefix("torch.")}


def _dataset(dataset: str) -> _Dataset:
    if dataset not in DATASETS:
        raise UnknownNameError("CaloChallenge data set", dataset, DATASETS)
    return DATASETS[dataset]


def check_showers(data: Data, dataset: str, role: str = "showers") -> CalorimeterGeometry:
    """The data set's official geometry, after checking that ``data`` are showers of its voxel count.

    Raises:
        InvalidDataError: not calorimeter showers with incident energies, another voxel count, or non-finite values.
    """
    spec = _dataset(dataset)
    n = int(np.prod(data.event_shape))
    if data.schema.kind != "calorimeter" or data.cond is None:
        raise InvalidDataError(f"{role}: the CaloChallenge protocol needs calorimeter showers with incident energies; got {data!r}")
    if n != spec.n_voxels:
        raise InvalidDataError(
            f"{role}: CaloChallenge data set {dataset} has {spec.n_voxels} voxels per shower "
            f"(binning_dataset_{dataset.replace('-', '_')}.xml); the showers have {n}"
        )
    if not bool(torch.isfinite(data.x).all()) or not bool(torch.isfinite(data.cond).all()):
        raise InvalidDataError(f"{role}: the showers or their incident energies are not all finite")
    geo = official_binning(spec.n_voxels)
    assert geo is not None  # every data set's binning ships with physgen
    return geo


def _thresholded(data: Data, dataset: str) -> np.ndarray:
    x = data.x.double().numpy()
    return np.where(x < _dataset(dataset).min_energy_mev, 0.0, x)


def evaluator_features(showers: np.ndarray, geometry: CalorimeterGeometry) -> dict[str, np.ndarray]:
    """The evaluator's ``HighLevelFeatures.CalculateFeatures`` (threshold 0), under its names.

    ``showers``: voxel energies ``[N, n_voxels]`` in MeV, already thresholded.
    """
    x = np.asarray(showers, dtype=np.float64)
    cx, cy, cr = geometry.voxel_centres()
    out: dict[str, np.ndarray] = {"E_tot": x.sum(-1)}
    alpha = set(geometry.layers_binned_in_alpha)
    for ell in geometry.relevant_layers:
        e = x[:, geometry.layer_slice(ell)]
        out[f"E_layer_{ell}"] = e.sum(-1)
    for ell in geometry.relevant_layers:
        sl = geometry.layer_slice(ell)
        e = x[:, sl]
        denom = e.sum(-1) + 1e-16
        names = (("eta", cx[sl]), ("phi", cy[sl]), ("r", cr[sl])) if ell in alpha else (("r", cr[sl]),)
        for name, c in names:
            ec = (c * e).sum(-1) / denom
            second = (c * c * e).sum(-1) / denom
            out[f"EC_{name}_{ell}"] = ec
            out[f"width_{name}_{ell}"] = np.sqrt(np.clip(second - ec**2, 0.0, None))
        out[f"sparsity_{ell}"] = 1.0 - (e > 0).mean(-1)
    return out


def classifier_inputs(data: Data, dataset: str, mode: Literal["cls-low", "cls-high"]) -> np.ndarray:
    """The evaluator's classifier input for ``data`` (``prepare_low/high_data_for_classifier``), float64.

    ``cls-low``: ``[log10 E_inc, voxels / E_inc]``. ``cls-high``: ``[log10 E_inc, log10(E_layer + 1e-8),
    EC_eta/100, EC_phi/100, width_eta/100, width_phi/100, log10(E_tot + 1e-8), sparsity, EC_r/100,
    width_r/100]``, each group over its layers in order.
    """
    geo = check_showers(data, dataset, "showers")
    x = _thresholded(data, dataset)
    e_inc = data.cond[:, :1].double().numpy()  # type: ignore[index]
    if mode == "cls-low":
        return np.concatenate([np.log10(e_inc), x / e_inc], axis=1)
    if mode != "cls-high":
        raise UnknownNameError("classifier mode", mode, ("cls-low", "cls-high"))
    f = evaluator_features(x, geo)
    rel, alpha = geo.relevant_layers, geo.layers_binned_in_alpha

    def group(name: str, layers: list[int]) -> np.ndarray:
        return np.stack([f[f"{name}_{ell}"] for ell in layers], axis=1)

    return np.concatenate(
        [
            np.log10(e_inc),
            np.log10(group("E_layer", rel) + 1e-8),
            group("EC_eta", alpha) / 1e2,
            group("EC_phi", alpha) / 1e2,
            group("width_eta", alpha) / 1e2,
            group("width_phi", alpha) / 1e2,
            np.log10(f["E_tot"][:, None] + 1e-8),
            group("sparsity", rel),
            group("EC_r", rel) / 1e2,
            group("width_r", rel) / 1e2,
        ],
        axis=1,
    )


def isotonic_calibration(scores: np.ndarray, labels: np.ndarray, y_min: float = 1e-6, y_max: float = 1 - 1e-6):  # noqa: ANN201
    """An isotonic map from classifier scores to probabilities, as scikit-learn's ``IsotonicRegression``.

    Fitted on ``(scores, labels)`` with ties in ``scores`` averaged, bounded to ``[y_min, y_max]``,
    interpolated linearly between the fitted points and clipped outside them
    (``out_of_bounds="clip"``). Returns a function of new scores.
    """
    s, y = np.asarray(scores, dtype=np.float64), np.asarray(labels, dtype=np.float64)
    xs, inverse, counts = np.unique(s, return_inverse=True, return_counts=True)
    means = np.bincount(inverse, weights=y) / counts
    fitted = np.clip(isotonic_regression(means, weights=counts.astype(np.float64)).x, y_min, y_max)

    def predict(new: np.ndarray) -> np.ndarray:
        return np.interp(np.asarray(new, dtype=np.float64), xs, fitted)

    return predict


def _dnn(input_dim: int, p: ClassifierProtocol) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Linear(input_dim, p.n_hidden), nn.LeakyReLU(), nn.Dropout(p.dropout)]
    for _ in range(p.n_layer):
        layers += [nn.Linear(p.n_hidden, p.n_hidden), nn.LeakyReLU(), nn.Dropout(p.dropout)]
    layers.append(nn.Linear(p.n_hidden, 1))
    return nn.Sequential(*layers)


def _logits(net: nn.Module, x: torch.Tensor, batch: int) -> torch.Tensor:
    net.eval()
    with torch.no_grad():
        return torch.cat([net(x[i : i + batch])[:, 0] for i in range(0, len(x), batch)])


def evaluator_classifier(
    reference: np.ndarray,
    generated: np.ndarray,
    *,
    protocol: ClassifierProtocol | None = None,
    seed: int = 0,
    device: str | torch.device = "cpu",
    n_bootstrap: int = 50,
) -> dict[str, MetricResult]:
    """The evaluator's classifier test on prepared inputs (``classifier_inputs``) of equal length.

    Returns ``{"auc", "jsd", "accuracy"}`` after the isotonic calibration, each with a bootstrap
    error over the evaluation split (the evaluator reports none), and the selected epoch.
    """
    p = protocol or ClassifierProtocol()
    ref, gen = np.asarray(reference, dtype=np.float64), np.asarray(generated, dtype=np.float64)
    if ref.ndim != 2 or ref.shape != gen.shape:
        raise InvalidDataError(f"the evaluator's classifier needs two inputs of one shape (equal event counts); got {ref.shape} and {gen.shape}")
    if not (np.isfinite(ref).all() and np.isfinite(gen).all()):
        raise InvalidDataError("the classifier inputs are not all finite (an incident energy ≤ 0?)")
    rng = np.random.default_rng(seed)
    n = len(ref)
    if p.split_events is not None and n >= sum(p.split_events):
        cuts = np.cumsum(p.split_events[:2])  # the test part takes the rest, as np.split does in the evaluator
    else:
        cuts = (n * np.asarray(p.split)).astype(int).cumsum()[:-1]
    if min(cuts[0], cuts[1] - cuts[0], n - cuts[1]) < 1:
        raise InvalidDataError(f"{n} events per sample are too few to split {p.split}")
    parts = []
    for arr, label in ((gen, 0.0), (ref, 1.0)):
        shuffled = arr[rng.permutation(n)]
        parts.append([np.concatenate([chunk, np.full((len(chunk), 1), label)], axis=1) for chunk in np.split(shuffled, cuts)])
    train, select, final = (np.concatenate([parts[0][i], parts[1][i]])[rng.permutation(2 * len(parts[0][i]))] for i in range(3))

    dev = torch.device(device)
    torch.manual_seed(seed)
    net = _dnn(ref.shape[1], p).to(dev, p.dtype)
    opt = torch.optim.Adam(net.parameters(), lr=p.lr)
    loss_fn = nn.BCEWithLogitsLoss()
    t = {k: torch.as_tensor(v, dtype=p.dtype, device=dev) for k, v in (("train", train), ("select", select), ("final", final))}
    gen_order = torch.Generator().manual_seed(seed)
    best_acc, best_state, best_epoch = -math.inf, None, 0
    for epoch in range(p.epochs):
        net.train()
        for idx in torch.randperm(len(train), generator=gen_order).split(p.batch_size):
            batch = t["train"][idx.to(dev)]
            loss = loss_fn(net(batch[:, :-1])[:, 0], batch[:, -1])
            opt.zero_grad()
            loss.backward()
            opt.step()
        prob = torch.sigmoid(_logits(net, t["select"][:, :-1], p.batch_size)).cpu().numpy()
        acc = float((np.round(prob) == select[:, -1]).mean())
        if acc > best_acc:
            best_acc, best_epoch = acc, epoch + 1
            best_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
        if acc == 1.0:
            break
    assert best_state is not None
    net.load_state_dict(best_state)
    calibrate = isotonic_calibration(torch.sigmoid(_logits(net, t["select"][:, :-1], p.batch_size)).cpu().numpy(), select[:, -1])
    prob = calibrate(torch.sigmoid(_logits(net, t["final"][:, :-1], p.batch_size)).cpu().numpy())
    labels = final[:, -1]

    def scores(idx: np.ndarray) -> tuple[float, float, float]:
        q, y = prob[idx], labels[idx]
        bce = -float(np.mean(y * np.maximum(np.log(q), -100) + (1 - y) * np.maximum(np.log1p(-q), -100)))  # torch's BCELoss
        return roc_auc(y, q), (math.log(2) - bce) / math.log(2), float((np.round(q) == y).mean())

    auc, jsd, acc = scores(np.arange(len(labels)))
    boots = np.array([scores(rng.integers(0, len(labels), len(labels))) for _ in range(n_bootstrap)]) if n_bootstrap else None
    extra = {"n_evaluated": len(labels), "best_epoch": best_epoch, "protocol": "CaloChallenge evaluate.py"}

    def err(i: int) -> float:
        return float(boots[:, i].std(ddof=1)) if boots is not None and len(boots) > 1 else float("nan")

    return {
        "auc": MetricResult(auc, err(0), extra),
        "jsd": MetricResult(jsd, err(1), {"unit": "fraction of ln 2"}),
        "accuracy": MetricResult(acc, err(2)),
    }


def calochallenge_evaluate(
    reference: Data,
    generated: Data,
    dataset: str,
    *,
    modes: tuple[str, ...] = MODES,
    protocol: ClassifierProtocol | None = None,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> dict[str, Any]:
    """The evaluator's ``cls-low``, ``cls-high``, ``fpd`` and ``kpd`` for ``generated`` against ``reference``.

    Both must have the data set's voxel count. The classifier needs equal event counts: the
    larger sample is cut to the smaller at random. Returns a JSON-serialisable dict.

    Raises:
        InvalidDataError: the wrong voxel count, no incident energies, or non-finite values.
        UnknownNameError: an unknown data set or mode.
    """
    for m in modes:
        if m not in MODES:
            raise UnknownNameError("CaloChallenge mode", m, MODES)
    check_showers(reference, dataset, "reference")
    check_showers(generated, dataset, "generated")
    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    n = min(len(reference), len(generated))
    ref = reference[np.sort(rng.permutation(len(reference))[:n])] if len(reference) > n else reference
    gen = generated[np.sort(rng.permutation(len(generated))[:n])] if len(generated) > n else generated
    p = dataclasses.replace(protocol or ClassifierProtocol(), split_events=_dataset(dataset).split_events)
    out: dict[str, Any] = {"dataset": dataset, "n_reference": len(reference), "n_generated": len(generated), "n_compared": n,
                           "protocol": p.to_dict()}
    for mode in ("cls-low", "cls-high"):
        if mode in modes:
            res = evaluator_classifier(classifier_inputs(ref, dataset, mode), classifier_inputs(gen, dataset, mode),  # type: ignore[arg-type]
                                       protocol=p, seed=seed, device=device)
            out[mode] = {k: v.to_dict() for k, v in res.items()}
    if "fpd" in modes or "kpd" in modes:
        f_ref, f_gen = classifier_inputs(reference, dataset, "cls-high"), classifier_inputs(generated, dataset, "cls-high")
        if "fpd" in modes:
            out["fpd"] = fpd(f_ref, f_gen, min_samples=10_000).to_dict()
        if "kpd" in modes:
            out["kpd"] = kpd(f_ref, f_gen, batch_size=10_000).to_dict()
    out["seconds"] = time.perf_counter() - t0
    return out
