;; Float code whose NaN results differ across CPUs unless the engine canonicalises NaNs.
;; `apply` computes them from operands loaded from memory (so the compiler cannot fold
;; them), stores the raw bit patterns under the key "floats" and outputs them:
;;   f32 0/0, f64 0/0, f32 sqrt(-1), f64 sqrt(-1), f32 NaN-with-payload + 1,
;;   f64 promoted from an f32 NaN, f32 demoted from an f64 NaN, f32x4 0/0 (16 bytes),
;;   relaxed f32x4 madd of NaNs (16 bytes), relaxed i32x4 truncation of NaNs (16 bytes).
(module
  (import "wasmraft" "kv_set" (func $kv_set (param i32 i32 i32 i32)))
  (import "wasmraft" "output" (func $output (param i32 i32)))
  (memory (export "memory") 1)
  ;; 0: f32 0.0, 8: f64 0.0, 16: f32 -1.0, 24: f64 -1.0, 32: f32 NaN with payload 1,
  ;; 40: f64 NaN with payload 1, 48: the key.
  (data (i32.const 16) "\00\00\80\bf")
  (data (i32.const 24) "\00\00\00\00\00\00\f0\bf")
  (data (i32.const 32) "\01\00\c0\7f")
  (data (i32.const 40) "\01\00\00\00\00\00\f8\7f")
  (data (i32.const 48) "floats")

  (func (export "wasmraft_abi_version_1"))
  (func (export "wasmraft_alloc") (param i32) (result i32) (i32.const 4096))

  (func (export "apply") (param i32 i32) (result i32)
    (local $nan4 v128)
    ;; Results from 256 on.
    (f32.store (i32.const 256) (f32.div (f32.load (i32.const 0)) (f32.load (i32.const 0))))
    (f64.store (i32.const 260) (f64.div (f64.load (i32.const 8)) (f64.load (i32.const 8))))
    (f32.store (i32.const 268) (f32.sqrt (f32.load (i32.const 16))))
    (f64.store (i32.const 272) (f64.sqrt (f64.load (i32.const 24))))
    (f32.store (i32.const 280) (f32.add (f32.load (i32.const 32)) (f32.const 1)))
    (f64.store (i32.const 284) (f64.promote_f32 (f32.load (i32.const 32))))
    (f32.store (i32.const 292) (f32.demote_f64 (f64.load (i32.const 40))))
    (local.set $nan4 (f32x4.div (v128.load (i32.const 0)) (v128.load (i32.const 0))))
    (v128.store (i32.const 296) (local.get $nan4))
    (v128.store (i32.const 312)
      (f32x4.relaxed_madd (local.get $nan4) (v128.load (i32.const 16)) (local.get $nan4)))
    (v128.store (i32.const 328) (i32x4.relaxed_trunc_f32x4_s (local.get $nan4)))
    (call $kv_set (i32.const 48) (i32.const 6) (i32.const 256) (i32.const 88))
    (call $output (i32.const 256) (i32.const 88))
    (i32.const 0)))
