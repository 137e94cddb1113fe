//! The FHIR R4 vital-signs profile (`http://hl7.org/fhir/StructureDefinition/vitalsigns` and
//! its per-vital profiles, FHIR R4 §observation-vitalsigns): what a FHIR mapping template must
//! produce for its Observations to conform, checked on the template itself with the template's
//! line and column ([`check`]), and the profiles an Observation claims in `meta.profile`
//! ([`stamp`]).
//!
//! A template is checked when one of its codes is a vital sign's LOINC code (the profile's
//! `observation-vitalsignresult` value set, and 59408-5, pulse oximetry, which MedTech
//! templates use for SpO2). What the profile requires of such an Observation, and what a
//! template decides, is checked:
//!
//! * `category` holds `observation-category#vital-signs` (the `VSCat` slice, 1..1);
//! * a `valueQuantity` has `unit`, `system` = `http://unitsofmeasure.org` and a `code` the
//!   vital's profile allows (heart and respiratory rate `/min`, SpO2 `%`, temperature `Cel` or
//!   `[degF]`, weight `kg`, `g` or `[lb_av]`, height and head circumference `cm` or `[in_i]`,
//!   BMI `kg/m2`, blood pressure `mm[Hg]`); a component's Quantity a code of
//!   `ucum-vitals-common`;
//! * the blood-pressure panel (85354-9) has no value of its own and its systolic (8480-6) and
//!   diastolic (8462-4) components, both in `mm[Hg]`;
//! * oxygen saturation is coded 2708-6 (the `oxygensat` profile's code), also when the template
//!   says 59408-5;
//! * vs-2: a value or components (the writer never writes `dataAbsentReason`).
//!
//! `subject` and `effective[x]` (both 1..1) the writer always sets; `status` too. A
//! SampledData value (MedTech's hourly heart rate) is allowed: the profile leaves `value[x]`'s
//! type open and constrains only `valueQuantity`.
//!
//! The value sets are copied as facts from the R4 definitions (`valuesets.json` of the FHIR
//! specification), not looked up at run time: the check runs offline.

use std::fmt;

use crate::error::Location;
use normalizer::location::{self as json, pointer_push, Kind, Node};

/// LOINC's code system URI.
pub const LOINC: &str = "http://loinc.org";
/// UCUM's code system URI.
pub const UCUM: &str = "http://unitsofmeasure.org";
/// The observation-category code system.
pub const CATEGORY_SYSTEM: &str = "http://terminology.hl7.org/CodeSystem/observation-category";
/// The base vital-signs profile.
pub const BASE_PROFILE: &str = "http://hl7.org/fhir/StructureDefinition/vitalsigns";

/// One vital sign of the profile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Vital {
    /// The LOINC code.
    pub loinc: &'static str,
    /// What it is, for messages.
    pub name: &'static str,
    /// Its own profile (`http://hl7.org/fhir/StructureDefinition/<name>`), if it has one.
    pub profile: Option<&'static str>,
    /// The UCUM codes its `valueQuantity` may have (empty: the panels, which have no value).
    pub units: &'static [&'static str],
}

const PER_MIN: &[&str] = &["/min"];
const LENGTH: &[&str] = &["cm", "[in_i]"];
const MM_HG: &[&str] = &["mm[Hg]"];

/// `ucum-vitals-common`: the units a vital-signs component's Quantity may have.
pub const VITALS_COMMON_UNITS: &[&str] = &[
    "%", "cm", "[in_i]", "kg", "g", "[lb_av]", "Cel", "[degF]", "mm[Hg]", "/min", "kg/m2", "m2",
];

