//! `slicetrace fleet`: a verdict per node and GPU, for cron jobs and CI gates
//! (exit 1 when any GPU is not `healthy`, `unknown` included).
//!
//! Each GPU is judged per kernel and shape over the window that ends at the
//! newest `ts` in the data, with the agent's own rules
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
//!   (`tenants = 0`, at least `--baseline-min-samples`) or else the shipped
//!   per-SKU reference. No runs in the window ⇒ **unknown** (stale), never
//!   healthy; fewer than `--min-samples` with nothing found ⇒ **unknown**.
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

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use datafusion::prelude::SessionContext;
use serde::Serialize;
use slicetrace_schema::{
    event_eligible, event_mcycles, judge, sku_reference, BaselineSource, Contention, Faults,
    LearnedBaseline, ProbeRecord, Reason, Thresholds, WindowStats,
};

use crate::output::{fmt_num, Cell, Format, Table};
use crate::pred::{self, TENANTS_SQL};
use crate::scan::{self, ScanError};
use crate::stats::{median_mad, quantile_sorted, sort_values};

/// Fleet thresholds (flags; the defaults are [`Thresholds::DEFAULT`], the
/// agent's too).
#[derive(Debug, Clone, clap::Args)]
pub struct FleetArgs {
    /// Window length, ending at the newest ts in the data (e.g. 30m, 1h, 1d).
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    pub window: Duration,
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

/// Verdict for one node and GPU (the worst over its kernels).
#[derive(Debug, Clone, Serialize)]
pub struct GpuVerdict {
    /// Node.
    pub node: String,
    /// GPU UUID.
    pub gpu_uuid: String,
    /// Product name.
    pub gpu_name: String,
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
    /// Window start (RFC 3339).
    pub window_start: String,
    /// Window end = newest ts (RFC 3339).
    pub window_end: String,
    /// One entry per node and GPU.
    pub gpus: Vec<GpuVerdict>,
    /// GPUs per health verdict.
    pub summary: BTreeMap<String, usize>,
}

impl FleetResult {
    /// Whether any GPU is not `healthy` (`unknown` included: no data is
    /// not healthy).
    pub fn any_not_healthy(&self) -> bool {
        self.gpus.iter().any(|g| g.verdict != Verdict::Healthy)
    }

