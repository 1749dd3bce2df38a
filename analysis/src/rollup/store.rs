//! Where the rollups are: the agent's data directory on this machine, or
//! the same layout under an `s3://BUCKET/PREFIX/` that the agents ship to.
//!
//! Both are read the same way ([`super::read`]): only the `date=`
//! partitions of the range are listed, every `node=` directory becomes one
//! work item, and a file is read whole before its rows are decoded. On an
//! object store that costs, per command:
//! * one LIST (delimited) of `PREFIX/probes/` and one of `PREFIX/rollups/`
//!   to choose the source ([`super::choose`]), that is the `date=` prefixes
//!   present;
//! * one paginated LIST (1,000 keys a page) per `date=` partition of the
//!   range, recursive, which yields every node directory's files at once;
//! * one GET per rollup file in those partitions (no HEAD: the footer is
//!   decoded from the body), [`FETCH_CONCURRENCY`] at a time per node
//!   directory.
//!
//! The sync readers run on plain threads; the object store is async, so a
//! [`StoreRoot`] carries the Tokio runtime handle it was created on and its
//! readers `block_on` it. Callers in async code go through
//! `tokio::task::block_in_place` (the CLI) so that the runtime keeps
//! driving I/O.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::{Buf, Bytes};
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, ObjectStoreExt};
use parquet::file::reader::{ChunkReader, Length};
use slicetrace_schema::layout;

use super::RollupError;

/// GETs in flight at once for one node directory's files.
pub const FETCH_CONCURRENCY: usize = 8;

/// The rollups' location: a local data directory or an object-store prefix.
#[derive(Clone, Debug)]
pub enum RollupRoot {
    /// The agent's data directory (`DIR` with `DIR/rollups/`).
    Local(PathBuf),
    /// `s3://BUCKET/PREFIX` with `PREFIX/rollups/`.
    Store(Arc<StoreRoot>),
}

/// An object-store prefix holding the agent's tables.
pub struct StoreRoot {
    store: Arc<dyn ObjectStore>,
    /// The data prefix inside the bucket, without slashes at either end
    /// (empty: the bucket's root).
    prefix: String,
    /// `s3://BUCKET/PREFIX`, for messages.
    url: String,
    rt: tokio::runtime::Handle,
}

impl std::fmt::Debug for StoreRoot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreRoot").field("url", &self.url).finish()
    }
}

