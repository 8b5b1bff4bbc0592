//! Consent tokens: signed JWTs that say what a data subject consented to.
//!
//! The request path, in the order DESIGN.md gives (cache ▸ signature ▸ claims ▸
//! revocation ▸ binding):
//!
//! ```text
//! let consent = verifier.verify_cached(&mut cache, token, now)?;   // cache, JWS, claims
//! verifier.check_revocation(&consent, lists.get(uri), now)?;       // deny-list, status list
//! verifier.check_binding(&consent, &peer)?;                        // RFC 8705, SPIFFE
//! ```
//!
//! or all three at once with [`Verifier::check`]. Every refusal is a [`TokenError`]; its
//! [`TokenError::class`] is all the client may learn.
//!
//! Decisions this module makes:
//! - **Keys never come from the token.** `jku`, `x5u`, `jwk` and `x5c` in a header refuse
//!   the token ([`TokenError::ForbiddenHeader`]), with or without `kid`: a legitimate
//!   issuer's keys are configured, so a token that brings its own is at best misissued.
//!   `x5t`/`x5t#S256` hints are ignored.
//! - **`alg` comes from configuration**: the token's `alg` must be in its issuer's list and
//!   fit the key's type and curve. `none` and HMAC cannot be configured.
//! - **ES256 is verified with precomputed tables** per key ([`es256`]), RS256/PS256 with
//!   `rsa`, EdDSA with `ed25519-dalek` (`verify_strict`): the RustCrypto crates
//!   `jsonwebtoken` 11's `rust_crypto` backend is built on, at its versions. `jsonwebtoken`
//!   itself is not in the .wasm: verifying an ES256 token through it costs about 5.5 times
//!   as long (in wasm, about 950 µs against 170 µs here), it adds about twice the code
//!   (+830 KiB for verification alone, against +390 KiB for everything in this module),
//!   and its JSON handling keeps the last of duplicate names. The tests mint tokens with it,
//!   an independent implementation, and verify them here.
//! - **Certificates are read with a 100-line DER reader** ([`binding`]) that walks only to
//!   the SubjectAltName extension (+11 KiB of .wasm, against +92 KiB for `x509-cert`).
//! - **Revocation by issuer + `jti`**, never by a hash of the token (ECDSA signatures are
//!   malleable; a high-S twin of a revoked token is still revoked).
//! - **Revocation is never skipped silently**: from an issuer with a status list, a token
//!   that references none is refused ([`TokenError::StatusMissing`]) unless the issuer's
//!   `require_status_claim` is off.
//! - **The token's `typ` picks its profile**: an `at+jwt` token must carry every claim of
//!   RFC 9068 §2.2 ([`claims::RFC9068_REQUIRED`]) unless the issuer's
//!   `require_rfc9068_claims` is off.
//! - **An unbound presentation is an invalid token** (RFC 8705 §3): 401 with
//!   `error="invalid_token"`, like any other, never 403.

pub mod alg;
pub mod binding;
pub mod cache;
pub mod claims;
pub mod config;
pub mod error;
pub mod es256;
mod json;
mod jws;
pub mod keys;
pub mod status_list;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde_json::Value;

pub use alg::Algorithm;
pub use binding::{Peer, check_binding, spiffe_id_from_pem};
pub use cache::{DEFAULT_CACHE_CAPACITY, TokenCache};
pub use claims::{AuthorizationDetail, Consent, StatusRef};
pub use config::{
    Binding, ConsentFormat, ConsentMapping, Issuer, IssuerConfigError, RemoteJwks, Revocation,
    StatusListSource, compile_issuers,
};
pub use error::{ErrorClass, JwksError, TokenError};
pub use jws::{DEFAULT_MAX_TOKEN_BYTES, media_type_eq};
pub use keys::{Jwk, KeyMaterial, KeySet};
pub use status_list::StatusList;

/// The status lists a worker currently holds, by URI.
pub trait StatusLists {
    /// The list published at `uri`, if held (fresh or not: freshness is checked by the
    /// verifier).
    fn get(&self, uri: &str) -> Option<&StatusList>;
}

