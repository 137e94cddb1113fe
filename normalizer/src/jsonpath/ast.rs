//! The syntax tree of a compiled path, and what can be known from it without a document
//! (the member names a match needs, whether a path reads below one document member).

use crate::doc::Doc;
use crate::scope::MATCHED_TOKEN;

use super::JsonPath;

#[derive(Debug, Clone, PartialEq)]
pub(super) enum Step {
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
pub(super) enum Expr {
    Or(Box<Expr>, Box<Expr>),
    And(Box<Expr>, Box<Expr>),
    Exists(Operand),
    Compare(Operand, CmpOp, Operand),
    Matches(Operand, Box<Pattern>),
}

/// A `/pattern/flags` literal of a `=~` filter.
#[derive(Debug, Clone)]
pub(super) struct Pattern {
    pub(super) source: String,
    pub(super) regex: regex::Regex,
}

impl PartialEq for Pattern {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

#[derive(Debug, Clone, PartialEq)]
pub(super) enum Operand {
    Current(Vec<Step>),
    Root(Vec<Step>),
    Literal(Doc<'static>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum CmpOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
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
    /// the same tokens whatever token a [`Scope::with_match`](crate::scope::Scope::with_match)
    /// adds. A path with a `$` inside a filter may see `matchedToken`, so it does not count.
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
