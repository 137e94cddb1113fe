//! The loader: template file text → [`Loaded`], collecting every error with its JSON pointer
//! and line:column.

use std::cell::OnceCell;
use std::sync::Arc;

use serde_json::{Map, Value};

use crate::location::{escape_token, LineCol, Positions};

use super::{
    name_matches, ContentTemplate, DeviceMapping, Expression, Language, Loaded, TemplateError,
    TemplateKind, ValueTemplate,
};

struct Ctx<'a> {
    /// The template text, scanned for positions only when the first error is reported (a
    /// valid template never pays for it).
    text: &'a str,
    pos: OnceCell<Positions>,
    errors: Vec<TemplateError>,
    index: Option<usize>,
    ttype: Option<String>,
}

impl Ctx<'_> {
    fn err_at(&mut self, pointer: &str, key: bool, message: impl Into<String>) {
        let pos = self.pos.get_or_init(|| Positions::index(self.text));
        let lc = if key {
            pos.key(pointer)
        } else {
            pos.value(pointer)
        }
        .unwrap_or(LineCol { line: 1, column: 1 });
        self.errors.push(TemplateError {
            template_index: self.index,
            template_type: self.ttype.clone(),
            pointer: pointer.to_string(),
            line: lc.line,
            column: lc.column,
            message: message.into(),
        });
    }
}

/// Case-insensitive member lookup (Json.NET's default), returning the key as written.
fn get_ci<'a>(m: &'a Map<String, Value>, name: &str) -> Option<(&'a String, &'a Value)> {
    m.get_key_value(name)
        .or_else(|| m.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)))
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Loads a device-mapping template from its file text.
///
/// ```
/// let text = r#"{"templateType": "CollectionContent", "template": [{
///   "templateType": "JsonPathContent",
///   "template": {"typeName": "hr", "typeMatchExpression": "$..[?(@heartRate)]",
///                "deviceIdExpression": "$.deviceId", "timestampExpression": "$.t",
///                "values": [{"valueName": "hr", "valueExpression": "$.heartRate", "required": true}]}
/// }]}"#;
/// let loaded = normalizer::load_device_mapping(text);
/// assert!(loaded.errors.is_empty());
/// assert_eq!(&*loaded.mapping.templates[0].type_name, "hr");
/// ```
pub fn load_device_mapping(text: &str) -> Loaded {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut cx = Ctx {
        text,
        pos: OnceCell::new(),
        errors: Vec::new(),
        index: None,
        ttype: None,
    };
    let root: Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(e) => {
            cx.errors.push(TemplateError {
                template_index: None,
                template_type: None,
                pointer: String::new(),
                line: e.line(),
                column: e.column(),
                message: format!("Invalid JSON: {e}"),
            });
            return Loaded {
                mapping: DeviceMapping::default(),
                errors: cx.errors,
            };
        }
    };
    let templates = load_collection(&root, &mut cx);
    Loaded {
        mapping: DeviceMapping { templates },
        errors: cx.errors,
    }
}

/// Loads a single content template container (`{"templateType": "CalculatedContent",
/// "template": {...}}`), as the reference's per-type factories do; the result is a
/// one-template mapping. Device mappings themselves must be a `CollectionContent`.
pub fn load_content_template(text: &str) -> Loaded {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut cx = Ctx {
        text,
        pos: OnceCell::new(),
        errors: Vec::new(),
        index: Some(0),
        ttype: None,
    };
    let root: Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(e) => {
            return Loaded {
                mapping: DeviceMapping::default(),
                errors: vec![TemplateError {
                    template_index: None,
                    template_type: None,
                    pointer: String::new(),
                    line: e.line(),
                    column: e.column(),
                    message: format!("Invalid JSON: {e}"),
                }],
            }
        }
    };
    let templates = load_container(&root, "", 0, &mut cx).into_iter().collect();
    Loaded {
        mapping: DeviceMapping { templates },
        errors: cx.errors,
    }
}

