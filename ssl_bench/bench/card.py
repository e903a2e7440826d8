"""``ssl-bench bench card``: the figures a short GPU lease must bring back, section by section.

Made for a lent GPU host where one command runs at most 10 minutes, the lease is about 15 in all
(start-up included) and only a few files written to ``$OUT`` come back. So:

* every section runs in its own guard: an exception (a missing module, one method's OOM, a compile
  failure) is recorded as that section's ``error`` and the next section runs;
* each section's result is appended to ``OUT/card.jsonl`` (one JSON object a line) and
  ``OUT/card.md`` the moment it ends, and the step rows are merged into ``OUT/<device>.csv``
  (the schema of ``bench steps``, which sweep estimates read): a cut leaves every finished section;
* a budget (``budget_s``): a section starts only if its estimate (the last section of its kind,
  else ``ESTIMATE_S``) fits in what is left, and an alarm cuts a section that overruns; what is not
  run is listed as ``skipped`` with the reason. The first line of ``card.jsonl`` is the plan, so
  even a command killed from outside says what was never reached;
* the path imports only torch, numpy and scipy (no medpy, nibabel, mlflow, submitit, typer or
  rich: ``tests/test_bench.py`` runs it with those blocked), writes no data set, and runs from a
  source tree that is not installed (``PYTHONPATH=. python3 -m ssl_bench.bench.card``).

Every figure carries the conditions it was measured under (``env``): device name, torch, CUDA and
cuDNN versions, AMP dtype, channels_last, compile, the TF32 and cuDNN flags and the CPU threads.
cuDNN is set as the training runs set it (``engine.seed_everything``: deterministic, no
benchmark), so step times and training runs share their kernels' rules.

The default plan, in the order of what decides most (review ``gpu-readiness-2026-12``, B3):

1. ``env``: the device and the software;
2. ``steps bf16+cl``: UNet-L, MT, CPS and ACTION stage iii at 256 px, 12 + 12, bf16 autocast and
   channels_last: median step time, ratio to a UNet-L step on 24 images (timed alternately in the
   same process), peak memory of the method alone (peaks reset per section);
3. ``loop bf16+cl``: 300 consecutive lean steps of UNet-L and of MT (losses read back every 10, as
   the loop does), i.e. seconds per 1000 iterations and hours for the field's 30k budget
   (training only: no validation or checkpoints);
4. ``steps fp32``: the same four methods in float32;
5. ``reference-mt``: the plain SSL4MIS-style Mean Teacher step (4 loader workers) beside ssl-bench's
   (bf16 + channels_last);
6. ``steps bf16+cl+compile``: the four methods with ``torch.compile`` of what their step calls,
   each row saying whether it compiled, how many graphs and whether it fell back to eager.

Estimate on an H200 (a UNet-L step on 24 slices of 256² takes about 8-15 ms there; review §6):
process start, CUDA and cuDNN initialisation 10-20 s; an eager steps section builds two networks
(about 1 s) and runs 2 + 2 x (5 + 20) = 52 steps of 10-40 ms, so 2-4 s, and 8 of them take 16-32 s;
the loop is 2 x 300 steps of 10-20 ms plus builds, 8-15 s; reference-mt spawns 4 loader workers and
runs 2 x 2 x 25 steps, 15-30 s; the compile sections pay the cold inductor compiles of the U-Net's
encoder and decoder forward and backward at 24 and at 12 images (30-60 s each), the teacher's
no-grad graphs (10-20 s) and ACTION's heads (10-20 s), CPS and the rest hitting the cache: 70-160 s.
Total 2-4.5 min, under the default budget of 300 s; with ``timeout 360`` around the command and a
machine start of 1.5-2.5 min, one lease of 15 minutes holds it with time for a second try.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
import traceback
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

FIELD_BUDGET = 30_000  # iterations of the field's ACDC training runs
DEFAULT_METHODS = ("unet-l", "mt", "cps", "action:iii")
#: seconds a section of each kind is expected to take before one of its kind has run (H200)
ESTIMATE_S = {"env": 5.0, "steps": 5.0, "loop": 15.0, "reference-mt": 30.0, "compile": 60.0}
#: what the card must not import (the device image lacks them; ``tests/test_bench.py`` blocks them)
FORBIDDEN = ("medpy", "nibabel", "mlflow", "submitit", "typer", "rich", "pandas", "matplotlib")


class BudgetSpent(Exception):
    """The card's budget ran out in the middle of a section."""


@dataclass
class Section:
    title: str
    kind: str  # env | steps | loop | reference-mt | compile
    run: Callable[[], dict]


