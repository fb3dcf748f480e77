//! Deterministic checks of a command's fields: the edge runs them before a
//! command reaches the log, and apply runs them again on every command,
//! whatever its origin (a forwarded or hand-made entry skipped the edge), so
//! an invalid command is a refusal on every replica, never a panic or a
//! misread key.

use super::{AccessChange, AccessRule, Command, Request, TokenGrant};

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
    command(&request.command)
}

fn command(command: &Command) -> Result<(), String> {
    let name = |name: &str| {
        module_name(name).map_err(|reason| {
            format!(
                "invalid module name `{}`: {reason}",
                name.escape_debug().take(80).collect::<String>()
            )
        })
    };
    match command {
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
        Command::Access(change) => access_change(change),
        Command::OpenSession { client_id: id } => session_prefix(id),
        Command::Batch(_) | Command::Settings(_) | Command::ChangeSettings(_) => Ok(()),
        Command::ClusterId { cluster_id: id } => cluster_id(id),
        Command::Authorized(authorized) => {
            if let Some(id) = &authorized.token_id {
                token_id(id)?;
            }
            match &authorized.command {
                Command::Batch(_) | Command::Authorized(_) | Command::Traced(_) => {
                    Err("an authorised command holds one plain command".to_owned())
                }
                inner => self::command(inner),
            }
        }
        Command::Traced(traced) => match &traced.command {
            Command::Batch(_) | Command::Traced(_) => {
                Err("a traced command holds one command, plain or authorised".to_owned())
            }
            inner => self::command(inner),
        },
    }
}

fn access_change(change: &AccessChange) -> Result<(), String> {
    match change {
        AccessChange::Grant(rule) | AccessChange::Revoke(rule) => access_rule(rule),
        AccessChange::CreateToken(grant) | AccessChange::Bootstrap(grant) => token_grant(grant),
        AccessChange::RevokeToken { token_id: id } => token_id(id),
    }
}

/// The role that may do everything.
pub const CLUSTER_ADMIN: &str = "cluster_admin";
/// The roles that apply to every module and the cluster itself.
pub const CLUSTER_ROLES: [&str; 3] = [CLUSTER_ADMIN, "cluster_operator", "cluster_viewer"];
/// The roles that apply to the modules a pattern matches.
pub const MODULE_ROLES: [&str; 3] = ["module_deployer", "module_invoker", "module_querier"];

/// The longest subject (a token's owner, a certificate's common name).
pub const SUBJECT_BYTES_MAX: usize = 128;

/// Why a subject is refused, or `Ok`: 1 to [`SUBJECT_BYTES_MAX`] ASCII
/// letters, digits and `. _ - @ : + = /`, so that a subject reads the same
/// in a log line, a policy file and a certificate's common name.
pub fn subject(subject: &str) -> Result<(), String> {
    if subject.is_empty() || subject.len() > SUBJECT_BYTES_MAX {
        return Err(format!(
            "a subject has 1 to {SUBJECT_BYTES_MAX} characters, not {}",
            subject.len()
        ));
    }
    if let Some(bad) = subject
        .chars()
        .find(|&c| !(c.is_ascii_alphanumeric() || "._-@:+=/".contains(c)))
    {
        return Err(format!(
            "subject `{}` contains {bad:?}: a subject holds only ASCII letters, digits and `. _ - @ : + = /`",
            subject.escape_debug().take(80).collect::<String>()
        ));
    }
    Ok(())
}

/// Why a module pattern is refused, or `Ok`: a module name in which `*`
/// stands for any run of characters (`bank-*`, `*-test`, `*`). Nothing
/// else is special, so no pattern can fail to compile in a matcher.
pub fn module_pattern(pattern: &str) -> Result<(), String> {
    if pattern.is_empty() || pattern.len() > MODULE_NAME_BYTES_MAX {
        return Err(format!(
            "a module pattern has 1 to {MODULE_NAME_BYTES_MAX} characters, not {}",
            pattern.len()
        ));
    }
    if let Some(bad) = pattern
        .chars()
        .find(|&c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || "-_*".contains(c)))
    {
        return Err(format!(
            "module pattern `{}` contains {bad:?}: a pattern holds a-z, 0-9, `-`, `_` and `*` (any run of characters)",
            pattern.escape_debug().take(80).collect::<String>()
        ));
    }
    Ok(())
}

