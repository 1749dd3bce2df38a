//! The rolling window of one GPU and kernel: `BUCKETS` sub-buckets of
//! histograms that [`super::Evaluator::observe`] fills from arrival runs and
//! [`super::Evaluator::evaluate`] expires and merges into one [`Window`],
//! whose [`WindowStats`] the schema's judge reads. The histogram bounds are
//! shared with the learned baselines (`baseline.rs`) and the exit summary.

use std::collections::VecDeque;
use std::time::Instant;

use hdrhistogram::Histogram;
use slicetrace_schema::WindowStats;

use crate::serve::live::Quantiles;

/// Sub-buckets per window: the window slides by a tenth of its length.
pub(super) const BUCKETS: u32 = 10;

/// Largest recordable value (µs for latencies, SM cycles for the event
/// clock): 60 s, or 60 M cycles; larger values are clamped.
const MAX_US: u64 = 60_000_000;

/// 1 µs .. 60 s at 2 significant digits (1 % resolution) with u32 counts:
/// about 20 KiB per histogram. (3 digits over 1 h with u64 counts took
/// ~360 KiB each, and a window holds 3 per sub-bucket per GPU and kernel.)
pub(super) fn hist() -> Histogram<u32> {
    // The bounds are constants, so this cannot fail.
    Histogram::new_with_bounds(1, MAX_US, 2)
        .unwrap_or_else(|_| Histogram::new(2).unwrap_or_else(|_| unreachable!()))
}

/// Milliseconds → microseconds, clamped to what [`hist`] records.
pub(crate) fn us(ms: f64) -> u64 {
    (ms * 1000.0).round().clamp(1.0, MAX_US as f64) as u64
}

/// Millions of SM cycles → cycles, for a histogram.
pub(super) fn cycles(mcycles: f64) -> u64 {
    (mcycles * 1e6).round().clamp(1.0, MAX_US as f64) as u64
}

/// One sub-bucket of a window.
pub(super) struct Bucket {
    pub(super) start: Instant,
    pub(super) wall: Histogram<u32>,
    pub(super) gpu: Histogram<u32>,
    pub(super) queue: Histogram<u32>,
    /// Event time per SM cycle of the runs whose event clock is judged.
    pub(super) event: Histogram<u32>,
    pub(super) failures: u64,
    pub(super) throttle: u64,
    /// Arrival runs with a hardware throttle bit.
    pub(super) hw_throttled: u64,
    pub(super) max_tenants: Option<u32>,
    /// Wait (`queue_ms`) of the arrivals whose busy tenants are known, ms.
    pub(super) wait_ms: f64,
    /// That wait split equally among each arrival's busy tenants, by
    /// tenant (see [`attribute`]).
    pub(super) blame_ms: std::collections::BTreeMap<String, f64>,
}

/// Adds one arrival's wait to `b`, split equally among its busy tenants
/// (the live blame model, docs/blame-whatif.md): under round-robin time
/// slices each busy context ahead of the arrival costs it the same slice.
pub(super) fn attribute(b: &mut Bucket, queue_ms: Option<f64>, busy: Option<&Vec<String>>) {
    let (Some(q), Some(busy)) = (queue_ms, busy) else {
        return;
    };
    let q = q.max(0.0);
    b.wait_ms += q;
    if busy.is_empty() {
        return;
    }
    let each = q / busy.len() as f64;
    for t in busy {
        let who = t.rsplit_once('=').map_or(t.as_str(), |(w, _)| w);
        *b.blame_ms.entry(who.to_string()).or_insert(0.0) += each;
    }
}

impl Bucket {
    pub(super) fn new(start: Instant) -> Self {
        Self {
            start,
            wall: hist(),
            gpu: hist(),
            queue: hist(),
            event: hist(),
            failures: 0,
            throttle: 0,
            hw_throttled: 0,
            max_tenants: None,
            wait_ms: 0.0,
            blame_ms: std::collections::BTreeMap::new(),
        }
    }
}

/// What one window of a track looked like.
pub(super) struct Window {
    pub(super) stats: WindowStats,
    pub(super) wall: Quantiles,
    pub(super) gpu: Quantiles,
    pub(super) queue: Quantiles,
}

/// Merges the sub-buckets still in the window.
pub(super) fn window_of(buckets: &VecDeque<Bucket>) -> Window {
    let (mut wall, mut gpu, mut queue, mut event) = (hist(), hist(), hist(), hist());
    let (mut failures, mut throttle, mut tenants) = (0u64, 0u64, None::<u32>);
    let mut hw_throttled = 0u64;
    for b in buckets {
        let _ = wall.add(&b.wall);
        let _ = gpu.add(&b.gpu);
        let _ = queue.add(&b.queue);
        let _ = event.add(&b.event);
        failures += b.failures;
        throttle |= b.throttle;
        hw_throttled += b.hw_throttled;
        tenants = tenants.max(b.max_tenants);
    }
    let q = |h: &Histogram<u32>, p: f64| {
        (!h.is_empty()).then(|| h.value_at_quantile(p) as f64 / 1000.0)
    };
    let qs = |h: &Histogram<u32>| Quantiles {
        p50: q(h, 0.5),
        p99: q(h, 0.99),
    };
    Window {
        stats: WindowStats {
            samples: wall.len(),
            wall_p99_ms: q(&wall, 0.99),
            event_samples: event.len(),
            event_mcycles_p50: (!event.is_empty())
                .then(|| event.value_at_quantile(0.5) as f64 / 1e6),
            correctness_failures: failures,
            throttle_reasons: throttle,
            hw_throttled_runs: hw_throttled,
            max_tenants: tenants,
        },
        wall: qs(&wall),
        gpu: qs(&gpu),
        queue: qs(&queue),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_arrivals_wait_is_split_equally_among_its_busy_tenants() {
        let mut b = Bucket::new(Instant::now());
        let v = |s: &[&str]| Some(s.iter().map(|x| x.to_string()).collect::<Vec<_>>());
        attribute(&mut b, Some(6.0), v(&["ml/a=90", "pid:7=20"]).as_ref());
        attribute(&mut b, Some(2.0), v(&["ml/a=90"]).as_ref());
        // Nobody busy: the wait counts in the total, blamed on no one.
        attribute(&mut b, Some(1.0), v(&[]).as_ref());
        // Busy tenants unknown: neither.
        attribute(&mut b, Some(50.0), None);
        assert_eq!(b.wait_ms, 9.0);
        assert_eq!(b.blame_ms.get("ml/a"), Some(&5.0));
        assert_eq!(b.blame_ms.get("pid:7"), Some(&3.0));
        assert_eq!(b.blame_ms.len(), 2);
    }
}
