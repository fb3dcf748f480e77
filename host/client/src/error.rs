//! [`ClientError`]: everything a client call can fail with, keeping the gRPC
//! code and message the server chose, and telling local failures (the
//! endpoint cannot be reached, a client-side timeout) apart from answers.

use std::error::Error as _;
use std::time::Duration;

use tonic::Code;

/// Why a call made with [`crate::Client`] failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The endpoint given to [`crate::Client::connect`] is not a
    /// usable URL.
    #[error("invalid endpoint `{endpoint}`: {reason}")]
    InvalidEndpoint { endpoint: String, reason: String },
    /// A [`crate::ClientConfig`] field is out of range.
    #[error("invalid client configuration: {0}")]
    InvalidConfig(String),
    /// An argument the client checks before sending is wrong (an unknown
    /// role, a pattern on a cluster role). Nothing was sent.
    #[error("{0}")]
    InvalidInput(String),
    /// No connection could be opened to the endpoint (refused, unknown
    /// host, connect timeout). Nothing was sent, so nothing was applied.
    #[error("cannot reach {endpoint}: {reason}")]
    Unreachable { endpoint: String, reason: String },
    /// The call did not complete within the client's timeout. The server may
    /// still have acted on it.
    #[error("{operation} to {endpoint} timed out after {} ms", .timeout.as_millis())]
    TimedOut {
        endpoint: String,
        operation: &'static str,
        timeout: Duration,
    },
    /// The connection broke during the call (reset, protocol error). The
    /// server may have acted on it.
    #[error("{operation} to {endpoint}: connection failed: {reason}")]
    Transport {
        endpoint: String,
        operation: &'static str,
        reason: String,
    },
    /// The server answered with a gRPC error status.
    #[error("{operation}: {}: {message}", code_name(*.code))]
    Status {
        operation: &'static str,
        /// The gRPC status code, as the server chose it (see the `.proto`
        /// comments for what each method returns).
        code: Code,
        /// The server's message, meant for a person.
        message: String,
        /// The leader's address, when the server named it
        /// (`wasmraft-leader-address` metadata on `UNAVAILABLE`).
        leader_address: Option<String>,
        /// When the server turned the call away by a local limit before
        /// starting anything (`RESOURCE_EXHAUSTED` with `retry-after-ms`
        /// metadata): how long it asked the client to wait.
        retry_after: Option<Duration>,
    },
    /// An invoke was retried until the retry deadline and no attempt got an
    /// answer. The command may or may not have been applied — once at most,
    /// thanks to its session. Query the module to find out.
    #[error(
        "no answer for the command (client `{client_id}`, sequence {sequence}) after {attempts} attempts; it was applied once or not at all: {last}"
    )]
    OutcomeUnknown {
        client_id: String,
        sequence: u64,
        attempts: u32,
        /// The error of the last attempt.
        last: Box<ClientError>,
    },
    /// The server's answer lacks a field the API promises.
    #[error("{operation}: the server's answer has no `{field}`")]
    MissingField {
        operation: &'static str,
        field: &'static str,
    },
    /// The operating system gave no randomness for the session's client id.
    #[error("cannot draw a random client id: {0}")]
    Randomness(String),
}

impl ClientError {
    /// The gRPC code: the server's for a status, the code gRPC uses for the
    /// local failures (`UNAVAILABLE` when unreachable, `DEADLINE_EXCEEDED`
    /// for a client timeout), `None` for errors before any call.
    pub fn code(&self) -> Option<Code> {
        match self {
            ClientError::Status { code, .. } => Some(*code),
            ClientError::Unreachable { .. } | ClientError::Transport { .. } => {
                Some(Code::Unavailable)
            }
            ClientError::TimedOut { .. } => Some(Code::DeadlineExceeded),
            ClientError::OutcomeUnknown { last, .. } => last.code(),
            ClientError::MissingField { .. } => Some(Code::Internal),
            ClientError::InvalidEndpoint { .. }
            | ClientError::InvalidConfig(_)
            | ClientError::InvalidInput(_)
            | ClientError::Randomness(_) => None,
        }
    }

    /// The gRPC message the server sent, if the error is a status.
    pub fn message(&self) -> Option<&str> {
        match self {
            ClientError::Status { message, .. } => Some(message),
            ClientError::OutcomeUnknown { last, .. } => last.message(),
            _ => None,
        }
    }

