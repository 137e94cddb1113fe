//! Reading the connector's `/metrics` (Prometheus text exposition): samples by name and
//! labels, and quantiles interpolated from a histogram's cumulative buckets. Pure: no I/O.

/// One sample line: `name{label="value",...} value`.
#[derive(Debug, Clone, PartialEq)]
struct Sample {
    name: String,
    labels: Vec<(String, String)>,
    value: f64,
}

/// One scrape of `/metrics`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Scrape {
    samples: Vec<Sample>,
}

/// A quantile read from histogram buckets.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Quantile {
    /// Interpolated within the finite bucket `(lower, upper]` (seconds): the value is only
    /// as precise as that bucket is narrow.
    At {
        /// The interpolated quantile.
        value: f64,
        /// The bucket's lower bound.
        lower: f64,
        /// The bucket's upper bound.
        upper: f64,
    },
    /// In the `+Inf` bucket: above the largest finite bound (seconds).
    Above(f64),
    /// The histogram exists but holds no observation.
    Empty,
}

impl Scrape {
    /// Parses the text format; comment lines and lines it cannot read are skipped.
    pub fn parse(text: &str) -> Scrape {
        let samples = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .filter_map(parse_line)
            .collect();
        Scrape { samples }
    }

    /// Whether any sample of this metric name is present.
    pub fn has(&self, name: &str) -> bool {
        self.samples.iter().any(|s| s.name == name)
    }

    /// The sum of every sample named `name` whose labels pass `keep`; `None` when the
    /// metric is absent (a present metric with no matching sample sums to 0).
    pub fn sum_where(&self, name: &str, keep: impl Fn(&[(String, String)]) -> bool) -> Option<f64> {
        if !self.has(name) {
            return None;
        }
        Some(
            self.samples
                .iter()
                .filter(|s| s.name == name && keep(&s.labels))
                .map(|s| s.value)
                .sum(),
        )
    }

    /// The sum of every sample named `name` (the value itself for an unlabelled metric).
    pub fn value(&self, name: &str) -> Option<f64> {
        self.sum_where(name, |_| true)
    }

    /// A histogram's cumulative buckets `(upper bound, count)`, sorted by bound, `+Inf` last;
    /// `None` when the histogram is absent.
    pub fn histogram(&self, name: &str) -> Option<Vec<(f64, f64)>> {
        let bucket = format!("{name}_bucket");
        let mut buckets: Vec<(f64, f64)> = self
            .samples
            .iter()
            .filter(|s| s.name == bucket)
            .filter_map(|s| {
                let le = label(&s.labels, "le")?;
                Some((parse_number(le)?, s.value))
            })
            .collect();
        if buckets.is_empty() {
            return None;
        }
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        Some(buckets)
    }
}

/// The value of label `name`.
pub fn label<'a>(labels: &'a [(String, String)], name: &str) -> Option<&'a str> {
    labels
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// The `q` quantile (0..=1) of cumulative `buckets` (as [`Scrape::histogram`] gives them),
/// interpolated linearly inside the bucket it falls in, as Prometheus' `histogram_quantile`
/// does: the first bucket starts at 0.
pub fn quantile(buckets: &[(f64, f64)], q: f64) -> Quantile {
    let total = buckets.last().map_or(0.0, |b| b.1);
    if total <= 0.0 {
        return Quantile::Empty;
    }
    let rank = q.clamp(0.0, 1.0) * total;
    let (mut lower, mut below) = (0.0, 0.0);
    for &(bound, count) in buckets {
        if count >= rank && count > below {
            if bound.is_infinite() {
                return Quantile::Above(lower);
            }
            return Quantile::At {
                value: lower + (bound - lower) * (rank - below) / (count - below),
                lower,
                upper: bound,
            };
        }
        if bound.is_finite() {
            lower = bound;
        }
        below = count;
    }
    Quantile::Above(lower)
}

fn parse_number(s: &str) -> Option<f64> {
    match s {
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        _ => s.parse().ok(),
    }
}

