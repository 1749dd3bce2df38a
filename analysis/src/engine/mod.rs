//! Where a command's queries run: in this process (`--engine local`, the
//! default) or on an Apache Ballista cluster (`--engine df://HOST:PORT`).
//!
//! The commands never see the difference. [`crate::source`] asks
//! [`Engine::session`] for the session it registers the tables in; every
//! query then goes through the same `SessionContext` API. On Ballista the
//! session's query planner sends each query's optimised logical plan (the
//! `probes` and `arrivals` views already inlined, the listing table with its
//! file list or directory, partition columns and schema, the `datafusion.*`
//! settings of the session) to the scheduler, which plans the stages; the
//! executors list, read and aggregate the files and the client reads the
//! final partition back. What the commands do with the batches afterwards
//! (exact percentiles in `report`, the verdicts in `fleet`) runs here, so a
//! result computed on the cluster is computed by the same code as a local one.
//!
//! The scheduler and the executors must reach the same files as the client
//! under the same URLs: a shared `s3://` prefix in a fleet, the same local
//! paths in tests. They are started by the `slicetrace-ballista` binary
//! ([`cluster`]), which gives them an object store registry that builds an
//! S3 store per bucket from the standard `AWS_*` variables, and the
//! functions of [`register_functions`].

use std::sync::Arc;
use std::time::Duration;

use datafusion::execution::runtime_env::RuntimeEnv;
use datafusion::prelude::{SessionConfig, SessionContext};

#[cfg(feature = "ballista")]
pub mod cluster;

/// How long the client waits for the scheduler's port to accept a TCP
/// connection, and for its gRPC connection, before giving up.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The scheduler's port when `df://HOST` names none (Ballista's default).
pub const DEFAULT_SCHEDULER_PORT: u16 = 50050;

/// Errors raised while choosing or reaching an engine.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// `--engine` is neither `local` nor `df://HOST[:PORT]`.
    #[error("bad --engine {0:?}: expected local or df://HOST:PORT (a Ballista scheduler)")]
    Bad(String),
    /// This binary was built without the `ballista` feature.
    #[error("--engine {0}: this slicetrace was built without Ballista support (cargo feature `ballista`)")]
    NotBuilt(String),
    /// Nothing accepted a connection at the scheduler's address in time.
    #[error("cannot reach the Ballista scheduler at {url}: {reason}")]
    Unreachable {
        /// The `df://` URL.
        url: String,
        /// Why, in words.
        reason: String,
    },
    /// DataFusion or Ballista refused the session.
    #[error("failed to set up the {engine} session")]
    Session {
        /// The engine.
        engine: String,
        /// The cause.
        #[source]
        source: datafusion::error::DataFusionError,
    },
}

/// Where queries run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Engine {
    /// DataFusion in this process.
    #[default]
    Local,
    /// A Ballista scheduler.
    Ballista {
        /// Its host name or address.
        host: String,
        /// Its gRPC port.
        port: u16,
    },
}

impl std::str::FromStr for Engine {
    type Err = EngineError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || EngineError::Bad(s.to_string());
        let t = s.trim();
        if t.eq_ignore_ascii_case("local") {
            return Ok(Engine::Local);
        }
        let rest = t.strip_prefix("df://").ok_or_else(bad)?;
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.is_empty() || rest.contains(['/', '?', '#', '@']) {
            return Err(bad());
        }
        let url = url::Url::parse(&format!("http://{rest}")).map_err(|_| bad())?;
        let host = url.host_str().filter(|h| !h.is_empty()).ok_or_else(bad)?;
        // `Url` drops a port equal to the scheme's default (80): keep what
        // was written.
        let port = match rest.rsplit_once(':') {
            Some((_, p)) if !rest.ends_with(']') => p.parse::<u16>().map_err(|_| bad())?,
            _ => DEFAULT_SCHEDULER_PORT,
        };
        if port == 0 {
            return Err(bad());
        }
        Ok(Engine::Ballista {
            host: host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string(),
            port,
        })
    }
}

impl std::fmt::Display for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Engine::Local => f.write_str("local"),
            Engine::Ballista { host, port } if host.contains(':') => {
                write!(f, "df://[{host}]:{port}")
            }
            Engine::Ballista { host, port } => write!(f, "df://{host}:{port}"),
        }
    }
}

impl Engine {
    /// Whether queries leave this process.
    pub fn is_remote(&self) -> bool {
        !matches!(self, Engine::Local)
    }

