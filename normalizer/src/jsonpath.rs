//! JSONPath in the dialect of Json.NET's `SelectToken`/`SelectTokens`, which is what
//! MedTech and IoMT FHIR Connector templates are written against.
//!
//! Supported (see `docs/TEMPLATES.md` for the full dialect description):
//! * `$` root (optional: `a.b` is read as `$.a.b`), `.name`, `['name']`, `["name"]`,
//!   `.['name']`, `['a','b']`, `.*`, `[*]`, `[0]`, `[0,2]`, `[start:end:step]`;
//! * recursive descent `..name`, `..*`, `..['a']`, `..[0]`;
//! * filters `[?(...)]` on the children of an array or object, and the Json.NET scan
//!   filter `..[?(...)]`, which tests the node itself and every descendant (so
//!   `$..[?(@heartrate)]` matches the root when it has `heartrate`);
//! * in filters: `@path` with or without a dot after `@` (`@x`, `@.x`, `@['x']`,
//!   `@Body.x`), `$path`, single- or double-quoted strings, numbers, `true`,
//!   `false`, `null`; `==`, `!=`, `<`, `<=`, `>`, `>=`, `&&`, `||`, parentheses;
//!   `=~ /pattern/flags` (flags `i`, `m`, `s`, `x`; Rust `regex` syntax, which lacks
//!   .NET's look-around and back-references).
//!   A path alone is an existence test (a `null` value exists).
//!
//! As in Json.NET, a negative index (`[-1]`) selects nothing (slices do take negative
//! bounds), a name on an array and an index on an object select nothing, and a
//! comparison between a string and a number compares their text.

use std::borrow::Cow;
use std::cmp::Ordering;
use std::ops::ControlFlow;

use serde_json::Value;

use crate::doc::{member, Doc};

/// A compiled JSONPath expression.
#[derive(Debug, Clone, PartialEq)]
pub struct JsonPath {
    steps: Vec<Step>,
}

/// Why an expression does not compile.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid JSONPath at character {position}: {message}")]
pub struct JsonPathError {
    /// Zero-based character offset in the expression.
    pub position: usize,
    /// What is wrong.
    pub message: String,
}

#[derive(Debug, Clone, PartialEq)]
enum Step {
    Child(String),
    Children(Vec<String>),
    Wildcard,
    Index(Vec<i64>),
    Slice(Option<i64>, Option<i64>, Option<i64>),
    Filter(Box<Expr>),
    /// `..x`: apply the inner step to the node and every descendant.
    Scan(Box<Step>),
    /// `..[?()]`: keep the node and every descendant that satisfies the filter.
    ScanFilter(Box<Expr>),
}

#[derive(Debug, Clone, PartialEq)]
enum Expr {
    Or(Box<Expr>, Box<Expr>),
    And(Box<Expr>, Box<Expr>),
    Exists(Operand),
    Compare(Operand, CmpOp, Operand),
    Matches(Operand, Box<Pattern>),
}

/// A `/pattern/flags` literal of a `=~` filter.
#[derive(Debug, Clone)]
struct Pattern {
    source: String,
    regex: regex::Regex,
}

impl PartialEq for Pattern {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Operand {
    Current(Vec<Step>),
    Root(Vec<Step>),
    Literal(Doc<'static>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CmpOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

/// The reference's event document `{Body, Properties, SystemProperties}`, seen without
/// building it: expressions read the body and the event's property maps where they are,
/// and a [`Doc`] of the whole is built only when an expression selects the envelope
/// itself.
#[derive(Debug, Clone, Copy)]
pub struct Envelope<'a> {
    /// `Body`: the parsed event body.
    pub body: &'a Doc<'a>,
    /// `Properties`: the event's application properties (an object).
    pub properties: &'a Doc<'a>,
    /// `SystemProperties`: the event's system properties (an object).
    pub system_properties: &'a Doc<'a>,
}

impl<'a> Envelope<'a> {
    /// The envelope's member names, in document order.
    pub const NAMES: [&'static str; 3] = ["Body", "Properties", "SystemProperties"];

    /// The envelope as a document (a copy; strings stay borrowed).
    pub fn to_doc(&self) -> Doc<'a> {
        Doc::Object(vec![
            (Cow::Borrowed("Body"), self.body.clone()),
            (Cow::Borrowed("Properties"), self.properties.clone()),
            (
                Cow::Borrowed("SystemProperties"),
                self.system_properties.clone(),
            ),
        ])
    }
}

/// A token of a document: a value of the document, or the envelope itself.
#[derive(Debug, Clone, Copy)]
pub enum Token<'a> {
    /// A value of the document.
    Value(&'a Doc<'a>),
    /// The virtual event envelope.
    Envelope(&'a Envelope<'a>),
}

impl<'a> Token<'a> {
    /// The member `name`, if any.
    fn child(self, name: &str) -> Option<Token<'a>> {
        match self {
            Token::Value(Doc::Object(m)) => member(m, name).map(Token::Value),
            Token::Value(_) => None,
            Token::Envelope(e) => match name {
                "Body" => Some(Token::Value(e.body)),
                "Properties" => Some(Token::Value(e.properties)),
                "SystemProperties" => Some(Token::Value(e.system_properties)),
                _ => None,
            },
        }
    }

    /// Calls `f` on each child (object members, array items) in order.
    fn for_each_child(self, f: &mut dyn FnMut(Token<'a>) -> Flow) -> Flow {
        match self {
            Token::Value(Doc::Object(m)) => {
                for (_, v) in m {
                    f(Token::Value(v))?;
                }
                Flow::Continue(())
            }
            Token::Value(Doc::Array(a)) => {
                for v in a {
                    f(Token::Value(v))?;
                }
                Flow::Continue(())
            }
            Token::Value(_) => Flow::Continue(()),
            Token::Envelope(e) => {
                f(Token::Value(e.body))?;
                f(Token::Value(e.properties))?;
                f(Token::Value(e.system_properties))
            }
        }
    }

    /// The token as a document value: borrowed when it is one, else built.
    pub fn into_doc(self) -> Cow<'a, Doc<'a>> {
        match self {
            Token::Value(v) => Cow::Borrowed(v),
            Token::Envelope(e) => Cow::Owned(e.to_doc()),
        }
    }

    /// The document value, when the token is one.
    pub fn as_doc(self) -> Option<&'a Doc<'a>> {
        match self {
            Token::Value(v) => Some(v),
            Token::Envelope(_) => None,
        }
    }
}

/// What an expression is evaluated against: a document, optionally extended with a
/// top-level `matchedToken` property (how `CalculatedContent` sees each match) without
/// copying the document.
#[derive(Debug, Clone, Copy)]
pub struct Scope<'a> {
    /// The document.
    doc: Token<'a>,
    /// The token added as `matchedToken` to the document's root, if any.
    matched: Option<Token<'a>>,
}

