//! A plan: classifications compiled once into a small deterministic automaton over
//! path steps, so the pass looks up each key once (a hash probe) and never re-walks
//! the rule list.
//!
//! The paths form a trie (a nondeterministic automaton: `.*` and `[*]` edges, and for
//! `..name` a node that loops on every step before its name), and subset
//! construction turns it into one deterministic state per set of trie nodes that can
//! match one location. A state looks a member up by its exact name first; only a
//! state that case-insensitive names lead from folds the name and looks again, so a
//! plan without them costs what it did before they existed. Likewise only the states
//! inside a `..` loop are live everywhere below them.

use std::cmp::Ordering;
use std::fmt;

use super::fold::fold;
use super::path::{FieldPath, PathStep};

/// What to do with a value at a classified location.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FieldAction {
    /// Release the value as it is. On a container that has classifications below
    /// it, those still apply (a `Keep` never releases a field classified otherwise)
    /// and the container's other members/elements are released.
    Keep,
    /// Drop the member (or array element) from its container. On a container that
    /// has classifications below it, the container stays with what those release,
    /// and its other members/elements are dropped; if they release nothing, it is
    /// dropped whole (an empty shell would still show that it was there).
    Remove,
    /// Replace a string or number by a JSON string in which every character, except the
    /// first `keep_first` and last `keep_last` ones, is `mask_char`. Characters are
    /// Unicode scalar values of the unescaped string (or of the number's text). With
    /// `keep_separators`, ASCII characters that are neither letters nor digits
    /// (`-`, ` `, `.`, `@`, ...) are kept as they are. When the kept ends would leave
    /// no other character masked, they are masked too: a mask never reveals a whole
    /// value (only its separators and length).
    Mask {
        keep_first: usize,
        keep_last: usize,
        mask_char: char,
        keep_separators: bool,
    },
    /// Replace the value by the SHA-256 of the unescaped string (for strings) or of
    /// the exact JSON text (numbers, literals, containers), as a JSON string.
    Hash { encoding: HashEncoding },
    /// Replace the value by `"ps_<key_id>_<base64url of 16 bytes>"`: the first 16
    /// bytes of HMAC-SHA-256 under the pseudonymisation key `key_id`, over
    /// `grantee || 0x00 || value` when the context names a grantee (two grantees
    /// cannot join their datasets), else over `value`; `value` is as for `Hash`.
    Pseudonymise { key_id: String },
    /// Coarsen a date or a number; see [`Generalisation`].
    Generalise(Generalisation),
    /// Replace the value by a JWE compact serialisation (ECDH-ES, A256GCM) of its
    /// exact JSON text, encrypted to the context's recipient key.
    Encrypt,
}

/// How a hash is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HashEncoding {
    /// 64 lowercase hexadecimal digits.
    Hex,
    /// 43 characters of unpadded base64url.
    Base64Url,
}

/// How [`FieldAction::Generalise`] coarsens a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Generalisation {
    /// A string `YYYY-MM-DD` or an RFC 3339 date-time becomes `"YYYY"`.
    DateToYear,
    /// A string `YYYY-MM-DD` or an RFC 3339 date-time becomes `"YYYY-MM"`.
    DateToYearMonth,
    /// A number `v` becomes the string `"lo-hi"` with `lo = floor(v / width) * width`
    /// and `hi = lo + width` (so `74` with width 10 is `"70-80"`).
    NumberBucket { width: u64 },
}

/// What happens to members and elements that no classification covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Unclassified {
    /// Drop them (the strict default).
    #[default]
    Remove,
    /// Release them.
    Keep,
}

/// What the pass does with an object member whose name contains a control character
/// (Unicode category Cc: U+0000 to U+001F, U+007F to U+009F, written raw or escaped).
/// Consumers disagree about such names (C strings end at U+0000, so `"ssn\u0000x"`
/// can bind to `ssn`), so such a member is never released, whatever would classify
/// it: no path can name it (paths refuse control characters), and released by a
/// wildcard or a default it could stand in for a field classified elsewhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ControlKeys {
    /// Drop the member (and count it in `Report::control_keys_removed`).
    #[default]
    Remove,
    /// Refuse the whole body ([`super::RedactError::ControlKey`]).
    Withhold,
}

