"""What ``ssl-bench data info`` prints and the imbalance figure draws: cases, slices, voxel spacing
and the per-class voxel frequency of a dataset (the class imbalance of You et al., IPMI 2023,
Fig. 1), read from the slice cache where it is fresh, otherwise from the files (nothing written).
Core code: the command line (``ssl_bench.cli.data``) and ``figures.imbalance`` both use it."""
from __future__ import annotations

import statistics

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from ssl_bench.datasets.base import DataError, Dataset
from ssl_bench.datasets.cache import SliceCache, native_statistics


def progress_bar(console: Console) -> Progress:
    """A progress bar over the cases of a dataset (the current case id beside it)."""
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[case]}"), TimeRemainingColumn(), console=console)


def dataset_summary(ds: Dataset, size: int, console: Console | None = None) -> dict:
    """Cases, slices, spacing and class frequencies of ``ds`` (native resolution), plus problems."""
    try:
        refs, problems = ds.scan()
    except DataError as exc:
        refs, problems = [], [exc]
    errors = [str(p) for p in problems]
    cache = SliceCache(ds, size)
    per_case = []
    from_cache = 0
    with progress_bar(console or Console(stderr=True)) as progress:
        task = progress.add_task("reading", total=len(refs), case="")
        for ref in refs:
            progress.update(task, case=ref.case_id)
            try:
                volume = cache.read(ref.case_id) if cache.status(ref.case_id) == "fresh" else None
                if volume is not None:
                    meta = volume.meta
                    from_cache += 1
                else:
                    case = ds.load_case(ref.case_id)
                    meta = {"shape": list(case.image.shape), "spacing": list(case.spacing),
                            **native_statistics(case.label, ds.num_classes)}
                per_case.append((ref, meta))
            except DataError as exc:
                errors.append(str(exc))
            progress.advance(task)
    subsets: dict[str, int] = {}
    for ref, _ in per_case:
        subsets[ref.subset or "free"] = subsets.get(ref.subset or "free", 0) + 1
    n_classes = ds.num_classes
    voxels = [sum(m["class_voxels"][c] for _, m in per_case) for c in range(n_classes)]
    slices_with = [sum(m["class_slices"][c] for _, m in per_case) for c in range(n_classes)]
    total_voxels = sum(voxels)
    total_slices = sum(m["shape"][0] for _, m in per_case)

    def spread(values):
        return {"min": min(values), "median": statistics.median(values), "max": max(values)} if values else None

    summary = {
        "dataset": getattr(ds, "registry_name", type(ds).__name__), "root": str(ds.root),
        "cases": len(per_case), "subsets": subsets, "slices": total_slices,
        "slices_per_case": spread([m["shape"][0] for _, m in per_case]),
        "in_plane_px": {"min": [min(m["shape"][1] for _, m in per_case), min(m["shape"][2] for _, m in per_case)],
                        "max": [max(m["shape"][1] for _, m in per_case), max(m["shape"][2] for _, m in per_case)]}
        if per_case else None,
        "spacing_mm": {axis: spread([float(m["spacing"][i]) for _, m in per_case])
                       for i, axis in enumerate("zyx")},
        "classes": [{"index": c, "name": ds.class_names[c], "voxels": int(voxels[c]),
                     "voxel_fraction": voxels[c] / total_voxels if total_voxels else 0.0,
                     "slices": int(slices_with[c]),
                     "slice_fraction": slices_with[c] / total_slices if total_slices else 0.0,
                     "cases": sum(m["class_voxels"][c] > 0 for _, m in per_case)}
                    for c in range(n_classes)],
        "read_from_cache": from_cache,
        "problems": errors,
    }
    missing = getattr(ds, "missing_numbers", None)
    if callable(missing) and not problems:
        try:
            summary["protocol_missing_volumes"] = missing()
        except DataError:
            pass
    return summary
