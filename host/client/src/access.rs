//! The `Access` service from the client: role bindings (grant, revoke,
//! list), bearer tokens (create, revoke) and who the caller is. Roles are
//! named as in `wasmraft_core::check` (`cluster_admin`, `module_invoker`, …),
//! the names the CLI and the node's policy use.

use serde::Serialize;
use tonic::transport::Channel;
use wasmraft_core::{AccessRule, check};
use wasmraft_proto::v1;
use wasmraft_proto::v1::access_client::AccessClient;

use crate::retry::CallKind;
use crate::{Client, ClientError, RESPONSE_BYTES_MAX};

/// One grant: `subject` holds `role`, on the modules `module_pattern`
/// matches for a module role.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct RoleBinding {
    /// A token's subject, or a client certificate's common name.
    pub subject: String,
    /// `cluster_admin`, `cluster_operator`, `cluster_viewer`,
    /// `module_deployer`, `module_invoker` or `module_querier`.
    pub role: String,
    /// A module name or a pattern (`bank-*`, `*`); module roles only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub module_pattern: Option<String>,
}

impl RoleBinding {
    /// A binding of `role` for `subject`, checked as the cluster checks
    /// it before storing it: the role exists, a pattern is given exactly
    /// when the role needs one, subject and pattern are well-formed.
    pub fn new(
        subject: &str,
        role: &str,
        module_pattern: Option<&str>,
    ) -> Result<RoleBinding, ClientError> {
        let rule = AccessRule {
            subject: subject.to_owned(),
            role: role.to_owned(),
            module_pattern: module_pattern.map(str::to_owned),
        };
        check::access_rule(&rule).map_err(ClientError::InvalidInput)?;
        Ok(RoleBinding {
            subject: rule.subject,
            role: rule.role,
            module_pattern: rule.module_pattern,
        })
    }

    fn message(&self) -> Result<v1::RoleBinding, ClientError> {
        let role = v1::Role::from_str_name(&format!("ROLE_{}", self.role.to_ascii_uppercase()))
            .ok_or_else(|| {
                ClientError::InvalidInput(format!("no role is named `{}`", self.role))
            })?;
        Ok(v1::RoleBinding {
            subject: self.subject.clone(),
            role: role as i32,
            module_pattern: self.module_pattern.clone(),
        })
    }

    fn of(message: v1::RoleBinding) -> RoleBinding {
        let role = v1::Role::try_from(message.role).map_or_else(
            |_| format!("unknown role {}", message.role),
            |role| {
                role.as_str_name()
                    .trim_start_matches("ROLE_")
                    .to_ascii_lowercase()
            },
        );
        RoleBinding {
            subject: message.subject,
            role,
            module_pattern: message.module_pattern,
        }
    }
}

impl std::fmt::Display for RoleBinding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.subject, self.role)?;
        if let Some(pattern) = &self.module_pattern {
            write!(f, " on modules `{pattern}`")?;
        }
        Ok(())
    }
}

/// A token just created: `token` is its secret, shown only once.
#[derive(Clone, PartialEq, Eq, Serialize)]
pub struct CreatedToken {
    /// What to send as `authorization: Bearer TOKEN` (`--token`,
    /// `WASMRAFT_TOKEN`).
    pub token: String,
    /// The token's public name, to revoke it.
    pub token_id: String,
    /// Who the token identifies.
    pub subject: String,
}

impl std::fmt::Debug for CreatedToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CreatedToken")
            .field("token", &"<redacted>")
            .field("token_id", &self.token_id)
            .field("subject", &self.subject)
            .finish()
    }
}

/// Who the answering node takes the caller for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WhoAmI {
    /// The subject calls are made for (`anonymous` on a node that does not
    /// authenticate).
    pub subject: String,
    /// The token the call was authenticated with, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_id: Option<String>,
    /// The subject's role bindings.
    pub bindings: Vec<RoleBinding>,
    /// Whether the node authenticates its callers at all.
    pub authenticated: bool,
    /// The access policy revision the node answered with.
    pub policy_revision: u64,
}

impl Client {
    fn access(&self) -> AccessClient<Channel> {
        AccessClient::new(self.inner.channel.clone()).max_decoding_message_size(RESPONSE_BYTES_MAX)
    }

