//! Deterministic checks of a command's fields: the edge runs them before a
//! command reaches the log, and apply runs them again on every command,
//! whatever its origin (a forwarded or hand-made entry skipped the edge), so
//! an invalid command is a refusal on every replica, never a panic or a
//! misread key.

use super::{AccessChange, Command, Request};

/// The longest module name.
pub const MODULE_NAME_BYTES_MAX: usize = 64;
/// The longest client id of a session.
pub const CLIENT_ID_BYTES_MAX: usize = 128;
/// The longest caller identity a command may carry.
pub const CALLER_BYTES_MAX: usize = 1024;

/// Why a module name is refused, or `Ok`.
pub fn module_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("it is empty");
    }
    if name.len() > MODULE_NAME_BYTES_MAX {
        return Err("it is longer than 64 characters");
    }
    if !name.starts_with(|c: char| c.is_ascii_lowercase()) {
        return Err("it must start with a letter a-z");
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
    {
        return Err("it contains a character other than a-z, 0-9, `-` and `_`");
    }
    Ok(())
}

/// Why a session's client id is refused, or `Ok`.
pub fn client_id(client_id: &str) -> Result<(), String> {
    if client_id.is_empty() {
        return Err("client_id is empty".to_owned());
    }
    if client_id.len() > CLIENT_ID_BYTES_MAX {
        return Err(format!(
            "client_id is {} bytes, longer than {CLIENT_ID_BYTES_MAX}",
            client_id.len()
        ));
    }
    if client_id.chars().any(char::is_control) {
        return Err("client_id contains a control character".to_owned());
    }
    Ok(())
}

/// The longest name a client may ask a session to be opened under: room is
/// left for the log position the cluster appends.
pub const SESSION_PREFIX_BYTES_MAX: usize = 96;

/// Why a requested session name is refused, or `Ok`.
pub fn session_prefix(prefix: &str) -> Result<(), String> {
    client_id(prefix)?;
    if prefix.len() > SESSION_PREFIX_BYTES_MAX {
        return Err(format!(
            "client_id is {} bytes, longer than {SESSION_PREFIX_BYTES_MAX} for a session to open",
            prefix.len()
        ));
    }
    Ok(())
}

/// The name of the session opened by the command at `index`, `position`.
pub fn session_name(prefix: &str, index: u64, position: u32) -> String {
    format!("{prefix}.{index}.{position}")
}

/// Why a caller identity is refused, or `Ok`. Session keys join the caller
/// and the client id with a zero byte, so the caller may not contain one.
pub fn caller(caller: &str) -> Result<(), String> {
    if caller.len() > CALLER_BYTES_MAX {
        return Err(format!(
            "the caller is {} bytes, longer than {CALLER_BYTES_MAX}",
            caller.len()
        ));
    }
    if caller.chars().any(char::is_control) {
        return Err("the caller contains a control character".to_owned());
    }
    Ok(())
}

/// Checks one (non-batch) request as apply sees it: the reason it is
/// refused, or `Ok`. Batches are checked command by command.
pub fn request(request: &Request) -> Result<(), String> {
    caller(&request.caller)?;
    let name = |name: &str| {
        module_name(name).map_err(|reason| {
            format!(
                "invalid module name `{}`: {reason}",
                name.escape_debug().take(80).collect::<String>()
            )
        })
    };
    match &request.command {
        Command::Deploy(deploy) => name(&deploy.name),
        Command::Remove { name: module } => name(module),
        Command::Invoke(invoke) => {
            name(&invoke.module)?;
            match &invoke.session {
                Some(session) if session.sequence == 0 => {
                    Err("a session's sequence starts at 1".to_owned())
                }
                Some(session) => client_id(&session.client_id),
                None => Ok(()),
            }
        }
        Command::Access(AccessChange::Grant(rule) | AccessChange::Revoke(rule)) => {
            caller(&rule.subject)
        }
        Command::OpenSession { client_id: id } => session_prefix(id),
        Command::Batch(_) | Command::Settings(_) => Ok(()),
        Command::ClusterId { cluster_id: id } => cluster_id(id),
    }
}

/// The most characters of a cluster id.
pub const CLUSTER_ID_CHARS_MAX: usize = 64;

/// A cluster id: 1 to [`CLUSTER_ID_CHARS_MAX`] lowercase ASCII letters,
/// digits and `-`, so it travels as gRPC metadata and reads in a log line.
/// A bootstrap makes one of 32 hex digits (128 random bits).
pub fn cluster_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > CLUSTER_ID_CHARS_MAX {
        return Err(format!(
            "a cluster id has 1 to {CLUSTER_ID_CHARS_MAX} characters, not {}",
            id.len()
        ));
    }
    if !id
        .bytes()
        .all(|byte| byte.is_ascii_lowercase() || byte.is_ascii_digit() || byte == b'-')
    {
        return Err("a cluster id holds only a-z, 0-9 and `-`".to_owned());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Invoke, SessionId};

    fn invoke(module: &str, caller: &str, session: Option<SessionId>) -> Request {
        Request {
            timestamp_ms: 0,
            caller: caller.to_owned(),
            command: Command::Invoke(Invoke {
                module: module.to_owned(),
                input: Vec::new(),
                session,
            }),
        }
    }

    #[test]
    fn apply_refuses_what_the_edge_would_have() {
        let session = |client_id: &str, sequence| {
            Some(SessionId {
                client_id: client_id.to_owned(),
                sequence,
            })
        };
        let rows: &[(Request, Result<(), &str>)] = &[
            (invoke("counter", "alice", None), Ok(())),
            (invoke("counter", "alice", session("c1", 1)), Ok(())),
            (
                invoke("counter\0x", "alice", None),
                Err(
                    "invalid module name `counter\\0x`: it contains a character other than a-z, 0-9, `-` and `_`",
                ),
            ),
            (
                invoke("", "alice", None),
                Err("invalid module name ``: it is empty"),
            ),
            (
                invoke("counter", "al\0ice", None),
                Err("the caller contains a control character"),
            ),
            (
                invoke("counter", "alice", session("c1", 0)),
                Err("a session's sequence starts at 1"),
            ),
            (
                invoke("counter", "alice", session("", 1)),
                Err("client_id is empty"),
            ),
        ];
        for (row, expected) in rows {
            assert_eq!(
                request(row).as_ref().map_err(String::as_str).copied(),
                *expected,
                "{row:?}"
            );
        }
    }
}
