//! [`SketchAcc`]: merges encoded sketches straight from their bytes into
//! dense bin counters, without building a DDSketch per row.
//!
//! Reading a rollup row through [`Sketch::decode`](super::Sketch::decode)
//! costs, per sketch, two store allocations for the decoded DDSketch, two
//! more for the empty sketch it is merged into, and a bin-by-bin merge;
//! then the reader merges that into its group's sketch. A fleet query over
//! millions of rows did that four times a row. [`SketchAcc::merge_encoded`]
//! walks the same bytes (the DDSketch standard encoding, unchanged on disk)
//! and adds each bin's count to the group's dense array directly: no
//! allocation once a group's array spans its values.
//!
//! It is the same sketch: the bins are the DDSketch's own (same γ, same
//! key of a value), so counts, min, max, sum and every quantile equal
//! those of the DDSketch merged from the same inputs (a test checks it
//! bin for bin and byte for byte through [`SketchAcc::encode`]), and the
//! ±[`SKETCH_ALPHA`](super::SKETCH_ALPHA) guarantee is unchanged. Like the
//! DDSketch (2048 bins at most), a store whose keys would span more than
//! [`SKETCH_MAX_BINS`](super::SKETCH_MAX_BINS) folds its lowest keys into
//! its lowest kept bin; with α = 1 % that span is about 18 orders of
//! magnitude, which no clock here reaches.

use super::{config, SKETCH_MAX_BINS};
use crate::SchemaError;

/// Dense counts of one store (positive or negative values): `counts[i]`
/// is the count of key `offset + i`.
#[derive(Debug, Clone, Default)]
struct Bins {
    offset: i32,
    counts: Vec<u64>,
    total: u64,
}

impl Bins {
    /// Adds `n` at `key`: in place when the kept range holds the key (a
    /// merged sketch's bins mostly fall inside the group's range), else
    /// through [`Bins::add_outside`].
    #[inline(always)]
    fn add(&mut self, key: i32, n: u64) {
        // Below the offset the difference is negative: no index.
        let i = usize::try_from(i64::from(key) - i64::from(self.offset));
        if let Some(c) = i.ok().and_then(|i| self.counts.get_mut(i)) {
            *c += n;
            self.total += n;
            return;
        }
        self.add_outside(key, n);
    }

    /// [`Bins::add`] for a key outside the kept range (or an empty store):
    /// widens the range, folding the lowest keys past the bin limit.
    #[inline(never)]
    fn add_outside(&mut self, key: i32, n: u64) {
        if n == 0 {
            return;
        }
        self.total += n;
        if self.counts.is_empty() {
            self.offset = key;
            self.counts.push(n);
            return;
        }
        let limit = SKETCH_MAX_BINS as i64;
        let (lo, hi) = (
            i64::from(self.offset),
            i64::from(self.offset) + self.counts.len() as i64 - 1,
        );
        let k = i64::from(key);
        if k > hi {
            let new_len = k - lo + 1;
            if new_len > limit {
                // Keep the top `limit` keys; fold the ones below into the
                // lowest kept bin (the DDSketch's collapsing-lowest store).
                let new_lo = k - limit + 1;
                let drop = usize::try_from(new_lo - lo).unwrap_or(usize::MAX);
                let folded: u64 = self.counts.iter().take(drop).sum();
                if drop >= self.counts.len() {
                    self.counts.clear();
                } else {
                    self.counts.drain(..drop);
                }
                self.offset = new_lo as i32;
                let len = usize::try_from(k - new_lo + 1).unwrap_or(0);
                self.counts.resize(len, 0);
                self.counts[0] += folded;
            } else {
                self.counts.resize(usize::try_from(new_len).unwrap_or(0), 0);
            }
            if let Some(last) = self.counts.last_mut() {
                *last += n;
            }
        } else if k < lo {
            if hi - k + 1 > limit {
                // Below the kept range: into the lowest kept bin, as the
                // collapsing store does.
                let new_lo = hi - limit + 1;
                if new_lo > lo {
                    // Cannot happen (the range never exceeds the limit).
                    self.counts[0] += n;
                    return;
                }
                let grow = usize::try_from(lo - new_lo).unwrap_or(0);
                self.counts.splice(0..0, std::iter::repeat_n(0, grow));
                self.offset = new_lo as i32;
                self.counts[0] += n;
            } else {
                let grow = usize::try_from(lo - k).unwrap_or(0);
                self.counts.splice(0..0, std::iter::repeat_n(0, grow));
                self.offset = key;
                self.counts[0] += n;
            }
        } else {
            let i = usize::try_from(k - lo).unwrap_or(0);
            self.counts[i] += n;
        }
    }

