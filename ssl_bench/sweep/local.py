"""The local executor: one process per slot on this machine.

A slot is a GPU (``CUDA_VISIBLE_DEVICES`` set to its one id, mapped through the one this process
inherited, so a job sees only its own device; ``jobs_per_gpu`` slots per GPU; a job of a GPU slot
that sees no GPU fails at once, naming its slot) or, without GPUs, one CPU core (one thread per job: on a
2-core machine two 1-thread jobs were ~10x faster than one 2-thread job fighting for a busy
core). A slot runs one job at a time, so a device is never given more jobs than its slots.

Jobs start in the plan's order (longest first). While they run, a live table shows each job's
state and progress (on a terminal; elsewhere a line per start and end). Ctrl-C (or SIGTERM)
stops every child: each gets SIGINT, records its run as interrupted and keeps its last
checkpoint; running the same sweep again resumes them. Each job's output goes to its log in
the sweep folder.
"""
from __future__ import annotations

import os
import signal
import socket
import threading
import time
from dataclasses import dataclass, field

from ssl_bench.sweep import process
from ssl_bench.sweep.manifest import Manifest
from ssl_bench.sweep.status import job_status, render


class SweepInterrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM: the running jobs were stopped (resumable)."""


@dataclass
class Slot:
    name: str  # "gpu 0", "gpu 0 #2", "cpu 1"
    env: dict[str, str] = field(default_factory=dict)


GPU_SLOT_VAR = "SSL_BENCH_GPU_SLOT"  # set in a GPU slot's jobs: a job there that sees no GPU fails (engine)


def visible_gpus(ids: list[str], inherited: str | None = None) -> list[str]:
    """The ``CUDA_VISIBLE_DEVICES`` value of each GPU id of ``--gpus``. The ids count the GPUs this
    process sees (as ``nvidia-smi`` does when nothing restricts it, and as torch does), so under an
    inherited ``CUDA_VISIBLE_DEVICES=3,5`` (Slurm, a cgroup, a user's shell) ids 0,1 are GPUs 3 and
    5 (UUIDs and MIG names pass through the same way). ``inherited``: default this process's
    environment; unset means every GPU is visible and an id is itself."""
    inherited = os.environ.get("CUDA_VISIBLE_DEVICES") if inherited is None else inherited
    if inherited is None:
        return list(ids)
    parent = [d.strip() for d in inherited.split(",") if d.strip()]
    out = []
    for g in ids:
        if not g.isdigit() or int(g) >= len(parent):
            seen = ", ".join(f"{i}={d}" for i, d in enumerate(parent)) or "none"
            raise ValueError(f"--gpus {','.join(ids)}: GPU id {g} is not among the {len(parent)} GPU(s) this "
                             f"shell sees (CUDA_VISIBLE_DEVICES={inherited!r}: ids {seen}); give ids from 0 to "
                             f"{len(parent) - 1}" if parent else
                             f"--gpus {','.join(ids)}: CUDA_VISIBLE_DEVICES={inherited!r} hides every GPU from "
                             "this shell; unset it or run with --gpus none")
        out.append(parent[int(g)])
    return out


def gpu_slots(gpus: list[str], jobs_per_gpu: int = 1, cpu_count: int | None = None,
              inherited: str | None = None) -> list[Slot]:
    """``jobs_per_gpu`` slots per GPU id (mapped through the inherited ``CUDA_VISIBLE_DEVICES``:
    ``visible_gpus``), interleaved so that the first jobs spread over the GPUs; the CPU cores are
    shared among the slots (``OMP_NUM_THREADS``). Each slot's jobs are told they run on a GPU slot
    (``SSL_BENCH_GPU_SLOT``), so one that sees no GPU stops at once instead of training on the CPU."""
    if jobs_per_gpu < 1:
        raise ValueError(f"--jobs-per-gpu {jobs_per_gpu}: give at least 1")
    physical = visible_gpus(gpus, inherited)
    n = len(gpus) * jobs_per_gpu
    threads = str(max(1, (cpu_count or os.cpu_count() or 1) // n))
    slots = []
    for k in range(jobs_per_gpu):
        for g, p in zip(gpus, physical):
            name = f"gpu {g}" + (f" (CUDA_VISIBLE_DEVICES={p})" if p != g else "") + (f" #{k + 1}" if jobs_per_gpu > 1 else "")
            slots.append(Slot(name, {"CUDA_VISIBLE_DEVICES": p, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads,
                                     GPU_SLOT_VAR: name}))
    return slots


def cpu_slots(n: int) -> list[Slot]:
    """``n`` one-thread CPU slots; GPUs are hidden from their jobs."""
    if n < 1:
        raise ValueError(f"--jobs {n}: give at least 1")
    return [Slot(f"cpu {i}", {"CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})
            for i in range(n)]


def make_slots(gpus: str | None, jobs_per_gpu: int = 1, cpu_jobs: int = 0) -> tuple[list[Slot], str]:
    """Slots from the CLI's ``--gpus`` (``0,1``; ``none`` for CPU slots; default: every visible
    GPU) and ``--jobs`` (CPU slots; default one per core). Returns (slots, "cuda" or "cpu")."""
    if gpus is None:
        import torch

        ids = [str(i) for i in range(torch.cuda.device_count())]
    elif gpus.strip().lower() == "none":
        ids = []
    else:
        ids = [g.strip() for g in gpus.split(",") if g.strip()]
        if not ids:
            raise ValueError(f"--gpus {gpus!r}: give GPU ids such as 0,1 (or none for CPU slots)")
    if ids:
        if cpu_jobs:
            raise ValueError("--jobs sets CPU slots; with GPUs use --jobs-per-gpu")
        return gpu_slots(ids, jobs_per_gpu), "cuda"
    return cpu_slots(cpu_jobs or os.cpu_count() or 1), "cpu"


def run_local(manifest: Manifest, names: list[str], slots: list[Slot], console=None, poll_s: float = 0.5,
              grace_s: float = 30.0) -> dict[str, int]:
    """Run the manifest's jobs ``names`` (in that order) through ``slots``; returns their exit
    codes. Raises ``SweepInterrupted`` after stopping every child on Ctrl-C or SIGTERM."""
    pending = list(names)
    free = list(slots)
    running: dict[str, tuple[process.subprocess.Popen, Slot, object]] = {}
    codes: dict[str, int] = {}
    view = _View(manifest, names, console)
    host = socket.gethostname()
    restore = _sigterm_as_interrupt()
    try:
        with view:
            while pending or running:
                while pending and free:
                    name, slot = pending.pop(0), free.pop(0)
                    entry = manifest.job(name)
                    os.makedirs(os.path.dirname(entry["log"]), exist_ok=True)
                    log = open(entry["log"], "a", buffering=1)
                    proc = process.start(entry["argv"], {**os.environ, **slot.env}, log)
                    running[name] = (proc, slot, log)
                    manifest.update(name, slot=slot.name, pid=proc.pid, host=host, started=time.time(),
                                    ended=None, exit_code=None, interrupted=False)
                    view.event(name)
                time.sleep(poll_s)
                for name, (proc, slot, log) in list(running.items()):
                    if proc.poll() is None:
                        continue
                    del running[name]
                    log.close()
                    free.append(slot)
                    codes[name] = proc.returncode
                    manifest.update(name, exit_code=proc.returncode, ended=time.time())
                    view.event(name)
                view.refresh()
    except KeyboardInterrupt:
        for name, (proc, slot, log) in running.items():
            code = process.stop(proc, grace_s)
            log.close()
            codes[name] = code
            manifest.update(name, exit_code=code, ended=time.time(), interrupted=True)
        raise SweepInterrupted(f"stopped {len(running)} running job(s); run the same sweep again to resume") from None
    finally:
        restore()
    return codes


def _sigterm_as_interrupt():
    """SIGTERM (a scheduler, `kill`) stops the sweep like Ctrl-C, and SIGINT does so even where
    the sweep was started with SIGINT ignored (a background job of a script); returns the undo."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = {signal.SIGTERM: signal.signal(signal.SIGTERM, interrupt),
                signal.SIGINT: signal.signal(signal.SIGINT, signal.default_int_handler)}
    return lambda: [signal.signal(s, h) for s, h in previous.items()]


class _View:
    """A live rich table of the jobs on a terminal; elsewhere one line per start and end."""

    def __init__(self, manifest: Manifest, names: list[str], console):
        self.manifest, self.names, self.console = manifest, names, console
        self.live = None
        if console is not None and console.is_terminal:
            from rich.live import Live

            self.live = Live(self._table(), console=console, refresh_per_second=2, transient=False)

    def _table(self):
        statuses = [job_status(self.manifest.job(n)) for n in self.names]
        return render(statuses, f"sweep {self.manifest.data['id']} ({self.manifest.folder})")

    def __enter__(self):
        if self.live is not None:
            self.live.__enter__()
        return self

    def __exit__(self, *exc):
        if self.live is not None:
            self.live.update(self._table())
            self.live.__exit__(*exc)

    def refresh(self) -> None:
        if self.live is not None:
            self.live.update(self._table())

    def event(self, name: str) -> None:
        if self.live is not None:
            return
        s = job_status(self.manifest.job(name))
        line = f"{s.state:8} {name}" + (f"  [{s.detail}]" if s.detail else "")
        if self.console is None:
            print(line, flush=True)
        else:
            self.console.print(line, highlight=False, markup=False, soft_wrap=True)
