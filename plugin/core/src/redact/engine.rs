//! The pass: one walk over the body with an explicit stack of open containers,
//! copying untouched spans in bulk and splicing in removals and replacements.
//!
//! Output is built from the input by a copy cursor (`copied`): everything before it
//! has been written (or deliberately dropped); a change flushes the input up to where
//! it starts, writes its replacement (or nothing), and moves the cursor past the
//! input it replaces. Untouched values are never copied one by one.
//!
//! Commas: a removed member (or element) takes the comma before it with it when an
//! earlier member of its container is in the output; otherwise it takes the comma
//! after it. Either way the container stays valid JSON, down to `{}` and `[]`.
//!
//! Shells: a container opened under a removing scope (kept only for what the rules
//! below it may release) remembers the output length and copy cursor at the start
//! of its member/element, and does not yet mark its parent as having output. If it
//! closes with nothing of its own in the output, the output is truncated back to
//! that length, the copy cursor rewinds, and the member/element is removed like any
//! other (with the same comma rule), which may leave its parent an empty shell in
//! turn. Its input has been validated all the same; nothing is read twice.
//!
//! Keys: a key is scanned once, noting escapes and control characters; it is
//! unescaped only when escaped and needed, and folded only when the exact lookup
//! misses in a state that has case-insensitive names. A member whose name has a
//! control character is removed before any rule is looked at. A value released
//! whole is skipped, and the skip notes control characters in the names inside it:
//! only then does the cursor go back and walk that value (releasing it member by
//! member, those names removed, every container inside it walked), so such a name
//! is never released and the common case reads nothing twice.

use super::fold::fold_into;
use super::jwe::Session;
use super::plan::{ControlKeys, FieldAction, Plan, ROOT, StateId, Unclassified};
use super::syntax::{BOM, Cursor, Kind, unescape};
use super::transform::{self, Unfit, Value};
use super::{Limits, RedactContext, RedactError, Redacted, Report};

struct Frame {
    /// `}` or `]`.
    close: u8,
    /// The automaton state of this container's location.
    state: StateId,
    /// What members/elements of this container with no rule of their own get.
    default: Unclassified,
    /// The rule `default` comes from (a `Keep`/`Remove` on this container or an
    /// ancestor), or `None` for the plan's unclassified default.
    default_rule: Option<u32>,
    /// Some member/element of this container is in the output.
    emitted: bool,
    /// Offset of the comma before the current member/element.
    comma: usize,
    /// Set when this container is a shell: it is dropped if it closes with
    /// `emitted` still false.
    shell: Option<Shell>,
    /// Released whole, but walked because a member name inside it has a control
    /// character: containers inside it are walked too, not skipped.
    walk: bool,
}

/// Where a shell's member/element began, to undo it if nothing inside it is released.
#[derive(Clone, Copy)]
struct Shell {
    /// The input offset of its member/element (just after the `{`, `[` or `,`).
    item_start: usize,
    /// `out.len()` and `copied` when it opened.
    out_len: usize,
    copied: usize,
}

#[derive(Clone, Copy)]
enum Next {
    /// Just inside `{` or `[`: a member/element or the close.
    Open,
    /// A member/element must follow.
    Item,
    /// After a member/element: `,` or the close.
    AfterValue,
}

struct Walker<'p, 'b, 'c, 'k> {
    plan: &'p Plan,
    body: &'b [u8],
    cur: Cursor<'b>,
    max_depth: usize,
    cx: &'c mut RedactContext<'k>,
    out: Vec<u8>,
    copied: usize,
    report: Report,
    stack: Vec<Frame>,
    skip_stack: Vec<u8>,
    key: String,
    folded: String,
    text: String,
    replacement: Vec<u8>,
    session: Option<Session>,
}

pub(crate) fn redact(
    plan: &Plan,
    body: &[u8],
    limits: Limits,
    cx: &mut RedactContext<'_>,
) -> Result<Redacted, RedactError> {
    if body.len() > limits.max_bytes {
        return Err(RedactError::TooLarge);
    }
    if body.starts_with(BOM) {
        return Err(RedactError::ByteOrderMark);
    }
    let mut w = Walker {
        plan,
        body,
        cur: Cursor::new(body),
        max_depth: limits.max_depth,
        cx,
        out: Vec::with_capacity(body.len()),
        copied: 0,
        report: Report::for_rules(plan.rules().len()),
        stack: Vec::new(),
        skip_stack: Vec::new(),
        key: String::new(),
        folded: String::new(),
        text: String::new(),
        replacement: Vec::new(),
        session: None,
    };
    w.document()?;
    Ok(Redacted {
        body: w.out,
        report: w.report,
    })
}

