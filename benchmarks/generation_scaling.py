"""Streamed and distributed generation: memory and time against the number of events, speed-up against workers.

``stream``: ``physgen sample MODEL --cond EVENTS.root ... --out OUT.h5`` in one process for each ``--n``, under
``/usr/bin/time -v``: wall time, peak resident memory and µs per event, so the memory can be seen to stay
flat (one chunk) and the time to grow linearly. ``workers``: the same generation on a Dask ``LocalCluster``
of 1 and then 2 workers (one torch thread each), with the outputs compared bit for bit.

The conditions are an analysis-style ROOT file made here: ``event`` (int64) and ``E_gen`` (GeV), log-uniform
in 1–10 GeV, carried through with ``--keep event``.

    python benchmarks/generation_scaling.py stream RUN/models/wsi_6k__vae --n 100000 1000000 --out generation_stream_wsi
    python benchmarks/generation_scaling.py workers RUN/models/wsi_6k__vae --n 20000 --chunk-size 2000 --out generation_workers_wsi
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, machine, write_markdown, write_result  # noqa: E402


def conditions(path: Path, n: int, seed: int = 7) -> Path:
    import uproot

    rng = np.random.default_rng(seed)
    with uproot.recreate(path) as f:
        f["Events"] = {"event": np.arange(n, dtype=np.int64), "E_gen": np.exp(rng.uniform(0.0, np.log(10.0), n)).astype(np.float32)}
    return path


def _digest(path: Path) -> str:
    import h5py

    h = hashlib.sha256()
    with h5py.File(path) as h5:
        for key in ("incident_energies", "showers", "event"):
            ds = h5[key]
            for i in range(0, len(ds), 10_000):
                h.update(np.ascontiguousarray(ds[i : i + 10_000]).tobytes())
    return h.hexdigest()


def stream(model: str, n: int, work: Path, chunk: int) -> dict:
    cond = conditions(work / f"events_{n}.root", n)
    out = work / f"showers_{n}.h5"
    cmd = ["/usr/bin/time", "-v", sys.executable, "-m", "physgen.cli", "sample", model, "--cond", str(cond), "--cond-branches", "E_gen",
           "--cond-units", "GeV", "--keep", "event", "--chunk-size", str(chunk), "--out", str(out), "-q"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
    wall = time.perf_counter() - t0
    rss_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr).group(1))
    size = out.stat().st_size
    out.unlink()
    return {"events": n, "chunk_size": chunk, "wall_s": round(wall, 1), "us_per_event": round(wall / n * 1e6, 1),
            "peak_rss_gb": round(rss_kb / 2**20, 3), "file_gb": round(size / 2**30, 3), "command": " ".join(cmd[2:])}


def workers(model: str, n: int, work: Path, chunk: int) -> dict:
    from physgen.generate import generate

    cond = conditions(work / "events.root", n)
    rows = {}
    for k in (1, 2):
        out = work / f"w{k}.h5"
        t0 = time.perf_counter()
        generate(model, out, cond_file=cond, columns=["E_gen"], cond_units=["GeV"], keep=["event"], chunk_size=chunk, workers=k,
                 threads_per_worker=1, progress=False)
        rows[k] = {"wall_s": round(time.perf_counter() - t0, 1), "digest": _digest(out)}
    return {"events": n, "chunk_size": chunk, "threads_per_worker": 1, "one_worker": rows[1], "two_workers": rows[2],
            "speed_up": round(rows[1]["wall_s"] / rows[2]["wall_s"], 2), "identical": rows[1]["digest"] == rows[2]["digest"]}


def markdown(payload: dict) -> str:
    """The result as the Markdown table the docs include."""
    m = payload["machine"]
    where = f"{m.get('cpu', '?')} ({m.get('capability', '?')}), {m.get('cpu_count', '?')} cores, model `{payload['model']}`"
    if payload["mode"] == "stream":
        lines = ["| events | wall time | µs per shower | peak resident memory | HDF5 file (gzip) |", "|---|---|---|---|---|"]
        lines += [f"| {r['events']:,} | {r['wall_s']:,.0f} s | {r['us_per_event']:,.0f} | {r['peak_rss_gb']:.2f} GB | {r['file_gb']:.2f} GB |"
                  for r in payload["runs"]]
        return "\n".join([f"One process, chunks of {payload['runs'][0]['chunk_size']:,} showers, on {where}:", "", *lines, ""])
    one, two = payload["one_worker"], payload["two_workers"]
    return "\n".join([
        f"{payload['events']:,} showers in chunks of {payload['chunk_size']:,} on a Dask `LocalCluster`, one torch thread a worker, on {where}:",
        "", "| workers | wall time | speed-up | output |", "|---|---|---|---|",
        f"| 1 | {one['wall_s']:.1f} s | 1 | |",
        f"| 2 | {two['wall_s']:.1f} s | {payload['speed_up']:.2f}× | {'identical bit for bit' if payload['identical'] else 'DIFFERENT'} |", ""])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("mode", choices=["stream", "workers", "render"], help="render: rewrite OUT.md from OUT.json")
    ap.add_argument("model", nargs="?", help="a saved model directory")
    ap.add_argument("--n", type=int, nargs="+", help="events (stream: one run per value)")
    ap.add_argument("--chunk-size", type=int, default=10_000)
    ap.add_argument("--out", required=True, help="result name: writes benchmarks/results/OUT.json")
    args = ap.parse_args()
    if args.mode == "render":
        print(write_markdown(args.out, markdown(json.loads((RESULTS / f"{args.out}.json").read_text()))))
        return
    with tempfile.TemporaryDirectory(dir=".") as tmp:
        work = Path(tmp)
        if args.mode == "stream":
            runs = [stream(args.model, n, work, args.chunk_size) for n in args.n]
            for r in runs:
                print(f"{r['events']:>9,} events: {r['wall_s']:8.1f} s, {r['us_per_event']:7.1f} µs/event, peak RSS {r['peak_rss_gb']:.2f} GB, "
                      f"file {r['file_gb']:.2f} GB")
            payload = {"mode": "stream", "model": Path(args.model).name, "runs": runs}
        else:
            payload = {"mode": "workers", "model": Path(args.model).name, **workers(args.model, args.n[0], work, args.chunk_size)}
            print(f"1 worker {payload['one_worker']['wall_s']} s, 2 workers {payload['two_workers']['wall_s']} s: "
                  f"speed-up {payload['speed_up']}x, identical output: {payload['identical']}")
    payload["machine"] = machine()
    print(write_result(args.out, payload))
    print(write_markdown(args.out, markdown(payload)))


if __name__ == "__main__":
    main()