fn load_collection(root: &Value, cx: &mut Ctx<'_>) -> Vec<ContentTemplate> {
    const COLLECTION: &str = "CollectionContentTemplate";
    let Some(obj) = root.as_object() else {
        cx.err_at(
            "",
            false,
            format!(
                "Expected TemplateType value {COLLECTION}, actual {}.",
                kind_of(root)
            ),
        );
        return Vec::new();
    };
    let ttype = get_ci(obj, "templateType").map(|(_, v)| v);
    match ttype {
        Some(Value::String(t)) if name_matches(t, COLLECTION) => {}
        Some(Value::String(t)) => {
            cx.err_at(
                "/templateType",
                false,
                format!("Expected TemplateType value {COLLECTION}, actual {t}."),
            );
            return Vec::new();
        }
        Some(other) => {
            cx.err_at(
                "/templateType",
                false,
                format!(
                    "Expected TemplateType value {COLLECTION}, actual {}.",
                    kind_of(other)
                ),
            );
            return Vec::new();
        }
        None => {
            cx.err_at("", false, format!("Required property 'TemplateType' not found in JSON. Expected TemplateType value {COLLECTION}."));
            return Vec::new();
        }
    }
    let Some((tkey, Value::Array(items))) = get_ci(obj, "template") else {
        let p = get_ci(obj, "template")
            .map(|(k, _)| format!("/{}", escape_token(k)))
            .unwrap_or_default();
        cx.err_at(
            &p,
            false,
            format!(
                "Expected an array for the template property value for template type {COLLECTION}."
            ),
        );
        return Vec::new();
    };
    let base = format!("/{}", escape_token(tkey));
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let ptr = format!("{base}/{i}");
        cx.index = Some(i);
        cx.ttype = None;
        if let Some(t) = load_container(item, &ptr, i, cx) {
            out.push(t);
        }
    }
    cx.index = None;
    cx.ttype = None;
    out
}

fn load_container(
    item: &Value,
    ptr: &str,
    index: usize,
    cx: &mut Ctx<'_>,
) -> Option<ContentTemplate> {
    let Some(obj) = item.as_object() else {
        cx.err_at(
            ptr,
            false,
            format!(
                "Expected a template object {{\"templateType\", \"template\"}}, found {}.",
                kind_of(item)
            ),
        );
        return None;
    };
    let ttype = match get_ci(obj, "templateType") {
        Some((_, Value::String(t))) => t.clone(),
        Some((k, v)) => {
            cx.err_at(
                &format!("{ptr}/{}", escape_token(k)),
                false,
                format!("Expected a string for TemplateType, found {}.", kind_of(v)),
            );
            return None;
        }
        None => {
            cx.err_at(
                ptr,
                false,
                "Required property 'TemplateType' not found in JSON.",
            );
            return None;
        }
    };
    cx.ttype = Some(ttype.clone());
    let Some(kind) = TemplateKind::ALL
        .into_iter()
        .find(|k| name_matches(&ttype, k.registered()))
    else {
        let hint = if ttype.eq_ignore_ascii_case("IotCentralJsonPathContentTemplate")
            || ttype.eq_ignore_ascii_case("CalculatedContentTemplate")
        {
            format!(
                " (the reference only accepts '{}' for this type)",
                &ttype[..ttype.len() - "Template".len()]
            )
        } else {
            String::new()
        };
        cx.err_at(
            &format!("{ptr}/templateType"),
            false,
            format!("No match found for template type {ttype}{hint}."),
        );
        return None;
    };
    let body_ptr;
    let body = match get_ci(obj, "template") {
        Some((k, Value::Object(b))) => {
            body_ptr = format!("{ptr}/{}", escape_token(k));
            b
        }
        Some((k, v)) => {
            cx.err_at(
                &format!("{ptr}/{}", escape_token(k)),
                false,
                format!(
                    "Expected an object for the template property value, found {}.",
                    kind_of(v)
                ),
            );
            return None;
        }
        None => {
            cx.err_at(
                ptr,
                false,
                "Required property 'Template' not found in JSON.",
            );
            return None;
        }
    };
    load_body(kind, body, &body_ptr, index, cx)
}

const FIELDS: [(&str, &str); 8] = [
    ("typeName", "TypeName"),
    ("typeMatchExpression", "TypeMatchExpression"),
    ("deviceIdExpression", "DeviceIdExpression"),
    ("timestampExpression", "TimestampExpression"),
    ("patientIdExpression", "PatientIdExpression"),
    ("encounterIdExpression", "EncounterIdExpression"),
    ("correlationIdExpression", "CorrelationIdExpression"),
    ("values", "Values"),
];

