//! `slicetrace whatif`: the wall time a caller arriving at random would
//! see beside N busy tenant contexts, fitted on what the data shows.
//!
//! The model (also in `docs/blame-whatif.md` and `slicetrace whatif --help`):
//!
//! * Time-slicing is round-robin between the busy contexts: a caller
//!   arriving at a random moment beside `K` busy contexts waits for part of
//!   the rotation, which grows with `K`. Its wait is `q0 + K·g(U)`: `q0` the
//!   base wait (launch and path: the waits measured at `K = 0`), `g` the
//!   wait each busy context adds, as a quantile function of the caller's
//!   position `U` in the rotation (`U` uniform on [0, 1], the same `U` for
//!   both terms). An ideal rotation of equal, always-full slices `s` makes
//!   `g(p) = p·s` (uniform waits); real slices are not always full, so the
//!   shape is taken from the data instead of assumed.
//! * The rows are one GPU's and one kernel's arrival runs, grouped by the
//!   tenant count `K`: `busy_count` (busy contexts, from NVML's per-process
//!   utilisation), or `gpu_processes` (resident contexts, busy or not) when
//!   no row has `busy_count` or with `--count-by resident`; the output says
//!   which.
//! * **Fit.** On the fitted counts (`--fit-tenants`, default every count
//!   with at least [`MIN_FIT_ROWS`] arrivals), at each quantile level p of
//!   [`GRID`] (p = 0.005 … 0.995), each count weighted 1/K² (see [`fit`]):
//!   with `K = 0` among them, `Q_K(p) − Q_0(p) = K·g(p)` through the
//!   origin (so `g(p)` is the mean over the counts of `(Q_K − Q_0)/K`), and
//!   `q0` is the `K = 0` waits themselves, drawn as a sample; without it, a
//!   weighted least-squares line `Q_K(p) = a(p) + K·g(p)` whose intercept is
//!   the base (made non-decreasing in p, a running maximum). `g` is clamped
//!   at 0 but not forced to grow with p (see [`non_negative`]). Quantiles, not means: a handful of
//!   stalls of tens of ms moves a mean, not the quantiles.
//! * **The slice `s`** (printed, and the cost of a preemption) is the
//!   uniform rotation's fit: the quantiles p = 0.05, 0.10, …, 0.95 regressed
//!   on `p·K` the same way. The per-count `s_K` is that regression on one
//!   count.
//! * **Predict.** Wall = execution + wait. The default caller is the
//!   probe's kernel: its own part is drawn from the `wall_ms − queue_ms`
//!   (the kernel and the path to the end stamp; `gpu_ms` where that is
//!   unknown) of the fitted rows with `K ≥ 1` (tenants keep the clocks up;
//!   `K = 0` rows for N = 0), which assumes the kernel fits in one slice. With
//!   `--kernel-ms E` the caller runs E ms, and a kernel longer than one slice
//!   is preempted `ceil(E/s) − 1` times, each costing `N·s` more.
//!   Quantiles come from [`POINT_DRAWS`] Monte Carlo draws (fixed seed),
//!   intervals from [`crate::tenancy::BOOTSTRAP_REPS`] bootstrap refits over
//!   the fitted rows (95 %, percentile method). With three or more fitted
//!   counts, the predictions of the fits that leave one count out give a
//!   second range: how much the answer hangs on one count.
//! * **Replicas.** `replicas: R` in the time-slicing config caps pods, not
//!   busy contexts. With the measured mean duty cycle `d` (busy contexts
//!   per resident context, Σ busy_count / Σ gpu_processes), the caller of a
//!   pod among R sees `Binomial(R − 1, d)` busy contexts (one context per
//!   pod, independent); its p99 is the mixture's.

use std::collections::BTreeMap;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use crate::output::{fmt_num, Cell, Format, Table};
use crate::stats::{quantile_sorted, quantiles_select};
use crate::tenancy::{interval95, Arrival, TenancyError, BOOTSTRAP_REPS, SEED};

/// The largest tenant count `whatif` predicts for (and scans for an SLO).
pub const MAX_TENANTS: u32 = 64;
/// Arrivals a tenant count needs to be fitted.
pub const MIN_FIT_ROWS: usize = 20;
/// Monte Carlo draws of a point prediction.
pub const POINT_DRAWS: usize = 40_000;
/// Monte Carlo draws of each bootstrap replicate.
const BOOT_DRAWS: usize = 10_000;
/// The quantile levels of the fit.
const LEVELS: [f64; 19] = [
    0.05, 0.10, 0.15, 0.20, 0.25, 0.30, 0.35, 0.40, 0.45, 0.50, 0.55, 0.60, 0.65, 0.70, 0.75, 0.80,
    0.85, 0.90, 0.95,
];

/// The quantile levels of the wait shape `g`: 0.005, 0.010, …, 0.995.
pub const GRID: usize = 199;

fn grid_level(i: usize) -> f64 {
    (i + 1) as f64 / (GRID + 1) as f64
}

/// Which column counts the tenants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum CountBy {
    /// `busy_count` where any row has it, else `gpu_processes`.
    #[default]
    Auto,
    /// `busy_count`: contexts NVML saw busy around the arrival (an error
    /// when no row has it).
    Busy,
    /// `gpu_processes`: resident tenant processes, busy or not.
    Resident,
}

/// Options of `whatif`.
#[derive(Debug, Clone, Default)]
pub struct WhatifOptions {
    /// Which column counts the tenants.
    pub count_by: CountBy,
    /// Tenants left out of K (their work becomes part of the base wait).
    pub exclude: Vec<String>,
    /// N: busy tenant contexts beside the caller.
    pub tenants: Option<u32>,
    /// The caller's own kernel time, ms (default: the probe's kernel).
    pub kernel_ms: Option<f64>,
    /// The p99 SLO, ms: find the largest N (and replicas) meeting it.
    pub slo_p99_ms: Option<f64>,
    /// Tenant counts to fit on (default: every count with enough rows).
    pub fit_tenants: Option<Vec<u32>>,
    /// Only this GPU.
    pub gpu: Option<String>,
    /// Only this kernel.
    pub kernel: Option<String>,
}

/// Parses `--fit-tenants 0,1,3`.
pub fn parse_fit_tenants(s: &str) -> Result<Vec<u32>, TenancyError> {
    let bad = |why: String| TenancyError::Bad(format!("bad --fit-tenants {s:?}: {why}"));
    let mut out = Vec::new();
    for part in s.split(',') {
        let p = part.trim();
        let k: u32 = p
            .parse()
            .map_err(|_| bad(format!("{p:?} is not a tenant count (expected e.g. 0,1,3)")))?;
        if k > MAX_TENANTS {
            return Err(bad(format!("{k} is above {MAX_TENANTS}")));
        }
        if out.contains(&k) {
            return Err(bad(format!("{k} is given twice")));
        }
        out.push(k);
    }
    out.sort_unstable();
    Ok(out)
}

