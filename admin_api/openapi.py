"""Writes the admin API's OpenAPI document to docs/openapi.json.

    python -m admin_api.openapi            regenerate docs/openapi.json
    python -m admin_api.openapi --check    exit 1 when the file is stale

The document does not depend on settings, Redis or the environment: the
app is built with a throwaway token and never connects.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from admin_api.app import create_app
from admin_api.settings import AdminSettings

DEFAULT_PATH = Path(__file__).resolve().parent.parent / "docs" / "openapi.json"


def openapi_document() -> dict[str, Any]:
    settings = AdminSettings(
        token="openapi-generation-only-token",
        redis_url="redis://127.0.0.1:1/0",
        dev=False,
        public_reads=False,
        _env_file=None,  # type: ignore[call-arg]
    )
    return create_app(settings).openapi()


def render(document: dict[str, Any]) -> str:
    return json.dumps(document, indent=2, sort_keys=False, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m admin_api.openapi", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=DEFAULT_PATH,
        help="where to write (default docs/openapi.json)",
    )
    parser.add_argument(
        "--check", action="store_true", help="only compare; exit 1 when the file differs"
    )
    args = parser.parse_args(argv)
    text = render(openapi_document())
    if args.check:
        current = args.output.read_text(encoding="utf-8") if args.output.exists() else ""
        if current != text:
            print(f"{args.output} is stale: run python -m admin_api.openapi", file=sys.stderr)
            return 1
        print(f"{args.output} is up to date")
        return 0
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text, encoding="utf-8")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
