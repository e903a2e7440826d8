"""Median step time and peak memory of every method and stage, as a ratio to UNet-L.

A step is the loop's iteration (``engine.fit`` between two logs): a batch drawn from slice pools
on the device and augmented there (``sampling.make_batch``), then ``step.StepRunner``: the method's
``training_step`` under autocast, backward, the optimiser steps and the EMA hook. The data are
synthetic slices (``bench.synthetic_slices``), the method configs their defaults, at step 500 of
1000 (ramp-ups under way; no method changes its cost with the step).

**3D** (``Setting.patch``, ``--patch x,y,z``): as a 3D dataset's run trains (``ssl_bench.volumetric``):
patches cropped from whole synthetic volumes (``bench.synthetic_volumes``, a 1.5 x larger ellipsoid
scan per draw) by a ``PatchPool``, the field's rot90 + flip as the weak augmentation, the V-Net
backbone and two classes (the LA track's ``train_defaults``); every method of ``RUNS_IN_3D`` by
default. "UNet-L" is then V-Net-L, still at ``labeled_bs + unlabeled_bs`` patches per step. A 3D row
has its patch (x, y, z) in the ``patch`` column (``64x64x32``) and an empty ``image_size``; a 2D row
an empty ``patch``.

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

COLUMNS = ["device", "method", "stage", "image_size", "patch", "labeled_bs", "unlabeled_bs", "amp",
           "channels_last", "compile", "median_step_s", "peak_mem_mb", "ratio_to_unet_l"]
KEY = COLUMNS[:10]
#: the schema before 3D rows (no ``patch``): such a file is read as 2D rows and rewritten in ``COLUMNS``
COLUMNS_2D_ONLY = [c for c in COLUMNS if c != "patch"]
BLOCK = 2  # steps of a method, then of the reference, alternately
LOADED = 1.0  # a load average before a run from which its report calls it loaded
#: the issue's goals, as ratios to UNet-L at equal images per step: (method, stage) -> at most
GOALS = {("mt", "train"): 1.3, ("cps", "train"): 2.2, ("action", "iii"): 1.6}
REFERENCE = "unet-l"
#: what a 3D dataset's run trains with (``datasets/la.py``'s ``train_defaults``)
BACKBONE_3D, CLASSES_3D = "vnet", 2


@dataclass
class Setting:
    image_size: int = 64
    labeled_bs: int = 6
    unlabeled_bs: int = 6
    amp: bool = False
    channels_last: bool = False
    compile: bool = False
    device: str = "cpu"
    patch: tuple[int, int, int] | None = None  # 3D: the training patch (x, y, z); None: 2D slices

    def __post_init__(self):
        if self.patch is not None:
            self.patch = tuple(int(v) for v in self.patch)  # a list after a trip through JSON

    @property
    def patch_text(self) -> str:
        """The CSV's ``patch`` column: ``64x64x32`` (x, y, z), empty for 2D."""
        return "x".join(map(str, self.patch)) if self.patch else ""

    def columns(self) -> dict:
        """The setting's key columns of a CSV row (``KEY`` after device, method, stage)."""
        out = {k: getattr(self, k) for k in KEY[3:] if k != "patch"}
        out["patch"] = self.patch_text
        if self.patch:
            out["image_size"] = ""
        return out

    def describe(self) -> str:
        """One line for reports: size, batch and the switches."""
        flags = f"amp={self.amp} cl={self.channels_last} compile={self.compile}"
        if self.patch:
            return f"patch {self.patch_text} (x,y,z) {self.labeled_bs}+{self.unlabeled_bs} {flags}"
        return f"{self.image_size}px {self.labeled_bs}+{self.unlabeled_bs} {flags}"


