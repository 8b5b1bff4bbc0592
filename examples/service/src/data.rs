//! The patient data: loaded once, kept as the exact bytes of the data file.
//!
//! Every body the service sends is a slice of the stored file or a concatenation
//! of such slices, never a re-serialisation: the plugin's promise that untouched
//! bytes come out unchanged (number text, key order, escapes) can only be tested
//! against an upstream that does not normalise them itself.

use std::collections::HashMap;
use std::io;
use std::ops::Range;
use std::path::Path;
use std::sync::Arc;

use axum::body::Bytes;
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::bank::Bank;
use crate::consent::{ConsentConfig, ConsentState};

/// The checked-in data set (`examples/data/patients.json`), embedded so the
/// binary and in-process tests work from any working directory.
pub const BUILTIN_PATIENTS_JSON: &[u8] = include_bytes!("../../data/patients.json");

/// Size the generated history of each patient grows to (at most): 64 KiB.
pub const HISTORY_TARGET_LEN: usize = 64 * 1024;

/// The loaded data sets (patients, bank accounts) and the consent endpoints' state,
/// cheap to clone and share between connections.
#[derive(Clone, Debug)]
pub struct ServiceState {
    inner: Arc<Data>,
    bank: Bank,
    consent: ConsentState,
}

#[derive(Debug)]
struct Data {
    ids: Vec<String>,
    patients: HashMap<String, Patient>,
    summaries: Bytes,
}

#[derive(Debug)]
struct Patient {
    record: Bytes,
    history: Bytes,
    billing: Bytes,
}

/// The parts of a record the service needs to locate; everything else is
/// carried along as opaque bytes.
#[derive(Deserialize)]
struct RecordView<'a> {
    #[serde(borrow)]
    id: &'a RawValue,
    #[serde(borrow)]
    identity: IdentityView<'a>,
    #[serde(borrow)]
    clinical: ClinicalView<'a>,
    #[serde(borrow)]
    billing: &'a RawValue,
    #[serde(borrow)]
    updated_at: &'a RawValue,
}

#[derive(Deserialize)]
struct IdentityView<'a> {
    #[serde(borrow)]
    name: &'a RawValue,
}

#[derive(Deserialize)]
struct ClinicalView<'a> {
    #[serde(borrow)]
    encounters: &'a RawValue,
}

