"""The ``physgen`` command line: info, train, sample, evaluate, bench.

Errors for bad arguments and bad files are one clear line on stderr (exit 2);
``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from physgen.errors import DataFileError, InvalidDataError, PhysgenError

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


def _read(path: str, args: argparse.Namespace, describe: bool = False) -> Any:
    from physgen.io import describe as describe_file
    from physgen.io import read

    kwargs: dict[str, Any] = {}
    for key, name in (("x_key", "x_key"), ("cond_key", "cond_key"), ("tree", "tree"), ("binning", "binning"), ("units", "units")):
        if getattr(args, key, None):
            kwargs[name] = getattr(args, key)
    if getattr(args, "branches", None):
        kwargs["branches"] = args.branches.split(",")
    if getattr(args, "cond_branches", None):
        kwargs["cond_branches"] = args.cond_branches.split(",")
    if describe:
        return describe_file(path, format=getattr(args, "format", None), **kwargs)
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
    data = _read(args.data, args)
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
    for key in ("epochs", "batch_size", "lr", "patience", "val_fraction", "time_budget_s", "checkpoint_every"):
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
    p = Path(path)
    return p / "model" if (p / "model" / "config.json").exists() else p


def _cmd_sample(args: argparse.Namespace) -> int:
    import torch

    from physgen.io import write
    from physgen.surrogates import load

    model = load(str(_model_dir(args.model_dir)))
    cond = None
    if args.cond:
        src = _read(args.cond, args)
        if src.cond is None:
            raise InvalidDataError(f"--cond file {args.cond!r} holds no conditions")
        cond = src.cond
    elif args.energies:
        try:
            energies = torch.tensor([float(e) for e in args.energies.split(",")], dtype=torch.float64)
        except ValueError as exc:
            raise InvalidDataError(f"--energies takes comma-separated numbers (MeV); got {args.energies!r}") from exc
        if not bool(torch.isfinite(energies).all()) or bool((energies <= 0).any()):
            raise InvalidDataError(f"--energies must be finite and > 0 (MeV); got {args.energies!r}")
        n = args.n if args.n is not None else len(energies)
        cond = energies.repeat(n // len(energies) + 1)[:n][:, None].float()
    if model.is_conditional:
        if cond is None:
            raise InvalidDataError("this surrogate is conditional: give --cond FILE or --energies E1,E2,... (MeV)")
        if args.n is not None and args.cond:
            cond = cond[torch.arange(args.n) % len(cond)]
        out = model.sample(cond, seed=args.seed, batch_size=args.batch_size, precision=args.precision)
    else:
        if args.n is None:
            raise InvalidDataError("this surrogate is unconditional: give --n N")
        out = model.sample(n=args.n, seed=args.seed, batch_size=args.batch_size, precision=args.precision)
    path = write(out, args.out, format=args.out_format)
    print(f"wrote {len(out)} generated {out.schema.kind} events to {path} ({args.out_format or out.schema.source_format or 'auto'} format)")
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
    train.add_argument("model", help="surrogate family (gaussian, flow, diffusion, vae, wgan, rbm) or module:Class")
    train.add_argument("data", help="training data file")
    train.add_argument("--out", required=True, help="run directory: checkpoints in OUT/run, the model in OUT/model")
    train.add_argument("--resume", action="store_true", help="continue a killed run from OUT/run's last checkpoint")
    train.add_argument("--epochs", type=int)
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
    sample.add_argument("model_dir", help="a saved model (or a train run directory)")
    src = sample.add_mutually_exclusive_group()
    src.add_argument("--cond", help="take the conditions (e.g. incident energies) from this data file")
    src.add_argument("--energies", help="comma-separated incident energies in MeV (cycled up to --n)")
    sample.add_argument("--n", type=_positive_int, help="number of events")
    sample.add_argument("--out", required=True, help="output file")
    sample.add_argument("--out-format", help="override the output format (calochallenge, hdf5, root, spins)")
    sample.add_argument("--seed", type=int, default=0)
    sample.add_argument("--batch-size", type=_positive_int, default=10_000)
    sample.add_argument("--precision", choices=["fp32", "bf16", "fp16"], help="the networks' precision (default: the model's sample_precision)")
    _add_read_options(sample)
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


def main(argv: Sequence[str] | None = None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    handler, level, propagate = _log_to_stderr(args)
    try:
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
