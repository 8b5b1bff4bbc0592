//! The state machine of one stream. [`Stream::on`] is the whole table: one arm per
//! (state, event) pair, no wildcard, so a new state or event does not compile until
//! each of its pairs is decided. The arms only choose; the work is in the methods
//! below them and in `request`, `response` and `record`.
//!
//! What a state allows to move:
//!
//! | state | request side | response side |
//! |---|---|---|
//! | `New`, `Waiting` | held (no decision yet) | a reply of the proxy's own is masked |
//! | `HoldingRequest` | held until the body is whole, then minimised | masked |
//! | `Forwarded` | passes (allowed, nothing to minimise) | headers decide |
//! | `HoldingResponse` | passes | held until the body is whole, then redacted |
//! | `HeadersOnly`, `Released` | passes | nothing more may come (else reset) |
//! | `Replied` | held | only the plugin's own reply passes |
//! | `ProxyReply` | held | the proxy's own reply passes (never an upstream's) |
//! | `Withheld`, `Reset`, `Ended` | held | held |
//!
//! "Masked" is the plugin's problem+json in place of what came; once the response's
//! headers have left the proxy a masked answer is impossible and the stream is reset
//! instead, so a withheld answer never completes as a success.

use std::rc::Rc;

use crate::config::ResponseMode;
use crate::host::{Host, HostError, LogLevel, MapKind, Side};
use crate::http::{HeaderEdits, Headers, LocalReply, RequestHead};
use crate::problem::{self, Code};
use crate::redact::Plan;

use super::fetch::Resource;
use super::plugin::Plugin;
use super::record::{Ending, Outcome};
use super::request::RequestDecision;
use super::response::ResponseDecision;
use super::{Event, Flow, ResponseHead};

/// Which time a request is being decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Attempt {
    /// As its headers arrive.
    First,
    /// Again, after a resource it waited for arrived (or failed); it may wait again.
    Again,
    /// Again, after waiting `limits.max_wait_ms`: a missing dependency is now a 503.
    Last,
}

/// What a transition works with.
pub(crate) struct Cx<'a> {
    /// `None`: the configuration was refused, and every request is refused.
    pub plugin: Option<&'a mut Plugin>,
    pub host: &'a mut dyn Host,
    /// A per-filter counter for request ids when the host gives no randomness.
    pub sequence: &'a mut u64,
    /// The half of the stream whose callback runs (a call's answer or the timer
    /// count as the request's): a reply sent from the request path comes back
    /// through the response callbacks, one sent from the response path does not.
    pub side: Side,
}

/// One stream's decision data, kept from its request to its audit record.
#[derive(Debug, Clone, Default)]
pub(crate) struct Exchange {
    pub request_id: String,
    pub method_is_head: bool,
    pub route: Option<usize>,
    pub plan: Option<Rc<Plan>>,
    /// The purpose the request was allowed for (request minimisation uses it).
    pub purpose: Option<String>,
    /// The request's `content-type` values, for request minimisation.
    pub content_type: Option<Vec<u8>>,
    pub outcome: Outcome,
}

/// What the request has delivered so far.
#[derive(Debug, Clone, Default)]
struct RequestSeen {
    /// Bytes of body the host holds (accumulated while held).
    body_size: usize,
    /// The body is complete (end of stream, or trailers came).
    ended: bool,
}

#[derive(Debug, Clone)]
enum State {
    /// Created; its request headers have not arrived.
    New,
    /// The request headers are held while the decision waits for a resource.
    Waiting { resource: Resource, since_ms: u64 },
    /// Allowed; the request is held until its body is whole, to be minimised.
    /// `headers_sent`: its headers already went upstream (the late-commit mode,
    /// for hosts that deliver no body while headers are paused): only the body is
    /// held, and its length is left to chunked framing.
    HoldingRequest { headers_sent: bool },
    /// Allowed and on its way upstream; no response yet.
    Forwarded,
    /// The response is held until its body is whole and redacted; `edits` are
    /// the header changes decided when its headers came.
    HoldingResponse {
        edits: HeaderEdits,
        headers_sent: bool,
        /// Bytes of body the host holds so far.
        body_size: usize,
    },
    /// The response's headers went on and no body may follow.
    HeadersOnly,
    /// The response went on whole, redacted.
    Released,
    /// A reply the proxy made before this filter saw the request passes on.
    ProxyReply,
    /// The plugin answered from the request path (a refusal, or a problem in place
    /// of an allowed request's answer): its own reply comes back through the
    /// response callbacks, and only it passes.
    Replied { status: u16, body_len: usize },
    /// The plugin replaced the answer with its own reply from a response callback
    /// (the host sends it without running the response callbacks again).
    Withheld,
    /// The plugin reset the stream.
    Reset,
    /// The stream is over (`on_log` ran).
    Ended,
}

