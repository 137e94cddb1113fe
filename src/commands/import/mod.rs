//! `iomt import medtech FILE… [--out DIR] [--parameters FILE]`: Azure MedTech service
//! definitions into this connector's folder per MedTech service: `devicecontent.json`,
//! `fhirmapping.json` and `config.toml` (Event Hubs source, FHIR URL and resolution), checked
//! with the mapping loaders and the config's own validation.
//!
//! Four front-ends fill one description of what was found ([`Found`]: [`Connector`]s and
//! their [`Destination`]s, each value a [`Field`], resolved or [`Unresolved`] with its place),
//! and one back-end ([`write_connector`]) writes every connector's folder the same way:
//!
//! - ARM templates (resources `Microsoft.HealthcareApis/workspaces/iotconnectors` and
//!   `…/iotconnectors/fhirdestinations`, any apiVersion, also inside nested
//!   `Microsoft.Resources/deployments`; expressions through [`arm`]) and the REST / `az
//!   healthcareapis workspace iot-connector show` JSON (one resource, a list, or
//!   `{"value": [...]}`);
//! - Bicep (`.bicep`, [`bicep`]: the same two resource types, parameters from their defaults
//!   or the `--parameters` file);
//! - Terraform (`.tf`, [`terraform`]: `azurerm_healthcare_medtech_service`,
//!   `azurerm_healthcare_medtech_service_fhir_destination`, the older
//!   `azurerm_healthcare_iot_connector`; variables from their defaults and the `.tfvars`
//!   files given).
//!
//! What cannot be resolved is reported with `file:line:column`, never dropped; exit 1 when a
//! required value is missing or a mapping is invalid.

mod arm;
mod bicep;
mod terraform;
mod write;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use serde_json::Value;

use normalizer::location::Positions;

use super::templates::read_text;
use arm::Scope;
use write::{folder_name, write_connector};

/// `iomt import` options.
#[derive(clap::Args)]
pub struct ImportArgs {
    #[command(subcommand)]
    from: ImportFrom,
}

#[derive(clap::Subcommand)]
enum ImportFrom {
    /// Azure MedTech service (IoT connector) definitions: ARM templates, Bicep, Terraform, or
    /// the REST / `az healthcareapis workspace iot-connector show` JSON of connectors and FHIR
    /// destinations.
    Medtech(MedtechArgs),
}

/// `iomt import medtech` options.
#[derive(clap::Args)]
struct MedtechArgs {
    /// ARM template(s), resource JSON, Bicep (`.bicep`) or Terraform (`.tf`, with `.tfvars`)
    /// files; a connector and its FHIR destination may be in different files.
    #[arg(required = true, value_name = "FILE")]
    files: Vec<PathBuf>,
    /// Output folder: one sub-folder per MedTech service, named after it.
    #[arg(long, value_name = "DIR", default_value = "medtech-import")]
    out: PathBuf,
    /// ARM deployment parameters file (`{"parameters": {"name": {"value": …}}}`), for an ARM
    /// template or a Bicep file. Terraform variables come from `.tfvars` files given as FILEs.
    #[arg(long, value_name = "FILE")]
    parameters: Option<PathBuf>,
}

/// Runs `iomt import`.
pub fn run(args: ImportArgs) -> Result<ExitCode> {
    match args.from {
        ImportFrom::Medtech(a) => medtech(a),
    }
}

/// A value the import could not resolve, and where it stands.
#[derive(Debug, Clone)]
struct Unresolved {
    file: PathBuf,
    line: usize,
    column: usize,
    what: String,
    reason: String,
}

impl std::fmt::Display for Unresolved {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}: {}",
            self.file.display(),
            self.line,
            self.column,
            self.what,
            self.reason
        )
    }
}

impl Unresolved {
    /// A problem at byte `offset` of `text` (the contents of `file`).
    fn at(file: &Path, text: &str, offset: usize, what: &str, reason: impl Into<String>) -> Self {
        let (line, column) = line_column(text, offset);
        Unresolved {
            file: file.to_path_buf(),
            line,
            column,
            what: what.to_string(),
            reason: reason.into(),
        }
    }
}