impl<'a> Scope<'a> {
    /// A plain document.
    pub fn new(doc: &'a Doc<'a>) -> Self {
        Scope::of(Token::Value(doc))
    }

    /// A document seen with `matchedToken` added at its root.
    pub fn with_match(doc: &'a Doc<'a>, matched: &'a Doc<'a>) -> Self {
        Scope::of_match(Token::Value(doc), Token::Value(matched))
    }

    /// A plain document given as a token (the envelope, or any token of it).
    pub fn of(doc: Token<'a>) -> Self {
        Scope { doc, matched: None }
    }

    /// A document given as a token, seen with `matchedToken` added at its root.
    pub fn of_match(doc: Token<'a>, matched: Token<'a>) -> Self {
        Scope {
            doc,
            matched: Some(matched),
        }
    }

    fn root(&self) -> Node<'a> {
        match self.matched {
            Some(matched) => Node::Root {
                doc: self.doc,
                matched,
            },
            None => Node::Token(self.doc),
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Node<'a> {
    Token(Token<'a>),
    Root { doc: Token<'a>, matched: Token<'a> },
}

const MATCHED_TOKEN: &str = "matchedToken";

impl<'a> Node<'a> {
    fn value(v: &'a Doc<'a>) -> Self {
        Node::Token(Token::Value(v))
    }

    /// The member `name`, if any.
    fn child(self, name: &str) -> Option<Node<'a>> {
        match self {
            Node::Token(t) => t.child(name).map(Node::Token),
            Node::Root { matched, .. } if name == MATCHED_TOKEN => Some(Node::Token(matched)),
            Node::Root { doc, .. } => doc.child(name).map(Node::Token),
        }
    }

    /// Calls `f` on each child (object members, array items) in order.
    fn for_each_child(self, f: &mut dyn FnMut(Node<'a>) -> Flow) -> Flow {
        match self {
            Node::Token(t) => t.for_each_child(&mut |k| f(Node::Token(k))),
            Node::Root { doc, matched } => {
                match doc {
                    Token::Value(Doc::Object(m)) => {
                        for (k, v) in m {
                            if k.as_ref() != MATCHED_TOKEN {
                                f(Node::value(v))?;
                            }
                        }
                    }
                    Token::Value(_) => {}
                    Token::Envelope(_) => doc.for_each_child(&mut |k| f(Node::Token(k)))?,
                }
                f(Node::Token(matched))
            }
        }
    }

    fn array(self) -> Option<&'a Vec<Doc<'a>>> {
        match self {
            Node::Token(Token::Value(Doc::Array(a))) => Some(a),
            _ => None,
        }
    }

    fn into_doc(self) -> Cow<'a, Doc<'a>> {
        match self {
            Node::Token(t) => t.into_doc(),
            Node::Root { doc, matched } => {
                let mut m = match doc.into_doc().into_owned() {
                    Doc::Object(m) => m,
                    _ => Vec::new(),
                };
                // As a map insert: a `matchedToken` already there keeps its place.
                let matched = matched.into_doc().into_owned();
                match m.iter_mut().find(|(k, _)| k.as_ref() == MATCHED_TOKEN) {
                    Some(slot) => slot.1 = matched,
                    None => m.push((Cow::Borrowed(MATCHED_TOKEN), matched)),
                }
                Cow::Owned(Doc::Object(m))
            }
        }
    }

    fn scalar(self) -> Option<&'a Doc<'a>> {
        match self {
            Node::Token(Token::Value(v)) if !v.is_container() => Some(v),
            _ => None,
        }
    }
}

/// Whether a visit goes on; `Break` once the caller has what it needs.
type Flow = ControlFlow<()>;

impl JsonPath {
    /// Compiles an expression.
    ///
    /// ```
    /// use normalizer::jsonpath::{JsonPath, Scope};
    /// let p = JsonPath::compile("$..[?(@heartrate)]").unwrap();
    /// let doc = serde_json::json!({"Body": [{"heartrate": 60}, {"steps": 2}]});
    /// let doc = normalizer::doc::Doc::from_value(&doc);
    /// assert_eq!(p.select(Scope::new(&doc)).len(), 1);
    /// ```
    pub fn compile(expression: &str) -> Result<JsonPath, JsonPathError> {
        let mut p = Parser {
            chars: expression.chars().collect(),
            pos: 0,
        };
        p.skip_ws();
        let steps = p.parse_path(false, true)?;
        p.skip_ws();
        if p.pos < p.chars.len() {
            return Err(p.err(format!("unexpected character '{}'", p.chars[p.pos])));
        }
        Ok(JsonPath { steps })
    }

    /// Every token the path selects, in document order.
    pub fn select<'a>(&self, scope: Scope<'a>) -> Vec<Cow<'a, Doc<'a>>> {
        let mut out = Vec::new();
        let _ = visit(&self.steps, scope.root(), scope, &mut |n| {
            out.push(n.into_doc());
            Flow::Continue(())
        });
        out
    }

    /// Every token the path selects from a plain document (no `matchedToken`), in
    /// document order, without building values.
    pub fn select_tokens<'a>(&self, doc: Token<'a>) -> Vec<Token<'a>> {
        let mut out = Vec::new();
        let _ = visit(&self.steps, Node::Token(doc), Scope::of(doc), &mut |n| {
            // Below a plain root every node is a token; `Root` only heads a match scope.
            if let Node::Token(t) = n {
                out.push(t);
            }
            Flow::Continue(())
        });
        out
    }

    /// The token the path selects when it selects exactly one: `Ok(None)` for none,
    /// `Err(n)` when it selects `n > 1` tokens. Builds no list.
    ///
    /// ```
    /// use normalizer::jsonpath::{JsonPath, Scope};
    /// let doc = serde_json::json!({"a": [1, 2]});
    /// let doc = normalizer::doc::Doc::from_value(&doc);
    /// assert_eq!(JsonPath::compile("$.a[1]").unwrap().select_one(Scope::new(&doc)).unwrap().unwrap().to_value(), serde_json::json!(2));
    /// assert_eq!(JsonPath::compile("$.a[*]").unwrap().select_one(Scope::new(&doc)), Err(2));
    /// ```
    pub fn select_one<'a>(&self, scope: Scope<'a>) -> Result<Option<Cow<'a, Doc<'a>>>, usize> {
        // The common `$.a.b`: member names only, at most one token, no visitor.
        let (node, steps) = match children(&self.steps, scope.root()) {
            Chain::Missing => return Ok(None),
            Chain::Found(node) => return Ok(Some(node.into_doc())),
            Chain::Rest(node, steps) => (node, steps),
        };
        let mut first = None;
        let mut n = 0usize;
        let _ = visit(steps, node, scope, &mut |node| {
            if n == 0 {
                first = Some(node);
            }
            n += 1;
            Flow::Continue(())
        });
        match n {
            0 | 1 => Ok(first.map(Node::into_doc)),
            n => Err(n),
        }
    }
}

