//! The client side of the Raft network: openraft's `RaftNetworkFactory` and
//! `RaftNetwork` over tonic clients of the internal `Raft` gRPC service.
//!
//! One lazily connected channel per peer; every call bounded by a deadline;
//! transport failures classified so openraft reacts well: a peer that
//! cannot be reached is `Unreachable` (openraft backs off), a call that ran
//! out of time is `Timeout`, anything else is a `NetworkError` (retried at
//! once). A message larger than the peers accept is `PayloadTooLarge`, so
//! openraft sends fewer entries at a time.
//!
//! AppendEntries run on tasks of their own, with a deadline sized to their
//! payload. openraft 0.9 gives every AppendEntries its heartbeat interval
//! as a timeout and drops the call when it passes; on a link slower than
//! that, no append would ever complete and the follower would never catch
//! up. Here openraft's timeout drops only its wait: the message stays on
//! the wire, and openraft's next try of the same append (same leader, same
//! `prev_log_id`) waits for that message's answer instead of sending it
//! again. Heartbeats are never answered from an earlier message (a read
//! index needs a fresh acknowledgement), but they stay on the wire too, so
//! a follower behind a slow link still hears its leader.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use openraft::error::{
    InstallSnapshotError, NetworkError, PayloadTooLarge, RPCError, RaftError, RemoteError, Timeout,
    Unreachable,
};
use openraft::network::{Backoff, RPCOption, RPCTypes, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::task::JoinHandle;
use tonic::transport::Channel;
use wasmraft_proto::v1::raft_client::RaftClient;
use wasmraft_proto::v1::{RaftReply, RaftRequest};

use super::faults::{FaultDecision, Faults, InjectedFault};
use super::removal::{REMOVED_AT_METADATA, Removal, Removed};
use super::{Reachability, wire};
use crate::auth::PeerAuth;
use crate::raft::{LogId, Node, NodeId, TypeConfig, Vote};

/// Sizes and times of the Raft network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetworkSettings {
    /// The largest Raft message a node sends or accepts, encoded. Must hold
    /// one log entry of the largest kind (a deploy of the largest module).
    pub message_bytes_max: usize,
    /// How long establishing a connection to a peer may take.
    pub connect_timeout: Duration,
    /// The pause before calling an unreachable peer again. Short, like a
    /// heartbeat: a restarted peer that heard from no leader for its
    /// election timeout would start an election and depose a healthy one.
    pub unreachable_retry: Duration,
    /// The deadline of an AppendEntries before its payload is counted: a
    /// heartbeat's whole deadline.
    pub append_timeout: Duration,
    /// The slowest transfer an AppendEntries is given time for: its
    /// deadline grows by its encoded size at this rate.
    pub append_bytes_per_second: u64,
}

impl Default for NetworkSettings {
    fn default() -> Self {
        Self {
            message_bytes_max: 64 * 1024 * 1024,
            connect_timeout: Duration::from_secs(2),
            unreachable_retry: Duration::from_millis(50),
            append_timeout: Duration::from_secs(1),
            append_bytes_per_second: 8 * 1024 * 1024,
        }
    }
}

impl NetworkSettings {
    /// The deadline of an AppendEntries that encodes to `bytes`.
    pub fn append_deadline(&self, bytes: usize) -> Duration {
        let rate = self.append_bytes_per_second.max(1) as u128;
        let transfer_micros = bytes as u128 * 1_000_000 / rate;
        self.append_timeout
            + Duration::from_micros(u64::try_from(transfer_micros).unwrap_or(u64::MAX))
    }
}

/// Heartbeats to one peer on the wire at once, at most. Beyond it (a peer
/// that answers nothing until each deadline passes) a heartbeat is not
/// sent and counts as timed out.
const HEARTBEATS_IN_FLIGHT_MAX: usize = 32;