def check_3d(names: list[str], s: Setting) -> None:
    """A 3D setting needs a V-Net patch, square in (x, y) for rot90, and methods that run in 3D."""
    from ssl_bench.volumetric import check_method_3d, check_vnet_patch, zyx

    check_vnet_patch(zyx(s.patch), "--patch")
    if s.patch[0] != s.patch[1]:
        raise ValueError(f"--patch {s.patch_text}: the 3D loop's rot90 needs x = y (e.g. 64,64,32)")
    for name in names:
        try:
            check_method_3d(name)
        except ValueError as exc:
            raise ValueError(f"{exc}. Drop --patch to time {name} on 2D slices, or leave it out of --method") from None

class StepBench:
    """One method's training iteration as the loop runs it (see the module doc)."""

    def __init__(self, name: str, s: Setting, labeled_bs: int | None = None, seed: int = 0):
        import torch

        from ssl_bench.config import apply_overrides
        from ssl_bench.methods.base import MethodContext
        from ssl_bench.registry import get_method_class
        from ssl_bench.runconfig import TrainConfig
        from ssl_bench.sampling import place_pools
        from ssl_bench.step import amp_settings, prepare_modules

        self.device = torch.device(s.device)
        torch.manual_seed(seed)
        cls = get_method_class(name)
        self.aug, net = _augmenter_and_network(s)
        self.ctx = MethodContext(**net, total_iterations=1000, augment=self.aug,
                                 generator=torch.Generator().manual_seed(seed + 1))
        self.method = cls(apply_overrides(cls.Config(), {}), self.ctx).to(self.device)
        self.compiled = prepare_modules(self.method, s.channels_last, s.compile)
        self.amp = s.amp
        self.amp_dtype, use_scaler = amp_settings(self.device, s.amp, "bfloat16")
        self.scaler = torch.amp.GradScaler("cuda", enabled=use_scaler)
        self.cfg = TrainConfig(labeled_bs=labeled_bs or s.labeled_bs, unlabeled_bs=s.unlabeled_bs)
        self.lb = _pool(s, seed)
        self.ulb = None if self.method.supervised_only else _pool(s, seed + 7)
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


def _augmenter_and_network(s: Setting):
    """The loop's augmenter and the ``MethodContext`` fields of the network: 2D slices (UNet, 4
    classes) or, with a patch, the 3D track's (rot90 + flip, V-Net, 2 classes, (z, y, x) patch)."""
    from ssl_bench.augment import AugmentConfig, Augmenter
    from ssl_bench.volumetric import GEOMETRIC_3D, zyx

    if s.patch is None:
        return Augmenter(), {"num_classes": 4, "image_size": s.image_size}
    return (Augmenter(AugmentConfig(weak=list(GEOMETRIC_3D))),
            {"num_classes": CLASSES_3D, "backbone": BACKBONE_3D, "image_size": zyx(s.patch)})


