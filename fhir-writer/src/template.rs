//! FHIR mapping templates (`CollectionFhir` of `CodeValueFhir`): model and error-collecting loader.

use std::collections::HashMap;

use grouper::PeriodInterval;

use crate::error::{Location, TemplateError};
use normalizer::location::{self as json, pointer_push, Kind, LineCol as Pos, Node};

/// A Coding from a template: `{code, system, display}`, each optional.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FhirCode {
    /// `code`.
    pub code: Option<String>,
    /// `system`.
    pub system: Option<String>,
    /// `display`.
    pub display: Option<String>,
}

/// A CodeableConcept from a template: `{text, codes[]}`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FhirCodeableConcept {
    /// `text`.
    pub text: Option<String>,
    /// `codes`.
    pub codes: Vec<FhirCode>,
}

/// The kind of value a template produces (`valueType`, case-insensitive).
#[derive(Debug, Clone, PartialEq)]
pub enum FhirValueKind {
    /// `valueSampledData`, one slot per `default_period_ms` from the window start.
    SampledData {
        /// `defaultPeriod`, milliseconds (decimal), > 0.
        default_period_ms: f64,
        /// `unit` (set on `origin`).
        unit: Option<String>,
    },
    /// `valueQuantity`; the measurement value must be a decimal number.
    Quantity {
        /// `unit`.
        unit: Option<String>,
        /// `system`.
        system: Option<String>,
        /// `code`.
        code: Option<String>,
    },
    /// `valueString`: the measurement value as is.
    String,
    /// `valueCodeableConcept`: the template's concept; the measurement value only has to exist.
    CodeableConcept {
        /// `text`.
        text: Option<String>,
        /// `codes`.
        codes: Vec<FhirCode>,
    },
}

impl FhirValueKind {
    /// Whether values are laid out over a window (SampledData) rather than one per reading.
    pub fn is_sampled(&self) -> bool {
        matches!(self, FhirValueKind::SampledData { .. })
    }
}

/// A template value: which measurement property (`valueName`) becomes which FHIR value.
#[derive(Debug, Clone, PartialEq)]
pub struct FhirValue {
    /// `valueName`: the measurement property to read. Without it the value is never emitted
    /// (as in the reference).
    pub value_name: Option<String>,
    /// What is produced.
    pub kind: FhirValueKind,
}

/// A template component: `{codes[], value}`.
#[derive(Debug, Clone, PartialEq)]
pub struct FhirComponent {
    /// `codes`.
    pub codes: Vec<FhirCode>,
    /// `value` (its `valueName` is required for components).
    pub value: FhirValue,
}

/// One `CodeValueFhir` template.
#[derive(Debug, Clone, PartialEq)]
pub struct CodeValueFhirTemplate {
    /// `typeName`: binds to the measurement type (case-insensitively).
    pub type_name: String,
    /// `periodInterval` (default 0).
    pub period_interval: PeriodInterval,
    /// `codes`: Observation.code codings.
    pub codes: Vec<FhirCode>,
    /// `category`.
    pub category: Vec<FhirCodeableConcept>,
    /// `value`.
    pub value: Option<FhirValue>,
    /// `components`.
    pub components: Vec<FhirComponent>,
}

impl CodeValueFhirTemplate {
    /// Every value slot of the template: the main value, then the components' values.
    pub fn values(&self) -> impl Iterator<Item = &FhirValue> {
        self.value
            .iter()
            .chain(self.components.iter().map(|c| &c.value))
    }

    /// Whether Observations of this template are point-in-time, one per reading, whatever the
    /// `periodInterval`: true as soon as the main value or a component is a Quantity, String or
    /// CodeableConcept (the MedTech docs' rule; the reference instead fails when an hour or day
    /// window holds several readings, its issue #82). SampledData-only templates (and templates
    /// without values) use the `periodInterval` windows.
    pub fn is_point_in_time(&self) -> bool {
        self.values().any(|v| !v.kind.is_sampled())
    }

    /// The interval the grouper should window this template's measurements by.
    pub fn effective_interval(&self) -> PeriodInterval {
        if self.is_point_in_time() {
            PeriodInterval::Instant
        } else {
            self.period_interval
        }
    }

    /// Loads one `{"templateType": "CodeValueFhir", "template": {...}}` container, reporting every
    /// problem. The template is returned only when it has no error.
    pub fn load(text: &str) -> (Option<CodeValueFhirTemplate>, Vec<TemplateError>) {
        let mut errors = Vec::new();
        let root = match json::parse(text) {
            Ok(n) => n,
            Err(e) => {
                errors.push(syntax_error(e));
                return (None, errors);
            }
        };
        let t = load_container(&root, "", &mut errors);
        (t.filter(|_| errors.is_empty()), errors)
    }
}

