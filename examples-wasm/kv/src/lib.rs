//! The kv example: a string key-value store with compare-and-swap and prefix scans.
//!
//! Protocol (JSON; keys and values are strings):
//!
//! | call | input | output |
//! |---|---|---|
//! | apply | `{"op":"put","key":K,"value":V}` | `{"previous":P\|null}` |
//! | apply | `{"op":"delete","key":K}` | `{"previous":P\|null}` |
//! | apply | `{"op":"cas","key":K,"expected":E\|null,"value":V}` | `{"ok":bool,"current":C\|null}` |
//! | query | `{"op":"get","key":K}` | `{"value":V\|null}` |
//! | query | `{"op":"scan","prefix":P,"limit":N}` | `{"items":[[K,V],…]}` |
//!
//! `cas` writes `value` only if the key's value equals `expected` (`null`: the key must
//! be absent). `ok` says whether it wrote; `current` is the key's value after the call
//! (the new value when `ok`, the unchanged one otherwise), so a client that lost a race
//! can retry without another read.
//!
//! `scan` returns the first `limit` (1 to 1,000) entries whose key starts with `prefix`
//! (`""` for all), in ascending byte order of the key. To page, scan again with a
//! longer prefix or keep keys ordered; the output cap (1 MiB by default) bounds a page.
//!
//! Keys are 1 to 4,096 bytes and values at most 1 MiB; input outside those limits is a
//! guest error naming the limit, before anything is written.

#![no_std]

extern crate alloc;

use alloc::string::String;
use alloc::vec::Vec;

use serde::{Deserialize, Serialize};
use wasmraft_guest::{
    Context, Error, KEY_MAX_BYTES, Kv, Result, StateMachine, VALUE_MAX_BYTES, bail, ensure,
};

/// The most entries one scan returns.
pub const SCAN_LIMIT_MAX: u32 = 1000;

/// The state machine.
#[derive(Debug)]
pub struct KeyValue;

/// A write.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Command {
    Put {
        key: String,
        value: String,
    },
    Delete {
        key: String,
    },
    Cas {
        key: String,
        expected: Option<String>,
        value: String,
    },
}

/// The response to a command: the previous value for `put`/`delete`, the outcome for
/// `cas`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Response {
    Previous { previous: Option<String> },
    Cas { ok: bool, current: Option<String> },
}

/// A read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Query {
    Get { key: String },
    Scan { prefix: String, limit: u32 },
}

/// The response to a query.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum QueryResponse {
    Value { value: Option<String> },
    Items { items: Vec<(String, String)> },
}

fn check_key(key: &str) -> Result<()> {
    ensure!(!key.is_empty(), "key must not be empty");
    ensure!(
        key.len() <= KEY_MAX_BYTES,
        "key is {} bytes, the limit is {KEY_MAX_BYTES}",
        key.len()
    );
    Ok(())
}

fn check_value(value: &str) -> Result<()> {
    ensure!(
        value.len() <= VALUE_MAX_BYTES,
        "value is {} bytes, the limit is {VALUE_MAX_BYTES}",
        value.len()
    );
    Ok(())
}

/// The stored value under `key`, which this module always writes as UTF-8.
fn read(kv: &Kv, key: &str) -> Result<Option<String>> {
    kv.get(key)
        .map(|bytes| {
            String::from_utf8(bytes)
                .map_err(|_| Error::new(format_args!("stored value of {key:?} is not UTF-8")))
        })
        .transpose()
}

impl StateMachine for KeyValue {
    type Command = Command;
    type Response = Response;
    type Query = Query;
    type QueryResponse = QueryResponse;

    fn apply(_context: &Context, kv: &mut Kv, command: Command) -> Result<Response> {
        match command {
            Command::Put { key, value } => {
                check_key(&key)?;
                check_value(&value)?;
                let previous = read(kv, &key)?;
                kv.set(&key, &value);
                Ok(Response::Previous { previous })
            }
            Command::Delete { key } => {
                check_key(&key)?;
                let previous = read(kv, &key)?;
                if previous.is_some() {
                    kv.delete(&key);
                }
                Ok(Response::Previous { previous })
            }
            Command::Cas {
                key,
                expected,
                value,
            } => {
                check_key(&key)?;
                check_value(&value)?;
                let current = read(kv, &key)?;
                if current != expected {
                    return Ok(Response::Cas { ok: false, current });
                }
                kv.set(&key, &value);
                Ok(Response::Cas {
                    ok: true,
                    current: Some(value),
                })
            }
        }
    }

