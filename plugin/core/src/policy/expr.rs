//! Rule conditions: a documented subset of CEL, the expression language Envoy RBAC,
//! Istio and Kubernetes users already write.
//!
//! Why not a CEL crate: the maintained Rust CEL interpreter adds about 1 MB to the
//! `.wasm` (more than the rest of the plugin), costs about 20 µs per evaluation
//! natively, and has hundreds of `unwrap`s on its paths; a panic in the plugin is a
//! trap that takes the worker's VM down. This subset is compiled once at load, checks
//! names and arities then, and evaluates without panicking and mostly without
//! allocating.
//!
//! Supported: literals (`1`, `-3`, `1.5`, `'text'`, `"text"`, `true`, `false`, `null`,
//! `[a, b]`), `!`, unary `-`, `&&`, `||` (with CEL's error absorption: `false && e` is
//! false, `true || e` is true), `==`, `!=`, `<`, `<=`, `>`, `>=`, `in` (list membership,
//! map key), `+` (ints, doubles, strings, lists), `-`, `? :`, field access `a.b`,
//! indexing `a[i]`, `a['key']`, and the functions `size(x)`, `has(a.b)`, `int(x)`,
//! `string(x)`, `x.startsWith(s)`, `x.endsWith(s)`, `x.contains(s)`, `x.lowerAscii()`,
//! `list.exists(v, pred)`, `list.all(v, pred)`, `list.exists_one(v, pred)`.
//! An expression that cannot be evaluated (a missing field, a type error) yields an
//! error, which the policy treats as "not granted" for allow rules and as "matched" for
//! deny rules: errors never grant access.

use std::borrow::Cow;
use std::fmt;

/// A runtime value. Strings and collections borrow from the request where they can.
#[derive(Debug, Clone, PartialEq)]
pub enum Value<'a> {
    Null,
    Bool(bool),
    Int(i64),
    Double(f64),
    Str(Cow<'a, str>),
    List(Vec<Value<'a>>),
    Map(Vec<(Cow<'a, str>, Value<'a>)>),
}

impl Value<'_> {
    /// Converts a JSON value (a token claim) into an expression value.
    pub fn from_json(v: &serde_json::Value) -> Value<'_> {
        match v {
            serde_json::Value::Null => Value::Null,
            serde_json::Value::Bool(b) => Value::Bool(*b),
            serde_json::Value::Number(n) => match n.as_i64() {
                Some(i) => Value::Int(i),
                None => n.as_f64().map_or(Value::Null, Value::Double),
            },
            serde_json::Value::String(s) => Value::Str(Cow::Borrowed(s)),
            serde_json::Value::Array(a) => Value::List(a.iter().map(Value::from_json).collect()),
            serde_json::Value::Object(o) => Value::Map(
                o.iter()
                    .map(|(k, v)| (Cow::Borrowed(k.as_str()), Value::from_json(v)))
                    .collect(),
            ),
        }
    }
}

/// Why an expression could not be evaluated (a reason, never a value).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EvalError(pub &'static str);

/// Where the compiled expression reads its variables: the policy gives the request's
/// view; tests give a map.
pub trait Env {
    /// The value of a top-level variable, or `None` when it does not exist.
    fn variable(&self, name: &str) -> Option<Value<'_>>;
}

/// A compile error, with the byte offset it refers to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompileError {
    pub offset: usize,
    pub message: String,
}

