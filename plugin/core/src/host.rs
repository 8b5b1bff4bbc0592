//! The one door from the core to the proxy. The proxy-wasm adapter implements it
//! over the host calls; unit tests implement it with a fake. Time and randomness come
//! through here so every time-dependent rule is testable to the second.
//!
//! Every call that can fail says so: a host that answers a call with an unexpected
//! status is a refusal the core decides on (the documented problem code), never a
//! trap and never a silently weaker guarantee (no time-derived "randomness", no
//! "not locked out" because the lockout could not be read).

use std::time::{Duration, SystemTime};

use crate::http::{HeaderEdits, LocalReply};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
    Critical,
}

/// The host answered a call with a status other than the one that means success.
/// The status is kept for the log; the core never branches on its value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostError(pub u32);

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

/// Which half of an HTTP exchange a body, a header map or an action belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    Request,
    Response,
}

/// A header map of the stream the host calls act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MapKind {
    RequestHeaders,
    RequestTrailers,
    ResponseHeaders,
    ResponseTrailers,
}

/// The proxy's memory shared by every worker (Envoy's shared data, one CAS counter
/// for all keys). Rate limits and lockouts need nothing else from the host.
pub trait SharedData {
    /// Reads a value shared by every worker of the proxy, with its CAS token;
    /// `Ok(None)` when the key does not exist.
    fn shared_get(&mut self, key: &str) -> Result<Option<(Vec<u8>, u32)>, HostError>;

    /// Writes a shared value. With `cas: Some(token)` the write happens only if
    /// nobody wrote since the read that returned `token`; `None` writes always.
    fn shared_set(
        &mut self,
        key: &str,
        value: &[u8],
        cas: Option<u32>,
    ) -> Result<(), SharedDataError>;
}

pub trait Host: SharedData {
    /// Wall-clock time as the proxy sees it.
    fn now(&self) -> Result<SystemTime, HostError>;

    /// Fills `buf` with cryptographically secure random bytes, or fails: there is
    /// no fallback to anything weaker.
    fn fill_random(&mut self, buf: &mut [u8]) -> Result<(), HostError>;

    fn log(&mut self, level: LogLevel, message: &str) -> Result<(), HostError>;

    /// Whether debug lines are wanted: building them costs, so the core asks first.
    fn debug_enabled(&mut self) -> bool {
        false
    }

    /// Adds `delta` to the counter called `name` in the proxy's stats. Counters
    /// are best effort: a host that refuses one changes no decision.
    fn count(&mut self, name: &str, delta: u64);

    /// Starts an HTTP call through the proxy; the answer comes back to the adapter,
    /// which hands it to the core with the returned token.
    fn dispatch(&mut self, call: &OutgoingCall) -> Result<u32, DispatchError>;

    // The stream calls below act on the stream that is current: the one whose
    // callback runs, or the one made current with `switch_to`.

    /// Makes the stream `context` the one the stream calls act on.
    fn switch_to(&mut self, context: u32) -> Result<(), HostError>;

    /// The first `size` bytes of the body the host holds for `side`.
    fn body(&mut self, side: Side, size: usize) -> Result<Vec<u8>, HostError>;

    /// Replaces the first `size` bytes of the body the host holds for `side`
    /// (all of it, when `size` is its length) with `body`.
    fn set_body(&mut self, side: Side, size: usize, body: &[u8]) -> Result<(), HostError>;

    /// A property of the current stream in the proxy's attribute encoding
    /// (`["response", "code"]`: 8 bytes little-endian); `Ok(None)` when absent.
    fn property(&mut self, path: &[&str]) -> Result<Option<Vec<u8>>, HostError>;

    /// Applies removals, then settings, to a header map.
    fn edit_headers(&mut self, map: MapKind, edits: &HeaderEdits) -> Result<(), HostError>;

    /// Answers the stream with the plugin's own reply instead of what it carried.
    fn send_reply(&mut self, reply: &LocalReply) -> Result<(), HostError>;

    /// Lets a paused half of the stream move on.
    fn resume(&mut self, side: Side) -> Result<(), HostError>;

    /// Ends the stream abruptly: the client sees a reset, never a complete answer.
    fn reset(&mut self) -> Result<(), HostError>;
}

/// Seconds since the Unix epoch; times before it (a broken clock) count as 0.
pub fn unix_seconds(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Milliseconds since the Unix epoch; times before it count as 0.
pub fn unix_millis(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
