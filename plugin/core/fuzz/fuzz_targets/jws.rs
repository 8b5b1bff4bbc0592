//! Consent tokens through `Verifier::verify` and `check_revocation`: the first byte picks
//! raw bytes (the strict JWS parser, up to the signature) or a header and claims that
//! the target signs (everything after the signature). It must never panic.
#![no_main]

use std::sync::LazyLock;

use consentry_core::token::Verifier;
use consentry_core_fuzz::{NOW, sign_split, verifier};
use libfuzzer_sys::fuzz_target;

static VERIFIER: LazyLock<Verifier> = LazyLock::new(verifier);

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let token = if mode & 1 == 0 {
        rest.to_vec()
    } else {
        sign_split(rest)
    };
    let _ = VERIFIER.unverified_issuer(&token);
    if let Ok(consent) = VERIFIER.verify(&token, NOW) {
        let _ = VERIFIER.check_revocation(&consent, None, NOW);
    }
});