impl RollupRoot {
    /// The rollups' root for `data` (`DIR`, `DIR/probes`, `DIR/rollups`,
    /// `DIR/health`, or the same under `s3://BUCKET/`). An S3 store is
    /// built from the standard `AWS_*` variables and `s3_endpoint` (as the
    /// raw path's); nothing is requested yet. Must be called inside a
    /// Tokio runtime for `s3://`.
    pub fn new(data: &str, s3_endpoint: Option<String>) -> Result<Self, RollupError> {
        if let Some(rest) = data.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(RollupError::Usage(format!(
                    "cannot use {data} as data: expected s3://BUCKET/PREFIX"
                )));
            }
            let mut prefix = prefix.trim_matches('/').to_string();
            for t in [layout::PROBES, layout::HEALTH, layout::ROLLUPS] {
                if prefix == t {
                    prefix.clear();
                } else if let Some(p) = prefix.strip_suffix(&format!("/{t}")) {
                    prefix = p.to_string();
                }
            }
            let store = crate::source::s3_store(bucket, s3_endpoint).map_err(|source| {
                RollupError::Store {
                    action: "open",
                    location: data.to_string(),
                    source,
                }
            })?;
            let rt = tokio::runtime::Handle::try_current().map_err(|_| {
                RollupError::Usage("reading rollups from s3:// needs a Tokio runtime".into())
            })?;
            let url = if prefix.is_empty() {
                format!("s3://{bucket}")
            } else {
                format!("s3://{bucket}/{prefix}")
            };
            return Ok(RollupRoot::Store(Arc::new(StoreRoot {
                store,
                prefix,
                url,
                rt,
            })));
        }
        match super::data_root(data) {
            Some(p) => Ok(RollupRoot::Local(p)),
            None => Err(RollupError::Usage(format!(
                "cannot use {data} as data: expected a directory or an s3://BUCKET/PREFIX URL"
            ))),
        }
    }

    /// The location, for messages.
    pub fn display(&self) -> String {
        match self {
            RollupRoot::Local(p) => p.display().to_string(),
            RollupRoot::Store(s) => s.url.clone(),
        }
    }

    /// The local directory, if this is one.
    pub fn local(&self) -> Option<&Path> {
        match self {
            RollupRoot::Local(p) => Some(p),
            RollupRoot::Store(_) => None,
        }
    }

    /// The `date=` values present under `table` (one delimited LIST on a
    /// store). An absent table is an empty set.
    pub fn dates(&self, table: &str) -> Result<BTreeSet<String>, RollupError> {
        self.children(table, layout::DATE_KEY)
    }

    /// The node names (`node=NAME` directories) under `table`'s partition
    /// `date` (one delimited LIST on a store). An absent partition is an
    /// empty set.
    pub fn nodes(&self, table: &str, date: &str) -> Result<BTreeSet<String>, RollupError> {
        self.children(
            &format!("{table}/{}", layout::date_dir(date)),
            layout::NODE_KEY,
        )
    }

    /// The values `V` of the `KEY=V` directories directly under `rel` (one
    /// delimited LIST on a store). An absent directory is an empty set.
    fn children(&self, rel: &str, key: &str) -> Result<BTreeSet<String>, RollupError> {
        let strip = |n: &str| {
            n.strip_prefix(key)
                .and_then(|r| r.strip_prefix('='))
                .map(str::to_string)
        };
        match self {
            RollupRoot::Local(root) => {
                let dir = root.join(rel);
                match std::fs::read_dir(&dir) {
                    Ok(rd) => Ok(rd
                        .filter_map(Result::ok)
                        .filter(|e| e.path().is_dir())
                        .filter_map(|e| e.file_name().to_str().and_then(strip))
                        .collect()),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeSet::new()),
                    Err(e) => Err(RollupError::io("list", &dir)(e)),
                }
            }
            RollupRoot::Store(s) => {
                let p = s.key(rel);
                let listed =
                    s.rt.block_on(
                        s.store
                            .list_with_delimiter(Some(&ObjPath::from(p.as_str()))),
                    )
                    .map_err(|source| RollupError::Store {
                        action: "list",
                        location: format!("{}/{rel}/", s.url),
                        source,
                    })?;
                Ok(listed
                    .common_prefixes
                    .iter()
                    .filter_map(|cp| cp.filename().and_then(strip))
                    .collect())
            }
        }
    }
}

impl StoreRoot {
    /// `PREFIX/rel` as an object key.
    fn key(&self, rel: &str) -> String {
        if self.prefix.is_empty() {
            rel.to_string()
        } else {
            format!("{}/{rel}", self.prefix)
        }
    }

    /// The node directories of the rollups' `date=` partitions `dates`:
    /// one recursive LIST per date. Directories are keys (`…/node=N`), files
    /// full keys, both as paths so that file-name logic is shared with the
    /// local layout.
    pub(crate) fn list_nodes(
        &self,
        dates: &[String],
    ) -> Result<Vec<(PathBuf, Vec<PathBuf>)>, RollupError> {
        let mut by_dir: BTreeMap<String, Vec<PathBuf>> = BTreeMap::new();
        for d in dates {
            let rel = format!("{}/{}", layout::ROLLUPS, layout::date_dir(d));
            let p = self.key(&rel);
            let metas: Vec<object_store::ObjectMeta> = self
                .rt
                .block_on(
                    self.store
                        .list(Some(&ObjPath::from(p.as_str())))
                        .try_collect(),
                )
                .map_err(|source| RollupError::Store {
                    action: "list",
                    location: format!("{}/{rel}/", self.url),
                    source,
                })?;
            for m in metas {
                let key = m.location.to_string();
                let Some((dir, name)) = key.rsplit_once('/') else {
                    continue;
                };
                let node_level = dir
                    .rsplit_once('/')
                    .map_or(dir, |(_, last)| last)
                    .starts_with(&format!("{}=", layout::NODE_KEY));
                // Directly under `date=…/node=…/`, a finished data file.
                if node_level && dir.len() > p.len() && layout::is_file_name(name) {
                    by_dir
                        .entry(dir.to_string())
                        .or_default()
                        .push(PathBuf::from(&key));
                }
            }
        }
        Ok(by_dir
            .into_iter()
            .map(|(d, mut f)| {
                f.sort();
                (PathBuf::from(d), f)
            })
            .collect())
    }

