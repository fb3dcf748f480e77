//! The native test harness: runs a [`StateMachine`] without wasm, against an in-memory
//! store, with the host's semantics (like CosmWasm's `mock_dependencies`).
//!
//! ```
//! # use serde::{Deserialize, Serialize};
//! # use wasmraft_guest::{Context, Kv, Result, StateMachine};
//! # struct Notes;
//! # #[derive(Serialize, Deserialize)] struct Note { text: String }
//! # impl StateMachine for Notes {
//! #     type Command = Note; type Response = (); type Query = (); type QueryResponse = Vec<String>;
//! #     fn apply(context: &Context, kv: &mut Kv, note: Note) -> Result<()> {
//! #         kv.set(format!("{}/{}", context.caller(), context.timestamp_ms()), note.text);
//! #         Ok(())
//! #     }
//! #     fn query(_: &Context, kv: &Kv, _: ()) -> Result<Vec<String>> {
//! #         Ok(kv.scan_all().map(|(key, _)| String::from_utf8(key).unwrap()).collect())
//! #     }
//! # }
//! use wasmraft_guest::testing::Harness;
//!
//! let mut harness = Harness::<Notes>::new();
//! harness.caller("alice").timestamp_ms(1_000).apply(&Note { text: "hi".into() }).unwrap();
//! assert_eq!(harness.get(b"alice/1000"), Some(&b"hi"[..]));
//! assert_eq!(harness.query(&()), Ok(vec!["alice/1000".to_string()]));
//! ```
//!
//! What it keeps from the host (`ABI.md`): each call sees its own writes (scans
//! included), and commits all of them on success or none on a guest error, a panic or
//! a trap; the key, value, write-set, scan and output limits trap as the host does;
//! `abort` truncates to 4 KiB; a panic becomes a guest error with the message
//! `panicked at FILE:LINE:COLUMN: MESSAGE`, as on wasm32. In a query the timestamp is
//! the last command's and the seed is all zeros. What it does not model: fuel, the
//! memory cap and the wasm stack limit; test those against the real host.

use std::any::Any;
use std::boxed::Box;
use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;
use std::panic::{self, AssertUnwindSafe};
use std::string::{String, ToString};
use std::sync::Once;
use std::vec::Vec;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::__private::{self, Body};
use crate::{Init, Level, Migrate, StateMachine};

/// The default output cap of the host (a cluster setting there).
pub const OUTPUT_MAX_BYTES_DEFAULT: usize = 1 << 20;

/// How a harness call failed, as the host would report it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CallError {
    /// Result code 1, `abort`, or a panic: the message.
    Guest(String),
    /// The host would trap: a misused import (a key too large, a write in a query, …).
    Trap(String),
    /// `output` past the cap.
    OutputTooLarge { len: usize, limit: usize },
}

impl CallError {
    /// The guest error's message; panics (failing the test) for any other error.
    #[track_caller]
    pub fn guest_message(&self) -> &str {
        match self {
            CallError::Guest(message) => message,
            other => panic!("expected a guest error, got {other:?}"),
        }
    }
}

impl fmt::Display for CallError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CallError::Guest(message) => write!(formatter, "guest error: {message}"),
            CallError::Trap(message) => write!(formatter, "trap: {message}"),
            CallError::OutputTooLarge { len, limit } => {
                write!(
                    formatter,
                    "output too large: {len} bytes, the cap is {limit}"
                )
            }
        }
    }
}

impl std::error::Error for CallError {}

/// One line a call logged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogLine {
    pub level: Level,
    pub message: String,
}

