//! New trace and span ids. The probe loop ([`crate::probe`]) stamps every
//! record with them before the record reaches any consumer, so the Parquet
//! row and the OTLP run span agree; the OTLP sink only converts the bytes
//! (`consumers/otlp/otel_ids.rs`). The newtypes themselves, their hex form and their
//! parsing live in the schema crate ([`slicetrace_schema::TraceId`]).

use slicetrace_schema::{SpanId, TraceId};

/// A new random, valid (non-zero) trace id.
pub fn new_trace_id() -> TraceId {
    TraceId::from_bytes(random_nonzero_u128().to_be_bytes())
}

/// A new random, valid (non-zero) span id.
pub fn new_span_id() -> SpanId {
    SpanId::from_bytes(random_nonzero_u64().to_be_bytes())
}

/// A random `u128` that is not 0 (0 is the invalid id).
pub(crate) fn random_nonzero_u128() -> u128 {
    loop {
        let v: u128 = rand::random();
        if v != 0 {
            return v;
        }
    }
}

/// A random `u64` that is not 0 (0 is the invalid id).
pub(crate) fn random_nonzero_u64() -> u64 {
    loop {
        let v: u64 = rand::random();
        if v != 0 {
            return v;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_ids_are_valid_and_distinct() {
        let (a, b) = (new_trace_id(), new_trace_id());
        assert!(a.is_valid() && b.is_valid() && a != b);
        let (s, t) = (new_span_id(), new_span_id());
        assert!(s.is_valid() && t.is_valid() && s != t);
    }
}
