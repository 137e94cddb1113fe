//! Terraform for `iomt import medtech`: the `.tf` files given, read as one module with
//! `hcl-edit` (the parser of the hcl-rs project, used for the source spans it keeps: every
//! value not resolved is reported with its `file:line:column`).
//!
//! Resources `azurerm_healthcare_medtech_service` (and the older
//! `azurerm_healthcare_iot_connector`, whose schema — the provider's state migration
//! `HealthCareIoTConnectorV0ToV1` — has the same attributes) and
//! `azurerm_healthcare_medtech_service_fhir_destination`. A destination goes to the service
//! its `medtech_service_id` names (`azurerm_healthcare_medtech_service.NAME.id`, or an id).
//!
//! Evaluated offline: literals, strings and heredocs with interpolations, `var.x` (a given
//! `.tfvars` file, else the variable's `default`), `local.x`, attributes of resources in the
//! files (`azurerm_eventhub.x.name`), the `id` of the healthcare resources (workspace, FHIR
//! service, MedTech service, Azure API for FHIR) built from their names, `path.module`,
//! conditionals on known booleans, and `jsonencode`, `jsondecode`, `file`, `templatefile`,
//! `tostring`, `lower`, `upper`, `trimspace`, `replace`. Anything else — a data source (a Key
//! Vault secret among them), a variable without a value, a computed attribute, another
//! function or operator — is an error naming it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use hcl_edit::expr::{Expression, ObjectKey, TraversalOperator};
use hcl_edit::structure::{Block, Body};
use hcl_edit::template::{Element, Template};
use hcl_edit::Span;
use serde_json::{Map, Value};

use super::{mapping_content, segment_after, Connector, Destination, Field, Found, Unresolved};

const MAX_DEPTH: usize = 32;
const SERVICE: &str = "azurerm_healthcare_medtech_service";
const IOT_CONNECTOR: &str = "azurerm_healthcare_iot_connector";
const DESTINATION: &str = "azurerm_healthcare_medtech_service_fhir_destination";

struct File {
    path: PathBuf,
    text: String,
    body: Body,
}

/// Where a declaration stands: (file index, the declaration).
type At<'a, T> = (usize, &'a T);

struct Module<'a> {
    files: &'a [File],
    variables: BTreeMap<String, At<'a, Block>>,
    /// Values from the `.tfvars` files.
    given: BTreeMap<String, At<'a, Expression>>,
    locals: BTreeMap<String, At<'a, Expression>>,
    resources: BTreeMap<(String, String), At<'a, Block>>,
}

fn parse(path: &Path) -> Result<File> {
    let text = super::read_text(path)?;
    let body = hcl_edit::parser::parse_body(&text)
        .map_err(|e| anyhow::anyhow!("{}: not HCL:\n{e}", path.display()))?;
    Ok(File {
        path: path.to_path_buf(),
        text,
        body,
    })
}

fn label(b: &Block, i: usize) -> Option<&str> {
    b.labels.get(i).map(|l| l.as_str())
}

/// Reads the module of `tf` files (with `tfvars` values) into `found`.
pub(super) fn read(tf: &[PathBuf], tfvars: &[PathBuf], found: &mut Found) -> Result<()> {
    let mut files = Vec::new();
    for p in tf.iter().chain(tfvars) {
        files.push(parse(p).with_context(|| format!("reading {}", p.display()))?);
    }
    let mut m = Module {
        files: &files,
        variables: BTreeMap::new(),
        given: BTreeMap::new(),
        locals: BTreeMap::new(),
        resources: BTreeMap::new(),
    };
    for (i, f) in files.iter().enumerate() {
        if i >= tf.len() {
            for a in f.body.attributes() {
                m.given.insert(a.key.to_string(), (i, &a.value));
            }
            continue;
        }
        for b in f.body.blocks() {
            match (b.ident.as_str(), label(b, 0), label(b, 1)) {
                ("variable", Some(n), _) => {
                    m.variables.insert(n.to_string(), (i, b));
                }
                ("locals", _, _) => {
                    for a in b.body.attributes() {
                        m.locals.insert(a.key.to_string(), (i, &a.value));
                    }
                }
                ("resource", Some(t), Some(n)) => {
                    m.resources.insert((t.to_string(), n.to_string()), (i, b));
                }
                _ => {}
            }
        }
    }
    for ((t, n), (fi, b)) in &m.resources {
        match t.as_str() {
            SERVICE | IOT_CONNECTOR => m.connector(found, t, n, *fi, b),
            DESTINATION => m.destination(found, *fi, b),
            _ => {}
        }
    }
    Ok(())
}

