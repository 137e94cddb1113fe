//! Observation construction and merge (the reference's `CodeValueFhirTemplateProcessor`).

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use grouper::{
    format_round_trip, GroupKey, MeasurementGroup, ObservationGroup, PeriodInterval, TimeValue,
};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use crate::error::MappingError;
use crate::sampled::{self, MAX_SLOTS};
use crate::template::{
    CodeValueFhirTemplate, FhirCode, FhirCodeableConcept, FhirValue, FhirValueKind,
};

/// The system of the service coding and of Observation identifiers (the reference's
/// `FhirImportService.ServiceSystem`).
pub const SERVICE_SYSTEM: &str = "https://azure.microsoft.com/en-us/services/iomt-fhir-connector/";

/// Who an Observation is about: the ids that go into its identifier and the references it carries.
#[derive(Debug, Clone, PartialEq)]
pub struct ObservationIdentity {
    /// Patient id used in the identifier value (FHIR logical id once resolved).
    pub patient_id: Option<String>,
    /// Device id used in the identifier value (FHIR logical id once resolved).
    pub device_id: String,
    /// `subject` reference, if any.
    pub subject: Option<Value>,
    /// `device` reference, if any.
    pub device: Option<Value>,
    /// `encounter` reference, if any.
    pub encounter: Option<Value>,
}

impl ObservationIdentity {
    /// Offline identity (no FHIR server): references by identifier
    /// (`{"identifier": {"value": "<patientId>"}}`), identifier value from the measurement ids.
    pub fn logical(key: &GroupKey) -> Self {
        let by_identifier = |v: &str| json!({ "identifier": { "value": v } });
        ObservationIdentity {
            patient_id: key.patient_id.as_deref().map(String::from),
            device_id: key.device_id.to_string(),
            subject: key.patient_id.as_deref().map(by_identifier),
            device: Some(by_identifier(&key.device_id)),
            encounter: key.encounter_id.as_deref().map(by_identifier),
        }
    }

    /// Resolved identity: `Patient/{id}`, `Device/{id}`, `Encounter/{id}` with FHIR logical ids.
    pub fn resolved(patient_id: &str, device_id: &str, encounter_id: Option<&str>) -> Self {
        ObservationIdentity {
            patient_id: Some(patient_id.to_string()),
            device_id: device_id.to_string(),
            subject: Some(json!({ "reference": format!("Patient/{patient_id}") })),
            device: Some(json!({ "reference": format!("Device/{device_id}") })),
            encounter: encounter_id.map(|e| json!({ "reference": format!("Encounter/{e}") })),
        }
    }
}

/// The identifier value `{patientId}.{deviceId}.{typeName}.{segment}`.
pub fn identifier_value<T>(identity: &ObservationIdentity, group: &ObservationGroup<T>) -> String {
    format!(
        "{}.{}.{}.{}",
        identity.patient_id.as_deref().unwrap_or(""),
        identity.device_id,
        group.key.type_name,
        group.id_segment()
    )
}

/// The logical id for an identifier: lowercase hex SHA-256 of `"{system}_{value}"`.
pub fn logical_id(system: &str, value: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut hasher = Sha256::new();
    hasher.update(system.as_bytes());
    hasher.update(b"_");
    hasher.update(value.as_bytes());
    let mut id = String::with_capacity(64);
    for b in hasher.finalize() {
        id.push(HEX[usize::from(b >> 4)] as char);
        id.push(HEX[usize::from(b & 15)] as char);
    }
    id
}

/// Splits a measurement group into the observation groups of `template`.
///
/// SampledData-only templates use the template's `periodInterval`; templates with a Quantity,
/// String or CodeableConcept value get one point-in-time group per reading
/// ([`CodeValueFhirTemplate::is_point_in_time`]). A `periodInterval` of -1 needs a correlation id
/// whatever the value type.
pub fn observation_groups<T: Clone>(
    template: &CodeValueFhirTemplate,
    group: &MeasurementGroup<T>,
) -> Result<Vec<ObservationGroup<T>>, MappingError> {
    let correlation_err = || MappingError::CorrelationIdNotDefined {
        type_name: template.type_name.clone(),
        device_id: group.key.device_id.to_string(),
    };
    if template.period_interval == PeriodInterval::CorrelationId
        && group
            .key
            .correlation_id
            .as_deref()
            .is_none_or(|c| c.trim().is_empty())
    {
        return Err(correlation_err());
    }
    let groups = group
        .observation_groups(template.effective_interval())
        .map_err(|_| correlation_err())?;
    Ok(coalesce_same_identifier(groups))
}

