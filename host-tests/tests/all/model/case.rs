//! A model case: the streams (what each asks, how its bodies are cut, which
//! protocol), how the consent service answers the plugin's calls, and the order of
//! events, all drawn from one seed. A case is plain data, so a failing one can be
//! shrunk and replayed.

use std::collections::BTreeMap;
use std::time::Duration;

use consentry_host::world::Random;
use consentry_host::{Request, Response, UpstreamRequest, mint};
use serde_json::{Value, json};

use crate::support::{T0, at, example_policy, persona_claims, stored_record};

/// Every value planted for the model contains this; none may reach a place the
/// decision does not release it to.
pub const CANARY: &str = "cnry-";

/// What a stream asks, and what its upstream answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// The insurer reads p-1: billing and identity, the phone masked.
    InsurerRecord,
    /// The research lab reads p-2: clinical, identity pseudonymised.
    ResearchRecord,
    /// The patient reads her own record: every domain.
    PatientRecord,
    /// The same as `HEAD`: headers only.
    PatientHead,
    /// The insurer's claims search: query, headers and JSON body minimised.
    ClaimsSearch,
    /// The claims search with a body that is not JSON: refused after the allow.
    ClaimsNotJson,
    NoToken,
    /// A valid token for a purpose the policy does not serve.
    Stranger,
    /// The insurer asks for another patient.
    WrongPatient,
    /// The insurer's token signed with a key rotated in since the keys were
    /// loaded: the plugin refetches the JWKS for its unknown kid.
    RotatedKey,
    /// The insurer reads p-1; the upstream fails with a 500 that names values.
    UpstreamError,
    /// The insurer reads p-1; the upstream answers 200 with invalid JSON.
    UpstreamInvalid,
}

impl Kind {
    pub const ALL: [Kind; 12] = [
        Kind::InsurerRecord,
        Kind::ResearchRecord,
        Kind::PatientRecord,
        Kind::PatientHead,
        Kind::ClaimsSearch,
        Kind::ClaimsNotJson,
        Kind::NoToken,
        Kind::Stranger,
        Kind::WrongPatient,
        Kind::RotatedKey,
        Kind::UpstreamError,
        Kind::UpstreamInvalid,
    ];

    /// Whether the policy can let this request reach the upstream (when what it
    /// depends on answers in time). Anything else must never get there.
    pub fn may_allow(self) -> bool {
        !matches!(
            self,
            Kind::ClaimsNotJson | Kind::NoToken | Kind::Stranger | Kind::WrongPatient
        )
    }

    fn has_body(self) -> bool {
        matches!(self, Kind::ClaimsSearch | Kind::ClaimsNotJson)
    }

    /// The upstream answers with a body the plugin can redact and release.
    pub fn releasable(self) -> bool {
        self.may_allow() && !matches!(self, Kind::UpstreamError | Kind::UpstreamInvalid)
    }
}

/// One stream of a case.
#[derive(Debug, Clone)]
pub struct StreamSpec {
    pub kind: Kind,
    pub http2: bool,
    /// Where the request body is cut, as offsets; an empty body with `cuts`
    /// `[0]` is one empty data frame (HTTP/2).
    pub request_cuts: Vec<usize>,
    pub request_trailers: bool,
    pub response_cuts: Vec<usize>,
    pub response_trailers: bool,
    /// The upstream sends `content-length` (else its body is chunked).
    pub response_length: bool,
}

/// How the network answers one of the plugin's calls (JWKS, status list).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// At once (at the next timer).
    Early,
    /// After this many milliseconds, within the plugin's wait.
    Within(u64),
    /// After the plugin stopped waiting (its wait is 3 s, the call's timeout 5 s).
    Late(u64),
    /// Never: Envoy answers 504 when the call times out.
    Never,
    /// Connection refused: Envoy answers 503 at once.
    Unreachable,
    /// The service fails with 500.
    ServerError,
}

/// What happens next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Act {
    /// The client of stream `n` sends its request headers.
    Begin(usize),
    /// Stream `n` moves by one host callback, if it can.
    Step(usize),
    /// Time passes: every timer due fires (ticks, calls' answers).
    Advance(u64),
    /// The client of stream `n` resets it.
    Reset(usize),
    /// From now on, host call `FAULTY_CALLS[n]` fails `times` times.
    Fault { call: usize, times: u64 },
}

