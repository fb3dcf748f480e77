//! What a call knows about itself: who made it, when, and its seed; and logging.
//!
//! Time and randomness reach a state machine only through here, from the Raft log entry,
//! so every replica sees the same values (DESIGN.md, invariant 2).

use alloc::string::String;
use core::fmt;

use crate::abi;

/// The call's context. Each accessor asks the host (one import call), so a call pays
/// only for what it reads.
pub struct Context {
    /// Only the SDK makes one.
    _private: (),
}

impl fmt::Debug for Context {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("Context")
    }
}

impl Context {
    pub(crate) const fn new() -> Self {
        Context { _private: () }
    }

    /// The authenticated subject who made the call; empty for a call made by the
    /// system (a deploy's `init`, for example).
    pub fn caller(&self) -> String {
        let bytes = abi::caller();
        match String::from_utf8(bytes) {
            Ok(caller) => caller,
            // The host sends UTF-8; be lenient rather than fail the call if not.
            Err(error) => String::from_utf8_lossy(error.as_bytes()).into_owned(),
        }
    }

    /// The entry's timestamp, milliseconds since the Unix epoch, set by the Raft leader
    /// when it proposed the entry. In a query: the last applied entry's timestamp.
    pub fn timestamp_ms(&self) -> i64 {
        abi::timestamp_ms()
    }

    /// 32 bytes derived from the entry's log id: identical on every replica, different
    /// for every entry. Seed a PRNG with it; never use a clock or OS randomness. In a
    /// query: all zeros.
    pub fn seed(&self) -> [u8; 32] {
        abi::seed()
    }
}

/// A log line's level. Lines go to the node's log; they never affect state. The host
/// keeps at most 64 lines and 16 KiB per call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u32)]
pub enum Level {
    Error = 0,
    Warn = 1,
    Info = 2,
    Debug = 3,
    Trace = 4,
}

/// Writes one line to the node's log.
pub fn log(level: Level, message: &str) {
    abi::log(level as u32, message.as_bytes());
}

/// Logs a formatted line at `Error` level: `wasmraft_guest::error!("…", …)`.
#[macro_export]
macro_rules! error {
    ($($message:tt)+) => { $crate::log($crate::Level::Error, &$crate::__private::format!($($message)+)) };
}

/// Logs a formatted line at `Warn` level.
#[macro_export]
macro_rules! warn {
    ($($message:tt)+) => { $crate::log($crate::Level::Warn, &$crate::__private::format!($($message)+)) };
}

/// Logs a formatted line at `Info` level.
#[macro_export]
macro_rules! info {
    ($($message:tt)+) => { $crate::log($crate::Level::Info, &$crate::__private::format!($($message)+)) };
}

/// Logs a formatted line at `Debug` level.
#[macro_export]
macro_rules! debug {
    ($($message:tt)+) => { $crate::log($crate::Level::Debug, &$crate::__private::format!($($message)+)) };
}

/// Logs a formatted line at `Trace` level.
#[macro_export]
macro_rules! trace {
    ($($message:tt)+) => { $crate::log($crate::Level::Trace, &$crate::__private::format!($($message)+)) };
}
