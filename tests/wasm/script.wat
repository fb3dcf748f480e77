;; Runs a script of KV operations from its input, to test the host's KV semantics.
;; Each operation is an opcode byte, then `key_len: u8`, key, then:
;;   'S' (set):    value_len: u8, value
;;   'D' (delete): nothing
;;   'G' (get):    nothing; appends to the output the i32 LE length (-1 if absent), then the value
;;   'N' (scan):   end_len: u8 (255 = no end), end, limit: u8; the key is the start;
;;                 appends the i32 LE page length, then the page
;;   'L' (log):    the key is logged at level 2
;; Both `apply` and `query` run the script; the output is what G and N appended.
(module
  (import "wasmraft" "kv_get" (func $kv_get (param i32 i32) (result i64)))
  (import "wasmraft" "kv_set" (func $kv_set (param i32 i32 i32 i32)))
  (import "wasmraft" "kv_delete" (func $kv_delete (param i32 i32)))
  (import "wasmraft" "kv_scan" (func $kv_scan (param i32 i32 i32 i32 i32) (result i64)))
  (import "wasmraft" "result_read" (func $result_read (param i32)))
  (import "wasmraft" "output" (func $output (param i32 i32)))
  (import "wasmraft" "log" (func $log (param i32 i32 i32)))
  ;; 0..1024 unused, 1024..64 KiB the output, 64 KiB.. the heap.
  (memory (export "memory") 4)
  (global $out (mut i32) (i32.const 1024))
  (global $heap (mut i32) (i32.const 65536))

  (func (export "wasmraft_abi_version_1"))

  (func (export "wasmraft_alloc") (param $len i32) (result i32)
    (local $ptr i32)
    (local.set $ptr (global.get $heap))
    (global.set $heap (i32.add (global.get $heap) (local.get $len)))
    (local.get $ptr))

  (func $emit (param $n i64)
    (i32.store (global.get $out) (i32.wrap_i64 (local.get $n)))
    (global.set $out (i32.add (global.get $out) (i32.const 4)))
    (if (i64.ge_s (local.get $n) (i64.const 0))
      (then
        (call $result_read (global.get $out))
        (global.set $out (i32.add (global.get $out) (i32.wrap_i64 (local.get $n)))))))

  (func $run (param $p i32) (param $len i32) (result i32)
    (local $end i32) (local $op i32) (local $key i32) (local $key_len i32)
    (local $value_len i32) (local $bound i32) (local $bound_len i32)
    (local.set $end (i32.add (local.get $p) (local.get $len)))
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $p) (local.get $end)))
        (local.set $op (i32.load8_u (local.get $p)))
        (local.set $key_len (i32.load8_u offset=1 (local.get $p)))
        (local.set $key (i32.add (local.get $p) (i32.const 2)))
        (local.set $p (i32.add (local.get $key) (local.get $key_len)))
        (if (i32.eq (local.get $op) (i32.const 83)) ;; 'S'
          (then
            (local.set $value_len (i32.load8_u (local.get $p)))
            (call $kv_set (local.get $key) (local.get $key_len)
              (i32.add (local.get $p) (i32.const 1)) (local.get $value_len))
            (local.set $p (i32.add (local.get $p) (i32.add (i32.const 1) (local.get $value_len))))))
        (if (i32.eq (local.get $op) (i32.const 68)) ;; 'D'
          (then (call $kv_delete (local.get $key) (local.get $key_len))))
        (if (i32.eq (local.get $op) (i32.const 71)) ;; 'G'
          (then (call $emit (call $kv_get (local.get $key) (local.get $key_len)))))
        (if (i32.eq (local.get $op) (i32.const 76)) ;; 'L'
          (then (call $log (i32.const 2) (local.get $key) (local.get $key_len))))
        (if (i32.eq (local.get $op) (i32.const 78)) ;; 'N'
          (then
            (local.set $bound_len (i32.load8_u (local.get $p)))
            (local.set $bound (i32.add (local.get $p) (i32.const 1)))
            (if (i32.eq (local.get $bound_len) (i32.const 255))
              (then
                (local.set $p (local.get $bound))
                (local.set $bound_len (i32.const -1)))
              (else (local.set $p (i32.add (local.get $bound) (local.get $bound_len)))))
            (call $emit (call $kv_scan (local.get $key) (local.get $key_len)
              (local.get $bound) (local.get $bound_len) (i32.load8_u (local.get $p))))
            (local.set $p (i32.add (local.get $p) (i32.const 1)))))
        (br $next)))
    (call $output (i32.const 1024) (i32.sub (global.get $out) (i32.const 1024)))
    (i32.const 0))

  (func (export "apply") (param i32 i32) (result i32)
    (call $run (local.get 0) (local.get 1)))

  (func (export "query") (param i32 i32) (result i32)
    (call $run (local.get 0) (local.get 1))))
