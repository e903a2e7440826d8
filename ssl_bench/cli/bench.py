"""``ssl-bench bench ...``: micro-benchmarks (mounted by the main CLI as the ``bench`` group)."""
from __future__ import annotations

from pathlib import Path

import typer

from ssl_bench.cli.common import console, fail, user_errors

bench_app = typer.Typer(help="Micro-benchmarks of method components.", no_args_is_help=True)


@bench_app.callback()
def _group() -> None:
    """Micro-benchmarks of method components."""  # a callback keeps `anco` a named sub-command


@bench_app.command("anco")
def anco(image_size: int = typer.Option(256, help="slice side in pixels"),
         batch_size: int = typer.Option(6, help="labeled slices per step (as many unlabeled)"),
         steps: int = typer.Option(4, help="timed steps per variant (the first is not counted)"),
         device: str = typer.Option("cpu", help="cpu or cuda"),
         out_dir: Path = typer.Option(Path("results/bench"), help="where anco_<device>.json/.md go"),
         threads: int = typer.Option(0, help="torch CPU threads (0: torch's default)")) -> None:
    """Peak memory and time of an ACTION stage-iii step with AnCo vs without it."""
    from ssl_bench.bench_anco import run

    try:
        rep = run(image_size=image_size, batch_size=batch_size, steps=steps, device=device,
                  out_dir=out_dir, threads=threads)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    o = rep["overhead"]
    typer.echo(f"AnCo adds {o['peak_memory_pct']:+.1f}% peak memory ({o['step_memory_pct']:+.1f}% of the "
               f"step's own peak) and {o['time_pct']:+.1f}% wall / {o['cpu_time_pct']:+.1f}% CPU time per step; "
               f"written to {out_dir}/anco_{device.split(':')[0]}.md")


@bench_app.command("steps")
def bench_steps(
    method: list[str] = typer.Option([], "--method", help="methods to time (default: all)"),
    image_size: int = typer.Option(112, help="slice side in pixels"),
    labeled_bs: int = typer.Option(12, help="labeled slices per iteration"),
    unlabeled_bs: int = typer.Option(12, help="unlabeled slices per iteration"),
    steps: int = typer.Option(3, help="timed iterations per stage (after one warm-up)"),
    device: str = typer.Option("cpu", help="cpu or cuda"),
    out_dir: Path = typer.Option(Path("results/bench"), help="where steps_<device>_<size>px.json/.md go"),
):
    """Seconds per training iteration of every method (each stage, budget-weighted)."""
    from ssl_bench.bench_steps import run as run_steps

    def show(r):
        console.print(f"{r['method']:>10}: {r['seconds_per_step']:.3f} s/iteration")

    try:
        run_steps(method or None, image_size, labeled_bs, unlabeled_bs, steps, 1, device, out_dir, show)
    except user_errors() as exc:
        fail(str(exc))
    console.print(f"written to {out_dir}/steps_{device.split(':')[0]}_{image_size}px.md")
