//! Reading the window from the data, one [`unit::Unit`](super::unit) per GPU,
//! kernel and shape, and the peer comparison across GPUs of one model.

use std::collections::{BTreeMap, HashMap};

use datafusion::prelude::SessionContext;
use slicetrace_schema::{Contention, Reason};

use crate::output::fmt_num;
use crate::pred::{self, TENANTS_SQL};
use crate::scan::{self, ScanError};
use crate::stats::median_mad;

use super::unit::{judge_unit, p, robust_z, ts_rfc3339, Unit, UnitKey};
use super::{FleetArgs, FleetResult, GpuVerdict, KernelFinding, Verdict};

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
