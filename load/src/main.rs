//! `slicetrace-load`: the workload agents of the article experiment.
//!
//! It runs one probe kernel (FFT or GEMM) in a loop, like a tenant pod on a
//! time-sliced GPU, and is the contention generator of every experiment. It
//! can record its own timings in the `probes` schema (`--out`), and prints a
//! one-line JSON summary (runs, throughput, p50/p99 of both clocks) at exit.

use std::fs::File;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Parser, ValueEnum};
use parquet::arrow::ArrowWriter;
use slicetrace_probe::{
    open_backend, record_for, BackendKind, Kernel, Precision, Preset, ProbeSpec,
};
use slicetrace_schema::{
    probes_batch, probes_schema, writer_properties, ProbeRecord, DEFAULT_ROW_GROUP_ROWS,
};

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum KernelArg {
    Fft,
    Gemm,
}

/// Runs an FFT or GEMM kernel in a loop, like a tenant pod.
#[derive(Parser, Debug)]
#[command(name = "slicetrace-load", version)]
struct Args {
    /// Kernel to run.
    #[arg(value_enum)]
    kernel: KernelArg,
    /// auto, cuda or cpu.
    #[arg(long, default_value = "auto")]
    backend: BackendKind,
    /// How long to run (e.g. 30s, 5m, 24h); 0 runs until SIGTERM/SIGINT.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// light or article.
    #[arg(long, default_value = "article")]
    preset: Preset,
    /// GEMM size override.
    #[arg(long)]
    gemm_n: Option<usize>,
    /// GEMM precision override (fp32, fp16, bf16).
    #[arg(long)]
    precision: Option<Precision>,
    /// CUDA submission of each timed run: graph, stream or legacy.
    #[arg(long, default_value = "graph")]
    submit: slicetrace_probe::Timing,
    /// Sleep between runs, ms (default: back to back).
    #[arg(long)]
    period_ms: Option<u64>,
    /// Randomise each sleep by ± this percent of --period-ms, so that runs
    /// arrive at random phases of the time-slice rotation.
    #[arg(long, default_value_t = 0)]
    period_jitter_pct: u32,
    /// Device index to run on.
    #[arg(long, default_value_t = 0)]
    device: u32,
    /// Write every run as a row of the probes schema to this Parquet file.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Node name written into rows.
    #[arg(long, env = "NODE_NAME", default_value = "")]
    node: String,
    /// Poisson arrivals at this mean rate (exponential gaps after each run)
    /// instead of back-to-back runs or --period-ms.
    #[arg(long)]
    arrivals_hz: Option<f64>,
    /// CUDA: fp32 GEMM math mode (strict or tf32).
    #[arg(long)]
    fp32_math: Option<slicetrace_probe::Fp32Math>,
    /// CUDA: spin this many µs on the end event, then block; omit to spin.
    #[arg(long)]
    spin_us: Option<u32>,
    /// CUDA: after the spin, poll the end event every this many µs instead
    /// of blocking in the driver (needs --spin-us).
    #[arg(long, requires = "spin_us")]
    poll_us: Option<u32>,
    /// CUDA: per-thread stack limit, bytes (default: the preset's).
    #[arg(long)]
    cuda_stack_bytes: Option<u32>,
    /// Plant a fault every N runs through the real submission path,
    /// alternating a corrupted output and a skipped kernel; the summary
    /// counts planted and caught faults, and false failures among the
    /// other runs (a verification run, not a tenant).
    #[arg(long)]
    plant_every: Option<u64>,
    /// Plant one hang (`Fault::Hang`: the run holds its context for 30 s,
    /// spinning on the GPU timer) once this long has passed (e.g. 20s).
    #[arg(long, value_parser = humantime::parse_duration)]
    plant_hang_after: Option<Duration>,
    /// CUDA: leave cuBLAS its own default workspace (32 MiB on Hopper)
    /// instead of the preset's.
    #[arg(long)]
    cublas_default_workspace: bool,
    /// Stop after this many runs (in addition to --duration).
    #[arg(long)]
    max_runs: Option<u64>,
    /// Hold the device's context (and the preset's handles and buffers)
    /// and run nothing until --duration ends: a tenant that is resident on
    /// the GPU but never busy.
    #[arg(long, conflicts_with_all = ["period_ms", "arrivals_hz", "duty_pct", "max_runs"])]
    idle: bool,
    /// Busy for this percent of every --duty-period-ms (runs back to back),
    /// idle for the rest: a tenant with a known duty cycle (1-99).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=99), conflicts_with_all = ["period_ms", "arrivals_hz"])]
    duty_pct: Option<u32>,
    /// The period of --duty-pct, ms.
    #[arg(long, default_value_t = 4000, value_parser = clap::value_parser!(u64).range(10..))]
    duty_period_ms: u64,
    /// CUDA: print host and GPU memory after each set-up stage (JSON lines),
    /// then run as usual (footprint breakdown).
    #[arg(long)]
    footprint_stages: bool,
}

