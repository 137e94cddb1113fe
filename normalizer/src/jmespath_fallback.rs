//! JMESPath through the `jmespath` crate, the authority and the fallback: it compiles every
//! expression ([`compile`]), and evaluates ([`search`]) whatever our evaluator
//! ([`crate::jmespath_eval`]) gives up on, so results and error messages are the crate's. It
//! also converts documents to the crate's `Variable` tree and back, and tells which member
//! names an expression needs ([`required_names`]).
//!
//! The runtime carries the MedTech custom functions: `add`, `subtract`, `multiply`, `divide`,
//! `pow` (results must fit a 64-bit integer's range; division by zero and overflow are
//! errors), `insertString(original, toInsert, pos)`, `fromUnixTimestamp(seconds)` and
//! `fromUnixTimestampMs(ms)` (return RFC 3339 UTC strings).

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

use chrono::{DateTime, SecondsFormat, Utc};
use jmespath::ast::{Ast, Comparator};
use jmespath::functions::{ArgumentType, CustomFunction, Signature};
use jmespath::{Context, ErrorReason, JmespathError, Rcvar, Runtime, Variable};
use serde_json::Value;

use crate::doc::Doc;
use crate::scope::Token;

/// A compiled JMESPath expression, bound to the shared runtime with custom functions.
pub type JmesExpression = jmespath::Expression<'static>;

fn runtime() -> &'static Runtime {
    static RUNTIME: OnceLock<Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        let mut rt = Runtime::new();
        rt.register_builtin_functions();
        register_custom_functions(&mut rt);
        rt
    })
}

/// Compiles a JMESPath expression with the custom functions available.
///
/// ```
/// let e = normalizer::jmespath_fallback::compile("multiply(to_number(h), `0.0254`)").unwrap();
/// let doc = normalizer::jmespath_fallback::to_variable(&serde_json::json!({"h": "100"}));
/// let r = e.search(&doc).unwrap();
/// assert_eq!(r.as_number(), Some(2.54));
/// ```
pub fn compile(expression: &str) -> Result<JmesExpression, JmespathError> {
    runtime().compile(expression)
}

/// Evaluates a compiled expression against a variable.
///
/// Unlike `Expression::search`, which serializes its argument into a fresh copy (the
/// `jmespath` crate only skips that with a nightly-only feature), this shares `data`.
pub fn search(e: &JmesExpression, data: &Rcvar) -> Result<Rcvar, JmespathError> {
    jmespath::interpret(data, e.as_ast(), &mut Context::new(e.as_str(), runtime()))
}

/// Member names that must occur somewhere in a document (as the key of some object, at
/// any depth) for a `typeMatchExpression` to match anything: when one is missing, the
/// expression yields null or an empty array, without error. Conservative: only filter
/// projections over `@`, fields and `to_array` (`to_array(@)[?Body.weight]`,
/// `Body.readings[?hr && hr > \`0\`]`), field paths and what follows an error-free
/// source are analysed; anything else contributes no name.
///
/// ```
/// let e = normalizer::jmespath_fallback::compile("to_array(@)[?Body.weight && Body.kind == 'scale']").unwrap();
/// assert_eq!(normalizer::jmespath_fallback::required_names(&e), ["Body", "kind", "weight"]);
/// let e = normalizer::jmespath_fallback::compile("to_array(@)[?!Body.weight]").unwrap();
/// assert!(normalizer::jmespath_fallback::required_names(&e).is_empty());
/// ```
pub fn required_names(e: &JmesExpression) -> Vec<&str> {
    let mut names = Vec::new();
    result_names(e.as_ast(), &mut names);
    names.sort_unstable();
    names.dedup();
    names
}

/// Names without which `ast`, on any input, yields null or an empty array without error.
fn result_names<'a>(ast: &'a Ast, out: &mut Vec<&'a str>) {
    match ast {
        Ast::Field { name, .. } => out.push(name),
        // A null or empty left side gives null or `[]`; the right side is not evaluated.
        Ast::Projection { lhs, rhs, .. } => {
            result_names(lhs, out);
            if let Ast::Condition { predicate, .. } = &**rhs {
                if is_source(lhs) {
                    truthy_names(predicate, out);
                }
            }
        }
        Ast::Flatten { node, .. } => result_names(node, out),
        Ast::Subexpr { lhs, rhs, .. } => {
            if is_source(lhs) {
                result_names(rhs, out);
            }
            if is_path(rhs) {
                result_names(lhs, out);
            }
        }
        _ => {}
    }
}

