"""Comparison plots a physicist would put in a talk: every feature, with statistical errors and honest axes.

Histograms show the **fraction of events per bin** (so log-spaced bins do not distort them) with
√n errors; the y axis turns logarithmic where the fractions span more than two decades. Ratio
panels show model / reference with the combined statistical error and the reference's own
band; ratios beyond the panel are drawn as arrows at its edge. The end bins hold what lies
beyond them. Key features come one per figure, again in ranges of incident energy, and every
feature of a group (a quantity over all layers) on one page. Each figure is written as PNG and
as PDF, the pages of every feature as PNG. With the ``hep`` extra installed (mplhep), figures use
its ROOT style.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any, Literal

import numpy as np

from physgen.data import Data

__all__ = ["HistogramPanel", "evaluation_plots", "feature_groups", "histogram_panel"]

COLORS = ["#d62728", "#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"]
RATIO_LIMITS = (0.5, 1.5)
_UNITS = {"E_ratio": "E_tot / E_inc", "E_tot": "E_tot [MeV]", "shower_depth": "shower depth [layer]", "m_pair": "m(μμ) [GeV]"}
_GROUPS = (("E_layer_", "energy in layer {} [MeV]"), ("EC_r_", "centre of energy in r, layer {} [mm]"),
           ("width_r_", "width in r, layer {} [mm]"), ("EC_x_", "centre of energy in x, layer {} [mm]"),
           ("EC_y_", "centre of energy in y, layer {} [mm]"), ("width_x_", "width in x, layer {} [mm]"),
           ("width_y_", "width in y, layer {} [mm]"), ("sparsity_", "sparsity (empty-voxel fraction), layer {}"))
_GROUP_TITLES = {"E_layer_": "energy per layer [MeV] (showers with energy in the layer)", "EC_r_": "centre of energy in r per layer [mm]",
                 "width_r_": "width in r per layer [mm]", "EC_x_": "centre of energy in x per layer [mm]",
                 "EC_y_": "centre of energy in y per layer [mm]", "width_x_": "width in x per layer [mm]",
                 "width_y_": "width in y per layer [mm]", "sparsity_": "sparsity (empty-voxel fraction) per layer", "": "other features"}
Style = Literal["auto", "hep", "plain"]


def _plt():  # noqa: ANN202
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _style(style: Style) -> AbstractContextManager[Any]:
    """mplhep's ROOT style where asked for (``hep``) or installed (``auto``); matplotlib's own otherwise."""
    if style == "plain":
        return nullcontext()
    try:
        import mplhep
    except ImportError:
        if style == "hep":
            from physgen.errors import ConfigError

            raise ConfigError("style='hep' needs mplhep: pip install 'physgen[hep]'", key="style") from None
        return nullcontext()
    return _plt().style.context(mplhep.style.ROOT)


def label(name: str) -> str:
    """An axis label with units for a feature name."""
    if name in _UNITS:
        return _UNITS[name]
    for prefix, unit in _GROUPS:
        if name.startswith(prefix):
            return unit.format(name[len(prefix):])
    return name


def feature_groups(names: Sequence[str]) -> dict[str, list[str]]:
    """Features by quantity: ``{"E_layer_": [...], ..., "": [the rest]}``, in their given order."""
    groups: dict[str, list[str]] = {prefix: [] for prefix, _ in _GROUPS}
    groups[""] = []
    for n in names:
        groups[next((p for p, _ in _GROUPS if n.startswith(p)), "")].append(n)
    return {k: v for k, v in groups.items() if v}


class HistogramPanel:
    """What one histogram panel shows, computed before drawing (and tested on its own).

    ``fractions[k]``/``errors[k]``: each sample's fraction of events per bin and its √n / N error;
    ``ratios[k]``/``ratio_errors[k]``: model / reference per bin (NaN where the reference is empty),
    with √(1/m + 1/n) relative error; ``ref_band``: 1/√n of the reference; ``above``/``below``:
    the bins whose ratio lies beyond ``limits``; ``log_y``: the fractions span over two decades.
    """

    def __init__(self, edges: np.ndarray, samples: dict[str, np.ndarray], reference: str, limits: tuple[float, float] = RATIO_LIMITS):
        self.edges, self.reference, self.limits = np.asarray(edges, dtype=np.float64), reference, limits
        self.centres = 0.5 * (self.edges[1:] + self.edges[:-1])
        self.counts = {k: np.histogram(np.clip(v, self.edges[0], self.edges[-1]), self.edges)[0].astype(np.float64) for k, v in samples.items()}
        self.fractions = {k: c / max(c.sum(), 1.0) for k, c in self.counts.items()}
        self.errors = {k: np.sqrt(c) / max(c.sum(), 1.0) for k, c in self.counts.items()}
        n_ref = self.counts[reference]
        with np.errstate(divide="ignore", invalid="ignore"):
            self.ref_band = np.where(n_ref > 0, 1 / np.sqrt(n_ref), np.nan)
            self.ratios, self.ratio_errors, self.above, self.below = {}, {}, {}, {}
            for k, c in self.counts.items():
                if k == reference:
                    continue
                # where the reference is empty a model's entries are an infinite ratio (an arrow up), no entries no ratio
                r = np.where(n_ref > 0, self.fractions[k] / np.where(n_ref > 0, self.fractions[reference], 1), np.where(c > 0, np.inf, np.nan))
                self.ratios[k] = r
                self.ratio_errors[k] = np.where(c > 0, r * np.sqrt(1 / np.maximum(c, 1) + 1 / np.maximum(n_ref, 1)), np.nan)
                self.above[k] = np.flatnonzero(r > limits[1])
                self.below[k] = np.flatnonzero(r < limits[0])
        positive = np.concatenate([f[f > 0] for f in self.fractions.values()])
        self.log_y = bool(positive.size and positive.max() / positive.min() > 100)


def histogram_panel(ax: Any, rax: Any | None, panel: HistogramPanel, log_x: bool = False, legend: bool = True) -> None:
    """Draw ``panel`` on ``ax`` (and its ratio on ``rax``)."""
    ref = panel.reference
    e = panel.edges
    f, err = panel.fractions[ref], panel.errors[ref]
    ax.stairs(f, e, fill=True, color="0.85", label=f"{ref} (N={int(panel.counts[ref].sum()):,})")
    ax.vlines(panel.centres, f - err, f + err, color="0.3", lw=0.8)  # vlines: far cheaper to draw than errorbar
    for (name, frac), color in zip(((k, v) for k, v in panel.fractions.items() if k != ref), COLORS, strict=False):
        ax.stairs(frac, e, color=color, lw=1.4, label=f"{name} (N={int(panel.counts[name].sum()):,})")
        ax.vlines(panel.centres, frac - panel.errors[name], frac + panel.errors[name], color=color, lw=0.8)
    ax.set_ylabel("fraction of events per bin", fontsize=9)
    if panel.log_y:
        ax.set_yscale("log")
    if log_x:
        ax.set_xscale("log")
    if legend:
        ax.legend(fontsize=7, frameon=False)
    if rax is None:
        return
    lo, hi = panel.limits
    rax.stairs(1 + np.nan_to_num(panel.ref_band), e, baseline=1 - np.nan_to_num(panel.ref_band), fill=True, color="0.8", lw=0)
    rax.axhline(1.0, color="0.3", lw=0.8, ls="--")
    for (name, r), color in zip(panel.ratios.items(), COLORS, strict=False):
        inside = (r >= lo) & (r <= hi)
        rerr = panel.ratio_errors[name][inside]
        rax.vlines(panel.centres[inside], r[inside] - rerr, r[inside] + rerr, color=color, lw=0.8)
        rax.plot(panel.centres[inside], r[inside], "o", ms=2.5, color=color)
        pad = 0.04 * (hi - lo)
        rax.plot(panel.centres[panel.above[name]], np.full(len(panel.above[name]), hi - pad), "^", color=color, ms=5)
        rax.plot(panel.centres[panel.below[name]], np.full(len(panel.below[name]), lo + pad), "v", color=color, ms=5)
    rax.set_ylim(lo, hi)
    rax.set_yticks([lo + 0.25 * (hi - lo), 1.0, hi - 0.25 * (hi - lo)])
    rax.set_ylabel("model / ref.", fontsize=8)


def _save(fig: Any, stem: Path, formats: Sequence[str], tight: bool = True, dpi: int = 150) -> Path:
    for fmt in formats:
        fig.savefig(stem.with_suffix(f".{fmt}"), dpi=dpi, bbox_inches="tight" if tight else None)
    _plt().close(fig)
    return stem.with_suffix(f".{formats[0]}")


def _edges(values: Sequence[np.ndarray], log_x: bool, bins: int = 40) -> np.ndarray:
    from physgen.metrics import shared_bins

    return shared_bins(values[0], np.concatenate(list(values)), bins=bins, log=log_x)


def _log_x(name: str, values: np.ndarray) -> bool:
    # energies spread over decades of incident energy: log-spaced bins
    return (name.startswith("E_layer_") or name in ("E_tot", "voxel energy [MeV]")) and bool((values > 0).mean() > 0.5)


def _feature_figure(stem: Path, name: str, real: np.ndarray, gens: dict[str, np.ndarray], ref: str, formats: Sequence[str]) -> Path:
    plt = _plt()
    log_x = _log_x(name, real)
    samples = {ref: real} | gens
    if log_x:
        samples = {k: v[v > 0] for k, v in samples.items()}
    panel = HistogramPanel(_edges(list(samples.values()), log_x), samples, ref)
    fig, (ax, rax) = plt.subplots(2, 1, figsize=(5.2, 4.8), sharex=True, gridspec_kw={"height_ratios": [3, 1], "hspace": 0.05})
    histogram_panel(ax, rax, panel, log_x=log_x)
    rax.set_xlabel(label(name) + (" (values > 0)" if log_x else ""))
    fig.subplots_adjust(left=0.15, right=0.97, top=0.98, bottom=0.1)  # fixed margins: one drawing per format, not two
    return _save(fig, stem, formats, tight=False)


def _group_page(stem: Path, prefix: str, names: list[str], f_real: dict[str, np.ndarray], f_gens: dict[str, dict[str, np.ndarray]],
                ref: str, formats: Sequence[str]) -> Path:
    """Every feature of one group, one small panel each (no ratio), with each model's separation power."""
    from matplotlib.ticker import LogLocator, MaxNLocator, NullLocator

    from physgen.metrics import separation_power

    plt = _plt()
    cols = min(6, len(names))
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.0 * rows + 0.8), squeeze=False)
    for ax, name in zip(axes.ravel(), names, strict=False):
        samples = {ref: f_real[name]} | {k: v[name] for k, v in f_gens.items()}
        log_x = _log_x(name, f_real[name])
        if log_x:
            samples = {k: v[v > 0] if (v > 0).any() else v for k, v in samples.items()}
        panel = HistogramPanel(_edges(list(samples.values()), log_x), samples, ref)
        histogram_panel(ax, None, panel, log_x=log_x, legend=False)
        sp = " ".join(f"{separation_power(samples[ref], samples[k], bins=panel.edges, n_bootstrap=0).value:.3f}" for k in f_gens)
        ax.set_title(f"{name.removeprefix(prefix) if prefix else name}   SP {sp}", fontsize=7, pad=2)
        ax.set_ylabel("")
        # a page of many panels: few ticks, no minor ones (they cost most of the drawing)
        for axis, scale in ((ax.xaxis, ax.get_xscale()), (ax.yaxis, ax.get_yscale())):
            axis.set_major_locator(LogLocator(numticks=3) if scale == "log" else MaxNLocator(3))
            axis.set_minor_locator(NullLocator())
        ax.tick_params(labelsize=6, pad=1)
    for ax in axes.ravel()[len(names):]:
        ax.set_axis_off()
    handles, labels = axes[0, 0].get_legend_handles_labels()
    top = 1 - 0.7 / (2.0 * rows + 0.8)
    fig.legend(handles, labels, loc="upper right", ncol=len(labels), fontsize=8, frameon=False, bbox_to_anchor=(0.99, 1.0))
    fig.text(0.01, 0.995, f"{_GROUP_TITLES[prefix]}{' (panel: layer)' if prefix else ''}: fraction of events per bin; "
             f"SP: separation power from {ref}", va="top", fontsize=9)
    fig.subplots_adjust(left=0.04, right=0.99, bottom=0.03, top=top, wspace=0.25, hspace=0.45)
    # pages of every feature are for looking through, not for slides: PNG only, at screen resolution
    return _save(fig, stem, [f for f in formats if f == "png"] or formats[:1], tight=False, dpi=110)


