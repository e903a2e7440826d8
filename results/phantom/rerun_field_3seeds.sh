#!/bin/bash
# Issue 17: re-run the commands of results/phantom/acdc-phantom_v3_field_3seeds_1500it.md (21 runs)
# so that its table is printed by today's statistics. Code frozen at d94a93f (/work/wt-runs4;
# 2D training code identical to main c3806f3). The commands are the recorded ones.
export PATH=/work/wt-runs4/.venv/bin:$PATH OMP_NUM_THREADS=1
cd /work/wt-runs4
R=/work/runs/phantom-field3; D=/work/runs/phantom-data
ssl-bench sweep --protocol field --methods action,cps,mt,bcp,unet-l,unet-f --dataset acdc-phantom \
    --labeled 3 --seeds 0,1,2 --iterations 1500 --jobs 2 --data-root $D --results-root $R
ssl-bench sweep --protocol field --methods action --set method.variant=paper --dataset acdc-phantom \
    --labeled 3 --seeds 0,1,2 --iterations 1500 --jobs 2 --data-root $D --results-root $R
echo "phantom field3 done $(date)"
