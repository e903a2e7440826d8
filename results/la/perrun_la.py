"""Per-run rows of exported LA records: test Dice / ASD / HD95 at the reported and the last checkpoint,
the best validation step, wall time. Usage: python results/la/perrun_la.py RECORDS_ROOT"""
import json
import sys
from pathlib import Path

rows = []
for tags in Path(sys.argv[1]).rglob("tags.json"):
    d = tags.parent
    if not (d / "metrics.json").exists():
        continue
    t, m = json.loads(tags.read_text()), json.loads((d / "metrics.json").read_text())
    f, c = m["flat"], t["report_checkpoint"]
    val = [json.loads(line) for line in (d / "log.jsonl").read_text().splitlines()]
    val = [(r["step"], r["metrics"]["val/dice/mean"]) for r in val if "val/dice/mean" in r["metrics"]]
    best = max(val, key=lambda v: v[1]) if val else (None, float("nan"))
    rows.append((t["method"], int(t["seed"]), c, 100 * f[f"test/{c}/dice/mean"], f[f"test/{c}/asd_mm/mean"],
                 f[f"test/{c}/hd95_mm/mean"], 100 * f["test/last/dice/mean"], best[0], 100 * best[1],
                 m["cost"]["train_seconds"], m["cost"].get("test_seconds", float("nan"))))
rows.sort()
print("| method | seed | reported | DSC % | ASD mm | HD95 mm | last-ckpt DSC % | best val step | best val DSC % | train s | test s |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
for r in rows:
    print(f"| {r[0]} | {r[1]} | {r[2]} | {r[3]:.1f} | {r[4]:.2f} | {r[5]:.2f} | {r[6]:.1f} | {r[7]} | {r[8]:.1f} | {r[9]:.0f} | {r[10]:.0f} |")
print(f"\n{len(rows)} runs")
