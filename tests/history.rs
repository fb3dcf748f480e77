//! Checked histories: concurrent clients run puts, deletes, compare-and-swaps
//! and linearizable reads against a three-node cluster while faults are
//! injected, every call and return is recorded, and the history is checked
//! for linearizability (`checker`). Two clusters: nodes in this process
//! (partitions and slow links from the network seam, a follower and the
//! leader stopped and restarted) and real processes (the leader and a
//! follower SIGKILLed and restarted, a follower and the leader paused with
//! SIGSTOP); on both, calls are now and then cut off mid-way, as a killed
//! client would. The bank example runs beside them under the same faults
//! (`bank`): no money is made or lost and every payment is applied exactly
//! once.

mod bank;
mod checker;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use checker::{Input, Operation, Output};
use wasmraft::client::{Client, ClientConfig, ClientError, Consistency, DeployOptions};

use crate::cluster::harness::Cluster;
use crate::cluster::processes::{self, ProcessNode};

const KEYS: [&str; 3] = ["a", "b", "c"];
/// Clients of the bank example, beside the kv ones.
const BANK_CLIENTS: usize = 3;

/// The shared record of a run.
struct Recorder {
    start: Instant,
    operations: Mutex<Vec<Operation>>,
    /// How many operations got an answer: the faults are paced by traffic.
    answered: tokio::sync::watch::Sender<usize>,
}

impl Recorder {
    fn now(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    fn record(&self, operation: Operation) {
        let answered = operation.returned.is_some();
        self.operations.lock().unwrap().push(operation);
        if answered {
            self.answered.send_modify(|count| *count += 1);
        }
    }

    /// Waits until `more` operations got an answer after this call.
    async fn traffic(&self, more: usize, during: &str) {
        let target = *self.answered.borrow() + more;
        let mut answered = self.answered.subscribe();
        tokio::time::timeout(
            Duration::from_secs(120),
            answered.wait_for(|count| *count >= target),
        )
        .await
        .unwrap_or_else(|_| panic!("no traffic got through {during}"))
        .unwrap();
    }
}

/// A small deterministic generator, so a failing run can be read again.
struct Random(u64);

impl Random {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, bound: u64) -> u64 {
        self.next() % bound
    }
}

fn json_value(value: &serde_json::Value) -> Option<String> {
    value.as_str().map(str::to_owned)
}

/// The kv example's command for `input` on `key`.
fn command(key: &str, input: &Input) -> serde_json::Value {
    match input {
        Input::Put(value) => serde_json::json!({"op": "put", "key": key, "value": value}),
        Input::Delete => serde_json::json!({"op": "delete", "key": key}),
        Input::Cas { expected, value } => {
            serde_json::json!({"op": "cas", "key": key, "expected": expected, "value": value})
        }
        Input::Get => serde_json::json!({"op": "get", "key": key}),
    }
}

/// What the kv example answered, as the model's output.
fn output(input: &Input, bytes: &[u8]) -> Output {
    let answer: serde_json::Value = serde_json::from_slice(bytes).expect("kv answers JSON");
    match input {
        Input::Get => Output::Value(json_value(&answer["value"])),
        Input::Put(_) | Input::Delete => Output::Previous(json_value(&answer["previous"])),
        Input::Cas { .. } => Output::Cas {
            ok: answer["ok"].as_bool().expect("cas answers ok"),
            current: json_value(&answer["current"]),
        },
    }
}

