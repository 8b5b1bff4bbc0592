//! The consent service the example plays besides the patient API: the issuer's JWKS and
//! its Token Status Lists, both changeable at run time through admin endpoints, so
//! tests can rotate keys and revoke or suspend a consent for real, without restarting
//! anything.
//!
//! The Envoy configurations route the plugin's outgoing calls for cluster
//! `consent_service` to this same service.

use std::collections::BTreeMap;
use std::io;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes};
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use crate::data::ServiceState;
use crate::http::{error_json, flag, query_pairs};
use crate::issuer::{DEV_JWKS, STATUS_LIST_PREFIX, SigningKey};

/// Default bits per status: 2, so that valid (0), revoked (1) and suspended (2) can all
/// be set.
pub const DEFAULT_STATUS_BITS: u8 = 2;
/// Default `ttl` of the status-list tokens served, in seconds.
pub const DEFAULT_STATUS_TTL_SECONDS: u64 = 60;
/// Default number of entries in a status list (all valid at start).
pub const DEFAULT_STATUS_LIST_LEN: usize = 1024;
/// The most entries a status list may grow to (2^20, as in the draft's large examples).
pub const MAX_STATUS_LIST_LEN: usize = 1 << 20;
/// The largest JWKS `PUT /admin/jwks` accepts (1 MiB).
const JWKS_BODY_LIMIT: usize = 1024 * 1024;

const JSON: &str = "application/json";
const STATUS_LIST_MEDIA_TYPE: &str = "application/statuslist+jwt";

/// How the consent endpoints start out.
#[derive(Clone, Debug)]
pub struct ConsentConfig {
    /// The JWKS served at `/.well-known/jwks.json` until replaced. Default: the
    /// development JWKS (`examples/keys/jwks.json`).
    pub jwks: Bytes,
    /// The key status-list tokens are signed with. Default: the development ES256 key,
    /// `kid` `dev-2026-1`.
    pub signing_key: SigningKey,
    /// Bits per status in the lists served: 1, 2, 4 or 8. Default 2.
    pub status_bits: u8,
    /// `ttl` of the status-list tokens, in seconds. Default 60.
    pub status_ttl_seconds: u64,
    /// A list's URI (the `sub` of its token) is this plus its id. Default
    /// `https://consent.example.com/statuslists/`.
    pub status_uri_prefix: String,
    /// Entries of a list when it is created (all valid). Default 1024.
    pub status_list_len: usize,
    /// The lists that exist at start. Default `["1"]`; others are created by the first
    /// `PUT /admin/statuslists/{id}/{idx}`.
    pub status_lists: Vec<String>,
}

impl ConsentConfig {
    /// The defaults: the development key and JWKS, list `1` of 1024 two-bit entries.
    pub fn builtin() -> io::Result<Self> {
        let signing_key = SigningKey::dev().map_err(|e| io::Error::other(e.to_string()))?;
        Ok(Self {
            jwks: Bytes::from_static(DEV_JWKS.as_bytes()),
            signing_key,
            status_bits: DEFAULT_STATUS_BITS,
            status_ttl_seconds: DEFAULT_STATUS_TTL_SECONDS,
            status_uri_prefix: STATUS_LIST_PREFIX.to_owned(),
            status_list_len: DEFAULT_STATUS_LIST_LEN,
            status_lists: vec!["1".to_owned()],
        })
    }
}

/// The consent endpoints' state, shared by every connection.
#[derive(Clone, Debug)]
pub struct ConsentState {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    signing_key: SigningKey,
    bits: u8,
    ttl: u64,
    uri_prefix: String,
    list_len: usize,
    jwks: RwLock<Bytes>,
    /// Statuses by list id, one value per entry.
    lists: Mutex<BTreeMap<String, Vec<u8>>>,
}

fn invalid(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg.into())
}

/// A list id that is safe in a URI path segment: 1–64 of `A-Z a-z 0-9 - . _ ~`, not
/// `.` or `..`.
fn valid_list_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b))
        && id != "."
        && id != ".."
}

