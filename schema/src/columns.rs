//! Column documentation: one row per column of the `probes` and `health`
//! tables. `README.md` carries the same table and a test keeps them equal.

/// Documentation of one column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ColumnDoc {
    /// Column name, as in Parquet and SQL.
    pub name: &'static str,
    /// Arrow type, written as in the README (`float64`, `list<utf8>`, ...).
    pub arrow_type: &'static str,
    /// Whether the column may be null.
    pub nullable: bool,
    /// Unit, or `-` when the value has none.
    pub unit: &'static str,
    /// What the value means.
    pub meaning: &'static str,
}

const fn c(
    name: &'static str,
    arrow_type: &'static str,
    nullable: bool,
    unit: &'static str,
    meaning: &'static str,
) -> ColumnDoc {
    ColumnDoc {
        name,
        arrow_type,
        nullable,
        unit,
        meaning,
    }
}

/// The `probes` table, in column order.
pub const COLUMNS: &[ColumnDoc] = &[
    c("ts", "timestamp(ns, UTC)", false, "ns since epoch", "When the run was launched (host clock)."),
    c("node", "utf8", false, "-", "Kubernetes node name, or the host name when standalone."),
    c("gpu_uuid", "utf8", false, "-", "Physical GPU UUID (`GPU-...`); `CPU-<index>` on the CPU backend."),
    c("gpu_index", "uint32", false, "-", "Device index on the node."),
    c("gpu_name", "utf8", true, "-", "Product name (NVML or CUDA); the CPU model on the CPU backend."),
    c("backend", "utf8", false, "-", "`cuda` or `cpu`."),
    c("kernel", "utf8", false, "-", "`fft` or `gemm`."),
    c("shape", "utf8", false, "-", "Problem shape, e.g. `c2c 1d n=4096 batch=8` or `n=1024`."),
    c("precision", "utf8", false, "-", "`fp32`, `fp16` or `bf16` (FFT: `fp32` complex)."),
    c("submit", "utf8", true, "-", "How the timed run was submitted on CUDA: `graph` (fence kernel, events, kernel and checks in one CUDA graph launch), `fenced` (the same as separate calls, when capture failed), `stream` or `legacy` (start event, kernel, end event as separate calls on the agent's own or the NULL stream: slice waits can leak into `gpu_ms`), followed by `+spin` or `+block`: how the host waited for completion (polled within `probe.spin_us`, or slept in the driver's blocking sync after it); null on the CPU backend."),
    c("flops", "float64", false, "FLOP", "Floating-point operations of one run (FFT: 5·N·log2 N per transform)."),
    c("cycle", "uint64", false, "-", "Probe arrival number (Poisson) or cycle number (burst) on this GPU, from 0 at agent start."),
    c("burst_seq", "uint32", false, "-", "Index of the run inside its burst (`probe.arrivals = \"burst\"`); always 0 with Poisson arrivals (one run per arrival)."),
    c("gpu_ms", "float64", true, "ms", "Execution time between the start and end CUDA events (CPU backend: compute time on the worker thread). Stored as measured (CUDA events have single precision, about 0.5 µs)."),
    c("wall_ms", "float64", false, "ms", "Launch to completion: what a caller sees. With `wall_clock = gpu`, from the host's launch to the GPU's own stamp of the run's end (mapped to host time by the per-GPU calibration), so it does not depend on how late the probe thread woke up; with `wall_clock = host`, the host monotonic clock until the wait returned (`host_wall_ms`). Stored to the nearest 2⁻¹⁰ ms (0.977 µs) since schema version 4."),
    c("queue_ms", "float64", true, "ms", "With `wall_clock = gpu`: launch to the GPU's stamp of the run's start, the wait for a time slice plus the launch; otherwise `wall_ms - gpu_ms`. Stored to the nearest 2⁻¹⁰ ms (0.977 µs) since schema version 4."),
    c("tflops", "float64", true, "TFLOP/s", "`flops / gpu_ms`: achieved throughput while executing. Stored with 20 significant bits (relative error below 1e-6) since schema version 4."),
    c("correct", "bool", true, "-", "The output passed its correctness check."),
    c("rel_error", "float64", true, "-", "Relative error of the check (Parseval for FFT, checksum-vector product for GEMM)."),
    c("sm_clock_mhz", "uint32", true, "MHz", "SM clock, read right before the run (before the burst in burst mode)."),
    c("mem_clock_mhz", "uint32", true, "MHz", "Memory clock, from the full NVML sample (at most 1 s old)."),
    c("gpu_util_pct", "uint32", true, "%", "GPU utilisation over NVML's own sample period, from the full NVML sample (at most 1 s old)."),
    c("mem_util_pct", "uint32", true, "%", "Memory-controller utilisation, from the full NVML sample (at most 1 s old)."),
    c("power_w", "float64", true, "W", "Board power draw, from the full NVML sample (at most 1 s old). Stored with 20 significant bits (under 1 mW) since schema version 4."),
    c("temp_c", "uint32", true, "°C", "GPU temperature, from the full NVML sample (at most 1 s old)."),
    c("throttle_reasons", "uint64", true, "bit mask", "NVML clocks-event reasons, OR of the readings right before and right after the run (idle bit 0x1 removed)."),
    c("fb_used_mib", "uint64", true, "MiB", "Framebuffer memory in use, from the full NVML sample (at most 1 s old)."),
    c("gpu_processes", "uint32", true, "-", "Compute processes on the GPU other than the agent, from NVML's process list (at most 5 s old: the dearest NVML query on a busy GPU); the derived `tenants` column of the CLI."),
    c("processes", "list<utf8>", true, "-", "Those processes as `pid:name:used_mib`: name empty unless the agent's `process_names = true` (PIDs only by default), used_mib empty when unknown."),
    c("sm_clock_mhz_after", "uint32", true, "MHz", "SM clock, read right after the run (after the burst in burst mode)."),
    c("pods", "list<utf8>", true, "-", "`namespace/name` of every pod holding a replica of this physical GPU; null when no occupancy source knows."),
    c("pod_count", "uint32", true, "-", "Number of entries in `pods`."),
    c("active_pods", "list<utf8>", true, "-", "Pods with a process actually running on the GPU."),
    c("replicas", "uint32", true, "-", "Time-slicing replicas per GPU (node label `nvidia.com/gpu.replicas`)."),
    c("sharing_strategy", "utf8", true, "-", "Node label `nvidia.com/gpu.sharing-strategy` (`time-slicing`, `mps`, `none`)."),
    c("occupancy_stale", "bool", true, "-", "The occupancy came from a cache older than the configured staleness age."),
    c("verdict", "utf8", true, "-", "Live health verdict for this GPU and kernel when the row was made."),
    c("trace_id", "utf8", true, "32 hex", "OTLP trace id of the probe cycle (or arrival). Since schema version 4 written only when the run's span tree was exported (`span_sampled = true`), null otherwise (sampled out, or no OTLP exporter): an id no collector has names nothing. In version 3 files it may be set on sampled-out rows (`span_sampled = false`)."),
    c("span_id", "utf8", true, "16 hex", "OTLP span id of this run; null unless `span_sampled = true` since schema version 4 (as `trace_id`)."),
    c("arrival", "bool", true, "-", "The run began at a moment chosen independently of the probe's own previous run (a Poisson arrival, or the first run of a burst), so its latency is what a caller arriving at random would see. Runs with `arrival = false` (later runs of a burst) follow the probe's own previous run and are left out of tails unless asked for. Null in files written before this column existed (then `burst_seq = 0 AND kernel = 'fft'` stands in)."),
    c("arrival_gap_ms", "float64", true, "ms", "Planned gap between the previous arrival on this GPU and this one (exponential in `poisson` mode); null for runs that are not arrivals. Stored to the nearest 2⁻¹⁰ ms (0.977 µs) since schema version 4."),
    c("event_inflated", "bool", true, "-", "`gpu_ms` is above 1.5x the quiet-baseline event p99 of this GPU and kernel while other processes share the GPU: the kernel was preempted mid-run (longer than a time slice), not a slower GPU. Null without a quiet baseline."),
    c("contention", "utf8", true, "-", "Live contention state for this GPU and kernel when the row was made (`ok`, `contended`, `over-shared`); see `verdict` for the health of the GPU itself."),
    c("host_wall_ms", "float64", true, "ms", "Host monotonic clock from launch until the probe's wait returned: what a caller that sleeps on completion sees (it includes the thread's wake-up). Null in files written before this column. Stored to the nearest 2⁻¹⁰ ms (0.977 µs) since schema version 4."),
    c("wall_clock", "utf8", true, "-", "Which clock `wall_ms` and `queue_ms` came from: `gpu` (GPU stamps, calibrated) or `host` (CPU backend, `probe.gpu_stamps = false`, stamps unavailable, or a calibration error bound above 100 µs). Null in files written before this column (then `host`)."),
    c("clock_error_us", "float64", true, "µs", "Error bound of the GPU clock's calibration for this run: `wall_ms` and `queue_ms` are within this of the truth if both clocks are linear over the calibration window (64 s). Null without GPU stamps. Rounded up to a multiple of 2⁻⁴ µs (62.5 ns) since schema version 4, so it stays a bound."),
    c("span_sampled", "bool", true, "-", "Whether the span sampler chose this run's span tree for export to the OTLP collector: by `OTEL_TRACES_SAMPLER` (default: a trace-id ratio of about one tree per second per GPU), or forced because its wait (`queue_ms`) was above its GPU's p99 in the health window (under a per-GPU cap). `false`: sampled out (counted in `slicetrace_otlp_unsampled_total`), the trace id is in no collector. A chosen span may still be lost on its way (`slicetrace_otlp_spans_dropped_total`). Null when no OTLP exporter ran, and in files written before schema version 3."),
    c("busy_tenants", "list<utf8>", true, "-", "Tenant processes (the agent's own excluded) that NVML's per-process utilisation samples (`nvmlDeviceGetProcessUtilization`) showed running work (SM share > 0) from one NVML sample period before launch until the row was made, one entry per process as `<tenant>=<sm_pct>`: `<tenant>` is `namespace/pod` when occupancy maps the PID to a pod, else `pid:<pid>`; `<sm_pct>` is the largest SM share (0-100) NVML gave that process in the window. A process that holds a context but runs nothing is in `processes`, not here. Null when unknown (no NVML, the CPU backend, a GPU that does not report per-process utilisation, and files written before this column); an empty list when NVML reported no busy tenant. Granularity: NVML's own sample period (see docs/blame-whatif.md)."),
    c("busy_count", "uint32", true, "-", "Number of entries in `busy_tenants`: busy tenant contexts around this run (what `slicetrace whatif` calls N). Null when `busy_tenants` is."),
];