    /// A session on this engine with `config` (and `runtime`, else the
    /// default one), with slicetrace's functions registered. For Ballista
    /// the scheduler must accept a TCP connection within
    /// [`CONNECT_TIMEOUT`], so an unreachable cluster is an error at once,
    /// not a hang at the first query.
    pub async fn session(
        &self,
        config: SessionConfig,
        runtime: Option<Arc<RuntimeEnv>>,
    ) -> Result<SessionContext, EngineError> {
        let ctx = match self {
            Engine::Local => match runtime {
                Some(rt) => SessionContext::new_with_config_rt(config, rt),
                None => SessionContext::new_with_config(config),
            },
            Engine::Ballista { host, port } => self.remote(host, *port, config, runtime).await?,
        };
        register_functions(&ctx);
        Ok(ctx)
    }

    #[cfg(feature = "ballista")]
    async fn remote(
        &self,
        host: &str,
        port: u16,
        config: SessionConfig,
        runtime: Option<Arc<RuntimeEnv>>,
    ) -> Result<SessionContext, EngineError> {
        use ballista::prelude::{SessionConfigExt, SessionContextExt};
        use datafusion::execution::SessionStateBuilder;

        let url = self.to_string();
        let unreachable = |reason: String| EngineError::Unreachable {
            url: url.clone(),
            reason,
        };
        match tokio::time::timeout(
            CONNECT_TIMEOUT,
            tokio::net::TcpStream::connect((host, port)),
        )
        .await
        {
            Err(_) => {
                return Err(unreachable(format!(
                    "no answer within {} s",
                    CONNECT_TIMEOUT.as_secs()
                )))
            }
            Ok(Err(e)) => return Err(unreachable(e.to_string())),
            Ok(Ok(_)) => {}
        }
        let config = config.upgrade_for_ballista().set_usize(
            ballista_core::config::BALLISTA_CLIENT_GRPC_CONNECT_TIMEOUT_SECONDS,
            CONNECT_TIMEOUT.as_secs() as usize,
        );
        let mut state = SessionStateBuilder::new()
            .with_config(config)
            .with_default_features();
        if let Some(rt) = runtime {
            state = state.with_runtime_env(rt);
        }
        SessionContext::remote_with_state(&url, state.build())
            .await
            .map_err(|source| EngineError::Session {
                engine: url.clone(),
                source,
            })
    }

    #[cfg(not(feature = "ballista"))]
    async fn remote(
        &self,
        _host: &str,
        _port: u16,
        _config: SessionConfig,
        _runtime: Option<Arc<RuntimeEnv>>,
    ) -> Result<SessionContext, EngineError> {
        Err(EngineError::NotBuilt(self.to_string()))
    }
}

/// Registers the functions slicetrace's queries use beyond DataFusion's
/// built-ins, on the client's session, on the scheduler's sessions and in
/// the executors' function registry (see [`cluster`]): a plan that names a
/// function travels by name, and each side resolves it in its own registry.
///
/// The raw `report` and `fleet` use only built-ins (`approx_percentile_cont`,
/// `bit_or`, `coalesce`, …); the rollups' `sketch_merge` and
/// `sketch_quantile` are registered here so that a plan naming them
/// resolves on every side (a test runs them on real executors). The
/// commands' rollup path does not use them: it folds sketches in the client,
/// so on a cluster rollup questions read raw rows (`rollup::ON_CLUSTER`,
/// docs/ballista.md).
pub fn register_functions(ctx: &SessionContext) {
    crate::rollup::udaf::register(ctx);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engines_parse_and_print_back() {
        assert_eq!("local".parse::<Engine>().ok(), Some(Engine::Local));
        let e: Engine = "df://127.0.0.1:50051".parse().expect("engine");
        assert_eq!(
            e,
            Engine::Ballista {
                host: "127.0.0.1".into(),
                port: 50051
            }
        );
        assert_eq!(e.to_string(), "df://127.0.0.1:50051");
        let e: Engine = "df://scheduler.ballista".parse().expect("engine");
        assert_eq!(e.to_string(), "df://scheduler.ballista:50050");
        let e: Engine = "df://host:80".parse().expect("engine");
        assert_eq!(e.to_string(), "df://host:80");
        let e: Engine = "df://[::1]:7000".parse().expect("engine");
        assert_eq!(e.to_string(), "df://[::1]:7000");
    }

    #[test]
    fn bad_engines_are_refused() {
        for bad in [
            "",
            "remote",
            "http://host:50050",
            "df://",
            "df://host:port",
            "df://host:0",
            "df://host:70000",
            "df://host:1/path",
        ] {
            assert!(
                matches!(bad.parse::<Engine>(), Err(EngineError::Bad(_))),
                "{bad:?} was accepted"
            );
        }
    }
}
