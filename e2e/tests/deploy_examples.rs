//! The examples under `deploy/examples` and the Dockerfile: time-slicing
//! replicas, the collector's Jaeger and Tempo exports, the reproduction kit's
//! pods, the fleet check CronJob, and the image that carries the binaries.
//!
//! YAML is parsed by the Python `yaml` module that kubernetes-validate brings
//! (tests/requirements.txt); the manifest, tool and PromQL helpers are
//! `slicetrace_e2e::deploy`. A missing tool skips the test with a note, or
//! fails it when `SLICETRACE_REQUIRE_TOOLS=1` (tests/run.sh sets it).

use std::collections::BTreeSet;

use serde_json::{json, Value};
use slicetrace_e2e::deploy::*;
use slicetrace_e2e::root as repo_root;

#[test]
fn time_slicing_example_advertises_four_replicas_per_gpu() {
    let Some(python) = yaml_python("time-slicing example") else {
        return;
    };
    let docs = all_manifest_docs(&python);
    let cm = docs
        .iter()
        .find(|(f, d)| f.ends_with("examples/time-slicing-config.yaml") && kind(d) == "ConfigMap")
        .map(|(_, d)| d)
        .expect("deploy/examples/time-slicing-config.yaml");
    let config = load_yaml_str(&python, cm["data"]["any"].as_str().expect("data.any"));
    let ts = &config[0]["sharing"]["timeSlicing"];
    assert_eq!(ts["renameByDefault"], false);
    assert_eq!(ts["failRequestsGreaterThanOne"], true);
    assert_eq!(
        ts["resources"],
        json!([{"name": "nvidia.com/gpu", "replicas": 4}])
    );
}

