//! Device simulators: N devices of different kinds (heart rate, SpO2, blood pressure, body
//! temperature, glucose, steps, weight scale, and an ECG-like 250 Hz waveform sent in one-second
//! chunks) producing realistic values with drift, rendered through handlebars payload shapes
//! (plain JSON, IoT Hub, IoT Central export, arrays of readings — or your own template), with
//! injected faults (malformed JSON, missing fields, duplicates, out-of-order, clock skew).
//! Deterministic for a seed: the same configuration gives the same events, byte for byte.
//!
//! ```
//! use simulators::{Simulator, SimConfig, Kind};
//! let config = SimConfig { devices: 2, kinds: vec![Kind::HeartRate], readings: 3, ..SimConfig::default() };
//! let a: Vec<_> = Simulator::new(config.clone()).unwrap().collect();
//! let b: Vec<_> = Simulator::new(config).unwrap().collect();
//! assert_eq!(a.len(), 6);
//! assert_eq!(a, b);
//! ```

#![deny(missing_docs)]

use std::collections::BTreeMap;
use std::fmt::Write;

use chrono::{DateTime, Duration, SecondsFormat, TimeZone, Utc};
use handlebars::{Context, Handlebars, Helper, HelperResult, Output, RenderContext};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use serde_json::{json, Map, Value};

/// A device kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// Heart rate, beats per minute.
    HeartRate,
    /// Oxygen saturation, percent.
    Spo2,
    /// Blood pressure, systolic/diastolic mmHg.
    BloodPressure,
    /// Body temperature, °C.
    BodyTemperature,
    /// Blood glucose, mg/dL.
    Glucose,
    /// Step count per interval.
    Steps,
    /// Body weight, kg.
    WeightScale,
    /// ECG lead, mV at 250 Hz, one-second chunks.
    Ecg,
}

impl Kind {
    /// Every kind.
    pub const ALL: [Kind; 8] = [
        Kind::HeartRate,
        Kind::Spo2,
        Kind::BloodPressure,
        Kind::BodyTemperature,
        Kind::Glucose,
        Kind::Steps,
        Kind::WeightScale,
        Kind::Ecg,
    ];

    /// The name used on the command line and in device ids.
    pub fn name(self) -> &'static str {
        match self {
            Kind::HeartRate => "heart-rate",
            Kind::Spo2 => "spo2",
            Kind::BloodPressure => "blood-pressure",
            Kind::BodyTemperature => "body-temperature",
            Kind::Glucose => "glucose",
            Kind::Steps => "steps",
            Kind::WeightScale => "weight-scale",
            Kind::Ecg => "ecg",
        }
    }

    /// Parses a kind name.
    pub fn parse(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.name() == s)
    }

    /// Seconds between readings (ECG: between one-second chunks).
    pub fn interval_secs(self) -> i64 {
        match self {
            Kind::HeartRate => 5,
            Kind::Spo2 => 10,
            Kind::BloodPressure => 300,
            Kind::BodyTemperature => 60,
            Kind::Glucose => 300,
            Kind::Steps => 60,
            Kind::WeightScale => 3600,
            Kind::Ecg => 1,
        }
    }
}

/// A built-in payload shape, or a custom handlebars template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Shape {
    /// One reading per message, plain JSON.
    Plain,
    /// IoT Hub message (device id and time in IoT Hub properties).
    IotHub,
    /// IoT Central data export.
    IotCentral,
    /// Several readings per message (`readings` per message).
    Array(usize),
    /// A custom handlebars template (text).
    Custom(String),
}

impl Shape {
    /// Parses `plain`, `iothub`, `iotcentral`, `array` / `array:N`.
    pub fn parse(s: &str) -> Option<Shape> {
        match s {
            "plain" => Some(Shape::Plain),
            "iothub" => Some(Shape::IotHub),
            "iotcentral" => Some(Shape::IotCentral),
            "array" => Some(Shape::Array(10)),
            _ => s
                .strip_prefix("array:")
                .and_then(|n| n.parse().ok())
                .filter(|n| *n > 0)
                .map(Shape::Array),
        }
    }

