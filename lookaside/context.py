"""The context: where the client commands find the lab (or any deployment)
when no flag says, as kubectl finds its cluster in a kubeconfig.

`lookaside up` writes it; `ctl`, `watch`, `export` and `apply` read it for
whatever their flags (and their environment variables) leave unsaid. With
neither a flag nor a context they refuse with one line naming what to set:
there is no built-in address to fall back on.

The file is JSON, at $LOOKASIDE_CONTEXT when that is set, else
$XDG_CONFIG_HOME/lookaside/context.json (~/.config/lookaside/context.json):

    {"admin_url": "https://127.0.0.1:8080", "token_file": ".../admin-token",
     "ca": ".../certs/ca.pem", "balancer": "127.0.0.1:50051",
     "redis_url": "redis://127.0.0.1:40123/0", "written_by": "lookaside up"}

The token itself is not in it, only the file that holds it (mode 0600).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path

ENV = "LOOKASIDE_CONTEXT"


class ContextError(ValueError):
    """A context file that exists but cannot be used; says which and why."""


@dataclass(frozen=True)
class Context:
    admin_url: str = ""
    token_file: str = ""
    ca: str = ""
    balancer: str = ""
    redis_url: str = ""
    written_by: str = ""
    path: str = ""  # where it was read from (not written)

    def describe(self) -> str:
        return f"the context {self.path}"


def location() -> Path:
    """Where the context lives: $LOOKASIDE_CONTEXT, else the XDG config folder."""
    explicit = os.environ.get(ENV, "").strip()
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME", "").strip() or str(Path.home() / ".config")
    return Path(base) / "lookaside" / "context.json"


def load() -> Context | None:
    """The context, or None when there is none; ContextError when the file
    is there but unreadable or not a context."""
    path = location()
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ContextError(f"the context {path} cannot be read: {exc.strerror}") from None
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ContextError(f"the context {path} is not JSON ({exc}); remove it") from None
    if not isinstance(data, dict):
        raise ContextError(f"the context {path} is not a JSON object; remove it")
    known = {f.name for f in fields(Context)} - {"path"}
    values = {k: str(v) for k, v in data.items() if k in known and v is not None}
    return Context(**values, path=str(path))


def save(context: Context) -> Path:
    """Writes `context` to location() (mode 0600) and returns the path."""
    path = location()
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {k: v for k, v in asdict(context).items() if k != "path" and v}
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)
    return path


def missing(what: str, flag: str, env: str) -> str:
    """The one line a command prints when neither a flag nor a context
    names `what`."""
    return (
        f"no {what} given: pass {flag} (env {env}), or start a lab with `lookaside up`, "
        f"which writes the context {location()} (env {ENV} moves it)"
    )
