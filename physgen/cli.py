"""The ``physgen`` command line: info, train, sample, evaluate, bench.

Errors for bad arguments and bad files are one clear line on stderr (exit 2);
``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from physgen.errors import ConfigError, DataFileError, InvalidDataError, PhysgenError

__all__ = ["main", "build_parser"]


# -- shared helpers ---------------------------------------------------------------------------


def _add_read_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("reading the data (format detected from content)")
    g.add_argument("--format", help="skip detection: calochallenge, calogan, hdf5, root, spins")
    g.add_argument("--x-key", help="generic HDF5: dataset holding x")
    g.add_argument("--cond-key", help="generic HDF5: dataset holding cond")
    g.add_argument("--tree", help="ROOT: TTree name")
    g.add_argument("--branches", help="ROOT: comma-separated feature branches")
    g.add_argument("--cond-branches", help="ROOT: comma-separated condition branches")
    g.add_argument("--units", help="unit of the features (e.g. GeV)")
    g.add_argument("--binning", help="CaloChallenge: binning XML")
    g.add_argument("--bases", help="spins: the Pauli basis of each measurement, one row of X/Y/Z letters per sample (QuCumber's *_bases.txt)")


def _read(path: str, args: argparse.Namespace, describe: bool = False, stream: bool = False) -> Any:
    from physgen.io import describe as describe_file
    from physgen.io import read

    kwargs: dict[str, Any] = {}
    for key, name in (("x_key", "x_key"), ("cond_key", "cond_key"), ("tree", "tree"), ("binning", "binning"), ("units", "units"), ("bases", "bases")):
        if getattr(args, key, None):
            kwargs[name] = getattr(args, key)
    if getattr(args, "branches", None):
        kwargs["branches"] = args.branches.split(",")
    if getattr(args, "cond_branches", None):
        kwargs["cond_branches"] = args.cond_branches.split(",")
    if describe:
        return describe_file(path, format=getattr(args, "format", None), **kwargs)
    if stream:
        from physgen.io.rows import FileRows

        return FileRows(path, format=getattr(args, "format", None), **kwargs)
    return read(path, format=getattr(args, "format", None), **kwargs)


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _key_values(items: Sequence[str] | None, what: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items or ():
        if "=" not in item:
            raise InvalidDataError(f"{what} options are KEY=VALUE; got {item!r}")
        key, value = item.split("=", 1)
        out[key.replace("-", "_")] = _parse_value(value)
    return out


def _fmt_summary(path: str, s: dict[str, Any]) -> str:
    shown = f" (summary of the first {s['summarised_events']:,})" if "summarised_events" in s else ""
    lines = [f"{path}", f"  format     {s.get('format')} ({s['kind']})", f"  events     {s['n_events']}{shown}"]
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


# -- subcommands ------------------------------------------------------------------------------


def _cmd_info(args: argparse.Namespace) -> int:
    from physgen.data import default_path

    path = args.file or str(default_path())
    s = _read(path, args, describe=True)
    print(json.dumps(s, indent=2) if args.json else _fmt_summary(path, s))
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from physgen.bench import build_model
    from physgen.surrogates import get

    get(args.model)  # unknown names fail before the data is read
    spec = {"family": args.model, "preset": args.preset, "config": _key_values(args.config, "--config")}
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise DataFileError("--out names an existing file; give a directory for the run", file=out)
    data = _read(args.data, args, stream=args.stream)
    model = build_model(spec, data.schema.kind)
    out.mkdir(parents=True, exist_ok=True)
    train_cfg: dict[str, Any] = {
        "checkpoint_dir": out / "run",
        "resume": args.resume,
        "seed": args.seed,
        "device": args.device,
        "precision": args.precision,
        "progress": False if args.quiet else True if args.progress else None,
    }
    for key in ("epochs", "steps", "batch_size", "lr", "patience", "val_fraction", "time_budget_s", "checkpoint_every"):
        value = getattr(args, key)
        if value is not None:
            train_cfg[key] = value
    train_cfg.update(_key_values(args.train, "--train"))
    history = model.fit(data, **train_cfg)
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun only rank 0 saves and reports
        return 0
    model.save(out / "model")
    from physgen.io._common import atomic_path

    with atomic_path(out / "history.json") as tmp:
        tmp.write_text(json.dumps(history, indent=1, default=str))
    last = history[-1]
    print(
        f"trained {args.model} on {len(data)} events: {len(history)} epochs, "
        f"val loss {last.get('val_loss', float('nan')):.4f}; model in {out / 'model'}"
    )
    return 0


def _model_dir(path: str) -> Path:
    if path.startswith("zoo:"):
        from physgen import zoo

        return zoo.path(path)
    p = Path(path)
    return p / "model" if (p / "model" / "config.json").exists() else p


def _energy_list(text: str, model: Any) -> list[Any]:
    """``--energies``: numbers in the model's unit (said on stderr unless it is MeV) or quantities (``1GeV,10GeV``)."""
    from physgen.units import parse_quantity

    items = [e.strip() for e in text.split(",") if e.strip()]
    if not items:
        raise InvalidDataError(f"--energies takes comma-separated energies such as 1GeV,10GeV; got {text!r}")
    try:
        parsed = [parse_quantity(e) for e in items]
    except ConfigError as exc:
        raise InvalidDataError(f"--energies takes comma-separated energies such as 1GeV,10GeV (or numbers in the model's unit); got {text!r}") from exc
    if any(not math.isfinite(v) or v <= 0 for v, _ in parsed):
        raise InvalidDataError(f"--energies must be finite and > 0; got {text!r}")
    bare = [e for e, (_, unit) in zip(items, parsed, strict=True) if unit is None]
    unit = model.schema.cond_units[0] if model.schema is not None and model.schema.cond_units else ""
    if bare and unit != "MeV":  # MeV is the calorimeter convention (CaloChallenge, Geant4); any other unit is said
        print(f"physgen: --energies {','.join(bare)}: no unit given, taken in the model's unit ({unit or 'none recorded'})", file=sys.stderr)
    return items