    fn template(&self) -> &str {
        match self {
            Shape::Plain => include_str!("../shapes/plain.hbs"),
            Shape::IotHub => include_str!("../shapes/iothub.hbs"),
            Shape::IotCentral => include_str!("../shapes/iotcentral.hbs"),
            Shape::Array(_) => include_str!("../shapes/array.hbs"),
            Shape::Custom(t) => t,
        }
    }
}

/// Fault rates, in percent of messages.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Faults {
    /// Truncated, unparsable JSON.
    pub malformed: f64,
    /// A required field (the reading's time) removed.
    pub missing_fields: f64,
    /// The same message sent twice.
    pub duplicates: f64,
    /// A message held back and sent after the next one.
    pub out_of_order: f64,
    /// The device clock off by minutes.
    pub clock_skew: f64,
}

impl Faults {
    /// Parses `malformed=1,missing=2,duplicate=1,out-of-order=1,skew=1` (percentages).
    pub fn parse(s: &str) -> Result<Faults, String> {
        let mut f = Faults::default();
        for part in s.split(',').filter(|p| !p.trim().is_empty()) {
            let (k, v) = part
                .split_once('=')
                .ok_or_else(|| format!("fault {part:?}: expected name=percent"))?;
            let v: f64 = v
                .trim()
                .trim_end_matches('%')
                .parse()
                .map_err(|_| format!("fault {part:?}: not a number"))?;
            if !(0.0..=100.0).contains(&v) {
                return Err(format!("fault {part:?}: a percentage is 0 to 100"));
            }
            match k.trim() {
                "malformed" => f.malformed = v,
                "missing" | "missing-fields" => f.missing_fields = v,
                "duplicate" | "duplicates" => f.duplicates = v,
                "out-of-order" => f.out_of_order = v,
                "skew" | "clock-skew" => f.clock_skew = v,
                other => {
                    return Err(format!(
                    "unknown fault {other:?}: malformed, missing, duplicate, out-of-order, skew"
                ))
                }
            }
        }
        Ok(f)
    }
}

/// What to simulate.
#[derive(Debug, Clone, PartialEq)]
pub struct SimConfig {
    /// Number of devices (kinds are assigned round-robin); each has its own patient.
    pub devices: usize,
    /// Device kinds.
    pub kinds: Vec<Kind>,
    /// Readings per device.
    pub readings: usize,
    /// Simulated start time.
    pub start: DateTime<Utc>,
    /// Seconds between readings; `None`: each kind's natural interval.
    pub interval_secs: Option<i64>,
    /// Payload shape.
    pub shape: Shape,
    /// Fault rates.
    pub faults: Faults,
    /// Random seed.
    pub seed: u64,
    /// Device id prefix.
    pub prefix: String,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            devices: 1,
            kinds: Kind::ALL.to_vec(),
            readings: 10,
            start: Utc
                .with_ymd_and_hms(2026, 1, 1, 8, 0, 0)
                .single()
                .unwrap_or_default(),
            interval_secs: None,
            shape: Shape::Plain,
            faults: Faults::default(),
            seed: 1,
            prefix: "sim".into(),
        }
    }
}

/// Why a simulation cannot start.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// The payload template does not compile.
    #[error("payload template: {0}")]
    Template(String),
    /// The configuration is unusable.
    #[error("{0}")]
    Config(String),
}

/// One simulated event, in the events-file format (`body`, `properties`, `systemProperties`).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SimEvent {
    /// The MQTT topic to publish on (`devices/<deviceId>/telemetry`).
    #[serde(skip)]
    pub topic: String,
    /// The body bytes as sent (may be malformed on purpose).
    #[serde(skip)]
    pub body: Vec<u8>,
    /// The body as JSON when it is valid (for the events file).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body_json: Option<Value>,
    /// The raw body when it is not valid JSON.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body_text: Option<String>,
    /// Application properties.
    #[serde(skip_serializing_if = "Map::is_empty")]
    pub properties: Map<String, Value>,
    /// System properties.
    #[serde(skip_serializing_if = "Map::is_empty")]
    pub system_properties: Map<String, Value>,
    /// The fault injected, if any (not part of the event).
    #[serde(skip)]
    pub fault: Option<&'static str>,
    /// Simulated send time.
    #[serde(skip)]
    pub time: DateTime<Utc>,
}

