//! The test kit shared by the agent's integration tests (`agent/tests`)
//! and the end-to-end tests (`e2e/tests`):
//!
//! * [`FaultyBackend`]: the one fault-injecting `ProbeBackend`, switched
//!   through its [`Faults`] while the agent runs (runs that fail, wrong
//!   answers, planted faults ignored, a planted hang, opens refused, runs
//!   held back by a [`Gate`]);
//! * [`Listener`]: a loopback listener that keeps its port from the moment
//!   it is bound, for in-process servers (no bind, drop and rebind race);
//!   [`start_on_free_ports`] for external programs that must be told a port;
//! * [`wait_until`]: the one wait-until-true helper, with a deadline, and
//!   its forms: [`poll_until`] (no panic, for a test that words its own
//!   failure) and the async [`wait_until_async`], [`eventually`] and
//!   [`poll_until_async`]. The daemon's, the shipper's and the end-to-end
//!   tests all wait through these, never through a loop of their own.
//!
//! The tool discovery helpers (`tool`, `runnable`, `python_with`, `rotel`,
//! the skip rule) are the crate root's.

use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use slicetrace_probe::{
    DeviceInfo, Fault, Kernel, KernelShape, ProbeBackend, ProbeError, RunSample,
};

// ------------------------------------------------------------ backend ----

/// Holds probe runs back until opened, so a test can look at the agent
/// before its first run. Open unless made with [`Gate::closed`].
#[derive(Clone, Debug)]
pub struct Gate(Arc<(Mutex<bool>, Condvar)>);

impl Default for Gate {
    fn default() -> Self {
        Self(Arc::new((Mutex::new(true), Condvar::new())))
    }
}

impl Gate {
    /// A gate that holds every run until [`Gate::open`].
    pub fn closed() -> Self {
        Self(Arc::new((Mutex::new(false), Condvar::new())))
    }

    /// Lets every waiting and later run through.
    pub fn open(&self) {
        let (m, c) = &*self.0;
        *m.lock().unwrap_or_else(|e| e.into_inner()) = true;
        c.notify_all();
    }

    fn wait(&self) {
        let (m, c) = &*self.0;
        let mut open = m.lock().unwrap_or_else(|e| e.into_inner());
        while !*open {
            open = c.wait(open).unwrap_or_else(|e| e.into_inner());
        }
    }
}

/// What a [`FaultyBackend`] does wrong, switchable while it runs, and what
/// it saw.
#[derive(Debug, Default)]
pub struct Faults {
    /// Every run fails with "GPU lost" (a lost GPU).
    pub fail: AtomicBool,
    /// Every run's output fails its check.
    pub wrong: AtomicBool,
    /// Planted faults are ignored, so the self-test's corruption is never
    /// caught.
    pub deaf_to_plants: AtomicBool,
    /// The next run hangs: a [`Fault::Hang`] is planted into the real
    /// backend under it (the CPU worker does not answer for
    /// `slicetrace_probe::PLANTED_HANG`), once per `true` stored here.
    pub hang: AtomicBool,
    /// A test's backend factory refuses to open while this is set (a GPU
    /// that does not open, at start or on a reopen); see [`Faults::open`].
    pub fail_open: AtomicBool,
    /// Runs wait for this gate.
    pub gate: Gate,
    /// Runs that completed (right or wrong).
    pub ok_runs: AtomicU64,
    /// When each failed run failed.
    pub failed_at: Mutex<Vec<Instant>>,
    /// Times the backend was reopened (counted by the test's factory).
    pub reopened: AtomicU64,
    /// Backends under these faults that were dropped (their device
    /// released).
    pub released: AtomicU64,
}

impl Faults {
    /// Nothing wrong yet, runs held back by `gate`.
    pub fn gated(gate: Gate) -> Arc<Self> {
        Arc::new(Self {
            gate,
            ..Self::default()
        })
    }

    /// Shared faults with one switch already on.
    pub fn with(set: impl FnOnce(&Faults)) -> Arc<Self> {
        let f = Self::default();
        set(&f);
        Arc::new(f)
    }

    /// What a test's factory calls to open a backend: refuses while
    /// `fail_open` is set, else opens `open()` faulted by `faults`, and
    /// counts the reopen.
    pub fn open(
        faults: &Arc<Faults>,
        open: impl FnOnce() -> Result<Box<dyn ProbeBackend>, ProbeError>,
    ) -> Result<Box<dyn ProbeBackend>, ProbeError> {
        faults.reopened.fetch_add(1, Ordering::SeqCst);
        if faults.fail_open.load(Ordering::SeqCst) {
            return Err(ProbeError::Injected("device does not open".into()));
        }
        Ok(FaultyBackend::wrap(open()?, faults.clone()))
    }

    /// Runs that failed so far.
    pub fn failures(&self) -> usize {
        self.failed_at.lock().map(|v| v.len()).unwrap_or(0)
    }
}

/// A backend that does what its [`Faults`] say around a real one.
pub struct FaultyBackend {
    inner: Box<dyn ProbeBackend>,
    faults: Arc<Faults>,
}

impl FaultyBackend {
    /// `inner`, faulted by `faults`, boxed for the agent.
    pub fn wrap(inner: Box<dyn ProbeBackend>, faults: Arc<Faults>) -> Box<dyn ProbeBackend> {
        Box::new(Self { inner, faults })
    }
}

