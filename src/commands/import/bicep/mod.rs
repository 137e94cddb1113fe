//! Bicep for `iomt import medtech`: the declarations of
//! `Microsoft.HealthcareApis/workspaces/iotconnectors` and `…/iotconnectors/fhirdestinations`
//! in a `.bicep` file.
//!
//! Our own parser, because there is no maintained Bicep parser in Rust (Bicep's only parser is
//! the compiler's own, in C#; `az bicep build` turns a file into an ARM template, which
//! `iomt import medtech` reads too). It reads the whole language's statement and expression
//! syntax — `param` (with decorators and types), `var`, `resource` (also `existing`, nested
//! child resources, `parent:`, `if (…)` and `[for …]` bodies), `module`, `output`,
//! `metadata`, `targetScope`, and `import`/`type`/`func`/`using` lines skipped whole — and
//! evaluates, offline, what the two resource types' values use: strings (`'…'` with escapes
//! and `${…}` interpolation, `'''…'''`), numbers, booleans, `null`, objects, arrays, params
//! (from the `--parameters` file, else the default), vars, another resource's `name`, `id`
//! (built from the names, as `resourceId()` would) and declared properties, `x.?y`, `x[i]`,
//! and the functions `loadTextContent`, `loadJsonContent`, `json`, `string`, `concat`,
//! `format`, `replace`, `toLower`, `toUpper`, `trim`, `resourceId`. Anything else (an
//! operator, a lambda, a `for`, `resourceGroup()`, `uniqueString()`, a computed property…)
//! is an error naming it at the value's `file:line:column`; a syntax error stops the import
//! with its place.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use serde_json::{Map, Value};

use super::arm::{common_function, is_common_function, resource_id, text};
use super::{last_segment, mapping_content, Connector, Destination, Field, Found, Unresolved};

const MAX_DEPTH: usize = 32;
const CONNECTOR: &str = "microsoft.healthcareapis/workspaces/iotconnectors";
const DESTINATION: &str = "microsoft.healthcareapis/workspaces/iotconnectors/fhirdestinations";

mod lex;
mod parse;

use lex::Lexer;
use parse::{Decls, Parser, Part, Res, E, K};

struct Ev<'a> {
    path: &'a Path,
    text: &'a str,
    decls: &'a Decls,
    given: Option<&'a Value>,
}

