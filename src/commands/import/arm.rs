//! The part of ARM template expressions an offline import can evaluate: string literals,
//! numbers, `parameters()`, `variables()`, `concat`, `format`, `replace`, `toLower`, `toUpper`,
//! `trim`, `string`, `json`, `split`, `resourceId`, member access and indexing. Anything else
//! (`reference()`, `resourceGroup()`, `subscription()`, `uniqueString()`, …) needs a
//! deployment and is an error naming the function, so the caller reports where it stands.
//! Names of parameters, variables and functions compare case-insensitively, as in ARM.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

/// How deep parameters and variables may refer to each other (a guard against cycles).
const MAX_DEPTH: usize = 32;

/// A parameter's value as the deployment would see it.
#[derive(Debug, Clone)]
pub enum Param {
    /// A value: from the parameters file, else the template's `defaultValue`.
    Value(Value),
    /// A Key Vault reference in the parameters file: a secret, never read here.
    KeyVault(String),
    /// No value: no `defaultValue`, not in the parameters file.
    Missing,
}

/// The parameters and variables an expression sees (keys lower-cased).
#[derive(Debug, Clone, Default)]
pub struct Scope {
    params: BTreeMap<String, Param>,
    vars: BTreeMap<String, Value>,
}

impl Scope {
    /// The scope of `template` (its `parameters` and `variables`), with the values `given`
    /// (a parameters file's `parameters` object, or a nested deployment's) taking precedence
    /// over each `defaultValue`. `given` values are evaluated in `outer` when set (a nested
    /// deployment's parameters are expressions of its parent).
    pub fn new(template: &Value, given: Option<&Value>, outer: Option<&Scope>) -> Scope {
        let mut scope = Scope::default();
        let given: BTreeMap<String, &Value> = given
            .and_then(Value::as_object)
            .map(|m| m.iter().map(|(k, v)| (k.to_lowercase(), v)).collect())
            .unwrap_or_default();
        if let Some(params) = template.get("parameters").and_then(Value::as_object) {
            for (name, decl) in params {
                let key = name.to_lowercase();
                let param = match given.get(&key) {
                    Some(g) if g.get("reference").is_some() => Param::KeyVault(
                        g.pointer("/reference/keyVault/id")
                            .and_then(Value::as_str)
                            .unwrap_or("a Key Vault")
                            .to_string(),
                    ),
                    Some(g) if g.get("value").is_some() => match outer {
                        Some(o) => match o.eval(&g["value"]) {
                            Ok(v) => Param::Value(v),
                            Err(_) => Param::Value(g["value"].clone()),
                        },
                        None => Param::Value(g["value"].clone()),
                    },
                    _ => match decl.get("defaultValue") {
                        Some(d) => Param::Value(d.clone()),
                        None => Param::Missing,
                    },
                };
                scope.params.insert(key, param);
            }
        }
        if let Some(vars) = template.get("variables").and_then(Value::as_object) {
            for (name, v) in vars {
                scope.vars.insert(name.to_lowercase(), v.clone());
            }
        }
        scope
    }

    /// `value` with every expression string evaluated (objects and arrays recursively).
    pub fn eval(&self, value: &Value) -> Result<Value, String> {
        self.eval_at(value, 0)
    }

    fn eval_at(&self, value: &Value, depth: usize) -> Result<Value, String> {
        if depth > MAX_DEPTH {
            return Err("parameters or variables refer to each other in a cycle".into());
        }
        match value {
            Value::String(s) => self.eval_string(s, depth),
            Value::Array(items) => items
                .iter()
                .map(|v| self.eval_at(v, depth))
                .collect::<Result<Vec<_>, _>>()
                .map(Value::Array),
            Value::Object(m) => {
                let mut out = Map::new();
                for (k, v) in m {
                    out.insert(k.clone(), self.eval_at(v, depth)?);
                }
                Ok(Value::Object(out))
            }
            other => Ok(other.clone()),
        }
    }

