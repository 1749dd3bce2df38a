//! Shared support for slicetrace's end-to-end tests: locating the built
//! binaries and the real test tools (the venv's Python with pyarrow, DuckDB
//! and polars; rotel; promtool; prometheus), free loopback ports, and child
//! processes that are killed when a test ends.
//!
//! A missing tool makes a test *fail* when `SLICETRACE_REQUIRE_TOOLS=1`
//! (set by `tests/run.sh`, so CI never skips silently); otherwise the test
//! returns early, and says so where it cannot be missed: a `SKIP` line on the
//! terminal even under plain `cargo test` (libtest captures only the print
//! macros, and a skipped test still reports `ok`), and a line in
//! [`skip_log`], which `tests/run.sh` counts at the end. This is the one
//! definition of that rule for the workspace's tests: other test crates take
//! it as a dev-dependency.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

pub mod deploy;
pub mod testkit;

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// A file of the repository, by path relative to the workspace root.
pub fn read_repo_file(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("cannot read {rel}: {e}"))
}

/// GitHub's anchor for a Markdown heading: lower case, punctuation other than
/// `-` and `_` dropped, spaces to `-`.
pub fn github_anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_'))
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// The anchors of every heading of a Markdown text (headings inside fenced
/// code blocks do not count).
pub fn markdown_anchors(text: &str) -> std::collections::BTreeSet<String> {
    let mut in_code = false;
    let mut out = std::collections::BTreeSet::new();
    for line in text.lines() {
        if line.starts_with("```") {
            in_code = !in_code;
        } else if !in_code && line.starts_with('#') {
            out.insert(github_anchor(line.trim_start_matches('#')));
        }
    }
    out
}

/// The Cargo target directory (`CARGO_TARGET_DIR`, else `target/`).
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"))
}

/// A workspace binary from the debug build (`cargo build --workspace --bins`).
pub fn bin(name: &str) -> PathBuf {
    let p = target_dir().join("debug").join(name);
    assert!(
        p.exists(),
        "{} is not built: run `cargo build --workspace --bins` (tests/run.sh does)",
        p.display()
    );
    p
}

/// True when tests must fail rather than skip on a missing tool.
pub fn tools_required() -> bool {
    std::env::var("SLICETRACE_REQUIRE_TOOLS").as_deref() == Ok("1")
}

/// Where skipped tool-dependent tests are listed, one line each
/// (`test<TAB>tool<TAB>what`); `tests/run.sh` empties it first and counts it
/// at the end.
pub fn skip_log() -> PathBuf {
    target_dir().join("slicetrace-test-skips.log")
}

/// Reports a missing tool: panics under `SLICETRACE_REQUIRE_TOOLS=1`, else
/// notes the skip (see the crate doc). Returns `None` so callers can
/// `?`-style early return.
pub fn missing<T>(tool: &str) -> Option<T> {
    missing_for(tool, "this test")
}

/// [`missing`], naming `what` is skipped (the test, or a part of it).
pub fn missing_for<T>(tool: &str, what: &str) -> Option<T> {
    if tools_required() {
        panic!("{tool} is required (SLICETRACE_REQUIRE_TOOLS=1) but was not found (for {what})");
    }
    note_skip(tool, what);
    None
}

/// Prints the skip past libtest's capture and appends it to [`skip_log`].
fn note_skip(tool: &str, what: &str) {
    let thread = std::thread::current();
    let test = thread.name().unwrap_or("?");
    // Written straight to the stream: `eprintln!` would be captured and shown
    // only if the test failed, and a skipped test passes.
    let _ = writeln!(
        std::io::stderr().lock(),
        "SKIP {test}: {tool} not found, skipping {what} (tests/run.sh installs it)"
    );
    let log = skip_log();
    if let Some(dir) = log.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    // One short append per skip: O_APPEND keeps lines from parallel tests whole.
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
    {
        let _ = f.write_all(format!("{test}\t{tool}\t{what}\n").as_bytes());
    }
}

/// The venv Python with the given modules importable.
pub fn python_with(modules: &[&str]) -> Option<PathBuf> {
    let candidates = [
        std::env::var_os("SLICETRACE_PYTHON").map(PathBuf::from),
        Some(root().join(".venv/bin/python")),
    ];
    for p in candidates.into_iter().flatten() {
        let ok = Command::new(&p)
            .arg("-c")
            .arg(format!("import {}", modules.join(", ")))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return Some(p);
        }
    }
    missing(&format!("python with {}", modules.join(", ")))
}

