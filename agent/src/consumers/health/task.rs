//! The health consumer's one loop. It owns its bounded queue (an outlet of
//! the probe fan-out, the only one that also takes probe errors and
//! recoveries) and the [`Evaluator`]: rows go into the windows, events into
//! the fault state, and every `evaluate_interval_ms` (and on a flush) the
//! evaluator judges, publishes to [`crate::serve::live::LiveState`], and its
//! verdicts leave through the health fan-out (outlets: the Parquet `health`
//! table and OTLP `health_evaluation` spans), on the same road as probe
//! rows. On shutdown it evaluates one last time, so a short run (or the tail
//! of a long one) still leaves its verdicts.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::mpsc;

use super::Evaluator;
use crate::topology::Consumer;
use crate::topology::{task_queue, Fanout, Msg};

/// The name of the health consumer's outlet.
pub const NAME: &str = "health";

/// Starts the health consumer: `evaluator` behind a queue of `queue_msgs`
/// messages, evaluating every `every`, its verdicts going to `out`.
pub fn spawn(
    evaluator: Evaluator,
    queue_msgs: usize,
    out: Fanout,
    every: Duration,
) -> Consumer<()> {
    let (input, rx) = task_queue(queue_msgs);
    let task = tokio::spawn(run(evaluator, rx, out, every));
    Consumer::new(NAME, input, task)
}

fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

/// Judges now, publishes, hands the verdicts to `out`, saves baselines.
fn evaluate(ev: &mut Evaluator, out: &Fanout) {
    out.send_health(ev.evaluate(Instant::now(), now_ns()));
    ev.save_baselines();
}

async fn run(mut ev: Evaluator, mut input: mpsc::Receiver<Msg>, out: Fanout, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    let ack = loop {
        tokio::select! {
            m = input.recv() => match m {
                Some(Msg::Probes(rows)) => ev.observe(&rows, Instant::now()),
                Some(Msg::Event(e)) => ev.event(e, Instant::now()),
                Some(Msg::Health(_)) => {}
                Some(Msg::Flush(ack)) => {
                    evaluate(&mut ev, &out);
                    let _ = ack.send(Ok(()));
                }
                Some(Msg::Shutdown { ack, .. }) => break Some(ack),
                None => break None,
            },
            _ = tick.tick() => evaluate(&mut ev, &out),
        }
    };
    evaluate(&mut ev, &out);
    if let Some(ack) = ack {
        let _ = ack.send(Ok(()));
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use slicetrace_schema::ProbeRecord;

    use super::*;
    use crate::consumers::health::HealthConfig;
    use crate::internal_events::{Counters, QueueOwner};
    use crate::serve::live::LiveState;
    use crate::topology::Outlet;

    /// The evaluator's verdicts leave through its own fan-out; a shutdown
    /// behind queued rows judges them first, one last time.
    #[tokio::test]
    async fn verdicts_go_out_through_the_health_fanout_on_shutdown() {
        let (tx, mut rx) = task_queue(8);
        let out = Fanout::new(Arc::new(Counters::default())).with(Outlet::new(
            "parquet",
            tx,
            QueueOwner::Parquet,
        ));
        let live = Arc::new(LiveState::default());
        let ev = Evaluator::new(HealthConfig::default(), "n1".into(), live.clone(), None);
        let c = spawn(ev, 8, out, Duration::from_secs(3600));
        let row = ProbeRecord {
            gpu_uuid: "GPU-a".into(),
            arrival: Some(true),
            wall_ms: 1.0,
            ..Default::default()
        };
        c.input()
            .send(Msg::Probes(vec![row].into()), None)
            .await
            .expect("queued");
        let by = Instant::now() + Duration::from_secs(5);
        assert_eq!(c.stop(by).await, Some(()));
        let Ok(Msg::Health(rows)) = rx.try_recv() else {
            panic!("no verdicts");
        };
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].gpu_uuid, "GPU-a");
        assert!(live
            .verdict("GPU-a", slicetrace_schema::Kernel::Fft)
            .is_some());
    }
}
