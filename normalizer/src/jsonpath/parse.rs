//! The parser: expression text → [`JsonPath`].

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use serde_json::Value;

use crate::doc::Doc;

use super::ast::{CmpOp, Expr, Operand, Pattern, Step};
use super::{JsonPath, JsonPathError};

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
        let mut flags = Flags::default();
        while let Some(c) = self.peek().filter(char::is_ascii_alphabetic) {
            match c {
                'i' => flags.case_insensitive = true,
                'm' => flags.multi_line = true,
                's' => flags.dot_matches_new_line = true,
                'x' => flags.ignore_whitespace = true,
                other => return Err(self.err(format!("unknown regular expression flag '{other}'"))),
            };
            self.pos += 1;
        }
        let regex = compile_regex(&pattern, flags).map_err(|e| JsonPathError {
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

/// The .NET flags of a `/pattern/flags` literal.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
struct Flags {
    case_insensitive: bool,
    multi_line: bool,
    dot_matches_new_line: bool,
    ignore_whitespace: bool,
}

/// Patterns longer than this are compiled every time rather than kept.
const CACHED_PATTERN_MAX: usize = 1024;
/// Most patterns kept; the cache starts over when it is full.
const CACHED_PATTERNS_MAX: usize = 256;

/// Compiles a filter's regular expression, once per process for each pattern and flags.
///
/// Compiling is most of the cost of loading a template with `=~` filters, and mappings repeat
/// their patterns (the Google Fit mapping has 130 filters over 23 patterns); a `Regex` is
/// shared cheaply (its clones share the compiled program) and matching is the same from any
/// clone. The cache is bounded in entries and pattern length.
fn compile_regex(pattern: &str, flags: Flags) -> Result<regex::Regex, regex::Error> {
    type Cache = Mutex<HashMap<(String, Flags), regex::Regex>>;
    static CACHE: OnceLock<Cache> = OnceLock::new();
    let cacheable = pattern.len() <= CACHED_PATTERN_MAX;
    let cache = CACHE.get_or_init(Cache::default);
    let key = (pattern.to_owned(), flags);
    if cacheable {
        if let Some(r) = cache.lock().ok().and_then(|c| c.get(&key).cloned()) {
            return Ok(r);
        }
    }
    let regex = regex::RegexBuilder::new(pattern)
        .case_insensitive(flags.case_insensitive)
        .multi_line(flags.multi_line)
        .dot_matches_new_line(flags.dot_matches_new_line)
        .ignore_whitespace(flags.ignore_whitespace)
        .size_limit(1 << 20)
        .build()?;
    if cacheable {
        if let Ok(mut c) = cache.lock() {
            if c.len() >= CACHED_PATTERNS_MAX {
                c.clear();
            }
            c.insert(key, regex.clone());
        }
    }
    Ok(regex)
}

#[cfg(test)]
mod tests {
    use super::*;

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

    /// Compiled patterns are shared by pattern and flags: the same text with other flags is
    /// another regex, and a pattern compiled again behaves the same.
    #[test]
    fn regex_cache_keys_on_pattern_and_flags() {
        let plain = compile_regex("^ab$", Flags::default()).unwrap();
        let again = compile_regex("^ab$", Flags::default()).unwrap();
        let ci = Flags {
            case_insensitive: true,
            ..Flags::default()
        };
        let insensitive = compile_regex("^ab$", ci).unwrap();
        assert!(!plain.is_match("AB") && !again.is_match("AB"));
        assert!(insensitive.is_match("AB"));
        assert!(compile_regex("(", Flags::default()).is_err());
        assert!(compile_regex("(", Flags::default()).is_err());
        let long = "a".repeat(CACHED_PATTERN_MAX + 1);
        assert!(compile_regex(&long, Flags::default())
            .unwrap()
            .is_match(&long));
    }
}