/// Host calls the fault model makes fail, with the status each returns then. The
/// log and the proxy's clock are left alone: without either no audit record can be
/// written at all (the fault suite covers both).
pub const FAULTY_CALLS: [(&str, u32); 16] = [
    ("proxy_get_buffer_bytes", INTERNAL_FAILURE),
    ("proxy_set_buffer_bytes", INTERNAL_FAILURE),
    ("proxy_get_header_map_pairs", INTERNAL_FAILURE),
    ("proxy_replace_header_map_value", INTERNAL_FAILURE),
    ("proxy_remove_header_map_value", INTERNAL_FAILURE),
    ("proxy_get_property", INTERNAL_FAILURE),
    ("proxy_get_shared_data", INTERNAL_FAILURE),
    ("proxy_set_shared_data", INTERNAL_FAILURE),
    ("proxy_continue_stream", INTERNAL_FAILURE),
    ("proxy_close_stream", INTERNAL_FAILURE),
    ("proxy_send_local_response", INTERNAL_FAILURE),
    ("proxy_http_call", BAD_ARGUMENT),
    ("proxy_set_effective_context", BAD_ARGUMENT),
    ("proxy_increment_metric", INTERNAL_FAILURE),
    ("random_get", EIO),
    ("clock_time_get", EIO),
];
const INTERNAL_FAILURE: u32 = 10;
const BAD_ARGUMENT: u32 = 2;
const EIO: u32 = 29;

#[derive(Debug, Clone)]
pub struct Case {
    pub seed: u64,
    pub streams: Vec<StreamSpec>,
    /// Answers to the plugin's calls, in the order they are made (cycled).
    pub answers: Vec<Answer>,
    pub acts: Vec<Act>,
}

fn below(rng: &mut Random, n: u64) -> u64 {
    rng.next_u64() % n.max(1)
}

fn chance(rng: &mut Random, percent: u64) -> bool {
    below(rng, 100) < percent
}

/// Up to `max` cut points in a body of `len` bytes, sorted, anywhere.
fn cuts(rng: &mut Random, len: usize, max: u64) -> Vec<usize> {
    let n = below(rng, max + 1);
    let mut c: Vec<usize> = (0..n)
        .map(|_| below(rng, len as u64 + 1) as usize)
        .collect();
    c.sort_unstable();
    c
}

impl Case {
    pub fn generate(seed: u64) -> Case {
        Self::generate_with(seed, false)
    }

    /// A case whose host calls fail now and then (`faults`).
    pub fn generate_with(seed: u64, faults: bool) -> Case {
        let rng = &mut Random::seeded(seed);
        let n = 1 + below(rng, 4) as usize;
        let streams: Vec<StreamSpec> = (0..n)
            .map(|_| {
                let kind = Kind::ALL[below(rng, Kind::ALL.len() as u64) as usize];
                let http2 = chance(rng, 50);
                let request_len = request_body(kind).len();
                let mut request_cuts = cuts(rng, request_len, 4);
                if !kind.has_body() && http2 && chance(rng, 15) {
                    // Headers without end of stream, then an empty data frame.
                    request_cuts = vec![0];
                }
                let response_trailers = chance(rng, 20);
                StreamSpec {
                    kind,
                    http2,
                    request_cuts,
                    request_trailers: chance(rng, if kind.has_body() { 30 } else { 8 }),
                    response_cuts: cuts(rng, 6000, 5),
                    response_trailers,
                    response_length: !response_trailers && chance(rng, 60),
                }
            })
            .collect();
        let answers = (0..4)
            .map(|_| match below(rng, 10) {
                0..=3 => Answer::Early,
                4 | 5 => Answer::Within(1 + below(rng, 2500)),
                6 => Answer::Late(3100 + below(rng, 1500)),
                7 => Answer::Never,
                8 => Answer::Unreachable,
                _ => Answer::ServerError,
            })
            .collect();
        let mut acts: Vec<Act> = (0..8 + below(rng, 120))
            .map(|_| match below(rng, 100) {
                0..=69 => Act::Step(below(rng, n as u64) as usize),
                70..=93 => Act::Advance(match below(rng, 6) {
                    0 => 0,
                    1 => 10,
                    2 => 120,
                    3 => 400,
                    4 => 1500,
                    _ => 3200,
                }),
                94..=96 => Act::Reset(below(rng, n as u64) as usize),
                _ if faults => Act::Fault {
                    call: below(rng, FAULTY_CALLS.len() as u64) as usize,
                    times: 1 + below(rng, 3),
                },
                _ => Act::Step(below(rng, n as u64) as usize),
            })
            .collect();
        for k in 0..n {
            let at = below(rng, acts.len() as u64 / 2 + 1) as usize;
            acts.insert(at, Act::Begin(k));
        }
        Case {
            seed,
            streams,
            answers,
            acts,
        }
    }
}

