//! The wasm32 panic handler: a panic ends the call as a guest error carrying the panic
//! message, through the `abort` import.
//!
//! wasm32-unknown-unknown panics with `panic=abort` (there is no unwinding), so nothing
//! after the panic runs; the host discards the call's writes. The message is formatted
//! into a fixed buffer, not the heap, so a panic caused by exhausted memory can still be
//! reported; when memory growth was refused, though, the handler traps instead, so the
//! host reports *memory limit* (`ABI.md`, "Outcomes").

use core::fmt::Write;
use core::panic::PanicInfo;
use core::sync::atomic::{AtomicBool, Ordering::Relaxed};

use crate::abi;

/// Set while the handler runs: a panic inside it (it should not happen) traps at once
/// rather than recursing.
static PANICKING: AtomicBool = AtomicBool::new(false);

#[panic_handler]
fn panic(info: &PanicInfo<'_>) -> ! {
    if PANICKING.swap(true, Relaxed) {
        core::arch::wasm32::unreachable();
    }
    #[cfg(feature = "allocator")]
    if crate::allocator::grow_refused() {
        core::arch::wasm32::unreachable();
    }
    let mut message = crate::message::MessageBuffer::new();
    // The buffer truncates instead of failing, so the result carries no information.
    let _ = match info.location() {
        Some(location) => write!(
            message,
            "panicked at {}:{}:{}: {}",
            location.file(),
            location.line(),
            location.column(),
            info.message()
        ),
        None => write!(message, "panicked: {}", info.message()),
    };
    abi::abort(message.as_bytes())
}
