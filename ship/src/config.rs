//! `[ship]` in the agent's config file: where closed files go, how the S3
//! client reaches it, and the limits of the local backlog. Validated once by
//! [`Shipper::new`](crate::Shipper::new), before anything runs; the loop
//! trusts these values.
//!
//! Credentials are not here: they come from the standard AWS sources
//! (environment, web identity / IRSA, ECS, instance profile) through
//! `AmazonS3Builder::from_env`, so no secret ever sits in a ConfigMap.

use std::time::Duration;

use object_store::aws::AmazonS3Builder;
use object_store::path::Path as ObjPath;
use object_store::{ClientOptions, RetryConfig};
use serde::{Deserialize, Serialize};

/// A configuration value that is missing or out of range: which field, and
/// why, in one line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid ship config: {field}: {reason}")]
pub struct ConfigError {
    /// The field, as spelled in the config file.
    pub field: &'static str,
    /// Why it is invalid.
    pub reason: String,
}

impl ConfigError {
    fn new(field: &'static str, reason: impl Into<String>) -> Self {
        Self {
            field,
            reason: reason.into(),
        }
    }
}

/// Configuration of the shipper (`[ship]` in the config file). Every field
/// has a default, so an empty section is valid (and off).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShipConfig {
    /// Ship closed files at all. Default `false`: shipping needs a
    /// `destination`, and without it files stay on the node under the
    /// Parquet sink's retention.
    pub enabled: bool,
    /// Where files go: `s3://BUCKET/PREFIX/` (the prefix may be empty). A
    /// file `DATA/probes/date=…/node=…/part-….parquet` becomes the object
    /// `PREFIX/probes/date=…/node=…/part-….parquet`. Required when enabled.
    pub destination: Option<String>,
    /// The bucket's region. `None`: `AWS_REGION` / `AWS_DEFAULT_REGION`,
    /// else `us-east-1`.
    pub region: Option<String>,
    /// The S3 API endpoint of an S3-compatible store, e.g.
    /// `http://minio.storage:9000`. `None`: `AWS_ENDPOINT_URL`, else AWS S3.
    pub endpoint: Option<String>,
    /// Address the bucket in the path (`ENDPOINT/BUCKET/KEY`) rather than in
    /// the host name (`BUCKET.ENDPOINT/KEY`). Default `true`: MinIO and most
    /// S3-compatible stores need it, and AWS S3 accepts it.
    pub path_style: bool,
    /// Allow a plain `http://` endpoint. Default `false`; for tests and an
    /// in-cluster store without TLS.
    pub allow_http: bool,
    /// How often the data directory is scanned for closed files, ms.
    /// Default 30000 (30 s). The Parquet sink closes a file every 5 min.
    pub scan_interval_ms: u64,
    /// Most files that may wait locally; beyond it the oldest are dropped
    /// (deleted unshipped, counted as `backlog_full`). Default 20000. 0: no
    /// limit.
    pub max_backlog_files: u64,
    /// Most bytes that may wait locally; beyond it the oldest files are
    /// dropped. Default 8 GiB, below the Parquet sink's 10 GiB retention, so
    /// that the shipper drops (and counts) before the writer's retention
    /// deletes. 0: no limit.
    pub max_backlog_bytes: u64,
    /// Drop files that have waited longer than this (by modification time,
    /// which is when the writer closed them), ms. Default 7 days, the
    /// Parquet sink's retention. 0: no limit.
    pub max_age_ms: u64,
    /// Limit of one request (an upload or a HEAD), ms. Default 60000.
    pub request_timeout_ms: u64,
    /// Limit of one TCP connect, ms. Default 5000.
    pub connect_timeout_ms: u64,
    /// Delay before the first retry after a failed attempt, ms. Default
    /// 1000. Each further failure doubles it, up to `retry_max_ms`.
    pub retry_initial_ms: u64,
    /// Longest delay between retries, ms, before jitter (which adds up to as
    /// much again, so that a fleet does not retry in step). Default 300000
    /// (5 min).
    pub retry_max_ms: u64,
    /// Before deleting the local copy, require the object's ETag to equal
    /// the file's MD5 (what S3, MinIO and moto return for a single-part
    /// upload without KMS encryption). Default `true`. Turn it off for
    /// buckets with SSE-KMS or SSE-C, whose ETags are not an MD5: the size
    /// is then the only check after the upload.
    pub verify_etag_md5: bool,
    /// Send the body's SHA-256 with each upload
    /// (`x-amz-checksum-sha256`), which AWS S3 and MinIO check against what
    /// they received and reject on mismatch. Default `true`.
    pub checksum_sha256: bool,
}

