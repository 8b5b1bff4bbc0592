//! Sender binding (RFC 8705) and the peer's SPIFFE ID.
//!
//! Envoy describes the TLS peer with `connection.sha256_peer_certificate_digest` (64
//! lowercase hex characters) and `connection.peer_certificate` (the PEM text). A token
//! with `cnf.x5t#S256` (base64url of the same SHA-256) passes only when the two digests
//! are equal, compared in constant time.
//!
//! Envoy's `connection.uri_san_peer_certificate` reports only the *first* URI SAN, so a
//! certificate with two could pass as either identity. The SPIFFE ID is therefore read
//! here from the certificate itself, with a small DER reader that walks to the
//! SubjectAltName extension, and a certificate with no URI SAN, or with two or more, is
//! refused.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::claims::Consent;
use super::config::Binding;
use super::error::TokenError;

/// Largest PEM text accepted for a peer certificate.
pub const MAX_PEM_BYTES: usize = 64 * 1024;

const PEM_BEGIN: &str = "-----BEGIN CERTIFICATE-----";
const PEM_END: &str = "-----END CERTIFICATE-----";

/// What the proxy knows of the TLS peer. Both parts are optional: no client certificate
/// means both `None`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Peer<'a> {
    /// `connection.sha256_peer_certificate_digest`: 64 hex characters.
    pub sha256_hex: Option<&'a str>,
    /// `connection.peer_certificate`: the leaf certificate in PEM.
    pub certificate_pem: Option<&'a str>,
}

/// Checks the token's sender binding and, if configured, that the peer's SPIFFE ID is the
/// grantee.
pub fn check_binding(
    consent: &Consent,
    binding: &Binding,
    peer: &Peer<'_>,
) -> Result<(), TokenError> {
    match consent.cnf_x5t_s256 {
        Some(expected) => {
            let actual = peer_digest(peer)?.ok_or(TokenError::Unbound)?;
            if !bool::from(actual.ct_eq(&expected)) {
                return Err(TokenError::Unbound);
            }
        }
        None if binding.require_certificate_binding => return Err(TokenError::Unbound),
        None => {}
    }
    if binding.require_spiffe_grantee {
        let pem = peer.certificate_pem.ok_or(TokenError::Unbound)?;
        let id = spiffe_id_from_pem(pem)?;
        if consent.grantee.as_deref() != Some(id.as_str()) {
            return Err(TokenError::GranteeMismatch);
        }
    }
    Ok(())
}

/// The peer certificate's SHA-256: from Envoy's hex digest when given, else computed from
/// the PEM.
fn peer_digest(peer: &Peer<'_>) -> Result<Option<[u8; 32]>, TokenError> {
    if let Some(hex) = peer.sha256_hex {
        return hex_digest(hex).map(Some).ok_or(TokenError::Unbound);
    }
    match peer.certificate_pem {
        Some(pem) => Ok(Some(Sha256::digest(pem_to_der(pem)?).into())),
        None => Ok(None),
    }
}

/// 64 hex digits (either case) to 32 bytes.
pub fn hex_digest(hex: &str) -> Option<[u8; 32]> {
    fn nibble(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            b'A'..=b'F' => Some(c - b'A' + 10),
            _ => None,
        }
    }
    let bytes = hex.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (o, pair) in out.iter_mut().zip(bytes.chunks_exact(2)) {
        let [hi, lo] = pair else { return None };
        *o = (nibble(*hi)? << 4) | nibble(*lo)?;
    }
    Some(out)
}

/// The first certificate of a PEM text, as DER.
pub fn pem_to_der(pem: &str) -> Result<Vec<u8>, TokenError> {
    if pem.len() > MAX_PEM_BYTES {
        return Err(TokenError::PeerCertificateInvalid);
    }
    let start = pem
        .find(PEM_BEGIN)
        .ok_or(TokenError::PeerCertificateInvalid)?
        + PEM_BEGIN.len();
    let body = pem.get(start..).ok_or(TokenError::PeerCertificateInvalid)?;
    let end = body
        .find(PEM_END)
        .ok_or(TokenError::PeerCertificateInvalid)?;
    let b64: Vec<u8> = body
        .get(..end)
        .ok_or(TokenError::PeerCertificateInvalid)?
        .bytes()
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    STANDARD
        .decode(b64)
        .map_err(|_| TokenError::PeerCertificateInvalid)
}

/// The SPIFFE ID of a PEM certificate: its one URI SAN, which must be a `spiffe://` URI.
/// No URI SAN, two or more, or an unparseable certificate is
/// [`TokenError::PeerCertificateInvalid`].
pub fn spiffe_id_from_pem(pem: &str) -> Result<String, TokenError> {
    let der = pem_to_der(pem)?;
    let mut uris = uri_sans(&der).ok_or(TokenError::PeerCertificateInvalid)?;
    if uris.len() != 1 {
        return Err(TokenError::PeerCertificateInvalid);
    }
    let uri = uris.pop().ok_or(TokenError::PeerCertificateInvalid)?;
    if !uri.starts_with("spiffe://") {
        return Err(TokenError::PeerCertificateInvalid);
    }
    Ok(uri)
}

// ---------------------------------------------------------------------------------------
// A minimal DER reader: enough X.509 to reach the SubjectAltName extension.