/// A stream: its state, its decision data, and what its request delivered.
pub(crate) struct Stream {
    state: State,
    ex: Exchange,
    request: RequestSeen,
    /// The request as read at its headers, kept while it may be decided again.
    head: Option<RequestHead>,
    /// This stream's audit record is written: exactly one per stream.
    recorded: bool,
}

impl Stream {
    pub(crate) fn new() -> Self {
        Self {
            state: State::New,
            ex: Exchange::default(),
            request: RequestSeen::default(),
            head: None,
            recorded: false,
        }
    }

    /// The resource this stream waits for, and since when (Unix ms).
    pub(crate) fn waiting_for(&self) -> Option<(&Resource, u64)> {
        match &self.state {
            State::Waiting { resource, since_ms } => Some((resource, *since_ms)),
            _ => None,
        }
    }

    /// The transition table.
    pub(crate) fn on(&mut self, event: Event, cx: &mut Cx<'_>) -> Flow {
        use Event as E;
        use Side::{Request as Req, Response as Resp};
        use State as S;
        match (&self.state, event) {
            // ── New: nothing seen yet.
            (S::New, E::RequestHeaders(head)) => self.begin(head, cx),
            (S::New, E::RequestBody { .. } | E::RequestTrailers(_) | E::Metadata(Req)) => {
                self.refuse_unexpected(cx)
            }
            (S::New, E::ResponseHeaders(head)) => self.reply_before_request(&head, cx),
            (S::New, E::ResponseBody { .. } | E::ResponseTrailers(_) | E::Metadata(Resp)) => {
                self.reset(Code::UnsafeResponse, "unexpected_event", cx)
            }
            (S::New, E::Unreadable(Req)) => {
                self.ex.request_id = fallback_request_id(cx.host, cx.sequence);
                self.refuse(Code::DependencyUnavailable, "host_call", Some(1), cx)
            }
            (S::New, E::Unreadable(Resp)) => self.reset(Code::UnsafeResponse, "host_call", cx),
            (S::New, E::Log) => self.end(cx),

            // ── Waiting: the request is held until it is decided.
            (S::Waiting { .. }, E::RequestHeaders(_)) => self.refuse_unexpected(cx),
            (
                S::Waiting { .. },
                E::RequestBody {
                    size,
                    end_of_stream,
                },
            ) => self.note_body(size, end_of_stream),
            (S::Waiting { .. }, E::RequestTrailers(trailers)) => {
                self.request.ended = true;
                self.drop_trailers(&trailers, Flow::Pause, cx)
            }
            (S::Waiting { .. }, E::Metadata(_)) => Flow::Pause,
            (S::Waiting { .. }, E::ResponseHeaders(head)) => self.mask_proxy_reply(&head, cx),
            (S::Waiting { .. }, E::ResponseBody { .. } | E::ResponseTrailers(_)) => {
                self.reset(Code::UnsafeResponse, "unexpected_event", cx)
            }
            (S::Waiting { .. } | S::HoldingRequest { .. }, E::Unreadable(_)) => {
                self.refuse(Code::DependencyUnavailable, "host_call", Some(1), cx)
            }
            (S::Waiting { .. }, E::Log) => self.end(cx),

            // ── HoldingRequest: allowed; the body is held until whole.
            (S::HoldingRequest { .. }, E::RequestHeaders(_)) => self.refuse_unexpected(cx),
            (
                S::HoldingRequest { .. },
                E::RequestBody {
                    size,
                    end_of_stream: false,
                },
            ) => self.hold_request_body(size, cx),
            (
                S::HoldingRequest { .. },
                E::RequestBody {
                    size,
                    end_of_stream: true,
                },
            ) => {
                self.request.body_size = size;
                self.request.ended = true;
                self.minimise_request(cx)
            }
            (S::HoldingRequest { .. }, E::RequestTrailers(trailers)) => {
                self.request.ended = true;
                match self.drop_trailers(&trailers, Flow::Continue, cx) {
                    Flow::Continue => self.minimise_request(cx),
                    Flow::Pause => Flow::Pause,
                }
            }
            (S::HoldingRequest { .. }, E::Metadata(_)) => Flow::Pause,
            (S::HoldingRequest { .. }, E::ResponseHeaders(head)) => {
                self.mask_proxy_reply(&head, cx)
            }
            (S::HoldingRequest { .. }, E::ResponseBody { .. } | E::ResponseTrailers(_)) => {
                self.reset(Code::UnsafeResponse, "unexpected_event", cx)
            }
            (S::HoldingRequest { .. }, E::Log) => self.end(cx),

            // ── Forwarded: allowed and gone upstream; the response decides next.
            (S::Forwarded, E::RequestHeaders(_)) => {
                self.withhold(Code::UnsafeResponse, "unexpected_event", cx)
            }
            (S::Forwarded, E::RequestBody { .. } | E::Metadata(Req)) => Flow::Continue,
            (S::Forwarded, E::RequestTrailers(trailers)) => {
                self.drop_trailers(&trailers, Flow::Continue, cx)
            }
            (S::Forwarded, E::Metadata(Resp)) => Flow::Pause,
            (S::Forwarded, E::ResponseHeaders(head)) => self.response_headers(head, cx),
            (S::Forwarded, E::ResponseBody { .. } | E::ResponseTrailers(_)) => {
                self.reset(Code::UnsafeResponse, "unexpected_event", cx)
            }
            (S::Forwarded | S::HoldingResponse { .. }, E::Unreadable(_)) => {
                self.withhold(Code::UnsafeResponse, "host_call", cx)
            }
            (S::Forwarded, E::Log) => self.end(cx),

            // ── HoldingResponse: the body is held until whole, then redacted.
            (S::HoldingResponse { .. }, E::RequestHeaders(_) | E::ResponseHeaders(_)) => {
                self.withhold(Code::UnsafeResponse, "unexpected_event", cx)
            }
            (S::HoldingResponse { .. }, E::RequestBody { .. } | E::Metadata(Req)) => Flow::Continue,
            (S::HoldingResponse { .. }, E::RequestTrailers(trailers)) => {
                self.drop_trailers(&trailers, Flow::Continue, cx)
            }
            (S::HoldingResponse { .. }, E::Metadata(Resp)) => Flow::Pause,
            (
                S::HoldingResponse { .. },
                E::ResponseBody {
                    size,
                    end_of_stream: false,
                },
            ) => self.hold_response_body(size, cx),
            (
                S::HoldingResponse { .. },
                E::ResponseBody {
                    size,
                    end_of_stream: true,
                },
            ) => self.release_response(size, None, cx),
            // Trailers end the body (no end-of-stream body callback comes then).
            (S::HoldingResponse { body_size, .. }, E::ResponseTrailers(trailers)) => {
                let size = *body_size;
                self.release_response(size, Some(trailers), cx)
            }
            (S::HoldingResponse { .. }, E::Log) => self.end(cx),

            // ── HeadersOnly and Released: the response is out; nothing may follow.
            (S::HeadersOnly | S::Released, E::RequestHeaders(_) | E::ResponseHeaders(_)) => {
                self.reset(Code::UnsafeResponse, "unexpected_event", cx)
            }
            (S::HeadersOnly | S::Released, E::RequestBody { .. } | E::Metadata(Req)) => {
                Flow::Continue
            }
            (S::HeadersOnly | S::Released, E::RequestTrailers(trailers)) => {
                self.drop_trailers(&trailers, Flow::Continue, cx)
            }
            (S::HeadersOnly | S::Released, E::Metadata(Resp)) => Flow::Pause,
            (S::HeadersOnly | S::Released, E::ResponseBody { size: 0, .. }) => Flow::Continue,
            (S::HeadersOnly | S::Released, E::ResponseBody { .. } | E::ResponseTrailers(_)) => {
                self.reset(Code::UnsafeResponse, "body_after_release", cx)
            }
            (
                S::HeadersOnly | S::Released | S::ProxyReply | S::Replied { .. },
                E::Unreadable(_),
            ) => self.reset(Code::UnsafeResponse, "host_call", cx),
            (S::HeadersOnly | S::Released, E::Log) => self.end(cx),

            // ── ProxyReply: the proxy answered before this filter saw a request.
            (S::ProxyReply, E::RequestHeaders(_) | E::ResponseHeaders(_)) => {
                self.reset(Code::UnsafeResponse, "unexpected_event", cx)
            }
            (S::ProxyReply, E::RequestBody { .. } | E::RequestTrailers(_) | E::Metadata(Req)) => {
                Flow::Pause
            }
            (
                S::ProxyReply,
                E::ResponseBody { .. } | E::ResponseTrailers(_) | E::Metadata(Resp),
            ) => Flow::Continue,
            (S::ProxyReply, E::Log) => self.end(cx),

            // ── Refused: only the plugin's own reply moves.
            (S::Replied { .. }, E::RequestHeaders(_)) => Flow::Pause,
            (S::Replied { .. }, E::RequestBody { .. } | E::RequestTrailers(_) | E::Metadata(_)) => {
                Flow::Pause
            }
            (S::Replied { status, .. }, E::ResponseHeaders(head)) => {
                if head.status == *status {
                    Flow::Continue
                } else {
                    self.reset(Code::UnsafeResponse, "not_our_reply", cx)
                }
            }
            // The reply's body comes whole in one callback; more is not the reply.
            (S::Replied { body_len, .. }, E::ResponseBody { size, .. }) => {
                if size <= *body_len {
                    Flow::Continue
                } else {
                    self.reset(Code::UnsafeResponse, "not_our_reply", cx)
                }
            }
            (S::Replied { .. }, E::ResponseTrailers(_)) => {
                self.reset(Code::UnsafeResponse, "not_our_reply", cx)
            }
            (S::Replied { .. }, E::Log) => self.end(cx),

            // ── Withheld, Reset, Ended: nothing moves any more.
            (
                S::Withheld | S::Reset | S::Ended,
                E::RequestHeaders(_)
                | E::RequestBody { .. }
                | E::RequestTrailers(_)
                | E::ResponseHeaders(_)
                | E::ResponseBody { .. }
                | E::ResponseTrailers(_)
                | E::Metadata(_)
                | E::Unreadable(_),
            ) => Flow::Pause,
            (S::Withheld | S::Reset, E::Log) => self.end(cx),
            (S::Ended, E::Log) => Flow::Pause,
        }
    }

