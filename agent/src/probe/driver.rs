//! The run driver: a GPU's backend lives on a thread of its own, and the
//! probe thread hands it one command at a time and waits for the answer
//! with a deadline (the watchdog). A run that does not answer in time is
//! `hung`: the probe thread stops waiting, drops its end of the channels
//! and so abandons the backend and its CUDA context to the runner thread,
//! which releases them if the run ever returns (it finds nobody listening).
//! The probe thread then opens a new backend on a new runner thread; the
//! GPU is never reset.
//!
//! An abandoned backend stays **parked** on its runner thread: it is never
//! destroyed while its run may still be executing on the GPU (destroying a
//! context under a running kernel is what a reset would do), and it is
//! released, with its context, the moment the run returns. The probe thread
//! hands [`Driver::abandon`] what to do then (count and log the release), so
//! a backend whose run never returns stays visible as parked (a gauge on
//! `/metrics`) instead of vanishing. The CUDA backend runs in a context of
//! its own, so the replacement does not wait on the parked one.
//!
//! Opening goes through the same runner thread, under its own deadline, so
//! a driver call that never returns (a wedged GPU, a driver being
//! unloaded) blocks nothing but the runner.
//!
//! The run's CPU is spent on the runner thread (a CUDA wait may spin for its
//! budget), so every answer carries the runner thread's CPU time for that
//! command, which the probe thread charges to its `run` stage.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use slicetrace_probe::{
    ClockReport, DeviceInfo, Fault, Kernel, KernelShape, ProbeBackend, ProbeError, RunSample,
};

use super::cpu_time::thread_cpu;

/// Opens a backend (on the runner thread): the first open of a GPU that
/// was not opened at start, and every reopen.
pub type Opener = Arc<dyn Fn() -> Result<Box<dyn ProbeBackend>, ProbeError> + Send + Sync>;

/// Why a driver call did not return a result.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    /// The backend answered with an error.
    #[error(transparent)]
    Probe(#[from] ProbeError),
    /// No answer within the deadline: the backend is abandoned.
    #[error("no answer within {0:?}: abandoned")]
    Hung(Duration),
    /// The runner thread is gone (it panicked, or could not start).
    #[error("the runner thread is gone")]
    Gone,
}

enum Cmd {
    Run(Kernel),
    Plant(Kernel, Fault),
    Clock,
}

enum Reply {
    Ran(Result<RunSample, ProbeError>, Option<Duration>),
    Clock(Option<ClockReport>),
}

/// Called on the runner thread when a parked backend has been released,
/// with how long it stayed parked.
pub type OnRelease = Box<dyn FnOnce(Duration) + Send>;

/// Shared between a driver and its runner thread: what to do once the
/// runner releases a backend that the probe thread abandoned.
type ParkSlot = Arc<Mutex<Option<(Instant, OnRelease)>>>;

/// Backends abandoned with a run that has not returned, process-wide.
static PARKED_NOW: AtomicUsize = AtomicUsize::new(0);

/// How many abandoned backends still wait for their run to return. The
/// agent's exit skips the C library's exit handlers while any does: the
/// CUDA driver's handlers tear contexts down under the thread still inside
/// the hung run, which crashed the agent at exit on an H100 (SIGSEGV once
/// the planted hang ended).
pub fn parked_now() -> usize {
    PARKED_NOW.load(Ordering::Relaxed)
}

/// The probe thread's handle to one backend on its runner thread.
pub struct Driver {
    info: DeviceInfo,
    shapes: [KernelShape; 2],
    tx: SyncSender<Cmd>,
    rx: Receiver<Reply>,
    park: ParkSlot,
}

fn kidx(k: Kernel) -> usize {
    match k {
        Kernel::Fft => 0,
        Kernel::Gemm => 1,
    }
}

type Opened = Result<(DeviceInfo, [KernelShape; 2]), ProbeError>;

impl Driver {
    /// Moves an opened backend onto a runner thread.
    pub fn start(backend: Box<dyn ProbeBackend>, thread_name: &str) -> Result<Self, DriverError> {
        let mut backend = Some(backend);
        Self::spawn(thread_name, move || {
            backend.take().ok_or(ProbeError::WorkerGone)
        })
        .and_then(|(d, rx)| d.wait_open(rx, None))
    }

    /// Opens a backend through `open` on a new runner thread, waiting up to
    /// `deadline` for it (a hung open abandons the thread).
    pub fn open(open: Opener, thread_name: &str, deadline: Duration) -> Result<Self, DriverError> {
        let (d, rx) = Self::spawn(thread_name, move || open())?;
        d.wait_open(rx, Some(deadline))
    }

