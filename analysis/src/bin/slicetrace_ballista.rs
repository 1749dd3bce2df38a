//! `slicetrace-ballista`: an Apache Ballista scheduler or executor for
//! `slicetrace --engine df://HOST:PORT`.
//!
//! Ballista's own scheduler and executor (55.0), with the object stores and
//! functions slicetrace's queries need (see
//! `slicetrace_analysis::engine::cluster`): files under `s3://` are read
//! with the standard `AWS_*` variables of this process (`AWS_ENDPOINT_URL`
//! for a non-AWS endpoint), local paths as they are.
//!
//! Exit codes: 0 after SIGTERM or Ctrl-C, 2 for bad flags, 1 when the
//! scheduler or executor fails (port taken, scheduler unreachable).

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use slicetrace_analysis::engine::cluster::{self, ExecutorOptions, SchedulerOptions};

#[derive(Debug, Parser)]
#[command(
    name = "slicetrace-ballista",
    version,
    about = "Ballista scheduler or executor for `slicetrace --engine df://HOST:PORT`"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Runs a scheduler: clients send queries to it, executors poll it for tasks.
    ///
    /// Prints `listening on ADDR` on stdout once its port is bound.
    Scheduler {
        /// Listen address of the gRPC port (also `/healthz` and `/readyz`);
        /// port 0 picks a free one.
        #[arg(long, default_value = "0.0.0.0:50050")]
        listen: SocketAddr,
        /// Host name under which executors and clients reach it.
        #[arg(long, default_value = "localhost")]
        external_host: String,
    },
    /// Runs an executor: polls the scheduler for tasks, reads the files,
    /// serves its partitions on its Arrow Flight port.
    Executor {
        /// Scheduler host.
        #[arg(long, default_value = "localhost")]
        scheduler_host: String,
        /// Scheduler port.
        #[arg(long, default_value_t = 50050)]
        scheduler_port: u16,
        /// Seconds to keep retrying the scheduler at start (0: try once).
        #[arg(long, default_value_t = 30)]
        scheduler_connect_timeout_secs: u16,
        /// Address the Flight and gRPC ports bind to.
        #[arg(long, default_value = "0.0.0.0")]
        bind_host: String,
        /// Host name that clients and other executors use for this one
        /// (in Kubernetes: the pod IP) [default: the bind host].
        #[arg(long)]
        external_host: Option<String>,
        /// Arrow Flight port: shuffle and result partitions are fetched here.
        #[arg(long, default_value_t = 50051)]
        flight_port: u16,
        /// gRPC port (Ballista binds it; pull scheduling does not use it).
        #[arg(long, default_value_t = 50052)]
        grpc_port: u16,
        /// Tasks at once [default: 0, the machine's cores].
        #[arg(long, default_value_t = 0)]
        vcores: usize,
        /// Directory for shuffle files and spills [default: a temporary one].
        #[arg(long)]
        work_dir: Option<String>,
    },
}

async fn run(cli: Cli) -> Result<()> {
    match cli.cmd {
        Cmd::Scheduler {
            listen,
            external_host,
        } => {
            let (addr, serve) = cluster::scheduler(SchedulerOptions {
                listen,
                external_host,
            })
            .await?;
            println!("listening on {addr}");
            serve.await.context("scheduler stopped")?;
        }
        Cmd::Executor {
            scheduler_host,
            scheduler_port,
            scheduler_connect_timeout_secs,
            bind_host,
            external_host,
            flight_port,
            grpc_port,
            vcores,
            work_dir,
        } => {
            cluster::executor(ExecutorOptions {
                bind_host,
                external_host,
                flight_port,
                grpc_port,
                scheduler_host,
                scheduler_port,
                scheduler_connect_timeout_secs,
                vcores,
                work_dir,
            })
            .await
            .context("executor stopped")?;
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SLICETRACE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        // Ballista's binaries use 32 MiB stacks: deep plans recurse.
        .thread_stack_size(32 * 1024 * 1024)
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: failed to start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}