/// A loaded FHIR mapping: templates looked up by typeName, case-insensitively.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct FhirTemplates {
    templates: Vec<CodeValueFhirTemplate>,
    by_name: HashMap<String, usize>,
}

impl FhirTemplates {
    /// Loads a `CollectionFhir` mapping, reporting every problem (line:column and JSON pointer).
    ///
    /// As in the reference, entries without errors are still registered when others have errors;
    /// callers that must reject a mapping with any error (the service) check that the error list
    /// is empty, or use [`FhirTemplates::parse`].
    pub fn load(text: &str) -> (FhirTemplates, Vec<TemplateError>) {
        let mut errors = Vec::new();
        let mut out = FhirTemplates::default();
        let root = match json::parse(text) {
            Ok(n) => n,
            Err(e) => {
                errors.push(syntax_error(e));
                return (out, errors);
            }
        };
        let Some(items) =
            container_body(&root, "", "CollectionFhirTemplate", "an array", &mut errors)
        else {
            return (out, errors);
        };
        let Kind::Array(items) = &items.0.kind else {
            return (out, errors);
        };
        let base = pointer_push("", &items_member_name(&root));
        let mut seen: HashMap<String, ()> = HashMap::new();
        for (i, item) in items.iter().enumerate() {
            let ptr = pointer_push(&base, &i.to_string());
            let before = errors.len();
            let template = load_container(item, &ptr, &mut errors);
            // Name checks run on the raw typeName, so they are reported even when the entry has
            // other errors (as the reference's lookup registration does).
            let name_at = type_name_location(item, &ptr);
            let mut name_ok = true;
            if let Some(name) = raw_type_name(item) {
                if name.trim().is_empty() {
                    errors.push(TemplateError::EmptyTypeName { at: name_at });
                    name_ok = false;
                } else if seen.insert(name.to_lowercase(), ()).is_some() {
                    errors.push(TemplateError::DuplicateTypeName {
                        type_name: name,
                        at: name_at,
                    });
                    name_ok = false;
                }
            }
            if let Some(template) = template {
                if name_ok && errors.len() == before {
                    out.by_name
                        .insert(template.type_name.to_lowercase(), out.templates.len());
                    out.templates.push(template);
                }
            }
        }
        (out, errors)
    }

    /// Loads a mapping that must be entirely valid.
    pub fn parse(text: &str) -> Result<FhirTemplates, Vec<TemplateError>> {
        let (t, errors) = FhirTemplates::load(text);
        if errors.is_empty() {
            Ok(t)
        } else {
            Err(errors)
        }
    }

    /// Builds a mapping from templates (later duplicates are ignored).
    pub fn from_templates(templates: impl IntoIterator<Item = CodeValueFhirTemplate>) -> Self {
        let mut out = FhirTemplates::default();
        for t in templates {
            let key = t.type_name.to_lowercase();
            if !out.by_name.contains_key(&key) {
                out.by_name.insert(key, out.templates.len());
                out.templates.push(t);
            }
        }
        out
    }

    /// The template for a measurement type (case-insensitive), if any.
    pub fn get(&self, type_name: &str) -> Option<&CodeValueFhirTemplate> {
        self.by_name
            .get(&type_name.to_lowercase())
            .and_then(|&i| self.templates.get(i))
    }

    /// All templates in file order.
    pub fn templates(&self) -> &[CodeValueFhirTemplate] {
        &self.templates
    }
}

fn syntax_error(e: json::SyntaxError) -> TemplateError {
    TemplateError::InvalidJson {
        message: e.message,
        at: Location {
            pointer: String::new(),
            line: e.pos.line,
            column: e.pos.column,
        },
    }
}

fn loc(pos: Pos, pointer: &str) -> Location {
    Location {
        pointer: pointer.to_string(),
        line: pos.line,
        column: pos.column,
    }
}

fn items_member_name(root: &Node) -> String {
    root.member("template")
        .map(|m| m.name.clone())
        .unwrap_or_else(|| "template".into())
}

fn raw_type_name(container: &Node) -> Option<String> {
    let body = container.member("template")?;
    body.value
        .member("typeName")
        .and_then(|m| scalar_text(&m.value))
}

fn type_name_location(container: &Node, ptr: &str) -> Location {
    let body = container.member("template");
    match body.and_then(|b| b.value.member("typeName").map(|m| (b, m))) {
        Some((b, m)) => loc(
            m.value.pos,
            &pointer_push(&pointer_push(ptr, &b.name), &m.name),
        ),
        None => loc(container.pos, ptr),
    }
}