/// Point-in-time windows are identified to the second (`yyyyMMddHHmmssZ`), so readings less than
/// a second apart share one Observation. Their groups are combined into one (window from the
/// first to the last reading; a Quantity/String takes the latest value), so that the batch maps
/// to one deterministic Observation and applying it again changes nothing.
fn coalesce_same_identifier<T>(groups: Vec<ObservationGroup<T>>) -> Vec<ObservationGroup<T>> {
    let mut out: Vec<ObservationGroup<T>> = Vec::with_capacity(groups.len());
    for g in groups {
        match out.last_mut() {
            Some(prev) if prev.id_segment() == g.id_segment() => {
                prev.window.start = prev.window.start.min(g.window.start);
                prev.window.end = prev.window.end.max(g.window.end);
                for (name, values) in g.values {
                    let list = prev.values.entry(name).or_default();
                    for v in values {
                        if !list.iter().any(|x| x.time == v.time) {
                            list.push(v);
                        }
                    }
                    list.sort_by_key(|v| v.time);
                }
                prev.tags.extend(g.tags);
            }
            _ => out.push(g),
        }
    }
    out
}

/// What to do with an Observation.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// No Observation existed: create this one.
    Create(Value),
    /// The existing Observation changed: write this one (status `amended`).
    Update(Value),
    /// Merging changed nothing: no write.
    Unchanged,
}

/// Builds the Observation for `group` (`existing == None`) or merges `group` into `existing`.
pub fn to_observation<T>(
    template: &CodeValueFhirTemplate,
    group: &ObservationGroup<T>,
    identity: &ObservationIdentity,
    issued: Option<DateTime<Utc>>,
    existing: Option<&Value>,
) -> Result<Outcome, MappingError> {
    match existing {
        None => build_observation(template, group, identity, issued).map(Outcome::Create),
        Some(existing) => {
            let merged = merge_observation(template, group, existing)?;
            Ok(if merged.changed {
                Outcome::Update(merged.observation)
            } else {
                Outcome::Unchanged
            })
        }
    }
}

fn coding(c: &FhirCode) -> Value {
    let mut m = Map::new();
    if let Some(s) = &c.system {
        m.insert("system".into(), s.clone().into());
    }
    if let Some(s) = &c.code {
        m.insert("code".into(), s.clone().into());
    }
    if let Some(s) = &c.display {
        m.insert("display".into(), s.clone().into());
    }
    Value::Object(m)
}

/// `code` for a type or value name: template codings + the service coding, text = the name.
fn resolve_code(name: &str, codes: &[FhirCode]) -> Value {
    let mut coding_list: Vec<Value> = codes.iter().map(coding).collect();
    coding_list.push(json!({ "system": SERVICE_SYSTEM, "code": name, "display": name }));
    json!({ "coding": coding_list, "text": name })
}

fn concept(c: &FhirCodeableConcept) -> Value {
    let mut m = Map::new();
    if !c.codes.is_empty() {
        m.insert("coding".into(), c.codes.iter().map(coding).collect());
    }
    if let Some(t) = &c.text {
        m.insert("text".into(), t.clone().into());
    }
    Value::Object(m)
}

fn category(template: &CodeValueFhirTemplate) -> Option<Value> {
    (!template.category.is_empty()).then(|| template.category.iter().map(concept).collect())
}

fn period(start: DateTime<Utc>, end: DateTime<Utc>) -> Value {
    json!({ "start": format_round_trip(&start), "end": format_round_trip(&end) })
}

/// A decimal as a JSON number: an integer when it has no fraction, otherwise a float.
fn decimal_number(text: &str) -> Option<Value> {
    if let Ok(i) = text.parse::<i64>() {
        return Some(Value::from(i));
    }
    let f: f64 = text.parse().ok()?;
    if !f.is_finite() {
        return None;
    }
    if f.fract() == 0.0 && f.abs() < 9e15 {
        return Some(Value::from(f as i64));
    }
    serde_json::Number::from_f64(f).map(Value::Number)
}

