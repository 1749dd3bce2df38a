#!/usr/bin/env python3
"""Draws the main panels of deploy/examples/grafana-dashboard.json from recorded
agent rows, as one static HTML page with inline SVG, for a screenshot in a
real browser (Grafana is not available where this repository is built).

    .venv/bin/python docs/dashboard/render.py --out /tmp/dashboard.html
    chromium --headless --no-sandbox --hide-scrollbars --window-size=1400,900 \
        --screenshot=docs/dashboard.png file:///tmp/dashboard.html

Input: the probe rows of one agent run (default: the H100 run in
docs/gpu-results/h100-run/agent-light/, read with pyarrow). Each point is what
the agent would have served on /metrics at that moment: p50/p99 over a
trailing window per kernel and clock, leaving out the first run of each burst
(burst_seq = 0), as the health evaluator does.

That run predates the split of the verdict into health and contention (its
`verdict` column still calls the tenant phases unhealthy), so the two states
are recomputed here with the new definitions, from the same rows:
  health      event-clock (gpu) p99 against the p99 of the first quiet
              minute: healthy below DEGRADED x, degraded below UNHEALTHY x,
              else unhealthy; any wrong result is unhealthy, a throttle
              reason degraded; unknown below MIN_SAMPLES runs in the window;
  contention  ok without tenants (NVML compute processes besides the probe);
              contended with tenants; over-shared when the wall p99 is also
              above SLO_MS (an example SLO for this picture).
"""

import argparse
import bisect
import datetime as dt
import glob
import html
import math
import os

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_RUN = os.path.join(HERE, "..", "gpu-results", "h100-run", "agent-light")

WINDOW_S = 20.0  # trailing window of each point (the run lasted about 3 min)
STEP_S = 2.0  # one point every STEP_S
DEGRADED, UNHEALTHY = 1.5, 3.0
MIN_SAMPLES = 30  # fewer runs in the window: unknown
SLO_MS = 5.0
THROTTLE_MASK = 0x4 | 0x8 | 0x20 | 0x40 | 0x80

BG, PANEL, BORDER, TEXT, MUTED, GRID = (
    "#111217",
    "#181b1f",
    "#2c3235",
    "#ccccdc",
    "#8e8e9e",
    "#2a2d33",
)
GREEN, ORANGE, RED, BLUE, PURPLE, YELLOW, CYAN = (
    "#73bf69",
    "#ff9830",
    "#f2495c",
    "#5794f2",
    "#b877d9",
    "#fade2a",
    "#8ab8ff",
)
CLOCK_COLOURS = {
    ("fft", "wall"): "#f2495c",
    ("fft", "queue"): "#ff9830",
    ("fft", "gpu"): "#73bf69",
    ("gemm", "wall"): "#b877d9",
    ("gemm", "queue"): "#fade2a",
    ("gemm", "gpu"): "#5794f2",
}


def load_rows(run_dir):
    files = sorted(glob.glob(os.path.join(run_dir, "probes", "**", "*.parquet"), recursive=True))
    if not files:
        raise SystemExit(f"no probe Parquet files under {run_dir}")
    cols = [
        "ts",
        "node",
        "gpu_uuid",
        "kernel",
        "burst_seq",
        "gpu_ms",
        "wall_ms",
        "queue_ms",
        "correct",
        "throttle_reasons",
        "gpu_processes",
    ]
    t = pa.concat_tables([pq.read_table(f, columns=cols) for f in files])
    t = t.set_column(0, "ts", pc.cast(t["ts"], pa.int64())).sort_by("ts")
    return t.to_pylist()


def quantile(sorted_vals, q):
    if not sorted_vals:
        return None
    i = min(len(sorted_vals) - 1, max(0, math.ceil(q * len(sorted_vals)) - 1))
    return sorted_vals[i]


def series(rows):
    """Per kernel: points (t_s, {clock: (p50, p99)}, tenants, bad, throttled, runs)."""
    t0 = rows[0]["ts"] / 1e9
    t_end = rows[-1]["ts"] / 1e9
    out = {}
    for kernel in sorted({r["kernel"] for r in rows}):
        rk = [r for r in rows if r["kernel"] == kernel and r["burst_seq"] != 0]
        times = [r["ts"] / 1e9 for r in rk]
        pts = []
        t = t0 + WINDOW_S / 2
        while t <= t_end + 1e-9:
            lo = bisect.bisect_left(times, t - WINDOW_S)
            hi = bisect.bisect_right(times, t)
            win = rk[lo:hi]
            if win:
                q = {}
                for clock in ("wall", "gpu", "queue"):
                    v = sorted(r[f"{clock}_ms"] for r in win if r[f"{clock}_ms"] is not None)
                    q[clock] = (quantile(v, 0.5), quantile(v, 0.99))
                recent = rk[max(lo, hi - 20) : hi]
                tenants = max((r["gpu_processes"] or 0) for r in recent)
                bad = any(r["correct"] is False for r in win)
                thr = any((r["throttle_reasons"] or 0) & THROTTLE_MASK for r in win)
                pts.append((t, q, tenants, bad, thr, len(win)))
            t += STEP_S
        out[kernel] = pts
    return t0, t_end, out


