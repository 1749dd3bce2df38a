#!/usr/bin/env python3
"""Offline comparison of what-if wait models on the H100 what-if runs
(issue 24), with one fit/predict protocol for every model.

    python3 whatif_models.py RUN_DIR... [--models C0,C1,...] [--json OUT]

RUN_DIR holds rows-whatif.parquet (the probe's arrivals, phase-labelled) and
rows-caller.parquet (the 5/s 4096² GEMM caller). K = the continuous tenants
= gpu_processes − 1 (the caller is resident in every phase: the CLI's
`--count-by resident --exclude-tenant pid:<caller>`). Fit on K = 0, 1, 3 of
each kernel; predict the probe's wall p50/p99 at K = 2, 4, 6, and the
caller's own wall p50/p99 at K = 0…6 (`--kernel-ms E`, E = the caller's
K = 0 gpu_ms p50, fit on the probe's gemm rows), against what was measured.

Models (the wait W_K of a random arrival beside K busy contexts; B is the
K = 0 wait, the caller's own part is drawn from wall − queue of the fitted
K ≥ 1 rows, as in `slicetrace whatif`):

* C0 "linear" (the shipped model): W_K = q0(U) + K·g(U), g fitted per
  quantile level, each count weighted 1/K² (mean of (Q_K − Q_0)/K).
  A kernel of E ms is preempted ceil(E/s) − 1 times, each costing K·s, s the
  uniform rotation's fit.
* C1 "renewal-K1": round robin with random turn lengths. The arrival lands
  in some context's turn (residual R) and waits for J more turns, J uniform
  on 0..K−1, each an independent draw L: W_K = B(U) + R(U) + L_1 + … + L_J.
  R's quantile function is Q_1 − Q_0 (so K = 1 is reproduced); L from the
  renewal relation f_R(x) = P(L > x)/E[L] on R minus its minimum (the
  context-switch cost c, which each turn also pays), with R's density made
  non-increasing (greatest convex minorant of its quantile function). Uses
  K = 0 and 1 only. A preemption of the caller's kernel costs K fresh
  turns L.
* C2 "renewal-fit": the same structure, L = c + a mixture (probability π a
  full turn of length s, else uniform on (0, s)), with (s, π) fitted by
  least squares on the K = 3 wait quantiles (p = 0.05…0.95 and 0.99),
  c = R's minimum; R from K = 1 as in C1.
* C3 "renewal-scaled": C1's L scaled by one factor fitted on K = 3
  (least squares on the same quantiles).
* C4 "renewal-joint": one turn distribution for both terms: L = c + L',
  L' = s with probability π, else uniform on (0, s); R = c + the renewal
  residual of L' (density ∝ P(L' > x): π + (1 − π)(1 − x/s) on (0, s)),
  drawn comonotone with B; (s, π) fitted by least squares on the K = 1 and
  K = 3 wait quantiles together; c = the minimum of Q_1 − Q_0.
"""
import json
import math
import sys

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq

GRID = np.arange(1, 200) / 200.0
LEVELS = np.arange(1, 20) / 20.0
FIT_LEVELS = np.concatenate([LEVELS, [0.99]])
FIT = [0, 1, 3]
PREDICT = [2, 4, 6]
DRAWS = 40_000
SEED = 11


def load(run):
    t = pq.read_table(f"{run}/rows-whatif.parquet").drop(["ts"])
    t = t.filter(pc.equal(t["arrival"], True))
    out = {}
    for kern in ["fft", "gemm"]:
        r = t.filter(pc.equal(t["kernel"], kern))
        k = np.array(r["gpu_processes"].to_pylist()) - 1
        q = np.array(r["queue_ms"].to_pylist(), float)
        w = np.array(r["wall_ms"].to_pylist(), float)
        out[kern] = {int(K): {"waits": np.sort(q[k == K]), "walls": np.sort(w[k == K]),
                              "rest": (w - q)[(k == K) & (w >= q)]}
                     for K in sorted(set(k.tolist())) if (k == K).sum() >= 20}
    c = pq.read_table(f"{run}/rows-caller.parquet").drop(["ts"]).to_pydict()
    caller = {}
    for ph, wl, g, a in zip(c["phase"], c["wall_ms"], c["gpu_ms"], c["arrival"]):
        if not ph.startswith("whatif tenants="):
            continue
        K = int(ph.split("=")[1])
        caller.setdefault(K, {"walls": [], "gpu": []})
        caller[K]["walls"].append(wl)
        caller[K]["gpu"].append(g)
    return out, caller