    /// Gives `binding.subject` the binding's role; in force on every node
    /// when this returns. Granting a binding held already is not an error,
    /// so a failed call may be retried.
    pub async fn grant(&self, binding: &RoleBinding) -> Result<(), ClientError> {
        let message = binding.message()?;
        self.retrying("grant", CallKind::ReadOnly, |timeout| {
            let mut client = self.access();
            let request = v1::GrantRequest {
                binding: Some(message.clone()),
            };
            async move {
                let request = self.request(request, timeout);
                self.attempt("grant", timeout, client.grant(request)).await
            }
        })
        .await?;
        Ok(())
    }

    /// Takes a binding away (subject, role and pattern must match exactly);
    /// in force on every node when this returns. `NOT_FOUND` if no such
    /// binding exists.
    pub async fn revoke(&self, binding: &RoleBinding) -> Result<(), ClientError> {
        let message = binding.message()?;
        self.retrying("revoke", CallKind::Write, |timeout| {
            let mut client = self.access();
            let request = v1::RevokeRequest {
                binding: Some(message.clone()),
            };
            async move {
                let request = self.request(request, timeout);
                self.attempt("revoke", timeout, client.revoke(request))
                    .await
            }
        })
        .await?;
        Ok(())
    }

    /// The role bindings, of `subject` only if given, ordered by subject,
    /// role and pattern.
    pub async fn role_bindings(
        &self,
        subject: Option<&str>,
    ) -> Result<Vec<RoleBinding>, ClientError> {
        let response = self
            .retrying("list role bindings", CallKind::ReadOnly, |timeout| {
                let mut client = self.access();
                let request = v1::ListRoleBindingsRequest {
                    subject: subject.unwrap_or_default().to_owned(),
                };
                async move {
                    let request = self.request(request, timeout);
                    self.attempt("list role bindings", timeout, client.list(request))
                        .await
                }
            })
            .await?;
        Ok(response.bindings.into_iter().map(RoleBinding::of).collect())
    }

    /// Creates a bearer token for `subject`. The secret is in the answer
    /// only: the cluster keeps its hash. Retried only when nothing was sent.
    pub async fn create_token(&self, subject: &str) -> Result<CreatedToken, ClientError> {
        let response = self
            .retrying("create token", CallKind::Write, |timeout| {
                let mut client = self.access();
                let request = v1::CreateTokenRequest {
                    subject: subject.to_owned(),
                };
                async move {
                    let request = self.request(request, timeout);
                    self.attempt("create token", timeout, client.create_token(request))
                        .await
                }
            })
            .await?;
        Ok(CreatedToken {
            token: response.token,
            token_id: response.token_id,
            subject: subject.to_owned(),
        })
    }

    /// Invalidates the token named `token_id`, on every node when this
    /// returns. `NOT_FOUND` if no token has that id.
    pub async fn revoke_token(&self, token_id: &str) -> Result<(), ClientError> {
        self.retrying("revoke token", CallKind::Write, |timeout| {
            let mut client = self.access();
            let request = v1::RevokeTokenRequest {
                token_id: token_id.to_owned(),
            };
            async move {
                let request = self.request(request, timeout);
                self.attempt("revoke token", timeout, client.revoke_token(request))
                    .await
            }
        })
        .await?;
        Ok(())
    }

    /// Who the endpoint's node takes this client for, and its roles.
    pub async fn who_am_i(&self) -> Result<WhoAmI, ClientError> {
        let response = self
            .retrying("whoami", CallKind::ReadOnly, |timeout| {
                let mut client = self.access();
                async move {
                    let request = self.request(v1::WhoAmIRequest {}, timeout);
                    self.attempt("whoami", timeout, client.who_am_i(request))
                        .await
                }
            })
            .await?;
        Ok(WhoAmI {
            subject: response.subject,
            token_id: Some(response.token_id).filter(|id| !id.is_empty()),
            bindings: response.bindings.into_iter().map(RoleBinding::of).collect(),
            authenticated: response.authenticated,
            policy_revision: response.policy_revision,
        })
    }
}
