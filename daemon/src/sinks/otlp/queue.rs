//! The bounded span queue and the root-span state machine. `export` turns
//! records into spans here ([`Shared::enqueue`], never awaiting): run spans
//! go straight into the queue, while a cycle's root waits in `open_roots`
//! until its cycle is over (see the module doc of `otlp`), then moves to the
//! queue and its trace id into `closed_roots`, so a late run makes no second
//! root. What does not fit in `capacity` is dropped and counted here; the
//! export task (`task.rs`) drains the queue in batches.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use opentelemetry::trace::{SpanId, TraceId};
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_sdk::trace::SpanData;
use slicetrace_schema::{HealthRecord, ProbeRecord};
use tokio::sync::Notify;

use super::attributes::root_attributes;
use super::ids::{otel_span_id, otel_trace_id, random_span_id, random_trace_id, root_span_id};
use super::spans::{end_ns, health_span, root_span, run_spans};
use crate::internal_events::{Counters, InternalEvent, OtlpSpansDropped};

/// Most cycles whose root span is pending at once; beyond this the oldest
/// is emitted early (bounds memory when many GPUs report at once).
const MAX_OPEN_ROOTS: usize = 1024;
/// How many emitted roots are remembered, so a late run creates no second root.
const MAX_CLOSED_ROOTS: usize = 4096;

/// A cycle whose root span has not been emitted yet.
#[derive(Debug)]
pub(super) struct OpenRoot {
    pub(super) trace: TraceId,
    pub(super) gpu_uuid: String,
    pub(super) cycle: u64,
    pub(super) start_ns: i64,
    pub(super) end_ns: i64,
    pub(super) attrs: Vec<KeyValue>,
    pub(super) runs: u64,
    pub(super) failed_checks: u64,
    pub(super) last_update: Instant,
}

/// What `export` and the export task share.
#[derive(Debug, Default)]
pub(super) struct Queue {
    /// Spans waiting to be sent, oldest first; at most `Shared::capacity`.
    pub(super) spans: VecDeque<SpanData>,
    open_roots: HashMap<TraceId, OpenRoot>,
    closed_roots: HashSet<TraceId>,
    closed_order: VecDeque<TraceId>,
}

/// The queue and what the sink and its export task both need to see.
#[derive(Debug)]
pub(super) struct Shared {
    pub(super) queue: Mutex<Queue>,
    /// Wakes the export task early when a full batch is queued.
    pub(super) notify: Notify,
    pub(super) counters: Arc<Counters>,
    pub(super) scope: InstrumentationScope,
    /// Most spans queued.
    pub(super) capacity: usize,
    /// Most spans per export request.
    pub(super) batch: usize,
    /// Spans in the export request now in flight. Whoever swaps it to 0
    /// counts them (the task when the request ends, `shutdown` when it has
    /// to abort the task), so they are counted exactly once.
    pub(super) in_flight: AtomicU64,
    /// Every record is its own trace: its run span is the root (Poisson
    /// arrivals). Otherwise runs of a cycle share a `probe_cycle` root.
    pub(super) trace_per_run: AtomicBool,
}

impl Shared {
    /// An empty queue of `capacity` spans, sent `batch` at a time.
    pub(super) fn new(
        counters: Arc<Counters>,
        scope: InstrumentationScope,
        capacity: usize,
        batch: usize,
    ) -> Self {
        Self {
            queue: Mutex::new(Queue::default()),
            notify: Notify::new(),
            counters,
            scope,
            capacity,
            batch,
            in_flight: AtomicU64::new(0),
            trace_per_run: AtomicBool::new(false),
        }
    }

    /// The queue; a poisoned lock is taken over.
    pub(super) fn lock(&self) -> MutexGuard<'_, Queue> {
        // A poisoned lock only means another thread panicked mid-push; the
        // queue is still a valid VecDeque, so keep going.
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Pushes spans, dropping (and counting) those that do not fit.
    fn push(&self, q: &mut Queue, spans: impl IntoIterator<Item = SpanData>) -> u64 {
        let mut dropped = 0u64;
        for s in spans {
            if q.spans.len() >= self.capacity {
                dropped += 1;
            } else {
                q.spans.push_back(s);
            }
        }
        dropped
    }

    /// Moves the roots selected by `pred` into the span queue.
    pub(super) fn close_roots(&self, q: &mut Queue, pred: impl Fn(&OpenRoot) -> bool) -> u64 {
        let ids: Vec<TraceId> = q
            .open_roots
            .values()
            .filter(|r| pred(r))
            .map(|r| r.trace)
            .collect();
        let mut dropped = 0;
        for id in ids {
            if let Some(r) = q.open_roots.remove(&id) {
                let span = root_span(&self.scope, r);
                dropped += self.push(q, [span]);
                q.closed_roots.insert(id);
                q.closed_order.push_back(id);
                while q.closed_order.len() > MAX_CLOSED_ROOTS {
                    if let Some(old) = q.closed_order.pop_front() {
                        q.closed_roots.remove(&old);
                    }
                }
            }
        }
        dropped
    }

