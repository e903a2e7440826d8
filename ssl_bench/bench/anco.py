"""What AnCo costs: peak memory and time of one ACTION stage-iii training step with AnCo
(ablation ``none``) against the same step without it (ablation ``no-anco``).

The step is the real one: ``Action.training_step`` in stage iii (student on labeled + strong
unlabeled views, teacher pseudo-labels, pseudo-label CE, and for ``none`` the H_r head and
AnCo's sampled queries/keys), then backward, an SGD step over ``trainable_parameters()`` and the
EMA update. Input: ``batch_size`` labeled and ``batch_size`` unlabeled synthetic slices of
``image_size`` x ``image_size`` with 4 classes (nested blocks, so every class is present).

Memory: each variant runs ``MEMORY_STEPS`` steps in a fresh Python process, so one variant's
allocations cannot hide the other's.

* CUDA: ``torch.cuda.max_memory_allocated`` (the tensors PyTorch holds: weights, gradients,
  optimiser state, activations), and the same minus the memory allocated before the first step
  (the step's own peak).
* CPU: the process's peak resident set size (``resource.getrusage(...).ru_maxrss``), and the
  same minus the resident size just before the first step (``/proc/self/statm``): the step's own
  peak, which leaves out the interpreter, the torch libraries and the weights that both variants
  share. The worker runs with ``MALLOC_MMAP_THRESHOLD_=65536`` so that every tensor buffer is its
  own mmap, returned to the system when freed: the resident size then follows the live tensors
  and the peak repeats to the MiB from run to run (with glibc's default dynamic threshold, freed
  buffers stay in the heap and the peak varies by +-100 MiB between identical runs, more than
  AnCo's cost). tracemalloc does not see torch's allocations.

Time: both variants in one process with the default allocator, their steps interleaved (order
alternating), so that load from other processes on a shared machine falls on both alike; the
mean of the steps after each variant's first, as wall time and as process CPU time
(``time.process_time``, all threads), which other processes' load disturbs less. Timings on a
shared machine are indicative only.

``run`` writes ``anco_<device>.json`` and ``anco_<device>.md`` under ``out_dir``, atomically.
"""
from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

VARIANTS = {"with_anco": "none", "without_anco": "no-anco"}
MEMORY_STEPS = 2  # gradients and momentum buffers exist from the first step on; the peak is reached by then


