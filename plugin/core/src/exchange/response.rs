//! Deciding on a response: what its status and headers allow (withhold it, let its
//! headers go, or hold it for redaction), the headers the client may see, and the
//! redaction of the whole body.

use crate::host::Host;
use crate::http::{HeaderEdits, Headers};
use crate::policy::{PROTOCOL_RESPONSE_HEADERS, Route};
use crate::problem::Code;
use crate::redact::{self, RedactContext};

use super::ResponseHead;
use super::machine::Exchange;
use super::plugin::Plugin;
use super::record::count_report;

/// What to do with a response whose headers are in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ResponseDecision {
    /// Replace it with the problem for `code`.
    Withhold { code: Code, reason: &'static str },
    /// It has no body: its headers go on after these edits.
    HeadersOnly { edits: HeaderEdits },
    /// Hold it until its whole body is in; these edits apply when it goes.
    Hold { edits: HeaderEdits },
}

/// Headers that describe the exact bytes of the upstream's body (or let a client
/// compare them): a client that has them and the redacted body can test guesses of
/// a removed value offline. They go only with a body the plugin did not change.
const BODY_DIGEST_HEADERS: [&str; 5] = [
    "etag",
    "digest",
    "content-digest",
    "repr-digest",
    "content-md5",
];

impl Plugin {
    pub(crate) fn decide_response(
        &mut self,
        ex: &mut Exchange,
        head: &ResponseHead,
        host: &mut dyn Host,
    ) -> ResponseDecision {
        let withhold = |code, reason| ResponseDecision::Withhold { code, reason };
        let Some(route) = ex.route.and_then(|r| self.config.policy.routes.get(r)) else {
            return withhold(Code::UnsafeResponse, "no_route");
        };
        let status = head.status;
        let headers = &head.headers;
        if status >= 500 || (route.mask_client_errors && (400..500).contains(&status)) {
            return withhold(Code::UpstreamError, "upstream_error");
        }
        if status == 101 || status < 100 {
            // A switched protocol (or no status at all) cannot be redacted.
            return withhold(Code::UnsafeResponse, "unexpected_status");
        }
        if (400..500).contains(&status) && made_by_proxy(host) {
            // The proxy's own reply (its buffer limit, a timeout) is not the
            // upstream's answer: the client gets the plugin's problem for it.
            ex.outcome.proxy_status = Some(status);
            let code = if status == 413 {
                Code::RequestTooLarge
            } else {
                Code::BadRequest
            };
            return withhold(code, "proxy_reply");
        }
        let no_body = ex.method_is_head
            || status == 204
            || status == 304
            || (100..200).contains(&status)
            || head.end_of_stream;
        if no_body {
            let edits = self.response_edits(route, headers, true);
            return ResponseDecision::HeadersOnly { edits };
        }
        if !(200..300).contains(&status) && !(400..500).contains(&status) {
            // 3xx with a body, or anything odd: nothing to redact it with.
            return withhold(Code::UnsafeResponse, "unexpected_status");
        }
        if status == 206 {
            return withhold(Code::UnsafeResponse, "partial_content");
        }
        if let Some(reason) = self.unredactable(headers, &route.content_types) {
            return withhold(Code::UnsafeResponse, reason);
        }
        ResponseDecision::Hold {
            edits: self.response_edits(route, headers, false),
        }
    }

