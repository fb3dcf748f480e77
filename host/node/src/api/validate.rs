//! Input validation at the edge, before anything reaches the log: module
//! names, payload sizes, client sessions, and the assembly of a streamed
//! deploy (header first, size cap while receiving, sha256 at the end).
//!
//! Pure functions over plain data; each refusal is an [`InputError`] whose
//! message tells the caller what to change.

use sha2::{Digest, Sha256};
use wasmraft_proto::v1 as proto;
use wasmraft_proto::v1::DeployHeader;
use wasmraft_proto::v1::deploy_chunk::Content;

use crate::command::{AccessRule, ModuleHash, ModuleLimits, SessionId, SettingsUpdate, check};
use crate::node::config::LimitSettings;

pub use crate::command::check::{CLIENT_ID_BYTES_MAX, MODULE_NAME_BYTES_MAX};
/// Room for the fields around an input in one gRPC message.
const MESSAGE_OVERHEAD_BYTES: u64 = 64 * 1024;
/// The gRPC message size every client may count on (tonic's default): deploy
/// chunks are sized to it.
const MESSAGE_BYTES_FLOOR: u64 = 4 * 1024 * 1024;

/// A request the node refuses before it reaches the log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InputError {
    /// A role binding, subject or token id that cannot be stored.
    #[error("{0}")]
    Access(String),
    #[error(
        "invalid module name `{name}`: {reason} (1 to 64 characters from a-z, 0-9, `-` and `_`, starting with a letter)"
    )]
    ModuleName { name: String, reason: &'static str },
    #[error("{what} is {size_bytes} bytes, above the limit of {limit_bytes} bytes ({setting})")]
    TooLarge {
        what: &'static str,
        size_bytes: u64,
        limit_bytes: u64,
        setting: &'static str,
    },
    #[error("invalid session: {0}")]
    Session(String),
    #[error("unknown consistency value {0}; use CONSISTENCY_LINEARIZABLE or CONSISTENCY_STALE")]
    Consistency(i32),
    #[error("the deploy stream must start with a header message")]
    MissingHeader,
    #[error("the deploy stream carries a second header; send the header only once, first")]
    SecondHeader,
    #[error("the deploy stream ended before its header")]
    EmptyStream,
    #[error("invalid deploy header: `{field}` {reason}")]
    Header { field: &'static str, reason: String },
    #[error("received {received_bytes} bytes but the header announced {announced_bytes}")]
    SizeMismatch {
        announced_bytes: u64,
        received_bytes: u64,
    },
    #[error(
        "the received module hashes to sha256 {computed}, not the announced {announced}: the upload was truncated or corrupted"
    )]
    HashMismatch { announced: String, computed: String },
    #[error(
        "an init argument was given but the module exports neither `init` nor `migrate`; leave it unset"
    )]
    UnusedInitArgument,
    #[error("the request changes no setting; set at least one field")]
    NoSettings,
    #[error(transparent)]
    Setting(#[from] crate::command::SettingError),
}

/// The settings a `SetSettingsRequest` changes, each checked against its
/// range.
pub fn settings_request(request: &proto::SetSettingsRequest) -> Result<SettingsUpdate, InputError> {
    let mut update = SettingsUpdate::default();
    let fields = [
        ("fuel_per_call_max", request.fuel_per_call_max),
        ("memory_bytes_max", request.memory_bytes_max),
        ("output_bytes_max", request.output_bytes_max),
        ("module_bytes_max", request.module_bytes_max),
        ("session_table_bytes_max", request.session_table_bytes_max),
        ("sessions_per_caller_max", request.sessions_per_caller_max),
        ("module_storage_bytes_max", request.module_storage_bytes_max),
        ("module_storage_keys_max", request.module_storage_keys_max),
    ];
    for (field, value) in fields {
        if let Some(value) = value {
            update.set(field, value)?;
        }
    }
    Ok(update)
}

/// The access rule a role binding names, checked as apply checks it.
pub fn role_binding(binding: Option<proto::RoleBinding>) -> Result<AccessRule, InputError> {
    let binding = binding.ok_or_else(|| InputError::Access("the binding is missing".to_owned()))?;
    let role = match proto::Role::try_from(binding.role) {
        Ok(proto::Role::ClusterAdmin) => "cluster_admin",
        Ok(proto::Role::ClusterOperator) => "cluster_operator",
        Ok(proto::Role::ClusterViewer) => "cluster_viewer",
        Ok(proto::Role::ModuleDeployer) => "module_deployer",
        Ok(proto::Role::ModuleInvoker) => "module_invoker",
        Ok(proto::Role::ModuleQuerier) => "module_querier",
        Ok(proto::Role::Unspecified) | Err(_) => {
            return Err(InputError::Access(format!(
                "role {} is not one of the roles of access.proto",
                binding.role
            )));
        }
    };
    let rule = AccessRule {
        subject: binding.subject,
        role: role.to_owned(),
        module_pattern: binding.module_pattern,
    };
    check::access_rule(&rule).map_err(InputError::Access)?;
    Ok(rule)
}

