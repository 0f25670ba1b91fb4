//! Small, allocation-free parsers for the time values providers put in headers and bodies:
//! Go-style durations (`6m0s`, `1.574s`, `6ms`), protobuf JSON durations (`26s`, `0.5s`),
//! `retry-after` (delay-seconds or an HTTP-date), and RFC 3339 timestamps.
//!
//! Every parser returns `None` on anything it does not understand (negative, overflowing,
//! malformed); none of them panics.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

const NANOS_PER_SEC: u128 = 1_000_000_000;

/// A `retry-after` value: HTTP allows either a relative delay or an absolute date
/// (RFC 9110 §10.2.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryAfter {
    /// `retry-after: 30` (delay-seconds; non-standard fractions such as `1.5` are accepted, as
    /// the official OpenAI and Anthropic SDKs do).
    Delay(Duration),
    /// `retry-after: Wed, 21 Oct 2026 07:28:00 GMT`.
    At(SystemTime),
}

/// Parses a `retry-after` header value: non-negative delay-seconds (fractions accepted) or an
/// IMF-fixdate HTTP-date.
///
/// ```
/// use std::time::Duration;
/// use downshift::{parse_retry_after, RetryAfter};
/// assert_eq!(parse_retry_after("20"), Some(RetryAfter::Delay(Duration::from_secs(20))));
/// assert!(matches!(parse_retry_after("Wed, 21 Oct 2026 07:28:00 GMT"), Some(RetryAfter::At(_))));
/// assert_eq!(parse_retry_after("soon"), None);
/// ```
#[must_use]
pub fn parse_retry_after(value: &str) -> Option<RetryAfter> {
    let v = value.trim();
    if let Some(d) = parse_decimal_scaled(v, NANOS_PER_SEC) {
        return Some(RetryAfter::Delay(d));
    }
    parse_http_date(v).map(RetryAfter::At)
}

/// Parses a `retry-after-ms` value (Azure OpenAI, OpenAI): non-negative milliseconds, fractions
/// accepted.
#[must_use]
pub fn parse_retry_after_ms(value: &str) -> Option<Duration> {
    parse_decimal_scaled(value.trim(), 1_000_000)
}

/// Parses a relative reset/delay duration as providers write it: Go `time.Duration` strings
/// (`6m0s`, `1.574s`, `6ms`, `1h2m3s`, `2m59.56s`, `500us`), protobuf JSON durations (`26s`,
/// `0.5s`), or a bare number of seconds (`60`).
///
/// ```
/// use std::time::Duration;
/// use downshift::parse_reset_duration;
/// assert_eq!(parse_reset_duration("6m0s"), Some(Duration::from_secs(360)));
/// assert_eq!(parse_reset_duration("1.574s"), Some(Duration::from_millis(1574)));
/// assert_eq!(parse_reset_duration("1h2m3s"), Some(Duration::from_secs(3723)));
/// assert_eq!(parse_reset_duration("-1s"), None);
/// ```
#[must_use]
pub fn parse_reset_duration(value: &str) -> Option<Duration> {
    let s = value.trim();
    let s = s.strip_prefix('+').unwrap_or(s);
    if s.is_empty() {
        return None;
    }
    // A bare number is seconds.
    if let Some(d) = parse_decimal_scaled(s, NANOS_PER_SEC) {
        return Some(d);
    }
    let bytes = s.as_bytes();
    let mut i = 0;
    let mut total: u128 = 0;
    while i < bytes.len() {
        let num_start = i;
        while i < bytes.len() && (bytes[i].is_ascii_digit() || bytes[i] == b'.') {
            i += 1;
        }
        let number = &s[num_start..i];
        let unit_start = i;
        while i < bytes.len() && !(bytes[i].is_ascii_digit() || bytes[i] == b'.') {
            i += 1;
        }
        // Slicing at `i` is safe: both loops stop at an ASCII byte or the end.
        let unit = &s[unit_start..i];
        let scale: u128 = match unit {
            "h" => 3600 * NANOS_PER_SEC,
            "m" => 60 * NANOS_PER_SEC,
            "s" => NANOS_PER_SEC,
            "ms" => 1_000_000,
            "us" | "µs" | "μs" => 1_000,
            "ns" => 1,
            _ => return None,
        };
        total = total.checked_add(decimal_to_nanos(number, scale)?)?;
    }
    nanos_to_duration(total)
}

