//! The `Modules` service: deploy (a client stream, validated at the edge
//! before it is proposed), list, get and remove.

use std::time::Duration;

use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;
use wasmraft_proto::v1 as proto;
use wasmraft_proto::v1::modules_server::Modules;

use super::convert::module_message;
use super::status::ApiError;
use super::validate::{self, DeployAssembler, DeployUpload, InputError};
use super::{admit, admit_open, authorize, blocking, call_timeout, identity};
use crate::admission::MethodClass;
use crate::auth::{Action, Caller, Identity};
use crate::command::settings::module_limits;
use crate::command::{Command, Deploy, Response as Applied};
use crate::node::handle::NodeHandle;
use crate::storage::deploy_limits;

/// The messages of one `DeployWithProgress` answer: three phases and the result.
const DEPLOY_EVENTS_MAX: usize = 4;

/// Serves `wasmraft.v1.Modules`.
#[derive(Debug, Clone)]
pub struct ModulesService {
    node: NodeHandle,
}

impl ModulesService {
    pub fn new(node: NodeHandle) -> Self {
        Self { node }
    }
}

/// Validates a received module and deploys it through the log: the path of
/// `Modules.Deploy` after the stream, and of `serve --dev`'s examples.
pub async fn deploy_module(
    node: &NodeHandle,
    caller: &Caller,
    upload: DeployUpload,
    timeout: Option<Duration>,
    report: &(dyn Fn(proto::DeployPhase) + Send + Sync),
) -> Result<proto::Module, ApiError> {
    let span = tracing::info_span!(
        "deploy",
        module = %upload.name,
        size_bytes = upload.wasm.len(),
        version = tracing::field::Empty,
        outcome = tracing::field::Empty,
    );
    let result = deploy_in_span(node, caller, upload, timeout, report)
        .instrument(span.clone())
        .await;
    match &result {
        Ok(module) => {
            span.record("version", module.version);
            span.record("outcome", "ok");
        }
        Err(error) => {
            span.record("outcome", tracing::field::display(error));
        }
    }
    result
}

async fn deploy_in_span(
    node: &NodeHandle,
    caller: &Caller,
    upload: DeployUpload,
    timeout: Option<Duration>,
    report: &(dyn Fn(proto::DeployPhase) + Send + Sync),
) -> Result<proto::Module, ApiError> {
    let DeployUpload {
        name,
        wasm,
        hash,
        init_argument,
        limits,
    } = upload;
    validate::module_name(&name)?;
    // Compiling is CPU work: off the async threads. The compiled module
    // stays in the runtime's cache, so apply does not compile it again.
    let runtime = node.runtime().clone();
    let settings = node.settings().map_err(ApiError::from)?;
    let limits_in_force = settings.clone();
    let static_limits = deploy_limits(&settings);
    let (checked, wasm) = {
        let runtime = runtime.clone();
        blocking(move || (runtime.check_within(&wasm, static_limits), wasm)).await?
    };
    checked.map_err(ApiError::InvalidModule)?;
    report(proto::DeployPhase::Validated);
    let (validated, wasm) = blocking(move || {
        let validated = runtime.validate_within(&wasm, static_limits);
        (validated, wasm)
    })
    .await?;
    let info = validated.map_err(ApiError::InvalidModule)?;
    report(proto::DeployPhase::Replicating);
    if init_argument.is_some() && !info.has_init && !info.has_migrate {
        return Err(InputError::UnusedInitArgument.into());
    }
    let size_bytes = wasm.len() as u64;
    let proposed = node
        .propose(
            caller.clone(),
            Command::Deploy(Deploy {
                name: name.clone(),
                wasm,
                hash,
                init_argument: init_argument.unwrap_or_default(),
                limits,
            }),
            timeout,
        )
        .await?;
    match proposed.response {
        Applied::Deployed(deployed) => {
            let (fuel_per_call_max, memory_bytes_max) = module_limits(&limits_in_force, &limits);
            // What `init` or `migrate` stored; read after the apply that
            // answered, so a later write may already show.
            let usage = node.reader().usage(&deployed.name)?;
            Ok(proto::Module {
                storage_bytes: usage.bytes,
                storage_keys: usage.keys,
                storage_bytes_max: limits_in_force.module_storage_bytes_max,
                storage_keys_max: limits_in_force.module_storage_keys_max,
                name: deployed.name,
                version: deployed.version,
                sha256_hex: hex::encode(deployed.hash),
                size_bytes,
                deployed_at_index: proposed.index,
                deployed_at_unix_ms: u64::try_from(proposed.timestamp_ms).unwrap_or(0),
                has_query: info.has_query,
                has_init: info.has_init,
                has_migrate: info.has_migrate,
                fuel_per_call_max,
                memory_bytes_max,
            })
        }
        Applied::Refused(refusal) => Err(refusal.into()),
        other => Err(unexpected("deploy", &other)),
    }
}

