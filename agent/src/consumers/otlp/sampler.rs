//! Which span trees leave the agent: the one sampling decision per trace,
//! made in the fan-outs before any consumer sees the rows
//! ([`crate::topology::SpanSampling`]), so the Parquet row (`span_sampled`)
//! and the collector agree, and the OTLP exporter only skips what it is told.
//!
//! A fleet of 2,000 nodes × 8 GPUs × 5 arrivals/s with 3 spans each is about
//! 240,000 spans/s; the default keeps about one tree per second per GPU:
//!
//! 1. **The sampler** (`OTEL_TRACES_SAMPLER` / `otlp.sampler`): always on,
//!    always off, or a trace-id ratio. The ratio decision is OpenTelemetry's
//!    `TraceIdRatioBased` (the trace id's last 8 bytes against the ratio), so
//!    it is a function of the trace id alone: every span of one tree goes
//!    together, and a collector's tail sampler could redo it. Without a
//!    sampler set, the ratio is 0.9 trees/s over the trees a GPU makes.
//! 2. **Forced exports**, whatever the ratio (not with `always_off`): an
//!    arrival whose wait (`queue_ms`) is above its GPU and kernel's p99 in
//!    the health window (what the evaluator last published), and a health
//!    evaluation whose verdict or contention state differs from the last one
//!    of its GPU and kernel. These are the spans someone looks for. Each GPU
//!    has a token bucket of `forced_spans_per_gpu_per_min` (one minute's
//!    worth), so a GPU that turns slow for good cannot flood the collector;
//!    what the cap refuses is counted.
//!
//! Health evaluations that are not forced are sampled at the same ratio (a
//! random draw: their trace ids are made later, by the exporter).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use slicetrace_schema::{HealthRecord, Kernel, ProbeRecord, TraceId};

use super::config::{OtlpConfig, SamplerName};
use crate::internal_events::{
    Counters, ForcedReason, ForcedSpanCapped, InternalEvent, SpanForced, SpansSampledOut,
};
use crate::serve::live::LiveState;
use crate::topology::SpanSampling;

/// Span trees per second per GPU that the default ratio aims at; with the
/// default cap of forced exports (6 a minute, 0.1/s) the mean stays at or
/// below one tree per second per GPU.
pub const DEFAULT_TREES_PER_GPU_PER_SEC: f64 = 0.9;

/// The decision rule, resolved from the config once.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Rule {
    /// Nothing at all, not even forced spans.
    Off,
    /// Trace ids whose low 63 bits fall below the ratio; forced spans too.
    Ratio(f64),
}

impl Rule {
    /// The rule `config` asks for, with `trees_per_sec` the span trees each
    /// GPU makes per second (for the fleet default).
    pub fn from_config(config: &OtlpConfig, trees_per_sec: f64) -> Self {
        let arg = config.sampler_arg.unwrap_or(1.0).clamp(0.0, 1.0);
        match config.sampler {
            Some(SamplerName::AlwaysOn | SamplerName::ParentbasedAlwaysOn) => Rule::Ratio(1.0),
            Some(SamplerName::AlwaysOff | SamplerName::ParentbasedAlwaysOff) => Rule::Off,
            Some(SamplerName::Traceidratio | SamplerName::ParentbasedTraceidratio) => {
                Rule::Ratio(arg)
            }
            None => Rule::Ratio(default_ratio(trees_per_sec)),
        }
    }
}

/// The fleet default: [`DEFAULT_TREES_PER_GPU_PER_SEC`] over the trees a
/// GPU makes per second (all of them when it makes fewer).
pub fn default_ratio(trees_per_sec: f64) -> f64 {
    if trees_per_sec.is_finite() && trees_per_sec > DEFAULT_TREES_PER_GPU_PER_SEC {
        DEFAULT_TREES_PER_GPU_PER_SEC / trees_per_sec
    } else {
        1.0
    }
}

/// OpenTelemetry's `TraceIdRatioBased` decision: the trace id's last 8
/// bytes (big-endian), shifted right once, below `ratio × 2^63`.
pub fn trace_id_sampled(trace: TraceId, ratio: f64) -> bool {
    if ratio >= 1.0 {
        return true;
    }
    if ratio <= 0.0 {
        return false;
    }
    let b = trace.to_bytes();
    let mut low = [0u8; 8];
    low.copy_from_slice(&b[8..16]);
    let x = u64::from_be_bytes(low) >> 1;
    let bound = (ratio * (1u64 << 63) as f64) as u64;
    x < bound
}

