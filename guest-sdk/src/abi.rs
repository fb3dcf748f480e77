//! The raw guest ABI v1 (`ABI.md`): the `wasmraft` host imports, wrapped in safe functions.
//!
//! On wasm32 these call the host through the imports; on every other target they call the
//! native test harness ([`crate::testing`]) instead, so a state machine compiles and runs
//! under plain `cargo test`. This is the only module that touches raw guest pointers: the
//! rest of the SDK sees slices and `Vec`s.

#![allow(unsafe_code)]

use alloc::vec::Vec;

/// The most bytes an `abort` message carries; the host truncates past it.
pub(crate) const ABORT_MESSAGE_MAX: usize = 4096;

#[cfg(target_arch = "wasm32")]
mod ffi {
    //! The imports, exactly as `ABI.md` lists them. Pointers and `usize` are `i32` on
    //! wasm32, so these signatures are the ABI's.

    #[link(wasm_import_module = "wasmraft")]
    unsafe extern "C" {
        pub(super) fn kv_get(key_ptr: *const u8, key_len: usize) -> i64;
        pub(super) fn kv_set(
            key_ptr: *const u8,
            key_len: usize,
            value_ptr: *const u8,
            value_len: usize,
        );
        pub(super) fn kv_delete(key_ptr: *const u8, key_len: usize);
        pub(super) fn kv_scan(
            start_ptr: *const u8,
            start_len: usize,
            end_ptr: *const u8,
            end_len: i32,
            limit: u32,
        ) -> i64;
        pub(super) fn caller() -> i32;
        pub(super) fn timestamp_ms() -> i64;
        pub(super) fn seed(dst_ptr: *mut u8);
        pub(super) fn result_read(dst_ptr: *mut u8);
        pub(super) fn output(ptr: *const u8, len: usize);
        pub(super) fn log(level: u32, ptr: *const u8, len: usize);
        pub(super) fn abort(ptr: *const u8, len: usize) -> !;
    }
}

/// Reads the host's pending result of `len` bytes (the value pattern of `ABI.md`).
#[cfg(target_arch = "wasm32")]
fn take_pending_result(len: usize) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(len);
    // SAFETY: `bytes` has room for `len` bytes at its pointer (for `len == 0` the
    // dangling pointer is in bounds for a zero-byte copy), and `len` is exactly the
    // pending result's length the host just returned, so `result_read` writes `len`
    // bytes and no more; only then is the length set.
    unsafe {
        ffi::result_read(bytes.as_mut_ptr());
        bytes.set_len(len);
    }
    bytes
}

/// Converts a length the host returned; a negative one (other than "absent") breaks
/// the ABI, so it ends the call.
#[cfg(target_arch = "wasm32")]
fn host_length(length: i64) -> usize {
    match usize::try_from(length) {
        Ok(length) => length,
        Err(_) => abort(b"wasmraft-guest: the host returned an invalid length"),
    }
}

/// `kv_get`: the value under `key`, if any.
pub(crate) fn kv_get(key: &[u8]) -> Option<Vec<u8>> {
    #[cfg(target_arch = "wasm32")]
    {
        // SAFETY: the pointer and length describe the live slice `key`.
        let length = unsafe { ffi::kv_get(key.as_ptr(), key.len()) };
        if length < 0 {
            return None;
        }
        Some(take_pending_result(host_length(length)))
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        crate::testing::backend::kv_get(key)
    }
}

/// `kv_set`: writes `value` under `key`.
pub(crate) fn kv_set(key: &[u8], value: &[u8]) {
    #[cfg(target_arch = "wasm32")]
    // SAFETY: both pointer/length pairs describe live slices.
    unsafe {
        ffi::kv_set(key.as_ptr(), key.len(), value.as_ptr(), value.len())
    }
    #[cfg(not(target_arch = "wasm32"))]
    crate::testing::backend::kv_set(key, value)
}

/// `kv_delete`: removes `key` (absent keys are fine).
pub(crate) fn kv_delete(key: &[u8]) {
    #[cfg(target_arch = "wasm32")]
    // SAFETY: the pointer and length describe the live slice `key`.
    unsafe {
        ffi::kv_delete(key.as_ptr(), key.len())
    }
    #[cfg(not(target_arch = "wasm32"))]
    crate::testing::backend::kv_delete(key)
}

/// `kv_scan`: one encoded page of the keys in `[start, end)` (`end: None` for no upper
/// bound), at most `limit` entries. `Kv::scan` decodes it.
pub(crate) fn kv_scan(start: &[u8], end: Option<&[u8]>, limit: u32) -> Vec<u8> {
    #[cfg(target_arch = "wasm32")]
    {
        let (end_ptr, end_len) = match end {
            // A bound longer than i32::MAX cannot exist in a 32-bit memory; the host
            // traps on anything past 4,097 bytes anyway.
            Some(end) => (end.as_ptr(), i32::try_from(end.len()).unwrap_or(i32::MAX)),
            None => (core::ptr::null(), -1),
        };
        // SAFETY: `start` is a live slice; `end_ptr`/`end_len` describe the live slice
        // `end`, or are (null, -1), which the ABI defines as "no upper bound" and the
        // host never dereferences.
        let length = unsafe { ffi::kv_scan(start.as_ptr(), start.len(), end_ptr, end_len, limit) };
        take_pending_result(host_length(length))
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        crate::testing::backend::kv_scan(start, end, limit)
    }
}

