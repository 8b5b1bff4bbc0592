//! The request's way through the plugin, as plain functions of what the proxy saw.
//!
//! [`Plugin`] holds the compiled configuration (one per filter instance). For each
//! HTTP stream the adapter calls [`Plugin::on_request_headers`], which decides and
//! returns an [`Exchange`] that carries the stream's state to the response side.

use crate::config::{Config, ConfigErrors};
use crate::host::{Host, LogLevel};
use crate::http::{HeaderEdits, Headers, LocalReply, RequestHead};
use crate::problem::{self, Code};

pub struct Plugin {
    config: Config,
}

/// What to do with the request once its headers are in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestAction {
    /// Refuse: answer with this reply, send nothing upstream.
    Reply(LocalReply),
    /// Send the request upstream after these header edits.
    Forward(HeaderEdits),
}

/// What to do with the response headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResponseAction {
    /// Hold the headers until the whole body is in and redacted.
    Hold,
    /// Let the response through untouched (after these edits).
    Pass(HeaderEdits),
    /// Replace the upstream's answer with this reply.
    Reply(LocalReply),
}

/// What to do with the response body so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyAction {
    /// Not ours to touch: let it move on unchanged.
    Pass,
    /// Keep buffering; release nothing.
    Buffer,
    /// Release this body in place of the upstream's, with these header edits.
    Release { body: Vec<u8>, headers: HeaderEdits },
    /// Withhold the upstream's answer; send this reply instead.
    Reply(LocalReply),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// The plugin refused; its own reply is on its way back through the filter.
    Refused,
    /// Forwarded; the response will be redacted with the route's plan.
    Forwarded { route: usize },
    /// The response is being buffered for redaction.
    Holding { route: usize },
    /// Nothing more to do for this stream.
    Done,
}

/// One HTTP stream's state between its request and its response.
#[derive(Debug, Clone)]
pub struct Exchange {
    request_id: String,
    method_is_head: bool,
    stage: Stage,
}

impl Plugin {
    pub fn new(config: Config) -> Self {
        Self { config }
    }

