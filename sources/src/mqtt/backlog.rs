//! The connection loop's local queue: deliveries the broker has sent and the pipeline has not
//! taken yet. Pure (no I/O, no clock), so its rules are tested on their own.
//!
//! The queue exists so that the connection loop never waits for room in the pipeline's channel
//! (waiting there stops the `rumqttc` event loop, and with it pings and PUBACKs; an earlier version
//! deadlocked that way under a broker backlog). It stays small without blocking because of MQTT
//! flow control: the broker has at most its in-flight window of unacknowledged QoS 1 messages out
//! to us (MQTT 5: the Receive Maximum we advertise, which is `inflight`; MQTT 3.1.1: the broker's
//! own setting, Mosquitto's `max_inflight_messages`), and nothing in this queue is acknowledged
//! yet. A broker that sends more breaks that bound (Mosquitto 2.0.11 does: once PUBACKs flow while
//! messages are queued for us, each PUBACK lets up to a whole window more through): the queue then
//! keeps everything anyway (an unacknowledged message must not be lost, and dropping it would leave
//! it with the broker until the next reconnect) and says so once; the broker's own queue is then
//! the bound. QoS 0 messages have no window; beyond the bound they are dropped, which MQTT allows
//! for them (the broker would never deliver them again either).

use std::collections::VecDeque;

/// What [`Backlog::push`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Pushed {
    /// Queued.
    Queued,
    /// Queued, and the queue is past its bound for the first time: the broker sends more
    /// unacknowledged messages than the window allows. Returned once per backlog.
    QueuedBeyondBound,
    /// A QoS 0 message with the queue at its bound: dropped. `total` counts the drops so far.
    DroppedQos0 {
        /// Drops so far, this one included.
        total: u64,
    },
}

/// Deliveries waiting for the pipeline, each tagged with the connection it came on.
#[derive(Debug)]
pub(super) struct Backlog<T> {
    queue: VecDeque<(u64, T)>,
    bound: usize,
    warned: bool,
    dropped_qos0: u64,
}

impl<T> Backlog<T> {
    /// An empty backlog expecting at most `bound` (the in-flight window) entries.
    pub(super) fn new(bound: usize) -> Self {
        Backlog {
            queue: VecDeque::new(),
            bound: bound.max(1),
            warned: false,
            dropped_qos0: 0,
        }
    }

    /// Queues a delivery that arrived on connection `generation`. `acknowledged` is false for
    /// QoS 0 (nothing will acknowledge it, and the broker does not count it in its window).
    pub(super) fn push(&mut self, generation: u64, item: T, acknowledged: bool) -> Pushed {
        if !acknowledged && self.queue.len() >= self.bound {
            self.dropped_qos0 += 1;
            return Pushed::DroppedQos0 {
                total: self.dropped_qos0,
            };
        }
        self.queue.push_back((generation, item));
        if self.queue.len() > self.bound && !self.warned {
            self.warned = true;
            return Pushed::QueuedBeyondBound;
        }
        Pushed::Queued
    }

    /// The oldest delivery (deliveries leave in the order they arrived).
    pub(super) fn pop(&mut self) -> Option<T> {
        self.queue.pop_front().map(|(_, item)| item)
    }

    /// The session was resumed on connection `generation`: the broker sends again every message
    /// it had sent and we had not acknowledged, so the copies from earlier connections are
    /// dropped (kept, they would only be duplicates). Returns how many. When the session was
    /// *not* resumed the broker has forgotten them; then they are kept and delivered.
    pub(super) fn session_resumed(&mut self, generation: u64) -> usize {
        let before = self.queue.len();
        self.queue.retain(|(g, _)| *g >= generation);
        before - self.queue.len()
    }

    /// Drops everything (the source stops delivering; none of it was acknowledged).
    pub(super) fn clear(&mut self) {
        self.queue.clear();
    }

    /// Whether nothing waits.
    pub(super) fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// How many wait.
    pub(super) fn len(&self) -> usize {
        self.queue.len()
    }

    /// The bound: the in-flight window.
    pub(super) fn bound(&self) -> usize {
        self.bound
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deliveries_leave_in_arrival_order() {
        let mut b = Backlog::new(10);
        for i in 0..5 {
            assert_eq!(b.push(0, i, true), Pushed::Queued);
        }
        let out: Vec<_> = std::iter::from_fn(|| b.pop()).collect();
        assert_eq!(out, [0, 1, 2, 3, 4]);
        assert!(b.is_empty());
    }

    #[test]
    fn beyond_the_window_everything_is_kept_and_said_once() {
        let mut b = Backlog::new(3);
        let pushed: Vec<_> = (0..6).map(|i| b.push(0, i, true)).collect();
        assert_eq!(
            pushed,
            [
                Pushed::Queued,
                Pushed::Queued,
                Pushed::Queued,
                Pushed::QueuedBeyondBound,
                Pushed::Queued,
                Pushed::Queued
            ]
        );
        assert_eq!(
            b.len(),
            6,
            "an unacknowledged QoS 1 message is never dropped"
        );
        // Still said only once after the queue went down and up again.
        while b.pop().is_some() {}
        for i in 0..6 {
            assert_eq!(b.push(0, i, true), Pushed::Queued);
        }
    }

    #[test]
    fn qos0_beyond_the_bound_is_dropped_and_counted() {
        let mut b = Backlog::new(2);
        assert_eq!(b.push(0, 'a', false), Pushed::Queued);
        assert_eq!(b.push(0, 'b', true), Pushed::Queued);
        assert_eq!(b.push(0, 'c', false), Pushed::DroppedQos0 { total: 1 });
        assert_eq!(b.push(0, 'd', false), Pushed::DroppedQos0 { total: 2 });
        assert_eq!(b.push(0, 'e', true), Pushed::QueuedBeyondBound);
        b.pop();
        b.pop();
        assert_eq!(b.push(0, 'f', false), Pushed::Queued);
        let out: Vec<_> = std::iter::from_fn(|| b.pop()).collect();
        assert_eq!(out, ['e', 'f']);
    }

    #[test]
    fn a_resumed_session_drops_the_copies_the_broker_sends_again() {
        let mut b = Backlog::new(10);
        b.push(0, "old-1", true);
        b.push(0, "old-2", true);
        b.push(1, "lost-session", true);
        // Connection 2 resumed the session: 0 and 1's messages come again.
        assert_eq!(b.session_resumed(2), 3);
        assert!(b.is_empty());
        b.push(2, "new", true);
        assert_eq!(b.session_resumed(2), 0);
        assert_eq!(b.pop(), Some("new"));
    }
}