impl fmt::Display for CompileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "at offset {}: {}", self.offset, self.message)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BinOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    In,
    Add,
    Sub,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Func {
    Size,
    Int,
    String,
    StartsWith,
    EndsWith,
    Contains,
    LowerAscii,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Quantifier {
    Exists,
    All,
    ExistsOne,
}

#[derive(Debug, Clone, PartialEq)]
enum Node {
    Lit(Value<'static>),
    Var(String),
    /// A variable bound by a comprehension, by depth.
    Bound(usize),
    Field(Box<Node>, String),
    Index(Box<Node>, Box<Node>),
    Has(Box<Node>, String),
    Not(Box<Node>),
    Neg(Box<Node>),
    And(Box<Node>, Box<Node>),
    Or(Box<Node>, Box<Node>),
    Cond(Box<Node>, Box<Node>, Box<Node>),
    Bin(BinOp, Box<Node>, Box<Node>),
    Call(Func, Vec<Node>),
    List(Vec<Node>),
    Comprehension(Quantifier, Box<Node>, Box<Node>),
}

/// A compiled condition.
#[derive(Debug, Clone, PartialEq)]
pub struct Expr {
    root: Node,
    source: String,
}

/// Limits that keep a hostile or mistaken expression from costing much.
const MAX_SOURCE: usize = 4096;
const MAX_DEPTH: usize = 48;
/// Nodes one evaluation may visit: nested macros multiply (ten-element lists nested
/// eight deep are 10⁸ visits), and an evaluation runs on every request.
pub const MAX_EVAL_STEPS: usize = 10_000;
/// Bytes and list items one evaluation's `+` may build, all together: each `a + a`
/// doubles, and a macro repeats it.
pub const MAX_EVAL_BUILT: usize = 64 * 1024;

/// What one evaluation has left to spend.
struct Budget {
    steps: usize,
    built: usize,
}

impl Budget {
    fn new() -> Self {
        Self {
            steps: MAX_EVAL_STEPS,
            built: MAX_EVAL_BUILT,
        }
    }

    fn step(&mut self) -> Result<(), EvalError> {
        self.steps = self.steps.checked_sub(1).ok_or(TOO_COSTLY)?;
        Ok(())
    }

    fn build(&mut self, size: usize) -> Result<(), EvalError> {
        self.built = self.built.checked_sub(size).ok_or(TOO_COSTLY)?;
        Ok(())
    }
}

const TOO_COSTLY: EvalError = EvalError("the condition is too costly to evaluate");

impl Expr {
    /// Parses and checks an expression. `variables` are the names it may use.
    pub fn compile(source: &str, variables: &[&str]) -> Result<Self, CompileError> {
        if source.len() > MAX_SOURCE {
            return Err(CompileError {
                offset: MAX_SOURCE,
                message: format!("longer than {MAX_SOURCE} bytes"),
            });
        }
        let tokens = lex(source)?;
        let mut p = Parser {
            tokens,
            pos: 0,
            variables,
            bound: Vec::new(),
            depth: 0,
            end: source.len(),
        };
        let root = p.expr()?;
        if let Some((offset, t)) = p.tokens.get(p.pos) {
            return Err(CompileError {
                offset: *offset,
                message: format!("unexpected {t}"),
            });
        }
        Ok(Self {
            root,
            source: source.to_owned(),
        })
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// Whether the expression reads the variable `name` anywhere.
    pub fn reads(&self, name: &str) -> bool {
        reads(&self.root, name)
    }

    /// Evaluates to a boolean; anything else is an error.
    pub fn eval_bool(&self, env: &dyn Env) -> Result<bool, EvalError> {
        match self.eval(env)? {
            Value::Bool(b) => Ok(b),
            _ => Err(EvalError("the condition is not a boolean")),
        }
    }

    /// Evaluates within [`MAX_EVAL_STEPS`] and [`MAX_EVAL_BUILT`]; beyond them, an error.
    pub fn eval<'e>(&self, env: &'e dyn Env) -> Result<Value<'e>, EvalError> {
        let mut scope = Vec::new();
        eval(&self.root, env, &mut scope, &mut Budget::new(), 0)
    }
}

fn reads(node: &Node, name: &str) -> bool {
    match node {
        Node::Var(v) => v == name,
        Node::Lit(_) | Node::Bound(_) => false,
        Node::Field(a, _) | Node::Has(a, _) | Node::Not(a) | Node::Neg(a) => reads(a, name),
        Node::Index(a, b)
        | Node::And(a, b)
        | Node::Or(a, b)
        | Node::Bin(_, a, b)
        | Node::Comprehension(_, a, b) => reads(a, name) || reads(b, name),
        Node::Cond(a, b, c) => reads(a, name) || reads(b, name) || reads(c, name),
        Node::Call(_, args) | Node::List(args) => args.iter().any(|a| reads(a, name)),
    }
}

// ---------------------------------------------------------------------------
// Lexer.

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Int(i64),
    Double(f64),
    Str(String),
    Ident(String),
    Sym(&'static str),
}

impl fmt::Display for Tok {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Tok::Int(i) => write!(f, "number {i}"),
            Tok::Double(d) => write!(f, "number {d}"),
            Tok::Str(_) => write!(f, "a string"),
            Tok::Ident(s) => write!(f, "'{s}'"),
            Tok::Sym(s) => write!(f, "'{s}'"),
        }
    }
}

const SYMBOLS: [&str; 21] = [
    "&&", "||", "==", "!=", "<=", ">=", "<", ">", "!", "+", "-", "(", ")", "[", "]", ".", ",", "?",
    ":", "{", "}",
];

