"""The SSRF address judge, the operator allow-list, and host parsing the resolver's way.

Pure checks on ``ipaddress`` objects: nothing here connects anywhere.  ``resolve`` is only
fed numeric forms and ``localhost`` (answered by the system without any DNS traffic).
"""

from __future__ import annotations

import ipaddress

import pytest

from streamgw.transport.fetch import resolve
from streamgw.transport.netguard import AllowList, embedded_ipv4, is_public_address

REFUSED = [
    # IPv4 special-purpose ranges
    "0.0.0.0", "0.1.2.3", "10.0.0.1", "10.255.255.255", "172.16.0.1", "172.31.255.254", "192.168.1.1",
    "100.64.0.1", "100.127.255.254", "127.0.0.1", "127.1.2.3", "169.254.169.254", "169.254.0.1",
    "192.0.0.8", "192.0.2.1", "198.51.100.7", "203.0.113.9", "192.88.99.1", "198.18.0.1", "198.19.255.1",
    "224.0.0.1", "239.255.255.250", "240.0.0.1", "255.255.255.255",
    # IPv6 special-purpose ranges
    "::", "::1", "fc00::1", "fd12:3456::1", "fe80::1", "fe80::1%1", "febf::1", "fec0::1", "ff02::1", "ff0e::1",
    "100::1", "2001:db8::1", "3fff::1", "2001::1", "2001:0:4136:e378:8000:63bf:3fff:fdd2", "2001:10::1",
    "::2:3:4:5",
    # IPv6 forms of internal IPv4 addresses: mapped, compatible, SIIT, NAT64 (well-known and local), 6to4
    "::ffff:127.0.0.1", "::ffff:7f00:1", "::ffff:10.0.0.1", "::ffff:169.254.169.254", "::ffff:0.0.0.0",
    "::127.0.0.1", "::10.1.2.3", "::169.254.169.254", "::ffff:0:127.0.0.1", "::ffff:0:192.168.0.1",
    "64:ff9b::127.0.0.1", "64:ff9b::10.0.0.1", "64:ff9b::169.254.169.254", "64:ff9b:1::a00:1",
    "64:ff9b:1::8.8.8.8", "2002:7f00:1::", "2002:7f00:1::1", "2002:a00:1::", "2002:a9fe:a9fe::",
]

PUBLIC = [
    "8.8.8.8", "1.1.1.1", "93.184.216.34", "100.63.255.255", "100.128.0.1", "172.15.255.255", "172.32.0.1",
    "192.167.255.255", "169.253.255.255", "223.255.255.255", "2606:4700:4700::1111", "2a00:1450:4001::200e",
    "2001:4860:4860::8888", "::ffff:8.8.8.8", "64:ff9b::808:808", "2002:808:808::1",
]


@pytest.mark.parametrize("text", REFUSED)
def test_internal_and_special_addresses_are_refused(text: str) -> None:
    assert not is_public_address(ipaddress.ip_address(text))


@pytest.mark.parametrize("text", PUBLIC)
def test_public_addresses_are_allowed(text: str) -> None:
    assert is_public_address(ipaddress.ip_address(text))


@pytest.mark.parametrize("text", ["::ffff:127.0.0.1", "::127.0.0.1", "64:ff9b::127.0.0.1", "2002:7f00:1::"])
def test_pythons_is_global_misses_some_mapped_forms_we_do_not(text: str) -> None:
    # Why the judge looks inside IPv6 addresses itself (the gap is version dependent).
    address = ipaddress.IPv6Address(text)
    assert embedded_ipv4(address) == ipaddress.IPv4Address("127.0.0.1")
    assert not is_public_address(address)


@pytest.mark.parametrize(("text", "inner"), [
    ("::ffff:1.2.3.4", "1.2.3.4"), ("::1.2.3.4", "1.2.3.4"), ("::ffff:0:1.2.3.4", "1.2.3.4"),
    ("64:ff9b::1.2.3.4", "1.2.3.4"), ("2002:102:304::", "1.2.3.4"), ("::1", None), ("::", None),
    ("2606:4700::1", None), ("fe80::1", None),
])
def test_embedded_ipv4(text: str, inner: str | None) -> None:
    found = embedded_ipv4(ipaddress.IPv6Address(text))
    assert found == (ipaddress.IPv4Address(inner) if inner else None)


def test_allow_list_by_network_and_by_name() -> None:
    allow = AllowList.parse(["127.0.0.1", "10.0.0.0/8", "[fd00::1]", "Images.Internal.", "bücher.example"])
    assert allow.permits(ipaddress.ip_address("127.0.0.1"))
    assert allow.permits(ipaddress.ip_address("::ffff:127.0.0.1")), "the mapped form of an allowed IPv4"
    assert allow.permits(ipaddress.ip_address("10.200.3.4"))
    assert allow.permits(ipaddress.ip_address("fd00::1"))
    assert allow.permits(ipaddress.ip_address("8.8.8.8")), "public addresses stay allowed"
    assert not allow.permits(ipaddress.ip_address("127.0.0.2"))
    assert not allow.permits(ipaddress.ip_address("169.254.169.254"))
    assert not allow.permits(ipaddress.ip_address("fd00::2"))
    assert allow.allows_host("images.internal") and allow.allows_host("IMAGES.internal.")
    assert allow.allows_host("xn--bcher-kva.example") and allow.allows_host("bücher.example")
    assert not allow.allows_host("other.internal") and not allow.allows_host("127.0.0.1")


def test_empty_allow_list_allows_nothing_internal() -> None:
    allow = AllowList.parse([])
    assert not allow.allows_host("localhost")
    assert not allow.permits(ipaddress.ip_address("127.0.0.1"))
    with pytest.raises(ValueError):
        AllowList.parse([" "])


@pytest.mark.parametrize("host", [b"127.0.0.1", b"2130706433", b"0x7f.1", b"017700000001", b"127.1", b"0177.0.0.1",
                                  b"localhost"])
async def test_odd_numeric_hosts_resolve_to_loopback_and_are_refused(host: bytes) -> None:
    addresses = await resolve(host, 80)
    assert ipaddress.IPv4Address("127.0.0.1") in addresses
    assert not any(is_public_address(a) for a in addresses)


@pytest.mark.parametrize(("host", "expected"), [(b"::ffff:127.0.0.1", "::ffff:7f00:1"), (b"0.0.0.0", "0.0.0.0"),
                                                (b"::", "::")])
async def test_numeric_hosts_keep_their_form(host: bytes, expected: str) -> None:
    assert await resolve(host, 80) == [ipaddress.ip_address(expected)]
    assert not is_public_address(ipaddress.ip_address(expected))

