//! The layer around every gRPC call: it counts the call by method and
//! status code, times it, and opens the call's root span (a child of the
//! caller's `traceparent`, when it sent one), inside which the handler's
//! own spans nest.
//!
//! Whether a call is traced is decided here, before any span exists
//! (`traces::sample_call`): an untraced call costs no span. Raft's own
//! traffic (append entries, votes, snapshots, handshakes) is counted and
//! timed but never traced: heartbeats would bury the traces of calls.
//! `Forward` is: it carries a client's call to the leader.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use tracing::Instrument;

use crate::client::code_name;
use crate::telemetry::metrics::{Metrics, method_label};
use crate::telemetry::traces::{self, TARGET};

/// Observes every call of the server it wraps.
#[derive(Debug, Clone)]
pub struct ObserveLayer {
    metrics: Metrics,
}

impl ObserveLayer {
    pub fn new(metrics: Metrics) -> Self {
        ObserveLayer { metrics }
    }
}

impl<S> tower::Layer<S> for ObserveLayer {
    type Service = Observed<S>;

    fn layer(&self, inner: S) -> Observed<S> {
        Observed {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

/// A service whose calls are observed: see the module documentation.
#[derive(Debug, Clone)]
pub struct Observed<S> {
    inner: S,
    metrics: Metrics,
}

impl<S, B, R> tower::Service<http::Request<B>> for Observed<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    R: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, context: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(context)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let method = method_label(request.uri().path());
        let forward = method == "wasmraft.v1.Raft/Forward";
        let internal = method.starts_with("wasmraft.v1.Raft/") && !forward;
        // A forwarded call is traced when the follower traced it (its
        // `traceparent` says so), never as a trace of its own.
        let span = if !internal && traces::sample_call(request.headers(), !forward) {
            tracing::info_span!(
                target: TARGET,
                "grpc",
                otel.name = method,
                otel.kind = "server",
                rpc.system = "grpc",
                rpc.method = method,
                rpc.grpc.status_code = tracing::field::Empty,
                // Filled in by an invoke's handler (`api::state_machine`),
                // so that no child span repeats the call.
                module = tracing::field::Empty,
                client_id = tracing::field::Empty,
                sequence = tracing::field::Empty,
                index = tracing::field::Empty,
                fuel_used = tracing::field::Empty,
                outcome = tracing::field::Empty,
            )
        } else {
            tracing::Span::none()
        };
        traces::set_parent_from_headers(&span, request.headers());
        let started = Instant::now();
        let answer = self.inner.call(request).instrument(span.clone());
        let metrics = self.metrics.clone();
        Box::pin(async move {
            let answered = answer.await;
            // An error answered at once travels in the headers
            // ("trailers-only"); a call that succeeded, or failed later in
            // a stream, has its status in the trailers: counted as OK.
            let code = match &answered {
                Ok(response) => response
                    .headers()
                    .get("grpc-status")
                    .and_then(|value| value.to_str().ok())
                    .and_then(|value| value.parse::<i32>().ok())
                    .map_or(tonic::Code::Ok, tonic::Code::from_i32),
                Err(_) => tonic::Code::Unknown,
            };
            span.record("rpc.grpc.status_code", code as i64);
            metrics.request(method, code_name(code), started.elapsed());
            answered
        })
    }
}
