//! The guest error: a message that the host returns to the client as the call's
//! *guest error*, after discarding every write of the call.

use alloc::string::{String, ToString};
use core::fmt;

/// A guest error. Returning `Err(error)` from an entry point ends the call with result
/// code 1 and `error`'s message as the output; the host discards the call's writes.
///
/// Any [`core::error::Error`] converts into it with `?` (its `Display` becomes the
/// message); build one from text with [`Error::new`], [`bail!`](crate::bail) or
/// [`ensure!`](crate::ensure).
#[derive(Clone, PartialEq, Eq)]
pub struct Error {
    /// What the client reads. Keep it precise: it is the only thing a client learns.
    message: String,
}

impl Error {
    /// An error with this message.
    pub fn new(message: impl fmt::Display) -> Self {
        Error {
            message: message.to_string(),
        }
    }

    /// The message, as the client will read it.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Prefixes the message with `context` (`"{context}: {message}"`).
    pub fn context(self, context: impl fmt::Display) -> Self {
        Error::new(format_args!("{context}: {}", self.message))
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.message, formatter)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(&self.message)
    }
}

/// `?` on any error type. `Error` itself does not implement [`core::error::Error`], so
/// this blanket conversion does not collide with `From<Error> for Error` (as `anyhow`).
impl<E: core::error::Error> From<E> for Error {
    fn from(error: E) -> Self {
        Error::new(error)
    }
}

/// The result of a state machine's entry points.
pub type Result<T, E = Error> = core::result::Result<T, E>;

/// Returns early with a guest error: `bail!("account {name} does not exist")`.
#[macro_export]
macro_rules! bail {
    ($($message:tt)+) => {
        return ::core::result::Result::Err($crate::Error::new(::core::format_args!($($message)+)))
    };
}

/// Returns early with a guest error unless a condition holds:
/// `ensure!(amount > 0, "amount must be positive")`.
#[macro_export]
macro_rules! ensure {
    ($condition:expr, $($message:tt)+) => {
        if !$condition {
            $crate::bail!($($message)+);
        }
    };
}