/// The consistency a query asks for.
pub fn consistency(value: i32) -> Result<proto::Consistency, InputError> {
    proto::Consistency::try_from(value).map_err(|_| InputError::Consistency(value))
}

/// Checks a settings change against the settings in force at the edge
/// (apply checks it again against those of its own moment).
pub fn settings_update(
    current: &crate::command::ClusterSettings,
    update: &crate::command::SettingsUpdate,
) -> Result<(), InputError> {
    if update.is_empty() {
        return Err(InputError::NoSettings);
    }
    current.updated(update)?;
    Ok(())
}

/// The open session request's client id.
pub fn open_session(client_id: &str) -> Result<(), InputError> {
    check::session_prefix(client_id).map_err(InputError::Session)
}

/// Checks a module name.
pub fn module_name(name: &str) -> Result<(), InputError> {
    check::module_name(name).map_err(|reason| InputError::ModuleName {
        name: name.chars().take(80).collect(),
        reason,
    })
}

/// Checks the size of an invoke or query input.
pub fn payload(
    what: &'static str,
    size_bytes: usize,
    limits: &LimitSettings,
) -> Result<(), InputError> {
    let size_bytes = size_bytes as u64;
    if size_bytes > limits.payload_bytes_max {
        return Err(InputError::TooLarge {
            what,
            size_bytes,
            limit_bytes: limits.payload_bytes_max,
            setting: "limits.payload_bytes_max",
        });
    }
    Ok(())
}

/// The session of an invoke: none for an empty client id (then sequence
/// must be 0), else sequence from 1.
pub fn session(client_id: &str, sequence: u64) -> Result<Option<SessionId>, InputError> {
    if client_id.is_empty() {
        if sequence != 0 {
            return Err(InputError::Session(format!(
                "sequence is {sequence} but client_id is empty; set a client_id, or send sequence 0 for no session"
            )));
        }
        return Ok(None);
    }
    check::client_id(client_id).map_err(InputError::Session)?;
    if sequence == 0 {
        return Err(InputError::Session(
            "sequence must start at 1 when a client_id is set".to_owned(),
        ));
    }
    Ok(Some(SessionId {
        client_id: client_id.to_owned(),
        sequence,
    }))
}

/// Parses 64 lowercase hexadecimal characters.
pub fn sha256_hex(text: &str) -> Result<ModuleHash, InputError> {
    let valid = text.len() == 64
        && text
            .chars()
            .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c));
    let hash = valid
        .then(|| hex::decode(text).ok())
        .flatten()
        .and_then(|bytes| ModuleHash::try_from(bytes).ok());
    hash.ok_or_else(|| InputError::Header {
        field: "sha256_hex",
        reason: "must be 64 lowercase hexadecimal characters".to_owned(),
    })
}

/// The largest gRPC message the client API accepts: an input at the payload
/// cap with room to spare, and never below the 4 MiB clients count on.
pub fn api_message_bytes_max(limits: &LimitSettings) -> usize {
    let bytes = (limits.payload_bytes_max + MESSAGE_OVERHEAD_BYTES).max(MESSAGE_BYTES_FLOOR);
    usize::try_from(bytes).unwrap_or(usize::MAX)
}

/// A module received completely and checked against its header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeployUpload {
    pub name: String,
    pub wasm: Vec<u8>,
    pub hash: ModuleHash,
    /// `None` when the header left it unset.
    pub init_argument: Option<Vec<u8>>,
    pub limits: ModuleLimits,
}

/// Assembles a streamed deploy chunk by chunk, refusing as early as it can.
#[derive(Debug)]
pub struct DeployAssembler {
    module_bytes_max: u64,
    payload_bytes_max: u64,
    /// Set by the first chunk.
    header: Option<Header>,
}

#[derive(Debug)]
struct Header {
    name: String,
    hash: ModuleHash,
    size_bytes: u64,
    init_argument: Option<Vec<u8>>,
    limits: ModuleLimits,
    wasm: Vec<u8>,
}

impl DeployAssembler {
    /// An assembler for this node's payload limit and the cluster's module
    /// size limit.
    pub fn new(limits: &LimitSettings, module_bytes_max: u64) -> Self {
        Self {
            module_bytes_max,
            payload_bytes_max: limits.payload_bytes_max,
            header: None,
        }
    }

    /// The module's name, once the header arrived: a deploy is authorised
    /// on it before the rest of the stream is read.
    pub fn module_name(&self) -> Option<&str> {
        self.header.as_ref().map(|header| header.name.as_str())
    }

