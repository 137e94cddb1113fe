//! Where things are in a JSON text: the one location type and the one position-aware JSON
//! scanner of the template loaders (device mappings here, FHIR mappings in `fhir-writer`), so
//! that every template error points at the author's file the same way.
//!
//! - [`LineCol`]: a 1-based line and column (columns count characters);
//! - [`Location`]: a JSON pointer with its line and column, as template errors report it;
//! - [`parse`]: the scanner, a strict JSON parser that keeps the position of every value and
//!   member name ([`Node`], [`Member`]) and reports syntax errors with theirs
//!   ([`SyntaxError`]); serde_json keeps no positions in its `Value`;
//! - [`Positions`]: the positions of a text indexed by JSON pointer, for a loader that reads
//!   the text with serde_json and looks positions up when it reports an error;
//! - [`pointer_push`], [`escape_token`]: building RFC 6901 JSON pointers.
//!
//! ```
//! use normalizer::location::{parse, LineCol, Location, Positions};
//! let text = "{\n  \"a\": [1, true]\n}";
//! let root = parse(text).unwrap();
//! let a = root.member("a").unwrap();
//! assert_eq!(a.name_pos, LineCol { line: 2, column: 3 });
//! assert_eq!(Positions::index(text).value("/a/1"), Some(LineCol { line: 2, column: 12 }));
//! assert_eq!(
//!     Location::new("/a/1", LineCol { line: 2, column: 12 }).to_string(),
//!     "line 2, column 12, at /a/1"
//! );
//! ```

use std::fmt;

use serde::Serialize;

/// A 1-based line and column (columns count characters).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct LineCol {
    /// 1-based line.
    pub line: usize,
    /// 1-based column, in characters.
    pub column: usize,
}

/// Where in a template file something is: JSON pointer plus 1-based line and column.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct Location {
    /// RFC 6901 JSON pointer (`""` is the document root).
    pub pointer: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column (characters).
    pub column: usize,
}

impl Location {
    /// The location of `pointer`, found at `at`.
    pub fn new(pointer: impl Into<String>, at: LineCol) -> Self {
        Location {
            pointer: pointer.into(),
            line: at.line,
            column: at.column,
        }
    }

    /// The line and column.
    pub fn line_col(&self) -> LineCol {
        LineCol {
            line: self.line,
            column: self.column,
        }
    }
}

/// `line L, column C, at /pointer` (`(root)` for the empty pointer).
impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let pointer = if self.pointer.is_empty() {
            "(root)"
        } else {
            &self.pointer
        };
        write!(
            f,
            "line {}, column {}, at {}",
            self.line, self.column, pointer
        )
    }
}

/// Nesting deeper than this is rejected (keeps recursion bounded on hostile input; deeper
/// than serde_json's own limit, so a text serde_json reads always scans).
pub const MAX_DEPTH: usize = 128;

/// A parsed JSON value with its position.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    /// Where the value starts.
    pub pos: LineCol,
    /// The value.
    pub kind: Kind,
}

/// The value of a [`Node`]. Numbers keep their source text.
#[derive(Debug, Clone, PartialEq)]
pub enum Kind {
    /// `null`.
    Null,
    /// `true` or `false`.
    Bool(bool),
    /// A number, as written.
    Number(String),
    /// A string, unescaped.
    String(String),
    /// An array.
    Array(Vec<Node>),
    /// An object's members, in document order (repeated names kept).
    Object(Vec<Member>),
}

/// One object member.
#[derive(Debug, Clone, PartialEq)]
pub struct Member {
    /// The member name, unescaped.
    pub name: String,
    /// Where the name (its opening quote) starts.
    pub name_pos: LineCol,
    /// The value.
    pub value: Node,
}

