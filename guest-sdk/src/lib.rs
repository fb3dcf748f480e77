//! `wasmraft-guest`: write a wasmraft state machine in Rust.
//!
//! A module author implements [`StateMachine`] (and, to opt in, [`Init`] or
//! [`Migrate`]) for a type, and [`export!`] emits the guest ABI v1 exports (`ABI.md`)
//! for it. Commands, queries and their responses are serde types, carried as JSON.
//! State lives only in the host's key-value store ([`Kv`]); the instance is fresh for
//! every call, so nothing survives in memory between calls.
//!
//! ```
//! use serde::{Deserialize, Serialize};
//! use wasmraft_guest::{Context, Kv, Result, StateMachine};
//!
//! pub struct Counter;
//!
//! #[derive(Serialize, Deserialize)]
//! #[serde(tag = "op", rename_all = "snake_case")]
//! pub enum Command { Add { by: i64 } }
//!
//! #[derive(Serialize, Deserialize)]
//! #[serde(tag = "op", rename_all = "snake_case")]
//! pub enum Query { Get }
//!
//! #[derive(Serialize, Deserialize, Debug, PartialEq)]
//! pub struct Value { pub value: i64 }
//!
//! impl StateMachine for Counter {
//!     type Command = Command;
//!     type Response = Value;
//!     type Query = Query;
//!     type QueryResponse = Value;
//!
//!     fn apply(_: &Context, kv: &mut Kv, Command::Add { by }: Command) -> Result<Value> {
//!         let value: i64 = kv.get_json("value")?.unwrap_or(0);
//!         let Some(value) = value.checked_add(by) else {
//!             wasmraft_guest::bail!("counter overflow: {value} + {by}");
//!         };
//!         kv.set_json("value", &value)?;
//!         Ok(Value { value })
//!     }
//!
//!     fn query(_: &Context, kv: &Kv, Query::Get: Query) -> Result<Value> {
//!         Ok(Value { value: kv.get_json("value")?.unwrap_or(0) })
//!     }
//! }
//!
//! wasmraft_guest::export!(Counter);
//!
//! // Natively, the same code runs against an in-memory store:
//! let mut harness = wasmraft_guest::testing::Harness::<Counter>::new();
//! assert_eq!(harness.apply(&Command::Add { by: 2 }), Ok(Value { value: 2 }));
//! assert_eq!(harness.query(&Query::Get), Ok(Value { value: 2 }));
//! ```
//!
//! # Errors and panics
//!
//! An entry point that returns `Err(`[`Error`]`)` ends the call as a *guest error*
//! whose message is the error's; the host discards every write of the call. A panic
//! does the same with the panic message (`panicked at FILE:LINE:COLUMN: MESSAGE`): on
//! wasm32 the SDK's panic handler passes it to the host's `abort` (wasm32 builds use
//! `panic = "abort"`; there is no unwinding). Input that does not decode is a guest
//! error naming the problem (`invalid command: unknown variant ...`). An empty input
//! decodes as JSON `null`, so an `Option` or `()` argument accepts it.
//!
//! # Targets
//!
//! On wasm32 the [`Kv`] and [`Context`] calls go to the host's `wasmraft` imports, the
//! SDK installs a bump allocator (feature `allocator`) and a panic handler (feature
//! `panic-handler`). On every other target they go to the [`testing`] harness, which
//! keeps the host's semantics (read-your-writes, all-or-nothing, the key and value
//! limits) so `cargo test` exercises the state machine natively.

#![no_std]
#![warn(clippy::undocumented_unsafe_blocks)]

extern crate alloc;
#[cfg(not(target_arch = "wasm32"))]
extern crate std;

mod abi;
#[cfg(all(target_arch = "wasm32", feature = "allocator"))]
mod allocator;
mod context;
mod error;
mod kv;
#[cfg_attr(
    not(all(target_arch = "wasm32", feature = "panic-handler")),
    allow(dead_code)
)]
mod message;
#[cfg(all(target_arch = "wasm32", feature = "panic-handler"))]
mod panic;
#[cfg(not(target_arch = "wasm32"))]
pub mod testing;

#[cfg(all(target_arch = "wasm32", feature = "allocator"))]
pub use allocator::BumpAllocator;
pub use context::{Context, Level, log};
pub use error::{Error, Result};
pub use kv::{
    KEY_MAX_BYTES, Kv, SCAN_PAGE_DEFAULT_ENTRIES, SCAN_PAGE_MAX_ENTRIES, Scan, VALUE_MAX_BYTES,
    WRITE_SET_MAX_BYTES, prefix_end,
};
/// The serde the SDK speaks (no `std`).
pub use serde;
/// The JSON codec the SDK uses for inputs and outputs (no `std`).
pub use serde_json;

