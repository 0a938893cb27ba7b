"""Settings objects, one per component, each with its own env prefix, and a
helper that turns one into argparse flags (every flag reads its variable)."""

from __future__ import annotations

import argparse
import ipaddress
import re
import ssl
from collections.abc import Callable, Sequence
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel
from pydantic_settings import BaseSettings

# A host name or an IPv4 address; an IPv6 address (in brackets) with an
# optional zone. No spaces, no URL parts (/, ?, #, @).
_HOST = re.compile(r"[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*\.?|[0-9A-Fa-f:.]+(?:%[A-Za-z0-9_.-]+)?")


def split_host_port(value: str, what: str) -> tuple[str, int]:
    """ "host:port" or "[v6]:port" -> (host, port); ValueError says what is wrong."""
    value = value.strip()
    if value.startswith("["):
        host, sep, rest = value[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise ValueError(f"{what} {value!r} is not [ipv6]:port")
        port_text = rest[1:]
    else:
        host, sep, port_text = value.rpartition(":")
        if not sep:
            raise ValueError(
                f"{what} {value!r} is not host:port: it has no port (for example 127.0.0.1:50051)"
            )
        if ":" in host:
            raise ValueError(f"{what} {value!r}: put an IPv6 address in brackets, [::1]:port")
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"{what} {value!r}: port {port_text!r} is not a number in 0..65535")
    if not host:
        raise ValueError(f"{what} {value!r} has an empty host")
    if not _HOST.fullmatch(host):
        raise ValueError(
            f"{what} {value!r}: host {host[:64]!r} is not a host name or an IP address"
        )
    return host, int(port_text)


def readable_file(value: str, what: str) -> str:
    """`value` (stripped) if it names a readable file, else a ValueError."""
    import os

    path = value.strip()
    if not os.path.exists(path):
        raise ValueError(f"{what} {path!r} does not exist")
    if not os.path.isfile(path):
        raise ValueError(f"{what} {path!r} is not a file")
    if not os.access(path, os.R_OK):
        raise ValueError(f"{what} {path!r} is not readable by this user")
    return path


def host_port(value: str, what: str, *, port_zero: bool = False) -> str:
    """`value` (stripped) if it is host:port or [v6]:port, else a ValueError
    that says what is wrong. Port 0 only where `port_zero` allows it."""
    _, port = split_host_port(value, what)
    if port == 0 and not port_zero:
        raise ValueError(f"{what} {value!r}: port 0 is only allowed for --listen")
    return value.strip()


