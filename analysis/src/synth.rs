//! Synthetic `probes` data with known shape, for the tests and the benchmark
//! (`slicetrace gen-synthetic`). Files are written exactly as the agent
//! writes them: Hive layout `probes/date=YYYY-MM-DD/node=NAME/part-<start>-<id>.parquet`,
//! zstd, with the schema version and table name in the footer.
//!
//! The model follows what the H100 showed: `gpu_ms` is a kernel constant
//! times lognormal noise (σ = 0.05), scaled up on a deliberately slow or
//! throttled node; `queue_ms` is a small launch overhead plus, when `k`
//! tenants share the GPU, a wait that is uniform on `[0, 2k]` ms with
//! probability `k/(k+1)` (a random arrival into a round of 2 ms time slices).
//! Occupancy cycles through 0, 1 and 3 tenants in equal time phases when
//! `tenant_phases` is on.
//!
//! By default every run is an arrival (`arrival = true`, `burst_seq = 0`),
//! as in the agent's Poisson mode, and kernels alternate. With
//! `burst_runs = N > 1` the runs come in bursts of N per kernel (an FFT burst,
//! then a GEMM burst): the first run of a burst is an arrival, the others
//! (`arrival = false`) follow the probe's own previous run and, beside
//! tenants, wait about a full round of slices (`2k` ms), as the H100 showed.

use std::fs;
use std::path::{Path, PathBuf};

use arrow::record_batch::RecordBatch;
use parquet::arrow::ArrowWriter;
use parquet::file::properties::{WriterProperties, DEFAULT_MAX_ROW_GROUP_ROW_COUNT};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use slicetrace_schema::precision::{round_ms, round_rel};
use slicetrace_schema::rollup::{bucket_start, HOUR_SECS, MINUTE_SECS};
use slicetrace_schema::{
    layout, probes_batch, probes_schema, rollups_batch, rollups_schema, writer_properties, Backend,
    DeviceFields, Kernel, ProbeRecord, Rollup, RollupRecord,
};

/// Errors raised while generating data.
#[derive(Debug, thiserror::Error)]
pub enum SynthError {
    /// Writing a file failed.
    #[error("failed to write {path}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Encoding Parquet failed.
    #[error("failed to encode {path}")]
    Parquet {
        /// The file.
        path: String,
        /// The cause.
        #[source]
        source: parquet::errors::ParquetError,
    },
    /// Building the Arrow batch failed.
    #[error("failed to build a probes batch")]
    Schema(#[source] slicetrace_schema::SchemaError),
}

/// What to generate.
#[derive(Debug, Clone)]
pub struct SynthSpec {
    /// Total rows (split evenly over nodes).
    pub rows: u64,
    /// Number of nodes, named `node-00`, `node-01`, ...
    pub nodes: usize,
    /// First timestamp, ns since epoch.
    pub start_ns: i64,
    /// Time span covered by each node's runs, seconds.
    pub span_secs: u64,
    /// RNG seed.
    pub seed: u64,
    /// Cycle occupancy through 0, 1 and 3 tenants; otherwise always 0.
    pub tenant_phases: bool,
    /// A node whose GPU is uniformly slower (slow silicon, same clocks).
    pub slow_node: Option<String>,
    /// A node whose SM clock is throttled (slower at lower clocks).
    pub throttled_node: Option<String>,
    /// A node whose correctness checks fail now and then.
    pub faulty_node: Option<String>,
    /// Slowdown factor of `slow_node` and `throttled_node`.
    pub slow_factor: f64,
    /// Rows per Parquet file at most.
    pub rows_per_file: usize,
    /// Runs per burst (at least 1; 1 makes every run an arrival).
    pub burst_runs: u32,
}

impl Default for SynthSpec {
    fn default() -> Self {
        SynthSpec {
            rows: 10_000,
            nodes: 3,
            // 2026-01-01T00:00:00Z
            start_ns: 1_767_225_600_000_000_000,
            span_secs: 2 * 86_400,
            seed: 1,
            tenant_phases: true,
            slow_node: None,
            throttled_node: None,
            faulty_node: None,
            slow_factor: 1.6,
            rows_per_file: 200_000,
            burst_runs: 1,
        }
    }
}

/// The name of node `i`.
pub fn node_name(i: usize) -> String {
    format!("node-{i:02}")
}

/// Standard normal by Box–Muller.
fn normal(rng: &mut StdRng) -> f64 {
    let u1: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
    let u2: f64 = rng.random::<f64>();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

const NOMINAL_CLOCK_MHZ: u32 = 1980;

/// Generates the rows of one node, in time order.
pub fn node_rows(spec: &SynthSpec, node_idx: usize, rows: u64) -> Vec<ProbeRecord> {
    NodeGen::new(spec, node_idx, rows).collect()
}

/// The runs of one node, one at a time, in time order: what
/// [`node_rows`] collects and [`generate`] streams into files without
/// holding a node's rows in memory. The same seed gives the same rows.
pub struct NodeGen<'a> {
    spec: &'a SynthSpec,
    rng: StdRng,
    /// The FFT and GEMM run templates of this node, with their base times.
    bases: [(ProbeRecord, f64); 2],
    slow: bool,
    throttled: bool,
    faulty: bool,
    span_ns: i64,
    step: i64,
    i: u64,
    rows: u64,
}

impl<'a> NodeGen<'a> {
    /// The generator of node `node_idx`'s `rows` runs.
    pub fn new(spec: &'a SynthSpec, node_idx: usize, rows: u64) -> Self {
        let node = node_name(node_idx);
        let uuid = format!("GPU-{:08x}-0000-4000-8000-{:012x}", node_idx, spec.seed);
        let span_ns = spec.span_secs as i64 * 1_000_000_000;
        NodeGen {
            spec,
            rng: StdRng::seed_from_u64(
                spec.seed
                    .wrapping_mul(1_000_003)
                    .wrapping_add(node_idx as u64),
            ),
            bases: [run_base(&node, &uuid, false), run_base(&node, &uuid, true)],
            slow: spec.slow_node.as_deref() == Some(node.as_str()),
            throttled: spec.throttled_node.as_deref() == Some(node.as_str()),
            faulty: spec.faulty_node.as_deref() == Some(node.as_str()),
            span_ns,
            step: if rows > 0 { span_ns / rows as i64 } else { 0 },
            i: 0,
            rows,
        }
    }
}

impl Iterator for NodeGen<'_> {
    type Item = ProbeRecord;

