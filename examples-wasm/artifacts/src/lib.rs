//! The example state machines (`examples-wasm/counter`, `kv`, `bank`), built for
//! wasm32-unknown-unknown by this crate's build script, as byte constants.
//!
//! The node embeds them for `serve --dev`; tests and benchmarks deploy them. The build
//! script runs a nested `cargo build --release --target wasm32-unknown-unknown` into its
//! own target directory under `OUT_DIR` whenever the SDK or an example changes; no
//! `.wasm` file is checked in.

include!(concat!(env!("OUT_DIR"), "/artifacts.rs"));

/// The module bytes of the example called `name` (`"counter"`, `"kv"` or `"bank"`).
pub fn by_name(name: &str) -> Option<&'static [u8]> {
    ALL.iter()
        .find(|(example, _)| *example == name)
        .map(|(_, bytes)| *bytes)
}