/// Why a plan could not be built. Indexes are positions in the rule list given to
/// [`Plan::build`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PlanError {
    /// Two rules name the same path with different actions.
    Conflict { first: usize, second: usize },
    /// A rule's path has no step (it would name the whole document).
    EmptyPath { rule: usize },
    /// A `Pseudonymise` key id is empty, longer than 64 bytes, or has characters
    /// other than ASCII letters, digits, `.`, `_`, `-`.
    BadKeyId { rule: usize },
    /// A `NumberBucket` width of 0.
    ZeroWidth { rule: usize },
    /// The rules' wildcards combine into more distinct locations than a plan may
    /// track (see [`MAX_STATES`]).
    TooComplex,
}

impl fmt::Display for PlanError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PlanError::Conflict { first, second } => write!(
                f,
                "rules {first} and {second} name the same path with different actions"
            ),
            PlanError::EmptyPath { rule } => write!(f, "rule {rule} names the whole document"),
            PlanError::BadKeyId { rule } => {
                write!(f, "rule {rule}: a key id is 1 to 64 of A-Z a-z 0-9 . _ -")
            }
            PlanError::ZeroWidth { rule } => write!(f, "rule {rule}: a bucket width must be > 0"),
            PlanError::TooComplex => write!(
                f,
                "the rules' wildcards combine into more than {MAX_STATES} locations"
            ),
        }
    }
}

impl std::error::Error for PlanError {}

/// The most distinct locations (automaton states) one plan may track.
pub const MAX_STATES: usize = 16_384;

/// Index of an automaton state. State 0 is dead: nothing matches there or below.
pub(crate) type StateId = u32;
pub(crate) const DEAD: StateId = 0;
pub(crate) const ROOT: StateId = 1;

/// Member names and the state each leads to, with an open-addressing index by
/// [`key_hash`].
#[derive(Debug, Clone, Default)]
pub(crate) struct Names {
    entries: Vec<(Box<[u8]>, StateId)>,
    /// Entries are index + 1, 0 is empty; the length is a power of two, at least
    /// twice the entries.
    index: Vec<u32>,
}

impl Names {
    const EMPTY: Names = Names {
        entries: Vec::new(),
        index: Vec::new(),
    };

    fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    #[inline]
    fn get(&self, key: &[u8]) -> Option<StateId> {
        let mask = self.index.len().wrapping_sub(1);
        let mut slot = key_hash(key) & mask;
        // The table is never full, so an empty slot ends every probe sequence.
        for _ in 0..self.index.len() {
            match self.index.get(slot).copied() {
                Some(0) | None => break,
                Some(entry) => {
                    let found = usize::try_from(entry - 1)
                        .ok()
                        .and_then(|i| self.entries.get(i))
                        .filter(|(name, _)| name.as_ref() == key);
                    if let Some((_, to)) = found {
                        return Some(*to);
                    }
                }
            }
            slot = slot.wrapping_add(1) & mask;
        }
        None
    }

    fn build_index(&mut self) {
        let size = self
            .entries
            .len()
            .saturating_mul(2)
            .next_power_of_two()
            .max(2);
        self.index = vec![0; size];
        let mask = size - 1;
        for (i, (name, _)) in self.entries.iter().enumerate() {
            let mut slot = key_hash(name) & mask;
            while self.index.get(slot).is_some_and(|&e| e != 0) {
                slot = slot.wrapping_add(1) & mask;
            }
            if let (Some(e), Ok(v)) = (self.index.get_mut(slot), u32::try_from(i + 1)) {
                *e = v;
            }
        }
    }
}

#[derive(Debug, Clone, Default)]
pub(crate) struct State {
    /// Member names matched exactly. Each entry's state includes what the name's
    /// fold leads to in `folded`: an exact hit needs no second lookup.
    exact: Names,
    /// Case folds of names matched case-insensitively (names not in `exact`).
    folded: Names,
    /// Where a member in neither table leads (through `.*` steps and `..` loops).
    other_member: StateId,
    /// Where an array element leads.
    element: StateId,
    /// The rule that classifies this exact location (the one that takes precedence).
    pub(crate) rule: Option<u32>,
}

