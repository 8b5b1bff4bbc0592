//! `consentry_core::host::Host` over the proxy-wasm host calls.

use std::cell::RefCell;
use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use consentry_core::host::{DispatchError, Host, LogLevel, OutgoingCall, SharedDataError};
use proxy_wasm::hostcalls;
use proxy_wasm::types::{LogLevel as ProxyLevel, MetricType, Status};

/// The proxy, as seen from inside the VM. Stateless: the host keeps the state.
pub struct ProxyHost;

thread_local! {
    /// Metric ids by name: defining a metric is a host call, so do it once per VM.
    static METRICS: RefCell<HashMap<String, u32>> = RefCell::new(HashMap::new());
    /// Calls dispatched during the running callback. The SDK delivers a call's
    /// answer to the context whose callback dispatched it, so each callback takes
    /// these to know which calls die with its context.
    static DISPATCHED: RefCell<Vec<u32>> = const { RefCell::new(Vec::new()) };
}

/// The tokens of the calls dispatched since the last time this was asked.
pub fn take_dispatched() -> Vec<u32> {
    DISPATCHED.with(|d| std::mem::take(&mut *d.borrow_mut()))
}

impl ProxyHost {
    pub fn info(&mut self, message: &str) {
        self.log(LogLevel::Info, message);
    }

    pub fn error(&mut self, message: &str) {
        self.log(LogLevel::Error, message);
    }
}

impl Host for ProxyHost {
    fn now(&self) -> SystemTime {
        hostcalls::get_current_time().unwrap_or(SystemTime::UNIX_EPOCH)
    }

    fn fill_random(&mut self, buf: &mut [u8]) {
        // WASI random_get; the proxy's own CSPRNG. Failing to get randomness is not
        // recoverable in a way that keeps ids unique, but must not trap either.
        if getrandom::fill(buf).is_err() {
            let nanos = self
                .now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or(Duration::ZERO)
                .as_nanos()
                .to_le_bytes();
            for (i, b) in buf.iter_mut().enumerate() {
                *b = nanos[i % nanos.len()] ^ (i as u8);
            }
        }
    }

    fn log(&mut self, level: LogLevel, message: &str) {
        let level = match level {
            LogLevel::Trace => ProxyLevel::Trace,
            LogLevel::Debug => ProxyLevel::Debug,
            LogLevel::Info => ProxyLevel::Info,
            LogLevel::Warn => ProxyLevel::Warn,
            LogLevel::Error => ProxyLevel::Error,
            LogLevel::Critical => ProxyLevel::Critical,
        };
        let _ = hostcalls::log(level, message);
    }

    fn debug_enabled(&mut self) -> bool {
        hostcalls::get_log_level().is_ok_and(|l| l as u32 <= ProxyLevel::Debug as u32)
    }

    fn shared_get(&mut self, key: &str) -> Option<(Vec<u8>, u32)> {
        match hostcalls::get_shared_data(key) {
            Ok((value, cas)) => {
                let cas = cas?;
                Some((value.unwrap_or_default(), cas))
            }
            Err(_) => None,
        }
    }

    fn shared_set(
        &mut self,
        key: &str,
        value: &[u8],
        cas: Option<u32>,
    ) -> Result<(), SharedDataError> {
        match hostcalls::set_shared_data(key, Some(value), cas) {
            Ok(()) => Ok(()),
            Err(Status::CasMismatch) => Err(SharedDataError::CasMismatch),
            Err(_) => Err(SharedDataError::Failed),
        }
    }

    fn count(&mut self, name: &str, delta: u64) {
        let id = METRICS.with(|m| {
            if let Some(id) = m.borrow().get(name) {
                return Some(*id);
            }
            let id = hostcalls::define_metric(MetricType::Counter, name).ok()?;
            m.borrow_mut().insert(name.to_owned(), id);
            Some(id)
        });
        if let Some(id) = id {
            let _ = hostcalls::increment_metric(id, i64::try_from(delta).unwrap_or(i64::MAX));
        }
    }

    fn dispatch(&mut self, call: &OutgoingCall) -> Result<u32, DispatchError> {
        let mut headers: Vec<(&str, &str)> = vec![
            (":method", call.method.as_str()),
            (":path", call.path.as_str()),
            (":authority", call.authority.as_str()),
        ];
        headers.extend(call.headers.iter().map(|(n, v)| (n.as_str(), v.as_str())));
        let body = (!call.body.is_empty()).then_some(call.body.as_slice());
        let token =
            hostcalls::dispatch_http_call(&call.cluster, headers, body, vec![], call.timeout)
                .map_err(|_| DispatchError)?;
        DISPATCHED.with(|d| d.borrow_mut().push(token));
        Ok(token)
    }
}