/// The LOINC codes of `observation-vitalsignresult`, with their profiles and units.
pub const VITALS: &[Vital] = &[
    Vital {
        loinc: "85353-1",
        name: "vital signs panel",
        profile: Some("vitalspanel"),
        units: &[],
    },
    Vital {
        loinc: "9279-1",
        name: "respiratory rate",
        profile: Some("resprate"),
        units: PER_MIN,
    },
    Vital {
        loinc: "8867-4",
        name: "heart rate",
        profile: Some("heartrate"),
        units: PER_MIN,
    },
    Vital {
        loinc: "2708-6",
        name: "oxygen saturation",
        profile: Some("oxygensat"),
        units: &["%"],
    },
    Vital {
        loinc: "8310-5",
        name: "body temperature",
        profile: Some("bodytemp"),
        units: &["Cel", "[degF]"],
    },
    Vital {
        loinc: "8302-2",
        name: "body height",
        profile: Some("bodyheight"),
        units: LENGTH,
    },
    Vital {
        loinc: "9843-4",
        name: "head circumference",
        profile: Some("headcircum"),
        units: LENGTH,
    },
    Vital {
        loinc: "29463-7",
        name: "body weight",
        profile: Some("bodyweight"),
        units: &["kg", "g", "[lb_av]"],
    },
    Vital {
        loinc: "39156-5",
        name: "body mass index",
        profile: Some("bmi"),
        units: &["kg/m2"],
    },
    Vital {
        loinc: "85354-9",
        name: "blood pressure panel",
        profile: Some("bp"),
        units: &[],
    },
    Vital {
        loinc: "8480-6",
        name: "systolic blood pressure",
        profile: None,
        units: MM_HG,
    },
    Vital {
        loinc: "8462-4",
        name: "diastolic blood pressure",
        profile: None,
        units: MM_HG,
    },
    Vital {
        loinc: "8478-0",
        name: "mean blood pressure",
        profile: None,
        units: MM_HG,
    },
];

/// Oxygen saturation by pulse oximetry: not in the R4 value set (US Core's pulse-oximetry
/// code), but what SpO2 templates use; the R4 `oxygensat` profile wants 2708-6 beside it.
pub const PULSE_OXIMETRY: &str = "59408-5";
const OXYGEN_SATURATION: &str = "2708-6";
const BP_PANEL: &str = "85354-9";
const VITALS_PANEL: &str = "85353-1";
const SYSTOLIC: &str = "8480-6";
const DIASTOLIC: &str = "8462-4";

/// The vital a LOINC code is (59408-5 counts as oxygen saturation).
pub fn vital(loinc: &str) -> Option<&'static Vital> {
    let loinc = if loinc == PULSE_OXIMETRY {
        OXYGEN_SATURATION
    } else {
        loinc
    };
    VITALS.iter().find(|v| v.loinc == loinc)
}

/// The profiles an Observation with these `code.coding`s conforms to when its template passes
/// [`check`]: the base profile and the vital's own, as canonical URLs. Empty when no coding is
/// a vital sign.
pub fn profiles_for<'a>(codings: impl IntoIterator<Item = (&'a str, &'a str)>) -> Vec<String> {
    let mut out = Vec::new();
    for (system, code) in codings {
        if system != LOINC {
            continue;
        }
        if let Some(v) = vital(code) {
            if out.is_empty() {
                out.push(BASE_PROFILE.to_string());
            }
            if let Some(p) = v.profile {
                let url = format!("http://hl7.org/fhir/StructureDefinition/{p}");
                if !out.contains(&url) {
                    out.push(url);
                }
            }
        }
    }
    out
}

/// Adds the profiles of [`profiles_for`] its `code` to an Observation's `meta.profile` (those
/// not there yet); an Observation that is no vital sign is left as it is.
pub fn stamp(observation: &mut serde_json::Value) {
    let codings: Vec<(String, String)> = observation["code"]["coding"]
        .as_array()
        .map(|cs| {
            cs.iter()
                .filter_map(|c| Some((c["system"].as_str()?.into(), c["code"].as_str()?.into())))
                .collect()
        })
        .unwrap_or_default();
    let profiles = profiles_for(codings.iter().map(|(s, c)| (s.as_str(), c.as_str())));
    if profiles.is_empty() || !observation.is_object() {
        return;
    }
    let meta = &mut observation["meta"];
    if !meta.is_object() {
        *meta = serde_json::json!({});
    }
    let list = &mut meta["profile"];
    if !list.is_array() {
        *list = serde_json::json!([]);
    }
    let Some(list) = list.as_array_mut() else {
        return;
    };
    for p in profiles {
        if !list.iter().any(|v| v.as_str() == Some(&p)) {
            list.push(serde_json::Value::String(p));
        }
    }
}

