//! `consentry audit verify` and `consentry report`, run as the real binary on a
//! realistic synthetic audit log (two workers' chains in Envoy's log format), and the
//! report checked in a real headless browser (Debian's `chromium` package).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use consentry_core::audit::{
    self, AuditEntry, AuditKey, AuditTrail, Decision, Ending, Redaction, emission,
};
use consentry_core::problem::Code;
use consentry_host::report;

use crate::browser::{chromium, decode_png, run_browser};

const SECRET: &[u8] = b"a 32-byte audit key for the test";
/// 2026-11-27T09:00:00Z.
const START_MS: u64 = 1_795_770_000_000;

fn key() -> AuditKey {
    AuditKey {
        kid: "audit-2026-11".into(),
        secret: SECRET.to_vec(),
    }
}

fn key_arg() -> String {
    format!(
        "audit-2026-11={}",
        base64::engine::general_purpose::STANDARD.encode(SECRET)
    )
}

/// A small deterministic generator (xorshift64*), so the log is the same every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

const HOSTILE_CALLER: &str = "<script>alert('x')</script>";

const CALLERS: [(&str, u64); 6] = [
    ("spiffe://insurer.example/claims", 40),
    ("spiffe://research.example/cohort-builder", 22),
    ("spiffe://hr.example/payroll", 14),
    ("client:open-banking-app-7", 12),
    ("198.51.100.23", 8),
    (HOSTILE_CALLER, 4),
];

/// Refusals: code, internal reason, weight.
const REFUSALS: [(Code, &str, u64); 14] = [
    (Code::AccessDenied, "no_rule_matched", 14),
    (Code::AccessDenied, "purpose_not_consented", 9),
    (Code::AccessDenied, "domain_not_consented", 6),
    (Code::TokenExpired, "token_expired", 10),
    (Code::ConsentRevoked, "status_list_revoked", 7),
    (Code::ConsentRevoked, "consent_on_deny_list", 3),
    (Code::ConsentSuspended, "status_list_suspended", 4),
    (Code::TokenMissing, "no_token", 6),
    (Code::TokenInvalid, "signature_invalid", 5),
    (Code::TokenUnbound, "certificate_mismatch", 3),
    (Code::RateLimited, "bucket_empty", 8),
    (Code::UpstreamError, "upstream_5xx", 3),
    (Code::UnsafeResponse, "content_type_not_allowed", 2),
    (Code::DependencyUnavailable, "status_list_stale", 2),
];

const FIELDS: [(&str, Redaction); 6] = [
    ("$.identity.name", Redaction::Pseudonymise),
    ("$.identity.ssn", Redaction::Remove),
    ("$.identity.dob", Redaction::Generalise),
    ("$.visits[*].diagnosis", Redaction::Remove),
    ("$.contact.phone", Redaction::Mask),
    ("$.insurance.member_id", Redaction::Hash),
];

