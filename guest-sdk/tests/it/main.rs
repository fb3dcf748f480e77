//! The SDK's integration tests: a probe state machine run through the native harness,
//! checking that the harness keeps the host's semantics (ABI.md).

use serde::{Deserialize, Serialize};
use wasmraft_guest::testing::{CallError, Harness};
use wasmraft_guest::{Context, Kv, Level, Result, StateMachine, bail};

/// A state machine whose commands exercise one SDK feature each.
struct Probe;

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
enum Command {
    /// Writes every pair, then fails if `fail` is set, or panics if `panic` is.
    Write {
        pairs: Vec<(String, String)>,
        #[serde(default)]
        fail: bool,
        #[serde(default)]
        panic: Option<String>,
    },
    /// Writes then reads back, deletes, reads and scans within one call.
    ReadYourWrites,
    /// Raw key and value sizes, to hit the limits.
    Set { key_len: usize, value_len: usize },
    /// Writes `count` values of `value_len` bytes under distinct keys.
    Fill { count: usize, value_len: usize },
    /// Returns the context.
    Context,
    /// Returns `len` bytes of output.
    Output { len: usize },
    /// Logs one line per level.
    Log,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
enum Query {
    /// Scans `[start, end)` (or a prefix) with a page size and returns the keys.
    Scan {
        start: Vec<u8>,
        end: Option<Vec<u8>>,
        prefix: Option<Vec<u8>>,
        page_size: u32,
    },
    Context,
    Json {
        key: String,
    },
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
enum Response {
    Context {
        caller: String,
        timestamp_ms: i64,
        seed: Vec<u8>,
    },
    Keys(Vec<Vec<u8>>),
    Text(String),
    Number(u64),
    Nothing,
}

fn context_response(context: &Context) -> Response {
    Response::Context {
        caller: context.caller(),
        timestamp_ms: context.timestamp_ms(),
        seed: context.seed().to_vec(),
    }
}

impl StateMachine for Probe {
    type Command = Command;
    type Response = Response;
    type Query = Query;
    type QueryResponse = Response;

    fn apply(context: &Context, kv: &mut Kv, command: Command) -> Result<Response> {
        match command {
            Command::Write { pairs, fail, panic } => {
                for (key, value) in pairs {
                    kv.set(key, value);
                }
                if let Some(message) = panic {
                    panic!("{message}");
                }
                if fail {
                    bail!("failed on purpose");
                }
                Ok(Response::Nothing)
            }
            Command::ReadYourWrites => {
                kv.set("a", "1");
                kv.set("b", "2");
                kv.set("c", "3");
                assert_eq!(kv.get("a").as_deref(), Some(&b"1"[..]));
                kv.delete("b");
                assert_eq!(kv.get("b"), None);
                assert!(!kv.contains("b"));
                let keys: Vec<_> = kv.scan_all().map(|(key, _)| key).collect();
                Ok(Response::Keys(keys))
            }
            Command::Set { key_len, value_len } => {
                kv.set(vec![b'k'; key_len], vec![b'v'; value_len]);
                Ok(Response::Nothing)
            }
            Command::Fill { count, value_len } => {
                let value = vec![0_u8; value_len];
                for index in 0..count {
                    kv.set(format!("fill/{index:08}"), &value);
                }
                Ok(Response::Nothing)
            }
            Command::Context => Ok(context_response(context)),
            Command::Output { len } => Ok(Response::Text("x".repeat(len))),
            Command::Log => {
                wasmraft_guest::error!("e{}", 0);
                wasmraft_guest::warn!("w");
                wasmraft_guest::info!("i");
                wasmraft_guest::debug!("d");
                wasmraft_guest::trace!("t");
                wasmraft_guest::log(Level::Info, "plain");
                Ok(Response::Nothing)
            }
        }
    }

