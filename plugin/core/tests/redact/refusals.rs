//! Negative fixtures, named by their failure. Each malformed fragment is tried at the
//! root and in every position the pass treats differently: a value it descends into,
//! one it keeps whole, one it removes, one it transforms, and one inside a shell (a
//! container removed unless something below it is released) that is pruned.

use consentry_core::redact::{FieldAction, HashEncoding, Limits, RedactError, Unclassified};

use crate::{LIMITS, plan, run, run_with};

/// The contexts: `@` is replaced by the fragment.
const CONTEXTS: [&str; 8] = [
    "@",
    r#"{"walk":{"x":@}}"#,
    r#"{"keep":@}"#,
    r#"{"drop":@}"#,
    r#"{"hash":@}"#,
    r#"[0,{"walk":[@]}]"#,
    r#"{"shell":{"x":@}}"#,
    r#"{"shell":[{"y":1},@]}"#,
];

fn every_context(fragment: &[u8]) -> Vec<Result<Vec<u8>, RedactError>> {
    let p = plan(
        &[
            ("$.walk.x.deeper", FieldAction::Remove),
            ("$.walk[*].deeper", FieldAction::Remove),
            ("$[*].walk[*].deeper", FieldAction::Remove),
            ("$.shell", FieldAction::Remove),
            ("$.shell.x.deeper", FieldAction::Keep),
            ("$.shell[*].deeper", FieldAction::Keep),
            ("$.keep", FieldAction::Keep),
            ("$.drop", FieldAction::Remove),
            (
                "$.hash",
                FieldAction::Hash {
                    encoding: HashEncoding::Hex,
                },
            ),
        ],
        Unclassified::Keep,
    );
    CONTEXTS
        .iter()
        .map(|c| {
            let (before, after) = c.split_once('@').unwrap();
            let body = [before.as_bytes(), fragment, after.as_bytes()].concat();
            run_with(&p, &body, LIMITS, None).map(|r| r.body)
        })
        .collect()
}

fn refused_everywhere(fragment: &[u8], what: fn(&RedactError) -> bool) {
    for (context, result) in CONTEXTS.iter().zip(every_context(fragment)) {
        match result {
            Err(e) if what(&e) => {}
            other => panic!(
                "{:?} in {context}: {other:?}",
                String::from_utf8_lossy(fragment)
            ),
        }
    }
}

fn invalid_json(e: &RedactError) -> bool {
    matches!(e, RedactError::InvalidJson { .. })
}

fn invalid_utf8(e: &RedactError) -> bool {
    matches!(e, RedactError::InvalidUtf8 { .. })
}

#[test]
fn accepted_fragments_pass_in_every_context() {
    for fragment in [
        "0",
        "-0",
        "-0.0",
        "1e3",
        "1E+3",
        "1e-3",
        "120.50",
        "12345678901234567890",
        "true",
        "false",
        "null",
        r#""""#,
        r#""\"\\\/\b\f\n\r\t\u0000\uD83D\uDE00""#,
        "[]",
        "{}",
        r#"{"a":[{},[]]}"#,
        " [ 1 , { \"a\" : 2 } ] ",
    ] {
        for (context, result) in CONTEXTS.iter().zip(every_context(fragment.as_bytes())) {
            assert!(result.is_ok(), "{fragment} in {context}: {result:?}");
        }
    }
}

#[test]
fn invalid_json_syntax_is_refused() {
    for fragment in [
        "{",
        "}",
        "[",
        "]",
        "[1,]",
        "[,1]",
        "[1 2]",
        "[1]]",
        "{,}",
        r#"{"a":1,}"#,
        r#"{"a" 1}"#,
        r#"{"a":}"#,
        r#"{"a"}"#,
        "{a:1}",
        "{'a':1}",
        r#"{"a":1 "b":2}"#,
        r#"{"a":1}}"#,
        r#"{1:2}"#,
        "'a'",
        "NaN",
        "Infinity",
        "-Infinity",
        "undefined",
    ] {
        refused_everywhere(fragment.as_bytes(), invalid_json);
    }
    let p = plan(&[], Unclassified::Keep);
    for empty in ["", " ", "\n\t"] {
        assert!(matches!(
            run(&p, empty),
            Err(RedactError::InvalidJson { .. })
        ));
    }
}

#[test]
fn invalid_numbers_are_refused() {
    for fragment in [
        "01", "-01", "1.", ".5", "-", "+1", "1e", "1e+", "1.e3", "0x10", "1_000", "--1", "1.5.2",
    ] {
        refused_everywhere(fragment.as_bytes(), invalid_json);
    }
}

#[test]
fn invalid_literals_are_refused() {
    for fragment in ["tru", "nul", "True", "FALSE", "nulll", "t"] {
        refused_everywhere(fragment.as_bytes(), invalid_json);
    }
}

#[test]
fn invalid_strings_are_refused() {
    for fragment in [
        &b"\"abc"[..],
        b"\"\\x\"",
        b"\"\\u12G4\"",
        b"\"\\u12\"",
        b"\"tab\there\"",
        b"\"nl\nhere\"",
        b"\"\x00\"",
        b"\"\x1f\"",
        b"\"\\\"",
        b"\"\\U0041\"",
        b"\"\\'\"",
    ] {
        refused_everywhere(fragment, invalid_json);
    }
}