/// Never fails, and yields only parts of its input (possibly gathered in new arrays), so
/// a name absent from the input is absent from the result.
fn is_source(ast: &Ast) -> bool {
    match ast {
        Ast::Identity { .. } | Ast::Field { .. } | Ast::Index { .. } => true,
        Ast::Subexpr { lhs, rhs, .. } | Ast::Projection { lhs, rhs, .. } => {
            is_source(lhs) && is_source(rhs)
        }
        Ast::Flatten { node, .. } | Ast::ObjectValues { node, .. } => is_source(node),
        Ast::Condition {
            predicate, then, ..
        } => never_fails(predicate) && is_source(then),
        Ast::Function { name, args, .. } => {
            name == "to_array" && args.len() == 1 && is_source(&args[0])
        }
        _ => false,
    }
}

/// Field paths (`a.b[0].c`): null on null, on arrays (for names) and on missing members.
fn is_path(ast: &Ast) -> bool {
    match ast {
        Ast::Field { .. } | Ast::Index { .. } => true,
        Ast::Subexpr { lhs, rhs, .. } => is_path(lhs) && is_path(rhs),
        _ => false,
    }
}

/// Evaluates without error on any input (no function calls, no slices).
fn never_fails(ast: &Ast) -> bool {
    match ast {
        Ast::Identity { .. } | Ast::Field { .. } | Ast::Index { .. } | Ast::Literal { .. } => true,
        Ast::Subexpr { lhs, rhs, .. }
        | Ast::Projection { lhs, rhs, .. }
        | Ast::And { lhs, rhs, .. }
        | Ast::Or { lhs, rhs, .. }
        | Ast::Comparison { lhs, rhs, .. } => never_fails(lhs) && never_fails(rhs),
        Ast::Condition {
            predicate, then, ..
        } => never_fails(predicate) && never_fails(then),
        Ast::Not { node, .. } | Ast::Flatten { node, .. } | Ast::ObjectValues { node, .. } => {
            never_fails(node)
        }
        _ => false,
    }
}

/// Names without which the predicate is falsy, without error, on any input.
fn truthy_names<'a>(ast: &'a Ast, out: &mut Vec<&'a str>) {
    match ast {
        _ if is_path(ast) => path_names(ast, out),
        Ast::And { lhs, rhs, .. } => {
            truthy_names(lhs, out);
            if never_fails(lhs) {
                truthy_names(rhs, out);
            }
        }
        Ast::Comparison {
            comparator,
            lhs,
            rhs,
            ..
        } => match comparator {
            // Ordering needs two numbers: a null side makes the comparison null.
            Comparator::LessThan
            | Comparator::LessThanEqual
            | Comparator::GreaterThan
            | Comparator::GreaterThanEqual => {
                if never_fails(lhs) && never_fails(rhs) {
                    if is_path(lhs) {
                        path_names(lhs, out);
                    }
                    if is_path(rhs) {
                        path_names(rhs, out);
                    }
                }
            }
            // A missing path is null, which equals no literal but null.
            Comparator::Equal => match (&**lhs, &**rhs) {
                (p, Ast::Literal { value, .. }) | (Ast::Literal { value, .. }, p)
                    if is_path(p) && !value.is_null() =>
                {
                    path_names(p, out)
                }
                _ => {}
            },
            Comparator::NotEqual => {}
        },
        _ => {}
    }
}

fn path_names<'a>(ast: &'a Ast, out: &mut Vec<&'a str>) {
    match ast {
        Ast::Field { name, .. } => out.push(name),
        Ast::Subexpr { lhs, rhs, .. } => {
            path_names(lhs, out);
            path_names(rhs, out);
        }
        _ => {}
    }
}

/// The message of an evaluation error (custom-function errors verbatim).
pub fn error_message(e: &JmespathError) -> String {
    match &e.reason {
        ErrorReason::Parse(m) => m.clone(),
        ErrorReason::Runtime(r) => r.to_string(),
    }
}

/// Converts a JSON value to a JMESPath variable (once per document).
pub fn to_variable(v: &Value) -> Rcvar {
    Arc::new(match v {
        Value::Null => Variable::Null,
        Value::Bool(b) => Variable::Bool(*b),
        Value::Number(n) => Variable::Number(n.clone()),
        Value::String(s) => Variable::String(s.clone()),
        Value::Array(a) => Variable::Array(a.iter().map(to_variable).collect()),
        Value::Object(m) => {
            Variable::Object(m.iter().map(|(k, x)| (k.clone(), to_variable(x))).collect())
        }
    })
}

