"""``ssl-bench bench ...``: speed and memory benchmarks (the ``ssl_bench.bench`` package).

``ssl-bench bench`` alone runs ``steps``, ``reference-mt`` and ``eval`` at the device's default
size (CPU: 64 px, 6 + 6 slices; CUDA: the field's 256 px, 12 + 12) into ``results/bench/``.
"""
from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from ssl_bench.cli.common import console, fail, user_errors

bench_app = typer.Typer(help="Speed and memory benchmarks, written to results/bench/.", invoke_without_command=True)

OUT = typer.Option(Path("results/bench"), "--out-dir", help="where the reports go")
DEVICE = typer.Option("cpu", "--device", help="cpu or cuda")
THREADS = typer.Option(0, "--threads", help="torch CPU threads (0: torch's default)")


def _defaults(device: str, image_size: int, labeled_bs: int, unlabeled_bs: int) -> tuple[int, int, int]:
    """0 = the device's default: the field's 256 px, 12 + 12 on a GPU; 64 px, 6 + 6 on a CPU."""
    gpu = device.startswith("cuda")
    return (image_size or (256 if gpu else 64), labeled_bs or (12 if gpu else 6),
            unlabeled_bs or (12 if gpu else 6))


def _threads(n: int) -> None:
    if n > 0:
        import torch

        torch.set_num_threads(n)


def _steps_table(rows: list[dict]) -> Table:
    table = Table(title="step time per method and stage (ratio: to UNet-L at equal images per step)")
    for col in ("method", "stage", "median s/step", "CPU s/step", "ratio to UNet-L", "peak MiB"):
        table.add_column(col, justify="left" if col in ("method", "stage") else "right")
    for r in rows:
        mem, cpu = r.get("peak_mem_mb"), r.get("median_cpu_s")
        table.add_row(r["method"], r["stage"], f"{r['median_step_s']:.4f}", "n/a" if cpu is None else f"{cpu:.4f}",
                      f"{r['ratio_to_unet_l']:.2f}", "n/a" if mem is None else f"{mem:.0f}")
    return table


@bench_app.callback()
def bench_all(ctx: typer.Context, device: str = DEVICE, out_dir: Path = OUT, threads: int = THREADS) -> None:
    """Without a sub-command: steps, reference-mt and eval at the device's default size."""
    if ctx.invoked_subcommand is not None:
        return
    from ssl_bench.bench import eval as bench_eval, reference_mt, steps

    size, lb, ub = _defaults(device, 0, 0, 0)
    _threads(threads)
    try:
        rep = steps.run(None, steps.Setting(size, lb, ub, device=device), out_dir=out_dir, threads=threads,
                        progress=lambda r: console.print(f"{r['method']:>8} {r['stage']:>9}: "
                                                         f"{r['ratio_to_unet_l']:.2f} x UNet-L"))
        console.print(_steps_table(rep["rows"]))
        ref = reference_mt.run(size, lb, ub, device, out_dir=out_dir)
        ev = bench_eval.run(device=device, image_size=size, out_dir=out_dir)
    except user_errors() as exc:
        fail(str(exc))
    console.print(f"ssl-bench MT step: {ref['speedup']:.2f} x faster than the plain reference; surface metrics "
                  f"{ev['surface_metrics']['speedup']:.1f} x faster than medpy "
                  f"({'identical' if ev['surface_metrics']['identical'] else 'NOT identical'} values)")
    console.print(f"written to {rep['csv']}, {rep['md']} and the *_reference_mt / *_eval reports beside them")


def _patch(text: str) -> tuple[int, int, int] | None:
    """``--patch x,y,z`` (the field's order, as ``--set patch_size=``); empty: 2D slices."""
    return _shape(text, "--patch", "x,y,z, e.g. 64,64,32 (la-small's patch)") if text else None


