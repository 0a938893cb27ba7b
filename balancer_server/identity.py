"""mTLS identities: which names of a verified client certificate count, and
how a pool's identity patterns match them.

Only DNS and URI subject alternative names are identities. E-mail and IP
SANs never are, and the subject CN counts (as a DNS name) only when the
certificate has no SAN at all: a certificate that says `billing-1` in its
SAN and `routeguide-1` in its CN is `billing-1`.

Patterns (the `identities` of a pool in the registration policy):

- a DNS name, matched without regard to case and label by label:
  `backend-1.lookaside.test` matches that name only; `*` stands for the
  characters of one label and never crosses a dot, so
  `routeguide-*.lookaside.test` matches `routeguide-1.lookaside.test` but
  not `routeguide-x.billing.lookaside.test`, and `*.lookaside.test` matches
  `a.lookaside.test` but not `a.b.lookaside.test`;
- a SPIFFE ID, matched against URI SANs: `spiffe://prod.example/ns/rg/sa/server`
  matches exactly that ID; `spiffe://prod.example/ns/rg/*` matches every
  ID under that path (`.../ns/rg/sa/server`, never `.../ns/rg` itself nor
  `.../ns/rgx/...`). A URI SAN that is not a well-formed SPIFFE ID (another
  scheme, a query, `.` or `..` or empty segments, percent escapes) matches
  nothing.

A certificate whose DNS SAN holds a wildcard (`*.lookaside.test`) is a
name for many hosts, not an identity, and matches no pattern.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$")
_PATTERN_LABEL = re.compile(r"^[a-z0-9*-]+$")
_TRUST_DOMAIN = re.compile(r"^[a-z0-9._-]+$")
_SEGMENT = re.compile(r"^[A-Za-z0-9._-]+$")
SPIFFE = "spiffe://"


class IdentityPatternError(ValueError):
    """A pattern that is neither a DNS name pattern nor a SPIFFE ID."""


@dataclass(frozen=True, slots=True)
class PeerNames:
    """The names of a verified client certificate that may be identities."""

    dns: tuple[str, ...] = ()
    uris: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.dns or self.uris)

    def shown(self) -> str:
        """The first name, for messages and principals."""
        return (self.uris + self.dns)[0][:128] if self else ""


def _text(values: Iterable[bytes]) -> list[str]:
    return [v.decode("utf-8", "replace") for v in values]


def peer_names(auth_context: Mapping[str, Iterable[bytes]] | None) -> PeerNames:
    """DNS and URI SANs of the verified certificate (grpc's typed `peer_dns`
    and `peer_uri` properties); the CN only when it has no SAN of any kind."""
    if not auth_context:
        return PeerNames()
    dns = _text(auth_context.get("peer_dns", ()))
    uris = _text(auth_context.get("peer_uri", ()))
    if not auth_context.get("x509_subject_alternative_name"):
        dns = _text(auth_context.get("x509_common_name", ()))
    return PeerNames(dns=tuple(dns), uris=tuple(uris))


def _dns_name(name: str) -> list[str] | None:
    """The labels of a well-formed DNS name (lower case, one trailing dot
    dropped), or None."""
    labels = name.lower().removesuffix(".").split(".")
    return labels if all(_LABEL.match(label) for label in labels) else None


def _spiffe(uri: str) -> tuple[str, list[str]] | None:
    """(trust domain, path segments) of a well-formed SPIFFE ID, or None."""
    if not uri.startswith(SPIFFE):
        return None
    domain, _, path = uri[len(SPIFFE) :].partition("/")
    if not domain or not _TRUST_DOMAIN.match(domain) or not path:
        return None
    segments = path.split("/")
    if any(s in (".", "..") or not _SEGMENT.match(s) for s in segments):
        return None
    return domain, segments


@dataclass(frozen=True, slots=True)
class IdentityPattern:
    text: str

    def __post_init__(self) -> None:
        check_pattern(self.text)

    def matches(self, names: PeerNames) -> str | None:
        """The name this pattern admits, or None."""
        if self.text.startswith(SPIFFE):
            return next((u for u in names.uris if _spiffe_match(self.text, u)), None)
        return next((d for d in names.dns if _dns_match(self.text, d)), None)


def check_pattern(pattern: str) -> None:
    """Raises IdentityPatternError naming what is wrong with `pattern`."""
    if "://" in pattern:
        if not pattern.startswith(SPIFFE):
            raise IdentityPatternError(f"identity {pattern!r}: only spiffe:// URIs are identities")
        base = pattern.removesuffix("/*")
        if "*" in base or _spiffe(base) is None:
            raise IdentityPatternError(
                f"identity {pattern!r}: expected spiffe://<trust domain>/<path> "
                "or spiffe://<trust domain>/<path>/* (no '.', '..' or empty segments)"
            )
        return
    labels = pattern.lower().removesuffix(".").split(".")
    for label in labels:
        if not _PATTERN_LABEL.match(label) or label.count("*") > 1:
            raise IdentityPatternError(
                f"identity {pattern!r}: expected a DNS name whose labels are letters, digits "
                "and '-', with at most one '*' per label ('*' stands for part of one label)"
            )
    if len(labels) < 2 and "*" in pattern:
        raise IdentityPatternError(f"identity {pattern!r}: a wildcard needs a parent domain")


def _dns_match(pattern: str, name: str) -> bool:
    labels = _dns_name(name)
    wanted = pattern.lower().removesuffix(".").split(".")
    if labels is None or len(labels) != len(wanted):
        return False
    for want, label in zip(wanted, labels, strict=True):
        head, star, tail = want.partition("*")
        if not star:
            if want != label:
                return False
        elif len(label) < len(head) + len(tail) or not (
            label.startswith(head) and label.endswith(tail)
        ):
            return False
    return True


def _spiffe_match(pattern: str, uri: str) -> bool:
    parsed = _spiffe(uri)
    if parsed is None:
        return False
    if not pattern.endswith("/*"):
        return pattern == uri
    base = _spiffe(pattern[:-2])
    assert base is not None  # checked when the policy was read
    domain, segments = parsed
    return (
        domain == base[0] and len(segments) > len(base[1]) and (segments[: len(base[1])] == base[1])
    )


def admitted(patterns: Iterable[IdentityPattern], names: PeerNames) -> str | None:
    """The first name of the certificate that one of the patterns admits."""
    for pattern in patterns:
        found = pattern.matches(names)
        if found is not None:
            return found
    return None


__all__ = [
    "IdentityPattern",
    "IdentityPatternError",
    "PeerNames",
    "admitted",
    "check_pattern",
    "peer_names",
]