    /// Decides again after a wait (a call's answer, a failed fetch, or the time
    /// limit). A stream that stopped waiting meanwhile is left alone.
    pub(crate) fn wake(&mut self, attempt: Attempt, cx: &mut Cx<'_>) {
        if !matches!(self.state, State::Waiting { .. }) {
            return;
        }
        let flow = self.decide(attempt, cx);
        if flow == Flow::Continue && cx.host.resume(Side::Request).is_err() {
            // Allowed, but the host would not let it go: refuse rather than hang.
            self.refuse(Code::DependencyUnavailable, "host_call", None, cx);
        }
    }

    /// The context is gone. A stream that never got `on_log` gets its record now.
    pub(crate) fn on_deleted(&mut self, cx: &mut Cx<'_>) {
        if !self.recorded {
            self.end(cx);
        }
    }

    // ── Request side ──────────────────────────────────────────────────────────

    fn begin(&mut self, head: RequestHead, cx: &mut Cx<'_>) -> Flow {
        self.request.ended = head.end_of_stream;
        self.head = Some(head);
        self.decide(Attempt::First, cx)
    }

    /// Decides the held request and acts on the decision.
    fn decide(&mut self, attempt: Attempt, cx: &mut Cx<'_>) -> Flow {
        let Some(head) = self.head.as_ref() else {
            return self.refuse(Code::BadRequest, "no_request_headers", None, cx);
        };
        let Some(plugin) = cx.plugin.as_deref_mut() else {
            self.ex.request_id = request_id(head, cx.host, cx.sequence).0;
            return self.refuse(Code::DependencyUnavailable, "unconfigured", Some(1), cx);
        };
        if attempt == Attempt::First {
            let (id, random_ok) = request_id(head, cx.host, cx.sequence);
            self.ex = plugin.new_exchange(head, id);
            if !random_ok {
                return self.refuse(Code::DependencyUnavailable, "host_random", Some(1), cx);
            }
        }
        let decision = plugin.decide_request(head, &mut self.ex, attempt, cx.host);
        match decision {
            RequestDecision::Refuse {
                code,
                reason,
                retry_after,
            } => self.refuse(code, reason, retry_after, cx),
            RequestDecision::Wait(resource) => {
                if !matches!(self.state, State::Waiting { .. }) {
                    // Waiting again keeps the original start: the bound holds overall.
                    let since_ms = cx.host.now().map(crate::host::unix_millis).unwrap_or(0);
                    self.state = State::Waiting { resource, since_ms };
                } else if let State::Waiting { resource: r, .. } = &mut self.state {
                    *r = resource;
                }
                Flow::Pause
            }
            RequestDecision::Allow {
                edits,
                minimise_body,
            } => self.allow(&edits, minimise_body, cx),
        }
    }

