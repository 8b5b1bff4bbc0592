//! Token buckets and lockouts shared by every worker of the proxy.
//!
//! The state lives in the proxy's shared data ([`SharedData::shared_get`] /
//! [`SharedData::shared_set`] with compare-and-swap), so all workers of one proxy count
//! against the same buckets. Each update reads the value with its CAS token, computes
//! the new state and writes it back with that token; a [`SharedDataError::CasMismatch`]
//! (another worker wrote in between) reads again, at most [`MAX_ATTEMPTS`] times.
//!
//! # Keys
//! A [`RateKey`] is `consentry.rl.<scope>.<hex>`: `scope` is a constant of the plugin
//! (`caller`, `subject`, …) and `<hex>` the first 16 bytes of SHA-256 of the identity,
//! so no caller or subject is stored in clear. The bucket is stored under the key, the
//! lockout under the key with `.lock` appended. Envoy never removes shared data: a
//! proxy keeps one 17-byte bucket (and 21-byte lockout) per identity it has seen.
//!
//! # Encoding (little-endian)
//! - bucket: version `1` (1 byte), tokens in micro-tokens (`u64`, one request costs
//!   1 000 000), time of the last refill in Unix milliseconds (`u64`): 17 bytes.
//! - lockout: version `1`, refusals in the current window (`u32`), the window's start
//!   and the lockout's end in Unix milliseconds (`u64` each): 21 bytes.
//!
//! A value that cannot be decoded (written by another version) counts as a fresh
//! state: a full bucket, no refusals. It is never a reason to refuse forever.
//!
//! # Refill and clocks
//! A bucket holds at most `burst` tokens and gains `rate` tokens per second, computed
//! from the milliseconds elapsed since its last refill (fractions below a micro-token
//! are dropped). Workers take `now` at slightly different moments and a clock can step
//! back: a `now` before the stored time refills nothing and keeps the stored time, so
//! time never runs backwards in a bucket and no refill is ever counted twice.
//!
//! # Failure: closed
//! This product fails closed, and so does the limiter: when the shared data refuses a
//! write ([`SharedDataError::Failed`]), [`check`] answers [`Decision::Unavailable`]
//! (the caller maps it to `dependency_unavailable`, 503); when the CAS loses
//! [`MAX_ATTEMPTS`] times in a row, [`check`] answers [`Decision::Limited`] with a
//! `Retry-After` of 1 s. Why not open, the usual choice for availability:
//! - the limiter guards personal data against scraping and enumeration, and one that
//!   silently stops limiting exactly when something is wrong is a bypass;
//! - shared data is memory inside the proxy process, not a network service: a refused
//!   write means misconfiguration or exhaustion, which must be loud, not ignored;
//! - CAS contention is per key, so losing eight times in a row means that one caller is
//!   sending concurrently at a very high rate: refusing it briefly is the limiter's job.
//!
//! Lockout bookkeeping ([`record_refusal`]) is best effort on failure: the request in
//! hand is refused anyway, so a failed write only loses one count.
//!
//! # Envoy's shared data, as relied on
//! One CAS counter for all keys (starting at 1, skipping 0); a missing key reads as
//! `None`; a write with a stale CAS fails with `CasMismatch`; a write with a CAS to a
//! missing key succeeds. A key that reads as missing is therefore created with the CAS
//! [`CREATE_CAS`], which no stored value carries in practice: the write succeeds while
//! the key is still missing and fails with `CasMismatch` if another worker created it
//! in between, so creation is a compare-and-swap too and no first request is lost.
//! (The counter would have to hand out exactly `u32::MAX` to this very key in that
//! instant for a creation to overwrite: one chance in four billion, costing one token.)

use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};

use crate::host::{HostError, SharedData, SharedDataError, unix_millis};

/// CAS attempts before [`check`] gives up (and refuses).
pub const MAX_ATTEMPTS: usize = 8;

/// The CAS written with when a key reads as missing (see the module documentation).
pub const CREATE_CAS: u32 = u32::MAX;

/// Micro-tokens per token (one request).
const MICRO: u64 = 1_000_000;
const VERSION: u8 = 1;

/// Where a caller's (or subject's) bucket lives in shared data.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RateKey(String);

