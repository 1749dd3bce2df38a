//! The exit tail table: one of the consumers of the fan-out, with its own
//! bounded queue and its own loop ([`spawn`]). The loop owns whole-run HDR
//! histograms per GPU, kernel and tenant count, of arrival runs only, and
//! hands them back when it stops; `main` prints them.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use slicetrace_schema::{Kernel, ProbeRecord};
use tokio::sync::mpsc;

use crate::topology::Consumer;
use crate::topology::{task_queue, Msg};

/// The name of the exit summary's outlet.
pub const NAME: &str = "summary";

/// Starts the exit summary behind a queue of `queue_msgs` messages; its
/// loop returns the [`RunSummary`] when stopped.
pub fn spawn(queue_msgs: usize) -> Consumer<RunSummary> {
    let (input, rx) = task_queue(queue_msgs);
    Consumer::new(NAME, input, tokio::spawn(run(rx)))
}

async fn run(mut input: mpsc::Receiver<Msg>) -> RunSummary {
    let mut s = RunSummary::default();
    while let Some(m) = input.recv().await {
        match m {
            Msg::Probes(rows) => rows.iter().for_each(|r| s.record(r)),
            Msg::Health(_) | Msg::Event(_) => {}
            Msg::Flush(ack) => {
                let _ = ack.send(Ok(()));
            }
            Msg::Shutdown { ack, .. } => {
                let _ = ack.send(Ok(()));
                break;
            }
        }
    }
    s
}

/// Per-(GPU, kernel, tenant count) histograms of the whole run, for the exit
/// tail table: a run that spans quiet and contended periods shows each
/// occupancy level on its own line. Only arrival runs enter the quantiles.
#[derive(Debug, Default)]
pub struct RunSummary {
    accs: BTreeMap<SummaryKey, Acc>,
}

/// (GPU index, GPU UUID, kernel, tenant count).
type SummaryKey = (u32, String, Kernel, Option<u32>);

#[derive(Debug)]
struct Acc {
    h: [Histogram<u32>; 3],
    gpu_ms_sum: f64,
    first_ns: i64,
    last_ns: i64,
    all_runs: u64,
}

/// One line of the exit tail table.
#[derive(Debug, Clone, PartialEq)]
pub struct SummaryRow {
    /// GPU index.
    pub gpu_index: u32,
    /// GPU UUID.
    pub gpu_uuid: String,
    /// Kernel.
    pub kernel: Kernel,
    /// Other compute processes on the GPU (NVML), `None` when unknown.
    pub tenants: Option<u32>,
    /// Arrival runs counted in the quantiles.
    pub runs: u64,
    /// All runs, including burst runs that are not arrivals (left out of
    /// the quantiles: they measure the probe's own rhythm).
    pub all_runs: u64,
    /// (p50, p99) of gpu_ms, wall_ms, queue_ms.
    pub quantiles: [(f64, f64); 3],
    /// Sum of gpu_ms, ms (the probe's own GPU time).
    pub gpu_ms_sum: f64,
    /// First and last launch time, ns.
    pub span_ns: (i64, i64),
}

fn summary_hist() -> Histogram<u32> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3)
        .unwrap_or_else(|_| unreachable!("constant bounds"))
}

impl RunSummary {
    /// Adds one run.
    pub fn record(&mut self, r: &ProbeRecord) {
        let acc = self
            .accs
            .entry((r.gpu_index, r.gpu_uuid.clone(), r.kernel, r.tenants()))
            .or_insert_with(|| Acc {
                h: [summary_hist(), summary_hist(), summary_hist()],
                gpu_ms_sum: 0.0,
                first_ns: r.ts_ns,
                last_ns: r.ts_ns,
                all_runs: 0,
            });
        acc.all_runs += 1;
        acc.gpu_ms_sum += r.gpu_ms.unwrap_or(0.0);
        if !r.is_arrival() {
            return;
        }
        acc.first_ns = acc.first_ns.min(r.ts_ns);
        acc.last_ns = acc.last_ns.max(r.ts_ns);
        let h = &mut acc.h;
        let us = crate::consumers::health::us;
        if let Some(g) = r.gpu_ms {
            let _ = h[0].record(us(g));
        }
        let _ = h[1].record(us(r.wall_ms));
        if let Some(q) = r.queue_ms {
            let _ = h[2].record(us(q));
        }
    }

