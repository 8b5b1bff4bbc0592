//! The open-banking data: a bank's accounts, their balances and transactions, kept as
//! the exact bytes of the data file (as the patient records are: see `data.rs`).
//!
//! Every body is a slice of the stored file or a concatenation of such slices, so a
//! test can demand that what the plugin leaves alone comes out byte for byte.

use std::collections::HashMap;
use std::io;
use std::ops::Range;
use std::path::Path;
use std::sync::Arc;

use axum::body::Bytes;
use serde::Deserialize;
use serde_json::value::RawValue;

/// The checked-in data set (`examples/data/accounts.json`), embedded so the binary and
/// in-process tests work from any working directory.
pub const BUILTIN_ACCOUNTS_JSON: &[u8] = include_bytes!("../../data/accounts.json");

/// A bank's accounts, cheap to clone and share between connections.
#[derive(Clone, Debug)]
pub struct Bank {
    inner: Arc<Accounts>,
}

#[derive(Debug)]
struct Accounts {
    ids: Vec<String>,
    by_id: HashMap<String, Account>,
    list: Bytes,
}

#[derive(Debug)]
struct Account {
    details: Bytes,
    balances: Bytes,
    transactions: Bytes,
}

/// The parts of an entry the service needs to locate; the rest stays opaque bytes.
#[derive(Deserialize)]
struct EntryView<'a> {
    #[serde(borrow)]
    account: &'a RawValue,
    #[serde(borrow)]
    balances: &'a RawValue,
    #[serde(borrow)]
    transactions: &'a RawValue,
}

#[derive(Deserialize)]
struct AccountView<'a> {
    #[serde(borrow)]
    account_id: &'a RawValue,
}