    fn eval_string(&self, s: &str, depth: usize) -> Result<Value, String> {
        if let Some(rest) = s.strip_prefix("[[") {
            return Ok(Value::String(format!("[{rest}")));
        }
        match s.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
            Some(body) => {
                let expr = Parser::new(body)?.parse_all()?;
                self.apply(&expr, depth)
            }
            None => Ok(Value::String(s.to_string())),
        }
    }

    fn apply(&self, expr: &Expr, depth: usize) -> Result<Value, String> {
        match expr {
            Expr::Lit(v) => Ok(v.clone()),
            Expr::Member(target, name) => {
                let v = self.apply(target, depth)?;
                v.as_object()
                    .and_then(|m| m.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)))
                    .map(|(_, v)| v.clone())
                    .ok_or_else(|| format!("no member `{name}`"))
            }
            Expr::Index(target, index) => {
                let v = self.apply(target, depth)?;
                let i = self.apply(index, depth)?;
                match (&v, &i) {
                    (Value::Array(a), Value::Number(n)) => n
                        .as_u64()
                        .and_then(|n| a.get(n as usize))
                        .cloned()
                        .ok_or_else(|| format!("index {n} is out of range")),
                    (Value::Object(_), Value::String(name)) => self.apply(
                        &Expr::Member(Box::new(Expr::Lit(v.clone())), name.clone()),
                        depth,
                    ),
                    _ => Err("cannot index this value".into()),
                }
            }
            Expr::Call(name, args) => self.call(name, args, depth),
        }
    }

    fn call(&self, name: &str, args: &[Expr], depth: usize) -> Result<Value, String> {
        let lname = name.to_lowercase();
        let values = || -> Result<Vec<Value>, String> {
            args.iter().map(|a| self.apply(a, depth)).collect()
        };
        match lname.as_str() {
            "parameters" => {
                let key = one_string(name, &values()?)?;
                match self.params.get(&key.to_lowercase()) {
                    Some(Param::Value(v)) => self.eval_at(v, depth + 1),
                    Some(Param::KeyVault(id)) => Err(format!(
                        "parameter '{key}' is a Key Vault reference ({id}): the secret is not read; put it into the config or its environment variable by hand"
                    )),
                    Some(Param::Missing) => Err(format!(
                        "parameter '{key}' has no value: no defaultValue, and not in the parameters file (--parameters)"
                    )),
                    None => Err(format!("parameter '{key}' is not declared")),
                }
            }
            "variables" => {
                let key = one_string(name, &values()?)?;
                match self.vars.get(&key.to_lowercase()) {
                    Some(v) => self
                        .eval_at(v, depth + 1)
                        .map_err(|e| format!("variable '{key}': {e}")),
                    None => Err(format!("variable '{key}' is not defined")),
                }
            }
            _ if is_common_function(&lname) => common_function(name, values()?),
            _ => Err(format!(
                "`{name}()` cannot be evaluated without a deployment"
            )),
        }
    }
}

/// A value as ARM turns it into text (strings unquoted, the rest as JSON).
pub(super) fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The functions ARM templates and Bicep share (names case-insensitive), evaluated offline.
const COMMON_FUNCTIONS: [&str; 10] = [
    "concat",
    "format",
    "replace",
    "tolower",
    "toupper",
    "trim",
    "string",
    "json",
    "split",
    "resourceid",
];

/// Whether `lname` (lower case) is one of [`COMMON_FUNCTIONS`].
pub(super) fn is_common_function(lname: &str) -> bool {
    COMMON_FUNCTIONS.contains(&lname)
}

/// One of [`COMMON_FUNCTIONS`] on its evaluated arguments; `name` as written, for messages.
pub(super) fn common_function(name: &str, vs: Vec<Value>) -> Result<Value, String> {
    match name.to_lowercase().as_str() {
        "concat" => {
            if vs.iter().all(Value::is_array) {
                Ok(Value::Array(
                    vs.into_iter()
                        .flat_map(|v| match v {
                            Value::Array(a) => a,
                            _ => Vec::new(),
                        })
                        .collect(),
                ))
            } else {
                Ok(Value::String(vs.iter().map(text).collect()))
            }
        }
        "format" => {
            let (fmt, rest) = vs.split_first().ok_or("format() needs a format string")?;
            let fmt = fmt.as_str().ok_or("format(): the format is not a string")?;
            format_arm(fmt, rest).map(Value::String)
        }
        "replace" => match vs.as_slice() {
            [Value::String(s), Value::String(a), Value::String(b)] => {
                Ok(Value::String(s.replace(a.as_str(), b)))
            }
            _ => Err("replace() takes three strings".into()),
        },
        "tolower" => Ok(Value::String(one_string(name, &vs)?.to_lowercase())),
        "toupper" => Ok(Value::String(one_string(name, &vs)?.to_uppercase())),
        "trim" => Ok(Value::String(one_string(name, &vs)?.trim().to_string())),
        "string" => match vs.as_slice() {
            [v] => Ok(Value::String(text(v))),
            _ => Err("string() takes one argument".into()),
        },
        "json" => {
            let s = one_string(name, &vs)?;
            serde_json::from_str(&s).map_err(|e| format!("json(): {e}"))
        }
        "split" => match vs.as_slice() {
            [Value::String(s), sep] => {
                let seps: Vec<String> = match sep {
                    Value::String(x) => vec![x.clone()],
                    Value::Array(a) => a.iter().map(text).collect(),
                    _ => return Err("split(): the separator is not a string".into()),
                };
                let mut parts = vec![s.clone()];
                for sep in seps.iter().filter(|s| !s.is_empty()) {
                    parts = parts
                        .iter()
                        .flat_map(|p| p.split(sep.as_str()).map(str::to_string))
                        .collect();
                }
                Ok(Value::Array(parts.into_iter().map(Value::String).collect()))
            }
            _ => Err("split() takes a string and a separator".into()),
        },
        "resourceid" => resource_id(&vs).map(Value::String),
        _ => Err(format!("`{name}()` is not a shared function")),
    }
}

