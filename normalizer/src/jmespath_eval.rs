//! Our JMESPath evaluator: JMESPath evaluated on the document as it is (the parsed [`Doc`],
//! the event's property maps, the virtual envelope), without converting it into the
//! `jmespath` crate's `Variable` tree first.
//!
//! The `jmespath` crate parses the expression (its [`Ast`] is the input here) and remains
//! the authority ([`crate::jmespath_fallback`]): [`eval`] covers the expressions device mappings use (fields, indexes,
//! slices, projections, filters, comparisons, boolean logic, multi-select, literals and
//! the functions in `call`) and gives up with [`Unsupported`] on anything else, on every
//! error, and on expression references. The caller then evaluates the same expression
//! with the crate (the fallback), which produces the result or the exact error message. Evaluation has no
//! side effects, so trying twice is safe.
//!
//! Results are those of the crate, with one deliberate difference: an object taken whole
//! from the document keeps its document order (as in the reference connector, whose
//! JmesPath.Net works on Json.NET tokens), where the crate sorts keys. Objects the
//! expression builds (multi-select hashes, `*` on an object, `keys`, `values`) are in the
//! crate's sorted order.

use std::borrow::Cow;
use std::cmp::Ordering;

use chrono::{DateTime, SecondsFormat, Utc};
use jmespath::ast::{Ast, Comparator};
use jmespath::Variable;
use serde_json::{Number, Value};

use crate::doc::{member, Doc};
use crate::scope::{Envelope, Token};

/// The evaluation fell outside what this module covers, or failed: evaluate with the
/// `jmespath` crate instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unsupported;

type Eval<'a> = Result<JmesValue<'a>, Unsupported>;

/// A JMESPath value: a part of the document (borrowed) or a value the expression built.
#[derive(Debug, Clone)]
pub enum JmesValue<'a> {
    /// `null`.
    Null,
    /// A boolean.
    Bool(bool),
    /// A number.
    Num(Number),
    /// A string.
    Str(Cow<'a, str>),
    /// A value of the document.
    Val(&'a Doc<'a>),
    /// The event envelope `{Body, Properties, SystemProperties}`.
    Env(&'a Envelope<'a>),
    /// `CalculatedContent`'s root: the document plus a top-level `matchedToken`.
    Root(Token<'a>, Token<'a>),
    /// An array the expression built.
    Arr(Vec<JmesValue<'a>>),
    /// An object the expression built, sorted by key, keys unique.
    Obj(Vec<(Cow<'a, str>, JmesValue<'a>)>),
}

/// What [`JmesValue::kind`] reports: the JMESPath type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Null,
    Bool,
    Num,
    Str,
    Arr,
    Obj,
}

