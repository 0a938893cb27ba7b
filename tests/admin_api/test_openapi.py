"""docs/openapi.json is the app's document, and its operation ids are clean."""

from __future__ import annotations

import json
import re

from admin_api.openapi import DEFAULT_PATH, main, openapi_document, render


def test_checked_in_document_matches_the_app() -> None:
    assert DEFAULT_PATH.exists(), "docs/openapi.json is missing: run python -m admin_api.openapi"
    assert DEFAULT_PATH.read_text(encoding="utf-8") == render(openapi_document()), (
        "docs/openapi.json is stale: run python -m admin_api.openapi"
    )
    assert main(["--check"]) == 0


def test_check_mode_catches_drift(tmp_path) -> None:  # type: ignore[no-untyped-def]
    stale = tmp_path / "openapi.json"
    stale.write_text(json.dumps({"openapi": "3.1.0"}))
    assert main(["--check", "--output", str(stale)]) == 1
    assert main(["--output", str(stale)]) == 0
    assert main(["--check", "--output", str(stale)]) == 0


def test_operation_ids_are_clean() -> None:
    ids = {op["operationId"] for ops in openapi_document()["paths"].values() for op in ops.values()}
    assert {
        "pools-list",
        "pools-create",
        "pools-read",
        "pools-replace",
        "pools-update",
        "pools-delete",
        "backends-list",
        "backends-register",
        "backends-get",
        "backends-set-weight",
        "backends-drain",
        "backends-undrain",
        "backends-disable",
        "backends-enable",
        "backends-reinstate",
        "backends-remove",
        "backend-tokens-list",
        "backend-tokens-mint",
        "backend-tokens-revoke",
        "load-read",
        "events-list",
        "signals-read",
        "state-export",
        "state-apply",
        "streams-read",
        "health-live",
        "health-ready",
    } == ids
    assert all(re.fullmatch(r"[a-z]+(-[a-z]+)+", i) for i in ids)


def test_every_api_operation_documents_its_errors() -> None:
    doc = openapi_document()
    for path, ops in doc["paths"].items():
        if not path.startswith("/api/v1/"):
            continue
        for method, op in ops.items():
            codes = set(op["responses"])
            assert {"401", "422", "503"} <= codes, (method, path)
            assert op["security"] == [{"bearerAuth": []}], (method, path)
            if "{pool}" in path:
                assert "404" in codes, (method, path)