/// Makes one [`PeerNetwork`] per peer for openraft.
#[derive(Debug, Clone)]
pub struct NetworkFactory {
    /// This node: the `from` of every RPC, for errors and fault decisions.
    from: NodeId,
    settings: NetworkSettings,
    faults: Faults,
    /// Signs every call with this node's peer credentials.
    peer_auth: PeerAuth,
    /// Where each call's outcome is recorded, for the node's health.
    reachability: Reachability,
    /// Where a member's word that this node was removed is recorded.
    removal: Removal,
}

impl NetworkFactory {
    pub fn new(
        from: NodeId,
        settings: NetworkSettings,
        faults: Faults,
        peer_auth: PeerAuth,
        reachability: Reachability,
    ) -> Self {
        Self {
            from,
            settings,
            faults,
            peer_auth,
            reachability,
            removal: Removal::default(),
        }
    }

    /// Records in `removal` a member's refusal of a vote that says this
    /// node was removed.
    pub fn with_removal(self, removal: Removal) -> Self {
        Self { removal, ..self }
    }
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = PeerNetwork;

    async fn new_client(&mut self, target: NodeId, node: &Node) -> PeerNetwork {
        // Nothing is dialled here: the channel connects on first use and
        // reconnects by itself. A bad address fails every call instead.
        let client = self.peer_auth.endpoint(&node.address).map(|endpoint| {
            let channel = endpoint
                .connect_timeout(self.settings.connect_timeout)
                .tcp_nodelay(true)
                .connect_lazy();
            RaftClient::new(channel)
                .max_decoding_message_size(self.settings.message_bytes_max)
                .max_encoding_message_size(self.settings.message_bytes_max)
        });
        PeerNetwork {
            link: Link {
                from: self.from,
                target,
                node: node.clone(),
                client,
                settings: self.settings,
                faults: self.faults.clone(),
                peer_auth: self.peer_auth.clone(),
                reachability: self.reachability.clone(),
                removal: self.removal.clone(),
            },
            append: None,
            heartbeats: Arc::new(AtomicUsize::new(0)),
        }
    }
}

/// The connection of this node to one peer.
#[derive(Debug)]
pub struct PeerNetwork {
    link: Link,
    /// The AppendEntries with entries on the wire, if any, and what it
    /// carries.
    append: Option<InFlightAppend>,
    /// Heartbeats on the wire.
    heartbeats: Arc<AtomicUsize>,
}

impl Drop for PeerNetwork {
    fn drop(&mut self) {
        // openraft dropped this peer's replication (a new term, a
        // membership change): nobody will ask for the answer.
        if let Some(append) = self.append.take() {
            append.task.abort();
        }
    }
}

type AppendResult = RpcResult<AppendEntriesResponse<NodeId>, openraft::error::Infallible>;

/// An AppendEntries sent on its own task.
#[derive(Debug)]
struct InFlightAppend {
    vote: Vote,
    prev_log_id: Option<LogId>,
    last_log_id: Option<LogId>,
    task: JoinHandle<AppendResult>,
}

impl InFlightAppend {
    /// Whether `rpc` asks for what this message is already carrying, so
    /// that its answer answers `rpc` too.
    fn answers(&self, rpc: &AppendEntriesRequest<TypeConfig>) -> bool {
        // Within one leader's term its log only grows, so the same leader
        // and the same `prev_log_id` mean the same entries after it.
        !rpc.entries.is_empty() && self.vote == rpc.vote && self.prev_log_id == rpc.prev_log_id
    }

    /// This message's answer, as the answer to a request for entries up to
    /// `wanted`: it says no more than what this message carried.
    fn answer_for(
        last_sent: Option<LogId>,
        wanted: Option<LogId>,
        response: AppendEntriesResponse<NodeId>,
    ) -> AppendEntriesResponse<NodeId> {
        match response {
            AppendEntriesResponse::Success if last_sent < wanted => {
                AppendEntriesResponse::PartialSuccess(last_sent)
            }
            AppendEntriesResponse::PartialSuccess(matched) if matched >= wanted => {
                AppendEntriesResponse::Success
            }
            other => other,
        }
    }
}