    /// Whether the endpoint could not be reached at all (nothing was sent).
    pub fn is_unreachable(&self) -> bool {
        match self {
            // An earlier attempt may have been applied: the endpoint being
            // unreachable now does not make the command "not sent".
            ClientError::Unreachable { .. } => true,
            _ => false,
        }
    }

    /// One line for a person: what the error means and what to do next.
    /// Complements the `Display` text, which says what happened.
    pub fn explanation(&self) -> String {
        match self {
            ClientError::InvalidEndpoint { .. } => {
                "give the endpoint as a URL such as http://127.0.0.1:7070".to_owned()
            }
            ClientError::InvalidConfig(_) => "fix the client configuration".to_owned(),
            ClientError::InvalidInput(_) => "fix the arguments; nothing was sent".to_owned(),
            ClientError::Unreachable { .. } => {
                "no node listens there: check the address, or start one with `wasmraft serve --dev`"
                    .to_owned()
            }
            ClientError::TimedOut { .. } => {
                "the node did not answer in time (it may be overloaded or without a quorum): a write it was sent may or may not have been applied; read the state before sending it again"
                    .to_owned()
            }
            ClientError::Transport { .. } => {
                "the connection to the node broke: a write it was sent may or may not have been applied; read the state before sending it again, and check the node's log if it persists"
                    .to_owned()
            }
            ClientError::OutcomeUnknown { .. } => {
                "the command applied at most once; query the module to see whether it took effect"
                    .to_owned()
            }
            ClientError::MissingField { .. } => {
                "the node speaks another version of the wasmraft.v1 API; upgrade the client or the node"
                    .to_owned()
            }
            ClientError::Randomness(_) => "the system's random source failed".to_owned(),
            ClientError::Status { .. } if super::retry::is_session_expired(self) => {
                "the server no longer accepts this session's sequence; use a new client id (a new session)"
                    .to_owned()
            }
            ClientError::Status {
                operation,
                code,
                leader_address,
                ..
            } => match (code, leader_address) {
                (Code::Unavailable, Some(leader)) => {
                    format!("the node cannot serve this now; the leader is at {leader}, retry")
                }
                _ => membership_explanation(operation, *code)
                    .or_else(|| access_explanation(operation, *code))
                    .unwrap_or_else(|| code_explanation(*code))
                    .to_owned(),
            },
        }
    }

    /// Builds the error for a failed call from tonic's status, telling a
    /// local transport failure (the status carries its cause as a source)
    /// from a status the server sent.
    pub(crate) fn from_status(
        endpoint: &str,
        operation: &'static str,
        timeout: Duration,
        status: tonic::Status,
    ) -> ClientError {
        if let Some(source) = status.source() {
            let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(source);
            while let Some(error) = cause {
                if error.is::<tonic::ConnectError>() {
                    return ClientError::Unreachable {
                        endpoint: endpoint.to_owned(),
                        reason: error_chain(error),
                    };
                }
                if error.is::<tonic::TimeoutExpired>() {
                    return ClientError::TimedOut {
                        endpoint: endpoint.to_owned(),
                        operation,
                        timeout,
                    };
                }
                cause = error.source();
            }
            return ClientError::Transport {
                endpoint: endpoint.to_owned(),
                operation,
                reason: error_chain(source),
            };
        }
        let leader_address = status
            .metadata()
            .get("wasmraft-leader-address")
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned);
        let retry_after = status
            .metadata()
            .get("retry-after-ms")
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.parse().ok())
            .map(Duration::from_millis);
        ClientError::Status {
            operation,
            code: status.code(),
            message: status.message().to_owned(),
            leader_address,
            retry_after,
        }
    }
}

/// An error and its causes, joined with `: `, without repeats (hyper and
/// tonic often wrap an error in one that displays the same text).
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut cause = Some(error);
    while let Some(error) = cause {
        let text = error.to_string();
        if !text.is_empty() && parts.last() != Some(&text) {
            parts.push(text);
        }
        cause = error.source();
    }
    parts.join(": ")
}

