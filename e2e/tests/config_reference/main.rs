//! `docs/config-reference.md` is generated from the agent's config structs and
//! kept in step by this test, as the schema's column tables are.
//!
//! The keys and their meaning come from the Rust sources: every struct with
//! `#[serde(deny_unknown_fields…)]` (the agent rejects any other key) and the
//! `///` doc comment of each `pub field: Type,`, walked from `Config` down
//! through the fields whose type is another such struct (the `[tables]`). The
//! defaults come from `slicetrace_agent::config::Config::default()`, serialised
//! as the agent would read it. The set of keys parsed from the sources must be
//! exactly the set the default serialises to, so a field the parser missed
//! fails the test instead of vanishing from the reference.
//!
//! Environment variables are the `SLICETRACE_*`, `OTEL_*` and `NODE_NAME`
//! names that the agent's sources read; each needs a line in [`ENV_DOCS`].
//!
//! Regenerate after changing a config struct:
//!
//! ```sh
//! SLICETRACE_BLESS=1 cargo test -p slicetrace-e2e --test config_reference
//! ```
//!
//! One job per file: `parse.rs` reads the structs and enums from the
//! sources, `generate.rs` writes the reference; this file lists the sources
//! and the environment variables, and holds the tests.

use std::collections::BTreeSet;

mod generate;
mod parse;

use generate::{env_vars_in_sources, generate};

/// Sources that hold config structs, and the enums their fields use.
const SOURCES: [&str; 11] = [
    "agent/src/config/mod.rs",
    "agent/src/probe/config.rs",
    "agent/src/probe/watchdog.rs",
    "agent/src/consumers/health/config.rs",
    "agent/src/consumers/otlp/config.rs",
    "agent/src/consumers/parquet/config.rs",
    "agent/src/probe/occupancy/mod.rs",
    "agent/src/probe/occupancy/kube_api/mod.rs",
    "ship/src/config.rs",
    "probe/src/lib.rs",
    "probe/src/spec.rs",
];

/// Where the agent's sources read environment variables.
const ENV_SOURCES: [&str; 6] = [
    "agent/src/config/resolve.rs",
    "agent/src/main.rs",
    "agent/src/consumers/otlp/config.rs",
    "agent/src/consumers/otlp/exporter.rs",
    "agent/src/consumers/otlp/attributes.rs",
    "agent/src/probe/occupancy/kube_api/mod.rs",
];

