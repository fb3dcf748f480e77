//! `wasmraft cluster …`: operate the cluster.
//!
//! - `status [--json]`: the cluster as one node sees it — leader, term,
//!   members, and each node's log and applied indexes and state digest.
//!   `--json` prints [`crate::client::ClusterStatusJson`], a stable,
//!   versioned schema.
//! - `health [--json]`: each member's health — serving or not, its score
//!   and the reasons that lower it; exits 1 when a member is not serving.
//! - `add-node ID ADDRESS`: learner, caught up, voter (through the leader).
//! - `remove-node ID`: out of the membership, by consensus.
//! - `snapshot`: the endpoint's node builds a snapshot and purges its log.
//! - `settings get` / `settings set FIELD=VALUE…`: the replicated cluster
//!   settings, changed through the log.
//! - `new-secret FILE`: a new cluster secret, for every node's
//!   `--cluster-secret-file`.

use std::process::ExitCode;
use std::time::Duration;

use super::connection::ConnectionArgs;
use crate::auth::ClusterSecret;
use crate::client::{
    ClusterSettings, ClusterStatus, ClusterStatusJson, Health, Member, Membership, SettingsUpdate,
};

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
    /// Show each member's health: whether it serves, its score (100 with
    /// nothing to report) and what lowers it. Exits 1 when a member does
    /// not serve.
    Health(HealthArgs),
    /// Add a node that runs `wasmraft serve` with an empty data directory:
    /// it joins as a learner, receives the log (or a snapshot), and becomes
    /// a voter once it caught up.
    AddNode(AddNodeArgs),
    /// Remove a node (voter or learner) from the cluster. Stop its process
    /// afterwards; to bring it back, empty its data directory and add it.
    RemoveNode(RemoveNodeArgs),
    /// Make the endpoint's node build a snapshot now and purge its log up
    /// to it; waits until it is built (within --timeout-ms) and says what
    /// it covers.
    Snapshot(SnapshotArgs),
    /// Read or change the cluster settings: the limits every node applies
    /// commands with (fuel, memory, output, module size, sessions).
    Settings(SettingsArgs),
    /// Write a new random cluster secret to FILE (readable by its owner
    /// only). Copy it to every node and start each with
    /// `--cluster-secret-file FILE`: nodes then take Raft messages only from
    /// each other.
    NewSecret(NewSecretArgs),
}

#[derive(Debug, clap::Args)]
struct NewSecretArgs {
    /// Where to write the secret; an existing file is never overwritten.
    file: std::path::PathBuf,
}

/// Writes a new cluster secret to a file that did not exist, readable by
/// its owner only.
fn new_secret(args: &NewSecretArgs) -> anyhow::Result<ExitCode> {
    let secret = ClusterSecret::generate()
        .map_err(|error| anyhow::anyhow!("no randomness for a secret: {error}"))?;
    crate::auth::write_private(&args.file, secret.as_bytes()).map_err(|error| {
        anyhow::anyhow!(
            "cannot create {}: {error} (an existing secret is never overwritten)",
            args.file.display()
        )
    })?;
    println!(
        "cluster secret written to {}; give every node `--cluster-secret-file {}`",
        args.file.display(),
        args.file.display()
    );
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, clap::Args)]
struct SettingsArgs {
    #[command(subcommand)]
    command: SettingsCommand,
}

#[derive(Debug, clap::Subcommand)]
enum SettingsCommand {
    /// Show the settings in force.
    Get(SettingsGetArgs),
    /// Change settings through the Raft log: `FIELD=VALUE`, one or more.
    /// Values are whole numbers, optionally with a KiB, MiB or GiB suffix.
    /// Fields: fuel_per_call_max, memory_bytes_max, output_bytes_max,
    /// module_bytes_max, session_table_bytes_max, sessions_per_caller_max,
    /// module_storage_bytes_max, module_storage_keys_max.
    Set(SettingsSetArgs),
}