pub(super) fn unexpected(what: &str, response: &Applied) -> ApiError {
    let kind = match response {
        Applied::Empty => "empty",
        Applied::Deployed(_) => "deployed",
        Applied::Removed { .. } => "removed",
        Applied::Invoked(_) => "invoked",
        Applied::AccessChanged { .. } => "access changed",
        Applied::Batch(_) => "batch",
        Applied::Refused(_) => "refused",
        Applied::SessionOpened { .. } => "session opened",
        Applied::Settings(_) => "settings",
        Applied::ClusterId { .. } => "cluster id",
    };
    ApiError::Internal(format!("a {what} was answered with a `{kind}` response"))
}

impl ModulesService {
    /// Reads a deploy stream whole, refusing it as early as it can: a
    /// caller who may not deploy the module its header names is refused
    /// before the node buffers the wasm that follows.
    async fn receive(
        &self,
        identity: &Identity,
        mut stream: Streaming<proto::DeployChunk>,
    ) -> Result<(DeployUpload, Caller), Status> {
        let settings = self.node.settings().map_err(ApiError::from)?;
        let mut assembler = DeployAssembler::new(&self.node.limits(), settings.module_bytes_max);
        let mut caller = None;
        // The upload counts as an open call of its caller while it lasts,
        // holding the bytes its header announced.
        let mut _open = None;
        let idle = Duration::from_millis(self.node.limits().deploy_idle_timeout_ms);
        loop {
            let Ok(chunk) = tokio::time::timeout(idle, stream.message()).await else {
                return Err(ApiError::StreamIdle {
                    idle_ms: u64::try_from(idle.as_millis()).unwrap_or(u64::MAX),
                }
                .into());
            };
            let Some(chunk) = chunk? else { break };
            assembler.push(chunk.content).map_err(ApiError::from)?;
            if caller.is_none()
                && let Some(name) = assembler.module_name()
            {
                let allowed = authorize(&self.node, identity, Action::ModuleDeploy, name)?;
                let mut open =
                    admit_open(&self.node, &allowed.subject, MethodClass::Deploy, 0, None).await?;
                open.hold(assembler.announced_bytes().unwrap_or(0))
                    .map_err(|shed| {
                        self.node.metrics().rejected(&shed.limit);
                        ApiError::from(shed)
                    })?;
                _open = Some(open);
                caller = Some(allowed);
            }
        }
        let upload = assembler.finish().map_err(ApiError::from)?;
        // `finish` refuses a stream without a header, so the name was seen.
        let caller = match caller {
            Some(caller) => caller,
            None => authorize(&self.node, identity, Action::ModuleDeploy, &upload.name)?,
        };
        Ok((upload, caller))
    }
}

#[tonic::async_trait]
impl Modules for ModulesService {
    async fn deploy(
        &self,
        request: Request<Streaming<proto::DeployChunk>>,
    ) -> Result<Response<proto::DeployResponse>, Status> {
        let identity = identity(&self.node, &request)?;
        let timeout = call_timeout(&request);
        let (upload, caller) = self.receive(&identity, request.into_inner()).await?;
        let module = deploy_module(&self.node, &caller, upload, timeout, &|_| {}).await?;
        Ok(Response::new(proto::DeployResponse {
            module: Some(module),
        }))
    }

    type DeployWithProgressStream = std::pin::Pin<
        Box<dyn futures::Stream<Item = Result<proto::DeployEvent, Status>> + Send + 'static>,
    >;