/// Parses an RFC 3339 timestamp (`2026-01-15T14:24:00Z`, `2026-01-15T14:24:00.5+02:00`).
/// Times before the Unix epoch are rejected.
#[must_use]
pub fn parse_rfc3339(value: &str) -> Option<SystemTime> {
    let s = value.trim().as_bytes();
    if s.len() < 19 {
        return None;
    }
    let year = digits(s, 0, 4)?;
    let month = digits(s, 5, 2)?;
    let day = digits(s, 8, 2)?;
    let hour = digits(s, 11, 2)?;
    let minute = digits(s, 14, 2)?;
    let second = digits(s, 17, 2)?;
    if s[4] != b'-' || s[7] != b'-' || !matches!(s[10], b'T' | b't' | b' ') {
        return None;
    }
    if s[13] != b':' || s[16] != b':' {
        return None;
    }
    let mut i = 19;
    let mut nanos: u32 = 0;
    if i < s.len() && s[i] == b'.' {
        i += 1;
        let start = i;
        let mut scale = 100_000_000u32;
        while i < s.len() && s[i].is_ascii_digit() {
            nanos += u32::from(s[i] - b'0') * scale;
            scale /= 10;
            i += 1;
        }
        if i == start {
            return None;
        }
    }
    let offset_secs: i64 = match s.get(i) {
        None => 0, // lenient: a missing offset is UTC
        Some(b'Z' | b'z') if i + 1 == s.len() => 0,
        Some(&sign @ (b'+' | b'-')) if i + 6 == s.len() && s[i + 3] == b':' => {
            let oh = digits(s, i + 1, 2)?;
            let om = digits(s, i + 4, 2)?;
            if oh > 23 || om > 59 {
                return None;
            }
            let off = i64::from(oh * 3600 + om * 60);
            if sign == b'+' { off } else { -off }
        }
        _ => return None,
    };
    let secs = civil_to_unix(year, month, day, hour, minute, second)? - offset_secs;
    unix_to_system_time(secs, nanos)
}

/// Parses an IMF-fixdate HTTP-date (`Sun, 06 Nov 1994 08:49:37 GMT`); the weekday is optional
/// and not checked.
#[must_use]
pub(crate) fn parse_http_date(value: &str) -> Option<SystemTime> {
    let mut parts = value.split_ascii_whitespace();
    let mut first = parts.next()?;
    if first.ends_with(',') || first.chars().all(|c| c.is_ascii_alphabetic()) {
        first = parts.next()?;
    }
    let day = parse_u32(first)?;
    let month = month_number(parts.next()?)?;
    let year = parse_u32(parts.next()?)?;
    let time = parts.next()?.as_bytes();
    let zone = parts.next()?;
    if parts.next().is_some() || !(zone.eq_ignore_ascii_case("GMT") || zone == "UTC") {
        return None;
    }
    if time.len() != 8 || time[2] != b':' || time[5] != b':' {
        return None;
    }
    let secs = civil_to_unix(
        year,
        month,
        day,
        digits(time, 0, 2)?,
        digits(time, 3, 2)?,
        digits(time, 6, 2)?,
    )?;
    unix_to_system_time(secs, 0)
}

/// Parses the date Anthropic puts in spend-limit messages ("You will regain access on
/// 2026-08-01 at 00:00 UTC."): `YYYY-MM-DD`, optionally followed by ` at HH:MM[:SS] UTC`, or an
/// RFC 3339 timestamp.
pub(crate) fn parse_regain_date(text: &str) -> Option<SystemTime> {
    let t = text.trim_start();
    let date = t.get(..10)?;
    let rest = &t[10..];
    if let Some(ts) = rest
        .starts_with(['T', 't'])
        .then(|| t.split(|c: char| c.is_whitespace() || c == ',').next())
        .flatten()
        .and_then(|tok| parse_rfc3339(tok.trim_end_matches('.')))
    {
        return Some(ts);
    }
    let d = date.as_bytes();
    if d[4] != b'-' || d[7] != b'-' {
        return None;
    }
    let (y, m, day) = (digits(d, 0, 4)?, digits(d, 5, 2)?, digits(d, 8, 2)?);
    let (mut hh, mut mm, mut ss) = (0, 0, 0);
    if let Some(time) = rest.strip_prefix(" at ") {
        let tb = time.as_bytes();
        if tb.len() >= 5 && tb[2] == b':' {
            hh = digits(tb, 0, 2)?;
            mm = digits(tb, 3, 2)?;
            if tb.len() >= 8 && tb[5] == b':' {
                ss = digits(tb, 6, 2).unwrap_or(0);
            }
        }
    }
    unix_to_system_time(civil_to_unix(y, m, day, hh, mm, ss)?, 0)
}

