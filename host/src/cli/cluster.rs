//! `wasmraft cluster …`: operate the cluster.
//!
//! - `status [--json]`: the cluster as one node sees it — leader, term,
//!   members, and each node's log and applied indexes and state digest.
//!   `--json` prints [`crate::client::ClusterStatusJson`], a stable,
//!   versioned schema.
//! - `add-node ID ADDRESS`: learner, caught up, voter (through the leader).
//! - `remove-node ID`: out of the membership, by consensus.
//! - `snapshot`: the endpoint's node builds a snapshot and purges its log.

use std::process::ExitCode;
use std::time::Duration;

use super::connection::{self, ConnectionArgs};
use crate::client::{ClusterStatus, ClusterStatusJson, Member, Membership};

#[derive(Debug, clap::Args)]
pub struct ClusterArgs {
    #[command(subcommand)]
    command: ClusterCommand,
}

#[derive(Debug, clap::Subcommand)]
enum ClusterCommand {
    /// Show the leader, the term, the members and each node's log index,
    /// applied index and state digest.
    Status(StatusArgs),
    /// Add a node that runs `wasmraft serve` with an empty data directory:
    /// it joins as a learner, receives the log (or a snapshot), and becomes
    /// a voter once it caught up.
    AddNode(AddNodeArgs),
    /// Remove a node (voter or learner) from the cluster. Stop its process
    /// afterwards; to bring it back, empty its data directory and add it.
    RemoveNode(RemoveNodeArgs),
    /// Make the endpoint's node build a snapshot now and purge its log up
    /// to it.
    Snapshot(SnapshotArgs),
}

#[derive(Debug, clap::Args)]
struct AddNodeArgs {
    /// The new node's id: not 0, not used by any member.
    id: u64,
    /// The address the new node serves on (its `--listen`, or `--advertise`), as HOST:PORT.
    address: String,
    /// How long the new node may take to catch up before the call gives up
    /// (it then stays a learner; run the command again to finish).
    #[arg(long, default_value_t = 120_000, value_name = "MS")]
    catch_up_timeout_ms: u64,
    #[command(flatten)]
    connection: ConnectionArgs,
}

#[derive(Debug, clap::Args)]
struct RemoveNodeArgs {
    /// The id of the member to remove.
    id: u64,
    #[command(flatten)]
    connection: ConnectionArgs,
}

#[derive(Debug, clap::Args)]
struct SnapshotArgs {
    #[command(flatten)]
    connection: ConnectionArgs,
}

#[derive(Debug, clap::Args)]
struct StatusArgs {
    /// Print JSON (schema_version 1, documented in `wasmraft::client`)
    /// instead of a table.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    connection: ConnectionArgs,
}

pub fn run(args: ClusterArgs) -> anyhow::Result<ExitCode> {
    connection::run(async move {
        match args.command {
            ClusterCommand::Status(args) => {
                let status = args.connection.client().await?.status().await?;
                if args.json {
                    println!(
                        "{}",
                        serde_json::to_string_pretty(&ClusterStatusJson::from(&status))?
                    );
                } else {
                    print!("{}", render(&status));
                }
                for (first, second) in status.diverged() {
                    eprintln!(
                        "warning: nodes {first} and {second} are at the same applied index with different state digests: their states diverged"
                    );
                }
                Ok(())
            }
            ClusterCommand::AddNode(args) => {
                let membership = args
                    .connection
                    .client()
                    .await?
                    .add_node(
                        args.id,
                        &args.address,
                        Duration::from_millis(args.catch_up_timeout_ms),
                    )
                    .await?;
                println!("node {} added as a voter", args.id);
                print!("{}", render_membership(&membership));
                Ok(())
            }
            ClusterCommand::RemoveNode(args) => {
                let membership = args.connection.client().await?.remove_node(args.id).await?;
                println!("node {} removed", args.id);
                print!("{}", render_membership(&membership));
                Ok(())
            }
            ClusterCommand::Snapshot(args) => {
                let client = args.connection.client().await?;
                client.snapshot().await?;
                println!("snapshot started on {}", client.endpoint());
                Ok(())
            }
        }
    })
}

fn members_line(members: &[Member]) -> String {
    if members.is_empty() {
        "none".to_owned()
    } else {
        members
            .iter()
            .map(|member| format!("{} ({})", member.id, member.address))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

fn render_membership(membership: &Membership) -> String {
    format!(
        "voters    {}\nlearners  {}\n",
        members_line(&membership.voters),
        members_line(&membership.learners)
    )
}

/// The human form of the status.
fn render(status: &ClusterStatus) -> String {
    let members = members_line;
    let optional = |value: Option<u64>| value.map_or("-".to_owned(), |value| value.to_string());
    let mut text = String::new();
    text.push_str(&format!(
        "leader    {}\nterm      {}\nvoters    {}\nlearners  {}\n\n",
        status
            .leader_id
            .map_or("none (no leader known)".to_owned(), |id| id.to_string()),
        status.term,
        members(&status.voters),
        members(&status.learners),
    ));
    let address_width = status
        .nodes
        .iter()
        .map(|node| node.address.len())
        .max()
        .unwrap_or(0)
        .max("ADDRESS".len());
    text.push_str(&format!(
        "{:>4}  {:address_width$}  {:9}  {:>8}  {:>8}  STATE_DIGEST\n",
        "ID", "ADDRESS", "ROLE", "LAST_LOG", "APPLIED"
    ));
    for node in &status.nodes {
        let digest = match (&node.error, &node.state_digest_hex) {
            (Some(error), _) => format!("error: {error}"),
            (None, Some(digest)) => digest.clone(),
            (None, None) => "-".to_owned(),
        };
        text.push_str(&format!(
            "{:>4}  {:address_width$}  {:9}  {:>8}  {:>8}  {digest}\n",
            node.id,
            node.address,
            node.role.as_str(),
            optional(node.last_log_index),
            optional(node.applied_index),
        ));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::{NodeRole, NodeStatus};

    #[test]
    fn the_table_names_every_field() {
        let status = ClusterStatus {
            leader_id: Some(1),
            term: 3,
            voters: vec![Member {
                id: 1,
                address: "127.0.0.1:7070".to_owned(),
            }],
            learners: Vec::new(),
            nodes: vec![
                NodeStatus {
                    id: 1,
                    address: "127.0.0.1:7070".to_owned(),
                    role: NodeRole::Leader,
                    last_log_index: Some(9),
                    applied_index: Some(8),
                    state_digest_hex: Some("ab12".to_owned()),
                    error: None,
                },
                NodeStatus {
                    id: 2,
                    address: "127.0.0.1:7071".to_owned(),
                    role: NodeRole::Unknown,
                    last_log_index: None,
                    applied_index: None,
                    state_digest_hex: None,
                    error: Some("timed out".to_owned()),
                },
            ],
        };
        let expected = "\
leader    1
term      3
voters    1 (127.0.0.1:7070)
learners  none

  ID  ADDRESS         ROLE       LAST_LOG   APPLIED  STATE_DIGEST
   1  127.0.0.1:7070  leader            9         8  ab12
   2  127.0.0.1:7071  unknown           -         -  error: timed out
";
        assert_eq!(render(&status), expected);
    }
}