fn lex(src: &str) -> Result<Vec<(usize, Tok)>, CompileError> {
    let bytes = src.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    let err = |offset: usize, message: &str| CompileError {
        offset,
        message: message.to_owned(),
    };
    while let Some(&b) = bytes.get(i) {
        if b.is_ascii_whitespace() {
            i += 1;
            continue;
        }
        let start = i;
        if b.is_ascii_digit() {
            while bytes.get(i).is_some_and(u8::is_ascii_digit) {
                i += 1;
            }
            let is_double =
                bytes.get(i) == Some(&b'.') && bytes.get(i + 1).is_some_and(u8::is_ascii_digit);
            if is_double {
                i += 1;
                while bytes.get(i).is_some_and(u8::is_ascii_digit) {
                    i += 1;
                }
                let text = src.get(start..i).unwrap_or_default();
                let v = text.parse::<f64>().map_err(|_| err(start, "bad number"))?;
                out.push((start, Tok::Double(v)));
            } else {
                let text = src.get(start..i).unwrap_or_default();
                let v = text
                    .parse::<i64>()
                    .map_err(|_| err(start, "integer out of range"))?;
                out.push((start, Tok::Int(v)));
            }
            continue;
        }
        if b == b'\'' || b == b'"' {
            let quote = b;
            i += 1;
            let mut s = String::new();
            loop {
                let Some(&c) = bytes.get(i) else {
                    return Err(err(start, "unterminated string"));
                };
                if c == quote {
                    i += 1;
                    break;
                }
                if c == b'\\' {
                    let esc = bytes.get(i + 1).copied();
                    let ch = match esc {
                        Some(b'\\') => '\\',
                        Some(b'\'') => '\'',
                        Some(b'"') => '"',
                        Some(b'n') => '\n',
                        Some(b't') => '\t',
                        _ => return Err(err(i, "unknown escape in string")),
                    };
                    s.push(ch);
                    i += 2;
                    continue;
                }
                // Copy one UTF-8 character.
                let rest = src.get(i..).unwrap_or_default();
                let Some(ch) = rest.chars().next() else {
                    return Err(err(i, "bad character"));
                };
                s.push(ch);
                i += ch.len_utf8();
            }
            out.push((start, Tok::Str(s)));
            continue;
        }
        if b.is_ascii_alphabetic() || b == b'_' {
            while bytes
                .get(i)
                .is_some_and(|c| c.is_ascii_alphanumeric() || *c == b'_')
            {
                i += 1;
            }
            out.push((
                start,
                Tok::Ident(src.get(start..i).unwrap_or_default().to_owned()),
            ));
            continue;
        }
        let rest = src.get(i..).unwrap_or_default();
        match SYMBOLS.iter().find(|s| rest.starts_with(**s)) {
            Some(s) => {
                out.push((start, Tok::Sym(s)));
                i += s.len();
            }
            None => return Err(err(start, "unexpected character")),
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------------
// Parser (precedence climbing, CEL's precedence).

struct Parser<'v> {
    tokens: Vec<(usize, Tok)>,
    pos: usize,
    variables: &'v [&'v str],
    bound: Vec<String>,
    depth: usize,
    end: usize,
}

impl Parser<'_> {
    fn offset(&self) -> usize {
        self.tokens.get(self.pos).map_or(self.end, |(o, _)| *o)
    }

    fn error<T>(&self, message: impl Into<String>) -> Result<T, CompileError> {
        Err(CompileError {
            offset: self.offset(),
            message: message.into(),
        })
    }

    fn peek_sym(&self, s: &str) -> bool {
        matches!(self.tokens.get(self.pos), Some((_, Tok::Sym(t))) if *t == s)
    }

    fn eat_sym(&mut self, s: &str) -> bool {
        if self.peek_sym(s) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn expect_sym(&mut self, s: &str) -> Result<(), CompileError> {
        if self.eat_sym(s) {
            Ok(())
        } else {
            match self.tokens.get(self.pos) {
                Some((_, t)) => self.error(format!("expected '{s}', found {t}")),
                None => self.error(format!("expected '{s}' at the end")),
            }
        }
    }

    fn ident(&mut self) -> Result<String, CompileError> {
        match self.tokens.get(self.pos) {
            Some((_, Tok::Ident(s))) => {
                let s = s.clone();
                self.pos += 1;
                Ok(s)
            }
            _ => self.error("expected a name"),
        }
    }

    fn nest(&mut self) -> Result<(), CompileError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return self.error(format!("nested deeper than {MAX_DEPTH}"));
        }
        Ok(())
    }

    fn expr(&mut self) -> Result<Node, CompileError> {
        self.nest()?;
        let cond = self.or()?;
        let node = if self.eat_sym("?") {
            let a = self.expr()?;
            self.expect_sym(":")?;
            let b = self.expr()?;
            Node::Cond(Box::new(cond), Box::new(a), Box::new(b))
        } else {
            cond
        };
        self.depth -= 1;
        Ok(node)
    }

    fn or(&mut self) -> Result<Node, CompileError> {
        let mut left = self.and()?;
        while self.eat_sym("||") {
            let right = self.and()?;
            left = Node::Or(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<Node, CompileError> {
        let mut left = self.relation()?;
        while self.eat_sym("&&") {
            let right = self.relation()?;
            left = Node::And(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn relation(&mut self) -> Result<Node, CompileError> {
        let left = self.additive()?;
        let op = match self.tokens.get(self.pos) {
            Some((_, Tok::Sym("=="))) => BinOp::Eq,
            Some((_, Tok::Sym("!="))) => BinOp::Ne,
            Some((_, Tok::Sym("<"))) => BinOp::Lt,
            Some((_, Tok::Sym("<="))) => BinOp::Le,
            Some((_, Tok::Sym(">"))) => BinOp::Gt,
            Some((_, Tok::Sym(">="))) => BinOp::Ge,
            Some((_, Tok::Ident(s))) if s == "in" => BinOp::In,
            _ => return Ok(left),
        };
        self.pos += 1;
        let right = self.additive()?;
        Ok(Node::Bin(op, Box::new(left), Box::new(right)))
    }

    fn additive(&mut self) -> Result<Node, CompileError> {
        let mut left = self.unary()?;
        loop {
            let op = if self.eat_sym("+") {
                BinOp::Add
            } else if self.eat_sym("-") {
                BinOp::Sub
            } else {
                return Ok(left);
            };
            let right = self.unary()?;
            left = Node::Bin(op, Box::new(left), Box::new(right));
        }
    }

    fn unary(&mut self) -> Result<Node, CompileError> {
        if self.eat_sym("!") {
            self.nest()?;
            let inner = self.unary()?;
            self.depth -= 1;
            return Ok(Node::Not(Box::new(inner)));
        }
        if self.eat_sym("-") {
            self.nest()?;
            let inner = self.unary()?;
            self.depth -= 1;
            return Ok(match inner {
                Node::Lit(Value::Int(i)) => Node::Lit(Value::Int(i.wrapping_neg())),
                Node::Lit(Value::Double(d)) => Node::Lit(Value::Double(-d)),
                other => Node::Neg(Box::new(other)),
            });
        }
        self.member()
    }

    fn member(&mut self) -> Result<Node, CompileError> {
        let mut node = self.primary()?;
        loop {
            if self.eat_sym(".") {
                let name = self.ident()?;
                if self.eat_sym("(") {
                    node = self.method(node, &name)?;
                } else {
                    node = Node::Field(Box::new(node), name);
                }
            } else if self.eat_sym("[") {
                let index = self.expr()?;
                self.expect_sym("]")?;
                node = Node::Index(Box::new(node), Box::new(index));
            } else {
                return Ok(node);
            }
        }
    }

    fn args(&mut self) -> Result<Vec<Node>, CompileError> {
        let mut args = Vec::new();
        if self.eat_sym(")") {
            return Ok(args);
        }
        loop {
            args.push(self.expr()?);
            if self.eat_sym(")") {
                return Ok(args);
            }
            self.expect_sym(",")?;
        }
    }

    fn method(&mut self, target: Node, name: &str) -> Result<Node, CompileError> {
        let quantifier = match name {
            "exists" => Some(Quantifier::Exists),
            "all" => Some(Quantifier::All),
            "exists_one" => Some(Quantifier::ExistsOne),
            _ => None,
        };
        if let Some(q) = quantifier {
            let var = self.ident()?;
            if self.variables.contains(&var.as_str()) || self.bound.contains(&var) {
                return self.error(format!("'{var}' is already a variable"));
            }
            self.expect_sym(",")?;
            self.bound.push(var);
            let predicate = self.expr();
            self.bound.pop();
            let predicate = predicate?;
            self.expect_sym(")")?;
            return Ok(Node::Comprehension(
                q,
                Box::new(target),
                Box::new(predicate),
            ));
        }
        let func = match name {
            "startsWith" => Func::StartsWith,
            "endsWith" => Func::EndsWith,
            "contains" => Func::Contains,
            "lowerAscii" => Func::LowerAscii,
            "size" => Func::Size,
            _ => return self.error(format!("unknown method '{name}'")),
        };
        let mut args = vec![target];
        args.extend(self.args()?);
        let want = match func {
            Func::LowerAscii | Func::Size => 1,
            _ => 2,
        };
        if args.len() != want {
            return self.error(format!("'{name}' takes {} argument(s)", want - 1));
        }
        Ok(Node::Call(func, args))
    }

    fn primary(&mut self) -> Result<Node, CompileError> {
        let Some((_, tok)) = self.tokens.get(self.pos).cloned() else {
            return self.error("expected an expression at the end");
        };
        self.pos += 1;
        match tok {
            Tok::Int(i) => Ok(Node::Lit(Value::Int(i))),
            Tok::Double(d) => Ok(Node::Lit(Value::Double(d))),
            Tok::Str(s) => Ok(Node::Lit(Value::Str(Cow::Owned(s)))),
            Tok::Sym("(") => {
                let e = self.expr()?;
                self.expect_sym(")")?;
                Ok(e)
            }
            Tok::Sym("[") => {
                let mut items = Vec::new();
                if !self.eat_sym("]") {
                    loop {
                        items.push(self.expr()?);
                        if self.eat_sym("]") {
                            break;
                        }
                        self.expect_sym(",")?;
                    }
                }
                Ok(Node::List(items))
            }
            Tok::Ident(name) => match name.as_str() {
                "true" => Ok(Node::Lit(Value::Bool(true))),
                "false" => Ok(Node::Lit(Value::Bool(false))),
                "null" => Ok(Node::Lit(Value::Null)),
                _ if self.peek_sym("(") => {
                    self.pos += 1;
                    self.function(&name)
                }
                _ => {
                    if let Some(depth) = self.bound.iter().rposition(|b| *b == name) {
                        return Ok(Node::Bound(depth));
                    }
                    if !self.variables.contains(&name.as_str()) {
                        self.pos -= 1;
                        return self.error(format!(
                            "unknown name '{name}'; available: {}",
                            self.variables.join(", ")
                        ));
                    }
                    Ok(Node::Var(name))
                }
            },
            other => {
                self.pos -= 1;
                self.error(format!("unexpected {other}"))
            }
        }
    }

    fn function(&mut self, name: &str) -> Result<Node, CompileError> {
        if name == "has" {
            let arg = self.expr()?;
            self.expect_sym(")")?;
            return match arg {
                Node::Field(target, field) => Ok(Node::Has(target, field)),
                _ => self.error("has() takes a field selection such as has(claims.act)"),
            };
        }
        let func = match name {
            "size" => Func::Size,
            "int" => Func::Int,
            "string" => Func::String,
            _ => return self.error(format!("unknown function '{name}'")),
        };
        let args = self.args()?;
        if args.len() != 1 {
            return self.error(format!("'{name}' takes one argument"));
        }
        Ok(Node::Call(func, args))
    }
}

// ---------------------------------------------------------------------------
// Evaluation.

fn eval<'e>(
    node: &Node,
    env: &'e dyn Env,
    scope: &mut Vec<Value<'e>>,
    budget: &mut Budget,
    depth: usize,
) -> Result<Value<'e>, EvalError> {
    if depth > MAX_DEPTH * 2 {
        return Err(EvalError("nested too deeply"));
    }
    budget.step()?;
    let d = depth + 1;
    match node {
        Node::Lit(v) => Ok(v.clone()),
        Node::Var(name) => env.variable(name).ok_or(EvalError("unknown variable")),
        Node::Bound(i) => scope.get(*i).cloned().ok_or(EvalError("unbound variable")),
        Node::Field(target, name) => {
            let t = eval(target, env, scope, budget, d)?;
            field(t, name).ok_or(EvalError("no such field"))
        }
        Node::Has(target, name) => {
            let t = eval(target, env, scope, budget, d)?;
            match t {
                Value::Map(_) => Ok(Value::Bool(field(t, name).is_some())),
                _ => Err(EvalError("has() needs a map")),
            }
        }
        Node::Index(target, index) => {
            let t = eval(target, env, scope, budget, d)?;
            let i = eval(index, env, scope, budget, d)?;
            match (t, i) {
                (Value::List(items), Value::Int(i)) => usize::try_from(i)
                    .ok()
                    .and_then(|i| items.into_iter().nth(i))
                    .ok_or(EvalError("index out of range")),
                (m @ Value::Map(_), Value::Str(k)) => field(m, &k).ok_or(EvalError("no such key")),
                _ => Err(EvalError("bad index")),
            }
        }
        Node::Not(inner) => match eval(inner, env, scope, budget, d)? {
            Value::Bool(b) => Ok(Value::Bool(!b)),
            _ => Err(EvalError("! needs a bool")),
        },
        Node::Neg(inner) => match eval(inner, env, scope, budget, d)? {
            Value::Int(i) => i.checked_neg().map(Value::Int).ok_or(EvalError("overflow")),
            Value::Double(x) => Ok(Value::Double(-x)),
            _ => Err(EvalError("- needs a number")),
        },
        Node::And(a, b) => {
            // CEL: false absorbs errors on either side.
            let x = eval(a, env, scope, budget, d);
            if matches!(x, Ok(Value::Bool(false))) {
                return Ok(Value::Bool(false));
            }
            let y = eval(b, env, scope, budget, d);
            match (x, y) {
                (_, Ok(Value::Bool(false))) => Ok(Value::Bool(false)),
                (Ok(Value::Bool(true)), Ok(Value::Bool(true))) => Ok(Value::Bool(true)),
                (Err(e), _) | (_, Err(e)) => Err(e),
                _ => Err(EvalError("&& needs bools")),
            }
        }
        Node::Or(a, b) => {
            let x = eval(a, env, scope, budget, d);
            if matches!(x, Ok(Value::Bool(true))) {
                return Ok(Value::Bool(true));
            }
            let y = eval(b, env, scope, budget, d);
            match (x, y) {
                (_, Ok(Value::Bool(true))) => Ok(Value::Bool(true)),
                (Ok(Value::Bool(false)), Ok(Value::Bool(false))) => Ok(Value::Bool(false)),
                (Err(e), _) | (_, Err(e)) => Err(e),
                _ => Err(EvalError("|| needs bools")),
            }
        }
        Node::Cond(c, a, b) => match eval(c, env, scope, budget, d)? {
            Value::Bool(true) => eval(a, env, scope, budget, d),
            Value::Bool(false) => eval(b, env, scope, budget, d),
            _ => Err(EvalError("?: needs a bool")),
        },
        Node::Bin(op, a, b) => {
            let x = eval(a, env, scope, budget, d)?;
            let y = eval(b, env, scope, budget, d)?;
            binary(*op, x, y, budget)
        }
        Node::Call(f, args) => {
            let mut vals = Vec::with_capacity(args.len());
            for a in args {
                vals.push(eval(a, env, scope, budget, d)?);
            }
            call(*f, vals)
        }
        Node::List(items) => {
            let mut vals = Vec::with_capacity(items.len());
            for i in items {
                vals.push(eval(i, env, scope, budget, d)?);
            }
            Ok(Value::List(vals))
        }
        Node::Comprehension(q, target, pred) => {
            let items = match eval(target, env, scope, budget, d)? {
                Value::List(items) => items,
                Value::Map(entries) => entries.into_iter().map(|(k, _)| Value::Str(k)).collect(),
                _ => return Err(EvalError("a quantifier needs a list or map")),
            };
            let mut count = 0usize;
            let mut error = None;
            for item in items {
                scope.push(item);
                let r = eval(pred, env, scope, budget, d);
                scope.pop();
                match r {
                    Ok(Value::Bool(true)) => {
                        count += 1;
                        if *q == Quantifier::Exists {
                            return Ok(Value::Bool(true));
                        }
                    }
                    Ok(Value::Bool(false)) => {
                        if *q == Quantifier::All {
                            return Ok(Value::Bool(false));
                        }
                    }
                    Ok(_) => error = Some(EvalError("a predicate must be a bool")),
                    Err(e) => error = Some(e),
                }
            }
            if let Some(e) = error {
                return Err(e);
            }
            Ok(Value::Bool(match q {
                Quantifier::Exists => false,
                Quantifier::All => true,
                Quantifier::ExistsOne => count == 1,
            }))
        }
    }
}

fn field<'e>(v: Value<'e>, name: &str) -> Option<Value<'e>> {
    match v {
        Value::Map(entries) => entries.into_iter().find(|(k, _)| k == name).map(|(_, v)| v),
        _ => None,
    }
}

fn equal(a: &Value<'_>, b: &Value<'_>) -> bool {
    match (a, b) {
        (Value::Int(x), Value::Double(y)) | (Value::Double(y), Value::Int(x)) => (*x as f64) == *y,
        (Value::List(x), Value::List(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| equal(a, b))
        }
        _ => a == b,
    }
}

fn order(a: &Value<'_>, b: &Value<'_>) -> Result<std::cmp::Ordering, EvalError> {
    let o = match (a, b) {
        (Value::Int(x), Value::Int(y)) => Some(x.cmp(y)),
        (Value::Double(x), Value::Double(y)) => x.partial_cmp(y),
        (Value::Int(x), Value::Double(y)) => (*x as f64).partial_cmp(y),
        (Value::Double(x), Value::Int(y)) => x.partial_cmp(&(*y as f64)),
        (Value::Str(x), Value::Str(y)) => Some(x.cmp(y)),
        (Value::Bool(x), Value::Bool(y)) => Some(x.cmp(y)),
        _ => None,
    };
    o.ok_or(EvalError("values cannot be ordered"))
}

fn binary<'e>(
    op: BinOp,
    x: Value<'e>,
    y: Value<'e>,
    budget: &mut Budget,
) -> Result<Value<'e>, EvalError> {
    use std::cmp::Ordering::*;
    Ok(match op {
        BinOp::Eq => Value::Bool(equal(&x, &y)),
        BinOp::Ne => Value::Bool(!equal(&x, &y)),
        BinOp::Lt => Value::Bool(order(&x, &y)? == Less),
        BinOp::Le => Value::Bool(order(&x, &y)? != Greater),
        BinOp::Gt => Value::Bool(order(&x, &y)? == Greater),
        BinOp::Ge => Value::Bool(order(&x, &y)? != Less),
        BinOp::In => match y {
            Value::List(items) => Value::Bool(items.iter().any(|i| equal(&x, i))),
            Value::Map(entries) => match &x {
                Value::Str(k) => Value::Bool(entries.iter().any(|(e, _)| e == k)),
                _ => return Err(EvalError("a map key is a string")),
            },
            _ => return Err(EvalError("'in' needs a list or map")),
        },
        BinOp::Add => match (x, y) {
            (Value::Int(a), Value::Int(b)) => {
                Value::Int(a.checked_add(b).ok_or(EvalError("overflow"))?)
            }
            (Value::Double(a), Value::Double(b)) => Value::Double(a + b),
            (Value::Str(a), Value::Str(b)) => {
                budget.build(a.len().saturating_add(b.len()))?;
                Value::Str(Cow::Owned(format!("{a}{b}")))
            }
            (Value::List(mut a), Value::List(b)) => {
                budget.build(a.len().saturating_add(b.len()))?;
                a.extend(b);
                Value::List(a)
            }
            _ => return Err(EvalError("+ needs two values of one type")),
        },
        BinOp::Sub => match (x, y) {
            (Value::Int(a), Value::Int(b)) => {
                Value::Int(a.checked_sub(b).ok_or(EvalError("overflow"))?)
            }
            (Value::Double(a), Value::Double(b)) => Value::Double(a - b),
            _ => return Err(EvalError("- needs two numbers of one type")),
        },
    })
}

