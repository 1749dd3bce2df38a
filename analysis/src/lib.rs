//! `slicetrace-analysis`: the offline half of slicetrace.
//!
//! The agent writes Hive-partitioned Parquet (`probes/date=…/node=…/part-….parquet`);
//! this crate reads it back, from a local directory or S3, through DataFusion:
//! [`source`] checks every file and registers the `probes` table (with the
//! derived `tenants` column and the `arrivals` view) or the `health` table,
//! [`pred`] builds each command's `WHERE` clause (arrival runs unless
//! `--all-runs`, counted by [`runs`]), [`scan`] streams query results, and the
//! command modules ([`report`], [`compare`], [`fleet`], [`query`], [`plot`])
//! turn them into tables, verdicts and charts. [`blame`] and [`whatif`] model
//! the time-slice rotation over the arrival rows [`tenancy`] reads: who made
//! the probe wait, and what the tail would be beside N busy tenants.
//! [`engine`] decides where the queries run: in this process, or on an
//! Apache Ballista cluster (`--engine df://HOST:PORT`, whose scheduler and
//! executors are the `slicetrace-ballista` binary). [`synth`] generates
//! synthetic data for tests and benchmarks.
//! The `slicetrace` binary (`main.rs`) is a thin clap layer over these.

pub mod blame;
pub mod compare;
pub mod engine;
pub mod fleet;
pub mod output;
pub mod plot;
pub mod pred;
pub mod query;
pub mod report;
pub mod rollup;
pub mod runs;
pub mod scan;
pub mod source;
pub mod stats;
pub mod synth;
pub mod tenancy;
pub mod whatif;