    fn query(_context: &Context, kv: &Kv, query: Query) -> Result<QueryResponse> {
        match query {
            Query::Get { key } => {
                check_key(&key)?;
                Ok(QueryResponse::Value {
                    value: read(kv, &key)?,
                })
            }
            Query::Scan { prefix, limit } => {
                ensure!(
                    (1..=SCAN_LIMIT_MAX).contains(&limit),
                    "limit must be between 1 and {SCAN_LIMIT_MAX}, got {limit}"
                );
                ensure!(
                    prefix.len() <= KEY_MAX_BYTES,
                    "prefix is {} bytes, the limit is {KEY_MAX_BYTES}",
                    prefix.len()
                );
                let mut items = Vec::new();
                for (key, value) in kv
                    .scan_prefix(&prefix)
                    .page_size(limit)
                    .take(limit as usize)
                {
                    let (Ok(key), Ok(value)) = (String::from_utf8(key), String::from_utf8(value))
                    else {
                        bail!("a stored entry under prefix {prefix:?} is not UTF-8");
                    };
                    items.push((key, value));
                }
                Ok(QueryResponse::Items { items })
            }
        }
    }
}

wasmraft_guest::export!(KeyValue);

#[cfg(test)]
mod tests {
    extern crate std;

    use super::*;
    use alloc::string::ToString;
    use alloc::vec;
    use std::format;
    use wasmraft_guest::serde_json::{Value, json};
    use wasmraft_guest::testing::Harness;

    fn apply(kv: &mut Harness<KeyValue>, command: Value) -> Value {
        let output = kv.apply_raw(command.to_string().as_bytes()).unwrap();
        wasmraft_guest::serde_json::from_slice(&output).unwrap()
    }

    fn query(kv: &mut Harness<KeyValue>, query: Value) -> Value {
        let output = kv.query_raw(query.to_string().as_bytes()).unwrap();
        wasmraft_guest::serde_json::from_slice(&output).unwrap()
    }

    #[test]
    fn put_get_delete() {
        let mut kv = Harness::<KeyValue>::new();
        assert_eq!(
            query(&mut kv, json!({"op":"get","key":"a"})),
            json!({"value": null})
        );
        assert_eq!(
            apply(&mut kv, json!({"op":"put","key":"a","value":"1"})),
            json!({"previous": null})
        );
        assert_eq!(
            apply(&mut kv, json!({"op":"put","key":"a","value":"2"})),
            json!({"previous": "1"})
        );
        assert_eq!(
            query(&mut kv, json!({"op":"get","key":"a"})),
            json!({"value": "2"})
        );
        assert_eq!(
            apply(&mut kv, json!({"op":"delete","key":"a"})),
            json!({"previous": "2"})
        );
        assert_eq!(
            apply(&mut kv, json!({"op":"delete","key":"a"})),
            json!({"previous": null})
        );
        assert!(kv.kv().is_empty());
    }

    #[test]
    fn empty_values_are_values() {
        let mut kv = Harness::<KeyValue>::new();
        apply(&mut kv, json!({"op":"put","key":"a","value":""}));
        assert_eq!(
            query(&mut kv, json!({"op":"get","key":"a"})),
            json!({"value": ""})
        );
    }

    #[test]
    fn cas_writes_only_on_a_match() {
        let mut kv = Harness::<KeyValue>::new();
        let create = json!({"op":"cas","key":"k","expected":null,"value":"v1"});
        assert_eq!(
            apply(&mut kv, create.clone()),
            json!({"ok": true, "current": "v1"})
        );
        // Creating again fails and reports what is there.
        assert_eq!(
            apply(&mut kv, create),
            json!({"ok": false, "current": "v1"})
        );
        assert_eq!(
            apply(
                &mut kv,
                json!({"op":"cas","key":"k","expected":"v0","value":"v2"})
            ),
            json!({"ok": false, "current": "v1"})
        );
        assert_eq!(
            apply(
                &mut kv,
                json!({"op":"cas","key":"k","expected":"v1","value":"v2"})
            ),
            json!({"ok": true, "current": "v2"})
        );
        assert_eq!(
            apply(
                &mut kv,
                json!({"op":"cas","key":"absent","expected":"x","value":"y"})
            ),
            json!({"ok": false, "current": null})
        );
        assert_eq!(kv.get("k"), Some(&b"v2"[..]));
        assert_eq!(kv.get("absent"), None);
    }

