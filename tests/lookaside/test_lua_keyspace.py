"""The in-memory keyspace that MemoryStore runs the registry's scripts in
(lookaside_registry.lua_keyspace) answers as a real redis-server does: the
same script gives the same reply, the same cjson text and the same stored
values on both."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from lookaside_registry.lua_keyspace import LuaKeyspace, ScriptError

NOW_MS = 1_700_000_000_123

# Scripts whose reply must be the same text on both.
EXACT = [
    "return {1, 2.9, -2.9, 'x', false, true, {ok = 'OK'}, {3, {4}}}",
    "return {1, nil, 3}",
    "return 7.99",
    "return false",
    "return true",
    "return 'n=' .. 1700000000123 .. ' f=' .. 0.5 .. ' h=' .. (10 / 2) .. ' ' .. tostring(2^53)",
    "return cjson.encode({1, 2.5, 'a/b\"\\n\\1', {}, {x = 1}, true, cjson.null})",
    "return cjson.encode({0.1 + 0.2, 1e15, 2^53, -0.5, 100 / 3, 1700000000123})",
    "return cjson.encode({[1] = 'a', [3] = 'c'})",
    "return cjson.encode(cjson.decode('[1,null,{\"a\":[]},[],1.5e300]'))",
    "return cjson.encode('x') .. cjson.encode(12) .. cjson.encode(nil)",
    "local ok = pcall(cjson.encode, {[1] = 1, [40] = 2}) return tostring(ok)",
    "local ok = pcall(cjson.decode, '{bad') return tostring(ok)",
    "return type(cjson.decode('{\"a\":null}')['a']) .. ' ' .. tostring(cjson.decode('{}')['a'])",
    # commands, their replies and what they store (KEYS[1..3] are fresh)
    "return {redis.call('SET', KEYS[1], 'v', 'NX', 'EX', 5), redis.call('SET', KEYS[1], 'w', 'NX', 'EX', 5), redis.call('GET', KEYS[1])}",
    "redis.call('SET', KEYS[1], 1.5) redis.call('HSET', KEYS[2], 'f', 1700000000123) return {redis.call('GET', KEYS[1]), redis.call('HGET', KEYS[2], 'f'), redis.call('GET', KEYS[3])}",
    "return {redis.call('INCR', KEYS[1]), redis.call('INCR', KEYS[1]), redis.call('HINCRBY', KEYS[2], 'f', 5), redis.call('HINCRBY', KEYS[2], 'f', -7)}",
    "return {redis.call('HSET', KEYS[1], 'a', '1', 'b', '2'), redis.call('HSET', KEYS[1], 'a', '3'), redis.call('HLEN', KEYS[1]), redis.call('HDEL', KEYS[1], 'a', 'zz'), redis.call('HEXISTS', KEYS[1], 'b'), redis.call('HGETALL', KEYS[1])}",
    "redis.call('HSET', KEYS[1], 'f', 'v') redis.call('HDEL', KEYS[1], 'f') return {redis.call('EXISTS', KEYS[1]), redis.call('HLEN', KEYS[1]), redis.call('HGET', KEYS[1], 'f')}",
    "return {redis.call('ZADD', KEYS[1], 1, 'a', 2, 'b', 2, 'aa', 3, 'c'), redis.call('ZRANGEBYSCORE', KEYS[1], '(1', 2), redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '+inf'), redis.call('ZREM', KEYS[1], 'a', 'q'), redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', 2), redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '+inf')}",
    "return {redis.call('LPUSH', KEYS[1], 'a', 'b', 'c', 'd'), redis.call('LTRIM', KEYS[1], 0, 1), redis.call('LPUSH', KEYS[1], 'e'), redis.call('LTRIM', KEYS[1], 0, -2), redis.call('LPUSH', KEYS[1], 'f')}",
    "return {redis.call('SADD', KEYS[1], 'a', 'b', 'a'), redis.call('SCARD', KEYS[1]), redis.call('SISMEMBER', KEYS[1], 'b'), redis.call('SISMEMBER', KEYS[1], 'z'), redis.call('SREM', KEYS[1], 'a', 'b'), redis.call('EXISTS', KEYS[1])}",
    "redis.call('SET', KEYS[1], 'x') redis.call('HSET', KEYS[2], 'f', 'v') return {redis.call('DEL', KEYS[1], KEYS[2], KEYS[3]), redis.call('EXISTS', KEYS[1], KEYS[2])}",
    "redis.call('SET', KEYS[1], 'x') local r = redis.pcall('HGET', KEYS[1], 'f') return {type(r), string.sub(r.err, 1, 9)}",
    "redis.call('SET', KEYS[1], 'x') local r = redis.pcall('INCR', KEYS[1]) return type(r)",
    "return {redis.call('EXPIRE', KEYS[1], 10), redis.call('PUBLISH', KEYS[2], 'm')}",
]

# Scripts that must fail on both.
FAILING = [
    "redis.call('SET', KEYS[1], 'x') return redis.call('HGET', KEYS[1], 'f')",
    "return redis.call('NOSUCHCOMMAND')",
    "return {err = 'my error'}",
    "return cjson.encode({[1] = 1, [40] = 2})",
    "return cjson.decode('{bad')",
    "counter = 1 return counter",
    "return no_such_global",
]


@pytest.fixture(scope="module")
def real(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    client.close()


def _keys() -> list[str]:
    tag = uuid.uuid4().hex[:8]
    return [f"lkt:{{{tag}}}:{n}" for n in range(3)]


def _run_real(real: redis.Redis, source: str, keys: list[str], args: list[Any]) -> Any:
    return real.eval(source, len(keys), *keys, *args)


@pytest.mark.parametrize("source", EXACT)
def test_a_script_answers_as_in_redis(real: redis.Redis, source: str) -> None:
    twin = LuaKeyspace(lambda: NOW_MS)
    want = _run_real(real, source, _keys(), [])
    got = twin.eval(source, _keys(), [])
    assert got == want


def test_a_decoded_and_encoded_record_reads_the_same(real: redis.Redis) -> None:
    """Objects are written in Lua's table order, so compare them parsed."""
    record = {"id": "b1", "ip": "10.0.0.1", "port": 80, "weight": 1.25, "tags": [],
              "meta": {}, "static": False, "load": {"latency_ms": 12.5}, "none": None,
              "text": "é/\t\u0001", "big": 1_700_000_000_123}  # fmt: skip
    source = (
        "local t = cjson.decode(ARGV[1]) t['added'] = {x = 1, [2] = 'y'} return cjson.encode(t)"
    )
    twin = LuaKeyspace(lambda: NOW_MS)
    want = _run_real(real, source, [], [json.dumps(record)])
    got = twin.eval(source, [], [json.dumps(record)])
    assert json.loads(got) == json.loads(want)


