//! Overload without collapse: many subjects offer a node more writes than
//! it can take. First each subject writes in a closed loop, which finds the
//! node's capacity and its latency at capacity; then every subject offers
//! its share of `--overload` times that capacity in an open loop (a write
//! every 1/rate seconds, whether or not the last one answered). Prints the
//! goodput against the capacity, the latency of admitted writes against the
//! latency at capacity, and how fast the shed writes were answered and
//! whether they carried `retry-after-ms`.
//!
//! Needs a node that authenticates (each subject has its own token) and an
//! administrator's token; `benches/overload` starts a 3-node cluster with
//! in-flight caps sized for this load and spreads the subjects over its
//! nodes, as clients of a cluster are: each node sheds what it is offered,
//! and followers forward what they admit to the leader.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use clap::Parser;
use tonic::Code;
use tonic::metadata::MetadataValue;
use tonic::transport::{Channel, Endpoint};
use wasmraft::client::{Client, ClientConfig, DeployOptions, RoleBinding};
use wasmraft_proto::v1 as proto;
use wasmraft_proto::v1::state_machine_client::StateMachineClient;

#[derive(Debug, Parser)]
#[command(about = "Subjects offering a node more writes than it takes: goodput, latency, shedding")]
struct Args {
    /// The node the subjects are set up through (a cluster's leader).
    #[arg(
        long,
        env = "WASMRAFT_ENDPOINT",
        default_value = "http://127.0.0.1:7070"
    )]
    endpoint: String,
    /// The nodes the subjects write to, comma-separated: the connections
    /// are spread over them, and each subject keeps to one connection.
    /// Default: `--endpoint` alone.
    #[arg(long, value_delimiter = ',')]
    endpoints: Vec<String>,
    /// An administrator's token.
    #[arg(long, env = "WASMRAFT_TOKEN", hide_env_values = true)]
    token: String,
    /// Subjects, each with a token of its own.
    #[arg(long, default_value = "64")]
    subjects: usize,
    /// Closed-loop writers per subject in the capacity phase.
    #[arg(long, default_value = "2")]
    writers: usize,
    /// The offered load of the overload phase, as a multiple of the
    /// capacity measured first.
    #[arg(long, default_value = "2.0")]
    overload: f64,
    /// How long each phase measures, after its warm-up.
    #[arg(long, default_value = "10")]
    seconds: u64,
    /// Warm-up before each phase measures.
    #[arg(long, default_value = "2")]
    warmup_seconds: u64,
    /// Size of each value put.
    #[arg(long, default_value = "256")]
    value_bytes: usize,
    /// HTTP/2 connections shared by the subjects.
    #[arg(long, default_value = "8")]
    connections: usize,
    /// Writes the generator keeps open at most in the open loop; past it a
    /// tick is counted as not sent (the generator's own bound, not the
    /// node's).
    #[arg(long, default_value = "20000")]
    outstanding_max: u64,
}

/// The answers of one phase.
#[derive(Debug, Default)]
struct Tally {
    ok_us: Vec<u64>,
    shed_us: Vec<u64>,
    shed_with_retry_after: u64,
    failed: u64,
    first_failure: Option<String>,
}

impl Tally {
    fn merge(&mut self, other: Tally) {
        self.ok_us.extend(other.ok_us);
        self.shed_us.extend(other.shed_us);
        self.shed_with_retry_after += other.shed_with_retry_after;
        self.failed += other.failed;
        if self.first_failure.is_none() {
            self.first_failure = other.first_failure;
        }
    }

    fn record(&mut self, result: Result<(), tonic::Status>, elapsed: Duration) {
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        match result {
            Ok(()) => self.ok_us.push(micros),
            Err(status) if status.code() == Code::ResourceExhausted => {
                self.shed_us.push(micros);
                if status.metadata().contains_key("retry-after-ms") {
                    self.shed_with_retry_after += 1;
                }
            }
            Err(status) => {
                self.failed += 1;
                self.first_failure
                    .get_or_insert_with(|| format!("{:?}: {}", status.code(), status.message()));
            }
        }
    }
}

/// One subject's way to write.
#[derive(Clone)]
struct Writer {
    client: StateMachineClient<Channel>,
    authorization: MetadataValue<tonic::metadata::Ascii>,
    subject: usize,
    value: Arc<str>,
}

