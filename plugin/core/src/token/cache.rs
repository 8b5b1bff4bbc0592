//! Verified-token cache: a bounded map from SHA-256(token) to the verified consent.
//!
//! Keyed by a digest so no token is kept; bounded (the least recently used entry goes
//! first, found in O(log n): a full cache is the steady state under new tokens);
//! an entry answers only inside the token's validity window (`exp` and `nbf` with the
//! issuer's skew) and only while the issuer keys it was verified with are unchanged. A hit
//! skips the signature and claims checks, never revocation or binding: the caller checks
//! those on every request.

use std::collections::BTreeMap;
use std::sync::Arc;

use sha2::{Digest, Sha256};

use super::claims::Consent;

/// Default number of entries (`limits.token_cache_entries`).
pub const DEFAULT_CACHE_CAPACITY: usize = 10_000;

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
    /// Whether entries keep the token's raw claims (`Consent::claims`).
    keep_claims: bool,
    entries: BTreeMap<[u8; 32], Entry>,
    /// The entries' keys by last use, oldest first (`last_used` values are unique).
    by_use: BTreeMap<u64, [u8; 32]>,
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
            keep_claims: true,
            entries: BTreeMap::new(),
            by_use: BTreeMap::new(),
            clock: 0,
            hits: 0,
            misses: 0,
        }
    }

    /// Whether verified consents keep the token's raw claims: only policies whose
    /// conditions read `claims` need them, and they are most of an entry's size.
    pub fn keeping_claims(mut self, keep: bool) -> Self {
        self.keep_claims = keep;
        self
    }

    /// True when verified consents keep the token's raw claims.
    pub fn keeps_claims(&self) -> bool {
        self.keep_claims
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
                self.by_use.remove(&e.last_used);
                self.by_use.insert(clock, *key);
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
                self.forget(key);
                self.misses = self.misses.wrapping_add(1);
                None
            }
        }
    }

    /// Remembers a verified consent, valid in `[valid_from, valid_until)`. When full, the
    /// least recently used entry goes (an expired entry is never used again, so it goes
    /// before long).
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
        self.forget(&key);
        while self.entries.len() >= self.capacity {
            let Some((_, oldest)) = self.by_use.pop_first() else {
                break;
            };
            self.entries.remove(&oldest);
        }
        self.clock = self.clock.wrapping_add(1);
        self.by_use.insert(self.clock, key);
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
        self.by_use.clear();
    }

    fn forget(&mut self, key: &[u8; 32]) {
        if let Some(e) = self.entries.remove(key) {
            self.by_use.remove(&e.last_used);
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn consent() -> Arc<Consent> {
        Arc::new(Consent {
            issuer: "i".into(),
            subject: "s".into(),
            consent_id: "c".into(),
            grantee: None,
            purposes: Vec::new(),
            domains: Vec::new(),
            actions: Vec::new(),
            authorization_details: Vec::new(),
            delegations: Vec::new(),
            issued_at: None,
            not_before: None,
            expires_at: 100,
            status: None,
            cnf_x5t_s256: None,
            claims: serde_json::Value::Null,
        })
    }

    fn key(n: u8) -> [u8; 32] {
        [n; 32]
    }

    #[test]
    fn a_full_cache_drops_the_least_recently_used_entry() {
        let mut c = TokenCache::new(3);
        for n in 1..=3 {
            c.insert(key(n), consent(), 0, 100, 1, 10);
        }
        assert!(c.get(&key(1), 10, 1).is_some());
        c.insert(key(4), consent(), 0, 100, 1, 10);
        assert_eq!(c.len(), 3);
        assert!(
            c.get(&key(2), 10, 1).is_none(),
            "2 was the least recently used"
        );
        for n in [1, 3, 4] {
            assert!(c.get(&key(n), 10, 1).is_some(), "{n}");
        }
        // Re-inserting a key replaces its entry; the size stays bounded.
        c.insert(key(3), consent(), 0, 100, 1, 10);
        assert_eq!(c.len(), 3);
        assert_eq!(c.by_use.len(), 3);
    }

    #[test]
    fn entries_answer_only_in_their_window_and_key_generation() {
        let mut c = TokenCache::new(8);
        c.insert(key(1), consent(), 5, 20, 1, 10);
        assert!(c.get(&key(1), 4, 1).is_none(), "before nbf");
        c.insert(key(1), consent(), 5, 20, 1, 10);
        assert!(c.get(&key(1), 10, 2).is_none(), "other key generation");
        c.insert(key(1), consent(), 5, 20, 1, 10);
        assert!(c.get(&key(1), 20, 1).is_none(), "at exp");
        assert!(
            c.is_empty() && c.by_use.is_empty(),
            "stale entries are dropped"
        );
        c.insert(key(2), consent(), 5, 20, 1, 20);
        assert!(c.is_empty(), "an expired token is not cached");
    }

    #[test]
    fn many_new_tokens_keep_the_cache_at_its_capacity() {
        let mut c = TokenCache::new(100);
        for n in 0..10_000u32 {
            let mut k = [0; 32];
            k[..4].copy_from_slice(&n.to_le_bytes());
            c.insert(k, consent(), 0, 100, 1, 10);
            assert!(c.get(&k, 10, 1).is_some());
        }
        assert_eq!((c.len(), c.by_use.len()), (100, 100));
    }
}