#[derive(Debug, clap::Args)]
struct SettingsGetArgs {
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
struct SettingsSetArgs {
    /// The changes, as FIELD=VALUE.
    #[arg(required = true, value_name = "FIELD=VALUE")]
    changes: Vec<String>,
}

/// `FIELD=VALUE` pairs as a settings update; a bad pair is refused by name.
fn parse_changes(changes: &[String]) -> anyhow::Result<SettingsUpdate> {
    let mut update = SettingsUpdate::default();
    for change in changes {
        let Some((field, value)) = change.split_once('=') else {
            anyhow::bail!(
                "`{change}` is not FIELD=VALUE (for example fuel_per_call_max=100000000)"
            );
        };
        let field = field.trim();
        let value = parse_quantity(value.trim()).ok_or_else(|| {
            anyhow::anyhow!(
                "invalid value `{value}` for `{field}`: expected a whole number, optionally with a KiB, MiB or GiB suffix"
            )
        })?;
        update.set(field, value)?;
    }
    Ok(update)
}

/// A whole number with an optional binary-unit suffix.
fn parse_quantity(text: &str) -> Option<u64> {
    let (digits, multiplier) = [("KiB", 1u64 << 10), ("MiB", 1 << 20), ("GiB", 1 << 30)]
        .iter()
        .find_map(|(suffix, multiplier)| {
            text.strip_suffix(suffix)
                .map(|digits| (digits.trim(), *multiplier))
        })
        .unwrap_or((text, 1));
    let digits = digits.replace('_', "");
    digits.parse::<u64>().ok()?.checked_mul(multiplier)
}

fn render_settings(settings: &ClusterSettings) -> String {
    crate::command::settings::FIELDS
        .iter()
        .map(|field| match settings.get(field) {
            Some(crate::command::settings::QUOTA_NOT_RECORDED) => {
                format!("{field:<26}none (the settings predate quotas; the next `settings set` records the default)\n")
            }
            value => format!("{field:<26}{}\n", value.unwrap_or_default()),
        })
        .collect()
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
}

#[derive(Debug, clap::Args)]
struct RemoveNodeArgs {
    /// The id of the member to remove.
    id: u64,
}

#[derive(Debug, clap::Args)]
struct SnapshotArgs {
    /// Only start the build, and return at once.
    #[arg(long)]
    no_wait: bool,
}

#[derive(Debug, clap::Args)]
struct HealthArgs {
    /// Print a JSON array, one object per member: id, address, serving,
    /// score, reasons [{name, detail}] (or error, for a member that did
    /// not answer).
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
struct StatusArgs {
    /// Print JSON (schema_version 1, documented in `wasmraft::client`)
    /// instead of a table.
    #[arg(long)]
    json: bool,
}

pub fn run(args: ClusterArgs, connection: &ConnectionArgs) -> anyhow::Result<ExitCode> {
    if let ClusterCommand::NewSecret(args) = args.command {
        return new_secret(&args);
    }
    connection.run(async move {
        match args.command {
            ClusterCommand::Status(args) => {
                let status = connection.client().await?.status().await?;
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
            ClusterCommand::Health(args) => health(&args, connection).await,
            ClusterCommand::AddNode(args) => {
                let membership = connection
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
                let membership = connection.client().await?.remove_node(args.id).await?;
                println!("node {} removed", args.id);
                print!("{}", render_membership(&membership));
                Ok(())
            }
            ClusterCommand::Snapshot(args) => {
                let client = connection.client().await?;
                if args.no_wait {
                    client.snapshot().await?;
                    println!("snapshot started on {}", client.endpoint());
                    return Ok(());
                }
                match client.build_snapshot().await? {
                    Some(index) => println!(
                        "snapshot built on {}, covering the log up to index {index}",
                        client.endpoint()
                    ),
                    None => println!(
                        "nothing applied on {} yet: there is nothing to snapshot",
                        client.endpoint()
                    ),
                }
                Ok(())
            }
            ClusterCommand::Settings(SettingsArgs {
                command: SettingsCommand::Get(args),
            }) => {
                let view = connection.client().await?.settings().await?;
                if args.json {
                    let mut json = serde_json::to_value(&view.settings)?;
                    json["recorded"] = view.recorded.into();
                    json["engine_fingerprint"] = view.engine_fingerprint.clone().into();
                    json["changed_at_index"] = view.changed_at_index.into();
                    json["applied_index"] = view.applied_index.into();
                    println!("{}", serde_json::to_string_pretty(&json)?);
                    return Ok(());
                }
                print!("{}", render_settings(&view.settings));
                if view.recorded {
                    println!("{:<26}{}", "engine", view.engine_fingerprint);
                    println!("{:<26}{}", "changed at index", view.changed_at_index);
                } else {
                    println!(
                        "(the defaults: this cluster has recorded no settings yet; `cluster settings set` records them)"
                    );
                }
                Ok(())
            }
            ClusterCommand::Settings(SettingsArgs {
                command: SettingsCommand::Set(args),
            }) => {
                let update = parse_changes(&args.changes)?;
                let (settings, index) = connection.client().await?.set_settings(&update).await?;
                println!("settings changed at index {index}; in force on every node from there:");
                print!("{}", render_settings(&settings));
                Ok(())
            }
            // Needs no connection: written above, before connecting.
            ClusterCommand::NewSecret(args) => new_secret(&args).map(drop),
        }
    })
}

/// One member's answer to `Cluster.Health`, or why it gave none.
type MemberHealth = (Member, Result<Health, String>);

/// Asks every member for its health and prints the answers.
async fn health(args: &HealthArgs, connection: &ConnectionArgs) -> anyhow::Result<()> {
    let status = connection.client().await?.status().await?;
    let members: Vec<Member> = status
        .voters
        .iter()
        .chain(&status.learners)
        .cloned()
        .collect();
    let asked = members.into_iter().map(|member| async {
        let endpoint = format!("http://{}", member.address);
        let answer = match connection.client_at(&endpoint).await {
            Ok(client) => client.health().await.map_err(|error| error.to_string()),
            Err(error) => Err(error.to_string()),
        };
        (member, answer)
    });
    let mut answers: Vec<MemberHealth> = futures::future::join_all(asked).await;
    answers.sort_by_key(|(member, _)| member.id);
    if args.json {
        let rows: Vec<serde_json::Value> = answers
            .iter()
            .map(|(member, answer)| match answer {
                Ok(health) => serde_json::json!({
                    "id": member.id,
                    "address": member.address,
                    "serving": health.serving,
                    "score": health.score,
                    "reasons": health.reasons.iter().map(|(name, detail)| {
                        serde_json::json!({"name": name, "detail": detail})
                    }).collect::<Vec<_>>(),
                }),
                Err(error) => serde_json::json!({
                    "id": member.id,
                    "address": member.address,
                    "serving": false,
                    "score": 0,
                    "error": error,
                }),
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        print!("{}", render_health(&answers));
    }
    let down = answers
        .iter()
        .filter(|(_, answer)| !answer.as_ref().is_ok_and(|health| health.serving))
        .count();
    anyhow::ensure!(
        down == 0,
        "{down} of {} members are not serving",
        answers.len()
    );
    Ok(())
}

fn render_health(answers: &[MemberHealth]) -> String {
    let mut out = format!(
        "{:>4}  {:<21}  {:<11}  {:>5}  REASONS\n",
        "ID", "ADDRESS", "SERVING", "SCORE"
    );
    for (member, answer) in answers {
        let (serving, score, reasons) = match answer {
            Ok(health) => (
                if health.serving { "yes" } else { "no" },
                health.score.to_string(),
                health
                    .reasons
                    .iter()
                    .map(|(name, detail)| format!("{name}: {detail}"))
                    .collect::<Vec<_>>()
                    .join("; "),
            ),
            Err(error) => ("unreachable", "0".to_owned(), error.clone()),
        };
        out.push_str(&format!(
            "{:>4}  {:<21}  {:<11}  {:>5}  {}\n",
            member.id,
            member.address,
            serving,
            score,
            if reasons.is_empty() { "-" } else { &reasons }
        ));
    }
    out
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

#[cfg(test)]
mod settings_tests {
    use super::*;

    #[test]
    fn changes_parse_with_units_and_refuse_by_name() {
        let update = parse_changes(&[
            "memory_bytes_max=32MiB".to_owned(),
            "fuel_per_call_max=100_000_000".to_owned(),
        ])
        .unwrap();
        assert_eq!(update.get("memory_bytes_max"), Some(32 << 20));
        assert_eq!(update.get("fuel_per_call_max"), Some(100_000_000));
        let unknown = parse_changes(&["fuel=1".to_owned()])
            .unwrap_err()
            .to_string();
        assert!(
            unknown.starts_with("invalid setting `fuel`: no such setting"),
            "{unknown}"
        );
        let bad = parse_changes(&["fuel_per_call_max=lots".to_owned()])
            .unwrap_err()
            .to_string();
        assert!(bad.contains("`fuel_per_call_max`"), "{bad}");
        assert!(parse_changes(&["fuel_per_call_max".to_owned()]).is_err());
        assert_eq!(parse_quantity("1GiB"), Some(1 << 30));
        assert_eq!(parse_quantity("18446744073709551615GiB"), None);
    }
}