impl StatusLists for BTreeMap<String, StatusList> {
    fn get(&self, uri: &str) -> Option<&StatusList> {
        BTreeMap::get(self, uri)
    }
}

impl<S: std::hash::BuildHasher> StatusLists for HashMap<String, StatusList, S> {
    fn get(&self, uri: &str) -> Option<&StatusList> {
        HashMap::get(self, uri)
    }
}

/// No status list held at all.
impl StatusLists for () {
    fn get(&self, _: &str) -> Option<&StatusList> {
        None
    }
}

#[derive(Debug, Clone)]
struct IssuerState {
    config: Issuer,
    remote: KeySet,
    /// `config.inline_keys` merged with `remote`.
    keys: KeySet,
    last_refetch: Option<u64>,
}

/// Every configured issuer with its current keys: the token verifier of one worker.
#[derive(Debug, Clone)]
pub struct Verifier {
    issuers: Vec<IssuerState>,
    max_token_bytes: usize,
    key_generation: u64,
}

impl Verifier {
    /// A verifier for these issuers, holding their inline keys; remote keys arrive through
    /// [`Verifier::load_remote_jwks`].
    pub fn new(issuers: Vec<Issuer>) -> Self {
        let issuers = issuers
            .into_iter()
            .map(|config| IssuerState {
                keys: config.inline_keys.clone(),
                remote: KeySet::empty(),
                config,
                last_refetch: None,
            })
            .collect();
        Self {
            issuers,
            max_token_bytes: DEFAULT_MAX_TOKEN_BYTES,
            key_generation: 0,
        }
    }

    /// Sets the bound on a token's length (default [`DEFAULT_MAX_TOKEN_BYTES`], 8 KiB).
    pub fn with_max_token_bytes(mut self, max: usize) -> Self {
        self.max_token_bytes = max;
        self
    }

    /// The configured issuers.
    pub fn issuers(&self) -> impl Iterator<Item = &Issuer> {
        self.issuers.iter().map(|s| &s.config)
    }

    /// The issuer whose `iss` is `iss`.
    pub fn issuer(&self, iss: &str) -> Option<&Issuer> {
        self.state(iss).map(|s| &s.config)
    }

    /// The issuer's current keys (inline and remote merged).
    pub fn keys(&self, iss: &str) -> Option<&KeySet> {
        self.state(iss).map(|s| &s.keys)
    }

    /// Changes whenever any issuer's keys change; cached verdicts of another generation
    /// are not used.
    pub fn key_generation(&self) -> u64 {
        self.key_generation
    }

    fn state(&self, iss: &str) -> Option<&IssuerState> {
        self.issuers.iter().find(|s| s.config.issuer == iss)
    }

    fn state_mut(&mut self, iss: &str) -> Option<&mut IssuerState> {
        self.issuers.iter_mut().find(|s| s.config.issuer == iss)
    }

    /// Replaces the issuer's remote keys. Returns whether its key set changed (then
    /// cached verdicts stop being used). `false` also for an unknown issuer.
    pub fn set_remote_keys(&mut self, iss: &str, remote: KeySet) -> bool {
        let Some(state) = self.state_mut(iss) else {
            return false;
        };
        let keys = state.config.inline_keys.merged(&remote);
        let changed = keys.fingerprint() != state.keys.fingerprint();
        state.remote = remote;
        state.keys = keys;
        if changed {
            self.key_generation = self.key_generation.wrapping_add(1);
        }
        changed
    }

    /// Installs a fetched JWKS document as the issuer's remote keys, reusing the tables
    /// of keys it already had. Keys that are not well-formed are skipped and returned as
    /// errors to log; a document that is not a JWKS at all leaves the keys as they were.
    pub fn load_remote_jwks(
        &mut self,
        iss: &str,
        body: &[u8],
    ) -> Result<Vec<JwksError>, JwksError> {
        let Some(state) = self.state(iss) else {
            return Err(JwksError::new("", "no such issuer is configured"));
        };
        let (set, skipped) = state.remote.refresh(body)?;
        self.set_remote_keys(iss, set);
        Ok(skipped)
    }