impl Default for ShipConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            destination: None,
            region: None,
            endpoint: None,
            path_style: true,
            allow_http: false,
            scan_interval_ms: 30_000,
            max_backlog_files: 20_000,
            max_backlog_bytes: 8 * 1024 * 1024 * 1024,
            max_age_ms: 7 * 24 * 3600 * 1000,
            request_timeout_ms: 60_000,
            connect_timeout_ms: 5_000,
            retry_initial_ms: 1_000,
            retry_max_ms: 300_000,
            verify_etag_md5: true,
            checksum_sha256: true,
        }
    }
}

/// A parsed `s3://BUCKET/PREFIX/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    /// The bucket.
    pub bucket: String,
    /// The key prefix inside it (empty: the bucket's root).
    pub prefix: ObjPath,
}

impl Destination {
    /// Parses `s3://BUCKET/PREFIX/` (trailing slash optional).
    pub fn parse(s: &str) -> Result<Self, ConfigError> {
        let bad = |reason: &str| Err(ConfigError::new("destination", format!("{s:?} {reason}")));
        let Some(rest) = s.strip_prefix("s3://") else {
            return bad("does not start with s3://");
        };
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let bucket_ok = (3..=63).contains(&bucket.len())
            && bucket
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '-'));
        if !bucket_ok {
            return bad("has no valid bucket name (3 to 63 of a-z, 0-9, '.', '-')");
        }
        let prefix = prefix.trim_end_matches('/');
        if prefix.split('/').any(|seg| seg.is_empty()) && !prefix.is_empty() {
            return bad("has an empty path segment");
        }
        let Ok(prefix) = ObjPath::parse(prefix) else {
            return bad("has a prefix that is not a valid object path");
        };
        Ok(Self {
            bucket: bucket.to_string(),
            prefix,
        })
    }

    /// The object key of a file at `rel` (its path relative to the data
    /// directory, `/`-separated): the same relative path under the prefix.
    pub fn key(&self, rel: &str) -> ObjPath {
        self.prefix
            .parts()
            .chain(ObjPath::from(rel).parts())
            .collect()
    }
}

impl std::fmt::Display for Destination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.prefix.as_ref().is_empty() {
            write!(f, "s3://{}/", self.bucket)
        } else {
            write!(f, "s3://{}/{}/", self.bucket, self.prefix)
        }
    }
}