    fn spawn(
        thread_name: &str,
        mut open: impl FnMut() -> Result<Box<dyn ProbeBackend>, ProbeError> + Send + 'static,
    ) -> Result<(PendingOpen, Receiver<Opened>), DriverError> {
        let (ctx, crx) = sync_channel::<Cmd>(4);
        let (rtx, rrx) = sync_channel::<Reply>(1);
        let (otx, orx) = sync_channel::<Opened>(1);
        let park: ParkSlot = Arc::new(Mutex::new(None));
        let runner_park = park.clone();
        std::thread::Builder::new()
            .name(thread_name.to_string())
            .spawn(move || {
                let mut b = match open() {
                    Ok(b) => b,
                    Err(e) => {
                        let _ = otx.send(Err(e));
                        return;
                    }
                };
                let shapes = [b.shape(Kernel::Fft), b.shape(Kernel::Gemm)];
                if otx.send(Ok((b.device().clone(), shapes))).is_err() {
                    // Nobody waits any more (the open took too long): the
                    // backend is released here.
                    return;
                }
                while let Ok(cmd) = crx.recv() {
                    let reply = match cmd {
                        Cmd::Run(k) => {
                            let before = thread_cpu();
                            let r = b.run(k);
                            let cpu = thread_cpu().zip(before).map(|(a, b)| a.saturating_sub(b));
                            Reply::Ran(r, cpu)
                        }
                        Cmd::Plant(k, f) => {
                            b.plant_fault(k, f);
                            continue;
                        }
                        Cmd::Clock => Reply::Clock(b.clock_report()),
                    };
                    if rtx.send(reply).is_err() {
                        // Abandoned (a run past its deadline): release the
                        // backend and its context now that the run returned.
                        break;
                    }
                }
                drop(b);
                let parked = runner_park.lock().ok().and_then(|mut p| p.take());
                if let Some((since, on_release)) = parked {
                    PARKED_NOW.fetch_sub(1, Ordering::Relaxed);
                    on_release(since.elapsed());
                }
            })
            .map_err(|_| DriverError::Gone)?;
        Ok((
            PendingOpen {
                tx: ctx,
                rx: rrx,
                park,
            },
            orx,
        ))
    }

    /// Gives the backend up (its run is past its deadline): it stays parked
    /// on its runner thread until the run returns, then is released with
    /// its context, and `on_release` is called there with how long it was
    /// parked. If the run never returns, neither does `on_release`.
    pub fn abandon(self, on_release: OnRelease) {
        if let Ok(mut p) = self.park.lock() {
            PARKED_NOW.fetch_add(1, Ordering::Relaxed);
            *p = Some((Instant::now(), on_release));
        }
        // Dropping the channels tells the runner nobody listens any more.
    }

    /// The device this backend probes.
    pub fn device(&self) -> &DeviceInfo {
        &self.info
    }

    /// The shape of `kernel` on this backend (fixed once opened).
    pub fn shape(&self, kernel: Kernel) -> KernelShape {
        self.shapes[kidx(kernel)].clone()
    }

    /// Plants `fault` into the next run of `kernel`.
    pub fn plant_fault(&self, kernel: Kernel, fault: Fault) {
        let _ = self.tx.send(Cmd::Plant(kernel, fault));
    }

    /// One run of `kernel`, waiting up to `deadline`. Returns the sample
    /// and the CPU the runner thread spent on it.
    pub fn run(
        &self,
        kernel: Kernel,
        deadline: Duration,
    ) -> Result<(RunSample, Option<Duration>), DriverError> {
        self.tx
            .send(Cmd::Run(kernel))
            .map_err(|_| DriverError::Gone)?;
        match self.rx.recv_timeout(deadline) {
            Ok(Reply::Ran(r, cpu)) => Ok((r?, cpu)),
            Ok(Reply::Clock(_)) => Err(DriverError::Gone),
            Err(RecvTimeoutError::Timeout) => Err(DriverError::Hung(deadline)),
            Err(RecvTimeoutError::Disconnected) => Err(DriverError::Gone),
        }
    }

    /// The backend's clock report, waiting up to `deadline`.
    pub fn clock_report(&self, deadline: Duration) -> Option<ClockReport> {
        self.tx.send(Cmd::Clock).ok()?;
        match self.rx.recv_timeout(deadline) {
            Ok(Reply::Clock(c)) => c,
            _ => None,
        }
    }
}

/// A runner thread whose open has not answered yet.
struct PendingOpen {
    tx: SyncSender<Cmd>,
    rx: Receiver<Reply>,
    park: ParkSlot,
}

