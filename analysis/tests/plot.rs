//! `slicetrace plot`: PNG and fontless SVG, one CDF panel per kernel with
//! dashed legends, and a UTC time axis on the timeline.
//!
//! Shared harness (the golden data, running the binary, the DuckDB
//! reference): `support/mod.rs`. Missing tools skip with a note unless
//! `SLICETRACE_REQUIRE_TOOLS=1` (the shared rule of `slicetrace_e2e`).

#![allow(clippy::unwrap_used)]

mod support;

use std::path::{Path, PathBuf};
use std::process::Output;

use support::*;

/// Runs `slicetrace` with no system fonts, as on a node without any: text
/// comes from the built-in font.
fn slicetrace_fontless(args: &[&str]) -> Output {
    slicetrace_env(args, &[("SLICETRACE_NO_SYSTEM_FONTS", "1")])
}

/// Where a test writes its plots: `$SLICETRACE_KEEP_PLOTS`, to look at them
/// afterwards, else the test's temporary directory `tmp`.
fn plot_dir(tmp: &Path) -> PathBuf {
    let dir = std::env::var_os("SLICETRACE_KEEP_PLOTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| tmp.to_path_buf());
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn plot_writes_png_and_fontless_svg() {
    let tmp = golden_dir();
    let d = tmp.path().to_str().unwrap();
    let out_dir = plot_dir(tmp.path());
    let has_font = slicetrace_analysis::plot::FONT_CANDIDATES
        .iter()
        .any(|f| Path::new(f).is_file());
    for kind in ["cdf", "timeline"] {
        let png = out_dir.join(format!("{kind}.png"));
        let mut args = vec!["plot", d, "--out", png.to_str().unwrap(), "--kind", kind];
        if kind == "timeline" {
            args.extend(["--where", "node='node-00' AND kernel='fft'"]);
        }
        let o = slicetrace(&args);
        if has_font {
            assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
            let bytes = std::fs::read(&png).unwrap();
            assert_eq!(&bytes[1..4], b"PNG");
        } else {
            assert_error(&o, &["no font for PNG text"]);
        }
        let svg = out_dir.join(format!("{kind}-nofont.svg"));
        let mut args = vec!["plot", d, "--out", svg.to_str().unwrap(), "--kind", kind];
        if kind == "timeline" {
            args.extend(["--where", "node='node-00' AND kernel='fft'"]);
        }
        let o = slicetrace_fontless(&args);
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        let s = std::fs::read_to_string(&svg).unwrap();
        assert!(
            s.contains("<svg") && s.contains("<text") && s.contains("tenants"),
            "svg lacks text"
        );
    }
    let o = slicetrace(&["plot", d, "--out", "/tmp/x.jpg"]);
    assert_error(&o, &[".svg or .png"]);
}

#[test]
fn cdf_plot_has_one_panel_per_kernel_and_dashed_legends() {
    let tmp = golden_dir();
    let d = tmp.path().to_str().unwrap();
    let out_dir = plot_dir(tmp.path());
    let svg = out_dir.join("cdf-per-kernel.svg");
    let o = slicetrace_fontless(&["plot", d, "--out", svg.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let s = std::fs::read_to_string(&svg).unwrap();
    let texts: Vec<&str> = s
        .split("<text")
        .skip(1)
        .filter_map(|t| t.split_once('>').and_then(|(_, r)| r.split_once("</text>")))
        .map(|(t, _)| t)
        .collect();
    // One panel per kernel, each with its own legend.
    for kernel in ["fft", "gemm"] {
        assert!(
            texts
                .iter()
                .any(|t| t.starts_with(&format!("{kernel}: latency CDF by tenants"))),
            "{texts:?}"
        );
    }
    for label in ["0 tenants, wall", "0 tenants, gpu", "3 tenants, wall"] {
        let n = texts.iter().filter(|t| t.starts_with(label)).count();
        assert_eq!(n, 2, "{label} should be in both legends: {texts:?}");
    }
    // The FFT panel spans 0.04 to 6 ms: a log axis with ticks at 1-2-5
    // values; no tick anywhere is an odd number like 3.16.
    for tick in ["0.05", "0.1", "0.2", "0.5", "1", "2", "5"] {
        assert!(texts.contains(&tick), "no tick {tick}: {texts:?}");
    }
    for t in &texts {
        if t.parse::<f64>().is_ok() {
            let digits = t.trim_start_matches(['0', '.']).replace('.', "");
            assert!(digits.trim_end_matches('0').len() <= 2, "tick {t}");
        }
    }
    assert!(
        texts.iter().any(|t| t.contains("arrival runs")),
        "{texts:?}"
    );
}

#[test]
fn timeline_axis_is_utc_clock_time() {
    let tmp = golden_dir();
    let svg = tmp.path().join("tl.svg");
    let o = slicetrace_fontless(&[
        "plot",
        tmp.path().to_str().unwrap(),
        "--out",
        svg.to_str().unwrap(),
        "--kind",
        "timeline",
        "--where",
        "node='node-00' AND kernel='fft' AND ts < TIMESTAMP '2026-01-01T02:00:00Z'",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let s = std::fs::read_to_string(&svg).unwrap();
    assert!(
        s.contains(">00:30:00</text>") || s.contains(">01:00:00</text>"),
        "{s}"
    );
    assert!(s.contains("time (UTC) on 2026-01-01"));
}
