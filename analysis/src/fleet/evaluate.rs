//! The window and the baseline period in one aggregate query over the
//! pruned files, one [`unit::Unit`](super::unit) per GPU, kernel and shape,
//! and the peer comparison across GPUs of one model.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use datafusion::prelude::SessionContext;
use slicetrace_schema::{layout, Contention, Reason};

use crate::output::fmt_num;
use crate::pred::{self, ARRIVAL_SQL};
use crate::scan::{self, ScanError};
use crate::source::{ScanStats, TimeRange};
use crate::stats::median_mad;

use super::gate::Gate;
use super::unit::{judge_unit, ts_rfc3339, PeerScale, Unit, UnitKey};
use super::{FleetArgs, FleetResult, GpuVerdict, KernelFinding, RunTotals, State, Verdict};

/// A bad `--until` or `--baseline`.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// `--until` is not RFC 3339 or `now`.
    #[error("bad --until {0:?}: expected RFC 3339 (2026-01-01T02:00:00Z) or now")]
    Until(String),
    /// `--baseline` is not a START..END range.
    #[error("bad --baseline {0:?}: expected START..END in RFC 3339, END after START")]
    Baseline(String),
    /// The window does not fit in the timestamp range.
    #[error("--window {0:?} is too long")]
    Window(String),
}

/// The instants a check reads: the window, the baseline period and the
/// range that covers both (what is listed, opened and scanned).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    /// `[until − window, until)`.
    pub window: TimeRange,
    /// The baseline period (`None`: no learned baseline).
    pub baseline: Option<TimeRange>,
}

fn parse_instant(s: &str) -> Option<i64> {
    DateTime::parse_from_rfc3339(s.trim())
        .ok()
        .and_then(|d| d.with_timezone(&Utc).timestamp_nanos_opt())
}

impl Plan {
    /// The plan for `a`, with `now_ns` as the default end.
    pub fn from_args(a: &FleetArgs, now_ns: i64) -> Result<Plan, PlanError> {
        let until = match a.until.as_deref().map(str::trim) {
            None | Some("now") => now_ns,
            Some(s) => parse_instant(s).ok_or_else(|| PlanError::Until(s.to_string()))?,
        };
        let ns = |d: std::time::Duration| i64::try_from(d.as_nanos()).ok();
        let window_ns = ns(a.window).ok_or_else(|| PlanError::Window(format!("{:?}", a.window)))?;
        let start = until
            .checked_sub(window_ns)
            .ok_or_else(|| PlanError::Window(format!("{:?}", a.window)))?;
        let window = TimeRange {
            start_ns: start,
            end_ns: until,
        };
        let baseline = match a.baseline.as_deref() {
            Some(b) => {
                let bad = || PlanError::Baseline(b.to_string());
                let (x, y) = b.split_once("..").ok_or_else(bad)?;
                let (x, y) = (
                    parse_instant(x).ok_or_else(bad)?,
                    parse_instant(y).ok_or_else(bad)?,
                );
                if y <= x {
                    return Err(bad());
                }
                Some(TimeRange {
                    start_ns: x,
                    end_ns: y,
                })
            }
            None => {
                let len = ns(a.baseline_window).unwrap_or(i64::MAX);
                (len > 0).then(|| TimeRange {
                    start_ns: start.saturating_sub(len),
                    end_ns: start,
                })
            }
        };
        Ok(Plan { window, baseline })
    }

    /// The range that covers the window and the baseline period.
    pub fn scan_range(&self) -> TimeRange {
        match self.baseline {
            Some(b) => TimeRange {
                start_ns: b.start_ns.min(self.window.start_ns),
                end_ns: b.end_ns.max(self.window.end_ns),
            },
            None => self.window,
        }
    }
}

/// `ts` literal for an instant.
fn ts_sql(ns: i64) -> String {
    format!(
        "TIMESTAMP '{}'",
        DateTime::<Utc>::from_timestamp_nanos(ns).format("%Y-%m-%dT%H:%M:%S%.9fZ")
    )
}

fn range_sql(r: TimeRange) -> String {
    format!("ts >= {} AND ts < {}", ts_sql(r.start_ns), ts_sql(r.end_ns))
}

