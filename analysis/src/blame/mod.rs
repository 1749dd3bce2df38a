//! `slicetrace blame`: which tenant made the probe wait, per GPU.
//!
//! The rows are the arrival runs with `busy_tenants` known
//! ([`crate::tenancy`]). The model (also in `docs/blame-whatif.md` and
//! `slicetrace blame --help`):
//!
//! * Time-slicing is round-robin between the busy contexts, with one slice
//!   `s` per context, so an arrival beside `K` busy contexts waits a base
//!   `q0` (launch and path, measured with no busy tenant) plus about
//!   `U(0, K·s)`: the excess wait `x_i = (w_i − q0)⁺` grows linearly with
//!   `K` and each busy context adds the same expected amount.
//! * Under that linear model the Shapley split of `x_i` between the `K_i`
//!   busy contexts is equal: tenant `t`, with `c_t,i` busy contexts in
//!   arrival `i`, is charged `x_i · c_t,i / K_i`. Its attributed share is
//!   `Σ_i x_i·c_t,i/K_i ÷ Σ_i x_i` over the GPU's arrivals; the excess of
//!   arrivals with no busy tenant is left unattributed (its own line).
//! * The counterfactual wait of arrival `i` without `t` removes `t`'s part:
//!   `w'_i = w_i − x_i · c_t,i / K_i`, and the counterfactual p99 is that
//!   distribution's p99, with a 95 % bootstrap interval over the arrivals
//!   (`q0` held fixed).
//! * `q0` is the p50 of the waits with no busy tenant, per kernel (the
//!   launch path differs by kernel); without such arrivals, the p1 of the
//!   kernel's waits (said in the output).
//!
//! A tenant that holds a context but never runs work is resident, not busy:
//! it appears (from `pods`, else `processes`) with busy share 0 and
//! attributed share 0. NVML's per-process samples cover one driver sample
//! period, much longer than a wait of a few ms, so
//! "busy around the run" means busy somewhere in that period: a tenant with
//! short bursts is over-counted as busy, and its share is shared out with
//! the others in the arrivals where it was in fact idle.

use std::collections::{BTreeMap, BTreeSet};

use rand::SeedableRng;
use serde::Serialize;

use crate::output::{fmt_num, Cell, Format, Table};
use crate::tenancy::{interval95, quantile, resample, Arrival, TenancyError, BOOTSTRAP_REPS, SEED};

/// Options of `blame`.
#[derive(Debug, Clone, Default)]
pub struct BlameOptions {
    /// Only this GPU.
    pub gpu: Option<String>,
}

/// One tenant's line.
#[derive(Debug, Clone, Serialize)]
pub struct TenantBlame {
    /// GPU UUID.
    pub gpu_uuid: String,
    /// Node.
    pub node: String,
    /// Rank by attributed share, from 1.
    pub rank: usize,
    /// `namespace/pod`, or `pid:<pid>`.
    pub tenant: String,
    /// Arrivals of this GPU with tenant data.
    pub arrivals: usize,
    /// Share of those arrivals with the tenant busy.
    pub busy_share: f64,
    /// Mean of the tenant's largest SM share in the arrivals where it was busy.
    pub sm_pct_when_busy: Option<f64>,
    /// Wait p50 / p99 of the arrivals with the tenant busy, ms.
    pub wait_p50_busy_ms: Option<f64>,
    /// See `wait_p50_busy_ms`.
    pub wait_p99_busy_ms: Option<f64>,
    /// Wait p50 / p99 of the arrivals without it busy, ms.
    pub wait_p50_not_busy_ms: Option<f64>,
    /// See `wait_p50_not_busy_ms`.
    pub wait_p99_not_busy_ms: Option<f64>,
    /// Attributed share of the GPU's total excess wait (see the module doc).
    pub attributed_share: f64,
    /// Measured wait p99 of all the GPU's arrivals, ms.
    pub wait_p99_ms: Option<f64>,
    /// Counterfactual wait p99 without this tenant, ms.
    pub cf_wait_p99_ms: Option<f64>,
    /// 95 % bootstrap interval of `cf_wait_p99_ms`.
    pub cf_wait_p99_lo_ms: Option<f64>,
    /// See `cf_wait_p99_lo_ms`.
    pub cf_wait_p99_hi_ms: Option<f64>,
}