@bench_app.command("steps")
def bench_steps(
    method: list[str] = typer.Option([], "--method", help="methods to time (default: all; with --patch: those that run in 3D)"),
    image_size: int = typer.Option(0, help="slice side in pixels (0: 64 on a CPU, 256 on a GPU)"),
    patch: str = typer.Option("", help="3D: time V-Net steps on patches of x,y,z voxels (e.g. 64,64,32) instead of 2D slices"),
    labeled_bs: int = typer.Option(0, help="labeled slices per step (0: 6 on a CPU, 12 on a GPU; with --patch: 2 patches)"),
    unlabeled_bs: int = typer.Option(0, help="unlabeled slices per step (0: as labeled_bs's default)"),
    amp: bool = typer.Option(False, "--amp", help="bf16 autocast"),
    channels_last: bool = typer.Option(False, "--channels-last", help="channels-last networks"),
    compile: bool = typer.Option(False, "--compile", help="torch.compile the networks"),
    steps: int = typer.Option(10, help="timed steps per method and stage (as many for UNet-L)"),
    warmup: int = typer.Option(2, help="untimed steps first"),
    memory: bool = typer.Option(True, "--memory/--no-memory", help="peak memory in a worker process (time: about 3 more steps per stage)"),
    device: str = DEVICE, out_dir: Path = OUT, threads: int = THREADS,
):
    """Median step time, peak memory and ratio to UNet-L of every method and stage -> <device>.csv/.md."""
    from ssl_bench.bench import steps as bench

    shape = _patch(patch)
    if shape and image_size:
        raise typer.BadParameter("--image-size is for 2D slices and --patch for 3D patches: give one of them")
    size, lb, ub = _defaults(device, image_size, labeled_bs, unlabeled_bs)
    if shape:  # the LA track's batch: 2 + 2 patches (UA-MT's), unless given
        lb, ub = labeled_bs or 2, unlabeled_bs or 2
    _threads(threads)
    try:
        rep = bench.run(method_names(method) or None, bench.Setting(size, lb, ub, amp, channels_last, compile, device, shape),
                        steps=steps, warmup=warmup, out_dir=out_dir, threads=threads, memory=memory,
                        progress=lambda r: console.print(f"{r['method']:>8} {r['stage']:>9}: "
                                                         f"{r['median_step_s']:.3f} s, {r['ratio_to_unet_l']:.2f} x UNet-L"))
    except user_errors() as exc:
        fail(str(exc))
    console.print(_steps_table(rep["rows"]))
    console.print(f"written to {rep['csv']} and {rep['md']}")


def method_names(given: list[str]) -> list[str]:
    """``--method`` given once per method or as a comma list (``--method abd,ad-mt``), as ``sweep``."""
    return [m.strip() for item in given for m in item.split(",") if m.strip()]


@bench_app.command("reference-mt")
def bench_reference_mt(
    image_size: int = typer.Option(0, help="slice side in pixels (0: 64 on a CPU, 256 on a GPU)"),
    labeled_bs: int = typer.Option(0, help="labeled slices per step (0: device default)"),
    unlabeled_bs: int = typer.Option(0, help="unlabeled slices per step (0: device default)"),
    steps: int = typer.Option(10, help="timed steps of each"), warmup: int = typer.Option(2, help="untimed steps first"),
    workers: int = typer.Option(0, help="the reference's data-loader processes (SSL4MIS: 4)"),
    amp: bool = typer.Option(False, "--amp", help="ssl-bench's step in bf16 autocast"),
    channels_last: bool = typer.Option(False, "--channels-last", help="ssl-bench's networks channels-last"),
    device: str = DEVICE, out_dir: Path = OUT, threads: int = THREADS,
):
    """The plain reference Mean Teacher step (SSL4MIS's recipe) vs ssl-bench's, side by side."""
    from ssl_bench.bench import reference_mt

    size, lb, ub = _defaults(device, image_size, labeled_bs, unlabeled_bs)
    _threads(threads)
    try:
        rep = reference_mt.run(size, lb, ub, device, steps=steps, warmup=warmup, workers=workers, amp=amp,
                               channels_last=channels_last, out_dir=out_dir)
    except user_errors() as exc:
        fail(str(exc))
    console.print(f"plain reference {rep['reference_median_s']:.4f} s/step, ssl-bench MT {rep['ssl_bench_median_s']:.4f} "
                  f"s/step: {rep['speedup']:.2f} x; written to {out_dir}/{rep['device']}_reference_mt.md")