/// `digits.fraction` (no sign, no exponent) scaled by `scale` units per 1, as a `Duration` of
/// nanoseconds when `scale` is nanoseconds-per-unit.
fn parse_decimal_scaled(s: &str, scale: u128) -> Option<Duration> {
    nanos_to_duration(decimal_to_nanos(s, scale)?)
}

/// Converts a plain decimal (`12`, `1.574`, `.5`) times `scale` to an integer, truncating
/// sub-unit digits. `None` for empty, signed, non-decimal or overflowing input.
fn decimal_to_nanos(s: &str, scale: u128) -> Option<u128> {
    let (int, frac) = match s.split_once('.') {
        Some((i, f)) => (i, f),
        None => (s, ""),
    };
    if int.is_empty() && frac.is_empty() {
        return None;
    }
    if !int.bytes().all(|b| b.is_ascii_digit()) || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let mut whole: u128 = 0;
    for b in int.bytes() {
        whole = whole.checked_mul(10)?.checked_add(u128::from(b - b'0'))?;
    }
    let mut value = whole.checked_mul(scale)?;
    // Fraction: at most 18 significant digits matter at nanosecond resolution.
    let mut denom: u128 = 1;
    let mut num: u128 = 0;
    for b in frac.bytes().take(18) {
        num = num * 10 + u128::from(b - b'0');
        denom *= 10;
    }
    value = value.checked_add(num.checked_mul(scale)? / denom)?;
    Some(value)
}

fn nanos_to_duration(nanos: u128) -> Option<Duration> {
    let secs = u64::try_from(nanos / NANOS_PER_SEC).ok()?;
    // The remainder is < 1e9 and always fits in u32.
    let sub = u32::try_from(nanos % NANOS_PER_SEC).ok()?;
    Some(Duration::new(secs, sub))
}

fn digits(s: &[u8], at: usize, len: usize) -> Option<u32> {
    let slice = s.get(at..at.checked_add(len)?)?;
    let mut v: u32 = 0;
    for &b in slice {
        if !b.is_ascii_digit() {
            return None;
        }
        v = v * 10 + u32::from(b - b'0');
    }
    Some(v)
}

fn parse_u32(s: &str) -> Option<u32> {
    if s.is_empty() || s.len() > 9 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

fn month_number(s: &str) -> Option<u32> {
    const MONTHS: [&str; 12] = [
        "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
    ];
    MONTHS
        .iter()
        .position(|m| m.eq_ignore_ascii_case(s))
        .and_then(|i| u32::try_from(i + 1).ok())
}

/// Seconds since the Unix epoch for a proleptic-Gregorian UTC civil time, validating ranges.
fn civil_to_unix(y: u32, m: u32, d: u32, hh: u32, mm: u32, ss: u32) -> Option<i64> {
    if !(1..=12).contains(&m) || d == 0 || d > days_in_month(y, m) || hh > 23 || mm > 59 {
        return None;
    }
    if ss > 60 {
        return None;
    }
    // Howard Hinnant's days_from_civil.
    let y = i64::from(y) - i64::from(m <= 2);
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (i64::from(m) + 9) % 12;
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + i64::from(hh) * 3600 + i64::from(mm) * 60 + i64::from(ss.min(59)))
}

