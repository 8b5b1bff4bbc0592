//! The audit trail, read and written. Even first byte: the input is a log; every record
//! `Record::parse` accepts must come back unchanged from its canonical form, and
//! `verify` must return a verdict. Odd: the input's NUL-separated strings are written as
//! records by `AuditTrail`, and `verify` must accept the chain. Nothing may panic.
#![no_main]

use std::time::{Duration, SystemTime};

use consentry_core::audit::*;
use consentry_core::problem::Code;
use libfuzzer_sys::fuzz_target;

const ZERO: &str = ZERO_HASH;
/// 9999-12-31T23:59:59.999Z: the last time the record format can write.
const LAST_MS: u64 = 253_402_300_799_999;

fn read(log: &str, key: &AuditKey) {
    for line in log.lines() {
        let Some(text) = extract_record(line) else {
            continue;
        };
        if let Ok((record, _)) = Record::parse(text) {
            let open = record.canonical();
            let open = open.strip_suffix('}').unwrap_or(&open);
            let again = Record::parse(&format!("{open},\"hash\":\"{ZERO}\"}}"));
            assert_eq!(again, Ok((record, ZERO.to_owned())), "{text}");
        }
    }
    for keys in [&[][..], std::slice::from_ref(key)] {
        if let Err(failure) = verify(log.lines(), keys) {
            let _ = failure.to_string();
        }
    }
}

fn write(data: &[u8], key: AuditKey, keyed: bool) {
    let parts: Vec<String> = data
        .split(|&b| b == 0)
        .map(|p| String::from_utf8_lossy(p).into())
        .collect();
    let part = |i: usize| parts.get(i).map_or("", String::as_str);
    let ms = part(0)
        .bytes()
        .fold(0u64, |a, b| a.wrapping_mul(31).wrapping_add(u64::from(b)))
        % LAST_MS;
    let time = SystemTime::UNIX_EPOCH + Duration::from_millis(ms);
    let mut trail = AuditTrail::new(part(1), keyed.then(|| key.clone()));
    let mut lines = Vec::new();
    for (i, code) in [None, Some(Code::ALL[ms as usize % Code::ALL.len()])]
        .into_iter()
        .enumerate()
    {
        let mut entry = AuditEntry::new(time, part(2), part(3), Decision::Allow, code, "r");
        entry.subject = Some(part(4)).filter(|_| i == 0);
        entry.acts_for = Some(part(5));
        entry.purpose = Some(part(6));
        entry.consent_id = Some(part(7));
        entry.route = Some(part(8));
        entry.rule = Some(part(9)).filter(|_| i == 1);
        entry.status = ms as u16;
        entry
            .fields
            .released(part(10), ms)
            .redacted(part(11), Redaction::Mask, 1);
        lines.push(emission(&trail.record(entry)));
    }
    lines.push(trail.checkpoint(time, Duration::from_secs(ms)));
    let keys = if keyed { vec![key] } else { Vec::new() };
    match verify(lines.iter().map(String::as_str), &keys) {
        Ok(summary) => assert_eq!(summary.records, 3),
        Err(failure) => panic!("{failure}\n{}", lines.join("\n")),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let key = AuditKey {
        kid: "k1".into(),
        secret: vec![7; 32],
    };
    if mode & 1 == 0 {
        read(&String::from_utf8_lossy(rest), &key);
    } else {
        write(rest, key, mode & 2 != 0);
    }
});
