//! Who is calling, and whether they may: the edge of every client method.
//!
//! [`Gate::authenticate`] turns a call's metadata into an [`Identity`]:
//!
//! | the call carries | identity | or |
//! |---|---|---|
//! | nothing, on a node that does not authenticate (`--dev`, `--insecure`) | [`Identity::Anonymous`] | |
//! | `authorization: Bearer wr_…` of a token the cluster holds | [`Identity::Subject`] | `UNAUTHENTICATED` (malformed, unknown or revoked) |
//! | a peer credential (`wasmraft-peer-*`) of this cluster's secret | [`Identity::Node`] | as `PeerAuth::check` |
//! | nothing, on a node that authenticates | | `UNAUTHENTICATED` |
//!
//! [`Gate::authorize`] asks the policy in force ([`AccessView`]) whether the
//! identity may take an action on an object, and gives the [`Caller`] the
//! command is proposed for: its subject, and the revision and token it was
//! authorised with, which apply checks again if the policy changed since.
//!
//! The view is the replicated access state as this node last applied it:
//! the state machine replaces it whenever it applies an access change or
//! installs a snapshot, so a revoke is in force here as soon as this node
//! applied it.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex, RwLock};

use serde::{Deserialize, Serialize};
use tonic::metadata::MetadataMap;

use super::peer::{PEER_PROOF_HEADER, PeerAuth};
use super::policy::{Action, Policy};
use super::token::Token;
use crate::command::{AccessRule, TokenGrant, check};
use crate::raft::NodeId;

/// The subject of every call on a node that does not authenticate.
pub const ANONYMOUS: &str = "anonymous";

/// Who a call comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// Any caller of a node that does not authenticate: allowed everything.
    Anonymous,
    /// A subject the cluster knows, by a token (or a client certificate:
    /// no token id).
    Subject {
        subject: String,
        token_id: Option<String>,
    },
    /// Another node of the cluster (its status polls): may view the cluster.
    Node(NodeId),
}

impl Identity {
    /// The subject a module sees as its caller.
    pub fn subject(&self) -> String {
        match self {
            Identity::Anonymous => ANONYMOUS.to_owned(),
            Identity::Subject { subject, .. } => subject.clone(),
            Identity::Node(id) => format!("node-{id}"),
        }
    }
}

/// The subject a command is proposed for, with what it was authorised by.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Caller {
    pub subject: String,
    /// `None` when the node does not authenticate, and for the system.
    pub authorization: Option<Authorization>,
}

/// What a caller was authorised with at the edge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Authorization {
    /// The policy revision in force then.
    pub revision: u64,
    /// The token that authenticated it.
    pub token_id: Option<String>,
}

impl Caller {
    /// The cluster itself (bootstrap's commands): never checked.
    pub fn system() -> Self {
        Self {
            subject: String::new(),
            authorization: None,
        }
    }

    /// A caller of a node that does not authenticate.
    pub fn unchecked(subject: impl Into<String>) -> Self {
        Self {
            subject: subject.into(),
            authorization: None,
        }
    }
}

/// Why a call is refused at the edge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum Denied {
    /// No credential, or one that proves nothing: `UNAUTHENTICATED`.
    #[error("{0}")]
    Unauthenticated(String),
    /// A valid credential without the permission: `PERMISSION_DENIED`.
    #[error("{0}")]
    PermissionDenied(String),
}

/// The most subjects whose casbin policies an [`AccessView`] keeps built;
/// past it the cache starts over (a subject's policy is rebuilt on use).
const SUBJECT_POLICIES_MAX: usize = 1024;

/// The most decisions an [`AccessView`] remembers; past it the memory
/// starts over (a decision is made again by casbin on its next use).
const DECISIONS_MAX: usize = 16_384;

/// One question the edge asks of the policy.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Question {
    subject: String,
    action: Action,
    object: String,
}

/// The replicated access state, as this node last applied it.
#[derive(Debug)]
pub struct AccessView {
    /// The log index of the last access change applied (0: none yet).
    pub revision: u64,
    tokens: HashMap<String, TokenGrant>,
    /// Each subject's bindings, in order of subject, then role and pattern.
    /// casbin's enforce walks every policy line, so one policy of every
    /// binding costs milliseconds per call with a thousand tenants: a call
    /// is decided by its subject's bindings alone.
    by_subject: BTreeMap<String, Vec<AccessRule>>,
    /// The answers given since this view was made. A view never changes
    /// (an access change replaces it), so an answer holds for its whole
    /// life, and the edge asks casbin (tens of microseconds) once per
    /// subject, action and module instead of once per call.
    decisions: RwLock<HashMap<Question, bool>>,
    /// The casbin policies of the subjects asked about, built on first use
    /// (a question not yet answered: a new action or module name).
    policies: Mutex<HashMap<String, Arc<Policy>>>,
}