/// The `health` table (one row per GPU, kernel and evaluation), in column order.
pub const HEALTH_COLUMNS: &[ColumnDoc] = &[
    c(
        "ts",
        "timestamp(ns, UTC)",
        false,
        "ns since epoch",
        "When the verdict was evaluated.",
    ),
    c("node", "utf8", false, "-", "Node name."),
    c("gpu_uuid", "utf8", false, "-", "Physical GPU UUID."),
    c(
        "gpu_index",
        "uint32",
        false,
        "-",
        "Device index on the node.",
    ),
    c("kernel", "utf8", false, "-", "`fft` or `gemm`."),
    c(
        "verdict",
        "utf8",
        false,
        "-",
        "Health of the GPU itself: `healthy`, `unknown` (no or too few arrival runs, or no event-clock baseline), `degraded` or `unhealthy`; contention never makes a GPU unhealthy.",
    ),
    c("reason", "utf8", false, "-", "Why the health verdict, in one line."),
    c(
        "window_secs",
        "uint64",
        false,
        "s",
        "Length of the rolling window.",
    ),
    c("samples", "uint64", false, "-", "Runs in the window."),
    c(
        "wall_p50_ms",
        "float64",
        true,
        "ms",
        "p50 of `wall_ms` in the window.",
    ),
    c(
        "wall_p99_ms",
        "float64",
        true,
        "ms",
        "p99 of `wall_ms` in the window.",
    ),
    c(
        "gpu_p99_ms",
        "float64",
        true,
        "ms",
        "p99 of `gpu_ms` in the window.",
    ),
    c(
        "queue_p99_ms",
        "float64",
        true,
        "ms",
        "p99 of `queue_ms` in the window.",
    ),
    c(
        "baseline_p99_ms",
        "float64",
        true,
        "ms",
        "The SLO, else the quiet-baseline (learned or SKU) p99 of `wall_ms` the wait is judged against (see `contention_baseline_source`).",
    ),
    c(
        "inflation",
        "float64",
        true,
        "ratio",
        "`wall_p99_ms / baseline_p99_ms`.",
    ),
    c(
        "correctness_failures",
        "uint64",
        false,
        "-",
        "Runs with `correct = false` in the window.",
    ),
    c(
        "throttle_reasons",
        "uint64",
        true,
        "bit mask",
        "Throttle reasons seen in the window.",
    ),
    c("health_reason", "utf8", true, "-", "Bounded reason of the health verdict: `none`, `warming_up`, `no_data`, `no_baseline`, `event_slow`, `throttled`, `correctness`, `probe_failing`, `self_test_failed`, `backend_down`."),
    c("health_baseline_source", "utf8", true, "-", "Baseline the event clock was judged against: `learned` (this GPU's quiet runs) or `sku` (the shipped per-SKU reference); null when neither exists."),
    c("contention", "utf8", true, "-", "How long callers wait for a time slice: `ok`, `contended` (wall p99 over the SLO, or 1.5x the quiet baseline and at least half a 2 ms slice above it) or `over-shared` (over 1.5x what the tenant count predicts, or 3x the SLO)."),
    c("contention_reason", "utf8", true, "-", "Bounded reason of the contention state: `none`, `warming_up`, `no_data`, `no_baseline`, `wait_over_baseline`, `wait_over_slo`, `wait_over_predicted`, `wait_over_peers` (fleet only)."),
    c("contention_detail", "utf8", true, "-", "Why the contention state, in one line, with the tenant count."),
    c("contention_baseline_source", "utf8", true, "-", "What the wall clock was judged against: `slo`, `learned` or `sku`; null when none."),
    c("tenants", "uint32", true, "-", "Largest tenant count (other compute processes on the GPU) among the window's runs."),
    c("event_p50_mcycles", "float64", true, "Mcycles", "p50 of `gpu_ms × sm_clock_mhz / 1000` over the runs whose event clock is judged (quiet, or not preempted)."),
    c("event_baseline_mcycles", "float64", true, "Mcycles", "The event baseline those are judged against (see `health_baseline_source`)."),
    c("top_tenant", "utf8", true, "-", "The tenant (`namespace/pod`, else `pid:<pid>`) with the largest attributed share of this GPU's wait over the window, all kernels together: each arrival's `queue_ms` is split equally among its `busy_tenants` (docs/blame-whatif.md). Null when no arrival in the window had a busy tenant, or busy tenants are unknown (no NVML)."),
    c("top_tenant_wait_share", "float64", true, "ratio", "Its share of the window's total wait (sum of `queue_ms` over the arrivals whose busy tenants are known), 0-1; the rest is other tenants' share and the wait with nobody busy."),
];
