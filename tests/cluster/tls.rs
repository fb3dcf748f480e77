//! A three-node cluster serving TLS: clients reach it over https with the
//! authority's certificate, peers replicate, forward and report status over
//! TLS, a client certificate's common name is its subject (mTLS), and a
//! client that does not speak TLS, trusts another authority or presents a
//! certificate of another authority gets nothing.

use tonic::Code;
use wasmraft::client::{ClientConfig, ClientError, RoleBinding};

use super::harness::{Cluster, TestAuthority};

/// Whether `error` is the connection failing (at the TLS handshake, or
/// the first frames a server that speaks TLS cannot read), not an answer
/// of the API: which of these a refused connection shows depends on when
/// the server hangs up.
fn is_transport_failure(error: &ClientError) -> bool {
    match error {
        ClientError::Unreachable { .. }
        | ClientError::Transport { .. }
        | ClientError::TimedOut { .. } => true,
        ClientError::OutcomeUnknown { last, .. } => is_transport_failure(last),
        ClientError::Status { code, .. } => matches!(
            code,
            Code::Unavailable | Code::Unknown | Code::Internal | Code::Cancelled
        ),
        _ => false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cluster_serves_and_replicates_over_tls_and_knows_clients_by_their_certificates() {
    let cluster = Cluster::start_tls(3).await;
    let leader = cluster.wait_for_leader().await;
    let follower = cluster.follower_of(leader);
    // A deploy and a write through a follower cross the forward hop, the
    // status asks every member: all of it over TLS.
    cluster.deploy_counter(follower).await;
    let admin = cluster.client_of(follower).await;
    admin
        .invoke("counter", br#"{"op":"add","by":2}"#)
        .await
        .unwrap();
    let status = admin.status().await.unwrap();
    assert_eq!(status.nodes.len(), 3, "{status:?}");
    assert!(
        status.nodes.iter().all(|node| node.error.is_none()),
        "{status:?}"
    );
    assert_eq!(cluster.counter(leader).await, 2);

    // mTLS: a certificate of the cluster's authority names its subject.
    let authority = cluster.tls_authority.as_ref().unwrap();
    let (certificate, key) = authority.issue("alice", &[]);
    let alice = cluster
        .client_with(
            follower,
            ClientConfig {
                ca_certificate_pem: Some(authority.certificate_pem.clone().into_bytes()),
                client_identity_pem: Some((certificate.into_bytes(), key.into_bytes())),
                ..Cluster::client_config()
            },
        )
        .await;
    let who = alice.who_am_i().await.unwrap();
    assert_eq!((who.subject.as_str(), who.token_id), ("alice", None));
    let refused = alice
        .invoke("counter", br#"{"op":"add","by":1}"#)
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Some(Code::PermissionDenied), "{refused}");
    admin
        .grant(&RoleBinding::new("alice", "module_invoker", Some("counter")).unwrap())
        .await
        .unwrap();
    alice
        .invoke("counter", br#"{"op":"add","by":1}"#)
        .await
        .unwrap();
    assert_eq!(cluster.counter(leader).await, 3);

    // Outsiders: plain text, another authority's trust, another
    // authority's client certificate.
    let elsewhere = tempfile::tempdir().unwrap();
    let other = TestAuthority::new("another-ca", elsewhere.path());
    let (certificate, key) = other.issue("alice", &[]);
    // Refused for good: one quick attempt is enough to see it.
    let once = || ClientConfig {
        retry_unreachable: false,
        retry_deadline: std::time::Duration::from_millis(200),
        ..ClientConfig::default()
    };
    let plain = wasmraft::client::Client::connect_with(
        &format!("http://{}", cluster.address(follower)),
        ClientConfig {
            bearer_token: cluster.admin_token.clone(),
            ..once()
        },
    )
    .await
    .unwrap();
    let outsiders = [
        ("a plain-text client", plain),
        (
            "a client trusting another authority",
            cluster
                .client_with(
                    follower,
                    ClientConfig {
                        bearer_token: cluster.admin_token.clone(),
                        ca_certificate_pem: Some(other.certificate_pem.clone().into_bytes()),
                        ..once()
                    },
                )
                .await,
        ),
        (
            "a certificate of another authority",
            cluster
                .client_with(
                    follower,
                    ClientConfig {
                        ca_certificate_pem: Some(authority.certificate_pem.clone().into_bytes()),
                        client_identity_pem: Some((certificate.into_bytes(), key.into_bytes())),
                        ..once()
                    },
                )
                .await,
        ),
    ];
    for (who, client) in outsiders {
        let error = client.who_am_i().await.unwrap_err();
        assert!(is_transport_failure(&error), "{who}: {error:?}");
        let error = client
            .invoke("counter", br#"{"op":"add","by":100}"#)
            .await
            .unwrap_err();
        assert!(is_transport_failure(&error), "{who}: {error:?}");
    }
    assert_eq!(cluster.counter(leader).await, 3);
    cluster.assert_converged().await;
    cluster.shutdown().await;
}