fn invalid(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

/// Where `inner` (a sub-slice of `outer`) sits inside `outer`.
fn range_in(outer: &str, inner: &str) -> Range<usize> {
    let start = (inner.as_ptr() as usize).saturating_sub(outer.as_ptr() as usize);
    start..start + inner.len()
}

impl ServiceState {
    /// The checked-in data set.
    pub fn builtin() -> io::Result<Self> {
        Self::from_json(Bytes::from_static(BUILTIN_PATIENTS_JSON))
    }

    /// Loads a data file shaped like `examples/data/patients.json`.
    pub fn load(path: &Path) -> io::Result<Self> {
        Self::from_json(Bytes::from(std::fs::read(path)?))
    }

    /// Parses a JSON array of patient records; each record is kept as the exact
    /// slice of `file` it was written as.
    pub fn from_json(file: Bytes) -> io::Result<Self> {
        let text = std::str::from_utf8(&file).map_err(|e| invalid(format!("not UTF-8: {e}")))?;
        let raws: Vec<&RawValue> =
            serde_json::from_str(text).map_err(|e| invalid(format!("patients: {e}")))?;
        let mut ids = Vec::with_capacity(raws.len());
        let mut patients = HashMap::with_capacity(raws.len());
        let mut summaries = Vec::from(&b"{\"patients\":["[..]);
        for raw in raws {
            let record_text = raw.get();
            let view: RecordView<'_> = serde_json::from_str(record_text)
                .map_err(|e| invalid(format!("patient record: {e}")))?;
            let id: String = serde_json::from_str(view.id.get())
                .map_err(|e| invalid(format!("patient id: {e}")))?;
            if patients.contains_key(&id) {
                return Err(invalid(format!("duplicate patient id {id}")));
            }
            let record = file.slice(range_in(text, record_text));
            let encounters = range_in(record_text, view.clinical.encounters.get());
            let history = Bytes::from(history_body(&id, &record, encounters));

            let mut billing = Vec::with_capacity(view.billing.get().len() + 32);
            billing.extend_from_slice(b"{\"id\":");
            billing.extend_from_slice(view.id.get().as_bytes());
            billing.extend_from_slice(b",\"billing\":");
            billing.extend_from_slice(view.billing.get().as_bytes());
            billing.push(b'}');

            if !ids.is_empty() {
                summaries.push(b',');
            }
            summaries.extend_from_slice(b"{\"id\":");
            summaries.extend_from_slice(view.id.get().as_bytes());
            summaries.extend_from_slice(b",\"identity\":{\"name\":");
            summaries.extend_from_slice(view.identity.name.get().as_bytes());
            summaries.extend_from_slice(b"},\"updated_at\":");
            summaries.extend_from_slice(view.updated_at.get().as_bytes());
            summaries.push(b'}');

            ids.push(id.clone());
            patients.insert(
                id,
                Patient {
                    record,
                    history,
                    billing: Bytes::from(billing),
                },
            );
        }
        summaries.extend_from_slice(b"]}");
        Ok(Self {
            inner: Arc::new(Data {
                ids,
                patients,
                summaries: Bytes::from(summaries),
            }),
            bank: Bank::builtin()?,
            consent: ConsentState::new(ConsentConfig::builtin()?)?,
        })
    }

    /// The same data with the consent endpoints started from `config` instead of
    /// [`ConsentConfig::builtin`].
    pub fn with_consent(self, config: ConsentConfig) -> io::Result<Self> {
        Ok(Self {
            consent: ConsentState::new(config)?,
            ..self
        })
    }

    /// The same patients with these bank accounts instead of [`Bank::builtin`].
    pub fn with_bank(self, bank: Bank) -> Self {
        Self { bank, ..self }
    }

    /// The bank's accounts (the open-banking routes).
    pub fn bank(&self) -> &Bank {
        &self.bank
    }

    /// The consent endpoints' state (JWKS, status lists).
    pub fn consent(&self) -> &ConsentState {
        &self.consent
    }

    /// Patient ids in file order.
    pub fn ids(&self) -> &[String] {
        &self.inner.ids
    }

    /// The full record of a patient, exactly as stored.
    pub fn record(&self, id: &str) -> Option<Bytes> {
        self.inner.patients.get(id).map(|p| p.record.clone())
    }

    /// The record with its long generated encounter history (about 64 KiB).
    pub fn history(&self, id: &str) -> Option<Bytes> {
        self.inner.patients.get(id).map(|p| p.history.clone())
    }

    /// `{"id":…,"billing":{…}}` for a patient.
    pub fn billing(&self, id: &str) -> Option<Bytes> {
        self.inner.patients.get(id).map(|p| p.billing.clone())
    }

    /// `{"patients":[{"id","identity":{"name"},"updated_at"}…]}`.
    pub fn summaries(&self) -> Bytes {
        self.inner.summaries.clone()
    }

    /// `{"records":[…]}` for the given ids (repeats allowed), or the first
    /// unknown id.
    pub fn records<'a>(&self, ids: impl IntoIterator<Item = &'a str>) -> Result<Bytes, &'a str> {
        let mut body = Vec::from(&b"{\"records\":["[..]);
        for (i, id) in ids.into_iter().enumerate() {
            let Some(patient) = self.inner.patients.get(id) else {
                return Err(id);
            };
            if i > 0 {
                body.push(b',');
            }
            body.extend_from_slice(&patient.record);
        }
        body.extend_from_slice(b"]}");
        Ok(Bytes::from(body))
    }
}

/// A small deterministic generator (SplitMix64): the history must be the same
/// bytes on every machine and every run, so benchmarks compare like with like.
pub(crate) struct SplitMix(u64);

impl SplitMix {
    pub(crate) fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A value in `0..n` (n > 0).
    pub(crate) fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items
            .get(self.below(items.len()))
            .copied()
            .unwrap_or_default()
    }
}

/// FNV-1a, to derive a per-patient seed from the id.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

const ENCOUNTER_TYPES: &[&str] = &[
    "outpatient",
    "outpatient",
    "telephone",
    "video",
    "inpatient",
    "emergency",
    "home-visit",
    "pharmacy",
];

const PRACTITIONERS: &[&str] = &[
    "Dr Imran Siddiqui",
    "Dr Helen Marsh",
    "Nurse Abigail Trent",
    "Dr Tobias Renshaw",
    "Dr Fiona Gallagher",
    "Dr Chlo\\u00e9 Dubois",
    "Pharmacist Owen Pryce",
    "Dr Aoife Kavanagh",
    "Physiotherapist Lena Brandt",
    "Dr Kwame Asante",
];