    /// Counts dropped spans and logs them, at most once a minute.
    pub(super) fn count_drops(&self, dropped: u64, why: &'static str) {
        OtlpSpansDropped {
            dropped,
            why: Some(why),
        }
        .emit(&self.counters);
    }

    /// Queues one `health_evaluation` span per record (its own trace).
    /// Never awaits.
    pub(super) fn enqueue_health(&self, records: Vec<HealthRecord>) {
        let mut q = self.lock();
        let spans: Vec<SpanData> = records
            .iter()
            .map(|h| health_span(&self.scope, h))
            .collect();
        let dropped = self.push(&mut q, spans);
        drop(q);
        OtlpSpansDropped { dropped, why: None }.emit(&self.counters);
        self.notify.notify_one();
    }

    /// Converts records into spans and queues them; a cycle's root waits
    /// in `open_roots` unless every record is its own trace. Never awaits.
    pub(super) fn enqueue(&self, records: Vec<ProbeRecord>) {
        let mut q = self.lock();
        let mut dropped = 0;
        let per_run = self.trace_per_run.load(Ordering::Relaxed);
        for r in records {
            if per_run {
                let trace = otel_trace_id(r.trace_id).unwrap_or_else(random_trace_id);
                let run_id = otel_span_id(r.span_id).unwrap_or_else(random_span_id);
                let spans = run_spans(&self.scope, &r, trace, run_id, SpanId::INVALID);
                dropped += self.push(&mut q, spans);
                continue;
            }
            // A later cycle of this GPU means its earlier cycles are over.
            let (gpu, cycle) = (r.gpu_uuid.as_str(), r.cycle);
            if q.open_roots
                .values()
                .any(|o| o.gpu_uuid == gpu && o.cycle < cycle)
            {
                dropped += self.close_roots(&mut q, |o| o.gpu_uuid == gpu && o.cycle < cycle);
            }
            // The pipeline sets the trace id; without it, the runs of one
            // cycle still share one (made up here).
            let trace = otel_trace_id(r.trace_id)
                .or_else(|| {
                    q.open_roots
                        .values()
                        .find(|o| o.gpu_uuid == gpu && o.cycle == cycle)
                        .map(|o| o.trace)
                })
                .unwrap_or_else(random_trace_id);
            let run_id = otel_span_id(r.span_id).unwrap_or_else(random_span_id);
            let root = root_span_id(trace);
            let (start_ns, stop_ns) = (r.ts_ns, end_ns(&r));
            if !q.closed_roots.contains(&trace) {
                if q.open_roots.len() >= MAX_OPEN_ROOTS && !q.open_roots.contains_key(&trace) {
                    if let Some(oldest) = q
                        .open_roots
                        .values()
                        .min_by_key(|o| o.last_update)
                        .map(|o| o.trace)
                    {
                        dropped += self.close_roots(&mut q, |o| o.trace == oldest);
                    }
                }
                let o = q.open_roots.entry(trace).or_insert_with(|| OpenRoot {
                    trace,
                    gpu_uuid: r.gpu_uuid.clone(),
                    cycle,
                    start_ns,
                    end_ns: stop_ns,
                    attrs: root_attributes(&r),
                    runs: 0,
                    failed_checks: 0,
                    last_update: Instant::now(),
                });
                o.start_ns = o.start_ns.min(start_ns);
                o.end_ns = o.end_ns.max(stop_ns);
                o.runs += 1;
                o.failed_checks += u64::from(r.correct == Some(false));
                o.last_update = Instant::now();
            }
            let spans = run_spans(&self.scope, &r, trace, run_id, root);
            dropped += self.push(&mut q, spans);
        }
        let full = q.spans.len() >= self.batch;
        drop(q);
        self.count_drops(dropped, "queue full");
        if full {
            self.notify.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sinks::otlp::spans::time_at;
    use crate::sinks::otlp::{extra_attr, new_span_id, new_trace_id};
    use slicetrace_schema::attr;

    fn rec(cycle: u64, seq: u32, kernel: &str, trace: &slicetrace_schema::TraceId) -> ProbeRecord {
        ProbeRecord {
            ts_ns: 1_700_000_000_000_000_000 + i64::from(seq) * 1_000_000,
            node: "n1".into(),
            gpu_uuid: "GPU-1".into(),
            kernel: kernel.parse().expect("kernel"),
            backend: slicetrace_schema::Backend::Cuda,
            cycle,
            burst_seq: seq,
            wall_ms: 0.5,
            gpu_ms: Some(0.2),
            queue_ms: Some(0.3),
            sm_clock_mhz: Some(1980),
            trace_id: Some(*trace),
            span_id: Some(new_span_id()),
            ..Default::default()
        }
    }

    fn shared(capacity: usize) -> Shared {
        Shared::new(
            Arc::new(Counters::default()),
            InstrumentationScope::builder("t").build(),
            capacity,
            512,
        )
    }

    #[test]
    fn one_trace_per_cycle_with_queued_and_executing_children() {
        let s = shared(100);
        let t0 = new_trace_id();
        // The cycle arrives in two calls; the root waits for the next cycle.
        s.enqueue(vec![rec(0, 0, "fft", &t0), rec(0, 1, "fft", &t0)]);
        s.enqueue(vec![rec(0, 0, "gemm", &t0)]);
        assert_eq!(s.lock().spans.len(), 9);
        s.enqueue(vec![rec(1, 0, "fft", &new_trace_id())]);
        let q = s.lock();
        let roots: Vec<&SpanData> = q.spans.iter().filter(|d| d.name == "probe_cycle").collect();
        assert_eq!(roots.len(), 1);
        let root = roots[0];
        let trace = root.span_context.trace_id();
        assert_eq!(trace.to_string(), t0.to_string());
        assert_eq!(root.parent_span_id, SpanId::INVALID);
        let runs: Vec<&SpanData> = q
            .spans
            .iter()
            .filter(|d| d.name.starts_with("probe ") && d.span_context.trace_id() == trace)
            .collect();
        assert_eq!(runs.len(), 3);
        assert!(runs
            .iter()
            .all(|d| d.parent_span_id == root.span_context.span_id()));
        // Root covers first ts to last ts + wall.
        assert_eq!(root.start_time, time_at(1_700_000_000_000_000_000, 0.0));
        assert_eq!(root.end_time, time_at(1_700_000_000_001_000_000, 0.5));
        let run = runs[0];
        let kids: Vec<&SpanData> = q
            .spans
            .iter()
            .filter(|d| d.parent_span_id == run.span_context.span_id())
            .collect();
        assert_eq!(kids.len(), 2);
        let queued = kids.iter().find(|d| d.name == "queued").expect("queued");
        let exec = kids
            .iter()
            .find(|d| d.name == "executing")
            .expect("executing");
        assert_eq!(queued.start_time, run.start_time);
        assert_eq!(exec.start_time, queued.end_time);
        assert_eq!(exec.end_time, run.end_time);
    }

    /// Poisson arrivals: each record is its own trace, its run span is the
    /// root (trace and span ids as in the Parquet row), with `queued` and
    /// `executing` children, and no `probe_cycle` span is ever made.
    #[test]
    fn one_trace_per_arrival_with_the_run_span_as_root() {
        let s = shared(100);
        s.trace_per_run.store(true, Ordering::Relaxed);
        let recs: Vec<ProbeRecord> = (0..3)
            .map(|i| ProbeRecord {
                arrival: Some(true),
                contention: Some(slicetrace_schema::Contention::Contended),
                ..rec(
                    i,
                    0,
                    if i % 2 == 0 { "fft" } else { "gemm" },
                    &new_trace_id(),
                )
            })
            .collect();
        s.enqueue(recs.clone());
        {
            let mut q = s.lock();
            s.close_roots(&mut q, |_| true);
        }
        let q = s.lock();
        assert!(q.spans.iter().all(|d| d.name != "probe_cycle"));
        assert_eq!(q.spans.len(), 9);
        for r in &recs {
            let run = q
                .spans
                .iter()
                .find(|d| d.span_context.span_id().to_bytes() == r.span_id.expect("id").to_bytes())
                .expect("run span");
            assert_eq!(
                run.span_context.trace_id().to_bytes(),
                r.trace_id.expect("trace").to_bytes()
            );
            assert_eq!(
                run.parent_span_id,
                SpanId::INVALID,
                "the run span is the root"
            );
            let children: Vec<_> = q
                .spans
                .iter()
                .filter(|d| d.parent_span_id == run.span_context.span_id())
                .map(|d| d.name.to_string())
                .collect();
            assert_eq!(children, ["queued", "executing"]);
            let has = |k: &str| run.attributes.iter().any(|kv| kv.key.as_str() == k);
            assert!(has(attr::CONTENTION) && has(extra_attr::ARRIVAL));
        }
    }

    #[test]
    fn late_run_after_root_makes_no_second_root() {
        let s = shared(100);
        let t0 = new_trace_id();
        s.enqueue(vec![rec(0, 0, "fft", &t0)]);
        {
            let mut q = s.lock();
            s.close_roots(&mut q, |_| true);
        }
        s.enqueue(vec![rec(0, 1, "gemm", &t0)]);
        let mut q = s.lock();
        s.close_roots(&mut q, |_| true);
        assert_eq!(
            q.spans.iter().filter(|d| d.name == "probe_cycle").count(),
            1
        );
    }

    #[test]
    fn full_queue_drops_and_counts() {
        let s = shared(4);
        s.enqueue(vec![
            rec(0, 0, "fft", &new_trace_id()),
            rec(0, 1, "fft", &new_trace_id()),
        ]);
        assert_eq!(s.lock().spans.len(), 4);
        assert_eq!(Counters::get(&s.counters.otlp_spans_dropped), 2);
    }
}
