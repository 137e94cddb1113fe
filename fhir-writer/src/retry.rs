//! The one retry policy for FHIR requests: a pure function of what happened, how often,
//! how long we have been at it, and a jitter sample.
//!
//! 408, 429, 5xx (but 501) and connection failures are retried with exponential backoff and jitter,
//! honouring `Retry-After` (seconds or an HTTP date), until a deadline; any other status is
//! final. (409/412 are not retried here: the writer re-reads and re-merges on those.)

use std::time::Duration;

use chrono::{DateTime, Utc};

/// Backoff settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// First delay.
    pub initial_backoff: Duration,
    /// Largest computed delay (a longer `Retry-After` is still honoured).
    pub max_backoff: Duration,
    /// Give up once this much time has passed since the first attempt.
    pub deadline: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(30),
            deadline: Duration::from_secs(300),
        }
    }
}

/// What one attempt ended with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempt<'a> {
    /// An HTTP response that was not a success.
    Status {
        /// The status code.
        code: u16,
        /// The `Retry-After` header, if any.
        retry_after: Option<&'a str>,
    },
    /// The connection failed, was dropped, or timed out.
    Connection,
}

/// Why the policy gave up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GiveUp {
    /// The failure is final (a 4xx other than 408/429).
    NotRetryable,
    /// Waiting again would pass the deadline.
    DeadlineExceeded,
}

/// What to do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Wait this long, then try again.
    RetryAfter(Duration),
    /// Stop.
    GiveUp(GiveUp),
}

/// Whether a status is worth retrying: 408, 429 and 5xx except 501 (Not Implemented, which
/// will not change by asking again: for a Bundle it means the server takes no Bundles).
pub fn is_retryable_status(code: u16) -> bool {
    code == 408 || code == 429 || ((500..=599).contains(&code) && code != 501)
}

/// Parses `Retry-After`: delay-seconds or an HTTP date (relative to `now`).
pub fn parse_retry_after(value: &str, now: DateTime<Utc>) -> Option<Duration> {
    let v = value.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = DateTime::parse_from_rfc2822(v).ok()?.with_timezone(&Utc);
    Some((at - now).to_std().unwrap_or(Duration::ZERO))
}

impl RetryPolicy {
    /// Decides after a failed attempt. `attempt` counts from 0 for the first try;
    /// `elapsed` is the time since the first try; `jitter` is a sample in `[0, 1)`;
    /// `now` resolves HTTP-date `Retry-After` values.
    pub fn decide(
        &self,
        what: Attempt<'_>,
        attempt: u32,
        elapsed: Duration,
        jitter: f64,
        now: DateTime<Utc>,
    ) -> Decision {
        let retry_after = match what {
            Attempt::Status { code, .. } if !is_retryable_status(code) => {
                return Decision::GiveUp(GiveUp::NotRetryable)
            }
            Attempt::Status { retry_after, .. } => {
                retry_after.and_then(|v| parse_retry_after(v, now))
            }
            Attempt::Connection => None,
        };
        let exp = 2f64.powi(attempt.min(30) as i32);
        let base = self.initial_backoff.as_secs_f64() * exp;
        let capped = base.min(self.max_backoff.as_secs_f64());
        // "Equal jitter": half fixed, half random, so retries of many writers spread out.
        let jitter = jitter.clamp(0.0, 1.0);
        let computed = Duration::from_secs_f64(capped * (0.5 + 0.5 * jitter));
        let delay = match retry_after {
            Some(ra) => ra.max(computed.min(Duration::from_millis(100))),
            None => computed,
        };
        if elapsed + delay > self.deadline {
            Decision::GiveUp(GiveUp::DeadlineExceeded)
        } else {
            Decision::RetryAfter(delay)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-11-22T10:00:00Z")
            .unwrap()
            .with_timezone(&Utc)
    }

    #[test]
    fn decisions_table() {
        let p = RetryPolicy {
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(2),
            deadline: Duration::from_secs(10),
        };
        let s = |code| Attempt::Status {
            code,
            retry_after: None,
        };
        let ms = |n| Decision::RetryAfter(Duration::from_millis(n));
        let cases: Vec<(Attempt<'_>, u32, u64, f64, Decision)> = vec![
            // status, attempt, elapsed s, jitter -> decision
            (s(400), 0, 0, 0.0, Decision::GiveUp(GiveUp::NotRetryable)),
            (s(401), 0, 0, 0.0, Decision::GiveUp(GiveUp::NotRetryable)),
            (s(403), 0, 0, 0.0, Decision::GiveUp(GiveUp::NotRetryable)),
            (s(404), 0, 0, 0.0, Decision::GiveUp(GiveUp::NotRetryable)),
            (s(422), 0, 0, 0.0, Decision::GiveUp(GiveUp::NotRetryable)),
            (s(408), 0, 0, 0.0, ms(50)),
            (s(429), 0, 0, 1.0, ms(100)),
            (s(500), 1, 0, 0.0, ms(100)),
            (s(501), 0, 0, 0.0, Decision::GiveUp(GiveUp::NotRetryable)),
            (s(502), 2, 0, 0.0, ms(200)),
            (s(503), 3, 0, 1.0, ms(800)),
            (s(504), 10, 0, 1.0, ms(2000)),
            (Attempt::Connection, 0, 0, 0.5, ms(75)),
            (Attempt::Connection, 40, 0, 1.0, ms(2000)),
            (
                s(503),
                10,
                9,
                1.0,
                Decision::GiveUp(GiveUp::DeadlineExceeded),
            ),
            (
                Attempt::Connection,
                4,
                10,
                0.0,
                Decision::GiveUp(GiveUp::DeadlineExceeded),
            ),
            (
                Attempt::Status {
                    code: 429,
                    retry_after: Some("3"),
                },
                0,
                0,
                0.0,
                ms(3000),
            ),
            (
                Attempt::Status {
                    code: 503,
                    retry_after: Some("Sun, 22 Nov 2026 10:00:05 GMT"),
                },
                0,
                0,
                0.0,
                ms(5000),
            ),
            (
                Attempt::Status {
                    code: 503,
                    retry_after: Some("Sun, 22 Nov 2026 09:59:00 GMT"),
                },
                0,
                0,
                0.0,
                ms(50),
            ),
            (
                Attempt::Status {
                    code: 429,
                    retry_after: Some("60"),
                },
                0,
                0,
                0.0,
                Decision::GiveUp(GiveUp::DeadlineExceeded),
            ),
            (
                Attempt::Status {
                    code: 429,
                    retry_after: Some("soon"),
                },
                0,
                0,
                0.0,
                ms(50),
            ),
            (
                Attempt::Status {
                    code: 400,
                    retry_after: Some("1"),
                },
                0,
                0,
                0.0,
                Decision::GiveUp(GiveUp::NotRetryable),
            ),
        ];
        for (i, (what, attempt, elapsed, jitter, want)) in cases.into_iter().enumerate() {
            let got = p.decide(what, attempt, Duration::from_secs(elapsed), jitter, now());
            assert_eq!(got, want, "case {i}: {what:?} attempt {attempt}");
        }
    }
}
