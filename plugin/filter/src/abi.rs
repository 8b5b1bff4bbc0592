//! The proxy-wasm ABI 0.2.1 host calls this plugin makes, each returning the host's
//! status instead of panicking on it (a panic in wasm is a trap: the request gets
//! an empty 503 and, under FAIL_CLOSED, the worker's VM is dead for good). Statuses
//! are plain integers: a host may answer with one no enum here knows.

use consentry_core::host::HostError;

/// `Ok`.
const OK: u32 = 0;
/// `NotFound`: an absent property, shared-data key or header.
pub const NOT_FOUND: u32 = 1;
/// `CasMismatch`: a shared-data write lost to another writer.
pub const CAS_MISMATCH: u32 = 8;

/// Buffer types.
pub const REQUEST_BODY: u32 = 0;
pub const RESPONSE_BODY: u32 = 1;
pub const CALL_RESPONSE_BODY: u32 = 4;
pub const PLUGIN_CONFIGURATION: u32 = 7;

/// Map types.
pub const REQUEST_HEADERS: u32 = 0;
pub const REQUEST_TRAILERS: u32 = 1;
pub const RESPONSE_HEADERS: u32 = 2;
pub const RESPONSE_TRAILERS: u32 = 3;
pub const CALL_RESPONSE_HEADERS: u32 = 6;

/// Stream types of `proxy_continue_stream` / `proxy_close_stream`.
pub const STREAM_REQUEST: u32 = 0;
pub const STREAM_RESPONSE: u32 = 1;

/// Actions a stream callback returns.
pub const CONTINUE: u32 = 0;
pub const PAUSE: u32 = 1;

#[link(wasm_import_module = "env")]
unsafe extern "C" {
    fn proxy_log(level: u32, message: *const u8, len: usize) -> u32;
    fn proxy_get_log_level(level: *mut u32) -> u32;
    fn proxy_get_current_time_nanoseconds(time: *mut u64) -> u32;
    fn proxy_set_tick_period_milliseconds(period: u32) -> u32;
    fn proxy_get_buffer_bytes(
        t: u32,
        start: usize,
        max: usize,
        data: *mut *mut u8,
        size: *mut usize,
    ) -> u32;
    fn proxy_set_buffer_bytes(
        t: u32,
        start: usize,
        size: usize,
        data: *const u8,
        len: usize,
    ) -> u32;
    fn proxy_get_header_map_pairs(map: u32, data: *mut *mut u8, size: *mut usize) -> u32;
    fn proxy_replace_header_map_value(
        map: u32,
        k: *const u8,
        kl: usize,
        v: *const u8,
        vl: usize,
    ) -> u32;
    fn proxy_remove_header_map_value(map: u32, k: *const u8, kl: usize) -> u32;
    fn proxy_get_property(path: *const u8, pl: usize, data: *mut *mut u8, size: *mut usize) -> u32;
    fn proxy_get_shared_data(
        key: *const u8,
        kl: usize,
        data: *mut *mut u8,
        size: *mut usize,
        cas: *mut u32,
    ) -> u32;
    fn proxy_set_shared_data(key: *const u8, kl: usize, v: *const u8, vl: usize, cas: u32) -> u32;
    #[allow(clippy::too_many_arguments)]
    fn proxy_send_local_response(
        status: u32,
        details: *const u8,
        details_len: usize,
        body: *const u8,
        body_len: usize,
        headers: *const u8,
        headers_len: usize,
        grpc_status: i32,
    ) -> u32;
    fn proxy_continue_stream(stream: u32) -> u32;
    fn proxy_close_stream(stream: u32) -> u32;
    fn proxy_set_effective_context(context: u32) -> u32;
    #[allow(clippy::too_many_arguments)]
    fn proxy_http_call(
        cluster: *const u8,
        cluster_len: usize,
        headers: *const u8,
        headers_len: usize,
        body: *const u8,
        body_len: usize,
        trailers: *const u8,
        trailers_len: usize,
        timeout_ms: u32,
        token: *mut u32,
    ) -> u32;
    fn proxy_define_metric(kind: u32, name: *const u8, len: usize, id: *mut u32) -> u32;
    fn proxy_increment_metric(id: u32, offset: i64) -> u32;
}

fn status(code: u32) -> Result<(), HostError> {
    if code == OK {
        Ok(())
    } else {
        Err(HostError(code))
    }
}

/// The allocator the host uses to hand memory over (`proxy_on_memory_allocate`):
/// a boxed slice of exactly `size` bytes, owned by the plugin from then on.
pub fn allocate(size: usize) -> *mut u8 {
    let slice: Box<[u8]> = vec![0u8; size].into_boxed_slice();
    Box::into_raw(slice).cast::<u8>()
}