    /// Reads the objects `keys` whole, [`FETCH_CONCURRENCY`] at a time, in
    /// their order.
    pub(crate) fn fetch(&self, keys: &[PathBuf]) -> Result<Vec<Bytes>, RollupError> {
        let store = self.store.clone();
        let url = self.url.clone();
        self.rt.block_on(
            futures::stream::iter(keys.iter().map(|k| {
                let store = store.clone();
                let key = k.to_string_lossy().to_string();
                let url = url.clone();
                async move {
                    let loc = ObjPath::from(key.as_str());
                    let r = store.get(&loc).await;
                    let r = match r {
                        Ok(g) => g.bytes().await,
                        Err(e) => Err(e),
                    };
                    r.map_err(|source| RollupError::Store {
                        action: "read",
                        location: format!("{url} object {key}"),
                        source,
                    })
                }
            }))
            .buffered(FETCH_CONCURRENCY)
            .try_collect(),
        )
    }
}

impl StoreRoot {
    /// Writes `body` to the object `key` in one PUT: readers see the whole
    /// object or none of it (the object-store form of a rename).
    pub(crate) fn put(&self, key: &Path, body: Vec<u8>) -> Result<(), RollupError> {
        let k = key.to_string_lossy().to_string();
        self.rt
            .block_on(
                self.store
                    .put(&ObjPath::from(k.as_str()), Bytes::from(body).into()),
            )
            .map(|_| ())
            .map_err(|source| RollupError::Store {
                action: "write",
                location: format!("{} object {k}", self.url),
                source,
            })
    }

    /// Deletes the object `key` (an absent object is not an error).
    pub(crate) fn delete(&self, key: &Path) -> Result<(), RollupError> {
        let k = key.to_string_lossy().to_string();
        match self
            .rt
            .block_on(self.store.delete(&ObjPath::from(k.as_str())))
        {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(source) => Err(RollupError::Store {
                action: "delete",
                location: format!("{} object {k}", self.url),
                source,
            }),
        }
    }
}

/// A rollup file's bytes for the Parquet reader: a local file, or an object
/// read whole.
pub enum Body {
    /// A local file, read in ranges.
    File(File),
    /// An object's body.
    Bytes(Bytes),
}

/// [`Body`]'s sequential reader.
pub enum BodyRead {
    /// From a file.
    File(BufReader<File>),
    /// From memory.
    Bytes(bytes::buf::Reader<Bytes>),
}

impl Read for BodyRead {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            BodyRead::File(f) => f.read(buf),
            BodyRead::Bytes(b) => b.read(buf),
        }
    }
}

impl Length for Body {
    fn len(&self) -> u64 {
        match self {
            Body::File(f) => Length::len(f),
            Body::Bytes(b) => b.len() as u64,
        }
    }
}

impl ChunkReader for Body {
    type T = BodyRead;

    fn get_read(&self, start: u64) -> parquet::errors::Result<BodyRead> {
        match self {
            Body::File(f) => {
                let mut r = f.try_clone()?;
                r.seek(SeekFrom::Start(start))?;
                Ok(BodyRead::File(BufReader::new(r)))
            }
            Body::Bytes(b) => {
                let start = usize::try_from(start).unwrap_or(usize::MAX);
                if start > b.len() {
                    return Err(parquet::errors::ParquetError::EOF(format!(
                        "read at offset {start} of a {}-byte object",
                        b.len()
                    )));
                }
                Ok(BodyRead::Bytes(b.slice(start..).reader()))
            }
        }
    }

    fn get_bytes(&self, start: u64, length: usize) -> parquet::errors::Result<Bytes> {
        match self {
            Body::File(f) => f.get_bytes(start, length),
            Body::Bytes(b) => b.get_bytes(start, length),
        }
    }
}