def baselines(rows):
    """Event-clock p99 of the first quiet minute, per kernel (a learned baseline)."""
    t0 = rows[0]["ts"]
    out = {}
    for kernel in sorted({r["kernel"] for r in rows}):
        v = sorted(
            r["gpu_ms"]
            for r in rows
            if r["kernel"] == kernel
            and r["burst_seq"] != 0
            and (r["gpu_processes"] or 0) == 0
            and r["ts"] - t0 < 60e9
        )
        out[kernel] = quantile(v, 0.99)
    return out


def health(p, base):
    """0 healthy, 1 unknown, 2 degraded, 3 unhealthy (the dashboard's encoding)."""
    _, q, _, bad, thr, runs = p
    if bad:
        return 3
    if runs < MIN_SAMPLES or not base:
        return 1
    ratio = q["gpu"][1] / base
    if ratio >= UNHEALTHY:
        return 3
    if ratio >= DEGRADED or thr:
        return 2
    return 0


def contention(p):
    _, q, tenants, _, _, _ = p
    if tenants == 0:
        return 0
    return 2 if q["wall"][1] > SLO_MS else 1


# ---------------------------------------------------------------------------
# SVG
# ---------------------------------------------------------------------------


def esc(s):
    return html.escape(str(s), quote=True)


def fmt_clock(t):
    return dt.datetime.fromtimestamp(t, dt.timezone.utc).strftime("%H:%M:%S")


def fmt_ms(v):
    if v is None:
        return "-"
    if v >= 1:
        return f"{v:.2f} ms"
    return f"{v * 1000:.0f} µs" if v >= 0.001 else f"{v * 1000:.1f} µs"


def fmt_tick(v):
    return f"{v:g} ms" if v >= 1 else f"{v * 1000:g} µs"