/// What a call to one peer needs; cheap to clone into a task.
#[derive(Debug, Clone)]
struct Link {
    from: NodeId,
    target: NodeId,
    node: Node,
    /// `Err` holds why the peer's address cannot be dialled.
    client: Result<RaftClient<Channel>, String>,
    settings: NetworkSettings,
    faults: Faults,
    peer_auth: PeerAuth,
    reachability: Reachability,
    removal: Removal,
}

/// The peer's address could not be turned into an endpoint.
#[derive(Debug, thiserror::Error)]
#[error("cannot dial node {target} at `{address}`: {reason}")]
struct BadAddress {
    target: NodeId,
    address: String,
    reason: String,
}

type RpcResult<T, E> = Result<T, RPCError<NodeId, Node, RaftError<NodeId, E>>>;

impl Link {
    /// Sends one encoded request and reads the peer's reply, within `ttl`,
    /// and records whether the peer answered.
    async fn call<Resp, E>(
        &self,
        action: RPCTypes,
        request: RaftRequest,
        ttl: Duration,
    ) -> RpcResult<Resp, E>
    where
        Resp: DeserializeOwned,
        E: DeserializeOwned + std::error::Error,
    {
        let result = self.exchange(action, request, ttl).await;
        match &result {
            Ok(_) | Err(RPCError::RemoteError(_)) => self.reachability.answered(self.target),
            Err(error) => self.reachability.failed(self.target, &error.to_string()),
        }
        result
    }

    /// Sends one encoded request and reads the peer's reply, within `ttl`.
    async fn exchange<Resp, E>(
        &self,
        action: RPCTypes,
        request: RaftRequest,
        ttl: Duration,
    ) -> RpcResult<Resp, E>
    where
        Resp: DeserializeOwned,
        E: DeserializeOwned + std::error::Error,
    {
        let timeout = || {
            RPCError::Timeout(Timeout {
                action,
                id: self.from,
                target: self.target,
                timeout: ttl,
            })
        };
        match self.faults.decide(self.from, self.target) {
            FaultDecision::Deliver => {}
            FaultDecision::Drop => {
                return Err(RPCError::Unreachable(unreachable(&InjectedFault {
                    from: self.from,
                    to: self.target,
                })));
            }
            FaultDecision::Delay(delay) if delay >= ttl => {
                tokio::time::sleep(ttl).await;
                return Err(timeout());
            }
            FaultDecision::Delay(delay) => tokio::time::sleep(delay).await,
        }
        let client = match &self.client {
            Ok(client) => client.clone(),
            Err(reason) => {
                return Err(RPCError::Unreachable(unreachable(&BadAddress {
                    target: self.target,
                    address: self.node.address.clone(),
                    reason: reason.clone(),
                })));
            }
        };
        let mut request = tonic::Request::new(request);
        request.set_timeout(ttl);
        self.peer_auth.stamp(request.metadata_mut());
        let sent = send(client, action, request);
        let reply = match tokio::time::timeout(ttl, sent).await {
            Err(_elapsed) => return Err(timeout()),
            Ok(Err(status)) => {
                if let Some(index) = status
                    .metadata()
                    .get(REMOVED_AT_METADATA)
                    .and_then(|value| value.to_str().ok()?.parse().ok())
                {
                    self.removal.learned(Removed {
                        by: self.target,
                        index,
                    });
                }
                return Err(classify(status, timeout));
            }
            Ok(Ok(reply)) => reply.into_inner(),
        };
        match wire::decode_reply::<Resp, RaftError<NodeId, E>>(&reply) {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(raft_error)) => Err(RPCError::RemoteError(RemoteError::new_with_node(
                self.target,
                self.node.clone(),
                raft_error,
            ))),
            Err(error) => Err(RPCError::Network(NetworkError::new(&error))),
        }
    }

    /// Encodes a request, refusing one larger than peers accept.
    fn encode<T: Serialize>(&self, request: &T) -> Result<RaftRequest, usize> {
        let request = wire::encode_request(request);
        if request.payload.len() > self.settings.message_bytes_max {
            return Err(request.payload.len());
        }
        Ok(request)
    }
}

