//! Proposing commands: [`NodeHandle::propose`] puts a command through the
//! Raft log and returns what applying it answered. On the leader it stamps
//! the timestamp; invokes and session opens queue for the batcher, which
//! proposes everything queued while earlier entries were written as one
//! `Command::Batch` entry (openraft 0.9 fsyncs one entry at a time), and
//! other commands go alone. On a follower, the same invokes queue for the
//! forward batcher (`forward_batch`), which hands them to the leader in
//! batches.

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tracing::Instrument;

use super::error::ConsensusError;
use super::forward::{Forwarded, millis};
use super::forward_batch::batched;
use super::handle::{Inner, NodeHandle};
use super::route::Route;
use crate::auth::{Authorization, Caller};
use crate::command::{Authorized, Command, Request, Response, Traced};
use crate::raft::FatalError;
use crate::telemetry::traces;

/// An invoke waiting for the batcher, and where its answer goes.
pub(super) struct Pending {
    request: Request,
    answer: oneshot::Sender<Result<Proposed, ConsensusError>>,
}

/// Invokes queued for the batcher before callers wait.
pub(super) const PROPOSALS_QUEUED_MAX: usize = 4096;
/// Entries of batched invokes written at once. Chosen by `wasmraft-load`
/// against 3 nodes on 2 cores, best of two rounds of 1 to 4: at 16 clients
/// all four within this machine's noise (2,147–2,257 writes/s), at 256
/// clients 4 ahead (8,102 against 7,328–7,733) with the lowest p99. While
/// openraft 0.9 writes one entry at a time, more entries in flight mostly
/// wait in its queue, and smaller batches cost more entries.
const WRITES_IN_FLIGHT_MAX: usize = 4;
/// The most commands one entry carries.
pub(super) const BATCH_COMMANDS_MAX: usize = 512;
/// The longest a deploy may wait for its commit and apply. Applying a
/// deploy compiles the module on every node, the leader included (a
/// forwarded deploy was compiled only by the follower that validated it),
/// which takes far longer than an ordinary write.
pub(super) const DEPLOY_TIMEOUT_MAX: Duration = Duration::from_secs(120);
/// The most input bytes one entry carries, well under the Raft message cap.
const BATCH_INPUT_BYTES_MAX: usize = 4 * 1024 * 1024;

/// A command committed and applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proposed {
    /// The log index of the entry that carried it.
    pub index: u64,
    /// The leader timestamp stamped into the entry.
    pub timestamp_ms: i64,
    /// What applying it answered.
    pub response: Response,
}

impl NodeHandle {
    /// Puts `command` through the Raft log for `caller` and returns what
    /// applying it answered, within `timeout` (the caller's deadline) or the
    /// node's consensus timeout. A follower forwards it to the leader.
    pub async fn propose(
        &self,
        caller: Caller,
        command: Command,
        timeout: Option<Duration>,
    ) -> Result<Proposed, ConsensusError> {
        let timeout = self.write_timeout(&command, timeout);
        let deadline = Instant::now() + timeout;
        if batched(&command) {
            return match self.route(deadline).await? {
                Route::Here => self.propose_here(caller, command, timeout).await,
                Route::Leader { id, address } => {
                    self.forward_batched(id, address, caller, command, deadline)
                        .await
                }
            };
        }
        self.routed(
            deadline,
            (caller, command),
            |(caller, command)| self.propose_here(caller, command, timeout),
            |(caller, command), timeout_ms| Forwarded::Write {
                caller,
                command,
                timeout_ms,
            },
        )
        .await
    }

    /// Proposes on this node, which must be the leader: it stamps the
    /// timestamp with its clock. A caller authorised at the edge has its
    /// command wrapped with that authorisation, which apply checks again if
    /// the policy changed meanwhile.
    pub(super) async fn propose_here(
        &self,
        caller: Caller,
        command: Command,
        timeout: Duration,
    ) -> Result<Proposed, ConsensusError> {
        if self.is_shutting_down() {
            return Err(ConsensusError::ShuttingDown);
        }
        let command = match caller.authorization {
            Some(Authorization { revision, token_id }) => {
                Command::Authorized(Box::new(Authorized {
                    revision,
                    token_id,
                    command,
                }))
            }
            None => command,
        };
        // A sampled call's trace continues in the entry, so that every
        // replica's apply joins it.
        let command = match crate::telemetry::traces::current() {
            Some(trace) => Command::Traced(Box::new(Traced { trace, command })),
            None => command,
        };
        let request = Request {
            timestamp_ms: now_ms(),
            caller: caller.subject,
            command,
        };
        if !batched(&request.command) {
            return self.write(request, timeout).await;
        }
        let waited = async {
            let (answer, answered) = oneshot::channel();
            self.inner
                .proposals
                .send(Pending { request, answer })
                .await
                .map_err(|_| ConsensusError::ShuttingDown)?;
            answered.await.map_err(|_| ConsensusError::ShuttingDown)?
        };
        tokio::time::timeout(timeout, waited)
            .await
            .map_err(|_| ConsensusError::Timeout {
                what: "the write".to_owned(),
                after_ms: millis(timeout),
            })?
    }

