"""Plots and the benchmark report (HTML and Markdown) a physicist would put in a talk.

All plots are matplotlib PNGs with labelled axes and units: high-level feature
histograms of data vs each surrogate with ratio panels, mean shower images per
layer, longitudinal and radial profiles, the voxel-energy spectrum, loss curves,
and for events every marginal plus the dimuon mass spectrum.
"""

from __future__ import annotations

import html
import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from physgen.data import Data

__all__ = ["evaluation_plots", "write_report", "leaderboard_rows", "leaderboard_text", "write_json"]

_COLORS = ["#d62728", "#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"]
_UNITS = {"E_ratio": "E_tot / E_inc", "E_tot": "E_tot [MeV]", "shower_depth": "shower depth [layer]", "m_pair": "m(μμ) [GeV]"}


def write_json(path: str | Path, obj: Any) -> Path:
    """Write JSON atomically (temporary name, then rename)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    # NaN (a metric without an error) becomes null, so strict JSON readers accept the file
    tmp.write_text(json.dumps(_nan_to_none(obj), indent=1, default=_default, allow_nan=False))
    os.replace(tmp, path)
    return path


def _nan_to_none(o: Any) -> Any:
    if isinstance(o, float) and not math.isfinite(o):
        return None
    if isinstance(o, dict):
        return {k: _nan_to_none(v) for k, v in o.items()}
    if isinstance(o, list | tuple):
        return [_nan_to_none(v) for v in o]
    return o


def _default(o: Any) -> Any:
    if isinstance(o, np.floating | np.integer):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON-serialisable: {type(o).__name__}")


def _plt():  # noqa: ANN202
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _label(name: str) -> str:
    if name in _UNITS:
        return _UNITS[name]
    for prefix, unit in (("E_layer_", "energy in layer {} [MeV]"), ("EC_r_", "centre of energy in r, layer {} [mm]"),
                         ("width_r_", "width in r, layer {} [mm]"), ("EC_x_", "centre of energy in x, layer {} [mm]"),
                         ("EC_y_", "centre of energy in y, layer {} [mm]"), ("width_x_", "width in x, layer {} [mm]"),
                         ("width_y_", "width in y, layer {} [mm]"), ("sparsity_", "sparsity (empty-voxel fraction), layer {}")):
        if name.startswith(prefix):
            return unit.format(name[len(prefix):])
    return name


def _hist_with_ratio(path: Path, name: str, real: np.ndarray, gens: dict[str, np.ndarray], log_x: bool = False, ref: str = "data") -> Path:
    plt = _plt()
    from physgen.metrics import shared_bins

    if log_x:
        real = real[real > 0]
        gens = {k: v[v > 0] for k, v in gens.items()}
    edges = shared_bins(real, np.concatenate([real] + list(gens.values())) if gens else real, bins=40, log=log_x)
    fig, (ax, rax) = plt.subplots(2, 1, figsize=(5.2, 4.6), sharex=True, gridspec_kw={"height_ratios": [3, 1], "hspace": 0.05})
    clip = lambda v: np.clip(v, edges[0], edges[-1])  # noqa: E731
    h_real, _ = np.histogram(clip(real), edges, density=True)
    ax.hist(clip(real), edges, density=True, color="0.75", label=f"{ref} (N={len(real)})")
    centres = 0.5 * (edges[1:] + edges[:-1])
    for (label, values), color in zip(gens.items(), _COLORS, strict=False):
        h, _ = np.histogram(clip(values), edges, density=True)
        ax.step(edges, np.append(h, h[-1]), where="post", color=color, lw=1.4, label=label)
        with np.errstate(divide="ignore", invalid="ignore"):
            rax.plot(centres, np.where(h_real > 0, h / h_real, np.nan), drawstyle="steps-mid", color=color, lw=1.2)
    rax.axhline(1.0, color="0.4", lw=0.8, ls="--")
    rax.set_ylim(0.5, 1.5)
    rax.set_ylabel("model / data")
    rax.set_xlabel(_label(name))
    ax.set_ylabel("normalised entries")
    ax.legend(fontsize=7, frameon=False)
    if log_x:
        ax.set_xscale("log")
    fig.savefig(path, dpi=90, bbox_inches="tight")
    plt.close(fig)
    return path


def _pick_features(real_feats: dict[str, np.ndarray], data: Data) -> list[str]:
    if data.schema.kind != "calorimeter":
        names = list(real_feats)
        return (["m_pair"] if "m_pair" in names else []) + [n for n in names if n != "m_pair"][:8]
    geo = data.geometry
    assert geo is not None
    rel = geo.relevant_layers
    e_mean = [float(real_feats[f"E_layer_{ell}"].mean()) for ell in rel]
    peak = rel[int(np.argmax(e_mean))]
    picks = ["E_ratio", "shower_depth"] + [f"E_layer_{rel[int(q * (len(rel) - 1))]}" for q in (0.0, 0.25, 0.5, 0.75)]
    picks += [f"EC_r_{peak}", f"width_r_{peak}", f"sparsity_{peak}"]
    if f"width_x_{peak}" in real_feats:
        picks.append(f"width_x_{peak}")
    return list(dict.fromkeys(p for p in picks if p in real_feats))


def _profiles(path: Path, real: Data, gens: dict[str, Data], ref: str = "data") -> Path:
    plt = _plt()
    from physgen.metrics import layer_profiles

    prof = {ref: layer_profiles(real)} | {k: layer_profiles(v) for k, v in gens.items()}
    has_radial = "radial" in prof[ref]
    fig, axes = plt.subplots(1, 2 if has_radial else 1, figsize=(10 if has_radial else 5.2, 3.8), squeeze=False)
    for (label, p), color in zip(prof.items(), ["0.3"] + _COLORS, strict=False):
        style = {"color": color, "lw": 2.2 if label == ref else 1.3, "ls": "-" if label == ref else "--"}
        axes[0, 0].plot(np.arange(len(p["longitudinal"])), p["longitudinal"], label=label, **style)
        if has_radial:
            edges = p["r_edges_mm"]
            width = np.diff(edges)
            density = p["radial"] / width
            axes[0, 1].step(edges, np.append(density, density[-1]), where="post", label=label, **style)
    axes[0, 0].set_xlabel("layer")
    axes[0, 0].set_ylabel("mean energy per layer [MeV]")
    axes[0, 0].set_title("longitudinal profile")
    axes[0, 0].legend(fontsize=7, frameon=False)
    if has_radial:
        axes[0, 1].set_xlabel("r [mm]")
        axes[0, 1].set_ylabel("mean energy per mm of r [MeV/mm]")
        axes[0, 1].set_yscale("log")
        axes[0, 1].set_title("radial profile (all layers)")
    fig.savefig(path, dpi=90, bbox_inches="tight")
    plt.close(fig)
    return path


def _mean_images(path: Path, real: Data, gens: dict[str, Data], ref: str = "data") -> Path | None:
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
        ref = real.x[:, geo.layer_slice(ell)].double().mean(0).numpy().reshape(la.n_alpha, la.n_r)
        vmax, vmin = ref.max(), max(ref[ref > 0].min() if (ref > 0).any() else 1e-3, ref.max() * 1e-4)
        for row, (label, d) in enumerate(samples.items()):
            img = d.x[:, geo.layer_slice(ell)].double().mean(0).numpy().reshape(la.n_alpha, la.n_r)
            ax = axes[row, col]
            from matplotlib.colors import LogNorm

            mesh = ax.pcolormesh(alpha_edges, r_edges, np.clip(img.T, vmin, None), norm=LogNorm(vmin=vmin, vmax=vmax), cmap="viridis", shading="flat")
            ax.set_xticklabels([])
            ax.set_yticklabels([])
            ax.set_title(f"{label}\nlayer {ell}", fontsize=8)
        fig.colorbar(mesh, ax=axes[:, col].tolist(), shrink=0.6, label="mean energy [MeV]")
    fig.savefig(path, dpi=80, bbox_inches="tight")
    plt.close(fig)
    return path


def _loss_curves(path: Path, histories: dict[str, list[dict[str, Any]]]) -> Path | None:
    curves = {k: h for k, h in histories.items() if sum("loss" in r for r in h) > 1}
    if not curves:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.2, 3.8))
    for (label, h), color in zip(curves.items(), _COLORS, strict=False):
        ep = [r["epoch"] for r in h if "loss" in r]
        ax.plot(ep, [r["loss"] for r in h if "loss" in r], color=color, lw=1.2, label=f"{label} (train)")
        if any("val_loss" in r for r in h):
            ax.plot([r["epoch"] for r in h if "val_loss" in r], [r["val_loss"] for r in h if "val_loss" in r], color=color, lw=1.2, ls="--", label=f"{label} (validation)")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss per dimension (family's own)")
    ax.legend(fontsize=7, frameon=False)
    fig.savefig(path, dpi=90, bbox_inches="tight")
    plt.close(fig)
    return path


def evaluation_plots(real: Data, generated: dict[str, Data], out_dir: str | Path, histories: dict[str, list[dict[str, Any]]] | None = None) -> list[Path]:
    """Every plot comparing ``real`` with each generated sample; returns the PNG paths."""
    from physgen.metrics import features, voxel_spectrum

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    f_real = features(real)
    f_gen = {k: features(v) for k, v in generated.items()}
    ref = "Geant4" if "geant4_cpu_s" in real.aux else "data"
    paths = []
    for name in _pick_features(f_real, real):
        # energies spread over two decades of incident energy: log axes
        log_x = (name.startswith("E_layer_") or name == "E_tot") and bool((f_real[name] > 0).mean() > 0.5)
        paths.append(_hist_with_ratio(out / f"feature_{name}.png", name, f_real[name], {k: v[name] for k, v in f_gen.items()}, log_x=log_x, ref=ref))
    if real.schema.kind == "calorimeter":
        paths.append(_profiles(out / "profiles.png", real, generated, ref))
        spec = {k: voxel_spectrum(v) for k, v in generated.items()}
        paths.append(_hist_with_ratio(out / "voxel_spectrum.png", "voxel energy [MeV]", voxel_spectrum(real), {k: v for k, v in spec.items() if len(v)}, log_x=True, ref=ref))
        img = _mean_images(out / "mean_showers.png", real, generated, ref)
        if img is not None:
            paths.append(img)
    if histories:
        curve = _loss_curves(out / "loss_curves.png", histories)
        if curve is not None:
            paths.append(curve)
    return paths


# -- leaderboard and report ----------------------------------------------------------------


def _pm(entry: dict[str, Any] | None, digits: int = 3) -> str:
    if not entry or entry.get("value") is None:
        return "–"
    err = entry.get("error")
    return f"{entry['value']:.{digits}g} ± {err:.2g}" if err is not None and math.isfinite(err) else f"{entry['value']:.{digits}g}"


def leaderboard_rows(payload: dict[str, Any]) -> list[dict[str, str]]:
    rows = []
    for r in payload["results"]:
        if "error" in r:
            rows.append({"dataset": r["dataset"], "surrogate": r["label"], "AUC": f"failed: {r['error'][:60]}"})
            continue
        s, ev = r["evaluation"]["summary"], r["evaluation"]
        g4 = r.get("geant4", {})
        big, one = g4.get("batch_10000") or {}, g4.get("batch_1") or {}
        if "quantum" in r:
            q = r["quantum"]
            rows.append({"dataset": r["dataset"], "surrogate": r["label"], "fidelity |<ψ|φ>|² (histogram)": f"{q['fidelity']:.4f} ({q.get('histogram_fidelity', float('nan')):.4f})",
                         "KL": f"{q['kl']:.4f}", "train [s]": f"{r['train']['seconds']:.1f}"})
            continue
        rows.append({
            "dataset": r["dataset"],
            "surrogate": r["label"],
            "AUC (floor)": f"{_pm(s.get('classifier_auc'))} ({s['classifier_auc']['floor']:.3f})" if "classifier_auc" in s else "–",
            "FPD (floor)": f"{_pm(s['fpd'])} ({s['fpd']['floor']:.3g})",
            "KPD (floor)": f"{_pm(s['kpd'])} ({s['kpd']['floor']:.2g})",
            "mean sep. power (floor)": f"{ev['mean_separation_power']:.4f} ({ev['mean_separation_power_floor']:.4f})",
            "train [s]": f"{r['train']['seconds']:.0f}",
            "gen [µs/event]": f"{1e6 * r['generate']['timing']['batch_10000']['seconds_per_event']:.0f}",
            "× Geant4 per core (batch 10k / 1)": f"{big['all']['speedup']:.0f} / {one['all']['speedup']:.0f}" if big.get("all") and one.get("all") else "–",
        })
    return rows


def leaderboard_text(payload: dict[str, Any]) -> str:
    rows = leaderboard_rows(payload)
    if not rows:
        return "(no results)"
    cols = list(dict.fromkeys(k for r in rows for k in r))
    widths = {c: max(len(c), *(len(r.get(c, "")) for r in rows)) for c in cols}
    lines = ["  ".join(c.ljust(widths[c]) for c in cols), "  ".join("-" * widths[c] for c in cols)]
    lines += ["  ".join(r.get(c, "").ljust(widths[c]) for c in cols) for r in rows]
    return "\n".join(lines)


def _markdown(payload: dict[str, Any]) -> str:
    rows = leaderboard_rows(payload)
    cols = list(dict.fromkeys(k for r in rows for k in r))
    m = payload["machine"]
    out = [
        f"# physgen benchmark: suite `{payload['suite']}`",
        "",
        f"Run {payload['started']} on {m['platform']} ({m['cpu_count']} cores, torch {m['torch']}, "
        f"physgen {m['physgen']}{', GPU ' + m['cuda'] if m.get('cuda') else ''}); matmul {payload['matmul_gflops']:.0f} GFLOP/s; "
        f"{payload['seconds']:.0f} s in all.",
        "",
        "Floors are truth vs truth: two disjoint halves of the held-out data. AUC: physgen's quick classifier (not the CaloChallenge evaluator's protocol); 0.5 means indistinguishable.",
        "",
        "| " + " | ".join(cols) + " |",
        "|" + "---|" * len(cols),
    ]
    out += ["| " + " | ".join(r.get(c, "") for c in cols) + " |" for r in rows]
    for r in payload["results"]:
        if "vs_gaussian" in r:
            v = r["vs_gaussian"]
            out.append("")
            out.append(f"- {r['dataset']} / {r['label']}: beats the Gaussian baseline on {v['features'] - len(v['worse_than_gaussian'])} of {v['features']} high-level features"
                       + (f" (not on: {', '.join(v['worse_than_gaussian'][:8])}{' ...' if len(v['worse_than_gaussian']) > 8 else ''})" if v["worse_than_gaussian"] else "")
                       + _significance(v))
    return "\n".join(out) + "\n"


def _significance(v: dict) -> str:
    """How many of the losses exceed 2σ of the bootstrap errors, and on which both sit at the floor (older files lack the fields)."""
    if "significantly_worse_than_gaussian" not in v or not v["worse_than_gaussian"]:
        return ""
    sig = v["significantly_worse_than_gaussian"]
    text = "; none by more than 2σ" if not sig else f"; by more than 2σ on {len(sig)}: {', '.join(sig[:8])}{' ...' if len(sig) > 8 else ''}"
    floor = v.get("both_at_floor") or []
    if floor:
        rest = [f for f in v["worse_than_gaussian"] if f not in floor]
        text += f"; both within 2σ of the truth-vs-truth floor on {len(floor)}" + (
            f" (not at the floor: {', '.join(rest[:8])}{' ...' if len(rest) > 8 else ''})" if rest else " (all of them)")
    return text


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>physgen benchmark: {suite}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }}
table {{ border-collapse: collapse; font-size: 13px; }} th, td {{ border: 1px solid #bbb; padding: 4px 8px; text-align: right; }}
th {{ background: #eee; }} td:first-child, td:nth-child(2) {{ text-align: left; }}
.plots {{ display: flex; flex-wrap: wrap; gap: 8px; }} .plots img {{ max-width: 380px; border: 1px solid #ddd; }}
.plots img.wide {{ max-width: 760px; }}
</style></head>
<body>
<h1>physgen benchmark — suite <code>{suite}</code></h1>
<p>{meta}</p>
<p>Every metric is shown with its truth-vs-truth floor (two disjoint halves of the held-out data): a perfect surrogate
reaches the floor. AUC: physgen's quick classifier, not the CaloChallenge evaluator's protocol (<code>physgen evaluate --calochallenge</code>); 0.5 means indistinguishable from the reference (Geant4 or data).</p>
<h2>Leaderboard</h2>
{table}
{notes}
{sections}
<script>
window.addEventListener("load", function () {{
  var imgs = Array.prototype.slice.call(document.images);
  var ok = imgs.filter(function (i) {{ return i.complete && i.naturalWidth > 0; }}).length;
  document.title = "physgen report (images ok: " + ok + "/" + imgs.length + ")";
}});
</script>
</body></html>
"""