impl State {
    /// True when some classification may match a member of an object here.
    pub(crate) fn object_live(&self) -> bool {
        !self.exact.is_empty() || !self.folded.is_empty() || self.other_member != DEAD
    }

    /// True when some classification may match an element of an array here.
    pub(crate) fn array_live(&self) -> bool {
        self.element != DEAD
    }

    /// True when the member's name is needed to pick the next state.
    pub(crate) fn needs_key(&self) -> bool {
        !self.exact.is_empty() || !self.folded.is_empty()
    }

    /// True when a name missing from the exact table must be folded and looked up
    /// again ([`State::member_folded`]).
    pub(crate) fn folds(&self) -> bool {
        !self.folded.is_empty()
    }

    /// The next state for a member of this exact name, if the name is listed.
    pub(crate) fn member_exact(&self, key: &[u8]) -> Option<StateId> {
        self.exact.get(key)
    }

    /// The next state for a member whose name is not listed exactly and folds to
    /// `folded`.
    pub(crate) fn member_folded(&self, folded: &[u8]) -> StateId {
        self.folded.get(folded).unwrap_or(self.other_member)
    }

    /// The next state for a member whose name is neither listed nor folded.
    pub(crate) fn other_member(&self) -> StateId {
        self.other_member
    }

    /// The next state for a member of this name, in a state that does not fold.
    #[cfg(test)]
    pub(crate) fn member(&self, key: &[u8]) -> StateId {
        self.exact.get(key).unwrap_or(self.other_member)
    }

    pub(crate) fn element(&self) -> StateId {
        self.element
    }
}

/// Classifications compiled for the pass. Built once (at configuration load) by
/// [`Plan::build`]; cheap to share.
///
/// Semantics (the pass applies them to every member and every array element):
/// - A location is classified by a rule whose path matches it exactly: `.name`
///   matches a member by its unescaped name (by its case fold for
///   [`FieldPath::any_case`] paths), `.*` any member, `[*]` any element, and `..name`
///   any number of steps (none included) and then the member `name`, so `$..ssn`
///   matches `ssn` at every depth, inside objects and arrays.
/// - When several rules match one location, one takes precedence:
///   1. Explicit paths (without `..`) compare step by step: at the first step where
///      they differ, a name beats a wildcard (`$.a.*` beats `$.*.b` at `$.a.b`).
///   2. An explicit path beats an any-depth path, unless it is all wildcards before
///      its last step and its last step is a wildcard where the any-depth path's
///      names the member (`$..ssn` beats `$.*` and `$.*.*`, never `$.a.*`, `$.*.ssn`
///      or `$.patient.ssn`). (Read `..ssn` as wildcards up to a literal last step,
///      and rule 1 decides.) So an explicit path is how one occurrence is released
///      from what an any-depth path does everywhere else.
///   3. Between any-depth paths (and paths rules 1 and 2 leave equal, which only
///      case-insensitive names can make), the one naming the member with its last
///      step, then the **strictest** action: remove, pseudonymise, mask (fewer kept
///      characters first), generalise (year, then year and month, then wider
///      buckets first), hash, encrypt, keep; then the rule listed first.
/// - Identical paths with different actions are refused ([`PlanError::Conflict`]);
///   identical paths with the same action count as the first of them. (Two
///   case-insensitive names with the same fold are identical.)
/// - A container with no rule of its own but with rules that can match below it is
///   kept (as a container) and the pass descends into it; its members and elements
///   are classified in turn.
/// - A member or element with no rule at its location and none that can match below
///   it gets the default: the `Keep`/`Remove` of the nearest enclosing container
///   that has one, else the plan's [`Unclassified`] action. Array elements are
///   treated exactly like members (their path step is `[*]`), so under
///   `Unclassified::Remove` an element with nothing classified at or below it is
///   dropped from its array.
/// - `Keep` and `Remove` nest (the nearest rule wins): `Remove` on `$.a` with a
///   `Generalise` on `$.a.dob` gives `"a":{"dob":"1984"}`, and drops `a` whole when
///   it has no `dob` (a container kept under a removing scope only for what rules
///   below it release goes when they release nothing). Every other action on a
///   container transforms the whole value (hashing or encrypting `$.a` covers
///   everything in it, whatever rules name `$.a.b`).
#[derive(Debug, Clone)]
pub struct Plan {
    rules: Vec<(FieldPath, FieldAction)>,
    unclassified: Unclassified,
    control_keys: ControlKeys,
    states: Vec<State>,
}

