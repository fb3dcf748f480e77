//! Local admission on a secure cluster: a tenant over its rate is refused
//! alone, with the limit named and `retry-after-ms`, while another tenant
//! is served; the Rust client waits as told and gets through.

use std::time::Duration;

use tonic::Code;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;
use wasmraft::admission::InFlightSettings;
use wasmraft::admission::rates::{Rate, RateOverrides};
use wasmraft::client::RoleBinding;
use wasmraft::node::config::LimitSettings;
use wasmraft_proto::v1 as proto;
use wasmraft_proto::v1::state_machine_client::StateMachineClient;

use super::harness::{Cluster, deploy_spinning, raw_increment, until_refused, wait_until};

/// One query of `module` as `token`, straight over gRPC.
async fn raw_query(
    channel: Channel,
    token: String,
    module: &str,
    input: &[u8],
) -> Result<(), tonic::Status> {
    let mut request = tonic::Request::new(proto::QueryRequest {
        module: module.to_owned(),
        input: input.to_vec(),
        consistency: proto::Consistency::Stale as i32,
    });
    request.set_timeout(Duration::from_secs(30));
    let value = MetadataValue::try_from(format!("Bearer {token}")).unwrap();
    request.metadata_mut().insert("authorization", value);
    StateMachineClient::new(channel)
        .query(request)
        .await
        .map(drop)
}

/// A subject's own rate, and a role's rate for each of its holders: past
/// either a call is refused naming it, with `retry-after-ms`, and nobody
/// else is held back.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tenant_over_its_rate_is_refused_alone_and_told_when_to_retry() {
    let mut limits = LimitSettings::default();
    limits.rates.subjects.insert(
        "greedy".to_owned(),
        RateOverrides {
            invoke: Some(Rate {
                per_second: 1,
                burst: 3,
            }),
            ..RateOverrides::default()
        },
    );
    // Every holder of `module_querier` has its own bucket of this rate.
    limits.rates.roles.insert(
        "module_querier".to_owned(),
        RateOverrides {
            query: Some(Rate {
                per_second: 1,
                burst: 2,
            }),
            ..RateOverrides::default()
        },
    );
    let cluster = Cluster::start_secure_limited(3, limits).await;
    cluster.deploy_counter(1).await;
    let admin = cluster.client_of(1).await;
    let mut tokens = Vec::new();
    for subject in ["greedy", "modest"] {
        let binding = RoleBinding::new(subject, "module_invoker", Some("counter")).unwrap();
        admin.grant(&binding).await.unwrap();
        tokens.push(admin.create_token(subject).await.unwrap().token);
    }
    let binding = RoleBinding::new("modest", "module_querier", Some("counter")).unwrap();
    admin.grant(&binding).await.unwrap();
    let (greedy, modest) = (&tokens[0], &tokens[1]);
    let leader = cluster.wait_for_leader().await;
    let follower = cluster.follower_of(leader);
    let channel = Channel::from_shared(format!("http://{}", cluster.address(follower)))
        .unwrap()
        .connect()
        .await
        .unwrap();

    // Past its burst of 3 at 1 a second, greedy is refused within a few
    // calls (a slow machine refills a token or two meanwhile, not 20).
    let (passed, refusal) = until_refused(20, || raw_increment(&channel, Some(greedy))).await;
    let mut applied = i64::try_from(passed).unwrap();
    let refusal = refusal.expect("greedy is refused within 20 calls");
    assert_eq!(refusal.code(), Code::ResourceExhausted, "{refusal:?}");
    assert!(
        refusal
            .message()
            .contains("`greedy` sent invoke calls faster than 1 a second (burst 3)")
            && refusal
                .message()
                .contains("limit: limits.rates.subjects.greedy.invoke"),
        "{}",
        refusal.message()
    );
    let retry_after: u64 = refusal
        .metadata()
        .get("retry-after-ms")
        .expect("the refusal says when to retry")
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=1000).contains(&retry_after), "{retry_after}");
    assert!(applied >= 3, "the burst of 3 passed: {applied}");

    // Meanwhile modest, through the same node, is not held back at all.
    for _ in 0..10 {
        raw_increment(&channel, Some(modest))
            .await
            .expect("another tenant is served");
    }
    applied += 10;

    // modest's queries take its role's rate: a burst of 2 at 1 a second.
    let get = br#"{"op":"get"}"#;
    let (_, refusal) = until_refused(20, || {
        raw_query(channel.clone(), modest.to_string(), "counter", get)
    })
    .await;
    let refusal = refusal.expect("modest's queries are refused within 20 calls");
    assert_eq!(refusal.code(), Code::ResourceExhausted, "{refusal:?}");
    assert!(
        refusal
            .message()
            .contains("limit: limits.rates.roles.module_querier.query")
            && refusal.metadata().contains_key("retry-after-ms"),
        "{refusal:?}"
    );
    // The administrator holds no such role: its queries pass.
    for _ in 0..10 {
        admin
            .query("counter", get, wasmraft::client::Consistency::Stale)
            .await
            .expect("a subject without the role has the defaults");
    }

    // The Rust client honours retry-after-ms within its deadline: greedy's
    // next writes get through, at greedy's pace.
    let client = cluster
        .client_with_token(follower, Some(greedy.clone()))
        .await;
    for _ in 0..3 {
        client
            .invoke("counter", br#"{"op":"add","by":1}"#)
            .await
            .expect("the client waits as told and gets through");
        applied += 1;
    }
    assert_eq!(cluster.counter(leader).await, applied);
    cluster.assert_converged().await;
    cluster.shutdown().await;
}

