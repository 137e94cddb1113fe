//! Search parameters: parsing a FHIR search query string into a [`SearchQuery`] (pure; no I/O).
//!
//! Supported, on every resource type:
//!
//! | parameter | kind | matches |
//! | --- | --- | --- |
//! | `_id` | id | the logical id |
//! | `identifier` | token | `identifier[]` (`system\|value`, `\|value` = no system, `value` = any system, `system\|` = any value) |
//! | `code` | token | `code.coding[]` (same forms) |
//! | `subject`, `patient`, `device`, `encounter` | reference | `Type/id`, `id`, or an absolute URL ending in `Type/id`; `subject:Patient=id` |
//! | `date` | date | `effective[x]` (`effectiveDateTime`, `effectivePeriod`, `effectiveInstant`), `Encounter.period` |
//! | `_lastUpdated` | date | `meta.lastUpdated` |
//!
//! `patient` matches `subject` when it is a Patient, and `Device.patient`. Several values
//! separated by commas are alternatives (OR); repeated parameters must all match (AND).
//!
//! Dates take the prefixes `eq` (the resource's range lies within the value's), `ne`, `gt`, `lt`,
//! `ge`, `le`, `sa`, `eb`; a value's range is as wide as its precision (`2024-03` is the whole
//! month). `ge` and `le` match by overlap: `ge2024-03-01T10:00:00Z` finds every Observation whose
//! effective period ends at or after that second, `le` every one that starts at or before it, so
//! `date=geA&date=leB` finds everything overlapping `[A, B]`.
//!
//! Result control: `_count` (default 20, at most 1000; 0 = only the total), `_offset`,
//! `_sort` (`date`, `-date`, `_lastUpdated`, `-_lastUpdated`, `_id`, `-_id`, comma-separated),
//! `_summary=count`. `_format`, `_pretty`, `_total` and `_elements` are accepted and ignored.
//! Any other parameter is rejected (HTTP 400) rather than silently ignored.

use chrono::{DateTime, Datelike, Months, NaiveDate, NaiveDateTime, NaiveTime, TimeZone, Utc};

use crate::StoreError;

/// Default page size.
pub const DEFAULT_COUNT: usize = 20;
/// Largest page size; larger `_count` values are lowered to it.
pub const MAX_COUNT: usize = 1000;

/// A parsed search.
#[derive(Debug, Clone, PartialEq)]
pub struct SearchQuery {
    /// Conditions that must all hold.
    pub filters: Vec<Filter>,
    /// Page size (0: only the total).
    pub count: usize,
    /// Matches skipped before this page.
    pub offset: usize,
    /// Sort keys, most significant first; ties keep creation order.
    pub sort: Vec<SortKey>,
}

/// One condition; each holds alternatives of which one must match.
#[derive(Debug, Clone, PartialEq)]
pub enum Filter {
    /// `_id`: one of these logical ids.
    Id(Vec<String>),
    /// A token parameter (`identifier`, `code`).
    Token {
        /// Parameter name.
        param: String,
        /// Alternatives.
        any_of: Vec<Token>,
    },
    /// A reference parameter (`subject`, `patient`, `device`, `encounter`).
    Reference {
        /// Parameter name.
        param: String,
        /// Alternatives.
        any_of: Vec<RefTarget>,
    },
    /// A date parameter.
    Date {
        /// Which date: the resource's clinical date or `meta.lastUpdated`.
        field: DateField,
        /// Alternatives.
        any_of: Vec<DateBound>,
    },
}

/// Which date a date filter looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DateField {
    /// `date`: `effective[x]` or `period`.
    Clinical,
    /// `_lastUpdated`.
    LastUpdated,
}

/// A token value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    /// The system constraint.
    pub system: TokenSystem,
    /// The value (code); `None` for `system|`.
    pub value: Option<String>,
}

/// The system part of a token value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSystem {
    /// `value`: any system.
    Any,
    /// `|value`: no system.
    Absent,
    /// `system|value`.
    Is(String),
}

/// A reference value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefTarget {
    /// The target's type, when the value or a `:Type` modifier gives one.
    pub resource_type: Option<String>,
    /// The target's logical id.
    pub id: String,
}

