"""Runs as a pandas table (from MLflow), their selection, and the names and orders of the paper."""
from __future__ import annotations

import io
import re
from importlib import resources
from typing import Any, Iterable, Sequence

import pandas as pd

from ssl_bench.mlflow_store import TAG_PREFIX, make_client

PAPER_ORDER = ["UNet-F", "UNet-L", "EM", "CCT", "DAN", "URPC", "DCT", "ICT", "MT", "UAMT", "CPS",
               "GCL", "SCS", "ACTION"]
DISPLAY_NAMES = {"unet-f": "UNet-F", "unet-l": "UNet-L", "em": "EM", "cct": "CCT", "dan": "DAN",
                 "urpc": "URPC", "dct": "DCT", "ict": "ICT", "mt": "MT", "uamt": "UAMT", "cps": "CPS",
                 "gcl": "GCL", "scs": "SCS", "action": "ACTION", "bcp": "BCP"}
BUDGET_RULE = ("equal total gradient steps including pre-training stages unless a method's paper "
               "fixes its own schedule")
PAPER = "You et al., IPMI 2023"
PUBLISHED_LABEL = f"published ({PAPER}, real ACDC/LiTS)"
#: the rows of methods after ACTION's tables (BCP, ABD, AD-MT, UniMatch, MC-Net+, SS-Net), each with its source
LATER_REFERENCE = "later_methods_acdc.csv"
LATER_LABEL = "published (each method's paper or release, real ACDC)"
CHECKPOINT_MEANING = {"best": "best validation Dice", "last": "final iteration"}
#: ``checkpoint`` value meaning "the checkpoint each run's protocol reports" (tag report_checkpoint)
REPORTED = "reported"

#: ablation tag -> the ``variant`` of action_paper_ablations.csv (Table 3, paper order)
ABLATIONS = {
    "vanilla": "Vanilla (BYOL only)",
    "none": "ACTION (full)",
    "no-rsi": "w/o random sampled images (RSI)",
    "no-stage2": "w/o stage ii",
    "no-rsi-no-stage2": "w/o RSI + stage ii",
    "no-stage3": "w/o stage iii",
    "no-anco": "w/o L_anco",
    "no-unsup": "w/o L_unsup",
    # Table 3's other reading of "w/o L_unsup": drop the pseudo-label CE only, keep AnCo
    "no-pseudo-ce": "w/o pseudo-label CE (L_anco kept)",
}
#: augment tag ("student-teacher") of Table 4, paper order; ACTION's default is strong-weak
AUGMENTS = ["weak-weak", "strong-weak", "weak-strong", "strong-strong"]
DEFAULT_AUGMENT = "strong-weak"
ABLATION_METHOD = "action"


#: the training params a table's footnote restates as run (a protocol's budget rule is its paper
#: scale; runs may be smaller, e.g. the phantoms' CPU preset); columns ``as_run.<key>``
AS_RUN_PARAMS = ("train.iterations", "train.budget_scale", "train.labeled_bs", "train.unlabeled_bs",
                 "train.image_size", "train.supervised_whole_batch", "train.empty_asd", "train.patch_size")


class TableError(RuntimeError):
    """Nothing to show (no store, no matching runs); the message says what to do."""


def load_runs(tracking_uri: str, status: str = "finished") -> pd.DataFrame:
    """All runs of every experiment as a DataFrame: one row per run, columns ``run_id``,
    ``status``, ``end_time``, the ``ssl_bench.`` tags without prefix (``method``, ``dataset``,
    ``setting``, ``seed``, ``split_seed``, ``ablation``, ``augment``...) and one column per metric.
    ``status`` is ``finished``, ``failed``, ``running`` or ``all``."""
    from mlflow.entities import ViewType

    client = make_client(tracking_uri)
    exp_ids = [e.experiment_id for e in client.search_experiments(view_type=ViewType.ACTIVE_ONLY)]
    filt = "" if status == "all" else f"attributes.status = '{status.upper()}'"
    rows = []
    token = None
    while exp_ids:
        page = client.search_runs(exp_ids, filter_string=filt, max_results=1000, page_token=token)
        for r in page:
            row: dict[str, Any] = {"run_id": r.info.run_id, "experiment_id": r.info.experiment_id,
                                   "status": r.info.status.lower(),
                                   "end_time": r.info.end_time or r.info.start_time or 0}
            row.update({k[len(TAG_PREFIX):]: v for k, v in r.data.tags.items() if k.startswith(TAG_PREFIX)})
            row.update(r.data.metrics)
            row.update({"as_run." + k[len("train."):]: v for k, v in r.data.params.items() if k in AS_RUN_PARAMS})
            rows.append(row)
        token = page.token
        if not token:
            break
    return normalise_columns(pd.DataFrame(rows))


