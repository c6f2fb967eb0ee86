"""The surrogate benchmark suite: data sets × surrogates × training budgets × metrics.

A suite is a small TOML file::

    name = "quick"
    seed = 0

    [[datasets]]
    name = "pbwo4_2k"
    source = "embedded"                 # the embedded Geant4 sample; "skhep:FILE", "data:FILE" or a path
    split = [0.6, 0.4]                  # train / test (the test split is the held-out Geant4)

    [[surrogates]]
    family = "flow"                     # a registered family, or "mypkg.models:MyModel"
    preset = "pbwo4_gamma"              # calorimeter showers: a preset of the shower model (optional)
    config = { n_layers = 6 }           # options of the model
    train = { epochs = 200, time_budget_s = 60 }

Every key is checked when the suite is loaded (a typo names the nearest valid key), and every
model is built once, without data, so bad options fail before anything trains. Data sources:
``embedded`` (the sample inside physgen), ``skhep:FILE`` (scikit-hep-testdata), ``data:FILE``
(a file in the folder named by the environment variable ``PHYSGEN_DATA``), ``quantum:tfim`` /
``quantum:xxz`` (measurements of an exact ground state) or a path (relative to the suite file).

For each data set and surrogate the run trains (timing it), generates one event per
held-out condition, times generation on one CPU thread at batch 1, 100 and 10,000 against
the reference simulator's CPU time per event stored with the data (Geant4's
``aux/geant4_cpu_s``, one core), and evaluates against the held-out split with the
truth-vs-truth floor. Calorimeter showers are modelled by
:class:`~physgen.calorimeter.ShowerModel` around the family. Where a CUDA device is present,
training (``device = "auto"``) and so the timed generation run on it; the result records the
device and its own matmul rate. Results are one JSON per run with the machine and versions.
"""

from __future__ import annotations

import logging
import math
import os
import platform
import time
import tomllib
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch

from physgen.data import Data
from physgen.errors import ConfigError, DataFileError, PhysgenError, UnknownNameError
from physgen.training.devices import cpu_description

__all__ = [
    "SuiteError", "build_model", "compare_to_baseline", "generation_timing", "geant4_ratio", "load_dataset", "load_suite", "machine_info",
    "matmul_gflops", "model_device", "packaged_suites", "resolve_source", "run_one", "run_suite",
]

log = logging.getLogger(__name__)

_SUITE_KEYS = ("name", "seed", "description", "metrics", "datasets", "surrogates")
_DATASET_KEYS = ("name", "source", "split", "read", "max_events")
_SURROGATE_KEYS = ("family", "label", "preset", "config", "train", "datasets")
_METRIC_KEYS = ("classifier", "classifier_epochs", "mmd_max_samples", "bins", "n_bootstrap")


class SuiteError(ConfigError):
    """A suite file that is not a valid suite: names the file, the entry and the key."""


def packaged_suites() -> list[str]:
    """Names of the suites shipped inside physgen (``physgen bench NAME``)."""
    return sorted(p.name[:-5] for p in (resources.files("physgen") / "suites").iterdir() if p.name.endswith(".toml"))


def _check_keys(table: Any, allowed: tuple[str, ...], where: str, path: Path) -> dict[str, Any]:
    if not isinstance(table, dict):
        raise SuiteError(f"{where} must be a table; got {table!r}", where=str(path))
    for key in table:
        if key not in allowed:
            exc = ConfigError.unknown(where, key, allowed, what="key")
            raise SuiteError(str(exc), where=str(path), key=key, nearest=exc.nearest)
    return table