    #[test]
    fn scan_returns_a_prefix_in_order_up_to_the_limit() {
        let mut kv = Harness::<KeyValue>::new();
        for key in ["user/b", "user/a", "users", "user/c", "admin", "user0"] {
            apply(
                &mut kv,
                json!({"op":"put","key":key,"value":key.to_uppercase()}),
            );
        }
        assert_eq!(
            query(&mut kv, json!({"op":"scan","prefix":"user/","limit":10})),
            json!({"items": [["user/a","USER/A"],["user/b","USER/B"],["user/c","USER/C"]]})
        );
        assert_eq!(
            query(&mut kv, json!({"op":"scan","prefix":"user/","limit":2})),
            json!({"items": [["user/a","USER/A"],["user/b","USER/B"]]})
        );
        assert_eq!(
            query(&mut kv, json!({"op":"scan","prefix":"","limit":1})),
            json!({"items": [["admin","ADMIN"]]})
        );
        assert_eq!(
            query(&mut kv, json!({"op":"scan","prefix":"zzz","limit":5})),
            json!({"items": []})
        );
    }

    #[test]
    fn scan_crosses_host_pages() {
        let mut kv = Harness::<KeyValue>::new();
        for index in 0..1200 {
            kv.set(format!("k{index:05}"), format!("{index}"));
        }
        let items = query(&mut kv, json!({"op":"scan","prefix":"k","limit":1000}));
        let items = items["items"].as_array().unwrap();
        assert_eq!(items.len(), 1000);
        assert_eq!(items[999], json!(["k00999", "999"]));
    }

    #[test]
    fn bad_input_is_a_guest_error_that_names_the_problem() {
        let long_key = "k".repeat(KEY_MAX_BYTES + 1);
        let long_value = "v".repeat(VALUE_MAX_BYTES + 1);
        let apply_cases =
            vec![
            (json!({"op":"put","key":"","value":"v"}), "key must not be empty".to_string()),
            (
                json!({"op":"put","key":long_key,"value":"v"}),
                format!("key is 4097 bytes, the limit is {KEY_MAX_BYTES}"),
            ),
            (
                json!({"op":"put","key":"k","value":long_value}),
                format!("value is {} bytes, the limit is {VALUE_MAX_BYTES}", VALUE_MAX_BYTES + 1),
            ),
            (json!({"op":"put","key":"k"}), "invalid command: missing field `value`".to_string()),
            (
                json!({"op":"put","key":1,"value":"v"}),
                "invalid command: invalid type: integer `1`, expected a string".to_string(),
            ),
            (
                json!({"op":"get","key":"k"}),
                "invalid command: unknown variant `get`, expected one of `put`, `delete`, `cas`"
                    .to_string(),
            ),
        ];
        let mut kv = Harness::<KeyValue>::new();
        for (command, expected) in apply_cases {
            let error = kv.apply_raw(command.to_string().as_bytes()).unwrap_err();
            let message = error.guest_message();
            assert!(
                message.starts_with(&expected),
                "{message:?} should start with {expected:?}"
            );
        }
        let query_cases = [
            (
                json!({"op":"scan","prefix":"","limit":0}),
                "limit must be between 1 and 1000, got 0",
            ),
            (
                json!({"op":"scan","prefix":""}),
                "invalid query: missing field `limit`",
            ),
            (json!({"op":"get","key":""}), "key must not be empty"),
        ];
        for (query, expected) in query_cases {
            let error = kv.query_raw(query.to_string().as_bytes()).unwrap_err();
            let message = error.guest_message();
            assert!(
                message.starts_with(expected),
                "{message:?} should start with {expected:?}"
            );
        }
        let error = kv.apply_raw(b"{\"op\":\"put\",").unwrap_err();
        assert!(
            error
                .guest_message()
                .starts_with("invalid command: EOF while parsing")
        );
        assert!(kv.kv().is_empty());
    }
}
