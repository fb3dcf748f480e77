//! The load generator: many concurrent clients sending `kv` puts of 256-byte
//! values to a running node (or cluster), durable, each waiting for its answer
//! before sending the next. Reports throughput and latency percentiles per
//! concurrency level.
//!
//! ```sh
//! cargo run --release -p wasmraft -- serve --dev --data-dir /tmp/load-node &
//! cargo run --release -p wasmraft-benches --bin wasmraft-load -- --clients 1,16,256
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use tonic::transport::{Channel, Endpoint};
use wasmraft_proto::v1 as proto;
use wasmraft_proto::v1::state_machine_client::StateMachineClient;

#[derive(Debug, Parser)]
#[command(
    about = "Drive a wasmraft node with concurrent kv puts and report throughput and latency"
)]
struct Args {
    /// The node to load: any member of a cluster (a follower forwards every
    /// put to the leader, which costs one more hop).
    #[arg(
        long,
        env = "WASMRAFT_ENDPOINT",
        default_value = "http://127.0.0.1:7070"
    )]
    endpoint: String,
    /// Concurrency levels to run, one after the other.
    #[arg(long, value_delimiter = ',', default_value = "1,16,256")]
    clients: Vec<usize>,
    /// How long each level runs, after its warm-up.
    #[arg(long, default_value = "10")]
    seconds: u64,
    /// Warm-up before measuring each level.
    #[arg(long, default_value = "2")]
    warmup_seconds: u64,
    /// Size of each value put.
    #[arg(long, default_value = "256")]
    value_bytes: usize,
    /// Distinct keys written (keys are reused round-robin).
    #[arg(long, default_value = "100000")]
    keys: usize,
    /// HTTP/2 connections shared by the clients.
    #[arg(long, default_value = "4")]
    connections: usize,
    /// The module to load; it must speak the `kv` example's protocol.
    #[arg(long, default_value = "kv")]
    module: String,
    /// Bearer token sent with every put (a node that authenticates: a
    /// cluster node, or `serve --dev --auth`, whose token is in
    /// `DATA_DIR/admin.token`).
    #[arg(long, env = "WASMRAFT_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

#[derive(Debug, Default)]
struct Tally {
    latencies_us: Vec<u32>,
    errors: u64,
    first_error: Option<String>,
}

async fn client_loop(
    mut client: StateMachineClient<Channel>,
    args: Arc<Args>,
    worker: usize,
    measuring: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
) -> Tally {
    let mut tally = Tally::default();
    let value = "v".repeat(args.value_bytes);
    let authorization = args.token.as_ref().map(|token| {
        tonic::metadata::MetadataValue::try_from(format!("Bearer {token}"))
            .expect("checked in main")
    });
    let mut sequence = 0usize;
    while !stop.load(Ordering::Relaxed) {
        let key = (worker * 7919 + sequence * 104_729) % args.keys;
        sequence += 1;
        let input = format!(r#"{{"op":"put","key":"key-{key:08}","value":"{value}"}}"#);
        let mut request = tonic::Request::new(proto::InvokeRequest {
            module: args.module.clone(),
            input: input.into_bytes(),
            client_id: String::new(),
            sequence: 0,
        });
        if let Some(authorization) = &authorization {
            request
                .metadata_mut()
                .insert("authorization", authorization.clone());
        }
        let started = Instant::now();
        let result = client.invoke(request).await;
        let elapsed = started.elapsed();
        if !measuring.load(Ordering::Relaxed) {
            continue;
        }
        match result {
            Ok(_) => tally
                .latencies_us
                .push(u32::try_from(elapsed.as_micros()).unwrap_or(u32::MAX)),
            Err(status) => {
                tally.errors += 1;
                tally
                    .first_error
                    .get_or_insert_with(|| format!("{:?}: {}", status.code(), status.message()));
            }
        }
    }
    tally
}

fn percentile(sorted: &[u32], fraction: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((sorted.len() as f64 - 1.0) * fraction).round() as usize;
    f64::from(sorted[rank]) / 1000.0
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Arc::new(Args::parse());
    if args.clients.is_empty() || args.clients.contains(&0) {
        bail!("--clients needs concurrency levels of at least 1");
    }
    if let Some(token) = &args.token
        && tonic::metadata::MetadataValue::<tonic::metadata::Ascii>::try_from(format!(
            "Bearer {token}"
        ))
        .is_err()
    {
        bail!("--token holds characters a header cannot carry");
    }
    let mut channels = Vec::new();
    for _ in 0..args.connections.max(1) {
        let channel = Endpoint::from_shared(args.endpoint.clone())
            .with_context(|| format!("`{}` is not a URL", args.endpoint))?
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(30))
            .connect()
            .await
            .with_context(|| {
                format!(
                    "cannot reach {}; is a node running (`wasmraft serve --dev`)?",
                    args.endpoint
                )
            })?;
        channels.push(channel);
    }
    println!(
        "{:>8} {:>12} {:>10} {:>10} {:>10} {:>8}",
        "clients", "invokes/s", "p50 ms", "p99 ms", "max ms", "errors"
    );
    for &clients in &args.clients {
        let measuring = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::with_capacity(clients);
        for worker in 0..clients {
            let client = StateMachineClient::new(channels[worker % channels.len()].clone());
            tasks.push(tokio::spawn(client_loop(
                client,
                args.clone(),
                worker,
                measuring.clone(),
                stop.clone(),
            )));
        }
        tokio::time::sleep(Duration::from_secs(args.warmup_seconds)).await;
        measuring.store(true, Ordering::Relaxed);
        let started = Instant::now();
        tokio::time::sleep(Duration::from_secs(args.seconds)).await;
        measuring.store(false, Ordering::Relaxed);
        let elapsed = started.elapsed();
        stop.store(true, Ordering::Relaxed);
        let mut latencies = Vec::new();
        let mut errors = 0;
        let mut first_error = None;
        for task in tasks {
            let tally = task.await?;
            latencies.extend(tally.latencies_us);
            errors += tally.errors;
            first_error = first_error.or(tally.first_error);
        }
        latencies.sort_unstable();
        println!(
            "{:>8} {:>12.0} {:>10.2} {:>10.2} {:>10.2} {:>8}",
            clients,
            latencies.len() as f64 / elapsed.as_secs_f64(),
            percentile(&latencies, 0.50),
            percentile(&latencies, 0.99),
            percentile(&latencies, 1.0),
            errors
        );
        if let Some(error) = first_error {
            println!("         first error: {error}");
        }
    }
    Ok(())
}