/// A date value with its prefix, as a range of epoch milliseconds (both ends inclusive).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DateBound {
    /// The comparison.
    pub prefix: DatePrefix,
    /// First millisecond of the value's range.
    pub start: i64,
    /// Last millisecond of the value's range.
    pub end: i64,
}

/// Date comparison prefixes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DatePrefix {
    /// The resource's range lies within the value's.
    Eq,
    /// Not `eq`.
    Ne,
    /// The resource's range ends after the value's.
    Gt,
    /// The resource's range starts before the value's.
    Lt,
    /// The resource's range ends at or after the value's start (overlap).
    Ge,
    /// The resource's range starts at or before the value's end (overlap).
    Le,
    /// Starts after the value's range.
    Sa,
    /// Ends before the value's range.
    Eb,
}

/// A sort key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SortKey {
    /// What to sort by.
    pub field: SortField,
    /// Descending (`-date`).
    pub descending: bool,
}

/// What a sort key sorts by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SortField {
    /// The clinical date's start (resources without one last).
    Date,
    /// `meta.lastUpdated`.
    LastUpdated,
    /// The logical id.
    Id,
}

/// Reference parameters and the target type each implies.
const REFERENCE_PARAMS: &[(&str, Option<&str>)] = &[
    ("subject", None),
    ("patient", Some("Patient")),
    ("device", Some("Device")),
    ("encounter", Some("Encounter")),
];
const TOKEN_PARAMS: &[&str] = &["identifier", "code"];
const IGNORED: &[&str] = &["_format", "_pretty", "_total", "_elements"];
/// Most alternatives in one parameter (`a,b,c`), and most conditions in one search: far above
/// what a person or the writer sends, and within SQLite's limits on one statement.
pub const MAX_ALTERNATIVES: usize = 100;
/// Most filter parameters in one search.
pub const MAX_FILTERS: usize = 20;

fn invalid(msg: String) -> StoreError {
    StoreError::Invalid(msg)
}

/// Whether `s` is a plausible resource type name (`Observation`).
pub fn is_resource_type(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_uppercase())
        && s.len() <= 64
        && chars.all(|c| c.is_ascii_alphabetic())
}

/// Whether `s` is a valid FHIR logical id (`[A-Za-z0-9\-\.]{1,64}`).
pub fn is_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
}

