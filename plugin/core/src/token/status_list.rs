//! IETF OAuth Token Status List (draft-ietf-oauth-status-list-20), JWT form.
//!
//! A status-list token is a JWT with `typ: statuslist+jwt`, signed with the issuer's keys,
//! whose `sub` is the list's URI and whose `status_list` claim holds `bits` (1, 2, 4 or 8
//! bits per token) and `lst`: base64url of the zlib-wrapped DEFLATE of the packed statuses,
//! least significant bits first. A token points into it with `status.status_list
//! {idx, uri}`.
//!
//! A decoded list is usable until `exp` or `iat + ttl`, whichever is sooner, plus the
//! issuer's configured staleness; after that, and before the first fetch, tokens that
//! reference it are refused ([`TokenError::StatusListUnavailable`], fail closed).
//! [`StatusList::to_bytes`] gives a compact form for the proxy's shared data, so one
//! worker's fetch serves them all.

use miniz_oxide::inflate::decompress_to_vec_zlib_with_limit;
use serde_json::Value;

use super::config::Issuer;
use super::error::TokenError;
use super::keys::KeySet;
use super::{jws, verify_signature};

/// Status value: the token is valid.
pub const VALID: u8 = 0;
/// Status value: the token is revoked (invalid for good).
pub const INVALID: u8 = 1;
/// Status value: the token is suspended (may become valid again).
pub const SUSPENDED: u8 = 2;

/// The `typ` a status-list token must carry.
pub const STATUS_LIST_TYP: &str = "statuslist+jwt";

const MAGIC: &[u8; 4] = b"CSL1";

/// A decoded, verified status list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusList {
    uri: String,
    bits: u8,
    statuses: Vec<u8>,
    issued_at: u64,
    /// `min(exp, iat + ttl)`; `iat` when the token has neither.
    fresh_until: u64,
}

impl StatusList {
    /// Verifies a status-list JWT with `issuer`'s keys and algorithms and decodes it: `typ`
    /// must be `statuslist+jwt`, `sub` must equal `expected_uri`, `iss` (when present) the
    /// issuer, `iat` is required and not in the future (beyond the issuer's clock skew),
    /// `exp` and `ttl` are optional; the list is usable at `now` or it is refused. Both the
    /// JWT and the decompressed list are bounded by the issuer's `status_list.max_bytes`.
    ///
    /// Errors describe the status-list token (a bad signature reports as
    /// [`TokenError::BadSignature`]); requests that need the list meanwhile are refused
    /// with [`TokenError::StatusListUnavailable`].
    pub fn from_jwt(
        jwt: &[u8],
        issuer: &Issuer,
        keys: &KeySet,
        expected_uri: &str,
        now: u64,
    ) -> Result<StatusList, TokenError> {
        let Some(source) = &issuer.revocation.status_list else {
            return Err(TokenError::StatusUriNotAllowed);
        };
        let max_bytes = source.max_bytes;
        let parsed = jws::parse(jwt.trim_ascii(), max_bytes)?;
        if !parsed
            .header
            .typ
            .as_deref()
            .is_some_and(|t| jws::media_type_eq(t, STATUS_LIST_TYP))
        {
            return Err(TokenError::WrongType);
        }
        verify_signature(&parsed, issuer, keys)?;

        let claims = &parsed.claims;
        if claims.get("sub").and_then(Value::as_str) != Some(expected_uri) {
            return Err(TokenError::StatusListInvalid);
        }
        match claims.get("iss") {
            None => {}
            Some(Value::String(s)) if *s == issuer.issuer => {}
            Some(_) => return Err(TokenError::StatusListInvalid),
        }
        let int = |name: &str| -> Result<Option<u64>, TokenError> {
            match claims.get(name) {
                None => Ok(None),
                Some(v) => v.as_u64().map(Some).ok_or(TokenError::StatusListInvalid),
            }
        };
        let iat = int("iat")?.ok_or(TokenError::StatusListInvalid)?;
        let exp = int("exp")?;
        let ttl = int("ttl")?;
        if iat > now.saturating_add(issuer.clock_skew_seconds) {
            return Err(TokenError::StatusListInvalid);
        }
        let mut fresh_until = exp.unwrap_or(u64::MAX);
        if let Some(ttl) = ttl {
            fresh_until = fresh_until.min(iat.saturating_add(ttl));
        }
        if exp.is_none() && ttl.is_none() {
            fresh_until = iat;
        }

        let Some(Value::Object(list)) = claims.get("status_list") else {
            return Err(TokenError::StatusListInvalid);
        };
        let bits = list
            .get("bits")
            .and_then(Value::as_u64)
            .ok_or(TokenError::StatusListInvalid)?;
        let Some(Value::String(lst)) = list.get("lst") else {
            return Err(TokenError::StatusListInvalid);
        };
        let mut decoded = StatusList::decode(bits, lst, max_bytes)?;
        decoded.uri = expected_uri.to_owned();
        decoded.issued_at = iat;
        decoded.fresh_until = fresh_until;
        if !decoded.is_usable(now, source.max_staleness_seconds) {
            return Err(TokenError::StatusListInvalid);
        }
        Ok(decoded)
    }

