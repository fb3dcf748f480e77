//! wasmraft-core: the replicated command — what a client asks the cluster to
//! do, as it travels through the Raft log, and what applying it answers —
//! with its binary encoding ([`codec`]), the deterministic field checks
//! ([`check`]) and the cluster settings apply reads ([`settings`]).
//!
//! **Invariant: plain data and pure functions.** This crate does no I/O and
//! depends on no runtime, storage, consensus or RPC library (no tokio, redb,
//! wasmtime, openraft or tonic), so everything in it is testable on its own
//! and means the same on every replica.
//!
//! The log store encodes commands with [`codec`]; the API layer builds them
//! from protobuf; the state machine applies them. A [`Request`] carries all
//! the context a replica needs to apply it identically to every other
//! replica: the leader's timestamp and the caller's identity are fixed when
//! the command is proposed, never read locally at apply time.

use serde::{Deserialize, Serialize};

pub mod check;
pub mod codec;
pub mod settings;

pub use settings::{
    ClusterSettings, PositionalSettingsUpdate, SettingError, SettingsRecord, SettingsUpdate,
    StorageQuota,
};

/// A content hash (sha256) of a module's wasm bytes.
pub type ModuleHash = [u8; 32];

/// One command with the context fixed at proposal time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// Milliseconds since the Unix epoch on the leader's clock when it proposed
    /// the command: the only clock a module ever sees.
    pub timestamp_ms: i64,
    /// The authenticated subject that submitted the command; empty for the system.
    pub caller: String,
    pub command: Command,
}

/// The kinds of state change. Every state change of the cluster is one of these
/// (membership changes are openraft's own entries).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Deploy a module under a name, or upgrade the module of that name.
    Deploy(Deploy),
    /// Remove a module and all its state.
    Remove { name: String },
    /// Run a module's `apply` export.
    Invoke(Invoke),
    /// Change the access policy.
    Access(AccessChange),
    /// Several client commands carried by one log entry, applied in order,
    /// each with its own caller and timestamp. The leader batches commands
    /// that arrive while the previous entry is being written, so a burst of
    /// clients costs one fsync, not one each. Batches never nest.
    Batch(Vec<Request>),
    /// Register a client session of the caller (Raft dissertation, §6.3):
    /// invokes name only registered sessions, so one the cluster forgot is
    /// refused as expired, never applied a second time. The cluster names
    /// the session after `client_id` and the command's log position, so a
    /// retried open makes a new, unused session rather than reopening one.
    OpenSession { client_id: String },
    /// Change the cluster settings, as releases of state format 2 wrote it
    /// (six settings, by position). Still applied from older logs, exactly
    /// as those releases applied it; this build proposes
    /// [`Command::ChangeSettings`].
    Settings(PositionalSettingsCommand),
    /// Name the cluster, once: proposed by the node that bootstraps it.
    /// Applied only while the state holds no cluster id, so proposing it
    /// again after a crash changes nothing; peers of different clusters
    /// refuse each other's messages by it.
    ClusterId { cluster_id: String },
    /// A client command with the authorisation its edge gave it. Apply
    /// checks it again when the access policy changed since `revision`
    /// (a revoke committed while the command was in flight), against the
    /// policy in force then: the same answer on every replica. Commands of
    /// a node that does not authenticate its callers (a dev node) and of
    /// the system travel unwrapped.
    Authorized(Box<Authorized>),
    /// A client command with the trace context of the call that proposed
    /// it, so that applying it on every replica joins the client's trace.
    /// Only the outermost envelope of a request, and only for a sampled
    /// call; apply reads it for its spans alone, never for the state.
    Traced(Box<Traced>),
    /// Change the cluster settings, each named: a setting added later needs
    /// no new command.
    ChangeSettings(SettingsCommand),
}

/// See [`Command::Traced`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Traced {
    pub trace: TraceContext,
    /// The command itself, plain or [`Command::Authorized`]: never a batch
    /// or another `Traced`.
    pub command: Command,
}

/// A W3C trace context (`traceparent`) in its binary form: the trace, the
/// span that proposed the command, and the trace flags (bit 0: sampled).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TraceContext {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub flags: u8,
}

/// See [`Command::Authorized`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Authorized {
    /// The access policy revision the caller was authorised against: the
    /// log index of the last access change then applied.
    pub revision: u64,
    /// The token that authenticated the caller, when one did (a client
    /// certificate needs none): apply refuses the command if the token was
    /// revoked meanwhile.
    pub token_id: Option<String>,
    /// The command itself: never a batch or another `Authorized`.
    pub command: Command,
}

/// See [`Command::Settings`]: [`SettingsCommand`] with the settings by position.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PositionalSettingsCommand {
    pub update: PositionalSettingsUpdate,
    pub initial: bool,
    pub engine_fingerprint: String,
}