impl JsonPath {
    /// Member names that must occur somewhere in a document (as the key of some object,
    /// at any depth) for the path to select anything from it; a cheap test that lets a
    /// normalizer skip templates whose `typeMatchExpression` cannot match. Conservative:
    /// a name under `||` counts only when both sides need it, names of a `['a','b']`
    /// union not at all. Valid for a plain document (not a `matchedToken` scope).
    ///
    /// ```
    /// use normalizer::jsonpath::JsonPath;
    /// let p = JsonPath::compile("$..[?(@Body.heartRate && @Body.x > 1 || @y)]").unwrap();
    /// assert!(p.required_names().is_empty());
    /// let p = JsonPath::compile("$..[?(@Body.heartRate && @Body.x > 1)]").unwrap();
    /// assert_eq!(p.required_names(), ["Body", "heartRate", "x"]);
    /// ```
    pub fn required_names(&self) -> Vec<&str> {
        let mut names = Vec::new();
        steps_names(&self.steps, &mut names);
        names.sort_unstable();
        names.dedup();
        names
    }
}

impl JsonPath {
    /// Whether the path reads only below one member of the document's root other than
    /// `matchedToken` (`$.Body.deviceId`, `$.Body.readings[?(@.x > 1)]`): it then selects
    /// the same tokens whatever token a [`Scope::with_match`] adds. A path with a `$`
    /// inside a filter may see `matchedToken`, so it does not count.
    ///
    /// ```
    /// use normalizer::jsonpath::JsonPath;
    /// assert!(JsonPath::compile("$.Body.deviceId").unwrap().reads_below_document_member());
    /// assert!(!JsonPath::compile("$.matchedToken.hr").unwrap().reads_below_document_member());
    /// assert!(!JsonPath::compile("$..hr").unwrap().reads_below_document_member());
    /// assert!(!JsonPath::compile("$.Body[?(@.a == $.matchedToken.a)]").unwrap().reads_below_document_member());
    /// ```
    pub fn reads_below_document_member(&self) -> bool {
        matches!(self.steps.first(), Some(Step::Child(name)) if name != MATCHED_TOKEN)
            && !steps_use_root(&self.steps)
    }
}

/// Whether a filter in `steps` has a `$` operand.
fn steps_use_root(steps: &[Step]) -> bool {
    steps.iter().any(|step| match step {
        Step::Filter(e) | Step::ScanFilter(e) => expr_uses_root(e),
        Step::Scan(inner) => steps_use_root(std::slice::from_ref(&**inner)),
        Step::Child(_) | Step::Children(_) | Step::Wildcard | Step::Index(_) | Step::Slice(..) => {
            false
        }
    })
}

fn expr_uses_root(e: &Expr) -> bool {
    let operand = |op: &Operand| match op {
        Operand::Root(_) => true,
        Operand::Current(steps) => steps_use_root(steps),
        Operand::Literal(_) => false,
    };
    match e {
        Expr::Or(a, b) | Expr::And(a, b) => expr_uses_root(a) || expr_uses_root(b),
        Expr::Exists(op) | Expr::Matches(op, _) => operand(op),
        Expr::Compare(l, _, r) => operand(l) || operand(r),
    }
}

fn steps_names<'p>(steps: &'p [Step], out: &mut Vec<&'p str>) {
    for step in steps {
        step_names(step, out);
    }
}

fn step_names<'p>(step: &'p Step, out: &mut Vec<&'p str>) {
    match step {
        Step::Child(name) => out.push(name),
        Step::Filter(e) | Step::ScanFilter(e) => expr_names(e, out),
        Step::Scan(inner) => step_names(inner, out),
        Step::Children(_) | Step::Wildcard | Step::Index(_) | Step::Slice(..) => {}
    }
}

fn expr_names<'p>(expr: &'p Expr, out: &mut Vec<&'p str>) {
    let operand = |op: &'p Operand, out: &mut Vec<&'p str>| match op {
        Operand::Current(steps) | Operand::Root(steps) => steps_names(steps, out),
        Operand::Literal(_) => {}
    };
    match expr {
        Expr::And(a, b) => {
            expr_names(a, out);
            expr_names(b, out);
        }
        Expr::Or(a, b) => {
            let (mut x, mut y) = (Vec::new(), Vec::new());
            expr_names(a, &mut x);
            expr_names(b, &mut y);
            out.extend(x.into_iter().filter(|n| y.contains(n)));
        }
        Expr::Exists(op) | Expr::Matches(op, _) => operand(op, out),
        Expr::Compare(l, _, r) => {
            operand(l, out);
            operand(r, out);
        }
    }
}

/// Calls `f` on every node `steps` select from `node`, in document order, without
/// building intermediate lists; stops early when `f` breaks.
fn visit<'a>(
    steps: &[Step],
    node: Node<'a>,
    scope: Scope<'a>,
    f: &mut dyn FnMut(Node<'a>) -> Flow,
) -> Flow {
    match children(steps, node) {
        Chain::Missing => Flow::Continue(()),
        Chain::Found(node) => f(node),
        Chain::Rest(node, steps) => match steps.split_first() {
            Some((step, rest)) => visit_step(step, rest, node, scope, f),
            None => f(node),
        },
    }
}