def _shape(text: str, name: str, give: str = "depth,height,width, e.g. 100,512,512") -> tuple[int, ...]:
    """Three comma-separated integers, or a ``BadParameter`` that says what to ``give``."""
    try:
        shape = tuple(int(v) for v in text.split(","))
    except ValueError:
        shape = ()
    if len(shape) != 3:
        raise typer.BadParameter(f"{name} {text!r}: give {give}")
    return shape


@bench_app.command("eval")
def bench_eval_command(
    volume: str = typer.Option("100,512,512", help="the LiTS-size case for the metrics vs medpy (z,y,x)"),
    repeats: int = typer.Option(3, help="runs of ssl-bench's metrics (medpy runs once)"),
    cases: int = typer.Option(8, help="cases of the synthetic test set"),
    case_shape: str = typer.Option("10,256,216", help="shape of each test case (z,y,x)"),
    image_size: int = typer.Option(0, help="inference size (0: 64 on a CPU, 256 on a GPU)"),
    workers: int = typer.Option(0, help="metric processes (0: one per core, at most one per case)"),
    device: str = DEVICE, out_dir: Path = OUT, threads: int = THREADS,
):
    """Surface metrics vs medpy (values and time) and the time to score a test set."""
    from ssl_bench.bench import eval as bench_eval

    size = _defaults(device, image_size, 0, 0)[0]
    _threads(threads)
    try:
        rep = bench_eval.run(_shape(volume, "--volume"), repeats, cases, _shape(case_shape, "--case-shape"), size,
                             device, workers, out_dir)
    except user_errors() as exc:
        fail(str(exc))
    s = rep["surface_metrics"]
    console.print(f"surface metrics: medpy {s['medpy_s']:.2f} s, ssl-bench {s['ssl_bench_s']:.3f} s: "
                  f"{s['speedup']:.1f} x, largest difference {s['max_abs_difference']:.3g}; "
                  f"written to {out_dir}/{rep['device']}_eval.md")


@bench_app.command("anco")
def anco(image_size: int = typer.Option(256, help="slice side in pixels"),
         batch_size: int = typer.Option(6, help="labeled slices per step (as many unlabeled)"),
         steps: int = typer.Option(4, help="timed steps per variant (the first is not counted)"),
         device: str = DEVICE,
         out_dir: Path = typer.Option(Path("results/bench"), help="where anco_<device>.json/.md go"),
         threads: int = THREADS) -> None:
    """Peak memory and time of an ACTION stage-iii step with AnCo vs without it."""
    from ssl_bench.bench.anco import run

    try:
        rep = run(image_size=image_size, batch_size=batch_size, steps=steps, device=device,
                  out_dir=out_dir, threads=threads)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    o = rep["overhead"]
    typer.echo(f"AnCo adds {o['peak_memory_pct']:+.1f}% peak memory ({o['step_memory_pct']:+.1f}% of the "
               f"step's own peak) and {o['time_pct']:+.1f}% wall / {o['cpu_time_pct']:+.1f}% CPU time per step; "
               f"written to {out_dir}/anco_{device.split(':')[0]}.md")


@bench_app.command("threads")
def bench_threads(
    method: list[str] = typer.Option([], "--method", help="methods to time (default mt and cct)"),
    neighbours: int = typer.Option(2, help="busy single-thread processes started beside the timed one"),
    image_size: int = typer.Option(64, help="slice side in pixels"),
    batch: int = typer.Option(6, help="labeled (and as many unlabeled) slices per step"),
    steps: int = typer.Option(3, help="timed steps per method and candidate (after one untimed)"),
    timeout_s: float = typer.Option(300.0, help="seconds each wait policy's process may take"),
    out_dir: Path = OUT,
):
    """CPU step time under each thread policy beside busy neighbours (the choice of run's default)."""
    from ssl_bench.bench import threads

    try:
        rep = threads.run(tuple(method) or ("mt", "cct"), neighbours=neighbours, image_size=image_size, batch=batch,
                          steps=steps, timeout_s=timeout_s, out_dir=out_dir, progress=console.print)
    except user_errors() as exc:
        fail(str(exc))
    console.print(f"written to {out_dir}/threads_cpu.md ({len(rep['rows'])} rows)")


