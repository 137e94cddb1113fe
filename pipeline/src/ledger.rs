//! The ledger of events in flight: from the moment an event enters the pipeline (it gets the
//! next sequence number) until every measurement it produced is written to FHIR or the event is
//! dead-lettered. The **commit watermark** is the lowest sequence number not yet done: the spool
//! is truncated below it, and the acks of sources without a spool (Event Hubs checkpoints, files)
//! run in order as it passes them.
//!
//! Pure bookkeeping, no I/O and no clock: the stages share it behind a mutex and hold the lock
//! only to update counts.

use std::collections::VecDeque;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};
use sources::Ack;

/// An event as the pipeline keeps it until it is done (the body is needed to dead-letter it if
/// FHIR refuses its measurements).
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// The raw body.
    pub body: Vec<u8>,
    /// Application properties.
    pub properties: Map<String, Value>,
    /// System properties.
    pub system_properties: Map<String, Value>,
    /// When the event reached the source (a file's event may not say; then same-time readings
    /// are ordered by arrival alone, as in `iomt map`).
    pub ingestion_time: Option<DateTime<Utc>>,
    /// Topic or partition.
    pub origin: String,
}

/// An event entering the pipeline with its acknowledgement.
#[derive(Debug)]
pub struct Input {
    /// The event.
    pub event: Event,
    /// Sent once the event is committed.
    pub ack: Ack,
}

impl From<sources::SourceEvent> for Input {
    fn from(ev: sources::SourceEvent) -> Self {
        Input {
            event: Event {
                body: ev.body,
                properties: ev.properties,
                system_properties: ev.system_properties,
                ingestion_time: Some(ev.ingestion_time),
                origin: ev.origin,
            },
            ack: ev.ack,
        }
    }
}

/// The state of one sequence number.
#[derive(Debug)]
struct Slot {
    /// Measurements not yet written; `None` until the event is normalized.
    remaining: Option<usize>,
    /// Set when the event could not be made durable (e.g. a dead letter could not be stored):
    /// it stays un-committed so that the source or the spool delivers it again after a restart.
    stuck: bool,
    /// The event, kept to dead-letter it if FHIR refuses its measurements; `None` for an event
    /// the spool holds (read back from there if needed) and for done slots.
    event: Option<Arc<Event>>,
    /// Whether the spool holds the event.
    spooled: bool,
    ingestion_time: Option<DateTime<Utc>>,
    ack: Option<Ack>,
}

/// Where an event in flight can be found ([`Ledger::lookup`]).
#[derive(Debug, Clone)]
pub enum Lookup {
    /// Held in memory.
    Held(Arc<Event>),
    /// In the spool, under its sequence number.
    Spooled,
    /// Not in flight (committed, or never admitted).
    Gone,
}

/// What passing the watermark released.
#[derive(Debug, Default)]
pub struct Committed {
    /// The new watermark: every event below it is done.
    pub watermark: u64,
    /// Acks to send, in sequence order.
    pub acks: Vec<Ack>,
    /// Ingestion times of the events committed, for the ingestion→committed latency.
    pub ingestion_times: Vec<DateTime<Utc>>,
    /// Ingestion times of the events that became done (every measurement written, or the
    /// event dead-lettered) since the last commit, committed or not: the ingestion→written
    /// latency, which an earlier event still pending does not hold back.
    pub done_ingestion_times: Vec<DateTime<Utc>>,
    /// Events committed.
    pub events: usize,
}

/// Events in flight by sequence number.
#[derive(Debug, Default)]
pub struct Ledger {
    base: u64,
    slots: VecDeque<Slot>,
    /// Ingestion times of events done since the last [`Ledger::commit`].
    done: Vec<DateTime<Utc>>,
}

impl Ledger {
    /// An empty ledger whose first event will be `first_seq`.
    pub fn starting_at(first_seq: u64) -> Self {
        Ledger {
            base: first_seq,
            slots: VecDeque::new(),
            done: Vec::new(),
        }
    }

    /// The next sequence number to admit.
    pub fn next_seq(&self) -> u64 {
        self.base + self.slots.len() as u64
    }