    /// The request is allowed: its header edits, then either on its way, or held
    /// until its body can be minimised.
    fn allow(&mut self, edits: &HeaderEdits, minimise_body: bool, cx: &mut Cx<'_>) -> Flow {
        let mut edits = edits.clone();
        if minimise_body && !self.request.ended {
            // The body's length changes: the upstream gets it chunked, or with the
            // length set when the whole minimised body goes.
            edits.remove("content-length");
        }
        if cx
            .host
            .edit_headers(MapKind::RequestHeaders, &edits)
            .is_err()
        {
            return self.refuse(Code::DependencyUnavailable, "host_call", Some(1), cx);
        }
        self.head = None;
        if !minimise_body {
            self.state = State::Forwarded;
            return Flow::Continue;
        }
        if self.request.ended {
            self.state = State::HoldingRequest {
                headers_sent: false,
            };
            return self.minimise_request(cx);
        }
        // Late commit: the headers go (their content-length removed above), the
        // body is held by the body callbacks; a host that cannot hold headers
        // delivers no body until they go.
        let headers_sent = late_commit(cx);
        self.state = State::HoldingRequest { headers_sent };
        if headers_sent {
            Flow::Continue
        } else {
            Flow::Pause
        }
    }

    fn note_body(&mut self, size: usize, end_of_stream: bool) -> Flow {
        self.request.body_size = size;
        self.request.ended |= end_of_stream;
        Flow::Pause
    }

