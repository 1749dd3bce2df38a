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

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

/// Sources that hold config structs, and the enums their fields use.
const SOURCES: [&str; 8] = [
    "daemon/src/config.rs",
    "daemon/src/health/config.rs",
    "daemon/src/sinks/otlp/config.rs",
    "daemon/src/sinks/parquet/config.rs",
    "daemon/src/occupancy/mod.rs",
    "daemon/src/occupancy/kube_api.rs",
    "probe-workloads/src/lib.rs",
    "probe-workloads/src/spec.rs",
];

/// Where the agent's sources read environment variables.
const ENV_SOURCES: [&str; 6] = [
    "daemon/src/config.rs",
    "daemon/src/main.rs",
    "daemon/src/sinks/otlp/config.rs",
    "daemon/src/sinks/otlp/exporter.rs",
    "daemon/src/sinks/otlp/attributes.rs",
    "daemon/src/occupancy/kube_api.rs",
];

/// One line per environment variable the agent reads.
const ENV_DOCS: &[(&str, &str)] = &[
    ("SLICETRACE_CONFIG", "The config file, instead of `--config`."),
    (
        "SLICETRACE_LOG",
        "Log filter, in `tracing` EnvFilter syntax: a level (`info`, `debug`) or per-target directives such as `info,slicetrace_agent=debug` or `slicetrace_agent::occupancy=trace`. Default: `info`, with hyper, h2, tonic, tower, kube, OpenTelemetry, reqwest and rustls at `warn`.",
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

// ---------------------------------------------------------------------------
// A small parser of config structs and enums
// ---------------------------------------------------------------------------

/// One `pub field: Type,` of a config struct.
#[derive(Debug, Clone)]
struct Field {
    name: String,
    ty: String,
    doc: String,
}

/// A struct with `deny_unknown_fields`.
#[derive(Debug, Clone)]
struct ConfigStruct {
    doc: String,
    fields: Vec<Field>,
    source: String,
}

/// The serde names of an enum's variants.
type Enums = BTreeMap<String, Vec<String>>;

/// One line of Markdown from `///` lines: rustdoc links such as
/// [`Type::method`] become plain code spans (Markdown links stay).
fn join_doc(lines: &[String]) -> String {
    let mut text = lines
        .join(" ")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    let mut from = 0;
    while let Some(start) = text[from..].find("[`").map(|i| from + i) {
        let Some(end) = text[start + 2..].find("`]").map(|i| start + 2 + i) else {
            break;
        };
        if text[end + 2..].starts_with('(') {
            from = end + 2;
            continue;
        }
        text.replace_range(end + 1..end + 2, "");
        text.replace_range(start..start + 1, "");
        from = end;
    }
    text
}

fn rename(variant: &str, rule: Option<&str>) -> String {
    let words: Vec<String> = {
        let mut w = Vec::new();
        let mut cur = String::new();
        for c in variant.chars() {
            if c.is_uppercase() && !cur.is_empty() {
                w.push(cur.clone());
                cur.clear();
            }
            cur.push(c);
        }
        if !cur.is_empty() {
            w.push(cur);
        }
        w
    };
    match rule {
        Some("lowercase") => variant.to_lowercase(),
        Some("kebab-case") => words
            .iter()
            .map(|w| w.to_lowercase())
            .collect::<Vec<_>>()
            .join("-"),
        Some("snake_case") => words
            .iter()
            .map(|w| w.to_lowercase())
            .collect::<Vec<_>>()
            .join("_"),
        _ => variant.to_string(),
    }
}

/// Parses the config structs and the serde enums of one source file.
fn parse_source(
    rel: &str,
    text: &str,
    structs: &mut BTreeMap<String, ConfigStruct>,
    enums: &mut Enums,
) {
    let lines: Vec<&str> = text.lines().collect();
    let mut doc: Vec<String> = Vec::new();
    let mut attrs: Vec<String> = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i].trim();
        if let Some(d) = line.strip_prefix("///") {
            doc.push(d.trim().to_string());
        } else if line.starts_with("#[") {
            attrs.push(line.to_string());
        } else if let Some(rest) = line.strip_prefix("pub struct ") {
            let name = rest
                .split(|c: char| !c.is_alphanumeric() && c != '_')
                .next()
                .unwrap_or("")
                .to_string();
            let strict = attrs.iter().any(|a| a.contains("deny_unknown_fields"));
            if strict && rest.trim_end().ends_with('{') {
                let mut fields = Vec::new();
                let mut fdoc: Vec<String> = Vec::new();
                i += 1;
                while i < lines.len() && lines[i].trim() != "}" {
                    let l = lines[i].trim();
                    if let Some(d) = l.strip_prefix("///") {
                        fdoc.push(d.trim().to_string());
                    } else if let Some(f) = l.strip_prefix("pub ") {
                        let (fname, ty) = f
                            .split_once(':')
                            .unwrap_or_else(|| panic!("{rel}: cannot parse field `{l}`"));
                        let mut ty = ty.trim().to_string();
                        // A type may continue on the next lines.
                        while !ty.ends_with(',') && i + 1 < lines.len() {
                            i += 1;
                            ty.push_str(lines[i].trim());
                        }
                        fields.push(Field {
                            name: fname.trim().to_string(),
                            ty: ty.trim_end_matches(',').trim().to_string(),
                            doc: join_doc(&fdoc),
                        });
                        fdoc.clear();
                    } else if !l.starts_with("#[") && !l.starts_with("//") && !l.is_empty() {
                        panic!("{rel}: struct {name} has a field that is not `pub`: `{l}`");
                    }
                    i += 1;
                }
                structs.insert(
                    name,
                    ConfigStruct {
                        doc: join_doc(&doc),
                        fields,
                        source: rel.to_string(),
                    },
                );
            }
            doc.clear();
            attrs.clear();
        } else if let Some(rest) = line.strip_prefix("pub enum ") {
            let name = rest
                .split(|c: char| !c.is_alphanumeric() && c != '_')
                .next()
                .unwrap_or("")
                .to_string();
            let serde = attrs.iter().any(|a| a.contains("Deserialize"));
            let rule = attrs.iter().find_map(|a| {
                a.split_once("rename_all = \"")
                    .and_then(|(_, r)| r.split('"').next())
                    .map(str::to_string)
            });
            let mut variants = Vec::new();
            let mut renamed: Option<String> = None;
            let mut depth = 1;
            i += 1;
            while i < lines.len() && depth > 0 {
                let l = lines[i].trim();
                if depth == 1 {
                    if let Some(r) = l
                        .strip_prefix("#[serde(rename = \"")
                        .and_then(|r| r.split('"').next())
                    {
                        renamed = Some(r.to_string());
                    } else if l.starts_with(|c: char| c.is_ascii_uppercase()) {
                        let v: String = l
                            .chars()
                            .take_while(|c| c.is_alphanumeric() || *c == '_')
                            .collect();
                        variants.push(
                            renamed
                                .take()
                                .unwrap_or_else(|| rename(&v, rule.as_deref())),
                        );
                    }
                }
                depth += l.matches('{').count();
                depth -= l.matches('}').count();
                i += 1;
            }
            if serde {
                enums.insert(name, variants);
            }
            doc.clear();
            attrs.clear();
            continue;
        } else if !line.is_empty() {
            doc.clear();
            attrs.clear();
        }
        i += 1;
    }
}

