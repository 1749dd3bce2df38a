//! Where the data comes from: resolves `DATA` (a local directory or an
//! `s3://bucket/prefix` URL, pointing at the agent's output directory or at
//! its `probes/` or `health/` subdirectory), lists the Parquet files, checks
//! every file's footer before any query runs, and registers the files with
//! DataFusion.
//!
//! For the `probes` table ([`TableKind::Probes`]) the files are the listing
//! table `probe_files`, and two views sit on top of it, so that every command
//! and every `sql` query sees the same derived columns:
//! * `probes`: every run, plus the derived column `tenants`
//!   ([`slicetrace_schema::TENANTS_SQL`]);
//! * `arrivals`: the arrival runs of `probes` ([`slicetrace_schema::ARRIVAL_SQL`]),
//!   the runs whose latency is what a caller arriving at random sees.
//!
//! The listing table has the full schema of this build: a file written
//! before a nullable column existed (`arrival`, …) reads it as null, so a
//! directory may mix old and new files. For the `health` table
//! ([`TableKind::Health`]) the files are registered as `health`.
//!
//! Checking footers first is what lets every bad file be reported by name with
//! a clear reason (not Parquet, truncated, foreign schema, newer schema
//! version) instead of a query failing half-way with a generic error. It costs
//! two small range reads per file.
//!
//! One job per file: `locate.rs` resolves `DATA` and lists its files,
//! `check.rs` checks their footers, and [`open`] here registers them.

use std::sync::Arc;

use crate::engine::{Engine, EngineError};
use arrow::datatypes::{DataType, SchemaRef};
use datafusion::catalog::TableProvider;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::datasource::MemTable;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::prelude::{SessionConfig, SessionContext};
use futures::{StreamExt, TryStreamExt};
use slicetrace_schema::{health_schema, layout, probes_schema, ARRIVAL_SQL, TENANTS_SQL};

mod check;
mod locate;
mod prune;

use check::{check_file, check_footer, table_schema};
pub(crate) use locate::s3_store;
use locate::{display_name, hive_layout, list_files, locate};

pub use prune::{
    name_start_ns, open_range, RangeDataset, RangeOptions, ScanStats, SkippedFile, TimeRange,
};

/// Errors raised while locating, checking and registering the data.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The local directory does not exist.
    #[error("data directory {0} does not exist")]
    MissingDir(String),
    /// `DATA` is neither a directory nor an `s3://` URL.
    #[error("cannot use {0} as data: expected a directory or an s3://bucket/prefix URL")]
    BadLocation(String),
    /// No Parquet file (or no row) was found.
    #[error("no {table} Parquet files under {location} (empty table)")]
    Empty {
        /// The table looked for.
        table: TableKind,
        /// Where.
        location: String,
    },
    /// The object store could not be built or listed.
    #[error("failed to list or read {location}")]
    Store {
        /// The location that failed.
        location: String,
        /// The cause.
        #[source]
        source: object_store::Error,
    },
    /// The file does not end in the Parquet magic and does not start with it.
    #[error("{0}: not a Parquet file (no PAR1 magic)")]
    NotParquet(String),
    /// The file starts like Parquet but has no valid footer.
    #[error("{0}: truncated Parquet file (no footer; was it still being written?)")]
    Truncated(String),
    /// The footer could not be decoded.
    #[error("{file}: corrupt Parquet footer")]
    CorruptFooter {
        /// The file.
        file: String,
        /// The cause.
        #[source]
        source: parquet::errors::ParquetError,
    },
    /// The file's columns are not those of the table.
    #[error("{file}: not a slicetrace {table} file: {reason}")]
    ForeignSchema {
        /// The table looked for.
        table: TableKind,
        /// The file.
        file: String,
        /// What is wrong.
        reason: String,
    },
    /// The file was written by a newer agent.
    #[error(
        "{file}: schema version {found} is newer than this build supports ({supported}); upgrade slicetrace"
    )]
    NewerSchema {
        /// The file.
        file: String,
        /// The version in the footer.
        found: String,
        /// [`SCHEMA_VERSION`].
        supported: u32,
    },
    /// The engine could not be set up or reached.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// DataFusion refused the table.
    #[error("failed to register the {table} table at {location}")]
    Register {
        /// The table.
        table: TableKind,
        /// The table location.
        location: String,
        /// The cause.
        #[source]
        source: datafusion::error::DataFusionError,
    },
}

/// Which of the agent's tables to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum TableKind {
    /// One row per probe run (`DIR/probes/`).
    #[default]
    Probes,
    /// One row per live health verdict (`DIR/health/`).
    Health,
}

