//! What operators read: one client call's trace, assembled by a real OTLP
//! receiver (the collector's gRPC service, in this process) from the spans
//! of three `wasmraft serve` processes; and `/metrics` scraped from a node
//! under load.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use tempfile::TempDir;
use tonic::{Request, Response, Status};
use wasmraft_proto::v1 as proto;
use wasmraft_proto::v1::state_machine_client::StateMachineClient;

use super::harness::SETTLE;
use super::processes::{
    Process, WASMRAFT, client, form_with_counter, free_port, start_nodes_with, wait_converged,
    wait_serving,
};

/// One span as the receiver keeps it.
#[derive(Debug, Clone)]
struct ReceivedSpan {
    /// `service.instance.id` of the resource that sent it: the node id.
    node: String,
    /// `wasmraft.cluster.id` of that resource, empty when it named none.
    cluster: String,
    name: String,
    trace_id: Vec<u8>,
    /// The span's string attributes.
    attributes: BTreeMap<String, String>,
}

/// An OTLP/gRPC receiver that keeps every span it is sent and accepts
/// (and drops) metrics.
#[derive(Debug, Clone, Default)]
struct Receiver {
    spans: Arc<Mutex<Vec<ReceivedSpan>>>,
    /// Woken after each export is kept.
    arrived: Arc<tokio::sync::Notify>,
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let mut kept = self.spans.lock().unwrap();
        for resource_spans in request.into_inner().resource_spans {
            let attribute = |key: &str| {
                resource_spans
                    .resource
                    .iter()
                    .flat_map(|resource| resource.attributes.iter())
                    .find(|attribute| attribute.key == key)
                    .and_then(|attribute| attribute.value.as_ref()?.value.as_ref())
                    .map(|value| match value {
                        Value::StringValue(text) => text.clone(),
                        other => format!("{other:?}"),
                    })
                    .unwrap_or_default()
            };
            let node = attribute("service.instance.id");
            let cluster = attribute("wasmraft.cluster.id");
            for scope in resource_spans.scope_spans {
                for span in scope.spans {
                    kept.push(ReceivedSpan {
                        node: node.clone(),
                        cluster: cluster.clone(),
                        name: span.name,
                        trace_id: span.trace_id,
                        attributes: span
                            .attributes
                            .into_iter()
                            .filter_map(|attribute| match attribute.value?.value? {
                                Value::StringValue(text) => Some((attribute.key, text)),
                                _ => None,
                            })
                            .collect(),
                    });
                }
            }
        }
        drop(kept);
        self.arrived.notify_waiters();
        Ok(Response::new(ExportTraceServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl MetricsService for Receiver {
    async fn export(
        &self,
        _request: Request<ExportMetricsServiceRequest>,
    ) -> Result<Response<ExportMetricsServiceResponse>, Status> {
        Ok(Response::new(ExportMetricsServiceResponse::default()))
    }
}

impl Receiver {
    /// Listens on a free loopback port; answers its address.
    async fn start(&self) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let incoming = tonic::transport::server::TcpIncoming::from(listener);
        let server = tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(self.clone()))
            .add_service(MetricsServiceServer::new(self.clone()))
            .serve_with_incoming(incoming);
        tokio::spawn(server);
        address
    }

    /// Waits, export by export, until `condition` holds of what arrived or
    /// `within` passes; answers whether it held.
    async fn wait_for(&self, within: Duration, condition: impl Fn(&Receiver) -> bool) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            // Registered before the check, so an export in between wakes it.
            let arrived = self.arrived.notified();
            if condition(self) {
                return true;
            }
            if tokio::time::timeout_at(deadline, arrived).await.is_err() {
                return condition(self);
            }
        }
    }

    /// The cluster ids named by the resources of trace `trace_id`'s spans.
    fn clusters(&self, trace_id: &[u8]) -> BTreeSet<String> {
        self.spans
            .lock()
            .unwrap()
            .iter()
            .filter(|span| span.trace_id == trace_id)
            .map(|span| span.cluster.clone())
            .collect()
    }

    /// The span names of trace `trace_id`, by the node that sent them.
    fn trace(&self, trace_id: &[u8]) -> BTreeMap<String, BTreeSet<String>> {
        let mut by_node: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for span in self.spans.lock().unwrap().iter() {
            if span.trace_id == trace_id {
                by_node
                    .entry(span.node.clone())
                    .or_default()
                    .insert(span.name.clone());
            }
        }
        by_node
    }
}