/// Runs a Python snippet with `args` and returns its stdout (panics with
/// stderr on failure).
pub fn run_python(py: &Path, code: &str, args: &[&str]) -> String {
    let out = Command::new(py)
        .arg("-c")
        .arg(code)
        .args(args)
        .output()
        .expect("run python");
    assert!(
        out.status.success(),
        "python failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// An executable from the venv's bin directory or `PATH`.
pub fn tool(name: &str) -> Option<PathBuf> {
    let venv = root().join(".venv/bin").join(name);
    if venv.exists() {
        return Some(venv);
    }
    let found = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {name}"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    found.or_else(|| missing(name))
}

/// `program` (a path, or a name looked up on `PATH`) when `program
/// PROBE_ARGS` runs and exits 0, so the tool is there and works (a version
/// check); otherwise [`missing`].
pub fn runnable(program: &str, probe_args: &[&str]) -> Option<PathBuf> {
    runnable_for(program, probe_args, "this test")
}

/// [`runnable`], naming `what` is skipped without it.
pub fn runnable_for(program: &str, probe_args: &[&str], what: &str) -> Option<PathBuf> {
    let works = Command::new(program)
        .args(probe_args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if works {
        Some(PathBuf::from(program))
    } else {
        missing_for(program, what)
    }
}

/// The rotel collector binary shipped in the `rotel` pip package.
pub fn rotel() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("SLICETRACE_ROTEL") {
        return Some(PathBuf::from(p));
    }
    let py = python_with(&["rotel"])?;
    let out = run_python(
        &py,
        "import os, rotel; print(os.path.join(os.path.dirname(rotel.__file__), 'rotel-agent'))",
        &[],
    );
    let p = PathBuf::from(out.trim());
    if p.exists() {
        Some(p)
    } else {
        missing("rotel-agent")
    }
}

/// A loopback port that was free a moment ago, for an external program
/// that binds it itself (see [`testkit::start_on_free_ports`] to retry when
/// another process took it in between; in-process servers take a
/// [`testkit::Listener`]).
pub fn free_port() -> u16 {
    testkit::Listener::bind().port()
}

/// Polls `f` until it returns `Some` or `timeout` passes (then `None`).
pub fn wait_for<T>(timeout: Duration, f: impl FnMut() -> Option<T>) -> Option<T> {
    testkit::poll_until(timeout, f)
}

/// A child process killed (SIGKILL) when dropped.
pub struct Proc {
    /// The child.
    pub child: Child,
    /// Where its stdout+stderr go.
    pub log: PathBuf,
}

impl Proc {
    /// Spawns `cmd` with output to `log`.
    pub fn spawn(mut cmd: Command, log: PathBuf) -> Proc {
        let f = std::fs::File::create(&log).expect("log file");
        let f2 = f.try_clone().expect("log file");
        let child = cmd
            .stdout(f)
            .stderr(f2)
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn");
        Proc { child, log }
    }
    /// The log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
    /// Sends a signal.
    pub fn signal(&self, sig: i32) {
        #[allow(unsafe_code)]
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.child.id() as i32, sig);
        }
    }
    /// Waits up to `timeout` for exit; returns the exit code (None: still running or killed by a signal).
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<i32> {
        wait_for(timeout, || self.child.try_wait().ok().flatten()).and_then(|s| s.code())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts rotel receiving OTLP on the two ports with its debug log of traces.
pub fn start_rotel(dir: &Path, grpc: u16, http: u16) -> Option<Proc> {
    let bin = rotel()?;
    let mut cmd = Command::new(bin);
    cmd.arg("start")
        .args(["--otlp-grpc-endpoint", &format!("127.0.0.1:{grpc}")])
        .args(["--otlp-http-endpoint", &format!("127.0.0.1:{http}")])
        .args([
            "--exporter",
            "blackhole",
            "--debug-log",
            "traces",
            "--debug-log-verbosity",
            "detailed",
        ])
        .arg("--pid-file")
        .arg(dir.join("rotel.pid"));
    let p = Proc::spawn(cmd, dir.join("rotel.log"));
    for port in [grpc, http] {
        let up = wait_for(Duration::from_secs(15), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).ok()
        });
        assert!(
            up.is_some(),
            "rotel did not listen on {port}: {}",
            p.log_text()
        );
    }
    Some(p)
}

/// Runs a command to completion with a timeout (kills it past the limit).
pub fn run_with_timeout(mut cmd: Command, timeout: Duration) -> Output {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .stdin(Stdio::null())
        .spawn()
        .expect("spawn");
    let status = wait_for(timeout, || child.try_wait().ok().flatten());
    if status.is_none() {
        let _ = child.kill();
    }
    child.wait_with_output().expect("wait")
}

/// Every probe row in the visible Parquet files of the agent's data
/// directory `data` (its `probes/` table), by launch time.
pub fn probe_rows(data: &Path) -> Vec<slicetrace_schema::ProbeRecord> {
    let mut rows = Vec::new();
    for f in parquet_files(&data.join("probes")).0 {
        let file = std::fs::File::open(&f).expect("open parquet");
        let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
            .expect("parquet footer")
            .build()
            .expect("reader");
        for b in reader {
            rows.extend(
                slicetrace_schema::probes_from_batch(&b.expect("batch")).expect("probe rows"),
            );
        }
    }
    rows.sort_by_key(|r| r.ts_ns);
    rows
}

/// Every `*.parquet` file under `dir` (recursively), and separately every
/// temporary (`*.tmp`) file.
pub fn parquet_files(dir: &Path) -> (Vec<PathBuf>, Vec<PathBuf>) {
    let (mut done, mut tmp) = (Vec::new(), Vec::new());
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "parquet") {
                done.push(p);
            } else if p.extension().is_some_and(|x| x == "tmp") {
                tmp.push(p);
            }
        }
    }
    done.sort();
    (done, tmp)
}
