"""An in-memory Redis keyspace that runs the registry's Lua scripts: the
engine under MemoryStore (lookaside_registry.memory).

The scripts of lookaside_registry (scripts.py, reports.py, signals.py) are
the only statement of the registry's rules. Here they run unchanged in an
embedded Lua 5.1 (lupa), the Lua Redis runs, with what Redis gives a script:
KEYS and ARGV, `redis.call` and `redis.pcall` over the commands they use,
`cjson`, and Redis's conversions between Lua values and replies. Keys live
in a dict (strings, hashes, lists, sets and sorted sets, by their Python
types); TIME reads an injectable clock; PUBLISH hands the message to a
callback. A script runs to its end before anything else happens, as in
Redis. Keys do not expire here (EXPIRE is accepted and does nothing).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from typing import Any

Reply = Any  # what a command or a script answers: int, str, None, list, Status


class ScriptError(RuntimeError):
    """A script failed (a Lua error, or a command it called failed)."""


class CommandError(Exception):
    """A Redis command error (`redis.call` raises it into the script)."""


class Status(str):
    """A status reply (`{ok = ...}` in Lua), e.g. SET's OK."""


WRONGTYPE = "WRONGTYPE Operation against a key holding the wrong kind of value"

# The Lua side of Redis's script environment. `dispatch` runs one command
# (its arguments already strings); a failed command raises into the script,
# as redis.call does, or comes back as {err = ...} from redis.pcall.
_ENVIRONMENT = r"""
local dispatch, decode = ...
redis = {}
redis.call = function(...) return dispatch(...) end
redis.pcall = function(...)
  local ok, reply = pcall(dispatch, ...)
  if ok then return reply end
  return {err = tostring(reply)}
end
redis.error_reply = function(msg) return {err = msg} end
redis.status_reply = function(msg) return {ok = msg} end
redis.log = function() end
redis.LOG_DEBUG, redis.LOG_VERBOSE, redis.LOG_NOTICE, redis.LOG_WARNING = 0, 1, 2, 3
local null = newproxy(false)
-- cjson.encode as lua-cjson 2.1 writes: numbers as %.14g, "/" escaped, a
-- table whose keys are 1..n an array (holes as null), any other table an
-- object, the empty table {}.
local escapes = {['"'] = '\\"', ['\\'] = '\\\\', ['/'] = '\\/', ['\b'] = '\\b',
  ['\f'] = '\\f', ['\n'] = '\\n', ['\r'] = '\\r', ['\t'] = '\\t'}
local function quote(s)
  return '"' .. (string.gsub(s, '[%c"\\/]', function(c)
    return escapes[c] or string.format('\\u%04x', string.byte(c))
  end)) .. '"'
end
local function number(n)
  if n ~= n or n == math.huge or n == -math.huge then
    error('Cannot serialise number: must not be NaN or Inf')
  end
  return string.format('%.14g', n)
end
local function put(v, out, depth)
  local t = type(v)
  if t == 'string' then out[#out + 1] = quote(v)
  elseif t == 'number' then out[#out + 1] = number(v)
  elseif t == 'boolean' then out[#out + 1] = tostring(v)
  elseif v == nil or v == null then out[#out + 1] = 'null'
  elseif t == 'table' then
    if depth > 1000 then error('Cannot serialise, excessive nesting (1001)') end
    local most, items, array = 0, 0, true
    for k in pairs(v) do
      items = items + 1
      if array and type(k) == 'number' and k >= 1 and math.floor(k) == k then
        if k > most then most = k end
      else
        array = false
      end
    end
    if array and most > 10 and most > 2 * items then
      error('Cannot serialise table: excessively sparse array')
    end
    if array and most > 0 then
      out[#out + 1] = '['
      for i = 1, most do
        if i > 1 then out[#out + 1] = ',' end
        put(v[i], out, depth + 1)
      end
      out[#out + 1] = ']'
    else
      out[#out + 1] = '{'
      local first = true
      for k, x in pairs(v) do
        if type(k) == 'number' then k = number(k)
        elseif type(k) ~= 'string' then
          error('Cannot serialise table: table key must be a number or string')
        end
        if not first then out[#out + 1] = ',' end
        first = false
        out[#out + 1] = quote(k) .. ':'
        put(x, out, depth + 1)
      end
      out[#out + 1] = '}'
    end
  else
    error('Cannot serialise ' .. t .. ': type not supported')
  end
end
-- cjson.decode is Python's json (see _decode). The prelude decodes the
-- same large constant (the state machine) on every call: a large text is
-- decoded once and each call gets its own copy, which is faster.
local decoded, cached = {}, 0
local function copy(v)
  if type(v) ~= 'table' then return v end
  local c = {}
  for k, x in pairs(v) do c[k] = copy(x) end
  return c
end
cjson = {null = null}
cjson.decode = function(text)
  if type(text) ~= 'string' or #text < 1024 then return decode(text) end
  local hit = decoded[text]
  if hit == nil then
    if cached >= 32 then decoded, cached = {}, 0 end
    hit = decode(text)
    decoded[text], cached = hit, cached + 1
  end
  return copy(hit)
end
cjson.encode = function(v)
  local out = {}
  put(v, out, 0)
  return table.concat(out)
end
io, os, dofile, loadfile = nil, nil, nil, nil  -- lupa itself needs debug
local loadstring = loadstring
KEYS, ARGV = {}, {}
-- Redis's globals protection: a script may neither create nor read an
-- unknown global.
setmetatable(_G, {
  __newindex = function(_, name)
    error('Script attempted to create global variable \'' .. tostring(name) .. '\'', 2)
  end,
  __index = function(_, name)
    error('Script attempted to access nonexistent global variable \'' .. tostring(name) .. '\'', 2)
  end,
})
return function(source) return assert(loadstring(source, '@user_script')) end
"""


