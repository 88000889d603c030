"""Which callback URLs may be called, judged the way the HTTP client reads them.

Two checks, for two moments:

- ``UrlPolicy.check(url)``, before anything is sent (by the hook, and by the gateway at submit).
  The URL is read by the client's own parser (requests' preparation, then urllib3's
  ``parse_url``) and by the standard library's ``urlsplit``; a backslash, a control character,
  userinfo, or any disagreement between the two on scheme, host or port is refused, so that no
  check can see one host while the client calls another. A host written as an address (or in an
  odd numeric form such as ``2130706433``) or a metadata name is judged here already.
- ``UrlPolicy.check_addresses(host, port, addresses)``, at connect time, on every address the host
  resolves to (``forwarder.hooks.guarded_http`` then connects to a checked one): a name that
  resolves to an internal address, at once or after a DNS rebinding, is refused too.

Always refused: link-local addresses (169.254.0.0/16, fe80::/10) and the clouds' metadata
addresses and names. Refused unless ``callback.allow_private_networks`` is true or
``callback.allowed_hosts`` lists the host: every address that is not public (loopback, private,
unspecified, shared, reserved, multicast). With ``allowed_hosts`` set, only the hosts it lists are
called. The default URL's host and port count as listed: the operator chose them.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Iterable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import requests
from urllib3.util import parse_url

from forwarder.config.hooks import CallbackSettings
from forwarder.errors import CallbackRefused

__all__ = ["ALWAYS_REFUSED", "METADATA_NAMES", "CheckedUrl", "HostRules", "UrlPolicy"]

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

ALWAYS_REFUSED: tuple[Network, ...] = tuple(
    ipaddress.ip_network(network)
    for network in (
        "169.254.0.0/16",  # link-local: the metadata service of AWS, GCP, Azure, OCI and others
        "fe80::/10",  # IPv6 link-local
        "fd00:ec2::254/128",  # AWS instance metadata over IPv6
        "fd20:ce::254/128",  # GCP metadata over IPv6
        "100.100.100.200/32",  # Alibaba Cloud metadata
        "192.0.0.192/32",  # Oracle Cloud metadata (legacy)
    )
)
METADATA_NAMES = frozenset(
    {
        "metadata",
        "metadata.google.internal",
        "metadata.goog",
        "instance-data",
        "instance-data.ec2.internal",
    }
)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
# What urlsplit silently drops or strips and urllib3 keeps (tabs, line breaks, leading spaces).
_CONTROL = re.compile(r"[\x00-\x20\x7f]")
_DEFAULT_PORTS = {"http": 80, "https": 443}
_HINT = "callback.allow_private_networks is true or callback.allowed_hosts lists it"


def _plain(address: Address) -> Address:
    """An IPv4 address written as IPv6 (mapped, or NAT64) as the IPv4 address it reaches."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return address.ipv4_mapped
        if address in _NAT64:
            return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return address


def _host_key(host: str) -> str:
    """``host`` spelled one way: lower case, no brackets or final dot, an address normalised."""
    host = host.strip("[]").lower().rstrip(".")
    address = _literal(host)
    return host if address is None else str(address)


def _literal(host: str) -> Address | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def _numeric(host: str) -> bool:
    """Whether the resolver reads ``host`` as an IPv4 address in an odd form (``127.1``, ``0x7f...``)."""
    try:
        socket.inet_aton(host)
    except OSError:
        # As a browser reads a host: one whose last label is a number is an address.
        return bool(re.fullmatch(r"[0-9]+|0x[0-9a-f]*", host.rstrip(".").rpartition(".")[2]))
    return True


def _kind(address: Address) -> str:
    for kind in ("loopback", "unspecified", "multicast", "private", "reserved"):
        if getattr(address, f"is_{kind}"):
            return f"an {kind}" if kind[0] == "u" else f"a {kind}"
    return "a non-public"


@dataclass(frozen=True)
class HostRules:
    """``callback.allowed_hosts``: names, ``*.suffix`` patterns and networks (CIDR)."""

    names: frozenset[str] = frozenset()
    suffixes: tuple[str, ...] = ()  # ".example.com" for "*.example.com"
    networks: tuple[Network, ...] = ()

    @classmethod
    def parse(cls, entries: Iterable[str]) -> HostRules:
        """Entries as ``callback.allowed_hosts`` holds them (checked by its parser)."""
        names: set[str] = set()
        suffixes: list[str] = []
        networks: list[Network] = []
        for entry in entries:
            entry = entry.strip().lower().rstrip(".")
            if entry.startswith("*."):
                suffixes.append(entry[1:])
                continue
            try:
                networks.append(ipaddress.ip_network(entry.strip("[]"), strict=False))
            except ValueError:
                names.add(entry)
        return cls(frozenset(names), tuple(suffixes), tuple(networks))

    def __bool__(self) -> bool:
        return bool(self.names or self.suffixes or self.networks)

    def names_host(self, host: str) -> bool:
        host = host.lower().rstrip(".")
        return host in self.names or any(host.endswith(suffix) for suffix in self.suffixes)

    def holds(self, address: Address) -> bool:
        return any(
            network.version == address.version and address in network for network in self.networks
        )