impl ShipConfig {
    /// Checks values that serde cannot, naming the first bad field and why.
    /// Returns the parsed destination (`None` when shipping is off).
    pub fn validate(&self) -> Result<Option<Destination>, ConfigError> {
        let positive = |field: &'static str, v: u64| {
            if v == 0 {
                Err(ConfigError::new(field, "must be greater than 0"))
            } else {
                Ok(())
            }
        };
        positive("scan_interval_ms", self.scan_interval_ms)?;
        positive("request_timeout_ms", self.request_timeout_ms)?;
        positive("connect_timeout_ms", self.connect_timeout_ms)?;
        positive("retry_initial_ms", self.retry_initial_ms)?;
        if self.retry_max_ms < self.retry_initial_ms {
            return Err(ConfigError::new(
                "retry_max_ms",
                format!(
                    "must be at least retry_initial_ms ({})",
                    self.retry_initial_ms
                ),
            ));
        }
        if let Some(ep) = &self.endpoint {
            if ep.starts_with("http://") {
                if !self.allow_http {
                    return Err(ConfigError::new(
                        "endpoint",
                        format!("{ep:?} is plain http but allow_http is false"),
                    ));
                }
            } else if !ep.starts_with("https://") {
                return Err(ConfigError::new(
                    "endpoint",
                    format!("{ep:?} does not start with http:// or https://"),
                ));
            }
        }
        match (&self.destination, self.enabled) {
            (Some(d), _) => Destination::parse(d).map(Some),
            (None, true) => Err(ConfigError::new(
                "destination",
                "is required when enabled (s3://BUCKET/PREFIX/)",
            )),
            (None, false) => Ok(None),
        }
    }

    /// An S3 client builder for `dest`: the standard AWS sources first
    /// (`AmazonS3Builder::from_env`: `AWS_*` variables, then web identity /
    /// IRSA, ECS and instance-profile credentials at request time), then
    /// this config on top. The client itself never retries: every retry is
    /// the shipper's, with its backoff, counted.
    pub fn s3_builder(&self, dest: &Destination) -> AmazonS3Builder {
        let mut b = AmazonS3Builder::from_env()
            .with_bucket_name(&dest.bucket)
            .with_virtual_hosted_style_request(!self.path_style)
            .with_allow_http(self.allow_http)
            .with_retry(RetryConfig {
                max_retries: 0,
                retry_timeout: Duration::from_millis(self.request_timeout_ms),
                ..RetryConfig::default()
            })
            .with_client_options(
                ClientOptions::new()
                    .with_allow_http(self.allow_http)
                    .with_timeout(Duration::from_millis(self.request_timeout_ms))
                    .with_connect_timeout(Duration::from_millis(self.connect_timeout_ms)),
            );
        if let Some(r) = &self.region {
            b = b.with_region(r);
        }
        if let Some(ep) = &self.endpoint {
            b = b.with_endpoint(ep);
        }
        if self.checksum_sha256 {
            b = b.with_checksum_algorithm(object_store::aws::Checksum::SHA256);
        }
        b
    }

    /// Sets the destination from an environment variable or a flag: a
    /// value turns shipping on, an empty one turns it off (as an empty OTLP
    /// endpoint does).
    pub fn set_destination(&mut self, destination: String) {
        self.enabled = !destination.is_empty();
        self.destination = Some(destination).filter(|d| !d.is_empty());
    }

    pub(crate) fn scan_interval(&self) -> Duration {
        Duration::from_millis(self.scan_interval_ms)
    }

    pub(crate) fn max_age(&self) -> Option<Duration> {
        (self.max_age_ms > 0).then(|| Duration::from_millis(self.max_age_ms))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn empty_section_is_valid_and_off() {
        let c: ShipConfig = toml::from_str("").unwrap();
        assert_eq!(c, ShipConfig::default());
        assert_eq!(c.validate(), Ok(None));
    }

    #[test]
    fn unknown_fields_are_rejected() {
        let e = toml::from_str::<ShipConfig>("bucket = \"x\"").unwrap_err();
        assert!(e.to_string().contains("unknown field"), "{e}");
    }

    #[test]
    fn enabled_needs_a_destination() {
        let c = ShipConfig {
            enabled: true,
            ..ShipConfig::default()
        };
        let e = c.validate().unwrap_err();
        assert_eq!(e.field, "destination");
        assert!(!e.to_string().contains('\n'));
    }

    #[test]
    fn destinations_parse_to_bucket_and_prefix() {
        let d = Destination::parse("s3://my-bucket/fleet/a/").unwrap();
        assert_eq!(d.bucket, "my-bucket");
        assert_eq!(d.prefix.as_ref(), "fleet/a");
        assert_eq!(d.to_string(), "s3://my-bucket/fleet/a/");
        assert_eq!(
            d.key("probes/date=2026-01-01/node=n1/part-x.parquet")
                .as_ref(),
            "fleet/a/probes/date=2026-01-01/node=n1/part-x.parquet"
        );
        let root = Destination::parse("s3://bkt").unwrap();
        assert_eq!(root.prefix.as_ref(), "");
        assert_eq!(root.key("health/p.parquet").as_ref(), "health/p.parquet");
        assert_eq!(root.to_string(), "s3://bkt/");
        for bad in [
            "bkt/x",
            "s3://",
            "s3://A_B/x",
            "s3://bkt/a//b",
            "s3://bkt/a/../b",
        ] {
            assert!(Destination::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn plain_http_endpoint_needs_allow_http() {
        let mut c = ShipConfig {
            destination: Some("s3://bkt/p/".into()),
            endpoint: Some("http://127.0.0.1:9000".into()),
            ..ShipConfig::default()
        };
        assert_eq!(c.validate().unwrap_err().field, "endpoint");
        c.allow_http = true;
        assert!(c.validate().is_ok());
        c.endpoint = Some("minio:9000".into());
        assert_eq!(c.validate().unwrap_err().field, "endpoint");
    }

    #[test]
    fn zero_intervals_and_inverted_retries_are_rejected() {
        let ok = ShipConfig::default();
        for (field, c) in [
            (
                "scan_interval_ms",
                ShipConfig {
                    scan_interval_ms: 0,
                    ..ok.clone()
                },
            ),
            (
                "retry_max_ms",
                ShipConfig {
                    retry_max_ms: 10,
                    ..ok.clone()
                },
            ),
        ] {
            assert_eq!(c.validate().unwrap_err().field, field);
        }
    }
}