def _cmd_sample(args: argparse.Namespace) -> int:
    from physgen.generate import generate
    from physgen.surrogates import load

    model_dir = _model_dir(args.model_dir)
    model = load(str(model_dir))
    if model.is_conditional and not (args.cond or args.energies):
        raise InvalidDataError("this surrogate is conditional: give --cond FILE or --energies E1,E2,... (e.g. 1GeV,10GeV)")
    if not model.is_conditional and args.n is None:
        raise InvalidDataError("this surrogate is unconditional: give --n N")
    energies = _energy_list(args.energies, model) if args.energies else None
    result = generate(
        model_dir, args.out, n=args.n, energies=energies, cond_file=args.cond,
        columns=args.cond_branches.split(",") if args.cond_branches else None, keep=args.keep.split(",") if args.keep else (),
        cond_units=args.cond_units.split(",") if args.cond_units else None, tree=args.tree, out_tree=args.out_tree,
        format=args.out_format, chunk_size=args.chunk_size, seed=args.seed, batch_size=args.batch_size, precision=args.precision,
        strict=args.strict, compression=None if args.compression == "none" else args.compression, workers=args.workers,
        scheduler=args.scheduler, threads_per_worker=args.threads_per_worker, progress=False if args.quiet else None,
    )
    where = f" on {result.workers} Dask worker(s)" if result.workers else ""
    resumed = f", {result.resumed} chunk(s) found done" if result.resumed else ""
    print(f"wrote {result.rows} generated {model.schema.kind} events to {result.path} ({result.format} format, "
          f"{result.chunks} chunk(s){where}{resumed})")
    return 0