impl<'a> JmesValue<'a> {
    /// The token as a JMESPath value.
    pub fn of_token(t: Token<'a>) -> JmesValue<'a> {
        match t {
            Token::Value(v) => JmesValue::Val(v),
            Token::Envelope(e) => JmesValue::Env(e),
        }
    }

    fn kind(&self) -> Kind {
        match self {
            JmesValue::Null | JmesValue::Val(Doc::Null) => Kind::Null,
            JmesValue::Bool(_) | JmesValue::Val(Doc::Bool(_)) => Kind::Bool,
            JmesValue::Num(_) | JmesValue::Val(Doc::Number(_)) => Kind::Num,
            JmesValue::Str(_) | JmesValue::Val(Doc::String(_)) => Kind::Str,
            JmesValue::Arr(_) | JmesValue::Val(Doc::Array(_)) => Kind::Arr,
            JmesValue::Obj(_)
            | JmesValue::Val(Doc::Object(_))
            | JmesValue::Env(_)
            | JmesValue::Root(..) => Kind::Obj,
        }
    }

    /// Whether this is `null`.
    pub fn is_null(&self) -> bool {
        self.kind() == Kind::Null
    }

    /// The length of an array.
    pub fn array_len(&self) -> Option<usize> {
        self.items().map(Items::len)
    }

    fn number(&self) -> Option<&Number> {
        match self {
            JmesValue::Num(n) | JmesValue::Val(Doc::Number(n)) => Some(n),
            _ => None,
        }
    }

    fn f64(&self) -> Option<f64> {
        self.number().and_then(Number::as_f64)
    }

    fn str(&self) -> Option<&str> {
        match self {
            JmesValue::Str(s) | JmesValue::Val(Doc::String(s)) => Some(s),
            _ => None,
        }
    }

    fn truthy(&self) -> bool {
        match self {
            JmesValue::Null | JmesValue::Val(Doc::Null) => false,
            JmesValue::Bool(b) | JmesValue::Val(Doc::Bool(b)) => *b,
            JmesValue::Num(_) | JmesValue::Val(Doc::Number(_)) => true,
            JmesValue::Str(s) | JmesValue::Val(Doc::String(s)) => !s.is_empty(),
            JmesValue::Arr(a) => !a.is_empty(),
            JmesValue::Val(Doc::Array(a)) => !a.is_empty(),
            JmesValue::Obj(o) => !o.is_empty(),
            JmesValue::Val(Doc::Object(m)) => !m.is_empty(),
            JmesValue::Env(_) | JmesValue::Root(..) => true,
        }
    }

    /// The array's items, when this is an array.
    fn items(&self) -> Option<Items<'_, 'a>> {
        match self {
            JmesValue::Arr(a) => Some(Items::Built(a)),
            JmesValue::Val(Doc::Array(a)) => Some(Items::Doc(a)),
            _ => None,
        }
    }

    /// The member `name` of an object (`null` for anything else or a missing member).
    fn field(&self, name: &str) -> JmesValue<'a> {
        match self {
            JmesValue::Val(Doc::Object(m)) => {
                member(m, name).map_or(JmesValue::Null, JmesValue::Val)
            }
            JmesValue::Env(e) => match name {
                "Body" => JmesValue::Val(e.body),
                "Properties" => JmesValue::Val(e.properties),
                "SystemProperties" => JmesValue::Val(e.system_properties),
                _ => JmesValue::Null,
            },
            JmesValue::Root(_, matched) if name == "matchedToken" => JmesValue::of_token(*matched),
            JmesValue::Root(doc, _) => JmesValue::of_token(*doc).field(name),
            JmesValue::Obj(o) => o
                .binary_search_by(|(k, _)| k.as_ref().cmp(name))
                .map_or(JmesValue::Null, |i| o[i].1.clone()),
            _ => JmesValue::Null,
        }
    }

    /// An object's members, sorted by key (as the crate's `BTreeMap` holds them).
    fn entries(&self) -> Option<Vec<(Cow<'a, str>, JmesValue<'a>)>> {
        let mut out: Vec<(Cow<'a, str>, JmesValue<'a>)> = match self {
            JmesValue::Obj(o) => return Some(o.clone()),
            JmesValue::Val(Doc::Object(m)) => m
                .iter()
                .map(|(k, v)| (Cow::Borrowed(k.as_ref()), JmesValue::Val(v)))
                .collect(),
            JmesValue::Env(e) => Envelope::NAMES
                .iter()
                .map(|&k| (Cow::Borrowed(k), JmesValue::Env(e).field(k)))
                .collect(),
            JmesValue::Root(doc, matched) => {
                let mut o = JmesValue::of_token(*doc).entries().unwrap_or_default();
                o.retain(|(k, _)| k != "matchedToken");
                o.push((Cow::Borrowed("matchedToken"), JmesValue::of_token(*matched)));
                o
            }
            _ => return None,
        };
        out.sort_by(|(a, _), (b, _)| a.cmp(b));
        Some(out)
    }

    fn len(&self) -> Option<usize> {
        match self {
            JmesValue::Str(s) | JmesValue::Val(Doc::String(s)) => Some(s.chars().count()),
            JmesValue::Arr(a) => Some(a.len()),
            JmesValue::Val(Doc::Array(a)) => Some(a.len()),
            JmesValue::Obj(o) => Some(o.len()),
            JmesValue::Val(Doc::Object(m)) => Some(m.len()),
            JmesValue::Env(_) => Some(3),
            JmesValue::Root(..) => self.entries().map(|e| e.len()),
            _ => None,
        }
    }

    /// The value as a document value: borrowed when it is a part of the document.
    pub fn to_doc(&self) -> Cow<'a, Doc<'a>> {
        match self {
            JmesValue::Val(v) => Cow::Borrowed(*v),
            other => Cow::Owned(other.to_owned_doc()),
        }
    }

    /// The value as JSON (a copy).
    pub fn to_value(&self) -> Value {
        self.to_doc().to_value()
    }

