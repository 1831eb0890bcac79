"""The client against a dev node it starts: attest, revoke, claim, every WatchClaim step, liquidity, errors."""

import os

import pytest

import credence_client as cc


def demo(client):
    return next(d for d in client.distributions() if d.name == "demo")


def test_status_reports_the_network_id_signatures_are_bound_to(client):
    status = client.status()
    assert len(bytes.fromhex(status.network_id)) == 32
    assert client.network_id().hex() == status.network_id


def test_an_attestation_reads_back_valid_and_its_revocation_revoked(node, client):
    _, subject = node.keygen("holder")
    issuer = node.keys / "issuer.key"
    aid = client.attest(issuer, subject, "demo", "passed KYC")
    assert len(aid) == 64 and client.credential(aid).status == "valid"
    rid = client.revoke(issuer, aid, "expired document")
    assert len(rid) == 64
    credential = client.credential(aid)
    assert credential.status == "revoked" and credential.revocation_reason == "expired document"


def test_a_claim_is_watched_through_every_step_in_order_each_with_its_time(node, client):
    key, subject = node.keygen("claimant-watch")
    aid = client.attest(node.keys / "issuer.key", subject, "demo", "member")
    dist = demo(client)
    spent_before = sum(r.spent for r in client.liquidity(dist.id).regions)
    claim = client.claim(key, dist.id, aid)
    assert len(claim.id) == 64 and claim.status in cc.LADDER
    steps = list(client.watch_claim(claim.id, timeout=60))
    assert [s.status for s in steps] == list(cc.LADDER), [s.status for s in steps]
    times = [getattr(s, s.status + "_at") for s in steps]
    assert all(t > 0 for t in times) and times == sorted(times), times
    # Each message is the claim as it stood at that step: later steps have no time yet.
    assert steps[0].provisional_at == 0 and steps[1].regional_at == 0 and steps[2].global_at == 0
    final = client.get_claim(claim.id)
    assert final.status == "global"
    assert [final.received_at, final.provisional_at, final.regional_at, final.global_at] == times
    spent = sum(r.spent for r in client.liquidity(dist.id).regions)
    assert spent == spent_before + dist.amount_per_claim
    # A watch opened after the end replays every step.
    assert [s.status for s in client.watch_claim(claim.id, timeout=30)] == list(cc.LADDER)


def test_a_second_claim_by_the_same_claimant_is_refused_with_a_typed_error(node, client):
    key, subject = node.keygen("claimant-twice")
    aid = client.attest(node.keys / "issuer.key", subject, "demo", "once")
    dist = demo(client)
    first = client.claim(key, dist.id, aid)
    list(client.watch_claim(first.id, timeout=60))
    with pytest.raises(cc.CredenceError):
        second = client.claim(key, dist.id, aid)
        # Refused at once or rejected later: either way it is never paid.
        steps = [s.status for s in client.watch_claim(second.id, timeout=60)]
        if steps[-1] == "rejected":
            raise cc.FailedPrecondition("rejected")


def test_bad_input_raises_credence_errors_before_anything_is_sent(node, client):
    issuer = node.keys / "issuer.key"
    _, subject = node.keygen("holder-bad")
    with pytest.raises(cc.InvalidArgument):
        client.attest(issuer, "abcd", "demo", "a 2-byte subject")
    with pytest.raises(cc.InvalidArgument):
        client.attest(issuer, subject, "x" * 65, "schema too long")
    with pytest.raises(cc.InvalidArgument):
        client.credential("zz")
    loose = node.dir / "loose.key"
    cc.write_key(loose)
    os.chmod(loose, 0o644)
    with pytest.raises(cc.KeyFileError, match="chmod 600"):
        client.attest(loose, subject, "demo", "x")
    with pytest.raises(cc.KeyFileError):
        cc.write_key(loose)


def test_the_node_answers_with_the_documented_error_classes(node, client):
    _, subject = node.keygen("holder-forged")
    issuer = cc.load_key(node.keys / "issuer.key")
    import credence_client.client as impl
    from credence_client import wire_pb2

    body = wire_pb2.Attestation(
        issuer=bytes(issuer.verify_key), subject=bytes.fromhex(subject), schema="demo",
        issued_at=impl.now_ms(), nonce=impl.nonce(),
    ).SerializeToString()
    good, _ = cc.seal(client.network_id(), issuer, cc.KIND["attestation"], body)
    # A flipped signature bit: UNAUTHENTICATED.
    signed = wire_pb2.Signed.FromString(good)
    signed.signature = bytes([signed.signature[0] ^ 1]) + signed.signature[1:]
    with pytest.raises(cc.Unauthenticated):
        client.submit("attestation", signed.SerializeToString())
    # Signed for another network: UNAUTHENTICATED too.
    other, _ = cc.seal(bytes(32), issuer, cc.KIND["attestation"], body)
    with pytest.raises(cc.Unauthenticated):
        client.submit("attestation", other)
    # A schema nobody was granted: refused, nothing stored.
    stranger = node.dir / "stranger.key"
    cc.write_key(stranger)
    with pytest.raises((cc.PermissionDenied, cc.NotFound)):
        client.attest(stranger, subject, "demo", "not an issuer of demo")
    # Not an envelope at all: INVALID_ARGUMENT.
    with pytest.raises(cc.InvalidArgument):
        client.submit("attestation", b"\xff\xff")
    with pytest.raises(cc.NotFound):
        client.liquidity("00" * 32)
