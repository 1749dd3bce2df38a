//! `slicetrace fleet`: a state per node and GPU, and one exit code for a
//! whole fleet, for cron jobs and CI gates (see [`FleetResult::exit_code`]).
//!
//! Each GPU is judged per kernel and shape over the window `[until −
//! --window, until)`, `until` being now unless `--until` says otherwise, with
//! the agent's own rules
//! ([`slicetrace_schema::judge`], thresholds [`Thresholds::DEFAULT`]), so the
//! same rows read the same here and on the agent's `/metrics`. Two
//! dimensions, printed apart:
//!
//! * **health** of the GPU itself: `correct = false` runs, hardware
//!   throttle reasons ⇒ **unhealthy**; software throttle reasons ⇒
//!   **degraded**; the event time per SM cycle (`gpu_ms × sm_clock_mhz /
//!   1000`, over quiet runs and runs not preempted mid-kernel) at
//!   `--degraded-factor`/`--unhealthy-factor` times its baseline ⇒
//!   **degraded**/**unhealthy**. The baseline is the GPU's own quiet runs
//!   (`tenants = 0`, at least `--baseline-min-samples`) in the baseline
//!   period (by default the `--baseline-window` just before the window; or
//!   `--baseline START..END`), never the window itself, or else the shipped
//!   per-SKU reference. No runs in the window ⇒ **stale** (its own state,
//!   with the age of the GPU's newest row), never healthy; fewer than
//!   `--min-samples` with nothing found ⇒ **unknown**.
//! * **contention**: the window p99 of `wall_ms` against `--slo-p99-ms`, or
//!   the quiet baseline (learned or SKU) and what the tenant count predicts ⇒
//!   `ok`, `contended` or `over-shared`, with the tenant count in the reason.
//!   A GPU merely shared by its tenants is `healthy` + `contended`.
//!
//! Peers: a robust score z = (x − median) ÷ max(1.4826·MAD,
//! `--min-deviation-pct` % of the median), over the GPUs with the same
//! `gpu_name`, kernel and shape (at least `--min-peers`), for the window p99
//! of `wall_ms` and the p50 of `gpu_ms`, at `--outlier-z` names a slower
//! GPU: slow `gpu_ms` that normalises back to the peers' by SM clock is
//! **throttling** (health degraded), slow `gpu_ms` that stays slow is **slow
//! execution at normal clocks** (health degraded), and normal `gpu_ms` with a
//! slow `wall_ms` is contention (`contended`, reason `wait_over_peers`).
//!
//! Reading scales with the window, not with the data kept: only the files
//! of the window and the baseline period are listed and opened
//! ([`crate::source::open_range`]), and one DataFusion aggregate per GPU,
//! kernel and shape (t-digest quantiles, `approx_percentile_cont`) streams
//! over them, so memory holds one summary per unit, never the rows.
//!
//! One job per file: `evaluate.rs` aggregates the window and the baseline
//! and compares peers, `unit.rs` judges one GPU, kernel and shape,
//! `gate.rs` turns the states into an exit code, `render.rs` prints the
//! result.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;
use slicetrace_schema::{BaselineSource, Contention, Reason, Thresholds};

use crate::source::ScanStats;

mod evaluate;
pub(crate) use evaluate::judge_units;
pub(crate) use unit::{Unit, UnitKey};
mod gate;
mod render;
mod unit;

pub use evaluate::{evaluate, NewestFiles, Plan, PlanError};
pub use gate::{Gate, Limit};
pub use render::{render, write_json};

