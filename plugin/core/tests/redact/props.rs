//! Property tests: random documents (duplicate keys, escapes, odd whitespace, case
//! variants, control characters in names) and random plans (any-depth paths,
//! case-insensitive names), checked against a reference implementation that follows
//! the documented semantics directly (recursively, over a parsed tree; paths matched
//! by simulating their steps, precedence by its documented order).

use std::cmp::Reverse;

use consentry_core::redact::{
    ControlKeys, FieldAction, FieldPath, Generalisation, HashEncoding, Limits, PathStep, Plan,
    RedactError, Unclassified,
};
use proptest::prelude::*;

use crate::{LIMITS, bob, run_with};

// ---------------------------------------------------------------- documents

/// A JSON value as generated: object members may repeat keys.
#[derive(Debug, Clone)]
enum J {
    Null,
    Bool(bool),
    Num(String),
    Str(String),
    Arr(Vec<J>),
    Obj(Vec<(String, J)>),
}

/// Few names, often repeated, so paths and duplicate keys meet often; case variants
/// (`ſ` and the Kelvin sign fold to `s` and `k`), and names with control characters.
const KEYS: [&str; 21] = [
    "a", "a", "a", "A", "b", "b", "ssn", "SSN", "ſſn", "x y", "é", "É", "😀", "", "q\"\\", "dob",
    "\u{212A}", "k", "a\u{0}", "\u{7f}", "b\u{85}",
];

/// The names paths use (paths cannot name control characters).
const PATH_NAMES: [&str; 13] = [
    "a", "a", "A", "b", "ssn", "SSN", "x y", "é", "😀", "", "q\"\\", "dob", "k",
];

fn key() -> impl Strategy<Value = String> {
    prop::sample::select(&KEYS[..]).prop_map(str::to_owned)
}

fn path_name() -> impl Strategy<Value = String> {
    prop::sample::select(&PATH_NAMES[..]).prop_map(str::to_owned)
}

/// True when some member name in the document has a control character.
fn has_control_key(j: &J) -> bool {
    match j {
        J::Arr(items) => items.iter().any(has_control_key),
        J::Obj(members) => members
            .iter()
            .any(|(k, v)| k.chars().any(char::is_control) || has_control_key(v)),
        _ => false,
    }
}

/// Date strings whose validity the reference knows.
const DATES: [(&str, bool); 5] = [
    ("1984-02-29", true),
    ("2024-12-31T23:59:60Z", true),
    ("2001-07-04T10:00:00.5-03:30", true),
    ("1985-02-29", false),
    ("2024-13-01", false),
];

fn leaf() -> impl Strategy<Value = J> {
    prop_oneof![
        Just(J::Null),
        any::<bool>().prop_map(J::Bool),
        prop::sample::select(vec![
            "0",
            "-0.0",
            "120.50",
            "1e3",
            "1E+2",
            "-17",
            "12345678901234567890",
            "2e-3",
            "1e400",
            "-1.5e-300",
            "74",
        ])
        .prop_map(|s| J::Num(s.to_owned())),
        (-100_000i64..100_000).prop_map(|n| J::Num(n.to_string())),
        prop::sample::select(DATES.iter().map(|d| d.0).collect::<Vec<_>>())
            .prop_map(|s| J::Str(s.to_owned())),
        prop::sample::select(vec![
            "",
            "123-45-6789",
            "é😀",
            "a\"b\\c",
            "\u{1}\n\u{7f}",
            "--"
        ])
        .prop_map(|s| J::Str(s.to_owned())),
        "[a-z0-9 .-]{0,8}".prop_map(J::Str),
    ]
}

fn json() -> impl Strategy<Value = J> {
    leaf().prop_recursive(6, 96, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(J::Arr),
            prop::collection::vec((key(), inner), 0..5).prop_map(J::Obj),
        ]
    })
}

fn container() -> impl Strategy<Value = J> {
    (json(), key()).prop_map(|(j, k)| match j {
        j @ (J::Arr(_) | J::Obj(_)) => j,
        leaf => J::Obj(vec![(k, leaf)]),
    })
}

/// A tiny deterministic generator for formatting choices.
struct Style(u64);

impl Style {
    fn next(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }

    fn ws(&mut self, out: &mut String) {
        const WS: [&str; 7] = ["", "", "", " ", "\n  ", "\t", "\r\n"];
        out.push_str(WS[self.next(WS.len() as u64) as usize]);
    }