/// A state machine `T` and its in-memory store.
///
/// The caller, timestamp and seed set on the harness apply to every later call.
/// Defaults: caller `""` (the system), timestamp 0, and a seed that is the command's
/// sequence number (1, 2, …) in its first 8 bytes, little-endian.
pub struct Harness<T> {
    state: BTreeMap<Vec<u8>, Vec<u8>>,
    caller: String,
    timestamp_ms: i64,
    /// The timestamp a query sees: the last command's.
    last_command_timestamp_ms: i64,
    seed: Option<[u8; 32]>,
    commands: u64,
    output_max_bytes: usize,
    logs: Vec<LogLine>,
    _machine: PhantomData<fn() -> T>,
}

impl<T> fmt::Debug for Harness<T> {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("Harness")
            .field("machine", &std::any::type_name::<T>())
            .field("entries", &self.state.len())
            .field("caller", &self.caller)
            .field("timestamp_ms", &self.timestamp_ms)
            .finish_non_exhaustive()
    }
}

impl<T: StateMachine> Default for Harness<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: StateMachine> Harness<T> {
    /// A harness with an empty store.
    pub fn new() -> Self {
        Harness {
            state: BTreeMap::new(),
            caller: String::new(),
            timestamp_ms: 0,
            last_command_timestamp_ms: 0,
            seed: None,
            commands: 0,
            output_max_bytes: OUTPUT_MAX_BYTES_DEFAULT,
            logs: Vec::new(),
            _machine: PhantomData,
        }
    }

    /// Sets the caller's identity for the following calls.
    pub fn caller(&mut self, caller: impl Into<String>) -> &mut Self {
        self.caller = caller.into();
        self
    }

    /// Sets the entry timestamp for the following commands.
    pub fn timestamp_ms(&mut self, timestamp_ms: i64) -> &mut Self {
        self.timestamp_ms = timestamp_ms;
        self
    }

    /// Sets the seed for the following commands.
    pub fn seed(&mut self, seed: [u8; 32]) -> &mut Self {
        self.seed = Some(seed);
        self
    }

    /// Sets the output cap (the host's is a cluster setting, 1 MiB by default).
    pub fn output_max_bytes(&mut self, output_max_bytes: usize) -> &mut Self {
        self.output_max_bytes = output_max_bytes;
        self
    }

    /// Runs a command given as any serde value (the typed command, or a
    /// `serde_json::Value`), and decodes the response.
    ///
    /// # Panics
    ///
    /// If the response does not decode as `T::Response` (a bug in the test or the
    /// machine).
    #[track_caller]
    pub fn apply<C: Serialize + ?Sized>(&mut self, command: &C) -> Result<T::Response, CallError>
    where
        T::Response: DeserializeOwned,
    {
        let output = self.apply_raw(&to_json(command))?;
        Ok(from_json(&output, "response"))
    }

    /// Runs a command from its raw bytes (to test bad input); returns the raw output.
    pub fn apply_raw(&mut self, input: &[u8]) -> Result<Vec<u8>, CallError> {
        self.write_call(input, __private::apply::<T>)
    }

    /// Runs a query given as any serde value and decodes its response.
    ///
    /// # Panics
    ///
    /// If the response does not decode as `T::QueryResponse`.
    #[track_caller]
    pub fn query<Q: Serialize + ?Sized>(&mut self, query: &Q) -> Result<T::QueryResponse, CallError>
    where
        T::QueryResponse: DeserializeOwned,
    {
        let output = self.query_raw(&to_json(query))?;
        Ok(from_json(&output, "query response"))
    }

    /// Runs a query from its raw bytes; returns the raw output.
    pub fn query_raw(&mut self, input: &[u8]) -> Result<Vec<u8>, CallError> {
        let environment = Environment {
            read_only: true,
            caller: self.caller.clone(),
            timestamp_ms: self.last_command_timestamp_ms,
            seed: [0; 32],
            output_max_bytes: self.output_max_bytes,
        };
        self.call(environment, input, __private::query::<T>)
    }

    /// Runs `init` with an argument given as any serde value.
    pub fn init<A: Serialize + ?Sized>(&mut self, argument: &A) -> Result<(), CallError>
    where
        T: Init,
    {
        self.init_raw(&to_json(argument)).map(drop)
    }

