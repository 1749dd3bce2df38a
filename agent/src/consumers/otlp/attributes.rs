//! What a span says: the attributes of a run span (every known reading of a
//! [`ProbeRecord`]), of a cycle's root span, of a live-health evaluation,
//! and the resource shared by every span of this agent. The span builders
//! (`spans.rs`) call these; absent readings are left out, never sent as 0.

use opentelemetry::{Array, KeyValue, StringValue, Value};
use opentelemetry_sdk::resource::{EnvResourceDetector, TelemetryResourceDetector};
use opentelemetry_sdk::Resource;
use slicetrace_schema::{attr, HealthRecord, ProbeRecord};

/// Value of `service.name` unless `OTEL_SERVICE_NAME` or
/// `OTEL_RESOURCE_ATTRIBUTES` says otherwise.
pub const DEFAULT_SERVICE_NAME: &str = "slicetrace-agent";

/// Span attribute keys for readings that `slicetrace_schema::attr` does not
/// name yet. They follow its `nvml.*` / `k8s.gpu.*` scheme.
pub mod extra_attr {
    /// SM clock after the burst, MHz.
    pub const SM_CLOCK_MHZ_AFTER: &str = "nvml.sm_clock_mhz_after";
    /// Compute processes on the GPU, `pid:name:used_mib`.
    pub const PROCESSES: &str = "nvml.processes";
    /// The occupancy came from a stale cache.
    pub const OCCUPANCY_STALE: &str = "k8s.gpu.occupancy_stale";
    /// Node name of the record.
    pub const NODE: &str = "slicetrace.node";
    /// Runs seen in the cycle (root span).
    pub const RUNS: &str = "slicetrace.runs";
    /// The run began at a random arrival moment (the `arrival` column).
    pub const ARRIVAL: &str = "slicetrace.probe.arrival";
    /// Event time inflated by preemption while shared (`event_inflated`).
    pub const EVENT_INFLATED: &str = "slicetrace.probe.event_inflated";
    /// Busy tenants around the run, `<tenant>=<sm_pct>` (`busy_tenants`).
    pub const BUSY_TENANTS: &str = "slicetrace.busy_tenants";
    /// Their number (`busy_count`).
    pub const BUSY_COUNT: &str = "slicetrace.busy_count";
    /// The run's top contributor: of its busy tenants, the one with the
    /// largest SM share (ties: the first by name). On a run span.
    pub const WAIT_TOP_TENANT: &str = "slicetrace.wait.top_tenant";
    /// The window's top contributor to the GPU's wait (`top_tenant`), on a
    /// `health_evaluation` span.
    pub const BLAME_TOP_TENANT: &str = "slicetrace.blame.top_tenant";
    /// Its attributed share of the wait (`top_tenant_wait_share`).
    pub const BLAME_TOP_SHARE: &str = "slicetrace.blame.top_tenant_wait_share";
}

/// The busy tenant of `busy` (`<tenant>=<sm_pct>` entries) with the largest
/// SM share; ties go to the first by name.
pub fn top_busy_tenant(busy: &[String]) -> Option<&str> {
    busy.iter()
        .filter_map(|t| {
            let (who, sm) = t.rsplit_once('=')?;
            Some((who, sm.parse::<u32>().unwrap_or(0)))
        })
        .min_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)))
        .map(|(who, _)| who)
}

fn strings(v: &[String]) -> Value {
    Value::Array(Array::String(
        v.iter().cloned().map(StringValue::from).collect(),
    ))
}

