//! The `Access` service: role bindings and bearer tokens. Every change is a
//! Raft command (`AccessChange`), and returns once every member applied it,
//! so a grant or a revoke is in force on every node when the call returns.

use std::time::Duration;

use tonic::{Request, Response, Status};
use tracing::Instrument;
use wasmraft_proto::v1 as proto;
use wasmraft_proto::v1::access_server::Access;

use super::modules::unexpected;
use super::status::ApiError;
use super::validate::{self, InputError};
use super::{admit, authorize, call_timeout, identity};
use crate::admission::MethodClass;
use crate::auth::policy::CLUSTER_OBJECT;
use crate::auth::{Action, Caller, Identity, Token};
use crate::command::{AccessChange, AccessRule, Command, Response as Applied, TokenGrant, check};
use crate::node::handle::NodeHandle;

/// How long a change may wait for every member to apply it, when the
/// caller set no deadline. A member slower than this (partitioned, or
/// busy applying a long call) still refuses, at apply, every command
/// ordered after the change; only its stale reads may lag.
const SPREAD_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves `wasmraft.v1.Access`.
#[derive(Debug, Clone)]
pub struct AccessService {
    node: NodeHandle,
}

impl AccessService {
    pub fn new(node: NodeHandle) -> Self {
        Self { node }
    }

    /// The caller of `request`, if an administrator.
    fn admin<T>(&self, request: &Request<T>) -> Result<Caller, ApiError> {
        let identity = identity(&self.node, request)?;
        let caller = authorize(&self.node, &identity, Action::AccessAdmin, CLUSTER_OBJECT)?;
        admit(&self.node, &caller.subject, MethodClass::Admin, 0)?;
        Ok(caller)
    }

    /// Proposes `change` for `caller` (an administrator) and waits until
    /// every member applied it; answers whether it changed anything.
    async fn change(
        &self,
        caller: Caller,
        timeout: Option<Duration>,
        change: AccessChange,
    ) -> Result<bool, ApiError> {
        if let Err(reason) = check::request(&crate::command::Request {
            timestamp_ms: 0,
            caller: caller.subject.clone(),
            command: Command::Access(change.clone()),
        }) {
            return Err(InputError::Access(reason).into());
        }
        let span = tracing::info_span!("access_change", change = ?change);
        let deadline = std::time::Instant::now() + timeout.unwrap_or(SPREAD_TIMEOUT);
        let proposed = self
            .node
            .propose(caller, Command::Access(change), timeout)
            .instrument(span)
            .await?;
        let changed = match proposed.response {
            Applied::AccessChanged { changed } => changed,
            Applied::Refused(refusal) => return Err(refusal.into()),
            other => return Err(unexpected("access change", &other)),
        };
        if changed {
            let wait = deadline.saturating_duration_since(std::time::Instant::now());
            let missing = self.node.applied_everywhere(proposed.index, wait).await;
            if !missing.is_empty() {
                tracing::warn!(
                    index = proposed.index,
                    ?missing,
                    "an access change is committed, but these members did not confirm applying it in time"
                );
            }
        }
        Ok(changed)
    }
}

/// A binding of the API as the replicated rule.
fn rule(binding: Option<proto::RoleBinding>) -> Result<AccessRule, ApiError> {
    Ok(validate::role_binding(binding)?)
}

/// A replicated rule as the API's binding.
pub(crate) fn binding_message(rule: &AccessRule) -> proto::RoleBinding {
    let role = match rule.role.as_str() {
        "cluster_admin" => proto::Role::ClusterAdmin,
        "cluster_operator" => proto::Role::ClusterOperator,
        "cluster_viewer" => proto::Role::ClusterViewer,
        "module_deployer" => proto::Role::ModuleDeployer,
        "module_invoker" => proto::Role::ModuleInvoker,
        "module_querier" => proto::Role::ModuleQuerier,
        _ => proto::Role::Unspecified,
    };
    proto::RoleBinding {
        subject: rule.subject.clone(),
        role: role as i32,
        module_pattern: rule.module_pattern.clone(),
    }
}