/// 1-based line and column (in characters) of byte `offset` in `text`.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[start..].chars().count() + 1)
}

/// A value as the connector is described; or why it is not known, and where.
type Field = Result<Value, Unresolved>;

/// A mapping's content as MedTech takes it: an object, or a JSON-encoded string of one.
fn mapping_content(v: Value) -> Result<Value, String> {
    match v {
        Value::String(s) => serde_json::from_str::<Value>(&s)
            .map_err(|e| format!("the content is a string but not JSON: {e}"))
            .and_then(|v| match v {
                Value::Object(_) => Ok(v),
                other => Err(format!("expected a JSON object, found {other}")),
            }),
        Value::Object(_) => Ok(v),
        other => Err(format!("expected an object, found {other}")),
    }
}

/// One input file: its path, its positions, and (for an ARM template) how to evaluate.
struct Source {
    path: PathBuf,
    positions: Positions,
}

impl Source {
    fn unresolved(&self, pointer: &str, what: &str, reason: impl Into<String>) -> Unresolved {
        // The value's position, else its nearest enclosing value's.
        let mut p = pointer.to_string();
        let at = loop {
            if let Some(at) = self.positions.value(&p) {
                break at;
            }
            match p.rfind('/') {
                Some(i) => p.truncate(i),
                None => break Default::default(),
            }
        };
        Unresolved {
            file: self.path.clone(),
            line: at.line.max(1),
            column: at.column.max(1),
            what: what.to_string(),
            reason: reason.into(),
        }
    }

    /// The value at `base` + `rel`, evaluated in `scope` (ARM) or as it is (REST).
    fn field(
        &self,
        res: &Value,
        base: &str,
        rel: &str,
        what: &str,
        scope: Option<&Scope>,
    ) -> Option<Field> {
        let v = res.pointer(rel)?;
        let pointer = format!("{base}{rel}");
        Some(match scope {
            Some(s) => s.eval(v).map_err(|e| self.unresolved(&pointer, what, e)),
            None => Ok(v.clone()),
        })
    }

    fn required(
        &self,
        res: &Value,
        base: &str,
        rel: &str,
        what: &str,
        scope: Option<&Scope>,
    ) -> Field {
        self.field(res, base, rel, what, scope).unwrap_or_else(|| {
            Err(self.unresolved(base, what, format!("missing ({rel} is not set)")))
        })
    }

    /// A mapping's `content`: an object, or a JSON-encoded string of one.
    fn mapping(
        &self,
        res: &Value,
        base: &str,
        rel: &str,
        what: &str,
        scope: Option<&Scope>,
    ) -> Field {
        let v = self.required(res, base, rel, what, scope)?;
        mapping_content(v).map_err(|e| self.unresolved(&format!("{base}{rel}"), what, e))
    }
}

/// A MedTech service found in the files.
struct Connector {
    name: String,
    /// Other names a destination may use for it: a Bicep symbolic name, a Terraform address.
    aliases: Vec<String>,
    file: PathBuf,
    event_hub: Field,
    consumer_group: Field,
    namespace: Field,
    device_mapping: Field,
    destinations: Vec<Destination>,
}

/// A FHIR destination found in the files.
struct Destination {
    /// The connector it belongs to (its name, or one of its aliases), when known.
    connector: Option<String>,
    name: String,
    resolution: Field,
    fhir_service: Field,
    fhir_mapping: Field,
}

#[derive(Default)]
struct Found {
    connectors: Vec<Connector>,
    destinations: Vec<Destination>,
    problems: Vec<Unresolved>,
}

fn last_segment(s: &str) -> String {
    s.rsplit('/').next().unwrap_or(s).to_string()
}

/// The segment after `key` in a resource name or id (`…/iotconnectors/{this}/…`).
fn segment_after(id: &str, key: &str) -> Option<String> {
    let parts: Vec<&str> = id.split('/').collect();
    parts
        .iter()
        .position(|p| p.eq_ignore_ascii_case(key))
        .and_then(|i| parts.get(i + 1))
        .filter(|s| !s.is_empty())
        .map(|s| s.to_string())
}

