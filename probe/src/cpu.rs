//! The CPU backend: rustfft and matrixmultiply on a dedicated worker thread.
//!
//! Like the CUDA backend, every run poisons its output with NaN first, so a
//! kernel that did not run fails its check, and the check runs after both
//! clocks have stopped (a second round trip to the worker).
//!
//! It has the CUDA backend's interface and fields so that every code path of
//! the agent runs without a GPU. The worker thread plays the GPU: `gpu_ms` is
//! its compute time, `wall_ms` runs from handing it the job to getting the
//! result back, so an oversubscribed CPU shows up as `queue_ms` just as a
//! time-sliced GPU does.

use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use num_complex::Complex32;
use rustfft::{Fft, FftPlanner};

use crate::check::{round_to, transpose, FftReference, GemmReference};
use crate::spec::{FftDims, Kernel, ProbeSpec};
use crate::{DeviceInfo, Fault, KernelShape, ProbeBackend, ProbeError, RunSample};

enum Job {
    /// Run a kernel (poison its output first, then compute unless skipped).
    Run {
        kernel: Kernel,
        fault: Option<Fault>,
    },
    /// Check the output of the last run of `kernel` (outside the clocks).
    Check { kernel: Kernel },
    /// Tests: make every later check take at least this long, so that a
    /// check inside the clocks would show without timing anything else.
    #[cfg(test)]
    SlowChecks(std::time::Duration),
}

enum Done {
    Ran { compute_ms: f64 },
    Checked { correct: bool, rel_error: f64 },
}

/// State owned by the worker thread; everything is allocated once.
struct Worker {
    spec: ProbeSpec,
    fft_ref: FftReference,
    gemm_ref: GemmReference,
    fft_rows: Arc<dyn Fft<f32>>,
    fft_cols: Option<Arc<dyn Fft<f32>>>,
    fft_buf: Vec<Complex32>,
    fft_t: Vec<Complex32>,
    fft_scratch: Vec<Complex32>,
    c: Vec<f32>,
    #[cfg(test)]
    check_delay: std::time::Duration,
}

impl Worker {
    fn new(spec: &ProbeSpec) -> Self {
        let fft_ref = FftReference::new(&spec.fft);
        let gemm_ref = GemmReference::new(&spec.gemm);
        let mut planner = FftPlanner::<f32>::new();
        let (rows, cols) = match spec.fft.dims {
            FftDims::D1 { n, .. } => (planner.plan_fft_forward(n), None),
            FftDims::D2 { nx, ny } => (
                planner.plan_fft_forward(ny),
                Some(planner.plan_fft_forward(nx)),
            ),
        };
        let scratch_len = rows
            .get_inplace_scratch_len()
            .max(cols.as_ref().map_or(0, |c| c.get_inplace_scratch_len()));
        let total = spec.fft.total_len();
        let t_len = if cols.is_some() { total } else { 0 };
        Worker {
            spec: *spec,
            fft_buf: vec![Complex32::new(0.0, 0.0); total],
            fft_t: vec![Complex32::new(0.0, 0.0); t_len],
            fft_scratch: vec![Complex32::new(0.0, 0.0); scratch_len],
            c: vec![0.0; spec.gemm.n * spec.gemm.n],
            fft_ref,
            gemm_ref,
            fft_rows: rows,
            fft_cols: cols,
            #[cfg(test)]
            check_delay: std::time::Duration::ZERO,
        }
    }

    fn fft(&mut self) {
        self.fft_buf.copy_from_slice(&self.fft_ref.input);
        self.fft_rows
            .process_with_scratch(&mut self.fft_buf, &mut self.fft_scratch);
        if let (Some(cols), FftDims::D2 { nx, ny }) = (&self.fft_cols, self.spec.fft.dims) {
            transpose(&self.fft_buf, &mut self.fft_t, nx, ny);
            cols.process_with_scratch(&mut self.fft_t, &mut self.fft_scratch);
            transpose(&self.fft_t, &mut self.fft_buf, ny, nx);
        }
    }