/// One GPU's result.
#[derive(Debug, Clone, Serialize)]
pub struct GpuBlame {
    /// GPU UUID.
    pub gpu_uuid: String,
    /// Node.
    pub node: String,
    /// Arrivals with tenant data (and a wait).
    pub arrivals: usize,
    /// `q0` per kernel, ms.
    pub q0_ms: BTreeMap<String, f64>,
    /// Kernels whose `q0` is a p1 because no arrival had zero busy tenants.
    pub q0_fallback: Vec<String>,
    /// Σ of the excess waits, ms.
    pub excess_wait_ms: f64,
    /// Share of the excess wait in arrivals with no busy tenant.
    pub unattributed_share: f64,
    /// The tenants, ranked.
    pub tenants: Vec<TenantBlame>,
}

/// Runs `blame` on the arrival rows.
pub fn blame(
    rows: &[Arrival],
    location: &str,
    opts: &BlameOptions,
) -> Result<Vec<GpuBlame>, TenancyError> {
    if rows.is_empty() {
        return Err(TenancyError::NoArrivals(location.to_string()));
    }
    let known: Vec<&Arrival> = rows
        .iter()
        .filter(|r| r.busy.is_some() && !r.wait_ms.is_nan())
        .collect();
    if known.is_empty() {
        return Err(TenancyError::NoTenantData {
            location: location.to_string(),
            what: format!(
                "none of the {} arrival rows has busy_tenants and queue_ms (NVML per-process \
                 utilisation, schema version 4; null on the CPU backend or without NVML)",
                rows.len()
            ),
        });
    }
    let owned: Vec<Arrival> = known.into_iter().cloned().collect();
    let gpus = crate::tenancy::gpus(&owned, opts.gpu.as_deref())?;
    Ok(gpus
        .iter()
        .map(|g| {
            let sub: Vec<&Arrival> = owned.iter().filter(|r| &r.gpu == g).collect();
            one_gpu(g, &sub)
        })
        .collect())
}