fn one_string(name: &str, values: &[Value]) -> Result<String, String> {
    match values {
        [Value::String(s)] => Ok(s.clone()),
        _ => Err(format!("{name}() takes one string")),
    }
}

/// `format('{0}-{1}', a, b)`: `{n}` (and `{n:spec}`, the spec ignored) replaced by argument n.
pub(super) fn format_arm(fmt: &str, args: &[Value]) -> Result<String, String> {
    let mut out = String::new();
    let mut chars = fmt.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '{' if chars.peek() == Some(&'{') => {
                chars.next();
                out.push('{');
            }
            '}' if chars.peek() == Some(&'}') => {
                chars.next();
                out.push('}');
            }
            '{' => {
                let mut spec = String::new();
                for c in chars.by_ref() {
                    if c == '}' {
                        break;
                    }
                    spec.push(c);
                }
                let index = spec.split(':').next().unwrap_or("");
                let i: usize = index
                    .trim()
                    .parse()
                    .map_err(|_| format!("format(): bad placeholder {{{spec}}}"))?;
                let arg = args
                    .get(i)
                    .ok_or_else(|| format!("format(): no argument {i}"))?;
                out.push_str(&text(arg));
            }
            c => out.push(c),
        }
    }
    Ok(out)
}

/// `resourceId([subscriptionId], [resourceGroup], type, name…)`: the id, with
/// `<subscription>` and `<resource group>` standing for what only a deployment knows.
pub(super) fn resource_id(args: &[Value]) -> Result<String, String> {
    let args: Vec<String> = args.iter().map(text).collect();
    let t = args
        .iter()
        .position(|a| a.contains('/'))
        .ok_or("resourceId(): no resource type")?;
    let (scope, rest) = args.split_at(t);
    let (sub, rg) = match scope {
        [] => ("<subscription>", "<resource group>"),
        [rg] => ("<subscription>", rg.as_str()),
        [sub, rg, ..] => (sub.as_str(), rg.as_str()),
    };
    let mut segments = rest[0].split('/');
    let namespace = segments.next().unwrap_or_default();
    let types: Vec<&str> = segments.collect();
    let names = &rest[1..];
    if types.len() != names.len() {
        return Err(format!(
            "resourceId(): {} needs {} name(s), got {}",
            rest[0],
            types.len(),
            names.len()
        ));
    }
    let mut id = format!("/subscriptions/{sub}/resourceGroups/{rg}/providers/{namespace}");
    for (t, n) in types.iter().zip(names) {
        id.push_str(&format!("/{t}/{n}"));
    }
    Ok(id)
}

/// A parsed expression.
#[derive(Debug, Clone)]
enum Expr {
    Lit(Value),
    Call(String, Vec<Expr>),
    Member(Box<Expr>, String),
    Index(Box<Expr>, Box<Expr>),
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Str(String),
    Num(i64),
    Ident(String),
    Punct(char),
}

struct Parser {
    toks: Vec<Tok>,
    at: usize,
}