    /// Runs `init` with raw argument bytes (empty, as a deploy without an argument).
    pub fn init_raw(&mut self, input: &[u8]) -> Result<Vec<u8>, CallError>
    where
        T: Init,
    {
        self.write_call(input, __private::init::<T>)
    }

    /// Runs `migrate` with an argument given as any serde value.
    pub fn migrate<A: Serialize + ?Sized>(&mut self, argument: &A) -> Result<(), CallError>
    where
        T: Migrate,
    {
        self.migrate_raw(&to_json(argument)).map(drop)
    }

    /// Runs `migrate` with raw argument bytes.
    pub fn migrate_raw(&mut self, input: &[u8]) -> Result<Vec<u8>, CallError>
    where
        T: Migrate,
    {
        self.write_call(input, __private::migrate::<T>)
    }

    /// A call that may write: it takes the next command's timestamp and seed.
    fn write_call(&mut self, input: &[u8], body: Body) -> Result<Vec<u8>, CallError> {
        self.commands += 1;
        self.last_command_timestamp_ms = self.timestamp_ms;
        let seed = self.seed.unwrap_or_else(|| {
            let mut seed = [0; 32];
            seed[..8].copy_from_slice(&self.commands.to_le_bytes());
            seed
        });
        let environment = Environment {
            read_only: false,
            caller: self.caller.clone(),
            timestamp_ms: self.timestamp_ms,
            seed,
            output_max_bytes: self.output_max_bytes,
        };
        self.call(environment, input, body)
    }

    fn call(
        &mut self,
        environment: Environment,
        input: &[u8],
        body: Body,
    ) -> Result<Vec<u8>, CallError> {
        let read_only = environment.read_only;
        let (result, backend) = backend::run(self.state.clone(), environment, || {
            __private::run(input, body)
        });
        self.logs.extend(backend.logs);
        match result {
            Ok(0) => {
                if !read_only {
                    self.state = backend.state;
                }
                Ok(backend.output)
            }
            Ok(1) => Err(CallError::Guest(
                String::from_utf8_lossy(&backend.output).into_owned(),
            )),
            Ok(code) => Err(CallError::Trap(std::format!("invalid result code {code}"))),
            Err(exit) => Err(exit),
        }
    }

    /// The whole store.
    pub fn kv(&self) -> &BTreeMap<Vec<u8>, Vec<u8>> {
        &self.state
    }

    /// The value under `key`.
    pub fn get(&self, key: impl AsRef<[u8]>) -> Option<&[u8]> {
        self.state.get(key.as_ref()).map(Vec::as_slice)
    }

    /// The JSON value under `key`, decoded.
    ///
    /// # Panics
    ///
    /// If the value does not decode as `V`.
    #[track_caller]
    pub fn get_json<V: DeserializeOwned>(&self, key: impl AsRef<[u8]>) -> Option<V> {
        self.get(key).map(|bytes| from_json(bytes, "stored value"))
    }

    /// Writes an entry directly, outside any call (to set up a test's state).
    pub fn set(&mut self, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> &mut Self {
        self.state.insert(key.into(), value.into());
        self
    }

    /// Every line logged so far.
    pub fn logs(&self) -> &[LogLine] {
        &self.logs
    }

    /// Takes the lines logged so far.
    pub fn take_logs(&mut self) -> Vec<LogLine> {
        std::mem::take(&mut self.logs)
    }
}

#[track_caller]
fn to_json<V: Serialize + ?Sized>(value: &V) -> Vec<u8> {
    match serde_json::to_vec(value) {
        Ok(bytes) => bytes,
        Err(error) => panic!("the test's input does not encode as JSON: {error}"),
    }
}

#[track_caller]
fn from_json<V: DeserializeOwned>(bytes: &[u8], what: &str) -> V {
    match serde_json::from_slice(bytes) {
        Ok(value) => value,
        Err(error) => panic!(
            "the {what} {:?} does not decode: {error}",
            String::from_utf8_lossy(bytes)
        ),
    }
}

/// What the host tells a call about itself.
pub(crate) struct Environment {
    read_only: bool,
    caller: String,
    timestamp_ms: i64,
    seed: [u8; 32],
    output_max_bytes: usize,
}

/// The host side of the harness: the imports of `ABI.md`, over a thread-local call.
/// [`crate::abi`] routes here on non-wasm targets.
pub(crate) mod backend {
    use super::*;

