//! Masked errors. Every refusal leaves the plugin as `application/problem+json`
//! (RFC 9457) built here and nowhere else: a stable `code`, a short `title`, the
//! `status`, a `detail` that says what to do, and the request id to quote to
//! support. Nothing from the request, the token, the keys or the policy is ever
//! echoed: the body depends only on the code and the request id.

use crate::http::LocalReply;

/// The stable problem codes. The wire form (`as_str`) never changes once shipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Code {
    /// No consent token where the configuration says it must be.
    TokenMissing,
    /// A token was present but is not acceptable (any reason but expiry).
    TokenInvalid,
    /// The token's lifetime is over.
    TokenExpired,
    /// The token was sent more than once or in more than one place.
    TokenAmbiguous,
    /// The consent was revoked by its issuer.
    ConsentRevoked,
    /// The consent is suspended by its issuer.
    ConsentSuspended,
    /// A sender-constrained token was presented by another client.
    TokenUnbound,
    /// The consent or the policy does not allow this request.
    AccessDenied,
    /// The request is malformed in a way that prevents a safe decision.
    BadRequest,
    /// The request body is larger than the plugin will inspect.
    RequestTooLarge,
    /// The caller sent too many requests.
    RateLimited,
    /// The caller is locked out after too many refusals.
    LockedOut,
    /// The upstream answered with an error; its body is withheld.
    UpstreamError,
    /// The upstream's answer cannot be redacted safely, so none of it is released.
    UnsafeResponse,
    /// A dependency (keys, status list) is unavailable, so no decision can be made.
    DependencyUnavailable,
}