def load_suite(name_or_path: str | Path) -> dict[str, Any]:
    """Load and check a suite: a packaged name (``quick``) or a TOML path.

    Raises:
        SuiteError: an unknown key (with the nearest valid one), a bad split, or options a model refuses.
        DataFileError: a missing or malformed file.
    """
    path = Path(name_or_path)
    if path.suffix != ".toml" and not path.exists():
        if str(name_or_path) not in packaged_suites():
            raise UnknownNameError("suite", str(name_or_path), packaged_suites())
        path = Path(str(resources.files("physgen") / "suites" / f"{name_or_path}.toml"))
    try:
        suite = tomllib.loads(path.read_text())
    except (FileNotFoundError, IsADirectoryError) as exc:
        raise DataFileError("no such suite file", file=path) from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise DataFileError(f"not a valid TOML suite ({exc})", file=path) from exc
    _check_keys(suite, _SUITE_KEYS, "suite", path)
    for key in ("datasets", "surrogates"):
        if not isinstance(suite.get(key), list) or not suite[key]:
            raise SuiteError(f"a suite needs at least one [[{key}]] entry", where=str(path), key=key)
    if not isinstance(suite.get("seed", 0), int) or isinstance(suite.get("seed", 0), bool) or suite.get("seed", 0) < 0:
        raise SuiteError(f"seed must be an integer ≥ 0; got {suite.get('seed')!r}", where=str(path), key="seed")
    _check_keys(suite.get("metrics", {}), _METRIC_KEYS, "[metrics]", path)
    names = set()
    for i, ds in enumerate(suite["datasets"]):
        where = f"[[datasets]] #{i + 1}"
        _check_keys(ds, _DATASET_KEYS, where, path)
        for key in ("name", "source"):
            if not isinstance(ds.get(key), str) or not ds[key]:
                raise SuiteError(f"{where} needs {key} (a string)", where=str(path), key=key)
        names.add(ds["name"])
        split = ds.get("split", [0.7, 0.3])
        if (not isinstance(split, list) or len(split) != 2 or not all(isinstance(f, int | float) and not isinstance(f, bool) for f in split)
                or not all(0 < f < 1 for f in split) or sum(split) > 1 + 1e-9):
            raise SuiteError(f"{where}: split must be two fractions in (0, 1) adding up to at most 1 (train, test); got {split!r}", where=str(path), key="split")
        m = ds.get("max_events")
        if m is not None and (not isinstance(m, int) or isinstance(m, bool) or m < 1):
            raise SuiteError(f"{where}: max_events must be a positive integer; got {m!r}", where=str(path), key="max_events")
    from physgen.training import TrainConfig

    for i, spec in enumerate(suite["surrogates"]):
        where = f"[[surrogates]] #{i + 1} ({spec.get('label', spec.get('family')) if isinstance(spec, dict) else spec})"
        _check_keys(spec, _SURROGATE_KEYS, where, path)
        if not isinstance(spec.get("family"), str):
            raise SuiteError(f"{where} needs family (a string)", where=str(path), key="family")
        for ds_name in spec.get("datasets", []):
            if ds_name not in names:
                raise SuiteError(f"{where}: no data set {ds_name!r} in this suite (data sets: {', '.join(sorted(names))})", where=str(path), key="datasets")
        try:
            TrainConfig.from_dict(spec.get("train", {}), where=f"{where} train")
            for kind in {_source_kind(ds) for ds in suite["datasets"] if not spec.get("datasets") or ds["name"] in spec["datasets"]}:
                build_model(spec, kind)
        except (ConfigError, UnknownNameError) as exc:
            raise SuiteError(str(exc), where=str(path), key=getattr(exc, "key", None)) from exc
    suite["_path"] = str(path)
    return suite


def _source_kind(ds: dict[str, Any]) -> str:
    """The data kind a source will give, where it can be told without reading it (calorimeter, event or spins)."""
    src = ds["source"]
    if src.startswith("quantum:"):
        return "spins"
    if src == "embedded" or src.endswith((".h5", ".hdf5")):
        return "calorimeter" if src == "embedded" or not ds.get("read") else "event"
    return "event"