    fn merge(&mut self, o: &Bins) {
        if o.total == 0 {
            return;
        }
        if self.total == 0 {
            self.clone_from(o);
            return;
        }
        let (Some(a), Some(b)) = (
            o.counts.iter().position(|&c| c > 0),
            o.counts.iter().rposition(|&c| c > 0),
        ) else {
            return;
        };
        // Widen once for both ends (through `add`, which applies the bin
        // limit), then add the rest in place when it fits.
        let (ka, kb) = (o.offset + a as i32, o.offset + b as i32);
        self.add(kb, o.counts[b]);
        if a == b {
            return;
        }
        self.add(ka, o.counts[a]);
        if b > a + 1 {
            let lo = i64::from(self.offset);
            let fits = i64::from(ka) >= lo;
            for (i, &c) in o.counts[a + 1..b].iter().enumerate() {
                let k = ka + 1 + i as i32;
                if fits {
                    let at = usize::try_from(i64::from(k) - lo).unwrap_or(0);
                    self.counts[at] += c;
                    self.total += c;
                } else {
                    self.add(k, c);
                }
            }
        }
    }

    /// The key holding rank `rank` (0-based), as the DDSketch store finds it.
    fn key_at_rank(&self, rank: u64) -> i32 {
        let mut n = 0;
        for (i, c) in self.counts.iter().enumerate() {
            n += *c;
            if n > rank {
                return self.offset + i as i32;
            }
        }
        self.offset + self.counts.len() as i32 - 1
    }
}

/// A sketch being merged from encoded sketches (see the module doc).
#[derive(Debug, Clone)]
pub struct SketchAcc {
    pos: Bins,
    neg: Bins,
    zero: u64,
    min: f64,
    max: f64,
    sum: f64,
}

impl Default for SketchAcc {
    fn default() -> Self {
        SketchAcc {
            pos: Bins::default(),
            neg: Bins::default(),
            zero: 0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
            sum: 0.0,
        }
    }
}

