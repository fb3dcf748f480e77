//! Traces: the spans of one call, from the client's `traceparent` through
//! the forwarding hop and the Raft entry into apply on every replica, sent
//! to an OTLP collector (Jaeger ingests OTLP) when one is configured.
//!
//! The spans that make up a call's trace have the target [`TARGET`]; only
//! they reach the exporter, and the log lines leave them out (`RUST_LOG`
//! with `wasmraft::trace=info` shows them). Without an exporter they are
//! disabled and cost nothing: no code below creates one unless a layer
//! wants it, and apply creates its spans only for a command whose entry
//! carries a sampled trace context ([`Command::Traced`](crate::command::Command)).
//!
//! The context crosses processes in W3C trace-context form: the
//! `traceparent` header on gRPC calls (clients' and the `Forward` hop), and
//! [`TraceContext`] inside a log entry.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{
    SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState, TracerProvider,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracerProvider, SpanData, SpanExporter,
    SpanProcessor,
};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::command::TraceContext;

/// The target of every span that belongs to a call's trace.
pub const TARGET: &str = "wasmraft::trace";
/// Spans waiting for export, or in an export on the wire: past it, new
/// spans are dropped and counted ([`spans_dropped`]) rather than slowing
/// any call.
const EXPORT_QUEUE_SPANS_MAX: usize = 16_384;
/// Spans sent to the collector in one export.
const EXPORT_BATCH_SPANS_MAX: usize = 1_024;
/// How long a finished span may wait before its batch is exported.
const EXPORT_DELAY_DEFAULT: Duration = Duration::from_millis(1_000);
/// The longest one export may take before it is abandoned.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);
/// The resource attribute naming the cluster.
const CLUSTER_ID_ATTRIBUTE: &str = "wasmraft.cluster.id";
/// The most links one batch span holds to the traces of its other commands.
pub const LINKS_MAX: usize = 32;

/// Where traces go and how many.
#[derive(Debug, Clone, PartialEq)]
pub struct TraceSettings {
    /// The OTLP/gRPC endpoint, e.g. `http://127.0.0.1:4317`.
    pub endpoint: String,
    /// The fraction of traces started here that are recorded (0 to 1); a
    /// call that arrives with a `traceparent` follows its caller's choice.
    pub sampling: f64,
    /// How long a finished span may wait for its batch's export.
    pub export_delay: Duration,
    /// The resource: this node's id (`service.instance.id`) and, once it
    /// knows it, its cluster's id.
    pub node_id: u64,
    pub cluster_id: Option<String>,
}

impl TraceSettings {
    pub fn new(endpoint: String, sampling: f64, node_id: u64) -> Self {
        TraceSettings {
            endpoint,
            sampling,
            export_delay: EXPORT_DELAY_DEFAULT,
            node_id,
            cluster_id: None,
        }
    }
}

/// Why traces cannot be exported as configured.
#[derive(Debug, thiserror::Error)]
pub enum TraceSetupError {
    #[error("the trace sampling ratio must lie between 0 and 1, not {0}")]
    Sampling(f64),
    #[error("cannot export traces to `{endpoint}`: {reason}")]
    Exporter { endpoint: String, reason: String },
}

