"""The client signs and names objects exactly as the test vectors (proto/testvectors) say."""

import json
import pathlib

import nacl.signing
import pytest

import credence_client as cc
from credence_client import wire_pb2

VECTORS = sorted((pathlib.Path(__file__).resolve().parents[2] / "testvectors").glob("*.json"))
MESSAGES = {
    "attestation": wire_pb2.Attestation, "revocation": wire_pb2.Revocation, "issuer_grant": wire_pb2.IssuerGrant,
    "distribution": wire_pb2.Distribution, "claim": wire_pb2.Claim, "batch": wire_pb2.Batch,
    "vote": wire_pb2.Vote, "freeze": wire_pb2.Freeze, "heartbeat": wire_pb2.Heartbeat,
    "evidence": wire_pb2.Evidence, "rebalance": wire_pb2.Rebalance,
}


def load(path):
    return json.loads(path.read_text())


def test_there_is_a_vector_for_every_kind():
    kinds = {load(p)["kind_value"] for p in VECTORS}
    assert kinds == set(cc.KIND.values())


@pytest.mark.parametrize("path", VECTORS, ids=lambda p: p.stem)
def test_digest_signature_envelope_and_id_match_the_vector(path):
    v = load(path)
    kind = cc.KIND[path.stem]
    assert v["kind_value"] == kind
    network, body = bytes.fromhex(v["network_id_hex"]), bytes.fromhex(v["body_hex"])
    key = nacl.signing.SigningKey(bytes.fromhex(v["secret_key_hex"]))
    assert bytes(key.verify_key).hex() == v["public_key_hex"]
    assert cc.digest(network, kind, body).hex() == v["digest_hex"] == v["object_id_hex"]
    envelope, object_id = cc.seal(network, key, kind, body)
    assert envelope.hex() == v["envelope_hex"]
    assert object_id.hex() == v["object_id_hex"]
    signed, checked = cc.verify(network, envelope)
    assert signed.signature.hex() == v["signature_hex"] and checked == object_id
    # The body decodes as its kind's message and encodes back to the same bytes.
    message = MESSAGES[path.stem].FromString(body)
    assert message.SerializeToString() == body


@pytest.mark.parametrize("path", VECTORS, ids=lambda p: p.stem)
def test_a_changed_byte_or_another_network_does_not_verify(path):
    v = load(path)
    network, envelope = bytes.fromhex(v["network_id_hex"]), bytearray.fromhex(v["envelope_hex"])
    with pytest.raises(ValueError):
        cc.verify(bytes(32), bytes(envelope))
    envelope[-1] ^= 1
    with pytest.raises(ValueError):
        cc.verify(network, bytes(envelope))


def test_the_client_builds_the_vector_bodies_from_their_fields():
    """The fields of the credential and claim vectors, set on the messages, give the vectors' bodies."""
    for name in ("attestation", "revocation", "claim", "rebalance", "issuer_grant"):
        v = load(next(p for p in VECTORS if p.stem == name))
        message = MESSAGES[name]()
        for field, value in v["body"].items():
            kind = message.DESCRIPTOR.fields_by_name[field].type
            setattr(message, field, bytes.fromhex(value) if kind == message.DESCRIPTOR.fields_by_name[field].TYPE_BYTES else value)
        assert message.SerializeToString().hex() == v["body_hex"], name