/// What the generator put in the log, to compare the report with.
#[derive(Default)]
struct Expected {
    decisions: u64,
    refused: u64,
    codes: BTreeMap<&'static str, u64>,
    callers: BTreeSet<&'static str>,
    lockouts: u64,
    records_by_chain: BTreeMap<String, u64>,
    /// (outcome, status) of every decision.
    outcomes: BTreeMap<(&'static str, u16), u64>,
}

struct SyntheticLog {
    /// Envoy's log: the records of two workers interleaved with the proxy's lines.
    lines: Vec<String>,
    expected: Expected,
}

/// A few hundred decisions over four hours from two workers, with checkpoints every
/// five minutes, in Envoy's log format.
fn synthetic_log() -> SyntheticLog {
    let mut rng = Rng(0x5eed_cafe_f00d_0001);
    let mut workers = [
        (AuditTrail::new("7e3a91c04b2d58f6", Some(key())), 20966u32),
        (AuditTrail::new("c1d2e3f405a6b7c8", Some(key())), 20971u32),
    ];
    let mut expected = Expected::default();
    let mut lines = vec![
        "[2026-11-27 09:00:00.001][20960][info][main] [source/server/server.cc:936] starting main dispatch loop".to_owned(),
    ];
    let envoy_line = |ms: u64, tid: u32, record: &str| {
        let t = audit::format_time(ms);
        format!(
            "[{} {}][{tid}][info][wasm] [source/extensions/common/wasm/context.cc:1151] wasm log consentry consentry consentry: {}",
            &t[..10],
            &t[11..23],
            emission(record)
        )
    };
    let caller_weights: u64 = CALLERS.iter().map(|c| c.1).sum();
    let refusal_weights: u64 = REFUSALS.iter().map(|r| r.2).sum();
    let mut ms = START_MS;
    let end = START_MS + 4 * 3_600_000;
    let mut next_checkpoint = START_MS + 300_000;
    let mut locked_until: Option<u64> = None;
    let mut request = 0u64;
    while ms < end {
        // Busier in the second hour.
        let gap = if (START_MS + 3_600_000..START_MS + 7_200_000).contains(&ms) {
            10_000 + rng.below(30_000)
        } else {
            25_000 + rng.below(60_000)
        };
        ms += gap;
        while next_checkpoint <= ms {
            for (trail, tid) in workers.iter_mut() {
                let line = trail.checkpoint(at(next_checkpoint), Duration::from_secs(300));
                lines.push(envoy_line(next_checkpoint, *tid, &line));
            }
            next_checkpoint += 300_000;
        }
        if ms >= end {
            break;
        }
        request += 1;
        let mut w = rng.below(caller_weights);
        let caller = CALLERS
            .iter()
            .find(|(_, weight)| {
                if w < *weight {
                    true
                } else {
                    w -= weight;
                    false
                }
            })
            .map_or(CALLERS[0].0, |c| c.0);
        // Callers refused more or less often.
        let refuse_percent = match caller {
            "198.51.100.23" => 85,
            HOSTILE_CALLER => 100,
            "spiffe://insurer.example/claims" => 18,
            _ => 35,
        };
        let refused = rng.below(100) < refuse_percent;
        let request_id = format!("{:08x}-86fc-485c-b1a8-{:012x}", rng.next() as u32, request);
        let subject = format!("patient-{:04}", rng.below(300));
        let consent = format!("c-{}", 7000 + rng.below(120));
        let lockout_over = locked_until.is_some_and(|until| ms >= until);
        let (decision, code, reason) =
            if caller == "198.51.100.23" && !lockout_over && locked_until.is_some() {
                (Decision::Deny, Some(Code::LockedOut), "locked_out")
            } else if refused {
                let mut r = rng.below(refusal_weights);
                let (code, reason, _) = REFUSALS
                    .iter()
                    .find(|(_, _, weight)| {
                        if r < *weight {
                            true
                        } else {
                            r -= weight;
                            false
                        }
                    })
                    .unwrap_or(&REFUSALS[0]);
                (Decision::Deny, Some(*code), *reason)
            } else {
                (Decision::Allow, None, "rule_matched")
            };
        // An upstream failure or an unsafe answer comes after an allow: the plugin's
        // problem goes out in the answer's place. A few allowed streams are reset.
        let withheld = matches!(code, Some(Code::UpstreamError | Code::UnsafeResponse));
        let decision = if withheld { Decision::Allow } else { decision };
        let reset = decision == Decision::Allow && !withheld && rng.below(40) == 0;
        let (ending, status) = match (decision, code) {
            _ if reset => (Ending::Reset, 0),
            (_, Some(code)) if withheld => (Ending::Withheld, code.status()),
            (Decision::Deny, Some(code)) => (Ending::Refused, code.status()),
            _ => (Ending::Released, 200),
        };
        let refused = decision == Decision::Deny;
        let mut entry = AuditEntry::new(at(ms), &request_id, caller, decision, code, reason);
        entry.ending = ending;
        entry.status = status;
        *expected
            .outcomes
            .entry((ending.as_str(), status))
            .or_default() += 1;
        entry.subject = Some(&subject);
        entry.purpose = Some(*rng.pick(&["treatment", "claims", "research", "payroll"]));
        entry.consent_id = Some(&consent);
        entry.route = Some(*rng.pick(&["GET /patients/{id}", "GET /patients/{id}/records"]));
        if ending == Ending::Released {
            entry.rule = Some(*rng.pick(&["insurer-read", "research-cohort", "payroll-basic"]));
            entry
                .fields
                .released("$.id", 1)
                .released("$.visits[*].date", 1 + rng.below(6));
            for (field, action) in FIELDS {
                if rng.below(100) < 55 {
                    let count = if field.contains("[*]") {
                        1 + rng.below(6)
                    } else {
                        1
                    };
                    entry.fields.redacted(field, action, count);
                }
            }
        }
        // The address with many refusals is locked out once, in the third hour, for
        // ten minutes; the refusal that locks it out raises the alert.
        if caller == "198.51.100.23"
            && refused
            && locked_until.is_none()
            && ms > START_MS + 2 * 3_600_000
        {
            locked_until = Some(ms + 600_000);
            entry.alert = Some(audit::Alert::Lockout);
            expected.lockouts += 1;
        }
        let code_name = code.map_or("ok", Code::as_str);
        expected.decisions += 1;
        expected.refused += u64::from(refused);
        *expected.codes.entry(code_name).or_default() += 1;
        expected.callers.insert(caller);
        let (trail, tid) = &mut workers[(rng.below(2)) as usize];
        let line = trail.record(entry);
        lines.push(envoy_line(ms, *tid, &line));
        if rng.below(10) == 0 {
            lines.push(format!(
                "[{}][20960][info][upstream] [source/common/upstream/cluster_manager_impl.cc:1240] cds: added/updated 0 cluster(s)",
                audit::format_time(ms).replace('T', " ").trim_end_matches('Z')
            ));
        }
    }
    for (trail, _) in &workers {
        expected
            .records_by_chain
            .insert(trail.chain_id().to_owned(), trail.seq());
    }
    SyntheticLog { lines, expected }
}

fn at(ms: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_millis(ms)
}

fn consentry(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_consentry"))
        .args(args)
        .output()
        .expect("running consentry")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn write_log(dir: &Path, name: &str, lines: &[String]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    path
}

/// The 1-based line numbers of the records of `chain` in `lines`.
fn record_lines(lines: &[String], chain: &str) -> Vec<usize> {
    let needle = format!("\"chain\":\"{chain}\"");
    lines
        .iter()
        .enumerate()
        .filter(|(_, l)| l.contains(&needle))
        .map(|(i, _)| i + 1)
        .collect()
}

#[test]
fn audit_verify_accepts_an_intact_envoy_log_and_summarises_it() {
    let log = synthetic_log();
    let dir = tempfile::tempdir().unwrap();
    let path = write_log(dir.path(), "envoy.log", &log.lines);
    let key = key_arg();
    let out = consentry(&["audit", "verify", path.to_str().unwrap(), "--key", &key]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    let records: u64 = log.expected.records_by_chain.values().sum();
    assert!(records > 300, "a few hundred records: {records}");
    assert!(
        text.contains(&format!("ok: 2 chains, {records} records, 2026-11-27T09:")),
        "{text}"
    );
    for (chain, n) in &log.expected.records_by_chain {
        assert!(
            text.contains(&format!("chain {chain}: {n} records (")),
            "{text}"
        );
    }
    assert!(text.contains("keyed with audit-2026-11"), "{text}");
}

#[test]
fn audit_verify_names_the_first_bad_record() {
    let log = synthetic_log();
    let dir = tempfile::tempdir().unwrap();
    let chain = log.expected.records_by_chain.keys().next().unwrap().clone();
    let at_line = record_lines(&log.lines, &chain);
    let key = key_arg();
    let verify = |name: &str, lines: &[String]| {
        let path = write_log(dir.path(), name, lines);
        let out = consentry(&["audit", "verify", path.to_str().unwrap(), "--key", &key]);
        assert_eq!(out.status.code(), Some(1), "{name}: {}", stdout(&out));
        stdout(&out)
    };

    // Altered: a refusal turned into an allow.
    let mut lines = log.lines.clone();
    let victim = at_line
        .iter()
        .copied()
        .find(|&l| lines[l - 1].contains("\"decision\":\"deny\""))
        .unwrap();
    lines[victim - 1] =
        lines[victim - 1].replace("\"decision\":\"deny\"", "\"decision\":\"allow\"");
    let seq = seq_of(&lines[victim - 1]);
    let text = verify("altered.log", &lines);
    assert!(
        text.contains(&format!(
            "line {victim}: chain {chain} seq {seq}: hash does not match (record altered"
        )),
        "{text}"
    );

    // Removed: the 10th record of the chain; the 11th is reported.
    let mut lines = log.lines.clone();
    lines.remove(at_line[9] - 1);
    let text = verify("removed.log", &lines);
    assert!(
        text.contains(&format!(
            "line {}: chain {chain} seq 11: seq 10 is missing before this record (record removed)",
            at_line[10] - 1
        )),
        "{text}"
    );

    // Reordered: the 20th and 21st records swapped.
    let mut lines = log.lines.clone();
    lines.swap(at_line[19] - 1, at_line[20] - 1);
    let text = verify("reordered.log", &lines);
    assert!(
        text.contains(&format!(
            "line {}: chain {chain} seq 21: seq 20 should come before this record but is at line {} (records reordered)",
            at_line[19], at_line[20]
        )),
        "{text}"
    );

    // Inserted: a record forged without the key, continuing the chain.
    let mut forger = AuditTrail::new(
        chain.clone(),
        Some(AuditKey {
            kid: "audit-2026-11".into(),
            secret: b"not the key".to_vec(),
        }),
    );
    let mut lines = log.lines.clone();
    let forged = forger.record(AuditEntry::new(
        at(START_MS),
        "forged-request-0001",
        "spiffe://insurer.example/claims",
        Decision::Allow,
        None,
        "rule_matched",
    ));
    lines.insert(at_line[4], emission(&forged));
    let text = verify("inserted.log", &lines);
    assert!(
        text.contains(&format!(
            "line {}: chain {chain} seq 1: hash does not match",
            at_line[4] + 1
        )),
        "{text}"
    );
}

fn seq_of(line: &str) -> u64 {
    let json = audit::extract_record(line).unwrap();
    let v: serde_json::Value = serde_json::from_str(json).unwrap();
    v["seq"].as_u64().unwrap()
}

#[test]
fn audit_verify_reads_bare_json_lines_and_says_what_it_needs() {
    let dir = tempfile::tempdir().unwrap();
    let mut trail = AuditTrail::new("0a1b2c3d4e5f6071", None);
    let lines: Vec<String> = (0..5)
        .map(|i| {
            trail.record(AuditEntry::new(
                at(START_MS + i * 1000),
                "0f7cb765-86fc-485c-b1a8-6470c46bf45a",
                "spiffe://insurer.example/claims",
                Decision::Deny,
                Some(Code::TokenExpired),
                "token_expired",
            ))
        })
        .collect();
    let path = write_log(dir.path(), "bare.jsonl", &lines);
    let out = consentry(&["audit", "verify", path.to_str().unwrap()]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(
        text.contains(
            "ok: 1 chain, 5 records, 2026-11-27T09:00:00.000Z to 2026-11-27T09:00:04.000Z"
        ),
        "{text}"
    );
    assert!(text.contains("unkeyed (SHA-256)"), "{text}");

    // A keyed log without its key cannot be verified, and the tool says how.
    let keyed = synthetic_log();
    let path = write_log(dir.path(), "envoy.log", &keyed.lines);
    let out = consentry(&["audit", "verify", path.to_str().unwrap()]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("hint: pass the audit key with --key audit-2026-11=BASE64"),
        "{text}"
    );

    // With a key, an unkeyed record is refused (anyone can compute a SHA-256).
    let path = write_log(dir.path(), "bare.jsonl", &lines);
    let out = consentry(&[
        "audit",
        "verify",
        path.to_str().unwrap(),
        "--key",
        &key_arg(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stdout(&out).contains("line 1: chain 0a1b2c3d4e5f6071 seq 1: record is not keyed"));

    // No records at all: the wrong file.
    let path = write_log(
        dir.path(),
        "empty.log",
        &["[2026-11-27] nothing here".to_owned()],
    );
    let out = consentry(&["audit", "verify", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stdout(&out).contains("no audit records found"));

    // A malformed key is a usage error (exit 2), not a verdict.
    let out = consentry(&["audit", "verify", path.to_str().unwrap(), "--key", "nokey"]);
    assert_eq!(out.status.code(), Some(2));
}

const STATS: &str = "\
cluster.upstream.upstream_rq_total: 412
http.ingress.downstream_rq_total: 431
wasmcustom.consentry.decision.allow: 263
wasmcustom.consentry.decision.deny.access_denied: 58
wasmcustom.consentry.decision.deny.token_expired: 21
wasmcustom.consentry.response.withheld: 4
wasmcustom.consentry.token.cache_hit: 1900
server.uptime: 14400
";

#[test]
fn a_broken_chain_is_shown_as_failed_on_the_page() {
    let log = synthetic_log();
    let mut lines = log.lines.clone();
    let victim = lines
        .iter()
        .position(|l| l.contains("\"code\":\"ok\""))
        .unwrap();
    lines[victim] = lines[victim].replace("\"code\":\"ok\"", "\"code\":\"access_denied\"");
    let text = lines.join("\n");
    let keys = [key()];
    let html = report::render(&report::Input {
        log_name: "envoy.log",
        log_text: &text,
        stats_text: None,
        keys: &keys,
    })
    .unwrap();
    assert!(html.contains("data-status=\"failed\""), "the chain status");
    assert!(html.contains(&format!("Chain verification FAILED: line {}", victim + 1)));
    // Without the key the page says it is not verified, rather than failed.
    let text = log.lines.join("\n");
    let html = report::render(&report::Input {
        log_name: "envoy.log",
        log_text: &text,
        stats_text: None,
        keys: &[],
    })
    .unwrap();
    assert!(html.contains("data-status=\"unverified\""));
}

/// The report as a person sees it: rendered by the CLI, opened in a real headless
/// Chromium, screenshotted and its DOM dumped.
#[test]
fn the_report_renders_in_a_real_browser() {
    let log = synthetic_log();
    let dir = tempfile::tempdir().unwrap();
    let path = write_log(dir.path(), "envoy.log", &log.lines);
    let stats = dir.path().join("stats.txt");
    std::fs::write(&stats, STATS).unwrap();
    let html_path = dir.path().join("report.html");
    let key = key_arg();
    let out = consentry(&[
        "report",
        path.to_str().unwrap(),
        "--stats",
        stats.to_str().unwrap(),
        "-o",
        html_path.to_str().unwrap(),
        "--key",
        &key,
    ]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        stdout(&out),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout(&out).contains("chains verified"), "{}", stdout(&out));
    let html = std::fs::read_to_string(&html_path).unwrap();

    // Self-contained, no script, every string escaped.
    assert!(
        !html.contains("<script"),
        "no JavaScript, and the hostile caller is escaped"
    );
    assert!(html.contains("&#60;script&#62;alert(&#39;x&#39;)&#60;/script&#62;"));
    for external in ["src=\"http", "href=\"http", "url(http", "@import"] {
        assert!(!html.contains(external), "{external}");
    }
    // No personal value: subjects were never written, so they cannot be shown.
    assert!(!html.contains("patient-0"));

    let browser = chromium();
    let screenshot = dir.path().join("report.png");
    let profile = tempfile::tempdir().unwrap();
    let url = format!("file://{}", html_path.display());
    let shot = run_browser(
        &browser,
        profile.path(),
        &[&format!("--screenshot={}", screenshot.display()), &url],
    );
    assert!(
        screenshot.exists(),
        "no screenshot: {}",
        String::from_utf8_lossy(&shot.stderr)
    );
    // For a human to look at: the page and its screenshot.
    let target = consentry_host::plugin::workspace_root().join("target");
    let _ = std::fs::create_dir_all(&target);
    std::fs::copy(&screenshot, target.join("consentry-report-screenshot.png")).unwrap();
    std::fs::copy(&html_path, target.join("consentry-report.html")).unwrap();

    let (width, height, pixels) = decode_png(&screenshot);
    assert_eq!((width, height), (1400, 1800));
    let mut colours = BTreeMap::<[u8; 3], u64>::new();
    for p in pixels.chunks_exact(3) {
        *colours
            .entry([p[0] & 0xf8, p[1] & 0xf8, p[2] & 0xf8])
            .or_default() += 1;
    }
    let total = u64::from(width) * u64::from(height);
    let background = colours.values().max().copied().unwrap_or(0);
    assert!(
        colours.len() > 40,
        "a page with charts has many colours: {}",
        colours.len()
    );
    assert!(
        background * 100 / total < 85,
        "not blank: the most common colour covers {} %",
        background * 100 / total
    );
    // The chart colours are on screen: allowed (green) and access_denied (red).
    for rgb in [[0x3a, 0x9d, 0x6e], [0xd6, 0x45, 0x50]] {
        let key = [rgb[0] & 0xf8, rgb[1] & 0xf8, rgb[2] & 0xf8];
        assert!(
            colours.get(&key).copied().unwrap_or(0) > 500,
            "colour {rgb:02x?} on screen"
        );
    }

    let profile = tempfile::tempdir().unwrap();
    let dom = run_browser(&browser, profile.path(), &["--dump-dom", &url]);
    let dom = String::from_utf8_lossy(&dom.stdout).into_owned();
    for id in [
        "id=\"chart-timeline\"",
        "id=\"chart-callers\"",
        "id=\"chart-redactions\"",
        "id=\"table-reasons\"",
        "id=\"table-fields\"",
        "id=\"table-alerts\"",
        "id=\"table-chains\"",
        "id=\"table-counters\"",
        "id=\"event-consent_revoked\"",
    ] {
        assert!(dom.contains(id), "{id} in the rendered DOM");
    }
    assert!(dom.contains("data-status=\"verified\""));
    let e = &log.expected;
    for (id, value) in [
        ("requests", e.decisions),
        ("refused", e.refused),
        ("allowed", e.decisions - e.refused),
        ("callers", e.callers.len() as u64),
        ("alerts", e.lockouts),
    ] {
        assert_eq!(kpi_value(&dom, id), Some(report::num(value)), "kpi {id}");
    }
    // Every decision is one bar segment's worth in the timeline.
    let timeline = section(&dom, "chart-timeline");
    let counted: u64 = data_counts(timeline).sum();
    assert_eq!(counted, e.decisions);
    // Every refusal code that occurred is in the table of codes, with its count.
    for (code, n) in e.codes.iter().filter(|(c, _)| **c != "ok") {
        let status = Code::ALL
            .iter()
            .find(|c| c.as_str() == *code)
            .unwrap()
            .status();
        let row = format!(
            ">{code}</span></td><td class=\"num\">{status}</td><td class=\"num\">{}</td></tr>",
            report::num(*n)
        );
        assert!(dom.contains(&row), "{row}");
    }
    assert!(
        e.codes.len() >= 12,
        "the log has refusals of most codes: {:?}",
        e.codes
    );
    // How every stream ended, by status, and the withheld answers as a KPI.
    let outcomes = section_to(&dom, "table-outcomes", "</table>");
    for ((outcome, status), n) in &e.outcomes {
        let status = if *status == 0 {
            "none".to_owned()
        } else {
            status.to_string()
        };
        let row = format!(
            ">{outcome}</span></td><td class=\"num\">{status}</td><td class=\"num\">{}</td>",
            report::num(*n)
        );
        assert!(outcomes.contains(&row), "{row} in {outcomes}");
    }
    assert_eq!(outcomes.matches("<tr>").count(), e.outcomes.len() + 1);
    let withheld: u64 = e
        .outcomes
        .iter()
        .filter(|((o, _), _)| *o == "withheld")
        .map(|(_, n)| n)
        .sum();
    assert!(withheld > 0 && e.outcomes.keys().any(|(o, _)| *o == "reset"));
    assert_eq!(kpi_value(&dom, "withheld"), Some(report::num(withheld)));
    assert!(dom.contains("consentry.decision.allow"));
    assert!(dom.contains("1,900"), "counter values are shown");
}

fn kpi_value(dom: &str, id: &str) -> Option<String> {
    let start = dom.find(&format!("id=\"kpi-{id}\""))?;
    let rest = &dom[start..];
    let v = rest.find("class=\"value\">")? + "class=\"value\">".len();
    let end = rest[v..].find('<')?;
    Some(rest[v..v + end].to_owned())
}

fn section<'a>(dom: &'a str, id: &str) -> &'a str {
    section_to(dom, id, "</svg>")
}

/// The DOM from the element with `id` to `end`.
fn section_to<'a>(dom: &'a str, id: &str, end: &str) -> &'a str {
    let start = dom.find(&format!("id=\"{id}\"")).unwrap();
    let len = dom[start..].find(end).unwrap();
    &dom[start..start + len]
}

fn data_counts(s: &str) -> impl Iterator<Item = u64> + '_ {
    s.split("data-count=\"")
        .skip(1)
        .map(|rest| rest[..rest.find('"').unwrap()].parse::<u64>().unwrap())
}

/// Version 1 records (before `outcome` and `status`) still verify and are counted;
/// the page says their outcome was not recorded rather than guessing one.
#[test]
fn version_1_records_are_shown_as_not_recorded() {
    let mut old = AuditTrail::new("0a1b2c3d4e5f6071", None);
    let v1: Vec<String> = (0..3)
        .map(|i| {
            old.record(AuditEntry::new(
                at(START_MS + i * 1000),
                "0f7cb765-86fc-485c-b1a8-6470c46bf45a",
                "spiffe://insurer.example/claims",
                Decision::Allow,
                None,
                "rule_matched",
            ))
        })
        .collect();
    let v1 = crate::report_hostile::reseal(&v1, None, |r| {
        r.v = 1;
        if let audit::Body::Decision(d) = &mut r.body {
            d.outcome = None;
            d.status = None;
        }
    });
    assert!(
        v1.iter()
            .all(|l| l.starts_with("{\"v\":1,") && !l.contains("outcome"))
    );
    let render = |lines: &[String]| {
        report::render(&report::Input {
            log_name: "envoy.log",
            log_text: &lines.join("\n"),
            stats_text: None,
            keys: &[],
        })
        .unwrap()
    };

    let html = render(&v1);
    assert!(
        html.contains("data-status=\"verified\""),
        "v1 records verify"
    );
    assert_eq!(kpi_value(&html, "requests").as_deref(), Some("3"));
    assert!(html.contains("<div class=\"note\">not in v1 records</div>"));
    assert!(
        html.contains(">not recorded</span></td><td class=\"num\">–</td><td class=\"num\">3</td>")
    );

    // Mixed with version 2 records (a plugin upgraded mid-log): both are counted.
    let mut new = AuditTrail::new("c1d2e3f405a6b7c8", None);
    let mut entry = AuditEntry::new(
        at(START_MS + 5000),
        "1f7cb765-86fc-485c-b1a8-6470c46bf45a",
        "spiffe://insurer.example/claims",
        Decision::Allow,
        Some(Code::UnsafeResponse),
        "content_type_not_allowed",
    );
    entry.ending = Ending::Withheld;
    entry.status = 502;
    let mut lines = v1.clone();
    lines.push(new.record(entry));
    let html = render(&lines);
    assert!(html.contains("data-status=\"verified\""));
    assert_eq!(kpi_value(&html, "withheld").as_deref(), Some("1"));
    assert!(
        html.contains(">withheld</span></td><td class=\"num\">502</td><td class=\"num\">1</td>")
    );
    assert!(html.contains("Not recorded: 3 version 1 records"));
}