@dataclass
class CardConfig:
    out_dir: Path
    budget_s: float = 300.0
    device: str = "cuda"
    image_size: int = 256
    labeled_bs: int = 12
    unlabeled_bs: int = 12
    methods: tuple[str, ...] = DEFAULT_METHODS  # "name" or "name:stage"
    steps: int = 20
    warmup: int = 5
    loop_steps: int = 300
    workers: int = 4
    compile: bool = True
    threads: int = 0
    extra: dict = field(default_factory=dict)


# -- conditions of every figure ------------------------------------------------------------------
def figure_env(device, amp: bool = False, channels_last: bool = False, compile: bool = False) -> dict:
    """The device, the software and the flags a figure was measured with."""
    import torch

    dev = torch.device(device)
    cuda = dev.type == "cuda"
    return {"device": torch.cuda.get_device_name(dev) if cuda else "cpu",
            "torch": torch.__version__, "cuda": torch.version.cuda if cuda else None,
            "cudnn": torch.backends.cudnn.version() if cuda else None,
            "amp_dtype": "bfloat16" if amp else None, "channels_last": channels_last, "compile": compile,
            "tf32_matmul": torch.backends.cuda.matmul.allow_tf32, "tf32_cudnn": torch.backends.cudnn.allow_tf32,
            "cudnn_benchmark": torch.backends.cudnn.benchmark,
            "cudnn_deterministic": torch.backends.cudnn.deterministic, "threads": torch.get_num_threads()}


def _peak_mb(device, base: float) -> float:
    import torch

    from ssl_bench.bench import synchronize
    from ssl_bench.cost import host_rss_mb

    dev = torch.device(device)
    if dev.type == "cuda":
        synchronize(dev)
        return torch.cuda.max_memory_allocated(dev) / 2**20 - base
    return host_rss_mb() - base


def _memory_now(device) -> float:
    import gc

    import torch

    dev = torch.device(device)
    gc.collect()
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        torch.cuda.empty_cache()
        return torch.cuda.memory_allocated(dev) / 2**20
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) / 1024 for line in f if line.startswith("VmRSS:"))


# -- sections ------------------------------------------------------------------------------------
def _split(spec: str) -> tuple[str, str | None]:
    name, _, stage = spec.partition(":")
    return name, stage or None


def steps_section(spec: str, setting, cfg: CardConfig) -> dict:
    """One method (one stage, or each stage) in one setting: step time, ratio to UNet-L, peak memory
    of the method alone, and for a compiled setting whether it compiled, its graphs and fallback."""
    from ssl_bench.bench.steps import REFERENCE, StepBench, interleaved_medians
    from ssl_bench.cost import reset_peaks
    from ssl_bench.step import compiled_graphs

    name, only = _split(spec)
    rows = []
    base = _memory_now(setting.device)
    graphs0 = compiled_graphs() if setting.compile else 0
    bench = StepBench(name, setting)
    stages = [only] if only else bench.stages
    unknown = [s for s in stages if s not in bench.stages]
    if unknown:
        raise ValueError(f"{name} has no stage {unknown[0]!r}; its stages: {', '.join(bench.stages)}")
    reference = None
    for stage in stages:
        import torch

        bench.set_stage(stage)
        reset_peaks(torch.device(setting.device))  # this section's peak, not an earlier one
        for _ in range(2):
            bench.step()
        peak = _peak_mb(setting.device, base)
        if reference is None:
            reference = StepBench(REFERENCE, setting, labeled_bs=setting.labeled_bs + setting.unlabeled_bs)
        med, ref = interleaved_medians(bench.timed_step, reference.timed_step, cfg.steps, cfg.warmup)
        row = {"device": _tag(setting.device), "method": name, "stage": stage, "image_size": setting.image_size,
               "labeled_bs": setting.labeled_bs, "unlabeled_bs": setting.unlabeled_bs, "amp": setting.amp,
               "channels_last": setting.channels_last, "compile": setting.compile, "median_step_s": med,
               "peak_mem_mb": peak, "ratio_to_unet_l": med / ref, "reference_median_s": ref}
        if setting.compile:
            row.update(compiled=bench.compiled, fallback=not bench.compiled,
                       graphs=compiled_graphs() - graphs0)
        rows.append(row)
    return {"rows": rows}


def loop_section(name: str, setting, cfg: CardConfig) -> dict:
    """``loop_steps`` lean steps in a row, losses read back every 10 steps (the loop's cadence):
    seconds per 1000 iterations and hours for 30k (training steps only)."""
    from ssl_bench.bench import synchronize
    from ssl_bench.bench.steps import StepBench

    bench = StepBench(name, setting)
    for _ in range(max(cfg.warmup, 1)):
        bench.step()
    synchronize(bench.device)
    t0 = time.perf_counter()
    for i in range(cfg.loop_steps):
        out = bench.step()
        if (i + 1) % 10 == 0:
            float(out.loss.detach())
    synchronize(bench.device)
    per_step = (time.perf_counter() - t0) / cfg.loop_steps
    return {"method": name, "steps": cfg.loop_steps, "seconds_per_1000_iterations": 1000 * per_step,
            "hours_for_30k": FIELD_BUDGET * per_step / 3600}