/// A token bucket of `per_min` tokens, refilled continuously.
#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn take(&mut self, per_min: u32, now: Instant) -> bool {
        let cap = f64::from(per_min);
        let refill = now.saturating_duration_since(self.at).as_secs_f64() * cap / 60.0;
        self.tokens = (self.tokens + refill).min(cap);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[derive(Debug, Default)]
struct State {
    /// gpu_uuid → its forced-export bucket.
    buckets: HashMap<String, Bucket>,
    /// (gpu_uuid, kernel) → the last evaluation's (verdict, contention).
    last_state: HashMap<(String, Kernel), (String, Option<String>)>,
}

/// The agent's span sampler: one per agent, shared by both fan-outs.
#[derive(Debug)]
pub struct SpanSampler {
    rule: Rule,
    forced_per_min: u32,
    live: Arc<LiveState>,
    counters: Arc<Counters>,
    state: Mutex<State>,
}

impl SpanSampler {
    /// A sampler of `config`'s rule; `trees_per_sec` is the span trees one
    /// GPU makes per second (for the default ratio); `live` gives the
    /// window p99 of each GPU's wait.
    pub fn new(
        config: &OtlpConfig,
        trees_per_sec: f64,
        live: Arc<LiveState>,
        counters: Arc<Counters>,
    ) -> Self {
        let rule = Rule::from_config(config, trees_per_sec);
        tracing::info!(
            rule = ?rule,
            forced_spans_per_gpu_per_min = config.forced_spans_per_gpu_per_min,
            "span sampling"
        );
        Self {
            rule,
            forced_per_min: config.forced_spans_per_gpu_per_min,
            live,
            counters,
            state: Mutex::new(State::default()),
        }
    }

    /// The rule in force.
    pub fn rule(&self) -> Rule {
        self.rule
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic elsewhere while holding it leaves plain counters behind.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// One forced export for `gpu`, if its bucket has a token (counted
    /// either way).
    fn force(&self, st: &mut State, gpu: &str, reason: ForcedReason, now: Instant) -> bool {
        if self.forced_per_min == 0 {
            return false;
        }
        let per_min = self.forced_per_min;
        let b = st.buckets.entry(gpu.to_string()).or_insert(Bucket {
            tokens: f64::from(per_min),
            at: now,
        });
        if b.take(per_min, now) {
            SpanForced { reason }.emit(&self.counters);
            true
        } else {
            ForcedSpanCapped.emit(&self.counters);
            false
        }
    }

    /// Whether `r`'s wait is above its GPU and kernel's p99 in the health
    /// window (`false` while the evaluator has published none).
    fn slow_arrival(&self, r: &ProbeRecord) -> bool {
        if !r.is_arrival() {
            return false;
        }
        let Some(q) = r.queue_ms else { return false };
        let p99 = self
            .live
            .read_kernel(&r.gpu_uuid, r.kernel, |k| k.queue.p99)
            .flatten();
        p99.is_some_and(|p| q > p)
    }
}

impl SpanSampling for SpanSampler {
    fn probes(&self, rows: &mut [ProbeRecord]) {
        let Rule::Ratio(ratio) = self.rule else {
            for r in rows.iter_mut() {
                r.span_sampled = Some(false);
            }
            SpansSampledOut {
                runs: rows.len() as u64,
                health: 0,
            }
            .emit(&self.counters);
            return;
        };
        let now = Instant::now();
        // One decision per trace: the rows of one burst cycle share theirs.
        let mut decided: Vec<(Option<TraceId>, bool)> = Vec::new();
        let mut st: Option<MutexGuard<'_, State>> = None;
        for i in 0..rows.len() {
            let trace = rows[i].trace_id;
            if trace.is_some() && decided.iter().any(|(t, _)| *t == trace) {
                continue;
            }
            let by_ratio = match trace {
                Some(t) => trace_id_sampled(t, ratio),
                None => rand::random::<f64>() < ratio,
            };
            let sampled = by_ratio || {
                let slow = rows
                    .iter()
                    .filter(|r| r.trace_id == trace)
                    .any(|r| self.slow_arrival(r));
                slow && {
                    let st = st.get_or_insert_with(|| self.state());
                    self.force(st, &rows[i].gpu_uuid, ForcedReason::WaitOverP99, now)
                }
            };
            decided.push((trace, sampled));
            if trace.is_none() {
                rows[i].span_sampled = Some(sampled);
            }
        }
        let mut out = 0;
        for r in rows.iter_mut() {
            if r.trace_id.is_some() {
                r.span_sampled = decided
                    .iter()
                    .find(|(t, _)| *t == r.trace_id)
                    .map(|(_, s)| *s);
            }
            out += u64::from(r.span_sampled == Some(false));
        }
        SpansSampledOut {
            runs: out,
            health: 0,
        }
        .emit(&self.counters);
    }

