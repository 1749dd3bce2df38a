//! `slicetrace`: tail report, degradation compare, fleet health check, SQL and
//! plots over the agent's probes Parquet files (local or S3), on DataFusion.
//!
//! `report`, `compare`, `fleet` and `plot` count arrival runs only unless
//! `--all-runs` is given (see `slicetrace_analysis::runs`), and each says
//! which runs it counted: a last line on stdout for tables, a line on stderr
//! for JSON, CSV and plots. `blame` and `whatif` read arrival runs only.
//!
//! Exit codes: 0 success; 2 for every error (bad flags, bad SQL, missing or
//! bad data). `fleet` adds 1 (red: a GPU unhealthy, or more degraded,
//! unknown or stale GPUs than allowed), 4 (green, but unreadable files were
//! skipped) and 5 (red, files skipped); see `slicetrace fleet --help`.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use slicetrace_analysis::engine::Engine;
use slicetrace_analysis::output::Format;
use slicetrace_analysis::rollup::{self, DataSource, SourceArgs};
use slicetrace_analysis::runs::{self, RunCounts};
use slicetrace_analysis::source::{self, OpenOptions, TableKind};
use slicetrace_analysis::{
    blame, compare, fleet, plot, pred, query, report, synth, tenancy, whatif,
};

/// mimalloc, as DataFusion's own CLI uses: reading rollup files allocates
/// and frees a buffer per column chunk and page of tens of thousands of
/// small files, and glibc's allocator spent about 14 % of `fleet`'s CPU on
/// them (docs/benchmarks.md, "Rollups"). Built without transparent huge
/// pages (`no_thp`: the process opts out of them): with them, mimalloc's
/// eagerly committed arenas raised `report`'s peak RSS on 10⁷ rows from
/// 400 MB (glibc) to about 650 MB; without, about 445 MB, and `fleet`
/// zeroes fewer pages.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Arguments shared by every command that reads data.
#[derive(Debug, clap::Args)]
struct DataArgs {
    /// The agent's output directory (or its `probes/` or `health/` child), or
    /// `s3://bucket/prefix`. S3 credentials and region come from the standard
    /// AWS_* variables.
    data: String,
    /// S3 endpoint URL (default: `AWS_ENDPOINT_URL`, else AWS). Plain http
    /// is allowed for loopback endpoints.
    #[arg(long, global = true)]
    s3_endpoint: Option<String>,
    /// Where the queries run: `local` (this process) or `df://HOST:PORT`, an
    /// Apache Ballista scheduler started by `slicetrace-ballista` whose
    /// executors read the same DATA (the same s3:// prefix, or the same
    /// local paths). Results are computed by the same code either way.
    #[arg(
        long,
        global = true,
        default_value = "local",
        env = "SLICETRACE_ENGINE"
    )]
    engine: String,
}

impl DataArgs {
    /// The parsed `--engine` (a bad value is a one-line error, exit 2).
    fn engine(&self) -> Result<Engine> {
        Ok(self.engine.parse::<Engine>()?)
    }
}

/// Which runs a command counts.
#[derive(Debug, Clone, Copy, clap::Args)]
struct RunsArgs {
    /// Count every run, burst runs included. By default only arrival runs
    /// count: runs that began at a random moment, independent of the probe's
    /// previous run (column `arrival`; in files written before it existed,
    /// the first FFT run of each burst). Only they sample what a caller sees;
    /// a burst run follows the probe's own previous run and measures its rhythm.
    #[arg(long)]
    all_runs: bool,
}

