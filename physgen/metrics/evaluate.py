"""``evaluate(real, generated)``: the whole suite, each number next to its truth-vs-truth floor.

The real sample is split into two disjoint halves, A (the reference) and B.
Every metric is computed for A vs generated and for A vs B — the floor a
perfect surrogate would reach with the same sample sizes. When ``generated``
was sampled at the real conditions row by row (same N, same ``cond``), the
generated rows paired with B are used, so both comparisons see the same
incident energies; otherwise a random subset of |B| generated rows is.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from physgen.data import Data
from physgen.errors import InvalidDataError
from physgen.metrics.calorimeter import high_level_features, voxel_spectrum
from physgen.metrics.classifier import classifier_two_sample
from physgen.metrics.distances import MetricResult, fpd, kpd, mmd2, sliced_wasserstein, wasserstein1
from physgen.metrics.events import event_features
from physgen.metrics.histograms import chi2_two_sample, separation_power

__all__ = ["evaluate", "features"]


def features(data: Data) -> dict[str, np.ndarray]:
    """The per-event physics features of a sample: calorimeter high-level features or event features."""
    if data.schema.kind == "calorimeter":
        return high_level_features(data)
    if data.schema.kind == "event":
        return event_features(data)
    x = data.x.double().numpy()
    return {f"x{i}": x[:, i] for i in range(x.shape[1])}


def _classifier_input(data: Data) -> np.ndarray:
    """Voxels as fractions of the incident energy plus log10 E_inc (the CaloChallenge classifier's input)."""
    x = data.x.double().numpy()
    if data.schema.kind == "calorimeter" and data.cond is not None:
        e = data.cond[:, :1].double().numpy()
        return np.concatenate([x / e, np.log10(e)], axis=1)
    if data.cond is not None:
        return np.concatenate([x, data.cond.double().numpy()], axis=1)
    return x


def _entry(test: MetricResult, floor: MetricResult) -> dict[str, Any]:
    out = test.to_dict()
    out["floor"] = floor.to_dict()["value"]
    out["floor_error"] = floor.to_dict()["error"]
    return out


def evaluate(
    real: Data,
    generated: Data,
    *,
    seed: int = 0,
    classifier: bool = True,
    classifier_epochs: int = 40,
    mmd_max_samples: int = 5000,
    bins: int = 50,
    n_bootstrap: int = 20,
) -> dict[str, Any]:
    """Run the metric suite; returns a JSON-serialisable report.

    Report layout::

        {"n_reference", "n_test", "kind", "seconds",
         "summary":  {metric: {"value", "error", "floor", "floor_error", ...}},
         "features": {feature: {"w1": {...}, "separation_power": {...}, "chi2": {...}}}}

    Summary metrics: ``fpd`` and ``kpd`` on the features, ``mmd_features``
    (Gaussian kernel, median bandwidth, on standardised features), ``sliced_w1``
    on the standardised features, and ``classifier_auc``/``classifier_jsd`` on
    the low-level input (voxels / E_inc and log E_inc for showers).
    """
    if real.event_shape != generated.event_shape:
        raise InvalidDataError(f"real and generated event shapes differ: {real.event_shape} vs {generated.event_shape}")
    if len(real) < 20 or len(generated) < 10:
        raise InvalidDataError(f"evaluate needs ≥ 20 real and ≥ 10 generated events; got {len(real)}, {len(generated)}")
    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(real))
    a_idx, b_idx = np.sort(perm[: len(real) // 2]), np.sort(perm[len(real) // 2 :])
    ref, half = real[a_idx], real[b_idx]
    paired = (
        len(generated) == len(real)
        and generated.cond is not None
        and real.cond is not None
        and bool((generated.cond == real.cond).all())
    )
    gen = generated[b_idx] if paired else generated[np.sort(rng.permutation(len(generated))[: len(half)])]

    f_ref, f_half, f_gen = features(ref), features(half), features(gen)
    names = list(f_ref)
    report_features: dict[str, Any] = {}
    for name in names:
        entry = {}
        for label, fn in (
            ("w1", lambda p, q: wasserstein1(p, q, n_bootstrap=n_bootstrap, seed=seed)),
            ("separation_power", lambda p, q: separation_power(p, q, bins=bins, n_bootstrap=n_bootstrap, seed=seed)),
            ("chi2", lambda p, q: chi2_two_sample(p, q, bins=bins)),
        ):
            entry[label] = _entry(fn(f_ref[name], f_gen[name]), fn(f_ref[name], f_half[name]))
        report_features[name] = entry

    def matrix(f: dict[str, np.ndarray]) -> np.ndarray:
        return np.stack([f[n] for n in names], axis=1)

    m_ref, m_half, m_gen = matrix(f_ref), matrix(f_half), matrix(f_gen)
    mean, std = m_ref.mean(0), m_ref.std(0) + 1e-12
    s_ref, s_half, s_gen = ((m - mean) / std for m in (m_ref, m_half, m_gen))
    n_small = min(len(m_ref), len(m_gen), len(m_half))
    fpd_max = max(n_small, 10)
    fpd_kw = {"min_samples": max(int(fpd_max / 2.5), 5), "max_samples": fpd_max, "num_batches": 10, "seed": seed}
    kpd_kw = {"batch_size": min(5000, n_small), "seed": seed}
    mm = min(mmd_max_samples, n_small)
    summary = {
        "fpd": _entry(fpd(m_ref, m_gen, **fpd_kw), fpd(m_ref, m_half, **fpd_kw))
        | ({"warning": f"{n_small} events for {len(names)} features: FPD's finite-sample bias dominates below ~10 events per feature (jetnet recommends 50,000)"} if n_small < 10 * len(names) else {}),
        "kpd": _entry(kpd(m_ref, m_gen, **kpd_kw), kpd(m_ref, m_half, **kpd_kw)),
        "mmd_features": _entry(mmd2(s_ref[:mm], s_gen[:mm], seed=seed), mmd2(s_ref[:mm], s_half[:mm], seed=seed)),
        "sliced_w1": _entry(sliced_wasserstein(s_ref, s_gen, seed=seed), sliced_wasserstein(s_ref, s_half, seed=seed)),
    }
    if real.schema.kind == "calorimeter":
        v_ref, v_gen, v_half = (voxel_spectrum(d) for d in (ref, gen, half))
        if len(v_gen) and len(v_half):
            lv = (np.log10(v) for v in (v_ref, v_gen, v_half))
            lr, lg, lh = lv
            summary["voxel_spectrum_separation"] = _entry(
                separation_power(lr, lg, bins=bins, n_bootstrap=0), separation_power(lr, lh, bins=bins, n_bootstrap=0)
            )
    if classifier:
        c_test = classifier_two_sample(_classifier_input(ref), _classifier_input(gen), epochs=classifier_epochs, seed=seed)
        c_floor = classifier_two_sample(_classifier_input(ref), _classifier_input(half), epochs=classifier_epochs, seed=seed)
        summary["classifier_auc"] = _entry(c_test["auc"], c_floor["auc"])
        summary["classifier_jsd"] = _entry(c_test["jsd"], c_floor["jsd"])
    mode_collapse = _energy_spread_by_bin(half, gen) if real.schema.kind == "calorimeter" and paired else None
    worst = max(report_features.items(), key=lambda kv: kv[1]["separation_power"]["value"])
    return {
        "kind": real.schema.kind,
        "n_reference": len(ref),
        "n_test": len(gen),
        "paired_conditions": paired,
        "seconds": time.perf_counter() - t0,
        "summary": summary,
        "features": report_features,
        "worst_feature": {"name": worst[0], "separation_power": worst[1]["separation_power"]["value"]},
        "mean_separation_power": float(np.mean([v["separation_power"]["value"] for v in report_features.values()])),
        "mean_separation_power_floor": float(np.mean([v["separation_power"]["floor"] for v in report_features.values()])),
        **({"mode_collapse": mode_collapse} if mode_collapse is not None else {}),
    }


def _energy_spread_by_bin(real: Data, gen: Data, n_bins: int = 5) -> dict[str, Any]:
    """Mode-collapse check: in quantile bins of incident energy, the spread of E_tot/E_inc, generated over real.

    ``real`` and ``gen`` share their conditions row by row. A collapsed generator
    (every shower alike at a given energy) shows ratios far below 1.
    """
    e = real.cond[:, 0].double().numpy()  # type: ignore[index]
    r_real = real.x.double().sum(1).numpy() / e
    r_gen = gen.x.double().sum(1).numpy() / e
    edges = np.quantile(e, np.linspace(0, 1, n_bins + 1))
    bins = []
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        sel = (e >= lo) & (e <= hi)
        if sel.sum() < 5:
            continue
        s_real, s_gen = float(r_real[sel].std()), float(r_gen[sel].std())
        bins.append({"e_min_mev": float(lo), "e_max_mev": float(hi), "std_real": s_real, "std_generated": s_gen, "ratio": s_gen / s_real if s_real > 0 else None})
    ratios = [b["ratio"] for b in bins if b["ratio"] is not None]
    return {"bins": bins, "min_ratio": min(ratios) if ratios else None, "collapsed": bool(ratios) and min(ratios) < 0.5}

