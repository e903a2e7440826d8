"""Slice-by-slice inference, case evaluation on an in-memory dataset, reports and MLflow names."""
import csv
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ssl_bench.datasets.base import Case
from ssl_bench.evaluate import evaluate_cases, mlflow_metrics, predict_volume, write_eval
from ssl_bench.metrics import METRICS, RULE_BOTH_EMPTY, RULE_BOTH_PRESENT, case_metrics


def threshold_logits(x):
    """Two classes: class 1 where the intensity is above 0.5."""
    return torch.cat([0.5 - x, x - 0.5], dim=1) * 20


class NearestIntensity(nn.Module):
    """Class c wins where the intensity is closest to c (a label volume cast to float is segmented
    exactly). Records its mode, grad state and batch sizes on each call."""

    def __init__(self, num_classes=3):
        super().__init__()
        self.num_classes = num_classes
        self.calls = []

    def forward(self, x):
        self.calls.append({"training": self.training, "grad": torch.is_grad_enabled(), "batch": x.shape[0],
                           "size": tuple(x.shape[-2:])})
        return torch.cat([-50 * (x - c) ** 2 for c in range(self.num_classes)], dim=1)


def test_predict_volume_non_square_grid_with_known_logits():
    image = np.zeros((3, 20, 28), np.float32)
    image[0] = 1.0
    image[2, :, 14:] = 1.0  # right half bright
    pred = predict_volume(threshold_logits, image, image_size=16, device="cpu")
    assert pred.shape == (3, 20, 28) and pred.dtype == np.uint8
    assert (pred[0] == 1).all() and (pred[1] == 0).all()
    # away from the edge the resize round trip blurs, halves are exact
    assert (pred[2, :, :12] == 0).all() and (pred[2, :, 16:] == 1).all()


def test_predict_volume_eval_mode_no_grad_batches_and_mode_restored():
    net = NearestIntensity().train()
    label = np.random.default_rng(0).integers(0, 3, size=(5, 16, 16))
    pred = predict_volume(net, label.astype(np.float32), image_size=16, device="cpu", batch_size=2)
    assert [c["batch"] for c in net.calls] == [2, 2, 1]
    assert all(not c["training"] and not c["grad"] and c["size"] == (16, 16) for c in net.calls)
    assert net.training  # the caller's mode is restored
    np.testing.assert_array_equal(pred, label)  # same grid: no resize, exact


def test_predict_volume_resizes_probabilities_back_before_argmax():
    torch.manual_seed(0)
    net = nn.Conv2d(1, 3, 3, padding=1)
    image = np.random.default_rng(1).standard_normal((4, 12, 18)).astype(np.float32)
    x = torch.from_numpy(image)[:, None]
    with torch.no_grad():
        probs = net(F.interpolate(x, size=(8, 8), mode="bilinear", align_corners=False)).softmax(1)
        expected = F.interpolate(probs, size=(12, 18), mode="bilinear", align_corners=False).argmax(1)
    for batch_size in (1, 3, 16):
        pred = predict_volume(net, image, image_size=8, device="cpu", batch_size=batch_size)
        np.testing.assert_array_equal(pred, expected.numpy().astype(np.uint8))


def test_predict_volume_rejects_bad_input():
    with pytest.raises(ValueError, match=r"\(Z, Y, X\)"):
        predict_volume(threshold_logits, np.zeros((4, 4), np.float32), 8, "cpu")
    with pytest.raises(ValueError, match="logits"):
        predict_volume(lambda x: x[:, 0], np.zeros((2, 4, 4), np.float32), 8, "cpu")


class FakeDataset:
    class_names = ["background", "A", "B"]

    def __init__(self):
        sq = np.zeros((4, 16, 16), np.uint8)
        sq[1:3, 3:9, 4:12] = 1
        sq[0:2, 10:14, 2:6] = 2
        rect = np.zeros((3, 12, 20), np.uint8)  # no class B: both empty for B
        rect[:, 2:10, 3:15] = 1
        self.cases = {"sq": (sq, (10.0, 1.0, 1.0)), "rect": (rect, (5.0, 0.8, 0.6))}

    def load_case(self, case_id):
        label, spacing = self.cases[case_id]
        return Case(case_id=case_id, patient_id=case_id, image=label.astype(np.float32), label=label,
                    spacing=spacing)


@pytest.fixture
def result():
    return evaluate_cases(NearestIntensity(), FakeDataset(), ["sq", "rect"], image_size=16, device="cpu",
                          progress=False)


def test_evaluate_cases_records_and_summary(result):
    assert [r["case_id"] for r in result.records] == ["sq", "rect"]
    assert result.class_names == FakeDataset.class_names
    sq = result.records[0]["classes"]
    assert sq["A"]["dice"] == 1.0 and sq["B"]["dice"] == 1.0 and sq["A"]["hd95_mm"] == 0.0
    rect = result.records[1]["classes"]
    assert rect["B"]["rule"] == RULE_BOTH_EMPTY and rect["A"]["rule"] == RULE_BOTH_PRESENT
    assert rect["A"]["dice"] > 0.9  # resized 12x20 <-> 16x16 only blurs the block's edge
    # the records are exactly the metrics of the predicted volume
    ds = FakeDataset()
    case = ds.load_case("rect")
    pred = predict_volume(NearestIntensity(), case.image, 16, "cpu")
    assert result.records[1]["classes"] == case_metrics(pred, case.label, ds.class_names, case.spacing)["classes"]
    summary = result.summary
    assert summary["classes"]["A"]["n"] == 2 and summary["classes"]["B"]["n"] == 1
    assert summary["classes"]["B"]["counts"][RULE_BOTH_EMPTY] == 1
    assert summary["classes"]["A"]["dice"] == pytest.approx((1.0 + rect["A"]["dice"]) / 2)
    assert summary["mean"]["dice"] == pytest.approx((summary["classes"]["A"]["dice"] + 1.0) / 2)


