"""``ssl-bench data prepare`` and ``ssl-bench data info``.

``prepare`` validates every case of a dataset (layout: image without label, duplicates, ...;
content: unreadable/truncated files, shape or affine mismatch, label values outside the class
map, constant images) and writes the slice cache (``ssl_bench.datasets.cache``). Entries are
built into a hidden staging folder and moved into the cache only when *every* case is valid,
so a failed prepare leaves no partial cache; re-running it is a no-op, and a changed source
file is detected (size/mtime fingerprint) and rebuilt.

``info`` prints cases, slices, voxel spacing and the per-class voxel frequency (the class
imbalance of the ACTION paper's Fig. 1) from the cache where fresh, otherwise from the files
(it writes nothing).
"""
from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from ssl_bench.datasets.base import DataError, Dataset
from ssl_bench.data_summary import dataset_summary, progress_bar as _progress
from ssl_bench.datasets.cache import SliceCache
from ssl_bench.registry import RegistryError, get_dataset_class, list_datasets

data_app = typer.Typer(help="Prepare (validate + cache slices) and inspect datasets.", no_args_is_help=True)

DATASET_HELP = "registered dataset name (e.g. lits, acdc, nnunet, lits-phantom)"
PATH_HELP = "data root: the folder holding this dataset's files"


def _fail(message: str, code: int) -> None:
    typer.echo(message, err=True)
    raise typer.Exit(code)


def open_dataset(name: str, path: Path) -> Dataset:
    """The dataset ``name`` at ``path``; a usage error (exit 2) for an unknown name or missing path."""
    try:
        cls = get_dataset_class(name)
    except RegistryError:
        _fail(f"unknown dataset {name!r}; known datasets: {', '.join(list_datasets())}", 2)
    path = Path(path).expanduser()
    if not path.is_dir():
        what = "is not a folder" if path.exists() else "does not exist"
        _fail(f"{path} {what}; pass the folder holding the {name} data as PATH", 2)
    return cls(path)


# -- prepare -----------------------------------------------------------------------------------
@data_app.command()
def prepare(
    dataset: str = typer.Argument(..., help=DATASET_HELP),
    path: Path = typer.Argument(..., help=PATH_HELP),
    size: Optional[int] = typer.Option(None, "--size", min=8, help="slice size in px (default: the dataset's)"),
    allow_partial: bool = typer.Option(False, "--allow-partial",
                                       help="cache what is there even when the dataset's protocol split "
                                            "lacks cases (warns, naming them); runs on the split still fail"),
) -> None:
    """Validate every case and write the slice cache (all or nothing; re-running is a no-op)."""
    ds = open_dataset(dataset, path)
    err = Console(stderr=True)
    size = int(size or ds.default_image_size)
    cache = SliceCache(ds, size)
    errors: list[str] = []
    try:
        refs, problems = ds.scan()
    except DataError as exc:
        refs, problems = [], [exc]
    errors += [str(p) for p in problems]
    if not problems:
        try:
            gaps = ds.protocol_gaps()
        except DataError as exc:
            gaps, errors = [], errors + [str(exc)]
        if gaps and not allow_partial:
            lines = "\n".join(f"  - {g}" for g in gaps)
            _fail(f"the {dataset} data at {path} is incomplete for its protocol split; nothing was "
                  f"written to the cache:\n{lines}\nAdd the missing files (see README, Datasets), or pass "
                  f"--allow-partial to cache the {len(refs)} case(s) found anyway", 1)
        for g in gaps:
            err.print(f"[bold yellow]warning:[/] {dataset} protocol split incomplete ({g}); caching "
                      f"the {len(refs)} case(s) found because of --allow-partial")
    status: dict[str, str] = {}
    for ref in refs:
        try:
            status[ref.case_id] = cache.status(ref.case_id)
        except DataError as exc:
            errors.append(str(exc))
    todo = [cid for cid, s in status.items() if s != "fresh"]
    if not errors and not todo:
        typer.echo(f"nothing to do: all {len(status)} cases of {dataset} are already cached at size {size} "
                   f"in {cache.folder}")
        return
    cacheable = [cid for cid in todo if status[cid] != "uncached"]
    created = _missing_ancestors(cache.folder)  # removed again if nothing gets committed
    staging = None
    slices = 0
    try:
        if cacheable:
            cache.folder.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(dir=cache.folder, prefix=".staging-"))
        with _progress(err) as progress:
            task = progress.add_task(f"validating {dataset}", total=len(todo), case="", visible=bool(todo))
            for cid in todo:
                progress.update(task, case=cid)
                try:
                    volume = cache.build(cid)
                    if status[cid] != "uncached" and not errors:  # once a case failed, only validate
                        cache.write(volume, staging)
                    slices += volume.n_slices
                except DataError as exc:
                    errors.append(str(exc))
                progress.advance(task)
        if errors:
            lines = "\n".join(f"  - {e}" for e in errors)
            _fail(f"{len(errors)} problem(s) in {dataset} at {path}; nothing was written to the cache:\n"
                  f"{lines}", 1)
        if cacheable:
            cache.commit(staging, cacheable)
            created = []
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
        for folder in created:  # deepest first; only the folders this command made, if empty
            try:
                folder.rmdir()
            except OSError:
                pass
    rebuilt = sum(status[c] == "stale" for c in todo)
    fresh = len(status) - len(todo)
    if cacheable:
        typer.echo(f"prepared {len(cacheable)} case(s) of {dataset} ({slices} slices) at size {size} in "
                   f"{cache.folder}" + (f"; {rebuilt} rebuilt because their source changed" if rebuilt else "")
                   + (f"; {fresh} already cached" if fresh else ""))
    else:
        typer.echo(f"validated {len(todo)} case(s) of {dataset} ({slices} slices); this dataset does not "
                   f"name its source files, so its slices are not cached")


