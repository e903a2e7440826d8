"""``ssl-bench bench``: CLI wiring, report files and their schema, bad input, the reference step
and the GPU card script at a tiny size on the CPU (wiring and reports, not measurements)."""
import json

import pytest
import typer
from typer.testing import CliRunner

from ssl_bench.bench.anco import run
from ssl_bench.cli.bench import bench_app


def _app():
    app = typer.Typer()
    app.add_typer(bench_app, name="bench")  # as the main CLI mounts it
    return app


def test_bench_rejects_too_few_steps(tmp_path):
    with pytest.raises(ValueError, match="steps=1"):
        run(image_size=32, batch_size=1, steps=1, out_dir=tmp_path / "bench")
    assert not (tmp_path / "bench").exists()


@pytest.mark.slow
def test_bench_anco_cli_writes_reports(tmp_path):
    res = CliRunner().invoke(_app(), ["bench", "anco", "--image-size", "32", "--batch-size", "2", "--steps", "2",
                                      "--threads", "1", "--out-dir", str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert "AnCo adds" in res.output
    rep = json.loads((tmp_path / "anco_cpu.json").read_text())
    w, wo = rep["variants"]["with_anco"], rep["variants"]["without_anco"]
    assert w["ablation"] == "none" and wo["ablation"] == "no-anco"
    assert "anco" in w["last_terms"] and "anco" not in wo["last_terms"]
    assert w["trainable_parameters"] > wo["trainable_parameters"]  # H_r is trained only with AnCo
    for v in (w, wo):
        assert v["peak_bytes"] > v["step_peak_bytes"] > 0 and len(v["step_seconds"]) == 2
        assert v["cpu_seconds_per_step"] > 0
    md = (tmp_path / "anco_cpu.md").read_text()
    assert "| with AnCo (`none`) |" in md and "AnCo adds" in md
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


# -- steps -------------------------------------------------------------------------------------
def test_interleaved_medians_alternate_blocks_and_take_medians(monkeypatch):
    from ssl_bench.bench import steps

    monkeypatch.setattr(steps, "BLOCK", 2)
    order, a_times, b_times = [], iter([9, 1, 2, 3, 4, 100, 5]), iter([8, 10, 20, 30, 40, 50, 60])

    def a():
        order.append("a")
        return next(a_times)

    def b():
        order.append("b")
        return next(b_times)

    med_a, med_b = steps.interleaved_medians(a, b, steps=5, warmup=1)
    # warm-up a, b; then blocks of two: a a, b b, then b b, a a, then a a, b b (three rounds for 5 steps)
    assert order == ["a", "b", "a", "a", "b", "b", "b", "b", "a", "a", "a", "a", "b", "b"]
    assert med_a == 3 and med_b == 30  # medians of [1, 2, 3, 4, 100] and [10, 20, 30, 40, 50]


def test_steps_csv_of_another_schema_is_refused(tmp_path):
    from ssl_bench.bench.steps import merge_csv

    (tmp_path / "cpu.csv").write_text("method,seconds\nmt,1\n")
    with pytest.raises(ValueError, match="move it away"):
        merge_csv(tmp_path / "cpu.csv", [])
    assert (tmp_path / "cpu.csv").read_text() == "method,seconds\nmt,1\n"


@pytest.mark.slow
def test_bench_steps_cli_writes_the_schema_and_merges_settings(tmp_path):
    import csv

    from ssl_bench.bench.steps import COLUMNS

    args = ["bench", "steps", "--method", "unet-l", "--method", "mt", "--method", "gcl", "--image-size", "32",
            "--labeled-bs", "2", "--unlabeled-bs", "2", "--steps", "2", "--warmup", "1", "--threads", "1",
            "--out-dir", str(tmp_path)]
    res = CliRunner().invoke(_app(), args)
    assert res.exit_code == 0, res.output
    assert "ratio to UNet-L" in res.output  # the rich table
    with open(tmp_path / "cpu.csv", newline="") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == COLUMNS
        rows = list(reader)
    assert [(r["method"], r["stage"]) for r in rows] == [
        ("unet-l", "train"), ("mt", "train"), ("gcl", "global"), ("gcl", "local"), ("gcl", "finetune")]
    runs = json.loads((tmp_path / "cpu.json").read_text())["runs"]
    assert len(runs) == 1 and len(runs[0]["loadavg_before"]) == 3
    for r in rows:
        assert (r["device"], r["image_size"], r["labeled_bs"], r["unlabeled_bs"]) == ("cpu", "32", "2", "2")
        assert (r["amp"], r["channels_last"], r["compile"]) == ("False", "False", "False")
        ref = runs[0]["reference_median_s"][f"{r['method']}/{r['stage']}"]
        assert float(r["ratio_to_unet_l"]) == pytest.approx(float(r["median_step_s"]) / ref, rel=1e-3)
        assert float(r["peak_mem_mb"]) > 0
    md = (tmp_path / "cpu.md").read_text()
    assert "## 32 x 32, 2 + 2 slices, amp=False" in md and "mt (train) <= 1.3 x UNet-L" in md and "load average" in md
    # another setting adds rows; the same setting again replaces its rows
    for extra in (["--amp"], ["--amp"]):
        assert CliRunner().invoke(_app(), args[:3] + args[5:] + extra).exit_code == 0
    with open(tmp_path / "cpu.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert sorted((r["method"], r["amp"]) for r in rows if r["stage"] == "train") == [
        ("mt", "False"), ("mt", "True"), ("unet-l", "False")]
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_bench_on_a_missing_gpu_names_the_fix(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    res = CliRunner().invoke(_app(), ["bench", "steps", "--device", "cuda", "--out-dir", str(tmp_path)])
    assert res.exit_code == 2 and "CUDA is not available on this machine; use --device cpu" in res.output
    assert not list(tmp_path.iterdir())


# -- the plain reference Mean Teacher ------------------------------------------------------------
def test_reference_dice_loss_hand_computed():
    import torch

    from ssl_bench.bench.reference_mt import dice_loss_per_class

    probs = torch.tensor([[[[1.0, 0.0]], [[0.0, 1.0]]]])  # (1, 2 classes, 1, 2): a perfect prediction
    assert float(dice_loss_per_class(probs, torch.tensor([[[0, 1]]]), 2)) == pytest.approx(0.0, abs=1e-6)
    half = torch.full((1, 2, 1, 2), 0.5)
    # each class: 1 - (2 * 0.5 + eps) / (2 * 0.25 + 1 + eps)
    assert float(dice_loss_per_class(half, torch.tensor([[[0, 1]]]), 2)) == pytest.approx(1 - 1 / 1.5, rel=1e-4)


def test_reference_step_trains_logs_every_step_and_moves_the_teacher():
    import torch

    from ssl_bench.bench.reference_mt import ReferenceMeanTeacher

    ref = ReferenceMeanTeacher(32, 2, 2, "cpu")
    before = [p.detach().clone() for p in ref.ema_model.parameters()]
    batch = next(iter(ref.batches))
    assert batch["image"].shape == (4, 1, 32, 32) and batch["label"].shape == (4, 32, 32)  # zoomed to size
    ref.step()
    ref.step()
    assert len(ref.log) == 2 and all(len(x) == 3 for x in ref.log)  # loss, CE, Dice read every step
    assert any(not torch.equal(a, b) for a, b in zip(before, ref.ema_model.parameters()))


@pytest.mark.slow
def test_bench_reference_mt_cli_writes_the_comparison(tmp_path):
    res = CliRunner().invoke(_app(), ["bench", "reference-mt", "--image-size", "32", "--labeled-bs", "2",
                                      "--unlabeled-bs", "2", "--steps", "2", "--warmup", "1", "--out-dir", str(tmp_path)])
    assert res.exit_code == 0, res.output
    rep = json.loads((tmp_path / "cpu_reference_mt.json").read_text())
    assert rep["speedup"] == pytest.approx(rep["reference_median_s"] / rep["ssl_bench_median_s"])
    assert "plain reference (SSL4MIS recipe)" in (tmp_path / "cpu_reference_mt.md").read_text()


# -- eval --------------------------------------------------------------------------------------
def test_bench_eval_compares_values_with_medpy_and_times_a_test_set(tmp_path):
    res = CliRunner().invoke(_app(), ["bench", "eval", "--volume", "16,64,64", "--repeats", "1", "--cases", "2",
                                      "--case-shape", "4,24,24", "--image-size", "16", "--workers", "2",
                                      "--out-dir", str(tmp_path)])
    assert res.exit_code == 0, res.output
    rep = json.loads((tmp_path / "cpu_eval.json").read_text())
    s = rep["surface_metrics"]
    assert s["identical"] and s["max_abs_difference"] == 0.0
    assert set(s["values"]) == {"liver", "tumour"} and s["voxels"]["liver"] > s["voxels"]["tumour"] > 0
    for metrics in s["values"].values():
        assert len(metrics) == 7 and all(v["ssl_bench"] == v["medpy"] for v in metrics.values())
    t = rep["test_set"]
    assert t["workers_1"]["mean_dice"] == t["workers_2"]["mean_dice"] > 0.5  # same records either way
    assert "| liver | hd95_mm |" in (tmp_path / "cpu_eval.md").read_text()


def test_bench_eval_rejects_a_bad_volume(tmp_path):
    res = CliRunner().invoke(_app(), ["bench", "eval", "--volume", "100,512", "--out-dir", str(tmp_path)])
    assert res.exit_code != 0 and "give depth,height,width" in res.output
    assert not list(tmp_path.iterdir())


# -- the GPU card: lease-proof, at a tiny size on the CPU ------------------------------------------
def _records(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_card_guards_each_section_appends_as_it_goes_and_skips_what_the_budget_leaves(tmp_path, monkeypatch):
    """Fake sections (no torch work): one fails, one overruns and is cut by the alarm, the rest
    are skipped and named; every section is on disk when the next starts."""
    import time

    from ssl_bench.bench import card

    seen_on_disk = []

    def ok():
        seen_on_disk.append(len(_records(tmp_path / "card.jsonl")))
        return {"seconds_per_1000_iterations": 12.5, "hours_for_30k": 0.1}

    def boom():
        raise MemoryError("CUDA out of memory (fake)")

    def overrun():
        time.sleep(30)
        return {}

    sections = [card.Section("a", "loop", ok), card.Section("b", "steps", boom), card.Section("c", "loop", ok),
                card.Section("d", "compile", overrun), card.Section("e", "steps", ok), card.Section("f", "compile", ok)]
    monkeypatch.setattr(card, "plan", lambda cfg: sections)
    monkeypatch.setattr(card, "ESTIMATE_S", {"loop": 0.0, "steps": 0.0, "compile": 0.0})
    cfg = card.CardConfig(tmp_path, budget_s=1.5, device="cpu")
    rep = card.run(cfg, progress=lambda text: None)
    records = _records(tmp_path / "card.jsonl")
    assert records[0]["section"] == "plan" and records[0]["sections"] == list("abcdef")
    status = {r["section"]: r["status"] for r in records[1:-1]}
    assert status == {"a": "ok", "b": "error", "c": "ok", "d": "cut", "e": "skipped", "f": "skipped"}
    assert seen_on_disk == [1, 3]  # a sees the plan; c sees the plan, a and b (with its error)
    assert "MemoryError: CUDA out of memory (fake)" in records[2]["reason"]
    assert records[-1] == {**records[-1], "section": "end", "skipped": ["d", "e", "f"], "failed": ["b"]}
    assert rep["skipped"] == ["d", "e", "f"] and records[-1]["seconds"] < 5
    assert all(r["env"]["torch"] for r in records[1:5])  # conditions beside every figure
    md = (tmp_path / "card.md").read_text()
    assert "- a: **12.5 s per 1000 iterations**" in md and "- **e**: skipped" in md and "failed: b" in md
    with pytest.raises(ValueError, match="--budget-s 0"):
        card.run(card.CardConfig(tmp_path, budget_s=0, device="cpu"))


BLOCKER = """
import importlib.abc, importlib.util, runpy, sys
FORBIDDEN = {forbidden!r}
class Absent(importlib.abc.Loader):
    # a blocked module behaves as an absent one: importing it raises ModuleNotFoundError; a mere
    # probe (importlib.util.find_spec, as torch._dynamo's trace rules make) does not raise
    def create_module(self, spec):
        return None
    def exec_module(self, module):
        raise ModuleNotFoundError(f"{{module.__name__}} is blocked: the GPU image lacks it", name=module.__name__)
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in FORBIDDEN:
            return importlib.util.spec_from_loader(name, Absent())
sys.meta_path.insert(0, Block())
sys.argv = ["card", *{argv!r}]
try:
    runpy.run_module("ssl_bench.bench.card", run_name="__main__", alter_sys=True)
finally:
    print("IMPORTED", sorted(m for m in sys.modules if m.split(".")[0] in FORBIDDEN))
"""


@pytest.mark.slow
def test_the_card_under_a_20_second_budget_returns_partial_results_without_the_missing_modules(tmp_path):
    """The GPU host's way of running it: from a source tree that is not installed (``python -S``,
    so no editable install; torch from its site-packages on ``PYTHONPATH``), with medpy, nibabel,
    mlflow, submitit (and the CLI's typer and rich) unimportable. Exit 0, a partial card.jsonl that
    names what it skipped, and every section it ran succeeded."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    import torch

    from ssl_bench.bench.card import FORBIDDEN

    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "out"
    argv = ["--out-dir", str(out), "--budget-s", "20", "--device", "cpu", "--image-size", "32", "--labeled-bs", "2",
            "--unlabeled-bs", "2", "--steps", "1", "--warmup", "0", "--loop-steps", "3", "--workers", "0"]
    env = {**os.environ, "PYTHONPATH": f"{root}{os.pathsep}{Path(torch.__file__).parents[1]}", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-S", "-c", BLOCKER.format(forbidden=FORBIDDEN, argv=argv)], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "IMPORTED []" in proc.stdout
    records = _records(out / "card.jsonl")
    assert records[0]["section"] == "plan" and records[-1]["section"] == "end"
    done = [r for r in records[1:-1] if r["status"] == "ok"]
    assert done and done[0]["section"] == "env"
    assert not [r for r in records[1:-1] if r["status"] == "error"], proc.stdout
    assert records[-1]["skipped"] and set(records[-1]["skipped"]) < set(records[0]["sections"])
    assert [r["section"] for r in records[1:-1]] == records[0]["sections"]  # each planned one accounted for
    assert "skipped:" in (out / "card.md").read_text()


@pytest.mark.slow
def test_card_sections_measure_steps_loop_and_compile_on_the_cpu(tmp_path, monkeypatch):
    """Each kind of section once, at a tiny size, with a generous budget: the step rows (ratio,
    peak memory, compile fields) reach card.jsonl and the steps CSV, the loop gives seconds per
    1000 iterations."""
    from ssl_bench import step as step_mod
    from ssl_bench.bench import card

    monkeypatch.setattr(step_mod, "COMPILE_BACKEND", "eager")  # dynamo traces; no code generation here
    cfg = card.CardConfig(tmp_path, budget_s=600, device="cpu", image_size=32, labeled_bs=2, unlabeled_bs=2,
                          methods=("mt", "action:iii"), steps=1, warmup=0, loop_steps=3, workers=0)
    rep = card.run(cfg, progress=lambda text: None)
    assert rep["failed"] == [] and rep["skipped"] == []
    by = {r["section"]: r for r in rep["records"]}
    (row,) = by["steps bf16+cl+compile: action:iii"]["result"]["rows"]
    assert row["stage"] == "iii" and row["compiled"] and not row["fallback"] and row["ratio_to_unet_l"] > 0
    # measured (a number); at 32 px and 2 + 2 slices the step's growth over the worker's resident
    # size can round to 0 MiB when the allocator reuses freed pages (seen once in CI under load)
    assert by["steps fp32: mt"]["result"]["rows"][0]["peak_mem_mb"] >= 0
    assert by["loop bf16+cl: mt"]["result"]["seconds_per_1000_iterations"] > 0
    assert by["reference-mt bf16+cl"]["result"]["speedup"] > 0
    assert by["steps bf16+cl: mt"]["env"]["amp_dtype"] == "bfloat16" and by["steps fp32: mt"]["env"]["amp_dtype"] is None
    csv_rows = (tmp_path / "cpu.csv").read_text().splitlines()
    assert len(csv_rows) == 1 + 3 * 2 and "cpu,action,iii,32,,2,2,True,True,True," in "\n".join(csv_rows)


def test_bench_steps_method_takes_a_comma_list_or_repeats():
    from ssl_bench.cli.bench import method_names

    assert method_names(["abd,ad-mt", "mt", " unimatch , "]) == ["abd", "ad-mt", "mt", "unimatch"]
    assert method_names([]) == []