/// Where a run of leading member names (`.a.b`) leads.
enum Chain<'a, 's> {
    /// A member is missing: the path selects nothing.
    Missing,
    /// Every step was a member name: the path selects exactly this node.
    Found(Node<'a>),
    /// The node reached, and the steps left (the first is not a member name).
    Rest(Node<'a>, &'s [Step]),
}

/// Follows the leading `Step::Child` steps directly, without the visitor's recursion.
fn children<'a, 's>(mut steps: &'s [Step], mut node: Node<'a>) -> Chain<'a, 's> {
    while let Some((step, rest)) = steps.split_first() {
        let Step::Child(name) = step else {
            return Chain::Rest(node, steps);
        };
        match node.child(name) {
            Some(n) => node = n,
            None => return Chain::Missing,
        }
        steps = rest;
    }
    Chain::Found(node)
}

/// Applies `step` to `node`, then `rest` to each result.
fn visit_step<'a>(
    step: &Step,
    rest: &[Step],
    node: Node<'a>,
    scope: Scope<'a>,
    f: &mut dyn FnMut(Node<'a>) -> Flow,
) -> Flow {
    match step {
        Step::Child(name) => match node.child(name) {
            Some(n) => visit(rest, n, scope, f),
            None => Flow::Continue(()),
        },
        Step::Children(names) => {
            for name in names {
                if let Some(n) = node.child(name) {
                    visit(rest, n, scope, f)?;
                }
            }
            Flow::Continue(())
        }
        Step::Wildcard => node.for_each_child(&mut |n| visit(rest, n, scope, f)),
        Step::Index(indexes) => {
            if let Some(a) = node.array() {
                for &i in indexes {
                    if let Some(v) = usize::try_from(i).ok().and_then(|i| a.get(i)) {
                        visit(rest, Node::value(v), scope, f)?;
                    }
                }
            }
            Flow::Continue(())
        }
        Step::Slice(start, end, step) => match node.array() {
            Some(a) => slice(a, *start, *end, *step, &mut |v| {
                visit(rest, Node::value(v), scope, f)
            }),
            None => Flow::Continue(()),
        },
        Step::Filter(expr) => node.for_each_child(&mut |k| {
            if eval(expr, k, scope) {
                visit(rest, k, scope, f)
            } else {
                Flow::Continue(())
            }
        }),
        Step::Scan(inner) => walk(node, &mut |d| visit_step(inner, rest, d, scope, f)),
        Step::ScanFilter(expr) => {
            if false_on_scalars(expr) {
                // Scalars cannot pass: test only the node and the objects and arrays below.
                if node.scalar().is_some() {
                    return Flow::Continue(());
                }
                scan_filter::<true>(expr, rest, node, scope, f)
            } else {
                scan_filter::<false>(expr, rest, node, scope, f)
            }
        }
    }
}

/// `..[?(expr)]`: `rest` applied to the node and every descendant that satisfies `expr`,
/// depth first, in document order (`walk` with the test inlined: this is every
/// `typeMatchExpression`'s scan).
/// `SKIP_SCALARS`: `expr` is false on every scalar (see [`false_on_scalars`]), so scalar
/// descendants are not visited at all.
fn scan_filter<'a, const SKIP_SCALARS: bool>(
    expr: &Expr,
    rest: &[Step],
    node: Node<'a>,
    scope: Scope<'a>,
    f: &mut dyn FnMut(Node<'a>) -> Flow,
) -> Flow {
    if eval(expr, node, scope) {
        visit(rest, node, scope, f)?;
    }
    let skip = |v: &Doc<'_>| SKIP_SCALARS && !v.is_container();
    match node {
        Node::Token(Token::Value(Doc::Object(m))) => {
            for (_, v) in m {
                if !skip(v) {
                    scan_filter::<SKIP_SCALARS>(expr, rest, Node::value(v), scope, f)?;
                }
            }
            Flow::Continue(())
        }
        Node::Token(Token::Value(Doc::Array(a))) => {
            for v in a {
                if !skip(v) {
                    scan_filter::<SKIP_SCALARS>(expr, rest, Node::value(v), scope, f)?;
                }
            }
            Flow::Continue(())
        }
        Node::Token(Token::Value(_)) => Flow::Continue(()),
        _ => node.for_each_child(&mut |k| match k {
            Node::Token(Token::Value(v)) if skip(v) => Flow::Continue(()),
            _ => scan_filter::<SKIP_SCALARS>(expr, rest, k, scope, f),
        }),
    }
}

/// Whether a filter is false on every scalar `@` without looking: each way it can be
/// true needs a path from `@` that starts by selecting below it (a member, an index, a
/// wildcard, a filter), which a scalar has none of. (`$..[?(@heartRate)]` is; `@ > 5`
/// or `$.x` is not.)
fn false_on_scalars(expr: &Expr) -> bool {
    let below_current = |op: &Operand| match op {
        Operand::Current(steps) => matches!(
            steps.first(),
            Some(
                Step::Child(_)
                    | Step::Children(_)
                    | Step::Wildcard
                    | Step::Index(_)
                    | Step::Slice(..)
                    | Step::Filter(_)
            )
        ),
        Operand::Root(_) | Operand::Literal(_) => false,
    };
    match expr {
        Expr::And(a, b) => false_on_scalars(a) || false_on_scalars(b),
        Expr::Or(a, b) => false_on_scalars(a) && false_on_scalars(b),
        Expr::Exists(op) | Expr::Matches(op, _) => below_current(op),
        // Only the left side decides whether anything is compared.
        Expr::Compare(l, _, _) => below_current(l),
    }
}

/// The node and every descendant, depth first, in document order.
fn walk<'a>(node: Node<'a>, f: &mut dyn FnMut(Node<'a>) -> Flow) -> Flow {
    f(node)?;
    match node {
        // Plain JSON, the bulk of any document: recurse directly.
        Node::Token(Token::Value(Doc::Object(m))) => {
            for (_, v) in m {
                walk(Node::value(v), f)?;
            }
            Flow::Continue(())
        }
        Node::Token(Token::Value(Doc::Array(a))) => {
            for v in a {
                walk(Node::value(v), f)?;
            }
            Flow::Continue(())
        }
        Node::Token(Token::Value(_)) => Flow::Continue(()),
        _ => node.for_each_child(&mut |k| walk(k, f)),
    }
}

fn slice<'a>(
    a: &'a [Doc<'a>],
    start: Option<i64>,
    end: Option<i64>,
    step: Option<i64>,
    f: &mut dyn FnMut(&'a Doc<'a>) -> Flow,
) -> Flow {
    let len = a.len() as i64;
    let step = step.unwrap_or(1);
    if step == 0 {
        return Flow::Continue(());
    }
    let norm = |i: i64| if i < 0 { (len + i).max(0) } else { i.min(len) };
    if step > 0 {
        let mut i = start.map(norm).unwrap_or(0);
        let e = end.map(norm).unwrap_or(len);
        while i < e {
            f(&a[i as usize])?;
            i = i.saturating_add(step);
        }
    } else {
        let mut i = start
            .map(|s| if s < 0 { len + s } else { s.min(len - 1) })
            .unwrap_or(len - 1);
        let e = end.map(|e| if e < 0 { len + e } else { e }).unwrap_or(-1);
        while i > e && i >= 0 {
            if i < len {
                f(&a[i as usize])?;
            }
            i = i.saturating_add(step);
        }
    }
    Flow::Continue(())
}

