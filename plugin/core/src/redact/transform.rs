//! The value transforms: mask, hash, pseudonymise, generalise. Each reads one value
//! and writes its replacement (a JSON string) or says it does not fit (`Err(Unfit)`),
//! in which case the pass removes the value instead.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use super::plan::{Generalisation, HashEncoding};
use super::syntax::write_json_string;

/// The action does not fit the value: remove it instead (fail closed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Unfit;

/// One value as the transforms see it.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Value<'a> {
    /// An unescaped string (valid UTF-8: the pass checked it).
    Str(&'a [u8]),
    /// A number's exact text.
    Number(&'a str),
    /// `true`, `false`, `null`, an object or an array: its exact JSON text.
    Other(&'a [u8]),
}

impl Value<'_> {
    /// The bytes hashed or pseudonymised: the unescaped string, or the JSON text.
    fn content(&self) -> &[u8] {
        match self {
            Value::Str(b) | Value::Other(b) => b,
            Value::Number(s) => s.as_bytes(),
        }
    }
}

pub(crate) fn mask(
    value: Value<'_>,
    keep_first: usize,
    keep_last: usize,
    mask_char: char,
    keep_separators: bool,
    out: &mut Vec<u8>,
) -> Result<(), Unfit> {
    let text = match value {
        Value::Str(b) => std::str::from_utf8(b).map_err(|_| Unfit)?,
        Value::Number(s) => s,
        Value::Other(_) => return Err(Unfit),
    };
    let maskable = |c: char| !(keep_separators && c.is_ascii() && !c.is_ascii_alphanumeric());
    let tail_from = text.chars().count().saturating_sub(keep_last);
    let in_ends = |i: usize| i < keep_first || i >= tail_from;
    // Kept ends that would leave nothing masked reveal nothing instead.
    let reveal = text
        .chars()
        .enumerate()
        .any(|(i, c)| maskable(c) && !in_ends(i));
    let masked: String = text
        .chars()
        .enumerate()
        .map(|(i, c)| {
            if !maskable(c) || (reveal && in_ends(i)) {
                c
            } else {
                mask_char
            }
        })
        .collect();
    write_json_string(out, &masked);
    Ok(())
}

pub(crate) fn hash(value: Value<'_>, encoding: HashEncoding, out: &mut Vec<u8>) {
    let digest = Sha256::digest(value.content());
    out.push(b'"');
    match encoding {
        HashEncoding::Hex => {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            let mut text = [0u8; 64];
            for (pair, b) in text.chunks_exact_mut(2).zip(digest) {
                if let [hi, lo] = pair {
                    // Nibbles index a 16-entry table: always in bounds.
                    *hi = HEX[usize::from(b >> 4)];
                    *lo = HEX[usize::from(b & 15)];
                }
            }
            out.extend_from_slice(&text);
        }
        HashEncoding::Base64Url => out.extend_from_slice(URL_SAFE_NO_PAD.encode(digest).as_bytes()),
    }
    out.push(b'"');
}

/// `"ps_<key_id>_<base64url of the first 16 bytes of the MAC>"`. The key id was
/// checked at plan build (plain ASCII), so it needs no escaping.
pub(crate) fn pseudonymise(
    value: Value<'_>,
    key_id: &str,
    secret: &[u8],
    grantee: Option<&str>,
    out: &mut Vec<u8>,
) {
    // HMAC takes keys of any length; `new_from_slice` cannot fail for it.
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else {
        return;
    };
    if let Some(grantee) = grantee {
        mac.update(grantee.as_bytes());
        mac.update(&[0]);
    }
    mac.update(value.content());
    let tag = mac.finalize().into_bytes();
    out.extend_from_slice(b"\"ps_");
    out.extend_from_slice(key_id.as_bytes());
    out.push(b'_');
    out.extend_from_slice(
        URL_SAFE_NO_PAD
            .encode(tag.get(..16).unwrap_or_default())
            .as_bytes(),
    );
    out.push(b'"');
}

pub(crate) fn generalise(
    value: Value<'_>,
    how: Generalisation,
    out: &mut Vec<u8>,
) -> Result<(), Unfit> {
    match (how, value) {
        (Generalisation::DateToYear, Value::Str(b)) => {
            let date = parse_date(std::str::from_utf8(b).map_err(|_| Unfit)?).ok_or(Unfit)?;
            write_json_string(out, date.get(..4).ok_or(Unfit)?);
            Ok(())
        }
        (Generalisation::DateToYearMonth, Value::Str(b)) => {
            let date = parse_date(std::str::from_utf8(b).map_err(|_| Unfit)?).ok_or(Unfit)?;
            write_json_string(out, date.get(..7).ok_or(Unfit)?);
            Ok(())
        }
        (Generalisation::NumberBucket { width }, Value::Number(text)) => {
            let (lo, hi) = bucket(text, width).ok_or(Unfit)?;
            out.push(b'"');
            push_decimal(out, lo);
            out.push(b'-');
            push_decimal(out, hi);
            out.push(b'"');
            Ok(())
        }
        _ => Err(Unfit),
    }
}

/// Accepts `YYYY-MM-DD` and RFC 3339 date-times (`YYYY-MM-DDTHH:MM:SS[.frac](Z|±HH:MM)`,
/// `T`/`t`, `Z`/`z`), with real calendar days; returns the `YYYY-MM-DD` part.
fn parse_date(s: &str) -> Option<&str> {
    let b = s.as_bytes();
    let num = |range: std::ops::Range<usize>| -> Option<u32> {
        let digits = b.get(range)?;
        digits.iter().try_fold(0u32, |acc, &d| {
            d.is_ascii_digit().then(|| acc * 10 + u32::from(d - b'0'))
        })
    };
    let sep = |i: usize, c: u8| b.get(i) == Some(&c);
    let year = num(0..4)?;
    let month = num(5..7)?;
    let day = num(8..10)?;
    if !(sep(4, b'-') && sep(7, b'-') && (1..=12).contains(&month)) {
        return None;
    }
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let days = match month {
        2 if leap => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    };
    if !(1..=days).contains(&day) {
        return None;
    }
    if b.len() > 10 {
        // time: THH:MM:SS
        if !matches!(b.get(10), Some(b'T' | b't')) || !sep(13, b':') || !sep(16, b':') {
            return None;
        }
        let (h, m, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
        if h > 23 || m > 59 || sec > 60 {
            return None;
        }
        let mut i = 19;
        if sep(i, b'.') {
            i += 1;
            let start = i;
            while b.get(i).is_some_and(u8::is_ascii_digit) {
                i += 1;
            }
            if i == start {
                return None;
            }
        }
        match b.get(i) {
            Some(b'Z' | b'z') if b.len() == i + 1 => {}
            Some(b'+' | b'-') if b.len() == i + 6 => {
                let (oh, om) = (num(i + 1..i + 3)?, num(i + 4..i + 6)?);
                if !sep(i + 3, b':') || oh > 23 || om > 59 {
                    return None;
                }
            }
            _ => return None,
        }
    }
    s.get(..10)
}

/// The bucket `[lo, lo + width)` holding the number, in exact integer arithmetic on
/// its decimal text (no floating point: `0.1`-style rounding cannot move a value
/// across a boundary). Refused when the number's floor does not fit an `i128`.
fn bucket(text: &str, width: u64) -> Option<(i128, i128)> {
    let width = i128::from(width);
    let floor = floor_of(text)?;
    let lo = floor.checked_div_euclid(width)?.checked_mul(width)?;
    Some((lo, lo.checked_add(width)?))
}

/// Writes an integer in decimal (without `core::fmt`'s 128-bit formatting, which
/// would add to the .wasm).
fn push_decimal(out: &mut Vec<u8>, value: i128) {
    if value < 0 {
        out.push(b'-');
    }
    let mut rest = value.unsigned_abs();
    let mut digits = [0u8; 40];
    let mut start = digits.len();
    while let Some(slot) = start.checked_sub(1).and_then(|i| digits.get_mut(i)) {
        // `rest % 10` < 10: the cast cannot truncate.
        *slot = b'0' + (rest % 10) as u8;
        start -= 1;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    out.extend_from_slice(digits.get(start..).unwrap_or_default());
}

/// `floor(v)` for a JSON number's text.
fn floor_of(text: &str) -> Option<i128> {
    let (negative, unsigned) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (mantissa, exponent) = match unsigned.split_once(['e', 'E']) {
        Some((m, e)) => (m, e),
        None => (unsigned, "0"),
    };
    let (int_part, frac_part) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let digits = || int_part.bytes().chain(frac_part.bytes());
    if !digits().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if digits().all(|b| b == b'0') {
        return Some(0);
    }
    // The decimal point sits `point` digits into `digits()`; past `exponent` digits
    // of exponent the value is out of range either way (too large, or below 1).
    let exponent: i64 = match exponent.trim_start_matches('+').parse() {
        Ok(e) => e,
        Err(_) if exponent.starts_with('-') => i64::MIN / 2,
        Err(_) => return None,
    };
    let count = i64::try_from(int_part.len().checked_add(frac_part.len())?).ok()?;
    let point = i64::try_from(int_part.len()).ok()?.saturating_add(exponent);
    // Integer digits first (then zeros when the point is past the last digit).
    let mut value: i128 = 0;
    let mut fraction = false;
    for (i, b) in (0i64..).zip(digits()) {
        let d = i128::from(b - b'0');
        if i < point {
            value = value.checked_mul(10)?.checked_add(d)?;
        } else if d != 0 {
            fraction = true;
        }
    }
    for _ in count..point {
        value = value.checked_mul(10)?;
    }
    Some(match (negative, fraction) {
        (false, _) => value,
        (true, false) => value.checked_neg()?,
        (true, true) => value.checked_neg()?.checked_sub(1)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn out(f: impl FnOnce(&mut Vec<u8>) -> Result<(), Unfit>) -> Result<String, Unfit> {
        let mut v = Vec::new();
        f(&mut v)?;
        Ok(String::from_utf8(v).unwrap())
    }

    #[test]
    fn mask_keeps_ends_and_separators() {
        let m = |v, f, l, s| out(|o| mask(v, f, l, '*', s, o));
        assert_eq!(
            m(Value::Str("123-45-6789".as_bytes()), 0, 4, true),
            Ok(r#""***-**-6789""#.into())
        );
        assert_eq!(
            m(Value::Str("123-45-6789".as_bytes()), 0, 4, false),
            Ok(r#""*******6789""#.into())
        );
        assert_eq!(
            m(Value::Str("Zoë Ørsted".as_bytes()), 1, 1, true),
            Ok(r#""Z** *****d""#.into())
        );
        assert_eq!(
            m(Value::Number("120.50"), 1, 0, true),
            Ok(r#""1**.**""#.into())
        );
        // Ends that would reveal every character reveal none.
        assert_eq!(
            m(Value::Str("ab".as_bytes()), 1, 1, false),
            Ok(r#""**""#.into())
        );
        assert_eq!(m(Value::Number("-17"), 0, 2, true), Ok(r#""-**""#.into()));
        assert_eq!(
            m(Value::Str("12-34".as_bytes()), 2, 2, true),
            Ok(r#""**-**""#.into())
        );
        assert_eq!(
            m(Value::Str("--".as_bytes()), 0, 0, true),
            Ok(r#""--""#.into())
        );
        assert_eq!(m(Value::Other(b"true"), 0, 0, false), Err(Unfit));
        assert_eq!(
            out(|o| mask(Value::Str("ab".as_bytes()), 0, 0, '"', false, o)),
            Ok(r#""\"\"""#.into())
        );
    }

    #[test]
    fn dates_generalise_to_year_and_month() {
        let g = |s: &str, how| out(|o| generalise(Value::Str(s.as_bytes()), how, o));
        use Generalisation::*;
        assert_eq!(g("1984-02-29", DateToYear), Ok(r#""1984""#.into()));
        assert_eq!(g("1984-02-29", DateToYearMonth), Ok(r#""1984-02""#.into()));
        assert_eq!(
            g("2024-12-31T23:59:60.123+05:30", DateToYearMonth),
            Ok(r#""2024-12""#.into())
        );
        assert_eq!(
            g("2024-01-02t03:04:05z", DateToYear),
            Ok(r#""2024""#.into())
        );
        for bad in [
            "1985-02-29",
            "2024-13-01",
            "2024-00-10",
            "2024-04-31",
            "24-01-01",
            "2024-01-01T",
            "2024-01-01T24:00:00Z",
            "2024-01-01T10:00:00",
            "2024-01-01T10:00:00.Z",
            "2024-01-01T10:00:00+0100",
            "2024/01/01",
            "２０２４-01-01",
            "",
        ] {
            assert_eq!(g(bad, DateToYear), Err(Unfit), "{bad}");
        }
        assert_eq!(
            out(|o| generalise(Value::Number("1984"), DateToYear, o)),
            Err(Unfit)
        );
    }

    #[test]
    fn numbers_fall_into_buckets() {
        let b = |t, w| {
            out(|o| {
                generalise(
                    Value::Number(t),
                    Generalisation::NumberBucket { width: w },
                    o,
                )
            })
        };
        assert_eq!(b("74", 10), Ok(r#""70-80""#.into()));
        assert_eq!(b("70", 10), Ok(r#""70-80""#.into()));
        assert_eq!(b("-5", 10), Ok(r#""-10-0""#.into()));
        assert_eq!(b("79.999", 10), Ok(r#""70-80""#.into()));
        assert_eq!(b("1e3", 300), Ok(r#""900-1200""#.into()));
        assert_eq!(b("-0.0", 5), Ok(r#""0-5""#.into()));
        assert_eq!(
            b("12345678901234567890", 1000),
            Ok(r#""12345678901234567000-12345678901234568000""#.into())
        );
        assert_eq!(b("1e400", 10), Err(Unfit));
        assert_eq!(b("1e39", 10), Err(Unfit));
        assert_eq!(
            b("1e19", 10),
            Ok(r#""10000000000000000000-10000000000000000010""#.into())
        );
        assert_eq!(b("-1.5e-300", 10), Ok(r#""-10-0""#.into()));
        assert_eq!(b("2e-3", 10), Ok(r#""0-10""#.into()));
        assert_eq!(b("-20", 10), Ok(r#""-20--10""#.into()));
        assert_eq!(b("-20.000", 10), Ok(r#""-20--10""#.into()));
        assert_eq!(b("-20.001", 10), Ok(r#""-30--20""#.into()));
        assert_eq!(b("0.5e1", 10), Ok(r#""0-10""#.into()));
        assert_eq!(b("15.5E+1", 100), Ok(r#""100-200""#.into()));
        assert_eq!(b("0e99999999999999999999", 10), Ok(r#""0-10""#.into()));
        assert_eq!(b("1e-99999999999999999999", 10), Ok(r#""0-10""#.into()));
        assert_eq!(b("-1e-99999999999999999999", 10), Ok(r#""-10-0""#.into()));
        assert_eq!(b("1e99999999999999999999", 10), Err(Unfit));
        assert_eq!(
            out(|o| generalise(
                Value::Str("74".as_bytes()),
                Generalisation::NumberBucket { width: 10 },
                o
            )),
            Err(Unfit)
        );
    }

    #[test]
    fn hashes_are_sha256_of_the_unescaped_text() {
        let mut v = Vec::new();
        hash(Value::Str("abc".as_bytes()), HashEncoding::Hex, &mut v);
        assert_eq!(
            v,
            br#""ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad""#
        );
        v.clear();
        hash(
            Value::Str("abc".as_bytes()),
            HashEncoding::Base64Url,
            &mut v,
        );
        assert_eq!(v, br#""ungWv48Bz-pBQUDeXa4iI7ADYaOWF3qctBD_YfIAFa0""#);
    }

    #[test]
    fn pseudonyms_depend_on_key_and_grantee() {
        let p = |secret: &[u8], grantee| {
            let mut v = Vec::new();
            pseudonymise(Value::Str("p-1".as_bytes()), "k1", secret, grantee, &mut v);
            String::from_utf8(v).unwrap()
        };
        let a = p(b"0123456789abcdef0123456789abcdef", Some("insurer"));
        assert!(a.starts_with("\"ps_k1_") && a.len() == 2 + 6 + 22, "{a}");
        assert_eq!(a, p(b"0123456789abcdef0123456789abcdef", Some("insurer")));
        assert_ne!(a, p(b"0123456789abcdef0123456789abcdef", Some("lab")));
        assert_ne!(a, p(b"0123456789abcdef0123456789abcdef", None));
        assert_ne!(a, p(b"fedcba9876543210fedcba9876543210", Some("insurer")));
    }
}