def energy_ranges(e: np.ndarray, n_ranges: int = 3) -> list[tuple[float, float]]:
    """Incident-energy ranges: decades where the energies span at least one, else quantile thirds."""
    lo, hi = float(e.min()), float(e.max())
    decades = np.arange(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1)
    edges = 10.0 ** decades
    if len(edges) >= 3:
        return [(float(a), float(b)) for a, b in zip(edges[:-1], edges[1:], strict=True) if ((e >= a) & (e < b)).sum() >= 20]
    q = np.quantile(e, np.linspace(0, 1, n_ranges + 1))
    return [(float(a), float(b)) for a, b in zip(q[:-1], q[1:], strict=True)]


def _energy_figure(stem: Path, names: list[str], real: Data, gens: dict[str, Data], f_real: dict[str, np.ndarray],
                   f_gens: dict[str, dict[str, np.ndarray]], ref: str, formats: Sequence[str]) -> Path | None:
    if real.cond is None or any(g.cond is None for g in gens.values()):
        return None
    e_real = real.cond[:, 0].double().numpy()
    ranges = energy_ranges(e_real)
    if len(ranges) < 2:
        return None
    plt = _plt()
    fig = plt.figure(figsize=(4.2 * len(ranges), 3.9 * len(names)))
    outer = fig.add_gridspec(len(names), len(ranges), hspace=0.35, wspace=0.3)
    for row, name in enumerate(names):
        for col, (a, b) in enumerate(ranges):
            inner = outer[row, col].subgridspec(2, 1, height_ratios=[3, 1], hspace=0.05)
            ax, rax = fig.add_subplot(inner[0]), fig.add_subplot(inner[1])
            sel = (e_real >= a) & (e_real < b if col < len(ranges) - 1 else e_real <= b)
            samples = {ref: f_real[name][sel]}
            for k, g in gens.items():
                eg = g.cond[:, 0].double().numpy()  # type: ignore[index]
                samples[k] = f_gens[k][name][(eg >= a) & (eg < b if col < len(ranges) - 1 else eg <= b)]
            if min(len(v) for v in samples.values()) < 5:
                ax.set_axis_off()
                rax.set_axis_off()
                continue
            panel = HistogramPanel(_edges(list(samples.values()), False, bins=30), samples, ref)
            histogram_panel(ax, rax, panel, legend=row == 0 and col == 0)
            ax.tick_params(labelbottom=False)
            ax.set_title(f"E_inc {a / 1000:.3g}–{b / 1000:.3g} GeV", fontsize=9)
            rax.set_xlabel(label(name), fontsize=8)
    return _save(fig, stem, formats)


