//! Evaluating a device mapping against one event: the pure core of the normalizer. Its
//! errors are in `error`, the name pre-filter that skips templates in `prefilter`.

use std::borrow::Cow;
use std::cell::OnceCell;
use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use jmespath::{Rcvar, Variable};
use serde_json::{Map, Value};

use crate::doc::Doc;
use crate::jmespath_eval::{self, JmesValue};
use crate::jmespath_fallback;
use crate::measurement::{Measurement, MeasurementProperty};
use crate::scope::{Envelope, Scope, Token};
use crate::template::{Compiled, ContentTemplate, DeviceMapping, Expression, TemplateKind};
use crate::value::{parse_timestamp, value_text, ValueText};

mod error;
mod prefilter;

use error::{describe, shorten};
pub use error::{ErrorContext, ErrorType, NormalizeError, TemplateRef};
use prefilter::Prefilter;

/// The normalizer: a compiled device mapping, evaluated against documents.
#[derive(Debug, Clone, Default)]
pub struct Normalizer {
    mapping: DeviceMapping,
    prefilter: Prefilter,
}

/// Per-document state: the document, and its JMESPath form built at most once.
struct Document<'a> {
    top: Token<'a>,
    var: OnceCell<Rcvar>,
}

impl Document<'_> {
    fn var(&self) -> &Rcvar {
        self.var
            .get_or_init(|| jmespath_fallback::token_to_variable(self.top))
    }
}

/// One match of `typeMatchExpression`, in JSON or JMESPath form (whichever came first;
/// the other is built when an expression needs it).
struct Match<'a> {
    /// The matched token of the document (JSONPath matches).
    token: Option<Token<'a>>,
    /// The document form of a JMESPath match, built when a JSONPath expression needs it.
    owned: OnceCell<Doc<'a>>,
    var: OnceCell<Rcvar>,
    /// `CalculatedContent`'s JMESPath root: the document plus `matchedToken`.
    root: OnceCell<Rcvar>,
}

impl<'a> Match<'a> {
    fn of_token(token: Token<'a>) -> Self {
        Match {
            token: Some(token),
            owned: OnceCell::new(),
            var: OnceCell::new(),
            root: OnceCell::new(),
        }
    }

    /// A match the native JMESPath evaluation produced: a token of the document when it
    /// is one, else its JSON.
    fn of_native(j: JmesValue<'a>) -> Self {
        match j {
            JmesValue::Val(v) => Match::of_token(Token::Value(v)),
            JmesValue::Env(e) => Match::of_token(Token::Envelope(e)),
            other => Match {
                token: None,
                owned: OnceCell::from(other.to_doc().into_owned()),
                var: OnceCell::new(),
                root: OnceCell::new(),
            },
        }
    }
}

impl Match<'_> {
    fn token(&self) -> Token<'_> {
        match self.token {
            Some(t) => t,
            None => Token::Value(self.owned.get_or_init(|| {
                self.var
                    .get()
                    .map_or(Doc::Null, |v| jmespath_fallback::to_doc(v))
            })),
        }
    }

    fn var(&self) -> &Rcvar {
        self.var
            .get_or_init(|| jmespath_fallback::token_to_variable(self.token()))
    }

    fn root(&self, doc: &Document<'_>) -> &Rcvar {
        self.root.get_or_init(|| {
            let mut map: BTreeMap<String, Rcvar> = match &**doc.var() {
                Variable::Object(o) => o.clone(),
                _ => BTreeMap::new(),
            };
            map.insert("matchedToken".into(), self.var().clone());
            Arc::new(Variable::Object(map))
        })
    }
}

/// What an expression selected, for a single-value field.
enum One<'a> {
    Missing,
    Found(Cow<'a, Doc<'a>>),
}

impl Normalizer {
    /// A normalizer for a loaded (valid) device mapping.
    pub fn new(mapping: DeviceMapping) -> Self {
        let prefilter = Prefilter::new(&mapping);
        Normalizer { mapping, prefilter }
    }

