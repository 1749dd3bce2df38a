//! The span queue and the root-span state machine, owned by the export
//! task (`task.rs`): the one place spans wait, and the one batch. The task
//! turns each record into spans here ([`SpanQueue::enqueue`]): run spans go
//! straight into the queue, while a cycle's root waits in `open_roots` until
//! its cycle is over (see the module doc of `otlp`), then moves to the queue
//! and its trace id into `closed_roots`, so a late run makes no second root.
//! What does not fit in `capacity` is dropped and counted here; the task
//! takes batches of at most `batch` spans off the front.
//!
//! Every span the queue holds, or that the task holds in an export request,
//! is counted in `pending` until it is counted as exported or dropped, so
//! the handle can count what is left if it has to abort the task.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use opentelemetry::trace::{SpanId, TraceId};
use opentelemetry::InstrumentationScope;
use opentelemetry_sdk::trace::SpanData;
use slicetrace_schema::{HealthRecord, ProbeRecord};

use super::attributes::root_attributes;
use super::otel_ids::{otel_span_id, otel_trace_id, random_span_id, random_trace_id, root_span_id};
use super::spans::{end_ns, health_span, root_span, run_spans, OpenRoot};
use super::TraceShape;
use crate::internal_events::{Counters, InternalEvent, OtlpSpansDropped};

/// Most cycles whose root span is pending at once; beyond this the oldest
/// is emitted early (bounds memory when many GPUs report at once).
const MAX_OPEN_ROOTS: usize = 1024;
/// How many emitted roots are remembered, so a late run creates no second root.
const MAX_CLOSED_ROOTS: usize = 4096;

/// The spans waiting to be sent and the cycles whose root is pending.
#[derive(Debug)]
pub(super) struct SpanQueue {
    /// Spans waiting to be sent, oldest first; at most `capacity`.
    spans: VecDeque<SpanData>,
    open_roots: HashMap<TraceId, OpenRoot>,
    closed_roots: HashSet<TraceId>,
    closed_order: VecDeque<TraceId>,
    counters: Arc<Counters>,
    scope: InstrumentationScope,
    /// Most spans queued.
    capacity: usize,
    /// Most spans per export request.
    batch: usize,
    shape: TraceShape,
    /// Spans queued or in an export request and not yet counted as
    /// exported or dropped. Whoever swaps it down counts them (the task as
    /// requests end, the handle when it has to abort the task), so every
    /// span is counted exactly once.
    pending: Arc<AtomicU64>,
}

impl SpanQueue {
    /// An empty queue of `capacity` spans, sent `batch` at a time.
    pub(super) fn new(
        counters: Arc<Counters>,
        scope: InstrumentationScope,
        capacity: usize,
        batch: usize,
        shape: TraceShape,
    ) -> Self {
        Self {
            spans: VecDeque::new(),
            open_roots: HashMap::new(),
            closed_roots: HashSet::new(),
            closed_order: VecDeque::new(),
            counters,
            scope,
            capacity,
            batch,
            shape,
            pending: Arc::new(AtomicU64::new(0)),
        }
    }

    /// The count of spans held and not yet counted (shared with the handle).
    pub(super) fn pending(&self) -> Arc<AtomicU64> {
        self.pending.clone()
    }

    /// Spans queued.
    pub(super) fn len(&self) -> usize {
        self.spans.len()
    }

    /// At least one full batch is queued.
    pub(super) fn has_full_batch(&self) -> bool {
        self.spans.len() >= self.batch
    }

    /// Takes up to one batch (and at most `limit` spans) off the front;
    /// they stay pending until [`SpanQueue::settle`].
    pub(super) fn take_batch(&mut self, limit: usize) -> Vec<SpanData> {
        let n = self.spans.len().min(self.batch).min(limit);
        self.spans.drain(..n).collect()
    }

    /// Drops up to `limit` queued spans and counts them.
    pub(super) fn drop_front(&mut self, limit: usize, why: &'static str) {
        let n = self.spans.len().min(limit);
        self.spans.drain(..n);
        self.count_drops(n as u64, why);
    }