impl TableKind {
    /// The table's name: its directory and its `slicetrace.table` footer key.
    pub fn name(self) -> &'static str {
        match self {
            TableKind::Probes => layout::PROBES,
            TableKind::Health => layout::HEALTH,
        }
    }

    fn schema(self) -> SchemaRef {
        match self {
            TableKind::Probes => probes_schema(),
            TableKind::Health => health_schema(),
        }
    }

    fn other(self) -> TableKind {
        match self {
            TableKind::Probes => TableKind::Health,
            TableKind::Health => TableKind::Probes,
        }
    }
}

impl std::fmt::Display for TableKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Name of the listing table of the probe files (the raw columns).
pub const PROBE_FILES: &str = "probe_files";

/// Where the S3 endpoint comes from when none is given on the command line.
pub const S3_ENDPOINT_ENV: &str = "AWS_ENDPOINT_URL";

/// One checked Parquet file.
#[derive(Debug, Clone)]
pub struct FileInfo {
    /// Display name (local path or `s3://` URL).
    pub name: String,
    /// Rows, from the footer.
    pub rows: u64,
}

/// A resolved, checked dataset, registered as table `probes` (with the
/// `arrivals` view) or `health`.
pub struct Dataset {
    /// The table that was opened.
    pub table: TableKind,
    /// Human-readable location of the table's directory.
    pub location: String,
    /// Every checked file.
    pub files: Vec<FileInfo>,
    /// Sum of rows over all files.
    pub total_rows: u64,
    /// Whether the files sit in the `date=/node=` layout (partition columns).
    pub hive: bool,
    /// The session with the table registered.
    pub ctx: SessionContext,
    /// Every column name a query can use (the table's columns, the
    /// partition columns and, for probes, `tenants`), for suggestions.
    pub columns: Vec<String>,
}

/// Options for opening a dataset.
#[derive(Debug, Clone, Default)]
pub struct OpenOptions {
    /// S3 endpoint override (else `AWS_ENDPOINT_URL`, else AWS).
    pub s3_endpoint: Option<String>,
    /// Which table to open.
    pub table: TableKind,
    /// Where the queries run (this process, or a Ballista cluster that
    /// reads the same files).
    pub engine: Engine,
}

/// Opens `data`, checks every file, and returns a session with the table
/// registered (see the module docs). `target_partitions` follows the
/// machine's cores.
pub async fn open(data: &str, opts: &OpenOptions) -> Result<Dataset, SourceError> {
    let table = opts.table;
    let loc = locate(data, opts).await?;
    let mut candidates = Vec::new();
    let mut hive = true;
    for (rel, m) in list_files(&loc, &loc.prefix, table).await? {
        let rel = rel.join("/");
        let dirs = rel.rsplit_once('/').map(|(d, _)| d).unwrap_or("");
        hive &= hive_layout(dirs);
        candidates.push(m);
    }
    let empty = || SourceError::Empty {
        table,
        location: loc.display.clone(),
    };
    if candidates.is_empty() {
        return Err(empty());
    }
    candidates.sort_by(|a, b| a.location.cmp(&b.location));
    let store = loc.store.clone();
    let checked: Vec<FileInfo> = futures::stream::iter(candidates.into_iter().map(|m| {
        let store = store.clone();
        let name = display_name(&loc, &m.location);
        async move {
            let rows = check_file(store.as_ref(), &m.location, m.size, &name, table).await?;
            Ok::<FileInfo, SourceError>(FileInfo { name, rows })
        }
    }))
    .buffered(16)
    .try_collect()
    .await?;
    let total_rows: u64 = checked.iter().map(|f| f.rows).sum();
    if total_rows == 0 {
        return Err(empty());
    }

    let (ctx, columns) = if hive {
        register(&loc, table, Target::Dir, Tuning::default(), &opts.engine).await?
    } else {
        let names: Vec<String> = checked.iter().map(|f| f.name.clone()).collect();
        register(
            &loc,
            table,
            Target::Files(&names),
            Tuning::default(),
            &opts.engine,
        )
        .await?
    };
    tracing::debug!(
        %table,
        files = checked.len(),
        rows = total_rows,
        hive,
        "registered table"
    );
    Ok(Dataset {
        table,
        location: loc.display,
        files: checked,
        total_rows,
        hive,
        ctx,
        columns,
    })
}