impl Parser {
    fn new(s: &str) -> Result<Parser, String> {
        let mut toks = Vec::new();
        let mut chars = s.chars().peekable();
        while let Some(&c) = chars.peek() {
            if c.is_whitespace() {
                chars.next();
            } else if c == '\'' {
                chars.next();
                let mut lit = String::new();
                loop {
                    match chars.next() {
                        Some('\'') if chars.peek() == Some(&'\'') => {
                            chars.next();
                            lit.push('\'');
                        }
                        Some('\'') => break,
                        Some(c) => lit.push(c),
                        None => return Err("unterminated string in expression".into()),
                    }
                }
                toks.push(Tok::Str(lit));
            } else if c.is_ascii_digit() || c == '-' {
                let mut n = String::new();
                n.push(c);
                chars.next();
                while let Some(&d) = chars.peek() {
                    if !d.is_ascii_digit() {
                        break;
                    }
                    n.push(d);
                    chars.next();
                }
                toks.push(Tok::Num(
                    n.parse()
                        .map_err(|_| format!("bad number {n} in expression"))?,
                ));
            } else if c.is_alphanumeric() || c == '_' {
                let mut id = String::new();
                while let Some(&d) = chars.peek() {
                    if !(d.is_alphanumeric() || d == '_') {
                        break;
                    }
                    id.push(d);
                    chars.next();
                }
                toks.push(Tok::Ident(id));
            } else if "(),.[]".contains(c) {
                toks.push(Tok::Punct(c));
                chars.next();
            } else {
                return Err(format!("unexpected `{c}` in expression"));
            }
        }
        Ok(Parser { toks, at: 0 })
    }

    fn parse_all(mut self) -> Result<Expr, String> {
        let e = self.expr()?;
        if self.at != self.toks.len() {
            return Err("unexpected text after the expression".into());
        }
        Ok(e)
    }

    fn next(&mut self) -> Option<Tok> {
        let t = self.toks.get(self.at).cloned();
        self.at += 1;
        t
    }

    fn eat(&mut self, c: char) -> bool {
        if self.toks.get(self.at) == Some(&Tok::Punct(c)) {
            self.at += 1;
            true
        } else {
            false
        }
    }

    fn expr(&mut self) -> Result<Expr, String> {
        let mut e = match self.next() {
            Some(Tok::Str(s)) => Expr::Lit(Value::String(s)),
            Some(Tok::Num(n)) => Expr::Lit(Value::from(n)),
            Some(Tok::Ident(name)) => match name.as_str() {
                "true" => Expr::Lit(Value::Bool(true)),
                "false" => Expr::Lit(Value::Bool(false)),
                "null" => Expr::Lit(Value::Null),
                _ => {
                    if !self.eat('(') {
                        return Err(format!("`{name}` is not a function call"));
                    }
                    let mut args = Vec::new();
                    if !self.eat(')') {
                        loop {
                            args.push(self.expr()?);
                            if self.eat(')') {
                                break;
                            }
                            if !self.eat(',') {
                                return Err(format!("expected `,` or `)` in {name}()"));
                            }
                        }
                    }
                    Expr::Call(name, args)
                }
            },
            _ => return Err("expected a value".into()),
        };
        loop {
            if self.eat('.') {
                match self.next() {
                    Some(Tok::Ident(m)) => e = Expr::Member(Box::new(e), m),
                    _ => return Err("expected a name after `.`".into()),
                }
            } else if self.eat('[') {
                let i = self.expr()?;
                if !self.eat(']') {
                    return Err("expected `]`".into());
                }
                e = Expr::Index(Box::new(e), Box::new(i));
            } else {
                return Ok(e);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn evaluates_the_quickstart_names() {
        let template = json!({
            "parameters": {"basename": {"type": "string"}},
            "variables": {
                "workspaceName": "[replace(format('hw-{0}', parameters('basename')), '-', '')]",
                "fhirServiceName": "[format('{0}/fs-{1}', variables('workspaceName'), parameters('basename'))]",
                "id": "[resourceId('Microsoft.HealthcareApis/workspaces/fhirservices', variables('workspaceName'), split(variables('fhirServiceName'), '/')[1])]"
            }
        });
        let given = json!({"basename": {"value": "a-b"}});
        let scope = Scope::new(&template, Some(&given), None);
        assert_eq!(
            scope.eval(&json!("[variables('ID')]")).unwrap(),
            json!("/subscriptions/<subscription>/resourceGroups/<resource group>/providers/Microsoft.HealthcareApis/workspaces/hwab/fhirservices/fs-a-b")
        );
        assert_eq!(scope.eval(&json!("[['x']")).unwrap(), json!("['x']"));
        let bare = Scope::new(&template, None, None);
        assert!(bare
            .eval(&json!("[variables('workspaceName')]"))
            .unwrap_err()
            .contains("parameter 'basename' has no value"));
        assert!(bare
            .eval(&json!("[resourceGroup().location]"))
            .unwrap_err()
            .contains("resourceGroup()"));
    }
}
