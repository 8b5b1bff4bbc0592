//! The one error type of consent-token checking, and the one mapping from it to what the
//! client may learn.
//!
//! Every variant is precise enough for a log line and a metric, and its `Display` text is
//! generic: it never carries a claim value, a `kid`, a key or a byte of the token, so it can
//! be logged as it is. What leaves the plugin is only [`TokenError::class`] (or the
//! [`crate::problem::Code`] it maps to): missing, invalid, expired, revoked, suspended,
//! unbound, or dependency unavailable.

use std::fmt;

use crate::problem::Code;

/// Why a consent token (or a status list, or a peer certificate) was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TokenError {
    // ---- shape of the compact JWS -------------------------------------------------------
    /// No token was presented (empty input).
    Missing,
    /// The token is longer than the configured maximum (`max_token_bytes`, 8 KiB by default).
    TooLarge,
    /// Not a compact JWS: not exactly three `.`-separated parts, an empty header or payload,
    /// a JSON (non-compact) serialization, a byte-order mark, whitespace or any byte outside
    /// the base64url alphabet.
    Malformed,
    /// A five-part compact JWE: encrypted tokens are not accepted.
    Encrypted,
    /// A part is not strict unpadded base64url (padding, `+`/`/`, non-canonical final bits).
    BadEncoding,
    /// The header or the payload is not a UTF-8 JSON object.
    BadJson,
    /// A JSON object in the header or the payload repeats a member name (at any depth,
    /// after `\u` escapes are decoded).
    DuplicateMember,

    // ---- header ---------------------------------------------------------------------------
    /// A header member has the wrong type or an unsupported value (`alg` not a string, `kid`
    /// too long, `cty` announcing a nested JWT, JWE members such as `enc` or `zip`).
    BadHeader,
    /// The header has `crit` (or `b64`): this verifier understands no critical extension.
    UnsupportedCritical,
    /// The header carries or points to a key or a certificate (`jku`, `jwk`, `x5u`, `x5c`).
    /// Keys come only from configuration and the configured JWKS, never from a token.
    ForbiddenHeader,
    /// `alg` is not one the token's issuer is configured for (this covers `none` in any
    /// letter case and every HMAC algorithm, which are never configurable).
    AlgorithmNotAllowed,
    /// `typ` is not the issuer's configured type (or the token is a status-list token).
    WrongType,

    // ---- keys and signature ---------------------------------------------------------------
    /// `iss` names no configured issuer.
    UnknownIssuer,
    /// `kid` names no key of the issuer. Internally distinct: it triggers a rate-limited
    /// refetch of the issuer's remote JWKS (see [`TokenError::needs_key_refetch`]).
    UnknownKid,
    /// The key(s) found cannot verify this `alg`: wrong key type or curve (a P-384 key for
    /// ES256), the key's own `alg` differs, its `use` is not `sig`, or it is unsupported.
    KeyMismatch,
    /// The issuer has no keys at all yet (its remote JWKS has not been fetched).
    KeysUnavailable,
    /// The signature does not have the algorithm's shape: an ES256 signature that is not
    /// exactly 64 bytes r‖s (a DER signature), r or s zero or not below the group order, an
    /// RSA signature whose length is not the modulus length, an empty signature.
    MalformedSignature,
    /// The signature does not verify with any candidate key.
    BadSignature,

    // ---- claims ---------------------------------------------------------------------------
    /// `exp` is past (beyond the clock skew).
    Expired,
    /// `nbf` is in the future (beyond the clock skew).
    NotYetValid,
    /// `iat` is in the future (beyond the clock skew).
    IssuedInFuture,
    /// `exp` minus `iat` (or `nbf`) exceeds the configured maximum lifetime.
    LifetimeTooLong,
    /// A required claim is absent (always: `iss`, `exp`, `aud`, `sub`, `jti`; `client_id`
    /// and `iat` too in an `at+jwt` token (RFC 9068 §2.2) unless the issuer relaxes it;
    /// plus the configured `required_claims` and the consent mapping's claims).
    MissingClaim,
    /// A claim has the wrong type or shape (a non-numeric `exp`, an `aud` array holding a
    /// number, a malformed `status`, `cnf` or `authorization_details` entry).
    InvalidClaim,
    /// `aud` contains none of the issuer's configured audiences.
    AudienceMismatch,
    /// An `authorization_details` entry has a `type` the issuer is not configured to accept.
    UnknownAuthorizationDetailsType,

    // ---- revocation -----------------------------------------------------------------------
    /// The consent id (`jti`) is on the issuer's deny-list.
    Revoked,
    /// The status list marks the token INVALID (1).
    StatusInvalid,
    /// The status list marks the token SUSPENDED (2).
    Suspended,
    /// The status list holds a value other than VALID, INVALID or SUSPENDED for the token.
    StatusUnrecognised,
    /// The token's status index lies beyond the status list.
    StatusIndexOutOfRange,
    /// The issuer publishes a status list and the token references none
    /// (`status.status_list` absent), so its revocation cannot be checked. Internally
    /// distinct from [`TokenError::MissingClaim`] for the audit trail and the counters.
    StatusMissing,
    /// The token's status-list `uri` is not under the issuer's configured `uri_prefix`, or
    /// the issuer has no status list configured.
    StatusUriNotAllowed,
    /// No usable status list for the token is known (never fetched, or stale beyond the
    /// configured staleness): the request is refused, fail closed.
    StatusListUnavailable,
    /// A fetched status-list token is not acceptable (`typ`, `sub`, `iss`, `iat`, `ttl`,
    /// `bits`, `lst`, or stale on arrival). Signature and shape problems of the
    /// status-list JWT report as the JWS variants above.
    StatusListInvalid,
    /// The status list decompresses beyond the configured `max_bytes`.
    StatusListTooLarge,

    // ---- sender binding -------------------------------------------------------------------
    /// The token is certificate-bound (`cnf.x5t#S256`) and the peer presented no
    /// certificate or another one, or binding is required and the token is not bound.
    Unbound,
    /// The token's `cnf` uses a confirmation method this verifier does not support (e.g.
    /// DPoP's `jkt`), so the binding cannot be checked.
    UnsupportedConfirmation,
    /// The peer certificate cannot serve as an identity: not parseable, or it has no URI
    /// SAN, or two or more (Envoy reports only the first, so such a certificate is refused).
    PeerCertificateInvalid,
    /// The peer's SPIFFE ID is not the token's grantee.
    GranteeMismatch,
}