/// The FHIR service's URL from its resource id: a workspace FHIR service
/// (`…/workspaces/{ws}/fhirservices/{fhir}`) or an Azure API for FHIR (`…/services/{name}`).
fn fhir_url(resource_id: &str) -> Option<String> {
    if let (Some(ws), Some(fhir)) = (
        segment_after(resource_id, "workspaces"),
        segment_after(resource_id, "fhirservices"),
    ) {
        return Some(format!("https://{ws}-{fhir}.fhir.azurehealthcareapis.com"));
    }
    let parts: Vec<&str> = resource_id.split('/').collect();
    let i = parts
        .iter()
        .position(|p| p.eq_ignore_ascii_case("Microsoft.HealthcareApis"))?;
    match (parts.get(i + 1), parts.get(i + 2)) {
        (Some(t), Some(name)) if t.eq_ignore_ascii_case("services") && !name.is_empty() => {
            Some(format!("https://{name}.azurehealthcareapis.com"))
        }
        _ => None,
    }
}

const CONNECTOR: &str = "microsoft.healthcareapis/workspaces/iotconnectors";
const DESTINATION: &str = "microsoft.healthcareapis/workspaces/iotconnectors/fhirdestinations";
const DEPLOYMENT: &str = "microsoft.resources/deployments";

impl Found {
    /// One resource (ARM when `scope` is set, else REST) at `base`.
    fn resource(
        &mut self,
        src: &Source,
        res: &Value,
        base: &str,
        kind: &str,
        name: Field,
        scope: Option<&Scope>,
    ) {
        let name_text = |f: &Field| f.as_ref().ok().and_then(Value::as_str).map(str::to_string);
        if kind == CONNECTOR {
            let name = match &name {
                Ok(_) => name_text(&name).unwrap_or_default(),
                Err(e) => {
                    self.problems.push(e.clone());
                    String::new()
                }
            };
            let name = if name.is_empty() {
                format!("connector{}", self.connectors.len() + 1)
            } else {
                last_segment(&name)
            };
            let ing = "/properties/ingestionEndpointConfiguration";
            self.connectors.push(Connector {
                name,
                aliases: Vec::new(),
                file: src.path.clone(),
                event_hub: src.required(
                    res,
                    base,
                    &format!("{ing}/eventHubName"),
                    "eventHubName",
                    scope,
                ),
                consumer_group: src
                    .field(
                        res,
                        base,
                        &format!("{ing}/consumerGroup"),
                        "consumerGroup",
                        scope,
                    )
                    .unwrap_or_else(|| Ok(Value::String("$Default".into()))),
                namespace: src.required(
                    res,
                    base,
                    &format!("{ing}/fullyQualifiedEventHubNamespace"),
                    "fullyQualifiedEventHubNamespace",
                    scope,
                ),
                device_mapping: src.mapping(
                    res,
                    base,
                    "/properties/deviceMapping/content",
                    "deviceMapping",
                    scope,
                ),
                destinations: Vec::new(),
            });
        } else if kind == DESTINATION {
            let full = match &name {
                Ok(_) => name_text(&name).unwrap_or_default(),
                Err(e) => {
                    self.problems.push(e.clone());
                    String::new()
                }
            };
            let id = res.get("id").and_then(Value::as_str).unwrap_or_default();
            let parts: Vec<&str> = full.split('/').collect();
            let connector = segment_after(id, "iotconnectors")
                .or_else(|| (parts.len() >= 2).then(|| parts[parts.len() - 2].to_string()));
            self.destinations.push(Destination {
                connector,
                name: last_segment(&full),
                resolution: src
                    .field(
                        res,
                        base,
                        "/properties/resourceIdentityResolutionType",
                        "resourceIdentityResolutionType",
                        scope,
                    )
                    .unwrap_or_else(|| Ok(Value::String("Lookup".into()))),
                fhir_service: src.required(
                    res,
                    base,
                    "/properties/fhirServiceResourceId",
                    "fhirServiceResourceId",
                    scope,
                ),
                fhir_mapping: src.mapping(
                    res,
                    base,
                    "/properties/fhirMapping/content",
                    "fhirMapping",
                    scope,
                ),
            });
        }
    }

