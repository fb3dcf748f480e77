//! The load generator: many concurrent clients sending `kv` puts of 256-byte
//! values to a running node (or cluster), durable, each waiting for its answer
//! before sending the next. Reports throughput and latency percentiles per
//! concurrency level.
//!
//! ```sh
//! cargo run --release -p wasmraft -- serve --dev --data-dir /tmp/load-node &
//! cargo run --release -p wasmraft-benches --bin wasmraft-load -- --clients 1,16,256
//! ```
//!
//! `--target etcd` sends the same puts (same keys, values, closed loop and
//! connection pool) to an etcd cluster as etcd v3 `Put`s, for a side-by-side
//! figure (`benches/vs-etcd`); it needs the `etcd` feature
//! (`--features etcd`), whose `etcd-client` builds its protocol with the
//! system's `protoc`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::{Channel, Endpoint};
use wasmraft_proto::v1 as proto;
use wasmraft_proto::v1::state_machine_client::StateMachineClient;

#[derive(Debug, Parser)]
#[command(
    about = "Drive a wasmraft node with concurrent kv puts and report throughput and latency"
)]
struct Args {
    /// What to load: `wasmraft` (kv example invokes) or `etcd` (v3 puts).
    #[arg(long, value_enum, default_value = "wasmraft")]
    target: Target,
    /// The members to load, comma-separated: the connections go to them in
    /// turn (a follower forwards every put to the leader, which costs one
    /// more hop).
    #[arg(
        long,
        alias = "endpoint",
        env = "WASMRAFT_ENDPOINT",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:7070"
    )]
    endpoints: Vec<String>,
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
    /// Processes (pids, comma-separated) whose CPU time over each measured
    /// window is reported per completed put, in microseconds: the nodes
    /// under load. A figure far less noisy than throughput on a busy
    /// machine.
    #[arg(long, value_delimiter = ',')]
    cpu_of: Vec<u32>,
}