@dataclass(frozen=True)
class CheckedUrl:
    """A URL both parsers agree on: what the client will connect to."""

    url: str
    normalized: str  # as requests sends it: the form two URLs are compared in
    scheme: str
    host: str  # lower case, IPv6 without brackets
    port: int


@dataclass(frozen=True)
class UrlPolicy:
    """The callback's rules; ``default`` is the default URL's (host, port), always allowed."""

    allowed: HostRules = field(default_factory=HostRules)
    allow_private_networks: bool = False
    default: tuple[str, int] | None = None

    @classmethod
    def from_settings(cls, settings: CallbackSettings) -> UrlPolicy:
        """The rules the ``callback`` settings give."""
        default = None
        if settings.default_url:
            parsed = parse_url(settings.default_url)
            scheme = (parsed.scheme or "http").lower()
            port = parsed.port or _DEFAULT_PORTS.get(scheme, 80)
            default = (_host_key(parsed.host or ""), port)
        return cls(
            HostRules.parse(settings.allowed_hosts), settings.allow_private_networks, default
        )

    def check(self, url: object) -> CheckedUrl:
        """The URL as the client reads it, or ``CallbackRefused`` saying why it is not called."""
        checked = parse_callback_url(url)
        host, port = checked.host, checked.port
        if host.rstrip(".") in METADATA_NAMES:
            raise CallbackRefused(
                f"callback_url host {host} is a cloud metadata name: never called"
            )
        address = _literal(host)
        if address is not None:
            self.check_addresses(host, port, [address])
        elif _numeric(host) and not self.allow_private_networks and not self._lists(host, port):
            raise CallbackRefused(
                f"callback_url host {host} is an address in a numeric form: refused unless {_HINT}"
            )
        elif self.allowed and not self.allowed.networks and not self._lists(host, port):
            raise CallbackRefused(f"callback_url host {host} is not in callback.allowed_hosts")
        return checked

    def check_addresses(self, host: str, port: int, addresses: Iterable[Address | str]) -> None:
        """``CallbackRefused`` unless every address ``host`` resolved to may be called."""
        for raw in addresses:
            address = _plain(ipaddress.ip_address(raw) if isinstance(raw, str) else raw)
            problem = self._problem(host, port, address)
            if problem:
                named = "is" if _literal(host) == address else f"resolves to {address}, which is"
                raise CallbackRefused(f"callback_url host {host} {named} {problem}")

    def _lists(self, host: str, port: int) -> bool:
        # The default URL's host is trusted on the default URL's port only: its other ports may
        # be services nobody meant to expose.
        return self.allowed.names_host(host) or (_host_key(host), port) == self.default

    def _problem(self, host: str, port: int, address: Address) -> str | None:
        if any(address.version == net.version and address in net for net in ALWAYS_REFUSED):
            return "link-local or a cloud metadata address: never called"
        if self._lists(host, port) or self.allowed.holds(address):
            return None
        if self.allowed:
            return "not in callback.allowed_hosts"
        if self.allow_private_networks or (address.is_global and not address.is_multicast):
            return None
        return f"{_kind(address)} address: refused unless {_HINT}"

    def same_url(self, one: CheckedUrl, other: str | None) -> bool:
        """Whether ``one`` is ``other`` itself, read the same way (the default URL's test)."""
        if not other:
            return False
        try:
            return parse_callback_url(other).normalized == one.normalized
        except CallbackRefused:
            return False


def parse_callback_url(url: object) -> CheckedUrl:
    """``url`` read by requests and urllib3, refused unless ``urlsplit`` reads the same."""
    if not isinstance(url, str):
        raise CallbackRefused(f"callback_url must be a string, got {type(url).__name__}")
    if "\\" in url:
        raise CallbackRefused("callback_url has a backslash, which URL parsers read differently")
    if _CONTROL.search(url):
        raise CallbackRefused("callback_url has a space or a control character")
    try:
        split = urlsplit(url)
        split_host, split_port = split.hostname, split.port
        prepared = requests.PreparedRequest()
        prepared.prepare_url(url, None)
        normalized = str(prepared.url)
        parsed = parse_url(normalized)
    except (ValueError, requests.RequestException):
        raise CallbackRefused("callback_url is not a valid URL") from None
    scheme = (parsed.scheme or "").lower()
    if scheme not in _DEFAULT_PORTS or split.scheme.lower() != scheme or not parsed.host:
        raise CallbackRefused(
            f"callback_url must be an http:// or https:// URL with a host (scheme given: "
            f"{split.scheme or 'none'!r})"
        )
    if "@" in split.netloc or parsed.auth is not None:
        raise CallbackRefused("callback_url has userinfo (user:password@); send callback_auth")
    host = parsed.host.strip("[]").lower()
    port = parsed.port or _DEFAULT_PORTS[scheme]
    split_name = (split_host or "").rstrip(".")
    if not split_name.isascii():
        split_name = split_name.encode("idna").decode()
    if split_name != host.rstrip(".") or (split_port or _DEFAULT_PORTS[scheme]) != port:
        raise CallbackRefused("callback_url reads as two different hosts to two URL parsers")
    return CheckedUrl(url, normalized, scheme, host, port)