def _cmd_models(args: argparse.Namespace) -> int:
    from physgen import zoo

    if args.name:
        print(json.dumps(zoo.card(args.name), indent=1))
        return 0
    for name in zoo.available():
        c = zoo.card(name)
        m, sp = c["held_out"]["metrics"], c["speed"]
        lo, hi = c["energy_range_gev"] or (float("nan"), float("nan"))
        print(f"zoo:{name}  {c['description']}")
        print(f"    {c['family']}, {c['particle']}, {c['geometry']['voxels']} voxels, {lo:g}-{hi:g} GeV, {c['weights']['megabytes']} MB; "
              f"held-out AUC {m['classifier_auc']['value']:.3f} (floor {m['classifier_auc']['floor']:.3f}), "
              f"FPD {m['fpd']['value']:.3g} (floor {m['fpd']['floor']:.3g}); {sp['speedup_vs_geant4']:g}x Geant4 at {sp['energies']} ({sp['cpu']})")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from physgen.metrics import evaluate
    from physgen.report import evaluation_plots, write_evaluation_report, write_json

    real, generated = _read(args.real, args), _read(args.generated, args)
    if args.calochallenge:  # before the long evaluation: the geometry must be the data set's
        from physgen.metrics.calochallenge import check_showers

        check_showers(real, args.calochallenge, f"{args.real}")
        check_showers(generated, args.calochallenge, f"{args.generated}")
    report = evaluate(real, generated, seed=args.seed, classifier=not args.no_classifier)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "metrics.json", report)
    plots = evaluation_plots(real, {"generated": generated}, out / "plots")
    print(f"{'metric':24s} {'value':>12s} {'± error':>10s} {'floor':>12s}")
    for name, entry in report["summary"].items():
        print(f"{name:24s} {entry['value']:12.5g} {entry['error'] or float('nan'):10.3g} {entry['floor']:12.5g}")
    print(f"mean separation power {report['mean_separation_power']:.4f} (floor {report['mean_separation_power_floor']:.4f}); "
          f"worst feature {report['worst_feature']['name']}")
    cc = None
    if args.calochallenge:
        from physgen.metrics.calochallenge import ClassifierProtocol, calochallenge_evaluate

        cc = calochallenge_evaluate(real, generated, args.calochallenge, protocol=ClassifierProtocol(epochs=args.cls_epochs, n_hidden=args.cls_hidden),
                                    seed=args.seed, device=args.device)
        write_json(out / "calochallenge.json", cc)
        print(f"CaloChallenge evaluator protocol, data set {args.calochallenge} ({cc['n_compared']} events each):")
        for mode in ("cls-low", "cls-high"):
            print(f"  {mode:9s} AUC {cc[mode]['auc']['value']:.4f} ± {cc[mode]['auc']['error']:.4f}, JSD {cc[mode]['jsd']['value']:.4f}")
        print(f"  FPD (x10^3) {cc['fpd']['value'] * 1e3:.4f} ± {cc['fpd']['error'] * 1e3:.4f}; "
              f"KPD (x10^3) {cc['kpd']['value'] * 1e3:.4f} ± {cc['kpd']['error'] * 1e3:.4f}")
    page = write_evaluation_report(report, plots, out, real=args.real, generated=args.generated, calochallenge=cc)
    print(f"wrote {out / 'metrics.json'}{', ' + str(out / 'calochallenge.json') if cc else ''}, {page} and {len(plots)} plots (PNG and PDF) in {out / 'plots'}")
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from physgen.bench import load_suite, run_suite
    from physgen.report import leaderboard_text, write_report

    suite = load_suite(args.suite)
    out = Path(args.out)
    payload = run_suite(suite, out, only=args.only.split(",") if args.only else None, keep_samples=True)
    paths = write_report(payload, out)
    print()
    print(leaderboard_text(payload))
    print(f"\nresults: {out / 'results.json'}\nreport:  {paths['html']}\nsummary: {paths['markdown']}")
    if payload["failed"]:
        print(f"physgen: error: {payload['failed']} of {len(payload['results'])} runs failed (their errors are in the results)", file=sys.stderr)
        return 1
    return 0


def _cmd_options(args: argparse.Namespace) -> int:
    from physgen.reference import options_markdown, options_of

    if args.markdown or args.name is None:
        print(options_markdown())
        return 0
    for row in options_of(args.name).reference():
        print(f"{row['name']:26s} {row['type']:36s} {row['default']:>14s}  {row['doc']}")
    return 0


# -- parser -----------------------------------------------------------------------------------


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer; got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer; got {value}")
    return value


def _noise_flags(parser: argparse.ArgumentParser, default: Any) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("-q", "--quiet", action="store_true", default=default, help="only warnings and errors on stderr, no progress bars")
    group.add_argument("-v", "--verbose", action="store_true", default=default, help="also debugging messages on stderr")


class _Parser(argparse.ArgumentParser):
    """argparse with its errors on one line (``physgen: error: ...``, exit status 2)."""

    def error(self, message: str) -> NoReturn:
        command = self.prog.removeprefix("physgen").strip()
        self.exit(2, f"physgen: error: {command + ': ' if command else ''}{message}; see {self.prog} --help\n")