    /// Request trailers are headers nobody allow-listed, and could carry forged
    /// provenance or identity: the upstream gets none. They are removed in their
    /// own callback, where the host lets their map be written; then the stream
    /// goes on as `then` says.
    fn drop_trailers(&mut self, trailers: &Headers, then: Flow, cx: &mut Cx<'_>) -> Flow {
        let drop = remove_all(trailers);
        if drop.is_empty()
            || cx
                .host
                .edit_headers(MapKind::RequestTrailers, &drop)
                .is_ok()
        {
            return then;
        }
        match self.state {
            State::Waiting { .. } | State::HoldingRequest { .. } => {
                self.refuse(Code::DependencyUnavailable, "host_call", Some(1), cx)
            }
            _ => self.withhold(Code::UnsafeResponse, "host_call", cx),
        }
    }

    fn hold_request_body(&mut self, size: usize, cx: &mut Cx<'_>) -> Flow {
        self.request.body_size = size;
        let limit = cx
            .plugin
            .as_deref()
            .map_or(0, |p| p.config().limits.max_body_bytes);
        if size > limit {
            return self.refuse(Code::RequestTooLarge, "request_too_large", None, cx);
        }
        Flow::Pause
    }

    /// The whole request body is held: only the fields the purpose needs go up.
    fn minimise_request(&mut self, cx: &mut Cx<'_>) -> Flow {
        let size = self.request.body_size;
        let Some(plugin) = cx.plugin.as_deref_mut() else {
            return self.refuse(Code::DependencyUnavailable, "unconfigured", Some(1), cx);
        };
        let body = match cx.host.body(Side::Request, size) {
            // A host that hands over fewer or more bytes than it said it holds
            // would have the wrong body minimised: refuse.
            Ok(body) if body.len() == size => body,
            Ok(_) | Err(_) => {
                return self.refuse(
                    Code::DependencyUnavailable,
                    "request_body_unreadable",
                    Some(1),
                    cx,
                );
            }
        };
        let minimised = plugin.minimise_request_body(&mut self.ex, &body, cx.host);
        let out = match minimised {
            Ok(out) => out,
            Err((code, reason)) => return self.refuse(code, reason, None, cx),
        };
        // An empty body stays as it is: there is no buffer to replace. Headers
        // that already went upstream carry no length to fix.
        let headers_sent = matches!(self.state, State::HoldingRequest { headers_sent: true });
        if size > 0 || !out.is_empty() {
            let mut edits = HeaderEdits::default();
            edits.set("content-length", out.len().to_string());
            if cx.host.set_body(Side::Request, size, &out).is_err()
                || (!headers_sent
                    && cx
                        .host
                        .edit_headers(MapKind::RequestHeaders, &edits)
                        .is_err())
            {
                return self.refuse(Code::DependencyUnavailable, "host_call", Some(1), cx);
            }
        }
        // From the stream's own callback this lets it go; from another context
        // `Stream::wake` resumes it.
        self.state = State::Forwarded;
        Flow::Continue
    }

