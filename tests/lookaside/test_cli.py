"""The `lookaside` command: bad flags exit 2 naming the flag and its
environment variable, before anything starts; a port it cannot bind exits
1 with a one-line reason."""

from __future__ import annotations

import socket

import pytest

from lookaside.cli import main


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["up", "--admin-token", "short"], "--admin-token (env LOOKASIDE_LAB_ADMIN_TOKEN)"),
        (["up", "--admin-token", "changethis-changethis"], "looks like a default"),
        (["balancer", "--listen", "nope"], "listen 'nope' is not host:port"),
        (["balancer", "--metrics-listen", "x:y"], "--metrics-listen (env"),
        (["balancer", "--max-eject-share", "2"], "--max-eject-share"),
    ],
)
def test_bad_flags_exit_2_and_say_why(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_balancer_that_cannot_bind_exits_1(
    redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    address = f"127.0.0.1:{taken.getsockname()[1]}"
    try:
        code = main(
            ["balancer", "--listen", address, "--redis-url", redis_url, "--metrics-listen", ""]
        )
    finally:
        taken.close()
    assert code == 1
    assert f"cannot listen on {address}: the address is in use" in capsys.readouterr().err