    fn to_owned_doc(&self) -> Doc<'a> {
        match self {
            JmesValue::Null => Doc::Null,
            JmesValue::Bool(b) => Doc::Bool(*b),
            JmesValue::Num(n) => Doc::Number(n.clone()),
            JmesValue::Str(s) => Doc::String(s.clone()),
            JmesValue::Val(v) => (*v).clone(),
            JmesValue::Env(e) => e.to_doc(),
            JmesValue::Arr(a) => Doc::Array(a.iter().map(JmesValue::to_owned_doc).collect()),
            JmesValue::Obj(_) | JmesValue::Root(..) => Doc::Object(
                self.entries()
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k, v.to_owned_doc()))
                    .collect(),
            ),
        }
    }

    /// A JSON value the expression built (a parsed string, a literal), as a JMESPath value.
    fn from_owned(v: Value) -> JmesValue<'a> {
        match v {
            Value::Null => JmesValue::Null,
            Value::Bool(b) => JmesValue::Bool(b),
            Value::Number(n) => JmesValue::Num(n),
            Value::String(s) => JmesValue::Str(Cow::Owned(s)),
            Value::Array(a) => JmesValue::Arr(a.into_iter().map(JmesValue::from_owned).collect()),
            Value::Object(m) => {
                let mut o: Vec<_> = m
                    .into_iter()
                    .map(|(k, v)| (Cow::<str>::Owned(k), JmesValue::from_owned(v)))
                    .collect();
                o.sort_by(|(a, _), (b, _)| a.cmp(b));
                JmesValue::Obj(o)
            }
        }
    }
}

/// The items of an array, wherever it lives.
#[derive(Clone, Copy)]
enum Items<'s, 'a> {
    Doc(&'a [Doc<'a>]),
    Built(&'s [JmesValue<'a>]),
}

impl<'a> Items<'_, 'a> {
    fn len(self) -> usize {
        match self {
            Items::Doc(a) => a.len(),
            Items::Built(a) => a.len(),
        }
    }

    fn get(self, i: usize) -> Option<JmesValue<'a>> {
        match self {
            Items::Doc(a) => a.get(i).map(JmesValue::Val),
            Items::Built(a) => a.get(i).cloned(),
        }
    }

    fn to_vec(self) -> Vec<JmesValue<'a>> {
        (0..self.len()).filter_map(|i| self.get(i)).collect()
    }
}

/// A literal of the expression.
fn literal(v: &Variable) -> JmesValue<'_> {
    match v {
        Variable::Null => JmesValue::Null,
        Variable::Bool(b) => JmesValue::Bool(*b),
        Variable::Number(n) => JmesValue::Num(n.clone()),
        Variable::String(s) => JmesValue::Str(Cow::Borrowed(s)),
        Variable::Array(a) => JmesValue::Arr(a.iter().map(|x| literal(x)).collect()),
        Variable::Object(m) => JmesValue::Obj(
            m.iter()
                .map(|(k, x)| (Cow::Borrowed(k.as_str()), literal(x)))
                .collect(),
        ),
        Variable::Expref(_) => JmesValue::Null,
    }
}

/// The crate's relative floating-point equality.
fn float_eq(a: f64, b: f64) -> bool {
    if a == b {
        return true;
    }
    let diff = (a - b).abs();
    if a == 0.0 || b == 0.0 || (a.abs() + b.abs()) < f64::MIN_POSITIVE {
        diff < (f64::EPSILON * f64::MIN_POSITIVE)
    } else {
        diff / (a.abs() + b.abs()) < f64::EPSILON
    }
}

/// JMESPath equality (the crate's: numbers within a relative epsilon, objects as maps).
fn equal(a: &JmesValue<'_>, b: &JmesValue<'_>) -> bool {
    let kind = a.kind();
    if kind != b.kind() {
        return false;
    }
    match kind {
        Kind::Null => true,
        Kind::Bool => a.truthy() == b.truthy(),
        Kind::Num => match (a.f64(), b.f64()) {
            (Some(x), Some(y)) => float_eq(x, y),
            _ => false,
        },
        Kind::Str => a.str() == b.str(),
        Kind::Arr => match (a.items(), b.items()) {
            (Some(x), Some(y)) => {
                x.len() == y.len()
                    && (0..x.len()).all(|i| match (x.get(i), y.get(i)) {
                        (Some(p), Some(q)) => equal(&p, &q),
                        _ => false,
                    })
            }
            _ => false,
        },
        Kind::Obj => match (a.entries(), b.entries()) {
            (Some(x), Some(y)) => {
                x.len() == y.len()
                    && x.iter()
                        .zip(&y)
                        .all(|((k1, v1), (k2, v2))| k1 == k2 && equal(v1, v2))
            }
            _ => false,
        },
    }
}

