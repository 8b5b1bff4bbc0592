//! Verified-token cache: a bounded map from SHA-256(token) to the verified consent.
//!
//! Keyed by a digest so no token is kept; bounded (least recently used entries go first);
//! an entry answers only inside the token's validity window (`exp` and `nbf` with the
//! issuer's skew) and only while the issuer keys it was verified with are unchanged. A hit
//! skips the signature and claims checks, never revocation or binding: the caller checks
//! those on every request.

use std::collections::BTreeMap;
use std::sync::Arc;

use sha2::{Digest, Sha256};

use super::claims::Consent;

/// Default number of entries.
pub const DEFAULT_CACHE_CAPACITY: usize = 1024;

#[derive(Debug, Clone)]
struct Entry {
    consent: Arc<Consent>,
    valid_from: u64,
    valid_until: u64,
    key_generation: u64,
    last_used: u64,
}

/// The cache. One per worker (it holds `Arc`s, not shared data).
#[derive(Debug, Clone)]
pub struct TokenCache {
    capacity: usize,
    entries: BTreeMap<[u8; 32], Entry>,
    clock: u64,
    hits: u64,
    misses: u64,
}

impl Default for TokenCache {
    fn default() -> Self {
        Self::new(DEFAULT_CACHE_CAPACITY)
    }
}

impl TokenCache {
    /// A cache of at most `capacity` entries (0 disables caching).
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            entries: BTreeMap::new(),
            clock: 0,
            hits: 0,
            misses: 0,
        }
    }

    /// The cache key of a token: its SHA-256.
    pub fn key(token: &[u8]) -> [u8; 32] {
        Sha256::digest(token).into()
    }

    /// The consent verified earlier for this token, if it is still within its validity
    /// window at `now` and was verified under `key_generation`.
    pub fn get(&mut self, key: &[u8; 32], now: u64, key_generation: u64) -> Option<Arc<Consent>> {
        self.clock = self.clock.wrapping_add(1);
        let clock = self.clock;
        let fresh = match self.entries.get_mut(key) {
            Some(e)
                if e.key_generation == key_generation
                    && now >= e.valid_from
                    && now < e.valid_until =>
            {
                e.last_used = clock;
                Some(e.consent.clone())
            }
            Some(_) => None,
            None => {
                self.misses = self.misses.wrapping_add(1);
                return None;
            }
        };
        match fresh {
            Some(c) => {
                self.hits = self.hits.wrapping_add(1);
                Some(c)
            }
            None => {
                self.entries.remove(key);
                self.misses = self.misses.wrapping_add(1);
                None
            }
        }
    }

    /// Remembers a verified consent, valid in `[valid_from, valid_until)`. When full, the
    /// expired entries go first, then the least recently used one.
    pub fn insert(
        &mut self,
        key: [u8; 32],
        consent: Arc<Consent>,
        valid_from: u64,
        valid_until: u64,
        key_generation: u64,
        now: u64,
    ) {
        if self.capacity == 0 || now >= valid_until {
            return;
        }
        if self.entries.len() >= self.capacity && !self.entries.contains_key(&key) {
            self.entries.retain(|_, e| now < e.valid_until);
            if self.entries.len() >= self.capacity
                && let Some(oldest) = self
                    .entries
                    .iter()
                    .min_by_key(|(_, e)| e.last_used)
                    .map(|(k, _)| *k)
            {
                self.entries.remove(&oldest);
            }
        }
        self.clock = self.clock.wrapping_add(1);
        self.entries.insert(
            key,
            Entry {
                consent,
                valid_from,
                valid_until,
                key_generation,
                last_used: self.clock,
            },
        );
    }

    /// Forgets every entry.
    pub fn clear(&mut self) {
        self.entries.clear();
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when there is no entry.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// `(hits, misses)` since creation.
    pub fn stats(&self) -> (u64, u64) {
        (self.hits, self.misses)
    }
}
