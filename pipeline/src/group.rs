//! The group stage: the async shell of [`grouper::Grouper`]. Measurements accumulate per
//! Observation window across source batches; due windows (first pending measurement
//! `flush_interval` old, less the window's share of the spread, or past the memory cap) are released to the write stage as one flush
//! once it can take one — until then a due window keeps absorbing new readings, so a slow
//! server gets fewer, larger writes. At the end of the input every window is released.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use fhir_writer::FhirTemplates;
use grouper::{Grouper, GrouperConfig, PeriodInterval};
use normalizer::Measurement;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::normalize::Normalized;
use crate::shared::Shared;

/// One flush: the measurements of the released windows, with their events' sequence numbers.
pub(crate) type Flush = Vec<(u64, Measurement)>;

/// Windows due within this long of each other go out in one flush: when the oldest is due, the
/// ones due in the next `coalesce` go with it, a little early (no window waits past its flush
/// interval for its neighbours; the grouper's spread keeps each flush small).
fn coalesce(flush_interval: Duration) -> Duration {
    (flush_interval / 8).clamp(Duration::from_millis(10), Duration::from_millis(500))
}

/// Runs the stage until `rx` closes, then releases everything pending.
pub(crate) async fn run(
    templates: Arc<FhirTemplates>,
    shared: Arc<Shared>,
    config: GrouperConfig,
    mut rx: mpsc::Receiver<Normalized>,
    tx: mpsc::Sender<Flush>,
) {
    // The window each type is grouped by (its FHIR template's effective interval, looked up
    // case-insensitively once per type name); a type with no template gets instant windows and
    // fails at the writer with TemplateNotFound.
    let mut intervals: HashMap<Arc<str>, PeriodInterval> = HashMap::new();
    let mut interval_of = move |m: &Measurement| match intervals.get(&m.type_name) {
        Some(i) => *i,
        None => {
            let i = templates
                .get(&m.type_name)
                .map_or(PeriodInterval::Instant, |t| t.effective_interval());
            intervals.insert(m.type_name.clone(), i);
            i
        }
    };
    let coalesce = coalesce(config.flush_interval);
    let mut g: Grouper<u64> = Grouper::new(config);
    let mut open = true;
    while open {
        let now = Instant::now();
        // Due: the oldest window's deadline.
        let due_at = g.next_deadline().map(Instant::from_std);
        let due = g.is_over_cap() || due_at.is_some_and(|d| d <= now);
        let sleep = async {
            match due_at {
                Some(d) if !due => tokio::time::sleep_until(d).await,
                _ => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            biased;
            permit = tx.reserve(), if due => {
                let Ok(permit) = permit else { return };
                // With it, the windows due within `coalesce` (neighbours go together).
                let flush = g.expire((Instant::now() + coalesce).into_std());
                shared.metrics.flushes.fetch_add(1, Ordering::Relaxed);
                permit.send(flush);
            }
            item = rx.recv(), if !g.is_over_cap() => match item {
                Some(batch) => {
                    let at = Instant::now().into_std();
                    for (seq, ms) in batch {
                        for m in ms {
                            let interval = interval_of(&m);
                            g.push(seq, m, interval, at);
                        }
                    }
                }
                None => open = false,
            },
            _ = sleep => {}
        }
        gauges(&shared, &g);
    }
    let rest = g.flush_all();
    gauges(&shared, &g);
    if !rest.is_empty() {
        shared.metrics.flushes.fetch_add(1, Ordering::Relaxed);
        let _ = tx.send(rest).await;
    }
}

fn gauges(shared: &Shared, g: &Grouper<u64>) {
    let m = &shared.metrics;
    m.pending_measurements
        .store(g.pending_measurements() as u64, Ordering::Relaxed);
    m.pending_windows
        .store(g.pending_windows() as u64, Ordering::Relaxed);
    m.pending_oldest_ms.store(
        g.oldest_age(Instant::now().into_std()).as_millis() as u64,
        Ordering::Relaxed,
    );
}
