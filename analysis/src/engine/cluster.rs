//! The two halves of a Ballista cluster as slicetrace runs them (the
//! `slicetrace-ballista scheduler` and `executor` commands): Ballista 55's
//! own scheduler and executor, given
//! * an object store registry ([`EnvStores`]) that builds an S3 store per
//!   bucket from the standard `AWS_*` variables (what the agents' bucket and
//!   the CLI use), so a plan that names `s3://bucket/…` is listed by the
//!   scheduler and read by the executors with the pod's own credentials:
//!   no secret travels with a query;
//! * the functions of [`super::register_functions`], in the scheduler's
//!   sessions (it decodes the client's logical plan) and in the executors'
//!   function registry (they decode the physical plan of each task).
//!
//! Both use pull-based scheduling: executors poll the scheduler for tasks,
//! so the scheduler never dials an executor; executors and the client fetch
//! shuffle and result partitions from the executors' Arrow Flight port.
//!
//! Shutdown: the scheduler stops on SIGTERM or Ctrl-C; the executor uses
//! Ballista's own handling of the same signals (it deregisters from the
//! scheduler, then stops its Flight server).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use ballista_core::config::TaskSchedulingPolicy;
use ballista_core::registry::BallistaFunctionRegistry;
use ballista_core::RuntimeProducer;
use ballista_executor::executor_process::{start_executor_process, ExecutorProcessConfig};
use ballista_scheduler::cluster::BallistaCluster;
use ballista_scheduler::config::SchedulerConfig;
use ballista_scheduler::scheduler_process::{create_scheduler, start_grpc_service_with_listener};
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::object_store::ObjectStoreRegistry;
use datafusion::execution::runtime_env::{RuntimeEnv, RuntimeEnvBuilder};
use datafusion::execution::SessionStateBuilder;
use datafusion::prelude::{SessionConfig, SessionContext};
use datafusion_proto::protobuf::{LogicalPlanNode, PhysicalPlanNode};
use object_store::local::LocalFileSystem;
use object_store::ObjectStore;
use url::Url;

