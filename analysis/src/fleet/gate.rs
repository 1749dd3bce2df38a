//! From the GPUs' states to one exit code, so that a check over thousands of
//! GPUs can be green while a few are unknown or stale, and still turns red
//! for any unhealthy GPU.
//!
//! Exit codes (also in `--help` and `analysis/README.md`):
//! * `0` green: no GPU unhealthy, and degraded, unknown and stale GPUs each
//!   at or below `--max-degraded`, `--max-unknown`, `--max-stale`;
//! * `1` red: any of those crossed (GPUs missing under `--expect-gpus`
//!   count as stale);
//! * `4` green, but some files were unreadable and skipped (named in the
//!   output); `5` red with skipped files (bit 4 = files skipped);
//! * `2` an error (bad flags, no data; with `--strict`, an unreadable file).

use std::str::FromStr;

use serde::{Serialize, Serializer};

use super::{GpuVerdict, State};

/// A ceiling on a number of GPUs: a count, or a percentage of the GPUs
/// checked (rounded down).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Limit {
    /// At most this many GPUs.
    Count(usize),
    /// At most this share of the GPUs, %.
    Percent(f64),
}

impl Limit {
    /// How many GPUs of `total` may be in the state.
    pub fn allowed(&self, total: usize) -> usize {
        match *self {
            Limit::Count(n) => n,
            Limit::Percent(p) => ((total as f64) * p / 100.0).floor() as usize,
        }
    }
}

impl FromStr for Limit {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        let bad = || format!("{s:?}: expected a count (3) or a percentage (1%)");
        if let Some(p) = t.strip_suffix('%') {
            let p: f64 = p.trim().parse().map_err(|_| bad())?;
            if !(0.0..=100.0).contains(&p) {
                return Err(bad());
            }
            return Ok(Limit::Percent(p));
        }
        t.parse().map(Limit::Count).map_err(|_| bad())
    }
}

impl std::fmt::Display for Limit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Limit::Count(n) => write!(f, "{n}"),
            Limit::Percent(p) => write!(f, "{p}%"),
        }
    }
}

