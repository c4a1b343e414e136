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
        let err = |reason: String| ScheduleError { text: text.to_string(), reason };
        if !text.starts_with('@') && !(5..=6).contains(&fields) {
            return Err(err(format!("{fields} fields")));
        }
        let parser = CronParser::builder().seconds(Seconds::Optional).year(Year::Disallowed).build();
        let cron = parser.parse(text).map_err(|e| err(e.to_string()))?;
        Ok(Schedule { cron, text: text.to_string() })
    }

    /// The next time strictly after `after`, or `None` when the expression never fires again.
    pub fn next_after(&self, after: &DateTime<Local>) -> Option<DateTime<Local>> {
        self.cron.find_next_occurrence(after, false).ok()
    }

    /// The expression as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn accepts_the_spec_forms() {
        for s in ["* * * * *", "*/10 * * * * *", "@hourly", "@daily", "0 3 * * mon-fri"] {
            Schedule::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"));
        }
    }

    #[test]
    fn rejects_bad_expressions() {
        for s in ["", "* * * *", "61 * * * *", "* * * * * * *", "@sometimes", "every minute"] {
            assert!(Schedule::parse(s).is_err(), "{s} should be refused");
        }
    }

    #[test]
    fn six_fields_have_seconds_first() {
        let s = Schedule::parse("*/10 * * * * *").expect("valid");
        let t = Local.with_ymd_and_hms(2026, 1, 1, 0, 0, 3).single().expect("time");
        let next = s.next_after(&t).expect("next");
        assert_eq!((next - t).num_seconds(), 7);
    }

    #[test]
    fn next_is_strictly_after() {
        let s = Schedule::parse("* * * * *").expect("valid");
        let t = Local.with_ymd_and_hms(2026, 1, 1, 0, 1, 0).single().expect("time");
        assert_eq!((s.next_after(&t).expect("next") - t).num_seconds(), 60);
    }
}