/// Parses a value as .NET `decimal.Parse(s, CultureInfo.InvariantCulture)` accepts it
/// (surrounding white space, a sign, thousands separators, a decimal point; no exponent).
fn parse_quantity(s: &str) -> Option<Value> {
    let t = s.trim();
    let (sign, body) = match t.strip_prefix('-') {
        Some(rest) => ("-", rest),
        None => ("", t.strip_prefix('+').unwrap_or(t)),
    };
    let (int, frac) = match body.split_once('.') {
        Some((i, f)) => (i, f),
        None => (body, ""),
    };
    if int.starts_with(',') {
        return None;
    }
    let int: String = int.chars().filter(|&c| c != ',').collect();
    let all_digits = |x: &str| x.chars().all(|c| c.is_ascii_digit());
    if (int.is_empty() && frac.is_empty()) || !all_digits(&int) || !all_digits(frac) {
        return None;
    }
    let int = if int.is_empty() { "0" } else { &int };
    let normal = if frac.is_empty() {
        format!("{sign}{int}")
    } else {
        format!("{sign}{int}.{frac}")
    };
    decimal_number(&normal)
}

fn value_key(kind: &FhirValueKind) -> &'static str {
    match kind {
        FhirValueKind::SampledData { .. } => "valueSampledData",
        FhirValueKind::Quantity { .. } => "valueQuantity",
        FhirValueKind::String => "valueString",
        FhirValueKind::CodeableConcept { .. } => "valueCodeableConcept",
    }
}

fn checked_sampled(
    template: &CodeValueFhirTemplate,
    value_name: &str,
    values: &[TimeValue],
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    period_ms: f64,
) -> Result<String, MappingError> {
    check_slots(template, value_name, start, end, period_ms)?;
    Ok(sampled::build_sampled_data(values, start, end, period_ms))
}

/// A SampledData over `[start, end]` at `period_ms` may hold at most [`MAX_SLOTS`] slots.
fn check_slots(
    template: &CodeValueFhirTemplate,
    value_name: &str,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    period_ms: f64,
) -> Result<(), MappingError> {
    let slots = sampled::slot_count(start, end, period_ms);
    if slots > MAX_SLOTS {
        return Err(MappingError::TooManySamples {
            template: template.type_name.clone(),
            value_name: value_name.to_string(),
            slots,
            limit: MAX_SLOTS,
        });
    }
    Ok(())
}

/// Creates one value element (`value[x]` key and content) from the values of one property.
fn create_value(
    template: &CodeValueFhirTemplate,
    value: &FhirValue,
    value_name: &str,
    values: &[TimeValue],
    start: DateTime<Utc>,
    end: DateTime<Utc>,
) -> Result<(&'static str, Value), MappingError> {
    let last = values.last().map(|v| v.value.as_str()).unwrap_or("");
    let content = match &value.kind {
        FhirValueKind::SampledData {
            default_period_ms,
            unit,
        } => {
            let data =
                checked_sampled(template, value_name, values, start, end, *default_period_ms)?;
            let mut origin = Map::new();
            origin.insert("value".into(), 0.into());
            if let Some(u) = unit {
                origin.insert("unit".into(), u.clone().into());
            }
            json!({
                "origin": origin,
                "period": decimal_number(&default_period_ms.to_string()).unwrap_or(Value::Null),
                "dimensions": 1,
                "data": data,
            })
        }
        FhirValueKind::Quantity { unit, system, code } => {
            let number =
                parse_quantity(last).ok_or_else(|| MappingError::InvalidQuantityValue {
                    template: template.type_name.clone(),
                    value_name: value_name.to_string(),
                    value: last.to_string(),
                })?;
            let mut m = Map::new();
            m.insert("value".into(), number);
            for (k, v) in [("unit", unit), ("system", system), ("code", code)] {
                if let Some(v) = v {
                    m.insert(k.into(), v.clone().into());
                }
            }
            Value::Object(m)
        }
        FhirValueKind::String => Value::String(last.to_string()),
        FhirValueKind::CodeableConcept { text, codes } => concept(&FhirCodeableConcept {
            text: text.clone(),
            codes: codes.clone(),
        }),
    };
    Ok((value_key(&value.kind), content))
}

