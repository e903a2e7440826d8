"""Protocols: named, versioned bundles that fix how *every* method of a table is trained.

A result means something only together with the recipe that produced it. The published rows of
ACTION's Table 1 (You et al., IPMI 2023) came from the field's recipe (SSL4MIS-style code for the
baselines, the authors' released configuration for ACTION), not from each paper's defaults; a
protocol names such a recipe so that a table compares like with like.

A protocol is data, not code paths: it resolves to ``--set`` overrides (train keys and
``method.`` keys), a budget scale and the checkpoint a table reports. The engine never sees the
protocol's name, only the resolved config. Resolution, lowest to highest priority:

    TrainConfig defaults < protocol.train < the dataset's train_defaults (phantom CPU presets)
        < the protocol's recipe for the method < the run's own --set

so a phantom keeps its CPU-sized batch and budget under every protocol, and a user's ``--set``
always wins. ``budget_scale`` multiplies the base budget (``iterations``, i.e. ``--iterations``
or the preset): under ``field`` ACTION trains 30k iterations *per stage* (3 x the baselines'
30k), as its authors' released scripts do.

Changing what a protocol sets changes its results: bump its ``version`` (a test pins a
fingerprint of every protocol's content to its version). The version is part of the run-dir
path and an MLflow tag, so runs of different versions never mix in a table. Older versions stay
selectable as ``name-vN`` (``--protocol field-v1``); the bare name means the newest version.

``field`` v2 (issue 16) closes every knob v1 left at the harness's defaults with a train key that
has a meaning of its own (the engine never sees the protocol): ``augment.mode=ssl4mis`` (SSL4MIS's
RandomGenerator; ACTION released: ``augment.mode=none`` and its release's strong view),
``dice_form=squared``, ``eval_resample=nearest``, ``empty_asd=zero`` and CPS's default init.

The ``field`` recipe's sources (see README "Protocols"): SSL4MIS (HiLab-git/SSL4MIS,
``code/train_*_2D.py``: consistency 0.1 * sigmoid_rampup(iter // 150, 200) over 30k iterations,
batch 12 + 12 at 256 px, best-on-validation model tested), ACTION's release
(charlesyou999648/ACTION) and BCP's ACDC code (DeepMed-Lab-ECNU/BCP).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Mapping

from ssl_bench.config import ConfigError


@dataclass(frozen=True)
class Recipe:
    """What a protocol sets for one method."""

    overrides: Mapping[str, str] = field(default_factory=dict)  # --set keys (train and method.*)
    budget_scale: float = 1.0  # total gradient steps = base budget x this
    checkpoint: str = "best"  # which test checkpoint a table reports: best (on val) or last
    source: str = ""  # where the recipe comes from (printed by `ssl-bench protocols`)


@dataclass(frozen=True)
class Protocol:
    name: str
    version: int
    summary: str
    budget_rule: str  # printed under every table of this protocol
    train: Mapping[str, str] = field(default_factory=dict)  # paper-scale training defaults
    default: Recipe = field(default_factory=Recipe)  # for methods without a recipe of their own
    methods: Mapping[str, Recipe] = field(default_factory=dict)
    #: the paper's published rows were produced under this protocol (``--with-published``)
    published: bool = False
    #: reference rows of its tables besides the upper bound UNet-F (``table.significance.is_bound``):
    #: printed and compared against, never ranked for bold (e.g. a lower bound). A table matter,
    #: not training: left out of the fingerprint.
    bounds: tuple[str, ...] = ()

    @property
    def tag(self) -> str:
        """``name-vN``: the run-dir path segment and the table label."""
        return f"{self.name}-v{self.version}"

    def recipe(self, method: str) -> Recipe:
        return self.methods.get(method, self.default)

    def overrides(self, method: str, dataset_defaults: Mapping[str, str] | None,
                  user: Mapping[str, str]) -> dict[str, str]:
        """The merged ``--set`` overrides of one run (see the module docstring for the order)."""
        rec = self.recipe(method)
        merged = {**self.train, **(dataset_defaults or {})}
        if rec.budget_scale != 1.0:
            merged["budget_scale"] = str(rec.budget_scale)
        merged["report_checkpoint"] = rec.checkpoint
        merged.update(rec.overrides)
        merged.update(user)
        return {k: str(v) for k, v in merged.items()}

    def fingerprint(self) -> str:
        """A hash of everything the protocol sets (tests pin it to the version)."""
        content = asdict(self)
        content.pop("version")
        content.pop("bounds")  # which rows compete for bold: tables only, the runs are the same
        return hashlib.sha1(json.dumps(content, sort_keys=True, default=str).encode()).hexdigest()[:12]


# -- the protocols ------------------------------------------------------------------------------------
PAPER_SCALE = {"iterations": "30000", "labeled_bs": "12", "unlabeled_bs": "12"}

#: SSL4MIS's shared schedule: 0.1 * sigmoid_rampup(iter // 150, 200) over 30k iterations
SSL4MIS_RAMP = {"rampup.length": "1.0", "rampup.quantum": "0.005"}
SSL4MIS = "SSL4MIS code/train_*_2D.py (HiLab-git/SSL4MIS)"


def _ssl4mis(**method_keys: str) -> Recipe:
    keys = {f"method.{k}": v for k, v in method_keys.items()}
    return Recipe({**SSL4MIS_RAMP, **keys}, source=SSL4MIS)


PAPER = Protocol(
    name="paper", version=1,
    summary="each method's own paper defaults under the harness's budget rule (the default of `run`)",
    budget_rule="equal total gradient steps including pre-training stages (stage split by each paper); "
                "each method's paper hyperparameters; best-on-validation checkpoint",
    train=PAPER_SCALE,
)

EQUAL = Protocol(
    name="equal", version=1,
    summary="paper defaults, strictly compute-fair: same steps, batch and data stream for every method",
    budget_rule="equal total gradient steps including pre-training stages, and the same labeled + "
                "unlabeled slices drawn at every step for every method (one data stream per seed; "
                "methods that use no unlabeled data draw and discard them); best-on-validation checkpoint",
    train={**PAPER_SCALE, "draw_unlabeled": "true"},
)

# -- field recipes of the methods after ACTION (issue 20): the authors' released ACDC configurations --
# (a block of its own: merged into field v2 only, so that v1 stays as its runs trained; each source
# names the file and commit read)
SOTA_FIELD_RECIPES = {
    "abd": Recipe({"method.variant": "released", "poly_power": "0"}, budget_scale=4 / 3,
                  source="ABD release (chy-upc/ABD code/train_ACDC_BCP.py at 4efd525): BCP's 10k pre-training + "
                         "30k self-training at constant lr 0.01, 12 + 12 slices, ABD-R only, largest connected "
                         "component, student 1's best-on-validation model tested"),
    "ad-mt": Recipe({"rampup.quantum": "0.005"},
                    source="AD-MT release (ZhenZHAO/AD-MT cfgs/config_2d_aut.yml and code/train_post_2d_aut.py "
                           "at 03ef84c): 30k iterations at 12 + 12, poly lr, weight 2.0 * sigmoid_rampup(iter // "
                           "150, 50), confidence 0.95, random periods up to 50; the best-on-validation student "
                           "tested (test_2d.sh --flag_check_with_best_stu)"),
    "unimatch": Recipe({"method.variant": "medical", "unlabeled_bs": "24"},
                       source="UniMatch medical release (LiheYoung/UniMatch more-scenarios/medical/unimatch.py and "
                              "configs/acdc.yaml at 0324f3d): 300 epochs of the unlabeled set (about 30k "
                              "iterations) at 12 labeled + 12 unlabeled + 12 unlabeled to mix from, poly lr 0.01, "
                              "Dice above confidence 0.95, best epoch on the validation list (no test script)"),
    "ssnet": Recipe({**SSL4MIS_RAMP, "method.variant": "released", "poly_power": "0"},
                    source="SS-Net release (ycwu1997/SS-Net code/train_ss_2d.py at c0a8bf6): 30k iterations at "
                           "12 + 12, constant lr 0.01, Dice loss alone as supervised term, weight 0.1 * "
                           "sigmoid_rampup(iter // 150, 200) on L_lds + 0.1 (L_c^l + L_c^u), VAT magnitude 6, "
                           "32 prototypes per class, best-on-validation model tested (test_ACDC.py)"),
    "mcnet": Recipe({**SSL4MIS_RAMP, "poly_power": "0", "method.consistency": "0.1", "method.rampup": "1.0",
                     "method.lamda": "1.0", "method.dice_classes": "all", "method.test_decoder": "linear"},
                    source="MC-Net+ ACDC release (ycwu1997/MC-Net code/train_mcnet_2d.py with --model mcnet2d_v2, "
                           "train_mcnet_2d.sh, at fee453c): 30k iterations at 12 + 12, constant lr 0.01, lamda 1 on "
                           "the Dice loss of every class, consistency 0.1 * sigmoid_rampup(iter // 150, 200), "
                           "T 0.1, the bilinear first decoder tested (test_2d.py), best on validation"),
}

FIELD_V1 = Protocol(
    name="field", version=1,
    summary="the recipe behind the published rows: SSL4MIS baselines, ACTION and BCP as their authors ran them",
    budget_rule="30k iterations at 12 + 12 slices for the SSL4MIS baselines (ramp 0.1 * sigmoid(iter // 150, "
                "200)); ACTION 30k per stage at 4 + 4 (3 x the base budget); BCP 10k pre-training + 30k "
                "self-training at constant lr (4/3 x); the checkpoint each source tests (ACTION: last; others: "
                "best on validation)",
    train=PAPER_SCALE,
    default=Recipe(source="each method's paper defaults (no field code for it)"),
    methods={
        # supervised baselines: SSL4MIS's train_fully_supervised_2D.py samples its whole batch
        # from the labeled slices
        "unet-l": Recipe({"supervised_whole_batch": "true"}, source=SSL4MIS),
        "unet-f": Recipe({"supervised_whole_batch": "true"}, source=SSL4MIS),
        "mt": Recipe({**SSL4MIS_RAMP, "rampup.delay": "0.0333", "method.variant": "ssl4mis"}, source=SSL4MIS),
        "uamt": _ssl4mis(variant="ln2"),
        "em": _ssl4mis(variant="ssl4mis"),
        "cct": _ssl4mis(variant="ssl4mis"),
        "dan": _ssl4mis(),
        "urpc": _ssl4mis(variant="ssl4mis"),
        "dct": _ssl4mis(variant="rotation"),
        "ict": _ssl4mis(variant="ssl4mis"),
        # the Kaiming/Xavier init v1 ran (named ssl4mis until issue 16 gave ssl4mis the default init)
        "cps": _ssl4mis(variant="ssl4mis-2021"),
        "action": Recipe({"method.variant": "released", "labeled_bs": "4", "unlabeled_bs": "4"}, budget_scale=3.0, checkpoint="last",
                         source="ACTION release (charlesyou999648/ACTION code/train_2D.sh): 30k iterations per "
                                "stage, stage iii at 4 + 4 slices (stages i/ii ran 3 + 3), no validation: the "
                                "last stage-iii student is tested"),
        "bcp": Recipe({"method.variant": "lcc", "poly_power": "0"}, budget_scale=4 / 3,
                      source="BCP ACDC code (DeepMed-Lab-ECNU/BCP code/ACDC_BCP_train.py at b62b10b): 10k "
                             "pre-training + 30k self-training at constant lr 0.01, largest connected component, "
                             "best-on-validation model tested"),
    },
    published=True,
)

#: what v2 sets for every method on top of its v1 recipe (README "Protocols", issue 16)
FIELD_V2_COMMON = {
    "augment.mode": "ssl4mis",  # SSL4MIS RandomGenerator @08c8c8b (BCP's loader is the same form)
    "dice_form": "squared",  # SSL4MIS/BCP/ACTION utils/losses.py: Σp² + Σy²
    "eval_resample": "nearest",  # test_2D_fully.py / ACTION test_2D.py / BCP test_ACDC.py: zoom(order=0)
    "empty_asd": "zero",  # ACTION test_2D.py and BCP test_ACDC.py score an empty prediction ASD 0
}


def _v2(recipe: Recipe, **extra: str) -> Recipe:
    return Recipe({**recipe.overrides, **FIELD_V2_COMMON, **extra}, budget_scale=recipe.budget_scale,
                  checkpoint=recipe.checkpoint, source=recipe.source)


FIELD = Protocol(
    name="field", version=2,
    summary="the recipe behind the published rows, v1 plus every knob v1 left at ssl-bench's defaults set "
            "as upstream: SSL4MIS augmentation (ACTION released: none), squared soft Dice, nearest test "
            "resampling, ASD 0 for an empty prediction, CPS default init",
    budget_rule=FIELD_V1.budget_rule,
    train=FIELD_V1.train,
    default=_v2(FIELD_V1.default),
    methods={
        **{m: _v2(r) for m, r in FIELD_V1.methods.items()},
        # the release: no rot/flip (commented out), stage-iii student = CutMix then jitter + blur
        # and Nesterov SGD (code/train_2D_action.py)
        "action": _v2(FIELD_V1.methods["action"], **{"augment.mode": "none", "method.strong_view": "released",
                                                     "nesterov": "true"}),
        "cps": _v2(_ssl4mis(variant="ssl4mis")),  # default init: SSL4MIS since 9a74d15 (2021-12-16)
        **{m: _v2(r) for m, r in SOTA_FIELD_RECIPES.items()},
    },
    published=True,
)

#: every version of every protocol, by name then version
from ssl_bench.protocols_la import LA_DATASETS, LA_PROTOCOLS  # noqa: E402  (the 3D track's protocols)

VERSIONS: dict[str, dict[int, Protocol]] = {}
for _p in (FIELD_V1, FIELD, PAPER, EQUAL, *LA_PROTOCOLS):
    VERSIONS.setdefault(_p.name, {})[_p.version] = _p
#: the newest version of each protocol (what the bare name selects)
PROTOCOLS: dict[str, Protocol] = {n: v[max(v)] for n, v in VERSIONS.items()}


def check_protocol_dataset(protocol: str, dataset: str, three_d: bool) -> None:
    """Refuse a protocol on a dataset it was not written for: ``la-*`` off the LA datasets, and the
    2D ``field`` recipe (SSL4MIS's 30k iterations at 12 + 12 slices) on a 3D dataset."""
    if protocol.startswith("la-") and dataset not in LA_DATASETS:
        raise ConfigError(f"protocol {protocol} is the Left Atrium recipe; use it with --dataset "
                          f"{' or '.join(LA_DATASETS)} (for {dataset}: field, paper or equal)")
    if (protocol == "field" or protocol.startswith("field-v")) and three_d:
        raise ConfigError(f"protocol field is the 2D ACDC/LiTS recipe; on {dataset} use --protocol la-field "
                          f"(the published LA rows) or la-clean")


DEFAULT = "paper"


def _choices() -> str:
    older = [p.tag for n, v in VERSIONS.items() for p in v.values() if p is not PROTOCOLS[n]]
    return ", ".join([*PROTOCOLS, *older])


def get_protocol(name: str) -> Protocol:
    """``name`` (the newest version) or ``name-vN`` (that version)."""
    if name in PROTOCOLS:
        return PROTOCOLS[name]
    base, sep, version = name.rpartition("-v")
    if sep and version.isdigit() and int(version) in VERSIONS.get(base, {}):
        return VERSIONS[base][int(version)]
    raise ConfigError(f"unknown protocol {name!r}; choose one of {_choices()} "
                      f"(`ssl-bench protocols` lists what each sets)")


def protocol_by_tag(tag: str) -> Protocol | None:
    """The protocol of a run's ``name-vN`` tag, that exact version; None if this ssl-bench lacks it."""
    base, _, version = tag.rpartition("-v")
    return VERSIONS.get(base, {}).get(int(version)) if version.isdigit() else None


def list_protocols() -> list[Protocol]:
    """Every version of every protocol, newest first within a name."""
    return [p for v in VERSIONS.values() for _, p in sorted(v.items(), reverse=True)]
