"""Signed envelopes exactly as PROTOCOL.md specifies them, and key files in the node's format.

    digest    = blake3("credence/v1" || network_id (32 bytes) || kind (u32 LE) || body)
    signature = ed25519(secret, digest); object id = digest
    envelope  = Signed{kind = 1, body = 2, signer = 3, signature = 4} (protobuf)

The body is the protobuf encoding of the kind's message, hashed as sent: a
node never re-encodes it.
"""

import os
import stat

import blake3
import nacl.signing

from .errors import KeyFileError
from . import wire_pb2

DOMAIN = b"credence/v1"

# Wire values of wire.proto's Kind enum.
KIND = {
    name.removeprefix("KIND_").lower(): value
    for name, value in wire_pb2.Kind.items()
    if value > 0
}


def digest(network_id: bytes, kind: int, body: bytes) -> bytes:
    """The 32 bytes that are signed and that name the object."""
    if len(network_id) != 32:
        raise ValueError("a network id is 32 bytes")
    return blake3.blake3(DOMAIN + network_id + int(kind).to_bytes(4, "little") + body).digest()


def seal(network_id: bytes, key: nacl.signing.SigningKey, kind: int, body: bytes):
    """(encoded Signed envelope, object id) of `body` signed by `key`."""
    object_id = digest(network_id, kind, body)
    signature = key.sign(object_id).signature
    signed = wire_pb2.Signed(kind=kind, body=body, signer=bytes(key.verify_key), signature=signature)
    return signed.SerializeToString(), object_id


def verify(network_id: bytes, envelope: bytes):
    """Decodes an envelope and checks its signature; returns (Signed, object id) or raises ValueError."""
    signed = wire_pb2.Signed.FromString(envelope)
    object_id = digest(network_id, signed.kind, signed.body)
    try:
        nacl.signing.VerifyKey(signed.signer).verify(object_id, signed.signature)
    except Exception as e:  # nacl raises BadSignatureError, or ValueError for a malformed key
        raise ValueError(f"the signature does not verify: {e}") from None
    return signed, object_id


def load_key(path) -> nacl.signing.SigningKey:
    """A key file as the node writes it: 64 hex characters (an ed25519 secret), mode 0600.

    Like the node, refuses a file that group or others can read."""
    path = os.fspath(path)
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
        text = open(path, encoding="ascii").read().strip()
    except (OSError, UnicodeDecodeError) as e:
        raise KeyFileError(f"cannot read key file {path}: {e}") from None
    if mode & 0o077:
        raise KeyFileError(
            f"key file {path} is readable by group or others (mode {mode:04o}); fix it with: chmod 600 {path}"
        )
    try:
        secret = bytes.fromhex(text)
    except ValueError:
        secret = b""
    if len(secret) != 32:
        raise KeyFileError(f"key file {path} does not hold a key: expected 64 hex characters (an ed25519 secret)")
    return nacl.signing.SigningKey(secret)


def write_key(path, key: nacl.signing.SigningKey = None) -> nacl.signing.SigningKey:
    """Writes a new key file (mode 0600, refusing to overwrite one); returns the key."""
    key = key or nacl.signing.SigningKey.generate()
    path = os.fspath(path)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise KeyFileError(f"key file {path} already exists; choose a new path or remove it first") from None
    with os.fdopen(fd, "w") as f:
        f.write(bytes(key).hex() + "\n")
    return key
