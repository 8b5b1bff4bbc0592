//! `consentry_core::host::Host` over the proxy-wasm host calls: each method is one
//! host call (or a few), its status handed back as it came.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use consentry_core::host::{
    DispatchError, Host, HostError, LogLevel, MapKind, OutgoingCall, SharedData, SharedDataError,
    Side,
};
use consentry_core::http::{HeaderEdits, LocalReply};

use crate::abi;

/// The proxy, as seen from inside the VM. It keeps what saves host calls: the ids
/// of the counters it defined (defining one is a host call: once per VM), the time
/// read once per callback, and the proxy's log level read on the timer. A
/// `BTreeMap`: std's hash maps draw their keys from the host's randomness the first
/// time one is made, and a VM must come up (and refuse) even where that randomness
/// fails.
#[derive(Default)]
pub struct ProxyHost {
    metrics: BTreeMap<String, u32>,
    /// The time of the running callback, read at its first use: every decision of
    /// one callback sees one instant (and it costs one host call, not one a use).
    now: Cell<Option<SystemTime>>,
    /// The proxy's log level as last read (at configure, then on every tick): an
    /// operator who raises it to debug gets explanations within a tick.
    log_level: Option<u32>,
}

impl ProxyHost {
    /// A host callback starts: the time is read afresh when first asked for.
    pub fn begin_callback(&mut self) {
        self.now.set(None);
    }

    /// Reads the proxy's log level again (configure and the timer).
    pub fn refresh_log_level(&mut self) {
        self.log_level = abi::log_level().ok();
    }
}

fn log_level(level: LogLevel) -> u32 {
    match level {
        LogLevel::Trace => 0,
        LogLevel::Debug => 1,
        LogLevel::Info => 2,
        LogLevel::Warn => 3,
        LogLevel::Error => 4,
        LogLevel::Critical => 5,
    }
}

fn body_buffer(side: Side) -> u32 {
    match side {
        Side::Request => abi::REQUEST_BODY,
        Side::Response => abi::RESPONSE_BODY,
    }
}

fn map(kind: MapKind) -> u32 {
    match kind {
        MapKind::RequestHeaders => abi::REQUEST_HEADERS,
        MapKind::RequestTrailers => abi::REQUEST_TRAILERS,
        MapKind::ResponseHeaders => abi::RESPONSE_HEADERS,
        MapKind::ResponseTrailers => abi::RESPONSE_TRAILERS,
    }
}

impl SharedData for ProxyHost {
    fn shared_get(&mut self, key: &str) -> Result<Option<(Vec<u8>, u32)>, HostError> {
        abi::shared_get(key)
    }

    fn shared_set(
        &mut self,
        key: &str,
        value: &[u8],
        cas: Option<u32>,
    ) -> Result<(), SharedDataError> {
        match abi::shared_set(key, value, cas.unwrap_or(0)) {
            Ok(()) => Ok(()),
            Err(HostError(abi::CAS_MISMATCH)) => Err(SharedDataError::CasMismatch),
            Err(_) => Err(SharedDataError::Failed),
        }
    }
}

impl Host for ProxyHost {
    fn now(&self) -> Result<SystemTime, HostError> {
        if let Some(t) = self.now.get() {
            return Ok(t);
        }
        // A failed read is not kept: the next use asks the host again.
        let t = abi::now_nanos().map(|n| SystemTime::UNIX_EPOCH + Duration::from_nanos(n))?;
        self.now.set(Some(t));
        Ok(t)
    }

    fn fill_random(&mut self, buf: &mut [u8]) -> Result<(), HostError> {
        // WASI random_get: the proxy's own CSPRNG. There is nothing weaker to fall
        // back to: a failure is the caller's to refuse.
        getrandom::fill(buf).map_err(|_| HostError(u32::MAX))
    }

    fn log(&mut self, level: LogLevel, message: &str) -> Result<(), HostError> {
        abi::log(log_level(level), message)
    }

    fn debug_enabled(&mut self) -> bool {
        self.log_level
            .is_some_and(|l| l <= log_level(LogLevel::Debug))
    }

    fn count(&mut self, name: &str, delta: u64) {
        let id = match self.metrics.get(name) {
            Some(id) => *id,
            None => {
                let Ok(id) = abi::define_counter(name) else {
                    return;
                };
                self.metrics.insert(name.to_owned(), id);
                id
            }
        };
        let _ = abi::increment_metric(id, i64::try_from(delta).unwrap_or(i64::MAX));
    }

    fn dispatch(&mut self, call: &OutgoingCall) -> Result<u32, DispatchError> {
        let pseudo: [(&[u8], &[u8]); 3] = [
            (b":method", call.method.as_bytes()),
            (b":path", call.path.as_bytes()),
            (b":authority", call.authority.as_bytes()),
        ];
        let headers = abi::encode_pairs(
            pseudo.into_iter().chain(
                call.headers
                    .iter()
                    .map(|(n, v)| (n.as_bytes(), v.as_bytes())),
            ),
        );
        let timeout = u32::try_from(call.timeout.as_millis()).unwrap_or(u32::MAX);
        abi::http_call(&call.cluster, &headers, &call.body, timeout).map_err(|_| DispatchError)
    }

    fn switch_to(&mut self, context: u32) -> Result<(), HostError> {
        abi::set_effective_context(context)
    }

    fn body(&mut self, side: Side, size: usize) -> Result<Vec<u8>, HostError> {
        if size == 0 {
            return Ok(Vec::new());
        }
        abi::buffer(body_buffer(side), size)
    }

    fn set_body(&mut self, side: Side, size: usize, body: &[u8]) -> Result<(), HostError> {
        abi::set_buffer(body_buffer(side), size, body)
    }

    fn property(&mut self, path: &[&str]) -> Result<Option<Vec<u8>>, HostError> {
        abi::property(path)
    }

    fn edit_headers(&mut self, kind: MapKind, edits: &HeaderEdits) -> Result<(), HostError> {
        // One call a header. Writing the whole map in one call
        // (proxy_set_header_map_pairs) makes fewer calls but measured no faster in
        // Envoy, which then removes and re-adds every header (envoy/BENCHMARKS.md).
        let m = map(kind);
        for name in &edits.remove {
            abi::remove_header(m, name)?;
        }
        for (name, value) in &edits.set {
            abi::replace_header(m, name, value)?;
        }
        Ok(())
    }

    fn send_reply(&mut self, reply: &LocalReply) -> Result<(), HostError> {
        abi::send_local_response(reply.status, reply.details, &reply.headers, &reply.body)
    }

    fn resume(&mut self, side: Side) -> Result<(), HostError> {
        abi::continue_stream(match side {
            Side::Request => abi::STREAM_REQUEST,
            Side::Response => abi::STREAM_RESPONSE,
        })
    }

    fn reset(&mut self) -> Result<(), HostError> {
        abi::close_stream(abi::STREAM_RESPONSE)
    }
}