def time_ticks(t0, t1, n=6):
    step = max(10, int((t1 - t0) / n / 10 + 1) * 10)
    first = math.ceil(t0 / step) * step
    return [first + i * step for i in range(int((t1 - first) // step) + 1)]


def panel(x, y, w, h, title, body):
    return (
        f'<g transform="translate({x},{y})">'
        f'<rect width="{w}" height="{h}" rx="2" fill="{PANEL}" stroke="{BORDER}"/>'
        f'<text x="10" y="20" fill="{TEXT}" font-size="13" font-weight="500">{esc(title)}</text>'
        f"{body}</g>"
    )


def x_axis(x0, x1, y, t0, t1, sx):
    parts = []
    for t in time_ticks(t0, t1):
        x = sx(t)
        if x > x1 - 20:
            continue
        parts.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{y - 4}" y2="{y}" stroke="{MUTED}"/>')
        parts.append(
            f'<text x="{x:.1f}" y="{y + 13}" fill="{MUTED}" font-size="10" text-anchor="middle">{fmt_clock(t)}</text>'
        )
    return "".join(parts)


def state_timeline(w, h, t0, t1, rows, names, colours):
    """rows: [(label, [(t, state)])]."""
    left, right, top = 70, 10, 32
    bottom = h - 40
    sx = lambda t: left + (t - t0) / (t1 - t0) * (w - left - right)
    band = (bottom - top) / len(rows)
    parts = []
    for i, (label, pts) in enumerate(rows):
        y = top + i * band + 3
        parts.append(
            f'<text x="{left - 8}" y="{y + band / 2 + 1}" fill="{TEXT}" font-size="11" text-anchor="end">{esc(label)}</text>'
        )
        j = 0
        while j < len(pts):
            k = j
            while k + 1 < len(pts) and pts[k + 1][1] == pts[j][1]:
                k += 1
            xa = sx(pts[j][0] - STEP_S / 2) if j else sx(t0)
            xb = sx(pts[k + 1][0] - STEP_S / 2) if k + 1 < len(pts) else sx(t1)
            s = pts[j][1]
            parts.append(
                f'<rect x="{xa:.1f}" y="{y:.1f}" width="{max(0.5, xb - xa - 1):.1f}" height="{band - 6:.1f}" fill="{colours[s]}" fill-opacity="0.85" rx="1"/>'
            )
            if xb - xa > 60:
                parts.append(
                    f'<text x="{xa + 6:.1f}" y="{y + band / 2 + 1:.1f}" fill="#111217" font-size="11" font-weight="600">{esc(names[s])}</text>'
                )
            j = k + 1
    parts.append(x_axis(left, w - right, bottom + 12, t0, t1, sx))
    lx = left
    for s, name in enumerate(names):
        parts.append(f'<rect x="{lx}" y="{h - 14}" width="10" height="10" fill="{colours[s]}"/>')
        parts.append(f'<text x="{lx + 14}" y="{h - 5}" fill="{MUTED}" font-size="11">{esc(name)}</text>')
        lx += 24 + 7 * len(name)
    return "".join(parts)


def log_chart(w, h, t0, t1, lines, legend_w=300, unit="ms"):
    """lines: [(label, colour, dashed, [(t, v)])], log10 y axis."""
    left, right, top, bottom = 58, legend_w + 10, 30, h - 24
    vals = [v for _, _, _, pts in lines for _, v in pts if v and v > 0]
    lo = 10 ** math.floor(math.log10(min(vals)))
    hi = 10 ** math.ceil(math.log10(max(vals)))
    sx = lambda t: left + (t - t0) / (t1 - t0) * (w - left - right)
    sy = lambda v: bottom - (math.log10(v) - math.log10(lo)) / (math.log10(hi) - math.log10(lo)) * (bottom - top)
    parts = []
    d = lo
    while d <= hi * 1.0001:
        for m in (1, 2, 5):
            v = d * m
            if v > hi * 1.0001:
                break
            y = sy(v)
            parts.append(f'<line x1="{left}" x2="{w - right}" y1="{y:.1f}" y2="{y:.1f}" stroke="{GRID}"/>')
            parts.append(
                f'<text x="{left - 6}" y="{y + 3:.1f}" fill="{MUTED}" font-size="10" text-anchor="end">{esc(fmt_tick(v))}</text>'
            )
        d *= 10
    for label, colour, dashed, pts in lines:
        path = " ".join(
            f"{'M' if i == 0 else 'L'}{sx(t):.1f},{sy(v):.1f}" for i, (t, v) in enumerate(pts) if v and v > 0
        )
        dash = ' stroke-dasharray="6 5"' if dashed else ""
        parts.append(f'<path d="{path}" fill="none" stroke="{colour}" stroke-width="1.6"{dash}/>')
    parts.append(x_axis(left, w - right, bottom + 4, t0, t1, sx))
    # Legend as a table: name, last, max.
    lx = w - legend_w
    parts.append(f'<text x="{lx}" y="{top + 4}" fill="{MUTED}" font-size="11">Name</text>')
    parts.append(f'<text x="{w - 80}" y="{top + 4}" fill="{MUTED}" font-size="11" text-anchor="end">Last</text>')
    parts.append(f'<text x="{w - 14}" y="{top + 4}" fill="{MUTED}" font-size="11" text-anchor="end">Max</text>')
    for i, (label, colour, dashed, pts) in enumerate(lines):
        y = top + 22 + i * 19
        dash = ' stroke-dasharray="4 3"' if dashed else ""
        parts.append(f'<line x1="{lx}" x2="{lx + 16}" y1="{y - 4}" y2="{y - 4}" stroke="{colour}" stroke-width="2.5"{dash}/>')
        parts.append(f'<text x="{lx + 22}" y="{y}" fill="{TEXT}" font-size="11">{esc(label)}</text>')
        last = pts[-1][1] if pts else None
        mx = max((v for _, v in pts), default=None)
        parts.append(f'<text x="{w - 80}" y="{y}" fill="{TEXT}" font-size="11" text-anchor="end">{esc(fmt_ms(last))}</text>')
        parts.append(f'<text x="{w - 14}" y="{y}" fill="{TEXT}" font-size="11" text-anchor="end">{esc(fmt_ms(mx))}</text>')
    return "".join(parts)


def step_chart(w, h, t0, t1, pts, colour, label):
    left, right, top, bottom = 40, 12, 30, h - 24
    hi = max(4, max(v for _, v in pts))
    sx = lambda t: left + (t - t0) / (t1 - t0) * (w - left - right)
    sy = lambda v: bottom - v / hi * (bottom - top)
    parts = []
    for v in range(0, hi + 1):
        y = sy(v)
        parts.append(f'<line x1="{left}" x2="{w - right}" y1="{y:.1f}" y2="{y:.1f}" stroke="{GRID}"/>')
        parts.append(f'<text x="{left - 6}" y="{y + 3:.1f}" fill="{MUTED}" font-size="10" text-anchor="end">{v}</text>')
    d = ""
    for i, (t, v) in enumerate(pts):
        x, y = sx(t), sy(v)
        d += f"M{x:.1f},{y:.1f}" if i == 0 else f"H{x:.1f}V{y:.1f}"
    area = d + f"H{sx(pts[-1][0]):.1f}V{sy(0):.1f}H{sx(pts[0][0]):.1f}Z"
    parts.append(f'<path d="{area}" fill="{colour}" fill-opacity="0.15" stroke="none"/>')
    parts.append(f'<path d="{d}" fill="none" stroke="{colour}" stroke-width="1.8"/>')
    parts.append(x_axis(left, w - right, bottom + 4, t0, t1, sx))
    parts.append(f'<text x="{w - right}" y="20" fill="{MUTED}" font-size="11" text-anchor="end">{esc(label)}</text>')
    return "".join(parts)


def render(run_dir):
    rows = load_rows(run_dir)
    node, gpu = rows[0]["node"], rows[0]["gpu_uuid"]
    t0, t1, per_kernel = series(rows)
    base = baselines(rows)
    W, H = 1400, 900
    body = []
    # Header: title and variables, as Grafana shows them.
    body.append(f'<text x="16" y="30" fill="{TEXT}" font-size="18" font-weight="500">slicetrace: GPU health and tail latency</text>')
    chips = [("Node", node), ("GPU", gpu), ("Kernel", "All")]
    cx = 470
    for k, v in chips:
        tw = 8 + 7.4 * (len(k) + len(v)) + 22
        body.append(f'<rect x="{cx}" y="12" width="{tw:.0f}" height="26" rx="2" fill="{PANEL}" stroke="{BORDER}"/>')
        body.append(f'<text x="{cx + 8}" y="29" fill="{MUTED}" font-size="12">{esc(k)}</text>')
        body.append(f'<text x="{cx + 16 + 7.4 * len(k)}" y="29" fill="{TEXT}" font-size="12">{esc(v)}</text>')
        cx += tw + 8
    body.append(
        f'<text x="{W - 16}" y="30" fill="{MUTED}" font-size="11" text-anchor="end">{esc(fmt_clock(t0))} to {esc(fmt_clock(t1))} UTC · H100 run, docs/gpu-results</text>'
    )

    def tl_rows(fn):
        return [(k, [(p[0], fn(p, base[k])) for p in pts]) for k, pts in per_kernel.items()]

    half = (W - 16 * 2 - 10) // 2
    body.append(
        panel(
            16,
            50,
            half,
            170,
            "Health per GPU and kernel",
            state_timeline(half, 170, t0, t1, tl_rows(health),
                ["healthy", "unknown", "degraded", "unhealthy"],
                [GREEN, "#8e8e8e", ORANGE, RED],
            ),
        )
    )
    body.append(
        panel(
            26 + half,
            50,
            half,
            170,
            "Contention per GPU and kernel",
            state_timeline(
                half,
                170,
                t0,
                t1,
                tl_rows(lambda p, b: contention(p)),
                ["ok", "contended", "over-shared"],
                [GREEN, BLUE, PURPLE],
            ),
        )
    )
    lines = []
    for k, pts in per_kernel.items():
        for clock in ("wall", "queue", "gpu"):
            lines.append((f"p99 {k} {clock}", CLOCK_COLOURS[(k, clock)], False, [(p[0], p[1][clock][1]) for p in pts]))
    for k, pts in per_kernel.items():
        lines.append(
            (f"baseline {k} gpu (learned)", CLOCK_COLOURS[(k, "gpu")], True, [(pts[0][0], base[k]), (pts[-1][0], base[k])])
        )
    short = gpu[:12] + "…"
    body.append(
        panel(16, 230, W - 32, 400, f"p99 wall vs gpu vs queue, with baseline: {short}", log_chart(W - 32, 400, t0, t1, lines))
    )
    tenants = [(p[0], p[2]) for p in per_kernel[sorted(per_kernel)[0]]]
    body.append(
        panel(
            16,
            640,
            half,
            240,
            "Tenants on the GPU",
            step_chart(half, 240, t0, t1, tenants, CYAN, "NVML compute processes besides the probe (standalone run: no pods)"),
        )
    )
    p50 = []
    for k, pts in per_kernel.items():
        for clock in ("wall", "gpu"):
            p50.append((f"p50 {k} {clock}", CLOCK_COLOURS[(k, clock)], False, [(p[0], p[1][clock][0]) for p in pts]))
    body.append(panel(26 + half, 640, half, 240, "p50 by clock", log_chart(half, 240, t0, t1, p50, legend_w=250)))
    svg = f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="Inter, Roboto, DejaVu Sans, Helvetica, Arial, sans-serif">{"".join(body)}</svg>'
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>slicetrace dashboard</title>"
        f"<style>html,body{{margin:0;background:{BG};}}</style></head><body>{svg}</body></html>\n"
    )


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", default=DEFAULT_RUN, help="agent data dir with probes/ (Parquet)")
    ap.add_argument("--out", required=True, help="HTML file to write")
    a = ap.parse_args()
    with open(a.out, "w", encoding="utf-8") as f:
        f.write(render(a.run))


if __name__ == "__main__":
    main()