/// Sentences of clinical free text, already JSON-escaped. Some carry escapes
/// (`\"`, `\n`, `\u2013`, `\\`) and numbers so that chunk splits land inside them.
const NOTE_SENTENCES: &[&str] = &[
    "Patient seen for routine follow-up.",
    "Reports feeling generally well; appetite and sleep unchanged.",
    "BP 132/84 seated, pulse 72 regular.",
    "Blood tests requested: FBC, U\\u0026E, LFT, HbA1c and lipids.",
    "Results reviewed with the patient and explained in plain language.",
    "Medication reconciled; no changes made today.",
    "Patient asked \\\"is this something I'll have for life?\\\" \\u2013 discussed long-term management.",
    "Advised on diet, alcohol (currently ~8 units/week) and activity.",
    "Inhaler technique observed and corrected.\\nSpacer provided.",
    "Wound reviewed: healing well, no signs of infection.",
    "Referred to physiotherapy for lower back pain (6 sessions).",
    "Flu vaccine offered and administered, left deltoid.",
    "Weight 72.5 kg, BMI 26.0; target agreed at 70 kg by next review.",
    "Discussed results of the scan stored at \\\\\\\\pacs01\\\\studies\\\\2019 with the radiologist.",
    "Safety-netting advice given: return if symptoms worsen or new symptoms appear.",
    "Telephone consultation; patient at work, call kept brief.",
    "Repeat prescription issued for 56 days.",
    "Seen with partner present, at the patient's request.",
    "Sleep diary reviewed.\\tAverage 6.5 h/night.",
    "No known drug allergies newly reported.",
    "Plan:\\n1) continue current treatment\\n2) review in 3 months\\n3) bloods before next visit.",
    "Temperature 37.9 \\u00b0C; throat mildly inflamed, no exudate.",
];