impl PendingOpen {
    fn wait_open(
        self,
        opened: Receiver<Opened>,
        deadline: Option<Duration>,
    ) -> Result<Driver, DriverError> {
        let r = match deadline {
            Some(d) => opened.recv_timeout(d).map_err(|e| match e {
                RecvTimeoutError::Timeout => DriverError::Hung(d),
                RecvTimeoutError::Disconnected => DriverError::Gone,
            })?,
            None => opened.recv().map_err(|_| DriverError::Gone)?,
        };
        let (info, shapes) = r?;
        Ok(Driver {
            info,
            shapes,
            tx: self.tx,
            rx: self.rx,
            park: self.park,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use slicetrace_probe::cpu::CpuBackend;
    use slicetrace_probe::{Preset, ProbeSpec};

    fn cpu(i: u32) -> Box<dyn ProbeBackend> {
        let spec = ProbeSpec::preset(Preset::Light);
        let spec = ProbeSpec {
            gemm: slicetrace_probe::GemmSpec { n: 32, ..spec.gemm },
            fft: slicetrace_probe::FftSpec {
                dims: slicetrace_probe::FftDims::D1 { n: 64, batch: 1 },
            },
            ..spec
        };
        Box::new(CpuBackend::new(i, &spec).expect("cpu backend"))
    }

    /// A planted hang is given up on at the deadline, long before it ends,
    /// and the GPU opens again on a new runner while the old one still
    /// hangs.
    #[test]
    fn a_hung_run_is_abandoned_at_its_deadline_and_a_new_backend_runs() {
        let d = Driver::start(cpu(0), "t-run").expect("driver");
        let (s, _) = d.run(Kernel::Fft, Duration::from_secs(30)).expect("run");
        assert_eq!(s.correct, Some(true));
        d.plant_fault(Kernel::Gemm, Fault::Hang);
        let t0 = std::time::Instant::now();
        let e = d.run(Kernel::Gemm, Duration::from_millis(200));
        assert!(matches!(e, Err(DriverError::Hung(_))), "{e:?}");
        assert!(t0.elapsed() < slicetrace_probe::PLANTED_HANG / 2);
        drop(d);
        let opener: Opener = Arc::new(|| Ok(cpu(0)));
        let d = Driver::open(opener, "t-run2", Duration::from_secs(30)).expect("reopen");
        let (s, _) = d.run(Kernel::Gemm, Duration::from_secs(30)).expect("run");
        assert_eq!(s.correct, Some(true));
    }

    /// A backend whose runs wait for the test to let them go.
    struct Held {
        inner: Box<dyn ProbeBackend>,
        go: std::sync::mpsc::Receiver<()>,
    }

    impl ProbeBackend for Held {
        fn device(&self) -> &DeviceInfo {
            self.inner.device()
        }
        fn shape(&self, k: Kernel) -> KernelShape {
            self.inner.shape(k)
        }
        fn run(&mut self, k: Kernel) -> Result<RunSample, ProbeError> {
            let _ = self.go.recv();
            self.inner.run(k)
        }
        fn plant_fault(&mut self, k: Kernel, f: Fault) {
            self.inner.plant_fault(k, f)
        }
    }

    /// An abandoned backend is not released while its run is still going,
    /// and is released (and says so) as soon as the run returns.
    #[test]
    fn an_abandoned_backend_stays_parked_until_its_run_returns() {
        let (go, rx) = std::sync::mpsc::channel();
        let d = Driver::start(
            Box::new(Held {
                inner: cpu(0),
                go: rx,
            }),
            "t-park",
        )
        .expect("driver");
        let e = d.run(Kernel::Fft, Duration::from_millis(50));
        assert!(matches!(e, Err(DriverError::Hung(_))), "{e:?}");
        let (tx, released) = std::sync::mpsc::channel();
        d.abandon(Box::new(move |parked| {
            let _ = tx.send(parked);
        }));
        std::thread::sleep(Duration::from_millis(200));
        assert!(
            released.try_recv().is_err(),
            "released while its run was going"
        );
        go.send(()).expect("let the run return");
        let parked = released
            .recv_timeout(Duration::from_secs(10))
            .expect("released once the run returned");
        assert!(parked >= Duration::from_millis(200), "{parked:?}");
    }

    #[test]
    fn an_open_that_fails_says_why_and_one_that_hangs_is_abandoned() {
        let fails: Opener = Arc::new(|| Err(ProbeError::Injected("no device".into())));
        let e = Driver::open(fails, "t-open", Duration::from_secs(30));
        assert!(
            matches!(&e, Err(DriverError::Probe(ProbeError::Injected(m))) if m == "no device"),
            "{:?}",
            e.err()
        );
        let hangs: Opener = Arc::new(|| {
            std::thread::sleep(Duration::from_secs(5));
            Err(ProbeError::NoDevice)
        });
        let e = Driver::open(hangs, "t-open2", Duration::from_millis(100));
        assert!(matches!(e, Err(DriverError::Hung(_))), "{:?}", e.err());
    }
}
