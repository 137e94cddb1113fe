//! The connection loop both protocol versions share.
//!
//! Its one rule: **the `rumqttc` event loop is always being polled.** It alone writes our
//! PUBACKs and pings to the socket and reads the broker's packets; a loop that stops polling it
//! while it waits for the pipeline (as an earlier version of this one did) sends no pings (the
//! broker drops the connection after 1.5 keep-alives) and no PUBACKs (the pipeline's acks pile
//! up in the request channel until they block the pipeline, which then never empties the
//! channel the loop waits on: a deadlock). So one `poll()` future is kept alive across a
//! `select!` that also
//!
//! * hands deliveries from the local [`Backlog`] to the pipeline when `out` has room
//!   (`reserve`, never a blocking `send`);
//! * takes the pipeline's acks and queues them as PUBACKs (see [`Outbox`]);
//! * watches `shutdown` and `done`.
//!
//! None of these branches waits for anything but its own event, and the poll future is never
//! dropped half-way (`rumqttc`'s poll is not cancel-safe: a write can be cut in the middle) —
//! except at `done`, after which the loop only flushes and disconnects.

use std::collections::VecDeque;
use std::time::Duration;

use chrono::Utc;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::backlog::{Backlog, Pushed};
use super::client::{Delivery, Flavor, Polled};
use super::{system_properties, until_true, MqttConfig};
use crate::{Ack, SourceError, SourceEvent};

/// An ack from the pipeline: the connection it was delivered on, and its PUBLISH.
type PendingAck<P> = (u64, P);

/// Requests waiting for room in `rumqttc`'s request channel. Nothing ever waits for that room:
/// requests are queued with `try_` calls, and what does not fit is retried after the event
/// loop's next step (each step takes at most one request from the channel, so room only appears
/// then). The pipeline's acks reach this through an unbounded channel, so `Ack::ack` never
/// waits either — a slow or disconnected broker cannot stall the pipeline through its acks.
/// That channel holds at most one entry per delivered, unacknowledged message, which the
/// broker's in-flight window bounds.
struct Outbox<P> {
    subscribe: VecDeque<String>,
    /// An ack that did not fit, retried first (PUBACKs go out in the order the pipeline acks,
    /// which is the order the PUBLISHes arrived: MQTT 3.1.1 §4.6).
    held: Option<PendingAck<P>>,
    acks: mpsc::UnboundedReceiver<PendingAck<P>>,
}

impl<P> Outbox<P> {
    /// Queues what fits. Acks of deliveries from an earlier connection are skipped: their packet
    /// ids belonged to that connection, and the broker sends those messages again anyway.
    fn flush<F: Flavor<Publish = P>>(&mut self, client: &F, generation: u64) {
        while let Some(filter) = self.subscribe.front() {
            if client.try_subscribe(filter).is_err() {
                return;
            }
            self.subscribe.pop_front();
        }
        loop {
            let (g, publish) = match self.held.take() {
                Some(a) => a,
                None => match self.acks.try_recv() {
                    Ok(a) => a,
                    Err(_) => return,
                },
            };
            if g != generation {
                tracing::debug!("Ack of a message from an earlier connection skipped; the broker sends it again.");
                continue;
            }
            if client.try_ack(&publish).is_err() {
                self.held = Some((g, publish));
                return;
            }
        }
    }

    /// Whether every ack received so far is queued.
    fn is_empty(&self) -> bool {
        self.held.is_none() && self.acks.is_empty()
    }
}

/// What one turn of the loop's `select!` did.
enum Step<P> {
    Polled(Polled<P>),
    Again,
    StopDelivering,
    Done,
}

/// Backoff before reconnect attempt `attempt` (0, 1, ...): 100 ms doubling to 5 s.
fn backoff_delay(attempt: u32) -> Duration {
    Duration::from_millis((100u64 << attempt.min(6)).min(5000))
}

/// Waits for room in `out`; never resolves when there is no `out`.
async fn reserve(
    out: &Option<mpsc::Sender<SourceEvent>>,
) -> Result<mpsc::Permit<'_, SourceEvent>, SourceError> {
    match out {
        Some(o) => o.reserve().await.map_err(|_| SourceError::Closed),
        None => std::future::pending().await,
    }
}

