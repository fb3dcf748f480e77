//! The `wasmraft` binary: see `wasmraft::cli`.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = wasmraft::cli::Cli::parse();
    wasmraft::telemetry::logs::init(cli.log_format);
    cli.run()
}