    /// The size of the wasm the header announced (checked against the
    /// module size bound), once the header arrived: no more is taken.
    pub fn announced_bytes(&self) -> Option<u64> {
        self.header.as_ref().map(|header| header.size_bytes)
    }

    /// Takes the next chunk of the stream.
    pub fn push(&mut self, content: Option<Content>) -> Result<(), InputError> {
        match (content, &mut self.header) {
            (Some(Content::Header(header)), None) => {
                self.header = Some(self.check_header(header)?);
                Ok(())
            }
            (Some(Content::Header(_)), Some(_)) => Err(InputError::SecondHeader),
            (Some(Content::Data(_)) | None, None) => Err(InputError::MissingHeader),
            (None, Some(_)) => Ok(()),
            (Some(Content::Data(data)), Some(header)) => {
                let received = header.wasm.len() as u64 + data.len() as u64;
                if received > header.size_bytes {
                    return Err(InputError::SizeMismatch {
                        announced_bytes: header.size_bytes,
                        received_bytes: received,
                    });
                }
                header.wasm.extend_from_slice(&data);
                Ok(())
            }
        }
    }

    fn check_header(&self, header: DeployHeader) -> Result<Header, InputError> {
        module_name(&header.name)?;
        let hash = sha256_hex(&header.sha256_hex)?;
        if header.size_bytes == 0 {
            return Err(InputError::Header {
                field: "size_bytes",
                reason: "is 0; give the size of the wasm binary".to_owned(),
            });
        }
        if header.size_bytes > self.module_bytes_max {
            return Err(InputError::TooLarge {
                what: "the module",
                size_bytes: header.size_bytes,
                limit_bytes: self.module_bytes_max,
                setting: "cluster setting module_bytes_max",
            });
        }
        if let Some(argument) = &header.init_argument
            && argument.len() as u64 > self.payload_bytes_max
        {
            return Err(InputError::TooLarge {
                what: "the init argument",
                size_bytes: argument.len() as u64,
                limit_bytes: self.payload_bytes_max,
                setting: "limits.payload_bytes_max",
            });
        }
        if header.fuel_per_call_max == Some(0) {
            return Err(InputError::Header {
                field: "fuel_per_call_max",
                reason: "is 0, so every call would run out of fuel; leave it unset for the cluster default".to_owned(),
            });
        }
        if let Some(bytes) = header.memory_bytes_max
            && (bytes == 0 || !bytes.is_multiple_of(65_536))
        {
            return Err(InputError::Header {
                field: "memory_bytes_max",
                reason: format!(
                    "is {bytes}; it must be a positive multiple of 65536 (a wasm page)"
                ),
            });
        }
        let capacity = usize::try_from(header.size_bytes).unwrap_or(0);
        Ok(Header {
            name: header.name,
            hash,
            size_bytes: header.size_bytes,
            init_argument: header.init_argument,
            limits: ModuleLimits {
                fuel_per_call: header.fuel_per_call_max,
                memory_bytes: header.memory_bytes_max,
            },
            wasm: Vec::with_capacity(capacity),
        })
    }

