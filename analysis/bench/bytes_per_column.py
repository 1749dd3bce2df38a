"""Bytes per row per column of slicetrace Parquet files, from their footers
(pyarrow metadata): the baseline for the rollups issue. Not a test.

Usage: .venv/bin/python analysis/bench/bytes_per_column.py OUT.csv FILE_OR_DIR...
Every *.parquet under each DIR is read (footers only). Columns of OUT.csv:
column, physical type, compression, compressed bytes, uncompressed bytes,
rows, compressed bytes/row, uncompressed bytes/row; a last line sums all
columns (file footers not included)."""
import csv
import pathlib
import sys

import pyarrow.parquet as pq

out, *inputs = sys.argv[1:]
files = []
for i in inputs:
    p = pathlib.Path(i)
    files += sorted(p.rglob("*.parquet")) if p.is_dir() else [p]
cols = {}
rows = 0
footer = 0
for f in files:
    md = pq.ParquetFile(f).metadata
    rows += md.num_rows
    footer += md.serialized_size
    for g in range(md.num_row_groups):
        rg = md.row_group(g)
        for c in range(rg.num_columns):
            cc = rg.column(c)
            e = cols.setdefault(cc.path_in_schema, [cc.physical_type, cc.compression, 0, 0])
            e[2] += cc.total_compressed_size
            e[3] += cc.total_uncompressed_size
with open(out, "w", newline="") as fh:
    w = csv.writer(fh)
    w.writerow(["column", "physical_type", "compression", "compressed_bytes",
                "uncompressed_bytes", "rows", "compressed_bytes_per_row",
                "uncompressed_bytes_per_row"])
    tc = tu = 0
    for name, (t, comp, c, u) in sorted(cols.items(), key=lambda kv: -kv[1][2]):
        tc += c
        tu += u
        w.writerow([name, t, comp, c, u, rows, f"{c / rows:.3f}", f"{u / rows:.3f}"])
    w.writerow(["(all columns)", "", "", tc, tu, rows, f"{tc / rows:.3f}", f"{tu / rows:.3f}"])
print(f"{len(files)} files, {rows} rows, {len(cols)} columns, "
      f"{footer} footer bytes ({footer / max(len(files), 1):.0f} per file); wrote {out}")