/// Fleet thresholds (flags; the defaults are [`Thresholds::DEFAULT`], the
/// agent's too).
#[derive(Debug, Clone, clap::Args)]
pub struct FleetArgs {
    /// Window length, ending at --until (e.g. 30m, 1h, 1d).
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    pub window: Duration,
    /// End of the window (exclusive): RFC 3339 (2026-01-01T02:00:00Z) or
    /// `now` [default: now]. A GPU with no runs in the window is stale.
    #[arg(long)]
    pub until: Option<String>,
    /// Length of the baseline period that ends where the window starts:
    /// each GPU's quiet runs in it are its own reference (0s: only the
    /// shipped per-SKU reference). Read cost grows with it.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    pub baseline_window: Duration,
    /// An explicit baseline period START..END (RFC 3339, END exclusive),
    /// instead of --baseline-window.
    #[arg(long, conflicts_with = "baseline_window")]
    pub baseline: Option<String>,
    /// Most GPUs that may be unknown (too few runs) with the check still
    /// green: a count (`3`) or a share of the GPUs (`1%`, rounded down).
    #[arg(long, default_value = "1%")]
    pub max_unknown: Limit,
    /// Most GPUs that may be stale (no runs in the window) with the check
    /// still green: a count or a share (`1%`).
    #[arg(long, default_value = "1%")]
    pub max_stale: Limit,
    /// GPUs the fleet has. Those never seen (no row in the window or the
    /// baseline period, no node directory in the listed date= partitions)
    /// count as stale, so a node that stopped long ago cannot drop out of
    /// the check unnoticed; percentages are then of this number.
    #[arg(long)]
    pub expect_gpus: Option<usize>,
    /// Most GPUs that may be degraded with the check still green: a count
    /// or a share. Any unhealthy GPU makes the check red.
    #[arg(long, default_value = "0")]
    pub max_degraded: Limit,
    /// A file that cannot be read is an error (exit 2) instead of being
    /// skipped, named and reported by exit code 4.
    #[arg(long)]
    pub strict: bool,
    /// Files read at once and DataFusion's partitions [default: the cores].
    #[arg(long)]
    pub parallel: Option<usize>,
    /// Most memory the query's operators may reserve (e.g. 512MiB, 2GiB;
    /// default: unbounded). Above it the check fails (exit 2, "Resources
    /// exhausted") instead of being killed by the pod's memory limit. Set
    /// it below the CronJob's limit: the files' read buffers come on top.
    #[arg(long, value_parser = parse_bytes)]
    pub memory_limit: Option<usize>,
    /// Open every file of the listed date= partitions, instead of skipping
    /// those that their names (first row's time) place outside the range.
    #[arg(long)]
    pub no_name_pruning: bool,
    /// SLO on the window p99 of wall_ms, in ms: above it the GPU is contended
    /// (above unhealthy-factor times it, over-shared). Never a health fault.
    #[arg(long)]
    pub slo_p99_ms: Option<f64>,
    /// Health: event time per SM cycle ÷ baseline at which a GPU is
    /// degraded. Contention: wall p99 ÷ quiet baseline at which it is
    /// contended (and ÷ what the tenants predict, over-shared).
    #[arg(long, alias = "max-inflation", default_value_t = Thresholds::DEFAULT.degraded_factor)]
    pub degraded_factor: f64,
    /// Health: event ratio at which a GPU is unhealthy; contention: wall p99
    /// ÷ SLO at which it is over-shared.
    #[arg(long, default_value_t = Thresholds::DEFAULT.unhealthy_factor)]
    pub unhealthy_factor: f64,
    /// Time slice per tenant, ms (what one tenant adds to a random arrival's wait).
    #[arg(long, default_value_t = Thresholds::DEFAULT.slice_ms)]
    pub slice_ms: f64,
    /// Robust z-score against peers at which a GPU is degraded.
    #[arg(long, default_value_t = 3.5)]
    pub outlier_z: f64,
    /// Deviations smaller than this % of the peer median never count as outliers
    /// (the floor of the z-score's scale).
    #[arg(long, default_value_t = 5.0)]
    pub min_deviation_pct: f64,
    /// Fewest GPUs (same gpu_name, kernel, shape) for a peer comparison.
    #[arg(long, default_value_t = 5)]
    pub min_peers: usize,
    /// Fewest runs in the window to judge latency (fewer: unknown).
    #[arg(long, default_value_t = Thresholds::DEFAULT.min_samples as usize)]
    pub min_samples: usize,
    /// Fewest quiet runs (tenants = 0) for a GPU's own baseline; with fewer,
    /// the shipped per-SKU reference is used.
    #[arg(long, default_value_t = Thresholds::DEFAULT.baseline_min_samples as usize)]
    pub baseline_min_samples: usize,
    /// Do not fall back to the shipped per-SKU reference.
    #[arg(long)]
    pub no_sku_reference: bool,
    /// Extra SQL predicate (or START..END range) applied before everything.
    #[arg(long = "where")]
    pub filter: Option<String>,
    /// Count burst runs too, not only arrival runs (`--all-runs`, a flag
    /// shared by every command and set by the binary).
    #[arg(skip)]
    pub all_runs: bool,
}