impl AccessView {
    pub fn new(revision: u64, rules: Vec<AccessRule>, tokens: Vec<TokenGrant>) -> Self {
        let mut by_subject: BTreeMap<String, Vec<AccessRule>> = BTreeMap::new();
        for rule in rules {
            by_subject
                .entry(rule.subject.clone())
                .or_default()
                .push(rule);
        }
        for held in by_subject.values_mut() {
            held.sort();
        }
        Self {
            revision,
            tokens: tokens
                .into_iter()
                .map(|grant| (grant.token_id.clone(), grant))
                .collect(),
            by_subject,
            decisions: RwLock::new(HashMap::new()),
            policies: Mutex::new(HashMap::new()),
        }
    }

    /// Every role binding, ordered by subject, role and pattern.
    pub fn rules(&self) -> impl Iterator<Item = &AccessRule> {
        self.by_subject.values().flatten()
    }

    /// The role bindings of `subject`, ordered by role and pattern.
    pub fn rules_of(&self, subject: &str) -> &[AccessRule] {
        self.by_subject.get(subject).map_or(&[], Vec::as_slice)
    }

    /// The empty policy of a state that holds no access change.
    pub fn empty() -> Self {
        Self::new(0, Vec::new(), Vec::new())
    }

    /// The subject `token` identifies, if the cluster holds it.
    pub fn token_subject(&self, token: &Token) -> Option<&str> {
        let grant = self.tokens.get(token.id())?;
        token
            .proves(&grant.secret_sha256)
            .then_some(grant.subject.as_str())
    }

    /// Whether a token of that id is held.
    pub fn holds_token(&self, token_id: &str) -> bool {
        self.tokens.contains_key(token_id)
    }

    /// The tokens held, by id.
    pub fn tokens(&self) -> impl Iterator<Item = &TokenGrant> {
        self.tokens.values()
    }

    /// Whether `subject` may take `action` on `object`: casbin's answer
    /// over the subject's bindings (a subject without any may do nothing).
    pub fn allows(&self, subject: &str, action: Action, object: &str) -> bool {
        let Some(rules) = self.by_subject.get(subject) else {
            return false;
        };
        let question = Question {
            subject: subject.to_owned(),
            action,
            object: object.to_owned(),
        };
        if let Some(&answer) = self
            .decisions
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&question)
        {
            return answer;
        }
        let policy = {
            let mut policies = self
                .policies
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if policies.len() >= SUBJECT_POLICIES_MAX && !policies.contains_key(subject) {
                policies.clear();
            }
            policies
                .entry(subject.to_owned())
                .or_insert_with(|| Arc::new(Policy::new(rules)))
                .clone()
        };
        let answer = policy.allows(subject, action, object);
        let mut decisions = self
            .decisions
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if decisions.len() >= DECISIONS_MAX {
            decisions.clear();
        }
        decisions.insert(question, answer);
        answer
    }
}

/// The access view in force, shared by the state machine (which replaces
/// it) and the edge (which reads it).
#[derive(Clone)]
pub struct AccessCache(Arc<RwLock<Arc<AccessView>>>);

impl fmt::Debug for AccessCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("AccessCache")
            .field(&self.current().revision)
            .finish()
    }
}

impl Default for AccessCache {
    fn default() -> Self {
        Self(Arc::new(RwLock::new(Arc::new(AccessView::empty()))))
    }
}

impl AccessCache {
    pub fn current(&self) -> Arc<AccessView> {
        self.0
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    pub fn replace(&self, view: AccessView) {
        *self
            .0
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(view);
    }
}

/// The edge's authentication and authorisation.
#[derive(Debug, Clone)]
pub struct Gate {
    enforced: bool,
    access: AccessCache,
    peers: PeerAuth,
}

impl Gate {
    /// A gate that authenticates every caller (`enforced`), or lets every
    /// caller in as [`Identity::Anonymous`].
    pub fn new(enforced: bool, access: AccessCache, peers: PeerAuth) -> Self {
        Self {
            enforced,
            access,
            peers,
        }
    }

    /// Whether callers must authenticate.
    pub fn enforced(&self) -> bool {
        self.enforced
    }

    /// The access view in force.
    pub fn view(&self) -> Arc<AccessView> {
        self.access.current()
    }

