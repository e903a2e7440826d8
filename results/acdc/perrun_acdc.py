"""Per-run rows of exported ACDC records: test Dice (mean and per class) and ASD at the reported
checkpoint, the best validation step and Dice, device-hours and the code commit.
Usage: python results/acdc/perrun_acdc.py RECORDS_ROOT [RECORDS_ROOT ...]"""
import json
import sys
from pathlib import Path

rows = []
for root in sys.argv[1:]:
    for tags in Path(root).rglob("tags.json"):
        d = tags.parent
        if not (d / "metrics.json").exists():
            continue
        t, m = json.loads(tags.read_text()), json.loads((d / "metrics.json").read_text())
        f, c = m["flat"], t["report_checkpoint"]
        name = t["method"] + (f" ({t['variant']})" if t["method"] == "action" and t.get("variant") else "")
        val = [json.loads(line) for line in (d / "log.jsonl").read_text().splitlines()]
        val = [(r["step"], r["metrics"]["val/dice/mean"]) for r in val if "val/dice/mean" in r["metrics"]]
        best = max(val, key=lambda v: v[1]) if val else (None, float("nan"))
        rows.append((name, int(t["seed"]), c, *(100 * f[f"test/{c}/dice/{k}"] for k in ("mean", "RV", "Myo", "LV")),
                     f[f"test/{c}/asd_vox/mean"], best[0], 100 * best[1], m["cost"]["device_hours"],
                     t.get("git_commit", "")[:7]))
rows.sort()
print("| method | seed | reported | DSC % | RV | Myo | LV | ASD vox | best val step | best val DSC % | device-h | code |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|")
for r in rows:
    print(f"| {r[0]} | {r[1]} | {r[2]} | {r[3]:.1f} | {r[4]:.1f} | {r[5]:.1f} | {r[6]:.1f} | {r[7]:.2f} | {r[8]} | "
          f"{r[9]:.1f} | {r[10]:.3f} | {r[11]} |")
print(f"\n{len(rows)} runs, {sum(r[10] for r in rows):.2f} device-hours")