impl Walker<'_, '_, '_, '_> {
    fn document(&mut self) -> Result<(), RedactError> {
        self.cur.skip_ws();
        match self.cur.kind()? {
            kind @ (Kind::Object | Kind::Array) => {
                // The root container is always kept as a container (never a shell).
                self.descend(kind, ROOT, self.plan.unclassified(), None, None, false)?;
            }
            kind => {
                let start = self.cur.pos();
                self.cur.scalar(kind)?;
                if self.plan.unclassified() == Unclassified::Remove {
                    // No path names the root, so a scalar document is unclassified;
                    // it cannot be dropped, so it becomes `null`.
                    self.replacement.clear();
                    self.replacement.extend_from_slice(b"null");
                    self.splice(start, self.cur.pos());
                    self.report.unclassified_removed += 1;
                }
            }
        }
        let mut next = Next::Open;
        while let Some(top) = self.stack.last_mut() {
            next = match next {
                Next::Open => {
                    // The whitespace before a first member belongs to it (and goes
                    // if it goes), so it is not consumed here.
                    if self.cur.peek_past_ws() == Some(top.close) {
                        self.cur.skip_ws();
                        self.cur.bump();
                        self.close()?
                    } else {
                        Next::Item
                    }
                }
                Next::Item => self.item()?,
                Next::AfterValue => {
                    self.cur.skip_ws();
                    match self.cur.peek() {
                        Some(b',') => {
                            top.comma = self.cur.pos();
                            self.cur.bump();
                            Next::Item
                        }
                        Some(b) if b == top.close => {
                            self.cur.bump();
                            self.close()?
                        }
                        _ => return Err(self.cur.invalid()),
                    }
                }
            };
        }
        self.cur.skip_ws();
        if !self.cur.at_end() {
            return Err(self.cur.invalid());
        }
        self.flush(self.body.len());
        Ok(())
    }

    /// One member or element of the innermost open container, from just after its
    /// `{`, `[` or `,`.
    fn item(&mut self) -> Result<Next, RedactError> {
        let plan = self.plan;
        let depth = self.stack.len();
        let Some(top) = self.stack.last() else {
            return Err(self.cur.invalid());
        };
        let (close, default, default_rule) = (top.close, top.default, top.default_rule);
        let walking = top.walk;
        let state = plan.state(top.state);
        let item_start = self.cur.pos();
        self.cur.skip_ws();
        let child = if close == b'}' {
            if self.cur.peek() != Some(b'"') {
                return Err(self.cur.invalid());
            }
            let key_start = self.cur.pos().saturating_add(1);
            let scan = self.cur.key()?;
            let key_end = self.cur.pos().saturating_sub(1);
            self.cur.skip_ws();
            self.cur.expect(b':')?;
            self.cur.skip_ws();
            if scan.control {
                return self.control_key(item_start, key_start.saturating_sub(1));
            }
            if !state.needs_key() {
                state.other_member()
            } else {
                let raw = self.body.get(key_start..key_end).unwrap_or_default();
                let key = if scan.escaped {
                    unescape(raw, &mut self.key)?;
                    self.key.as_bytes()
                } else {
                    raw
                };
                match state.member_exact(key) {
                    Some(next) => next,
                    None if state.folds() => {
                        let text = std::str::from_utf8(key)
                            .map_err(|_| RedactError::InvalidUtf8 { offset: key_start })?;
                        fold_into(text, &mut self.folded);
                        state.member_folded(self.folded.as_bytes())
                    }
                    None => state.other_member(),
                }
            }
        } else {
            state.element()
        };
        let value_start = self.cur.pos();
        let kind = self.cur.kind()?;
        let child_state = plan.state(child);
        let live = match kind {
            Kind::Object => child_state.object_live(),
            Kind::Array => child_state.array_live(),
            _ => false,
        };

        let Some(rule) = child_state.rule else {
            if live {
                // Under a removing scope it is kept only for what is below it.
                let shell = (default == Unclassified::Remove).then_some(item_start);
                self.descend(kind, child, default, default_rule, shell, false)?;
                return Ok(Next::Open);
            }
            if default == Unclassified::Keep {
                if self.skip_released(kind, value_start, child, default_rule, walking)? {
                    return Ok(Next::Open);
                }
            } else {
                self.cur
                    .skip_value(depth, self.max_depth, &mut self.skip_stack)?;
            }
            if let Some(rule) = default_rule {
                self.report.matched(rule);
            }
            return match (default, default_rule) {
                (Unclassified::Keep, None) => Ok(self.kept()),
                (Unclassified::Keep, Some(_)) => {
                    self.report.actions.kept += 1;
                    Ok(self.kept())
                }
                (Unclassified::Remove, None) => {
                    self.report.unclassified_removed += 1;
                    self.remove(item_start)
                }
                (Unclassified::Remove, Some(_)) => {
                    self.report.actions.removed += 1;
                    self.remove(item_start)
                }
            };
        };
        self.report.matched(rule);
        let action = plan.action(rule).unwrap_or(&FieldAction::Remove);
        match action {
            // Keep and Remove on a container with rules below it: the container stays
            // (a Remove only if something below it is released), its own rules apply,
            // and the rest of it is kept or removed.
            FieldAction::Keep | FieldAction::Remove if live => {
                let (default, shell) = if *action == FieldAction::Keep {
                    (Unclassified::Keep, None)
                } else {
                    (Unclassified::Remove, Some(item_start))
                };
                self.descend(kind, child, default, Some(rule), shell, false)?;
                Ok(Next::Open)
            }
            FieldAction::Keep => {
                self.report.actions.kept += 1;
                if self.skip_released(kind, value_start, child, Some(rule), walking)? {
                    return Ok(Next::Open);
                }
                Ok(self.kept())
            }
            FieldAction::Remove => {
                self.report.actions.removed += 1;
                self.cur
                    .skip_value(depth, self.max_depth, &mut self.skip_stack)?;
                self.remove(item_start)
            }
            action => {
                self.cur
                    .skip_value(depth, self.max_depth, &mut self.skip_stack)?;
                let value_end = self.cur.pos();
                match self.transform(action, kind, value_start, value_end)? {
                    Ok(()) => {
                        self.splice(value_start, value_end);
                        Ok(self.kept())
                    }
                    Err(Unfit) => {
                        self.report.fallback(rule);
                        self.remove(item_start)
                    }
                }
            }
        }
    }

