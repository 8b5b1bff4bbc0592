//! A fake proxy for tests and native benchmarks: every host call recorded, every
//! stream's bodies and header edits kept, and any host call made to fail on demand.
//! (The harness in `host-tests` runs the real `.wasm` against an imitation of Envoy;
//! this is the core alone.)

use std::collections::HashMap;
use std::time::SystemTime;

use crate::host::{
    DispatchError, Host, HostError, LogLevel, MapKind, OutgoingCall, SharedData, SharedDataError,
    Side,
};
use crate::http::{HeaderEdits, LocalReply};

/// Host calls a test can make fail (each answers `HostError(2)`, BadArgument).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Failures {
    pub clock: bool,
    pub random: bool,
    pub log: bool,
    pub shared_get: bool,
    pub shared_set: bool,
    pub dispatch: bool,
    pub body: bool,
    pub set_body: bool,
    pub edit: bool,
    pub reply: bool,
    pub resume: bool,
    pub reset: bool,
    pub property: bool,
}

/// What the host holds for one stream, and what the plugin did to it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FakeStream {
    pub request_body: Vec<u8>,
    pub response_body: Vec<u8>,
    /// Header edits applied, by map, in order.
    pub edits: Vec<(MapKind, HeaderEdits)>,
    pub replies: Vec<LocalReply>,
    pub resumed: Vec<Side>,
    pub resets: u32,
    /// Properties by path joined with `.` (`response.code` as 8 bytes LE).
    pub properties: HashMap<String, Vec<u8>>,
}

pub struct FakeHost {
    pub now: SystemTime,
    rng: u64,
    pub fail: Failures,
    pub shared: HashMap<String, (Vec<u8>, u32)>,
    cas: u32,
    pub calls: Vec<(u32, OutgoingCall)>,
    next_call: u32,
    pub counters: HashMap<String, u64>,
    pub logs: Vec<(LogLevel, String)>,
    /// The stream host calls act on (`switch_to`, or the callback's own).
    pub current: u32,
    pub streams: HashMap<u32, FakeStream>,
    /// Count log bytes only (benchmarks), instead of keeping every line.
    pub discard_logs: bool,
    pub log_bytes: usize,
}

const FAILED: HostError = HostError(2);

impl FakeHost {
    pub fn new(now: SystemTime) -> Self {
        Self {
            now,
            rng: 0x5eed,
            fail: Failures::default(),
            shared: HashMap::new(),
            cas: 0,
            calls: Vec::new(),
            next_call: 0,
            counters: HashMap::new(),
            logs: Vec::new(),
            current: 0,
            streams: HashMap::new(),
            discard_logs: false,
            log_bytes: 0,
        }
    }

    /// The stream calls of this context act on from now (as the proxy does when
    /// it runs one of its callbacks).
    pub fn enter(&mut self, context: u32) -> &mut FakeStream {
        self.current = context;
        self.streams.entry(context).or_default()
    }

    pub fn stream(&mut self, context: u32) -> &mut FakeStream {
        self.streams.entry(context).or_default()
    }

    pub fn counter(&self, name: &str) -> u64 {
        self.counters.get(name).copied().unwrap_or(0)
    }

    fn current(&mut self) -> &mut FakeStream {
        let id = self.current;
        self.streams.entry(id).or_default()
    }
}

impl SharedData for FakeHost {
    fn shared_get(&mut self, key: &str) -> Result<Option<(Vec<u8>, u32)>, HostError> {
        if self.fail.shared_get {
            return Err(FAILED);
        }
        Ok(self.shared.get(key).cloned())
    }

    fn shared_set(
        &mut self,
        key: &str,
        value: &[u8],
        cas: Option<u32>,
    ) -> Result<(), SharedDataError> {
        if self.fail.shared_set {
            return Err(SharedDataError::Failed);
        }
        if let (Some(cas), Some((_, current))) = (cas.filter(|c| *c != 0), self.shared.get(key))
            && cas != *current
        {
            return Err(SharedDataError::CasMismatch);
        }
        self.cas = self.cas.wrapping_add(1).max(1);
        self.shared
            .insert(key.to_owned(), (value.to_vec(), self.cas));
        Ok(())
    }
}

impl Host for FakeHost {
    fn now(&self) -> Result<SystemTime, HostError> {
        if self.fail.clock {
            return Err(FAILED);
        }
        Ok(self.now)
    }

    fn fill_random(&mut self, buf: &mut [u8]) -> Result<(), HostError> {
        if self.fail.random {
            return Err(FAILED);
        }
        for b in buf {
            self.rng = self
                .rng
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            *b = (self.rng >> 33) as u8;
        }
        Ok(())
    }

    fn log(&mut self, level: LogLevel, message: &str) -> Result<(), HostError> {
        if self.fail.log {
            return Err(FAILED);
        }
        self.log_bytes += message.len();
        if !self.discard_logs {
            self.logs.push((level, message.to_owned()));
        }
        Ok(())
    }

    fn count(&mut self, name: &str, delta: u64) {
        if let Some(c) = self.counters.get_mut(name) {
            *c += delta;
        } else {
            self.counters.insert(name.to_owned(), delta);
        }
    }

    fn dispatch(&mut self, call: &OutgoingCall) -> Result<u32, DispatchError> {
        if self.fail.dispatch {
            return Err(DispatchError);
        }
        self.next_call += 4;
        self.calls.push((self.next_call, call.clone()));
        Ok(self.next_call)
    }

    fn switch_to(&mut self, context: u32) -> Result<(), HostError> {
        self.current = context;
        Ok(())
    }

    fn body(&mut self, side: Side, size: usize) -> Result<Vec<u8>, HostError> {
        if self.fail.body {
            return Err(FAILED);
        }
        let s = self.current();
        let body = match side {
            Side::Request => &s.request_body,
            Side::Response => &s.response_body,
        };
        Ok(body
            .get(..size.min(body.len()))
            .unwrap_or_default()
            .to_vec())
    }

    fn set_body(&mut self, side: Side, size: usize, body: &[u8]) -> Result<(), HostError> {
        if self.fail.set_body {
            return Err(FAILED);
        }
        let s = self.current();
        let target = match side {
            Side::Request => &mut s.request_body,
            Side::Response => &mut s.response_body,
        };
        let end = size.min(target.len());
        target.splice(..end, body.iter().copied());
        Ok(())
    }

    fn property(&mut self, path: &[&str]) -> Result<Option<Vec<u8>>, HostError> {
        if self.fail.property {
            return Err(FAILED);
        }
        let key = path.join(".");
        Ok(self.current().properties.get(&key).cloned())
    }

    fn edit_headers(&mut self, map: MapKind, edits: &HeaderEdits) -> Result<(), HostError> {
        if self.fail.edit {
            return Err(FAILED);
        }
        self.current().edits.push((map, edits.clone()));
        Ok(())
    }

    fn send_reply(&mut self, reply: &LocalReply) -> Result<(), HostError> {
        if self.fail.reply {
            return Err(FAILED);
        }
        self.current().replies.push(reply.clone());
        Ok(())
    }

    fn resume(&mut self, side: Side) -> Result<(), HostError> {
        if self.fail.resume {
            return Err(FAILED);
        }
        self.current().resumed.push(side);
        Ok(())
    }

    fn reset(&mut self) -> Result<(), HostError> {
        if self.fail.reset {
            return Err(FAILED);
        }
        self.current().resets += 1;
        Ok(())
    }
}