fn one_gpu(gpu: &str, rows: &[&Arrival]) -> GpuBlame {
    let node = rows.first().map(|r| r.node.clone()).unwrap_or_default();
    // q0 per kernel.
    let kernels: BTreeSet<&str> = rows.iter().map(|r| r.kernel.as_str()).collect();
    let mut q0_ms = BTreeMap::new();
    let mut q0_fallback = Vec::new();
    for k in kernels {
        let idle: Vec<f64> = rows
            .iter()
            .filter(|r| r.kernel == k && r.busy.as_ref().is_some_and(Vec::is_empty))
            .map(|r| r.wait_ms)
            .collect();
        let q = match quantile(&idle, 0.5) {
            Some(q) => q,
            None => {
                q0_fallback.push(k.to_string());
                let all: Vec<f64> = rows
                    .iter()
                    .filter(|r| r.kernel == k)
                    .map(|r| r.wait_ms)
                    .collect();
                quantile(&all, 0.01).unwrap_or(0.0)
            }
        };
        q0_ms.insert(k.to_string(), q);
    }
    let waits: Vec<f64> = rows.iter().map(|r| r.wait_ms).collect();
    let excess: Vec<f64> = rows
        .iter()
        .map(|r| (r.wait_ms - q0_ms.get(&r.kernel).copied().unwrap_or(0.0)).max(0.0))
        .collect();
    let k_i: Vec<usize> = rows
        .iter()
        .map(|r| r.busy.as_ref().map_or(0, Vec::len))
        .collect();
    // + 0.0: an empty float sum is −0.0.
    let total: f64 = excess.iter().sum::<f64>() + 0.0;
    let unattributed: f64 = excess
        .iter()
        .zip(&k_i)
        .filter(|(_, &k)| k == 0)
        .map(|(x, _)| x)
        .sum::<f64>()
        + 0.0;

    // Every tenant: busy somewhere, or resident.
    let mut names: BTreeSet<String> = BTreeSet::new();
    for r in rows {
        for b in r.busy.iter().flatten() {
            names.insert(b.tenant.clone());
        }
        for t in &r.residents {
            names.insert(t.clone());
        }
    }
    let wait_p99 = quantile(&waits, 0.99);
    let n = rows.len();
    let mut tenants: Vec<TenantBlame> = names
        .into_iter()
        .enumerate()
        .map(|(ti, t)| {
            // Busy contexts of t in each arrival.
            let c: Vec<usize> = rows
                .iter()
                .map(|r| r.busy.iter().flatten().filter(|b| b.tenant == t).count())
                .collect();
            let sm: Vec<f64> = rows
                .iter()
                .filter_map(|r| {
                    r.busy
                        .iter()
                        .flatten()
                        .filter(|b| b.tenant == t)
                        .filter_map(|b| b.sm_pct)
                        .max()
                })
                .map(f64::from)
                .collect();
            let busy_w: Vec<f64> = (0..n).filter(|&i| c[i] > 0).map(|i| waits[i]).collect();
            let idle_w: Vec<f64> = (0..n).filter(|&i| c[i] == 0).map(|i| waits[i]).collect();
            let part = |i: usize| {
                if k_i[i] == 0 {
                    0.0
                } else {
                    excess[i] * c[i] as f64 / k_i[i] as f64
                }
            };
            let charged: f64 = (0..n).map(part).sum::<f64>() + 0.0;
            let cf: Vec<f64> = (0..n).map(|i| waits[i] - part(i)).collect();
            let mut rng = rand::rngs::SmallRng::seed_from_u64(SEED ^ ti as u64);
            let mut reps: Vec<f64> = (0..BOOTSTRAP_REPS)
                .filter_map(|_| {
                    let idx = resample(&mut rng, n);
                    let v: Vec<f64> = idx.iter().map(|&i| cf[i]).collect();
                    quantile(&v, 0.99)
                })
                .collect();
            let (lo, hi) = interval95(&mut reps);
            TenantBlame {
                gpu_uuid: gpu.to_string(),
                node: node.clone(),
                rank: 0,
                tenant: t.clone(),
                arrivals: n,
                busy_share: busy_w.len() as f64 / n as f64,
                sm_pct_when_busy: (!sm.is_empty())
                    .then(|| sm.iter().sum::<f64>() / sm.len() as f64),
                wait_p50_busy_ms: quantile(&busy_w, 0.5),
                wait_p99_busy_ms: quantile(&busy_w, 0.99),
                wait_p50_not_busy_ms: quantile(&idle_w, 0.5),
                wait_p99_not_busy_ms: quantile(&idle_w, 0.99),
                attributed_share: if total > 0.0 { charged / total } else { 0.0 },
                wait_p99_ms: wait_p99,
                cf_wait_p99_ms: quantile(&cf, 0.99),
                cf_wait_p99_lo_ms: lo,
                cf_wait_p99_hi_ms: hi,
            }
        })
        .collect();
    tenants.sort_by(|a, b| {
        b.attributed_share
            .total_cmp(&a.attributed_share)
            .then(b.busy_share.total_cmp(&a.busy_share))
            .then(a.tenant.cmp(&b.tenant))
    });
    for (i, t) in tenants.iter_mut().enumerate() {
        t.rank = i + 1;
    }
    GpuBlame {
        gpu_uuid: gpu.to_string(),
        node,
        arrivals: n,
        q0_ms,
        q0_fallback,
        excess_wait_ms: total,
        unattributed_share: if total > 0.0 {
            unattributed / total
        } else {
            0.0
        },
        tenants,
    }
}