/// Whether a container's templateType names `expected` (case-insensitive; with or without the
/// `Template` suffix), as the reference's `MatchTemplateName`.
fn matches_type(actual: &str, expected: &str) -> bool {
    actual.eq_ignore_ascii_case(expected)
        || format!("{actual}Template").eq_ignore_ascii_case(expected)
}

/// Checks a `{templateType, template}` container of type `expected` and returns its body (with
/// its pointer) when it has the wanted JSON type.
fn container_body<'a>(
    node: &'a Node,
    ptr: &str,
    expected: &str,
    body_type: &str,
    errors: &mut Vec<TemplateError>,
) -> Option<(&'a Node, String)> {
    if !matches!(node.kind, Kind::Object(_)) {
        errors.push(TemplateError::WrongType {
            member: "templateType".into(),
            expected: "an object with templateType and template".into(),
            found: node.type_name().into(),
            at: loc(node.pos, ptr),
        });
        return None;
    }
    let (actual, at) = match node.member("templateType") {
        Some(m) => (
            scalar_text(&m.value).unwrap_or_default(),
            loc(m.value.pos, &pointer_push(ptr, &m.name)),
        ),
        None => (String::new(), loc(node.pos, ptr)),
    };
    if !matches_type(&actual, expected) {
        errors.push(TemplateError::WrongTemplateType {
            expected: expected.into(),
            actual,
            at,
        });
        return None;
    }
    let Some(body) = node.member("template") else {
        errors.push(TemplateError::MissingMember {
            member: "template".into(),
            at: loc(node.pos, ptr),
        });
        return None;
    };
    let body_ptr = pointer_push(ptr, &body.name);
    let ok = match body.value.kind {
        Kind::Array(_) => body_type == "an array",
        Kind::Object(_) => body_type == "an object",
        _ => false,
    };
    if !ok {
        errors.push(TemplateError::WrongType {
            member: "template".into(),
            expected: format!("{body_type} (template type {expected})"),
            found: body.value.type_name().into(),
            at: loc(body.value.pos, &body_ptr),
        });
        return None;
    }
    Some((&body.value, body_ptr))
}

/// Loads one collection entry (must be `CodeValueFhir`).
fn load_container(
    node: &Node,
    ptr: &str,
    errors: &mut Vec<TemplateError>,
) -> Option<CodeValueFhirTemplate> {
    if let Kind::Object(_) = node.kind {
        if let Some(m) = node.member("templateType") {
            let actual = scalar_text(&m.value).unwrap_or_default();
            if !matches_type(&actual, "CodeValueFhirTemplate") {
                errors.push(TemplateError::UnknownTemplateType {
                    template_type: actual,
                    at: loc(m.value.pos, &pointer_push(ptr, &m.name)),
                });
                return None;
            }
        }
    }
    let (body, body_ptr) = container_body(node, ptr, "CodeValueFhirTemplate", "an object", errors)?;
    load_code_value(body, &body_ptr, errors)
}

/// Text of a scalar as Newtonsoft converts it to a string; `None` for null, arrays and objects.
fn scalar_text(node: &Node) -> Option<String> {
    match &node.kind {
        Kind::String(s) => Some(s.clone()),
        Kind::Number(n) => Some(n.clone()),
        Kind::Bool(true) => Some("True".into()),
        Kind::Bool(false) => Some("False".into()),
        _ => None,
    }
}

/// Reads the members of one object: reports unknown members (when `strict`), hands out known
/// ones with their pointers.
struct Obj<'a> {
    node: &'a Node,
    ptr: String,
}