/// The aggregate query: one row per GPU, kernel and shape.
fn query(a: &FleetArgs, plan: &Plan) -> Result<String, ScanError> {
    let user = pred::where_sql(a.filter.as_deref(), false, true)
        .map_err(|e| ScanError::Consumer(e.to_string()))?;
    let sel = if a.all_runs {
        "TRUE".to_string()
    } else {
        format!("({ARRIVAL_SQL})")
    };
    let w = format!("{sel} AND {}", range_sql(plan.window));
    let b = match plan.baseline {
        Some(r) => format!("{sel} AND tenants = 0 AND {}", range_sql(r)),
        None => "FALSE".to_string(),
    };
    let slice = a.slice_ms;
    // Event clock eligibility: `slicetrace_schema::event_eligible` in SQL.
    let eligible = format!(
        "(tenants = 0 OR (event_inflated IS NOT NULL AND NOT event_inflated) \
         OR (event_inflated IS NULL AND gpu_ms < {slice}))"
    );
    let clock = "CAST(sm_clock_mhz AS DOUBLE)";
    let mcycles = format!("gpu_ms * {clock} / 1000.0");
    let q = |p: f64, cond: &str, x: &str| {
        format!("approx_percentile_cont({p}) WITHIN GROUP (ORDER BY CASE WHEN {cond} THEN {x} END)")
    };
    let hw_mask = a.thresholds().throttle_unhealthy_mask as i64;
    let has_event = "gpu_ms IS NOT NULL AND sm_clock_mhz IS NOT NULL";
    Ok(format!(
        "SELECT node, gpu_uuid, kernel, shape, max(gpu_name) AS gpu_name, max(precision) AS precision, \
         max(ts) AS newest, count(*) AS n_rows, count(CASE WHEN {ARRIVAL_SQL} THEN 1 END) AS n_arrivals, \
         count(CASE WHEN {w} THEN 1 END) AS w_runs, \
         {} AS w_wall_p99, {} AS w_gpu_p50, {} AS w_clock_p50, {} AS w_norm_p50, \
         count(CASE WHEN {w} AND {eligible} AND {has_event} THEN 1 END) AS w_event_runs, \
         {} AS w_event_p50, \
         count(CASE WHEN {w} AND correct = false THEN 1 END) AS w_fails, \
         bit_or(CASE WHEN {w} THEN throttle_reasons END) AS w_throttle, \
         count(CASE WHEN {w} AND (CAST(throttle_reasons AS BIGINT) & {hw_mask}) <> 0 THEN 1 END) AS w_hw_throttled, \
         max(CASE WHEN {w} THEN tenants END) AS w_max_tenants, \
         count(CASE WHEN {b} THEN 1 END) AS b_quiet_runs, \
         {} AS b_wall_p50, {} AS b_wall_p99, \
         count(CASE WHEN {b} AND {has_event} THEN 1 END) AS b_event_runs, \
         {} AS b_event_p50 \
         FROM probes WHERE {user} AND {} \
         GROUP BY node, gpu_uuid, kernel, shape",
        q(0.99, &w, "wall_ms"),
        q(0.5, &w, "gpu_ms"),
        q(0.5, &w, clock),
        q(0.5, &w, &mcycles),
        q(0.5, &format!("{w} AND {eligible}"), &mcycles),
        q(0.5, &b, "wall_ms"),
        q(0.99, &b, "wall_ms"),
        q(0.5, &b, &mcycles),
        range_sql(plan.scan_range()),
    ))
}

/// Per node directory seen in the listing, the start of its newest file:
/// nodes that wrote files but no row in the range are stale too.
pub type NewestFiles = BTreeMap<String, i64>;