/// Converts a document value to a JMESPath variable (once per document). A member name
/// occurs once in a [`Doc`] object, so none is lost to the crate's map.
pub fn doc_to_variable(v: &Doc<'_>) -> Rcvar {
    Arc::new(match v {
        Doc::Null => Variable::Null,
        Doc::Bool(b) => Variable::Bool(*b),
        Doc::Number(n) => Variable::Number(n.clone()),
        Doc::String(s) => Variable::String(s.to_string()),
        Doc::Array(a) => Variable::Array(a.iter().map(doc_to_variable).collect()),
        Doc::Object(m) => Variable::Object(
            m.iter()
                .map(|(k, x)| (k.to_string(), doc_to_variable(x)))
                .collect(),
        ),
    })
}

/// Converts a document token (a value, the event envelope) to a JMESPath variable.
pub fn token_to_variable(t: Token<'_>) -> Rcvar {
    match t {
        Token::Value(v) => doc_to_variable(v),
        Token::Envelope(e) => {
            let mut o = BTreeMap::new();
            o.insert("Body".to_string(), doc_to_variable(e.body));
            o.insert("Properties".to_string(), doc_to_variable(e.properties));
            o.insert(
                "SystemProperties".to_string(),
                doc_to_variable(e.system_properties),
            );
            Arc::new(Variable::Object(o))
        }
    }
}

/// Converts a JMESPath result back to JSON.
pub fn to_value(v: &Variable) -> Value {
    match v {
        Variable::Null => Value::Null,
        Variable::String(s) => Value::String(s.clone()),
        Variable::Bool(b) => Value::Bool(*b),
        Variable::Number(n) => Value::Number(n.clone()),
        Variable::Array(a) => Value::Array(a.iter().map(|x| to_value(x)).collect()),
        Variable::Object(m) => {
            Value::Object(m.iter().map(|(k, x)| (k.clone(), to_value(x))).collect())
        }
        Variable::Expref(_) => Value::Null,
    }
}

/// Converts a JMESPath result to a document value (owning its strings).
pub fn to_doc(v: &Variable) -> Doc<'static> {
    match v {
        Variable::Null | Variable::Expref(_) => Doc::Null,
        Variable::String(s) => Doc::String(s.clone().into()),
        Variable::Bool(b) => Doc::Bool(*b),
        Variable::Number(n) => Doc::Number(n.clone()),
        Variable::Array(a) => Doc::Array(a.iter().map(|x| to_doc(x)).collect()),
        Variable::Object(m) => Doc::Object(
            m.iter()
                .map(|(k, x)| (k.clone().into(), to_doc(x)))
                .collect(),
        ),
    }
}

fn fail(ctx: &Context<'_>, message: String) -> JmespathError {
    JmespathError::from_ctx(ctx, ErrorReason::Parse(message))
}

fn number_var(x: f64) -> Rcvar {
    let n = if x.fract() == 0.0 && x.abs() < 9.007_199_254_740_992e15 {
        serde_json::Number::from(x as i64)
    } else {
        serde_json::Number::from_f64(x).unwrap_or_else(|| serde_json::Number::from(0))
    };
    Arc::new(Variable::Number(n))
}

fn arith(name: &'static str, op: fn(f64, f64) -> Option<f64>) -> Box<CustomFunction> {
    Box::new(CustomFunction::new(
        Signature::new(vec![ArgumentType::Number, ArgumentType::Number], None),
        Box::new(move |args: &[Rcvar], ctx: &mut Context<'_>| {
            let (a, b) = (
                args[0].as_number().unwrap_or(f64::NAN),
                args[1].as_number().unwrap_or(f64::NAN),
            );
            match op(a, b) {
                None => Err(fail(ctx, format!("{name}({a}, {b}): division by zero"))),
                Some(r) if !r.is_finite() || r.abs() > i64::MAX as f64 => Err(fail(
                    ctx,
                    format!("{name}({a}, {b}): overflow, the result does not fit a 64-bit integer's range"),
                )),
                Some(r) => Ok(number_var(r)),
            }
        }),
    ))
}

fn from_unix(name: &'static str, per_second: f64) -> Box<CustomFunction> {
    Box::new(CustomFunction::new(
        Signature::new(vec![ArgumentType::Number], None),
        Box::new(move |args: &[Rcvar], ctx: &mut Context<'_>| {
            let x = args[0].as_number().unwrap_or(f64::NAN);
            let nanos = x / per_second * 1e9;
            if !nanos.is_finite() || nanos.abs() > i64::MAX as f64 {
                return Err(fail(ctx, format!("{name}({x}): timestamp out of range")));
            }
            let t = DateTime::<Utc>::from_timestamp_nanos(nanos.round() as i64);
            Ok(Arc::new(Variable::String(
                t.to_rfc3339_opts(SecondsFormat::AutoSi, true),
            )))
        }),
    ))
}

