//! Field-by-field redaction of JSON bodies (responses, and requests for minimisation).
//!
//! # The pass
//! [`redact`] takes a complete body and walks it once, left to right, with a checked
//! cursor and an explicit stack of open containers (bounded by [`Limits::max_depth`];
//! nothing recurses). It validates strictly as it goes (RFC 8259: grammar, string
//! escapes, UTF-8, surrogate pairs, number syntax, literals, whitespace) and builds the
//! output by copying untouched spans of the input in bulk, so everything no action
//! touches comes out byte for byte: numbers keep their exact text (`120.50`, `1e3`,
//! `-0.0`, `12345678901234567890`), keys keep their order and spelling, whitespace
//! stays. There is no document tree and no allocation per untouched value; a key is
//! unescaped (into one reused buffer) only when it contains a backslash and the plan
//! has a literal name to compare it with.
//!
//! # What a plan does
//! A [`Plan`] is built once from `(FieldPath, FieldAction)` rules and an
//! [`Unclassified`] default. For every object member (matched by its *unescaped* key:
//! `"s\u0073n"` is `ssn`; by the key's case fold where a path ignores case, so
//! `"\u017Fsn"` is `ssn` there too) and every array element (the step `[*]`):
//! - a member whose name contains a control character is removed (or the body
//!   refused), whatever would classify it: see [`ControlKeys`];
//! - the rule whose path matches that exact location and takes precedence applies
//!   its action (a literal name beats `.*`/`[*]` at the first step where two
//!   explicit paths differ; `..name` paths, which match at any depth, rank after
//!   explicit paths that name the member, and the strictest of them wins: see
//!   [`Plan`]);
//! - with no rule there, but rules that can match inside the value, the container
//!   is kept and its members/elements are classified in turn (unless it is a shell
//!   that ends empty: see below);
//! - with nothing at or below it, the default applies: the `Keep`/`Remove` of the
//!   nearest enclosing container that has one, else the plan's `Unclassified`
//!   action. An array element is classified like a member, so under
//!   `Unclassified::Remove` an element with nothing classified at or below it is
//!   dropped from its array.
//! - `Keep` and `Remove` nest, the nearest rule winning: `Keep` on `$.patient` with
//!   `Remove` on `$.patient.ssn` never releases the SSN, and `Remove` on
//!   `$.identity` with `Generalise` on `$.identity.dob` releases `{"dob":"1984"}`
//!   and nothing else of it. Every other action on a container transforms the whole
//!   value (hash or encrypt `$.a` and rules below `$.a` have nothing left to do).
//! - A container (object or array, member or element, at any depth) that is kept
//!   only because rules below it might release something is a *shell*: the pass
//!   descends into it under a removing scope (the nearest `Keep`/`Remove` rule on it
//!   or above it is a `Remove`, or there is none and the plan's default is
//!   `Unclassified::Remove`). A shell that ends with nothing written inside it (no
//!   member or element kept or transformed) is removed whole, the member with its
//!   key or the array element, exactly as if its scope had removed it; removing
//!   shells can leave their parent shell empty, which then goes too (`[{},{}]` of
//!   shells goes, and its parent with it if that held nothing else). So `Remove` on
//!   `$.billing` with `Hash` on `$.billing.invoices[*].ref` turns
//!   `{"billing":{"invoices":[{"id":1},{"id":2}]},"k":0}` into `{"k":0}`: neither the
//!   number of invoices nor the presence of `billing` shows. Released containers (in
//!   a `Keep` scope, or under the plan's `Unclassified::Keep` with no `Remove` above
//!   them) are not shells: an empty object or array they release stays exactly as
//!   the input has it, and they stay themselves even when the rules below them
//!   leave them empty.
//!
//! Every occurrence of a duplicate key is handled by the same rule (there is no "last
//! one wins" to hide behind), and so is every spelling of a key that a
//! case-insensitive path matches; whether a shell is removed is decided per
//! occurrence.
//! Removing members keeps the output valid JSON (commas follow the removal, down to
//! `{}`); the root container itself is never removed (a document all of whose members
//! are removed becomes `{}` or `[]`), and a scalar document under
//! `Unclassified::Remove` becomes `null`.
//!
//! Actions other than `Keep`/`Remove` replace the value with a JSON string: see
//! [`FieldAction`]. `Encrypt` makes one key agreement per call (lazily, at the first
//! encrypted field) and a fresh random IV per field; see [`RecipientKey`].
//!
//! # Refused (the whole body: the caller withholds the response)
//! Invalid JSON, invalid UTF-8 or a lone surrogate escape, a byte-order mark, bytes
//! after the value, nesting deeper than `max_depth`, a body larger than `max_bytes`,
//! a missing pseudonymisation key or recipient, an unusable random source, and, when
//! the plan says so, a member name with a control character. Each is a
//! [`RedactError`]; none says anything about the body's content beyond an offset.
//!
//! # Fails closed (the value only)
//! An action that does not fit its value (mask an object, generalise a string that is
//! not a date, bucket a non-number or a number too large to bucket) removes the value
//! instead and is counted in [`Report`] as a fallback.
//!
//! # Audit
//! [`Report`] counts, per rule index and per action, what was done, how many
//! unclassified members were removed and how many empty shells were dropped; it never
//! holds a value.

