//! A node's metrics: OpenTelemetry instruments, read in the Prometheus text
//! format at `/metrics` (the OpenTelemetry Prometheus exporter renders
//! them: `wasmraft.requests` becomes `wasmraft_requests_total`, a histogram
//! in seconds `…_seconds`), and pushed over OTLP when the node exports
//! telemetry.
//!
//! Each node has its own [`Metrics`]: several nodes share a process in
//! tests, and each must report its own figures. Instruments the request
//! path touches are plain counters and histograms; the figures Raft already
//! keeps (term, role, indexes) are read when a scrape asks for them.
//!
//! Every label takes its values from a closed set (method names of the
//! API, gRPC codes, outcome and limit names): a client never adds a series.

use std::sync::Arc;
use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, Histogram, Meter, MeterProvider};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider};
use prometheus::Encoder;

/// How often metrics are pushed to an OTLP collector.
const EXPORT_INTERVAL: Duration = Duration::from_secs(15);

/// Bucket bounds of latencies, in seconds: 100 µs to 30 s.
const SECONDS_BUCKETS: [f64; 16] = [
    0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    10.0, 30.0,
];
/// Bucket bounds of counts per batch: entries per log append, commands per
/// entry.
const COUNT_BUCKETS: [f64; 12] = [
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 4096.0,
];
/// Bucket bounds of fuel per guest call.
const FUEL_BUCKETS: [f64; 10] = [1e3, 1e4, 1e5, 1e6, 1e7, 5e7, 1e8, 5e8, 1e9, 1e10];

/// The instruments of one node.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Instruments>,
}

struct Instruments {
    provider: SdkMeterProvider,
    /// The exporter's registry, which `/metrics` renders.
    registry: prometheus::Registry,
    meter: Meter,
    requests: Counter<u64>,
    request_seconds: Histogram<f64>,
    guest_calls: Counter<u64>,
    guest_fuel: Histogram<u64>,
    rejections: Counter<u64>,
    log_append_seconds: Histogram<f64>,
    log_append_entries: Histogram<u64>,
    batch_commands: Histogram<u64>,
    forward_batch_writes: Histogram<u64>,
    compile_seconds: Histogram<f64>,
    module_cache: Counter<u64>,
    snapshots: Counter<u64>,
    snapshot_seconds: Histogram<f64>,
    snapshot_bytes: Histogram<u64>,
    leader_changes: Counter<u64>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

/// Why a node's metrics cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("cannot set up the Prometheus exporter: {0}")]
    Prometheus(String),
    #[error("cannot export metrics to `{endpoint}`: {reason}")]
    Exporter { endpoint: String, reason: String },
}