    /// GPUs with this health verdict.
    pub fn count(&self, v: Verdict) -> usize {
        self.gpus.iter().filter(|g| g.verdict == v).count()
    }
}

#[derive(Default)]
struct Unit {
    gpu_name: String,
    precision: String,
    ts: Vec<i64>,
    wall: Vec<f64>,
    gpu: Vec<f64>,
    clk: Vec<f64>,
    correct: Vec<Option<bool>>,
    tenants: Vec<Option<u32>>,
    inflated: Vec<Option<bool>>,
    throttle: Vec<u64>,
}

impl Unit {
    /// Row `i` as a record, with the fields the schema's row rules read.
    fn record(&self, i: usize) -> ProbeRecord {
        let opt = |x: f64| (!x.is_nan()).then_some(x);
        ProbeRecord {
            gpu_ms: opt(self.gpu[i]),
            wall_ms: self.wall[i],
            sm_clock_mhz: opt(self.clk[i]).map(|c| c as u32),
            gpu_processes: self.tenants[i],
            event_inflated: self.inflated[i],
            ..Default::default()
        }
    }
}

type UnitKey = (String, String, String, String);

fn p(v: &mut Vec<f64>, q: f64) -> Option<f64> {
    quantile_sorted(sort_values(v), q)
}

fn robust_z(x: Option<f64>, peers: &[f64], floor_frac: f64) -> Option<f64> {
    let x = x?;
    let (m, mad) = median_mad(peers)?;
    let scale = (1.4826 * mad).max(floor_frac * m.abs());
    (scale > 0.0).then(|| (x - m) / scale)
}

fn ts_rfc3339(ns: i64) -> String {
    chrono::DateTime::<chrono::Utc>::from_timestamp_nanos(ns)
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// Judges one unit (GPU, kernel, shape) over `[start, ..]`: the schema's
/// [`judge`] on exact quantiles.
fn judge_unit(kernel: &str, shape: &str, u: &Unit, start: i64, a: &FleetArgs) -> KernelFinding {
    let th = a.thresholds();
    let idx: Vec<usize> = (0..u.ts.len()).filter(|&i| u.ts[i] >= start).collect();
    let mut wall: Vec<f64> = idx.iter().map(|&i| u.wall[i]).collect();
    let mut gpu: Vec<f64> = idx.iter().map(|&i| u.gpu[i]).collect();
    let mut clk: Vec<f64> = idx.iter().map(|&i| u.clk[i]).collect();
    let mut event: Vec<f64> = idx
        .iter()
        .map(|&i| u.record(i))
        .filter(|r| event_eligible(r, &th))
        .filter_map(|r| event_mcycles(&r))
        .collect();
    let fails = idx.iter().filter(|&&i| u.correct[i] == Some(false)).count();
    let stats = WindowStats {
        samples: idx.len() as u64,
        wall_p99_ms: p(&mut wall, 0.99),
        event_samples: event.len() as u64,
        event_mcycles_p50: p(&mut event, 0.5),
        correctness_failures: fails as u64,
        throttle_reasons: idx.iter().fold(0u64, |acc, &i| acc | u.throttle[i]),
        max_tenants: idx.iter().filter_map(|&i| u.tenants[i]).max(),
    };
    // The GPU's own quiet baseline, over all its runs in the data.
    let quiet: Vec<usize> = (0..u.ts.len())
        .filter(|&i| u.tenants[i] == Some(0))
        .collect();
    let mut learned = LearnedBaseline::default();
    let min = a.baseline_min_samples;
    if quiet.len() >= min {
        let mut qw: Vec<f64> = quiet.iter().map(|&i| u.wall[i]).collect();
        learned.wall_p50_ms = p(&mut qw, 0.5);
        learned.wall_p99_ms = p(&mut qw, 0.99);
        let mut qe: Vec<f64> = quiet
            .iter()
            .filter_map(|&i| event_mcycles(&u.record(i)))
            .collect();
        if qe.len() >= min {
            learned.event_mcycles_p50 = p(&mut qe, 0.5);
        }
    }
    let sku = if a.no_sku_reference {
        None
    } else {
        sku_reference(Some(u.gpu_name.as_str()), kernel, shape, &u.precision)
    };
    let j = judge(&stats, &learned, sku, a.slo_p99_ms, &Faults::default(), &th);
    let mut reasons = Vec::new();
    if j.health_reason != Reason::None {
        reasons.push(j.health_detail.clone());
    }
    if j.contention != Contention::Ok {
        reasons.push(j.contention_detail.clone());
    }
    KernelFinding {
        kernel: kernel.to_string(),
        shape: shape.to_string(),
        verdict: j.verdict,
        health_reason: j.health_reason,
        health_baseline_source: j.health_source,
        contention: j.contention,
        contention_reason: j.contention_reason,
        contention_baseline_source: j.contention_source,
        window_runs: idx.len(),
        max_tenants: stats.max_tenants,
        wall_p99_ms: stats.wall_p99_ms.filter(|_| idx.len() >= a.min_samples),
        gpu_p50_ms: p(&mut gpu, 0.5).filter(|_| idx.len() >= a.min_samples),
        event_p50_mcycles: stats.event_mcycles_p50,
        event_baseline_mcycles: j.event_baseline_mcycles,
        baseline_p99_ms: j.wall_reference_p99_ms,
        inflation: j.inflation,
        peer_z_wall: None,
        peer_z_gpu: None,
        peer_z_norm: None,
        sm_clock_mhz: p(&mut clk, 0.5),
        correctness_failures: fails,
        reasons,
    }
}

/// Runs the check. `hive` says whether the table has a `date` partition
/// column (used to prune time ranges given in `--where`).
pub async fn evaluate(
    ctx: &SessionContext,
    a: &FleetArgs,
    hive: bool,
) -> Result<FleetResult, ScanError> {
    let filter = pred::where_sql(a.filter.as_deref(), hive, a.all_runs)
        .map_err(|e| ScanError::Consumer(e.to_string()))?;
    let sql = format!(
        "SELECT node, gpu_uuid, gpu_name, kernel, shape, precision, ts, wall_ms, gpu_ms, sm_clock_mhz, correct, \
         throttle_reasons, event_inflated, {TENANTS_SQL} AS tenants FROM probes WHERE {filter}"
    );
    let mut units: BTreeMap<UnitKey, Unit> = BTreeMap::new();
    scan::for_each_batch(ctx, &sql, None, |b| {
        let (node, uuid, name) = (
            scan::strings(b, "node")?,
            scan::strings(b, "gpu_uuid")?,
            scan::strings(b, "gpu_name")?,
        );
        let (kernel, shape, precision) = (
            scan::strings(b, "kernel")?,
            scan::strings(b, "shape")?,
            scan::strings(b, "precision")?,
        );
        let ts = scan::ints(b, "ts")?;
        let (wall, gpu, clk) = (
            scan::floats(b, "wall_ms")?,
            scan::floats(b, "gpu_ms")?,
            scan::floats(b, "sm_clock_mhz")?,
        );
        let correct = scan::bools(b, "correct")?;
        let inflated = scan::bools(b, "event_inflated")?;
        let thr = scan::ints(b, "throttle_reasons")?;
        let tenants = scan::u32s(b, "tenants")?;
        for i in 0..b.num_rows() {
            let key = (
                node[i].clone(),
                uuid[i].clone(),
                kernel[i].clone(),
                shape[i].clone(),
            );
            let u = units.entry(key).or_default();
            if u.gpu_name.is_empty() {
                u.gpu_name = name[i].clone();
            }
            if u.precision.is_empty() {
                u.precision = precision[i].clone();
            }
            u.ts.push(ts[i].unwrap_or(i64::MIN));
            u.wall.push(wall[i]);
            u.gpu.push(gpu[i]);
            u.clk.push(clk[i]);
            u.correct.push(correct[i]);
            u.tenants.push(tenants[i]);
            u.inflated.push(inflated[i]);
            u.throttle.push(thr[i].unwrap_or(0) as u64);
        }
        Ok(())
    })
    .await?;
    let newest = units
        .values()
        .flat_map(|u| u.ts.iter().copied())
        .max()
        .unwrap_or(0);
    let start = newest.saturating_sub(i64::try_from(a.window.as_nanos()).unwrap_or(i64::MAX));

    // Per unit: the schema's judgement on the window.
    struct M {
        finding: KernelFinding,
        norm_p50: Option<f64>,
        throttle: u64,
        peer_key: (String, String, String),
    }
    let mut ms: Vec<(UnitKey, M)> = Vec::new();
    for (key, u) in &units {
        let finding = judge_unit(&key.2, &key.3, u, start, a);
        let idx: Vec<usize> = (0..u.ts.len()).filter(|&i| u.ts[i] >= start).collect();
        let mut norm: Vec<f64> = idx.iter().map(|&i| u.gpu[i] * u.clk[i] / 1000.0).collect();
        let norm_p50 = if idx.len() >= a.min_samples {
            p(&mut norm, 0.5)
        } else {
            None
        };
        ms.push((
            key.clone(),
            M {
                finding,
                norm_p50,
                throttle: idx.iter().fold(0u64, |acc, &i| acc | u.throttle[i]),
                peer_key: (u.gpu_name.clone(), key.2.clone(), key.3.clone()),
            },
        ));
    }

    // Peer scores.
    let mut peers: HashMap<(String, String, String), Vec<usize>> = HashMap::new();
    for (i, (_, m)) in ms.iter().enumerate() {
        if m.finding.wall_p99_ms.is_some() {
            peers.entry(m.peer_key.clone()).or_default().push(i);
        }
    }
    let floor = a.min_deviation_pct / 100.0;
    for idxs in peers.values() {
        if idxs.len() < a.min_peers {
            for &i in idxs {
                let n = idxs.len();
                ms[i].1.finding.reasons.push(format!(
                    "only {n} peers with this gpu_name/kernel/shape: no peer score"
                ));
            }
            continue;
        }
        let col = |get: &dyn Fn(&M) -> Option<f64>| -> Vec<f64> {
            idxs.iter().filter_map(|&i| get(&ms[i].1)).collect()
        };
        let walls = col(&|m| m.finding.wall_p99_ms);
        let gpus = col(&|m| m.finding.gpu_p50_ms);
        let norms = col(&|m| m.norm_p50);
        let clocks = col(&|m| m.finding.sm_clock_mhz);
        let peer_wall = median_mad(&walls).map(|x| x.0);
        let peer_clock = median_mad(&clocks).map(|x| x.0);
        for &i in idxs {
            let m = &mut ms[i].1;
            let zw = robust_z(m.finding.wall_p99_ms, &walls, floor);
            let zg = robust_z(m.finding.gpu_p50_ms, &gpus, floor);
            let zn = robust_z(m.norm_p50, &norms, floor);
            m.finding.peer_z_wall = zw;
            m.finding.peer_z_gpu = zg;
            m.finding.peer_z_norm = zn;
            let thr = a.outlier_z;
            let slow_wall = zw.is_some_and(|z| z >= thr);
            let slow_gpu = zg.is_some_and(|z| z >= thr);
            if !slow_wall && !slow_gpu {
                continue;
            }
            let f = &mut m.finding;
            let (dimension_health, reason, cause) = if slow_gpu
                && !zn.is_some_and(|z| z >= thr)
                && zn.is_some()
            {
                (
                    true,
                    Reason::Throttled,
                    format!(
                        "throttling: SM clock {} MHz vs peers' {} MHz explains the slower kernel{}",
                        f.sm_clock_mhz.map(fmt_num).unwrap_or_else(|| "?".into()),
                        peer_clock.map(fmt_num).unwrap_or_else(|| "?".into()),
                        if m.throttle != 0 {
                            format!(", throttle reasons 0x{:x}", m.throttle)
                        } else {
                            String::new()
                        }
                    ),
                )
            } else if slow_gpu {
                (
                        true,
                        Reason::EventSlow,
                        "slow execution at normal clocks (kernel slower than peers even per clock cycle: suspect the GPU)".to_string(),
                    )
            } else {
                (
                    false,
                    Reason::WaitOverPeers,
                    format!(
                        "contention: kernel time is normal but runs wait for the GPU{}",
                        match f.max_tenants {
                            Some(t) => format!(" ({t} tenants)"),
                            None => String::new(),
                        }
                    ),
                )
            };
            let w = f.wall_p99_ms.map(fmt_num).unwrap_or_else(|| "?".into());
            let pw = peer_wall.map(fmt_num).unwrap_or_else(|| "?".into());
            let why = format!(
                "p99 wall {w} ms vs peer median {pw} ms (z_wall {}, z_gpu {}; {} peers): {cause}",
                zw.map(|z| format!("{z:.1}")).unwrap_or_else(|| "-".into()),
                zg.map(|z| format!("{z:.1}")).unwrap_or_else(|| "-".into()),
                idxs.len()
            );
            if dimension_health {
                if f.verdict < Verdict::Degraded {
                    f.verdict = Verdict::Degraded;
                    f.health_reason = reason;
                }
            } else if f.contention == Contention::Ok {
                f.contention = Contention::Contended;
                f.contention_reason = reason;
            }
            f.reasons.push(why);
        }
    }

    let mut gpus: BTreeMap<(String, String), GpuVerdict> = BTreeMap::new();
    for (key, m) in ms {
        let name = m.peer_key.0.clone();
        let g = gpus
            .entry((key.0.clone(), key.1.clone()))
            .or_insert_with(|| GpuVerdict {
                node: key.0.clone(),
                gpu_uuid: key.1.clone(),
                gpu_name: name,
                verdict: Verdict::Healthy,
                contention: Contention::Ok,
                kernels: Vec::new(),
            });
        g.verdict = g.verdict.max(m.finding.verdict);
        g.contention = g.contention.max(m.finding.contention);
        g.kernels.push(m.finding);
    }
    let gpus: Vec<GpuVerdict> = gpus.into_values().collect();
    let mut summary = BTreeMap::new();
    for v in Verdict::ALL {
        summary.insert(
            v.as_str().to_string(),
            gpus.iter().filter(|g| g.verdict == v).count(),
        );
    }
    for c in Contention::ALL {
        summary.insert(
            c.as_str().to_string(),
            gpus.iter().filter(|g| g.contention == c).count(),
        );
    }
    Ok(FleetResult {
        window_start: ts_rfc3339(start),
        window_end: ts_rfc3339(newest),
        gpus,
        summary,
    })
}

/// Renders the verdicts.
pub fn render(r: &FleetResult, format: Format) -> String {
    if format == Format::Json {
        return serde_json::to_string_pretty(r).unwrap_or_else(|_| "{}".into());
    }
    let mut t = Table::new([
        "node",
        "gpu",
        "health",
        "contention",
        "runs",
        "worst p99 wall ms",
        "reasons",
    ]);
    for g in &r.gpus {
        let runs: usize = g.kernels.iter().map(|k| k.window_runs).sum();
        let worst = g
            .kernels
            .iter()
            .filter_map(|k| k.wall_p99_ms)
            .fold(None, |a: Option<f64>, x| Some(a.map_or(x, |a| a.max(x))));
        let reasons: Vec<String> = g
            .kernels
            .iter()
            .flat_map(|k| k.reasons.iter().map(move |r| format!("{}: {r}", k.kernel)))
            .collect();
        t.rows.push(vec![
            Cell::Str(g.node.clone()),
            Cell::Str(g.gpu_uuid.clone()),
            Cell::Str(g.verdict.as_str().into()),
            Cell::Str(g.contention.as_str().into()),
            Cell::Int(runs as u64),
            Cell::Num(worst),
            Cell::Str(if reasons.is_empty() {
                "ok".into()
            } else {
                reasons.join("\n")
            }),
        ]);
    }
    let bad = r
        .gpus
        .iter()
        .filter(|g| g.verdict != Verdict::Healthy)
        .count();
    let unknown = r.count(Verdict::Unknown);
    let contended = r
        .gpus
        .iter()
        .filter(|g| g.contention != Contention::Ok)
        .count();
    format!(
        "window {} .. {}\n{}\n{} of {} GPUs not healthy ({} unknown: no or too few runs in the window); {} contended or over-shared (a shared GPU, not a fault)",
        r.window_start,
        r.window_end,
        t.render(Format::Table),
        bad,
        r.gpus.len(),
        unknown,
        contended
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(n: usize, wall: f64, gpu: f64, tenants: u32, t0: i64) -> Unit {
        let mut u = Unit {
            gpu_name: "NVIDIA H100 80GB HBM3".into(),
            precision: "fp32".into(),
            ..Default::default()
        };
        for i in 0..n {
            u.ts.push(t0 + i as i64);
            u.wall.push(wall);
            u.gpu.push(gpu);
            u.clk.push(1980.0);
            u.correct.push(Some(true));
            u.tenants.push(Some(tenants));
            u.inflated.push(None);
            u.throttle.push(0);
        }
        u
    }

    #[test]
    fn a_gpu_with_no_runs_in_the_window_is_unknown_never_healthy() {
        let u = unit(200, 0.1, 0.01, 0, 0);
        let f = judge_unit(
            "fft",
            "c2c 1d n=4096 batch=16",
            &u,
            1_000,
            &FleetArgs::default(),
        );
        assert_eq!(f.window_runs, 0);
        assert_eq!(
            (f.verdict, f.health_reason),
            (Verdict::Unknown, Reason::NoData)
        );
    }

    #[test]
    fn a_shared_gpu_is_healthy_and_contended_against_the_sku_reference() {
        let u = unit(200, 6.0, 0.007, 3, 0);
        let f = judge_unit(
            "fft",
            "c2c 1d n=4096 batch=16",
            &u,
            0,
            &FleetArgs::default(),
        );
        assert_eq!(f.verdict, Verdict::Healthy, "{:?}", f.reasons);
        assert_eq!(f.health_baseline_source, Some(BaselineSource::Sku));
        assert_eq!(f.contention, Contention::Contended, "{:?}", f.reasons);
        assert!(
            f.reasons.iter().any(|r| r.contains("3 tenants")),
            "{:?}",
            f.reasons
        );
    }
}