impl Code {
    pub const ALL: [Code; 15] = [
        Code::TokenMissing,
        Code::TokenInvalid,
        Code::TokenExpired,
        Code::TokenAmbiguous,
        Code::ConsentRevoked,
        Code::ConsentSuspended,
        Code::TokenUnbound,
        Code::AccessDenied,
        Code::BadRequest,
        Code::RequestTooLarge,
        Code::RateLimited,
        Code::LockedOut,
        Code::UpstreamError,
        Code::UnsafeResponse,
        Code::DependencyUnavailable,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Code::TokenMissing => "token_missing",
            Code::TokenInvalid => "token_invalid",
            Code::TokenExpired => "token_expired",
            Code::TokenAmbiguous => "token_ambiguous",
            Code::ConsentRevoked => "consent_revoked",
            Code::ConsentSuspended => "consent_suspended",
            Code::TokenUnbound => "token_unbound",
            Code::AccessDenied => "access_denied",
            Code::BadRequest => "bad_request",
            Code::RequestTooLarge => "request_too_large",
            Code::RateLimited => "rate_limited",
            Code::LockedOut => "locked_out",
            Code::UpstreamError => "upstream_error",
            Code::UnsafeResponse => "unsafe_response",
            Code::DependencyUnavailable => "dependency_unavailable",
        }
    }

    pub fn status(self) -> u16 {
        match self {
            // RFC 8705 §3: an unbound presentation is an `invalid_token`, as is any
            // other unacceptable token.
            Code::TokenMissing | Code::TokenInvalid | Code::TokenExpired | Code::TokenUnbound => {
                401
            }
            Code::TokenAmbiguous | Code::BadRequest => 400,
            Code::ConsentRevoked
            | Code::ConsentSuspended
            | Code::AccessDenied
            | Code::LockedOut => 403,
            Code::RequestTooLarge => 413,
            Code::RateLimited => 429,
            Code::UpstreamError | Code::UnsafeResponse => 502,
            Code::DependencyUnavailable => 503,
        }
    }

    pub fn title(self) -> &'static str {
        match self {
            Code::TokenMissing => "Consent token required",
            Code::TokenInvalid => "Consent token not accepted",
            Code::TokenExpired => "Consent token expired",
            Code::TokenAmbiguous => "More than one consent token",
            Code::ConsentRevoked => "Consent revoked",
            Code::ConsentSuspended => "Consent suspended",
            Code::TokenUnbound => "Consent token not bound to this client",
            Code::AccessDenied => "Access not permitted",
            Code::BadRequest => "Request not understood",
            Code::RequestTooLarge => "Request body too large",
            Code::RateLimited => "Too many requests",
            Code::LockedOut => "Client temporarily locked out",
            Code::UpstreamError => "Upstream service error",
            Code::UnsafeResponse => "Response withheld",
            Code::DependencyUnavailable => "Service temporarily unavailable",
        }
    }

    /// The proxy's `response.code_details` for the reply: `consentry.` and the
    /// code, so the proxy's own replies can be told apart from the plugin's.
    pub fn details(self) -> &'static str {
        match self {
            Code::TokenMissing => "consentry.token_missing",
            Code::TokenInvalid => "consentry.token_invalid",
            Code::TokenExpired => "consentry.token_expired",
            Code::TokenAmbiguous => "consentry.token_ambiguous",
            Code::ConsentRevoked => "consentry.consent_revoked",
            Code::ConsentSuspended => "consentry.consent_suspended",
            Code::TokenUnbound => "consentry.token_unbound",
            Code::AccessDenied => "consentry.access_denied",
            Code::BadRequest => "consentry.bad_request",
            Code::RequestTooLarge => "consentry.request_too_large",
            Code::RateLimited => "consentry.rate_limited",
            Code::LockedOut => "consentry.locked_out",
            Code::UpstreamError => "consentry.upstream_error",
            Code::UnsafeResponse => "consentry.unsafe_response",
            Code::DependencyUnavailable => "consentry.dependency_unavailable",
        }
    }

    /// What the caller can do about it, in one sentence.
    pub fn detail(self) -> &'static str {
        match self {
            Code::TokenMissing => {
                "Send a consent token as a Bearer token in the Authorization header."
            }
            Code::TokenInvalid => "Obtain a new consent token from the consent service.",
            Code::TokenExpired => "The consent token has expired; obtain a new one.",
            Code::TokenAmbiguous => "Send exactly one consent token, in one place.",
            Code::ConsentRevoked => "The data subject or the issuer withdrew this consent.",
            Code::ConsentSuspended => {
                "This consent is suspended; ask the consent service about it."
            }
            Code::TokenUnbound => {
                "Present this token over mTLS with the client certificate it was issued to."
            }
            Code::AccessDenied => "The consent and the policy do not cover this request.",
            Code::BadRequest => "Check the request against the API documentation.",
            Code::RequestTooLarge => "Send a smaller request body.",
            Code::RateLimited => "Retry after the time given in Retry-After.",
            Code::LockedOut => {
                "Too many refused requests; retry after the time given in Retry-After."
            }
            Code::UpstreamError => {
                "The service could not answer; retry later and quote the request id."
            }
            Code::UnsafeResponse => {
                "The answer could not be checked against the consent; quote the request id to support."
            }
            Code::DependencyUnavailable => "Retry shortly; quote the request id if this persists.",
        }
    }
}

/// The masked problem reply for `code`. `request_id` must already be sanitised
/// (see [`sanitize_request_id`]); `retry_after` adds `Retry-After` in seconds.
pub fn reply(
    code: Code,
    type_base: &str,
    request_id: &str,
    retry_after: Option<u64>,
) -> LocalReply {
    let status = code.status();
    // Written directly, not through a JSON map: a reply must be possible even on a
    // host whose randomness failed (std's hash maps draw their keys from it).
    let mut body = String::with_capacity(320);
    body.push_str("{\"type\":");
    crate::audit::push_json_string(&mut body, &format!("{type_base}{}", code.as_str()));
    body.push_str(",\"title\":");
    crate::audit::push_json_string(&mut body, code.title());
    body.push_str(&format!(",\"status\":{status},\"code\":"));
    crate::audit::push_json_string(&mut body, code.as_str());
    body.push_str(",\"detail\":");
    crate::audit::push_json_string(&mut body, code.detail());
    body.push_str(",\"request_id\":");
    crate::audit::push_json_string(&mut body, request_id);
    body.push('}');
    let mut headers = vec![
        (
            "content-type".to_owned(),
            "application/problem+json".to_owned(),
        ),
        ("cache-control".to_owned(), "no-store".to_owned()),
        ("x-content-type-options".to_owned(), "nosniff".to_owned()),
    ];
    if status == 401 {
        let error = if matches!(code, Code::TokenMissing) {
            "Bearer"
        } else {
            "Bearer error=\"invalid_token\""
        };
        headers.push(("www-authenticate".to_owned(), error.to_owned()));
    }
    if let Some(seconds) = retry_after {
        headers.push(("retry-after".to_owned(), seconds.to_string()));
    }
    LocalReply {
        status,
        headers,
        body: body.into_bytes(),
        details: code.details(),
    }
}

