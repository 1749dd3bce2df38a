//! `slicetrace-agent`: the node agent's command line.
//!
//! `run` probes every GPU until SIGTERM/SIGINT or `--duration`, then prints
//! a tail table; `check-config` validates a config file. Usage and config
//! errors exit with code 2 and a one-line reason; runtime failures with 1.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use slicetrace_agent::agent::{self, AgentParts, BackendFactory};
use slicetrace_agent::config::{Config, Overrides};
use slicetrace_agent::health::LiveState;
use slicetrace_agent::internal_events::{error_chain, Counters};
use slicetrace_agent::telemetry::nvml::NvmlTelemetry;
use slicetrace_agent::telemetry::{NoTelemetry, TelemetrySource};
use slicetrace_probe::{open_backends, BackendKind, Preset};

#[derive(Parser, Debug)]
#[command(
    name = "slicetrace-agent",
    version,
    about = "Probes every GPU of this node with FFT and GEMM kernels, timed by CUDA events and the host clock"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run the agent.
    Run(RunArgs),
    /// Validate a config file and exit (0 valid, 2 invalid). Writes nothing.
    CheckConfig {
        /// The TOML file.
        file: PathBuf,
    },
}

#[derive(clap::Args, Debug)]
struct RunArgs {
    /// TOML config file (flags and SLICETRACE_* variables override it).
    #[arg(long, env = "SLICETRACE_CONFIG")]
    config: Option<PathBuf>,
    /// auto, cuda or cpu.
    #[arg(long)]
    backend: Option<BackendKind>,
    /// Where Parquet files and state go (default ./slicetrace-data).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Stop cleanly after this long (e.g. 30s, 10m); default: until SIGTERM/SIGINT.
    #[arg(long, value_parser = humantime::parse_duration)]
    duration: Option<Duration>,
    /// Mean time between probe cycles per GPU (e.g. 1s, 250ms).
    #[arg(long, value_parser = humantime::parse_duration)]
    interval: Option<Duration>,
    /// light or article.
    #[arg(long)]
    preset: Option<Preset>,
    /// OTLP collector URL (gRPC :4317 or HTTP :4318); OTEL_EXPORTER_OTLP_* also work.
    #[arg(long)]
    otlp_endpoint: Option<String>,
    /// /metrics listen address; empty disables.
    #[arg(long)]
    metrics_listen: Option<String>,
    /// Node name (default $NODE_NAME, else the host name).
    #[arg(long)]
    node_name: Option<String>,
    /// CPU pseudo-devices to probe on the CPU backend.
    #[arg(long)]
    cpu_devices: Option<u32>,
    /// Also write the exit tail table as JSON to this file.
    #[arg(long)]
    summary_json: Option<PathBuf>,
    /// Log format: text or json.
    #[arg(long, default_value = "text")]
    log_format: String,
}

fn init_logs(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SLICETRACE_LOG").unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(
            "info,hyper=warn,hyper_util=warn,h2=warn,tonic=warn,tower=warn,kube=warn,kube_runtime=warn,opentelemetry=warn,opentelemetry_sdk=warn,opentelemetry_otlp=warn,reqwest=warn,rustls=warn",
        )
    });
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    if json {
        b.json().init();
    } else {
        b.init();
    }
}

/// Usage errors exit 2; everything else 1.
struct Usage(anyhow::Error);

fn load_config(file: Option<&PathBuf>, o: &Overrides) -> Result<Config, Usage> {
    let mut cfg = match file {
        Some(p) => Config::from_file(p).map_err(|e| Usage(anyhow::anyhow!("config: {e}")))?,
        None => Config::default(),
    };
    cfg.apply_env(&|k| std::env::var(k).ok())
        .map_err(|e| Usage(anyhow::anyhow!("config: {e}")))?;
    cfg.apply_overrides(o);
    cfg.validate()
        .map_err(|e| Usage(anyhow::anyhow!("config: {e}")))?;
    Ok(cfg)
}

fn main() {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            std::process::exit(code);
        }
    };
    let code = match cli.cmd {
        Cmd::CheckConfig { file } => match load_config(Some(&file), &Overrides::default()) {
            Ok(_) => {
                println!("{}: ok", file.display());
                0
            }
            Err(Usage(e)) => {
                eprintln!("error: {e:#}");
                2
            }
        },
        Cmd::Run(args) => {
            init_logs(args.log_format == "json");
            let o = Overrides {
                backend: args.backend,
                data_dir: args.data_dir.clone(),
                interval: args.interval,
                preset: args.preset,
                otlp_endpoint: args.otlp_endpoint.clone(),
                metrics_listen: args.metrics_listen.clone(),
                node_name: args.node_name.clone(),
                cpu_devices: args.cpu_devices,
            };
            match load_config(args.config.as_ref(), &o) {
                Err(Usage(e)) => {
                    eprintln!("error: {e:#}");
                    2
                }
                Ok(cfg) => match run(cfg, args.duration, args.summary_json.as_deref()) {
                    Ok(()) => 0,
                    Err(e) => {
                        eprintln!("error: {e:#}");
                        1
                    }
                },
            }
        }
    };
    std::process::exit(code);
}