impl Metrics {
    /// The instruments of node `node_id`, pushed to `otlp_endpoint` as well
    /// when one is given (from inside the async runtime, then).
    pub fn new(node_id: u64, otlp_endpoint: Option<&str>) -> Result<Self, MetricsError> {
        let registry = prometheus::Registry::new();
        let prometheus = opentelemetry_prometheus::exporter()
            .with_registry(registry.clone())
            .scope_info_enabled(false)
            .build()
            .map_err(|error| MetricsError::Prometheus(error.to_string()))?;
        let resource = Resource::builder()
            .with_service_name("wasmraft")
            .with_attribute(KeyValue::new("service.instance.id", node_id.to_string()))
            .build();
        let mut builder = SdkMeterProvider::builder()
            .with_reader(prometheus)
            .with_resource(resource);
        if let Some(endpoint) = otlp_endpoint {
            let exporter = opentelemetry_otlp::MetricExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint)
                .build()
                .map_err(|error| MetricsError::Exporter {
                    endpoint: endpoint.to_owned(),
                    reason: error.to_string(),
                })?;
            builder = builder.with_reader(
                PeriodicReader::builder(exporter)
                    .with_interval(EXPORT_INTERVAL)
                    .build(),
            );
        }
        let provider = builder.build();
        let meter = provider.meter("wasmraft");
        let seconds = |name: &'static str, description: &'static str| {
            meter
                .f64_histogram(name)
                .with_unit("s")
                .with_description(description)
                .with_boundaries(SECONDS_BUCKETS.to_vec())
                .build()
        };
        let counts = |name: &'static str, description: &'static str| {
            meter
                .u64_histogram(name)
                .with_description(description)
                .with_boundaries(COUNT_BUCKETS.to_vec())
                .build()
        };
        let instruments = Instruments {
            requests: meter
                .u64_counter("wasmraft.requests")
                .with_description("gRPC requests answered, by method and status code")
                .build(),
            request_seconds: seconds(
                "wasmraft.request.duration",
                "Time to answer a gRPC request, by method",
            ),
            guest_calls: meter
                .u64_counter("wasmraft.guest.calls")
                .with_description(
                    "Guest calls by entry point (apply, query) and outcome (ok, trap, out_of_fuel, …)",
                )
                .build(),
            guest_fuel: meter
                .u64_histogram("wasmraft.guest.fuel")
                .with_description("Fuel one guest call used, by entry point")
                .with_boundaries(FUEL_BUCKETS.to_vec())
                .build(),
            rejections: meter
                .u64_counter("wasmraft.admission.rejections")
                .with_description("Calls refused by local admission, by the limit that refused them")
                .build(),
            log_append_seconds: seconds(
                "wasmraft.log.append.duration",
                "Time to write and fsync one append to the Raft log",
            ),
            log_append_entries: counts(
                "wasmraft.log.append.entries",
                "Entries written by one append to the Raft log",
            ),
            batch_commands: counts(
                "wasmraft.batch.commands",
                "Commands carried by one log entry the leader proposed",
            ),
            forward_batch_writes: counts(
                "wasmraft.forward.batch.writes",
                "Writes carried by one call a follower forwarded to the leader",
            ),
            compile_seconds: seconds(
                "wasmraft.wasm.compile.duration",
                "Time to compile a module (or load it from the on-disk cache)",
            ),
            module_cache: meter
                .u64_counter("wasmraft.wasm.module.cache")
                .with_description("Compiled-module lookups, by result (hit, miss)")
                .build(),
            snapshots: meter
                .u64_counter("wasmraft.snapshots")
                .with_description("Snapshots built by this node")
                .build(),
            snapshot_seconds: seconds(
                "wasmraft.snapshot.duration",
                "Time to build one snapshot",
            ),
            snapshot_bytes: meter
                .u64_histogram("wasmraft.snapshot.size")
                .with_unit("By")
                .with_description("Size of one snapshot built by this node")
                .with_boundaries(
                    [1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10].to_vec(),
                )
                .build(),
            leader_changes: meter
                .u64_counter("wasmraft.raft.leader.changes")
                .with_description("Times this node saw the cluster's leader change")
                .build(),
            provider,
            registry,
            meter,
        };
        Ok(Metrics {
            inner: Arc::new(instruments),
        })
    }

    /// The meter, for the gauges the node reads when asked.
    pub(crate) fn meter(&self) -> &Meter {
        &self.inner.meter
    }

    /// Every metric, in the Prometheus text format.
    pub fn render(&self) -> String {
        let families = self.inner.registry.gather();
        let mut text = Vec::new();
        if let Err(error) = prometheus::TextEncoder::new().encode(&families, &mut text) {
            tracing::warn!(%error, "cannot render the metrics");
        }
        String::from_utf8(text).unwrap_or_default()
    }

    /// One gRPC request answered.
    pub fn request(&self, method: &'static str, code: &'static str, elapsed: Duration) {
        let method = KeyValue::new("method", method);
        self.inner
            .requests
            .add(1, &[method.clone(), KeyValue::new("code", code)]);
        self.inner
            .request_seconds
            .record(elapsed.as_secs_f64(), &[method]);
    }

    /// One guest call ended with `outcome`, having used `fuel`.
    pub fn guest_call(&self, entry_point: &'static str, outcome: &'static str, fuel: u64) {
        let entry_point = KeyValue::new("entry_point", entry_point);
        self.inner
            .guest_calls
            .add(1, &[entry_point.clone(), KeyValue::new("outcome", outcome)]);
        self.inner.guest_fuel.record(fuel, &[entry_point]);
    }

    /// Local admission refused a call by `limit`.
    pub fn rejected(&self, limit: &str) {
        self.inner
            .rejections
            .add(1, &[KeyValue::new("limit", limit_label(limit))]);
    }

    /// One append of `entries` to the Raft log, fsync included.
    pub fn log_append(&self, entries: usize, elapsed: Duration) {
        self.inner
            .log_append_seconds
            .record(elapsed.as_secs_f64(), &[]);
        self.inner
            .log_append_entries
            .record(u64::try_from(entries).unwrap_or(u64::MAX), &[]);
    }

    /// The leader proposed one entry of `commands` commands.
    pub fn batch(&self, commands: usize) {
        self.inner
            .batch_commands
            .record(u64::try_from(commands).unwrap_or(u64::MAX), &[]);
    }

    /// A follower forwarded `writes` writes to the leader in one call.
    pub fn forward_batch(&self, writes: usize) {
        self.inner
            .forward_batch_writes
            .record(u64::try_from(writes).unwrap_or(u64::MAX), &[]);
    }

    /// A compiled module was looked up: found in memory, or loaded (from
    /// the disk cache or by compiling) in `elapsed`.
    pub fn module_lookup(&self, loaded_in: Option<Duration>) {
        let result = if loaded_in.is_some() { "miss" } else { "hit" };
        self.inner
            .module_cache
            .add(1, &[KeyValue::new("result", result)]);
        if let Some(elapsed) = loaded_in {
            self.inner
                .compile_seconds
                .record(elapsed.as_secs_f64(), &[]);
        }
    }

    /// This node built a snapshot of `bytes` in `elapsed`.
    pub fn snapshot(&self, bytes: u64, elapsed: Duration) {
        self.inner.snapshots.add(1, &[]);
        self.inner
            .snapshot_seconds
            .record(elapsed.as_secs_f64(), &[]);
        self.inner.snapshot_bytes.record(bytes, &[]);
    }

    /// The leader this node knows changed.
    pub fn leader_changed(&self) {
        self.inner.leader_changes.add(1, &[]);
    }

    /// Pushes what is pending and stops the OTLP export, if any.
    pub fn shut_down(&self) {
        let _ = self.inner.provider.shutdown();
    }
}

