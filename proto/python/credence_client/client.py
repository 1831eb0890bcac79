"""The client: signs locally, submits over gRPC, reads answers.

A node never sees a secret key: `attest`, `revoke` and `claim` build the body,
sign it with the key file's key under the node's network id (`Status.network_id`)
and submit the envelope.
"""

import secrets
import time
import urllib.parse

import grpc

from . import envelope
from .errors import CredenceError, InvalidArgument, Unavailable, from_rpc
from . import node_pb2, node_pb2_grpc, wire_pb2

# The node's limits (node/src/core/limits.rs); checked here too, so bad input
# is refused before it is signed.
SCHEMA_MAX_BYTES = 64
ATTESTATION_DATA_MAX_BYTES = 4 * 1024
REASON_MAX_BYTES = 512

# The ladder a claim climbs; `disputed` and `rejected` end it off the ladder.
LADDER = ("received", "provisional", "regional", "global")
FINAL = ("global", "disputed", "rejected")


def now_ms() -> int:
    return int(time.time() * 1000)


def nonce() -> int:
    """A fresh random u64 nonce: two otherwise equal objects get different ids."""
    return secrets.randbits(64)


def hex32(text, what) -> bytes:
    """32 bytes from 64 hex characters, or InvalidArgument naming `what`."""
    try:
        raw = bytes.fromhex(str(text).strip())
    except ValueError:
        raise InvalidArgument(f"{what} must be 64 hex characters, got {text!r}") from None
    if len(raw) != 32:
        raise InvalidArgument(f"{what} must be 32 bytes (64 hex characters), got {len(raw)} bytes")
    return raw


def _target(rpc_url):
    """(host:port, whether TLS) of an RPC URL such as http://127.0.0.1:7100."""
    url = urllib.parse.urlparse(rpc_url if "://" in rpc_url else "http://" + rpc_url)
    if url.scheme not in ("http", "https") or not url.hostname or not url.port:
        raise InvalidArgument(f"the RPC URL must look like http://HOST:PORT, got {rpc_url!r}")
    return f"{url.hostname}:{url.port}", url.scheme == "https"