    /// Refuses from the request path: the plugin's problem goes back instead of
    /// anything going upstream.
    fn refuse(
        &mut self,
        code: Code,
        reason: &'static str,
        retry_after: Option<u64>,
        cx: &mut Cx<'_>,
    ) -> Flow {
        self.ex.outcome.allowed = false;
        self.ex.outcome.code = Some(code);
        self.ex.outcome.reason = reason;
        cx.host
            .count(&format!("consentry.decision.deny.{}", code.as_str()), 1);
        let reply = self.problem(code, retry_after, cx);
        self.answer(reply, cx)
    }

    /// An event that cannot come before the request's headers, or twice.
    fn refuse_unexpected(&mut self, cx: &mut Cx<'_>) -> Flow {
        if self.ex.request_id.is_empty() {
            self.ex.request_id = fallback_request_id(cx.host, cx.sequence);
        }
        self.refuse(Code::BadRequest, "unexpected_event", None, cx)
    }

    // ── Response side ─────────────────────────────────────────────────────────

    /// Response headers for a stream whose request this filter never saw: a
    /// reply the proxy made before it (an earlier filter, a direct response).
    /// It passes, unless it claims to come from the upstream, which cannot be.
    fn reply_before_request(&mut self, head: &ResponseHead, cx: &mut Cx<'_>) -> Flow {
        self.ex.request_id = fallback_request_id(cx.host, cx.sequence);
        let details = cx
            .host
            .property(&["response", "code_details"])
            .ok()
            .flatten();
        if details.as_deref() == Some(b"via_upstream") {
            return self.withhold(Code::UnsafeResponse, "unexpected_event", cx);
        }
        self.ex.outcome.reason = "proxy_reply";
        self.ex.outcome.status = head.status;
        self.state = State::ProxyReply;
        Flow::Continue
    }

    /// The proxy answered itself while the request was held (its buffer limit, a
    /// timeout): the client gets the plugin's problem for it instead.
    fn mask_proxy_reply(&mut self, head: &ResponseHead, cx: &mut Cx<'_>) -> Flow {
        let code = match head.status {
            413 => Code::RequestTooLarge,
            400..=499 => Code::BadRequest,
            _ => Code::DependencyUnavailable,
        };
        self.ex.outcome.proxy_status = Some(head.status);
        self.withhold(code, "proxy_reply", cx)
    }

    fn response_headers(&mut self, head: ResponseHead, cx: &mut Cx<'_>) -> Flow {
        let Some(plugin) = cx.plugin.as_deref_mut() else {
            return self.withhold(Code::UnsafeResponse, "unconfigured", cx);
        };
        match plugin.decide_response(&mut self.ex, &head, cx.host) {
            ResponseDecision::Withhold { code, reason } => self.withhold(code, reason, cx),
            ResponseDecision::HeadersOnly { edits } => {
                self.ex.outcome.status = head.status;
                if cx
                    .host
                    .edit_headers(MapKind::ResponseHeaders, &edits)
                    .is_err()
                {
                    return self.withhold(Code::UnsafeResponse, "host_call", cx);
                }
                if self.record(Ending::Released, cx).is_err() {
                    return self.withhold(Code::DependencyUnavailable, "audit", cx);
                }
                self.state = State::HeadersOnly;
                Flow::Continue
            }
            ResponseDecision::Hold { mut edits } => {
                self.ex.outcome.status = head.status;
                if !late_commit(cx) {
                    self.state = State::HoldingResponse {
                        edits,
                        headers_sent: false,
                        body_size: 0,
                    };
                    return Flow::Pause;
                }
                // Late commit: the headers go now, without anything that describes
                // a body not redacted yet; the body is held by the body callbacks.
                if let Some(plugin) = cx.plugin.as_deref() {
                    plugin.late_response_edits(&mut edits, &head.headers);
                }
                if cx
                    .host
                    .edit_headers(MapKind::ResponseHeaders, &edits)
                    .is_err()
                {
                    return self.withhold(Code::UnsafeResponse, "host_call", cx);
                }
                self.state = State::HoldingResponse {
                    edits: HeaderEdits::default(),
                    headers_sent: true,
                    body_size: 0,
                };
                Flow::Continue
            }
        }
    }