#[derive(Default)]
struct TrieNode {
    /// Exact names, sorted.
    members: Vec<(String, usize)>,
    /// Folds of case-insensitive names, sorted.
    folded: Vec<(String, usize)>,
    any_member: Option<usize>,
    any_element: Option<usize>,
    /// The `..` node below this one: it loops on every member and element, and the
    /// names after `..` lead from it. Every set holding this node holds it too (the
    /// loop may take no step).
    descendant: Option<usize>,
    rule: Option<usize>,
}

/// Inserts `name` into a sorted edge list, or finds it; `next` is the node a new edge
/// leads to.
fn edge(list: &mut Vec<(String, usize)>, name: &str, next: usize) -> usize {
    match list.binary_search_by(|(n, _)| n.as_str().cmp(name)) {
        Ok(i) => list.get(i).map_or(next, |m| m.1),
        Err(i) => {
            list.insert(i, (name.to_owned(), next));
            next
        }
    }
}

fn lookup(list: &[(String, usize)], name: &str) -> Option<usize> {
    list.binary_search_by(|(n, _)| n.as_str().cmp(name))
        .ok()
        .and_then(|i| list.get(i))
        .map(|m| m.1)
}

impl Plan {
    /// Compiles classifications (in order: a rule's index is its position here, and
    /// the report counts by it) with the default for unclassified values.
    pub fn build(
        rules: Vec<(FieldPath, FieldAction)>,
        unclassified: Unclassified,
    ) -> Result<Plan, PlanError> {
        // 1. A trie of the paths; identical paths (names compared by their folds where
        //    they ignore case) meet at one node.
        let mut trie = vec![TrieNode::default()];
        for (index, (path, action)) in rules.iter().enumerate() {
            check_action(index, action)?;
            if path.0.is_empty() {
                return Err(PlanError::EmptyPath { rule: index });
            }
            let mut node = 0usize;
            for step in &path.0 {
                if step.is_descendant() {
                    node = descendant_of(&mut trie, node)?;
                }
                let next = trie.len();
                let current = trie.get_mut(node).ok_or(PlanError::TooComplex)?;
                let slot = match step {
                    PathStep::Member(name) | PathStep::Descendant(name) => {
                        edge(&mut current.members, name, next)
                    }
                    PathStep::MemberAnyCase(name) | PathStep::DescendantAnyCase(name) => {
                        edge(&mut current.folded, &fold(name), next)
                    }
                    PathStep::AnyMember => *current.any_member.get_or_insert(next),
                    PathStep::AnyElement => *current.any_element.get_or_insert(next),
                };
                if slot == next {
                    trie.push(TrieNode::default());
                }
                node = slot;
            }
            let end = trie.get_mut(node).ok_or(PlanError::TooComplex)?;
            match end.rule {
                None => end.rule = Some(index),
                Some(first) => {
                    let same = rules.get(first).map(|(_, a)| a) == Some(action);
                    if !same {
                        return Err(PlanError::Conflict {
                            first,
                            second: index,
                        });
                    }
                }
            }
        }

        // 2. Subset construction: a state is the set of trie nodes that match one
        //    location. Sets are kept sorted, so equal sets are one state. (Sorted
        //    vectors rather than maps and sorts: this runs once, and the .wasm stays
        //    smaller.)
        let mut states = vec![State::default(), State::default()];
        let mut ids: Vec<(Vec<usize>, StateId)> = vec![(Vec::new(), DEAD)];
        let mut queue = Vec::new();
        // The first state made is the root's (`ROOT`).
        intern([0usize].into_iter(), &trie, &mut ids, &mut queue)?;
        while let Some((set, id)) = queue.pop() {
            let nodes: Vec<&TrieNode> = set.iter().filter_map(|&n| trie.get(n)).collect();
            let others: Vec<usize> = nodes.iter().filter_map(|n| n.any_member).collect();
            let mut state = State {
                rule: precedent(&nodes, &rules),
                ..State::default()
            };
            // Case-insensitive names: by fold, what they lead to besides `.*`.
            let mut folds: Vec<(&str, Vec<usize>)> = Vec::new();
            for (name, to) in nodes.iter().flat_map(|n| n.folded.iter()) {
                match folds.binary_search_by(|(f, _)| (*f).cmp(name.as_str())) {
                    Ok(i) => {
                        if let Some((_, targets)) = folds.get_mut(i) {
                            targets.push(*to);
                        }
                    }
                    Err(i) => folds.insert(i, (name.as_str(), vec![*to])),
                }
            }
            let mut names: Vec<&str> = Vec::new();
            for (name, _) in nodes.iter().flat_map(|n| n.members.iter()) {
                if let Err(i) = names.binary_search(&name.as_str()) {
                    names.insert(i, name);
                }
            }
            for name in names {
                // An exact name also matches the case-insensitive names it folds to.
                let folded = if folds.is_empty() {
                    None
                } else {
                    let key = fold(name);
                    folds
                        .binary_search_by(|(f, _)| (*f).cmp(key.as_str()))
                        .ok()
                        .and_then(|i| folds.get(i))
                };
                let target = nodes
                    .iter()
                    .filter_map(|n| lookup(&n.members, name))
                    .chain(folded.into_iter().flat_map(|(_, t)| t.iter().copied()))
                    .chain(others.iter().copied());
                let to = intern(target, &trie, &mut ids, &mut queue)?;
                state.exact.entries.push((name.as_bytes().into(), to));
            }
            for (name, targets) in &folds {
                let target = targets.iter().copied().chain(others.iter().copied());
                let to = intern(target, &trie, &mut ids, &mut queue)?;
                state.folded.entries.push((name.as_bytes().into(), to));
            }
            state.exact.build_index();
            state.folded.build_index();
            state.other_member = intern(others.iter().copied(), &trie, &mut ids, &mut queue)?;
            let element = nodes.iter().filter_map(|n| n.any_element);
            state.element = intern(element, &trie, &mut ids, &mut queue)?;
            let slot = usize::try_from(id).map_err(|_| PlanError::TooComplex)?;
            if states.len() <= slot {
                states.resize_with(slot + 1, State::default);
            }
            if let Some(s) = states.get_mut(slot) {
                *s = state;
            }
        }
        Ok(Plan {
            rules,
            unclassified,
            control_keys: ControlKeys::Remove,
            states,
        })
    }