fn parse_all() -> (BTreeMap<String, ConfigStruct>, Enums) {
    let mut structs = BTreeMap::new();
    let mut enums = Enums::new();
    for rel in SOURCES {
        parse_source(
            rel,
            &slicetrace_e2e::read_repo_file(rel),
            &mut structs,
            &mut enums,
        );
    }
    (structs, enums)
}

// ---------------------------------------------------------------------------
// The reference
// ---------------------------------------------------------------------------

/// `Option<T>` → (T, true).
fn strip_option(ty: &str) -> (&str, bool) {
    match ty.strip_prefix("Option<").and_then(|t| t.strip_suffix('>')) {
        Some(inner) => (inner, true),
        None => (ty, false),
    }
}

fn last_segment(ty: &str) -> &str {
    ty.rsplit("::").next().unwrap_or(ty)
}

/// The TOML type of a Rust field type, for readers.
fn toml_type(ty: &str, enums: &Enums) -> String {
    let (inner, _) = strip_option(ty);
    let t = last_segment(inner);
    match t {
        "u8" | "u16" | "u32" | "u64" | "usize" | "i32" | "i64" => "integer".into(),
        "f32" | "f64" => "float".into(),
        "bool" => "boolean".into(),
        "String" | "PathBuf" => "string".into(),
        "Vec<String>" => "array of strings".into(),
        "Vec<u32>" => "array of integers".into(),
        "BTreeMap<String, String>" | "HashMap<String, String>" => "table of strings".into(),
        _ => match enums.get(t) {
            Some(v) => format!(
                "string: {}",
                v.iter()
                    .map(|s| format!("`{s}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            None => panic!("no TOML type for Rust type `{ty}`: teach toml_type() about it"),
        },
    }
}

/// A default value as TOML would write it.
fn toml_literal(v: &Value) -> String {
    match v {
        Value::Null => "unset".into(),
        Value::String(s) => format!("`\"{s}\"`"),
        Value::Array(a) if a.is_empty() => "`[]`".into(),
        Value::Object(o) if o.is_empty() => "`{}`".into(),
        other => {
            let t: toml::Value = serde_json::from_value(other.clone())
                .unwrap_or_else(|e| panic!("default {other} has no TOML form: {e}"));
            format!("`{t}`")
        }
    }
}

fn md_cell(s: &str) -> String {
    s.replace('|', "\\|")
}

/// One table of the reference: (heading, key prefix, struct name, default).
struct Table<'a> {
    path: String,
    st: &'a ConfigStruct,
    default: &'a Value,
}

/// Walks `Config` and its sub-tables; checks that parsed and serialised keys
/// agree.
fn tables<'a>(
    structs: &'a BTreeMap<String, ConfigStruct>,
    name: &str,
    path: String,
    default: &'a Value,
    out: &mut Vec<Table<'a>>,
) {
    let st = structs
        .get(name)
        .unwrap_or_else(|| panic!("no deny_unknown_fields struct {name} in {SOURCES:?}"));
    let parsed: BTreeSet<&str> = st.fields.iter().map(|f| f.name.as_str()).collect();
    let serialised: BTreeSet<&str> = default
        .as_object()
        .unwrap_or_else(|| panic!("default of [{path}] is not a table"))
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        parsed, serialised,
        "[{path}] ({name} in {}): fields parsed from the source differ from the keys Config::default() serialises",
        st.source
    );
    out.push(Table {
        path: path.clone(),
        st,
        default,
    });
    for f in &st.fields {
        let (inner, _) = strip_option(&f.ty);
        let t = last_segment(inner);
        if structs.contains_key(t) {
            let sub = if path.is_empty() {
                f.name.clone()
            } else {
                format!("{path}.{}", f.name)
            };
            tables(structs, t, sub, &default[&f.name], out);
        }
    }
}

