//! `wasmraft inspect`: what a stopped node's data directory holds.

use std::path::PathBuf;
use std::process::ExitCode;

use crate::storage::{self, DataDirectory};
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
    let runtime_config = RuntimeConfig {
        cache_dir: Some(data.module_cache_directory()),
        ..RuntimeConfig::default()
    };
    let runtime = Runtime::new(runtime_config)?;
    let tokio = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let found = tokio.block_on(storage::inspect(&data, runtime))?;
    let none = |text: Option<String>| text.unwrap_or_else(|| "none".to_owned());
    println!("data directory   {}", data.root().display());
    println!("log format       {}", found.log_format);
    println!("state format     {}", found.state_format);
    println!("vote             {}", none(found.vote));
    println!("last purged      {}", none(found.last_purged));
    println!("last log         {}", none(found.last_log));
    println!("last applied     {}", none(found.last_applied));
    println!("membership       {}", found.membership);
    println!("cluster id       {}", none(found.cluster_id));
    println!("state digest     {}", found.digest);
    for module in found.modules {
        println!(
            "module           {} v{} sha256:{} ({} bytes)",
            module.name,
            module.version,
            hex::encode(module.hash),
            module.size_bytes
        );
    }
    Ok(())
}