    /// The same plan with another treatment of member names that contain control
    /// characters (the default removes such members).
    pub fn with_control_keys(mut self, control_keys: ControlKeys) -> Plan {
        self.control_keys = control_keys;
        self
    }

    /// What the pass does with member names that contain control characters.
    pub fn control_keys(&self) -> ControlKeys {
        self.control_keys
    }

    /// The classifications, in the order given (the report's rule indexes).
    pub fn rules(&self) -> &[(FieldPath, FieldAction)] {
        &self.rules
    }

    /// The default for unclassified values.
    pub fn unclassified(&self) -> Unclassified {
        self.unclassified
    }

    /// True when some rule encrypts, so the context needs a recipient key.
    pub fn needs_recipient(&self) -> bool {
        self.rules
            .iter()
            .any(|(_, a)| matches!(a, FieldAction::Encrypt))
    }

    /// The pseudonymisation key ids the rules use, so a configuration can check at
    /// load time that its key ring has them.
    pub fn pseudonym_key_ids(&self) -> impl Iterator<Item = &str> {
        self.rules.iter().filter_map(|(_, a)| match a {
            FieldAction::Pseudonymise { key_id } => Some(key_id.as_str()),
            _ => None,
        })
    }

    pub(crate) fn state(&self, id: StateId) -> &State {
        static DEAD_STATE: State = State {
            exact: Names::EMPTY,
            folded: Names::EMPTY,
            other_member: DEAD,
            element: DEAD,
            rule: None,
        };
        usize::try_from(id)
            .ok()
            .and_then(|i| self.states.get(i))
            .unwrap_or(&DEAD_STATE)
    }