    /// Whether a refetch of the issuer's remote JWKS may start now (after an unknown
    /// `kid`): at most one per `min_refetch_interval_seconds`. Records the attempt.
    pub fn may_refetch(&mut self, iss: &str, now: u64) -> bool {
        let Some(state) = self.state_mut(iss) else {
            return false;
        };
        let Some(remote) = &state.config.remote_keys else {
            return false;
        };
        let interval = remote.min_refetch_interval_seconds;
        match state.last_refetch {
            Some(last) if now < last.saturating_add(interval) => false,
            _ => {
                state.last_refetch = Some(now);
                true
            }
        }
    }

    /// The configured issuer a token claims to come from, read WITHOUT verification: for
    /// routing a key refetch after [`TokenError::needs_key_refetch`], nothing else.
    pub fn unverified_issuer(&self, token: &[u8]) -> Option<&Issuer> {
        let parsed = jws::parse(token, self.max_token_bytes).ok()?;
        let iss = parsed.claims.get("iss")?.as_str()?;
        self.issuer(iss)
    }

    /// Verifies a compact JWS consent token at `now` (unix seconds): structure, header,
    /// issuer, algorithm, key, signature, then claims; returns the consent. Does not check
    /// revocation or binding.
    pub fn verify(&self, token: &[u8], now: u64) -> Result<Consent, TokenError> {
        let parsed = jws::parse(token, self.max_token_bytes)?;
        let state = match parsed.claims.get("iss") {
            Some(Value::String(iss)) => self.state(iss).ok_or(TokenError::UnknownIssuer)?,
            None | Some(Value::Null) => return Err(TokenError::MissingClaim),
            Some(_) => return Err(TokenError::InvalidClaim),
        };
        let issuer = &state.config;
        let alg = allowed_algorithm(&parsed, issuer)?;
        let typ = parsed.header.typ.as_deref();
        let typ_ok = match &issuer.typ {
            Some(expected) => typ.is_some_and(|t| media_type_eq(t, expected)),
            None => !typ.is_some_and(|t| media_type_eq(t, status_list::STATUS_LIST_TYP)),
        };
        if !typ_ok {
            return Err(TokenError::WrongType);
        }
        verify_with(&parsed, alg, &state.keys)?;
        let access_token = typ.is_some_and(|t| media_type_eq(t, claims::ACCESS_TOKEN_TYP));
        claims::validate(parsed.claims, issuer, now, access_token)
    }

    /// [`Verifier::verify`] through a cache keyed by the token's SHA-256.
    pub fn verify_cached(
        &self,
        cache: &mut TokenCache,
        token: &[u8],
        now: u64,
    ) -> Result<Arc<Consent>, TokenError> {
        if token.is_empty() {
            return Err(TokenError::Missing);
        }
        if token.len() > self.max_token_bytes {
            return Err(TokenError::TooLarge);
        }
        let key = TokenCache::key(token);
        if let Some(consent) = cache.get(&key, now, self.key_generation) {
            return Ok(consent);
        }
        let mut consent = self.verify(token, now)?;
        if !cache.keeps_claims() {
            consent.claims = serde_json::Value::Null;
        }
        let consent = Arc::new(consent);
        let skew = self
            .issuer(&consent.issuer)
            .map_or(0, |i| i.clock_skew_seconds);
        let valid_from = consent.not_before.map_or(0, |n| n.saturating_sub(skew));
        let valid_until = consent.expires_at.saturating_add(skew);
        cache.insert(
            key,
            consent.clone(),
            valid_from,
            valid_until,
            self.key_generation,
            now,
        );
        Ok(consent)
    }