impl Default for FleetArgs {
    fn default() -> Self {
        let t = Thresholds::DEFAULT;
        FleetArgs {
            window: Duration::from_secs(3600),
            until: None,
            baseline_window: Duration::from_secs(3600),
            baseline: None,
            max_unknown: Limit::Percent(1.0),
            max_stale: Limit::Percent(1.0),
            expect_gpus: None,
            max_degraded: Limit::Count(0),
            strict: false,
            parallel: None,
            memory_limit: None,
            no_name_pruning: false,
            slo_p99_ms: None,
            degraded_factor: t.degraded_factor,
            unhealthy_factor: t.unhealthy_factor,
            slice_ms: t.slice_ms,
            outlier_z: 3.5,
            min_deviation_pct: 5.0,
            min_peers: 5,
            min_samples: t.min_samples as usize,
            baseline_min_samples: t.baseline_min_samples as usize,
            no_sku_reference: false,
            filter: None,
            all_runs: false,
        }
    }
}

impl FleetArgs {
    /// The thresholds in the schema's terms (throttle masks: the defaults).
    pub fn thresholds(&self) -> Thresholds {
        Thresholds {
            degraded_factor: self.degraded_factor,
            unhealthy_factor: self.unhealthy_factor,
            min_samples: self.min_samples as u64,
            baseline_min_samples: self.baseline_min_samples as u64,
            slice_ms: self.slice_ms,
            ..Thresholds::DEFAULT
        }
    }
}

/// Bytes from `1048576`, `512KiB`, `512MiB`, `2GiB` (also `K`, `M`, `G`,
/// `KB`, `MB`, `GB`, all powers of 1024).
pub fn parse_bytes(s: &str) -> Result<usize, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let bad = || format!("{s:?}: expected bytes such as 512MiB or 2GiB");
    let n: f64 = num.parse().map_err(|_| bad())?;
    let mult: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" | "kib" => 1024.0,
        "m" | "mb" | "mib" => 1024.0 * 1024.0,
        "g" | "gb" | "gib" => 1024.0 * 1024.0 * 1024.0,
        _ => return Err(bad()),
    };
    let bytes = n * mult;
    if !bytes.is_finite() || bytes < 1.0 || bytes > usize::MAX as f64 {
        return Err(bad());
    }
    Ok(bytes as usize)
}

pub use slicetrace_schema::Verdict;

/// Findings for one GPU, kernel and shape.
#[derive(Debug, Clone, Serialize)]
pub struct KernelFinding {
    /// Kernel.
    pub kernel: String,
    /// Shape.
    pub shape: String,
    /// Health of the GPU for this kernel.
    pub verdict: Verdict,
    /// Bounded reason of the health verdict.
    pub health_reason: Reason,
    /// Baseline the event clock was judged against.
    pub health_baseline_source: Option<BaselineSource>,
    /// Contention for this kernel.
    pub contention: Contention,
    /// Bounded reason of the contention state.
    pub contention_reason: Reason,
    /// Baseline the wall clock was judged against.
    pub contention_baseline_source: Option<BaselineSource>,
    /// Runs in the window.
    pub window_runs: usize,
    /// Largest tenant count in the window.
    pub max_tenants: Option<u32>,
    /// Window p99 of wall_ms.
    pub wall_p99_ms: Option<f64>,
    /// Window p50 of gpu_ms.
    pub gpu_p50_ms: Option<f64>,
    /// Window p50 of the event time per SM cycle (judged runs), Mcycles.
    pub event_p50_mcycles: Option<f64>,
    /// Its baseline, Mcycles.
    pub event_baseline_mcycles: Option<f64>,
    /// The wall p99 reference (SLO or quiet baseline), ms.
    pub baseline_p99_ms: Option<f64>,
    /// wall_p99_ms / baseline_p99_ms.
    pub inflation: Option<f64>,
    /// Peer z-score of wall_p99_ms.
    pub peer_z_wall: Option<f64>,
    /// Peer z-score of gpu_p50_ms.
    pub peer_z_gpu: Option<f64>,
    /// Peer z-score of the clock-normalised gpu_ms.
    pub peer_z_norm: Option<f64>,
    /// Median SM clock in the window, MHz.
    pub sm_clock_mhz: Option<f64>,
    /// Runs with correct = false in the window.
    pub correctness_failures: usize,
    /// Why, one entry per finding (health first, then contention).
    pub reasons: Vec<String>,
}