def _pool(s: Setting, seed: int):
    """Training data as the loop holds it: a ``SlicePool`` of 32 slices, or a ``PatchPool`` of 8
    volumes each 1.5 x the patch per side (crops at random corners)."""
    from ssl_bench.bench import synthetic_slices, synthetic_volumes
    from ssl_bench.sampling import SlicePool, make_pool
    from ssl_bench.volumetric import VolumeSet, zyx

    if s.patch is None:
        return SlicePool(synthetic_slices(32, s.image_size, seed=seed))
    patch = zyx(s.patch)
    images, labels = synthetic_volumes(8, tuple(p + p // 2 for p in patch), seed=seed)
    return make_pool(VolumeSet(images, labels, patch))


def interleaved_medians(a, b, steps: int, warmup: int) -> tuple[float, float]:
    """Median step seconds of two zero-argument timed steps, run in alternating blocks."""
    for _ in range(warmup):
        a(), b()
    ta, tb = [], []
    for r in range(max(1, -(-steps // BLOCK))):
        for fn, out in ((a, ta), (b, tb)) if r % 2 == 0 else ((b, tb), (a, ta)):
            out.extend(fn() for _ in range(BLOCK))
    return statistics.median(ta[:steps]), statistics.median(tb[:steps])


def _cpu_recorded(timed_step, record: list):
    """``timed_step`` that also appends the process CPU seconds of each call to ``record`` (on a
    loaded machine the wall time includes waiting for a core; the CPU time does not)."""
    def step() -> float:
        t0 = time.process_time()
        wall = timed_step()
        record.append(time.process_time() - t0)
        return wall
    return step


def time_methods(names: list[str], s: Setting, steps: int, warmup: int, progress=None) -> list[dict]:
    """Rows (without ``peak_mem_mb``) of every stage of ``names``."""
    from ssl_bench.bench import device_tag

    reference = StepBench(REFERENCE, s, labeled_bs=s.labeled_bs + s.unlabeled_bs)
    rows = []
    for name in names:
        bench = StepBench(name, s)
        for stage in bench.stages:
            bench.set_stage(stage)
            cpu, cpu_ref = [], []
            med, ref = interleaved_medians(_cpu_recorded(bench.timed_step, cpu),
                                           _cpu_recorded(reference.timed_step, cpu_ref), steps, warmup)
            row = {"device": device_tag(s.device), "method": name, "stage": stage,
                   **s.columns(), "median_step_s": med,
                   "ratio_to_unet_l": med / ref, "reference_median_s": ref,
                   "median_cpu_s": statistics.median(cpu[warmup:warmup + steps]),
                   "reference_cpu_s": statistics.median(cpu_ref[warmup:warmup + steps])}
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
def parse_patch(text: str) -> tuple[int, int, int] | None:
    """The CSV's ``patch`` column back to (x, y, z); None for a 2D row (empty)."""
    return tuple(int(v) for v in text.split("x")) if text else None


def _key(row: dict) -> tuple:
    return tuple(str(row.get(k, "")) for k in KEY)


def _fmt(row: dict) -> dict:
    out = {k: row.get(k, "") for k in KEY}  # rows without ``patch`` (the card's) are 2D
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
            if reader.fieldnames not in (COLUMNS, COLUMNS_2D_ONLY):
                raise ValueError(f"{path} has columns {reader.fieldnames}, not {COLUMNS}: move it away")
            old = [{**r, "patch": r.get("patch") or ""} for r in reader]
            old = [r for r in old if _key(r) not in new]
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
        settings.setdefault(tuple(str(_fmt(r)[k]) for k in KEY[3:]), []).append(r)  # CSV text or fresh values
    out = [f"# Step time per method and stage ({rows[0]['device'] if rows else ''})", "",
           "Written by `ssl-bench bench steps` (ssl_bench/bench/steps.py: how each figure is measured). "
           "ratio = median step time / median of a UNet-L step on labeled + unlabeled images, "
           "timed alternately in the same process.", ""]
    cpu = {(run["setting"], k): v for run in runs for k, v in run.get("median_cpu_s", {}).items()}
    for setting, group in settings.items():
        size, patch, lb, ub, amp, cl, comp = setting
        shape = (f"patch {patch.replace('x', ' x ')} (x, y, z), V-Net, {lb} + {ub} patches" if patch
                 else f"{size} x {size}, {lb} + {ub} slices")
        described = Setting(int(size or 0), int(lb), int(ub), amp, cl, comp, patch=parse_patch(patch)).describe()
        cpu_of = {f"{r['method']}/{r['stage']}": cpu.get((described, f"{r['method']}/{r['stage']}")) for r in group}
        with_cpu = any(v is not None for v in cpu_of.values())  # runs before CPU times were recorded: no column
        out += [f"## {shape}, amp={amp}, channels_last={cl}, compile={comp}", "",
                "| method | stage | median s/step |" + (" median CPU s/step |" if with_cpu else "")
                + " ratio to UNet-L | peak memory (MiB) |", "|---|---|---:|" + ("---:|" if with_cpu else "") + "---:|---:|"]
        for r in sorted(group, key=lambda r: float(r["ratio_to_unet_l"])):
            c = cpu_of[f"{r['method']}/{r['stage']}"]
            cell = (" n/a |" if c is None else f" {c:.4f} |") if with_cpu else ""
            out.append(f"| {r['method']} | {r['stage']} | {float(r['median_step_s']):.4f} |{cell} "
                       f"{float(r['ratio_to_unet_l']):.2f} | {r['peak_mem_mb'] or 'n/a'} |")
        out += [""] if patch else ["", "Goals (issue 11):", *goal_lines(group), ""]
    out += ["## Runs", "", "| measured | setting | threads | load average before -> after | torch |",
            "|---|---|---:|---|---|"]
    for run in runs:
        la, lb_ = run["loadavg_before"], run["loadavg_after"]
        loaded = ", **loaded**" if la[0] >= LOADED else ""
        out.append(f"| {run['measured_at']} | {run['setting']} | {run['torch_threads']} | "
                   f"{la[0]:.2f} -> {lb_[0]:.2f} (1 min){loaded} | {run['torch']} |")
    out += ["", f"loaded: a 1-minute load average of {LOADED} or more before the run (other processes "
                "busy): its seconds per step include waiting for a core; its ratios are still side by side."]
    return "\n".join(out) + "\n"


def run(methods: list[str] | None, s: Setting, steps: int = 10, warmup: int = 2,
        out_dir: Path | str = Path("results/bench"), threads: int = 0, progress=None,
        memory: bool = True) -> dict:
    """Time and measure every method, merge into ``<device>.csv``, write ``.md`` and ``.json``
    (default methods: all, or with a patch those of ``RUNS_IN_3D``). ``memory=False`` skips the
    memory worker (the peak column stays empty)."""
    import torch

    from ssl_bench.bench import check_device, device_tag, machine
    from ssl_bench.datasets.base import atomic_write_text
    from ssl_bench.registry import list_methods
    from ssl_bench.volumetric import RUNS_IN_3D

    check_device(s.device)
    if steps < 1 or warmup < 0:
        raise ValueError(f"bench steps: steps={steps}, warmup={warmup}; use steps >= 1 and warmup >= 0")
    names = methods or (list(RUNS_IN_3D) if s.patch else list_methods())
    if s.patch:
        check_3d(names, s)
    if threads > 0:
        torch.set_num_threads(threads)
    before = machine()
    peaks = peak_memory(names, s, threads) if memory else {}
    rows = time_methods(names, s, steps, warmup, progress)
    for r in rows:
        r["peak_mem_mb"] = peaks.get(r["method"], {}).get(r["stage"])
    tag = device_tag(s.device)
    out = Path(out_dir)
    merged = merge_csv(out / f"{tag}.csv", rows)
    runs_path = out / f"{tag}.json"
    runs = json.loads(runs_path.read_text())["runs"] if runs_path.exists() else []
    setting = s.describe()
    earlier = next((r for r in runs if r["setting"] == setting), {})  # other methods' figures stay
    runs = [r for r in runs if r["setting"] != setting] + [{
        **before, "setting": setting, "steps": steps, "warmup": warmup,
        "loadavg_before": before["loadavg"], "loadavg_after": list(os.getloadavg()),
        **{field: {**earlier.get(field, {}), **{f"{r['method']}/{r['stage']}": r[field] for r in rows}}
           for field in ("reference_median_s", "median_cpu_s", "reference_cpu_s")}}]
    atomic_write_text(runs_path, json.dumps({"runs": runs}, indent=2) + "\n")
    atomic_write_text(out / f"{tag}.md", markdown(merged, runs))
    return {"rows": rows, "csv": out / f"{tag}.csv", "md": out / f"{tag}.md"}


if __name__ == "__main__":  # memory worker: python -P -m ssl_bench.bench.steps '{"names": [...], ...}'
    _args = json.loads(sys.argv[1])
    print(json.dumps(_memory_worker(_args["names"], _args["setting"])))