const FLAG_INDEX_MAPPING_LOG: u8 = 0x02;
const FLAG_ZERO_COUNT: u8 = 0x04;
const FLAG_COUNT: u8 = 0xA0;
const FLAG_SUM: u8 = 0x84;
const FLAG_MIN: u8 = 0x88;
const FLAG_MAX: u8 = 0x8C;

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    #[inline(always)]
    fn byte(&mut self) -> Option<u8> {
        let (b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(*b)
    }
    #[inline(always)]
    fn f64_le(&mut self) -> Option<f64> {
        if self.0.len() < 8 {
            return None;
        }
        let (b, rest) = self.0.split_at(8);
        self.0 = rest;
        Some(f64::from_le_bytes(b.try_into().ok()?))
    }
    #[inline(always)]
    fn uvar(&mut self) -> Option<u64> {
        let mut v: u64 = 0;
        let mut shift = 0u32;
        loop {
            let b = self.byte()?;
            if b < 0x80 || shift == 56 {
                return Some(v | (u64::from(b) << shift));
            }
            v |= (u64::from(b) & 0x7F) << shift;
            shift += 7;
        }
    }
    #[inline(always)]
    fn svar(&mut self) -> Option<i64> {
        let e = self.uvar()?;
        Some(((e >> 1) as i64) ^ -((e & 1) as i64))
    }
    /// A bin count: [`Reader::vdouble`] as `u64` (`c as u64`: truncated,
    /// negative and NaN as 0), decoded without floating point when the
    /// value is an integer below 2⁵³ − 1, as every count this crate writes
    /// is: the float-to-integer conversion was the hottest instruction of
    /// the merge loop (`perf annotate`); without it `fleet` over 10,000
    /// nodes takes 1.5 % less CPU.
    #[inline(always)]
    fn vcount(&mut self) -> Option<u64> {
        let m = self.vdouble_plus_one_bits()?;
        let exp = (m >> 52) as i64 - 1023;
        if (0..=52).contains(&exp) {
            // count + 1 = mantissa (with its implicit bit) >> (52 − exp);
            // truncating it truncates count + 1 − 1 (exact in this range).
            let mant = (m & ((1u64 << 52) - 1)) | (1u64 << 52);
            return Some((mant >> (52 - exp)) - 1);
        }
        Some((f64::from_bits(m) - 1.0) as u64)
    }
    #[inline(always)]
    fn vdouble(&mut self) -> Option<f64> {
        Some(f64::from_bits(self.vdouble_plus_one_bits()?) - 1.0)
    }
    /// The bits of `v + 1` for the varint-encoded double `v` (what is
    /// stored: those bits less those of 1.0, rotated).
    #[inline(always)]
    fn vdouble_plus_one_bits(&mut self) -> Option<u64> {
        let mut bits: u64 = 0;
        let mut shift: i32 = 57;
        loop {
            let b = self.byte()?;
            if shift == 1 {
                bits |= u64::from(b);
                break;
            }
            if b < 0x80 {
                bits |= u64::from(b) << shift;
                break;
            }
            bits |= (u64::from(b) & 0x7F) << shift;
            shift -= 7;
        }
        Some(bits.rotate_right(6).wrapping_add(1.0f64.to_bits()))
    }
}

fn valid_flag(b: u8) -> bool {
    if matches!(
        b,
        FLAG_ZERO_COUNT | FLAG_COUNT | FLAG_SUM | FLAG_MIN | FLAG_MAX | FLAG_INDEX_MAPPING_LOG
    ) {
        return true;
    }
    let sub = b >> 2;
    match b & 0x03 {
        1 | 3 => (1..=3).contains(&sub),
        2 => sub <= 4,
        _ => false,
    }
}

