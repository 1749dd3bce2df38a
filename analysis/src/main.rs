//! `slicetrace`: tail report, degradation compare, fleet health check, SQL and
//! plots over the agent's probes Parquet files (local or S3), on DataFusion.
//!
//! `report`, `compare`, `fleet` and `plot` count arrival runs only unless
//! `--all-runs` is given (see `slicetrace_analysis::runs`), and each says
//! which runs it counted: a last line on stdout for tables, a line on stderr
//! for JSON, CSV and plots.
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
use slicetrace_analysis::output::Format;
use slicetrace_analysis::runs::{self, RunCounts};
use slicetrace_analysis::source::{self, OpenOptions, TableKind};
use slicetrace_analysis::{compare, fleet, plot, pred, query, report, synth};

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
    },
    /// Fleet health check: a state per node and GPU over the window that
    /// ends now (or --until), arrival runs unless --all-runs.
    ///
    /// Only the date= partitions and files of the window and the baseline
    /// period are listed and opened. States: healthy, unknown (too few runs),
    /// stale (no run in the window), degraded, unhealthy.
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
    },
    /// Writes a synthetic probes dataset (Hive layout) for tests and benchmarks.
    GenSynthetic(GenSyntheticArgs),
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
    /// --rows, --rows-per-file and the fault flags do not apply.
    #[arg(long)]
    fleet_layout: bool,
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
    let mut out = std::io::stdout().lock();
    match writeln!(out, "{s}").and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        r => r.context("failed to write to stdout"),
    }
}

async fn open(d: &DataArgs, table: TableKind) -> Result<source::Dataset> {
    let opts = OpenOptions {
        s3_endpoint: d.s3_endpoint.clone(),
        table,
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
        } => {
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
            emit_with_runs(&report::render(&rows, &by, format), format, &c)?;
        }
        Cmd::Compare {
            data,
            baseline,
            against,
            split_by_occupancy,
            filter,
            format,
            runs,
        } => {
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
            emit_with_runs(&compare::render(&blocks, format), format, &c)?;
        }
        Cmd::Fleet {
            data,
            mut opts,
            format,
            runs,
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
            let ropts = source::RangeOptions {
                open: OpenOptions {
                    s3_endpoint: data.s3_endpoint.clone(),
                    table: TableKind::Probes,
                },
                range: plan.scan_range(),
                parallel,
                strict: opts.strict,
                name_pruning: !opts.no_name_pruning,
                memory_limit: opts.memory_limit,
            };
            let rd = source::open_range(&data.data, &ropts).await?;
            let res = fleet::evaluate(&rd.ds.ctx, &opts, &plan, rd.stats, &rd.newest_file_by_node)
                .await?;
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
        } => {
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
            eprintln!("wrote {}; {}", out.display(), c.describe());
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
                };
                let (files, rows) =
                    tokio::task::spawn_blocking(move || synth::generate_fleet(&g.out, &l))
                        .await
                        .context("generator thread failed")??;
                eprintln!("wrote {files} files, {rows} rows");
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
