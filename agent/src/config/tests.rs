use slicetrace_probe::FftDims;

use super::*;
use crate::probe::config::WaitMode;
use slicetrace_probe::Precision;

#[test]
fn defaults_validate_and_roundtrip() {
    let c = Config::default();
    let s = toml::to_string(&c).expect("serialise");
    assert_eq!(Config::from_toml(&s).expect("parse"), c);
    // The default data_dir is relative to wherever the test runs, so it
    // is the one value taken from a directory the test controls.
    let dir = tempfile::tempdir().expect("tempdir");
    let c = Config {
        data_dir: dir.path().join("slicetrace-data"),
        ..c
    };
    c.validate().expect("the defaults validate");
}

#[test]
fn unknown_key_names_the_field() {
    let e = Config::from_toml("node_name = \"n\"\nbogus = 1\n").expect_err("unknown key");
    let m = e.to_string();
    assert!(m.starts_with("bogus (line 2)"), "{m}");
    let e = Config::from_toml("[parquet]\nrotate_bytez = 1\n").expect_err("unknown nested key");
    assert!(e.to_string().starts_with("parquet.rotate_bytez"), "{e}");
}

#[test]
fn negative_duration_names_the_field() {
    let e = Config::from_toml("[health]\nwindow_ms = -5\n").expect_err("negative");
    assert!(
        e.to_string().starts_with("health.window_ms (line 2)"),
        "{e}"
    );
    assert!(!e.to_string().contains('\n'));
}

#[test]
fn bad_endpoint_and_unwritable_dir_are_invalid() {
    let mut c = Config::from_toml("[otlp]\nendpoint = \"not a url\"\n").expect("parses");
    c.data_dir = std::env::temp_dir();
    assert!(c
        .validate()
        .expect_err("bad url")
        .to_string()
        .starts_with("otlp.endpoint"));
    let c = Config {
        data_dir: PathBuf::from("/etc/hostname/sub"),
        ..Config::default()
    };
    assert!(c
        .validate()
        .expect_err("file as dir")
        .to_string()
        .starts_with("data_dir"));
}

#[test]
fn precedence_is_file_then_env_then_flags() {
    let mut c =
        Config::from_toml("backend = \"cuda\"\n[probe]\ninterval_ms = 500\n").expect("parse");
    let env = |k: &str| match k {
        "SLICETRACE_BACKEND" => Some("cpu".to_string()),
        "SLICETRACE_INTERVAL" => Some("2s".to_string()),
        _ => None,
    };
    c.apply_env(&env).expect("env");
    assert_eq!((c.backend, c.probe.interval_ms), (BackendKind::Cpu, 2000));
    c.apply_flags(&CliFlags {
        interval: Some(Duration::from_millis(250)),
        ..Default::default()
    });
    assert_eq!((c.backend, c.probe.interval_ms), (BackendKind::Cpu, 250));
}

#[test]
fn probe_overrides_apply() {
    let c = Config::from_toml(
        "[probe]\nfft_n = 1024\nfft_2d = true\ngemm_n = 512\ngemm_precision = \"bf16\"\n",
    )
    .expect("parse");
    let s = c.probe_spec("cuda");
    assert_eq!(s.fft.dims, FftDims::D2 { nx: 1024, ny: 1024 });
    assert_eq!((s.gemm.n, s.gemm.precision), (512, Precision::Bf16));
}

#[test]
fn a_probe_key_in_both_places_is_an_error() {
    let e =
        Config::from_toml("interval_ms = 300\n[probe]\ninterval_ms = 400\n").expect_err("conflict");
    let m = e.to_string();
    assert!(
        m.starts_with("interval_ms: ") && m.contains("probe.interval_ms"),
        "{m}"
    );
    assert!(!m.contains('\n'), "{m}");
}