    /// A member whose name has a control character, with the cursor at its value:
    /// removed whatever classifies it, or the body refused (see `ControlKeys`).
    fn control_key(&mut self, item_start: usize, key_at: usize) -> Result<Next, RedactError> {
        if self.plan.control_keys() == ControlKeys::Withhold {
            return Err(RedactError::ControlKey { offset: key_at });
        }
        let depth = self.stack.len();
        self.cur
            .skip_value(depth, self.max_depth, &mut self.skip_stack)?;
        self.report.control_keys_removed = self.report.control_keys_removed.saturating_add(1);
        self.remove(item_start)
    }

    /// Skips a value that is released as it is, unless a member name inside it has a
    /// control character: then the cursor goes back and the container is walked
    /// instead (released member by member, those names removed). True when it was
    /// opened to be walked. Inside a walked container, containers are walked at once.
    #[inline(always)]
    fn skip_released(
        &mut self,
        kind: Kind,
        value_start: usize,
        state: StateId,
        rule: Option<u32>,
        walking: bool,
    ) -> Result<bool, RedactError> {
        let container = matches!(kind, Kind::Object | Kind::Array);
        if !(walking && container) {
            let depth = self.stack.len();
            let control = self
                .cur
                .skip_value(depth, self.max_depth, &mut self.skip_stack)?;
            if !control {
                return Ok(false);
            }
            self.cur.rewind(value_start);
        }
        self.walk(kind, state, rule)?;
        Ok(true)
    }

    /// Opens a released container to walk it (see [`Walker::skip_released`]).
    #[inline(never)]
    fn walk(&mut self, kind: Kind, state: StateId, rule: Option<u32>) -> Result<(), RedactError> {
        self.descend(kind, state, Unclassified::Keep, rule, None, true)
    }

    /// Opens a container whose members are classified. It stays in the output,
    /// unless it is a shell (`shell` is the start of its member/element) that closes
    /// with nothing written inside it.
    fn descend(
        &mut self,
        kind: Kind,
        state: StateId,
        default: Unclassified,
        default_rule: Option<u32>,
        shell: Option<usize>,
        walk: bool,
    ) -> Result<(), RedactError> {
        if self.stack.len() >= self.max_depth {
            return Err(RedactError::TooDeep);
        }
        // A shell marks its parent when it closes with something in it.
        if shell.is_none()
            && let Some(parent) = self.stack.last_mut()
        {
            parent.emitted = true;
        }
        let shell = shell.map(|item_start| Shell {
            item_start,
            out_len: self.out.len(),
            copied: self.copied,
        });
        self.stack.push(Frame {
            close: if kind == Kind::Object { b'}' } else { b']' },
            state,
            default,
            default_rule,
            emitted: false,
            comma: 0,
            shell,
            walk,
        });
        self.cur.bump();
        Ok(())
    }

    /// The innermost container's `}` or `]` has just been passed. An empty shell is
    /// dropped: the output goes back to where its member/element began, and it is
    /// removed like a scalar would have been.
    fn close(&mut self) -> Result<Next, RedactError> {
        let Some(frame) = self.stack.pop() else {
            return Err(self.cur.invalid());
        };
        match frame.shell {
            Some(shell) if !frame.emitted => {
                self.out.truncate(shell.out_len);
                self.copied = shell.copied;
                self.report.shells_pruned = self.report.shells_pruned.saturating_add(1);
                self.remove(shell.item_start)
            }
            Some(_) => Ok(self.kept()),
            None => Ok(Next::AfterValue),
        }
    }