    /// Decodes a `status_list` claim's `bits` and `lst` alone (no token, no freshness:
    /// the result is fresh only at time 0). The decompressed list is bounded by
    /// `max_bytes`.
    pub fn decode(bits: u64, lst: &str, max_bytes: usize) -> Result<StatusList, TokenError> {
        let bits = match bits {
            1 | 2 | 4 | 8 => bits as u8,
            _ => return Err(TokenError::StatusListInvalid),
        };
        let compressed = jws::decode(lst.as_bytes()).map_err(|_| TokenError::StatusListInvalid)?;
        let statuses = decompress_to_vec_zlib_with_limit(&compressed, max_bytes).map_err(|e| {
            match e.status {
                miniz_oxide::inflate::TINFLStatus::HasMoreOutput => TokenError::StatusListTooLarge,
                _ => TokenError::StatusListInvalid,
            }
        })?;
        if statuses.is_empty() {
            return Err(TokenError::StatusListInvalid);
        }
        Ok(StatusList {
            uri: String::new(),
            bits,
            statuses,
            issued_at: 0,
            fresh_until: 0,
        })
    }

    /// The list's URI (the `sub` of its token).
    pub fn uri(&self) -> &str {
        &self.uri
    }

    /// Bits per status: 1, 2, 4 or 8.
    pub fn bits(&self) -> u8 {
        self.bits
    }

    /// Number of statuses in the list.
    pub fn len(&self) -> u64 {
        (self.statuses.len() as u64) * 8 / u64::from(self.bits)
    }

    /// True when the list holds no status (never, once decoded).
    pub fn is_empty(&self) -> bool {
        self.statuses.is_empty()
    }

    /// `iat` of the status-list token.
    pub fn issued_at(&self) -> u64 {
        self.issued_at
    }

    /// `min(exp, iat + ttl)` of the status-list token (its `iat` when it has neither):
    /// when to fetch it again.
    pub fn fresh_until(&self) -> u64 {
        self.fresh_until
    }

    /// True when the list may still be used at `now`: not past its freshness by more than
    /// `max_staleness` seconds.
    pub fn is_usable(&self, now: u64, max_staleness: u64) -> bool {
        now <= self.fresh_until.saturating_add(max_staleness)
    }

    /// The raw status at `idx`, or `None` beyond the list. Packing is least significant
    /// bits first: status `i` is at bit `(i·bits) mod 8` of byte `(i·bits) / 8`.
    pub fn value(&self, idx: u64) -> Option<u8> {
        let bits = u64::from(self.bits);
        let bit = idx.checked_mul(bits)?;
        let byte = *self.statuses.get(usize::try_from(bit / 8).ok()?)?;
        let mask = ((1u16 << bits) - 1) as u8;
        Some((byte >> (bit % 8)) & mask)
    }

    /// The verdict for index `idx`: VALID passes; INVALID and SUSPENDED refuse with their
    /// own errors; any other value, or an index beyond the list, refuses.
    pub fn status(&self, idx: u64) -> Result<(), TokenError> {
        match self.value(idx) {
            Some(VALID) => Ok(()),
            Some(INVALID) => Err(TokenError::StatusInvalid),
            Some(SUSPENDED) => Err(TokenError::Suspended),
            Some(_) => Err(TokenError::StatusUnrecognised),
            None => Err(TokenError::StatusIndexOutOfRange),
        }
    }