    /// A page stops before passing this many bytes (`ABI.md`, "The `kv_scan` page").
    const SCAN_PAGE_MAX_BYTES: usize = 4 << 20;
    /// A scan bound may be one byte longer than a key, to hold a continuation key.
    const SCAN_BOUND_MAX_BYTES: usize = crate::KEY_MAX_BYTES + 1;
    const LOG_LINES_MAX: usize = 64;
    const LOG_BYTES_MAX: usize = 16 << 10;

    /// One call in progress.
    pub(crate) struct Backend {
        environment: Environment,
        /// The store as this call sees it; becomes the harness's store on success.
        pub(crate) state: BTreeMap<Vec<u8>, Vec<u8>>,
        /// The size each written key contributes to the write set (key plus value,
        /// or key alone for a delete), for the write-set limit.
        writes: BTreeMap<Vec<u8>, usize>,
        write_set_bytes: usize,
        pub(crate) output: Vec<u8>,
        pub(crate) logs: Vec<LogLine>,
        log_bytes: usize,
    }

    /// The ways an import ends a call at once, carried as a panic payload to `run`.
    enum Exit {
        Abort(String),
        Trap(String),
        OutputTooLarge { len: usize, limit: usize },
    }

    std::thread_local! {
        static CALL: RefCell<Option<Backend>> = const { RefCell::new(None) };
        /// The last panic message inside a call, recorded by the panic hook with its
        /// location (the payload alone has none).
        static PANIC_MESSAGE: RefCell<Option<String>> = const { RefCell::new(None) };
        static IN_CALL: Cell<bool> = const { Cell::new(false) };
    }

    static HOOK: Once = Once::new();

    /// Runs `body` as one call over `state`. Returns the result code or how the call
    /// ended, and the call's backend (its state, output and logs).
    pub(crate) fn run(
        state: BTreeMap<Vec<u8>, Vec<u8>>,
        environment: Environment,
        body: impl FnOnce() -> i32,
    ) -> (Result<i32, CallError>, Backend) {
        install_panic_hook();
        let backend = Backend {
            environment,
            state,
            writes: BTreeMap::new(),
            write_set_bytes: 0,
            output: Vec::new(),
            logs: Vec::new(),
            log_bytes: 0,
        };
        CALL.with(|call| {
            let mut call = call.borrow_mut();
            assert!(
                call.is_none(),
                "a harness call started inside another harness call"
            );
            *call = Some(backend);
        });
        IN_CALL.set(true);
        let result = panic::catch_unwind(AssertUnwindSafe(body));
        IN_CALL.set(false);
        let backend = CALL
            .with(|call| call.borrow_mut().take())
            .expect("the call's backend is still installed");
        let result = result.map_err(exit_error);
        (result, backend)
    }

    fn exit_error(payload: Box<dyn Any + Send>) -> CallError {
        match payload.downcast::<Exit>() {
            Ok(exit) => match *exit {
                Exit::Abort(message) => CallError::Guest(message),
                Exit::Trap(message) => CallError::Trap(message),
                Exit::OutputTooLarge { len, limit } => CallError::OutputTooLarge { len, limit },
            },
            Err(_) => {
                let message = PANIC_MESSAGE
                    .with(|message| message.borrow_mut().take())
                    .unwrap_or_else(|| "panicked".to_string());
                CallError::Guest(truncate(message.as_bytes()))
            }
        }
    }