/// Serves `GET /metrics` (the Prometheus text format) on `listener` until
/// `stop` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Metrics,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let router = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let metrics = metrics.clone();
            async move {
                (
                    [(
                        http::header::CONTENT_TYPE,
                        "text/plain; version=0.0.4; charset=utf-8",
                    )],
                    metrics.render(),
                )
            }
        }),
    );
    axum::serve(listener, router)
        .with_graceful_shutdown(stop)
        .await
}

/// The label of a limit: its setting's name (`limits.rates.invoke`,
/// `limits.in_flight.total`, …), with a subject's or a role's own rate
/// counted under the class it overrides, so the set stays closed.
fn limit_label(limit: &str) -> &'static str {
    const KNOWN: [&str; 11] = [
        "limits.rates.invoke",
        "limits.rates.query",
        "limits.rates.deploy",
        "limits.rates.admin",
        "limits.rates.bytes",
        "limits.in_flight.total",
        "limits.in_flight.per_subject",
        "limits.in_flight.queued",
        "limits.in_flight.bytes",
        "limits.in_flight.deploys",
        "limits.query_threads",
    ];
    let general = match limit
        .strip_prefix("limits.rates.subjects.")
        .or_else(|| limit.strip_prefix("limits.rates.roles."))
    {
        Some(rest) => rest.rsplit('.').next().unwrap_or(rest),
        None => limit,
    };
    KNOWN
        .iter()
        .find(|known| **known == limit || known.strip_prefix("limits.rates.") == Some(general))
        .copied()
        .unwrap_or("other")
}

