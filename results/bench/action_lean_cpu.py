# run from the repository root: python -P results/bench/action_lean_cpu.py 64 6 3 > results/bench/action_lean_cpu.json
"""ACTION stage iii step on the CPU, old per-class AnCo sampling vs the lean one, timed in
alternating blocks in one process (StepBench: the loop's step, synthetic slices)."""
import json, os, statistics, sys, time
sys.path.insert(0, "tests")
import torch
torch.set_num_threads(1)
import ssl_bench.methods.action as action_mod
from anco_reference import sampled_anco as old
from ssl_bench.methods.action_losses import sampled_anco as new
from ssl_bench.bench import machine
from ssl_bench.bench.steps import Setting, StepBench

size, bs, steps = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
before = machine()
bench = StepBench("action", Setting(size, bs, bs))
bench.set_stage("iii")
times = {"old": [], "new": []}
for fn in (old, new):  # warm-up
    action_mod.sampled_anco = fn; bench.step()
for r in range(steps):
    for name, fn in ((("old", old), ("new", new)) if r % 2 == 0 else (("new", new), ("old", old))):
        action_mod.sampled_anco = fn
        times[name].append(bench.timed_step())
rep = {"image_size": size, "batch": bs, "steps": steps, **before, "loadavg_after": list(os.getloadavg()),
       "median_step_s": {k: statistics.median(v) for k, v in times.items()}, "times": times}
print(json.dumps(rep))