    /// A response whose body cannot be read safely is withheld whole.
    fn unredactable(&self, headers: &Headers, allowed: &[String]) -> Option<&'static str> {
        for encoding in headers.get_all("content-encoding") {
            if !encoding.trim_ascii().eq_ignore_ascii_case(b"identity") {
                return Some("content_encoding");
            }
        }
        // Envoy joins repeated content-type headers with ','.
        let Ok(content_type) = headers.get_single("content-type") else {
            return Some("content_type");
        };
        let media = content_type
            .split(|b| *b == b';')
            .next()
            .unwrap_or_default()
            .trim_ascii()
            .to_ascii_lowercase();
        if media.contains(&b',') || !allowed.iter().any(|a| a.as_bytes() == media.as_slice()) {
            return Some("content_type");
        }
        if let Ok(len) = headers.get_single("content-length") {
            let declared = std::str::from_utf8(len)
                .ok()
                .and_then(|s| s.trim().parse::<usize>().ok());
            if declared.is_none_or(|n| n > self.config.limits.max_body_bytes) {
                return Some("too_large");
            }
        }
        None
    }

    /// The headers a released response may keep: the protocol's own, the route's
    /// allow-list, never what `errors.remove_response_headers` names; and the
    /// headers every consent-dependent view carries. `headers_only`: no body goes
    /// with them, so nothing may describe the upstream's body (its length, its
    /// digests).
    fn response_edits(&self, route: &Route, headers: &Headers, headers_only: bool) -> HeaderEdits {
        let mut edits = HeaderEdits::default();
        let allowed = route.response_headers.as_deref().unwrap_or_default();
        for (name, _) in headers.iter() {
            let kept = name.starts_with(':')
                || PROTOCOL_RESPONSE_HEADERS.contains(&name)
                || allowed.iter().any(|a| a == name);
            let removed = !kept
                || self
                    .config
                    .remove_response_headers
                    .iter()
                    .any(|r| r == name)
                || (headers_only
                    && (name == "content-length" || BODY_DIGEST_HEADERS.contains(&name)));
            if removed && !edits.remove.iter().any(|r| r == name) {
                edits.remove(name);
            }
        }
        // The view depends on this caller's consent: no shared cache may keep it.
        edits.set("cache-control", "private, no-store");
        edits.set("x-content-type-options", "nosniff");
        edits
    }

    /// Completes the edits of a released body: its own length, and no digest of a
    /// body it no longer is.
    pub(crate) fn finish_response_edits(
        &self,
        edits: &mut HeaderEdits,
        original: &[u8],
        released: &[u8],
    ) {
        if original != released {
            for name in BODY_DIGEST_HEADERS {
                if !edits.remove.iter().any(|r| r == name) {
                    edits.remove(name);
                }
            }
        }
        edits.set("content-length", released.len().to_string());
    }

    /// The edits of headers that go before their body is redacted (late commit):
    /// no length and no digest of a body the client may not get as it is.
    pub(crate) fn late_response_edits(&self, edits: &mut HeaderEdits, headers: &Headers) {
        for name in BODY_DIGEST_HEADERS.into_iter().chain(["content-length"]) {
            if headers.contains(name) && !edits.remove.iter().any(|r| r == name) {
                edits.remove(name);
            }
        }
    }

    /// The whole body is in: redact it by the decision's plan. Errors name the
    /// problem and the reason; nothing of the body is released then.
    pub(crate) fn redact_response(
        &mut self,
        ex: &mut Exchange,
        body: &[u8],
        host: &mut dyn Host,
    ) -> Result<Vec<u8>, (Code, &'static str)> {
        let Some(plan) = ex.plan.clone() else {
            return Err((Code::UnsafeResponse, "no_plan"));
        };
        let limits = redact::Limits {
            max_bytes: self.config.limits.max_body_bytes,
            max_depth: self.config.limits.max_depth,
        };
        let grantee = ex.outcome.grantee.clone();
        let recipient = grantee.as_ref().and_then(|g| self.config.recipients.get(g));
        // A host without randomness must not get weaker keys: the draw is noted,
        // and whatever was made with it is thrown away.
        let mut random_failed = false;
        let mut random = |buf: &mut [u8]| {
            if host.fill_random(buf).is_err() {
                random_failed = true;
                buf.fill(0);
            }
        };
        let mut cx = RedactContext {
            pseudonym_keys: &self.config.pseudonym_keys,
            grantee: grantee.as_deref(),
            recipient,
            random: &mut random,
        };
        let result = redact::redact(&plan, body, limits, &mut cx);
        if random_failed {
            return Err((Code::DependencyUnavailable, "host_random"));
        }
        match result {
            Ok(out) => {
                count_report(&out.report, host);
                ex.outcome.report = Some(out.report);
                Ok(out.body)
            }
            Err(e) => {
                let reason = match e {
                    redact::RedactError::TooLarge => "too_large",
                    redact::RedactError::TooDeep => "too_deep",
                    redact::RedactError::MissingKey => "missing_key",
                    redact::RedactError::RandomFailure => "host_random",
                    redact::RedactError::InvalidUtf8 { .. }
                    | redact::RedactError::ByteOrderMark => "invalid_text",
                    redact::RedactError::ControlKey { .. } => "control_key",
                    _ => "invalid_json",
                };
                Err((Code::UnsafeResponse, reason))
            }
        }
    }
}

/// Whether the proxy says it made the response itself. A host that does not say
/// (no `response.code_details`) is taken at the upstream's word: such a reply then
/// goes through every check an upstream answer does.
fn made_by_proxy(host: &mut dyn Host) -> bool {
    matches!(
        host.property(&["response", "code_details"]),
        Ok(Some(d)) if !d.is_empty() && d != b"via_upstream"
    )
}
