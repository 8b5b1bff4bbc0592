//! A plan: classifications compiled once into a small deterministic automaton over
//! path steps, so the pass looks up each key once (a binary search) and never
//! re-walks the rule list.

use std::fmt;

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

#[derive(Debug, Clone, Default)]
pub(crate) struct State {
    /// Literal member names and where each leads.
    members: Vec<(Box<[u8]>, StateId)>,
    /// Open-addressing index into `members` by [`key_hash`] (entries are index + 1,
    /// 0 is empty; the length is a power of two, at least twice the members).
    index: Vec<u32>,
    /// Where a member not in `members` leads (through `.*` steps only).
    other_member: StateId,
    /// Where an array element leads.
    element: StateId,
    /// The rule that classifies this exact location (the most specific one).
    pub(crate) rule: Option<u32>,
}

impl State {
    /// True when some classification may match a member of an object here.
    pub(crate) fn object_live(&self) -> bool {
        !self.members.is_empty() || self.other_member != DEAD
    }

    /// True when some classification may match an element of an array here.
    pub(crate) fn array_live(&self) -> bool {
        self.element != DEAD
    }

    /// True when no literal name needs the member's key to pick the next state.
    pub(crate) fn needs_key(&self) -> bool {
        !self.members.is_empty()
    }

    pub(crate) fn member(&self, key: &[u8]) -> StateId {
        let mask = self.index.len().wrapping_sub(1);
        let mut slot = key_hash(key) & mask;
        // The table is never full, so an empty slot ends every probe sequence.
        for _ in 0..self.index.len() {
            match self.index.get(slot).copied() {
                Some(0) | None => break,
                Some(entry) => {
                    let found = usize::try_from(entry - 1)
                        .ok()
                        .and_then(|i| self.members.get(i))
                        .filter(|(name, _)| name.as_ref() == key);
                    if let Some((_, to)) = found {
                        return *to;
                    }
                }
            }
            slot = slot.wrapping_add(1) & mask;
        }
        self.other_member
    }

    fn build_index(&mut self) {
        let size = self
            .members
            .len()
            .saturating_mul(2)
            .next_power_of_two()
            .max(2);
        self.index = vec![0; size];
        let mask = size - 1;
        for (i, (name, _)) in self.members.iter().enumerate() {
            let mut slot = key_hash(name) & mask;
            while self.index.get(slot).is_some_and(|&e| e != 0) {
                slot = slot.wrapping_add(1) & mask;
            }
            if let (Some(e), Ok(v)) = (self.index.get_mut(slot), u32::try_from(i + 1)) {
                *e = v;
            }
        }
    }

    pub(crate) fn element(&self) -> StateId {
        self.element
    }
}

/// Classifications compiled for the pass. Built once (at configuration load) by
/// [`Plan::build`]; cheap to share.
///
/// Semantics (the pass applies them to every member and every array element):
/// - A location is classified by the rule whose path matches it exactly. When several
///   do, the most specific wins: comparing the paths step by step, at the first step
///   where they differ a literal name beats a wildcard. Identical paths with
///   different actions are refused ([`PlanError::Conflict`]); identical paths with the
///   same action count as the first of them.
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
    states: Vec<State>,
}

#[derive(Default)]
struct TrieNode {
    /// Sorted by name.
    members: Vec<(String, usize)>,
    any_member: Option<usize>,
    any_element: Option<usize>,
    rule: Option<usize>,
}