/// Whether `name` is matched by `pattern` (as [`module_pattern`] allows):
/// `*` matches any run of characters, everything else itself.
pub fn pattern_matches(pattern: &str, name: &str) -> bool {
    let mut parts = pattern.split('*');
    // `split` yields at least one part.
    let first = parts.next().unwrap_or_default();
    let Some(mut rest) = name.strip_prefix(first) else {
        return false;
    };
    let mut parts: Vec<&str> = parts.collect();
    let Some(last) = parts.pop() else {
        // No `*`: the whole name must have been the prefix.
        return rest.is_empty();
    };
    for part in parts {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.ends_with(last)
}

/// Whether `name` is a module role (`Ok(true)`) or a cluster role
/// (`Ok(false)`), or why it is neither.
pub fn role(name: &str) -> Result<bool, String> {
    if MODULE_ROLES.contains(&name) {
        return Ok(true);
    }
    if CLUSTER_ROLES.contains(&name) {
        return Ok(false);
    }
    Err(format!(
        "unknown role `{}`: the roles are {}",
        name.escape_debug().take(80).collect::<String>(),
        CLUSTER_ROLES
            .iter()
            .chain(&MODULE_ROLES)
            .copied()
            .collect::<Vec<_>>()
            .join(", ")
    ))
}

/// Why a role binding is refused, or `Ok`: a valid subject, a known role,
/// and a pattern exactly when the role is a module role.
pub fn access_rule(rule: &AccessRule) -> Result<(), String> {
    subject(&rule.subject)?;
    let module_role = role(&rule.role)?;
    match (&rule.module_pattern, module_role) {
        (Some(pattern), true) => module_pattern(pattern),
        (None, true) => Err(format!(
            "role `{}` needs a module pattern (a module name, `prefix-*` or `*`)",
            rule.role
        )),
        (Some(_), false) => Err(format!(
            "role `{}` applies to the whole cluster and takes no module pattern",
            rule.role
        )),
        (None, false) => Ok(()),
    }
}

/// The characters of a token id: 16 hex digits (64 random bits).
pub const TOKEN_ID_CHARS: usize = 16;

/// Why a token id is refused, or `Ok`.
pub fn token_id(id: &str) -> Result<(), String> {
    if id.len() != TOKEN_ID_CHARS
        || !id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return Err(format!(
            "token id `{}` is not {TOKEN_ID_CHARS} lowercase hex digits",
            id.escape_debug().take(80).collect::<String>()
        ));
    }
    Ok(())
}

fn token_grant(grant: &TokenGrant) -> Result<(), String> {
    token_id(&grant.token_id)?;
    subject(&grant.subject)
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

    #[test]
    fn module_patterns_match_as_documented() {
        let rows = [
            ("bank-*", "bank-eu", true),
            ("bank-*", "bank-", true),
            ("bank-*", "bank", false),
            ("bank-*", "xbank-eu", false),
            ("*-test", "kv-test", true),
            ("*-test", "kv-test2", false),
            ("*", "anything", true),
            ("a*b*c", "abc", true),
            ("a*b*c", "axxbyyc", true),
            ("a*b*c", "acb", false),
            ("a*a", "a", false),
            ("counter", "counter", true),
            ("counter", "counters", false),
            ("**", "x", true),
        ];
        for (pattern, name, expected) in rows {
            assert_eq!(
                pattern_matches(pattern, name),
                expected,
                "{pattern} ~ {name}"
            );
        }
    }

    #[test]
    fn role_bindings_are_checked_before_they_are_stored() {
        let rule = |subject: &str, role: &str, pattern: Option<&str>| AccessRule {
            subject: subject.to_owned(),
            role: role.to_owned(),
            module_pattern: pattern.map(str::to_owned),
        };
        assert_eq!(access_rule(&rule("alice", "cluster_viewer", None)), Ok(()));
        assert_eq!(
            access_rule(&rule("app@eu", "module_invoker", Some("bank-*"))),
            Ok(())
        );
        for (bad, says) in [
            (rule("", "cluster_viewer", None), "1 to 128 characters"),
            (rule("a,b", "cluster_viewer", None), "contains ','"),
            (rule("alice", "root", None), "unknown role `root`"),
            (
                rule("alice", "module_invoker", None),
                "needs a module pattern",
            ),
            (
                rule("alice", "cluster_admin", Some("*")),
                "takes no module pattern",
            ),
            (
                rule("alice", "module_invoker", Some("bank[")),
                "contains '['",
            ),
            (
                rule("alice", "module_invoker", Some("{a,b}")),
                "contains '{'",
            ),
            (
                rule("alice", "module_invoker", Some("")),
                "1 to 64 characters",
            ),
        ] {
            let refused = access_rule(&bad).unwrap_err();
            assert!(refused.contains(says), "{bad:?}: {refused}");
        }
    }
}