    /// A compact, self-describing encoding for caching (e.g. in the proxy's shared data):
    /// `"CSL1" ‖ bits ‖ iat (u64 BE) ‖ fresh_until (u64 BE) ‖ uri length (u16 BE) ‖ uri ‖
    /// statuses (packed, uncompressed)`.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(4 + 1 + 16 + 2 + self.uri.len() + self.statuses.len());
        out.extend_from_slice(MAGIC);
        out.push(self.bits);
        out.extend_from_slice(&self.issued_at.to_be_bytes());
        out.extend_from_slice(&self.fresh_until.to_be_bytes());
        let uri_len = u16::try_from(self.uri.len()).unwrap_or(0);
        out.extend_from_slice(&uri_len.to_be_bytes());
        out.extend_from_slice(
            self.uri
                .as_bytes()
                .get(..usize::from(uri_len))
                .unwrap_or(&[]),
        );
        out.extend_from_slice(&self.statuses);
        out
    }

    /// Reads [`StatusList::to_bytes`]'s encoding back; `None` when it is not one.
    pub fn from_bytes(bytes: &[u8]) -> Option<StatusList> {
        let rest = bytes.strip_prefix(MAGIC)?;
        let (&bits, rest) = rest.split_first()?;
        if ![1, 2, 4, 8].contains(&bits) {
            return None;
        }
        let (iat, rest) = rest.split_first_chunk::<8>()?;
        let (fresh, rest) = rest.split_first_chunk::<8>()?;
        let (uri_len, rest) = rest.split_first_chunk::<2>()?;
        let (uri, statuses) = rest.split_at_checked(usize::from(u16::from_be_bytes(*uri_len)))?;
        if statuses.is_empty() {
            return None;
        }
        Some(StatusList {
            uri: String::from_utf8(uri.to_vec()).ok()?,
            bits,
            statuses: statuses.to_vec(),
            issued_at: u64::from_be_bytes(*iat),
            fresh_until: u64::from_be_bytes(*fresh),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_drafts_small_example_decodes() {
        // draft-20 §4.1: bits 1, statuses 1 0 0 1 1 1 0 1 | 1 1 0 0 0 1 0 1
        let list = StatusList::decode(1, "eNrbuRgAAhcBXQ", 1024).unwrap();
        let got: Vec<u8> = (0..16).map(|i| list.value(i).unwrap()).collect();
        assert_eq!(got, [1, 0, 0, 1, 1, 1, 0, 1, 1, 1, 0, 0, 0, 1, 0, 1]);
        assert_eq!(list.len(), 16);
        assert_eq!(list.value(16), None);
        assert_eq!(list.status(1), Ok(()));
        assert_eq!(list.status(0), Err(TokenError::StatusInvalid));
        assert_eq!(list.status(16), Err(TokenError::StatusIndexOutOfRange));
        assert_eq!(
            list.status(u64::MAX),
            Err(TokenError::StatusIndexOutOfRange)
        );
    }

    #[test]
    fn bits_outside_the_four_sizes_and_bad_lst_are_refused() {
        for bits in [0, 3, 16] {
            assert_eq!(
                StatusList::decode(bits, "eNrbuRgAAhcBXQ", 1024),
                Err(TokenError::StatusListInvalid)
            );
        }
        assert_eq!(
            StatusList::decode(1, "eNrbuRgAAhcBXQ==", 1024),
            Err(TokenError::StatusListInvalid)
        );
        assert_eq!(
            StatusList::decode(1, "AAAA", 1024),
            Err(TokenError::StatusListInvalid)
        );
        // raw DEFLATE without the zlib wrapper, or with a wrong checksum, is refused
        let zlib = jws::decode(b"eNrbuRgAAhcBXQ").unwrap();
        let raw = &zlib[2..zlib.len() - 4];
        assert_eq!(
            StatusList::decode(1, &jws::encode(raw), 1024),
            Err(TokenError::StatusListInvalid)
        );
        let mut bad_sum = zlib.clone();
        *bad_sum.last_mut().unwrap() ^= 1;
        assert_eq!(
            StatusList::decode(1, &jws::encode(&bad_sum), 1024),
            Err(TokenError::StatusListInvalid)
        );
        assert_eq!(
            StatusList::decode(1, "eNrbuRgAAhcBXQ", 1),
            Err(TokenError::StatusListTooLarge)
        );
    }

    #[test]
    fn compact_bytes_round_trip() {
        let mut list = StatusList::decode(2, "eNo76fITAAPfAgc", 1024).unwrap();
        list.uri = "https://consent.example.com/statuslists/1".into();
        list.issued_at = 10;
        list.fresh_until = 20;
        let bytes = list.to_bytes();
        assert_eq!(StatusList::from_bytes(&bytes), Some(list));
        assert_eq!(
            StatusList::from_bytes(&bytes[..30]),
            None,
            "cut inside the uri"
        );
        assert_eq!(StatusList::from_bytes(b"CSL1"), None);
        assert_eq!(StatusList::from_bytes(b"XXXX\x01"), None);
    }
}
