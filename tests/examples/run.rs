//! The built examples behave on the real runtime as their native tests say they do.

use wasmraft_examples::{BANK_WASM, COUNTER_WASM, KV_WASM};

use super::host::{Failure, Host};

#[test]
fn counter_adds_queries_and_rejects_overflow() {
    let mut counter = Host::new(COUNTER_WASM);
    assert_eq!(
        counter.query(r#"{"op":"get"}"#).as_deref(),
        Ok(r#"{"value":0}"#)
    );
    assert_eq!(
        counter.apply(r#"{"op":"add","by":5}"#).as_deref(),
        Ok(r#"{"value":5}"#)
    );
    assert_eq!(
        counter.apply(r#"{"op":"add","by":-8}"#).as_deref(),
        Ok(r#"{"value":-3}"#)
    );
    assert_eq!(
        counter.query(r#"{"op":"get"}"#).as_deref(),
        Ok(r#"{"value":-3}"#)
    );
    assert_eq!(
        counter.apply(r#"{"op":"add","by":-9223372036854775807}"#),
        Err(Failure::Guest(
            "counter overflow: -3 + -9223372036854775807 does not fit in i64".into()
        ))
    );
    assert_eq!(
        counter.state.0.get(&b"value"[..]).map(Vec::as_slice),
        Some(&b"-3"[..])
    );
}

#[test]
fn counter_reports_bad_input_like_the_native_harness() {
    let mut counter = Host::new(COUNTER_WASM);
    for input in [
        "",
        "not json",
        r#"{"op":"mul","by":2}"#,
        r#"{"op":"add","by":"2"}"#,
        r#"{"op":"add","by":1,"extra":0}"#,
    ] {
        let wasm = counter.apply(input).unwrap_err();
        let mut harness =
            wasmraft_guest::testing::Harness::<wasmraft_example_counter::Counter>::new();
        let native = harness.apply_raw(input.as_bytes()).unwrap_err();
        assert_eq!(
            wasm,
            Failure::Guest(native.guest_message().to_string()),
            "input {input:?}"
        );
    }
}

#[test]
fn counter_init_is_exported_and_optional() {
    let mut counter = Host::new(COUNTER_WASM);
    counter.call("init", b"").unwrap();
    assert!(counter.state.0.is_empty());
    counter.call("init", br#"{"value":40}"#).unwrap();
    assert_eq!(
        counter.apply(r#"{"op":"add","by":2}"#).as_deref(),
        Ok(r#"{"value":42}"#)
    );
}

#[test]
fn kv_puts_swaps_deletes_and_scans() {
    let mut kv = Host::new(KV_WASM);
    assert_eq!(
        kv.apply(r#"{"op":"put","key":"a","value":"1"}"#).as_deref(),
        Ok(r#"{"previous":null}"#)
    );
    assert_eq!(
        kv.apply(r#"{"op":"cas","key":"a","expected":"1","value":"2"}"#)
            .as_deref(),
        Ok(r#"{"ok":true,"current":"2"}"#)
    );
    assert_eq!(
        kv.apply(r#"{"op":"cas","key":"a","expected":null,"value":"3"}"#)
            .as_deref(),
        Ok(r#"{"ok":false,"current":"2"}"#)
    );
    assert_eq!(
        kv.query(r#"{"op":"get","key":"a"}"#).as_deref(),
        Ok(r#"{"value":"2"}"#)
    );
    for index in 0..1500 {
        kv.state
            .0
            .insert(format!("s/{index:04}").into_bytes(), b"v".to_vec());
    }
    let page = kv
        .query(r#"{"op":"scan","prefix":"s/","limit":1000}"#)
        .unwrap();
    assert_eq!(page.matches("\"s/").count(), 1000);
    assert!(page.starts_with(r#"{"items":[["s/0000","v"],["s/0001","v"]"#));
    assert!(page.ends_with(r#"["s/0999","v"]]}"#));
    assert_eq!(
        kv.query(r#"{"op":"scan","prefix":"a","limit":5}"#)
            .as_deref(),
        Ok(r#"{"items":[["a","2"]]}"#)
    );
    assert_eq!(
        kv.apply(r#"{"op":"delete","key":"a"}"#).as_deref(),
        Ok(r#"{"previous":"2"}"#)
    );
    assert_eq!(
        kv.query(r#"{"op":"get","key":"a"}"#).as_deref(),
        Ok(r#"{"value":null}"#)
    );
    assert_eq!(
        kv.apply(r#"{"op":"put","key":"","value":"v"}"#),
        Err(Failure::Guest("key must not be empty".into()))
    );
}

#[test]
fn bank_transfers_and_fails_without_changing_state() {
    let mut bank = Host::new(BANK_WASM);
    bank.caller = "alice".into();
    assert_eq!(
        bank.apply(r#"{"op":"open","account":"alice","balance":100}"#)
            .as_deref(),
        Ok(r#"{"balance":100}"#)
    );
    bank.apply(r#"{"op":"open","account":"bob","balance":0}"#)
        .unwrap();
    assert_eq!(
        bank.apply(r#"{"op":"transfer","from":"alice","to":"bob","amount":60}"#)
            .as_deref(),
        Ok(r#"{"from_balance":40,"to_balance":60}"#)
    );
    let before = bank.state.clone();
    assert_eq!(
        bank.apply(r#"{"op":"transfer","from":"alice","to":"bob","amount":41}"#),
        Err(Failure::Guest(
            r#"insufficient funds: "alice" has 40, the transfer needs 41"#.into()
        ))
    );
    assert_eq!(
        bank.apply(r#"{"op":"open","account":"bob","balance":1}"#),
        Err(Failure::Guest(r#"account "bob" already exists"#.into()))
    );
    assert_eq!(bank.state, before);
    assert_eq!(
        bank.query(r#"{"op":"total"}"#).as_deref(),
        Ok(r#"{"total":100}"#)
    );
    assert_eq!(
        bank.query(r#"{"op":"balance","account":"bob"}"#).as_deref(),
        Ok(r#"{"balance":60}"#)
    );
}

#[test]
fn deeply_nested_input_is_a_guest_error_not_a_stack_overflow() {
    let mut counter = Host::new(COUNTER_WASM);
    for depth in [100, 127, 128, 129, 5000] {
        let input = format!(
            r#"{{"op":"add","by":{}1{}}}"#,
            "[".repeat(depth),
            "]".repeat(depth)
        );
        let error = counter.apply(&input).unwrap_err();
        let Failure::Guest(message) = error else {
            panic!("depth {depth}: {error:?}");
        };
        assert!(
            message.starts_with("invalid command: "),
            "depth {depth}: {message}"
        );
        let nested = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
        let error = counter.apply(&nested).unwrap_err();
        assert!(
            matches!(error, Failure::Guest(_)),
            "depth {depth}: {error:?}"
        );
        let objects = format!(r#"{}1{}"#, r#"{"a":"#.repeat(depth), "}".repeat(depth));
        let error = counter.apply(&objects).unwrap_err();
        assert!(
            matches!(error, Failure::Guest(_)),
            "depth {depth}: {error:?}"
        );
    }
}