fn eval<'a>(expr: &Expr, current: Node<'a>, scope: Scope<'a>) -> bool {
    match expr {
        Expr::Or(a, b) => eval(a, current, scope) || eval(b, current, scope),
        Expr::And(a, b) => eval(a, current, scope) && eval(b, current, scope),
        // `@a.b`, the usual test, settled without a visit.
        Expr::Exists(Operand::Current(steps)) => match children(steps, current) {
            Chain::Missing => false,
            Chain::Found(_) => true,
            Chain::Rest(n, rest) => visit(rest, n, scope, &mut |_| Flow::Break(())).is_break(),
        },
        Expr::Exists(op) => any_node(op, current, scope, &mut |_| true),
        Expr::Matches(l, pattern) => any_node(l, current, scope, &mut |v| match v {
            Some(Doc::String(s)) => pattern.regex.is_match(s),
            _ => false,
        }),
        Expr::Compare(l, op, Operand::Literal(r)) => any_node(l, current, scope, &mut |lv| {
            lv.is_some_and(|a| compare(a, *op, r))
        }),
        Expr::Compare(l, op, r) => {
            let mut right: Vec<&'a Doc<'a>> = Vec::new();
            let mut keep = |n: Node<'a>| {
                right.extend(n.scalar());
                Flow::Continue(())
            };
            let _ = match r {
                Operand::Current(steps) => visit(steps, current, scope, &mut keep),
                Operand::Root(steps) => visit(steps, scope.root(), scope, &mut keep),
                Operand::Literal(_) => Flow::Continue(()),
            };
            !right.is_empty()
                && any_node(l, current, scope, &mut |lv| {
                    lv.is_some_and(|a| right.iter().any(|b| compare(a, *op, b)))
                })
        }
    }
}

/// Whether any node the operand selects satisfies `pred`, which sees the node's value
/// when it is a scalar (`None` for objects and arrays).
fn any_node<'a>(
    op: &Operand,
    current: Node<'a>,
    scope: Scope<'a>,
    pred: &mut dyn FnMut(Option<&Doc<'_>>) -> bool,
) -> bool {
    let mut test = |n: Node<'a>| {
        if pred(n.scalar()) {
            Flow::Break(())
        } else {
            Flow::Continue(())
        }
    };
    let (steps, start) = match op {
        Operand::Current(steps) => (steps, current),
        Operand::Root(steps) => (steps, scope.root()),
        Operand::Literal(v) => return pred((!v.is_container()).then_some(v)),
    };
    // `@a.b` (member names only) selects at most one node: no visitor needed.
    match children(steps, start) {
        Chain::Missing => false,
        Chain::Found(n) => pred(n.scalar()),
        Chain::Rest(n, rest) => visit(rest, n, scope, &mut test).is_break(),
    }
}

fn compare(a: &Doc<'_>, op: CmpOp, b: &Doc<'_>) -> bool {
    match op {
        CmpOp::Eq => scalar_eq(a, b),
        CmpOp::Ne => !scalar_eq(a, b),
        _ => match scalar_cmp(a, b) {
            Some(o) => match op {
                CmpOp::Lt => o == Ordering::Less,
                CmpOp::Le => o != Ordering::Greater,
                CmpOp::Gt => o == Ordering::Greater,
                CmpOp::Ge => o != Ordering::Less,
                CmpOp::Eq | CmpOp::Ne => false,
            },
            None => false,
        },
    }
}

fn scalar_eq(a: &Doc<'_>, b: &Doc<'_>) -> bool {
    match (a, b) {
        (Doc::Number(x), Doc::Number(y)) => match (x.as_i64(), y.as_i64()) {
            (Some(x), Some(y)) => x == y,
            _ => x.as_f64() == y.as_f64(),
        },
        _ => a == b,
    }
}

fn text(v: &Doc<'_>) -> Option<String> {
    match v {
        Doc::String(s) => Some(s.to_string()),
        Doc::Number(n) => Some(crate::value::format_number(n)),
        Doc::Bool(b) => Some(if *b { "True" } else { "False" }.to_string()),
        _ => None,
    }
}

fn scalar_cmp(a: &Doc<'_>, b: &Doc<'_>) -> Option<Ordering> {
    match (a, b) {
        (Doc::Number(x), Doc::Number(y)) => x.as_f64()?.partial_cmp(&y.as_f64()?),
        (Doc::String(x), Doc::String(y)) => Some(x.as_ref().cmp(y.as_ref())),
        (Doc::Bool(x), Doc::Bool(y)) => Some(x.cmp(y)),
        (Doc::Null, Doc::Null) => Some(Ordering::Equal),
        (Doc::Null, _) | (_, Doc::Null) => None,
        _ => Some(text(a)?.cmp(&text(b)?)),
    }
}

struct Parser {
    chars: Vec<char>,
    pos: usize,
}

impl Parser {
    fn err(&self, message: impl Into<String>) -> JsonPathError {
        JsonPathError {
            position: self.pos,
            message: message.into(),
        }
    }

    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn peek_at(&self, off: usize) -> Option<char> {
        self.chars.get(self.pos + off).copied()
    }

    fn skip_ws(&mut self) {
        while self.peek().is_some_and(char::is_whitespace) {
            self.pos += 1;
        }
    }