/// One tenant count's rows of a GPU and kernel.
#[derive(Debug, Clone, Default)]
struct Group {
    /// Waits, sorted.
    waits: Vec<f64>,
    /// `gpu_ms`, non-null.
    exec: Vec<f64>,
    /// `wall_ms − queue_ms`: the kernel and the path after it (what the
    /// default caller adds to its wait), where both are known.
    rest: Vec<f64>,
    /// `wall_ms`, sorted.
    walls: Vec<f64>,
}

/// The base wait.
#[derive(Debug, Clone)]
enum Base {
    /// The waits at `K = 0`, sorted.
    Sample(Vec<f64>),
    /// Fitted intercepts at the [`GRID`] levels (non-decreasing).
    Grid(Vec<f64>),
}

impl Base {
    fn quantile(&self, p: f64) -> f64 {
        match self {
            Base::Sample(v) => quantile_sorted(v, p).unwrap_or(0.0),
            Base::Grid(g) => on_grid(g, p),
        }
    }
}

/// The value at level `p` of a function given at the [`GRID`] levels:
/// linear between levels, flat beyond the last, and from 0 before the
/// first.
fn on_grid(g: &[f64], p: f64) -> f64 {
    if g.is_empty() {
        return 0.0;
    }
    let x = p.clamp(0.0, 1.0) * (GRID + 1) as f64 - 1.0;
    if x <= 0.0 {
        return g[0] * (x + 1.0).max(0.0);
    }
    let i = x.floor() as usize;
    if i + 1 >= g.len() {
        return g[g.len() - 1];
    }
    let t = x - i as f64;
    g[i] + t * (g[i + 1] - g[i])
}

/// Makes `v` non-decreasing and non-negative (a running maximum from 0).
fn monotone(v: &mut [f64]) {
    let mut m = 0.0f64;
    for x in v.iter_mut() {
        m = m.max(*x);
        *x = m;
    }
}

/// Clamps `v` at 0. The shape `g` is not forced to grow with p: where the
/// base has a tail of its own (a low-duty tenant's kernels at `K = 0`), the
/// increments over it shrink at the top levels, and forcing them up would
/// count that tail twice; the Monte Carlo quantiles need no monotone `g`.
fn non_negative(v: &mut [f64]) {
    for x in v.iter_mut() {
        *x = x.max(0.0);
    }
}

/// A fitted model.
#[derive(Debug, Clone)]
struct Fit {
    /// Slice per context, ms (the uniform rotation's fit).
    s: f64,
    base: Base,
    /// The wait each busy context adds, `g(p)`, at the [`GRID`] levels.
    shape: Vec<f64>,
}

impl Fit {
    /// The ideal rotation: `g(p) = p·s`.
    #[cfg(test)]
    fn uniform(s: f64, base: Base) -> Fit {
        Fit {
            s,
            base,
            shape: (0..GRID).map(|i| grid_level(i) * s).collect(),
        }
    }
}

/// The fit of the slice `s` and the wait shape `g` from the wait quantiles
/// of `groups` at `ks`. Each count is weighted 1/K²: the rotation's tail
/// per busy context drifts between phases (1.7–2.4 ms of p99 wait per
/// tenant on an H100), so a count's error grows with K, and unweighted least
/// squares would let the largest fitted count decide alone.
fn fit(groups: &BTreeMap<u32, Group>, ks: &[u32]) -> Fit {
    let q = |k: u32, p: f64| quantile_sorted(&groups[&k].waits, p).unwrap_or(0.0);
    let positive: Vec<u32> = ks.iter().copied().filter(|&k| k > 0).collect();
    if ks.contains(&0) {
        // Through the K = 0 quantiles: with weights 1/K², the mean over the
        // counts of (Q_K − Q_0)/K.
        let (mut sxy, mut sxx) = (0.0, 0.0);
        for &k in &positive {
            for p in LEVELS {
                let kf = f64::from(k);
                sxy += p * (q(k, p) - q(0, p)) / kf;
                sxx += p * p;
            }
        }
        let s = if sxx > 0.0 { sxy / sxx } else { 0.0 };
        let mut shape: Vec<f64> = (0..GRID)
            .map(|i| {
                let p = grid_level(i);
                let per: f64 = positive
                    .iter()
                    .map(|&k| (q(k, p) - q(0, p)) / f64::from(k))
                    .sum();
                if positive.is_empty() {
                    0.0
                } else {
                    per / positive.len() as f64
                }
            })
            .collect();
        non_negative(&mut shape);
        return Fit {
            s: s.max(0.0),
            base: Base::Sample(groups[&0].waits.clone()),
            shape,
        };
    }
    // A weighted least-squares line per level (weights 1/K²): intercept =
    // base.
    let line = |pts: &[(f64, f64, f64)]| -> (f64, f64) {
        let w: f64 = pts.iter().map(|p| p.2).sum();
        let (mx, my) = (
            pts.iter().map(|p| p.2 * p.0).sum::<f64>() / w,
            pts.iter().map(|p| p.2 * p.1).sum::<f64>() / w,
        );
        let sxy: f64 = pts.iter().map(|p| p.2 * (p.0 - mx) * (p.1 - my)).sum();
        let sxx: f64 = pts.iter().map(|p| p.2 * (p.0 - mx).powi(2)).sum();
        let b = if sxx > 0.0 { sxy / sxx } else { 0.0 };
        (my - b * mx, b)
    };
    let weight = |k: u32| 1.0 / f64::from(k.max(1)).powi(2);
    let pts: Vec<(f64, f64, f64)> = ks
        .iter()
        .flat_map(|&k| LEVELS.map(|p| (p * f64::from(k), q(k, p), weight(k))))
        .collect();
    let (_, s) = line(&pts);
    let (mut base, mut shape): (Vec<f64>, Vec<f64>) = (0..GRID)
        .map(|i| {
            let p = grid_level(i);
            let pts: Vec<(f64, f64, f64)> = ks
                .iter()
                .map(|&k| (f64::from(k), q(k, p), weight(k)))
                .collect();
            line(&pts)
        })
        .unzip();
    monotone(&mut base);
    non_negative(&mut shape);
    Fit {
        s: s.max(0.0),
        base: Base::Grid(base),
        shape,
    }
}

/// `s_K` of one count against a base.
fn slice_of(waits: &[f64], k: u32, base: &Base) -> Option<f64> {
    if k == 0 || waits.is_empty() {
        return None;
    }
    let (mut sxy, mut sxx) = (0.0, 0.0);
    for p in LEVELS {
        let x = p * f64::from(k);
        sxy += x * (quantile_sorted(waits, p).unwrap_or(0.0) - base.quantile(p));
        sxx += x * x;
    }
    Some(sxy / sxx)
}