impl RateKey {
    /// The key for `identity` within `scope` (a constant such as `"caller"`). The
    /// identity is hashed; the scope is kept to ASCII letters, digits, `_` and `-`.
    pub fn new(scope: &'static str, identity: &str) -> Self {
        let scope: String = scope
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-'))
            .collect();
        let mut h = Sha256::new();
        h.update(scope.as_bytes());
        h.update([0]);
        h.update(identity.as_bytes());
        let digest: [u8; 32] = h.finalize().into();
        let hex: String = digest.iter().take(16).map(|b| format!("{b:02x}")).collect();
        RateKey(format!("consentry.rl.{scope}.{hex}"))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    fn lock_key(&self) -> String {
        format!("{}.lock", self.0)
    }
}

/// A token bucket's shape: `burst` requests at once, refilled at a steady rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    requests: u32,
    seconds: u32,
    burst: u32,
}

impl Limit {
    /// `rate_per_second` requests per second on average, up to `burst` at once.
    /// `None` when either is zero (a limit that never allows anything is a
    /// configuration error, not a limit).
    pub fn per_second(rate_per_second: u32, burst: u32) -> Option<Self> {
        Self::new(rate_per_second, 1, burst)
    }

    /// `requests` per `seconds` on average (e.g. 30 per 60), up to `burst` at once.
    pub fn new(requests: u32, seconds: u32, burst: u32) -> Option<Self> {
        if requests == 0 || seconds == 0 || burst == 0 {
            return None;
        }
        Some(Self {
            requests,
            seconds,
            burst,
        })
    }

    pub fn burst(&self) -> u32 {
        self.burst
    }

    fn capacity(&self) -> u64 {
        u64::from(self.burst) * MICRO
    }

    /// Micro-tokens gained in `ms` milliseconds (exact rational arithmetic, rounded down).
    fn gained(&self, ms: u64) -> u128 {
        u128::from(ms) * u128::from(self.requests) * u128::from(MICRO)
            / (u128::from(self.seconds) * 1000)
    }

    /// Milliseconds until `micro` micro-tokens have been gained, rounded up.
    fn wait_ms(&self, micro: u64) -> u128 {
        (u128::from(micro) * u128::from(self.seconds) * 1000)
            .div_ceil(u128::from(self.requests) * u128::from(MICRO))
    }
}

/// What [`check`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Within the limit; one token was taken.
    Allowed,
    /// Over the limit: refuse with 429 and `Retry-After` (whole seconds, at least 1,
    /// rounded up: a token is there by then).
    Limited { retry_after_seconds: u64 },
    /// The shared state cannot be written: refuse (503 `dependency_unavailable`).
    Unavailable,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Bucket {
    tokens: u64,
    last_ms: u64,
}

impl Bucket {
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(17);
        out.push(VERSION);
        out.extend_from_slice(&self.tokens.to_le_bytes());
        out.extend_from_slice(&self.last_ms.to_le_bytes());
        out
    }

    fn decode(bytes: &[u8]) -> Option<Self> {
        let (&version, rest) = bytes.split_first()?;
        if version != VERSION || rest.len() != 16 {
            return None;
        }
        let (tokens, last) = rest.split_at(8);
        Some(Self {
            tokens: u64::from_le_bytes(tokens.try_into().ok()?),
            last_ms: u64::from_le_bytes(last.try_into().ok()?),
        })
    }

    /// The bucket at `now`: refilled for the time elapsed, never backwards.
    fn refilled(self, limit: &Limit, now_ms: u64) -> Self {
        let elapsed = now_ms.saturating_sub(self.last_ms);
        let tokens = u128::from(self.tokens)
            .saturating_add(limit.gained(elapsed))
            .min(u128::from(limit.capacity()));
        Self {
            tokens: u64::try_from(tokens).unwrap_or(u64::MAX),
            last_ms: self.last_ms.max(now_ms),
        }
    }
}