def build_parser() -> argparse.ArgumentParser:
    from physgen.metrics.calochallenge import DATASETS as CALOCHALLENGE_DATASETS

    ap = _Parser(prog="physgen", description="Physics-focused generative surrogates.")
    ap.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    _noise_flags(ap, default=False)
    # -q/-v also after the command (physgen train ... -q); SUPPRESS keeps a sub-command from resetting them
    common = argparse.ArgumentParser(add_help=False)
    _noise_flags(common, default=argparse.SUPPRESS)
    sub = ap.add_subparsers(dest="command", required=True, parser_class=_Parser)

    info = sub.add_parser("info", parents=[common], help="what a data file holds (default: the embedded Geant4 sample)")
    info.add_argument("file", nargs="?", help="HDF5 (CaloChallenge, CaloGAN, generic), ROOT or spin text")
    info.add_argument("--json", action="store_true", help="print the summary as JSON")
    _add_read_options(info)
    info.set_defaults(func=_cmd_info)

    train = sub.add_parser("train", parents=[common], help="train a registered surrogate on a data file")
    train.add_argument("model", help="surrogate family (gaussian, flow, diffusion, vae, wgan, rbm, complex_rbm, density_rbm) or module:Class")
    train.add_argument("data", help="training data file")
    train.add_argument("--out", required=True, help="run directory: checkpoints in OUT/run, the model in OUT/model")
    train.add_argument("--resume", action="store_true", help="continue a killed run from OUT/run's last checkpoint")
    train.add_argument("--epochs", type=int)
    train.add_argument("--steps", type=int, help="train for this many optimiser steps instead of --epochs")
    train.add_argument("--stream", action="store_true", help="read the file block by block while training, never whole (HDF5 files larger than memory)")
    train.add_argument("--batch-size", type=int)
    train.add_argument("--lr", type=float)
    train.add_argument("--patience", type=int)
    train.add_argument("--val-fraction", type=float)
    train.add_argument("--time-budget-s", type=float)
    train.add_argument("--checkpoint-every", type=int)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    train.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    train.add_argument("--progress", action="store_true", help="show the progress bar even when not on a terminal")
    train.add_argument("--preset", help="calorimeter showers: the shower model's preset (e.g. wsi_electron, pbwo4_gamma, or a TOML path)")
    train.add_argument("--config", nargs="*", metavar="KEY=VALUE", help="model options (JSON values); `physgen options FAMILY` lists them")
    train.add_argument("--train", nargs="*", metavar="KEY=VALUE", help="other training-loop settings (see TrainConfig)")
    _add_read_options(train)
    train.set_defaults(func=_cmd_train)

    sample = sub.add_parser("sample", parents=[common], help="generate events with a trained surrogate, written in the input's format")
    sample.add_argument("model_dir", help="a saved model, a train run directory, or zoo:NAME (physgen models lists them)")
    src = sample.add_mutually_exclusive_group()
    src.add_argument("--cond", help="a ROOT or HDF5 file whose columns give the conditions (its first --n events)")
    src.add_argument("--energies", help="comma-separated incident energies, e.g. 1GeV,10GeV (bare numbers: the model's unit), cycled up to --n")
    sample.add_argument("--n", type=_positive_int, help="number of events")
    sample.add_argument("--out", required=True, help="output file; its suffix picks the format: .h5/.hdf5 (the model's HDF5 flavour), .root, .txt")
    sample.add_argument("--out-format", help="force the output format (calochallenge, calogan, hdf5, root, spins); must agree with the suffix")
    sample.add_argument("--out-tree", help="ROOT output: the tree's name (default: the --cond file's tree, else the training data's)")
    sample.add_argument("--seed", type=int, default=0, help="chunk i is drawn with a seed derived from (seed, i)")
    sample.add_argument("--chunk-size", type=_positive_int, default=10_000, help="events generated and written at a time (bounds the memory)")
    sample.add_argument("--batch-size", type=_positive_int, default=10_000)
    sample.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"], help="the networks' precision (default: the model's sample_precision)")
    sample.add_argument("--strict", action="store_true", help="conditions outside the model's training range are an error, not a warning")
    sample.add_argument("--compression", choices=["gzip", "lzf", "none"], default="gzip", help="HDF5 output compression")
    cf = sample.add_argument_group("the --cond file")
    cf.add_argument("--cond-branches", help="comma-separated condition columns (default: the model's condition names)")
    cf.add_argument("--cond-units", help="their units, comma-separated (default: the model's), converted to the model's")
    cf.add_argument("--keep", help="comma-separated columns (event IDs) copied beside each generated event")
    cf.add_argument("--tree", help="ROOT: the tree holding them")
    dk = sample.add_argument_group("scaling out on Dask (pip install 'physgen[dask]')")
    dk.add_argument("--workers", type=_positive_int, help="run the chunks on a local Dask cluster of this many processes")
    dk.add_argument("--scheduler", help="run on the Dask scheduler at this address (e.g. tcp://host:8786), started by dask-jobqueue or by hand")
    dk.add_argument("--threads-per-worker", type=_positive_int, default=1, help="torch threads each task uses")
    sample.set_defaults(func=_cmd_sample)

    evaluate = sub.add_parser("evaluate", parents=[common], help="the metric suite with the truth-vs-truth floor, as JSON and plots")
    evaluate.add_argument("real")
    evaluate.add_argument("generated")
    evaluate.add_argument("--out", required=True)
    evaluate.add_argument("--seed", type=int, default=0)
    evaluate.add_argument("--no-classifier", action="store_true", help="skip the classifier two-sample test")
    evaluate.add_argument("--calochallenge", choices=list(CALOCHALLENGE_DATASETS),
                          help="also run the CaloChallenge evaluator's protocol for this data set (cls-low, cls-high, FPD/KPD)")
    evaluate.add_argument("--cls-epochs", type=_positive_int, default=50, help="epochs of the evaluator's classifier (its default: 50)")
    evaluate.add_argument("--cls-hidden", type=_positive_int, default=2048,
                          help="width of the evaluator's classifier (its default: 2048; narrower runs faster on a CPU)")
    evaluate.add_argument("--device", default="cpu", help="where the evaluator's classifier trains (cpu, cuda)")
    _add_read_options(evaluate)
    evaluate.set_defaults(func=_cmd_evaluate)

    bench = sub.add_parser("bench", parents=[common], help="run a benchmark suite (default: the quick suite on the embedded data)")
    bench.add_argument("suite", nargs="?", default="quick", help="a packaged suite's name (quick) or a suite file (TOML)")
    bench.add_argument("--out", default="runs/bench", help="output directory (results.json, report.html, report.md)")
    bench.add_argument("--only", help="comma-separated families or labels to run")
    bench.set_defaults(func=_cmd_bench)

    models = sub.add_parser("models", parents=[common], help="the trained models shipped with physgen (load them as zoo:NAME)")
    models.add_argument("name", nargs="?", help="one model: print its whole card as JSON")
    models.set_defaults(func=_cmd_models)
    opts = sub.add_parser("options", parents=[common], help="every option of a family, the shower model or training, with type, default and doc")
    opts.add_argument("name", nargs="?", help="a family (flow, vae, ...), 'shower' or 'train'; none: all, as Markdown")
    opts.add_argument("--markdown", action="store_true", help="print the whole reference as Markdown (docs/reference/options.md)")
    opts.set_defaults(func=_cmd_options)
    return ap


