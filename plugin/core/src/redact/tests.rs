//! The compatibility wrapper; the pass itself is tested through the public API in
//! `tests/redact.rs`.

use super::*;

#[test]
fn remove_all_removes_fields_at_any_depth_and_keeps_the_rest() {
    let plan = RedactionPlan::remove_all(vec![
        FieldPath::parse("$.ssn").unwrap(),
        FieldPath::parse("$.items[*].secret").unwrap(),
    ]);
    let out = plan
        .apply(
            br#"{"b":1,"ssn":"x","a":2,"items":[{"secret":1,"k":2},{"k":3}]}"#,
            1 << 20,
            64,
        )
        .unwrap();
    assert_eq!(out, br#"{"b":1,"a":2,"items":[{"k":2},{"k":3}]}"#);
    assert!(!plan.is_empty());
    assert!(RedactionPlan::default().is_empty());
}

#[test]
fn remove_all_refuses_what_it_cannot_read() {
    let plan = RedactionPlan::default();
    assert_eq!(
        plan.apply(b"{", 100, 64),
        Err(RedactError::InvalidJson { offset: 1 })
    );
    assert_eq!(plan.apply(b"[[[1]]]", 100, 2), Err(RedactError::TooDeep));
    assert_eq!(plan.apply(b"[1,2,3]", 3, 64), Err(RedactError::TooLarge));
    assert_eq!(plan.apply(b" [1, 2] ", 100, 64).unwrap(), b" [1, 2] ");
}
