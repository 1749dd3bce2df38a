//! `slicetrace fleet`: a health verdict per node and GPU, for cron jobs and
//! CI gates (exit 1 when any GPU is not healthy).
//!
//! Each GPU is judged per kernel and shape over the window that ends at the
//! newest `ts` in the data:
//! 1. any `correct = false` run in the window ⇒ **unhealthy**;
//! 2. p99 of `wall_ms` above `--slo-p99-ms` ⇒ **unhealthy**;
//! 3. inflation = window p99 of `wall_ms` ÷ the GPU's own quiet-baseline p99
//!    (all its runs with 0 tenants, see [`crate::pred::TENANTS_SQL`]; if it has
//!    fewer than `--min-samples` of those, its lowest-occupancy decile) ⇒
//!    **degraded** at `--max-inflation`, **unhealthy** at twice that;
//! 4. robust peer score z = (x − median) ÷ max(1.4826·MAD, `--min-deviation-pct`
//!    % of the median), over the GPUs with the same `gpu_name`, kernel and
//!    shape (at least `--min-peers`), for the window p99 of `wall_ms` and the
//!    p50 of `gpu_ms` ⇒ **degraded** at `--outlier-z`.
//!
//! The cause of a slow peer score is named from the clock-normalised
//! execution time `gpu_ms × sm_clock_mhz / 1000` (≈ millions of SM cycles):
//! slow `gpu_ms` that normalises back to the peers' is **throttling**; slow
//! `gpu_ms` that stays slow after normalising is **slow execution at normal
//! clocks**; normal `gpu_ms` with a slow `wall_ms` is **contention**.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use datafusion::prelude::SessionContext;
use serde::Serialize;

use crate::output::{fmt_num, Cell, Format, Table};
use crate::pred::{self, TENANTS_SQL};
use crate::scan::{self, ScanError};
use crate::stats::{median_mad, quantile_sorted, ratio, sort_values};

/// Fleet thresholds (flags with their defaults).
#[derive(Debug, Clone, clap::Args)]
pub struct FleetArgs {
    /// Window length, ending at the newest ts in the data (e.g. 30m, 1h, 1d).
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    pub window: Duration,
    /// SLO on the window p99 of wall_ms, in ms; above it the GPU is unhealthy.
    #[arg(long)]
    pub slo_p99_ms: Option<f64>,
    /// Window p99 / quiet-baseline p99 at which a GPU is degraded (twice this: unhealthy).
    #[arg(long, default_value_t = 2.0)]
    pub max_inflation: f64,
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
    /// Fewest runs in the window (and in a quiet baseline) to judge latency.
    #[arg(long, default_value_t = 20)]
    pub min_samples: usize,
    /// Extra SQL predicate (or START..END range) applied before everything.
    #[arg(long = "where")]
    pub filter: Option<String>,
}

