//! Numbers print as .NET's `double.ToString()` prints them.

use super::*;

fn reference_format_double(x: f64) -> String {
    let e = format!("{x:e}");
    let (mantissa, exp) = e.split_once('e').unwrap_or((e.as_str(), "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let sign = if mantissa.starts_with('-') { "-" } else { "" };
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    if (-4..15).contains(&exp) {
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

proptest! {
    #![proptest_config(config(2000))]

    #[test]
    fn format_double_matches_the_reference(
        x in prop_oneof![
            any::<f64>().prop_filter("finite, non-zero", |x| x.is_finite() && *x != 0.0),
            (-1e16f64..1e16),
            (-1e-3f64..1e-3),
            // Readings with a few decimals, which take `format_double`'s short path.
            (-10_000_000_000i64..10_000_000_000, 0i32..10).prop_map(|(m, k)| m as f64 / 10f64.powi(k)),
            proptest::sample::select(vec![1e-4, -1e-4, 9.999999999999999e-5, 1e15, 999999999999999.9, 1e15 - 0.125, 0.1, 100.0]),
        ]
    ) {
        prop_assert_eq!(normalizer::value::format_double(x), reference_format_double(x));
    }
}