def _synthetic_batch(n: int, size: int, seed: int):
    import torch

    from ssl_bench.methods.base import Batch

    g = torch.Generator().manual_seed(seed)

    def images_and_labels():
        y = torch.zeros(n, size, size, dtype=torch.long)
        for c, margin in enumerate((size // 8, size // 4, 3 * size // 8), start=1):
            y[:, margin: size - margin, margin: size - margin] = c  # nested squares: classes 1, 2, 3
        x = y.float() / 3 + 0.1 * torch.randn(n, size, size, generator=g)
        return x.unsqueeze(1), y

    x_lb, y_lb = images_and_labels()
    x_u, _ = images_and_labels()
    from ssl_bench.augment import Augmenter

    x_w, x_s = Augmenter().pair(x_u, g)
    return Batch(x_lb=x_lb, y_lb=y_lb, x_ulb=x_w, x_ulb_strong=x_s, x_ulb_raw=x_u)


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _build(ablation: str, image_size: int, batch_size: int, dev):
    import torch

    from ssl_bench.config import apply_overrides
    from ssl_bench.methods.base import MethodContext
    from ssl_bench.registry import get_method_class

    torch.manual_seed(0)
    cls = get_method_class("action")
    cfg = apply_overrides(cls.Config(), {"ablation": ablation})
    ctx = MethodContext(num_classes=4, image_size=image_size, total_iterations=100,
                        generator=torch.Generator().manual_seed(0))
    method = cls(cfg, ctx).to(dev)
    method.set_stage("iii")
    method.train(True)
    opt = torch.optim.SGD(method.trainable_parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    b = _synthetic_batch(batch_size, image_size, seed=0)
    batch = type(b)(**{k: (v.to(dev) if torch.is_tensor(v) else v) for k, v in vars(b).items()})
    return method, opt, batch


def _train_step(method, opt, batch, step: int, dev) -> tuple[float, float, dict]:
    """One training step; returns (wall seconds, process CPU seconds, logged terms)."""
    import torch

    t0, c0 = time.perf_counter(), time.process_time()
    out = method.training_step(batch, step)
    opt.zero_grad(set_to_none=True)
    out.loss.backward()
    opt.step()
    method.after_optimizer_step(step)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    return time.perf_counter() - t0, time.process_time() - c0, {k: float(v) for k, v in out.terms.items()}


def _memory_worker(ablation: str, image_size: int, batch_size: int, steps: int, device: str,
                   threads: int) -> dict:
    """Peak memory of one variant (run in a fresh process)."""
    import torch

    if threads > 0:
        torch.set_num_threads(threads)
    dev = torch.device(device)
    method, opt, batch = _build(ablation, image_size, batch_size, dev)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        before = torch.cuda.memory_allocated(dev)
    else:
        before = _rss_bytes()
    terms = {}
    for step in range(steps):
        _, _, terms = _train_step(method, opt, batch, step, dev)
    if dev.type == "cuda":
        peak = torch.cuda.max_memory_allocated(dev)
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    return {"ablation": ablation, "peak_bytes": peak, "before_step_bytes": before,
            "step_peak_bytes": peak - before, "last_terms": terms,
            "trainable_parameters": sum(p.numel() for p in opt.param_groups[0]["params"]),
            "threads": torch.get_num_threads(), "torch": torch.__version__}


def _time_worker(image_size: int, batch_size: int, steps: int, device: str, threads: int) -> dict:
    """Both variants in one process, steps interleaved (order alternating), so that load from
    other processes on a shared machine falls on both alike. The first step of each is not timed."""
    import torch

    if threads > 0:
        torch.set_num_threads(threads)
    dev = torch.device(device)
    built = {name: _build(abl, image_size, batch_size, dev) for name, abl in VARIANTS.items()}
    wall: dict[str, list[float]] = {name: [] for name in VARIANTS}
    cpu: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for step in range(steps):
        order = list(VARIANTS) if step % 2 == 0 else list(VARIANTS)[::-1]
        for name in order:
            w, c, _ = _train_step(*built[name], step, dev)
            wall[name].append(w)
            cpu[name].append(c)
    mean = lambda xs: sum(xs[1:]) / len(xs[1:])  # noqa: E731  (the first step is not timed)
    return {name: {"step_seconds": wall[name], "seconds_per_step": mean(wall[name]),
                   "step_cpu_seconds": cpu[name], "cpu_seconds_per_step": mean(cpu[name])}
            for name in VARIANTS}


def _in_subprocess(mode: str, **kwargs) -> dict:
    # -P: do not put the working directory on sys.path (its datasets/ folder would shadow the package)
    # every allocation >= 64 KiB is its own mmap, returned to the system when freed: the resident
    # size then follows the live tensors instead of glibc's heap high-water mark
    # (memory runs only: it slows allocation down, so time runs keep the default allocator)
    env = {**os.environ, **({"MALLOC_MMAP_THRESHOLD_": "65536"} if mode == "memory" else {})}
    proc = subprocess.run([sys.executable, "-P", "-m", "ssl_bench.bench.anco", json.dumps({"mode": mode, **kwargs})],
                          capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"bench worker ({mode} {kwargs}) failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _mib(n: float) -> str:
    return f"{n / 2 ** 20:,.0f}"


def _markdown(rep: dict) -> str:
    w, wo = rep["variants"]["with_anco"], rep["variants"]["without_anco"]
    o = rep["overhead"]
    s = rep["setting"]
    mem = "CUDA max_memory_allocated" if s["device"].startswith("cuda") else "peak RSS (ru_maxrss)"
    lines = [
        f"# AnCo cost: ACTION stage-iii step with vs without AnCo ({s['device']})", "",
        f"{s['batch_size']} labeled + {s['batch_size']} unlabeled slices of {s['image_size']}x{s['image_size']}, "
        f"4 classes. Memory: {mem} over {s['memory_steps']} steps, each variant in a fresh process. "
        f"Time: {s['steps']} interleaved steps per variant in one process, mean of steps 2..{s['steps']}. "
        f"Measured {rep['measured_at']} on "
        f"{rep['machine']} ({w['threads']} threads, torch {w['torch']}).", "",
        "| variant | peak memory (MiB) | step's own peak (MiB) | wall time per step (s) | "
        "process CPU time per step (s) |",
        "|---|---:|---:|---:|---:|",
        f"| without AnCo (`no-anco`) | {_mib(wo['peak_bytes'])} | {_mib(wo['step_peak_bytes'])} | "
        f"{wo['seconds_per_step']:.2f} | {wo['cpu_seconds_per_step']:.2f} |",
        f"| with AnCo (`none`) | {_mib(w['peak_bytes'])} | {_mib(w['step_peak_bytes'])} | "
        f"{w['seconds_per_step']:.2f} | {w['cpu_seconds_per_step']:.2f} |",
        f"| **AnCo adds** | **{o['peak_memory_pct']:+.1f}%** | **{o['step_memory_pct']:+.1f}%** | "
        f"**{o['time_pct']:+.1f}%** | **{o['cpu_time_pct']:+.1f}%** |", "",
        f"Goal: AnCo adds at most 30% memory -> {'met' if o['meets_30pct_goal'] else 'NOT met'} "
        f"(judged on the step's own peak, the stricter of the two memory figures).", "",
        "The step's own peak is the peak minus the memory held just before the first step "
        "(weights, batch, and on CPU the interpreter and libraries). Wall times on a shared machine "
        "swing with other processes' load; the process CPU time (all threads of the process) is "
        "less sensitive to it. Both are indicative only.", "",
    ]
    return "\n".join(lines)


def run(image_size: int = 256, batch_size: int = 6, steps: int = 4, device: str = "cpu",
        out_dir: str | Path = "results/bench", threads: int = 0) -> dict:
    """Measure both variants, write ``anco_<device>.json`` and ``.md`` to ``out_dir``; return the report."""
    if steps < 2:
        raise ValueError(f"bench anco: steps={steps}; use at least 2 (the first step is not timed)")
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise ValueError("bench anco: device=cuda but CUDA is not available here; use --device cpu")
    common = dict(image_size=image_size, batch_size=batch_size, device=device, threads=threads)
    variants = {name: _in_subprocess("memory", ablation=abl, steps=MEMORY_STEPS, **common)
                for name, abl in VARIANTS.items()}
    for name, timing in _in_subprocess("time", steps=steps, **common).items():
        variants[name].update(timing)
    w, wo = variants["with_anco"], variants["without_anco"]
    pct = lambda a, b: 100.0 * (a - b) / b  # noqa: E731
    overhead = {"peak_memory_pct": pct(w["peak_bytes"], wo["peak_bytes"]),
                "step_memory_pct": pct(w["step_peak_bytes"], wo["step_peak_bytes"]),
                "time_pct": pct(w["seconds_per_step"], wo["seconds_per_step"]),
                "cpu_time_pct": pct(w["cpu_seconds_per_step"], wo["cpu_seconds_per_step"])}
    overhead["meets_30pct_goal"] = max(overhead["peak_memory_pct"], overhead["step_memory_pct"]) <= 30.0
    report = {"benchmark": "anco", "setting": {"image_size": image_size, "batch_size": batch_size,
                                               "steps": steps, "memory_steps": MEMORY_STEPS,
                                               "device": device},
              "memory_method": "cuda max_memory_allocated" if device.startswith("cuda")
              else "ru_maxrss peak RSS, fresh process per variant, MALLOC_MMAP_THRESHOLD_=65536",
              "measured_at": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
              "machine": f"{platform.machine()} {platform.system()}, {os.cpu_count()} CPUs",
              "variants": variants, "overhead": overhead}
    # imported here, not at the top: the measuring worker processes import this module too
    from ssl_bench.datasets.base import atomic_write_text

    out = Path(out_dir)
    tag = device.split(":")[0]
    atomic_write_text(out / f"anco_{tag}.json", json.dumps(report, indent=2) + "\n")
    atomic_write_text(out / f"anco_{tag}.md", _markdown(report))
    return report


if __name__ == "__main__":  # worker: python -P -m ssl_bench.bench.anco '{"mode": "memory", ...}'
    _args = json.loads(sys.argv[1])
    _worker = {"memory": _memory_worker, "time": _time_worker}[_args.pop("mode")]
    print(json.dumps(_worker(**_args)))