impl SearchQuery {
    /// Parses decoded query parameters (name, value) for a search.
    ///
    /// ```
    /// use fhir_store::search::{Filter, SearchQuery, Token, TokenSystem};
    ///
    /// let q = SearchQuery::parse(&[
    ///     ("identifier".into(), "urn:sys|abc".into()),
    ///     ("_count".into(), "5".into()),
    /// ]).unwrap();
    /// assert_eq!(q.count, 5);
    /// assert_eq!(q.filters, vec![Filter::Token {
    ///     param: "identifier".into(),
    ///     any_of: vec![Token { system: TokenSystem::Is("urn:sys".into()), value: Some("abc".into()) }],
    /// }]);
    /// assert!(SearchQuery::parse(&[("colour".into(), "red".into())]).is_err());
    /// ```
    pub fn parse(params: &[(String, String)]) -> Result<SearchQuery, StoreError> {
        let mut q = SearchQuery {
            filters: Vec::new(),
            count: DEFAULT_COUNT,
            offset: 0,
            sort: Vec::new(),
        };
        for (name, value) in params {
            let (base, modifier) = match name.split_once(':') {
                Some((b, m)) => (b, Some(m)),
                None => (name.as_str(), None),
            };
            let no_modifier = || match modifier {
                Some(m) => Err(invalid(format!(
                    "search parameter {base:?} does not support the modifier :{m}"
                ))),
                None => Ok(()),
            };
            match base {
                "_count" => {
                    no_modifier()?;
                    q.count = parse_number(base, value)?.min(MAX_COUNT);
                }
                "_offset" => {
                    no_modifier()?;
                    q.offset = parse_number(base, value)?;
                }
                "_sort" => {
                    no_modifier()?;
                    q.sort = parse_sort(value)?;
                }
                "_summary" => {
                    no_modifier()?;
                    match value.as_str() {
                        "count" => q.count = 0,
                        "false" => {}
                        other => {
                            return Err(invalid(format!(
                                "_summary={other} is not supported (only count and false)"
                            )))
                        }
                    }
                }
                b if IGNORED.contains(&b) => {}
                "_id" => {
                    no_modifier()?;
                    let ids = alternatives(value);
                    if ids.is_empty() {
                        return Err(invalid("_id needs a value".into()));
                    }
                    q.filters.push(Filter::Id(ids));
                }
                "date" | "_lastUpdated" => {
                    no_modifier()?;
                    let any_of = alternatives(value)
                        .iter()
                        .map(|v| parse_date_bound(v))
                        .collect::<Result<Vec<_>, _>>()?;
                    if any_of.is_empty() {
                        return Err(invalid(format!("{base} needs a value")));
                    }
                    let field = if base == "date" {
                        DateField::Clinical
                    } else {
                        DateField::LastUpdated
                    };
                    q.filters.push(Filter::Date { field, any_of });
                }
                b if TOKEN_PARAMS.contains(&b) => {
                    no_modifier()?;
                    let any_of = alternatives(value)
                        .iter()
                        .map(|v| parse_token(b, v))
                        .collect::<Result<Vec<_>, _>>()?;
                    if any_of.is_empty() {
                        return Err(invalid(format!("{b} needs a value")));
                    }
                    q.filters.push(Filter::Token {
                        param: b.to_string(),
                        any_of,
                    });
                }
                b => {
                    let Some((_, implied)) = REFERENCE_PARAMS.iter().find(|(p, _)| *p == b) else {
                        return Err(invalid(format!(
                            "unknown search parameter {name:?}; supported: _id, identifier, code, subject, patient, device, encounter, date, _lastUpdated, _count, _offset, _sort, _summary"
                        )));
                    };
                    let type_modifier = match modifier {
                        Some(m) if is_resource_type(m) => Some(m),
                        Some(m) => {
                            return Err(invalid(format!(
                                "search parameter {b:?} does not support the modifier :{m}"
                            )))
                        }
                        None => None,
                    };
                    let any_of = alternatives(value)
                        .iter()
                        .map(|v| parse_reference(b, v, type_modifier.or(*implied)))
                        .collect::<Result<Vec<_>, _>>()?;
                    if any_of.is_empty() {
                        return Err(invalid(format!("{b} needs a value")));
                    }
                    q.filters.push(Filter::Reference {
                        param: b.to_string(),
                        any_of,
                    });
                }
            }
        }
        if q.filters.len() > MAX_FILTERS {
            return Err(invalid(format!(
                "a search takes at most {MAX_FILTERS} filter parameters"
            )));
        }
        let widest = q
            .filters
            .iter()
            .map(Filter::alternatives)
            .max()
            .unwrap_or(0);
        if widest > MAX_ALTERNATIVES {
            return Err(invalid(format!(
                "a search parameter takes at most {MAX_ALTERNATIVES} comma-separated values"
            )));
        }
        Ok(q)
    }
}

impl Filter {
    /// How many alternatives the filter holds.
    pub fn alternatives(&self) -> usize {
        match self {
            Filter::Id(v) => v.len(),
            Filter::Token { any_of, .. } => any_of.len(),
            Filter::Reference { any_of, .. } => any_of.len(),
            Filter::Date { any_of, .. } => any_of.len(),
        }
    }
}

/// Comma-separated alternatives (`\,` is a literal comma), empty ones dropped.
fn alternatives(value: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some(n) => cur.push(n),
                None => cur.push('\\'),
            },
            ',' => out.push(std::mem::take(&mut cur)),
            c => cur.push(c),
        }
    }
    out.push(cur);
    out.retain(|s| !s.is_empty());
    out
}

fn parse_number(name: &str, value: &str) -> Result<usize, StoreError> {
    value.trim().parse::<usize>().map_err(|_| {
        invalid(format!(
            "{name} must be a non-negative integer, not {value:?}"
        ))
    })
}

fn parse_sort(value: &str) -> Result<Vec<SortKey>, StoreError> {
    value
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|k| {
            let (descending, name) = match k.strip_prefix('-') {
                Some(n) => (true, n),
                None => (false, k),
            };
            let field = match name {
                "date" => SortField::Date,
                "_lastUpdated" => SortField::LastUpdated,
                "_id" => SortField::Id,
                other => {
                    return Err(invalid(format!(
                        "cannot sort by {other:?}; supported: date, _lastUpdated, _id (prefix - for descending)"
                    )))
                }
            };
            Ok(SortKey { field, descending })
        })
        .collect()
}