/// One client: random operations on random nodes until `stop`.
async fn client_loop(
    number: usize,
    clients: Vec<Client>,
    recorder: Arc<Recorder>,
    stop: Arc<AtomicBool>,
) {
    let mut random = Random(0x9e37_79b9_7f4a_7c15 ^ ((number as u64 + 1) * 0x1234_5678_9abc));
    let mut written = 0u64;
    let mut last_seen: Option<String> = None;
    while !stop.load(Ordering::Relaxed) {
        let key = KEYS[random.below(KEYS.len() as u64) as usize];
        let input = match random.below(10) {
            0..=3 => Input::Get,
            4..=6 => {
                written += 1;
                Input::Put(format!("{number}-{written}"))
            }
            7 => Input::Delete,
            _ => {
                written += 1;
                Input::Cas {
                    expected: last_seen.clone(),
                    value: format!("{number}-{written}"),
                }
            }
        };
        let client = &clients[random.below(clients.len() as u64) as usize];
        // Now and then the caller gives up mid-call, as a killed client would.
        let cut_off = (random.below(20) == 0).then(|| Duration::from_millis(1 + random.below(30)));
        let body = command(key, &input).to_string();
        let call = recorder.now();
        let attempt = async {
            match &input {
                Input::Get => client
                    .query("kv", body.as_bytes(), Consistency::Linearizable)
                    .await
                    .map(|answer| answer.output),
                _ => client
                    .invoke("kv", body.as_bytes())
                    .await
                    .map(|answer| answer.output),
            }
        };
        let result = match cut_off {
            Some(after) => tokio::time::timeout(after, attempt).await.ok(),
            None => Some(attempt.await),
        };
        let returned = recorder.now();
        let operation = |returned| Operation {
            client: number,
            key: key.to_owned(),
            input: input.clone(),
            call,
            returned,
        };
        match result {
            Some(Ok(bytes)) => {
                let output = output(&input, &bytes);
                last_seen = match &output {
                    Output::Value(value) => value.clone(),
                    Output::Cas { current, .. } => current.clone(),
                    Output::Previous(_) => last_seen.clone(),
                };
                recorder.record(operation(Some((returned, output))));
            }
            // A read changes nothing: a failed one is left out.
            Some(Err(_)) if input == Input::Get => {}
            // The client says nothing was sent.
            Some(Err(ClientError::Unreachable { .. })) => {}
            // Anything else may or may not have been applied.
            Some(Err(_)) | None => {
                if input != Input::Get {
                    recorder.record(operation(None));
                }
            }
        }
    }
}

/// Clients of `endpoints` with short timeouts, so that faults leave
/// outcomes unknown rather than stall the run.
async fn clients(endpoints: &[String]) -> Vec<Client> {
    let mut clients = Vec::new();
    for endpoint in endpoints {
        clients.push(
            Client::connect_with(
                endpoint,
                ClientConfig {
                    request_timeout: Duration::from_secs(3),
                    retry_deadline: Duration::from_secs(6),
                    retry_unreachable: false,
                    ..ClientConfig::default()
                },
            )
            .await
            .unwrap(),
        );
    }
    clients
}

/// A three-node cluster a run injects faults into.
trait Faulty {
    /// Every node's endpoint.
    fn endpoints(&self) -> Vec<String>;
    /// A client of the leader, once there is one.
    async fn leader_client(&self) -> Client;
    /// One round of every fault, paced by the traffic `recorder` sees.
    async fn fault_cycle(&mut self, recorder: &Recorder);
    /// Waits until every node applied the same log to the same state.
    async fn converge(&self);
    async fn shutdown(self);
}

/// Nodes in this process, faults from the network seam and stops.
impl Faulty for Cluster {
    fn endpoints(&self) -> Vec<String> {
        self.running()
            .into_iter()
            .map(|id| format!("http://{}", self.address(id)))
            .collect()
    }

    async fn leader_client(&self) -> Client {
        self.client_of(self.wait_for_leader().await).await
    }

    async fn fault_cycle(&mut self, recorder: &Recorder) {
        seam_fault_cycle(self, recorder).await;
    }

    async fn converge(&self) {
        self.assert_converged().await;
    }

    async fn shutdown(self) {
        Cluster::shutdown(self).await;
    }
}

