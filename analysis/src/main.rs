//! `slicetrace`: tail report, degradation compare, fleet health check, SQL and
//! plots over the agent's probes Parquet files (local or S3), on DataFusion.
//!
//! Exit codes: 0 success; 1 only from `fleet` when any GPU is degraded or
//! unhealthy; 2 for every error (bad flags, bad SQL, missing or bad data).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use slicetrace_analysis::output::Format;
use slicetrace_analysis::source::{self, OpenOptions};
use slicetrace_analysis::{compare, fleet, plot, pred, query, report, synth};

/// Arguments shared by every command that reads data.
#[derive(Debug, clap::Args)]
struct DataArgs {
    /// The agent's output directory (or its `probes/` child), or
    /// `s3://bucket/prefix`. S3 credentials and region come from the standard
    /// AWS_* variables.
    data: String,
    /// S3 endpoint URL (default: `AWS_ENDPOINT_URL`, else AWS). Plain http
    /// is allowed for loopback endpoints.
    #[arg(long, global = true)]
    s3_endpoint: Option<String>,
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
    /// Per-group tail-latency report.
    ///
    /// Percentiles are exact by default: linear interpolation between the
    /// closest ranks, r = q·(n−1), identical to DuckDB `quantile_cont` and
    /// PostgreSQL `percentile_cont`. Throughput is runs per second,
    /// count / (max(ts) − min(ts)). Jitter is p99/p50 of wall_ms. Tail queue
    /// share is Σ queue_ms / Σ wall_ms over the runs whose wall_ms is at or
    /// above the group's p99 of wall_ms (runs with a null queue_ms are left
    /// out): the part of the slowest 1 % spent waiting for a time slice.
    Report {
        #[command(flatten)]
        data: DataArgs,
        /// SQL predicate on the probes table, e.g. "node='n3' AND kernel='fft'",
        /// or a time range START..END (RFC 3339, END exclusive).
        #[arg(long = "where")]
        filter: Option<String>,
        /// Group-by columns, comma-separated.
        #[arg(long, default_value = "node,gpu_uuid,kernel")]
        by: String,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
        /// Use DataFusion's approx_percentile_cont (t-digest) instead of exact
        /// percentiles: bounded memory for huge scans.
        #[arg(long)]
        approx: bool,
    },
    /// Before/after degradation table per kernel and shape, for the event
    /// clock (gpu_ms) and the host clock (wall_ms).
    ///
    /// Factors are after/before. Throughput is work over time on each clock:
    /// Σ flops / Σ clock_ms, in TFLOP/s; its change is (after/before − 1)·100 %.
    /// With --split-by-occupancy the tenant count of a run is gpu_processes
    /// when known, else pod_count; the baseline is 0 tenants, compared with
    /// all rows with ≥1 tenant and then with each tenant count on its own.
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
        /// Output format (table or json).
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Fleet health check: a verdict per node and GPU; exit 1 when any GPU
    /// is degraded or unhealthy.
    Fleet {
        #[command(flatten)]
        data: DataArgs,
        #[command(flatten)]
        opts: fleet::FleetArgs,
        /// Output format (table or json).
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Runs any SQL with the data registered as table `probes`.
    Sql {
        #[command(flatten)]
        data: DataArgs,
        /// The query, e.g. "SELECT node, count(*) FROM probes GROUP BY node".
        query: String,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Draws a latency CDF or a rolling-p99 timeline to SVG or PNG.
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
        /// Runs per rolling-p99 window (timeline).
        #[arg(long, default_value_t = 200)]
        rolling_runs: usize,
        /// TTF/OTF font for PNG text (default: DejaVu Sans or Liberation Sans, found at run time).
        #[arg(long)]
        font: Option<PathBuf>,
    },
    /// Writes a synthetic probes dataset (Hive layout) for tests and benchmarks.
    GenSynthetic {
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
    },
}

/// Writes `s` and a newline to stdout; a closed pipe (`| head`) is not an error.
fn emit(s: &str) -> Result<()> {
    let mut out = std::io::stdout().lock();
    match writeln!(out, "{s}").and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        r => r.context("failed to write to stdout"),
    }
}

fn filter_sql(filter: Option<&str>, hive: bool) -> Result<String> {
    match filter {
        Some(f) if !f.trim().is_empty() => Ok(pred::to_sql(f, hive)?),
        _ => Ok("TRUE".to_string()),
    }
}

async fn open(d: &DataArgs) -> Result<source::Dataset> {
    let opts = OpenOptions {
        s3_endpoint: d.s3_endpoint.clone(),
    };
    Ok(source::open(&d.data, &opts).await?)
}

async fn run(cli: Cli) -> Result<ExitCode> {
    match cli.cmd {
        Cmd::Report {
            data,
            filter,
            by,
            format,
            approx,
        } => {
            let ds = open(&data).await?;
            let by = pred::columns(&by)?;
            let f = filter_sql(filter.as_deref(), ds.hive)?;
            let total = filter.is_none().then_some(ds.total_rows);
            let rows = if approx {
                report::approx(&ds.ctx, &by, &f).await?
            } else {
                report::exact(&ds.ctx, &by, &f, total).await?
            };
            if rows.is_empty() {
                bail!("no rows in {} match the filter", ds.location);
            }
            emit(&report::render(&rows, &by, format))?;
        }
        Cmd::Compare {
            data,
            baseline,
            against,
            split_by_occupancy,
            filter,
            format,
        } => {
            if format == Format::Csv {
                bail!("compare supports --format table or json");
            }
            let ds = open(&data).await?;
            let common = filter_sql(filter.as_deref(), ds.hive)?;
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
            emit(&compare::render(&blocks, format))?;
        }
        Cmd::Fleet { data, opts, format } => {
            if format == Format::Csv {
                bail!("fleet supports --format table or json");
            }
            let ds = open(&data).await?;
            let res = fleet::evaluate(&ds.ctx, &opts, ds.hive).await?;
            emit(&fleet::render(&res, format))?;
            if res.any_not_healthy() {
                return Ok(ExitCode::from(1));
            }
        }
        Cmd::Sql {
            data,
            query: q,
            format,
        } => {
            let ds = open(&data).await?;
            let t = query::run(&ds.ctx, &q).await?;
            emit(&t.render(format))?;
        }
        Cmd::Plot {
            data,
            out,
            kind,
            filter,
            rolling_runs,
            font,
        } => {
            let ds = open(&data).await?;
            let f = filter_sql(filter.as_deref(), ds.hive)?;
            let opts = plot::PlotOptions {
                out: out.clone(),
                kind,
                rolling_runs,
                font,
            };
            plot::draw(&ds.ctx, &f, &opts).await?;
            eprintln!("wrote {}", out.display());
        }
        Cmd::GenSynthetic {
            rows,
            nodes,
            out,
            span_secs,
            seed,
            rows_per_file,
            slow_node,
            throttled_node,
            faulty_node,
            quiet,
        } => {
            if nodes == 0 {
                bail!("--nodes must be at least 1");
            }
            let spec = synth::SynthSpec {
                rows,
                nodes,
                span_secs,
                seed,
                rows_per_file,
                slow_node,
                throttled_node,
                faulty_node,
                tenant_phases: !quiet,
                ..Default::default()
            };
            let files = tokio::task::spawn_blocking(move || synth::generate(&out, &spec))
                .await
                .context("generator thread failed")??;
            eprintln!("wrote {files} files");
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