    /// An ARM `resources` array (or symbolic-name object) at `base`, in `scope`.
    fn arm_resources(
        &mut self,
        src: &Source,
        resources: &Value,
        base: &str,
        scope: &Scope,
        parent: Option<(&str, &str)>,
    ) {
        let items: Vec<(String, &Value)> = match resources {
            Value::Array(a) => a
                .iter()
                .enumerate()
                .map(|(i, v)| (i.to_string(), v))
                .collect(),
            Value::Object(m) => m.iter().map(|(k, v)| (k.clone(), v)).collect(),
            _ => return,
        };
        for (key, res) in items {
            let ptr = format!("{base}/{}", normalizer::location::escape_token(&key));
            let Some(t) = res.get("type").and_then(Value::as_str) else {
                continue;
            };
            // `existing: true` (symbolic-name templates) refers to a resource defined elsewhere.
            if res.get("existing").and_then(Value::as_bool) == Some(true) {
                continue;
            }
            let mut kind = t.to_lowercase();
            if let Some((pt, _)) = parent {
                if !kind.contains('/') {
                    kind = format!("{}/{kind}", pt.to_lowercase());
                }
            }
            let name: Field = match res.get("name") {
                Some(n) => scope
                    .eval(n)
                    .map_err(|e| src.unresolved(&format!("{ptr}/name"), "name", e))
                    .map(|v| match (parent, v.as_str()) {
                        (Some((_, pn)), Some(s)) if !s.contains('/') => {
                            Value::String(format!("{pn}/{s}"))
                        }
                        _ => v,
                    }),
                None => Ok(Value::String(String::new())),
            };
            if kind == DEPLOYMENT {
                let props = &res["properties"];
                if props.get("templateLink").is_some() {
                    self.problems.push(src.unresolved(
                        &format!("{ptr}/properties/templateLink"),
                        "templateLink",
                        "a linked template is not followed: import that file itself",
                    ));
                }
                if let Some(template) = props.get("template") {
                    let inner = props
                        .pointer("/expressionEvaluationOptions/scope")
                        .and_then(Value::as_str)
                        .is_some_and(|s| s.eq_ignore_ascii_case("inner"));
                    let nested = if inner {
                        Scope::new(template, props.get("parameters"), Some(scope))
                    } else {
                        scope.clone()
                    };
                    if let Some(r) = template.get("resources") {
                        self.arm_resources(
                            src,
                            r,
                            &format!("{ptr}/properties/template/resources"),
                            &nested,
                            None,
                        );
                    }
                }
                continue;
            }
            if res.get("copy").is_some() && kind.starts_with(CONNECTOR) {
                // One description per loop would silently stand for all its instances.
                self.problems.push(src.unresolved(
                    &format!("{ptr}/copy"),
                    "copy",
                    "a copy loop is not expanded: this resource is imported once; give each instance as its own resource (or the REST JSON of each)",
                ));
            }
            self.resource(src, res, &ptr, &kind, name.clone(), Some(scope));
            if let Some(children) = res.get("resources") {
                let pname = name
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default();
                self.arm_resources(
                    src,
                    children,
                    &format!("{ptr}/resources"),
                    scope,
                    Some((&kind, &pname)),
                );
            }
        }
    }

    /// REST / CLI JSON: one resource, a list, or `{"value": [...]}`.
    fn rest(&mut self, src: &Source, doc: &Value, base: &str) {
        match doc {
            Value::Array(a) => {
                for (i, r) in a.iter().enumerate() {
                    self.rest(src, r, &format!("{base}/{i}"));
                }
            }
            Value::Object(m)
                if m.get("type").is_none() && m.get("value").is_some_and(Value::is_array) =>
            {
                self.rest(src, &m["value"], &format!("{base}/value"));
            }
            Value::Object(_) => {
                let kind = doc
                    .get("type")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_lowercase();
                let name = Ok(doc
                    .get("name")
                    .cloned()
                    .unwrap_or(Value::String(String::new())));
                self.resource(src, doc, base, &kind, name, None);
            }
            _ => {}
        }
    }
}

