//! Trace and span ids. The pipeline stamps every record with a new trace and
//! span id ([`new_trace_id`], [`new_span_id`]) before it reaches any sink, so
//! the Parquet row and the OTLP run span agree; the span builders parse them
//! back here and derive a cycle's root span id from its trace id
//! ([`root_span_id`]).

use opentelemetry::trace::{SpanId, TraceId};

/// A new random, non-zero trace id as 32 lowercase hex digits.
pub fn new_trace_id() -> String {
    format!("{:032x}", random_nonzero_u128())
}

/// A new random, non-zero span id as 16 lowercase hex digits.
pub fn new_span_id() -> String {
    format!("{:016x}", random_nonzero_u64())
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

/// A record's trace id: 32 hex digits, not all zero; anything else is `None`.
pub(super) fn parse_trace_id(s: Option<&str>) -> Option<TraceId> {
    let s = s?;
    (s.len() == 32)
        .then(|| TraceId::from_hex(s).ok())
        .flatten()
        .filter(|t| *t != TraceId::INVALID)
}

/// A record's span id: 16 hex digits, not all zero; anything else is `None`.
pub(super) fn parse_span_id(s: Option<&str>) -> Option<SpanId> {
    let s = s?;
    (s.len() == 16)
        .then(|| SpanId::from_hex(s).ok())
        .flatten()
        .filter(|t| *t != SpanId::INVALID)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_hex_and_nonzero() {
        let t = new_trace_id();
        let s = new_span_id();
        assert_eq!(t.len(), 32);
        assert_eq!(s.len(), 16);
        assert!(parse_trace_id(Some(&t)).is_some());
        assert!(parse_span_id(Some(&s)).is_some());
        assert!(parse_trace_id(Some(&"0".repeat(32))).is_none());
        assert_ne!(root_span_id(TraceId::from_bytes([0; 16])), SpanId::INVALID);
    }
}