#[test]
fn invalid_utf8_is_refused() {
    for fragment in [
        &b"\"\xff\""[..],
        b"\"\xc0\xaf\"",         // overlong '/'
        b"\"\xed\xa0\x80\"",     // a surrogate encoded in UTF-8
        b"\"\xe2\x82\"",         // truncated sequence
        b"\"\xf4\x90\x80\x80\"", // above U+10FFFF
        b"\"\x80\"",             // lone continuation byte
        b"{\"\xff\":1}",         // in a key
    ] {
        refused_everywhere(fragment, invalid_utf8);
    }
    // Outside a string, a non-ASCII byte is a syntax error.
    refused_everywhere(b"[1,\xff]", invalid_json);
}

#[test]
fn lone_surrogate_escapes_are_refused() {
    for fragment in [
        r#""\ud800""#,
        r#""\ud800x""#,
        r#""\udc00""#,
        r#""\ud800\u0041""#,
        r#""\ud800\ud800""#,
        r#""\uDBFF\n""#,
        r#""a\udfff""#,
        r#"{"\ud800":1}"#,
    ] {
        refused_everywhere(fragment.as_bytes(), invalid_utf8);
    }
}

#[test]
fn a_byte_order_mark_is_refused() {
    let p = plan(&[], Unclassified::Keep);
    assert_eq!(
        run_with(&p, b"\xEF\xBB\xBF{}", LIMITS, None),
        Err(RedactError::ByteOrderMark)
    );
    // Inside a string it is just a character.
    assert!(run(&p, "{\"a\":\"\u{FEFF}\"}").is_ok());
}

#[test]
fn trailing_bytes_after_the_document_are_refused() {
    let p = plan(&[], Unclassified::Keep);
    for body in ["{} {}", "[]x", "1 2", "\"a\"\"b\"", "{}\0", "null,"] {
        assert!(
            matches!(run(&p, body), Err(RedactError::InvalidJson { .. })),
            "{body}"
        );
    }
}

#[test]
fn nesting_beyond_the_limit_is_refused() {
    let limits = |max_depth| Limits {
        max_bytes: 1 << 20,
        max_depth,
    };
    let walk = plan(
        &[("$[*][*][*][*].x", FieldAction::Remove)],
        Unclassified::Keep,
    );
    let whole = plan(&[], Unclassified::Keep);
    // Every container here is a shell, pruned.
    let shells = plan(
        &[("$[*][*][*][*].x", FieldAction::Keep)],
        Unclassified::Remove,
    );
    for p in [&walk, &whole, &shells] {
        assert!(run_with(p, b"[[[]]]", limits(3), None).is_ok());
        assert_eq!(
            run_with(p, b"[[[[]]]]", limits(3), None),
            Err(RedactError::TooDeep)
        );
        assert_eq!(
            run_with(p, br#"[{"a":[{}]}]"#, limits(3), None),
            Err(RedactError::TooDeep)
        );
        assert!(run_with(p, b"1", limits(0), None).is_ok());
        assert_eq!(
            run_with(p, b"[]", limits(0), None),
            Err(RedactError::TooDeep)
        );
    }
    // Deep input far beyond any stack: refused without recursion.
    let deep = [vec![b'['; 1_000_000], vec![b']'; 1_000_000]].concat();
    let big = Limits {
        max_bytes: 4 << 20,
        max_depth: 1_000_000,
    };
    assert!(run_with(&walk, &deep, big, None).is_ok());
    assert!(run_with(&whole, &deep, big, None).is_ok());
    assert_eq!(run_with(&shells, &deep, big, None).unwrap().body, b"[]");
    let shallow = Limits {
        max_depth: 64,
        ..big
    };
    assert_eq!(
        run_with(&walk, &deep, shallow, None),
        Err(RedactError::TooDeep)
    );
    assert_eq!(
        run_with(&whole, &deep, shallow, None),
        Err(RedactError::TooDeep)
    );
    assert_eq!(
        run_with(&shells, &deep, shallow, None),
        Err(RedactError::TooDeep)
    );
}

#[test]
fn bodies_beyond_the_size_limit_are_refused() {
    let p = plan(&[], Unclassified::Keep);
    let limits = Limits {
        max_bytes: 7,
        max_depth: 8,
    };
    assert!(run_with(&p, b"[1,2,3]", limits, None).is_ok());
    assert_eq!(
        run_with(&p, b"[1,2,3] ", limits, None),
        Err(RedactError::TooLarge)
    );
}

#[test]
fn errors_carry_offsets_not_content() {
    let p = plan(&[], Unclassified::Keep);
    assert_eq!(
        run(&p, r#"{"a":[1,2,}"#),
        Err(RedactError::InvalidJson { offset: 10 })
    );
    assert_eq!(
        run_with(&p, b"[\"ok\",\"x\xff\"]", LIMITS, None),
        Err(RedactError::InvalidUtf8 { offset: 8 })
    );
    let shown = RedactError::InvalidJson { offset: 3 }.to_string();
    assert_eq!(shown, "invalid JSON at byte 3");
}