    fn next(&mut self) -> Option<ProbeRecord> {
        if self.i >= self.rows {
            return None;
        }
        let (spec, i, step, span_ns) = (self.spec, self.i, self.step, self.span_ns);
        self.i += 1;
        let rng = &mut self.rng;
        let ts_ns = spec.start_ns + i as i64 * step + rng.random_range(0..step.max(1) / 2 + 1);
        let burst = u64::from(spec.burst_runs.max(1));
        let seq = i % burst;
        let arrival = seq == 0;
        let gemm = (i / burst) % 2 == 1;
        let (base, base_ms) = &self.bases[usize::from(gemm)];
        let flops = base.flops;
        let tenants: u32 = if spec.tenant_phases {
            let phase = ((i as i64 * step) * 6 / span_ns.max(1)) as usize % 3;
            [0, 1, 3][phase]
        } else {
            0
        };
        let clock = if self.throttled {
            (f64::from(NOMINAL_CLOCK_MHZ) / spec.slow_factor) as u32
        } else {
            NOMINAL_CLOCK_MHZ
        };
        let mut gpu_ms = base_ms * (0.05 * normal(rng)).exp();
        if self.slow || self.throttled {
            gpu_ms *= spec.slow_factor;
        }
        let mut queue_ms = 0.01 * (0.3 * normal(rng)).exp();
        if tenants > 0 && !arrival {
            // Right after its own run the probe waits for the whole round.
            queue_ms += (0.9 + 0.1 * rng.random::<f64>()) * 2.0 * f64::from(tenants);
        } else if tenants > 0 && rng.random::<f64>() < f64::from(tenants) / f64::from(tenants + 1) {
            queue_ms += rng.random::<f64>() * 2.0 * f64::from(tenants);
        }
        let wall_ms = gpu_ms + queue_ms;
        let correct = !(self.faulty && i % 50 == 7);
        Some(ProbeRecord {
            ts_ns,
            gpu_index: 0,
            cycle: i / (2 * burst),
            burst_seq: seq as u32,
            arrival: Some(arrival),
            gpu_ms: Some(gpu_ms),
            wall_ms,
            queue_ms: Some(queue_ms),
            tflops: Some(flops / gpu_ms / 1e9),
            correct: Some(correct),
            device: DeviceFields {
                sm_clock_mhz: Some(clock),
                gpu_util_pct: Some(if tenants > 0 { 100 } else { 3 }),
                power_w: Some(120.0 + 100.0 * f64::from(tenants)),
                throttle_reasons: Some(if self.throttled { 0x20 } else { 0 }),
                gpu_processes: Some(tenants),
                sm_clock_mhz_after: Some(clock),
                ..Default::default()
            },
            pod_count: Some(tenants),
            ..base.clone()
        })
    }
}

/// The kernel (GEMM or FFT, as `gemm` says), its shape, its fast run time
/// (ms, before noise) and its flops.
fn kernel_consts(gemm: bool) -> (Kernel, &'static str, f64, f64) {
    if gemm {
        (Kernel::Gemm, "n=1024", 0.40, 2.0 * 1024f64.powi(3))
    } else {
        (
            Kernel::Fft,
            "c2c 1d n=4096 batch=8",
            0.05,
            8.0 * 5.0 * 4096.0 * 12.0,
        )
    }
}