/// `(VmRSS, RssAnon, RssFile)` in KiB and `Pss` in KiB, from /proc/self.
fn proc_mem() -> [Option<u64>; 4] {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let rollup = std::fs::read_to_string("/proc/self/smaps_rollup").unwrap_or_default();
    let field = |text: &str, key: &str| {
        text.lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
    };
    [
        field(&status, "VmRSS:"),
        field(&status, "RssAnon:"),
        field(&status, "RssFile:"),
        field(&rollup, "Pss:"),
    ]
}

fn print_stage(stage: &str, device: u32) {
    let [rss, anon, file, pss] = proc_mem();
    let gpu_used_mib = slicetrace_probe::cuda::device_used_mib();
    let o = |v: Option<u64>| v.map_or("null".to_string(), |x| x.to_string());
    println!(
        "{{\"stage\":\"{stage}\",\"device\":{device},\"vm_rss_kib\":{},\"rss_anon_kib\":{},\"rss_file_kib\":{},\"pss_kib\":{},\"gpu_used_mib\":{}}}",
        o(rss),
        o(anon),
        o(file),
        o(pss),
        o(gpu_used_mib)
    );
}

struct Sink {
    writer: ArrowWriter<File>,
    tmp: PathBuf,
    dst: PathBuf,
    buf: Vec<ProbeRecord>,
}

impl Sink {
    fn open(dst: PathBuf) -> Result<Self> {
        let tmp = dst.with_extension("parquet.tmp");
        let f =
            File::create(&tmp).with_context(|| format!("failed to create {}", tmp.display()))?;
        let schema = probes_schema();
        let props = writer_properties(
            &schema,
            DEFAULT_ROW_GROUP_ROWS,
            concat!("slicetrace-load ", env!("CARGO_PKG_VERSION")),
        );
        let writer = ArrowWriter::try_new(f, schema, Some(props))
            .context("failed to start parquet writer")?;
        Ok(Sink {
            writer,
            tmp,
            dst,
            buf: Vec::with_capacity(4096),
        })
    }
    fn push(&mut self, r: ProbeRecord) -> Result<()> {
        self.buf.push(r);
        if self.buf.len() >= 4096 {
            self.flush()?;
        }
        Ok(())
    }
    fn flush(&mut self) -> Result<()> {
        if !self.buf.is_empty() {
            let b = probes_batch(&self.buf)?;
            self.writer.write(&b).context("failed to write rows")?;
            self.buf.clear();
        }
        Ok(())
    }
    fn close(mut self) -> Result<()> {
        self.flush()?;
        self.writer
            .close()
            .context("failed to close parquet file")?;
        std::fs::rename(&self.tmp, &self.dst)
            .with_context(|| format!("failed to rename into {}", self.dst.display()))?;
        Ok(())
    }
}

fn pct(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let pos = q * (sorted.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    Some(sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64))
}

fn main() {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
    let args = match Args::try_parse() {
        Ok(a) => a,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            std::process::exit(code);
        }
    };
    match run(args) {
        Ok(()) => {}
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(1);
        }
    }
}