    pub(crate) fn action(&self, rule: u32) -> Option<&FieldAction> {
        usize::try_from(rule)
            .ok()
            .and_then(|i| self.rules.get(i))
            .map(|(_, a)| a)
    }
}

/// A fast hash of a member name (FxHash-style, eight bytes at a time).
fn key_hash(key: &[u8]) -> usize {
    const K: u64 = 0x517c_c1b7_2722_0a95;
    let mut h = key.len() as u64;
    let mut chunks = key.chunks_exact(8);
    for chunk in &mut chunks {
        let word = <[u8; 8]>::try_from(chunk).map_or(0, u64::from_le_bytes);
        h = (h.rotate_left(5) ^ word).wrapping_mul(K);
    }
    let mut tail = [0u8; 8];
    for (t, b) in tail.iter_mut().zip(chunks.remainder()) {
        *t = *b;
    }
    h = (h.rotate_left(5) ^ u64::from_le_bytes(tail)).wrapping_mul(K);
    (h >> 32) as usize
}

fn check_action(rule: usize, action: &FieldAction) -> Result<(), PlanError> {
    match action {
        FieldAction::Pseudonymise { key_id } if !valid_key_id(key_id) => {
            Err(PlanError::BadKeyId { rule })
        }
        FieldAction::Generalise(Generalisation::NumberBucket { width: 0 }) => {
            Err(PlanError::ZeroWidth { rule })
        }
        _ => Ok(()),
    }
}

/// Key ids appear in output (`ps_<id>_...`) and JOSE headers: keep them plain.
pub fn valid_key_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// The state of a set of trie nodes (with the `..` nodes below them: a loop may take
/// no step), made and queued when new.
fn intern(
    nodes: impl Iterator<Item = usize>,
    trie: &[TrieNode],
    ids: &mut Vec<(Vec<usize>, StateId)>,
    queue: &mut Vec<(Vec<usize>, StateId)>,
) -> Result<StateId, PlanError> {
    let mut set: Vec<usize> = Vec::new();
    let descendants = |n: usize| trie.get(n).and_then(|t| t.descendant);
    for n in nodes {
        for m in std::iter::once(n).chain(descendants(n)) {
            if let Err(i) = set.binary_search(&m) {
                set.insert(i, m);
            }
        }
    }
    match ids.binary_search_by(|(s, _)| s.as_slice().cmp(&set)) {
        Ok(i) => Ok(ids.get(i).map_or(DEAD, |e| e.1)),
        Err(i) => {
            // State 0 (dead) is in `ids` too.
            if ids.len() >= MAX_STATES {
                return Err(PlanError::TooComplex);
            }
            let id = StateId::try_from(ids.len()).map_err(|_| PlanError::TooComplex)?;
            ids.insert(i, (set.clone(), id));
            queue.push((set, id));
            Ok(id)
        }
    }
}

/// The `..` node below `node`, made when missing: it loops on every member and element.
fn descendant_of(trie: &mut Vec<TrieNode>, node: usize) -> Result<usize, PlanError> {
    let next = trie.len();
    let current = trie.get_mut(node).ok_or(PlanError::TooComplex)?;
    let target = *current.descendant.get_or_insert(next);
    if target == next {
        trie.push(TrieNode {
            any_member: Some(next),
            any_element: Some(next),
            ..TrieNode::default()
        });
    }
    Ok(target)
}

/// Among the rules ending at these nodes (all match one location), the one that
/// takes precedence (see [`Plan`]).
fn precedent(nodes: &[&TrieNode], rules: &[(FieldPath, FieldAction)]) -> Option<u32> {
    let mut best: Option<usize> = None;
    for index in nodes.iter().filter_map(|n| n.rule) {
        best = match best {
            Some(b) if !takes_precedence(index, b, rules) => Some(b),
            _ => Some(index),
        };
    }
    best.and_then(|i| u32::try_from(i).ok())
}

