//! The exchange: one HTTP stream's way through the plugin, as an explicit state
//! machine whose every (state, event) pair is written down in `machine.rs`.
//!
//! ```text
//! request headers ─► caller ─► lockout ─► rate limit ─► token (one, in its place)
//!   ─► verify (cache ▸ signature ▸ claims) ─► revocation ─► binding ─► route ─► policy
//!   ─► refuse: masked problem          allow: edits (token, provenance, identity and
//!                                       method-override headers stripped; provenance
//!                                       added; query, headers and body minimised)
//! response headers ─► hold ─► body complete ─► redact by the decision's plan
//!   ─► fix the headers ─► audit record ─► release   (anything else ─► masked problem)
//! ```
//!
//! The adapter hands every host callback to [`Filter`] as an [`Event`] and returns the
//! [`Flow`] it gets back; it decides nothing. The rule the machine keeps: an event
//! that arrives in a state without an allow decision for it never lets anything
//! move on. It keeps the stream paused, or refuses with a masked problem, or (once
//! the response's headers have left) resets the stream. `Continue` is returned only
//! where a transition says so.
//!
//! [`Plugin`] holds the compiled configuration and the worker's caches (verified
//! tokens, issuer keys, status lists, plans). Keys and status lists are fetched
//! through the proxy; a request that needs one that is not there yet waits (its
//! headers stay paused) and is decided again when the answer comes, or refused with
//! 503 once `limits.max_wait_ms` has passed.

mod fetch;
mod machine;
mod plugin;
mod record;
mod request;
mod response;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::time::Duration;

pub use fetch::{FETCH_BACKOFF_MS, Resource};
pub use plugin::{EXPLAIN_MARKER, Plugin};

use crate::config::{ConfigErrors, EnvLookup};
use crate::host::{Host, LogLevel, Side};
use crate::http::{Headers, RequestHead};
use machine::Stream;

/// What the callback that delivered an event answers the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// This half of the stream may move on.
    Continue,
    /// It stays where it is: held, refused, reset, or waiting.
    Pause,
}

/// The response as it stands when its headers arrive.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResponseHead {
    /// `:status`; 0 when missing or not a number.
    pub status: u16,
    pub headers: Headers,
    /// True when the response has no body (end of stream with the headers).
    pub end_of_stream: bool,
}

/// One host callback of a stream, as the core sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    RequestHeaders(RequestHead),
    /// A request body chunk arrived; the host holds `size` bytes of it so far (the
    /// whole body when earlier chunks were held, the chunk alone otherwise).
    RequestBody {
        size: usize,
        end_of_stream: bool,
    },
    /// Request trailers: the request is complete.
    RequestTrailers(Headers),
    ResponseHeaders(ResponseHead),
    ResponseBody {
        size: usize,
        end_of_stream: bool,
    },
    ResponseTrailers(Headers),
    /// HTTP/2 metadata for one side (hosts rarely deliver it).
    Metadata(Side),
    /// A callback of one side whose content the host would not hand over (its
    /// header map could not be read): nothing about it can be trusted.
    Unreadable(Side),
    /// The stream is over, however it ended (`on_log`).
    Log,
}

/// How often the adapter should run the timer: key refreshes, audit shipping, and
/// requests that waited too long.
pub const TICK: Duration = Duration::from_millis(250);

/// One plugin instance (a root context): its compiled configuration and its
/// streams. Unconfigured (a refused configuration), it refuses every request.
pub struct Filter {
    plugin: Option<Plugin>,
    streams: BTreeMap<u32, Stream>,
    /// Request ids for refusals made without randomness (see `machine`).
    sequence: u64,
}

impl Filter {
    /// Compiles the configuration. A refused one (its errors logged) leaves a
    /// filter that refuses every request with 503: the plugin never runs
    /// half-configured.
    pub fn configure(
        bytes: &[u8],
        env: EnvLookup<'_>,
        host: &mut dyn Host,
    ) -> (Filter, Result<(), ConfigErrors>) {
        match Plugin::from_json(bytes, env) {
            Ok(mut plugin) => {
                plugin.start(host);
                (Filter::with(Some(plugin)), Ok(()))
            }
            Err(errors) => {
                for e in &errors.0 {
                    let _ = host.log(
                        LogLevel::Error,
                        &format!("consentry: configuration refused: {e}"),
                    );
                }
                (Filter::with(None), Err(errors))
            }
        }
    }

    /// A filter that refuses every request (no configuration could be loaded).
    pub fn unconfigured() -> Filter {
        Filter::with(None)
    }

    fn with(plugin: Option<Plugin>) -> Filter {
        Filter {
            plugin,
            streams: BTreeMap::new(),
            sequence: 0,
        }
    }

    pub fn plugin(&self) -> Option<&Plugin> {
        self.plugin.as_ref()
    }

