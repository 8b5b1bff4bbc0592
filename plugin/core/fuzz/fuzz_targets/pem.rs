//! The peer certificate reader: the input as PEM text (`pem_to_der`,
//! `spiffe_id_from_pem`, `hex_digest`), or as DER bytes wrapped in PEM, which must come
//! back out of `pem_to_der` unchanged. Nothing may panic.
#![no_main]

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use consentry_core::token::binding::{MAX_PEM_BYTES, hex_digest, pem_to_der, spiffe_id_from_pem};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let pem = if mode & 1 == 0 {
        let text = String::from_utf8_lossy(rest).into_owned();
        let _ = hex_digest(&text);
        text
    } else {
        let pem = format!(
            "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
            STANDARD.encode(rest)
        );
        if pem.len() <= MAX_PEM_BYTES {
            assert_eq!(pem_to_der(&pem).ok().as_deref(), Some(rest));
        }
        pem
    };
    let _ = pem_to_der(&pem);
    if let Ok(id) = spiffe_id_from_pem(&pem) {
        assert!(id.starts_with("spiffe://"));
    }
});
