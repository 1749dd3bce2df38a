#!/usr/bin/env python3
"""Do `slicetrace whatif`'s 95 % intervals cover what was then measured?
On the what-if runs' committed rows, through the CLI itself.

    python3 whatif_interval_coverage.py SLICETRACE OUT_JSON RUN_DIR...

By default the shipped intervals (a bootstrap over rows). With
BLOCKS="10 0" it passes `--block-secs 10` and `--block-secs 0` in turn: a
build with whatif-models/block-bootstrap.patch applied (a block bootstrap,
tried and not shipped: see interval-coverage-block-vs-row.md).

RUN_DIR holds rows-whatif.parquet (phase-labelled arrival rows). Each run's
rows are written into a scratch agent layout with `gpu_processes` lowered
by one (K = the continuous tenants: the 5/s caller is resident in every
phase, as in whatif_models.py), then, per kernel and N in 2, 4, 6:
`whatif --count-by resident --fit-tenants 0,1,3 --tenants N`. A cell is
covered when the measured wall quantile at K = N (the CLI's own `counts`
row) lies inside the predicted interval. Prints a markdown table and writes
every cell to OUT_JSON. Needs pyarrow.
"""
import datetime
import json
import os
import subprocess
import sys
import tempfile

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

st, out_json = sys.argv[1:3]
BLOCKS = os.environ.get("BLOCKS", "").split() or [None]
runs = sys.argv[3:]
# A full probes schema (nullability included) from a tiny synthetic file.
with tempfile.TemporaryDirectory() as d:
    subprocess.run([st, "gen-synthetic", "--rows", "10", "--nodes", "1", "--out", d],
                   capture_output=True, check=True)
    f = next(os.path.join(r, x) for r, _, fs in os.walk(d) for x in fs if x.endswith(".parquet"))
    template = pq.read_schema(f).remove_metadata()
    meta = pq.read_schema(f).metadata
template = template.with_metadata(meta)
cells = []
for run in runs:
    t = pq.read_table(os.path.join(run, "rows-whatif.parquet"))
    t = t.filter(pc.equal(t["arrival"], True))
    gp = pc.subtract(t["gpu_processes"].cast(pa.int64()), 1)
    gp = pc.max_element_wise(gp, 0).cast(pa.uint32())
    t = t.set_column(t.schema.get_field_index("gpu_processes"), "gpu_processes", gp)
    n = t.num_rows
    t = t.drop_columns(["phase"])
    # The committed rows keep only the columns the analysis reads; the
    # probes table's other required columns get fillers whatif never reads.
    filler = {"gpu_index": pa.array([0] * n, pa.uint32()), "backend": pa.array(["cuda"] * n),
              "precision": pa.array(["unknown"] * n), "flops": pa.array([0.0] * n),
              "cycle": pa.array(range(n), pa.uint64()), "burst_seq": pa.array([0] * n, pa.uint32())}
    cols = []
    for f in template:
        if f.name in t.column_names:
            cols.append(t[f.name].cast(f.type))
        elif f.name in filler:
            cols.append(filler[f.name])
        else:
            cols.append(pa.nulls(n, f.type))
    t = pa.Table.from_arrays(cols, schema=template)
    with tempfile.TemporaryDirectory() as d:
        node = t["node"][0].as_py()
        day = datetime.datetime.fromtimestamp(t["ts"][0].value / 1e9, datetime.timezone.utc).strftime("%Y-%m-%d")
        p = os.path.join(d, "probes", f"date={day}", f"node={node}")
        os.makedirs(p)
        pq.write_table(t, os.path.join(p, "rows.parquet"))
        for kernel in ["fft", "gemm"]:
            for nn in [2, 4, 6]:
                for block in BLOCKS:
                    extra = [] if block is None else ["--block-secs", block]
                    r = subprocess.run(
                        [st, "whatif", d, "--count-by", "resident", "--fit-tenants", "0,1,3",
                         "--tenants", str(nn), "--kernel", kernel, "--format", "json"] + extra,
                        capture_output=True, text=True)
                    if r.returncode != 0:
                        sys.exit(f"whatif failed ({r.returncode}): {r.stderr.strip()}")
                    w = json.loads(r.stdout)
                    w = w[0] if isinstance(w, list) else w
                    meas = next(c for c in w["counts"] if c["tenants"] == nn)
                    for q in ["p50", "p99"]:
                        m = meas[f"wall_{q}_ms"]
                        lo, hi = w[f"pred_{q}_lo_ms"], w[f"pred_{q}_hi_ms"]
                        cells.append({
                            "run": run, "kernel": kernel, "N": nn, "q": q,
                            "block_secs": None if block is None else float(block),
                            "method": w.get("interval_method", "row bootstrap"),
                            "n_measured": meas["n"], "measured_ms": m,
                            "pred_ms": w[f"pred_{q}_ms"], "lo_ms": lo, "hi_ms": hi,
                            "covered": lo <= m <= hi,
                            "width_pct": 100 * (hi - lo) / w[f"pred_{q}_ms"],
                        })
json.dump(cells, open(out_json, "w"), indent=1)
name = lambda b: "shipped (row bootstrap)" if b is None else (
    "row bootstrap" if b == 0 else f"block bootstrap, {b:g} s")
print("| interval | quantile | cells | covered | median width (% of prediction) |")
print("|---|---|---|---|---|")
for b in BLOCKS:
    b = None if b is None else float(b)
    for q in ["p50", "p99"]:
        c = [x for x in cells if x["block_secs"] == b and x["q"] == q]
        ws = sorted(x["width_pct"] for x in c)
        print(f"| {name(b)} | {q} | {len(c)} | {sum(x['covered'] for x in c)} | {ws[len(ws)//2]:.1f} |")
print()
keys = [None if b is None else float(b) for b in BLOCKS]
print("| run | kernel | N | q | measured | " + " | ".join(name(b) for b in keys) + " |")
print("|---|---|---|---|---|" + "---|" * len(keys))
mark = lambda c: "" if c["covered"] else " ✗"
for x in cells:
    if x["block_secs"] != keys[0]:
        continue
    row = [next(z for z in cells if z["block_secs"] == b and all(z[k] == x[k] for k in ["run", "kernel", "N", "q"])) for b in keys]
    run = os.path.basename(x["run"].rstrip("/"))
    print(f"| {run} | {x['kernel']} | {x['N']} | {x['q']} | {x['measured_ms']:.3f} | "
          + " | ".join(f"{y['lo_ms']:.3f}–{y['hi_ms']:.3f}{mark(y)}" for y in row) + " |")
