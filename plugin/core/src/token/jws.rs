//! Strict compact JWS parsing (RFC 7515 §7.1): three unpadded base64url parts, a JSON object
//! header and payload without repeated names, and a header that names no key source and no
//! critical extension. Nothing here looks at keys or claims' meaning; that comes after.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Map, Value};

use super::error::TokenError;
use super::json::{JsonError, parse_object};

/// Default bound on a token's length, in bytes.
pub const DEFAULT_MAX_TOKEN_BYTES: usize = 8 * 1024;

/// Longest `kid` accepted (it is only ever compared, never used as a path or a query).
pub(crate) const MAX_KID_BYTES: usize = 256;

/// Header members that carry or point to keys. Keys come from configuration only, so a
/// token that brings its own is refused whatever else it carries.
const KEY_SOURCE_MEMBERS: [&str; 4] = ["jku", "jwk", "x5u", "x5c"];

/// Header members of JWE or of extensions that must be listed in `crit`.
const UNSUPPORTED_MEMBERS: [&str; 5] = ["enc", "zip", "epk", "apu", "apv"];

/// The header members the verifier uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Header {
    pub alg: String,
    pub kid: Option<String>,
    pub typ: Option<String>,
}

/// A parsed, not yet verified, compact JWS.
#[derive(Debug)]
pub(crate) struct Jws<'a> {
    /// `BASE64URL(header) '.' BASE64URL(payload)`: the bytes the signature covers.
    pub signing_input: &'a [u8],
    pub header: Header,
    pub claims: Map<String, Value>,
    /// Decoded signature; may be empty (refused once `alg` is known to be acceptable).
    pub signature: Vec<u8>,
}

/// Splits and decodes a compact JWS, refusing every shape but the strict one.
pub(crate) fn parse(token: &[u8], max_len: usize) -> Result<Jws<'_>, TokenError> {
    if token.is_empty() {
        return Err(TokenError::Missing);
    }
    if token.len() > max_len {
        return Err(TokenError::TooLarge);
    }
    // A byte-order mark, a JSON serialization (`{...}`), whitespace and anything else
    // outside base64url and the separator are refused before any decoding.
    if !token
        .iter()
        .all(|&b| is_b64url(b) || b == b'.' || is_b64_only(b))
    {
        return Err(TokenError::Malformed);
    }
    let mut parts = token.split(|&b| b == b'.');
    let (Some(h), Some(p), Some(s)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(TokenError::Malformed);
    };
    match parts.count() {
        0 => {}
        2 => return Err(TokenError::Encrypted),
        _ => return Err(TokenError::Malformed),
    }
    if h.is_empty() || p.is_empty() {
        return Err(TokenError::Malformed);
    }
    let signing_input = token
        .get(..h.len() + 1 + p.len())
        .ok_or(TokenError::Malformed)?;

    let header = parse_header(&decode(h)?)?;
    let claims = parse_object(&decode(p)?).map_err(json_error)?;
    let signature = decode(s)?;
    Ok(Jws {
        signing_input,
        header,
        claims,
        signature,
    })
}

fn parse_header(bytes: &[u8]) -> Result<Header, TokenError> {
    let obj = parse_object(bytes).map_err(json_error)?;
    if KEY_SOURCE_MEMBERS.iter().any(|m| obj.contains_key(*m)) {
        return Err(TokenError::ForbiddenHeader);
    }
    // `b64` (RFC 7797) is only meaningful when listed in `crit`; either way it is refused.
    if obj.contains_key("crit") || obj.contains_key("b64") {
        return Err(TokenError::UnsupportedCritical);
    }
    if UNSUPPORTED_MEMBERS.iter().any(|m| obj.contains_key(*m)) {
        return Err(TokenError::BadHeader);
    }
    let alg = match obj.get("alg") {
        Some(Value::String(s)) => s.clone(),
        _ => return Err(TokenError::BadHeader),
    };
    let kid = optional_string(&obj, "kid")?;
    if kid.as_ref().is_some_and(|k| k.len() > MAX_KID_BYTES) {
        return Err(TokenError::BadHeader);
    }
    let typ = optional_string(&obj, "typ")?;
    // A nested JWT (`cty: JWT`) would put the real claims one signature further in.
    if let Some(cty) = optional_string(&obj, "cty")?
        && media_type_eq(&cty, "jwt")
    {
        return Err(TokenError::BadHeader);
    }
    Ok(Header { alg, kid, typ })
}

fn optional_string(obj: &Map<String, Value>, name: &str) -> Result<Option<String>, TokenError> {
    match obj.get(name) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(TokenError::BadHeader),
    }
}

fn json_error(e: JsonError) -> TokenError {
    match e {
        JsonError::Invalid => TokenError::BadJson,
        JsonError::Duplicate => TokenError::DuplicateMember,
    }
}

/// Strict unpadded base64url: no `=`, no `+` or `/`, no whitespace, canonical final bits.
pub(crate) fn decode(part: &[u8]) -> Result<Vec<u8>, TokenError> {
    URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| TokenError::BadEncoding)
}