/// The method label of a gRPC path: its name when it is one of the API's,
/// `unknown` otherwise (a client chooses the path; it does not choose a
/// series).
pub fn method_label(path: &str) -> &'static str {
    const METHODS: [&str; 30] = [
        "/wasmraft.v1.Access/Grant",
        "/wasmraft.v1.Access/Revoke",
        "/wasmraft.v1.Access/List",
        "/wasmraft.v1.Access/CreateToken",
        "/wasmraft.v1.Access/RevokeToken",
        "/wasmraft.v1.Access/WhoAmI",
        "/wasmraft.v1.Cluster/Status",
        "/wasmraft.v1.Cluster/AddNode",
        "/wasmraft.v1.Cluster/RemoveNode",
        "/wasmraft.v1.Cluster/TransferLeader",
        "/wasmraft.v1.Cluster/Snapshot",
        "/wasmraft.v1.Cluster/Health",
        "/wasmraft.v1.Cluster/GetSettings",
        "/wasmraft.v1.Cluster/SetSettings",
        "/wasmraft.v1.Modules/Deploy",
        "/wasmraft.v1.Modules/DeployWithProgress",
        "/wasmraft.v1.Modules/List",
        "/wasmraft.v1.Modules/Get",
        "/wasmraft.v1.Modules/Remove",
        "/wasmraft.v1.Raft/AppendEntries",
        "/wasmraft.v1.Raft/Vote",
        "/wasmraft.v1.Raft/InstallSnapshot",
        "/wasmraft.v1.Raft/Handshake",
        "/wasmraft.v1.Raft/Forward",
        "/wasmraft.v1.StateMachine/Invoke",
        "/wasmraft.v1.StateMachine/Query",
        "/wasmraft.v1.StateMachine/OpenSession",
        "/grpc.health.v1.Health/Check",
        "/grpc.health.v1.Health/Watch",
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    ];
    METHODS
        .iter()
        .find(|method| **method == path)
        .map(|method| &method[1..])
        .unwrap_or("unknown")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instruments_render_under_prometheus_names() {
        let metrics = Metrics::new(3, None).unwrap();
        metrics.request(
            method_label("/wasmraft.v1.StateMachine/Invoke"),
            "OK",
            Duration::from_millis(3),
        );
        metrics.guest_call("apply", "out_of_fuel", 1_000_000);
        metrics.rejected("limits.rates.subjects.alice.invoke");
        metrics.log_append(2, Duration::from_micros(400));
        let text = metrics.render();
        for expected in [
            "wasmraft_requests_total{code=\"OK\",method=\"wasmraft.v1.StateMachine/Invoke\"} 1",
            "wasmraft_request_duration_seconds_bucket{method=\"wasmraft.v1.StateMachine/Invoke\",le=\"0.005\"} 1",
            "wasmraft_guest_calls_total{entry_point=\"apply\",outcome=\"out_of_fuel\"} 1",
            "wasmraft_admission_rejections_total{limit=\"limits.rates.invoke\"} 1",
            "wasmraft_log_append_duration_seconds_count 1",
            "service_instance_id=\"3\"",
        ] {
            assert!(text.contains(expected), "{expected} missing from\n{text}");
        }
    }

    #[test]
    fn every_limit_is_one_of_a_closed_set_of_labels() {
        for (limit, label) in [
            ("limits.rates.subjects.alice.invoke", "limits.rates.invoke"),
            (
                "limits.rates.roles.module_invoker.bytes",
                "limits.rates.bytes",
            ),
            ("limits.rates.query", "limits.rates.query"),
            ("limits.in_flight.queued", "limits.in_flight.queued"),
            ("limits.in_flight.total", "limits.in_flight.total"),
            ("limits.rates.subjects.a.b.c", "other"),
        ] {
            assert_eq!(limit_label(limit), label, "{limit}");
        }
    }

    #[test]
    fn a_strange_path_is_one_unknown_series() {
        assert_eq!(method_label("/x.Y/Z"), "unknown");
        assert_eq!(method_label("/wasmraft.v1.StateMachine/Invoke/"), "unknown");
        assert_eq!(
            method_label("/wasmraft.v1.Raft/Forward"),
            "wasmraft.v1.Raft/Forward"
        );
    }
}
