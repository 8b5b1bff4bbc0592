//! Field encryption: JWE compact serialisation with `alg: ECDH-ES` (direct key
//! agreement, RFC 7518 §4.6) and `enc: A256GCM`, to a recipient's P-256 key.
//!
//! One key agreement per response: the first field to encrypt draws an ephemeral key
//! from the caller's random source, derives the content key with the Concat KDF, and
//! fixes the protected header; every field then gets a fresh random 96-bit IV and is
//! sealed with AAD = the ASCII of the base64url protected header. Each field's string
//! is a complete JWE that any JOSE library decrypts with the recipient's private key.

use std::collections::BTreeSet;
use std::fmt;

use aes_gcm::aead::AeadInPlace;
use aes_gcm::{Aes256Gcm, KeyInit, Nonce};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use p256::elliptic_curve::sec1::{FromEncodedPoint, ToEncodedPoint};
use p256::{EncodedPoint, PublicKey, SecretKey};
use sha2::{Digest, Sha256};

use super::RedactError;
use super::plan::valid_key_id;

/// A recipient's public key for field encryption, validated at configuration time.
#[derive(Clone)]
pub struct RecipientKey {
    point: PublicKey,
    kid: String,
    apu: Vec<u8>,
    apv: Vec<u8>,
}

impl fmt::Debug for RecipientKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RecipientKey")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

/// Why a key was refused (a recipient's JWK, or a pseudonymisation secret).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeyError {
    /// The JWK is not a JSON object.
    NotAnObject,
    /// `kty` is not `"EC"`.
    WrongKeyType,
    /// `crv` is not `"P-256"`.
    WrongCurve,
    /// `x` or `y` is missing, not unpadded base64url, or not 32 bytes.
    BadCoordinate,
    /// The point is not on P-256 (an invalid-curve point, or the point at infinity).
    NotOnCurve,
    /// The JWK carries a private key (`d`): configuration holds public keys only.
    PrivateKeyMaterial,
    /// `use` is present and not `"enc"`, or `alg` is present and not `"ECDH-ES"`.
    WrongUse,
    /// The key id (`kid`, or a key ring id) is missing, empty, longer than 64 bytes,
    /// or has characters other than ASCII letters, digits, `.`, `_`, `-`.
    BadKeyId,
    /// Two keys of one key ring share an id.
    DuplicateKeyId,
    /// A pseudonymisation secret shorter than [`MIN_SECRET_LEN`] bytes.
    ShortSecret,
}

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KeyError::NotAnObject => "a JWK must be a JSON object",
            KeyError::WrongKeyType => "kty must be \"EC\"",
            KeyError::WrongCurve => "crv must be \"P-256\"",
            KeyError::BadCoordinate => "x and y must be 32 bytes of unpadded base64url",
            KeyError::NotOnCurve => "the point is not on P-256",
            KeyError::PrivateKeyMaterial => "a recipient key must not contain \"d\"",
            KeyError::WrongUse => "use must be \"enc\" and alg \"ECDH-ES\" when present",
            KeyError::BadKeyId => "a key id is 1 to 64 of A-Z a-z 0-9 . _ -",
            KeyError::DuplicateKeyId => "two keys share an id",
            KeyError::ShortSecret => "a pseudonymisation secret needs at least 32 bytes",
        })
    }
}

impl std::error::Error for KeyError {}

/// The shortest pseudonymisation secret accepted (256 bits).
pub const MIN_SECRET_LEN: usize = 32;