    fn hold_response_body(&mut self, size: usize, cx: &mut Cx<'_>) -> Flow {
        if let State::HoldingResponse { body_size, .. } = &mut self.state {
            *body_size = size;
        }
        let limit = cx
            .plugin
            .as_deref()
            .map_or(0, |p| p.config().limits.max_body_bytes);
        if size > limit {
            return self.withhold(Code::UnsafeResponse, "too_large", cx);
        }
        Flow::Pause
    }

    /// The whole response body is held: redact it, write the audit record, and
    /// release it with its headers fixed (and without trailers nobody
    /// allow-listed); or withhold it all.
    fn release_response(
        &mut self,
        size: usize,
        trailers: Option<Headers>,
        cx: &mut Cx<'_>,
    ) -> Flow {
        let State::HoldingResponse {
            edits,
            headers_sent,
            ..
        } = &mut self.state
        else {
            return self.withhold(Code::UnsafeResponse, "unexpected_event", cx);
        };
        let headers_sent = *headers_sent;
        let mut edits = std::mem::take(edits);
        let Some(plugin) = cx.plugin.as_deref_mut() else {
            return self.withhold(Code::UnsafeResponse, "unconfigured", cx);
        };
        if size > plugin.config().limits.max_body_bytes {
            return self.withhold(Code::UnsafeResponse, "too_large", cx);
        }
        let body = match cx.host.body(Side::Response, size) {
            Ok(body) if body.len() == size => body,
            Ok(_) | Err(_) => return self.withhold(Code::UnsafeResponse, "body_unreadable", cx),
        };
        let redacted = match plugin.redact_response(&mut self.ex, &body, cx.host) {
            Ok(out) => out,
            Err((code, reason)) => return self.withhold(code, reason, cx),
        };
        if !headers_sent {
            plugin.finish_response_edits(&mut edits, &body, &redacted);
        }
        // Nothing of this leaves before the callback returns: the host calls come
        // first, the record last, and a failure of either withholds it all (a
        // local reply replaces a held response whole).
        let drop_trailers = trailers.as_ref().map(remove_all).unwrap_or_default();
        if cx.host.set_body(Side::Response, size, &redacted).is_err()
            || (!headers_sent
                && cx
                    .host
                    .edit_headers(MapKind::ResponseHeaders, &edits)
                    .is_err())
            || (!drop_trailers.is_empty()
                && cx
                    .host
                    .edit_headers(MapKind::ResponseTrailers, &drop_trailers)
                    .is_err())
        {
            return self.withhold(Code::UnsafeResponse, "host_call", cx);
        }
        if self.record(Ending::Released, cx).is_err() {
            return self.withhold(Code::DependencyUnavailable, "audit", cx);
        }
        self.state = State::Released;
        Flow::Continue
    }

    /// Withholds the response: the plugin's problem in its place while its
    /// headers are still here, a reset once they have left.
    fn withhold(&mut self, code: Code, reason: &'static str, cx: &mut Cx<'_>) -> Flow {
        let headers_sent = matches!(
            self.state,
            State::HoldingResponse {
                headers_sent: true,
                ..
            } | State::HeadersOnly
                | State::Released
                | State::ProxyReply
        );
        if headers_sent {
            return self.reset(code, reason, cx);
        }
        self.ex.outcome.code = Some(code);
        self.ex.outcome.reason = reason;
        cx.host
            .count(&format!("consentry.response.withheld.{reason}"), 1);
        let reply = self.problem(code, None, cx);
        self.answer(reply, cx)
    }

    /// Resets the stream: the client sees a failed response, never a complete one.
    fn reset(&mut self, code: Code, reason: &'static str, cx: &mut Cx<'_>) -> Flow {
        self.ex.outcome.code = Some(code);
        self.ex.outcome.reason = reason;
        cx.host.count("consentry.stream.reset", 1);
        if cx.host.reset().is_err() {
            let _ = cx.host.log(
                LogLevel::Error,
                "consentry: the host refused to reset a stream; it stays paused",
            );
        }
        self.state = State::Reset;
        Flow::Pause
    }

