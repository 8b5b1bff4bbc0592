//! The example consent issuer: its development keys, and the signing of consent tokens
//! and Token Status List tokens.
//!
//! One place for both users: the service signs the status lists it serves with it, and
//! `consentry mint` (in `host-tests`) signs consent tokens with it, so the two always use
//! the same keys and the same status-list encoding. Signing is done by `jsonwebtoken`,
//! an implementation independent of the plugin's own verifier.
//!
//! The keys embedded here are the checked-in DEVELOPMENT keys of `examples/keys/`: their
//! private halves are public, so nothing they sign may ever be trusted outside tests and
//! demos.

use std::fmt;
use std::io::Write as _;
use std::str::FromStr;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use flate2::Compression;
use flate2::write::ZlibEncoder;
use jsonwebtoken::{EncodingKey, Header};
use serde_json::{Value, json};

/// `iss` of the example consent service.
pub const ISSUER: &str = "https://consent.example.com";
/// `aud` of the example hospital API.
pub const AUDIENCE: &str = "https://api.hospital.example";
/// Where the example issuer publishes its status lists: a list's URI is this plus its id.
pub const STATUS_LIST_PREFIX: &str = "https://consent.example.com/statuslists/";

/// The development ES256 issuer key (PKCS#8 PEM), `examples/keys/issuer-es256.pem`.
pub const DEV_KEY_PEM: &[u8] = include_bytes!("../../keys/issuer-es256.pem");
/// `kid` of [`DEV_KEY_PEM`].
pub const DEV_KID: &str = "dev-2026-1";
/// The next development ES256 key, for key-rotation demos, `examples/keys/issuer-es256-next.pem`.
pub const NEXT_KEY_PEM: &[u8] = include_bytes!("../../keys/issuer-es256-next.pem");
/// `kid` of [`NEXT_KEY_PEM`].
pub const NEXT_KID: &str = "dev-2026-2";
/// A development Ed25519 key (EdDSA), `examples/keys/issuer-ed25519.pem`.
pub const ED25519_KEY_PEM: &[u8] = include_bytes!("../../keys/issuer-ed25519.pem");
/// `kid` of [`ED25519_KEY_PEM`].
pub const ED25519_KID: &str = "dev-2026-ed";

/// The public JWKS of [`DEV_KEY_PEM`] alone: what the service serves by default.
pub const DEV_JWKS: &str = include_str!("../../keys/jwks.json");
/// The JWKS published during a rotation: [`DEV_KID`] and [`NEXT_KID`].
pub const ROTATION_JWKS: &str = include_str!("../../keys/jwks-rotation.json");
/// The JWKS once the rotation is over: [`NEXT_KID`] alone.
pub const NEXT_JWKS: &str = include_str!("../../keys/jwks-next.json");
/// The JWKS of [`ED25519_KEY_PEM`].
pub const ED25519_JWKS: &str = include_str!("../../keys/jwks-ed25519.json");

/// JOSE `typ` of the consent tokens minted here (RFC 9068 access tokens).
pub const CONSENT_TYP: &str = "at+jwt";
/// JOSE `typ` of a status-list token.
pub const STATUS_LIST_TYP: &str = "statuslist+jwt";
/// `exp` of a status-list token is at least this long after its `iat` (one day): a
/// holder refetches after `ttl`, and may keep using a copy it cannot refresh until `exp`.
pub const STATUS_LIST_VALIDITY_SECONDS: u64 = 86_400;

/// A signing algorithm the plugin accepts (never `none`, never HMAC).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Alg {
    /// ECDSA on P-256 with SHA-256.
    ES256,
    /// Ed25519.
    EdDSA,
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    RS256,
    /// RSASSA-PSS with SHA-256.
    PS256,
}