/// What a synthetic run of `node`'s GPU `uuid` shares with every other
/// before its timings: the kernel (GEMM or FFT, as `gemm` says) with its
/// shape and flops, an H100 on CUDA, fp32, four time-sliced replicas, the
/// memory clock and the temperature. Returned with the kernel's fast run
/// time (ms, before noise).
fn run_base(node: &str, uuid: &str, gemm: bool) -> (ProbeRecord, f64) {
    let (kernel, shape, base_ms, flops) = kernel_consts(gemm);
    let base = ProbeRecord {
        node: node.into(),
        gpu_uuid: uuid.into(),
        gpu_name: Some("NVIDIA H100 80GB HBM3".into()),
        backend: Backend::Cuda,
        kernel,
        shape: shape.into(),
        precision: "fp32".into(),
        flops,
        rel_error: Some(1e-7),
        device: DeviceFields {
            mem_clock_mhz: Some(2619),
            temp_c: Some(40),
            ..Default::default()
        },
        replicas: Some(4),
        sharing_strategy: Some("time-slicing".into()),
        ..Default::default()
    };
    (base, base_ms)
}

/// Writer properties of a generated `probes` file: the agent's
/// ([`slicetrace_schema::writer_properties`]), except that row groups stay
/// at Parquet's default size, on which the benchmark datasets were measured.
pub fn writer_props() -> WriterProperties {
    writer_properties(
        &probes_schema(),
        DEFAULT_MAX_ROW_GROUP_ROW_COUNT,
        concat!("slicetrace gen-synthetic ", env!("CARGO_PKG_VERSION")),
    )
}

/// Writes `rows` (one node, time-ordered) into `dir/probes/date=…/node=…/`,
/// one file per date and per `rows_per_file` rows. Returns the files.
pub fn write_rows(
    dir: &Path,
    rows: &[ProbeRecord],
    rows_per_file: usize,
    tag: u64,
) -> Result<Vec<PathBuf>, SynthError> {
    let mut files = Vec::new();
    let mut start = 0;
    while start < rows.len() {
        let day = utc_day(rows[start].ts_ns);
        let mut end = start;
        while end < rows.len()
            && end - start < rows_per_file.max(1)
            && utc_day(rows[end].ts_ns) == day
        {
            end += 1;
        }
        let chunk = &rows[start..end];
        let date = layout::date_value(chunk[0].ts_ns);
        let part_dir = dir
            .join(layout::PROBES)
            .join(layout::partition_dir(&date, &chunk[0].node));
        fs::create_dir_all(&part_dir).map_err(|source| SynthError::Io {
            path: part_dir.display().to_string(),
            source,
        })?;
        let path = part_dir.join(layout::file_name(
            chunk[0].ts_ns,
            format_args!("{:016x}", tag ^ start as u64),
        ));
        write_file(&path, chunk)?;
        files.push(path);
        start = end;
    }
    Ok(files)
}

/// The UTC day of `ts_ns` (days since the epoch): the `date=` partition,
/// without formatting a date per row.
fn utc_day(ts_ns: i64) -> i64 {
    ts_ns.div_euclid(86_400 * 1_000_000_000)
}

/// Writes one Parquet file of `rows`.
pub fn write_file(path: &Path, rows: &[ProbeRecord]) -> Result<(), SynthError> {
    write_file_without(path, rows, &[])
}

/// The columns a schema-version-1 file written before the arrival work
/// lacks (`arrival`, `arrival_gap_ms`, `event_inflated`, `contention`).
pub const LATER_COLUMNS: [&str; 4] = ["arrival", "arrival_gap_ms", "event_inflated", "contention"];

/// Writes one Parquet file of `rows` without the columns in `drop`, as an
/// older agent wrote them (for tests of mixed directories).
pub fn write_file_without(
    path: &Path,
    rows: &[ProbeRecord],
    drop: &[&str],
) -> Result<(), SynthError> {
    let batch = probes_batch(rows).map_err(SynthError::Schema)?;
    let keep: Vec<usize> = (0..batch.num_columns())
        .filter(|&i| !drop.contains(&batch.schema().field(i).name().as_str()))
        .collect();
    let batch = batch
        .project(&keep)
        .map_err(|e| SynthError::Schema(slicetrace_schema::SchemaError::Arrow(e)))?;
    write_batch(path, &batch, writer_props())
}

/// Generates the whole dataset into `dir` (which gets a `probes/` child),
/// nodes spread over the cores (`threads`, 0 for all). Each node's runs
/// stream through a buffer of one file (`rows_per_file`, cut at each UTC
/// date), so memory stays at a file per thread; the files are those that
/// [`node_rows`] then [`write_rows`] give. Returns the number of files.
pub fn generate(dir: &Path, spec: &SynthSpec) -> Result<usize, SynthError> {
    generate_with_threads(dir, spec, 0)
}

