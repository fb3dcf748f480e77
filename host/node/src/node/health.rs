//! A node's health: a score from 0 to 100 and the named reasons that lower
//! it, from Raft's view of the node alone ([`assess`] is a plain function of
//! it), for load balancers (`Cluster.Health`) and operators (`wasmraft
//! cluster health`).
//!
//! | reason | when | serving | score |
//! |---|---|---|---|
//! | `stopped` | Raft stopped on an error (a storage failure) | no | 0 |
//! | `shutting_down` | the node is stopping | no | 0 |
//! | `starting` | the node is not ready yet (a dev node deploying its examples) | no | 0 |
//! | `removed` | the membership no longer holds the node (it applied its removal, or a member said so) | no | 0 |
//! | `no_leader` | no leader is known: an election, or not in a cluster yet | no | 0 |
//! | `apply_lag` | more than [`APPLY_LAG_ENTRIES`] log entries wait to be applied | yes | −30 |
//! | `quorum_lost` | the leader heard from no quorum for [`QUORUM_ACK_MS_MAX`] | yes | −40 |
//! | `peer_unreachable` | on the leader: a member has not answered for [`PEER_SILENCE_MAX`] | yes | −20 each |
//! | `peer_behind` | on the leader: an answering member's log is more than [`PEER_LAG_ENTRIES`] behind, or unknown | yes | −20 each |

use serde::{Deserialize, Serialize};

use crate::raft::network::Unreachable;
use crate::raft::{NodeId, RaftView, Role};

/// Entries waiting for apply past which the node reports `apply_lag`.
pub const APPLY_LAG_ENTRIES: u64 = 1_000;
/// Entries a member may be behind the leader before `peer_behind`.
pub const PEER_LAG_ENTRIES: u64 = 1_000;
/// How long a member may leave the leader's calls unanswered before
/// `peer_unreachable`: many heartbeats.
pub const PEER_SILENCE_MAX: std::time::Duration = std::time::Duration::from_secs(1);
/// How long a leader may go without a quorum's acknowledgement before
/// `quorum_lost`: several election timeouts of the default settings.
pub const QUORUM_ACK_MS_MAX: u64 = 3_000;

/// One reason the node is less than healthy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reason {
    /// A stable name, for alerts: `no_leader`, `apply_lag`, ….
    pub name: &'static str,
    /// What it means here, for a person.
    pub detail: String,
}

/// A node's health.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    /// Whether the node can serve requests now.
    pub serving: bool,
    /// 100 with nothing to report; 0 when not serving.
    pub score: u32,
    pub reasons: Vec<Reason>,
}

/// What the node is doing besides Raft.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Local<'a> {
    pub shutting_down: bool,
    /// Why the node is not ready yet, if it is not.
    pub starting: Option<&'a str>,
    /// The peers that have not answered this node for a while.
    pub unreachable: &'a [Unreachable],
    /// The membership change that removed this node, if one did.
    pub removed_at: Option<u64>,
}

/// The health of node `this` from Raft's `view` of it.
pub fn assess(this: NodeId, view: &RaftView, local: Local<'_>) -> Health {
    let mut blocking = Vec::new();
    if let Some(stopped) = &view.stopped {
        blocking.push(reason("stopped", format!("Raft stopped: {stopped}")));
    }
    if local.shutting_down || view.role == Role::ShuttingDown {
        blocking.push(reason(
            "shutting_down",
            "the node is shutting down".to_owned(),
        ));
    }
    if let Some(starting) = local.starting {
        blocking.push(reason("starting", starting.to_owned()));
    }
    if let Some(index) = local.removed_at {
        blocking.push(reason(
            "removed",
            format!("the node was removed from the cluster by the membership change at log index {index}"),
        ));
    }
    if view.leader.is_none() {
        blocking.push(reason(
            "no_leader",
            "no leader is known (an election may be in progress, or the node is not part of a cluster yet)"
                .to_owned(),
        ));
    }
    if !blocking.is_empty() {
        return Health {
            serving: false,
            score: 0,
            reasons: blocking,
        };
    }
    let mut reasons = Vec::new();
    let mut score: u32 = 100;
    let last = view.last_log_index.unwrap_or(0);
    let applied = view.last_applied_index.unwrap_or(0);
    let waiting = last.saturating_sub(applied);
    if waiting > APPLY_LAG_ENTRIES {
        score = score.saturating_sub(30);
        reasons.push(reason(
            "apply_lag",
            format!("{waiting} log entries wait to be applied (applied {applied}, log {last})"),
        ));
    }
    if view.role == Role::Leader {
        if let Some(since) = view.millis_since_quorum_ack
            && since > QUORUM_ACK_MS_MAX
        {
            score = score.saturating_sub(40);
            reasons.push(reason(
                "quorum_lost",
                format!("no quorum of voters acknowledged this leader for {since} ms"),
            ));
        }
        let members = || view.voters.iter().chain(&view.learners);
        let silent = |peer: NodeId| local.unreachable.iter().find(|down| down.peer == peer);
        for member in members() {
            if member.id == this {
                continue;
            }
            if let Some(down) = silent(member.id) {
                score = score.saturating_sub(20);
                reasons.push(reason(
                    "peer_unreachable",
                    format!(
                        "node {} at {} has not answered for {} ms: {}",
                        member.id, member.address, down.for_ms, down.last_error
                    ),
                ));
            }
        }
        for (peer, matched) in &view.replication {
            if *peer == this || silent(*peer).is_some() {
                continue;
            }
            let behind = match matched {
                Some(matched) if last.saturating_sub(*matched) <= PEER_LAG_ENTRIES => continue,
                Some(matched) => format!(
                    "node {peer} is {} entries behind (unreachable or slow)",
                    last - matched
                ),
                None => format!("node {peer} has acknowledged no entry (unreachable?)"),
            };
            score = score.saturating_sub(20);
            reasons.push(reason("peer_behind", behind));
        }
    }
    Health {
        serving: true,
        score,
        reasons,
    }
}

