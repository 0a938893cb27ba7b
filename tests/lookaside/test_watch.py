"""`lookaside watch` on a real BalanceLoad stream from a real balancer."""

from __future__ import annotations

import argparse
import io
import json
import threading

import pytest

from lookaside.watch import Update, render, watch
from lookaside_registry.model import DropRate, PoolConfig
from tests.support import (
    BalancerHandle,
    RouteGuideBackend,
    register_all,
    start_backends,
    wait_until,
)


def test_watch_shows_each_list_and_what_changed(
    balancer: BalancerHandle, backends: list[RouteGuideBackend], pool_name: str
) -> None:
    balancer.run(balancer.store.put_pool(PoolConfig(name=pool_name), actor="test"))
    ids = register_all(balancer, pool_name, start_backends(backends, 2))
    out = io.StringIO()
    args = argparse.Namespace(
        pool=pool_name, balancer=balancer.address, name="", count=4, timeout=20.0, output="table"
    )
    codes: list[int] = []
    thread = threading.Thread(target=lambda: codes.append(watch(args, out)), daemon=True)
    thread.start()
    wait_until(lambda: "list of 2 entries" in out.getvalue(), timeout=10)

    heavy_port, heavy = next(iter(ids.items()))
    balancer.run(
        balancer.store.update_backend(
            pool_name, heavy, actor="test", kind="weight_changed", weight=3
        )
    )
    wait_until(lambda: "list of 4 entries" in out.getvalue(), timeout=10)
    drops = PoolConfig(name=pool_name, drops=(DropRate("overload", 200),))
    balancer.run(balancer.store.put_pool(drops, actor="test"))
    wait_until(lambda: "drop overload" in out.getvalue(), timeout=10)
    fallback = PoolConfig(name=pool_name, fallback=True)
    balancer.run(balancer.store.put_pool(fallback, actor="test"))
    thread.join(timeout=20)
    assert codes == [0], out.getvalue()

    text = out.getvalue()
    first, second, third = text.split(" list of ")[1:4]
    assert first.count("  + 127.0.0.1:") == 2
    [changed] = [line for line in second.splitlines() if f"127.0.0.1:{heavy_port}" in line]
    assert changed.lstrip().startswith("~") and "weight 3" in changed
    assert "drop overload" in third
    assert "FALLBACK" in text.split(" list of ")[-1]


def test_render_marks_gone_backends_and_fallback() -> None:
    before = Update(1.0, "list", {("10.0.0.1:80", "a.e"): 1, ("10.0.0.2:80", "b.e"): 1}, length=2)
    after = Update(2.0, "list", {("10.0.0.1:80", "a.e"): 1}, length=1)
    lines = render(after, before).splitlines()
    assert any(line.startswith("  - 10.0.0.2:80") for line in lines)
    assert "FALLBACK" in render(Update(3.0, "fallback"), after)
    assert "every call fails" in render(Update(4.0, "list", {}, length=0), after)


def test_watch_json_and_a_bad_address(
    balancer: BalancerHandle, backends: list[RouteGuideBackend], pool_name: str, capsys
) -> None:  # type: ignore[no-untyped-def]
    import json

    from lookaside.cli import main

    balancer.run(balancer.store.put_pool(PoolConfig(name=pool_name), actor="test"))
    register_all(balancer, pool_name, start_backends(backends, 1))
    code = main(["watch", pool_name, "--balancer", balancer.address, "--count", "1", "-o", "json"])
    assert code == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [u["kind"] for u in lines] == ["initial", "list"]
    assert lines[1]["servers"][0]["weight"] == 1 and lines[1]["length"] == 1
    assert main(["watch", pool_name, "--balancer", "nohostport"]) == 2


def test_watch_on_an_unknown_pool_says_so(
    balancer: BalancerHandle, pool_name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from lookaside.cli import main

    code = main(["watch", pool_name, "--balancer", balancer.address, "--timeout", "60"])
    assert code == 1
    err = capsys.readouterr().err
    assert f"pool {pool_name!r} does not exist on {balancer.address}" in err
    assert "--wait" in err and len(err.strip().splitlines()) == 1


def test_watch_with_wait_follows_a_pool_created_later(
    balancer: BalancerHandle, backends: list[RouteGuideBackend], pool_name: str
) -> None:
    out = io.StringIO()
    args = argparse.Namespace(
        pool=pool_name,
        balancer=balancer.address,
        name="",
        count=1,
        timeout=20.0,
        output="table",
        wait=True,
    )
    codes: list[int] = []
    thread = threading.Thread(target=lambda: codes.append(watch(args, out)), daemon=True)
    thread.start()
    wait_until(lambda: "does not exist" in out.getvalue(), timeout=20)
    register_all(balancer, pool_name, start_backends(backends, 1))  # creates the pool
    thread.join(timeout=30)
    assert codes == [0], out.getvalue()
    assert "list of 1 entries" in out.getvalue()


def test_watch_takes_the_balancer_from_the_context(
    balancer: BalancerHandle,
    backends: list[RouteGuideBackend],
    pool_name: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from lookaside import context
    from lookaside.cli import main

    assert main(["watch", pool_name, "--count", "1"]) == 2
    err = capsys.readouterr().err
    assert "no balancer given: pass --balancer (env LOOKASIDE_WATCH_BALANCER)" in err
    register_all(balancer, pool_name, start_backends(backends, 1))
    context.save(context.Context(balancer=balancer.address))
    assert main(["watch", pool_name, "--count", "1", "-o", "json"]) == 0
    kinds = [json.loads(line)["kind"] for line in capsys.readouterr().out.splitlines()]
    assert kinds == ["initial", "list"]
    assert main(["watch", pool_name, "--ca", "/nonexistent.pem"]) == 2
    assert "--ca '/nonexistent.pem' cannot be read" in capsys.readouterr().err
