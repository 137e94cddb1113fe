//! Line and column of every value in a JSON text, by JSON pointer, so that template
//! errors can point at the template author's file.

use std::collections::HashMap;

/// A 1-based line and column (columns count characters).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct LineCol {
    /// 1-based line.
    pub line: usize,
    /// 1-based column, in characters.
    pub column: usize,
}

/// Positions of the values (and object keys) of a JSON text, by JSON pointer.
#[derive(Debug, Default, Clone)]
pub struct Positions {
    values: HashMap<String, LineCol>,
    keys: HashMap<String, LineCol>,
}

impl Positions {
    /// Indexes a JSON text. Invalid JSON yields the positions read before the error.
    pub fn index(text: &str) -> Positions {
        let mut s = Scanner {
            chars: text.chars().collect(),
            pos: 0,
            line: 1,
            col: 1,
            out: Positions::default(),
            depth: 0,
        };
        s.ws();
        let _ = s.value(String::new());
        s.out
    }

    /// Where the value at `pointer` starts.
    pub fn value(&self, pointer: &str) -> Option<LineCol> {
        self.values.get(pointer).copied()
    }

    /// Where the key of the member at `pointer` starts (falls back to its value).
    pub fn key(&self, pointer: &str) -> Option<LineCol> {
        self.keys
            .get(pointer)
            .copied()
            .or_else(|| self.value(pointer))
    }
}

/// Escapes one JSON pointer reference token.
pub fn escape_token(s: &str) -> String {
    s.replace('~', "~0").replace('/', "~1")
}

struct Scanner {
    chars: Vec<char>,
    pos: usize,
    line: usize,
    col: usize,
    out: Positions,
    depth: usize,
}

const MAX_DEPTH: usize = 256;

impl Scanner {
    fn here(&self) -> LineCol {
        LineCol {
            line: self.line,
            column: self.col,
        }
    }

    fn bump(&mut self) -> Option<char> {
        let c = *self.chars.get(self.pos)?;
        self.pos += 1;
        if c == '\n' {
            self.line += 1;
            self.col = 1;
        } else {
            self.col += 1;
        }
        Some(c)
    }

    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn ws(&mut self) {
        while matches!(self.peek(), Some(' ' | '\t' | '\n' | '\r' | '\u{feff}')) {
            self.bump();
        }
    }

    fn value(&mut self, ptr: String) -> Option<()> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return None;
        }
        self.out.values.insert(ptr.clone(), self.here());
        let r = match self.peek()? {
            '{' => {
                self.bump();
                self.ws();
                if self.peek() == Some('}') {
                    self.bump();
                } else {
                    loop {
                        self.ws();
                        let key_at = self.here();
                        let key = self.string()?;
                        let child = format!("{ptr}/{}", escape_token(&key));
                        self.out.keys.insert(child.clone(), key_at);
                        self.ws();
                        if self.bump()? != ':' {
                            return None;
                        }
                        self.ws();
                        self.value(child)?;
                        self.ws();
                        match self.bump()? {
                            ',' => continue,
                            '}' => break,
                            _ => return None,
                        }
                    }
                }
                Some(())
            }
            '[' => {
                self.bump();
                self.ws();
                if self.peek() == Some(']') {
                    self.bump();
                } else {
                    let mut i = 0usize;
                    loop {
                        self.ws();
                        self.value(format!("{ptr}/{i}"))?;
                        i += 1;
                        self.ws();
                        match self.bump()? {
                            ',' => continue,
                            ']' => break,
                            _ => return None,
                        }
                    }
                }
                Some(())
            }
            '"' => self.string().map(|_| ()),
            _ => {
                while matches!(self.peek(), Some(c) if c.is_ascii_alphanumeric() || matches!(c, '-' | '+' | '.'))
                {
                    self.bump();
                }
                Some(())
            }
        };
        self.depth -= 1;
        r
    }

    fn string(&mut self) -> Option<String> {
        if self.bump()? != '"' {
            return None;
        }
        let mut s = String::new();
        loop {
            match self.bump()? {
                '"' => return Some(s),
                '\\' => {
                    let c = self.bump()?;
                    match c {
                        'u' => {
                            let hex: String = (0..4).filter_map(|_| self.bump()).collect();
                            let cp = u32::from_str_radix(&hex, 16).ok()?;
                            s.push(char::from_u32(cp).unwrap_or('\u{fffd}'));
                        }
                        'n' => s.push('\n'),
                        't' => s.push('\t'),
                        'r' => s.push('\r'),
                        'b' => s.push('\u{8}'),
                        'f' => s.push('\u{c}'),
                        other => s.push(other),
                    }
                }
                c => s.push(c),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
