//! What every client subcommand shares: where to connect (`--endpoint`,
//! `--token`, `--timeout-ms`), running a call to completion, and turning its
//! failure into a message on stderr and an exit code:
//!
//! | exit code | meaning |
//! |---|---|
//! | 0 | success |
//! | 1 | the server refused or failed the call (printed with the gRPC code name) |
//! | 2 | usage or local input error (bad arguments, bad JSON, unreadable file, bad endpoint); clap's own usage errors also exit 2 |
//! | 3 | the endpoint cannot be reached: nothing was sent |
//! | 4 | the outcome is unknown: the call was sent, and no answer came (timed out, the connection broke, every retry failed); a write may or may not have been applied (an invoke once at most) |

use std::fmt;
use std::future::Future;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use crate::client::{Client, ClientConfig, ClientError, DEFAULT_ENDPOINT};

/// The exit code of a successful command.
pub const EXIT_OK: u8 = 0;
/// The server refused or failed the call.
pub const EXIT_SERVER_ERROR: u8 = 1;
/// Bad usage or local input: nothing was sent.
pub const EXIT_USAGE: u8 = 2;
/// The endpoint could not be reached.
pub const EXIT_UNREACHABLE: u8 = 3;
/// The call was sent and no answer came: what it did is unknown.
pub const EXIT_OUTCOME_UNKNOWN: u8 = 4;

/// How to reach the cluster: options of the `wasmraft` command itself, so
/// they may come before or after the subcommand
/// (`wasmraft --endpoint URL cluster status`, `wasmraft cluster status --endpoint URL`).
#[derive(Debug, Clone, clap::Args)]
pub struct ConnectionArgs {
    /// The node to talk to, as http://HOST:PORT (or https:// for a node
    /// serving TLS); several, comma-separated (`--endpoints a,b,c`), to
    /// use the first that answers.
    #[arg(
        long = "endpoint",
        visible_alias = "endpoints",
        global = true,
        env = "WASMRAFT_ENDPOINT",
        value_delimiter = ',',
        default_value = DEFAULT_ENDPOINT
    )]
    endpoints: Vec<String>,
    /// Bearer token sent with every call.
    #[arg(long, global = true, env = "WASMRAFT_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// For https://: the authority (PEM) the node's certificate chains to
    /// [default: the system's trusted roots].
    #[arg(long, global = true, value_name = "FILE", env = "WASMRAFT_CA_CERT")]
    ca_cert: Option<PathBuf>,
    /// For https://: a client certificate (PEM) to authenticate with instead
    /// of a token; its common name is your subject.
    #[arg(
        long,
        global = true,
        value_name = "FILE",
        env = "WASMRAFT_CERT",
        requires = "key"
    )]
    cert: Option<PathBuf>,
    /// The private key of --cert (PEM).
    #[arg(
        long,
        global = true,
        value_name = "FILE",
        env = "WASMRAFT_KEY",
        requires = "cert"
    )]
    key: Option<PathBuf>,
    /// The most the whole command may take, retries included, in
    /// milliseconds [default: 10 s for each attempt of a call, 120 s for a
    /// deploy, retries within 30 s].
    #[arg(long, global = true, value_parser = clap::value_parser!(u64).range(1..=3_600_000))]
    timeout_ms: Option<u64>,
}

/// A command that did not finish within `--timeout-ms`.
#[derive(Debug, thiserror::Error)]
#[error(
    "the command did not finish within {timeout_ms} ms (--timeout-ms); a write it sent may or may not have been applied"
)]
pub struct CommandTimedOut {
    pub timeout_ms: u64,
}

impl ConnectionArgs {
    /// The client for these arguments. It fails fast on an unreachable
    /// endpoint (a person is waiting) but retries elections and lost
    /// replies like any client.
    pub async fn client(&self) -> Result<Client, ClientError> {
        let (first, others) = self
            .endpoints
            .split_first()
            .ok_or_else(|| ClientError::InvalidConfig("no --endpoint given".to_owned()))?;
        if others.is_empty() {
            return self.client_at(first).await;
        }
        // Several: the first that answers at all (a health check needs no
        // credentials) serves the command.
        let mut unreachable = None;
        for endpoint in &self.endpoints {
            let client = self.client_at(endpoint).await?;
            match client.health().await {
                Err(error) if error.is_unreachable() => {
                    tracing::debug!(%error, "trying the next endpoint");
                    unreachable = Some(error);
                }
                _ => return Ok(client),
            }
        }
        Err(unreachable.expect("at least one endpoint was tried"))
    }