def _on_grid(g, u):
    # As whatif/mod.rs: linear between levels, flat beyond the last, from 0
    # before the first.
    x = np.clip(u, 0, 1) * 200 - 1
    out = np.interp(x, np.arange(len(g)), g)
    lo = x <= 0
    out[lo] = g[0] * np.maximum(x[lo] + 1, 0)
    return out


def pick(v, u):
    v = np.asarray(v)
    return v[np.minimum((u * len(v)).astype(int), len(v) - 1)]


def Q(groups, K, p):
    return np.quantile(groups[K]["waits"], p)


class Draws:
    def __init__(self, n=DRAWS, seed=SEED):
        rng = np.random.default_rng(seed)
        self.u = rng.random(n)       # position / comonotone base+R
        self.exec = rng.random(n)    # the caller's own part
        self.j = rng.random(n)       # J, the turns ahead
        self.L = rng.random((n, 64))  # the turn lengths (up to 64 turns)
        self.P = rng.random((n, 64))  # the preemption turns


# ---------------------------------------------------------------- C0
class Linear:
    name = "C0 linear (shipped)"

    def __init__(self, groups, ks):
        pos = [k for k in ks if k > 0]
        self.base = groups[0]["waits"]
        self.g = np.maximum(np.mean([(Q(groups, k, GRID) - Q(groups, 0, GRID)) / k for k in pos], axis=0), 0)
        sxy = sum(((Q(groups, k, LEVELS) - Q(groups, 0, LEVELS)) / k * LEVELS).sum() for k in pos)
        sxx = len(pos) * (LEVELS ** 2).sum()
        self.s = max(sxy / sxx, 0)
        self.turn = self.s

    def wait(self, n, d):
        return pick(self.base, d.u) + n * _on_grid(self.g, d.u)

    def preempt(self, n, count, d):
        return count * n * self.s


# ---------------------------------------------------------------- renewal
def gcm_slopes(x, y):
    """Greatest convex minorant of points (x, y): breakpoints and slopes."""
    hull = [0]
    for i in range(1, len(x)):
        hull.append(i)
        while len(hull) >= 3:
            a, b, c = hull[-3], hull[-2], hull[-1]
            # b above the chord a–c: drop it
            if (y[b] - y[a]) * (x[c] - x[a]) >= (y[c] - y[a]) * (x[b] - x[a]):
                hull.pop(-2)
            else:
                break
    xs, ys = x[hull], y[hull]
    slopes = np.diff(ys) / np.diff(xs)
    return xs, ys, slopes


class Renewal:
    name = "C1 renewal-K1"

    def __init__(self, groups, ks):
        self.base = groups[0]["waits"]
        r = Q(groups, 1, GRID) - Q(groups, 0, GRID)
        r = np.maximum.accumulate(np.maximum(r, 0))
        self.r = r
        self.c = r[0]
        self.set_turns(*self.turns_from_residual(r - self.c))
        self.turn = self.c + self.lvals.max()

    @staticmethod
    def turns_from_residual(rr):
        # R' quantile function at GRID (rr[0] = 0); density non-increasing
        # <=> quantile function convex: its GCM. P(L' > x) = σ1/σ(x): L'
        # sits on the breakpoints.
        xs, ys, sl = gcm_slopes(GRID, rr)
        sl = np.maximum(sl, 1e-9)
        surv = sl[0] / sl  # survival on each segment
        vals = ys[1:]  # segment ends
        probs = surv - np.append(surv[1:], 0.0)
        return vals, probs

    def set_turns(self, vals, probs):
        self.lvals = np.asarray(vals, float)
        self.lcdf = np.cumsum(probs) / np.sum(probs)

    def draw_turns(self, v):
        return self.c + self.lvals[np.minimum(np.searchsorted(self.lcdf, v, side="right"), len(self.lvals) - 1)]

    def wait(self, n, d):
        w = pick(self.base, d.u) + (_on_grid(self.r, d.u) if n > 0 else 0.0)
        if n <= 1:
            return w
        J = np.minimum((d.j * n).astype(int), n - 1)
        L = self.draw_turns(d.L[:, : n - 1])
        mask = np.arange(n - 1)[None, :] < J[:, None]
        return w + (L * mask).sum(axis=1)

    def preempt(self, n, count, d):
        if n == 0 or count == 0:
            return 0.0
        tot = 0.0
        for i in range(count):
            cols = d.P[:, (i * n) % 64:(i * n) % 64 + n]
            tot = tot + self.draw_turns(cols).sum(axis=1)
        return tot

    def mean_turn(self):
        return self.c + float((self.lvals * np.diff(np.concatenate([[0], self.lcdf]))).sum())