    /// A panic inside a call is an outcome, not a test failure: record its message
    /// (as the wasm32 panic handler formats it) instead of printing it. Panics
    /// elsewhere go to the previous hook.
    fn install_panic_hook() {
        HOOK.call_once(|| {
            let previous = panic::take_hook();
            panic::set_hook(Box::new(move |info| {
                if !IN_CALL.get() {
                    return previous(info);
                }
                if info.payload().is::<Exit>() {
                    return;
                }
                let message = info.payload_as_str().unwrap_or("Box<dyn Any>");
                let message = match info.location() {
                    Some(location) => std::format!(
                        "panicked at {}:{}:{}: {message}",
                        location.file(),
                        location.line(),
                        location.column()
                    ),
                    None => std::format!("panicked: {message}"),
                };
                PANIC_MESSAGE.with(|slot| *slot.borrow_mut() = Some(message));
            }));
        });
    }

    /// The host keeps the first 4 KiB of an abort message, lossy-decoded.
    fn truncate(message: &[u8]) -> String {
        let len = message.len().min(crate::abi::ABORT_MESSAGE_MAX);
        String::from_utf8_lossy(&message[..len]).into_owned()
    }

    fn with_call<R>(body: impl FnOnce(&mut Backend) -> Result<R, Exit>) -> R {
        let result = CALL.with(|call| {
            let mut call = call.borrow_mut();
            let backend = call.as_mut().unwrap_or_else(|| {
                panic!(
                    "wasmraft-guest: a host function was called outside a call; \
                     run the state machine through wasmraft_guest::testing::Harness"
                )
            });
            body(backend)
        });
        match result {
            Ok(value) => value,
            Err(exit) => panic::panic_any(exit),
        }
    }

    fn trap(message: impl Into<String>) -> Exit {
        Exit::Trap(message.into())
    }

    fn check_key(key: &[u8]) -> Result<(), Exit> {
        if key.is_empty() {
            return Err(trap("empty key"));
        }
        if key.len() > crate::KEY_MAX_BYTES {
            return Err(trap(std::format!(
                "key too large: {} bytes, the limit is {}",
                key.len(),
                crate::KEY_MAX_BYTES
            )));
        }
        Ok(())
    }

    impl Backend {
        fn check_writable(&self) -> Result<(), Exit> {
            if self.environment.read_only {
                return Err(trap("write in a read-only query"));
            }
            Ok(())
        }

        /// Records that `key` now contributes `size` bytes to the write set.
        fn record_write(&mut self, key: &[u8], size: usize) -> Result<(), Exit> {
            let previous = self.writes.get(key).copied().unwrap_or(0);
            let total = self.write_set_bytes - previous + size;
            if total > crate::WRITE_SET_MAX_BYTES {
                return Err(trap(std::format!(
                    "write set too large: {total} bytes, the limit is {}",
                    crate::WRITE_SET_MAX_BYTES
                )));
            }
            self.write_set_bytes = total;
            self.writes.insert(key.to_vec(), size);
            Ok(())
        }
    }

    pub(crate) fn kv_get(key: &[u8]) -> Option<Vec<u8>> {
        with_call(|call| {
            check_key(key)?;
            Ok(call.state.get(key).cloned())
        })
    }

    pub(crate) fn kv_set(key: &[u8], value: &[u8]) {
        with_call(|call| {
            call.check_writable()?;
            check_key(key)?;
            if value.len() > crate::VALUE_MAX_BYTES {
                return Err(trap(std::format!(
                    "value too large: {} bytes, the limit is {}",
                    value.len(),
                    crate::VALUE_MAX_BYTES
                )));
            }
            call.record_write(key, key.len() + value.len())?;
            call.state.insert(key.to_vec(), value.to_vec());
            Ok(())
        })
    }