    /// Runs `work` on a single-threaded runtime, within `--timeout-ms`
    /// when given, and reports its failure on stderr, returning the exit
    /// code.
    pub fn run<F>(&self, work: F) -> anyhow::Result<ExitCode>
    where
        F: Future<Output = anyhow::Result<()>>,
    {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let result = runtime.block_on(async {
            match self.timeout_ms {
                // The client's own deadlines end a call first (with what
                // it knows of the outcome); this bounds the whole command.
                Some(timeout_ms) => tokio::time::timeout(
                    Duration::from_millis(timeout_ms) + COMMAND_TIMEOUT_GRACE,
                    work,
                )
                .await
                .unwrap_or_else(|_| Err(CommandTimedOut { timeout_ms }.into())),
                None => work.await,
            }
        });
        Ok(report(result))
    }

    /// A client of another node (`http://HOST:PORT`), with the same
    /// credentials and timeouts.
    pub async fn client_at(&self, endpoint: &str) -> Result<Client, ClientError> {
        let defaults = ClientConfig::default();
        let (request_timeout, deploy_timeout, retry_deadline) = match self.timeout_ms {
            Some(timeout_ms) => {
                let timeout = Duration::from_millis(timeout_ms);
                (timeout, timeout, timeout)
            }
            None => (
                defaults.request_timeout,
                defaults.deploy_timeout,
                defaults.retry_deadline,
            ),
        };
        let read = |path: &PathBuf, option: &str| {
            std::fs::read(path).map_err(|error| {
                ClientError::InvalidConfig(format!(
                    "cannot read {option} {}: {error}",
                    path.display()
                ))
            })
        };
        let ca_certificate_pem = self
            .ca_cert
            .as_ref()
            .map(|path| read(path, "--ca-cert"))
            .transpose()?;
        let client_identity_pem = match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => Some((read(cert, "--cert")?, read(key, "--key")?)),
            _ => None,
        };
        let config = ClientConfig {
            request_timeout,
            deploy_timeout,
            retry_deadline,
            retry_unreachable: false,
            bearer_token: self.token.clone(),
            ca_certificate_pem,
            client_identity_pem,
            ..ClientConfig::default()
        };
        Client::connect_with(endpoint, config).await
    }
}

/// A local problem with what the user gave (arguments, input, files):
/// nothing was sent; exit code 2.
#[derive(Debug)]
pub struct UsageError(pub String);

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// How long past `--timeout-ms` the command waits for the client's own
/// answer (which says more than "timed out") before it stops.
const COMMAND_TIMEOUT_GRACE: Duration = Duration::from_millis(200);

/// Prints an error (with a hint for client errors) and gives its exit code.
pub fn report(result: anyhow::Result<()>) -> ExitCode {
    let Err(error) = result else {
        return ExitCode::from(EXIT_OK);
    };
    eprintln!("error: {}", describe(&error));
    if let Some(client_error) = client_error(&error) {
        eprintln!("hint: {}", client_error.explanation());
    }
    ExitCode::from(exit_code(&error))
}

/// `error` and its causes on one line, each cause once: an error that
/// names its source in its own message (`cannot listen on …: Address
/// already in use`) does not repeat it.
pub fn describe(error: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in error.chain() {
        let cause = cause.to_string();
        if text.contains(&cause) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&cause);
    }
    text
}

fn client_error(error: &anyhow::Error) -> Option<&ClientError> {
    error
        .chain()
        .find_map(|cause| cause.downcast_ref::<ClientError>())
}