fn parse_token(param: &str, value: &str) -> Result<Token, StoreError> {
    let token = match value.split_once('|') {
        None => Token {
            system: TokenSystem::Any,
            value: Some(value.to_string()),
        },
        Some(("", "")) => return Err(invalid(format!("{param}=| names neither system nor value"))),
        Some(("", v)) => Token {
            system: TokenSystem::Absent,
            value: Some(v.to_string()),
        },
        Some((s, "")) => Token {
            system: TokenSystem::Is(s.to_string()),
            value: None,
        },
        Some((s, v)) => Token {
            system: TokenSystem::Is(s.to_string()),
            value: Some(v.to_string()),
        },
    };
    Ok(token)
}

/// Parses a reference as stored or searched: `Type/id`, `Type/id/_history/v`, an absolute URL
/// ending so, or (when `allow_bare`) a bare `id`.
pub fn parse_reference_string(reference: &str, allow_bare: bool) -> Option<RefTarget> {
    let parts: Vec<&str> = reference.split('/').filter(|p| !p.is_empty()).collect();
    let parts = match parts.iter().rposition(|p| *p == "_history") {
        Some(h) => &parts[..h],
        None => &parts[..],
    };
    match parts {
        [.., t, id] if is_resource_type(t) && is_id(id) => Some(RefTarget {
            resource_type: Some((*t).to_string()),
            id: (*id).to_string(),
        }),
        [id] if allow_bare && is_id(id) => Some(RefTarget {
            resource_type: None,
            id: (*id).to_string(),
        }),
        _ => None,
    }
}

fn parse_reference(
    param: &str,
    value: &str,
    implied_type: Option<&str>,
) -> Result<RefTarget, StoreError> {
    let mut target = parse_reference_string(value, true).ok_or_else(|| {
        invalid(format!(
            "{param}={value:?} is not a reference (Type/id or id)"
        ))
    })?;
    match (&target.resource_type, implied_type) {
        (None, Some(t)) => target.resource_type = Some(t.to_string()),
        (Some(given), Some(t)) if given != t => {
            return Err(invalid(format!(
                "{param}={value:?}: {param} references a {t}, not a {given}"
            )))
        }
        _ => {}
    }
    Ok(target)
}

fn parse_date_bound(value: &str) -> Result<DateBound, StoreError> {
    let prefixes = [
        ("eq", DatePrefix::Eq),
        ("ne", DatePrefix::Ne),
        ("gt", DatePrefix::Gt),
        ("lt", DatePrefix::Lt),
        ("ge", DatePrefix::Ge),
        ("le", DatePrefix::Le),
        ("sa", DatePrefix::Sa),
        ("eb", DatePrefix::Eb),
    ];
    let (prefix, rest) = prefixes
        .iter()
        .find_map(|(p, k)| value.strip_prefix(p).map(|r| (*k, r)))
        .unwrap_or((DatePrefix::Eq, value));
    let (start, end) = date_range(rest).ok_or_else(|| {
        invalid(format!(
            "date value {value:?} is not a FHIR date (prefix eq|ne|gt|lt|ge|le|sa|eb, then YYYY, YYYY-MM, YYYY-MM-DD or YYYY-MM-DDThh:mm[:ss[.fff]][Z|+hh:mm])"
        ))
    })?;
    Ok(DateBound { prefix, start, end })
}