#: tag columns every run table has, with the value of a run that lacks the tag (runs made before
#: protocols existed were trained exactly as protocol paper v1 trains)
TAG_DEFAULTS = {"method": "", "dataset": "", "setting": "", "seed": "", "split_seed": "", "ablation": "none",
                "augment": "", "protocol": "paper", "protocol_version": "1", "report_checkpoint": "best", "variant": ""}


def normalise_columns(df: pd.DataFrame) -> pd.DataFrame:
    """Every column of TAG_DEFAULTS present, as strings, missing or empty values defaulted."""
    df = df.copy()
    for col, default in TAG_DEFAULTS.items():
        if col not in df:
            df[col] = default
        df[col] = df[col].fillna(default).astype(str)
        if default:
            df.loc[df[col] == "", col] = default
    return df


def select_runs(df: pd.DataFrame, dataset: str | None = None, methods: Sequence[str] | None = None,
                setting: str | None = None, protocol: str | None = None) -> pd.DataFrame:
    """Filter runs, then keep the last-ended run per (protocol, method, dataset, setting,
    variant, seed). ``protocol`` is a name (every version) or ``name-vN``.

    ACTION runs without an augment tag use its default augmentation and are tagged so here."""
    if dataset:
        df = df[df["dataset"] == dataset]
    if methods:
        df = df[df["method"].isin(list(methods))]
    if setting:
        df = df[df["setting"] == setting]
    df = normalise_columns(df)
    df["protocol_tag"] = df["protocol"] + "-v" + df["protocol_version"]
    if protocol:
        df = df[(df["protocol"] == protocol) | (df["protocol_tag"] == protocol)]
    df.loc[(df["method"] == ABLATION_METHOD) & (df["augment"] == ""), "augment"] = DEFAULT_AUGMENT
    df = _split_settings(df)
    keys = ["protocol_tag", "method", "variant", "dataset", "setting", "ablation", "augment", "seed", "split_seed"]
    df = df.sort_values("end_time").groupby(keys, sort=False).tail(1).copy()
    # a method run in several variants under one protocol gets one row per variant: "action:paper"
    n_variants = df.groupby(["dataset", "protocol_tag", "method"])["variant"].transform("nunique")
    several = n_variants > 1
    df.loc[several, "method"] = df.loc[several, "method"] + ":" + df.loc[several, "variant"].replace("", "untagged")
    return df


def _split_settings(df: pd.DataFrame) -> pd.DataFrame:
    """A run whose labeled patients were drawn by another split than its dataset's default (ACDC
    with ``--split random``) is a setting of its own, "3 labeled (random split)": the field's fixed
    patients and drawn ones never share a cell."""
    if "split" not in df or not len(df):
        return df
    default = {name: getattr(_dataset_class(name), "default_split", "") for name in df["dataset"].unique()}
    split = df["split"].fillna("").astype(str)
    known = df["dataset"].map(default).fillna("")
    other = (split != "") & (known != "") & (split != known)  # a dataset not installed here: left alone
    df.loc[other, "setting"] = df.loc[other, "setting"] + " (" + split[other] + " split)"
    return df


def is_main_variant(row: pd.Series) -> bool:
    """Runs of the main tables: no ablation, and ACTION with its default augmentation."""
    if row["ablation"] not in ("none", ""):
        return False
    return base_method(row["method"]) != ABLATION_METHOD or row["augment"] in ("", DEFAULT_AUGMENT)


