//! Exact order statistics over the values a scan collected.
//!
//! Percentiles use the same definition as DuckDB's `quantile_cont` (and
//! PostgreSQL's `percentile_cont`): sort the `n` non-null values, take the
//! fractional rank `r = q·(n−1)`, and interpolate linearly between the values
//! at `floor(r)` and `ceil(r)`: `lo + (r − floor(r))·(hi − lo)`. The tests
//! compare every printed percentile against DuckDB to 1e-9 relative.

/// The percentiles the report prints, as fractions.
pub const REPORT_QUANTILES: [f64; 4] = [0.5, 0.95, 0.99, 0.999];

/// `quantile_cont` over values that are already sorted ascending.
/// `None` when `sorted` is empty.
pub fn quantile_sorted(sorted: &[f64], q: f64) -> Option<f64> {
    let n = sorted.len();
    if n == 0 {
        return None;
    }
    let rn = q.clamp(0.0, 1.0) * (n - 1) as f64;
    let frn = rn.floor();
    let crn = rn.ceil();
    let (lo_i, hi_i) = (frn as usize, (crn as usize).min(n - 1));
    let lo = sorted[lo_i];
    if lo_i == hi_i {
        return Some(lo);
    }
    let hi = sorted[hi_i];
    Some(lo + (rn - frn) * (hi - lo))
}

/// Sorts in place (NaNs are dropped first) and returns the slice, ready for
/// [`quantile_sorted`].
pub fn sort_values(v: &mut Vec<f64>) -> &[f64] {
    v.retain(|x| !x.is_nan());
    v.sort_unstable_by(f64::total_cmp);
    v
}

/// Summary of one latency column of one group.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct Dist {
    /// Non-null values.
    pub n: usize,
    /// p50, ms.
    pub p50: Option<f64>,
    /// p95, ms.
    pub p95: Option<f64>,
    /// p99, ms.
    pub p99: Option<f64>,
    /// p99.9, ms.
    pub p999: Option<f64>,
    /// Maximum, ms.
    pub max: Option<f64>,
}

/// The same values as [`quantile_sorted`] on the sorted data, for several
/// `qs` at once, by repeated selection (`select_nth_unstable`) instead of a
/// full sort: O(n) per distinct rank rather than O(n log n). `v` is reordered
/// and must hold no NaN.
pub fn quantiles_select(v: &mut [f64], qs: &[f64]) -> Vec<Option<f64>> {
    let n = v.len();
    if n == 0 {
        return vec![None; qs.len()];
    }
    let ranks: Vec<(usize, usize, f64)> = qs
        .iter()
        .map(|q| {
            let rn = q.clamp(0.0, 1.0) * (n - 1) as f64;
            let lo = rn.floor();
            (lo as usize, (rn.ceil() as usize).min(n - 1), rn - lo)
        })
        .collect();
    let mut wanted: Vec<usize> = ranks.iter().flat_map(|r| [r.0, r.1]).collect();
    wanted.sort_unstable();
    wanted.dedup();
    let mut values = std::collections::HashMap::with_capacity(wanted.len());
    let mut start = 0;
    for idx in wanted {
        let (_, x, _) = v[start..].select_nth_unstable_by(idx - start, f64::total_cmp);
        values.insert(idx, *x);
        start = idx + 1;
        if start >= n {
            break;
        }
    }
    ranks
        .iter()
        .map(|&(lo, hi, frac)| {
            let l = *values.get(&lo)?;
            if lo == hi {
                return Some(l);
            }
            let h = *values.get(&hi)?;
            Some(l + frac * (h - l))
        })
        .collect()
}

impl Dist {
    /// Summarises `v` (reordered in place; NaNs, i.e. nulls, are dropped).
    pub fn from_values(v: &mut Vec<f64>) -> Self {
        v.retain(|x| !x.is_nan());
        let q = quantiles_select(v, &[0.5, 0.95, 0.99, 0.999, 1.0]);
        Dist {
            n: v.len(),
            p50: q[0],
            p95: q[1],
            p99: q[2],
            p999: q[3],
            max: q[4],
        }
    }

    /// p99 / p50; `None` when either is missing or p50 is not positive.
    pub fn jitter(&self) -> Option<f64> {
        ratio(self.p99, self.p50)
    }
}

/// `a / b` when both are known and `b > 0`.
pub fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    }
}

/// Median of `v` (sorted in place), by [`quantile_sorted`].
pub fn median(v: &mut Vec<f64>) -> Option<f64> {
    quantile_sorted(sort_values(v), 0.5)
}

/// Median and median absolute deviation of `v`.
pub fn median_mad(v: &[f64]) -> Option<(f64, f64)> {
    let mut a = v.to_vec();
    let m = median(&mut a)?;
    let mut dev: Vec<f64> = a.iter().map(|x| (x - m).abs()).collect();
    let mad = median(&mut dev)?;
    Some((m, mad))
}