/// Every environment variable the agent's sources name.
fn env_vars_in_sources() -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for rel in ENV_SOURCES {
        let text = slicetrace_e2e::read_repo_file(rel);
        for (i, _) in text.match_indices('"') {
            let rest = &text[i + 1..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
                .collect();
            if rest[name.len()..].starts_with('"')
                && (name.starts_with("SLICETRACE_")
                    || name.starts_with("OTEL_")
                    || name == "NODE_NAME"
                    || name == "KUBERNETES_SERVICE_HOST")
            {
                out.insert(name);
            }
        }
    }
    out
}

fn generate() -> String {
    let (structs, enums) = parse_all();
    let default = serde_json::to_value(slicetrace_agent::config::Config::default())
        .expect("Config::default() serialises");
    let mut ts = Vec::new();
    tables(&structs, "Config", String::new(), &default, &mut ts);

    let mut md = String::new();
    md.push_str("# Configuration reference\n\n");
    md.push_str(
        "<!-- Generated by tests/tests/config_reference.rs from the agent's config structs. \
         Do not edit: change the doc comments in the code, then run\n     ",
    );
    md.push_str(BLESS_COMMAND);
    md.push_str(" -->\n\n");
    md.push_str(
        "Every key the agent's config file accepts, with its default and meaning, taken from \
         the doc comments of the config structs and from `Config::default()`. The agent \
         rejects any other key (`slicetrace-agent check-config FILE` says which, exit 2). \
         Precedence is file < environment < flags. `deploy/base/configmap.yaml` sets the \
         keys a DaemonSet most often changes; everything else keeps the default below.\n\n",
    );
    md.push_str("Tables:");
    for t in &ts {
        let title = if t.path.is_empty() {
            "top level".to_string()
        } else {
            format!("[{}]", t.path)
        };
        let anchor = if t.path.is_empty() {
            "top-level".to_string()
        } else {
            t.path.replace('.', "")
        };
        md.push_str(&format!(" [`{title}`](#{anchor})"));
    }
    md.push_str(", and [environment variables](#environment-variables).\n");
    for t in &ts {
        if t.path.is_empty() {
            md.push_str("\n## Top level\n\n");
        } else {
            md.push_str(&format!("\n## {}\n\n", t.path));
            md.push_str(&format!("`[{}]`: {}\n\n", t.path, md_cell(&t.st.doc)));
        }
        md.push_str(&format!("Source: `{}`.\n\n", t.st.source));
        md.push_str("| Key | Type | Default | Meaning |\n|---|---|---|---|\n");
        for f in &t.st.fields {
            let (inner, _) = strip_option(&f.ty);
            if structs.contains_key(last_segment(inner)) {
                continue; // a sub-table, documented in its own section
            }
            let key = if t.path.is_empty() {
                f.name.clone()
            } else {
                format!("{}.{}", t.path, f.name)
            };
            assert!(
                !f.doc.is_empty(),
                "{}: field {key} has no doc comment",
                t.st.source
            );
            md.push_str(&format!(
                "| `{key}` | {} | {} | {} |\n",
                md_cell(&toml_type(&f.ty, &enums)),
                md_cell(&toml_literal(&t.default[&f.name])),
                md_cell(&f.doc)
            ));
        }
    }
    md.push_str("\n## Environment variables\n\n");
    md.push_str(
        "Read at start; they override the file, and flags override them. `SLICETRACE_LOG` \
         and `SLICETRACE_LOG_FORMAT` set up logging before the config is read.\n\n",
    );
    md.push_str("| Variable | Meaning |\n|---|---|\n");
    let found = env_vars_in_sources();
    let mut names: BTreeSet<String> = ENV_DOCS.iter().map(|(n, _)| n.to_string()).collect();
    names.extend(found.iter().cloned());
    for n in &names {
        let doc = ENV_DOCS
            .iter()
            .find(|(k, _)| k == n)
            .map(|(_, d)| d.to_string())
            .unwrap_or_else(|| {
                "UNDOCUMENTED: add it to ENV_DOCS in tests/tests/config_reference.rs".into()
            });
        md.push_str(&format!("| `{n}` | {} |\n", md_cell(&doc)));
    }
    md
}

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
        "environment variables read by the agent without a line in ENV_DOCS (tests/tests/config_reference.rs): {missing:?}; add them, then run {BLESS_COMMAND}"
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