def base_method(method: str) -> str:
    """``action`` of a per-variant row key ``action:paper``."""
    return method.partition(":")[0]


#: the supervised rows' names on a 3D dataset, where they train the V-Net (the LA tables' spelling)
VOLUMETRIC_NAMES = {"unet-l": "V-Net-L", "unet-f": "V-Net-F"}
#: a 3D name -> the paper's row whose place it takes in the order
ORDER_ALIASES = {"V-Net-L": "UNet-L", "V-Net-F": "UNet-F"}


def display_name(method: str, dataset: str | None = None) -> str:
    """The method class's own ``display_name``, else the paper's spelling, else the name;
    ``method:variant`` (several variants in one table) reads "ACTION (paper)". On a 3D
    ``dataset`` (``spatial_dims = 3``) the supervised rows read V-Net-L / V-Net-F."""
    if ":" in method:
        base, _, variant = method.partition(":")
        return f"{display_name(base, dataset)} ({variant})"
    if method in VOLUMETRIC_NAMES and dataset is not None \
            and getattr(_dataset_class(dataset), "spatial_dims", 2) == 3:
        return VOLUMETRIC_NAMES[method]
    try:
        from ssl_bench.registry import get_method_class

        own = vars(get_method_class(method)).get("display_name")
        if isinstance(own, str) and own:
            return own
    except Exception:  # a run of a method that is not installed here
        pass
    return DISPLAY_NAMES.get(method, method)


def method_order(display: str) -> tuple:
    """The paper's order; variants ("ACTION (paper)") right after their method, by name."""
    base, _, variant = display.partition(" (")
    base = ORDER_ALIASES.get(base, base)
    return (0, PAPER_ORDER.index(base), variant) if base in PAPER_ORDER else (1, 0, display.lower())


def setting_order(setting: str) -> tuple:
    """"3 labeled" < "7 labeled" < "5% labeled" < "10% labeled" < anything else."""
    m = re.match(r"\s*(\d+(?:\.\d+)?)\s*(%?)", setting)
    if m:
        return (1 if m.group(2) else 0, float(m.group(1)), setting)
    return (2, 0.0, setting)


def _dataset_class(name: str):
    try:
        from ssl_bench.registry import get_dataset_class

        return get_dataset_class(name)
    except Exception:
        return None


def class_order(dataset: str, found: Iterable[str]) -> list[str]:
    """Foreground classes in the dataset's ``class_names`` order, then any others by name."""
    found = [c for c in found if c != "mean"]
    cls = _dataset_class(dataset)
    names = getattr(cls, "class_names", None) if cls is not None else None
    # a class attribute list (a dataset that computes its names per instance has none here)
    known = list(names[1:]) if isinstance(names, (list, tuple)) else []
    ordered = [c for c in known if c in found]
    return ordered + sorted(c for c in found if c not in ordered)


def reference_name(dataset: str, reference: pd.DataFrame) -> str | None:
    """The real dataset whose published figures apply (``reference_name`` of the class)."""
    cls = _dataset_class(dataset)
    ref = getattr(cls, "reference_name", None) if cls is not None else None
    if isinstance(ref, str) and ref:
        return ref
    return dataset if dataset in set(reference["dataset"]) else None


def read_reference(name: str) -> pd.DataFrame:
    """A CSV of results/reference (package ``ssl_bench.reference``)."""
    text = resources.files("ssl_bench.reference").joinpath(name).read_text(encoding="utf-8")
    # figures stay strings, printed as the paper prints them (4.10, not 4.1)
    return pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False)


def published_rows() -> pd.DataFrame:
    """ACTION's Tables 1/2 and the later methods' rows in one frame (column ``source``)."""
    paper = read_reference("action_paper_main_tables.csv").assign(source=f"{PAPER}, Tables 1-2")
    return pd.concat([paper, read_reference(LATER_REFERENCE)], ignore_index=True).fillna("")


def column_values(runs: pd.DataFrame, column: str) -> list[float]:
    """The values of one metric column as floats (empty when no run has it)."""
    return [float(x) for x in runs[column]] if column in runs else []
