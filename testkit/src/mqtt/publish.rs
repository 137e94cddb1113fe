//! Publishers: what devices do, through the real broker. [`publish`] is a `rumqttc` client at
//! QoS 1 that waits for every PUBACK; [`mosquitto_pub`] is Mosquitto's own client, one process
//! per message, for TLS with a private CA and for user names and passwords.

use std::process::Command;
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, MqttOptions, Outgoing, Packet, QoS};

use crate::free_port;

/// Publishes `(topic, body)` messages to the broker on loopback `port` at QoS 1, `pace` apart
/// (none when zero), and waits for every PUBACK; panics when the broker stops answering (30 s
/// without an event, 120 s in all).
pub async fn publish(port: u16, messages: Vec<(String, Vec<u8>)>, pace: Duration) {
    let mut opts = MqttOptions::new(format!("publisher-{}", free_port()), "127.0.0.1", port);
    opts.set_max_packet_size(32 * 1024 * 1024, 32 * 1024 * 1024);
    opts.set_keep_alive(Duration::from_secs(30));
    let (client, mut eventloop) = AsyncClient::new(opts, 100);
    let n = messages.len();
    let sender = tokio::spawn(async move {
        for (topic, body) in messages {
            client
                .publish(topic, QoS::AtLeastOnce, false, body)
                .await
                .unwrap();
            if !pace.is_zero() {
                tokio::time::sleep(pace).await;
            }
        }
        client
    });
    let mut acked = 0;
    let deadline = Instant::now() + Duration::from_secs(120);
    while acked < n {
        assert!(
            Instant::now() < deadline,
            "publisher timed out ({acked}/{n} acked)"
        );
        match tokio::time::timeout(Duration::from_secs(30), eventloop.poll()).await {
            Ok(Ok(Event::Incoming(Packet::PubAck(_)))) => acked += 1,
            Ok(Ok(Event::Outgoing(Outgoing::Disconnect))) => break,
            Ok(Ok(_)) => {}
            Ok(Err(e)) => panic!("publisher: {e}"),
            Err(_) => panic!("publisher stalled ({acked}/{n} acked)"),
        }
    }
    let client = sender.await.unwrap();
    let _ = client.disconnect().await;
}

/// Publishes each message with one `mosquitto_pub -q 1` to the broker on loopback `port`,
/// with `options` before the topic: `["--cafile", ca]` for TLS, `["-u", user, "-P", password]`
/// to sign in. Fine for tens of messages; panics when one is not published.
pub fn mosquitto_pub(port: u16, options: &[&str], messages: Vec<(String, Vec<u8>)>) {
    for (topic, body) in messages {
        let status = Command::new("mosquitto_pub")
            .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q", "1"])
            .args(options)
            .args(["-t", &topic, "-m"])
            .arg(String::from_utf8(body).unwrap())
            .status()
            .expect("mosquitto_pub (apt-get install mosquitto-clients)");
        assert!(status.success(), "mosquitto_pub {options:?} -t {topic}");
    }
}