    /// Proposes one entry and waits until it is applied.
    pub(super) async fn write(
        &self,
        request: Request,
        timeout: Duration,
    ) -> Result<Proposed, ConsensusError> {
        let timestamp_ms = request.timestamp_ms;
        let traced = if traces::exporting() {
            crate::storage::commands_traced(&request)
        } else {
            Vec::new()
        };
        let span = match traced.split_first() {
            Some((first, others)) => {
                let commands = match &request.command {
                    Command::Batch(requests) => requests.len(),
                    _ => 1,
                };
                // Proposing covers the leader's append, the replication to
                // a quorum, the commit and the leader's apply.
                let span = tracing::info_span!(
                    target: traces::TARGET,
                    "propose",
                    kind = request.command.kind(),
                    commands,
                    index = tracing::field::Empty
                );
                traces::set_remote_parent(&span, first);
                for other in others.iter().take(traces::LINKS_MAX) {
                    traces::link(&span, other);
                }
                span
            }
            None => tracing::Span::none(),
        };
        let written = tokio::time::timeout(timeout, self.inner.consensus.write(request))
            .instrument(span.clone())
            .await
            .map_err(|_| ConsensusError::Timeout {
                what: "the write".to_owned(),
                after_ms: millis(timeout),
            })?;
        // Leadership may have moved between routing and writing: the
        // client retries, and the next route finds the new leader.
        let (index, response) = written.map_err(|refusal| self.refused(refusal))?;
        span.record("index", index);
        Ok(Proposed {
            index,
            timestamp_ms,
            response,
        })
    }
}

fn now_ms() -> i64 {
    // A clock before 1970 or past the year 292 million is a broken host;
    // 0 keeps the command deterministic (the value is in the log).
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .ok()
        .and_then(|elapsed| i64::try_from(elapsed.as_millis()).ok())
        .unwrap_or(0)
}

/// Proposes queued invokes. Each entry carries every invoke that queued while
/// earlier entries were being written (up to the batch limits); at most
/// [`WRITES_IN_FLIGHT_MAX`] entries are in flight, so the next entry's fsync
/// overlaps the previous entry's apply.
pub(super) async fn batch_proposals(node: Weak<Inner>, queue: mpsc::Receiver<Pending>) {
    run_batches(
        queue,
        WRITES_IN_FLIGHT_MAX,
        |pending| input_len(&pending.request.command),
        // A caller that went away (its deadline passed, its connection
        // closed) gets no answer: its command is not proposed. Its retry,
        // with the same session, is applied once whenever it comes.
        |pending| pending.answer.is_closed(),
        move |batch| {
            let node = node.clone();
            async move {
                if let Some(inner) = node.upgrade() {
                    propose_batch(&NodeHandle { inner }, batch).await;
                }
            }
        },
    )
    .await;
}

/// The loop of a batcher: waits for a free slot of `in_flight_max`, gathers
/// whatever queued meanwhile (`gather`), leaves out what was `abandoned`,
/// and hands the batch to `send` on a task of its own, which holds the slot
/// until it ends. Ends when the queue closes: the node, which holds its
/// sender, is gone.
pub(super) async fn run_batches<T, Sent>(
    mut queue: mpsc::Receiver<T>,
    in_flight_max: usize,
    input_bytes: impl Fn(&T) -> usize,
    abandoned: impl Fn(&T) -> bool,
    send: impl Fn(Vec<T>) -> Sent,
) where
    Sent: std::future::Future<Output = ()> + Send + 'static,
{
    let in_flight = Arc::new(Semaphore::new(in_flight_max));
    while let Some(first) = queue.recv().await {
        // Wait for a slot before gathering: whatever queues meanwhile
        // joins this batch.
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            break;
        };
        let mut batch = gather(first, &mut queue, &input_bytes);
        let before = batch.len();
        batch.retain(|item| !abandoned(item));
        let dropped = before - batch.len();
        if dropped > 0 {
            tracing::debug!(dropped, "commands whose callers left are not sent");
        }
        if batch.is_empty() {
            continue;
        }
        let sent = send(batch);
        tokio::spawn(async move {
            sent.await;
            drop(permit);
        });
    }
}