/// [`generate`] on `threads` threads (0: one per core, at most one per node).
pub fn generate_with_threads(
    dir: &Path,
    spec: &SynthSpec,
    threads: usize,
) -> Result<usize, SynthError> {
    let per_node = spec.rows / spec.nodes.max(1) as u64;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = if threads == 0 { cores } else { threads }
        .min(spec.nodes)
        .max(1);
    let results: Vec<Result<usize, SynthError>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                s.spawn(move || {
                    let mut files = 0;
                    for n in (t..spec.nodes).step_by(threads) {
                        files += write_node(dir, spec, n, per_node)?;
                    }
                    Ok(files)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| {
                    Err(SynthError::Io {
                        path: dir.display().to_string(),
                        source: std::io::Error::other("generator thread panicked"),
                    })
                })
            })
            .collect()
    });
    results.into_iter().sum()
}

/// Streams node `n`'s runs into its files. Returns the number of files.
fn write_node(dir: &Path, spec: &SynthSpec, n: usize, rows: u64) -> Result<usize, SynthError> {
    let tag = spec.seed ^ (n as u64) << 32;
    let per_file = spec.rows_per_file.max(1);
    let mut buf: Vec<ProbeRecord> = Vec::with_capacity(per_file.min(rows as usize));
    let (mut files, mut first) = (0, 0usize);
    for (i, r) in NodeGen::new(spec, n, rows).enumerate() {
        let new_day = buf
            .last()
            .is_some_and(|l| utc_day(l.ts_ns) != utc_day(r.ts_ns));
        if buf.len() == per_file || new_day {
            files += write_rows(dir, &buf, per_file, tag ^ first as u64)?.len();
            buf.clear();
            first = i;
        }
        buf.push(r);
    }
    if !buf.is_empty() {
        files += write_rows(dir, &buf, per_file, tag ^ first as u64)?.len();
    }
    Ok(files)
}

/// A fleet in the agent's own file layout, for the fleet benchmark: every
/// node writes one file per `file_secs` (the agent's default rotation is 5
/// minutes) holding all its GPUs' runs. The last `dense_secs` before
/// `end_ns` are at `rate_per_gpu` arrivals per second per GPU; the older
/// days are present as small files (`sparse_rows_per_gpu` rows per GPU per
/// file) so that listing and pruning are measured without writing them at
/// full density. Every GPU is quiet (0 tenants) and healthy.
///
/// With `rollups`, the same runs are also folded into the agent's minute
/// rollups ([`slicetrace_schema::Rollup`], the accumulator the agent's
/// rollup writer uses, fed the same [`ProbeRecord`]s) and written as the
/// agent writes them: a file per node every 15 minutes
/// ([`ROLLUP_FILE_SECS`]), never across an hour, under `rollups/`. So
/// `fleet` from rollups and a query over the raw rows answer about the same
/// runs.
///
/// How it is fast: a file's runs are drawn as columns (times and clocks),
/// put in the agent's order by a merge (no sort, no per-row struct), and the
/// Arrow arrays are built from those columns directly; constant columns are
/// filled without formatting. The rollups reuse one [`ProbeRecord`] per GPU
/// and kernel, changing only its clocks and time per run.
#[derive(Debug, Clone)]
pub struct FleetLayout {
    /// Nodes, named `node-00`, `node-01`, ...
    pub nodes: usize,
    /// GPUs per node.
    pub gpus_per_node: usize,
    /// End of the data (exclusive), ns.
    pub end_ns: i64,
    /// Time covered, seconds before `end_ns`.
    pub span_secs: u64,
    /// The last seconds written at full density.
    pub dense_secs: u64,
    /// Seconds per file.
    pub file_secs: u64,
    /// Arrivals per second per GPU in the dense part.
    pub rate_per_gpu: f64,
    /// Rows per GPU per file in the older part.
    pub sparse_rows_per_gpu: usize,
    /// RNG seed.
    pub seed: u64,
    /// Writer threads.
    pub threads: usize,
    /// `(node index, from ns, factor)`: that node's kernels run `factor`
    /// times slower from that instant on (slow silicon, same clocks).
    pub slow: Option<(usize, i64, f64)>,
    /// Also write the minute rollups of the same runs (`rollups/`).
    pub rollups: bool,
}

/// Seconds of data per rollup file, as the agent's rollup writer
/// (`FILE_SECS` of its rollups sink): a file per node every 15 minutes.
pub const ROLLUP_FILE_SECS: u32 = 900;

/// What [`generate_fleet`] wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FleetWritten {
    /// Raw `probes` files.
    pub files: usize,
    /// Raw rows.
    pub rows: u64,
    /// Rollup files (0 without `rollups`).
    pub rollup_files: usize,
    /// Rollup rows.
    pub rollup_rows: u64,
}

/// The UUID of GPU `g` of node `node_idx` in a [`FleetLayout`].
pub fn fleet_gpu_uuid(node_idx: usize, g: usize, seed: u64) -> String {
    format!("GPU-{node_idx:08x}-{g:04x}-4000-8000-{seed:012x}")
}