    fn health(&self, rows: &mut [HealthRecord]) {
        let now = Instant::now();
        let mut st = self.state();
        let mut out = 0;
        for h in rows.iter_mut() {
            // Every evaluation updates the last state, exported or not.
            let key = (h.gpu_uuid.clone(), h.kernel);
            let now_state = (h.verdict.clone(), h.contention.clone());
            let changed = st.last_state.get(&key) != Some(&now_state);
            st.last_state.insert(key, now_state);
            let sampled = match self.rule {
                Rule::Off => false,
                Rule::Ratio(ratio) => {
                    rand::random::<f64>() < ratio
                        || (changed
                            && self.force(&mut st, &h.gpu_uuid, ForcedReason::StateChanged, now))
                }
            };
            h.span_sampled = Some(sampled);
            out += u64::from(!sampled);
        }
        SpansSampledOut {
            runs: 0,
            health: out,
        }
        .emit(&self.counters);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::serve::live::{KernelHealth, Quantiles};
    use slicetrace_schema::Kernel;

    fn sampler(config: OtlpConfig, trees_per_sec: f64) -> (SpanSampler, Arc<Counters>) {
        let c = Arc::new(Counters::default());
        (
            SpanSampler::new(
                &config,
                trees_per_sec,
                Arc::new(LiveState::default()),
                c.clone(),
            ),
            c,
        )
    }

    fn arrival(trace: u64, queue_ms: f64) -> ProbeRecord {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&trace.to_be_bytes());
        // Spread the low bytes the ratio looks at.
        b[8..].copy_from_slice(&trace.wrapping_mul(0x9E37_79B9_7F4A_7C15).to_be_bytes());
        ProbeRecord {
            gpu_uuid: "GPU-1".into(),
            kernel: Kernel::Fft,
            arrival: Some(true),
            queue_ms: Some(queue_ms),
            trace_id: Some(TraceId::from_bytes(b)),
            ..Default::default()
        }
    }

    #[test]
    fn the_fleet_default_keeps_about_point_nine_trees_per_second() {
        assert_eq!(default_ratio(5.0), 0.18);
        assert_eq!(default_ratio(0.5), 1.0, "a slow GPU keeps every tree");
        let (s, c) = sampler(OtlpConfig::default(), 5.0);
        assert_eq!(s.rule(), Rule::Ratio(0.18));
        let mut rows: Vec<ProbeRecord> = (0..20_000).map(|i| arrival(i, 0.1)).collect();
        s.probes(&mut rows);
        let kept = rows.iter().filter(|r| r.span_sampled == Some(true)).count() as f64;
        // 20,000 draws at 0.18: the standard deviation is about 54.
        assert!((kept - 3600.0).abs() < 300.0, "{kept}");
        assert_eq!(Counters::get(&c.otlp_unsampled_runs), 20_000 - kept as u64);
    }

    #[test]
    fn the_ratio_is_a_function_of_the_trace_id_alone() {
        let t = arrival(42, 0.1).trace_id.unwrap();
        let a = trace_id_sampled(t, 0.5);
        for _ in 0..10 {
            assert_eq!(trace_id_sampled(t, 0.5), a);
        }
        assert!(trace_id_sampled(t, 1.0));
        assert!(!trace_id_sampled(t, 0.0));
    }

    #[test]
    fn otel_sampler_names_map_to_rules() {
        let with = |name: &str, arg: Option<f64>| {
            let c = OtlpConfig {
                sampler: Some(name.parse().unwrap()),
                sampler_arg: arg,
                ..Default::default()
            };
            Rule::from_config(&c, 5.0)
        };
        assert_eq!(with("always_on", None), Rule::Ratio(1.0));
        assert_eq!(with("parentbased_always_on", None), Rule::Ratio(1.0));
        assert_eq!(with("always_off", None), Rule::Off);
        assert_eq!(with("parentbased_always_off", None), Rule::Off);
        assert_eq!(with("traceidratio", Some(0.25)), Rule::Ratio(0.25));
        assert_eq!(with("parentbased_traceidratio", None), Rule::Ratio(1.0));
        assert!("jaeger_remote".parse::<SamplerName>().is_err());
    }

