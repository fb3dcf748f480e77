//! The `wasmraft` binary: see `wasmraft::cli`.

use std::process::ExitCode;

use clap::Parser;

/// The exit code of a Unix tool stopped by SIGPIPE (128 + 13).
const EXIT_BROKEN_PIPE: i32 = 141;

fn main() -> ExitCode {
    stop_quietly_on_a_closed_stdout();
    let cli = wasmraft::cli::Cli::parse();
    cli.run()
}

/// `wasmraft module list | head -1`: once the reader of stdout has gone,
/// std's `println!` panics on the broken pipe. A command line tool stops
/// there without a word, as one killed by SIGPIPE does.
fn stop_quietly_on_a_closed_stdout() {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let message = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or_default();
        if message.starts_with("failed printing to stdout") && message.contains("Broken pipe") {
            std::process::exit(EXIT_BROKEN_PIPE);
        }
        report(info);
    }));
}
