"""``ssl-bench bench threads``: the CPU step time of a method under a thread policy, beside busy
neighbours: what the default of ``ssl-bench run``'s CPU threads is chosen from.

On a machine whose cores are taken by other jobs, OpenMP threads that spin while they wait for
each other (libgomp's default) fight the neighbours for the same cores and a step can take 10x
longer with 2 threads than with 1. ``run`` starts ``neighbours`` busy single-thread processes
(pure Python loops, stopped at the end by their pids), then, in one process per OpenMP wait policy
(read when torch loads), times ``steps`` steps (after one untimed step) of each method with each
thread count in turn:

* active (libgomp's default) with torch's default threads (one per core): the old default of
  ``ssl-bench run``; and with 1 thread;
* ``OMP_WAIT_POLICY=PASSIVE`` (waiting threads sleep) with torch's default threads; and with
  ``engine.default_threads()`` (the cores the load average leaves free, at least 1): the new default.

What a process has not reached within ``timeout_s`` is recorded as such. Results go to
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

#: process environment -> the thread counts timed in it ("default": torch's own, one per core;
#: "auto": ``engine.default_threads()``); a wait policy is read when torch loads, so each is a process
POLICIES = {"active": {}, "passive": {"OMP_WAIT_POLICY": "PASSIVE"}}
CANDIDATES = (("active", "default"), ("active", "1"), ("passive", "default"), ("passive", "auto"))
BUSY = "while True:\n    pass\n"


def _worker(methods: list[str], counts: list[str], image_size: int, batch: int, steps: int) -> list[dict]:
    import torch

    from ssl_bench.bench.steps import Setting, StepBench
    from ssl_bench.engine import default_threads

    default = torch.get_num_threads()
    rows = []
    for method in methods:
        bench = StepBench(method, Setting(image_size, batch, batch))
        for count in counts:
            n = default if count == "default" else default_threads() if count == "auto" else int(count)
            torch.set_num_threads(n)
            bench.step()
            times = [bench.timed_step() for _ in range(steps)]
            rows.append({"method": method, "threads_rule": count, "threads": n,
                         "median_step_s": statistics.median(times), "loadavg": os.getloadavg()[0]})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def run(methods=("mt", "cct"), candidates=CANDIDATES, neighbours: int = 2, image_size: int = 64,
        batch: int = 6, steps: int = 3, timeout_s: float = 300.0, out_dir: Path | str = Path("results/bench"),
        progress=print) -> dict:
    from ssl_bench.bench import machine
    from ssl_bench.datasets.base import atomic_write_text

    unknown = [c for c in candidates if c not in CANDIDATES]
    if unknown:
        raise ValueError(f"bench threads: unknown candidate {unknown[0]!r}; known: {CANDIDATES}")
    before = machine()
    busy = [subprocess.Popen([sys.executable, "-c", BUSY]) for _ in range(neighbours)]
    rows = []
    try:
        time.sleep(2)  # the neighbours are running before anything is timed
        for policy, env_add in POLICIES.items():
            counts = [c for p, c in candidates if p == policy]
            if not counts:
                continue
            env = {k: v for k, v in os.environ.items()
                   if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY")}
            env.update(env_add)
            arg = json.dumps({"methods": list(methods), "counts": counts, "image_size": image_size,
                              "batch": batch, "steps": steps})
            try:
                proc = subprocess.run([sys.executable, "-P", "-m", "ssl_bench.bench.threads", arg], env=env,
                                      capture_output=True, text=True, timeout=timeout_s)
                out = proc.stdout
                if proc.returncode != 0:
                    raise RuntimeError(proc.stderr[-2000:])
            except subprocess.TimeoutExpired as exc:
                out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
            done = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
            for r in done:
                r["policy"] = policy
                progress(f"{r['method']:>6} {policy:>8} {r['threads_rule']:>8}: {r['median_step_s']:.3f} s/step, "
                         f"{r['threads']} thread(s)")
            got = {(r["method"], r["threads_rule"]) for r in done}
            rows += done + [{"method": m, "policy": policy, "threads_rule": c, "threads": None, "median_step_s": None,
                             "loadavg": os.getloadavg()[0]} for m in methods for c in counts if (m, c) not in got]
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
             f"{rep['steps']} steps after one, per thread count in turn in one process per wait policy; load "
             f"average {rep['loadavg_before'][0]:.1f} before (other users' jobs included), "
             f"{rep['loadavg_after'][0]:.1f} after (1 min).", "",
             "| method | OMP wait policy | threads rule | threads | median s/step | load (1 min) |",
             "|---|---|---|---:|---:|---:|"]
    for r in rep["rows"]:
        med = f"{r['median_step_s']:.3f}" if r["median_step_s"] is not None else f"not reached in {rep['timeout_s']:.0f} s"
        lines.append(f"| {r['method']} | {r['policy']} | {r['threads_rule']} | {r['threads'] or '-'} | {med} | "
                     f"{r['loadavg']:.1f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":  # worker: python -P -m ssl_bench.bench.threads '{"methods": [...], ...}'
    _a = json.loads(sys.argv[1])
    _worker(_a["methods"], _a["counts"], _a["image_size"], _a["batch"], _a["steps"])
