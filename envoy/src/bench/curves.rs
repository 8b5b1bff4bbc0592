//! How Consentry's cost grows, so a user can predict their own: requests/s and µs
//! added per request against the response body's size (1 KB to 1 MB) and against
//! the policy's size (routes × rules), each point measured beside bare Envoy.
//!
//! The body curve serves the history route a body of the asked size from a small
//! upstream of its own (`GET /patients/p-1/history?bytes=N`): the patient record,
//! cut down below its own size, or grown with encounters above it, so the insurer's
//! redaction does the work it does on real records (its classified members kept,
//! masked or removed, the clinical history skipped whole). The policy curve adds
//! routes that never match before the record's route, each with the same number of
//! rules, and rules that never match before the insurer's on the record's route,
//! then reads the 5 KB record.
//!
//! "µs added per request" is `1e6 / rps(Consentry) − 1e6 / rps(bare)` with wrk's
//! 32 connections keeping the one Envoy worker busy: what a request costs the worker
//! beyond routing it. It includes the upstream's and wrk's share of the two cores,
//! the same for both rows.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use serde_json::{Map, Value, json};

use super::report::{median, thousands};
use super::tokens::Minter;
use super::wrk::{self, Load};
use super::{Options, bench_policy};
use crate::{Envoy, RunningEnvoy, send_with_timeout};

/// The body sizes of the body curve, in bytes.
pub const BODY_SIZES: [usize; 6] = [1_000, 4_000, 16_000, 64_000, 256_000, 1_000_000];

/// The policy shapes of the policy curve: (routes, rules per route).
pub const POLICY_SHAPES: [(usize, usize); 5] = [(1, 1), (10, 10), (100, 10), (1000, 1), (1000, 10)];

/// One point of a curve, over the repetitions.
#[derive(Debug, Clone)]
pub struct Point {
    pub label: String,
    /// The x value: body bytes, or routes × rules.
    pub x: f64,
    /// The body size the client got from bare Envoy and from Consentry.
    pub bytes: (usize, usize),
    pub bare: Vec<f64>,
    pub consentry: Vec<f64>,
}

impl Point {
    pub fn bare_rps(&self) -> f64 {
        median(self.bare.clone())
    }

    pub fn consentry_rps(&self) -> f64 {
        median(self.consentry.clone())
    }

    /// µs a request costs beyond bare Envoy's.
    pub fn added_us(&self) -> f64 {
        let (b, c) = (self.bare_rps(), self.consentry_rps());
        if b > 0.0 && c > 0.0 {
            1e6 / c - 1e6 / b
        } else {
            0.0
        }
    }
}

/// Both curves.
#[derive(Debug, Clone)]
pub struct Curves {
    pub body: Vec<Point>,
    pub policy: Vec<Point>,
}

