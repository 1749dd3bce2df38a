//! What the shipper counts, for `/metrics` and the logs: a shared handle of
//! atomics ([`ShipStats`]) that the loop updates, and a plain snapshot
//! ([`ShipSnapshot`]) that the agent reads when it renders its metrics.
//! Counters only grow; `files_waiting`, `bytes_waiting` and the age of the
//! oldest waiting file are gauges.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Why a file was deleted locally without being shipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// The backlog was over `max_backlog_files` or `max_backlog_bytes`: the
    /// oldest files went, never the newest.
    BacklogFull,
    /// The file had waited longer than `max_age_ms`.
    MaxAge,
    /// The file disappeared before it was shipped (deleted by someone else,
    /// e.g. the Parquet sink's own retention).
    Vanished,
}

impl DropReason {
    /// Every reason, in the order of [`ShipSnapshot::dropped`]'s fields.
    pub const ALL: [DropReason; 3] = [Self::BacklogFull, Self::MaxAge, Self::Vanished];

    /// The value of the `reason` label on `/metrics` and in the logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BacklogFull => "backlog_full",
            Self::MaxAge => "max_age",
            Self::Vanished => "vanished",
        }
    }
}

/// Files dropped, by reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Dropped {
    /// [`DropReason::BacklogFull`].
    pub backlog_full: u64,
    /// [`DropReason::MaxAge`].
    pub max_age: u64,
    /// [`DropReason::Vanished`].
    pub vanished: u64,
}

impl Dropped {
    /// The count for one reason.
    pub fn get(&self, reason: DropReason) -> u64 {
        match reason {
            DropReason::BacklogFull => self.backlog_full,
            DropReason::MaxAge => self.max_age,
            DropReason::Vanished => self.vanished,
        }
    }

    /// All reasons together.
    pub fn total(&self) -> u64 {
        self.backlog_full + self.max_age + self.vanished
    }
}

/// The shipper's counters at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ShipSnapshot {
    /// Closed files waiting to be shipped, as of the last scan (less those
    /// shipped since). Gauge.
    pub files_waiting: u64,
    /// Their total size, bytes. Gauge.
    pub bytes_waiting: u64,
    /// How long the oldest waiting file has existed since it was closed,
    /// seconds; `None` when nothing waits. Alert on it: it grows without
    /// bound when shipping stalls.
    pub oldest_waiting_age_secs: Option<f64>,
    /// Files uploaded, verified and deleted locally.
    pub files_uploaded: u64,
    /// Their total size, bytes.
    pub bytes_uploaded: u64,
    /// Attempts that failed (reading the file, the upload, the HEAD, or a
    /// verification mismatch); each is retried after a backoff.
    pub failed_attempts: u64,
    /// Of `failed_attempts`, those where the object's size or ETag did not
    /// match the file.
    pub verify_mismatches: u64,
    /// Files deleted locally without being shipped, by reason.
    pub dropped: Dropped,
    /// Scans of the data directory completed.
    pub scans: u64,
}

/// The shipper's live counters, shared between its loop and whoever
/// renders them (cheap to clone).
#[derive(Debug, Clone, Default)]
pub struct ShipStats(Arc<Inner>);

#[derive(Debug, Default)]
struct Inner {
    files_waiting: AtomicU64,
    bytes_waiting: AtomicU64,
    /// Modification time of the oldest waiting file, ms since the Unix
    /// epoch; 0 when nothing waits.
    oldest_waiting_mtime_ms: AtomicU64,
    files_uploaded: AtomicU64,
    bytes_uploaded: AtomicU64,
    failed_attempts: AtomicU64,
    verify_mismatches: AtomicU64,
    dropped_backlog_full: AtomicU64,
    dropped_max_age: AtomicU64,
    dropped_vanished: AtomicU64,
    scans: AtomicU64,
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis().min(u128::from(u64::MAX)) as u64)
        .unwrap_or(0)
}

// Relaxed ordering throughout: these are statistics, not synchronisation.
impl ShipStats {
    /// The counters now. The oldest file's age is computed at this moment,
    /// so it keeps growing while the loop is stuck in a slow request.
    pub fn snapshot(&self) -> ShipSnapshot {
        let i = &self.0;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let oldest = get(&i.oldest_waiting_mtime_ms);
        let oldest_waiting_age_secs = (oldest > 0).then(|| {
            let now = unix_ms(SystemTime::now());
            Duration::from_millis(now.saturating_sub(oldest)).as_secs_f64()
        });
        ShipSnapshot {
            files_waiting: get(&i.files_waiting),
            bytes_waiting: get(&i.bytes_waiting),
            oldest_waiting_age_secs,
            files_uploaded: get(&i.files_uploaded),
            bytes_uploaded: get(&i.bytes_uploaded),
            failed_attempts: get(&i.failed_attempts),
            verify_mismatches: get(&i.verify_mismatches),
            dropped: Dropped {
                backlog_full: get(&i.dropped_backlog_full),
                max_age: get(&i.dropped_max_age),
                vanished: get(&i.dropped_vanished),
            },
            scans: get(&i.scans),
        }
    }

    pub(crate) fn set_waiting(&self, files: u64, bytes: u64, oldest_mtime: Option<SystemTime>) {
        let i = &self.0;
        i.files_waiting.store(files, Ordering::Relaxed);
        i.bytes_waiting.store(bytes, Ordering::Relaxed);
        // A file from 1970 still counts as waiting: keep it above 0.
        let ms = oldest_mtime.map_or(0, |t| unix_ms(t).max(1));
        i.oldest_waiting_mtime_ms.store(ms, Ordering::Relaxed);
    }

    pub(crate) fn uploaded(&self, bytes: u64) {
        self.0.files_uploaded.fetch_add(1, Ordering::Relaxed);
        self.0.bytes_uploaded.fetch_add(bytes, Ordering::Relaxed);
    }

    pub(crate) fn failed(&self, verify_mismatch: bool) {
        self.0.failed_attempts.fetch_add(1, Ordering::Relaxed);
        if verify_mismatch {
            self.0.verify_mismatches.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub(crate) fn dropped(&self, reason: DropReason) {
        let c = match reason {
            DropReason::BacklogFull => &self.0.dropped_backlog_full,
            DropReason::MaxAge => &self.0.dropped_max_age,
            DropReason::Vanished => &self.0.dropped_vanished,
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn scanned(&self) {
        self.0.scans.fetch_add(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn absent_oldest_file_is_none_not_zero() {
        let s = ShipStats::default();
        assert_eq!(s.snapshot().oldest_waiting_age_secs, None);
        let an_hour_ago = SystemTime::now() - Duration::from_secs(3600);
        s.set_waiting(2, 10, Some(an_hour_ago));
        let age = s.snapshot().oldest_waiting_age_secs.unwrap();
        assert!(age >= 3600.0, "{age}");
        s.set_waiting(0, 0, None);
        assert_eq!(s.snapshot().oldest_waiting_age_secs, None);
    }

    #[test]
    fn drops_count_by_reason() {
        let s = ShipStats::default();
        s.dropped(DropReason::BacklogFull);
        s.dropped(DropReason::BacklogFull);
        s.dropped(DropReason::Vanished);
        let d = s.snapshot().dropped;
        assert_eq!(d.get(DropReason::BacklogFull), 2);
        assert_eq!(d.get(DropReason::MaxAge), 0);
        assert_eq!(d.total(), 3);
        let labels: Vec<_> = DropReason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(labels, ["backlog_full", "max_age", "vanished"]);
    }
}
