//! The GPU's clock on the host's time line: calibration of `%globaltimer`
//! against the host's monotonic clock, from bounds that every run gives.
//!
//! Each CUDA run stamps the GPU's global timer when its graph starts
//! executing and when its kernel has ended ([`crate::cuda`]). To turn those
//! stamps into host times, the agent needs `offset = gpu_ns − host_ns` (and
//! how it drifts). It never observes the offset directly, only bounds:
//!
//! * a stamp taken on the GPU **after** the host read its clock (the launch)
//!   gives `offset ≤ gpu − host` (an *upper* bound);
//! * a stamp the host saw completed **before** it read its clock (the wait
//!   returned) gives `offset ≥ gpu − host` (a *lower* bound).
//!
//! Every run gives one of each (launch → start stamp, end stamp → wait
//! returned), and a two-way exchange with a one-thread kernel through mapped
//! host memory gives both, one PCIe round trip apart (`cuda::stamp`). A
//! bound is loose when the run waited for its time slice or the host woke
//! late, but it is never wrong: so the
//! estimator keeps the tightest bound of each side per bucket of host time
//! and finds the lines `offset(t) = a + d·t` that satisfy all of them, over a
//! sliding window. It reports the centre of the offsets those lines allow at
//! the estimate's time, and half their spread as the **error bound**: if the
//! two clocks are linear over the window, the true offset is inside
//! `estimate ± error`. A bound that contradicts all others (the driver
//! stepped its timer) makes the estimator drop its older buckets and start
//! again from the newer ones; such resets are counted.
//!
//! All arithmetic is on plain integers and floats, so it is tested with
//! scripted clocks (`clock::tests`); nothing here touches CUDA.

use std::collections::VecDeque;

/// Width of one bucket of host time, ns: each bucket keeps its tightest
/// upper and lower bound.
pub const BUCKET_NS: i64 = 1_000_000_000;
/// How much host time the fit looks back over (buckets × [`BUCKET_NS`]).
pub const WINDOW_BUCKETS: usize = 64;
/// The largest drift between the two clocks the fit considers, as a ratio
/// (500 ppm; crystals are specified at ±50–100 ppm).
pub const MAX_DRIFT: f64 = 500e-6;
/// Refit at most this often (host ns), so that the cost per run stays a few
/// multiplications.
pub const REFIT_NS: i64 = 1_000_000_000;
/// While the error bound is above [`TARGET_ERROR_NS`], refit as often as
/// this (host ns) instead of [`REFIT_NS`].
pub const REFIT_WIDE_NS: i64 = 100_000_000;
/// The error bound aimed at (10 µs on an idle GPU).
pub const TARGET_ERROR_NS: f64 = 10_000.0;
/// Above this error bound a run's `wall_ms` falls back to the host clock.
pub const MAX_ERROR_NS: f64 = 100_000.0;

/// One bound: at host time `t`, `offset ≤ v` (upper) or `offset ≥ v` (lower),
/// with `v` relative to [`GpuClock`]'s base offset.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Bound {
    t: i64,
    v: i64,
}

#[derive(Debug, Clone, Default)]
struct Bucket {
    index: i64,
    upper: Option<Bound>,
    lower: Option<Bound>,
}

/// The line fitted through the bounds of the window.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Fit {
    /// Host time the fit refers to, ns.
    pub t_ref: i64,
    /// Offset at `t_ref` relative to the base, ns (centre of the feasible range).
    pub offset_rel: f64,
    /// Drift: ns of offset per ns of host time.
    pub drift: f64,
    /// Half the spread of feasible offsets at `t_ref`, ns.
    pub err_ns: f64,
    /// Half the spread of feasible drifts.
    pub drift_err: f64,
}

/// An offset estimate at one host time.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Estimate {
    /// `gpu_ns − host_ns`, ns.
    pub offset_ns: i64,
    /// The true offset is within `offset_ns ± err_ns` if both clocks are
    /// linear over the window.
    pub err_ns: f64,
}

/// The calibration of one GPU's timer against the host's monotonic clock.
#[derive(Debug, Clone, Default)]
pub struct GpuClock {
    /// Offsets are stored relative to the first bound seen, so that they fit
    /// in an f64 without rounding (GPU timers count from the Unix epoch).
    base: Option<i64>,
    buckets: VecDeque<Bucket>,
    fit: Option<Fit>,
    last_fit_at: Option<i64>,
    dirty: bool,
    resets: u64,
}

