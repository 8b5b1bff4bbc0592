//! The HTTP vocabulary the core speaks: headers as the proxy hands them over, the
//! request as seen when its headers arrive, and the local replies the core asks for.

/// Header pairs in the order the proxy gave them. Names are lower-case (Envoy
/// lower-cases them); values are raw bytes because HTTP allows non-UTF-8 octets.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers(Vec<(String, Vec<u8>)>);

impl Headers {
    pub fn new() -> Self {
        Self(Vec::new())
    }

    /// Adds one pair; the name is lower-cased so lookups never depend on case.
    pub fn push(&mut self, name: impl Into<String>, value: impl Into<Vec<u8>>) {
        let mut name = name.into();
        name.make_ascii_lowercase();
        self.0.push((name, value.into()));
    }

    /// Every value of `name`, in order. Checks that care about repeats use this,
    /// never a first-value lookup.
    pub fn get_all<'a, 'n>(
        &'a self,
        name: &'n str,
    ) -> impl Iterator<Item = &'a [u8]> + use<'a, 'n> {
        self.0
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
    }

    /// The value of `name` when it occurs exactly once; `Err(count)` otherwise.
    pub fn get_single(&self, name: &str) -> Result<&[u8], usize> {
        let mut values = self.get_all(name);
        match (values.next(), values.next()) {
            (Some(v), None) => Ok(v),
            (None, _) => Err(0),
            (Some(_), Some(_)) => Err(2 + values.count()),
        }
    }

    /// The first value of `name` as text, if it is valid UTF-8.
    pub fn get_str(&self, name: &str) -> Option<&str> {
        self.get_all(name)
            .next()
            .and_then(|v| std::str::from_utf8(v).ok())
    }

    pub fn contains(&self, name: &str) -> bool {
        self.get_all(name).next().is_some()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.0.iter().map(|(n, v)| (n.as_str(), v.as_slice()))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<N: Into<String>, V: Into<Vec<u8>>> FromIterator<(N, V)> for Headers {
    fn from_iter<I: IntoIterator<Item = (N, V)>>(iter: I) -> Self {
        let mut headers = Headers::new();
        for (n, v) in iter {
            headers.push(n, v);
        }
        headers
    }
}

/// The TLS client certificate of the connection, as the proxy reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerCertificate {
    /// The first URI SAN (Envoy reports only the first).
    pub uri_san: Option<String>,
    /// SHA-256 of the DER certificate, lower-case hex (Envoy's encoding).
    pub sha256_hex: Option<String>,
    /// The certificate in PEM, when the proxy provides it.
    pub pem: Option<String>,
}

/// What the core knows about the connection a request came on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Connection {
    /// `ip:port` of the downstream peer.
    pub source_address: Option<String>,
    /// True when the client presented a certificate that the proxy verified.
    pub mtls: bool,
    pub peer: Option<PeerCertificate>,
}

/// The request as it stands when its headers arrive: everything the decision
/// needs, taken while the header map can still be read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestHead {
    pub method: String,
    /// `:path` as sent: path plus query.
    pub path: String,
    pub authority: String,
    pub headers: Headers,
    pub connection: Connection,
    /// True when the request has no body (end of stream with the headers).
    pub end_of_stream: bool,
}

impl RequestHead {
    /// The path without its query.
    pub fn url_path(&self) -> &str {
        self.path.split_once('?').map_or(&self.path, |(p, _)| p)
    }

    /// The query string without `?`, if any.
    pub fn query(&self) -> Option<&str> {
        self.path.split_once('?').map(|(_, q)| q)
    }
}

/// A response the plugin produces itself instead of forwarding the request or the
/// upstream's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalReply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Short reason recorded by the proxy as `response.code_details`.
    pub details: &'static str,
}

/// Header changes to apply to a message before it moves on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeaderEdits {
    /// Names whose every occurrence is removed (applied first).
    pub remove: Vec<String>,
    /// Names set to exactly one value (replacing any occurrence).
    pub set: Vec<(String, String)>,
}

impl HeaderEdits {
    pub fn remove(&mut self, name: &str) {
        self.remove.push(name.to_owned());
    }

    pub fn set(&mut self, name: &str, value: impl Into<String>) {
        self.set.push((name.to_owned(), value.into()));
    }

    pub fn is_empty(&self) -> bool {
        self.remove.is_empty() && self.set.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookups_ignore_case_and_see_every_repeat() {
        let h: Headers = [("Authorization", "a"), ("x-y", "1"), ("authorization", "b")]
            .into_iter()
            .collect();
        assert_eq!(h.get_all("AUTHORIZATION").count(), 2);
        assert_eq!(h.get_single("authorization"), Err(2));
        assert_eq!(h.get_single("x-y"), Ok(&b"1"[..]));
        assert_eq!(h.get_single("missing"), Err(0));
    }

    #[test]
    fn path_and_query_split_at_the_first_question_mark() {
        let r = RequestHead {
            path: "/a/b?x=1?y".into(),
            ..Default::default()
        };
        assert_eq!(r.url_path(), "/a/b");
        assert_eq!(r.query(), Some("x=1?y"));
    }
}
