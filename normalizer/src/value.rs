//! How selected tokens become measurement values and timestamps, as the reference
//! (Newtonsoft.Json on .NET) renders them.

use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use serde_json::Number;

use crate::doc::Doc;

/// Renders a JSON number as .NET renders the parsed value: integers in full,
/// floating-point numbers as the shortest round-trip text, switching to `E+XX`/`E-XX`
/// notation outside `1e-4 <= |x| < 1e15` (`double.ToString()` on .NET Core 3.0+).
pub fn format_number(n: &Number) -> String {
    if let Some(i) = n.as_i64() {
        return itoa::Buffer::new().format(i).to_owned();
    }
    if let Some(u) = n.as_u64() {
        return itoa::Buffer::new().format(u).to_owned();
    }
    format_double(n.as_f64().unwrap_or(f64::NAN))
}

/// `double.ToString(CultureInfo.InvariantCulture)` on .NET Core 3.0+.
pub fn format_double(x: f64) -> String {
    if x.is_nan() {
        return "NaN".into();
    }
    if x.is_infinite() {
        return if x > 0.0 { "∞".into() } else { "-∞".into() };
    }
    if x == 0.0 {
        return if x.is_sign_negative() {
            "-0".into()
        } else {
            "0".into()
        };
    }
    // Inside .NET's fixed-point range, Rust's `Display` prints the same shortest
    // round-trip digits in the same positional form; no need to take them apart. (Not
    // `ryu`: where two shortest texts read back, it does not always pick the nearer one,
    // e.g. 34872688517324.812 for 34872688517324.813; the property test below shows it.)
    if (1e-4..1e15).contains(&x.abs()) {
        return few_decimals(x).unwrap_or_else(|| x.to_string());
    }
    // Shortest round-trip digits and exponent, from Rust's `{:e}` formatting.
    let e = format!("{x:e}");
    let (mantissa, exp) = e.split_once('e').unwrap_or((e.as_str(), "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let neg = mantissa.starts_with('-');
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    let sign = if neg { "-" } else { "" };
    if (-4..15).contains(&exp) {
        // Fixed-point.
        let n = digits.len() as i32;
        if exp >= 0 {
            let int_len = exp + 1;
            if n <= int_len {
                format!("{sign}{digits}{}", "0".repeat((int_len - n) as usize))
            } else {
                let (a, b) = digits.split_at(int_len as usize);
                format!("{sign}{a}.{b}")
            }
        } else {
            format!("{sign}0.{}{digits}", "0".repeat((-exp - 1) as usize))
        }
    } else {
        let (first, rest) = digits.split_at(1);
        let frac = if rest.is_empty() {
            String::new()
        } else {
            format!(".{rest}")
        };
        let esign = if exp < 0 { '-' } else { '+' };
        format!("{sign}{first}{frac}E{esign}{:02}", exp.abs())
    }
}

/// `x` in positional form when at most 9 decimals identify it, as `Display` prints it
/// (the shortest text that reads back as `x`), without the general shortest-digits
/// search; `None` when there is no such short form or it is not unique.
///
/// At each number of decimals `k`, the texts that read back as `x` are the integers `c`
/// with `c / 10^k == x` (a correctly rounded division, which is what parsing the decimal
/// `c·10^-k` gives, for `c < 2^53`): the integers next to `x·10^k`. The first `k` with
/// exactly one gives the shortest text, and being the only one of that length, it is the
/// one `Display` prints.
fn few_decimals(x: f64) -> Option<String> {
    const POW10: [f64; 10] = [1.0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9];
    for (k, &p) in POW10.iter().enumerate() {
        let m = (x * p).round();
        if m.abs() >= 9_007_199_254_740_991.0 {
            return None;
        }
        let reads_back = |c: f64| c / p == x;
        match (reads_back(m - 1.0), reads_back(m), reads_back(m + 1.0)) {
            (false, false, false) => continue,
            (false, true, false) => return Some(fixed_point(m as i64, k)),
            (true, false, false) => return Some(fixed_point(m as i64 - 1, k)),
            (false, false, true) => return Some(fixed_point(m as i64 + 1, k)),
            _ => return None,
        }
    }
    None
}

/// `m · 10^-k` written out: `fixed_point(-1225, 2)` is `-12.25`, `fixed_point(5, 4)` is
/// `0.0005`.
fn fixed_point(m: i64, k: usize) -> String {
    // At most 16 digits (|m| < 2^53), 9 decimals, a sign, "0.": 29 bytes.
    let mut buf = [b'0'; 32];
    let mut at = buf.len();
    let mut n = m.unsigned_abs();
    let mut written = 0;
    while n > 0 || written <= k {
        if written == k && k > 0 {
            at -= 1;
            buf[at] = b'.';
        }
        at -= 1;
        buf[at] = b'0' + (n % 10) as u8;
        n /= 10;
        written += 1;
    }
    if m < 0 {
        at -= 1;
        buf[at] = b'-';
    }
    String::from_utf8_lossy(&buf[at..]).into_owned()
}

/// What a selected token is, as a measurement value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ValueText {
    /// Missing: null, or a string that is empty or only white space.
    Missing,
    /// The value's text.
    Text(String),
    /// An object or array, which has no string form.
    NotScalar(&'static str),
}

/// Converts a selected token to the measurement's string value.
///
/// Numbers as [`format_number`]; booleans as .NET's `True`/`False`; strings unchanged
/// (date-like strings keep their original text, where the reference would re-render
/// them in a culture format).
pub fn value_text(v: &Doc<'_>) -> ValueText {
    match v {
        Doc::Null => ValueText::Missing,
        Doc::String(s) if s.trim().is_empty() => ValueText::Missing,
        Doc::String(s) => ValueText::Text(s.to_string()),
        Doc::Number(n) => ValueText::Text(format_number(n)),
        Doc::Bool(b) => ValueText::Text(if *b { "True" } else { "False" }.into()),
        Doc::Array(_) => ValueText::NotScalar("an array"),
        Doc::Object(_) => ValueText::NotScalar("an object"),
    }
}

/// Parses a timestamp string the way the reference accepts it, to UTC.
///
/// ISO 8601 / RFC 3339 with `Z` or an offset (converted to UTC exactly), with or without
/// fractional seconds (any number of digits), `T` or a space between date and time; a
/// date and time without offset is taken as UTC; a bare date is midnight UTC.
pub fn parse_timestamp(s: &str) -> Option<DateTime<Utc>> {
    let s = s.trim();
    if let Some(t) = rfc3339_common(s) {
        return Some(t);
    }
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t.with_timezone(&Utc));
    }
    let with_t = if s.len() > 10 && s.as_bytes().get(10) == Some(&b' ') {
        let mut t = s.to_string();
        t.replace_range(10..11, "T");
        t
    } else {
        s.to_string()
    };
    if let Ok(t) = DateTime::parse_from_rfc3339(&with_t) {
        return Some(t.with_timezone(&Utc));
    }
    for fmt in [
        "%Y-%m-%dT%H:%M:%S%.f%:z",
        "%Y-%m-%dT%H:%M:%S%.f%z",
        "%Y-%m-%dT%H:%M%:z",
    ] {
        if let Ok(t) = DateTime::parse_from_str(&with_t, fmt) {
            return Some(t.with_timezone(&Utc));
        }
    }
    for fmt in ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%dT%H:%M"] {
        if let Ok(t) = NaiveDateTime::parse_from_str(&with_t, fmt) {
            return Some(t.and_utc());
        }
    }
    if let Ok(d) = NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        return d.and_hms_opt(0, 0, 0).map(|t| t.and_utc());
    }
    None
}