/// Tail queue share of one group: over the runs whose `wall_ms` is at or
/// above the group's p99 of `wall_ms` (and whose `queue_ms` is known),
/// `Σ queue_ms / Σ wall_ms`. It answers "how much of the slowest 1 % was
/// waiting for a time slice rather than executing".
pub fn tail_queue_share(pairs: &[(f64, f64)], wall_p99: Option<f64>) -> Option<f64> {
    let p = wall_p99?;
    // Summed in sorted order, so the result does not depend on the order in
    // which the scan delivered the rows (local and S3 reads agree to the bit).
    let tail: Vec<(f64, f64)> = pairs
        .iter()
        .copied()
        .filter(|&(wall, queue)| wall >= p && !queue.is_nan())
        .collect();
    share_of(tail)
}

/// [`tail_queue_share`] over `wall` and `queue` given as two aligned
/// columns (row `i` is `(wall[i], queue[i])`), without making the pairs.
pub fn tail_queue_share_aligned(wall: &[f64], queue: &[f64], wall_p99: Option<f64>) -> Option<f64> {
    let p = wall_p99?;
    let tail: Vec<(f64, f64)> = wall
        .iter()
        .zip(queue)
        .filter(|&(&w, q)| w >= p && !q.is_nan())
        .map(|(&w, &q)| (w, q))
        .collect();
    share_of(tail)
}

fn share_of(mut tail: Vec<(f64, f64)>) -> Option<f64> {
    tail.sort_unstable_by(|a, b| a.0.total_cmp(&b.0).then(a.1.total_cmp(&b.1)));
    let (q, w) = tail
        .iter()
        .fold((0.0, 0.0), |(q, w), &(wall, queue)| (q + queue, w + wall));
    (w > 0.0).then(|| q / w)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_tail_share_equals_the_pairs_one() {
        let wall = [1.0, 9.0, 3.0, 10.0, 2.0, f64::NAN];
        let queue = [0.5, 8.0, f64::NAN, 4.0, 1.0, 1.0];
        let pairs: Vec<(f64, f64)> = wall.iter().copied().zip(queue.iter().copied()).collect();
        for p in [Some(2.0), Some(9.5), None] {
            assert_eq!(
                tail_queue_share_aligned(&wall, &queue, p),
                tail_queue_share(&pairs, p)
            );
        }
        assert_eq!(
            tail_queue_share_aligned(&wall, &queue, Some(9.0)),
            Some(12.0 / 19.0)
        );
    }

    #[test]
    fn quantile_matches_quantile_cont_definition() {
        let v = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(quantile_sorted(&v, 0.5), Some(2.5));
        assert_eq!(quantile_sorted(&v, 0.0), Some(1.0));
        assert_eq!(quantile_sorted(&v, 1.0), Some(4.0));
        // r = 0.99 * 3 = 2.97 -> 3 + 0.97 * 1
        let q = quantile_sorted(&v, 0.99).expect("q");
        assert!((q - 3.97).abs() < 1e-12);
        assert_eq!(quantile_sorted(&[], 0.5), None);
        assert_eq!(quantile_sorted(&[7.0], 0.99), Some(7.0));
    }

    #[test]
    fn selection_equals_sorting() {
        // A deterministic scramble with ties and a wide range.
        let mut v: Vec<f64> = (0..1237u64)
            .map(|i| ((i * 7919) % 1000) as f64 / 7.0)
            .collect();
        let qs = [0.0, 0.5, 0.95, 0.99, 0.999, 1.0];
        let mut sorted = v.clone();
        sort_values(&mut sorted);
        let want: Vec<Option<f64>> = qs.iter().map(|q| quantile_sorted(&sorted, *q)).collect();
        assert_eq!(quantiles_select(&mut v, &qs), want);
        assert_eq!(quantiles_select(&mut [], &qs), vec![None; qs.len()]);
        assert_eq!(quantiles_select(&mut [3.0], &qs), vec![Some(3.0); qs.len()]);
    }

    #[test]
    fn mad_of_symmetric_set() {
        let (m, mad) = median_mad(&[1.0, 2.0, 3.0, 4.0, 100.0]).expect("mad");
        assert_eq!(m, 3.0);
        assert_eq!(mad, 1.0);
    }

    #[test]
    fn tail_share_uses_runs_at_or_above_p99() {
        let pairs = [(1.0, 0.1), (10.0, 8.0), (2.0, 0.0)];
        let s = tail_queue_share(&pairs, Some(9.0)).expect("share");
        assert!((s - 0.8).abs() < 1e-12);
        assert_eq!(tail_queue_share(&pairs, None), None);
    }
}