    /// Compiles the filter configuration; a refused configuration never runs.
    pub fn from_json(bytes: &[u8]) -> Result<Self, ConfigErrors> {
        Config::from_json(bytes).map(Self::new)
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn on_request_headers(
        &self,
        head: &RequestHead,
        host: &mut dyn Host,
    ) -> (Exchange, RequestAction) {
        let request_id = problem::sanitize_request_id(head.headers.get_all("x-request-id").next())
            .unwrap_or_else(|| {
                let mut bytes = [0u8; 16];
                host.fill_random(&mut bytes);
                problem::request_id_from_random(bytes)
            });
        let mut exchange = Exchange {
            request_id,
            method_is_head: head.method == "HEAD",
            stage: Stage::Refused,
        };
        let action = match self.decide(head) {
            Ok(route) => {
                exchange.stage = Stage::Forwarded { route };
                RequestAction::Forward(self.request_edits())
            }
            Err(code) => {
                host.count(&format!("consentry.decision.deny.{}", code.as_str()), 1);
                host.log(
                    LogLevel::Info,
                    &format!("request {} refused: {}", exchange.request_id, code.as_str()),
                );
                RequestAction::Reply(self.problem(code, &exchange))
            }
        };
        if matches!(action, RequestAction::Forward(_)) {
            host.count("consentry.decision.allow", 1);
        }
        (exchange, action)
    }

    fn decide(&self, head: &RequestHead) -> Result<usize, Code> {
        let _token = self.find_token(&head.headers)?;
        let route = self
            .config
            .routes
            .iter()
            .position(|r| {
                r.methods.contains(&head.method) && r.template.matches(head.url_path()).is_some()
            })
            .ok_or(Code::AccessDenied)?;
        Ok(route)
    }

    /// The token from its configured place: exactly one occurrence, with the
    /// configured scheme, non-empty.
    fn find_token<'h>(&self, headers: &'h Headers) -> Result<&'h [u8], Code> {
        let loc = &self.config.token;
        let value = headers.get_single(&loc.header).map_err(|n| {
            if n == 0 {
                Code::TokenMissing
            } else {
                Code::TokenAmbiguous
            }
        })?;
        // Envoy joins a repeated Authorization header into one value with ','
        // before the plugin sees it; a token never contains a comma.
        if value.contains(&b',') {
            return Err(Code::TokenAmbiguous);
        }
        let token = match &loc.scheme {
            None => value,
            Some(scheme) => {
                let (given, rest) = split_scheme(value).ok_or(Code::TokenMissing)?;
                if !given.eq_ignore_ascii_case(scheme.as_bytes()) {
                    return Err(Code::TokenMissing);
                }
                rest
            }
        };
        if token.is_empty() || token.iter().any(|b| !b.is_ascii_graphic()) {
            return Err(Code::TokenInvalid);
        }
        Ok(token)
    }

    /// Edits every forwarded request gets: the token stays here, and the upstream
    /// must answer uncompressed so its answer can be redacted.
    fn request_edits(&self) -> HeaderEdits {
        let mut edits = HeaderEdits::default();
        edits.remove(&self.config.token.header);
        edits.remove("accept-encoding");
        edits
    }

    fn problem(&self, code: Code, exchange: &Exchange) -> LocalReply {
        problem::reply(
            code,
            &self.config.problem_type_base,
            &exchange.request_id,
            None,
        )
    }

    pub fn on_response_headers(
        &self,
        exchange: &mut Exchange,
        status: u16,
        headers: &Headers,
        end_of_stream: bool,
        host: &mut dyn Host,
    ) -> ResponseAction {
        let route = match exchange.stage {
            Stage::Forwarded { route } => route,
            // Our own reply, or a stream already handled: let it through as is.
            Stage::Refused | Stage::Holding { .. } | Stage::Done => {
                return ResponseAction::Pass(HeaderEdits::default());
            }
        };
        if status >= 500 {
            exchange.stage = Stage::Done;
            host.count("consentry.upstream.error_masked", 1);
            return ResponseAction::Reply(self.problem(Code::UpstreamError, exchange));
        }
        let no_body = exchange.method_is_head || status == 204 || status == 304 || end_of_stream;
        if no_body || !(200..300).contains(&status) {
            exchange.stage = Stage::Done;
            return ResponseAction::Pass(HeaderEdits::default());
        }
        if let Some(problem) = self.unredactable(headers) {
            exchange.stage = Stage::Done;
            host.count("consentry.response.withheld", 1);
            return ResponseAction::Reply(self.problem(problem, exchange));
        }
        exchange.stage = Stage::Holding { route };
        ResponseAction::Hold
    }

    /// A response whose body the redactor cannot read safely is withheld whole.
    fn unredactable(&self, headers: &Headers) -> Option<Code> {
        for encoding in headers.get_all("content-encoding") {
            if !encoding.trim_ascii().eq_ignore_ascii_case(b"identity") {
                return Some(Code::UnsafeResponse);
            }
        }
        let content_type = headers.get_single("content-type").ok()?;
        let media = content_type
            .split(|b| *b == b';')
            .next()
            .unwrap_or_default()
            .trim_ascii()
            .to_ascii_lowercase();
        let json = media == b"application/json"
            || (media.starts_with(b"application/") && media.ends_with(b"+json"));
        if !json {
            return Some(Code::UnsafeResponse);
        }
        if let Some(len) = headers.get_str("content-length")
            && len
                .parse::<usize>()
                .map_or(true, |n| n > self.config.limits.max_body_bytes)
        {
            return Some(Code::UnsafeResponse);
        }
        None
    }

    /// A body chunk arrived and the whole body so far is `buffered` bytes long.
    pub fn on_response_body_progress(
        &self,
        exchange: &mut Exchange,
        buffered: usize,
        host: &mut dyn Host,
    ) -> BodyAction {
        if !exchange.is_holding() {
            return BodyAction::Pass;
        }
        if buffered > self.config.limits.max_body_bytes {
            exchange.stage = Stage::Done;
            host.count("consentry.response.withheld", 1);
            return BodyAction::Reply(self.problem(Code::UnsafeResponse, exchange));
        }
        BodyAction::Buffer
    }

    /// The whole body is in: redact it, or withhold the response.
    pub fn on_response_body(
        &self,
        exchange: &mut Exchange,
        body: &[u8],
        host: &mut dyn Host,
    ) -> BodyAction {
        let Stage::Holding { route } = exchange.stage else {
            return BodyAction::Pass;
        };
        exchange.stage = Stage::Done;
        let limits = self.config.limits;
        let redacted = self.config.routes.get(route).ok_or(()).and_then(|r| {
            r.plan
                .apply(body, limits.max_body_bytes, limits.max_depth)
                .map_err(|_| ())
        });
        match redacted {
            Ok(redacted) => {
                let mut headers = HeaderEdits::default();
                headers.set("content-length", redacted.len().to_string());
                BodyAction::Release {
                    body: redacted,
                    headers,
                }
            }
            Err(()) => {
                host.count("consentry.response.withheld", 1);
                BodyAction::Reply(self.problem(Code::UnsafeResponse, exchange))
            }
        }
    }
}

impl Exchange {
    pub fn request_id(&self) -> &str {
        &self.request_id
    }

    /// True while the response must not move before the body is redacted.
    pub fn is_holding(&self) -> bool {
        matches!(self.stage, Stage::Holding { .. })
    }
}

/// Splits `Scheme SP token` (RFC 9110 credentials), tolerating several spaces.
fn split_scheme(value: &[u8]) -> Option<(&[u8], &[u8])> {
    let space = value.iter().position(|b| *b == b' ')?;
    let (scheme, rest) = value.split_at(space);
    Some((scheme, rest.trim_ascii_start()))
}