/// Runs one source: connects (and reconnects, forever, with backoff), delivers into `out`,
/// queues the pipeline's acks as PUBACKs; see [`super::run`] for shutdown.
pub(super) async fn run<F: Flavor>(
    config: &MqttConfig,
    client: F,
    mut eventloop: F::EventLoop,
    out: mpsc::Sender<SourceEvent>,
    mut shutdown: watch::Receiver<bool>,
    mut done: watch::Receiver<bool>,
) -> Result<(), SourceError> {
    let filters = config.filters();
    let mut out = Some(out);
    let mut backlog: Backlog<SourceEvent> = Backlog::new(config.inflight.max(1) as usize);
    let (ack_tx, acks) = mpsc::unbounded_channel::<PendingAck<F::Publish>>();
    let mut outbox = Outbox {
        subscribe: VecDeque::new(),
        held: None,
        acks,
    };
    // Counts connections: bumped when one fails, so acks know whether theirs is still up.
    let mut generation = 0u64;
    let mut attempt = 0u32;
    let mut reconnect_at: Option<Instant> = None;

    loop {
        let polled = {
            let wait = reconnect_at.take();
            let poll = async {
                if let Some(at) = wait {
                    tokio::time::sleep_until(at).await;
                }
                F::poll(&mut eventloop).await
            };
            tokio::pin!(poll);
            loop {
                let step = tokio::select! {
                    p = &mut poll => Step::Polled(p),
                    permit = reserve(&out), if out.is_some() && !backlog.is_empty() => {
                        let permit = permit?;
                        if let Some(ev) = backlog.pop() {
                            permit.send(ev);
                        }
                        Step::Again
                    }
                    Some(ack) = outbox.acks.recv(), if outbox.held.is_none() => {
                        outbox.held = Some(ack);
                        outbox.flush(&client, generation);
                        Step::Again
                    }
                    _ = until_true(&mut shutdown), if out.is_some() => Step::StopDelivering,
                    _ = until_true(&mut done) => Step::Done,
                };
                match step {
                    Step::Polled(p) => break Some(p),
                    Step::Again => {}
                    Step::StopDelivering => {
                        // Keep the connection for the last acks. What was not delivered is not
                        // acknowledged: the broker sends it to the next session.
                        out = None;
                        backlog.clear();
                    }
                    Step::Done => break None,
                }
            }
        };
        let Some(polled) = polled else { break };
        match polled {
            Polled::Connected { session_present } => {
                attempt = 0;
                tracing::info!(session_present, "MQTT connected.");
                if session_present {
                    let dropped = backlog.session_resumed(generation);
                    if dropped > 0 {
                        tracing::debug!(
                            dropped,
                            "Session resumed: queued copies the broker sends again were dropped."
                        );
                    }
                }
                outbox.subscribe = filters.iter().cloned().collect();
            }
            Polled::Publish(p) => {
                if out.is_some() {
                    let d = F::delivery(p);
                    let acknowledged = d.ack.is_some();
                    let ev = source_event(config, d, generation, &ack_tx);
                    match backlog.push(generation, ev, acknowledged) {
                        Pushed::Queued => {}
                        Pushed::QueuedBeyondBound => tracing::warn!(
                            queued = backlog.len(),
                            inflight = backlog.bound(),
                            "The broker sends more unacknowledged messages than `inflight`; all \
                             are kept, so memory grows with the broker's backlog (see \
                             docs/OPERATIONS.md, \"Configuring the broker so nothing is \
                             dropped\")."
                        ),
                        Pushed::DroppedQos0 { total } => {
                            if total == 1 || total % 1000 == 0 {
                                tracing::warn!(
                                    total,
                                    "QoS 0 messages dropped: the pipeline is behind (publish at \
                                     QoS 1 for at-least-once delivery)."
                                );
                            }
                        }
                    }
                }
                // After shutdown: neither delivered nor acknowledged.
            }
            Polled::DisconnectSent | Polled::Other => {}
            Polled::Failed(error) => {
                generation += 1;
                outbox.subscribe.clear();
                tracing::warn!(%error, attempt, "MQTT connection failed; reconnecting.");
                reconnect_at = Some(Instant::now() + backoff_delay(attempt));
                attempt += 1;
            }
        }
        outbox.flush(&client, generation);
    }

    // `done`: the pipeline finished, so every ack it will make is in the outbox. Queue them,
    // then DISCONNECT behind them (the session stays on the broker), polling until it is out.
    drop(out);
    backlog.clear();
    outbox.subscribe.clear();
    let finish = async {
        let mut disconnecting = false;
        loop {
            outbox.flush(&client, generation);
            if !disconnecting && outbox.is_empty() {
                disconnecting = client.try_disconnect().is_ok();
            }
            match F::poll(&mut eventloop).await {
                Polled::DisconnectSent => break,
                Polled::Failed(error) => {
                    tracing::debug!(%error, "MQTT connection closed while disconnecting.");
                    break;
                }
                Polled::Connected { .. } | Polled::Publish(_) | Polled::Other => {}
            }
        }
    };
    if tokio::time::timeout(Duration::from_secs(3), finish)
        .await
        .is_err()
    {
        tracing::warn!(
            "MQTT disconnect timed out; unacknowledged messages will be delivered again."
        );
    }
    Ok(())
}

fn source_event<P: Send + 'static>(
    config: &MqttConfig,
    d: Delivery<P>,
    generation: u64,
    ack_tx: &mpsc::UnboundedSender<PendingAck<P>>,
) -> SourceEvent {
    let ack = match d.ack {
        Some(publish) => {
            let tx = ack_tx.clone();
            Ack::new(move || {
                Box::pin(async move {
                    // Fails only once the source has stopped; the broker then redelivers.
                    let _ = tx.send((generation, publish));
                })
            })
        }
        None => Ack::none(),
    };
    SourceEvent {
        system_properties: system_properties(config, &d.topic),
        body: d.body,
        properties: d.properties,
        ingestion_time: Utc::now(),
        origin: d.topic,
        ack,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_five_seconds() {
        let delays: Vec<u64> = (0..9)
            .map(|a| backoff_delay(a).as_millis() as u64)
            .collect();
        assert_eq!(delays, [100, 200, 400, 800, 1600, 3200, 5000, 5000, 5000]);
    }
}