#[cfg(all(target_arch = "wasm32", feature = "allocator"))]
#[global_allocator]
static ALLOCATOR: BumpAllocator = BumpAllocator::new();

use serde::Serialize;
use serde::de::DeserializeOwned;

/// A replicated state machine. Implement it for a (usually empty) type and export it
/// with [`export!`].
///
/// Both entry points are plain functions of their input and the store: no state lives
/// in the type, and every replica runs them on the same inputs in the same order, so
/// they must be deterministic (time and randomness come only from [`Context`]).
pub trait StateMachine {
    /// A write, decoded from the JSON the client sent.
    type Command: DeserializeOwned;
    /// What a command returns, encoded as JSON.
    type Response: Serialize;
    /// A read, decoded from the JSON the client sent.
    type Query: DeserializeOwned;
    /// What a query returns, encoded as JSON.
    type QueryResponse: Serialize;

    /// Runs a command. Its writes commit only if it returns `Ok`.
    fn apply(context: &Context, kv: &mut Kv, command: Self::Command) -> Result<Self::Response>;

    /// Answers a query from the current state, read-only.
    fn query(context: &Context, kv: &Kv, query: Self::Query) -> Result<Self::QueryResponse>;
}

/// Runs once, when the module is first deployed under its name. Opt in with
/// `export!(MyType, init)`.
pub trait Init: StateMachine {
    /// The deploy's init argument, decoded from JSON (empty arrives as `null`).
    type InitArgument: DeserializeOwned;

    /// Sets up the initial state. An error fails the deploy.
    fn init(context: &Context, kv: &mut Kv, argument: Self::InitArgument) -> Result<()>;
}

/// Runs when a new version replaces a deployed module of the same name, against the
/// existing state. Opt in with `export!(MyType, migrate)`.
pub trait Migrate: StateMachine {
    /// The deploy's init argument, decoded from JSON (empty arrives as `null`).
    type MigrateArgument: DeserializeOwned;

    /// Moves the existing state to this version's layout. An error fails the upgrade.
    fn migrate(context: &Context, kv: &mut Kv, argument: Self::MigrateArgument) -> Result<()>;
}

/// Exports a [`StateMachine`] as a wasmraft module (guest ABI v1).
///
/// `export!(MyType)` emits `wasmraft_abi_version_1`, `wasmraft_alloc`, `apply` and
/// `query`; add `init` and/or `migrate` to export those too, which requires the type
/// to implement [`Init`] / [`Migrate`]: `export!(MyType, init, migrate)`. The exports
/// exist on wasm32 only; on other targets the macro only checks the traits, and the
/// [`testing`] harness calls the state machine directly. Use it once per module.
#[macro_export]
macro_rules! export {
    ($machine:ty $(, $entry:ident)* $(,)?) => {
        #[cfg(target_arch = "wasm32")]
        #[allow(unsafe_code)]
        const _: () = {
            /// The ABI v1 marker; never called.
            #[unsafe(no_mangle)]
            pub extern "C" fn wasmraft_abi_version_1() {}

            #[unsafe(no_mangle)]
            pub extern "C" fn wasmraft_alloc(len: i32) -> i32 {
                $crate::__private::alloc_input(len)
            }

            #[unsafe(no_mangle)]
            pub extern "C" fn apply(ptr: i32, len: i32) -> i32 {
                // SAFETY: the host calls an entry point with the input it placed at
                // `ptr` after `wasmraft_alloc` (ABI.md, "The call sequence").
                unsafe { $crate::__private::entry(ptr, len, $crate::__private::apply::<$machine>) }
            }

            #[unsafe(no_mangle)]
            pub extern "C" fn query(ptr: i32, len: i32) -> i32 {
                // SAFETY: as for `apply`.
                unsafe { $crate::__private::entry(ptr, len, $crate::__private::query::<$machine>) }
            }

            $( $crate::__export_entry!($machine, $entry); )*
        };

        const _: () = {
            fn check<T: $crate::StateMachine>() {}
            let _ = check::<$machine>;
            $( $crate::__check_entry!($machine, $entry); )*
        };
    };
}

