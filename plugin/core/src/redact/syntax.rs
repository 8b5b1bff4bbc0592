//! A checked cursor over untrusted bytes: the RFC 8259 lexer and a validating skip
//! over whole values. Every read goes through `get`; nothing here can panic, and
//! nesting is tracked on an explicit stack bounded by the depth limit.

use super::RedactError;

pub(crate) const BOM: &[u8] = b"\xEF\xBB\xBF";

/// What kind of value starts at a position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Object,
    Array,
    String,
    Number,
    Literal,
}

/// What a key's scan found besides its end.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct KeyScan {
    /// It has escapes (so it must be unescaped before it is compared).
    pub(crate) escaped: bool,
    /// It holds a control character (Unicode Cc: U+0000 to U+001F, U+007F to
    /// U+009F), written raw or escaped.
    pub(crate) control: bool,
}

pub(crate) struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Self {
        Self { bytes, pos: 0 }
    }

    pub(crate) fn pos(&self) -> usize {
        self.pos
    }

    /// Moves back to a position this cursor has passed (to walk a value it skipped).
    pub(crate) fn rewind(&mut self, pos: usize) {
        self.pos = pos.min(self.pos);
    }

    pub(crate) fn at_end(&self) -> bool {
        self.pos >= self.bytes.len()
    }

    pub(crate) fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    /// Moves past one byte that `peek` returned (so `pos < len` and `pos + 1` cannot
    /// overflow).
    pub(crate) fn bump(&mut self) {
        if self.pos < self.bytes.len() {
            self.pos += 1;
        }
    }

    pub(crate) fn invalid(&self) -> RedactError {
        RedactError::InvalidJson { offset: self.pos }
    }

    /// The first byte after whitespace, without moving.
    pub(crate) fn peek_past_ws(&self) -> Option<u8> {
        self.bytes
            .get(self.pos..)
            .unwrap_or_default()
            .iter()
            .copied()
            .find(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
    }

    pub(crate) fn skip_ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.pos += 1;
        }
    }

    pub(crate) fn expect(&mut self, byte: u8) -> Result<(), RedactError> {
        if self.peek() == Some(byte) {
            self.pos += 1;
            Ok(())
        } else {
            Err(self.invalid())
        }
    }

    /// The kind of the value at the cursor (after whitespace), without moving.
    pub(crate) fn kind(&self) -> Result<Kind, RedactError> {
        match self.peek() {
            Some(b'{') => Ok(Kind::Object),
            Some(b'[') => Ok(Kind::Array),
            Some(b'"') => Ok(Kind::String),
            Some(b'-' | b'0'..=b'9') => Ok(Kind::Number),
            Some(b't' | b'f' | b'n') => Ok(Kind::Literal),
            _ => Err(self.invalid()),
        }
    }

    /// Scans a string starting at its opening quote; returns whether it has escapes.
    /// Checks escapes, surrogate pairs, control characters and UTF-8.
    pub(crate) fn string(&mut self) -> Result<bool, RedactError> {
        self.expect(b'"')?;
        let mut escaped = false;
        loop {
            let at = next_special::<true>(self.bytes, self.pos);
            self.pos = at;
            match self.bytes.get(at) {
                Some(b'"') => {
                    self.pos = at + 1;
                    return Ok(escaped);
                }
                Some(b'\\') => {
                    escaped = true;
                    self.escape()?;
                }
                Some(&lead) if lead >= 0x80 => {
                    self.pos = at
                        + utf8_len(self.bytes.get(at..).unwrap_or_default())
                            .ok_or(RedactError::InvalidUtf8 { offset: at })?;
                }
                _ => return Err(self.invalid()),
            }
        }
    }

    /// Scans an object key like [`Cursor::string`], and notes control characters in
    /// it: raw DEL and C1 (JSON allows them unescaped) or escaped ones.
    pub(crate) fn key(&mut self) -> Result<KeyScan, RedactError> {
        self.expect(b'"')?;
        let mut scan = KeyScan::default();
        loop {
            let at = next_stop::<true, true>(self.bytes, self.pos);
            self.pos = at;
            match self.bytes.get(at) {
                Some(b'"') => {
                    self.pos = at + 1;
                    return Ok(scan);
                }
                Some(b'\\') => {
                    scan.escaped = true;
                    scan.control |= self.escape()?;
                }
                Some(0x7F) => {
                    scan.control = true;
                    self.pos = at + 1;
                }
                Some(&lead) if lead >= 0x80 => {
                    // U+0080 to U+009F are C2 80 to C2 9F.
                    if lead == 0xC2 && self.bytes.get(at + 1).is_some_and(|&b| b < 0xA0) {
                        scan.control = true;
                    }
                    self.pos = at
                        + utf8_len(self.bytes.get(at..).unwrap_or_default())
                            .ok_or(RedactError::InvalidUtf8 { offset: at })?;
                }
                _ => return Err(self.invalid()),
            }
        }
    }

    /// Moves past one escape; true when it stands for a control character.
    /// (Inlined into both scanners, as it was into the one before keys had theirs.)
    #[inline(always)]
    fn escape(&mut self) -> Result<bool, RedactError> {
        let start = self.pos;
        match self.bytes.get(self.pos + 1) {
            Some(b'"' | b'\\' | b'/') => {
                self.pos += 2;
                Ok(false)
            }
            Some(b'b' | b'f' | b'n' | b'r' | b't') => {
                self.pos += 2;
                Ok(true)
            }
            Some(b'u') => {
                let unit = self.hex4(self.pos + 2)?;
                self.pos += 6;
                match unit {
                    0xD800..=0xDBFF => {
                        let low = if self.bytes.get(self.pos..self.pos + 2) == Some(b"\\u") {
                            self.hex4(self.pos + 2)?
                        } else {
                            0
                        };
                        if (0xDC00..=0xDFFF).contains(&low) {
                            self.pos += 6;
                            Ok(false)
                        } else {
                            Err(RedactError::InvalidUtf8 { offset: start })
                        }
                    }
                    0xDC00..=0xDFFF => Err(RedactError::InvalidUtf8 { offset: start }),
                    unit => Ok(unit < 0x20 || (0x7F..0xA0).contains(&unit)),
                }
            }
            _ => Err(RedactError::InvalidJson { offset: start }),
        }
    }

    fn hex4(&self, at: usize) -> Result<u32, RedactError> {
        let digits = self
            .bytes
            .get(at..at + 4)
            .ok_or(RedactError::InvalidJson { offset: at })?;
        digits.iter().try_fold(0u32, |acc, &b| {
            let d = (b as char)
                .to_digit(16)
                .ok_or(RedactError::InvalidJson { offset: at })?;
            Ok(acc << 4 | d)
        })
    }

    /// `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`
    pub(crate) fn number(&mut self) -> Result<(), RedactError> {
        if self.peek() == Some(b'-') {
            self.pos += 1;
        }
        match self.peek() {
            Some(b'0') => self.pos += 1,
            Some(b'1'..=b'9') => self.digits(),
            _ => return Err(self.invalid()),
        }
        if self.peek() == Some(b'.') {
            self.pos += 1;
            self.some_digits()?;
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.pos += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.pos += 1;
            }
            self.some_digits()?;
        }
        Ok(())
    }

    fn digits(&mut self) {
        while let Some(b'0'..=b'9') = self.peek() {
            self.pos += 1;
        }
    }

    fn some_digits(&mut self) -> Result<(), RedactError> {
        if !matches!(self.peek(), Some(b'0'..=b'9')) {
            return Err(self.invalid());
        }
        self.digits();
        Ok(())
    }

    pub(crate) fn literal(&mut self) -> Result<(), RedactError> {
        let rest = self.bytes.get(self.pos..).unwrap_or_default();
        for word in [&b"true"[..], b"false", b"null"] {
            if rest.starts_with(word) {
                self.pos += word.len();
                return Ok(());
            }
        }
        Err(self.invalid())
    }

    /// Scans one scalar value of the given kind.
    pub(crate) fn scalar(&mut self, kind: Kind) -> Result<(), RedactError> {
        match kind {
            Kind::String => self.string().map(drop),
            Kind::Number => self.number(),
            Kind::Literal => self.literal(),
            Kind::Object | Kind::Array => Err(self.invalid()),
        }
    }

    /// Validates a whole value (any kind) starting at the cursor, whose container, if
    /// it is one, sits at nesting level `depth + 1`. `stack` is scratch space. True
    /// when a member name inside it has a control character (see [`Cursor::key`]).
    pub(crate) fn skip_value(
        &mut self,
        depth: usize,
        max_depth: usize,
        stack: &mut Vec<u8>,
    ) -> Result<bool, RedactError> {
        stack.clear();
        let mut control = false;
        'value: loop {
            // At the start of a value.
            match self.kind()? {
                kind @ (Kind::Object | Kind::Array) => {
                    if depth.saturating_add(stack.len()) >= max_depth {
                        return Err(RedactError::TooDeep);
                    }
                    self.pos += 1;
                    self.skip_ws();
                    if kind == Kind::Object {
                        if self.peek() == Some(b'}') {
                            self.pos += 1;
                        } else {
                            stack.push(b'}');
                            control |= self.member_head()?;
                            continue 'value;
                        }
                    } else if self.peek() == Some(b']') {
                        self.pos += 1;
                    } else {
                        stack.push(b']');
                        continue 'value;
                    }
                }
                kind => self.scalar(kind)?,
            }
            // After a value: commas and closes until the next value or the end.
            loop {
                let Some(&close) = stack.last() else {
                    return Ok(control);
                };
                self.skip_ws();
                match self.peek() {
                    Some(b',') => {
                        self.pos += 1;
                        self.skip_ws();
                        if close == b'}' {
                            control |= self.member_head()?;
                        }
                        continue 'value;
                    }
                    Some(b) if b == close => {
                        self.pos += 1;
                        stack.pop();
                    }
                    _ => return Err(self.invalid()),
                }
            }
        }
    }

    /// `"key" ws : ws`, leaving the cursor at the member's value; true when the key
    /// has a control character.
    fn member_head(&mut self) -> Result<bool, RedactError> {
        if self.peek() != Some(b'"') {
            return Err(self.invalid());
        }
        let scan = self.key()?;
        self.skip_ws();
        self.expect(b':')?;
        self.skip_ws();
        Ok(scan.control)
    }
}