/// Every reading of `r` that is known, as span attributes (absent fields
/// are omitted, never written as 0).
pub fn run_attributes(r: &ProbeRecord) -> Vec<KeyValue> {
    let mut a = vec![
        KeyValue::new(attr::GPU_UUID, r.gpu_uuid.clone()),
        KeyValue::new(attr::GPU_INDEX, i64::from(r.gpu_index)),
        KeyValue::new(attr::BACKEND, r.backend.as_str()),
        KeyValue::new(attr::KERNEL, r.kernel.as_str()),
        KeyValue::new(attr::SHAPE, r.shape.clone()),
        KeyValue::new(attr::PRECISION, r.precision.clone()),
        KeyValue::new(attr::FLOPS, r.flops),
        // Cycle counts from 0 at agent start; it cannot reach 2^63.
        KeyValue::new(attr::CYCLE, r.cycle as i64),
        KeyValue::new(attr::BURST_SEQ, i64::from(r.burst_seq)),
        KeyValue::new(attr::WALL_MS, r.wall_ms),
        KeyValue::new(attr::WALL_CLOCK, r.wall_clock.unwrap_or_default().as_str()),
        KeyValue::new(extra_attr::NODE, r.node.clone()),
    ];
    let mut f = |k: &'static str, v: Option<f64>| {
        if let Some(v) = v {
            a.push(KeyValue::new(k, v));
        }
    };
    f(attr::GPU_MS, r.gpu_ms);
    f(attr::QUEUE_MS, r.queue_ms);
    f(attr::HOST_WALL_MS, r.host_wall_ms);
    f(attr::CLOCK_ERROR_US, r.clock_error_us);
    f(attr::TFLOPS, r.tflops);
    f(attr::REL_ERROR, r.rel_error);
    f(attr::POWER_W, r.device.power_w);
    let mut u = |k: &'static str, v: Option<u32>| {
        if let Some(v) = v {
            a.push(KeyValue::new(k, i64::from(v)));
        }
    };
    u(attr::SM_CLOCK_MHZ, r.device.sm_clock_mhz);
    u(attr::MEM_CLOCK_MHZ, r.device.mem_clock_mhz);
    u(attr::GPU_UTIL_PCT, r.device.gpu_util_pct);
    u(attr::MEM_UTIL_PCT, r.device.mem_util_pct);
    u(attr::TEMP_C, r.device.temp_c);
    u(attr::GPU_PROCESSES, r.device.gpu_processes);
    u(extra_attr::SM_CLOCK_MHZ_AFTER, r.device.sm_clock_mhz_after);
    u(attr::POD_COUNT, r.pod_count);
    u(attr::REPLICAS, r.replicas);
    if let Some(v) = &r.gpu_name {
        a.push(KeyValue::new(attr::GPU_NAME, v.clone()));
    }
    if let Some(v) = r.correct {
        a.push(KeyValue::new(attr::CORRECT, v));
    }
    if let Some(v) = r.device.throttle_reasons {
        // A bit mask: keep the bit pattern in OTLP's signed integer.
        a.push(KeyValue::new(attr::THROTTLE_REASONS, v as i64));
    }
    if let Some(v) = r.device.fb_used_mib {
        a.push(KeyValue::new(
            attr::FB_USED_MIB,
            i64::try_from(v).unwrap_or(i64::MAX),
        ));
    }
    if let Some(v) = &r.device.processes {
        a.push(KeyValue::new(extra_attr::PROCESSES, strings(v)));
    }
    if let Some(v) = &r.pods {
        a.push(KeyValue::new(attr::PODS, strings(v)));
    }
    if let Some(v) = &r.active_pods {
        a.push(KeyValue::new(attr::ACTIVE_PODS, strings(v)));
    }
    if let Some(v) = &r.sharing_strategy {
        a.push(KeyValue::new(attr::SHARING_STRATEGY, v.clone()));
    }
    if let Some(v) = r.occupancy_stale {
        a.push(KeyValue::new(extra_attr::OCCUPANCY_STALE, v));
    }
    if let Some(v) = r.verdict {
        a.push(KeyValue::new(attr::VERDICT, v.as_str()));
    }
    if let Some(v) = r.contention {
        a.push(KeyValue::new(attr::CONTENTION, v.as_str()));
    }
    if let Some(v) = r.arrival {
        a.push(KeyValue::new(extra_attr::ARRIVAL, v));
    }
    if let Some(v) = r.event_inflated {
        a.push(KeyValue::new(extra_attr::EVENT_INFLATED, v));
    }
    if let Some(v) = &r.busy_tenants {
        a.push(KeyValue::new(extra_attr::BUSY_TENANTS, strings(v)));
        if let Some(top) = top_busy_tenant(v) {
            a.push(KeyValue::new(extra_attr::WAIT_TOP_TENANT, top.to_string()));
        }
    }
    if let Some(v) = r.busy_count {
        a.push(KeyValue::new(extra_attr::BUSY_COUNT, i64::from(v)));
    }
    a
}

/// Attributes of a cycle's root (`probe_cycle`) span: what all its runs share.
pub(super) fn root_attributes(r: &ProbeRecord) -> Vec<KeyValue> {
    let mut a = vec![
        KeyValue::new(attr::GPU_UUID, r.gpu_uuid.clone()),
        KeyValue::new(attr::GPU_INDEX, i64::from(r.gpu_index)),
        KeyValue::new(attr::BACKEND, r.backend.as_str()),
        KeyValue::new(attr::CYCLE, r.cycle as i64),
        KeyValue::new(extra_attr::NODE, r.node.clone()),
    ];
    if let Some(n) = &r.gpu_name {
        a.push(KeyValue::new(attr::GPU_NAME, n.clone()));
    }
    a
}

