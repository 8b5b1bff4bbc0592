//! JWKS documents through `KeySet::from_jwks`, `from_jwks_lenient`, `from_jwks_value` and
//! `refresh` (strict acceptance implies lenient acceptance of the same keys); every
//! key accepted is then asked for its thumbprint and to verify a junk signature under
//! every algorithm, which it must refuse. Nothing may panic.
#![no_main]

use consentry_core::token::{Algorithm, KeySet};
use libfuzzer_sys::fuzz_target;

const ALGORITHMS: [Algorithm; 4] = [
    Algorithm::Es256,
    Algorithm::Rs256,
    Algorithm::Ps256,
    Algorithm::EdDsa,
];

fuzz_target!(|data: &[u8]| {
    let strict = KeySet::from_jwks(data);
    let Ok((lenient, skipped)) = KeySet::from_jwks_lenient(data) else {
        assert!(strict.is_err(), "strict accepted what lenient refused");
        return;
    };
    if let Ok(strict) = strict {
        assert!(skipped.is_empty() && strict.fingerprint() == lenient.fingerprint());
    }
    if let Ok(value) = serde_json::from_slice(data) {
        let _ = KeySet::from_jwks_value(&value);
    }
    let _ = lenient.refresh(data);
    let _ = lenient.merged(&lenient).fingerprint();
    for key in lenient.iter() {
        let _ = key.thumbprint();
        for alg in ALGORITHMS {
            let _ = key.fits(alg);
            assert!(key.verify(alg, b"message", &[1; 64]).is_err());
        }
    }
});
