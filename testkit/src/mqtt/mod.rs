//! MQTT for the tests: a real Mosquitto broker ([`Mosquitto`], with a private CA for TLS:
//! [`TestCa`]) and the publishers that feed it ([`publish`] with `rumqttc`; `mosquitto_pub` for
//! TLS and passwords).

mod mosquitto;
mod publish;

pub use mosquitto::{Mosquitto, TestCa};
pub use publish::{mosquitto_pub, publish};