fn run(args: Args) -> Result<()> {
    #[allow(unsafe_code)]
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
    }
    let spec_for = |backend: &'static str| {
        let mut spec = ProbeSpec::preset_for(args.preset, backend);
        if let Some(n) = args.gemm_n {
            spec.gemm.n = n;
        }
        if let Some(p) = args.precision {
            spec.gemm.precision = p;
        }
        spec.timing = args.submit;
        if let Some(m) = args.fp32_math {
            spec.fp32_math = m;
        }
        if let Some(b) = args.cuda_stack_bytes {
            spec.cuda_stack_bytes = Some(b);
        }
        if args.cublas_default_workspace {
            spec.cublas_workspace_kib = None;
        }
        spec.wait = match (args.spin_us, args.poll_us) {
            (Some(spin_us), Some(poll_us)) => {
                slicetrace_probe::Wait::SpinThenPoll { spin_us, poll_us }
            }
            (Some(spin_us), None) => slicetrace_probe::Wait::SpinThenBlock { spin_us },
            (None, _) => slicetrace_probe::Wait::Spin,
        };
        spec
    };
    let kernel = match args.kernel {
        KernelArg::Fft => Kernel::Fft,
        KernelArg::Gemm => Kernel::Gemm,
    };
    let mut backend: Box<dyn slicetrace_probe::ProbeBackend> = if args.footprint_stages {
        print_stage("start", args.device);
        let b = slicetrace_probe::cuda::CudaBackend::new_traced(
            args.device,
            &spec_for("cuda"),
            &mut |stage| print_stage(stage, args.device),
        )?;
        Box::new(b)
    } else {
        // Only the chosen GPU: a context on the others would make this
        // tenant a compute process of every GPU.
        let (backend, fallback) = open_backend(args.backend, &spec_for, args.device)
            .with_context(|| format!("opening device {}", args.device))?;
        if let Some(reason) = fallback {
            tracing::warn!(%reason, "CUDA unavailable, using the CPU backend");
        }
        backend
    };
    let node = if args.node.is_empty() {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|s| s.trim().to_string())
            .unwrap_or_default()
    } else {
        args.node.clone()
    };
    let shape = backend.shape(kernel);
    if args.idle {
        let start = Instant::now();
        tracing::info!("holding the context, running nothing");
        while !STOP.load(Ordering::Relaxed)
            && (args.duration.is_zero() || start.elapsed() < args.duration)
        {
            std::thread::sleep(Duration::from_millis(50));
        }
        println!(
            "{}",
            serde_json_line(&[
                ("kernel", format!("\"{}\"", kernel.as_str())),
                ("backend", format!("\"{}\"", backend.device().backend)),
                ("gpu_uuid", format!("\"{}\"", backend.device().uuid)),
                ("pid", std::process::id().to_string()),
                ("idle", "true".into()),
                ("runs", "0".into()),
                ("elapsed_s", format!("{:.3}", start.elapsed().as_secs_f64())),
            ])
        );
        return Ok(());
    }
    let duty = args.duty_pct.map(|p| {
        let period = Duration::from_millis(args.duty_period_ms);
        (period, period.mul_f64(f64::from(p) / 100.0))
    });
    let mut sink = args.out.clone().map(Sink::open).transpose()?;
    let start = Instant::now();
    let cpu_start = process_cpu_s();
    let (mut wall, mut gpu) = (Vec::new(), Vec::new());
    let mut runs: u64 = 0;
    let mut incorrect: u64 = 0;
    let (mut planted, mut caught) = (0u64, 0u64);
    let mut hang_planted = false;
    let mut rng = rand::rng();
    const CAP: usize = 1 << 20;
    while !STOP.load(Ordering::Relaxed)
        && (args.duration.is_zero() || start.elapsed() < args.duration)
        && args.max_runs.is_none_or(|m| runs < m)
    {
        if let Some((period, busy)) = duty {
            // Busy for the first `busy` of every period, idle for the rest.
            let phase = Duration::from_nanos(
                (start.elapsed().as_nanos() % period.as_nanos().max(1)) as u64,
            );
            if phase >= busy {
                std::thread::sleep((period - phase).min(Duration::from_millis(50)));
                continue;
            }
        }
        let plant = args
            .plant_every
            .filter(|&n| n > 0 && runs % n == n - 1)
            .map(|_| {
                if planted % 2 == 0 {
                    slicetrace_probe::Fault::Corrupt
                } else {
                    slicetrace_probe::Fault::Skip
                }
            });
        if let Some(f) = plant {
            backend.plant_fault(kernel, f);
            planted += 1;
        }
        if !hang_planted && args.plant_hang_after.is_some_and(|d| start.elapsed() >= d) {
            // One hang through the real graph: this tenant's run holds its
            // context for PLANTED_HANG, the wedged tenant a watchdog sees.
            tracing::warn!(
                hang_s = slicetrace_probe::PLANTED_HANG.as_secs(),
                "planting a hang into the next run"
            );
            backend.plant_fault(kernel, slicetrace_probe::Fault::Hang);
            hang_planted = true;
        }
        let s = backend.run(kernel)?;
        match (plant.is_some(), s.correct == Some(false)) {
            (true, true) => caught += 1,
            (false, true) => incorrect += 1,
            _ => {}
        }
        if wall.len() < CAP {
            wall.push(s.wall_ms);
            gpu.extend(s.gpu_ms);
        }
        if let Some(sink) = sink.as_mut() {
            sink.push(record_for(&node, backend.device(), &shape, &s, runs, 0))?;
        }
        runs += 1;
        if let Some(hz) = args.arrivals_hz {
            let u: f64 = 1.0 - rand::Rng::random::<f64>(&mut rng);
            std::thread::sleep(Duration::from_secs_f64(-u.ln() / hz.max(1e-9)));
        } else if let Some(p) = args.period_ms {
            let j = f64::from(args.period_jitter_pct.min(100)) / 100.0;
            let f = if j > 0.0 {
                rand::random_range(1.0 - j..=1.0 + j)
            } else {
                1.0
            };
            std::thread::sleep(Duration::from_micros((p as f64 * 1000.0 * f) as u64));
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    // The whole process (the driver's threads too) over the run loop only,
    // set-up excluded: what each run costs the host.
    let loop_cpu_s = match (cpu_start, process_cpu_s()) {
        (Some(a), Some(b)) => Some(b - a),
        _ => None,
    };
    let footprint_steady = args.footprint_stages;
    if let Some(sink) = sink {
        sink.close()?;
    }
    wall.sort_by(f64::total_cmp);
    gpu.sort_by(f64::total_cmp);
    let summary = serde_json_line(&[
        ("kernel", format!("\"{}\"", kernel.as_str())),
        ("backend", format!("\"{}\"", backend.device().backend)),
        ("gpu_uuid", format!("\"{}\"", backend.device().uuid)),
        (
            "shape",
            format!("\"{} {}\"", shape.shape, shape.precision.as_str()),
        ),
        ("submit", format!("\"{}\"", shape.submit.unwrap_or("none"))),
        ("pid", std::process::id().to_string()),
        ("runs", runs.to_string()),
        ("incorrect", incorrect.to_string()),
        ("planted", planted.to_string()),
        ("caught", caught.to_string()),
        ("elapsed_s", format!("{elapsed:.3}")),
        ("loop_cpu_s", fmt_opt(loop_cpu_s)),
        (
            "runs_per_s",
            format!("{:.3}", runs as f64 / elapsed.max(1e-9)),
        ),
        (
            "tflops",
            format!(
                "{:.3}",
                shape.flops * runs as f64 / elapsed.max(1e-9) / 1e12
            ),
        ),
        ("wall_p50_ms", fmt_opt(pct(&wall, 0.5))),
        ("wall_p99_ms", fmt_opt(pct(&wall, 0.99))),
        ("gpu_p50_ms", fmt_opt(pct(&gpu, 0.5))),
        ("gpu_p99_ms", fmt_opt(pct(&gpu, 0.99))),
    ]);
    println!("{summary}");
    if footprint_steady {
        print_stage("steady", args.device);
    }
    if incorrect > 0 {
        bail!("{incorrect} of {runs} runs failed their correctness check");
    }
    if caught < planted {
        bail!("only {caught} of {planted} planted faults were caught");
    }
    Ok(())
}

fn fmt_opt(v: Option<f64>) -> String {
    v.map_or("null".into(), |x| format!("{x:.6}"))
}

fn serde_json_line(kv: &[(&str, String)]) -> String {
    let body: Vec<String> = kv.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
    format!("{{{}}}", body.join(","))
}

/// CPU time of the whole process so far (user + system, every thread).
#[allow(unsafe_code)]
fn process_cpu_s() -> Option<f64> {
    // SAFETY: `ru` is a valid, writable rusage for the call's duration.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    (rc == 0).then(|| {
        let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
        tv(ru.ru_utime) + tv(ru.ru_stime)
    })
}