fn text(v: &Value) -> Result<String, String> {
    match v {
        Value::String(s) => Ok(s.clone()),
        Value::Number(n) => Ok(n.to_string()),
        Value::Bool(b) => Ok(b.to_string()),
        Value::Null => Err("null in a string".into()),
        other => Err(format!("cannot make a string of {other}")),
    }
}

impl<'a> Module<'a> {
    fn file(&self, fi: usize) -> &'a File {
        &self.files[fi]
    }

    fn unresolved(&self, fi: usize, offset: usize, what: &str, reason: String) -> Unresolved {
        let f = self.file(fi);
        Unresolved::at(&f.path, &f.text, offset, what, reason)
    }

    fn place(&self, fi: usize, offset: usize) -> String {
        let f = self.file(fi);
        let (l, c) = super::line_column(&f.text, offset);
        format!("{}:{l}:{c}", f.path.display())
    }

    /// The attribute `key` of `b`, evaluated; `None` when the attribute is not set.
    fn attr(&self, fi: usize, b: &Block, key: &str) -> Option<Field> {
        let a = b.body.get_attribute(key)?;
        let at = a.value.span().map_or(0, |s| s.start);
        Some(
            self.eval(fi, &a.value, 0)
                .map_err(|e| self.unresolved(fi, at, key, e)),
        )
    }

    fn required(&self, fi: usize, b: &Block, key: &str) -> Field {
        self.attr(fi, b, key).unwrap_or_else(|| {
            Err(self.unresolved(
                fi,
                b.span().map_or(0, |s| s.start),
                key,
                format!("missing (`{key}` is not set)"),
            ))
        })
    }

    fn mapping(&self, fi: usize, b: &Block, key: &str) -> Field {
        let v = self.required(fi, b, key)?;
        let at = b
            .body
            .get_attribute(key)
            .and_then(|a| a.value.span())
            .map_or(0, |s| s.start);
        mapping_content(v).map_err(|e| self.unresolved(fi, at, key, e))
    }

    fn connector(&self, found: &mut Found, t: &str, n: &str, fi: usize, b: &Block) {
        let name = match self.required(fi, b, "name") {
            Ok(Value::String(s)) if !s.is_empty() => s,
            Ok(_) => format!("connector{}", found.connectors.len() + 1),
            Err(e) => {
                found.problems.push(e);
                format!("connector{}", found.connectors.len() + 1)
            }
        };
        let namespace = self
            .required(fi, b, "eventhub_namespace_name")
            .map(|v| match v {
                // MedTech's fullyQualifiedEventHubNamespace from the namespace's name.
                Value::String(s) if !s.contains('.') => {
                    Value::String(format!("{s}.servicebus.windows.net"))
                }
                other => other,
            });
        found.connectors.push(Connector {
            name,
            aliases: vec![format!("{t}.{n}")],
            file: self.file(fi).path.clone(),
            event_hub: self.required(fi, b, "eventhub_name"),
            consumer_group: self.required(fi, b, "eventhub_consumer_group_name"),
            namespace,
            device_mapping: self.mapping(fi, b, "device_mapping_json"),
            destinations: Vec::new(),
        });
    }

    fn destination(&self, found: &mut Found, fi: usize, b: &Block) {
        let name = match self.required(fi, b, "name") {
            Ok(Value::String(s)) => s,
            Ok(_) => String::new(),
            Err(e) => {
                found.problems.push(e);
                String::new()
            }
        };
        // `azurerm_healthcare_medtech_service.NAME.id` names the service; else its id.
        let connector = b.body.get_attribute("medtech_service_id").and_then(|a| {
            if let Expression::Traversal(t) = &a.value {
                if let (Expression::Variable(v), [first, id]) = (&t.expr, t.operators.as_slice()) {
                    if let (TraversalOperator::GetAttr(n), TraversalOperator::GetAttr(i)) =
                        (first.value(), id.value())
                    {
                        if (v.as_str() == SERVICE || v.as_str() == IOT_CONNECTOR)
                            && i.as_str() == "id"
                        {
                            return Some(format!("{}.{}", v.as_str(), n.as_str()));
                        }
                    }
                }
            }
            match self.eval(fi, &a.value, 0) {
                Ok(Value::String(id)) => segment_after(&id, "iotconnectors"),
                _ => None,
            }
        });
        found.destinations.push(Destination {
            connector,
            name,
            resolution: self.required(fi, b, "destination_identity_resolution_type"),
            fhir_service: self.required(fi, b, "destination_fhir_service_id"),
            fhir_mapping: self.mapping(fi, b, "destination_fhir_mapping_json"),
        });
    }

    fn variable(&self, name: &str, depth: usize) -> Result<Value, String> {
        if let Some((fi, e)) = self.given.get(name) {
            return self.eval(*fi, e, depth + 1).map_err(|err| {
                format!("var.{name} (in {}): {err}", self.file(*fi).path.display())
            });
        }
        let Some((fi, b)) = self.variables.get(name) else {
            return Err(format!(
                "var.{name}: no `variable \"{name}\"` in the files given"
            ));
        };
        match b.body.get_attribute("default") {
            Some(a) => self.eval(*fi, &a.value, depth + 1).map_err(|err| {
                format!(
                    "var.{name} (default at {}): {err}",
                    self.place(*fi, a.value.span().map_or(0, |s| s.start))
                )
            }),
            None => Err(format!(
                "var.{name} has no value: `variable \"{name}\"` at {} has no default, and no .tfvars file given sets it",
                self.place(*fi, b.span().map_or(0, |s| s.start))
            )),
        }
    }

    /// The attribute `attr` of resource `t.n`.
    fn resource(&self, t: &str, n: &str, attr: &str, depth: usize) -> Result<Value, String> {
        let Some((fi, b)) = self.resources.get(&(t.to_string(), n.to_string())) else {
            return Err(format!("{t}.{n}: no such resource in the files given"));
        };
        let get = |k: &str| -> Result<String, String> {
            match b.body.get_attribute(k) {
                Some(a) => self
                    .eval(*fi, &a.value, depth + 1)
                    .and_then(|v| text(&v))
                    .map_err(|e| format!("{t}.{n}.{k}: {e}")),
                None => Err(format!("{t}.{n} has no `{k}`")),
            }
        };
        if attr == "id" {
            let group = || get("resource_group_name").unwrap_or_else(|_| "<resource group>".into());
            let providers = |rg: String| {
                format!("/subscriptions/<subscription>/resourceGroups/{rg}/providers/Microsoft.HealthcareApis")
            };
            return match t {
                "azurerm_resource_group" => Ok(format!(
                    "/subscriptions/<subscription>/resourceGroups/{}",
                    get("name")?
                )),
                "azurerm_healthcare_workspace" => Ok(format!(
                    "{}/workspaces/{}",
                    providers(group()),
                    get("name")?
                )),
                "azurerm_healthcare_service" => {
                    Ok(format!("{}/services/{}", providers(group()), get("name")?))
                }
                "azurerm_healthcare_fhir_service" => Ok(format!(
                    "{}/fhirservices/{}",
                    get("workspace_id")?,
                    get("name")?
                )),
                SERVICE | IOT_CONNECTOR => Ok(format!(
                    "{}/iotconnectors/{}",
                    get("workspace_id")?,
                    get("name")?
                )),
                _ => Err(format!(
                    "{t}.{n}.id is known only once Terraform has created it"
                )),
            }
            .map(Value::String);
        }
        match b.body.get_attribute(attr) {
            Some(a) => self
                .eval(*fi, &a.value, depth + 1)
                .map_err(|e| format!("{t}.{n}.{attr}: {e}")),
            None => Err(format!(
                "{t}.{n}.{attr} is not set in the configuration (Azure computes it)"
            )),
        }
    }

    fn eval(&self, fi: usize, e: &Expression, depth: usize) -> Result<Value, String> {
        self.eval_in(fi, e, depth, None)
    }

    /// `e` evaluated; `vars` are a `templatefile`'s variables.
    fn eval_in(
        &self,
        fi: usize,
        e: &Expression,
        depth: usize,
        vars: Option<&Map<String, Value>>,
    ) -> Result<Value, String> {
        if depth > MAX_DEPTH {
            return Err("variables or locals refer to each other in a cycle".into());
        }
        let ev = |e: &Expression| self.eval_in(fi, e, depth, vars);
        match e {
            Expression::Null(_) => Ok(Value::Null),
            Expression::Bool(b) => Ok(Value::Bool(*b.value())),
            Expression::Number(n) => {
                let n = n.value();
                Ok(if let Some(i) = n.as_i64() {
                    Value::from(i)
                } else if let Some(u) = n.as_u64() {
                    Value::from(u)
                } else {
                    n.as_f64()
                        .and_then(serde_json::Number::from_f64)
                        .map(Value::Number)
                        .ok_or("a number JSON cannot hold")?
                })
            }
            Expression::String(s) => Ok(Value::String(s.value().clone())),
            Expression::Array(a) => a
                .iter()
                .map(ev)
                .collect::<Result<Vec<_>, _>>()
                .map(Value::Array),
            Expression::Object(o) => {
                let mut out = Map::new();
                for (k, v) in o.iter() {
                    let key = match k {
                        ObjectKey::Ident(i) => i.as_str().to_string(),
                        ObjectKey::Expression(k) => text(&ev(k)?)?,
                    };
                    out.insert(key, ev(v.expr())?);
                }
                Ok(Value::Object(out))
            }
            Expression::StringTemplate(t) => self.template(fi, t, depth, vars).map(Value::String),
            Expression::HeredocTemplate(h) => self
                .template(fi, &h.template, depth, vars)
                .map(Value::String),
            Expression::Parenthesis(p) => ev(p.inner()),
            Expression::Variable(v) => match vars.and_then(|m| m.get(v.as_str())) {
                Some(v) => Ok(v.clone()),
                None => Err(format!("`{}` is not known offline", v.as_str())),
            },
            Expression::Conditional(c) => match ev(&c.cond_expr)? {
                Value::Bool(true) => ev(&c.true_expr),
                Value::Bool(false) => ev(&c.false_expr),
                other => Err(format!("a condition that is not a boolean: {other}")),
            },
            Expression::FuncCall(f) => {
                let name = f.name.name.as_str();
                if f.name.is_namespaced() {
                    return Err(format!(
                        "the provider function `{name}` is not evaluated offline"
                    ));
                }
                let args = f.args.iter().map(ev).collect::<Result<Vec<_>, _>>()?;
                self.call(fi, name, &args, depth)
            }
            Expression::Traversal(t) => {
                let ops: Vec<&TraversalOperator> = t.operators.iter().map(|o| o.value()).collect();
                let attr = |i: usize| match ops.get(i) {
                    Some(TraversalOperator::GetAttr(a)) => Some(a.as_str()),
                    _ => None,
                };
                let (value, rest) = match &t.expr {
                    Expression::Variable(v) if vars.is_some_and(|m| m.contains_key(v.as_str())) => {
                        (ev(&t.expr)?, 0)
                    }
                    Expression::Variable(v) => match (v.as_str(), attr(0), attr(1)) {
                        ("var", Some(n), _) => (self.variable(n, depth)?, 1),
                        ("local", Some(n), _) => match self.locals.get(n) {
                            Some((lfi, le)) => (
                                self.eval(*lfi, le, depth + 1)
                                    .map_err(|e| format!("local.{n}: {e}"))?,
                                1,
                            ),
                            None => return Err(format!("local.{n} is not defined")),
                        },
                        ("path", Some("module" | "root"), _) => {
                            // Absolute, so that `file("${path.module}/x")` is not joined twice.
                            let dir = self.file(fi).path.parent().unwrap_or(Path::new("."));
                            let dir = if dir.as_os_str().is_empty() { Path::new(".") } else { dir };
                            let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
                            (Value::String(dir.display().to_string()), 1)
                        }
                        ("data", Some(t), Some(n)) => {
                            return Err(format!(
                                "data.{t}.{n} is a data source, read from Azure when Terraform plans; not offline"
                            ))
                        }
                        (t, Some(n), Some(a)) if t.contains('_') => (self.resource(t, n, a, depth)?, 2),
                        (other, _, _) => return Err(format!("`{other}` is not known offline")),
                    },
                    other => (ev(other)?, 0),
                };
                ops[rest..].iter().try_fold(value, |v, op| match op {
                    TraversalOperator::GetAttr(a) => v
                        .get(a.as_str())
                        .cloned()
                        .ok_or_else(|| format!("no attribute `{}`", a.as_str())),
                    TraversalOperator::Index(i) => match ev(i)? {
                        Value::Number(n) => n
                            .as_u64()
                            .and_then(|n| v.get(n as usize))
                            .cloned()
                            .ok_or_else(|| format!("index {n} is out of range")),
                        Value::String(k) => {
                            v.get(&k).cloned().ok_or_else(|| format!("no key {k:?}"))
                        }
                        other => Err(format!("cannot index with {other}")),
                    },
                    TraversalOperator::LegacyIndex(n) => v
                        .get(*n.value() as usize)
                        .cloned()
                        .ok_or_else(|| format!("index {} is out of range", n.value())),
                    _ => Err("a splat (`[*]`) is not evaluated offline".into()),
                })
            }
            Expression::UnaryOp(_) | Expression::BinaryOp(_) => {
                Err("an operator expression is not evaluated offline".into())
            }
            Expression::ForExpr(_) => Err("a `for` expression is not evaluated offline".into()),
        }
    }

    fn template(
        &self,
        fi: usize,
        t: &Template,
        depth: usize,
        vars: Option<&Map<String, Value>>,
    ) -> Result<String, String> {
        let mut out = String::new();
        for el in t.iter() {
            match el {
                Element::Literal(s) => out.push_str(s.value()),
                Element::Interpolation(i) => {
                    out.push_str(&text(&self.eval_in(fi, &i.expr, depth, vars)?)?)
                }
                Element::Directive(_) => {
                    return Err("a template directive (`%{…}`) is not evaluated offline".into())
                }
            }
        }
        Ok(out)
    }

    fn path_arg(&self, fi: usize, v: &Value) -> Result<PathBuf, String> {
        let p = Path::new(v.as_str().ok_or("the path is not a string")?);
        Ok(if p.is_absolute() {
            p.to_path_buf()
        } else {
            // Relative to the .tf file (as `path.module` is).
            self.file(fi)
                .path
                .parent()
                .unwrap_or(Path::new("."))
                .join(p)
        })
    }

    fn call(&self, fi: usize, name: &str, args: &[Value], depth: usize) -> Result<Value, String> {
        let one = || match args {
            [v] => Ok(v),
            _ => Err(format!("{name}() takes one argument")),
        };
        let string = |v: &Value| {
            v.as_str()
                .map(str::to_string)
                .ok_or(format!("{name}(): not a string"))
        };
        match name {
            "jsonencode" => Ok(Value::String(one()?.to_string())),
            "jsondecode" => {
                serde_json::from_str(&string(one()?)?).map_err(|e| format!("jsondecode(): {e}"))
            }
            "tostring" => text(one()?).map(Value::String),
            "lower" => Ok(Value::String(string(one()?)?.to_lowercase())),
            "upper" => Ok(Value::String(string(one()?)?.to_uppercase())),
            "trimspace" => Ok(Value::String(string(one()?)?.trim().to_string())),
            "replace" => match args {
                [Value::String(s), Value::String(a), Value::String(b)] => {
                    Ok(Value::String(s.replace(a.as_str(), b)))
                }
                _ => Err("replace() takes three strings".into()),
            },
            "file" => {
                let p = self.path_arg(fi, one()?)?;
                std::fs::read_to_string(&p)
                    .map(Value::String)
                    .map_err(|e| format!("file(\"{}\"): {e}", p.display()))
            }
            "templatefile" => {
                let (p, vars) = match args {
                    [p, Value::Object(vars)] => (p, vars),
                    _ => return Err("templatefile() takes a path and an object".into()),
                };
                let p = self.path_arg(fi, p)?;
                let body = std::fs::read_to_string(&p)
                    .map_err(|e| format!("templatefile(\"{}\"): {e}", p.display()))?;
                let t = hcl_edit::parser::parse_template(&body)
                    .map_err(|e| format!("templatefile(\"{}\"): {e}", p.display()))?;
                self.template(fi, &t, depth, Some(vars)).map(Value::String)
            }
            other => Err(format!("the function `{other}()` is not evaluated offline")),
        }
    }
}