/// The state of a GPU in the fleet summary: its health verdict, except that a
/// GPU with no run in the window is `stale`, not `unknown`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Every check that could run passed.
    Healthy,
    /// Runs in the window, but too few (or no reference) to judge.
    Unknown,
    /// No run in the window: the agent, its node or its shipping stopped.
    Stale,
    /// Slower than it should be.
    Degraded,
    /// Wrong answers, hardware throttling, or far too slow.
    Unhealthy,
}

impl State {
    /// Every state, best first.
    pub const ALL: [State; 5] = [
        State::Healthy,
        State::Unknown,
        State::Stale,
        State::Degraded,
        State::Unhealthy,
    ];

    /// Lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Healthy => "healthy",
            State::Unknown => "unknown",
            State::Stale => "stale",
            State::Degraded => "degraded",
            State::Unhealthy => "unhealthy",
        }
    }
}

/// Verdict for one node and GPU (the worst over its kernels).
#[derive(Debug, Clone, Serialize)]
pub struct GpuVerdict {
    /// Node.
    pub node: String,
    /// GPU UUID (empty for a node that wrote files but no row in the range).
    pub gpu_uuid: String,
    /// Product name.
    pub gpu_name: String,
    /// The fleet state: the verdict, or `stale` with no run in the window.
    pub state: State,
    /// Newest run seen (RFC 3339); for a node with no row in the range, the
    /// start of its newest file.
    pub newest: Option<String>,
    /// Seconds from the newest run to the window's end.
    pub age_secs: Option<f64>,
    /// Worst health over kernels.
    pub verdict: Verdict,
    /// Worst contention over kernels.
    pub contention: Contention,
    /// Per kernel and shape.
    pub kernels: Vec<KernelFinding>,
}

/// The whole check.
#[derive(Debug, Clone, Serialize)]
pub struct FleetResult {
    /// Which data answered: raw rows or rollups (and why).
    pub source: crate::rollup::DataSource,
    /// Window start (RFC 3339).
    pub window_start: String,
    /// Window end, exclusive: `--until`, or now (RFC 3339).
    pub window_end: String,
    /// Baseline period start (RFC 3339; absent without a baseline period).
    pub baseline_start: Option<String>,
    /// Baseline period end, exclusive.
    pub baseline_end: Option<String>,
    /// One entry per node and GPU.
    pub gpus: Vec<GpuVerdict>,
    /// GPUs per state (healthy, unknown, stale, degraded, unhealthy), per
    /// contention state, and `missing` (expected by `--expect-gpus`, never
    /// seen; counted as stale by the gate, not in `stale`).
    pub summary: BTreeMap<String, usize>,
    /// What was listed, pruned, opened, skipped and scanned.
    pub scan: ScanStats,
    /// Runs counted (arrivals unless --all-runs) and rows read, in the range.
    pub runs: RunTotals,
    /// The exit decision.
    pub gate: Gate,
}

/// Rows read in the scanned range.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct RunTotals {
    /// Rows in the range (after --where).
    pub rows: u64,
    /// Of those, arrival runs.
    pub arrivals: u64,
    /// Runs counted in the window.
    pub window_runs: u64,
}

impl FleetResult {
    /// Whether any GPU is not `healthy` (`unknown` and `stale` included).
    pub fn any_not_healthy(&self) -> bool {
        self.gpus.iter().any(|g| g.state != State::Healthy)
    }

    /// GPUs in this state.
    pub fn count(&self, s: State) -> usize {
        self.gpus.iter().filter(|g| g.state == s).count()
    }

    /// The process exit code (see [`Gate`]): 0 green, 1 red, 4 green with
    /// skipped files, 5 red with skipped files.
    pub fn exit_code(&self) -> u8 {
        self.gate.exit_code
    }
}

#[cfg(test)]
mod tests {
    use super::parse_bytes;

    #[test]
    fn memory_limits_read_with_binary_units() {
        assert_eq!(parse_bytes("1048576"), Ok(1 << 20));
        assert_eq!(parse_bytes("512MiB"), Ok(512 << 20));
        assert_eq!(parse_bytes("2GiB"), Ok(2 << 30));
        assert_eq!(parse_bytes("1.5k"), Ok(1536));
        assert!(parse_bytes("lots").is_err());
        assert!(parse_bytes("0").is_err());
        assert!(parse_bytes("5TB").is_err());
    }
}