    async fn deploy_with_progress(
        &self,
        request: Request<Streaming<proto::DeployChunk>>,
    ) -> Result<Response<Self::DeployWithProgressStream>, Status> {
        let identity = identity(&self.node, &request)?;
        let timeout = call_timeout(&request);
        let (upload, caller) = self.receive(&identity, request.into_inner()).await?;
        // Room for every phase and the result: sending never waits, and a
        // client that went away only makes the sends fail.
        let (events, received) = tokio::sync::mpsc::channel(DEPLOY_EVENTS_MAX);
        let node = self.node.clone();
        tokio::spawn(async move {
            let phase = |phase: proto::DeployPhase| {
                let _ = events.try_send(Ok(proto::DeployEvent {
                    event: Some(proto::deploy_event::Event::Phase(phase as i32)),
                }));
            };
            phase(proto::DeployPhase::Received);
            let last = match deploy_module(&node, &caller, upload, timeout, &phase).await {
                Ok(module) => Ok(proto::DeployEvent {
                    event: Some(proto::deploy_event::Event::Module(module)),
                }),
                Err(error) => Err(Status::from(error)),
            };
            let _ = events.try_send(last);
        });
        let events = futures::stream::unfold(received, |mut received| async move {
            received.recv().await.map(|event| (event, received))
        });
        Ok(Response::new(Box::pin(events)))
    }

    async fn list(
        &self,
        request: Request<proto::ListModulesRequest>,
    ) -> Result<Response<proto::ListModulesResponse>, Status> {
        let identity = identity(&self.node, &request)?;
        admit(&self.node, &identity.subject(), MethodClass::Admin, 0)?;
        let node = self.node.clone();
        let modules = blocking(move || -> Result<_, ApiError> {
            // The table is ordered by name, as the API promises. A caller
            // sees the modules it may see one by one (`Modules.Get`).
            let reader = node.reader();
            let records = reader.modules()?;
            let settings = node.settings()?;
            let mut modules = Vec::with_capacity(records.len());
            for record in records {
                if authorize(&node, &identity, Action::ModuleGet, &record.name).is_ok() {
                    let usage = reader.usage(&record.name)?;
                    modules.push(module_message(&settings, record, usage));
                }
            }
            Ok(modules)
        })
        .await??;
        Ok(Response::new(proto::ListModulesResponse { modules }))
    }

    async fn get(
        &self,
        request: Request<proto::GetModuleRequest>,
    ) -> Result<Response<proto::GetModuleResponse>, Status> {
        let identity = identity(&self.node, &request)?;
        let name = request.into_inner().name;
        validate::module_name(&name).map_err(ApiError::from)?;
        let caller = authorize(&self.node, &identity, Action::ModuleGet, &name)?;
        admit(&self.node, &caller.subject, MethodClass::Admin, 0)?;
        let node = self.node.clone();
        let module = blocking(move || -> Result<_, ApiError> {
            let reader = node.reader();
            match reader.module(&name)? {
                Some(record) => {
                    let usage = reader.usage(&name)?;
                    Ok(module_message(&node.settings()?, record, usage))
                }
                None => Err(crate::command::Refusal::ModuleNotFound(name).into()),
            }
        })
        .await??;
        Ok(Response::new(proto::GetModuleResponse {
            module: Some(module),
        }))
    }

    async fn remove(
        &self,
        request: Request<proto::RemoveModuleRequest>,
    ) -> Result<Response<proto::RemoveModuleResponse>, Status> {
        let identity = identity(&self.node, &request)?;
        let timeout = call_timeout(&request);
        let name = request.into_inner().name;
        validate::module_name(&name).map_err(ApiError::from)?;
        let caller = authorize(&self.node, &identity, Action::ModuleRemove, &name)?;
        admit(&self.node, &caller.subject, MethodClass::Admin, 0)?;
        let span = tracing::info_span!("remove", module = %name);
        let proposed = self
            .node
            .propose(caller, Command::Remove { name }, timeout)
            .instrument(span)
            .await
            .map_err(ApiError::from)?;
        match proposed.response {
            Applied::Removed { .. } => Ok(Response::new(proto::RemoveModuleResponse {})),
            Applied::Refused(refusal) => Err(ApiError::from(refusal).into()),
            other => Err(unexpected("remove", &other).into()),
        }
    }
}