/// A subject with as many calls open as `limits.in_flight.per_subject`
/// allows is shed at once for the next, naming the limit, while another
/// subject's call is served meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_subject_at_its_in_flight_cap_is_shed_and_others_are_served() {
    let limits = LimitSettings {
        in_flight: InFlightSettings {
            per_subject: 2,
            total: 64,
            ..InFlightSettings::default()
        },
        ..LimitSettings::default()
    };
    let cluster = Cluster::start_secure_limited(1, limits).await;
    cluster.deploy_counter(1).await;
    let admin = cluster.client_of(1).await;
    // A query that spins through a billion fuel (about a second): calls
    // of it stay open long enough to pile up.
    const SPIN_FUEL: u64 = 1_000_000_000;
    deploy_spinning(
        &cluster,
        "spin",
        r#"(func (export "apply") (param i32 i32) (result i32) (i32.const 0))
           (func (export "query") (param i32 i32) (result i32)
             (loop $spin (br $spin)) (i32.const 0))"#,
        SPIN_FUEL,
    )
    .await;
    let mut tokens = Vec::new();
    for subject in ["crowd", "other"] {
        for module in ["spin", "counter"] {
            let binding = RoleBinding::new(subject, "module_querier", Some(module)).unwrap();
            admin.grant(&binding).await.unwrap();
        }
        tokens.push(admin.create_token(subject).await.unwrap().token);
    }
    let channel = Channel::from_shared(format!("http://{}", cluster.address(1)))
        .unwrap()
        .connect()
        .await
        .unwrap();
    // Eight at once: two open, the others shed at once.
    let calls: Vec<_> = (0..8)
        .map(|_| tokio::spawn(raw_query(channel.clone(), tokens[0].clone(), "spin", b"")))
        .collect();
    // While crowd's calls spin, other's query is served.
    raw_query(
        channel.clone(),
        tokens[1].clone(),
        "counter",
        br#"{"op":"get"}"#,
    )
    .await
    .expect("another subject is served");
    let mut shed = 0;
    for call in calls {
        let status = call
            .await
            .unwrap()
            .expect_err("a spin runs out of fuel or is shed");
        assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
        if status.metadata().contains_key("retry-after-ms") {
            assert!(
                status
                    .message()
                    .contains("`crowd` has 2 calls open on this node")
                    && status.message().contains("limits.in_flight.per_subject"),
                "{}",
                status.message()
            );
            shed += 1;
        } else {
            assert!(status.message().contains("fuel"), "{}", status.message());
        }
    }
    assert!(
        shed >= 1,
        "eight calls at once past a cap of two: some are shed"
    );
    cluster.shutdown().await;
}