fn main_value_name(template: &CodeValueFhirTemplate) -> Option<(&FhirValue, &str)> {
    let v = template.value.as_ref()?;
    let name = v.value_name.as_deref().filter(|n| !n.trim().is_empty())?;
    Some((v, name))
}

/// Builds a new Observation for one observation group.
pub fn build_observation<T>(
    template: &CodeValueFhirTemplate,
    group: &ObservationGroup<T>,
    identity: &ObservationIdentity,
    issued: Option<DateTime<Utc>>,
) -> Result<Value, MappingError> {
    let (start, end) = (group.window.start, group.window.end);
    let identifier = identifier_value(identity, group);
    let mut obs = Map::new();
    obs.insert("resourceType".into(), "Observation".into());
    obs.insert("id".into(), logical_id(SERVICE_SYSTEM, &identifier).into());
    obs.insert(
        "identifier".into(),
        json!([{ "system": SERVICE_SYSTEM, "value": identifier }]),
    );
    obs.insert("status".into(), "final".into());
    if let Some(c) = category(template) {
        obs.insert("category".into(), c);
    }
    obs.insert(
        "code".into(),
        resolve_code(&group.key.type_name, &template.codes),
    );
    if let Some(s) = &identity.subject {
        obs.insert("subject".into(), s.clone());
    }
    if let Some(e) = &identity.encounter {
        obs.insert("encounter".into(), e.clone());
    }
    obs.insert("effectivePeriod".into(), period(start, end));
    if let Some(t) = issued {
        obs.insert("issued".into(), format_round_trip(&t).into());
    }
    if let Some((v, name)) = main_value_name(template) {
        if let Some(values) = group.values.get(name) {
            let (k, content) = create_value(template, v, name, values, start, end)?;
            obs.insert(k.into(), content);
        }
    }
    if let Some(d) = &identity.device {
        obs.insert("device".into(), d.clone());
    }
    let mut components = Vec::new();
    for c in &template.components {
        let Some(name) = c.value.value_name.as_deref() else {
            continue;
        };
        if let Some(values) = group.values.get(name) {
            let (k, content) = create_value(template, &c.value, name, values, start, end)?;
            let mut m = Map::new();
            m.insert("code".into(), resolve_code(name, &c.codes));
            m.insert(k.into(), content);
            components.push(Value::Object(m));
        }
    }
    if !components.is_empty() {
        obs.insert("component".into(), Value::Array(components));
    }
    Ok(Value::Object(obs))
}

/// The result of [`merge_observation`].
#[derive(Debug, Clone, PartialEq)]
pub struct Merged {
    /// The merged Observation (equal to the existing one when `changed` is false).
    pub observation: Value,
    /// Whether anything changed (then `status` is `amended`).
    pub changed: bool,
}

/// Parses a FHIR dateTime/instant to UTC (offsets converted; no offset = UTC; partial dates =
/// their first instant).
pub fn parse_fhir_datetime(s: &str) -> Option<DateTime<Utc>> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t.with_timezone(&Utc));
    }
    if let Ok(t) = NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f") {
        return Some(t.and_utc());
    }
    let date = match s.len() {
        4 => NaiveDate::parse_from_str(&format!("{s}-01-01"), "%Y-%m-%d").ok(),
        7 => NaiveDate::parse_from_str(&format!("{s}-01"), "%Y-%m-%d").ok(),
        _ => NaiveDate::parse_from_str(s, "%Y-%m-%d").ok(),
    }?;
    date.and_hms_opt(0, 0, 0).map(|t| t.and_utc())
}

fn existing_period(obs: &Map<String, Value>) -> Option<(DateTime<Utc>, DateTime<Utc>)> {
    if let Some(p) = obs.get("effectivePeriod") {
        let start = p
            .get("start")
            .and_then(Value::as_str)
            .and_then(parse_fhir_datetime)?;
        let end = p
            .get("end")
            .and_then(Value::as_str)
            .and_then(parse_fhir_datetime)
            .unwrap_or(start);
        return Some((start, end));
    }
    let t = obs
        .get("effectiveDateTime")
        .or_else(|| obs.get("effectiveInstant"))
        .and_then(Value::as_str)
        .and_then(parse_fhir_datetime)?;
    Some((t, t))
}

/// JSON equality that compares numbers by value (a server may echo `78` as `78.0`).
fn json_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x == y || x.as_f64() == y.as_f64(),
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| json_eq(a, b))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| json_eq(v, w)))
        }
        _ => a == b,
    }
}

