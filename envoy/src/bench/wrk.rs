//! One bounded wrk run and what it measured.
//!
//! wrk is driven with a Lua script written by [`write_scripts`]: its `done` hook prints
//! one line, `CONSENTRY-BENCH {json}`, with the request count, the duration, the errors
//! and the latency percentiles, so nothing depends on wrk's human-readable report. A
//! run with fresh tokens uses a second script whose `request` hook takes the next line
//! of a token file for each request; a run with one token uses wrk's static request
//! (no Lua per request), so the two kinds of run cost wrk the same only where they must.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use serde_json::Value;

use crate::process;

/// The marker of the line the scripts' `done` hook prints.
const MARKER: &str = "CONSENTRY-BENCH ";

/// The `done` hook shared by both scripts.
const DONE: &str = r#"
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "CONSENTRY-BENCH {\"requests\":%d,\"duration_us\":%d,\"bytes\":%d," ..
    "\"connect\":%d,\"read\":%d,\"write\":%d,\"status\":%d,\"timeout\":%d," ..
    "\"p50_us\":%d,\"p90_us\":%d,\"p99_us\":%d,\"max_us\":%d}\n",
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
"#;

/// The per-request hook of runs with fresh tokens: the token file (one token a line)
/// is given after `--` on wrk's command line and read once per thread.
const FRESH_TOKENS: &str = r#"
local tokens, n, i = {}, 0, 0
function init(args)
  for line in io.lines(args[1]) do
    n = n + 1
    tokens[n] = line
  end
end
function request()
  i = i + 1
  if i > n then i = 1 end
  return wrk.format(nil, nil, {["Authorization"] = "Bearer " .. tokens[i]})
end
"#;

/// The two scripts, written into `dir`: `(static, fresh_tokens)`.
pub fn write_scripts(dir: &Path) -> Result<(PathBuf, PathBuf)> {
    let static_script = dir.join("static.lua");
    let fresh_script = dir.join("fresh-tokens.lua");
    fs::write(
        &static_script,
        format!("-- consentry-bench: one request{DONE}"),
    )?;
    fs::write(
        &fresh_script,
        format!("-- consentry-bench: a fresh token per request{FRESH_TOKENS}{DONE}"),
    )?;
    Ok((static_script, fresh_script))
}

/// What one run asks of wrk.
#[derive(Debug, Clone)]
pub struct Load<'a> {
    pub url: &'a str,
    pub connections: u32,
    pub seconds: u32,
    /// The static script, or the fresh-token script with its token file.
    pub script: &'a Path,
    pub token_file: Option<&'a Path>,
    /// Headers for every request (the one token of a warm run, ...).
    pub headers: Vec<String>,
}

/// What one run measured.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Measured {
    pub requests: u64,
    pub seconds: f64,
    /// Responses with a status of 400 or more.
    pub status_errors: u64,
    /// Connect, read, write errors and timeouts.
    pub socket_errors: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Measured {
    pub fn rps(&self) -> f64 {
        if self.seconds > 0.0 {
            self.requests as f64 / self.seconds
        } else {
            0.0
        }
    }
}

/// The wrk binary: `WRK_BIN` when set, else `wrk` on the PATH.
pub fn binary() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("WRK_BIN") {
        return Ok(PathBuf::from(path));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join("wrk"))
        .find(|p| p.is_file())
        .ok_or_else(|| anyhow!("wrk is not installed: `apt-get install -y wrk` (or set WRK_BIN)"))
}

/// wrk's version line (`wrk 4.1.0 ...`).
pub fn version(wrk: &Path) -> String {
    Command::new(wrk)
        .arg("-v")
        .stdin(Stdio::null())
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .map(|l| l.split(" Copyright").next().unwrap_or(l).trim().to_owned())
        })
        .unwrap_or_else(|| "wrk (version unknown)".to_owned())
}

/// Runs wrk once: one thread, `connections` connections, `seconds` seconds, a 5 s
/// per-request timeout, and a hard bound on the whole run.
pub fn run(wrk: &Path, load: &Load<'_>, scratch: &Path) -> Result<Measured> {
    let out_path = scratch.join("wrk.out");
    let out = fs::File::create(&out_path)?;
    let mut command = Command::new(wrk);
    command
        .args(["-t1", "--timeout", "5s"])
        .arg(format!("-c{}", load.connections))
        .arg(format!("-d{}s", load.seconds))
        .arg("-s")
        .arg(load.script);
    for h in &load.headers {
        command.arg("-H").arg(h);
    }
    command.arg(load.url);
    if let Some(tokens) = load.token_file {
        command.arg("--").arg(tokens);
    }
    command
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out);
    let bound = Duration::from_secs(u64::from(load.seconds) + 30);
    let status = process::run_bounded(command, bound).context("running wrk")?;
    let text = fs::read_to_string(&out_path).unwrap_or_default();
    if !status.success() {
        bail!("wrk failed ({status}):\n{text}");
    }
    parse(&text).with_context(|| format!("reading wrk's report:\n{text}"))
}

/// The measurement in wrk's output.
pub fn parse(output: &str) -> Result<Measured> {
    let line = output
        .lines()
        .find_map(|l| l.strip_prefix(MARKER))
        .ok_or_else(|| anyhow!("no {MARKER:?} line"))?;
    let v: Value = serde_json::from_str(line)?;
    let n = |k: &str| v.get(k).and_then(Value::as_u64).unwrap_or(0);
    let ms = |k: &str| n(k) as f64 / 1000.0;
    Ok(Measured {
        requests: n("requests"),
        seconds: n("duration_us") as f64 / 1e6,
        status_errors: n("status"),
        socket_errors: n("connect") + n("read") + n("write") + n("timeout"),
        p50_ms: ms("p50_us"),
        p90_ms: ms("p90_us"),
        p99_ms: ms("p99_us"),
        max_ms: ms("max_us"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_done_line() {
        let out = "Running 1s test\nCONSENTRY-BENCH {\"requests\":2000,\"duration_us\":1000000,\
                   \"bytes\":1,\"connect\":0,\"read\":1,\"write\":0,\"status\":3,\"timeout\":2,\
                   \"p50_us\":1500,\"p90_us\":2000,\"p99_us\":2500,\"max_us\":9000}\n";
        let m = parse(out).unwrap();
        assert_eq!(m.requests, 2000);
        assert_eq!(m.rps(), 2000.0);
        assert_eq!(m.status_errors, 3);
        assert_eq!(m.socket_errors, 3);
        assert_eq!(m.p99_ms, 2.5);
        assert!(parse("no marker").is_err());
    }
}
