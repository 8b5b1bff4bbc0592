//! The fidelity suite on the Envoy side: every scenario of `consentry_host::fidelity`,
//! run through the probe filter in a real Envoy 1.40 (`configs/probe.yaml`) in front of
//! a scripted upstream. The harness runs the same scenarios with the same expectations
//! (`host-tests/tests/all/fidelity.rs`), so whatever differs fails on one side.
//!
//! Needs `./envoy/install.sh` (or ENVOY_BIN) and the probe's release build
//! (`cargo build -p consentry-probe --target wasm32-wasip1 --release`). Without them
//! these tests fail with a message saying so; they never skip.
#![allow(
    clippy::unwrap_used,
    clippy::panic,
    reason = "test code: a failed step must fail the test"
)]

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use consentry_envoy::scripted::{Received, Reply, ScriptedUpstream};
use consentry_envoy::{Envoy, RunningEnvoy, free_port};
use consentry_host::fidelity::{
    self, CALLEE_PATH, Expect, Fault, Observation, Scenario, Seen, check, require_probe,
};
use consentry_host::{Request, Response};

/// How long a response may stay silent before the client gives up on it.
const IDLE: Duration = Duration::from_secs(3);
/// How long one exchange may take in all.
const EXCHANGE_LIMIT: Duration = Duration::from_secs(20);
/// How long to wait for the probe's `end` report after the response.
const END_WAIT: Duration = Duration::from_secs(3);

fn reply_of(r: &Response) -> Reply {
    let mut reply = Reply::new(r.status).pieces(&r.chunks);
    for (n, v) in &r.headers {
        reply = reply.header(n, &String::from_utf8_lossy(v));
    }
    reply
}

fn start(scenario: &Scenario, upstream: &ScriptedUpstream) -> RunningEnvoy {
    if let Err(e) = consentry_envoy::envoy_binary() {
        panic!("{e:#}");
    }
    let probe = require_probe().unwrap_or_else(|e| panic!("{e}"));
    if let Some(callee) = &scenario.callee {
        upstream.route(CALLEE_PATH, reply_of(callee));
    }
    Envoy::builder()
        .template("probe.yaml")
        .upstream_port(upstream.port())
        .var("DOWN_PORT", free_port())
        .wasm(probe)
        .start()
        .unwrap_or_else(|e| panic!("{e:#}"))
}

/// The request as an HTTP/1.1 client sends it: `host` first (the request's `host`
/// header, or its authority), the other headers in order, `content-length` last.
fn request_bytes(r: &Request) -> Vec<u8> {
    let host = r
        .headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("host"))
        .map_or_else(
            || r.authority.clone(),
            |(_, v)| String::from_utf8_lossy(v).into_owned(),
        );
    let mut head = format!("{} {} HTTP/1.1\r\nhost: {host}\r\n", r.method, r.path).into_bytes();
    for (n, v) in r
        .headers
        .iter()
        .filter(|(n, _)| !n.eq_ignore_ascii_case("host"))
    {
        head.extend_from_slice(n.as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(v);
        head.extend_from_slice(b"\r\n");
    }
    let body = r.chunks.concat();
    if !body.is_empty() {
        head.extend_from_slice(format!("content-length: {}\r\n", body.len()).as_bytes());
    }
    head.extend_from_slice(b"\r\n");
    head.extend_from_slice(&body);
    head
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Decodes a chunked body; None while it is incomplete or malformed.
fn dechunk(mut data: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let end = find(data, b"\r\n")?;
        let line = std::str::from_utf8(&data[..end]).ok()?;
        let size = usize::from_str_radix(line.split(';').next()?.trim(), 16).ok()?;
        data = &data[end + 2..];
        if size == 0 {
            return data.starts_with(b"\r\n").then_some(out);
        }
        out.extend_from_slice(data.get(..size)?);
        data = data.get(size + 2..)?;
    }
}

struct Head {
    status: u16,
    headers: Vec<(String, String)>,
    body_at: usize,
}

