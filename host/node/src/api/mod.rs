//! The gRPC API of a node (`proto/wasmraft/v1`), all services on one port:
//! `Modules`, `StateMachine`, `Cluster`, `Access` and the internal `Raft`.
//!
//! Handlers convert protobuf to wasmraft's own types, validate at the edge
//! (`validate`), go through the node ([`NodeHandle`]: every state change is a
//! Raft proposal, never a local write), and map every failure to a gRPC
//! status in one place (`status`).
//!
//! Invariant: no handler writes state; a query reads it, a command proposes.

mod access;
mod cluster;
mod convert;
mod modules;
mod observe;
mod raft;
mod state_machine;
pub mod status;
pub mod validate;

use std::time::Duration;

use tonic::transport::server::Router;
use tonic::transport::{Server, ServerTlsConfig};
use tower::layer::util::{Identity as NoLayer, Stack};
use wasmraft_proto::v1::access_server::AccessServer;
use wasmraft_proto::v1::cluster_server::ClusterServer;
use wasmraft_proto::v1::modules_server::ModulesServer;
use wasmraft_proto::v1::raft_server::RaftServer;
use wasmraft_proto::v1::state_machine_server::StateMachineServer;

pub use self::access::AccessService;
pub use self::cluster::ClusterService;
pub use self::modules::{ModulesService, deploy_module};
pub use self::raft::RaftService;
pub use self::state_machine::StateMachineService;
pub use self::status::ApiError;
pub use self::validate::{DeployUpload, InputError};
use crate::admission::{CallKind, InFlightPermit, MethodClass};
use crate::auth::tls::certificate_subject;
use crate::auth::{Action, Caller, Identity};
use crate::node::handle::NodeHandle;
use crate::telemetry::traces;

/// Streams one connection may run at once.
const STREAMS_PER_CONNECTION_MAX: usize = 1024;
/// The longest any call may take on this node, whatever deadline its
/// caller gave (or none): a backstop above every limit of its own (a
/// deploy's upload, validation, commit and compilation on every node take
/// at most a few minutes).
const SERVER_CALL_TIMEOUT: Duration = Duration::from_secs(300);
/// Idle connections are probed this often, so dead peers are noticed.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);

/// Who `request` comes from: every method but `Cluster.Health` asks this
/// first, before it reads its input.
pub(crate) fn identity<T>(
    node: &NodeHandle,
    request: &tonic::Request<T>,
) -> Result<Identity, ApiError> {
    let _span = traces::trace_span!("authenticate").entered();
    // The TLS layer verified the chain against the client CA: only its
    // name is read here.
    let certificate_subject = request
        .peer_certs()
        .and_then(|chain| chain.first().and_then(|leaf| certificate_subject(leaf)));
    Ok(node
        .gate()
        .authenticate_with_certificate(request.metadata(), certificate_subject.as_deref())?)
}

/// Takes one call of `class` with `input_bytes` of input from `subject`'s
/// rate limits (`admission::rates`): after authorisation, so a stranger's
/// flood spends no tenant's buckets, and before any work.
pub(crate) fn admit(
    node: &NodeHandle,
    subject: &str,
    class: MethodClass,
    input_bytes: usize,
) -> Result<(), ApiError> {
    let _span = traces::trace_span!("admit", class = ?class, input_bytes).entered();
    let rates = node.rates();
    let admitted = if rates.has_role_rates() {
        let view = node.gate().view();
        let roles: Vec<&str> = view
            .rules_of(subject)
            .iter()
            .map(|rule| rule.role.as_str())
            .collect();
        rates.admit(subject, &roles, class, input_bytes)
    } else {
        rates.admit(subject, &[], class, input_bytes)
    };
    admitted.map_err(|shed| {
        node.metrics().rejected(&shed.limit);
        shed.into()
    })
}

/// Like [`admit`], for a call that works on after its admission (an
/// invoke, a query, a deploy's upload): the permit it answers counts the
/// call as open, per subject and in all, until dropped. Past the node's
/// running cap it waits for a slot, at most `timeout` (the call's own).
pub(crate) async fn admit_open(
    node: &NodeHandle,
    subject: &str,
    class: MethodClass,
    input_bytes: usize,
    timeout: Option<Duration>,
) -> Result<InFlightPermit, ApiError> {
    admit(node, subject, class, input_bytes)?;
    let kind = match class {
        MethodClass::Deploy => CallKind::Deploy,
        _ => CallKind::Call,
    };
    let bytes = u64::try_from(input_bytes).unwrap_or(u64::MAX);
    node.in_flight()
        .admit(subject, kind, bytes, timeout)
        .await
        .map_err(|shed| {
            node.metrics().rejected(&shed.limit);
            shed.into()
        })
}

