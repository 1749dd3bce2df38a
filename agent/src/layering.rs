//! The crate's layering, checked on its own sources: no import circle
//! between top-level modules, `topology` and `config` are leaves, and no
//! source file is over 600 lines. Test code (`tests.rs` files and what
//! follows a file's `#[cfg(test)]`) may reach across the layers and is not
//! counted.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Every `.rs` file under `dir`.
fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).expect("read src").flatten() {
        let p = e.path();
        if p.is_dir() {
            sources(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// Top-level module → the `crate::` paths its code (not its comments) names.
fn imports() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in files {
        let rel = f.strip_prefix(&src).expect("under src");
        let top = rel
            .components()
            .next()
            .and_then(|c| c.as_os_str().to_str())
            .map(|s| s.trim_end_matches(".rs").to_string())
            .expect("module name");
        if top == "main" || top == "lib" || f.file_name().is_some_and(|n| n == "tests.rs") {
            continue;
        }
        let text = std::fs::read_to_string(&f).expect("read source");
        let text = text.split("#[cfg(test)]").next().unwrap_or("");
        let set = out.entry(top.clone()).or_default();
        for line in text.lines() {
            let code = line.split("//").next().unwrap_or("");
            for (i, _) in code.match_indices("crate::") {
                let path: String = code[i + 7..]
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
                    .collect();
                if !path.is_empty() && !path.starts_with(&format!("{top}::")) && path != top {
                    set.insert(path);
                }
            }
        }
    }
    out
}

fn top(path: &str) -> &str {
    path.split("::").next().unwrap_or(path)
}

#[test]
fn top_level_modules_import_no_circle() {
    let graph: BTreeMap<String, BTreeSet<String>> = imports()
        .into_iter()
        .map(|(m, paths)| (m, paths.iter().map(|p| top(p).to_string()).collect()))
        .collect();
    // Depth-first search for a back edge.
    fn visit<'a>(
        m: &'a str,
        g: &'a BTreeMap<String, BTreeSet<String>>,
        stack: &mut Vec<&'a str>,
        done: &mut BTreeSet<&'a str>,
    ) {
        if done.contains(m) {
            return;
        }
        if let Some(i) = stack.iter().position(|s| *s == m) {
            panic!("import circle: {} -> {m}", stack[i..].join(" -> "));
        }
        stack.push(m);
        for n in g.get(m).into_iter().flatten() {
            visit(n, g, stack, done);
        }
        stack.pop();
        done.insert(m);
    }
    let mut done = BTreeSet::new();
    for m in graph.keys() {
        visit(m, &graph, &mut Vec::new(), &mut done);
    }
}

#[test]
fn topology_knows_no_component_and_config_only_their_config_types() {
    let all = imports();
    let components = ["agent", "probe", "consumers", "serve", "config"];
    let topology: Vec<_> = all["topology"]
        .iter()
        .filter(|p| components.contains(&top(p)))
        .collect();
    assert!(topology.is_empty(), "topology imports {topology:?}");
    // Config reads the components' config types (each in its own leaf
    // `config` module or type) and runs nothing of theirs.
    let config: Vec<_> = all["config"]
        .iter()
        .filter(|p| components.contains(&top(p)))
        .filter(|p| {
            !p.split("::")
                .any(|s| s == "config" || s.ends_with("Config"))
        })
        .collect();
    assert!(config.is_empty(), "config imports {config:?}");
}

#[test]
fn no_source_file_is_over_600_lines() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let long: Vec<_> = files
        .iter()
        .filter_map(|f| {
            let n = std::fs::read_to_string(f).ok()?.lines().count();
            (n > 600).then(|| format!("{} ({n} lines)", f.display()))
        })
        .collect();
    assert!(long.is_empty(), "over 600 lines: {long:?}");
}
