//! A minimal harness: one module on the real [`Runtime`] over an in-memory
//! KV, committing each successful call's writes.

use sha2::{Digest, Sha256};
use wasmraft::wasm::{Call, EntryPoint, LoadedModule, MemoryKv, Outcome, Runtime, RuntimeConfig};

/// How a call ended, when it did not succeed.
#[derive(Debug, PartialEq, Eq)]
pub enum Failure {
    /// Result code 1 or `abort`: the message.
    Guest(String),
    /// Any other outcome, described.
    Trap(String),
}

pub struct Host {
    runtime: Runtime,
    module: LoadedModule,
    /// The identity the module sees as its caller.
    pub caller: String,
    pub state: MemoryKv,
}

impl Host {
    pub fn new(wasm: &[u8]) -> Self {
        let runtime = Runtime::new(RuntimeConfig::default()).expect("runtime");
        runtime
            .validate(wasm)
            .expect("the module passes deploy validation");
        let hash: [u8; 32] = Sha256::digest(wasm).into();
        let module = runtime.load(&hash, wasm).expect("the module loads");
        Host {
            runtime,
            module,
            caller: "tester".to_owned(),
            state: MemoryKv::new(),
        }
    }

    pub fn call(&mut self, entry: &str, input: &[u8]) -> Result<Vec<u8>, Failure> {
        let entry = match entry {
            "apply" => EntryPoint::Apply,
            "query" => EntryPoint::Query,
            "init" => EntryPoint::Init,
            "migrate" => EntryPoint::Migrate,
            other => panic!("no entry point {other}"),
        };
        let call = Call {
            entry,
            input,
            caller: &self.caller,
            timestamp_ms: 1_700_000_000_000,
            seed: [3; 32],
            fuel: self.runtime.config().fuel_per_call_max,
            memory_bytes: self.runtime.config().memory_bytes_max,
            output_bytes: usize::MAX,
        };
        let report = self.runtime.call(&self.module, &call, &self.state);
        match report.outcome {
            Outcome::Ok(output) => {
                self.state.commit(report.writes);
                Ok(output)
            }
            Outcome::GuestError(message) => Err(Failure::Guest(message)),
            other => Err(Failure::Trap(other.to_string())),
        }
    }

    pub fn apply(&mut self, input: &str) -> Result<String, Failure> {
        self.call("apply", input.as_bytes())
            .map(|output| String::from_utf8(output).expect("UTF-8 output"))
    }

    pub fn query(&mut self, input: &str) -> Result<String, Failure> {
        self.call("query", input.as_bytes())
            .map(|output| String::from_utf8(output).expect("UTF-8 output"))
    }
}