    /// Streams the filter tracks (for tests and leak checks).
    pub fn stream_count(&self) -> usize {
        self.streams.len()
    }

    /// A stream context was created.
    pub fn on_stream_created(&mut self, context: u32) {
        self.streams.insert(context, Stream::new());
    }

    /// One callback of stream `context`. An event for a stream the filter does not
    /// know (its context was never created here) is refused: nothing moves.
    pub fn on_event(&mut self, context: u32, event: Event, host: &mut dyn Host) -> Flow {
        let Filter {
            plugin,
            streams,
            sequence,
        } = self;
        let Some(stream) = streams.get_mut(&context) else {
            return Flow::Pause;
        };
        let side = match &event {
            Event::RequestHeaders(_)
            | Event::RequestBody { .. }
            | Event::RequestTrailers(_)
            | Event::Metadata(Side::Request)
            | Event::Unreadable(Side::Request) => Side::Request,
            Event::ResponseHeaders(_)
            | Event::ResponseBody { .. }
            | Event::ResponseTrailers(_)
            | Event::Metadata(Side::Response)
            | Event::Unreadable(Side::Response)
            | Event::Log => Side::Response,
        };
        let mut cx = machine::Cx {
            plugin: plugin.as_mut(),
            host,
            sequence,
            side,
        };
        stream.on(event, &mut cx)
    }

    /// `on_done`: the host may delete the stream's context.
    pub fn on_done(&mut self, _context: u32) -> bool {
        true
    }

    /// The stream's context is gone. A stream that never got its `on_log` gets its
    /// audit record now, from what the plugin knows.
    pub fn on_delete(&mut self, context: u32, host: &mut dyn Host) {
        if let Some(mut stream) = self.streams.remove(&context) {
            let Filter {
                plugin, sequence, ..
            } = self;
            let mut cx = machine::Cx {
                plugin: plugin.as_mut(),
                host,
                sequence,
                side: Side::Response,
            };
            stream.on_deleted(&mut cx);
        }
    }

    /// An outgoing call's answer. The requests that waited for what it fetched
    /// are decided again, each in its own stream, then `current` is made current
    /// again.
    pub fn on_call_response(
        &mut self,
        token: u32,
        status: u16,
        body: &[u8],
        current: u32,
        host: &mut dyn Host,
    ) {
        let Some(plugin) = self.plugin.as_mut() else {
            return;
        };
        let Some(resource) = plugin.on_call_response(token, status, body, host) else {
            return;
        };
        self.wake(
            current,
            host,
            |r, _| *r == resource,
            machine::Attempt::Again,
        );
    }

    /// The timer: the plugin's own work (refreshes, audit), then requests whose
    /// fetch could not start are decided again, and requests that waited too long
    /// are decided without waiting any more (a missing dependency is then a 503).
    pub fn on_tick(&mut self, current: u32, host: &mut dyn Host) {
        let Some(plugin) = self.plugin.as_mut() else {
            return;
        };
        let failed = plugin.on_tick(host);
        let limit = plugin.config().limits.max_wait_ms;
        for resource in failed {
            self.wake(
                current,
                host,
                |r, _| *r == resource,
                machine::Attempt::Again,
            );
        }
        let Ok(now) = host.now().map(crate::host::unix_millis) else {
            // Without a clock no wait can be measured: decide every waiter now.
            self.wake(current, host, |_, _| true, machine::Attempt::Last);
            return;
        };
        self.wake(
            current,
            host,
            |_, since| now.saturating_sub(since) >= limit,
            machine::Attempt::Last,
        );
    }

    /// Decides again every waiting stream `pick` selects (by the resource it waits
    /// for and when it started waiting), each made current in turn.
    fn wake(
        &mut self,
        current: u32,
        host: &mut dyn Host,
        pick: impl Fn(&Resource, u64) -> bool,
        attempt: machine::Attempt,
    ) {
        let ready: Vec<u32> = self
            .streams
            .iter()
            .filter(|(_, s)| s.waiting_for().is_some_and(|(r, since)| pick(r, since)))
            .map(|(id, _)| *id)
            .collect();
        if ready.is_empty() {
            return;
        }
        let Filter {
            plugin,
            streams,
            sequence,
        } = self;
        for id in ready {
            let Some(stream) = streams.get_mut(&id) else {
                continue;
            };
            // A reply sent from another context comes back through the stream's
            // response callbacks, as one sent from its request path does.
            let mut cx = machine::Cx {
                plugin: plugin.as_mut(),
                host: &mut *host,
                sequence: &mut *sequence,
                side: Side::Request,
            };
            if cx.host.switch_to(id).is_err() {
                // The stream is gone from the host: its on_log/on_delete will come.
                continue;
            }
            stream.wake(attempt, &mut cx);
        }
        let _ = host.switch_to(current);
    }
}
