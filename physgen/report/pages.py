"""The benchmark and evaluation reports: a leaderboard, Markdown, and one self-contained HTML page.

The HTML pages embed their images (PNG, base64), so a page moved or mailed still shows them;
each image links to its PDF beside it.
"""

from __future__ import annotations

import base64
import html
import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["write_report", "write_evaluation_report", "leaderboard_rows", "leaderboard_text", "write_json"]

def write_json(path: str | Path, obj: Any) -> Path:
    """Write JSON atomically (temporary name, then rename); NaN becomes null, so strict readers accept it."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
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
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1280px; color: #222; padding: 0 1em; }}
table {{ border-collapse: collapse; font-size: 13px; }} th, td {{ border: 1px solid #bbb; padding: 4px 8px; text-align: right; }}
th {{ background: #eee; }} td:first-child, td:nth-child(2) {{ text-align: left; }}
.plots {{ display: flex; flex-wrap: wrap; gap: 10px; }} figure {{ margin: 0; }}
figure img {{ max-width: 400px; border: 1px solid #ddd; }} figure.wide img {{ max-width: 1240px; }}
figcaption {{ font-size: 11px; color: #555; }} details {{ margin: 0.6em 0; }} summary {{ cursor: pointer; font-weight: 600; }}
</style></head>
<body>
<h1>{heading}</h1>
<p>{meta}</p>
<p>Every metric is shown with its truth-vs-truth floor (two disjoint halves of the held-out data): a perfect surrogate
reaches the floor. AUC: physgen's quick classifier, not the CaloChallenge evaluator's protocol (<code>physgen evaluate --calochallenge</code>);
0.5 means indistinguishable from the reference (Geant4 or data). Histograms show the fraction of events per bin with
statistical (√n) errors; the end bins hold what lies beyond them; ratio panels show model / reference with the combined
error, the grey band is the reference's own, and arrows mark ratios beyond the panel. Each image links to its PDF.</p>
{body}
<script>
window.addEventListener("load", function () {{
  var imgs = Array.prototype.slice.call(document.images);
  var ok = imgs.filter(function (i) {{ return i.complete && i.naturalWidth > 0; }}).length;
  document.title = "physgen report (images ok: " + ok + "/" + imgs.length + ")";
}});
</script>
</body></html>
"""

_SECTIONS = (
    ("feature_", "Key features"),
    ("energy_ranges", "Key features by incident energy"),
    ("profiles", "Shower profiles, voxel spectrum and mean showers"),
    ("voxel_spectrum", "Shower profiles, voxel spectrum and mean showers"),
    ("mean_showers", "Shower profiles, voxel spectrum and mean showers"),
    ("loss_curves", "Training"),
    ("all_", "Every feature"),
)


def _figure(path: Path, base: Path) -> str:
    """An image embedded as a data URI, linking to its PDF where there is one; empty for a missing file."""
    if not path.exists():
        return ""
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    pdf = path.with_suffix(".pdf")
    img = f'<img src="data:image/png;base64,{data}" alt="{html.escape(path.stem)}">'
    if pdf.exists():
        try:
            href = pdf.relative_to(base).as_posix()
        except ValueError:
            href = pdf.as_posix()
        img = f'<a href="{html.escape(href)}">{img}</a>'
    wide = path.stem.startswith(("all_", "energy_ranges", "mean_showers", "profiles"))
    return f'<figure{" class=wide" if wide else ""}>{img}<figcaption>{html.escape(path.stem)}</figcaption></figure>'


def _plot_sections(paths: list[Path], base: Path) -> str:
    """The plots grouped under headings; the every-feature pages folded, one per group."""
    out = []
    for title in dict.fromkeys(t for _, t in _SECTIONS):
        prefixes = tuple(p for p, t in _SECTIONS if t == title)
        chosen = [p for p in paths if p.stem.startswith(prefixes)]
        if not chosen:
            continue
        if title == "Every feature":
            out.append(f"<h3>{title}</h3>" + "".join(
                f"<details><summary>{html.escape(p.stem.removeprefix('all_'))}</summary><div class='plots'>{_figure(p, base)}</div></details>"
                for p in chosen))
        else:
            out.append(f"<h3>{title}</h3><div class='plots'>{''.join(_figure(p, base) for p in chosen)}</div>")
    return "".join(out)