    #[test]
    fn slow_arrivals_are_forced_up_to_the_cap() {
        let config = OtlpConfig {
            sampler: Some(SamplerName::Traceidratio),
            sampler_arg: Some(0.0),
            forced_spans_per_gpu_per_min: 3,
            ..Default::default()
        };
        let (s, c) = sampler(config, 5.0);
        // No p99 published yet: nothing is forced.
        let mut rows = vec![arrival(1, 50.0)];
        s.probes(&mut rows);
        assert_eq!(rows[0].span_sampled, Some(false));
        s.live.kernels.write().unwrap().insert(
            ("GPU-1".into(), Kernel::Fft),
            KernelHealth {
                gpu_index: 0,
                verdict: slicetrace_schema::Verdict::Healthy,
                reason: String::new(),
                health_reason: slicetrace_schema::Reason::None,
                health_source: None,
                wall: Quantiles::default(),
                gpu: Quantiles::default(),
                queue: Quantiles {
                    p50: Some(1.0),
                    p99: Some(5.0),
                },
                baseline_p99_ms: None,
                inflation: None,
                samples: 100,
                correctness_failures_total: 0,
                contention: None,
                contention_reason: slicetrace_schema::Reason::None,
                contention_detail: String::new(),
                contention_source: None,
                wall_baseline: None,
                gpu_baseline: None,
                event_baseline_p99_ms: None,
            },
        );
        let mut rows: Vec<ProbeRecord> = (0..10)
            .map(|i| arrival(i, if i % 2 == 0 { 9.0 } else { 1.0 }))
            .collect();
        s.probes(&mut rows);
        let kept: Vec<u64> = (0..10)
            .filter(|&i| rows[i as usize].span_sampled == Some(true))
            .collect();
        // The first three slow ones (0, 2, 4); 6 and 8 hit the cap.
        assert_eq!(kept, vec![0, 2, 4]);
        assert_eq!(Counters::get(&c.otlp_forced_wait), 3);
        assert_eq!(Counters::get(&c.otlp_forced_capped), 2);
        assert_eq!(Counters::get(&c.otlp_unsampled_runs), 1 + 7);
    }

    #[test]
    fn always_off_exports_nothing_not_even_forced_spans() {
        let config = OtlpConfig {
            sampler: Some(SamplerName::AlwaysOff),
            ..Default::default()
        };
        let (s, c) = sampler(config, 5.0);
        let mut h = vec![HealthRecord {
            gpu_uuid: "GPU-1".into(),
            kernel: Kernel::Fft,
            verdict: "unhealthy".into(),
            ..Default::default()
        }];
        s.health(&mut h);
        assert_eq!(h[0].span_sampled, Some(false));
        assert_eq!(Counters::get(&c.otlp_unsampled_health), 1);
        assert_eq!(Counters::get(&c.otlp_forced_state), 0);
    }

    #[test]
    fn changed_verdicts_are_forced_and_unchanged_ones_sampled() {
        let config = OtlpConfig {
            sampler: Some(SamplerName::Traceidratio),
            sampler_arg: Some(0.0),
            ..Default::default()
        };
        let (s, c) = sampler(config, 5.0);
        let eval = |verdict: &str| HealthRecord {
            gpu_uuid: "GPU-1".into(),
            kernel: Kernel::Gemm,
            verdict: verdict.into(),
            contention: Some("ok".into()),
            ..Default::default()
        };
        let mut rows = vec![
            eval("healthy"),
            eval("healthy"),
            eval("degraded"),
            eval("degraded"),
        ];
        s.health(&mut rows);
        let got: Vec<Option<bool>> = rows.iter().map(|r| r.span_sampled).collect();
        // The first evaluation is a change from nothing.
        assert_eq!(got, [Some(true), Some(false), Some(true), Some(false)]);
        assert_eq!(Counters::get(&c.otlp_forced_state), 2);
        assert_eq!(Counters::get(&c.otlp_unsampled_health), 2);
    }
}
