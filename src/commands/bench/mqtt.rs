//! The bench's MQTT clients: the simulator's events held compactly in memory, a QoS 1
//! publisher (paced or as fast as the broker acknowledges), and the bare QoS 1 subscriber of
//! the broker-only phase (manual acks, one ack per message, nothing else).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rumqttc::v5::mqttbytes::v5::Packet;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, EventLoop, MqttOptions};

/// The topic filter the connector and the bare subscriber subscribe to.
pub const FILTER: &str = "devices/+/telemetry";

/// A stall this long (no PUBACK, no message) fails the phase.
const STALL: Duration = Duration::from_secs(60);

/// Every event of a simulation: bodies in one buffer, topics by device.
pub struct Payloads {
    bodies: Vec<u8>,
    ends: Vec<usize>,
    topic_of: Vec<u32>,
    topics: Vec<String>,
}

impl Payloads {
    /// Runs the simulator to its end. Only the body and the topic are kept: the plain payload
    /// shape has no properties.
    pub fn generate(sim: simulators::Simulator) -> Result<Payloads> {
        let mut p = Payloads {
            bodies: Vec::new(),
            ends: Vec::new(),
            topic_of: Vec::new(),
            topics: Vec::new(),
        };
        let mut index: std::collections::HashMap<String, u32> = Default::default();
        for e in sim {
            if !e.properties.is_empty() {
                bail!("the bench publishes bodies only; this payload shape has properties");
            }
            let next = u32::try_from(p.topics.len()).context("too many topics")?;
            let t = *index.entry(e.topic.clone()).or_insert_with(|| {
                p.topics.push(e.topic.clone());
                next
            });
            p.bodies.extend_from_slice(&e.body);
            p.ends.push(p.bodies.len());
            p.topic_of.push(t);
        }
        Ok(p)
    }

    /// Number of events.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// Body bytes of all events.
    pub fn total_bytes(&self) -> usize {
        self.bodies.len()
    }

    /// Event `i`'s body.
    pub fn body(&self, i: usize) -> &[u8] {
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        &self.bodies[start..self.ends[i]]
    }

    /// Event `i`'s topic.
    pub fn topic(&self, i: usize) -> &str {
        &self.topics[self.topic_of[i] as usize]
    }
}

/// What a publish run measured.
#[derive(Debug, Clone, Copy)]
pub struct Published {
    /// Events published and acknowledged by the broker.
    pub events: u64,
    /// When the first PUBLISH was handed to the client.
    pub first: Instant,
    /// When the last PUBACK arrived.
    pub last_ack: Instant,
}

impl Published {
    /// Events per second, first publish to last PUBACK.
    pub fn rate(&self) -> f64 {
        self.events as f64 / (self.last_ack - self.first).as_secs_f64().max(1e-6)
    }
}

fn options(client_id: &str, port: u16, inflight: u16) -> MqttOptions {
    let mut opts = MqttOptions::new(client_id, "127.0.0.1", port);
    opts.set_keep_alive(Duration::from_secs(30));
    opts.set_clean_start(true);
    opts.set_max_packet_size(Some(64 * 1024 * 1024));
    opts.set_outgoing_inflight_upper_limit(inflight);
    opts
}