fn run(
    cfg: Config,
    duration: Option<Duration>,
    summary_json: Option<&std::path::Path>,
) -> Result<()> {
    let node = cfg.resolved_node_name();
    let cfg_for_spec = cfg.clone();
    let spec_for = move |b: &'static str| cfg_for_spec.probe_spec(b);
    let (mut backends, fallback) = open_backends(cfg.backend, &spec_for, cfg.cpu_devices)
        .map_err(|e| anyhow::anyhow!(error_chain(&e)))
        .context("no probe backend could be opened")?;
    if let Some(reason) = &fallback {
        tracing::warn!(reason = %error_chain(reason), "CUDA unavailable: falling back to the CPU backend");
    }
    if !cfg.devices.is_empty() {
        backends.retain(|b| cfg.devices.contains(&b.device().index));
    }
    anyhow::ensure!(
        !backends.is_empty(),
        "no device left to probe (devices = {:?})",
        cfg.devices
    );
    let on_cuda = backends.iter().all(|b| b.device().backend == "cuda");
    let telemetry: Arc<dyn TelemetrySource> = if on_cuda {
        match NvmlTelemetry::new(cfg.occupancy.proc_root.clone()) {
            Ok(t) => Arc::new(t),
            Err(e) => {
                tracing::warn!(error = %error_chain(&e), "NVML unavailable: NVML columns will be null");
                Arc::new(NoTelemetry)
            }
        }
    } else {
        tracing::info!("CPU backend: no NVML, so NVML columns are null");
        Arc::new(NoTelemetry)
    };
    for b in &backends {
        let d = b.device();
        tracing::info!(index = d.index, uuid = %d.uuid, name = ?d.name, backend = d.backend, "probing device");
    }
    let factory: Option<BackendFactory> = if on_cuda {
        let spec = cfg.probe_spec("cuda");
        Some(Arc::new(move |i| {
            slicetrace_probe::cuda::CudaBackend::new(i, &spec)
                .map(|b| Box::new(b) as Box<dyn slicetrace_probe::ProbeBackend>)
        }))
    } else {
        None
    };
    let parts = AgentParts {
        node: node.clone(),
        backends,
        factory,
        telemetry,
        occupancy: None,
        counters: Arc::new(Counters::default()),
        live: Arc::new(LiveState::default()),
        config: cfg,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("slicetrace-rt")
        .build()
        .context("failed to start the async runtime")?;
    let report = rt.block_on(async move {
        let shutdown = async move {
            let mut term =
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::error!(error = %e, "cannot listen for SIGTERM");
                        std::future::pending::<()>().await;
                        unreachable!()
                    }
                };
            let timer = async {
                match duration {
                    Some(d) => tokio::time::sleep(d).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM received"),
                _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
                _ = timer => tracing::info!("duration elapsed"),
            }
        };
        agent::run(parts, shutdown, |_| {}).await
    })?;
    rt.shutdown_timeout(Duration::from_secs(1));
    print_tail_table(&node, &report.summary);
    if let Some(p) = summary_json {
        let rows: Vec<serde_json::Value> = report
            .summary
            .iter()
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
            .collect();
        std::fs::write(p, serde_json::to_vec_pretty(&rows)?)
            .with_context(|| format!("failed to write {}", p.display()))?;
    }
    anyhow::ensure!(
        report.clean_shutdown,
        "shutdown deadline exceeded: some output may not have been flushed"
    );
    Ok(())
}

fn print_tail_table(node: &str, rows: &[slicetrace_agent::pipeline::SummaryRow]) {
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
            r.kernel.clone(),
            r.tenants.map_or("-".into(), |t| t.to_string()),
            r.runs.to_string(),
            f(g.0),
            f(g.1),
            f(w.0),
            f(w.1),
            f(q.0),
            f(q.1),
        ]);
    }
    println!("slicetrace tail table, node {node} (gpu = CUDA events / CPU compute; wall = host clock; queue = wall - gpu; tenants = other compute processes on the GPU)");
    println!("{t}");
}