    /// The value just scanned stays in the output (as it is, or replaced).
    fn kept(&mut self) -> Next {
        if let Some(top) = self.stack.last_mut() {
            top.emitted = true;
        }
        Next::AfterValue
    }

    /// Drops the member/element that started at `item_start` and whose value the
    /// cursor has just passed, with one adjacent comma.
    fn remove(&mut self, item_start: usize) -> Result<Next, RedactError> {
        let value_end = self.cur.pos();
        let Some(top) = self.stack.last() else {
            return Err(self.cur.invalid());
        };
        if top.emitted {
            // `..., kept <ws>[, removed]<ws> ...`: drop the comma before it.
            let comma = top.comma;
            self.flush(comma);
            self.copied = self.copied.max(value_end);
            return Ok(Next::AfterValue);
        }
        // Nothing of this container is out yet: drop from the item's start through
        // the comma after it, or up to the close (keeping the whitespace before it).
        let close = top.close;
        self.flush(item_start);
        self.cur.skip_ws();
        match self.cur.peek() {
            Some(b',') => {
                self.cur.bump();
                self.copied = self.copied.max(self.cur.pos());
                Ok(Next::Item)
            }
            Some(b) if b == close => {
                self.copied = self.copied.max(value_end);
                Ok(Next::AfterValue)
            }
            _ => Err(self.cur.invalid()),
        }
    }

    /// Writes `self.replacement` in place of the input `start..end`.
    fn splice(&mut self, start: usize, end: usize) {
        self.flush(start);
        self.out.extend_from_slice(&self.replacement);
        self.copied = self.copied.max(end);
    }

    fn flush(&mut self, to: usize) {
        if to > self.copied {
            self.out
                .extend_from_slice(self.body.get(self.copied..to).unwrap_or_default());
            self.copied = to;
        }
    }

    /// Builds the replacement for one value into `self.replacement`; `Ok(Err(Unfit))`
    /// when the action does not fit the value.
    fn transform(
        &mut self,
        action: &FieldAction,
        kind: Kind,
        start: usize,
        end: usize,
    ) -> Result<Result<(), Unfit>, RedactError> {
        let raw = self.body.get(start..end).unwrap_or_default();
        let invalid = RedactError::InvalidJson { offset: start };
        let value = match kind {
            Kind::String => {
                let inner = raw.get(1..raw.len().saturating_sub(1)).ok_or(invalid)?;
                if inner.contains(&b'\\') {
                    unescape(inner, &mut self.text)?;
                    Value::Str(self.text.as_bytes())
                } else {
                    Value::Str(inner)
                }
            }
            Kind::Number => Value::Number(std::str::from_utf8(raw).map_err(|_| invalid)?),
            _ => Value::Other(raw),
        };
        let out = &mut self.replacement;
        out.clear();
        let counts = &mut self.report.actions;
        match action {
            FieldAction::Mask {
                keep_first,
                keep_last,
                mask_char,
                keep_separators,
            } => {
                let fit = transform::mask(
                    value,
                    *keep_first,
                    *keep_last,
                    *mask_char,
                    *keep_separators,
                    out,
                );
                if fit.is_ok() {
                    counts.masked += 1;
                }
                Ok(fit)
            }
            FieldAction::Hash { encoding } => {
                transform::hash(value, *encoding, out);
                counts.hashed += 1;
                Ok(Ok(()))
            }
            FieldAction::Pseudonymise { key_id } => {
                let secret = self
                    .cx
                    .pseudonym_keys
                    .get(key_id)
                    .ok_or(RedactError::MissingKey)?;
                let grantee = self.cx.grantee;
                if grantee.is_some_and(|g| g.contains('\0')) {
                    return Err(RedactError::InvalidGrantee);
                }
                transform::pseudonymise(value, key_id, secret, grantee, out);
                counts.pseudonymised += 1;
                Ok(Ok(()))
            }
            FieldAction::Generalise(how) => {
                let fit = transform::generalise(value, *how, out);
                if fit.is_ok() {
                    counts.generalised += 1;
                }
                Ok(fit)
            }
            FieldAction::Encrypt => {
                let recipient = self.cx.recipient.ok_or(RedactError::MissingKey)?;
                let session = match &mut self.session {
                    Some(s) => s,
                    empty => empty.insert(Session::start(recipient, self.cx.random)?),
                };
                session.encrypt(raw, self.cx.random, out)?;
                counts.encrypted += 1;
                Ok(Ok(()))
            }
            FieldAction::Keep | FieldAction::Remove => Ok(Err(Unfit)),
        }
    }
}