impl Alg {
    /// The JOSE name.
    pub fn as_str(self) -> &'static str {
        match self {
            Alg::ES256 => "ES256",
            Alg::EdDSA => "EdDSA",
            Alg::RS256 => "RS256",
            Alg::PS256 => "PS256",
        }
    }

    /// The algorithm a PKCS#8 PEM private key is for: ES256 for an EC key, EdDSA for
    /// Ed25519, RS256 for RSA. `None` when the PEM is none of these.
    pub fn for_key_pem(pem: &[u8]) -> Option<Alg> {
        if EncodingKey::from_ec_pem(pem).is_ok() {
            Some(Alg::ES256)
        } else if EncodingKey::from_ed_pem(pem).is_ok() {
            Some(Alg::EdDSA)
        } else if EncodingKey::from_rsa_pem(pem).is_ok() {
            Some(Alg::RS256)
        } else {
            None
        }
    }

    fn jose(self) -> jsonwebtoken::Algorithm {
        match self {
            Alg::ES256 => jsonwebtoken::Algorithm::ES256,
            Alg::EdDSA => jsonwebtoken::Algorithm::EdDSA,
            Alg::RS256 => jsonwebtoken::Algorithm::RS256,
            Alg::PS256 => jsonwebtoken::Algorithm::PS256,
        }
    }
}

impl fmt::Display for Alg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Alg {
    type Err = IssuerError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "ES256" => Ok(Alg::ES256),
            "EdDSA" => Ok(Alg::EdDSA),
            "RS256" => Ok(Alg::RS256),
            "PS256" => Ok(Alg::PS256),
            _ => Err(IssuerError::UnknownAlgorithm(s.to_owned())),
        }
    }
}

/// Why a token could not be signed or a status list encoded.
#[derive(Debug)]
#[non_exhaustive]
pub enum IssuerError {
    /// The algorithm name is not one of ES256, EdDSA, RS256, PS256.
    UnknownAlgorithm(String),
    /// The key is not a PEM private key of a supported type.
    UnrecognisedKey,
    /// The key does not fit the algorithm (e.g. an Ed25519 key for ES256).
    KeyDoesNotFit(Alg),
    /// `bits` of a status list is not 1, 2, 4 or 8.
    Bits(u8),
    /// A status list must hold at least one status.
    EmptyStatusList,
    /// A status value does not fit in `bits` bits.
    StatusTooLarge {
        /// Index of the status.
        idx: usize,
        /// The value.
        value: u8,
        /// Bits per status.
        bits: u8,
    },
    /// The claims are not a JSON object.
    ClaimsNotAnObject,
    /// Signing failed.
    Sign(jsonwebtoken::errors::Error),
}

impl fmt::Display for IssuerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IssuerError::UnknownAlgorithm(a) => {
                write!(
                    f,
                    "unknown algorithm {a:?}; expected ES256, EdDSA, RS256 or PS256"
                )
            }
            IssuerError::UnrecognisedKey => {
                f.write_str("not a PKCS#8 PEM private key (EC P-256, Ed25519 or RSA)")
            }
            IssuerError::KeyDoesNotFit(alg) => write!(f, "the key cannot sign {alg}"),
            IssuerError::Bits(b) => write!(f, "status-list bits must be 1, 2, 4 or 8, not {b}"),
            IssuerError::EmptyStatusList => f.write_str("a status list needs at least one status"),
            IssuerError::StatusTooLarge { idx, value, bits } => {
                write!(
                    f,
                    "status {value} at index {idx} does not fit in {bits} bit(s)"
                )
            }
            IssuerError::ClaimsNotAnObject => f.write_str("the claims must be a JSON object"),
            IssuerError::Sign(e) => write!(f, "signing failed: {e}"),
        }
    }
}

impl std::error::Error for IssuerError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            IssuerError::Sign(e) => Some(e),
            _ => None,
        }
    }
}