// ── What the streams send and what their upstream answers ──────────────────────

/// Tokens and reference answers shared by every case.
pub struct Fixtures {
    pub config: String,
    /// The token each kind sends, if any.
    pub tokens: BTreeMap<Kind, String>,
    /// What the client gets for each releasable kind when everything answers
    /// at once: the redaction never depends on the order of events.
    pub references: BTreeMap<Kind, Vec<u8>>,
}

/// The example policy, with calls that may answer after the plugin's wait.
pub fn model_policy() -> String {
    example_policy(|p| {
        let issuer = &mut p["issuers"][0];
        issuer["keys"]["remote"]["timeout_ms"] = json!(5000);
        issuer["revocation"]["status_list"]["timeout_ms"] = json!(5000);
    })
}

impl Fixtures {
    pub fn new() -> Fixtures {
        let mut tokens = BTreeMap::new();
        let persona = |p: &str| mint::persona_token(p, at(T0)).unwrap();
        for (kind, p) in [
            (Kind::InsurerRecord, "insurer"),
            (Kind::ResearchRecord, "research-lab"),
            (Kind::PatientRecord, "patient"),
            (Kind::PatientHead, "patient"),
            (Kind::ClaimsSearch, "insurer"),
            (Kind::ClaimsNotJson, "insurer"),
            (Kind::Stranger, "stranger"),
            (Kind::WrongPatient, "insurer"),
            (Kind::UpstreamError, "insurer"),
            (Kind::UpstreamInvalid, "insurer"),
        ] {
            tokens.insert(kind, persona(p));
        }
        let rotated = mint::sign(
            &Value::Object(persona_claims("insurer", T0, 3600)),
            mint::NEXT_KEY_PEM,
            mint::NEXT_KID,
            mint::Alg::ES256,
        )
        .unwrap();
        tokens.insert(Kind::RotatedKey, rotated);
        Fixtures {
            config: model_policy(),
            tokens,
            references: BTreeMap::new(),
        }
    }
}

/// The request body a kind sends (empty: none).
pub fn request_body(kind: Kind) -> Vec<u8> {
    match kind {
        Kind::ClaimsSearch => json!({
            "claim_id": "C-2026-0412",
            "invoice_ids": ["inv-1", "inv-2"],
            "period": {"from": "2026-01-01", "to": "2026-03-31"},
            "diagnosis": "cnry-request-diagnosis",
            "notes": {"free_text": "cnry-request-notes"}
        })
        .to_string()
        .into_bytes(),
        Kind::ClaimsNotJson => b"claim C-2026-0412 cnry-request-text".to_vec(),
        _ => Vec::new(),
    }
}

/// The `x-request-id` of stream `n` of a case: how its audit record is found.
pub fn request_id(seed: u64, n: usize) -> String {
    format!("model-{seed:016x}-{n}")
}

/// Splits `body` at `cuts` (offsets, clamped); empty pieces are kept only as
/// one empty frame for an empty body.
fn pieces(body: &[u8], cuts: &[usize]) -> Vec<Vec<u8>> {
    if body.is_empty() {
        return if cuts.is_empty() {
            Vec::new()
        } else {
            vec![Vec::new()]
        };
    }
    let mut out = Vec::new();
    let mut from = 0;
    for &c in cuts {
        let c = c.min(body.len());
        if c > from {
            out.push(body[from..c].to_vec());
            from = c;
        }
    }
    out.push(body[from..].to_vec());
    out
}