    fn string(&mut self, s: &str, out: &mut String) {
        out.push('"');
        for c in s.chars() {
            let escape = self.next(4) == 0;
            match c {
                '"' => out.push_str(if escape { "\\u0022" } else { "\\\"" }),
                '\\' => out.push_str(if escape { "\\u005C" } else { "\\\\" }),
                '\n' => out.push_str(if escape { "\\u000a" } else { "\\n" }),
                c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
                '/' if escape => out.push_str("\\/"),
                c if escape => {
                    let mut units = [0u16; 2];
                    for u in c.encode_utf16(&mut units) {
                        out.push_str(&format!("\\u{u:04X}"));
                    }
                }
                c => out.push(c),
            }
        }
        out.push('"');
    }

    fn write(&mut self, j: &J, out: &mut String) {
        match j {
            J::Null => out.push_str("null"),
            J::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            J::Num(n) => out.push_str(n),
            J::Str(s) => self.string(s, out),
            J::Arr(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    self.ws(out);
                    self.write(item, out);
                    self.ws(out);
                }
                if items.is_empty() {
                    self.ws(out);
                }
                out.push(']');
            }
            J::Obj(members) => {
                out.push('{');
                for (i, (k, v)) in members.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    self.ws(out);
                    self.string(k, out);
                    self.ws(out);
                    out.push(':');
                    self.ws(out);
                    self.write(v, out);
                    self.ws(out);
                }
                if members.is_empty() {
                    self.ws(out);
                }
                out.push('}');
            }
        }
    }
}

fn write(j: &J, seed: u64) -> String {
    let mut style = Style(seed);
    let mut out = String::new();
    style.ws(&mut out);
    style.write(j, &mut out);
    style.ws(&mut out);
    out
}

fn document(root: impl Strategy<Value = J>) -> impl Strategy<Value = String> {
    (root, any::<u64>()).prop_map(|(j, seed)| write(&j, seed))
}

// ---------------------------------------------------------------- plans

fn step() -> impl Strategy<Value = PathStep> {
    prop_oneof![
        3 => path_name().prop_map(PathStep::Member),
        1 => path_name().prop_map(PathStep::MemberAnyCase),
        1 => path_name().prop_map(PathStep::Descendant),
        1 => path_name().prop_map(PathStep::DescendantAnyCase),
        2 => Just(PathStep::AnyMember),
        2 => Just(PathStep::AnyElement),
    ]
}

fn action(all: bool) -> BoxedStrategy<FieldAction> {
    let basic = prop_oneof![Just(FieldAction::Keep), Just(FieldAction::Remove)];
    if !all {
        return basic.boxed();
    }
    prop_oneof![
        2 => basic,
        1 => (0usize..3, 0usize..5, any::<bool>()).prop_map(|(f, l, s)| FieldAction::Mask {
            keep_first: f, keep_last: l, mask_char: '#', keep_separators: s
        }),
        1 => prop_oneof![Just(HashEncoding::Hex), Just(HashEncoding::Base64Url)]
            .prop_map(|encoding| FieldAction::Hash { encoding }),
        1 => Just(FieldAction::Pseudonymise { key_id: "k1".into() }),
        1 => prop_oneof![
            Just(Generalisation::DateToYear),
            Just(Generalisation::DateToYearMonth),
            (1u64..50).prop_map(|width| Generalisation::NumberBucket { width }),
        ].prop_map(FieldAction::Generalise),
        1 => Just(FieldAction::Encrypt),
    ]
    .boxed()
}

fn rules(all: bool) -> impl Strategy<Value = (Vec<(FieldPath, FieldAction)>, Unclassified)> {
    (
        prop::collection::vec(
            (
                prop::collection::vec(step(), 1..4).prop_map(FieldPath),
                action(all),
            ),
            0..7,
        ),
        prop_oneof![Just(Unclassified::Remove), Just(Unclassified::Keep)],
    )
        .prop_map(|(mut rules, unclassified)| {
            // One action per path (the plan refuses conflicts; that is tested elsewhere).
            let mut seen: Vec<FieldPath> = Vec::new();
            rules.retain(|(p, _)| {
                let fresh = !seen.iter().any(|s| identical(s, p));
                seen.push(p.clone());
                fresh
            });
            (rules, unclassified)
        })
}

