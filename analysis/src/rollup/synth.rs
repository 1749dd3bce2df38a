//! Rollups generated directly, without raw rows, for the fleet benchmarks
//! (`slicetrace gen-rollups`): `nodes` × `gpus_per_node` GPUs, two kernels
//! each, over `span_secs` ending at `end_ns`, as the agent writes them
//! (minute rows, one file per node every `file_secs`) or as compaction
//! leaves them (`hours`: hour rows, one file per node and date).
//!
//! Each row's sketches get `draws` values from a log-normal clock (σ 0.1)
//! around the kernel's base time, each added with the count that brings
//! the row to `arrivals_per_min` (per GPU, split across the kernels): the
//! sketches hold about as many bins as a real minute of one GPU. A GPU's
//! tenant count changes every 10 minutes (0 to 3); tenants add a wait of
//! up to 2 ms each to `wall_ms` and `queue_ms`, never to `gpu_ms`.

use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use slicetrace_schema::rollup::{bucket_start, HOUR_SECS, MINUTE_SECS};
use slicetrace_schema::{layout, RollupKey, RollupRecord};

use super::compact::{write_atomic, DAY_SECS, HOUR_TAG};
use super::RollupError;

/// What to generate.
#[derive(Debug, Clone)]
pub struct RollupSynth {
    /// Nodes.
    pub nodes: usize,
    /// GPUs per node.
    pub gpus_per_node: usize,
    /// End of the data, ns (exclusive).
    pub end_ns: i64,
    /// Length, seconds.
    pub span_secs: u64,
    /// Hour rows (compacted) instead of minute rows.
    pub hours: bool,
    /// Seconds per minute-rows file.
    pub file_secs: u64,
    /// Arrivals per minute per GPU.
    pub arrivals_per_min: u64,
    /// Values drawn per sketch.
    pub draws: u32,
    /// Seed.
    pub seed: u64,
    /// Writer threads.
    pub threads: usize,
}

fn normal(rng: &mut StdRng) -> f64 {
    let u1: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
    let u2: f64 = rng.random::<f64>();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

fn row(
    rng: &mut StdRng,
    s: &RollupSynth,
    node: &str,
    gpu: usize,
    kernel: &str,
    bucket_ns: i64,
    period_s: u32,
) -> RollupRecord {
    let tenants = ((bucket_ns / 600_000_000_000) as usize + gpu * 7 + node.len()) % 4;
    let key = RollupKey {
        bucket_ns,
        node: node.to_string(),
        gpu_uuid: format!("GPU-{node}-{gpu}"),
        kernel: kernel.to_string(),
        shape: if kernel == "fft" {
            "c2c n=4096 batch=8"
        } else {
            "n=1024"
        }
        .to_string(),
        tenants: Some(tenants as u32),
        busy_count: Some(tenants as u32),
    };
    let mut r = RollupRecord::empty(key, period_s);
    let minutes = u64::from(period_s / MINUTE_SECS).max(1);
    let arrivals = (s.arrivals_per_min / 2).max(1) * minutes;
    let draws = u64::from(s.draws.max(1)).min(arrivals);
    let per = arrivals / draws;
    let base = if kernel == "fft" { 0.45 } else { 1.8 };
    let clock = 1980.0;
    r.gpu_index = gpu as u32;
    r.gpu_name = Some("NVIDIA H100 80GB HBM3".into());
    r.precision = "fp32".into();
    r.first_ts_ns = bucket_ns;
    r.last_ts_ns = bucket_ns + i64::from(period_s) * 1_000_000_000 - 1;
    r.runs = arrivals;
    r.arrivals = arrivals;
    r.sm_clock_mhz_sum = clock * arrivals as f64;
    r.sm_clock_runs = arrivals;
    r.throttle_reasons = Some(0);
    for _ in 0..draws {
        let g = base * (0.1 * normal(rng)).exp();
        let wait = 2.0 * tenants as f64 * rng.random::<f64>();
        let q = 0.02 + wait;
        r.wall_ms.add_with_count(g + q, per);
        r.gpu_ms.add_with_count(g, per);
        r.queue_ms.add_with_count(q, per);
        r.mcycles.add_with_count(g * clock / 1000.0, per);
        r.event_mcycles.add_with_count(g * clock / 1000.0, per);
    }
    r
}

/// Writes the rollups of `s` under `out/rollups/`. Returns (files, rows).
pub fn generate(out: &Path, s: &RollupSynth) -> Result<(usize, u64), RollupError> {
    let period: u32 = if s.hours { HOUR_SECS } else { MINUTE_SECS };
    let p_ns = i64::from(period) * 1_000_000_000;
    let end = bucket_start(s.end_ns, period);
    let span_ns = i64::try_from(s.span_secs).unwrap_or(i64::MAX / 2) * 1_000_000_000;
    let start = bucket_start(end - span_ns, period);
    let file_ns = i64::try_from(s.file_secs.max(60)).unwrap_or(300) * 1_000_000_000;
    let day_ns = i64::from(DAY_SECS) * 1_000_000_000;
    let next = AtomicUsize::new(0);
    let files = AtomicUsize::new(0);
    let rows = AtomicU64::new(0);
    let err = std::sync::Mutex::new(None);
    std::thread::scope(|sc| {
        for _ in 0..s.threads.max(1) {
            sc.spawn(|| loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= s.nodes {
                    break;
                }
                let node = format!("node-{n:05}");
                let mut rng = StdRng::seed_from_u64(s.seed ^ (n as u64).wrapping_mul(0x9e37_79b9));
                let mut t = start;
                while t < end {
                    // A minute file never spans two hours (as the agent's).
                    let f_end = if s.hours {
                        (bucket_start(t, DAY_SECS) + day_ns).min(end)
                    } else {
                        (t + file_ns)
                            .min(bucket_start(t, HOUR_SECS) + i64::from(HOUR_SECS) * 1_000_000_000)
                            .min(end)
                    };
                    let mut rs = Vec::new();
                    let mut b = t;
                    while b < f_end {
                        for g in 0..s.gpus_per_node {
                            for k in ["fft", "gemm"] {
                                rs.push(row(&mut rng, s, &node, g, k, b, period));
                            }
                        }
                        b += p_ns;
                    }
                    let dir = out
                        .join(layout::ROLLUPS)
                        .join(layout::date_dir(&layout::date_value(t)))
                        .join(layout::node_dir(&node));
                    let name = if s.hours {
                        let start =
                            chrono::DateTime::from_timestamp_nanos(bucket_start(t, DAY_SECS))
                                .format("%Y%m%dT%H%M%SZ");
                        format!(
                            "{}{start}-{HOUR_TAG}{}",
                            layout::FILE_PREFIX,
                            layout::FILE_SUFFIX
                        )
                    } else {
                        layout::file_name(t, "synth")
                    };
                    match write_atomic(&dir, &name, &rs, &[], "slicetrace gen-rollups") {
                        Ok(_) => {
                            files.fetch_add(1, Ordering::Relaxed);
                            rows.fetch_add(rs.len() as u64, Ordering::Relaxed);
                        }
                        Err(e) => {
                            if let Ok(mut g) = err.lock() {
                                g.get_or_insert(e);
                            }
                            next.store(s.nodes, Ordering::Relaxed);
                            return;
                        }
                    }
                    t = f_end;
                }
            });
        }
    });
    if let Some(e) = err.into_inner().ok().flatten() {
        return Err(e);
    }
    Ok((files.into_inner(), rows.into_inner()))
}
