//! Failover benchmark: how long a 3-process cluster under write load takes
//! to accept writes again after its leader is SIGKILLed.
//!
//! ```sh
//! cargo build --release -p wasmraft -p wasmraft-benches
//! ./target/release/wasmraft-failover --trials 20
//! ```
//!
//! It starts three `wasmraft serve` processes on loopback (the workspace's
//! `target/release/wasmraft`, or `--wasmraft PATH`) with the default Raft
//! settings, forms the cluster with `add_node`, deploys the counter example
//! and keeps `--clients` writers incrementing it through all three nodes.
//! Each trial SIGKILLs the current leader and measures, from the moment the
//! kill returned, until the first increment *started after the kill*
//! succeeds: a probe sends one increment after another (each with a 1 s
//! attempt limit, no retries, 5 ms apart) to the survivors in turn, so the
//! figure is the time a client that keeps trying waits. The writers are not
//! timed: one stuck on the dead leader only shows its own attempt limit. The
//! killed node then restarts from its data directory and catches up before
//! the next trial.
//!
//! With `--kill-all` each trial instead SIGKILLs all three nodes at once,
//! after a random 0.2–2 s of load, and restarts them from their data
//! directories: the figure is the time until a write succeeds again, and
//! after each trial a linearizable read of the counter must hold every
//! increment acknowledged before the kill (invariant 5: an acknowledged
//! write survives any crash).
//!
//! At the end the counter must hold every acknowledged increment (it may
//! hold more: an increment can be applied after its caller gave up), and
//! all three nodes must report the same state digest at the same index. A
//! failed run keeps the nodes' logs and prints where they are.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use clap::Parser;
use wasmraft::client::{Client, ClientConfig, Consistency, DeployOptions, NodeRole};
use wasmraft::node::config::RaftSettings;

#[derive(Debug, Parser)]
#[command(about = "SIGKILL the leader of a 3-process cluster under load and time the failover")]
struct Args {
    /// The `wasmraft` binary to run (default: the release build of this workspace).
    #[arg(long)]
    wasmraft: Option<PathBuf>,
    /// How many times the leader is killed.
    #[arg(long, default_value = "20")]
    trials: usize,
    /// Writers keeping the cluster busy during the trials.
    #[arg(long, default_value = "8")]
    clients: usize,
    /// Keep the nodes' data directories and logs here instead of a
    /// temporary directory removed at the end (set `RUST_LOG` to choose
    /// what the nodes log).
    #[arg(long)]
    keep: Option<PathBuf>,
    /// Print every failed probe write (when and why), to see where a
    /// failover spends its time.
    #[arg(long)]
    verbose: bool,
    /// SIGKILL every node at once in each trial, not only the leader.
    #[arg(long)]
    kill_all: bool,
}

const INCREMENT: &[u8] = br#"{"op":"add","by":1}"#;
/// The longest any step may take before the run is declared failed.
const STEP_TIMEOUT: Duration = Duration::from_secs(60);
/// The probe's pause between a failed write and the next.
const PROBE_PAUSE: Duration = Duration::from_millis(5);
/// A restarted node counts as caught up within this many entries of the
/// others (the load keeps them moving).
const CAUGHT_UP_LAG: u64 = 64;

/// One `wasmraft serve` process and what it needs to be restarted.
struct Member {
    id: u64,
    port: u16,
    directory: PathBuf,
    log: PathBuf,
    process: Option<Child>,
}

impl Member {
    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn start(&mut self, binary: &Path, bootstrap: bool) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        // Both streams in one file, in the order written, for reading after
        // a failed run.
        let log_for_stdout = log.try_clone()?;
        let mut command = Command::new(binary);
        command
            .args(["serve", "--node-id", &self.id.to_string()])
            .args(["--listen", &format!("127.0.0.1:{}", self.port)])
            .arg("--data-dir")
            .arg(&self.directory)
            // A measure of failover, not of authentication.
            .arg("--insecure")
            .stdout(log_for_stdout)
            .stderr(log);
        if bootstrap {
            command.arg("--bootstrap");
        }
        self.process = Some(
            command
                .spawn()
                .with_context(|| format!("cannot run {}", binary.display()))?,
        );
        Ok(())
    }

    /// Fails if the process exited on its own: a node that could not bind
    /// its port (another program took it after `free_port` let it go) or
    /// crashed. Without this check the run would wait for it until
    /// `STEP_TIMEOUT`, or talk to whatever else listens on that port.
    fn ensure_running(&mut self) -> anyhow::Result<()> {
        if let Some(process) = &mut self.process
            && let Some(status) = process.try_wait()?
        {
            self.process = None;
            bail!(
                "node {} exited on its own ({status}); its log is {}",
                self.id,
                self.log.display()
            );
        }
        Ok(())
    }

    /// SIGKILL (`Child::kill` on Unix), then reap.
    fn kill(&mut self) {
        if let Some(mut process) = self.process.take() {
            let _ = process.kill();
            let _ = process.wait();
        }
    }
}