/// The common RFC 3339 form, `YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)` with at most 9
/// fraction digits and no leap second, read directly; `None` for anything else (which
/// `DateTime::parse_from_rfc3339` then judges). Gives what that function gives.
fn rfc3339_common(s: &str) -> Option<DateTime<Utc>> {
    let b = s.as_bytes();
    // Two ASCII digits at `at` as a number.
    let two = |at: usize| -> Option<u32> {
        let (x, y) = (
            b.get(at)?.wrapping_sub(b'0'),
            b.get(at + 1)?.wrapping_sub(b'0'),
        );
        (x < 10 && y < 10).then_some(u32::from(x) * 10 + u32::from(y))
    };
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' {
        return None;
    }
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let year = two(0)? * 100 + two(2)?;
    let date = NaiveDate::from_ymd_opt(year as i32, two(5)?, two(8)?)?;
    let (hour, minute, second) = (two(11)?, two(14)?, two(17)?);
    if second > 59 {
        return None; // a leap second: the general parser's business
    }
    let mut at = 19;
    let mut nanos = 0;
    if b[at] == b'.' {
        at += 1;
        let mut scale = 1_000_000_000;
        while let Some(d) = b.get(at).map(|c| c.wrapping_sub(b'0')).filter(|&d| d < 10) {
            if scale == 1 {
                return None; // more than 9 digits
            }
            scale /= 10;
            nanos += u32::from(d) * scale;
            at += 1;
        }
        if scale == 1_000_000_000 {
            return None; // no digit
        }
    }
    let offset = match &b[at..] {
        b"Z" => 0,
        [sign @ (b'+' | b'-'), _, _, b':', _, _] => {
            let (h, m) = (two(at + 1)?, two(at + 4)?);
            if h > 23 || m > 59 {
                return None;
            }
            let secs = i64::from(h * 3600 + m * 60);
            if *sign == b'-' {
                -secs
            } else {
                secs
            }
        }
        _ => return None,
    };
    let local = date.and_hms_nano_opt(hour, minute, second, nanos)?;
    let utc = if offset == 0 {
        local
    } else {
        local.checked_sub_signed(chrono::TimeDelta::seconds(offset))?
    };
    Some(utc.and_utc())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dotnet_double_formatting() {
        let cases = [
            (7.0, "7"),
            (98.43639286275842, "98.43639286275842"),
            (1.9812, "1.9812"),
            (0.1 + 0.2, "0.30000000000000004"),
            (1e15, "1E+15"),
            (1e14, "100000000000000"),
            (123456789012345680000.0, "1.2345678901234568E+20"),
            (0.0001, "0.0001"),
            (0.00001, "1E-05"),
            (-2.5e-7, "-2.5E-07"),
            (1.5e300, "1.5E+300"),
            (-12.25, "-12.25"),
        ];
        for (x, want) in cases {
            assert_eq!(format_double(x), want, "{x}");
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config::with_cases(20_000))]

        /// Inside .NET's fixed-point range the text is `Display`'s (shortest round trip,
        /// positional), whichever of the fast paths produced it.
        #[test]
        fn fixed_point_range_as_display_prints_it(
            bits in proptest::num::u64::ANY,
            scaled in -1e9f64..1e9,
            decimals in 0i32..12
        ) {
            for x in [f64::from_bits(bits), scaled / 10f64.powi(decimals), scaled.round() / 1e4] {
                if x.is_finite() && (1e-4..1e15).contains(&x.abs()) {
                    proptest::prop_assert_eq!(format_double(x), x.to_string(), "{:?}", x);
                }
            }
        }

        /// The direct reading of the common form agrees with chrono's RFC 3339 parser on
        /// everything near that form.
        #[test]
        fn common_rfc3339_as_chrono_reads_it(
            s in "[0-9]{4}-[01][0-9]-[0-3][0-9][T ][0-2][0-9]:[0-6][0-9]:[0-6][0-9](\\.[0-9]{0,11})?(Z|z|[+-][0-2][0-9]:[0-6][0-9]|[+-][0-9]{4})?"
        ) {
            let chrono = DateTime::parse_from_rfc3339(&s).ok().map(|t| t.with_timezone(&Utc));
            if let Some(ours) = rfc3339_common(&s) {
                proptest::prop_assert_eq!(Some(ours), chrono, "{}", s);
            }
        }
    }

    #[test]
    fn timestamps_to_utc() {
        let t = |s: &str| parse_timestamp(s).map(|t| crate::measurement::format_utc(&t));
        assert_eq!(
            t("2019-01-30T22:45:02.6073744Z").as_deref(),
            Some("2019-01-30T22:45:02.607374400Z")
        );
        assert_eq!(
            t("2023-05-01T12:20:30+02:00").as_deref(),
            Some("2023-05-01T10:20:30Z")
        );
        assert_eq!(
            t("2023-05-01T05:20:30.5-05:00").as_deref(),
            Some("2023-05-01T10:20:30.500Z")
        );
        assert_eq!(
            t("2023-05-01 10:20:30").as_deref(),
            Some("2023-05-01T10:20:30Z")
        );
        assert_eq!(t("2023-05-01").as_deref(), Some("2023-05-01T00:00:00Z"));
        assert_eq!(t("yesterday"), None);
        assert_eq!(
            t("2024-02-29T23:30:00.25-01:00").as_deref(),
            Some("2024-03-01T00:30:00.250Z")
        );
        assert_eq!(t("2023-02-29T00:00:00Z"), None);
        assert_eq!(
            t("2016-12-31T23:59:60Z").as_deref(),
            Some("2016-12-31T23:59:60Z")
        );
        assert_eq!(t("2023-13-01T00:00:00Z"), None);
    }
}