    fn gemm(&mut self) {
        let n = self.spec.gemm.n;
        let r = &self.gemm_ref;
        // Column-major: row stride 1, column stride n.
        #[allow(unsafe_code)]
        // SAFETY: a, b and c are n×n buffers allocated in `new`; the strides
        // describe exactly those buffers and c does not alias a or b.
        unsafe {
            matrixmultiply::sgemm(
                n,
                n,
                n,
                1.0,
                r.a.as_ptr(),
                1,
                n as isize,
                r.b.as_ptr(),
                1,
                n as isize,
                0.0,
                self.c.as_mut_ptr(),
                1,
                n as isize,
            );
        }
        let p = self.spec.gemm.precision;
        for x in &mut self.c {
            *x = round_to(p, *x);
        }
    }

    /// Poisons the output with NaN, as the CUDA backend does inside its
    /// graph, so that a kernel that did not run fails the check.
    fn poison(&mut self, kernel: Kernel) {
        match kernel {
            Kernel::Fft => self.fft_buf.fill(Complex32::new(f32::NAN, f32::NAN)),
            Kernel::Gemm => self.c.fill(f32::NAN),
        }
    }

    fn run(&mut self, kernel: Kernel, fault: Option<Fault>) -> Done {
        self.poison(kernel);
        if fault == Some(Fault::Hang) {
            // The CPU's wedged context: the worker does not answer for the
            // planted hang's length, and sleeps (no CPU) meanwhile.
            std::thread::sleep(crate::PLANTED_HANG);
        }
        let t0 = Instant::now();
        if fault != Some(Fault::Skip) {
            match kernel {
                Kernel::Fft => self.fft(),
                Kernel::Gemm => self.gemm(),
            }
        }
        let compute_ms = t0.elapsed().as_secs_f64() * 1e3;
        if fault == Some(Fault::Corrupt) {
            match kernel {
                Kernel::Fft => self.fft_buf[0] = Complex32::new(self.fft_ref.plant_value(), 0.0),
                Kernel::Gemm => {
                    self.c[0] = round_to(self.spec.gemm.precision, self.gemm_ref.plant_value())
                }
            }
        }
        Done::Ran { compute_ms }
    }

    fn check(&self, kernel: Kernel) -> Done {
        #[cfg(test)]
        std::thread::sleep(self.check_delay);
        let (correct, rel_error) = match kernel {
            Kernel::Fft => self.fft_ref.judge_host(&self.fft_buf),
            Kernel::Gemm => self.gemm_ref.judge_host(&self.c),
        };
        Done::Checked { correct, rel_error }
    }

    fn handle(&mut self, job: Job) -> Done {
        match job {
            Job::Run { kernel, fault } => self.run(kernel, fault),
            Job::Check { kernel } => self.check(kernel),
            #[cfg(test)]
            Job::SlowChecks(d) => {
                self.check_delay = d;
                Done::Ran { compute_ms: 0.0 }
            }
        }
    }
}

/// CPU probe backend. One instance per simulated device, each with its own
/// worker thread.
pub struct CpuBackend {
    info: DeviceInfo,
    spec: ProbeSpec,
    tx: Option<SyncSender<Job>>,
    rx: Receiver<Done>,
    worker: Option<JoinHandle<()>>,
    fault_next: [Option<Fault>; 2],
}

fn cpu_model() -> Option<String> {
    std::fs::read_to_string("/proc/cpuinfo").ok().and_then(|s| {
        s.lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split(':').nth(1))
            .map(|m| format!("cpu: {}", m.trim()))
    })
}

impl CpuBackend {
    /// Sets up buffers and references for `spec`, starts the worker thread and
    /// warms up both kernels.
    pub fn new(index: u32, spec: &ProbeSpec) -> Result<Self, ProbeError> {
        spec.validate()?;
        let (job_tx, job_rx) = sync_channel::<Job>(1);
        let (done_tx, done_rx) = sync_channel::<Done>(1);
        let spec_copy = *spec;
        let worker = std::thread::Builder::new()
            .name(format!("cpu-probe-{index}"))
            .spawn(move || {
                let mut w = Worker::new(&spec_copy);
                while let Ok(job) = job_rx.recv() {
                    if done_tx.send(w.handle(job)).is_err() {
                        break;
                    }
                }
            })
            .map_err(|_| ProbeError::WorkerGone)?;
        let mut b = CpuBackend {
            info: DeviceInfo {
                index,
                uuid: format!("CPU-{index}"),
                name: cpu_model(),
                backend: slicetrace_schema::Backend::Cpu,
            },
            spec: *spec,
            tx: Some(job_tx),
            rx: done_rx,
            worker: Some(worker),
            fault_next: [None; 2],
        };
        for k in [Kernel::Fft, Kernel::Gemm] {
            b.run(k)?;
        }
        Ok(b)
    }
}

