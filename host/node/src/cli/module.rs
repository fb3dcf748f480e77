//! `wasmraft module deploy|list|get|rm`: manage the cluster's modules.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use super::connection::{ConnectionArgs, UsageError};
use crate::client::{DeployOptions, DeployProgress, ModuleInfo};

#[derive(Debug, clap::Args)]
pub struct ModuleArgs {
    #[command(subcommand)]
    command: ModuleCommand,
}

#[derive(Debug, clap::Subcommand)]
enum ModuleCommand {
    /// Deploy a module, or upgrade it if one of that name exists; prints the
    /// module as deployed (name, version, sha256).
    Deploy(DeployArgs),
    /// List the deployed modules.
    List(ListArgs),
    /// Show one module.
    Get(GetArgs),
    /// Remove a module and all of its state. Cannot be undone.
    #[command(alias = "remove")]
    Rm(NameArgs),
}

#[derive(Debug, clap::Args)]
struct DeployArgs {
    /// The module's name: 1 to 64 characters from a-z, 0-9, `-` and `_`,
    /// starting with a letter.
    name: String,
    /// The module, a `.wasm` file built against the wasmraft guest ABI.
    file: PathBuf,
    /// Argument for the module's `init` (first deployment) or `migrate`
    /// (upgrade) export.
    #[arg(long, value_name = "STR")]
    init_arg: Option<String>,
    /// Fuel one call may use [default: the cluster's]; lowered to the
    /// cluster maximum.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    fuel: Option<u64>,
    /// Largest linear memory of one instance, in bytes [default: the
    /// cluster's]; lowered to the cluster maximum.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    memory_bytes: Option<u64>,
}

#[derive(Debug, clap::Args)]
struct NameArgs {
    /// The module's name.
    name: String,
}

#[derive(Debug, clap::Args)]
struct ListArgs {
    /// Print the modules as a JSON array.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
struct GetArgs {
    /// The module's name.
    name: String,
    /// Print the module as a JSON object.
    #[arg(long)]
    json: bool,
}

pub fn run(args: ModuleArgs, connection: &ConnectionArgs) -> anyhow::Result<ExitCode> {
    connection.run(async move {
        match args.command {
            ModuleCommand::Deploy(args) => deploy(args, connection).await,
            ModuleCommand::List(args) => {
                let modules = connection.client().await?.list_modules().await?;
                if args.json {
                    println!("{}", serde_json::to_string_pretty(&modules)?);
                } else {
                    print_module_table(&modules);
                }
                Ok(())
            }
            ModuleCommand::Get(args) => {
                let module = connection.client().await?.get_module(&args.name).await?;
                if args.json {
                    println!("{}", serde_json::to_string_pretty(&module)?);
                } else {
                    print_module(&module);
                }
                Ok(())
            }
            ModuleCommand::Rm(args) => {
                connection.client().await?.remove_module(&args.name).await?;
                println!("removed {}", args.name);
                Ok(())
            }
        }
    })
}

async fn deploy(args: DeployArgs, connection: &ConnectionArgs) -> anyhow::Result<()> {
    let wasm = std::fs::read(&args.file).map_err(|error| {
        UsageError(format!(
            "cannot read the module {}: {error}",
            args.file.display()
        ))
    })?;
    let client = connection.client().await?;
    // The phases (and a bar for the upload) only for a person.
    let bar = std::io::stderr()
        .is_terminal()
        .then(|| progress_bar(wasm.len() as u64));
    let progress = bar.clone().map(|bar| {
        Arc::new(move |progress: DeployProgress| {
            bar.set_position(progress.sent_bytes);
            bar.set_message(progress.phase.to_string());
        }) as crate::client::ProgressCallback
    });
    let options = DeployOptions {
        init_argument: args.init_arg.map(String::into_bytes),
        fuel_per_call_max: args.fuel,
        memory_bytes_max: args.memory_bytes,
        progress,
    };
    let result = client.deploy(&args.name, &wasm, options).await;
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    print_module(&result?);
    Ok(())
}

fn progress_bar(total_bytes: u64) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(total_bytes);
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{msg} [{wide_bar}] {bytes}/{total_bytes} {bytes_per_sec}",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message("uploading");
    bar
}

fn print_module(module: &ModuleInfo) {
    let exports: Vec<&str> = [
        (module.has_query, "query"),
        (module.has_init, "init"),
        (module.has_migrate, "migrate"),
    ]
    .into_iter()
    .filter_map(|(present, name)| present.then_some(name))
    .collect();
    println!("name              {}", module.name);
    println!("version           {}", module.version);
    println!("sha256            {}", module.sha256_hex);
    println!("size              {} bytes", module.size_bytes);
    println!(
        "deployed          at index {}, {}",
        module.deployed_at_index,
        format_unix_ms(module.deployed_at_unix_ms)
    );
    println!(
        "optional exports  {}",
        if exports.is_empty() {
            "none".to_owned()
        } else {
            exports.join(", ")
        }
    );
    println!("fuel per call     {}", module.fuel_per_call_max);
    println!("memory max        {} bytes", module.memory_bytes_max);
    let storage = &module.storage;
    let of =
        |max: Option<u64>| max.map_or_else(|| " (no quota)".to_owned(), |max| format!(" of {max}"));
    println!(
        "storage           {} bytes{}, {} keys{}",
        storage.bytes,
        of(storage.bytes_max),
        storage.keys,
        of(storage.keys_max)
    );
}

fn print_module_table(modules: &[ModuleInfo]) {
    if modules.is_empty() {
        eprintln!("no modules deployed");
        return;
    }
    let width = modules
        .iter()
        .map(|module| module.name.len())
        .max()
        .unwrap_or(0)
        .max("NAME".len());
    println!(
        "{:width$}  VERSION  {:>10}  {:>8}  SHA256",
        "NAME", "SIZE_BYTES", "INDEX"
    );
    for module in modules {
        println!(
            "{:width$}  {:>7}  {:>10}  {:>8}  {}",
            module.name,
            module.version,
            module.size_bytes,
            module.deployed_at_index,
            module.sha256_hex
        );
    }
}

/// Milliseconds since the Unix epoch as an RFC 3339 UTC time, without a
/// date library (Howard Hinnant's days-to-civil algorithm).
fn format_unix_ms(unix_ms: u64) -> String {
    let seconds = unix_ms / 1000;
    let days = seconds / 86_400;
    let second_of_day = seconds % 86_400;
    let days_shifted = days + 719_468;
    let era = days_shifted / 146_097;
    let day_of_era = days_shifted % 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        second_of_day / 3600,
        second_of_day / 60 % 60,
        second_of_day % 60,
        unix_ms % 1000
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339_utc() {
        assert_eq!(format_unix_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(format_unix_ms(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(
            format_unix_ms(1_767_225_599_999),
            "2025-12-31T23:59:59.999Z"
        );
    }
}