    /// Sends `reply`. From the request path it comes back through the response
    /// callbacks (`Replied`); from the response path it goes as it is (`Withheld`).
    /// A host that will not send it gets the stream reset.
    fn answer(&mut self, reply: LocalReply, cx: &mut Cx<'_>) -> Flow {
        let status = reply.status;
        self.ex.outcome.status = status;
        if cx.host.send_reply(&reply).is_err() {
            let _ = cx.host.log(
                LogLevel::Error,
                "consentry: the host refused a local reply; the stream is reset",
            );
            if cx.host.reset().is_err() {
                let _ = cx.host.log(
                    LogLevel::Error,
                    "consentry: the host refused to reset a stream; it stays paused",
                );
            }
            self.state = State::Reset;
            return Flow::Pause;
        }
        self.state = match cx.side {
            Side::Request => State::Replied {
                status,
                body_len: reply.body.len(),
            },
            Side::Response => State::Withheld,
        };
        Flow::Pause
    }

    fn problem(&self, code: Code, retry_after: Option<u64>, cx: &Cx<'_>) -> LocalReply {
        let base = cx
            .plugin
            .as_deref()
            .map_or(crate::config::DEFAULT_PROBLEM_TYPE_BASE, |p| {
                p.config().problem_type_base.as_str()
            });
        problem::reply(code, base, &self.ex.request_id, retry_after)
    }

    // ── The end ───────────────────────────────────────────────────────────────

    /// `on_log`: the stream is over. Its audit record, unless written already.
    fn end(&mut self, cx: &mut Cx<'_>) -> Flow {
        let ending = match &self.state {
            State::New | State::ProxyReply => Ending::ProxyReply,
            State::Waiting { .. }
            | State::HoldingRequest { .. }
            | State::Forwarded
            | State::HoldingResponse {
                headers_sent: false,
                ..
            } => Ending::Unfinished,
            // Headers that left and a body that never followed: no complete answer.
            State::HoldingResponse {
                headers_sent: true, ..
            } => Ending::Reset,
            State::HeadersOnly | State::Released => Ending::Released,
            State::Replied { .. } if self.ex.outcome.allowed => Ending::Withheld,
            State::Replied { .. } => Ending::Refused,
            State::Withheld => Ending::Withheld,
            State::Reset | State::Ended => Ending::Reset,
        };
        if !self.recorded {
            if self.ex.request_id.is_empty() {
                // A stream whose request this filter never saw: the proxy's own id.
                self.ex.request_id = cx
                    .host
                    .property(&["request", "id"])
                    .ok()
                    .flatten()
                    .and_then(|id| problem::sanitize_request_id(Some(&id)))
                    .unwrap_or_else(|| fallback_request_id(cx.host, cx.sequence));
            }
            let _ = self.record(ending, cx);
        }
        self.state = State::Ended;
        Flow::Pause
    }

    /// Writes this stream's one audit record.
    fn record(&mut self, ending: Ending, cx: &mut Cx<'_>) -> Result<(), HostError> {
        let Some(plugin) = cx.plugin.as_deref_mut() else {
            self.recorded = true;
            return Ok(());
        };
        plugin.record(&self.ex, ending, cx.host)?;
        self.recorded = true;
        Ok(())
    }
}

/// Whether the configuration asks for the late-commit mode (response headers are
/// never held).
fn late_commit(cx: &Cx<'_>) -> bool {
    cx.plugin
        .as_deref()
        .is_some_and(|p| p.config().response_mode == ResponseMode::LateCommit)
}

/// Edits that remove every header of `headers`.
fn remove_all(headers: &Headers) -> HeaderEdits {
    let mut edits = HeaderEdits::default();
    for (name, _) in headers.iter() {
        if !edits.remove.iter().any(|n| n == name) {
            edits.remove(name);
        }
    }
    edits
}

/// The request id to quote: the proxy's `x-request-id` when it is safe to echo,
/// else a random one; the flag says whether randomness was available.
fn request_id(head: &RequestHead, host: &mut dyn Host, sequence: &mut u64) -> (String, bool) {
    if let Some(id) = problem::sanitize_request_id(head.headers.get_all("x-request-id").next()) {
        return (id, true);
    }
    let mut bytes = [0u8; 16];
    match host.fill_random(&mut bytes) {
        Ok(()) => (problem::request_id_from_random(bytes), true),
        Err(_) => (fallback_request_id(host, sequence), false),
    }
}

/// An id for a stream without one: unique per filter, never secret (it is only
/// quoted back to support).
fn fallback_request_id(host: &mut dyn Host, sequence: &mut u64) -> String {
    *sequence += 1;
    let mut bytes = [0u8; 16];
    if host.fill_random(&mut bytes).is_ok() {
        return problem::request_id_from_random(bytes);
    }
    format!("consentry-{:016x}", *sequence)
}