/// The client's request for stream `n`, with forged provenance and identity
/// headers a client must not get through.
pub fn request(spec: &StreamSpec, fx: &Fixtures, seed: u64, n: usize) -> Request {
    let kind = spec.kind;
    let mut r = match kind {
        Kind::InsurerRecord
        | Kind::PatientRecord
        | Kind::RotatedKey
        | Kind::UpstreamError
        | Kind::UpstreamInvalid
        | Kind::NoToken
        | Kind::Stranger => Request::get("/patients/p-1"),
        Kind::ResearchRecord | Kind::WrongPatient => Request::get("/patients/p-2"),
        Kind::PatientHead => Request::new("HEAD", "/patients/p-1"),
        Kind::ClaimsSearch => Request::post("/echo?from=2026-01&secret=cnry-query&to=2026-03")
            .header("content-type", "application/json")
            .header("x-claim-reference", "ref-77"),
        Kind::ClaimsNotJson => Request::post("/echo?from=2026-01")
            .header("content-type", "text/plain")
            .header("x-claim-reference", "ref-77"),
    };
    if let Some(token) = fx.tokens.get(&kind) {
        r = r.bearer(token);
    }
    r = r
        .header("x-request-id", request_id(seed, n))
        .header("x-consent-id", "cnry-forged-consent")
        .header("x-consent-decision", "cnry-forged-decision")
        .header("x-forwarded-client-cert", "Hash=cnry-forged-cert");
    if kind.has_body() {
        // A header the claims search does not need (other routes forward it).
        r = r.header("x-internal-note", "cnry-request-header");
    }
    r.chunks = pieces(&request_body(kind), &spec.request_cuts);
    if spec.request_trailers {
        // Provenance is the plugin's to give, in headers or trailers alike.
        r = r.trailer("x-consent-id", "cnry-forged-trailer");
        if kind.has_body() {
            // A trailer the claims search does not need.
            r = r.trailer("x-request-checksum", "cnry-request-trailer");
        }
    }
    if spec.http2 {
        r = r.http2();
    }
    r
}

/// A record with values planted where the persona must not see them: fields it
/// has no consent for, fields the policy never classified, and (for the
/// research lab) identity values it may see only pseudonymised.
fn planted(id: &str, kind: Kind) -> Vec<u8> {
    let mut v: Value = serde_json::from_slice(&stored_record(id)).unwrap();
    v["internal_score"] = json!("cnry-unclassified");
    match kind {
        // The patient sees every classified field of her record.
        Kind::PatientRecord | Kind::PatientHead => {}
        Kind::ResearchRecord => {
            v["identity"]["national_id"] = json!("cnry-national-id");
            v["identity"]["name"]["family"] = json!("cnry-name-pseudonymised");
            v["identity"]["mrn"] = json!("cnry-mrn-pseudonymised");
            v["contact"]["email"] = json!("cnry-contact-email");
            v["billing"]["policy_number"] = json!("cnry-billing-policy");
        }
        _ => {
            // Special: beyond what the insurer's rule releases of identity.
            v["identity"]["national_id"] = json!("cnry-national-id");
            v["clinical"]["conditions"][0]["display"] = json!("cnry-clinical-condition");
            v["contact"]["email"] = json!("cnry-contact-email");
            v["contact"]["address"]["city"] = json!("cnry-contact-city");
        }
    }
    // Pretty-printed, as the example service sends it: cuts fall anywhere.
    serde_json::to_vec_pretty(&v).unwrap()
}

/// What the upstream answers stream `spec` once it has the whole request.
pub fn response(spec: &StreamSpec, received: &UpstreamRequest) -> Response {
    let kind = spec.kind;
    let (status, body) = match kind {
        Kind::ResearchRecord | Kind::WrongPatient => (200, planted("p-2", kind)),
        Kind::ClaimsSearch | Kind::ClaimsNotJson => {
            // The echo service: what it received, and a field of its own.
            let body: Value = serde_json::from_slice(&received.body)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&received.body).into()));
            let echo = json!({
                "method": received.method,
                "path": received.path,
                "body": body,
                "server_secret": "cnry-echo-internal",
            });
            (200, serde_json::to_vec(&echo).unwrap())
        }
        Kind::UpstreamError => (
            500,
            br#"{"error":"db timeout","row":{"diagnosis":"cnry-error-detail"}}"#.to_vec(),
        ),
        Kind::UpstreamInvalid => (
            200,
            br#"{"id":"p-1","clinical":{"display":"cnry-invalid-json"},"#.to_vec(),
        ),
        _ => (200, planted("p-1", kind)),
    };
    let mut r = Response::new(status)
        .header("content-type", "application/json")
        .header("x-backend-node", "cnry-response-header");
    if kind == Kind::PatientHead {
        // HEAD: the length of the body a GET would get, and no body.
        return r.header("content-length", body.len().to_string());
    }
    r.chunks = pieces(&body, &spec.response_cuts);
    if spec.response_length {
        r = r.header("content-length", body.len().to_string());
    }
    if spec.response_trailers {
        r = r.trailer("x-backend-trace", "cnry-response-trailer");
    }
    r
}

/// How long a client waits for a stream that cannot move before giving up.
pub const PATIENCE: Duration = Duration::from_secs(30);