    /// The table rows, ordered by GPU and kernel.
    pub fn rows(&self) -> Vec<SummaryRow> {
        self.accs
            .iter()
            .map(|((idx, uuid, kernel, tenants), acc)| {
                let h = &acc.h;
                let q = |h: &Histogram<u32>| {
                    (
                        h.value_at_quantile(0.5) as f64 / 1000.0,
                        h.value_at_quantile(0.99) as f64 / 1000.0,
                    )
                };
                SummaryRow {
                    gpu_index: *idx,
                    gpu_uuid: uuid.clone(),
                    kernel: *kernel,
                    tenants: *tenants,
                    runs: h[1].len(),
                    all_runs: acc.all_runs,
                    quantiles: [q(&h[0]), q(&h[1]), q(&h[2])],
                    gpu_ms_sum: acc.gpu_ms_sum,
                    span_ns: (acc.first_ns, acc.last_ns),
                }
            })
            .collect()
    }
}

/// The exit tail table as JSON rows (`--summary-json`).
pub fn summary_json_rows(rows: &[SummaryRow]) -> Vec<serde_json::Value> {
    rows.iter()
        .map(|r| {
            serde_json::json!({
                "gpu_index": r.gpu_index, "gpu_uuid": r.gpu_uuid, "kernel": r.kernel,
                "tenants": r.tenants, "runs": r.runs,
                "gpu_ms_p50": r.quantiles[0].0, "gpu_ms_p99": r.quantiles[0].1,
                "wall_ms_p50": r.quantiles[1].0, "wall_ms_p99": r.quantiles[1].1,
                "queue_ms_p50": r.quantiles[2].0, "queue_ms_p99": r.quantiles[2].1,
                "gpu_ms_sum": r.gpu_ms_sum, "first_ns": r.span_ns.0, "last_ns": r.span_ns.1,
            })
        })
        .collect()
}

/// The exit tail table `slicetrace-agent run` prints.
pub fn tail_table(node: &str, rows: &[SummaryRow]) -> String {
    let mut t = comfy_table::Table::new();
    t.load_preset(comfy_table::presets::UTF8_FULL_CONDENSED);
    t.set_header(vec![
        "gpu",
        "uuid",
        "kernel",
        "tenants",
        "runs",
        "gpu_ms p50",
        "gpu_ms p99",
        "wall_ms p50",
        "wall_ms p99",
        "queue_ms p50",
        "queue_ms p99",
    ]);
    for r in rows {
        let [g, w, q] = r.quantiles;
        let f = |x: f64| format!("{x:.4}");
        t.add_row(vec![
            r.gpu_index.to_string(),
            r.gpu_uuid.clone(),
            r.kernel.to_string(),
            r.tenants.map_or("-".into(), |t| t.to_string()),
            if r.runs == r.all_runs {
                r.runs.to_string()
            } else {
                format!("{} of {}", r.runs, r.all_runs)
            },
            f(g.0),
            f(g.1),
            f(w.0),
            f(w.1),
            f(q.0),
            f(q.1),
        ]);
    }
    format!("slicetrace tail table, node {node} (arrival runs only: burst runs after the first are left out; gpu = CUDA events / CPU compute; wall = host clock; queue = wall - gpu; tenants = other compute processes on the GPU)\n{t}")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rows carry the typed kernel, in kernel order; its name (what the
    /// tail table and `--summary-json` print) is the one it had as a string.
    #[test]
    fn rows_carry_the_typed_kernel_in_kernel_order() {
        let mut s = RunSummary::default();
        for kernel in [Kernel::Gemm, Kernel::Fft] {
            s.record(&ProbeRecord {
                kernel,
                arrival: Some(true),
                wall_ms: 1.0,
                ..Default::default()
            });
        }
        let rows = s.rows();
        let kernels: Vec<Kernel> = rows.iter().map(|r| r.kernel).collect();
        assert_eq!(kernels, [Kernel::Fft, Kernel::Gemm]);
        assert_eq!(rows[1].kernel.to_string(), "gemm");
        assert_eq!(
            serde_json::json!({ "kernel": rows[1].kernel }),
            serde_json::json!({ "kernel": "gemm" })
        );
        assert!(rows.iter().all(|r| r.runs == 1 && r.all_runs == 1));
    }
}
