//! Records to spans: the run span of a record (`probe fft|gemm`) with its
//! `queued` and `executing` children, a cycle's `probe_cycle` root, and one
//! `health_evaluation` span per live-health verdict. Pure conversions: the
//! span queue (`queue.rs`) decides which parent a run gets and when a root is
//! complete, and calls these to build the spans it queues.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanLinks};
use slicetrace_schema::{attr, HealthRecord, Kernel, ProbeRecord, Verdict};

use super::attributes::{extra_attr, health_attributes, run_attributes};
use super::otel_ids::{random_span_id, random_trace_id, root_span_id};

/// One finished, sampled, internal span; an `end` before `start` is clamped
/// to `start`.
pub(super) fn span(
    scope: &InstrumentationScope,
    (trace, id, parent): (TraceId, SpanId, SpanId),
    name: &'static str,
    (start, end): (SystemTime, SystemTime),
    attributes: Vec<KeyValue>,
    status: Status,
) -> SpanData {
    SpanData {
        span_context: SpanContext::new(
            trace,
            id,
            TraceFlags::SAMPLED,
            false,
            TraceState::default(),
        ),
        parent_span_id: parent,
        parent_span_is_remote: false,
        span_kind: SpanKind::Internal,
        name: name.into(),
        start_time: start,
        end_time: end.max(start),
        attributes,
        dropped_attributes_count: 0,
        events: SpanEvents::default(),
        links: SpanLinks::default(),
        status,
        instrumentation_scope: scope.clone(),
    }
}

/// `ts_ns + plus_ms` as a `SystemTime`; negative or non-finite parts count as 0.
pub(super) fn time_at(ts_ns: i64, plus_ms: f64) -> SystemTime {
    let base = UNIX_EPOCH + Duration::from_nanos(u64::try_from(ts_ns).unwrap_or(0));
    let plus = if plus_ms.is_finite() && plus_ms > 0.0 {
        Duration::try_from_secs_f64(plus_ms / 1000.0).unwrap_or(Duration::ZERO)
    } else {
        Duration::ZERO
    };
    base + plus
}

/// When a run ended: its start plus `wall_ms` (0 if not a positive number).
pub(super) fn end_ns(r: &ProbeRecord) -> i64 {
    let wall_ns = if r.wall_ms.is_finite() && r.wall_ms > 0.0 {
        (r.wall_ms * 1e6) as i64
    } else {
        0
    };
    r.ts_ns.saturating_add(wall_ns)
}

/// The run span (`probe fft|gemm`) of a record and its `queued` and
/// `executing` children. `root` is the cycle root, or invalid when the
/// run span is the root of its own trace.
pub(super) fn run_spans(
    scope: &InstrumentationScope,
    r: &ProbeRecord,
    trace: TraceId,
    run_id: SpanId,
    root: SpanId,
) -> Vec<SpanData> {
    let stop_ns = end_ns(r);
    let name = match r.kernel {
        Kernel::Fft => "probe fft",
        Kernel::Gemm => "probe gemm",
    };
    let status = if r.correct == Some(false) {
        Status::error("correctness check failed")
    } else {
        Status::Unset
    };
    let mut spans = Vec::with_capacity(3);
    spans.push(span(
        scope,
        (trace, run_id, root),
        name,
        (time_at(r.ts_ns, 0.0), time_at(stop_ns, 0.0)),
        run_attributes(r),
        status,
    ));
    if let Some(q_ms) = r.queue_ms {
        spans.push(span(
            scope,
            (trace, random_span_id(), run_id),
            "queued",
            (time_at(r.ts_ns, 0.0), time_at(r.ts_ns, q_ms)),
            vec![KeyValue::new(attr::QUEUE_MS, q_ms)],
            Status::Unset,
        ));
    }
    if let Some(g_ms) = r.gpu_ms {
        let wait_ms = r.queue_ms.unwrap_or((r.wall_ms - g_ms).max(0.0)).max(0.0);
        spans.push(span(
            scope,
            (trace, random_span_id(), run_id),
            "executing",
            (
                time_at(r.ts_ns, wait_ms),
                time_at(r.ts_ns, wait_ms + g_ms.max(0.0)),
            ),
            vec![KeyValue::new(attr::GPU_MS, g_ms)],
            Status::Unset,
        ));
    }
    spans
}

/// A cycle whose root span has not been emitted yet.
#[derive(Debug)]
pub(super) struct OpenRoot {
    pub(super) trace: TraceId,
    pub(super) gpu_uuid: String,
    pub(super) cycle: u64,
    pub(super) start_ns: i64,
    pub(super) end_ns: i64,
    pub(super) attrs: Vec<KeyValue>,
    pub(super) runs: u64,
    pub(super) failed_checks: u64,
    pub(super) last_update: Instant,
}

/// The `probe_cycle` root of a finished (or given-up-on) cycle: the extent
/// of the runs seen, their count, and an error status if any failed its
/// correctness check.
pub(super) fn root_span(scope: &InstrumentationScope, r: OpenRoot) -> SpanData {
    let mut attrs = r.attrs;
    attrs.push(KeyValue::new(extra_attr::RUNS, r.runs as i64));
    let status = if r.failed_checks > 0 {
        Status::error(format!(
            "{} run(s) failed the correctness check",
            r.failed_checks
        ))
    } else {
        Status::Unset
    };
    span(
        scope,
        (r.trace, root_span_id(r.trace), SpanId::INVALID),
        "probe_cycle",
        (time_at(r.start_ns, 0.0), time_at(r.end_ns, 0.0)),
        attrs,
        status,
    )
}

/// One span per live-health evaluation (its own trace), carrying the
/// verdict and every input it was judged on; an error when unhealthy.
pub(super) fn health_span(scope: &InstrumentationScope, h: &HealthRecord) -> SpanData {
    let t = SystemTime::UNIX_EPOCH + Duration::from_nanos(h.ts_ns.max(0) as u64);
    let status = if h.verdict.parse() == Ok(Verdict::Unhealthy) {
        Status::error(h.reason.clone())
    } else {
        Status::Unset
    };
    span(
        scope,
        (random_trace_id(), random_span_id(), SpanId::INVALID),
        "health_evaluation",
        (t, t),
        health_attributes(h),
        status,
    )
}