impl ConsentState {
    /// Checks `config` and starts from it.
    pub fn new(config: ConsentConfig) -> io::Result<Self> {
        if !matches!(config.status_bits, 1 | 2 | 4 | 8) {
            return Err(invalid("status bits must be 1, 2, 4 or 8"));
        }
        if !(1..=MAX_STATUS_LIST_LEN).contains(&config.status_list_len) {
            return Err(invalid(format!(
                "a status list holds 1 to {MAX_STATUS_LIST_LEN} entries"
            )));
        }
        if let Some(bad) = config.status_lists.iter().find(|id| !valid_list_id(id)) {
            return Err(invalid(format!(
                "status list id {bad:?} is not a safe path segment"
            )));
        }
        let lists = config
            .status_lists
            .iter()
            .map(|id| (id.clone(), vec![0u8; config.status_list_len]))
            .collect();
        Ok(Self {
            inner: Arc::new(Inner {
                signing_key: config.signing_key,
                bits: config.status_bits,
                ttl: config.status_ttl_seconds,
                uri_prefix: config.status_uri_prefix,
                list_len: config.status_list_len,
                jwks: RwLock::new(config.jwks),
                lists: Mutex::new(lists),
            }),
        })
    }

    /// The JWKS currently served.
    pub fn jwks(&self) -> Bytes {
        self.inner
            .jwks
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Replaces the JWKS served (no check: see `PUT /admin/jwks` for the checked way).
    pub fn set_jwks(&self, jwks: Bytes) {
        *self
            .inner
            .jwks
            .write()
            .unwrap_or_else(PoisonError::into_inner) = jwks;
    }

    /// The URI of list `id` (the `sub` of its token).
    pub fn status_list_uri(&self, id: &str) -> String {
        format!("{}{id}", self.inner.uri_prefix)
    }

    /// Bits per status of the lists served.
    pub fn status_bits(&self) -> u8 {
        self.inner.bits
    }

    /// The statuses of list `id`, one value per entry.
    pub fn statuses(&self, id: &str) -> Option<Vec<u8>> {
        self.lists().get(id).cloned()
    }

    /// Sets entry `idx` of list `id` to `status`, creating the list or growing it to
    /// cover `idx` as needed.
    pub fn set_status(&self, id: &str, idx: usize, status: u8) -> Result<(), &'static str> {
        if !valid_list_id(id) {
            return Err("bad_list_id");
        }
        if idx >= MAX_STATUS_LIST_LEN {
            return Err("bad_index");
        }
        let bits = self.inner.bits;
        if bits < 8 && status >> bits != 0 {
            return Err("status_too_large");
        }
        let mut lists = self.lists();
        let list = lists
            .entry(id.to_owned())
            .or_insert_with(|| vec![0u8; self.inner.list_len]);
        if idx >= list.len() {
            list.resize(idx + 1, 0);
        }
        if let Some(entry) = list.get_mut(idx) {
            *entry = status;
        }
        Ok(())
    }

    /// The status-list token of list `id`, issued at `iat` (unix seconds).
    pub fn status_list_token(&self, id: &str, iat: u64) -> Option<io::Result<String>> {
        let statuses = self.statuses(id)?;
        Some(
            self.inner
                .signing_key
                .status_list_token(
                    &statuses,
                    self.inner.bits,
                    &self.status_list_uri(id),
                    iat,
                    self.inner.ttl,
                )
                .map_err(|e| io::Error::other(e.to_string())),
        )
    }

