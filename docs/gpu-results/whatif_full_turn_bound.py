#!/usr/bin/env python3
"""The "every turn full" bound on the what-if runs: the measured wait p99 at
K continuous tenants against K times the K = 1 wait p99 (one full turn per
busy context). Observed after all three runs were seen: a description, not
a selected model.

    python3 whatif_full_turn_bound.py RUN_DIR...
"""
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import whatif_models as wm  # noqa: E402

ratios = []
print("| run | kernel | K = 1 wait p99 | K: wait p99 / (K × K = 1 p99) |")
print("|---|---|---|---|")
for run in sys.argv[1:]:
    d, _ = wm.load(run)
    for kern in ["fft", "gemm"]:
        g = d[kern]
        q1 = np.quantile(g[1]["waits"], 0.99)
        cells = []
        for K in [2, 3, 4, 6]:
            q = np.quantile(g[K]["waits"], 0.99)
            ratios.append(q / (K * q1))
            cells.append(f"K={K}: {q:.2f} / {K * q1:.2f} = {q / (K * q1):.2f}")
        print(f"| {run.rstrip('/').split('/')[-1]} | {kern} | {q1:.2f} | {'; '.join(cells)} |")
print(f"\nratio over the {len(ratios)} cells: {min(ratios):.2f} to {max(ratios):.2f}")