impl GpuClock {
    /// An empty calibration (no estimate until both sides have a bound).
    pub fn new() -> Self {
        Self::default()
    }

    /// A GPU stamp `gpu_ns` taken after the host read `host_ns`:
    /// `offset ≤ gpu_ns − host_ns`.
    pub fn upper(&mut self, host_ns: i64, gpu_ns: i64) {
        self.add(host_ns, gpu_ns, true);
    }

    /// A GPU stamp `gpu_ns` the host saw completed by `host_ns`:
    /// `offset ≥ gpu_ns − host_ns`.
    pub fn lower(&mut self, host_ns: i64, gpu_ns: i64) {
        self.add(host_ns, gpu_ns, false);
    }

    /// The two bounds one run gives: launched at `launch_host`, started at
    /// `start_gpu`, ended at `end_gpu`, seen complete at `done_host`.
    pub fn observe_run(&mut self, launch_host: i64, start_gpu: i64, end_gpu: i64, done_host: i64) {
        self.upper(launch_host, start_gpu);
        self.lower(done_host, end_gpu);
    }

    /// How often the estimator dropped its older bounds because a new one
    /// contradicted them (a stepped GPU timer).
    pub fn resets(&self) -> u64 {
        self.resets
    }

    /// The current fit (after [`Self::estimate`] refreshed it).
    pub fn fit(&self) -> Option<Fit> {
        self.fit
    }

    fn add(&mut self, host_ns: i64, gpu_ns: i64, upper: bool) {
        let raw = gpu_ns.wrapping_sub(host_ns);
        let base = *self.base.get_or_insert(raw);
        let b = Bound {
            t: host_ns,
            v: raw.wrapping_sub(base),
        };
        let index = host_ns.div_euclid(BUCKET_NS);
        if self.buckets.back().is_none_or(|l| l.index < index) {
            self.buckets.push_back(Bucket {
                index,
                ..Bucket::default()
            });
        }
        // A bound older than the newest bucket joins its own bucket if it is
        // still in the window, else it is dropped.
        let Some(bucket) = self.buckets.iter_mut().rev().find(|k| k.index <= index) else {
            return;
        };
        if bucket.index != index {
            return;
        }
        let slot = if upper {
            &mut bucket.upper
        } else {
            &mut bucket.lower
        };
        // Tighter means nearer the line, so compare after removing the
        // drift of the last fit: across one bucket a drift of 20 ppm moves
        // the offset by 20 µs, ten times a two-way exchange's width, and a
        // raw comparison would keep the bound at the bucket's edge that the
        // drift favours rather than the one closest to the truth.
        let d = self.fit.map_or(0.0, |f| f.drift);
        let rel = |x: &Bound| x.v as f64 - d * (x.t - b.t) as f64;
        let tighter = match slot {
            None => true,
            Some(old) if upper => (b.v as f64) < rel(old),
            Some(old) => (b.v as f64) > rel(old),
        };
        if tighter {
            *slot = Some(b);
            self.dirty = true;
        }
        while self.buckets.len() > WINDOW_BUCKETS {
            self.buckets.pop_front();
        }
    }

    /// The offset at host time `host_ns`, refitting when the bounds changed
    /// and the last fit is older than [`REFIT_NS`]. `None` until both an
    /// upper and a lower bound exist.
    pub fn estimate(&mut self, host_ns: i64) -> Option<Estimate> {
        let age = self
            .last_fit_at
            .map_or(i64::MAX, |t| host_ns.saturating_sub(t));
        // While the bound is wide (just started, or a drift not yet pinned
        // down), refit sooner: new bounds narrow it most then.
        let now = self.at(host_ns);
        let wide = now.is_none_or(|e| e.err_ns > TARGET_ERROR_NS);
        let due = self.fit.is_none() || age >= REFIT_NS || (wide && age >= REFIT_WIDE_NS);
        if !(self.dirty && due) {
            return now;
        }
        self.refit();
        self.last_fit_at = Some(host_ns);
        self.at(host_ns)
    }

    /// The current fit evaluated at `host_ns`.
    fn at(&self, host_ns: i64) -> Option<Estimate> {
        let f = self.fit?;
        let dt = (host_ns - f.t_ref) as f64;
        let rel = f.offset_rel + f.drift * dt;
        let err = f.err_ns + f.drift_err * dt.abs();
        Some(Estimate {
            offset_ns: self.base? + rel.round() as i64,
            err_ns: err,
        })
    }