class FieldProblem(ValueError):
    """A check across fields that blames one of them: settings_or_exit names
    that field's flag (or variable) as it names a field's own errors."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def blaming(field: str, check: Callable[..., str], *args: str) -> str:
    """check(*args), a ValueError from it blamed on `field` (FieldProblem)."""
    try:
        return check(*args)
    except ValueError as exc:
        raise FieldProblem(field, str(exc)) from None


def read_secret(path: str, what: str) -> str:
    """A secret from a file (surrounding whitespace dropped), so that it
    shows neither in `ps` nor in the environment."""
    try:
        with open(path) as f:
            text = f.read().strip()
    except OSError as exc:
        raise ValueError(f"{what} {path!r} cannot be read: {exc.strerror}") from None
    if not text:
        raise ValueError(f"{what} {path!r} is empty")
    return text


def parse_networks(
    text: str | Sequence[str], what: str = "trusted networks"
) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    """CIDRs from a comma-separated string or a list; ValueError naming the bad one."""
    items = text.split(",") if isinstance(text, str) else list(text)
    out = []
    for item in (i.strip() for i in items):
        if not item:
            continue
        try:
            out.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise ValueError(
                f"{what}: {item!r} is not a network; write CIDRs such as 10.0.0.0/8 or fd00::/8"
            ) from None
    return tuple(out)


REDIS_SCHEMES = ("redis", "rediss", "unix")


def check_redis_url(value: str) -> str:
    """`value` (stripped) if redis-py can connect with it, else a ValueError
    that says what is wrong and what a good URL looks like."""
    from urllib.parse import urlsplit

    value = value.strip()
    example = "use redis://HOST:PORT/DB (rediss:// for TLS, unix:///path/to/redis.sock)"
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"{value!r} is not a Redis URL ({exc}); {example}") from None
    if parts.scheme not in REDIS_SCHEMES:
        got = f"scheme {parts.scheme + '://'!r}" if parts.scheme else "no scheme"
        raise ValueError(f"{value!r} is not a Redis URL: it has {got}; {example}")
    if parts.scheme == "unix":
        if not parts.path:
            raise ValueError(f"{value!r} names no socket path; {example}")
        return value
    if not parts.hostname:
        raise ValueError(f"{value!r} has no host; {example}")
    if port == 0:
        raise ValueError(f"{value!r}: port 0 cannot be connected to; {example}")
    db = parts.path.strip("/")
    if db and not db.isdigit():
        raise ValueError(f"{value!r}: database {db!r} is not a number; {example}")
    return value


def redacted_url(url: str) -> str:
    """The URL without its password, for messages and logs."""
    scheme, sep, rest = url.partition("://")
    creds, at, host = rest.rpartition("@")
    if not at:
        return url
    return f"{scheme}{sep}{creds.split(':', 1)[0]}:***@{host}"


def check_backend_tls(ca: str, cert: str, key: str, server_name: str) -> None:
    """A ValueError when the balancer's TLS-to-backends settings do not go
    together (balancer_server.tls.BackendTls)."""
    if not ca and (cert or key or server_name.strip()):
        raise ValueError(
            "--backend-tls-cert, --backend-tls-key and --backend-tls-server-name need "
            "--backend-tls-ca (the CA that signed the backends' certificates)"
        )
    if bool(cert) != bool(key):
        raise ValueError(
            "give both --backend-tls-cert and --backend-tls-key (or neither, when the "
            "backends ask for no client certificate)"
        )


def check_key_pair(cert: str, key: str) -> None:
    """A ValueError when the PEM key file is not the certificate's (or
    either cannot be loaded): grpcio would only fail to add the port, which
    reads as a port in use."""
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(cert, key, password=b"")
    except (ssl.SSLError, OSError) as exc:
        reason = getattr(exc, "reason", None) or exc.strerror or exc
        raise ValueError(
            f"TLS key {key!r} does not go with certificate {cert!r} ({reason}); "
            "give the key the certificate was made for"
        ) from None


def _optional_file(value: str) -> str:
    return readable_file(value, "file") if value.strip() else ""


# Setting types with their checks, shared by every component's settings.
# Empty: not given (the command refuses to start without one; no default).
RedisUrl = Annotated[str, AfterValidator(lambda v: check_redis_url(v) if v.strip() else "")]
OptionalFile = Annotated[str, AfterValidator(_optional_file)]


def add_settings_arguments(
    parser: argparse.ArgumentParser,
    model: type[BaseModel],
    short: dict[str, str] | None = None,
) -> None:
    """One flag per field (`--redis-url` for redis_url), each reading the
    field's environment variable when absent. Bool fields are switches
    (`--dev`, not `--dev true`); `short` adds aliases such as {"n": "-n"}."""
    prefix = model.model_config.get("env_prefix", "")
    short = short or {}
    for name, field in model.model_fields.items():
        flags = ["--" + name.replace("_", "-")]
        if name in short:
            flags.insert(0, short[name])
        env = f"{prefix}{name.upper()}"
        help_text = f"{field.description or ''} [env {env}, default {field.default!r}]"
        help_text = help_text.replace("%", "%%")  # argparse formats help strings
        if field.annotation is bool:
            parser.add_argument(
                *flags, dest=name, default=None, action="store_const", const="true", help=help_text
            )
        else:
            parser.add_argument(*flags, dest=name, default=None, type=str, help=help_text)


def settings_from_args(model: type[BaseSettings], args: argparse.Namespace) -> Any:
    """Flags given on the command line win; the rest come from the
    environment, then the defaults."""
    given = {
        name: getattr(args, name)
        for name in model.model_fields
        if getattr(args, name, None) is not None
    }
    return model(**given)


def settings_or_exit(
    parser: argparse.ArgumentParser, model: type[BaseSettings], args: argparse.Namespace
) -> Any:
    """The settings, or exit 2 with what was wrong, naming the flag and its
    environment variable."""
    from pydantic import ValidationError

    try:
        settings = settings_from_args(model, args)
    except ValidationError as exc:
        problems = [f"{_source(model, args, _field(err))}{_message(err)}" for err in exc.errors()]
        # One line, no usage text: the message names the flag to fix.
        import sys

        print(f"{parser.prog}: error: {'; '.join(problems)}", file=sys.stderr)
        raise SystemExit(2) from None
    warn_secret_flags(parser, model, args)
    return settings


def _field(err: Any) -> str:
    problem = (err.get("ctx") or {}).get("error")
    if isinstance(problem, FieldProblem):
        return problem.field
    return str(err["loc"][0]) if err["loc"] else ""


def _message(err: Any) -> str:
    return str(err["msg"]).removeprefix("Value error, ")


def _source(model: type[BaseSettings], args: argparse.Namespace, field: str) -> str:
    """What gave `field` its value, as the prefix of an error: the flag when
    it was on the command line, the variable when it came from there, both
    when neither (the default)."""
    import os

    if not field:
        return ""
    flag = f"--{field.replace('_', '-')}"
    env = f"{model.model_config.get('env_prefix', '')}{field.upper()}"
    if getattr(args, field, None) is not None:
        return f"{flag}: "
    if env in os.environ:
        return f"env {env}: "
    return f"{flag} (env {env}): "


def warn_secret_flags(
    parser: argparse.ArgumentParser, model: type[BaseSettings], args: argparse.Namespace
) -> list[str]:
    """Warns (stderr) about each secret given as a flag: the command line is
    visible to every user of the machine in `ps` and stays in shell
    history. Secrets are the fields declared with repr=False; the warning
    names the file flag or variable to use instead. Returns the flags."""
    import sys

    prefix = model.model_config.get("env_prefix", "")
    warned = []
    for name, field in model.model_fields.items():
        if field.repr or getattr(args, name, None) is None:
            continue
        flag = "--" + name.replace("_", "-")
        instead = (
            f"{flag}-file or env {prefix}{name.upper()}_FILE"
            if f"{name}_file" in model.model_fields
            else f"env {prefix}{name.upper()}"
        )
        print(
            f"{parser.prog}: warning: {flag} on the command line is visible to every user in "
            f"`ps` and stays in shell history; use {instead} instead",
            file=sys.stderr,
        )
        warned.append(flag)
    return warned
