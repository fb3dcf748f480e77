//! The counter example: one signed 64-bit counter, the smallest useful wasmraft module
//! (and the one the host benchmarks a call with).
//!
//! Protocol (JSON):
//!
//! | call | input | output |
//! |---|---|---|
//! | apply | `{"op":"add","by":N}` (`N`: i64, may be negative) | `{"value":V}`, the new value |
//! | query | `{"op":"get"}` | `{"value":V}` (0 before the first add) |
//! | init (optional argument) | `{"value":N}` | nothing; the counter starts at `N` |
//!
//! An add that overflows i64 is a guest error and changes nothing.

#![no_std]

use serde::{Deserialize, Serialize};
use wasmraft_guest::{Context, Init, Kv, Result, StateMachine, bail};

/// The key holding the counter, as a JSON number.
const VALUE_KEY: &str = "value";

/// The state machine.
#[derive(Debug)]
pub struct Counter;

/// A write.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Command {
    /// Adds `by` (negative to subtract).
    Add { by: i64 },
}

/// A read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Query {
    Get,
}

/// The counter's value: the response to every call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Value {
    pub value: i64,
}

fn load(kv: &Kv) -> Result<i64> {
    Ok(kv.get_json(VALUE_KEY)?.unwrap_or(0))
}

impl StateMachine for Counter {
    type Command = Command;
    type Response = Value;
    type Query = Query;
    type QueryResponse = Value;

    fn apply(_context: &Context, kv: &mut Kv, command: Command) -> Result<Value> {
        match command {
            Command::Add { by } => {
                let current = load(kv)?;
                let Some(value) = current.checked_add(by) else {
                    bail!("counter overflow: {current} + {by} does not fit in i64");
                };
                kv.set_json(VALUE_KEY, &value)?;
                Ok(Value { value })
            }
        }
    }

    fn query(_context: &Context, kv: &Kv, query: Query) -> Result<Value> {
        match query {
            Query::Get => Ok(Value { value: load(kv)? }),
        }
    }
}

impl Init for Counter {
    /// Deploying without an argument starts the counter at 0.
    type InitArgument = Option<Value>;

    fn init(_context: &Context, kv: &mut Kv, start: Option<Value>) -> Result<()> {
        if let Some(Value { value }) = start {
            kv.set_json(VALUE_KEY, &value)?;
        }
        Ok(())
    }
}

wasmraft_guest::export!(Counter, init);

#[cfg(test)]
mod tests {
    extern crate std;

    use super::*;
    use wasmraft_guest::serde_json::json;
    use wasmraft_guest::testing::{CallError, Harness};

    #[test]
    fn adds_and_reads_back() {
        let mut counter = Harness::<Counter>::new();
        assert_eq!(counter.query(&Query::Get), Ok(Value { value: 0 }));
        assert_eq!(
            counter.apply(&Command::Add { by: 5 }),
            Ok(Value { value: 5 })
        );
        assert_eq!(
            counter.apply(&Command::Add { by: -7 }),
            Ok(Value { value: -2 })
        );
        assert_eq!(counter.query(&Query::Get), Ok(Value { value: -2 }));
        assert_eq!(counter.get_json::<i64>("value"), Some(-2));
    }

    #[test]
    fn speaks_the_documented_json() {
        let mut counter = Harness::<Counter>::new();
        assert_eq!(
            counter.apply_raw(br#"{"op":"add","by":3}"#).unwrap(),
            br#"{"value":3}"#
        );
        assert_eq!(
            counter.query_raw(br#"{"op":"get"}"#).unwrap(),
            br#"{"value":3}"#
        );
    }

    #[test]
    fn overflow_is_a_guest_error_and_changes_nothing() {
        let mut counter = Harness::<Counter>::new();
        counter.apply(&Command::Add { by: i64::MAX }).unwrap();
        let error = counter.apply(&Command::Add { by: 1 }).unwrap_err();
        assert_eq!(
            error,
            CallError::Guest(
                "counter overflow: 9223372036854775807 + 1 does not fit in i64".into()
            )
        );
        assert_eq!(counter.query(&Query::Get), Ok(Value { value: i64::MAX }));
        counter.apply(&Command::Add { by: i64::MIN }).unwrap();
        assert_eq!(counter.query(&Query::Get), Ok(Value { value: -1 }));
        assert!(counter.apply(&Command::Add { by: i64::MIN }).is_err());
    }

    #[test]
    fn bad_input_names_the_problem() {
        let mut counter = Harness::<Counter>::new();
        let cases: &[(&[u8], &str)] = &[
            (
                b"not json",
                "invalid command: expected ident at line 1 column 2",
            ),
            (
                br#"{"op":"mul","by":2}"#,
                "invalid command: unknown variant `mul`, expected `add`",
            ),
            (br#"{"op":"add"}"#, "invalid command: missing field `by`"),
            (br#"{"by":2}"#, "invalid command: missing field `op`"),
            (
                br#"{"op":"add","by":"2"}"#,
                "invalid command: invalid type: string \"2\", expected i64",
            ),
            (
                br#"{"op":"add","by":1.5}"#,
                "invalid command: invalid type: floating point `1.5`, expected i64",
            ),
            (
                br#"{"op":"add","by":1,"extra":0}"#,
                "invalid command: unknown field `extra`, expected `by`",
            ),
            (b"", "invalid command: the input is empty"),
        ];
        for (input, expected) in cases {
            let error = counter.apply_raw(input).unwrap_err();
            let message = error.guest_message();
            assert!(
                message.starts_with(expected),
                "{message:?} should start with {expected:?}"
            );
        }
        let error = counter.query_raw(br#"{"op":"put"}"#).unwrap_err();
        assert!(
            error
                .guest_message()
                .starts_with("invalid query: unknown variant `put`")
        );
        assert!(counter.kv().is_empty());
    }

    #[test]
    fn init_sets_the_start_value_or_leaves_zero() {
        let mut counter = Harness::<Counter>::new();
        counter.init_raw(b"").unwrap();
        assert_eq!(counter.query(&Query::Get), Ok(Value { value: 0 }));

        let mut counter = Harness::<Counter>::new();
        counter.init(&json!({"value": 40})).unwrap();
        assert_eq!(
            counter.apply(&json!({"op": "add", "by": 2})),
            Ok(Value { value: 42 })
        );

        let error = counter.init(&json!({"value": "x"})).unwrap_err();
        assert!(
            error
                .guest_message()
                .starts_with("invalid init argument: invalid type")
        );
    }
}