/// Paths the plan takes for one (and refuses with two actions): the same steps,
/// case-insensitive names compared by their folds.
fn identical(p: &FieldPath, q: &FieldPath) -> bool {
    p.0.len() == q.0.len()
        && p.0.iter().zip(&q.0).all(|(a, b)| match (a, b) {
            (PathStep::MemberAnyCase(x), PathStep::MemberAnyCase(y))
            | (PathStep::DescendantAnyCase(x), PathStep::DescendantAnyCase(y)) => {
                fold(x) == fold(y)
            }
            _ => a == b,
        })
}

/// Plans around a removing scope: `Remove` on a path and rules below it, so that
/// shells (containers kept only for what those rules release) and empty ones to
/// prune are common.
fn scoped_rules() -> impl Strategy<Value = (Vec<(FieldPath, FieldAction)>, Unclassified)> {
    // Wildcards and the commonest key, so the scope is often in the document.
    let common = || {
        prop_oneof![
            2 => Just(PathStep::AnyMember),
            2 => Just(PathStep::AnyElement),
            1 => Just(PathStep::Member("a".to_owned())),
        ]
    };
    (
        prop::collection::vec(common(), 1..3),
        prop::collection::vec(
            (
                prop::collection::vec(prop_oneof![common(), step()], 1..4),
                action(true),
            ),
            1..5,
        ),
        prop_oneof![Just(Unclassified::Remove), Just(Unclassified::Keep)],
    )
        .prop_map(|(scope, below, unclassified)| {
            let mut rules = vec![(FieldPath(scope.clone()), FieldAction::Remove)];
            for (tail, action) in below {
                let path = FieldPath(scope.iter().cloned().chain(tail).collect());
                if !rules.iter().any(|(p, _)| identical(p, &path)) {
                    rules.push((path, action));
                }
            }
            (rules, unclassified)
        })
}

/// Plans where any-depth, case-insensitive and explicit paths meet at the same
/// members often: few names, short paths, every action.
fn meeting_rules() -> impl Strategy<Value = (Vec<(FieldPath, FieldAction)>, Unclassified)> {
    let name = || prop::sample::select(vec!["a", "A", "ssn", "SSN", "b"]).prop_map(str::to_owned);
    let first = prop_oneof![
        3 => name().prop_map(PathStep::Descendant),
        2 => name().prop_map(PathStep::DescendantAnyCase),
        1 => name().prop_map(PathStep::Member),
        1 => name().prop_map(PathStep::MemberAnyCase),
        1 => Just(PathStep::AnyMember),
    ];
    let then = prop_oneof![
        2 => name().prop_map(PathStep::Member),
        1 => name().prop_map(PathStep::MemberAnyCase),
        1 => name().prop_map(PathStep::Descendant),
        1 => Just(PathStep::AnyMember),
        1 => Just(PathStep::AnyElement),
    ];
    (
        prop::collection::vec(
            (first, prop::collection::vec(then, 0..2), action(true)),
            1..6,
        ),
        prop_oneof![Just(Unclassified::Remove), Just(Unclassified::Keep)],
    )
        .prop_map(|(raw, unclassified)| {
            let mut rules: Vec<(FieldPath, FieldAction)> = Vec::new();
            for (first, rest, action) in raw {
                let path = FieldPath(std::iter::once(first).chain(rest).collect());
                if !rules.iter().any(|(p, _)| identical(p, &path)) {
                    rules.push((path, action));
                }
            }
            (rules, unclassified)
        })
}

// ---------------------------------------------------------------- a tree with raw text

/// A parsed value that remembers its exact text (a test-only recursive parser, used
/// on documents serde_json has accepted).
#[derive(Debug)]
enum T<'a> {
    Scalar(&'a [u8]),
    Arr(&'a [u8], Vec<T<'a>>),
    Obj(&'a [u8], Vec<(&'a [u8], String, T<'a>)>),
}

impl<'a> T<'a> {
    fn raw(&self) -> &'a [u8] {
        match self {
            T::Scalar(r) | T::Arr(r, _) | T::Obj(r, _) => r,
        }
    }

    fn string(&self) -> Option<String> {
        match self {
            T::Scalar(r) if r.first() == Some(&b'"') => serde_json::from_slice(r).ok(),
            _ => None,
        }
    }
}

fn parse(text: &[u8]) -> T<'_> {
    parse_value(text, &mut 0)
}

fn skip_ws(text: &[u8], pos: &mut usize) {
    while matches!(text.get(*pos), Some(b' ' | b'\t' | b'\n' | b'\r')) {
        *pos += 1;
    }
}