async fn send(
    mut client: RaftClient<Channel>,
    action: RPCTypes,
    request: tonic::Request<RaftRequest>,
) -> Result<tonic::Response<RaftReply>, tonic::Status> {
    match action {
        RPCTypes::AppendEntries => client.append_entries(request).await,
        RPCTypes::Vote => client.vote(request).await,
        RPCTypes::InstallSnapshot => client.install_snapshot(request).await,
    }
}

/// A failed call to a peer as a person reads it: the gRPC code, the
/// message and its first cause. tonic's own `Display` of a status adds its
/// metadata and details, which openraft's log lines would carry.
#[derive(Debug, thiserror::Error)]
#[error("{code}: {message}")]
struct CallFailed {
    code: tonic::Code,
    message: String,
}

impl CallFailed {
    fn of(status: &tonic::Status) -> Self {
        let mut message = status.message().to_owned();
        let mut cause = std::error::Error::source(status);
        // The innermost cause says what happened ("Connection refused").
        let mut innermost = None;
        while let Some(error) = cause {
            innermost = Some(error.to_string());
            cause = error.source();
        }
        if let Some(innermost) = innermost
            && !message.contains(&innermost)
        {
            if message.is_empty() {
                message = innermost;
            } else {
                message = format!("{message}: {innermost}");
            }
        }
        CallFailed {
            code: status.code(),
            message,
        }
    }
}

/// openraft's `Unreachable` of `error`, as its message alone: `Unreachable::new`
/// would print the error's Rust type before it in every log line.
fn unreachable(error: &impl std::fmt::Display) -> Unreachable {
    Unreachable::from(openraft::AnyError::error(error))
}

/// What a failed gRPC call means to openraft.
fn classify<E: std::error::Error>(
    status: tonic::Status,
    timeout: impl FnOnce() -> RPCError<NodeId, Node, RaftError<NodeId, E>>,
) -> RPCError<NodeId, Node, RaftError<NodeId, E>> {
    let failed = CallFailed::of(&status);
    match status.code() {
        // Connection refused, reset, DNS failure, peer shutting down: the
        // peer is not there; openraft backs off before retrying. A peer that
        // refuses Raft messages on principle (empty storage and never
        // introduced, another encoding version) will not change its mind
        // at once either.
        tonic::Code::Unavailable | tonic::Code::FailedPrecondition => {
            RPCError::Unreachable(unreachable(&failed))
        }
        tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => timeout(),
        _ => RPCError::Network(NetworkError::from(openraft::AnyError::error(&failed))),
    }
}

/// How many entries fit a message, from the size of a message that did not.
fn entries_hint(entries: usize, encoded_bytes: usize, message_bytes_max: usize) -> u64 {
    let fitting = (entries as u128 * message_bytes_max as u128 / encoded_bytes.max(1) as u128)
        .clamp(1, entries.saturating_sub(1).max(1) as u128);
    fitting as u64
}

