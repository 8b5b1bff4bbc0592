//! The one door from the core to the proxy. The proxy-wasm adapter implements it
//! over the host calls; unit tests implement it with a fake. Time and randomness come
//! through here so every time-dependent rule is testable to the second.

use std::time::{Duration, SystemTime};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
    Critical,
}

/// Why a compare-and-swap write to shared data did not happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SharedDataError {
    /// Another writer got there first; read again and retry.
    CasMismatch,
    /// The host refused the write.
    Failed,
}

/// An HTTP call the plugin makes through the proxy (JWKS, status lists, audit).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutgoingCall {
    /// The proxy's upstream cluster that carries the call.
    pub cluster: String,
    pub method: String,
    pub authority: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub timeout: Duration,
}

/// The proxy refused to start a call (unknown cluster, malformed headers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DispatchError;

pub trait Host {
    /// Wall-clock time as the proxy sees it.
    fn now(&self) -> SystemTime;

    /// Fills `buf` with cryptographically secure random bytes.
    fn fill_random(&mut self, buf: &mut [u8]);

    fn log(&mut self, level: LogLevel, message: &str);

    /// Whether debug lines are wanted: building them costs, so the core asks first.
    fn debug_enabled(&mut self) -> bool {
        false
    }

    /// Reads a value shared by every worker of the proxy, with its CAS token.
    fn shared_get(&mut self, key: &str) -> Option<(Vec<u8>, u32)>;

    /// Writes a shared value. With `cas: Some(token)` the write happens only if
    /// nobody wrote since the read that returned `token`; `None` writes always.
    fn shared_set(
        &mut self,
        key: &str,
        value: &[u8],
        cas: Option<u32>,
    ) -> Result<(), SharedDataError>;

    /// Adds `delta` to the counter called `name` in the proxy's stats.
    fn count(&mut self, name: &str, delta: u64);

    /// Starts an HTTP call through the proxy; the answer comes back to the adapter,
    /// which hands it to the core with the returned token.
    fn dispatch(&mut self, call: &OutgoingCall) -> Result<u32, DispatchError>;
}

/// Seconds since the Unix epoch; times before it (a broken clock) count as 0.
pub fn unix_seconds(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
