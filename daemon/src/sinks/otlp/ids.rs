//! Trace and span ids. The pipeline stamps every record with a new trace and
//! span id ([`new_trace_id`], [`new_span_id`]) before it reaches any sink, so
//! the Parquet row and the OTLP run span agree; the span builders convert
//! their bytes into opentelemetry's ids here (no hex on the way) and derive a
//! cycle's root span id from its trace id ([`root_span_id`]).

use opentelemetry::trace::{SpanId, TraceId};

/// A new random, non-zero trace id.
pub fn new_trace_id() -> slicetrace_schema::TraceId {
    slicetrace_schema::TraceId::from_bytes(random_nonzero_u128().to_be_bytes())
}

/// A new random, non-zero span id.
pub fn new_span_id() -> slicetrace_schema::SpanId {
    slicetrace_schema::SpanId::from_bytes(random_nonzero_u64().to_be_bytes())
}

/// A new random, valid (non-zero) trace id.
pub(super) fn random_trace_id() -> TraceId {
    TraceId::from_bytes(random_nonzero_u128().to_be_bytes())
}

/// A new random, valid (non-zero) span id.
pub(super) fn random_span_id() -> SpanId {
    SpanId::from_bytes(random_nonzero_u64().to_be_bytes())
}

fn random_nonzero_u128() -> u128 {
    loop {
        let v: u128 = rand::random();
        if v != 0 {
            return v;
        }
    }
}

fn random_nonzero_u64() -> u64 {
    loop {
        let v: u64 = rand::random();
        if v != 0 {
            return v;
        }
    }
}

/// The root (`probe_cycle`) span id of a trace: FNV-1a of the trace id,
/// never zero. Deterministic, so every run of a cycle names the same parent
/// whichever `export` call brings it.
pub fn root_span_id(trace: TraceId) -> SpanId {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in trace.to_bytes().iter().chain(b"probe_cycle") {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    SpanId::from_bytes(if h == 0 { 1 } else { h }.to_be_bytes())
}

/// A record's trace id as opentelemetry's; an all-zero one is `None`.
pub(super) fn otel_trace_id(t: Option<slicetrace_schema::TraceId>) -> Option<TraceId> {
    t.filter(|t| t.is_valid())
        .map(|t| TraceId::from_bytes(t.to_bytes()))
}

/// A record's span id as opentelemetry's; an all-zero one is `None`.
pub(super) fn otel_span_id(s: Option<slicetrace_schema::SpanId>) -> Option<SpanId> {
    s.filter(|s| s.is_valid())
        .map(|s| SpanId::from_bytes(s.to_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_nonzero_and_keep_their_bytes() {
        let t = new_trace_id();
        let s = new_span_id();
        assert!(t.is_valid() && s.is_valid());
        let ot = otel_trace_id(Some(t)).expect("trace");
        let os = otel_span_id(Some(s)).expect("span");
        // The same hex at both edges: the Parquet column and the exported span.
        assert_eq!(ot.to_string(), t.to_string());
        assert_eq!(os.to_string(), s.to_string());
        assert!(otel_trace_id(Some(slicetrace_schema::TraceId::INVALID)).is_none());
        assert!(otel_span_id(None).is_none());
        assert_ne!(root_span_id(TraceId::from_bytes([0; 16])), SpanId::INVALID);
    }
}