/// Attributes of a `health_evaluation` span: the verdict and every input it
/// was judged on.
pub(super) fn health_attributes(h: &HealthRecord) -> Vec<KeyValue> {
    let mut a = vec![
        KeyValue::new(attr::GPU_UUID, h.gpu_uuid.clone()),
        KeyValue::new(attr::GPU_INDEX, i64::from(h.gpu_index)),
        KeyValue::new(attr::KERNEL, h.kernel.as_str()),
        KeyValue::new(attr::VERDICT, h.verdict.clone()),
        KeyValue::new(attr::VERDICT_REASON, h.reason.clone()),
        KeyValue::new(attr::HEALTH_WINDOW_SECS, h.window_secs as i64),
        KeyValue::new(attr::HEALTH_SAMPLES, h.samples as i64),
        KeyValue::new(
            attr::HEALTH_CORRECTNESS_FAILURES,
            h.correctness_failures as i64,
        ),
    ];
    for (k, v) in [
        (attr::HEALTH_WALL_P50_MS, h.wall_p50_ms),
        (attr::HEALTH_WALL_P99_MS, h.wall_p99_ms),
        (attr::HEALTH_GPU_P99_MS, h.gpu_p99_ms),
        (attr::HEALTH_QUEUE_P99_MS, h.queue_p99_ms),
        (attr::HEALTH_BASELINE_P99_MS, h.baseline_p99_ms),
        (attr::HEALTH_INFLATION, h.inflation),
    ] {
        if let Some(v) = v {
            a.push(KeyValue::new(k, v));
        }
    }
    if let Some(t) = h.throttle_reasons {
        a.push(KeyValue::new(attr::THROTTLE_REASONS, t as i64));
    }
    for (k, v) in [
        (attr::HEALTH_REASON_CODE, &h.health_reason),
        (attr::HEALTH_BASELINE_SOURCE, &h.health_baseline_source),
        (attr::CONTENTION, &h.contention),
        (attr::CONTENTION_REASON_CODE, &h.contention_reason),
        (attr::CONTENTION_REASON, &h.contention_detail),
        (
            attr::CONTENTION_BASELINE_SOURCE,
            &h.contention_baseline_source,
        ),
    ] {
        if let Some(v) = v {
            a.push(KeyValue::new(k, v.clone()));
        }
    }
    if let Some(t) = h.tenants {
        a.push(KeyValue::new(attr::HEALTH_TENANTS, i64::from(t)));
    }
    if let Some(t) = &h.top_tenant {
        a.push(KeyValue::new(extra_attr::BLAME_TOP_TENANT, t.clone()));
    }
    if let Some(s) = h.top_tenant_wait_share {
        a.push(KeyValue::new(extra_attr::BLAME_TOP_SHARE, s));
    }
    a
}

/// Builds the resource: `service.name` (default [`DEFAULT_SERVICE_NAME`]),
/// `host.name`, `k8s.node.name` when known, the SDK's `telemetry.sdk.*`, then
/// `OTEL_RESOURCE_ATTRIBUTES`, then `OTEL_SERVICE_NAME` (later wins).
pub fn build_resource(host_name: &str, k8s_node_name: Option<&str>) -> Resource {
    let mut kvs = vec![
        KeyValue::new(attr::SERVICE_NAME, DEFAULT_SERVICE_NAME),
        KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
        KeyValue::new(attr::HOST_NAME, host_name.to_string()),
    ];
    if let Some(n) = k8s_node_name.filter(|n| !n.is_empty()) {
        kvs.push(KeyValue::new(attr::K8S_NODE_NAME, n.to_string()));
    }
    let mut b = Resource::builder_empty()
        .with_attributes(kvs)
        .with_detector(Box::new(TelemetryResourceDetector))
        .with_detector(Box::new(EnvResourceDetector::new()));
    if let Ok(name) = std::env::var("OTEL_SERVICE_NAME") {
        if !name.trim().is_empty() {
            b = b.with_service_name(name.trim().to_string());
        }
    }
    b.build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absent_readings_are_omitted_not_zero() {
        let r = ProbeRecord {
            gpu_uuid: "GPU-1".into(),
            kernel: slicetrace_schema::Kernel::Fft,
            wall_ms: 0.5,
            gpu_ms: Some(0.2),
            queue_ms: Some(0.3),
            device: slicetrace_schema::DeviceFields {
                sm_clock_mhz: Some(1980),
                ..Default::default()
            },
            ..Default::default()
        };
        let a = run_attributes(&r);
        let has = |k: &str| a.iter().any(|kv| kv.key.as_str() == k);
        assert!(has(attr::SM_CLOCK_MHZ));
        assert!(!has(attr::POWER_W));
        assert!(!has(attr::PODS));
        assert!(!has(attr::THROTTLE_REASONS));
        assert!(!has(extra_attr::BUSY_TENANTS));
        assert!(!has(extra_attr::WAIT_TOP_TENANT));
    }

    #[test]
    fn a_runs_top_tenant_is_its_busiest_and_ties_go_by_name() {
        let v = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(
            top_busy_tenant(&v(&["ml/a=30", "pid:7=80", "ml/b=80"])),
            Some("ml/b")
        );
        assert_eq!(top_busy_tenant(&v(&[])), None);
        let r = ProbeRecord {
            busy_tenants: Some(v(&["ml/a=30", "pid:7=80"])),
            busy_count: Some(2),
            ..Default::default()
        };
        let a = run_attributes(&r);
        let get = |k: &str| {
            a.iter()
                .find(|kv| kv.key.as_str() == k)
                .map(|kv| kv.value.to_string())
        };
        assert_eq!(get(extra_attr::WAIT_TOP_TENANT).as_deref(), Some("pid:7"));
        assert_eq!(get(extra_attr::BUSY_COUNT).as_deref(), Some("2"));
    }
}