impl Plan {
    /// Compiles classifications (in order: a rule's index is its position here, and
    /// the report counts by it) with the default for unclassified values.
    pub fn build(
        rules: Vec<(FieldPath, FieldAction)>,
        unclassified: Unclassified,
    ) -> Result<Plan, PlanError> {
        // 1. A trie of the paths; identical paths meet at one node.
        let mut trie = vec![TrieNode::default()];
        for (index, (path, action)) in rules.iter().enumerate() {
            check_action(index, action)?;
            if path.0.is_empty() {
                return Err(PlanError::EmptyPath { rule: index });
            }
            let mut node = 0usize;
            for step in &path.0 {
                let next = trie.len();
                let slot = {
                    let current = trie.get_mut(node).ok_or(PlanError::TooComplex)?;
                    match step {
                        PathStep::Member(name) => {
                            match current
                                .members
                                .binary_search_by(|(n, _)| n.as_str().cmp(name))
                            {
                                Ok(i) => current.members.get(i).map_or(next, |m| m.1),
                                Err(i) => {
                                    current.members.insert(i, (name.clone(), next));
                                    next
                                }
                            }
                        }
                        PathStep::AnyMember => *current.any_member.get_or_insert(next),
                        PathStep::AnyElement => *current.any_element.get_or_insert(next),
                    }
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
        let mut ids: Vec<(Vec<usize>, StateId)> = vec![(Vec::new(), DEAD), (vec![0], ROOT)];
        let mut queue = vec![(vec![0usize], ROOT)];
        while let Some((set, id)) = queue.pop() {
            let nodes: Vec<&TrieNode> = set.iter().filter_map(|&n| trie.get(n)).collect();
            let mut names: Vec<&str> = Vec::new();
            for (name, _) in nodes.iter().flat_map(|n| n.members.iter()) {
                if let Err(i) = names.binary_search(&name.as_str()) {
                    names.insert(i, name);
                }
            }
            let others: Vec<usize> = nodes.iter().filter_map(|n| n.any_member).collect();
            let mut state = State {
                rule: most_specific(&nodes, &rules),
                ..State::default()
            };
            for name in names {
                let target = nodes
                    .iter()
                    .filter_map(|n| {
                        n.members
                            .binary_search_by(|(m, _)| m.as_str().cmp(name))
                            .ok()
                            .and_then(|i| n.members.get(i))
                            .map(|m| m.1)
                    })
                    .chain(others.iter().copied());
                let to = intern(target, &mut ids, &mut queue)?;
                state.members.push((name.as_bytes().into(), to));
            }
            state.build_index();
            state.other_member = intern(others.iter().copied(), &mut ids, &mut queue)?;
            let element = nodes.iter().filter_map(|n| n.any_element);
            state.element = intern(element, &mut ids, &mut queue)?;
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
            states,
        })
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
            members: Vec::new(),
            index: Vec::new(),
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

fn intern(
    nodes: impl Iterator<Item = usize>,
    ids: &mut Vec<(Vec<usize>, StateId)>,
    queue: &mut Vec<(Vec<usize>, StateId)>,
) -> Result<StateId, PlanError> {
    let mut set: Vec<usize> = Vec::new();
    for n in nodes {
        if let Err(i) = set.binary_search(&n) {
            set.insert(i, n);
        }
    }
    match ids.binary_search_by(|(s, _)| s.as_slice().cmp(&set)) {
        Ok(i) => Ok(ids.get(i).map_or(DEAD, |e| e.1)),
        Err(i) => {
            // State 0 (dead) and 1 (root) are in `ids` too.
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

/// Among the rules ending at these nodes (all match one location), the one whose path
/// has a literal where the others have a wildcard at the first differing step.
fn most_specific(nodes: &[&TrieNode], rules: &[(FieldPath, FieldAction)]) -> Option<u32> {
    let mut best: Option<usize> = None;
    for index in nodes.iter().filter_map(|n| n.rule) {
        best = match best {
            None => Some(index),
            Some(b) => {
                let (Some((pb, _)), Some((pi, _))) = (rules.get(b), rules.get(index)) else {
                    continue;
                };
                if more_specific(pi, pb) {
                    Some(index)
                } else {
                    Some(b)
                }
            }
        };
    }
    best.and_then(|i| u32::try_from(i).ok())
}

fn more_specific(a: &FieldPath, b: &FieldPath) -> bool {
    for (x, y) in a.0.iter().zip(&b.0) {
        match (x.is_wildcard(), y.is_wildcard()) {
            (false, true) => return true,
            (true, false) => return false,
            _ => {}
        }
    }
    false
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