/// One round of every fault of the in-process cluster, each lasting for
/// some answered operations, with traffic before and after.
async fn seam_fault_cycle(cluster: &mut Cluster, recorder: &Recorder) {
    recorder.traffic(40, "before the faults").await;
    let leader = cluster.wait_for_leader().await;
    let others: Vec<_> = cluster
        .running()
        .into_iter()
        .filter(|id| *id != leader)
        .collect();
    cluster.links.isolate(leader, others.clone());
    recorder.traffic(30, "the leader's isolation").await;
    cluster.links.heal();
    recorder.traffic(20, "the healed partition").await;
    let leader = cluster.wait_for_leader().await;
    let follower = cluster
        .running()
        .into_iter()
        .find(|id| *id != leader)
        .unwrap();
    cluster
        .links
        .slow_down(leader, follower, Duration::from_millis(20));
    cluster
        .links
        .slow_down(follower, leader, Duration::from_millis(20));
    recorder.traffic(30, "a slow link").await;
    cluster.links.heal();
    cluster.stop(follower).await;
    recorder.traffic(30, "a follower down").await;
    cluster.launch(follower, false).await;
    recorder.traffic(20, "the follower's restart").await;
    let leader = cluster.wait_for_leader().await;
    cluster.stop(leader).await;
    recorder.traffic(30, "the leader down").await;
    cluster.launch(leader, false).await;
    recorder.traffic(30, "after the faults").await;
}

/// Nodes as real `wasmraft serve` processes, SIGKILLed and SIGSTOPped.
struct Processes {
    nodes: Vec<ProcessNode>,
    /// Holds the nodes' directories.
    _root: tempfile::TempDir,
}

impl Processes {
    async fn start() -> Processes {
        let root = tempfile::TempDir::new().unwrap();
        let nodes = processes::start_nodes(root.path());
        processes::form(&nodes).await;
        Processes { nodes, _root: root }
    }

    /// The index of the leader, as a running, unpaused node sees it.
    async fn leader(&self, among: &[usize]) -> usize {
        processes::leader_among(&self.nodes, among).await
    }
}

impl Faulty for Processes {
    fn endpoints(&self) -> Vec<String> {
        self.nodes.iter().map(ProcessNode::endpoint).collect()
    }

    async fn leader_client(&self) -> Client {
        let leader = self.leader(&[0, 1, 2]).await;
        processes::client(&self.nodes[leader].endpoint()).await
    }

    async fn fault_cycle(&mut self, recorder: &Recorder) {
        let all = [0, 1, 2];
        recorder.traffic(40, "before the faults").await;
        let leader = self.leader(&all).await;
        self.nodes[leader].kill();
        recorder.traffic(30, "the leader SIGKILLed").await;
        self.nodes[leader].start(false);
        recorder.traffic(20, "the leader's restart").await;
        let leader = self.leader(&all).await;
        let follower = (leader + 1) % 3;
        self.nodes[follower].pause();
        recorder.traffic(30, "a follower paused").await;
        self.nodes[follower].resume();
        recorder.traffic(20, "the follower resumed").await;
        // A paused leader: the others elect another, and the old one
        // wakes up believing it still leads.
        let leader = self.leader(&all).await;
        self.nodes[leader].pause();
        let others: Vec<_> = all.into_iter().filter(|index| *index != leader).collect();
        self.leader(&others).await;
        recorder.traffic(30, "the leader paused").await;
        self.nodes[leader].resume();
        recorder.traffic(20, "the old leader resumed").await;
        let leader = self.leader(&all).await;
        let follower = (leader + 2) % 3;
        self.nodes[follower].kill();
        recorder.traffic(30, "a follower SIGKILLed").await;
        self.nodes[follower].start(false);
        recorder.traffic(30, "after the faults").await;
    }

    async fn converge(&self) {
        processes::wait_converged(&self.nodes[0].endpoint(), 3).await;
    }

    async fn shutdown(self) {}
}