impl<'a> Obj<'a> {
    fn new(
        node: &'a Node,
        ptr: &str,
        member: &str,
        known: &[&str],
        strict: bool,
        errors: &mut Vec<TemplateError>,
    ) -> Option<Obj<'a>> {
        let Kind::Object(members) = &node.kind else {
            errors.push(TemplateError::WrongType {
                member: member.into(),
                expected: "an object".into(),
                found: node.type_name().into(),
                at: loc(node.pos, ptr),
            });
            return None;
        };
        if strict {
            for m in members {
                if !known.iter().any(|k| k.eq_ignore_ascii_case(&m.name)) {
                    errors.push(TemplateError::UnknownMember {
                        member: m.name.clone(),
                        at: loc(m.name_pos, &pointer_push(ptr, &m.name)),
                    });
                }
            }
        }
        Some(Obj {
            node,
            ptr: ptr.to_string(),
        })
    }

    /// The member's value (None when absent or null) and its pointer.
    fn get(&self, name: &str) -> Option<(&'a Node, String)> {
        let m = self.node.member(name)?;
        if m.value.kind == Kind::Null {
            return None;
        }
        Some((&m.value, pointer_push(&self.ptr, &m.name)))
    }

    fn string(&self, name: &str, errors: &mut Vec<TemplateError>) -> Option<String> {
        let (node, ptr) = self.get(name)?;
        let s = scalar_text(node);
        if s.is_none() {
            errors.push(TemplateError::WrongType {
                member: name.into(),
                expected: "a string".into(),
                found: node.type_name().into(),
                at: loc(node.pos, &ptr),
            });
        }
        s
    }

    fn required_string(&self, name: &str, errors: &mut Vec<TemplateError>) -> Option<String> {
        if self.get(name).is_none() {
            errors.push(TemplateError::MissingMember {
                member: name.into(),
                at: loc(self.node.pos, &self.ptr),
            });
            return None;
        }
        self.string(name, errors)
    }

    fn array(&self, name: &str, errors: &mut Vec<TemplateError>) -> Option<(&'a [Node], String)> {
        let (node, ptr) = self.get(name)?;
        match &node.kind {
            Kind::Array(items) => Some((items.as_slice(), ptr)),
            _ => {
                errors.push(TemplateError::WrongType {
                    member: name.into(),
                    expected: "an array".into(),
                    found: node.type_name().into(),
                    at: loc(node.pos, &ptr),
                });
                None
            }
        }
    }

    fn missing(&self, name: &str, errors: &mut Vec<TemplateError>) {
        errors.push(TemplateError::MissingMember {
            member: name.into(),
            at: loc(self.node.pos, &self.ptr),
        });
    }
}

const CODE_VALUE_MEMBERS: &[&str] = &[
    "typeName",
    "periodInterval",
    "codes",
    "category",
    "value",
    "components",
];

fn load_code_value(
    node: &Node,
    ptr: &str,
    errors: &mut Vec<TemplateError>,
) -> Option<CodeValueFhirTemplate> {
    let before = errors.len();
    let obj = Obj::new(node, ptr, "template", CODE_VALUE_MEMBERS, true, errors)?;
    let type_name = obj.required_string("typeName", errors);
    let period_interval = match obj.get("periodInterval") {
        None => PeriodInterval::Instant,
        Some((n, p)) => period_interval(n, &p, errors).unwrap_or(PeriodInterval::Instant),
    };
    let codes = match obj.array("codes", errors) {
        Some((items, p)) => codes(items, &p, true, errors),
        None => {
            if obj.get("codes").is_none() {
                obj.missing("codes", errors);
            }
            Vec::new()
        }
    };
    let mut category = Vec::new();
    if let Some((items, p)) = obj.array("category", errors) {
        for (i, item) in items.iter().enumerate() {
            let ip = pointer_push(&p, &i.to_string());
            if let Some(c) = codeable_concept(item, &ip, "category", true, errors) {
                category.push(c);
            }
        }
    }
    let value = obj
        .get("value")
        .and_then(|(n, p)| fhir_value(n, &p, "value", errors));
    let mut components = Vec::new();
    if let Some((items, p)) = obj.array("components", errors) {
        for (i, item) in items.iter().enumerate() {
            let ip = pointer_push(&p, &i.to_string());
            if let Some(c) = component(item, &ip, errors) {
                components.push(c);
            }
        }
    }
    if errors.len() > before {
        return None;
    }
    Some(CodeValueFhirTemplate {
        type_name: type_name?,
        period_interval,
        codes,
        category,
        value,
        components,
    })
}

fn period_interval(
    node: &Node,
    ptr: &str,
    errors: &mut Vec<TemplateError>,
) -> Option<PeriodInterval> {
    let parsed = match &node.kind {
        Kind::Number(n) => n
            .parse::<i64>()
            .ok()
            .or_else(|| {
                n.parse::<f64>()
                    .ok()
                    .filter(|f| f.fract() == 0.0 && f.abs() < 1e9)
                    .map(|f| f as i64)
            })
            .and_then(PeriodInterval::from_minutes),
        Kind::String(s) => s
            .trim()
            .parse::<i64>()
            .ok()
            .and_then(PeriodInterval::from_minutes)
            .or_else(|| PeriodInterval::from_name(s.trim())),
        _ => None,
    };
    if parsed.is_none() {
        errors.push(TemplateError::InvalidValue {
            member: "periodInterval".into(),
            value: raw(node),
            reason: "expected 0 (single), 60 (hourly), 1440 (daily) or -1 (correlation id)".into(),
            at: loc(node.pos, ptr),
        });
    }
    parsed
}

