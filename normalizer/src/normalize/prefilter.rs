//! The name pre-filter: templates whose `typeMatchExpression` needs a member name the document
//! does not have are skipped without evaluating it.

use crate::doc::Doc;
use crate::jmespath_fallback;
use crate::scope::Envelope;
use crate::template::{Compiled, DeviceMapping};

/// Which templates can match a document, judged by the member names in it: a
/// `typeMatchExpression` needs some names to occur (see
/// [`crate::jsonpath::JsonPath::required_names`], [`jmespath_fallback::required_names`]),
/// one walk over the document finds which of them do, and templates that miss one are
/// skipped without evaluating their scan. With a mapping of many templates, most of
/// which match none of a given device's messages, this is most of the saving.
#[derive(Debug, Clone, Default)]
pub(super) struct Prefilter {
    /// The names templates need, each with its bit (at most 64 names are tracked).
    names: Vec<(String, u64)>,
    /// For each of `names`: its first 8 bytes (zero-padded) and its length, compared
    /// before the whole name.
    heads: Vec<(u64, usize)>,
    /// `names` and `heads` are sorted by length; those `n` bytes long (63: 63 or more)
    /// are at `by_length[n]..by_length[n + 1]`.
    by_length: Vec<usize>,
    /// Bit `n` set when a tracked name is `n` bytes long (bit 63: 63 bytes or more).
    lengths: u64,
    /// For each template, the bits of the names it needs (0: always evaluated).
    pub(super) needs: Vec<u64>,
}

/// The first 8 bytes of a name as a number (zero-padded), to compare names cheaply.
fn head(s: &str) -> u64 {
    let b = s.as_bytes();
    let mut buf = [0u8; 8];
    let n = b.len().min(8);
    buf[..n].copy_from_slice(&b[..n]);
    u64::from_le_bytes(buf)
}

impl Prefilter {
    pub(super) fn new(mapping: &DeviceMapping) -> Self {
        let mut p = Prefilter::default();
        for t in &mapping.templates {
            let mut needs = 0;
            let names = match &t.type_match.compiled {
                Compiled::JsonPath(path) => path.required_names(),
                Compiled::JmesPath(e) => jmespath_fallback::required_names(e),
                Compiled::Empty => Vec::new(),
            };
            for name in names {
                let bit = match p.names.iter().find(|(n, _)| n == name) {
                    Some(&(_, bit)) => bit,
                    None if p.names.len() < 64 => {
                        let bit = 1u64 << p.names.len();
                        p.names.push((name.to_string(), bit));
                        p.heads.push((head(name), name.len()));
                        p.lengths |= 1u64 << name.len().min(63);
                        bit
                    }
                    None => 0,
                };
                needs |= bit;
            }
            p.needs.push(needs);
        }
        let mut order: Vec<usize> = (0..p.names.len()).collect();
        order.sort_by_key(|&i| p.names[i].0.len());
        p.names = order.iter().map(|&i| p.names[i].clone()).collect();
        p.heads = order.iter().map(|&i| p.heads[i]).collect();
        p.by_length = (0..=64)
            .map(|n| p.names.partition_point(|(name, _)| name.len().min(63) < n))
            .collect();
        p
    }

    /// The bits of the tracked names that occur in `doc` (all bits when none is tracked).
    pub(super) fn present(&self, doc: &Doc<'_>) -> u64 {
        if self.names.is_empty() {
            return u64::MAX;
        }
        let mut bits = 0;
        self.scan(doc, &mut bits);
        bits
    }

    /// The bits of the tracked names that occur in the envelope `{Body, Properties,
    /// SystemProperties}` (all bits when none is tracked).
    pub(super) fn present_envelope(&self, e: &Envelope<'_>) -> u64 {
        if self.names.is_empty() {
            return u64::MAX;
        }
        let mut bits = 0;
        self.scan(e.body, &mut bits);
        for name in Envelope::NAMES {
            self.key(name, &mut bits);
        }
        self.scan(e.properties, &mut bits);
        self.scan(e.system_properties, &mut bits);
        bits
    }

    /// Sets the bit of `k` in `bits` when `k` is a tracked name.
    pub(super) fn key(&self, k: &str, bits: &mut u64) {
        let n = k.len().min(63);
        if self.lengths & (1u64 << n) != 0 {
            let h = (head(k), k.len());
            for i in self.by_length[n]..self.by_length[n + 1] {
                if self.heads[i] == h && (h.1 <= 8 || self.names[i].0 == k) {
                    *bits |= self.names[i].1;
                    return;
                }
            }
        }
    }

    pub(super) fn scan(&self, v: &Doc<'_>, bits: &mut u64) {
        match v {
            Doc::Object(m) => {
                for (k, x) in m {
                    self.key(k, bits);
                    if x.is_container() {
                        self.scan(x, bits);
                    }
                }
            }
            Doc::Array(a) => {
                for x in a {
                    if x.is_container() {
                        self.scan(x, bits);
                    }
                }
            }
            _ => {}
        }
    }
}