/// What a client may learn about a refusal: the masked categories of the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorClass {
    /// 401: no token.
    Missing,
    /// 401: a token that is not acceptable, for any reason but expiry.
    Invalid,
    /// 401: the token's lifetime is over.
    Expired,
    /// 403: the consent was revoked by its issuer.
    Revoked,
    /// 403: the consent is suspended by its issuer.
    Suspended,
    /// 401: the token is bound to another client (or must be bound and is not), RFC 8705
    /// §3's `invalid_token`.
    Unbound,
    /// 503: keys or the status list are unknown, so no decision can be made.
    Unavailable,
}

impl ErrorClass {
    /// The HTTP status the class is answered with.
    pub fn status(self) -> u16 {
        match self {
            ErrorClass::Missing
            | ErrorClass::Invalid
            | ErrorClass::Expired
            | ErrorClass::Unbound => 401,
            ErrorClass::Revoked | ErrorClass::Suspended => 403,
            ErrorClass::Unavailable => 503,
        }
    }

    /// The masked problem code the class is answered with.
    pub fn code(self) -> Code {
        match self {
            ErrorClass::Missing => Code::TokenMissing,
            ErrorClass::Invalid => Code::TokenInvalid,
            ErrorClass::Expired => Code::TokenExpired,
            ErrorClass::Revoked => Code::ConsentRevoked,
            ErrorClass::Suspended => Code::ConsentSuspended,
            ErrorClass::Unbound => Code::TokenUnbound,
            ErrorClass::Unavailable => Code::DependencyUnavailable,
        }
    }
}

impl TokenError {
    /// The one mapping from an internal reason to what the client may learn.
    pub fn class(self) -> ErrorClass {
        use TokenError::*;
        match self {
            Missing => ErrorClass::Missing,
            Expired => ErrorClass::Expired,
            Revoked | StatusInvalid | StatusUnrecognised => ErrorClass::Revoked,
            Suspended => ErrorClass::Suspended,
            Unbound | UnsupportedConfirmation | PeerCertificateInvalid | GranteeMismatch => {
                ErrorClass::Unbound
            }
            KeysUnavailable | StatusListUnavailable | StatusListInvalid | StatusListTooLarge => {
                ErrorClass::Unavailable
            }
            TooLarge
            | Malformed
            | Encrypted
            | BadEncoding
            | BadJson
            | DuplicateMember
            | BadHeader
            | UnsupportedCritical
            | ForbiddenHeader
            | AlgorithmNotAllowed
            | WrongType
            | UnknownIssuer
            | UnknownKid
            | KeyMismatch
            | MalformedSignature
            | BadSignature
            | NotYetValid
            | IssuedInFuture
            | LifetimeTooLong
            | MissingClaim
            | InvalidClaim
            | AudienceMismatch
            | UnknownAuthorizationDetailsType
            | StatusMissing
            | StatusIndexOutOfRange
            | StatusUriNotAllowed => ErrorClass::Invalid,
        }
    }

    /// The masked problem code for this refusal (shorthand for `self.class().code()`).
    pub fn code(self) -> Code {
        self.class().code()
    }

    /// True when the refusal should trigger a (rate-limited) refetch of the issuer's remote
    /// JWKS: the token names a key the issuer may have rotated in since the last fetch, or
    /// the issuer has no keys yet.
    pub fn needs_key_refetch(self) -> bool {
        matches!(self, TokenError::UnknownKid | TokenError::KeysUnavailable)
    }