/// Runs the check on a dataset opened for `plan.scan_range()`
/// ([`crate::source::open_range`]).
pub async fn evaluate(
    ctx: &SessionContext,
    a: &FleetArgs,
    plan: &Plan,
    scan_stats: ScanStats,
    newest_files: &NewestFiles,
) -> Result<FleetResult, ScanError> {
    let sql = query(a, plan)?;
    let mut units: BTreeMap<UnitKey, Unit> = BTreeMap::new();
    scan::for_each_batch(ctx, &sql, None, |b| {
        let s = |c: &str| scan::strings(b, c);
        let f = |c: &str| scan::floats(b, c);
        let i = |c: &str| scan::ints(b, c);
        let (node, uuid, kernel, shape) = (s("node")?, s("gpu_uuid")?, s("kernel")?, s("shape")?);
        let (name, precision) = (s("gpu_name")?, s("precision")?);
        let (newest, rows, arrivals) = (i("newest")?, i("n_rows")?, i("n_arrivals")?);
        let (w_runs, w_wall_p99, w_gpu_p50) = (i("w_runs")?, f("w_wall_p99")?, f("w_gpu_p50")?);
        let (w_clock_p50, w_norm_p50) = (f("w_clock_p50")?, f("w_norm_p50")?);
        let (w_event_runs, w_event_p50) = (i("w_event_runs")?, f("w_event_p50")?);
        let (w_fails, w_throttle, w_max_tenants) = (
            i("w_fails")?,
            i("w_throttle")?,
            scan::u32s(b, "w_max_tenants")?,
        );
        let w_hw_throttled = i("w_hw_throttled")?;
        let (b_quiet_runs, b_wall_p50, b_wall_p99) =
            (i("b_quiet_runs")?, f("b_wall_p50")?, f("b_wall_p99")?);
        let (b_event_runs, b_event_p50) = (i("b_event_runs")?, f("b_event_p50")?);
        let num = |x: f64| (!x.is_nan()).then_some(x);
        let cnt = |x: Option<i64>| x.unwrap_or(0).max(0) as u64;
        for r in 0..b.num_rows() {
            let key = (
                node[r].clone(),
                uuid[r].clone(),
                kernel[r].clone(),
                shape[r].clone(),
            );
            units.insert(
                key,
                Unit {
                    gpu_name: name[r].clone(),
                    precision: precision[r].clone(),
                    newest_ns: newest[r],
                    rows: cnt(rows[r]),
                    arrivals: cnt(arrivals[r]),
                    w_runs: cnt(w_runs[r]),
                    w_wall_p99: num(w_wall_p99[r]),
                    w_gpu_p50: num(w_gpu_p50[r]),
                    w_clock_p50: num(w_clock_p50[r]),
                    w_norm_p50: num(w_norm_p50[r]),
                    w_event_runs: cnt(w_event_runs[r]),
                    w_event_p50: num(w_event_p50[r]),
                    w_fails: cnt(w_fails[r]),
                    w_throttle: w_throttle[r].unwrap_or(0) as u64,
                    w_hw_throttled: cnt(w_hw_throttled[r]),
                    w_max_tenants: w_max_tenants[r],
                    b_quiet_runs: cnt(b_quiet_runs[r]),
                    b_wall_p50: num(b_wall_p50[r]),
                    b_wall_p99: num(b_wall_p99[r]),
                    b_event_runs: cnt(b_event_runs[r]),
                    b_event_p50: num(b_event_p50[r]),
                },
            );
        }
        Ok(())
    })
    .await?;
    Ok(judge_units(
        a,
        plan,
        &units,
        scan_stats,
        newest_files,
        crate::rollup::DataSource::raw(),
    ))
}