impl Writer {
    async fn put(&self, sequence: u64) -> Result<(), tonic::Status> {
        let key = (self.subject as u64 * 1_000_003 + sequence) % 100_000;
        let input = format!(
            r#"{{"op":"put","key":"key-{key:08}","value":"{}"}}"#,
            self.value
        );
        let mut request = tonic::Request::new(proto::InvokeRequest {
            module: "kv".to_owned(),
            input: input.into_bytes(),
            client_id: String::new(),
            sequence: 0,
        });
        request.set_timeout(Duration::from_secs(30));
        request
            .metadata_mut()
            .insert("authorization", self.authorization.clone());
        self.client.clone().invoke(request).await.map(drop)
    }
}

async fn closed_loop(writer: Writer, measuring: Arc<AtomicBool>, stop: Arc<AtomicBool>) -> Tally {
    let mut tally = Tally::default();
    let mut sequence = 0;
    while !stop.load(Ordering::Relaxed) {
        sequence += 1;
        let started = Instant::now();
        let result = writer.put(sequence).await;
        if measuring.load(Ordering::Relaxed) {
            tally.record(result, started.elapsed());
        }
    }
    tally
}

/// Shared by every write of the open loop.
struct OpenLoop {
    measuring: AtomicBool,
    outstanding: AtomicU64,
    not_sent: AtomicU64,
    tally: std::sync::Mutex<Tally>,
}

async fn open_loop(
    writer: Writer,
    per_second: f64,
    shared: Arc<OpenLoop>,
    until: Instant,
    max: u64,
) {
    let mut ticks = tokio::time::interval(Duration::from_secs_f64(1.0 / per_second));
    // A late tick is sent at once: the offered rate holds on average.
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut sequence = 0;
    while Instant::now() < until {
        ticks.tick().await;
        sequence += 1;
        if shared.outstanding.fetch_add(1, Ordering::Relaxed) >= max {
            shared.outstanding.fetch_sub(1, Ordering::Relaxed);
            if shared.measuring.load(Ordering::Relaxed) {
                shared.not_sent.fetch_add(1, Ordering::Relaxed);
            }
            continue;
        }
        let (writer, shared) = (writer.clone(), shared.clone());
        tokio::spawn(async move {
            let measured = shared.measuring.load(Ordering::Relaxed);
            let started = Instant::now();
            let result = writer.put(sequence).await;
            let elapsed = started.elapsed();
            shared.outstanding.fetch_sub(1, Ordering::Relaxed);
            if measured && shared.measuring.load(Ordering::Relaxed) {
                shared
                    .tally
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .record(result, elapsed);
            }
        });
    }
}

/// CPU seconds this process has used; 0 where they cannot be read.
fn cpu_seconds() -> f64 {
    wasmraft_benches::cpu_seconds("self").unwrap_or(0.0)
}