#[test]
fn errors_after_a_deprecated_key_keep_their_line() {
    let e = Config::from_toml("interval_ms = 300\n[parquet]\nrotate_bytez = 1\n")
        .expect_err("unknown key");
    assert!(
        e.to_string().starts_with("parquet.rotate_bytez (line 3)"),
        "{e}"
    );
    let e = Config::from_toml("node_name = \"n\"\ninterval_ms = -1\n").expect_err("negative");
    assert!(e.to_string().starts_with("interval_ms (line 2)"), "{e}");
}

#[test]
fn component_errors_are_prefixed_with_their_table() {
    type Case = (fn(&mut Config), &'static str);
    let cases: [Case; 6] = [
        (
            |c| c.otlp.timeout_ms = 0,
            "otlp.timeout_ms: must be greater than 0",
        ),
        (
            |c| c.parquet.row_group_rows = 0,
            "parquet.row_group_rows: must be greater than 0",
        ),
        (
            |c| c.health.window_ms = 999,
            "health.window_ms: 999 is below 1000",
        ),
        (
            |c| c.occupancy.stale_after_ms = 0,
            "occupancy.stale_after_ms: must be greater than zero",
        ),
        (
            |c| c.ship.enabled = true,
            "ship.destination: is required when enabled (s3://BUCKET/PREFIX/)",
        ),
        (
            |c| c.ship.set_destination("bucket/prefix".into()),
            "ship.destination: \"bucket/prefix\" does not start with s3://",
        ),
    ];
    for (f, want) in cases {
        let mut c = Config {
            data_dir: std::env::temp_dir(),
            ..Config::default()
        };
        f(&mut c);
        assert_eq!(c.validate().expect_err(want).to_string(), want);
    }
}

#[test]
fn enabled_false_disables_every_component_and_old_spellings_still_do() {
    let c = Config::from_toml(
        "[parquet]\nenabled = false\n[otlp]\nenabled = false\nendpoint = \"http://c:4317\"\n\
         [metrics]\nenabled = false\n",
    )
    .expect("parse");
    assert!(!c.parquet.enabled && !c.otlp.is_enabled() && !c.metrics.is_enabled());
    // The defaults: parquet and metrics on; otlp on once it has an endpoint.
    let c = Config::from_toml("[otlp]\nendpoint = \"http://c:4317\"\n").expect("parse");
    assert!(c.parquet.enabled && c.otlp.is_enabled() && c.metrics.is_enabled());
    // The old spellings: no endpoint, an empty listen address.
    let c = Config::from_toml("[metrics]\nlisten = \"\"\n").expect("parse");
    assert!(!c.otlp.is_enabled() && !c.metrics.is_enabled());
}

#[test]
fn the_cuda_stack_limit_defaults_to_the_presets_and_is_bounded() {
    // Light: no stack reserved up front; article: the driver's own default.
    let c = Config::default();
    assert_eq!(
        c.probe_spec("cuda").cuda_stack_bytes,
        Some(slicetrace_probe::LIGHT_CUDA_STACK_BYTES)
    );
    assert_eq!(slicetrace_probe::LIGHT_CUDA_STACK_BYTES, 0);
    let mut c = Config::from_toml("[probe]\ncuda_stack_bytes = 512\n").expect("parse");
    assert_eq!(c.probe_spec("cuda").cuda_stack_bytes, Some(512));
    c.data_dir = std::env::temp_dir();
    c.validate().expect("512 B is valid");
    c.probe.cuda_stack_bytes = Some(65_537);
    let e = c.validate().expect_err("above 64 KiB");
    assert!(e.to_string().starts_with("probe.cuda_stack_bytes"), "{e}");
}

#[test]
fn the_process_list_age_defaults_to_five_seconds_and_is_bounded() {
    let c = Config::default();
    assert_eq!(c.probe.process_list_max_age(), Duration::from_secs(5));
    assert_eq!(
        c.probe.process_list_max_age(),
        crate::probe::PROCESS_LIST_MAX_AGE
    );
    let b = Config::from_toml("[probe]\nbusy_tenants_interval_ms = 0\n").expect("parse");
    assert!(b.validate().is_ok());
    assert_eq!(b.probe.busy_tenants_interval(), Duration::ZERO);
    assert_eq!(
        Config::default().probe.busy_tenants_interval(),
        Duration::from_millis(2000)
    );
    assert_eq!(b.probe.busy_window(), Duration::from_millis(3000));
    let mut w = b.clone();
    w.probe.busy_window_ms = Some(50);
    assert!(w
        .validate()
        .expect_err("below 100 ms")
        .to_string()
        .starts_with("probe.busy_window_ms"));
    let mut b = b;
    b.probe.busy_tenants_interval_ms = Some(3_600_001);
    assert!(b
        .validate()
        .expect_err("above an hour")
        .to_string()
        .starts_with("probe.busy_tenants_interval_ms"));
    let mut c = Config::from_toml("[probe]\nprocess_list_max_age_ms = 1000\n").expect("parse");
    assert_eq!(c.probe.process_list_max_age(), Duration::from_secs(1));
    c.data_dir = std::env::temp_dir();
    c.validate().expect("1 s is valid");
    for bad in [999, 300_001] {
        c.probe.process_list_max_age_ms = Some(bad);
        let e = c.validate().expect_err("out of range");
        assert!(
            e.to_string().starts_with("probe.process_list_max_age_ms"),
            "{e}"
        );
    }
}

/// The wait's default lives in the probe crate only: an unset `[probe]`
/// table, and `wait = "spin-then-block"` without a budget, both run the
/// probe's `Wait::default()`.
#[test]
fn the_default_wait_is_the_probes_own() {
    use slicetrace_probe::Wait;
    let mut c = Config::default();
    assert_eq!(c.probe_spec("cuda").wait, Wait::default());
    c.probe.wait = Some(WaitMode::SpinThenBlock);
    assert_eq!(c.probe_spec("cuda").wait, Wait::default());
    c.probe.spin_us = Some(7);
    assert_eq!(
        c.probe_spec("cuda").wait,
        Wait::SpinThenBlock { spin_us: 7 }
    );
    c.probe.wait = Some(WaitMode::Spin);
    assert_eq!(c.probe_spec("cuda").wait, Wait::Spin);
}

#[test]
fn ship_destination_comes_from_file_then_env_then_flags() {
    let mut c = Config::from_toml(
        "[ship]\nenabled = true\ndestination = \"s3://from-file/p/\"\nscan_interval_ms = 1000\n",
    )
    .expect("parse");
    assert!(c.ship.enabled);
    let e = Config::from_toml("[ship]\nbucket = \"b\"\n").expect_err("unknown key");
    assert!(e.to_string().starts_with("ship.bucket (line 2)"), "{e}");
    let env = |k: &str| match k {
        "SLICETRACE_SHIP_DESTINATION" => Some("s3://from-env/p/".to_string()),
        "SLICETRACE_SHIP_ENDPOINT" => Some("http://minio:9000".to_string()),
        _ => None,
    };
    c.apply_env(&env).expect("env");
    assert_eq!(c.ship.destination.as_deref(), Some("s3://from-env/p/"));
    assert_eq!(c.ship.endpoint.as_deref(), Some("http://minio:9000"));
    c.apply_flags(&CliFlags {
        ship_destination: Some("s3://from-flag/".into()),
        ..Default::default()
    });
    assert_eq!(c.ship.destination.as_deref(), Some("s3://from-flag/"));
    assert!(c.ship.enabled);
    assert_eq!(c.ship.scan_interval_ms, 1000, "the file's other keys stay");
    // A plain-http endpoint needs allow_http: one line naming the field.
    c.data_dir = std::env::temp_dir();
    let e = c.validate().expect_err("http without allow_http");
    assert!(e.to_string().starts_with("ship.endpoint: "), "{e}");
    assert!(!e.to_string().contains('\n'));
    // An empty flag turns shipping off again.
    c.apply_flags(&CliFlags {
        ship_destination: Some(String::new()),
        ..Default::default()
    });
    assert!(!c.ship.enabled);
    assert_eq!(c.ship.destination, None);
}