def _key_features(real_feats: dict[str, np.ndarray], data: Data) -> list[str]:
    if data.schema.kind != "calorimeter":
        names = list(real_feats)
        return (["m_pair"] if "m_pair" in names else []) + [n for n in names if n != "m_pair"][:8]
    geo = data.geometry
    assert geo is not None
    rel = geo.relevant_layers
    e_mean = [float(real_feats[f"E_layer_{ell}"].mean()) for ell in rel]
    peak = rel[int(np.argmax(e_mean))]
    picks = ["E_ratio", "shower_depth"] + [f"E_layer_{rel[int(q * (len(rel) - 1))]}" for q in (0.0, 0.25, 0.5, 0.75)]
    picks += [f"EC_r_{peak}", f"width_r_{peak}", f"sparsity_{peak}", f"width_x_{peak}"]
    return list(dict.fromkeys(p for p in picks if p in real_feats))


def _profiles(stem: Path, real: Data, gens: dict[str, Data], ref: str, formats: Sequence[str]) -> Path:
    from physgen.metrics import layer_profiles

    plt = _plt()
    prof = {ref: layer_profiles(real)} | {k: layer_profiles(v) for k, v in gens.items()}
    has_radial = "radial" in prof[ref]
    fig, axes = plt.subplots(1, 2 if has_radial else 1, figsize=(10 if has_radial else 5.2, 3.8), squeeze=False)
    for (name, p), color in zip(prof.items(), ["0.3", *COLORS], strict=False):
        style = {"color": color, "lw": 2.2 if name == ref else 1.3, "ls": "-" if name == ref else "--"}
        axes[0, 0].plot(np.arange(len(p["longitudinal"])), p["longitudinal"], label=name, **style)
        if has_radial:
            edges = p["r_edges_mm"]
            axes[0, 1].stairs(p["radial"] / np.diff(edges), edges, label=name, **style)
    axes[0, 0].set(xlabel="layer", ylabel="mean energy per layer [MeV]", title="longitudinal profile")
    axes[0, 0].legend(fontsize=7, frameon=False)
    if has_radial:
        axes[0, 1].set(xlabel="r [mm]", ylabel="mean energy per mm of r [MeV/mm]", yscale="log", title="radial profile (all layers)")
    return _save(fig, stem, formats)


