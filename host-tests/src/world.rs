//! What every VM of one proxy shares: shared data with its single CAS counter, the
//! stats, the log, the clock and the randomness. One `World` per proxy, so tests
//! that run in parallel never see each other.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::abi::{LogLevel, MetricType, Status};

/// A log line from the plugin (`proxy_log`, or stdout/stderr through WASI).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LogLine {
    pub level: LogLevel,
    /// Which VM: `worker-N`, `main` or `main-validate`.
    pub vm: String,
    pub context_id: u32,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Metric {
    pub kind: MetricType,
    pub value: u64,
}

/// Shared data as Envoy keeps it: values with one CAS counter for all keys,
/// starting at 1 and increasing on every successful write.
#[derive(Debug, Default)]
pub struct SharedData {
    values: HashMap<String, (Vec<u8>, u32)>,
    last_cas: u32,
}

impl SharedData {
    pub fn get(&self, key: &str) -> Option<(Vec<u8>, u32)> {
        self.values.get(key).cloned()
    }

    pub fn set(&mut self, key: &str, value: &[u8], cas: u32) -> Status {
        if cas != 0
            && let Some((_, current)) = self.values.get(key)
            && *current != cas
        {
            return Status::CasMismatch;
        }
        self.last_cas = self.last_cas.wrapping_add(1);
        self.values
            .insert(key.to_owned(), (value.to_vec(), self.last_cas));
        Status::Ok
    }
}

/// The proxy's virtual clock: it moves only when a test (or the event loop) moves it.
#[derive(Debug, Clone)]
pub struct Clock {
    now: Arc<Mutex<SystemTime>>,
    /// The monotonic clock reads the time since this instant, plus an hour.
    origin: SystemTime,
    /// The last monotonic reading, so it never goes back when the clock is set back.
    last_monotonic: Arc<Mutex<u64>>,
}

/// What the monotonic clock reads when the proxy starts: like Envoy's, it counts
/// from an arbitrary point (the host's boot), never from the epoch.
const MONOTONIC_AT_START: Duration = Duration::from_secs(3600);

impl Clock {
    pub fn at(t: SystemTime) -> Self {
        Self {
            now: Arc::new(Mutex::new(t)),
            origin: t,
            last_monotonic: Arc::new(Mutex::new(0)),
        }
    }

    pub fn now(&self) -> SystemTime {
        *lock(&self.now)
    }

    pub fn set(&self, t: SystemTime) {
        *lock(&self.now) = t;
    }

    pub fn advance(&self, d: Duration) {
        let mut t = lock(&self.now);
        *t += d;
    }

    /// WASI's monotonic clock (`Instant::now` in the plugin), in nanoseconds: it
    /// moves with the virtual clock and never goes back.
    pub fn monotonic_nanos(&self) -> u64 {
        let since = self.now().duration_since(self.origin).unwrap_or_default();
        let reading = u64::try_from((MONOTONIC_AT_START + since).as_nanos()).unwrap_or(u64::MAX);
        let mut last = lock(&self.last_monotonic);
        *last = (*last).max(reading);
        *last
    }

    pub fn nanos(&self) -> u64 {
        self.now()
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
            .unwrap_or(0)
    }
}

/// Deterministic randomness (SplitMix64) so a run can be repeated exactly.
#[derive(Debug)]
pub struct Random(u64);

impl Random {
    pub fn seeded(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let bytes = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
    }

    /// A UUID v4 text, as Envoy puts in `x-request-id`.
    pub fn uuid(&mut self) -> String {
        let mut b = [0u8; 16];
        self.fill(&mut b);
        b[6] = (b[6] & 0x0f) | 0x40;
        b[8] = (b[8] & 0x3f) | 0x80;
        let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
        format!(
            "{}-{}-{}-{}-{}",
            &h[0..8],
            &h[8..12],
            &h[12..16],
            &h[16..20],
            &h[20..32]
        )
    }
}

#[derive(Debug)]
pub struct World {
    pub shared: Mutex<SharedData>,
    pub metrics: Mutex<HashMap<String, Metric>>,
    pub logs: Mutex<Vec<LogLine>>,
    pub clock: Clock,
    pub random: Mutex<Random>,
}

impl World {
    pub fn new(clock: Clock, seed: u64) -> Self {
        Self {
            shared: Mutex::new(SharedData::default()),
            metrics: Mutex::new(HashMap::new()),
            logs: Mutex::new(Vec::new()),
            clock,
            random: Mutex::new(Random::seeded(seed)),
        }
    }

    pub fn log(&self, line: LogLine) {
        lock(&self.logs).push(line);
    }
}

/// Locks a mutex, recovering from poisoning: a panicking test must not hide
/// the state other assertions want to read.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_data_follows_envoys_cas_rules() {
        let mut s = SharedData::default();
        assert_eq!(s.get("k"), None);
        assert_eq!(s.set("k", b"v1", 0), Status::Ok);
        assert_eq!(s.get("k"), Some((b"v1".to_vec(), 1)));
        assert_eq!(s.set("k", b"v2", 1), Status::Ok);
        assert_eq!(s.set("k", b"v3", 1), Status::CasMismatch);
        assert_eq!(s.get("k"), Some((b"v2".to_vec(), 2)));
        assert_eq!(s.set("k", b"v4", 0), Status::Ok);
        assert_eq!(s.set("other", b"x", 12345), Status::Ok);
        // One counter for all keys.
        assert_eq!(s.get("other"), Some((b"x".to_vec(), 4)));
        assert_eq!(s.set("", b"e", 0), Status::Ok);
        assert_eq!(s.get(""), Some((b"e".to_vec(), 5)));
    }
}