impl Ev<'_> {
    fn place(&self, offset: usize) -> String {
        let (l, c) = super::line_column(self.text, offset);
        format!("{}:{l}:{c}", self.path.display())
    }

    fn unresolved(&self, offset: usize, what: &str, reason: String) -> Unresolved {
        Unresolved::at(self.path, self.text, offset, what, reason)
    }

    fn resource(&self, path: &str) -> Option<&Res> {
        self.decls.resources.iter().find(|r| r.path == path)
    }

    /// The full type of resource `r` (a nested one's is relative to its parent's).
    fn full_type(&self, r: &Res) -> String {
        match r.lexical_parent {
            Some(p) if !r.ty.contains('/') => {
                format!("{}/{}", self.full_type(&self.decls.resources[p]), r.ty)
            }
            _ => r.ty.clone(),
        }
    }

    /// The resource an expression names (`sym`, `a::b`).
    fn names_resource(&self, e: &E) -> Option<&Res> {
        match &e.k {
            K::Ident(n)
                if !self.decls.params.contains_key(n) && !self.decls.vars.contains_key(n) =>
            {
                self.resource(n)
            }
            K::Child(t, n) => {
                let parent = self.names_resource(t)?;
                self.resource(&format!("{}::{n}", parent.path))
            }
            _ => None,
        }
    }

    fn property<'e>(&self, body: &'e E, key: &str) -> Option<&'e E> {
        match &body.k {
            K::Obj(items) => items.iter().find_map(|(k, v)| match &k.k {
                K::Str(parts) => match parts.as_slice() {
                    [Part::Lit(s)] if s == key => Some(v),
                    _ => None,
                },
                _ => None,
            }),
            _ => None,
        }
    }

    /// The parent of `r`: its `parent:` property, else the resource it is declared in.
    fn parent(&self, r: &Res) -> Result<Option<&Res>, String> {
        if let Some(p) = self.property(&r.body, "parent") {
            return self.names_resource(p).map(Some).ok_or_else(|| {
                format!(
                    "`parent` at {} does not name a resource in the file",
                    self.place(p.at)
                )
            });
        }
        Ok(r.lexical_parent.map(|p| &self.decls.resources[p]))
    }

    fn name(&self, r: &Res, depth: usize) -> Result<String, String> {
        let n = self
            .property(&r.body, "name")
            .ok_or_else(|| format!("{} has no name", r.path))?;
        self.eval(n, depth + 1)
            .and_then(|v| {
                v.as_str()
                    .map(str::to_string)
                    .ok_or("the name is not a string".into())
            })
            .map_err(|e| format!("the name of {}: {e}", r.path))
    }

    /// `r`'s resource id, from its names and its parents' (`<subscription>` and `<resource
    /// group>` standing for what only a deployment knows), as `resourceId()` gives it.
    fn id(&self, r: &Res, depth: usize) -> Result<String, String> {
        let mut names = Vec::new();
        let mut cur = r;
        loop {
            if depth + names.len() > MAX_DEPTH {
                return Err("resources are each other's parents in a cycle".into());
            }
            let n = self.name(cur, depth)?;
            match self.parent(cur)? {
                Some(p) => {
                    names.push(n);
                    cur = p;
                }
                None => {
                    names.extend(n.rsplit('/').map(str::to_string));
                    break;
                }
            }
        }
        names.reverse();
        let ty = self.full_type(r);
        let mut args = vec![Value::String(ty)];
        args.extend(names.into_iter().map(Value::String));
        resource_id(&args)
    }

    /// A property of resource `r` (`name`, `id`, `type`, or one its body declares).
    fn resource_property(&self, r: &Res, prop: &str, depth: usize) -> Result<Value, String> {
        match prop {
            "name" => self.name(r, depth).map(Value::String),
            "id" => self.id(r, depth).map(Value::String),
            "type" => Ok(Value::String(self.full_type(r))),
            _ => match self.property(&r.body, prop) {
                Some(v) if !r.existing => self.eval(v, depth + 1),
                _ => Err(format!(
                    "{}.{prop} is known only once the resource is deployed",
                    r.path
                )),
            },
        }
    }

    fn param(&self, name: &str, depth: usize) -> Result<Value, String> {
        let p = &self.decls.params[name];
        let given = self
            .given
            .and_then(Value::as_object)
            .and_then(|m| m.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)))
            .map(|(_, v)| v);
        match given {
            Some(g) if g.get("reference").is_some() => Err(format!(
                "param '{name}' is a Key Vault reference ({}): the secret is not read; put it into the config or its environment variable by hand",
                g.pointer("/reference/keyVault/id").and_then(Value::as_str).unwrap_or("a Key Vault")
            )),
            Some(g) if g.get("value").is_some() => Ok(g["value"].clone()),
            _ => match &p.default {
                Some(d) => self
                    .eval(d, depth + 1)
                    .map_err(|e| format!("param '{name}' (default at {}): {e}", self.place(d.at))),
                None => Err(format!(
                    "param '{name}' has no value: no default (declared at {}), and not in the parameters file (--parameters)",
                    self.place(p.at)
                )),
            },
        }
    }

    fn eval(&self, e: &E, depth: usize) -> Result<Value, String> {
        if depth > MAX_DEPTH {
            return Err("params or vars refer to each other in a cycle".into());
        }
        let ev = |e: &E| self.eval(e, depth);
        match &e.k {
            K::Num(n) => Ok(Value::from(*n)),
            K::Bool(b) => Ok(Value::Bool(*b)),
            K::Null => Ok(Value::Null),
            K::Str(parts) => {
                let mut s = String::new();
                for p in parts {
                    match p {
                        Part::Lit(l) => s.push_str(l),
                        Part::Expr(e) => s.push_str(&text(&ev(e)?)),
                    }
                }
                Ok(Value::String(s))
            }
            K::Arr(items) => items
                .iter()
                .map(ev)
                .collect::<Result<_, _>>()
                .map(Value::Array),
            K::Obj(items) => {
                let mut m = Map::new();
                for (k, v) in items {
                    let key = text(&ev(k)?);
                    m.insert(key, ev(v)?);
                }
                Ok(Value::Object(m))
            }
            K::Ident(n) => {
                if self.decls.params.contains_key(n) {
                    self.param(n, depth)
                } else if let Some(v) = self.decls.vars.get(n) {
                    self.eval(v, depth + 1)
                        .map_err(|e| format!("var '{n}': {e}"))
                } else if self.resource(n).is_some() {
                    Err(format!("the resource `{n}` as a whole is not evaluated offline; use one of its properties"))
                } else {
                    Err(format!("`{n}` is not declared in this file"))
                }
            }
            K::Member(t, name, safe) => {
                if let Some(r) = self.names_resource(t) {
                    return self.resource_property(r, name, depth);
                }
                let v = ev(t)?;
                match v.get(name.as_str()) {
                    Some(v) => Ok(v.clone()),
                    None if *safe => Ok(Value::Null),
                    None => Err(format!("no property `{name}`")),
                }
            }
            K::Index(t, i, safe) => {
                let v = ev(t)?;
                let got = match ev(i)? {
                    Value::Number(n) => n.as_u64().and_then(|n| v.get(n as usize)).cloned(),
                    Value::String(k) => v.get(&k).cloned(),
                    other => return Err(format!("cannot index with {other}")),
                };
                match got {
                    Some(v) => Ok(v),
                    None if *safe => Ok(Value::Null),
                    None => Err("the index is not there".into()),
                }
            }
            K::Child(..) => Err(
                "a nested resource as a whole is not evaluated offline; use one of its properties"
                    .into(),
            ),
            K::Call(ns, name, args) => {
                if ns.as_deref().is_some_and(|n| n != "sys" && n != "az") {
                    return Err(format!(
                        "`{}.{name}()` is not evaluated offline",
                        ns.as_deref().unwrap_or_default()
                    ));
                }
                self.call(name, args, depth)
            }
            K::Other(what) => Err(format!("{what} is not evaluated offline")),
        }
    }

    fn file_arg(&self, v: &Value, name: &str) -> Result<PathBuf, String> {
        let p = v
            .as_str()
            .ok_or(format!("{name}(): the path is not a string"))?;
        Ok(self.path.parent().unwrap_or(Path::new(".")).join(p))
    }

    fn call(&self, name: &str, args: &[E], depth: usize) -> Result<Value, String> {
        let values = || {
            args.iter()
                .map(|a| self.eval(a, depth))
                .collect::<Result<Vec<_>, _>>()
        };
        match name {
            "loadTextContent" | "loadJsonContent" => {
                let vs = values()?;
                let Some(p) = vs.first() else {
                    return Err(format!("{name}() needs a file"));
                };
                let path = self.file_arg(p, name)?;
                let content = std::fs::read_to_string(&path)
                    .map_err(|e| format!("{name}('{}'): {e}", path.display()))?;
                if name == "loadTextContent" {
                    return Ok(Value::String(content));
                }
                if vs.len() > 1 {
                    return Err(
                        "loadJsonContent() with a JSON path is not evaluated offline".into(),
                    );
                }
                serde_json::from_str(&content)
                    .map_err(|e| format!("loadJsonContent('{}'): not JSON: {e}", path.display()))
            }
            _ if is_common_function(&name.to_lowercase()) => common_function(name, values()?),
            _ => Err(format!(
                "`{name}()` is not evaluated offline (it needs a deployment, or is not supported)"
            )),
        }
    }

    /// The value at `path` in a resource's body: through the written objects, then into
    /// the value of whatever expression holds the rest. (offset, value) or `None` if absent.
    fn lookup(&self, body: &E, path: &[&str]) -> Option<(usize, Result<Value, String>)> {
        let mut cur = body;
        for (i, key) in path.iter().enumerate() {
            match &cur.k {
                K::Obj(_) => cur = self.property(cur, key)?,
                _ => {
                    let v = self.eval(cur, 0);
                    let rest: Vec<&str> = path[i..].to_vec();
                    return match v {
                        Ok(v) => {
                            let mut at = &v;
                            for k in &rest {
                                at = at.get(k)?;
                            }
                            Some((cur.at, Ok(at.clone())))
                        }
                        Err(e) => Some((cur.at, Err(e))),
                    };
                }
            }
        }
        Some((cur.at, self.eval(cur, 0)))
    }

    fn field(&self, r: &Res, path: &[&str], what: &str) -> Option<Field> {
        let (at, v) = self.lookup(&r.body, path)?;
        Some(v.map_err(|e| self.unresolved(at, what, e)))
    }

    fn required(&self, r: &Res, path: &[&str], what: &str) -> Field {
        self.field(r, path, what).unwrap_or_else(|| {
            Err(self.unresolved(
                r.at,
                what,
                format!("missing ({} is not set)", path.join(".")),
            ))
        })
    }

    fn mapping(&self, r: &Res, path: &[&str], what: &str) -> Field {
        let v = self.required(r, path, what)?;
        let at = self.lookup(&r.body, path).map_or(r.at, |(at, _)| at);
        mapping_content(v).map_err(|e| self.unresolved(at, what, e))
    }

    fn alias(&self, r: &Res) -> String {
        format!("{}#{}", self.path.display(), r.path)
    }
}