impl Serialize for Limit {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// The exit decision and why.
#[derive(Debug, Clone, Serialize)]
pub struct Gate {
    /// Whether the fleet check passes (files skipped or not).
    pub green: bool,
    /// Why it is red, one line per crossed limit.
    pub reasons: Vec<String>,
    /// The limits applied.
    pub max_unknown: Limit,
    /// See [`Gate::max_unknown`].
    pub max_stale: Limit,
    /// See [`Gate::max_unknown`].
    pub max_degraded: Limit,
    /// GPUs missing: `--expect-gpus` minus the GPUs seen (counted as
    /// stale; 0 without `--expect-gpus`).
    pub missing_gpus: usize,
    /// Files skipped as unreadable.
    pub files_skipped: usize,
    /// The process exit code: 0, 1, 4 or 5 (see the module doc).
    pub exit_code: u8,
}

impl Gate {
    /// Decides on `gpus` and the `missing` GPUs (expected, never seen:
    /// stale, unnamed) with the limits and the count of skipped files.
    pub fn decide(
        gpus: &[GpuVerdict],
        missing: usize,
        max_unknown: Limit,
        max_stale: Limit,
        max_degraded: Limit,
        files_skipped: usize,
    ) -> Gate {
        let total = gpus.len() + missing;
        let count = |s: State| {
            gpus.iter().filter(|g| g.state == s).count()
                + if s == State::Stale { missing } else { 0 }
        };
        let mut reasons = Vec::new();
        if gpus.is_empty() {
            reasons.push("no GPU has a run in the window or the baseline period".to_string());
        }
        let unhealthy = count(State::Unhealthy);
        if unhealthy > 0 {
            reasons.push(format!("{unhealthy} unhealthy"));
        }
        for (state, limit, flag) in [
            (State::Degraded, max_degraded, "--max-degraded"),
            (State::Unknown, max_unknown, "--max-unknown"),
            (State::Stale, max_stale, "--max-stale"),
        ] {
            let n = count(state);
            let allowed = limit.allowed(total);
            if n > allowed {
                let of_them = if state == State::Stale && missing > 0 {
                    format!("; {missing} of them missing, never seen")
                } else {
                    String::new()
                };
                reasons.push(format!(
                    "{n} {} > {allowed} allowed ({flag} {limit} of {total}{of_them})",
                    state.as_str()
                ));
            }
        }
        let green = reasons.is_empty();
        let exit_code = u8::from(!green) | if files_skipped > 0 { 4 } else { 0 };
        Gate {
            green,
            reasons,
            max_unknown,
            max_stale,
            max_degraded,
            missing_gpus: missing,
            files_skipped,
            exit_code,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use slicetrace_schema::{Contention, Verdict};

    fn gpu(state: State) -> GpuVerdict {
        GpuVerdict {
            node: "n".into(),
            gpu_uuid: "g".into(),
            gpu_name: String::new(),
            state,
            newest: None,
            age_secs: None,
            verdict: Verdict::Unknown,
            contention: Contention::Ok,
            kernels: Vec::new(),
        }
    }

    fn fleet(healthy: usize, unknown: usize, stale: usize) -> Vec<GpuVerdict> {
        std::iter::repeat_n(State::Healthy, healthy)
            .chain(std::iter::repeat_n(State::Unknown, unknown))
            .chain(std::iter::repeat_n(State::Stale, stale))
            .map(gpu)
            .collect()
    }

    #[test]
    fn limits_parse_as_counts_or_percentages() {
        assert_eq!("3".parse::<Limit>(), Ok(Limit::Count(3)));
        assert_eq!("1.5%".parse::<Limit>(), Ok(Limit::Percent(1.5)));
        assert!("-1".parse::<Limit>().is_err());
        assert!("120%".parse::<Limit>().is_err());
        assert_eq!(Limit::Percent(1.0).allowed(16_000), 160);
        assert_eq!(Limit::Percent(1.0).allowed(20), 0);
    }

    #[test]
    fn a_few_unknown_or_stale_gpus_in_a_big_fleet_stay_green() {
        let pct = Limit::Percent(1.0);
        let g = Gate::decide(&fleet(990, 5, 5), 0, pct, pct, Limit::Count(0), 0);
        assert!(g.green, "{:?}", g.reasons);
        assert_eq!(g.exit_code, 0);
        let g = Gate::decide(&fleet(980, 5, 15), 0, pct, pct, Limit::Count(0), 0);
        assert_eq!(g.exit_code, 1, "{:?}", g.reasons);
        assert!(
            g.reasons[0].contains("15 stale > 10 allowed"),
            "{:?}",
            g.reasons
        );
    }

    #[test]
    fn one_unhealthy_gpu_is_red_and_skipped_files_set_bit_4() {
        let mut gpus = fleet(999, 0, 0);
        let pct = Limit::Percent(1.0);
        assert_eq!(
            Gate::decide(&gpus, 0, pct, pct, Limit::Count(0), 2).exit_code,
            4
        );
        gpus.push(gpu(State::Unhealthy));
        assert_eq!(
            Gate::decide(&gpus, 0, pct, pct, Limit::Count(0), 0).exit_code,
            1
        );
        assert_eq!(
            Gate::decide(&gpus, 0, pct, pct, Limit::Count(0), 1).exit_code,
            5
        );
    }

    #[test]
    fn gpus_missing_under_expect_gpus_count_as_stale() {
        let pct = Limit::Percent(1.0);
        // 995 seen, all healthy, of 1000 expected: 5 stale > 0 allowed.
        let g = Gate::decide(
            &fleet(995, 0, 0),
            5,
            pct,
            Limit::Count(5),
            Limit::Count(0),
            0,
        );
        assert!(g.green, "{:?}", g.reasons);
        let g = Gate::decide(
            &fleet(995, 0, 0),
            5,
            pct,
            Limit::Count(4),
            Limit::Count(0),
            0,
        );
        assert_eq!(g.exit_code, 1);
        assert!(
            g.reasons[0].contains("5 stale > 4 allowed (--max-stale 4 of 1000; 5 of them missing"),
            "{:?}",
            g.reasons
        );
        assert_eq!(g.missing_gpus, 5);
        // Percentages are of the GPUs expected: 1% of 1000 is 10.
        let g = Gate::decide(&fleet(985, 0, 5), 10, pct, pct, Limit::Count(0), 0);
        assert_eq!(g.exit_code, 1, "{:?}", g.reasons);
        let g = Gate::decide(&fleet(985, 0, 0), 5, pct, pct, Limit::Count(0), 0);
        assert!(g.green, "{:?}", g.reasons);
    }
}