fn is_arm_template(doc: &Value) -> bool {
    doc.get("resources").is_some()
        && (doc.get("contentVersion").is_some()
            || doc
                .get("$schema")
                .and_then(Value::as_str)
                .is_some_and(|s| s.contains("deploymentTemplate")))
}

fn medtech(args: MedtechArgs) -> Result<ExitCode> {
    let given = match &args.parameters {
        Some(p) => {
            let doc: Value = serde_json::from_str(&read_text(p)?)
                .with_context(|| format!("{}: not JSON", p.display()))?;
            Some(doc.get("parameters").cloned().unwrap_or(doc))
        }
        None => None,
    };
    let mut found = Found::default();
    let (mut tf, mut tfvars) = (Vec::new(), Vec::new());
    for path in &args.files {
        let name = path.to_string_lossy().to_lowercase();
        if name.ends_with(".tf") {
            tf.push(path.clone());
            continue;
        }
        if name.ends_with(".tfvars") {
            tfvars.push(path.clone());
            continue;
        }
        if name.ends_with(".bicepparam") {
            bail!(
                "{}: .bicepparam files are not read; give the parameters as a JSON parameters file (--parameters)",
                path.display()
            );
        }
        let text = read_text(path)?;
        if name.ends_with(".bicep") {
            bicep::read(path, &text, given.as_ref(), &mut found)?;
            continue;
        }
        let doc: Value =
            serde_json::from_str(&text).with_context(|| format!("{}: not JSON", path.display()))?;
        let src = Source {
            path: path.clone(),
            positions: Positions::index(&text),
        };
        if is_arm_template(&doc) {
            let scope = Scope::new(&doc, given.as_ref(), None);
            found.arm_resources(&src, &doc["resources"], "/resources", &scope, None);
        } else {
            found.rest(&src, &doc, "");
        }
    }
    if !tf.is_empty() {
        // The .tf files given are one module (as in a folder), the .tfvars its variables.
        terraform::read(&tf, &tfvars, &mut found)?;
    } else if !tfvars.is_empty() {
        bail!("a .tfvars file was given without any .tf file");
    }
    // Each destination to its connector.
    let mut connectors = std::mem::take(&mut found.connectors);
    for d in std::mem::take(&mut found.destinations) {
        let target = match &d.connector {
            Some(c) => connectors
                .iter()
                .position(|x| x.name.eq_ignore_ascii_case(c) || x.aliases.iter().any(|a| a == c)),
            None if connectors.len() == 1 => Some(0),
            None => None,
        };
        match target {
            Some(i) => connectors[i].destinations.push(d),
            None => eprintln!(
                "warning: FHIR destination {:?} (of connector {}) has no connector in the files given; skipped",
                d.name,
                d.connector.as_deref().unwrap_or("?")
            ),
        }
    }
    if connectors.is_empty() {
        for p in &found.problems {
            eprintln!("{p}");
        }
        eprintln!(
            "no MedTech service (Microsoft.HealthcareApis/workspaces/iotconnectors) found in {}",
            args.files
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
        return Ok(ExitCode::from(1));
    }
    let mut ok = true;
    for p in &found.problems {
        eprintln!("{p}");
    }
    let mut seen = BTreeMap::new();
    for c in &connectors {
        let n = seen.entry(c.name.to_lowercase()).or_insert(0);
        *n += 1;
        let folder = if *n == 1 {
            folder_name(&c.name)
        } else {
            format!("{}-{n}", folder_name(&c.name))
        };
        ok &= write_connector(c, &args.out.join(folder))?;
    }
    Ok(if ok && found.problems.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fhir_urls_from_resource_ids() {
        assert_eq!(
            fhir_url("subscriptions/s/resourceGroups/rg/providers/Microsoft.HealthcareApis/workspaces/myworkspace/fhirservices/myfhirservice").as_deref(),
            Some("https://myworkspace-myfhirservice.fhir.azurehealthcareapis.com")
        );
        assert_eq!(
            fhir_url("/subscriptions/s/resourceGroups/rg/providers/Microsoft.HealthcareApis/services/legacy").as_deref(),
            Some("https://legacy.azurehealthcareapis.com")
        );
        assert_eq!(fhir_url("https://example.org/fhir"), None);
    }
}
