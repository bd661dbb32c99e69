"""Sending one webhook attempt: the only module of ``events`` that speaks HTTP (aiohttp's
client, never its server).

- TLS verified (the system's CAs, or a configured bundle); no proxies from the environment;
  no redirects (a 3xx is a final answer); a timeout on every attempt; at most
  ``max_response_bytes`` of an answer read.
- Where a webhook may go: only public addresses unless the operator allows a network
  (``allow_networks``); loopback, private, link-local (cloud metadata), shared, reserved
  and multicast addresses are refused, also when an IPv6 address carries them (IPv4-mapped,
  NAT64, 6to4, IPv4-compatible). The check is made on the addresses the name
  resolves to when the connection is made (the connector connects only to what passed),
  so a name that resolves to a public address for a check and a private one later (DNS
  rebinding) gets nowhere.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

from .hooks import Endpoint, Outcome, headers, judge

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class AddressRefusedError(OSError):
    """The webhook's host is (or resolves to) an address the policy refuses."""


class AddressPolicy:
    """Which addresses webhooks may reach: public ones, and those in ``allow``; never one in
    ``deny``."""

    def __init__(self, allow: Sequence[str] = (), deny: Sequence[str] = ()) -> None:
        self.allow: tuple[Network, ...] = tuple(
            ipaddress.ip_network(c.strip(), strict=False) for c in allow
        )
        self.deny: tuple[Network, ...] = tuple(
            ipaddress.ip_network(c.strip(), strict=False) for c in deny
        )

    def permits(self, address: str) -> bool:
        try:
            ip: Address = ipaddress.ip_address(address.split("%", 1)[0])
        except ValueError:
            return False
        # an IPv6 address that carries an IPv4 one reaches that one (::ffff:127.0.0.1 is
        # loopback; 64:ff9b::a9fe:a9fe is 169.254.169.254 behind a NAT64 gateway): the
        # lists are matched against both, and it is public only if the IPv4 one is
        forms = (ip,) if (inner := _carried_ipv4(ip)) is None else (ip, inner)
        if any(f in net for f in forms for net in self.deny):
            return False
        if any(f in net for f in forms for net in self.allow):
            return True
        return _public(forms[-1])


#: IPv6 prefixes whose last 32 bits are an IPv4 address the packets go to: IPv4-mapped
#: (RFC 4291), IPv4-translated (RFC 2765), NAT64's well-known prefix (RFC 6052),
#: IPv4-compatible (deprecated, RFC 4291)
_CARRYING = tuple(
    ipaddress.IPv6Network(n) for n in ("::ffff:0:0/96", "::ffff:0:0:0/96", "64:ff9b::/96", "::/96")
)


def _carried_ipv4(ip: Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one carries (also 6to4's, RFC 3056), or None."""
    if not isinstance(ip, ipaddress.IPv6Address):
        return None
    if ip.sixtofour is not None:
        return ip.sixtofour
    if any(ip in net for net in _CARRYING):
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def _public(ip: Address) -> bool:
    if isinstance(ip, ipaddress.IPv6Address) and ip.is_site_local:
        return False  # fec0::/10: deprecated, still routed inside some sites
    return ip.is_global and not ip.is_multicast


class _CheckedResolver(AbstractResolver):
    """Resolves as usual, then keeps only the addresses the policy permits; none: refused."""

    def __init__(self, policy: AddressPolicy) -> None:
        self._policy = policy
        self._inner = DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        found = await self._inner.resolve(host, port, family)
        allowed = [r for r in found if self._policy.permits(r["host"])]
        if not allowed:
            raise AddressRefusedError(f"{host} resolves to no address webhooks may reach")
        return allowed

    async def close(self) -> None:
        await self._inner.close()


class Sender:
    """Sends attempts with one aiohttp client session (made on first use)."""

    def __init__(
        self,
        policy: AddressPolicy,
        *,
        timeout: float = 10.0,
        max_response_bytes: int = 64 * 1024,
        cafile: str | None = None,
        max_connections: int = 100,
    ) -> None:
        self.policy = policy
        self._timeout = timeout
        self._max_response = max_response_bytes
        self._cafile = cafile
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            context = ssl.create_default_context(cafile=self._cafile)
            connector = aiohttp.TCPConnector(
                resolver=_CheckedResolver(self.policy),
                ssl=context,
                limit=self._max_connections,
                use_dns_cache=False,  # every connection resolves (and is checked) again
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                trust_env=False,  # no proxy from the environment
                timeout=aiohttp.ClientTimeout(total=self._timeout),
                auto_decompress=False,
                skip_auto_headers=("User-Agent",),
                headers={"User-Agent": "pop3gw-webhooks"},
            )
        return self._session

    def refuses(self, url: str) -> bool:
        """Whether ``url``'s host is an address literal the policy refuses (names are
        checked when they are resolved)."""
        host = urlsplit(url).hostname or ""
        try:
            ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            return False
        return not self.policy.permits(host)

    async def send(self, endpoint: Endpoint, event_id: str, timestamp: int, body: bytes) -> Outcome:
        """One attempt; network failures are a ``retry`` outcome, never an exception."""
        if self.refuses(endpoint.url):
            return Outcome("final", None, None, "the webhook's address is not allowed")
        try:
            async with self._client().post(
                endpoint.url,
                data=body,
                headers=headers(endpoint, event_id, timestamp, body),
                allow_redirects=False,
            ) as response:
                retry_after = response.headers.get("Retry-After")
                await self._drain(response)
                # a date is counted from the attempt's timestamp: the deliverer's clock
                return judge(response.status, retry_after, float(timestamp))
        except AddressRefusedError:
            return Outcome("final", None, None, "the webhook's address is not allowed")
        except aiohttp.ClientConnectorError as exc:
            if isinstance(exc.os_error, AddressRefusedError):
                return Outcome("final", None, None, "the webhook's address is not allowed")
            return Outcome("retry", None, None, "the receiver could not be reached")
        except TimeoutError:
            return Outcome("retry", None, None, "the receiver did not answer in time")
        except (aiohttp.ClientError, OSError):
            return Outcome("retry", None, None, "the connection to the receiver failed")

    async def _drain(self, response: Any) -> None:
        """Read at most the cap of the answer; beyond it the connection is dropped."""
        left = self._max_response
        while left > 0:
            chunk = await response.content.read(min(left, 16384))
            if not chunk:
                return
            left -= len(chunk)
        if not response.content.at_eof():
            response.close()

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()
            await asyncio.sleep(0)  # let the transports close (no ResourceWarning)