def build_model(spec: dict[str, Any], kind: str) -> Any:
    """The unfitted model a suite entry describes, for data of ``kind`` (calorimeter showers: a ShowerModel)."""
    from physgen.surrogates import create

    config = dict(spec.get("config", {}))
    if kind == "calorimeter":
        from physgen.calorimeter import ShowerModel

        return ShowerModel(spec["family"], preset=spec.get("preset"), **config)
    if spec.get("preset") is not None:
        raise ConfigError("preset applies to calorimeter showers only", where=spec.get("label", spec["family"]), key="preset")
    return create(spec["family"], **config)


def resolve_source(source: str, base: Path | None = None) -> Path:
    """``"embedded"``, ``"skhep:FILE"`` (scikit-hep-testdata), ``"data:FILE"`` (in ``$PHYSGEN_DATA``) or a path."""
    if source == "embedded":
        from physgen.data import default_path

        return default_path()
    if source.startswith("skhep:"):
        try:
            import skhep_testdata
        except ImportError as exc:
            raise DataFileError("the suite reads scikit-hep-testdata: pip install 'scikit-hep-testdata==0.3.0'") from exc
        return Path(skhep_testdata.data_path(source.split(":", 1)[1]))
    if source.startswith("data:"):
        root = os.environ.get("PHYSGEN_DATA")
        if not root:
            raise DataFileError(f"the suite reads {source!r}: set PHYSGEN_DATA to the folder that holds it")
        path = Path(root) / source.split(":", 1)[1]
    else:
        path = Path(source)
        if not path.is_absolute() and base is not None:
            path = base / path
    if not path.exists():
        raise DataFileError("data set of the suite not found", file=path)
    return path