fn compare<'a>(c: &Comparator, a: &JmesValue<'_>, b: &JmesValue<'_>) -> JmesValue<'a> {
    match c {
        Comparator::Equal => JmesValue::Bool(equal(a, b)),
        Comparator::NotEqual => JmesValue::Bool(!equal(a, b)),
        _ => {
            let (Some(x), Some(y)) = (a.f64(), b.f64()) else {
                return JmesValue::Null; // ordering needs two numbers
            };
            let o = x.partial_cmp(&y).unwrap_or(Ordering::Less);
            JmesValue::Bool(match c {
                Comparator::LessThan => o == Ordering::Less,
                Comparator::LessThanEqual => o != Ordering::Greater,
                Comparator::GreaterThan => o == Ordering::Greater,
                _ => o != Ordering::Less,
            })
        }
    }
}

/// Evaluates `ast` against `data`.
///
/// ```
/// use normalizer::jmespath_eval::{eval, JmesValue};
/// let e = normalizer::jmespath_fallback::compile("Body[?hr > `60`].hr").unwrap();
/// let doc = serde_json::json!({"Body": [{"hr": 58}, {"hr": 72}]});
/// let doc = normalizer::doc::Doc::from_value(&doc);
/// let r = eval(e.as_ast(), &JmesValue::Val(&doc)).unwrap();
/// assert_eq!(r.to_value(), serde_json::json!([72]));
/// ```
pub fn eval<'a>(ast: &'a Ast, data: &JmesValue<'a>) -> Eval<'a> {
    Ok(match ast {
        Ast::Field { name, .. } => data.field(name),
        Ast::Subexpr { lhs, rhs, .. } => eval(rhs, &eval(lhs, data)?)?,
        Ast::Identity { .. } => data.clone(),
        Ast::Literal { value, .. } => literal(value),
        Ast::Index { idx, .. } => match data.items() {
            Some(items) if *idx >= 0 => items.get(*idx as usize).unwrap_or(JmesValue::Null),
            Some(items) => {
                let back = (idx.unsigned_abs() as usize).max(1);
                if items.len() >= back {
                    items.get(items.len() - back).unwrap_or(JmesValue::Null)
                } else {
                    JmesValue::Null
                }
            }
            None => JmesValue::Null,
        },
        Ast::Or { lhs, rhs, .. } => {
            let left = eval(lhs, data)?;
            if left.truthy() {
                left
            } else {
                eval(rhs, data)?
            }
        }
        Ast::And { lhs, rhs, .. } => {
            let left = eval(lhs, data)?;
            if left.truthy() {
                eval(rhs, data)?
            } else {
                left
            }
        }
        Ast::Not { node, .. } => JmesValue::Bool(!eval(node, data)?.truthy()),
        Ast::Condition {
            predicate, then, ..
        } => {
            if eval(predicate, data)?.truthy() {
                eval(then, data)?
            } else {
                JmesValue::Null
            }
        }
        Ast::Comparison {
            comparator,
            lhs,
            rhs,
            ..
        } => {
            let left = eval(lhs, data)?;
            let right = eval(rhs, data)?;
            compare(comparator, &left, &right)
        }
        Ast::ObjectValues { node, .. } => match eval(node, data)?.entries() {
            Some(e) => JmesValue::Arr(e.into_iter().map(|(_, v)| v).collect()),
            None => JmesValue::Null,
        },
        Ast::Projection { lhs, rhs, .. } => {
            let left = eval(lhs, data)?;
            match left.items() {
                None => JmesValue::Null,
                Some(items) => {
                    let mut out = Vec::new();
                    for i in 0..items.len() {
                        let Some(item) = items.get(i) else { break };
                        let r = eval(rhs, &item)?;
                        if !r.is_null() {
                            out.push(r);
                        }
                    }
                    JmesValue::Arr(out)
                }
            }
        }
        Ast::Flatten { node, .. } => {
            let inner = eval(node, data)?;
            match inner.items() {
                None => JmesValue::Null,
                Some(items) => {
                    let mut out = Vec::new();
                    for item in items.to_vec() {
                        match item.items() {
                            Some(sub) => out.extend(sub.to_vec()),
                            None => out.push(item),
                        }
                    }
                    JmesValue::Arr(out)
                }
            }
        }
        Ast::MultiList { elements, .. } => {
            if data.is_null() {
                JmesValue::Null
            } else {
                let mut out = Vec::with_capacity(elements.len());
                for e in elements {
                    out.push(eval(e, data)?);
                }
                JmesValue::Arr(out)
            }
        }
        Ast::MultiHash { elements, .. } => {
            if data.is_null() {
                JmesValue::Null
            } else {
                let mut out: Vec<(Cow<'a, str>, JmesValue<'a>)> =
                    Vec::with_capacity(elements.len());
                for kv in elements {
                    let v = eval(&kv.value, data)?;
                    match out.binary_search_by(|(k, _)| k.as_ref().cmp(kv.key.as_str())) {
                        Ok(i) => out[i].1 = v,
                        Err(i) => out.insert(i, (Cow::Borrowed(kv.key.as_str()), v)),
                    }
                }
                JmesValue::Obj(out)
            }
        }
        Ast::Slice {
            start, stop, step, ..
        } => {
            if *step == 0 {
                return Err(Unsupported); // the crate's "invalid slice" error
            }
            match data.items() {
                Some(items) => JmesValue::Arr(slice(items, *start, *stop, *step)),
                None => JmesValue::Null,
            }
        }
        Ast::Function { name, args, .. } => {
            let mut values = Vec::with_capacity(args.len());
            for a in args {
                if matches!(a, Ast::Expref { .. }) {
                    return Err(Unsupported);
                }
                values.push(eval(a, data)?);
            }
            call(name, values)?
        }
        Ast::Expref { .. } => return Err(Unsupported),
    })
}