impl From<&PositionalSettingsCommand> for SettingsCommand {
    fn from(command: &PositionalSettingsCommand) -> Self {
        SettingsCommand {
            update: SettingsUpdate::from(&command.update),
            initial: command.initial,
            engine_fingerprint: command.engine_fingerprint.clone(),
        }
    }
}

/// A change of the cluster settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SettingsCommand {
    pub update: SettingsUpdate,
    /// The first settings of a new cluster, proposed by the node that
    /// bootstrapped it: applied only when the state has none yet, so that
    /// proposing them again after a crash changes nothing.
    pub initial: bool,
    /// The proposing node's wasm engine fingerprint, recorded when the
    /// state has no settings yet (the cluster's engine from then on).
    pub engine_fingerprint: String,
}

#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deploy {
    pub name: String,
    /// The module's wasm bytes, validated at the edge before proposal.
    #[serde(with = "serde_bytes")]
    pub wasm: Vec<u8>,
    /// sha256 of `wasm`, checked by the API before proposing and again at apply.
    pub hash: ModuleHash,
    /// The argument of the module's `init` (first deploy) or `migrate` (upgrade).
    #[serde(with = "serde_bytes")]
    pub init_argument: Vec<u8>,
    /// Per-module limits; `None` takes the cluster default.
    pub limits: ModuleLimits,
}

impl std::fmt::Debug for Deploy {
    // The wasm bytes are summarised: a log line must not carry megabytes.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deploy")
            .field("name", &self.name)
            .field("wasm_bytes", &self.wasm.len())
            .field("hash", &hex::encode(self.hash))
            .field("init_argument_bytes", &self.init_argument.len())
            .field("limits", &self.limits)
            .finish()
    }
}

/// Limits a deployer may ask for; the cluster maxima clamp them at apply.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModuleLimits {
    pub fuel_per_call: Option<u64>,
    pub memory_bytes: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Invoke {
    pub module: String,
    #[serde(with = "serde_bytes")]
    pub input: Vec<u8>,
    /// The client session this command belongs to, for exactly-once apply.
    pub session: Option<SessionId>,
}

/// Identifies one command of one client: a retry carries the same pair, so the
/// state machine answers it with the first result instead of applying it twice.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionId {
    pub client_id: String,
    pub sequence: u64,
}

/// A change to the replicated access policy. Each one that changes
/// something moves the policy revision to its log index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AccessChange {
    Grant(AccessRule),
    Revoke(AccessRule),
    /// Record a bearer token (its hash only: the secret never enters the log).
    CreateToken(TokenGrant),
    /// Forget a token: calls made with it are refused from then on.
    RevokeToken {
        token_id: String,
    },
    /// The first administrator of a secure cluster, proposed by the node
    /// that bootstraps it: records the token and grants its subject
    /// `cluster_admin`, only while the state holds no token and no rule,
    /// so proposing it again after a crash changes nothing.
    Bootstrap(TokenGrant),
}

/// A bearer token as replicated.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenGrant {
    /// The token's public name (`check::token_id`).
    pub token_id: String,
    /// Who the token identifies.
    pub subject: String,
    /// sha256 of the token's secret.
    pub secret_sha256: [u8; 32],
}

impl std::fmt::Debug for TokenGrant {
    // A hash of a 256-bit secret reveals nothing, but a log line needs none of it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenGrant")
            .field("token_id", &self.token_id)
            .field("subject", &self.subject)
            .finish_non_exhaustive()
    }
}

/// `subject` holds `role`, optionally only for modules matching `module_pattern`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct AccessRule {
    pub subject: String,
    pub role: String,
    pub module_pattern: Option<String>,
}

