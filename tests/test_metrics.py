"""ssl_bench.metrics against medpy (the oracle) and against hand-computed values."""
import math

import numpy as np
import pytest
from medpy.metric import binary as medpy_binary
from scipy import ndimage

from ssl_bench.metrics import (
    METRICS,
    RULE_BOTH_EMPTY,
    RULE_BOTH_PRESENT,
    RULE_LABEL_EMPTY,
    RULE_PRED_EMPTY,
    aggregate,
    case_metrics,
    volume_diagonal,
)

CLASSES = ["background", "A", "B"]


def _blobs(rng, shape, n_classes=3):
    """Smooth random label volume with ``n_classes`` classes (blobs touching the border too)."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape), 1.5)
    edges = np.quantile(field, np.linspace(0, 1, n_classes + 1)[1:-1])
    return np.digitize(field, edges).astype(np.uint8)


def _medpy(pred, label, spacing):
    vox = dict(voxelspacing=None, connectivity=1)
    mm = dict(voxelspacing=spacing, connectivity=1)
    return {
        "dice": medpy_binary.dc(pred, label),
        "asd_vox": medpy_binary.asd(pred, label, **vox),
        "hd95_vox": medpy_binary.hd95(pred, label, **vox),
        "assd_vox": medpy_binary.assd(pred, label, **vox),
        "asd_mm": medpy_binary.asd(pred, label, **mm),
        "hd95_mm": medpy_binary.hd95(pred, label, **mm),
        "assd_mm": medpy_binary.assd(pred, label, **mm),
    }


@pytest.mark.parametrize("seed", range(6))
def test_random_multiclass_volumes_match_medpy(seed):
    rng = np.random.default_rng(seed)
    shape = tuple(int(n) for n in rng.integers(5, 24, size=3))
    spacing = tuple(float(s) for s in rng.uniform(0.3, 8.0, size=3))  # anisotropic (z, y, x)
    label, pred = _blobs(rng, shape), _blobs(rng, shape)
    result = case_metrics(pred, label, CLASSES, spacing)
    assert result["shape"] == list(shape) and result["spacing"] == list(spacing)
    for index, name in enumerate(CLASSES[1:], start=1):
        p, lab = pred == index, label == index
        assert p.any() and lab.any()
        row = result["classes"][name]
        assert row["rule"] == RULE_BOTH_PRESENT
        assert row["pred_voxels"] == p.sum() and row["label_voxels"] == lab.sum()
        for metric, expected in _medpy(p, lab, spacing).items():
            assert row[metric] == pytest.approx(expected, rel=0, abs=1e-12), (name, metric)  # same values


def test_small_object_far_from_a_large_one_matches_medpy():
    """Masks far apart inside a large volume (the bounding-box crop must not change anything)."""
    label = np.zeros((12, 40, 33), np.uint8)
    label[2:5, 3:9, 4:7] = 1
    pred = np.zeros_like(label)
    pred[8:12, 30:40, 20:33] = 1  # touches three volume borders
    pred[6, 20, 10] = 1  # an isolated voxel
    spacing = (5.0, 0.7, 1.3)
    row = case_metrics(pred, label, ["bg", "fg"], spacing)["classes"]["fg"]
    for metric, expected in _medpy(pred.astype(bool), label.astype(bool), spacing).items():
        assert row[metric] == pytest.approx(expected, abs=1e-6), metric


def test_single_voxels_hand_computed():
    label = np.zeros((5, 6, 9), np.uint8)
    pred = np.zeros_like(label)
    label[2, 3, 7] = 1
    pred[2, 3, 4] = 1  # 3 voxels away along x
    row = case_metrics(pred, label, ["bg", "fg"], (5.0, 1.0, 0.5))["classes"]["fg"]
    assert row["dice"] == 0.0
    for metric in ("asd", "hd95", "assd"):
        assert row[f"{metric}_vox"] == pytest.approx(3.0)
        assert row[f"{metric}_mm"] == pytest.approx(1.5)


def test_cube_with_a_bump_hand_computed_and_directed():
    """A 3x3x3 cube; the prediction adds one voxel on the +x face centre.

    Prediction surface: 26 voxels (the face centre becomes interior, the bump is surface); label
    surface: the cube's 26 border voxels. Only the bump (pred -> label) and the old face centre
    (label -> pred) are off by one voxel along x (0.5 mm): the other 50 distances are 0.
    """
    label = np.zeros((6, 6, 6), np.uint8)
    label[1:4, 1:4, 1:4] = 1
    pred = label.copy()
    pred[2, 2, 4] = 1
    row = case_metrics(pred, label, ["bg", "fg"], (2.0, 1.0, 0.5))["classes"]["fg"]
    assert row["dice"] == pytest.approx(54 / 55)
    assert row["asd_vox"] == pytest.approx(1 / 26)
    assert row["asd_mm"] == pytest.approx(0.5 / 26)
    assert row["assd_vox"] == pytest.approx(2 / 52)
    assert row["assd_mm"] == pytest.approx(1.0 / 52)
    assert row["hd95_vox"] == 0.0 and row["hd95_mm"] == 0.0  # 95th percentile of 50 zeros, two ones
    # asd is directed: swapping prediction and label changes it only through the surfaces compared
    swapped = case_metrics(label, pred, ["bg", "fg"], (2.0, 1.0, 0.5))["classes"]["fg"]
    assert swapped["asd_vox"] == pytest.approx(1 / 26)
    assert swapped["assd_vox"] == pytest.approx(row["assd_vox"])


def test_identical_masks_are_perfect():
    label = _blobs(np.random.default_rng(3), (6, 14, 10))
    result = case_metrics(label, label, CLASSES, (3.0, 1.0, 1.0))
    for row in result["classes"].values():
        assert row["dice"] == 1.0
        assert all(row[m] == 0.0 for m in METRICS if m != "dice")


# -- the empty-mask policy ---------------------------------------------------------------------
SHAPE, SPACING = (4, 10, 12), (2.5, 0.5, 1.0)
DIAG_VOX = math.sqrt(4**2 + 10**2 + 12**2)
DIAG_MM = math.sqrt(10.0**2 + 5.0**2 + 12.0**2)


def test_volume_diagonal():
    assert volume_diagonal(SHAPE, (1, 1, 1)) == pytest.approx(DIAG_VOX)
    assert volume_diagonal(SHAPE, SPACING) == pytest.approx(DIAG_MM)


def _policy_case():
    """Class A: label only (pred_empty); class B: prediction only (label_empty); C: neither."""
    label = np.zeros(SHAPE, np.uint8)
    pred = np.zeros(SHAPE, np.uint8)
    label[1:3, 2:5, 2:6] = 1
    pred[0:2, 6:9, 7:10] = 2
    return case_metrics(pred, label, ["bg", "A", "B", "C"], SPACING)["classes"]


def test_prediction_empty_is_a_total_miss():
    row = _policy_case()["A"]
    assert row["rule"] == RULE_PRED_EMPTY and row["pred_voxels"] == 0 and row["label_voxels"] == 24
    assert row["dice"] == 0.0
    for metric in ("asd", "hd95", "assd"):
        assert row[f"{metric}_vox"] == pytest.approx(DIAG_VOX)
        assert row[f"{metric}_mm"] == pytest.approx(DIAG_MM)


def test_label_empty_is_penalised_like_a_miss():
    row = _policy_case()["B"]
    assert row["rule"] == RULE_LABEL_EMPTY and row["pred_voxels"] == 18 and row["label_voxels"] == 0
    assert row["dice"] == 0.0
    assert row["hd95_vox"] == pytest.approx(DIAG_VOX) and row["asd_mm"] == pytest.approx(DIAG_MM)


def test_both_empty_is_undefined():
    row = _policy_case()["C"]
    assert row["rule"] == RULE_BOTH_EMPTY
    assert all(math.isnan(row[m]) for m in METRICS)


def test_penalty_exceeds_any_real_distance():
    """A total miss must score worse than the worst real prediction in the same volume."""
    label = np.zeros(SHAPE, np.uint8)
    pred = np.zeros(SHAPE, np.uint8)
    label[0, 0, 0] = 1
    pred[-1, -1, -1] = 1  # opposite corners: the largest possible real distance
    real = case_metrics(pred, label, ["bg", "fg"], SPACING)["classes"]["fg"]
    miss = case_metrics(np.zeros_like(label), label, ["bg", "fg"], SPACING)["classes"]["fg"]
    for metric in ("asd_vox", "hd95_vox", "asd_mm", "hd95_mm"):
        assert miss[metric] > real[metric]


@pytest.mark.parametrize("bad, match", [
    (dict(pred=np.zeros((2, 3, 4), np.uint8)), "differs from label shape"),
    (dict(pred=np.zeros((3, 4), np.uint8), label=np.zeros((3, 4), np.uint8)), "3D"),
    (dict(spacing=(1.0, 1.0)), "three positive"),
    (dict(spacing=(1.0, 0.0, 1.0)), "three positive"),
    (dict(label=np.full((2, 3, 5), 3, np.uint8)), "class indices"),
])
def test_bad_inputs_are_named(bad, match):
    args = dict(pred=np.zeros((2, 3, 5), np.uint8), label=np.zeros((2, 3, 5), np.uint8),
                class_names=CLASSES, spacing=(1.0, 1.0, 1.0))
    args.update(bad)
    with pytest.raises(ValueError, match=match):
        case_metrics(**args)


# -- aggregation -------------------------------------------------------------------------------
def _row(rule, dice, dist):
    row = {"rule": rule, "pred_voxels": 1, "label_voxels": 1, "dice": dice}
    row.update({m: dist for m in METRICS if m != "dice"})
    return row


NAN = math.nan
RECORDS = [
    {"case_id": "c1", "classes": {"A": _row(RULE_BOTH_PRESENT, 1.0, 0.0), "B": _row(RULE_BOTH_PRESENT, 0.5, 2.0),
                                  "C": _row(RULE_BOTH_EMPTY, NAN, NAN)}},
    {"case_id": "c2", "classes": {"A": _row(RULE_PRED_EMPTY, 0.0, 10.0), "B": _row(RULE_BOTH_EMPTY, NAN, NAN),
                                  "C": _row(RULE_BOTH_EMPTY, NAN, NAN)}},
    {"case_id": "c3", "classes": {"A": _row(RULE_BOTH_PRESENT, 0.8, 1.0), "B": _row(RULE_LABEL_EMPTY, 0.0, 10.0),
                                  "C": _row(RULE_BOTH_EMPTY, NAN, NAN)}},
    {"case_id": "c4", "classes": {"A": _row(RULE_BOTH_EMPTY, NAN, NAN), "B": _row(RULE_BOTH_EMPTY, NAN, NAN),
                                  "C": _row(RULE_BOTH_EMPTY, NAN, NAN)}},
]


def test_aggregate_per_class_means_std_n_and_counts():
    summary = aggregate(RECORDS, ["bg", "A", "B", "C"])
    assert summary["n_cases"] == 4
    a, b, c = (summary["classes"][k] for k in "ABC")
    assert a["n"] == 3 and b["n"] == 2 and c["n"] == 0
    assert a["dice"] == pytest.approx(0.6)
    assert a["dice_std"] == pytest.approx(math.sqrt(0.56 / 3))  # population std of 1, 0, 0.8
    assert a["asd_vox"] == pytest.approx(11 / 3)
    assert b["dice"] == pytest.approx(0.25) and b["dice_std"] == pytest.approx(0.25)
    assert b["hd95_mm"] == pytest.approx(6.0)
    assert math.isnan(c["dice"]) and math.isnan(c["dice_std"])
    assert a["counts"] == {RULE_BOTH_PRESENT: 2, RULE_BOTH_EMPTY: 1, RULE_PRED_EMPTY: 1, RULE_LABEL_EMPTY: 0}
    assert b["counts"] == {RULE_BOTH_PRESENT: 1, RULE_BOTH_EMPTY: 2, RULE_PRED_EMPTY: 0, RULE_LABEL_EMPTY: 1}
    assert c["counts"][RULE_BOTH_EMPTY] == 4


def test_aggregate_mean_over_foreground_classes():
    summary = aggregate(RECORDS, ["bg", "A", "B", "C"])
    mean = summary["mean"]
    # class C (never defined) is left out; c4 defines no class, so it is not in mean's n
    assert mean["dice"] == pytest.approx((0.6 + 0.25) / 2)
    assert mean["asd_vox"] == pytest.approx((11 / 3 + 6.0) / 2)
    assert mean["n"] == 3
    # std over cases of each case's mean over its defined classes: 0.75, 0.0, 0.4
    assert mean["dice_std"] == pytest.approx(np.std([0.75, 0.0, 0.4]))
    assert mean["counts"] == {RULE_BOTH_PRESENT: 3, RULE_BOTH_EMPTY: 7, RULE_PRED_EMPTY: 1, RULE_LABEL_EMPTY: 1}


def test_aggregate_of_real_cases_uses_the_penalty():
    label = np.zeros(SHAPE, np.uint8)
    label[1:3, 2:5, 2:6] = 1
    hit = case_metrics(label, label, ["bg", "A"], SPACING)
    miss = case_metrics(np.zeros_like(label), label, ["bg", "A"], SPACING)
    summary = aggregate([hit, miss], ["bg", "A"])
    assert summary["classes"]["A"]["n"] == 2
    assert summary["classes"]["A"]["dice"] == pytest.approx(0.5)
    assert summary["classes"]["A"]["asd_mm"] == pytest.approx(DIAG_MM / 2)
    assert summary["mean"]["hd95_vox"] == pytest.approx(DIAG_VOX / 2)


def test_aggregate_rejects_records_of_other_classes():
    with pytest.raises(ValueError, match="has no class 'D'"):
        aggregate(RECORDS, ["bg", "A", "D"])