impl Health {
    /// The reasons' details in one line, for a person.
    pub fn detail(&self) -> String {
        self.reasons
            .iter()
            .map(|reason| reason.detail.as_str())
            .collect::<Vec<_>>()
            .join("; ")
    }
}

fn reason(name: &'static str, detail: String) -> Reason {
    Reason { name, detail }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::Member;

    fn leader() -> RaftView {
        RaftView {
            role: Role::Leader,
            leader: Some(1),
            term: 3,
            voters: Vec::new(),
            learners: Vec::new(),
            last_log_index: Some(5_000),
            last_applied_index: Some(5_000),
            stopped: None,
            millis_since_quorum_ack: Some(10),
            replication: vec![(1, Some(5_000)), (2, Some(4_990)), (3, Some(4_999))],
        }
    }

    const READY: Local<'static> = Local {
        shutting_down: false,
        starting: None,
        unreachable: &[],
        removed_at: None,
    };

    fn names(health: &Health) -> Vec<&'static str> {
        health.reasons.iter().map(|reason| reason.name).collect()
    }

    #[test]
    fn a_node_is_scored_by_what_lowers_it() {
        let healthy = assess(1, &leader(), READY);
        assert_eq!((healthy.serving, healthy.score), (true, 100));
        assert!(healthy.reasons.is_empty());

        let mut lagging = leader();
        lagging.last_applied_index = Some(3_000);
        lagging.replication[2] = (3, None);
        lagging.millis_since_quorum_ack = Some(4_000);
        let health = assess(1, &lagging, READY);
        assert_eq!(
            (health.serving, health.score, names(&health)),
            (true, 10, vec!["apply_lag", "quorum_lost", "peer_behind"])
        );

        let mut with_members = leader();
        with_members.voters = [1, 2, 3]
            .map(|id| Member {
                id,
                address: format!("10.0.0.{id}:7070"),
            })
            .to_vec();
        let down = [Unreachable {
            peer: 3,
            for_ms: 5_000,
            last_error: "connection refused".to_owned(),
        }];
        let health = assess(
            1,
            &with_members,
            Local {
                unreachable: &down,
                ..READY
            },
        );
        assert_eq!(
            (health.score, names(&health)),
            (80, vec!["peer_unreachable"])
        );
        assert!(
            health.reasons[0]
                .detail
                .contains("node 3 at 10.0.0.3:7070 has not answered for 5000 ms")
        );

        let mut follower = leader();
        follower.role = Role::Follower;
        follower.replication = vec![(2, None)];
        assert_eq!(
            assess(2, &follower, READY).score,
            100,
            "only a leader judges its peers"
        );

        let mut lost = leader();
        lost.leader = None;
        lost.stopped = Some("storage failed".to_owned());
        let starting = Local {
            starting: Some("deploying the example modules"),
            ..READY
        };
        let health = assess(1, &lost, starting);
        assert_eq!(
            (health.serving, health.score, names(&health)),
            (false, 0, vec!["stopped", "starting", "no_leader"])
        );

        let removed = Local {
            removed_at: Some(42),
            ..READY
        };
        let health = assess(3, &leader(), removed);
        assert_eq!((health.serving, names(&health)), (false, vec!["removed"]));
        assert!(health.reasons[0].detail.contains("log index 42"));
    }
}