/// The agent's flush interval: each 10 s batch of a file is sorted by GPU,
/// then time.
const AGENT_BATCH_NS: i64 = 10_000_000_000;

/// One file's runs as columns, in the agent's order.
struct FileRuns {
    /// Run times, ns.
    ts: Vec<i64>,
    /// GPU index.
    gpu: Vec<u32>,
    /// The run's index among its GPU's runs of the file (even: FFT, odd:
    /// GEMM; the cycle is half of it).
    i: Vec<u32>,
    /// gpu_ms.
    gpu_ms: Vec<f64>,
    /// queue_ms.
    queue_ms: Vec<f64>,
}

impl FileRuns {
    fn len(&self) -> usize {
        self.ts.len()
    }

    fn gemm(&self, k: usize) -> bool {
        self.i[k] % 2 == 1
    }
}

/// The runs of one node's GPUs in `[t0, t1)`, `per_gpu` each, in the
/// agent's order (each 10 s batch by GPU, then time). The draws are made
/// GPU by GPU, run by run, so the same seed gives the same runs as the
/// record-by-record generator this replaced.
fn file_runs(
    l: &FleetLayout,
    node_idx: usize,
    t0: i64,
    t1: i64,
    per_gpu: usize,
    rng: &mut StdRng,
) -> FileRuns {
    let gpus = l.gpus_per_node;
    let n = per_gpu * gpus;
    let step = (t1 - t0) / per_gpu.max(1) as i64;
    let mut ts = Vec::with_capacity(n);
    let mut gms = Vec::with_capacity(n);
    let mut qms = Vec::with_capacity(n);
    for _g in 0..gpus {
        for i in 0..per_gpu {
            let t = t0 + i as i64 * step + rng.random_range(0..step.max(1));
            let (_, _, base_ms, _) = kernel_consts(i % 2 == 1);
            let mut gpu_ms = base_ms * (0.05 * normal(rng)).exp();
            if let Some((slow, from, factor)) = l.slow {
                if slow == node_idx && t >= from {
                    gpu_ms *= factor;
                }
            }
            let queue_ms = 0.01 * (0.3 * normal(rng)).exp();
            ts.push(t);
            gms.push(gpu_ms);
            qms.push(queue_ms);
        }
    }
    // Each GPU's runs are in time order (run i lies in [t0 + i·step,
    // t0 + (i+1)·step)), so the agent's order is a merge by batch and GPU.
    let mut order = Vec::with_capacity(n);
    if n > 0 {
        let mut cur = vec![0usize; gpus];
        let first = ts.iter().min().copied().unwrap_or(t0);
        let last = ts.iter().max().copied().unwrap_or(t0);
        for b in first.div_euclid(AGENT_BATCH_NS)..=last.div_euclid(AGENT_BATCH_NS) {
            for (g, c) in cur.iter_mut().enumerate() {
                while *c < per_gpu && ts[g * per_gpu + *c].div_euclid(AGENT_BATCH_NS) == b {
                    order.push(g * per_gpu + *c);
                    *c += 1;
                }
            }
        }
    }
    FileRuns {
        ts: order.iter().map(|&k| ts[k]).collect(),
        gpu: order.iter().map(|&k| (k / per_gpu) as u32).collect(),
        i: order.iter().map(|&k| (k % per_gpu) as u32).collect(),
        gpu_ms: order.iter().map(|&k| gms[k]).collect(),
        queue_ms: order.iter().map(|&k| qms[k]).collect(),
    }
}

/// A [`FleetLayout`] run of GPU `uuid` of `node`: the template of every
/// run of that GPU and kernel, with its timings still to set.
fn fleet_template(node: &str, uuid: &str, gemm: bool) -> ProbeRecord {
    let (base, _) = run_base(node, uuid, gemm);
    ProbeRecord {
        burst_seq: 0,
        arrival: Some(true),
        correct: Some(true),
        device: DeviceFields {
            sm_clock_mhz: Some(NOMINAL_CLOCK_MHZ),
            gpu_util_pct: Some(3),
            power_w: Some(120.0),
            throttle_reasons: Some(0),
            gpu_processes: Some(0),
            sm_clock_mhz_after: Some(NOMINAL_CLOCK_MHZ),
            ..Default::default()
        },
        pod_count: Some(0),
        ..base
    }
}

/// Sets run `k` of `f` (GPU `g`) on its template.
fn set_run(r: &mut ProbeRecord, f: &FileRuns, k: usize) {
    let (gpu_ms, queue_ms) = (f.gpu_ms[k], f.queue_ms[k]);
    r.ts_ns = f.ts[k];
    r.gpu_index = f.gpu[k];
    r.cycle = u64::from(f.i[k] / 2);
    r.gpu_ms = Some(gpu_ms);
    r.wall_ms = gpu_ms + queue_ms;
    r.queue_ms = Some(queue_ms);
    r.tflops = Some(r.flops / gpu_ms / 1e9);
}