fn kidx(k: Kernel) -> usize {
    match k {
        Kernel::Fft => 0,
        Kernel::Gemm => 1,
    }
}

fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

impl ProbeBackend for CpuBackend {
    fn device(&self) -> &DeviceInfo {
        &self.info
    }

    fn shape(&self, kernel: Kernel) -> KernelShape {
        self.spec.kernel_shape(kernel, None)
    }

    fn run(&mut self, kernel: Kernel) -> Result<RunSample, ProbeError> {
        let fault = self.fault_next[kidx(kernel)].take();
        let tx = self.tx.as_ref().ok_or(ProbeError::WorkerGone)?;
        let ts_ns = now_ns();
        // ---- measured path: hand the job over, get the result back ----
        let t0 = Instant::now();
        tx.send(Job::Run { kernel, fault })
            .map_err(|_| ProbeError::WorkerGone)?;
        let Done::Ran { compute_ms } = self.rx.recv().map_err(|_| ProbeError::WorkerGone)? else {
            return Err(ProbeError::WorkerGone);
        };
        let wall_ms = t0.elapsed().as_secs_f64() * 1e3;
        // ---- end of measured path: the check is a second round trip ----
        tx.send(Job::Check { kernel })
            .map_err(|_| ProbeError::WorkerGone)?;
        let Done::Checked { correct, rel_error } =
            self.rx.recv().map_err(|_| ProbeError::WorkerGone)?
        else {
            return Err(ProbeError::WorkerGone);
        };
        let wall_ms = wall_ms.max(compute_ms);
        Ok(RunSample {
            ts_ns,
            gpu_ms: Some(compute_ms),
            wall_ms,
            host_wall_ms: wall_ms,
            queue_ms: None,
            wall_clock: slicetrace_schema::WallClock::Host,
            clock_error_us: None,
            correct: Some(correct),
            rel_error: Some(rel_error),
            wait: None,
        })
    }

    fn plant_fault(&mut self, kernel: Kernel, fault: Fault) {
        self.fault_next[kidx(kernel)] = Some(fault);
    }
}

impl CpuBackend {
    /// Tests: every later check sleeps `d` first (see [`Job::SlowChecks`]).
    #[cfg(test)]
    fn slow_checks(&mut self, d: std::time::Duration) {
        if let Some(tx) = self.tx.as_ref() {
            if tx.send(Job::SlowChecks(d)).is_ok() {
                let _ = self.rx.recv();
            }
        }
    }
}

