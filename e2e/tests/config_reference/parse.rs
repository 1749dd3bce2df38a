//! A small parser of config structs and enums: every struct with
//! `#[serde(deny_unknown_fields…)]`, its `pub field: Type,` lines with their
//! `///` docs, and the serde names of each enum's variants.

use std::collections::BTreeMap;

use crate::SOURCES;

/// One `pub field: Type,` of a config struct.
#[derive(Debug, Clone)]
pub(crate) struct Field {
    pub(crate) name: String,
    pub(crate) ty: String,
    pub(crate) doc: String,
}

/// A struct with `deny_unknown_fields`.
#[derive(Debug, Clone)]
pub(crate) struct ConfigStruct {
    pub(crate) doc: String,
    pub(crate) fields: Vec<Field>,
    pub(crate) source: String,
}

/// The serde names of an enum's variants.
pub(crate) type Enums = BTreeMap<String, Vec<String>>;

/// One line of Markdown from `///` lines: rustdoc links such as
/// [`Type::method`] become plain code spans (Markdown links stay).
pub(crate) fn join_doc(lines: &[String]) -> String {
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

pub(crate) fn rename(variant: &str, rule: Option<&str>) -> String {
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
pub(crate) fn parse_source(
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

pub(crate) fn parse_all() -> (BTreeMap<String, ConfigStruct>, Enums) {
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

/// The parser itself: a struct, an optional field, a multi-line doc, an enum
/// with renamed variants.
#[test]
fn parser_reads_fields_docs_and_enum_names() {
    use crate::generate::toml_type;

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
