//! How precisely the `probes` table stores its floating-point measurements
//! (schema version 4). A double's low mantissa bits of a clock reading are
//! noise far below what the clocks resolve, but zstd cannot compress them:
//! they made four clock columns about 9 bytes per row each. Rounding them to
//! a binary fraction leaves those bits zero, and with `BYTE_STREAM_SPLIT`
//! (see [`crate::writer_properties`]) the zero bytes compress to almost
//! nothing. The value keeps its type (`float64`), unit and meaning; only its
//! precision is stated, per column, in the column docs:
//!
//! - durations in ms (`wall_ms`, `queue_ms`, `host_wall_ms`,
//!   `arrival_gap_ms`): the nearest multiple of [`MS_QUANTUM`] (2⁻¹⁰ ms,
//!   0.977 µs), below the calibrated GPU clock's error bound and the host's
//!   wake-up jitter;
//! - `clock_error_us`: rounded *up* to a multiple of [`US_QUANTUM`]
//!   (2⁻⁴ µs, 62.5 ns), so it stays a bound;
//! - `tflops`, `power_w`: [`REL_BITS`] significant bits (relative error
//!   below 10⁻⁶, under 1 mW for any board power NVML reports).
//!
//! `gpu_ms` is kept as measured: CUDA events are single-precision, so its
//! low bits are already zero. Every function maps a non-finite value to
//! itself.

/// Quantum of the duration columns in ms: 2⁻¹⁰ ms (0.977 µs).
pub const MS_QUANTUM: f64 = 1.0 / 1024.0;

/// Quantum of `clock_error_us` in µs: 2⁻⁴ µs (62.5 ns).
pub const US_QUANTUM: f64 = 1.0 / 16.0;

/// Significant bits (of a double's 53) kept in `tflops` and `power_w`.
pub const REL_BITS: u32 = 20;

/// `v` to the nearest multiple of [`MS_QUANTUM`].
pub fn round_ms(v: f64) -> f64 {
    if !v.is_finite() {
        return v;
    }
    (v / MS_QUANTUM).round() * MS_QUANTUM
}

/// `v` rounded up to a multiple of [`US_QUANTUM`].
pub fn ceil_us(v: f64) -> f64 {
    if !v.is_finite() {
        return v;
    }
    (v / US_QUANTUM).ceil() * US_QUANTUM
}

/// `v` with [`REL_BITS`] significant bits, rounded to nearest.
pub fn round_rel(v: f64) -> f64 {
    if !v.is_finite() || v == 0.0 {
        return v;
    }
    let drop = 53 - REL_BITS;
    let bits = v.to_bits();
    let half = 1u64 << (drop - 1);
    // Adding half an ulp of the kept precision before masking rounds to
    // nearest; a carry into the exponent is the correct next power of two.
    f64::from_bits((bits + half) & !((1u64 << drop) - 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ms_rounding_is_within_half_a_quantum_and_leaves_low_bits_zero() {
        for v in [0.0, 0.0123456, 1.2345678, 7.654321, 250.000_4, 12_345.678_9] {
            let r = round_ms(v);
            assert!((r - v).abs() <= MS_QUANTUM / 2.0, "{v} -> {r}");
            // At most 10 fractional bits: r·1024 is an integer.
            assert_eq!((r * 1024.0).fract(), 0.0, "{v} -> {r}");
        }
        assert!(round_ms(f64::NAN).is_nan());
    }

    #[test]
    fn clock_error_is_rounded_up_so_it_stays_a_bound() {
        for v in [0.01, 1.0001, 3.3, 17.0] {
            let r = ceil_us(v);
            assert!(r >= v && r - v < US_QUANTUM, "{v} -> {r}");
        }
        assert_eq!(ceil_us(2.0), 2.0);
    }

    #[test]
    fn relative_rounding_keeps_twenty_bits() {
        for v in [0.039_321_6, 5.368_709_12, 123.456, 699.999, 1e-9, -3.75] {
            let r = round_rel(v);
            assert!(
                ((r - v) / v).abs() <= 2f64.powi(-(REL_BITS as i32)),
                "{v} -> {r}"
            );
            assert_eq!(r.to_bits() & ((1u64 << (53 - REL_BITS)) - 1), 0, "{v}");
        }
        // Board power in mW survives: every mW step stays distinct.
        assert_ne!(round_rel(700.001), round_rel(700.002));
        assert_eq!(round_rel(0.0), 0.0);
    }
}