/// Unpadded base64url encoding.
pub(crate) fn encode(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn is_b64url(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
}

/// Bytes of standard base64 that base64url does not use: let them through to the decoder,
/// which reports them as an encoding error rather than as a foreign serialization.
fn is_b64_only(b: u8) -> bool {
    b == b'+' || b == b'/' || b == b'='
}

/// Compares a JOSE media type (`typ`, `cty`) with an expected one as RFC 7515 §4.1.9 says:
/// case-insensitively, with the `application/` prefix optional on either side.
pub fn media_type_eq(value: &str, expected: &str) -> bool {
    fn strip(s: &str) -> &str {
        match s.get(..12) {
            Some(p) if p.eq_ignore_ascii_case("application/") => s.get(12..).unwrap_or(""),
            _ => s,
        }
    }
    strip(value).eq_ignore_ascii_case(strip(expected))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tok(header: &str, payload: &str, sig: &[u8]) -> String {
        format!(
            "{}.{}.{}",
            encode(header.as_bytes()),
            encode(payload.as_bytes()),
            encode(sig)
        )
    }

    #[test]
    fn a_plain_token_parses() {
        let t = tok(
            r#"{"alg":"ES256","kid":"k","typ":"at+jwt"}"#,
            r#"{"a":1}"#,
            &[1; 64],
        );
        let jws = parse(t.as_bytes(), DEFAULT_MAX_TOKEN_BYTES).unwrap();
        assert_eq!(jws.header.alg, "ES256");
        assert_eq!(jws.header.kid.as_deref(), Some("k"));
        assert_eq!(jws.signature.len(), 64);
        assert_eq!(jws.signing_input, t.rsplit_once('.').unwrap().0.as_bytes());
    }

    #[test]
    fn shapes_other_than_three_parts_are_refused() {
        let good = tok(r#"{"alg":"ES256"}"#, "{}", &[1; 64]);
        assert_eq!(parse(b"", 100).unwrap_err(), TokenError::Missing);
        assert_eq!(parse(b"a.b", 100).unwrap_err(), TokenError::Malformed);
        assert_eq!(parse(b"a.b.c.d", 100).unwrap_err(), TokenError::Malformed);
        assert_eq!(parse(b"a.b.c.d.e", 100).unwrap_err(), TokenError::Encrypted);
        assert_eq!(
            parse(b"a.b.c.d.e.f", 100).unwrap_err(),
            TokenError::Malformed
        );
        assert_eq!(parse(b".e30.AA", 100).unwrap_err(), TokenError::Malformed);
        assert_eq!(parse(b"e30..AA", 100).unwrap_err(), TokenError::Malformed);
        assert_eq!(
            parse(good.as_bytes(), good.len() - 1).unwrap_err(),
            TokenError::TooLarge
        );
        let bom = [b"\xEF\xBB\xBF".as_slice(), good.as_bytes()].concat();
        assert_eq!(parse(&bom, 1000).unwrap_err(), TokenError::Malformed);
        let spaced = format!(" {good}");
        assert_eq!(
            parse(spaced.as_bytes(), 1000).unwrap_err(),
            TokenError::Malformed
        );
        let json = br#"{"payload":"e30","protected":"eyJhbGciOiJFUzI1NiJ9","signature":"AA"}"#;
        assert_eq!(parse(json, 1000).unwrap_err(), TokenError::Malformed);
    }

    #[test]
    fn only_strict_base64url_decodes() {
        assert_eq!(decode(b"AQAB").unwrap(), vec![1, 0, 1]);
        for bad in [&b"AQAB="[..], b"AQ==", b"A+_B", b"A/_B", b"AR", b"A"] {
            assert_eq!(decode(bad).unwrap_err(), TokenError::BadEncoding, "{bad:?}");
        }
    }

    #[test]
    fn header_members_that_bring_keys_or_extensions_are_refused() {
        for (h, e) in [
            (
                r#"{"alg":"ES256","jku":"https://evil.example/jwks"}"#,
                TokenError::ForbiddenHeader,
            ),
            (
                r#"{"alg":"ES256","x5u":"https://evil.example/c"}"#,
                TokenError::ForbiddenHeader,
            ),
            (
                r#"{"alg":"ES256","jwk":{"kty":"EC"}}"#,
                TokenError::ForbiddenHeader,
            ),
            (
                r#"{"alg":"ES256","x5c":["MII"]}"#,
                TokenError::ForbiddenHeader,
            ),
            (
                r#"{"alg":"ES256","crit":["exp"],"exp":1}"#,
                TokenError::UnsupportedCritical,
            ),
            (
                r#"{"alg":"ES256","b64":false}"#,
                TokenError::UnsupportedCritical,
            ),
            (r#"{"alg":"ES256","enc":"A256GCM"}"#, TokenError::BadHeader),
            (r#"{"alg":"ES256","cty":"JWT"}"#, TokenError::BadHeader),
            (r#"{"alg":"ES256","kid":7}"#, TokenError::BadHeader),
            (r#"{"alg":null}"#, TokenError::BadHeader),
            (r#"{"kid":"k"}"#, TokenError::BadHeader),
            (
                r#"{"alg":"ES256","alg":"none"}"#,
                TokenError::DuplicateMember,
            ),
            ("[1]", TokenError::BadJson),
        ] {
            let t = tok(h, "{}", &[1; 64]);
            assert_eq!(parse(t.as_bytes(), 4096).unwrap_err(), e, "{h}");
        }
        let long_kid = format!(
            r#"{{"alg":"ES256","kid":"{}"}}"#,
            "k".repeat(MAX_KID_BYTES + 1)
        );
        let t = tok(&long_kid, "{}", &[1; 64]);
        assert_eq!(
            parse(t.as_bytes(), 4096).unwrap_err(),
            TokenError::BadHeader
        );
    }

    #[test]
    fn media_types_compare_as_rfc_7515_says() {
        assert!(media_type_eq("at+jwt", "at+jwt"));
        assert!(media_type_eq("application/at+jwt", "at+jwt"));
        assert!(media_type_eq("at+JWT", "application/AT+jwt"));
        assert!(media_type_eq("Application/at+jwt", "at+jwt"));
        assert!(!media_type_eq("jwt", "at+jwt"));
        assert!(!media_type_eq("application/", "at+jwt"));
        assert!(!media_type_eq("text/at+jwt", "at+jwt"));
    }
}
