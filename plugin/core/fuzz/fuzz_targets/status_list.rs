//! Token Status Lists: `StatusList::decode` of (bits, lst) from the input (first byte
//! 4, 8, 16, 32 for 1, 2, 4, 8 bits), `from_bytes`
//! (whose output must encode back to the same bytes), and `from_jwt` of a status-list
//! token that the target signs over the input's claims. Nothing may panic.
#![no_main]

use std::sync::LazyLock;

use consentry_core::token::{Issuer, StatusList};
use consentry_core_fuzz::{NOW, STATUS_URI, issuer, sign};
use libfuzzer_sys::fuzz_target;

static ISSUER: LazyLock<Issuer> = LazyLock::new(issuer);

fn probe(list: &StatusList) {
    for idx in [
        0,
        1,
        7,
        8,
        list.len().saturating_sub(1),
        list.len(),
        u64::MAX,
    ] {
        let _ = list.value(idx);
        let _ = list.status(idx);
    }
    assert_eq!(
        StatusList::from_bytes(&list.to_bytes()).as_ref(),
        Some(list)
    );
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode & 3 {
        0 => {
            if let Ok(list) = StatusList::decode(
                u64::from(mode >> 2),
                &String::from_utf8_lossy(rest),
                1 << 16,
            ) {
                probe(&list);
            }
        }
        1 => {
            if let Some(list) = StatusList::from_bytes(rest) {
                assert_eq!(list.to_bytes(), rest);
                probe(&list);
            }
        }
        _ => {
            // A fixed header: this mode explores the claims.
            let jwt = sign(
                br#"{"alg":"EdDSA","kid":"fuzz","typ":"statuslist+jwt"}"#,
                rest,
            );
            if let Ok(list) =
                StatusList::from_jwt(&jwt, &ISSUER, &ISSUER.inline_keys, STATUS_URI, NOW)
            {
                probe(&list);
            }
        }
    }
});
