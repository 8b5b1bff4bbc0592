//! Any-depth paths (`$..name`), case-insensitive names and member names with control
//! characters: precedence, every spelling of a name, and what is never released.

use consentry_core::redact::{
    ControlKeys, FieldAction, FieldPath, HashEncoding, Plan, PlanError, RedactError, Unclassified,
};

use crate::{plan, run};

use FieldAction::*;
use Unclassified::Keep as KeepRest;
use Unclassified::Remove as RemoveRest;

const HASH: FieldAction = Hash {
    encoding: HashEncoding::Hex,
};

/// A plan whose paths (all of them) match names case-insensitively.
fn any_case(rules: &[(&str, FieldAction)], unclassified: Unclassified) -> Plan {
    Plan::build(
        rules
            .iter()
            .map(|(p, a)| (FieldPath::parse(p).unwrap().any_case(), a.clone()))
            .collect(),
        unclassified,
    )
    .unwrap()
}

#[test]
fn any_depth_matches_in_objects_and_arrays_at_every_depth() {
    let p = plan(&[("$..ssn", Remove)], KeepRest);
    let body = r#"{"ssn":1,"a":{"ssn":2,"b":[{"ssn":3},[{"x":{"ssn":{"ssn":4}}}]]},"s\u0073n":5,"ssn":6,"k":"ssn"}"#;
    assert_eq!(
        run(&p, body).unwrap(),
        r#"{"a":{"b":[{},[{"x":{}}]]},"k":"ssn"}"#
    );
    // Nothing to find: the body is unchanged, byte for byte.
    let plain = r#"{ "a" : [ 1.50, {"b": "c"} ] }"#;
    assert_eq!(run(&p, plain).unwrap(), plain);
}

#[test]
fn any_depth_paths_continue_after_their_name() {
    let p = plan(&[("$..patient.ids[*]", Remove)], KeepRest);
    assert_eq!(
        run(
            &p,
            r#"{"patient":{"ids":[1,2],"n":3},"x":[{"patient":{"ids":[4]}}],"ids":[5]}"#
        )
        .unwrap(),
        r#"{"patient":{"ids":[],"n":3},"x":[{"patient":{"ids":[]}}],"ids":[5]}"#
    );
}

#[test]
fn under_a_removing_default_any_depth_releases_only_what_it_names() {
    let p = plan(&[("$..name", Keep)], RemoveRest);
    assert_eq!(
        run(
            &p,
            r#"{"a":{"name":"x","ssn":1},"b":[{"ssn":2},{"name":"y"}],"c":{"d":1}}"#
        )
        .unwrap(),
        r#"{"a":{"name":"x"},"b":[{"name":"y"}]}"#
    );
}

