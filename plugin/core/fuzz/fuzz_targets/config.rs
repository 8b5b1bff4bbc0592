//! Configuration documents through `Config::from_json`, with every secret's
//! environment variable set to a valid key ring. It must never panic: a bad document is
//! a list of errors, and the plugin refuses to start.
#![no_main]

use consentry_core::config::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let env = |_: &str| Some("k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8".to_owned());
    if let Err(errors) = Config::from_json(data, &env) {
        assert!(!errors.0.is_empty());
        let _ = errors.to_string();
    }
});
