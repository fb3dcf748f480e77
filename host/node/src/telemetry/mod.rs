//! What the node tells its operator: logs (`logs`: plain or JSON, repeated
//! lines summarised), traces (`traces`: OTLP export, trace context across
//! nodes and into the log) and metrics (`metrics`: OpenTelemetry
//! instruments, read by Prometheus at `/metrics`).
//!
//! [`init`] installs the process's subscriber once: the log lines, and the
//! trace exporter when the process exports traces. Metrics are per node
//! (several nodes share a process in tests), not per process.

pub mod logs;
pub mod metrics;
pub mod traces;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

pub use self::traces::{TraceSettings, TraceSetupError};

/// The process's telemetry: keep it until the process ends, and
/// [`shut_down`](Telemetry::shut_down) it to export what is still queued.
#[derive(Debug, Default)]
pub struct Telemetry {
    traces: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

/// Installs the process's logger, and its trace exporter when `traces` says
/// where to send them. Call it once, inside the async runtime when traces
/// are exported (the exporter's gRPC channel lives there).
pub fn init(
    format: logs::LogFormat,
    traces: Option<&TraceSettings>,
) -> Result<Telemetry, TraceSetupError> {
    let provider = traces.map(traces::provider).transpose()?;
    if let Some(traces) = traces {
        traces::exporting_with(traces.sampling);
    }
    let exporting = provider.as_ref().map(traces::layer);
    tracing_subscriber::registry()
        .with(exporting)
        .with(logs::layer(format))
        .init();
    Ok(Telemetry { traces: provider })
}

impl Telemetry {
    /// Exports the spans still queued and stops the exporter.
    pub fn shut_down(self) {
        if let Some(provider) = self.traces
            && let Err(error) = provider.shutdown()
        {
            tracing::warn!(%error, "the trace exporter did not stop cleanly");
        }
    }
}