/// The caller `identity` acts as for `action` on `object`, if the policy in
/// force lets it.
pub(crate) fn authorize(
    node: &NodeHandle,
    identity: &Identity,
    action: Action,
    object: &str,
) -> Result<Caller, ApiError> {
    let _span = traces::trace_span!("authorize", action = ?action, object).entered();
    Ok(node.gate().authorize(identity, action, object)?)
}

/// The time the node may spend on a call: what the caller gave it (its
/// `grpc-timeout`) less a margin, so that when time runs out the node's own
/// answer (which says what did not finish) reaches the caller before its
/// deadline does. A forwarded request carries what is left of it.
pub(crate) fn call_timeout<T>(request: &tonic::Request<T>) -> Option<Duration> {
    let given = request
        .metadata()
        .get("grpc-timeout")
        .and_then(|value| value.to_str().ok())
        .and_then(parse_grpc_timeout)?;
    let margin = (given / 10).min(ANSWER_MARGIN_MAX);
    Some(given - margin)
}

/// The most time [`call_timeout`] keeps for the answer's way back.
const ANSWER_MARGIN_MAX: Duration = Duration::from_millis(500);

/// Reads gRPC's `TimeoutValue TimeoutUnit` (at most 8 digits, then one of
/// `H M S m u n`).
fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    let split = value.len().checked_sub(1)?;
    let (digits, unit) = value.split_at(split);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let amount: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(amount * 3600),
        "M" => Duration::from_secs(amount * 60),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

/// Runs blocking work (compilation, redb reads, guest queries) off the
/// async threads.
pub(crate) async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|error| ApiError::Internal(format!("a blocking task failed: {error}")))
}

/// Every service of a node, ready to serve. `raft_message_bytes_max` bounds
/// the internal `Raft` service's messages (one log entry of the largest
/// kind must fit); the client services accept inputs up to
/// `limits.payload_bytes_max`.
pub fn router(
    node: &NodeHandle,
    raft_message_bytes_max: usize,
    tls: Option<ServerTlsConfig>,
) -> Result<Router<Stack<observe::ObserveLayer, NoLayer>>, tonic::transport::Error> {
    let api_message_bytes_max = validate::api_message_bytes_max(&node.limits());
    let mut server = Server::builder();
    if let Some(tls) = tls {
        server = server.tls_config(tls)?;
    }
    Ok(server
        .timeout(SERVER_CALL_TIMEOUT)
        .concurrency_limit_per_connection(STREAMS_PER_CONNECTION_MAX)
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .layer(observe::ObserveLayer::new(node.metrics().clone()))
        .add_service(
            ModulesServer::new(ModulesService::new(node.clone()))
                .max_decoding_message_size(api_message_bytes_max),
        )
        .add_service(
            StateMachineServer::new(StateMachineService::new(node.clone()))
                .max_decoding_message_size(api_message_bytes_max),
        )
        .add_service(
            ClusterServer::new(ClusterService::new(node.clone()))
                .max_decoding_message_size(api_message_bytes_max),
        )
        .add_service(
            AccessServer::new(AccessService::new(node.clone()))
                .max_decoding_message_size(api_message_bytes_max),
        )
        .add_service(
            RaftServer::new(RaftService::new(node.clone()))
                .max_decoding_message_size(raft_message_bytes_max)
                .max_encoding_message_size(raft_message_bytes_max),
        ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse_as_the_protocol_writes_them() {
        let rows = [
            ("1S", Some(Duration::from_secs(1))),
            ("250m", Some(Duration::from_millis(250))),
            ("2H", Some(Duration::from_secs(7200))),
            ("3M", Some(Duration::from_secs(180))),
            ("7u", Some(Duration::from_micros(7))),
            ("99999999n", Some(Duration::from_nanos(99_999_999))),
            ("123456789S", None),
            ("S", None),
            ("", None),
            ("10x", None),
            ("-1S", None),
        ];
        for (text, expected) in rows {
            assert_eq!(parse_grpc_timeout(text), expected, "{text}");
        }
    }
}