def _missing_ancestors(folder: Path) -> list[Path]:
    """``folder`` and its ancestors that do not exist yet, deepest first."""
    out = []
    for p in [folder, *folder.parents]:
        if p.exists():
            break
        out.append(p)
    return out


# -- info --------------------------------------------------------------------------------------
@data_app.command()
def info(
    dataset: str = typer.Argument(..., help=DATASET_HELP),
    path: Path = typer.Argument(..., help=PATH_HELP),
    size: Optional[int] = typer.Option(None, "--size", min=8, help="cache size to read from (default: the dataset's)"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object instead of tables"),
) -> None:
    """Cases, slices, spacing and per-class voxel frequency (class imbalance) of a dataset."""
    ds = open_dataset(dataset, path)
    summary = dataset_summary(ds, int(size or ds.default_image_size))
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
    else:
        _print_tables(summary)
    if summary["problems"]:
        lines = "\n".join(f"  - {e}" for e in summary["problems"])
        _fail(f"{len(summary['problems'])} problem(s) in {dataset} at {path}:\n{lines}", 1)


def _fmt_spread(s: dict | None, fmt: str = "{:g}") -> str:
    if not s:
        return "-"
    return " / ".join(fmt.format(s[k]) for k in ("min", "median", "max"))


def _print_tables(s: dict) -> None:
    console = Console(soft_wrap=True)
    overview = Table(title=f"{s['dataset']} at {s['root']}", show_header=False)
    overview.add_column("what", style="bold")
    overview.add_column("value")
    subsets = ", ".join(f"{k} {v}" for k, v in sorted(s["subsets"].items()))
    overview.add_row("cases", f"{s['cases']}" + (f" ({subsets})" if subsets else ""))
    overview.add_row("slices", f"{s['slices']} (per case min / median / max: {_fmt_spread(s['slices_per_case'])})")
    if s["in_plane_px"]:
        overview.add_row("in-plane size", f"{s['in_plane_px']['min']} to {s['in_plane_px']['max']} px (Y, X)")
    for axis in "zyx":
        overview.add_row(f"spacing {axis} (mm)", _fmt_spread(s["spacing_mm"][axis], "{:.3g}") + "  (min / median / max)")
    if s.get("protocol_missing_volumes"):
        miss = s["protocol_missing_volumes"]
        overview.add_row("protocol", f"{len(miss)} volume(s) of the protocol are missing: "
                                     f"{', '.join(map(str, miss[:10]))}{' ...' if len(miss) > 10 else ''}")
    console.print(overview)
    classes = Table(title="class frequency (native resolution; slices/cases = how many contain the class)")
    for col in ("index", "class", "voxels", "% voxels", "slices", "% slices", "cases"):
        classes.add_column(col, justify="left" if col == "class" else "right", no_wrap=True)
    for c in s["classes"]:
        classes.add_row(str(c["index"]), c["name"], f"{c['voxels']:,}", f"{100 * c['voxel_fraction']:.3f}",
                        f"{c['slices']:,}", f"{100 * c['slice_fraction']:.1f}", str(c["cases"]))
    console.print(classes)