    fn lists(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Vec<u8>>> {
        self.inner
            .lists
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

fn no_content() -> Response {
    StatusCode::NO_CONTENT.into_response()
}

/// `GET /.well-known/jwks.json`: the current JWKS.
pub(crate) async fn jwks(State(s): State<ServiceState>) -> Response {
    (
        [(CONTENT_TYPE, JSON), (CACHE_CONTROL, "no-store")],
        s.consent().jwks(),
    )
        .into_response()
}

/// Whether `doc` looks like a JWKS: an object whose `keys` is an array of objects that
/// each have a string `kty`.
fn is_jwks(doc: &[u8]) -> bool {
    let Ok(Value::Object(doc)) = serde_json::from_slice::<Value>(doc) else {
        return false;
    };
    match doc.get("keys") {
        Some(Value::Array(keys)) => keys
            .iter()
            .all(|k| k.get("kty").is_some_and(Value::is_string)),
        _ => false,
    }
}

/// `PUT /admin/jwks`: replaces the JWKS served. The body must be a JWKS, unless `?raw=1`,
/// which stores any bytes (to test how the plugin takes a broken document).
pub(crate) async fn put_jwks(
    State(s): State<ServiceState>,
    RawQuery(q): RawQuery,
    body: Body,
) -> Response {
    let Ok(body) = axum::body::to_bytes(body, JWKS_BODY_LIMIT).await else {
        return error_json(StatusCode::PAYLOAD_TOO_LARGE, "body_too_large");
    };
    let raw = query_pairs(q.as_deref()).any(|(k, v)| k == "raw" && flag(&v));
    if !raw && !is_jwks(&body) {
        return error_json(StatusCode::BAD_REQUEST, "bad_jwks");
    }
    s.consent().set_jwks(body);
    no_content()
}

/// `GET /statuslists/{id}`: the list's status-list token, issued now.
pub(crate) async fn status_list(State(s): State<ServiceState>, Path(id): Path<String>) -> Response {
    match s.consent().status_list_token(&id, unix_now()) {
        None => error_json(StatusCode::NOT_FOUND, "not_found"),
        Some(Err(_)) => error_json(StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        Some(Ok(token)) => (
            [
                (CONTENT_TYPE, STATUS_LIST_MEDIA_TYPE),
                (CACHE_CONTROL, "no-store"),
            ],
            token,
        )
            .into_response(),
    }
}

/// `PUT /admin/statuslists/{id}/{idx}` with body `0`, `1`, `2`… (below `2^bits`): sets
/// one status.
pub(crate) async fn put_status(
    State(s): State<ServiceState>,
    Path((id, idx)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let Ok(idx) = idx.parse::<usize>() else {
        return error_json(StatusCode::BAD_REQUEST, "bad_index");
    };
    let status = std::str::from_utf8(&body)
        .ok()
        .and_then(|t| t.trim().parse::<u8>().ok());
    let Some(status) = status else {
        return error_json(StatusCode::BAD_REQUEST, "bad_status");
    };
    match s.consent().set_status(&id, idx, status) {
        Ok(()) => no_content(),
        Err(code) => error_json(StatusCode::BAD_REQUEST, code),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_ids_must_be_safe_path_segments() {
        for ok in ["1", "a-b_c.d~e", &"x".repeat(64)] {
            assert!(valid_list_id(ok), "{ok}");
        }
        for bad in ["", ".", "..", "a/b", "a%2f", "é", &"x".repeat(65)] {
            assert!(!valid_list_id(bad), "{bad}");
        }
    }

    #[test]
    fn statuses_are_set_lists_grow_and_values_must_fit() {
        let s = ConsentState::new(ConsentConfig::builtin().unwrap()).unwrap();
        assert_eq!(s.statuses("1").unwrap().len(), DEFAULT_STATUS_LIST_LEN);
        assert_eq!(s.statuses("2"), None);
        s.set_status("1", 3, 1).unwrap();
        s.set_status("2", 2000, 2).unwrap();
        assert_eq!(s.statuses("1").unwrap()[3], 1);
        let two = s.statuses("2").unwrap();
        assert_eq!((two.len(), two[2000]), (2001, 2));
        assert_eq!(s.set_status("1", 0, 4), Err("status_too_large"));
        assert_eq!(s.set_status("1", MAX_STATUS_LIST_LEN, 0), Err("bad_index"));
        assert_eq!(s.set_status("..", 0, 0), Err("bad_list_id"));
    }

    #[test]
    fn bad_configurations_are_refused() {
        let mut c = ConsentConfig::builtin().unwrap();
        c.status_bits = 3;
        assert!(ConsentState::new(c).is_err());
        let mut c = ConsentConfig::builtin().unwrap();
        c.status_list_len = 0;
        assert!(ConsentState::new(c).is_err());
        let mut c = ConsentConfig::builtin().unwrap();
        c.status_lists = vec!["a/b".into()];
        assert!(ConsentState::new(c).is_err());
    }

    #[test]
    fn jwks_documents_are_recognised() {
        assert!(is_jwks(DEV_JWKS.as_bytes()));
        assert!(is_jwks(br#"{"keys":[]}"#));
        for bad in [
            &b"[]"[..],
            b"{}",
            br#"{"keys":{}}"#,
            br#"{"keys":[{"x":1}]}"#,
            b"nope",
        ] {
            assert!(!is_jwks(bad));
        }
    }
}
