//! Real nodes on loopback ports, over real gRPC: the three examples driven
//! through their protocols and found intact after a restart, a duplicate
//! command applied once, and every hostile module of the runtime's tables
//! refused or failed with its documented code while the node keeps serving.

use std::path::Path;
use std::time::Duration;

use sha2::{Digest, Sha256};
use tempfile::TempDir;
use tonic::Code;
use wasmraft::node::config::NodeConfig;
use wasmraft::node::{Node, NodeOptions, RunningNode};
use wasmraft::wasm::{EntryPoint, Outcome};
use wasmraft_proto::v1 as proto;
use wasmraft_proto::v1::cluster_client::ClusterClient;
use wasmraft_proto::v1::deploy_chunk::Content;
use wasmraft_proto::v1::modules_client::ModulesClient;
use wasmraft_proto::v1::state_machine_client::StateMachineClient;

use crate::wasm::{Rejection, call_rows, guest, validation_rows};

async fn start(directory: &Path) -> RunningNode {
    start_with(directory, Default::default()).await
}

async fn start_with(
    directory: &Path,
    telemetry: wasmraft::node::config::TelemetrySettings,
) -> RunningNode {
    let config = NodeConfig {
        node_id: 1,
        listen: "127.0.0.1:0".parse().unwrap(),
        advertise: None,
        data_dir: directory.to_path_buf(),
        bootstrap: true,
        cluster_secret_file: None,
        insecure: true,
        tls: Default::default(),
        raft: Default::default(),
        limits: Default::default(),
        membership: Default::default(),
        cluster: Default::default(),
        telemetry,
    };
    let node = Node::start(config, NodeOptions::default())
        .await
        .expect("the node starts");
    node.handle()
        .wait_for_leader(Duration::from_secs(10))
        .await
        .expect("a single node elects itself");
    node
}

/// A node started in `directory` with the counter example deployed, and
/// its API.
async fn counter_node(directory: &Path) -> (RunningNode, Api) {
    let node = start(directory).await;
    let mut api = Api::connect(&node).await;
    api.deploy("counter", wasmraft_examples::COUNTER_WASM, (None, None))
        .await
        .unwrap();
    (node, api)
}

struct Api {
    modules: ModulesClient<tonic::transport::Channel>,
    machine: StateMachineClient<tonic::transport::Channel>,
    cluster: ClusterClient<tonic::transport::Channel>,
}

impl Api {
    async fn connect(node: &RunningNode) -> Api {
        let channel = tonic::transport::Endpoint::from_shared(node.endpoint())
            .unwrap()
            .connect()
            .await
            .unwrap();
        Api {
            modules: ModulesClient::new(channel.clone()).max_decoding_message_size(16 << 20),
            machine: StateMachineClient::new(channel.clone()),
            cluster: ClusterClient::new(channel),
        }
    }

    async fn deploy(
        &mut self,
        name: &str,
        wasm: &[u8],
        limits: (Option<u64>, Option<u64>),
    ) -> Result<proto::Module, tonic::Status> {
        let mut chunks = vec![proto::DeployChunk {
            content: Some(Content::Header(proto::DeployHeader {
                name: name.into(),
                sha256_hex: hex::encode(Sha256::digest(wasm)),
                size_bytes: wasm.len() as u64,
                fuel_per_call_max: limits.0,
                memory_bytes_max: limits.1,
                ..Default::default()
            })),
        }];
        chunks.extend(wasm.chunks(64 * 1024).map(|piece| proto::DeployChunk {
            content: Some(Content::Data(piece.to_vec())),
        }));
        let response = self.modules.deploy(futures::stream::iter(chunks)).await?;
        Ok(response
            .into_inner()
            .module
            .expect("a deployed module is described"))
    }

    async fn invoke(
        &mut self,
        module: &str,
        input: &str,
        session: Option<(&str, u64)>,
    ) -> Result<String, tonic::Status> {
        let (client_id, sequence) = session.unwrap_or(("", 0));
        let response = self
            .machine
            .invoke(proto::InvokeRequest {
                module: module.into(),
                input: input.as_bytes().to_vec(),
                client_id: client_id.into(),
                sequence,
            })
            .await?;
        Ok(String::from_utf8(response.into_inner().output).unwrap())
    }

