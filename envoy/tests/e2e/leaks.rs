//! The leak test: unique markers planted everywhere a caller or an upstream can put a
//! secret (token claims, the subject, the key id, the issuer, request headers, cookies,
//! query, request bodies, upstream fields the policy removes, upstream error pages and
//! unredactable bodies, invalid tokens), run through every kind of exchange (allowed,
//! refused, upstream errors, withheld bodies), and then looked for in every client-visible
//! status line, header and body, in Envoy's log (the plugin's lines, its audit records
//! and its debug explanations included) and in every metric name and value at `/stats`.
//!
//! Two runs. At `-l info --component-log-level wasm:debug` the plugin logs at debug
//! (its explain lines) while Envoy's own components log at info: no marker may appear in
//! ANY line. At `-l debug` Envoy itself prints request headers (the bearer token, the
//! cookie, `x-secret`) and paths in its own components' lines: that is Envoy, not the
//! plugin, and the test prints which markers Envoy showed there; the plugin's lines (the
//! `[wasm]` component) and its audit records must still hold none.

use std::collections::BTreeMap;
use std::hash::{BuildHasher, Hasher};
use std::io::Write as _;
use std::time::Duration;

use base64::Engine as _;
use consentry_envoy::scripted::{Reply, ScriptedUpstream};
use consentry_envoy::{EnvoyBuilder, HttpResponse, RunningEnvoy, send};
use consentry_host::mint;
use serde_json::{Map, Value, json};

use crate::support::*;

/// The planted secrets: label → marker. A marker is 24 lowercase letters and digits,
/// unique to the run, so it can sit in a path, a header, a claim or a JSON string.
struct Secrets {
    markers: BTreeMap<&'static str, String>,
    /// Token texts and their segments: a token logged or echoed whole is a leak too.
    tokens: Vec<(String, String)>,
}

impl Secrets {
    fn new() -> Self {
        Self {
            markers: BTreeMap::new(),
            tokens: Vec::new(),
        }
    }

    fn mark(&mut self, label: &'static str) -> String {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write(label.as_bytes());
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos(),
        );
        let marker = format!("zq{:016x}{:06x}", h.finish(), self.markers.len());
        self.markers.insert(label, marker.clone());
        marker
    }

    /// Remembers a token, its claims segment and its signature (the JOSE header is
    /// shared by every token of a key; the markers it carries are looked for as such).
    fn token(&mut self, label: &str, token: String) -> String {
        self.tokens.push((format!("token {label}"), token.clone()));
        for (i, part) in token.split('.').enumerate().skip(1) {
            if part.len() >= 16 {
                self.tokens
                    .push((format!("token {label} segment {i}"), part.to_owned()));
            }
        }
        token
    }

    /// Every secret that occurs in `text`, by label.
    fn found_in(&self, text: &str) -> Vec<String> {
        let mut found: Vec<String> = self
            .markers
            .iter()
            .filter(|(_, m)| text.contains(m.as_str()))
            .map(|(l, _)| (*l).to_owned())
            .collect();
        found.extend(
            self.tokens
                .iter()
                .filter(|(_, t)| text.contains(t.as_str()))
                .map(|(l, _)| l.clone()),
        );
        found
    }
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// One exchange: the request, what the upstream answers, and the status expected.
struct Case {
    name: &'static str,
    method: &'static str,
    path: String,
    headers: Vec<(String, String)>,
    body: Option<Vec<u8>>,
    upstream: Reply,
    status: u16,
    /// The problem code, when the answer is a refusal.
    code: Option<&'static str>,
}

fn json_reply(status: u16, body: &str) -> Reply {
    Reply::new(status)
        .header("content-type", "application/json")
        .header("content-length", &body.len().to_string())
        .body(body)
}