impl PeerNetwork {
    /// Sends `request`, which carries entries, on a task of its own, unless
    /// the message on the wire already carries them; then waits for the
    /// answer. If openraft stops waiting, the message stays on the wire for
    /// openraft's next try.
    async fn append(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        request: RaftRequest,
    ) -> AppendResult {
        let wanted = rpc.entries.last().map(|entry| entry.log_id);
        if let Some(in_flight) = self.append.take_if(|in_flight| !in_flight.answers(&rpc)) {
            in_flight.task.abort();
        }
        let in_flight = self.append.get_or_insert_with(|| {
            let link = self.link.clone();
            let deadline = link.settings.append_deadline(request.payload.len());
            InFlightAppend {
                vote: rpc.vote,
                prev_log_id: rpc.prev_log_id,
                last_log_id: wanted,
                task: tokio::spawn(async move {
                    link.call(RPCTypes::AppendEntries, request, deadline).await
                }),
            }
        });
        let joined = (&mut in_flight.task).await;
        let last_sent = in_flight.last_log_id;
        self.append = None;
        let response = joined.map_err(|error| RPCError::Network(NetworkError::new(&error)))??;
        Ok(InFlightAppend::answer_for(last_sent, wanted, response))
    }

    /// Sends a heartbeat on a task of its own and waits for the answer. If
    /// openraft stops waiting, the heartbeat still reaches the peer.
    async fn heartbeat(&mut self, request: RaftRequest) -> AppendResult {
        let link = self.link.clone();
        let deadline = link.settings.append_timeout;
        if self.heartbeats.fetch_add(1, Ordering::AcqRel) >= HEARTBEATS_IN_FLIGHT_MAX {
            self.heartbeats.fetch_sub(1, Ordering::AcqRel);
            return Err(RPCError::Timeout(Timeout {
                action: RPCTypes::AppendEntries,
                id: link.from,
                target: link.target,
                timeout: deadline,
            }));
        }
        let heartbeats = Arc::clone(&self.heartbeats);
        let task = tokio::spawn(async move {
            let result = link.call(RPCTypes::AppendEntries, request, deadline).await;
            heartbeats.fetch_sub(1, Ordering::AcqRel);
            result
        });
        task.await
            .map_err(|error| RPCError::Network(NetworkError::new(&error)))?
    }
}

impl RaftNetwork<TypeConfig> for PeerNetwork {
    fn backoff(&self) -> Backoff {
        Backoff::new(std::iter::repeat(self.link.settings.unreachable_retry))
    }

