//! One tenant floods a node with fuel-heavy queries while another writes at
//! a steady pace: does the writer keep its rate and its latency? Runs the
//! writer alone first, then under the flood, and prints both.
//!
//! Needs a node that authenticates (the two tenants are two subjects) and
//! an administrator's token, e.g. `serve --dev --auth` and its admin.token.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use tonic::Code;
use tonic::metadata::MetadataValue;
use tonic::transport::{Channel, Endpoint};
use wasmraft::client::{Client, ClientConfig, DeployOptions, RoleBinding};
use wasmraft_proto::v1 as proto;
use wasmraft_proto::v1::state_machine_client::StateMachineClient;

#[derive(Debug, Parser)]
#[command(about = "A query flood from one subject against a steady writer from another")]
struct Args {
    #[arg(
        long,
        env = "WASMRAFT_ENDPOINT",
        default_value = "http://127.0.0.1:7070"
    )]
    endpoint: String,
    /// An administrator's token (`serve --dev --auth` writes admin.token).
    #[arg(long, env = "WASMRAFT_TOKEN", hide_env_values = true)]
    token: String,
    /// Concurrent flooding queries, each sent again as soon as it returns.
    #[arg(long, default_value = "256")]
    flooders: usize,
    /// Loop iterations of one flooding query (8 instructions, so 8 units
    /// of fuel each: the default burns about 48 million of the 50 million
    /// a call may by default).
    #[arg(long, default_value = "6000000")]
    iterations: u32,
    /// The writer's pace.
    #[arg(long, default_value = "10")]
    writes_per_second: u64,
    /// How long the writer writes in each phase.
    #[arg(long, default_value = "10")]
    seconds: u64,
}

/// A module whose query loops as many times as its 4-byte input says,
/// then answers; its apply does nothing. Written by hand to the ABI of
/// `guest-sdk/ABI.md`.
const BURN: &str = r#"(module
  (import "wasmraft" "output" (func $output (param i32 i32)))
  (memory (export "memory") 1)
  (func (export "wasmraft_abi_version_1"))
  (func (export "wasmraft_alloc") (param i32) (result i32) (i32.const 1024))
  (func (export "apply") (param i32 i32) (result i32) (i32.const 0))
  (func (export "query") (param $ptr i32) (param $len i32) (result i32)
    (local $left i32)
    (local.set $left (i32.load (local.get $ptr)))
    (block $done
      (loop $burn
        (br_if $done (i32.eqz (local.get $left)))
        (local.set $left (i32.sub (local.get $left) (i32.const 1)))
        (br $burn)))
    (call $output (local.get $ptr) (i32.const 4))
    (i32.const 0)))"#;

fn bearer<T>(message: T, token: &str, timeout: Duration) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(timeout);
    let value = MetadataValue::try_from(format!("Bearer {token}")).expect("a token is ASCII");
    request.metadata_mut().insert("authorization", value);
    request
}

#[derive(Default)]
struct FloodTally {
    answered: AtomicU64,
    shed: AtomicU64,
    failed: AtomicU64,
}

/// Sends flooding queries back to back until `stop`; a refusal is
/// counted and the query sent again at once, as a hostile client would.
async fn flood(
    channel: Channel,
    token: String,
    iterations: u32,
    stop: Arc<AtomicBool>,
    tally: Arc<FloodTally>,
) {
    let mut client = StateMachineClient::new(channel);
    while !stop.load(Ordering::Relaxed) {
        let request = proto::QueryRequest {
            module: "burn".to_owned(),
            input: iterations.to_le_bytes().to_vec(),
            consistency: proto::Consistency::Stale as i32,
        };
        match client
            .query(bearer(request, &token, Duration::from_secs(30)))
            .await
        {
            Ok(_) => tally.answered.fetch_add(1, Ordering::Relaxed),
            // Turned away by admission (which says when to retry), not a
            // query that ran out of fuel.
            Err(status)
                if status.code() == Code::ResourceExhausted
                    && status.metadata().contains_key("retry-after-ms") =>
            {
                tally.shed.fetch_add(1, Ordering::Relaxed)
            }
            Err(_) => tally.failed.fetch_add(1, Ordering::Relaxed),
        };
    }
}

struct WriterReport {
    sent: u64,
    ok: u64,
    latencies_us: Vec<u64>,
    first_error: Option<String>,
}

/// Writes the counter at `per_second` for `seconds`, each write on its
/// own schedule (an open loop: a slow write does not delay the next).
async fn write_steadily(
    channel: &Channel,
    token: &str,
    per_second: u64,
    seconds: u64,
) -> WriterReport {
    let interval = Duration::from_micros(1_000_000 / per_second.max(1));
    let mut ticker = tokio::time::interval(interval);
    let mut writes = Vec::new();
    for _ in 0..per_second * seconds {
        ticker.tick().await;
        let mut client = StateMachineClient::new(channel.clone());
        let token = token.to_owned();
        writes.push(tokio::spawn(async move {
            let started = Instant::now();
            let request = proto::InvokeRequest {
                module: "counter".to_owned(),
                input: br#"{"op":"add","by":1}"#.to_vec(),
                ..Default::default()
            };
            let outcome = client
                .invoke(bearer(request, &token, Duration::from_secs(10)))
                .await;
            (started.elapsed(), outcome.map(drop))
        }));
    }
    let mut report = WriterReport {
        sent: writes.len() as u64,
        ok: 0,
        latencies_us: Vec::new(),
        first_error: None,
    };
    for write in writes {
        match write.await.expect("a write task does not panic") {
            (elapsed, Ok(())) => {
                report.ok += 1;
                report.latencies_us.push(elapsed.as_micros() as u64);
            }
            (_, Err(status)) => {
                report
                    .first_error
                    .get_or_insert_with(|| format!("{:?}: {}", status.code(), status.message()));
            }
        }
    }
    report.latencies_us.sort_unstable();
    report
}

