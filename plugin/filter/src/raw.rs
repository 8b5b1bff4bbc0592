//! Host calls that cannot panic.
//!
//! The SDK's wrappers panic on any status they do not expect, and a panic is a trap
//! that drops the request and, under FAIL_CLOSED, leaves the worker's VM dead. Header
//! maps and bodies are exactly where a host answers `BadArgument` (a map is gone once
//! its callback continued; other hosts differ), so these calls are made directly and
//! their status is returned, never unwrapped. Statuses are read as plain integers: a
//! host may return codes the SDK's enum does not have.

use proxy_wasm::types::{BufferType, MapType};

const OK: u32 = 0;

#[link(wasm_import_module = "env")]
unsafe extern "C" {
    fn proxy_get_header_map_pairs(map: u32, data: *mut *mut u8, size: *mut usize) -> u32;
    fn proxy_replace_header_map_value(
        map: u32,
        k: *const u8,
        kl: usize,
        v: *const u8,
        vl: usize,
    ) -> u32;
    fn proxy_remove_header_map_value(map: u32, k: *const u8, kl: usize) -> u32;
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
    fn proxy_get_property(path: *const u8, pl: usize, data: *mut *mut u8, size: *mut usize) -> u32;
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
    fn proxy_set_effective_context(context: u32) -> u32;
}

/// Takes ownership of memory the host allocated through the SDK's exported
/// allocator (`proxy_on_memory_allocate`: a boxed slice of exactly `size` bytes).
fn take(data: *mut u8, size: usize) -> Vec<u8> {
    if data.is_null() || size == 0 {
        return Vec::new();
    }
    // SAFETY: the host allocated `size` bytes at `data` with our allocator, which
    // makes a `Box<[u8]>` of exactly that length (capacity == length), and hands
    // ownership to us.
    unsafe { Vec::from_raw_parts(data, size, size) }
}

/// Decodes the pairs encoding (count, lengths, `name\0value\0`...); anything
/// malformed yields what was well-formed before it.
fn decode_pairs(bytes: &[u8]) -> Vec<(String, Vec<u8>)> {
    let word = |at: usize| {
        bytes
            .get(at..at + 4)
            .and_then(|b| <[u8; 4]>::try_from(b).ok())
            .map(|b| u32::from_le_bytes(b) as usize)
    };
    let Some(count) = word(0) else {
        return Vec::new();
    };
    let mut out = Vec::with_capacity(count.min(1024));
    let mut p = 4usize.saturating_add(count.saturating_mul(8));
    for i in 0..count {
        let (Some(nl), Some(vl)) = (word(4 + i * 8), word(8 + i * 8)) else {
            break;
        };
        let (Some(name), Some(value)) = (
            bytes.get(p..p.saturating_add(nl)),
            bytes.get(p.saturating_add(nl + 1)..p.saturating_add(nl + 1 + vl)),
        ) else {
            break;
        };
        out.push((String::from_utf8_lossy(name).into_owned(), value.to_vec()));
        p = p.saturating_add(nl + vl + 2);
    }
    out
}

/// Every entry of a header map (empty when the map is gone).
pub fn header_pairs(map: MapType) -> Vec<(String, Vec<u8>)> {
    let mut data = std::ptr::null_mut();
    let mut size = 0;
    // SAFETY: the out-parameters point to locals; the host writes a pointer and size.
    let status = unsafe { proxy_get_header_map_pairs(map as u32, &mut data, &mut size) };
    let bytes = take(data, size);
    if status != OK {
        return Vec::new();
    }
    decode_pairs(&bytes)
}

/// Replaces (or adds) a header; false when the map cannot be written.
pub fn set_header(map: MapType, name: &str, value: &str) -> bool {
    // SAFETY: pointers and lengths of live slices.
    unsafe {
        proxy_replace_header_map_value(
            map as u32,
            name.as_ptr(),
            name.len(),
            value.as_ptr(),
            value.len(),
        ) == OK
    }
}

/// Removes every occurrence of a header; false when the map cannot be written.
pub fn remove_header(map: MapType, name: &str) -> bool {
    // SAFETY: pointer and length of a live slice.
    unsafe { proxy_remove_header_map_value(map as u32, name.as_ptr(), name.len()) == OK }
}

/// Up to `max` bytes of a buffer from `start`; `None` when the host has no such
/// buffer here.
pub fn buffer(t: BufferType, start: usize, max: usize) -> Option<Vec<u8>> {
    let mut data = std::ptr::null_mut();
    let mut size = 0;
    // SAFETY: the out-parameters point to locals.
    let status = unsafe { proxy_get_buffer_bytes(t as u32, start, max, &mut data, &mut size) };
    let bytes = take(data, size);
    (status == OK).then_some(bytes)
}

/// Replaces `size` bytes from `start` (0 and the whole length: the whole buffer).
pub fn set_buffer(t: BufferType, start: usize, size: usize, data: &[u8]) -> bool {
    // SAFETY: pointer and length of a live slice.
    unsafe { proxy_set_buffer_bytes(t as u32, start, size, data.as_ptr(), data.len()) == OK }
}

/// A property in Envoy's attribute encoding; `None` when absent or empty.
pub fn property(path: &[&str]) -> Option<Vec<u8>> {
    let mut encoded = Vec::new();
    for (i, part) in path.iter().enumerate() {
        if i > 0 {
            encoded.push(0);
        }
        encoded.extend_from_slice(part.as_bytes());
    }
    let mut data = std::ptr::null_mut();
    let mut size = 0;
    // SAFETY: pointer and length of a live vector; out-parameters point to locals.
    let status =
        unsafe { proxy_get_property(encoded.as_ptr(), encoded.len(), &mut data, &mut size) };
    let bytes = take(data, size);
    (status == OK && !bytes.is_empty()).then_some(bytes)
}

/// Sends a local reply; false when the host refused it.
pub fn send_local_response(
    status: u16,
    details: &str,
    headers: &[(String, String)],
    body: &[u8],
) -> bool {
    let mut pairs = Vec::new();
    pairs.extend_from_slice(&(headers.len() as u32).to_le_bytes());
    for (n, v) in headers {
        pairs.extend_from_slice(&(n.len() as u32).to_le_bytes());
        pairs.extend_from_slice(&(v.len() as u32).to_le_bytes());
    }
    for (n, v) in headers {
        pairs.extend_from_slice(n.as_bytes());
        pairs.push(0);
        pairs.extend_from_slice(v.as_bytes());
        pairs.push(0);
    }
    // SAFETY: pointers and lengths of live slices.
    unsafe {
        proxy_send_local_response(
            u32::from(status),
            details.as_ptr(),
            details.len(),
            body.as_ptr(),
            body.len(),
            pairs.as_ptr(),
            pairs.len(),
            -1,
        ) == OK
    }
}

/// Resumes the request of the effective context.
pub fn continue_request() -> bool {
    // SAFETY: a plain call with an integer argument.
    unsafe { proxy_continue_stream(0) == OK }
}

/// Makes `context` the one later host calls act on; false if it no longer exists.
pub fn set_effective_context(context: u32) -> bool {
    // SAFETY: a plain call with an integer argument.
    unsafe { proxy_set_effective_context(context) == OK }
}