def _lupa() -> Any:
    try:
        from lupa import lua51
    except ImportError as exc:  # pragma: no cover - a missing dev dependency
        raise ImportError(
            "MemoryStore runs the registry's Lua scripts in lupa: pip install 'lupa>=2' "
            "(it comes with lookaside-grpclb[dev])"
        ) from exc
    return lua51


def _arg(value: Any) -> str:
    """A command argument as Redis sees it: Lua numbers become their
    shortest decimal text (integers without a fraction)."""
    if isinstance(value, bool) or value is None:
        raise CommandError("Lua redis lib command arguments must be strings or integers")
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if value.is_integer() and abs(value) < 1e17:
            return str(int(value))
        return repr(value)
    if isinstance(value, str):
        return value
    raise CommandError("Lua redis lib command arguments must be strings or integers")


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise CommandError("ERR value is not an integer or out of range") from None


def _score(text: str) -> tuple[float, bool]:
    """A ZRANGEBYSCORE bound: its value and whether it is exclusive."""
    exclusive = text.startswith("(")
    body = text[1:] if exclusive else text
    try:
        value = {"-inf": -math.inf, "+inf": math.inf, "inf": math.inf}.get(body.lower())
        return (float(body) if value is None else value), exclusive
    except ValueError:
        raise CommandError("ERR min or max is not a float") from None


def _above(score: float, bound: tuple[float, bool]) -> bool:
    return score > bound[0] if bound[1] else score >= bound[0]


def _below(score: float, bound: tuple[float, bool]) -> bool:
    return score < bound[0] if bound[1] else score <= bound[0]