def reference_mt_section(setting, cfg: CardConfig) -> dict:
    from ssl_bench.bench import reference_mt

    rep = reference_mt.run(setting.image_size, setting.labeled_bs, setting.unlabeled_bs, setting.device,
                           steps=cfg.steps, warmup=cfg.warmup, workers=cfg.workers, amp=setting.amp,
                           channels_last=setting.channels_last, out_dir=None)
    return {k: rep[k] for k in ("reference_median_s", "ssl_bench_median_s", "speedup")}


def _tag(device) -> str:
    from ssl_bench.bench import device_tag

    return device_tag(device)


def plan(cfg: CardConfig) -> list[Section]:
    from ssl_bench.bench.steps import Setting

    base = Setting(cfg.image_size, cfg.labeled_bs, cfg.unlabeled_bs, device=cfg.device)
    fast = replace(base, amp=True, channels_last=True)
    sections = [Section("env", "env", lambda: {"env": figure_env(cfg.device)})]

    def steps(label, setting, kind="steps"):
        return [Section(f"steps {label}: {m}", kind, lambda m=m: steps_section(m, setting, cfg)) for m in cfg.methods]

    sections += steps("bf16+cl", fast)
    sections += [Section(f"loop bf16+cl: {m}", "loop", lambda m=m: loop_section(m, fast, cfg))
                 for m in ("unet-l", "mt") if cfg.loop_steps > 0]
    sections += steps("fp32", base)
    if cfg.workers >= 0:
        sections.append(Section("reference-mt bf16+cl", "reference-mt", lambda: reference_mt_section(fast, cfg)))
    if cfg.compile:
        sections += steps("bf16+cl+compile", replace(fast, compile=True), kind="compile")
    return sections