impl RecipientKey {
    /// Reads a public JWK: `kty: "EC"`, `crv: "P-256"`, `x`, `y` (32 bytes each,
    /// unpadded base64url), a `kid` (which goes into every JWE header), optionally
    /// `use: "enc"` and `alg: "ECDH-ES"`. The point must be on the curve; a JWK with a
    /// private part `d` is refused.
    pub fn from_jwk(jwk: &serde_json::Value) -> Result<RecipientKey, KeyError> {
        let obj = jwk.as_object().ok_or(KeyError::NotAnObject)?;
        let text = |name: &str| obj.get(name).and_then(serde_json::Value::as_str);
        if text("kty") != Some("EC") {
            return Err(KeyError::WrongKeyType);
        }
        if text("crv") != Some("P-256") {
            return Err(KeyError::WrongCurve);
        }
        if obj.contains_key("d") {
            return Err(KeyError::PrivateKeyMaterial);
        }
        if obj.get("use").is_some_and(|u| u.as_str() != Some("enc"))
            || obj
                .get("alg")
                .is_some_and(|a| a.as_str() != Some("ECDH-ES"))
        {
            return Err(KeyError::WrongUse);
        }
        let kid = text("kid")
            .filter(|k| valid_key_id(k))
            .ok_or(KeyError::BadKeyId)?;
        let x = coordinate(text("x"))?;
        let y = coordinate(text("y"))?;
        let encoded = EncodedPoint::from_affine_coordinates(&x.into(), &y.into(), false);
        let point = Option::<PublicKey>::from(PublicKey::from_encoded_point(&encoded))
            .ok_or(KeyError::NotOnCurve)?;
        Ok(RecipientKey {
            point,
            kid: kid.to_owned(),
            apu: Vec::new(),
            apv: Vec::new(),
        })
    }

    /// Sets the Concat KDF's PartyUInfo and PartyVInfo (RFC 7518 §4.6.1.2–3); they
    /// travel base64url-encoded as `apu`/`apv` in the protected header. Empty by
    /// default (and then left out of the header).
    pub fn with_party_info(mut self, apu: &[u8], apv: &[u8]) -> RecipientKey {
        self.apu = apu.to_vec();
        self.apv = apv.to_vec();
        self
    }

    /// The key id written into every JWE header.
    pub fn kid(&self) -> &str {
        &self.kid
    }
}

fn coordinate(text: Option<&str>) -> Result<[u8; 32], KeyError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(text.ok_or(KeyError::BadCoordinate)?)
        .map_err(|_| KeyError::BadCoordinate)?;
    <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| KeyError::BadCoordinate)
}

/// The ECDH shared secret Z (the x coordinate).
pub(crate) fn agree(ephemeral: &SecretKey, recipient: &RecipientKey) -> [u8; 32] {
    let shared =
        p256::ecdh::diffie_hellman(ephemeral.to_nonzero_scalar(), recipient.point.as_affine());
    let mut z = [0u8; 32];
    z.copy_from_slice(shared.raw_secret_bytes());
    z
}

/// Concat KDF (NIST SP 800-56A §5.8.1, single-step with SHA-256) as JWA §4.6.2 uses
/// it: `OtherInfo = len‖alg ‖ len‖apu ‖ len‖apv ‖ keydatalen-in-bits`.
pub(crate) fn concat_kdf(z: &[u8], alg: &str, apu: &[u8], apv: &[u8], out: &mut [u8]) {
    let bits = u32::try_from(out.len().saturating_mul(8)).unwrap_or(u32::MAX);
    let mut counter: u32 = 1;
    for chunk in out.chunks_mut(32) {
        let mut h = Sha256::new();
        h.update(counter.to_be_bytes());
        h.update(z);
        for part in [alg.as_bytes(), apu, apv] {
            h.update(u32::try_from(part.len()).unwrap_or(u32::MAX).to_be_bytes());
            h.update(part);
        }
        h.update(bits.to_be_bytes());
        let digest = h.finalize();
        chunk.copy_from_slice(digest.get(..chunk.len()).unwrap_or_default());
        counter = counter.wrapping_add(1);
    }
}

/// AES-256-GCM with a 96-bit IV; returns the 16-byte tag and leaves the ciphertext
/// in `buffer`.
pub(crate) fn seal(
    cipher: &Aes256Gcm,
    iv: &[u8; 12],
    aad: &[u8],
    buffer: &mut [u8],
) -> Result<[u8; 16], RedactError> {
    let tag = cipher
        .encrypt_in_place_detached(Nonce::from_slice(iv), aad, buffer)
        .map_err(|_| RedactError::TooLarge)?;
    Ok(tag.into())
}

/// The per-response encryption state: made once, on the first encrypted field.
pub(crate) struct Session {
    header_b64: String,
    cipher: Aes256Gcm,
    ivs: BTreeSet<[u8; 12]>,
    buffer: Vec<u8>,
}

/// How many draws of 32 random bytes may fail to be a valid P-256 scalar before the
/// source is judged broken (each draw fails with probability below 2^-32).
const SCALAR_TRIES: usize = 4;