fn invalid(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

/// Where `inner` (a sub-slice of `outer`) sits inside `outer`.
fn range_in(outer: &str, inner: &str) -> Range<usize> {
    let start = (inner.as_ptr() as usize).saturating_sub(outer.as_ptr() as usize);
    start..start + inner.len()
}

/// `{"account_id":ID,"NAME":VALUE}` from raw JSON slices.
fn wrap(id: &str, name: &str, value: &str) -> Bytes {
    let mut body = Vec::with_capacity(id.len() + name.len() + value.len() + 24);
    body.extend_from_slice(b"{\"account_id\":");
    body.extend_from_slice(id.as_bytes());
    body.extend_from_slice(b",\"");
    body.extend_from_slice(name.as_bytes());
    body.extend_from_slice(b"\":");
    body.extend_from_slice(value.as_bytes());
    body.push(b'}');
    Bytes::from(body)
}

impl Bank {
    /// The checked-in accounts.
    pub fn builtin() -> io::Result<Self> {
        Self::from_json(Bytes::from_static(BUILTIN_ACCOUNTS_JSON))
    }

    /// Loads a data file shaped like `examples/data/accounts.json`.
    pub fn load(path: &Path) -> io::Result<Self> {
        Self::from_json(Bytes::from(std::fs::read(path)?))
    }

    /// Parses a JSON array of `{"account": {...}, "balances": [...], "transactions":
    /// [...]}` entries; each part is kept as the exact slice of `file` it was written as.
    pub fn from_json(file: Bytes) -> io::Result<Self> {
        let text = std::str::from_utf8(&file).map_err(|e| invalid(format!("not UTF-8: {e}")))?;
        let entries: Vec<EntryView<'_>> =
            serde_json::from_str(text).map_err(|e| invalid(format!("accounts: {e}")))?;
        let mut ids = Vec::with_capacity(entries.len());
        let mut by_id = HashMap::with_capacity(entries.len());
        let mut list = Vec::from(&b"{\"accounts\":["[..]);
        for entry in entries {
            let raw_id = serde_json::from_str::<AccountView<'_>>(entry.account.get())
                .map_err(|e| invalid(format!("account: {e}")))?
                .account_id
                .get();
            let id: String =
                serde_json::from_str(raw_id).map_err(|e| invalid(format!("account_id: {e}")))?;
            if by_id.contains_key(&id) {
                return Err(invalid(format!("duplicate account id {id}")));
            }
            let details = file.slice(range_in(text, entry.account.get()));
            if !ids.is_empty() {
                list.push(b',');
            }
            list.extend_from_slice(&details);
            by_id.insert(
                id.clone(),
                Account {
                    details,
                    balances: wrap(raw_id, "balances", entry.balances.get()),
                    transactions: wrap(raw_id, "transactions", entry.transactions.get()),
                },
            );
            ids.push(id);
        }
        list.extend_from_slice(b"]}");
        Ok(Self {
            inner: Arc::new(Accounts {
                ids,
                by_id,
                list: Bytes::from(list),
            }),
        })
    }

    /// Account ids in file order.
    pub fn ids(&self) -> &[String] {
        &self.inner.ids
    }

    /// `{"accounts":[account, ...]}`: every account's details, as stored.
    pub fn accounts(&self) -> Bytes {
        self.inner.list.clone()
    }

    /// One account's details (identification, owner), exactly as stored.
    pub fn account(&self, id: &str) -> Option<Bytes> {
        self.inner.by_id.get(id).map(|a| a.details.clone())
    }

    /// `{"account_id":…,"balances":[…]}`.
    pub fn balances(&self, id: &str) -> Option<Bytes> {
        self.inner.by_id.get(id).map(|a| a.balances.clone())
    }

    /// `{"account_id":…,"transactions":[…]}`.
    pub fn transactions(&self, id: &str) -> Option<Bytes> {
        self.inner.by_id.get(id).map(|a| a.transactions.clone())
    }

    /// The body `GET path` answers with (path without query), as the service sends it;
    /// `None` for a path that is not one of the bank's or names no account.
    pub fn resource(&self, path: &str) -> Option<Bytes> {
        let segments: Vec<&str> = path.strip_prefix("/accounts")?.split('/').collect();
        match segments.as_slice() {
            [""] => Some(self.accounts()),
            ["", id] => self.account(id),
            ["", id, "balances"] => self.balances(id),
            ["", id, "transactions"] => self.transactions(id),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    #[test]
    fn builtin_loads_three_accounts_of_two_customers() {
        let bank = Bank::builtin().unwrap();
        assert_eq!(bank.ids(), ["acc-1001", "acc-1002", "acc-2001"]);
        for id in bank.ids() {
            let a: Value = serde_json::from_slice(&bank.account(id).unwrap()).unwrap();
            assert_eq!(a["account_id"], id.as_str());
            let iban = a["identification"]["iban"].as_str().unwrap();
            assert!(iban.starts_with("GB") && iban.len() == 22, "{iban}");
            let t: Value = serde_json::from_slice(&bank.transactions(id).unwrap()).unwrap();
            assert_eq!(t["account_id"], id.as_str());
            assert!(!t["transactions"].as_array().unwrap().is_empty(), "{id}");
            let b: Value = serde_json::from_slice(&bank.balances(id).unwrap()).unwrap();
            assert_eq!(b["balances"][0]["type"], "closing_booked");
        }
        let owner = |id| {
            let a: Value = serde_json::from_slice(&bank.account(id).unwrap()).unwrap();
            a["owner"]["customer_id"].as_str().unwrap().to_owned()
        };
        assert_eq!(
            [owner("acc-1001"), owner("acc-1002"), owner("acc-2001")],
            ["psu-1", "psu-1", "psu-2"]
        );
    }

    #[test]
    fn bodies_are_slices_of_the_file_with_number_text_kept() {
        let bank = Bank::builtin().unwrap();
        let file = BUILTIN_ACCOUNTS_JSON;
        for id in bank.ids() {
            let details = bank.account(id).unwrap();
            assert!(
                file.windows(details.len()).any(|w| w == &details[..]),
                "{id}"
            );
        }
        let t = bank.transactions("acc-1001").unwrap();
        let text = std::str::from_utf8(&t).unwrap();
        assert!(text.starts_with("{\"account_id\":\"acc-1001\",\"transactions\":["));
        for kept in ["-950.00", "2874.16", "St Aidan\\u2019s", "3 \u{2013} lower"] {
            assert!(text.contains(kept), "{kept}");
        }
    }

    #[test]
    fn each_closing_balance_is_the_last_running_balance() {
        let bank = Bank::builtin().unwrap();
        for id in bank.ids() {
            let t: Value = serde_json::from_slice(&bank.transactions(id).unwrap()).unwrap();
            let b: Value = serde_json::from_slice(&bank.balances(id).unwrap()).unwrap();
            let last = t["transactions"].as_array().unwrap().last().unwrap();
            assert_eq!(last["balance_after"], b["balances"][0]["amount"], "{id}");
        }
    }

    #[test]
    fn resources_by_path() {
        let bank = Bank::builtin().unwrap();
        assert_eq!(bank.resource("/accounts"), Some(bank.accounts()));
        assert_eq!(
            bank.resource("/accounts/acc-1002"),
            bank.account("acc-1002")
        );
        assert_eq!(
            bank.resource("/accounts/acc-1001/transactions"),
            bank.transactions("acc-1001")
        );
        assert_eq!(
            bank.resource("/accounts/acc-2001/balances"),
            bank.balances("acc-2001")
        );
        for none in [
            "/accounts/acc-9",
            "/accounts/acc-1001/x",
            "/accountsx",
            "/accounts/",
            "/patients/p-1",
        ] {
            assert_eq!(bank.resource(none), None, "{none}");
        }
        let list: Value = serde_json::from_slice(&bank.accounts()).unwrap();
        assert_eq!(list["accounts"].as_array().unwrap().len(), 3);
    }

    #[test]
    fn rejects_bad_data() {
        assert!(Bank::from_json(Bytes::from_static(b"{}")).is_err());
        assert!(Bank::from_json(Bytes::from_static(b"[{\"account\":{}}]")).is_err());
        let twice = br#"[{"account":{"account_id":"a"},"balances":[],"transactions":[]},
                         {"account":{"account_id":"a"},"balances":[],"transactions":[]}]"#;
        assert!(Bank::from_json(Bytes::from_static(twice)).is_err());
    }
}
