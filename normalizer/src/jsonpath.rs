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

use serde_json::{Map, Value};

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
    Literal(Value),
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

/// What an expression is evaluated against: a document, optionally extended with a
/// top-level `matchedToken` property (how `CalculatedContent` sees each match) without
/// copying the document.
#[derive(Debug, Clone, Copy)]
pub struct Scope<'a> {
    /// The document.
    pub doc: &'a Value,
    /// The token added as `matchedToken` to the document's root, if any.
    pub matched: Option<&'a Value>,
}

impl<'a> Scope<'a> {
    /// A plain document.
    pub fn new(doc: &'a Value) -> Self {
        Scope { doc, matched: None }
    }

    /// A document seen with `matchedToken` added at its root.
    pub fn with_match(doc: &'a Value, matched: &'a Value) -> Self {
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
            None => Node::Value(self.doc),
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Node<'a> {
    Value(&'a Value),
    Root { doc: &'a Value, matched: &'a Value },
}

const MATCHED_TOKEN: &str = "matchedToken";

impl<'a> Node<'a> {
    fn child(self, name: &str, out: &mut Vec<Node<'a>>) {
        match self {
            Node::Value(Value::Object(m)) => {
                if let Some(v) = m.get(name) {
                    out.push(Node::Value(v));
                }
            }
            Node::Value(_) => {}
            Node::Root { doc, matched } => {
                if name == MATCHED_TOKEN {
                    out.push(Node::Value(matched));
                } else if let Value::Object(m) = doc {
                    if let Some(v) = m.get(name) {
                        out.push(Node::Value(v));
                    }
                }
            }
        }
    }

    fn children(self, out: &mut Vec<Node<'a>>) {
        match self {
            Node::Value(Value::Object(m)) => out.extend(m.values().map(Node::Value)),
            Node::Value(Value::Array(a)) => out.extend(a.iter().map(Node::Value)),
            Node::Value(_) => {}
            Node::Root { doc, matched } => {
                if let Value::Object(m) = doc {
                    out.extend(
                        m.iter()
                            .filter(|(k, _)| k.as_str() != MATCHED_TOKEN)
                            .map(|(_, v)| Node::Value(v)),
                    );
                }
                out.push(Node::Value(matched));
            }
        }
    }

    fn descendants_and_self(self, out: &mut Vec<Node<'a>>) {
        out.push(self);
        let mut kids = Vec::new();
        self.children(&mut kids);
        for k in kids {
            k.descendants_and_self(out);
        }
    }

    fn array(self) -> Option<&'a Vec<Value>> {
        match self {
            Node::Value(Value::Array(a)) => Some(a),
            _ => None,
        }
    }

    fn into_value(self) -> Cow<'a, Value> {
        match self {
            Node::Value(v) => Cow::Borrowed(v),
            Node::Root { doc, matched } => {
                let mut m = match doc {
                    Value::Object(m) => m.clone(),
                    _ => Map::new(),
                };
                m.insert(MATCHED_TOKEN.to_string(), matched.clone());
                Cow::Owned(Value::Object(m))
            }
        }
    }

    fn scalar(self) -> Option<&'a Value> {
        match self {
            Node::Value(v) if !v.is_object() && !v.is_array() => Some(v),
            _ => None,
        }
    }
}

impl JsonPath {
    /// Compiles an expression.
    ///
    /// ```
    /// use normalizer::jsonpath::{JsonPath, Scope};
    /// let p = JsonPath::compile("$..[?(@heartrate)]").unwrap();
    /// let doc = serde_json::json!({"Body": [{"heartrate": 60}, {"steps": 2}]});
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
    pub fn select<'a>(&self, scope: Scope<'a>) -> Vec<Cow<'a, Value>> {
        run_steps(&self.steps, vec![scope.root()], scope)
            .into_iter()
            .map(Node::into_value)
            .collect()
    }
}

fn run_steps<'a>(steps: &[Step], mut current: Vec<Node<'a>>, scope: Scope<'a>) -> Vec<Node<'a>> {
    for step in steps {
        if current.is_empty() {
            break;
        }
        let mut next = Vec::new();
        for node in current {
            apply(step, node, scope, &mut next);
        }
        current = next;
    }
    current
}

fn apply<'a>(step: &Step, node: Node<'a>, scope: Scope<'a>, out: &mut Vec<Node<'a>>) {
    match step {
        Step::Child(name) => node.child(name, out),
        Step::Children(names) => {
            for n in names {
                node.child(n, out);
            }
        }
        Step::Wildcard => node.children(out),
        Step::Index(indexes) => {
            if let Some(a) = node.array() {
                for &i in indexes {
                    if i >= 0 {
                        if let Some(v) = usize::try_from(i).ok().and_then(|i| a.get(i)) {
                            out.push(Node::Value(v));
                        }
                    }
                }
            }
        }
        Step::Slice(start, end, step) => {
            if let Some(a) = node.array() {
                slice(a, *start, *end, *step, out);
            }
        }
        Step::Filter(expr) => {
            let mut kids = Vec::new();
            node.children(&mut kids);
            out.extend(kids.into_iter().filter(|k| eval(expr, *k, scope)));
        }
        Step::Scan(inner) => {
            let mut all = Vec::new();
            node.descendants_and_self(&mut all);
            for d in all {
                apply(inner, d, scope, out);
            }
        }
        Step::ScanFilter(expr) => {
            let mut all = Vec::new();
            node.descendants_and_self(&mut all);
            out.extend(all.into_iter().filter(|d| eval(expr, *d, scope)));
        }
    }
}