def test_evaluate_cases_with_progress_bar():
    res = evaluate_cases(NearestIntensity(), FakeDataset(), ["sq"], image_size=16, device="cpu", progress=True)
    assert res.summary["n_cases"] == 1


def test_write_eval_json_and_csv(result, tmp_path):
    json_path, csv_path = write_eval(result, tmp_path / "eval", "test_best")
    assert json_path.name == "test_best_summary.json" and csv_path.name == "test_best_per_case.csv"
    assert sorted(p.name for p in (tmp_path / "eval").iterdir()) == [csv_path.name, json_path.name]

    def no_nan(token):
        raise AssertionError(f"non-standard JSON constant {token}")

    doc = json.loads(json_path.read_text(), parse_constant=no_nan)
    assert {"policy", "per_case", "classes", "mean"} <= set(doc)
    assert "both_empty" in doc["policy"]
    assert [r["case_id"] for r in doc["per_case"]] == ["sq", "rect"]
    assert doc["per_case"][1]["classes"]["B"]["dice"] is None  # NaN -> null
    assert doc["classes"]["A"]["n"] == 2
    assert doc["mean"]["dice"] == pytest.approx(result.summary["mean"]["dice"])

    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["case_id"], r["class"]) for r in rows] == [("sq", "A"), ("sq", "B"), ("rect", "A"), ("rect", "B")]
    assert set(METRICS) <= set(rows[0])
    assert rows[3]["rule"] == RULE_BOTH_EMPTY and rows[3]["dice"] == ""
    assert float(rows[2]["asd_mm"]) == result.records[1]["classes"]["A"]["asd_mm"]


def test_mlflow_metric_names(result):
    flat = mlflow_metrics(result.summary, "test/best")
    assert flat["test/best/n/A"] == 2.0 and flat["test/best/n/B"] == 1.0 and flat["test/best/n/mean"] == 2.0
    assert flat["test/best/dice/A"] == result.summary["classes"]["A"]["dice"]
    assert flat["test/best/hd95_mm/mean"] == result.summary["mean"]["hd95_mm"]
    for metric in METRICS:
        for cls in ("A", "B", "mean"):
            assert f"test/best/{metric}/{cls}" in flat
    assert all(isinstance(v, float) and math.isfinite(v) for v in flat.values())
    assert len(flat) == 3 * (len(METRICS) + 1)


def test_mlflow_metrics_leave_out_undefined_means():
    summary = {"classes": {"A": {"n": 0, **{m: math.nan for m in METRICS}}},
               "mean": {"n": 0, **{m: math.nan for m in METRICS}}}
    assert mlflow_metrics(summary, "test/last/") == {"test/last/n/A": 0.0, "test/last/n/mean": 0.0}


class BlobDataset:
    """Cases of different shapes with random blobs of two classes (one case without class B)."""

    class_names = ["background", "A", "B"]

    def __init__(self, n=5):
        from scipy import ndimage

        rng = np.random.default_rng(0)
        self.cases = {}
        for i in range(n):
            shape = (int(rng.integers(3, 7)), int(rng.integers(12, 30)), int(rng.integers(12, 30)))
            field = ndimage.gaussian_filter(rng.standard_normal(shape), 1.5)
            label = np.digitize(field, np.quantile(field, [0.6, 0.85])).astype(np.uint8)
            if i == 2:
                label[label == 2] = 1
            image = label + rng.normal(0, 0.35, shape).astype(np.float32)  # noisy: imperfect predictions
            self.cases[f"c{i}"] = Case(f"c{i}", f"p{i}", image.astype(np.float32), label,
                                       tuple(float(s) for s in rng.uniform(0.5, 5, 3)))

    def load_case(self, case_id):
        return self.cases[case_id]


def test_fast_evaluation_equals_the_serial_one_case_after_another():
    """Batched inference and metrics in two spawned processes give exactly the records of the
    plain loop: each slice alone through the network, then case_metrics, case after case."""
    ds, ids = BlobDataset(), ["c0", "c1", "c2", "c3", "c4"]
    reference = []
    for case_id in ids:
        case = ds.load_case(case_id)
        pred = predict_volume(NearestIntensity(), case.image, 16, "cpu", batch_size=1)
        reference.append({"case_id": case_id, **case_metrics(pred, case.label, ds.class_names, case.spacing)})
    fast = evaluate_cases(NearestIntensity(), ds, ids, image_size=16, device="cpu", progress=False,
                          batch_size=16, workers=2)
    assert json.dumps(fast.records) == json.dumps(reference)  # NaN-aware, order included
    assert any(0 < r["classes"]["A"]["dice"] < 1 for r in reference)  # not trivially perfect
    assert fast.records[2]["classes"]["B"]["rule"] != RULE_BOTH_PRESENT
    serial = evaluate_cases(NearestIntensity(), ds, ids, image_size=16, device="cpu", progress=False, workers=1)
    assert json.dumps(serial.summary) == json.dumps(fast.summary)