class LuaKeyspace:
    """Redis keys in a dict, and the Lua scripts that change them."""

    def __init__(
        self, clock: Callable[[], int], publish: Callable[[str, str], int] | None = None
    ) -> None:
        """`clock`: the time in ms that TIME answers; `publish(channel,
        message)`: PUBLISH, returning how many subscribers got it."""
        self.clock = clock
        self.publish = publish or (lambda channel, message: 0)
        self.data: dict[str, Any] = {}
        lua51 = _lupa()
        self._lua_type = lua51.lua_type
        self._lua = lua51.LuaRuntime(
            encoding="utf-8",
            unpack_returned_tuples=False,
            register_eval=False,
            register_builtins=False,
        )
        self._compile = self._lua.execute(_ENVIRONMENT, self._dispatch, self._decode)
        self._null = self._lua.eval("cjson.null")  # what JSON null decodes to
        self._globals = self._lua.globals()
        self._compiled: dict[str, Any] = {}
        self._commands: dict[str, Callable[..., Reply]] = {
            name[4:].upper(): getattr(self, name) for name in dir(self) if name.startswith("cmd_")
        }

    # -- running scripts ------------------------------------------------------

    def eval(self, source: str, keys: Sequence[Any] = (), args: Sequence[Any] = ()) -> Reply:
        """Runs a script as EVAL does and returns its reply converted as
        Redis converts it (numbers truncated to integers, false to None,
        tables to lists, {ok=...} to a Status, {err=...} raised)."""
        fn = self._compiled.get(source)
        if fn is None:
            try:
                fn = self._compiled[source] = self._compile(source)
            except Exception as exc:
                raise ScriptError(f"the script does not compile: {exc}") from exc
        table = self._lua.table_from
        self._globals.KEYS = table([_arg(k) for k in keys])
        self._globals.ARGV = table([_arg(a) for a in args])
        try:
            result = fn()
        except Exception as exc:
            raise ScriptError(f"the script failed: {exc}") from exc
        return self._reply(result[0] if isinstance(result, tuple) else result)

    def _reply(self, value: Any) -> Reply:
        """A Lua value as the reply Redis makes of it."""
        if value is None or value is False:
            return None
        if value is True:
            return 1
        if isinstance(value, int | float):
            return int(value)
        if isinstance(value, str):
            return value
        if self._lua_type(value) == "table":
            if isinstance(value["err"], str):
                raise ScriptError(value["err"])
            if isinstance(value["ok"], str):
                return Status(value["ok"])
            out = []
            i = 1
            while (item := value[i]) is not None:
                out.append(self._reply(item))
                i += 1
            return out
        return None

    def _to_lua(self, reply: Reply) -> Any:
        """A command's reply as Redis hands it to Lua: nil as false, a
        status as {ok = ...}, a list as a table."""
        if reply is None:
            return False
        if isinstance(reply, Status):
            return self._lua.table_from({"ok": str(reply)})
        if isinstance(reply, list):
            return self._lua.table_from([self._to_lua(r) for r in reply])
        return reply

    def _dispatch(self, *args: Any) -> Any:
        if not args:
            raise CommandError("Please specify at least one argument for this redis lib call")
        return self._to_lua(self.call(*args))

    def call(self, *args: Any) -> Reply:
        """Runs one command, as a client sends it outside a script."""
        words = [_arg(a) for a in args]
        command = self._commands.get(words[0].upper())
        if command is None:
            raise CommandError(f"Unknown Redis command called from script: {words[0]}")
        try:
            return command(*words[1:])
        except TypeError:
            raise CommandError(f"ERR wrong number of arguments for '{words[0].lower()}'") from None

    # Reads of whole values, for the store's reads (copies, typed; missing
    # keys read as empty).
    def string(self, key: str) -> str | None:
        return self._get(key, str)

    def hash(self, key: str) -> dict[str, str]:
        return dict(self._get(key, dict) or {})

    def members(self, key: str) -> set[str]:
        return set(self._get(key, set) or ())

    def items(self, key: str) -> list[str]:
        return list(self._get(key, list) or ())

    def scores(self, key: str) -> dict[str, float]:
        return dict(self._get_zset(key))

    # -- cjson.decode, as Redis's Lua has it (encode is Lua, above) ------------

    def _decode(self, text: Any) -> Any:
        if not isinstance(text, str):
            raise ValueError("bad argument #1 to 'decode' (string expected)")
        value = json.loads(text)
        if "null" not in text:
            return (
                self._lua.table_from(value, recursive=True)
                if isinstance(value, list | dict)
                else value
            )
        return self._lua_of(value)

    def _lua_of(self, value: Any) -> Any:
        if value is None:
            return self._null
        if isinstance(value, dict):
            return self._lua.table_from({k: self._lua_of(v) for k, v in value.items()})
        if isinstance(value, list):
            return self._lua.table_from([self._lua_of(v) for v in value])
        return value

    # -- the keys -------------------------------------------------------------

    def _get(self, key: str, kind: type) -> Any:
        value = self.data.get(key)
        if value is not None and type(value) is not kind:
            raise CommandError(WRONGTYPE)
        return value

    def _make(self, key: str, kind: type) -> Any:
        value = self._get(key, kind)
        if value is None:
            value = self.data[key] = kind()
        return value

    def _tidy(self, key: str) -> None:
        """Redis removes a container key when its last element goes."""
        if key in self.data and not self.data[key]:
            del self.data[key]

    # -- the commands the scripts use ------------------------------------------

    def cmd_time(self) -> list[str]:
        ms = self.clock()
        return [str(ms // 1000), str(ms % 1000 * 1000)]

    def cmd_publish(self, channel: str, message: str) -> int:
        return self.publish(channel, message)

    def cmd_del(self, *keys: str) -> int:
        return sum(self.data.pop(k, None) is not None for k in keys)

    def cmd_exists(self, *keys: str) -> int:
        return sum(k in self.data for k in keys)

    def cmd_expire(self, key: str, seconds: str) -> int:
        _int(seconds)
        return int(key in self.data)

    def cmd_get(self, key: str) -> str | None:
        return self._get(key, str)

    def cmd_set(self, key: str, value: str, *options: str) -> Status | None:
        words = [o.upper() for o in options]
        if "NX" in words and key in self.data or "XX" in words and key not in self.data:
            return None
        self.data[key] = value
        return Status("OK")

    def cmd_incr(self, key: str) -> int:
        n = _int(self._get(key, str) or "0") + 1
        self.data[key] = str(n)
        return n

    def cmd_hget(self, key: str, field: str) -> str | None:
        return (self._get(key, dict) or {}).get(field)

    def cmd_hexists(self, key: str, field: str) -> int:
        return int(field in (self._get(key, dict) or {}))

    def cmd_hset(self, key: str, *pairs: str) -> int:
        if not pairs or len(pairs) % 2:
            raise CommandError("ERR wrong number of arguments for 'hset' command")
        h = self._make(key, dict)
        added = 0
        for field, value in zip(pairs[::2], pairs[1::2], strict=True):
            added += field not in h
            h[field] = value
        return added

    def cmd_hdel(self, key: str, *fields: str) -> int:
        h = self._get(key, dict) or {}
        gone = sum(h.pop(f, None) is not None for f in fields)
        self._tidy(key)
        return gone

    def cmd_hincrby(self, key: str, field: str, by: str) -> int:
        h = self._make(key, dict)
        n = _int(h.get(field, "0")) + _int(by)
        h[field] = str(n)
        return n

    def cmd_hgetall(self, key: str) -> list[str]:
        return [x for pair in (self._get(key, dict) or {}).items() for x in pair]

    def cmd_hkeys(self, key: str) -> list[str]:
        return list(self._get(key, dict) or {})

    def cmd_hvals(self, key: str) -> list[str]:
        return list((self._get(key, dict) or {}).values())

    def cmd_hlen(self, key: str) -> int:
        return len(self._get(key, dict) or {})

    def cmd_lpush(self, key: str, *values: str) -> int:
        items = self._make(key, list)
        for v in values:
            items.insert(0, v)
        return len(items)

    def cmd_ltrim(self, key: str, start: str, stop: str) -> Status:
        items = self._get(key, list)
        if items is not None:
            first, last = _int(start), _int(stop)
            n = len(items)
            first = max(first + n if first < 0 else first, 0)
            last = last + n if last < 0 else last
            items[:] = items[first : last + 1]
            self._tidy(key)
        return Status("OK")

    def cmd_sadd(self, key: str, *members: str) -> int:
        s = self._make(key, set)
        before = len(s)
        s.update(members)
        return len(s) - before

    def cmd_srem(self, key: str, *members: str) -> int:
        s = self._get(key, set) or set()
        gone = sum(m in s for m in members)
        s.difference_update(members)
        self._tidy(key)
        return gone

    def cmd_scard(self, key: str) -> int:
        return len(self._get(key, set) or ())

    def cmd_sismember(self, key: str, member: str) -> int:
        return int(member in (self._get(key, set) or ()))

    def cmd_zadd(self, key: str, *pairs: str) -> int:
        if not pairs or len(pairs) % 2:
            raise CommandError("ERR syntax error")
        z = self._make_zset(key)
        added = 0
        for score, member in zip(pairs[::2], pairs[1::2], strict=True):
            value, _ = _score(score)
            added += member not in z
            z[member] = value
        return added

    def cmd_zrem(self, key: str, *members: str) -> int:
        z = self._get_zset(key)
        gone = sum(z.pop(m, None) is not None for m in members)
        self._tidy(key)
        return gone

    def cmd_zrangebyscore(self, key: str, low: str, high: str) -> list[str]:
        lo, hi = _score(low), _score(high)
        return [
            m
            for m, s in sorted(self._get_zset(key).items(), key=lambda ms: (ms[1], ms[0]))
            if _above(s, lo) and _below(s, hi)
        ]

    def cmd_zremrangebyscore(self, key: str, low: str, high: str) -> int:
        gone = self.cmd_zrangebyscore(key, low, high)
        return self.cmd_zrem(key, *gone) if gone else 0

    # A sorted set is a _ZSet (member -> score), told apart from a hash.
    def _get_zset(self, key: str) -> dict[str, float]:
        return self._get(key, _ZSet) or {}

    def _make_zset(self, key: str) -> dict[str, float]:
        return self._make(key, _ZSet)


class _ZSet(dict[str, float]):
    """A sorted set's members and scores."""