fn days_in_month(y: u32, m: u32) -> u32 {
    match m {
        2 if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

fn unix_to_system_time(secs: i64, nanos: u32) -> Option<SystemTime> {
    let secs = u64::try_from(secs).ok()?;
    UNIX_EPOCH.checked_add(Duration::new(secs, nanos))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn go_durations() {
        let cases = [
            ("6m0s", Duration::from_secs(360)),
            ("1.574s", Duration::from_millis(1574)),
            ("6ms", Duration::from_millis(6)),
            ("1h2m3s", Duration::from_secs(3723)),
            ("2m59.56s", Duration::from_millis(179_560)),
            ("7.66s", Duration::from_millis(7660)),
            ("0s", Duration::ZERO),
            ("500us", Duration::from_micros(500)),
            ("500µs", Duration::from_micros(500)),
            ("12ns", Duration::from_nanos(12)),
            ("26s", Duration::from_secs(26)),
            ("0.5s", Duration::from_millis(500)),
            ("3.000000001s", Duration::new(3, 1)),
            ("60", Duration::from_secs(60)),
            (" 1m ", Duration::from_secs(60)),
            ("1h", Duration::from_secs(3600)),
        ];
        for (s, want) in cases {
            assert_eq!(parse_reset_duration(s), Some(want), "{s}");
        }
    }

    #[test]
    fn bad_durations() {
        for s in [
            "",
            "s",
            "-1s",
            "1x",
            "1.2.3s",
            "ms",
            "1h-2m",
            "nan",
            "inf",
            "1e3s",
            "..s",
            "1 m 2 s",
            "99999999999999999999999999999999999999h",
        ] {
            assert_eq!(parse_reset_duration(s), None, "{s:?}");
        }
    }

    #[test]
    fn retry_after_forms() {
        assert_eq!(
            parse_retry_after("120"),
            Some(RetryAfter::Delay(Duration::from_secs(120)))
        );
        assert_eq!(
            parse_retry_after("1.5"),
            Some(RetryAfter::Delay(Duration::from_millis(1500)))
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(RetryAfter::At(at(784_111_777)))
        );
        assert_eq!(
            parse_retry_after("06 Nov 1994 08:49:37 GMT"),
            Some(RetryAfter::At(at(784_111_777)))
        );
        for bad in [
            "",
            "-1",
            "soon",
            "inf",
            "NaN",
            "Sun, 31 Feb 1994 08:49:37 GMT",
            "1e3",
        ] {
            assert_eq!(parse_retry_after(bad), None, "{bad:?}");
        }
        assert_eq!(
            parse_retry_after_ms("1500"),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(
            parse_retry_after_ms("2.5"),
            Some(Duration::from_micros(2500))
        );
        assert_eq!(parse_retry_after_ms("x"), None);
    }

    #[test]
    fn rfc3339() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(at(0)));
        assert_eq!(
            parse_rfc3339("2025-01-15T14:24:00Z"),
            Some(at(1_736_951_040))
        );
        assert_eq!(
            parse_rfc3339("2025-01-15T16:24:00+02:00"),
            Some(at(1_736_951_040))
        );
        assert_eq!(
            parse_rfc3339("2025-01-15T14:24:00.250Z"),
            Some(at(1_736_951_040) + Duration::from_millis(250))
        );
        assert_eq!(
            parse_rfc3339("2024-02-29T00:00:00Z"),
            Some(at(1_709_164_800))
        );
        for bad in [
            "",
            "2025-01-15",
            "2025-13-01T00:00:00Z",
            "2023-02-29T00:00:00Z",
            "2025-01-15T24:00:00Z",
            "2025-01-15T14:24:00+2:00",
            "2025-01-15T14:24:00Zjunk",
            "1969-12-31T23:59:59Z",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn regain_dates() {
        assert_eq!(
            parse_regain_date("2026-08-01 at 00:00 UTC."),
            parse_rfc3339("2026-08-01T00:00:00Z")
        );
        assert_eq!(
            parse_regain_date("2026-04-01T00:00:00Z"),
            parse_rfc3339("2026-04-01T00:00:00Z")
        );
        assert_eq!(
            parse_regain_date("2999-01-01."),
            parse_rfc3339("2999-01-01T00:00:00Z")
        );
        assert_eq!(parse_regain_date("tomorrow"), None);
    }
}