/// The check from one summary per GPU, kernel and shape, whichever way they
/// were computed (the raw query above, or merged rollup sketches:
/// [`crate::rollup::fleet`]).
pub(crate) fn judge_units(
    a: &FleetArgs,
    plan: &Plan,
    units: &BTreeMap<UnitKey, Unit>,
    scan_stats: ScanStats,
    newest_files: &NewestFiles,
    source: crate::rollup::DataSource,
) -> FleetResult {
    let mut runs = RunTotals::default();
    for u in units.values() {
        runs.rows += u.rows;
        runs.arrivals += u.arrivals;
        runs.window_runs += u.w_runs;
    }
    let until = plan.window.end_ns;

    // Per unit: the schema's judgement on the window.
    struct M {
        finding: KernelFinding,
        norm_p50: Option<f64>,
        throttle: u64,
        newest: Option<i64>,
        peer_key: (String, String, String),
    }
    let mut ms: Vec<(UnitKey, M)> = Vec::new();
    for (key, u) in units {
        let finding = judge_unit(&key.2, &key.3, u, a);
        let norm_p50 = u.w_norm_p50.filter(|_| u.w_runs >= a.min_samples as u64);
        ms.push((
            key.clone(),
            M {
                finding,
                norm_p50,
                throttle: u.w_throttle,
                newest: u.newest_ns,
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
        let (s_wall, s_gpu, s_norm) = (
            PeerScale::of(&walls, floor),
            PeerScale::of(&gpus, floor),
            PeerScale::of(&norms, floor),
        );
        for &i in idxs {
            let m = &mut ms[i].1;
            let zw = s_wall.z(m.finding.wall_p99_ms);
            let zg = s_gpu.z(m.finding.gpu_p50_ms);
            let zn = s_norm.z(m.norm_p50);
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

    // A GPU probed in the window is judged on the kernels and shapes it ran
    // there: one with no counted run in the window (a kernel run only in
    // bursts, a shape from before a config change) has nothing to say
    // about it and must not make it `unknown`.
    let probed: std::collections::HashSet<(String, String)> = ms
        .iter()
        .filter(|(_, m)| m.finding.window_runs > 0)
        .map(|(k, _)| (k.0.clone(), k.1.clone()))
        .collect();
    let mut gpus: BTreeMap<(String, String), GpuVerdict> = BTreeMap::new();
    let mut newest: BTreeMap<(String, String), Option<i64>> = BTreeMap::new();
    let mut seen_in_window: BTreeMap<(String, String), bool> = BTreeMap::new();
    for (key, m) in ms {
        let name = m.peer_key.0.clone();
        let gk = (key.0.clone(), key.1.clone());
        let n = newest.entry(gk.clone()).or_insert(None);
        *n = (*n).max(m.newest);
        *seen_in_window.entry(gk.clone()).or_insert(false) |= m.finding.window_runs > 0;
        if m.finding.window_runs == 0 && probed.contains(&gk) {
            continue;
        }
        let g = gpus.entry(gk).or_insert_with(|| GpuVerdict {
            node: key.0.clone(),
            gpu_uuid: key.1.clone(),
            gpu_name: name,
            state: State::Healthy,
            newest: None,
            age_secs: None,
            verdict: Verdict::Healthy,
            contention: Contention::Ok,
            kernels: Vec::new(),
        });
        g.verdict = g.verdict.max(m.finding.verdict);
        g.contention = g.contention.max(m.finding.contention);
        g.kernels.push(m.finding);
    }
    let age = |ns: i64| (until.saturating_sub(ns)) as f64 / 1e9;
    for (k, g) in gpus.iter_mut() {
        let n = newest.get(k).copied().flatten();
        g.newest = n.map(ts_rfc3339);
        g.age_secs = n.map(age);
        g.state = if !seen_in_window.get(k).copied().unwrap_or(false) {
            State::Stale
        } else {
            match g.verdict {
                Verdict::Healthy => State::Healthy,
                Verdict::Unknown => State::Unknown,
                Verdict::Degraded => State::Degraded,
                Verdict::Unhealthy => State::Unhealthy,
            }
        };
    }
    // Nodes that wrote files in the listed partitions but no row in range.
    let nodes: std::collections::HashSet<String> = gpus
        .keys()
        .map(|(n, _)| layout::partition_value(n))
        .collect();
    for (node, &start) in newest_files {
        if !nodes.contains(node) {
            gpus.insert(
                (node.clone(), String::new()),
                GpuVerdict {
                    node: node.clone(),
                    gpu_uuid: String::new(),
                    gpu_name: String::new(),
                    state: State::Stale,
                    newest: Some(ts_rfc3339(start)),
                    age_secs: Some(age(start)),
                    verdict: Verdict::Unknown,
                    contention: Contention::Ok,
                    kernels: Vec::new(),
                },
            );
        }
    }
    let gpus: Vec<GpuVerdict> = gpus.into_values().collect();
    let mut summary = BTreeMap::new();
    for s in State::ALL {
        summary.insert(
            s.as_str().to_string(),
            gpus.iter().filter(|g| g.state == s).count(),
        );
    }
    for c in Contention::ALL {
        summary.insert(
            c.as_str().to_string(),
            gpus.iter().filter(|g| g.contention == c).count(),
        );
    }
    let missing = a.expect_gpus.map_or(0, |n| n.saturating_sub(gpus.len()));
    summary.insert("missing".to_string(), missing);
    let gate = Gate::decide(
        &gpus,
        missing,
        a.max_unknown,
        a.max_stale,
        a.max_degraded,
        scan_stats.files_skipped,
    );
    FleetResult {
        source,
        window_start: ts_rfc3339(plan.window.start_ns),
        window_end: ts_rfc3339(until),
        baseline_start: plan.baseline.map(|b| ts_rfc3339(b.start_ns)),
        baseline_end: plan.baseline.map(|b| ts_rfc3339(b.end_ns)),
        gpus,
        summary,
        scan: scan_stats,
        runs,
        gate,
    }
}