/// Takes one token from `key`'s bucket if it has one.
pub fn check(host: &mut dyn SharedData, key: &RateKey, limit: &Limit, now: SystemTime) -> Decision {
    let now_ms = unix_millis(now);
    for _ in 0..MAX_ATTEMPTS {
        let Ok(current) = host.shared_get(key.as_str()) else {
            return Decision::Unavailable;
        };
        let cas = current.as_ref().map_or(CREATE_CAS, |(_, cas)| *cas);
        let stored = current
            .and_then(|(bytes, _)| Bucket::decode(&bytes))
            .unwrap_or(Bucket {
                tokens: limit.capacity(),
                last_ms: now_ms,
            });
        let bucket = stored.refilled(limit, now_ms);
        if bucket.tokens < MICRO {
            // Nothing to write: the refill is computed again next time. A token is
            // there once the refill from the stored time reaches one.
            let due = u128::from(stored.last_ms) + limit.wait_ms(MICRO - stored.tokens);
            let seconds = due.saturating_sub(u128::from(now_ms)).div_ceil(1000).max(1);
            return Decision::Limited {
                retry_after_seconds: u64::try_from(seconds).unwrap_or(u64::MAX),
            };
        }
        let next = Bucket {
            tokens: bucket.tokens - MICRO,
            ..bucket
        };
        match host.shared_set(key.as_str(), &next.encode(), Some(cas)) {
            Ok(()) => return Decision::Allowed,
            Err(SharedDataError::CasMismatch) => continue,
            Err(SharedDataError::Failed) => return Decision::Unavailable,
        }
    }
    Decision::Limited {
        retry_after_seconds: 1,
    }
}

/// How many refusals lock a caller out, and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LockoutPolicy {
    /// This many refusals within `window_seconds` …
    pub refusals: u32,
    pub window_seconds: u32,
    /// … lock the caller out for this long.
    pub lock_seconds: u32,
}

/// A caller locked out until `until`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lockout {
    pub until: SystemTime,
    /// Whole seconds from the `now` it was computed at to `until`, rounded up.
    pub retry_after_seconds: u64,
}