def k3_loss(model, groups, d):
    pred = np.quantile(model.wait(3, d), FIT_LEVELS)
    return float(((pred - Q(groups, 3, FIT_LEVELS)) ** 2).sum())


class RenewalFit(Renewal):
    name = "C2 renewal-fit"

    def __init__(self, groups, ks):
        super().__init__(groups, ks)
        d = Draws(10_000, SEED + 5)
        best = None
        for s in np.arange(0.5, 4.01, 0.05):
            for pi in np.arange(0.0, 1.001, 0.05):
                # L' = s w.p. π, else U(0, s): discretised on 50 points.
                vals = np.append((np.arange(50) + 0.5) / 50 * s, s)
                probs = np.append(np.full(50, (1 - pi) / 50), pi)
                self.set_turns(vals, probs)
                loss = k3_loss(self, groups, d)
                if best is None or loss < best[0]:
                    best = (loss, s, pi)
        _, s, pi = best
        self.s_full, self.pi = s, pi
        self.set_turns(np.append((np.arange(50) + 0.5) / 50 * s, s), np.append(np.full(50, (1 - pi) / 50), pi))
        self.turn = self.c + s


class RenewalScaled(Renewal):
    name = "C3 renewal-scaled"

    def __init__(self, groups, ks):
        super().__init__(groups, ks)
        v0, p0 = self.lvals.copy(), np.diff(np.concatenate([[0], self.lcdf]))
        d = Draws(10_000, SEED + 5)
        best = None
        for a in np.arange(0.5, 2.001, 0.01):
            self.set_turns(v0 * a, p0)
            loss = k3_loss(self, groups, d)
            if best is None or loss < best[0]:
                best = (loss, a)
        self.scale = best[1]
        self.set_turns(v0 * self.scale, p0)
        self.turn = self.c + self.lvals.max()


class RenewalJoint(Renewal):
    name = "C4 renewal-joint"

    def __init__(self, groups, ks):
        super().__init__(groups, ks)
        d = Draws(10_000, SEED + 5)
        best = None
        xs = np.linspace(0, 1, 201)
        for s in np.arange(0.5, 4.01, 0.05):
            for pi in np.arange(0.0, 1.001, 0.05):
                # R' density ∝ π + (1 − π)(1 − x/s) on (0, s): its quantile
                # function on GRID, and K = 1's quantiles c + R'.
                x = xs * s
                cdf = (pi * x + (1 - pi) * (x - x * x / (2 * s))) / (pi * s + (1 - pi) * s / 2)
                self.r = self.c + np.interp(GRID, cdf, x)
                vals = np.append((np.arange(50) + 0.5) / 50 * s, s)
                probs = np.append(np.full(50, (1 - pi) / 50), pi)
                self.set_turns(vals, probs)
                loss = k3_loss(self, groups, d)
                p1 = np.quantile(self.wait(1, d), FIT_LEVELS)
                loss += float(((p1 - Q(groups, 1, FIT_LEVELS)) ** 2).sum())
                if best is None or loss < best[0]:
                    best = (loss, s, pi, self.r.copy())
        _, s, pi, r = best
        self.s_full, self.pi, self.r = s, pi, r
        self.set_turns(np.append((np.arange(50) + 0.5) / 50 * s, s), np.append(np.full(50, (1 - pi) / 50), pi))
        self.turn = self.c + s


MODELS = {"C0": Linear, "C1": Renewal, "C2": RenewalFit, "C3": RenewalScaled, "C4": RenewalJoint}


def preemptions(e, s):
    return 0 if s <= 0 or e <= s else math.ceil(e / s) - 1