fn parse_line(line: &str) -> Option<Sample> {
    let name_end = line.find(|c: char| c == '{' || c.is_whitespace())?;
    let name = line[..name_end].to_string();
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(after) = rest.strip_prefix('{') {
        let mut chars = after.char_indices().peekable();
        let end = loop {
            // Skip separators, then read `key="value"`.
            while let Some((_, c)) = chars.peek() {
                if *c == ',' || c.is_whitespace() {
                    chars.next();
                } else {
                    break;
                }
            }
            match chars.peek() {
                Some((i, '}')) => break *i + 1,
                None => return None,
                _ => {}
            }
            let mut key = String::new();
            for (_, c) in chars.by_ref() {
                if c == '=' {
                    break;
                }
                key.push(c);
            }
            if chars.next().map(|(_, c)| c) != Some('"') {
                return None;
            }
            let mut value = String::new();
            loop {
                match chars.next()? {
                    (_, '\\') => match chars.next()?.1 {
                        'n' => value.push('\n'),
                        c => value.push(c),
                    },
                    (_, '"') => break,
                    (_, c) => value.push(c),
                }
            }
            labels.push((key.trim().to_string(), value));
        };
        rest = &after[end..];
    }
    let value = parse_number(rest.split_whitespace().next()?)?;
    Some(Sample {
        name,
        labels,
        value,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"# HELP iomt_events_incoming_total Events received from the source.
# TYPE iomt_events_incoming_total counter
iomt_events_incoming_total 1200
iomt_fhir_resources_saved_total{resource_type="Observation",operation="Created"} 40
iomt_fhir_resources_saved_total{resource_type="Observation",operation="Updated"} 60
iomt_fhir_resources_saved_total{resource_type="Patient",operation="Created"} 5
iomt_fhir_resources_saved_total{resource_type="Observation",operation="Unchanged"} 7
iomt_errors_total{stage="normalize",error_type="a \"quoted\", odd}"} 2
lat_bucket{le="1"} 10
lat_bucket{le="0.5"} 0
lat_bucket{le="2"} 90
lat_bucket{le="+Inf"} 100
lat_sum 150
lat_count 100
"#;

    #[test]
    fn values_sums_and_labels() {
        let s = Scrape::parse(TEXT);
        assert_eq!(s.value("iomt_events_incoming_total"), Some(1200.0));
        assert_eq!(s.value("iomt_events_committed_total"), None);
        let written = s.sum_where("iomt_fhir_resources_saved_total", |l| {
            matches!(label(l, "operation"), Some("Created" | "Updated"))
        });
        assert_eq!(written, Some(105.0));
        assert_eq!(s.value("iomt_errors_total"), Some(2.0));
        // A metric that is present but has no sample matching the filter sums to 0.
        assert_eq!(
            s.sum_where("iomt_fhir_resources_saved_total", |l| label(l, "operation")
                == Some("Deleted")),
            Some(0.0)
        );
    }

    #[test]
    fn quantiles_interpolate_like_histogram_quantile() {
        let s = Scrape::parse(TEXT);
        let b = s.histogram("lat").unwrap();
        assert_eq!(b.first(), Some(&(0.5, 0.0)));
        // p50: rank 50 lies in (1, 2] holding 80: 1 + 1 * (50 - 10) / 80.
        assert_eq!(
            quantile(&b, 0.5),
            Quantile::At {
                value: 1.5,
                lower: 1.0,
                upper: 2.0
            }
        );
        // p5: rank 5 lies in (0.5, 1] holding 10.
        assert_eq!(
            quantile(&b, 0.05),
            Quantile::At {
                value: 0.75,
                lower: 0.5,
                upper: 1.0
            }
        );
        // p99: rank 99 lies in the +Inf bucket.
        assert_eq!(quantile(&b, 0.99), Quantile::Above(2.0));
        assert_eq!(
            quantile(&[(1.0, 0.0), (f64::INFINITY, 0.0)], 0.5),
            Quantile::Empty
        );
        assert!(s.histogram("absent").is_none());
    }

    #[test]
    fn unreadable_lines_are_skipped() {
        let s = Scrape::parse("x{a=\"1\" 3\ny 4\nz{a=1} 5\nw notanumber\n");
        assert_eq!(s.value("y"), Some(4.0));
        assert!(!s.has("x") && !s.has("z") && !s.has("w"));
    }
}