/// Runs both curves and writes `curves.md`, `curves-body.svg` and
/// `curves-policy.svg` into `options.out`.
pub fn run(options: &Options) -> Result<Curves> {
    let wrk_bin = wrk::binary()?;
    let scratch = tempfile::Builder::new()
        .prefix("consentry-curves-")
        .tempdir()?;
    let (script, _) = wrk::write_scripts(scratch.path())?;
    let token = Minter::new()?.token()?;
    let auth = format!("Authorization: Bearer {token}");
    let service =
        consentry_example_service::spawn("127.0.0.1:0").context("starting the example service")?;
    let sized = SizedUpstream::start()?;
    let example_port = service.addr().port();
    let base_policy = bench_policy(options.audit)?;

    let consentry = |upstream: u16, policy: &str| -> Result<RunningEnvoy> {
        Envoy::builder()
            .upstream_port(upstream)
            .var("CONSENT_PORT", example_port)
            .concurrency(1)
            .log_level("info")
            .template("consentry.yaml")
            .wasm(crate::wasm_path()?)
            .plugin_config_json(policy)
            .start()
    };
    let bare = |upstream: u16| -> Result<RunningEnvoy> {
        Envoy::builder()
            .upstream_port(upstream)
            .concurrency(1)
            .log_level("info")
            .template("bare.yaml")
            .start()
    };

    eprintln!("starting the Envoys of the curves");
    let body_bare = bare(sized.port)?;
    let body_consentry = consentry(sized.port, &base_policy)?;
    let policy_bare = bare(example_port)?;
    let mut policy_envoys = Vec::new();
    for (routes, rules) in POLICY_SHAPES {
        let policy = sized_policy(&base_policy, routes, rules)?;
        policy_envoys.push(consentry(example_port, &policy)?);
    }

    let mut body: Vec<Point> = BODY_SIZES
        .iter()
        .map(|&n| Point {
            label: size_label(n),
            x: n as f64,
            bytes: (0, 0),
            bare: Vec::new(),
            consentry: Vec::new(),
        })
        .collect();
    let mut policy: Vec<Point> = POLICY_SHAPES
        .iter()
        .map(|&(routes, rules)| Point {
            label: format!("{routes} × {rules}"),
            x: (routes * rules) as f64,
            bytes: (0, 0),
            bare: Vec::new(),
            consentry: Vec::new(),
        })
        .collect();

    // The answers first: each point must serve what it says (and Consentry fetches
    // its status list before anything is measured).
    for (point, &n) in body.iter_mut().zip(&BODY_SIZES) {
        let path = format!("/patients/p-1/history?bytes={n}");
        point.bytes = (
            check(&body_bare, &path, &auth)?,
            check(&body_consentry, &path, &auth)?,
        );
    }
    for (point, envoy) in policy.iter_mut().zip(&policy_envoys) {
        point.bytes = (
            check(&policy_bare, "/patients/p-1", &auth)?,
            check(envoy, "/patients/p-1", &auth)?,
        );
    }

    let measure = |envoy: &RunningEnvoy, path: &str| -> Result<f64> {
        let url = format!("{}{path}", envoy.base_url());
        let load = |seconds| Load {
            url: &url,
            connections: options.connections,
            seconds,
            script: &script,
            token_file: None,
            headers: vec![auth.clone()],
        };
        if options.warmup_seconds > 0 {
            wrk::run(&wrk_bin, &load(options.warmup_seconds), scratch.path())?;
        }
        let m = wrk::run(&wrk_bin, &load(options.seconds), scratch.path())?;
        if m.status_errors + m.socket_errors > 0 {
            bail!(
                "{url}: {} error statuses, {} socket errors",
                m.status_errors,
                m.socket_errors
            );
        }
        Ok(m.rps())
    };
    for rep in 0..options.repetitions {
        let bare_first = rep % 2 == 0;
        for (point, &n) in body.iter_mut().zip(&BODY_SIZES) {
            let path = format!("/patients/p-1/history?bytes={n}");
            let (b, c) = pair(
                bare_first,
                || measure(&body_bare, &path),
                || measure(&body_consentry, &path),
            )?;
            eprintln!(
                "[{}/{}] body {:>7}: bare {:>7} req/s, Consentry {:>7} req/s",
                rep + 1,
                options.repetitions,
                point.label,
                thousands(b),
                thousands(c)
            );
            point.bare.push(b);
            point.consentry.push(c);
        }
        for (point, envoy) in policy.iter_mut().zip(&policy_envoys) {
            let (b, c) = pair(
                bare_first,
                || measure(&policy_bare, "/patients/p-1"),
                || measure(envoy, "/patients/p-1"),
            )?;
            eprintln!(
                "[{}/{}] policy {:>9}: bare {:>7} req/s, Consentry {:>7} req/s",
                rep + 1,
                options.repetitions,
                point.label,
                thousands(b),
                thousands(c)
            );
            point.bare.push(b);
            point.consentry.push(c);
        }
    }
    drop(policy_envoys);
    drop((body_bare, body_consentry, policy_bare));
    drop(sized);
    drop(service);

    let curves = Curves { body, policy };
    write(options, &curves)?;
    Ok(curves)
}

/// Runs `bare` and `consentry` in the order given, returns (bare, consentry).
fn pair(
    bare_first: bool,
    bare: impl FnOnce() -> Result<f64>,
    consentry: impl FnOnce() -> Result<f64>,
) -> Result<(f64, f64)> {
    if bare_first {
        let b = bare()?;
        Ok((b, consentry()?))
    } else {
        let c = consentry()?;
        Ok((bare()?, c))
    }
}

/// One request that must be answered 200; the body size it served.
fn check(envoy: &RunningEnvoy, path: &str, auth: &str) -> Result<usize> {
    let url = format!("{}{path}", envoy.base_url());
    let token = auth.trim_start_matches("Authorization: ");
    let mut last = None;
    for _ in 0..50 {
        let r = send_with_timeout(
            "GET",
            &url,
            &[("authorization", token)],
            None,
            Duration::from_secs(10),
        )?;
        if r.status == 200 {
            return Ok(r.body.len());
        }
        // Consentry may still be fetching its status list (a 503 meanwhile).
        std::thread::sleep(Duration::from_millis(100));
        last = Some(format!("{} {}", r.status, r.text()));
    }
    bail!("GET {url} did not answer 200: {}", last.unwrap_or_default())
}