/// One invoke sent to a follower with the client's `traceparent` becomes
/// one trace: the follower's call and its forward, the leader's serving of
/// the forwarded write (one of the follower's batch) and its proposal,
/// and the append, the apply and the wasm call on each of the three nodes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_invoke_through_a_follower_is_one_trace_across_three_nodes() {
    let receiver = Receiver::default();
    let collector = receiver.start().await;
    let root = TempDir::new().unwrap();
    let nodes = start_nodes_with(
        root.path(),
        &["--otlp-endpoint".to_owned(), format!("http://{collector}")],
    );
    form_with_counter(&nodes).await;
    wait_converged(&nodes[0].endpoint(), 3).await;

    // A follower, as the client sees it now; leadership may still move,
    // so the invoke is sent again (a new trace each time) until the node
    // it went to forwarded it.
    let trace_id: [u8; 16] = *b"wasmraft-trace-1";
    let deadline = Instant::now() + SETTLE;
    let mut attempt = 0u8;
    let (trace_id, follower) = loop {
        let mut trace_id = trace_id;
        trace_id[15] = attempt;
        attempt += 1;
        let status = client(&nodes[0].endpoint()).await.status().await.unwrap();
        let leader = status.leader_id.expect("a leader is known");
        let follower = nodes.iter().find(|node| node.id != leader).unwrap();
        let mut invoke = tonic::Request::new(proto::InvokeRequest {
            module: "counter".into(),
            input: br#"{"op":"add","by":1}"#.to_vec(),
            ..Default::default()
        });
        invoke.metadata_mut().insert(
            "traceparent",
            format!("00-{}-00f067aa0ba902b7-01", hex::encode(trace_id))
                .parse()
                .unwrap(),
        );
        let mut state_machine = StateMachineClient::connect(follower.endpoint())
            .await
            .unwrap();
        state_machine.invoke(invoke).await.unwrap();
        // Spans are exported in batches, each a second after it ended.
        let forwarded = |receiver: &Receiver| {
            receiver
                .trace(&trace_id)
                .get(&follower.id.to_string())
                .is_some_and(|names| names.contains("forward"))
        };
        if receiver.wait_for(Duration::from_secs(5), forwarded).await {
            break (trace_id, follower.id);
        }
        assert!(
            Instant::now() < deadline,
            "no invoke was forwarded by a follower: {:?}",
            receiver.trace(&trace_id)
        );
    };

    // Every node's part of the trace arrives.
    let expected = |node: u64| -> BTreeSet<String> {
        let mut names: BTreeSet<String> = ["log_append", "apply", "wasm_call"]
            .into_iter()
            .map(str::to_owned)
            .collect();
        if node == follower {
            names.extend(["forward", "authenticate", "authorize", "admit"].map(str::to_owned));
            names.insert("wasmraft.v1.StateMachine/Invoke".to_owned());
        }
        names
    };
    let complete = |receiver: &Receiver| {
        let trace = receiver.trace(&trace_id);
        let every_node = nodes.iter().all(|node| {
            trace
                .get(&node.id.to_string())
                .is_some_and(|names| names.is_superset(&expected(node.id)))
        });
        let leader_proposed = trace
            .values()
            .any(|names| names.contains("propose") && names.contains("forwarded"));
        every_node && leader_proposed
    };
    assert!(
        receiver.wait_for(SETTLE, complete).await,
        "the trace is incomplete (follower {follower}): {:?}",
        receiver.trace(&trace_id)
    );
    // A new cluster, on its nodes' first run: each names it all the same,
    // the founder and the two it added.
    let clusters = receiver.clusters(&trace_id);
    assert!(
        clusters.len() == 1 && clusters.iter().all(|cluster| !cluster.is_empty()),
        "every node's resource names the one cluster: {clusters:?}"
    );
}

/// With sampling 0 a node starts no trace, and still follows a caller that
/// sampled its call: the receiver gets that call's trace and nothing else.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sampling_zero_traces_only_what_callers_sampled() {
    let receiver = Receiver::default();
    let collector = receiver.start().await;
    let root = TempDir::new().unwrap();
    let port = free_port();
    let endpoint = format!("http://127.0.0.1:{port}");
    let _node = Process {
        child: std::process::Command::new(WASMRAFT)
            .args(["serve", "--dev", "--listen", &format!("127.0.0.1:{port}")])
            .arg("--data-dir")
            .arg(root.path().join("data"))
            .args(["--otlp-endpoint", &format!("http://{collector}")])
            .args(["--trace-sampling", "0"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("wasmraft serve --dev starts"),
    };
    wait_serving(&endpoint).await;
    let mut state_machine = StateMachineClient::connect(endpoint.clone()).await.unwrap();
    let invoke = || proto::InvokeRequest {
        module: "counter".into(),
        input: br#"{"op":"add","by":1}"#.to_vec(),
        ..Default::default()
    };
    for _ in 0..5 {
        state_machine.invoke(invoke()).await.unwrap();
    }
    let trace_id = *b"sampled-by-them!";
    let mut sampled = tonic::Request::new(invoke());
    sampled.metadata_mut().insert(
        "traceparent",
        format!("00-{}-00f067aa0ba902b7-01", hex::encode(trace_id))
            .parse()
            .unwrap(),
    );
    state_machine.invoke(sampled).await.unwrap();
    let recorded = |receiver: &Receiver| {
        let names = receiver.trace(&trace_id).remove("1").unwrap_or_default();
        [
            "wasmraft.v1.StateMachine/Invoke",
            "apply",
            "wasm_call",
            "log_append",
        ]
        .iter()
        .all(|name| names.contains(*name))
    };
    assert!(
        receiver.wait_for(SETTLE, recorded).await,
        "the sampled call's trace: {:?}",
        receiver.trace(&trace_id)
    );
    // The call's own span describes the invoke.
    let module_named = receiver.spans.lock().unwrap().iter().any(|span| {
        span.trace_id.as_slice() == trace_id
            && span.name == "wasmraft.v1.StateMachine/Invoke"
            && span.attributes.get("module").map(String::as_str) == Some("counter")
    });
    assert!(module_named, "the invoke's root span names its module");
    // Everything that ended before the sampled call was exported with it
    // or earlier: nothing else came.
    let others: BTreeSet<Vec<u8>> = receiver
        .spans
        .lock()
        .unwrap()
        .iter()
        .map(|span| span.trace_id.clone())
        .filter(|id| id.as_slice() != trace_id)
        .collect();
    let names: BTreeSet<String> = receiver
        .spans
        .lock()
        .unwrap()
        .iter()
        .filter(|span| span.trace_id.as_slice() != trace_id)
        .map(|span| span.name.clone())
        .collect();
    assert!(
        others.is_empty(),
        "{} other traces were recorded, with spans {names:?}",
        others.len()
    );
}
