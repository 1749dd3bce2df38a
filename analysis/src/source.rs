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

use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::catalog::TableProvider;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::prelude::{SessionConfig, SessionContext};
use futures::{StreamExt, TryStreamExt};
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, ObjectStoreExt};
use parquet::file::metadata::ParquetMetaDataReader;
use slicetrace_schema::{
    health_schema, layout, probes_schema, ARRIVAL_SQL, SCHEMA_VERSION, SCHEMA_VERSION_KEY,
    TABLE_KEY, TENANTS_SQL,
};
use url::Url;

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
}

struct Located {
    store: Arc<dyn ObjectStore>,
    /// `s3://bucket` or `file:///`
    store_url: Url,
    /// Prefix of the table's directory inside the store.
    prefix: ObjPath,
    /// Table URL for DataFusion (ends in `/`).
    table_url: String,
    display: String,
}

fn is_loopback(endpoint: &str) -> bool {
    Url::parse(endpoint)
        .ok()
        .and_then(|u| u.host_str().map(str::to_string))
        .is_some_and(|h| h == "localhost" || h == "127.0.0.1" || h == "[::1]" || h == "::1")
}

async fn has_objects(store: &dyn ObjectStore, prefix: &ObjPath) -> bool {
    let mut s = store.list(Some(prefix));
    matches!(s.next().await, Some(Ok(_)))
}

async fn locate(data: &str, opts: &OpenOptions) -> Result<Located, SourceError> {
    if let Some(rest) = data.strip_prefix("s3://") {
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(SourceError::BadLocation(data.to_string()));
        }
        let mut b = AmazonS3Builder::from_env().with_bucket_name(bucket);
        let endpoint = opts
            .s3_endpoint
            .clone()
            .or_else(|| std::env::var(S3_ENDPOINT_ENV).ok());
        if let Some(ep) = endpoint {
            if is_loopback(&ep) {
                b = b.with_allow_http(true);
            }
            b = b.with_endpoint(ep);
        }
        let store = b.build().map_err(|source| SourceError::Store {
            location: data.to_string(),
            source,
        })?;
        let store: Arc<dyn ObjectStore> = Arc::new(store);
        let base = prefix.trim_matches('/');
        let join = |b: &str, t: &str| {
            if b.is_empty() {
                t.to_string()
            } else {
                format!("{b}/{t}")
            }
        };
        let own = join(base, opts.table.name());
        // DATA may also point at the other table's directory (`…/probes`
        // with `--table health`): then the table is its sibling.
        let sibling = base
            .strip_suffix(opts.table.other().name())
            .filter(|p| p.is_empty() || p.ends_with('/'))
            .map(|p| join(p.trim_end_matches('/'), opts.table.name()));
        let mut chosen = base.to_string();
        for c in std::iter::once(own).chain(sibling) {
            if has_objects(store.as_ref(), &ObjPath::from(c.as_str())).await {
                chosen = c;
                break;
            }
        }
        let store_url = Url::parse(&format!("s3://{bucket}"))
            .map_err(|_| SourceError::BadLocation(data.to_string()))?;
        let table_url = if chosen.is_empty() {
            format!("s3://{bucket}/")
        } else {
            format!("s3://{bucket}/{chosen}/")
        };
        return Ok(Located {
            store,
            store_url,
            prefix: ObjPath::from(chosen.as_str()),
            display: table_url.clone(),
            table_url,
        });
    }
    if data.contains("://") && !data.starts_with("file://") {
        return Err(SourceError::BadLocation(data.to_string()));
    }
    let path = PathBuf::from(data.strip_prefix("file://").unwrap_or(data));
    if !path.is_dir() {
        if path.exists() {
            return Err(SourceError::BadLocation(data.to_string()));
        }
        return Err(SourceError::MissingDir(data.to_string()));
    }
    let path =
        std::fs::canonicalize(&path).map_err(|_| SourceError::MissingDir(data.to_string()))?;
    let own = path.join(opts.table.name());
    let sibling = (path.file_name() == Some(std::ffi::OsStr::new(opts.table.other().name())))
        .then(|| path.parent().map(|p| p.join(opts.table.name())))
        .flatten();
    let dir: &FsPath = if own.is_dir() {
        &own
    } else if let Some(s) = sibling.as_ref().filter(|s| s.is_dir()) {
        s
    } else {
        &path
    };
    let prefix =
        ObjPath::from_absolute_path(dir).map_err(|_| SourceError::BadLocation(data.to_string()))?;
    let store_url =
        Url::parse("file:///").map_err(|_| SourceError::BadLocation(data.to_string()))?;
    Ok(Located {
        store: Arc::new(LocalFileSystem::new()),
        store_url,
        prefix,
        table_url: format!("{}/", dir.display()),
        display: dir.display().to_string(),
    })
}

