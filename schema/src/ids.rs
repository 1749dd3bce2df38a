//! Trace and span ids, as bytes (the shape of opentelemetry-rust's
//! `span_context.rs`). The agent stamps every record with them before it
//! reaches any sink, so the Parquet row and the OTLP run span agree; they
//! become lowercase hex only at the edge (the `trace_id`/`span_id` utf8
//! columns, logs), and the OTLP sink hands the bytes to opentelemetry as is.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A text that is not an id of the expected width in hex.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not {1} hex digits")]
pub struct BadId(pub String, pub usize);

fn parse_hex<const N: usize>(s: &str) -> Result<[u8; N], BadId> {
    let bad = || BadId(s.to_string(), 2 * N);
    if s.len() != 2 * N || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad());
    }
    let mut out = [0u8; N];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
    }
    Ok(out)
}

macro_rules! id_type {
    ($(#[$m:meta])* $name:ident, $n:literal) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name([u8; $n]);

        impl $name {
            /// The all-zero id, which OTLP treats as absent.
            pub const INVALID: $name = $name([0; $n]);

            /// The id with these bytes (big-endian, as on the wire).
            pub const fn from_bytes(b: [u8; $n]) -> Self {
                Self(b)
            }

            /// Its bytes.
            pub const fn to_bytes(self) -> [u8; $n] {
                self.0
            }

            /// Not all zero.
            pub fn is_valid(self) -> bool {
                self != Self::INVALID
            }

            /// Parses exactly
            #[doc = concat!(stringify!($n), " bytes of hex (either case).")]
            pub fn from_hex(s: &str) -> Result<Self, BadId> {
                parse_hex::<$n>(s).map(Self)
            }
        }

        /// Lowercase hex, zero-padded.
        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                for b in self.0 {
                    write!(f, "{b:02x}")?;
                }
                Ok(())
            }
        }

        impl std::str::FromStr for $name {
            type Err = BadId;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::from_hex(s)
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                Self::from_hex(&s).map_err(serde::de::Error::custom)
            }
        }
    };
}

id_type!(
    /// A 16-byte trace id (one probe cycle, or one run with `trace_per_run`).
    TraceId,
    16
);
id_type!(
    /// An 8-byte span id (one probe run).
    SpanId,
    8
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips_and_rejects_wrong_widths() {
        let t = TraceId::from_bytes([0xab; 16]);
        assert_eq!(t.to_string(), "ab".repeat(16));
        assert_eq!(t.to_string().parse::<TraceId>(), Ok(t));
        assert_eq!(
            "0A".repeat(8).parse::<SpanId>(),
            Ok(SpanId::from_bytes([10; 8]))
        );
        assert!("ab".repeat(8).parse::<TraceId>().is_err());
        assert!("zz".repeat(8).parse::<SpanId>().is_err());
        assert!(!SpanId::INVALID.is_valid());
        let j = serde_json::to_string(&t).expect("json");
        assert_eq!(serde_json::from_str::<TraceId>(&j).expect("back"), t);
    }
}
