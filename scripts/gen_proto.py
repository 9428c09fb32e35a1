"""Regenerate serve_app/proto/*_pb2*.py from serveflow.proto with grpcio-tools.

Run from anywhere: ``python scripts/gen_proto.py``. ``--check`` regenerates into
a temporary folder and exits non-zero if the committed files differ.
"""

from __future__ import annotations

import filecmp
import pathlib
import shutil
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parents[1]
PROTO = pathlib.Path("serve_app/proto/serveflow.proto")
OUTPUTS = ("serveflow_pb2.py", "serveflow_pb2.pyi", "serveflow_pb2_grpc.py")


def generate(out_root: pathlib.Path) -> None:
    from grpc_tools import protoc

    args = [
        "protoc",
        f"-I{ROOT}",
        f"--python_out={out_root}",
        f"--pyi_out={out_root}",
        f"--grpc_python_out={out_root}",
        str(ROOT / PROTO),
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")


def main() -> int:
    if "--check" in sys.argv:
        with tempfile.TemporaryDirectory() as tmp:
            generate(pathlib.Path(tmp))
            stale = [n for n in OUTPUTS if not filecmp.cmp(pathlib.Path(tmp) / PROTO.parent / n, ROOT / PROTO.parent / n, shallow=False)]
        if stale:
            print(f"generated files are stale: {stale}; run python scripts/gen_proto.py")
            return 1
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        generate(pathlib.Path(tmp))
        for name in OUTPUTS:
            shutil.copy(pathlib.Path(tmp) / PROTO.parent / name, ROOT / PROTO.parent / name)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
