"""Which webhook URLs Kiln may call: a guard against server-side request forgery.

Pure functions; the DNS resolver is passed in, so the checks run the same at registration, at job
submission and at send time (when DNS may have changed), and tests need no network.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str], Sequence[str]]

NAT64 = ipaddress.ip_network("64:ff9b::/96")
# Reasons that KILN_WEBHOOK_ALLOW_PRIVATE lifts; link-local (cloud metadata) and the rest stay shut.
PRIVATE_REASONS = frozenset({"loopback", "private"})


class UnsafeUrl(ValueError):
    """Raised when a webhook URL is malformed or points where Kiln must not send requests."""


class Unresolved(UnsafeUrl):
    """Raised when a webhook host resolves to no address (now): nothing can be sent to it."""


@dataclass(frozen=True)
class UrlPolicy:
    """What the operator allows: private targets and plain http, and hosts or networks trusted."""

    allow_private: bool = False
    allowed_hosts: frozenset[str] = frozenset()
    allowed_networks: tuple[Network, ...] = field(default=())

    @classmethod
    def build(cls, *, allow_private: bool, allowed: Iterable[str] = ()) -> UrlPolicy:
        """Split the allowlist into host names and CIDRs (a bare IP is a /32 or /128)."""
        hosts, networks = set(), []
        for entry in (e.strip().lower() for e in allowed):
            if not entry:
                continue
            try:
                networks.append(ipaddress.ip_network(entry.strip("[]"), strict=False))
            except ValueError:
                hosts.add(entry.rstrip("."))
        return cls(allow_private, frozenset(hosts), tuple(networks))


@dataclass(frozen=True)
class Target:
    """A checked URL: its host, and the addresses a request may connect to (empty = not pinned)."""

    scheme: str
    host: str
    port: int
    addresses: tuple[Address, ...]


def parse_ip_literal(host: str) -> Address | None:
    """The address a host string denotes to a resolver, or None when it is a DNS name.

    Besides dotted quads and IPv6, C resolvers accept inet_aton forms that turn innocent-looking
    hosts into loopback: `2130706433`, `0x7f.1`, `0177.0.0.1`. Those are parsed here too.
    """
    host = host.strip("[]")
    try:
        return ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        pass
    parts = host.split(".")
    if not 1 <= len(parts) <= 4:
        return None
    try:
        numbers = [_inet_aton_part(p) for p in parts]
    except ValueError:
        return None
    *head, last = numbers
    if any(n > 255 for n in head) or last >= 256 ** (5 - len(parts)):
        return None
    value = 0
    for n in head:
        value = value * 256 + n
    value = value * 256 ** (5 - len(parts)) + last
    return ipaddress.IPv4Address(value)


def _inet_aton_part(part: str) -> int:
    if part.lower().startswith("0x"):
        return int(part[2:] or "0", 16)
    if len(part) > 1 and part.startswith("0"):
        return int(part, 8)
    if not part.isdigit():
        raise ValueError(part)
    return int(part)


def embedded_ipv4(address: Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one carries (mapped, compatible, NAT64, 6to4, Teredo), if any."""
    if not isinstance(address, ipaddress.IPv6Address):
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address in NAT64 or (int(address) >> 32 == 0 and int(address) > 1):
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]
    return None


def classify_address(address: Address) -> str | None:
    """Why an address must not be called (`loopback`, `private`, …), or None when it is public."""
    inner = embedded_ipv4(address)
    if inner is not None:
        return classify_address(inner)
    if address.is_unspecified:
        return "unspecified"
    if address.is_loopback:
        return "loopback"
    if address.is_link_local:
        return "link-local"
    if address.is_multicast:
        return "multicast"
    if address.is_reserved:
        return "reserved"
    if address.is_private or not address.is_global:
        return "private"
    return None


def check_url(url: str, policy: UrlPolicy, resolve: Resolver) -> Target:
    """Accept a URL Kiln may POST to, with the addresses it resolved to; raise UnsafeUrl if not."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise UnsafeUrl(f"not a valid URL: {exc}") from None
    scheme, host = parts.scheme.lower(), (parts.hostname or "").rstrip(".")
    if scheme not in ("http", "https") or not host:
        raise UnsafeUrl("webhook URLs must be absolute http(s) URLs")
    port = port or (443 if scheme == "https" else 80)
    if host in policy.allowed_hosts:
        return Target(scheme, host, port, ())
    if scheme != "https" and not policy.allow_private:
        raise UnsafeUrl("webhook URLs must use https")
    literal = parse_ip_literal(host)
    if literal is not None:
        addresses = [literal]
    else:
        try:
            addresses = [ipaddress.ip_address(a.split("%", 1)[0]) for a in resolve(host)]
        except (OSError, ValueError) as exc:
            raise Unresolved(f"cannot resolve {host!r}: {exc}") from None
        if not addresses:
            raise Unresolved(f"{host!r} resolves to no address")
    for address in addresses:
        reason = _refusal(address, policy)
        if reason:
            shown = host if str(address) == host else f"{host} ({address})"
            raise UnsafeUrl(f"{shown} is not a public address ({reason}); "
                            "webhooks may only call public hosts")
    return Target(scheme, host, port, tuple(dict.fromkeys(addresses)))


def _refusal(address: Address, policy: UrlPolicy) -> str | None:
    if any(address.version == net.version and address in net for net in policy.allowed_networks):
        return None
    reason = classify_address(address)
    if reason in PRIVATE_REASONS and policy.allow_private:
        return None
    return reason
