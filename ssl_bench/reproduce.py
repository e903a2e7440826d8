"""``ssl-bench reproduce tableN|sota``: the exact grid behind each table of the ACTION paper, and
``sota``: the methods that now hold the ACDC records (ABD, AD-MT, UniMatch) and SS-Net beside BCP and ACTION.

You et al., IPMI 2023: Table 1 is the 14 methods on ACDC with 3 and 7 labeled patients, Table 2
the same methods on LiTS with 5 % and 10 % labeled volumes, Table 3 ACTION's ablations and
Table 4 its student/teacher augmentations (both ACDC, 3 labeled). A grid is protocol x methods
(x variants) x settings x seeds; every cell is one idempotent ``ssl-bench run`` job, so a grid
can be stopped and re-run (finished runs are skipped, interrupted ones resume).

``budget="full"`` runs on the real datasets at the protocol's budget (the paper's scale);
``budget="cpu"`` runs on the real datasets at ``CPU_BUDGET`` (a user without a GPU: small slices,
a short base budget, one thread a run; chosen by a pilot on real ACDC, see README "Real ACDC on a
CPU"); ``budget="smoke"`` runs the same grid on the built-in phantoms (acdc-phantom,
lits-phantom) at their CPU presets, in minutes to hours of CPU: it checks the machinery, not the
paper's numbers.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from pathlib import Path

from ssl_bench.config import parse_set_options
from ssl_bench.runconfig import RunSpec
from ssl_bench.sweep import Job

#: the methods of Tables 1 and 2, in the paper's order
PAPER_METHODS = ["unet-f", "unet-l", "em", "cct", "dan", "urpc", "dct", "ict", "mt", "uamt", "cps",
                 "gcl", "scs", "action"]
#: ``reproduce sota`` (issue 20): the methods that now hold the ACDC records beside BCP and ACTION,
#: each under its released recipe (protocol field).
SOTA_METHODS = ["bcp", "action", "abd", "ad-mt", "unimatch", "ssnet"]
#: Table 3's rows (``method.ablation``); ``no-pseudo-ce`` is the other reading of "w/o L_unsup"
ABLATIONS = ["none", "vanilla", "no-rsi", "no-stage2", "no-rsi-no-stage2", "no-stage3", "no-anco",
             "no-unsup", "no-pseudo-ce"]
#: Table 4's rows: (student, teacher) augmentation
AUGMENTATIONS = [("weak", "weak"), ("strong", "weak"), ("weak", "strong"), ("strong", "strong")]


BUDGETS = ("full", "cpu", "smoke")
#: ``--budget cpu``: the ``--set`` bundle and base budget for real data on a CPU (README "Real
#: ACDC on a CPU" gives the pilot behind it). The protocol's budget rule still scales it per method
#: (ACTION x3 per stage, BCP x4/3 under field), and the table's "As run" line shows it.
CPU_BUDGET_SETS = ("image_size=64", "val_every=50", "threads=1")
CPU_BUDGET_ITERATIONS = 1000


@dataclass(frozen=True)
class Variant:
    """A row variant of one method: a label and the ``--set`` items that make it."""

    label: str
    sets: tuple[str, ...] = ()


@dataclass(frozen=True)
class Grid:
    name: str
    title: str
    dataset: str  # the real dataset
    smoke_dataset: str  # its phantom
    settings: tuple[tuple[str, str], ...]  # ("--labeled", "3"), ("--ratio", "0.05")
    methods: tuple[str, ...]
    variants: tuple[Variant, ...] = (Variant("default"),)
    kind: str = "main"  # main (Tables 1/2) or ablation (Tables 3/4)
    protocol: str = "field"  # the protocol behind its published rows (`--protocol` default)
    #: methods of the published table that ssl-bench cannot run on this grid yet: name -> why
    missing: tuple[tuple[str, str], ...] = ()

    def dataset_for(self, budget: str) -> str:
        return self.smoke_dataset if budget == "smoke" else self.dataset  # full and cpu: real data


GRIDS = {
    "table1": Grid("table1", "Table 1: ACDC, 3 and 7 labeled patients", "acdc", "acdc-phantom",
                   (("--labeled", "3"), ("--labeled", "7")), tuple(PAPER_METHODS)),
    "table2": Grid("table2", "Table 2: LiTS, 5% and 10% labeled volumes", "lits", "lits-phantom",
                   (("--ratio", "0.05"), ("--ratio", "0.1")), tuple(PAPER_METHODS)),
    "table3": Grid("table3", "Table 3: ACTION ablations, ACDC, 3 labeled", "acdc", "acdc-phantom",
                   (("--labeled", "3"),), ("action",),
                   tuple(Variant(a, () if a == "none" else (f"method.ablation={a}",)) for a in ABLATIONS),
                   kind="ablation"),
    "table4": Grid("table4", "Table 4: ACTION augmentations, ACDC, 3 labeled", "acdc", "acdc-phantom",
                   (("--labeled", "3"),), ("action",),
                   tuple(Variant(f"{s}-{t}", (f"method.student_aug={s}", f"method.teacher_aug={t}"))
                         for s, t in AUGMENTATIONS), kind="ablation"),
    "sota": Grid("sota", "Methods after ACTION: ABD, AD-MT, UniMatch, SS-Net beside BCP and ACTION, ACDC, 3 and 7 labeled",
                 "acdc", "acdc-phantom", (("--labeled", "3"), ("--labeled", "7")), tuple(SOTA_METHODS)),
    # the field's 3D benchmark (issue 19): V-Net rows of the LA tables at 8 and 16 labeled scans;
    # smoke = la-small, the CPU preset (the real files, downsampled)
    "la": Grid("la", "Left Atrium: 8 and 16 labeled scans (V-Net)", "la", "la-small",
               (("--labeled", "8"), ("--labeled", "16")),
               ("unet-f", "unet-l", "mt", "uamt", "mcnet", "bcp", "action"), protocol="la-field"),
}

#: published LA rows (results/reference/la_published.csv), printed by `reproduce la`
LA_PUBLISHED = "la_published.csv"


def get_grid(name: str) -> Grid:
    try:
        return GRIDS[name]
    except KeyError:
        raise ValueError(f"unknown table {name!r}; choose one of {', '.join(GRIDS)}") from None


@dataclass
class GridRequest:
    """What the user asked for; ``jobs()`` turns it into sweep jobs."""

    grid: Grid
    protocol: str | None = "field"  # None: the grid's own
    budget: str = "full"
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    methods: list[str] | None = None  # a subset of the grid's methods (CI runs a slice)
    iterations: int | None = None  # base budget; default: the protocol's (full) or the preset (smoke)
    extra_sets: list[str] = field(default_factory=list)
    common_args: list[str] = field(default_factory=list)  # --results-root, --data-root, threads ...

    def __post_init__(self):
        if self.protocol is None:
            self.protocol = self.grid.protocol
        if self.budget not in BUDGETS:
            raise ValueError(f"--budget {self.budget!r}: use full (real data, the paper's scale), cpu (real "
                             f"data at the CPU budget) or smoke (phantoms)")
        if self.budget == "cpu":
            self.extra_sets = [*CPU_BUDGET_SETS, *self.extra_sets]  # the user's --set still wins
            self.iterations = self.iterations or CPU_BUDGET_ITERATIONS
        unknown = sorted(set(self.methods or []) - set(self.grid.methods))
        if unknown:
            raise ValueError(f"{self.grid.name} has no method {', '.join(unknown)}; "
                             f"its methods: {', '.join(self.grid.methods)}")
        if not self.seeds:
            raise ValueError("give at least one seed (--seeds 0,1,2)")

    @property
    def dataset(self) -> str:
        return self.grid.dataset_for(self.budget)

    def jobs(self) -> list[Job]:
        return [job for job, _ in self.jobs_and_specs()]

    def jobs_and_specs(self) -> list[tuple[Job, RunSpec]]:
        """Each job with the ``RunSpec`` its command line makes (for estimates without data)."""
        methods = [m for m in self.grid.methods if not self.methods or m in self.methods]
        out = []
        for m in methods:
            for v in self.grid.variants:
                sets = [*v.sets, *self.extra_sets]
                args = ["--protocol", self.protocol, *[a for item in sets for a in ("--set", item)]]
                overrides = parse_set_options(sets)
                if self.iterations:
                    args += ["--iterations", str(self.iterations)]
                    overrides["iterations"] = str(self.iterations)
                for flag, value in self.grid.settings:
                    setting = {"labeled": int(value)} if flag == "--labeled" else {"ratio": float(value)}
                    for seed in self.seeds:
                        spec = RunSpec(method=m, dataset=self.dataset, seed=seed, protocol=self.protocol,
                                       overrides=dict(overrides), **setting)
                        out.append((Job(m, self.dataset, (flag, value), seed, 0, [*args, *self.common_args]), spec))
        return out


def estimate_from_config(pairs: list[tuple[Job, RunSpec]], results_root: Path, device: str):
    """Estimated seconds per job from measured step times, from the resolved configs alone (the
    data need not be present: a grid on real data can be planned on a laptop). Returns
    ``[(job, total iterations, Estimate | None)]``."""
    from types import SimpleNamespace

    from ssl_bench.registry import get_dataset_class, get_method_class
    from ssl_bench.runconfig import resolve
    from ssl_bench.sweep.estimate import StepTimes, default_bench_dirs
    from ssl_bench.volumetric import zyx

    times = StepTimes(Path(results_root), default_bench_dirs())
    out = []
    for job, spec in pairs:
        method_cls, data_cls = get_method_class(spec.method), get_dataset_class(spec.dataset)
        train_cfg, method_cfg = resolve(spec, method_cls, getattr(data_cls, "train_defaults", None))
        if getattr(data_cls, "spatial_dims", 2) == 3:  # as the engine: a 3D run's size is its (z, y, x) patch
            size = zyx(train_cfg.patch_size or data_cls.default_patch_size)
        else:
            size = train_cfg.image_size or getattr(data_cls, "default_image_size", 256)
        run = SimpleNamespace(spec=spec, train_cfg=train_cfg, method_cfg=method_cfg, method_cls=method_cls,
                              image_size=size, dataset=SimpleNamespace(num_classes=len(data_cls.class_names)))
        out.append((job, train_cfg.total_iterations, times.estimate(run, device)))
    return out