/// One optional export of [`export!`].
#[doc(hidden)]
#[macro_export]
macro_rules! __export_entry {
    ($machine:ty, init) => {
        #[unsafe(no_mangle)]
        pub extern "C" fn init(ptr: i32, len: i32) -> i32 {
            // SAFETY: as for `apply`.
            unsafe { $crate::__private::entry(ptr, len, $crate::__private::init::<$machine>) }
        }
    };
    ($machine:ty, migrate) => {
        #[unsafe(no_mangle)]
        pub extern "C" fn migrate(ptr: i32, len: i32) -> i32 {
            // SAFETY: as for `apply`.
            unsafe { $crate::__private::entry(ptr, len, $crate::__private::migrate::<$machine>) }
        }
    };
    ($machine:ty, $other:ident) => {
        ::core::compile_error!(::core::concat!(
            "wasmraft_guest::export!: unknown entry point `",
            ::core::stringify!($other),
            "` (expected `init` or `migrate`)"
        ));
    };
}

/// The trait check of one optional export of [`export!`], on every target.
#[doc(hidden)]
#[macro_export]
macro_rules! __check_entry {
    ($machine:ty, init) => {
        fn check_init<T: $crate::Init>() {}
        let _ = check_init::<$machine>;
    };
    ($machine:ty, migrate) => {
        fn check_migrate<T: $crate::Migrate>() {}
        let _ = check_migrate::<$machine>;
    };
    ($machine:ty, $other:ident) => {
        ::core::compile_error!(::core::concat!(
            "wasmraft_guest::export!: unknown entry point `",
            ::core::stringify!($other),
            "` (expected `init` or `migrate`)"
        ));
    };
}

/// What [`export!`] and the logging macros expand to. Not a stable API.
#[doc(hidden)]
pub mod __private {
    use alloc::vec::Vec;

    pub use alloc::format;

    use crate::{Context, Error, Init, Kv, Migrate, StateMachine, abi};

    /// One entry point's body: input bytes to output bytes or a guest error.
    pub type Body = fn(&[u8]) -> Result<Vec<u8>, Error>;

    /// `wasmraft_alloc`.
    pub fn alloc_input(len: i32) -> i32 {
        abi::alloc_input(len)
    }

    pub use crate::abi::entry;

    /// Runs `body` on `input`, sets the output and returns the result code: 0 for
    /// success, 1 for a guest error. The test harness calls this too.
    pub fn run(input: &[u8], body: Body) -> i32 {
        match body(input) {
            Ok(output) => {
                if !output.is_empty() {
                    abi::output(&output);
                }
                0
            }
            Err(error) => {
                abi::output(error.message().as_bytes());
                1
            }
        }
    }

    fn decode<T: serde::de::DeserializeOwned>(input: &[u8], what: &str) -> Result<T, Error> {
        if input.is_empty() {
            // An empty input (a deploy without an init argument) reads as `null`; if
            // that does not fit, the error must not point into text nobody sent.
            return serde_json::from_slice(b"null")
                .map_err(|_| Error::new(format_args!("invalid {what}: the input is empty")));
        }
        serde_json::from_slice(input)
            .map_err(|error| Error::new(format_args!("invalid {what}: {error}")))
    }

    fn encode<T: serde::Serialize>(value: &T, what: &str) -> Result<Vec<u8>, Error> {
        serde_json::to_vec(value)
            .map_err(|error| Error::new(format_args!("{what} does not encode: {error}")))
    }

    pub fn apply<T: StateMachine>(input: &[u8]) -> Result<Vec<u8>, Error> {
        let command = decode(input, "command")?;
        let response = T::apply(&Context::new(), &mut Kv::new(), command)?;
        encode(&response, "response")
    }

    pub fn query<T: StateMachine>(input: &[u8]) -> Result<Vec<u8>, Error> {
        let query = decode(input, "query")?;
        let response = T::query(&Context::new(), &Kv::new(), query)?;
        encode(&response, "query response")
    }

    pub fn init<T: Init>(input: &[u8]) -> Result<Vec<u8>, Error> {
        let argument = decode(input, "init argument")?;
        T::init(&Context::new(), &mut Kv::new(), argument)?;
        Ok(Vec::new())
    }

    pub fn migrate<T: Migrate>(input: &[u8]) -> Result<Vec<u8>, Error> {
        let argument = decode(input, "migrate argument")?;
        T::migrate(&Context::new(), &mut Kv::new(), argument)?;
        Ok(Vec::new())
    }
}
