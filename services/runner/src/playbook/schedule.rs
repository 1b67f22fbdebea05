//! Time in playbooks: durations (`30s`, `4h`, `7d`), crontab lines and IANA time zones. Parsing
//! lives here so the compiler, the engine and the scheduler agree on one reading.
//!
//! Cron lines have 5 fields (`min hour dom month dow`, as in crontab) or 6/7 fields with seconds
//! first (and a year last), as the `cron` crate reads them. Day-of-week numbers always follow
//! crontab — `0` or `7` is Sunday, `1` Monday … `6` Saturday — whatever the field count, because
//! the `cron` crate's own numbering (1 = Sunday) would silently shift every numeric crontab line
//! copied into a playbook by one day. Names (`MON-FRI`) mean the same in every form.

use std::str::FromStr;
use std::time::Duration;

use chrono_tz::Tz;

/// Parses a positive duration such as `30s`, `4h`, `7d` or `1h 30m`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let duration = humantime::parse_duration(text.trim())
        .map_err(|error| format!("`{text}` is not a duration ({error})"))?;
    if duration.is_zero() {
        return Err(format!(
            "`{text}` is zero; a duration must be longer than that"
        ));
    }
    Ok(duration)
}

/// The longest expiry OpenAI accepts for an API key: `expires_in_seconds` is at most
/// 31,536,000 (365 days).
pub const MAX_KEY_EXPIRY: Duration = Duration::from_secs(31_536_000);

/// Parses a key's expiry (`expires_in` of `openai.set_key_expiry`) into whole seconds: a
/// duration of whole seconds, at most [`MAX_KEY_EXPIRY`].
pub fn parse_key_expiry(text: &str) -> Result<u64, String> {
    let duration = parse_duration(text)?;
    if duration > MAX_KEY_EXPIRY {
        return Err(format!(
            "`{text}` is longer than 365 days, the longest expiry OpenAI accepts for a key (`1y` \
             is 365.25 days: write `365d`)"
        ));
    }
    if duration.subsec_nanos() != 0 {
        return Err(format!(
            "`{text}` is not a whole number of seconds; OpenAI takes an expiry in seconds"
        ));
    }
    Ok(duration.as_secs())
}

/// Parses a crontab line of 5, 6 or 7 fields.
pub fn parse_cron(line: &str) -> Result<cron::Schedule, String> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    let (seconds, rest): (&str, &[&str]) = match fields.len() {
        5 => ("0", &fields[..]),
        6 | 7 => (fields[0], &fields[1..]),
        count => {
            return Err(format!(
                "`{line}` has {count} fields; expected 5 (`min hour dom month dow`) or 6/7 with seconds first"
            ));
        }
    };
    let day_of_week = crontab_day_of_week(rest[4])?;
    let mut expression = vec![seconds];
    expression.extend_from_slice(&rest[..4]);
    expression.push(&day_of_week);
    expression.extend_from_slice(&rest[5..]);
    cron::Schedule::from_str(&expression.join(" "))
        .map_err(|error| format!("`{line}` is not a valid cron line: {error}"))
}

const DAY_NAMES: [&str; 8] = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT", "SUN"];

/// Rewrites crontab day-of-week numbers as names, so `1-5` means Monday to Friday.
fn crontab_day_of_week(field: &str) -> Result<String, String> {
    let name = |number: &str| -> Result<&'static str, String> {
        match number.parse::<usize>() {
            Ok(day) if day <= 7 => Ok(DAY_NAMES[day]),
            _ => Err(format!(
                "day of week `{number}` is out of range 0-7 (0 and 7 are Sunday)"
            )),
        }
    };
    let is_number = |text: &str| !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit());
    let mut parts = Vec::new();
    for part in field.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((range, step)) => (range, Some(step)),
            None => (part, None),
        };
        let range = match range.split_once('-') {
            Some((from, to)) if is_number(from) && is_number(to) => {
                // `5-7` in crontab is Friday to Sunday; Sunday sorts first in the crate's week.
                if to == "7" && from != "0" && from != "7" && step.is_none() {
                    format!("{}-SAT,SUN", name(from)?)
                } else {
                    format!("{}-{}", name(from)?, name(to)?)
                }
            }
            None if is_number(range) => name(range)?.to_owned(),
            _ => range.to_owned(),
        };
        parts.push(match step {
            Some(step) => format!("{range}/{step}"),
            None => range,
        });
    }
    Ok(parts.join(","))
}

/// Parses an IANA time zone name (`Europe/Berlin`); the error suggests the closest name.
pub fn parse_timezone(name: &str) -> Result<Tz, (String, Option<String>)> {
    Tz::from_str(name).map_err(|_| {
        let names = chrono_tz::TZ_VARIANTS.iter().map(|tz| tz.name());
        let suggestion = quench_common::suggest::did_you_mean(name, names);
        (format!("`{name}` is not an IANA time zone"), suggestion)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn five_field_crontab_day_numbers_follow_crontab() {
        for (line, expected) in [
            ("0 9 * * 1-5", "0 0 9 * * MON-FRI"),
            ("0 9 * * 0", "0 0 9 * * SUN"),
            ("0 9 * * 7", "0 0 9 * * SUN"),
            ("0 9 * * 5-7", "0 0 9 * * FRI-SAT,SUN"),
            ("0 9 * * */2", "0 0 9 * * */2"),
            ("0 9 * * MON-FRI", "0 0 9 * * MON-FRI"),
        ] {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let day = crontab_day_of_week(fields[4]).expect("valid day field");
            assert_eq!(
                format!("0 {} {day}", fields[..4].join(" ")),
                expected,
                "{line}"
            );
            parse_cron(line).expect("parses");
        }
        assert!(parse_cron("0 9 * * 8").is_err());
        assert!(parse_cron("0 9 * *").is_err());
        assert!(parse_cron("0 0 9 * * MON-FRI 2030").is_ok());
    }

    #[test]
    fn monday_nine_oclock_fires_on_a_monday() {
        use chrono::{Datelike, TimeZone, Utc, Weekday};
        let schedule = parse_cron("0 9 * * 1").expect("parses");
        let after = Utc
            .with_ymd_and_hms(2026, 11, 26, 0, 0, 0)
            .single()
            .expect("valid time");
        let next = schedule.after(&after).next().expect("a next fire time");
        assert_eq!(next.weekday(), Weekday::Mon);
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("4h"), Ok(Duration::from_secs(4 * 3600)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86400)));
        assert_eq!(parse_duration("1h 30m"), Ok(Duration::from_secs(5400)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("four hours").is_err());
    }

    #[test]
    fn key_expiries() {
        assert_eq!(parse_key_expiry("14d"), Ok(14 * 86400));
        assert_eq!(parse_key_expiry("1s"), Ok(1));
        assert_eq!(parse_key_expiry("365d"), Ok(31_536_000));
        for (text, problem) in [
            ("366d", "longer than 365 days"),
            ("1y", "write `365d`"),
            ("1500ms", "whole number of seconds"),
            ("0s", "zero"),
            ("soon", "not a duration"),
        ] {
            let error = parse_key_expiry(text).expect_err(text);
            assert!(error.contains(problem), "{text}: {error}");
        }
    }
}
