//! An OTLP/gRPC receiver that accepts traces and metrics and keeps only
//! their counts: the collector the telemetry benchmark exports to, so that
//! export costs what it costs against a real receiver, and the benchmark
//! can say how many spans arrived.
//!
//!   wasmraft-otlp-sink --listen 127.0.0.1:4317 [--report-file FILE]
//!
//! Every second it rewrites the report file (or prints, without one) with
//! `spans N` and `metric_exports N`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use clap::Parser;
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
use tonic::{Request, Response, Status};

#[derive(Debug, Parser)]
struct Args {
    /// Where to listen for OTLP/gRPC.
    #[arg(long, default_value = "127.0.0.1:4317")]
    listen: SocketAddr,
    /// Rewritten each second with the counts; stdout without it.
    #[arg(long)]
    report_file: Option<PathBuf>,
}

#[derive(Debug, Default, Clone)]
struct Counts {
    spans: Arc<AtomicU64>,
    metric_exports: Arc<AtomicU64>,
}

#[tonic::async_trait]
impl TraceService for Counts {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let spans: usize = request
            .get_ref()
            .resource_spans
            .iter()
            .flat_map(|resource| resource.scope_spans.iter())
            .map(|scope| scope.spans.len())
            .sum();
        self.spans.fetch_add(spans as u64, Ordering::Relaxed);
        Ok(Response::new(ExportTraceServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl MetricsService for Counts {
    async fn export(
        &self,
        _request: Request<ExportMetricsServiceRequest>,
    ) -> Result<Response<ExportMetricsServiceResponse>, Status> {
        self.metric_exports.fetch_add(1, Ordering::Relaxed);
        Ok(Response::new(ExportMetricsServiceResponse::default()))
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let counts = Counts::default();
    let reporting = counts.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let report = format!(
                "spans {}\nmetric_exports {}\n",
                reporting.spans.load(Ordering::Relaxed),
                reporting.metric_exports.load(Ordering::Relaxed)
            );
            match &args.report_file {
                Some(path) => {
                    let _ = std::fs::write(path, report);
                }
                None => print!("{report}"),
            }
        }
    });
    tonic::transport::Server::builder()
        .add_service(TraceServiceServer::new(counts.clone()).max_decoding_message_size(64 << 20))
        .add_service(MetricsServiceServer::new(counts).max_decoding_message_size(64 << 20))
        .serve(args.listen)
        .await?;
    Ok(())
}