fn percentile_ms(sorted_us: &[u64], fraction: f64) -> f64 {
    if sorted_us.is_empty() {
        return f64::NAN;
    }
    let rank = ((sorted_us.len() as f64 - 1.0) * fraction).round() as usize;
    sorted_us[rank] as f64 / 1000.0
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    ensure!(
        args.subjects > 0 && args.writers > 0,
        "--subjects and --writers must be at least 1"
    );
    ensure!(args.overload > 0.0, "--overload must be above 0");
    let admin = Client::connect_with(
        &args.endpoint,
        ClientConfig {
            bearer_token: Some(args.token.clone()),
            ..ClientConfig::default()
        },
    )
    .await
    .with_context(|| format!("cannot reach {}", args.endpoint))?;
    if admin.get_module("kv").await.is_err() {
        admin
            .deploy("kv", wasmraft_examples::KV_WASM, DeployOptions::default())
            .await
            .context("deploy the kv example")?;
    }
    let targets = if args.endpoints.is_empty() {
        vec![args.endpoint.clone()]
    } else {
        args.endpoints.clone()
    };
    let mut channels = Vec::new();
    for connection in 0..args.connections.max(1) {
        let target = &targets[connection % targets.len()];
        let endpoint =
            Endpoint::from_shared(target.clone())?.connect_timeout(Duration::from_secs(5));
        channels.push(
            endpoint
                .connect()
                .await
                .with_context(|| format!("cannot reach {target}"))?,
        );
    }
    let value: Arc<str> = "v".repeat(args.value_bytes).into();
    let mut writers = Vec::new();
    for subject in 0..args.subjects {
        let name = format!("tenant-{subject:03}");
        admin
            .grant(&RoleBinding::new(&name, "module_invoker", Some("kv"))?)
            .await
            .with_context(|| format!("grant {name}"))?;
        let token = admin.create_token(&name).await?.token;
        writers.push(Writer {
            client: StateMachineClient::new(channels[subject % channels.len()].clone()),
            authorization: MetadataValue::try_from(format!("Bearer {token}"))?,
            subject,
            value: value.clone(),
        });
    }
    let warmup = Duration::from_secs(args.warmup_seconds);
    let measure = Duration::from_secs(args.seconds);

    // Capacity: every subject's writers in a closed loop.
    let measuring = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for writer in &writers {
        for _ in 0..args.writers {
            tasks.push(tokio::spawn(closed_loop(
                writer.clone(),
                measuring.clone(),
                stop.clone(),
            )));
        }
    }
    tokio::time::sleep(warmup).await;
    measuring.store(true, Ordering::Relaxed);
    let started = Instant::now();
    let cpu_before = cpu_seconds();
    tokio::time::sleep(measure).await;
    measuring.store(false, Ordering::Relaxed);
    let elapsed = started.elapsed().as_secs_f64();
    let capacity_cpu = (cpu_seconds() - cpu_before) / elapsed;
    stop.store(true, Ordering::Relaxed);
    let mut capacity = Tally::default();
    for task in tasks {
        capacity.merge(task.await?);
    }
    capacity.ok_us.sort_unstable();
    let capacity_rate = capacity.ok_us.len() as f64 / elapsed;
    let capacity_p99 = percentile_ms(&capacity.ok_us, 0.99);
    println!(
        "capacity ({} subjects x {} closed-loop writers): {capacity_rate:.0} writes/s, p50 {:.2} ms, p99 {capacity_p99:.2} ms, shed {}, failed {}; the generator used {capacity_cpu:.2} cores",
        args.subjects,
        args.writers,
        percentile_ms(&capacity.ok_us, 0.50),
        capacity.shed_us.len(),
        capacity.failed
    );
    ensure!(
        capacity_rate > 0.0,
        "no write succeeded: {:?}",
        capacity.first_failure
    );

    // Overload: every subject offers its share of `overload` x capacity.
    let offered = capacity_rate * args.overload;
    let per_subject = offered / args.subjects as f64;
    let shared = Arc::new(OpenLoop {
        measuring: AtomicBool::new(false),
        outstanding: AtomicU64::new(0),
        not_sent: AtomicU64::new(0),
        tally: std::sync::Mutex::new(Tally::default()),
    });
    let until = Instant::now() + warmup + measure;
    let mut tasks = Vec::new();
    for writer in &writers {
        tasks.push(tokio::spawn(open_loop(
            writer.clone(),
            per_subject,
            shared.clone(),
            until,
            args.outstanding_max,
        )));
    }
    tokio::time::sleep(warmup).await;
    shared.measuring.store(true, Ordering::Relaxed);
    let started = Instant::now();
    let cpu_before = cpu_seconds();
    tokio::time::sleep(measure).await;
    shared.measuring.store(false, Ordering::Relaxed);
    let elapsed = started.elapsed().as_secs_f64();
    let overload_cpu = (cpu_seconds() - cpu_before) / elapsed;
    for task in tasks {
        task.await?;
    }
    // Let the writes still open answer before the generator goes.
    let drain = Instant::now() + Duration::from_secs(30);
    while shared.outstanding.load(Ordering::Relaxed) > 0 && Instant::now() < drain {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut overload = std::mem::take(
        &mut *shared
            .tally
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner),
    );
    overload.ok_us.sort_unstable();
    overload.shed_us.sort_unstable();
    let goodput = overload.ok_us.len() as f64 / elapsed;
    let admitted_p99 = percentile_ms(&overload.ok_us, 0.99);
    let shed = overload.shed_us.len();
    println!(
        "overload (offered {offered:.0} writes/s, {per_subject:.1} per subject): goodput {goodput:.0} writes/s = {:.3} of capacity; the generator used {overload_cpu:.2} cores",
        goodput / capacity_rate
    );
    println!(
        "  admitted: p50 {:.2} ms, p99 {admitted_p99:.2} ms = {:.2} x the p99 at capacity",
        percentile_ms(&overload.ok_us, 0.50),
        admitted_p99 / capacity_p99
    );
    println!(
        "  shed: {shed} ({:.0}/s), answered in p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms; {} with retry-after-ms",
        shed as f64 / elapsed,
        percentile_ms(&overload.shed_us, 0.50),
        percentile_ms(&overload.shed_us, 0.99),
        percentile_ms(&overload.shed_us, 1.0),
        overload.shed_with_retry_after
    );
    println!(
        "  failed otherwise: {}{}; not sent (generator bound): {}",
        overload.failed,
        overload
            .first_failure
            .map(|failure| format!(" (first: {failure})"))
            .unwrap_or_default(),
        shared.not_sent.load(Ordering::Relaxed)
    );
    Ok(())
}
