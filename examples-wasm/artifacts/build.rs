//! Builds the example modules (`examples-wasm/{counter,kv,bank}`) for
//! wasm32-unknown-unknown and writes `artifacts.rs`, their bytes as constants.
//!
//! In the style of wasmtime's `crates/test-programs/artifacts/build.rs`: a nested
//! `cargo build` into a target directory of our own under `OUT_DIR` (sharing the outer
//! one would deadlock on its lock), with the outer build's flags and settings removed
//! from its environment, and the small release profile the modules ship with given as
//! `--config` flags, so the workspace's profiles stay untouched.

use std::env;
use std::ffi::OsStr;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

const TARGET: &str = "wasm32-unknown-unknown";

/// (constant prefix and name, package, file stem of the built module).
const EXAMPLES: &[(&str, &str, &str)] = &[
    (
        "counter",
        "wasmraft-example-counter",
        "wasmraft_example_counter",
    ),
    ("kv", "wasmraft-example-kv", "wasmraft_example_kv"),
    ("bank", "wasmraft-example-bank", "wasmraft_example_bank"),
];

/// The release profile of the modules: small (opt-level "s", LTO, one codegen unit,
/// stripped) and `panic = "abort"` (the SDK's panic handler reports the message; there
/// is no unwinding on wasm32).
const PROFILE: &[&str] = &[
    "profile.release.opt-level=\"s\"",
    "profile.release.lto=true",
    "profile.release.codegen-units=1",
    "profile.release.panic=\"abort\"",
    "profile.release.strip=true",
    "profile.release.debug=false",
    "profile.release.debug-assertions=false",
    "profile.release.overflow-checks=false",
    "profile.release.incremental=false",
    // A 32 KiB shadow stack instead of rustc's 1 MiB: the initial memory drops from
    // 17 pages to 1, and the pages a call dirties are what the host resets after
    // every call (measured on a fresh pooled instance, counter invoke: 1 MiB stack
    // 21 µs, 64 KiB 11.5 µs, 32 KiB 8.5 µs). Deep recursion overflows into a trap
    // (the stack sits below the data, `--stack-first`), never into the heap;
    // serde_json's nesting limit (128) stays well within it (the host's
    // tests/examples/run.rs checks nesting up to 5,000).
    "target.wasm32-unknown-unknown.rustflags=[\"-C\", \"link-arg=-zstack-size=32768\"]",
];

fn main() {
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let manifest_dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let workspace = manifest_dir
        .ancestors()
        .nth(2)
        .expect("the artifacts crate lives in examples-wasm/artifacts")
        .to_path_buf();

    for path in [
        "guest-sdk/src",
        "guest-sdk/Cargo.toml",
        "Cargo.lock",
        "Cargo.toml",
        "rust-toolchain.toml",
    ] {
        println!("cargo:rerun-if-changed={}", workspace.join(path).display());
    }
    for (name, _, _) in EXAMPLES {
        let example = workspace.join("examples-wasm").join(name);
        println!("cargo:rerun-if-changed={}", example.join("src").display());
        println!(
            "cargo:rerun-if-changed={}",
            example.join("Cargo.toml").display()
        );
    }

    ensure_wasm_target();

    let target_dir = out_dir.join("wasm-target");
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    command
        .current_dir(&workspace)
        .arg("build")
        .arg("--release")
        .arg(format!("--target={TARGET}"))
        .arg("--target-dir")
        .arg(&target_dir);
    for (_, package, _) in EXAMPLES {
        command.arg("--package").arg(package);
    }
    for setting in PROFILE {
        command.arg("--config").arg(setting);
    }
    clean_environment(&mut command);
    eprintln!("running: {command:?}");
    let status = command
        .status()
        .unwrap_or_else(|error| panic!("cannot run cargo for the wasm examples: {error}"));
    assert!(
        status.success(),
        "building the wasm examples failed ({status}); see the output above"
    );

    let mut generated = String::new();
    let mut all = String::new();
    for (name, package, stem) in EXAMPLES {
        let built = target_dir
            .join(TARGET)
            .join("release")
            .join(format!("{stem}.wasm"));
        let module = out_dir.join(format!("{name}.wasm"));
        fs::copy(&built, &module)
            .unwrap_or_else(|error| panic!("cannot copy {}: {error}", built.display()));
        let constant = format!("{}_WASM", name.to_uppercase());
        writeln!(
            generated,
            "/// The `{name}` example (package `{package}`), built for {TARGET}.\n\
             pub const {constant}: &[u8] = include_bytes!({module:?});"
        )
        .expect("writing to a String cannot fail");
        writeln!(all, "    ({name:?}, {constant}),").expect("writing to a String cannot fail");
    }
    writeln!(
        generated,
        "/// Every example as (name, module bytes), in a fixed order.\n\
         pub const ALL: &[(&str, &[u8])] = &[\n{all}];"
    )
    .expect("writing to a String cannot fail");
    fs::write(out_dir.join("artifacts.rs"), generated).expect("cannot write artifacts.rs");
}