/// Takes ownership of memory the host allocated through [`allocate`].
fn take(data: *mut u8, size: usize) -> Vec<u8> {
    if data.is_null() || size == 0 {
        return Vec::new();
    }
    // SAFETY: the host allocated `size` bytes at `data` with `allocate`, which made
    // a `Box<[u8]>` of exactly that length (capacity == length), and hands its
    // ownership to us.
    unsafe { Vec::from_raw_parts(data, size, size) }
}

/// Encodes header pairs: count, lengths, then `name\0value\0`…
pub fn encode_pairs<'a>(pairs: impl Iterator<Item = (&'a [u8], &'a [u8])> + Clone) -> Vec<u8> {
    let count = pairs.clone().count();
    let mut out = Vec::with_capacity(4 + count * 8);
    out.extend_from_slice(&(count as u32).to_le_bytes());
    for (n, v) in pairs.clone() {
        out.extend_from_slice(&(n.len() as u32).to_le_bytes());
        out.extend_from_slice(&(v.len() as u32).to_le_bytes());
    }
    for (n, v) in pairs {
        out.extend_from_slice(n);
        out.push(0);
        out.extend_from_slice(v);
        out.push(0);
    }
    out
}

/// Decodes the pairs encoding; malformed input is an error, never a partial map
/// (a map read half would let a repeated header go unseen).
pub fn decode_pairs(bytes: &[u8]) -> Result<Vec<(String, Vec<u8>)>, HostError> {
    const MALFORMED: HostError = HostError(u32::MAX);
    if bytes.is_empty() {
        return Ok(Vec::new());
    }
    let word = |at: usize| {
        bytes
            .get(at..at.checked_add(4)?)
            .and_then(|b| <[u8; 4]>::try_from(b).ok())
            .map(|b| u32::from_le_bytes(b) as usize)
    };
    let count = word(0).ok_or(MALFORMED)?;
    let mut p = count
        .checked_mul(8)
        .and_then(|n| n.checked_add(4))
        .filter(|p| *p <= bytes.len())
        .ok_or(MALFORMED)?;
    let mut out = Vec::with_capacity(count);
    for i in 0..count {
        let nl = word(4 + i * 8).ok_or(MALFORMED)?;
        let vl = word(8 + i * 8).ok_or(MALFORMED)?;
        let name_end = p.checked_add(nl).ok_or(MALFORMED)?;
        let value_start = name_end.checked_add(1).ok_or(MALFORMED)?;
        let value_end = value_start.checked_add(vl).ok_or(MALFORMED)?;
        let name = bytes.get(p..name_end).ok_or(MALFORMED)?;
        let value = bytes.get(value_start..value_end).ok_or(MALFORMED)?;
        out.push((String::from_utf8_lossy(name).into_owned(), value.to_vec()));
        p = value_end.checked_add(1).ok_or(MALFORMED)?;
    }
    Ok(out)
}

pub fn log(level: u32, message: &str) -> Result<(), HostError> {
    // SAFETY: pointer and length of a live string.
    status(unsafe { proxy_log(level, message.as_ptr(), message.len()) })
}

pub fn log_level() -> Result<u32, HostError> {
    let mut level = 0;
    // SAFETY: the out-parameter points to a local.
    status(unsafe { proxy_get_log_level(&mut level) })?;
    Ok(level)
}

pub fn now_nanos() -> Result<u64, HostError> {
    let mut t = 0;
    // SAFETY: the out-parameter points to a local.
    status(unsafe { proxy_get_current_time_nanoseconds(&mut t) })?;
    Ok(t)
}

pub fn set_tick_period_ms(period: u32) -> Result<(), HostError> {
    // SAFETY: a plain call with an integer argument.
    status(unsafe { proxy_set_tick_period_milliseconds(period) })
}

/// Up to `max` bytes of a buffer from its start.
pub fn buffer(t: u32, max: usize) -> Result<Vec<u8>, HostError> {
    let mut data = std::ptr::null_mut();
    let mut size = 0;
    // SAFETY: the out-parameters point to locals.
    let code = unsafe { proxy_get_buffer_bytes(t, 0, max, &mut data, &mut size) };
    let bytes = take(data, size);
    status(code).map(|()| bytes)
}

/// Replaces `size` bytes from the start of a buffer (all of it, when `size` is its
/// length) with `data`.
pub fn set_buffer(t: u32, size: usize, data: &[u8]) -> Result<(), HostError> {
    // SAFETY: pointer and length of a live slice.
    status(unsafe { proxy_set_buffer_bytes(t, 0, size, data.as_ptr(), data.len()) })
}

/// Every entry of a header map.
pub fn header_pairs(map: u32) -> Result<Vec<(String, Vec<u8>)>, HostError> {
    let mut data = std::ptr::null_mut();
    let mut size = 0;
    // SAFETY: the out-parameters point to locals.
    let code = unsafe { proxy_get_header_map_pairs(map, &mut data, &mut size) };
    let bytes = take(data, size);
    status(code)?;
    decode_pairs(&bytes)
}

