"""``ssl-bench bench ...``: micro-benchmarks (mounted by the main CLI as the ``bench`` group)."""
from __future__ import annotations

from pathlib import Path

import typer

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
