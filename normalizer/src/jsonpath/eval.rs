//! Evaluation: the nodes a compiled path selects from a [`Scope`], in document order,
//! visited without building intermediate lists.

use std::borrow::Cow;
use std::cmp::Ordering;

use crate::doc::Doc;
use crate::scope::{Flow, Scope, Token, MATCHED_TOKEN};

use super::ast::{CmpOp, Expr, Operand, Step};
use super::JsonPath;

impl<'a> Scope<'a> {
    /// The root node of an evaluation: the document, with `matchedToken` when there is one.
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

/// A node of an evaluation: a token of the document, or the root of a match scope (the
/// document seen with `matchedToken` added, never built unless selected whole).
#[derive(Debug, Clone, Copy)]
enum Node<'a> {
    Token(Token<'a>),
    Root { doc: Token<'a>, matched: Token<'a> },
}

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

impl JsonPath {
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

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
}