class _Formatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        level = "" if record.levelno == logging.INFO else f"{record.levelname.lower()}: "
        return f"physgen: {level}{record.getMessage()}"


def _log_to_stderr(args: argparse.Namespace) -> tuple[logging.Handler, int, bool]:
    """Show the library's ``physgen.*`` messages on stderr at the level the flags ask for."""
    logger = logging.getLogger("physgen")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter())
    saved = (handler, logger.level, logger.propagate)
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING if args.quiet else logging.DEBUG if args.verbose else logging.INFO)
    logger.propagate = False  # an application's root handler would print them twice
    return saved


def _show_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int, file: Any = None, line: str | None = None) -> None:
    """Warnings as one line on stderr, as the command line prints its errors."""
    print(f"physgen: warning: {' '.join(str(message).split())}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    handler, level, propagate = _log_to_stderr(args)
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning
            return int(args.func(args))
    except (PhysgenError, OSError) as exc:
        if args.debug:
            raise
        message = " ".join(str(exc).split())  # one line, whatever the library's message held
        print(f"physgen: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("physgen: interrupted", file=sys.stderr)
        return 130
    finally:
        logger = logging.getLogger("physgen")
        logger.removeHandler(handler)
        logger.setLevel(level)
        logger.propagate = propagate


if __name__ == "__main__":
    sys.exit(main())