    /// Revocation: the issuer's deny-list (issuer + `jti`), then the token's status list.
    /// `status_list` is the list the worker holds for the token's `status.uri` (or
    /// `None`); a missing, mismatched or stale list refuses
    /// ([`TokenError::StatusListUnavailable`]: fetch it and retry). A token without a
    /// status reference from an issuer with a status list is refused
    /// ([`TokenError::StatusMissing`]) unless the issuer's `require_status_claim` is off.
    pub fn check_revocation(
        &self,
        consent: &Consent,
        status_list: Option<&StatusList>,
        now: u64,
    ) -> Result<(), TokenError> {
        let issuer = self
            .issuer(&consent.issuer)
            .ok_or(TokenError::UnknownIssuer)?;
        if issuer.revocation.deny_list.contains(&consent.consent_id) {
            return Err(TokenError::Revoked);
        }
        let source = issuer.revocation.status_list.as_ref();
        let Some(reference) = &consent.status else {
            // An issuer that publishes status lists vouches for a token's status only
            // through one: without a reference, revocation cannot be checked.
            return match source {
                Some(s) if s.require_status_claim => Err(TokenError::StatusMissing),
                _ => Ok(()),
            };
        };
        let source = source.ok_or(TokenError::StatusUriNotAllowed)?;
        let list = status_list
            .filter(|l| l.uri() == reference.uri)
            .ok_or(TokenError::StatusListUnavailable)?;
        if !list.is_usable(now, source.max_staleness_seconds) {
            return Err(TokenError::StatusListUnavailable);
        }
        list.status(reference.idx)
    }

    /// Sender binding and SPIFFE grantee, as the token's issuer configures them.
    pub fn check_binding(&self, consent: &Consent, peer: &Peer<'_>) -> Result<(), TokenError> {
        let issuer = self
            .issuer(&consent.issuer)
            .ok_or(TokenError::UnknownIssuer)?;
        check_binding(consent, &issuer.binding, peer)
    }

    /// The whole request-path check: [`Verifier::verify_cached`], then
    /// [`Verifier::check_revocation`] with the list `lists` holds for the token, then
    /// [`Verifier::check_binding`].
    pub fn check(
        &self,
        cache: &mut TokenCache,
        token: &[u8],
        now: u64,
        lists: &dyn StatusLists,
        peer: &Peer<'_>,
    ) -> Result<Arc<Consent>, TokenError> {
        let consent = self.verify_cached(cache, token, now)?;
        let list = consent.status.as_ref().and_then(|r| lists.get(&r.uri));
        self.check_revocation(&consent, list, now)?;
        self.check_binding(&consent, peer)?;
        Ok(consent)
    }

    /// Verifies and decodes a fetched status-list token of issuer `iss` expected at `uri`
    /// (see [`StatusList::from_jwt`]).
    pub fn load_status_list(
        &self,
        iss: &str,
        uri: &str,
        jwt: &[u8],
        now: u64,
    ) -> Result<StatusList, TokenError> {
        let state = self.state(iss).ok_or(TokenError::UnknownIssuer)?;
        StatusList::from_jwt(jwt, &state.config, &state.keys, uri, now)
    }
}

/// The token's `alg`, if its issuer allows it.
fn allowed_algorithm(parsed: &jws::Jws<'_>, issuer: &Issuer) -> Result<Algorithm, TokenError> {
    Algorithm::from_jose(&parsed.header.alg)
        .filter(|a| issuer.algorithms.contains(a))
        .ok_or(TokenError::AlgorithmNotAllowed)
}

/// Verifies the signature with the keys that fit (`kid`, then `alg`).
fn verify_with(parsed: &jws::Jws<'_>, alg: Algorithm, keys: &KeySet) -> Result<(), TokenError> {
    if parsed.signature.is_empty() {
        return Err(TokenError::MalformedSignature);
    }
    let mut last = TokenError::BadSignature;
    for key in keys.candidates(parsed.header.kid.as_deref(), alg)? {
        match key.verify(alg, parsed.signing_input, &parsed.signature) {
            Ok(()) => return Ok(()),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// Algorithm check and signature verification for a parsed JWS of `issuer`.
pub(crate) fn verify_signature(
    parsed: &jws::Jws<'_>,
    issuer: &Issuer,
    keys: &KeySet,
) -> Result<(), TokenError> {
    let alg = allowed_algorithm(parsed, issuer)?;
    verify_with(parsed, alg, keys)
}
