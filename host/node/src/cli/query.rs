//! `wasmraft query MODULE INPUT [--stale]`: run a module's read-only query
//! and print its output.

use std::process::ExitCode;

use super::connection::ConnectionArgs;
use super::invoke::{InputArgs, print_output};
use crate::client::Consistency;

#[derive(Debug, clap::Args)]
#[command(
    override_usage = "wasmraft query [OPTIONS] <MODULE> <INPUT | --input-file FILE> [--stale]"
)]
pub struct QueryArgs {
    /// The module to query.
    module: String,
    #[command(flatten)]
    input: InputArgs,
    /// Read the answering node's state as it is, without confirming with a
    /// quorum that it is up to date: cheaper, works without a leader, may lag.
    #[arg(long)]
    stale: bool,
}

pub fn run(args: QueryArgs, connection: &ConnectionArgs) -> anyhow::Result<ExitCode> {
    connection.run(async move {
        let input = args.input.body()?;
        let consistency = if args.stale {
            Consistency::Stale
        } else {
            Consistency::Linearizable
        };
        let client = connection.client().await?;
        let result = client.query(&args.module, &input, consistency).await?;
        tracing::debug!(
            fuel_used = result.fuel_used,
            applied_index = result.applied_index,
            "queried"
        );
        print_output(&result.output)
    })
}