/// A private key ready to sign, with its algorithm and `kid`.
#[derive(Clone)]
pub struct SigningKey {
    key: EncodingKey,
    alg: Alg,
    kid: Option<String>,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("alg", &self.alg)
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// Loads a PKCS#8 PEM private key. `alg` absent means the key's natural algorithm
    /// ([`Alg::for_key_pem`]); `kid` absent means tokens carry no `kid`.
    pub fn from_pem(pem: &[u8], kid: Option<&str>, alg: Option<Alg>) -> Result<Self, IssuerError> {
        let alg = match alg {
            Some(a) => a,
            None => Alg::for_key_pem(pem).ok_or(IssuerError::UnrecognisedKey)?,
        };
        let key = match alg {
            Alg::ES256 => EncodingKey::from_ec_pem(pem),
            Alg::EdDSA => EncodingKey::from_ed_pem(pem),
            Alg::RS256 | Alg::PS256 => EncodingKey::from_rsa_pem(pem),
        }
        .map_err(|_| match Alg::for_key_pem(pem) {
            Some(_) => IssuerError::KeyDoesNotFit(alg),
            None => IssuerError::UnrecognisedKey,
        })?;
        Ok(Self {
            key,
            alg,
            kid: kid.map(str::to_owned),
        })
    }

    /// The development ES256 key, `kid` [`DEV_KID`].
    pub fn dev() -> Result<Self, IssuerError> {
        Self::from_pem(DEV_KEY_PEM, Some(DEV_KID), Some(Alg::ES256))
    }

    /// The algorithm it signs with.
    pub fn alg(&self) -> Alg {
        self.alg
    }

    /// The `kid` its tokens carry.
    pub fn kid(&self) -> Option<&str> {
        self.kid.as_deref()
    }

    /// Signs `claims` (a JSON object) as a compact JWS with header
    /// `{"typ": typ, "alg": …, "kid": …}`.
    pub fn sign(&self, typ: &str, claims: &Value) -> Result<String, IssuerError> {
        if !claims.is_object() {
            return Err(IssuerError::ClaimsNotAnObject);
        }
        let mut header = Header::new(self.alg.jose());
        header.typ = Some(typ.to_owned());
        header.kid = self.kid.clone();
        jsonwebtoken::encode(&header, claims, &self.key).map_err(|e| {
            match e.kind() {
                // A key of the right family but the wrong curve or size.
                jsonwebtoken::errors::ErrorKind::InvalidKeyFormat
                | jsonwebtoken::errors::ErrorKind::InvalidAlgorithm => {
                    IssuerError::KeyDoesNotFit(self.alg)
                }
                _ => IssuerError::Sign(e),
            }
        })
    }

    /// A Token Status List token (draft-ietf-oauth-status-list) for `statuses` (one value
    /// per entry, each below `2^bits`) published at `uri`, issued at `iat` (unix seconds)
    /// and to be refetched after `ttl` seconds: header `typ: statuslist+jwt`, claims
    /// `sub` (= `uri`), `iat`, `exp` (the later of `iat + ttl` and
    /// `iat +` [`STATUS_LIST_VALIDITY_SECONDS`]), `ttl`, `status_list {bits, lst}`.
    pub fn status_list_token(
        &self,
        statuses: &[u8],
        bits: u8,
        uri: &str,
        iat: u64,
        ttl: u64,
    ) -> Result<String, IssuerError> {
        let lst = encode_status_list(statuses, bits)?;
        let exp = iat.saturating_add(ttl.max(STATUS_LIST_VALIDITY_SECONDS));
        let claims = json!({
            "sub": uri,
            "iat": iat,
            "exp": exp,
            "ttl": ttl,
            "status_list": {"bits": bits, "lst": lst},
        });
        self.sign(STATUS_LIST_TYP, &claims)
    }
}

/// Packs `statuses` (one value per entry) at `bits` bits each, least significant bits
/// first (status `i` at bit `(i·bits) mod 8` of byte `(i·bits) / 8`).
pub fn pack_statuses(statuses: &[u8], bits: u8) -> Result<Vec<u8>, IssuerError> {
    if !matches!(bits, 1 | 2 | 4 | 8) {
        return Err(IssuerError::Bits(bits));
    }
    if statuses.is_empty() {
        return Err(IssuerError::EmptyStatusList);
    }
    let bits_usize = usize::from(bits);
    let mut packed = vec![0u8; (statuses.len() * bits_usize).div_ceil(8)];
    for (idx, &value) in statuses.iter().enumerate() {
        if bits < 8 && value >> bits != 0 {
            return Err(IssuerError::StatusTooLarge { idx, value, bits });
        }
        let bit = idx * bits_usize;
        if let Some(byte) = packed.get_mut(bit / 8) {
            *byte |= value << (bit % 8);
        }
    }
    Ok(packed)
}