/// The runs of one node's GPUs in `[t0, t1)`, `per_gpu` each, in the
/// agent's order (10 s batches, each by GPU and time), as
/// [`generate_fleet`] writes them (for tests that replace a file).
pub fn fleet_rows(
    l: &FleetLayout,
    node_idx: usize,
    t0: i64,
    t1: i64,
    per_gpu: usize,
    seed: u64,
) -> Vec<ProbeRecord> {
    let mut rng = StdRng::seed_from_u64(seed);
    let f = file_runs(l, node_idx, t0, t1, per_gpu, &mut rng);
    let node = node_name(node_idx);
    let tpl = templates(l, &node, node_idx);
    (0..f.len())
        .map(|k| {
            let mut r = tpl[f.gpu[k] as usize][usize::from(f.gemm(k))].clone();
            set_run(&mut r, &f, k);
            r
        })
        .collect()
}

/// Per GPU of node `node_idx`, its FFT and GEMM templates.
fn templates(l: &FleetLayout, node: &str, node_idx: usize) -> Vec<[ProbeRecord; 2]> {
    (0..l.gpus_per_node)
        .map(|g| {
            let uuid = fleet_gpu_uuid(node_idx, g, l.seed);
            [
                fleet_template(node, &uuid, false),
                fleet_template(node, &uuid, true),
            ]
        })
        .collect()
}

/// The `probes` batch of rows `from..to` of `f`: what [`probes_batch`]
/// builds from the same runs as records (a test checks they are equal),
/// built from the columns.
fn fleet_batch(
    f: &FileRuns,
    from: usize,
    to: usize,
    node: &str,
    uuids: &[String],
) -> Result<RecordBatch, SynthError> {
    use arrow::array::{
        new_null_array, ArrayRef, BooleanArray, Float64Array, StringArray,
        TimestampNanosecondArray, UInt32Array, UInt64Array,
    };
    use std::sync::Arc;
    let n = to - from;
    let rows = from..to;
    let kc = |k: usize| kernel_consts(f.gemm(k));
    let schema = probes_schema();
    let u32s = |v: u32| Arc::new(UInt32Array::from(vec![v; n])) as ArrayRef;
    let f64s = |v: f64| Arc::new(Float64Array::from(vec![v; n])) as ArrayRef;
    let strs =
        |v: &str| Arc::new(StringArray::from_iter_values(std::iter::repeat_n(v, n))) as ArrayRef;
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(schema.fields().len());
    for field in schema.fields() {
        let a: ArrayRef = match field.name().as_str() {
            "ts" => Arc::new(
                TimestampNanosecondArray::from(f.ts[rows.clone()].to_vec()).with_timezone("UTC"),
            ),
            "node" => strs(node),
            "gpu_uuid" => Arc::new(StringArray::from_iter_values(
                rows.clone().map(|k| uuids[f.gpu[k] as usize].as_str()),
            )),
            "gpu_index" => Arc::new(UInt32Array::from(f.gpu[rows.clone()].to_vec())),
            "gpu_name" => strs("NVIDIA H100 80GB HBM3"),
            "backend" => strs(Backend::Cuda.as_str()),
            "kernel" => Arc::new(StringArray::from_iter_values(
                rows.clone().map(|k| kc(k).0.as_str()),
            )),
            "shape" => Arc::new(StringArray::from_iter_values(rows.clone().map(|k| kc(k).1))),
            "precision" => strs("fp32"),
            "flops" => Arc::new(Float64Array::from_iter_values(
                rows.clone().map(|k| kc(k).3),
            )),
            "cycle" => Arc::new(UInt64Array::from_iter_values(
                rows.clone().map(|k| u64::from(f.i[k] / 2)),
            )),
            "burst_seq" => u32s(0),
            "gpu_ms" => Arc::new(Float64Array::from(f.gpu_ms[rows.clone()].to_vec())),
            "wall_ms" => Arc::new(Float64Array::from_iter_values(
                rows.clone().map(|k| round_ms(f.gpu_ms[k] + f.queue_ms[k])),
            )),
            "queue_ms" => Arc::new(Float64Array::from_iter_values(
                rows.clone().map(|k| round_ms(f.queue_ms[k])),
            )),
            "tflops" => Arc::new(Float64Array::from_iter_values(
                rows.clone().map(|k| round_rel(kc(k).3 / f.gpu_ms[k] / 1e9)),
            )),
            "correct" | "arrival" => Arc::new(BooleanArray::from(vec![true; n])),
            "rel_error" => f64s(1e-7),
            "sm_clock_mhz" | "sm_clock_mhz_after" => u32s(NOMINAL_CLOCK_MHZ),
            "gpu_util_pct" => u32s(3),
            "power_w" => f64s(round_rel(120.0)),
            "throttle_reasons" => Arc::new(UInt64Array::from(vec![0u64; n])),
            "gpu_processes" | "pod_count" => u32s(0),
            "replicas" => u32s(4),
            "sharing_strategy" => strs("time-slicing"),
            _ => new_null_array(field.data_type(), n),
        };
        columns.push(a);
    }
    RecordBatch::try_new(schema, columns)
        .map_err(|e| SynthError::Schema(slicetrace_schema::SchemaError::Arrow(e)))
}