/// One way a template's Observations would not conform to the vital-signs profile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// The template's `typeName`.
    pub type_name: String,
    /// Where in the mapping: the member at fault, or the template's body when one is missing.
    pub at: Location,
    /// What is wrong and what the profile wants.
    pub message: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "line {}, column {}: FHIR template \"{}\": {}",
            self.at.line, self.at.column, self.type_name, self.message
        )
    }
}

impl Finding {
    /// `file:line:column: at /pointer: FHIR template "…": message`, as template errors are
    /// reported.
    pub fn report_for(&self, file: &std::path::Path, severity: &str) -> String {
        let pointer = if self.at.pointer.is_empty() {
            "(root)"
        } else {
            &self.at.pointer
        };
        format!(
            "{}:{}:{}: {severity}: at {pointer}: FHIR template \"{}\" (vital-signs profile): {}",
            file.display(),
            self.at.line,
            self.at.column,
            self.type_name,
            self.message
        )
    }
}

/// Checks every `CodeValueFhir` template of a `CollectionFhir` mapping that maps a vital sign.
/// Text that is not a mapping gives no findings: [`crate::FhirTemplates::load`] reports that.
pub fn check(text: &str) -> Vec<Finding> {
    let Ok(root) = json::parse(text) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let Some(items) = root.member("template") else {
        return out;
    };
    let Kind::Array(list) = &items.value.kind else {
        return out;
    };
    let base = pointer_push("", &items.name);
    for (i, item) in list.iter().enumerate() {
        let ptr = pointer_push(&base, &i.to_string());
        if let Some(body) = item.member("template") {
            let ptr = pointer_push(&ptr, &body.name);
            check_template(&body.value, &ptr, &mut out);
        }
    }
    out
}

/// A member of `node` with its pointer.
struct At<'a> {
    node: &'a Node,
    ptr: String,
}

fn member<'a>(node: &'a Node, ptr: &str, name: &str) -> Option<At<'a>> {
    node.member(name).map(|m| At {
        node: &m.value,
        ptr: pointer_push(ptr, &m.name),
    })
}

fn text(node: &Node) -> Option<&str> {
    match &node.kind {
        Kind::String(s) => Some(s),
        _ => None,
    }
}

fn items(node: &Node) -> &[Node] {
    match &node.kind {
        Kind::Array(a) => a,
        _ => &[],
    }
}

fn location(at: &At<'_>) -> Location {
    Location::new(at.ptr.clone(), at.node.pos)
}

