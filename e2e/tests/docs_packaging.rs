//! The operator-facing documents and packaging files: links resolve, the
//! dashboard screenshot is the committed script's output format, the licence
//! is the one the crates declare, and the changelog's schema history reaches
//! the schema version the code writes.

use slicetrace_e2e::{markdown_anchors, read_repo_file, root};

/// Documents whose links must resolve.
const DOCS: [&str; 5] = [
    "docs/operations.md",
    "docs/ballista.md",
    "docs/compatibility.md",
    "docs/config-reference.md",
    "CHANGELOG.md",
];

/// Targets of inline Markdown links `[text](target)` outside code blocks and
/// code spans.
fn link_targets(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut in_code = false;
    for line in text.lines() {
        if line.starts_with("```") {
            in_code = !in_code;
            continue;
        }
        if in_code {
            continue;
        }
        // Drop code spans, whose brackets are not links.
        let mut plain = String::new();
        for (i, part) in line.split('`').enumerate() {
            if i % 2 == 0 {
                plain.push_str(part);
            } else {
                plain.push_str("code");
            }
        }
        let mut rest = plain.as_str();
        while let Some(pos) = rest.find("](") {
            let after = &rest[pos + 2..];
            let Some(end) = after.find(')') else {
                break;
            };
            out.push(after[..end].to_string());
            rest = &after[end..];
        }
    }
    out
}

#[test]
fn links_in_the_operator_docs_resolve() {
    let mut problems = Vec::new();
    let mut checked = 0;
    for doc in DOCS {
        let text = read_repo_file(doc);
        let dir = root().join(doc);
        let dir = dir.parent().expect("doc has a dir");
        let own = markdown_anchors(&text);
        let targets = link_targets(&text);
        for t in &targets {
            if t.starts_with("http://") || t.starts_with("https://") {
                continue;
            }
            checked += 1;
            let (path, anchor) = match t.split_once('#') {
                Some((p, a)) => (p, Some(a)),
                None => (t.as_str(), None),
            };
            if path.is_empty() {
                if let Some(a) = anchor {
                    if !own.contains(a) {
                        problems.push(format!("{doc}: #{a} is not a heading"));
                    }
                }
                continue;
            }
            let file = dir.join(path);
            if !file.exists() {
                problems.push(format!("{doc}: {path} does not exist"));
                continue;
            }
            if let (Some(a), Some("md")) = (anchor, file.extension().and_then(|e| e.to_str())) {
                let other = std::fs::read_to_string(&file).expect("linked Markdown file");
                if !markdown_anchors(&other).contains(a) {
                    problems.push(format!("{doc}: {path}#{a} is not a heading there"));
                }
            }
        }
    }
    assert!(
        problems.is_empty(),
        "broken links:\n{}",
        problems.join("\n")
    );
    // The runbook table alone links every alert's section.
    assert!(
        checked >= 20,
        "only {checked} local links found: is the parser broken?"
    );
}

#[test]
fn link_parser_skips_code_and_finds_anchors() {
    let text = "See [a](x.md#b) and `[c](not-a-link)`.\n```\n[d](e)\n```\n## A Heading: `x`!\n";
    assert_eq!(link_targets(text), ["x.md#b"]);
    assert!(markdown_anchors(text).contains("a-heading-x"));
}

#[test]
fn dashboard_screenshot_is_a_small_png_made_by_the_committed_script() {
    let png = std::fs::read(root().join("docs/dashboard.png")).expect("docs/dashboard.png");
    assert_eq!(
        &png[..8],
        b"\x89PNG\r\n\x1a\n",
        "docs/dashboard.png is not a PNG"
    );
    assert_eq!(&png[12..16], b"IHDR");
    let width = u32::from_be_bytes(png[16..20].try_into().expect("4 bytes"));
    let height = u32::from_be_bytes(png[20..24].try_into().expect("4 bytes"));
    assert!(
        (1000..=2000).contains(&width) && (600..=1400).contains(&height),
        "docs/dashboard.png is {width}x{height}: render it at the documented --window-size"
    );
    assert!(
        png.len() < 400 * 1024,
        "docs/dashboard.png is {} KiB; keep the repository small",
        png.len() / 1024
    );
    let script = read_repo_file("docs/dashboard/render.py");
    assert!(
        script.contains("pyarrow") && script.contains("gpu-results"),
        "the render script reads the recorded Parquet rows"
    );
    let ops = read_repo_file("docs/operations.md");
    for needle in [
        "dashboard.png",
        "docs/dashboard/render.py",
        "chromium --headless",
        &format!("--window-size={width},{height}"),
    ] {
        assert!(
            ops.contains(needle),
            "docs/operations.md must say how the screenshot was made ({needle})"
        );
    }
}

#[test]
fn licence_and_repository_match_the_workspace_manifest() {
    let cargo: toml::Table =
        toml::from_str(&read_repo_file("Cargo.toml")).expect("Cargo.toml is TOML");
    let package = &cargo["workspace"]["package"];
    assert_eq!(package["license"].as_str(), Some("Apache-2.0"));
    let repo = package["repository"].as_str().expect("repository");
    assert!(
        repo.starts_with("https://github.com/") && !repo.contains("example"),
        "repository must be a real URL: {repo}"
    );
    let licence = read_repo_file("LICENSE");
    for needle in [
        "Apache License",
        "Version 2.0, January 2004",
        "TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION",
        "9. Accepting Warranty or Additional Liability.",
        "END OF TERMS AND CONDITIONS",
    ] {
        assert!(
            licence.contains(needle),
            "LICENSE is not the full Apache-2.0 text (missing {needle:?})"
        );
    }
}

#[test]
fn changelog_schema_history_reaches_the_current_schema_version() {
    let changelog = read_repo_file("CHANGELOG.md");
    let history = changelog
        .split("## Schema version history")
        .nth(1)
        .expect("CHANGELOG.md has a schema version history");
    let current = slicetrace_schema::SCHEMA_VERSION;
    assert!(
        history
            .lines()
            .any(|l| l.starts_with(&format!("| {current} "))),
        "CHANGELOG.md's schema history has no row for schema version {current}"
    );
    // Every nullable column added without a bump is listed there.
    for col in ["arrival", "arrival_gap_ms", "event_inflated", "contention"] {
        assert!(
            slicetrace_schema::COLUMNS.iter().any(|c| c.name == col),
            "{col} is not a probes column any more: update CHANGELOG.md"
        );
        assert!(
            history.contains(&format!("`{col}`")),
            "CHANGELOG.md's schema history does not mention {col}"
        );
    }
}