    /// `n` spans taken off the queue are done (exported or dropped): no
    /// longer pending. Returns how many the caller must count (0 when the
    /// handle already counted them).
    pub(super) fn settle(&self, n: u64) -> u64 {
        let before = self
            .pending
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |c| Some(c - c.min(n)))
            .unwrap_or_else(|c| c);
        before.min(n)
    }

    /// The agent's counters.
    pub(super) fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Pushes spans, dropping those that do not fit; returns how many were
    /// dropped.
    fn push(&mut self, spans: impl IntoIterator<Item = SpanData>) -> u64 {
        let mut dropped = 0u64;
        for s in spans {
            if self.spans.len() >= self.capacity {
                dropped += 1;
            } else {
                self.spans.push_back(s);
                self.pending.fetch_add(1, Ordering::SeqCst);
            }
        }
        dropped
    }

    /// Moves the roots selected by `pred` into the span queue; returns how
    /// many did not fit.
    fn close_roots(&mut self, pred: impl Fn(&OpenRoot) -> bool) -> u64 {
        let ids: Vec<TraceId> = self
            .open_roots
            .values()
            .filter(|r| pred(r))
            .map(|r| r.trace)
            .collect();
        let mut dropped = 0;
        for id in ids {
            if let Some(r) = self.open_roots.remove(&id) {
                let span = root_span(&self.scope, r);
                dropped += self.push([span]);
                self.closed_roots.insert(id);
                self.closed_order.push_back(id);
                while self.closed_order.len() > MAX_CLOSED_ROOTS {
                    if let Some(old) = self.closed_order.pop_front() {
                        self.closed_roots.remove(&old);
                    }
                }
            }
        }
        dropped
    }

    /// Emits the roots of cycles with no new run for `linger`.
    pub(super) fn close_lingering_roots(&mut self, linger: std::time::Duration) {
        let dropped = self.close_roots(|o| o.last_update.elapsed() >= linger);
        self.count_drops(dropped, "queue full");
    }

    /// Emits every pending root (flush, shutdown).
    pub(super) fn close_all_roots(&mut self) {
        let dropped = self.close_roots(|_| true);
        self.count_drops(dropped, "queue full");
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
    pub(super) fn enqueue_health(&mut self, records: &[HealthRecord]) {
        // The sampler (in the verdicts' fan-out) decided; unsampled ones are
        // counted there.
        let spans: Vec<SpanData> = records
            .iter()
            .filter(|h| h.span_sampled != Some(false))
            .map(|h| health_span(&self.scope, h))
            .collect();
        let dropped = self.push(spans);
        OtlpSpansDropped { dropped, why: None }.emit(&self.counters);
    }

    /// Converts records into spans and queues them; a cycle's root waits
    /// in `open_roots` unless every record is its own trace.
    pub(super) fn enqueue(&mut self, records: &[ProbeRecord]) {
        let mut dropped = 0;
        // The sampler (in the probe fan-out) decided; unsampled rows are
        // counted there, and their cycle gets no root span either.
        for r in records.iter().filter(|r| r.span_sampled != Some(false)) {
            if self.shape == TraceShape::PerRun {
                let trace = otel_trace_id(r.trace_id).unwrap_or_else(random_trace_id);
                let run_id = otel_span_id(r.span_id).unwrap_or_else(random_span_id);
                let spans = run_spans(&self.scope, r, trace, run_id, SpanId::INVALID);
                dropped += self.push(spans);
                continue;
            }
            // A later cycle of this GPU means its earlier cycles are over.
            let (gpu, cycle) = (r.gpu_uuid.as_str(), r.cycle);
            if self
                .open_roots
                .values()
                .any(|o| o.gpu_uuid == gpu && o.cycle < cycle)
            {
                dropped += self.close_roots(|o| o.gpu_uuid == gpu && o.cycle < cycle);
            }
            // The pipeline sets the trace id; without it, the runs of one
            // cycle still share one (made up here).
            let trace = otel_trace_id(r.trace_id)
                .or_else(|| {
                    self.open_roots
                        .values()
                        .find(|o| o.gpu_uuid == gpu && o.cycle == cycle)
                        .map(|o| o.trace)
                })
                .unwrap_or_else(random_trace_id);
            let run_id = otel_span_id(r.span_id).unwrap_or_else(random_span_id);
            let root = root_span_id(trace);
            let (start_ns, stop_ns) = (r.ts_ns, end_ns(r));
            if !self.closed_roots.contains(&trace) {
                if self.open_roots.len() >= MAX_OPEN_ROOTS && !self.open_roots.contains_key(&trace)
                {
                    if let Some(oldest) = self
                        .open_roots
                        .values()
                        .min_by_key(|o| o.last_update)
                        .map(|o| o.trace)
                    {
                        dropped += self.close_roots(|o| o.trace == oldest);
                    }
                }
                let o = self.open_roots.entry(trace).or_insert_with(|| OpenRoot {
                    trace,
                    gpu_uuid: r.gpu_uuid.clone(),
                    cycle,
                    start_ns,
                    end_ns: stop_ns,
                    attrs: root_attributes(r),
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
            let spans = run_spans(&self.scope, r, trace, run_id, root);
            dropped += self.push(spans);
        }
        self.count_drops(dropped, "queue full");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consumers::otlp::extra_attr;
    use crate::consumers::otlp::spans::time_at;
    use crate::probe::ids::{new_span_id, new_trace_id};
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
            device: slicetrace_schema::DeviceFields {
                sm_clock_mhz: Some(1980),
                ..Default::default()
            },
            trace_id: Some(*trace),
            span_id: Some(new_span_id()),
            ..Default::default()
        }
    }

    fn queue(capacity: usize, shape: TraceShape) -> SpanQueue {
        SpanQueue::new(
            Arc::new(Counters::default()),
            InstrumentationScope::builder("t").build(),
            capacity,
            512,
            shape,
        )
    }

    #[test]
    fn one_trace_per_cycle_with_queued_and_executing_children() {
        let mut q = queue(100, TraceShape::PerCycle);
        let t0 = new_trace_id();
        // The cycle arrives in two messages; the root waits for the next cycle.
        q.enqueue(&[rec(0, 0, "fft", &t0), rec(0, 1, "fft", &t0)]);
        q.enqueue(&[rec(0, 0, "gemm", &t0)]);
        assert_eq!(q.len(), 9);
        q.enqueue(&[rec(1, 0, "fft", &new_trace_id())]);
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
        let mut q = queue(100, TraceShape::PerRun);
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
        q.enqueue(&recs);
        q.close_all_roots();
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
        let mut q = queue(100, TraceShape::PerCycle);
        let t0 = new_trace_id();
        q.enqueue(&[rec(0, 0, "fft", &t0)]);
        q.close_all_roots();
        q.enqueue(&[rec(0, 1, "gemm", &t0)]);
        q.close_all_roots();
        assert_eq!(
            q.spans.iter().filter(|d| d.name == "probe_cycle").count(),
            1
        );
    }

    #[test]
    fn full_queue_drops_and_counts() {
        let mut q = queue(4, TraceShape::PerCycle);
        q.enqueue(&[
            rec(0, 0, "fft", &new_trace_id()),
            rec(0, 1, "fft", &new_trace_id()),
        ]);
        assert_eq!(q.len(), 4);
        assert_eq!(Counters::get(&q.counters.otlp_spans_dropped), 2);
        // The queued spans are pending until settled; settling more than
        // are pending never counts twice.
        assert_eq!(q.pending.load(Ordering::SeqCst), 4);
        let batch = q.take_batch(usize::MAX);
        assert_eq!(batch.len(), 4);
        assert_eq!(q.settle(3), 3);
        assert_eq!(q.pending().swap(0, Ordering::SeqCst), 1);
        assert_eq!(q.settle(1), 0);
    }
}