/// Reads the MedTech resources of the Bicep file `path` (contents `text`) into `found`;
/// `given` is a parameters file's `parameters` object.
pub(super) fn read(
    path: &Path,
    text: &str,
    given: Option<&Value>,
    found: &mut Found,
) -> Result<()> {
    let fail = |(at, msg): (usize, String)| {
        let (l, c) = super::line_column(text, at);
        anyhow::anyhow!("{}:{l}:{c}: Bicep: {msg}", path.display())
    };
    let toks = Lexer { s: text, at: 0 }.tokens(false).map_err(fail)?;
    let mut decls = Decls::default();
    Parser {
        toks: &toks,
        i: 0,
        decls: &mut decls,
        within: None,
    }
    .file()
    .map_err(fail)?;
    let ev = Ev {
        path,
        text,
        decls: &decls,
        given,
    };
    for (m, at) in &decls.modules {
        eprintln!(
            "warning: {}: module '{m}' is not followed: import that file too (its params as a --parameters file)",
            ev.place(*at)
        );
    }
    let mut any = false;
    for r in &decls.resources {
        let ty = ev.full_type(r).to_lowercase();
        if r.existing || (ty != CONNECTOR && ty != DESTINATION) {
            continue;
        }
        any = true;
        if r.looped {
            found.problems.push(ev.unresolved(
                r.at,
                &r.path,
                "a resource loop (`[for …]`) is not expanded offline: import the deployed resources' JSON (`az healthcareapis workspace iot-connector show`)".into(),
            ));
            continue;
        }
        if r.conditional {
            eprintln!(
                "warning: {}: {} is deployed only if its `if (…)` holds; imported as if it does",
                ev.place(r.at),
                r.path
            );
        }
        let name = match ev.name(r, 0) {
            Ok(n) => last_segment(&n),
            Err(e) => {
                found.problems.push(ev.unresolved(
                    ev.property(&r.body, "name").map_or(r.at, |n| n.at),
                    "name",
                    e,
                ));
                String::new()
            }
        };
        let ing = ["properties", "ingestionEndpointConfiguration"];
        if ty == CONNECTOR {
            let name = if name.is_empty() {
                format!("connector{}", found.connectors.len() + 1)
            } else {
                name
            };
            found.connectors.push(Connector {
                name,
                aliases: vec![ev.alias(r)],
                file: path.to_path_buf(),
                event_hub: ev.required(r, &[ing[0], ing[1], "eventHubName"], "eventHubName"),
                consumer_group: ev
                    .field(r, &[ing[0], ing[1], "consumerGroup"], "consumerGroup")
                    .unwrap_or_else(|| Ok(Value::String("$Default".into()))),
                namespace: ev.required(
                    r,
                    &[ing[0], ing[1], "fullyQualifiedEventHubNamespace"],
                    "fullyQualifiedEventHubNamespace",
                ),
                device_mapping: ev.mapping(
                    r,
                    &["properties", "deviceMapping", "content"],
                    "deviceMapping",
                ),
                destinations: Vec::new(),
            });
        } else {
            // Its connector: the parent, when the file declares it, else the parent's name.
            let connector = match ev.parent(r) {
                Ok(Some(p)) if !p.existing => Some(ev.alias(p)),
                Ok(Some(p)) => ev.name(p, 0).ok().map(|n| last_segment(&n)),
                _ => ev.name(r, 0).ok().and_then(|n| {
                    let parts: Vec<&str> = n.split('/').collect();
                    (parts.len() >= 2).then(|| parts[parts.len() - 2].to_string())
                }),
            };
            found.destinations.push(Destination {
                connector,
                name,
                resolution: ev
                    .field(
                        r,
                        &["properties", "resourceIdentityResolutionType"],
                        "resourceIdentityResolutionType",
                    )
                    .unwrap_or_else(|| Ok(Value::String("Lookup".into()))),
                fhir_service: ev.required(
                    r,
                    &["properties", "fhirServiceResourceId"],
                    "fhirServiceResourceId",
                ),
                fhir_mapping: ev.mapping(
                    r,
                    &["properties", "fhirMapping", "content"],
                    "fhirMapping",
                ),
            });
        }
    }
    if !any && decls.resources.is_empty() && decls.modules.is_empty() && text.trim().is_empty() {
        bail!("{}: an empty Bicep file", path.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decls(src: &str) -> Decls {
        let toks = Lexer { s: src, at: 0 }.tokens(false).unwrap();
        let mut d = Decls::default();
        Parser {
            toks: &toks,
            i: 0,
            decls: &mut d,
            within: None,
        }
        .file()
        .unwrap();
        d
    }

    #[test]
    fn strings_escapes_interpolation_and_multiline() {
        let src = "param a string = 'x'\nvar b = 'it\\'s ${a}-${toUpper(a)} \\${no}'\nvar c = '''\nline 'one'\n${a}'''\n";
        let d = decls(src);
        let ev = Ev {
            path: Path::new("t.bicep"),
            text: src,
            decls: &d,
            given: None,
        };
        assert_eq!(
            ev.eval(&d.vars["b"], 0).unwrap(),
            Value::String("it's x-X ${no}".into())
        );
        assert_eq!(
            ev.eval(&d.vars["c"], 0).unwrap(),
            Value::String("line 'one'\n${a}".into())
        );
    }

    #[test]
    fn unsupported_expressions_are_named() {
        let src = "param p bool = true\nvar v = p ? 'a' : 'b'\nvar w = uniqueString('x')\n";
        let d = decls(src);
        let ev = Ev {
            path: Path::new("t.bicep"),
            text: src,
            decls: &d,
            given: None,
        };
        assert!(ev
            .eval(&d.vars["v"], 0)
            .unwrap_err()
            .contains("conditional"));
        assert!(ev
            .eval(&d.vars["w"], 0)
            .unwrap_err()
            .contains("uniqueString()"));
    }
}