/// Kills every process when the run ends, however it ends.
struct Cluster {
    members: Vec<Member>,
}

impl Cluster {
    fn ensure_running(&mut self) -> anyhow::Result<()> {
        self.members.iter_mut().try_for_each(Member::ensure_running)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for member in &mut self.members {
            member.kill();
        }
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

async fn client(endpoint: &str, attempt: Duration, retry_for: Duration) -> anyhow::Result<Client> {
    Ok(Client::connect_with(
        endpoint,
        ClientConfig {
            connect_timeout: Duration::from_millis(500),
            request_timeout: attempt,
            retry_deadline: retry_for,
            ..ClientConfig::default()
        },
    )
    .await?)
}

/// The leader as `endpoint` sees it, and whether all three members answer
/// with applied indexes at most `lag` apart. With `lag` 0 (no load) their
/// digests must also be equal, or the run fails: the states diverged.
async fn survey(endpoint: &str, lag: u64) -> anyhow::Result<Option<(u64, bool)>> {
    let Ok(client) = client(endpoint, Duration::from_secs(2), Duration::ZERO).await else {
        return Ok(None);
    };
    let Ok(status) = client.status().await else {
        return Ok(None);
    };
    let Some(leader) = status.leader_id else {
        return Ok(None);
    };
    let indexes: Vec<u64> = status
        .nodes
        .iter()
        .filter(|node| node.error.is_none())
        .filter_map(|node| node.applied_index)
        .collect();
    let (Some(low), Some(high)) = (indexes.iter().min(), indexes.iter().max()) else {
        return Ok(None);
    };
    let close = indexes.len() == 3 && high - low <= lag;
    if close && lag == 0 {
        let first = &status.nodes[0].state_digest_hex;
        ensure!(
            status
                .nodes
                .iter()
                .all(|node| &node.state_digest_hex == first),
            "the nodes are at one index with different state digests: {status:?}"
        );
    }
    Ok(Some((leader, close)))
}

/// Waits until [`survey`] finds the members within `lag` of each other, and
/// returns the leader.
async fn settle(cluster: &mut Cluster, endpoint: &str, lag: u64) -> anyhow::Result<u64> {
    let deadline = Instant::now() + STEP_TIMEOUT;
    loop {
        cluster.ensure_running()?;
        if let Some((leader, true)) = survey(endpoint, lag).await? {
            return Ok(leader);
        }
        if Instant::now() > deadline {
            bail!(
                "the three nodes did not come within {lag} entries of each other in {STEP_TIMEOUT:?}"
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Whether node `id` reports itself the leader.
async fn leads(cluster: &Cluster, id: u64) -> bool {
    let Some(member) = cluster.members.iter().find(|member| member.id == id) else {
        return false;
    };
    let Ok(client) = client(&member.endpoint(), Duration::from_secs(2), Duration::ZERO).await
    else {
        return false;
    };
    client.local_status().await.is_ok_and(|status| {
        status
            .nodes
            .first()
            .is_some_and(|node| node.role == NodeRole::Leader)
    })
}

fn percentile(sorted: &[Duration], fraction: f64) -> Duration {
    let rank = ((sorted.len() as f64 - 1.0) * fraction).round() as usize;
    sorted[rank]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    ensure!(args.trials > 0, "--trials must be at least 1");
    let binary = args.wasmraft.clone().unwrap_or_else(|| {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release/wasmraft")
    });
    ensure!(
        binary.exists(),
        "{} does not exist: run `cargo build --release -p wasmraft` first, or give --wasmraft PATH",
        binary.display()
    );
    let temporary = tempfile::tempdir()?;
    let root = match &args.keep {
        Some(directory) => {
            std::fs::create_dir_all(directory)?;
            directory.clone()
        }
        None => temporary.path().to_path_buf(),
    };
    let outcome = run(&args, &binary, &root).await;
    if outcome.is_err() {
        // The nodes' logs say why; `run` returned, so its processes are dead.
        let kept = match args.keep {
            Some(directory) => directory,
            None => temporary.keep(),
        };
        eprintln!("node data directories and logs kept in {}", kept.display());
    }
    outcome
}

/// The benchmark itself, with the cluster's processes in `root`. Returning,
/// or unwinding, kills them.
async fn run(args: &Args, binary: &Path, root: &Path) -> anyhow::Result<()> {
    let mut cluster = Cluster {
        members: Vec::new(),
    };
    for id in 1..=3u64 {
        cluster.members.push(Member {
            id,
            port: free_port()?,
            directory: root.join(format!("node-{id}")),
            log: root.join(format!("node-{id}.log")),
            process: None,
        });
    }
    for member in &mut cluster.members {
        member.start(binary, member.id == 1)?;
    }
    let first = cluster.members[0].endpoint();
    let deadline = Instant::now() + STEP_TIMEOUT;
    while !matches!(survey(&first, 0).await, Ok(Some(_))) {
        cluster.ensure_running()?;
        ensure!(
            Instant::now() < deadline,
            "node 1 did not elect itself within {STEP_TIMEOUT:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let admin = client(&first, STEP_TIMEOUT, STEP_TIMEOUT).await?;
    for member in &cluster.members[1..] {
        admin
            .add_node(
                member.id,
                &format!("127.0.0.1:{}", member.port),
                STEP_TIMEOUT,
            )
            .await
            .with_context(|| format!("adding node {}", member.id))?;
    }
    admin
        .deploy(
            "counter",
            wasmraft_examples::COUNTER_WASM,
            DeployOptions::default(),
        )
        .await?;

    // Writers: each holds a client per node and moves on to the next node
    // when a call fails, as an application with a list of endpoints does.
    let endpoints: Vec<String> = cluster.members.iter().map(Member::endpoint).collect();
    let acknowledged = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for writer in 0..args.clients {
        let mut clients = Vec::new();
        for endpoint in &endpoints {
            clients.push(client(endpoint, Duration::from_secs(1), Duration::from_secs(2)).await?);
        }
        let (acknowledged, stop) = (acknowledged.clone(), stop.clone());
        writers.push(tokio::spawn(async move {
            let mut next = writer % clients.len();
            while !stop.load(Ordering::Relaxed) {
                match clients[next].invoke("counter", INCREMENT).await {
                    Ok(_) => {
                        acknowledged.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(_) => next = (next + 1) % clients.len(),
                }
            }
        }));
    }

    let settings = RaftSettings::default();
    println!(
        "3 processes, {} writers; heartbeat {} ms, election timeout {}-{} ms (defaults)",
        args.clients,
        settings.heartbeat_interval_ms,
        settings.election_timeout_ms_min,
        settings.election_timeout_ms_max
    );
    let mut failovers = Vec::with_capacity(args.trials);
    let mut probe_acknowledged = 0u64;
    // The moments of the kills: a small generator seeded by the clock, so
    // that runs differ.
    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_nanos() as u64
        | 1;
    for trial in 1..=args.trials {
        if args.kill_all {
            settle(&mut cluster, &endpoints[trial % 3], CAUGHT_UP_LAG).await?;
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let load = Duration::from_millis(200 + seed % 1800);
            tokio::time::sleep(load).await;
            let acknowledged_before = acknowledged.load(Ordering::Relaxed) + probe_acknowledged;
            for member in &mut cluster.members {
                member.kill();
            }
            let killed = Instant::now();
            for member in &mut cluster.members {
                member.start(binary, false)?;
            }
            let mut probes = Vec::new();
            for endpoint in &endpoints {
                probes.push(client(endpoint, Duration::from_secs(1), Duration::ZERO).await?);
            }
            let mut attempt = 0usize;
            let resumed = loop {
                cluster.ensure_running()?;
                let probe = &probes[attempt % probes.len()];
                attempt += 1;
                if probe.invoke("counter", INCREMENT).await.is_ok() {
                    probe_acknowledged += 1;
                    break killed.elapsed();
                }
                tokio::time::sleep(PROBE_PAUSE).await;
                if killed.elapsed() > STEP_TIMEOUT {
                    bail!(
                        "trial {trial}: no write succeeded within {STEP_TIMEOUT:?} of the restart"
                    );
                }
            };
            let reader = client(&endpoints[0], STEP_TIMEOUT, STEP_TIMEOUT).await?;
            let output = reader
                .query("counter", br#"{"op":"get"}"#, Consistency::Linearizable)
                .await?
                .output;
            let value: serde_json::Value = serde_json::from_slice(&output)?;
            let value = value["value"].as_u64().context("the counter's answer")?;
            ensure!(
                value >= acknowledged_before,
                "trial {trial}: acknowledged increments were lost in the crash: the counter holds {value} of {acknowledged_before}"
            );
            println!(
                "trial {trial:>3}: killed all 3 after {:>5} ms of load; writes resumed after {:>7.1} ms; counter {value} >= {acknowledged_before} acknowledged before the kill",
                load.as_millis(),
                resumed.as_secs_f64() * 1000.0
            );
            failovers.push(resumed);
            continue;
        }
        // Let the load run on the settled cluster for a moment, then check
        // with the leader itself that it still leads: the kill must hit the
        // leader, or the trial measures nothing.
        let mut leader = settle(&mut cluster, &endpoints[trial % 3], CAUGHT_UP_LAG).await?;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let deadline = Instant::now() + STEP_TIMEOUT;
        while !leads(&cluster, leader).await {
            ensure!(
                Instant::now() < deadline,
                "trial {trial}: no node kept the leadership for {STEP_TIMEOUT:?}"
            );
            leader = settle(&mut cluster, &endpoints[trial % 3], CAUGHT_UP_LAG).await?;
        }
        let index = cluster
            .members
            .iter()
            .position(|member| member.id == leader)
            .context("the leader is not one of the processes")?;
        let survivors: Vec<String> = cluster
            .members
            .iter()
            .filter(|member| member.id != leader)
            .map(Member::endpoint)
            .collect();
        let mut probes = Vec::new();
        for endpoint in &survivors {
            probes.push(client(endpoint, Duration::from_secs(1), Duration::ZERO).await?);
        }
        cluster.members[index].kill();
        let killed = Instant::now();
        let mut attempt = 0usize;
        let failover = loop {
            let probe = &probes[attempt % probes.len()];
            attempt += 1;
            match probe.invoke("counter", INCREMENT).await {
                Ok(_) => {
                    probe_acknowledged += 1;
                    break killed.elapsed();
                }
                Err(error) => {
                    if args.verbose {
                        println!(
                            "    {:>7.1} ms  {}: {error}",
                            killed.elapsed().as_secs_f64() * 1000.0,
                            probe.endpoint()
                        );
                    }
                    // A client that retries does not spin: the measurement's
                    // resolution, and no storm on the survivors.
                    tokio::time::sleep(PROBE_PAUSE).await;
                }
            }
            if killed.elapsed() > STEP_TIMEOUT {
                bail!("trial {trial}: no write succeeded within {STEP_TIMEOUT:?} of the kill");
            }
        };
        println!(
            "trial {trial:>3}: killed leader {leader}, writes resumed after {:>7.1} ms",
            failover.as_secs_f64() * 1000.0
        );
        failovers.push(failover);
        cluster.members[index].start(binary, false)?;
    }

    stop.store(true, Ordering::Relaxed);
    for writer in writers {
        writer.await?;
    }
    settle(&mut cluster, &endpoints[0], 0).await?;
    let output = admin
        .query("counter", br#"{"op":"get"}"#, Consistency::Linearizable)
        .await?
        .output;
    let value: serde_json::Value = serde_json::from_slice(&output)?;
    let value = value["value"].as_u64().context("the counter's answer")?;
    let acknowledged = acknowledged.load(Ordering::Relaxed) + probe_acknowledged;

    failovers.sort_unstable();
    let ms = |duration: Duration| duration.as_secs_f64() * 1000.0;
    println!(
        "\n{} trials: median {:.1} ms, p90 {:.1} ms, max {:.1} ms, min {:.1} ms",
        failovers.len(),
        ms(percentile(&failovers, 0.5)),
        ms(percentile(&failovers, 0.9)),
        ms(percentile(&failovers, 1.0)),
        ms(failovers[0]),
    );
    println!(
        "counter {value}, acknowledged increments {acknowledged}; all three nodes converged (same index and digest)"
    );
    ensure!(
        value >= acknowledged,
        "acknowledged increments were lost: the counter holds {value} of {acknowledged}"
    );
    Ok(())
}