def matmul_gflops(n: int = 1024, repeats: int = 5, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu") -> float:
    """This machine's dense matmul rate (GFLOP/s) in ``dtype`` on ``device``, measured now: the yardstick for throughputs."""
    dev = torch.device(device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    a, b = torch.randn(n, n, dtype=dtype, device=dev), torch.randn(n, n, dtype=dtype, device=dev)
    a @ b
    sync()
    t0 = time.perf_counter()
    for _ in range(repeats):
        a @ b
    sync()
    return 2 * n**3 * repeats / (time.perf_counter() - t0) / 1e9


def machine_info() -> dict[str, Any]:
    import physgen

    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "physgen": physgen.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        **cpu_description(),
    }


_EXACT_STATES: dict[str, np.ndarray] = {}


def _quantum_source(ds: dict[str, Any]) -> Data:
    """``source = "quantum:tfim"`` (or ``quantum:xxz``): σᶻ measurements of the exact ground state.

    ``read`` holds the chain (``n``, ``J``/``h`` or ``Jxy``/``Jz``, ``periodic``) and
    ``samples``/``seed``; the exact state is kept for the tomography report.
    """
    from physgen.quantum import ground_state, sample_measurements, tfim, xxz

    opts = dict(ds.get("read", {}))
    samples, seed = int(opts.pop("samples", 10_000)), int(opts.pop("seed", 0))
    kind = ds["source"].split(":", 1)[1]
    if kind not in ("tfim", "xxz"):
        raise DataFileError(f"unknown quantum source {ds['source']!r}; use quantum:tfim or quantum:xxz")
    chain = tfim(**opts) if kind == "tfim" else xxz(**opts)
    _, psi = ground_state(chain)
    if kind == "xxz":
        psi = np.abs(psi)  # σᶻ measurements only see |ψ|²
    _EXACT_STATES[ds["name"]] = psi
    data = sample_measurements(psi, samples, seed=seed)
    return data.replace_schema(meta={"chain": chain.describe()})


def load_dataset(ds: dict[str, Any], base: Path | None = None) -> Data:
    """A suite's ``[[datasets]]`` entry, read (and cut to ``max_events``)."""
    from physgen.io import read

    if ds["source"].startswith("quantum:"):
        return _quantum_source(ds)
    data = read(resolve_source(ds["source"], base), **ds.get("read", {}))
    if ds.get("max_events"):
        data = data[: int(ds["max_events"])]
    return data


def generation_timing(model: Any, test: Data, batches: tuple[int, ...] = (1, 100, 10_000)) -> dict[str, Any]:
    """Seconds per generated event at several batch sizes, on ONE CPU thread (Geant4's time is per core).

    The networks run where the model's weights are: on the CPU thread, or on a GPU where
    the model was trained on one (``device`` says which; the host's share still runs on
    the one thread). ``sample`` returns host tensors, so each call has waited for the device.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return {"threads": 1, "device": str(model_device(model)), **_timed(model, test, batches)}
    finally:
        torch.set_num_threads(threads)


def model_device(model: Any) -> torch.device:
    """Where a surrogate's weights live (the CPU for one without tensors)."""
    tensors = [*model.parameters(), *model.buffers()] if isinstance(model, torch.nn.Module) else []
    return tensors[0].device if tensors else torch.device("cpu")


def _timed(model: Any, test: Data, batches: tuple[int, ...]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for b in batches:
        if model.is_conditional:
            assert test.cond is not None
            cond = test.cond[torch.arange(b) % len(test)]
            call: Callable[[], Any] = lambda cond=cond, b=b: model.sample(cond, seed=0, batch_size=b)  # noqa: E731
        else:
            call = lambda b=b: model.sample(n=b, seed=0, batch_size=b)  # noqa: E731
        call()  # warm-up (allocations, lazy init)
        repeats = 20 if b == 1 else (5 if b == 100 else 1)
        t0 = time.perf_counter()
        for _ in range(repeats):
            call()
        out[f"batch_{b}"] = {"seconds_per_event": (time.perf_counter() - t0) / (repeats * b)}
    return out


def geant4_ratio(test: Data, per_event_s: float) -> dict[str, Any] | None:
    cpu = test.aux.get("geant4_cpu_s")
    if cpu is None or test.cond is None:
        return None
    energy_gev = test.cond[:, 0].double().numpy() / 1000
    out: dict[str, Any] = {"all": {"geant4_s_per_event": float(cpu.mean()), "speedup": float(cpu.mean() / per_event_s)}}
    for lo, hi in ((1, 10), (10, 100)):
        sel = (energy_gev >= lo) & (energy_gev < hi)
        if sel.any():
            out[f"{lo}-{hi}GeV"] = {"geant4_s_per_event": float(cpu[sel].mean()), "speedup": float(cpu[sel].mean() / per_event_s)}
    return out


def _n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def run_one(
    ds: dict[str, Any], data: Data, spec: dict[str, Any], seed: int, gflops: float, metrics: dict[str, Any], out_dir: Path | None = None
) -> tuple[dict[str, Any], Data, Data]:
    """Train, generate, time and evaluate one surrogate on one data set: (result, held-out data, generated)."""
    from physgen.metrics import evaluate

    split = ds.get("split", [0.7, 0.3])
    train, test = data.split(tuple(split), seed=seed)
    model = build_model(spec, data.schema.kind)
    train_cfg = {"progress": None, "seed": seed, **spec.get("train", {})}
    t0 = time.perf_counter()
    history = model.fit(train, **train_cfg)
    train_s = time.perf_counter() - t0
    params = _n_params(model)
    device = model_device(model)
    if device.type == "cuda":  # the yardstick of the device it trained on: its fp32 rate, measured now
        gflops = matmul_gflops(n=8192, repeats=10, device=device)
    sps = float(np.median([h["samples_per_s"] for h in history if "samples_per_s" in h])) if any("samples_per_s" in h for h in history) else None
    t0 = time.perf_counter()
    generated = model.sample(test.cond, seed=seed) if model.is_conditional else model.sample(n=len(test), seed=seed)
    gen_s = time.perf_counter() - t0
    timing = generation_timing(model, test)
    report = evaluate(test, generated, seed=seed, **metrics)
    result: dict[str, Any] = {
        "dataset": ds["name"],
        "family": spec["family"],
        "label": spec.get("label", spec["family"]),
        "options": model.user_options,
        "resolved": model.resolved,
        "train": {
            "seconds": train_s,
            "epochs": len([h for h in history if "epoch" in h and h.get("epoch", 0) > 0]),
            # what ended training: its budget ("steps", "epochs"), early stopping ("patience"), or the wall-time cap ("time_budget")
            "stopped_by": history[-1].get("stopped_by") if history else None,
            "n_train": len(train),
            "parameters": params,
            "samples_per_s": sps,
            "device": str(device),
            "matmul_gflops": gflops,
            # ≈ 6 FLOPs per parameter per sample (forward + backward) against the training device's matmul rate
            "fraction_of_matmul_flops": (sps * 6 * params / (gflops * 1e9)) if sps else None,
            "history": history,
        },
        "generate": {"seconds": gen_s, "n": len(generated), "timing": timing},
        "geant4": {f"batch_{b}": geant4_ratio(test, timing[f"batch_{b}"]["seconds_per_event"]) for b in (1, 100, 10_000)},
        "evaluation": report,
    }
    if spec["family"] == "rbm" and ds["name"] in _EXACT_STATES:
        from physgen.quantum import tomography_report

        result["quantum"] = tomography_report(model, _EXACT_STATES[ds["name"]], train)
    inner = getattr(model, "inner", model)
    if hasattr(inner, "evaluations_per_sample"):
        result["generate"]["network_evaluations_per_sample"] = inner.evaluations_per_sample()
    if out_dir is not None:
        model.save(out_dir / "models" / f"{ds['name']}__{result['label']}")
        from physgen.io import write

        fmt = test.schema.source_format
        suffix = {"root": ".root", "spins": ".txt"}.get(fmt or "", ".h5")
        write(generated, out_dir / "samples" / f"{ds['name']}__{result['label']}{suffix}")
    return result, test, generated


def run_suite(
    suite: dict[str, Any],
    out_dir: str | Path | None = None,
    only: list[str] | None = None,
    keep_samples: bool = False,
) -> dict[str, Any]:
    """Run every (data set, surrogate) pair of ``suite``; write ``results.json`` to ``out_dir``.

    With ``keep_samples`` (and an ``out_dir``), also draw each data set's
    comparison plots into ``out_dir/plots/DATASET/`` (listed in ``payload["plots"]``).
    A run that fails is recorded with its error and the others go on; ``payload["failed"]``
    counts them. Progress goes to the ``physgen.bench`` logger.

    Raises:
        SuiteError: ``only`` names no family or label of the suite.
    """
    if only:
        known = {spec["family"] for spec in suite["surrogates"]} | {spec["label"] for spec in suite["surrogates"] if "label" in spec}
        missing = [name for name in only if name not in known]
        if missing:
            exc = ConfigError.unknown("--only", missing[0], known, what="family or label")
            raise SuiteError(str(exc), where=suite.get("_path"), key=missing[0], nearest=exc.nearest)
    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        (out / "models").mkdir(parents=True, exist_ok=True)
        (out / "samples").mkdir(parents=True, exist_ok=True)
    seed = int(suite.get("seed", 0))
    base = Path(suite["_path"]).parent if "_path" in suite else None
    gflops = matmul_gflops()
    metrics = {"classifier": True, **suite.get("metrics", {})}
    started = time.time()
    results: list[dict[str, Any]] = []
    data_info: dict[str, Any] = {}
    plots: dict[str, list[str]] = {}
    for ds in suite["datasets"]:
        data = load_dataset(ds, base)
        data_info[ds["name"]] = data.summary()
        held_out: Data | None = None
        samples: dict[str, Data] = {}
        histories: dict[str, list[dict[str, Any]]] = {}
        for spec in suite["surrogates"]:
            if spec.get("datasets") and ds["name"] not in spec["datasets"]:
                continue
            if only and spec["family"] not in only and spec.get("label") not in only:
                continue
            log.info("[%s] %s: training ...", ds["name"], spec.get("label", spec["family"]))
            try:
                res, held_out, generated = run_one(ds, data, spec, seed, gflops, metrics, out)
            except (PhysgenError, RuntimeError) as exc:
                log.warning("[%s] %s: FAILED: %s", ds["name"], spec.get("label", spec["family"]), exc)
                results.append({"dataset": ds["name"], "family": spec["family"], "label": spec.get("label", spec["family"]), "error": str(exc)})
                continue
            s = res["evaluation"]["summary"]
            log.info(
                f"[{ds['name']}] {res['label']}: trained {res['train']['seconds']:.0f} s, "
                f"AUC {s['classifier_auc']['value']:.3f} (floor {s['classifier_auc']['floor']:.3f})"
                if "classifier_auc" in s
                else f"[{ds['name']}] {res['label']}: trained {res['train']['seconds']:.0f} s"
            )
            results.append(res)
            if keep_samples:
                samples[res["label"]] = generated
                histories[res["label"]] = res["train"]["history"]
        if keep_samples and out is not None and held_out is not None and samples:
            from physgen.report import evaluation_plots

            paths = evaluation_plots(held_out, samples, out / "plots" / ds["name"], histories)
            plots[ds["name"]] = [str(p.relative_to(out)) for p in paths]
    payload = {
        "suite": suite.get("name"),
        "suite_file": suite.get("_path"),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "seconds": time.time() - started,
        "machine": machine_info(),
        "matmul_gflops": gflops,
        "data": data_info,
        "results": results,
        "failed": sum("error" in r for r in results),
        "plots": plots,
    }
    compare_to_baseline(payload)
    if out is not None:
        from physgen.report import write_json

        write_json(out / "results.json", payload)
    return payload


def compare_to_baseline(payload: dict[str, Any]) -> None:
    """For each learned surrogate, on which high-level features it beats the Gaussian baseline (separation power)."""
    by_ds: dict[str, dict[str, Any]] = {}
    for r in payload["results"]:
        if "error" not in r and r["family"] == "gaussian":
            by_ds[r["dataset"]] = r
    for r in payload["results"]:
        base = by_ds.get(r["dataset"])
        if "error" in r or base is None or r is base:
            continue
        mine, theirs = r["evaluation"]["features"], base["evaluation"]["features"]
        shared = [f for f in mine if f in theirs]
        sp_m = {f: mine[f]["separation_power"] for f in shared}
        sp_g = {f: theirs[f]["separation_power"] for f in shared}
        worse = [f for f in shared if sp_m[f]["value"] > sp_g[f]["value"]]
        # worse beyond the bootstrap errors: the two separation powers differ by more than 2σ combined
        significant = [
            f for f in worse
            if sp_m[f]["value"] - sp_g[f]["value"] > 2 * math.hypot(sp_m[f].get("error") or 0.0, sp_g[f].get("error") or 0.0)
        ]
        # the Gaussian and the surrogate both within 2σ of the truth-vs-truth floor: neither can be shown better
        at_floor = [f for f in worse if _at_floor(sp_g[f]) and _at_floor(sp_m[f])]
        r["vs_gaussian"] = {
            "features": len(mine),
            "worse_than_gaussian": worse,
            "significantly_worse_than_gaussian": significant,
            "both_at_floor": at_floor,
            "beats_on_every_feature": not worse,
            "beats_or_ties_at_floor_on_every_feature": set(worse) == set(at_floor),
            "no_feature_significantly_worse": not significant,
        }


def _at_floor(sp: dict[str, Any]) -> bool:
    """A separation power within 2σ (its error and its floor's combined) of its truth-vs-truth floor.

    There the sample is as close to Geant4 as a second Geant4 sample of the same size:
    a surrogate cannot be shown better than a baseline that sits there too. False where
    the floor was not measured (older result files).
    """
    if sp.get("floor") is None:
        return False
    return sp["value"] - sp["floor"] <= 2 * math.hypot(sp.get("error") or 0.0, sp.get("floor_error") or 0.0)
