;; A counter written by hand against guest ABI v1 (guest-sdk/ABI.md), without the SDK.
;; State: a u64 LE under the key "n". `apply` adds the u64 LE input (1 if the input is
;; not 8 bytes) and outputs the new value; `query` outputs the current value.
(module
  (import "wasmraft" "kv_get" (func $kv_get (param i32 i32) (result i64)))
  (import "wasmraft" "kv_set" (func $kv_set (param i32 i32 i32 i32)))
  (import "wasmraft" "result_read" (func $result_read (param i32)))
  (import "wasmraft" "output" (func $output (param i32 i32)))
  (memory (export "memory") 1)
  ;; The key "n" lives at 0; the counter is read to and written from 16.
  (data (i32.const 0) "n")
  (global $heap (mut i32) (i32.const 1024))

  (func (export "wasmraft_abi_version_1"))

  ;; A bump allocator: every call starts on a fresh instance, so nothing is freed.
  (func (export "wasmraft_alloc") (param $len i32) (result i32)
    (local $ptr i32)
    (local.set $ptr (global.get $heap))
    (global.set $heap (i32.add (global.get $heap) (local.get $len)))
    (local.get $ptr))

  (func $load (result i64)
    (if (i64.eq (call $kv_get (i32.const 0) (i32.const 1)) (i64.const -1))
      (then (return (i64.const 0))))
    (call $result_read (i32.const 16))
    (i64.load (i32.const 16)))

  (func (export "apply") (param $ptr i32) (param $len i32) (result i32)
    (local $by i64)
    (local.set $by (i64.const 1))
    (if (i32.eq (local.get $len) (i32.const 8))
      (then (local.set $by (i64.load (local.get $ptr)))))
    (i64.store (i32.const 16) (i64.add (call $load) (local.get $by)))
    (call $kv_set (i32.const 0) (i32.const 1) (i32.const 16) (i32.const 8))
    (call $output (i32.const 16) (i32.const 8))
    (i32.const 0))

  (func (export "query") (param i32 i32) (result i32)
    (i64.store (i32.const 16) (call $load))
    (call $output (i32.const 16) (i32.const 8))
    (i32.const 0)))