impl Default for FleetArgs {
    fn default() -> Self {
        FleetArgs {
            window: Duration::from_secs(3600),
            slo_p99_ms: None,
            max_inflation: 2.0,
            outlier_z: 3.5,
            min_deviation_pct: 5.0,
            min_peers: 5,
            min_samples: 20,
            filter: None,
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
    /// Verdict for this kernel.
    pub verdict: Verdict,
    /// Runs in the window.
    pub window_runs: usize,
    /// Window p99 of wall_ms.
    pub wall_p99_ms: Option<f64>,
    /// Window p50 of gpu_ms.
    pub gpu_p50_ms: Option<f64>,
    /// Quiet-baseline p99 of wall_ms.
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
    /// Why, one entry per finding.
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
    /// Worst verdict over kernels.
    pub verdict: Verdict,
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
}

impl FleetResult {
    /// Whether any GPU is degraded or unhealthy.
    pub fn any_not_healthy(&self) -> bool {
        self.gpus.iter().any(|g| g.verdict != Verdict::Healthy)
    }
}

#[derive(Default)]
struct Unit {
    gpu_name: String,
    ts: Vec<i64>,
    wall: Vec<f64>,
    gpu: Vec<f64>,
    clk: Vec<f64>,
    correct: Vec<Option<bool>>,
    tenants: Vec<Option<u32>>,
    throttle: Vec<u64>,
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

/// Runs the check. `hive` says whether the table has a `date` partition
/// column (used to prune time ranges given in `--where`).
pub async fn evaluate(
    ctx: &SessionContext,
    a: &FleetArgs,
    hive: bool,
) -> Result<FleetResult, ScanError> {
    let filter = match a.filter.as_deref() {
        Some(f) => pred::to_sql(f, hive).map_err(|e| ScanError::Consumer(e.to_string()))?,
        None => "TRUE".into(),
    };
    let sql = format!(
        "SELECT node, gpu_uuid, gpu_name, kernel, shape, ts, wall_ms, gpu_ms, sm_clock_mhz, correct, \
         throttle_reasons, {TENANTS_SQL} AS tenants FROM probes WHERE {filter}"
    );
    let mut units: BTreeMap<UnitKey, Unit> = BTreeMap::new();
    scan::for_each_batch(ctx, &sql, None, |b| {
        let (node, uuid, name) = (
            scan::strings(b, "node")?,
            scan::strings(b, "gpu_uuid")?,
            scan::strings(b, "gpu_name")?,
        );
        let (kernel, shape) = (scan::strings(b, "kernel")?, scan::strings(b, "shape")?);
        let ts = scan::ints(b, "ts")?;
        let (wall, gpu, clk) = (
            scan::floats(b, "wall_ms")?,
            scan::floats(b, "gpu_ms")?,
            scan::floats(b, "sm_clock_mhz")?,
        );
        let correct = scan::bools(b, "correct")?;
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
            u.ts.push(ts[i].unwrap_or(i64::MIN));
            u.wall.push(wall[i]);
            u.gpu.push(gpu[i]);
            u.clk.push(clk[i]);
            u.correct.push(correct[i]);
            u.tenants.push(tenants[i]);
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

    // Per unit: window metrics and own-baseline checks.
    struct M {
        finding: KernelFinding,
        norm_p50: Option<f64>,
        max_tenants: Option<u32>,
        throttle: u64,
        peer_key: (String, String, String),
    }
    let mut ms: Vec<(UnitKey, M)> = Vec::new();
    for (key, u) in &units {
        let idx: Vec<usize> = (0..u.ts.len()).filter(|&i| u.ts[i] >= start).collect();
        let mut wall: Vec<f64> = idx.iter().map(|&i| u.wall[i]).collect();
        let mut gpu: Vec<f64> = idx.iter().map(|&i| u.gpu[i]).collect();
        let mut clk: Vec<f64> = idx.iter().map(|&i| u.clk[i]).collect();
        let mut norm: Vec<f64> = idx.iter().map(|&i| u.gpu[i] * u.clk[i] / 1000.0).collect();
        let fails = idx.iter().filter(|&&i| u.correct[i] == Some(false)).count();
        let throttle = idx.iter().fold(0u64, |acc, &i| acc | u.throttle[i]);
        let max_tenants = idx.iter().filter_map(|&i| u.tenants[i]).max();
        let window_runs = idx.len();
        let enough = window_runs >= a.min_samples;
        let wall_p99 = if enough { p(&mut wall, 0.99) } else { None };
        let gpu_p50 = if enough { p(&mut gpu, 0.5) } else { None };
        let norm_p50 = if enough { p(&mut norm, 0.5) } else { None };
        // Quiet baseline over all the unit's runs.
        let mut quiet: Vec<f64> = (0..u.ts.len())
            .filter(|&i| u.tenants[i] == Some(0))
            .map(|i| u.wall[i])
            .collect();
        if quiet.len() < a.min_samples {
            let mut known: Vec<(u32, f64)> = (0..u.ts.len())
                .filter_map(|i| u.tenants[i].map(|t| (t, u.wall[i])))
                .collect();
            known.sort_by(|x, y| x.0.cmp(&y.0).then(x.1.total_cmp(&y.1)));
            let take = known.len().div_ceil(10);
            quiet = known.into_iter().take(take).map(|x| x.1).collect();
        }
        let baseline = if quiet.len() >= a.min_samples {
            p(&mut quiet, 0.99)
        } else {
            None
        };
        let inflation = ratio(wall_p99, baseline);
        let mut f = KernelFinding {
            kernel: key.2.clone(),
            shape: key.3.clone(),
            verdict: Verdict::Healthy,
            window_runs,
            wall_p99_ms: wall_p99,
            gpu_p50_ms: gpu_p50,
            baseline_p99_ms: baseline,
            inflation,
            peer_z_wall: None,
            peer_z_gpu: None,
            peer_z_norm: None,
            sm_clock_mhz: p(&mut clk, 0.5),
            correctness_failures: fails,
            reasons: Vec::new(),
        };
        let raise = |f: &mut KernelFinding, v: Verdict, why: String| {
            f.verdict = f.verdict.max(v);
            f.reasons.push(why);
        };
        if fails > 0 {
            raise(
                &mut f,
                Verdict::Unhealthy,
                format!("{fails} runs failed the correctness check"),
            );
        }
        if !enough {
            f.reasons.push(format!(
                "only {window_runs} runs in the window (< {}): latency not judged",
                a.min_samples
            ));
        }
        if let (Some(slo), Some(w)) = (a.slo_p99_ms, wall_p99) {
            if w > slo {
                raise(
                    &mut f,
                    Verdict::Unhealthy,
                    format!(
                        "p99 wall {} ms exceeds the SLO of {} ms",
                        fmt_num(w),
                        fmt_num(slo)
                    ),
                );
            }
        }
        if let (Some(inf), Some(w), Some(bp)) = (inflation, wall_p99, baseline) {
            if inf >= a.max_inflation {
                let v = if inf >= 2.0 * a.max_inflation {
                    Verdict::Unhealthy
                } else {
                    Verdict::Degraded
                };
                let cause = match max_tenants {
                    Some(t) if t > 0 => format!("contention: up to {t} tenants in the window"),
                    Some(_) => "no tenants in the window".to_string(),
                    None => "occupancy unknown".to_string(),
                };
                raise(
                    &mut f,
                    v,
                    format!(
                        "p99 wall {} ms is {:.1}x its quiet baseline {} ms ({cause})",
                        fmt_num(w),
                        inf,
                        fmt_num(bp)
                    ),
                );
            }
        }
        ms.push((
            key.clone(),
            M {
                finding: f,
                norm_p50,
                max_tenants,
                throttle,
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
            let cause = if slow_gpu && !zn.is_some_and(|z| z >= thr) && zn.is_some() {
                format!(
                    "throttling: SM clock {} MHz vs peers' {} MHz explains the slower kernel{}",
                    m.finding
                        .sm_clock_mhz
                        .map(fmt_num)
                        .unwrap_or_else(|| "?".into()),
                    peer_clock.map(fmt_num).unwrap_or_else(|| "?".into()),
                    if m.throttle != 0 {
                        format!(", throttle reasons 0x{:x}", m.throttle)
                    } else {
                        String::new()
                    }
                )
            } else if slow_gpu {
                "slow execution at normal clocks (kernel slower than peers even per clock cycle: suspect the GPU)".to_string()
            } else {
                format!(
                    "contention: kernel time is normal but runs wait for the GPU{}",
                    match m.max_tenants {
                        Some(t) => format!(" (up to {t} tenants)"),
                        None => String::new(),
                    }
                )
            };
            let w = m
                .finding
                .wall_p99_ms
                .map(fmt_num)
                .unwrap_or_else(|| "?".into());
            let pw = peer_wall.map(fmt_num).unwrap_or_else(|| "?".into());
            let why = format!(
                "p99 wall {w} ms vs peer median {pw} ms (z_wall {}, z_gpu {}; {} peers): {cause}",
                zw.map(|z| format!("{z:.1}")).unwrap_or_else(|| "-".into()),
                zg.map(|z| format!("{z:.1}")).unwrap_or_else(|| "-".into()),
                idxs.len()
            );
            m.finding.verdict = m.finding.verdict.max(Verdict::Degraded);
            m.finding.reasons.push(why);
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
                kernels: Vec::new(),
            });
        g.verdict = g.verdict.max(m.finding.verdict);
        g.kernels.push(m.finding);
    }
    Ok(FleetResult {
        window_start: ts_rfc3339(start),
        window_end: ts_rfc3339(newest),
        gpus: gpus.into_values().collect(),
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
        "verdict",
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
    format!(
        "window {} .. {}\n{}\n{} of {} GPUs not healthy",
        r.window_start,
        r.window_end,
        t.render(Format::Table),
        bad,
        r.gpus.len()
    )
}
