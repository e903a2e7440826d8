"""How the bold rule's false-positive rate and power move with ``ssl_bench.stats.RUN_SHARE_CAP``
(the share of the variance the seed term must carry before the df are capped at the runs' K - 1).
Same simulation as ``ssl-bench bench stats --grid`` (``ssl_bench.bench.stats``), 4000 null tables
and 2000 tables with a 4-Dice shift per line. Usage: python results/bench/stats_share_sensitivity.py
> results/bench/stats_share_sensitivity.md"""
from dataclasses import replace

import numpy as np

from ssl_bench.bench.stats import MIXES, Setting, draw, new_bold

SHARES = (0.0, 0.3, 0.5, 0.7, 1.01)  # 0: always capped (the rule before 2026-12-03); 1.01: never


def rates(s: Setting, shift: float, n: int, seed: int) -> list[float]:
    rng, hits = np.random.default_rng(seed), np.zeros(len(SHARES))
    for _ in range(n):
        y = draw(rng, s, shift)
        hits += [new_bold(y, run_share_cap=c) for c in SHARES]
    return list(hits / n)


print("| variance mix (seed sd, method x patient sd) | seeds | "
      + " | ".join(f"share {c:g}: FP / power" for c in SHARES) + " |")
print("|---|---|" + "---|" * len(SHARES))
for name, (a, b) in {"as set": (3.0, 3.0), **MIXES}.items():
    for k in (3, 5):
        s = replace(Setting(), seed_sd=a, inter_sd=b, n_seeds=k)
        fp, pw = rates(s, 0.0, 4000, 0), rates(s, 4.0, 2000, 1)
        print(f"| {name} ({a:g}, {b:g}) | {k} | " + " | ".join(f"{f:.3f} / {p:.3f}" for f, p in zip(fp, pw)) + " |",
              flush=True)