#[test]
fn otel_collector_example_exports_to_jaeger_and_tempo() {
    let Some(python) = yaml_python("collector example") else {
        return;
    };
    let docs = all_manifest_docs(&python);
    let in_file = |k: &str| {
        docs.iter()
            .find(|(f, d)| f.ends_with("examples/otel-collector.yaml") && kind(d) == k)
            .map(|(_, d)| d)
            .unwrap_or_else(|| panic!("no {k} in deploy/examples/otel-collector.yaml"))
    };
    let cm = in_file("ConfigMap");
    let cfg = &load_yaml_str(
        &python,
        cm["data"]["config.yaml"].as_str().expect("config.yaml"),
    )[0];
    let protocols = &cfg["receivers"]["otlp"]["protocols"];
    assert!(
        protocols["grpc"].is_object() && protocols["http"].is_object(),
        "OTLP gRPC and HTTP receivers"
    );
    let traces = &cfg["service"]["pipelines"]["traces"];
    assert!(
        str_list(&traces["processors"]).contains(&"batch".to_string()),
        "batch processor"
    );
    for section in ["receivers", "processors", "exporters"] {
        for c in str_list(&traces[section]) {
            assert!(
                cfg[section][&c].is_object(),
                "pipeline uses undefined {section} {c}"
            );
        }
    }
    let endpoints: BTreeSet<String> = str_list(&traces["exporters"])
        .iter()
        .map(|e| {
            cfg["exporters"][e]["endpoint"]
                .as_str()
                .unwrap_or("")
                .to_string()
        })
        .collect();
    assert!(
        endpoints.contains("jaeger-collector:4317"),
        "exports to Jaeger over OTLP: {endpoints:?}"
    );
    assert!(
        endpoints.contains("tempo:4317"),
        "exports to Tempo over OTLP: {endpoints:?}"
    );

    // The agent's default endpoint resolves to this Service.
    let svc = in_file("Service");
    let config = agent_config(&docs, &base_file("configmap.yaml"));
    let endpoint = config["otlp"]["endpoint"].as_str().expect("otlp.endpoint");
    let host_port = endpoint
        .trim_start_matches("http://")
        .trim_start_matches("https://");
    let svc_port = svc["spec"]["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["name"] == "otlp-grpc")
        .expect("otlp-grpc port");
    assert_eq!(
        host_port,
        format!(
            "{}.{}:{}",
            name(svc),
            svc["metadata"]["namespace"].as_str().unwrap_or(""),
            svc_port["port"]
        ),
        "the agent's otlp.endpoint does not match the example collector Service"
    );
}

#[test]
fn reproduce_article_kit_puts_one_fft_and_three_gemm_pods_on_one_gpu() {
    let Some(python) = yaml_python("reproduction kit") else {
        return;
    };
    let docs = all_manifest_docs(&python);
    let deployment = |n: &str| {
        docs.iter()
            .find(|(f, d)| {
                f.contains("examples/reproduce-article/") && kind(d) == "Deployment" && name(d) == n
            })
            .map(|(_, d)| d)
            .unwrap_or_else(|| panic!("no Deployment {n} in deploy/examples/reproduce-article/"))
    };
    let mut selectors = Vec::new();
    for (n, replicas, workload) in [("fft-agent", 1, "fft"), ("gemm-tenants", 3, "gemm")] {
        let d = deployment(n);
        assert_eq!(d["spec"]["replicas"], replicas, "{n} replicas");
        let pod = &d["spec"]["template"]["spec"];
        let cs = containers(pod);
        assert_eq!(cs.len(), 1, "{n}: one container");
        let c = cs[0];
        assert_eq!(str_list(&c["command"]), ["slicetrace-load"], "{n}: command");
        let args = str_list(&c["args"]);
        assert_eq!(
            args.first().map(String::as_str),
            Some(workload),
            "{n}: workload"
        );
        assert!(
            args.windows(2).any(|w| w == ["--preset", "article"]),
            "{n}: --preset article"
        );
        assert!(
            args.windows(2).any(|w| w[0] == "--duration"),
            "{n}: --duration"
        );
        let gpu = &c["resources"]["limits"]["nvidia.com/gpu"];
        assert!(
            gpu == 1 || gpu == "1",
            "{n}: must hold exactly one nvidia.com/gpu replica, got {gpu}"
        );
        assert!(
            !c["env"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|e| e["name"] == "NVIDIA_VISIBLE_DEVICES"),
            "{n}: NVIDIA_VISIBLE_DEVICES would bypass the device plugin's allocation"
        );
        assert!(
            pod["nodeSelector"].is_object(),
            "{n}: needs a nodeSelector to share one node"
        );
        selectors.push(pod["nodeSelector"].clone());
    }
    assert_eq!(
        selectors[0], selectors[1],
        "fft-agent and gemm-tenants must select the same node"
    );
}

#[test]
fn dockerfile_builds_the_agent_the_cli_and_the_load_tool_onto_a_cuda_runtime_image() {
    let text = std::fs::read_to_string(deploy_dir().join("Dockerfile")).expect("deploy/Dockerfile");
    let froms: Vec<&str> = text.lines().filter(|l| l.starts_with("FROM ")).collect();
    assert_eq!(
        froms.len(),
        2,
        "multi-stage: build + runtime, got {froms:?}"
    );
    assert!(
        froms[0].starts_with("FROM rust:1.95-bookworm AS build"),
        "build stage: {}",
        froms[0]
    );
    assert!(
        froms[1].starts_with("FROM nvidia/cuda:") && froms[1].contains("-runtime-"),
        "runtime stage must be a CUDA runtime image (cuFFT and cuBLAS): {}",
        froms[1]
    );
    assert!(
        text.contains("cargo build --release --locked"),
        "release build with the lock file"
    );
    assert!(
        text.contains("ENTRYPOINT [\"slicetrace-agent\", \"run\"]"),
        "entrypoint"
    );
    // The package and binary names it builds must exist in the workspace.
    for (manifest, package, bin) in [
        ("agent/Cargo.toml", "slicetrace-agent", "slicetrace-agent"),
        ("load/Cargo.toml", "slicetrace-load", "slicetrace-load"),
        // The fleet check CronJob runs the CLI from the same image.
        ("analysis/Cargo.toml", "slicetrace-analysis", "slicetrace"),
        // deploy/examples/ballista runs the scheduler and executors from it.
        (
            "analysis/Cargo.toml",
            "slicetrace-analysis",
            "slicetrace-ballista",
        ),
    ] {
        let cargo: toml::Table = toml::from_str(
            &std::fs::read_to_string(repo_root().join(manifest)).expect("member manifest"),
        )
        .expect("Cargo.toml is TOML");
        assert_eq!(
            cargo["package"]["name"].as_str(),
            Some(package),
            "{manifest}"
        );
        assert!(
            cargo["bin"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|b| b["name"].as_str() == Some(bin)),
            "{manifest} has no [[bin]] {bin}"
        );
        assert!(
            text.contains(&format!("-p {package} --bin {bin}"))
                || text.contains(&format!("--bin slicetrace --bin {bin}")),
            "Dockerfile must build {package}/{bin}"
        );
        assert!(
            text.lines()
                .any(|l| l.starts_with("COPY --from=build") && l.contains(&format!("/out/{bin} "))),
            "Dockerfile must copy {bin} into the runtime image"
        );
    }
}

/// deploy/examples/fleet-check: a CronJob runs `slicetrace fleet` on the
/// bucket the agents ship to, over the last hour, writing JSON, as a
/// ServiceAccount fit for IRSA, with the S3 settings from a generated
/// ConfigMap. (kubernetes-validate checks it with every other manifest in
/// deploy_kubernetes.rs; this checks what it runs.)
#[test]
fn fleet_check_cronjob_runs_fleet_on_the_bucket_with_its_identity() {
    let Some(python) = yaml_python("fleet-check example") else {
        return;
    };
    let Some(docs) = kustomized_docs(&python, "fleet-check example") else {
        return;
    };
    let ours: Vec<&Value> = docs
        .iter()
        .filter(|(src, _)| src.ends_with("examples/fleet-check"))
        .map(|(_, d)| d)
        .collect();
    let find = |k: &str| {
        ours.iter()
            .find(|d| kind(d) == k)
            .copied()
            .unwrap_or_else(|| panic!("no {k} in deploy/examples/fleet-check"))
    };
    let cron = find("CronJob");
    let sa = find("ServiceAccount");
    let cm = find("ConfigMap");
    for d in [cron, sa, cm] {
        assert_eq!(d["metadata"]["namespace"], "slicetrace", "{d}");
    }
    assert!(
        sa["metadata"]["annotations"]["eks.amazonaws.com/role-arn"]
            .as_str()
            .is_some_and(|a| a.starts_with("arn:aws:iam::")),
        "IRSA annotation example: {sa}"
    );
    assert_eq!(sa["automountServiceAccountToken"], false);
    assert_eq!(cron["spec"]["concurrencyPolicy"], "Forbid");
    let pod = &cron["spec"]["jobTemplate"]["spec"]["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], sa["metadata"]["name"]);
    assert_eq!(pod["restartPolicy"], "Never");
    let c = &containers(pod)[0];
    assert_eq!(str_list(&c["command"]), ["slicetrace"]);
    let args = str_list(&c["args"]);
    assert_eq!(args[0], "fleet");
    let flag = |f: &str| {
        args.iter()
            .position(|a| a == f)
            .map(|i| args[i + 1].as_str())
    };
    assert_eq!(flag("--window"), Some("1h"));
    assert_eq!(flag("--format"), Some("json"));
    assert!(flag("--max-stale").is_some(), "{args:?}");
    // Only the flags the fleet command is known to keep.
    for a in args.iter().filter(|a| a.starts_with("--")) {
        assert!(
            ["--window", "--max-stale", "--format"].contains(&a.as_str()),
            "unexpected flag {a}"
        );
    }
    // The data location comes from the ConfigMap the container reads.
    assert_eq!(args[1], "$(FLEET_DATA)");
    let data = cm["data"]["FLEET_DATA"].as_str().expect("FLEET_DATA");
    assert!(data.starts_with("s3://"), "{data}");
    assert!(cm["data"]["AWS_REGION"].is_string());
    let env_from: Vec<&str> = c["envFrom"]
        .as_array()
        .expect("envFrom")
        .iter()
        .filter_map(|e| e["configMapRef"]["name"].as_str())
        .collect();
    assert!(
        env_from.contains(&cm["metadata"]["name"].as_str().unwrap_or("")),
        "the container reads the generated ConfigMap: {env_from:?}"
    );
    // The MinIO settings are documented where they are set.
    let env_file =
        std::fs::read_to_string(deploy_dir().join("examples/fleet-check/s3.env")).expect("s3.env");
    assert!(env_file.contains("AWS_ENDPOINT_URL=") && env_file.contains("AWS_ALLOW_HTTP=true"));
}

/// deploy/examples/ballista: a scheduler Deployment behind a Service on the
/// port that `--engine df://…` names, and executors that reach it by that
/// Service, advertise their pod IP for Flight, and read the bucket with the
/// S3 settings of a generated ConfigMap under one read-only identity.
/// (kubernetes-validate checks the objects with every other manifest in
/// deploy_kubernetes.rs; this checks that the pieces fit together.)
#[test]
fn ballista_example_wires_executors_to_the_scheduler_service_and_the_bucket() {
    let Some(python) = yaml_python("ballista example") else {
        return;
    };
    let Some(docs) = kustomized_docs(&python, "ballista example") else {
        return;
    };
    let ours: Vec<&Value> = docs
        .iter()
        .filter(|(src, _)| src.ends_with("examples/ballista"))
        .map(|(_, d)| d)
        .collect();
    let find = |k: &str, n: &str| {
        ours.iter()
            .find(|d| kind(d) == k && name(d).contains(n))
            .copied()
            .unwrap_or_else(|| panic!("no {k} {n} in deploy/examples/ballista"))
    };
    let sched = find("Deployment", "scheduler");
    let exec = find("Deployment", "executor");
    let svc = find("Service", "scheduler");
    let sa = find("ServiceAccount", "ballista");
    let cm = find("ConfigMap", "s3");
    for d in [sched, exec, svc, sa, cm] {
        assert_eq!(d["metadata"]["namespace"], "slicetrace", "{d}");
    }
    assert_eq!(sa["automountServiceAccountToken"], false);
    // The Service selects the scheduler's pods, on its gRPC port.
    let sel = svc["spec"]["selector"].as_object().expect("selector");
    let pod_labels = &sched["spec"]["template"]["metadata"]["labels"];
    for (k, v) in sel {
        assert_eq!(&pod_labels[k.as_str()], v, "Service selector {k}");
    }
    let exec_labels = &exec["spec"]["template"]["metadata"]["labels"];
    assert!(
        sel.iter().any(|(k, v)| &exec_labels[k.as_str()] != v),
        "the scheduler Service must not select executors"
    );
    let svc_port = svc["spec"]["ports"][0]["port"].as_u64().expect("port");
    let arg = |c: &Value, f: &str| {
        let a = str_list(&c["args"]);
        a.iter()
            .position(|x| x == f)
            .and_then(|i| a.get(i + 1).cloned())
            .unwrap_or_else(|| panic!("no {f} in {a:?}"))
    };
    let s = containers(&sched["spec"]["template"]["spec"])[0];
    assert_eq!(str_list(&s["command"]), ["slicetrace-ballista"]);
    assert_eq!(str_list(&s["args"])[0], "scheduler");
    assert!(arg(s, "--listen").ends_with(&format!(":{svc_port}")));
    let e = containers(&exec["spec"]["template"]["spec"])[0];
    assert_eq!(str_list(&e["command"]), ["slicetrace-ballista"]);
    assert_eq!(str_list(&e["args"])[0], "executor");
    let svc_host = format!("{}.slicetrace.svc", name(svc));
    assert_eq!(arg(e, "--scheduler-host"), svc_host);
    assert_eq!(arg(e, "--scheduler-port"), svc_port.to_string());
    // Executors advertise their pod IP: clients fetch results from them.
    assert_eq!(arg(e, "--external-host"), "$(POD_IP)");
    let env = e["env"].as_array().expect("env");
    assert!(env.iter().any(
        |v| v["name"] == "POD_IP" && v["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
    ));
    assert!(exec["spec"]["replicas"].as_u64().unwrap_or(0) >= 2);
    // Both read the bucket: the same S3 settings and identity.
    for (c, d) in [(s, sched), (e, exec)] {
        let from: Vec<&str> = c["envFrom"]
            .as_array()
            .expect("envFrom")
            .iter()
            .filter_map(|x| x["configMapRef"]["name"].as_str())
            .collect();
        assert!(from.contains(&name(cm)), "{from:?}");
        assert_eq!(
            d["spec"]["template"]["spec"]["serviceAccountName"],
            sa["metadata"]["name"]
        );
    }
    assert!(cm["data"]["AWS_REGION"].is_string());
    let readme = std::fs::read_to_string(deploy_dir().join("examples/ballista/README.md"))
        .expect("README.md");
    let engine = format!("--engine df://{svc_host}:{svc_port}");
    assert!(readme.contains(&engine), "README must show {engine}");
}