    /// A stable snake_case name for logs and metrics (never shown to the client).
    pub fn as_str(self) -> &'static str {
        use TokenError::*;
        match self {
            Missing => "missing",
            TooLarge => "too_large",
            Malformed => "malformed",
            Encrypted => "encrypted",
            BadEncoding => "bad_encoding",
            BadJson => "bad_json",
            DuplicateMember => "duplicate_member",
            BadHeader => "bad_header",
            UnsupportedCritical => "unsupported_critical",
            ForbiddenHeader => "forbidden_header",
            AlgorithmNotAllowed => "algorithm_not_allowed",
            WrongType => "wrong_type",
            UnknownIssuer => "unknown_issuer",
            UnknownKid => "unknown_kid",
            KeyMismatch => "key_mismatch",
            KeysUnavailable => "keys_unavailable",
            MalformedSignature => "malformed_signature",
            BadSignature => "bad_signature",
            Expired => "expired",
            NotYetValid => "not_yet_valid",
            IssuedInFuture => "issued_in_future",
            LifetimeTooLong => "lifetime_too_long",
            MissingClaim => "missing_claim",
            InvalidClaim => "invalid_claim",
            AudienceMismatch => "audience_mismatch",
            UnknownAuthorizationDetailsType => "unknown_authorization_details_type",
            Revoked => "revoked",
            StatusInvalid => "status_invalid",
            Suspended => "suspended",
            StatusUnrecognised => "status_unrecognised",
            StatusMissing => "status_missing",
            StatusIndexOutOfRange => "status_index_out_of_range",
            StatusUriNotAllowed => "status_uri_not_allowed",
            StatusListUnavailable => "status_list_unavailable",
            StatusListInvalid => "status_list_invalid",
            StatusListTooLarge => "status_list_too_large",
            Unbound => "unbound",
            UnsupportedConfirmation => "unsupported_confirmation",
            PeerCertificateInvalid => "peer_certificate_invalid",
            GranteeMismatch => "grantee_mismatch",
        }
    }
}

impl fmt::Display for TokenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use TokenError::*;
        // Generic on purpose: no value from the token, the keys or the peer ever appears.
        let text = match self {
            Missing => "no consent token",
            TooLarge => "consent token exceeds the size limit",
            Malformed => "consent token is not a compact JWS",
            Encrypted => "encrypted consent tokens are not accepted",
            BadEncoding => "consent token part is not strict base64url",
            BadJson => "consent token header or payload is not a JSON object",
            DuplicateMember => "consent token repeats a JSON member name",
            BadHeader => "consent token header has an unsupported member value",
            UnsupportedCritical => "consent token header has a critical extension",
            ForbiddenHeader => "consent token header carries or points to a key",
            AlgorithmNotAllowed => "consent token algorithm is not allowed for its issuer",
            WrongType => "consent token type is not the expected one",
            UnknownIssuer => "consent token issuer is not configured",
            UnknownKid => "consent token key id is unknown",
            KeyMismatch => "consent token key cannot verify its algorithm",
            KeysUnavailable => "issuer keys are not available",
            MalformedSignature => "consent token signature is malformed",
            BadSignature => "consent token signature does not verify",
            Expired => "consent token is expired",
            NotYetValid => "consent token is not yet valid",
            IssuedInFuture => "consent token is issued in the future",
            LifetimeTooLong => "consent token lifetime exceeds the maximum",
            MissingClaim => "consent token lacks a required claim",
            InvalidClaim => "consent token claim has an invalid type or shape",
            AudienceMismatch => "consent token audience is not accepted",
            UnknownAuthorizationDetailsType => {
                "consent token authorization details type is not accepted"
            }
            Revoked => "consent is revoked",
            StatusInvalid => "consent status is invalid",
            Suspended => "consent is suspended",
            StatusUnrecognised => "consent status value is not recognised",
            StatusMissing => "consent token has no status list reference",
            StatusIndexOutOfRange => "consent status index is outside the status list",
            StatusUriNotAllowed => "consent status list location is not allowed",
            StatusListUnavailable => "consent status list is not available",
            StatusListInvalid => "status list token is not acceptable",
            StatusListTooLarge => "status list exceeds the size limit",
            Unbound => "consent token is not bound to the presenting client",
            UnsupportedConfirmation => "consent token confirmation method is not supported",
            PeerCertificateInvalid => "peer certificate cannot identify the client",
            GranteeMismatch => "peer identity is not the consent grantee",
        };
        f.write_str(text)
    }
}

impl std::error::Error for TokenError {}

/// Why a JWKS document (or one key in it) was refused. `location` is a path inside the
/// document, e.g. `keys[2].x`; `reason` is generic and never quotes a value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwksError {
    /// Where in the document, e.g. `keys[2].x` (empty for the whole document).
    pub location: String,
    /// What is wrong, e.g. `not a point on P-256`.
    pub reason: &'static str,
}

impl JwksError {
    pub(crate) fn new(location: impl Into<String>, reason: &'static str) -> Self {
        Self {
            location: location.into(),
            reason,
        }
    }
}

impl fmt::Display for JwksError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.location.is_empty() {
            f.write_str(self.reason)
        } else {
            write!(f, "{}: {}", self.location, self.reason)
        }
    }
}

impl std::error::Error for JwksError {}