@bench_app.command("card")
def card(
    out_dir: Path = typer.Option(..., "--out-dir", help="the folder that comes back ($OUT on the GPU host)"),
    budget_s: float = typer.Option(300.0, "--budget-s", help="seconds the card may use; later sections are skipped"),
    image_size: int = typer.Option(256, help="slice side (the field's 256)"),
    labeled_bs: int = typer.Option(12, help="labeled slices per step (the field's 12)"),
    unlabeled_bs: int = typer.Option(12, help="unlabeled slices per step (the field's 12)"),
    method: list[str] = typer.Option([], "--method", help="name or name:stage (default unet-l, mt, cps, action:iii)"),
    steps: int = typer.Option(20, help="timed steps per method and stage"), warmup: int = typer.Option(5),
    loop_steps: int = typer.Option(300, help="lean steps in a row for seconds per 1000 iterations (0: none)"),
    workers: int = typer.Option(4, help="the reference MT's loader processes (-1: no reference-mt section)"),
    no_compile: bool = typer.Option(False, "--no-compile", help="leave out the compile sections"),
    device: str = typer.Option("cuda", "--device"), threads: int = THREADS,
):
    """The GPU figures of one short lease, section by section into card.jsonl / card.md (bench/card.py)."""
    from ssl_bench.bench.card import DEFAULT_METHODS, CardConfig, run

    cfg = CardConfig(out_dir, budget_s, device, image_size, labeled_bs, unlabeled_bs,
                     tuple(method or DEFAULT_METHODS), steps, warmup, loop_steps, workers, not no_compile, threads)
    try:
        rep = run(cfg, progress=console.print)
    except user_errors() as exc:
        fail(str(exc))
    console.print(f"card: {len(rep['records']) - len(rep['skipped']) - len(rep['failed'])} section(s) done, "
                  f"skipped {len(rep['skipped'])}, failed {len(rep['failed'])}; {rep['jsonl']} and {rep['md']}")


@bench_app.command("stats")
def bench_stats(
    seeds: str = typer.Option("3", "--seeds", help="comma-separated numbers of seeds (paired runs), e.g. 3,5,10"),
    shift: float = typer.Option(4.0, "--shift", help="the true difference in Dice points for the power"),
    replicates: int = typer.Option(2000, "--replicates", min=100, help="simulated tables per rate"),
    patients: int = typer.Option(20, "--patients", min=2), volumes: int = typer.Option(2, "--volumes", min=1),
    seed_sd: float = typer.Option(3.0, "--seed-sd", help="sd of a run's shift (method x seed), Dice points"),
    patient_sd: float = typer.Option(8.0, "--patient-sd", help="sd of a patient's difficulty, shared by both methods"),
    inter_sd: float = typer.Option(3.0, "--inter-sd", help="sd of method x patient"),
    volume_sd: float = typer.Option(3.0, "--volume-sd", help="sd of a volume's residual"),
    out_dir: Path = typer.Option(Path("results/bench"), "--out-dir", help="where stats.json/.md go"),
    grid: bool = typer.Option(False, "--grid", help="also four other mixes of seed and method x patient sd "
                              "(seed-dominated, patient-dominated, no seed spread, both large)"),
) -> None:
    """False-positive rate and power of the tables' bold mark, by simulation."""
    from ssl_bench.bench import stats as bench

    try:
        counts = tuple(int(x) for x in seeds.split(",") if x.strip())
    except ValueError:
        fail(f"--seeds {seeds!r}: give comma-separated whole numbers, e.g. 3,5,10")
    if not counts or min(counts) < 1:
        fail(f"--seeds {seeds!r}: give at least one number of seeds, each >= 1")
    setting = bench.Setting(patients, volumes, counts[0], seed_sd, patient_sd, inter_sd, volume_sd)
    rep = bench.report(out_dir, counts, shift, replicates, setting, grid=grid,
                       progress=lambda r: console.print(
                           f"{r['mix']}, {r['n_seeds']} seed(s): false-positive rate {r['false_positive_rate']:.3f}, power at "
                           f"{shift:g} Dice {r['power']:.3f} (legacy: {r['legacy_false_positive_rate']:.3f}, "
                           f"{r['legacy_power']:.3f})"))
    console.print(f"written to {out_dir}/stats.md ({len(rep['rows'])} line(s))")