    /// Ends the stream: checks the size and the hash.
    pub fn finish(self) -> Result<DeployUpload, InputError> {
        let header = self.header.ok_or(InputError::EmptyStream)?;
        let received_bytes = header.wasm.len() as u64;
        if received_bytes != header.size_bytes {
            return Err(InputError::SizeMismatch {
                announced_bytes: header.size_bytes,
                received_bytes,
            });
        }
        let computed: ModuleHash = Sha256::digest(&header.wasm).into();
        if computed != header.hash {
            return Err(InputError::HashMismatch {
                announced: hex::encode(header.hash),
                computed: hex::encode(computed),
            });
        }
        Ok(DeployUpload {
            name: header.name,
            wasm: header.wasm,
            hash: header.hash,
            init_argument: header.init_argument,
            limits: header.limits,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_names() {
        let cases: &[(&str, Option<&str>)] = &[
            ("counter", None),
            ("bank-2_a", None),
            (&"a".repeat(64), None),
            ("", Some("empty")),
            (&"a".repeat(65), Some("longer than 64")),
            ("2fast", Some("start with a letter")),
            ("-x", Some("start with a letter")),
            ("Counter", Some("start with a letter")),
            ("kv.store", Some("character other than")),
            ("kv store", Some("character other than")),
            ("kvé", Some("character other than")),
        ];
        for (name, expected) in cases {
            match (module_name(name), expected) {
                (Ok(()), None) => {}
                (Err(error), Some(fragment)) => {
                    assert!(error.to_string().contains(fragment), "{name}: {error}")
                }
                (got, want) => panic!("{name}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn sessions() {
        let long = "c".repeat(CLIENT_ID_BYTES_MAX + 1);
        /// client id, sequence, and the session's sequence or an error fragment.
        type Row<'a> = (&'a str, u64, Result<Option<u64>, &'a str>);
        let cases: &[Row] = &[
            ("", 0, Ok(None)),
            ("client-1", 1, Ok(Some(1))),
            ("client-1", 7, Ok(Some(7))),
            ("", 3, Err("client_id is empty")),
            ("client-1", 0, Err("start at 1")),
            (&long, 1, Err("longer than 128")),
            ("bad\nid", 1, Err("control character")),
        ];
        for (client_id, sequence, expected) in cases {
            match (session(client_id, *sequence), expected) {
                (Ok(got), Ok(want)) => {
                    assert_eq!(got.map(|session| session.sequence), *want, "{client_id}")
                }
                (Err(error), Err(fragment)) => {
                    assert!(error.to_string().contains(fragment), "{client_id}: {error}")
                }
                (got, want) => panic!("{client_id}/{sequence}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn payload_cap_names_the_setting() {
        let limits = LimitSettings::default();
        assert!(payload("the input", 1024, &limits).is_ok());
        let error =
            payload("the input", limits.payload_bytes_max as usize + 1, &limits).unwrap_err();
        assert!(
            error.to_string().contains("limits.payload_bytes_max"),
            "{error}"
        );
        assert!(api_message_bytes_max(&limits) >= 4 * 1024 * 1024);
    }

    fn header(wasm: &[u8]) -> DeployHeader {
        DeployHeader {
            name: "counter".into(),
            sha256_hex: hex::encode(Sha256::digest(wasm)),
            size_bytes: wasm.len() as u64,
            init_argument: None,
            fuel_per_call_max: None,
            memory_bytes_max: None,
        }
    }

    fn assemble(chunks: Vec<Option<Content>>) -> Result<DeployUpload, InputError> {
        let mut assembler = DeployAssembler::new(
            &LimitSettings::default(),
            crate::command::ClusterSettings::default().module_bytes_max,
        );
        for chunk in chunks {
            assembler.push(chunk)?;
        }
        assembler.finish()
    }

    #[test]
    fn deploy_streams() {
        let wasm = b"\0asm\x01\0\0\0 pretend module".to_vec();
        let good = header(&wasm);
        let upload = assemble(vec![
            Some(Content::Header(good.clone())),
            Some(Content::Data(wasm[..5].to_vec())),
            Some(Content::Data(wasm[5..].to_vec())),
        ])
        .unwrap();
        assert_eq!(upload.wasm, wasm);
        assert_eq!(upload.name, "counter");

        let too_big = DeployHeader {
            size_bytes: crate::command::ClusterSettings::default().module_bytes_max + 1,
            ..good.clone()
        };
        let mut corrupted = wasm.clone();
        corrupted[9] ^= 1;
        let cases: Vec<(Vec<Option<Content>>, &str)> = vec![
            (vec![], "ended before its header"),
            (
                vec![Some(Content::Data(wasm.clone()))],
                "must start with a header",
            ),
            (
                vec![
                    Some(Content::Header(good.clone())),
                    Some(Content::Header(good.clone())),
                ],
                "second header",
            ),
            (
                vec![Some(Content::Header(too_big))],
                "cluster setting module_bytes_max",
            ),
            (
                vec![
                    Some(Content::Header(good.clone())),
                    Some(Content::Data(wasm.clone())),
                    Some(Content::Data(vec![0])),
                ],
                "header announced",
            ),
            (
                vec![
                    Some(Content::Header(good.clone())),
                    Some(Content::Data(wasm[..3].to_vec())),
                ],
                "received 3 bytes",
            ),
            (
                vec![
                    Some(Content::Header(good.clone())),
                    Some(Content::Data(corrupted)),
                ],
                "truncated or corrupted",
            ),
            (
                vec![Some(Content::Header(DeployHeader {
                    sha256_hex: "ABC".into(),
                    ..good.clone()
                }))],
                "sha256_hex",
            ),
            (
                vec![Some(Content::Header(DeployHeader {
                    name: "Bad".into(),
                    ..good.clone()
                }))],
                "invalid module name",
            ),
            (
                vec![Some(Content::Header(DeployHeader {
                    memory_bytes_max: Some(1000),
                    ..good.clone()
                }))],
                "memory_bytes_max",
            ),
            (
                vec![Some(Content::Header(DeployHeader {
                    fuel_per_call_max: Some(0),
                    ..good.clone()
                }))],
                "fuel_per_call_max",
            ),
        ];
        for (chunks, fragment) in cases {
            let error = assemble(chunks).unwrap_err();
            assert!(
                error.to_string().contains(fragment),
                "want `{fragment}`: {error}"
            );
        }
    }
}