/// What the caller runs.
#[derive(Debug, Clone)]
enum Caller {
    /// The probe's kernel: execution times drawn from `gpu_ms` (for N = 0,
    /// and for N ≥ 1).
    Probe { idle: Vec<f64>, loaded: Vec<f64> },
    /// A kernel of this many ms, preempted when longer than a slice.
    Fixed(f64),
}

/// The element of `v` that the uniform `x` picks.
fn pick(v: &[f64], x: f64) -> f64 {
    if v.is_empty() {
        0.0
    } else {
        v[((x * v.len() as f64) as usize).min(v.len() - 1)]
    }
}

impl Caller {
    fn exec(&self, n: u32, x: f64) -> f64 {
        match self {
            Caller::Probe { idle, loaded } => pick(
                if n == 0 && !idle.is_empty() {
                    idle
                } else {
                    loaded
                },
                x,
            ),
            Caller::Fixed(e) => *e,
        }
    }
}

/// Preemptions of a kernel of `e` ms with slice `s`.
fn preemptions(e: f64, s: f64) -> u64 {
    if s <= 0.0 || e <= s {
        0
    } else {
        ((e / s).ceil() as u64).saturating_sub(1)
    }
}

/// The uniforms of the Monte Carlo draws, made once and shared by every
/// prediction (common random numbers: the answers for N and N + 1 differ
/// by the model, not by the draws).
struct Draws {
    /// Picks the execution time.
    exec: Vec<f64>,
    /// The position in the rotation, U.
    u: Vec<f64>,
    /// Picks the busy count of a replicas mixture.
    busy: Vec<f64>,
}

impl Draws {
    fn new(n: usize, seed: u64) -> Self {
        let mut rng = SmallRng::seed_from_u64(seed);
        let mut v = || (0..n).map(|_| rng.random::<f64>()).collect::<Vec<f64>>();
        Draws {
            exec: v(),
            u: v(),
            busy: v(),
        }
    }
}

/// One draw of the caller's wall time beside `n` busy contexts.
fn wall(f: &Fit, caller: &Caller, n: u32, d: &Draws, j: usize) -> f64 {
    let e = caller.exec(n, d.exec[j]);
    let u = d.u[j];
    let base = match &f.base {
        Base::Sample(v) => pick(v, u),
        Base::Grid(g) => on_grid(g, u),
    };
    let pre = match caller {
        Caller::Fixed(e) if n > 0 => preemptions(*e, f.s) as f64 * f64::from(n) * f.s,
        _ => 0.0,
    };
    e + base + f64::from(n) * on_grid(&f.shape, u) + pre
}

/// p50 and p99 of `v` (reordered).
fn p50_p99(v: &mut [f64]) -> (f64, f64) {
    let q = quantiles_select(v, &[0.5, 0.99]);
    (q[0].unwrap_or(f64::NAN), q[1].unwrap_or(f64::NAN))
}

fn predict(f: &Fit, caller: &Caller, n: u32, d: &Draws) -> (f64, f64) {
    let mut v: Vec<f64> = (0..d.u.len()).map(|j| wall(f, caller, n, d, j)).collect();
    p50_p99(&mut v)
}

/// The Binomial(n, d) CDF at 0..=n.
fn binomial_cdf(n: u32, d: f64) -> Vec<f64> {
    let mut cdf = Vec::with_capacity(n as usize + 1);
    let mut acc = 0.0;
    for k in 0..=n {
        let pk = if d <= 0.0 {
            f64::from(u8::from(k == 0))
        } else if d >= 1.0 {
            f64::from(u8::from(k == n))
        } else {
            let ln_c: f64 = (1..=k)
                .map(|i| (f64::from(n - k + i) / f64::from(i)).ln())
                .sum();
            (ln_c + f64::from(k) * d.ln() + f64::from(n - k) * (1.0 - d).ln()).exp()
        };
        acc += pk;
        cdf.push(acc);
    }
    cdf
}

/// The smallest k whose CDF reaches `q`.
fn binomial_inv(cdf: &[f64], q: f64) -> u32 {
    cdf.iter()
        .position(|&c| c >= q - 1e-12)
        .unwrap_or(cdf.len().saturating_sub(1)) as u32
}

/// Binomial(n, d) quantile.
fn binomial_quantile(n: u32, d: f64, q: f64) -> u32 {
    binomial_inv(&binomial_cdf(n, d), q)
}

/// p50 and p99 of the caller of one pod among `replicas`, the others busy
/// with probability `d` each.
fn predict_replicas(f: &Fit, caller: &Caller, replicas: u32, p: f64, d: &Draws) -> (f64, f64) {
    let cdf = binomial_cdf(replicas.saturating_sub(1), p);
    let mut v: Vec<f64> = (0..d.u.len())
        .map(|j| wall(f, caller, binomial_inv(&cdf, d.busy[j]), d, j))
        .collect();
    p50_p99(&mut v)
}

/// One tenant count's line.
#[derive(Debug, Clone, Serialize)]
pub struct CountLine {
    /// Tenant count K.
    pub tenants: u32,
    /// Arrivals.
    pub n: usize,
    /// Whether the fit used it.
    pub fitted: bool,
    /// `gpu_ms` p50.
    pub gpu_p50_ms: Option<f64>,
    /// Wait p50.
    pub wait_p50_ms: Option<f64>,
    /// Wait p99.
    pub wait_p99_ms: Option<f64>,
    /// Implied slice per context from this count alone.
    pub slice_ms: Option<f64>,
    /// Measured wall p50 (the probe's kernel).
    pub wall_p50_ms: Option<f64>,
    /// Measured wall p99.
    pub wall_p99_ms: Option<f64>,
    /// Predicted wall p50 for the caller at this count.
    pub pred_p50_ms: f64,
    /// Predicted wall p99.
    pub pred_p99_ms: f64,
    /// (predicted − measured) / measured, %, p50 (probe caller only).
    pub err_p50_pct: Option<f64>,
    /// The same at p99.
    pub err_p99_pct: Option<f64>,
}

/// A tenant's duty cycle.
#[derive(Debug, Clone, Serialize)]
pub struct Duty {
    /// `namespace/pod` or `pid:<pid>`.
    pub tenant: String,
    /// Share of the GPU's arrivals (with busy-tenant data) in which it was busy.
    pub busy_share: f64,
}

/// One `replicas: R` line.
#[derive(Debug, Clone, Serialize)]
pub struct ReplicaLine {
    /// Pods sharing the GPU, the caller's included.
    pub replicas: u32,
    /// Expected busy contexts beside the caller, (R − 1)·d.
    pub busy_mean: f64,
    /// 99th percentile of Binomial(R − 1, d).
    pub busy_p99: u32,
    /// Predicted wall p99 of the caller (the mixture over the busy count).
    pub pred_p99_ms: f64,
}