    async fn query(
        &mut self,
        module: &str,
        input: &str,
        consistency: proto::Consistency,
    ) -> Result<String, tonic::Status> {
        let response = self
            .machine
            .query(proto::QueryRequest {
                module: module.into(),
                input: input.as_bytes().to_vec(),
                consistency: consistency as i32,
            })
            .await?;
        Ok(String::from_utf8(response.into_inner().output).unwrap())
    }

    async fn digest(&mut self) -> (u64, String) {
        let status = self
            .cluster
            .status(proto::StatusRequest { local_only: true })
            .await
            .unwrap()
            .into_inner();
        let node = &status.nodes[0];
        (
            node.applied_index.unwrap_or(0),
            node.state_digest_hex.clone(),
        )
    }
}

/// A module, its input and the answer: output, or code and message fragment.
type Row = (
    &'static str,
    &'static str,
    Result<&'static str, (Code, &'static str)>,
);

fn linearizable() -> proto::Consistency {
    proto::Consistency::Linearizable
}

/// Drives each example through its documented protocol; every row is one
/// request and the exact answer expected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn examples_over_grpc_survive_a_restart() {
    let directory = TempDir::new().unwrap();
    let node = start(directory.path()).await;
    let mut api = Api::connect(&node).await;
    for (name, wasm) in wasmraft_examples::ALL {
        let module = api.deploy(name, wasm, (None, None)).await.unwrap();
        assert_eq!((module.name.as_str(), module.version), (*name, 1));
        assert_eq!(module.sha256_hex, hex::encode(Sha256::digest(wasm)));
    }

    let invokes: &[Row] = &[
        ("counter", r#"{"op":"add","by":5}"#, Ok(r#"{"value":5}"#)),
        ("counter", r#"{"op":"add","by":-2}"#, Ok(r#"{"value":3}"#)),
        (
            "counter",
            r#"{"op":"mul","by":2}"#,
            Err((Code::FailedPrecondition, "invalid command")),
        ),
        (
            "kv",
            r#"{"op":"put","key":"a","value":"1"}"#,
            Ok(r#"{"previous":null}"#),
        ),
        (
            "kv",
            r#"{"op":"put","key":"a","value":"2"}"#,
            Ok(r#"{"previous":"1"}"#),
        ),
        (
            "kv",
            r#"{"op":"cas","key":"a","expected":"1","value":"9"}"#,
            Ok(r#"{"ok":false,"current":"2"}"#),
        ),
        (
            "kv",
            r#"{"op":"cas","key":"a","expected":"2","value":"3"}"#,
            Ok(r#"{"ok":true,"current":"3"}"#),
        ),
        (
            "kv",
            r#"{"op":"put","key":"b","value":"x"}"#,
            Ok(r#"{"previous":null}"#),
        ),
        (
            "kv",
            r#"{"op":"delete","key":"b"}"#,
            Ok(r#"{"previous":"x"}"#),
        ),
        (
            "kv",
            r#"{"op":"put","key":"c","value":"y"}"#,
            Ok(r#"{"previous":null}"#),
        ),
        (
            "bank",
            r#"{"op":"open","account":"alice","balance":100}"#,
            Ok(r#"{"balance":100}"#),
        ),
        (
            "bank",
            r#"{"op":"open","account":"bob","balance":5}"#,
            Ok(r#"{"balance":5}"#),
        ),
        (
            "bank",
            r#"{"op":"transfer","from":"alice","to":"bob","amount":30}"#,
            Ok(r#"{"from_balance":70,"to_balance":35}"#),
        ),
        (
            "bank",
            r#"{"op":"transfer","from":"bob","to":"alice","amount":1000}"#,
            Err((Code::FailedPrecondition, "insufficient")),
        ),
        (
            "bank",
            r#"{"op":"transfer","from":"carol","to":"alice","amount":1}"#,
            Err((Code::FailedPrecondition, "carol")),
        ),
        ("nowhere", r#"{}"#, Err((Code::NotFound, "nowhere"))),
    ];
    for (module, input, expected) in invokes {
        let got = api.invoke(module, input, None).await;
        match (got, expected) {
            (Ok(output), Ok(want)) => assert_eq!(output, *want, "{module} {input}"),
            (Err(status), Err((code, fragment))) => {
                assert_eq!(
                    status.code(),
                    *code,
                    "{module} {input}: {}",
                    status.message()
                );
                assert!(
                    status.message().to_lowercase().contains(fragment),
                    "{module} {input}: {}",
                    status.message()
                );
            }
            (got, want) => panic!("{module} {input}: got {got:?}, want {want:?}"),
        }
    }

    let queries: &[(&str, &str, &str)] = &[
        ("counter", r#"{"op":"get"}"#, r#"{"value":3}"#),
        ("kv", r#"{"op":"get","key":"a"}"#, r#"{"value":"3"}"#),
        ("kv", r#"{"op":"get","key":"b"}"#, r#"{"value":null}"#),
        (
            "kv",
            r#"{"op":"scan","prefix":"","limit":10}"#,
            r#"{"items":[["a","3"],["c","y"]]}"#,
        ),
        (
            "bank",
            r#"{"op":"balance","account":"bob"}"#,
            r#"{"balance":35}"#,
        ),
        ("bank", r#"{"op":"total"}"#, r#"{"total":105}"#),
    ];
    for (module, input, want) in queries {
        assert_eq!(
            api.query(module, input, linearizable()).await.unwrap(),
            *want,
            "{module} {input}"
        );
    }
    let before = api.digest().await;
    drop(api);
    node.shutdown().await.unwrap();

    // The same data directory, a new process life: every answer is the same,
    // stale reads included, and the digest did not move.
    let node = start(directory.path()).await;
    let mut api = Api::connect(&node).await;
    for (module, input, want) in queries {
        assert_eq!(
            api.query(module, input, proto::Consistency::Stale)
                .await
                .unwrap(),
            *want,
            "{module} {input}"
        );
    }
    let after = api.digest().await;
    assert_eq!(before.1, after.1, "the state changed across the restart");
    // What a module exports is replicated with it, not read from a cache
    // that a restart emptied.
    let counter = api
        .modules
        .get(proto::GetModuleRequest {
            name: "counter".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .module
        .unwrap();
    assert!(
        counter.has_query && counter.has_init && !counter.has_migrate,
        "{counter:?}"
    );
    assert!(after.0 >= before.0);
    assert_eq!(
        api.invoke("counter", r#"{"op":"add","by":1}"#, None)
            .await
            .unwrap(),
        r#"{"value":4}"#
    );
    node.shutdown().await.unwrap();
}

/// A retried command (same client id and sequence) is answered with the first
/// result and applied once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_command_is_applied_once() {
    let directory = TempDir::new().unwrap();
    let (node, mut api) = counter_node(directory.path()).await;
    let add = r#"{"op":"add","by":10}"#;
    // A session that was never opened is refused, and nothing is applied.
    let unopened = api
        .invoke("counter", add, Some(("client-1", 1)))
        .await
        .unwrap_err();
    assert_eq!(unopened.code(), Code::FailedPrecondition, "{unopened:?}");
    assert!(
        unopened.message().contains("the session is not open"),
        "{unopened:?}"
    );
    let opened = api
        .machine
        .open_session(proto::OpenSessionRequest {
            client_id: "client-1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let session = opened.client_id;
    assert!(session.starts_with("client-1."), "{session}");
    let first = api
        .invoke("counter", add, Some((session.as_str(), 1)))
        .await
        .unwrap();
    let retry = api
        .invoke("counter", add, Some((session.as_str(), 1)))
        .await
        .unwrap();
    assert_eq!(first, r#"{"value":10}"#);
    assert_eq!(retry, first);
    assert_eq!(
        api.query("counter", r#"{"op":"get"}"#, linearizable())
            .await
            .unwrap(),
        r#"{"value":10}"#
    );
    // The next sequence applies; an older one is refused, not applied.
    assert_eq!(
        api.invoke("counter", add, Some((session.as_str(), 2)))
            .await
            .unwrap(),
        r#"{"value":20}"#
    );
    let stale = api
        .invoke("counter", add, Some((session.as_str(), 1)))
        .await
        .unwrap_err();
    assert_eq!(
        stale.code(),
        Code::FailedPrecondition,
        "{}",
        stale.message()
    );
    assert_eq!(
        api.query("counter", r#"{"op":"get"}"#, linearizable())
            .await
            .unwrap(),
        r#"{"value":20}"#
    );
    node.shutdown().await.unwrap();
}

/// Every hostile module of the runtime's tables, sent to a real node: those
/// the runtime rejects at deploy are refused with INVALID_ARGUMENT before
/// anything enters the log; those that fail when run answer the documented
/// guest-failure code. The node serves on throughout, and its state digest
/// moves only with the commands that succeeded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_modules_get_their_codes_and_the_node_serves_on() {
    let directory = TempDir::new().unwrap();
    let (node, mut api) = counter_node(directory.path()).await;
    let mut failures = Vec::new();

    for (index, (name, wasm, rejection)) in validation_rows().into_iter().enumerate() {
        let before = api.digest().await;
        match api
            .deploy(&format!("bad-{index}"), &wasm, (None, None))
            .await
        {
            Ok(_) => failures.push(format!("{name}: deployed")),
            Err(status) if status.code() != Code::InvalidArgument => {
                failures.push(format!("{name}: {:?} {}", status.code(), status.message()))
            }
            Err(status) => {
                let named = match &rejection {
                    Rejection::Exactly(error) => status.message().contains(&error.to_string()),
                    Rejection::InvalidWith(part) => status.message().contains(part),
                };
                if !named {
                    failures.push(format!(
                        "{name}: the message does not say why: {}",
                        status.message()
                    ));
                }
            }
        }
        if api.digest().await != before {
            failures.push(format!("{name}: a refused deploy changed the state"));
        }
    }

    for (index, row) in call_rows().into_iter().enumerate() {
        // Queries and init rows need no log; a row whose memory budget is
        // not a deployable limit (zero pages) is the validation rows' case.
        if row.entry != EntryPoint::Apply || row.memory_bytes % 65_536 != 0 || row.memory_bytes == 0
        {
            continue;
        }
        let module = format!("row-{index}");
        let wasm = guest(row.items);
        if let Err(status) = api
            .deploy(&module, &wasm, (Some(row.fuel), Some(row.memory_bytes)))
            .await
        {
            failures.push(format!(
                "{}: deploy refused: {}",
                row.name,
                status.message()
            ));
            continue;
        }
        let expected = match &row.expected {
            Outcome::Ok(_) => Code::Ok,
            Outcome::GuestError(_) | Outcome::Trap { .. } | Outcome::MissingExport(_) => {
                Code::FailedPrecondition
            }
            Outcome::OutOfFuel | Outcome::MemoryLimit | Outcome::OutputTooLarge { .. } => {
                Code::ResourceExhausted
            }
            other => panic!("{}: no code documented for {other:?}", row.name),
        };
        let got = match api.invoke(&module, "the input", None).await {
            Ok(_) => Code::Ok,
            Err(status) => {
                if status.message().is_empty() {
                    failures.push(format!("{}: an empty message", row.name));
                }
                if status.message().len() > 4096 {
                    failures.push(format!(
                        "{}: a message of {} bytes, above 4 KiB",
                        row.name,
                        status.message().len()
                    ));
                }
                status.code()
            }
        };
        if got != expected {
            failures.push(format!("{}: expected {expected:?}, got {got:?}", row.name));
        }
        // The node still serves ordinary traffic after each hostile call.
        if api
            .invoke("counter", r#"{"op":"add","by":1}"#, None)
            .await
            .is_err()
        {
            failures.push(format!("{}: the node stopped serving", row.name));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    let health = api
        .cluster
        .health(proto::HealthRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        health.status(),
        proto::HealthStatus::Serving,
        "{}",
        health.detail
    );
    node.shutdown().await.unwrap();
}

/// Many clients at once through the Rust client: every invoke is applied
/// exactly once, and concurrent invokes share log entries (the leader
/// batches what queues up while an entry is being written).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_clients_are_batched_and_applied_once() {
    let directory = TempDir::new().unwrap();
    let node = start(directory.path()).await;
    let client = wasmraft::client::Client::connect(&node.endpoint())
        .await
        .unwrap();
    client
        .deploy(
            "counter",
            wasmraft_examples::COUNTER_WASM,
            Default::default(),
        )
        .await
        .unwrap();
    let before = node.handle().applied_index().unwrap();
    let (tasks, invokes_per_task) = (32u64, 10u64);
    let mut running = Vec::new();
    for _ in 0..tasks {
        let client = client.clone();
        running.push(tokio::spawn(async move {
            for _ in 0..invokes_per_task {
                client
                    .invoke("counter", br#"{"op":"add","by":1}"#)
                    .await
                    .unwrap();
            }
        }));
    }
    for task in running {
        task.await.unwrap();
    }
    let total = tasks * invokes_per_task;
    let answer = client
        .query(
            "counter",
            br#"{"op":"get"}"#,
            wasmraft::client::Consistency::Linearizable,
        )
        .await
        .unwrap();
    assert_eq!(
        String::from_utf8(answer.output).unwrap(),
        format!(r#"{{"value":{total}}}"#)
    );
    let entries = node.handle().applied_index().unwrap() - before;
    assert!(
        entries < total,
        "{total} invokes took {entries} entries: nothing was batched"
    );
    node.shutdown().await.unwrap();
}

/// A deploy reports its phases in order, then the module; a module that
/// fails validation ends after "validating" with the validator's reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deploy_reports_its_phases() {
    use std::sync::{Arc, Mutex};
    use wasmraft::client::{Client, DeployOptions, DeployPhase, DeployProgress};

    let directory = TempDir::new().unwrap();
    let node = start(directory.path()).await;
    let client = Client::connect(&node.endpoint()).await.unwrap();
    let phases = Arc::new(Mutex::new(Vec::new()));
    let options = || DeployOptions {
        progress: Some({
            let phases = Arc::clone(&phases);
            Arc::new(move |progress: DeployProgress| {
                let mut phases = phases.lock().unwrap();
                if phases.last() != Some(&progress.phase) {
                    phases.push(progress.phase);
                }
            })
        }),
        ..DeployOptions::default()
    };
    let module = client
        .deploy("counter", wasmraft_examples::COUNTER_WASM, options())
        .await
        .unwrap();
    assert_eq!(module.version, 1);
    assert_eq!(
        *phases.lock().unwrap(),
        [
            DeployPhase::Uploading,
            DeployPhase::Validating,
            DeployPhase::Compiling,
            DeployPhase::Replicating
        ]
    );
    phases.lock().unwrap().clear();
    let error = client
        .deploy("junk", b"\0asm\x01\0\0\0garbage", options())
        .await
        .unwrap_err();
    assert_eq!(error.code(), Some(Code::InvalidArgument), "{error}");
    assert_eq!(
        *phases.lock().unwrap(),
        [DeployPhase::Uploading, DeployPhase::Validating]
    );
    node.shutdown().await.unwrap();
}

/// `inspect` of a running node's directory says to stop the node first,
/// and reads the directory once it stopped.
#[tokio::test]
async fn inspect_refuses_a_running_nodes_directory() {
    let directory = TempDir::new().unwrap();
    let node = start(directory.path()).await;
    let data = wasmraft::storage::DataDirectory::new(directory.path());
    let runtime = || wasmraft::wasm::Runtime::new(Default::default()).unwrap();
    let error = wasmraft::storage::inspect(&data, runtime())
        .await
        .expect_err("a running node holds its directory");
    assert!(
        matches!(error, wasmraft::storage::InspectError::InUse(_)),
        "{error}"
    );
    assert!(error.to_string().contains("stop the node first"), "{error}");
    node.shutdown().await.unwrap();
    let found = wasmraft::storage::inspect(&data, runtime())
        .await
        .expect("a stopped node's directory is read");
    assert!(found.last_applied.is_some());
}

/// `Cluster.Snapshot` with `wait` answers once a snapshot covers what the
/// node had applied; without, it only starts one.
#[tokio::test]
async fn a_waited_snapshot_covers_what_was_applied() {
    let directory = TempDir::new().unwrap();
    let (node, mut api) = counter_node(directory.path()).await;
    for _ in 0..5 {
        api.invoke("counter", r#"{"op":"add","by":1}"#, None)
            .await
            .unwrap();
    }
    let (applied, _) = api.digest().await;
    let started = api
        .cluster
        .snapshot(proto::SnapshotRequest { wait: false })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(started.snapshot_index, None);
    let built = api
        .cluster
        .snapshot(proto::SnapshotRequest { wait: true })
        .await
        .unwrap()
        .into_inner();
    let index = built
        .snapshot_index
        .expect("a waited snapshot names its index");
    assert!(index >= applied, "{index} covers {applied}");
    let snapshot = node
        .handle()
        .consensus()
        .with_metrics(|metrics| metrics.snapshot_index());
    assert!(snapshot >= Some(applied), "{snapshot:?}");
    node.shutdown().await.unwrap();
}

/// `GET /metrics` of a node, as text.
async fn scrape(address: std::net::SocketAddr) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: wasmraft\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/plain; version=0.0.4"),
        "{head}"
    );
    body.to_owned()
}

/// The samples of a Prometheus text page, by series (`name{labels}`);
/// every line must be a comment or a sample with a number.
fn samples(page: &str) -> std::collections::BTreeMap<String, f64> {
    let mut samples = std::collections::BTreeMap::new();
    for line in page.lines().filter(|line| !line.is_empty()) {
        if line.starts_with("# HELP ") || line.starts_with("# TYPE ") {
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("not a sample: {line}"));
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            value => value
                .parse()
                .unwrap_or_else(|_| panic!("not a number: {line}")),
        };
        let name = series.split('{').next().unwrap();
        assert!(
            name.starts_with("wasmraft_") || name == "target_info",
            "a series outside the wasmraft_ namespace: {line}"
        );
        samples.insert(series.to_owned(), value);
    }
    samples
}

/// `/metrics` parses, and its figures move as calls arrive: requests by
/// method and code, guest calls by outcome, log appends, Raft's indexes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_and_move_under_load() {
    let directory = TempDir::new().unwrap();
    let node = start_with(
        directory.path(),
        wasmraft::node::config::TelemetrySettings {
            metrics_listen: Some("127.0.0.1:0".parse().unwrap()),
            ..Default::default()
        },
    )
    .await;
    let address = node.metrics_address().expect("metrics are served");
    let mut api = Api::connect(&node).await;
    api.deploy("counter", wasmraft_examples::COUNTER_WASM, (None, None))
        .await
        .unwrap();
    let before = samples(&scrape(address).await);
    let read = |samples: &std::collections::BTreeMap<String, f64>, series: &str| {
        samples.get(series).copied().unwrap_or(0.0)
    };
    const INVOKES: u32 = 25;
    for _ in 0..INVOKES {
        api.invoke("counter", r#"{"op":"add","by":1}"#, None)
            .await
            .unwrap();
    }
    let refused = api.invoke("counter", "not json", None).await.unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition);
    let missing = api.invoke("nothing-here", "{}", None).await.unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    api.query("counter", r#"{"op":"get"}"#, linearizable())
        .await
        .unwrap();
    let after = samples(&scrape(address).await);

    let invoke_ok =
        r#"wasmraft_requests_total{code="OK",method="wasmraft.v1.StateMachine/Invoke"}"#;
    assert_eq!(
        read(&after, invoke_ok) - read(&before, invoke_ok),
        f64::from(INVOKES)
    );
    let not_found =
        r#"wasmraft_requests_total{code="NOT_FOUND",method="wasmraft.v1.StateMachine/Invoke"}"#;
    assert_eq!(read(&after, not_found) - read(&before, not_found), 1.0);
    let applied_ok = r#"wasmraft_guest_calls_total{entry_point="apply",outcome="ok"}"#;
    assert_eq!(
        read(&after, applied_ok) - read(&before, applied_ok),
        f64::from(INVOKES)
    );
    let guest_error = r#"wasmraft_guest_calls_total{entry_point="apply",outcome="guest_error"}"#;
    assert_eq!(read(&after, guest_error) - read(&before, guest_error), 1.0);
    let queried = r#"wasmraft_guest_calls_total{entry_point="query",outcome="ok"}"#;
    assert_eq!(read(&after, queried) - read(&before, queried), 1.0);
    let appends = "wasmraft_log_append_duration_seconds_count";
    assert!(read(&after, appends) >= read(&before, appends) + f64::from(INVOKES));
    let applied = r#"wasmraft_raft_log_index{kind="applied"}"#;
    assert!(read(&after, applied) >= read(&before, applied) + f64::from(INVOKES));
    assert_eq!(read(&after, r#"wasmraft_raft_role{role="leader"}"#), 1.0);
    assert!(read(&after, "wasmraft_raft_term") >= 1.0);
    assert_eq!(read(&after, "wasmraft_modules"), 1.0);
    assert!(read(&after, "wasmraft_log_size_bytes") > 0.0);
    let latency =
        r#"wasmraft_request_duration_seconds_count{method="wasmraft.v1.StateMachine/Invoke"}"#;
    assert_eq!(
        read(&after, latency) - read(&before, latency),
        f64::from(INVOKES + 2)
    );
    node.shutdown().await.unwrap();
}

/// A module's storage quota over gRPC: the call that would pass it is
/// RESOURCE_EXHAUSTED with a message naming the settings and commits none of
/// its writes, deletes still go through, and `Modules.Get` shows the usage
/// against the quota, also after a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_module_past_its_storage_quota_is_refused_and_shows_its_usage() {
    let directory = TempDir::new().unwrap();
    let node = start(directory.path()).await;
    let mut api = Api::connect(&node).await;
    api.deploy("kv", wasmraft_examples::KV_WASM, (None, None))
        .await
        .unwrap();
    let module = |module: proto::Module| {
        (
            module.storage_keys,
            module.storage_bytes,
            module.storage_keys_max,
            module.storage_bytes_max,
        )
    };
    let get = |api: &mut Api| {
        let mut modules = api.modules.clone();
        async move {
            modules
                .get(proto::GetModuleRequest { name: "kv".into() })
                .await
                .unwrap()
                .into_inner()
                .module
                .unwrap()
        }
    };
    // A new cluster records its quotas at bootstrap.
    assert_eq!(module(get(&mut api).await), (0, 0, 10_000_000, 1 << 30));
    api.cluster
        .set_settings(proto::SetSettingsRequest {
            module_storage_keys_max: Some(2),
            ..Default::default()
        })
        .await
        .unwrap();
    let put = |key: &str| format!(r#"{{"op":"put","key":"{key}","value":"vv"}}"#);
    api.invoke("kv", &put("a"), None).await.unwrap();
    api.invoke("kv", &put("b"), None).await.unwrap();
    let refused = api.invoke("kv", &put("c"), None).await.unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    for part in [
        "9 bytes in 3 keys",
        "or 2 keys",
        "module_storage_keys_max",
        "none of them was written",
    ] {
        assert!(refused.message().contains(part), "{}", refused.message());
    }
    // Not a rate: waiting does not help, so no retry-after.
    assert!(refused.metadata().get("retry-after-ms").is_none());
    let get_c = r#"{"op":"get","key":"c"}"#;
    assert_eq!(
        api.query("kv", get_c, linearizable()).await.unwrap(),
        r#"{"value":null}"#
    );
    assert_eq!(module(get(&mut api).await), (2, 6, 2, 1 << 30));
    api.invoke("kv", r#"{"op":"delete","key":"a"}"#, None)
        .await
        .unwrap();
    assert_eq!(module(get(&mut api).await), (1, 3, 2, 1 << 30));

    drop(api);
    node.shutdown().await.unwrap();
    let node = start(directory.path()).await;
    let mut api = Api::connect(&node).await;
    assert_eq!(module(get(&mut api).await), (1, 3, 2, 1 << 30));
    api.invoke("kv", &put("c"), None).await.unwrap();
    let refused = api.invoke("kv", &put("d"), None).await.unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    node.shutdown().await.unwrap();
}
