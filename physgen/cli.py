"""The ``physgen`` command line.

Errors for bad arguments and bad files are one clear line on stderr (exit 2);
``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from physgen.errors import PhysgenError

__all__ = ["main"]


def _fmt_summary(path: str, s: dict[str, Any]) -> str:
    lines = [f"{path}", f"  format     {s.get('format')} ({s['kind']})", f"  events     {s['n_events']}"]
    lines.append(f"  shape      {s['event_shape']}  [{s['units'] or '-'}]")
    if "features" in s:
        feats = s["features"]
        lines.append(f"  features   {', '.join(feats[:10])}{' ...' if len(feats) > 10 else ''}")
    for name, r in s.get("conditions", {}).items():
        lines.append(f"  condition  {name}: {r['min']:.6g} … {r['max']:.6g} {' '.join(s.get('cond_units', []))}")
    if "geometry" in s:
        g = s["geometry"]
        lines.append(f"  geometry   {g['kind']}, {g['n_layers']} layers ({g['relevant_layers']} with voxels), {g['n_voxels']} voxels")
    if "e_tot_over_e_inc" in s:
        r = s["e_tot_over_e_inc"]
        lines.append(f"  E_tot/E_inc {r['mean']:.4f} ± {r['std']:.4f}; voxel occupancy {s['voxel_occupancy']:.3f}")
    if "list_length" in s:
        lines.append(f"  list length mean {s['list_length']['mean']:.2f}, max {s['list_length']['max']}")
    if "geant4_cpu_s" in s.get("aux", {}):
        lines.append(f"  Geant4 CPU {1e3 * s['aux']['geant4_cpu_s']['mean']:.1f} ms/event (this project's machine)")
    return "\n".join(lines)


def _cmd_info(args: argparse.Namespace) -> int:
    from physgen.data import default_path
    from physgen.io import read

    path = args.file or str(default_path())
    kwargs: dict[str, Any] = {}
    if args.x_key:
        kwargs["x_key"] = args.x_key
    if args.cond_key:
        kwargs["cond_key"] = args.cond_key
    if args.tree:
        kwargs["tree"] = args.tree
    if args.branches:
        kwargs["branches"] = args.branches.split(",")
    if args.binning:
        kwargs["binning"] = args.binning
    data = read(path, format=args.format, **kwargs)
    s = data.summary()
    print(json.dumps(s, indent=2) if args.json else _fmt_summary(path, s))
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="physgen", description="Physics-focused generative surrogates.")
    ap.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    sub = ap.add_subparsers(dest="command", required=True)
    info = sub.add_parser("info", help="what a data file holds (default: the embedded Geant4 sample)")
    info.add_argument("file", nargs="?", help="HDF5 (CaloChallenge, CaloGAN, generic), ROOT or spin text")
    info.add_argument("--format", help="skip detection: calochallenge, calogan, hdf5, root, spins")
    info.add_argument("--x-key", help="generic HDF5: dataset holding x")
    info.add_argument("--cond-key", help="generic HDF5: dataset holding cond")
    info.add_argument("--tree", help="ROOT: TTree name")
    info.add_argument("--branches", help="ROOT: comma-separated branches")
    info.add_argument("--binning", help="CaloChallenge: binning XML")
    info.add_argument("--json", action="store_true", help="print the summary as JSON")
    info.set_defaults(func=_cmd_info)
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    try:
        return int(args.func(args))
    except PhysgenError as exc:
        if args.debug:
            raise
        print(f"physgen: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("physgen: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