mod engine;
mod fold;
mod jwe;
mod path;
mod plan;
pub(crate) mod syntax;
mod transform;

use std::fmt;

pub use fold::fold;
pub use jwe::{KeyError, MIN_SECRET_LEN, RecipientKey};
pub use path::{FieldPath, PathError, PathStep};
pub use plan::{
    ControlKeys, FieldAction, Generalisation, HashEncoding, MAX_STATES, Plan, PlanError,
    Unclassified, valid_key_id,
};

/// Size and nesting limits for one body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Bodies longer than this are refused ([`RedactError::TooLarge`]).
    pub max_bytes: usize,
    /// Containers nested deeper than this are refused ([`RedactError::TooDeep`]);
    /// `[[1]]` has depth 2.
    pub max_depth: usize,
}

/// Pseudonymisation secrets by id, newest first. `Debug` shows ids only.
#[derive(Clone, Default)]
pub struct KeyRing {
    keys: Vec<(String, Vec<u8>)>,
}

impl fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.keys.iter().map(|(id, _)| id))
            .finish()
    }
}

impl KeyRing {
    /// An empty ring.
    pub fn new() -> KeyRing {
        KeyRing::default()
    }

    /// Adds a key, older than those already in the ring. Ids are 1 to 64 of ASCII
    /// letters, digits, `.`, `_`, `-` and unique; secrets have at least
    /// [`MIN_SECRET_LEN`] bytes.
    pub fn with_key(mut self, id: &str, secret: &[u8]) -> Result<KeyRing, KeyError> {
        if !plan::valid_key_id(id) {
            return Err(KeyError::BadKeyId);
        }
        if self.get(id).is_some() {
            return Err(KeyError::DuplicateKeyId);
        }
        if secret.len() < MIN_SECRET_LEN {
            return Err(KeyError::ShortSecret);
        }
        self.keys.push((id.to_owned(), secret.to_vec()));
        Ok(self)
    }

    /// The secret with this id.
    pub fn get(&self, id: &str) -> Option<&[u8]> {
        self.keys
            .iter()
            .find(|(k, _)| k == id)
            .map(|(_, s)| s.as_slice())
    }

    /// The newest key's id and secret.
    pub fn newest(&self) -> Option<(&str, &[u8])> {
        self.keys.first().map(|(k, s)| (k.as_str(), s.as_slice()))
    }
}

/// What one call needs besides the plan and the body.
pub struct RedactContext<'a> {
    /// Secrets for `Pseudonymise`, by key id.
    pub pseudonym_keys: &'a KeyRing,
    /// The party receiving the data: pseudonyms are made per grantee when set.
    pub grantee: Option<&'a str>,
    /// The public key that `Encrypt` encrypts to.
    pub recipient: Option<&'a RecipientKey>,
    /// Fills a buffer with cryptographically secure random bytes (ephemeral keys and
    /// IVs for `Encrypt`; nothing else uses it).
    pub random: &'a mut dyn FnMut(&mut [u8]),
}

/// A redacted body and what was done to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redacted {
    pub body: Vec<u8>,
    pub report: Report,
}

/// Counts for the audit trail; never values.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Per rule, by its index in the plan.
    pub rules: Vec<RuleCount>,
    /// Per action actually applied.
    pub actions: ActionCounts,
    /// Members and elements removed by the plan's `Unclassified::Remove` because no
    /// rule at or above them classified them (plus a scalar document replaced by
    /// `null`). Those a container's `Remove` drops count for that rule.
    pub unclassified_removed: u64,
    /// Shells (containers kept only for what rules below them might release; see the
    /// module documentation) removed because nothing inside them was released. Each
    /// one counts, nested ones too: `"l":[{},{}]` of shells is 3. They count here
    /// only, not in `actions.removed` or `unclassified_removed`; what was removed
    /// inside them counts as usual.
    pub shells_pruned: u64,
    /// Members removed because their names contain a control character (see
    /// [`ControlKeys`]), whatever classified them; they count here only.
    pub control_keys_removed: u64,
}

/// How often one rule matched, and how often its action did not fit and the value
/// was removed instead.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RuleCount {
    pub matched: u64,
    pub fallbacks: u64,
}

/// Values per action applied. A fallback counts in `fallback_removed` only.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ActionCounts {
    pub kept: u64,
    pub removed: u64,
    pub masked: u64,
    pub hashed: u64,
    pub pseudonymised: u64,
    pub generalised: u64,
    pub encrypted: u64,
    pub fallback_removed: u64,
}