def _mean_images(stem: Path, real: Data, gens: dict[str, Data], ref: str, formats: Sequence[str]) -> Path | None:
    from matplotlib.colors import LogNorm

    geo = real.geometry
    if geo is None or geo.kind != "polar":
        return None
    rel = [ell for ell in geo.relevant_layers if geo.layers[ell].n_alpha > 1] or geo.relevant_layers
    if not rel:
        return None
    e = [float(real.x[:, geo.layer_slice(ell)].double().sum(1).mean()) for ell in rel]
    peak = int(np.argmax(e))
    layers = sorted({rel[0], rel[peak], rel[min(len(rel) - 1, peak + (len(rel) - peak) // 2)]})
    plt = _plt()
    samples = {ref: real} | gens
    fig, axes = plt.subplots(len(samples), len(layers), figsize=(2.6 * len(layers), 2.5 * len(samples)), subplot_kw={"projection": "polar"}, squeeze=False)
    for col, ell in enumerate(layers):
        la = geo.layers[ell]
        alpha_edges = np.linspace(-math.pi, math.pi, la.n_alpha + 1)
        r_edges = np.asarray(la.r_edges)
        mean_ref = real.x[:, geo.layer_slice(ell)].double().mean(0).numpy().reshape(la.n_alpha, la.n_r)
        vmax, vmin = mean_ref.max(), max(mean_ref[mean_ref > 0].min() if (mean_ref > 0).any() else 1e-3, mean_ref.max() * 1e-4)
        for row, (name, d) in enumerate(samples.items()):
            img = d.x[:, geo.layer_slice(ell)].double().mean(0).numpy().reshape(la.n_alpha, la.n_r)
            ax = axes[row, col]
            mesh = ax.pcolormesh(alpha_edges, r_edges, np.clip(img.T, vmin, None), norm=LogNorm(vmin=vmin, vmax=vmax), cmap="viridis", shading="flat")
            ax.set_xticklabels([])
            ax.set_yticklabels([])
            ax.set_title(f"{name}\nlayer {ell}", fontsize=8)
        fig.colorbar(mesh, ax=axes[:, col].tolist(), shrink=0.6, label="mean energy [MeV]")
    return _save(fig, stem, formats)


def _loss_curves(stem: Path, histories: dict[str, list[dict[str, Any]]], formats: Sequence[str]) -> Path | None:
    curves = {k: h for k, h in histories.items() if sum("loss" in r for r in h) > 1}
    if not curves:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.2, 3.8))
    for (name, h), color in zip(curves.items(), COLORS, strict=False):
        ax.plot([r["epoch"] for r in h if "loss" in r], [r["loss"] for r in h if "loss" in r], color=color, lw=1.2, label=f"{name} (train)")
        if any("val_loss" in r for r in h):
            ax.plot([r["epoch"] for r in h if "val_loss" in r], [r["val_loss"] for r in h if "val_loss" in r], color=color, lw=1.2, ls="--", label=f"{name} (validation)")
    ax.set(xlabel="epoch", ylabel="loss per dimension (family's own)")
    ax.legend(fontsize=7, frameon=False)
    return _save(fig, stem, formats)


def evaluation_plots(
    real: Data,
    generated: dict[str, Data],
    out_dir: str | Path,
    histories: dict[str, list[dict[str, Any]]] | None = None,
    *,
    formats: Sequence[str] = ("png", "pdf"),
    style: Style = "auto",
) -> list[Path]:
    """Every plot comparing ``real`` with each generated sample; returns the paths of the first format's files.

    Files: ``feature_NAME`` (key features with ratio panels), ``energy_ranges`` (key features per
    incident-energy range), ``all_GROUP`` (every feature of a group), ``profiles``,
    ``voxel_spectrum``, ``mean_showers``, ``loss_curves``; each in every format of ``formats``.
    """
    from physgen.metrics import features, voxel_spectrum

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    f_real = features(real)
    f_gen = {k: features(v) for k, v in generated.items()}
    ref = "Geant4" if "geant4_cpu_s" in real.aux else "data"
    paths: list[Path] = []
    with _style(style):
        key = _key_features(f_real, real)
        for name in key:
            paths.append(_feature_figure(out / f"feature_{name}", name, f_real[name], {k: v[name] for k, v in f_gen.items()}, ref, formats))
        if real.schema.kind == "calorimeter":
            picked = [n for n in ("E_ratio", "shower_depth", key[-1] if key else "") if n in f_real]
            fig = _energy_figure(out / "energy_ranges", picked, real, generated, f_real, f_gen, ref, formats)
            if fig is not None:
                paths.append(fig)
        for prefix, names in feature_groups(list(f_real)).items():
            paths.append(_group_page(out / f"all_{prefix.rstrip('_') or 'other'}", prefix, names, f_real, f_gen, ref, formats))
        if real.schema.kind == "calorimeter":
            paths.append(_profiles(out / "profiles", real, generated, ref, formats))
            spec = {k: v for k, v in ((k, voxel_spectrum(g)) for k, g in generated.items()) if len(v)}
            paths.append(_feature_figure(out / "voxel_spectrum", "voxel energy [MeV]", voxel_spectrum(real), spec, ref, formats))
            img = _mean_images(out / "mean_showers", real, generated, ref, formats)
            if img is not None:
                paths.append(img)
        if histories:
            curve = _loss_curves(out / "loss_curves", histories, formats)
            if curve is not None:
                paths.append(curve)
    return paths