fn size_label(n: usize) -> String {
    if n >= 1_000_000 {
        format!("{} MB", n / 1_000_000)
    } else {
        format!("{} KB", n / 1_000)
    }
}

// ── The policies of the policy curve ──────────────────────────────────────────

/// The benchmark policy with `routes` routes of `rules` rules each: routes that never
/// match come first (their own paths), and on the record's route, rules that never
/// match (another partner) come before the insurer's.
pub fn sized_policy(base: &str, routes: usize, rules: usize) -> Result<String> {
    let mut policy: Value = serde_json::from_str(base)?;
    let list = policy
        .get_mut("routes")
        .and_then(Value::as_array_mut)
        .ok_or_else(|| anyhow!("the policy has no routes"))?;
    let record = list
        .iter()
        .find(|r| r["name"] == "patient-record")
        .cloned()
        .ok_or_else(|| anyhow!("the policy has no patient-record route"))?;
    let insurer = record["rules"]
        .as_array()
        .and_then(|rules| rules.iter().find(|r| r["name"] == "insurer-claims"))
        .cloned()
        .ok_or_else(|| anyhow!("patient-record has no insurer-claims rule"))?;
    let filler_rule = |j: usize| {
        let mut r = insurer.clone();
        r["name"] = json!(format!("other-partner-{j}"));
        r["partners"] = json!(["research_labs"]);
        r
    };
    let mut main = record.clone();
    let mut main_rules: Vec<Value> = (1..rules).map(filler_rule).collect();
    main_rules.push(insurer.clone());
    main["rules"] = Value::Array(main_rules);
    let mut routes_out: Vec<Value> = (1..routes)
        .map(|i| {
            let mut r = record.clone();
            r["name"] = json!(format!("other-route-{i}"));
            r["path"] = json!(format!("/other-{i}/{{id}}"));
            r["rules"] = Value::Array((0..rules).map(filler_rule).collect());
            r
        })
        .collect();
    routes_out.push(main);
    *list = routes_out;
    Ok(policy.to_string())
}

// ── An upstream that serves record-like bodies of any size ────────────────────

/// `GET /patients/p-1/history?bytes=N` answers a record-like JSON body of about N
/// bytes (exactly the same bytes every time); one thread per connection.
struct SizedUpstream {
    port: u16,
    stop: Arc<AtomicBool>,
}

impl SizedUpstream {
    fn start() -> Result<Self> {
        let state = consentry_example_service::ServiceState::builtin()?;
        let record: Value = serde_json::from_slice(
            &state
                .history("p-1")
                .ok_or_else(|| anyhow!("the example data has no p-1 history"))?,
        )?;
        let mut bodies = BTreeMap::new();
        for n in BODY_SIZES {
            bodies.insert(n, Arc::new(sized_body(&record, n)?));
        }
        let bodies = Arc::new(bodies);
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = Arc::clone(&stop);
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stopping.load(Ordering::Relaxed) {
                    return;
                }
                let Ok(conn) = conn else { continue };
                let bodies = Arc::clone(&bodies);
                std::thread::spawn(move || serve(conn, &bodies));
            }
        });
        Ok(Self { port, stop })
    }
}

impl Drop for SizedUpstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wakes the accept loop so it sees the flag and ends.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn serve(conn: TcpStream, bodies: &BTreeMap<usize, Arc<Vec<u8>>>) {
    let _ = conn.set_nodelay(true);
    let Ok(mut out) = conn.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(conn);
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let size = line
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.split_once("bytes="))
            .and_then(|(_, n)| n.split('&').next()?.parse::<usize>().ok());
        // The rest of the request head (no request here has a body).
        loop {
            line.clear();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            if line.trim_end().is_empty() {
                break;
            }
        }
        // One write of the whole answer, with Nagle off: a head and a body written
        // apart wait on the peer's delayed ACK (40 ms), which capped every small
        // body at ~730 req/s for bare Envoy and Consentry alike.
        let written = match size.and_then(|n| bodies.get(&n)) {
            Some(body) => {
                let mut answer = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                    body.len()
                )
                .into_bytes();
                answer.extend_from_slice(body);
                out.write_all(&answer)
            }
            None => out.write_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n"),
        };
        if written.is_err() {
            return;
        }
    }
}