impl Drop for CpuBackend {
    fn drop(&mut self) {
        self.tx.take();
        if let Some(w) = self.worker.take() {
            let _ = w.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{FftSpec, GemmSpec, Precision};

    fn small() -> ProbeSpec {
        ProbeSpec {
            fft: FftSpec {
                dims: FftDims::D1 { n: 512, batch: 4 },
            },
            gemm: GemmSpec {
                n: 64,
                precision: Precision::Fp32,
            },
            burst_runs: 4,
            timing: crate::Timing::Graph,
            ..ProbeSpec::preset(crate::Preset::Light)
        }
    }

    #[test]
    fn cpu_backend_runs_both_kernels_correctly_with_both_clocks() {
        for p in [Precision::Fp32, Precision::Fp16, Precision::Bf16] {
            let spec = ProbeSpec {
                gemm: GemmSpec {
                    n: 96,
                    precision: p,
                },
                ..small()
            };
            let mut b = CpuBackend::new(0, &spec).expect("backend");
            for k in [Kernel::Fft, Kernel::Gemm] {
                let s = b.run(k).expect("run");
                assert_eq!(s.correct, Some(true), "{k:?} {p:?} rel={:?}", s.rel_error);
                let g = s.gpu_ms.expect("compute time");
                assert!(
                    g > 0.0 && s.wall_ms >= g,
                    "wall {} < compute {}",
                    s.wall_ms,
                    g
                );
                assert!(s.ts_ns > 1_600_000_000_000_000_000);
            }
        }
    }

    #[test]
    fn cpu_backend_2d_fft_is_correct() {
        let spec = ProbeSpec {
            fft: FftSpec {
                dims: FftDims::D2 { nx: 64, ny: 128 },
            },
            ..small()
        };
        let mut b = CpuBackend::new(0, &spec).expect("backend");
        assert_eq!(b.run(Kernel::Fft).expect("run").correct, Some(true));
    }

    #[test]
    fn planted_corruption_is_caught_once_then_clears() {
        let mut b = CpuBackend::new(0, &small()).expect("backend");
        for k in [Kernel::Fft, Kernel::Gemm] {
            b.corrupt_next_output(k);
            let bad = b.run(k).expect("run");
            assert_eq!(bad.correct, Some(false), "{k:?} corruption not caught");
            assert!(bad.rel_error.expect("rel") > 1e-2);
            assert_eq!(b.run(k).expect("run").correct, Some(true));
        }
    }

    /// A launch that silently did nothing must not be judged on the previous
    /// run's output: the output is poisoned before every run.
    #[test]
    fn skipped_kernel_is_caught_not_judged_on_the_previous_output() {
        let mut b = CpuBackend::new(0, &small()).expect("backend");
        for k in [Kernel::Fft, Kernel::Gemm] {
            assert_eq!(b.run(k).expect("run").correct, Some(true));
            b.plant_fault(k, Fault::Skip);
            let skipped = b.run(k).expect("run");
            assert_eq!(skipped.correct, Some(false), "{k:?} skip not caught");
            assert_eq!(skipped.rel_error, Some(f64::INFINITY), "{k:?}");
            assert_eq!(b.run(k).expect("run").correct, Some(true));
        }
    }

    /// Regression (cpu.rs used to check before returning): the host clock of
    /// a run must not include the check. Every check is made to take at
    /// least 2 s; a run's wall time then proves where the check ran without
    /// timing anything tight: inside the clock it would be ≥ 2 s, outside it
    /// is the compute time of a small FFT.
    #[test]
    fn clocks_exclude_the_check() {
        let mut b = CpuBackend::new(0, &small()).expect("backend");
        let delay = std::time::Duration::from_secs(2);
        b.slow_checks(delay);
        let t0 = Instant::now();
        let s = b.run(Kernel::Fft).expect("run");
        assert!(
            t0.elapsed() >= delay,
            "the check did not run: the delay is not in effect"
        );
        assert_eq!(s.correct, Some(true));
        assert!(
            s.wall_ms < delay.as_secs_f64() * 1e3 / 2.0,
            "wall {} ms includes the {delay:?} check",
            s.wall_ms
        );
    }

    /// Regression: the self-test's fixed +1000 on one element was lost in the
    /// norm of the article preset's 4096×4096 FFT on the H100.
    #[test]
    fn planted_corruption_is_caught_on_a_large_2d_fft() {
        let spec = ProbeSpec {
            fft: FftSpec {
                dims: FftDims::D2 { nx: 1024, ny: 1024 },
            },
            ..small()
        };
        let mut b = CpuBackend::new(0, &spec).expect("backend");
        b.corrupt_next_output(Kernel::Fft);
        let bad = b.run(Kernel::Fft).expect("run");
        assert_eq!(bad.correct, Some(false), "rel={:?}", bad.rel_error);
    }

    #[test]
    fn record_carries_queue_and_tflops() {
        let mut b = CpuBackend::new(3, &small()).expect("backend");
        let s = b.run(Kernel::Gemm).expect("run");
        let shape = b.shape(Kernel::Gemm);
        let r = crate::record_for("n1", b.device(), &shape, &s, 7, 2);
        assert_eq!(r.gpu_uuid, "CPU-3");
        assert_eq!(r.backend, slicetrace_schema::Backend::Cpu);
        assert_eq!((r.cycle, r.burst_seq), (7, 2));
        let q = r.queue_ms.expect("queue");
        assert!((q - (r.wall_ms - r.gpu_ms.expect("gpu"))).abs() < 1e-12);
        assert!(r.tflops.expect("tflops") > 0.0);
    }
}