class Client:
    """One node's gRPC API. `Client("http://127.0.0.1:7100")`."""

    def __init__(self, rpc_url: str, timeout: float = 30.0):
        self.target, tls = _target(rpc_url)
        self.timeout = timeout
        self._tls = tls
        self._connect()
        self._network_id = None

    def _connect(self):
        if self._tls:
            self.channel = grpc.secure_channel(self.target, grpc.ssl_channel_credentials())
        else:
            self.channel = grpc.insecure_channel(self.target)
        self.node = node_pb2_grpc.NodeStub(self.channel)
        self.escrow = node_pb2_grpc.EscrowStub(self.channel)

    def close(self):
        self.channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _call(self, method, request):
        try:
            return method(request, timeout=self.timeout)
        except grpc.RpcError as e:
            raise from_rpc(e) from None

    # Reads.

    def status(self):
        """Identity, network, mode, peers (StatusResponse)."""
        return self._call(self.node.Status, node_pb2.StatusRequest())

    def network_id(self) -> bytes:
        """The 32-byte id every signature on this network is bound to (Status.network_id)."""
        if self._network_id is None:
            self._network_id = hex32(self.status().network_id, "the node's network id")
        return self._network_id

    def credential(self, attestation_id: str):
        """A credential with its status (valid, revoked, expired, unknown) at the node's clock."""
        hex32(attestation_id, "the attestation id")
        return self._call(self.node.GetCredential, node_pb2.GetCredentialRequest(id=attestation_id))

    def distributions(self):
        return list(self._call(self.escrow.ListDistributions, node_pb2.ListDistributionsRequest()).distributions)

    def distribution(self, distribution_id: str):
        hex32(distribution_id, "the distribution id")
        for d in self.distributions():
            if d.id == distribution_id:
                return d
        raise CredenceError(f"the node knows no distribution {distribution_id}")

    def get_claim(self, claim_id: str):
        """A claim's status now (ClaimStatus: .status, .received_at … .global_at)."""
        hex32(claim_id, "the claim id")
        return self._call(self.escrow.GetClaim, node_pb2.GetClaimRequest(id=claim_id))

    def liquidity(self, distribution_id: str):
        """Escrow, spent, pending and available per region (.regions[]) and bucket."""
        hex32(distribution_id, "the distribution id")
        return self._call(self.escrow.GetLiquidity, node_pb2.GetLiquidityRequest(distribution_id=distribution_id))

    # Submissions.

    def submit(self, kind: str, envelope_bytes: bytes):
        """Submits an encoded Signed envelope of `kind` (attestation, revocation, claim,
        distribution, rebalance); returns the node's answer."""
        methods = {
            "attestation": self.node.SubmitAttestation,
            "revocation": self.node.SubmitRevocation,
            "claim": self.escrow.SubmitClaim,
            "distribution": self.escrow.SubmitDistribution,
            "rebalance": self.escrow.SubmitRebalance,
        }
        if kind not in methods:
            raise InvalidArgument(f"clients submit {sorted(methods)}, not {kind!r}")
        return self._call(methods[kind], node_pb2.SubmitRequest(envelope=envelope_bytes))

    def _seal(self, key_path, kind, message):
        key = envelope.load_key(key_path)
        return envelope.seal(self.network_id(), key, envelope.KIND[kind], message.SerializeToString())

    def attest(self, key_path, subject_hex: str, schema: str, data="", expires_in_s: int = 0) -> str:
        """Signs an attestation with the issuer's key file and submits it; returns its id (64 hex)."""
        key = envelope.load_key(key_path)
        subject = hex32(subject_hex, "the subject (the credential holder's public key)")
        data = data.encode() if isinstance(data, str) else bytes(data)
        if not schema or len(schema.encode()) > SCHEMA_MAX_BYTES:
            raise InvalidArgument(f"the schema must be 1 to {SCHEMA_MAX_BYTES} bytes")
        if len(data) > ATTESTATION_DATA_MAX_BYTES:
            raise InvalidArgument(f"attestation data is {len(data)} bytes, over {ATTESTATION_DATA_MAX_BYTES}")
        issued_at = now_ms()
        body = wire_pb2.Attestation(
            issuer=bytes(key.verify_key),
            subject=subject,
            schema=schema,
            data=data,
            issued_at=issued_at,
            expires_at=issued_at + expires_in_s * 1000 if expires_in_s else 0,
            nonce=nonce(),
        )
        raw, _ = envelope.seal(self.network_id(), key, envelope.KIND["attestation"], body.SerializeToString())
        return self.submit("attestation", raw).id

    def revoke(self, key_path, attestation_id: str, reason: str = "") -> str:
        """Revokes an attestation (its issuer's key file only); returns the revocation's id."""
        key = envelope.load_key(key_path)
        target = hex32(attestation_id, "the attestation id")
        if len(reason.encode()) > REASON_MAX_BYTES:
            raise InvalidArgument(f"the reason is over {REASON_MAX_BYTES} bytes")
        body = wire_pb2.Revocation(
            issuer=bytes(key.verify_key), attestation_id=target, revoked_at=now_ms(), reason=reason
        )
        raw, _ = envelope.seal(self.network_id(), key, envelope.KIND["revocation"], body.SerializeToString())
        return self.submit("revocation", raw).id

    def claim(self, key_path, distribution_id: str, attestation_id: str, recipient_hex: str = None):
        """Claims once from a distribution with the claimant's key file, presenting its attestation.

        Returns the node's ClaimStatus (.id, .status); the amount is the distribution's amount per claim."""
        key = envelope.load_key(key_path)
        dist = hex32(distribution_id, "the distribution id")
        attestation = hex32(attestation_id, "the attestation id")
        recipient = hex32(recipient_hex, "the recipient") if recipient_hex else b""
        amount = self.distribution(distribution_id).amount_per_claim
        body = wire_pb2.Claim(
            distribution_id=dist,
            claimant=bytes(key.verify_key),
            attestation_id=attestation,
            amount=amount,
            recipient=recipient,
            created_at=now_ms(),
            nonce=nonce(),
        )
        raw, _ = envelope.seal(self.network_id(), key, envelope.KIND["claim"], body.SerializeToString())
        return self.submit("claim", raw)

    def watch_claim(self, claim_id: str, timeout: float = 600.0, reconnect_for: float = 60.0):
        """Yields a claim's steps in order (ClaimStatus with .status and that step's .<status>_at),
        until a final one (global, disputed, rejected) or `timeout` seconds.

        A node sends every step a claim has reached, from `received`, on each stream. When the
        stream breaks (the node restarted), the watch is opened again for up to `reconnect_for`
        seconds, and steps already yielded are not yielded again."""
        hex32(claim_id, "the claim id")
        deadline = time.monotonic() + timeout
        seen = []
        broken_since = None
        while time.monotonic() < deadline:
            try:
                stream = self.escrow.WatchClaim(
                    node_pb2.GetClaimRequest(id=claim_id), timeout=max(0.1, deadline - time.monotonic())
                )
                for step in stream:
                    broken_since = None
                    if step.status == "unknown" or step.status in seen:
                        continue
                    seen.append(step.status)
                    yield step
                    if step.status in FINAL:
                        return
                return
            except grpc.RpcError as e:
                error = from_rpc(e)
                if not isinstance(error, Unavailable):
                    raise error from None
                broken_since = broken_since or time.monotonic()
                if time.monotonic() - broken_since > reconnect_for:
                    raise error from None
                time.sleep(0.2)
        raise CredenceError(f"claim {claim_id} reached no final status within {timeout} s (last: {seen[-1:]})")