/// A run with one round of faults, or as many as fit in `soak`.
async fn run(mut cluster: impl Faulty, soak: Option<Duration>) {
    let started = Instant::now();
    let leader = cluster.leader_client().await;
    for (name, wasm) in [
        ("kv", wasmraft_examples::KV_WASM),
        ("bank", wasmraft_examples::BANK_WASM),
    ] {
        leader
            .deploy(name, wasm, DeployOptions::default())
            .await
            .unwrap_or_else(|error| panic!("{name} deploys: {error}"));
    }
    bank::open_accounts(&leader, BANK_CLIENTS).await;
    let recorder = Arc::new(Recorder {
        start: Instant::now(),
        operations: Mutex::new(Vec::new()),
        answered: tokio::sync::watch::Sender::new(0),
    });
    let stop = Arc::new(AtomicBool::new(false));
    let nodes = clients(&cluster.endpoints()).await;
    let workers: Vec<_> = (0..6)
        .map(|number| {
            tokio::spawn(client_loop(
                number,
                nodes.clone(),
                Arc::clone(&recorder),
                Arc::clone(&stop),
            ))
        })
        .collect();
    let ledger = Arc::new(bank::Ledger::default());
    let bank_workers: Vec<_> = (0..BANK_CLIENTS)
        .map(|number| {
            tokio::spawn(bank::client_loop(
                number,
                nodes.clone(),
                Arc::clone(&ledger),
                Arc::clone(&stop),
            ))
        })
        .collect();

    let mut cycles = 0;
    loop {
        cluster.fault_cycle(&recorder).await;
        cycles += 1;
        if soak.is_none_or(|soak| started.elapsed() >= soak) {
            break;
        }
    }
    stop.store(true, Ordering::Relaxed);
    for worker in workers.into_iter().chain(bank_workers) {
        worker.await.unwrap();
    }
    cluster.converge().await;
    eprintln!(
        "fault rounds: {cycles} in {} s",
        started.elapsed().as_secs()
    );
    eprintln!(
        "{}",
        bank::check(&cluster.leader_client().await, &ledger, BANK_CLIENTS).await
    );
    let history = recorder.operations.lock().unwrap().clone();
    let known = history.iter().filter(|op| op.returned.is_some()).count();
    let writes = history
        .iter()
        .filter(|op| op.returned.is_some() && op.input != Input::Get)
        .count();
    assert!(
        writes >= 20,
        "too little traffic to check: {writes} writes answered of {} operations",
        history.len()
    );
    match checker::check(&history) {
        Ok(effort) => eprintln!(
            "linearizable: {} operations ({known} answered, {} unknown) on {} keys, {} states visited",
            effort.operations,
            history.len() - known,
            effort.keys,
            effort.states_visited
        ),
        Err(violation) => panic!(
            "not linearizable on key {:?}:\n{:#?}",
            violation.key, violation.operations
        ),
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kv_histories_under_faults_are_linearizable() {
    run(Cluster::start(3).await, None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn histories_of_processes_sigkilled_and_paused_are_linearizable() {
    run(Processes::start().await, None).await;
}

/// The soak time asked for in `WASMRAFT_SOAK_MINUTES` (10 by default).
fn soak_time() -> Duration {
    let minutes = std::env::var("WASMRAFT_SOAK_MINUTES")
        .ok()
        .map_or(10, |minutes| {
            minutes.parse::<u64>().expect("minutes as a whole number")
        });
    Duration::from_secs(minutes * 60)
}

/// The long version: fault rounds for `WASMRAFT_SOAK_MINUTES`, one history
/// checked at the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "a soak of several minutes; run by hand (README, Proof under faults)"]
async fn soak() {
    run(Cluster::start(3).await, Some(soak_time())).await;
}

/// The long version over real processes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "a soak of several minutes; run by hand (README, Proof under faults)"]
async fn soak_processes() {
    run(Processes::start().await, Some(soak_time())).await;
}