#[derive(Debug, Parser)]
#[command(
    name = "slicetrace",
    version,
    about = "Tail-latency analysis of slicetrace probes (DataFusion)"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Per-group tail-latency report (arrival runs unless --all-runs).
    ///
    /// Percentiles are exact by default: linear interpolation between the
    /// closest ranks, r = q·(n−1), identical to DuckDB `quantile_cont` and
    /// PostgreSQL `percentile_cont`. Throughput is runs per second,
    /// count / (max(ts) − min(ts)). Jitter is p99/p50 of wall_ms. Tail queue
    /// share is Σ queue_ms / Σ wall_ms over the runs whose wall_ms is at or
    /// above the group's p99 of wall_ms (runs with a null queue_ms are left
    /// out): the part of the slowest 1 % spent waiting for a time slice.
    ///
    /// With --table health: per group, the live verdicts the agent recorded
    /// (evaluations per verdict, the latest verdict and its reason, the worst
    /// window p99 and inflation).
    Report {
        #[command(flatten)]
        data: DataArgs,
        /// SQL predicate on the table, e.g. "node='n3' AND kernel='fft'" or
        /// "tenants >= 1", or a time range START..END (RFC 3339, END exclusive).
        #[arg(long = "where")]
        filter: Option<String>,
        /// Group-by columns, comma-separated, e.g. kernel,tenants.
        /// [default: node,gpu_uuid,kernel,tenants; tenants is left out when
        /// no counted run knows its tenant count; health: node,gpu_uuid,kernel]
        #[arg(long)]
        by: Option<String>,
        /// Output format: table, json or csv.
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
        /// Which table to read: probes (runs) or health (the agent's live verdicts).
        #[arg(long, value_enum, default_value_t = TableKind::Probes)]
        table: TableKind,
        #[command(flatten)]
        runs: RunsArgs,
        /// Use DataFusion's approx_percentile_cont (t-digest) instead of exact
        /// percentiles: bounded memory for huge scans.
        #[arg(long)]
        approx: bool,
        #[command(flatten)]
        source: SourceArgs,
    },
    /// Before/after degradation table per kernel and shape, for the event
    /// clock (gpu_ms) and the host clock (wall_ms); arrival runs unless
    /// --all-runs.
    ///
    /// Factors are after/before. "kernel TFLOP/s Δ %" is the change of the
    /// kernel's execution rate while it holds the GPU, Σ flops / Σ gpu_ms
    /// (event rows only): (after/before − 1)·100 %. There is no rate on the
    /// host clock: the probe's own runs per second say nothing about what its
    /// neighbours get. With --split-by-occupancy the sides are tenant counts
    /// (column tenants = gpu_processes, other compute processes on the GPU):
    /// the baseline is 0 tenants, compared with all rows with ≥1 tenant and
    /// then with each tenant count on its own.
    Compare {
        #[command(flatten)]
        data: DataArgs,
        /// Baseline rows: SQL predicate or START..END time range.
        #[arg(long, required_unless_present = "split_by_occupancy")]
        baseline: Option<String>,
        /// Rows to compare with the baseline: SQL predicate or time range.
        #[arg(long, required_unless_present = "split_by_occupancy")]
        against: Option<String>,
        /// Baseline = runs with no other tenant; against = runs with ≥1.
        #[arg(long, conflicts_with_all = ["baseline", "against"])]
        split_by_occupancy: bool,
        /// Extra predicate applied to both sides.
        #[arg(long = "where")]
        filter: Option<String>,
        /// Output format: table, json or csv.
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
        #[command(flatten)]
        runs: RunsArgs,
        #[command(flatten)]
        source: SourceArgs,
    },
    /// Fleet health check: a state per node and GPU over the window that
    /// ends now (or --until), arrival runs unless --all-runs.
    ///
    /// Only the date= partitions and files of the window and the baseline
    /// period are listed and opened. States: healthy, unknown (too few runs),
    /// stale (no run in the window), degraded, unhealthy.
    ///
    /// Source: the agents' minute rollups whenever they cover the range
    /// (every node with raw rows in its date= partitions has rollups there
    /// too), else the raw rows; `source` in the output says which and why.
    /// Rollup quantiles are within ±1 % of exact ones, so a ratio of two is
    /// within about ±2 %, far inside the thresholds' margins (a 1.5×
    /// degraded factor; a peer outlier at least 3.5 × 5 % off the median);
    /// counts are exact. A node without rollups makes the whole check read
    /// raw rows. --exact always reads raw rows. The agent writes rollups
    /// every 15 minutes: for a window under ~30 minutes ending now, use
    /// --exact.
    ///
    /// Exit codes: 0 green; 1 red: any GPU unhealthy, or more GPUs degraded,
    /// unknown or stale than --max-degraded, --max-unknown, --max-stale
    /// allow; 4 green but unreadable files were skipped (named in the
    /// output); 5 red and files skipped; 2 error (bad flags, no data; with
    /// --strict, any unreadable file).
    Fleet {
        #[command(flatten)]
        data: DataArgs,
        #[command(flatten)]
        opts: fleet::FleetArgs,
        /// Output format: table or json (csv is not supported here).
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
        #[command(flatten)]
        runs: RunsArgs,
        #[command(flatten)]
        source: SourceArgs,
    },
    /// Rollups: compact minute rollups of finished hours into hour rollups
    /// (--to hour), or build minute rollups from raw rows written before
    /// the agent wrote rollups (--from-raw, local directories only).
    ///
    /// Hour rows are kept in one file per node and date
    /// (`part-<date>T000000Z-hour.parquet`, rewritten as hours finish; an
    /// earlier build's per-hour files are folded in). Compaction is atomic
    /// per node and date (the file is written under a hidden name, synced
    /// and renamed, or on s3:// in one PUT; the minute files are removed
    /// only after it is visible, and readers skip files an hour file
    /// lists), idempotent, and safe to rerun after a cut-off run.
    Rollup {
        /// The agent's output directory (with a rollups/ child, or probes/
        /// for --from-raw), or for --to hour the s3://BUCKET/PREFIX the
        /// agents ship to.
        data: String,
        /// S3 endpoint URL for an s3:// DATA (default: `AWS_ENDPOINT_URL`,
        /// else AWS).
        #[arg(long)]
        s3_endpoint: Option<String>,
        /// Compact into this period: `hour`.
        #[arg(long, required_unless_present = "from_raw")]
        to: Option<String>,
        /// Build minute rollups from the raw probes rows.
        #[arg(long, conflicts_with = "to")]
        from_raw: bool,
        /// "Now" for --to hour: only hours before the one holding it are
        /// compacted (RFC 3339) [default: the clock].
        #[arg(long)]
        now: Option<String>,
        /// With --from-raw: SQL predicate or START..END range on the raw rows.
        #[arg(long = "where")]
        filter: Option<String>,
    },
    /// Writes synthetic rollups (no raw rows) for benchmarks.
    GenRollups {
        /// Output directory (gets a rollups/ child).
        #[arg(long)]
        out: PathBuf,
        /// Nodes.
        #[arg(long, default_value_t = 100)]
        nodes: usize,
        /// GPUs per node.
        #[arg(long, default_value_t = 8)]
        gpus_per_node: usize,
        /// Seconds of data, ending at --end.
        #[arg(long, default_value_t = 3600)]
        span_secs: u64,
        /// End, RFC 3339 [default: now].
        #[arg(long)]
        end: Option<String>,
        /// Hour rows (as compaction leaves them) instead of minute rows.
        #[arg(long)]
        hours: bool,
        /// Seconds per minute-rows file (the agent's rollups.file_secs).
        #[arg(long, default_value_t = 900)]
        file_secs: u64,
        /// Arrivals per minute per GPU.
        #[arg(long, default_value_t = 300)]
        arrivals_per_min: u64,
        /// Values drawn per sketch (each added with a count).
        #[arg(long, default_value_t = 40)]
        draws: u32,
        /// RNG seed.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Writer threads.
        #[arg(long, default_value_t = 2)]
        threads: usize,
    },
    /// Runs any SQL over the data. Raw: every run counts.
    ///
    /// Tables: `probes` (every run, with the derived column `tenants`),
    /// `arrivals` (the arrival runs of `probes`, what the other commands
    /// count by default) and `probe_files` (the files' own columns); with
    /// --table health, `health`.
    Sql {
        #[command(flatten)]
        data: DataArgs,
        /// The query, e.g. "SELECT node, count(*) FROM arrivals GROUP BY node".
        query: String,
        /// Output format: table, json or csv.
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
        /// Which table to register: probes (runs) or health (the agent's live verdicts).
        #[arg(long, value_enum, default_value_t = TableKind::Probes)]
        table: TableKind,
    },
    /// Draws latency CDFs or a rolling-p99 timeline to SVG or PNG (arrival
    /// runs unless --all-runs).
    Plot {
        #[command(flatten)]
        data: DataArgs,
        /// Output file; the extension (.svg or .png) picks the format.
        #[arg(long)]
        out: PathBuf,
        /// What to draw.
        #[arg(long, value_enum, default_value_t = plot::Kind::Cdf)]
        kind: plot::Kind,
        /// SQL predicate or START..END time range.
        #[arg(long = "where")]
        filter: Option<String>,
        /// Columns whose values each get their own line, comma-separated
        /// [default: cdf: tenants (one panel per kernel); timeline: node,gpu_uuid,kernel].
        #[arg(long)]
        by: Option<String>,
        #[command(flatten)]
        runs: RunsArgs,
        /// Runs per rolling-p99 window (timeline).
        #[arg(long, default_value_t = 200)]
        rolling_runs: usize,
        /// TTF/OTF font for PNG text (default: DejaVu Sans or Liberation Sans, found at run time).
        #[arg(long)]
        font: Option<PathBuf>,
        #[command(flatten)]
        source: SourceArgs,
    },
    /// Which tenant made the probe wait: per GPU and tenant (pod, or
    /// `pid:N`), ranked by attributed share of the wait (arrival runs only).
    ///
    /// Needs the `busy_tenants` column (schema version 4: the tenant
    /// processes NVML's per-process utilisation samples showed busy around
    /// each arrival). Model: round-robin time-slicing, an arrival beside K
    /// busy contexts waits q0 + U(0, K·s), so each busy context adds the same
    /// expected wait and the Shapley split of an arrival's excess wait
    /// x = (wait − q0)⁺ is equal between its K busy contexts. A tenant's
    /// attributed share is Σ x·c/K ÷ Σ x (c: its busy contexts in that
    /// arrival); its counterfactual wait is wait − x·c/K, and "p99 without
    /// it" is that distribution's p99, with a 95 % bootstrap interval over
    /// the arrivals (200 resamples, fixed seed). q0 is the p50 of the waits
    /// with no busy tenant, per kernel. A tenant holding a context but never
    /// busy (from `pods`, else `processes`) gets busy share and attributed
    /// share 0. NVML samples cover the driver's sample period, far longer
    /// than a wait: a tenant with short bursts counts as busy for the whole
    /// period. See docs/blame-whatif.md.
    Blame {
        #[command(flatten)]
        data: DataArgs,
        #[command(flatten)]
        scope: ScopeArgs,
        /// Output format: table, json or csv (json and csv: one record per
        /// GPU and tenant).
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Predicts the wall p50/p99 a caller arriving at random would see beside
    /// N busy tenant contexts, from what the data shows (arrival runs only).
    ///
    /// Model: round-robin time-slicing; a caller arriving at random beside K
    /// busy contexts waits q0 + K·g(U), U uniform on [0, 1]: q0 the waits
    /// measured at K = 0, g the wait each busy context adds as a quantile
    /// function, fitted from the data (an ideal rotation of full slices s
    /// would make it U·s). Per GPU and kernel, the arrival rows are grouped
    /// by K = busy_count (or gpu_processes, resident processes busy or not,
    /// when busy_count is null or with --count-by resident: said in the
    /// output). At each level p = 0.005…0.995, g(p) is the least-squares
    /// slope of the wait quantile Q_K(p) on K over the fitted counts, each
    /// weighted 1/K² (through Q_0(p) when K = 0 is fitted, else with an
    /// intercept that becomes q0), clamped at 0. With 3+ fitted counts the
    /// fits leaving one count out give a second range at N. The slice s (printed, and the
    /// cost of one preemption) is the uniform rotation's fit of the
    /// quantiles p05…p95 against p·K. The default caller runs the probe's kernel
    /// (its own part drawn from wall_ms − queue_ms, the kernel and the path
    /// to the end stamp, of the fitted K ≥ 1 rows; it must fit in one
    /// slice); with --kernel-ms E it runs E ms and is preempted
    /// ceil(E/s) − 1 times, each costing N·s. Quantiles from 40,000 Monte
    /// Carlo draws; 95 % intervals from 200 bootstrap refits (fixed seed).
    /// Every K in the data is printed with its measured and predicted wall
    /// p50/p99. `replicas: R` caps pods, not busy contexts: with the mean
    /// duty cycle d = Σ busy_count / Σ gpu_processes, R pods put
    /// Binomial(R − 1, d) busy contexts beside a caller; the replicas table
    /// predicts that mixture's p99. See docs/blame-whatif.md.
    Whatif {
        #[command(flatten)]
        data: DataArgs,
        #[command(flatten)]
        scope: ScopeArgs,
        /// N: busy tenant contexts beside the caller (0..=64).
        #[arg(long, required_unless_present = "slo_p99_ms")]
        tenants: Option<u32>,
        /// The caller's own kernel time in ms (default: the probe's kernel).
        #[arg(long)]
        kernel_ms: Option<f64>,
        /// p99 SLO in ms: print the largest N (0..=64) and `replicas:` whose
        /// predicted p99 meets it.
        #[arg(long)]
        slo_p99_ms: Option<f64>,
        /// Tenant counts to fit on, e.g. 0,1,3 [default: every count with at
        /// least 20 arrivals]; at least 2.
        #[arg(long)]
        fit_tenants: Option<String>,
        /// Only this kernel.
        #[arg(long, value_parser = ["fft", "gemm"])]
        kernel: Option<String>,
        /// Which column counts the tenants K: busy (busy_count, NVML's busy
        /// contexts around each arrival), resident (gpu_processes, busy or
        /// not), or auto (busy where any row has it).
        #[arg(long, value_enum, default_value_t = whatif::CountBy::Auto)]
        count_by: whatif::CountBy,
        /// Leaves this tenant (`namespace/pod` or `pid:<pid>`, as blame names
        /// it) out of K, so its work counts in the base wait q0: e.g. the
        /// caller's own pod. Repeatable.
        #[arg(long = "exclude-tenant", value_name = "TENANT")]
        exclude_tenant: Vec<String>,
        /// Output format: table or json.
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Writes a synthetic probes dataset (Hive layout) for tests and benchmarks.
    GenSynthetic(GenSyntheticArgs),
}

/// Which arrivals `blame` and `whatif` read.
#[derive(Debug, clap::Args)]
struct ScopeArgs {
    /// Only this GPU (its UUID).
    #[arg(long)]
    gpu: Option<String>,
    /// Only rows at or after this instant (RFC 3339); files before it are
    /// not opened.
    #[arg(long)]
    since: Option<String>,
    /// Only rows before this instant (RFC 3339).
    #[arg(long)]
    until: Option<String>,
}

/// What `gen-synthetic` writes, and where.
#[derive(Debug, clap::Args)]
struct GenSyntheticArgs {
    /// Total rows.
    #[arg(long, default_value_t = 1_000_000)]
    rows: u64,
    /// Number of nodes.
    #[arg(long, default_value_t = 10)]
    nodes: usize,
    /// Output directory (gets a probes/ child).
    #[arg(long)]
    out: PathBuf,
    /// Time span per node, seconds.
    #[arg(long, default_value_t = 2 * 86_400)]
    span_secs: u64,
    /// RNG seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Rows per file at most.
    #[arg(long, default_value_t = 500_000)]
    rows_per_file: usize,
    /// Node to make uniformly slower (e.g. node-07).
    #[arg(long)]
    slow_node: Option<String>,
    /// Node whose SM clock is throttled.
    #[arg(long)]
    throttled_node: Option<String>,
    /// Node with occasional correct=false.
    #[arg(long)]
    faulty_node: Option<String>,
    /// Keep every run at 0 tenants (no occupancy phases).
    #[arg(long)]
    quiet: bool,
    /// Runs per burst: 1 (default) makes every run an arrival; N > 1
    /// follows each arrival with N−1 burst runs (arrival = false) that,
    /// beside tenants, wait about a full slice round.
    #[arg(long, default_value_t = 1)]
    burst_runs: u32,
    /// Write the agent's file layout instead (for the fleet benchmark): a
    /// file per node every --file-secs holding its --gpus-per-node GPUs,
    /// over --span-secs ending at --end; the last --dense-secs at
    /// --rate-per-gpu arrivals/s, older files small (--sparse-rows-per-gpu).
    /// --rows, --rows-per-file and the fault flags do not apply. The same
    /// runs are also written as the agent's minute rollups (rollups/, a
    /// file per node every 15 minutes) unless --no-rollups.
    #[arg(long)]
    fleet_layout: bool,
    /// With --fleet-layout: write the raw probes files only, no rollups
    /// (a fleet of agents older than rollups).
    #[arg(long)]
    no_rollups: bool,
    /// GPUs per node (--fleet-layout).
    #[arg(long, default_value_t = 8)]
    gpus_per_node: usize,
    /// Seconds per file (--fleet-layout; the agent rotates every 300).
    #[arg(long, default_value_t = 300)]
    file_secs: u64,
    /// Arrivals per second per GPU in the dense part (--fleet-layout).
    #[arg(long, default_value_t = 5.0)]
    rate_per_gpu: f64,
    /// Seconds before --end written at full density (--fleet-layout).
    #[arg(long, default_value_t = 3600)]
    dense_secs: u64,
    /// Rows per GPU in each older file (--fleet-layout).
    #[arg(long, default_value_t = 2)]
    sparse_rows_per_gpu: usize,
    /// End of the data, RFC 3339 (--fleet-layout) [default: now].
    #[arg(long)]
    end: Option<String>,
    /// Generator threads, each writing whole nodes (0: one per core).
    #[arg(long, default_value_t = 0)]
    threads: usize,
}

impl GenSyntheticArgs {
    /// The generator's spec for these flags.
    fn spec(&self) -> synth::SynthSpec {
        synth::SynthSpec {
            rows: self.rows,
            nodes: self.nodes,
            span_secs: self.span_secs,
            seed: self.seed,
            rows_per_file: self.rows_per_file,
            slow_node: self.slow_node.clone(),
            throttled_node: self.throttled_node.clone(),
            faulty_node: self.faulty_node.clone(),
            tenant_phases: !self.quiet,
            burst_runs: self.burst_runs.max(1),
            ..Default::default()
        }
    }
}

/// Writes `s` and a newline to stdout; a closed pipe (`| head`) is not an error.
fn emit(s: &str) -> Result<()> {
    emit_with(|w| w.write_all(s.as_bytes()))
}

/// Writes what `write` writes, then a newline, through a buffered stdout
/// (output need not be built as one string first); a closed pipe is not
/// an error.
fn emit_with(write: impl FnOnce(&mut dyn Write) -> std::io::Result<()>) -> Result<()> {
    let mut out = std::io::BufWriter::with_capacity(1 << 16, std::io::stdout().lock());
    match write(&mut out)
        .and_then(|()| writeln!(out))
        .and_then(|()| out.flush())
    {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        r => r.context("failed to write to stdout"),
    }
}

async fn open(d: &DataArgs, table: TableKind) -> Result<source::Dataset> {
    let opts = OpenOptions {
        s3_endpoint: d.s3_endpoint.clone(),
        table,
        engine: d.engine()?,
    };
    Ok(source::open(&d.data, &opts).await?)
}

/// Counts what the command will count and refuses an empty selection with
/// its reason (see `runs::RunCounts::check`).
async fn counts(ds: &source::Dataset, filter: Option<&str>, all_runs: bool) -> Result<RunCounts> {
    let user = pred::where_sql(filter, ds.hive, true)?;
    let c = runs::count(&ds.ctx, &user, all_runs).await?;
    c.check(&ds.location, filter)?;
    Ok(c)
}

/// The probes a command reads: what it will count (see [`counts`]) and the
/// WHERE clause it runs with (the user's filter, arrivals only unless
/// `all_runs`).
async fn select(
    ds: &source::Dataset,
    filter: Option<&str>,
    all_runs: bool,
) -> Result<(RunCounts, String)> {
    let c = counts(ds, filter, all_runs).await?;
    let f = pred::where_sql(filter, ds.hive, all_runs)?;
    Ok((c, f))
}

/// Opens the probes table of `data` and [`select`]s from it.
async fn open_probes(
    data: &DataArgs,
    filter: Option<&str>,
    all_runs: bool,
) -> Result<(source::Dataset, RunCounts, String)> {
    let ds = open(data, TableKind::Probes).await?;
    let (c, f) = select(&ds, filter, all_runs).await?;
    Ok((ds, c, f))
}

/// Prints `out` and says which runs were counted: as its last line for a
/// table, on stderr for JSON and CSV (which must stay parseable).
fn emit_with_runs(out: &str, format: Format, c: &RunCounts) -> Result<()> {
    if format == Format::Table {
        emit(&format!("{out}\n{}", c.describe()))
    } else {
        eprintln!("{}", c.describe());
        emit(out)
    }
}

/// Opens the probes of `data` for `blame`/`whatif` (only the files of the
/// `--since/--until` range when one is given) and reads their arrival rows.
async fn tenancy_rows(
    data: &DataArgs,
    scope: &ScopeArgs,
) -> Result<(String, Vec<tenancy::Arrival>)> {
    let range = tenancy::time_range(scope.since.as_deref(), scope.until.as_deref())?;
    let ds = match range {
        None => open(data, TableKind::Probes).await?,
        Some((start_ns, end_ns)) => {
            let ropts = source::RangeOptions {
                open: OpenOptions {
                    s3_endpoint: data.s3_endpoint.clone(),
                    table: TableKind::Probes,
                    engine: data.engine()?,
                },
                range: source::TimeRange { start_ns, end_ns },
                parallel: std::thread::available_parallelism()
                    .map_or(4, std::num::NonZeroUsize::get),
                strict: true,
                name_pruning: true,
                memory_limit: None,
            };
            source::open_range(&data.data, &ropts).await?.ds
        }
    };
    let rows = tenancy::load(&ds.ctx, &ds.columns, &tenancy::where_sql(range)).await?;
    Ok((ds.location, rows))
}

/// Threads for rollup reads: the cores.
fn parallelism() -> usize {
    std::thread::available_parallelism().map_or(4, std::num::NonZeroUsize::get)
}

/// `--where START..END` as a time range (RFC 3339 both ends), if it is one.
fn time_range(filter: &str) -> Option<source::TimeRange> {
    let (a, b) = filter.split_once("..")?;
    let p = |x: &str| {
        chrono::DateTime::parse_from_rfc3339(x.trim())
            .ok()?
            .timestamp_nanos_opt()
    };
    let (start_ns, end_ns) = (p(a)?, p(b)?);
    (end_ns > start_ns).then_some(source::TimeRange { start_ns, end_ns })
}

/// Prints `out` with the data source: a last line for a table, a `source`
/// field in every JSON object (stderr for CSV).
fn emit_with_source(out: &str, format: Format, src: &DataSource) -> Result<()> {
    match format {
        Format::Table => emit(&format!("{out}\n{}", src.line())),
        Format::Json => emit(&with_source_field(out, src)),
        Format::Csv => {
            eprintln!("{}", src.line());
            emit(out)
        }
    }
}

/// Adds `"source": {...}` to each object of a JSON array (or to the object).
fn with_source_field(json: &str, src: &DataSource) -> String {
    let Ok(mut v) = serde_json::from_str::<serde_json::Value>(json) else {
        return json.to_string();
    };
    let s = serde_json::to_value(src).unwrap_or(serde_json::Value::Null);
    match &mut v {
        serde_json::Value::Array(items) => {
            for i in items {
                if let Some(o) = i.as_object_mut() {
                    o.insert("source".into(), s.clone());
                }
            }
        }
        serde_json::Value::Object(o) => {
            o.insert("source".into(), s);
        }
        _ => {}
    }
    serde_json::to_string_pretty(&v).unwrap_or_else(|_| json.to_string())
}

/// Raw rows or rollups for `data` over `range` (see `rollup::choose`), with
/// the root to read rollups from. On a Ballista cluster rollup questions
/// read raw rows (`rollup::ON_CLUSTER`); a location rollups cannot use
/// reads raw rows too (the raw path then says what is wrong with it).
fn choose_source(
    data: &DataArgs,
    range: Option<source::TimeRange>,
    args: &SourceArgs,
    raw_only: Option<&str>,
    policy: rollup::Policy,
) -> Result<(DataSource, Option<rollup::RollupRoot>)> {
    let raw_only = raw_only.or(data.engine()?.is_remote().then_some(rollup::ON_CLUSTER));
    match rollup::RollupRoot::new(&data.data, data.s3_endpoint.clone()) {
        Ok(root) => {
            // Listing an object store blocks: keep the runtime's I/O going.
            let src = tokio::task::block_in_place(|| {
                rollup::choose(&root, range, args, raw_only, policy)
            });
            Ok((src, Some(root)))
        }
        Err(e) => Ok((DataSource::raw_because(e.to_string()), None)),
    }
}

/// The raw report (the path before rollups), naming its source.
async fn report_raw(
    data: DataArgs,
    filter: Option<String>,
    by: Option<String>,
    format: Format,
    runs: RunsArgs,
    approx: bool,
    src: DataSource,
) -> Result<ExitCode> {
    let ds = open(&data, TableKind::Probes).await?;
    let (c, f) = select(&ds, filter.as_deref(), runs.all_runs).await?;
    let by = match by {
        Some(b) => pred::columns(&b)?,
        None => report::default_by(c.with_tenants > 0),
    };
    let rows = if approx {
        report::approx(&ds.ctx, &by, &f).await?
    } else {
        report::exact(&ds.ctx, &by, &f, Some(c.counted())).await?
    };
    let out = report::render(&rows, &by, format);
    if format == Format::Table {
        emit(&format!("{out}\n{}\n{}", c.describe(), src.line()))?;
    } else {
        eprintln!("{}", c.describe());
        emit_with_source(&out, format, &src)?;
    }
    Ok(ExitCode::SUCCESS)
}

async fn run(cli: Cli) -> Result<ExitCode> {
    match cli.cmd {
        Cmd::Report {
            data,
            filter,
            by,
            format,
            table,
            runs,
            approx,
            source,
        } => {
            if table == TableKind::Probes {
                let range = filter.as_deref().and_then(time_range);
                let raw_only = if runs.all_runs {
                    Some("--all-runs needs raw rows")
                } else if filter.is_some() && range.is_none() {
                    Some("a SQL --where needs raw rows")
                } else {
                    None
                };
                let (src, root) =
                    choose_source(&data, range, &source, raw_only, rollup::Policy::LongRanges)?;
                if let (Some(root), "rollups") = (root, src.kind) {
                    let by = match by {
                        Some(b) => pred::columns(&b)?,
                        None => rollup::report::DEFAULT_BY
                            .iter()
                            .map(|s| s.to_string())
                            .collect(),
                    };
                    let (t, stats) = tokio::task::block_in_place(|| {
                        rollup::report::report(&root, &by, range, parallelism())
                    })?;
                    if t.rows.is_empty() {
                        bail!("no arrival runs in the rollups under {}", root.display());
                    }
                    let src = DataSource::rollups(src.why, &stats);
                    emit_with_source(&t.render(format), format, &src)?;
                    return Ok(ExitCode::SUCCESS);
                }
                return report_raw(data, filter, by, format, runs, approx, src).await;
            }
            let ds = open(&data, table).await?;
            if table == TableKind::Health {
                let by = pred::columns(by.as_deref().unwrap_or(report::HEALTH_DEFAULT_BY))?;
                let f = pred::where_sql(filter.as_deref(), ds.hive, true)?;
                let t = report::health(&ds.ctx, &by, &f).await?;
                if t.rows.is_empty() {
                    bail!(
                        "no rows in {} match --where {}",
                        ds.location,
                        filter.unwrap_or_default()
                    );
                }
                let note = format!("health verdicts: {} rows", ds.total_rows);
                if format == Format::Table {
                    emit(&format!("{}\n{note}", t.render(format)))?;
                } else {
                    eprintln!("{note}");
                    emit(&t.render(format))?;
                }
                return Ok(ExitCode::SUCCESS);
            }
            report_raw(data, filter, by, format, runs, approx, DataSource::raw()).await?;
        }
        Cmd::Compare {
            data,
            baseline,
            against,
            split_by_occupancy,
            filter,
            format,
            runs,
            source,
        } => {
            let ranges = match (&baseline, &against) {
                (Some(b), Some(a)) => time_range(b).zip(time_range(a)),
                _ => None,
            };
            let raw_only = if runs.all_runs {
                Some("--all-runs needs raw rows")
            } else if filter.is_some() {
                Some("a --where needs raw rows")
            } else if !split_by_occupancy && ranges.is_none() {
                Some("SQL sides need raw rows")
            } else {
                None
            };
            let span = ranges.map(|(b, a)| source::TimeRange {
                start_ns: b.start_ns.min(a.start_ns),
                end_ns: b.end_ns.max(a.end_ns),
            });
            let (src, root) =
                choose_source(&data, span, &source, raw_only, rollup::Policy::LongRanges)?;
            if let (Some(root), "rollups") = (root, src.kind) {
                let sides = match ranges {
                    Some((b, a)) => rollup::compare::Sides::Ranges(b, a),
                    None => rollup::compare::Sides::Occupancy,
                };
                let (blocks, stats) = tokio::task::block_in_place(|| {
                    rollup::compare::compare(&root, sides, parallelism())
                })?;
                let src = DataSource::rollups(src.why, &stats);
                emit_with_source(&compare::render(&blocks, format), format, &src)?;
                return Ok(ExitCode::SUCCESS);
            }
            let (ds, c, common) = open_probes(&data, filter.as_deref(), runs.all_runs).await?;
            let blocks = if split_by_occupancy {
                compare::split_by_occupancy(&ds.ctx, &common).await?
            } else {
                let (Some(b), Some(a)) = (baseline, against) else {
                    bail!(
                        "--baseline and --against are both required without --split-by-occupancy"
                    );
                };
                let b = pred::to_sql(&b, ds.hive)?;
                let a = pred::to_sql(&a, ds.hive)?;
                vec![
                    compare::compare(
                        &ds.ctx,
                        &format!("{common} AND {b}"),
                        &format!("{common} AND {a}"),
                        "baseline",
                        "against",
                    )
                    .await?,
                ]
            };
            let out = compare::render(&blocks, format);
            if format == Format::Table {
                emit(&format!("{out}\n{}\n{}", c.describe(), src.line()))?;
            } else {
                eprintln!("{}", c.describe());
                emit_with_source(&out, format, &src)?;
            }
        }
        Cmd::Fleet {
            data,
            mut opts,
            format,
            runs,
            source,
        } => {
            if format == Format::Csv {
                bail!("fleet supports --format table or json");
            }
            opts.all_runs = runs.all_runs;
            let now = chrono::Utc::now()
                .timestamp_nanos_opt()
                .context("the clock is outside the timestamp range")?;
            let plan = fleet::Plan::from_args(&opts, now)?;
            let parallel = opts.parallel.unwrap_or_else(|| {
                std::thread::available_parallelism().map_or(4, std::num::NonZeroUsize::get)
            });
            if parallel == 0 {
                bail!("--parallel must be at least 1");
            }
            let raw_only = if runs.all_runs {
                Some("--all-runs needs raw rows")
            } else if opts.filter.is_some() {
                Some("--where needs raw rows")
            } else {
                None
            };
            let (src, root) = choose_source(
                &data,
                Some(plan.scan_range()),
                &source,
                raw_only,
                rollup::Policy::WhenCovered,
            )?;
            if let (Some(root), "rollups") = (root, src.kind) {
                let (res, _) = tokio::task::block_in_place(|| {
                    rollup::fleet::evaluate(&root, &opts, &plan, parallel, &src.why)
                })?;
                if format == Format::Json {
                    // Streamed: the JSON of 80,000 GPUs is ~180 MB.
                    emit_with(|w| fleet::write_json(&res, w))?;
                } else {
                    emit(&fleet::render(&res, format))?;
                }
                return Ok(ExitCode::from(res.exit_code()));
            }
            let ropts = source::RangeOptions {
                open: OpenOptions {
                    s3_endpoint: data.s3_endpoint.clone(),
                    table: TableKind::Probes,
                    engine: data.engine()?,
                },
                range: plan.scan_range(),
                parallel,
                strict: opts.strict,
                name_pruning: !opts.no_name_pruning,
                memory_limit: opts.memory_limit,
            };
            let rd = source::open_range(&data.data, &ropts).await?;
            let mut res =
                fleet::evaluate(&rd.ds.ctx, &opts, &plan, rd.stats, &rd.newest_file_by_node)
                    .await?;
            res.source = src;
            let c = RunCounts {
                rows: res.runs.rows,
                arrivals: res.runs.arrivals,
                all_runs: runs.all_runs,
                with_tenants: 0,
            };
            // Only burst runs (no --all-runs) is bad input, as in every
            // other command. A range with no file at all is a red check
            // ("no GPU has a run"): the agents or the shipping stopped.
            if res.runs.rows > 0 {
                c.check(&data.data, None)?;
            }
            emit_with_runs(&fleet::render(&res, format), format, &c)?;
            return Ok(ExitCode::from(res.exit_code()));
        }
        Cmd::Sql {
            data,
            query: q,
            format,
            table,
        } => {
            let ds = open(&data, table).await?;
            let t = query::run(&ds.ctx, &q).await?;
            emit(&t.render(format))?;
        }
        Cmd::Plot {
            data,
            out,
            kind,
            filter,
            by,
            runs,
            rolling_runs,
            font,
            source,
        } => {
            let range = filter.as_deref().and_then(time_range);
            let raw_only = if kind != plot::Kind::Timeline {
                Some("only the timeline is drawn from rollups")
            } else if runs.all_runs {
                Some("--all-runs needs raw rows")
            } else if filter.is_some() && range.is_none() {
                Some("a SQL --where needs raw rows")
            } else {
                None
            };
            let (src, root) =
                choose_source(&data, range, &source, raw_only, rollup::Policy::LongRanges)?;
            if let (Some(root), "rollups") = (root, src.kind) {
                let by = match by.as_deref() {
                    Some(b) => pred::columns(b)?,
                    None => ["node", "gpu_uuid", "kernel"].map(String::from).to_vec(),
                };
                let (series, stats) = tokio::task::block_in_place(|| {
                    rollup::timeline::series(&root, &by, range, parallelism())
                })?;
                let src = DataSource::rollups(src.why, &stats);
                let opts = plot::PlotOptions {
                    out: out.clone(),
                    kind,
                    rolling_runs,
                    font,
                    by: Some(by),
                    runs_note: "rollups".into(),
                };
                plot::draw_timeline(&series, &opts, "arrival runs, from rollups")?;
                eprintln!("wrote {}; {}", out.display(), src.line());
                return Ok(ExitCode::SUCCESS);
            }
            let (ds, c, f) = open_probes(&data, filter.as_deref(), runs.all_runs).await?;
            let by = by.as_deref().map(pred::columns).transpose()?;
            let opts = plot::PlotOptions {
                out: out.clone(),
                kind,
                rolling_runs,
                font,
                by,
                runs_note: c.short(),
            };
            plot::draw(&ds.ctx, &f, &opts).await?;
            eprintln!("wrote {}; {}; {}", out.display(), c.describe(), src.line());
        }
        Cmd::Rollup {
            data,
            s3_endpoint,
            to,
            from_raw,
            now,
            filter,
        } => {
            if from_raw && data.contains("://") {
                bail!(
                    "slicetrace rollup --from-raw works on a local directory, not {data}: \
                     build the minute rollups where the raw files are, then ship them"
                );
            }
            if from_raw {
                let ds = open(
                    &DataArgs {
                        data: data.clone(),
                        s3_endpoint: None,
                        engine: "local".into(),
                    },
                    TableKind::Probes,
                )
                .await?;
                let root = rollup::data_root(&data)
                    .context("slicetrace rollup --from-raw works on a local directory")?;
                let f = pred::where_sql(filter.as_deref(), ds.hive, true)?;
                let r = rollup::compact::from_raw(&ds.ctx, &f, &root).await?;
                emit(&serde_json::to_string_pretty(&r).context("json")?)?;
                return Ok(ExitCode::SUCCESS);
            }
            match to.as_deref() {
                Some("hour") => {}
                Some(other) => bail!("--to {other}: only `hour` is supported"),
                None => bail!("give --to hour or --from-raw"),
            }
            let now_ns = match now.as_deref() {
                None => chrono::Utc::now(),
                Some(n) => chrono::DateTime::parse_from_rfc3339(n)
                    .with_context(|| format!("bad --now {n:?}: expected RFC 3339"))?
                    .with_timezone(&chrono::Utc),
            }
            .timestamp_nanos_opt()
            .context("--now is outside the timestamp range")?;
            let root = rollup::RollupRoot::new(&data, s3_endpoint)?;
            let r = tokio::task::spawn_blocking(move || rollup::compact::to_hour_at(&root, now_ns))
                .await
                .context("compaction thread failed")??;
            emit(&serde_json::to_string_pretty(&r).context("json")?)?;
        }
        Cmd::GenRollups {
            out,
            nodes,
            gpus_per_node,
            span_secs,
            end,
            hours,
            file_secs,
            arrivals_per_min,
            draws,
            seed,
            threads,
        } => {
            let end = match end.as_deref() {
                None => chrono::Utc::now(),
                Some(e) => chrono::DateTime::parse_from_rfc3339(e)
                    .with_context(|| format!("bad --end {e:?}: expected RFC 3339"))?
                    .with_timezone(&chrono::Utc),
            };
            let s = rollup::synth::RollupSynth {
                nodes,
                gpus_per_node: gpus_per_node.max(1),
                end_ns: end.timestamp_nanos_opt().context("--end out of range")?,
                span_secs,
                hours,
                file_secs,
                arrivals_per_min,
                draws,
                seed,
                threads,
            };
            let (files, rows) =
                tokio::task::spawn_blocking(move || rollup::synth::generate(&out, &s))
                    .await
                    .context("generator thread failed")??;
            eprintln!("wrote {files} files, {rows} rollup rows");
        }
        Cmd::Blame {
            data,
            scope,
            format,
        } => {
            let (location, rows) = tenancy_rows(&data, &scope).await?;
            let opts = blame::BlameOptions {
                gpu: scope.gpu.clone(),
            };
            // The bootstrap is CPU work: off the async runtime.
            let res = tokio::task::spawn_blocking(move || blame::blame(&rows, &location, &opts))
                .await
                .context("blame thread failed")??;
            emit(&blame::render(&res, format))?;
        }
        Cmd::Whatif {
            data,
            scope,
            tenants,
            kernel_ms,
            slo_p99_ms,
            fit_tenants,
            kernel,
            count_by,
            exclude_tenant,
            format,
        } => {
            if format == Format::Csv {
                bail!("whatif supports --format table or json");
            }
            let fit_tenants = fit_tenants
                .as_deref()
                .map(whatif::parse_fit_tenants)
                .transpose()?;
            let opts = whatif::WhatifOptions {
                count_by,
                exclude: exclude_tenant,
                tenants,
                kernel_ms,
                slo_p99_ms,
                fit_tenants,
                gpu: scope.gpu.clone(),
                kernel,
            };
            let (location, rows) = tenancy_rows(&data, &scope).await?;
            let res = tokio::task::spawn_blocking(move || whatif::whatif(&rows, &location, &opts))
                .await
                .context("whatif thread failed")??;
            emit(&whatif::render(&res, format)?)?;
        }
        Cmd::GenSynthetic(g) => {
            if g.nodes == 0 {
                bail!("--nodes must be at least 1");
            }
            if g.fleet_layout {
                let end = match g.end.as_deref() {
                    None => chrono::Utc::now(),
                    Some(e) => chrono::DateTime::parse_from_rfc3339(e)
                        .with_context(|| format!("bad --end {e:?}: expected RFC 3339"))?
                        .with_timezone(&chrono::Utc),
                };
                let l = synth::FleetLayout {
                    nodes: g.nodes,
                    gpus_per_node: g.gpus_per_node.max(1),
                    end_ns: end
                        .timestamp_nanos_opt()
                        .context("--end is outside the timestamp range")?,
                    span_secs: g.span_secs,
                    dense_secs: g.dense_secs,
                    file_secs: g.file_secs.max(1),
                    rate_per_gpu: g.rate_per_gpu,
                    sparse_rows_per_gpu: g.sparse_rows_per_gpu,
                    seed: g.seed,
                    threads: if g.threads == 0 {
                        std::thread::available_parallelism().map_or(1, |n| n.get())
                    } else {
                        g.threads
                    },
                    slow: None,
                    rollups: !g.no_rollups,
                };
                let started = std::time::Instant::now();
                let w = tokio::task::spawn_blocking(move || synth::generate_fleet(&g.out, &l))
                    .await
                    .context("generator thread failed")??;
                let secs = started.elapsed().as_secs_f64();
                eprintln!(
                    "wrote {} files, {} rows ({:.0} rows/s); {} rollup files, {} rollup rows",
                    w.files,
                    w.rows,
                    w.rows as f64 / secs.max(1e-9),
                    w.rollup_files,
                    w.rollup_rows
                );
                return Ok(ExitCode::SUCCESS);
            }
            let spec = g.spec();
            let spec_rows = spec.rows / spec.nodes.max(1) as u64 * spec.nodes as u64;
            let threads = g.threads;
            let started = std::time::Instant::now();
            let files = tokio::task::spawn_blocking(move || {
                synth::generate_with_threads(&g.out, &spec, threads)
            })
            .await
            .context("generator thread failed")??;
            let secs = started.elapsed().as_secs_f64();
            eprintln!(
                "wrote {files} files, {} rows in {secs:.2} s ({:.0} rows/s)",
                spec_rows,
                spec_rows as f64 / secs.max(1e-9)
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SLICETRACE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: failed to start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match rt.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
