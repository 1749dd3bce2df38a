#!/usr/bin/env python3
"""Rewrites the column tables in schema/README.md from src/columns.rs.

The test tests/readme_matches_code.rs fails when the two disagree; run this
after changing a column, then review the diff.
"""
import pathlib
import re

root = pathlib.Path(__file__).resolve().parent.parent
src = (root / "src" / "columns.rs").read_text()
pat = re.compile(r'c\(\s*"([^"]+)",\s*"([^"]+)",\s*(true|false),\s*"([^"]+)",\s*"((?:[^"\\]|\\.)*)",?\s*\)', re.S)


def rows(block):
    return pat.findall(block)


probes_src, health_src = src.split("pub const HEALTH_COLUMNS")


def table(rs):
    out = "| column | arrow type | nullable | unit | meaning |\n|---|---|---|---|---|\n"
    for n, t, nl, u, m in rs:
        m = m.replace('\\"', '"')  # a Rust string's escaped quote
        out += f"| `{n}` | {t} | {'yes' if nl == 'true' else 'no'} | {u} | {m} |\n"
    return out


readme = (root / "README.md").read_text()
for heading, rs in (("## Table `probes`", rows(probes_src)), ("## Table `health`", rows(health_src))):
    start = readme.index(heading)
    tstart = readme.index("| column", start)
    tend = readme.find("\n\n", tstart)
    tend = len(readme) if tend == -1 else tend + 1
    readme = readme[:tstart] + table(rs) + readme[tend:]
(root / "README.md").write_text(readme)
print(f"wrote {len(rows(probes_src))} probes and {len(rows(health_src))} health columns")