/// Whether rule `a` takes precedence over rule `b` where both match. A strict total
/// order: each path reads as one literal-or-wildcard flag per step of the location
/// (an any-depth path as wildcards up to its last step, which is literal when it
/// names a member), and the first step where the flags differ decides for the
/// literal; then an explicit path beats an any-depth one, then the stricter action,
/// then the earlier rule.
fn takes_precedence(a: usize, b: usize, rules: &[(FieldPath, FieldAction)]) -> bool {
    let (Some((pa, xa)), Some((pb, xb))) = (rules.get(a), rules.get(b)) else {
        return false;
    };
    let (deep_a, deep_b) = (pa.is_any_depth(), pb.is_any_depth());
    let by_steps = match (deep_a, deep_b) {
        (false, false) => {
            pa.0.iter()
                .zip(&pb.0)
                .map(|(x, y)| literal(x).cmp(&literal(y)))
                .find(|o| o.is_ne())
                .unwrap_or(Ordering::Equal)
        }
        (false, true) => explicit_against_any_depth(pa, pb),
        (true, false) => explicit_against_any_depth(pb, pa).reverse(),
        (true, true) => last_literal(pa).cmp(&last_literal(pb)),
    };
    by_steps
        .then(deep_b.cmp(&deep_a))
        .then(strictness(xb).cmp(&strictness(xa)))
        .then(b.cmp(&a))
        == Ordering::Greater
}

fn literal(step: &PathStep) -> bool {
    !step.is_wildcard()
}

fn last_literal(path: &FieldPath) -> bool {
    path.0.last().is_some_and(literal)
}

/// An explicit path against an any-depth one at a location as deep as the explicit
/// path: a literal before its last step wins at once; otherwise the last steps decide.
fn explicit_against_any_depth(explicit: &FieldPath, any_depth: &FieldPath) -> Ordering {
    let head = explicit.0.len().saturating_sub(1);
    if explicit.0.iter().take(head).any(literal) {
        return Ordering::Greater;
    }
    last_literal(explicit).cmp(&last_literal(any_depth))
}