/// Merges one value into an existing value element (SampledData slot-wise; others replaced).
#[allow(clippy::too_many_arguments)]
fn merge_value(
    template: &CodeValueFhirTemplate,
    value: &FhirValue,
    value_name: &str,
    values: &[TimeValue],
    holder: &mut Map<String, Value>,
    obs_start: DateTime<Utc>,
    merge_start: DateTime<Utc>,
    merge_end: DateTime<Utc>,
) -> Result<(), MappingError> {
    let key = value_key(&value.kind);
    let other = holder
        .keys()
        .find(|k| k.starts_with("value") && k.as_str() != key)
        .cloned();
    if let Some(other) = other {
        return Err(MappingError::NotSupported {
            template: template.type_name.clone(),
            reason: format!("expected {key} for \"{value_name}\", found {other}"),
        });
    }
    match (&value.kind, holder.get_mut(key)) {
        (
            FhirValueKind::SampledData {
                default_period_ms, ..
            },
            Some(existing),
        ) => {
            let Some(sd) = existing.as_object_mut() else {
                return Err(MappingError::NotSupported {
                    template: template.type_name.clone(),
                    reason: format!("{key} of \"{value_name}\" is not an object"),
                });
            };
            if sd
                .get("dimensions")
                .and_then(Value::as_f64)
                .is_some_and(|d| d > 1.0)
            {
                return Err(MappingError::NotSupported {
                    template: template.type_name.clone(),
                    reason: format!(
                        "existing SampledData of \"{value_name}\" has more than 1 dimension"
                    ),
                });
            }
            let old = sd.get("data").and_then(Value::as_str).unwrap_or("");
            check_slots(
                template,
                value_name,
                merge_start,
                merge_end,
                *default_period_ms,
            )?;
            let data = sampled::merge_sampled_data(
                old,
                obs_start,
                values,
                merge_start,
                merge_end,
                *default_period_ms,
            );
            if old != data {
                sd.insert("data".into(), data.into());
            }
        }
        _ => {
            let (k, content) =
                create_value(template, value, value_name, values, merge_start, merge_end)?;
            match holder.get(k) {
                Some(old) if json_eq(old, &content) => {}
                _ => {
                    holder.insert(k.into(), content);
                }
            }
        }
    }
    Ok(())
}

fn is_service_coded(component: &Value, value_name: &str) -> bool {
    component
        .pointer("/code/coding")
        .and_then(Value::as_array)
        .is_some_and(|codings| {
            codings.iter().any(|c| {
                c.get("system").and_then(Value::as_str) == Some(SERVICE_SYSTEM)
                    && c.get("code").and_then(Value::as_str) == Some(value_name)
            })
        })
}

/// The SampledData samples of `lost`, an Observation that a blind create of `group`'s
/// Observation replaced (another writer created it between our search and our `PUT`), as an
/// observation group of the same key and window: merging it into the Observation as it now
/// is puts those samples back. Only SampledData is recovered: Quantity, String and
/// CodeableConcept Observations are one reading each, which both writers wrote alike.
pub fn lost_samples<T>(
    template: &CodeValueFhirTemplate,
    group: &ObservationGroup<T>,
    lost: &Value,
) -> ObservationGroup<T> {
    let start = lost
        .as_object()
        .and_then(existing_period)
        .map_or(group.window.start, |(start, _)| start);
    let samples = |holder: &Value, value: &FhirValue| -> Option<Vec<TimeValue>> {
        let FhirValueKind::SampledData {
            default_period_ms, ..
        } = &value.kind
        else {
            return None;
        };
        let sd = holder.get("valueSampledData")?;
        let period = sd
            .get("period")
            .and_then(Value::as_f64)
            .filter(|p| *p > 0.0)
            .unwrap_or(*default_period_ms);
        let data = sd.get("data").and_then(Value::as_str)?;
        Some(sampled::sampled_data_to_time_values(data, start, period))
    };
    let mut values = BTreeMap::new();
    if let Some((v, name)) = main_value_name(template) {
        if let Some(found) = samples(lost, v) {
            values.insert(Arc::from(name), found);
        }
    }
    let components = lost.get("component").and_then(Value::as_array);
    for c in &template.components {
        let Some(name) = c.value.value_name.as_deref() else {
            continue;
        };
        let found = components
            .into_iter()
            .flatten()
            .find(|comp| is_service_coded(comp, name))
            .and_then(|comp| samples(comp, &c.value));
        if let Some(found) = found {
            values.insert(Arc::from(name), found);
        }
    }
    ObservationGroup {
        key: group.key.clone(),
        period_interval: group.period_interval,
        window: group.window,
        values,
        tags: Vec::new(),
    }
}

