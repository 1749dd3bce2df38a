//! Shipping the agent's closed Parquet files to S3-compatible storage.
//!
//! The agent's Parquet sink writes `DATA/<table>/date=…/node=…/part-….parquet`
//! as a hidden `.part-….parquet.tmp` and renames it only after its footer is
//! written and synced. The shipper is one more consumer beside it, with its
//! own task and no queue: every `scan_interval_ms` it lists the closed files
//! of every table (`probes`, `health`, any later one), and uploads each to
//! the same relative path under `s3://BUCKET/PREFIX/`, so a fleet's bucket
//! has exactly the layout `slicetrace fleet s3://BUCKET/PREFIX` reads.
//!
//! One file's way (oldest first, one at a time):
//!
//! ```text
//!   closed by the writer
//!         │
//!         ▼
//!     waiting ──(over max_backlog_* : oldest first / over max_age_ms)──► dropped (deleted, counted by reason)
//!         │  ▲
//!  upload │  │ failure (read, PUT, HEAD, mismatch): counted, retried after a backoff
//!         ▼  │
//!     uploading ── PUT of the whole file to its stable key (with x-amz-checksum-sha256)
//!         │
//!         ▼
//!     verified ── HEAD: size equal, ETag equal to the file's MD5
//!         │
//!         ▼
//!     deleted locally (counted as uploaded)
//! ```
//!
//! **Idempotent.** The key is the file's path relative to the data
//! directory, and file names are unique (start time and a UUID), so a retry
//! or a restart writes the same bytes to the same key: it can never produce a
//! second object for one file. **Crash-safe.** The local copy goes only after
//! the object was verified; a crash (even SIGKILL) between the upload and the
//! delete leaves the file waiting, and the next run uploads it again over the
//! same key and then deletes it. Nothing is kept in memory between scans
//! except the backoff, so a restart loses nothing. **Bounded.** The backlog
//! has limits in files, bytes and age; when over, the oldest files are
//! deleted unshipped and counted, never the newest. **Never blocking.** File
//! I/O runs on tokio's blocking pool and requests are async; the agent's
//! probes never wait for S3. A stop signal ends [`Shipper::run`] at once:
//! an upload in flight is abandoned, which the two properties above make
//! safe (S3 stores an object whole or not at all).
//!
//! The counters ([`ShipStats`], [`ShipSnapshot`]) are for `/metrics`: files
//! waiting, uploaded, failed attempts, dropped by reason, bytes uploaded,
//! and the age of the oldest waiting file (alert on it: it grows when
//! shipping stalls).
//!
//! Modules, in the order a file meets them: `config.rs` (`[ship]`, the S3
//! client), `backlog.rs` (which files wait, which are dropped), `shipper.rs`
//! (the loop, one file's upload and verification), `backoff.rs`,
//! `stats.rs`.

mod backlog;
mod backoff;
mod config;
mod shipper;
mod stats;

pub use backoff::Backoff;
pub use config::{ConfigError, Destination, ShipConfig};
pub use shipper::{Shipper, Stage, StageHook};
pub use stats::{DropReason, Dropped, ShipSnapshot, ShipStats};

/// Errors of building a [`Shipper`]. Once built, it never fails: every
/// failure is counted and retried inside [`Shipper::run`].
#[derive(Debug, thiserror::Error)]
pub enum ShipError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The S3 client could not be built from the configuration and the
    /// environment.
    #[error("failed to create the S3 client for {destination}")]
    Store {
        /// The destination, `s3://BUCKET/PREFIX/`.
        destination: String,
        /// Cause.
        #[source]
        source: object_store::Error,
    },
}