def test_time_is_the_twins_clock() -> None:
    twin = LuaKeyspace(lambda: NOW_MS)
    source = "local t = redis.call('TIME') return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)"
    assert twin.eval(source) == NOW_MS


def test_publish_reaches_the_callback() -> None:
    seen: list[tuple[str, str]] = []

    def publish(channel: str, message: str) -> int:
        seen.append((channel, message))
        return 1

    twin = LuaKeyspace(lambda: NOW_MS, publish)
    assert twin.eval("return redis.call('PUBLISH', 'ch', ARGV[1])", [], ["pool-a"]) == 1
    assert seen == [("ch", "pool-a")]


@pytest.mark.parametrize("source", FAILING)
def test_a_failing_script_fails_as_in_redis(real: redis.Redis, source: str) -> None:
    with pytest.raises(redis.ResponseError):
        _run_real(real, source, _keys(), [])
    with pytest.raises(ScriptError):
        LuaKeyspace(lambda: NOW_MS).eval(source, _keys(), [])


def test_each_decode_of_a_large_text_is_a_table_of_its_own(real: redis.Redis) -> None:
    """The twin decodes a large text once and hands out copies: a script
    that changes one sees none of it in the next."""
    text = json.dumps({"rows": {f"k{n}": {"to": n, "list": [n, "x"]} for n in range(60)}})
    assert len(text) > 1024
    source = (
        "local a = cjson.decode(ARGV[1]) a['rows']['k1']['to'] = 'changed'"
        " table.insert(a['rows']['k2']['list'], 'more') a['new'] = 1"
        " local b = cjson.decode(ARGV[1])"
        " return {tostring(b['rows']['k1']['to']), #b['rows']['k2']['list'], tostring(b['new'])}"
    )
    twin = LuaKeyspace(lambda: NOW_MS)
    want = _run_real(real, source, [], [text])
    assert twin.eval(source, [], [text]) == want == ["1", 2, "nil"]
    assert twin.eval(source, [], [text]) == want