const SEQUENCE: u8 = 0x30;
const OID: u8 = 0x06;
const BOOLEAN: u8 = 0x01;
const OCTET_STRING: u8 = 0x04;
/// `[0] EXPLICIT` version, `[3] EXPLICIT` extensions (constructed, context-specific).
const CTX_0: u8 = 0xa0;
const CTX_3: u8 = 0xa3;
/// `uniformResourceIdentifier [6] IMPLICIT IA5String`.
const GENERAL_NAME_URI: u8 = 0x86;
/// id-ce-subjectAltName, 2.5.29.17.
const SAN_OID: [u8; 3] = [0x55, 0x1d, 0x11];

/// A cursor over DER bytes that never reads out of bounds.
struct Der<'a> {
    rest: &'a [u8],
}

impl<'a> Der<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Self { rest: bytes }
    }

    fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }

    fn peek_tag(&self) -> Option<u8> {
        self.rest.first().copied()
    }

    /// Reads one TLV with a low-number tag and a definite length.
    fn read(&mut self) -> Option<(u8, &'a [u8])> {
        let (&tag, rest) = self.rest.split_first()?;
        if tag & 0x1f == 0x1f {
            return None; // high tag numbers do not occur in what we read
        }
        let (&first, mut rest) = rest.split_first()?;
        let len = if first < 0x80 {
            usize::from(first)
        } else {
            let n = usize::from(first & 0x7f);
            if n == 0 || n > 4 {
                return None; // indefinite or absurd length
            }
            let (len_bytes, r) = rest.split_at_checked(n)?;
            rest = r;
            len_bytes
                .iter()
                .fold(0usize, |acc, b| (acc << 8) | usize::from(*b))
        };
        let (value, rest) = rest.split_at_checked(len)?;
        self.rest = rest;
        Some((tag, value))
    }

    fn expect(&mut self, tag: u8) -> Option<&'a [u8]> {
        match self.read()? {
            (t, v) if t == tag => Some(v),
            _ => None,
        }
    }
}

/// Every URI SAN of a DER certificate, in order; `None` when the certificate cannot be
/// read or repeats the SubjectAltName extension.
fn uri_sans(cert: &[u8]) -> Option<Vec<String>> {
    let mut outer = Der::new(cert);
    let mut certificate = Der::new(outer.expect(SEQUENCE)?);
    let mut tbs = Der::new(certificate.expect(SEQUENCE)?);
    if tbs.peek_tag() == Some(CTX_0) {
        tbs.read()?; // version
    }
    // serialNumber, signature, issuer, validity, subject, subjectPublicKeyInfo
    for _ in 0..6 {
        tbs.read()?;
    }
    let mut uris = Vec::new();
    let mut seen_san = false;
    while !tbs.is_empty() {
        let (tag, value) = tbs.read()?;
        if tag != CTX_3 {
            continue; // issuerUniqueID [1], subjectUniqueID [2]
        }
        let mut extensions = Der::new(Der::new(value).expect(SEQUENCE)?);
        while !extensions.is_empty() {
            let mut ext = Der::new(extensions.expect(SEQUENCE)?);
            let oid = ext.expect(OID)?;
            if ext.peek_tag() == Some(BOOLEAN) {
                ext.read()?; // critical
            }
            let value = ext.expect(OCTET_STRING)?;
            if oid != SAN_OID {
                continue;
            }
            if seen_san {
                return None;
            }
            seen_san = true;
            let mut names = Der::new(Der::new(value).expect(SEQUENCE)?);
            while !names.is_empty() {
                let (tag, name) = names.read()?;
                if tag == GENERAL_NAME_URI {
                    uris.push(String::from_utf8(name.to_vec()).ok()?);
                }
            }
        }
    }
    Some(uris)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_digests_decode_strictly() {
        let hex = "b6175306762ecc558bc514f2168c2293b3ae5f9599dbfd78f80a719ec601a1f0";
        let d = hex_digest(hex).unwrap();
        assert_eq!(d[0], 0xb6);
        assert_eq!(d[31], 0xf0);
        assert_eq!(hex_digest(&hex.to_uppercase()), Some(d));
        assert_eq!(hex_digest(&hex[1..]), None);
        assert_eq!(hex_digest(&format!("{}g", &hex[1..])), None);
    }

    #[test]
    fn the_der_reader_refuses_what_it_cannot_bound() {
        assert_eq!(
            Der::new(&[0x30, 0x80, 0x00, 0x00]).read(),
            None,
            "indefinite length"
        );
        assert_eq!(
            Der::new(&[0x30, 0x05, 0x00]).read(),
            None,
            "longer than the input"
        );
        assert_eq!(
            Der::new(&[0x1f, 0x01, 0x00]).read(),
            None,
            "high tag number"
        );
        assert_eq!(
            Der::new(&[0x30, 0x85, 1, 1, 1, 1, 1]).read(),
            None,
            "5-byte length"
        );
        assert_eq!(
            Der::new(&[0x04, 0x81, 0x01, 0xaa]).read(),
            Some((0x04, &[0xaa][..]))
        );
        assert_eq!(uri_sans(&[]), None);
        assert_eq!(uri_sans(&[0x30, 0x00]), None);
    }

    #[test]
    fn pem_without_a_certificate_is_refused() {
        assert_eq!(pem_to_der("hello"), Err(TokenError::PeerCertificateInvalid));
        assert_eq!(
            pem_to_der("-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n"),
            Err(TokenError::PeerCertificateInvalid)
        );
    }
}