fn register_custom_functions(rt: &mut Runtime) {
    rt.register_function("add", arith("add", |a, b| Some(a + b)));
    rt.register_function("subtract", arith("subtract", |a, b| Some(a - b)));
    rt.register_function("multiply", arith("multiply", |a, b| Some(a * b)));
    rt.register_function(
        "divide",
        arith("divide", |a, b| if b == 0.0 { None } else { Some(a / b) }),
    );
    rt.register_function("pow", arith("pow", |a, b| Some(a.powf(b))));
    rt.register_function("fromUnixTimestamp", from_unix("fromUnixTimestamp", 1.0));
    rt.register_function(
        "fromUnixTimestampMs",
        from_unix("fromUnixTimestampMs", 1000.0),
    );
    rt.register_function(
        "insertString",
        Box::new(CustomFunction::new(
            Signature::new(
                vec![ArgumentType::String, ArgumentType::String, ArgumentType::Number],
                None,
            ),
            Box::new(|args: &[Rcvar], ctx: &mut Context<'_>| {
                let original = args[0].as_string().cloned().unwrap_or_default();
                let insert = args[1].as_string().cloned().unwrap_or_default();
                let pos = args[2].as_number().unwrap_or(f64::NAN);
                let len = original.chars().count();
                if pos.fract() != 0.0 || pos < 0.0 || pos > len as f64 {
                    return Err(fail(
                        ctx,
                        format!(
                            "insertString: position {pos} is out of range for a string of length {len}"
                        ),
                    ));
                }
                let at = original
                    .char_indices()
                    .nth(pos as usize)
                    .map(|(i, _)| i)
                    .unwrap_or(original.len());
                let mut s = original;
                s.insert_str(at, &insert);
                Ok(Arc::new(Variable::String(s)))
            }),
        )),
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn run(expr: &str, doc: Value) -> Result<Value, String> {
        let e = compile(expr).map_err(|e| e.to_string())?;
        e.search(to_variable(&doc))
            .map(|v| to_value(&v))
            .map_err(|e| error_message(&e))
    }

    #[test]
    fn custom_functions_as_documented() {
        assert_eq!(run("add(`10`, `10`)", json!(null)), Ok(json!(20)));
        assert_eq!(
            run("divide(left, right)", json!({"left": 40, "right": 50})),
            Ok(json!(0.8))
        );
        assert_eq!(
            run("subtract(left, right)", json!({"left": 40, "right": 50})),
            Ok(json!(-10))
        );
        assert_eq!(run("multiply(`10`, `10`)", json!(null)), Ok(json!(100)));
        assert_eq!(
            run("pow(`10`, `10`)", json!(null)),
            Ok(json!(10_000_000_000i64))
        );
        assert_eq!(run("pow(`100`, `0.5`)", json!(null)), Ok(json!(10)));
        assert_eq!(
            run(
                "insertString(original, toInsert, pos)",
                json!({"original": "suess", "toInsert": "cc", "pos": 2})
            ),
            Ok(json!("success"))
        );
        assert_eq!(
            run(
                "insertString(original, toInsert, length(original))",
                json!({"original": "myString", "toInsert": "!!"})
            ),
            Ok(json!("myString!!"))
        );
        assert_eq!(
            run("fromUnixTimestamp(unix)", json!({"unix": 1625677200})),
            Ok(json!("2021-07-07T17:00:00Z"))
        );
        assert_eq!(
            run(
                "fromUnixTimestampMs(unix)",
                json!({"unix": 1626799080000i64})
            ),
            Ok(json!("2021-07-20T16:38:00Z"))
        );
    }

    #[test]
    fn custom_function_errors_are_clear() {
        let e = run("divide(left, right)", json!({"left": 50, "right": 0})).unwrap_err();
        assert!(e.contains("division by zero"), "{e}");
        let e = run("pow(left, right)", json!({"left": 40, "right": 50})).unwrap_err();
        assert!(e.contains("overflow"), "{e}");
        let e = run("insertString(o, i, `100`)", json!({"o": "ab", "i": "c"})).unwrap_err();
        assert!(e.contains("out of range"), "{e}");
        let e = run("insertString(o, i, `-1`)", json!({"o": "ab", "i": "c"})).unwrap_err();
        assert!(e.contains("out of range"), "{e}");
        let e = run("add(a, `1`)", json!({"a": "x"})).unwrap_err();
        assert!(e.contains("number"), "{e}");
    }
}