fn parse_value<'a>(text: &'a [u8], pos: &mut usize) -> T<'a> {
    skip_ws(text, pos);
    let start = *pos;
    match text[*pos] {
        b'{' => {
            *pos += 1;
            let mut members = Vec::new();
            loop {
                skip_ws(text, pos);
                match text[*pos] {
                    b'}' => {
                        *pos += 1;
                        break;
                    }
                    b',' => *pos += 1,
                    _ => {
                        let k = parse_value(text, pos);
                        skip_ws(text, pos);
                        assert_eq!(text[*pos], b':');
                        *pos += 1;
                        let v = parse_value(text, pos);
                        let name = k.string().unwrap();
                        members.push((k.raw(), name, v));
                    }
                }
            }
            T::Obj(&text[start..*pos], members)
        }
        b'[' => {
            *pos += 1;
            let mut items = Vec::new();
            loop {
                skip_ws(text, pos);
                match text[*pos] {
                    b']' => {
                        *pos += 1;
                        break;
                    }
                    b',' => *pos += 1,
                    _ => items.push(parse_value(text, pos)),
                }
            }
            T::Arr(&text[start..*pos], items)
        }
        b'"' => {
            *pos += 1;
            while text[*pos] != b'"' {
                *pos += if text[*pos] == b'\\' { 2 } else { 1 };
            }
            *pos += 1;
            T::Scalar(&text[start..*pos])
        }
        _ => {
            while !matches!(
                text.get(*pos),
                None | Some(b',' | b']' | b'}' | b' ' | b'\t' | b'\n' | b'\r')
            ) {
                *pos += 1;
            }
            T::Scalar(&text[start..*pos])
        }
    }
}

// ---------------------------------------------------------------- the reference

#[derive(Debug, Clone, Copy)]
enum Loc<'a> {
    Key(&'a str),
    Index,
}

/// The case fold, written out for the names the generator uses.
fn fold(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            'ſ' => 's',
            '\u{212A}' => 'k',
            'É' => 'é',
            c => c.to_ascii_lowercase(),
        })
        .collect()
}

