//! The follower's side of batched writes: invokes and session opens that
//! reach a follower queue for its forward batcher, which hands everything
//! queued while earlier forwards were on the wire to the leader as one
//! `Forward` call ([`Forwarded::Writes`]). The leader serves each write as if
//! it had come alone — authorised again, proposed through its own batcher,
//! answered with its own result — so batching changes how many calls cross
//! the hop, never what a caller gets.

use std::collections::HashMap;
use std::sync::Weak;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};
use tracing::Instrument;

use super::error::ConsensusError;
use super::forward::{Forwarded, ForwardedWrite, millis};
use super::handle::{Inner, NodeHandle};
use super::write::{Proposed, input_len, run_batches};
use crate::auth::Caller;
use crate::auth::policy::command_permission;
use crate::command::{Command, TraceContext};
use crate::raft::NodeId;
use crate::raft::network::FORWARD_ANSWER_MARGIN;
use crate::telemetry::traces;

/// A write waiting for the forward batcher, and where its answer goes.
pub(super) struct PendingForward {
    leader: NodeId,
    address: String,
    caller: Caller,
    command: Command,
    deadline: Instant,
    trace: Option<TraceContext>,
    answer: oneshot::Sender<Result<Proposed, ConsensusError>>,
}

/// Batches of writes on the wire to the leader at once: as many as the
/// leader's own entries in flight, so that a batch is waiting at the leader
/// whenever its batcher gathers the next entry.
const FORWARDS_IN_FLIGHT_MAX: usize = 4;

/// Whether a command goes through the batchers (the leader's and the
/// followers'): invokes and session opens are small and many; deploys,
/// settings and access changes are rare and go alone.
pub(super) fn batched(command: &Command) -> bool {
    matches!(
        command.unwrapped(),
        Command::Invoke(_) | Command::OpenSession { .. }
    )
}

impl NodeHandle {
    /// Forwards a batched write to the leader `leader` at `address` through
    /// the forward batcher, and waits for its answer until `deadline` (and
    /// the time the leader's own answer needs to travel back).
    pub(super) async fn forward_batched(
        &self,
        leader: NodeId,
        address: String,
        caller: Caller,
        command: Command,
        deadline: Instant,
    ) -> Result<Proposed, ConsensusError> {
        let span = traces::trace_span!("forward", leader);
        let trace = span.in_scope(traces::current);
        let wait = deadline.saturating_duration_since(Instant::now()) + FORWARD_ANSWER_MARGIN;
        let unreachable = |reason: String| ConsensusError::LeaderUnreachable {
            this: self.inner.id,
            leader,
            address: address.clone(),
            reason,
        };
        let waited = async {
            let (answer, answered) = oneshot::channel();
            self.inner
                .forwards
                .send(PendingForward {
                    leader,
                    address: address.clone(),
                    caller,
                    command,
                    deadline,
                    trace,
                    answer,
                })
                .await
                .map_err(|_| ConsensusError::ShuttingDown)?;
            answered.await.map_err(|_| ConsensusError::ShuttingDown)?
        };
        tokio::time::timeout(wait, waited.instrument(span))
            .await
            .map_err(|_| unreachable(format!("no answer within {} ms", millis(wait))))?
    }

    /// Serves one write of a batch a follower forwarded, as
    /// `serve_forwarded` serves a lone one: authorised again by this node's
    /// policy, then proposed here.
    pub(super) async fn serve_forwarded_write(
        &self,
        write: ForwardedWrite,
    ) -> Result<Proposed, ConsensusError> {
        let ForwardedWrite {
            caller,
            command,
            timeout_ms,
            trace,
        } = write;
        let timeout = self.write_timeout(&command, Some(Duration::from_millis(timeout_ms)));
        let caller = self
            .gate()
            .reauthorize(&caller, command_permission(&command))
            .map_err(ConsensusError::Denied)?;
        let span = match &trace {
            Some(trace) if traces::exporting() => {
                let span = tracing::info_span!(target: traces::TARGET, "forwarded");
                traces::set_remote_parent(&span, trace);
                span
            }
            _ => tracing::Span::none(),
        };
        self.propose_here(caller, command, timeout)
            .instrument(span)
            .await
    }
}

