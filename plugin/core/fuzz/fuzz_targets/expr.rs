//! Rule conditions: the first line is compiled with the policy's variable names, then
//! evaluated against a request's facts. Neither may panic, and every evaluation is
//! bounded (libFuzzer's `-timeout` and `-rss_limit_mb` catch one that is not).
#![no_main]

use std::sync::LazyLock;

use consentry_core::policy::EXPRESSION_VARIABLES;
use consentry_core::policy::expr::{Env, Expr, Value};
use libfuzzer_sys::fuzz_target;

struct Facts(serde_json::Value);

impl Env for Facts {
    fn variable(&self, name: &str) -> Option<Value<'_>> {
        self.0.get(name).map(Value::from_json)
    }
}

static FACTS: LazyLock<Facts> = LazyLock::new(|| {
    Facts(serde_json::json!({
        "consent": {"subject": "p-1", "grantee": "spiffe://partner.example/insurer",
            "purposes": ["treatment", "claims"], "domains": ["lab_results"],
            "actions": ["read"], "delegations": ["p-2"], "issued_at": 1_799_999_000,
            "expires_at": 1_800_000_600},
        "claims": {"act": {"sub": "p-4"}, "n": 2.5, "tags": ["a", "b", "c", "d"],
            "nested": {"deep": [[1, 2], [3, [4, 5]]]}, "big": 9_007_199_254_740_993u64},
        "request": {"method": "GET", "path": "/patients/p-1", "params": {"id": "p-1"},
            "query": {"fields": "name"}, "headers": {"x-a": "1"}},
        "caller": {"ip": "10.0.0.1", "spiffe_id": "spiffe://partner.example/insurer"},
        "purpose": "treatment",
        "now": 1_800_000_000
    }))
});

fuzz_target!(|data: &[u8]| {
    let line = data.split(|&b| b == b'\n').next().unwrap_or_default();
    let Ok(source) = std::str::from_utf8(line) else {
        return;
    };
    let Ok(expr) = Expr::compile(source, &EXPRESSION_VARIABLES) else {
        return;
    };
    let _ = expr.reads("claims");
    let _ = expr.eval_bool(&*FACTS);
    let _ = expr.eval(&*FACTS);
});
