//! `redact` over (a plan decoded from the first bytes, the rest as the body): it
//! must never panic, and what it accepts must come out as JSON.
#![no_main]

use consentry_core::redact::*;
use libfuzzer_sys::fuzz_target;

const NAMES: [&str; 4] = ["a", "b", "ssn", "é"];

/// Rule bytes, then three option bytes.
const HEAD: usize = 15;

fuzz_target!(|data: &[u8]| {
    let (head, body) = data.split_at(data.len().min(HEAD));
    let (rules, options) = head.split_at(head.len().min(12));
    let option = |i: usize| options.get(i).copied().unwrap_or(0);
    // Options: bits 0..12 of the first two bytes make rule i any-depth (its first step
    // becomes `..name`); bit 4 of the second withholds control characters in names;
    // bit i of the third makes rule i (< 8) match names case-insensitively, its names
    // written in upper case so the fold is what matches them.
    let deep = u16::from(option(0)) | u16::from(option(1) & 0x0f) << 8;
    let withhold = option(1) & 0x10 != 0;
    let folded = option(2);
    // Each rule byte is one rule: 2 bits path length, 2 bits name, 3 bits action.
    let rules = rules.iter().enumerate().map(|(i, &b)| {
        let name = |n: u8| NAMES[usize::from((b >> 2) & 3 ^ n)];
        let step = |k: u8| match (b >> k) & 3 {
            0 => PathStep::AnyMember,
            1 => PathStep::AnyElement,
            n => PathStep::Member(name(n).into()),
        };
        let mut steps: Vec<PathStep> = (0..1 + (b & 3)).map(|i| step(i * 2 + 1)).collect();
        if deep >> i & 1 == 1
            && let Some(first) = steps.first_mut()
        {
            *first = PathStep::Descendant(name(0).into());
        }
        let mut path = FieldPath(steps);
        if i < 8 && folded >> i & 1 == 1 {
            let upper = |n: String| n.to_uppercase();
            path = FieldPath(
                path.0
                    .into_iter()
                    .map(|s| match s {
                        PathStep::Member(n) => PathStep::Member(upper(n)),
                        PathStep::Descendant(n) => PathStep::Descendant(upper(n)),
                        other => other,
                    })
                    .collect(),
            )
            .any_case();
        }
        let action = match b >> 5 {
            0 => FieldAction::Keep,
            1 => FieldAction::Mask {
                keep_first: 1,
                keep_last: 2,
                mask_char: '*',
                keep_separators: true,
            },
            2 => FieldAction::Hash {
                encoding: HashEncoding::Hex,
            },
            3 => FieldAction::Pseudonymise {
                key_id: "k1".into(),
            },
            4 => FieldAction::Generalise(Generalisation::DateToYear),
            5 => FieldAction::Generalise(Generalisation::NumberBucket { width: 7 }),
            6 => FieldAction::Encrypt,
            _ => FieldAction::Remove,
        };
        (path, action)
    });
    let unclassified = if head.first().is_some_and(|b| b & 1 == 1) {
        Unclassified::Keep
    } else {
        Unclassified::Remove
    };
    let Ok(plan) = Plan::build(rules.collect(), unclassified) else {
        return;
    };
    let plan = plan.with_control_keys(if withhold {
        ControlKeys::Withhold
    } else {
        ControlKeys::Remove
    });
    let keys = KeyRing::new().with_key("k1", &[7; 32]).unwrap();
    let recipient = RecipientKey::from_jwk(&serde_json::json!({"kty": "EC", "crv": "P-256", "kid": "r",
        "x": "weNJy2HscCSM6AEDTDg04biOvhFhyyWvOHQfeF_PxMQ", "y": "e8lnCO-AlStT-NJVX-crhB7QRYhiix03illJOVAOyck"})).unwrap();
    let mut counter = 0u8;
    let mut random = |buf: &mut [u8]| {
        buf.iter_mut().for_each(|b| {
            counter = counter.wrapping_add(1);
            *b = counter
        })
    };
    let mut cx = RedactContext {
        pseudonym_keys: &keys,
        grantee: Some("g"),
        recipient: Some(&recipient),
        random: &mut random,
    };
    if let Ok(out) = redact(
        &plan,
        body,
        Limits {
            max_bytes: 1 << 16,
            max_depth: 32,
        },
        &mut cx,
    ) {
        assert!(serde_json::from_slice::<serde_json::Value>(&out.body).is_ok());
    }
});