def _write_text(path: Path, text: str) -> Path:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


def write_report(payload: dict[str, Any], out_dir: str | Path) -> dict[str, Path]:
    """Write ``report.html`` (self-contained) and ``report.md`` for a benchmark run.

    The plots listed in ``payload["plots"]`` (paths relative to ``out_dir``) are embedded.
    """
    out = Path(out_dir)
    rows = leaderboard_rows(payload)
    cols = list(dict.fromkeys(k for r in rows for k in r))
    table = "<table><tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in cols) + "</tr>"
    table += "".join("<tr>" + "".join(f"<td>{html.escape(r.get(c, ''))}</td>" for c in cols) + "</tr>" for r in rows) + "</table>"
    notes = "".join(f"<li>{html.escape(line[2:])}</li>" for line in _markdown(payload).splitlines() if line.startswith("- "))
    sections = [f"<h2>Data set {html.escape(ds)}</h2>" + _plot_sections([out / p for p in plots], out) for ds, plots in payload.get("plots", {}).items()]
    m = payload["machine"]
    meta = html.escape(
        f"Run {payload['started']} on {m['platform']} ({m['cpu_count']} cores; torch {m['torch']}; physgen {m['physgen']}"
        f"{'; GPU ' + m['cuda'] if m.get('cuda') else ''}); this machine's matmul rate {payload['matmul_gflops']:.0f} GFLOP/s; "
        f"{payload['seconds']:.0f} s in all."
    )
    suite = html.escape(str(payload["suite"]))
    body = f"<h2>Leaderboard</h2>{table}{f'<ul>{notes}</ul>' if notes else ''}{''.join(sections)}"
    page = _PAGE.format(title=f"physgen benchmark: {suite}", heading=f"physgen benchmark — suite <code>{suite}</code>", meta=meta, body=body)
    return {"html": _write_text(out / "report.html", page), "markdown": _write_text(out / "report.md", _markdown(payload))}


def write_evaluation_report(report: dict[str, Any], plots: list[Path], out_dir: str | Path, *, real: str, generated: str,
                            calochallenge: dict[str, Any] | None = None) -> Path:
    """Write ``out_dir/report.html`` for ``physgen evaluate``: the summary with floors and every plot, self-contained."""
    out = Path(out_dir)
    rows = "".join(
        f"<tr><td>{html.escape(name)}</td><td>{_pm(e)}</td><td>{_pm({'value': e.get('floor'), 'error': e.get('floor_error')})}</td></tr>"
        for name, e in report["summary"].items()
    )
    body = (f"<h2>Summary</h2><table><tr><th>metric</th><th>value ± error</th><th>truth-vs-truth floor</th></tr>{rows}</table>"
            f"<p>Mean separation power {report['mean_separation_power']:.4f} (floor {report['mean_separation_power_floor']:.4f}); "
            f"worst feature {html.escape(report['worst_feature']['name'])}.</p>")
    if calochallenge:
        cells = "".join(
            f"<tr><td>{mode}</td><td>{_pm(calochallenge[mode]['auc'], 4)}</td><td>{_pm(calochallenge[mode]['jsd'], 3)}</td></tr>"
            for mode in ("cls-low", "cls-high") if mode in calochallenge)
        body += (f"<h2>CaloChallenge evaluator protocol (data set {html.escape(str(calochallenge['dataset']))})</h2>"
                 f"<table><tr><th>mode</th><th>AUC</th><th>JSD</th></tr>{cells}</table>")
    body += "<h2>Plots</h2>" + _plot_sections(plots, out)
    meta = html.escape(f"Reference {real} ({report['n_reference']} events) against generated {generated} ({report['n_test']} events).")
    page = _PAGE.format(title="physgen evaluation", heading="physgen evaluation", meta=meta, body=body)
    return _write_text(out / "report.html", page)