/// Merges an observation group into an existing Observation: category replaced by the
/// template's; the value and components merged (SampledData slot-wise over the union of the old
/// period and the new window, new readings winning; other types replaced); components found by
/// their service coding, or else inserted in template order (the reference appends); the effective period widened. `status` becomes `amended`
/// only when something changed. Merging the same group twice equals merging it once.
pub fn merge_observation<T>(
    template: &CodeValueFhirTemplate,
    group: &ObservationGroup<T>,
    existing: &Value,
) -> Result<Merged, MappingError> {
    let Some(original) = existing.as_object() else {
        return Err(MappingError::NotSupported {
            template: template.type_name.clone(),
            reason: "the existing Observation is not a JSON object".into(),
        });
    };
    let mut obs = original.clone();
    match category(template) {
        Some(c) => {
            if !obs.get("category").is_some_and(|old| json_eq(old, &c)) {
                obs.insert("category".into(), c);
            }
        }
        None => {
            obs.shift_remove("category");
        }
    }
    let (obs_start, obs_end) =
        existing_period(&obs).unwrap_or((group.window.start, group.window.end));
    let merge_start = obs_start.min(group.window.start);
    let merge_end = obs_end.max(group.window.end);

    if let Some((v, name)) = main_value_name(template) {
        if let Some(values) = group.values.get(name) {
            merge_value(
                template,
                v,
                name,
                values,
                &mut obs,
                obs_start,
                merge_start,
                merge_end,
            )?;
        }
    }

    for (index, c) in template.components.iter().enumerate() {
        let Some(name) = c.value.value_name.as_deref() else {
            continue;
        };
        let Some(values) = group.values.get(name) else {
            continue;
        };
        // Components the template lists after this one, to insert a new component in template
        // order (so the result does not depend on the order batches arrive in).
        let later: Vec<&str> = template.components[index + 1..]
            .iter()
            .filter_map(|c| c.value.value_name.as_deref())
            .collect();
        let list = obs
            .entry("component")
            .or_insert_with(|| Value::Array(Vec::new()));
        let Some(list) = list.as_array_mut() else {
            return Err(MappingError::NotSupported {
                template: template.type_name.clone(),
                reason: "component is not an array".into(),
            });
        };
        match list.iter_mut().find(|comp| is_service_coded(comp, name)) {
            Some(found) => {
                let Some(holder) = found.as_object_mut() else {
                    continue;
                };
                merge_value(
                    template,
                    &c.value,
                    name,
                    values,
                    holder,
                    obs_start,
                    merge_start,
                    merge_end,
                )?;
            }
            None => {
                let (k, content) =
                    create_value(template, &c.value, name, values, merge_start, merge_end)?;
                let mut m = Map::new();
                m.insert("code".into(), resolve_code(name, &c.codes));
                m.insert(k.into(), content);
                let at = list
                    .iter()
                    .position(|comp| later.iter().any(|l| is_service_coded(comp, l)))
                    .unwrap_or(list.len());
                list.insert(at, Value::Object(m));
            }
        }
    }
    if obs
        .get("component")
        .and_then(Value::as_array)
        .is_some_and(Vec::is_empty)
    {
        obs.shift_remove("component");
    }

    let has_period = obs.contains_key("effectivePeriod");
    if !has_period || merge_start != obs_start || merge_end != obs_end {
        obs.shift_remove("effectiveDateTime");
        obs.shift_remove("effectiveInstant");
        obs.insert("effectivePeriod".into(), period(merge_start, merge_end));
    }

    let changed = !json_eq(
        &Value::Object(original.clone()),
        &Value::Object(obs.clone()),
    );
    if changed {
        obs.insert("status".into(), "amended".into());
    }
    Ok(Merged {
        observation: Value::Object(obs),
        changed,
    })
}
