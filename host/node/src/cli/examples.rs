//! `wasmraft examples export DIR`: write the example modules bundled in the
//! binary (`counter.wasm`, `kv.wasm`, `bank.wasm`) to a directory, to deploy
//! them on a cluster that starts empty.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use sha2::{Digest, Sha256};

use super::connection::{self, UsageError};

#[derive(Debug, clap::Args)]
pub struct ExamplesArgs {
    #[command(subcommand)]
    command: ExamplesCommand,
}

#[derive(Debug, clap::Subcommand)]
enum ExamplesCommand {
    /// Write counter.wasm, kv.wasm and bank.wasm to DIR (created if needed;
    /// existing files of those names are replaced).
    Export {
        /// The directory to write to.
        dir: PathBuf,
    },
}

pub fn run(args: ExamplesArgs) -> anyhow::Result<ExitCode> {
    let ExamplesCommand::Export { dir } = args.command;
    Ok(connection::report(export(&dir)))
}

fn export(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).map_err(|error| {
        UsageError(format!(
            "cannot create the directory {}: {error}",
            dir.display()
        ))
    })?;
    for (name, wasm) in wasmraft_examples::ALL {
        let path = dir.join(format!("{name}.wasm"));
        std::fs::write(&path, wasm)
            .map_err(|error| UsageError(format!("cannot write {}: {error}", path.display())))?;
        println!(
            "{}  {} bytes  sha256 {}",
            path.display(),
            wasm.len(),
            hex::encode(Sha256::digest(wasm))
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exports_every_example() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let target = dir.path().join("nested/examples");
        export(&target).expect("export");
        for name in ["counter", "kv", "bank"] {
            let written = std::fs::read(target.join(format!("{name}.wasm"))).expect("written");
            assert_eq!(Some(written.as_slice()), wasmraft_examples::by_name(name));
        }
    }
}
