"""``ssl-bench bench card``: every benchmark at the field's configuration on one device, one folder.

Made to be run once on a GPU (GPU time is scarce): at ``image_size`` (256) with ``labeled_bs`` +
``unlabeled_bs`` (12 + 12) slices it runs, writing everything under ``out_dir``:

1. ``steps`` for every method in float32, in bf16 AMP, and in bf16 AMP with channels_last; then
   with torch.compile added for ``compile_methods`` (compiling takes a minute per network);
2. ``reference-mt``: the plain reference Mean Teacher step (loader ``workers``, as SSL4MIS) beside
   ssl-bench's, both in float32, and ssl-bench's again in bf16 AMP + channels_last;
3. ``eval``: surface metrics vs medpy on the LiTS-size volume, and a test set scored;
4. two training runs on acdc-phantom (3 labeled patients) of ``iterations`` (3000) steps at
   ``image_size`` with ``run_options`` (bf16 AMP + channels_last): UNet-L and MT, whose
   steps per second extrapolate to the field's 30k-iteration budget;
5. ``card.md`` / ``card.json``: the device, the software, the load average, a summary of the
   above and the files that hold the rest.

On a CPU the same command runs at a tiny size (``--image-size 32 --iterations 4 ...``): the test
suite does so, so that the script works the first time it meets a GPU.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import replace
from pathlib import Path

FIELD_BUDGET = 30_000  # iterations of the field's ACDC training runs


def _training_run(method: str, out: Path, image_size: int, labeled_bs: int, unlabeled_bs: int,
                  iterations: int, device: str, options: dict[str, str]) -> dict:
    from ssl_bench import engine
    from ssl_bench.runconfig import RunSpec

    overrides = {"iterations": str(iterations), "image_size": str(image_size), "labeled_bs": str(labeled_bs),
                 "unlabeled_bs": str(unlabeled_bs), "device": device, "val_every": str(max(iterations // 15, 1)),
                 "checkpoint_every": str(max(iterations // 3, 1)), **options}
    spec = RunSpec(method=method, dataset="acdc-phantom", labeled=3, seed=0, overrides=overrides)
    prepared = engine.prepare(spec, out / "data", out / "runs")
    t0 = time.perf_counter()
    res = engine.fit(prepared, progress=False, force=True)
    wall = time.perf_counter() - t0
    train_s = 0.0
    for line in (res.run_dir / "log.jsonl").read_text().splitlines():
        train_s += sum(v for k, v in json.loads(line)["metrics"].items() if k.startswith("time/"))
    per_s = iterations / train_s
    return {"method": method, "iterations": iterations, "options": overrides, "wall_s": wall,
            "train_loop_s": train_s, "iterations_per_s": per_s,
            "hours_for_30k": FIELD_BUDGET / per_s / 3600, "test_dice_best": res.metrics["test"]["best"]["mean"]["dice"],
            "run_dir": str(res.run_dir.relative_to(out))}


def run(out_dir: Path | str, image_size: int = 256, labeled_bs: int = 12, unlabeled_bs: int = 12,
        iterations: int = 3000, device: str = "cuda", methods: list[str] | None = None,
        compile_methods: tuple[str, ...] = ("unet-l", "mt", "cps", "action"), steps: int = 20, warmup: int = 5,
        workers: int = 4, volume=(100, 512, 512), cases: int = 8, case_shape=(10, 256, 216),
        progress=print) -> dict:
    import torch

    from ssl_bench.bench import check_device, device_tag, eval as bench_eval, machine, reference_mt, steps as bench_steps
    from ssl_bench.datasets.base import atomic_write_text

    dev = check_device(device)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    before = machine()
    base = bench_steps.Setting(image_size, labeled_bs, unlabeled_bs, device=device)
    amp_cl = replace(base, amp=True, channels_last=True)
    card: dict = {"device": device_tag(dev), **before,
                  "cuda": torch.version.cuda if dev.type == "cuda" else None, "sections": {}}
    plan = [("steps float32", methods, base), ("steps bf16", methods, replace(base, amp=True)),
            ("steps bf16 channels_last", methods, amp_cl),
            ("steps bf16 channels_last compile", list(compile_methods), replace(amp_cl, compile=True))]
    for title, names, setting in plan:
        progress(f"[card] {title}")
        t0 = time.perf_counter()
        rep = bench_steps.run(names, setting, steps=steps, warmup=warmup, out_dir=out)
        card["sections"][title] = {"seconds": time.perf_counter() - t0, "goals": bench_steps.goal_lines(rep["rows"])}
    for title, setting in (("reference-mt float32", base), ("reference-mt bf16 channels_last", amp_cl)):
        progress(f"[card] {title}")
        rep = reference_mt.run(image_size, labeled_bs, unlabeled_bs, device, steps=steps, warmup=warmup,
                               workers=workers, amp=setting.amp, channels_last=setting.channels_last, out_dir=out,
                               suffix="" if setting is base else "_bf16_cl")
        card["sections"][title] = {k: rep[k] for k in ("reference_median_s", "ssl_bench_median_s", "speedup")}
    progress("[card] eval")
    rep = bench_eval.run(volume, repeats=3, cases=cases, case_shape=case_shape, image_size=image_size,
                         device=device, out_dir=out)
    card["sections"]["eval"] = {"surface_speedup": rep["surface_metrics"]["speedup"],
                                "identical": rep["surface_metrics"]["identical"], "test_set": rep["test_set"]}
    options = {"amp": "true", "channels_last": "true"}
    for method in ("unet-l", "mt"):
        progress(f"[card] training {method} for {iterations} iterations")
        card["sections"][f"train {method}"] = _training_run(method, out, image_size, labeled_bs, unlabeled_bs,
                                                             iterations, device, options)
    card["loadavg_after"] = list(os.getloadavg())
    atomic_write_text(out / "card.json", json.dumps(card, indent=2) + "\n")
    atomic_write_text(out / "card.md", _markdown(card, image_size, labeled_bs, unlabeled_bs))
    return card


def _markdown(card: dict, size: int, lb: int, ub: int) -> str:
    s = card["sections"]
    tag = card["device"]
    lines = [f"# Benchmark card: {tag}", "",
             f"`ssl-bench bench card` at {size} x {size}, {lb} + {ub} slices; measured {card['measured_at']} on "
             f"{card['machine']}, torch {card['torch']}, CUDA {card['cuda']}, load average "
             f"{card['loadavg'][0]:.2f} -> {card['loadavg_after'][0]:.2f} (1 min).", "",
             f"- step times and ratios to UNet-L: `{tag}.csv`, `{tag}.md` (float32, bf16, bf16 + channels_last, + compile)"]
    for title, sec in s.items():
        if title.startswith("steps"):
            lines += [f"  - {title}:", *[f"    {g}" for g in sec["goals"]]]
    for title in ("reference-mt float32", "reference-mt bf16 channels_last"):
        r = s[title]
        lines.append(f"- {title}: plain reference {r['reference_median_s']:.4f} s, ssl-bench MT "
                     f"{r['ssl_bench_median_s']:.4f} s: **{r['speedup']:.2f} x** (`{tag}_reference_mt*.md`)")
    e = s["eval"]
    lines.append(f"- surface metrics vs medpy: **{e['surface_speedup']:.1f} x**, identical values: "
                 f"{e['identical']} (`{tag}_eval.md`)")
    lines += ["", "| training run (acdc-phantom, 3 labeled) | iterations | it/s | hours for 30k | test Dice (best) |",
              "|---|---:|---:|---:|---:|"]
    for title, r in s.items():
        if title.startswith("train "):
            lines.append(f"| {r['method']} ({', '.join(f'{k}={v}' for k, v in r['options'].items() if k in ('amp', 'channels_last'))})"
                         f" | {r['iterations']} | {r['iterations_per_s']:.2f} | {r['hours_for_30k']:.2f} | "
                         f"{r['test_dice_best']:.3f} |")
    return "\n".join(lines) + "\n"