#[tonic::async_trait]
impl Access for AccessService {
    async fn grant(
        &self,
        request: Request<proto::GrantRequest>,
    ) -> Result<Response<proto::GrantResponse>, Status> {
        let caller = self.admin(&request)?;
        let timeout = call_timeout(&request);
        let rule = rule(request.into_inner().binding)?;
        self.change(caller, timeout, AccessChange::Grant(rule))
            .await?;
        Ok(Response::new(proto::GrantResponse {}))
    }

    async fn revoke(
        &self,
        request: Request<proto::RevokeRequest>,
    ) -> Result<Response<proto::RevokeResponse>, Status> {
        let caller = self.admin(&request)?;
        let timeout = call_timeout(&request);
        let rule = rule(request.into_inner().binding)?;
        let described = format!(
            "`{}` holds no role {}{}",
            rule.subject,
            rule.role,
            rule.module_pattern
                .as_deref()
                .map(|pattern| format!(" for `{pattern}`"))
                .unwrap_or_default()
        );
        if !self
            .change(caller, timeout, AccessChange::Revoke(rule))
            .await?
        {
            return Err(ApiError::NotFound(described).into());
        }
        Ok(Response::new(proto::RevokeResponse {}))
    }

    async fn list(
        &self,
        request: Request<proto::ListRoleBindingsRequest>,
    ) -> Result<Response<proto::ListRoleBindingsResponse>, Status> {
        self.admin(&request)?;
        let subject = request.into_inner().subject;
        let view = self.node.gate().view();
        // The view holds the rules in order: subject, role, pattern.
        let bindings = if subject.is_empty() {
            view.rules().map(binding_message).collect()
        } else {
            view.rules_of(&subject)
                .iter()
                .map(binding_message)
                .collect()
        };
        Ok(Response::new(proto::ListRoleBindingsResponse { bindings }))
    }

    async fn create_token(
        &self,
        request: Request<proto::CreateTokenRequest>,
    ) -> Result<Response<proto::CreateTokenResponse>, Status> {
        let caller = self.admin(&request)?;
        let timeout = call_timeout(&request);
        let subject = request.into_inner().subject;
        let token = Token::generate().map_err(|error| ApiError::Internal(error.to_string()))?;
        let grant = TokenGrant {
            token_id: token.id().to_owned(),
            subject,
            secret_sha256: token.secret_sha256(),
        };
        self.change(caller, timeout, AccessChange::CreateToken(grant))
            .await?;
        Ok(Response::new(proto::CreateTokenResponse {
            token: token.to_string(),
            token_id: token.id().to_owned(),
        }))
    }

    async fn revoke_token(
        &self,
        request: Request<proto::RevokeTokenRequest>,
    ) -> Result<Response<proto::RevokeTokenResponse>, Status> {
        let caller = self.admin(&request)?;
        let timeout = call_timeout(&request);
        let token_id = request.into_inner().token_id;
        let missing = format!("no token has id `{token_id}`");
        if !self
            .change(caller, timeout, AccessChange::RevokeToken { token_id })
            .await?
        {
            return Err(ApiError::NotFound(missing).into());
        }
        Ok(Response::new(proto::RevokeTokenResponse {}))
    }

    async fn who_am_i(
        &self,
        request: Request<proto::WhoAmIRequest>,
    ) -> Result<Response<proto::WhoAmIResponse>, Status> {
        let identity = identity(&self.node, &request)?;
        let view = self.node.gate().view();
        let subject = identity.subject();
        let token_id = match &identity {
            Identity::Subject {
                token_id: Some(id), ..
            } => id.clone(),
            _ => String::new(),
        };
        let bindings = view
            .rules_of(&subject)
            .iter()
            .map(binding_message)
            .collect();
        Ok(Response::new(proto::WhoAmIResponse {
            subject,
            token_id,
            bindings,
            authenticated: self.node.gate().enforced(),
            policy_revision: view.revision,
        }))
    }
}
