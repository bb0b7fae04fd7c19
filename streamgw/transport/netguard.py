"""Which network addresses the gateway may fetch media from (SSRF guard).

A URL in a client's request makes the gateway open a connection, so the address it
connects to is untrusted input.  The rule: only globally routable unicast addresses,
unless an operator allow-listed the host name or the address range.

The judge works on the resolved ``ipaddress`` objects, never on the host text: the
resolver accepts ``2130706433``, ``0x7f.1``, ``017700000001`` and ``127.1`` for
127.0.0.1, and an IPv6 address may carry an IPv4 one inside it (mapped, compatible,
NAT64, 6to4), which Python's ``is_global`` does not look into.  Callers resolve once,
judge every address, then connect to the judged address itself (no second lookup that
DNS rebinding could answer differently).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

__all__ = ["AllowList", "IPAddress", "embedded_ipv4", "is_public_address"]


def _nets(*cidrs: str) -> tuple[IPNetwork, ...]:
    return tuple(ipaddress.ip_network(c) for c in cidrs)


#: IPv4 ranges that are not public unicast, whatever the running Python's tables say
#: (RFC 6890 special-purpose registry, plus multicast and the reserved class E).
_V4_REFUSED: Final = _nets(
    "0.0.0.0/8",  # "this network", 0.0.0.0 (reaches the local host on Linux)
    "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16",  # RFC 1918
    "100.64.0.0/10",  # carrier-grade NAT
    "127.0.0.0/8",  # loopback
    "169.254.0.0/16",  # link-local, cloud metadata (169.254.169.254)
    "192.0.0.0/24",  # IETF protocol assignments
    "192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24",  # documentation
    "192.88.99.0/24",  # 6to4 relay anycast (deprecated)
    "198.18.0.0/15",  # benchmarking
    "224.0.0.0/4",  # multicast
    "240.0.0.0/4",  # reserved, and 255.255.255.255 broadcast
)

#: IPv6 ranges refused inside the global unicast block 2000::/3 (everything outside it
#: -- loopback, unspecified, ULA fc00::/7, link-local fe80::/10, multicast ff00::/8,
#: discard 100::/64 -- is refused by not being in 2000::/3).
_V6_GLOBAL: Final = ipaddress.IPv6Network("2000::/3")
_V6_REFUSED: Final = _nets(
    "2001::/23",  # IETF protocol assignments, Teredo 2001::/32 among them
    "2001:db8::/32", "3fff::/20",  # documentation
)

#: IPv6 forms that carry an IPv4 address in their low 32 bits.
#: (The local-use NAT64 prefix 64:ff9b:1::/48 may place the IPv4 address elsewhere: it is
#: refused outright, being outside 2000::/3.)
_NAT64: Final = ipaddress.IPv6Network("64:ff9b::/96")
_V4_COMPATIBLE: Final = ipaddress.IPv6Network("::/96")  # deprecated ::a.b.c.d
_V4_TRANSLATED: Final = ipaddress.IPv6Network("::ffff:0:0:0/96")  # SIIT ::ffff:0:a.b.c.d
_SIX_TO_FOUR: Final = ipaddress.IPv6Network("2002::/16")  # 2002:AABB:CCDD::/48 holds AABBCCDD


def embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one stands for or tunnels to, if it has that form."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address in _SIX_TO_FOUR:
        return address.sixtofour
    low32 = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if address in _NAT64 or address in _V4_TRANSLATED:
        return low32
    if address in _V4_COMPATIBLE and int(address) > 1:  # :: and ::1 are IPv6's own
        return low32
    return None


def _public_v4(address: ipaddress.IPv4Address) -> bool:
    return address.is_global and not any(address in net for net in _V4_REFUSED)


def is_public_address(address: IPAddress) -> bool:
    """Whether ``address`` is public unicast: safe to fetch a client-given URL from.

    An IPv6 address with an IPv4 one inside is judged by that IPv4 address, so
    ``::ffff:127.0.0.1``, ``::127.0.0.1``, ``64:ff9b::7f00:1`` and ``2002:7f00:1::`` are
    loopback; IPv6 otherwise must be in 2000::/3 and outside the special ranges there.
    """
    if isinstance(address, ipaddress.IPv4Address):
        return _public_v4(address)
    if address.scope_id:  # a zone index only makes sense for link-local addresses
        return False
    inner = embedded_ipv4(address)
    if inner is not None:
        return _public_v4(inner)
    if address not in _V6_GLOBAL or any(address in net for net in _V6_REFUSED):
        return False
    return address.is_global


def _host_key(host: str) -> str:
    """A host name as compared: lower case, no trailing dot, IDNA (punycode) for non-ASCII."""
    host = host.strip().rstrip(".").lower()
    if not host.isascii():
        host = host.encode("idna").decode("ascii")
    return host


@dataclass(frozen=True, slots=True)
class AllowList:
    """The operator's exceptions: host names (any address they resolve to) and IP ranges."""

    hosts: frozenset[str] = frozenset()
    networks: tuple[IPNetwork, ...] = ()

    @classmethod
    def parse(cls, entries: Iterable[str]) -> AllowList:
        """Entries are IPs (``10.1.2.3``, ``::1``), CIDRs (``10.0.0.0/8``) or host names.

        Raises ``ValueError`` for an empty entry.
        """
        hosts: set[str] = set()
        networks: list[IPNetwork] = []
        for entry in entries:
            text = entry.strip().strip("[]")
            if not text:
                raise ValueError("an allow_hosts entry is empty")
            try:
                networks.append(ipaddress.ip_network(text, strict=False))
            except ValueError:
                hosts.add(_host_key(text))
        return cls(frozenset(hosts), tuple(networks))

    def allows_host(self, host: str) -> bool:
        """Whether ``host`` (as written in the URL) is allow-listed by name."""
        return bool(self.hosts) and _host_key(host) in self.hosts

    def allows_address(self, address: IPAddress) -> bool:
        """Whether ``address`` is inside an allow-listed range (IPv4 forms of IPv6 included)."""
        if not self.networks:
            return False
        candidates: list[IPAddress] = [address]
        if isinstance(address, ipaddress.IPv6Address):
            if address.scope_id:
                address = ipaddress.IPv6Address(str(address).partition("%")[0])
                candidates.append(address)
            inner = embedded_ipv4(address)
            if inner is not None:
                candidates.append(inner)
        return any(a in net for a in candidates for net in self.networks if a.version == net.version)

    def permits(self, address: IPAddress) -> bool:
        """The verdict for a resolved address of a host not allowed by name."""
        return is_public_address(address) or self.allows_address(address)