    /// The commit watermark.
    pub fn watermark(&self) -> u64 {
        self.base
    }

    /// Events admitted and not yet committed.
    pub fn in_flight(&self) -> usize {
        self.slots.len()
    }

    /// Admits the next event; returns its sequence number. `ack` runs once it is committed.
    pub fn admit(&mut self, event: Arc<Event>, ack: Option<Ack>) -> u64 {
        let seq = self.next_seq();
        self.slots.push_back(Slot {
            remaining: None,
            stuck: false,
            ingestion_time: event.ingestion_time,
            event: Some(event),
            spooled: false,
            ack,
        });
        seq
    }

    /// Admits an event read from the spool under its sequence number (increasing; numbers
    /// skipped are treated as done). Only its ingestion time is kept: the spool holds the rest,
    /// so an event in flight costs a few words of memory here, not its body.
    pub fn admit_spooled(&mut self, seq: u64, ingestion_time: Option<DateTime<Utc>>) {
        if seq < self.next_seq() {
            return;
        }
        if self.slots.is_empty() {
            self.base = seq;
        }
        self.fill_done_to(seq);
        self.slots.push_back(Slot {
            remaining: None,
            stuck: false,
            event: None,
            spooled: true,
            ingestion_time,
            ack: None,
        });
    }

    /// Treats every sequence number below `seq` not yet admitted as done: records the spool
    /// holds that the pipeline will not process (copies of events that are appended again
    /// after a failed write).
    pub fn skip_to(&mut self, seq: u64) {
        if self.slots.is_empty() && self.base < seq {
            self.base = seq;
            return;
        }
        self.fill_done_to(seq);
    }

    /// Appends slots that are already done up to (not including) `seq`.
    fn fill_done_to(&mut self, seq: u64) {
        while self.next_seq() < seq {
            self.slots.push_back(Slot {
                remaining: Some(0),
                stuck: false,
                event: None,
                spooled: false,
                ingestion_time: None,
                ack: None,
            });
        }
    }

    fn slot(&mut self, seq: u64) -> Option<&mut Slot> {
        let i = usize::try_from(seq.checked_sub(self.base)?).ok()?;
        self.slots.get_mut(i)
    }

    /// Sets the event's remaining measurements, noting when that makes it done.
    fn set_remaining(&mut self, seq: u64, remaining: impl FnOnce(Option<usize>) -> usize) {
        let Some(s) = self.slot(seq) else { return };
        let was_done = s.remaining == Some(0);
        let now = remaining(s.remaining);
        s.remaining = Some(now);
        if now == 0 && !was_done {
            if let Some(t) = s.ingestion_time {
                self.done.push(t);
            }
        }
    }

    /// The event normalized into `measurements` measurements (0: dropped, or dead-lettered).
    pub fn normalized(&mut self, seq: u64, measurements: usize) {
        self.set_remaining(seq, |_| measurements);
    }

    /// `n` of the event's measurements are written (or dead-lettered with the event).
    pub fn written(&mut self, seq: u64, n: usize) {
        // Before normalization there is nothing to count down.
        if self.slot(seq).is_some_and(|s| s.remaining.is_some()) {
            self.set_remaining(seq, |r| r.unwrap_or(0).saturating_sub(n));
        }
    }

    /// The event is done whatever its measurements still pending do (it was dead-lettered).
    pub fn finish(&mut self, seq: u64) {
        self.set_remaining(seq, |_| 0);
    }

    /// The event cannot be made durable now: keep it un-committed (redelivered after a restart).
    pub fn stick(&mut self, seq: u64) {
        if let Some(s) = self.slot(seq) {
            s.stuck = true;
        }
    }

    /// Where the event is, while it is in flight.
    pub fn lookup(&self, seq: u64) -> Lookup {
        let slot = seq
            .checked_sub(self.base)
            .and_then(|i| usize::try_from(i).ok())
            .and_then(|i| self.slots.get(i));
        match slot {
            Some(Slot { event: Some(e), .. }) => Lookup::Held(e.clone()),
            Some(Slot { spooled: true, .. }) => Lookup::Spooled,
            _ => Lookup::Gone,
        }
    }