/// The exit code for a failed command (see the module documentation).
pub fn exit_code(error: &anyhow::Error) -> u8 {
    if error
        .chain()
        .any(|cause| cause.downcast_ref::<UsageError>().is_some())
    {
        return EXIT_USAGE;
    }
    if error
        .chain()
        .any(|cause| cause.downcast_ref::<CommandTimedOut>().is_some())
    {
        return EXIT_OUTCOME_UNKNOWN;
    }
    match client_error(error) {
        Some(
            ClientError::InvalidEndpoint { .. }
            | ClientError::InvalidConfig(_)
            | ClientError::InvalidInput(_),
        ) => EXIT_USAGE,
        Some(error) if error.is_unreachable() => EXIT_UNREACHABLE,
        Some(
            ClientError::OutcomeUnknown { .. }
            | ClientError::TimedOut { .. }
            | ClientError::Transport { .. },
        ) => EXIT_OUTCOME_UNKNOWN,
        _ => EXIT_SERVER_ERROR,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;
    use tonic::Code;

    #[test]
    fn each_cause_is_said_once() {
        #[derive(Debug, thiserror::Error)]
        #[error("cannot listen on 127.0.0.1:7070: {source}")]
        struct Bind {
            source: std::io::Error,
        }
        let bind = Bind {
            source: std::io::Error::new(std::io::ErrorKind::AddrInUse, "Address already in use"),
        };
        let error = anyhow::Error::new(bind).context("cannot start the node");
        assert_eq!(
            describe(&error),
            "cannot start the node: cannot listen on 127.0.0.1:7070: Address already in use"
        );
        let plain = anyhow::anyhow!("inner").context("outer");
        assert_eq!(describe(&plain), "outer: inner");
    }

    #[test]
    fn exit_codes() {
        let status = |code| ClientError::Status {
            operation: "invoke",
            code,
            message: "m".to_owned(),
            leader_address: None,
            retry_after: None,
        };
        let unreachable = || ClientError::Unreachable {
            endpoint: "http://127.0.0.1:1".to_owned(),
            reason: "connection refused".to_owned(),
        };
        let rows: Vec<(anyhow::Error, u8)> = vec![
            (status(Code::NotFound).into(), EXIT_SERVER_ERROR),
            (status(Code::FailedPrecondition).into(), EXIT_SERVER_ERROR),
            (status(Code::InvalidArgument).into(), EXIT_SERVER_ERROR),
            (unreachable().into(), EXIT_UNREACHABLE),
            (
                anyhow::Error::from(unreachable()).context("deploying counter"),
                EXIT_UNREACHABLE,
            ),
            (
                ClientError::OutcomeUnknown {
                    client_id: "c".to_owned(),
                    sequence: 1,
                    attempts: 3,
                    last: Box::new(status(Code::Unavailable)),
                }
                .into(),
                EXIT_OUTCOME_UNKNOWN,
            ),
            // The retry found the node gone, but an earlier attempt may
            // have been applied: not "unreachable".
            (
                ClientError::OutcomeUnknown {
                    client_id: "c".to_owned(),
                    sequence: 1,
                    attempts: 2,
                    last: Box::new(unreachable()),
                }
                .into(),
                EXIT_OUTCOME_UNKNOWN,
            ),
            (
                ClientError::TimedOut {
                    endpoint: "http://127.0.0.1:1".to_owned(),
                    operation: "deploy",
                    timeout: Duration::from_secs(1),
                }
                .into(),
                EXIT_OUTCOME_UNKNOWN,
            ),
            (
                anyhow::Error::from(CommandTimedOut { timeout_ms: 3000 }),
                EXIT_OUTCOME_UNKNOWN,
            ),
            (
                ClientError::InvalidEndpoint {
                    endpoint: "ftp://x".to_owned(),
                    reason: "scheme".to_owned(),
                }
                .into(),
                EXIT_USAGE,
            ),
            (UsageError("bad JSON".to_owned()).into(), EXIT_USAGE),
            (
                Err::<(), _>(UsageError("no such file".to_owned()))
                    .context("reading module")
                    .expect_err("an error"),
                EXIT_USAGE,
            ),
            (anyhow::anyhow!("stdout closed"), EXIT_SERVER_ERROR),
        ];
        for (error, expected) in rows {
            assert_eq!(exit_code(&error), expected, "{error:#}");
        }
    }
}