/// A request id that is safe to echo: the proxy's `x-request-id` when it is short
/// and made of harmless characters, otherwise `None` (the caller generates one).
pub fn sanitize_request_id(candidate: Option<&[u8]>) -> Option<String> {
    let raw = candidate?;
    let ok = (8..=64).contains(&raw.len())
        && raw
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    ok.then(|| String::from_utf8_lossy(raw).into_owned())
}

/// A fresh request id (UUID v4 text) from 16 random bytes.
pub fn request_id_from_random(mut bytes: [u8; 16]) -> String {
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    // Written digit by digit into one string (one allocation per id: one is made for
    // every request).
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut id = String::with_capacity(36);
    for (i, b) in bytes.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            id.push('-');
        }
        id.push(char::from(HEX[usize::from(b >> 4)]));
        id.push(char::from(HEX[usize::from(b & 15)]));
    }
    id
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_has_a_distinct_stable_name_and_an_error_status() {
        let mut names: Vec<_> = Code::ALL.iter().map(|c| c.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), Code::ALL.len());
        assert!(Code::ALL.iter().all(|c| c.status() >= 400));
    }

    #[test]
    fn the_reply_is_problem_json_with_the_request_id_and_nothing_else() {
        let r = reply(
            Code::TokenMissing,
            "urn:consentry:problem:",
            "rid-12345",
            None,
        );
        assert_eq!(r.status, 401);
        let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(body["code"], "token_missing");
        assert_eq!(body["status"], 401);
        assert_eq!(body["request_id"], "rid-12345");
        assert_eq!(body["type"], "urn:consentry:problem:token_missing");
        assert_eq!(body.as_object().unwrap().len(), 6);
        assert!(
            r.headers
                .contains(&("www-authenticate".into(), "Bearer".into()))
        );
    }

    #[test]
    fn an_unbound_token_is_an_invalid_token_and_only_401s_challenge() {
        // RFC 8705 §3: 401 with `error="invalid_token"`, the same challenge as any other
        // unacceptable token, so the reply does not tell binding apart.
        let r = reply(Code::TokenUnbound, "urn:p:", "rid-12345", None);
        assert_eq!(r.status, 401);
        let challenge = |r: &LocalReply| {
            r.headers
                .iter()
                .find(|(n, _)| n == "www-authenticate")
                .map(|(_, v)| v.clone())
        };
        assert_eq!(
            challenge(&r).as_deref(),
            Some("Bearer error=\"invalid_token\"")
        );
        assert_eq!(
            challenge(&r),
            challenge(&reply(Code::TokenInvalid, "urn:p:", "rid-12345", None))
        );
        for code in Code::ALL {
            let r = reply(code, "urn:p:", "rid-12345", None);
            assert_eq!(challenge(&r).is_some(), r.status == 401, "{code:?}");
        }
    }

    #[test]
    fn request_ids_that_could_carry_input_are_not_echoed() {
        assert_eq!(
            sanitize_request_id(Some(b"0f7cb765-86fc-485c-b1a8-6470c46bf45a")),
            Some("0f7cb765-86fc-485c-b1a8-6470c46bf45a".into())
        );
        assert_eq!(
            sanitize_request_id(Some(b"<script>alert(1)</script>")),
            None
        );
        assert_eq!(sanitize_request_id(Some(b"short")), None);
        assert_eq!(sanitize_request_id(Some(&[b'a'; 65])), None);
        assert_eq!(sanitize_request_id(None), None);
    }

    #[test]
    fn generated_ids_are_uuid_v4_shaped() {
        let id = request_id_from_random([0xff; 16]);
        assert_eq!(id.len(), 36);
        assert_eq!(&id[14..15], "4");
    }
}