fn load_body(
    kind: TemplateKind,
    body: &Map<String, Value>,
    ptr: &str,
    index: usize,
    cx: &mut Ctx<'_>,
) -> Option<ContentTemplate> {
    let errors_before = cx.errors.len();
    let calculated = kind == TemplateKind::CalculatedContent;
    // Unknown members are errors (MissingMemberHandling.Error).
    for key in body.keys() {
        let known = FIELDS.iter().any(|(f, _)| f.eq_ignore_ascii_case(key))
            || (calculated && key.eq_ignore_ascii_case("defaultExpressionLanguage"));
        if !known {
            cx.err_at(
                &format!("{ptr}/{}", escape_token(key)),
                true,
                format!(
                    "Could not find member '{key}' on object of type '{}'.",
                    kind.as_str()
                ),
            );
        }
    }
    let default_language = match get_ci(body, "defaultExpressionLanguage") {
        None | Some((_, Value::Null)) => Language::JsonPath,
        Some((k, Value::String(s))) => match Language::parse(s) {
            Some(l) => l,
            None => {
                cx.err_at(
                    &format!("{ptr}/{}", escape_token(k)),
                    false,
                    format!("Unknown expression language '{s}': expected JsonPath or JmesPath."),
                );
                Language::JsonPath
            }
        },
        Some((k, v)) => {
            cx.err_at(
                &format!("{ptr}/{}", escape_token(k)),
                false,
                format!(
                    "Expected a string for DefaultExpressionLanguage, found {}.",
                    kind_of(v)
                ),
            );
            Language::JsonPath
        }
    };
    let type_name = match get_ci(body, "typeName") {
        Some((_, Value::String(s))) => Some(s.clone()),
        Some((k, Value::Null)) => {
            cx.err_at(
                &format!("{ptr}/{}", escape_token(k)),
                false,
                "Required property 'TypeName' expects a value but got null.",
            );
            None
        }
        Some((k, v)) => {
            cx.err_at(
                &format!("{ptr}/{}", escape_token(k)),
                false,
                format!("Expected a string for TypeName, found {}.", kind_of(v)),
            );
            None
        }
        None => {
            cx.err_at(
                ptr,
                false,
                "Required property 'TypeName' not found in JSON.",
            );
            None
        }
    };
    let expr = |name: &str, pascal: &str, required: bool, cx: &mut Ctx<'_>| -> Option<Expression> {
        match get_ci(body, name) {
            None => {
                if required {
                    cx.err_at(
                        ptr,
                        false,
                        format!("Required property '{pascal}' not found in JSON."),
                    );
                }
                None
            }
            Some((_, Value::Null)) if !required => None,
            Some((k, v)) => load_expression(
                v,
                &format!("{ptr}/{}", escape_token(k)),
                pascal,
                calculated,
                default_language,
                cx,
            ),
        }
    };
    let type_match = expr("typeMatchExpression", "TypeMatchExpression", true, cx);
    let (device_id, timestamp, timestamp_fallback) = match kind {
        TemplateKind::IotJsonPathContent => (
            Some(Expression::fixed(
                "$.SystemProperties.iothub-connection-device-id",
            )),
            Some(Expression::fixed("$.Properties.iothub-creation-time-utc")),
            Some(Expression::fixed("$.SystemProperties.iothub-enqueuedtime")),
        ),
        TemplateKind::IotCentralJsonPathContent => (
            Some(Expression::fixed("$.deviceId")),
            Some(Expression::fixed("$.enqueuedTime")),
            None,
        ),
        _ => (
            expr("deviceIdExpression", "DeviceIdExpression", true, cx),
            expr("timestampExpression", "TimestampExpression", true, cx),
            None,
        ),
    };
    let patient_id = expr("patientIdExpression", "PatientIdExpression", false, cx);
    let encounter_id = expr("encounterIdExpression", "EncounterIdExpression", false, cx);
    let correlation_id = expr(
        "correlationIdExpression",
        "CorrelationIdExpression",
        false,
        cx,
    );
    let mut values = Vec::new();
    match get_ci(body, "values") {
        None | Some((_, Value::Null)) => {}
        Some((k, Value::Array(items))) => {
            let vptr = format!("{ptr}/{}", escape_token(k));
            for (i, item) in items.iter().enumerate() {
                if let Some(v) = load_value(
                    item,
                    &format!("{vptr}/{i}"),
                    calculated,
                    default_language,
                    cx,
                ) {
                    values.push(v);
                }
            }
        }
        Some((k, v)) => cx.err_at(
            &format!("{ptr}/{}", escape_token(k)),
            false,
            format!("Expected an array for Values, found {}.", kind_of(v)),
        ),
    }
    if cx.errors.len() > errors_before {
        return None;
    }
    Some(ContentTemplate {
        index,
        kind,
        type_name: Arc::from(type_name?),
        type_match: type_match?,
        device_id,
        timestamp,
        timestamp_fallback,
        patient_id,
        encounter_id,
        correlation_id,
        values,
    })
}