impl Node {
    /// The JSON type name, for messages (`a string`, `an object`, ...).
    pub fn type_name(&self) -> &'static str {
        match self.kind {
            Kind::Null => "null",
            Kind::Bool(_) => "a boolean",
            Kind::Number(_) => "a number",
            Kind::String(_) => "a string",
            Kind::Array(_) => "an array",
            Kind::Object(_) => "an object",
        }
    }

    /// The last member named `name`, compared case-insensitively after an exact match is looked
    /// for first (as Newtonsoft.Json binds properties).
    pub fn member(&self, name: &str) -> Option<&Member> {
        let Kind::Object(members) = &self.kind else {
            return None;
        };
        members.iter().rev().find(|m| m.name == name).or_else(|| {
            members
                .iter()
                .rev()
                .find(|m| m.name.eq_ignore_ascii_case(name))
        })
    }
}

/// A syntax error, with where it is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {}, column {}: {message}", pos.line, pos.column)]
pub struct SyntaxError {
    /// Where the parser stopped.
    pub pos: LineCol,
    /// What it found.
    pub message: String,
}

/// Parses one JSON document (a leading UTF-8 BOM is skipped; trailing whitespace is allowed),
/// keeping the position of every value and member name.
pub fn parse(text: &str) -> Result<Node, SyntaxError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut p = Parser {
        text,
        i: 0,
        line: 1,
        col: 1,
    };
    p.ws();
    let node = p.value(0)?;
    p.ws();
    if p.i < p.text.len() {
        return Err(p.err("unexpected content after the JSON value"));
    }
    Ok(node)
}

/// Appends one reference token to a JSON pointer (RFC 6901 escaping).
pub fn pointer_push(base: &str, token: &str) -> String {
    format!("{base}/{}", escape_token(token))
}

/// Escapes one JSON pointer reference token.
pub fn escape_token(s: &str) -> String {
    s.replace('~', "~0").replace('/', "~1")
}

/// Positions of the values (and object keys) of a JSON text, by JSON pointer.
///
/// The text is scanned once into a [`Node`] tree and a pointer is resolved by walking it, so
/// indexing costs one scan and nothing per value (no pointer string, no map entry): a loader
/// looks positions up only for the errors it reports.
#[derive(Debug, Clone, Default)]
pub struct Positions {
    root: Option<Node>,
}

impl Positions {
    /// Indexes a JSON text with [`parse`]; invalid JSON has no positions. Where a member name
    /// repeats, the last one's positions win (as serde_json keeps the last value).
    pub fn index(text: &str) -> Positions {
        Positions {
            root: parse(text).ok(),
        }
    }

    /// The node at `pointer` and, for an object member, where its name starts.
    fn find(&self, pointer: &str) -> Option<(&Node, Option<LineCol>)> {
        let mut node = self.root.as_ref()?;
        let mut name_pos = None;
        if pointer.is_empty() {
            return Some((node, None));
        }
        let rest = pointer.strip_prefix('/')?;
        for raw in rest.split('/') {
            let token = unescape_token(raw);
            match &node.kind {
                Kind::Object(members) => {
                    let m = members.iter().rev().find(|m| m.name == token)?;
                    name_pos = Some(m.name_pos);
                    node = &m.value;
                }
                Kind::Array(items) => {
                    // Only the canonical spelling of an index (no sign, no leading zero).
                    let i: usize = token
                        .parse()
                        .ok()
                        .filter(|i: &usize| i.to_string() == token)?;
                    name_pos = None;
                    node = items.get(i)?;
                }
                _ => return None,
            }
        }
        Some((node, name_pos))
    }

    /// Where the value at `pointer` starts.
    pub fn value(&self, pointer: &str) -> Option<LineCol> {
        self.find(pointer).map(|(node, _)| node.pos)
    }

    /// Where the key of the member at `pointer` starts (falls back to its value).
    pub fn key(&self, pointer: &str) -> Option<LineCol> {
        self.find(pointer)
            .map(|(node, name_pos)| name_pos.unwrap_or(node.pos))
    }
}