/// Errors raised while starting or running a scheduler or an executor.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The listen address could not be bound.
    #[error("failed to listen on {addr}")]
    Bind {
        /// The address.
        addr: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Ballista failed.
    #[error("ballista {what} failed")]
    Ballista {
        /// Scheduler or executor.
        what: &'static str,
        /// The cause.
        #[source]
        source: ballista_core::error::BallistaError,
    },
    /// Installing the signal handler failed.
    #[error("failed to install the signal handler")]
    Signal(#[source] std::io::Error),
}

/// Object stores by URL: `file://` is the local file system, `s3://BUCKET`
/// an S3 store built on first use from the `AWS_*` variables (endpoint
/// `AWS_ENDPOINT_URL`; see `source::s3_store`) and kept.
#[derive(Debug)]
pub struct EnvStores {
    local: Arc<dyn ObjectStore>,
    s3: Mutex<std::collections::HashMap<String, Arc<dyn ObjectStore>>>,
}

impl Default for EnvStores {
    fn default() -> Self {
        EnvStores {
            local: Arc::new(LocalFileSystem::new()),
            s3: Mutex::default(),
        }
    }
}

impl ObjectStoreRegistry for EnvStores {
    fn register_store(
        &self,
        url: &Url,
        store: Arc<dyn ObjectStore>,
    ) -> Option<Arc<dyn ObjectStore>> {
        match (url.scheme(), url.host_str()) {
            ("s3", Some(bucket)) => self.s3.lock().ok()?.insert(bucket.to_string(), store),
            _ => None,
        }
    }

    fn get_store(&self, url: &Url) -> DfResult<Arc<dyn ObjectStore>> {
        match (url.scheme(), url.host_str()) {
            ("" | "file", _) => Ok(self.local.clone()),
            ("s3", Some(bucket)) => {
                let mut map = self
                    .s3
                    .lock()
                    .map_err(|_| DataFusionError::Execution("object store lock poisoned".into()))?;
                if let Some(s) = map.get(bucket) {
                    return Ok(s.clone());
                }
                let store = crate::source::s3_store(bucket, None)
                    .map_err(|e| DataFusionError::ObjectStore(Box::new(e)))?;
                map.insert(bucket.to_string(), store.clone());
                Ok(store)
            }
            _ => Err(DataFusionError::Execution(format!(
                "no object store for {url}: slicetrace's Ballista cluster reads file:// and s3:// only"
            ))),
        }
    }
}

/// A runtime whose object stores come from `stores`, spilling under
/// `temp_dir` when given.
fn runtime(stores: &Arc<EnvStores>, temp_dir: Option<&str>) -> DfResult<Arc<RuntimeEnv>> {
    let mut b = RuntimeEnvBuilder::new().with_object_store_registry(stores.clone());
    if let Some(d) = temp_dir {
        b = b.with_temp_file_path(d);
    }
    b.build_arc()
}

/// A session with the default features, `config`, the [`EnvStores`] and
/// slicetrace's functions: what the scheduler plans each query in.
fn session(config: SessionConfig, stores: &Arc<EnvStores>) -> DfResult<SessionContext> {
    let state = SessionStateBuilder::new()
        .with_config(config)
        .with_runtime_env(runtime(stores, None)?)
        .with_default_features()
        .build();
    let ctx = SessionContext::new_with_state(state);
    super::register_functions(&ctx);
    Ok(ctx)
}

/// How to run a scheduler.
#[derive(Debug, Clone)]
pub struct SchedulerOptions {
    /// Where its gRPC (and `/healthz`, `/readyz`) port listens; port 0
    /// picks a free one.
    pub listen: SocketAddr,
    /// The host name executors and clients use for it.
    pub external_host: String,
}

/// Binds the scheduler's port and returns it with a future that runs the
/// scheduler until SIGTERM or Ctrl-C. The address is known before the
/// future runs, so a caller can print it (port 0).
pub async fn scheduler(
    opts: SchedulerOptions,
) -> Result<
    (
        SocketAddr,
        impl std::future::Future<Output = Result<(), ClusterError>>,
    ),
    ClusterError,
> {
    let listener = tokio::net::TcpListener::bind(opts.listen)
        .await
        .map_err(|source| ClusterError::Bind {
            addr: opts.listen.to_string(),
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| ClusterError::Bind {
        addr: opts.listen.to_string(),
        source,
    })?;
    let stores = Arc::new(EnvStores::default());
    let config = SchedulerConfig {
        bind_host: addr.ip().to_string(),
        bind_port: addr.port(),
        external_host: opts.external_host.clone(),
        scheduling_policy: TaskSchedulingPolicy::PullStaged,
        override_session_builder: Some(Arc::new(move |c: SessionConfig| {
            Ok(session(c, &stores)?.state())
        })),
        ..Default::default()
    };
    let ballista = |source| ClusterError::Ballista {
        what: "scheduler",
        source,
    };
    let cluster = BallistaCluster::new_from_config(&config)
        .await
        .map_err(ballista)?;
    let server = create_scheduler::<LogicalPlanNode, PhysicalPlanNode>(cluster, Arc::new(config))
        .await
        .map_err(ballista)?;
    let run = async move {
        let stop = shutdown_signal();
        tokio::select! {
            r = start_grpc_service_with_listener(listener, server) => r.map_err(ballista),
            s = stop => {
                s?;
                tracing::info!("scheduler stopping on signal");
                Ok(())
            }
        }
    };
    Ok((addr, run))
}

/// Resolves on SIGTERM or Ctrl-C.
async fn shutdown_signal() -> Result<(), ClusterError> {
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .map_err(ClusterError::Signal)?;
        tokio::select! {
            _ = term.recv() => Ok(()),
            r = tokio::signal::ctrl_c() => r.map_err(ClusterError::Signal),
        }
    }
    #[cfg(not(unix))]
    {
        tokio::signal::ctrl_c().await.map_err(ClusterError::Signal)
    }
}

/// How to run an executor.
#[derive(Debug, Clone)]
pub struct ExecutorOptions {
    /// Address its Arrow Flight port binds to.
    pub bind_host: String,
    /// The host name the scheduler hands out to clients and other executors.
    pub external_host: Option<String>,
    /// Its Arrow Flight port (shuffle and result partitions).
    pub flight_port: u16,
    /// Its gRPC port (unused with pull scheduling, but Ballista binds it).
    pub grpc_port: u16,
    /// The scheduler's host.
    pub scheduler_host: String,
    /// The scheduler's port.
    pub scheduler_port: u16,
    /// Seconds to keep retrying the scheduler at start (0: try once).
    pub scheduler_connect_timeout_secs: u16,
    /// Tasks at once (0: the machine's cores).
    pub vcores: usize,
    /// Shuffle files and spills (default: a temporary directory).
    pub work_dir: Option<String>,
}

/// Runs an executor until SIGTERM, Ctrl-C or the scheduler stops it.
pub async fn executor(opts: ExecutorOptions) -> Result<(), ClusterError> {
    let stores = Arc::new(EnvStores::default());
    let ctx = session(SessionConfig::new(), &stores).map_err(|e| ClusterError::Ballista {
        what: "executor",
        source: e.into(),
    })?;
    let registry = BallistaFunctionRegistry::from(&ctx.state());
    let work_dir = opts.work_dir.clone();
    let producer: RuntimeProducer =
        Arc::new(move |_: &SessionConfig| runtime(&stores, work_dir.as_deref()));
    let config = ExecutorProcessConfig {
        bind_host: opts.bind_host,
        external_host: opts.external_host,
        port: opts.flight_port,
        grpc_port: opts.grpc_port,
        scheduler_host: opts.scheduler_host,
        scheduler_port: opts.scheduler_port,
        scheduler_connect_timeout_seconds: opts.scheduler_connect_timeout_secs,
        vcores: opts.vcores,
        work_dir: opts.work_dir,
        task_scheduling_policy: TaskSchedulingPolicy::PullStaged,
        print_thread_info: false,
        override_function_registry: Some(Arc::new(registry)),
        override_runtime_producer: Some(producer),
        ..Default::default()
    };
    start_executor_process(Arc::new(config))
        .await
        .map_err(|source| ClusterError::Ballista {
            what: "executor",
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stores_serve_local_files_and_s3_buckets_and_refuse_the_rest() {
        let stores = EnvStores::default();
        let url = |s: &str| Url::parse(s).expect("url");
        assert!(stores.get_store(&url("file:///tmp/x")).is_ok());
        // An S3 store is built once per bucket (no request is made here).
        let a = stores.get_store(&url("s3://bucket-a/p")).expect("s3");
        let again = stores.get_store(&url("s3://bucket-a/q")).expect("s3");
        assert!(Arc::ptr_eq(&a, &again));
        let b = stores.get_store(&url("s3://bucket-b/p")).expect("s3");
        assert!(!Arc::ptr_eq(&a, &b));
        let err = stores
            .get_store(&url("gs://bucket/p"))
            .expect_err("gs is not served");
        assert!(err.to_string().contains("file:// and s3://"), "{err}");
    }
}