    /// The mapping.
    pub fn mapping(&self) -> &DeviceMapping {
        &self.mapping
    }

    /// Wraps a device message in the reference's envelope and normalizes it.
    ///
    /// ```
    /// let text = r#"{"templateType": "CollectionContent", "template": [{
    ///   "templateType": "CalculatedContent",
    ///   "template": {"typeName": "heartrate", "typeMatchExpression": "$..[?(@heartRate)]",
    ///                "deviceIdExpression": "$.matchedToken.deviceId",
    ///                "timestampExpression": "$.matchedToken.endDate",
    ///                "values": [{"valueName": "hr", "valueExpression": "$.matchedToken.heartRate", "required": true}]}
    /// }]}"#;
    /// let n = normalizer::Normalizer::new(normalizer::load_device_mapping(text).into_result().unwrap());
    /// let body = br#"{"heartRate": 78, "deviceId": "d1", "endDate": "2019-02-01T22:46:01.875Z"}"#;
    /// let ms = n.normalize(body, &Default::default(), &Default::default(), None).unwrap();
    /// assert_eq!(ms[0].properties[0].value, "78");
    /// assert_eq!(&*ms[0].device_id, "d1");
    /// ```
    pub fn normalize(
        &self,
        body: &[u8],
        properties: &Map<String, Value>,
        system_properties: &Map<String, Value>,
        ingestion_time: Option<DateTime<Utc>>,
    ) -> Result<Vec<Measurement>, NormalizeError> {
        // A tree borrowing the body's strings, parsed by serde_json's own deserializer: what
        // is valid JSON, the errors and the numbers are those of `Value` (see `Doc`).
        let body: Doc<'_> = serde_json::from_slice(body).map_err(NormalizeError::invalid_format)?;
        // The document `{Body, Properties, SystemProperties}`, never built: the property
        // maps as documents borrowing their strings (one vector each).
        let (properties, system_properties) =
            (Doc::from_map(properties), Doc::from_map(system_properties));
        let envelope = Envelope {
            body: &body,
            properties: &properties,
            system_properties: &system_properties,
        };
        let present = self.prefilter.present_envelope(&envelope);
        self.normalize_token(Token::Envelope(&envelope), present, ingestion_time)
    }

    /// Normalizes a whole document (what templates see). One failing template match
    /// fails the whole document, as in the reference; no match at all is `Ok(vec![])`.
    pub fn normalize_document(
        &self,
        doc: &Value,
        ingestion_time: Option<DateTime<Utc>>,
    ) -> Result<Vec<Measurement>, NormalizeError> {
        let doc = Doc::from_value(doc); // borrows the strings
        let present = self.prefilter.present(&doc);
        self.normalize_token(Token::Value(&doc), present, ingestion_time)
    }

    /// Normalizes a document whose tracked names `present` (see [`Prefilter`]) are known.
    fn normalize_token(
        &self,
        top: Token<'_>,
        present: u64,
        ingestion_time: Option<DateTime<Utc>>,
    ) -> Result<Vec<Measurement>, NormalizeError> {
        let doc = Document {
            top,
            var: OnceCell::new(),
        };
        let mut out = Vec::new();
        for (t, &needs) in self.mapping.templates.iter().zip(&self.prefilter.needs) {
            if present & needs != needs {
                continue; // a name its typeMatchExpression needs is nowhere in the document
            }
            let matches = type_matches(t, &doc)?;
            out.reserve(matches.len());
            // With several matches, fields that do not depend on the match are read once.
            let mut memo = (matches.len() > 1 && t.kind == TemplateKind::CalculatedContent)
                .then(|| Memo::new(t));
            for m in &matches {
                out.push(measurement(t, &doc, m, memo.as_mut(), ingestion_time)?);
            }
        }
        Ok(out)
    }
}