fn call<'e>(f: Func, mut args: Vec<Value<'e>>) -> Result<Value<'e>, EvalError> {
    let mut arg = || -> Result<Value<'e>, EvalError> {
        if args.is_empty() {
            Err(EvalError("missing argument"))
        } else {
            Ok(args.remove(0))
        }
    };
    let first = arg()?;
    match f {
        Func::Size => Ok(Value::Int(match &first {
            Value::Str(s) => i64::try_from(s.chars().count()).unwrap_or(i64::MAX),
            Value::List(l) => i64::try_from(l.len()).unwrap_or(i64::MAX),
            Value::Map(m) => i64::try_from(m.len()).unwrap_or(i64::MAX),
            _ => return Err(EvalError("size() needs a string, list or map")),
        })),
        Func::Int => match first {
            Value::Int(i) => Ok(Value::Int(i)),
            Value::Double(d) if d.is_finite() && d.abs() < 9.0e18 => {
                Ok(Value::Int(d.trunc() as i64))
            }
            Value::Str(s) => s
                .trim()
                .parse()
                .map(Value::Int)
                .map_err(|_| EvalError("int() of a non-number")),
            _ => Err(EvalError("int() of a non-number")),
        },
        Func::String => Ok(Value::Str(Cow::Owned(match first {
            Value::Str(s) => s.into_owned(),
            Value::Int(i) => i.to_string(),
            Value::Double(d) => d.to_string(),
            Value::Bool(b) => b.to_string(),
            Value::Null => "null".into(),
            _ => return Err(EvalError("string() of a collection")),
        }))),
        Func::LowerAscii => match first {
            Value::Str(s) => Ok(Value::Str(Cow::Owned(s.to_ascii_lowercase()))),
            _ => Err(EvalError("lowerAscii() needs a string")),
        },
        Func::StartsWith | Func::EndsWith | Func::Contains => {
            let second = arg()?;
            match (first, second) {
                (Value::Str(a), Value::Str(b)) => Ok(Value::Bool(match f {
                    Func::StartsWith => a.starts_with(b.as_ref()),
                    Func::EndsWith => a.ends_with(b.as_ref()),
                    _ => a.contains(b.as_ref()),
                })),
                (Value::List(items), x) if f == Func::Contains => {
                    Ok(Value::Bool(items.iter().any(|i| equal(i, &x))))
                }
                _ => Err(EvalError("string function on a non-string")),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct MapEnv(serde_json::Value);

    impl Env for MapEnv {
        fn variable(&self, name: &str) -> Option<Value<'_>> {
            self.0.get(name).map(Value::from_json)
        }
    }

    fn env() -> MapEnv {
        MapEnv(serde_json::json!({
            "consent": {"subject": "p-1", "purposes": ["claims", "care"], "domains": ["billing"], "issued_at": 100},
            "request": {"method": "GET", "params": {"id": "p-1"}, "headers": {"x-a": "1"}},
            "claims": {"act": {"sub": "p-4"}, "n": 2.5},
            "now": 200
        }))
    }

    const VARS: [&str; 4] = ["consent", "request", "claims", "now"];

    fn run(src: &str) -> Result<Value<'static>, EvalError> {
        let e = Expr::compile(src, &VARS).unwrap_or_else(|e| panic!("{src}: {e}"));
        let env = env();
        e.eval(&env).map(|v| match v {
            Value::Bool(b) => Value::Bool(b),
            Value::Int(i) => Value::Int(i),
            Value::Str(s) => Value::Str(Cow::Owned(s.into_owned())),
            _ => Value::Null,
        })
    }

    #[test]
    fn the_cel_subset_evaluates_as_cel_does() {
        let t = Value::Bool(true);
        for src in [
            "'claims' in consent.purposes",
            "consent.subject == request.params.id",
            "request.method == 'GET' && !('research' in consent.purposes)",
            "now - consent.issued_at <= 100",
            "size(consent.purposes) == 2 && consent.purposes.size() == 2",
            "consent.purposes.exists(p, p.startsWith('ca'))",
            "consent.purposes.all(p, size(p) > 3)",
            "consent.purposes.exists_one(p, p == 'care')",
            "has(claims.act) && claims.act.sub == 'p-4'",
            "!has(claims.missing)",
            "claims.n > 2 && claims.n < 3",
            "request.headers['x-a'] == '1'",
            "'x-a' in request.headers",
            "int('42') == 42 && string(7) == '7'",
            "true ? consent.subject == 'p-1' : false",
            "[1, 2] + [3] == [1, 2, 3]",
            "'AB'.lowerAscii() == 'ab' && 'abc'.contains('b') && 'abc'.endsWith('c')",
            // Errors are absorbed by false && and true ||, as in CEL.
            "!(false && claims.missing == 1)",
            "true || claims.missing == 1",
        ] {
            assert_eq!(run(src), Ok(t.clone()), "{src}");
        }
    }

    #[test]
    fn missing_fields_and_type_errors_are_errors_not_false() {
        for src in [
            "claims.missing == 1",
            "consent.subject > 3",
            "request.params.id + 1 == 2",
            "consent.purposes[5] == 'x'",
            "size(1) == 1",
        ] {
            assert!(run(src).is_err(), "{src}");
        }
    }

    #[test]
    fn reads_finds_a_variable_wherever_it_is_used() {
        let vars = ["claims", "consent", "request"];
        for (source, expected) in [
            ("claims.a == 1", true),
            ("has(claims.a)", true),
            ("consent.subject == 'x' || size(claims) > 0", true),
            ("consent.domains.exists(d, d == claims.d)", true),
            ("[1, claims.a][0] == 1", true),
            ("true ? 1 : claims.a", true),
            ("!(request.method == 'GET')", false),
            ("consent.purposes.all(p, p.startsWith('c'))", false),
            ("'claims' in consent.domains", false),
        ] {
            let e = Expr::compile(source, &vars).unwrap();
            assert_eq!(e.reads("claims"), expected, "{source}");
        }
    }

    #[test]
    fn compile_errors_name_the_place() {
        let e = Expr::compile("consent.subject == ", &VARS).unwrap_err();
        assert_eq!(e.offset, 19);
        let e = Expr::compile("token.sub == 'x'", &VARS).unwrap_err();
        assert_eq!(e.offset, 0);
        assert!(e.message.contains("unknown name 'token'"), "{e}");
        let e = Expr::compile("consent.subject.matches('x')", &VARS).unwrap_err();
        assert!(e.message.contains("unknown method"), "{e}");
        let e = Expr::compile("'a' == 'b' )", &VARS).unwrap_err();
        assert_eq!(e.offset, 11);
        assert!(Expr::compile("'unterminated", &VARS).is_err());
        assert!(Expr::compile(&"(".repeat(100), &VARS).is_err());
        assert!(Expr::compile("99999999999999999999", &VARS).is_err());
    }

    /// `list.all(v, …)` nested `levels` deep, each over `list`, around `inner`.
    fn nested(levels: usize, list: &str, step: impl Fn(char) -> String, inner: &str) -> String {
        let names: Vec<char> = ('a'..='z').take(levels).collect();
        let mut source = inner.replace('$', &names[levels - 1].to_string());
        for (i, v) in names.iter().enumerate().rev() {
            let over = if i == 0 {
                list.to_owned()
            } else {
                step(names[i - 1])
            };
            source = format!("{over}.all({v}, {source})");
        }
        source
    }

    #[test]
    fn evaluation_is_bounded_in_steps_and_in_what_plus_builds() {
        // Nested macros multiply: seven ten-element lists are 10⁷ visits, seconds of
        // CPU on every request (seen with the `expr` fuzz target's binary).
        let ten = "[0, 0, 0, 0, 0, 0, 0, 0, 0, 0]";
        let source = nested(7, ten, |_| ten.to_owned(), "true");
        assert_eq!(run(&source), Err(TOO_COSTLY));
        // `a + a` doubles; twenty levels would build 2 MiB of string, or a million items.
        let source = nested(20, "['ab']", |v| format!("[{v} + {v}]"), "size($) > 0");
        assert_eq!(run(&source), Err(TOO_COSTLY));
        let source = nested(20, "[[1]]", |v| format!("[{v} + {v}]"), "size($) > 0");
        assert_eq!(run(&source), Err(TOO_COSTLY));
        // Within the budget, the same shapes evaluate.
        let source = nested(3, ten, |_| ten.to_owned(), "true");
        assert_eq!(run(&source), Ok(Value::Bool(true)));
        let source = nested(12, "['ab']", |v| format!("[{v} + {v}]"), "size($) > 0");
        assert_eq!(run(&source), Ok(Value::Bool(true)));
        let thousand = format!("[{}]", vec!["1"; 1000].join(","));
        assert_eq!(
            run(&format!("{thousand}.exists(x, x == 2)")),
            Ok(Value::Bool(false))
        );
    }

    #[test]
    fn arithmetic_overflow_is_an_error() {
        assert!(run("9223372036854775807 + 1 == 0").is_err());
        assert!(run("-9223372036854775807 - 2 == 0").is_err());
    }
}
