"""Regenerates the Python code for every .proto under protos/.

    python -m lookaside.codegen            # write into the source tree
    python -m lookaside.codegen --check    # exit 1 when checked-in code is stale

The proto paths mirror the Python package (protos/lookaside_proto/... ->
lookaside_proto/...), so generated imports are absolute imports that work
from an installed package, and nothing lands in a top-level `grpc` package.
"""

from __future__ import annotations

import argparse
import filecmp
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"
OUT_PACKAGE = "lookaside_proto"


def proto_files() -> list[Path]:
    return sorted(PROTO_ROOT.rglob("*.proto"))


def generate(out_dir: Path) -> list[Path]:
    """Runs protoc into out_dir and returns the generated files."""
    import grpc_tools
    from grpc_tools import protoc

    wkt = Path(grpc_tools.__file__).parent / "_proto"
    files = [str(p.relative_to(PROTO_ROOT)) for p in proto_files()]
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"-I{wkt}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *files,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    generated = []
    for path in sorted((out_dir / OUT_PACKAGE).rglob("*")):
        if path.suffix in (".py", ".pyi"):
            generated.append(path)
    # Make every directory a regular package.
    for directory in {p.parent for p in generated}:
        d = directory
        while d != out_dir:
            init = d / "__init__.py"
            if not init.exists():
                init.write_text("")
            d = d.parent
    return sorted((out_dir / OUT_PACKAGE).rglob("*.py*"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare, do not write")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        tmp_dir = Path(tmp)
        fresh = generate(tmp_dir)
        stale = []
        for path in fresh:
            rel = path.relative_to(tmp_dir)
            target = ROOT / rel
            if not target.exists() or not filecmp.cmp(path, target, shallow=False):
                stale.append(rel)
                if not args.check:
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(path.read_bytes())
        if args.check and stale:
            for rel in stale:
                print(f"stale generated file: {rel}", file=sys.stderr)
            print("run `make protos` (python -m lookaside.codegen) to regenerate", file=sys.stderr)
            return 1
        if not args.check:
            print(f"generated {len(fresh)} files, {len(stale)} changed")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