impl SimEvent {
    /// The event as an events-file entry (`{"body"|"bodyText", "properties", "systemProperties"}`).
    pub fn to_events_entry(&self) -> Value {
        let mut m = Map::new();
        match (&self.body_json, &self.body_text) {
            (Some(b), _) => {
                m.insert("body".into(), b.clone());
            }
            (None, Some(t)) => {
                m.insert("bodyText".into(), Value::String(t.clone()));
            }
            _ => {}
        }
        if !self.properties.is_empty() {
            m.insert("properties".into(), Value::Object(self.properties.clone()));
        }
        if !self.system_properties.is_empty() {
            m.insert(
                "systemProperties".into(),
                Value::Object(self.system_properties.clone()),
            );
        }
        Value::Object(m)
    }
}

struct Device {
    id: String,
    patient: String,
    kind: Kind,
    /// Slowly drifting baseline(s).
    base: [f64; 2],
    seq: u64,
    steps_phase: f64,
}

/// The simulator: an iterator of events in simulated-time order.
pub struct Simulator {
    config: SimConfig,
    rng: ChaCha8Rng,
    hb: Handlebars<'static>,
    devices: Vec<Device>,
    /// (next time, device index, readings left)
    schedule: Vec<(DateTime<Utc>, usize, usize)>,
    held: Option<SimEvent>,
    pending: std::collections::VecDeque<SimEvent>,
}

