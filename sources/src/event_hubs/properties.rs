//! AMQP → JSON: an event's body bytes, application properties and system properties.

use std::time::SystemTime;

use azure_core_amqp::message::{AmqpAnnotationKey, AmqpMessageBody, AmqpMessageId};
use azure_core_amqp::AmqpSimpleValue;
use azure_messaging_eventhubs::models::{AmqpValue, ReceivedEventData};
use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Map, Value};

fn timestamp_json(t: Option<SystemTime>) -> Value {
    match t {
        Some(t) => {
            Value::String(DateTime::<Utc>::from(t).to_rfc3339_opts(SecondsFormat::Millis, true))
        }
        None => Value::Null,
    }
}

fn simple_json(v: &AmqpSimpleValue) -> Value {
    use AmqpSimpleValue as S;
    match v {
        S::Null => Value::Null,
        S::Boolean(b) => Value::Bool(*b),
        S::UByte(n) => Value::from(*n),
        S::Byte(n) => Value::from(*n),
        S::UShort(n) => Value::from(*n),
        S::Short(n) => Value::from(*n),
        S::UInt(n) => Value::from(*n),
        S::Int(n) => Value::from(*n),
        S::ULong(n) => Value::from(*n),
        S::Long(n) => Value::from(*n),
        S::Float(f) => Value::from(*f as f64),
        S::Double(f) => Value::from(*f),
        S::Char(c) => Value::String(c.to_string()),
        S::TimeStamp(t) => timestamp_json(t.0),
        S::Uuid(u) => Value::String(u.to_string()),
        S::String(s) => Value::String(s.clone()),
        S::Symbol(s) => Value::String(s.0.clone()),
        S::Binary(b) => Value::String(String::from_utf8_lossy(b).into_owned()),
        other => Value::String(format!("{other:?}")),
    }
}

fn value_json(v: &AmqpValue) -> Value {
    use AmqpValue as A;
    match v {
        A::Null => Value::Null,
        A::Boolean(b) => Value::Bool(*b),
        A::UByte(n) => Value::from(*n),
        A::Byte(n) => Value::from(*n),
        A::UShort(n) => Value::from(*n),
        A::Short(n) => Value::from(*n),
        A::UInt(n) => Value::from(*n),
        A::Int(n) => Value::from(*n),
        A::ULong(n) => Value::from(*n),
        A::Long(n) => Value::from(*n),
        A::Float(f) => Value::from(*f as f64),
        A::Double(f) => Value::from(*f),
        A::Char(c) => Value::String(c.to_string()),
        A::TimeStamp(t) => timestamp_json(t.0),
        A::Uuid(u) => Value::String(u.to_string()),
        A::String(s) => Value::String(s.clone()),
        A::Symbol(s) => Value::String(s.0.clone()),
        A::Binary(b) => Value::String(String::from_utf8_lossy(b).into_owned()),
        A::List(l) => Value::Array(l.0.iter().map(value_json).collect()),
        A::Array(l) => Value::Array(l.iter().map(value_json).collect()),
        A::Map(m) => {
            let mut out = Map::new();
            for (k, v) in m.iter() {
                let key = match value_json(k) {
                    Value::String(s) => s,
                    other => other.to_string(),
                };
                out.insert(key, value_json(v));
            }
            Value::Object(out)
        }
        other => Value::String(format!("{other:?}")),
    }
}

fn message_id_json(id: &AmqpMessageId) -> Value {
    match id {
        AmqpMessageId::String(s) => Value::String(s.clone()),
        AmqpMessageId::Uuid(u) => Value::String(u.to_string()),
        AmqpMessageId::Binary(b) => Value::String(String::from_utf8_lossy(b).into_owned()),
        AmqpMessageId::Ulong(n) => Value::from(*n),
    }
}

/// The body bytes: the data section(s), or a string/binary AMQP value.
pub(super) fn body_bytes(event: &ReceivedEventData) -> Vec<u8> {
    if let Some(b) = event.event_data().body() {
        return b.to_vec();
    }
    match &event.raw_amqp_message().body {
        AmqpMessageBody::Binary(parts) => parts.concat(),
        AmqpMessageBody::Value(AmqpValue::String(s)) => s.clone().into_bytes(),
        AmqpMessageBody::Value(AmqpValue::Binary(b)) => b.clone(),
        AmqpMessageBody::Value(v) => value_json(v).to_string().into_bytes(),
        _ => Vec::new(),
    }
}

/// Application properties of an event, as JSON.
pub fn application_properties(event: &ReceivedEventData) -> Map<String, Value> {
    event
        .event_data()
        .properties()
        .map(|p| p.iter().map(|(k, v)| (k.clone(), simple_json(v))).collect())
        .unwrap_or_default()
}

/// System properties of an event, as JSON: every message annotation, the AMQP properties and
/// the partition id.
pub fn system_properties(event: &ReceivedEventData, partition_id: &str) -> Map<String, Value> {
    let mut m = Map::new();
    let message = event.raw_amqp_message();
    if let Some(annotations) = &message.message_annotations {
        for (k, v) in annotations.0.iter() {
            let key = match k {
                AmqpAnnotationKey::Symbol(s) => s.0.clone(),
                AmqpAnnotationKey::Ulong(n) => n.to_string(),
            };
            m.insert(key, value_json(v));
        }
    }
    if let Some(p) = &message.properties {
        let mut put = |k: &str, v: Value| {
            if !v.is_null() {
                m.insert(k.to_string(), v);
            }
        };
        if let Some(id) = &p.message_id {
            put("message-id", message_id_json(id));
        }
        if let Some(id) = &p.correlation_id {
            put("correlation-id", message_id_json(id));
        }
        if let Some(u) = &p.user_id {
            put(
                "user-id",
                Value::String(String::from_utf8_lossy(u).into_owned()),
            );
        }
        if let Some(s) = &p.to {
            put("to", Value::String(s.clone()));
        }
        if let Some(s) = &p.subject {
            put("subject", Value::String(s.clone()));
        }
        if let Some(s) = &p.reply_to {
            put("reply-to", Value::String(s.clone()));
        }
        if let Some(s) = &p.content_type {
            put("content-type", Value::String(s.0.clone()));
        }
        if let Some(s) = &p.content_encoding {
            put("content-encoding", Value::String(s.0.clone()));
        }
        if let Some(t) = &p.absolute_expiry_time {
            put("absolute-expiry-time", timestamp_json(t.0));
        }
        if let Some(t) = &p.creation_time {
            put("creation-time", timestamp_json(t.0));
        }
    }
    m.insert(
        "eventhubs-partition-id".into(),
        Value::String(partition_id.to_string()),
    );
    m
}