/// Renders the result: one table per GPU with a heading line (table), or
/// one flat JSON object per GPU and tenant (json, csv).
pub fn render(res: &[GpuBlame], format: Format) -> String {
    if format != Format::Table {
        let mut t = Table::new([
            "gpu_uuid",
            "node",
            "rank",
            "tenant",
            "arrivals",
            "busy_share",
            "sm_pct_when_busy",
            "wait_p50_busy_ms",
            "wait_p99_busy_ms",
            "wait_p50_not_busy_ms",
            "wait_p99_not_busy_ms",
            "attributed_share",
            "wait_p99_ms",
            "cf_wait_p99_ms",
            "cf_wait_p99_lo_ms",
            "cf_wait_p99_hi_ms",
            "unattributed_share",
            "q0_ms",
        ]);
        for g in res {
            let q0 = g
                .q0_ms
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(",");
            for r in &g.tenants {
                t.rows.push(vec![
                    Cell::Str(r.gpu_uuid.clone()),
                    Cell::Str(r.node.clone()),
                    Cell::Int(r.rank as u64),
                    Cell::Str(r.tenant.clone()),
                    Cell::Int(r.arrivals as u64),
                    Cell::Num(Some(r.busy_share)),
                    Cell::Num(r.sm_pct_when_busy),
                    Cell::Num(r.wait_p50_busy_ms),
                    Cell::Num(r.wait_p99_busy_ms),
                    Cell::Num(r.wait_p50_not_busy_ms),
                    Cell::Num(r.wait_p99_not_busy_ms),
                    Cell::Num(Some(r.attributed_share)),
                    Cell::Num(r.wait_p99_ms),
                    Cell::Num(r.cf_wait_p99_ms),
                    Cell::Num(r.cf_wait_p99_lo_ms),
                    Cell::Num(r.cf_wait_p99_hi_ms),
                    Cell::Num(Some(g.unattributed_share)),
                    Cell::Str(q0.clone()),
                ]);
            }
        }
        return t.render(format);
    }
    let mut out = Vec::new();
    for g in res {
        let q0 = g
            .q0_ms
            .iter()
            .map(|(k, v)| format!("{k} {} ms", fmt_num(*v)))
            .collect::<Vec<_>>()
            .join(", ");
        let mut head = format!(
            "GPU {} on {}: {} arrivals with busy-tenant data; base wait q0: {q0}; total excess wait {} ms",
            g.gpu_uuid,
            g.node,
            g.arrivals,
            fmt_num(g.excess_wait_ms)
        );
        if !g.q0_fallback.is_empty() {
            head.push_str(&format!(
                "\n  no arrival with zero busy tenants for {}: q0 is their wait p1",
                g.q0_fallback.join(", ")
            ));
        }
        let mut t = Table::new([
            "rank",
            "tenant",
            "busy share",
            "SM % busy",
            "wait p50 busy",
            "wait p99 busy",
            "wait p50 not busy",
            "wait p99 not busy",
            "attributed share",
            "p99 without it",
            "95 % interval",
        ]);
        for r in &g.tenants {
            t.rows.push(vec![
                Cell::Int(r.rank as u64),
                Cell::Str(r.tenant.clone()),
                Cell::Num(Some(r.busy_share)),
                Cell::Num(r.sm_pct_when_busy),
                Cell::Num(r.wait_p50_busy_ms),
                Cell::Num(r.wait_p99_busy_ms),
                Cell::Num(r.wait_p50_not_busy_ms),
                Cell::Num(r.wait_p99_not_busy_ms),
                Cell::Num(Some(r.attributed_share)),
                Cell::Num(r.cf_wait_p99_ms),
                Cell::Str(match (r.cf_wait_p99_lo_ms, r.cf_wait_p99_hi_ms) {
                    (Some(a), Some(b)) => format!("{}–{}", fmt_num(a), fmt_num(b)),
                    _ => "-".into(),
                }),
            ]);
        }
        t.rows.push(vec![
            Cell::Str(String::new()),
            Cell::Str("(no busy tenant)".into()),
            Cell::Str(String::new()),
            Cell::Str(String::new()),
            Cell::Str(String::new()),
            Cell::Str(String::new()),
            Cell::Str(String::new()),
            Cell::Str(String::new()),
            Cell::Num(Some(g.unattributed_share)),
            Cell::Str(String::new()),
            Cell::Str(String::new()),
        ]);
        let p99 = g.tenants.first().and_then(|t| t.wait_p99_ms);
        out.push(format!(
            "{head}\n{}\nwaits (queue_ms) in ms; measured wait p99 {}; shares are of the excess wait above q0, \
             split equally between the busy contexts of each arrival",
            t.to_comfy(),
            p99.map_or("-".into(), fmt_num)
        ));
    }
    out.join("\n\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tenancy::Busy;

    fn row(wait: f64, busy: &[&str], residents: &[&str]) -> Arrival {
        Arrival {
            gpu: "GPU-1".into(),
            node: "n".into(),
            kernel: "fft".into(),
            wait_ms: wait,
            gpu_ms: 0.1,
            wall_ms: wait + 0.1,
            busy: Some(busy.iter().map(|b| Busy::parse(b)).collect()),
            busy_count: Some(busy.len() as u32),
            gpu_processes: Some(residents.len() as u32),
            residents: residents.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn equal_split_and_idle_resident_gets_nothing() {
        // q0 = 1 (the p50 of the idle arrivals); excess 4 split 2/2, excess
        // 2 all to a.
        let rows = vec![
            row(1.0, &[], &["a", "b", "c"]),
            row(1.0, &[], &["a", "b", "c"]),
            row(5.0, &["a=90", "b=50"], &["a", "b", "c"]),
            row(3.0, &["a=80"], &["a", "b", "c"]),
        ];
        let r = blame(&rows, "x", &BlameOptions::default()).expect("blame");
        let g = &r[0];
        assert_eq!(g.q0_ms["fft"], 1.0);
        assert!((g.excess_wait_ms - 6.0).abs() < 1e-12);
        let by: BTreeMap<&str, &TenantBlame> =
            g.tenants.iter().map(|t| (t.tenant.as_str(), t)).collect();
        assert!((by["a"].attributed_share - 4.0 / 6.0).abs() < 1e-12);
        assert!((by["b"].attributed_share - 2.0 / 6.0).abs() < 1e-12);
        assert_eq!(by["c"].attributed_share, 0.0);
        assert_eq!(by["c"].busy_share, 0.0);
        assert_eq!(by["a"].rank, 1);
        assert_eq!(by["c"].rank, 3);
        // Without a: waits 1, 1, 3, 1.
        let want = quantile(&[1.0, 1.0, 3.0, 1.0], 0.99);
        assert_eq!(by["a"].cf_wait_p99_ms, want);
        assert_eq!(by["a"].sm_pct_when_busy, Some(85.0));
    }

    #[test]
    fn a_pod_with_two_busy_processes_is_charged_twice() {
        // q0 = 1; the excess 3 of the last arrival has 3 busy contexts, two
        // of them ns/p's.
        let rows = vec![
            row(1.0, &[], &["ns/p", "ns/q"]),
            row(4.0, &["ns/p=10", "ns/p=20", "ns/q=30"], &["ns/p", "ns/q"]),
        ];
        let g = &blame(&rows, "x", &BlameOptions::default()).expect("blame")[0];
        let p = g.tenants.iter().find(|t| t.tenant == "ns/p").expect("p");
        assert!((p.attributed_share - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(p.sm_pct_when_busy, Some(20.0));
        // Without ns/p: 4 − 3·2/3 = 2.
        assert_eq!(p.cf_wait_p99_ms, quantile(&[1.0, 2.0], 0.99));
    }

    #[test]
    fn no_busy_column_is_no_tenant_data() {
        let mut r = row(1.0, &[], &[]);
        r.busy = None;
        let e = blame(&[r], "d", &BlameOptions::default()).expect_err("no data");
        assert!(e.to_string().starts_with("no tenant data in d"), "{e}");
    }
}