/// The patient record (with its history) made about `n` bytes long: members of the
/// record (in order) while they fit, then encounters of its history, repeated, until
/// the body reaches `n`.
pub fn sized_body(history: &Value, n: usize) -> Result<Vec<u8>> {
    let mut record = history
        .as_object()
        .cloned()
        .ok_or_else(|| anyhow!("the history is not an object"))?;
    let encounters: Vec<Value> = record
        .get("clinical")
        .and_then(|c| c.get("encounters"))
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if encounters.is_empty() {
        bail!("the history has no encounters");
    }
    if let Some(Value::Object(c)) = record.get_mut("clinical") {
        c.insert("encounters".into(), Value::Array(Vec::new()));
    }
    let small = serde_json::to_vec(&record)?;
    if small.len() > n {
        let mut cut = Map::new();
        for (k, v) in &record {
            cut.insert(k.clone(), v.clone());
            if serde_json::to_vec(&cut)?.len() > n {
                cut.remove(k);
            }
        }
        return Ok(serde_json::to_vec(&cut)?);
    }
    let mut list = Vec::new();
    let mut size = small.len();
    for e in encounters.iter().cycle() {
        let grows = serde_json::to_vec(e)?.len() + 1;
        if size + grows > n {
            break;
        }
        size += grows;
        list.push(e.clone());
    }
    if let Some(Value::Object(c)) = record.get_mut("clinical") {
        c.insert("encounters".into(), Value::Array(list));
    }
    Ok(serde_json::to_vec(&record)?)
}

// ── The report ────────────────────────────────────────────────────────────────

/// The two tables, as Markdown.
pub fn tables(curves: &Curves) -> String {
    let mut t = String::new();
    for (title, x_name, points) in [
        (
            "Against the response body's size (history route, insurer's view)",
            "body (upstream → client bytes)",
            &curves.body,
        ),
        (
            "Against the policy's size (5 KB record, matched route and rule last)",
            "routes × rules",
            &curves.policy,
        ),
    ] {
        let _ = writeln!(t, "{title}:\n");
        let _ = writeln!(
            t,
            "| {x_name} | bare req/s | Consentry req/s | × bare | µs added per request |\n|---|---:|---:|---:|---:|"
        );
        for p in points {
            let _ = writeln!(
                t,
                "| {} ({} → {}) | {} | {} | {:.2} | {:.0} |",
                p.label,
                thousands(p.bytes.0 as f64),
                thousands(p.bytes.1 as f64),
                thousands(p.bare_rps()),
                thousands(p.consentry_rps()),
                p.consentry_rps() / p.bare_rps().max(1.0),
                p.added_us()
            );
        }
        t.push('\n');
    }
    t
}

fn write(options: &Options, curves: &Curves) -> Result<()> {
    fs::create_dir_all(&options.out)
        .with_context(|| format!("creating {}", options.out.display()))?;
    let mut md = String::from("# How Consentry's cost grows\n\n");
    let _ = writeln!(
        md,
        "wrk -t1 -c{}, {} × {} s per point ({} s warm-up), bare Envoy and Consentry interleaved; {}; load average {}.\n",
        options.connections,
        options.repetitions,
        options.seconds,
        options.warmup_seconds,
        options.audit.describe(),
        super::load_average()
    );
    md.push_str(&tables(curves));
    fs::write(options.out.join("curves.md"), md)?;
    fs::write(
        options.out.join("curves-body.svg"),
        svg(
            "Consentry against the body's size",
            "response body (bytes, log scale)",
            &curves.body,
        ),
    )?;
    fs::write(
        options.out.join("curves-policy.svg"),
        svg(
            "Consentry against the policy's size",
            "routes × rules (log scale)",
            &curves.policy,
        ),
    )?;
    Ok(())
}

/// A line of a chart: its name, colour and values.
type Series<'a> = (&'a str, &'a str, Vec<f64>);