def evaluate(run, models):
    data, caller = load(run)
    d = Draws()
    res = {}
    for key in models:
        cls = MODELS[key]
        rows = []
        for kern in ["fft", "gemm"]:
            g = data[kern]
            m = cls(g, FIT)
            loaded = np.concatenate([g[k]["rest"] for k in FIT if k > 0])
            idle = g[0]["rest"]
            for K in sorted(g):
                own = pick(idle if K == 0 else loaded, d.exec)
                pr = np.quantile(own + m.wait(K, d), [0.5, 0.99])
                ms = np.quantile(g[K]["walls"], [0.5, 0.99])
                rows.append({"case": "probe", "kernel": kern, "K": K, "n": len(g[K]["waits"]),
                             "fitted": K in FIT, "wall": ms.tolist(), "pred": pr.tolist(),
                             "err": (100 * (pr - ms) / ms).tolist()})
            if kern == "gemm":
                E = float(np.median(caller[0]["gpu"]))
                for K in sorted(caller):
                    cnt = preemptions(E, m.turn)
                    pr = np.quantile(E + m.wait(K, d) + m.preempt(K, cnt, d), [0.5, 0.99])
                    ms = np.quantile(caller[K]["walls"], [0.5, 0.99])
                    rows.append({"case": "kernel_ms", "kernel": "gemm4096", "K": K,
                                 "n": len(caller[K]["walls"]), "fitted": False, "E": E,
                                 "preemptions": cnt, "wall": ms.tolist(), "pred": pr.tolist(),
                                 "err": (100 * (pr - ms) / ms).tolist()})
                info = {"turn_ms": m.turn}
                if isinstance(m, Renewal):
                    info.update(c=m.c, mean_turn=m.mean_turn())
                if isinstance(m, (RenewalFit, RenewalJoint)):
                    info.update(s_full=m.s_full, pi=m.pi)
                if isinstance(m, RenewalScaled):
                    info.update(scale=m.scale)
                rows.append({"case": "info", **info})
        res[key] = rows
    return res


def summary(rows):
    pe = [abs(e) for r in rows if r["case"] == "probe" and r["K"] in PREDICT for e in r["err"]]
    ke = [abs(e) for r in rows if r["case"] == "kernel_ms" for e in r["err"]]
    return max(pe), float(np.mean(pe)), max(ke), float(np.mean(ke))


def main():
    args = sys.argv[1:]
    models = list(MODELS)
    out = None
    if "--models" in args:
        i = args.index("--models")
        models = args[i + 1].split(",")
        del args[i:i + 2]
    if "--json" in args:
        i = args.index("--json")
        out = args[i + 1]
        del args[i:i + 2]
    allres = {}
    for run in args:
        res = evaluate(run, models)
        allres[run] = res
        print(f"\n## {run}\n")
        print("| model | probe p50 err % K=2,4,6 (fft; gemm) | probe p99 err % K=2,4,6 (fft; gemm) | kernel-ms p50 err % K=0..6 | kernel-ms p99 err % K=0..6 | probe max/mean abs | kernel-ms max/mean abs |")
        print("|---|---|---|---|---|---|---|")
        for key, rows in res.items():
            def errs(case, kern, i, ks):
                return ", ".join(f"{r['err'][i]:+.1f}" for r in rows
                                 if r["case"] == case and r["kernel"] == kern and r["K"] in ks)
            p50 = errs("probe", "fft", 0, PREDICT) + "; " + errs("probe", "gemm", 0, PREDICT)
            p99 = errs("probe", "fft", 1, PREDICT) + "; " + errs("probe", "gemm", 1, PREDICT)
            k50 = errs("kernel_ms", "gemm4096", 0, range(99))
            k99 = errs("kernel_ms", "gemm4096", 1, range(99))
            a, b, c, e = summary(rows)
            print(f"| {MODELS[key].name} | {p50} | {p99} | {k50} | {k99} | {a:.1f} / {b:.1f} | {c:.1f} / {e:.1f} |")
        few = [f"{r['kernel']} K={r['K']} ({r['n']})" for r in next(iter(res.values()))
               if r["case"] == "probe" and r["n"] < 1000]
        print(f"\n  arrivals per kernel and count below the issue's 1,000: {', '.join(few) or 'none'}")
        for key, rows in res.items():
            info = [r for r in rows if r["case"] == "info"]
            print(f"  {key} fit (gemm): " + ", ".join(f"{k}={v:.3f}" for k, v in info[0].items() if k != "case"))
    print("\n## Pooled over the runs above (probe p50/p99 at K = 2, 4, 6 and kernel-ms p50/p99 at K = 0…6)\n")
    print("| model | cells | worst abs err % | mean abs err % | cells within ±15 % | probe p99 cells within ±15 % |")
    print("|---|---|---|---|---|---|")
    for key in models:
        cells = [abs(e) for res in allres.values() for r in res[key]
                 if (r["case"] == "probe" and r["K"] in PREDICT) or r["case"] == "kernel_ms"
                 for e in r["err"]]
        p99 = [abs(r["err"][1]) for res in allres.values() for r in res[key]
               if r["case"] == "probe" and r["K"] in PREDICT]
        print(f"| {MODELS[key].name} | {len(cells)} | {max(cells):.1f} | {np.mean(cells):.1f} | "
              f"{sum(c <= 15 for c in cells)} | {sum(c <= 15 for c in p99)} of {len(p99)} |")
    if out:
        json.dump(allres, open(out, "w"), indent=1)


if __name__ == "__main__":
    main()