/// Forwards queued writes. Each batch carries every write that queued while
/// earlier batches were on the wire (up to the batch limits), at most
/// [`FORWARDS_IN_FLIGHT_MAX`] batches at once.
pub(super) async fn batch_forwards(node: Weak<Inner>, queue: mpsc::Receiver<PendingForward>) {
    run_batches(
        queue,
        FORWARDS_IN_FLIGHT_MAX,
        |pending| input_len(&pending.command),
        // A caller that went away is not forwarded, as the leader's batcher
        // does not propose it.
        |pending| pending.answer.is_closed(),
        move |batch| {
            let node = node.clone();
            async move {
                let Some(inner) = node.upgrade() else {
                    return;
                };
                let handle = NodeHandle { inner };
                // Writes routed while the leader changed go to the leader
                // each was routed to; nearly always there is one.
                for ((leader, address), writes) in by_leader(batch) {
                    forward_batch(&handle, leader, &address, writes).await;
                }
            }
        },
    )
    .await;
}

/// Groups a batch by the leader its writes were routed to, in order.
fn by_leader(batch: Vec<PendingForward>) -> Vec<((NodeId, String), Vec<PendingForward>)> {
    let mut groups: Vec<((NodeId, String), Vec<PendingForward>)> = Vec::new();
    let mut position: HashMap<(NodeId, String), usize> = HashMap::new();
    for pending in batch {
        let key = (pending.leader, pending.address.clone());
        match position.get(&key) {
            Some(&at) => groups[at].1.push(pending),
            None => {
                position.insert(key.clone(), groups.len());
                groups.push((key, vec![pending]));
            }
        }
    }
    groups
}

/// Sends one batch to the leader and answers each of its callers.
async fn forward_batch(
    handle: &NodeHandle,
    leader: NodeId,
    address: &str,
    batch: Vec<PendingForward>,
) {
    handle.metrics().forward_batch(batch.len());
    let now = Instant::now();
    let mut answers = Vec::with_capacity(batch.len());
    let mut writes = Vec::with_capacity(batch.len());
    let mut longest = Duration::ZERO;
    for pending in batch {
        let left = pending.deadline.saturating_duration_since(now);
        longest = longest.max(left);
        writes.push(ForwardedWrite {
            caller: pending.caller,
            command: pending.command,
            timeout_ms: millis(left),
            trace: pending.trace,
        });
        answers.push(pending.answer);
    }
    let count = writes.len();
    let answered = handle
        .inner
        .forwarder
        .call::<Vec<Result<Proposed, ConsensusError>>, ConsensusError>(
            leader,
            address,
            &Forwarded::Writes(writes),
            longest,
        )
        .await;
    let unreachable = |reason: String| ConsensusError::LeaderUnreachable {
        this: handle.inner.id,
        leader,
        address: address.to_owned(),
        reason,
    };
    let results = match answered {
        Ok(Ok(results)) if results.len() == count => results,
        Ok(Ok(results)) => {
            let error = unreachable(format!(
                "the leader answered {} results for a batch of {count} writes",
                results.len()
            ));
            vec![Err(error); count]
        }
        Ok(Err(refused)) => vec![Err(refused); count],
        Err(failure) => vec![Err(unreachable(failure.reason)); count],
    };
    for (answer, result) in answers.into_iter().zip(results) {
        let _ = answer.send(result);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_goes_to_the_leader_each_write_was_routed_to_in_order() {
        let pending = |leader: NodeId, client: &str| PendingForward {
            leader,
            address: format!("127.0.0.1:700{leader}"),
            caller: Caller::unchecked(client),
            command: Command::OpenSession {
                client_id: client.to_owned(),
            },
            deadline: Instant::now(),
            trace: None,
            answer: oneshot::channel().0,
        };
        let groups = by_leader(vec![
            pending(1, "a"),
            pending(2, "b"),
            pending(1, "c"),
            pending(1, "d"),
        ]);
        let shape: Vec<(NodeId, Vec<String>)> = groups
            .into_iter()
            .map(|((leader, _), writes)| {
                (
                    leader,
                    writes
                        .into_iter()
                        .map(|pending| pending.caller.subject)
                        .collect(),
                )
            })
            .collect();
        assert_eq!(
            shape,
            [
                (1, vec!["a".to_owned(), "c".to_owned(), "d".to_owned()]),
                (2, vec!["b".to_owned()]),
            ]
        );
    }
}
