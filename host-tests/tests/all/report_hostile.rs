//! `consentry report` on an audit log whose every string is hostile: markup that would
//! run a script or break out of the element, attribute, SVG text or `<style>` it lands
//! in, `javascript:` URLs, entities, separators and control characters, very long
//! values. The log is written by the real audit writer and verifies. The page's source
//! must carry those strings only escaped, and in a real headless Chromium no injected
//! element may exist and no injected script may have run.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, SystemTime};

use consentry_core::audit::{
    AuditEntry, AuditKey, AuditTrail, Body, Decision, Ending, Record, Redaction, ZERO_HASH,
    emission,
};
use consentry_core::problem::Code;
use consentry_host::report::{self, Text};
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use crate::browser::{chromium, run_browser};

/// What an injected script does: mark the document. The attribute's name is put
/// together when it runs, so the payloads, shown as text, never contain it.
const MARK: &str = "document.documentElement.setAttribute('data-pw'+'ned',";
const MARKED: &str = "data-pwned";

/// 2026-11-27T09:00:00Z.
const START_MS: u64 = 1_795_770_000_000;

fn payloads() -> Vec<String> {
    vec![
        format!("<script>{MARK}'script')</script>"),
        format!("\"><img src=x onerror=\"{MARK}'img')\">"),
        format!("'><svg onload={MARK}'onload')>"),
        format!("</style><script>{MARK}'style')</script><style>"),
        format!("</title></text></svg><img src=x onerror={MARK}'svg')>"),
        format!("<a href=\"javascript:{MARK}'url')\">x</a> javascript:{MARK}'url')"),
        format!("<!--<![CDATA[<script>{MARK}'cdata')</script>]]>--> &lt;script&gt;"),
        "nul\0 bel\u{7} esc\u{1b}[31m del\u{7f} c1\u{85} ls\u{2028} ps\u{2029} rlo\u{202e}txt\u{202c} tab\t nl\n cr\r".to_owned(),
        format!("{}<script>{MARK}'long')</script>", "x".repeat(100_000)),
    ]
}

fn at(ms: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_millis(ms)
}

/// One chain per payload, its id carrying it; every string of its records carries it
/// too. The writer takes codes, outcomes, actions and alerts as enums: those members
/// are set to the payload afterwards and the chain sealed again ([`reseal`]). Chain 0
/// checkpoints an hour later, so the verifier warns about every other chain (a warning
/// names its chain).
fn hostile_log(key: &AuditKey) -> (Vec<String>, u64) {
    let mut lines = Vec::new();
    let mut decisions = 0;
    for (i, p) in payloads().iter().enumerate() {
        let mut trail = AuditTrail::new(format!("{i}{p}"), Some(key.clone()));
        let t0 = START_MS + i as u64 * 1000;
        let mut chain = vec![trail.checkpoint(at(t0), Duration::from_secs(60))];
        let (request_id, caller, subject) = (format!("req{p}"), format!("caller{p}"), p.clone());
        let (purpose, consent, route, rule) = (
            format!("purpose{p}"),
            format!("consent{p}"),
            format!("route{p}"),
            format!("rule{p}"),
        );
        // A reason is a constant of the plugin; a test may leak one.
        let reason: &'static str = Box::leak(format!("reason{p}").into_boxed_str());
        let (released, redacted) = (format!("released{p}"), format!("field{p}"));
        for (decision, code, ending, status) in [
            (Decision::Allow, None, Ending::Released, 200),
            (
                Decision::Deny,
                Some(Code::AccessDenied),
                Ending::Refused,
                403,
            ),
        ] {
            let mut entry =
                AuditEntry::new(at(t0 + 500), &request_id, &caller, decision, code, reason);
            entry.subject = Some(&subject);
            entry.acts_for = Some(&subject);
            entry.purpose = Some(&purpose);
            entry.consent_id = Some(&consent);
            entry.route = Some(&route);
            entry.rule = Some(&rule);
            entry.ending = ending;
            entry.status = status;
            if decision == Decision::Allow {
                entry
                    .fields
                    .released(&released, 1)
                    .redacted(&redacted, Redaction::Remove, 2);
            } else {
                entry.alert = Some(consentry_core::audit::Alert::Lockout);
            }
            chain.push(trail.record(entry));
            decisions += 1;
        }
        if i == 0 {
            chain.push(trail.checkpoint(at(t0 + 3_600_000), Duration::from_secs(60)));
        }
        // Re-sealing without a change gives the writer's bytes: the helper is exact.
        assert_eq!(reseal(&chain, Some(key), |_| {}), chain);
        let chain = reseal(&chain, Some(key), |r| {
            if let Body::Decision(d) = &mut r.body {
                d.outcome = Some(format!("outcome{p}"));
                for f in &mut d.redacted {
                    f.action = format!("action{p}");
                }
                if d.decision == "deny" {
                    d.code = format!("code{p}");
                    d.alert = Some(format!("alert{p}"));
                }
            }
        });
        lines.extend(chain.iter().map(|l| emission(l)));
    }
    (lines, decisions)
}