pub fn replace_header(map: u32, name: &str, value: &str) -> Result<(), HostError> {
    // SAFETY: pointers and lengths of live strings.
    status(unsafe {
        proxy_replace_header_map_value(map, name.as_ptr(), name.len(), value.as_ptr(), value.len())
    })
}

pub fn remove_header(map: u32, name: &str) -> Result<(), HostError> {
    // SAFETY: pointer and length of a live string.
    status(unsafe { proxy_remove_header_map_value(map, name.as_ptr(), name.len()) })
}

/// A property in the proxy's attribute encoding; `Ok(None)` when not found.
pub fn property(path: &[&str]) -> Result<Option<Vec<u8>>, HostError> {
    let encoded = path.join("\0");
    let mut data = std::ptr::null_mut();
    let mut size = 0;
    // SAFETY: pointer and length of a live string; out-parameters point to locals.
    let code = unsafe { proxy_get_property(encoded.as_ptr(), encoded.len(), &mut data, &mut size) };
    let bytes = take(data, size);
    match code {
        OK => Ok(Some(bytes)),
        NOT_FOUND => Ok(None),
        other => Err(HostError(other)),
    }
}

/// A shared-data value and its CAS; `Ok(None)` when the key does not exist.
pub fn shared_get(key: &str) -> Result<Option<(Vec<u8>, u32)>, HostError> {
    let mut data = std::ptr::null_mut();
    let mut size = 0;
    let mut cas = 0;
    // SAFETY: pointer and length of a live string; out-parameters point to locals.
    let code =
        unsafe { proxy_get_shared_data(key.as_ptr(), key.len(), &mut data, &mut size, &mut cas) };
    let bytes = take(data, size);
    match code {
        OK => Ok(Some((bytes, cas))),
        NOT_FOUND => Ok(None),
        other => Err(HostError(other)),
    }
}

pub fn shared_set(key: &str, value: &[u8], cas: u32) -> Result<(), HostError> {
    // SAFETY: pointers and lengths of live slices.
    status(unsafe {
        proxy_set_shared_data(key.as_ptr(), key.len(), value.as_ptr(), value.len(), cas)
    })
}

pub fn send_local_response(
    status_code: u16,
    details: &str,
    headers: &[(String, String)],
    body: &[u8],
) -> Result<(), HostError> {
    let pairs = encode_pairs(headers.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes())));
    // SAFETY: pointers and lengths of live slices.
    status(unsafe {
        proxy_send_local_response(
            u32::from(status_code),
            details.as_ptr(),
            details.len(),
            body.as_ptr(),
            body.len(),
            pairs.as_ptr(),
            pairs.len(),
            -1,
        )
    })
}

pub fn continue_stream(stream: u32) -> Result<(), HostError> {
    // SAFETY: a plain call with an integer argument.
    status(unsafe { proxy_continue_stream(stream) })
}

pub fn close_stream(stream: u32) -> Result<(), HostError> {
    // SAFETY: a plain call with an integer argument.
    status(unsafe { proxy_close_stream(stream) })
}

pub fn set_effective_context(context: u32) -> Result<(), HostError> {
    // SAFETY: a plain call with an integer argument.
    status(unsafe { proxy_set_effective_context(context) })
}

pub fn http_call(
    cluster: &str,
    headers: &[u8],
    body: &[u8],
    timeout_ms: u32,
) -> Result<u32, HostError> {
    let trailers = encode_pairs(std::iter::empty());
    let mut token = 0;
    // SAFETY: pointers and lengths of live slices; the out-parameter points to a local.
    status(unsafe {
        proxy_http_call(
            cluster.as_ptr(),
            cluster.len(),
            headers.as_ptr(),
            headers.len(),
            body.as_ptr(),
            body.len(),
            trailers.as_ptr(),
            trailers.len(),
            timeout_ms,
            &mut token,
        )
    })?;
    Ok(token)
}

/// Defines a counter; returns its id.
pub fn define_counter(name: &str) -> Result<u32, HostError> {
    let mut id = 0;
    // SAFETY: pointer and length of a live string; the out-parameter points to a local.
    status(unsafe { proxy_define_metric(0, name.as_ptr(), name.len(), &mut id) })?;
    Ok(id)
}

pub fn increment_metric(id: u32, offset: i64) -> Result<(), HostError> {
    // SAFETY: a plain call with integer arguments.
    status(unsafe { proxy_increment_metric(id, offset) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_round_trip_and_malformed_input_is_an_error() {
        let pairs: [(&[u8], &[u8]); 2] = [(b"a", b"1"), (b":path", b"/x")];
        let bytes = encode_pairs(pairs.iter().copied());
        let decoded = decode_pairs(&bytes).unwrap();
        assert_eq!(decoded[1], (":path".to_owned(), b"/x".to_vec()));
        assert!(decode_pairs(&bytes[..bytes.len() - 2]).is_err());
        assert!(decode_pairs(&[0xff, 0xff, 0xff, 0x7f]).is_err());
        assert_eq!(decode_pairs(&[]).unwrap(), Vec::new());
    }
}