/// The record with a long, generated encounter history inserted (oldest first)
/// at the start of `clinical.encounters`, growing to at most
/// [`HISTORY_TARGET_LEN`] bytes.
fn history_body(id: &str, record: &[u8], encounters: Range<usize>) -> Vec<u8> {
    let head = record.get(..encounters.start + 1).unwrap_or(record); // through '['
    let tail = record.get(encounters.start + 1..).unwrap_or_default();
    let array_empty = tail
        .iter()
        .find(|b| !b.is_ascii_whitespace())
        .is_some_and(|b| *b == b']');
    let mut rng = SplitMix::new(0x00C0_5E17_0000_0001 ^ fnv1a(id.as_bytes()));
    let escaped_id = String::from_utf8_lossy(id.as_bytes()).replace(['"', '\\'], "_");

    let mut items: Vec<String> = Vec::new();
    let mut total = record.len();
    let (mut year, mut month) = (2011u32, 1u32);
    for n in 1.. {
        let day = 1 + rng.below(28);
        let sentences = 2 + rng.below(4);
        let mut notes = String::new();
        for s in 0..sentences {
            if s > 0 {
                notes.push(' ');
            }
            notes.push_str(rng.pick(NOTE_SENTENCES));
        }
        let item = format!(
            "\n      {{\n        \"id\": \"enc-{escaped_id}-h{n:04}\",\n        \"date\": \"{year:04}-{month:02}-{day:02}\",\n        \"type\": \"{}\",\n        \"practitioner\": \"{}\",\n        \"notes\": \"{notes}\"\n      }},",
            rng.pick(ENCOUNTER_TYPES),
            rng.pick(PRACTITIONERS),
        );
        if total + item.len() > HISTORY_TARGET_LEN {
            break;
        }
        total += item.len();
        items.push(item);
        month += 1;
        if month > 12 {
            month = 1;
            year += 1;
        }
    }
    if array_empty && let Some(last) = items.last_mut() {
        last.pop(); // no element follows: drop the trailing comma
        total -= 1;
    }
    let mut out = Vec::with_capacity(total);
    out.extend_from_slice(head);
    for item in &items {
        out.extend_from_slice(item.as_bytes());
    }
    out.extend_from_slice(tail);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// FNV-1a 64 of a body, to pin generated bytes.
    fn hash(b: &[u8]) -> u64 {
        fnv1a(b)
    }

    #[test]
    fn builtin_loads_with_the_expected_patients() {
        let s = ServiceState::builtin().unwrap();
        assert_eq!(s.ids(), ["p-1", "p-2", "p-3", "p-4", "p-5", "p-6"]);
        for id in s.ids() {
            let rec: serde_json::Value = serde_json::from_slice(&s.record(id).unwrap()).unwrap();
            assert_eq!(rec["id"], id.as_str());
            assert_eq!(rec["resourceType"], "PatientRecord");
            for group in ["identity", "contact", "clinical", "billing", "updated_at"] {
                assert!(rec.get(group).is_some(), "{id} lacks {group}");
            }
        }
        // A minor whose guardian is another patient.
        let p5: serde_json::Value = serde_json::from_slice(&s.record("p-5").unwrap()).unwrap();
        assert_eq!(p5["guardians"], serde_json::json!(["p-4"]));
        assert!(s.record("p-4").is_some());
    }

    #[test]
    fn records_are_exact_slices_of_the_file() {
        let s = ServiceState::builtin().unwrap();
        let file = BUILTIN_PATIENTS_JSON;
        for id in s.ids() {
            let rec = s.record(id).unwrap();
            assert!(file.windows(rec.len()).any(|w| w == &rec[..]), "{id}");
        }
        let p1 = s.record("p-1").unwrap();
        let text = std::str::from_utf8(&p1).unwrap();
        for number in ["120.50", "1e3", "-0.0", "12345678901234567890", "6.90"] {
            assert!(text.contains(number), "{number}");
        }
    }

    #[test]
    fn p1_is_the_5_kb_record() {
        let len = ServiceState::builtin()
            .unwrap()
            .record("p-1")
            .unwrap()
            .len();
        assert!((4_800..=5_400).contains(&len), "{len}");
        assert_eq!(len, 5_125);
    }

    #[test]
    fn history_is_valid_stable_and_about_64_kb() {
        let s = ServiceState::builtin().unwrap();
        let h = s.history("p-1").unwrap();
        assert!((60_000..=68_000).contains(&h.len()), "{}", h.len());
        let v: serde_json::Value = serde_json::from_slice(&h).unwrap();
        let encounters = v["clinical"]["encounters"].as_array().unwrap();
        assert!(encounters.len() > 100, "{}", encounters.len());
        // The original encounters close the history, unchanged.
        assert_eq!(encounters.last().unwrap()["id"], "enc-p-1-0004");
        // Pinned: the generated bytes must never change silently.
        assert_eq!((h.len(), hash(&h)), (65_340, 2_487_249_260_111_113_648));
        for id in s.ids() {
            let h = s.history(id).unwrap();
            let v: serde_json::Value = serde_json::from_slice(&h).unwrap();
            let r: serde_json::Value = serde_json::from_slice(&s.record(id).unwrap()).unwrap();
            assert_eq!(v["billing"], r["billing"]);
            assert!(h.len() > 60_000 && h.len() <= HISTORY_TARGET_LEN, "{id}");
        }
    }

    #[test]
    fn history_handles_an_empty_encounter_array() {
        let file = br#"[{"id":"x","identity":{"name":{}},"clinical":{"encounters":[ ]},"billing":{},"updated_at":"t"}]"#;
        let s = ServiceState::from_json(Bytes::from_static(file)).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&s.history("x").unwrap()).unwrap();
        assert!(v["clinical"]["encounters"].as_array().unwrap().len() > 100);
    }

    #[test]
    fn derived_bodies() {
        let s = ServiceState::builtin().unwrap();
        let b = s.billing("p-1").unwrap();
        let text = std::str::from_utf8(&b).unwrap();
        assert!(text.starts_with("{\"id\":\"p-1\",\"billing\":{"));
        assert!(text.contains("\"amount\": 120.50"));
        let sum: serde_json::Value = serde_json::from_slice(&s.summaries()).unwrap();
        assert_eq!(sum["patients"].as_array().unwrap().len(), 6);
        assert_eq!(
            sum["patients"][5]["identity"]["name"]["given"],
            "Siobh\u{e1}n"
        );
        assert_eq!(s.records(["p-2", "nope"]), Err("nope"));
        let r = s.records(["p-1", "p-2"]).unwrap();
        let mut want = b"{\"records\":[".to_vec();
        want.extend_from_slice(&s.record("p-1").unwrap());
        want.push(b',');
        want.extend_from_slice(&s.record("p-2").unwrap());
        want.extend_from_slice(b"]}");
        assert_eq!(&r[..], &want[..]);
    }

    #[test]
    fn rejects_bad_data() {
        assert!(ServiceState::from_json(Bytes::from_static(b"{}")).is_err());
        assert!(ServiceState::from_json(Bytes::from_static(b"[{\"id\":\"a\"}]")).is_err());
    }
}