/// Publishes every event at QoS 1 to `127.0.0.1:port`, `rate` events/s overall (0: as fast as
/// the broker acknowledges), counting PUBACKs into `acked` as they arrive.
pub async fn publish(
    port: u16,
    payloads: Arc<Payloads>,
    rate: f64,
    inflight: u16,
    acked: Arc<AtomicU64>,
) -> Result<Published> {
    let (client, mut eventloop) = AsyncClient::new(
        options("iomt-bench-publisher", port, inflight),
        usize::from(inflight).max(16),
    );
    let n = payloads.len() as u64;
    let first = Arc::new(std::sync::OnceLock::<Instant>::new());
    let sender = {
        let first = first.clone();
        let client = client.clone();
        tokio::spawn(async move {
            let start = Instant::now();
            for i in 0..payloads.len() {
                if rate > 0.0 {
                    let due = start + Duration::from_secs_f64(i as f64 / rate);
                    if due > Instant::now() {
                        tokio::time::sleep_until(due.into()).await;
                    }
                }
                let _ = first.set(Instant::now());
                client
                    .publish(
                        payloads.topic(i).to_string(),
                        QoS::AtLeastOnce,
                        false,
                        payloads.body(i).to_vec(),
                    )
                    .await
                    .context("the MQTT client stopped")?;
            }
            Ok::<(), anyhow::Error>(())
        })
    };
    let mut count = 0u64;
    let mut last_ack = Instant::now();
    while count < n {
        match tokio::time::timeout(STALL, eventloop.poll()).await {
            Ok(Ok(Event::Incoming(Packet::PubAck(_)))) => {
                count += 1;
                last_ack = Instant::now();
                acked.store(count, Ordering::Relaxed);
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => bail!("publisher: MQTT connection failed after {count}/{n} PUBACKs: {e}"),
            Err(_) => bail!(
                "publisher: no PUBACK for {} s ({count}/{n} acknowledged)",
                STALL.as_secs()
            ),
        }
    }
    sender.await.context("publisher task")??;
    disconnect(&client, &mut eventloop).await;
    Ok(Published {
        events: n,
        first: first.get().copied().unwrap_or(last_ack),
        last_ack,
    })
}

async fn disconnect(client: &AsyncClient, eventloop: &mut EventLoop) {
    let _ = client.disconnect().await;
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while eventloop.poll().await.is_ok() {}
    })
    .await;
}

/// The broker-only phase's consumer, connected and subscribed.
pub struct BareSubscriber {
    client: AsyncClient,
    eventloop: EventLoop,
}

impl BareSubscriber {
    /// Connects with a fresh session (clean start) and subscribes at QoS 1; returns once the
    /// broker has answered the SUBSCRIBE.
    pub async fn connect(port: u16, inflight: u16) -> Result<BareSubscriber> {
        let mut opts = options("iomt-bench-bare-subscriber", port, inflight);
        opts.set_manual_acks(true);
        opts.set_receive_maximum(Some(inflight));
        // Room for every ack the broker can have outstanding, so acking never waits.
        let (client, mut eventloop) = AsyncClient::new(opts, usize::from(inflight) + 16);
        client
            .subscribe(FILTER, QoS::AtLeastOnce)
            .await
            .context("bare subscriber: SUBSCRIBE")?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, eventloop.poll()).await {
                Ok(Ok(Event::Incoming(Packet::SubAck(_)))) => break,
                Ok(Ok(_)) => {}
                Ok(Err(e)) => bail!("bare subscriber: MQTT connection failed: {e}"),
                Err(_) => bail!("bare subscriber: no SUBACK within 10 s"),
            }
        }
        Ok(BareSubscriber { client, eventloop })
    }

    /// Receives and acknowledges `n` messages, counting them into `received`; returns when the
    /// last one was acknowledged.
    pub async fn receive(mut self, n: u64, received: Arc<AtomicU64>) -> Result<Instant> {
        let mut count = 0u64;
        let mut last = Instant::now();
        // Acks wait here while the client's request queue is full: awaiting room would stop
        // polling the event loop, which is what drains that queue (a deadlock once the broker
        // sends more than `inflight` at once, as Mosquitto 2.0 does when acks flow).
        let mut unacked: std::collections::VecDeque<rumqttc::v5::mqttbytes::v5::Publish> =
            Default::default();
        while count < n || !unacked.is_empty() {
            while let Some(p) = unacked.front() {
                if self.client.try_ack(p).is_err() {
                    break;
                }
                unacked.pop_front();
            }
            if count >= n {
                // Every message is in; let the event loop send the remaining acks.
                if let Ok(Err(e)) =
                    tokio::time::timeout(Duration::from_millis(10), self.eventloop.poll()).await
                {
                    bail!("bare subscriber: MQTT connection failed while acking: {e}");
                }
                continue;
            }
            match tokio::time::timeout(STALL, self.eventloop.poll()).await {
                Ok(Ok(Event::Incoming(Packet::Publish(p)))) => {
                    unacked.push_back(p);
                    count += 1;
                    last = Instant::now();
                    received.store(count, Ordering::Relaxed);
                }
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    bail!("bare subscriber: MQTT connection failed after {count}/{n}: {e}")
                }
                Err(_) => bail!(
                    "bare subscriber: no message for {} s ({count}/{n} received)",
                    STALL.as_secs()
                ),
            }
        }
        disconnect(&self.client, &mut self.eventloop).await;
        Ok(last)
    }
}