/// Removes what the outer build passes down that must not reach the nested one: its
/// flags, target, target dir and profile settings, the variables cargo sets for this
/// build script, and clippy's wrapper (`cargo clippy` would otherwise lint the modules).
fn clean_environment(command: &mut Command) {
    const EXACT: &[&str] = &[
        "RUSTFLAGS",
        "RUSTDOCFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_ENCODED_RUSTDOCFLAGS",
        "RUSTC_WORKSPACE_WRAPPER",
        "CLIPPY_ARGS",
        "CLIPPY_CONF_DIR",
        "OUT_DIR",
        "TARGET",
        "HOST",
        "PROFILE",
        "OPT_LEVEL",
        "DEBUG",
        "NUM_JOBS",
        "RUSTC_LINKER",
        "CARGO_PRIMARY_PACKAGE",
        "CARGO_CRATE_NAME",
        "__CARGO_FIX_PLZ",
    ];
    const PREFIXES: &[&str] = &[
        "CARGO_BUILD_",
        "CARGO_TARGET_",
        "CARGO_PROFILE_",
        "CARGO_CFG_",
        "CARGO_FEATURE_",
        "CARGO_PKG_",
        "CARGO_MANIFEST_",
        "DEP_",
    ];
    for (key, _) in env::vars_os() {
        let Some(key) = key.to_str() else { continue };
        if EXACT.contains(&key) || PREFIXES.iter().any(|prefix| key.starts_with(prefix)) {
            command.env_remove(key);
        }
    }
}

/// Makes sure the toolchain running this build has the wasm32 standard library,
/// adding it through rustup if not.
///
/// Only `rustup target add` for the running toolchain: it adds the target's files
/// beside the toolchain and replaces nothing. (`rustup toolchain install` would
/// reinstall the toolchain's binaries while this very build runs them, and the
/// rest of the build then fails with `could not execute process rustc`.)
fn ensure_wasm_target() {
    println!("cargo:rerun-if-env-changed=RUSTUP_TOOLCHAIN");
    if has_wasm_target() {
        return;
    }
    println!("cargo:warning=the toolchain lacks {TARGET}; adding it with rustup");
    let mut rustup = Command::new("rustup");
    rustup.args(["target", "add", TARGET]);
    // The rustup proxy that started cargo names the toolchain it chose (from
    // rust-toolchain.toml); add the target to that one, not to rustup's default.
    if let Some(toolchain) = env::var_os("RUSTUP_TOOLCHAIN") {
        rustup.arg("--toolchain").arg(toolchain);
    }
    let added = rustup.status();
    if !has_wasm_target() {
        panic!(
            "the Rust toolchain has no {TARGET} target and rustup could not add it \
             ({}). Install it with `rustup target add {TARGET}` (or, without rustup, \
             your distribution's rust-std for {TARGET}) and build again.",
            match added {
                Ok(status) => format!("`rustup target add` exited with {status}"),
                Err(error) => format!("cannot run rustup: {error}"),
            }
        );
    }
}

fn has_wasm_target() -> bool {
    let rustc = env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let Ok(output) = Command::new(&rustc).args(["--print", "sysroot"]).output() else {
        return false;
    };
    let sysroot = String::from_utf8_lossy(&output.stdout).trim().to_string();
    output.status.success()
        && Path::new(OsStr::new(&sysroot))
            .join("lib/rustlib")
            .join(TARGET)
            .join("lib")
            .is_dir()
}
