"""A dev node for the suite: `credence node --dev` in a temporary directory, on free ports.

The binary is $CREDENCE_BIN, or target/release/credence of the repository this
file is in (build it first: cargo build --release)."""

import os
import pathlib
import socket
import subprocess
import time

import pytest

import credence_client as cc

REPO = pathlib.Path(__file__).resolve().parents[3]
# How long the dev node has to answer its first Status call.
NODE_START_TIMEOUT_S = 60


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class DevNode:
    def __init__(self, tmp):
        self.binary = os.environ.get("CREDENCE_BIN") or str(REPO / "target" / "release" / "credence")
        if not os.access(self.binary, os.X_OK):
            pytest.fail(f"no node binary at {self.binary}: run cargo build --release, or set CREDENCE_BIN")
        self.dir = tmp
        self.keys = tmp / "dev" / "keys"
        self.rpc = f"http://127.0.0.1:{free_port()}"
        self.http = f"127.0.0.1:{free_port()}"
        self.log = open(tmp / "node.log", "w")
        self.process = None

    def start(self):
        self.process = subprocess.Popen(
            [self.binary, "node", "--dev", "--data-dir", str(self.dir / "dev"),
             "--rpc-listen", self.rpc.removeprefix("http://"), "--http-listen", self.http],
            stdout=self.log, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + NODE_START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"the dev node exited with {self.process.returncode}; see {self.dir / 'node.log'}")
            try:
                with cc.Client(self.rpc, timeout=2) as c:
                    c.status()
                return
            except cc.CredenceError:
                time.sleep(0.2)
        pytest.fail("the dev node did not answer in time")

    def stop(self):
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def keygen(self, name):
        path = self.dir / f"{name}.key"
        key = cc.write_key(path)
        return path, bytes(key.verify_key).hex()


@pytest.fixture(scope="session")
def node(tmp_path_factory):
    n = DevNode(tmp_path_factory.mktemp("credence"))
    n.start()
    yield n
    n.stop()
    n.log.close()


@pytest.fixture
def client(node):
    with cc.Client(node.rpc) as c:
        yield c