/// Rewrites one chain's records (bare JSON lines, in order) through `patch` and seals
/// them again as the writer does: canonical bytes, `prev`, then HMAC-SHA-256 under
/// `key` or SHA-256.
pub fn reseal(
    lines: &[String],
    key: Option<&AuditKey>,
    mut patch: impl FnMut(&mut Record),
) -> Vec<String> {
    let mut prev = ZERO_HASH.to_owned();
    lines
        .iter()
        .map(|line| {
            let (mut record, _) = Record::parse(line).unwrap();
            patch(&mut record);
            record.prev = prev.clone();
            let canonical = record.canonical();
            let digest: Vec<u8> = match key {
                Some(k) => {
                    let mut mac = Hmac::<Sha256>::new_from_slice(&k.secret).unwrap();
                    mac.update(canonical.as_bytes());
                    mac.finalize().into_bytes().to_vec()
                }
                None => Sha256::digest(canonical.as_bytes()).to_vec(),
            };
            let hash: String = digest.iter().map(|b| format!("{b:02x}")).collect();
            prev = hash.clone();
            format!(
                "{},\"hash\":\"{hash}\"}}",
                canonical.strip_suffix('}').unwrap()
            )
        })
        .collect()
}

/// `s` as the page's source must carry it: cleaned as [`Text`] does, then escaped
/// as the template's escaper does.
fn escaped(s: &str) -> String {
    let mut out = String::new();
    for c in Text::new(s).as_str().chars() {
        match c {
            '&' => out.push_str("&#38;"),
            '<' => out.push_str("&#60;"),
            '>' => out.push_str("&#62;"),
            '"' => out.push_str("&#34;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const ELEMENTS: [&str; 27] = [
    "html", "head", "meta", "title", "style", "body", "header", "main", "footer", "section", "div",
    "h1", "h2", "p", "span", "i", "code", "table", "thead", "tbody", "tr", "th", "td", "svg",
    "line", "rect", "text",
];

const ATTRIBUTES: [&str; 26] = [
    "title",
    "lang",
    "charset",
    "name",
    "content",
    "class",
    "id",
    "style",
    "data-status",
    "data-code",
    "data-count",
    "viewbox",
    "role",
    "aria-label",
    "x",
    "y",
    "x1",
    "y1",
    "x2",
    "y2",
    "width",
    "height",
    "fill",
    "rx",
    "text-anchor",
    "transform",
];

/// Every start tag of serialised HTML, with the names of its attributes. Text and
/// attribute values are escaped in both the page's source and Chromium's DOM dump
/// (`"` in values, `<` in text), so every `<` outside a quoted value opens a tag; a
/// bare one is an error here.
fn elements(html: &str) -> Vec<(String, Vec<String>)> {
    let mut out = Vec::new();
    let mut rest = html;
    while let Some(open) = rest.find('<') {
        rest = &rest[open + 1..];
        if rest.starts_with('/') || rest.to_ascii_lowercase().starts_with("!doctype html>") {
            rest = &rest[rest.find('>').unwrap() + 1..];
            continue;
        }
        let name_len = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
            .unwrap();
        assert!(
            name_len > 0,
            "a '<' that opens no tag: {}",
            &rest[..rest.len().min(80)]
        );
        let name = rest[..name_len].to_ascii_lowercase();
        rest = &rest[name_len..];
        let mut attributes = Vec::new();
        loop {
            rest = rest.trim_start();
            if let Some(r) = rest.strip_prefix('>').or_else(|| rest.strip_prefix("/>")) {
                rest = r;
                break;
            }
            let len = rest.find(['=', ' ', '>', '/']).unwrap();
            assert!(
                len > 0,
                "a malformed tag <{name}: {}",
                &rest[..rest.len().min(80)]
            );
            attributes.push(rest[..len].to_ascii_lowercase());
            rest = &rest[len..];
            if let Some(value) = rest.strip_prefix("=\"") {
                rest = &value[value.find('"').unwrap() + 1..];
            }
        }
        out.push((name, attributes));
    }
    out
}

/// Only the page's own elements and attributes: nothing a payload could have added.
fn assert_only_the_pages_markup(html: &str, what: &str) {
    let found = elements(html);
    assert!(
        found.len() > 200,
        "{what}: a whole page: {} elements",
        found.len()
    );
    for (name, attributes) in &found {
        assert!(
            ELEMENTS.contains(&name.as_str()),
            "{what}: an injected <{name}>"
        );
        for a in attributes {
            assert!(ATTRIBUTES.contains(&a.as_str()), "{what}: <{name} {a}=…>");
        }
    }
    let count = |tag: &str| found.iter().filter(|(n, _)| n == tag).count();
    assert_eq!(count("style"), 1, "{what}: one <style>");
    assert_eq!(count("svg"), 3, "{what}: the three charts");
}

/// The page's source: each hostile string only escaped, nothing that is not text.
fn assert_source_is_escaped(html: &str, shown: &[String]) {
    for p in payloads() {
        assert!(
            !html.contains(&p),
            "a payload unescaped: {}",
            &p[..p.len().min(80)]
        );
    }
    for s in shown {
        assert!(
            html.contains(&escaped(s)),
            "shown escaped: {}",
            &s[..s.len().min(80)]
        );
    }
    let bad: BTreeSet<char> = html
        .chars()
        .filter(|&c| (c.is_control() && c != '\n') || ('\u{2028}'..='\u{202e}').contains(&c))
        .collect();
    assert!(bad.is_empty(), "characters that are not text: {bad:?}");
    assert!(html.contains('\u{fffd}'));
    assert_only_the_pages_markup(html, "source");
}

/// The DOM after Chromium loaded the page (and ran whatever script it had).
fn dump_dom(browser: &Path, html: &Path) -> String {
    let profile = tempfile::tempdir().unwrap();
    let url = format!("file://{}", html.display());
    let out = run_browser(browser, profile.path(), &["--dump-dom", &url]);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn hostile_strings_in_every_shown_field_stay_text() {
    let key = AuditKey {
        kid: format!("kid<script>{MARK}'kid')</script>\"><img src=x onerror={MARK}'kid2')>\0"),
        secret: b"a 32-byte audit key for the test".to_vec(),
    };
    let (lines, decisions) = hostile_log(&key);
    let dir = tempfile::tempdir().unwrap();
    // The page names the log by its file name: hostile too.
    let name = format!("\"><img src=x onerror={MARK}'name')>.log");
    let log = dir.path().join(&name);
    std::fs::write(&log, lines.join("\n") + "\n").unwrap();
    let ps = payloads();
    let mut stats = String::from("wasmcustom.consentry.decision.allow: 8\n");
    for (i, p) in ps
        .iter()
        .enumerate()
        .filter(|(_, p)| !p.contains([' ', '\n']))
    {
        stats.push_str(&format!("wasmcustom.consentry.n{i}{p}: v{p}\n"));
    }
    let stats_path = dir.path().join("stats.txt");
    std::fs::write(&stats_path, &stats).unwrap();
    let page = dir.path().join("report.html");
    let said = report::write(&log, Some(&stats_path), &page, std::slice::from_ref(&key)).unwrap();
    let total_records = lines.len();
    assert!(
        said.contains(&format!("chains verified ({total_records} records)")),
        "{said}"
    );
    let html = std::fs::read_to_string(&page).unwrap();
    // For a human to look at.
    let target = consentry_host::plugin::workspace_root().join("target");
    let _ = std::fs::create_dir_all(&target);
    std::fs::copy(&page, target.join("consentry-report-hostile.html")).unwrap();

    // (a) Every shown member of every record, the key id, the counters and the file
    // name are on the page, escaped; no payload is there as it was written.
    let mut shown = vec![name.clone(), key.kid.clone()];
    for (i, p) in ps.iter().enumerate() {
        shown.extend([
            format!("{i}{p}"),
            format!("caller{p}"),
            format!("reason{p}"),
            format!("field{p}"),
            format!("code{p}"),
            format!("outcome{p}"),
            format!("action{p}"),
            format!("alert{p}"),
        ]);
        if !p.contains([' ', '\n']) {
            shown.extend([format!("consentry.n{i}{p}"), format!("v{p}")]);
        }
    }
    assert_source_is_escaped(&html, &shown);
    assert!(html.contains("data-status=\"verified\""));
    // The timeline carries the code in an attribute, and the verifier warns about
    // the chains that fell silent, naming them.
    assert!(html.contains(&format!(
        "data-code=\"{}\"",
        escaped(&format!("code{}", ps[1]))
    )));
    assert!(html.matches("<p class=\"hint\">Warning: ").count() >= ps.len() - 1);

    // A wrong key: the failure names the chain and the hostile key id, escaped.
    let other = AuditKey {
        kid: "other".into(),
        secret: key.secret.clone(),
    };
    let failed = report::render(&report::Input {
        log_name: &name,
        log_text: &lines.join("\n"),
        stats_text: Some(&stats),
        keys: &[other],
    })
    .unwrap();
    assert!(failed.contains("data-status=\"failed\""));
    assert!(failed.contains("Chain verification FAILED: line 1: chain"));
    assert_source_is_escaped(&failed, &[format!("0{}", ps[0])]);
    let failed_page = dir.path().join("failed.html");
    std::fs::write(&failed_page, &failed).unwrap();

    // (b) In a browser: the page renders whole, with the page's elements only, and no
    // injected script ran.
    let browser = chromium();
    for (what, path) in [("verified page", &page), ("failed page", &failed_page)] {
        let dom = dump_dom(&browser, path);
        assert!(!dom.contains(MARKED), "{what}: an injected script ran");
        assert_only_the_pages_markup(&dom, what);
        assert!(dom.contains("</footer>"), "{what}: rendered to the end");
        assert!(dom.contains("id=\"table-reasons\"") && dom.contains("id=\"table-outcomes\""));
        // Shown as text: the DOM has the payload's characters, escaped as text.
        let reason = format!("reason{}", ps[0])
            .replace('<', "&lt;")
            .replace('>', "&gt;");
        assert!(dom.contains(&reason), "{what}: {reason}");
        if what == "verified page" {
            let rows = dom.split("id=\"table-chains\"").nth(1).unwrap();
            let rows = &rows[..rows.find("</table>").unwrap()];
            assert_eq!(rows.matches("<tr>").count(), ps.len() + 1);
            assert!(dom.contains(&format!("<div class=\"value\">{decisions}</div>")));
        }
    }

    // The check can fail: the same payloads written raw do run in this browser.
    let raw = dir.path().join("raw.html");
    std::fs::write(
        &raw,
        format!(
            "<!DOCTYPE html><html><body><p>{}</p><p>{}</p></body></html>",
            ps[0], ps[3]
        ),
    )
    .unwrap();
    let dom = dump_dom(&browser, &raw);
    assert!(
        dom.contains(&format!("{MARKED}=\"")),
        "a raw script runs: {dom}"
    );
    assert!(elements(&dom).iter().any(|(n, _)| n == "script"));
}
