//! `wasmraft access grant|revoke|list|token` and `wasmraft whoami`: who may
//! do what on the cluster, and the bearer tokens that identify callers.

use std::process::ExitCode;

use super::connection::{ConnectionArgs, UsageError};
use crate::client::{RoleBinding, WhoAmI};

#[derive(Debug, clap::Args)]
pub struct AccessArgs {
    #[command(subcommand)]
    command: AccessCommand,
}

#[derive(Debug, clap::Subcommand)]
enum AccessCommand {
    /// Give a subject a role; in force on every node when this returns.
    Grant(BindingArgs),
    /// Take a role away (subject, role and pattern exactly as granted).
    Revoke(BindingArgs),
    /// List the role bindings, by subject, role and pattern.
    List(ListArgs),
    /// Create and revoke bearer tokens.
    Token(TokenArgs),
}

#[derive(Debug, clap::Args)]
struct BindingArgs {
    /// Who holds the role: a token's subject, or a client certificate's
    /// common name.
    subject: String,
    /// cluster_admin, cluster_operator, cluster_viewer (the whole cluster),
    /// or module_deployer, module_invoker, module_querier (with --modules).
    role: String,
    /// The modules a module role applies to: a name, or a pattern where `*`
    /// matches any run of characters (`bank-*`, `*`).
    #[arg(long, value_name = "PATTERN")]
    modules: Option<String>,
}

#[derive(Debug, clap::Args)]
struct ListArgs {
    /// Only this subject's bindings.
    #[arg(long)]
    subject: Option<String>,
    /// Print JSON (an array of {subject, role, module_pattern}).
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
struct TokenArgs {
    #[command(subcommand)]
    command: TokenCommand,
}

#[derive(Debug, clap::Subcommand)]
enum TokenCommand {
    /// Create a token for a subject and print it. It is shown only this
    /// once: the cluster keeps only its hash.
    Create(CreateTokenArgs),
    /// Invalidate a token, on every node when this returns.
    Revoke(RevokeTokenArgs),
}

#[derive(Debug, clap::Args)]
struct CreateTokenArgs {
    /// The subject the token identifies; grant it roles with `access grant`.
    subject: String,
    /// Print JSON ({token, token_id, subject}).
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
struct RevokeTokenArgs {
    /// The token's id, as `token create` printed it (16 hex digits, also
    /// the part after `wr_` in the token).
    token_id: String,
}

/// `wasmraft whoami`.
#[derive(Debug, clap::Args)]
pub struct WhoAmIArgs {
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

impl BindingArgs {
    fn binding(&self) -> Result<RoleBinding, UsageError> {
        RoleBinding::new(&self.subject, &self.role, self.modules.as_deref())
            .map_err(|error| UsageError(error.to_string()))
    }
}

pub fn run(args: AccessArgs, connection: &ConnectionArgs) -> anyhow::Result<ExitCode> {
    connection.run(async move {
        match args.command {
            AccessCommand::Grant(args) => {
                let binding = args.binding()?;
                connection.client().await?.grant(&binding).await?;
                println!("granted: {binding}");
            }
            AccessCommand::Revoke(args) => {
                let binding = args.binding()?;
                connection.client().await?.revoke(&binding).await?;
                println!("revoked: {binding}");
            }
            AccessCommand::List(args) => {
                let bindings = connection
                    .client()
                    .await?
                    .role_bindings(args.subject.as_deref())
                    .await?;
                if args.json {
                    println!("{}", serde_json::to_string_pretty(&bindings)?);
                } else {
                    print_bindings(&bindings);
                }
            }
            AccessCommand::Token(TokenArgs {
                command: TokenCommand::Create(args),
            }) => {
                let created = connection
                    .client()
                    .await?
                    .create_token(&args.subject)
                    .await?;
                if args.json {
                    println!("{}", serde_json::to_string_pretty(&created)?);
                } else {
                    println!("{}", created.token);
                    eprintln!(
                        "token {} for `{}`: shown only this once; send it with --token or WASMRAFT_TOKEN, revoke it with `wasmraft access token revoke {}`",
                        created.token_id, created.subject, created.token_id
                    );
                }
            }
            AccessCommand::Token(TokenArgs {
                command: TokenCommand::Revoke(args),
            }) => {
                connection
                    .client()
                    .await?
                    .revoke_token(&args.token_id)
                    .await?;
                println!("revoked token {}", args.token_id);
            }
        }
        Ok(())
    })
}

pub fn run_whoami(args: WhoAmIArgs, connection: &ConnectionArgs) -> anyhow::Result<ExitCode> {
    connection.run(async move {
        let who = connection.client().await?.who_am_i().await?;
        if args.json {
            println!("{}", serde_json::to_string_pretty(&who)?);
        } else {
            print_who(&who);
        }
        Ok(())
    })
}

fn print_bindings(bindings: &[RoleBinding]) {
    if bindings.is_empty() {
        println!("no role bindings");
        return;
    }
    let width = |column: fn(&RoleBinding) -> usize, title: &str| {
        bindings
            .iter()
            .map(column)
            .max()
            .unwrap_or(0)
            .max(title.len())
    };
    let subject = width(|binding| binding.subject.len(), "SUBJECT");
    let role = width(|binding| binding.role.len(), "ROLE");
    println!("{:subject$}  {:role$}  MODULES", "SUBJECT", "ROLE");
    for binding in bindings {
        println!(
            "{:subject$}  {:role$}  {}",
            binding.subject,
            binding.role,
            binding.module_pattern.as_deref().unwrap_or("-")
        );
    }
}

fn print_who(who: &WhoAmI) {
    if !who.authenticated {
        println!(
            "{}: the node does not authenticate callers (--dev or --insecure); every caller may do everything",
            who.subject
        );
        return;
    }
    match &who.token_id {
        Some(token_id) => println!("{} (token {token_id})", who.subject),
        None => println!("{}", who.subject),
    }
    if who.bindings.is_empty() {
        println!(
            "no roles: grant some with `wasmraft access grant {} ROLE`",
            who.subject
        );
    }
    for binding in &who.bindings {
        match &binding.module_pattern {
            Some(pattern) => println!("  {} on modules `{pattern}`", binding.role),
            None => println!("  {}", binding.role),
        }
    }
    println!("policy revision {}", who.policy_revision);
}