/// Past `limits.in_flight.total` running calls the next waits in the
/// node's queue, for at most `queue_wait_ms`, then is shed naming
/// `limits.in_flight.total`; with the queue full, the next is shed at once
/// naming `limits.in_flight.queued`. Both carry `retry-after-ms`, and once
/// the running call ends the node serves again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn past_the_running_cap_calls_wait_in_a_bounded_queue_then_are_shed() {
    let limits = LimitSettings {
        query_timeout_ms: 60_000,
        in_flight: InFlightSettings {
            per_subject: 2,
            total: 1,
            queued: 1,
            queue_wait_ms: 100,
            ..InFlightSettings::default()
        },
        ..LimitSettings::default()
    };
    let cluster = Cluster::start_secure_limited(1, limits).await;
    cluster.deploy_counter(1).await;
    // Three billion fuel: a query that holds the one slot for seconds.
    deploy_spinning(
        &cluster,
        "spin",
        r#"(func (export "apply") (param i32 i32) (result i32) (i32.const 0))
           (func (export "query") (param i32 i32) (result i32)
             (loop $spin (br $spin)) (i32.const 0))"#,
        3_000_000_000,
    )
    .await;
    let admin = cluster.client_of(1).await;
    for (subject, module) in [
        ("crowd", "spin"),
        ("crowd", "counter"),
        ("other", "counter"),
    ] {
        let binding = RoleBinding::new(subject, "module_querier", Some(module)).unwrap();
        admin.grant(&binding).await.unwrap();
    }
    let token = admin.create_token("crowd").await.unwrap().token;
    let other = admin.create_token("other").await.unwrap().token;
    let channel = Channel::from_shared(format!("http://{}", cluster.address(1)))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let in_flight = cluster.node(1).handle().in_flight().clone();
    let running = tokio::spawn(raw_query(channel.clone(), token.clone(), "spin", b""));
    wait_until("the spin runs", || in_flight.open() == 1).await;

    // The next waits, and past its wait is shed naming the running cap.
    let waiting = tokio::spawn(raw_query(
        channel.clone(),
        token.clone(),
        "counter",
        br#"{"op":"get"}"#,
    ));
    wait_until("a call waits", || in_flight.queued() == 1).await;
    // With the one place taken, another subject's call is shed at once.
    let full = raw_query(
        channel.clone(),
        other.clone(),
        "counter",
        br#"{"op":"get"}"#,
    )
    .await
    .expect_err("the queue is full");
    assert_eq!(full.code(), Code::ResourceExhausted, "{full:?}");
    assert!(
        full.message().contains("limits.in_flight.queued")
            && full
                .message()
                .contains("1 calls run and 1 wait on this node"),
        "{}",
        full.message()
    );
    let late = waiting.await.unwrap().expect_err("no slot came free");
    assert_eq!(late.code(), Code::ResourceExhausted, "{late:?}");
    assert!(
        late.message().contains("limits.in_flight.total")
            && late.message().contains("came free within 100 ms"),
        "{}",
        late.message()
    );
    for status in [&full, &late] {
        assert!(
            status.metadata().contains_key("retry-after-ms"),
            "{status:?}"
        );
    }
    assert_eq!(in_flight.queued(), 0);

    // The spin ends (out of fuel); then the node serves again.
    let spun = running
        .await
        .unwrap()
        .expect_err("the spin runs out of fuel");
    assert!(spun.message().contains("fuel"), "{spun:?}");
    raw_query(
        channel.clone(),
        token.clone(),
        "counter",
        br#"{"op":"get"}"#,
    )
    .await
    .expect("a slot is free again");
    cluster.shutdown().await;
}

