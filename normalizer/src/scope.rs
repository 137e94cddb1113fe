//! What an expression is evaluated against: the event [`Envelope`] (`{Body, Properties,
//! SystemProperties}` without building it), a [`Token`] of a document, and the [`Scope`] of an
//! evaluation (a document, optionally with `CalculatedContent`'s top-level `matchedToken`).
//!
//! Shared by the JSONPath evaluator ([`crate::jsonpath`]), the JMESPath evaluator
//! ([`crate::jmespath_eval`]), the `jmespath` crate fallback ([`crate::jmespath_fallback`]) and
//! the normalizer, so that every expression language sees the same document the same way.

use std::borrow::Cow;
use std::ops::ControlFlow;

use crate::doc::{member, Doc};

/// The member `CalculatedContent` adds to the document's root: the token a
/// `typeMatchExpression` matched.
pub(crate) const MATCHED_TOKEN: &str = "matchedToken";

/// Whether a visit goes on; `Break` once the caller has what it needs.
pub(crate) type Flow = ControlFlow<()>;

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
    pub(crate) fn child(self, name: &str) -> Option<Token<'a>> {
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
    pub(crate) fn for_each_child(self, f: &mut dyn FnMut(Token<'a>) -> Flow) -> Flow {
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
    pub(crate) doc: Token<'a>,
    /// The token added as `matchedToken` to the document's root, if any.
    pub(crate) matched: Option<Token<'a>>,
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
}