/// Writes `batch` as the Parquet file `path` with `props` (the agent's:
/// [`writer_props`] for probes rows).
fn write_batch(
    path: &Path,
    batch: &RecordBatch,
    props: WriterProperties,
) -> Result<(), SynthError> {
    let name = path.display().to_string();
    let file = fs::File::create(path).map_err(|source| SynthError::Io {
        path: name.clone(),
        source,
    })?;
    let pq = |source| SynthError::Parquet {
        path: name.clone(),
        source,
    };
    let mut w = ArrowWriter::try_new(file, batch.schema(), Some(props)).map_err(pq)?;
    // Row groups of at most 64k rows keep memory flat for big files.
    let mut off = 0;
    while off < batch.num_rows() {
        let len = (batch.num_rows() - off).min(65_536);
        w.write(&batch.slice(off, len)).map_err(pq)?;
        off += len;
    }
    w.close().map_err(pq)?;
    Ok(())
}

/// Writes `f`'s runs of node `node` under `dir/probes/`, one file per UTC
/// date (a file normally holds one), named by its first run and `tag`, as
/// [`write_rows`] names them. Returns the files written.
fn write_fleet_file(
    dir: &Path,
    f: &FileRuns,
    node: &str,
    uuids: &[String],
    tag: u64,
) -> Result<usize, SynthError> {
    let mut files = 0;
    let mut start = 0;
    while start < f.len() {
        let day = utc_day(f.ts[start]);
        let mut end = start;
        while end < f.len() && utc_day(f.ts[end]) == day {
            end += 1;
        }
        let date = layout::date_value(f.ts[start]);
        let part_dir = dir
            .join(layout::PROBES)
            .join(layout::partition_dir(&date, node));
        fs::create_dir_all(&part_dir).map_err(|source| SynthError::Io {
            path: part_dir.display().to_string(),
            source,
        })?;
        let path = part_dir.join(layout::file_name(
            f.ts[start],
            format_args!("{:016x}", tag ^ start as u64),
        ));
        write_batch(
            &path,
            &fleet_batch(f, start, end, node, uuids)?,
            writer_props(),
        )?;
        files += 1;
        start = end;
    }
    Ok(files)
}

/// Writes the rollup rows `rows` of one node (closed minutes) as the
/// agent's rollup writer does: one file per hour they belong to, named by
/// its first minute. Returns (files, rows).
fn write_rollups(
    dir: &Path,
    node: &str,
    rows: Vec<RollupRecord>,
    seed: u64,
) -> Result<(usize, u64), SynthError> {
    let mut by_hour: std::collections::BTreeMap<i64, Vec<RollupRecord>> =
        std::collections::BTreeMap::new();
    for r in rows {
        by_hour
            .entry(bucket_start(r.key.bucket_ns, HOUR_SECS))
            .or_default()
            .push(r);
    }
    let (mut files, mut n) = (0, 0);
    for (hour, rows) in by_hour {
        let first = rows.iter().map(|r| r.key.bucket_ns).min().unwrap_or(hour);
        let part_dir = dir
            .join(layout::ROLLUPS)
            .join(layout::partition_dir(&layout::date_value(hour), node));
        fs::create_dir_all(&part_dir).map_err(|source| SynthError::Io {
            path: part_dir.display().to_string(),
            source,
        })?;
        let path = part_dir.join(layout::file_name(
            first,
            format_args!("r{:015x}", (seed ^ first as u64) & 0x0fff_ffff_ffff_ffff),
        ));
        let batch = rollups_batch(&rows).map_err(SynthError::Schema)?;
        let props = writer_properties(
            &rollups_schema(),
            65_536,
            concat!("slicetrace gen-synthetic ", env!("CARGO_PKG_VERSION")),
        );
        write_batch(&path, &batch, props)?;
        files += 1;
        n += rows.len() as u64;
    }
    Ok((files, n))
}