impl Session {
    pub(crate) fn start(
        recipient: &RecipientKey,
        random: &mut dyn FnMut(&mut [u8]),
    ) -> Result<Session, RedactError> {
        let mut ephemeral = None;
        for _ in 0..SCALAR_TRIES {
            let mut bytes = [0u8; 32];
            random(&mut bytes);
            if let Ok(key) = SecretKey::from_slice(&bytes) {
                ephemeral = Some(key);
                break;
            }
        }
        let ephemeral = ephemeral.ok_or(RedactError::RandomFailure)?;
        Ok(Session::with_ephemeral(recipient, &ephemeral))
    }

    pub(crate) fn with_ephemeral(recipient: &RecipientKey, ephemeral: &SecretKey) -> Session {
        let z = agree(ephemeral, recipient);
        let mut cek = [0u8; 32];
        concat_kdf(&z, "A256GCM", &recipient.apu, &recipient.apv, &mut cek);
        let epk = ephemeral.public_key().to_encoded_point(false);
        let b64 = |b: Option<&[u8]>| URL_SAFE_NO_PAD.encode(b.unwrap_or_default());
        let mut header = format!(
            r#"{{"alg":"ECDH-ES","enc":"A256GCM","epk":{{"kty":"EC","crv":"P-256","x":"{}","y":"{}"}}"#,
            b64(epk.x().map(|x| x.as_slice())),
            b64(epk.y().map(|y| y.as_slice())),
        );
        if !recipient.apu.is_empty() {
            header.push_str(&format!(r#","apu":"{}""#, b64(Some(&recipient.apu))));
        }
        if !recipient.apv.is_empty() {
            header.push_str(&format!(r#","apv":"{}""#, b64(Some(&recipient.apv))));
        }
        // The kid was checked to be plain ASCII: no escaping needed.
        header.push_str(&format!(r#","kid":"{}"}}"#, recipient.kid));
        Session {
            header_b64: URL_SAFE_NO_PAD.encode(header),
            cipher: Aes256Gcm::new(&cek.into()),
            ivs: BTreeSet::new(),
            buffer: Vec::new(),
        }
    }

    /// Writes `"<header>..<iv>.<ciphertext>.<tag>"` (a JSON string) for one field.
    pub(crate) fn encrypt(
        &mut self,
        plaintext: &[u8],
        random: &mut dyn FnMut(&mut [u8]),
        out: &mut Vec<u8>,
    ) -> Result<(), RedactError> {
        let mut iv = [0u8; 12];
        random(&mut iv);
        // A repeated IV under one key breaks GCM: refuse a source that repeats.
        if !self.ivs.insert(iv) {
            return Err(RedactError::RandomFailure);
        }
        self.buffer.clear();
        self.buffer.extend_from_slice(plaintext);
        let tag = seal(
            &self.cipher,
            &iv,
            self.header_b64.as_bytes(),
            &mut self.buffer,
        )?;
        out.push(b'"');
        out.extend_from_slice(self.header_b64.as_bytes());
        out.extend_from_slice(b"..");
        out.extend_from_slice(URL_SAFE_NO_PAD.encode(iv).as_bytes());
        out.push(b'.');
        out.extend_from_slice(URL_SAFE_NO_PAD.encode(&self.buffer).as_bytes());
        out.push(b'.');
        out.extend_from_slice(URL_SAFE_NO_PAD.encode(tag).as_bytes());
        out.push(b'"');
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    /// A file of public test vectors (`tests/vectors/`, sources in its README).
    fn vectors(name: &str) -> Value {
        let path = format!("{}/tests/vectors/{name}", env!("CARGO_MANIFEST_DIR"));
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        serde_json::from_str(&text).unwrap()
    }

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    fn b64(s: &str) -> Vec<u8> {
        URL_SAFE_NO_PAD.decode(s).unwrap()
    }

    fn secret(jwk: &Value) -> SecretKey {
        SecretKey::from_slice(&b64(jwk["d"].as_str().unwrap())).unwrap()
    }

    fn public(jwk: &Value) -> Result<RecipientKey, KeyError> {
        let mut jwk = jwk.clone();
        let obj = jwk.as_object_mut().unwrap();
        obj.remove("d");
        RecipientKey::from_jwk(&jwk)
    }

    #[test]
    fn concat_kdf_matches_rfc7518_appendix_c() {
        let v = vectors("jwe-ecdh-es-p256.json");
        let c = &v["rfc7518_appendix_c"];
        // Z from Alice's ephemeral key and Bob's public key, then the KDF.
        let bob = public(&v["recipient_private_jwk"]).unwrap();
        let z = agree(&secret(&v["ephemeral_private_jwk"]), &bob);
        assert_eq!(z.to_vec(), hex(c["z_hex"].as_str().unwrap()));
        let mut key = [0u8; 16];
        let apu = b64(c["apu"].as_str().unwrap());
        let apv = b64(c["apv"].as_str().unwrap());
        concat_kdf(&z, c["enc"].as_str().unwrap(), &apu, &apv, &mut key);
        assert_eq!(key.to_vec(), b64(c["derived_key_b64u"].as_str().unwrap()));
    }

    #[test]
    fn direct_ecdh_es_a256gcm_matches_the_deterministic_case() {
        let v = vectors("jwe-ecdh-es-p256.json");
        let case = &v["cases"]["ECDH-ES/A256GCM"];
        let bob = public(&v["recipient_private_jwk"]).unwrap();
        let eph = secret(&v["ephemeral_private_jwk"]);
        let z = agree(&eph, &bob);
        let mut cek = [0u8; 32];
        concat_kdf(&z, "A256GCM", &[], &[], &mut cek);
        assert_eq!(cek.to_vec(), b64(case["cek_b64u"].as_str().unwrap()));
        let mut session = Session::with_ephemeral(&bob, &eph);
        let iv = hex(case["iv_hex"].as_str().unwrap());
        let mut out = Vec::new();
        let mut random = |buf: &mut [u8]| buf.copy_from_slice(&iv);
        session
            .encrypt(
                case["plaintext"].as_str().unwrap().as_bytes(),
                &mut random,
                &mut out,
            )
            .unwrap();
        let expected = format!("\"{}\"", case["compact"].as_str().unwrap());
        assert_eq!(String::from_utf8(out).unwrap(), expected);
        // The header is the one in the vector, byte for byte.
        let header: Value = serde_json::from_slice(&b64(&session.header_b64)).unwrap();
        assert_eq!(header, case["protected_header"]);
    }

    #[test]
    fn a_repeated_iv_is_refused() {
        let v = vectors("jwe-ecdh-es-p256.json");
        let bob = public(&v["recipient_private_jwk"]).unwrap();
        let mut session = Session::with_ephemeral(&bob, &secret(&v["ephemeral_private_jwk"]));
        let mut zeros = |buf: &mut [u8]| buf.fill(0);
        let mut out = Vec::new();
        session.encrypt(b"1", &mut zeros, &mut out).unwrap();
        assert_eq!(
            session.encrypt(b"2", &mut zeros, &mut out),
            Err(RedactError::RandomFailure)
        );
        assert!(matches!(
            Session::start(&bob, &mut zeros),
            Err(RedactError::RandomFailure)
        ));
    }

    /// Wycheproof ECDH P-256 with JWK keys: every `invalid` public key is refused at
    /// configuration, every `valid` one agrees on the shared secret. (The file has no
    /// `acceptable` cases; one would be treated as `valid` if its key parses.)
    #[test]
    fn wycheproof_ecdh_webcrypto() {
        let v = vectors("wycheproof/ecdh_secp256r1_webcrypto_test.json");
        let (mut valid, mut invalid) = (0, 0);
        for group in v["testGroups"].as_array().unwrap() {
            for t in group["tests"].as_array().unwrap() {
                let id = &t["tcId"];
                let key = RecipientKey::from_jwk(&t["public"]);
                match t["result"].as_str().unwrap() {
                    "valid" | "acceptable" => {
                        let key = key.unwrap_or_else(|e| panic!("tcId {id}: {e}"));
                        let z = agree(&secret(&t["private"]), &key);
                        assert_eq!(z.to_vec(), hex(t["shared"].as_str().unwrap()), "tcId {id}");
                        valid += 1;
                    }
                    _ => {
                        assert!(key.is_err(), "tcId {id} accepted");
                        invalid += 1;
                    }
                }
            }
        }
        assert_eq!((valid, invalid), (330, 23));
    }

    /// Wycheproof AES-GCM, the 256-bit-key / 96-bit-IV / 128-bit-tag group (the only
    /// shape field encryption uses): `valid` cases encrypt to the listed ciphertext
    /// and tag; `invalid` ones (modified tags or ciphertexts) differ from what we
    /// produce and fail to open.
    #[test]
    fn wycheproof_aes_256_gcm() {
        let v = vectors("wycheproof/aes_gcm_test.json");
        let mut checked = 0;
        for group in v["testGroups"].as_array().unwrap() {
            if group["keySize"] != 256 || group["ivSize"] != 96 || group["tagSize"] != 128 {
                continue;
            }
            for t in group["tests"].as_array().unwrap() {
                let id = &t["tcId"];
                let cipher = Aes256Gcm::new_from_slice(&hex(t["key"].as_str().unwrap())).unwrap();
                let iv: [u8; 12] = hex(t["iv"].as_str().unwrap()).try_into().unwrap();
                let aad = hex(t["aad"].as_str().unwrap());
                let mut buffer = hex(t["msg"].as_str().unwrap());
                let tag = seal(&cipher, &iv, &aad, &mut buffer).unwrap();
                let ours = [buffer, tag.to_vec()].concat();
                let theirs = [
                    hex(t["ct"].as_str().unwrap()),
                    hex(t["tag"].as_str().unwrap()),
                ]
                .concat();
                if t["result"] == "valid" {
                    assert_eq!(ours, theirs, "tcId {id}");
                } else {
                    assert_ne!(ours, theirs, "tcId {id}");
                    let mut ct = hex(t["ct"].as_str().unwrap());
                    let tag = hex(t["tag"].as_str().unwrap());
                    assert!(
                        cipher
                            .decrypt_in_place_detached(
                                Nonce::from_slice(&iv),
                                &aad,
                                &mut ct,
                                tag.as_slice().into()
                            )
                            .is_err(),
                        "tcId {id}"
                    );
                }
                checked += 1;
            }
        }
        assert_eq!(checked, 66);
    }

    #[test]
    fn recipient_jwks_are_checked() {
        let v = vectors("jwe-ecdh-es-p256.json");
        let good = public(&v["recipient_private_jwk"]).unwrap();
        assert_eq!(good.kid(), "bob-enc-1");
        let base = {
            let mut j = v["recipient_private_jwk"].clone();
            j.as_object_mut().unwrap().remove("d");
            j
        };
        let with = |k: &str, val: Value| {
            let mut j = base.clone();
            j[k] = val;
            RecipientKey::from_jwk(&j).unwrap_err()
        };
        let without = |k: &str| {
            let mut j = base.clone();
            j.as_object_mut().unwrap().remove(k);
            RecipientKey::from_jwk(&j).unwrap_err()
        };
        assert_eq!(
            RecipientKey::from_jwk(&v["recipient_private_jwk"]).unwrap_err(),
            KeyError::PrivateKeyMaterial
        );
        assert_eq!(
            RecipientKey::from_jwk(&Value::Null).unwrap_err(),
            KeyError::NotAnObject
        );
        assert_eq!(with("kty", "RSA".into()), KeyError::WrongKeyType);
        assert_eq!(with("crv", "P-384".into()), KeyError::WrongCurve);
        assert_eq!(with("use", "sig".into()), KeyError::WrongUse);
        assert_eq!(with("alg", "ECDH-ES+A256KW".into()), KeyError::WrongUse);
        assert_eq!(with("kid", "a b".into()), KeyError::BadKeyId);
        assert_eq!(without("kid"), KeyError::BadKeyId);
        assert_eq!(without("y"), KeyError::BadCoordinate);
        assert_eq!(with("x", "AAAA".into()), KeyError::BadCoordinate);
        // Padded base64 is not base64url-without-padding.
        let padded = format!("{}=", base["x"].as_str().unwrap());
        assert_eq!(with("x", padded.into()), KeyError::BadCoordinate);
        // Flip one bit of y: off the curve.
        let mut y = b64(base["y"].as_str().unwrap());
        y[31] ^= 1;
        assert_eq!(
            with("y", URL_SAFE_NO_PAD.encode(&y).into()),
            KeyError::NotOnCurve
        );
    }
}