/// The crate's slice, endpoint adjustment included.
fn slice<'a>(
    items: Items<'_, 'a>,
    start: Option<i32>,
    stop: Option<i32>,
    step: i32,
) -> Vec<JmesValue<'a>> {
    let len = items.len() as i64;
    let mut out = Vec::new();
    if len == 0 {
        return out;
    }
    let step = i64::from(step);
    let adjust = |end: i64| {
        if end < 0 {
            let e = end + len;
            if e >= 0 {
                e
            } else if step < 0 {
                -1
            } else {
                0
            }
        } else if end < len {
            end
        } else if step < 0 {
            len - 1
        } else {
            len
        }
    };
    let a = match start {
        Some(s) => adjust(i64::from(s)),
        None if step < 0 => len - 1,
        None => 0,
    };
    let b = match stop {
        Some(s) => adjust(i64::from(s)),
        None if step < 0 => -1,
        None => len,
    };
    let mut i = a;
    while (step > 0 && i < b) || (step < 0 && i > b) {
        if let Some(x) = items.get(i as usize) {
            out.push(x);
        }
        i += step;
    }
    out
}

/// `x` as the custom functions return numbers: integral values as integers.
fn number(x: f64) -> JmesValue<'static> {
    JmesValue::Num(if x.fract() == 0.0 && x.abs() < 9.007_199_254_740_992e15 {
        Number::from(x as i64)
    } else {
        Number::from_f64(x).unwrap_or_else(|| Number::from(0))
    })
}

fn float(x: f64) -> Result<JmesValue<'static>, Unsupported> {
    Number::from_f64(x).map(JmesValue::Num).ok_or(Unsupported)
}