fn iso(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn helper_time(
    h: &Helper<'_>,
    _: &Handlebars<'_>,
    ctx: &Context,
    _: &mut RenderContext<'_, '_>,
    out: &mut dyn Output,
) -> HelperResult {
    let t = ctx
        .data()
        .get("timeMs")
        .and_then(Value::as_i64)
        .unwrap_or(0);
    let dt = Utc.timestamp_millis_opt(t).single().unwrap_or_default();
    let fmt = h.param(0).and_then(|p| p.value().as_str()).unwrap_or("iso");
    let s = match fmt {
        "unix" => (t / 1000).to_string(),
        "unixms" => t.to_string(),
        "offset" => chrono::FixedOffset::east_opt(3600)
            .map(|o| dt.with_timezone(&o).to_rfc3339())
            .unwrap_or_else(|| iso(dt)),
        _ => iso(dt),
    };
    out.write(&s)?;
    Ok(())
}

fn helper_value(
    h: &Helper<'_>,
    _: &Handlebars<'_>,
    ctx: &Context,
    _: &mut RenderContext<'_, '_>,
    out: &mut dyn Output,
) -> HelperResult {
    let name = h.param(0).and_then(|p| p.value().as_str()).unwrap_or("");
    let v = ctx
        .data()
        .get("values")
        .and_then(|v| v.get(name))
        .cloned()
        .unwrap_or(Value::Null);
    out.write(&v.to_string())?;
    Ok(())
}

fn helper_json(
    h: &Helper<'_>,
    _: &Handlebars<'_>,
    _: &Context,
    _: &mut RenderContext<'_, '_>,
    out: &mut dyn Output,
) -> HelperResult {
    let v = h.param(0).map(|p| p.value().clone()).unwrap_or(Value::Null);
    out.write(&v.to_string())?;
    Ok(())
}

impl Simulator {
    /// A simulator for `config`.
    pub fn new(config: SimConfig) -> Result<Simulator, SimError> {
        if config.kinds.is_empty() {
            return Err(SimError::Config("no device kinds".into()));
        }
        let mut hb = Handlebars::new();
        hb.set_strict_mode(false);
        hb.register_escape_fn(handlebars::no_escape);
        hb.register_helper("time", Box::new(helper_time));
        hb.register_helper("value", Box::new(helper_value));
        hb.register_helper("json", Box::new(helper_json));
        hb.register_template_string("shape", config.shape.template())
            .map_err(|e| SimError::Template(e.to_string()))?;
        let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
        let mut devices = Vec::new();
        let mut schedule = Vec::new();
        for i in 0..config.devices {
            let kind = config.kinds[i % config.kinds.len()];
            let base = match kind {
                Kind::HeartRate => [rng.random_range(62.0..85.0), 0.0],
                Kind::Spo2 => [rng.random_range(95.0..98.5), 0.0],
                Kind::BloodPressure => {
                    [rng.random_range(112.0..138.0), rng.random_range(70.0..88.0)]
                }
                Kind::BodyTemperature => [rng.random_range(36.4..37.2), 0.0],
                Kind::Glucose => [rng.random_range(85.0..140.0), 0.0],
                Kind::Steps => [rng.random_range(20.0..90.0), 0.0],
                Kind::WeightScale => [rng.random_range(55.0..98.0), 0.0],
                Kind::Ecg => [rng.random_range(60.0..80.0), 0.0],
            };
            devices.push(Device {
                id: format!("{}-{}-{:03}", config.prefix, kind.name(), i + 1),
                patient: format!("patient-{:03}", i + 1),
                kind,
                base,
                seq: 0,
                steps_phase: rng.random_range(0.0..std::f64::consts::TAU),
            });
            // Stagger devices within their first interval.
            let interval = config.interval_secs.unwrap_or(kind.interval_secs()).max(1);
            let offset = Duration::milliseconds(rng.random_range(0..interval * 1000));
            schedule.push((config.start + offset, i, config.readings));
        }
        Ok(Simulator {
            config,
            rng,
            hb,
            devices,
            schedule,
            held: None,
            pending: Default::default(),
        })
    }

    fn chance(&mut self, percent: f64) -> bool {
        percent > 0.0 && self.rng.random_range(0.0..100.0) < percent
    }

    /// The value fields of one reading (and the device's drift step).
    fn reading(&mut self, d: usize, t: DateTime<Utc>) -> BTreeMap<String, Value> {
        let noise = |rng: &mut ChaCha8Rng, s: f64| rng.random_range(-s..s);
        let round1 = |x: f64| (x * 10.0).round() / 10.0;
        let mut v = BTreeMap::new();
        let kind = self.devices[d].kind;
        let mut base = self.devices[d].base;
        let rng = &mut self.rng;
        match kind {
            Kind::HeartRate => {
                base[0] = (base[0] + noise(rng, 0.6)).clamp(50.0, 130.0);
                v.insert(
                    "heartRate".into(),
                    json!((base[0] + noise(rng, 2.0)).round() as i64),
                );
            }
            Kind::Spo2 => {
                base[0] = (base[0] + noise(rng, 0.2)).clamp(90.0, 99.5);
                v.insert(
                    "spo2".into(),
                    json!((base[0] + noise(rng, 0.8)).clamp(85.0, 100.0).round() as i64),
                );
            }
            Kind::BloodPressure => {
                base[0] = (base[0] + noise(rng, 1.5)).clamp(95.0, 170.0);
                base[1] = (base[1] + noise(rng, 1.0)).clamp(55.0, 105.0);
                v.insert(
                    "systolic".into(),
                    json!((base[0] + noise(rng, 4.0)).round() as i64),
                );
                v.insert(
                    "diastolic".into(),
                    json!((base[1] + noise(rng, 3.0)).round() as i64),
                );
            }
            Kind::BodyTemperature => {
                base[0] = (base[0] + noise(rng, 0.05)).clamp(35.8, 39.5);
                v.insert(
                    "bodyTemperature".into(),
                    json!(round1(base[0] + noise(rng, 0.1))),
                );
            }
            Kind::Glucose => {
                base[0] = (base[0] + noise(rng, 4.0)).clamp(60.0, 250.0);
                v.insert(
                    "bloodGlucose".into(),
                    json!((base[0] + noise(rng, 3.0)).round() as i64),
                );
            }
            Kind::Steps => {
                let phase = self.devices[d].steps_phase + t.timestamp() as f64 / 3600.0;
                let activity = (phase.sin() + 1.0) / 2.0;
                v.insert(
                    "steps".into(),
                    json!((base[0] * activity + noise(rng, 5.0)).max(0.0).round() as i64),
                );
            }
            Kind::WeightScale => {
                base[0] = (base[0] + noise(rng, 0.05)).clamp(40.0, 160.0);
                v.insert(
                    "bodyWeight".into(),
                    json!(round1(base[0] + noise(rng, 0.2))),
                );
            }
            Kind::Ecg => {
                // A PQRST-like beat at the device's heart rate, 250 samples per second.
                let hr = base[0];
                let beat = 60.0 / hr;
                let mut samples = Vec::with_capacity(250);
                for i in 0..250 {
                    let ts = t + Duration::milliseconds(i * 4);
                    let x = (ts.timestamp_millis() as f64 / 1000.0) % beat / beat;
                    let g = |c: f64, w: f64, a: f64| a * (-((x - c) / w).powi(2)).exp();
                    let mv = g(0.2, 0.04, 0.12) - g(0.34, 0.012, 0.1) + g(0.36, 0.012, 1.1)
                        - g(0.38, 0.012, 0.25)
                        + g(0.6, 0.06, 0.3)
                        + noise(rng, 0.01);
                    samples.push(json!({"t": iso(ts), "mv": (mv * 1000.0).round() / 1000.0}));
                }
                v.insert(
                    "chunkId".into(),
                    json!(format!("{}-{}", self.devices[d].id, t.timestamp())),
                );
                v.insert("samples".into(), Value::Array(samples));
            }
        }
        self.devices[d].base = base;
        v
    }

    fn fields(values: &BTreeMap<String, Value>) -> String {
        let mut s = String::new();
        for (i, (k, v)) in values.iter().enumerate() {
            if i > 0 {
                s.push_str(", ");
            }
            let _ = write!(s, "{}: {}", Value::String(k.clone()), v);
        }
        s
    }

    fn render(
        &mut self,
        d: usize,
        readings: Vec<(DateTime<Utc>, u64, BTreeMap<String, Value>)>,
    ) -> SimEvent {
        let dev = &self.devices[d];
        let (t0, seq0, values0) = readings[0].clone();
        let list: Vec<Value> = readings
            .iter()
            .map(|(t, seq, v)| json!({"time": iso(*t), "timeMs": t.timestamp_millis(), "seq": seq, "fields": Self::fields(v), "values": v}))
            .collect();
        let ctx = json!({
            "deviceId": dev.id,
            "patientId": dev.patient,
            "kind": dev.kind.name(),
            "seq": seq0,
            "time": iso(t0),
            "timeMs": t0.timestamp_millis(),
            "values": values0,
            "fields": Self::fields(&values0),
            "readings": list,
        });
        let topic = format!("devices/{}/telemetry", dev.id);
        let rendered = self.hb.render("shape", &ctx).unwrap_or_else(|e| {
            format!(
                "{{\"bodyText\": {}}}",
                Value::String(format!("template error: {e}"))
            )
        });
        let (body_json, properties, system_properties) =
            match serde_json::from_str::<Value>(&rendered) {
                Ok(Value::Object(mut o)) => {
                    let take = |o: &mut Map<String, Value>, k: &str| match o.remove(k) {
                        Some(Value::Object(m)) => m,
                        _ => Map::new(),
                    };
                    let p = take(&mut o, "properties");
                    let sp = take(&mut o, "systemProperties");
                    (o.remove("body"), p, sp)
                }
                _ => (
                    Some(Value::String(rendered.clone())),
                    Map::new(),
                    Map::new(),
                ),
            };
        let body_json = body_json.unwrap_or(Value::Null);
        SimEvent {
            topic,
            body: serde_json::to_vec(&body_json).unwrap_or_default(),
            body_json: Some(body_json),
            body_text: None,
            properties,
            system_properties,
            fault: None,
            time: t0,
        }
    }

    fn inject(&mut self, mut ev: SimEvent) -> Vec<SimEvent> {
        let f = self.config.faults;
        if self.chance(f.malformed) {
            let text = String::from_utf8_lossy(&ev.body).into_owned();
            let cut: String = text.chars().take(text.chars().count() / 2).collect();
            ev.body = cut.clone().into_bytes();
            ev.body_json = None;
            ev.body_text = Some(cut);
            ev.fault = Some("malformed");
            return vec![ev];
        }
        if self.chance(f.missing_fields) {
            // The reading's time goes missing (a firmware bug): the template matches, the
            // required timestamp is absent — whatever the transport adds.
            if let Some(b) = &mut ev.body_json {
                strip_times(b);
            }
            ev.properties.remove("iothub-creation-time-utc");
            ev.system_properties.remove("iothub-enqueuedtime");
            ev.body = serde_json::to_vec(&ev.body_json).unwrap_or_default();
            ev.fault = Some("missing-field");
            return vec![ev];
        }
        if self.chance(f.clock_skew) {
            let skew = Duration::minutes(self.rng.random_range(-30..30).max(1));
            if let Some(b) = &mut ev.body_json {
                shift_times(b, skew);
                ev.body = serde_json::to_vec(b).unwrap_or_default();
                ev.fault = Some("clock-skew");
            }
        }
        if self.chance(f.duplicates) {
            let mut dup = ev.clone();
            dup.fault = Some("duplicate");
            return vec![ev, dup];
        }
        vec![ev]
    }
}

fn strip_times(v: &mut Value) {
    match v {
        Value::Object(m) => {
            for k in ["endDate", "enqueuedTime", "t"] {
                m.remove(k);
            }
            m.values_mut().for_each(strip_times);
        }
        Value::Array(a) => a.iter_mut().for_each(strip_times),
        _ => {}
    }
}

fn shift_times(v: &mut Value, by: Duration) {
    match v {
        Value::Object(m) => {
            for (k, x) in m.iter_mut() {
                if matches!(k.as_str(), "endDate" | "enqueuedTime" | "t") {
                    if let Some(t) = x
                        .as_str()
                        .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
                    {
                        *x = Value::String(iso(t.with_timezone(&Utc) + by));
                    }
                } else {
                    shift_times(x, by);
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(|x| shift_times(x, by)),
        _ => {}
    }
}

impl Iterator for Simulator {
    type Item = SimEvent;

    fn next(&mut self) -> Option<SimEvent> {
        loop {
            if let Some(e) = self.pending.pop_front() {
                return Some(e);
            }
            // The device due next (ties: lowest index), deterministic.
            let Some((pos, _)) = self
                .schedule
                .iter()
                .enumerate()
                .filter(|(_, s)| s.2 > 0)
                .min_by_key(|(_, s)| (s.0, s.1))
            else {
                return self.held.take();
            };
            let (t, d, left) = self.schedule[pos];
            let kind = self.devices[d].kind;
            let interval = Duration::seconds(
                self.config
                    .interval_secs
                    .unwrap_or(kind.interval_secs())
                    .max(1),
            );
            let per_message = match self.config.shape {
                Shape::Array(n) => n.min(left),
                _ => 1,
            };
            let mut readings = Vec::new();
            let mut tt = t;
            for _ in 0..per_message {
                let seq = self.devices[d].seq;
                self.devices[d].seq += 1;
                let values = self.reading(d, tt);
                readings.push((tt, seq, values));
                tt += interval;
            }
            self.schedule[pos] = (tt, d, left - per_message);
            let ev = self.render(d, readings);
            let mut out = self.inject(ev);
            let ooo = self.config.faults.out_of_order;
            if self.chance(ooo) && self.held.is_none() && out[0].fault.is_none() {
                // Hold this one back: it is sent after the next event.
                let mut first = out.remove(0);
                first.fault = Some("out-of-order");
                self.held = Some(first);
                self.pending.extend(out);
                continue;
            }
            self.pending.extend(out);
            if let Some(h) = self.held.take() {
                self.pending.push_back(h);
            }
        }
    }
}