    pub(crate) fn kv_delete(key: &[u8]) {
        with_call(|call| {
            call.check_writable()?;
            check_key(key)?;
            call.record_write(key, key.len())?;
            call.state.remove(key);
            Ok(())
        })
    }

    pub(crate) fn kv_scan(start: &[u8], end: Option<&[u8]>, limit: u32) -> Vec<u8> {
        with_call(|call| {
            if !(1..=crate::SCAN_PAGE_MAX_ENTRIES).contains(&limit) {
                return Err(trap(std::format!(
                    "scan limit {limit} out of range 1..={}",
                    crate::SCAN_PAGE_MAX_ENTRIES
                )));
            }
            for bound in std::iter::once(start).chain(end) {
                if bound.len() > SCAN_BOUND_MAX_BYTES {
                    return Err(trap(std::format!(
                        "scan bound too large: {} bytes, the limit is {SCAN_BOUND_MAX_BYTES}",
                        bound.len()
                    )));
                }
            }
            Ok(encode_page(&call.state, start, end, limit as usize))
        })
    }

    /// One page of `[start, end)`, encoded as `ABI.md` says.
    pub(crate) fn encode_page(
        state: &BTreeMap<Vec<u8>, Vec<u8>>,
        start: &[u8],
        end: Option<&[u8]>,
        limit: usize,
    ) -> Vec<u8> {
        let mut page = std::vec![0_u8];
        if end.is_some_and(|end| end <= start) {
            return page;
        }
        let range = state.range::<[u8], _>((
            std::ops::Bound::Included(start),
            match end {
                Some(end) => std::ops::Bound::Excluded(end),
                None => std::ops::Bound::Unbounded,
            },
        ));
        for (entries, (key, value)) in range.enumerate() {
            let size = 8 + key.len() + value.len();
            if entries == limit || (entries > 0 && page.len() + size > SCAN_PAGE_MAX_BYTES) {
                page[0] = 1;
                break;
            }
            page.extend_from_slice(&(key.len() as u32).to_le_bytes());
            page.extend_from_slice(key);
            page.extend_from_slice(&(value.len() as u32).to_le_bytes());
            page.extend_from_slice(value);
        }
        page
    }

    pub(crate) fn caller() -> Vec<u8> {
        with_call(|call| Ok(call.environment.caller.clone().into_bytes()))
    }

    pub(crate) fn timestamp_ms() -> i64 {
        with_call(|call| Ok(call.environment.timestamp_ms))
    }

    pub(crate) fn seed() -> [u8; 32] {
        with_call(|call| Ok(call.environment.seed))
    }

    pub(crate) fn output(bytes: &[u8]) {
        with_call(|call| {
            let limit = call.environment.output_max_bytes;
            if bytes.len() > limit {
                return Err(Exit::OutputTooLarge {
                    len: bytes.len(),
                    limit,
                });
            }
            call.output = bytes.to_vec();
            Ok(())
        })
    }

    pub(crate) fn log(level: u32, message: &[u8]) {
        with_call(|call| {
            // As the host: an unknown level logs at trace; the line that crosses the
            // byte budget is cut to it, later ones are dropped.
            let level = match level {
                0 => Level::Error,
                1 => Level::Warn,
                2 => Level::Info,
                3 => Level::Debug,
                _ => Level::Trace,
            };
            let budget = LOG_BYTES_MAX - call.log_bytes;
            if call.logs.len() >= LOG_LINES_MAX || budget == 0 {
                return Ok(());
            }
            let shown = &message[..message.len().min(budget)];
            call.log_bytes += shown.len();
            call.logs.push(LogLine {
                level,
                message: String::from_utf8_lossy(shown).into_owned(),
            });
            Ok(())
        })
    }

    pub(crate) fn abort(message: &[u8]) -> ! {
        with_call(|_| Err::<(), _>(Exit::Abort(truncate(message))));
        unreachable!("with_call panics on an exit")
    }
}