impl Lockout {
    fn at(until_ms: u64, now_ms: u64) -> Self {
        Self {
            until: SystemTime::UNIX_EPOCH + Duration::from_millis(until_ms),
            retry_after_seconds: until_ms.saturating_sub(now_ms).div_ceil(1000).max(1),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Refusals {
    count: u32,
    window_start_ms: u64,
    locked_until_ms: u64,
}

impl Refusals {
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(21);
        out.push(VERSION);
        out.extend_from_slice(&self.count.to_le_bytes());
        out.extend_from_slice(&self.window_start_ms.to_le_bytes());
        out.extend_from_slice(&self.locked_until_ms.to_le_bytes());
        out
    }

    fn decode(bytes: &[u8]) -> Option<Self> {
        let (&version, rest) = bytes.split_first()?;
        if version != VERSION || rest.len() != 20 {
            return None;
        }
        let (count, rest) = rest.split_at(4);
        let (start, until) = rest.split_at(8);
        Some(Self {
            count: u32::from_le_bytes(count.try_into().ok()?),
            window_start_ms: u64::from_le_bytes(start.try_into().ok()?),
            locked_until_ms: u64::from_le_bytes(until.try_into().ok()?),
        })
    }
}

/// Counts one refusal of `key`'s caller. The window starts at the first refusal and
/// lasts `window_seconds`; the refusal that reaches `refusals` within it locks the
/// caller out for `lock_seconds` and returns the [`Lockout`], exactly once (so the
/// caller raises one audit alert). Refusals while locked out do not extend the lock.
/// A policy with `refusals` 0 never locks anyone out.
pub fn record_refusal(
    host: &mut dyn SharedData,
    key: &RateKey,
    policy: &LockoutPolicy,
    now: SystemTime,
) -> Option<Lockout> {
    if policy.refusals == 0 {
        return None;
    }
    let now_ms = unix_millis(now);
    let lock_key = key.lock_key();
    let window_ms = u64::from(policy.window_seconds) * 1000;
    for _ in 0..MAX_ATTEMPTS {
        let Ok(current) = host.shared_get(&lock_key) else {
            return None;
        };
        let cas = current.as_ref().map_or(CREATE_CAS, |(_, cas)| *cas);
        let mut state = current
            .and_then(|(bytes, _)| Refusals::decode(&bytes))
            .unwrap_or_default();
        if now_ms < state.locked_until_ms {
            return None;
        }
        let window_over = state.count == 0
            || now_ms.saturating_sub(state.window_start_ms) >= window_ms
            || now_ms < state.window_start_ms;
        if window_over {
            state.count = 0;
            state.window_start_ms = now_ms;
        }
        state.count = state.count.saturating_add(1);
        let locked = state.count >= policy.refusals;
        if locked {
            state.count = 0;
            state.locked_until_ms = now_ms.saturating_add(u64::from(policy.lock_seconds) * 1000);
        }
        match host.shared_set(&lock_key, &state.encode(), Some(cas)) {
            Ok(()) => return locked.then(|| Lockout::at(state.locked_until_ms, now_ms)),
            Err(SharedDataError::CasMismatch) => continue,
            Err(SharedDataError::Failed) => return None,
        }
    }
    None
}

/// The lockout in force for `key`'s caller at `now`, if any. A lockout that cannot
/// be read is an error, never "not locked out".
pub fn locked_until(
    host: &mut dyn SharedData,
    key: &RateKey,
    now: SystemTime,
) -> Result<Option<Lockout>, HostError> {
    let now_ms = unix_millis(now);
    let Some((bytes, _)) = host.shared_get(&key.lock_key())? else {
        return Ok(None);
    };
    Ok(Refusals::decode(&bytes)
        .filter(|state| now_ms < state.locked_until_ms)
        .map(|state| Lockout::at(state.locked_until_ms, now_ms)))
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::collections::HashMap;
    use std::rc::Rc;

    use super::*;

    /// Envoy's shared data, exactly: one CAS counter for all keys starting at 1; a
    /// missing key reads as `None`; a write with a stale CAS is `CasMismatch`; a
    /// write with a CAS to a missing key succeeds.
    #[derive(Default)]
    struct Store {
        values: HashMap<String, (Vec<u8>, u32)>,
        next_cas: u32,
        writes: usize,
        fail_writes: bool,
    }

    impl Store {
        fn set(
            &mut self,
            key: &str,
            value: &[u8],
            cas: Option<u32>,
        ) -> Result<(), SharedDataError> {
            if self.fail_writes {
                return Err(SharedDataError::Failed);
            }
            if let (Some(cas), Some((_, current))) = (cas.filter(|c| *c != 0), self.values.get(key))
                && cas != *current
            {
                return Err(SharedDataError::CasMismatch);
            }
            if self.next_cas == 0 {
                self.next_cas = 1;
            }
            let cas = self.next_cas;
            self.next_cas = self.next_cas.wrapping_add(1).max(1);
            self.values.insert(key.to_owned(), (value.to_vec(), cas));
            self.writes += 1;
            Ok(())
        }
    }

    type Hook = Box<dyn FnMut(&Rc<RefCell<Store>>)>;

    /// One worker: its own view of the proxy, sharing the data with the others. A
    /// hook runs after each of its reads, so a test can have another worker write
    /// between this worker's read and its CAS write.
    struct Worker {
        shared: Rc<RefCell<Store>>,
        after_get: Option<Hook>,
    }

    impl Worker {
        fn new(shared: &Rc<RefCell<Store>>) -> Self {
            Self {
                shared: Rc::clone(shared),
                after_get: None,
            }
        }
    }

    impl crate::host::SharedData for Worker {
        fn shared_get(&mut self, key: &str) -> Result<Option<(Vec<u8>, u32)>, HostError> {
            let value = self.shared.borrow().values.get(key).cloned();
            if let Some(hook) = self.after_get.as_mut() {
                hook(&self.shared);
            }
            Ok(value)
        }
        fn shared_set(
            &mut self,
            key: &str,
            value: &[u8],
            cas: Option<u32>,
        ) -> Result<(), SharedDataError> {
            self.shared.borrow_mut().set(key, value, cas)
        }
    }

    const T0: u64 = 1_795_780_800_000;

    fn at(ms: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_millis(ms)
    }

    fn setup() -> (Rc<RefCell<Store>>, Worker, RateKey) {
        let shared = Rc::new(RefCell::new(Store::default()));
        let worker = Worker::new(&shared);
        (
            shared,
            worker,
            RateKey::new("caller", "spiffe://insurer.example/claims"),
        )
    }

    fn limited(s: u64) -> Decision {
        Decision::Limited {
            retry_after_seconds: s,
        }
    }

    #[test]
    fn the_fake_behaves_like_envoy_shared_data() {
        let mut d = Store::default();
        assert_eq!(
            d.set("a", b"1", Some(42)),
            Ok(()),
            "CAS on a missing key is Ok"
        );
        assert_eq!(d.values["a"].1, 1, "the counter starts at 1");
        assert_eq!(d.set("b", b"1", None), Ok(()));
        assert_eq!(d.values["b"].1, 2, "one counter for all keys");
        assert_eq!(d.set("a", b"2", Some(2)), Err(SharedDataError::CasMismatch));
        assert_eq!(d.set("a", b"2", Some(1)), Ok(()));
        assert_eq!(d.set("a", b"3", None), Ok(()), "no CAS writes always");
    }

    #[test]
    fn keys_hold_no_identity_in_clear() {
        let key = RateKey::new("caller", "spiffe://insurer.example/claims");
        assert!(key.as_str().starts_with("consentry.rl.caller."));
        assert_eq!(key.as_str().len(), "consentry.rl.caller.".len() + 32);
        assert!(!key.as_str().contains("insurer"));
        assert_ne!(
            key,
            RateKey::new("subject", "spiffe://insurer.example/claims")
        );
        assert_eq!(
            key,
            RateKey::new("caller", "spiffe://insurer.example/claims")
        );
    }

    #[test]
    fn limits_are_valid_by_construction() {
        assert_eq!(Limit::per_second(0, 5), None);
        assert_eq!(Limit::per_second(5, 0), None);
        assert_eq!(Limit::new(1, 0, 1), None);
        assert!(Limit::new(30, 60, 5).is_some());
    }

    #[test]
    fn a_burst_is_allowed_then_refused_until_a_token_refills() {
        let (_, mut w, key) = setup();
        let limit = Limit::per_second(2, 3).unwrap(); // a token every 500 ms
        for i in 0..3 {
            assert_eq!(
                check(&mut w, &key, &limit, at(T0)),
                Decision::Allowed,
                "request {i}"
            );
        }
        assert_eq!(
            check(&mut w, &key, &limit, at(T0)),
            limited(1),
            "first refused"
        );
        assert_eq!(check(&mut w, &key, &limit, at(T0 + 499)), limited(1));
        assert_eq!(
            check(&mut w, &key, &limit, at(T0 + 500)),
            Decision::Allowed,
            "exactly 1/rate later"
        );
        assert_eq!(check(&mut w, &key, &limit, at(T0 + 500)), limited(1));
    }

    #[test]
    fn refill_is_by_elapsed_time_and_capped_at_the_burst() {
        let (_, mut w, key) = setup();
        let limit = Limit::per_second(10, 5).unwrap();
        for _ in 0..5 {
            assert_eq!(check(&mut w, &key, &limit, at(T0)), Decision::Allowed);
        }
        // 250 ms later: 2.5 tokens, so two requests.
        assert_eq!(check(&mut w, &key, &limit, at(T0 + 250)), Decision::Allowed);
        assert_eq!(check(&mut w, &key, &limit, at(T0 + 250)), Decision::Allowed);
        assert_eq!(check(&mut w, &key, &limit, at(T0 + 250)), limited(1));
        // An hour later the bucket holds the burst, not 36 000 tokens.
        let later = T0 + 3_600_000;
        for _ in 0..5 {
            assert_eq!(check(&mut w, &key, &limit, at(later)), Decision::Allowed);
        }
        assert_eq!(check(&mut w, &key, &limit, at(later)), limited(1));
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        let (_, mut w, key) = setup();
        let limit = Limit::new(1, 60, 1).unwrap(); // one a minute
        assert_eq!(check(&mut w, &key, &limit, at(T0)), Decision::Allowed);
        assert_eq!(check(&mut w, &key, &limit, at(T0)), limited(60));
        assert_eq!(
            check(&mut w, &key, &limit, at(T0 + 1)),
            limited(60),
            "59.999 s rounds up"
        );
        assert_eq!(check(&mut w, &key, &limit, at(T0 + 59_000)), limited(1));
        assert_eq!(
            check(&mut w, &key, &limit, at(T0 + 59_999)),
            limited(1),
            "never 0"
        );
        assert_eq!(
            check(&mut w, &key, &limit, at(T0 + 60_000)),
            Decision::Allowed
        );
        // 3 per second: a token every 333.3 ms, available at 334 ms.
        let (_, mut w, key) = setup();
        let limit = Limit::per_second(3, 1).unwrap();
        assert_eq!(check(&mut w, &key, &limit, at(T0)), Decision::Allowed);
        assert_eq!(check(&mut w, &key, &limit, at(T0 + 333)), limited(1));
        assert_eq!(check(&mut w, &key, &limit, at(T0 + 334)), Decision::Allowed);
    }

    #[test]
    fn a_clock_going_backwards_refills_nothing_and_counts_no_time_twice() {
        let (shared, mut w, key) = setup();
        let limit = Limit::per_second(1, 1).unwrap();
        assert_eq!(
            check(&mut w, &key, &limit, at(T0 + 10_000)),
            Decision::Allowed
        );
        assert_eq!(
            check(&mut w, &key, &limit, at(T0)),
            limited(11),
            "10 s back: 11 s by this clock"
        );
        assert_eq!(check(&mut w, &key, &limit, at(T0 + 10_999)), limited(1));
        assert_eq!(
            check(&mut w, &key, &limit, at(T0 + 11_000)),
            Decision::Allowed
        );
        let stored = Bucket::decode(&shared.borrow().values[key.as_str()].0).unwrap();
        assert_eq!(stored.last_ms, T0 + 11_000);
    }

    #[test]
    fn the_encoding_is_17_bytes_and_a_foreign_value_counts_as_fresh() {
        let (shared, mut w, key) = setup();
        let limit = Limit::per_second(1, 2).unwrap();
        check(&mut w, &key, &limit, at(T0));
        let (bytes, _) = shared.borrow().values[key.as_str()].clone();
        let mut expected = vec![1u8];
        expected.extend_from_slice(&1_000_000u64.to_le_bytes());
        expected.extend_from_slice(&T0.to_le_bytes());
        assert_eq!(bytes, expected);
        shared
            .borrow_mut()
            .set(key.as_str(), b"garbage", None)
            .unwrap();
        assert_eq!(check(&mut w, &key, &limit, at(T0)), Decision::Allowed);
        assert_eq!(check(&mut w, &key, &limit, at(T0)), Decision::Allowed);
        assert_eq!(check(&mut w, &key, &limit, at(T0)), limited(1));
    }

    #[test]
    fn two_workers_interleaving_cas_updates_never_lose_a_token() {
        let shared = Rc::new(RefCell::new(Store::default()));
        let key = RateKey::new("caller", "c");
        let limit = Limit::per_second(1, 4).unwrap();
        let mut a = Worker::new(&shared);
        let mut b = Worker::new(&shared);
        // Worker b's request lands between a's read and a's write, twice; the first
        // time both see no bucket and race to create it.
        let interfering = Rc::new(RefCell::new(0));
        let n = Rc::clone(&interfering);
        let key_b = key.clone();
        a.after_get = Some(Box::new(move |shared| {
            if *n.borrow() < 2 {
                *n.borrow_mut() += 1;
                let mut b = Worker::new(shared);
                assert_eq!(check(&mut b, &key_b, &limit, at(T0)), Decision::Allowed);
            }
        }));
        assert_eq!(check(&mut a, &key, &limit, at(T0)), Decision::Allowed);
        assert_eq!(*interfering.borrow(), 2, "a retried twice");
        a.after_get = None;
        // 4 tokens: b, b, a, and one more.
        assert_eq!(check(&mut b, &key, &limit, at(T0)), Decision::Allowed);
        assert_eq!(check(&mut b, &key, &limit, at(T0)), limited(1));
        assert_eq!(check(&mut a, &key, &limit, at(T0)), limited(1));
        let stored = Bucket::decode(&shared.borrow().values[key.as_str()].0).unwrap();
        assert_eq!(stored.tokens, 0);
    }

    #[test]
    fn persistent_contention_and_failed_writes_fail_closed() {
        let (shared, mut w, key) = setup();
        let limit = Limit::per_second(100, 100).unwrap();
        assert_eq!(check(&mut w, &key, &limit, at(T0)), Decision::Allowed);
        shared.borrow_mut().writes = 0;
        let key_b = key.clone();
        w.after_get = Some(Box::new(move |shared| {
            let mut other = Worker::new(shared);
            check(&mut other, &key_b, &limit, at(T0));
        }));
        assert_eq!(check(&mut w, &key, &limit, at(T0)), limited(1));
        assert_eq!(
            shared.borrow().writes,
            MAX_ATTEMPTS,
            "only the other worker wrote"
        );

        let (shared, mut w, key) = setup();
        shared.borrow_mut().fail_writes = true;
        assert_eq!(check(&mut w, &key, &limit, at(T0)), Decision::Unavailable);
    }

    fn lockout_policy() -> LockoutPolicy {
        LockoutPolicy {
            refusals: 3,
            window_seconds: 60,
            lock_seconds: 300,
        }
    }

    #[test]
    fn a_burst_of_refusals_locks_out_once_for_the_configured_time() {
        let (_, mut w, key) = setup();
        let p = lockout_policy();
        assert_eq!(record_refusal(&mut w, &key, &p, at(T0)), None);
        assert_eq!(record_refusal(&mut w, &key, &p, at(T0 + 30_000)), None);
        assert_eq!(locked_until(&mut w, &key, at(T0 + 30_000)).unwrap(), None);
        let lock = record_refusal(&mut w, &key, &p, at(T0 + 59_999)).unwrap();
        assert_eq!(lock.until, at(T0 + 59_999 + 300_000));
        assert_eq!(lock.retry_after_seconds, 300);
        // Reported once; more refusals while locked neither re-report nor extend.
        assert_eq!(record_refusal(&mut w, &key, &p, at(T0 + 60_000)), None);
        assert_eq!(record_refusal(&mut w, &key, &p, at(T0 + 60_001)), None);
        assert_eq!(record_refusal(&mut w, &key, &p, at(T0 + 60_002)), None);
        let now = locked_until(&mut w, &key, at(T0 + 100_000))
            .unwrap()
            .unwrap();
        assert_eq!(now.until, lock.until);
        assert_eq!(now.retry_after_seconds, 260);
        assert_eq!(
            locked_until(&mut w, &key, at(T0 + 359_998))
                .unwrap()
                .unwrap()
                .retry_after_seconds,
            1
        );
        assert_eq!(
            locked_until(&mut w, &key, at(T0 + 359_999)).unwrap(),
            None,
            "over at `until`"
        );
        // Afterwards counting starts again from zero.
        assert_eq!(record_refusal(&mut w, &key, &p, at(T0 + 360_000)), None);
        assert_eq!(locked_until(&mut w, &key, at(T0 + 360_000)).unwrap(), None);
    }

    #[test]
    fn refusals_spread_beyond_the_window_do_not_lock_out() {
        let (_, mut w, key) = setup();
        let p = lockout_policy();
        assert_eq!(record_refusal(&mut w, &key, &p, at(T0)), None);
        assert_eq!(record_refusal(&mut w, &key, &p, at(T0 + 59_000)), None);
        // The window (60 s from the first refusal) is over: this starts a new one.
        assert_eq!(record_refusal(&mut w, &key, &p, at(T0 + 60_000)), None);
        assert_eq!(record_refusal(&mut w, &key, &p, at(T0 + 61_000)), None);
        assert!(record_refusal(&mut w, &key, &p, at(T0 + 62_000)).is_some());
        // Other callers are not affected.
        let other = RateKey::new("caller", "someone else");
        assert_eq!(locked_until(&mut w, &other, at(T0 + 62_000)).unwrap(), None);
        let never = LockoutPolicy { refusals: 0, ..p };
        assert_eq!(record_refusal(&mut w, &other, &never, at(T0)), None);
    }

    #[test]
    fn two_workers_reaching_the_threshold_together_report_one_lockout() {
        let shared = Rc::new(RefCell::new(Store::default()));
        let key = RateKey::new("caller", "c");
        let p = lockout_policy();
        let mut a = Worker::new(&shared);
        assert_eq!(record_refusal(&mut a, &key, &p, at(T0)), None);
        assert_eq!(record_refusal(&mut a, &key, &p, at(T0)), None);
        // b records the third refusal between a's read and write: b locks out, a
        // retries, sees the lockout, and reports nothing.
        let reported_by_b = Rc::new(RefCell::new(None));
        let slot = Rc::clone(&reported_by_b);
        let key_b = key.clone();
        a.after_get = Some(Box::new(move |shared| {
            if slot.borrow().is_none() {
                let mut b = Worker::new(shared);
                *slot.borrow_mut() = Some(record_refusal(&mut b, &key_b, &p, at(T0 + 1)));
            }
        }));
        assert_eq!(record_refusal(&mut a, &key, &p, at(T0 + 2)), None);
        let b = reported_by_b.borrow().unwrap();
        assert_eq!(b.unwrap().until, at(T0 + 1 + 300_000));
    }

    #[test]
    fn a_failed_write_loses_the_count_but_never_panics() {
        let (shared, mut w, key) = setup();
        shared.borrow_mut().fail_writes = true;
        for _ in 0..5 {
            assert_eq!(
                record_refusal(&mut w, &key, &lockout_policy(), at(T0)),
                None
            );
        }
        assert_eq!(locked_until(&mut w, &key, at(T0)).unwrap(), None);
    }
}
