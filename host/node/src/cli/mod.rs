//! The `wasmraft` command line: one subcommand per file.
//!
//! Each subcommand module owns its clap arguments and its `run` function;
//! this file only lists them.

mod access;
mod cluster;
mod connection;
mod examples;
mod inspect;
mod invoke;
mod module;
mod query;
mod serve;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Raft-replicated WebAssembly state machines.
#[derive(Debug, Parser)]
#[command(name = "wasmraft", version, about, long_about = None)]
pub struct Cli {
    /// How the node and the commands write their logs (on stderr).
    #[arg(long, global = true, value_enum, default_value = "text")]
    pub log_format: crate::telemetry::logs::LogFormat,
    #[command(flatten)]
    connection: connection::ConnectionArgs,
    #[command(subcommand)]
    command: Commands,
}

#[derive(Debug, Subcommand)]
enum Commands {
    /// Print what a node's data directory holds: the log, the applied state
    /// and its digest, and the deployed modules. Read-only; the node must be stopped.
    Inspect(inspect::InspectArgs),
    /// Run a node: `--dev` for a single self-initialising node with the
    /// example modules, or `--node-id N --listen HOST:PORT --data-dir DIR`
    /// (or `--config FILE.toml`) for a cluster member.
    Serve(Box<serve::ServeArgs>),
    /// Deploy, list, show and remove modules.
    Module(module::ModuleArgs),
    /// Send a command to a module (applied exactly once) and print its output.
    Invoke(invoke::InvokeArgs),
    /// Run a module's read-only query and print its output.
    Query(query::QueryArgs),
    /// Inspect the cluster: leader, members, indexes, state digests.
    Cluster(cluster::ClusterArgs),
    /// Grant and revoke roles, list them, create and revoke tokens.
    Access(access::AccessArgs),
    /// Show who the node takes you for (your token's subject) and your roles.
    Whoami(access::WhoAmIArgs),
    /// The example modules bundled in this binary.
    Examples(examples::ExamplesArgs),
}

impl Cli {
    /// Runs the chosen subcommand; errors are printed to stderr.
    pub fn run(self) -> ExitCode {
        // A node installs its telemetry once it read its configuration;
        // the other commands only log.
        if !matches!(self.command, Commands::Serve(_)) {
            let _ = crate::telemetry::init(self.log_format, None);
        }
        let result = match self.command {
            Commands::Inspect(args) => inspect::run(args),
            Commands::Serve(args) => serve::run(*args, self.log_format),
            Commands::Module(args) => module::run(args, &self.connection),
            Commands::Invoke(args) => invoke::run(args, &self.connection),
            Commands::Query(args) => query::run(args, &self.connection),
            Commands::Cluster(args) => cluster::run(args, &self.connection),
            Commands::Access(args) => access::run(args, &self.connection),
            Commands::Whoami(args) => access::run_whoami(args, &self.connection),
            Commands::Examples(args) => examples::run(args),
        };
        match result {
            Ok(code) => code,
            Err(error) => {
                eprintln!("error: {}", connection::describe(&error));
                ExitCode::FAILURE
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::Cli;

    /// The connection options are the command's own: before the
    /// subcommand, after it, or from the environment's default.
    #[test]
    fn connection_options_come_before_or_after_the_subcommand() {
        let endpoint = |argv: &[&str]| {
            let cli = Cli::try_parse_from(argv).unwrap_or_else(|error| panic!("{argv:?}: {error}"));
            format!("{:?}", cli.connection)
        };
        let before = endpoint(&[
            "wasmraft",
            "--endpoint",
            "http://10.0.0.1:7070",
            "--timeout-ms",
            "3000",
            "cluster",
            "status",
        ]);
        let after = endpoint(&[
            "wasmraft",
            "cluster",
            "status",
            "--endpoint",
            "http://10.0.0.1:7070",
            "--timeout-ms",
            "3000",
        ]);
        let between = endpoint(&[
            "wasmraft",
            "cluster",
            "--endpoint",
            "http://10.0.0.1:7070",
            "status",
            "--timeout-ms",
            "3000",
        ]);
        assert_eq!(before, after);
        assert_eq!(before, between);
        assert!(
            before.contains("http://10.0.0.1:7070") && before.contains("3000"),
            "{before}"
        );
        let invoke = endpoint(&[
            "wasmraft",
            "--endpoint",
            "http://10.0.0.2:7070",
            "invoke",
            "counter",
            r#"{"op":"get"}"#,
        ]);
        assert!(invoke.contains("http://10.0.0.2:7070"), "{invoke}");
        assert!(
            Cli::try_parse_from(["wasmraft", "--cert", "c.pem", "whoami"]).is_err(),
            "--cert needs --key"
        );
    }
}
