//! The reference itself: one Markdown table per config table, walked from
//! `Config` with the defaults `Config::default()` serialises to, then the
//! environment variables.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use crate::parse::{parse_all, ConfigStruct, Enums};
use crate::{BLESS_COMMAND, ENV_DOCS, ENV_SOURCES, SOURCES};

/// `Option<T>` → (T, true).
pub(crate) fn strip_option(ty: &str) -> (&str, bool) {
    match ty.strip_prefix("Option<").and_then(|t| t.strip_suffix('>')) {
        Some(inner) => (inner, true),
        None => (ty, false),
    }
}

pub(crate) fn last_segment(ty: &str) -> &str {
    ty.rsplit("::").next().unwrap_or(ty)
}

/// The TOML type of a Rust field type, for readers.
pub(crate) fn toml_type(ty: &str, enums: &Enums) -> String {
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
pub(crate) fn toml_literal(v: &Value) -> String {
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

pub(crate) fn md_cell(s: &str) -> String {
    s.replace('|', "\\|")
}

/// One table of the reference: (heading, key prefix, struct name, default).
pub(crate) struct Table<'a> {
    path: String,
    st: &'a ConfigStruct,
    default: &'a Value,
}

/// Walks `Config` and its sub-tables; checks that parsed and serialised keys
/// agree.
pub(crate) fn tables<'a>(
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
pub(crate) fn env_vars_in_sources() -> BTreeSet<String> {
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

pub(crate) fn generate() -> String {
    let (structs, enums) = parse_all();
    let default = serde_json::to_value(slicetrace_agent::config::Config::default())
        .expect("Config::default() serialises");
    let mut ts = Vec::new();
    tables(&structs, "Config", String::new(), &default, &mut ts);

    let mut md = String::new();
    md.push_str("# Configuration reference\n\n");
    md.push_str(
        "<!-- Generated by e2e/tests/config_reference.rs from the agent's config structs. \
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
                "UNDOCUMENTED: add it to ENV_DOCS in e2e/tests/config_reference.rs".into()
            });
        md.push_str(&format!("| `{n}` | {} |\n", md_cell(&doc)));
    }
    md
}
