"""Seconds per training iteration of every method, at a given image size and batch.

A benchmark, not a test: ``ssl-bench bench steps`` writes ``results/bench/steps_<device>.json``
and ``.md``. Each method runs ``warmup`` + ``steps`` iterations of its every stage on random
slices through the same code path as the loop (training_step, backward, SGD, EMA hook).
"""
from __future__ import annotations

import json
import platform
import time
from pathlib import Path

import torch

from ssl_bench.augment import Augmenter
from ssl_bench.datasets.base import atomic_write_text
from ssl_bench.registry import get_method_class, list_methods


def _batch(n_lb, n_ulb, size, num_classes, device, g):
    from ssl_bench.methods.base import Batch

    x_lb = torch.rand(n_lb, 1, size, size, generator=g)
    y = torch.randint(0, num_classes, (n_lb, size // 8, size // 8), generator=g)
    y = torch.nn.functional.interpolate(y[:, None].float(), size=(size, size), mode="nearest")[:, 0].long()
    x_u = torch.rand(n_ulb, 1, size, size, generator=g)
    xw, xs = Augmenter().pair(x_u, g)
    t = lambda v: v.to(device)  # noqa: E731
    return Batch(x_lb=t(x_lb), y_lb=t(y), x_ulb=t(xw), x_ulb_strong=t(xs), x_ulb_raw=t(x_u),
                 x_lb_raw=t(x_lb), y_lb_raw=t(y), pos_lb=t(torch.rand(n_lb)), pos_ulb=t(torch.rand(n_ulb)),
                 case_lb=t(torch.arange(n_lb)), case_ulb=t(torch.arange(n_ulb) + n_lb))


def time_method(name: str, size: int, n_lb: int, n_ulb: int, steps: int, warmup: int, device,
                num_classes: int = 4) -> dict:
    from ssl_bench.methods.base import MethodContext

    cls = get_method_class(name)
    ctx = MethodContext(num_classes=num_classes, image_size=size, total_iterations=100,
                        generator=torch.Generator().manual_seed(0))
    method = cls(cls.Config(), ctx).to(device)
    g = torch.Generator().manual_seed(0)
    batch = _batch(n_lb, n_ulb, size, num_classes, device, g)
    per_stage = {}
    for stage in method.stages():
        method.set_stage(stage.name)
        method.train(True)
        opt = torch.optim.SGD(method.trainable_parameters(), lr=1e-3, momentum=0.9)
        aux = {k: method.make_aux_optimizer(k, v) for k, v in method.aux_parameters().items()}
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        for i in range(warmup + steps):
            if i == warmup:
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                t0 = time.perf_counter()
            out = method.training_step(batch, 50)
            opt.zero_grad(set_to_none=True)
            out.loss.backward(retain_graph=bool(out.aux_losses))
            opt.step()
            for k, loss in out.aux_losses.items():
                aux[k].zero_grad(set_to_none=True)
                loss.backward()
                aux[k].step()
            method.after_optimizer_step(i)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        rec = {"fraction": stage.fraction, "seconds_per_step": (time.perf_counter() - t0) / steps}
        if device.type == "cuda":
            rec["peak_memory_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
        per_stage[stage.name] = rec
    total_fr = sum(s["fraction"] for s in per_stage.values())
    avg = sum(s["fraction"] * s["seconds_per_step"] for s in per_stage.values()) / total_fr
    return {"method": name, "stages": per_stage, "seconds_per_step": avg}


def run(methods: list[str] | None = None, size: int = 112, labeled_bs: int = 12, unlabeled_bs: int = 12,
        steps: int = 3, warmup: int = 1, device: str = "cpu", out_dir: Path = Path("results/bench"),
        progress=None) -> dict:
    dev = torch.device(device)
    names = methods or list_methods()
    rows = []
    for name in names:
        rows.append(time_method(name, size, labeled_bs, unlabeled_bs, steps, warmup, dev))
        if progress:
            progress(rows[-1])
    report = {"device": device if dev.type == "cpu" else torch.cuda.get_device_name(dev),
              "cpu": platform.processor() or platform.machine(), "torch_threads": torch.get_num_threads(),
              "image_size": size, "labeled_bs": labeled_bs, "unlabeled_bs": unlabeled_bs,
              "steps": steps, "warmup": warmup, "methods": rows}
    out_dir = Path(out_dir)
    stem = f"steps_{dev.type}_{size}px"
    atomic_write_text(out_dir / f"{stem}.json", json.dumps(report, indent=2))
    lines = [f"# Seconds per training iteration ({report['device']}, {size}x{size}, "
             f"{labeled_bs}+{unlabeled_bs} slices, {report['torch_threads']} threads)", "",
             "| method | s/iteration (budget-weighted over stages) | per stage |", "|---|---|---|"]
    for r in sorted(rows, key=lambda r: r["seconds_per_step"]):
        per = ", ".join(f"{k}: {v['seconds_per_step']:.2f}" for k, v in r["stages"].items())
        lines.append(f"| {r['method']} | {r['seconds_per_step']:.2f} | {per} |")
    atomic_write_text(out_dir / f"{stem}.md", "\n".join(lines) + "\n")
    return report