fn load_expression(
    v: &Value,
    ptr: &str,
    pascal: &str,
    calculated: bool,
    default: Language,
    cx: &mut Ctx<'_>,
) -> Option<Expression> {
    let (source, language, src_ptr) = match v {
        Value::String(s) => (s.as_str(), default, ptr.to_string()),
        Value::Object(o) if calculated => {
            for key in o.keys() {
                if !key.eq_ignore_ascii_case("value") && !key.eq_ignore_ascii_case("language") {
                    cx.err_at(
                        &format!("{ptr}/{}", escape_token(key)),
                        true,
                        format!(
                            "Could not find member '{key}' on object of type 'TemplateExpression'."
                        ),
                    );
                }
            }
            let language = match get_ci(o, "language") {
                None | Some((_, Value::Null)) => default,
                Some((k, Value::String(s))) => match Language::parse(s) {
                    Some(l) => l,
                    None => {
                        cx.err_at(&format!("{ptr}/{}", escape_token(k)), false, format!("Unknown expression language '{s}' for {pascal}: expected JsonPath or JmesPath."));
                        return None;
                    }
                },
                Some((k, other)) => {
                    cx.err_at(
                        &format!("{ptr}/{}", escape_token(k)),
                        false,
                        format!(
                            "Expected a string for the language of {pascal}, found {}.",
                            kind_of(other)
                        ),
                    );
                    return None;
                }
            };
            match get_ci(o, "value") {
                Some((k, Value::String(s))) => {
                    (s.as_str(), language, format!("{ptr}/{}", escape_token(k)))
                }
                Some((k, other)) => {
                    cx.err_at(
                        &format!("{ptr}/{}", escape_token(k)),
                        false,
                        format!(
                            "Expected a string for the value of {pascal}, found {}.",
                            kind_of(other)
                        ),
                    );
                    return None;
                }
                None => {
                    cx.err_at(
                        ptr,
                        false,
                        format!(
                            "Required property 'Value' not found in JSON (expression {pascal})."
                        ),
                    );
                    return None;
                }
            }
        }
        Value::Null => {
            cx.err_at(
                ptr,
                false,
                format!("Required property '{pascal}' expects a value but got null."),
            );
            return None;
        }
        other => {
            let expected = if calculated {
                "a string or an object {\"value\", \"language\"}"
            } else {
                "a string"
            };
            cx.err_at(
                ptr,
                false,
                format!(
                    "Expected {expected} for {pascal}, found {}.",
                    kind_of(other)
                ),
            );
            return None;
        }
    };
    match Expression::compile(source, language) {
        Ok(e) => Some(e),
        Err(msg) => {
            cx.err_at(
                &src_ptr,
                false,
                format!("{pascal} '{source}' does not compile: {msg}"),
            );
            None
        }
    }
}

fn load_value(
    item: &Value,
    ptr: &str,
    calculated: bool,
    default: Language,
    cx: &mut Ctx<'_>,
) -> Option<ValueTemplate> {
    let Some(o) = item.as_object() else {
        cx.err_at(ptr, false, format!("Expected an object {{\"valueName\", \"valueExpression\", \"required\"}}, found {}.", kind_of(item)));
        return None;
    };
    for key in o.keys() {
        if !["valueName", "valueExpression", "required"]
            .iter()
            .any(|f| f.eq_ignore_ascii_case(key))
        {
            let ty = if calculated {
                "CalculatedFunctionValueExpression"
            } else {
                "JsonPathValueExpression"
            };
            cx.err_at(
                &format!("{ptr}/{}", escape_token(key)),
                true,
                format!("Could not find member '{key}' on object of type '{ty}'."),
            );
        }
    }
    let name = match get_ci(o, "valueName") {
        Some((_, Value::String(s))) => Some(s.clone()),
        Some((k, v)) => {
            cx.err_at(
                &format!("{ptr}/{}", escape_token(k)),
                false,
                format!("Expected a string for ValueName, found {}.", kind_of(v)),
            );
            None
        }
        None => {
            cx.err_at(
                ptr,
                false,
                "Required property 'ValueName' not found in JSON.",
            );
            None
        }
    };
    let expression = match get_ci(o, "valueExpression") {
        Some((k, v)) => load_expression(
            v,
            &format!("{ptr}/{}", escape_token(k)),
            "ValueExpression",
            calculated,
            default,
            cx,
        ),
        None => {
            cx.err_at(
                ptr,
                false,
                "Required property 'ValueExpression' not found in JSON.",
            );
            None
        }
    };
    let required = match get_ci(o, "required") {
        None | Some((_, Value::Null)) => false,
        Some((_, Value::Bool(b))) => *b,
        Some((_, Value::String(s))) if s.trim().eq_ignore_ascii_case("true") => true,
        Some((_, Value::String(s))) if s.trim().eq_ignore_ascii_case("false") => false,
        Some((k, v)) => {
            cx.err_at(
                &format!("{ptr}/{}", escape_token(k)),
                false,
                format!("Expected true or false for Required, found {v}."),
            );
            false
        }
    };
    Some(ValueTemplate {
        name: Arc::from(name?),
        expression: expression?,
        required,
    })
}