/// The parser itself: a struct, an optional field, a multi-line doc, an enum
/// with renamed variants.
#[test]
fn parser_reads_fields_docs_and_enum_names() {
    let src = r#"
/// A table.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DemoConfig {
    /// First line,
    /// second line.
    pub window_ms: u64,
    /// Optional.
    pub slo: Option<f64>,
}

/// Not a config struct.
pub struct Other {
    pub x: u32,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// A.
    #[default]
    SpinThenBlock,
    #[serde(rename = "http/protobuf")]
    HttpProtobuf,
    Tuple(u32),
}
"#;
    let mut structs = BTreeMap::new();
    let mut enums = Enums::new();
    parse_source("demo.rs", src, &mut structs, &mut enums);
    assert_eq!(structs.keys().collect::<Vec<_>>(), ["DemoConfig"]);
    let d = &structs["DemoConfig"];
    assert_eq!(d.doc, "A table.");
    assert_eq!(
        join_doc(&["See [`Thresholds::DEFAULT`] and [`a`](b).".into()]),
        "See `Thresholds::DEFAULT` and [`a`](b)."
    );
    assert_eq!(d.fields.len(), 2);
    assert_eq!(d.fields[0].name, "window_ms");
    assert_eq!(d.fields[0].ty, "u64");
    assert_eq!(d.fields[0].doc, "First line, second line.");
    assert_eq!(d.fields[1].ty, "Option<f64>");
    assert_eq!(enums["Mode"], ["spin-then-block", "http/protobuf", "tuple"]);
    assert_eq!(toml_type("Option<f64>", &enums), "float");
    assert_eq!(
        toml_type("Mode", &enums),
        "string: `spin-then-block`, `http/protobuf`, `tuple`"
    );
}
