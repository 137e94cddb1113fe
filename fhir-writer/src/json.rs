//! A small JSON parser that keeps the line and column of every value and member name, so template
//! errors can point at the exact place (serde_json keeps no positions in its `Value`).

/// Nesting deeper than this is rejected (keeps recursion bounded on hostile input).
const MAX_DEPTH: usize = 128;

/// A 1-based line and column (columns count characters).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Pos {
    pub line: usize,
    pub column: usize,
}

/// A parsed JSON value with its position.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Node {
    pub pos: Pos,
    pub kind: Kind,
}

/// The value itself. Numbers keep their source text.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Kind {
    Null,
    Bool(bool),
    Number(String),
    String(String),
    Array(Vec<Node>),
    Object(Vec<Member>),
}

/// One object member.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Member {
    pub name: String,
    pub name_pos: Pos,
    pub value: Node,
}

impl Node {
    /// The JSON type name, for messages.
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

/// A syntax error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SyntaxError {
    pub pos: Pos,
    pub message: String,
}

/// Parses one JSON document (a leading UTF-8 BOM is skipped; trailing whitespace is allowed).
pub(crate) fn parse(text: &str) -> Result<Node, SyntaxError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut p = Parser {
        chars: text.chars().collect(),
        i: 0,
        line: 1,
        col: 1,
    };
    p.ws();
    let node = p.value(0)?;
    p.ws();
    if p.i < p.chars.len() {
        return Err(p.err("unexpected content after the JSON value"));
    }
    Ok(node)
}

struct Parser {
    chars: Vec<char>,
    i: usize,
    line: usize,
    col: usize,
}

impl Parser {
    fn pos(&self) -> Pos {
        Pos {
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
        self.chars.get(self.i).copied()
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.i += 1;
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
        Ok(self.chars[start..self.i].iter().collect())
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
                                && self.chars.get(self.i + 1) == Some(&'u')
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
                Some(c) => {
                    self.bump();
                    out.push(c);
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

/// Appends one reference token to a JSON pointer (RFC 6901 escaping).
pub(crate) fn pointer_push(base: &str, token: &str) -> String {
    format!("{base}/{}", token.replace('~', "~0").replace('/', "~1"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_and_bom() {
        let n = parse("\u{feff}{\n  \"a\": [1, \"x\"]\n}").unwrap();
        let m = n.member("A").unwrap();
        assert_eq!(m.name_pos, Pos { line: 2, column: 3 });
        assert_eq!(m.value.pos, Pos { line: 2, column: 8 });
    }

    #[test]
    fn errors_have_positions() {
        let e = parse("{\n \"a\": tru }").unwrap_err();
        assert_eq!(e.pos.line, 2);
        assert!(parse("[").is_err());
        assert!(parse(&"[".repeat(10_000)).is_err());
        assert!(parse("\"\\ud800\"").is_ok());
    }
}
