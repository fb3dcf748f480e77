//! The `wasmraft` command: the node and the tools around it.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use openraft::storage::{RaftLogStorage, RaftStateMachine};
use wasmraft::storage::{
    CallLimits, DataDirectory, LogStore, StateMachineConfig, StateMachineStore,
};
use wasmraft::wasm::{Runtime, RuntimeConfig};

/// Raft-replicated WebAssembly state machines.
#[derive(Debug, Parser)]
#[command(name = "wasmraft", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Commands,
}

#[derive(Debug, Subcommand)]
enum Commands {
    /// Print what a node's data directory holds: the log, the applied state
    /// and its digest, and the deployed modules. Read-only; the node must be stopped.
    Inspect {
        /// The node's data directory.
        #[arg(long, default_value = "./wasmraft-data")]
        data_dir: PathBuf,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Commands::Inspect { data_dir } => inspect(DataDirectory::new(data_dir)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
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
    let limits = CallLimits {
        fuel_per_call_max: runtime_config.fuel_per_call_max,
        memory_bytes_max: runtime_config.memory_bytes_max,
    };
    let runtime = Runtime::new(runtime_config)?;
    let tokio = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    tokio.block_on(async {
        let mut log = LogStore::open(data.log_file())?;
        let log_state = log.get_log_state().await?;
        let vote = log.read_vote().await?;
        let mut state = StateMachineStore::open(
            data.state_directory(),
            runtime,
            StateMachineConfig { limits },
        )?;
        let (applied, membership) = state.applied_state().await?;
        let reader = state.reader();
        let (_, digest) = reader.digest()?;
        println!("data directory   {}", data.root().display());
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

fn display(log_id: Option<wasmraft::raft::LogId>) -> String {
    log_id.map_or("none".to_owned(), |log_id| log_id.to_string())
}