/// Smaller is stricter: what the action lets the recipient learn of the value. A hash
/// ranks after mask and generalise: the short values personal data has (an SSN, a
/// date) are found again from an unkeyed hash by trying them all.
fn strictness(action: &FieldAction) -> (u8, u64, u64) {
    let n = |v: usize| u64::try_from(v).unwrap_or(u64::MAX);
    match action {
        FieldAction::Remove => (0, 0, 0),
        FieldAction::Pseudonymise { .. } => (1, 0, 0),
        FieldAction::Mask {
            keep_first,
            keep_last,
            keep_separators,
            ..
        } => (
            2,
            n(*keep_first).saturating_add(n(*keep_last)),
            u64::from(*keep_separators),
        ),
        FieldAction::Generalise(Generalisation::DateToYear) => (3, 0, 0),
        FieldAction::Generalise(Generalisation::DateToYearMonth) => (3, 1, 0),
        FieldAction::Generalise(Generalisation::NumberBucket { width }) => (3, 2, u64::MAX - width),
        FieldAction::Hash { .. } => (4, 0, 0),
        FieldAction::Encrypt => (5, 0, 0),
        FieldAction::Keep => (6, 0, 0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(rules: &[(&str, FieldAction)]) -> Result<Plan, PlanError> {
        Plan::build(
            rules
                .iter()
                .map(|(p, a)| (FieldPath::parse(p).unwrap(), a.clone()))
                .collect(),
            Unclassified::Remove,
        )
    }

    fn walk(plan: &Plan, keys: &[&str]) -> StateId {
        keys.iter().fold(ROOT, |s, k| {
            if *k == "[]" {
                plan.state(s).element()
            } else {
                plan.state(s).member(k.as_bytes())
            }
        })
    }

    #[test]
    fn literal_beats_wildcard_at_the_first_differing_step() {
        let p = plan(&[
            ("$.*.b", FieldAction::Remove),
            ("$.a.*", FieldAction::Keep),
            ("$.*.*", FieldAction::Encrypt),
        ])
        .unwrap();
        assert_eq!(p.state(walk(&p, &["a", "b"])).rule, Some(1));
        assert_eq!(p.state(walk(&p, &["x", "b"])).rule, Some(0));
        assert_eq!(p.state(walk(&p, &["x", "y"])).rule, Some(2));
        assert_eq!(walk(&p, &["x", "y", "z"]), DEAD);
    }

    #[test]
    fn identical_paths_with_different_actions_are_refused() {
        assert_eq!(
            plan(&[
                ("$.a", FieldAction::Remove),
                ("$.b", FieldAction::Keep),
                ("$[\"a\"]", FieldAction::Keep)
            ])
            .unwrap_err(),
            PlanError::Conflict {
                first: 0,
                second: 2
            }
        );
        let same = plan(&[("$.a", FieldAction::Remove), ("$.a", FieldAction::Remove)]).unwrap();
        assert_eq!(same.state(walk(&same, &["a"])).rule, Some(0));
    }

    #[test]
    fn bad_actions_are_refused_at_build() {
        assert_eq!(
            plan(&[(
                "$.a",
                FieldAction::Pseudonymise {
                    key_id: "k 1".into()
                }
            )])
            .unwrap_err(),
            PlanError::BadKeyId { rule: 0 }
        );
        assert_eq!(
            plan(&[(
                "$.a",
                FieldAction::Generalise(Generalisation::NumberBucket { width: 0 })
            )])
            .unwrap_err(),
            PlanError::ZeroWidth { rule: 0 }
        );
        assert_eq!(
            Plan::build(
                vec![(FieldPath(vec![]), FieldAction::Remove)],
                Unclassified::Keep
            )
            .unwrap_err(),
            PlanError::EmptyPath { rule: 0 }
        );
    }

    #[test]
    fn liveness_follows_the_container_kind() {
        let p = plan(&[
            ("$.a.b", FieldAction::Remove),
            ("$.l[*]", FieldAction::Keep),
        ])
        .unwrap();
        let a = p.state(walk(&p, &["a"]));
        assert!(a.object_live() && !a.array_live());
        let l = p.state(walk(&p, &["l"]));
        assert!(!l.object_live() && l.array_live());
        assert!(!p.state(ROOT).array_live());
    }

    #[test]
    fn any_depth_loops_stay_small_and_their_explosion_is_bounded() {
        // One loop for many names: a state per name, plus the root and the loop.
        let rules: Vec<_> = (0..200)
            .map(|i| {
                let path = FieldPath(vec![PathStep::Descendant(format!("n{i}"))]);
                (path, FieldAction::Remove)
            })
            .collect();
        let p = Plan::build(rules, Unclassified::Keep).unwrap();
        assert!(p.states.len() <= 203, "{}", p.states.len());
        assert_eq!(p.state(walk(&p, &["x", "[]", "n7"])).rule, Some(7));
        assert_eq!(p.state(walk(&p, &["n7", "n7"])).rule, Some(7));
        // Chains of loops over overlapping names: subsets of positions, capped.
        let names = ["a", "b", "a", "b", "a", "b", "a", "b", "a", "b", "a", "b"];
        let mut rules = Vec::new();
        for skip in 0..names.len() {
            let steps = names
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != skip)
                .map(|(_, n)| PathStep::DescendantAnyCase((*n).to_owned()))
                .collect();
            rules.push((FieldPath(steps), FieldAction::Keep));
        }
        let built = Plan::build(rules, Unclassified::Remove);
        assert!(matches!(built, Ok(_) | Err(PlanError::TooComplex)));
    }

    #[test]
    fn wildcard_explosion_is_bounded() {
        // 2^k subsets of k overlapping wildcard/literal paths.
        let mut rules = Vec::new();
        for i in 0..16 {
            let mut steps = Vec::new();
            for j in 0..16 {
                steps.push(if i == j {
                    PathStep::Member(format!("k{j}"))
                } else {
                    PathStep::AnyMember
                });
            }
            for j in 0..16 {
                steps.push(PathStep::Member(format!("k{j}")));
            }
            rules.push((FieldPath(steps), FieldAction::Remove));
        }
        let built = Plan::build(rules, Unclassified::Remove);
        assert!(matches!(built, Ok(_) | Err(PlanError::TooComplex)));
    }
}
