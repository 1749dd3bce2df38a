//! Trace and span ids on the OTLP side. The probe loop stamps every record
//! with its ids ([`crate::probe::ids`]) before any consumer sees it; the span
//! builders convert their bytes into opentelemetry's ids here (no hex on the
//! way), make ids for the spans that have none in the row (`queued`,
//! `executing`, health evaluations), and derive a cycle's root span id from
//! its trace id ([`root_span_id`]).

use opentelemetry::trace::{SpanId, TraceId};

use crate::probe::ids::{random_nonzero_u128, random_nonzero_u64};

/// A new random, valid (non-zero) trace id.
pub(super) fn random_trace_id() -> TraceId {
    TraceId::from_bytes(random_nonzero_u128().to_be_bytes())
}

/// A new random, valid (non-zero) span id.
pub(super) fn random_span_id() -> SpanId {
    SpanId::from_bytes(random_nonzero_u64().to_be_bytes())
}

/// The root (`probe_cycle`) span id of a trace: FNV-1a of the trace id,
/// never zero. Deterministic, so every run of a cycle names the same parent
/// whichever message brings it.
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
    use crate::probe::ids::{new_span_id, new_trace_id};

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
