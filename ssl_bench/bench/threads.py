"""``ssl-bench bench threads``: the CPU step time of a method under a thread policy, beside busy
neighbours: what the default of ``ssl-bench run``'s CPU threads is chosen from.

On a machine whose cores are taken by other jobs, OpenMP threads that spin while they wait for
each other (libgomp's default) fight the neighbours for the same cores and a step can take 10x
longer with 2 threads than with 1. ``run`` starts ``neighbours`` busy single-thread processes
(pure Python loops, stopped at the end by their pids), then times ``steps`` steps (after one
untimed step) of each method under each candidate, each candidate in a fresh process so that its
environment is read before torch loads:

* ``torch-default``: torch's default (one thread per core): the old default of ``ssl-bench run``;
* ``1``: one thread;
* ``passive``: torch's default with ``OMP_WAIT_POLICY=PASSIVE`` (waiting threads sleep);
* ``auto``: ``engine.default_threads()`` (the cores the load average leaves free, at least 1)
  with ``OMP_WAIT_POLICY=PASSIVE``: the new default.

A candidate that does not finish within ``timeout_s`` is recorded as such. Results go to
``results/bench/threads_<device>.json`` and ``.md`` with the load average before and after, since
the other processes of a shared machine are part of the conditions.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

CANDIDATES = {"torch-default": {}, "1": {"OMP_NUM_THREADS": "1"}, "passive": {"OMP_WAIT_POLICY": "PASSIVE"},
              "auto": {"SSL_BENCH_THREADS_AUTO": "1", "OMP_WAIT_POLICY": "PASSIVE"}}
BUSY = "while True:\n    pass\n"


def _worker(method: str, image_size: int, batch: int, steps: int) -> dict:
    import torch

    from ssl_bench.bench.steps import Setting, StepBench

    if os.environ.get("SSL_BENCH_THREADS_AUTO"):
        from ssl_bench.engine import default_threads

        torch.set_num_threads(default_threads())
    bench = StepBench(method, Setting(image_size, batch, batch))
    bench.step()
    times = [bench.timed_step() for _ in range(steps)]
    return {"median_step_s": statistics.median(times), "threads": torch.get_num_threads()}


def run(methods=("mt", "cct"), candidates=tuple(CANDIDATES), neighbours: int = 2, image_size: int = 64,
        batch: int = 6, steps: int = 3, timeout_s: float = 90.0, out_dir: Path | str = Path("results/bench"),
        progress=print) -> dict:
    from ssl_bench.bench import machine
    from ssl_bench.datasets.base import atomic_write_text

    unknown = [c for c in candidates if c not in CANDIDATES]
    if unknown:
        raise ValueError(f"bench threads: unknown candidate {unknown[0]!r}; known: {', '.join(CANDIDATES)}")
    before = machine()
    busy = [subprocess.Popen([sys.executable, "-c", BUSY]) for _ in range(neighbours)]
    rows = []
    try:
        time.sleep(2)  # the neighbours are running before anything is timed
        for method in methods:
            for cand in candidates:
                env = {k: v for k, v in os.environ.items()
                       if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY")}
                env.update(CANDIDATES[cand])
                arg = json.dumps({"method": method, "image_size": image_size, "batch": batch, "steps": steps})
                t0 = time.perf_counter()
                try:
                    proc = subprocess.run([sys.executable, "-P", "-m", "ssl_bench.bench.threads", arg], env=env,
                                          capture_output=True, text=True, timeout=timeout_s)
                    if proc.returncode != 0:
                        raise RuntimeError(proc.stderr[-2000:])
                    row = {**json.loads(proc.stdout.strip().splitlines()[-1]), "finished": True}
                except subprocess.TimeoutExpired:
                    row = {"median_step_s": None, "threads": None, "finished": False}
                row.update(method=method, candidate=cand, wall_s=time.perf_counter() - t0,
                           loadavg=os.getloadavg()[0])
                rows.append(row)
                progress(f"{method:>6} {cand:>14}: " + (f"{row['median_step_s']:.3f} s/step, {row['threads']} thread(s)"
                                                        if row["finished"] else f"not done in {timeout_s:.0f} s"))
    finally:
        for p in busy:
            p.kill()
            p.wait()
    rep = {"benchmark": "threads", **before, "neighbours": neighbours, "image_size": image_size, "batch": batch,
           "steps": steps, "timeout_s": timeout_s, "rows": rows, "loadavg_before": before["loadavg"],
           "loadavg_after": list(os.getloadavg())}
    out = Path(out_dir)
    atomic_write_text(out / "threads_cpu.json", json.dumps(rep, indent=2) + "\n")
    atomic_write_text(out / "threads_cpu.md", _markdown(rep))
    return rep


def _markdown(rep: dict) -> str:
    lines = [f"# CPU threads beside {rep['neighbours']} busy single-thread neighbours", "",
             f"`ssl-bench bench threads` (ssl_bench/bench/threads.py), {rep['measured_at']}, {rep['machine']}, "
             f"torch {rep['torch']}; {rep['image_size']} px, {rep['batch']} + {rep['batch']} slices, median of "
             f"{rep['steps']} steps after one; load average {rep['loadavg_before'][0]:.1f} before (other users' "
             f"jobs included), {rep['loadavg_after'][0]:.1f} after (1 min).", "",
             "| method | candidate | threads | median s/step | process wall s | load (1 min) |", "|---|---|---:|---:|---:|---:|"]
    for r in rep["rows"]:
        med = f"{r['median_step_s']:.3f}" if r["finished"] else f"not done in {rep['timeout_s']:.0f} s"
        lines.append(f"| {r['method']} | {r['candidate']} | {r['threads'] or '-'} | {med} | {r['wall_s']:.1f} | "
                     f"{r['loadavg']:.1f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":  # worker: python -P -m ssl_bench.bench.threads '{"method": ...}'
    _a = json.loads(sys.argv[1])
    print(json.dumps(_worker(_a["method"], _a["image_size"], _a["batch"], _a["steps"])))
