"""Who may call the server, and whom the server may call.

``ApiKeys`` checks a request's ``Authorization: Bearer <key>`` against ROLLOUT_API_KEY (or
METRICS_API_KEY): every configured key is compared, each in constant time, so neither which key
matched nor how much of one did shows in the time taken. Keys never appear in a ``repr``, a log
line or an error message.

``UrlAllowlist`` decides whether an outbound URL (a rollout's ``server_url``, a tool server's
URL) may be called at all, before any connection is made. Its entries (TRAINER_URL_ALLOWLIST,
comma-separated) are host names (``trainer-0.train.svc``), wildcards (``*.svc.cluster.local``:
any name below that suffix, not the suffix itself), IP addresses and CIDR networks
(``10.0.0.0/8``, ``fd00::/8``), each optionally with a port (``host:8000``, ``10.0.0.0/8:8000``,
``[fd00::/8]:8000``); an entry without a port allows every port.

Host names are matched only against name entries, IP addresses only against IP and CIDR
entries: a name is never resolved to be checked against a network. Resolving at check time
would prove nothing about the address the connection resolves a moment later (a DNS answer
with a short TTL can change in between: DNS rebinding), so a CIDR entry would let any name
whose DNS the caller controls through. Allowing a name therefore means trusting whoever
controls that name's DNS; a trainer addressed by IP must be sent as an IP literal.
Numeric host forms that the system resolver reads as IPv4 (``2130706433``, ``127.1``,
``0x7f.0.0.1``) are read the same way here, and IPv4-mapped IPv6 addresses
(``::ffff:10.0.0.1``) are checked as the IPv4 address they reach.
"""

from __future__ import annotations

import hmac
import ipaddress
import re
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

__all__ = ["ApiKeys", "OutboundURLRefused", "UrlAllowlist", "parse_allowlist_entry"]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_NAME = re.compile(r"[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?(\.[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?)*")
_LEGACY_IPV4 = re.compile(r"[0-9a-fx.]+")
_DEFAULT_PORTS = {"http": 80, "https": 443}


class ApiKeys:
    """The keys a route accepts; none configured means the route is open."""

    def __init__(self, keys: Iterable[str]) -> None:
        self._keys = tuple(key.encode() for key in keys if key)

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def authorizes(self, authorization: str | None) -> bool:
        """True when ``authorization`` is ``Bearer <one of the keys>`` (or no key is configured)."""
        if not self._keys:
            return True
        scheme, _, token = (authorization or "").strip().partition(" ")
        presented = token.strip().encode() if scheme.lower() == "bearer" else b""
        matched = False
        for key in self._keys:  # every key, whatever matched before: the time says nothing
            matched |= hmac.compare_digest(presented, key)
        return matched and bool(presented)

    def __repr__(self) -> str:
        return f"ApiKeys({len(self._keys)} key{'s' if len(self._keys) != 1 else ''})"


class OutboundURLRefused(ValueError):
    """A URL the allowlist does not allow; the message names the field, host and port only."""


@dataclass(frozen=True, slots=True)
class _Rule:
    name: str | None = None  # an exact host name
    suffix: str | None = None  # ".svc.cluster.local" for "*.svc.cluster.local"
    network: IPNetwork | None = None
    port: int | None = None  # None: any port

    def matches(self, name: str | None, ip: IPAddress | None, port: int) -> bool:
        if self.port is not None and self.port != port:
            return False
        if ip is not None:
            return self.network is not None and ip.version == self.network.version and ip in self.network
        if name is None:
            return False
        return name == self.name or (self.suffix is not None and name.endswith(self.suffix))


def _split_port(entry: str) -> tuple[str, int | None]:
    if entry.startswith("["):
        host, bracket, rest = entry[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise ValueError("a bracketed IPv6 entry is [address] or [address]:port")
        return host, _port(rest[1:]) if rest else None
    if entry.count(":") == 1:
        host, _, port = entry.partition(":")
        return host, _port(port)
    return entry, None  # no port, or a bare IPv6 address or network


def _port(text: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ValueError(f"port {text!r} is not a number in 1..65535")
    return int(text)


def parse_allowlist_entry(entry: str) -> _Rule:
    """One TRAINER_URL_ALLOWLIST entry as a rule; ValueError says what is wrong with it."""
    host, port = _split_port(entry.strip())
    host = host.lower().rstrip(".")
    try:
        return _Rule(network=ipaddress.ip_network(host, strict=False), port=port)
    except ValueError:
        pass
    wildcard = host.startswith("*.")
    name = host[2:] if wildcard else host
    if not _NAME.fullmatch(name):
        raise ValueError(f"{entry.strip()!r} is not a host name, *.suffix, IP address or CIDR network")
    return _Rule(suffix="." + name, port=port) if wildcard else _Rule(name=name, port=port)


def _address(host: str) -> IPAddress | None:
    """The IP address ``host`` stands for as the system resolver reads it; None for a name."""
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        if not _LEGACY_IPV4.fullmatch(host):
            return None
        try:
            return ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


class UrlAllowlist:
    """Where outbound calls may go; without entries, anywhere (the server's historic default)."""

    def __init__(self, entries: Iterable[str] = ()) -> None:
        self.entries = tuple(e.strip() for e in entries if e.strip())
        self._rules = tuple(parse_allowlist_entry(e) for e in self.entries)

    @property
    def enabled(self) -> bool:
        return bool(self._rules)

    def allows(self, url: str) -> bool:
        """True when ``url`` (http or https) may be called."""
        if not self._rules:
            return True
        try:
            parts = urlsplit(url.strip())
            port = parts.port or _DEFAULT_PORTS.get(parts.scheme)
        except ValueError:  # a port out of range or not a number
            return False
        host = (parts.hostname or "").rstrip(".")
        if not host or port is None:
            return False
        ip = _address(host)
        name = None if ip is not None else host
        return any(rule.matches(name, ip, port) for rule in self._rules)

    def check_url(self, url: str, *, field: str = "server_url") -> None:
        """Raise ``OutboundURLRefused`` unless ``url`` may be called; ``field`` names it in the message.

        The one check for every outbound URL a request can name (``server_url``,
        ``tool_server_url``, an MCP tool server's URL): call it before opening a connection."""
        if self.allows(url):
            return
        try:
            parts = urlsplit(url.strip())
            where = f"host {parts.hostname!r} port {parts.port or _DEFAULT_PORTS.get(parts.scheme)}"
        except ValueError:
            where = "its port"
        raise OutboundURLRefused(f"{field}: {where} is not allowed by TRAINER_URL_ALLOWLIST")