/// Writes one node's files of a [`FleetLayout`].
fn write_fleet_node(
    dir: &Path,
    l: &FleetLayout,
    node_idx: usize,
) -> Result<FleetWritten, SynthError> {
    let mut rng =
        StdRng::seed_from_u64(l.seed.wrapping_mul(1_000_003).wrapping_add(node_idx as u64));
    let node = node_name(node_idx);
    let uuids: Vec<String> = (0..l.gpus_per_node)
        .map(|g| fleet_gpu_uuid(node_idx, g, l.seed))
        .collect();
    let mut tpl = templates(l, &node, node_idx);
    let mut acc = Rollup::new(MINUTE_SECS);
    let rollup_seed = l.seed ^ (node_idx as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    let cut_ns = i64::from(ROLLUP_FILE_SECS) * 1_000_000_000;
    let mut written_to = i64::MIN;
    let file_ns = l.file_secs.max(1) as i64 * 1_000_000_000;
    let start = l.end_ns - l.span_secs as i64 * 1_000_000_000;
    let dense_from = l.end_ns - l.dense_secs as i64 * 1_000_000_000;
    let mut out = FleetWritten::default();
    let mut t0 = start;
    while t0 < l.end_ns {
        let t1 = (t0 + file_ns).min(l.end_ns);
        let per_gpu = if t0 >= dense_from {
            (l.rate_per_gpu * (t1 - t0) as f64 / 1e9).round() as usize
        } else {
            l.sparse_rows_per_gpu
        };
        if per_gpu > 0 {
            let f = file_runs(l, node_idx, t0, t1, per_gpu, &mut rng);
            out.rows += f.len() as u64;
            out.files += write_fleet_file(dir, &f, &node, &uuids, rng.random())?;
            if l.rollups {
                for k in 0..f.len() {
                    let r = &mut tpl[f.gpu[k] as usize][usize::from(f.gemm(k))];
                    set_run(r, &f, k);
                    acc.add(r);
                }
            }
        }
        // The agent writes its closed minutes every 15 minutes.
        let cut = t1.div_euclid(cut_ns) * cut_ns;
        if l.rollups && cut > written_to {
            let (files, rows) = write_rollups(dir, &node, acc.take_closed(cut), rollup_seed)?;
            out.rollup_files += files;
            out.rollup_rows += rows;
            written_to = cut;
        }
        t0 = t1;
    }
    if l.rollups {
        let (files, rows) = write_rollups(dir, &node, acc.take_closed(i64::MAX), rollup_seed)?;
        out.rollup_files += files;
        out.rollup_rows += rows;
    }
    Ok(out)
}

/// Generates a [`FleetLayout`] into `dir` (which gets a `probes/` child,
/// and a `rollups/` one with `rollups`), nodes spread over `threads`
/// threads.
pub fn generate_fleet(dir: &Path, l: &FleetLayout) -> Result<FleetWritten, SynthError> {
    let threads = l.threads.max(1);
    let results: Vec<Result<FleetWritten, SynthError>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                s.spawn(move || {
                    let mut sum = FleetWritten::default();
                    for n in (t..l.nodes).step_by(threads) {
                        let w = write_fleet_node(dir, l, n)?;
                        sum.files += w.files;
                        sum.rows += w.rows;
                        sum.rollup_files += w.rollup_files;
                        sum.rollup_rows += w.rollup_rows;
                    }
                    Ok(sum)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| {
                    Err(SynthError::Io {
                        path: dir.display().to_string(),
                        source: std::io::Error::other("generator thread panicked"),
                    })
                })
            })
            .collect()
    });
    let mut sum = FleetWritten::default();
    for r in results {
        let w = r?;
        sum.files += w.files;
        sum.rows += w.rows;
        sum.rollup_files += w.rollup_files;
        sum.rollup_rows += w.rollup_rows;
    }
    Ok(sum)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn layout() -> FleetLayout {
        FleetLayout {
            nodes: 2,
            gpus_per_node: 3,
            end_ns: 1_767_225_600_000_000_000 + 3_600_000_000_000,
            span_secs: 3600,
            dense_secs: 1800,
            file_secs: 300,
            rate_per_gpu: 0.5,
            sparse_rows_per_gpu: 2,
            seed: 3,
            threads: 1,
            slow: Some((1, 1_767_225_600_000_000_000 + 3_000_000_000_000, 2.0)),
            rollups: true,
        }
    }

    #[test]
    fn the_column_batch_equals_the_records_batch() {
        let l = layout();
        let t0 = l.end_ns - 900_000_000_000;
        let t1 = t0 + 300_000_000_000;
        for node_idx in 0..2 {
            let rows = fleet_rows(&l, node_idx, t0, t1, 150, 9);
            let mut rng = StdRng::seed_from_u64(9);
            let f = file_runs(&l, node_idx, t0, t1, 150, &mut rng);
            let uuids: Vec<String> = (0..3)
                .map(|g| fleet_gpu_uuid(node_idx, g, l.seed))
                .collect();
            let cols = fleet_batch(&f, 0, f.len(), &node_name(node_idx), &uuids).unwrap();
            assert_eq!(cols, probes_batch(&rows).unwrap());
            // The agent's order: by 10 s batch, then GPU, then time.
            let keys: Vec<_> = rows
                .iter()
                .map(|r| (r.ts_ns.div_euclid(AGENT_BATCH_NS), r.gpu_index, r.ts_ns))
                .collect();
            assert!(keys.windows(2).all(|w| w[0] < w[1]));
        }
    }
}
