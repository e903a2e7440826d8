"""Median step time and peak memory of every method and stage, as a ratio to UNet-L.

A step is the loop's iteration (``engine.fit`` between two logs): a batch drawn from slice pools
on the device and augmented there (``sampling.make_batch``), then ``step.StepRunner``: the method's
``training_step`` under autocast, backward, the optimiser steps and the EMA hook. The data are
synthetic slices (``bench.synthetic_slices``), the method configs their defaults, at step 500 of
1000 (ramp-ups under way; no method changes its cost with the step).

* **ratio_to_unet_l**: the method's median over the median of a UNet-L step on
  ``labeled_bs + unlabeled_bs`` labeled images, the same number of images per step; the two are
  timed in alternating blocks (``BLOCK`` steps each) in one process, so the load of other
  processes falls on both alike. The UNet-L *method* row itself sees ``labeled_bs`` images only.
* **median_step_s**: the median of single-step wall times after ``warmup`` steps (on CUDA each
  step ends with a synchronisation, for the timing only).
* **peak_mem_mb**: in a fresh worker process, the peak during a stage's steps minus what the
  process held before the method was built (so: weights, gradients, optimiser state, activations,
  the slice pools): ``torch.cuda.max_memory_allocated`` on CUDA; on a CPU the peak resident size
  (``VmHWM``, reset per stage through ``/proc/self/clear_refs``) with ``MALLOC_MMAP_THRESHOLD_=
  65536``, so that freed tensors leave the resident set (glibc keeps them otherwise).

``run`` merges its rows into ``results/bench/<device>.csv`` (a row per device, method, stage and
setting; a new run replaces the rows of its setting) and writes ``<device>.md`` and the runs'
conditions (load average, threads) to ``<device>.json``. The CSV's columns are ``COLUMNS``, a
schema other tools read (the sweep planner's device-hours): keep it.
"""
from __future__ import annotations

import csv
import gc
import io
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

COLUMNS = ["device", "method", "stage", "image_size", "labeled_bs", "unlabeled_bs", "amp",
           "channels_last", "compile", "median_step_s", "peak_mem_mb", "ratio_to_unet_l"]
KEY = COLUMNS[:9]
BLOCK = 2  # steps of a method, then of the reference, alternately
#: the issue's goals, as ratios to UNet-L at equal images per step: (method, stage) -> at most
GOALS = {("mt", "train"): 1.3, ("cps", "train"): 2.2, ("action", "iii"): 1.6}
REFERENCE = "unet-l"


@dataclass
class Setting:
    image_size: int = 64
    labeled_bs: int = 6
    unlabeled_bs: int = 6
    amp: bool = False
    channels_last: bool = False
    compile: bool = False
    device: str = "cpu"


class StepBench:
    """One method's training iteration as the loop runs it (see the module doc)."""

    def __init__(self, name: str, s: Setting, labeled_bs: int | None = None, seed: int = 0):
        import torch

        from ssl_bench.augment import Augmenter
        from ssl_bench.bench import synthetic_slices
        from ssl_bench.config import apply_overrides
        from ssl_bench.methods.base import MethodContext
        from ssl_bench.registry import get_method_class
        from ssl_bench.runconfig import TrainConfig
        from ssl_bench.sampling import SlicePool, place_pools
        from ssl_bench.step import amp_settings, prepare_modules

        self.device = torch.device(s.device)
        torch.manual_seed(seed)
        cls = get_method_class(name)
        self.aug = Augmenter()
        self.ctx = MethodContext(num_classes=4, image_size=s.image_size, total_iterations=1000,
                                 augment=self.aug, generator=torch.Generator().manual_seed(seed + 1))
        self.method = cls(apply_overrides(cls.Config(), {}), self.ctx).to(self.device)
        self.compiled = prepare_modules(self.method, s.channels_last, s.compile)
        self.amp = s.amp
        self.amp_dtype, use_scaler = amp_settings(self.device, s.amp, "bfloat16")
        self.scaler = torch.amp.GradScaler("cuda", enabled=use_scaler)
        self.cfg = TrainConfig(labeled_bs=labeled_bs or s.labeled_bs, unlabeled_bs=s.unlabeled_bs)
        self.lb = SlicePool(synthetic_slices(32, s.image_size, seed=seed))
        self.ulb = None if self.method.supervised_only else SlicePool(synthetic_slices(32, s.image_size, seed=seed + 7))
        place_pools([self.lb, self.ulb], self.device)
        self.g = torch.Generator().manual_seed(seed)
        self.stages = [st.name for st in self.method.stages()]
        self.step_index = 500
        self.set_stage(self.stages[0])

    def set_stage(self, name: str) -> None:
        import torch

        from ssl_bench.step import StepRunner

        m = self.method
        m.set_stage(name)
        m.train(True)
        opt = torch.optim.SGD(m.trainable_parameters(), lr=1e-3, momentum=0.9, weight_decay=1e-4)
        aux = {k: m.make_aux_optimizer(k, v) for k, v in m.aux_parameters().items()}
        self.runner = StepRunner(m, opt, aux, self.scaler, self.device, self.amp, self.amp_dtype,
                                 self.compiled, self.ctx.generator)

    def step(self):
        """One iteration; returns the method's ``StepOutput``."""
        from ssl_bench.sampling import make_batch

        batch = make_batch(self.lb, self.ulb, self.cfg, self.aug, self.g, self.device,
                           not self.method.supervised_only)
        out = self.runner(batch, self.step_index)
        self.compiled = self.runner.compiled
        self.step_index += 1
        return out

    def timed_step(self) -> float:
        from ssl_bench.bench import synchronize

        t0 = time.perf_counter()
        self.step()
        synchronize(self.device)
        return time.perf_counter() - t0