/// One GPU's and kernel's answer.
#[derive(Debug, Clone, Serialize)]
pub struct Whatif {
    /// GPU UUID.
    pub gpu_uuid: String,
    /// Node.
    pub node: String,
    /// Kernel.
    pub kernel: String,
    /// `busy_count` or `gpu_processes`.
    pub tenant_column: String,
    /// The fitted counts.
    pub fit_tenants: Vec<u32>,
    /// Fitted slice per context, ms, and its 95 % interval.
    pub slice_ms: f64,
    /// See `slice_ms`.
    pub slice_lo_ms: Option<f64>,
    /// See `slice_ms`.
    pub slice_hi_ms: Option<f64>,
    /// Base wait: p50 of the `K = 0` waits, or the fitted constant.
    pub q0_ms: f64,
    /// Whether `q0` is the `K = 0` sample (else a fitted constant).
    pub q0_from_k0: bool,
    /// Every count in the data.
    pub counts: Vec<CountLine>,
    /// `probe` or `kernel_ms`.
    pub caller: String,
    /// `--kernel-ms`.
    pub kernel_ms: Option<f64>,
    /// Preemptions of the caller's kernel (`--kernel-ms`).
    pub preemptions: Option<u64>,
    /// N.
    pub tenants: Option<u32>,
    /// Predicted wall p50 at N and its interval.
    pub pred_p50_ms: Option<f64>,
    /// See `pred_p50_ms`.
    pub pred_p50_lo_ms: Option<f64>,
    /// See `pred_p50_ms`.
    pub pred_p50_hi_ms: Option<f64>,
    /// Predicted wall p99 at N and its interval.
    pub pred_p99_ms: Option<f64>,
    /// See `pred_p99_ms`.
    pub pred_p99_lo_ms: Option<f64>,
    /// See `pred_p99_ms`.
    pub pred_p99_hi_ms: Option<f64>,
    /// The predictions at N when each fitted count in turn is left out of
    /// the fit (three or more fitted counts): [lowest, highest] p50. The
    /// spread shows how much the answer hangs on one count, which the
    /// bootstrap over rows does not.
    pub pred_p50_leave_one_out_ms: Option<[f64; 2]>,
    /// The same for p99.
    pub pred_p99_leave_one_out_ms: Option<[f64; 2]>,
    /// `--slo-p99-ms`.
    pub slo_p99_ms: Option<f64>,
    /// Largest N (0..=64) whose predicted p99 meets the SLO; null if none.
    pub max_tenants_for_slo: Option<u32>,
    /// Duty cycles per tenant.
    pub duty: Vec<Duty>,
    /// Mean duty cycle: Σ busy contexts / Σ resident contexts.
    pub mean_duty: Option<f64>,
    /// `replicas: R` lines.
    pub replicas: Vec<ReplicaLine>,
    /// Largest R (1..=65) whose predicted p99 meets the SLO.
    pub max_replicas_for_slo: Option<u32>,
    /// Caveats, in words.
    pub notes: Vec<String>,
}

/// Runs `whatif` on the arrival rows.
pub fn whatif(
    rows: &[Arrival],
    location: &str,
    opts: &WhatifOptions,
) -> Result<Vec<Whatif>, TenancyError> {
    if rows.is_empty() {
        return Err(TenancyError::NoArrivals(location.to_string()));
    }
    if let Some(n) = opts.tenants {
        if n > MAX_TENANTS {
            return Err(TenancyError::Bad(format!(
                "--tenants {n} is out of range 0..={MAX_TENANTS}"
            )));
        }
    }
    if let Some(e) = opts.kernel_ms {
        if !(e > 0.0 && e.is_finite()) {
            return Err(TenancyError::Bad(format!(
                "--kernel-ms {e} must be a positive number of ms"
            )));
        }
    }
    if let Some(x) = opts.slo_p99_ms {
        if !(x > 0.0 && x.is_finite()) {
            return Err(TenancyError::Bad(format!(
                "--slo-p99-ms {x} must be a positive number of ms"
            )));
        }
    }
    let with_wait: Vec<Arrival> = rows
        .iter()
        .filter(|r| !r.wait_ms.is_nan())
        .filter(|r| opts.kernel.as_ref().is_none_or(|k| &r.kernel == k))
        .cloned()
        .collect();
    if with_wait.is_empty() {
        return Err(TenancyError::NoArrivals(match &opts.kernel {
            Some(k) => format!("{location} for kernel {k} (with queue_ms)"),
            None => format!("{location} (with queue_ms)"),
        }));
    }
    let gpus = crate::tenancy::gpus(&with_wait, opts.gpu.as_deref())?;
    let mut out = Vec::new();
    for g in &gpus {
        let on_gpu: Vec<&Arrival> = with_wait.iter().filter(|r| &r.gpu == g).collect();
        let mut kernels: Vec<&str> = on_gpu.iter().map(|r| r.kernel.as_str()).collect();
        kernels.sort_unstable();
        kernels.dedup();
        for k in kernels {
            let sub: Vec<&Arrival> = on_gpu.iter().copied().filter(|r| r.kernel == k).collect();
            out.push(one(g, k, &sub, &on_gpu, location, opts)?);
        }
    }
    Ok(out)
}