/// What a table is registered over.
enum Target<'a> {
    /// The table's directory in the `date=/node=` layout (partition
    /// columns, pruning by DataFusion).
    Dir,
    /// Exactly these files (display names), without partition columns, so
    /// that nothing the checks skipped (a `health/` beside the data, hidden
    /// files, a truncated file) is read.
    Files(&'a [String]),
}

/// How a session may use the machine.
#[derive(Debug, Clone, Copy, Default)]
struct Tuning {
    /// DataFusion's partitions and metadata fetches at once (default: the
    /// machine's cores).
    parallel: Option<usize>,
    /// Bytes DataFusion's operators may reserve (default: unbounded). A
    /// query that needs more fails with "Resources exhausted" instead of
    /// growing until the kernel kills the process.
    memory_limit: Option<usize>,
}

/// A session with `table` registered over `target` (and, for probes, the
/// `probes` and `arrivals` views), tuned by `tuning`, on `engine`. Returns
/// the session and every column a query can use.
async fn register(
    loc: &locate::Located,
    table: TableKind,
    target: Target<'_>,
    tuning: Tuning,
    engine: &Engine,
) -> Result<(SessionContext, Vec<String>), SourceError> {
    let parallel = tuning.parallel;
    // A partitioned table may hold files below `date=/node=` (all checked
    // above); DataFusion skips subdirectories unless told not to.
    let mut cfg = SessionConfig::new().with_information_schema(true).set_bool(
        "datafusion.execution.listing_table_ignore_subdirectory",
        false,
    );
    if let Some(n) = parallel {
        cfg = cfg
            .with_target_partitions(n.max(1))
            // The footers were just read; statistics would read them again.
            .set_bool("datafusion.execution.collect_statistics", false)
            .set_usize("datafusion.execution.meta_fetch_concurrency", n.max(1));
    }
    let register_err = |source| SourceError::Register {
        table,
        location: loc.display.clone(),
        source,
    };
    let rt = match tuning.memory_limit {
        None => None,
        Some(bytes) => Some(
            RuntimeEnvBuilder::new()
                .with_memory_limit(bytes, 1.0)
                .build_arc()
                .map_err(register_err)?,
        ),
    };
    let hive = matches!(target, Target::Dir);
    let nothing = matches!(target, Target::Files(names) if names.is_empty());
    // Everything was pruned: the empty table below is answered here (a
    // cluster could not decode an in-memory table, and there is nothing
    // to read).
    let engine = if nothing { &Engine::Local } else { engine };
    let ctx = engine.session(cfg, rt).await?;
    ctx.register_object_store(&loc.store_url, loc.store.clone());
    let urls = match target {
        Target::Dir => vec![ListingTableUrl::parse(&loc.table_url).map_err(register_err)?],
        Target::Files(names) => names
            .iter()
            .map(ListingTableUrl::parse)
            .collect::<Result<Vec<_>, _>>()
            .map_err(register_err)?,
    };
    let schema = table_schema(table, hive);
    let provider: Arc<dyn TableProvider> = if urls.is_empty() {
        // Everything was pruned: an empty table with the same columns.
        Arc::new(MemTable::try_new(schema.clone(), vec![vec![]]).map_err(register_err)?)
    } else {
        let partition_cols = if hive {
            vec![
                (layout::DATE_KEY.to_string(), DataType::Utf8),
                (layout::NODE_KEY.to_string(), DataType::Utf8),
            ]
        } else {
            Vec::new()
        };
        let options = ListingOptions::new(Arc::new(ParquetFormat::default()))
            .with_file_extension(layout::FILE_SUFFIX)
            .with_table_partition_cols(partition_cols);
        let config = ListingTableConfig::new_with_multi_paths(urls)
            .with_listing_options(options)
            .with_schema(schema);
        Arc::new(ListingTable::try_new(config).map_err(register_err)?)
    };
    let mut columns: Vec<String> = provider
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    match table {
        TableKind::Probes => {
            ctx.register_table(PROBE_FILES, provider)
                .map_err(register_err)?;
            for view in [
                format!(
                    "CREATE VIEW probes AS SELECT *, {TENANTS_SQL} AS tenants FROM {PROBE_FILES}"
                ),
                format!("CREATE VIEW arrivals AS SELECT * FROM probes WHERE {ARRIVAL_SQL}"),
            ] {
                ctx.sql(&view).await.map_err(register_err)?;
            }
            columns.push("tenants".into());
        }
        TableKind::Health => {
            ctx.register_table("health", provider)
                .map_err(register_err)?;
        }
    }
    Ok((ctx, columns))
}