/// The canonical name of a gRPC code, as in the gRPC specification and the
/// `.proto` comments (`NOT_FOUND`, `FAILED_PRECONDITION`, …).
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// What a status code means for a wasmraft caller, following the `.proto`
/// comments.
/// Hints for membership changes, where the general ones would mislead.
fn membership_explanation(operation: &str, code: Code) -> Option<&'static str> {
    if !matches!(operation, "add node" | "remove node") {
        return None;
    }
    Some(match code {
        Code::FailedPrecondition => {
            "the cluster cannot make this change now (the message says why); the membership is unchanged"
        }
        Code::NotFound => "no member has that id; `wasmraft cluster status` lists the members",
        Code::AlreadyExists => "`wasmraft cluster status` lists the members and their addresses",
        Code::DeadlineExceeded => {
            "the change did not finish in time; `wasmraft cluster status` shows where it stands, and running the same command again finishes it"
        }
        _ => return None,
    })
}

fn access_explanation(operation: &str, code: Code) -> Option<&'static str> {
    Some(match (operation, code) {
        ("revoke", Code::NotFound) => {
            "no such binding: `wasmraft access list` shows them; give the subject, role and pattern exactly as granted"
        }
        ("revoke token", Code::NotFound) => {
            "no token has that id (it may be revoked already); the id is the 16 hex digits after `wr_`"
        }
        ("grant" | "revoke" | "create token" | "revoke token", Code::InvalidArgument) => {
            "the message says which part of the binding or subject to change"
        }
        _ => return None,
    })
}

fn code_explanation(code: Code) -> &'static str {
    match code {
        Code::InvalidArgument => {
            "the request was refused as invalid; the message says what to change"
        }
        Code::NotFound => "no such module or member; `wasmraft module list` shows what is deployed",
        Code::FailedPrecondition => {
            "the module refused the call (its error, a trap, a missing export) or the state does not allow it; nothing changed"
        }
        Code::ResourceExhausted => {
            "a limit was hit (fuel, memory, rate or size); the message names it"
        }
        Code::DeadlineExceeded => {
            "the cluster did not finish in time; retrying is safe for commands"
        }
        Code::Unavailable => "no leader is known right now (an election?); retry shortly",
        Code::Unauthenticated => "send valid credentials (--token or WASMRAFT_TOKEN)",
        Code::PermissionDenied => "your roles do not allow this; ask a cluster admin for a grant",
        Code::AlreadyExists => "it exists already",
        Code::Unimplemented => "this node does not implement the method yet; upgrade it",
        Code::OutOfRange => "the message is larger than the node accepts",
        Code::Internal | Code::DataLoss | Code::Unknown => {
            "the node failed internally; check its log"
        }
        Code::Cancelled | Code::Aborted => "the call was cancelled; retry",
        Code::Ok => "no error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_server_status_keeps_its_code_message_and_leader() {
        let mut status = tonic::Status::unavailable("no leader: node 2 is the leader");
        status.metadata_mut().insert(
            "wasmraft-leader-address",
            tonic::metadata::MetadataValue::from_static("10.0.0.2:7070"),
        );
        let error =
            ClientError::from_status("http://a:1", "invoke", Duration::from_secs(1), status);
        assert_eq!(error.code(), Some(Code::Unavailable));
        assert_eq!(error.message(), Some("no leader: node 2 is the leader"));
        assert_eq!(
            error.to_string(),
            "invoke: UNAVAILABLE: no leader: node 2 is the leader"
        );
        assert!(error.explanation().contains("10.0.0.2:7070"));
        assert!(!error.is_unreachable());
    }

    #[test]
    fn a_connect_error_is_unreachable() {
        let status = tonic::Status::from_error(Box::new(tonic::ConnectError(
            "tcp connect error: Connection refused".into(),
        )));
        let error =
            ClientError::from_status("http://a:1", "invoke", Duration::from_secs(1), status);
        assert!(error.is_unreachable(), "{error:?}");
        assert!(error.to_string().starts_with("cannot reach http://a:1: "));
    }

    #[test]
    fn a_local_timeout_is_timed_out() {
        let status = tonic::Status::from_error(Box::new(tonic::TimeoutExpired(())));
        let error =
            ClientError::from_status("http://a:1", "query", Duration::from_millis(1500), status);
        assert!(matches!(error, ClientError::TimedOut { .. }), "{error:?}");
        assert_eq!(
            error.to_string(),
            "query to http://a:1 timed out after 1500 ms"
        );
    }

    #[test]
    fn code_names_are_canonical() {
        assert_eq!(code_name(Code::FailedPrecondition), "FAILED_PRECONDITION");
        assert_eq!(code_name(Code::NotFound), "NOT_FOUND");
    }
}