/// The CPU seconds the processes `pids` have used so far, or `None` once
/// one of them cannot be read (it has exited).
fn cpu_of(pids: &[u32]) -> Option<f64> {
    pids.iter()
        .map(|pid| wasmraft_benches::cpu_seconds(&pid.to_string()))
        .sum()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Target {
    Wasmraft,
    Etcd,
}

/// One pooled connection to the system under load.
#[derive(Clone)]
enum Connection {
    Wasmraft {
        client: StateMachineClient<Channel>,
        authorization: Option<MetadataValue<Ascii>>,
    },
    #[cfg(feature = "etcd")]
    Etcd(etcd_client::KvClient),
}

impl Connection {
    async fn open(args: &Args, endpoint: &str) -> anyhow::Result<Self> {
        match args.target {
            Target::Wasmraft => {
                let channel = Endpoint::from_shared(endpoint.to_owned())
                    .with_context(|| format!("`{endpoint}` is not a URL"))?
                    .connect_timeout(Duration::from_secs(5))
                    .timeout(Duration::from_secs(30))
                    .connect()
                    .await
                    .with_context(|| {
                        format!(
                            "cannot reach {endpoint}; is a node running (`wasmraft serve --dev`)?"
                        )
                    })?;
                let authorization = match &args.token {
                    Some(token) => Some(
                        MetadataValue::try_from(format!("Bearer {token}"))
                            .context("--token holds characters a header cannot carry")?,
                    ),
                    None => None,
                };
                Ok(Self::Wasmraft {
                    client: StateMachineClient::new(channel),
                    authorization,
                })
            }
            #[cfg(feature = "etcd")]
            Target::Etcd => {
                let options = etcd_client::ConnectOptions::new()
                    .with_connect_timeout(Duration::from_secs(5))
                    .with_timeout(Duration::from_secs(30));
                let client = etcd_client::Client::connect([endpoint], Some(options))
                    .await
                    .with_context(|| format!("cannot reach etcd at {endpoint}"))?;
                Ok(Self::Etcd(client.kv_client()))
            }
            #[cfg(not(feature = "etcd"))]
            Target::Etcd => bail!(
                "this wasmraft-load was built without etcd support: build it with \
                 `cargo build --release -p wasmraft-benches --features etcd` (benches/vs-etcd does)"
            ),
        }
    }

    /// One durable put of `value` under `key`.
    async fn put(&mut self, module: &str, key: &str, value: &str) -> Result<(), String> {
        match self {
            Self::Wasmraft {
                client,
                authorization,
            } => {
                let input = format!(r#"{{"op":"put","key":"{key}","value":"{value}"}}"#);
                let mut request = tonic::Request::new(proto::InvokeRequest {
                    module: module.to_owned(),
                    input: input.into_bytes(),
                    client_id: String::new(),
                    sequence: 0,
                });
                if let Some(authorization) = authorization {
                    request
                        .metadata_mut()
                        .insert("authorization", authorization.clone());
                }
                client
                    .invoke(request)
                    .await
                    .map(drop)
                    .map_err(|status| format!("{:?}: {}", status.code(), status.message()))
            }
            #[cfg(feature = "etcd")]
            Self::Etcd(client) => client
                .put(key, value, None)
                .await
                .map(drop)
                .map_err(|error| error.to_string()),
        }
    }
}

#[derive(Debug, Default)]
struct Tally {
    latencies_us: Vec<u32>,
    errors: u64,
    first_error: Option<String>,
}

async fn client_loop(
    mut connection: Connection,
    args: Arc<Args>,
    worker: usize,
    measuring: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
) -> Tally {
    let mut tally = Tally::default();
    let value = "v".repeat(args.value_bytes);
    let mut sequence = 0usize;
    while !stop.load(Ordering::Relaxed) {
        let key = (worker * 7919 + sequence * 104_729) % args.keys;
        sequence += 1;
        let key = format!("key-{key:08}");
        let started = Instant::now();
        let result = connection.put(&args.module, &key, &value).await;
        let elapsed = started.elapsed();
        if !measuring.load(Ordering::Relaxed) {
            continue;
        }
        match result {
            Ok(()) => tally
                .latencies_us
                .push(u32::try_from(elapsed.as_micros()).unwrap_or(u32::MAX)),
            Err(error) => {
                tally.errors += 1;
                tally.first_error.get_or_insert(error);
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
    if args.endpoints.is_empty() {
        bail!("--endpoints needs at least one member");
    }
    let mut connections = Vec::new();
    for index in 0..args.connections.max(1) {
        let endpoint = &args.endpoints[index % args.endpoints.len()];
        connections.push(Connection::open(&args, endpoint).await?);
    }
    let cpu_column = if args.cpu_of.is_empty() {
        String::new()
    } else {
        format!(" {:>12}", "cpu us/put")
    };
    println!(
        "{:>8} {:>12} {:>10} {:>10} {:>10} {:>8}{cpu_column}",
        "clients", "invokes/s", "p50 ms", "p99 ms", "max ms", "errors"
    );
    for &clients in &args.clients {
        let measuring = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::with_capacity(clients);
        for worker in 0..clients {
            let connection = connections[worker % connections.len()].clone();
            tasks.push(tokio::spawn(client_loop(
                connection,
                args.clone(),
                worker,
                measuring.clone(),
                stop.clone(),
            )));
        }
        tokio::time::sleep(Duration::from_secs(args.warmup_seconds)).await;
        measuring.store(true, Ordering::Relaxed);
        let started = Instant::now();
        let cpu_before = cpu_of(&args.cpu_of);
        tokio::time::sleep(Duration::from_secs(args.seconds)).await;
        measuring.store(false, Ordering::Relaxed);
        let cpu_used = cpu_before.zip(cpu_of(&args.cpu_of)).map(|(b, a)| a - b);
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
        let cpu_per_put = match cpu_used {
            _ if args.cpu_of.is_empty() => String::new(),
            Some(seconds) if !latencies.is_empty() => {
                format!(" {:>12.1}", seconds * 1e6 / latencies.len() as f64)
            }
            _ => format!(" {:>12}", "-"),
        };
        println!(
            "{:>8} {:>12.0} {:>10.2} {:>10.2} {:>10.2} {:>8}{cpu_per_put}",
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