/// Two panels over a log-scale x axis: requests/s of bare Envoy and Consentry, and
/// µs added per request.
pub fn svg(title: &str, x_title: &str, points: &[Point]) -> String {
    const W: f64 = 420.0;
    const H: f64 = 260.0;
    const LEFT: f64 = 70.0;
    const TOP: f64 = 50.0;
    const GAP: f64 = 110.0;
    let width = LEFT + 2.0 * W + GAP + 30.0;
    let height = TOP + H + 70.0;
    let xs: Vec<f64> = points.iter().map(|p| p.x.max(1.0).log10()).collect();
    let (x0, x1) = (
        xs.iter().copied().fold(f64::INFINITY, f64::min),
        xs.iter().copied().fold(f64::NEG_INFINITY, f64::max),
    );
    let span = (x1 - x0).max(1e-9);
    let px = |x: f64, left: f64| left + (x - x0) / span * W;
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0}" height="{height:.0}" viewBox="0 0 {width:.0} {height:.0}" font-family="sans-serif" font-size="12"><rect width="100%" height="100%" fill="white"/><text x="10" y="22" font-size="15" font-weight="bold">{}</text>"#,
        escape(title)
    );
    let panels: [(&str, Vec<Series>); 2] = [
        (
            "requests/s",
            vec![
                (
                    "bare Envoy",
                    "#8c8c8c",
                    points.iter().map(Point::bare_rps).collect(),
                ),
                (
                    "Consentry",
                    "#3a9a5b",
                    points.iter().map(Point::consentry_rps).collect(),
                ),
            ],
        ),
        (
            "µs added per request",
            vec![(
                "Consentry − bare",
                "#c0392b",
                points.iter().map(Point::added_us).collect(),
            )],
        ),
    ];
    for (k, (y_title, series)) in panels.iter().enumerate() {
        let left = LEFT + k as f64 * (W + GAP);
        let max = series
            .iter()
            .flat_map(|(_, _, v)| v.iter().copied())
            .fold(1.0_f64, f64::max)
            * 1.1;
        let py = |v: f64| TOP + H - v.max(0.0) / max * H;
        let _ = writeln!(
            out,
            r##"<rect x="{left:.0}" y="{TOP:.0}" width="{W:.0}" height="{H:.0}" fill="none" stroke="#bbb"/><text x="{:.0}" y="{:.0}" font-weight="bold">{}</text><text x="{:.0}" y="{:.0}" text-anchor="middle">{}</text>"##,
            left,
            TOP - 8.0,
            escape(y_title),
            left + W / 2.0,
            TOP + H + 40.0,
            escape(x_title)
        );
        for frac in [0.0, 0.5, 1.0] {
            let v = max / 1.1 * frac;
            let _ = writeln!(
                out,
                r#"<text x="{:.0}" y="{:.0}" text-anchor="end">{}</text>"#,
                left - 6.0,
                py(v) + 4.0,
                thousands(v)
            );
        }
        for (p, x) in points.iter().zip(&xs) {
            let _ = writeln!(
                out,
                r#"<text x="{:.0}" y="{:.0}" text-anchor="middle">{}</text>"#,
                px(*x, left),
                TOP + H + 18.0,
                escape(&p.label)
            );
        }
        for (s, (name, colour, values)) in series.iter().enumerate() {
            let path: Vec<String> = values
                .iter()
                .zip(&xs)
                .map(|(v, x)| format!("{:.1},{:.1}", px(*x, left), py(*v)))
                .collect();
            let _ = writeln!(
                out,
                r#"<polyline points="{}" fill="none" stroke="{colour}" stroke-width="2"/>"#,
                path.join(" ")
            );
            for (v, x) in values.iter().zip(&xs) {
                let _ = writeln!(
                    out,
                    r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{colour}"/>"#,
                    px(*x, left),
                    py(*v)
                );
            }
            let _ = writeln!(
                out,
                r#"<text x="{:.0}" y="{:.0}" fill="{colour}">{}</text>"#,
                left + W - 150.0,
                TOP + 18.0 + s as f64 * 16.0,
                escape(name)
            );
        }
    }
    out.push_str("</svg>\n");
    out
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::super::AuditTrail;
    use super::*;

    fn history() -> Value {
        let state = consentry_example_service::ServiceState::builtin().unwrap();
        serde_json::from_slice(&state.history("p-1").unwrap()).unwrap()
    }

    #[test]
    fn sized_bodies_come_close_to_their_size_and_stay_json() {
        let h = history();
        for n in BODY_SIZES {
            let body = sized_body(&h, n).unwrap();
            assert!(body.len() <= n, "{n}: {}", body.len());
            // Whole members only: a cut-down record may fall short by one member.
            assert!(body.len() * 2 >= n, "{n}: {}", body.len());
            let v: Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(v["id"], "p-1");
        }
    }

    #[test]
    fn a_sized_policy_has_the_routes_and_rules_it_says() {
        let base = bench_policy(AuditTrail::Off).unwrap();
        let p: Value = serde_json::from_str(&sized_policy(&base, 100, 10).unwrap()).unwrap();
        let routes = p["routes"].as_array().unwrap();
        assert_eq!(routes.len(), 100);
        assert!(
            routes
                .iter()
                .all(|r| r["rules"].as_array().unwrap().len() == 10)
        );
        let last = routes.last().unwrap();
        assert_eq!(last["name"], "patient-record");
        assert_eq!(last["rules"][9]["name"], "insurer-claims");
    }
}