/// Builds the reference's document `{Body, Properties, SystemProperties}`.
pub fn envelope(
    body: Value,
    properties: Map<String, Value>,
    system_properties: Map<String, Value>,
) -> Value {
    let mut m = Map::with_capacity(3);
    m.insert("Body".into(), body);
    m.insert("Properties".into(), Value::Object(properties));
    m.insert("SystemProperties".into(), Value::Object(system_properties));
    Value::Object(m)
}

fn unset(t: &ContentTemplate, field: &str) -> NormalizeError {
    NormalizeError::incompatible(
        t,
        field,
        None,
        None,
        format!("An expression must be set for [{field}]"),
    )
}

fn type_matches<'a>(
    t: &'a ContentTemplate,
    doc: &'a Document<'a>,
) -> Result<Vec<Match<'a>>, NormalizeError> {
    let e = &t.type_match;
    match &e.compiled {
        Compiled::Empty => Err(unset(t, "TypeMatchExpression")),
        Compiled::JsonPath(p) => Ok(p
            .select_tokens(doc.top)
            .into_iter()
            .map(Match::of_token)
            .collect()),
        Compiled::JmesPath(j) => {
            // On the document as it is; the crate below only for what that does not cover.
            if let Ok(r) = jmespath_eval::eval(j.as_ast(), &JmesValue::of_token(doc.top)) {
                return Ok(match r {
                    JmesValue::Arr(items) => items
                        .into_iter()
                        .filter(|x| !x.is_null())
                        .map(Match::of_native)
                        .collect(),
                    JmesValue::Val(Doc::Array(items)) => items
                        .iter()
                        .filter(|x| !x.is_null())
                        .map(|x| Match::of_token(Token::Value(x)))
                        .collect(),
                    r if r.is_null() => Vec::new(),
                    r => vec![Match::of_native(r)],
                });
            }
            let r = jmespath_fallback::search(j, doc.var()).map_err(|err| {
                NormalizeError::incompatible(
                    t,
                    "TypeMatchExpression",
                    Some(e),
                    None,
                    format!(
                        "Unable to evaluate [TypeMatchExpression]: {}",
                        jmespath_fallback::error_message(&err)
                    ),
                )
            })?;
            let items: Vec<Rcvar> = match &*r {
                Variable::Null => Vec::new(),
                Variable::Array(a) => a.iter().filter(|v| !v.is_null()).cloned().collect(),
                _ => vec![r.clone()],
            };
            Ok(items
                .into_iter()
                .map(|v| Match {
                    token: None,
                    owned: OnceCell::new(),
                    var: OnceCell::from(v),
                    root: OnceCell::new(),
                })
                .collect())
        }
    }
}