impl Report {
    fn for_rules(count: usize) -> Report {
        Report {
            rules: vec![RuleCount::default(); count],
            ..Report::default()
        }
    }

    fn matched(&mut self, rule: u32) {
        if let Some(c) = usize::try_from(rule)
            .ok()
            .and_then(|i| self.rules.get_mut(i))
        {
            c.matched = c.matched.saturating_add(1);
        }
    }

    fn fallback(&mut self, rule: u32) {
        if let Some(c) = usize::try_from(rule)
            .ok()
            .and_then(|i| self.rules.get_mut(i))
        {
            c.fallbacks = c.fallbacks.saturating_add(1);
        }
        self.actions.fallback_removed = self.actions.fallback_removed.saturating_add(1);
    }
}

/// Why a body could not be redacted. The caller then withholds it whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RedactError {
    /// Not JSON (RFC 8259) at this byte offset: a syntax error, a bad escape, a
    /// control character in a string, an incomplete document, or bytes after it.
    InvalidJson { offset: usize },
    /// Not Unicode at this byte offset: invalid UTF-8, or a `\u` escape of a lone
    /// surrogate.
    InvalidUtf8 { offset: usize },
    /// The body starts with a UTF-8 byte-order mark (RFC 8259 §8.1 forbids sending one).
    ByteOrderMark,
    /// Containers are nested deeper than [`Limits::max_depth`].
    TooDeep,
    /// The body is longer than [`Limits::max_bytes`].
    TooLarge,
    /// A rule pseudonymises with a key id the key ring lacks, or encrypts with no
    /// recipient key in the context.
    MissingKey,
    /// The grantee contains a NUL byte, which would make per-grantee pseudonyms
    /// ambiguous.
    InvalidGrantee,
    /// The random source gave no valid P-256 scalar in several draws, or repeated an
    /// IV within one body.
    RandomFailure,
    /// An object member's name at this byte offset contains a control character, and
    /// the plan withholds such bodies ([`ControlKeys::Withhold`]).
    ControlKey { offset: usize },
}

impl fmt::Display for RedactError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RedactError::InvalidJson { offset } => write!(f, "invalid JSON at byte {offset}"),
            RedactError::InvalidUtf8 { offset } => write!(f, "invalid Unicode at byte {offset}"),
            RedactError::ByteOrderMark => f.write_str("the body starts with a byte-order mark"),
            RedactError::TooDeep => f.write_str("the body is nested too deeply"),
            RedactError::TooLarge => f.write_str("the body is too large"),
            RedactError::MissingKey => f.write_str("a key the plan needs is not configured"),
            RedactError::InvalidGrantee => f.write_str("the grantee contains a NUL byte"),
            RedactError::RandomFailure => f.write_str("the random source is unusable"),
            RedactError::ControlKey { offset } => {
                write!(f, "a member name at byte {offset} has a control character")
            }
        }
    }
}

impl std::error::Error for RedactError {}

/// Redacts one complete JSON body with `plan`; see the module documentation.
pub fn redact(
    plan: &Plan,
    body: &[u8],
    limits: Limits,
    cx: &mut RedactContext<'_>,
) -> Result<Redacted, RedactError> {
    engine::redact(plan, body, limits, cx)
}

/// The first, remove-only API, kept while its callers move to [`Plan`] and
/// [`redact`]: it removes the listed paths and keeps everything else
/// (`Unclassified::Keep`).
#[derive(Debug, Clone)]
pub struct RedactionPlan {
    plan: Result<Plan, PlanError>,
    empty: bool,
}

impl Default for RedactionPlan {
    fn default() -> Self {
        RedactionPlan::remove_all(Vec::new())
    }
}

impl RedactionPlan {
    pub fn remove_all(paths: Vec<FieldPath>) -> Self {
        let empty = paths.is_empty();
        let rules = paths
            .into_iter()
            .map(|p| (p, FieldAction::Remove))
            .collect();
        Self {
            plan: Plan::build(rules, Unclassified::Keep),
            empty,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.empty
    }

    /// Redacts a whole JSON body. A plan that failed to build refuses every body.
    pub fn apply(
        &self,
        body: &[u8],
        max_bytes: usize,
        max_depth: usize,
    ) -> Result<Vec<u8>, RedactError> {
        let plan = self.plan.as_ref().map_err(|_| RedactError::MissingKey)?;
        let keys = KeyRing::new();
        // Remove-only plans never draw randomness.
        let mut no_random = |buf: &mut [u8]| buf.fill(0);
        let mut cx = RedactContext {
            pseudonym_keys: &keys,
            grantee: None,
            recipient: None,
            random: &mut no_random,
        };
        let limits = Limits {
            max_bytes,
            max_depth,
        };
        redact(plan, body, limits, &mut cx).map(|r| r.body)
    }
}

#[cfg(test)]
mod tests;