fn percentile_ms(sorted_us: &[u64], fraction: f64) -> f64 {
    if sorted_us.is_empty() {
        return f64::NAN;
    }
    let rank = ((sorted_us.len() as f64 * fraction).ceil() as usize).clamp(1, sorted_us.len());
    sorted_us[rank - 1] as f64 / 1000.0
}

fn print_row(phase: &str, report: &WriterReport, flood: Option<(&FloodTally, Duration)>) {
    let kept = report.ok as f64 / report.sent.max(1) as f64 * 100.0;
    let flood = flood.map_or_else(String::new, |(tally, elapsed)| {
        let seconds = elapsed.as_secs_f64();
        format!(
            "{:>10.0} {:>10.0} {:>8}",
            tally.answered.load(Ordering::Relaxed) as f64 / seconds,
            tally.shed.load(Ordering::Relaxed) as f64 / seconds,
            tally.failed.load(Ordering::Relaxed)
        )
    });
    println!(
        "{phase:<8} {:>6}/{:<6} {:>6.1}% {:>9.2} {:>9.2} {:>9.2} {flood}",
        report.ok,
        report.sent,
        kept,
        percentile_ms(&report.latencies_us, 0.50),
        percentile_ms(&report.latencies_us, 0.99),
        percentile_ms(&report.latencies_us, 1.0),
    );
    if let Some(error) = &report.first_error {
        println!("         first writer error: {error}");
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let admin = Client::connect_with(
        &args.endpoint,
        ClientConfig {
            bearer_token: Some(args.token.clone()),
            ..ClientConfig::default()
        },
    )
    .await
    .with_context(|| format!("cannot reach {}", args.endpoint))?;
    let burn = wat::parse_str(BURN).context("the burn module's text")?;
    admin
        .deploy("burn", &burn, DeployOptions::default())
        .await
        .context("deploy the burn module")?;
    if admin.get_module("counter").await.is_err() {
        admin
            .deploy(
                "counter",
                wasmraft_examples::COUNTER_WASM,
                DeployOptions::default(),
            )
            .await
            .context("deploy the counter example")?;
    }
    let mut tokens = Vec::new();
    for (subject, role, module) in [
        ("flooder", "module_querier", "burn"),
        ("writer", "module_invoker", "counter"),
    ] {
        admin
            .grant(&RoleBinding::new(subject, role, Some(module))?)
            .await?;
        tokens.push(admin.create_token(subject).await?.token);
    }
    let (flooder, writer) = (tokens[0].clone(), tokens[1].clone());
    let endpoint = Endpoint::from_shared(args.endpoint.clone())?;
    // The writer on a connection of its own, the flood on four.
    let writer_channel = endpoint.connect().await?;
    let mut flood_channels = Vec::new();
    for _ in 0..4 {
        flood_channels.push(endpoint.connect().await?);
    }

    println!(
        "writer: {} writes/s for {} s; flood: {} concurrent queries of {} iterations",
        args.writes_per_second, args.seconds, args.flooders, args.iterations
    );
    println!(
        "{:<8} {:>13} {:>7} {:>9} {:>9} {:>9} {:>10} {:>10} {:>8}",
        "phase", "writes ok", "kept", "p50 ms", "p99 ms", "max ms", "queries/s", "shed/s", "failed"
    );
    let alone = write_steadily(
        &writer_channel,
        &writer,
        args.writes_per_second,
        args.seconds,
    )
    .await;
    print_row("alone", &alone, None);

    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(FloodTally::default());
    let mut flooders = Vec::new();
    for index in 0..args.flooders {
        flooders.push(tokio::spawn(flood(
            flood_channels[index % flood_channels.len()].clone(),
            flooder.clone(),
            args.iterations,
            stop.clone(),
            tally.clone(),
        )));
    }
    // Let the flood fill every queue before the writer starts.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let flood_started = Instant::now();
    let before = (
        tally.answered.load(Ordering::Relaxed),
        tally.shed.load(Ordering::Relaxed),
        tally.failed.load(Ordering::Relaxed),
    );
    let flooded = write_steadily(
        &writer_channel,
        &writer,
        args.writes_per_second,
        args.seconds,
    )
    .await;
    let during = FloodTally {
        answered: AtomicU64::new(tally.answered.load(Ordering::Relaxed) - before.0),
        shed: AtomicU64::new(tally.shed.load(Ordering::Relaxed) - before.1),
        failed: AtomicU64::new(tally.failed.load(Ordering::Relaxed) - before.2),
    };
    print_row(
        "flooded",
        &flooded,
        Some((&during, flood_started.elapsed())),
    );
    stop.store(true, Ordering::Relaxed);
    for flooder in flooders {
        flooder.await?;
    }
    Ok(())
}