/// Evaluates a single-value expression for one match.
fn select_one<'s>(
    t: &ContentTemplate,
    field: &str,
    e: &'s Expression,
    doc: &'s Document<'_>,
    m: &'s Match<'_>,
) -> Result<One<'s>, NormalizeError> {
    let legacy = t.kind != TemplateKind::CalculatedContent;
    match &e.compiled {
        Compiled::Empty => Err(unset(t, field)),
        Compiled::JsonPath(p) => {
            let scope = if legacy {
                Scope::of(m.token())
            } else {
                Scope::of_match(doc.top, m.token())
            };
            match p.select_one(scope) {
                Ok(None) => Ok(One::Missing),
                Ok(Some(v)) => Ok(One::Found(v)),
                Err(n) => Err(NormalizeError::incompatible(
                    t,
                    field,
                    Some(e),
                    None,
                    format!(
                        "Expression for [{field}] returned {n} tokens; a single token is expected"
                    ),
                )),
            }
        }
        Compiled::JmesPath(j) => {
            // On the document as it is; the crate below only for what that does not cover.
            let data = if legacy {
                JmesValue::of_token(m.token())
            } else {
                JmesValue::Root(doc.top, m.token())
            };
            if let Ok(r) = jmespath_eval::eval(j.as_ast(), &data) {
                return match r {
                    JmesValue::Arr(mut a) if a.len() <= 1 => {
                        Ok(a.pop().map_or(One::Missing, |x| One::Found(x.to_doc())))
                    }
                    JmesValue::Val(Doc::Array(a)) if a.len() <= 1 => Ok(a
                        .first()
                        .map_or(One::Missing, |x| One::Found(Cow::Borrowed(x)))),
                    JmesValue::Arr(_) | JmesValue::Val(Doc::Array(_)) => {
                        Err(many(t, field, e, r.array_len().unwrap_or(0)))
                    }
                    r if r.is_null() => Ok(One::Missing),
                    r => Ok(One::Found(r.to_doc())),
                };
            }
            let root = if legacy { m.var() } else { m.root(doc) };
            let r = jmespath_fallback::search(j, root).map_err(|err| {
                NormalizeError::incompatible(
                    t,
                    field,
                    Some(e),
                    None,
                    format!(
                        "Unable to evaluate [{field}]: {}",
                        jmespath_fallback::error_message(&err)
                    ),
                )
            })?;
            match &*r {
                Variable::Null => Ok(One::Missing),
                Variable::Array(a) if a.is_empty() => Ok(One::Missing),
                Variable::Array(a) if a.len() == 1 => {
                    Ok(One::Found(Cow::Owned(jmespath_fallback::to_doc(&a[0]))))
                }
                Variable::Array(a) => Err(many(t, field, e, a.len())),
                other => Ok(One::Found(Cow::Owned(jmespath_fallback::to_doc(other)))),
            }
        }
    }
}

fn many(t: &ContentTemplate, field: &str, e: &Expression, n: usize) -> NormalizeError {
    NormalizeError::incompatible(
        t,
        field,
        Some(e),
        None,
        format!("Expression for [{field}] returned {n} tokens; a single token is expected"),
    )
}

fn required_missing(t: &ContentTemplate, field: &str, e: &Expression) -> NormalizeError {
    NormalizeError::incompatible(
        t,
        field,
        Some(e),
        None,
        format!(
            "Unable to extract required value for [{field}] using {}",
            e.source
        ),
    )
}

/// A string field: `Ok(None)` when missing.
fn string_field(
    t: &ContentTemplate,
    field: &str,
    e: &Expression,
    doc: &Document<'_>,
    m: &Match<'_>,
) -> Result<Option<Arc<str>>, NormalizeError> {
    match select_one(t, field, e, doc, m)? {
        One::Missing => Ok(None),
        // The common case, a string of the document: one allocation, no `String` first.
        One::Found(v) => match &*v {
            Doc::String(s) if !s.trim().is_empty() => Ok(Some(Arc::from(s.as_ref()))),
            _ => text_field(t, field, e, &v).map(|s| s.map(Arc::from)),
        },
    }
}

/// A found value as text (`Ok(None)` for null or blank), or the error naming the field.
fn text_field(
    t: &ContentTemplate,
    field: &str,
    e: &Expression,
    v: &Doc<'_>,
) -> Result<Option<String>, NormalizeError> {
    match value_text(v) {
        ValueText::Missing => Ok(None),
        ValueText::Text(s) => Ok(Some(s)),
        ValueText::NotScalar(what) => Err(NormalizeError::incompatible(
            t,
            field,
            Some(e),
            Some(describe(v)),
            format!("Value for [{field}] is {what}; a string, number or boolean is expected"),
        )),
    }
}

/// A measurement value: its text, `Ok(None)` when missing.
fn value_field(
    t: &ContentTemplate,
    field: &str,
    e: &Expression,
    doc: &Document<'_>,
    m: &Match<'_>,
) -> Result<Option<String>, NormalizeError> {
    match select_one(t, field, e, doc, m)? {
        One::Missing => Ok(None),
        One::Found(v) => text_field(t, field, e, &v),
    }
}

