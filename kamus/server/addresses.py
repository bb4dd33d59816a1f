"""Client addresses as the per-client limits count them (standard library only: the HTTP
protocol of every service imports this)."""

import functools
import ipaddress
from collections.abc import Sequence

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# One IPv6 client usually holds a whole /64 (SLAAC, privacy addresses): counted per address, it
# would have 2^64 fresh budgets. IPv4 is counted per address.
IPV6_CLIENT_PREFIX = 64


def parse_networks(items: Sequence[str]) -> list[Network]:
    try:
        return [ipaddress.ip_network(item, strict=False) for item in items]
    except ValueError as exc:
        raise ValueError(f"Encryptor__TrustedProxies: {exc}") from None


def is_in(address: str, networks: Sequence[Network]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in networks)


@functools.lru_cache(maxsize=4096)
def client_key(address: str) -> str:
    """What one public client is counted as: its IPv4 address (also when it arrives mapped into
    IPv6), or its IPv6 /64. Anything else (a test client's name) as it is."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/{IPV6_CLIENT_PREFIX}", strict=False))
    return str(ip)
