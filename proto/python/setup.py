"""Builds credence-client: the gRPC and protobuf modules are generated here from
the node's own .proto files (proto/proto/credence/v1 in the repository), never
committed, so the client cannot drift from the node's API."""

import pathlib
import re

from setuptools import Command, setup
from setuptools.command.build_py import build_py

HERE = pathlib.Path(__file__).resolve().parent
PROTO_ROOT = HERE.parent / "proto"
PROTO_FILES = ["credence/v1/wire.proto", "credence/v1/node.proto"]
OUT = HERE / "credence_client"


def generate():
    """Runs protoc (from grpcio-tools) over the .proto files into credence_client/ (*_pb2*.py)."""
    missing = [f for f in PROTO_FILES if not (PROTO_ROOT / f).is_file()]
    if missing:
        raise SystemExit(
            f"cannot find {missing} under {PROTO_ROOT}: build credence-client from the repository "
            "(pip install ./proto/python), not from a copy of proto/python alone"
        )
    from grpc_tools import protoc
    import grpc_tools

    include = pathlib.Path(grpc_tools.__file__).parent / "_proto"
    for name in PROTO_FILES:
        args = [
            "grpc_tools.protoc",
            f"-I{PROTO_ROOT / 'credence' / 'v1'}",
            f"-I{include}",
            f"--python_out={OUT}",
            f"--grpc_python_out={OUT}",
            str(PROTO_ROOT / name),
        ]
        if protoc.main(args) != 0:
            raise SystemExit(f"protoc failed on {name}")
    # protoc writes top-level imports ("import node_pb2"); inside the package they are relative.
    for path in OUT.glob("*_pb2*.py"):
        text = path.read_text()
        fixed = re.sub(r"^import (\w+_pb2) as", r"from . import \1 as", text, flags=re.M)
        path.write_text(fixed)


class BuildPy(build_py):
    def run(self):
        generate()
        super().run()


class GenerateProto(Command):
    """`python setup.py generate_proto`: the stubs in place, for working on the client itself."""

    user_options = []

    def initialize_options(self):
        pass

    def finalize_options(self):
        pass

    def run(self):
        generate()


setup(cmdclass={"build_py": BuildPy, "generate_proto": GenerateProto})
