//! The one mapping from wasmraft's errors and call outcomes to gRPC statuses,
//! following the `proto/wasmraft/v1` comments. Every handler returns an
//! [`ApiError`]; only this module chooses a code.
//!
//! | error or outcome | gRPC code | message |
//! |---|---|---|
//! | bad module name, session, consistency, deploy header or stream; size or sha256 mismatch | `INVALID_ARGUMENT` | the reason |
//! | input, init argument or module over its cap (`limits.payload_bytes_max`, the cluster setting `module_bytes_max`) | `INVALID_ARGUMENT` | size, limit and setting name |
//! | module fails validation (not wasm, forbidden import, bad exports, …) | `INVALID_ARGUMENT` | `module rejected: ` + the validator's reason |
//! | unknown module (`Refusal::ModuleNotFound`, query of an undeployed module) | `NOT_FOUND` | `module `x` is not deployed` |
//! | `Refusal::InvalidModule`, `Refusal::HashMismatch`, `Refusal::InvalidCommand` (at apply) | `INVALID_ARGUMENT` | the reason |
//! | `Refusal::SetupFailed` (`init`/`migrate` failed) | `FAILED_PRECONDITION` | the setup outcome |
//! | `Refusal::SessionExpired` (sequence older than the session's) | `FAILED_PRECONDITION` | client id, sequence, what to do |
//! | `CallOutcome::GuestError` (the module's `Err` / abort) | `FAILED_PRECONDITION` | the module's message and fuel used |
//! | `CallOutcome::Trap` | `FAILED_PRECONDITION` | trap kind, message, fuel used |
//! | `CallOutcome::MissingExport` (query on a module without `query`) | `FAILED_PRECONDITION` | the missing export |
//! | `CallOutcome::OutOfFuel` | `RESOURCE_EXHAUSTED` | `out of fuel`, the fuel limit and fuel used |
//! | `CallOutcome::MemoryLimit` | `RESOURCE_EXHAUSTED` | `memory limit`, the limit in bytes and fuel used |
//! | `CallOutcome::OutputTooLarge` | `RESOURCE_EXHAUSTED` | the output limit (the cluster setting `output_bytes_max`) |
//! | `CallOutcome::StorageQuota` (writes past the module's quota; none committed) | `RESOURCE_EXHAUSTED` | the usage it would reach, the quota and its settings |
//! | `CallOutcome::TimedOut` (query wall clock) | `DEADLINE_EXCEEDED` | the limit (`limits.query_timeout_ms`) |
//! | `ConsensusError::NotLeader` | `UNAVAILABLE` | the leader's id and address if known (also in metadata `wasmraft-leader-id`, `wasmraft-leader-address`) |
//! | `ConsensusError::NoQuorum`, `ShuttingDown` | `UNAVAILABLE` | the reason; retry |
//! | `ConsensusError::LeaderUnreachable` (a follower could not forward) | `UNAVAILABLE` | the leader, the failure; retry with the same session |
//! | `ConsensusError::Timeout` (no commit in time) | `DEADLINE_EXCEEDED` | what timed out; retry with the same session |
//! | `ConsensusError::Membership` | `FAILED_PRECONDITION` | the reason |
//! | `ConsensusError::Fatal`, storage failure, unexpected response | `INTERNAL` | the failure |
//! | `MembershipError::Rule`, `BadAddress` | `INVALID_ARGUMENT` | the reason |
//! | `MembershipError::AlreadyMember`, `AddressInUse` | `ALREADY_EXISTS` | the member holding the id or address |
//! | `MembershipError::NotMember` | `NOT_FOUND` | the id |
//! | `MembershipError::Unreachable`, `WrongId`, `EngineMismatch`, `OtherCluster`, `HasData`, `LastVoter`, `InProgress` | `FAILED_PRECONDITION` | what to do |
//! | `MembershipError::NotCaughtUp` | `DEADLINE_EXCEEDED` | the node stays a learner; ask again |
//! | `MembershipError::NotApplied` | `DEADLINE_EXCEEDED` | the node is a voter that has not applied up to its promotion yet |
//! | `MembershipError::Consensus` | as the `ConsensusError` | |
//! | Raft message in an unknown encoding version | `FAILED_PRECONDITION` | both versions |
//! | malformed Raft message | `INVALID_ARGUMENT` | the decode error |
//! | no credential, a malformed, unknown or revoked token, a peer credential of another secret (`Denied::Unauthenticated`); a token revoked while its command was in flight (`Refusal::TokenRevoked`) | `UNAUTHENTICATED` | what is wrong, what to send |
//! | a valid credential without the permission (`Denied::PermissionDenied`); a permission revoked while the command was in flight (`Refusal::PermissionDenied`) | `PERMISSION_DENIED` | who may not do what, and the roles that may |
//! | revoking a binding or a token that does not exist | `NOT_FOUND` | what was not found |
//! | method not built yet | `UNIMPLEMENTED` | what comes when |
//! | a local admission limit (`admission::Shed`: query threads, rates, calls and request bytes in flight, deploy uploads) | `RESOURCE_EXHAUSTED` | the limit and what the node was doing; metadata `retry-after-ms` |
//! | a deploy stream idle past `limits.deploy_idle_timeout_ms` (`ApiError::StreamIdle`) | `DEADLINE_EXCEEDED` | the limit |
//!
//! Messages above tonic's decoding limit never reach a handler: tonic
//! answers `OUT_OF_RANGE` itself. The limit sits above every cap here, so a
//! request over a cap but under the limit gets the `INVALID_ARGUMENT` above.

