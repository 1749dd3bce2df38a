//! `slicetrace-agent`: the node agent's command line.
//!
//! `run` probes every GPU until SIGTERM/SIGINT or `--duration`, then prints
//! a tail table; `check-config` validates a config file. Usage and config
//! errors exit with code 2 and a one-line reason; runtime failures with 1.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use slicetrace_agent::agent;
use slicetrace_agent::config::{CliFlags, Config, Deprecated, LogFormat};
use slicetrace_agent::consumers::summary::{summary_json_rows, tail_table};

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
    Run(Box<RunArgs>),
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
    /// The flags that override the file and the environment.
    #[command(flatten)]
    flags: CliFlags,
    /// Stop cleanly after this long (e.g. 30s, 10m); default: until SIGTERM/SIGINT.
    #[arg(long, value_parser = humantime::parse_duration)]
    duration: Option<Duration>,
    /// Also write the exit tail table as JSON to this file.
    #[arg(long)]
    summary_json: Option<PathBuf>,
    /// Log format: text or json (default: $SLICETRACE_LOG_FORMAT, else the
    /// config's `log_format`, else text). The filter is $SLICETRACE_LOG.
    #[arg(long)]
    log_format: Option<LogFormat>,
}

/// Starts logging to stderr: JSON, or text with colour only when stderr is
/// a terminal (a pod's log is a file, where escape codes are noise).
fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SLICETRACE_LOG").unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(
            "info,hyper=warn,hyper_util=warn,h2=warn,tonic=warn,tower=warn,kube=warn,kube_runtime=warn,opentelemetry=warn,opentelemetry_sdk=warn,opentelemetry_otlp=warn,reqwest=warn,rustls=warn",
        )
    });
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    match format {
        LogFormat::Json => b.json().init(),
        LogFormat::Text => b
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
    }
}

/// The log format: the flag, else `SLICETRACE_LOG_FORMAT`, else the config.
fn log_format(flag: Option<LogFormat>, cfg: Option<&Config>) -> Result<LogFormat, Usage> {
    if let Some(f) = flag {
        return Ok(f);
    }
    if let Some(v) = std::env::var("SLICETRACE_LOG_FORMAT")
        .ok()
        .filter(|v| !v.is_empty())
    {
        return v
            .parse()
            .map_err(|m: String| Usage(anyhow::anyhow!("config: SLICETRACE_LOG_FORMAT: {m}")));
    }
    Ok(cfg.map_or(LogFormat::Text, |c| c.log_format))
}

/// Usage errors exit 2; everything else 1.
struct Usage(anyhow::Error);

/// Loads the config (file < env < flags) and validates it. Deprecated keys
/// come back to be logged once logging is set up (its format is in the file).
fn load_config(file: Option<&PathBuf>, o: &CliFlags) -> Result<(Config, Vec<Deprecated>), Usage> {
    let (mut cfg, deprecated) = match file {
        Some(p) => {
            Config::from_file_reporting(p).map_err(|e| Usage(anyhow::anyhow!("config: {e}")))?
        }
        None => (Config::default(), Vec::new()),
    };
    cfg.apply_env(&|k| std::env::var(k).ok())
        .map_err(|e| Usage(anyhow::anyhow!("config: {e}")))?;
    cfg.apply_flags(o);
    cfg.validate()
        .map_err(|e| Usage(anyhow::anyhow!("config: {e}")))?;
    Ok((cfg, deprecated))
}

fn main() {
    // Before any thread allocates: see `memory` (host-memory budget).
    slicetrace_agent::memory::limit_arenas(2);
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            std::process::exit(code);
        }
    };
    let code = match cli.cmd {
        Cmd::CheckConfig { file } => match load_config(Some(&file), &CliFlags::default()) {
            Ok((cfg, deprecated)) => {
                if !deprecated.is_empty() {
                    init_logs(log_format(None, Some(&cfg)).unwrap_or_default());
                    for d in &deprecated {
                        d.warn();
                    }
                }
                println!("{}: ok", file.display());
                0
            }
            Err(Usage(e)) => {
                eprintln!("error: {e:#}");
                2
            }
        },
        Cmd::Run(args) => {
            match load_config(args.config.as_ref(), &args.flags).and_then(|(cfg, deprecated)| {
                let f = log_format(args.log_format, Some(&cfg))?;
                Ok((cfg, deprecated, f))
            }) {
                Err(Usage(e)) => {
                    // Logging is not set up yet: the format may be the error.
                    eprintln!("error: {e:#}");
                    2
                }
                Ok((cfg, deprecated, format)) => {
                    init_logs(format);
                    for d in &deprecated {
                        d.warn();
                    }
                    match run(cfg, args.duration, args.summary_json.as_deref()) {
                        Ok(()) => 0,
                        Err(e) => {
                            eprintln!("error: {e:#}");
                            1
                        }
                    }
                }
            }
        }
    };
    let parked = slicetrace_agent::probe::driver::parked_now();
    if parked > 0 {
        // A backend abandoned with a hung run is still inside CUDA on its
        // runner thread: the CUDA driver's exit handlers would tear its
        // context down under it (a SIGSEGV at exit on an H100). Everything
        // the agent writes is flushed and closed by now; skip the handlers.
        tracing::warn!(
            parked,
            "exiting with abandoned backends still inside a hung run: CUDA is not torn down"
        );
        use std::io::Write as _;
        let _ = std::io::stdout().flush();
        let _ = std::io::stderr().flush();
        // SAFETY: `_exit` ends the process at once; no Rust state is used
        // after it, and every sink was stopped and flushed by `run`.
        #[allow(unsafe_code)]
        unsafe {
            libc::_exit(code)
        }
    }
    std::process::exit(code);
}

fn run(
    cfg: Config,
    duration: Option<Duration>,
    summary_json: Option<&std::path::Path>,
) -> Result<()> {
    let agent = agent::build(cfg)?;
    let node = agent.node.clone();
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
        agent.run(shutdown, |_| {}).await
    })?;
    rt.shutdown_timeout(Duration::from_secs(1));
    println!("{}", tail_table(&node, &report.summary));
    if let Some(p) = summary_json {
        std::fs::write(
            p,
            serde_json::to_vec_pretty(&summary_json_rows(&report.summary))?,
        )
        .with_context(|| format!("failed to write {}", p.display()))?;
    }
    anyhow::ensure!(
        report.clean_shutdown,
        "shutdown deadline exceeded: some output may not have been flushed"
    );
    Ok(())
}