/// The index of the first byte at or after `from` that ends a run of plain string
/// text: `"`, `\\`, a control character, or (with `NON_ASCII`) a non-ASCII byte; else
/// the length. Eight bytes at a time: in each word, the lowest flagged byte is exact
/// (false flags only arise above a true one, from borrows), which is all this needs.
/// The audit trail's JSON writer uses it without `NON_ASCII` to find what to escape.
pub(crate) fn next_special<const NON_ASCII: bool>(bytes: &[u8], from: usize) -> usize {
    next_stop::<NON_ASCII, false>(bytes, from)
}

/// [`next_special`], and with `DEL` it stops at 0x7F too (keys: see [`Cursor::key`]).
fn next_stop<const NON_ASCII: bool, const DEL: bool>(bytes: &[u8], from: usize) -> usize {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let mut i = from;
    while let Some(chunk) = bytes.get(i..i.saturating_add(8)) {
        let Ok(word) = <[u8; 8]>::try_from(chunk) else {
            break;
        };
        let w = u64::from_le_bytes(word);
        let control = w.wrapping_sub(ONES * 0x20) & !w;
        let quote = w ^ (ONES * u64::from(b'"'));
        let quote = quote.wrapping_sub(ONES) & !quote;
        let backslash = w ^ (ONES * u64::from(b'\\'));
        let backslash = backslash.wrapping_sub(ONES) & !backslash;
        // `w` itself flags the non-ASCII bytes; adding one to each byte's low seven
        // bits (no carry leaves a byte) flags 0x7F as well.
        let non_ascii = match (NON_ASCII, DEL) {
            (_, true) => ((w & !HIGH).wrapping_add(ONES)) | w,
            (true, false) => w,
            (false, false) => 0,
        };
        let flags = (control | quote | backslash | non_ascii) & HIGH;
        if flags != 0 {
            return i + (flags.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    while let Some(&b) = bytes.get(i) {
        if b < 0x20 || b == b'"' || b == b'\\' || (NON_ASCII && b >= 0x80) || (DEL && b >= 0x7F) {
            break;
        }
        i += 1;
    }
    i
}

/// The length of the well-formed UTF-8 sequence at the start of `bytes` (Unicode
/// Table 3-7: no overlongs, no surrogates, nothing above U+10FFFF), if it is one.
#[inline(always)]
fn utf8_len(bytes: &[u8]) -> Option<usize> {
    let cont = |i: usize, lo: u8, hi: u8| bytes.get(i).is_some_and(|b| (lo..=hi).contains(b));
    let tail = |from: usize, to: usize| (from..to).all(|i| cont(i, 0x80, 0xBF));
    match *bytes.first()? {
        0xC2..=0xDF if tail(1, 2) => Some(2),
        0xE0 if cont(1, 0xA0, 0xBF) && tail(2, 3) => Some(3),
        0xE1..=0xEC | 0xEE..=0xEF if tail(1, 3) => Some(3),
        0xED if cont(1, 0x80, 0x9F) && tail(2, 3) => Some(3),
        0xF0 if cont(1, 0x90, 0xBF) && tail(2, 4) => Some(4),
        0xF1..=0xF3 if tail(1, 4) => Some(4),
        0xF4 if cont(1, 0x80, 0x8F) && tail(2, 4) => Some(4),
        _ => None,
    }
}

/// Decodes the text between a validated string's quotes into `out` (cleared first).
pub(crate) fn unescape(raw: &[u8], out: &mut String) -> Result<(), RedactError> {
    out.clear();
    let bad = RedactError::InvalidJson { offset: 0 };
    let mut rest = raw;
    while !rest.is_empty() {
        let run = rest.iter().position(|&b| b == b'\\').unwrap_or(rest.len());
        let (text, tail) = rest.split_at_checked(run).ok_or(bad)?;
        out.push_str(std::str::from_utf8(text).map_err(|_| bad)?);
        rest = tail;
        let Some((&b'\\', tail)) = rest.split_first() else {
            break;
        };
        let Some((&kind, tail)) = tail.split_first() else {
            return Err(bad);
        };
        rest = tail;
        let c = match kind {
            b'"' => '"',
            b'\\' => '\\',
            b'/' => '/',
            b'b' => '\u{8}',
            b'f' => '\u{c}',
            b'n' => '\n',
            b'r' => '\r',
            b't' => '\t',
            b'u' => {
                let (unit, tail) = hex_unit(rest).ok_or(bad)?;
                rest = tail;
                let code = if (0xD800..0xDC00).contains(&unit) {
                    let low_tail = rest.strip_prefix(b"\\u").ok_or(bad)?;
                    let (low, tail) = hex_unit(low_tail).ok_or(bad)?;
                    rest = tail;
                    0x10000 + ((unit - 0xD800) << 10) + (low.checked_sub(0xDC00).ok_or(bad)?)
                } else {
                    unit
                };
                char::from_u32(code).ok_or(bad)?
            }
            _ => return Err(bad),
        };
        out.push(c);
    }
    Ok(())
}

fn hex_unit(bytes: &[u8]) -> Option<(u32, &[u8])> {
    let (digits, tail) = bytes.split_at_checked(4)?;
    let mut unit = 0u32;
    for &b in digits {
        unit = unit << 4 | (b as char).to_digit(16)?;
    }
    Some((unit, tail))
}

/// Writes `text` as a JSON string (with its quotes), escaping what JSON requires.
pub(crate) fn write_json_string(out: &mut Vec<u8>, text: &str) {
    out.push(b'"');
    for c in text.chars() {
        match c {
            '"' => out.extend_from_slice(b"\\\""),
            '\\' => out.extend_from_slice(b"\\\\"),
            '\n' => out.extend_from_slice(b"\\n"),
            '\r' => out.extend_from_slice(b"\\r"),
            '\t' => out.extend_from_slice(b"\\t"),
            c if (c as u32) < 0x20 => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                let n = c as usize;
                out.extend_from_slice(b"\\u00");
                out.push(HEX.get(n >> 4).copied().unwrap_or(b'0'));
                out.push(HEX.get(n & 15).copied().unwrap_or(b'0'));
            }
            c => {
                let mut buf = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
        }
    }
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn skip(text: &str, max_depth: usize) -> Result<usize, RedactError> {
        let mut c = Cursor::new(text.as_bytes());
        c.skip_value(0, max_depth, &mut Vec::new())?;
        Ok(c.pos())
    }

    #[test]
    fn skip_value_notes_control_characters_in_keys() {
        let control = |text: &str| Cursor::new(text.as_bytes()).skip_value(0, 8, &mut Vec::new());
        assert_eq!(control(r#"{"a":{"b":[{"c\u0000":1}]}}"#), Ok(true));
        assert_eq!(control(r#"[1,{"x":"\u0000"},{"\u007f":2}]"#), Ok(true));
        assert_eq!(control(r#"[1,{"x":"\u0000"}]"#), Ok(false));
        assert_eq!(control(r#""a\u0000""#), Ok(false));
    }

    #[test]
    fn skip_value_stops_after_one_value() {
        assert_eq!(skip(r#"{"a":[1,{"b":null}],"c":"x"} tail"#, 8), Ok(28));
        assert_eq!(skip("[]", 1), Ok(2));
        assert_eq!(skip("[[]]", 1), Err(RedactError::TooDeep));
        assert_eq!(skip("-0.5e+7,", 1), Ok(7));
    }

    #[test]
    fn keys_with_control_characters_are_noted() {
        let scan = |text: &[u8]| Cursor::new(text).key();
        let plain = KeyScan::default();
        let escaped = KeyScan {
            escaped: true,
            control: false,
        };
        assert_eq!(scan(br#""ssn""#), Ok(plain));
        assert_eq!(scan(br#""a long key without stops""#), Ok(plain));
        assert_eq!(scan(br#""s\u0073n\/\"""#), Ok(escaped));
        assert_eq!(scan("\"é😀\u{a0}\"".as_bytes()), Ok(plain));
        for control in [
            "\"ssn\u{7f}\"",
            "\"abcdefgh\u{7f}ijk\"",
            "\"\u{80}\"",
            "\"ssn\u{9f}\"",
        ] {
            let got = scan(control.as_bytes()).unwrap();
            assert!(got.control && !got.escaped, "{control:?}");
        }
        for control in [
            r#""ssn\u0000""#,
            r#""\u001F""#,
            r#""a\n""#,
            r#""\t""#,
            r#""\u007f""#,
            r#""\u0085x""#,
            r#""\b""#,
        ] {
            let got = scan(control.as_bytes()).unwrap();
            assert!(got.control && got.escaped, "{control}");
        }
        assert!(!scan(br#""\u00a0\u0020""#).unwrap().control);
        assert_eq!(
            scan(b"\"a\x01\""),
            Err(RedactError::InvalidJson { offset: 2 })
        );
    }

    #[test]
    fn unescape_decodes_every_escape() {
        let mut out = String::new();
        unescape(br#"a\"\\\/\b\f\n\r\t\u00e9\ud83d\ude00z"#, &mut out).unwrap();
        assert_eq!(out, "a\"\\/\u{8}\u{c}\n\r\té😀z");
    }

    #[test]
    fn written_strings_round_trip_through_serde() {
        let text = "q\"b\\s\u{1}\u{1f}é😀\n";
        let mut out = Vec::new();
        write_json_string(&mut out, text);
        let back: String = serde_json::from_slice(&out).unwrap();
        assert_eq!(back, text);
    }
}