/// Whether a listed object is a finished Parquet file of `table` (not an
/// in-progress `.tmp`, not hidden, not under the other table's directory).
fn is_data_file(rel: &str, table: TableKind) -> bool {
    if !rel.ends_with(layout::FILE_SUFFIX) {
        return false;
    }
    let other = table.other().name();
    !rel.split('/')
        .any(|seg| seg.starts_with('.') || seg.starts_with('_') || seg == other)
}

fn display_name(loc: &Located, path: &ObjPath) -> String {
    if loc.store_url.scheme() == "s3" {
        format!("{}/{}", loc.store_url.as_str().trim_end_matches('/'), path)
    } else {
        format!("/{path}")
    }
}

/// Checks one file's footer: magic, decodable metadata, table, schema version
/// and the columns the CLI needs. Returns its row count.
async fn check_file(
    store: &dyn ObjectStore,
    path: &ObjPath,
    size: u64,
    name: &str,
    want: TableKind,
) -> Result<u64, SourceError> {
    let store_err = |source| SourceError::Store {
        location: name.to_string(),
        source,
    };
    let starts_with_magic = || async {
        if size < 4 {
            return Ok::<bool, SourceError>(false);
        }
        let head = store.get_range(path, 0..4).await.map_err(store_err)?;
        Ok(head.as_ref() == b"PAR1")
    };
    if size < 12 {
        return Err(if starts_with_magic().await? {
            SourceError::Truncated(name.to_string())
        } else {
            SourceError::NotParquet(name.to_string())
        });
    }
    let tail = store
        .get_range(path, size - 8..size)
        .await
        .map_err(store_err)?;
    if &tail[4..8] != b"PAR1" {
        return Err(if starts_with_magic().await? {
            SourceError::Truncated(name.to_string())
        } else {
            SourceError::NotParquet(name.to_string())
        });
    }
    let len = u64::from(u32::from_le_bytes([tail[0], tail[1], tail[2], tail[3]]));
    if len + 12 > size {
        return Err(SourceError::Truncated(name.to_string()));
    }
    let footer = store
        .get_range(path, size - 8 - len..size - 8)
        .await
        .map_err(store_err)?;
    let md = ParquetMetaDataReader::decode_metadata(&footer).map_err(|source| {
        SourceError::CorruptFooter {
            file: name.to_string(),
            source,
        }
    })?;
    let kv = md.file_metadata().key_value_metadata();
    let get = |k: &str| {
        kv.and_then(|v| v.iter().find(|e| e.key == k))
            .and_then(|e| e.value.clone())
    };
    if let Some(table) = get(TABLE_KEY) {
        if table != want.name() {
            let hint = if table == want.other().name() {
                format!(" (pass --table {table} to read it)")
            } else {
                String::new()
            };
            return Err(SourceError::ForeignSchema {
                table: want,
                file: name.to_string(),
                reason: format!("it belongs to table {table:?}, not {:?}{hint}", want.name()),
            });
        }
    }
    if let Some(v) = get(SCHEMA_VERSION_KEY) {
        let newer = match v.trim().parse::<u32>() {
            Ok(n) => n > SCHEMA_VERSION,
            Err(_) => true,
        };
        if newer {
            return Err(SourceError::NewerSchema {
                file: name.to_string(),
                found: v,
                supported: SCHEMA_VERSION,
            });
        }
    }
    let schema = parquet::arrow::parquet_to_arrow_schema(md.file_metadata().schema_descr(), kv)
        .map_err(|source| SourceError::CorruptFooter {
            file: name.to_string(),
            source,
        })?;
    check_columns(&schema, &want.schema()).map_err(|reason| SourceError::ForeignSchema {
        table: want,
        file: name.to_string(),
        reason,
    })?;
    Ok(md.file_metadata().num_rows().max(0) as u64)
}

/// Every non-nullable column of the table must be present, and every column
/// that is present must have the table's type. Missing nullable columns are
/// fine (they read as null), as are extra columns (a newer, compatible agent).
fn check_columns(file: &Schema, want: &Schema) -> Result<(), String> {
    for f in want.fields() {
        match file.field_with_name(f.name()) {
            Err(_) if !f.is_nullable() => {
                return Err(format!("missing required column {:?}", f.name()))
            }
            Err(_) => {}
            Ok(found) if !found.data_type().equals_datatype(f.data_type()) => {
                let compatible_list = matches!(
                    (found.data_type(), f.data_type()),
                    (DataType::List(a), DataType::List(b)) if a.data_type() == b.data_type()
                );
                if !compatible_list {
                    return Err(format!(
                        "column {:?} has type {}, expected {}",
                        f.name(),
                        found.data_type(),
                        f.data_type()
                    ));
                }
            }
            Ok(_) => {}
        }
    }
    Ok(())
}

