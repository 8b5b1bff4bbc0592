//! Wall-clock rules: RFC 3339 instants and hours-of-day windows, in plain integer
//! arithmetic (no time zone database in the `.wasm`; offsets are explicit).

/// Days since 1970-01-01 for a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn digits(s: &str) -> Option<i64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        _ => 28,
    }
}

/// Parses `YYYY-MM-DDTHH:MM:SS[.frac](Z|±HH:MM)` into Unix seconds.
pub fn parse_rfc3339(text: &str) -> Result<i64, String> {
    let bad = || format!("'{text}' is not an RFC 3339 time such as 2026-11-27T08:00:00Z");
    let b = text.as_bytes();
    if b.len() < 20 || b.get(4) != Some(&b'-') || b.get(7) != Some(&b'-') {
        return Err(bad());
    }
    if !matches!(b.get(10), Some(b'T' | b't' | b' '))
        || b.get(13) != Some(&b':')
        || b.get(16) != Some(&b':')
    {
        return Err(bad());
    }
    let part = |r: std::ops::Range<usize>| text.get(r).and_then(digits).ok_or_else(bad);
    let (y, mo, d) = (part(0..4)?, part(5..7)?, part(8..10)?);
    let (h, mi, s) = (part(11..13)?, part(14..16)?, part(17..19)?);
    if !(1..=12).contains(&mo) || d < 1 || d > days_in_month(y, mo) || h > 23 || mi > 59 || s > 60 {
        return Err(bad());
    }
    let mut rest = text.get(19..).ok_or_else(bad)?;
    if let Some(frac) = rest.strip_prefix('.') {
        let n = frac.bytes().take_while(u8::is_ascii_digit).count();
        if n == 0 {
            return Err(bad());
        }
        rest = frac.get(n..).ok_or_else(bad)?;
    }
    let offset = match rest {
        "Z" | "z" => 0,
        _ => {
            let sign = match rest.as_bytes().first() {
                Some(b'+') => 1,
                Some(b'-') => -1,
                _ => return Err(bad()),
            };
            if rest.len() != 6 || rest.as_bytes().get(3) != Some(&b':') {
                return Err(bad());
            }
            let (oh, om) = (
                rest.get(1..3).and_then(digits).ok_or_else(bad)?,
                rest.get(4..6).and_then(digits).ok_or_else(bad)?,
            );
            if oh > 23 || om > 59 {
                return Err(bad());
            }
            sign * (oh * 3600 + om * 60)
        }
    };
    Ok(days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + s.min(59) - offset)
}

/// Parses `HH:MM` into minutes after midnight.
pub fn parse_hhmm(text: &str) -> Result<u32, String> {
    let bad = || format!("'{text}' is not a time of day such as 08:30");
    let (h, m) = text.split_once(':').ok_or_else(bad)?;
    if h.len() != 2 || m.len() != 2 {
        return Err(bad());
    }
    let (h, m) = (digits(h).ok_or_else(bad)?, digits(m).ok_or_else(bad)?);
    if h > 24 || m > 59 || (h == 24 && m != 0) {
        return Err(bad());
    }
    u32::try_from(h * 60 + m).map_err(|_| bad())
}

/// Parses a UTC offset `±HH:MM` into seconds.
pub fn parse_offset(text: &str) -> Result<i64, String> {
    let bad = || format!("'{text}' is not a UTC offset such as +01:00");
    let (sign, rest) = match text.as_bytes().first() {
        Some(b'+') => (1, text.get(1..).unwrap_or_default()),
        Some(b'-') => (-1, text.get(1..).unwrap_or_default()),
        _ => return Err(bad()),
    };
    let minutes = parse_hhmm(rest).map_err(|_| bad())?;
    if minutes > 14 * 60 {
        return Err(bad());
    }
    Ok(sign * i64::from(minutes) * 60)
}

/// Days of the week, Monday = 0.
pub const WEEKDAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

/// A daily window `[from, to)` in local minutes, on some weekdays.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HoursWindow {
    pub from_minute: u32,
    pub to_minute: u32,
    pub offset_seconds: i64,
    /// Bit `i` set = weekday `i` (Monday = 0) allowed.
    pub days: u8,
}

impl HoursWindow {
    /// Whether Unix time `t` falls in the window. A window whose end is before its
    /// start spans midnight (`22:00`–`06:00`); the day is the day it started.
    pub fn contains(&self, t: i64) -> bool {
        let local = t + self.offset_seconds;
        let day = local.div_euclid(86_400);
        let minute = u32::try_from(local.rem_euclid(86_400) / 60).unwrap_or(0);
        // 1970-01-01 was a Thursday (3 with Monday = 0).
        let weekday = |d: i64| u32::try_from((d + 3).rem_euclid(7)).unwrap_or(0);
        let allowed = |d: i64| self.days & (1 << weekday(d)) != 0;
        if self.from_minute <= self.to_minute {
            allowed(day) && minute >= self.from_minute && minute < self.to_minute
        } else if minute >= self.from_minute {
            allowed(day)
        } else {
            minute < self.to_minute && allowed(day - 1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_instants() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Ok(0));
        assert_eq!(parse_rfc3339("2026-11-27T12:00:00Z"), Ok(1_795_780_800));
        assert_eq!(
            parse_rfc3339("2026-11-27T13:00:00+01:00"),
            Ok(1_795_780_800)
        );
        assert_eq!(parse_rfc3339("2026-11-27T12:00:00.999Z"), Ok(1_795_780_800));
        assert_eq!(parse_rfc3339("2024-02-29T00:00:00Z"), Ok(1_709_164_800));
        for bad in [
            "2026-11-27",
            "2026-13-01T00:00:00Z",
            "2026-02-30T00:00:00Z",
            "2026-11-27T12:00:00",
            "2026-11-27T25:00:00Z",
            "x",
        ] {
            assert!(parse_rfc3339(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn hours_windows_on_their_edges() {
        let office = HoursWindow {
            from_minute: 8 * 60,
            to_minute: 18 * 60,
            offset_seconds: 0,
            days: 0b0001_1111,
        };
        let fri = parse_rfc3339("2026-11-27T08:00:00Z").unwrap(); // a Friday
        assert!(office.contains(fri));
        assert!(!office.contains(fri - 1));
        assert!(office.contains(fri + 10 * 3600 - 1));
        assert!(!office.contains(fri + 10 * 3600));
        assert!(!office.contains(fri + 86_400)); // Saturday
        let night = HoursWindow {
            from_minute: 22 * 60,
            to_minute: 6 * 60,
            offset_seconds: 3600,
            days: 0b0001_0000, // Fridays
        };
        let fri_2230_local = parse_rfc3339("2026-11-27T22:30:00+01:00").unwrap();
        assert!(night.contains(fri_2230_local));
        assert!(night.contains(fri_2230_local + 7 * 3600)); // Sat 05:30, started Friday
        assert!(!night.contains(fri_2230_local + 8 * 3600));
        assert!(
            parse_hhmm("24:00").is_ok()
                && parse_hhmm("24:01").is_err()
                && parse_hhmm("8:00").is_err()
        );
        assert_eq!(parse_offset("-05:30"), Ok(-19_800));
    }
}
