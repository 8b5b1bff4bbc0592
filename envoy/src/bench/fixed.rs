//! Latency at a fixed offered load: an open-loop, constant-rate load generator with
//! coordinated-omission correction (what wrk2 does; wrk2 is not packaged here).
//!
//! Request `k` of a run is due at `start + k / rate`, whatever happened to the ones
//! before it. Each of a few connections (one thread each, HTTP/1.1 keep-alive) takes
//! the next due request, waits until it is due, sends it and reads the whole answer.
//! A request's latency runs from the time it was **due**, not from when it was sent:
//! when the proxy stalls, the requests that queue behind the stall count the time
//! they waited, as a client of a real service would see it (a closed-loop tool such
//! as wrk sends nothing while it waits, and so leaves those out). The due time is
//! met with a sleep, so each latency also holds the sleep's overshoot (tens of µs);
//! it is the same for every configuration and cancels in "added over bare".

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};

/// One run at a fixed rate.
#[derive(Debug, Clone)]
pub struct Plan {
    pub addr: SocketAddr,
    pub path: String,
    /// Extra request headers, `name: value`.
    pub headers: Vec<String>,
    /// Requests per second offered.
    pub rate: f64,
    pub duration: Duration,
    /// Connections (and threads); enough that one slow answer does not hold the
    /// requests due after it.
    pub connections: usize,
    /// The status every answer must have.
    pub expect_status: u16,
}

/// What a run measured, latencies in µs from each request's due time.
#[derive(Debug, Clone, Default)]
pub struct Latencies {
    /// Every completed request's latency, sorted.
    pub micros: Vec<u64>,
    /// Answers with another status, or connections that failed.
    pub errors: u64,
    /// Requests due during the run that completed.
    pub completed: u64,
    pub seconds: f64,
}

impl Latencies {
    /// The `q` quantile (0–1) in ms.
    pub fn quantile_ms(&self, q: f64) -> f64 {
        if self.micros.is_empty() {
            return 0.0;
        }
        let i = ((self.micros.len() as f64 - 1.0) * q).round() as usize;
        self.micros[i.min(self.micros.len() - 1)] as f64 / 1000.0
    }

    /// Requests per second completed.
    pub fn achieved(&self) -> f64 {
        if self.seconds > 0.0 {
            self.completed as f64 / self.seconds
        } else {
            0.0
        }
    }
}

/// Runs `plan`: every request due in `plan.duration`, each latency from its due time.
pub fn run(plan: &Plan) -> Result<Latencies> {
    if plan.rate <= 0.0 || plan.connections == 0 {
        bail!("a fixed load needs a positive rate and at least one connection");
    }
    let total = (plan.rate * plan.duration.as_secs_f64()).ceil() as u64;
    let request = request_bytes(plan);
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now() + Duration::from_millis(50);
    let interval = 1.0 / plan.rate;
    let mut workers = Vec::new();
    for _ in 0..plan.connections {
        let next = Arc::clone(&next);
        let request = request.clone();
        let addr = plan.addr;
        let expect = plan.expect_status;
        workers.push(std::thread::spawn(move || {
            worker(addr, &request, expect, &next, total, start, interval)
        }));
    }
    let mut out = Latencies::default();
    for w in workers {
        let part = w.join().map_err(|_| anyhow!("a load thread panicked"))??;
        out.micros.extend(part.micros);
        out.errors += part.errors;
    }
    out.seconds = start.elapsed().as_secs_f64();
    out.completed = out.micros.len() as u64;
    out.micros.sort_unstable();
    Ok(out)
}

fn request_bytes(plan: &Plan) -> Vec<u8> {
    let mut r = format!(
        "GET {} HTTP/1.1\r\nhost: {}\r\nuser-agent: consentry-bench-fixed\r\n",
        plan.path, plan.addr
    );
    for h in &plan.headers {
        r.push_str(h);
        r.push_str("\r\n");
    }
    r.push_str("\r\n");
    r.into_bytes()
}

/// One connection: takes due requests until the run's last one is taken.
fn worker(
    addr: SocketAddr,
    request: &[u8],
    expect: u16,
    next: &AtomicU64,
    total: u64,
    start: Instant,
    interval: f64,
) -> Result<Latencies> {
    let mut out = Latencies::default();
    let mut conn: Option<BufReader<TcpStream>> = None;
    tight_sleeps();
    loop {
        let k = next.fetch_add(1, Ordering::Relaxed);
        if k >= total {
            return Ok(out);
        }
        let due = start + Duration::from_secs_f64(k as f64 * interval);
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        let c = match conn.as_mut() {
            Some(c) => c,
            None => {
                let s = TcpStream::connect(addr).with_context(|| format!("connecting {addr}"))?;
                s.set_nodelay(true)?;
                s.set_read_timeout(Some(Duration::from_secs(10)))?;
                conn.insert(BufReader::new(s))
            }
        };
        match exchange(c, request) {
            Ok((status, keep)) => {
                out.micros
                    .push(u64::try_from(due.elapsed().as_micros()).unwrap_or(u64::MAX));
                if status != expect {
                    out.errors += 1;
                }
                if !keep {
                    conn = None;
                }
            }
            Err(_) => {
                out.errors += 1;
                conn = None;
            }
        }
    }
}

/// Asks Linux to wake this thread within 1 µs of a sleep's end (the default timer
/// slack is 50 µs): the due times are then met closely. Best effort.
fn tight_sleeps() {
    #[cfg(target_os = "linux")]
    // SAFETY: PR_SET_TIMERSLACK takes one integer and changes only this thread.
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, 1000 as libc::c_ulong);
    }
}

/// Sends one request and reads its whole answer: `(status, keep-alive)`.
fn exchange(c: &mut BufReader<TcpStream>, request: &[u8]) -> Result<(u16, bool)> {
    c.get_mut().write_all(request)?;
    let mut line = String::new();
    c.read_line(&mut line)?;
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| anyhow!("no status line: {line:?}"))?;
    let mut length = None;
    let mut chunked = false;
    let mut keep = true;
    loop {
        line.clear();
        if c.read_line(&mut line)? == 0 {
            bail!("the connection closed in the headers");
        }
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        let Some((name, value)) = l.split_once(':') else {
            continue;
        };
        let value = value.trim();
        match name.to_ascii_lowercase().as_str() {
            "content-length" => length = value.parse::<usize>().ok(),
            "transfer-encoding" => chunked = value.eq_ignore_ascii_case("chunked"),
            "connection" => keep = !value.eq_ignore_ascii_case("close"),
            _ => {}
        }
    }
    if chunked {
        loop {
            line.clear();
            c.read_line(&mut line)?;
            let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or("0"), 16)?;
            skip(c, size + 2)?;
            if size == 0 {
                break;
            }
        }
    } else if let Some(n) = length {
        skip(c, n)?;
    } else if status != 204 && status != 304 {
        bail!("an answer without a length");
    }
    Ok((status, keep))
}

fn skip(c: &mut BufReader<TcpStream>, mut n: usize) -> Result<()> {
    let mut buf = [0u8; 16 * 1024];
    while n > 0 {
        let want = n.min(buf.len());
        let got = c.read(&mut buf[..want])?;
        if got == 0 {
            bail!("the connection closed in the body");
        }
        n -= got;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_come_from_the_sorted_latencies() {
        let l = Latencies {
            micros: (1..=100).collect(),
            completed: 100,
            seconds: 2.0,
            ..Latencies::default()
        };
        assert_eq!(l.quantile_ms(0.5), 0.051);
        assert_eq!(l.quantile_ms(0.99), 0.099);
        assert_eq!(l.achieved(), 50.0);
    }
}