/// The tracer provider of a process that exports traces; shut it down to
/// send what is still queued.
pub(crate) fn provider(settings: &TraceSettings) -> Result<SdkTracerProvider, TraceSetupError> {
    if !(0.0..=1.0).contains(&settings.sampling) {
        return Err(TraceSetupError::Sampling(settings.sampling));
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(settings.endpoint.clone())
        .with_timeout(EXPORT_TIMEOUT)
        .build()
        .map_err(|error| TraceSetupError::Exporter {
            endpoint: settings.endpoint.clone(),
            reason: error.to_string(),
        })?;
    let batches = BatchConfigBuilder::default()
        .with_max_queue_size(EXPORT_QUEUE_SPANS_MAX)
        .with_max_export_batch_size(EXPORT_BATCH_SPANS_MAX)
        .with_scheduled_delay(settings.export_delay)
        .build();
    let budget = Arc::new(SpanBudget::new(EXPORT_QUEUE_SPANS_MAX));
    let exporter = Released::new(exporter, budget.clone());
    let processor = Bounded {
        inner: BatchSpanProcessor::builder(exporter)
            .with_batch_config(batches)
            .build(),
        budget,
    };
    let mut resource = Resource::builder()
        .with_service_name("wasmraft")
        .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
        .with_attribute(KeyValue::new(
            "service.instance.id",
            settings.node_id.to_string(),
        ));
    if let Some(cluster_id) = &settings.cluster_id {
        resource = resource.with_attribute(KeyValue::new(CLUSTER_ID_ATTRIBUTE, cluster_id.clone()));
    }
    Ok(SdkTracerProvider::builder()
        .with_span_processor(processor)
        // The edge decides which calls are traced (`sample_call`) before
        // any span exists; what reaches the SDK is to be recorded.
        .with_sampler(Sampler::AlwaysOn)
        .with_resource(resource.build())
        .build())
}

/// Spans this process dropped because the export queue was full.
static SPANS_DROPPED: AtomicU64 = AtomicU64::new(0);

/// How many spans this process dropped because the export queue was full
/// (`wasmraft_trace_spans_dropped_total`): the collector was slower than
/// the node, or away.
pub fn spans_dropped() -> u64 {
    SPANS_DROPPED.load(Ordering::Relaxed)
}

/// The spans that may wait for export at once. The SDK's batch processor
/// drops past its own queue but keeps the count to itself; this budget,
/// taken when a span ends and given back when its export finishes (sent,
/// failed or abandoned), decides first, and counts.
#[derive(Debug)]
struct SpanBudget {
    pending: AtomicUsize,
    limit: usize,
}

impl SpanBudget {
    fn new(limit: usize) -> Self {
        SpanBudget {
            pending: AtomicUsize::new(0),
            limit,
        }
    }

    /// Takes room for one span, or counts it dropped.
    fn take(&self) -> bool {
        let taken = self
            .pending
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |pending| {
                (pending < self.limit).then_some(pending + 1)
            })
            .is_ok();
        if !taken {
            SPANS_DROPPED.fetch_add(1, Ordering::Relaxed);
        }
        taken
    }

    /// Gives back the room of `spans` spans whose export is over.
    fn give_back(&self, spans: usize) {
        let _ = self
            .pending
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |pending| {
                Some(pending.saturating_sub(spans))
            });
    }
}

/// The batch processor behind a [`SpanBudget`]: a span without room is
/// dropped before it reaches the queue.
#[derive(Debug)]
struct Bounded<P> {
    inner: P,
    budget: Arc<SpanBudget>,
}

impl<P: SpanProcessor> SpanProcessor for Bounded<P> {
    fn on_start(&self, span: &mut opentelemetry_sdk::trace::Span, context: &Context) {
        self.inner.on_start(span, context);
    }