#[test]
fn an_explicit_path_naming_the_member_beats_any_depth() {
    let p = plan(&[("$..ssn", HASH), ("$.patient.ssn", Keep)], KeepRest);
    let out = run(&p, r#"{"patient":{"ssn":"1"},"other":{"ssn":"1"}}"#).unwrap();
    assert!(
        out.starts_with(r#"{"patient":{"ssn":"1"},"other":{"ssn":"6b86"#),
        "{out}"
    );
    // `$.a.*` names `a`: it beats `$..ssn` at `$.a.ssn` (rule 1 of the precedence).
    let p = plan(&[("$.a.*", Keep), ("$..ssn", Remove)], RemoveRest);
    assert_eq!(
        run(&p, r#"{"a":{"ssn":1},"b":{"ssn":2,"c":3}}"#).unwrap(),
        r#"{"a":{"ssn":1}}"#
    );
}

#[test]
fn any_depth_naming_the_member_beats_explicit_wildcards() {
    for wildcards in ["$.*", "$.*.*", "$[*].*"] {
        let p = plan(&[(wildcards, Keep), ("$..ssn", Remove)], KeepRest);
        let out = run(&p, r#"{"ssn":1,"a":{"ssn":2,"b":3}}"#).unwrap();
        assert!(!out.contains("ssn"), "{wildcards}: {out}");
    }
    // A wildcard last step ties with `$.*.*`: the explicit path wins the tie.
    let p = plan(&[("$.*.*", Keep), ("$..a.*", Remove)], KeepRest);
    assert_eq!(
        run(&p, r#"{"a":{"x":1},"b":{"a":{"y":2}}}"#).unwrap(),
        r#"{"a":{"x":1},"b":{"a":{}}}"#
    );
}

#[test]
fn between_any_depth_paths_the_strictest_action_wins() {
    let mask = Mask {
        keep_first: 0,
        keep_last: 2,
        mask_char: '*',
        keep_separators: false,
    };
    let p = plan(
        &[("$..patient.ssn", Keep), ("$..ssn", mask.clone())],
        KeepRest,
    );
    assert_eq!(
        run(&p, r#"{"patient":{"ssn":"123456"}}"#).unwrap(),
        r#"{"patient":{"ssn":"****56"}}"#
    );
    let p = plan(&[("$..ssn", mask), ("$..patient.ssn", Remove)], KeepRest);
    assert_eq!(
        run(&p, r#"{"patient":{"ssn":"123456"},"ssn":"123456"}"#).unwrap(),
        r#"{"patient":{},"ssn":"****56"}"#
    );
}

#[test]
fn case_insensitive_names_match_every_spelling() {
    let p = any_case(&[("$.ssn", Remove), (r#"$["key"]"#, Remove)], KeepRest);
    let body = "{\"SSN\":1,\"Ssn\":2,\"\u{17f}\u{17f}n\":3,\"\\u017Fsn\":4,\"ssN\":5,\"ssn2\":6,\
                \"\u{212A}EY\":7,\"KEY\":8,\"k\\u0065y\":9,\"ke\":10}";
    assert_eq!(run(&p, body).unwrap(), r#"{"ssn2":6,"ke":10}"#);
    // Exact names still match only themselves.
    let exact = plan(&[("$.ssn", Remove)], KeepRest);
    assert_eq!(run(&exact, r#"{"SSN":1,"ssn":2}"#).unwrap(), r#"{"SSN":1}"#);
}

#[test]
fn case_insensitive_any_depth_paths_match_every_spelling_at_every_depth() {
    let p = any_case(&[("$..national_id", Remove)], KeepRest);
    assert_eq!(
        run(
            &p,
            r#"{"a":[{"National_ID":1},{"b":{"NATIONAL_id":2,"c":3}}],"national_id":4}"#
        )
        .unwrap(),
        r#"{"a":[{},{"b":{"c":3}}]}"#
    );
}

#[test]
fn exact_and_case_insensitive_names_meeting_at_one_member_take_the_strictest() {
    let rules = vec![
        (FieldPath::parse("$.SSN").unwrap(), Keep),
        (FieldPath::parse("$.ssn").unwrap().any_case(), Remove),
        (FieldPath::parse("$.name").unwrap(), Remove),
        (FieldPath::parse("$.NAME").unwrap().any_case(), Keep),
    ];
    let p = Plan::build(rules, RemoveRest).unwrap();
    assert_eq!(
        run(&p, r#"{"SSN":1,"ssn":2,"Name":3,"name":4,"NAME":5}"#).unwrap(),
        r#"{"Name":3,"NAME":5}"#
    );
}

#[test]
fn case_insensitive_paths_with_the_same_fold_are_one_path() {
    let rules = vec![
        (FieldPath::parse("$.SSN").unwrap().any_case(), Keep),
        (FieldPath::parse(r#"$["ſsn"]"#).unwrap().any_case(), Remove),
    ];
    assert_eq!(
        Plan::build(rules, RemoveRest).unwrap_err(),
        PlanError::Conflict {
            first: 0,
            second: 1
        }
    );
}

#[test]
fn control_characters_in_names_are_never_released() {
    let body = "{\"ssn\\u0000\":1,\"a\":{\"b\u{7f}\":2,\"c\":{\"d\\n\":3},\"e\":[{\"\u{85}\":4}]},\
                \"x\":\"\\u0000\",\"ok\":5}";
    let released = r#"{"a":{"c":{},"e":[{}]},"x":"\u0000","ok":5}"#;
    for p in [
        plan(&[], KeepRest),
        plan(&[("$.a", Keep), ("$.*", Keep)], RemoveRest),
        plan(&[("$..zzz", Remove)], KeepRest),
    ] {
        let out = crate::run_with(&p, body.as_bytes(), crate::LIMITS, None).unwrap();
        assert_eq!(String::from_utf8(out.body).unwrap(), released);
        assert_eq!(out.report.control_keys_removed, 4);
    }
    // Where the rest is removed anyway, so are they; a hashed container keeps none.
    let p = plan(&[("$.ok", Keep), ("$.a", HASH)], RemoveRest);
    let out = run(&p, body).unwrap();
    assert!(
        out.starts_with(r#"{"a":""#) && out.ends_with(r#"","ok":5}"#),
        "{out}"
    );
}

#[test]
fn control_characters_in_names_can_withhold_the_body() {
    let p = plan(&[], KeepRest).with_control_keys(ControlKeys::Withhold);
    assert_eq!(
        run(&p, "{\"a\":{\"b\":[{\"c\\u001f\":1}]}}"),
        Err(RedactError::ControlKey { offset: 12 })
    );
    assert_eq!(run(&p, r#"{"a":"\u0000"}"#).unwrap(), r#"{"a":"\u0000"}"#);
    // Inside a removed value nothing reaches the client: nothing to withhold.
    let p = plan(&[("$.a", Remove)], KeepRest).with_control_keys(ControlKeys::Withhold);
    assert_eq!(
        run(&p, r#"{"a":{"\u0000":1},"b":2}"#).unwrap(),
        r#"{"b":2}"#
    );
}