impl ProbeBackend for FaultyBackend {
    fn device(&self) -> &DeviceInfo {
        self.inner.device()
    }
    fn shape(&self, kernel: Kernel) -> KernelShape {
        self.inner.shape(kernel)
    }
    fn run(&mut self, kernel: Kernel) -> Result<RunSample, ProbeError> {
        self.faults.gate.wait();
        if self.faults.fail.load(Ordering::SeqCst) {
            if let Ok(mut v) = self.faults.failed_at.lock() {
                v.push(Instant::now());
            }
            return Err(ProbeError::Injected("GPU lost".into()));
        }
        if self.faults.hang.swap(false, Ordering::SeqCst) {
            self.inner.plant_fault(kernel, Fault::Hang);
        }
        let mut s = self.inner.run(kernel)?;
        self.faults.ok_runs.fetch_add(1, Ordering::SeqCst);
        if self.faults.wrong.load(Ordering::SeqCst) {
            s.correct = Some(false);
        }
        Ok(s)
    }
    fn plant_fault(&mut self, kernel: Kernel, fault: Fault) {
        if !self.faults.deaf_to_plants.load(Ordering::SeqCst) {
            self.inner.plant_fault(kernel, fault);
        }
    }
}

impl Drop for FaultyBackend {
    fn drop(&mut self) {
        self.faults.released.fetch_add(1, Ordering::SeqCst);
    }
}

// ------------------------------------------------------------- ports ----

/// A loopback listener bound to a port of its own, kept from the moment it
/// is bound: hand it to an in-process server (`into_std`, or
/// `tokio::net::TcpListener::from_std` after `set_nonblocking(true)`).
#[derive(Debug)]
pub struct Listener(TcpListener);

impl Listener {
    /// Binds `127.0.0.1:0`.
    pub fn bind() -> Self {
        Self(TcpListener::bind("127.0.0.1:0").expect("bind a loopback port"))
    }
    /// Its address.
    pub fn addr(&self) -> SocketAddr {
        self.0.local_addr().expect("bound address")
    }
    /// Its port.
    pub fn port(&self) -> u16 {
        self.addr().port()
    }
    /// The listener itself.
    pub fn into_std(self) -> TcpListener {
        self.0
    }
}

/// Starts an external program that must be told its ports (it binds them
/// itself, so no listener can be handed over): `start` gets `n` ports that
/// were free a moment ago and returns `None` when the program could not
/// bind them (another process took one in between); it is tried again on
/// new ports, up to three times.
pub fn start_on_free_ports<T>(n: usize, mut start: impl FnMut(&[u16]) -> Option<T>) -> Option<T> {
    for _ in 0..3 {
        // Held together, so the n ports differ.
        let held: Vec<Listener> = (0..n).map(|_| Listener::bind()).collect();
        let ports: Vec<u16> = held.iter().map(Listener::port).collect();
        drop(held);
        if let Some(v) = start(&ports) {
            return Some(v);
        }
    }
    None
}

// -------------------------------------------------------------- wait ----
//
// Waiting on the event itself: look, and look again a moment later, until
// what the test waits for has happened. The deadline only guards against a
// hang: a test asserts on what it saw, never on how long it took.

/// How often the waits below look again.
const POLL: Duration = Duration::from_millis(20);

/// Polls `f` until it returns `Some`, then returns that; `None` once
/// `within` has passed (for a test that reports its own failure).
pub fn poll_until<T>(within: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let end = Instant::now() + within;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= end {
            return None;
        }
        std::thread::sleep(POLL);
    }
}

/// Polls `f` until it returns `Some`, then returns that; panics naming
/// `what` once `within` has passed.
pub fn wait_until<T>(what: &str, within: Duration, f: impl FnMut() -> Option<T>) -> T {
    poll_until(within, f).unwrap_or_else(|| panic!("timed out after {within:?} waiting for {what}"))
}

/// [`poll_until`] for a condition that is itself async (an HTTP request, a
/// store listing), in an async test: the pause between two looks is
/// `tokio::time::sleep`, so the runtime's other tasks (the component under
/// test, often) go on meanwhile. Under paused Tokio time the pause advances
/// the paused clock; the deadline is on the real clock either way, so it
/// still only guards against a hang.
pub async fn poll_until_async<T, Fut>(within: Duration, mut f: impl FnMut() -> Fut) -> Option<T>
where
    Fut: std::future::Future<Output = Option<T>>,
{
    let end = Instant::now() + within;
    loop {
        if let Some(v) = f().await {
            return Some(v);
        }
        if Instant::now() >= end {
            return None;
        }
        tokio::time::sleep(POLL).await;
    }
}

/// [`wait_until`] in an async test (see [`poll_until_async`]).
pub async fn wait_until_async<T>(
    what: &str,
    within: Duration,
    mut f: impl FnMut() -> Option<T>,
) -> T {
    eventually(what, within, move || std::future::ready(f())).await
}

/// [`wait_until_async`] for a condition that is itself async.
pub async fn eventually<T, Fut>(what: &str, within: Duration, f: impl FnMut() -> Fut) -> T
where
    Fut: std::future::Future<Output = Option<T>>,
{
    poll_until_async(within, f)
        .await
        .unwrap_or_else(|| panic!("timed out after {within:?} waiting for {what}"))
}