use tonic::metadata::MetadataValue;

use crate::admission::Shed;
use crate::auth::Denied;
use tonic::{Code, Status};

use super::validate::InputError;
use crate::command::{CallOutcome, CallResult, Refusal};
use crate::node::membership::MembershipError;
use crate::node::{ConsensusError, LeaderHint};
use crate::raft::network::wire::WireError;
use crate::storage::QueryError;
use crate::wasm::ValidationError;

/// Everything an API call can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    Input(#[from] InputError),
    #[error("module rejected: {0}")]
    InvalidModule(ValidationError),
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// A guest call that did not end with `Ok` (never built with an `Ok`).
    #[error("{}", call_failure(.module, .result, *.query_timeout_ms))]
    CallFailed {
        module: String,
        result: CallResult,
        /// The query time limit, named when a query timed out.
        query_timeout_ms: u64,
    },
    #[error(transparent)]
    Consensus(#[from] ConsensusError),
    #[error(transparent)]
    Membership(#[from] MembershipError),
    #[error(transparent)]
    Wire(#[from] WireError),
    #[error("storage failure: {0}")]
    Storage(String),
    /// The node has no capacity for the request right now; a retry may succeed.
    #[error("the node is busy, retry: {0}")]
    Busy(String),
    /// A local admission limit turned the request away.
    #[error(transparent)]
    Shed(#[from] Shed),
    #[error("internal error: {0}")]
    Internal(String),
    #[error("{0}")]
    Unimplemented(&'static str),
    #[error(transparent)]
    Denied(#[from] Denied),
    #[error("{0}")]
    NotFound(String),
    /// A deploy stream paused longer than `limits.deploy_idle_timeout_ms`.
    #[error(
        "the deploy stream sent nothing for {idle_ms} ms (limits.deploy_idle_timeout_ms); send the wasm without pauses"
    )]
    StreamIdle { idle_ms: u64 },
}

impl From<redb::Error> for ApiError {
    fn from(error: redb::Error) -> Self {
        ApiError::Storage(error.to_string())
    }
}

impl From<QueryError> for ApiError {
    fn from(error: QueryError) -> Self {
        match error {
            QueryError::Storage(error) => error.into(),
            QueryError::Busy(reason) => ApiError::Busy(reason),
            QueryError::Host(failure) => ApiError::Internal(failure.to_string()),
        }
    }
}

impl From<ApiError> for Status {
    fn from(error: ApiError) -> Self {
        to_status(&error)
    }
}

/// The gRPC code of an error: the mapping table above.
pub fn code(error: &ApiError) -> Code {
    match error {
        // An oversized input or module is a bad request, not a spent budget:
        // INVALID_ARGUMENT, with the size and the limit in the message.
        ApiError::Input(_) => Code::InvalidArgument,
        ApiError::InvalidModule(_) => Code::InvalidArgument,
        ApiError::Refused(refusal) => match refusal {
            Refusal::ModuleNotFound(_) => Code::NotFound,
            Refusal::InvalidModule(_)
            | Refusal::HashMismatch
            | Refusal::NestedBatch
            | Refusal::InvalidCommand(_)
            | Refusal::InvalidSetting(_) => Code::InvalidArgument,
            Refusal::SetupFailed(_) | Refusal::SessionExpired { .. } => Code::FailedPrecondition,
            Refusal::TokenRevoked { .. } => Code::Unauthenticated,
            Refusal::PermissionDenied { .. } => Code::PermissionDenied,
        },
        ApiError::CallFailed { result, .. } => match &result.outcome {
            CallOutcome::GuestError(_)
            | CallOutcome::Trap { .. }
            | CallOutcome::MissingExport(_) => Code::FailedPrecondition,
            CallOutcome::OutOfFuel { .. }
            | CallOutcome::MemoryLimit { .. }
            | CallOutcome::OutputTooLarge { .. }
            | CallOutcome::StorageQuota { .. } => Code::ResourceExhausted,
            CallOutcome::TimedOut => Code::DeadlineExceeded,
            // Never built from a success; if it were, it is our bug.
            CallOutcome::Ok(_) => Code::Internal,
        },
        ApiError::Consensus(error) => consensus_code(error),
        ApiError::Membership(error) => match error {
            MembershipError::Rule(_) | MembershipError::BadAddress { .. } => Code::InvalidArgument,
            MembershipError::AlreadyMember { .. } | MembershipError::AddressInUse { .. } => {
                Code::AlreadyExists
            }
            MembershipError::NotMember(_) => Code::NotFound,
            MembershipError::Unreachable { .. }
            | MembershipError::WrongId { .. }
            | MembershipError::EngineMismatch { .. }
            | MembershipError::OtherCluster { .. }
            | MembershipError::HasData { .. }
            | MembershipError::LastVoter(_)
            | MembershipError::InProgress => Code::FailedPrecondition,
            MembershipError::NotCaughtUp { .. } | MembershipError::NotApplied { .. } => {
                Code::DeadlineExceeded
            }
            MembershipError::Consensus(error) => consensus_code(error),
        },
        ApiError::Wire(WireError::UnknownEncoding { .. }) => Code::FailedPrecondition,
        ApiError::Wire(WireError::Malformed(_) | WireError::Invalid(_)) => Code::InvalidArgument,
        ApiError::Storage(_) | ApiError::Internal(_) => Code::Internal,
        ApiError::Busy(_) => Code::Unavailable,
        ApiError::Shed(_) => Code::ResourceExhausted,
        ApiError::Unimplemented(_) => Code::Unimplemented,
        ApiError::Denied(denied) => denied_code(denied),
        ApiError::NotFound(_) => Code::NotFound,
        ApiError::StreamIdle { .. } => Code::DeadlineExceeded,
    }
}

fn denied_code(denied: &Denied) -> Code {
    match denied {
        Denied::Unauthenticated(_) => Code::Unauthenticated,
        Denied::PermissionDenied(_) => Code::PermissionDenied,
    }
}

fn consensus_code(error: &ConsensusError) -> Code {
    match error {
        ConsensusError::NotLeader { .. }
        | ConsensusError::NoQuorum { .. }
        | ConsensusError::ShuttingDown
        | ConsensusError::LeaderUnreachable { .. } => Code::Unavailable,
        ConsensusError::Timeout { .. } => Code::DeadlineExceeded,
        ConsensusError::Membership(_) | ConsensusError::Removed { .. } => Code::FailedPrecondition,
        ConsensusError::Fatal(_) => Code::Internal,
        ConsensusError::Denied(denied) => denied_code(denied),
    }
}

/// The longest status message sent. A message travels in an HTTP/2 trailer,
/// percent-encoded (up to three bytes per byte): past about 16 KiB the
/// trailer breaks and the client sees a protocol error instead of the status.
pub const STATUS_MESSAGE_BYTES_MAX: usize = 4 * 1024;

/// `message` cut to [`STATUS_MESSAGE_BYTES_MAX`] bytes on a character
/// boundary, saying how long the whole was.
pub fn bounded_message(message: String) -> String {
    if message.len() <= STATUS_MESSAGE_BYTES_MAX {
        return message;
    }
    let suffix = format!(" … [truncated: {} bytes in all]", message.len());
    let mut cut = STATUS_MESSAGE_BYTES_MAX - suffix.len();
    while !message.is_char_boundary(cut) {
        cut -= 1;
    }
    let mut bounded = message;
    bounded.truncate(cut);
    bounded.push_str(&suffix);
    bounded
}

/// The status of an error: its code, its message (at most
/// [`STATUS_MESSAGE_BYTES_MAX`] bytes), and for a follower the leader in
/// metadata so a client can retry there.
pub fn to_status(error: &ApiError) -> Status {
    let mut status = Status::new(code(error), bounded_message(error.to_string()));
    if let ApiError::Shed(shed) = error {
        status
            .metadata_mut()
            .insert("retry-after-ms", MetadataValue::from(shed.retry_after_ms));
    }
    if let ApiError::Consensus(ConsensusError::NotLeader {
        leader: Some(LeaderHint { id, address }),
        ..
    }) = error
    {
        let metadata = status.metadata_mut();
        metadata.insert("wasmraft-leader-id", MetadataValue::from(*id));
        if let Some(value) = address
            .as_deref()
            .and_then(|address| MetadataValue::try_from(address).ok())
        {
            metadata.insert("wasmraft-leader-address", value);
        }
    }
    status
}

fn call_failure(module: &str, result: &CallResult, query_timeout_ms: u64) -> String {
    let fuel_used = result.fuel_used;
    match &result.outcome {
        CallOutcome::GuestError(message) => {
            format!("module `{module}` returned an error: {message} (fuel used {fuel_used})")
        }
        CallOutcome::Trap { kind, message } => {
            format!("module `{module}` trapped ({kind}): {message} (fuel used {fuel_used})")
        }
        CallOutcome::MissingExport(export) => {
            format!("module `{module}` has no `{export}` export")
        }
        CallOutcome::OutOfFuel { limit } => format!(
            "module `{module}` ran out of fuel: used {fuel_used} of its limit of {limit} (fuel_per_call_max)"
        ),
        CallOutcome::MemoryLimit { limit_bytes } => format!(
            "module `{module}` hit its memory limit of {limit_bytes} bytes (memory_bytes_max; fuel used {fuel_used})"
        ),
        CallOutcome::OutputTooLarge { limit_bytes } => format!(
            "module `{module}` produced an output larger than {limit_bytes} bytes (cluster setting output_bytes_max; fuel used {fuel_used})"
        ),
        CallOutcome::TimedOut => format!(
            "the query of module `{module}` ran longer than {query_timeout_ms} ms (limits.query_timeout_ms; fuel used {fuel_used})"
        ),
        CallOutcome::StorageQuota {
            bytes,
            keys,
            bytes_max,
            keys_max,
        } => format!(
            "module `{module}` is at its storage quota: this call's writes would make it hold {bytes} bytes in {keys} keys, past {bytes_max} bytes or {keys_max} keys (cluster settings module_storage_bytes_max, module_storage_keys_max); none of them was written, delete keys or raise the quota (fuel used {fuel_used})"
        ),
        CallOutcome::Ok(_) => format!("module `{module}` succeeded but was reported as a failure"),
    }
}

/// The output of a guest call, or its failure as an [`ApiError`].
pub fn call_output(
    module: &str,
    result: CallResult,
    query_timeout_ms: u64,
) -> Result<(Vec<u8>, u64), ApiError> {
    match result.outcome {
        CallOutcome::Ok(output) => Ok((output, result.fuel_used)),
        _ => Err(ApiError::CallFailed {
            module: module.to_owned(),
            result,
            query_timeout_ms,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::codec::CodecError;
    use crate::raft::{ChangeRefused, FatalError};

    fn failed(outcome: CallOutcome) -> ApiError {
        ApiError::CallFailed {
            module: "counter".into(),
            result: CallResult {
                outcome,
                fuel_used: 1234,
            },
            query_timeout_ms: 5000,
        }
    }

    /// One row per core error: the code and a fragment of the message.
    #[test]
    fn mapping_table() {
        let rows: Vec<(ApiError, Code, &str)> = vec![
            (
                InputError::ModuleName {
                    name: "Bad".into(),
                    reason: "it must start with a letter a-z",
                }
                .into(),
                Code::InvalidArgument,
                "invalid module name `Bad`",
            ),
            (
                InputError::TooLarge {
                    what: "the input",
                    size_bytes: 2_000_000,
                    limit_bytes: 1_048_576,
                    setting: "limits.payload_bytes_max",
                }
                .into(),
                Code::InvalidArgument,
                "the input is 2000000 bytes, above the limit of 1048576 bytes (limits.payload_bytes_max)",
            ),
            (
                InputError::Session("sequence must start at 1 when a client_id is set".into())
                    .into(),
                Code::InvalidArgument,
                "invalid session: sequence must start at 1",
            ),
            (
                InputError::HashMismatch {
                    announced: "aa".into(),
                    computed: "bb".into(),
                }
                .into(),
                Code::InvalidArgument,
                "truncated or corrupted",
            ),
            (
                InputError::Consistency(9).into(),
                Code::InvalidArgument,
                "unknown consistency value 9",
            ),
            (
                ApiError::InvalidModule(ValidationError::ForeignImport {
                    module: "wasi_snapshot_preview1".into(),
                    name: "fd_write".into(),
                }),
                Code::InvalidArgument,
                "module rejected: ",
            ),
            (
                ApiError::InvalidModule(ValidationError::TooLarge {
                    size_bytes: 10,
                    limit_bytes: 5,
                }),
                Code::InvalidArgument,
                "module size cap",
            ),
            (
                Refusal::ModuleNotFound("nope".into()).into(),
                Code::NotFound,
                "module `nope` is not deployed",
            ),
            (
                Refusal::InvalidModule("bad import".into()).into(),
                Code::InvalidArgument,
                "module rejected: bad import",
            ),
            (
                Refusal::HashMismatch.into(),
                Code::InvalidArgument,
                "sha256",
            ),
            (
                Refusal::SetupFailed("guest error: no".into()).into(),
                Code::FailedPrecondition,
                "module setup failed: guest error: no",
            ),
            (
                Refusal::SessionExpired {
                    client_id: "c1".into(),
                    sequence: 3,
                }
                .into(),
                Code::FailedPrecondition,
                "sequence 3 of client `c1`",
            ),
            (
                failed(CallOutcome::GuestError("insufficient funds".into())),
                Code::FailedPrecondition,
                "module `counter` returned an error: insufficient funds (fuel used 1234)",
            ),
            (
                failed(CallOutcome::Trap {
                    kind: "unreachable".into(),
                    message: "wasm trap".into(),
                }),
                Code::FailedPrecondition,
                "module `counter` trapped (unreachable): wasm trap (fuel used 1234)",
            ),
            (
                failed(CallOutcome::MissingExport("query".into())),
                Code::FailedPrecondition,
                "has no `query` export",
            ),
            (
                failed(CallOutcome::OutOfFuel { limit: 1000 }),
                Code::ResourceExhausted,
                "ran out of fuel: used 1234 of its limit of 1000",
            ),
            (
                failed(CallOutcome::MemoryLimit { limit_bytes: 65536 }),
                Code::ResourceExhausted,
                "memory limit of 65536 bytes",
            ),
            (
                failed(CallOutcome::OutputTooLarge { limit_bytes: 1024 }),
                Code::ResourceExhausted,
                "cluster setting output_bytes_max",
            ),
            (
                failed(CallOutcome::TimedOut),
                Code::DeadlineExceeded,
                "ran longer than 5000 ms (limits.query_timeout_ms",
            ),
            (
                ConsensusError::NotLeader {
                    this: 2,
                    leader: Some(LeaderHint {
                        id: 1,
                        address: Some("127.0.0.1:7070".into()),
                    }),
                }
                .into(),
                Code::Unavailable,
                "the leader is node 1 at 127.0.0.1:7070",
            ),
            (
                ConsensusError::NotLeader {
                    this: 2,
                    leader: None,
                }
                .into(),
                Code::Unavailable,
                "knows no leader",
            ),
            (
                ConsensusError::NoQuorum {
                    voters: "{1, 2, 3}".into(),
                    reached: vec![1],
                }
                .into(),
                Code::Unavailable,
                "cannot reach a quorum of voters ({1, 2, 3}): only nodes [1] answered",
            ),
            (
                ConsensusError::ShuttingDown.into(),
                Code::Unavailable,
                "shutting down",
            ),
            (
                ConsensusError::Timeout {
                    what: "the write".into(),
                    after_ms: 10_000,
                }
                .into(),
                Code::DeadlineExceeded,
                "the write did not complete within 10000 ms",
            ),
            (
                ConsensusError::Membership(ChangeRefused::LearnerNotFound { id: 4 }).into(),
                Code::FailedPrecondition,
                "membership change refused: node 4 is not a learner",
            ),
            (
                ConsensusError::Fatal(FatalError::Storage {
                    detail: "disk gone".into(),
                })
                .into(),
                Code::Internal,
                "fatal error: storage failed: disk gone",
            ),
            (
                ConsensusError::LeaderUnreachable {
                    this: 2,
                    leader: 1,
                    address: "10.0.0.1:7070".into(),
                    reason: "connection refused".into(),
                }
                .into(),
                Code::Unavailable,
                "the leader, node 1 at 10.0.0.1:7070: connection refused",
            ),
            (
                MembershipError::Rule(crate::node::rules::RuleRefusal {
                    setting: Some("node_id_min".into()),
                    reason: "node id 0 is below 1".into(),
                })
                .into(),
                Code::InvalidArgument,
                "node id 0 is below 1 (setting `membership.node_id_min`)",
            ),
            (
                MembershipError::AddressInUse {
                    id: 1,
                    address: "10.0.0.1:7070".into(),
                }
                .into(),
                Code::AlreadyExists,
                "already used by node 1",
            ),
            (
                MembershipError::AlreadyMember {
                    id: 2,
                    address: "10.0.0.2:7070".into(),
                }
                .into(),
                Code::AlreadyExists,
                "node 2 is already a member",
            ),
            (
                MembershipError::NotMember(9).into(),
                Code::NotFound,
                "node 9 is not a member",
            ),
            (
                MembershipError::LastVoter(1).into(),
                Code::FailedPrecondition,
                "last voter",
            ),
            (
                MembershipError::InProgress.into(),
                Code::FailedPrecondition,
                "in progress",
            ),
            (
                MembershipError::Unreachable {
                    id: 4,
                    address: "10.0.0.4:7070".into(),
                    reason: "connection refused".into(),
                }
                .into(),
                Code::FailedPrecondition,
                "cannot reach node 4",
            ),
            (
                MembershipError::NotCaughtUp {
                    id: 4,
                    after_ms: 100,
                }
                .into(),
                Code::DeadlineExceeded,
                "stays a learner",
            ),
            (
                MembershipError::NotApplied {
                    id: 4,
                    index: 17,
                    after_ms: 100,
                }
                .into(),
                Code::DeadlineExceeded,
                "had not applied the log up to its promotion (index 17)",
            ),
            (
                MembershipError::Consensus(ConsensusError::ShuttingDown).into(),
                Code::Unavailable,
                "shutting down",
            ),
            (
                WireError::UnknownEncoding { found: 7 }.into(),
                Code::FailedPrecondition,
                "encoding version 7",
            ),
            (
                WireError::Malformed(CodecError::Empty).into(),
                Code::InvalidArgument,
                "malformed Raft message",
            ),
            (
                redb::Error::Corrupted("bad page".into()).into(),
                Code::Internal,
                "storage failure",
            ),
            (
                ApiError::Unimplemented("leadership transfer needs openraft 0.10"),
                Code::Unimplemented,
                "openraft 0.10",
            ),
        ];
        for (error, code, fragment) in rows {
            let status = to_status(&error);
            assert_eq!(status.code(), code, "{error:?}");
            assert!(
                status.message().contains(fragment),
                "{error:?}: `{}` lacks `{fragment}`",
                status.message()
            );
        }
    }

    #[test]
    fn not_leader_carries_the_leader_in_metadata() {
        let status = to_status(&ApiError::Consensus(ConsensusError::NotLeader {
            this: 2,
            leader: Some(LeaderHint {
                id: 1,
                address: Some("10.0.0.1:7070".into()),
            }),
        }));
        assert_eq!(status.metadata().get("wasmraft-leader-id").unwrap(), "1");
        assert_eq!(
            status.metadata().get("wasmraft-leader-address").unwrap(),
            "10.0.0.1:7070"
        );
    }

    #[test]
    fn a_shed_request_says_which_limit_and_when_to_retry() {
        let status = to_status(&ApiError::Shed(Shed {
            limit: "limits.query_threads".into(),
            detail: "62 queries run and 248 wait on this node".into(),
            retry_after_ms: 50,
        }));
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert_eq!(
            status.message(),
            "62 queries run and 248 wait on this node (limit: limits.query_threads); retry after 50 ms"
        );
        assert_eq!(status.metadata().get("retry-after-ms").unwrap(), "50");
    }

    #[test]
    fn long_messages_are_cut_on_a_character_boundary_with_their_size() {
        let short = "é".repeat(100);
        assert_eq!(bounded_message(short.clone()), short);
        let long = format!("x{}", "é".repeat(600_000));
        let bounded = bounded_message(long.clone());
        assert!(
            bounded.len() <= STATUS_MESSAGE_BYTES_MAX,
            "{}",
            bounded.len()
        );
        assert!(bounded.ends_with(&format!(" … [truncated: {} bytes in all]", long.len())));
        assert!(long.starts_with(bounded.split(" … [truncated").next().unwrap()));
        let status = to_status(&ApiError::Refused(Refusal::SetupFailed(long)));
        assert!(status.message().len() <= STATUS_MESSAGE_BYTES_MAX);
    }
}