    fn on_end(&self, span: SpanData) {
        if self.budget.take() {
            self.inner.on_end(span);
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// Where the exporter learns this process's cluster id once the node knows
/// it: a node founding or joining a cluster learns it after its telemetry
/// started.
type ClusterIdSource = Box<dyn Fn() -> Option<String> + Send + Sync>;

static CLUSTER_ID_SOURCE: std::sync::OnceLock<ClusterIdSource> = std::sync::OnceLock::new();

/// Tells the exporter where to find the cluster id (the node's peer
/// credentials); its resource gains `wasmraft.cluster.id` at the first
/// export after the id is known. The first source given holds.
pub fn name_cluster_by(source: impl Fn() -> Option<String> + Send + Sync + 'static) {
    let _ = CLUSTER_ID_SOURCE.set(Box::new(source));
}

/// The exporter that gives a batch's room back to the [`SpanBudget`] once
/// its export is over, however it ends, and names the cluster in its
/// resource once it is known.
#[derive(Debug)]
struct Released<E> {
    /// Behind an async lock: naming the cluster changes the exporter's
    /// resource, which takes it mutably, between exports.
    inner: tokio::sync::Mutex<E>,
    budget: Arc<SpanBudget>,
    /// The resource the provider gave, while it names no cluster yet.
    unnamed: std::sync::Mutex<Option<Resource>>,
}

impl<E> Released<E> {
    fn new(inner: E, budget: Arc<SpanBudget>) -> Self {
        Released {
            inner: tokio::sync::Mutex::new(inner),
            budget,
            unnamed: std::sync::Mutex::new(None),
        }
    }

    /// The resource with the cluster id, once both are known; taken once.
    fn named_resource(&self) -> Option<Resource> {
        let mut unnamed = self
            .unnamed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        unnamed.as_ref()?;
        let cluster_id = CLUSTER_ID_SOURCE.get().and_then(|source| source())?;
        let resource = unnamed.take()?;
        Some(
            Resource::builder_empty()
                .with_attributes(
                    resource
                        .iter()
                        .map(|(key, value)| KeyValue::new(key.clone(), value.clone())),
                )
                .with_attribute(KeyValue::new(CLUSTER_ID_ATTRIBUTE, cluster_id))
                .build(),
        )
    }
}

/// Gives a batch's room back when dropped: an export abandoned mid-way
/// still frees its spans' room.
struct GiveBack {
    budget: Arc<SpanBudget>,
    spans: usize,
}

impl Drop for GiveBack {
    fn drop(&mut self) {
        self.budget.give_back(self.spans);
    }
}

impl<E: SpanExporter> SpanExporter for Released<E> {
    fn export(
        &self,
        batch: Vec<SpanData>,
    ) -> impl std::future::Future<Output = OTelSdkResult> + Send {
        let give_back = GiveBack {
            budget: self.budget.clone(),
            spans: batch.len(),
        };
        let named = self.named_resource();
        async move {
            let mut inner = self.inner.lock().await;
            if let Some(resource) = named {
                inner.set_resource(&resource);
            }
            let result = inner.export(batch).await;
            drop(give_back);
            result
        }
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.blocking_lock().shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.blocking_lock().force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        let named = resource
            .get(&opentelemetry::Key::from_static_str(CLUSTER_ID_ATTRIBUTE))
            .is_some();
        *self
            .unnamed
            .get_mut()
            .unwrap_or_else(std::sync::PoisonError::into_inner) =
            (!named).then(|| resource.clone());
        self.inner.get_mut().set_resource(resource);
    }
}

/// The tracing layer that turns [`TARGET`] spans into OpenTelemetry spans
/// of `provider`.
pub(crate) fn layer<S>(
    provider: &SdkTracerProvider,
) -> impl tracing_subscriber::Layer<S> + Send + Sync + 'static
where
    S: tracing::Subscriber
        + for<'span> tracing_subscriber::registry::LookupSpan<'span>
        + Send
        + Sync,
{
    use tracing_subscriber::Layer;
    tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("wasmraft"))
        // Each of these adds attributes (and their strings) to every span,
        // a cost on every traced call for what the span's name says.
        .with_tracked_inactivity(false)
        .with_location(false)
        .with_threads(false)
        .with_target(false)
        // Entering a span would also make its context the current
        // OpenTelemetry context, for instrumentation that reads it; none
        // here does (parents and propagation go through the span), and it
        // costs on every poll of every traced future.
        .with_context_activation(false)
        .with_filter(
            tracing_subscriber::filter::Targets::new().with_target(TARGET, tracing::Level::TRACE),
        )
}

/// The fraction of calls traced, once the process exports traces.
static SAMPLING: std::sync::OnceLock<f64> = std::sync::OnceLock::new();

/// Records that the process exports traces, sampling this fraction of the
/// calls that bring no trace context.
pub(crate) fn exporting_with(sampling: f64) {
    let _ = SAMPLING.set(sampling);
}

/// Whether this process exports traces: without it, no span of a trace
/// is made and log entries' trace contexts are not looked at.
pub fn exporting() -> bool {
    SAMPLING.get().is_some()
}

/// Whether a gRPC call with these headers is traced: never when the
/// process exports no traces; as its `traceparent` says when it brings one
/// (the caller sampled it, or not); otherwise, if `may_start` a trace,
/// with the configured probability. Decided before any span exists, so an
/// untraced call costs no span at all.
pub fn sample_call(headers: &http::HeaderMap, may_start: bool) -> bool {
    let Some(&sampling) = SAMPLING.get() else {
        return false;
    };
    if let Some(flags) = headers
        .get("traceparent")
        .and_then(|value| value.to_str().ok())
        .and_then(traceparent_flags)
    {
        return flags & 1 == 1;
    }
    if !may_start {
        return false;
    }
    if sampling >= 1.0 {
        return true;
    }
    sampling > 0.0 && uniform() < sampling
}

/// The trace flags of a well-formed W3C `traceparent`
/// (`00-<32 hex>-<16 hex>-<2 hex>`), whose trace and span ids are not zero.
fn traceparent_flags(header: &str) -> Option<u8> {
    let mut parts = header.trim().split('-');
    let (version, trace_id, span_id, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let hex =
        |text: &str, len: usize| text.len() == len && text.bytes().all(|b| b.is_ascii_hexdigit());
    if !hex(version, 2) || version == "ff" || !hex(trace_id, 32) || !hex(span_id, 16) {
        return None;
    }
    if trace_id.bytes().all(|b| b == b'0') || span_id.bytes().all(|b| b == b'0') {
        return None;
    }
    if !hex(flags, 2) || (version == "00" && parts.next().is_some()) {
        return None;
    }
    u8::from_str_radix(flags, 16).ok()
}

/// A number in [0, 1) from a per-thread generator (xorshift, seeded by
/// std's randomised hasher): sampling needs no cryptographic randomness.
fn uniform() -> f64 {
    use std::cell::Cell;
    use std::hash::{BuildHasher, Hasher};
    thread_local! {
        static STATE: Cell<u64> = Cell::new({
            let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
            hasher.write_u64(0x9e37_79b9_7f4a_7c15);
            hasher.finish() | 1
        });
    }
    STATE.with(|state| {
        let mut x = state.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        state.set(x);
        (x >> 11) as f64 / (1u64 << 53) as f64
    })
}

/// A span of the current call's trace (target [`TARGET`], level info), or
/// none when the current span belongs to no trace: only the edge starts
/// one (`api::observe`), and only for a sampled call.
macro_rules! trace_span {
    ($($field:tt)*) => {
        if $crate::telemetry::traces::traced() {
            tracing::info_span!(target: $crate::telemetry::traces::TARGET, $($field)*)
        } else {
            tracing::Span::none()
        }
    };
}
pub(crate) use trace_span;

/// Whether the current span belongs to a trace: its children are worth
/// creating.
pub fn traced() -> bool {
    tracing::Span::current()
        .metadata()
        .is_some_and(|metadata| metadata.target() == TARGET)
}

/// The sampled trace context of the current span, to carry in a log entry.
pub fn current() -> Option<TraceContext> {
    if !traced() {
        return None;
    }
    let context = tracing::Span::current().context();
    let span = context.span();
    let span_context = span.span_context();
    (span_context.is_valid() && span_context.is_sampled()).then(|| TraceContext {
        trace_id: span_context.trace_id().to_bytes(),
        span_id: span_context.span_id().to_bytes(),
        flags: span_context.trace_flags().to_u8(),
    })
}

fn remote(trace: &TraceContext) -> SpanContext {
    SpanContext::new(
        TraceId::from_bytes(trace.trace_id),
        SpanId::from_bytes(trace.span_id),
        TraceFlags::new(trace.flags),
        true,
        TraceState::default(),
    )
}

/// Makes `span` (not yet entered) a child of the span that proposed a
/// command, on whichever node it ran.
pub fn set_remote_parent(span: &tracing::Span, trace: &TraceContext) {
    if span.is_none() {
        return;
    }
    let parent = Context::new().with_remote_span_context(remote(trace));
    // Only a span that was entered already refuses, and none is here.
    let _ = span.set_parent(parent);
}

/// Links `span` to the trace of another command it serves (a batch's).
pub fn link(span: &tracing::Span, trace: &TraceContext) {
    if !span.is_none() {
        span.add_link(remote(trace));
    }
}

/// Makes `span` (not yet entered) a child of the context a gRPC request's
/// `traceparent` header names, when it names one.
pub fn set_parent_from_headers(span: &tracing::Span, headers: &http::HeaderMap) {
    if span.is_none() || headers.get("traceparent").is_none() {
        return;
    }
    let parent = TraceContextPropagator::new().extract(&HeaderExtractor(headers));
    if parent.span().span_context().is_valid() {
        let _ = span.set_parent(parent);
    }
}

/// Writes the current span's context as `traceparent` into an outgoing
/// call's metadata (the `Forward` hop), when the current span is traced.
pub fn inject(metadata: &mut tonic::metadata::MetadataMap) {
    if !traced() {
        return;
    }
    let context = tracing::Span::current().context();
    TraceContextPropagator::new().inject_context(&context, &mut MetadataInjector(metadata));
}

struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

struct MetadataInjector<'a>(&'a mut tonic::metadata::MetadataMap);

impl Injector for MetadataInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        let Ok(key) = tonic::metadata::MetadataKey::from_bytes(key.as_bytes()) else {
            return;
        };
        if let Ok(value) = value.parse() {
            self.0.insert(key, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_export_queue_drops_and_counts_until_an_export_gives_room_back() {
        let budget = Arc::new(SpanBudget::new(2));
        let dropped_before = spans_dropped();
        assert!(budget.take());
        assert!(budget.take());
        assert!(!budget.take(), "a third span finds no room");
        assert!(
            spans_dropped() > dropped_before,
            "the dropped span is counted"
        );
        // An export of both, abandoned mid-way, still gives their room back.
        drop(GiveBack {
            budget: budget.clone(),
            spans: 2,
        });
        assert!(budget.take());
        assert!(budget.take());
        assert!(!budget.take());
    }

    #[test]
    fn a_traceparent_header_round_trips_through_the_binary_form() {
        let trace = TraceContext {
            trace_id: [0x4b; 16],
            span_id: [0x7a; 8],
            flags: 1,
        };
        let context = Context::new().with_remote_span_context(remote(&trace));
        let mut metadata = tonic::metadata::MetadataMap::new();
        TraceContextPropagator::new()
            .inject_context(&context, &mut MetadataInjector(&mut metadata));
        let header = metadata.get("traceparent").unwrap().to_str().unwrap();
        assert_eq!(
            header,
            "00-4b4b4b4b4b4b4b4b4b4b4b4b4b4b4b4b-7a7a7a7a7a7a7a7a-01"
        );
        let headers = metadata.into_headers();
        let extracted = TraceContextPropagator::new().extract(&HeaderExtractor(&headers));
        let span = extracted.span();
        let extracted = span.span_context();
        assert_eq!(extracted.trace_id().to_bytes(), trace.trace_id);
        assert_eq!(extracted.span_id().to_bytes(), trace.span_id);
        assert!(extracted.is_sampled());
    }

    #[test]
    fn only_well_formed_traceparents_decide() {
        let rows = [
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                Some(1),
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",
                Some(0),
            ),
            (
                "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
                Some(1),
            ),
            (
                "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
                None,
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
                None,
            ),
            (
                "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                None,
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
                None,
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
                None,
            ),
            ("garbage", None),
            ("", None),
        ];
        for (header, flags) in rows {
            assert_eq!(traceparent_flags(header), flags, "{header}");
        }
        let draws: Vec<f64> = (0..1000).map(|_| uniform()).collect();
        assert!(draws.iter().all(|draw| (0.0..1.0).contains(draw)));
        let below_half = draws.iter().filter(|draw| **draw < 0.5).count();
        assert!((350..650).contains(&below_half), "{below_half}");
    }

    #[test]
    fn sampling_outside_zero_to_one_is_refused() {
        for sampling in [-0.1, 1.5, f64::NAN] {
            let settings = TraceSettings::new("http://127.0.0.1:4317".into(), sampling, 1);
            assert!(matches!(
                provider(&settings),
                Err(TraceSetupError::Sampling(_))
            ));
        }
    }
}