fn one(
    gpu: &str,
    kernel: &str,
    rows: &[&Arrival],
    gpu_rows: &[&Arrival],
    location: &str,
    opts: &WhatifOptions,
) -> Result<Whatif, TenancyError> {
    let mut notes = Vec::new();
    let node = rows.first().map(|r| r.node.clone()).unwrap_or_default();
    let any_busy = rows.iter().any(|r| r.busy_contexts().is_some());
    let by_busy = match opts.count_by {
        CountBy::Auto => any_busy,
        CountBy::Busy if !any_busy => {
            return Err(TenancyError::NoTenantData {
                location: location.to_string(),
                what: format!(
                    "--count-by busy: no arrival row of GPU {gpu} kernel {kernel} has busy_count \
                     (an agent before busy-tenant sampling, or a GPU whose NVML gives no \
                     per-process utilisation); try --count-by resident"
                ),
            });
        }
        CountBy::Busy => true,
        CountBy::Resident => false,
    };
    let tenant_column = if by_busy {
        "busy_count"
    } else {
        if opts.count_by == CountBy::Resident {
            notes.push(
                "--count-by resident: grouped by gpu_processes, the resident tenant processes \
                 (busy or not), so K overstates the busy contexts of idle tenants"
                    .to_string(),
            );
        } else {
            notes.push(
                "busy_count is null on every row: grouped by gpu_processes, the resident tenant \
                 processes (busy or not), so K overstates the busy contexts of idle tenants"
                    .to_string(),
            );
        }
        "gpu_processes"
    };
    let mut groups: BTreeMap<u32, Group> = BTreeMap::new();
    let mut unknown = 0usize;
    for r in rows {
        let k = if opts.exclude.is_empty() {
            if by_busy {
                r.busy_contexts()
            } else {
                r.gpu_processes
            }
        } else if by_busy {
            r.busy.as_ref().map(|b| {
                b.iter()
                    .filter(|t| !opts.exclude.contains(&t.tenant))
                    .map(|t| t.tenant.as_str())
                    .collect::<std::collections::BTreeSet<_>>()
                    .len() as u32
            })
        } else {
            r.gpu_processes.map(|n| {
                let out = r
                    .residents
                    .iter()
                    .filter(|t| opts.exclude.contains(t))
                    .count();
                n.saturating_sub(out as u32)
            })
        };
        let Some(k) = k else {
            unknown += 1;
            continue;
        };
        let gr = groups.entry(k).or_default();
        gr.waits.push(r.wait_ms);
        gr.walls.push(r.wall_ms);
        if !r.gpu_ms.is_nan() {
            gr.exec.push(r.gpu_ms);
        }
        if r.wall_ms.is_finite() && r.wall_ms >= r.wait_ms {
            gr.rest.push(r.wall_ms - r.wait_ms);
        }
    }
    if unknown > 0 && !groups.is_empty() {
        notes.push(format!(
            "{unknown} of {} arrival rows have no {tenant_column} and are left out",
            rows.len()
        ));
    }
    if groups.is_empty() {
        return Err(TenancyError::NoTenantData {
            location: location.to_string(),
            what: format!(
                "no arrival row of GPU {gpu} kernel {kernel} has busy_count, busy_tenants or gpu_processes"
            ),
        });
    }
    for gr in groups.values_mut() {
        gr.waits.sort_unstable_by(f64::total_cmp);
        gr.walls.retain(|x| !x.is_nan());
        gr.walls.sort_unstable_by(f64::total_cmp);
    }
    let where_ = format!("GPU {gpu} kernel {kernel}");
    let fit_ks: Vec<u32> = match &opts.fit_tenants {
        Some(ks) => {
            for k in ks {
                let n = groups.get(k).map_or(0, |g| g.waits.len());
                if n < MIN_FIT_ROWS {
                    return Err(TenancyError::Bad(format!(
                        "--fit-tenants: tenant count {k} has {n} arrival rows on {where_} \
                         (at least {MIN_FIT_ROWS} needed; {tenant_column} counts present: {})",
                        present(&groups)
                    )));
                }
            }
            ks.clone()
        }
        None => groups
            .iter()
            .filter(|(_, g)| g.waits.len() >= MIN_FIT_ROWS)
            .map(|(k, _)| *k)
            .collect(),
    };
    if fit_ks.len() < 2 {
        return Err(TenancyError::Bad(format!(
            "fewer than 2 tenant counts to fit on {where_}: {} (each needs at least \
             {MIN_FIT_ROWS} arrival rows; {tenant_column} counts present: {})",
            if fit_ks.is_empty() {
                "none".to_string()
            } else {
                join(&fit_ks)
            },
            present(&groups)
        )));
    }
    let f = fit(&groups, &fit_ks);
    if f.s <= 0.0 {
        notes.push(
            "the waits do not grow with the tenant count in the fitted rows: slice fitted as 0"
                .into(),
        );
    }
    // The default caller's own part: wall − wait where the rows have it
    // (the kernel and the path to the end stamp), else gpu_ms.
    let own_part = |g: &Group| -> Vec<f64> {
        if g.rest.is_empty() {
            g.exec.clone()
        } else {
            g.rest.clone()
        }
    };
    let exec_of = |ks: &mut dyn Iterator<Item = u32>, gs: &BTreeMap<u32, Group>| -> Vec<f64> {
        ks.flat_map(|k| own_part(&gs[&k])).collect()
    };
    let probe_caller = |gs: &BTreeMap<u32, Group>| {
        let idle = if fit_ks.contains(&0) {
            own_part(&gs[&0])
        } else {
            Vec::new()
        };
        let mut loaded = exec_of(&mut fit_ks.iter().copied().filter(|&k| k > 0), gs);
        if loaded.is_empty() {
            loaded = idle.clone();
        }
        Caller::Probe { idle, loaded }
    };
    let caller = match opts.kernel_ms {
        Some(e) => Caller::Fixed(e),
        None => probe_caller(&groups),
    };
    // The kernel's own time: what no SLO can beat.
    let own = match &caller {
        Caller::Fixed(e) => *e,
        Caller::Probe { idle, loaded } => {
            let v = if idle.is_empty() { loaded } else { idle };
            crate::tenancy::quantile(v, 0.5).unwrap_or(0.0)
        }
    };
    if let Caller::Probe { loaded, .. } = &caller {
        if crate::tenancy::quantile(loaded, 0.5).is_some_and(|e| e > f.s && f.s > 0.0) {
            notes.push(format!(
                "the probe's {kernel} kernel runs longer than one slice ({} ms): its gpu_ms already \
                 holds the preemptions of the measured counts, which the default caller does not \
                 scale with N; pass --kernel-ms for such kernels",
                fmt_num(f.s)
            ));
        }
    }
    if let Some(x) = opts.slo_p99_ms {
        if x < own {
            return Err(TenancyError::Bad(format!(
                "--slo-p99-ms {x} is below the kernel's own time ({} ms on {where_}): no tenant count can meet it",
                fmt_num(own)
            )));
        }
    }
    let is_probe = matches!(caller, Caller::Probe { .. });
    let base_for_slices = match (&f.base, groups.get(&0)) {
        (_, Some(g0)) => Base::Sample(g0.waits.clone()),
        (b, None) => b.clone(),
    };
    let draws = Draws::new(POINT_DRAWS, SEED);
    let counts: Vec<CountLine> = groups
        .iter()
        .map(|(&k, g)| {
            let (p50, p99) = predict(&f, &caller, k, &draws);
            let (w50, w99) = (
                quantile_sorted(&g.walls, 0.5),
                quantile_sorted(&g.walls, 0.99),
            );
            let err = |pred: f64, m: Option<f64>| {
                m.filter(|m| *m > 0.0 && is_probe)
                    .map(|m| (pred - m) / m * 100.0)
            };
            CountLine {
                tenants: k,
                n: g.waits.len(),
                fitted: fit_ks.contains(&k),
                gpu_p50_ms: crate::tenancy::quantile(&g.exec, 0.5),
                wait_p50_ms: quantile_sorted(&g.waits, 0.5),
                wait_p99_ms: quantile_sorted(&g.waits, 0.99),
                slice_ms: slice_of(&g.waits, k, &base_for_slices),
                wall_p50_ms: w50,
                wall_p99_ms: w99,
                pred_p50_ms: p50,
                pred_p99_ms: p99,
                err_p50_pct: err(p50, w50),
                err_p99_pct: err(p99, w99),
            }
        })
        .collect();

    // Bootstrap: refit on resampled rows of each fitted count.
    let mut rng = SmallRng::seed_from_u64(SEED);
    let bdraws = Draws::new(BOOT_DRAWS, SEED ^ 1);
    let (mut s_reps, mut p50_reps, mut p99_reps) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..BOOTSTRAP_REPS {
        let mut gs: BTreeMap<u32, Group> = BTreeMap::new();
        for &k in &fit_ks {
            let g = &groups[&k];
            let mut waits: Vec<f64> = crate::tenancy::resample(&mut rng, g.waits.len())
                .into_iter()
                .map(|i| g.waits[i])
                .collect();
            waits.sort_unstable_by(f64::total_cmp);
            let exec = redraw(&mut rng, &g.exec);
            let rest = redraw(&mut rng, &g.rest);
            gs.insert(
                k,
                Group {
                    waits,
                    exec,
                    rest,
                    walls: Vec::new(),
                },
            );
        }
        let fb = fit(&gs, &fit_ks);
        s_reps.push(fb.s);
        if let Some(n) = opts.tenants {
            let cb = match &caller {
                Caller::Fixed(e) => Caller::Fixed(*e),
                Caller::Probe { .. } => probe_caller(&gs),
            };
            let (a, b) = predict(&fb, &cb, n, &bdraws);
            p50_reps.push(a);
            p99_reps.push(b);
        }
    }
    let (slice_lo_ms, slice_hi_ms) = interval95(&mut s_reps);
    let point = opts.tenants.map(|n| predict(&f, &caller, n, &draws));
    let mut loo: Option<([f64; 2], [f64; 2])> = None;
    if let (Some(n), true) = (opts.tenants, fit_ks.len() >= 3) {
        for out in &fit_ks {
            let ks: Vec<u32> = fit_ks.iter().copied().filter(|k| k != out).collect();
            let (a, b) = predict(&fit(&groups, &ks), &caller, n, &draws);
            loo = Some(match loo {
                None => ([a, a], [b, b]),
                Some((x, y)) => ([x[0].min(a), x[1].max(a)], [y[0].min(b), y[1].max(b)]),
            });
        }
    }
    let (p50_lo, p50_hi) = interval95(&mut p50_reps);
    let (p99_lo, p99_hi) = interval95(&mut p99_reps);

    let max_tenants_for_slo = opts.slo_p99_ms.and_then(|x| {
        largest_meeting(0..=MAX_TENANTS, 1, |n| {
            predict(&f, &caller, n, &draws).1 <= x
        })
    });

    // Duty cycles over the GPU's rows (all kernels): a tenant's activity
    // does not depend on which kernel the probe ran.
    let known: Vec<&&Arrival> = gpu_rows.iter().filter(|r| r.busy.is_some()).collect();
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for r in &known {
        let mut names: Vec<&str> = r.busy.iter().flatten().map(|b| b.tenant.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        for t in names {
            *seen.entry(t.to_string()).or_default() += 1;
        }
        for t in &r.residents {
            seen.entry(t.clone()).or_default();
        }
    }
    let mut duty: Vec<Duty> = seen
        .into_iter()
        .map(|(tenant, c)| Duty {
            tenant,
            busy_share: c as f64 / known.len().max(1) as f64,
        })
        .collect();
    duty.sort_by(|a, b| {
        b.busy_share
            .total_cmp(&a.busy_share)
            .then(a.tenant.cmp(&b.tenant))
    });
    let (busy_sum, res_sum) = gpu_rows
        .iter()
        .filter_map(|r| Some((r.busy_contexts()?, r.gpu_processes?)))
        .fold((0u64, 0u64), |(b, p), (x, y)| {
            (b + u64::from(x), p + u64::from(y))
        });
    let mean_duty = (res_sum > 0).then(|| (busy_sum as f64 / res_sum as f64).min(1.0));
    let d = match mean_duty {
        Some(d) => d,
        None => {
            notes.push(
                "no row has both busy_count and gpu_processes: the replicas lines assume every \
                 other pod is always busy (duty cycle 1)"
                    .into(),
            );
            1.0
        }
    };
    let mut max_replicas_for_slo = None;
    if let Some(x) = opts.slo_p99_ms {
        max_replicas_for_slo = largest_meeting(1..=MAX_TENANTS + 1, 2, |r| {
            predict_replicas(&f, &caller, r, d, &draws).1 <= x
        });
    }
    let show = [
        8,
        opts.tenants.map_or(0, |n| n + 1),
        max_replicas_for_slo.map_or(0, |r| r + 1),
    ]
    .into_iter()
    .max()
    .unwrap_or(8)
    .min(MAX_TENANTS + 1);
    let replicas = (1..=show)
        .map(|r| ReplicaLine {
            replicas: r,
            busy_mean: f64::from(r - 1) * d,
            busy_p99: binomial_quantile(r - 1, d, 0.99),
            pred_p99_ms: predict_replicas(&f, &caller, r, d, &draws).1,
        })
        .collect();

    Ok(Whatif {
        gpu_uuid: gpu.to_string(),
        node,
        kernel: kernel.to_string(),
        tenant_column: tenant_column.to_string(),
        fit_tenants: fit_ks,
        slice_ms: f.s,
        slice_lo_ms,
        slice_hi_ms,
        q0_ms: f.base.quantile(0.5),
        q0_from_k0: matches!(f.base, Base::Sample(_)),
        counts,
        caller: if is_probe { "probe" } else { "kernel_ms" }.into(),
        kernel_ms: opts.kernel_ms,
        preemptions: opts.kernel_ms.map(|e| preemptions(e, f.s)),
        tenants: opts.tenants,
        pred_p50_ms: point.map(|p| p.0),
        pred_p50_lo_ms: p50_lo,
        pred_p50_hi_ms: p50_hi,
        pred_p99_ms: point.map(|p| p.1),
        pred_p99_lo_ms: p99_lo,
        pred_p99_hi_ms: p99_hi,
        pred_p50_leave_one_out_ms: loo.map(|l| l.0),
        pred_p99_leave_one_out_ms: loo.map(|l| l.1),
        slo_p99_ms: opts.slo_p99_ms,
        max_tenants_for_slo,
        duty,
        mean_duty,
        replicas,
        max_replicas_for_slo,
        notes,
    })
}

/// A bootstrap resample of `v` (empty stays empty, drawing nothing).
fn redraw(rng: &mut SmallRng, v: &[f64]) -> Vec<f64> {
    if v.is_empty() {
        return Vec::new();
    }
    crate::tenancy::resample(rng, v.len())
        .into_iter()
        .map(|i| v[i])
        .collect()
}

/// The largest value of `range` that meets `ok`, scanning up and stopping
/// at the first failure from `grows_from` on (the predictions grow with the
/// count from there: same draws, a longer rotation). Below it (an idle GPU
/// runs the probe's kernel on ramped-down clocks) a failure does not stop
/// the scan.
fn largest_meeting(
    range: std::ops::RangeInclusive<u32>,
    grows_from: u32,
    mut ok: impl FnMut(u32) -> bool,
) -> Option<u32> {
    let mut best = None;
    for n in range {
        if ok(n) {
            best = Some(n);
        } else if n >= grows_from {
            break;
        }
    }
    best
}

fn join(ks: &[u32]) -> String {
    ks.iter().map(u32::to_string).collect::<Vec<_>>().join(",")
}

fn present(groups: &BTreeMap<u32, Group>) -> String {
    groups
        .iter()
        .map(|(k, g)| format!("{k} ({} rows)", g.waits.len()))
        .collect::<Vec<_>>()
        .join(", ")
}

fn range(lo: Option<f64>, hi: Option<f64>) -> String {
    match (lo, hi) {
        (Some(a), Some(b)) => format!("[{}, {}]", fmt_num(a), fmt_num(b)),
        _ => String::new(),
    }
}

/// Renders the answers: JSON (an array, one object per GPU and kernel) or
/// tables for people.
pub fn render(res: &[Whatif], format: Format) -> Result<String, TenancyError> {
    match format {
        Format::Json => serde_json::to_string_pretty(res)
            .map_err(|e| TenancyError::Bad(format!("cannot write JSON: {e}"))),
        Format::Csv => Err(TenancyError::Bad(
            "whatif supports --format table or json".into(),
        )),
        Format::Table => Ok(res.iter().map(render_one).collect::<Vec<_>>().join("\n\n")),
    }
}

fn render_one(w: &Whatif) -> String {
    let mut s = format!(
        "GPU {} on {}, kernel {}: tenant count K = {}; fitted on K = {}\n\
         slice per context s = {} ms {}; base wait q0 = {} ms ({})\n",
        w.gpu_uuid,
        w.node,
        w.kernel,
        w.tenant_column,
        join(&w.fit_tenants),
        fmt_num(w.slice_ms),
        range(w.slice_lo_ms, w.slice_hi_ms),
        fmt_num(w.q0_ms),
        if w.q0_from_k0 {
            "p50 of the K = 0 waits, drawn as a sample"
        } else {
            "fitted intercept: no K = 0 in the fit"
        },
    );
    let caller = match w.kernel_ms {
        Some(e) => format!(
            "a caller running {} ms, preempted {} times beside N busy contexts",
            fmt_num(e),
            w.preemptions.unwrap_or(0)
        ),
        None => format!("the probe's {} kernel", w.kernel),
    };
    let mut t = Table::new([
        "K",
        "arrivals",
        "fit",
        "gpu p50",
        "wait p50",
        "wait p99",
        "s_K",
        "wall p50",
        "pred p50",
        "err p50 %",
        "wall p99",
        "pred p99",
        "err p99 %",
    ]);
    for c in &w.counts {
        t.rows.push(vec![
            Cell::Int(u64::from(c.tenants)),
            Cell::Int(c.n as u64),
            Cell::Str(if c.fitted { "yes" } else { "" }.into()),
            Cell::Num(c.gpu_p50_ms),
            Cell::Num(c.wait_p50_ms),
            Cell::Num(c.wait_p99_ms),
            Cell::Num(c.slice_ms),
            Cell::Num(c.wall_p50_ms),
            Cell::Num(Some(c.pred_p50_ms)),
            Cell::Num(c.err_p50_pct),
            Cell::Num(c.wall_p99_ms),
            Cell::Num(Some(c.pred_p99_ms)),
            Cell::Num(c.err_p99_pct),
        ]);
    }
    s.push_str(&format!(
        "measured (the probe's arrivals) and predicted wall times for {caller}, ms:\n{}\n",
        t.to_comfy()
    ));
    if let (Some(n), Some(p50), Some(p99)) = (w.tenants, w.pred_p50_ms, w.pred_p99_ms) {
        s.push_str(&format!(
            "prediction with N = {n} busy contexts: wall p50 {} ms {}, p99 {} ms {} (95 % bootstrap intervals)\n",
            fmt_num(p50),
            range(w.pred_p50_lo_ms, w.pred_p50_hi_ms),
            fmt_num(p99),
            range(w.pred_p99_lo_ms, w.pred_p99_hi_ms),
        ));
        if let (Some(a), Some(b)) = (w.pred_p50_leave_one_out_ms, w.pred_p99_leave_one_out_ms) {
            s.push_str(&format!(
                "leaving one fitted count out at a time: p50 {}–{} ms, p99 {}–{} ms (how much the \
                 answer hangs on one count: the rotation drifts between phases)\n",
                fmt_num(a[0]),
                fmt_num(a[1]),
                fmt_num(b[0]),
                fmt_num(b[1]),
            ));
        }
    }
    if let Some(x) = w.slo_p99_ms {
        s.push_str(&match w.max_tenants_for_slo {
            Some(n) => format!(
                "SLO p99 ≤ {} ms: at most N = {n} busy contexts\n",
                fmt_num(x)
            ),
            None => format!(
                "SLO p99 ≤ {} ms: not met even with no busy context\n",
                fmt_num(x)
            ),
        });
    }
    let mut d = Table::new(["tenant", "busy share (duty cycle)"]);
    for x in &w.duty {
        d.rows.push(vec![
            Cell::Str(x.tenant.clone()),
            Cell::Num(Some(x.busy_share)),
        ]);
    }
    if !w.duty.is_empty() {
        s.push_str(&format!(
            "duty cycles (share of arrivals with the tenant busy, NVML sample periods):\n{}\n",
            d.to_comfy()
        ));
    }
    let dd = w.mean_duty.unwrap_or(1.0);
    s.push_str(&format!(
        "`replicas: R` caps pods, not busy contexts: with the mean duty cycle d = {} (busy contexts \
         per resident context), R pods put Binomial(R − 1, d) busy contexts beside the caller\n",
        fmt_num(dd)
    ));
    let mut r = Table::new([
        "replicas",
        "busy beside caller (mean)",
        "p99",
        "pred wall p99",
    ]);
    for x in &w.replicas {
        r.rows.push(vec![
            Cell::Int(u64::from(x.replicas)),
            Cell::Num(Some(x.busy_mean)),
            Cell::Int(u64::from(x.busy_p99)),
            Cell::Num(Some(x.pred_p99_ms)),
        ]);
    }
    s.push_str(&r.to_comfy());
    if let Some(x) = w.slo_p99_ms {
        s.push_str(&match w.max_replicas_for_slo {
            Some(rr) => format!("\nSLO p99 ≤ {} ms: at most replicas: {rr}", fmt_num(x)),
            None => format!("\nSLO p99 ≤ {} ms: no replica count meets it", fmt_num(x)),
        });
    }
    for n in &w.notes {
        s.push_str(&format!("\nnote: {n}"));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn world(ks: &[u32], s: f64, n: usize) -> BTreeMap<u32, Group> {
        // Exact uniform quantiles: waits q0 + (i + 0.5)/n · K·s.
        ks.iter()
            .map(|&k| {
                let waits: Vec<f64> = (0..n)
                    .map(|i| 0.05 + (i as f64 + 0.5) / n as f64 * f64::from(k) * s)
                    .collect();
                (
                    k,
                    Group {
                        walls: waits.iter().map(|w| w + 0.1).collect(),
                        exec: vec![0.1; n],
                        rest: Vec::new(),
                        waits,
                    },
                )
            })
            .collect()
    }

    #[test]
    fn fit_recovers_the_slice_with_and_without_k0() {
        let g = world(&[0, 1, 3], 2.0, 2000);
        let f = fit(&g, &[0, 1, 3]);
        assert!((f.s - 2.0).abs() < 0.01, "{}", f.s);
        let f = fit(&g, &[1, 3]);
        assert!((f.s - 2.0).abs() < 0.01, "{}", f.s);
        match &f.base {
            Base::Grid(_) => assert!((f.base.quantile(0.5) - 0.05).abs() < 0.01),
            Base::Sample(_) => panic!("no K = 0 in the fit"),
        }
        // The uniform world's shape is p·s at every level.
        for p in [0.1, 0.5, 0.99] {
            assert!((on_grid(&f.shape, p) - p * 2.0).abs() < 0.01, "{p}");
        }
    }

    #[test]
    fn a_long_kernel_is_preempted() {
        assert_eq!(preemptions(1.0, 2.0), 0);
        assert_eq!(preemptions(2.0, 2.0), 0);
        assert_eq!(preemptions(5.0, 2.0), 2);
        let f = Fit::uniform(2.0, Base::Grid(vec![0.0; GRID]));
        // 5 ms beside 2 contexts: 5 + U·4 + 2·4; p50 = 15, p99 = 16.96.
        let (p50, p99) = predict(&f, &Caller::Fixed(5.0), 2, &Draws::new(POINT_DRAWS, SEED));
        assert!((p50 - 15.0).abs() < 0.05, "{p50}");
        assert!((p99 - 16.96).abs() < 0.05, "{p99}");
    }

    /// A rotation whose slices are not always full: each busy context adds
    /// `s·p²` at level p (most waits short, a long tail). Fitted on 0, 1, 3,
    /// the shape predicts 6 at p50 and p99; the uniform rotation with the
    /// same fitted slice would not.
    #[test]
    fn the_wait_shape_comes_from_the_data() {
        let n = 4000;
        let s = 2.0;
        let g: BTreeMap<u32, Group> = [0u32, 1, 3, 6]
            .iter()
            .map(|&k| {
                let waits: Vec<f64> = (0..n)
                    .map(|i| {
                        let u = (i as f64 + 0.5) / n as f64;
                        0.05 + f64::from(k) * s * u * u
                    })
                    .collect();
                let walls = waits.iter().map(|w| w + 0.1).collect();
                (
                    k,
                    Group {
                        waits,
                        exec: vec![0.1; n],
                        rest: Vec::new(),
                        walls,
                    },
                )
            })
            .collect();
        let draws = Draws::new(POINT_DRAWS, SEED);
        let caller = Caller::Fixed(0.1);
        for ks in [&[0u32, 1, 3][..], &[1, 3][..]] {
            let f = fit(&g, ks);
            let (p50, p99) = predict(&f, &caller, 6, &draws);
            let (t50, t99) = (0.15 + 6.0 * s * 0.25, 0.15 + 6.0 * s * 0.99 * 0.99);
            assert!((p50 - t50).abs() < 0.02 * t50, "{ks:?}: p50 {p50} vs {t50}");
            assert!((p99 - t99).abs() < 0.02 * t99, "{ks:?}: p99 {p99} vs {t99}");
            let u = Fit::uniform(f.s, f.base.clone());
            let (u50, _) = predict(&u, &caller, 6, &draws);
            assert!((u50 - t50).abs() > 0.2 * t50, "uniform p50 {u50} vs {t50}");
        }
    }

    /// Counts weighted 1/K²: with K = 0 fitted, g is the mean of the
    /// per-count increments (Q_K − Q_0)/K, not the K²-weighted one that
    /// lets K = 3 decide alone.
    #[test]
    fn each_count_weighs_alike_per_tenant() {
        let n = 1000;
        let mk = |k: u32, per: f64| {
            let waits: Vec<f64> = (0..n)
                .map(|i| f64::from(k) * per * (i as f64 + 0.5) / n as f64)
                .collect();
            (
                k,
                Group {
                    walls: waits.clone(),
                    exec: vec![0.0; n],
                    rest: Vec::new(),
                    waits,
                },
            )
        };
        let g: BTreeMap<u32, Group> = [mk(0, 0.0), mk(1, 2.0), mk(3, 1.0)].into_iter().collect();
        let f = fit(&g, &[0, 1, 3]);
        // Per tenant: 2.0·p at K = 1, 1.0·p at K = 3; the mean is 1.5·p
        // (unweighted least squares would give (2 + 9)/10 = 1.1·p).
        assert!(
            (on_grid(&f.shape, 0.5) - 0.75).abs() < 0.01,
            "{}",
            on_grid(&f.shape, 0.5)
        );
        assert!((f.s - 1.5).abs() < 0.01, "{}", f.s);
        // Without K = 0 the weighted line through (1, 2p) and (3, 3p) has
        // slope p/2 whatever the weights (two points): check the base.
        let f = fit(&g, &[1, 3]);
        assert!((on_grid(&f.shape, 0.5) - 0.25).abs() < 0.01);
        assert!((f.base.quantile(0.5) - 0.75).abs() < 0.01);
    }

    #[test]
    fn grid_interpolation_and_monotone() {
        let g: Vec<f64> = (0..GRID).map(grid_level).collect();
        assert!((on_grid(&g, 0.5) - 0.5).abs() < 1e-12);
        assert!((on_grid(&g, 0.0025) - 0.0025).abs() < 1e-12);
        assert!((on_grid(&g, 1.0) - 0.995).abs() < 1e-12);
        let mut v = vec![-1.0, 2.0, 1.0, 3.0];
        monotone(&mut v);
        assert_eq!(v, vec![0.0, 2.0, 2.0, 3.0]);
    }

    #[test]
    fn binomial_quantiles() {
        assert_eq!(binomial_quantile(0, 0.5, 0.99), 0);
        assert_eq!(binomial_quantile(4, 1.0, 0.99), 4);
        assert_eq!(binomial_quantile(4, 0.0, 0.99), 0);
        // Binomial(10, 0.5): P(X ≤ 8) = 0.989, P(X ≤ 9) = 0.999.
        assert_eq!(binomial_quantile(10, 0.5, 0.99), 9);
    }

    #[test]
    fn fit_tenants_parse() {
        assert_eq!(parse_fit_tenants("3, 0,1").expect("ok"), vec![0, 1, 3]);
        assert!(parse_fit_tenants("0,,1").is_err());
        assert!(parse_fit_tenants("0,1,1").is_err());
        assert!(parse_fit_tenants("65").is_err());
        assert!(parse_fit_tenants("a").is_err());
    }
}