/// The `lst` of a `status_list` claim: base64url (no padding) of the zlib-wrapped
/// DEFLATE of [`pack_statuses`].
pub fn encode_status_list(statuses: &[u8], bits: u8) -> Result<String, IssuerError> {
    let packed = pack_statuses(statuses, bits)?;
    let mut z = ZlibEncoder::new(
        Vec::with_capacity(packed.len() / 4 + 16),
        Compression::best(),
    );
    // Writing into a Vec cannot fail.
    let _ = z.write_all(&packed);
    let compressed = z.finish().unwrap_or_default();
    Ok(URL_SAFE_NO_PAD.encode(compressed))
}

/// Signs `claims` (a JSON object) with a PEM private key as a consent token
/// (`typ: at+jwt`).
pub fn sign(
    claims: &Value,
    key_pem: &[u8],
    kid: Option<&str>,
    alg: Option<Alg>,
) -> Result<String, IssuerError> {
    SigningKey::from_pem(key_pem, kid, alg)?.sign(CONSENT_TYP, claims)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_drafts_example_packs_and_round_trips() {
        // draft-ietf-oauth-status-list §4.1: bits 1, statuses 1 0 0 1 1 1 0 1 | 1 1 0 0 0 1 0 1
        let statuses = [1, 0, 0, 1, 1, 1, 0, 1, 1, 1, 0, 0, 0, 1, 0, 1];
        assert_eq!(pack_statuses(&statuses, 1).unwrap(), [0xB9, 0xA3]);
        // draft §4.1, 2 bits: 1 2 0 3 0 1 0 1 1 2 3 3
        let two = [1, 2, 0, 3, 0, 1, 0, 1, 1, 2, 3, 3];
        assert_eq!(pack_statuses(&two, 2).unwrap(), [0xC9, 0x44, 0xF9]);
        let lst = encode_status_list(&statuses, 1).unwrap();
        let compressed = URL_SAFE_NO_PAD.decode(lst).unwrap();
        let mut out = Vec::new();
        std::io::Read::read_to_end(
            &mut flate2::read::ZlibDecoder::new(&compressed[..]),
            &mut out,
        )
        .unwrap();
        assert_eq!(out, [0xB9, 0xA3]);
    }

    #[test]
    fn bad_lists_are_refused() {
        assert!(matches!(pack_statuses(&[0], 3), Err(IssuerError::Bits(3))));
        assert!(matches!(
            pack_statuses(&[], 1),
            Err(IssuerError::EmptyStatusList)
        ));
        assert!(matches!(
            pack_statuses(&[0, 2], 1),
            Err(IssuerError::StatusTooLarge {
                idx: 1,
                value: 2,
                bits: 1
            })
        ));
        assert_eq!(pack_statuses(&[255, 7], 8).unwrap(), [255, 7]);
    }

    #[test]
    fn keys_are_recognised_and_checked_against_the_algorithm() {
        assert_eq!(Alg::for_key_pem(DEV_KEY_PEM), Some(Alg::ES256));
        assert_eq!(Alg::for_key_pem(ED25519_KEY_PEM), Some(Alg::EdDSA));
        assert_eq!(Alg::for_key_pem(b"not a key"), None);
        assert!(matches!(
            SigningKey::from_pem(ED25519_KEY_PEM, None, Some(Alg::ES256)),
            Err(IssuerError::KeyDoesNotFit(Alg::ES256))
        ));
        assert!(matches!(
            SigningKey::from_pem(b"x", None, None),
            Err(IssuerError::UnrecognisedKey)
        ));
        let key = SigningKey::dev().unwrap();
        assert_eq!((key.alg(), key.kid()), (Alg::ES256, Some(DEV_KID)));
        assert!(matches!(
            key.sign(CONSENT_TYP, &json!([1])),
            Err(IssuerError::ClaimsNotAnObject)
        ));
        assert_eq!("EdDSA".parse::<Alg>().unwrap(), Alg::EdDSA);
        assert!("HS256".parse::<Alg>().is_err());
    }
}
