"""AdminSettings: env prefix, descriptions, and the refusal of weak tokens."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from admin_api.settings import AdminSettings, token_problem


def test_every_field_is_described() -> None:
    assert set(AdminSettings.model_fields) == {
        "listen",
        "redis_url",
        "redis_cluster",
        "token",
        "dev",
        "public_reads",
        "state_file",
        "log_level",
        "token_file",
        "redis_url_file",
        "tls_cert",
        "tls_key",
        "max_body_bytes",
        "header_timeout",
        "body_timeout",
        "keep_alive_timeout",
        "max_connections",
        "max_connections_per_address",
    }
    for name, field in AdminSettings.model_fields.items():
        assert field.description, name
    assert AdminSettings.model_fields["listen"].default == "127.0.0.1:8080"


@pytest.mark.parametrize(
    "token", ["", "changethis", "changeme", "secret", "short-token", "aaaaaaaaaaaaaaaaaaaa"]
)
def test_weak_tokens_are_refused(token: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LOOKASIDE_ADMIN_DEV", raising=False)
    monkeypatch.setenv("LOOKASIDE_ADMIN_TOKEN", token)
    with pytest.raises(ValidationError, match="the admin token"):
        AdminSettings()


def test_env_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOOKASIDE_ADMIN_TOKEN", "a-real-token-3f9c2b7e1d")
    monkeypatch.setenv("LOOKASIDE_ADMIN_LISTEN", "0.0.0.0:9000")
    monkeypatch.setenv("LOOKASIDE_ADMIN_PUBLIC_READS", "1")
    s = AdminSettings()
    assert s.token == "a-real-token-3f9c2b7e1d"
    assert s.host_port == ("0.0.0.0", 9000)
    assert s.public_reads is True
    assert "a-real-token" not in repr(s)


def test_dev_mode_generates_a_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LOOKASIDE_ADMIN_TOKEN", raising=False)
    monkeypatch.setenv("LOOKASIDE_ADMIN_DEV", "1")
    s = AdminSettings()
    assert s.token_generated
    assert token_problem(s.token) is None
    assert AdminSettings().token != s.token
    weak = AdminSettings(token="changeme")  # accepted, with a warning, in dev mode only
    assert weak.token == "changeme" and not weak.token_generated


@pytest.mark.parametrize(
    ("field", "value"), [("listen", "nohostport"), ("listen", "h:99999"), ("log_level", "loud")]
)
def test_bad_values_are_refused(field: str, value: str) -> None:
    with pytest.raises(ValidationError, match=field):
        AdminSettings(token="a-real-token-3f9c2b7e1d", **{field: value})