    fn eat(&mut self, c: char) -> bool {
        if self.peek() == Some(c) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    /// Parses the steps of a path. `in_query`: inside a filter, where names end at
    /// white space and operators. `top`: the whole expression (may start with `$`).
    fn parse_path(&mut self, in_query: bool, top: bool) -> Result<Vec<Step>, JsonPathError> {
        let mut steps = Vec::new();
        if top && self.peek() == Some('$') {
            self.pos += 1;
        } else if top {
            // A path without `$`: a first bare name is allowed.
            if let Some(c) = self.peek() {
                if c != '.' && c != '[' {
                    let name = self.parse_name(in_query)?;
                    steps.push(Step::Child(name));
                }
            }
        } else {
            // After `@` in a filter: a bare name may follow directly (`@x`).
            if let Some(c) = self.peek() {
                if !is_delim(c, in_query) && c != '.' && c != '[' {
                    let name = self.parse_name(in_query)?;
                    steps.push(Step::Child(name));
                }
            }
        }
        loop {
            match self.peek() {
                Some('.') => {
                    self.pos += 1;
                    let scan = self.eat('.');
                    let step = match self.peek() {
                        Some('*') => {
                            self.pos += 1;
                            Step::Wildcard
                        }
                        Some('[') => {
                            self.pos += 1;
                            if scan && matches!(self.peek(), Some('?')) {
                                let e = self.parse_filter()?;
                                steps.push(Step::ScanFilter(Box::new(e)));
                                continue;
                            }
                            self.parse_bracket()?
                        }
                        Some(c) if !is_delim(c, in_query) && c != '.' => {
                            Step::Child(self.parse_name(in_query)?)
                        }
                        _ => return Err(self.err("expected a name after '.'")),
                    };
                    steps.push(if scan {
                        Step::Scan(Box::new(step))
                    } else {
                        step
                    });
                }
                Some('[') => {
                    self.pos += 1;
                    let step = self.parse_bracket()?;
                    steps.push(step);
                }
                _ => break,
            }
        }
        Ok(steps)
    }

    fn parse_name(&mut self, in_query: bool) -> Result<String, JsonPathError> {
        let start = self.pos;
        while let Some(c) = self.peek() {
            if c == '.' || c == '[' || is_delim(c, in_query) {
                break;
            }
            self.pos += 1;
        }
        let name: String = self.chars[start..self.pos].iter().collect();
        let name = if in_query {
            name
        } else {
            name.trim_end().to_string()
        };
        if name.is_empty() {
            return Err(self.err("empty property name"));
        }
        Ok(name)
    }

    /// After `[`: names, indexes, slices, `*` or a filter, then `]`.
    fn parse_bracket(&mut self) -> Result<Step, JsonPathError> {
        self.skip_ws();
        let step = match self.peek() {
            Some('?') => {
                let e = self.parse_filter()?;
                return Ok(Step::Filter(Box::new(e)));
            }
            Some('(') => return Err(self.err("script expressions '[(...)]' are not supported")),
            Some('*') => {
                self.pos += 1;
                Step::Wildcard
            }
            Some('\'') | Some('"') => {
                let mut names = vec![self.parse_quoted()?];
                loop {
                    self.skip_ws();
                    if self.eat(',') {
                        self.skip_ws();
                        names.push(self.parse_quoted()?);
                    } else {
                        break;
                    }
                }
                if names.len() == 1 {
                    Step::Child(names.remove(0))
                } else {
                    Step::Children(names)
                }
            }
            _ => self.parse_index_or_slice()?,
        };
        self.skip_ws();
        if !self.eat(']') {
            return Err(self.err("expected ']'"));
        }
        Ok(step)
    }

    fn parse_quoted(&mut self) -> Result<String, JsonPathError> {
        let quote = match self.peek() {
            Some(q @ ('\'' | '"')) => q,
            _ => return Err(self.err("expected a quoted name")),
        };
        self.pos += 1;
        let mut s = String::new();
        loop {
            match self.peek() {
                None => return Err(self.err("unterminated string")),
                Some('\\') => {
                    self.pos += 1;
                    match self.peek() {
                        Some(c @ ('\\' | '\'' | '"' | '/')) => s.push(c),
                        Some('n') => s.push('\n'),
                        Some('t') => s.push('\t'),
                        Some('r') => s.push('\r'),
                        Some('b') => s.push('\u{8}'),
                        Some('f') => s.push('\u{c}'),
                        _ => return Err(self.err("unknown escape sequence")),
                    }
                    self.pos += 1;
                }
                Some(c) if c == quote => {
                    self.pos += 1;
                    return Ok(s);
                }
                Some(c) => {
                    s.push(c);
                    self.pos += 1;
                }
            }
        }
    }

    fn parse_int(&mut self) -> Result<Option<i64>, JsonPathError> {
        self.skip_ws();
        let start = self.pos;
        if self.peek() == Some('-') {
            self.pos += 1;
        }
        while self.peek().is_some_and(|c| c.is_ascii_digit()) {
            self.pos += 1;
        }
        if self.pos == start {
            return Ok(None);
        }
        let s: String = self.chars[start..self.pos].iter().collect();
        s.parse::<i64>()
            .map(Some)
            .map_err(|_| self.err(format!("invalid index '{s}'")))
    }

    fn parse_index_or_slice(&mut self) -> Result<Step, JsonPathError> {
        let first = self.parse_int()?;
        self.skip_ws();
        if self.eat(':') {
            let end = self.parse_int()?;
            self.skip_ws();
            let step = if self.eat(':') {
                self.parse_int()?
            } else {
                None
            };
            return Ok(Step::Slice(first, end, step));
        }
        let Some(first) = first else {
            return Err(self.err("expected an index, a slice, a quoted name, '*' or a filter"));
        };
        let mut indexes = vec![first];
        loop {
            self.skip_ws();
            if self.eat(',') {
                match self.parse_int()? {
                    Some(i) => indexes.push(i),
                    None => return Err(self.err("expected an index after ','")),
                }
            } else {
                break;
            }
        }
        Ok(Step::Index(indexes))
    }

    /// At `?` (after `[`): `?(expr)` and the closing `]`.
    fn parse_filter(&mut self) -> Result<Expr, JsonPathError> {
        self.pos += 1; // '?'
        self.skip_ws();
        if !self.eat('(') {
            return Err(self.err("expected '(' after '?'"));
        }
        let e = self.parse_or()?;
        self.skip_ws();
        if !self.eat(')') {
            return Err(self.err("expected ')' to close the filter"));
        }
        self.skip_ws();
        if !self.eat(']') {
            return Err(self.err("expected ']' after the filter"));
        }
        Ok(e)
    }

    fn parse_or(&mut self) -> Result<Expr, JsonPathError> {
        let mut left = self.parse_and()?;
        loop {
            self.skip_ws();
            if self.peek() == Some('|') && self.peek_at(1) == Some('|') {
                self.pos += 2;
                let right = self.parse_and()?;
                left = Expr::Or(Box::new(left), Box::new(right));
            } else {
                return Ok(left);
            }
        }
    }

    fn parse_and(&mut self) -> Result<Expr, JsonPathError> {
        let mut left = self.parse_atom()?;
        loop {
            self.skip_ws();
            if self.peek() == Some('&') && self.peek_at(1) == Some('&') {
                self.pos += 2;
                let right = self.parse_atom()?;
                left = Expr::And(Box::new(left), Box::new(right));
            } else {
                return Ok(left);
            }
        }
    }

    fn parse_atom(&mut self) -> Result<Expr, JsonPathError> {
        self.skip_ws();
        if self.eat('(') {
            let e = self.parse_or()?;
            self.skip_ws();
            if !self.eat(')') {
                return Err(self.err("expected ')'"));
            }
            return Ok(e);
        }
        let left = self.parse_operand()?;
        self.skip_ws();
        let op = match (self.peek(), self.peek_at(1)) {
            (Some('='), Some('=')) => {
                self.pos += 2;
                self.eat('=');
                Some(CmpOp::Eq)
            }
            (Some('!'), Some('=')) => {
                self.pos += 2;
                self.eat('=');
                Some(CmpOp::Ne)
            }
            (Some('<'), Some('=')) => {
                self.pos += 2;
                Some(CmpOp::Le)
            }
            (Some('>'), Some('=')) => {
                self.pos += 2;
                Some(CmpOp::Ge)
            }
            (Some('<'), _) => {
                self.pos += 1;
                Some(CmpOp::Lt)
            }
            (Some('>'), _) => {
                self.pos += 1;
                Some(CmpOp::Gt)
            }
            (Some('='), Some('~')) => {
                self.pos += 2;
                let pattern = self.parse_regex()?;
                return Ok(Expr::Matches(left, Box::new(pattern)));
            }
            _ => None,
        };
        match op {
            None => match left {
                Operand::Literal(_) => Err(self.err("a filter needs a path or a comparison")),
                op => Ok(Expr::Exists(op)),
            },
            Some(cmp) => {
                let right = self.parse_operand()?;
                Ok(Expr::Compare(left, cmp, right))
            }
        }
    }

    /// `/pattern/flags` with .NET's flags `i`, `m`, `s`, `x`.
    fn parse_regex(&mut self) -> Result<Pattern, JsonPathError> {
        self.skip_ws();
        if !self.eat('/') {
            return Err(self.err("expected '/pattern/' after '=~'"));
        }
        let start = self.pos;
        let mut pattern = String::new();
        loop {
            match self.peek() {
                None => return Err(self.err("unterminated regular expression")),
                Some('\\') if self.peek_at(1) == Some('/') => {
                    pattern.push('/');
                    self.pos += 2;
                }
                Some('\\') => {
                    pattern.push('\\');
                    if let Some(c) = self.peek_at(1) {
                        pattern.push(c);
                    }
                    self.pos += 2;
                }
                Some('/') => {
                    self.pos += 1;
                    break;
                }
                Some(c) => {
                    pattern.push(c);
                    self.pos += 1;
                }
            }
        }
        let mut b = regex::RegexBuilder::new(&pattern);
        while let Some(c) = self.peek().filter(char::is_ascii_alphabetic) {
            match c {
                'i' => b.case_insensitive(true),
                'm' => b.multi_line(true),
                's' => b.dot_matches_new_line(true),
                'x' => b.ignore_whitespace(true),
                other => return Err(self.err(format!("unknown regular expression flag '{other}'"))),
            };
            self.pos += 1;
        }
        let regex = b.size_limit(1 << 20).build().map_err(|e| JsonPathError {
            position: start,
            message: format!("invalid regular expression: {e}"),
        })?;
        Ok(Pattern {
            source: pattern,
            regex,
        })
    }

    fn parse_operand(&mut self) -> Result<Operand, JsonPathError> {
        self.skip_ws();
        match self.peek() {
            Some('@') => {
                self.pos += 1;
                Ok(Operand::Current(self.parse_path(true, false)?))
            }
            Some('$') => {
                self.pos += 1;
                Ok(Operand::Root(self.parse_path(true, false)?))
            }
            Some('\'') | Some('"') => Ok(Operand::Literal(Doc::String(Cow::Owned(
                self.parse_quoted()?,
            )))),
            Some(c) if c == '-' || c.is_ascii_digit() => {
                let start = self.pos;
                self.pos += 1;
                while self
                    .peek()
                    .is_some_and(|c| c.is_ascii_digit() || matches!(c, '.' | 'e' | 'E' | '+' | '-'))
                {
                    self.pos += 1;
                }
                let s: String = self.chars[start..self.pos].iter().collect();
                let v: Value = serde_json::from_str(&s)
                    .map_err(|_| self.err(format!("invalid number '{s}'")))?;
                Ok(Operand::Literal(Doc::from_owned_value(v)))
            }
            _ => {
                for (word, v) in [
                    ("true", Doc::Bool(true)),
                    ("false", Doc::Bool(false)),
                    ("null", Doc::Null),
                ] {
                    let n = word.len();
                    let here: String = self.chars[self.pos..].iter().take(n).collect();
                    if here == word {
                        self.pos += n;
                        return Ok(Operand::Literal(v));
                    }
                }
                Err(self.err("expected '@', '$', a string, a number, true, false or null"))
            }
        }
    }
}

fn is_delim(c: char, in_query: bool) -> bool {
    match c {
        ']' | '(' | ')' => true,
        ' ' | '\t' | '\n' | '\r' | '=' | '!' | '<' | '>' | '&' | '|' | ',' => in_query,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sel(path: &str, doc: &Value) -> Vec<Value> {
        let doc = Doc::from_value(doc);
        JsonPath::compile(path)
            .unwrap()
            .select(Scope::new(&doc))
            .into_iter()
            .map(|d| d.to_value())
            .collect()
    }

    #[test]
    fn scan_filter_matches_root_and_descendants() {
        let doc = json!({"heartrate": 1, "Body": [{"heartrate": 2}, {"x": {"heartrate": 3}}]});
        let r = sel("$..[?(@heartrate)]", &doc);
        assert_eq!(r.len(), 3);
        assert_eq!(r[0]["heartrate"], 1);
        assert_eq!(r[2]["heartrate"], 3);
    }

    #[test]
    fn filters_and_comparisons() {
        let doc = json!({"Body": [
            {"type": "Heart Rate", "v": 60, "unit": "inches"},
            {"type": "Steps", "v": "7"},
            {"type": "Heart Rate", "v": 80.5}
        ]});
        assert_eq!(sel("$..[?(@.type=='Heart Rate')]", &doc).len(), 2);
        assert_eq!(sel("$..[?(@unit == 'inches')]", &doc).len(), 1);
        assert_eq!(sel("$.Body[?(@.v > 70)]", &doc).len(), 1);
        assert_eq!(
            sel("$.Body[?(@.v >= 60 && @.type != 'Steps')]", &doc).len(),
            2
        );
        assert_eq!(
            sel("$.Body[?(@.type == 'Steps' || @.v < 61)]", &doc).len(),
            2
        );
        assert_eq!(sel("$.Body[?((@.v == 60))]", &doc).len(), 1);
        assert_eq!(
            sel("$.Body[?(@.v == 80.5)].type", &doc),
            vec![json!("Heart Rate")]
        );
        assert_eq!(sel("$.Body[?(@.type =~ /^heart/i)]", &doc).len(), 2);
        assert_eq!(
            sel(
                "$..[?(@.type =~ /rate$/ && $.Body[0].unit == 'inches')]",
                &doc
            )
            .len(),
            0
        );
        assert_eq!(
            sel(
                "$..[?(@.type =~ /Rate$/ && $.Body[0].unit == 'inches')]",
                &doc
            )
            .len(),
            2
        );
    }

    #[test]
    fn names_indexes_slices_wildcards() {
        let doc =
            json!({"My Property": "x", "a-b": 1, "arr": [0, 1, 2, 3, 4], "o": {"p": {"q": 5}}});
        assert_eq!(sel("$.['My Property']", &doc), vec![json!("x")]);
        assert_eq!(sel("$['a-b']", &doc), vec![json!(1)]);
        assert_eq!(sel("$.a-b", &doc), vec![json!(1)]);
        assert_eq!(sel("$.arr[1]", &doc), vec![json!(1)]);
        assert_eq!(sel("$.arr[-1]", &doc), Vec::<Value>::new());
        assert_eq!(sel("$.arr[1,3]", &doc), vec![json!(1), json!(3)]);
        assert_eq!(sel("$.arr[1:3]", &doc), vec![json!(1), json!(2)]);
        assert_eq!(sel("$.arr[-2:]", &doc), vec![json!(3), json!(4)]);
        assert_eq!(sel("$.arr[::2]", &doc), vec![json!(0), json!(2), json!(4)]);
        assert_eq!(sel("$.arr[*]", &doc).len(), 5);
        assert_eq!(sel("$..q", &doc), vec![json!(5)]);
        assert_eq!(sel("$.o.*.q", &doc), vec![json!(5)]);
        assert_eq!(sel("o.p.q", &doc), vec![json!(5)]);
        assert_eq!(sel("$", &doc).len(), 1);
    }

    /// Skipping scalars in a `..[?()]` scan changes nothing when the filter is false on
    /// scalars.
    #[test]
    fn scan_filter_skips_scalars_only_when_they_cannot_pass() {
        let docs = [
            json!({"a": 1, "b": [1, {"a": null}, [{"a": "x", "c": {"a": 2}}]], "c": "s"}),
            json!([1, "a", {"b": {"a": [1, 2]}}, [[{"a": 5}]]]),
            json!(7),
            json!({"x": {"y": {"a": 1, "b": 2}}, "a": {"a": {"a": 0}}}),
        ];
        let filters = [
            ("@a", true),
            ("@.a && @b", true),
            ("@a || @.c", true),
            ("@a || @ > 1", false),
            ("@ > 1", false),
            ("@a > 1", true),
            ("@.a == $.a", true),
            ("$.a == @.a", false),
            ("@[0]", true),
            ("@.* == 1", true),
            ("@..a", false),
            ("@a =~ /x/", true),
        ];
        for (filter, expected) in filters {
            let p = JsonPath::compile(&format!("$..[?({filter})]")).unwrap();
            let Step::ScanFilter(expr) = &p.steps[0] else {
                panic!("{filter}")
            };
            assert_eq!(false_on_scalars(expr), expected, "{filter}");
            for doc in &docs {
                let d = Doc::from_value(doc);
                let run = |skip: bool| {
                    let mut out = Vec::new();
                    let scope = Scope::new(&d);
                    let mut push = |n: Node<'_>| {
                        out.push(n.into_doc().to_value());
                        Flow::Continue(())
                    };
                    let _ = if skip {
                        scan_filter::<true>(expr, &[], scope.root(), scope, &mut push)
                    } else {
                        scan_filter::<false>(expr, &[], scope.root(), scope, &mut push)
                    };
                    out
                };
                if expected {
                    assert_eq!(run(true), run(false), "{filter} on {doc}");
                }
                assert_eq!(p.select(Scope::new(&d)).len(), run(false).len(), "{filter}");
            }
        }
    }

    #[test]
    fn matched_token_scope() {
        let doc = json!({"Body": {"deviceId": "d1"}});
        let m = json!({"hr": 70});
        let (doc, m) = (Doc::from_value(&doc), Doc::from_value(&m));
        let p = JsonPath::compile("$.matchedToken.hr").unwrap();
        let r = p.select(Scope::with_match(&doc, &m));
        assert_eq!(r[0].to_value(), json!(70));
        let p = JsonPath::compile("$.Body.deviceId").unwrap();
        assert_eq!(
            p.select(Scope::with_match(&doc, &m))[0].to_value(),
            json!("d1")
        );
    }

    #[test]
    fn compile_errors() {
        for bad in [
            "$.[",
            "$..",
            "$[?(@.a == )]",
            "$[(@.length-1)]",
            "$.a]",
            "$[?(@.a =~ /(/)]",
            "$[?(@.a =~ /x/q)]",
        ] {
            assert!(JsonPath::compile(bad).is_err(), "{bad}");
        }
    }
}
