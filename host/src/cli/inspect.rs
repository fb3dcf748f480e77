//! `wasmraft inspect`: what a stopped node's data directory holds.

use std::path::PathBuf;
use std::process::ExitCode;

use openraft::storage::{RaftLogStorage, RaftStateMachine};

use crate::storage::{DataDirectory, LogStore, StateMachineStore};
use crate::wasm::{Runtime, RuntimeConfig};

#[derive(Debug, clap::Args)]
pub struct InspectArgs {
    /// The node's data directory.
    #[arg(long, default_value = "./wasmraft-data")]
    data_dir: PathBuf,
}

pub fn run(args: InspectArgs) -> anyhow::Result<ExitCode> {
    inspect(DataDirectory::new(args.data_dir))?;
    Ok(ExitCode::SUCCESS)
}

fn inspect(data: DataDirectory) -> anyhow::Result<()> {
    anyhow::ensure!(
        data.is_initialised(),
        "{} holds no wasmraft node (no log.redb)",
        data.root().display()
    );
    let runtime_config = RuntimeConfig {
        cache_dir: Some(data.module_cache_directory()),
        ..RuntimeConfig::default()
    };
    let runtime = Runtime::new(runtime_config)?;
    let tokio = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    tokio.block_on(async {
        let mut log = LogStore::open(data.log_file())?;
        let log_state = log.get_log_state().await?;
        let vote = log.read_vote().await?;
        let mut state = StateMachineStore::open(data.state_directory(), runtime)?;
        let (applied, membership) = state.applied_state().await?;
        let reader = state.reader();
        let (_, digest) = reader.digest()?;
        println!("data directory   {}", data.root().display());
        println!("log format       {}", log.format()?);
        println!("state format     {}", state.format()?);
        println!(
            "vote             {}",
            vote.map_or("none".to_owned(), |vote| vote.to_string())
        );
        println!("last purged      {}", display(log_state.last_purged_log_id));
        println!("last log         {}", display(log_state.last_log_id));
        println!("last applied     {}", display(applied));
        println!("membership       {}", membership.membership());
        println!("state digest     {digest}");
        for module in reader.modules()? {
            println!(
                "module           {} v{} sha256:{} ({} bytes)",
                module.name,
                module.version,
                hex::encode(module.hash),
                module.size_bytes
            );
        }
        anyhow::Ok(())
    })
}

fn display(log_id: Option<crate::raft::LogId>) -> String {
    log_id.map_or("none".to_owned(), |log_id| log_id.to_string())
}