# -- the runner ----------------------------------------------------------------------------------
class _Alarm:
    """Raise ``BudgetSpent`` in the main thread after ``seconds`` (no-op off the main thread or
    without SIGALRM)."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.active = hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()

    def __enter__(self):
        if self.active:
            def cut(signum, frame):
                raise BudgetSpent
            self.previous = signal.signal(signal.SIGALRM, cut)
            signal.setitimer(signal.ITIMER_REAL, max(self.seconds, 0.01))
        return self

    def __exit__(self, *exc):
        if self.active:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, self.previous)


def _append(path: Path, text: str) -> None:
    with open(path, "a") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def _md(record: dict) -> str:
    title, status = record["section"], record["status"]
    if status != "ok":
        return f"- **{title}**: {status}" + (f" ({record['reason']})" if record.get("reason") else "") + "\n"
    r, env = record["result"], record.get("env", {})
    flags = f"{env.get('device')}, torch {env.get('torch')}, CUDA {env.get('cuda')}, amp {env.get('amp_dtype')}, " \
            f"channels_last {env.get('channels_last')}, compile {env.get('compile')}"
    if "rows" in r:
        lines = []
        for row in r["rows"]:
            peak = row["peak_mem_mb"]
            comp = (f", compiled {row['compiled']}, {row['graphs']} graph(s), fallback {row['fallback']}"
                    if "compiled" in row else "")
            lines.append(f"- {title} ({row['stage']}): {row['median_step_s'] * 1000:.2f} ms/step, "
                         f"**{row['ratio_to_unet_l']:.2f} x** UNet-L, peak {peak:.0f} MiB{comp} [{flags}; "
                         f"{record['seconds']:.1f} s]\n")
        return "".join(lines)
    if "seconds_per_1000_iterations" in r:
        return (f"- {title}: **{r['seconds_per_1000_iterations']:.1f} s per 1000 iterations**, "
                f"{r['hours_for_30k']:.2f} h for 30k (training steps only) [{flags}]\n")
    if "speedup" in r:
        return (f"- {title}: plain reference {r['reference_median_s'] * 1000:.2f} ms, ssl-bench MT "
                f"{r['ssl_bench_median_s'] * 1000:.2f} ms: **{r['speedup']:.2f} x** [{flags}]\n")
    return f"- {title}: {json.dumps(r)}\n"


def run(cfg: CardConfig, progress=print) -> dict:
    """Run the plan under the budget, appending every section's record as it ends; returns the
    records. Raises ``ValueError`` only for bad input (before anything runs)."""
    import torch

    from ssl_bench.bench import check_device, machine
    from ssl_bench.engine import seed_everything

    if not cfg.budget_s > 0:
        raise ValueError(f"--budget-s {cfg.budget_s}: give the seconds the card may use (e.g. 300)")
    check_device(cfg.device)
    start = time.monotonic()
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    jsonl, md = out / "card.jsonl", out / "card.md"
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    seed_everything(0, deterministic=True)  # the training runs' cuDNN flags (review C6)
    sections = plan(cfg)
    head = {"section": "plan", "status": "ok", **machine(), "budget_s": cfg.budget_s,
            "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()},
            "sections": [s.title for s in sections]}
    _append(jsonl, json.dumps(head) + "\n")
    _append(md, f"# Benchmark card ({head['measured_at']}, {head['machine']}, budget {cfg.budget_s:.0f} s)\n\n"
                f"{cfg.image_size} x {cfg.image_size}, {cfg.labeled_bs} + {cfg.unlabeled_bs} slices; "
                f"planned: {', '.join(s.title for s in sections)}\n\n")
    records, took = [], {}
    for section in sections:
        left = cfg.budget_s - (time.monotonic() - start)
        estimate = took.get(section.kind, ESTIMATE_S.get(section.kind, 10.0))
        record = {"section": section.title, "kind": section.kind}
        if left < estimate:
            record.update(status="skipped", reason=f"{max(left, 0):.0f} s of the budget left, estimated {estimate:.0f} s")
        else:
            progress(f"[card] {section.title} ({left:.0f} s left)")
            t0 = time.monotonic()
            try:
                with _Alarm(left):
                    result = section.run()
                record.update(status="ok", result=result)
            except BudgetSpent:
                record.update(status="cut", reason=f"the budget ran out after {time.monotonic() - t0:.0f} s")
            except Exception as exc:  # noqa: BLE001  (one section's failure must not lose the others)
                record.update(status="error", reason=f"{type(exc).__name__}: {str(exc)[:300]}",
                              traceback=traceback.format_exc()[-2000:])
            record["seconds"] = time.monotonic() - t0
            took[section.kind] = record["seconds"]
            record["env"] = _section_env(section, cfg)
        records.append(record)
        _append(jsonl, json.dumps(record, default=str) + "\n")
        _append(md, _md(record))
        if record["status"] == "ok" and "rows" in record["result"]:
            from ssl_bench.bench.steps import merge_csv

            merge_csv(out / f"{_tag(cfg.device)}.csv", record["result"]["rows"])
    skipped = [r["section"] for r in records if r["status"] in ("skipped", "cut")]
    failed = [r["section"] for r in records if r["status"] == "error"]
    tail = {"section": "end", "status": "ok", "seconds": time.monotonic() - start, "skipped": skipped,
            "failed": failed}
    _append(jsonl, json.dumps(tail) + "\n")
    _append(md, f"\n{len(records) - len(skipped) - len(failed)} section(s) done in {tail['seconds']:.0f} s; "
                f"skipped: {', '.join(skipped) or 'none'}; failed: {', '.join(failed) or 'none'}\n")
    return {"records": records, "skipped": skipped, "failed": failed, "jsonl": jsonl, "md": md}


def _section_env(section: Section, cfg: CardConfig) -> dict:
    label = section.title.split(":")[0]
    return figure_env(cfg.device, amp="bf16" in label, channels_last="+cl" in label,
                      compile=section.kind == "compile")


def parse(argv: list[str] | None = None) -> CardConfig:
    p = argparse.ArgumentParser(prog="python -m ssl_bench.bench.card", description=__doc__.split("\n\n")[0])
    p.add_argument("--out-dir", required=True, type=Path, help="the folder that comes back ($OUT on the GPU host)")
    p.add_argument("--budget-s", type=float, default=300.0, help="seconds the card may use (default 300)")
    p.add_argument("--device", default="cuda")
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--labeled-bs", type=int, default=12)
    p.add_argument("--unlabeled-bs", type=int, default=12)
    p.add_argument("--method", action="append", default=None, help="name or name:stage (repeatable; "
                   f"default {', '.join(DEFAULT_METHODS)})")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--loop-steps", type=int, default=300)
    p.add_argument("--workers", type=int, default=4, help="reference MT loader processes (-1: skip it)")
    p.add_argument("--no-compile", action="store_true")
    p.add_argument("--threads", type=int, default=0)
    a = p.parse_args(argv)
    return CardConfig(a.out_dir, a.budget_s, a.device, a.image_size, a.labeled_bs, a.unlabeled_bs,
                      tuple(a.method or DEFAULT_METHODS), a.steps, a.warmup, a.loop_steps, a.workers,
                      not a.no_compile, a.threads)


def main(argv: list[str] | None = None) -> int:
    cfg = parse(argv)
    try:
        rep = run(cfg, progress=lambda text: print(text, flush=True))
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"card: {len(rep['records']) - len(rep['skipped']) - len(rep['failed'])} section(s) done, skipped "
          f"{len(rep['skipped'])}, failed {len(rep['failed'])}; {rep['jsonl']} and {rep['md']}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
