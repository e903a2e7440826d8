"""What a run cost: wall time per stage, device-hours, peak GPU memory and peak host RSS.

The engine keeps one ``CostMeter`` per run. Stage times add up over resumes (the meter's
snapshot travels in ``checkpoints/latest.pt``; the work lost between the last checkpoint and a
kill is not counted, it is redone and counted then). Peaks are the maximum over every process
that worked on the run. The summary is the ``cost`` member of ``metrics.json``:

``device``                 ``cpu`` or ``cuda:<i> (<GPU name>)``
``stage_seconds``          wall seconds of each stage (validation and checkpoints included)
``train_seconds``          their sum; ``test_seconds``: the final test of both checkpoints
``seconds_per_iteration``  ``train_seconds / iterations``, at ``image_size`` and
                           ``labeled_bs + unlabeled_bs`` slices: what sweep estimates read
``device_hours``           ``(train_seconds + test_seconds) / 3600`` on one device (a CPU slot
                           on a CPU-only machine)
``peak_gpu_allocated_mb``, ``peak_gpu_reserved_mb``   ``torch.cuda.max_memory_allocated`` /
                           ``max_memory_reserved`` in MiB (CUDA only, else null)
``peak_host_rss_mb``       the peak resident size in MiB (``VmHWM``, else ``ru_maxrss``)

The peaks are reset when the meter is made (``reset_peaks``), so each counts this run only.

In MLflow they are the metrics ``cost/<key>`` and ``cost/stage_seconds/<stage>``
(``ssl_bench.run_index.cost_metrics``), beside the test metrics.
"""
from __future__ import annotations

import resource
import sys
import time
from typing import Any

import torch


def device_name(device: torch.device) -> str:
    """``cpu``, or ``cuda:<i> (<GPU name>)``: what a cost was measured on."""
    if device.type != "cuda":
        return device.type
    index = device.index if device.index is not None else torch.cuda.current_device()
    return f"cuda:{index} ({torch.cuda.get_device_name(index)})"


def host_rss_mb() -> float:
    """Peak resident memory of this process in MiB since the last ``reset_peaks``: Linux's
    ``VmHWM``, else ``ru_maxrss`` (the process's lifetime peak; KiB on Linux, bytes on macOS)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def reset_peaks(device: torch.device) -> None:
    """Start the peaks afresh: CUDA's peak-memory statistics of ``device`` and (Linux) the peak
    resident size, so that a run or a bench section reports its own peak, not an earlier one of
    the same process (a card's step bench before its training runs)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current resident size
    except OSError:
        pass


def _max(a: float | None, b: float | None) -> float | None:
    values = [v for v in (a, b) if v is not None]
    return max(values) if values else None


class CostMeter:
    """Accumulates stage wall times and memory peaks of one run, across resumes."""

    def __init__(self, device: torch.device, saved: dict | None = None):
        saved = saved or {}
        self.device = device
        self.stage_seconds: dict[str, float] = dict(saved.get("stage_seconds", {}))
        self._saved_peaks = {k: saved.get(k) for k in ("peak_gpu_allocated_mb", "peak_gpu_reserved_mb",
                                                       "peak_host_rss_mb")}
        self._stage: str | None = None
        self._t0 = 0.0
        reset_peaks(device)  # this attempt's peaks; earlier attempts' come from ``saved``

    def start_stage(self, name: str) -> None:
        self._stage, self._t0 = name, time.perf_counter()

    def end_stage(self) -> float:
        """Close the running stage; its total seconds over every attempt."""
        name = self._stage
        self.stage_seconds[name] = self._running_total(name)
        self._stage = None
        return self.stage_seconds[name]

    def _running_total(self, name: str) -> float:
        return self.stage_seconds.get(name, 0.0) + time.perf_counter() - self._t0

    def peaks(self) -> dict[str, float | None]:
        gpu_alloc = gpu_reserved = None
        if self.device.type == "cuda":
            gpu_alloc = torch.cuda.max_memory_allocated(self.device) / 2**20
            gpu_reserved = torch.cuda.max_memory_reserved(self.device) / 2**20
        return {"peak_gpu_allocated_mb": _max(self._saved_peaks["peak_gpu_allocated_mb"], gpu_alloc),
                "peak_gpu_reserved_mb": _max(self._saved_peaks["peak_gpu_reserved_mb"], gpu_reserved),
                "peak_host_rss_mb": _max(self._saved_peaks["peak_host_rss_mb"], host_rss_mb())}

    def snapshot(self) -> dict[str, Any]:
        """What a checkpoint keeps (the running stage counted up to now)."""
        stages = dict(self.stage_seconds)
        if self._stage is not None:
            stages[self._stage] = self._running_total(self._stage)
        return {"stage_seconds": stages, **self.peaks()}

    def summary(self, iterations: int, image_size: int, labeled_bs: int, unlabeled_bs: int,
                test_seconds: float) -> dict[str, Any]:
        """The ``cost`` member of metrics.json (see the module docstring)."""
        snap = self.snapshot()
        train = sum(snap["stage_seconds"].values())
        return {"device": device_name(self.device), **snap, "train_seconds": train, "test_seconds": test_seconds,
                "seconds_per_iteration": train / max(iterations, 1), "device_hours": (train + test_seconds) / 3600,
                "iterations": iterations, "image_size": image_size, "labeled_bs": labeled_bs,
                "unlabeled_bs": unlabeled_bs}
