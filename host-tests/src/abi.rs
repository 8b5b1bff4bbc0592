//! Proxy-wasm ABI v0.2.1: the numbers on the wire and the pairs encoding.

/// Host call results, as the spec and Envoy number them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Status {
    Ok = 0,
    NotFound = 1,
    BadArgument = 2,
    SerializationFailure = 3,
    ParseFailure = 4,
    InvalidMemoryAccess = 6,
    Empty = 7,
    CasMismatch = 8,
    InternalFailure = 10,
    Unimplemented = 12,
}

impl Status {
    pub fn code(self) -> u32 {
        self as u32
    }
}

/// `proxy_*_header_map_*` map types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MapType {
    RequestHeaders,
    RequestTrailers,
    ResponseHeaders,
    ResponseTrailers,
    GrpcInitialMetadata,
    GrpcTrailingMetadata,
    CallResponseHeaders,
    CallResponseTrailers,
}

impl MapType {
    pub fn from_u32(v: u32) -> Option<Self> {
        Some(match v {
            0 => Self::RequestHeaders,
            1 => Self::RequestTrailers,
            2 => Self::ResponseHeaders,
            3 => Self::ResponseTrailers,
            4 => Self::GrpcInitialMetadata,
            5 => Self::GrpcTrailingMetadata,
            6 => Self::CallResponseHeaders,
            7 => Self::CallResponseTrailers,
            _ => return None,
        })
    }
}

/// `proxy_*_buffer_*` buffer types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BufferType {
    RequestBody,
    ResponseBody,
    DownstreamData,
    UpstreamData,
    CallResponseBody,
    GrpcReceive,
    VmConfiguration,
    PluginConfiguration,
    CallData,
}

impl BufferType {
    pub fn from_u32(v: u32) -> Option<Self> {
        Some(match v {
            0 => Self::RequestBody,
            1 => Self::ResponseBody,
            2 => Self::DownstreamData,
            3 => Self::UpstreamData,
            4 => Self::CallResponseBody,
            5 => Self::GrpcReceive,
            6 => Self::VmConfiguration,
            7 => Self::PluginConfiguration,
            8 => Self::CallData,
            _ => return None,
        })
    }
}

/// What a stream callback returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Continue,
    Pause,
}

impl Action {
    /// Envoy treats anything but 0 as "stop iteration".
    pub fn from_i32(v: i32) -> Self {
        if v == 0 { Self::Continue } else { Self::Pause }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LogLevel {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
    Critical,
}

impl LogLevel {
    pub fn from_u32(v: u32) -> Option<Self> {
        Some(match v {
            0 => Self::Trace,
            1 => Self::Debug,
            2 => Self::Info,
            3 => Self::Warn,
            4 => Self::Error,
            5 => Self::Critical,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricType {
    Counter,
    Gauge,
    Histogram,
}

impl MetricType {
    pub fn from_u32(v: u32) -> Option<Self> {
        Some(match v {
            0 => Self::Counter,
            1 => Self::Gauge,
            2 => Self::Histogram,
            _ => return None,
        })
    }
}

/// Encodes header pairs: u32 count, count × (u32 name length, u32 value length),
/// then each `name\0value\0`. Envoy's `request.headers` property uses it too.
pub fn encode_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a [u8])>) -> Vec<u8> {
    let pairs: Vec<_> = pairs.into_iter().collect();
    let mut out = Vec::new();
    out.extend_from_slice(&(pairs.len() as u32).to_le_bytes());
    for (n, v) in &pairs {
        out.extend_from_slice(&(n.len() as u32).to_le_bytes());
        out.extend_from_slice(&(v.len() as u32).to_le_bytes());
    }
    for (n, v) in &pairs {
        out.extend_from_slice(n.as_bytes());
        out.push(0);
        out.extend_from_slice(v);
        out.push(0);
    }
    out
}

/// Decodes the pairs encoding. Malformed input yields no pairs, as Envoy's
/// `toPairs` does.
pub fn decode_pairs(bytes: &[u8]) -> Vec<(String, Vec<u8>)> {
    let word = |at: usize| -> Option<usize> {
        bytes
            .get(at..at + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    };
    let Some(count) = word(0) else {
        return Vec::new();
    };
    let Some(header_end) = count.checked_mul(8).and_then(|n| n.checked_add(4)) else {
        return Vec::new();
    };
    if header_end > bytes.len() {
        return Vec::new();
    }
    let mut out = Vec::with_capacity(count);
    let mut p = header_end;
    for i in 0..count {
        let (Some(nl), Some(vl)) = (word(4 + i * 8), word(8 + i * 8)) else {
            return Vec::new();
        };
        let Some(name) = bytes.get(p..p + nl) else {
            return Vec::new();
        };
        p += nl + 1;
        let Some(value) = bytes.get(p..p + vl) else {
            return Vec::new();
        };
        p += vl + 1;
        out.push((String::from_utf8_lossy(name).into_owned(), value.to_vec()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_round_trip_in_the_documented_layout() {
        let enc = encode_pairs([(":method", &b"GET"[..]), ("x", &b""[..])]);
        assert_eq!(&enc[..4], &2u32.to_le_bytes());
        assert_eq!(&enc[4..12], &[7, 0, 0, 0, 3, 0, 0, 0]);
        assert_eq!(&enc[20..], b":method\0GET\0x\0\0");
        assert_eq!(
            decode_pairs(&enc),
            vec![
                (":method".to_string(), b"GET".to_vec()),
                ("x".to_string(), vec![])
            ]
        );
        assert!(decode_pairs(&[5, 0, 0, 0]).is_empty());
        assert!(decode_pairs(&[0xff, 0xff, 0xff, 0xff]).is_empty());
    }
}
