"""Typed errors: every failure the client reports is a CredenceError.

A node's answer maps to the class named after its gRPC status code (PROTOCOL.md,
"Errors"); input the client can judge itself (a malformed id, a 2-byte subject,
a key file others can read) is refused before anything is sent, with the same
classes.
"""

import grpc


class CredenceError(Exception):
    """Base class. `code` is the gRPC status code name ("INVALID_ARGUMENT", …)."""

    code = "UNKNOWN"

    def __init__(self, message):
        super().__init__(message)
        self.message = message


class InvalidArgument(CredenceError):
    """Malformed or oversized input: a bad id, a subject that is not 32 bytes, a body that does not decode."""

    code = "INVALID_ARGUMENT"


class Unauthenticated(CredenceError):
    """A signature that does not verify (forged, corrupted, or signed for another network)."""

    code = "UNAUTHENTICATED"


class PermissionDenied(CredenceError):
    """A signer without the right: an issuer not granted the schema, a revocation by anyone but the issuer."""

    code = "PERMISSION_DENIED"


class NotFound(CredenceError):
    """An unknown schema, distribution or claim."""

    code = "NOT_FOUND"


class AlreadyExists(CredenceError):
    code = "ALREADY_EXISTS"


class FailedPrecondition(CredenceError):
    """The object cannot be accepted in the node's current state (a claim that can never be paid, say)."""

    code = "FAILED_PRECONDITION"


class ResourceExhausted(CredenceError):
    """The node is overloaded, or the request is over a size cap: retry later, or send less."""

    code = "RESOURCE_EXHAUSTED"


class Unavailable(CredenceError):
    """The node cannot be reached, or is shutting down."""

    code = "UNAVAILABLE"


class DeadlineExceeded(CredenceError):
    code = "DEADLINE_EXCEEDED"


class KeyFileError(CredenceError):
    """A key file that cannot be read, does not hold a key, or is readable by group or others."""

    code = "INVALID_ARGUMENT"


_BY_CODE = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.OUT_OF_RANGE: InvalidArgument,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExists,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
}


def from_rpc(error):
    """The CredenceError for a grpc.RpcError."""
    code = error.code() if hasattr(error, "code") else None
    details = error.details() if hasattr(error, "details") else str(error)
    cls = _BY_CODE.get(code, CredenceError)
    out = cls(details or str(code))
    if cls is CredenceError and code is not None:
        out.code = code.name
    return out