fn timestamp_field(
    t: &ContentTemplate,
    e: &Expression,
    doc: &Document<'_>,
    m: &Match<'_>,
) -> Result<Option<DateTime<Utc>>, NormalizeError> {
    const FIELD: &str = "TimestampExpression";
    match select_one(t, FIELD, e, doc, m)? {
        One::Missing => Ok(None),
        One::Found(v) => match &*v {
            Doc::Null => Ok(None),
            Doc::String(s) if s.trim().is_empty() => Ok(None),
            Doc::String(s) => parse_timestamp(s).map(Some).ok_or_else(|| {
                NormalizeError::incompatible(t, FIELD, Some(e), Some(shorten(s)), format!("Unable to convert the value of [{FIELD}] to a date and time"))
            }),
            other => Err(NormalizeError::incompatible(t, FIELD, Some(e), Some(describe(other)), format!("Unable to convert the value of [{FIELD}] to a date and time: expected an ISO 8601 string, found {}", kind_name(other)))),
        },
    }
}

fn kind_name(v: &Doc<'_>) -> &'static str {
    match v {
        Doc::Null => "null",
        Doc::Bool(_) => "a boolean",
        Doc::Number(_) => "a number",
        Doc::String(_) => "a string",
        Doc::Array(_) => "an array",
        Doc::Object(_) => "an object",
    }
}

/// `CalculatedContent` field values that do not depend on the match (the expression
/// reads only below a document member other than `matchedToken`, as `$.Body.deviceId`
/// does), kept from the first match of a document for the others. Evaluation is
/// deterministic and an error ends the document, so a kept value is what evaluating
/// again would give.
struct Memo {
    /// Per string field (`DeviceId`, `CorrelationId`, `PatientId`, `EncounterId`, then
    /// the values): `None` when the field depends on the match, else the value once read.
    strings: Vec<Option<Option<Option<Arc<str>>>>>,
    /// The same for `Timestamp` and its fallback.
    times: [Option<Option<Option<DateTime<Utc>>>>; 2],
}

impl Memo {
    fn new(t: &ContentTemplate) -> Self {
        fn slot<T>(e: Option<&Expression>) -> Option<Option<T>> {
            e.filter(|e| independent_of_match(e)).map(|_| None)
        }
        let mut strings = vec![
            slot(t.device_id.as_ref()),
            slot(t.correlation_id.as_ref()),
            slot(t.patient_id.as_ref()),
            slot(t.encounter_id.as_ref()),
        ];
        strings.extend(t.values.iter().map(|v| slot(Some(&v.expression))));
        Memo {
            strings,
            times: [
                slot(t.timestamp.as_ref()),
                slot(t.timestamp_fallback.as_ref()),
            ],
        }
    }
}

/// Whether a `CalculatedContent` expression gives the same result for every match.
fn independent_of_match(e: &Expression) -> bool {
    match &e.compiled {
        Compiled::JsonPath(p) => p.reads_below_document_member(),
        Compiled::JmesPath(_) | Compiled::Empty => false,
    }
}

/// `string_field`, through the memo slot `i` when there is one.
#[allow(clippy::too_many_arguments)]
fn memo_string(
    memo: Option<&mut Memo>,
    i: usize,
    t: &ContentTemplate,
    field: &str,
    e: &Expression,
    doc: &Document<'_>,
    m: &Match<'_>,
) -> Result<Option<Arc<str>>, NormalizeError> {
    match memo.and_then(|memo| memo.strings.get_mut(i)?.as_mut()) {
        Some(Some(kept)) => Ok(kept.clone()),
        Some(slot) => {
            let v = string_field(t, field, e, doc, m)?;
            *slot = Some(v.clone());
            Ok(v)
        }
        None => string_field(t, field, e, doc, m),
    }
}

/// `value_field`, through the memo slot `i` when there is one.
#[allow(clippy::too_many_arguments)]
fn memo_value(
    memo: Option<&mut Memo>,
    i: usize,
    t: &ContentTemplate,
    field: &str,
    e: &Expression,
    doc: &Document<'_>,
    m: &Match<'_>,
) -> Result<Option<String>, NormalizeError> {
    match memo.and_then(|memo| memo.strings.get_mut(i)?.as_mut()) {
        Some(Some(kept)) => Ok(kept.as_deref().map(String::from)),
        Some(slot) => {
            let v = value_field(t, field, e, doc, m)?;
            *slot = Some(v.as_deref().map(Arc::from));
            Ok(v)
        }
        None => value_field(t, field, e, doc, m),
    }
}

/// `timestamp_field`, through the memo slot `i` when there is one.
fn memo_time(
    memo: Option<&mut Memo>,
    i: usize,
    t: &ContentTemplate,
    e: &Expression,
    doc: &Document<'_>,
    m: &Match<'_>,
) -> Result<Option<DateTime<Utc>>, NormalizeError> {
    match memo.and_then(|memo| memo.times[i].as_mut()) {
        Some(Some(kept)) => Ok(*kept),
        Some(slot) => {
            let v = timestamp_field(t, e, doc, m)?;
            *slot = Some(v);
            Ok(v)
        }
        None => timestamp_field(t, e, doc, m),
    }
}

fn measurement(
    t: &ContentTemplate,
    doc: &Document<'_>,
    m: &Match<'_>,
    mut memo: Option<&mut Memo>,
    ingestion_time: Option<DateTime<Utc>>,
) -> Result<Measurement, NormalizeError> {
    const DEVICE: &str = "DeviceIdExpression";
    const TIME: &str = "TimestampExpression";
    let device_expr = t.device_id.as_ref().ok_or_else(|| unset(t, DEVICE))?;
    let device_id = memo_string(memo.as_deref_mut(), 0, t, DEVICE, device_expr, doc, m)?
        .ok_or_else(|| required_missing(t, DEVICE, device_expr))?;

    let time_expr = t.timestamp.as_ref().ok_or_else(|| unset(t, TIME))?;
    let mut time = memo_time(memo.as_deref_mut(), 0, t, time_expr, doc, m)?;
    if time.is_none() {
        if let Some(fallback) = &t.timestamp_fallback {
            time = memo_time(memo.as_deref_mut(), 1, t, fallback, doc, m)?;
        }
    }
    let occurrence_time_utc = time.ok_or_else(|| required_missing(t, TIME, time_expr))?;

    const CORRELATION: &str = "CorrelationIdExpression";
    let correlation_id = match &t.correlation_id {
        Some(e) => Some(
            memo_string(memo.as_deref_mut(), 1, t, CORRELATION, e, doc, m)?
                .ok_or_else(|| required_missing(t, CORRELATION, e))?,
        ),
        None => None,
    };
    let patient_id = match &t.patient_id {
        Some(e) => memo_string(memo.as_deref_mut(), 2, t, "PatientIdExpression", e, doc, m)?,
        None => None,
    };
    let encounter_id = match &t.encounter_id {
        Some(e) => memo_string(
            memo.as_deref_mut(),
            3,
            t,
            "EncounterIdExpression",
            e,
            doc,
            m,
        )?,
        None => None,
    };
    let mut properties = Vec::with_capacity(t.values.len());
    for (i, v) in t.values.iter().enumerate() {
        let found = if matches!(v.expression.compiled, Compiled::Empty) && !v.required {
            None
        } else {
            memo_value(
                memo.as_deref_mut(),
                4 + i,
                t,
                &v.name,
                &v.expression,
                doc,
                m,
            )?
        };
        match found {
            Some(value) => properties.push(MeasurementProperty {
                name: v.name.clone(),
                value,
            }),
            None if v.required => return Err(required_missing(t, &v.name, &v.expression)),
            None => {}
        }
    }
    Ok(Measurement {
        type_name: t.type_name.clone(),
        occurrence_time_utc,
        ingestion_time_utc: ingestion_time,
        device_id,
        patient_id,
        encounter_id,
        correlation_id,
        properties,
    })
}