/// What applying one log entry answered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// Entries without a client: blank entries of a new leader, membership changes.
    Empty,
    Deployed(Deployed),
    Removed {
        name: String,
    },
    Invoked(CallResult),
    AccessChanged {
        changed: bool,
    },
    /// One response per command of a [`Command::Batch`], in order.
    Batch(Vec<Response>),
    /// The command was valid when proposed but could not be applied to the
    /// state it met (every replica refuses it the same way; nothing changed).
    Refused(Refusal),
    SessionOpened {
        /// The session's name, to put in the invokes of the session: the
        /// requested name and the place of the command in the log, so every
        /// open makes a session no other open made (a late duplicate of an
        /// open cannot bring back a session the cluster forgot).
        client_id: String,
    },
    /// The settings in force after a [`Command::Settings`] (unchanged when
    /// the command was an initial one and the cluster had settings).
    Settings(SettingsRecord),
    /// The cluster id in force after a [`Command::ClusterId`] (the first
    /// one recorded, whatever a later command proposed).
    ClusterId {
        cluster_id: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deployed {
    pub name: String,
    /// 1 for a first deploy, incremented by each upgrade.
    pub version: u64,
    pub hash: ModuleHash,
    /// The outcome of `init` or `migrate`, when the module exports it.
    pub setup: Option<CallResult>,
}

/// A deterministic refusal at apply time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum Refusal {
    #[error("module `{0}` is not deployed")]
    ModuleNotFound(String),
    #[error("module rejected: {0}")]
    InvalidModule(String),
    #[error("the wasm bytes do not match the announced sha256")]
    HashMismatch,
    #[error("module setup failed: {0}")]
    SetupFailed(String),
    #[error("a batch of commands cannot contain another batch")]
    NestedBatch,
    #[error(
        "sequence {sequence} of client `{client_id}` is not the session's next command: it is older than the last applied one, or the session is not open (never opened, or forgotten by the cluster); open a new session"
    )]
    SessionExpired { client_id: String, sequence: u64 },
    /// A command that breaks a rule the edge checks (it did not pass the
    /// edge: forwarded by a faulty peer, or written by hand).
    #[error("invalid command: {0}")]
    InvalidCommand(String),
    #[error(transparent)]
    InvalidSetting(SettingError),
    /// The token the command was authenticated with was revoked before the
    /// command applied.
    #[error("the token `{token_id}` was revoked before the command applied")]
    TokenRevoked { token_id: String },
    /// The caller lost the permission the command needs before it applied.
    #[error(
        "`{subject}` may no longer {action} (the access policy changed before the command applied)"
    )]
    PermissionDenied { subject: String, action: String },
}

/// The result of one guest call, as replicated: identical on every replica.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallResult {
    pub outcome: CallOutcome,
    pub fuel_used: u64,
}

/// How a guest call ended. Only `Ok` commits the call's writes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CallOutcome {
    Ok(#[serde(with = "serde_bytes")] Vec<u8>),
    GuestError(String),
    OutOfFuel {
        limit: u64,
    },
    MemoryLimit {
        limit_bytes: u64,
    },
    Trap {
        kind: String,
        message: String,
    },
    OutputTooLarge {
        limit_bytes: u64,
    },
    MissingExport(String),
    /// A query ran past its wall-clock limit. Never the outcome of `apply`,
    /// which only fuel limits.
    TimedOut,
    /// The call's writes would have taken its module past its storage quota
    /// (the cluster settings `module_storage_bytes_max` and
    /// `module_storage_keys_max`): none of them was committed. `bytes` and
    /// `keys` are what the module would have held.
    StorageQuota {
        bytes: u64,
        keys: u64,
        bytes_max: u64,
        keys_max: u64,
    },
}

impl CallOutcome {
    pub fn is_ok(&self) -> bool {
        matches!(self, CallOutcome::Ok(_))
    }
}

impl Command {
    /// A short name of the command kind, for traces and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Command::Deploy(_) => "deploy",
            Command::Remove { .. } => "remove",
            Command::Invoke(_) => "invoke",
            Command::Access(_) => "access",
            Command::Batch(_) => "batch",
            Command::OpenSession { .. } => "open_session",
            Command::Settings(_) | Command::ChangeSettings(_) => "settings",
            Command::ClusterId { .. } => "cluster_id",
            Command::Authorized(authorized) => authorized.command.kind(),
            Command::Traced(traced) => traced.command.kind(),
        }
    }

    /// The command itself, out of its [`Command::Traced`] and
    /// [`Command::Authorized`] envelopes.
    pub fn unwrapped(&self) -> &Command {
        match self {
            Command::Traced(traced) => traced.command.unwrapped(),
            Command::Authorized(authorized) => &authorized.command,
            command => command,
        }
    }

    /// The trace context of a [`Command::Traced`] command.
    pub fn trace(&self) -> Option<&TraceContext> {
        match self {
            Command::Traced(traced) => Some(&traced.trace),
            _ => None,
        }
    }
}

impl Response {
    /// A stable short label of what applying a command answered, for traces
    /// and metrics: a call's outcome, `refused`, or `ok`.
    pub fn label(&self) -> &'static str {
        match self {
            Response::Invoked(result) => result.outcome.label(),
            Response::Refused(_) => "refused",
            _ => "ok",
        }
    }
}

impl CallOutcome {
    /// A stable short label, for traces and metrics.
    pub fn label(&self) -> &'static str {
        match self {
            CallOutcome::Ok(_) => "ok",
            CallOutcome::GuestError(_) => "guest_error",
            CallOutcome::OutOfFuel { .. } => "out_of_fuel",
            CallOutcome::MemoryLimit { .. } => "memory_limit",
            CallOutcome::Trap { .. } => "trap",
            CallOutcome::OutputTooLarge { .. } => "output_too_large",
            CallOutcome::MissingExport(_) => "missing_export",
            CallOutcome::TimedOut => "timed_out",
            CallOutcome::StorageQuota { .. } => "storage_quota",
        }
    }
}
