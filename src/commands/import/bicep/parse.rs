//! The Bicep parser: statements into declarations (params, vars, resources, modules) and
//! expressions into a small syntax tree, each with its byte offset.

use std::collections::BTreeMap;

use super::lex::*;

#[derive(Debug, Clone)]
pub(super) struct E {
    pub(super) at: usize,
    pub(super) k: K,
}

#[derive(Debug, Clone)]
pub(super) enum K {
    Str(Vec<Part>),
    Num(i64),
    Bool(bool),
    Null,
    Ident(String),
    Obj(Vec<(E, E)>),
    Arr(Vec<E>),
    Call(Option<String>, String, Vec<E>),
    Member(Box<E>, String, bool),
    Index(Box<E>, Box<E>, bool),
    Child(Box<E>, String),
    /// Syntax read but not evaluated offline: what it is.
    Other(String),
}

#[derive(Debug, Clone)]
pub(super) enum Part {
    Lit(String),
    Expr(E),
}

pub(super) struct Param {
    pub(super) at: usize,
    pub(super) default: Option<E>,
}

pub(super) struct Res {
    /// The symbolic name, with its enclosing resources' (`workspace::iotConnector`).
    pub(super) path: String,
    pub(super) at: usize,
    /// The type as written (relative for a nested resource), without `@apiVersion`.
    pub(super) ty: String,
    pub(super) existing: bool,
    /// Declared inside this resource (its index).
    pub(super) lexical_parent: Option<usize>,
    pub(super) body: E,
    pub(super) looped: bool,
    pub(super) conditional: bool,
}

#[derive(Default)]
pub(super) struct Decls {
    pub(super) params: BTreeMap<String, Param>,
    pub(super) vars: BTreeMap<String, E>,
    pub(super) resources: Vec<Res>,
    pub(super) modules: Vec<(String, usize)>,
}

pub(super) struct Parser<'a> {
    pub(super) toks: &'a [(Tok, usize)],
    pub(super) i: usize,
    pub(super) decls: &'a mut Decls,
    /// The resource whose body is being read.
    pub(super) within: Option<usize>,
}

pub(super) type PResult<T> = Result<T, (usize, String)>;