def write_report(payload: dict[str, Any], out_dir: str | Path) -> dict[str, Path]:
    """Write ``report.html`` and ``report.md`` for a benchmark run (plots must already be in ``payload["plots"]``)."""
    out = Path(out_dir)
    rows = leaderboard_rows(payload)
    cols = list(dict.fromkeys(k for r in rows for k in r))
    table = "<table><tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in cols) + "</tr>"
    table += "".join("<tr>" + "".join(f"<td>{html.escape(r.get(c, ''))}</td>" for c in cols) + "</tr>" for r in rows) + "</table>"
    notes = "".join(
        f"<li>{html.escape(line[2:])}</li>" for line in _markdown(payload).splitlines() if line.startswith("- ")
    )
    sections = []
    for ds, plots in payload.get("plots", {}).items():
        imgs = "".join(
            f'<img src="{html.escape(p)}" alt="{html.escape(Path(p).stem)}"' + (' class="wide"' if "mean_showers" in p or "profiles" in p else "") + ">"
            for p in plots
        )
        sections.append(f"<h2>Data set {html.escape(ds)}</h2><div class='plots'>{imgs}</div>")
    m = payload["machine"]
    meta = html.escape(
        f"Run {payload['started']} on {m['platform']} ({m['cpu_count']} cores; torch {m['torch']}; physgen {m['physgen']}"
        f"{'; GPU ' + m['cuda'] if m.get('cuda') else ''}); this machine's matmul rate {payload['matmul_gflops']:.0f} GFLOP/s; "
        f"{payload['seconds']:.0f} s in all."
    )
    page = _PAGE.format(suite=html.escape(str(payload["suite"])), meta=meta, table=table, notes=f"<ul>{notes}</ul>" if notes else "", sections="".join(sections))
    paths = {"html": out / "report.html", "markdown": out / "report.md"}
    for key, text in (("html", page), ("markdown", _markdown(payload))):
        tmp = paths[key].with_name(f".{paths[key].name}.tmp")
        tmp.write_text(text)
        os.replace(tmp, paths[key])
    return paths