/// The planted secrets and the exchanges that carry them.
fn cases(s: &mut Secrets) -> Vec<Case> {
    let hdr = s.mark("header x-secret");
    let cookie = s.mark("cookie");
    let claim = s.mark("custom claim");
    let sub = s.mark("subject claim");
    let kid = s.mark("key id");
    let iss = s.mark("issuer");
    let aud = s.mark("audience");
    let expired_claim = s.mark("claim of an expired token");
    let bound_claim = s.mark("claim of a bound token");
    let not_jwt = s.mark("a token that is no JWT");
    let bad_alg = s.mark("alg of a broken JWT");
    let basic = s.mark("basic credentials");
    let purpose = s.mark("purpose header");
    let second = s.mark("second token");
    let query_token = s.mark("access_token query");
    let query = s.mark("query parameter");
    let body_refused = s.mark("body of a refused request");
    let body_minimised = s.mark("request body field outside the allow-list");
    let body_text = s.mark("request body that is not JSON");
    let body_large = s.mark("request body over the limit");
    let nid = s.mark("upstream national_id");
    let email = s.mark("upstream contact.email");
    let clinical = s.mark("upstream clinical notes");
    let unclassified = s.mark("upstream unclassified field");
    let dup = s.mark("upstream duplicate key");
    let escaped = s.mark("upstream key written with an escape");
    let e500 = s.mark("upstream 500 body");
    let e500h = s.mark("upstream 500 header");
    let e503 = s.mark("upstream 503 body");
    let e404 = s.mark("upstream 404 body");
    let invalid = s.mark("upstream invalid JSON");
    let gzip = s.mark("upstream gzip body");
    let html = s.mark("upstream html body");
    let deep = s.mark("upstream too deep JSON");
    let withheld_h = s.mark("upstream header of a withheld body");
    let allowed_h = s.mark("upstream header of an allowed body");
    let unverified_sub = s.mark("subject of a token with a bad signature");
    let unverified_grantee = s.mark("grantee of a token with a bad signature");
    let expired_grantee = s.mark("grantee of an expired token");

    let now = unix_now();
    let insurer = || claims("insurer");
    let with = |mut c: Map<String, Value>, k: &str, v: Value| {
        c.insert(k.into(), v);
        c
    };
    let allowed = s.token(
        "allowed",
        sign(&with(insurer(), "x_private_note", claim.clone().into())),
    );
    let by_sub = s.token("subject", sign(&with(insurer(), "sub", sub.clone().into())));
    let by_kid = s.token(
        "unknown kid",
        mint::sign(
            &Value::Object(insurer()),
            mint::DEV_KEY_PEM,
            &kid,
            mint::Alg::ES256,
        )
        .unwrap(),
    );
    let by_iss = s.token(
        "unknown issuer",
        sign(&with(
            insurer(),
            "iss",
            format!("https://{iss}.example").into(),
        )),
    );
    let by_aud = s.token(
        "audience",
        sign(&with(insurer(), "aud", aud.clone().into())),
    );
    let mut old = with(insurer(), "x_private_note", expired_claim.clone().into());
    old.insert("client_id".into(), expired_grantee.clone().into());
    old.insert("iat".into(), (now - 7200).into());
    old.insert("exp".into(), (now - 3600).into());
    let expired = s.token("expired", sign(&old));
    let bound = s.token(
        "bound",
        sign(&with(
            with(insurer(), "x_private_note", bound_claim.clone().into()),
            "cnf",
            json!({"x5t#S256": b64(&[7u8; 32])}),
        )),
    );
    // Claims (an unverified subject and grantee) under another token's signature.
    let forged = {
        let other = sign(&insurer());
        let sig = other.rsplit('.').next().unwrap().to_owned();
        let mine = sign(&with(
            with(insurer(), "sub", unverified_sub.clone().into()),
            "client_id",
            unverified_grantee.clone().into(),
        ));
        let head: Vec<&str> = mine.split('.').take(2).collect();
        s.token("bad signature", format!("{}.{}.{sig}", head[0], head[1]))
    };

    let broken = s.token(
        "broken",
        format!(
            "{}.{}.{}",
            b64(format!(r#"{{"alg":"{bad_alg}","typ":"at+jwt"}}"#).as_bytes()),
            b64(
                Value::Object(with(insurer(), "x_private_note", claim.clone().into()))
                    .to_string()
                    .as_bytes()
            ),
            b64(b"signature")
        ),
    );

    let record = |nid: &str, email: &str, clinical: &str, unclassified: &str| {
        json!({
            "id": "p-1", "resourceType": "Patient", "updated_at": "2026-11-01T00:00:00Z",
            "identity": {"name": "Eleanor Whitcombe", "birth_date": "1961-04-12",
                         "gender": "female", "national_id": nid, "mrn": "MRN-1"},
            "contact": {"email": email, "phone": "+44 7700 900412"},
            "clinical": {"conditions": [{"note": clinical}]},
            "billing": {"insurer": "Acme", "policy_number": "PN-1",
                        "invoices": [{"amount": 120.50, "transaction_ref": "TR-1"}]},
            "internal_note": unclassified
        })
        .to_string()
    };
    let good_record = record(&nid, &email, &clinical, &unclassified);

    let common = vec![
        ("x-secret".to_owned(), hdr.clone()),
        ("cookie".to_owned(), format!("session={cookie}; theme=dark")),
    ];
    let h = |extra: &[(&str, String)]| {
        let mut v = common.clone();
        v.extend(extra.iter().map(|(n, x)| ((*n).to_owned(), x.clone())));
        v
    };
    let auth = |t: &str| ("authorization", bearer(t));
    let record_reply = || json_reply(200, &good_record);
    let case = |name, method, path: String, headers, body, upstream, status, code| Case {
        name,
        method,
        path,
        headers,
        body,
        upstream,
        status,
        code,
    };
    let withheld = |name, reply: Reply, code| {
        case(
            name,
            "GET",
            "/patients/p-1".to_owned(),
            h(&[auth(&allowed)]),
            None,
            reply.header("x-debug-trace", &withheld_h),
            502,
            Some(code),
        )
    };
    let gzip_body = format!("not really gzip: {gzip}");
    let html_body = format!("<html><body><p>{html}</p></body></html>");
    let deep_body = format!("{}\"{deep}\"{}", "[".repeat(100), "]".repeat(100));
    let invalid_body = format!(r#"{{"id":"p-1","identity":{{"national_id":"{invalid}""#);

    vec![
        case(
            "allowed, removed fields planted",
            "GET",
            "/patients/p-1".into(),
            h(&[auth(&allowed)]),
            None,
            record_reply().header("x-internal-token", &allowed_h),
            200,
            None,
        ),
        case(
            "allowed, duplicate and escaped keys",
            "GET",
            "/patients/p-1".into(),
            h(&[auth(&allowed)]),
            None,
            json_reply(
                200,
                &format!(
                    r#"{{"id":"p-1","identity":{{"name":"E","national_id":"x","national_id":"{dup}","n\u0061tional_id":"{escaped}"}}}}"#
                ),
            ),
            200,
            None,
        ),
        case(
            "allowed HEAD",
            "HEAD",
            "/patients/p-1".into(),
            h(&[auth(&allowed)]),
            None,
            record_reply(),
            200,
            None,
        ),
        case(
            "upstream 404 body is redacted",
            "GET",
            "/patients/p-1".into(),
            h(&[auth(&allowed)]),
            None,
            json_reply(404, &json!({"error": e404}).to_string()),
            404,
            None,
        ),
        case(
            "the subject claim is not the patient",
            "GET",
            "/patients/p-1".into(),
            h(&[auth(&by_sub)]),
            None,
            record_reply(),
            403,
            Some("access_denied"),
        ),
        case(
            "the subject claim is the patient of the path",
            "GET",
            format!("/patients/{sub}"),
            h(&[auth(&by_sub)]),
            None,
            record_reply(),
            200,
            None,
        ),
        case(
            "unknown key id (refetch)",
            "GET",
            "/patients/p-1".into(),
            h(&[auth(&by_kid)]),
            None,
            record_reply(),
            401,
            Some("token_invalid"),
        ),
        case(
            "unknown issuer",
            "GET",
            "/patients/p-1".into(),
            h(&[auth(&by_iss)]),
            None,
            record_reply(),
            401,
            Some("token_invalid"),
        ),
        case(
            "wrong audience",
            "GET",
            "/patients/p-1".into(),
            h(&[auth(&by_aud)]),
            None,
            record_reply(),
            401,
            Some("token_invalid"),
        ),
        case(
            "expired",
            "GET",
            "/patients/p-1".into(),
            h(&[auth(&expired)]),
            None,
            record_reply(),
            401,
            Some("token_expired"),
        ),
        case(
            "bad signature",
            "GET",
            "/patients/p-1".into(),
            h(&[auth(&forged)]),
            None,
            record_reply(),
            401,
            Some("token_invalid"),
        ),
        case(
            "broken JWT",
            "GET",
            "/patients/p-1".into(),
            h(&[auth(&broken)]),
            None,
            record_reply(),
            401,
            Some("token_invalid"),
        ),
        case(
            "not a JWT",
            "GET",
            "/patients/p-1".into(),
            h(&[auth(&not_jwt)]),
            None,
            record_reply(),
            401,
            Some("token_invalid"),
        ),
        case(
            "bound to a certificate, presented without one",
            "GET",
            "/patients/p-1".into(),
            h(&[auth(&bound)]),
            None,
            record_reply(),
            401,
            Some("token_unbound"),
        ),
        case(
            "basic credentials",
            "GET",
            "/patients/p-1".into(),
            h(&[(
                "authorization",
                format!("Basic {}", b64(format!("u:{basic}").as_bytes())),
            )]),
            None,
            record_reply(),
            401,
            Some("token_missing"),
        ),
        case(
            "two tokens",
            "GET",
            "/patients/p-1".into(),
            h(&[auth(&allowed), ("authorization", bearer(&second))]),
            None,
            record_reply(),
            400,
            Some("token_ambiguous"),
        ),
        case(
            "a token in the query as well",
            "GET",
            format!("/patients/p-1?access_token={query_token}"),
            h(&[auth(&allowed)]),
            None,
            record_reply(),
            400,
            Some("token_ambiguous"),
        ),
        case(
            "a purpose the consent does not name",
            "GET",
            "/patients/p-1".into(),
            h(&[auth(&allowed), ("x-consent-purpose", purpose.clone())]),
            None,
            record_reply(),
            403,
            Some("access_denied"),
        ),
        case(
            "no token, a body",
            "POST",
            "/echo".into(),
            h(&[("content-type", "application/json".into())]),
            Some(
                json!({"claim_id": "c-1", "note": body_refused})
                    .to_string()
                    .into_bytes(),
            ),
            json_reply(200, "{}"),
            401,
            Some("token_missing"),
        ),
        case(
            "allowed, request minimised",
            "POST",
            format!("/echo?from=2026-01-01&to=2026-02-01&q={query}"),
            h(&[auth(&allowed), ("content-type", "application/json".into())]),
            Some(
                json!({"claim_id": "c-1", "invoice_ids": ["i-1"], "note": body_minimised})
                    .to_string()
                    .into_bytes(),
            ),
            json_reply(
                200,
                r#"{"method":"POST","path":"/echo","query":"from=2026-01-01","headers":[],"body":"{}"}"#,
            ),
            200,
            None,
        ),
        case(
            "a request body that is not JSON",
            "POST",
            "/echo".into(),
            h(&[auth(&allowed), ("content-type", "text/plain".into())]),
            Some(format!("note: {body_text}").into_bytes()),
            json_reply(200, "{}"),
            400,
            Some("bad_request"),
        ),
        case(
            "a request body over the limit",
            "POST",
            "/echo".into(),
            h(&[auth(&allowed), ("content-type", "application/json".into())]),
            Some(
                json!({"claim_id": body_large, "pad": "x".repeat(80 * 1024)})
                    .to_string()
                    .into_bytes(),
            ),
            json_reply(200, "{}"),
            413,
            Some("request_too_large"),
        ),
        withheld(
            "upstream 500",
            Reply::new(500)
                .header("content-type", "text/plain")
                .header("x-upstream-trace", &e500h)
                .body(format!("Traceback: db password=hunter2 {e500}")),
            "upstream_error",
        ),
        withheld(
            "upstream 503",
            json_reply(503, &json!({"error": e503}).to_string()),
            "upstream_error",
        ),
        withheld(
            "invalid JSON",
            json_reply(200, &invalid_body),
            "unsafe_response",
        ),
        withheld(
            "gzip",
            Reply::new(200)
                .header("content-type", "application/json")
                .header("content-encoding", "gzip")
                .header("content-length", &gzip_body.len().to_string())
                .body(&gzip_body),
            "unsafe_response",
        ),
        withheld(
            "html",
            Reply::new(200)
                .header("content-type", "text/html")
                .header("content-length", &html_body.len().to_string())
                .body(&html_body),
            "unsafe_response",
        ),
        withheld("too deep", json_reply(200, &deep_body), "unsafe_response"),
    ]
}

/// What one run saw: every response, Envoy's log, the whole `/stats` dump.
struct Run {
    responses: Vec<(String, HttpResponse)>,
    log: String,
    stats: String,
    received: Vec<consentry_envoy::scripted::Received>,
}

fn run(configure: impl FnOnce(EnvoyBuilder) -> EnvoyBuilder) -> (Secrets, Run) {
    let mut secrets = Secrets::new();
    let cases = cases(&mut secrets);
    let consent = example_service(60);
    let upstream = ScriptedUpstream::start().unwrap();
    let mut policy = example_policy();
    policy["limits"] = json!({"max_body_bytes": 64 * 1024});
    let builder = consentry_envoy::Envoy::builder()
        .upstream_port(upstream.port())
        .var("CONSENT_PORT", consent.addr().port())
        .plugin_config_json(&policy.to_string());
    require_prerequisites();
    let envoy: RunningEnvoy = start(configure(builder));

    let mut responses = Vec::new();
    let mut received = Vec::new();
    for c in &cases {
        upstream.clear_received();
        upstream.set_default(c.upstream.clone());
        let headers: Vec<(&str, &str)> = c
            .headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        let url = format!("{}{}", envoy.base_url(), c.path);
        let r = send(c.method, &url, &headers, c.body.as_deref())
            .unwrap_or_else(|e| panic!("{}: {e:#}", c.name));
        assert_eq!(
            r.status,
            c.status,
            "{}: headers {:?} body {}",
            c.name,
            r.headers,
            r.text()
        );
        if let Some(code) = c.code {
            assert_problem(&r, c.status, code);
        }
        received.extend(upstream.received());
        responses.push((c.name.to_owned(), r));
    }
    wait_for_decisions(&envoy, cases.len());
    let stats = envoy.admin_get("/stats").unwrap();
    let log = envoy.log();
    drop(envoy);
    (
        secrets,
        Run {
            responses,
            log,
            stats,
            received,
        },
    )
}

/// Everything a client saw of one response: status line, headers, body.
fn client_view(r: &HttpResponse) -> String {
    let mut text = format!("{}\n", r.status);
    for (n, v) in &r.headers {
        text.push_str(&format!("{n}: {v}\n"));
    }
    text.push_str(&r.text());
    text
}

/// The checks both runs share: clients, metrics, the plugin's log lines and audit
/// records, and what the upstream received on the minimising route.
fn assert_no_leak_but_envoys_own_lines(secrets: &Secrets, run: &Run) {
    let mut leaks = Vec::new();
    for (name, r) in &run.responses {
        for f in secrets.found_in(&client_view(r)) {
            leaks.push(format!("client, {name}: {f}"));
        }
    }
    for f in secrets.found_in(&run.stats) {
        leaks.push(format!("/stats: {f}"));
    }
    for (component, entry) in entries(&run.log) {
        if component == "wasm" {
            for f in secrets.found_in(&entry) {
                leaks.push(format!("plugin log entry: {f}: {entry}"));
            }
        }
    }
    assert!(leaks.is_empty(), "secrets leaked:\n{}", leaks.join("\n"));

    let records: Vec<&str> = run
        .log
        .lines()
        .filter(|l| l.contains(consentry_host::audit_log::LOG_MARKER))
        .collect();
    assert!(records.len() >= run.responses.len(), "{}", run.log);
    assert!(
        run.log.contains(EXPLAIN_MARKER),
        "the plugin's debug explanation never ran: the debug level did not reach it"
    );

    // The minimising route forwarded only what it allows.
    let echo = run
        .received
        .iter()
        .find(|r| r.path.starts_with("/echo"))
        .expect("the minimised request reached the upstream");
    let seen = format!(
        "{} {:?} {}",
        echo.path,
        echo.headers,
        String::from_utf8_lossy(&echo.body)
    );
    let found = secrets.found_in(&seen);
    assert!(found.is_empty(), "the upstream received {found:?}: {seen}");
}

/// Envoy's log as entries (a line that starts with `[<date>` and the lines that continue
/// it, such as the header dumps of its debug level), each with its component: the fourth
/// bracket of `[time][thread][level][component] ...`.
fn entries(log: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for line in log.lines() {
        let starts = line.starts_with('[') && line[1..].starts_with(|c: char| c.is_ascii_digit());
        match out.last_mut() {
            Some((_, entry)) if !starts => {
                entry.push('\n');
                entry.push_str(line);
            }
            _ => {
                let component = line
                    .split(']')
                    .nth(3)
                    .map_or("?", |c| c.trim_start_matches('['))
                    .to_owned();
                out.push((component, line.to_owned()));
            }
        }
    }
    out
}

/// The prefix of the plugin's debug explanation line (one per decision).
const EXPLAIN_MARKER: &str = "consentry-explain ";

/// The plugin at debug, Envoy's own components at info: no secret in any line at all.
#[test]
fn no_secret_reaches_a_log_line_a_client_or_a_metric() {
    let _watchdog = watchdog("leaks", Duration::from_secs(90));
    let (secrets, run) = run(|b| {
        b.log_level("info")
            .arg("--component-log-level")
            .arg("wasm:debug")
    });
    assert_no_leak_but_envoys_own_lines(&secrets, &run);
    let lines: Vec<String> = run
        .log
        .lines()
        .filter_map(|l| {
            let found = secrets.found_in(l);
            (!found.is_empty()).then(|| format!("{found:?}: {l}"))
        })
        .collect();
    assert!(
        lines.is_empty(),
        "secrets in Envoy's log:\n{}",
        lines.join("\n")
    );
}

/// Envoy entirely at debug: its own components print headers and paths (the token, the
/// cookie, `x-secret`), which the test reports; the plugin's lines still hold nothing.
#[test]
fn at_envoys_debug_level_only_envoys_own_lines_show_request_secrets() {
    let _watchdog = watchdog("leaks at debug", Duration::from_secs(90));
    let (secrets, run) = run(|b| b.log_level("debug"));
    assert_no_leak_but_envoys_own_lines(&secrets, &run);
    let mut by_component: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (component, entry) in entries(&run.log) {
        let found = secrets.found_in(&entry);
        if !found.is_empty() {
            by_component.entry(component).or_default().extend(found);
        }
    }
    let mut out = std::io::stderr().lock();
    let _ = writeln!(out, "secrets Envoy's own components printed at -l debug:");
    for (component, found) in &mut by_component {
        found.sort();
        found.dedup();
        let _ = writeln!(out, "  [{component}] {}", found.join(", "));
    }
    assert!(
        !by_component.contains_key("wasm"),
        "the plugin logged secrets: {by_component:?}"
    );
}

/// The status-list URI is a claim of the token (under the configured prefix, so the
/// plugin fetches it): like every other claim it must stay out of the log, also when the
/// fetch fails.
#[test]
fn a_status_list_uri_taken_from_a_token_is_not_logged() {
    let _watchdog = watchdog("status uri", Duration::from_secs(60));
    let mut secrets = Secrets::new();
    let marker = secrets.mark("status list uri claim");
    let service = example_service(60);
    let envoy = start(envoy_for(&service, &example_policy()));
    let mut c = claims("insurer");
    c.insert(
        "status".into(),
        json!({"status_list": {"idx": 0,
               "uri": format!("https://consent.example.com/statuslists/{marker}")}}),
    );
    let token = secrets.token("status list uri", sign(&c));
    let r = get_with(&envoy, "/patients/p-1", &token);
    assert_problem(&r, 503, "dependency_unavailable");
    assert!(
        secrets.found_in(&client_view(&r)).is_empty(),
        "{}",
        r.text()
    );
    wait_for_decisions(&envoy, 1);
    let leaked: Vec<String> = entries(&envoy.log())
        .into_iter()
        .filter(|(_, e)| !secrets.found_in(e).is_empty())
        .map(|(_, e)| e)
        .collect();
    assert!(
        leaked.is_empty(),
        "a token's status-list URI reached Envoy's log:\n{}",
        leaked.join("\n")
    );
    assert!(
        secrets
            .found_in(&envoy.admin_get("/stats").unwrap())
            .is_empty()
    );
}