/// A deploy stream of `wasm` announced whole, whose chunks are sent by the
/// returned sender; the call's answer comes from the returned task.
fn open_deploy(
    channel: &Channel,
    wasm: &[u8],
) -> (
    futures::channel::mpsc::Sender<proto::DeployChunk>,
    tokio::task::JoinHandle<Result<(), tonic::Status>>,
) {
    use sha2::Digest;
    let (mut chunks, stream) = futures::channel::mpsc::channel(16);
    let header = proto::DeployChunk {
        content: Some(proto::deploy_chunk::Content::Header(proto::DeployHeader {
            name: "counter2".to_owned(),
            sha256_hex: hex::encode(sha2::Sha256::digest(wasm)),
            size_bytes: wasm.len() as u64,
            ..Default::default()
        })),
    };
    chunks.try_send(header).unwrap();
    let mut client = wasmraft_proto::v1::modules_client::ModulesClient::new(channel.clone());
    let call = tokio::spawn(async move { client.deploy(stream).await.map(drop) });
    (chunks, call)
}

/// Deploy uploads are bounded: in number (`limits.in_flight.deploys`),
/// in the bytes the node holds for them (`limits.in_flight.bytes`, taken
/// for the size a header announces) and in idle time
/// (`limits.deploy_idle_timeout_ms`); a shed upload names its limit, and
/// once the others end the next deploy goes through.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deploy_uploads_are_bounded_in_number_bytes_and_idle_time() {
    let wasm = wasmraft_examples::COUNTER_WASM;
    let limits = LimitSettings {
        deploy_idle_timeout_ms: 1_500,
        in_flight: InFlightSettings {
            deploys: 1,
            ..InFlightSettings::default()
        },
        ..LimitSettings::default()
    };
    let cluster = Cluster::start_as_limited(
        1,
        super::harness::test_raft_settings(),
        false,
        false,
        limits,
    )
    .await;
    let channel = Channel::from_shared(format!("http://{}", cluster.address(1)))
        .unwrap()
        .connect()
        .await
        .unwrap();
    // One upload that sends its header and then nothing.
    let (idle_chunks, idle) = open_deploy(&channel, wasm);
    // Until it is shed for idling, no second upload is admitted. The first
    // may be shed before the second arrives on a slow machine: then the
    // second is admitted and idles in its turn.
    let (second_chunks, second) = open_deploy(&channel, wasm);
    let mut answers = Vec::new();
    for call in [idle, second] {
        answers.push(call.await.unwrap().unwrap_err());
    }
    drop((idle_chunks, second_chunks));
    let codes: Vec<Code> = answers.iter().map(tonic::Status::code).collect();
    assert!(
        codes.contains(&Code::DeadlineExceeded),
        "an upload that sends nothing is ended: {answers:?}"
    );
    for status in &answers {
        let expected = match status.code() {
            Code::DeadlineExceeded => "limits.deploy_idle_timeout_ms",
            Code::ResourceExhausted => "limits.in_flight.deploys",
            _ => panic!("{status:?}"),
        };
        assert!(status.message().contains(expected), "{status:?}");
        if status.code() == Code::ResourceExhausted {
            assert!(
                status.metadata().contains_key("retry-after-ms"),
                "{status:?}"
            );
        }
    }

    // With the uploads ended, a whole one goes through.
    let (mut chunks, call) = open_deploy(&channel, wasm);
    for piece in wasm.chunks(64 << 10) {
        futures::SinkExt::send(
            &mut chunks,
            proto::DeployChunk {
                content: Some(proto::deploy_chunk::Content::Data(piece.to_vec())),
            },
        )
        .await
        .unwrap();
    }
    drop(chunks);
    call.await.unwrap().expect("a deploy once the others ended");
    cluster.shutdown().await;
}