def interleaved_medians(a, b, steps: int, warmup: int) -> tuple[float, float]:
    """Median step seconds of two zero-argument timed steps, run in alternating blocks."""
    for _ in range(warmup):
        a(), b()
    ta, tb = [], []
    for r in range(max(1, -(-steps // BLOCK))):
        for fn, out in ((a, ta), (b, tb)) if r % 2 == 0 else ((b, tb), (a, ta)):
            out.extend(fn() for _ in range(BLOCK))
    return statistics.median(ta[:steps]), statistics.median(tb[:steps])


def time_methods(names: list[str], s: Setting, steps: int, warmup: int, progress=None) -> list[dict]:
    """Rows (without ``peak_mem_mb``) of every stage of ``names``."""
    from ssl_bench.bench import device_tag

    reference = StepBench(REFERENCE, s, labeled_bs=s.labeled_bs + s.unlabeled_bs)
    rows = []
    for name in names:
        bench = StepBench(name, s)
        for stage in bench.stages:
            bench.set_stage(stage)
            med, ref = interleaved_medians(bench.timed_step, reference.timed_step, steps, warmup)
            row = {"device": device_tag(s.device), "method": name, "stage": stage,
                   **{k: getattr(s, k) for k in KEY[3:]}, "median_step_s": med,
                   "ratio_to_unet_l": med / ref, "reference_median_s": ref}
            rows.append(row)
            if progress:
                progress(row)
        del bench
        gc.collect()
    return rows


# -- memory, in a fresh worker process ---------------------------------------------------------
def _rss_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise OSError(f"/proc/self/status has no {field}")


def _memory_worker(names: list[str], setting: dict) -> dict:
    import torch

    s = Setting(**setting)
    dev = torch.device(s.device)
    out: dict[str, dict[str, float | None]] = {}
    warm = StepBench(REFERENCE, s)  # first-use allocations (kernels, thread pools) count for nobody
    warm.step()
    del warm
    for name in names:
        gc.collect()
        if dev.type == "cuda":
            torch.cuda.empty_cache()
            base = torch.cuda.memory_allocated(dev) / 2**20
        else:
            base = _rss_mb("VmRSS")
        bench = StepBench(name, s)
        out[name] = {}
        for stage in bench.stages:
            bench.set_stage(stage)
            bench.step()  # gradients and optimiser state exist from here on
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
                torch.cuda.reset_peak_memory_stats(dev)
            else:
                try:
                    with open("/proc/self/clear_refs", "w") as f:
                        f.write("5")  # resets VmHWM to the current resident size
                except OSError:
                    out[name][stage] = None  # no way to isolate a stage's peak here
                    continue
            for _ in range(2):
                bench.step()
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
                peak = torch.cuda.max_memory_allocated(dev) / 2**20
            else:
                peak = _rss_mb("VmHWM")
            out[name][stage] = peak - base
        del bench
    return out


def peak_memory(names: list[str], s: Setting, threads: int = 0) -> dict:
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    if threads > 0:
        env["OMP_NUM_THREADS"] = str(threads)
    # -P: the working directory's datasets/ folder must not shadow the package
    proc = subprocess.run([sys.executable, "-P", "-m", "ssl_bench.bench.steps",
                           json.dumps({"names": names, "setting": asdict(s)})],
                          capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"bench steps memory worker failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# -- reports -----------------------------------------------------------------------------------
def _key(row: dict) -> tuple:
    return tuple(str(row[k]) for k in KEY)


def _fmt(row: dict) -> dict:
    out = {k: row[k] for k in KEY}
    out["median_step_s"] = f"{float(row['median_step_s']):.6g}"
    mem = row.get("peak_mem_mb")
    out["peak_mem_mb"] = "" if mem in (None, "") else f"{float(mem):.1f}"
    out["ratio_to_unet_l"] = f"{float(row['ratio_to_unet_l']):.4g}"
    return out


def merge_csv(path: Path, rows: list[dict]) -> list[dict]:
    """Rows of ``path`` with those of the same key replaced by ``rows``; written atomically."""
    from ssl_bench.datasets.base import atomic_write_text

    new = {_key(r): _fmt(r) for r in rows}
    old = []
    if path.exists():
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            if reader.fieldnames != COLUMNS:
                raise ValueError(f"{path} has columns {reader.fieldnames}, not {COLUMNS}: move it away")
            old = [r for r in reader if _key(r) not in new]
    merged = old + list(new.values())
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    w.writeheader()
    w.writerows(merged)
    atomic_write_text(path, buf.getvalue())
    return merged


def goal_lines(rows: list[dict]) -> list[str]:
    lines = []
    for (method, stage), limit in GOALS.items():
        for r in rows:
            if r["method"] == method and r["stage"] == stage:
                ratio = float(r["ratio_to_unet_l"])
                verdict = "met" if ratio <= limit else "**missed**"
                lines.append(f"- {method} ({stage}) <= {limit} x UNet-L: {ratio:.2f} x, {verdict}")
    return lines


def markdown(rows: list[dict], runs: list[dict]) -> str:
    """The report of one device: one table per setting, the goals, the runs' conditions."""
    settings: dict[tuple, list[dict]] = {}
    for r in rows:
        settings.setdefault(tuple(r[k] for k in KEY[3:]), []).append(r)
    out = [f"# Step time per method and stage ({rows[0]['device'] if rows else ''})", "",
           "Written by `ssl-bench bench steps` (ssl_bench/bench/steps.py: how each figure is measured). "
           "ratio = median step time / median of a UNet-L step on labeled + unlabeled images, "
           "timed alternately in the same process.", ""]
    for setting, group in settings.items():
        size, lb, ub, amp, cl, comp = setting
        out += [f"## {size} x {size}, {lb} + {ub} slices, amp={amp}, channels_last={cl}, compile={comp}", "",
                "| method | stage | median s/step | ratio to UNet-L | peak memory (MiB) |", "|---|---|---:|---:|---:|"]
        for r in sorted(group, key=lambda r: float(r["ratio_to_unet_l"])):
            out.append(f"| {r['method']} | {r['stage']} | {float(r['median_step_s']):.4f} | "
                       f"{float(r['ratio_to_unet_l']):.2f} | {r['peak_mem_mb'] or 'n/a'} |")
        out += ["", "Goals (issue 11):", *goal_lines(group), ""]
    out += ["## Runs", "", "| measured | setting | threads | load average before -> after | torch |",
            "|---|---|---:|---|---|"]
    for run in runs:
        la, lb_ = run["loadavg_before"], run["loadavg_after"]
        out.append(f"| {run['measured_at']} | {run['setting']} | {run['torch_threads']} | "
                   f"{la[0]:.2f} -> {lb_[0]:.2f} (1 min) | {run['torch']} |")
    return "\n".join(out) + "\n"


def run(methods: list[str] | None, s: Setting, steps: int = 10, warmup: int = 2,
        out_dir: Path | str = Path("results/bench"), threads: int = 0, progress=None) -> dict:
    """Time and measure every method, merge into ``<device>.csv``, write ``.md`` and ``.json``."""
    import torch

    from ssl_bench.bench import check_device, device_tag, machine
    from ssl_bench.datasets.base import atomic_write_text
    from ssl_bench.registry import list_methods

    check_device(s.device)
    if steps < 1 or warmup < 0:
        raise ValueError(f"bench steps: steps={steps}, warmup={warmup}; use steps >= 1 and warmup >= 0")
    names = methods or list_methods()
    if threads > 0:
        torch.set_num_threads(threads)
    before = machine()
    memory = peak_memory(names, s, threads)
    rows = time_methods(names, s, steps, warmup, progress)
    for r in rows:
        r["peak_mem_mb"] = memory.get(r["method"], {}).get(r["stage"])
    tag = device_tag(s.device)
    out = Path(out_dir)
    merged = merge_csv(out / f"{tag}.csv", rows)
    runs_path = out / f"{tag}.json"
    runs = json.loads(runs_path.read_text())["runs"] if runs_path.exists() else []
    setting = f"{s.image_size}px {s.labeled_bs}+{s.unlabeled_bs} amp={s.amp} cl={s.channels_last} compile={s.compile}"
    runs = [r for r in runs if r["setting"] != setting] + [{
        **before, "setting": setting, "steps": steps, "warmup": warmup,
        "loadavg_before": before["loadavg"], "loadavg_after": list(os.getloadavg()),
        "reference_median_s": {f"{r['method']}/{r['stage']}": r["reference_median_s"] for r in rows}}]
    atomic_write_text(runs_path, json.dumps({"runs": runs}, indent=2) + "\n")
    atomic_write_text(out / f"{tag}.md", markdown(merged, runs))
    return {"rows": rows, "csv": out / f"{tag}.csv", "md": out / f"{tag}.md"}


if __name__ == "__main__":  # memory worker: python -P -m ssl_bench.bench.steps '{"names": [...], ...}'
    _args = json.loads(sys.argv[1])
    print(json.dumps(_memory_worker(_args["names"], _args["setting"])))