/// The functions covered here, with the crate's signatures; anything else (an unknown
/// name, a wrong argument count or type, a custom function's error) is [`Unsupported`].
fn call<'a>(name: &str, mut args: Vec<JmesValue<'a>>) -> Eval<'a> {
    let n = args.len();
    let num =
        |i: usize, args: &[JmesValue<'_>]| args.get(i).and_then(JmesValue::f64).ok_or(Unsupported);
    let arity = |k: usize| if n == k { Ok(()) } else { Err(Unsupported) };
    match name {
        "add" | "subtract" | "multiply" | "divide" | "pow" => {
            arity(2)?;
            let (a, b) = (num(0, &args)?, num(1, &args)?);
            let r = match name {
                "add" => a + b,
                "subtract" => a - b,
                "multiply" => a * b,
                "divide" if b == 0.0 => return Err(Unsupported),
                "divide" => a / b,
                _ => a.powf(b),
            };
            if !r.is_finite() || r.abs() > i64::MAX as f64 {
                return Err(Unsupported);
            }
            Ok(number(r))
        }
        "fromUnixTimestamp" | "fromUnixTimestampMs" => {
            arity(1)?;
            let per_second = if name == "fromUnixTimestamp" {
                1.0
            } else {
                1000.0
            };
            let nanos = num(0, &args)? / per_second * 1e9;
            if !nanos.is_finite() || nanos.abs() > i64::MAX as f64 {
                return Err(Unsupported);
            }
            let t = DateTime::<Utc>::from_timestamp_nanos(nanos.round() as i64);
            Ok(JmesValue::Str(Cow::Owned(
                t.to_rfc3339_opts(SecondsFormat::AutoSi, true),
            )))
        }
        "insertString" => {
            arity(3)?;
            let pos = num(2, &args)?;
            let (Some(original), Some(insert)) = (args[0].str(), args[1].str()) else {
                return Err(Unsupported);
            };
            let len = original.chars().count();
            if pos.fract() != 0.0 || pos < 0.0 || pos > len as f64 {
                return Err(Unsupported);
            }
            let at = original
                .char_indices()
                .nth(pos as usize)
                .map_or(original.len(), |(i, _)| i);
            let mut s = original.to_string();
            s.insert_str(at, insert);
            Ok(JmesValue::Str(Cow::Owned(s)))
        }
        "to_array" => {
            arity(1)?;
            let x = args.pop().unwrap_or(JmesValue::Null);
            Ok(if x.kind() == Kind::Arr {
                x
            } else {
                JmesValue::Arr(vec![x])
            })
        }
        "to_number" => {
            arity(1)?;
            let x = args.pop().unwrap_or(JmesValue::Null);
            Ok(match x.kind() {
                Kind::Num => x,
                Kind::Str => match serde_json::from_str::<Value>(x.str().unwrap_or_default()) {
                    Ok(v) => JmesValue::from_owned(v),
                    Err(_) => JmesValue::Null,
                },
                _ => JmesValue::Null,
            })
        }
        "to_string" => {
            arity(1)?;
            let x = args.pop().unwrap_or(JmesValue::Null);
            Ok(if x.kind() == Kind::Str {
                x
            } else {
                JmesValue::Str(Cow::Owned(
                    serde_json::to_string(&sorted(&x)).map_err(|_| Unsupported)?,
                ))
            })
        }
        "length" => {
            arity(1)?;
            match args[0].kind() {
                Kind::Str | Kind::Arr | Kind::Obj => Ok(JmesValue::Num(Number::from(
                    args[0].len().ok_or(Unsupported)?,
                ))),
                _ => Err(Unsupported),
            }
        }
        "not_null" => {
            if n == 0 {
                return Err(Unsupported);
            }
            Ok(args
                .into_iter()
                .find(|a| !a.is_null())
                .unwrap_or(JmesValue::Null))
        }
        "abs" | "ceil" | "floor" => {
            arity(1)?;
            let x = num(0, &args)?;
            float(match name {
                "abs" => x.abs(),
                "ceil" => x.ceil(),
                _ => x.floor(),
            })
        }
        "starts_with" | "ends_with" => {
            arity(2)?;
            let (Some(s), Some(p)) = (args[0].str(), args[1].str()) else {
                return Err(Unsupported);
            };
            Ok(JmesValue::Bool(if name == "starts_with" {
                s.starts_with(p)
            } else {
                s.ends_with(p)
            }))
        }
        "contains" => {
            arity(2)?;
            match args[0].kind() {
                Kind::Arr => {
                    let items = args[0].items().ok_or(Unsupported)?;
                    Ok(JmesValue::Bool((0..items.len()).any(|i| {
                        items.get(i).is_some_and(|x| equal(&x, &args[1]))
                    })))
                }
                Kind::Str => Ok(JmesValue::Bool(match args[1].str() {
                    Some(needle) => args[0].str().unwrap_or_default().contains(needle),
                    None => false,
                })),
                _ => Err(Unsupported),
            }
        }
        "type" => {
            arity(1)?;
            Ok(JmesValue::Str(Cow::Borrowed(match args[0].kind() {
                Kind::Null => "null",
                Kind::Bool => "boolean",
                Kind::Num => "number",
                Kind::Str => "string",
                Kind::Arr => "array",
                Kind::Obj => "object",
            })))
        }
        _ => Err(Unsupported),
    }
}

/// The JSON the crate would serialize: objects with sorted keys.
fn sorted(x: &JmesValue<'_>) -> Value {
    match x.kind() {
        Kind::Obj => Value::Object(
            x.entries()
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k.into_owned(), sorted(&v)))
                .collect(),
        ),
        Kind::Arr => Value::Array(
            x.items()
                .map(|i| i.to_vec().iter().map(sorted).collect())
                .unwrap_or_default(),
        ),
        _ => x.to_owned_doc().to_value(),
    }
}
