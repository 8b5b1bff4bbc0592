//! Case folding of member names, for paths that match names case-insensitively.
//!
//! Consumers bind variant spellings of a member to one field: Go's `encoding/json`
//! compares names with `bytes.EqualFold` (Unicode simple case folding, so `ſſn` and
//! `SSN` bind to `ssn`, and the Kelvin sign `K` to `k`), .NET and Java compare
//! upper- or lower-cased characters. A name is folded here character by character
//! with Unicode simple case folding (CaseFolding.txt, statuses C and S, through the
//! `casefold` crate), and additionally the Turkic capital dotted and small dotless i
//! (U+0130, U+0131) fold to `i`: Java's `equalsIgnoreCase` and .NET's upper-casing
//! take them for `i`, and a wider class only ever classifies more spellings.
//! Full folding (`ß` → `ss`) is not applied: no consumer we know binds it. The
//! table is Unicode 16's: the few case pairs Unicode 17 added (U+A7CE to U+A7D5 and
//! the Beria Erfe script) do not fold yet (falling back to std's newer lower-case
//! table for them would cost 12 KB of `.wasm`; no consumer's tables have them).

/// The fold of one character.
pub(crate) fn fold_char(c: char) -> char {
    match c {
        '\u{130}' | '\u{131}' => 'i',
        c => casefold::simple_fold_char(c),
    }
}

/// Writes the fold of `text` into `out` (cleared first).
pub(crate) fn fold_into(text: &str, out: &mut String) {
    out.clear();
    if text.is_ascii() {
        out.push_str(text);
        out.make_ascii_lowercase();
    } else {
        out.extend(text.chars().map(fold_char));
    }
}

/// The fold of a member name: two names match case-insensitively when their folds
/// are equal.
pub fn fold(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    fold_into(text, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variant_spellings_fold_alike() {
        for variant in ["ssn", "SSN", "Ssn", "ſſn", "sſN"] {
            assert_eq!(fold(variant), "ssn", "{variant}");
        }
        assert_eq!(fold("\u{212A}ey"), "key");
        assert_eq!(fold("İD"), "id");
        assert_eq!(fold("ıd"), "id");
        assert_eq!(fold("ΣΑΣ"), "σασ");
        assert_eq!(fold("ς"), "σ");
        assert_eq!(fold("ẞ"), "ß");
        assert_eq!(fold("Straße"), "straße");
        assert_eq!(fold("µ"), "μ");
        assert_eq!(fold("中"), "中");
    }

    /// The only character of a case mapping, if it maps to one.
    fn single(mapped: impl Iterator<Item = char>) -> Option<char> {
        let mut chars = mapped.fuse();
        match (chars.next(), chars.next()) {
            (Some(c), None) => Some(c),
            _ => None,
        }
    }

    /// Every character (the whole domain, so the table can neither panic nor miss):
    /// folding is idempotent, and two characters that a one-character upper- or
    /// lower-case mapping joins fold alike, so whatever a consumer takes for the same
    /// name by case-mapping characters matches here too.
    #[test]
    fn folding_is_closed_under_case_mappings() {
        for c in (0..=0x10FFFF).filter_map(char::from_u32) {
            let f = fold_char(c);
            assert_eq!(fold_char(f), f, "{c:?} folds to {f:?}, which folds on");
            for mapped in [single(c.to_uppercase()), single(c.to_lowercase())]
                .into_iter()
                .flatten()
            {
                // The crate's table is Unicode 16; std maps Unicode 17's new pairs.
                let newer = |c: char| matches!(c as u32, 0xA7CE..=0xA7CF | 0xA7D2..=0xA7D5 | 0x16EA0..=0x16ED3);
                if !newer(c) {
                    assert_eq!(fold_char(mapped), f, "{c:?} and {mapped:?}");
                }
            }
        }
    }
}
