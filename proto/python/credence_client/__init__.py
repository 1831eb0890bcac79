"""credence-client: a Python client for Credence nodes.

    import credence_client as cc
    c = cc.Client("http://127.0.0.1:7100")
    aid = c.attest("issuer.key", subject_hex, "demo", "passed KYC")
    claim = c.claim("claimant.key", distribution_id, aid)
    for step in c.watch_claim(claim.id):
        print(step.status, getattr(step, step.status + "_at"))

Signing and ids follow PROTOCOL.md; every failure is a CredenceError subclass.
"""

from .client import FINAL, LADDER, Client, hex32
from .envelope import KIND, digest, load_key, seal, verify, write_key
from .errors import (
    AlreadyExists,
    CredenceError,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    KeyFileError,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)

__all__ = [
    "Client", "FINAL", "LADDER", "KIND", "digest", "seal", "verify", "load_key", "write_key", "hex32",
    "CredenceError", "InvalidArgument", "Unauthenticated", "PermissionDenied", "NotFound", "AlreadyExists",
    "FailedPrecondition", "ResourceExhausted", "Unavailable", "DeadlineExceeded", "KeyFileError",
]