fn put_uvar(out: &mut Vec<u8>, mut v: u64) {
    let len = ((63 - v.leading_zeros() as i32) / 7).clamp(0, 8);
    for _ in 0..len {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_svar(out: &mut Vec<u8>, v: i64) {
    put_uvar(out, ((v >> 63) ^ (v << 1)) as u64);
}

fn put_vdouble(out: &mut Vec<u8>, v: f64) {
    let mut bits = (v + 1.0)
        .to_bits()
        .wrapping_sub(1.0f64.to_bits())
        .rotate_left(6);
    for _ in 0..8 {
        let next = (bits >> 57) as u8;
        bits <<= 7;
        if bits == 0 {
            out.push(next);
            return;
        }
        out.push(next | 0x80);
    }
    out.push((bits >> 56) as u8);
}

fn put_store(out: &mut Vec<u8>, b: &Bins, flag_type: u8) {
    let bins: Vec<(i32, u64)> = b
        .counts
        .iter()
        .enumerate()
        .filter(|(_, c)| **c > 0)
        .map(|(i, c)| (b.offset + i as i32, *c))
        .collect();
    if bins.is_empty() {
        return;
    }
    out.push((1 << 2) | flag_type);
    put_uvar(out, bins.len() as u64);
    let mut prev: i64 = 0;
    for (k, c) in bins {
        put_svar(out, i64::from(k) - prev);
        put_vdouble(out, c as f64);
        prev = i64::from(k);
    }
}

impl SketchAcc {
    /// An empty accumulator.
    pub fn new() -> Self {
        Self::default()
    }

    /// Values merged in.
    pub fn count(&self) -> u64 {
        self.pos.total + self.neg.total + self.zero
    }

    /// Heap bytes held (for memory accounting).
    pub fn heap_bytes(&self) -> usize {
        8 * (self.pos.counts.capacity() + self.neg.counts.capacity())
    }

    /// Merges one encoded sketch ([`Sketch::encode`](super::Sketch::encode)'s
    /// bytes, or any DDSketch standard encoding with the same γ); a sketch
    /// of another relative accuracy or malformed bytes are refused (and
    /// leave `self` as it was only up to the bins already added: callers
    /// stop at the first error).
    pub fn merge_encoded(&mut self, column: &str, bytes: &[u8]) -> Result<(), SchemaError> {
        let bad = |why: &str| SchemaError::UnknownValue {
            column: column.to_string(),
            value: format!("sketch: {why}"),
        };
        if bytes.is_empty() {
            return Err(bad("unexpected end of input"));
        }
        let mut r = Reader(bytes);
        if bytes.len() >= 2 && bytes[0] == FLAG_INDEX_MAPPING_LOG && valid_flag(bytes[1]) {
            r.0 = &bytes[1..];
        }
        let eof = || bad("unexpected end of input");
        let (mut min, mut max, mut sum, mut zero) =
            (f64::INFINITY, f64::NEG_INFINITY, 0.0f64, 0.0f64);
        let was_empty = self.count() == 0;
        let before = self.count();
        while let Some(flag) = r.byte() {
            match flag & 0x03 {
                2 => {
                    let gamma = r.f64_le().ok_or_else(eof)?;
                    let _index_offset = r.f64_le().ok_or_else(eof)?;
                    if gamma != config().gamma {
                        return Err(bad("sketch with another relative accuracy"));
                    }
                }
                0 => match flag {
                    FLAG_ZERO_COUNT => zero += r.vdouble().ok_or_else(eof)?,
                    FLAG_COUNT => {
                        r.vdouble().ok_or_else(eof)?;
                    }
                    FLAG_SUM => sum = r.f64_le().ok_or_else(eof)?,
                    FLAG_MIN => min = r.f64_le().ok_or_else(eof)?,
                    FLAG_MAX => max = r.f64_le().ok_or_else(eof)?,
                    _ => return Err(bad(&format!("invalid flag byte: 0x{flag:02X}"))),
                },
                t => {
                    let store = if t == 1 { &mut self.pos } else { &mut self.neg };
                    let n = r.uvar().ok_or_else(eof)?;
                    match flag >> 2 {
                        1 => {
                            let mut k: i64 = 0;
                            for _ in 0..n {
                                k += r.svar().ok_or_else(eof)?;
                                let c = r.vcount().ok_or_else(eof)?;
                                store.add(k as i32, c);
                            }
                        }
                        2 => {
                            let mut k: i64 = 0;
                            for _ in 0..n {
                                k += r.svar().ok_or_else(eof)?;
                                store.add(k as i32, 1);
                            }
                        }
                        3 => {
                            let mut k = r.svar().ok_or_else(eof)?;
                            let step = r.svar().ok_or_else(eof)?;
                            for _ in 0..n {
                                let c = r.vcount().ok_or_else(eof)?;
                                store.add(k as i32, c);
                                k += step;
                            }
                        }
                        s => return Err(bad(&format!("unknown bin encoding mode subflag: {s}"))),
                    }
                }
            }
        }
        self.zero += zero as u64;
        let other_empty = self.count() == before;
        if was_empty {
            self.min = min;
            self.max = max;
        } else if !other_empty {
            self.min = self.min.min(min);
            self.max = self.max.max(max);
        }
        self.sum += sum;
        Ok(())
    }

    /// Folds another accumulator in.
    pub fn merge(&mut self, o: &SketchAcc) {
        let was_empty = self.count() == 0;
        self.pos.merge(&o.pos);
        self.neg.merge(&o.neg);
        self.zero += o.zero;
        if was_empty {
            self.min = o.min;
            self.max = o.max;
        } else if o.count() > 0 {
            self.min = self.min.min(o.min);
            self.max = self.max.max(o.max);
        }
        self.sum += o.sum;
    }

    /// The q-quantile, exactly as the DDSketch of the same inputs answers
    /// it (±[`SKETCH_ALPHA`](super::SKETCH_ALPHA)); `None` when empty or q
    /// is out of range.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        if !(0.0..=1.0).contains(&q) || self.count() == 0 {
            return None;
        }
        if q == 0.0 {
            return Some(self.min);
        }
        if q == 1.0 {
            return Some(self.max);
        }
        let c = config();
        let rank = (q * (self.count() as f64 - 1.0)) as u64;
        Some(if rank < self.neg.total {
            -c.value(self.neg.key_at_rank(self.neg.total - rank - 1))
        } else if rank < self.zero + self.neg.total {
            0.0
        } else {
            c.value(self.pos.key_at_rank(rank - self.zero - self.neg.total))
        })
    }

    /// Exact largest value.
    pub fn max(&self) -> Option<f64> {
        (self.count() > 0).then_some(self.max)
    }

    /// Exact smallest value.
    pub fn min(&self) -> Option<f64> {
        (self.count() > 0).then_some(self.min)
    }

    /// Exact sum.
    pub fn sum(&self) -> Option<f64> {
        (self.count() > 0).then_some(self.sum)
    }

    /// The DDSketch standard encoding of what was merged: the same bytes
    /// [`Sketch::encode`](super::Sketch::encode) gives for the DDSketch
    /// merged from the same inputs.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + 3 * (self.pos.counts.len() + self.neg.counts.len()));
        let n = self.count();
        if n != 0 {
            out.push(FLAG_COUNT);
            put_vdouble(&mut out, n as f64);
            out.push(FLAG_MIN);
            out.extend_from_slice(&self.min.to_le_bytes());
            out.push(FLAG_MAX);
            out.extend_from_slice(&self.max.to_le_bytes());
        }
        if self.sum != 0.0 {
            out.push(FLAG_SUM);
            out.extend_from_slice(&self.sum.to_le_bytes());
        }
        out.push(FLAG_INDEX_MAPPING_LOG);
        out.extend_from_slice(&config().gamma.to_le_bytes());
        out.extend_from_slice(&0.0f64.to_le_bytes());
        if self.zero != 0 {
            out.push(FLAG_ZERO_COUNT);
            put_vdouble(&mut out, self.zero as f64);
        }
        put_store(&mut out, &self.pos, 1);
        put_store(&mut out, &self.neg, 3);
        out
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::super::Sketch;
    use super::*;

    /// xorshift64*: a fixed sequence without a dependency.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }
        fn unit(&mut self) -> f64 {
            (self.next() >> 11) as f64 / (1u64 << 53) as f64
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    fn random_sketch(rng: &mut Rng, n: u64, scale: f64) -> Sketch {
        let mut s = Sketch::new();
        for _ in 0..n {
            let v: f64 = scale * (rng.unit() * 6.0 - 2.0).exp();
            let count = 1 + rng.below(49);
            match rng.below(20) {
                0 => s.add_with_count(0.0, count),
                1 => s.add_with_count(-v, count),
                _ => s.add_with_count(v, count),
            }
        }
        s
    }

    #[test]
    fn merging_bytes_equals_merging_ddsketches_quantile_for_quantile_and_byte_for_byte() {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        for round in 0..50 {
            let parts: Vec<Sketch> = (0..1 + rng.below(39))
                .map(|i| {
                    let scale = if i % 7 == 0 { 1e3 } else { 0.5 };
                    let n = rng.below(60);
                    random_sketch(&mut rng, n, scale)
                })
                .collect();
            let mut want = Sketch::new();
            // In the same order as `want`; and split in two accumulators
            // merged at the end (as threads do).
            let mut got = SketchAcc::new();
            let (mut even, mut odd) = (SketchAcc::new(), SketchAcc::new());
            for (i, p) in parts.iter().enumerate() {
                want.merge(&Sketch::decode("x", &p.encode()).unwrap());
                got.merge_encoded("x", &p.encode()).unwrap();
                let half = if i % 2 == 0 { &mut even } else { &mut odd };
                half.merge_encoded("x", &p.encode()).unwrap();
            }
            even.merge(&odd);
            for acc in [&got, &even] {
                assert_eq!(acc.count(), want.count(), "round {round}");
                for q in [
                    0.0, 0.001, 0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99, 0.999, 1.0,
                ] {
                    let (a, b) = (acc.quantile(q), want.quantile(q));
                    assert_eq!(
                        a.map(f64::to_bits),
                        b.map(f64::to_bits),
                        "round {round} q={q}: {a:?} vs {b:?}"
                    );
                }
                assert_eq!(acc.min(), want.min());
                assert_eq!(acc.max(), want.max());
                // The sum is a float sum: equal up to the order of adding.
                let (a, b) = (acc.sum().unwrap_or(0.0), want.sum().unwrap_or(0.0));
                assert!((a - b).abs() <= 1e-9 * b.abs().max(1.0), "{a} vs {b}");
            }
            if want.count() > 0 {
                assert_eq!(got.encode(), want.encode(), "round {round}");
            }
        }
    }

    #[test]
    fn counts_decode_without_floats_exactly_as_through_them() {
        let mut values: Vec<f64> = (0..5000).map(f64::from).collect();
        for e in 0..64 {
            let p = 2f64.powi(e);
            values.extend([p - 1.0, p, p + 1.0, p * 1.5, p + 0.5]);
        }
        values.extend([
            0.25,
            0.999,
            1.5,
            -1.0,
            -0.5,
            -1e300,
            1e300,
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
            9_007_199_254_740_991.0,
            9_007_199_254_740_993.0,
        ]);
        for v in values {
            let mut enc = Vec::new();
            put_vdouble(&mut enc, v);
            let via_float = Reader(&enc).vdouble().map(|c| c as u64);
            let mut r = Reader(&enc);
            assert_eq!(r.vcount(), via_float, "{v}");
            assert!(r.0.is_empty(), "{v}: every byte read");
        }
    }

    #[test]
    fn foreign_or_broken_bytes_are_refused() {
        let mut s = Sketch::new();
        s.add(1.0);
        let mut bytes = s.encode();
        // γ of α = 2 % instead of 1 %.
        let at = bytes
            .iter()
            .position(|b| *b == FLAG_INDEX_MAPPING_LOG)
            .unwrap();
        bytes[at + 1..at + 9].copy_from_slice(&(1.02f64 / 0.98).to_le_bytes());
        let e = SketchAcc::new().merge_encoded("wall_ms_sketch", &bytes);
        assert!(e
            .unwrap_err()
            .to_string()
            .contains("another relative accuracy"));
        let good = s.encode();
        let e = SketchAcc::new().merge_encoded("wall_ms_sketch", &good[..good.len() - 1]);
        assert!(e.is_err());
        assert!(SketchAcc::new().merge_encoded("x", &[]).is_err());
    }

    #[test]
    fn a_store_wider_than_the_bin_limit_folds_its_lowest_keys() {
        let mut a = SketchAcc::new();
        let mut s = Sketch::new();
        // 1e-8 .. 1e12: 20 decades, more than 2048 bins at α = 1 %.
        for e in -8..=12 {
            s.add(10f64.powi(e));
        }
        a.merge_encoded("x", &s.encode()).unwrap();
        assert_eq!(a.count(), 21);
        assert!(a.pos.counts.len() <= SKETCH_MAX_BINS as usize);
        assert_eq!(a.quantile(1.0), Some(1e12));
        // Rank ⌊0.99 · 20⌋ = 19 holds 1e11; the folded low keys do not
        // move the top quantiles, and the DDSketch answers the same.
        let top = a.quantile(0.99).unwrap();
        assert!((top - 1e11).abs() <= 0.01 * 1e11, "{top}");
        assert_eq!(Some(top), s.quantile(0.99));
        assert_eq!(a.quantile(0.5), s.quantile(0.5));
    }
}