    /// Maps a GPU timestamp to host time at `host_ns` (the estimate's time),
    /// returning the host time and the error bound.
    pub fn to_host(&mut self, host_ns: i64, gpu_ns: i64) -> Option<(i64, f64)> {
        let e = self.estimate(host_ns)?;
        Some((gpu_ns - e.offset_ns, e.err_ns))
    }

    /// Refits over the window; on contradicting bounds drops the older half
    /// of the buckets until the rest agree.
    fn refit(&mut self) {
        self.dirty = false;
        loop {
            match fit(&self.buckets) {
                Ok(f) => {
                    self.fit = f;
                    return;
                }
                Err(Inconsistent) => {
                    self.resets += 1;
                    let keep = self.buckets.len() / 2;
                    if keep == 0 {
                        self.buckets.clear();
                        self.fit = None;
                        return;
                    }
                    while self.buckets.len() > keep {
                        self.buckets.pop_front();
                    }
                }
            }
        }
    }
}

/// The bounds admit no line: a clock stepped.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Inconsistent;

/// Fits `offset(t) = a + d·(t − t_ref)` to the buckets' bounds; `Ok(None)`
/// when one side has no bound yet.
fn fit(buckets: &VecDeque<Bucket>) -> Result<Option<Fit>, Inconsistent> {
    let upper: Vec<Bound> = buckets.iter().filter_map(|b| b.upper).collect();
    let lower: Vec<Bound> = buckets.iter().filter_map(|b| b.lower).collect();
    let (Some(t_ref), false) = (
        upper.iter().chain(&lower).map(|b| b.t).max(),
        upper.is_empty() || lower.is_empty(),
    ) else {
        return Ok(None);
    };
    let rel = |b: &Bound, d: f64| b.v as f64 - d * (b.t - t_ref) as f64;
    // Feasible offsets at t_ref for a drift d: [a_lo(d), a_hi(d)].
    let a_hi = |d: f64| {
        upper
            .iter()
            .map(|b| rel(b, d))
            .fold(f64::INFINITY, f64::min)
    };
    let a_lo = |d: f64| {
        lower
            .iter()
            .map(|b| rel(b, d))
            .fold(f64::NEG_INFINITY, f64::max)
    };
    let width = |d: f64| a_hi(d) - a_lo(d);
    // width is concave (a min of lines minus a max of lines).
    let d_star = argmax(&width, -MAX_DRIFT, MAX_DRIFT);
    if width(d_star) < 0.0 {
        return Err(Inconsistent);
    }
    // The drifts that satisfy every bound, and the offsets they allow.
    let d_min = root(&width, -MAX_DRIFT, d_star);
    let d_max = root(&width, MAX_DRIFT, d_star);
    let hi = a_hi(argmax(&a_hi, d_min, d_max));
    let lo = a_lo(argmax(&|d| -a_lo(d), d_min, d_max));
    Ok(Some(Fit {
        t_ref,
        offset_rel: (hi + lo) / 2.0,
        drift: d_star,
        err_ns: ((hi - lo) / 2.0).max(0.0),
        drift_err: (d_max - d_min) / 2.0,
    }))
}

/// Ternary search for the maximum of a concave function on `[lo, hi]`.
fn argmax(f: &dyn Fn(f64) -> f64, mut lo: f64, mut hi: f64) -> f64 {
    for _ in 0..100 {
        if hi - lo < 1e-12 {
            break;
        }
        let m1 = lo + (hi - lo) / 3.0;
        let m2 = hi - (hi - lo) / 3.0;
        if f(m1) < f(m2) {
            lo = m1;
        } else {
            hi = m2;
        }
    }
    (lo + hi) / 2.0
}

/// The point between `inside` (where `f ≥ 0`) and `outside` where a concave
/// `f` crosses 0; `outside` itself when `f` is still ≥ 0 there.
fn root(f: &dyn Fn(f64) -> f64, mut outside: f64, mut inside: f64) -> f64 {
    if f(outside) >= 0.0 {
        return outside;
    }
    for _ in 0..64 {
        let mid = (outside + inside) / 2.0;
        if f(mid) >= 0.0 {
            inside = mid;
        } else {
            outside = mid;
        }
    }
    inside
}

#[cfg(test)]
mod tests;
