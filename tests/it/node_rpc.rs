//! One in-process node over real gRPC: submissions, queries, refusals that
//! change nothing, and restart.

use credence::core::envelope::{Kind, NetworkId, seal};
use credence_proto::v1 as pb;
use prost::Message;
use tonic::Code;

use crate::common::{TestNet, attestation_by, client, credential_status, submit_attestation};

async fn log_len(node: &credence::node::RunningNode) -> u64 {
    let mut c = client(node).await;
    c.status(pb::StatusRequest {})
        .await
        .expect("status")
        .into_inner()
        .credential_log_len
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_serves_credentials_refuses_bad_input_and_keeps_state_across_restart() {
    let net = TestNet::new(&["eu"], 1);
    let node = net.start(0, vec![]).await;
    let subject = [7u8; 32];

    let status = client(&node)
        .await
        .status(pb::StatusRequest {})
        .await
        .expect("status")
        .into_inner();
    assert_eq!(status.network_id, hex::encode(net.network_id().0));
    assert_eq!(status.region, "eu");
    assert!(status.validator);

    let first = net.attestation(subject, "a");
    let id = submit_attestation(&node, first.clone()).await.expect("attest");
    assert_eq!(credential_status(&node, &id).await, "valid");
    // Submitting the same envelope again is harmless.
    let again = client(&node)
        .await
        .submit_attestation(pb::SubmitRequest { envelope: first })
        .await
        .expect("resubmit")
        .into_inner();
    assert_eq!(again.id, id);
    assert!(!again.new);
    let before = log_len(&node).await;

    // Bad input: each refusal has a specific code and changes nothing.
    let good = net.attestation(subject, "b");
    let mut forged = good.clone();
    let last = forged.len() - 1;
    forged[last] ^= 1;
    let rogue = ed25519_dalek::SigningKey::from_bytes(&[9; 32]);
    let cases: Vec<(&str, Vec<u8>, Code)> = vec![
        ("forged signature", forged, Code::Unauthenticated),
        (
            "another network's id",
            attestation_by(&NetworkId([1; 32]), &net.issuer, subject, "demo", "c"),
            Code::Unauthenticated,
        ),
        ("not an envelope", b"\xff\xff\xff".to_vec(), Code::InvalidArgument),
        (
            "oversized body",
            attestation_by(&net.network_id(), &net.issuer, subject, "demo", &"x".repeat(600 * 1024)),
            Code::InvalidArgument,
        ),
        (
            "data over 4 KiB",
            attestation_by(&net.network_id(), &net.issuer, subject, "demo", &"x".repeat(4097)),
            Code::InvalidArgument,
        ),
        (
            "unknown schema",
            attestation_by(&net.network_id(), &net.issuer, subject, "nope", "d"),
            Code::NotFound,
        ),
        (
            "issuer not granted",
            attestation_by(&net.network_id(), &rogue, subject, "demo", "e"),
            Code::PermissionDenied,
        ),
        (
            "a revocation sent as an attestation",
            net.revocation(&id),
            Code::InvalidArgument,
        ),
    ];
    for (what, envelope, code) in cases {
        let err = client(&node)
            .await
            .submit_attestation(pb::SubmitRequest { envelope })
            .await
            .expect_err(what);
        assert_eq!(err.code(), code, "{what}: {}", err.message());
        assert!(!err.message().is_empty(), "{what} has no message");
    }
    // A revocation signed by someone other than the issuer.
    let body = pb::Revocation {
        issuer: rogue.verifying_key().to_bytes().to_vec(),
        attestation_id: hex::decode(&id).expect("hex"),
        revoked_at: 1,
        reason: String::new(),
    };
    let envelope = seal(&net.network_id(), &rogue, Kind::Revocation, body.encode_to_vec()).0;
    let err = client(&node)
        .await
        .submit_revocation(pb::SubmitRequest { envelope })
        .await
        .expect_err("rogue revocation");
    assert_eq!(err.code(), Code::PermissionDenied, "{}", err.message());
    assert_eq!(log_len(&node).await, before, "a refused submission changed the log");
    assert_eq!(credential_status(&node, &id).await, "valid");

    // The revocation by the issuer sticks across a restart.
    client(&node)
        .await
        .submit_revocation(pb::SubmitRequest {
            envelope: net.revocation(&id),
        })
        .await
        .expect("revoke");
    assert_eq!(credential_status(&node, &id).await, "revoked");
    node.stop().await;
    let node = net.start(0, vec![]).await;
    assert_eq!(credential_status(&node, &id).await, "revoked");
    let list = client(&node)
        .await
        .list_credentials(pb::ListCredentialsRequest {
            subject: hex::encode(subject),
        })
        .await
        .expect("list")
        .into_inner();
    assert_eq!(list.credentials.len(), 1);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_injection_is_refused_unless_enabled() {
    let net = TestNet::new(&["eu"], 1);
    let mut settings = net.settings(0, vec![]);
    settings.enable_fault_injection = false;
    let node = credence::node::start(settings).await.expect("start");
    let err = client(&node)
        .await
        .set_peer_blocked(pb::SetPeerBlockedRequest {
            peer: hex::encode([1u8; 32]),
            blocked: true,
        })
        .await
        .expect_err("refused");
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("--enable-fault-injection"));
    assert!(
        !credence::rpc::admin::token_file(&net.store_dir(0)).exists(),
        "a node without fault injection left an admin token"
    );
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_calls_need_the_token_the_node_wrote_at_start() {
    use credence::rpc::admin::{read_token_file, token_file, with_token};
    let net = TestNet::new(&["eu"], 1);
    let node = net.start(0, vec![]).await;
    let request = || pb::SetPeerBlockedRequest {
        peer: hex::encode([1u8; 32]),
        blocked: true,
    };
    let bare = client(&node)
        .await
        .set_peer_blocked(request())
        .await
        .expect_err("refused without a token");
    assert_eq!(bare.code(), Code::Unauthenticated, "{bare:?}");
    assert!(bare.message().contains("token"), "{bare:?}");
    let wrong = with_token(request(), &"ab".repeat(32)).expect("metadata");
    let wrong = client(&node)
        .await
        .set_peer_blocked(wrong)
        .await
        .expect_err("refused with a wrong token");
    assert_eq!(wrong.code(), Code::Unauthenticated, "{wrong:?}");
    assert!(wrong.message().contains("token"), "{wrong:?}");

    let token = read_token_file(&token_file(&net.store_dir(0))).expect("the node wrote its token");
    let answer = client(&node)
        .await
        .set_peer_blocked(with_token(request(), &token).expect("metadata"))
        .await
        .expect("accepted with the token")
        .into_inner();
    assert!(answer.blocked);
    assert_eq!(answer.blocked_peers.len(), 1);

    // A restart writes a new token: the old one no longer passes.
    node.stop().await;
    let node = net.start(0, vec![]).await;
    let stale = client(&node)
        .await
        .set_peer_blocked(with_token(request(), &token).expect("metadata"))
        .await
        .expect_err("refused with the last start's token");
    assert_eq!(stale.code(), Code::Unauthenticated, "{stale:?}");
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_over_the_size_cap_is_refused_as_resource_exhausted_and_the_node_goes_on() {
    let net = TestNet::new(&["eu"], 1);
    let node = net.start(0, vec![]).await;
    let oversized = vec![0u8; 2 << 20];
    let err = client(&node)
        .await
        .submit_attestation(pb::SubmitRequest { envelope: oversized })
        .await
        .expect_err("a 2 MiB request is refused");
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(err.message().contains("too large"), "{err:?}");
    // The escrow service has the same cap and the same answer.
    let err = credence_proto::v1::escrow_client::EscrowClient::connect(format!("http://{}", node.rpc_addr))
        .await
        .expect("connects")
        .submit_claim(pb::SubmitRequest {
            envelope: vec![0u8; 2 << 20],
        })
        .await
        .expect_err("a 2 MiB claim is refused");
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    // Just over the envelope cap but under the request cap: the envelope's
    // own check, INVALID_ARGUMENT.
    let err = client(&node)
        .await
        .submit_attestation(pb::SubmitRequest {
            envelope: vec![0u8; credence::core::limits::ENVELOPE_MAX_BYTES + 1],
        })
        .await
        .expect_err("an oversized envelope is refused");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    // The node still answers, on the same connection and on a new one.
    let mut c = client(&node).await;
    assert!(
        c.submit_attestation(pb::SubmitRequest {
            envelope: vec![0u8; 2 << 20]
        })
        .await
        .is_err()
    );
    c.status(pb::StatusRequest {}).await.expect("status after refusals");
    let id = submit_attestation(&node, net.attestation([3u8; 32], "after"))
        .await
        .expect("attest");
    assert_eq!(credential_status(&node, &id).await, "valid");
    node.stop().await;
}