/// `first` and whatever already waits in `queue` behind it, up to the batch
/// limits ([`BATCH_COMMANDS_MAX`] commands, [`BATCH_INPUT_BYTES_MAX`] input
/// bytes as `input_bytes` counts them).
fn gather<T>(first: T, queue: &mut mpsc::Receiver<T>, input_bytes: impl Fn(&T) -> usize) -> Vec<T> {
    let mut bytes = input_bytes(&first);
    let mut batch = vec![first];
    while batch.len() < BATCH_COMMANDS_MAX && bytes < BATCH_INPUT_BYTES_MAX {
        match queue.try_recv() {
            Ok(next) => {
                bytes += input_bytes(&next);
                batch.push(next);
            }
            Err(_) => break,
        }
    }
    batch
}

/// Writes one entry for `batch` and answers each of its callers.
async fn propose_batch(handle: &NodeHandle, mut batch: Vec<Pending>) {
    if batch.len() == 1 {
        handle.metrics().batch(1);
        let Pending { request, answer } = batch.remove(0);
        let _ = answer.send(handle.write(request, handle.inner.consensus_timeout).await);
        return;
    }
    handle.metrics().batch(batch.len());
    let (requests, answers): (Vec<Request>, Vec<_>) = batch
        .into_iter()
        .map(|pending| (pending.request, pending.answer))
        .unzip();
    let timestamps: Vec<i64> = requests
        .iter()
        .map(|request| request.timestamp_ms)
        .collect();
    let request = Request {
        timestamp_ms: timestamps.iter().copied().max().unwrap_or_default(),
        caller: String::new(),
        command: Command::Batch(requests),
    };
    match handle.write(request, handle.inner.consensus_timeout).await {
        Ok(Proposed {
            index,
            response: Response::Batch(responses),
            ..
        }) if responses.len() == answers.len() => {
            for ((answer, response), timestamp_ms) in
                answers.into_iter().zip(responses).zip(timestamps)
            {
                let _ = answer.send(Ok(Proposed {
                    index,
                    timestamp_ms,
                    response,
                }));
            }
        }
        Ok(other) => {
            let error = ConsensusError::Fatal(FatalError::BatchAnswer {
                commands: answers.len(),
                answer: format!("{:?}", other.response),
            });
            for answer in answers {
                let _ = answer.send(Err(error.clone()));
            }
        }
        Err(error) => {
            for answer in answers {
                let _ = answer.send(Err(error.clone()));
            }
        }
    }
}

pub(super) fn input_len(command: &Command) -> usize {
    match command.unwrapped() {
        Command::Invoke(invoke) => invoke.input.len(),
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_batch_takes_what_queued_and_leaves_out_callers_that_left() {
        let pending = |client: &str| {
            let (answer, answered) = oneshot::channel();
            let request = Request {
                timestamp_ms: 0,
                caller: client.to_owned(),
                command: Command::OpenSession {
                    client_id: client.to_owned(),
                },
            };
            (Pending { request, answer }, answered)
        };
        let (queue, queued) = mpsc::channel(8);
        let mut kept = Vec::new();
        for client in ["a", "b", "c"] {
            let (waiting, answered) = pending(client);
            queue.send(waiting).await.unwrap();
            kept.push(answered);
        }
        // b's caller went away before the batch was gathered.
        drop(kept.remove(1));
        drop(queue);
        let (sent, mut batches) = mpsc::channel(8);
        run_batches(
            queued,
            1,
            |pending: &Pending| input_len(&pending.request.command),
            |pending| pending.answer.is_closed(),
            move |batch: Vec<Pending>| {
                let sent = sent.clone();
                let callers: Vec<String> = batch
                    .iter()
                    .map(|pending| pending.request.caller.clone())
                    .collect();
                async move { sent.send(callers).await.unwrap() }
            },
        )
        .await;
        assert_eq!(batches.recv().await.unwrap(), ["a", "c"]);
        assert!(batches.recv().await.is_none(), "one batch took all three");
    }
}
