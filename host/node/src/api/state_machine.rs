//! The `StateMachine` service: invoke (a command through the log) and query
//! (a read of the local state, behind a read barrier unless stale).

use std::time::Duration;

use tonic::{Request, Response, Status};
use tracing::Instrument;
use wasmraft_proto::v1 as proto;
use wasmraft_proto::v1::Consistency;
use wasmraft_proto::v1::state_machine_server::StateMachine;

use super::modules::unexpected;
use super::status::{ApiError, call_output};
use super::validate;
use super::{admit_open, authorize, blocking, call_timeout, identity};
use crate::admission::MethodClass;
use crate::auth::policy::CLUSTER_OBJECT;
use crate::auth::{Action, Identity};
use crate::command::{Command, Invoke, Refusal, Response as Applied};
use crate::node::handle::NodeHandle;
use crate::storage::QueryAnswer;
use crate::telemetry::traces;

/// Serves `wasmraft.v1.StateMachine`.
#[derive(Debug, Clone)]
pub struct StateMachineService {
    node: NodeHandle,
}

impl StateMachineService {
    pub fn new(node: NodeHandle) -> Self {
        Self { node }
    }

    async fn invoke(
        &self,
        identity: Identity,
        request: proto::InvokeRequest,
        timeout: Option<Duration>,
    ) -> Result<proto::InvokeResponse, ApiError> {
        let limits = self.node.limits();
        validate::module_name(&request.module)?;
        let caller = authorize(&self.node, &identity, Action::ModuleInvoke, &request.module)?;
        validate::payload("the input", request.input.len(), &limits)?;
        let _open = admit_open(
            &self.node,
            &caller.subject,
            MethodClass::Invoke,
            request.input.len(),
            timeout,
        )
        .await?;
        let session = validate::session(&request.client_id, request.sequence)?;
        // The call's root span (`api::observe`) describes the invoke: one
        // span less on every traced write.
        let span = if traces::traced() {
            let span = tracing::Span::current();
            span.record("module", request.module.as_str());
            if session.is_some() {
                span.record("client_id", request.client_id.as_str());
                span.record("sequence", request.sequence);
            }
            span
        } else {
            tracing::Span::none()
        };
        let module = request.module.clone();
        let proposed = self
            .node
            .propose(
                caller,
                Command::Invoke(Invoke {
                    module: request.module,
                    input: request.input,
                    session,
                }),
                timeout,
            )
            .await?;
        span.record("index", proposed.index);
        match proposed.response {
            Applied::Invoked(result) => {
                span.record("fuel_used", result.fuel_used);
                span.record("outcome", result.outcome.label());
                let (output, fuel_used) = call_output(&module, result, limits.query_timeout_ms)?;
                Ok(proto::InvokeResponse {
                    output,
                    fuel_used,
                    applied_index: proposed.index,
                })
            }
            Applied::Refused(refusal) => {
                span.record("outcome", "refused");
                Err(refusal.into())
            }
            other => Err(unexpected("invoke", &other)),
        }
    }

    async fn open_session(
        &self,
        identity: Identity,
        request: proto::OpenSessionRequest,
        timeout: Option<Duration>,
    ) -> Result<proto::OpenSessionResponse, ApiError> {
        let caller = authorize(&self.node, &identity, Action::SessionOpen, CLUSTER_OBJECT)?;
        let _open =
            admit_open(&self.node, &caller.subject, MethodClass::Invoke, 0, timeout).await?;
        validate::open_session(&request.client_id)?;
        let span = traces::trace_span!(
            "open_session",
            client_id = %request.client_id
        );
        let proposed = self
            .node
            .propose(
                caller,
                Command::OpenSession {
                    client_id: request.client_id,
                },
                timeout,
            )
            .instrument(span)
            .await?;
        match proposed.response {
            Applied::SessionOpened { client_id } => Ok(proto::OpenSessionResponse {
                client_id,
                applied_index: proposed.index,
            }),
            Applied::Refused(refusal) => Err(refusal.into()),
            other => Err(unexpected("session opening", &other)),
        }
    }

