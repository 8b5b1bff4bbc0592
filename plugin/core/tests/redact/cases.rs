//! Airtightness: every way of naming a field, every shape of removal, untouched bytes.

use consentry_core::redact::{
    FieldAction, Generalisation, HashEncoding, KeyRing, RedactContext, RedactError, Unclassified,
    redact,
};

use crate::{LIMITS, bob, keys, plan, remove, run, run_with, test_random};

use FieldAction::*;
use Unclassified::Keep as KeepRest;
use Unclassified::Remove as RemoveRest;

#[test]
fn removing_the_first_middle_last_or_only_member_keeps_valid_json() {
    let body = r#"{"a":1,"b":2,"c":3}"#;
    assert_eq!(remove(&["$.a"], body), r#"{"b":2,"c":3}"#);
    assert_eq!(remove(&["$.b"], body), r#"{"a":1,"c":3}"#);
    assert_eq!(remove(&["$.c"], body), r#"{"a":1,"b":2}"#);
    assert_eq!(remove(&["$.a", "$.b"], body), r#"{"c":3}"#);
    assert_eq!(remove(&["$.a", "$.c"], body), r#"{"b":2}"#);
    assert_eq!(remove(&["$.b", "$.c"], body), r#"{"a":1}"#);
    assert_eq!(remove(&["$.a", "$.b", "$.c"], body), "{}");
    assert_eq!(remove(&["$.a"], r#"{"a":1}"#), "{}");
    assert_eq!(remove(&["$[*]"], "[1,2,3]"), "[]");
}

#[test]
fn array_elements_are_removed_with_their_commas() {
    let body = r#"[{"s":1,"k":2},{"k":3},{"s":4}]"#;
    assert_eq!(remove(&["$[*].s"], body), r#"[{"k":2},{"k":3},{}]"#);
    let strict = plan(&[("$[*].k", Keep)], RemoveRest);
    // The last element is kept only for a `k` it does not have: it goes whole.
    assert_eq!(run(&strict, body).unwrap(), r#"[{"k":2},{"k":3}]"#);
    let scalars = plan(&[("$.l[*].k", Keep)], RemoveRest);
    assert_eq!(
        run(&scalars, r#"{"l":[1,{"k":2,"x":0},"s",[3],{"k":4}]}"#).unwrap(),
        r#"{"l":[{"k":2},{"k":4}]}"#
    );
}

#[test]
fn whitespace_is_preserved_around_kept_members() {
    let body = "{\n  \"a\": 1,\n  \"b\" : [ 2 , 3 ] ,\n  \"c\": {\"d\":4}\n}\n";
    assert_eq!(remove(&[], body), body);
    assert_eq!(
        remove(&["$.a"], body),
        "{\n  \"b\" : [ 2 , 3 ] ,\n  \"c\": {\"d\":4}\n}\n"
    );
    assert_eq!(
        remove(&["$.c"], body),
        "{\n  \"a\": 1,\n  \"b\" : [ 2 , 3 ] \n}\n"
    );
    assert_eq!(remove(&["$.a", "$.b", "$.c"], body), "{\n}\n");
    assert_eq!(
        remove(&["$.b[*]"], body),
        "{\n  \"a\": 1,\n  \"b\" : [ ] ,\n  \"c\": {\"d\":4}\n}\n"
    );
    assert_eq!(remove(&[], " \t\r\n[ ] "), " \t\r\n[ ] ");
}

#[test]
fn numbers_and_strings_are_byte_identical() {
    let body = r#"{"a":120.50,"b":1e3,"c":-0.0,"d":12345678901234567890,"e":1E+2,"f":"\u00e9\/","g":-1.5e-300,"h":1e400,"s":1}"#;
    let out = remove(&["$.s"], body);
    assert_eq!(
        out,
        r#"{"a":120.50,"b":1e3,"c":-0.0,"d":12345678901234567890,"e":1E+2,"f":"\u00e9\/","g":-1.5e-300,"h":1e400}"#
    );
}

#[test]
fn every_duplicate_key_is_redacted() {
    let body = r#"{"ssn":"1","x":0,"ssn":"2","ssn":{"n":"3"}}"#;
    assert_eq!(remove(&["$.ssn"], body), r#"{"x":0}"#);
    let masked = plan(
        &[(
            "$.ssn",
            Mask {
                keep_first: 0,
                keep_last: 0,
                mask_char: '*',
                keep_separators: false,
            },
        )],
        KeepRest,
    );
    // The object occurrence cannot be masked: it is removed (fail closed).
    assert_eq!(
        run(&masked, body).unwrap(),
        r#"{"ssn":"*","x":0,"ssn":"*"}"#
    );
}

#[test]
fn escaped_keys_match_their_unescaped_name() {
    assert_eq!(
        remove(
            &["$.ssn"],
            r#"{"s\u0073n":"x","\u0073sn":"y","ss\u006E":"z","k":1}"#
        ),
        r#"{"k":1}"#
    );
    assert_eq!(
        remove(&["$.ssn"], r#"{"\"ssn\"":1,"ssn\\":2}"#),
        r#"{"\"ssn\"":1,"ssn\\":2}"#
    );
    // A surrogate pair names an astral character.
    assert_eq!(
        remove(
            &[r#"$["😀"]"#],
            r#"{"\ud83d\ude00":1,"😀":2,"\uD83D\uDE00":3,"k":4}"#
        ),
        r#"{"k":4}"#
    );
    assert_eq!(remove(&[r#"$["a/b"]"#], r#"{"a\/b":1}"#), "{}");
    assert_eq!(
        remove(&[r#"$["é"]"#], r#"{"\u00e9":1,"e\u0301":2}"#),
        r#"{"e\u0301":2}"#
    );
    // Unmatched escaped keys keep their spelling.
    assert_eq!(remove(&["$.x"], r#"{"s\u0073n":1}"#), r#"{"s\u0073n":1}"#);
}

#[test]
fn fields_inside_arrays_at_any_depth_are_reached() {
    let body = r#"{"r":[[{"ssn":1,"k":1}],[[{"ssn":2}]],{"ssn":3}]}"#;
    assert_eq!(
        remove(&["$.r[*][*].ssn"], body),
        r#"{"r":[[{"k":1}],[[{"ssn":2}]],{"ssn":3}]}"#
    );
    assert_eq!(
        remove(&["$.r[*][*][*].ssn"], body),
        r#"{"r":[[{"ssn":1,"k":1}],[[{}]],{"ssn":3}]}"#
    );
    assert_eq!(
        remove(&["$.*[*].ssn", "$.*[*][*].ssn", "$.*[*][*][*].ssn"], body),
        r#"{"r":[[{"k":1}],[[{}]],{}]}"#
    );
}

#[test]
fn empty_containers_pass_and_stay_empty() {
    assert_eq!(remove(&["$.a"], "{}"), "{}");
    assert_eq!(remove(&["$.a"], "[]"), "[]");
    assert_eq!(
        remove(&["$.a.b"], r#"{"a":{},"c":[]}"#),
        r#"{"a":{},"c":[]}"#
    );
    let strict = plan(&[("$.a.b", Keep)], RemoveRest);
    // `a` is there only for a `b` it lacks: an empty shell, dropped. The root stays.
    assert_eq!(run(&strict, r#"{"a":{},"c":[]}"#).unwrap(), "{}");
    assert_eq!(run(&strict, "{ }").unwrap(), "{ }");
    assert_eq!(
        run(&strict, r#"{"a":{"b":[]}}"#).unwrap(),
        r#"{"a":{"b":[]}}"#
    );
}

#[test]
fn the_strict_default_removes_what_no_rule_names() {
    let p = plan(&[("$.name", Keep), ("$.address.city", Keep)], RemoveRest);
    let body =
        r#"{"name":"A","dob":"1980-01-01","address":{"street":"S","city":"C"},"tags":["t"]}"#;
    let r = run_with(&p, body.as_bytes(), LIMITS, None).unwrap();
    assert_eq!(r.body, br#"{"name":"A","address":{"city":"C"}}"#);
    assert_eq!(r.report.unclassified_removed, 3);
    assert_eq!(r.report.actions.kept, 2);
    // A document with no object or array at its root becomes null.
    assert_eq!(run(&p, r#" "secret" "#).unwrap(), " null ");
    assert_eq!(
        run(&plan(&[], KeepRest), r#" "open" "#).unwrap(),
        r#" "open" "#
    );
}

#[test]
fn keep_on_a_container_still_applies_the_rules_below_it() {
    let p = plan(
        &[
            ("$.patient", Keep),
            ("$.patient.ssn", Remove),
            (
                "$.patient.ids[*].v",
                Hash {
                    encoding: HashEncoding::Hex,
                },
            ),
        ],
        RemoveRest,
    );
    let out = run(
        &p,
        r#"{"patient":{"name":"A","ssn":"1","ids":[{"v":"abc","t":1}]},"other":1}"#,
    )
    .unwrap();
    assert_eq!(
        out,
        r#"{"patient":{"name":"A","ids":[{"v":"ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad","t":1}]}}"#
    );
}

#[test]
fn remove_on_a_container_keeps_only_what_the_rules_below_release() {
    let p = plan(
        &[
            ("$.identity", Remove),
            ("$.identity.dob", Generalise(Generalisation::DateToYear)),
            ("$.identity.tags[*]", Keep),
        ],
        KeepRest,
    );
    let body = r#"{"identity":{"name":"Ada","dob":"1984-03-12","tags":["x"],"ids":[1]},"k":0}"#;
    let r = run_with(&p, body.as_bytes(), LIMITS, None).unwrap();
    assert_eq!(r.body, br#"{"identity":{"dob":"1984","tags":["x"]},"k":0}"#);
    // The container and the two members it dropped count for its rule.
    assert_eq!(r.report.rules[0].matched, 3);
    assert_eq!(r.report.actions.removed, 2);
    assert_eq!(r.report.unclassified_removed, 0);
    // With nothing below it in the body, it is removed whole.
    assert_eq!(
        run(&p, r#"{"identity":"Ada","k":0}"#).unwrap(),
        r#"{"k":0}"#
    );
}

#[test]
fn a_transform_on_a_container_covers_the_whole_value() {
    let body = r#"{"a":{"b":1,"c":[2]},"k":0}"#;
    let hashed = plan(
        &[
            (
                "$.a",
                Hash {
                    encoding: HashEncoding::Base64Url,
                },
            ),
            ("$.a.b", Keep),
        ],
        KeepRest,
    );
    let out: serde_json::Value = serde_json::from_str(&run(&hashed, body).unwrap()).unwrap();
    // SHA-256 of the exact text `{"b":1,"c":[2]}`.
    use base64::Engine as _;
    use sha2::Digest as _;
    let expected = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(sha2::Sha256::digest(br#"{"b":1,"c":[2]}"#));
    assert_eq!(out["a"], expected.as_str());
}

#[test]
fn the_most_specific_rule_wins() {
    let p = plan(
        &[
            ("$.*.ssn", Remove),
            ("$.owner.*", Keep),
            (
                "$.*.*",
                Hash {
                    encoding: HashEncoding::Hex,
                },
            ),
        ],
        RemoveRest,
    );
    let out = run(
        &p,
        r#"{"owner":{"ssn":"1","n":"x"},"guest":{"ssn":"2","n":"abc"}}"#,
    )
    .unwrap();
    assert_eq!(
        out,
        r#"{"owner":{"ssn":"1","n":"x"},"guest":{"n":"ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"}}"#
    );
}

#[test]
fn mask_works_on_strings_and_numbers_and_falls_back_elsewhere() {
    let m = Mask {
        keep_first: 0,
        keep_last: 4,
        mask_char: '•',
        keep_separators: true,
    };
    let p = plan(&[("$.*", m)], KeepRest);
    let r = run_with(
        &p,
        r#"{"ssn":"123-45-6789","n":4111111111111111,"e":"a\u00e9b","o":{"x":1},"t":true}"#
            .as_bytes(),
        LIMITS,
        None,
    )
    .unwrap();
    assert_eq!(
        String::from_utf8(r.body).unwrap(),
        r#"{"ssn":"•••-••-6789","n":"••••••••••••1111","e":"•••"}"#
    );
    assert_eq!(r.report.actions.masked, 3);
    assert_eq!(r.report.actions.fallback_removed, 2);
    assert_eq!(
        (r.report.rules[0].matched, r.report.rules[0].fallbacks),
        (5, 2)
    );
}

#[test]
fn hash_uses_the_unescaped_string_or_the_exact_text() {
    let p = plan(
        &[(
            "$.*",
            Hash {
                encoding: HashEncoding::Hex,
            },
        )],
        KeepRest,
    );
    let out: serde_json::Value =
        serde_json::from_str(&run(&p, r#"{"a":"abc","b":"\u0061bc","n":1.50}"#).unwrap()).unwrap();
    assert_eq!(out["a"], out["b"]);
    use sha2::Digest as _;
    let hex: String = sha2::Sha256::digest(b"1.50")
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(out["n"], hex.as_str());
}

#[test]
fn pseudonyms_are_keyed_stable_and_per_grantee() {
    let p = plan(
        &[(
            "$.*",
            Pseudonymise {
                key_id: "k1".into(),
            },
        )],
        KeepRest,
    );
    let body = br#"{"a":"p-1","b":"p-1","c":"p-2"}"#;
    let keys = keys();
    let run_for = |grantee: Option<&str>| {
        let mut random = test_random();
        let mut cx = RedactContext {
            pseudonym_keys: &keys,
            grantee,
            recipient: None,
            random: &mut random,
        };
        let out = redact(&p, body, LIMITS, &mut cx).unwrap();
        serde_json::from_slice::<serde_json::Value>(&out.body).unwrap()
    };
    let insurer = run_for(Some("insurer"));
    assert_eq!(insurer["a"], insurer["b"]);
    assert_ne!(insurer["a"], insurer["c"]);
    assert!(insurer["a"].as_str().unwrap().starts_with("ps_k1_"));
    assert_eq!(insurer["a"].as_str().unwrap().len(), 6 + 22);
    assert_ne!(insurer["a"], run_for(Some("lab"))["a"]);
    assert_ne!(insurer["a"], run_for(None)["a"]);
    // HMAC-SHA-256(k1, "insurer" || 0 || "p-1"), first 16 bytes.
    use base64::Engine as _;
    use hmac::Mac as _;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(crate::SECRET).unwrap();
    mac.update(b"insurer\0p-1");
    let tag = mac.finalize().into_bytes();
    let expected = format!(
        "ps_k1_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&tag[..16])
    );
    assert_eq!(insurer["a"], expected.as_str());
}

#[test]
fn a_missing_key_or_a_bad_grantee_refuses_the_body() {
    let p = plan(
        &[(
            "$.a",
            Pseudonymise {
                key_id: "k2".into(),
            },
        )],
        KeepRest,
    );
    assert_eq!(run(&p, r#"{"a":"x"}"#), Err(RedactError::MissingKey));
    // No value at the path: nothing needs the key.
    assert_eq!(run(&p, r#"{"b":"x"}"#).unwrap(), r#"{"b":"x"}"#);
    let e = plan(&[("$.a", Encrypt)], KeepRest);
    assert_eq!(run(&e, r#"{"a":"x"}"#), Err(RedactError::MissingKey));
    let p1 = plan(
        &[(
            "$.a",
            Pseudonymise {
                key_id: "k1".into(),
            },
        )],
        KeepRest,
    );
    let keys = keys();
    let mut random = test_random();
    let mut cx = RedactContext {
        pseudonym_keys: &keys,
        grantee: Some("a\0b"),
        recipient: None,
        random: &mut random,
    };
    assert_eq!(
        redact(&p1, br#"{"a":"x"}"#, LIMITS, &mut cx),
        Err(RedactError::InvalidGrantee)
    );
}

#[test]
fn generalise_coarsens_dates_and_numbers_or_removes() {
    let p = plan(
        &[
            ("$.dob", Generalise(Generalisation::DateToYear)),
            ("$.seen", Generalise(Generalisation::DateToYearMonth)),
            (
                "$.age",
                Generalise(Generalisation::NumberBucket { width: 10 }),
            ),
        ],
        KeepRest,
    );
    assert_eq!(
        run(
            &p,
            r#"{"dob":"1984-02-29","seen":"2024-05-06T07:08:09+02:00","age":74,"k":1}"#
        )
        .unwrap(),
        r#"{"dob":"1984","seen":"2024-05","age":"70-80","k":1}"#
    );
    let r = run_with(
        &p,
        br#"{"dob":"yesterday","seen":20240506,"age":"74","k":1}"#,
        LIMITS,
        None,
    )
    .unwrap();
    assert_eq!(r.body, br#"{"k":1}"#);
    assert_eq!(r.report.actions.fallback_removed, 3);
    assert_eq!(r.report.actions.generalised, 0);
}

#[test]
fn encryption_makes_one_key_agreement_per_body_and_a_fresh_iv_per_field() {
    let p = plan(&[("$.*", Encrypt)], KeepRest);
    let recipient = bob();
    let r = run_with(
        &p,
        br#"{"a":"x","b":{"c":[1]},"d":null}"#,
        LIMITS,
        Some(&recipient),
    )
    .unwrap();
    let out: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    let parts: Vec<Vec<&str>> = ["a", "b", "d"]
        .iter()
        .map(|k| out[k].as_str().unwrap().split('.').collect())
        .collect();
    for p in &parts {
        assert_eq!(p.len(), 5);
        assert_eq!(p[1], "", "direct key agreement has no encrypted key");
    }
    assert!(
        parts.iter().all(|p| p[0] == parts[0][0]),
        "one header, one ephemeral key"
    );
    assert_ne!(parts[0][2], parts[1][2]);
    assert_ne!(parts[1][2], parts[2][2]);
    assert_eq!(r.report.actions.encrypted, 3);
    // A second body gets a second ephemeral key.
    let mut random = test_random();
    let mut skip = [0u8; 32 + 3 * 12];
    random(&mut skip);
    let keys = KeyRing::new();
    let mut cx = RedactContext {
        pseudonym_keys: &keys,
        grantee: None,
        recipient: Some(&recipient),
        random: &mut random,
    };
    let again = redact(&p, br#"{"a":"x"}"#, LIMITS, &mut cx).unwrap();
    let again: serde_json::Value = serde_json::from_slice(&again.body).unwrap();
    assert_ne!(
        again["a"].as_str().unwrap().split('.').next().unwrap(),
        parts[0][0]
    );
}

#[test]
fn the_deterministic_jwe_vector_comes_out_of_the_redactor() {
    let v = crate::vectors("jwe-ecdh-es-p256.json");
    let case = &v["cases"]["ECDH-ES/A256GCM"];
    use base64::Engine as _;
    let d = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(v["ephemeral_private_jwk"]["d"].as_str().unwrap())
        .unwrap();
    let iv: Vec<u8> = (0u8..12).collect();
    let mut draws = vec![d, iv].into_iter();
    let mut random = |buf: &mut [u8]| buf.copy_from_slice(&draws.next().unwrap());
    let keys = KeyRing::new();
    let recipient = bob();
    let mut cx = RedactContext {
        pseudonym_keys: &keys,
        grantee: None,
        recipient: Some(&recipient),
        random: &mut random,
    };
    let p = plan(&[("$.ssn", Encrypt)], KeepRest);
    let body = format!(r#"{{"ssn":{},"k":1}}"#, case["plaintext"].as_str().unwrap());
    let out = redact(&p, body.as_bytes(), LIMITS, &mut cx).unwrap();
    assert_eq!(
        String::from_utf8(out.body).unwrap(),
        format!(r#"{{"ssn":"{}","k":1}}"#, case["compact"].as_str().unwrap())
    );
}

#[test]
fn reports_count_per_rule_and_per_action() {
    let p = plan(
        &[
            ("$[*].a", Remove),
            ("$[*].b", Keep),
            (
                "$[*].c",
                Hash {
                    encoding: HashEncoding::Hex,
                },
            ),
        ],
        RemoveRest,
    );
    let r = run_with(
        &p,
        br#"[{"a":1,"b":2,"c":3,"d":4},{"a":5,"a":6}]"#,
        LIMITS,
        None,
    )
    .unwrap();
    assert_eq!(
        r.report.rules.iter().map(|c| c.matched).collect::<Vec<_>>(),
        [3, 1, 1]
    );
    assert_eq!(r.report.actions.removed, 3);
    assert_eq!(r.report.actions.kept, 1);
    assert_eq!(r.report.actions.hashed, 1);
    assert_eq!(r.report.unclassified_removed, 1);
}

#[test]
fn plans_report_the_keys_they_need() {
    let p = plan(
        &[
            (
                "$.a",
                Pseudonymise {
                    key_id: "k1".into(),
                },
            ),
            ("$.b", Encrypt),
        ],
        KeepRest,
    );
    assert!(p.needs_recipient());
    assert_eq!(p.pseudonym_key_ids().collect::<Vec<_>>(), ["k1"]);
    assert!(!plan(&[("$.a", Remove)], KeepRest).needs_recipient());
}

#[test]
fn key_rings_check_ids_and_secrets() {
    use consentry_core::redact::KeyError;
    let ring = KeyRing::new()
        .with_key("new", &[1; 32])
        .unwrap()
        .with_key("old", &[2; 32])
        .unwrap();
    assert_eq!(ring.newest().map(|(id, _)| id), Some("new"));
    assert_eq!(ring.get("old"), Some(&[2u8; 32][..]));
    assert_eq!(
        ring.clone().with_key("old", &[3; 32]).unwrap_err(),
        KeyError::DuplicateKeyId
    );
    assert_eq!(
        KeyRing::new().with_key("k", &[1; 31]).unwrap_err(),
        KeyError::ShortSecret
    );
    assert_eq!(
        KeyRing::new().with_key("", &[1; 32]).unwrap_err(),
        KeyError::BadKeyId
    );
    assert!(!format!("{ring:?}").contains('\u{1}'));
    assert_eq!(format!("{ring:?}"), r#"["new", "old"]"#);
}

// ---------------------------------------------------------------- empty shells

const HASH: FieldAction = Hash {
    encoding: HashEncoding::Hex,
};
/// SHA-256 of `abc`, in hex.
const ABC: &str = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";

/// The body, and how many shells were pruned.
fn pruned(p: &consentry_core::redact::Plan, body: &str) -> (String, u64) {
    let r = run_with(p, body.as_bytes(), LIMITS, None).unwrap();
    let out = String::from_utf8(r.body).unwrap();
    serde_json::from_str::<serde_json::Value>(&out).unwrap_or_else(|e| panic!("{out}: {e}"));
    (out, r.report.shells_pruned)
}

#[test]
fn a_removed_container_with_nothing_released_below_it_goes_whole() {
    for rest in [KeepRest, RemoveRest] {
        let p = plan(
            &[
                ("$.billing", Remove),
                ("$.billing.invoices[*].transaction_ref", HASH),
                ("$.k", Keep),
            ],
            rest,
        );
        let body = r#"{"billing":{"insurer":"X","invoices":[{"id":1},{"id":2}]},"k":0}"#;
        let r = run_with(&p, body.as_bytes(), LIMITS, None).unwrap();
        // Neither the number of invoices nor the presence of `billing` shows.
        assert_eq!(r.body, br#"{"k":0}"#);
        // Two invoices, `invoices`, `billing`.
        assert_eq!(r.report.shells_pruned, 4);
        // `billing`, `insurer` and the two `id`s matched its rule; pruning adds no
        // removal of its own.
        assert_eq!(r.report.rules[0].matched, 4);
        assert_eq!(r.report.actions.removed, 3);
        assert_eq!(r.report.unclassified_removed, 0);
        // Only the invoice that has a reference is there; its siblings are not
        // counted out.
        assert_eq!(
            pruned(
                &p,
                r#"{"billing":{"invoices":[{"id":1},{"id":2,"transaction_ref":"abc"},{}],"insurer":"X"},"k":0}"#
            ),
            (
                format!(r#"{{"billing":{{"invoices":[{{"transaction_ref":"{ABC}"}}]}},"k":0}}"#),
                2
            )
        );
    }
}

#[test]
fn a_removed_object_without_its_generalised_field_goes_whole() {
    let p = plan(
        &[
            ("$.identity", Remove),
            (
                "$.identity.birth_date",
                Generalise(Generalisation::DateToYear),
            ),
        ],
        KeepRest,
    );
    assert_eq!(
        pruned(&p, r#"{"identity":{"name":"Ada"},"k":1}"#),
        (r#"{"k":1}"#.to_owned(), 1)
    );
    assert_eq!(
        pruned(&p, r#"{"k":1,"identity":{}}"#),
        (r#"{"k":1}"#.to_owned(), 1)
    );
    assert_eq!(
        pruned(
            &p,
            r#"{"identity":{"name":"Ada","birth_date":"1984-02-29"},"k":1}"#
        ),
        (r#"{"identity":{"birth_date":"1984"},"k":1}"#.to_owned(), 0)
    );
    // A generalisation that does not fit removes the field, and then the shell.
    let r = run_with(
        &p,
        br#"{"identity":{"birth_date":"yesterday"},"k":1}"#,
        LIMITS,
        None,
    )
    .unwrap();
    assert_eq!(r.body, br#"{"k":1}"#);
    assert_eq!(
        (r.report.actions.fallback_removed, r.report.shells_pruned),
        (1, 1)
    );
}

#[test]
fn shells_inside_shells_are_pruned_from_the_inside_out() {
    let p = plan(&[("$.a", Remove), ("$.a.b[*].c.d", HASH)], KeepRest);
    // With a `d` in one element: only the path to it remains.
    assert_eq!(
        pruned(
            &p,
            r#"{"a":{"b":[{"c":{"e":1}},{"c":{"d":"abc","e":2},"f":3},{"f":4},[1],{"c":{}}],"g":0},"k":1}"#
        ),
        (
            format!(r#"{{"a":{{"b":[{{"c":{{"d":"{ABC}"}}}}]}},"k":1}}"#),
            // c and its element, the `f` element, c and its element.
            5
        )
    );
    // Without any `d`, nothing of `a` remains.
    assert_eq!(
        pruned(&p, r#"{"a":{"b":[{"c":{"e":1}},{"c":{}},{}],"g":0},"k":1}"#),
        (r#"{"k":1}"#.to_owned(), 7)
    );
    assert_eq!(
        pruned(&p, r#"{"k":1,"a":{"b":[]}}"#),
        (r#"{"k":1}"#.to_owned(), 2)
    );
    // Whitespace and commas around pruned members: exactly as if `a` were removed
    // outright, in every position.
    let body = "{ \"a\" : { \"b\" : [ { \"c\" : { } } ] } ,\n \"k\" : 1 ,\n \"a\" : { } ,\n \"m\" : 2 ,\n \"a\" : [ ] \n}";
    assert_eq!(
        pruned(&p, body),
        (
            "{\n \"k\" : 1  ,\n \"m\" : 2  \n}".to_owned(),
            // c, element, b, a; the second `a`; the third is not a shell (an array
            // where the rules expect an object): its scope removes it.
            5
        )
    );
    assert_eq!(pruned(&p, body).0, remove(&["$.a"], body));
}

#[test]
fn released_empty_containers_stay() {
    // Under a Keep scope: empty members and arrays are data.
    let keep = plan(&[("$.a", Keep), ("$.a.b", Remove)], RemoveRest);
    assert_eq!(
        pruned(&keep, r#"{"a":{"b":1,"l":[],"o":{}},"x":[]}"#),
        (r#"{"a":{"l":[],"o":{}}}"#.to_owned(), 0)
    );
    // A released container emptied by the removals below it stays too.
    assert_eq!(
        pruned(&keep, r#"{"a":{"b":1}}"#),
        (r#"{"a":{}}"#.to_owned(), 0)
    );
    // Inside a removed container, what a Keep releases stays as it is, empty or not,
    // and so does the removed container around it.
    let nested = plan(
        &[
            ("$.a", Remove),
            ("$.a.l", Keep),
            ("$.a.l[*].s", Remove),
            ("$.a.o", Keep),
            ("$.a.o.p.q", Remove),
        ],
        KeepRest,
    );
    assert_eq!(
        pruned(&nested, r#"{"a":{"l":[],"x":1}}"#),
        (r#"{"a":{"l":[]}}"#.to_owned(), 0)
    );
    assert_eq!(
        pruned(&nested, r#"{"a":{"l":[{"s":1},{}],"o":{"p":{"q":1}}}}"#),
        (r#"{"a":{"l":[{},{}],"o":{"p":{}}}}"#.to_owned(), 0)
    );
    // Under Unclassified::Keep nothing is a shell.
    let open = plan(&[("$.l[*].s", Remove)], KeepRest);
    assert_eq!(
        pruned(&open, r#"{"l":[{"s":1},[],{}],"e":{}}"#),
        (r#"{"l":[{},[],{}],"e":{}}"#.to_owned(), 0)
    );
}

#[test]
fn shells_in_arrays_of_arrays_are_pruned() {
    let p = plan(&[("$.m", Remove), ("$.m[*][*].v", Keep)], KeepRest);
    assert_eq!(
        pruned(
            &p,
            r#"{"m":[[{"w":2},{"v":1},{"w":2}],[{"w":3}],[],[[]],[{"v":[]}]],"k":0}"#
        ),
        (
            r#"{"m":[[{"v":1}],[{"v":[]}]],"k":0}"#.to_owned(),
            // Two `w` objects; `[{"w":3}]` and its object; `[]`; `[[]]`.
            6
        )
    );
    assert_eq!(
        pruned(&p, r#"{"m":[[[]],[{}],[]],"k":0}"#),
        (r#"{"k":0}"#.to_owned(), 5)
    );
    // At the root, under the strict default: the root array stays, even empty.
    let root = plan(&[("$[*][*].v", Keep)], RemoveRest);
    assert_eq!(
        pruned(&root, r#"[[{"v":1},{"w":2}],[{"w":3}],[]]"#),
        (r#"[[{"v":1}]]"#.to_owned(), 4)
    );
    assert_eq!(
        pruned(&root, " [ [ { \"w\" : 3 } ] , [ ] ] "),
        (" [ ] ".to_owned(), 3)
    );
}

#[test]
fn each_duplicate_key_is_pruned_or_kept_on_its_own() {
    let p = plan(&[("$.a", Remove), ("$.a.b", Keep)], KeepRest);
    assert_eq!(
        pruned(
            &p,
            r#"{"a":{"x":1},"k":0,"a":{"b":2,"x":3},"a":{},"a":"s","a":{"b":[]}}"#
        ),
        (r#"{"k":0,"a":{"b":2},"a":{"b":[]}}"#.to_owned(), 2)
    );
    // Duplicates inside a shell: any one that is released keeps it.
    assert_eq!(
        pruned(&p, r#"{"a":{"x":1,"b":{},"x":2,"b":3}}"#),
        (r#"{"a":{"b":{},"b":3}}"#.to_owned(), 0)
    );
    // Escaped spellings are the same key.
    assert_eq!(
        pruned(&p, r#"{"\u0061":{"x":1},"a":{"\u0062":1}}"#),
        (r#"{"a":{"\u0062":1}}"#.to_owned(), 1)
    );
}

#[test]
fn shells_under_the_strict_default_are_pruned() {
    // No rule on `x` or `y`: they are kept only for `z`.
    let p = plan(&[("$.x.y.z", HASH), ("$.k", Keep)], RemoveRest);
    assert_eq!(
        pruned(&p, r#"{"x":{"y":{"w":1},"v":2},"k":1}"#),
        (r#"{"k":1}"#.to_owned(), 2)
    );
    assert_eq!(
        pruned(&p, r#"{"x":{"y":{"w":1,"z":"abc"},"v":2},"k":1}"#),
        (format!(r#"{{"x":{{"y":{{"z":"{ABC}"}}}},"k":1}}"#), 0)
    );
    // Nothing left: the root stays, as `{}`.
    assert_eq!(pruned(&p, r#"{"x":{"y":{}},"x":{}}"#), ("{}".to_owned(), 3));
    let r = run_with(&p, br#"{"x":{"y":{"w":1}},"q":1}"#, LIMITS, None).unwrap();
    assert_eq!(r.body, b"{}");
    assert_eq!(
        (r.report.unclassified_removed, r.report.shells_pruned),
        (2, 2)
    );
    // A Keep scope inside releases its containers, empty or not.
    let k = plan(&[("$.x.y", Keep), ("$.x.y.z.w", Remove)], RemoveRest);
    assert_eq!(
        pruned(&k, r#"{"x":{"y":{"z":{"w":1}},"v":1},"u":{}}"#),
        (r#"{"x":{"y":{"z":{}}}}"#.to_owned(), 0)
    );
}

#[test]
fn a_pruned_region_is_still_validated() {
    let p = plan(&[("$.s", Remove), ("$.s.t.u", Keep)], KeepRest);
    assert_eq!(pruned(&p, r#"{"s":{"t":{"x":[1,{"y":null}]}}}"#).0, "{}");
    for body in [
        r#"{"s":{"t":{"x":[1,]}}}"#,
        r#"{"s":{"t":{"x":tru}}}"#,
        r#"{"s":{"t":{"x":01}}}"#,
        r#"{"s":{"t":{,}}}"#,
        r#"{"s":{"t":{}}"#,
        r#"{"s":{"t":{}}}}"#,
    ] {
        assert!(
            matches!(run(&p, body), Err(RedactError::InvalidJson { .. })),
            "{body}"
        );
    }
    assert!(matches!(
        run(&p, r#"{"s":{"t":{"x":"\ud800"}}}"#),
        Err(RedactError::InvalidUtf8 { .. })
    ));
    let shallow = consentry_core::redact::Limits {
        max_depth: 4,
        ..LIMITS
    };
    assert_eq!(
        run_with(&p, br#"{"s":{"t":{"x":[[]]}}}"#, shallow, None),
        Err(RedactError::TooDeep)
    );
    assert!(run_with(&p, br#"{"s":{"t":{"x":[]}}}"#, shallow, None).is_ok());
}