/// The range of epoch milliseconds (both ends inclusive) a FHIR `date`, `dateTime` or `instant`
/// covers at its precision: `2024` is the whole year, `2024-03-01T10:00:00Z` the whole second,
/// `2024-03-01T10:00:00.250Z` one millisecond. A time without a zone is taken as UTC.
///
/// ```
/// use fhir_store::search::date_range;
/// let (start, end) = date_range("2024-03").unwrap();
/// assert_eq!(end - start + 1, 31 * 24 * 3600 * 1000);
/// assert_eq!(date_range("2024-03-01T10:00:00.0000000Z"), date_range("2024-03-01T10:00:00.000Z"));
/// assert_eq!(date_range("March"), None);
/// ```
pub fn date_range(s: &str) -> Option<(i64, i64)> {
    let s = s.trim();
    let ms = |d: DateTime<Utc>| d.timestamp_millis();
    let day_start = |d: NaiveDate| ms(Utc.from_utc_datetime(&d.and_time(NaiveTime::MIN)));
    if !s.contains('T') {
        let parts: Vec<&str> = s.split('-').collect();
        let num = |p: &str, len: usize| -> Option<u32> {
            (p.len() == len && p.chars().all(|c| c.is_ascii_digit()))
                .then(|| p.parse().ok())
                .flatten()
        };
        return match parts.as_slice() {
            [y] => {
                let y = i32::try_from(num(y, 4)?).ok()?;
                let a = NaiveDate::from_ymd_opt(y, 1, 1)?;
                let b = NaiveDate::from_ymd_opt(y + 1, 1, 1)?;
                Some((day_start(a), day_start(b) - 1))
            }
            [y, m] => {
                let y = i32::try_from(num(y, 4)?).ok()?;
                let a = NaiveDate::from_ymd_opt(y, num(m, 2)?, 1)?;
                let b = a.checked_add_months(Months::new(1))?;
                Some((day_start(a), day_start(b) - 1))
            }
            [y, m, d] => {
                let y = i32::try_from(num(y, 4)?).ok()?;
                let a = NaiveDate::from_ymd_opt(y, num(m, 2)?, num(d, 2)?)?;
                let b = a.succ_opt()?;
                Some((day_start(a), day_start(b) - 1))
            }
            _ => None,
        };
    }
    // dateTime: split the zone off.
    let (local, offset_secs) = if let Some(l) = s.strip_suffix('Z') {
        (l, 0i64)
    } else {
        let t_at = s.find('T')?;
        match s[t_at..].rfind(['+', '-']) {
            Some(i) => {
                let (l, z) = s.split_at(t_at + i);
                let sign = if z.starts_with('-') { -1 } else { 1 };
                let (h, m) = z[1..].split_once(':')?;
                if h.len() != 2 || m.len() != 2 {
                    return None;
                }
                let h: i64 = h.parse().ok()?;
                let m: i64 = m.parse().ok()?;
                if h > 14 || m > 59 {
                    return None;
                }
                (l, sign * (h * 3600 + m * 60))
            }
            None => (s, 0),
        }
    };
    let (main, fraction) = match local.split_once('.') {
        Some((m, f)) => {
            if f.is_empty() || !f.chars().all(|c| c.is_ascii_digit()) {
                return None;
            }
            (m, Some(f))
        }
        None => (local, None),
    };
    let (naive, width) = if let Ok(t) = NaiveDateTime::parse_from_str(main, "%Y-%m-%dT%H:%M:%S") {
        (t, 1000i64)
    } else if fraction.is_none() {
        (
            NaiveDateTime::parse_from_str(main, "%Y-%m-%dT%H:%M").ok()?,
            60_000,
        )
    } else {
        return None;
    };
    if naive.year() < 1 || naive.year() > 9999 {
        return None;
    }
    let mut start = ms(Utc.from_utc_datetime(&naive)) - offset_secs * 1000;
    let width = match fraction {
        Some(f) => {
            let digits: String = f.chars().chain("000".chars()).take(3).collect();
            start += digits.parse::<i64>().ok()?;
            1
        }
        None => width,
    };
    Some((start, start + width - 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn tokens() {
        let q =
            SearchQuery::parse(&p(&[("identifier", "|v"), ("code", "http://loinc.org|")])).unwrap();
        assert_eq!(
            q.filters[0],
            Filter::Token {
                param: "identifier".into(),
                any_of: vec![Token {
                    system: TokenSystem::Absent,
                    value: Some("v".into())
                }]
            }
        );
        assert_eq!(
            q.filters[1],
            Filter::Token {
                param: "code".into(),
                any_of: vec![Token {
                    system: TokenSystem::Is("http://loinc.org".into()),
                    value: None
                }]
            }
        );
        assert!(SearchQuery::parse(&p(&[("identifier", "|")])).is_err());
        assert!(SearchQuery::parse(&p(&[("identifier:text", "x")])).is_err());
    }

    #[test]
    fn references() {
        let q = SearchQuery::parse(&p(&[
            ("patient", "abc"),
            ("subject", "http://h/fhir/Patient/x/_history/2"),
            ("subject:Device", "d"),
        ]))
        .unwrap();
        let t = |t: Option<&str>, id: &str| RefTarget {
            resource_type: t.map(Into::into),
            id: id.into(),
        };
        assert_eq!(
            q.filters,
            vec![
                Filter::Reference {
                    param: "patient".into(),
                    any_of: vec![t(Some("Patient"), "abc")]
                },
                Filter::Reference {
                    param: "subject".into(),
                    any_of: vec![t(Some("Patient"), "x")]
                },
                Filter::Reference {
                    param: "subject".into(),
                    any_of: vec![t(Some("Device"), "d")]
                },
            ]
        );
        assert!(SearchQuery::parse(&p(&[("patient", "Device/x")])).is_err());
        assert!(SearchQuery::parse(&p(&[("subject", "not a ref")])).is_err());
    }

    #[test]
    fn dates() {
        let day = date_range("2024-03-01").unwrap();
        assert_eq!(day.1 - day.0 + 1, 86_400_000);
        let (a, b) = date_range("2024-03-01T10:00:00+01:00").unwrap();
        assert_eq!((a, b), {
            let (x, y) = date_range("2024-03-01T09:00:00Z").unwrap();
            (x, y)
        });
        assert_eq!(b - a, 999);
        let (a, b) = date_range("2024-03-01T10:00:00.5Z").unwrap();
        assert_eq!(a, b);
        assert_eq!(a % 1000, 500);
        assert_eq!(
            date_range("2024-03-01T10:00Z").map(|(a, b)| b - a),
            Some(59_999)
        );
        assert!(date_range("2024-13").is_none());
        assert!(date_range("2024-02-30").is_none());
        assert!(date_range("2024-03-01T25:00:00Z").is_none());
        assert!(date_range("").is_none());
        assert!(date_range("2024-03-01T10:00:00.Z").is_none());
        let q = SearchQuery::parse(&p(&[("date", "ge2024-03-01,lt2023")])).unwrap();
        match &q.filters[0] {
            Filter::Date { any_of, .. } => {
                assert_eq!(any_of[0].prefix, DatePrefix::Ge);
                assert_eq!(any_of[1].prefix, DatePrefix::Lt);
            }
            f => panic!("{f:?}"),
        }
    }

    #[test]
    fn control() {
        let q = SearchQuery::parse(&p(&[
            ("_count", "5000"),
            ("_offset", "40"),
            ("_sort", "-date,_id"),
        ]))
        .unwrap();
        assert_eq!(q.count, MAX_COUNT);
        assert_eq!(q.offset, 40);
        assert_eq!(
            q.sort,
            vec![
                SortKey {
                    field: SortField::Date,
                    descending: true
                },
                SortKey {
                    field: SortField::Id,
                    descending: false
                }
            ]
        );
        assert!(SearchQuery::parse(&p(&[("_count", "-1")])).is_err());
        assert!(SearchQuery::parse(&p(&[("_sort", "colour")])).is_err());
        let many = vec!["x"; MAX_ALTERNATIVES + 1].join(",");
        assert!(SearchQuery::parse(&p(&[("identifier", &many)])).is_err());
        let many = vec![("_id", "x"); MAX_FILTERS + 1];
        assert!(SearchQuery::parse(&p(&many)).is_err());
        assert_eq!(
            alternatives("a,b\\,c,,"),
            vec!["a".to_string(), "b,c".to_string()]
        );
    }

    proptest::proptest! {
        /// Arbitrary query parameters and date strings never panic the parser.
        #[test]
        fn arbitrary_input_never_panics(
            params in proptest::collection::vec(
                ("(_?[a-z]{1,12}(:[A-Za-z]{0,8})?|identifier|date|subject|_sort|_count)", "[-+|,:./TZ0-9a-zA-Z\\\\ ]{0,40}"),
                0..6,
            ),
            date in "(eq|ge|lt)?[-+:.TZ0-9]{0,30}",
        ) {
            let _ = SearchQuery::parse(&params);
            let _ = date_range(&date);
            let _ = parse_date_bound(&date);
            let _ = parse_reference_string(&date, true);
        }
    }
}