fn raw(node: &Node) -> String {
    match &node.kind {
        Kind::String(s) => format!("\"{s}\""),
        Kind::Number(n) => n.clone(),
        Kind::Bool(b) => b.to_string(),
        Kind::Null => "null".into(),
        Kind::Array(_) => "[...]".into(),
        Kind::Object(_) => "{...}".into(),
    }
}

fn codes(
    items: &[Node],
    ptr: &str,
    strict: bool,
    errors: &mut Vec<TemplateError>,
) -> Vec<FhirCode> {
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let ip = pointer_push(ptr, &i.to_string());
        if let Some(o) = Obj::new(
            item,
            &ip,
            "codes",
            &["code", "system", "display"],
            strict,
            errors,
        ) {
            out.push(FhirCode {
                code: o.string("code", errors),
                system: o.string("system", errors),
                display: o.string("display", errors),
            });
        }
    }
    out
}

fn codeable_concept(
    node: &Node,
    ptr: &str,
    member: &str,
    strict: bool,
    errors: &mut Vec<TemplateError>,
) -> Option<FhirCodeableConcept> {
    let o = Obj::new(node, ptr, member, &["text", "codes"], strict, errors)?;
    let text = o.string("text", errors);
    let codes = o
        .array("codes", errors)
        .map(|(items, p)| codes(items, &p, strict, errors))
        .unwrap_or_default();
    Some(FhirCodeableConcept { text, codes })
}

fn component(node: &Node, ptr: &str, errors: &mut Vec<TemplateError>) -> Option<FhirComponent> {
    let o = Obj::new(node, ptr, "components", &["codes", "value"], true, errors)?;
    let codes = o
        .array("codes", errors)
        .map(|(items, p)| codes(items, &p, true, errors))
        .unwrap_or_default();
    let Some((vn, vp)) = o.get("value") else {
        o.missing("value", errors);
        return None;
    };
    let value = fhir_value(vn, &vp, "value", errors)?;
    if value
        .value_name
        .as_deref()
        .is_none_or(|s| s.trim().is_empty())
    {
        errors.push(TemplateError::MissingMember {
            member: "valueName".into(),
            at: loc(vn.pos, &vp),
        });
        return None;
    }
    Some(FhirComponent { codes, value })
}

/// Reads a value object. Unknown members inside it are ignored, as the reference does (its value
/// converter deserializes with default, lenient settings), so deployed mappings keep loading.
fn fhir_value(
    node: &Node,
    ptr: &str,
    member: &str,
    errors: &mut Vec<TemplateError>,
) -> Option<FhirValue> {
    let o = Obj::new(node, ptr, member, &[], false, errors)?;
    let value_name = o.string("valueName", errors);
    let Some(value_type) = o.string("valueType", errors) else {
        if o.get("valueType").is_none() {
            o.missing("valueType", errors);
        }
        return None;
    };
    let vt_at = o
        .get("valueType")
        .map(|(n, p)| loc(n.pos, &p))
        .unwrap_or_else(|| loc(node.pos, ptr));
    let kind = match value_type.to_ascii_lowercase().as_str() {
        "sampleddata" => {
            let default_period_ms = match o.get("defaultPeriod") {
                None => {
                    o.missing("defaultPeriod", errors);
                    return None;
                }
                Some((n, p)) => {
                    let v = scalar_text(n).and_then(|s| s.trim().parse::<f64>().ok());
                    match v {
                        Some(v) if v.is_finite() && v >= 0.0001 => v,
                        _ => {
                            errors.push(TemplateError::InvalidValue {
                                member: "defaultPeriod".into(),
                                value: raw(n),
                                reason: "expected a positive number of milliseconds".into(),
                                at: loc(n.pos, &p),
                            });
                            return None;
                        }
                    }
                }
            };
            FhirValueKind::SampledData {
                default_period_ms,
                unit: o.string("unit", errors),
            }
        }
        "quantity" => FhirValueKind::Quantity {
            unit: o.string("unit", errors),
            system: o.string("system", errors),
            code: o.string("code", errors),
        },
        "string" => FhirValueKind::String,
        "codeableconcept" => FhirValueKind::CodeableConcept {
            text: o.string("text", errors),
            codes: o
                .array("codes", errors)
                .map(|(items, p)| codes(items, &p, false, errors))
                .unwrap_or_default(),
        },
        _ => {
            errors.push(TemplateError::UnknownValueType {
                value_type,
                at: vt_at,
            });
            return None;
        }
    };
    Some(FhirValue { value_name, kind })
}