    /// openraft's `option` (its heartbeat interval) is not the deadline:
    /// see the module documentation.
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> AppendResult {
        let entries = rpc.entries.len();
        let message_bytes_max = self.link.settings.message_bytes_max;
        let request = match self.link.encode(&rpc) {
            Ok(request) => request,
            Err(encoded_bytes) if entries > 1 => {
                return Err(RPCError::PayloadTooLarge(
                    PayloadTooLarge::new_entries_hint(entries_hint(
                        entries,
                        encoded_bytes,
                        message_bytes_max,
                    )),
                ));
            }
            Err(encoded_bytes) => {
                // One entry larger than the limit cannot be split: the API
                // caps every entry well below it, so this is a broken limit.
                return Err(RPCError::Network(NetworkError::new(
                    &std::io::Error::other(format!(
                        "one log entry encodes to {encoded_bytes} bytes, above the Raft message limit of {message_bytes_max} bytes"
                    )),
                )));
            }
        };
        if entries == 0 {
            self.heartbeat(request).await
        } else {
            self.append(rpc, request).await
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<NodeId>, InstallSnapshotError> {
        let request = self.link.encode(&rpc).map_err(|encoded_bytes| {
            RPCError::Network(NetworkError::new(&std::io::Error::other(format!(
                "a snapshot chunk encodes to {encoded_bytes} bytes, above the Raft message limit of {} bytes; lower raft.snapshot_chunk_bytes",
                self.link.settings.message_bytes_max
            ))))
        })?;
        self.link
            .call(RPCTypes::InstallSnapshot, request, option.hard_ttl())
            .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<NodeId>, openraft::error::Infallible> {
        let request = wire::encode_request(&rpc);
        self.link
            .call(RPCTypes::Vote, request, option.hard_ttl())
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_call_reads_as_its_code_message_and_cause_without_metadata() {
        let refused =
            std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "connection refused");
        let mut status = tonic::Status::from_error(Box::new(refused));
        status.metadata_mut().insert("x-peer", "7".parse().unwrap());
        let failed = CallFailed::of(&status).to_string();
        assert!(failed.contains("connection refused"), "{failed}");
        assert!(
            !failed.contains("metadata") && !failed.contains("x-peer"),
            "{failed}"
        );
        assert_eq!(
            failed.matches("connection refused").count(),
            1,
            "the cause once: {failed}"
        );
    }

    #[test]
    fn entries_hint_shrinks_but_sends_at_least_one() {
        assert_eq!(entries_hint(100, 200, 100), 50);
        assert_eq!(entries_hint(2, 10_000, 100), 1);
        assert_eq!(entries_hint(10, 101, 100), 9);
    }

    #[test]
    fn an_append_deadline_grows_with_its_payload() {
        let settings = NetworkSettings {
            append_timeout: Duration::from_secs(1),
            append_bytes_per_second: 1024 * 1024,
            ..NetworkSettings::default()
        };
        assert_eq!(settings.append_deadline(0), Duration::from_secs(1));
        assert_eq!(
            settings.append_deadline(8 * 1024 * 1024),
            Duration::from_secs(9)
        );
    }

    #[test]
    fn an_earlier_answer_says_no_more_than_its_message_carried() {
        let log_id = |index| Some(LogId::new(openraft::CommittedLeaderId::new(1, 1), index));
        let answer = InFlightAppend::answer_for;
        // It carried less than the new request asks for.
        assert_eq!(
            answer(log_id(5), log_id(9), AppendEntriesResponse::Success),
            AppendEntriesResponse::PartialSuccess(log_id(5))
        );
        // It carried as much or more.
        assert_eq!(
            answer(log_id(9), log_id(9), AppendEntriesResponse::Success),
            AppendEntriesResponse::Success
        );
        assert_eq!(
            answer(
                log_id(9),
                log_id(7),
                AppendEntriesResponse::PartialSuccess(log_id(8))
            ),
            AppendEntriesResponse::Success
        );
        assert_eq!(
            answer(
                log_id(9),
                log_id(9),
                AppendEntriesResponse::PartialSuccess(log_id(8))
            ),
            AppendEntriesResponse::PartialSuccess(log_id(8))
        );
        assert_eq!(
            answer(log_id(9), log_id(12), AppendEntriesResponse::Conflict),
            AppendEntriesResponse::Conflict
        );
    }

    #[tokio::test]
    async fn an_absent_peer_is_unreachable_and_a_dropped_rpc_too() {
        // A port nothing listens on: bind, learn the port, close.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut factory = NetworkFactory::new(
            1,
            NetworkSettings::default(),
            Faults::none(),
            PeerAuth::new(1, None, Box::new(|| None)),
            Reachability::default(),
        );
        let mut peer = factory
            .new_client(2, &Node::new(format!("127.0.0.1:{port}")))
            .await;
        let vote = VoteRequest::new(crate::raft::Vote::new(1, 1), None);
        let option = RPCOption::new(Duration::from_secs(2));
        let error = peer.vote(vote.clone(), option.clone()).await.unwrap_err();
        assert!(matches!(error, RPCError::Unreachable(_)), "{error:?}");

        let mut factory = NetworkFactory::new(
            1,
            NetworkSettings::default(),
            Faults::from_fn(|_, _| FaultDecision::Drop),
            PeerAuth::new(1, None, Box::new(|| None)),
            Reachability::default(),
        );
        let mut peer = factory.new_client(2, &Node::new("127.0.0.1:1")).await;
        let error = peer.vote(vote.clone(), option.clone()).await.unwrap_err();
        assert!(error.to_string().contains("fault injection"), "{error}");

        let mut bad = factory.new_client(3, &Node::new("not an address")).await;
        let error = bad.vote(vote, option).await.unwrap_err();
        assert!(matches!(error, RPCError::Unreachable(_)), "{error:?}");
    }
}
