//! The events file of the CLI: a JSON array of
//! `{"body": <json>} | {"bodyText": "<raw>"}` with optional `properties` and
//! `systemProperties` objects.

use anyhow::{bail, Context, Result};
use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

/// One event as a source delivers it.
#[derive(Debug, Clone, Default)]
pub struct Event {
    /// The raw body bytes.
    pub body: Vec<u8>,
    /// Application properties.
    pub properties: Map<String, Value>,
    /// System properties (IoT Hub, broker).
    pub system_properties: Map<String, Value>,
}

impl Event {
    /// The enqueued time carried by the system properties, if any.
    pub fn ingestion_time(&self) -> Option<DateTime<Utc>> {
        ["iothub-enqueuedtime", "x-opt-enqueued-time", "enqueuedTime"]
            .iter()
            .find_map(|k| self.system_properties.get(*k)?.as_str())
            .and_then(normalizer::value::parse_timestamp)
    }
}

/// Reads an events file.
pub fn read_events(path: &std::path::Path) -> Result<Vec<Event>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    let items: Vec<Value> = serde_json::from_str(text).with_context(|| {
        format!(
            "{}: an events file is a JSON array of events",
            path.display()
        )
    })?;
    items
        .into_iter()
        .enumerate()
        .map(|(i, item)| {
            parse_event(item).with_context(|| format!("{}: event {i}", path.display()))
        })
        .collect()
}

fn parse_event(item: Value) -> Result<Event> {
    let Value::Object(mut o) = item else {
        bail!("expected an object {{\"body\" | \"bodyText\", \"properties\"?, \"systemProperties\"?}}");
    };
    let body = match (o.remove("body"), o.remove("bodyText")) {
        (Some(b), None) => serde_json::to_vec(&b)?,
        (None, Some(Value::String(t))) => t.into_bytes(),
        (None, Some(_)) => bail!("\"bodyText\" must be a string"),
        (Some(_), Some(_)) => bail!("give either \"body\" or \"bodyText\", not both"),
        (None, None) => bail!("missing \"body\" or \"bodyText\""),
    };
    let mut take_map = |k: &str| -> Result<Map<String, Value>> {
        match o.remove(k) {
            None | Some(Value::Null) => Ok(Map::new()),
            Some(Value::Object(m)) => Ok(m),
            Some(_) => bail!("\"{k}\" must be an object"),
        }
    };
    let properties = take_map("properties")?;
    let system_properties = take_map("systemProperties")?;
    if let Some(k) = o.keys().next() {
        bail!("unknown member \"{k}\"");
    }
    Ok(Event {
        body,
        properties,
        system_properties,
    })
}
