//! The benchmark bodies of the redactor: `{"records": [...]}` of synthetic patient
//! records, and the record's field names. Shared by the core's benchmark
//! (`plugin/core/benches/redact.rs`) and the benchmark module that runs the same cases
//! inside a `.wasm` (`host-tests/bench-wasm`), so both time the same bytes.

fn record(i: usize) -> String {
    format!(
        r#"{{"id":"p-{i:06}","name":"Patient Number {i}","ssn":"123-45-{:04}","dob":"19{:02}-0{}-1{}","balance":{}.{:02},"score":1e{},"active":{},"address":{{"street":"{} Main Street","city":"Springfield","zip":"{:05}"}},"tags":["a","b\u00e9","c"],"notes":"Free text with \"quotes\" and unicode: Zoë Ørsted {i}","visits":[{{"date":"2024-01-0{}","code":"A{}"}}]}}"#,
        i % 10_000,
        i % 100,
        1 + i % 9,
        i % 10,
        i * 7,
        i % 100,
        i % 5,
        i.is_multiple_of(2),
        i,
        i % 100_000,
        1 + i % 9,
        i % 1000,
    )
}

/// A body of about `size` bytes: `{"records": [...]}` with whitespace between records.
pub fn body(size: usize) -> Vec<u8> {
    let mut out = String::from("{\"records\": [\n");
    let mut i = 0;
    while out.len() < size.saturating_sub(100) || i == 0 {
        if i > 0 {
            out.push_str(",\n");
        }
        out.push_str("  ");
        out.push_str(&record(i));
        i += 1;
    }
    out.push_str("\n]}\n");
    out.into_bytes()
}

pub const FIELDS: [&str; 10] = [
    "ssn", "dob", "name", "balance", "address", "notes", "score", "id", "tags", "visits",
];