/// Undoes [`escape_token`].
fn unescape_token(s: &str) -> std::borrow::Cow<'_, str> {
    if s.contains('~') {
        s.replace("~1", "/").replace("~0", "~").into()
    } else {
        s.into()
    }
}

/// The scanner behind [`parse`]: a byte index into the text, line and column (in characters)
/// kept as it goes.
struct Parser<'a> {
    text: &'a str,
    /// Byte offset, always on a character boundary.
    i: usize,
    line: usize,
    col: usize,
}

impl Parser<'_> {
    fn pos(&self) -> LineCol {
        LineCol {
            line: self.line,
            column: self.col,
        }
    }

    fn err(&self, message: impl Into<String>) -> SyntaxError {
        SyntaxError {
            pos: self.pos(),
            message: message.into(),
        }
    }

    fn peek(&self) -> Option<char> {
        match *self.text.as_bytes().get(self.i)? {
            b if b.is_ascii() => Some(char::from(b)),
            _ => self.text[self.i..].chars().next(),
        }
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.i += c.len_utf8();
        if c == '\n' {
            self.line += 1;
            self.col = 1;
        } else {
            self.col += 1;
        }
        Some(c)
    }

    fn ws(&mut self) {
        while let Some(c) = self.peek() {
            if c == ' ' || c == '\t' || c == '\n' || c == '\r' {
                self.bump();
            } else {
                break;
            }
        }
    }

    fn expect(&mut self, c: char) -> Result<(), SyntaxError> {
        if self.peek() == Some(c) {
            self.bump();
            Ok(())
        } else {
            Err(self.unexpected(&format!("'{c}'")))
        }
    }

    fn unexpected(&self, wanted: &str) -> SyntaxError {
        match self.peek() {
            Some(c) => self.err(format!("expected {wanted}, found '{c}'")),
            None => self.err(format!("expected {wanted}, found the end of the input")),
        }
    }

    fn value(&mut self, depth: usize) -> Result<Node, SyntaxError> {
        if depth > MAX_DEPTH {
            return Err(self.err("JSON nested too deeply"));
        }
        let pos = self.pos();
        let kind = match self.peek() {
            Some('{') => self.object(depth)?,
            Some('[') => self.array(depth)?,
            Some('"') => Kind::String(self.string()?),
            Some('t') => self.literal("true", Kind::Bool(true))?,
            Some('f') => self.literal("false", Kind::Bool(false))?,
            Some('n') => self.literal("null", Kind::Null)?,
            Some(c) if c == '-' || c.is_ascii_digit() => Kind::Number(self.number()?),
            _ => return Err(self.unexpected("a JSON value")),
        };
        Ok(Node { pos, kind })
    }

    fn literal(&mut self, word: &str, kind: Kind) -> Result<Kind, SyntaxError> {
        for w in word.chars() {
            if self.peek() != Some(w) {
                return Err(self.unexpected(&format!("'{word}'")));
            }
            self.bump();
        }
        Ok(kind)
    }

    fn number(&mut self) -> Result<String, SyntaxError> {
        let start = self.i;
        if self.peek() == Some('-') {
            self.bump();
        }
        let digits = |p: &mut Parser| -> usize {
            let mut n = 0;
            while p.peek().is_some_and(|c| c.is_ascii_digit()) {
                p.bump();
                n += 1;
            }
            n
        };
        if digits(self) == 0 {
            return Err(self.unexpected("a digit"));
        }
        if self.peek() == Some('.') {
            self.bump();
            if digits(self) == 0 {
                return Err(self.unexpected("a digit"));
            }
        }
        if matches!(self.peek(), Some('e') | Some('E')) {
            self.bump();
            if matches!(self.peek(), Some('+') | Some('-')) {
                self.bump();
            }
            if digits(self) == 0 {
                return Err(self.unexpected("a digit"));
            }
        }
        Ok(self.text[start..self.i].to_owned())
    }

    fn hex4(&mut self) -> Result<u32, SyntaxError> {
        let mut v = 0u32;
        for _ in 0..4 {
            let d = self
                .peek()
                .and_then(|c| c.to_digit(16))
                .ok_or_else(|| self.unexpected("a hex digit"))?;
            self.bump();
            v = v * 16 + d;
        }
        Ok(v)
    }

    fn string(&mut self) -> Result<String, SyntaxError> {
        self.expect('"')?;
        let mut out = String::new();
        loop {
            match self.peek() {
                None => return Err(self.err("unterminated string")),
                Some('"') => {
                    self.bump();
                    return Ok(out);
                }
                Some('\\') => {
                    self.bump();
                    let c = self.peek().ok_or_else(|| self.err("unterminated string"))?;
                    self.bump();
                    match c {
                        '"' => out.push('"'),
                        '\\' => out.push('\\'),
                        '/' => out.push('/'),
                        'b' => out.push('\u{8}'),
                        'f' => out.push('\u{c}'),
                        'n' => out.push('\n'),
                        'r' => out.push('\r'),
                        't' => out.push('\t'),
                        'u' => {
                            let hi = self.hex4()?;
                            let code = if (0xD800..0xDC00).contains(&hi)
                                && self.peek() == Some('\\')
                                && self.text.as_bytes().get(self.i + 1) == Some(&b'u')
                            {
                                self.bump();
                                self.bump();
                                let lo = self.hex4()?;
                                if (0xDC00..0xE000).contains(&lo) {
                                    0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00)
                                } else {
                                    0xFFFD
                                }
                            } else {
                                hi
                            };
                            out.push(char::from_u32(code).unwrap_or('\u{FFFD}'));
                        }
                        other => return Err(self.err(format!("invalid escape '\\{other}'"))),
                    }
                }
                Some(c) if (c as u32) < 0x20 => {
                    return Err(self.err("control character in string"));
                }
                Some(_) => {
                    // A run up to the next quote, backslash or control character (all ASCII,
                    // so the run ends on a character boundary), copied at once; no line breaks
                    // in it, and the column counts its characters.
                    let rest = &self.text.as_bytes()[self.i..];
                    let run = rest
                        .iter()
                        .position(|&b| b == b'"' || b == b'\\' || b < 0x20)
                        .unwrap_or(rest.len());
                    let chunk = &self.text[self.i..self.i + run];
                    out.push_str(chunk);
                    self.col += chunk.bytes().filter(|b| b & 0xC0 != 0x80).count();
                    self.i += run;
                }
            }
        }
    }

    fn array(&mut self, depth: usize) -> Result<Kind, SyntaxError> {
        self.expect('[')?;
        let mut items = Vec::new();
        self.ws();
        if self.peek() == Some(']') {
            self.bump();
            return Ok(Kind::Array(items));
        }
        loop {
            self.ws();
            items.push(self.value(depth + 1)?);
            self.ws();
            match self.peek() {
                Some(',') => {
                    self.bump();
                }
                Some(']') => {
                    self.bump();
                    return Ok(Kind::Array(items));
                }
                _ => return Err(self.unexpected("',' or ']'")),
            }
        }
    }

    fn object(&mut self, depth: usize) -> Result<Kind, SyntaxError> {
        self.expect('{')?;
        let mut members = Vec::new();
        self.ws();
        if self.peek() == Some('}') {
            self.bump();
            return Ok(Kind::Object(members));
        }
        loop {
            self.ws();
            let name_pos = self.pos();
            if self.peek() != Some('"') {
                return Err(self.unexpected("a member name"));
            }
            let name = self.string()?;
            self.ws();
            self.expect(':')?;
            self.ws();
            let value = self.value(depth + 1)?;
            members.push(Member {
                name,
                name_pos,
                value,
            });
            self.ws();
            match self.peek() {
                Some(',') => {
                    self.bump();
                }
                Some('}') => {
                    self.bump();
                    return Ok(Kind::Object(members));
                }
                _ => return Err(self.unexpected("',' or '}'")),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_and_bom() {
        let n = parse("\u{feff}{\n  \"a\": [1, \"x\"]\n}").unwrap();
        let m = n.member("A").unwrap();
        assert_eq!(m.name_pos, LineCol { line: 2, column: 3 });
        assert_eq!(m.value.pos, LineCol { line: 2, column: 8 });
    }

    #[test]
    fn errors_have_positions() {
        let e = parse("{\n \"a\": tru }").unwrap_err();
        assert_eq!(e.pos.line, 2);
        assert!(parse("[").is_err());
        assert!(parse(&"[".repeat(10_000)).is_err());
        assert!(parse("\"\\ud800\"").is_ok());
    }

    #[test]
    fn positions_by_pointer() {
        let text = "{\n  \"a\": [1, {\"b/c\": true}],\n  \"d\": \"x\"\n}";
        let p = Positions::index(text);
        assert_eq!(p.value(""), Some(LineCol { line: 1, column: 1 }));
        assert_eq!(p.value("/a"), Some(LineCol { line: 2, column: 8 }));
        assert_eq!(
            p.value("/a/1/b~1c"),
            Some(LineCol {
                line: 2,
                column: 20
            })
        );
        assert_eq!(p.key("/d"), Some(LineCol { line: 3, column: 3 }));
    }

    /// Columns count characters, not bytes, inside and after strings with multi-byte text.
    #[test]
    fn columns_count_characters_after_multi_byte_strings() {
        let text = "{\"é€😀\": \"ü\", \"b\": 1,\n\"c\\u00e9\": \"x\\\"y\"}";
        let root = parse(text).unwrap();
        assert_eq!(
            root.member("é€😀").unwrap().value.kind,
            Kind::String("ü".into())
        );
        let b = root.member("b").unwrap();
        assert_eq!((b.name_pos.column, b.value.pos.column), (14, 19));
        let c = root.member("cé").unwrap();
        assert_eq!(c.value.kind, Kind::String("x\"y".into()));
        assert_eq!((c.name_pos.line, c.value.pos.column), (2, 12));
        assert_eq!(parse("\"a\u{1}\"").unwrap_err().pos.column, 3);
    }

    /// The last of repeated member names wins, as serde_json keeps the last value; an array
    /// index is found only as written by a loader (no leading zero); keys of array items fall
    /// back to the item.
    #[test]
    fn positions_follow_serde_json_for_repeated_names_and_canonical_indices() {
        let text = "{\"a\": 1,\n \"a\": [true, {\"~x\": 2}]}";
        let p = Positions::index(text);
        assert_eq!(p.value("/a"), Some(LineCol { line: 2, column: 7 }));
        assert_eq!(p.key("/a"), Some(LineCol { line: 2, column: 2 }));
        assert_eq!(
            p.key("/a/1"),
            Some(LineCol {
                line: 2,
                column: 14
            })
        );
        assert_eq!(
            p.key("/a/1/~0x"),
            Some(LineCol {
                line: 2,
                column: 15
            })
        );
        assert_eq!(p.value("/a/01"), None);
        assert_eq!(p.value("/a/2"), None);
        assert_eq!(p.value("/a/0/b"), None);
        assert_eq!(p.value("a"), None);
        assert_eq!(Positions::index("{").value(""), None);
    }

    /// serde_json decodes an escaped surrogate pair in a key to one character; the pointer a
    /// loader builds from that key must find the key's position.
    #[test]
    fn a_key_with_an_escaped_surrogate_pair_is_found_by_its_pointer() {
        let p = Positions::index(r#"{"\ud83d\ude00": 1}"#);
        assert_eq!(p.key("/\u{1f600}"), Some(LineCol { line: 1, column: 2 }));
        assert_eq!(
            p.value("/\u{1f600}"),
            Some(LineCol {
                line: 1,
                column: 18
            })
        );
    }
}
