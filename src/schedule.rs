//! When to check: cron expressions (5 fields, 6 with seconds first, or `@hourly`-style),
//! evaluated in the host's local time, through croner.

use chrono::{DateTime, Local};
use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};
use thiserror::Error;

/// A validated schedule.
#[derive(Debug, Clone)]
pub struct Schedule {
    cron: Cron,
    text: String,
}

/// A schedule croner would not take.
#[derive(Debug, Error)]
#[error(
    "invalid schedule `{text}`: {reason} (use 5 cron fields like \"*/5 * * * *\", 6 with seconds first like \"*/10 * * * * *\", or @hourly, @daily, …)"
)]
pub struct ScheduleError {
    text: String,
    reason: String,
}

impl Schedule {
    /// Parse a cron expression.
    pub fn parse(text: &str) -> Result<Self, ScheduleError> {
        let text = text.trim();
        let fields = text.split_whitespace().count();
        let err = |reason: String| ScheduleError {
            text: text.to_string(),
            reason,
        };
        if !text.starts_with('@') && !(5..=6).contains(&fields) {
            return Err(err(format!("{fields} fields")));
        }
        let parser = CronParser::builder()
            .seconds(Seconds::Optional)
            .year(Year::Disallowed)
            .build();
        let cron = parser.parse(text).map_err(|e| err(e.to_string()))?;
        Ok(Schedule {
            cron,
            text: text.to_string(),
        })
    }

    /// The next time strictly after `after`, or `None` when the expression never fires again.
    pub fn next_after(&self, after: &DateTime<Local>) -> Option<DateTime<Local>> {
        self.cron.find_next_occurrence(after, false).ok()
    }

    /// The expression as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The schedule's period as seen from `now`: the time between its next two fire times
    /// (`None` when it fires fewer than twice more). Irregular schedules ("0 3 * * mon-fri")
    /// have a period that depends on `now`.
    pub fn period_after(&self, now: &DateTime<Local>) -> Option<std::time::Duration> {
        let next = self.next_after(now)?;
        let after = self.next_after(&next)?;
        (after - next).to_std().ok()
    }
}

/// This host's delay after each scheduled time (the `splay` key): a fraction of `max` taken
/// from a hash of `key` (the host name and the remote), so each host of a fleet keeps the same
/// delay across restarts while the fleet spreads over `[0, max)`.
pub fn splay(max: std::time::Duration, key: &str) -> std::time::Duration {
    use sha2::{Digest, Sha256};
    if max.is_zero() {
        return max;
    }
    let digest = Sha256::digest(key.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    // A 53-bit fraction in [0, 1): exact in an f64, so the delay is strictly below `max`.
    let fraction = (u64::from_be_bytes(first) >> 11) as f64 / (1u64 << 53) as f64;
    max.mul_f64(fraction)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn accepts_the_spec_forms() {
        for s in [
            "* * * * *",
            "*/10 * * * * *",
            "@hourly",
            "@daily",
            "0 3 * * mon-fri",
        ] {
            Schedule::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"));
        }
    }

    #[test]
    fn rejects_bad_expressions() {
        for s in [
            "",
            "* * * *",
            "61 * * * *",
            "* * * * * * *",
            "@sometimes",
            "every minute",
        ] {
            assert!(Schedule::parse(s).is_err(), "{s} should be refused");
        }
    }

    #[test]
    fn six_fields_have_seconds_first() {
        let s = Schedule::parse("*/10 * * * * *").expect("valid");
        let t = Local
            .with_ymd_and_hms(2026, 1, 1, 0, 0, 3)
            .single()
            .expect("time");
        let next = s.next_after(&t).expect("next");
        assert_eq!((next - t).num_seconds(), 7);
    }

    #[test]
    fn period_is_the_gap_between_the_next_two_fire_times() {
        let t = Local
            .with_ymd_and_hms(2026, 1, 1, 0, 0, 3)
            .single()
            .expect("time");
        let every_10s = Schedule::parse("*/10 * * * * *").expect("valid");
        assert_eq!(
            every_10s.period_after(&t),
            Some(std::time::Duration::from_secs(10))
        );
        let hourly = Schedule::parse("@hourly").expect("valid");
        assert_eq!(
            hourly.period_after(&t),
            Some(std::time::Duration::from_secs(3600))
        );
    }

    #[test]
    fn splay_is_stable_per_key_below_max_and_spread() {
        use std::time::Duration;
        let max = Duration::from_secs(60);
        assert_eq!(
            splay(Duration::ZERO, "web1\nhttps://h/a.zip"),
            Duration::ZERO
        );
        let a = splay(max, "web1\nhttps://h/a.zip");
        assert_eq!(
            a,
            splay(max, "web1\nhttps://h/a.zip"),
            "stable across calls"
        );
        let delays: Vec<Duration> = (0..50)
            .map(|i| splay(max, &format!("web{i}\nhttps://h/a.zip")))
            .collect();
        assert!(delays.iter().all(|d| *d < max), "{delays:?}");
        let early = delays.iter().filter(|d| **d < max / 2).count();
        assert!(
            (10..=40).contains(&early),
            "50 hosts should spread over the window: {delays:?}"
        );
    }

    #[test]
    fn next_is_strictly_after() {
        let s = Schedule::parse("* * * * *").expect("valid");
        let t = Local
            .with_ymd_and_hms(2026, 1, 1, 0, 1, 0)
            .single()
            .expect("time");
        assert_eq!((s.next_after(&t).expect("next") - t).num_seconds(), 60);
    }
}
