//! The Bicep lexer: tokens with their byte offsets, strings split into literal and `${…}`
//! segments.

#[derive(Debug, Clone, PartialEq)]
pub(super) enum Tok {
    Ident(String),
    Str(Vec<Seg>),
    Num(i64),
    P(&'static str),
    Nl,
    Eof,
}

#[derive(Debug, Clone, PartialEq)]
pub(super) enum Seg {
    Lit(String),
    Interp(Vec<(Tok, usize)>),
}

pub(super) const PUNCT: [&str; 32] = [
    "...", "::", "=>", "==", "!=", "=~", "!~", "<=", ">=", "&&", "||", "??", ".?", "[?", "{", "}",
    "[", "]", "(", ")", ",", ":", ".", "=", "!", "?", "<", ">", "+", "-", "*", "@",
];

pub(super) struct Lexer<'a> {
    pub(super) s: &'a str,
    pub(super) at: usize,
}

impl Lexer<'_> {
    fn err(&self, at: usize, msg: &str) -> (usize, String) {
        (at, msg.to_string())
    }

    /// Tokens up to the end, or (inside `${…}`) to the `}` closing at depth 0.
    pub(super) fn tokens(&mut self, interp: bool) -> Result<Vec<(Tok, usize)>, (usize, String)> {
        let mut out: Vec<(Tok, usize)> = Vec::new();
        let mut depth = 0usize;
        loop {
            let rest = &self.s[self.at..];
            let Some(c) = rest.chars().next() else {
                if interp {
                    return Err(self.err(self.at, "unterminated `${`"));
                }
                out.push((Tok::Eof, self.at));
                return Ok(out);
            };
            let start = self.at;
            if c == '\n' {
                self.at += 1;
                if !matches!(out.last(), Some((Tok::Nl, _))) {
                    out.push((Tok::Nl, start));
                }
            } else if c.is_whitespace() {
                self.at += c.len_utf8();
            } else if rest.starts_with("//") {
                self.at += rest.find('\n').unwrap_or(rest.len());
            } else if let Some(comment) = rest.strip_prefix("/*") {
                let end = comment
                    .find("*/")
                    .ok_or_else(|| self.err(start, "unterminated comment"))?;
                self.at += end + 4;
            } else if let Some(body) = rest.strip_prefix("'''") {
                let end = body
                    .find("'''")
                    .ok_or_else(|| self.err(start, "unterminated '''string'''"))?;
                let mut lit = &body[..end];
                lit = lit
                    .strip_prefix("\r\n")
                    .or_else(|| lit.strip_prefix('\n'))
                    .unwrap_or(lit);
                self.at += 3 + end + 3;
                out.push((Tok::Str(vec![Seg::Lit(lit.to_string())]), start));
            } else if c == '\'' {
                self.at += 1;
                let segs = self.string(start)?;
                out.push((Tok::Str(segs), start));
            } else if c.is_ascii_digit() {
                let n: String = rest.chars().take_while(|d| d.is_ascii_digit()).collect();
                self.at += n.len();
                let v = n
                    .parse()
                    .map_err(|_| self.err(start, "number out of range"))?;
                out.push((Tok::Num(v), start));
            } else if c.is_alphabetic() || c == '_' {
                let id: String = rest
                    .chars()
                    .take_while(|d| d.is_alphanumeric() || *d == '_')
                    .collect();
                self.at += id.len();
                out.push((Tok::Ident(id), start));
            } else if let Some(p) = PUNCT.iter().find(|p| rest.starts_with(**p)) {
                if interp {
                    match *p {
                        "{" => depth += 1,
                        "}" if depth == 0 => {
                            self.at += 1;
                            out.push((Tok::Eof, start));
                            return Ok(out);
                        }
                        "}" => depth -= 1,
                        _ => {}
                    }
                }
                self.at += p.len();
                out.push((Tok::P(p), start));
            } else if c == '/' || c == '%' {
                self.at += 1;
                out.push((Tok::P(if c == '/' { "/" } else { "%" }), start));
            } else {
                return Err(self.err(start, &format!("unexpected `{c}`")));
            }
        }
    }

    /// A `'…'` string's segments, after its opening quote.
    fn string(&mut self, start: usize) -> Result<Vec<Seg>, (usize, String)> {
        let mut segs = Vec::new();
        let mut lit = String::new();
        loop {
            let rest = &self.s[self.at..];
            let Some(c) = rest.chars().next() else {
                return Err(self.err(start, "unterminated string"));
            };
            self.at += c.len_utf8();
            match c {
                '\'' => break,
                '\n' => return Err(self.err(start, "unterminated string (a newline in '…')")),
                '\\' => {
                    let e = self.s[self.at..]
                        .chars()
                        .next()
                        .ok_or_else(|| self.err(start, "unterminated string"))?;
                    self.at += e.len_utf8();
                    match e {
                        'n' => lit.push('\n'),
                        'r' => lit.push('\r'),
                        't' => lit.push('\t'),
                        '\\' | '\'' | '$' => lit.push(e),
                        'u' => {
                            let r = &self.s[self.at..];
                            let close = r
                                .strip_prefix('{')
                                .and_then(|r| r.find('}'))
                                .ok_or_else(|| self.err(self.at, "bad \\u{…} escape"))?;
                            let ch = u32::from_str_radix(&r[1..close + 1], 16)
                                .ok()
                                .and_then(char::from_u32)
                                .ok_or_else(|| self.err(self.at, "bad \\u{…} escape"))?;
                            lit.push(ch);
                            self.at += close + 2;
                        }
                        other => {
                            return Err(
                                self.err(self.at - 1, &format!("unknown escape `\\{other}`"))
                            )
                        }
                    }
                }
                '$' if self.s[self.at..].starts_with('{') => {
                    self.at += 1;
                    if !lit.is_empty() {
                        segs.push(Seg::Lit(std::mem::take(&mut lit)));
                    }
                    let toks = self.tokens(true)?;
                    segs.push(Seg::Interp(toks));
                }
                c => lit.push(c),
            }
        }
        if !lit.is_empty() || segs.is_empty() {
            segs.push(Seg::Lit(lit));
        }
        Ok(segs)
    }
}