fn slice<'a>(
    a: &'a [Value],
    start: Option<i64>,
    end: Option<i64>,
    step: Option<i64>,
    out: &mut Vec<Node<'a>>,
) {
    let len = a.len() as i64;
    let step = step.unwrap_or(1);
    if step == 0 {
        return;
    }
    let norm = |i: i64| if i < 0 { (len + i).max(0) } else { i.min(len) };
    if step > 0 {
        let mut i = start.map(norm).unwrap_or(0);
        let e = end.map(norm).unwrap_or(len);
        while i < e {
            out.push(Node::Value(&a[i as usize]));
            i = i.saturating_add(step);
        }
    } else {
        let mut i = start
            .map(|s| if s < 0 { len + s } else { s.min(len - 1) })
            .unwrap_or(len - 1);
        let e = end.map(|e| if e < 0 { len + e } else { e }).unwrap_or(-1);
        while i > e && i >= 0 {
            if i < len {
                out.push(Node::Value(&a[i as usize]));
            }
            i = i.saturating_add(step);
        }
    }
}

fn eval<'a>(expr: &Expr, current: Node<'a>, scope: Scope<'a>) -> bool {
    match expr {
        Expr::Or(a, b) => eval(a, current, scope) || eval(b, current, scope),
        Expr::And(a, b) => eval(a, current, scope) && eval(b, current, scope),
        Expr::Exists(op) => !operand(op, current, scope).is_empty(),
        Expr::Matches(l, pattern) => operand(l, current, scope).iter().any(|v| match v {
            Node::Value(Value::String(s)) => pattern.regex.is_match(s),
            _ => false,
        }),
        Expr::Compare(l, op, r) => {
            let left = operand(l, current, scope);
            let right = operand(r, current, scope);
            left.iter().any(|lv| {
                right.iter().any(|rv| match (lv.scalar(), rv.scalar()) {
                    (Some(a), Some(b)) => compare(a, *op, b),
                    _ => false,
                })
            })
        }
    }
}

fn operand<'a>(op: &'a Operand, current: Node<'a>, scope: Scope<'a>) -> Vec<Node<'a>> {
    match op {
        Operand::Current(steps) => run_steps(steps, vec![current], scope),
        Operand::Root(steps) => run_steps(steps, vec![scope.root()], scope),
        Operand::Literal(v) => vec![Node::Value(v)],
    }
}

fn compare(a: &Value, op: CmpOp, b: &Value) -> bool {
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

fn scalar_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => match (x.as_i64(), y.as_i64()) {
            (Some(x), Some(y)) => x == y,
            _ => x.as_f64() == y.as_f64(),
        },
        _ => a == b,
    }
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(crate::value::format_number(n)),
        Value::Bool(b) => Some(if *b { "True" } else { "False" }.to_string()),
        _ => None,
    }
}

fn scalar_cmp(a: &Value, b: &Value) -> Option<Ordering> {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64()?.partial_cmp(&y.as_f64()?),
        (Value::String(x), Value::String(y)) => Some(x.as_str().cmp(y.as_str())),
        (Value::Bool(x), Value::Bool(y)) => Some(x.cmp(y)),
        (Value::Null, Value::Null) => Some(Ordering::Equal),
        (Value::Null, _) | (_, Value::Null) => None,
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
            Some('\'') | Some('"') => Ok(Operand::Literal(Value::String(self.parse_quoted()?))),
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
                Ok(Operand::Literal(v))
            }
            _ => {
                for (word, v) in [
                    ("true", Value::Bool(true)),
                    ("false", Value::Bool(false)),
                    ("null", Value::Null),
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
        JsonPath::compile(path)
            .unwrap()
            .select(Scope::new(doc))
            .into_iter()
            .map(Cow::into_owned)
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

    #[test]
    fn matched_token_scope() {
        let doc = json!({"Body": {"deviceId": "d1"}});
        let m = json!({"hr": 70});
        let p = JsonPath::compile("$.matchedToken.hr").unwrap();
        let r = p.select(Scope::with_match(&doc, &m));
        assert_eq!(r[0].as_ref(), &json!(70));
        let p = JsonPath::compile("$.Body.deviceId").unwrap();
        assert_eq!(
            p.select(Scope::with_match(&doc, &m))[0].as_ref(),
            &json!("d1")
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