/// `caller`: the caller's identity as the host sent it (UTF-8).
pub(crate) fn caller() -> Vec<u8> {
    #[cfg(target_arch = "wasm32")]
    {
        // SAFETY: `caller` takes no arguments.
        let length = unsafe { ffi::caller() };
        take_pending_result(host_length(i64::from(length)))
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        crate::testing::backend::caller()
    }
}

/// `timestamp_ms`: the entry's timestamp, milliseconds since the Unix epoch.
pub(crate) fn timestamp_ms() -> i64 {
    #[cfg(target_arch = "wasm32")]
    // SAFETY: `timestamp_ms` takes no arguments.
    unsafe {
        ffi::timestamp_ms()
    }
    #[cfg(not(target_arch = "wasm32"))]
    crate::testing::backend::timestamp_ms()
}

/// `seed`: the entry's 32 seed bytes.
pub(crate) fn seed() -> [u8; 32] {
    #[cfg(target_arch = "wasm32")]
    {
        let mut seed = [0_u8; 32];
        // SAFETY: `seed` is a live, writable 32-byte buffer, exactly what the host writes.
        unsafe { ffi::seed(seed.as_mut_ptr()) };
        seed
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        crate::testing::backend::seed()
    }
}

/// `output`: sets the call's output (or, for a guest error, its message).
pub(crate) fn output(bytes: &[u8]) {
    #[cfg(target_arch = "wasm32")]
    // SAFETY: the pointer and length describe the live slice `bytes`.
    unsafe {
        ffi::output(bytes.as_ptr(), bytes.len())
    }
    #[cfg(not(target_arch = "wasm32"))]
    crate::testing::backend::output(bytes)
}

/// `log`: one diagnostic line at `level` (0 error … 4 trace).
pub(crate) fn log(level: u32, message: &[u8]) {
    #[cfg(target_arch = "wasm32")]
    // SAFETY: the pointer and length describe the live slice `message`.
    unsafe {
        ffi::log(level, message.as_ptr(), message.len())
    }
    #[cfg(not(target_arch = "wasm32"))]
    crate::testing::backend::log(level, message)
}

/// `abort`: ends the call at once as a guest error with `message`.
pub(crate) fn abort(message: &[u8]) -> ! {
    #[cfg(target_arch = "wasm32")]
    // SAFETY: the pointer and length describe the live slice `message`; the import
    // never returns.
    unsafe {
        ffi::abort(message.as_ptr(), message.len())
    }
    #[cfg(not(target_arch = "wasm32"))]
    crate::testing::backend::abort(message)
}

/// `wasmraft_alloc`: room for the host to place a call's input, 0 if there is none.
pub(crate) fn alloc_input(len: i32) -> i32 {
    let Ok(len) = usize::try_from(len) else {
        return 0;
    };
    if len == 0 {
        // A zero-length input needs no memory, but the ABI wants a non-zero pointer;
        // a dangling one is in bounds for zero bytes.
        return core::ptr::NonNull::<u8>::dangling().as_ptr() as usize as i32;
    }
    let Ok(layout) = core::alloc::Layout::from_size_align(len, 1) else {
        return 0;
    };
    // SAFETY: `layout` has a non-zero size. The block is never freed: the instance
    // lives for one call only.
    let pointer = unsafe { alloc::alloc::alloc(layout) };
    i32::try_from(pointer as usize).unwrap_or(0)
}

/// An exported entry point: runs `body` on the input at `ptr` and returns the ABI's
/// result code (see [`crate::__private::run`]).
///
/// # Safety
///
/// `ptr` and `len` must be what the host passed to the entry point after placing the
/// input in memory returned by [`alloc_input`]: `len` readable bytes at `ptr`, not
/// written again during the call.
pub unsafe fn entry(ptr: i32, len: i32, body: crate::__private::Body) -> i32 {
    // SAFETY: forwarded from the caller.
    let input = unsafe { input(ptr, len) };
    crate::__private::run(input, body)
}

/// The input the host placed at `ptr` for an entry point.
///
/// # Safety
///
/// As for [`entry`].
unsafe fn input<'a>(ptr: i32, len: i32) -> &'a [u8] {
    let Ok(len) = usize::try_from(len) else {
        abort(b"wasmraft-guest: the host passed a negative input length")
    };
    if len == 0 {
        return &[];
    }
    let pointer: *const u8 = core::ptr::with_exposed_provenance(ptr as u32 as usize);
    // SAFETY: the caller guarantees `len` readable, unaliased-by-writes bytes at `ptr`.
    unsafe { core::slice::from_raw_parts(pointer, len) }
}
