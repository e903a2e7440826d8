"""Re-test finished 2D runs with each test-time resampling: how much `eval_resample` moves DSC.

`field` v2 tests as SSL4MIS, ACTION and BCP do (``eval_resample=nearest``: the slice zoomed to the
training size and the argmax back with nearest neighbour, e.g. SSL4MIS ``test_2D_fully.py``);
`field` v1 resized bilinearly and upsampled the probabilities. The knob acts at test time only,
so the same weights can be scored both ways. For each run dir given (its checkpoints must still be
there), the script loads the checkpoint the run reported (tag ``report_checkpoint``), predicts its
test volumes (``split.json``) with ``ssl_bench.evaluate.evaluate_cases`` under both settings, and
prints the mean DSC % of each beside the value the run recorded (the row under the run's own
setting must equal it: that is the check that the re-test is the run's test).

    python results/acdc/retest_resample.py --data-root /path/to/ACDC RUN_DIR [RUN_DIR ...]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from ssl_bench.evaluate import evaluate_cases
from ssl_bench.predict import load_predictor
from ssl_bench.registry import get_dataset_class


def retest(run_dir: Path, data_root: Path) -> dict:
    tags = json.loads((run_dir / "tags.json").read_text())
    config = json.loads((run_dir / "config.json").read_text())
    ckpt = tags["report_checkpoint"]
    dataset = get_dataset_class(tags["dataset"])(data_root)
    run = load_predictor(run_dir, ckpt, dataset)
    test = json.loads((run_dir / "split.json").read_text())["test"]
    recorded = json.loads((run_dir / "metrics.json").read_text())["flat"][f"test/{ckpt}/dice/mean"]
    out = {"method": tags["method"], "seed": tags["seed"], "own": config["train"]["eval_resample"],
           "recorded": 100 * recorded}
    for resample in ("nearest", "bilinear"):
        res = evaluate_cases(run.network, dataset, test, run.image_size, "cpu", progress=False,
                             resample=resample, empty_asd=config["train"]["empty_asd"])
        out[resample] = 100 * res.summary["mean"]["dice"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-root", type=Path, required=True)
    ap.add_argument("runs", type=Path, nargs="+")
    args = ap.parse_args()
    print("| run | method | seed | run's own | recorded DSC % | nearest | bilinear | bilinear − nearest |")
    print("|---|---|---|---|---|---|---|---|")
    for d in args.runs:
        r = retest(d, args.data_root)
        print(f"| {d.parents[4].name}/{d.name} | {r['method']} | {r['seed']} | {r['own']} | "
              f"{r['recorded']:.2f} | {r['nearest']:.2f} | {r['bilinear']:.2f} | {r['bilinear'] - r['nearest']:+.2f} |",
              flush=True)


if __name__ == "__main__":
    main()