/// The `{system, code}` of a template's `codes` entries.
fn codings<'a>(codes: Option<&At<'a>>) -> Vec<(Option<&'a str>, Option<&'a str>)> {
    codes
        .map(|c| {
            items(c.node)
                .iter()
                .map(|n| {
                    (
                        n.member("system").and_then(|m| text(&m.value)),
                        n.member("code").and_then(|m| text(&m.value)),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The vital a template's codes name (LOINC only), and whether 2708-6 itself is among them.
fn vital_of(codes: &[(Option<&str>, Option<&str>)]) -> Option<(&'static Vital, bool)> {
    let loinc: Vec<&str> = codes
        .iter()
        .filter(|(s, _)| *s == Some(LOINC))
        .filter_map(|(_, c)| *c)
        .collect();
    let v = loinc.iter().find_map(|c| vital(c))?;
    Some((v, loinc.contains(&OXYGEN_SATURATION)))
}

fn check_template(body: &Node, ptr: &str, out: &mut Vec<Finding>) {
    let here = At {
        node: body,
        ptr: ptr.to_string(),
    };
    let type_name = body
        .member("typeName")
        .and_then(|m| text(&m.value))
        .unwrap_or("")
        .to_string();
    let codes = member(body, ptr, "codes");
    let Some((vital, has_2708)) = vital_of(&codings(codes.as_ref())) else {
        return;
    };
    let mut find = |at: Location, message: String| {
        out.push(Finding {
            type_name: type_name.clone(),
            at,
            message,
        })
    };
    let codes_at = codes
        .as_ref()
        .map(location)
        .unwrap_or_else(|| location(&here));
    if vital.loinc == OXYGEN_SATURATION && !has_2708 {
        find(
            codes_at.clone(),
            format!(
                "{} is coded {PULSE_OXIMETRY} only; the oxygensat profile requires the LOINC \
                 coding {OXYGEN_SATURATION} (add it beside {PULSE_OXIMETRY})",
                vital.name
            ),
        );
    }
    // category: the VSCat slice.
    let category = member(body, ptr, "category");
    let has_category = category.as_ref().is_some_and(|c| {
        items(c.node).iter().any(|concept| {
            concept
                .member("codes")
                .map(|m| items(&m.value))
                .unwrap_or(&[])
                .iter()
                .any(|coding| {
                    coding.member("system").and_then(|m| text(&m.value)) == Some(CATEGORY_SYSTEM)
                        && coding.member("code").and_then(|m| text(&m.value)) == Some("vital-signs")
                })
        })
    });
    if !has_category {
        find(
            category
                .as_ref()
                .map(location)
                .unwrap_or_else(|| location(&here)),
            format!(
                "a {} Observation needs the category {CATEGORY_SYSTEM}|vital-signs \
                 (\"category\": [{{\"codes\": [{{\"system\": \"{CATEGORY_SYSTEM}\", \"code\": \
                 \"vital-signs\"}}]}}])",
                vital.name
            ),
        );
    }
    let value = member(body, ptr, "value");
    let components = member(body, ptr, "components");
    let component_list: Vec<At<'_>> = components
        .as_ref()
        .map(|c| {
            items(c.node)
                .iter()
                .enumerate()
                .map(|(i, n)| At {
                    node: n,
                    ptr: pointer_push(&c.ptr, &i.to_string()),
                })
                .collect()
        })
        .unwrap_or_default();
    let panel = vital.loinc == BP_PANEL || vital.loinc == VITALS_PANEL;
    match &value {
        Some(v) if panel && value_type(v).is_some_and(|t| t.eq_ignore_ascii_case("Quantity")) => {
            find(
                location(v),
                format!(
                    "the {} has no value of its own (the profile allows no valueQuantity): \
                     its values are components",
                    vital.name
                ),
            );
        }
        Some(v) => check_quantity(v, vital.name, vital.units, &mut find),
        None if component_list.is_empty() && vital.loinc != VITALS_PANEL => find(
            location(&here),
            format!(
                "no value and no components: a {} Observation needs one (vs-2)",
                vital.name
            ),
        ),
        None => {}
    }
    let mut seen_systolic = false;
    let mut seen_diastolic = false;
    for c in &component_list {
        let ccodes = member(c.node, &c.ptr, "codes");
        let list = codings(ccodes.as_ref());
        let loinc = |code: &str| list.contains(&(Some(LOINC), Some(code)));
        seen_systolic |= loinc(SYSTOLIC);
        seen_diastolic |= loinc(DIASTOLIC);
        let (name, units) = match vital_of(&list) {
            Some((cv, _)) if !cv.units.is_empty() => (cv.name, cv.units),
            _ => ("component", VITALS_COMMON_UNITS),
        };
        if let Some(v) = member(c.node, &c.ptr, "value") {
            check_quantity(&v, name, units, &mut find);
        }
    }
    if vital.loinc == BP_PANEL {
        for (seen, code, name) in [
            (seen_systolic, SYSTOLIC, "systolic"),
            (seen_diastolic, DIASTOLIC, "diastolic"),
        ] {
            if !seen {
                find(
                    components
                        .as_ref()
                        .map(location)
                        .unwrap_or_else(|| location(&here)),
                    format!(
                        "the blood pressure panel needs a {name} component coded \
                         {LOINC}|{code} in mm[Hg]"
                    ),
                );
            }
        }
    }
}

fn value_type<'a>(value: &At<'a>) -> Option<&'a str> {
    value.node.member("valueType").and_then(|m| text(&m.value))
}

/// A Quantity value's `unit`, `system` and `code` against the units allowed for `name`. Other
/// value types are not constrained by the profile.
fn check_quantity(
    value: &At<'_>,
    name: &str,
    units: &[&str],
    find: &mut impl FnMut(Location, String),
) {
    if !value_type(value).is_some_and(|t| t.eq_ignore_ascii_case("Quantity")) {
        return;
    }
    let allowed = units.join("`, `");
    let unit = member(value.node, &value.ptr, "unit");
    let system = member(value.node, &value.ptr, "system");
    let code = member(value.node, &value.ptr, "code");
    if unit.as_ref().and_then(|u| text(u.node)).is_none() {
        find(
            location(value),
            format!("the {name} Quantity has no \"unit\" (the profile requires one)"),
        );
    }
    match system.as_ref().map(|s| (s, text(s.node))) {
        Some((_, Some(UCUM))) => {}
        Some((at, other)) => find(
            location(at),
            format!(
                "the {name} Quantity's system is {}, not UCUM ({UCUM})",
                other.map_or("not a string".to_string(), |s| format!("\"{s}\""))
            ),
        ),
        None => find(
            location(value),
            format!("the {name} Quantity has no \"system\": it must be UCUM ({UCUM})"),
        ),
    }
    match code.as_ref().map(|c| (c, text(c.node))) {
        Some((_, Some(c))) if units.contains(&c) => {}
        Some((at, Some(c))) => find(
            location(at),
            format!("the {name} Quantity's code \"{c}\" is not the profile's: use `{allowed}`"),
        ),
        Some((at, None)) => find(
            location(at),
            format!("the {name} Quantity's code is not a string: use `{allowed}`"),
        ),
        None => find(
            location(value),
            format!("the {name} Quantity has no UCUM \"code\": use `{allowed}`"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mapping(body: serde_json::Value) -> String {
        serde_json::to_string_pretty(&serde_json::json!({
            "templateType": "CollectionFhir",
            "template": [{"templateType": "CodeValueFhir", "template": body}]
        }))
        .unwrap()
    }

    fn vs_category() -> serde_json::Value {
        serde_json::json!([{"codes": [{"system": CATEGORY_SYSTEM, "code": "vital-signs"}]}])
    }

    fn messages(body: serde_json::Value) -> Vec<String> {
        check(&mapping(body))
            .into_iter()
            .map(|f| f.message)
            .collect()
    }

    #[test]
    fn a_conforming_heart_rate_has_no_findings_as_quantity_or_sampled_data() {
        for value in [
            serde_json::json!({"valueType": "Quantity", "valueName": "hr", "unit": "beats/minute", "system": UCUM, "code": "/min"}),
            serde_json::json!({"valueType": "SampledData", "valueName": "hr", "defaultPeriod": 1000, "unit": "/min"}),
        ] {
            let found = messages(serde_json::json!({
                "typeName": "hr",
                "codes": [{"system": LOINC, "code": "8867-4"}],
                "category": vs_category(),
                "value": value,
            }));
            assert_eq!(found, Vec::<String>::new());
        }
    }

    #[test]
    fn templates_that_map_no_vital_sign_are_not_checked() {
        let found = messages(serde_json::json!({
            "typeName": "steps",
            "codes": [{"system": LOINC, "code": "55423-8"}],
            "value": {"valueType": "Quantity", "valueName": "steps", "unit": "steps"},
        }));
        assert_eq!(found, Vec::<String>::new());
    }

    #[test]
    fn each_problem_is_found_at_its_member() {
        let text = mapping(serde_json::json!({
            "typeName": "hr",
            "codes": [{"system": LOINC, "code": "8867-4"}],
            "value": {"valueType": "Quantity", "valueName": "hr", "unit": "bpm", "code": "bpm"},
        }));
        let found = check(&text);
        let summary: Vec<(String, String)> = found
            .iter()
            .map(|f| (f.at.pointer.clone(), f.message.clone()))
            .collect();
        assert_eq!(summary.len(), 3, "{summary:#?}");
        assert!(summary[0].0 == "/template/0/template" && summary[0].1.contains("category"));
        assert!(
            summary[1].0 == "/template/0/template/value" && summary[1].1.contains("no \"system\"")
        );
        assert!(
            summary[2].0 == "/template/0/template/value/code"
                && summary[2]
                    .1
                    .contains("\"bpm\" is not the profile's: use `/min`")
        );
        // Lines are the member's own: `"code": "bpm"` is on its line of the pretty text.
        let code_line = text
            .lines()
            .position(|l| l.contains("\"code\": \"bpm\""))
            .unwrap()
            + 1;
        assert_eq!(found[2].at.line, code_line);
    }

    #[test]
    fn blood_pressure_needs_both_components_in_mm_hg_and_no_value() {
        let found = messages(serde_json::json!({
            "typeName": "bp",
            "codes": [{"system": LOINC, "code": "85354-9"}],
            "category": vs_category(),
            "value": {"valueType": "Quantity", "valueName": "sys", "unit": "mmHg", "system": UCUM, "code": "mm[Hg]"},
            "components": [{
                "codes": [{"system": LOINC, "code": "8480-6"}],
                "value": {"valueType": "Quantity", "valueName": "sys", "unit": "mmHg", "system": UCUM, "code": "mmHg"},
            }],
        }));
        assert_eq!(found.len(), 3, "{found:#?}");
        assert!(found[0].contains("no value of its own"));
        assert!(found[1].contains("systolic blood pressure Quantity's code \"mmHg\""));
        assert!(found[2].contains("diastolic component coded http://loinc.org|8462-4"));
    }

    #[test]
    fn pulse_oximetry_alone_asks_for_2708_6() {
        let found = messages(serde_json::json!({
            "typeName": "spo2",
            "codes": [{"system": LOINC, "code": "59408-5"}],
            "category": vs_category(),
            "value": {"valueType": "Quantity", "valueName": "spo2", "unit": "%", "system": UCUM, "code": "%"},
        }));
        assert_eq!(found.len(), 1, "{found:#?}");
        assert!(found[0].contains("requires the LOINC coding 2708-6"));
    }

    #[test]
    fn temperature_and_weight_take_each_of_their_units_and_nothing_else() {
        for (loinc, ok, bad) in [
            ("8310-5", &["Cel", "[degF]"][..], "degC"),
            ("29463-7", &["kg", "g", "[lb_av]"][..], "lb"),
        ] {
            for unit in ok.iter().copied().chain([bad]) {
                let found = messages(serde_json::json!({
                    "typeName": "v",
                    "codes": [{"system": LOINC, "code": loinc}],
                    "category": vs_category(),
                    "value": {"valueType": "Quantity", "valueName": "v", "unit": unit, "system": UCUM, "code": unit},
                }));
                assert_eq!(
                    found.len(),
                    usize::from(unit == bad),
                    "{loinc} {unit}: {found:?}"
                );
            }
        }
    }

    #[test]
    fn stamping_adds_the_base_and_the_vitals_profile_once() {
        let mut obs = serde_json::json!({
            "resourceType": "Observation",
            "meta": {"profile": [BASE_PROFILE]},
            "code": {"coding": [{"system": LOINC, "code": "59408-5"}, {"system": LOINC, "code": "2708-6"}]},
        });
        stamp(&mut obs);
        stamp(&mut obs);
        assert_eq!(
            obs["meta"]["profile"],
            serde_json::json!([
                BASE_PROFILE,
                "http://hl7.org/fhir/StructureDefinition/oxygensat"
            ])
        );
        let mut steps =
            serde_json::json!({"code": {"coding": [{"system": LOINC, "code": "55423-8"}]}});
        stamp(&mut steps);
        assert!(steps.get("meta").is_none());
    }

    #[test]
    fn text_that_is_no_mapping_gives_no_findings_and_no_panic() {
        for text in [
            "",
            "[",
            "{\"template\": 3}",
            "{\"template\": [1, {\"template\": []}]}",
        ] {
            assert_eq!(check(text), Vec::new());
        }
    }
}
