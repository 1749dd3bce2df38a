//! Resolving `DATA` to an object store and the table's prefix in it, and
//! telling data files from the rest of a listing.

use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;

use futures::{StreamExt, TryStreamExt};
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjPath;
use object_store::{ObjectMeta, ObjectStore};
use slicetrace_schema::layout;
use url::Url;

use super::{OpenOptions, SourceError, TableKind, S3_ENDPOINT_ENV};

pub(super) struct Located {
    pub(super) store: Arc<dyn ObjectStore>,
    /// `s3://bucket` or `file:///`
    pub(super) store_url: Url,
    /// Prefix of the table's directory inside the store.
    pub(super) prefix: ObjPath,
    /// Table URL for DataFusion (ends in `/`).
    pub(super) table_url: String,
    pub(super) display: String,
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

/// The S3 store of `bucket`: credentials and region from the standard
/// `AWS_*` variables, the endpoint from `endpoint`, else `AWS_ENDPOINT_URL`,
/// else AWS (plain http allowed for loopback endpoints). The Ballista
/// scheduler and executors build theirs the same way (`engine::cluster`).
pub(crate) fn s3_store(
    bucket: &str,
    endpoint: Option<String>,
) -> Result<Arc<dyn ObjectStore>, object_store::Error> {
    let mut b = AmazonS3Builder::from_env().with_bucket_name(bucket);
    let endpoint = endpoint.or_else(|| std::env::var(S3_ENDPOINT_ENV).ok());
    if let Some(ep) = endpoint {
        if is_loopback(&ep) {
            b = b.with_allow_http(true);
        }
        b = b.with_endpoint(ep);
    }
    Ok(Arc::new(b.build()?))
}

pub(super) async fn locate(data: &str, opts: &OpenOptions) -> Result<Located, SourceError> {
    if let Some(rest) = data.strip_prefix("s3://") {
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(SourceError::BadLocation(data.to_string()));
        }
        let store =
            s3_store(bucket, opts.s3_endpoint.clone()).map_err(|source| SourceError::Store {
                location: data.to_string(),
                source,
            })?;
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
pub(super) fn is_data_file(rel: &str, table: TableKind) -> bool {
    if !rel.ends_with(layout::FILE_SUFFIX) {
        return false;
    }
    let other = table.other().name();
    !rel.split('/')
        .any(|seg| seg.starts_with('.') || seg.starts_with('_') || seg == other)
}

/// A listed file with its path below the table's directory.
pub(super) type Listed = (Vec<String>, ObjectMeta);

/// Lists `prefix` recursively and keeps the data files of `table`, with
/// their path below `loc`'s prefix.
pub(super) async fn list_files(
    loc: &Located,
    prefix: &ObjPath,
    table: TableKind,
) -> Result<Vec<Listed>, SourceError> {
    let listed: Vec<ObjectMeta> =
        loc.store
            .list(Some(prefix))
            .try_collect()
            .await
            .map_err(|source| SourceError::Store {
                location: loc.display.clone(),
                source,
            })?;
    let skip = loc.prefix.parts().count();
    Ok(listed
        .into_iter()
        .filter_map(|m| {
            let rel: Vec<String> = m
                .location
                .parts()
                .skip(skip)
                .map(|p| p.as_ref().to_string())
                .collect();
            if !is_data_file(&rel.join("/"), table) {
                tracing::debug!(file = %m.location, "skipping non-data file");
                return None;
            }
            Some((rel, m))
        })
        .collect())
}

pub(super) fn display_name(loc: &Located, path: &ObjPath) -> String {
    if loc.store_url.scheme() == "s3" {
        format!("{}/{}", loc.store_url.as_str().trim_end_matches('/'), path)
    } else {
        format!("/{path}")
    }
}

pub(super) fn hive_layout(rel_dirs: &str) -> bool {
    layout::is_partition_path(rel_dirs.split('/'))
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