/// The positions in `path` (steps consumed so far) that can be reached by matching
/// the location: `..name` may stay where it is on any step, or advance on `name`.
fn positions(path: &[PathStep], loc: &[Loc<'_>]) -> Vec<usize> {
    let mut at = vec![0];
    for l in loc {
        let mut next = Vec::new();
        for &p in &at {
            let (stay, advance) = match (path.get(p), l) {
                (Some(PathStep::Member(n)), Loc::Key(k)) => (false, n == k),
                (Some(PathStep::MemberAnyCase(n)), Loc::Key(k)) => (false, fold(n) == fold(k)),
                (Some(PathStep::AnyMember), Loc::Key(_))
                | (Some(PathStep::AnyElement), Loc::Index) => (false, true),
                (Some(PathStep::Descendant(n)), Loc::Key(k)) => (true, n == k),
                (Some(PathStep::DescendantAnyCase(n)), Loc::Key(k)) => (true, fold(n) == fold(k)),
                (Some(PathStep::Descendant(_) | PathStep::DescendantAnyCase(_)), Loc::Index) => {
                    (true, false)
                }
                _ => (false, false),
            };
            if stay {
                next.push(p);
            }
            if advance {
                next.push(p + 1);
            }
        }
        next.sort_unstable();
        next.dedup();
        at = next;
    }
    at
}

/// The documented strictness, smaller first.
fn strictness(action: &FieldAction) -> (u8, u64, u64) {
    match action {
        FieldAction::Remove => (0, 0, 0),
        FieldAction::Pseudonymise { .. } => (1, 0, 0),
        FieldAction::Mask {
            keep_first,
            keep_last,
            keep_separators,
            ..
        } => (2, (keep_first + keep_last) as u64, *keep_separators as u64),
        FieldAction::Generalise(Generalisation::DateToYear) => (3, 0, 0),
        FieldAction::Generalise(Generalisation::DateToYearMonth) => (3, 1, 0),
        FieldAction::Generalise(Generalisation::NumberBucket { width }) => (3, 2, u64::MAX - width),
        FieldAction::Hash { .. } => (4, 0, 0),
        FieldAction::Encrypt => (5, 0, 0),
        FieldAction::Keep => (6, 0, 0),
    }
}

/// The rule at exactly this location: the documented precedence as a key, largest
/// first: one literal-or-wildcard flag per step of the location (an any-depth path
/// as wildcards up to its last step), then explicit over any-depth, then the
/// strictest action, then the first rule.
fn rule_at(rules: &[(FieldPath, FieldAction)], loc: &[Loc<'_>]) -> Option<usize> {
    let literal = |s: &PathStep| !matches!(s, PathStep::AnyMember | PathStep::AnyElement);
    rules
        .iter()
        .enumerate()
        .filter(|(_, (p, _))| positions(&p.0, loc).contains(&p.0.len()))
        .max_by_key(|(i, (p, a))| {
            let deep = p.0.iter().any(PathStep::is_descendant);
            let flags: Vec<bool> = if deep {
                let mut v = vec![false; loc.len() - 1];
                v.push(p.0.last().is_some_and(literal));
                v
            } else {
                p.0.iter().map(literal).collect()
            };
            (flags, !deep, Reverse(strictness(a)), Reverse(*i))
        })
        .map(|(i, _)| i)
}

fn rules_below(rules: &[(FieldPath, FieldAction)], loc: &[Loc<'_>], t: &T<'_>) -> bool {
    rules.iter().any(|(p, _)| {
        positions(&p.0, loc).into_iter().any(|i| {
            matches!(
                (t, p.0.get(i)),
                (
                    T::Obj(..),
                    Some(
                        PathStep::Member(_)
                            | PathStep::MemberAnyCase(_)
                            | PathStep::AnyMember
                            | PathStep::Descendant(_)
                            | PathStep::DescendantAnyCase(_)
                    )
                ) | (
                    T::Arr(..),
                    Some(
                        PathStep::AnyElement
                            | PathStep::Descendant(_)
                            | PathStep::DescendantAnyCase(_)
                    )
                )
            )
        })
    })
}

fn is_control_name(name: &str) -> bool {
    name.chars().any(char::is_control)
}

fn contains_control_name(t: &T<'_>) -> bool {
    match t {
        T::Scalar(_) => false,
        T::Arr(_, items) => items.iter().any(contains_control_name),
        T::Obj(_, members) => members
            .iter()
            .any(|(_, name, v)| is_control_name(name) || contains_control_name(v)),
    }
}

/// A value released as it is, but for members whose names have control characters:
/// they go, wherever they are in it.
fn released<'a, 'r>(t: &'a T<'a>, counts: &mut Counts) -> E<'a, 'r> {
    if !contains_control_name(t) {
        return E::Verbatim(t.raw());
    }
    match t {
        T::Obj(_, members) => E::Obj(
            members
                .iter()
                .filter_map(|(raw, name, v)| {
                    if is_control_name(name) {
                        counts.control += 1;
                        None
                    } else {
                        Some((*raw, released(v, counts)))
                    }
                })
                .collect(),
        ),
        T::Arr(_, items) => E::Arr(items.iter().map(|v| released(v, counts)).collect()),
        T::Scalar(raw) => E::Verbatim(raw),
    }
}

#[derive(Debug)]
enum E<'a, 'r> {
    Verbatim(&'a [u8]),
    Null,
    Transformed(&'r FieldAction, &'a T<'a>),
    Arr(Vec<E<'a, 'r>>),
    Obj(Vec<(&'a [u8], E<'a, 'r>)>),
}

fn fits(action: &FieldAction, t: &T<'_>) -> bool {
    let raw = t.raw();
    let is_number = matches!(raw.first(), Some(b'-' | b'0'..=b'9'));
    match action {
        FieldAction::Mask { .. } => is_number || t.string().is_some(),
        FieldAction::Generalise(Generalisation::NumberBucket { .. }) => {
            is_number && raw != b"1e400" && !matches!(t, T::Arr(..) | T::Obj(..))
        }
        FieldAction::Generalise(_) => t
            .string()
            .is_some_and(|s| DATES.iter().any(|(d, ok)| *ok && *d == s)),
        _ => true,
    }
}

/// The report's counts the reference predicts.
#[derive(Debug, Default)]
struct Counts {
    /// `shells_pruned`.
    pruned: u64,
    /// `control_keys_removed`.
    control: u64,
}

fn expect_children<'a, 'r>(
    t: &'a T<'a>,
    loc: &mut Vec<Loc<'a>>,
    default: Unclassified,
    rules: &'r [(FieldPath, FieldAction)],
    counts: &mut Counts,
) -> E<'a, 'r> {
    match t {
        T::Obj(_, members) => E::Obj(
            members
                .iter()
                .filter_map(|(raw, name, v)| {
                    if is_control_name(name) {
                        counts.control += 1;
                        return None;
                    }
                    loc.push(Loc::Key(name));
                    let e = expect_item(v, loc, default, rules, counts);
                    loc.pop();
                    e.map(|e| (*raw, e))
                })
                .collect(),
        ),
        T::Arr(_, items) => E::Arr(
            items
                .iter()
                .filter_map(|v| {
                    loc.push(Loc::Index);
                    let e = expect_item(v, loc, default, rules, counts);
                    loc.pop();
                    e
                })
                .collect(),
        ),
        T::Scalar(raw) => E::Verbatim(raw),
    }
}

fn expect_item<'a, 'r>(
    t: &'a T<'a>,
    loc: &mut Vec<Loc<'a>>,
    default: Unclassified,
    rules: &'r [(FieldPath, FieldAction)],
    counts: &mut Counts,
) -> Option<E<'a, 'r>> {
    let below = rules_below(rules, loc, t);
    match rule_at(rules, loc).map(|i| &rules[i].1) {
        Some(FieldAction::Keep) if below => {
            Some(expect_children(t, loc, Unclassified::Keep, rules, counts))
        }
        Some(FieldAction::Keep) => Some(released(t, counts)),
        Some(FieldAction::Remove) if below => {
            let e = expect_children(t, loc, Unclassified::Remove, rules, counts);
            shell(e, counts)
        }
        Some(FieldAction::Remove) => None,
        Some(action) => fits(action, t).then_some(E::Transformed(action, t)),
        None if below => {
            let e = expect_children(t, loc, default, rules, counts);
            match default {
                Unclassified::Remove => shell(e, counts),
                Unclassified::Keep => Some(e),
            }
        }
        None => (default == Unclassified::Keep).then(|| released(t, counts)),
    }
}

/// A container kept under a removing scope only for what is below it: gone when
/// nothing below it was released.
fn shell<'a, 'r>(e: E<'a, 'r>, counts: &mut Counts) -> Option<E<'a, 'r>> {
    let empty = match &e {
        E::Obj(members) => members.is_empty(),
        E::Arr(items) => items.is_empty(),
        _ => false,
    };
    if empty {
        counts.pruned += 1;
        None
    } else {
        Some(e)
    }
}

fn expect<'a, 'r>(t: &'a T<'a>, plan: &'r Plan, counts: &mut Counts) -> E<'a, 'r> {
    match t {
        T::Scalar(raw) if plan.unclassified() == Unclassified::Keep => E::Verbatim(raw),
        T::Scalar(_) => E::Null,
        // The root is never a shell.
        _ => expect_children(
            t,
            &mut Vec::new(),
            plan.unclassified(),
            plan.rules(),
            counts,
        ),
    }
}

/// Checks the redactor's output tree against the reference's expectation.
fn check(out: &T<'_>, exp: &E<'_, '_>) -> Result<(), TestCaseError> {
    match (exp, out) {
        (E::Verbatim(raw), _) => prop_assert_eq!(
            String::from_utf8_lossy(out.raw()),
            String::from_utf8_lossy(raw),
            "untouched value changed"
        ),
        (E::Null, _) => prop_assert_eq!(out.raw(), b"null"),
        (E::Obj(members), T::Obj(_, got)) => {
            prop_assert_eq!(
                members.len(),
                got.len(),
                "members differ: {:?} vs {:?}",
                members,
                got
            );
            for ((raw, e), (graw, _, g)) in members.iter().zip(got) {
                prop_assert_eq!(raw, graw, "key spelling changed");
                check(g, e)?;
            }
        }
        (E::Arr(items), T::Arr(_, got)) => {
            prop_assert_eq!(
                items.len(),
                got.len(),
                "elements differ: {:?} vs {:?}",
                items,
                got
            );
            for (e, g) in items.iter().zip(got) {
                check(g, e)?;
            }
        }
        (E::Transformed(action, original), _) => check_transformed(action, original, out)?,
        _ => prop_assert!(false, "shape differs: expected {:?}, got {:?}", exp, out),
    }
    Ok(())
}

fn check_transformed(
    action: &FieldAction,
    original: &T<'_>,
    out: &T<'_>,
) -> Result<(), TestCaseError> {
    let Some(s) = out.string() else {
        return Err(TestCaseError::fail(format!(
            "{action:?} gave a non-string {out:?}"
        )));
    };
    let raw_text = String::from_utf8_lossy(original.raw()).into_owned();
    let plain = original.string().unwrap_or_else(|| raw_text.clone());
    match action {
        FieldAction::Mask { .. } => {
            prop_assert_eq!(s.chars().count(), plain.chars().count());
            if plain.chars().any(char::is_alphanumeric) {
                prop_assert_ne!(&s, &plain, "masked value released");
            }
            return Ok(());
        }
        FieldAction::Hash {
            encoding: HashEncoding::Hex,
        } => {
            prop_assert!(s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()))
        }
        FieldAction::Hash {
            encoding: HashEncoding::Base64Url,
        } => prop_assert_eq!(s.len(), 43),
        FieldAction::Pseudonymise { .. } => prop_assert!(s.starts_with("ps_k1_") && s.len() == 28),
        FieldAction::Generalise(Generalisation::DateToYear) => prop_assert_eq!(&s, &plain[..4]),
        FieldAction::Generalise(Generalisation::DateToYearMonth) => {
            prop_assert_eq!(&s, &plain[..7])
        }
        FieldAction::Generalise(Generalisation::NumberBucket { width }) => {
            if let Ok(n) = raw_text.parse::<i64>() {
                let lo = n.div_euclid(*width as i64) * *width as i64;
                prop_assert_eq!(&s, &format!("{}-{}", lo, lo + *width as i64));
            } else {
                prop_assert!(s.contains('-') && s.len() > 2);
            }
        }
        FieldAction::Encrypt => {
            let parts: Vec<&str> = s.split('.').collect();
            prop_assert_eq!(parts.len(), 5);
            prop_assert_eq!(parts[1], "");
            use base64::Engine as _;
            let ct = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(parts[3])
                .unwrap();
            prop_assert_eq!(
                ct.len(),
                original.raw().len(),
                "GCM keeps the plaintext's length"
            );
        }
        FieldAction::Keep | FieldAction::Remove => prop_assert!(false, "not a transform"),
    }
    prop_assert_ne!(&s, &plain, "value released");
    prop_assert_ne!(&s, &raw_text, "value released");
    Ok(())
}

fn redact_and_check(
    body: &[u8],
    rules: Vec<(FieldPath, FieldAction)>,
    unclassified: Unclassified,
) -> Result<(), TestCaseError> {
    redact_and_check_with(body, rules, unclassified, ControlKeys::Remove)
}

fn redact_and_check_with(
    body: &[u8],
    rules: Vec<(FieldPath, FieldAction)>,
    unclassified: Unclassified,
    control_keys: ControlKeys,
) -> Result<(), TestCaseError> {
    let plan = Plan::build(rules, unclassified)
        .unwrap()
        .with_control_keys(control_keys);
    let recipient = bob();
    let result = run_with(&plan, body, LIMITS, Some(&recipient));
    let accepted = serde_json::from_slice::<serde_json::Value>(body).is_ok();
    if accepted && control_keys == ControlKeys::Withhold {
        // Withheld exactly when the pass reaches a name with a control character.
        let input = parse(body);
        let mut counts = Counts::default();
        expect(&input, &plan, &mut counts);
        if counts.control > 0 {
            prop_assert!(
                matches!(result, Err(RedactError::ControlKey { .. })),
                "released {:?} as {:?}",
                String::from_utf8_lossy(body),
                result
            );
            return Ok(());
        }
    }
    match result {
        Ok(out) => {
            prop_assert!(
                accepted,
                "accepted what serde_json refuses: {:?}",
                String::from_utf8_lossy(body)
            );
            let parsed = serde_json::from_slice::<serde_json::Value>(&out.body);
            prop_assert!(
                parsed.is_ok(),
                "output is not JSON: {:?}",
                String::from_utf8_lossy(&out.body)
            );
            let input = parse(body);
            let output = parse(&out.body);
            let mut counts = Counts::default();
            check(&output, &expect(&input, &plan, &mut counts))?;
            prop_assert_eq!(out.report.shells_pruned, counts.pruned, "shells pruned");
            prop_assert_eq!(
                out.report.control_keys_removed,
                counts.control,
                "control keys removed"
            );
        }
        Err(e) => prop_assert!(
            !accepted,
            "refused valid JSON ({e:?}): {:?}",
            String::from_utf8_lossy(body)
        ),
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2048, ..ProptestConfig::default() })]

    /// Remove/Keep plans: the output is exactly the reference's, byte for byte in
    /// every untouched value and key.
    #[test]
    fn remove_and_keep_match_the_reference(body in document(json()), (rules, unclassified) in rules(false)) {
        redact_and_check(body.as_bytes(), rules, unclassified)?;
    }

    /// All actions: protected values are gone or transformed (never equal to the
    /// original), the rest is byte-identical, and the output parses.
    #[test]
    fn every_action_matches_the_reference(body in document(json()), (rules, unclassified) in rules(true)) {
        redact_and_check(body.as_bytes(), rules, unclassified)?;
    }

    /// Any-depth, case-insensitive and explicit paths meeting at one member: the
    /// documented precedence decides, as the reference applies it.
    #[test]
    fn meeting_paths_match_the_reference(body in document(json()), (rules, unclassified) in meeting_rules()) {
        redact_and_check(body.as_bytes(), rules, unclassified)?;
    }

    /// Withholding bodies with control characters in member names: refused exactly
    /// when the pass reaches one (in a released or walked container), else as above.
    #[test]
    fn control_keys_are_withheld_where_the_pass_meets_them(body in document(json()), (rules, unclassified) in rules(true)) {
        redact_and_check_with(body.as_bytes(), rules, unclassified, ControlKeys::Withhold)?;
    }

    /// Removing scopes with rules below them: empty shells are pruned exactly where
    /// the reference prunes them, and counted.
    #[test]
    fn pruned_shells_match_the_reference(body in document(container()), (rules, unclassified) in scoped_rules()) {
        redact_and_check(body.as_bytes(), rules, unclassified)?;
    }

    /// With no rule and nothing removed, the body comes back unchanged (when no
    /// member name has a control character).
    #[test]
    fn keeping_everything_is_the_identity(j in json(), seed in any::<u64>()) {
        prop_assume!(!has_control_key(&j));
        let body = write(&j, seed);
        let plan = Plan::build(Vec::new(), Unclassified::Keep).unwrap();
        let out = run_with(&plan, body.as_bytes(), LIMITS, None).unwrap();
        prop_assert_eq!(out.body, body.into_bytes());
    }

    /// The body is taken whole, so chunking cannot matter; instead: every truncation
    /// of a document is refused, whatever the plan.
    #[test]
    fn every_truncation_is_refused(body in document(container()), (rules, unclassified) in rules(true)) {
        let plan = Plan::build(rules, unclassified).unwrap();
        let recipient = bob();
        let end = body.trim_end().len();
        for cut in 0..end {
            let result = run_with(&plan, &body.as_bytes()[..cut], LIMITS, Some(&recipient));
            prop_assert!(
                matches!(result, Err(RedactError::InvalidJson { .. } | RedactError::InvalidUtf8 { .. })),
                "prefix {:?} gave {:?}", &body[..cut.min(body.len())], result
            );
        }
    }

    /// Random byte edits of valid documents: redacted correctly (accepted exactly when
    /// serde_json accepts) or refused; never a panic.
    #[test]
    fn mutated_documents_are_redacted_correctly_or_refused(
        body in document(json()),
        edits in prop::collection::vec((any::<prop::sample::Index>(), 0u8..3, prop::sample::select(&b"{}[]\",:\\ u0e1-.9tn\xff\xc3\xa9\xed"[..])), 1..4),
        (rules, unclassified) in rules(true),
    ) {
        let mut bytes = body.into_bytes();
        for (at, op, byte) in edits {
            let i = if bytes.is_empty() { 0 } else { at.index(bytes.len()) };
            match op {
                0 if !bytes.is_empty() => bytes[i] = byte,
                1 => bytes.insert(i, byte),
                _ if !bytes.is_empty() => { bytes.remove(i); }
                _ => bytes.push(byte),
            }
        }
        redact_and_check(&bytes, rules, unclassified)?;
    }

    /// Limits hold for any document.
    #[test]
    fn limits_are_enforced(body in document(json()), max_depth in 0usize..5, max_bytes in 0usize..200) {
        let plan = Plan::build(Vec::new(), Unclassified::Keep).unwrap();
        let depth = depth(&parse(body.as_bytes()));
        let result = run_with(&plan, body.as_bytes(), Limits { max_bytes, max_depth }, None);
        if body.len() > max_bytes {
            prop_assert_eq!(result, Err(RedactError::TooLarge));
        } else if depth > max_depth {
            prop_assert_eq!(result, Err(RedactError::TooDeep));
        } else {
            prop_assert!(result.is_ok());
        }
    }
}

/// Nesting depth, counting every duplicate member (serde_json's map would keep one).
fn depth(t: &T<'_>) -> usize {
    match t {
        T::Arr(_, items) => 1 + items.iter().map(depth).max().unwrap_or(0),
        T::Obj(_, members) => 1 + members.iter().map(|m| depth(&m.2)).max().unwrap_or(0),
        T::Scalar(_) => 0,
    }
}