    /// Advances the watermark past every leading event that is done.
    pub fn commit(&mut self) -> Committed {
        let mut out = Committed::default();
        while let Some(front) = self.slots.front() {
            if front.stuck || front.remaining != Some(0) {
                break;
            }
            if let Some(s) = self.slots.pop_front() {
                if let Some(t) = s.ingestion_time {
                    out.ingestion_times.push(t);
                }
                out.events += 1;
                out.acks.extend(s.ack);
            }
            self.base += 1;
        }
        out.watermark = self.base;
        out.done_ingestion_times = std::mem::take(&mut self.done);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev() -> Arc<Event> {
        Arc::new(Event {
            body: b"{}".to_vec(),
            properties: Map::new(),
            system_properties: Map::new(),
            ingestion_time: Some(Utc::now()),
            origin: "t".into(),
        })
    }

    #[test]
    fn the_watermark_passes_only_events_that_are_done_in_order() {
        let mut l = Ledger::starting_at(10);
        let a = l.admit(ev(), Some(Ack::none()));
        let b = l.admit(ev(), Some(Ack::none()));
        let c = l.admit(ev(), Some(Ack::none()));
        assert_eq!((a, b, c), (10, 11, 12));
        l.normalized(a, 2);
        l.normalized(b, 0); // matched no template
        l.normalized(c, 1);
        l.written(c, 1);
        let done = l.commit();
        assert_eq!(
            (done.watermark, done.acks.len()),
            (10, 0),
            "a still pending"
        );
        // b and c are done (written) though not committed: their latency counts now.
        assert_eq!(
            (done.ingestion_times.len(), done.done_ingestion_times.len()),
            (0, 2)
        );
        l.written(a, 1);
        let done = l.commit();
        assert_eq!((done.watermark, done.done_ingestion_times.len()), (10, 0));
        l.written(a, 1);
        let done = l.commit();
        assert_eq!((done.watermark, done.acks.len()), (13, 3));
        assert_eq!(
            (done.ingestion_times.len(), done.done_ingestion_times.len()),
            (3, 1),
            "all three committed; a became done now, once"
        );
        assert_eq!(l.in_flight(), 0);
        // Late updates for committed events are ignored.
        l.written(a, 1);
        l.finish(b);
        assert_eq!(l.commit().watermark, 13);
    }

    #[test]
    fn unnormalized_and_stuck_events_hold_the_watermark() {
        let mut l = Ledger::starting_at(0);
        let a = l.admit(ev(), None);
        let b = l.admit(ev(), None);
        l.normalized(b, 0);
        assert_eq!(l.commit().watermark, 0, "a is not normalized yet");
        l.normalized(a, 0);
        l.stick(a);
        assert_eq!(l.commit().watermark, 0, "a could not be made durable");
        assert!(matches!(l.lookup(a), Lookup::Held(_)));
    }

    #[test]
    fn spooled_events_are_found_in_the_spool_and_keep_their_ingestion_time() {
        let mut l = Ledger::starting_at(0);
        let t = Utc::now();
        l.admit_spooled(3, Some(t));
        assert!(matches!(l.lookup(3), Lookup::Spooled));
        assert!(matches!(l.lookup(2), Lookup::Gone), "skipped: done before");
        l.normalized(3, 0);
        let done = l.commit();
        assert_eq!((done.watermark, done.ingestion_times), (4, vec![t]));
        assert!(matches!(l.lookup(3), Lookup::Gone));
    }

    #[test]
    fn replayed_sequence_numbers_may_skip() {
        let mut l = Ledger::starting_at(0);
        l.admit_spooled(5, None);
        l.admit_spooled(8, None);
        assert_eq!(l.next_seq(), 9);
        l.finish(5);
        assert_eq!(
            l.commit().watermark,
            8,
            "6 and 7 were committed before the restart"
        );
        l.finish(8);
        assert_eq!(l.commit().watermark, 9);
    }
}