/// The table schema: the file columns (without `node` when it comes from the
/// partition path, so the name is not duplicated) followed by the partition
/// columns that DataFusion appends. Columns a file lacks read as null.
fn table_schema(table: TableKind, hive: bool) -> SchemaRef {
    let full = table.schema();
    if !hive {
        return full;
    }
    let fields: Vec<Field> = full
        .fields()
        .iter()
        .filter(|f| f.name() != "node")
        .map(|f| f.as_ref().clone())
        .collect();
    Arc::new(Schema::new_with_metadata(fields, full.metadata().clone()))
}

fn hive_layout(rel_dirs: &str) -> bool {
    layout::is_partition_path(rel_dirs.split('/'))
}

/// Opens `data`, checks every file, and returns a session with the table
/// registered (see the module docs). `target_partitions` follows the
/// machine's cores.
pub async fn open(data: &str, opts: &OpenOptions) -> Result<Dataset, SourceError> {
    let table = opts.table;
    let loc = locate(data, opts).await?;
    let listed: Vec<object_store::ObjectMeta> = loc
        .store
        .list(Some(&loc.prefix))
        .try_collect()
        .await
        .map_err(|source| SourceError::Store {
            location: loc.display.clone(),
            source,
        })?;
    let prefix_parts = loc.prefix.parts().count();
    let mut candidates = Vec::new();
    let mut hive = true;
    for m in listed {
        let rel: Vec<String> = m
            .location
            .parts()
            .skip(prefix_parts)
            .map(|p| p.as_ref().to_string())
            .collect();
        let rel = rel.join("/");
        if !is_data_file(&rel, table) {
            tracing::debug!(file = %m.location, "skipping non-data file");
            continue;
        }
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

    // A partitioned table may hold files below `date=/node=` (all checked
    // above); DataFusion skips subdirectories unless told not to.
    let cfg = SessionConfig::new().with_information_schema(true).set_bool(
        "datafusion.execution.listing_table_ignore_subdirectory",
        false,
    );
    let ctx = SessionContext::new_with_config(cfg);
    ctx.register_object_store(&loc.store_url, loc.store.clone());
    let register_err = |source| SourceError::Register {
        table,
        location: loc.display.clone(),
        source,
    };
    // In the `date=/node=` layout the directory is the table (partition
    // columns, pruning); otherwise the table is exactly the checked files, so
    // that nothing the checks skipped (a `health/` beside the data, hidden
    // files) is read.
    let urls = if hive {
        vec![ListingTableUrl::parse(&loc.table_url).map_err(register_err)?]
    } else {
        checked
            .iter()
            .map(|f| ListingTableUrl::parse(&f.name))
            .collect::<Result<Vec<_>, _>>()
            .map_err(register_err)?
    };
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
        .with_schema(table_schema(table, hive));
    let listing = ListingTable::try_new(config).map_err(register_err)?;
    let schema = listing.schema();
    let mut columns: Vec<String> = schema.fields().iter().map(|f| f.name().clone()).collect();
    match table {
        TableKind::Probes => {
            ctx.register_table(PROBE_FILES, Arc::new(listing))
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
            ctx.register_table("health", Arc::new(listing))
                .map_err(register_err)?;
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tmp_hidden_and_health_files_are_not_data() {
        let p = TableKind::Probes;
        assert!(is_data_file("date=2026-01-01/node=a/part-1-x.parquet", p));
        assert!(!is_data_file(
            "date=2026-01-01/node=a/part-1-x.parquet.tmp",
            p
        ));
        assert!(!is_data_file("date=2026-01-01/node=a/.part.parquet", p));
        assert!(!is_data_file("health/date=2026-01-01/node=a/p.parquet", p));
        assert!(!is_data_file("README.md", p));
        let h = TableKind::Health;
        assert!(is_data_file("date=2026-01-01/node=a/p.parquet", h));
        assert!(!is_data_file("probes/date=2026-01-01/node=a/p.parquet", h));
    }

    #[test]
    fn hive_layout_needs_date_then_node() {
        assert!(hive_layout("date=2026-01-01/node=a"));
        assert!(!hive_layout("node=a/date=2026-01-01"));
        assert!(!hive_layout(""));
    }

    #[test]
    fn loopback_endpoints_allow_http() {
        assert!(is_loopback("http://127.0.0.1:5000"));
        assert!(is_loopback("http://localhost:9000"));
        assert!(!is_loopback("https://s3.amazonaws.com"));
    }
}