    fn query(context: &Context, kv: &Kv, query: Query) -> Result<Response> {
        match query {
            Query::Scan {
                start,
                end,
                prefix,
                page_size,
            } => {
                let scan = match prefix {
                    Some(prefix) => kv.scan_prefix(prefix),
                    None => kv.scan_range(start, end.as_deref()),
                };
                Ok(Response::Keys(
                    scan.page_size(page_size).map(|(key, _)| key).collect(),
                ))
            }
            Query::Context => Ok(context_response(context)),
            Query::Json { key } => Ok(Response::Number(kv.get_json(key)?.unwrap_or(0))),
        }
    }
}

wasmraft_guest::export!(Probe);

fn write(pairs: &[(&str, &str)]) -> Command {
    Command::Write {
        pairs: pairs
            .iter()
            .map(|(key, value)| (key.to_string(), value.to_string()))
            .collect(),
        fail: false,
        panic: None,
    }
}

#[test]
fn a_successful_call_commits_its_writes() {
    let mut harness = Harness::<Probe>::new();
    harness.apply(&write(&[("a", "1"), ("b", "2")])).unwrap();
    assert_eq!(harness.get("a"), Some(&b"1"[..]));
    assert_eq!(harness.kv().len(), 2);
}

#[test]
fn reads_see_the_calls_own_writes() {
    let mut harness = Harness::<Probe>::new();
    harness.set("z", "old");
    let keys = harness.apply(&Command::ReadYourWrites).unwrap();
    assert_eq!(
        keys,
        Response::Keys(vec![b"a".to_vec(), b"c".to_vec(), b"z".to_vec()])
    );
}

#[test]
fn a_guest_error_discards_every_write() {
    let mut harness = Harness::<Probe>::new();
    harness.apply(&write(&[("kept", "1")])).unwrap();
    let error = harness
        .apply(&Command::Write {
            pairs: vec![("kept".into(), "2".into()), ("new".into(), "3".into())],
            fail: true,
            panic: None,
        })
        .unwrap_err();
    assert_eq!(error, CallError::Guest("failed on purpose".into()));
    assert_eq!(harness.kv().len(), 1);
    assert_eq!(harness.get("kept"), Some(&b"1"[..]));
}

#[test]
fn a_panic_is_a_guest_error_with_its_message_and_location() {
    let mut harness = Harness::<Probe>::new();
    let error = harness
        .apply(&Command::Write {
            pairs: vec![("a".into(), "1".into())],
            fail: false,
            panic: Some("boom".into()),
        })
        .unwrap_err();
    let message = error.guest_message();
    assert!(
        message.starts_with("panicked at guest-sdk/tests/it/main.rs:"),
        "{message}"
    );
    assert!(message.ends_with(": boom"), "{message}");
    assert!(harness.kv().is_empty());

    // The host keeps 4 KiB of an abort message; so does the harness.
    let error = harness
        .apply(&Command::Write {
            pairs: vec![],
            fail: false,
            panic: Some("x".repeat(10_000)),
        })
        .unwrap_err();
    assert_eq!(error.guest_message().len(), 4096);
}

#[test]
fn limits_trap_as_on_the_host() {
    let mut harness = Harness::<Probe>::new();
    let cases = [
        (0, 1, "empty key"),
        (4097, 1, "key too large: 4097 bytes, the limit is 4096"),
        (
            1,
            (1 << 20) + 1,
            "value too large: 1048577 bytes, the limit is 1048576",
        ),
    ];
    for (key_len, value_len, expected) in cases {
        let error = harness
            .apply(&Command::Set { key_len, value_len })
            .unwrap_err();
        assert_eq!(error, CallError::Trap(expected.into()));
    }
    // At the limits, fine.
    harness
        .apply(&Command::Set {
            key_len: 4096,
            value_len: 1 << 20,
        })
        .unwrap();
    harness
        .apply(&Command::Set {
            key_len: 1,
            value_len: 0,
        })
        .unwrap();

    // 17 values of 1 MiB pass the 16 MiB write set.
    let error = harness
        .apply(&Command::Fill {
            count: 17,
            value_len: 1 << 20,
        })
        .unwrap_err();
    assert!(
        matches!(&error, CallError::Trap(message) if message.starts_with("write set too large"))
    );
    assert!(!harness.kv().keys().any(|key| key.starts_with(b"fill/")));
}

#[test]
fn rewriting_a_key_counts_once_in_the_write_set() {
    // 40 writes of 1 MiB to the same key are 1 MiB of write set.
    struct Rewrite;
    impl StateMachine for Rewrite {
        type Command = ();
        type Response = ();
        type Query = ();
        type QueryResponse = ();
        fn apply(_: &Context, kv: &mut Kv, (): ()) -> Result<()> {
            let value = vec![1_u8; 1 << 20];
            for _ in 0..40 {
                kv.set("same", &value);
            }
            Ok(())
        }
        fn query(_: &Context, _: &Kv, (): ()) -> Result<()> {
            Ok(())
        }
    }
    Harness::<Rewrite>::new().apply(&()).unwrap();
}

#[test]
fn scans_page_through_ranges_and_prefixes() {
    let mut harness = Harness::<Probe>::new();
    let mut expected = Vec::new();
    for index in 0..300_u32 {
        let key = format!("p/{index:04}").into_bytes();
        harness.set(key.clone(), "v");
        expected.push(key);
    }
    // Keys with 0xff bytes and one right after the prefix's range.
    harness.set(b"p/\xff".to_vec(), "v");
    harness.set(b"p/\xff\xff".to_vec(), "v");
    harness.set(b"p0".to_vec(), "v");
    harness.set(b"a".to_vec(), "v");
    let mut with_ff = expected.clone();
    with_ff.push(b"p/\xff".to_vec());
    with_ff.push(b"p/\xff\xff".to_vec());

    for page_size in [1, 7, 64, 1024, 5000] {
        let keys = harness
            .query(&Query::Scan {
                start: vec![],
                end: None,
                prefix: Some(b"p/".to_vec()),
                page_size,
            })
            .unwrap();
        assert_eq!(
            keys,
            Response::Keys(with_ff.clone()),
            "page size {page_size}"
        );
    }
    let keys = harness
        .query(&Query::Scan {
            start: b"p/0010".to_vec(),
            end: Some(b"p/0013".to_vec()),
            prefix: None,
            page_size: 2,
        })
        .unwrap();
    assert_eq!(keys, Response::Keys(expected[10..13].to_vec()));
    // An empty or inverted range is empty.
    for (start, end) in [(&b"p/0013"[..], &b"p/0013"[..]), (b"z", b"a")] {
        let keys = harness
            .query(&Query::Scan {
                start: start.to_vec(),
                end: Some(end.to_vec()),
                prefix: None,
                page_size: 3,
            })
            .unwrap();
        assert_eq!(keys, Response::Keys(vec![]));
    }
    // Everything from "p0" on, unbounded.
    let keys = harness
        .query(&Query::Scan {
            start: b"p0".to_vec(),
            end: None,
            prefix: None,
            page_size: 1,
        })
        .unwrap();
    assert_eq!(keys, Response::Keys(vec![b"p0".to_vec()]));
}

#[test]
fn context_comes_from_the_harness() {
    let mut harness = Harness::<Probe>::new();
    let first = harness.apply(&Command::Context).unwrap();
    let mut seed = vec![0_u8; 32];
    seed[0] = 1;
    assert_eq!(
        first,
        Response::Context {
            caller: String::new(),
            timestamp_ms: 0,
            seed: seed.clone()
        }
    );
    let second = harness
        .caller("alice")
        .timestamp_ms(1_700_000_000_000)
        .apply(&Command::Context)
        .unwrap();
    seed[0] = 2;
    assert_eq!(
        second,
        Response::Context {
            caller: "alice".into(),
            timestamp_ms: 1_700_000_000_000,
            seed
        }
    );
    harness.seed([9; 32]);
    let third = harness.apply(&Command::Context).unwrap();
    assert!(matches!(third, Response::Context { seed, .. } if seed == vec![9; 32]));

    // A query sees the last command's timestamp and a zero seed.
    harness.timestamp_ms(5);
    let query = harness.query(&Query::Context).unwrap();
    assert_eq!(
        query,
        Response::Context {
            caller: "alice".into(),
            timestamp_ms: 1_700_000_000_000,
            seed: vec![0; 32]
        }
    );
}

#[test]
fn output_past_the_cap_is_output_too_large() {
    let mut harness = Harness::<Probe>::new();
    harness.output_max_bytes(100);
    assert!(harness.apply(&Command::Output { len: 90 }).is_ok());
    let error = harness.apply(&Command::Output { len: 200 }).unwrap_err();
    assert_eq!(
        error,
        CallError::OutputTooLarge {
            len: 202,
            limit: 100
        }
    );
}

#[test]
fn logs_are_recorded_with_their_level() {
    let mut harness = Harness::<Probe>::new();
    harness.apply(&Command::Log).unwrap();
    let lines: Vec<_> = harness
        .take_logs()
        .into_iter()
        .map(|line| (line.level, line.message))
        .collect();
    assert_eq!(
        lines,
        vec![
            (Level::Error, "e0".to_string()),
            (Level::Warn, "w".into()),
            (Level::Info, "i".into()),
            (Level::Debug, "d".into()),
            (Level::Trace, "t".into()),
            (Level::Info, "plain".into()),
        ]
    );
    assert!(harness.logs().is_empty());
}

#[test]
fn a_stored_value_that_does_not_decode_names_its_key() {
    let mut harness = Harness::<Probe>::new();
    harness.set("n", "not a number");
    let error = harness.query(&Query::Json { key: "n".into() }).unwrap_err();
    assert_eq!(
        error.guest_message(),
        "stored value under key \"n\" does not decode: expected ident at line 1 column 2"
    );
    harness.set("n", "7");
    assert_eq!(
        harness.query(&Query::Json { key: "n".into() }),
        Ok(Response::Number(7))
    );
}

#[test]
fn panics_outside_a_call_still_fail_tests() {
    let result = std::panic::catch_unwind(|| {
        let _harness = Harness::<Probe>::new();
        panic!("outside");
    });
    assert!(result.is_err());
}
