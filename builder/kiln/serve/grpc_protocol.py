"""The Open Inference Protocol's gRPC messages and service stubs, compiled from the published
.proto (kiln/serve/proto) with grpcio-tools when a server first needs them, into a cache folder
keyed by the proto's bytes and the compiler's version.

Why not check the generated Python in: this project commits no generated code but the CRDs,
and generated protobuf modules are tied to the protobuf runtime they were made for; compiling
at start takes about 0.1 s, once per cache folder."""

from __future__ import annotations

import hashlib
import importlib
import os
import shutil
import sys
import tempfile
from pathlib import Path
from types import ModuleType

PROTO = Path(__file__).with_name("proto") / "grpc_predict_v2.proto"
MODULE = "grpc_predict_v2"


def _cache_root() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "kiln" / "grpc"


def compiled(cache: Path | None = None) -> tuple[ModuleType, ModuleType]:
    """(messages, service stubs), compiling the .proto unless this version is cached."""
    from grpc_tools import protoc
    from grpc_tools.grpc_version import VERSION as TOOLS_VERSION

    key = hashlib.sha256(PROTO.read_bytes() + TOOLS_VERSION.encode()).hexdigest()[:16]
    folder = (cache or _cache_root()) / key
    if not (folder / f"{MODULE}_pb2_grpc.py").exists():
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".grpc-", dir=folder.parent))
        include = str(Path(protoc.__file__).parent / "_proto")
        code = protoc.main(
            [
                "protoc",
                f"-I{PROTO.parent}",
                f"-I{include}",
                f"--python_out={staging}",
                f"--grpc_python_out={staging}",
                str(PROTO),
            ]
        )
        if code != 0:
            raise RuntimeError(f"grpc_tools.protoc failed on {PROTO} (exit {code})")
        try:
            staging.rename(folder)
        except OSError:  # another server compiled it first
            shutil.rmtree(staging, ignore_errors=True)
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))  # the stubs import the messages by module name
    return importlib.import_module(f"{MODULE}_pb2"), importlib.import_module(f"{MODULE}_pb2_grpc")