impl Parser<'_> {
    fn peek(&self) -> &Tok {
        &self.toks[self.i.min(self.toks.len() - 1)].0
    }

    fn at(&self) -> usize {
        self.toks[self.i.min(self.toks.len() - 1)].1
    }

    fn bump(&mut self) -> Tok {
        let t = self.peek().clone();
        if self.i < self.toks.len() {
            self.i += 1;
        }
        t
    }

    fn is(&self, p: &str) -> bool {
        matches!(self.peek(), Tok::P(q) if *q == p)
    }

    fn is_ident(&self, name: &str) -> bool {
        matches!(self.peek(), Tok::Ident(n) if n == name)
    }

    fn eat(&mut self, p: &str) -> bool {
        if self.is(p) {
            self.i += 1;
            true
        } else {
            false
        }
    }

    fn expect(&mut self, p: &str) -> PResult<()> {
        if self.eat(p) {
            Ok(())
        } else {
            Err((
                self.at(),
                format!("expected `{p}`, found {}", self.describe()),
            ))
        }
    }

    fn describe(&self) -> String {
        match self.peek() {
            Tok::Ident(n) => format!("`{n}`"),
            Tok::Str(_) => "a string".into(),
            Tok::Num(n) => format!("`{n}`"),
            Tok::P(p) => format!("`{p}`"),
            Tok::Nl => "the end of the line".into(),
            Tok::Eof => "the end of the file".into(),
        }
    }

    fn skip_nl(&mut self) {
        while matches!(self.peek(), Tok::Nl) {
            self.i += 1;
        }
    }

    /// Whether the next token past newlines is `p` (an operator continuing a line).
    fn continues(&mut self, p: &str) -> bool {
        let mut j = self.i;
        while matches!(self.toks.get(j), Some((Tok::Nl, _))) {
            j += 1;
        }
        if matches!(self.toks.get(j), Some((Tok::P(q), _)) if *q == p) {
            self.i = j;
            true
        } else {
            false
        }
    }

    fn ident(&mut self) -> PResult<String> {
        match self.bump() {
            Tok::Ident(n) => Ok(n),
            _ => {
                self.i -= 1;
                Err((
                    self.at(),
                    format!("expected a name, found {}", self.describe()),
                ))
            }
        }
    }

    /// A plain string (a type, a module path).
    fn literal(&mut self) -> PResult<String> {
        let at = self.at();
        match self.bump() {
            Tok::Str(segs) => match segs.as_slice() {
                [Seg::Lit(s)] => Ok(s.clone()),
                _ => Err((at, "expected a string without interpolation".into())),
            },
            _ => Err((at, "expected a string".into())),
        }
    }

    /// Skips to the end of the line, over brackets.
    fn skip_line(&mut self) {
        let mut depth = 0i32;
        loop {
            match self.peek() {
                Tok::Eof => return,
                Tok::Nl if depth <= 0 => return,
                Tok::P("{" | "[" | "(" | "[?") => depth += 1,
                Tok::P("}" | "]" | ")") => depth -= 1,
                _ => {}
            }
            self.i += 1;
        }
    }

    /// Skips a type up to `=` (or the end of the line).
    fn skip_type(&mut self) {
        let mut depth = 0i32;
        loop {
            match self.peek() {
                Tok::Eof => return,
                Tok::Nl if depth <= 0 => return,
                Tok::P("=") if depth <= 0 => return,
                Tok::P("{" | "[" | "(" | "[?") => depth += 1,
                Tok::P("}" | "]" | ")") => depth -= 1,
                _ => {}
            }
            self.i += 1;
        }
    }

    pub(super) fn file(&mut self) -> PResult<()> {
        loop {
            self.skip_nl();
            let at = self.at();
            let word = match self.peek() {
                Tok::Eof => return Ok(()),
                Tok::P("@") => {
                    self.i += 1;
                    self.postfix()?; // a decorator: read, not used
                    continue;
                }
                Tok::Ident(w) => w.clone(),
                _ => {
                    return Err((
                        at,
                        format!("expected a declaration, found {}", self.describe()),
                    ))
                }
            };
            self.i += 1;
            match word.as_str() {
                "param" => {
                    let name = self.ident()?;
                    self.skip_type();
                    let default = if self.eat("=") {
                        Some(self.expr()?)
                    } else {
                        None
                    };
                    self.decls.params.insert(name, Param { at, default });
                }
                "var" => {
                    let name = self.ident()?;
                    self.skip_type();
                    self.expect("=")?;
                    let e = self.expr()?;
                    self.decls.vars.insert(name, e);
                }
                "resource" => self.resource(at)?,
                "module" => {
                    let _sym = self.ident()?;
                    let path = self.literal()?;
                    self.expect("=")?;
                    self.value()?;
                    self.decls.modules.push((path, at));
                }
                "output" | "metadata" => {
                    self.ident()?;
                    self.skip_type();
                    self.expect("=")?;
                    self.expr()?;
                }
                "targetScope" => {
                    self.expect("=")?;
                    self.expr()?;
                }
                "import" | "type" | "func" | "using" | "extension" | "provider" | "assert" => {
                    self.skip_line()
                }
                other => return Err((at, format!("unknown declaration `{other}`"))),
            }
            match self.peek() {
                Tok::Nl | Tok::Eof => {}
                _ => {
                    return Err((
                        self.at(),
                        format!("expected the end of the line, found {}", self.describe()),
                    ))
                }
            }
        }
    }

    /// `resource sym 'type@api' [existing] = body`, after `resource`.
    fn resource(&mut self, at: usize) -> PResult<()> {
        let sym = self.ident()?;
        let type_at = self.at();
        let ty = self.literal()?;
        let ty = match ty.split_once('@') {
            Some((t, _)) => t.to_string(),
            None => return Err((type_at, format!("`{ty}`: no @apiVersion"))),
        };
        let existing = if self.is_ident("existing") {
            self.i += 1;
            true
        } else {
            false
        };
        self.expect("=")?;
        let path = match self.within {
            Some(p) => format!("{}::{sym}", self.decls.resources[p].path),
            None => sym,
        };
        let index = self.decls.resources.len();
        self.decls.resources.push(Res {
            path,
            at,
            ty,
            existing,
            lexical_parent: self.within,
            body: E { at, k: K::Null },
            looped: false,
            conditional: false,
        });
        let outer = self.within.replace(index);
        let body = self.value();
        self.within = outer;
        let (body, looped, conditional) = body?;
        let r = &mut self.decls.resources[index];
        r.body = body;
        r.looped = looped;
        r.conditional = conditional;
        Ok(())
    }

    /// A resource's or module's body: `{…}`, `if (…) {…}` or `[for …: {…}]`; (body, looped,
    /// conditional).
    fn value(&mut self) -> PResult<(E, bool, bool)> {
        if self.is_ident("if") {
            self.i += 1;
            self.expect("(")?;
            self.expr()?;
            self.skip_nl();
            self.expect(")")?;
            let e = self.expr()?;
            return Ok((e, false, true));
        }
        if self.is("[")
            && matches!(self.toks.get(self.i + 1), Some((Tok::Ident(f), _)) if f == "for")
        {
            self.i += 2;
            self.for_head()?;
            let (body, _, c) = self.value()?;
            self.skip_nl();
            self.expect("]")?;
            return Ok((body, true, c));
        }
        Ok((self.expr()?, false, false))
    }

    /// `x in e:` / `(x, i) in e:` after `[for`.
    fn for_head(&mut self) -> PResult<()> {
        if self.eat("(") {
            self.ident()?;
            while self.eat(",") {
                self.ident()?;
            }
            self.expect(")")?;
        } else {
            self.ident()?;
        }
        if !self.is_ident("in") {
            return Err((self.at(), "expected `in`".into()));
        }
        self.i += 1;
        self.expr()?;
        self.expect(":")
    }

    fn expr(&mut self) -> PResult<E> {
        let at = self.at();
        let cond = self.binary(0)?;
        if self.continues("?") {
            self.i += 1;
            self.skip_nl();
            self.expr()?;
            if !self.continues(":") {
                return Err((self.at(), "expected `:` of `? :`".into()));
            }
            self.i += 1;
            self.skip_nl();
            self.expr()?;
            let _ = cond;
            return Ok(E {
                at,
                k: K::Other("a conditional (`? :`)".into()),
            });
        }
        Ok(cond)
    }

    fn binary(&mut self, level: usize) -> PResult<E> {
        const LEVELS: [&[&str]; 7] = [
            &["??"],
            &["||"],
            &["&&"],
            &["==", "!=", "=~", "!~"],
            &["<", ">", "<=", ">="],
            &["+", "-"],
            &["*", "/", "%"],
        ];
        if level == LEVELS.len() {
            return self.unary();
        }
        let at = self.at();
        let mut left = self.binary(level + 1)?;
        loop {
            let op = LEVELS[level].iter().find(|op| {
                if level <= 2 {
                    self.toks[self.i..]
                        .iter()
                        .find(|(t, _)| *t != Tok::Nl)
                        .is_some_and(|(t, _)| *t == Tok::P(op))
                } else {
                    self.is(op)
                }
            });
            let Some(op) = op else { return Ok(left) };
            self.continues(op);
            self.i += 1;
            self.skip_nl();
            self.binary(level + 1)?;
            left = E {
                at,
                k: K::Other(format!("the `{op}` operator")),
            };
        }
    }

    fn unary(&mut self) -> PResult<E> {
        let at = self.at();
        if self.eat("!") {
            self.unary()?;
            return Ok(E {
                at,
                k: K::Other("the `!` operator".into()),
            });
        }
        if self.eat("-") {
            let e = self.unary()?;
            return Ok(match e.k {
                K::Num(n) => E { at, k: K::Num(-n) },
                _ => E {
                    at,
                    k: K::Other("the `-` operator".into()),
                },
            });
        }
        self.postfix()
    }

    fn postfix(&mut self) -> PResult<E> {
        let mut e = self.primary()?;
        loop {
            let at = self.at();
            if self.eat(".") || self.is(".?") {
                let safe = self.eat(".?");
                let name = self.ident()?;
                e = E {
                    at: e.at,
                    k: K::Member(Box::new(e), name, safe),
                };
            } else if self.is("[") || self.is("[?") {
                let safe = self.eat("[?");
                if !safe {
                    self.i += 1;
                }
                self.skip_nl();
                let i = self.expr()?;
                self.skip_nl();
                self.expect("]")?;
                e = E {
                    at: e.at,
                    k: K::Index(Box::new(e), Box::new(i), safe),
                };
            } else if self.eat("::") {
                let name = self.ident()?;
                e = E {
                    at: e.at,
                    k: K::Child(Box::new(e), name),
                };
            } else if self.is("(") {
                self.i += 1;
                let mut args = Vec::new();
                self.skip_nl();
                while !self.eat(")") {
                    args.push(self.expr()?);
                    self.skip_nl();
                    if !self.eat(",") && !self.is(")") {
                        return Err((
                            self.at(),
                            format!("expected `,` or `)`, found {}", self.describe()),
                        ));
                    }
                    self.skip_nl();
                }
                let (ns, name) = match e.k {
                    K::Ident(n) => (None, n),
                    K::Member(t, n, false) => match t.k {
                        K::Ident(ns) => (Some(ns), n),
                        _ => return Err((at, "a call of something that is not a function".into())),
                    },
                    _ => return Err((at, "a call of something that is not a function".into())),
                };
                e = E {
                    at: e.at,
                    k: K::Call(ns, name, args),
                };
            } else if self.is("!")
                && !matches!(
                    self.toks.get(self.i + 1),
                    Some((Tok::Ident(_) | Tok::P("("), _))
                )
            {
                self.i += 1; // `x!`: the non-null assertion
            } else {
                return Ok(e);
            }
        }
    }

    fn primary(&mut self) -> PResult<E> {
        let at = self.at();
        let t = self.bump();
        let k = match t {
            Tok::Num(n) => K::Num(n),
            Tok::Str(segs) => {
                let mut parts = Vec::new();
                for s in segs {
                    match s {
                        Seg::Lit(l) => parts.push(Part::Lit(l)),
                        Seg::Interp(toks) => {
                            let mut p = Parser {
                                toks: &toks,
                                i: 0,
                                decls: &mut *self.decls,
                                within: self.within,
                            };
                            p.skip_nl();
                            let e = p.expr()?;
                            p.skip_nl();
                            if !matches!(p.peek(), Tok::Eof) {
                                return Err((p.at(), "unexpected text in `${…}`".into()));
                            }
                            parts.push(Part::Expr(e));
                        }
                    }
                }
                K::Str(parts)
            }
            Tok::Ident(n) => match n.as_str() {
                "true" => K::Bool(true),
                "false" => K::Bool(false),
                "null" => K::Null,
                "if" => {
                    self.i -= 1;
                    let (e, _, _) = self.value()?;
                    let _ = e;
                    K::Other("an `if (…)` body".into())
                }
                _ if self.is("=>") => {
                    self.i += 1;
                    self.skip_nl();
                    self.expr()?;
                    K::Other("a lambda (`=>`)".into())
                }
                _ => K::Ident(n),
            },
            Tok::P("(") => {
                // A lambda `(a, b) => …`, or a parenthesized expression.
                let mut j = self.i;
                let mut lambda = false;
                loop {
                    match self.toks.get(j) {
                        Some((Tok::Ident(_) | Tok::P(","), _)) => j += 1,
                        Some((Tok::P(")"), _)) => {
                            lambda = matches!(self.toks.get(j + 1), Some((Tok::P("=>"), _)));
                            break;
                        }
                        _ => break,
                    }
                }
                if lambda {
                    self.i = j + 2;
                    self.skip_nl();
                    self.expr()?;
                    K::Other("a lambda (`=>`)".into())
                } else {
                    self.skip_nl();
                    let e = self.expr()?;
                    self.skip_nl();
                    self.expect(")")?;
                    return Ok(e);
                }
            }
            Tok::P("{") => {
                let mut items = Vec::new();
                loop {
                    self.skip_nl();
                    if self.eat("}") {
                        break;
                    }
                    let key_at = self.at();
                    if self.is_ident("resource")
                        && matches!(self.toks.get(self.i + 1), Some((Tok::Ident(_), _)))
                    {
                        self.i += 1;
                        self.resource(key_at)?;
                    } else if self.eat("...") {
                        self.expr()?;
                        items.push((
                            E {
                                at: key_at,
                                k: K::Str(vec![Part::Lit("...".into())]),
                            },
                            E {
                                at: key_at,
                                k: K::Other("an object spread (`...`)".into()),
                            },
                        ));
                    } else {
                        let key = match self.bump() {
                            Tok::Ident(n) => E {
                                at: key_at,
                                k: K::Str(vec![Part::Lit(n)]),
                            },
                            Tok::Str(_) => {
                                self.i -= 1;
                                self.primary()?
                            }
                            _ => {
                                self.i -= 1;
                                return Err((
                                    key_at,
                                    format!("expected a property name, found {}", self.describe()),
                                ));
                            }
                        };
                        self.expect(":")?;
                        self.skip_nl();
                        let v = self.expr()?;
                        items.push((key, v));
                    }
                    self.eat(",");
                    match self.peek() {
                        Tok::Nl | Tok::P("}") => {}
                        _ => {
                            return Err((
                                self.at(),
                                format!("expected a new line or `}}`, found {}", self.describe()),
                            ))
                        }
                    }
                }
                K::Obj(items)
            }
            Tok::P("[") => {
                if self.is_ident("for") {
                    self.i += 1;
                    self.for_head()?;
                    self.skip_nl();
                    self.value()?;
                    self.skip_nl();
                    self.expect("]")?;
                    K::Other("a `for` expression".into())
                } else {
                    let mut items = Vec::new();
                    loop {
                        self.skip_nl();
                        if self.eat("]") {
                            break;
                        }
                        items.push(self.expr()?);
                        self.eat(",");
                        match self.peek() {
                            Tok::Nl | Tok::P("]") => {}
                            _ => {
                                return Err((
                                    self.at(),
                                    format!(
                                        "expected a new line or `]`, found {}",
                                        self.describe()
                                    ),
                                ))
                            }
                        }
                    }
                    K::Arr(items)
                }
            }
            _ => {
                self.i -= 1;
                return Err((at, format!("expected a value, found {}", self.describe())));
            }
        };
        Ok(E { at, k })
    }
}