    async fn query(
        &self,
        identity: Identity,
        request: proto::QueryRequest,
        timeout: Option<Duration>,
    ) -> Result<proto::QueryResponse, ApiError> {
        let limits = self.node.limits();
        validate::module_name(&request.module)?;
        let mut caller = authorize(&self.node, &identity, Action::ModuleQuery, &request.module)?;
        validate::payload("the input", request.input.len(), &limits)?;
        let _open = admit_open(
            &self.node,
            &caller.subject,
            MethodClass::Query,
            request.input.len(),
            timeout,
        )
        .await?;
        let consistency = validate::consistency(request.consistency)?;
        let span = traces::trace_span!(
            "query",
            module = %request.module,
            consistency = consistency.as_str_name(),
            fuel_used = tracing::field::Empty,
            outcome = tracing::field::Empty,
        );
        async {
            if consistency != Consistency::Stale {
                self.node.read_barrier(timeout).await?;
                // This node has now applied everything committed before the
                // query arrived, a revoke included: ask the policy again if
                // it changed while waiting.
                if caller.authorization.as_ref().map(|a| a.revision)
                    != Some(self.node.gate().view().revision)
                    && identity != Identity::Anonymous
                {
                    caller =
                        authorize(&self.node, &identity, Action::ModuleQuery, &request.module)?;
                }
            }
            let caller = caller.subject;
            // A slot first, waiting without a thread; held until the
            // blocking work ends, even if the caller goes away meanwhile.
            let wait_max = timeout.unwrap_or(Duration::from_millis(limits.query_timeout_ms));
            let permit = self.node.queries().admit(wait_max).await.map_err(|shed| {
                self.node.metrics().rejected(&shed.limit);
                ApiError::from(shed)
            })?;
            let reader = self.node.reader().clone();
            let module = request.module;
            let input = request.input;
            let (module, result) = blocking(move || {
                let result = reader.query(&module, &input, &caller);
                drop(permit);
                (module, result)
            })
            .await?;
            let Some(QueryAnswer {
                applied_index,
                result,
            }) = result?
            else {
                return Err(Refusal::ModuleNotFound(module).into());
            };
            let applied_index = applied_index.unwrap_or(0);
            let span = tracing::Span::current();
            span.record("fuel_used", result.fuel_used);
            span.record("outcome", result.outcome.label());
            let (output, fuel_used) = call_output(&module, result, limits.query_timeout_ms)?;
            Ok(proto::QueryResponse {
                output,
                fuel_used,
                applied_index,
            })
        }
        .instrument(span)
        .await
    }
}

#[tonic::async_trait]
impl StateMachine for StateMachineService {
    async fn invoke(
        &self,
        request: Request<proto::InvokeRequest>,
    ) -> Result<Response<proto::InvokeResponse>, Status> {
        let identity = identity(&self.node, &request)?;
        let timeout = call_timeout(&request);
        let response =
            StateMachineService::invoke(self, identity, request.into_inner(), timeout).await?;
        Ok(Response::new(response))
    }

    async fn query(
        &self,
        request: Request<proto::QueryRequest>,
    ) -> Result<Response<proto::QueryResponse>, Status> {
        let identity = identity(&self.node, &request)?;
        let timeout = call_timeout(&request);
        let response =
            StateMachineService::query(self, identity, request.into_inner(), timeout).await?;
        Ok(Response::new(response))
    }

    async fn open_session(
        &self,
        request: Request<proto::OpenSessionRequest>,
    ) -> Result<Response<proto::OpenSessionResponse>, Status> {
        let identity = identity(&self.node, &request)?;
        let timeout = call_timeout(&request);
        let response =
            StateMachineService::open_session(self, identity, request.into_inner(), timeout)
                .await?;
        Ok(Response::new(response))
    }
}