/// One line per environment variable the agent reads.
const ENV_DOCS: &[(&str, &str)] = &[
    ("SLICETRACE_CONFIG", "The config file, instead of `--config`."),
    (
        "SLICETRACE_LOG",
        "Log filter, in `tracing` EnvFilter syntax: a level (`info`, `debug`) or per-target directives such as `info,slicetrace_agent=debug` or `slicetrace_agent::probe::occupancy=trace`. Default: `info`, with hyper, h2, tonic, tower, kube, OpenTelemetry, reqwest and rustls at `warn`.",
    ),
    (
        "SLICETRACE_LOG_FORMAT",
        "`text` or `json`; overrides `log_format` (the DaemonSet sets `json`).",
    ),
    ("SLICETRACE_BACKEND", "Overrides `backend`."),
    ("SLICETRACE_PRESET", "Overrides `preset`."),
    ("SLICETRACE_DATA_DIR", "Overrides `data_dir`."),
    (
        "SLICETRACE_INTERVAL",
        "Overrides `probe.interval_ms`, as a duration (`1s`, `250ms`).",
    ),
    (
        "SLICETRACE_RATE_HZ",
        "Overrides `probe.rate_hz` (mean Poisson arrivals per second per GPU).",
    ),
    ("SLICETRACE_METRICS_LISTEN", "Overrides `metrics.listen`."),
    (
        "SLICETRACE_SHIP_DESTINATION",
        "Overrides `ship.destination` and turns shipping on (`ship.enabled`); an empty value turns it off.",
    ),
    ("SLICETRACE_SHIP_ENDPOINT", "Overrides `ship.endpoint`."),
    (
        "NODE_NAME",
        "The node name when `node_name` is empty (the DaemonSet sets it from `spec.nodeName`).",
    ),
    (
        "KUBERNETES_SERVICE_HOST",
        "Set by Kubernetes in every pod; with `occupancy.kube_api = \"auto\"` and no `kubeconfig`, its presence selects the in-cluster API config.",
    ),
    (
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "Overrides `otlp.endpoint` (`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` wins over it).",
    ),
    (
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "Overrides `otlp.endpoint`.",
    ),
    (
        "OTEL_EXPORTER_OTLP_PROTOCOL",
        "Overrides `otlp.protocol` (`OTEL_EXPORTER_OTLP_TRACES_PROTOCOL` wins over it).",
    ),
    (
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        "Overrides `otlp.protocol`.",
    ),
    (
        "OTEL_EXPORTER_OTLP_TIMEOUT",
        "Overrides `otlp.timeout_ms`, in ms (`OTEL_EXPORTER_OTLP_TRACES_TIMEOUT` wins over it).",
    ),
    (
        "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
        "Overrides `otlp.timeout_ms`, in ms.",
    ),
    (
        "OTEL_EXPORTER_OTLP_INSECURE",
        "Overrides `otlp.insecure` (`OTEL_EXPORTER_OTLP_TRACES_INSECURE` wins over it).",
    ),
    (
        "OTEL_EXPORTER_OTLP_TRACES_INSECURE",
        "Overrides `otlp.insecure`.",
    ),
    (
        "OTEL_EXPORTER_OTLP_CERTIFICATE",
        "Overrides `otlp.ca_file` (`OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE` wins over it).",
    ),
    (
        "OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE",
        "Overrides `otlp.ca_file`.",
    ),
    (
        "OTEL_EXPORTER_OTLP_HEADERS",
        "Extra export headers, read by the exporter itself; for a key also in `otlp.headers`, the environment wins.",
    ),
    (
        "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
        "As `OTEL_EXPORTER_OTLP_HEADERS`, for traces only.",
    ),
    (
        "OTEL_TRACES_SAMPLER",
        "Overrides `otlp.sampler` (`always_on`, `always_off`, `traceidratio`, `parentbased_always_on`, `parentbased_always_off`, `parentbased_traceidratio`).",
    ),
    (
        "OTEL_TRACES_SAMPLER_ARG",
        "Overrides `otlp.sampler_arg` (the ratio of the `traceidratio` samplers, 0 to 1).",
    ),
    ("OTEL_SERVICE_NAME", "`service.name` of the spans' resource."),
    (
        "OTEL_RESOURCE_ATTRIBUTES",
        "More resource attributes (`k8s.node.name=…,k8s.pod.name=…`).",
    ),
];

/// Variables in [`ENV_DOCS`] that the OpenTelemetry SDK reads itself (the
/// agent's sources need not name them).
const READ_BY_THE_OTEL_SDK: [&str; 1] = ["OTEL_RESOURCE_ATTRIBUTES"];

const BLESS_COMMAND: &str =
    "SLICETRACE_BLESS=1 cargo test -p slicetrace-e2e --test config_reference";

#[test]
fn config_reference_matches_the_config_structs() {
    let want = generate();
    let path = slicetrace_e2e::root().join("docs/config-reference.md");
    if std::env::var("SLICETRACE_BLESS").as_deref() == Ok("1") {
        std::fs::write(&path, &want).expect("write docs/config-reference.md");
        eprintln!("wrote {}", path.display());
    }
    let have = std::fs::read_to_string(&path).unwrap_or_default();
    if have != want {
        let first = have
            .lines()
            .zip(want.lines())
            .position(|(a, b)| a != b)
            .unwrap_or_else(|| have.lines().count().min(want.lines().count()));
        panic!(
            "docs/config-reference.md is out of date (first difference at line {}):\n  have: {}\n  want: {}\nRegenerate it with:\n  {BLESS_COMMAND}",
            first + 1,
            have.lines().nth(first).unwrap_or("<end of file>"),
            want.lines().nth(first).unwrap_or("<end of file>"),
        );
    }
}

#[test]
fn every_environment_variable_the_agent_reads_is_documented() {
    let found = env_vars_in_sources();
    let documented: BTreeSet<String> = ENV_DOCS.iter().map(|(n, _)| n.to_string()).collect();
    let missing: Vec<&String> = found.difference(&documented).collect();
    assert!(
        missing.is_empty(),
        "environment variables read by the agent without a line in ENV_DOCS (e2e/tests/config_reference.rs): {missing:?}; add them, then run {BLESS_COMMAND}"
    );
    // The list is not stale either: every documented variable is read (by
    // the agent's code, or by the OpenTelemetry SDK for those listed here).
    let stale: Vec<&String> = documented
        .difference(&found)
        .filter(|n| !READ_BY_THE_OTEL_SDK.contains(&n.as_str()))
        .collect();
    assert!(
        stale.is_empty(),
        "ENV_DOCS documents variables no agent source reads: {stale:?}"
    );
}