fn parse_head(raw: &[u8]) -> Option<Head> {
    let end = find(raw, b"\r\n\r\n")?;
    let text = String::from_utf8_lossy(&raw[..end]);
    let mut lines = text.split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Some(Head {
        status,
        headers,
        body_at: end + 4,
    })
}

fn header<'a>(h: &'a Head, name: &str) -> Option<&'a str> {
    h.headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

/// Whether the bytes hold one whole response by its framing.
fn whole(raw: &[u8]) -> bool {
    let Some(h) = parse_head(raw) else {
        return false;
    };
    let body = &raw[h.body_at..];
    if header(&h, "transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        return dechunk(body).is_some();
    }
    header(&h, "content-length")
        .and_then(|v| v.parse::<usize>().ok())
        .is_some_and(|n| body.len() >= n)
}

/// Sends a request and reads what comes back, as a client that gives up after
/// [`IDLE`] without data. Fills the client part of an observation.
fn exchange(addr: SocketAddr, r: &Request) -> Observation {
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    stream.set_nodelay(true).unwrap();
    let mut writer = stream.try_clone().unwrap();
    writer
        .set_write_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let bytes = request_bytes(r);
    // Written on the side: Envoy may answer (413) before it has read a big body.
    let write = thread::spawn(move || {
        let _ = writer.write_all(&bytes);
    });
    let mut reader = stream.try_clone().unwrap();
    let mut raw = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let started = Instant::now();
    let mut last_data = Instant::now();
    let closed = loop {
        if whole(&raw) {
            break false;
        }
        if last_data.elapsed() >= IDLE || started.elapsed() >= EXCHANGE_LIMIT {
            break false;
        }
        reader
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        match reader.read(&mut buf) {
            Ok(0) => break true,
            Ok(n) => {
                raw.extend_from_slice(&buf[..n]);
                last_data = Instant::now();
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => break true,
        }
    };
    let _ = stream.shutdown(Shutdown::Both);
    let _ = write.join();

    let mut obs = Observation::default();
    let Some(h) = parse_head(&raw) else {
        obs.fault = Some(if closed { Fault::Reset } else { Fault::Stalled });
        return obs;
    };
    let body = &raw[h.body_at..];
    obs.status = h.status;
    let chunked = header(&h, "transfer-encoding").is_some_and(|v| v.contains("chunked"));
    let declared = header(&h, "content-length").and_then(|v| v.parse::<usize>().ok());
    obs.body = if chunked {
        match dechunk(body) {
            Some(b) => String::from_utf8_lossy(&b).into_owned(),
            None => {
                obs.fault = Some(if closed { Fault::Reset } else { Fault::Stalled });
                String::new()
            }
        }
    } else {
        match declared {
            Some(n) if body.len() < n => {
                obs.fault = Some(if closed {
                    Fault::Reset
                } else {
                    Fault::LengthMismatch {
                        declared: n,
                        received: body.len(),
                    }
                });
                String::from_utf8_lossy(body).into_owned()
            }
            Some(n) => String::from_utf8_lossy(&body[..n]).into_owned(),
            None => String::from_utf8_lossy(body).into_owned(),
        }
    };
    obs.headers = h.headers;
    obs
}

/// The plugin's log messages in Envoy's log text: (level, message), continuation lines
/// joined with `\n`.
fn plugin_lines(log: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    let mut in_plugin_line = false;
    for line in log.lines() {
        if !line.starts_with('[') {
            if in_plugin_line && let Some(last) = out.last_mut() {
                last.1.push('\n');
                last.1.push_str(line);
            }
            continue;
        }
        in_plugin_line = false;
        let Some(at) = line.find("] wasm log ") else {
            continue;
        };
        let level = line.split("][").nth(2).unwrap_or_default().to_owned();
        let rest = &line[at + "] wasm log ".len()..];
        let Some((_, message)) = rest.split_once(": ") else {
            continue;
        };
        in_plugin_line = true;
        out.push((level, message.to_owned()));
    }
    out
}

fn seen(r: &Received) -> Seen {
    Seen {
        method: r.method.clone(),
        path: r.path.clone(),
        authority: r.header("host").unwrap_or_default().to_owned(),
        headers: r
            .headers
            .iter()
            .filter(|(n, _)| n != "host")
            .cloned()
            .collect(),
        body: String::from_utf8_lossy(&r.body).into_owned(),
    }
}

fn expects_no_end(expect: &[Expect]) -> bool {
    expect
        .iter()
        .any(|e| matches!(e, Expect::NoRecords | Expect::NoRecord("end")))
}

fn run(name: &str) {
    let scenario = fidelity::scenario(name);
    let upstream = ScriptedUpstream::start().unwrap();
    let envoy = start(&scenario, &upstream);
    let mut failures = Vec::new();
    for (i, step) in scenario.steps.iter().enumerate() {
        upstream.set_default(reply_of(&step.upstream));
        upstream.clear_received();
        let log_from = envoy.log().len();
        let mut obs = exchange(envoy.listen_addr(), &step.request);
        // on_log runs after the response has gone out: wait for its last report.
        let deadline = Instant::now()
            + if expects_no_end(&step.expect) {
                Duration::from_millis(500)
            } else {
                END_WAIT
            };
        let log = loop {
            let log = envoy.log();
            let new = log.get(log_from..).unwrap_or_default().to_owned();
            if new.contains("probe|end|") || Instant::now() >= deadline {
                break new;
            }
            thread::sleep(Duration::from_millis(50));
        };
        for (level, message) in plugin_lines(&log) {
            obs.add_log(&level, &message);
        }
        for r in upstream.received() {
            if r.path.starts_with(CALLEE_PATH) {
                obs.callouts.push(seen(&r));
            } else {
                obs.upstream.push(seen(&r));
            }
        }
        if let Err(e) = check("envoy", &scenario, i, &obs) {
            failures.push(e);
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

macro_rules! scenarios {
    ($($test:ident => $name:literal,)*) => {
        $(
            #[test]
            fn $test() {
                run($name);
            }
        )*

        #[test]
        fn every_scenario_has_a_test() {
            let tested = [$($name),*];
            for s in fidelity::scenarios() {
                assert!(tested.contains(&s.name), "scenario {} has no test here", s.name);
            }
        }
    };
}

scenarios! {
    basic => "basic",
    request_map_gone_after_continue => "request-map-gone-after-continue",
    request_map_kept_while_paused => "request-map-kept-while-paused",
    sdk_panic_is_fail_closed => "sdk-panic-is-fail-closed",
    header_lookups => "header-lookups",
    repeated_request_headers => "repeated-request-headers",
    properties => "properties",
    local_reply_from_request_headers => "local-reply-from-request-headers",
    local_reply_without_content_type => "local-reply-without-content-type",
    local_reply_without_body => "local-reply-without-body",
    local_reply_without_body_with_length => "local-reply-without-body-with-length",
    local_reply_server_and_date => "local-reply-server-and-date",
    local_reply_repeated_headers => "local-reply-repeated-headers",
    local_reply_from_response_body => "local-reply-from-response-body",
    body_accumulates_while_held => "body-accumulates-while-held",
    set_body_keeps_content_length => "set-body-keeps-content-length",
    set_body_with_content_length_removed => "set-body-with-content-length-removed",
    set_body_and_content_length_on_a_chunked_response =>
        "set-body-and-content-length-on-a-chunked-response",
    held_response_over_buffer_limit => "held-response-over-buffer-limit",
    held_request_over_buffer_limit => "held-request-over-buffer-limit",
    callout_to_a_cluster_nothing_listens_on => "callout-to-a-cluster-nothing-listens-on",
    callout_answered => "callout-answered",
    callout_refused_at_dispatch => "callout-refused-at-dispatch",
    shared_data_cas => "shared-data-cas",
    wasi_clocks_and_stdout => "wasi-clocks-and-stdout",
    memory_capped_at_1_gib => "memory-capped-at-1-gib",
    instant_now_works => "instant-now-works",
}