    /// Who the call of `metadata` comes from (see the module documentation).
    pub fn authenticate(&self, metadata: &MetadataMap) -> Result<Identity, Denied> {
        self.authenticate_with_certificate(metadata, None)
    }

    /// Like [`Gate::authenticate`], for a caller whose TLS client
    /// certificate (checked by the TLS layer against the client CA) names
    /// `certificate_subject`: without a token or a peer proof, that is who
    /// it is. A token, when sent, takes precedence.
    pub fn authenticate_with_certificate(
        &self,
        metadata: &MetadataMap,
        certificate_subject: Option<&str>,
    ) -> Result<Identity, Denied> {
        if let Some(value) = metadata.get("authorization") {
            let text = value.to_str().map_err(|_| {
                Denied::Unauthenticated("the `authorization` metadata is not text".to_owned())
            })?;
            let presented = text
                .strip_prefix("Bearer ")
                .or_else(|| text.strip_prefix("bearer "))
                .ok_or_else(|| {
                    Denied::Unauthenticated(
                        "the `authorization` metadata must be `Bearer TOKEN`".to_owned(),
                    )
                })?;
            let token = Token::parse(presented.trim())
                .map_err(|malformed| Denied::Unauthenticated(malformed.to_string()))?;
            if !self.enforced {
                return Ok(Identity::Anonymous);
            }
            let view = self.view();
            return match view.token_subject(&token) {
                Some(subject) => Ok(Identity::Subject {
                    subject: subject.to_owned(),
                    token_id: Some(token.id().to_owned()),
                }),
                None => Err(Denied::Unauthenticated(format!(
                    "token `{}` is not valid: unknown, or revoked; ask an administrator for a new one (`wasmraft access token create`)",
                    token.id()
                ))),
            };
        }
        if metadata.contains_key(PEER_PROOF_HEADER) {
            let peer = self
                .peers
                .check(metadata)
                .map_err(|status| Denied::Unauthenticated(status.message().to_owned()))?;
            if let Some(id) = peer.node_id {
                return Ok(Identity::Node(id));
            }
        }
        if !self.enforced {
            return Ok(Identity::Anonymous);
        }
        if let Some(subject) = certificate_subject {
            check::subject(subject).map_err(|reason| {
                Denied::Unauthenticated(format!(
                    "the client certificate's common name cannot be a subject: {reason}"
                ))
            })?;
            return Ok(Identity::Subject {
                subject: subject.to_owned(),
                token_id: None,
            });
        }
        Err(Denied::Unauthenticated(
            "this cluster requires authentication: send `authorization: Bearer TOKEN` (the CLI's --token or WASMRAFT_TOKEN)".to_owned(),
        ))
    }

    /// Whether `identity` may take `action` on `object`, and the caller a
    /// command it makes is proposed for.
    pub fn authorize(
        &self,
        identity: &Identity,
        action: Action,
        object: &str,
    ) -> Result<Caller, Denied> {
        match identity {
            Identity::Anonymous => Ok(Caller::unchecked(ANONYMOUS)),
            Identity::Node(id) => {
                if action == Action::ClusterView {
                    Ok(Caller::unchecked(identity.subject()))
                } else {
                    Err(Denied::PermissionDenied(format!(
                        "node {id} may only view the cluster, not {}",
                        action.describe(object)
                    )))
                }
            }
            Identity::Subject { subject, token_id } => {
                let view = self.view();
                if view.allows(subject, action, object) {
                    Ok(Caller {
                        subject: subject.clone(),
                        authorization: Some(Authorization {
                            revision: view.revision,
                            token_id: token_id.clone(),
                        }),
                    })
                } else {
                    Err(Denied::PermissionDenied(format!(
                        "`{subject}` may not {}",
                        action.describe(object)
                    )))
                }
            }
        }
    }

    /// Checks again, on the leader, a caller a follower authorised: its
    /// token must still be held and its permission still given, by the
    /// policy in force here. Returns the caller with this node's revision.
    pub fn reauthorize(
        &self,
        caller: &Caller,
        permission: Option<(Action, &str)>,
    ) -> Result<Caller, Denied> {
        let (Some(authorization), Some((action, object))) = (&caller.authorization, permission)
        else {
            return Ok(caller.clone());
        };
        let view = self.view();
        if let Some(token_id) = &authorization.token_id
            && !view.holds_token(token_id)
        {
            return Err(Denied::Unauthenticated(format!(
                "token `{token_id}` is not valid: unknown, or revoked"
            )));
        }
        let identity = Identity::Subject {
            subject: caller.subject.clone(),
            token_id: authorization.token_id.clone(),
        };
        self.authorize(&identity, action, object)
    }
}
